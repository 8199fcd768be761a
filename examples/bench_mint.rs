//! Writes what a connect benchmark needs to look like a cluster: a key set (`jwks.json`), the
//! issuer (`issuer`), and COUNT distinct service-account tokens (`tokens`, one per line) for
//! ServiceAccount `team-a/app`, signed the way the apiserver signs them (RS256 with a 2048-bit
//! key, or ES256), bound to a pod and a node like projected tokens are.
//!
//! ```text
//! cargo run --release --example bench_mint -- DIR COUNT rs256|es256 [TTL_SECS]
//! ```

#[allow(dead_code)]
#[path = "../tests/support/tokens.rs"]
mod tokens;

use std::io::Write;

use tokens::{SigningKey, TokenBuilder, DEFAULT_ISSUER};

/// The uid of ServiceAccount `team-a/app` in `scripts/bench`'s sa.yaml.
const SA_UID: &str = "11111111-2222-3333-4444-555555555555";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: bench_mint DIR COUNT rs256|es256 [TTL_SECS]");
        std::process::exit(2);
    }
    let dir = std::path::Path::new(&args[0]);
    let count: usize = args[1].parse().expect("COUNT");
    let key = match args[2].as_str() {
        "rs256" => SigningKey::rs256_fresh(),
        "es256" => SigningKey::es256(),
        other => {
            eprintln!("unknown algorithm {other:?}: rs256 or es256");
            std::process::exit(2);
        }
    };
    let ttl: i64 = args.get(3).map_or(3600, |t| t.parse().expect("TTL_SECS"));
    std::fs::create_dir_all(dir).expect("create DIR");
    std::fs::write(
        dir.join("jwks.json"),
        tokens::jwks(&[&key]).to_string().as_bytes(),
    )
    .expect("write jwks.json");
    std::fs::write(dir.join("issuer"), DEFAULT_ISSUER).expect("write issuer");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(dir.join("tokens")).expect("create the tokens file"),
    );
    for i in 0..count {
        // Distinct pods make distinct tokens, as a cluster's many pods would present.
        let token = TokenBuilder::for_sa("team-a", "app", SA_UID)
            .pod(&format!("app-{i}"), &tokens::random_uuid())
            .node("node-1", "99999999-8888-7777-6666-555555555555")
            .expires_in(ttl)
            .sign(&key);
        writeln!(out, "{token}").expect("write a token");
    }
    out.flush().expect("write the tokens file");
}
