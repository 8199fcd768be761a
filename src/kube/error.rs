//! Errors of the Kubernetes side: configuring the client, and requests to the API server; and
//! the API's own `Status` object that carries a failure's reason.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::config::{ENV_KUBECONFIG, ENV_SERVICE_HOST, ENV_SERVICE_PORT};

/// Why a client could not be configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT` are not both set.
    #[error(
        "not running in a cluster: {ENV_SERVICE_HOST} and {ENV_SERVICE_PORT} must both be set"
    )]
    NotInCluster,
    /// No kubeconfig path could be determined (no `KUBECONFIG`, no `HOME`).
    #[error("no kubeconfig: neither {ENV_KUBECONFIG} nor HOME is set")]
    NoKubeConfigPath,
    /// A file could not be read.
    #[error("cannot read {what} file {}: {source}", .path.display())]
    ReadFile {
        /// What the file is for (`kubeconfig`, `token`, `certificate authority` …).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The kubeconfig is not valid YAML of the expected shape.
    #[error("invalid kubeconfig {}: {source}", .path.display())]
    ParseKubeConfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// The parser's error.
        source: serde_yaml_ng::Error,
    },
    /// The kubeconfig names no context to use.
    #[error("kubeconfig {} has no current-context", .path.display())]
    NoCurrentContext {
        /// The kubeconfig file.
        path: PathBuf,
    },
    /// A context, cluster or user named by the kubeconfig is missing.
    #[error("kubeconfig has no {what} named {name:?}")]
    MissingEntry {
        /// `context`, `cluster` or `user`.
        what: &'static str,
        /// The name looked for.
        name: String,
    },
    /// The cluster entry has no `server`.
    #[error("kubeconfig cluster {cluster:?} has no server")]
    MissingServer {
        /// The cluster entry's name.
        cluster: String,
    },
    /// The server URL is not an `http(s)://host[:port][/path]` URL without credentials.
    #[error(
        "invalid API server URL {url:?}: expected http(s)://host[:port][/path] without credentials"
    )]
    InvalidServer {
        /// The URL with any credentials removed.
        url: String,
    },
    /// The user entry asks for an authentication mechanism this client does not implement.
    #[error(
        "kubeconfig user {user:?} uses {mechanism} authentication, which is not supported: \
         use a token, a tokenFile or a client certificate"
    )]
    UnsupportedAuth {
        /// The user entry's name.
        user: String,
        /// `exec`, `auth-provider` or `basic`.
        mechanism: &'static str,
    },
    /// The kubeconfig uses a setting this client does not implement.
    #[error("kubeconfig setting {setting} is not supported")]
    UnsupportedSetting {
        /// The setting's name, e.g. `tls-server-name`.
        setting: &'static str,
    },
    /// The cluster entry sets both a CA and `insecure-skip-tls-verify` (client-go refuses it too:
    /// the operator meant verification, and would silently get none).
    #[error(
        "kubeconfig cluster {cluster:?} sets both a certificate authority and \
         insecure-skip-tls-verify; remove one (client-go refuses this too)"
    )]
    InsecureWithCa {
        /// The cluster entry's name.
        cluster: String,
    },
    /// A `*-data` field is not valid base64.
    #[error("{field} is not valid base64")]
    InvalidBase64 {
        /// The field's name.
        field: &'static str,
    },
    /// PEM data holds no usable certificate or key.
    #[error("no usable PEM {what} found")]
    InvalidPem {
        /// What the data was for (`certificate authority`, `client certificate`, `client key`).
        what: &'static str,
    },
    /// A token file is empty.
    #[error("token file {} is empty", .path.display())]
    EmptyToken {
        /// The token file.
        path: PathBuf,
    },
}

