//! HTTP client for the Kubernetes API server, configured in-cluster or from a kubeconfig.
//!
//! Every request has a bound: a connect timeout, a total timeout (or, for watch streams, a
//! response timeout plus a per-read timeout) and a body size limit. The bearer token is never
//! logged; a token file is re-read at most once per reload period and right after a 401, after
//! which the request is retried once. Errors are a [`KubeError`], never a string.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use log::{info, warn};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use ureq::http::{Response, StatusCode};
use ureq::tls::{ClientCert, PemItem, RootCerts, TlsConfig};
use ureq::{Agent, Body, BodyReader};

use super::{is_valid_namespace, is_valid_object_name, RawObject, ServiceAccount};
use crate::redact::redact_url;

/// Default path of the pod's service-account token.
pub const IN_CLUSTER_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Default path of the cluster CA bundle mounted into pods.
pub const IN_CLUSTER_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Environment variable holding the API server host inside a pod.
pub const ENV_SERVICE_HOST: &str = "KUBERNETES_SERVICE_HOST";
/// Environment variable holding the API server port inside a pod.
pub const ENV_SERVICE_PORT: &str = "KUBERNETES_SERVICE_PORT";
/// Environment variable listing kubeconfig files (the first one is used).
pub const ENV_KUBECONFIG: &str = "KUBECONFIG";

/// Largest error body read to find a Status message.
const STATUS_BODY_LIMIT: u64 = 64 * 1024;
/// Largest single line of a watch stream (one event); etcd's object limit is about 1.5 MiB.
const MAX_WATCH_LINE: usize = 16 * 1024 * 1024;

/// Where the client finds the API server and its credentials.
#[derive(Clone, Debug, Default)]
pub enum KubeConfigSource {
    /// In-cluster when `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` are set, otherwise
    /// the default kubeconfig (`KUBECONFIG`'s first path, else `~/.kube/config`).
    #[default]
    Auto,
    /// In-cluster: host and port from the environment, token and CA from these files.
    InCluster(InClusterPaths),
    /// A kubeconfig file: `path` (or the default one) and `context` (or its current-context).
    KubeConfig {
        /// The kubeconfig file; `None` means `KUBECONFIG`'s first path, else `~/.kube/config`.
        path: Option<PathBuf>,
        /// The context to use; `None` means the file's `current-context`.
        context: Option<String>,
    },
}

/// Files of the in-cluster configuration (overridable for tests).
#[derive(Clone, Debug)]
pub struct InClusterPaths {
    /// The projected service-account token, re-read periodically.
    pub token: PathBuf,
    /// The cluster CA bundle.
    pub ca: PathBuf,
}

impl Default for InClusterPaths {
    fn default() -> Self {
        InClusterPaths {
            token: PathBuf::from(IN_CLUSTER_TOKEN_PATH),
            ca: PathBuf::from(IN_CLUSTER_CA_PATH),
        }
    }
}

/// Settings of the API client.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Where the server address and credentials come from. Default: [`KubeConfigSource::Auto`].
    pub source: KubeConfigSource,
    /// Bound on name resolution and on establishing a connection (TCP + TLS). Default: 5 s.
    pub connect_timeout: Duration,
    /// Bound on receiving the response headers of a watch request. Default: 30 s.
    pub response_timeout: Duration,
    /// Largest response body accepted (a list page, an object, a JWKS). Default: 64 MiB.
    pub max_body_bytes: u64,
    /// How often a token file is re-read at most (besides right after a 401). Default: 60 s.
    pub token_reload_period: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            source: KubeConfigSource::Auto,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            max_body_bytes: 64 * 1024 * 1024,
            token_reload_period: Duration::from_secs(60),
        }
    }
}

