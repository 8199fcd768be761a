//! The client's bearer credential: a static token, or a token file (the projected
//! service-account token, a kubeconfig `tokenFile`) re-read periodically and after a 401.
//! Neither `Debug` nor any log line ever shows a token.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::warn;
use parking_lot::Mutex;

use super::error::ConfigError;

/// A secret string whose `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How the client authenticates, as configured.
#[derive(Debug)]
pub(crate) enum CredentialSpec {
    None,
    Token(Secret),
    /// A token file; `fallback` is the kubeconfig's inline `token`, used if the file cannot be read.
    TokenFile {
        path: PathBuf,
        fallback: Option<Secret>,
    },
}

/// The bearer token in use.
pub(crate) enum Credential {
    None,
    Static(Secret),
    File(FileToken),
}

impl Credential {
    /// Reads the configured credential: a token file is read now (falling back to the inline
    /// token, with a warning, when it cannot be) and then every `reload_period` at most.
    pub(crate) fn load(
        spec: CredentialSpec,
        reload_period: Duration,
    ) -> Result<Credential, ConfigError> {
        Ok(match spec {
            CredentialSpec::None => Credential::None,
            CredentialSpec::Token(t) => Credential::Static(t),
            CredentialSpec::TokenFile { path, fallback } => {
                let token = match (read_token_file(&path), fallback) {
                    (Ok(t), _) => t,
                    (Err(e), Some(fallback)) => {
                        warn!(
                            "{e}; using the kubeconfig's inline token until the file can be read"
                        );
                        fallback
                    }
                    (Err(e), None) => return Err(e),
                };
                Credential::File(FileToken {
                    path,
                    period: reload_period,
                    state: Mutex::new(FileTokenState {
                        token,
                        read_at: Instant::now(),
                    }),
                })
            }
        })
    }

    /// Whether a token is sent at all.
    pub(crate) fn is_none(&self) -> bool {
        matches!(self, Credential::None)
    }

    /// The token to send now, if any.
    pub(crate) fn bearer(&self) -> Option<Secret> {
        match self {
            Credential::None => None,
            Credential::Static(t) => Some(t.clone()),
            Credential::File(f) => Some(f.current()),
        }
    }
}

/// A token read from a file, kept current by re-reading it.
pub(crate) struct FileToken {
    pub(crate) path: PathBuf,
    period: Duration,
    state: Mutex<FileTokenState>,
}

struct FileTokenState {
    token: Secret,
    read_at: Instant,
}

impl FileToken {
    /// The token to send, re-reading the file when the last read is older than the period.
    pub(crate) fn current(&self) -> Secret {
        let mut state = self.state.lock();
        if state.read_at.elapsed() >= self.period {
            self.reload(&mut state);
        }
        state.token.clone()
    }

    /// Re-reads now (after a 401); keeps the last token if the file cannot be read.
    pub(crate) fn reload_now(&self) {
        let mut state = self.state.lock();
        self.reload(&mut state);
    }

    fn reload(&self, state: &mut FileTokenState) {
        state.read_at = Instant::now();
        match read_token_file(&self.path) {
            Ok(token) => state.token = token,
            // The content is never logged, only the path and the error.
            Err(e) => warn!("{e}; keeping the last token"),
        }
    }
}

/// Reads a token file; surrounding whitespace is dropped and an empty file is an error.
pub(crate) fn read_token_file(path: &Path) -> Result<Secret, ConfigError> {
    let bytes = super::config::read_file("token", path)?;
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::ReadFile {
        what: "token",
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::EmptyToken {
            path: path.to_owned(),
        });
    }
    Ok(Secret(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        assert!(!format!("{:?}", Secret("very-secret".into())).contains("very-secret"));
        let spec = CredentialSpec::Token(Secret("very-secret".into()));
        assert!(!format!("{spec:?}").contains("very-secret"));
    }

    #[test]
    fn a_token_file_falls_back_to_the_inline_token_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let c = Credential::load(
            CredentialSpec::TokenFile {
                path: missing.clone(),
                fallback: Some(Secret("inline".into())),
            },
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(c.bearer().map(|s| s.0).as_deref(), Some("inline"));
        assert!(matches!(
            Credential::load(
                CredentialSpec::TokenFile {
                    path: missing,
                    fallback: None
                },
                Duration::from_secs(60)
            ),
            Err(ConfigError::ReadFile { what: "token", .. })
        ));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        assert!(matches!(
            read_token_file(&empty),
            Err(ConfigError::EmptyToken { .. })
        ));
    }
}
