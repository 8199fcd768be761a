//! The JWKS store: the public keys that verify service-account tokens, and keeping them current.
//!
//! The keys are loaded from a file, the API server or a URL, refreshed in the background and
//! refetched (rate-limited) when a token names an unknown key id. Every load runs on the
//! refresher thread: a worker that meets an unknown key id only asks for the refetch and waits
//! for it a short, bounded time.
//!
//! Keys are parsed and checked once per load into ready-to-verify [`VerificationKey`]s and handed out as
//! an [`Arc<KeySet>`](std::sync::Arc), so validating a token costs one read lock and one
//! reference-count increment. A failed load never replaces a good key set: the last good set stays
//! in use.
//!
//! - `keyset`: one JWKS document in, the usable keys out (each skipped key logged with why);
//! - `source`: where the document comes from (a file, the API server, a URL) and its `max-age`;
//! - `store`: the key set in use, loads that install a new one, the unknown-kid refetch gate;
//! - `refresh`: the thread that keeps the set current and its schedule.

use std::io;
use std::path::PathBuf;

mod keyset;
mod refresh;
mod source;
mod store;
#[cfg(test)]
pub(crate) mod testing;

pub use keyset::{KeySet, KeyType, SigningAlgorithm, VerificationKey};
pub use source::{
    parse_max_age, ApiServerFetcher, FetchError, FetchedJwks, JwksFetcher, JwksSource,
    PublicUrlFetcher, API_SERVER_JWKS_PATH,
};
pub use store::{JwksSettings, JwksStore, DEFAULT_REFETCH_WAIT};

/// Largest JWKS document accepted, from a file or over HTTP (1 MiB).
pub const MAX_JWKS_BYTES: u64 = 1024 * 1024;

/// Why a key set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The fetcher failed (the error never contains credentials).
    #[error("fetch failed: {0}")]
    Fetch(#[from] FetchError),
    /// The key file could not be read.
    #[error("cannot read {}: {error}", .path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        error: io::Error,
    },
    /// The document is larger than [`MAX_JWKS_BYTES`].
    #[error("key set is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// The document is not a JSON object with a `keys` array.
    #[error("not a JWKS document: {detail}")]
    NotAJwks {
        /// Where parsing failed (no document content).
        detail: String,
    },
    /// No key in the document is usable.
    #[error("no usable key in the key set ({skipped} skipped)")]
    NoUsableKeys {
        /// How many keys were skipped.
        skipped: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_failures_read_as_documented() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let cases = [
            (
                JwksError::Fetch(FetchError::ApiServerStatus { code: 403 }),
                "fetch failed: HTTP 403".to_string(),
            ),
            (
                JwksError::ReadFile {
                    path: PathBuf::from("/keys/jwks.json"),
                    error: std::io::Error::from(std::io::ErrorKind::NotFound),
                },
                format!("cannot read /keys/jwks.json: {missing}"),
            ),
            (
                JwksError::TooLarge,
                "key set is larger than 1048576 bytes".to_string(),
            ),
            (
                KeySet::parse(b"{").unwrap_err(),
                "not a JWKS document: unexpected end at line 1 column 1".to_string(),
            ),
            (
                JwksError::NoUsableKeys { skipped: 3 },
                "no usable key in the key set (3 skipped)".to_string(),
            ),
        ];
        for (error, want) in cases {
            assert_eq!(error.to_string(), want);
        }
    }
}