/// Why a client could not be configured.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT` are not both set.
    NotInCluster,
    /// No kubeconfig path could be determined (no `KUBECONFIG`, no `HOME`).
    NoKubeConfigPath,
    /// A file could not be read.
    ReadFile {
        /// What the file is for (`kubeconfig`, `token`, `certificate authority` …).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The kubeconfig is not valid YAML of the expected shape.
    ParseKubeConfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// The parser's error.
        source: serde_yaml_ng::Error,
    },
    /// The kubeconfig names no context to use.
    NoCurrentContext {
        /// The kubeconfig file.
        path: PathBuf,
    },
    /// A context, cluster or user named by the kubeconfig is missing.
    MissingEntry {
        /// `context`, `cluster` or `user`.
        what: &'static str,
        /// The name looked for.
        name: String,
    },
    /// The cluster entry has no `server`.
    MissingServer {
        /// The cluster entry's name.
        cluster: String,
    },
    /// The server URL is not an `http(s)://host[:port][/path]` URL without credentials.
    InvalidServer {
        /// The URL with any credentials removed.
        url: String,
    },
    /// The user entry asks for an authentication mechanism this client does not implement.
    UnsupportedAuth {
        /// The user entry's name.
        user: String,
        /// `exec`, `auth-provider` or `basic`.
        mechanism: &'static str,
    },
    /// The kubeconfig uses a setting this client does not implement.
    UnsupportedSetting {
        /// The setting's name, e.g. `tls-server-name`.
        setting: &'static str,
    },
    /// The cluster entry sets both a CA and `insecure-skip-tls-verify` (client-go refuses it too:
    /// the operator meant verification, and would silently get none).
    InsecureWithCa {
        /// The cluster entry's name.
        cluster: String,
    },
    /// A `*-data` field is not valid base64.
    InvalidBase64 {
        /// The field's name.
        field: &'static str,
    },
    /// PEM data holds no usable certificate or key.
    InvalidPem {
        /// What the data was for (`certificate authority`, `client certificate`, `client key`).
        what: &'static str,
    },
    /// A token file is empty.
    EmptyToken {
        /// The token file.
        path: PathBuf,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NotInCluster => write!(
                f,
                "not running in a cluster: {ENV_SERVICE_HOST} and {ENV_SERVICE_PORT} must both be set"
            ),
            ConfigError::NoKubeConfigPath => {
                write!(f, "no kubeconfig: neither {ENV_KUBECONFIG} nor HOME is set")
            }
            ConfigError::ReadFile { what, path, source } => {
                write!(f, "cannot read {what} file {}: {source}", path.display())
            }
            ConfigError::ParseKubeConfig { path, source } => {
                write!(f, "invalid kubeconfig {}: {source}", path.display())
            }
            ConfigError::NoCurrentContext { path } => {
                write!(f, "kubeconfig {} has no current-context", path.display())
            }
            ConfigError::MissingEntry { what, name } => {
                write!(f, "kubeconfig has no {what} named {name:?}")
            }
            ConfigError::MissingServer { cluster } => {
                write!(f, "kubeconfig cluster {cluster:?} has no server")
            }
            ConfigError::InvalidServer { url } => write!(
                f,
                "invalid API server URL {url:?}: expected http(s)://host[:port][/path] without credentials"
            ),
            ConfigError::UnsupportedAuth { user, mechanism } => write!(
                f,
                "kubeconfig user {user:?} uses {mechanism} authentication, which is not supported: \
                 use a token, a tokenFile or a client certificate"
            ),
            ConfigError::UnsupportedSetting { setting } => {
                write!(f, "kubeconfig setting {setting} is not supported")
            }
            ConfigError::InsecureWithCa { cluster } => write!(
                f,
                "kubeconfig cluster {cluster:?} sets both a certificate authority and insecure-skip-tls-verify; remove one (client-go refuses this too)"
            ),
            ConfigError::InvalidBase64 { field } => write!(f, "{field} is not valid base64"),
            ConfigError::InvalidPem { what } => write!(f, "no usable PEM {what} found"),
            ConfigError::EmptyToken { path } => write!(f, "token file {} is empty", path.display()),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::ReadFile { source, .. } => Some(source),
            ConfigError::ParseKubeConfig { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A failed request to the API server.
#[derive(Debug)]
#[non_exhaustive]
pub enum KubeError {
    /// No response: name resolution, connection, TLS or sending the request failed.
    Connect(ureq::Error),
    /// A time bound was reached (connect, response, read or total).
    Timeout,
    /// The server answered with a non-success status.
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
    Disconnected(ureq::Error),
    /// The body is larger than the configured limit.
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The body is not the JSON expected.
    Decode(serde_json::Error),
    /// A URL outside the API server's origin was refused (credentials are never sent elsewhere).
    CrossOrigin,
    /// The client could not be configured.
    Config(ConfigError),
    /// A local resource (a thread) could not be obtained.
    Local(std::io::Error),
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

impl fmt::Display for KubeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubeError::Connect(e) => write!(f, "connection to the API server failed: {e}"),
            KubeError::Timeout => write!(f, "API request timed out"),
            KubeError::Status {
                code,
                reason,
                message,
                ..
            } => {
                write!(f, "API server answered {code}")?;
                if let Some(r) = reason {
                    write!(f, " {r}")?;
                }
                if let Some(m) = message {
                    write!(f, ": {m}")?;
                }
                Ok(())
            }
            KubeError::Disconnected(e) => write!(f, "API connection broke: {e}"),
            KubeError::BodyTooLarge { limit } => {
                write!(f, "API response larger than {limit} bytes")
            }
            KubeError::Decode(e) => write!(f, "unexpected API response: {e}"),
            KubeError::CrossOrigin => write!(f, "URL is not on the API server's origin"),
            KubeError::Config(e) => write!(f, "{e}"),
            KubeError::Local(e) => write!(f, "local resource unavailable: {e}"),
        }
    }
}

impl std::error::Error for KubeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KubeError::Connect(e) | KubeError::Disconnected(e) => Some(e),
            KubeError::Decode(e) => Some(e),
            KubeError::Config(e) => Some(e),
            KubeError::Local(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for KubeError {
    fn from(e: ConfigError) -> Self {
        KubeError::Config(e)
    }
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
        if let Some(r) = &self.reason {
            write!(f, " {r}")?;
        }
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

/// A response returned as it came, for callers that interpret the status themselves.
#[derive(Clone, Debug)]
pub struct RawResponse {
    /// HTTP status code.
    pub status: u16,
    /// The `Cache-Control` header, if any.
    pub cache_control: Option<String>,
    /// The body (bounded by [`ClientSettings::max_body_bytes`]).
    pub body: Vec<u8>,
}

/// A line-by-line reader of a streaming response (a watch). Each read waits at most the read
/// timeout given when the stream was opened.
pub struct LineStream {
    reader: BufReader<BodyReader<'static>>,
}

impl fmt::Debug for LineStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LineStream")
    }
}

impl LineStream {
    /// The next line without its newline; `Ok(None)` when the server ended the stream.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, KubeError> {
        let mut line = Vec::new();
        let limit = u64::try_from(MAX_WATCH_LINE).unwrap_or(u64::MAX);
        let n = (&mut self.reader)
            .take(limit + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| map_body_error(ureq::Error::from(e), limit))?;
        if n == 0 {
            return Ok(None);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        } else if line.len() > MAX_WATCH_LINE {
            return Err(KubeError::BodyTooLarge { limit });
        }
        Ok(Some(line))
    }
}

/// A secret string whose `Debug` never shows it.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How the client authenticates, as configured.
#[derive(Debug)]
enum CredentialSpec {
    None,
    Token(Secret),
    /// A token file; `fallback` is the kubeconfig's inline `token`, used if the file cannot be read.
    TokenFile {
        path: PathBuf,
        fallback: Option<Secret>,
    },
}

/// A client certificate and key in PEM form. `Debug` never shows the key.
struct ClientIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

/// Everything needed to build a client, resolved from in-cluster files or a kubeconfig.
#[derive(Debug)]
struct Endpoint {
    server: String,
    ca_pem: Option<Vec<u8>>,
    insecure: bool,
    credential: CredentialSpec,
    identity: Option<ClientIdentity>,
    description: String,
}

/// The bearer token in use.
enum Credential {
    None,
    Static(Secret),
    File(FileToken),
}

/// A token read from a file, kept current by re-reading it.
struct FileToken {
    path: PathBuf,
    period: Duration,
    state: Mutex<FileTokenState>,
}

struct FileTokenState {
    token: Secret,
    read_at: Instant,
}

impl FileToken {
    /// The token to send, re-reading the file when the last read is older than the period.
    fn current(&self) -> Secret {
        let mut state = self.state.lock();
        if state.read_at.elapsed() >= self.period {
            self.reload(&mut state);
        }
        state.token.clone()
    }

    /// Re-reads now (after a 401); keeps the last token if the file cannot be read.
    fn reload_now(&self) {
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

fn read_token_file(path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        what: "token",
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::EmptyToken {
            path: path.to_owned(),
        });
    }
    Ok(Secret(token.to_owned()))
}

