//! Where a key set comes from: a file, the API server, a public URL or a caller's fetcher.
//!
//! A fetched set also says how long it may be cached (`Cache-Control: max-age`).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use log::warn;

use super::MAX_JWKS_BYTES;
use crate::kube::{ApiClient, KubeError};
use crate::urls::{redact_url, HttpUrl};

/// Path of the API server's key set.
pub const API_SERVER_JWKS_PATH: &str = "/openid/v1/jwks";

/// A JWKS document as fetched, with how long the server says it may be cached.
#[derive(Clone, Debug)]
pub struct FetchedJwks {
    /// The response body.
    pub body: Vec<u8>,
    /// The `Cache-Control: max-age`, if the response had one (see [`parse_max_age`]).
    pub max_age: Option<Duration>,
}

/// Something that fetches a JWKS document over the network.
pub trait JwksFetcher: Send + Sync {
    /// Fetches the document once; the error must not contain credentials.
    fn fetch(&self) -> Result<FetchedJwks, FetchError>;
    /// Where the keys come from, for log lines: a URL without credentials.
    fn describe(&self) -> String;
}

/// Why a key-set fetch failed. No variant holds a URL, a query or a credential.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The key-set URL answered with a status other than 200.
    #[error("http status {code}")]
    HttpStatus {
        /// The status code.
        code: u16,
    },
    /// The API server answered the key-set request with a status other than 200.
    #[error("HTTP {code}")]
    ApiServerStatus {
        /// The status code.
        code: u16,
    },
    /// The request to the API server got no answer, or its body could not be read.
    #[error(transparent)]
    ApiServerRequest(KubeError),
    /// The URL has no scheme or host.
    #[error("invalid URL")]
    InvalidUrl,
    /// An https URL was redirected to plain http, where the keys could be altered.
    #[error("https required")]
    HttpsRequired,
    /// The proxy refused to open a tunnel.
    #[error("proxy connect failed")]
    ProxyConnectFailed,
    /// The proxy setting cannot be used.
    #[error("invalid proxy URL")]
    InvalidProxyUrl,
    /// The body is larger than [`MAX_JWKS_BYTES`].
    #[error("body larger than {MAX_JWKS_BYTES} bytes")]
    BodyTooLarge,
    /// No usable answer: name resolution, connection, TLS, a timeout, a broken response (in
    /// the HTTP client's words, which name no URL).
    #[error(transparent)]
    Transport(ureq::Error),
}

impl From<ureq::Error> for FetchError {
    /// Keeps the facts of an HTTP client error and drops the URL that some variants carry.
    fn from(e: ureq::Error) -> FetchError {
        match e {
            ureq::Error::StatusCode(code) => FetchError::HttpStatus { code },
            ureq::Error::BadUri(_) => FetchError::InvalidUrl,
            ureq::Error::RequireHttpsOnly(_) => FetchError::HttpsRequired,
            ureq::Error::ConnectProxyFailed(_) => FetchError::ProxyConnectFailed,
            ureq::Error::InvalidProxyUrl => FetchError::InvalidProxyUrl,
            ureq::Error::BodyExceedsLimit(_) => FetchError::BodyTooLarge,
            other => FetchError::Transport(other),
        }
    }
}

/// Where the key set comes from.
pub enum JwksSource {
    /// A file, re-read when its modification time, length or inode changes. The path is opened
    /// and stat-ed anew each time, so a Kubernetes volume that swaps its `..data` symlink is followed.
    File(PathBuf),
    /// A network endpoint.
    Remote(Box<dyn JwksFetcher>),
    /// A fixed document given in memory (configuration or tests); never changes.
    Inline(Vec<u8>),
}

impl JwksSource {
    /// Where the keys come from, for log lines.
    pub fn describe(&self) -> String {
        match self {
            JwksSource::File(path) => format!("file {}", path.display()),
            JwksSource::Remote(fetcher) => fetcher.describe(),
            JwksSource::Inline(_) => "inline key set".to_string(),
        }
    }
}

impl fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Reads the `max-age` of a `Cache-Control` header value.
///
/// Directives are matched without regard to case and a quoted value is accepted. `no-store` or
/// `no-cache` give zero ("refresh as often as allowed"; the store clamps it to its minimum
/// period). A value too large to count saturates. A missing or malformed `max-age` gives `None`.
pub fn parse_max_age(cache_control: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in cache_control.split(',') {
        let (name, value) = match directive.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (directive.trim(), None),
        };
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if max_age.is_some() || !name.eq_ignore_ascii_case("max-age") {
            continue;
        }
        if let Some(value) = value {
            if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                let secs = value.parse::<u64>().unwrap_or(u64::MAX);
                max_age = Some(Duration::from_secs(secs));
            }
        }
    }
    max_age
}

