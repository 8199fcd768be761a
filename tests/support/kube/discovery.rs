//! The OIDC discovery endpoints: `/.well-known/openid-configuration` and `/openid/v1/jwks`, with
//! the API server's content types and `Cache-Control: public, max-age=N`.

use serde_json::json;

use super::routing::Reply;
use super::state::{Shared, State};

/// `/.well-known/openid-configuration`: the issuer, a `jwks_uri` on this emulator, and the sorted
/// algorithms of the served keys.
pub(super) fn discovery(shared: &Shared, st: &State) -> Reply {
    let mut algs: Vec<String> = st.jwks["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k["alg"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    algs.sort();
    algs.dedup();
    let body = json!({
        "issuer": shared.issuer,
        "jwks_uri": format!("{}/openid/v1/jwks", shared.url),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
    });
    Reply::json(200, body).with_header("Cache-Control", cache_control(st))
}

/// `/openid/v1/jwks`: the served key set.
pub(super) fn jwks(st: &State) -> Reply {
    Reply::Json {
        status: 200,
        body: st.jwks.clone(),
        content_type: "application/jwk-set+json",
        headers: vec![("Cache-Control".into(), cache_control(st))],
    }
}

/// Both endpoints may be cached for the configured max-age (3600 s for static key files).
fn cache_control(st: &State) -> String {
    format!("public, max-age={}", st.jwks_max_age)
}