/// The scheme, host and port of a URL, for same-origin checks.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

/// A parsed `http(s)://` URL: its origin, whether it carried credentials, and the rest.
struct ParsedUrl<'a> {
    origin: Origin,
    has_userinfo: bool,
    /// Path, query and fragment, starting with `/`, `?` or `#`, or empty.
    rest: &'a str,
}

fn parse_url(url: &str) -> Option<ParsedUrl<'_>> {
    let (scheme, after) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let (has_userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (true, &authority[i + 1..]),
        None => (false, authority),
    };
    let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
        let close = stripped.find(']')?;
        let host = &hostport[..close + 2];
        let after_host = &stripped[close + 1..];
        let port = match after_host.strip_prefix(':') {
            Some(p) => Some(p),
            None if after_host.is_empty() => None,
            None => return None,
        };
        (host, port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    let port = match port {
        Some(p) => p.parse::<u16>().ok()?,
        None => default_port,
    };
    Some(ParsedUrl {
        origin: Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        },
        has_userinfo,
        rest,
    })
}

/// A blocking client for the Kubernetes API server.
pub struct ApiClient {
    agent: Agent,
    base_url: String,
    origin: Origin,
    credential: Credential,
    max_body_bytes: u64,
    response_timeout: Duration,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// Builds a client from the settings' source (in-cluster or kubeconfig).
    pub fn new(settings: &ClientSettings) -> Result<ApiClient, ConfigError> {
        let endpoint = match &settings.source {
            KubeConfigSource::Auto => {
                if in_cluster_env().is_some() {
                    in_cluster_endpoint_from_env(&InClusterPaths::default())?
                } else {
                    let path = default_kubeconfig_path()?;
                    kubeconfig_endpoint(&path, None)?
                }
            }
            KubeConfigSource::InCluster(paths) => in_cluster_endpoint_from_env(paths)?,
            KubeConfigSource::KubeConfig { path, context } => {
                let path = match path {
                    Some(p) => p.clone(),
                    None => default_kubeconfig_path()?,
                };
                kubeconfig_endpoint(&path, context.as_deref())?
            }
        };
        ApiClient::from_endpoint(endpoint, settings)
    }

    /// Builds an in-cluster client with the default settings: host and port from
    /// `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT`, the pod's token and CA files.
    pub fn in_cluster() -> Result<ApiClient, ConfigError> {
        ApiClient::new(&ClientSettings {
            source: KubeConfigSource::InCluster(InClusterPaths::default()),
            ..ClientSettings::default()
        })
    }

    /// Builds a client with the default settings from a kubeconfig (`None`: `KUBECONFIG`'s first
    /// path, else `~/.kube/config`) and its current-context.
    pub fn from_kubeconfig(path: Option<&Path>) -> Result<ApiClient, ConfigError> {
        ApiClient::new(&ClientSettings {
            source: KubeConfigSource::KubeConfig {
                path: path.map(Path::to_owned),
                context: None,
            },
            ..ClientSettings::default()
        })
    }

