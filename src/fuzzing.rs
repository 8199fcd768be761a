//! Entry points of the fuzz targets (`fuzz/fuzz_targets/`): each takes arbitrary bytes and runs
//! one reader of outside input the way the service runs it, at a fixed time and with fixed keys,
//! so an outcome depends on the input only. Not an API: hidden from the documentation.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use nkeys::XKey;

use crate::callout::request::RequestDecoder;
use crate::identity::jwks::JwksStore;
use crate::identity::token::{TokenSettings, TokenValidator};
use crate::kube::object::ServiceAccount;
use crate::policy::admin::AdminPolicy;
use crate::policy::{evaluate, InboxMode, PUB_ANNOTATION, SUB_ANNOTATION};

/// The time the request and token targets run at (2027-01-15).
const NOW: i64 = 1_800_000_000;
/// The service's curve key in the sealed-request target.
const SERVICE_XKEY: &str = "SXABRE3ZHLM3P5WAPTJZUASIOUJADQ3C2DYKMTNTAMHI4MU2LBI3MNNQ6A";
/// The server's curve key in the sealed-request target.
const SERVER_XKEY: &str = "SXAHWELCTATXQTIYKJVOXPJ65SJ44LUAZTW5P4JGWHD4O4XDEM4OOGZ3PQ";
/// The public key set the token target validates against: one P-256 key of a development
/// signer (`dev-signer init`), so tokens naming its `kid` reach the signature check.
const JWKS: &str = r#"{"keys":[{"alg":"ES256","crv":"P-256","kid":"N0f6Ehg53gPKsGKox8jLvuIHAwOU7xgLQjkZqP9dRXc","kty":"EC","use":"sig","x":"wVwdyU9l72jv5NjcDkb42iRg7TjRlA_eQE_awr6BgpA","y":"RM664XmhWVBB85fCNLv74YgEfsnjzU4jfP3W_3-h1YI"}]}"#;
/// The issuer and audience the token target expects (those of the development signer).
const ISSUER: &str = crate::devtools::DEV_ISSUER;
/// A policy with bounds and a rule, for the annotation target.
const POLICY: &str = "namespaces:\n  include: [\"team-*\"]\nannotations:\n  publish: [\"{namespace}.>\", \"shared.{name}.*\"]\n  subscribe: [\"{namespace}.>\", \"events.*\"]\nrules:\n  - namespaces: [\"team-b\"]\n    account: PAYMENTS\n";

/// An authorization request payload, unsealed, as a worker decodes it.
pub fn request(data: &[u8]) {
    let _ = RequestDecoder::new(None).decode(data, None, NOW);
}

/// An authorization request sealed by a server to the service's curve key: the input is the
/// plain text, sealed here, so the fuzzer reaches what follows the opening.
pub fn sealed_request(data: &[u8]) {
    static KEYS: OnceLock<Option<(XKey, XKey, RequestDecoder)>> = OnceLock::new();
    let Some((ours, server, decoder)) = KEYS.get_or_init(|| {
        let ours = XKey::from_seed(SERVICE_XKEY).ok()?;
        let server = XKey::from_seed(SERVER_XKEY).ok()?;
        let decoder = RequestDecoder::new(Some(ours.clone()));
        Some((ours, server, decoder))
    }) else {
        return;
    };
    let Ok(recipient) = XKey::from_public_key(&ours.public_key()) else {
        return;
    };
    if let Ok(sealed) = server.seal(data, &recipient) {
        let _ = decoder.decode(&sealed, Some(&server.public_key()), NOW);
    }
}

/// A client's token, validated as far as the signature check (and past it, for none will
/// carry a valid signature).
pub fn token(data: &[u8]) {
    static VALIDATOR: OnceLock<Option<TokenValidator>> = OnceLock::new();
    let Some(validator) = VALIDATOR.get_or_init(|| {
        let store = JwksStore::from_jwks_json(JWKS.as_bytes()).ok()?;
        Some(TokenValidator::new(
            Arc::new(store),
            TokenSettings::new(ISSUER, "nats"),
        ))
    }) else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = validator.validate(text, NOW as u64);
    }
}

/// A ServiceAccount's permission annotations, evaluated in every inbox mode with and without
/// an admin policy. The first line names the account (`namespace/name`), the next the publish
/// annotation, the rest the subscribe annotation.
pub fn annotations(data: &[u8]) {
    static POLICIES: OnceLock<Vec<AdminPolicy>> = OnceLock::new();
    let policies = POLICIES.get_or_init(|| {
        let mut all = vec![AdminPolicy::unrestricted()];
        all.extend(AdminPolicy::parse(POLICY).ok());
        all
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let (namespace, name) = lines
        .next()
        .and_then(|l| l.split_once('/'))
        .unwrap_or(("team-a", "app"));
    let mut sa = ServiceAccount::new(namespace, name, "uid", "1");
    for key in [PUB_ANNOTATION, SUB_ANNOTATION] {
        if let Some(value) = lines.next() {
            sa = sa.with_annotation(key, value);
        }
    }
    for policy in policies {
        for mode in [InboxMode::Shared, InboxMode::Private, InboxMode::Responses] {
            let _ = evaluate(&sa, policy, mode);
        }
    }
}

/// An admin policy file.
pub fn policy(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = AdminPolicy::parse(text);
    }
}

/// A kubeconfig file (the files it names are resolved against a directory that does not exist;
/// absolute paths are read, bounded).
pub fn kubeconfig(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let path = Path::new("/nonexistent/fuzz/kubeconfig");
        let _ = crate::kube::config::endpoint_from_text(text, path, None);
        let _ = crate::kube::config::endpoint_from_text(text, path, Some("other"));
    }
}

/// One line of a ServiceAccount or Pod watch stream.
pub fn watch_line(data: &[u8]) {
    let _ = crate::kube::watch::decode_watch_line(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_keys_load() {
        assert!(XKey::from_seed(SERVICE_XKEY).is_ok() && XKey::from_seed(SERVER_XKEY).is_ok());
        assert!(JwksStore::from_jwks_json(JWKS.as_bytes()).is_ok());
        assert!(AdminPolicy::parse(POLICY).is_ok());
    }

    /// The token seed of the corpus is valid at [`NOW`], so the fuzzer starts past the
    /// signature check.
    #[test]
    fn the_token_seed_validates() {
        let store = JwksStore::from_jwks_json(JWKS.as_bytes()).unwrap();
        let validator = TokenValidator::new(Arc::new(store), TokenSettings::new(ISSUER, "nats"));
        let seed = include_str!("../fuzz/seeds/token/valid-es256");
        let identity = validator.validate(seed, NOW as u64).unwrap();
        assert_eq!(identity.namespace, "team-a");
    }
}
