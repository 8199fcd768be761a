//! Service-account token validation and the JWKS store.
//!
//! - [`jwks`]: the public keys that sign tokens, loaded from a file or a URL, refreshed in the
//!   background, refetched (rate-limited) for an unknown key id; the last good set always stays.
//! - [`token`]: one token in, an [`Identity`] or a [`TokenError`] (with a metric label) out.
//! - [`discovery`]: the cluster's issuer, read from the API server's OIDC discovery document.
//! - [`dev`]: a local signer that plays the API server's part for development without a cluster.
//!
//! Neither tokens nor keys ever reach a log line; attacker-supplied strings (key ids, algorithm
//! names) appear only shortened and stripped of control characters.

pub mod dev;
pub mod discovery;
pub mod jwks;
pub mod token;

pub use dev::{generate_signer, DevSigner, MintRequest};
pub use discovery::{discover_issuer, Discovered, IssuerUnavailable};
pub use jwks::{
    parse_max_age, ApiServerFetcher, FetchError, FetchedJwks, JwksError, JwksFetcher, JwksSettings,
    JwksSource, JwksStore, KeySet, KeyType, PublicUrlFetcher, SigningAlgorithm, VerificationKey,
    API_SERVER_JWKS_PATH,
};
pub use token::{
    claimed_service_account, ClaimedServiceAccount, Identity, TokenError, TokenSettings,
    TokenValidator,
};

/// At most `max` characters of `s`, with control characters dropped: safe to put in a log line
/// even when the string came from an unauthenticated client.
pub(crate) fn printable(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}