    fn from_endpoint(
        endpoint: Endpoint,
        settings: &ClientSettings,
    ) -> Result<ApiClient, ConfigError> {
        let invalid_server = || ConfigError::InvalidServer {
            url: redact_url(&endpoint.server),
        };
        let parsed = parse_url(&endpoint.server).ok_or_else(invalid_server)?;
        if parsed.has_userinfo || parsed.rest.contains(['?', '#']) {
            return Err(invalid_server());
        }
        let base_url = format!(
            "{}://{}{}",
            parsed.origin.scheme,
            host_port(&endpoint.server),
            parsed.rest.trim_end_matches('/')
        );
        let origin = parsed.origin;

        let mut tls = TlsConfig::builder();
        if endpoint.insecure {
            warn!("TLS verification of the API server {base_url} is disabled (insecure-skip-tls-verify)");
            tls = tls.disable_verification(true);
        } else if let Some(pem) = &endpoint.ca_pem {
            let certs = pem_certificates(pem, "certificate authority")?;
            tls = tls.root_certs(RootCerts::new_with_certs(&certs));
        }
        if let Some(identity) = &endpoint.identity {
            let chain = pem_certificates(&identity.cert_pem, "client certificate")?;
            let key = pem_private_key(&identity.key_pem)?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }

        let credential = match endpoint.credential {
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
                    period: settings.token_reload_period,
                    state: Mutex::new(FileTokenState {
                        token,
                        read_at: Instant::now(),
                    }),
                })
            }
        };
        if origin.scheme == "http"
            && !matches!(credential, Credential::None)
            && !is_loopback(&origin.host)
        {
            warn!("the API server {base_url} is plain http: its bearer token travels unencrypted");
        }

        let config = Agent::config_builder()
            .http_status_as_error(false)
            // Never follow redirects: the bearer token must only go to the configured server.
            .max_redirects(0)
            .timeout_resolve(Some(settings.connect_timeout))
            .timeout_connect(Some(settings.connect_timeout))
            .user_agent(concat!("nats-k8s-oidc-callout/", env!("CARGO_PKG_VERSION")))
            .accept("application/json")
            .tls_config(tls.build())
            .build();
        info!(
            "Kubernetes API server {base_url} ({})",
            endpoint.description
        );
        Ok(ApiClient {
            agent: Agent::new_with_config(config),
            base_url,
            origin,
            credential,
            max_body_bytes: settings.max_body_bytes,
            response_timeout: settings.response_timeout,
        })
    }

    /// The server's base URL (scheme, host, port and any path prefix; no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Whether `url` has the API server's scheme, host and port (default ports filled in).
    pub fn is_same_origin(&self, url: &str) -> bool {
        parse_url(url).is_some_and(|p| p.origin == self.origin)
    }

    /// GETs `path_and_query` (starting with `/`) and decodes the JSON body; non-2xx is an error.
    pub fn get_json<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<T, KubeError> {
        let url = self.url_for(path_and_query)?;
        let mut response = self.send(&url, Wait::Total(timeout))?;
        if !response.status().is_success() {
            return Err(status_error(&mut response));
        }
        let body = read_body(response.body_mut(), self.max_body_bytes)?;
        serde_json::from_slice(&body).map_err(KubeError::Decode)
    }

    /// GETs a path (or a full URL on the server's own origin) with the cluster credentials and
    /// returns status, `Cache-Control` and body whatever the status.
    pub fn get_raw(&self, path: &str, timeout: Duration) -> Result<RawResponse, KubeError> {
        let url = self.url_for(path)?;
        let mut response = self.send(&url, Wait::Total(timeout))?;
        let status = response.status().as_u16();
        let cache_control = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_body(response.body_mut(), self.max_body_bytes)?;
        Ok(RawResponse {
            status,
            cache_control,
            body,
        })
    }

    /// Opens a streaming GET (a watch): the response headers must arrive within the response
    /// timeout, then each read waits at most `read_timeout` (keep it above `timeoutSeconds`).
    pub fn get_lines(
        &self,
        path_and_query: &str,
        read_timeout: Duration,
    ) -> Result<LineStream, KubeError> {
        let url = self.url_for(path_and_query)?;
        let mut response = self.send(
            &url,
            Wait::Stream {
                response: self.response_timeout,
                read: read_timeout,
            },
        )?;
        if !response.status().is_success() {
            return Err(status_error(&mut response));
        }
        let reader = response.into_body().into_reader();
        Ok(LineStream {
            reader: BufReader::new(reader),
        })
    }

    /// GETs one ServiceAccount; `Ok(None)` on 404.
    pub fn get_service_account(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<ServiceAccount>, KubeError> {
        // Names go into the path: only valid Kubernetes names are accepted, so nothing a token
        // carries can point the request at another resource.
        if !is_valid_namespace(namespace) || !is_valid_object_name(name) {
            return Ok(None);
        }
        let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}");
        match self.get_json::<RawObject>(&path, timeout) {
            Ok(object) => match object.into_service_account(None) {
                Ok(sa) if sa.namespace == namespace && sa.name == name => Ok(Some(sa)),
                Ok(_) | Err(_) => Ok(None),
            },
            Err(e) if e.status_code() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn url_for(&self, path_or_url: &str) -> Result<String, KubeError> {
        if path_or_url.starts_with('/') {
            return Ok(format!("{}{}", self.base_url, path_or_url));
        }
        // A full URL is accepted only on the server's own origin: the credentials go nowhere else.
        match parse_url(path_or_url) {
            Some(p) if p.origin == self.origin && !p.has_userinfo => Ok(path_or_url.to_owned()),
            _ => Err(KubeError::CrossOrigin),
        }
    }

    fn bearer(&self) -> Option<Secret> {
        match &self.credential {
            Credential::None => None,
            Credential::Static(t) => Some(t.clone()),
            Credential::File(f) => Some(f.current()),
        }
    }

    /// Sends a GET with the bearer token; on a 401 with a token file, re-reads it and retries once.
    fn send(&self, url: &str, wait: Wait) -> Result<Response<Body>, KubeError> {
        let mut retried = false;
        loop {
            let mut request = self.agent.get(url);
            if let Some(token) = self.bearer() {
                request = request.header("Authorization", format!("Bearer {}", token.0));
            }
            let request = match wait {
                Wait::Total(total) => request.config().timeout_global(Some(total)).build(),
                Wait::Stream { response, read } => request
                    .config()
                    .timeout_recv_response(Some(response))
                    .timeout_per_read(Some(read))
                    .build(),
            };
            let response = request.call().map_err(map_call_error)?;
            if response.status() == StatusCode::UNAUTHORIZED && !retried {
                if let Credential::File(file) = &self.credential {
                    // The kubelet may have rotated the token since the last read.
                    info!(
                        "kubernetes api answered 401; re-reading the token file {} and retrying once",
                        file.path.display()
                    );
                    file.reload_now();
                    retried = true;
                    continue;
                }
            }
            return Ok(response);
        }
    }
}

/// How long a request may take.
#[derive(Clone, Copy)]
enum Wait {
    /// Everything, body included, within this bound.
    Total(Duration),
    /// Headers within `response`, then each read within `read`.
    Stream { response: Duration, read: Duration },
}

fn host_port(server: &str) -> &str {
    let after = server.split_once("://").map_or(server, |(_, a)| a);
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    &after[..end]
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn map_call_error(e: ureq::Error) -> KubeError {
    match e {
        ureq::Error::Timeout(_) => KubeError::Timeout,
        ureq::Error::Io(ref io) if is_timeout_kind(io.kind()) => KubeError::Timeout,
        other => KubeError::Connect(other),
    }
}

fn map_body_error(e: ureq::Error, limit: u64) -> KubeError {
    match e {
        ureq::Error::Timeout(_) => KubeError::Timeout,
        ureq::Error::Io(ref io) if is_timeout_kind(io.kind()) => KubeError::Timeout,
        ureq::Error::BodyExceedsLimit(_) => KubeError::BodyTooLarge { limit },
        other => KubeError::Disconnected(other),
    }
}

fn is_timeout_kind(kind: std::io::ErrorKind) -> bool {
    matches!(
        kind,
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

fn read_body(body: &mut Body, limit: u64) -> Result<Vec<u8>, KubeError> {
    body.with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| map_body_error(e, limit))
}

/// Turns a non-success response into [`KubeError::Status`], reading its Status body if any.
fn status_error(response: &mut Response<Body>) -> KubeError {
    let code = response.status().as_u16();
    let header_retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let status: ApiStatus = read_body(response.body_mut(), STATUS_BODY_LIMIT)
        .ok()
        .and_then(|body| serde_json::from_slice(&body).ok())
        .unwrap_or_default();
    let retry_after = header_retry.or_else(|| status.retry_after());
    KubeError::Status {
        code,
        reason: status.reason,
        message: status.message,
        retry_after,
    }
}

fn pem_certificates(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<ureq::tls::Certificate<'static>>, ConfigError> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(_) => return Err(ConfigError::InvalidPem { what }),
        }
    }
    if certs.is_empty() {
        return Err(ConfigError::InvalidPem { what });
    }
    Ok(certs)
}

fn pem_private_key(pem: &[u8]) -> Result<ureq::tls::PrivateKey<'static>, ConfigError> {
    let what = "client key";
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(PemItem::PrivateKey(k)) => return Ok(k),
            Ok(_) => {}
            Err(_) => return Err(ConfigError::InvalidPem { what }),
        }
    }
    Err(ConfigError::InvalidPem { what })
}

// ---------------------------------------------------------------------------------------------
// In-cluster configuration

