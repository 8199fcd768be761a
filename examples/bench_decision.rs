//! Measures the cost of one whole decision in process, without NATS: open (xkey) and verify the
//! server's request, validate the service-account token (RS256 or ES256), look the account up,
//! build the permissions, sign the user JWT and the response, seal it.
//!
//! ```text
//! cargo run --release --example bench_decision -- [ITERATIONS]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nkeys::{KeyPair, XKey};
use rsa::pkcs8::EncodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::json;

use nats_k8s_oidc_callout::authorizer::Authorizer;
use nats_k8s_oidc_callout::callout::jwt::encode;
use nats_k8s_oidc_callout::callout::request::RequestDecoder;
use nats_k8s_oidc_callout::callout::response::ResponseSigner;
use nats_k8s_oidc_callout::callout::service::CalloutContext;
use nats_k8s_oidc_callout::identity::{JwksStore, TokenSettings, TokenValidator};
use nats_k8s_oidc_callout::keys::{CalloutKeys, KeyStore};
use nats_k8s_oidc_callout::kube::cache::{FileDirectory, ServiceAccountCache};
use nats_k8s_oidc_callout::kube::ServiceAccount;
use nats_k8s_oidc_callout::metrics::Metrics;
use nats_k8s_oidc_callout::policy::{AdminPolicy, InboxMode, PermissionCache, PolicyStore};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct Keys {
    rsa_pem: String,
    ec_pem: String,
    jwks: Vec<u8>,
}

fn keys() -> Keys {
    let mut rng = rand_core::OsRng;
    let rsa = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
    let rsa_pem = rsa.to_pkcs8_pem(Default::default()).unwrap().to_string();
    let ec = p256::SecretKey::random(&mut rng);
    let ec_pem = ec.to_pkcs8_pem(Default::default()).unwrap().to_string();
    let point =
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&ec.public_key(), false);
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rsa", "alg": "RS256", "use": "sig",
         "n": URL_SAFE_NO_PAD.encode(rsa.n().to_bytes_be()), "e": URL_SAFE_NO_PAD.encode(rsa.e().to_bytes_be())},
        {"kty": "EC", "kid": "ec", "alg": "ES256", "use": "sig", "crv": "P-256",
         "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())},
    ]});
    Keys {
        rsa_pem,
        ec_pem,
        jwks: jwks.to_string().into_bytes(),
    }
}