/// Fetches a JWKS from a public URL (a cloud provider's OIDC endpoint) with no credentials,
/// trusting the WebPKI roots.
pub struct PublicUrlFetcher {
    url: String,
    agent: ureq::Agent,
}

impl PublicUrlFetcher {
    /// A fetcher for this URL; `timeout` bounds each whole fetch (connect, request and body).
    pub fn new(url: impl Into<String>, timeout: Duration) -> PublicUrlFetcher {
        let url = url.into();
        let https = HttpUrl::parse(&url).is_ok_and(|u| u.is_https());
        if !https {
            warn!(
                "jwks: {} is not an https URL; the keys can be altered in transit",
                redact_url(&url)
            );
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .max_redirects(3)
            // An https key set must not be redirected to plain http, where it could be altered.
            .https_only(https)
            .http_status_as_error(false)
            .build()
            .new_agent();
        PublicUrlFetcher { url, agent }
    }
}

impl fmt::Debug for PublicUrlFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicUrlFetcher")
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

impl JwksFetcher for PublicUrlFetcher {
    fn fetch(&self) -> Result<FetchedJwks, FetchError> {
        let mut response = self
            .agent
            .get(self.url.as_str())
            .header("Accept", "application/jwk-set+json, application/json")
            .call()?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(FetchError::HttpStatus { code: status });
        }
        let max_age = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age);
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_JWKS_BYTES)
            .read_to_vec()?;
        Ok(FetchedJwks { body, max_age })
    }

    fn describe(&self) -> String {
        redact_url(&self.url)
    }
}

/// Fetches the key set through the Kubernetes API client, with the cluster's CA and credentials.
/// Only used for URLs on the API server's own origin.
pub struct ApiServerFetcher {
    client: Arc<ApiClient>,
    /// A path on the API server, or a full URL on its origin.
    path: String,
    timeout: Duration,
}

impl ApiServerFetcher {
    /// A fetcher of `path` (a path on the API server, or a full URL on its origin); `timeout`
    /// bounds each whole fetch.
    pub fn new(client: Arc<ApiClient>, path: impl Into<String>, timeout: Duration) -> Self {
        ApiServerFetcher {
            client,
            path: path.into(),
            timeout,
        }
    }
}

impl JwksFetcher for ApiServerFetcher {
    fn fetch(&self) -> Result<FetchedJwks, FetchError> {
        let resp = self
            .client
            // Not the client's general limit (64 MiB): a larger key set is refused anyway.
            .get_raw_bounded(&self.path, self.timeout, MAX_JWKS_BYTES)
            .map_err(FetchError::ApiServerRequest)?;
        if resp.status != 200 {
            return Err(FetchError::ApiServerStatus { code: resp.status });
        }
        Ok(FetchedJwks {
            body: resp.body,
            max_age: resp.cache_control.as_deref().and_then(parse_max_age),
        })
    }