fn in_cluster_env() -> Option<(String, String)> {
    let host = std::env::var(ENV_SERVICE_HOST)
        .ok()
        .filter(|h| !h.is_empty())?;
    let port = std::env::var(ENV_SERVICE_PORT)
        .ok()
        .filter(|p| !p.is_empty())?;
    Some((host, port))
}

fn in_cluster_endpoint_from_env(paths: &InClusterPaths) -> Result<Endpoint, ConfigError> {
    let (host, port) = in_cluster_env().ok_or(ConfigError::NotInCluster)?;
    in_cluster_endpoint(&host, &port, paths)
}

fn in_cluster_endpoint(
    host: &str,
    port: &str,
    paths: &InClusterPaths,
) -> Result<Endpoint, ConfigError> {
    // An IPv6 service address must be bracketed in a URL.
    let server = if host.contains(':') && !host.starts_with('[') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    };
    let ca_pem = read_file("certificate authority", &paths.ca)?;
    // Read once now so a missing token is a startup error, not a stream of 401s.
    read_token_file(&paths.token)?;
    Ok(Endpoint {
        server,
        ca_pem: Some(ca_pem),
        insecure: false,
        credential: CredentialSpec::TokenFile {
            path: paths.token.clone(),
            fallback: None,
        },
        identity: None,
        description: "in-cluster".to_owned(),
    })
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

// ---------------------------------------------------------------------------------------------
// Kubeconfig

fn default_kubeconfig_path() -> Result<PathBuf, ConfigError> {
    if let Some(list) = std::env::var_os(ENV_KUBECONFIG) {
        if let Some(first) = std::env::split_paths(&list).find(|p| !p.as_os_str().is_empty()) {
            return Ok(first);
        }
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home).join(".kube").join("config")),
        _ => Err(ConfigError::NoKubeConfigPath),
    }
}

#[derive(Debug, Default, Deserialize)]
struct KubeConfigDoc {
    #[serde(default, rename = "current-context")]
    current_context: Option<String>,
    #[serde(default)]
    clusters: Option<Vec<Named<ClusterEntry>>>,
    #[serde(default)]
    contexts: Option<Vec<Named<ContextEntry>>>,
    #[serde(default)]
    users: Option<Vec<Named<UserEntry>>>,
}

/// A `{name, <entry>}` item of a kubeconfig list; the entry's key differs per list.
#[derive(Debug, Deserialize)]
struct Named<T> {
    name: String,
    #[serde(default, alias = "cluster", alias = "context", alias = "user")]
    entry: Option<T>,
}

#[derive(Debug, Default, Deserialize)]
struct ClusterEntry {
    #[serde(default)]
    server: Option<String>,
    #[serde(default, rename = "certificate-authority")]
    certificate_authority: Option<String>,
    #[serde(default, rename = "certificate-authority-data")]
    certificate_authority_data: Option<String>,
    #[serde(default, rename = "insecure-skip-tls-verify")]
    insecure_skip_tls_verify: Option<bool>,
    #[serde(default, rename = "tls-server-name")]
    tls_server_name: Option<String>,
    #[serde(default, rename = "proxy-url")]
    proxy_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ContextEntry {
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Default, Deserialize)]
struct UserEntry {
    #[serde(default)]
    token: Option<String>,
    #[serde(default, rename = "tokenFile")]
    token_file: Option<String>,
    #[serde(default, rename = "client-certificate")]
    client_certificate: Option<String>,
    #[serde(default, rename = "client-certificate-data")]
    client_certificate_data: Option<String>,
    #[serde(default, rename = "client-key")]
    client_key: Option<String>,
    #[serde(default, rename = "client-key-data")]
    client_key_data: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    exec: Option<serde_yaml_ng::Value>,
    #[serde(default, rename = "auth-provider")]
    auth_provider: Option<serde_yaml_ng::Value>,
}

impl fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserEntry(..)")
    }
}

fn kubeconfig_endpoint(path: &Path, context: Option<&str>) -> Result<Endpoint, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        what: "kubeconfig",
        path: path.to_owned(),
        source,
    })?;
    let doc: KubeConfigDoc = if text.trim().is_empty() {
        KubeConfigDoc::default()
    } else {
        serde_yaml_ng::from_str(&text).map_err(|source| ConfigError::ParseKubeConfig {
            path: path.to_owned(),
            source,
        })?
    };
    let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
    resolve_kubeconfig(doc, path, base_dir, context)
}

fn find<'a, T>(
    list: &'a Option<Vec<Named<T>>>,
    what: &'static str,
    name: &str,
) -> Result<&'a Option<T>, ConfigError> {
    list.iter()
        .flatten()
        .find(|n| n.name == name)
        .map(|n| &n.entry)
        .ok_or_else(|| ConfigError::MissingEntry {
            what,
            name: name.to_owned(),
        })
}

