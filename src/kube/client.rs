//! The blocking HTTP client for the Kubernetes API server: built from an [`Endpoint`] (TLS,
//! credential), it sends GETs (and the POSTs that create objects) with bounded waits and maps
//! failures to [`KubeError`].
//!
//! Every request has a bound: a connect timeout, a total timeout (or, for watch streams, a
//! response timeout plus a per-read timeout) and a body size limit each way. The bearer token is never
//! logged; a token file is re-read at most once per reload period and right after a 401, after
//! which the request is retried once. Credentials only ever go to the configured server's origin.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::{info, warn};
use serde::de::DeserializeOwned;
use serde::Serialize;
use ureq::http::{Response, StatusCode};
use ureq::tls::{ClientCert, PemItem, RootCerts, TlsConfig};
use ureq::{Agent, Body, BodyReader, RequestBuilder};

use super::config::{self, Endpoint, InClusterPaths, KubeConfigSource};
use super::credential::Credential;
use super::error::{ApiStatus, ConfigError, KubeError};
use super::{is_valid_namespace, is_valid_object_name, RawObject, ServiceAccount};
use crate::urls::HttpUrl;

/// Largest error body read to find a Status message.
const STATUS_BODY_LIMIT: u64 = 64 * 1024;
/// Largest single line of a watch stream (one event); etcd's object limit is about 1.5 MiB.
const MAX_WATCH_LINE: usize = 16 * 1024 * 1024;
/// Largest request body sent: the API server refuses larger ones (413) anyway.
pub const MAX_REQUEST_BODY: u64 = 3 * 1024 * 1024;

/// `Accept` of a list of metadata only: a `PartialObjectMetadataList` whose items hold each
/// object's `metadata` and nothing else (a ServiceAccount's `secrets` are not sent); plain JSON
/// from a server that does not offer it. As client-go's metadata client asks.
pub const METADATA_LIST_ACCEPT: &str =
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";

/// `Accept` of one object's metadata, and of a watch's (each event's object becomes a
/// `PartialObjectMetadata`; an ERROR's Status is sent as it is). The API server refuses it on a
/// list (406).
pub const METADATA_ACCEPT: &str =
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";

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