fn token(keys: &Keys, alg: Algorithm) -> String {
    let (kid, key) = match alg {
        Algorithm::RS256 => (
            "rsa",
            EncodingKey::from_rsa_pem(keys.rsa_pem.as_bytes()).unwrap(),
        ),
        _ => (
            "ec",
            EncodingKey::from_ec_pem(keys.ec_pem.as_bytes()).unwrap(),
        ),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    let t = now();
    let claims = json!({
        "iss": ISSUER, "aud": ["nats"], "sub": "system:serviceaccount:team-a:app",
        "iat": t, "nbf": t, "exp": t + 3600, "jti": "5c3f8f0e-1b7a-4c59-9d55-0c6bb1d7c111",
        "kubernetes.io": {"namespace": "team-a", "serviceaccount": {"name": "app", "uid": "uid-1"},
                          "pod": {"name": "app-1", "uid": "pod-uid"}}
    });
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// A callout context; `token_cache` is the verified-token cache's capacity (0: off).
fn context(keys: &Keys, xkey: Option<XKey>, token_cache: usize) -> CalloutContext {
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(JwksStore::from_jwks_json(&keys.jwks).unwrap());
    let validator = TokenValidator::new(store, TokenSettings::new(ISSUER, "nats"));
    let cache = Arc::new(ServiceAccountCache::new(metrics.clone()));
    cache.replace_all(vec![ServiceAccount::new("team-a", "app", "uid-1", "1")
        .with_annotation(
            "nats.io/allowed-pub-subjects",
            "orders.>, inventory.check",
        )]);
    let authorizer = Authorizer::new(
        validator,
        Arc::new(FileDirectory::new(cache)),
        Arc::new(PolicyStore::new(AdminPolicy::unrestricted(), None)),
        PermissionCache::new(metrics.clone(), 1024, InboxMode::Shared),
        Duration::from_secs(3600),
    )
    .with_verified_tokens(token_cache, metrics.clone());
    CalloutContext {
        keys: Arc::new(KeyStore::fixed(CalloutKeys {
            decoder: RequestDecoder::new(xkey),
            signer: ResponseSigner::new(KeyPair::new_account(), "APP".into()),
        })),
        authorizer,
        metrics,
        self_check: None,
    }
}

/// Requests as nats-server builds them, each for a fresh user nkey. They expire in 30 s: within
/// the 60 s the service accepts (`REQUEST_MAX_LIFETIME_SECS`), and long enough for one case to run.
fn requests(n: usize, token: &str, seal: Option<(&XKey, &XKey)>) -> Vec<(Vec<u8>, Option<String>)> {
    let server = KeyPair::new_server();
    (0..n)
        .map(|_| {
            let t = now();
            let claims = json!({
                "jti": "J", "iat": t, "exp": t + 30, "iss": server.public_key(), "sub": server.public_key(),
                "aud": "nats-authorization-request",
                "nats": {
                    "server_id": {"name": "bench", "id": server.public_key(), "version": "2.15.1",
                                  "xkey": seal.map(|(s, _)| s.public_key()).unwrap_or_default()},
                    "user_nkey": KeyPair::new_user().public_key(),
                    "client_info": {"host": "10.0.0.1", "id": 1, "kind": "Client", "type": "nats"},
                    "connect_opts": {"auth_token": token, "lang": "go", "version": "1.37.0", "protocol": 1},
                    "type": "authorization_request", "version": 2
                }
            });
            let jwt = encode(&claims, &server).unwrap();
            match seal {
                None => (jwt.into_bytes(), None),
                Some((server_x, ours)) => {
                    let to = XKey::from_public_key(&ours.public_key()).unwrap();
                    (server_x.seal(jwt.as_bytes(), &to).unwrap(), Some(server_x.public_key()))
                }
            }
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Mean time of `f` over `n` runs.
fn mean_of(n: usize, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed() / n as u32
}

/// Where the time of one plain decision goes.
fn breakdown(keys: &Keys, n: usize) {
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(JwksStore::from_jwks_json(&keys.jwks).unwrap());
    let validator = TokenValidator::new(store, TokenSettings::new(ISSUER, "nats"));
    let decoder = RequestDecoder::new(None);
    let reqs = requests(n, &token(keys, Algorithm::RS256), None);
    let t = now() as u64;
    let rs = token(keys, Algorithm::RS256);
    let es = token(keys, Algorithm::ES256);
    let account = KeyPair::new_account();
    let mut i = 0;
    println!("\nparts of one decision (mean µs over {n} runs)");
    let decode = mean_of(n, || {
        decoder.decode(&reqs[i % n].0, None, t as i64).unwrap();
        i += 1;
    });
    let rs256 = mean_of(n, || {
        validator.validate(&rs, t).unwrap();
    });
    let es256 = mean_of(n, || {
        validator.validate(&es, t).unwrap();
    });
    let sign = mean_of(n, || {
        encode(&json!({"iss": account.public_key(), "sub": "U", "nats": {"type": "user", "version": 2}}), &account).unwrap();
    });
    for (name, d) in [
        ("verify the server's request (ed25519)", decode),
        ("validate an RS256 token", rs256),
        ("validate an ES256 token", es256),
        ("sign one NATS JWT (ed25519; two per allow)", sign),
    ] {
        println!("  {:<46} {:>8.1}", name, d.as_secs_f64() * 1e6);
    }
    drop(metrics);
}

fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    let keys = keys();
    println!("in-process decision, {iterations} requests each (one core, release build)");
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>12}",
        "case", "p50 µs", "p99 µs", "mean µs", "decisions/s"
    );
    // Each case presents one token again and again: without the verified-token cache every
    // request verifies it (a crowd of new pods), with it every request after the first is a hit
    // (a client reconnecting).
    for (name, alg, sealed, token_cache) in [
        ("RS256 plain", Algorithm::RS256, false, 0),
        ("ES256 plain", Algorithm::ES256, false, 0),
        ("RS256 xkey", Algorithm::RS256, true, 0),
        ("ES256 xkey", Algorithm::ES256, true, 0),
        ("RS256 plain, cache hit", Algorithm::RS256, false, 16),
        ("ES256 plain, cache hit", Algorithm::ES256, false, 16),
    ] {
        let ours = XKey::new();
        let server_x = XKey::new();
        let ctx = context(&keys, sealed.then(|| ours.clone()), token_cache);
        let tok = token(&keys, alg);
        let reqs = requests(iterations, &tok, sealed.then_some((&server_x, &ours)));
        // Warm up caches (parsed keys, permissions).
        for (payload, hdr) in reqs.iter().take(50) {
            let out = ctx.handle(payload, hdr.as_deref());
            assert_eq!(out.result, "allow", "{}", out.reason);
        }
        let mut times = Vec::with_capacity(iterations);
        let total = Instant::now();
        for (payload, hdr) in &reqs {
            let start = Instant::now();
            let out = ctx.handle(payload, hdr.as_deref());
            times.push(start.elapsed());
            assert_eq!(out.result, "allow", "{}", out.reason);
        }
        let elapsed = total.elapsed();
        times.sort();
        let mean = elapsed / iterations as u32;
        println!(
            "{:<22} {:>10.1} {:>10.1} {:>10.1} {:>12.0}",
            name,
            percentile(&times, 0.5).as_secs_f64() * 1e6,
            percentile(&times, 0.99).as_secs_f64() * 1e6,
            mean.as_secs_f64() * 1e6,
            iterations as f64 / elapsed.as_secs_f64()
        );
    }
    breakdown(&keys, iterations.min(2000));
}