fn resolve_kubeconfig(
    doc: KubeConfigDoc,
    path: &Path,
    base_dir: &Path,
    context: Option<&str>,
) -> Result<Endpoint, ConfigError> {
    let context_name = context
        .map(str::to_owned)
        .or(doc.current_context.clone())
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ConfigError::NoCurrentContext {
            path: path.to_owned(),
        })?;
    let ctx = find(&doc.contexts, "context", &context_name)?;
    let empty_ctx = ContextEntry::default();
    let ctx = ctx.as_ref().unwrap_or(&empty_ctx);
    let cluster_name = ctx.cluster.clone().unwrap_or_default();
    let cluster = find(&doc.clusters, "cluster", &cluster_name)?;
    let empty_cluster = ClusterEntry::default();
    let cluster = cluster.as_ref().unwrap_or(&empty_cluster);

    let server = cluster
        .server
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ConfigError::MissingServer {
            cluster: cluster_name.clone(),
        })?;
    if cluster
        .tls_server_name
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(ConfigError::UnsupportedSetting {
            setting: "tls-server-name",
        });
    }
    if cluster.proxy_url.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ConfigError::UnsupportedSetting {
            setting: "proxy-url",
        });
    }
    let resolve = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            base_dir.join(p)
        }
    };
    let insecure = cluster.insecure_skip_tls_verify.unwrap_or(false);
    // Inline data wins over a file, as in client-go.
    let ca_pem = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) if !data.is_empty() => {
            Some(decode_base64(data, "certificate-authority-data")?)
        }
        (_, Some(file)) if !file.is_empty() => {
            Some(read_file("certificate authority", &resolve(file))?)
        }
        _ => None,
    };
    if insecure && ca_pem.is_some() {
        return Err(ConfigError::InsecureWithCa {
            cluster: cluster_name,
        });
    }

    let mut credential = CredentialSpec::None;
    let mut identity = None;
    if let Some(user_name) = ctx.user.as_deref().filter(|u| !u.is_empty()) {
        let user = find(&doc.users, "user", user_name)?;
        if let Some(user) = user {
            let unsupported = |mechanism| ConfigError::UnsupportedAuth {
                user: user_name.to_owned(),
                mechanism,
            };
            if user.exec.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(unsupported("exec"));
            }
            if user.auth_provider.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(unsupported("auth-provider"));
            }
            if user.username.as_deref().is_some_and(|u| !u.is_empty()) {
                return Err(unsupported("basic"));
            }
            let token = user.token.clone().filter(|t| !t.is_empty()).map(Secret);
            // A token file wins over an inline token (it can be rotated), which stays as fallback.
            credential = match (user.token_file.as_deref().filter(|f| !f.is_empty()), token) {
                (Some(file), fallback) => CredentialSpec::TokenFile {
                    path: resolve(file),
                    fallback,
                },
                (None, Some(t)) => CredentialSpec::Token(t),
                (None, None) => CredentialSpec::None,
            };
            let cert = match (&user.client_certificate_data, &user.client_certificate) {
                (Some(d), _) if !d.is_empty() => Some(decode_base64(d, "client-certificate-data")?),
                (_, Some(f)) if !f.is_empty() => {
                    Some(read_file("client certificate", &resolve(f))?)
                }
                _ => None,
            };
            let key = match (&user.client_key_data, &user.client_key) {
                (Some(d), _) if !d.is_empty() => Some(decode_base64(d, "client-key-data")?),
                (_, Some(f)) if !f.is_empty() => Some(read_file("client key", &resolve(f))?),
                _ => None,
            };
            identity = match (cert, key) {
                (Some(cert_pem), Some(key_pem)) => Some(ClientIdentity { cert_pem, key_pem }),
                (None, None) => None,
                (Some(_), None) => return Err(ConfigError::InvalidPem { what: "client key" }),
                (None, Some(_)) => {
                    return Err(ConfigError::InvalidPem {
                        what: "client certificate",
                    })
                }
            };
        }
    }
    Ok(Endpoint {
        server,
        ca_pem,
        insecure,
        credential,
        identity,
        description: format!("kubeconfig {} context {context_name}", path.display()),
    })
}

fn decode_base64(data: &str, field: &'static str) -> Result<Vec<u8>, ConfigError> {
    let compact: String = data.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| ConfigError::InvalidBase64 { field })
}

/// Shared by tests of other modules: a client on a plain-http server with a static token.
#[cfg(test)]
pub(crate) fn test_client(base: &str, token: Option<&str>) -> ApiClient {
    let endpoint = Endpoint {
        server: base.to_owned(),
        ca_pem: None,
        insecure: false,
        credential: token.map_or(CredentialSpec::None, |t| {
            CredentialSpec::Token(Secret(t.to_owned()))
        }),
        identity: None,
        description: "test".to_owned(),
    };
    let settings = ClientSettings {
        source: KubeConfigSource::Auto,
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(2),
        ..ClientSettings::default()
    };
    ApiClient::from_endpoint(endpoint, &settings).expect("test client")
}

/// Shared by tests of other modules: a minimal HTTP/1.1 server on 127.0.0.1 that answers each
/// request (one per connection) with what `respond` returns.
#[cfg(test)]
pub(crate) mod test_server {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::Arc;

    /// One received request: its request line and headers (lower-cased names).
    #[derive(Clone, Debug)]
    pub(crate) struct Request {
        pub(crate) path: String,
        pub(crate) headers: Vec<(String, String)>,
    }

    impl Request {
        pub(crate) fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// What to send back: the raw bytes after the connection is accepted (status line included).
    pub(crate) type Responder = dyn Fn(&Request) -> Vec<u8> + Send + Sync;