/// A blocking client for the Kubernetes API server.
pub struct ApiClient {
    agent: Agent,
    base_url: String,
    /// The configured server: its origin is the only one credentials go to.
    server: HttpUrl,
    credential: Credential,
    max_body_bytes: u64,
    response_timeout: Duration,
    /// Set once the server (or something in front of it) refused a metadata-only `Accept`
    /// (406 or 415): from then on every request asks for plain JSON, which holds the same
    /// metadata and more.
    metadata_refused: AtomicBool,
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
        ApiClient::from_endpoint(config::resolve(&settings.source)?, settings)
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
            url: crate::urls::redact_url(&endpoint.server),
        };
        let server = HttpUrl::parse(&endpoint.server).map_err(|_| invalid_server())?;
        // An `@` after the host is user information cut short by a `/` or `\`: the base URL,
        // which the log shows, would hold the rest of it.
        if server.has_credentials() || server.has_query_or_fragment() || server.has_at_after_host()
        {
            return Err(invalid_server());
        }
        let base_url = server.base();

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

        let credential = Credential::load(endpoint.credential, settings.token_reload_period)?;
        if !server.is_https() && !credential.is_none() && !server.is_loopback() {
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
            server,
            credential,
            max_body_bytes: settings.max_body_bytes,
            response_timeout: settings.response_timeout,
            metadata_refused: AtomicBool::new(false),
        })
    }

    /// The `Accept` to send for `accept`: none (plain JSON) once a metadata one was refused.
    fn accept_for<'a>(&self, accept: Option<&'a str>) -> Option<&'a str> {
        accept.filter(|_| !self.metadata_refused.load(Ordering::Relaxed))
    }

    /// Whether `response` refuses the representation `sent` asked for (406 Not Acceptable or
    /// 415 Unsupported Media Type to a metadata `Accept`); the first refusal is logged and turns
    /// metadata-only requests off for this client.
    fn refused_representation(&self, sent: Option<&str>, response: &Response<Body>) -> bool {
        let refused = sent.is_some()
            && matches!(
                response.status(),
                StatusCode::NOT_ACCEPTABLE | StatusCode::UNSUPPORTED_MEDIA_TYPE
            );
        if refused && !self.metadata_refused.swap(true, Ordering::Relaxed) {
            warn!(
                "the Kubernetes API answered {} to a metadata-only request (Accept: {}); asking for whole objects from now on (they carry the same metadata; only the nats.io annotations are kept)",
                response.status().as_u16(),
                sent.unwrap_or_default()
            );
        }
        refused
    }

    /// The server's base URL (scheme, host, port and any path prefix; no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Whether `url` has the API server's scheme, host and port (default ports filled in).
    pub fn is_same_origin(&self, url: &str) -> bool {
        HttpUrl::parse(url).is_ok_and(|u| u.same_origin(&self.server))
    }

    /// GETs `path_and_query` (starting with `/`) and decodes the JSON body; non-2xx is an error.
    pub fn get_json<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<T, KubeError> {
        self.get_json_as(path_and_query, None, timeout)
    }

    /// [`ApiClient::get_json`] asking for the representation `accept` (an `Accept` header such
    /// as [`METADATA_LIST_ACCEPT`]) instead of plain `application/json`.
    pub fn get_json_as<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
        accept: Option<&str>,
        timeout: Duration,
    ) -> Result<T, KubeError> {
        let url = self.url_for(path_and_query)?;
        let sent = self.accept_for(accept);
        let mut response = self.send(&url, None, sent, Wait::Total(timeout))?;
        if self.refused_representation(sent, &response) {
            response = self.send(&url, None, None, Wait::Total(timeout))?;
        }
        self.decode_json(response)
    }

    /// POSTs `body` as JSON to `path` (starting with `/`, as for a GET) and decodes the JSON
    /// answer; non-2xx is a [`KubeError::Status`] whose reason tells `AlreadyExists` (409) and
    /// `Forbidden` (403) from the rest. Same bounds, credentials and 401 retry as a GET.
    pub fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
        timeout: Duration,
    ) -> Result<T, KubeError> {
        let url = self.url_for(path)?;
        let bytes = serde_json::to_vec(body).map_err(KubeError::Encode)?;
        if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_REQUEST_BODY {
            return Err(KubeError::RequestTooLarge {
                limit: MAX_REQUEST_BODY,
            });
        }
        let response = self.send(&url, Some(&bytes), None, Wait::Total(timeout))?;
        self.decode_json(response)
    }

    /// The JSON body of a 2xx response (bounded); the Status error of any other.
    fn decode_json<T: DeserializeOwned>(
        &self,
        mut response: Response<Body>,
    ) -> Result<T, KubeError> {
        if !response.status().is_success() {
            return Err(status_error(&mut response));
        }
        let body = read_body(response.body_mut(), self.max_body_bytes)?;
        serde_json::from_slice(&body).map_err(KubeError::Decode)
    }

    /// GETs a path (or a full URL on the server's own origin) with the cluster credentials and
    /// returns status, `Cache-Control` and body whatever the status.
    pub fn get_raw(&self, path: &str, timeout: Duration) -> Result<RawResponse, KubeError> {
        self.get_raw_bounded(path, timeout, self.max_body_bytes)
    }

    /// [`ApiClient::get_raw`] reading at most `max_body_bytes` of the body (never more than the
    /// client's own limit): a larger body fails as soon as the limit is passed.
    pub fn get_raw_bounded(
        &self,
        path: &str,
        timeout: Duration,
        max_body_bytes: u64,
    ) -> Result<RawResponse, KubeError> {
        let limit = max_body_bytes.min(self.max_body_bytes);
        let url = self.url_for(path)?;
        let mut response = self.send(&url, None, None, Wait::Total(timeout))?;
        let status = response.status().as_u16();
        let cache_control = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_body(response.body_mut(), limit)?;
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
        self.get_lines_as(path_and_query, None, read_timeout)
    }

    /// [`ApiClient::get_lines`] asking for the representation `accept` (an `Accept` header such
    /// as [`METADATA_ACCEPT`]) instead of plain `application/json`.
    pub fn get_lines_as(
        &self,
        path_and_query: &str,
        accept: Option<&str>,
        read_timeout: Duration,
    ) -> Result<LineStream, KubeError> {
        let url = self.url_for(path_and_query)?;
        let wait = Wait::Stream {
            response: self.response_timeout,
            read: read_timeout,
        };
        let sent = self.accept_for(accept);
        let mut response = self.send(&url, None, sent, wait)?;
        if self.refused_representation(sent, &response) {
            response = self.send(&url, None, None, wait)?;
        }
        if !response.status().is_success() {
            return Err(status_error(&mut response));
        }
        let reader = response.into_body().into_reader();
        Ok(LineStream {
            reader: BufReader::new(reader),
        })
    }

    /// GETs one ServiceAccount's metadata (all the service reads of it); `Ok(None)` on 404.
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
        match self.get_json_as::<RawObject>(&path, Some(METADATA_ACCEPT), timeout) {
            Ok(object) => match object.into_service_account(None) {
                Ok(sa) if *sa.namespace == *namespace && *sa.name == *name => Ok(Some(sa)),
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
        match HttpUrl::parse(path_or_url) {
            Ok(u) if u.same_origin(&self.server) && !u.has_credentials() => {
                Ok(u.as_str().to_owned())
            }
            _ => Err(KubeError::CrossOrigin),
        }
    }

    /// Sends a GET (with `accept` instead of `application/json` if given), or a POST of the
    /// JSON `body`, with the bearer token; on a 401 with a token file, re-reads it and retries
    /// once.
    fn send(
        &self,
        url: &str,
        body: Option<&[u8]>,
        accept: Option<&str>,
        wait: Wait,
    ) -> Result<Response<Body>, KubeError> {
        let mut retried = false;
        loop {
            let response = match body {
                None => {
                    let mut request = self.prepare(self.agent.get(url), wait);
                    if let Some(accept) = accept {
                        request = request.header("Accept", accept);
                    }
                    request.call()
                }
                Some(bytes) => self
                    .prepare(self.agent.post(url), wait)
                    .header("Content-Type", "application/json")
                    .send(bytes),
            }
            .map_err(map_call_error)?;
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

    /// Adds the bearer token (read now, so a rotated one is used) and the time bounds.
    fn prepare<B>(&self, mut request: RequestBuilder<B>, wait: Wait) -> RequestBuilder<B> {
        if let Some(token) = self.credential.bearer() {
            request = request.header("Authorization", format!("Bearer {}", token.0));
        }
        match wait {
            Wait::Total(total) => request.config().timeout_global(Some(total)).build(),
            Wait::Stream { response, read } => request
                .config()
                .timeout_recv_response(Some(response))
                .timeout_per_read(Some(read))
                .build(),
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

/// Shared by tests of other modules: a client on a plain-http server with a static token.
#[cfg(test)]
pub(crate) fn test_client(base: &str, token: Option<&str>) -> ApiClient {
    test_client_bounded(base, token, ClientSettings::default().max_body_bytes)
}

/// [`test_client`] taking response bodies of at most `max_body_bytes`.
#[cfg(test)]
pub(crate) fn test_client_bounded(
    base: &str,
    token: Option<&str>,
    max_body_bytes: u64,
) -> ApiClient {
    use super::credential::{CredentialSpec, Secret};
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
        max_body_bytes,
        ..ClientSettings::default()
    };
    ApiClient::from_endpoint(endpoint, &settings).expect("test client")
}

#[cfg(test)]
mod tests {
    use super::super::config::{
        test_base64 as b64, test_kubeconfig as kubeconfig, write_test_file as write,
        TEST_CA_PEM as CA_PEM,
    };
    use super::super::credential::{CredentialSpec, Secret};
    use super::super::test_server::{response, start, Request};
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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

    /// Builds a client for `server` with a token; the configuration error it must give.
    fn refused(server: &str) -> ConfigError {
        let endpoint = Endpoint {
            server: server.to_owned(),
            ca_pem: None,
            insecure: false,
            credential: CredentialSpec::Token(Secret("t".into())),
            identity: None,
            description: String::new(),
        };
        ApiClient::from_endpoint(endpoint, &ClientSettings::default()).unwrap_err()
    }

    /// kubectl refuses a server with a backslash (Go's parser finds no valid host); the WHATWG
    /// parser reads it as a `/` and would send the token to `corp`.
    #[test]
    fn a_server_that_kubectl_reads_apart_is_refused() {
        for server in ["https://CORP\\apiserver:6443", "https:///10.0.0.1:6443"] {
            let err = refused(server);
            assert!(
                matches!(err, ConfigError::InvalidServer { .. }),
                "{server}: {err}"
            );
        }
    }

    /// A `/` in a password (or in a user name) ends the host: the rest reads as a path, which
    /// the start-up lines print as part of the server's base URL. An API path prefix never
    /// holds an `@`, so such a server is refused without being shown.
    #[test]
    fn a_server_with_an_at_in_its_path_is_refused_unshown() {
        for server in [
            "https://svc:1234/S3cret@10.0.0.1:6443",
            "https://te/am:S3cret@10.0.0.1:6443",
            "https://10.0.0.1:6443/prefix@x",
        ] {
            let err = refused(server);
            assert!(
                matches!(err, ConfigError::InvalidServer { .. }),
                "{server}: {err}"
            );
            let shown = err.to_string();
            assert!(
                !shown.contains("S3cret") && !shown.contains("1234"),
                "{server}: {shown}"
            );
        }
    }

    /// A redirect is never followed: the bearer token goes to the configured server only, and
    /// the 3xx comes back as the answer.
    #[test]
    fn redirects_are_not_followed_and_the_token_stays_home() {
        let elsewhere_calls = Arc::new(AtomicUsize::new(0));
        let counted = elsewhere_calls.clone();
        let elsewhere = start(Arc::new(move |_req: &Request| {
            counted.fetch_add(1, Ordering::SeqCst);
            response("200 OK", &[], r#"{"keys":[]}"#)
        }));
        let location = format!("{elsewhere}/stolen");
        let base = start(Arc::new(move |_req: &Request| {
            response("302 Found", &[("Location", location.as_str())], "{}")
        }));
        let c = test_client(&base, Some("cluster-token"));
        let t = Duration::from_secs(2);
        assert_eq!(c.get_raw("/openid/v1/jwks", t).unwrap().status, 302);
        assert!(matches!(
            c.get_json::<serde_json::Value>("/api/v1/serviceaccounts", t),
            Err(KubeError::Status { code: 302, .. })
        ));
        assert!(c.get_lines("/api/v1/serviceaccounts?watch=1", t).is_err());
        assert_eq!(elsewhere_calls.load(Ordering::SeqCst), 0);
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
        // The one token the server accepts (none: every request is refused).
        let accepted = Arc::new(parking_lot::Mutex::new(Some("Bearer new")));
        let (calls2, accepted2) = (calls.clone(), accepted.clone());
        let base = start(Arc::new(move |req: &Request| {
            calls2.fetch_add(1, Ordering::SeqCst);
            let accepted = *accepted2.lock();
            if accepted.is_some() && req.header("authorization") == accepted {
                if req.method == "POST" {
                    return response("201 Created", &[], &String::from_utf8_lossy(&req.body));
                }
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

        // A POST is retried the same way, its body sent again.
        *accepted.lock() = Some("Bearer newer");
        std::fs::write(&token_path, "newer\n").unwrap();
        calls.store(0, Ordering::SeqCst);
        let echoed: serde_json::Value = c
            .post_json("/x", &serde_json::json!({"a": 1}), Duration::from_secs(2))
            .unwrap();
        assert_eq!(echoed, serde_json::json!({"a": 1}));
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // A token that stays wrong: exactly one retry, then the 401 is returned.
        *accepted.lock() = None;
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
    fn post_sends_json_with_the_token_and_a_conflict_keeps_its_status_reason() {
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let base = start(Arc::new(move |req: &Request| {
            seen2.lock().push(req.clone());
            if req.path.ends_with("/taken") {
                return response(
                    "409 Conflict",
                    &[],
                    r#"{"kind":"Status","status":"Failure","reason":"AlreadyExists","message":"events \"taken\" already exists","code":409}"#,
                );
            }
            response(
                "201 Created",
                &[],
                r#"{"metadata":{"name":"e","uid":"u9"}}"#,
            )
        }));
        let c = test_client(&base, Some("t"));
        let t = Duration::from_secs(2);
        let body = serde_json::json!({"metadata": {"name": "e"}, "message": "m"});
        let created: serde_json::Value = c
            .post_json("/api/v1/namespaces/ns/events", &body, t)
            .unwrap();
        assert_eq!(created["metadata"]["uid"], "u9");
        {
            let seen = seen.lock();
            let req = &seen[0];
            assert_eq!(req.method, "POST");
            assert_eq!(req.path, "/api/v1/namespaces/ns/events");
            assert_eq!(req.header("content-type"), Some("application/json"));
            assert_eq!(req.header("authorization"), Some("Bearer t"));
            let sent: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
            assert_eq!(sent, body);
        }
        match c.post_json::<serde_json::Value>("/taken", &body, t) {
            Err(KubeError::Status {
                code: 409,
                reason: Some(reason),
                ..
            }) => assert_eq!(reason, "AlreadyExists"),
            other => panic!("unexpected {other:?}"),
        }
        // Refused before anything is sent: too large a body, another origin.
        let big = "x".repeat(usize::try_from(MAX_REQUEST_BODY).unwrap());
        assert!(matches!(
            c.post_json::<serde_json::Value>("/x", &big, t),
            Err(KubeError::RequestTooLarge { .. })
        ));
        assert!(matches!(
            c.post_json::<serde_json::Value>("https://evil.example/x", &body, t),
            Err(KubeError::CrossOrigin)
        ));
        assert_eq!(seen.lock().len(), 2);
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
            assert_eq!(req.header("accept"), Some(METADATA_ACCEPT));
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

    #[test]
    fn a_refused_metadata_accept_falls_back_to_plain_json_for_good() {
        // Something in front of the API server refuses media types with parameters.
        let accepts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = accepts.clone();
        let base = start(Arc::new(move |req: &Request| {
            let accept = req.header("accept").unwrap_or_default().to_owned();
            seen.lock().unwrap().push(accept.clone());
            if accept.contains("as=") {
                response(
                    "406 Not Acceptable",
                    &[],
                    r#"{"kind":"Status","code":406,"reason":"NotAcceptable"}"#,
                )
            } else if req.path.contains("watch=true") {
                response("200 OK", &[], "{\"type\":\"ADDED\"}\n")
            } else {
                // A whole object, as a plain JSON GET returns it.
                response(
                    "200 OK",
                    &[],
                    r#"{"kind":"ServiceAccount","metadata":{"name":"app","namespace":"team-a","uid":"u1"},"secrets":[{"name":"s"}]}"#,
                )
            }
        }));
        let c = test_client(&base, None);
        let t = Duration::from_secs(2);
        let sa = c.get_service_account("team-a", "app", t).unwrap().unwrap();
        assert_eq!(sa.uid, "u1");
        // Later requests, list and watch included, ask for plain JSON at once.
        let _ = c.get_service_account("team-a", "app", t).unwrap();
        let mut lines = c
            .get_lines_as(
                "/api/v1/serviceaccounts?watch=true",
                Some(METADATA_ACCEPT),
                t,
            )
            .unwrap();
        assert_eq!(lines.next_line().unwrap().unwrap(), b"{\"type\":\"ADDED\"}");
        let seen = accepts.lock().unwrap().clone();
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert_eq!(seen[0], METADATA_ACCEPT);
        assert!(seen[1..].iter().all(|a| !a.contains("as=")), "{seen:?}");
    }
}