/// A failed request to the API server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    /// No response: name resolution, connection, TLS or sending the request failed.
    #[error("connection to the API server failed: {0}")]
    Connect(#[source] ureq::Error),
    /// A time bound was reached (connect, response, read or total).
    #[error("API request timed out")]
    Timeout,
    /// The server answered with a non-success status.
    #[error("API server answered {code}{}", reason_and_message(reason, message))]
    Status {
        /// HTTP status code.
        code: u16,
        /// The Status object's `reason` (e.g. `Expired`, `NotFound`), when the body had one.
        reason: Option<String>,
        /// The Status object's `message`, when the body had one.
        message: Option<String>,
        /// From `Retry-After` (seconds) or the Status `details.retryAfterSeconds`.
        retry_after: Option<Duration>,
    },
    /// The connection broke while the body was being read.
    #[error("API connection broke: {0}")]
    Disconnected(#[source] ureq::Error),
    /// The body is larger than the configured limit.
    #[error("API response larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The body is not the JSON expected.
    #[error("unexpected API response: {0}")]
    Decode(#[source] serde_json::Error),
    /// A request body could not be written as JSON.
    #[error("API request body could not be encoded: {0}")]
    Encode(#[source] serde_json::Error),
    /// A request body is larger than the API server accepts.
    #[error("API request body larger than {limit} bytes")]
    RequestTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// A URL outside the API server's origin was refused (credentials are never sent elsewhere).
    #[error("URL is not on the API server's origin")]
    CrossOrigin,
    /// The client could not be configured.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A local resource (a thread) could not be obtained.
    #[error("local resource unavailable: {0}")]
    Local(#[source] std::io::Error),
}

impl KubeError {
    /// The HTTP status code, for [`KubeError::Status`].
    pub fn status_code(&self) -> Option<u16> {
        match self {
            KubeError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether this is `410 Gone`: an expired resourceVersion or continue token.
    pub fn is_gone(&self) -> bool {
        self.status_code() == Some(410)
    }

    /// Whether the server said the requested resourceVersion is newer than it knows.
    pub fn is_too_large_resource_version(&self) -> bool {
        match self {
            KubeError::Status {
                code: 504,
                message: Some(m),
                ..
            } => m
                .to_ascii_lowercase()
                .contains("too large resource version"),
            _ => false,
        }
    }

    /// How long the server asked the client to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            KubeError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// ` <reason>: <message>`, each part only when present.
fn reason_and_message(reason: &Option<String>, message: &Option<String>) -> String {
    let mut out = String::new();
    if let Some(r) = reason {
        out.push(' ');
        out.push_str(r);
    }
    if let Some(m) = message {
        out.push_str(": ");
        out.push_str(m);
    }
    out
}

/// A Kubernetes `Status` object, as found in error bodies and in watch `ERROR` events.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ApiStatus {
    /// HTTP-like status code (410 for an expired resourceVersion).
    #[serde(default)]
    pub code: Option<u16>,
    /// Machine-readable reason (`Expired`, `Gone`, `TooManyRequests` …).
    #[serde(default)]
    pub reason: Option<String>,
    /// Human-readable message.
    #[serde(default)]
    pub message: Option<String>,
    /// Extra details; only `retryAfterSeconds` is used.
    #[serde(default)]
    pub details: Option<ApiStatusDetails>,
}

/// The `details` of a Status object.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ApiStatusDetails {
    /// Seconds the client should wait before retrying.
    #[serde(default, rename = "retryAfterSeconds")]
    pub retry_after_seconds: Option<u64>,
}

impl ApiStatus {
    /// The wait the server asked for in `details.retryAfterSeconds`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.details
            .as_ref()
            .and_then(|d| d.retry_after_seconds)
            .map(Duration::from_secs)
    }
}

impl fmt::Display for ApiStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(c) => write!(f, "status {c}")?,
            None => write!(f, "status")?,
        }
        f.write_str(&reason_and_message(&self.reason, &self.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_show_what_the_server_said() {
        let e = KubeError::Status {
            code: 429,
            reason: Some("TooManyRequests".into()),
            message: Some("slow down".into()),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "API server answered 429 TooManyRequests: slow down"
        );
        let bare = KubeError::Status {
            code: 500,
            reason: None,
            message: None,
            retry_after: None,
        };
        assert_eq!(bare.to_string(), "API server answered 500");
        let status = ApiStatus {
            code: Some(410),
            reason: Some("Expired".into()),
            message: Some("too old resource version".into()),
            details: None,
        };
        assert_eq!(
            status.to_string(),
            "status 410 Expired: too old resource version"
        );
        assert_eq!(ApiStatus::default().to_string(), "status");
        let unsupported = ConfigError::UnsupportedAuth {
            user: "u".into(),
            mechanism: "exec",
        };
        assert_eq!(
            unsupported.to_string(),
            "kubeconfig user \"u\" uses exec authentication, which is not supported: use a token, a tokenFile or a client certificate"
        );
    }
}