    /// Starts the server; returns its base URL. The thread lives until the test process ends.
    pub(crate) fn start(respond: Arc<Responder>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let respond = respond.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                            break;
                        }
                        if let Some((n, v)) = h.split_once(':') {
                            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
                        }
                    }
                    let out = respond(&Request { path, headers });
                    let _ = stream.write_all(&out);
                    let _ = stream.flush();
                });
            }
        });
        format!("http://{addr}")
    }

    /// A complete response with a body and `Connection: close`.
    pub(crate) fn response(status: &str, extra_headers: &[(&str, &str)], body: &str) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (n, v) in extra_headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(body);
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::{response, start, Request};
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    // A self-signed P-256 test CA (no private key kept anywhere).
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBeDCCAR+gAwIBAgIUW6v5Z8DKDsOb+F/2wiYbf3LjFaIwCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHdGVzdC1jYTAeFw0yNjExMjQwMjEwNTlaFw0zNjExMjEwMjEw
NTlaMBIxEDAOBgNVBAMMB3Rlc3QtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AARO5T4w0ijk3tYdy197gVZFp6r08fRAB/I5SwBMUWCSWQeEd+kto27umP1picVQ
pcCBDPg8FxcjjoVtvmc9yeHxo1MwUTAdBgNVHQ4EFgQU39COuLfjeCWHimeXe8z8
5yLa9D8wHwYDVR0jBBgwFoAU39COuLfjeCWHimeXe8z85yLa9D8wDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiB/cgAvBBdnNFIQjk/h7kQmcY6IekUY
KADQZNl+lVWumQIgKHfTEvnHpUBcVp6P0ScO/ftWy5l1mJbI3LZ0Nvgf5sI=
-----END CERTIFICATE-----
";

    fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn kubeconfig(dir: &Path, cluster: &str, user: &str) -> PathBuf {
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: dev\n\
             contexts:\n- name: dev\n  context:\n    cluster: c1\n    user: u1\n\
             - name: other\n  context:\n    cluster: c1\n\
             clusters:\n- name: c1\n  cluster:\n{cluster}\
             users:\n- name: u1\n  user:\n{user}"
        );
        write(dir, "config", &text)
    }

    #[test]
    fn kubeconfig_with_inline_token_and_ca_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = kubeconfig(
            dir.path(),
            &format!(
                "    server: https://10.0.0.1:6443/\n    certificate-authority-data: {}\n",
                b64(CA_PEM)
            ),
            "    token: abc\n",
        );
        let ep = kubeconfig_endpoint(&path, None).unwrap();
        assert_eq!(ep.server, "https://10.0.0.1:6443/");
        assert_eq!(ep.ca_pem.as_deref(), Some(CA_PEM.as_bytes()));
        assert!(!ep.insecure);
        assert!(matches!(ep.credential, CredentialSpec::Token(Secret(ref t)) if t == "abc"));
        assert!(ep.identity.is_none());
    }

    #[test]
    fn kubeconfig_relative_files_resolve_against_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ca.pem", CA_PEM);
        write(dir.path(), "tok", "file-token\n");
        write(dir.path(), "client.crt", "CERT");
        write(dir.path(), "client.key", "KEY");
        let path = kubeconfig(
            dir.path(),
            "    server: https://example:6443\n    certificate-authority: ca.pem\n",
            "    tokenFile: tok\n    token: inline\n    client-certificate: client.crt\n    client-key: client.key\n",
        );
        let ep = kubeconfig_endpoint(&path, None).unwrap();
        assert_eq!(ep.ca_pem.as_deref(), Some(CA_PEM.as_bytes()));
        match &ep.credential {
            CredentialSpec::TokenFile { path, fallback } => {
                assert_eq!(path, &dir.path().join("tok"));
                assert_eq!(fallback.as_ref().map(|s| s.0.as_str()), Some("inline"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let id = ep.identity.unwrap();
        assert_eq!(id.cert_pem, b"CERT");
        assert_eq!(id.key_pem, b"KEY");
    }

    #[test]
    fn kubeconfig_client_cert_data_and_insecure() {
        let dir = tempfile::tempdir().unwrap();
        let path = kubeconfig(
            dir.path(),
            "    server: https://example:6443\n    insecure-skip-tls-verify: true\n",
            &format!(
                "    client-certificate-data: {}\n    client-key-data: {}\n",
                b64("CERT"),
                b64("KEY")
            ),
        );
        let ep = kubeconfig_endpoint(&path, None).unwrap();
        assert!(ep.insecure);
        assert!(ep.ca_pem.is_none());
        assert!(matches!(ep.credential, CredentialSpec::None));
        let id = ep.identity.unwrap();
        assert_eq!(id.cert_pem, b"CERT");
        assert_eq!(id.key_pem, b"KEY");
    }

    #[test]
    fn kubeconfig_exec_and_auth_provider_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = kubeconfig(
            dir.path(),
            "    server: https://example:6443\n",
            "    exec:\n      command: aws\n      apiVersion: client.authentication.k8s.io/v1beta1\n",
        );
        let err = kubeconfig_endpoint(&path, None).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::UnsupportedAuth {
                mechanism: "exec",
                ..
            }
        ));
        assert!(err.to_string().contains("exec"), "{err}");

        let path = kubeconfig(
            dir.path(),
            "    server: https://example:6443\n",
            "    auth-provider:\n      name: gcp\n",
        );
        let err = kubeconfig_endpoint(&path, None).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::UnsupportedAuth {
                mechanism: "auth-provider",
                ..
            }
        ));
    }

    #[test]
    fn kubeconfig_context_override_and_missing_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = kubeconfig(
            dir.path(),
            "    server: http://127.0.0.1:1\n",
            "    token: t\n",
        );
        let ep = kubeconfig_endpoint(&path, Some("other")).unwrap();
        assert!(
            matches!(ep.credential, CredentialSpec::None),
            "context without user"
        );
        let err = kubeconfig_endpoint(&path, Some("nope")).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::MissingEntry {
                what: "context",
                ..
            }
        ));
        let bad = write(dir.path(), "bad", "clusters: [\n");
        assert!(matches!(
            kubeconfig_endpoint(&bad, None),
            Err(ConfigError::ParseKubeConfig { .. })
        ));
        let no_ctx = write(dir.path(), "noctx", "clusters: []\n");
        assert!(matches!(
            kubeconfig_endpoint(&no_ctx, None),
            Err(ConfigError::NoCurrentContext { .. })
        ));
    }

    #[test]
    fn invalid_ca_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = kubeconfig(
            dir.path(),
            &format!(
                "    server: https://example:6443\n    certificate-authority-data: {}\n",
                b64("not a pem")
            ),
            "    token: t\n",
        );
        let err = ApiClient::from_kubeconfig(Some(&path)).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::InvalidPem {
                what: "certificate authority"
            }
        ));
    }

    #[test]
    fn in_cluster_brackets_ipv6_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let paths = InClusterPaths {
            token: write(dir.path(), "token", "tok"),
            ca: write(dir.path(), "ca.crt", CA_PEM),
        };
        let ep = in_cluster_endpoint("fd00::1", "443", &paths).unwrap();
        assert_eq!(ep.server, "https://[fd00::1]:443");
        let ep = in_cluster_endpoint("10.96.0.1", "443", &paths).unwrap();
        assert_eq!(ep.server, "https://10.96.0.1:443");
        let missing = InClusterPaths {
            token: dir.path().join("missing"),
            ca: paths.ca.clone(),
        };
        assert!(matches!(
            in_cluster_endpoint("10.96.0.1", "443", &missing),
            Err(ConfigError::ReadFile { what: "token", .. })
        ));
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let c = test_client("http://127.0.0.1:8080/prefix/", None);
        assert_eq!(c.base_url(), "http://127.0.0.1:8080/prefix");
        assert!(c.is_same_origin("http://127.0.0.1:8080/openid/v1/jwks"));
        assert!(c.is_same_origin("HTTP://127.0.0.1:8080"));
        assert!(!c.is_same_origin("https://127.0.0.1:8080/x"));
        assert!(!c.is_same_origin("http://127.0.0.1:8081/x"));
        assert!(!c.is_same_origin("http://127.0.0.2:8080/x"));
        assert!(!c.is_same_origin("not a url"));
        let c = test_client("https://[fd00::1]/", None);
        assert!(c.is_same_origin("https://[FD00::1]:443/x"));
        assert!(!c.is_same_origin("https://fd00::1/x"));
        assert!(matches!(
            c.get_raw("https://evil.example/x", Duration::from_secs(1)),
            Err(KubeError::CrossOrigin)
        ));
    }

    #[test]
    fn credentials_are_removed_from_urls() {
        let err = ApiClient::from_endpoint(
            Endpoint {
                server: "https://user:secret@h:1".to_owned(),
                ca_pem: None,
                insecure: false,
                credential: CredentialSpec::None,
                identity: None,
                description: String::new(),
            },
            &ClientSettings::default(),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let c = test_client("http://127.0.0.1:1", Some("very-secret"));
        assert!(!format!("{c:?}").contains("very-secret"));
        assert!(!format!("{:?}", Secret("very-secret".into())).contains("very-secret"));
    }

    #[test]
    fn status_errors_carry_reason_message_and_retry_after() {
        let base = start(Arc::new(|_req: &Request| {
            response(
                "429 Too Many Requests",
                &[("Retry-After", "7")],
                r#"{"kind":"Status","status":"Failure","reason":"TooManyRequests","message":"slow down","code":429}"#,
            )
        }));
        let c = test_client(&base, Some("t"));
        let err = c
            .get_json::<serde_json::Value>("/api/v1/serviceaccounts", Duration::from_secs(2))
            .unwrap_err();
        match err {
            KubeError::Status {
                code,
                reason,
                message,
                retry_after,
            } => {
                assert_eq!(code, 429);
                assert_eq!(reason.as_deref(), Some("TooManyRequests"));
                assert_eq!(message.as_deref(), Some("slow down"));
                assert_eq!(retry_after, Some(Duration::from_secs(7)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn token_file_is_reread_after_401_and_request_retried_once() {
        let dir = tempfile::tempdir().unwrap();
        let token_path = write(dir.path(), "token", "old");
        let ca = write(dir.path(), "ca.crt", CA_PEM);
        let calls = Arc::new(AtomicUsize::new(0));
        let accept_new = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (calls2, accept2) = (calls.clone(), accept_new.clone());
        let base = start(Arc::new(move |req: &Request| {
            calls2.fetch_add(1, Ordering::SeqCst);
            if accept2.load(Ordering::SeqCst) && req.header("authorization") == Some("Bearer new") {
                response(
                    "200 OK",
                    &[("Cache-Control", "max-age=60")],
                    r#"{"ok":true}"#,
                )
            } else {
                response("401 Unauthorized", &[], r#"{"kind":"Status","code":401}"#)
            }
        }));
        let endpoint = Endpoint {
            server: base,
            ca_pem: Some(std::fs::read(&ca).unwrap()),
            insecure: false,
            credential: CredentialSpec::TokenFile {
                path: token_path.clone(),
                fallback: None,
            },
            identity: None,
            description: String::new(),
        };
        let c = ApiClient::from_endpoint(endpoint, &ClientSettings::default()).unwrap();
        // The kubelet rotates the token.
        std::fs::write(&token_path, "new\n").unwrap();
        let raw = c
            .get_raw("/openid/v1/jwks", Duration::from_secs(2))
            .unwrap();
        assert_eq!(raw.status, 200);
        assert_eq!(raw.cache_control.as_deref(), Some("max-age=60"));
        assert_eq!(raw.body, br#"{"ok":true}"#);
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // A token that stays wrong: exactly one retry, then the 401 is returned.
        accept_new.store(false, Ordering::SeqCst);
        std::fs::write(&token_path, "wrong").unwrap();
        calls.store(0, Ordering::SeqCst);
        let raw = c.get_raw("/x", Duration::from_secs(2)).unwrap();
        assert_eq!(raw.status, 401);
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // A failed re-read keeps the last token.
        std::fs::remove_file(&token_path).unwrap();
        let _ = c.get_raw("/x", Duration::from_secs(2)).unwrap();
        match &c.credential {
            Credential::File(f) => assert_eq!(f.current().0, "wrong"),
            _ => panic!("file credential expected"),
        }
    }

    #[test]
    fn body_limit_and_timeouts_are_enforced() {
        let base = start(Arc::new(|req: &Request| {
            if req.path == "/slow" {
                std::thread::sleep(Duration::from_millis(1500));
            }
            response("200 OK", &[], &format!("\"{}\"", "x".repeat(1000)))
        }));
        let mut c = test_client(&base, None);
        c.max_body_bytes = 100;
        assert!(matches!(
            c.get_json::<String>("/big", Duration::from_secs(2)),
            Err(KubeError::BodyTooLarge { limit: 100 })
        ));
        assert!(matches!(
            c.get_json::<String>("/slow", Duration::from_millis(300)),
            Err(KubeError::Timeout)
        ));
        let closed = test_client("http://127.0.0.1:1", None);
        assert!(matches!(
            closed.get_json::<String>("/x", Duration::from_secs(1)),
            Err(KubeError::Connect(_))
        ));
    }

    #[test]
    fn line_stream_reads_chunked_lines_until_the_end() {
        let base = start(Arc::new(|_req: &Request| {
            let chunks = ["{\"a\":1}\n{\"b\"", ":2}\n", "\n{\"c\":3}\n"];
            let mut out =
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    .to_vec();
            for c in chunks {
                out.extend_from_slice(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes());
            }
            out.extend_from_slice(b"0\r\n\r\n");
            out
        }));
        let c = test_client(&base, None);
        let mut s = c.get_lines("/watch", Duration::from_secs(2)).unwrap();
        let mut lines = Vec::new();
        while let Some(l) = s.next_line().unwrap() {
            lines.push(String::from_utf8(l).unwrap());
        }
        assert_eq!(lines, vec!["{\"a\":1}", "{\"b\":2}", "", "{\"c\":3}"]);
    }

    #[test]
    fn get_service_account_maps_404_to_none_and_checks_names() {
        let base = start(Arc::new(|req: &Request| {
            if req.path == "/api/v1/namespaces/team-a/serviceaccounts/app" {
                response(
                    "200 OK",
                    &[],
                    r#"{"metadata":{"name":"app","namespace":"team-a","uid":"u1"}}"#,
                )
            } else {
                response(
                    "404 Not Found",
                    &[],
                    r#"{"kind":"Status","code":404,"reason":"NotFound"}"#,
                )
            }
        }));
        let c = test_client(&base, None);
        let t = Duration::from_secs(2);
        let sa = c.get_service_account("team-a", "app", t).unwrap().unwrap();
        assert_eq!(sa.uid, "u1");
        assert_eq!(c.get_service_account("team-a", "gone", t).unwrap(), None);
        assert_eq!(c.get_service_account("team-a", "../x", t).unwrap(), None);
    }
}