    fn describe(&self) -> String {
        if self.path.contains("://") {
            redact_url(&self.path)
        } else {
            format!("{}{}", self.client.base_url(), self.path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn max_age_is_read_from_cache_control() {
        let cases: &[(&str, Option<u64>)] = &[
            ("public, max-age=3600", Some(3600)),
            ("max-age=60", Some(60)),
            ("Max-Age = 120 , public", Some(120)),
            ("max-age=\"90\"", Some(90)),
            ("private, s-maxage=10, max-age=30", Some(30)),
            ("max-age=30, max-age=40", Some(30)),
            ("public", None),
            ("", None),
            ("max-age=", None),
            ("max-age=-5", None),
            ("max-age=1h", None),
            ("max-age", None),
            ("no-store", Some(0)),
            ("public, no-cache, max-age=600", Some(0)),
            ("max-age=99999999999999999999999", Some(u64::MAX)),
        ];
        for (header, want) in cases {
            assert_eq!(
                parse_max_age(header),
                want.map(Duration::from_secs),
                "{header:?}"
            );
        }
    }

    #[test]
    fn unreachable_url_fails_with_a_message_without_credentials() {
        // Port 9 on localhost: nothing listens there, so this fails fast without a network.
        let fetcher = PublicUrlFetcher::new(
            "http://user:hunter2@127.0.0.1:9/keys?token=abc",
            Duration::from_secs(2),
        );
        assert_eq!(fetcher.describe(), "http://127.0.0.1:9/keys?…");
        let err = fetcher.fetch().unwrap_err().to_string();
        assert!(
            !err.contains("hunter2") && !err.contains("token=abc"),
            "{err}"
        );
    }

    #[test]
    fn api_server_key_set_is_fetched_with_the_cluster_credentials_and_max_age() {
        use crate::kube::client::test_client;
        use crate::kube::test_server::{response, start};
        let base = start(Arc::new(|request| match request.header("authorization") {
            Some("Bearer cluster-token") if request.path == API_SERVER_JWKS_PATH => response(
                "200 OK",
                &[("Cache-Control", "public, max-age=120")],
                r#"{"keys":[]}"#,
            ),
            _ => response("403 Forbidden", &[], "{}"),
        }));
        let client = Arc::new(test_client(&base, Some("cluster-token")));
        let fetcher =
            ApiServerFetcher::new(client.clone(), API_SERVER_JWKS_PATH, Duration::from_secs(2));
        assert_eq!(fetcher.describe(), format!("{base}/openid/v1/jwks"));
        let fetched = fetcher.fetch().unwrap();
        assert_eq!(fetched.body, br#"{"keys":[]}"#);
        assert_eq!(fetched.max_age, Some(Duration::from_secs(120)));

        // docs/TROUBLESHOOTING.md tells operators what `HTTP 401`/`HTTP 403` here means.
        let elsewhere = ApiServerFetcher::new(client, "/other", Duration::from_secs(2));
        let err = elsewhere.fetch().unwrap_err();
        assert!(
            matches!(err, FetchError::ApiServerStatus { code: 403 }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "HTTP 403");
    }

    /// A server that sends the headers of a 200 with a 1000-byte body, then one byte every
    /// 50 ms (a slow-drip body); returns its base URL.
    fn slow_drip_server() -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request);
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
                    let _ = stream.write_all(head.as_bytes());
                    for _ in 0..1000 {
                        if stream.write_all(b" ").is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                });
            }
        });
        base
    }

    /// The fetch timeout bounds the whole fetch, body included: a source dripping its body
    /// holds the refresher thread (never a worker) for the timeout, not for the drip.
    #[test]
    fn a_slow_drip_body_is_cut_at_the_fetch_timeout() {
        use crate::kube::client::test_client;
        let base = slow_drip_server();
        let timeout = Duration::from_millis(500);
        let fetchers: [Box<dyn JwksFetcher>; 2] = [
            Box::new(PublicUrlFetcher::new(format!("{base}/keys"), timeout)),
            Box::new(ApiServerFetcher::new(
                Arc::new(test_client(&base, None)),
                API_SERVER_JWKS_PATH,
                timeout,
            )),
        ];
        for fetcher in fetchers {
            let started = std::time::Instant::now();
            assert!(fetcher.fetch().is_err(), "{}", fetcher.describe());
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{}: {:?}",
                fetcher.describe(),
                started.elapsed()
            );
        }
    }

    /// The API server's key set is read up to MAX_JWKS_BYTES, not the client's 64 MiB.
    #[test]
    fn an_oversize_key_set_from_the_api_server_is_cut_at_the_jwks_limit() {
        use crate::kube::client::test_client;
        use crate::kube::test_server::{response, start};
        let big = " ".repeat(MAX_JWKS_BYTES as usize + 1);
        let base = start(Arc::new(move |_| response("200 OK", &[], &big)));
        let fetcher = ApiServerFetcher::new(
            Arc::new(test_client(&base, None)),
            API_SERVER_JWKS_PATH,
            Duration::from_secs(5),
        );
        let err = fetcher.fetch().unwrap_err();
        assert!(
            matches!(
                err,
                FetchError::ApiServerRequest(KubeError::BodyTooLarge {
                    limit: MAX_JWKS_BYTES
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn public_url_answering_other_than_200_fails_with_its_status() {
        use crate::kube::test_server::{response, start};
        let base = start(Arc::new(|_| response("404 Not Found", &[], "{}")));
        let fetcher = PublicUrlFetcher::new(format!("{base}/keys"), Duration::from_secs(2));
        let err = fetcher.fetch().unwrap_err();
        assert!(
            matches!(err, FetchError::HttpStatus { code: 404 }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "http status 404");
    }

    #[test]
    fn http_client_errors_keep_their_facts_and_lose_the_url() {
        let url = "https://user:hunter2@keys.example/jwks?sig=abc".to_string();
        let cases = [
            (ureq::Error::StatusCode(503), "http status 503"),
            (ureq::Error::BadUri(url.clone()), "invalid URL"),
            (ureq::Error::RequireHttpsOnly(url.clone()), "https required"),
            (ureq::Error::ConnectProxyFailed(url), "proxy connect failed"),
            (ureq::Error::InvalidProxyUrl, "invalid proxy URL"),
            (
                ureq::Error::BodyExceedsLimit(MAX_JWKS_BYTES),
                "body larger than 1048576 bytes",
            ),
            (ureq::Error::HostNotFound, "host not found"),
        ];
        for (error, want) in cases {
            assert_eq!(FetchError::from(error).to_string(), want);
        }
    }
}
