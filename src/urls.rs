//! URLs: one parser (the `url` crate, WHATWG rules, the same the NATS client uses) for every
//! origin, loopback and redaction decision, so no two parts of the service read a URL apart.
//!
//! Redaction never shows user information, a query or a fragment. A string that does not parse
//! as a URL is shown as a placeholder only: where its credentials end cannot be known.

use std::fmt;
use std::net::IpAddr;

use url::{Host, Url};

/// The scheme the NATS client assumes when a server address has none (`host:4222`).
const NATS_DEFAULT_SCHEME: &str = "nats://";
/// What a log line shows for something that is not a URL.
const UNPARSEABLE: &str = "<not a valid URL>";
/// What a log line shows for a URL with an `@` after its host: the start of a password with a
/// `/`, `?` or `#` (or, in a web URL, a `\`) in it would otherwise read as a host and port, and
/// its rest as a path.
const AMBIGUOUS: &str = "<URL not shown: it has an @ after the host>";

/// Why a string is not an acceptable `http(s)://` URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// The string does not parse as a URL.
    #[error("not a valid URL ({0})")]
    Invalid(url::ParseError),
    /// The scheme is neither `http` nor `https`.
    #[error("not an http or https URL")]
    NotHttp,
    /// Written in a form that URL parsers read apart (see [`HttpUrl::parse`]).
    #[error(
        "written in a form URL parsers read differently (a backslash, a tab or line break, \
         or other than two slashes after the scheme)"
    )]
    Irregular,
}

/// An `http://` or `https://` URL, parsed once.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl(Url);

impl HttpUrl {
    /// Parses `s`; only the `http` and `https` schemes are accepted, written `scheme://host…`.
    ///
    /// What the WHATWG parser would silently rewrite is refused: a backslash (read as `/`, so
    /// `https://CORP\apiserver` reaches host `corp`), a tab or line break (dropped), missing or
    /// extra slashes after the scheme (mended, so `https:///h` reaches `h`). kubectl's Go parser
    /// and the HTTP client's `http::Uri` refuse these or find another host, so a kubeconfig
    /// `server` or a `JWKS_URL` written so would not mean the same here as elsewhere.
    pub fn parse(s: &str) -> Result<HttpUrl, UrlError> {
        let s = s.trim();
        let url = Url::parse(s).map_err(UrlError::Invalid)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlError::NotHttp);
        }
        if !written_plainly(s, url.scheme()) {
            return Err(UrlError::Irregular);
        }
        Ok(HttpUrl(url))
    }

    /// The URL in normalized form (lower-case scheme and host, default port left out).
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Whether the scheme is `https`.
    pub fn is_https(&self) -> bool {
        self.0.scheme() == "https"
    }

    /// Whether the URL carries a user name or a password.
    pub fn has_credentials(&self) -> bool {
        has_credentials(&self.0)
    }

    /// Whether an `@` follows the host (in the path, query or fragment): the sign of user
    /// information cut short by a `/`, `\`, `?` or `#`, which redaction cannot tell apart.
    pub fn has_at_after_host(&self) -> bool {
        has_at_after_host(&self.0)
    }

    /// Whether the URL carries a query or a fragment.
    pub fn has_query_or_fragment(&self) -> bool {
        self.0.query().is_some() || self.0.fragment().is_some()
    }

    /// Whether the host is this machine: `localhost`, 127.0.0.0/8 or `::1`.
    pub fn is_loopback(&self) -> bool {
        match self.0.host() {
            Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
            None => false,
        }
    }

    /// Whether both have the same scheme, host and port (default ports filled in).
    pub fn same_origin(&self, other: &HttpUrl) -> bool {
        self.0.origin() == other.0.origin()
    }

    /// Scheme, host, port (when not the default) and path without its trailing slashes: the
    /// base that API paths are appended to.
    pub fn base(&self) -> String {
        format!(
            "{}{}",
            self.0.origin().ascii_serialization(),
            self.0.path().trim_end_matches('/')
        )
    }

    /// The URL fit for a log line.
    pub fn redacted(&self) -> String {
        redact_parsed(&self.0, true)
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpUrl({:?})", self.redacted())
    }
}

impl fmt::Display for HttpUrl {
    /// Shows the redacted form: a URL is never printed with its credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Whether `s` is `scheme://` (any case) then the host, with no backslash, tab or line break.
fn written_plainly(s: &str, scheme: &str) -> bool {
    let Some((written_scheme, rest)) = s.split_once("://") else {
        return false;
    };
    written_scheme.eq_ignore_ascii_case(scheme)
        && !rest.starts_with('/')
        && !s.contains(['\\', '\t', '\n', '\r'])
}

fn has_credentials(url: &Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

/// Parses a NATS server address the way the NATS client does: `nats://` is assumed when the
/// string has no scheme. Returns the URL and whether the scheme was written.
pub fn parse_nats_address(s: &str) -> Result<(Url, bool), url::ParseError> {
    let s = s.trim();
    if s.contains("://") {
        Url::parse(s).map(|u| (u, true))
    } else {
        Url::parse(&format!("{NATS_DEFAULT_SCHEME}{s}")).map(|u| (u, false))
    }
}

/// A URL (or a scheme-less NATS address) fit for a log line: without user information, query
/// or fragment; a query is marked `?…`. What does not parse is shown as a placeholder, keeping
/// only a scheme made of letters.
pub fn redact_url(s: &str) -> String {
    match parse_nats_address(s) {
        Ok((url, scheme_written)) => redact_parsed(&url, scheme_written),
        Err(_) => {
            let scheme = s
                .trim()
                .split_once("://")
                .map(|(scheme, _)| scheme)
                .filter(|scheme| {
                    !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphabetic())
                });
            match scheme {
                Some(scheme) => format!("{scheme}://{UNPARSEABLE}"),
                None => UNPARSEABLE.to_owned(),
            }
        }
    }
}

/// Whether an `@` follows the host, in the path, query or fragment. `nats://u:1234/et@h` parses
/// as host `u` and port `1234`, which is the start of a password. Web URLs are no exception: a
/// `/` or `\` in user information ends the host too (`https://CORP\svc:pw@h` reads as host
/// `corp` and path `/svc:pw@h`), and a key-set or API path has no use for an `@`.
fn has_at_after_host(url: &Url) -> bool {
    url.path().contains('@')
        || url.query().is_some_and(|q| q.contains('@'))
        || url.fragment().is_some_and(|f| f.contains('@'))
}

/// Every URL of a comma-separated list (as `NATS_URL` takes them), redacted.
pub fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(redact_url)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_parsed(url: &Url, with_scheme: bool) -> String {
    let mut out = String::new();
    if with_scheme {
        out.push_str(url.scheme());
        out.push_str("://");
    }
    if has_at_after_host(url) {
        out.push_str(AMBIGUOUS);
        return out;
    }
    match url.host() {
        Some(Host::Ipv6(ip)) => out.push_str(&format!("[{ip}]")),
        Some(Host::Ipv4(ip)) => out.push_str(&ip.to_string()),
        Some(Host::Domain(d)) => out.push_str(d),
        None => {}
    }
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    // The root path is left out: web URLs always have one, written or not.
    if url.path() != "/" {
        out.push_str(url.path());
    }
    if url.query().is_some() {
        out.push_str("?…");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_logs_lose_credentials_query_and_fragment() {
        assert_eq!(
            redact_url("https://user:pw@oidc.example.com/keys?sig=abc#x"),
            "https://oidc.example.com/keys?…"
        );
        assert_eq!(
            redact_url("https://oidc.example.com/openid/v1/jwks"),
            "https://oidc.example.com/openid/v1/jwks"
        );
        assert_eq!(redact_url("http://u@h:8080"), "http://h:8080");
        assert_eq!(
            redact_url("https://h/x@y"),
            "https://<URL not shown: it has an @ after the host>",
            "an @ in the path may end user information cut short by a / or \\"
        );
        assert_eq!(redact_url("svc:s3cret@host:4222"), "host:4222");
        assert_eq!(redact_url("https://h/#frag"), "https://h");
    }

    #[test]
    fn every_url_of_a_list_is_redacted() {
        assert_eq!(
            redact_urls("nats://svc:s3cret@nats:4222, tls://a:b@c:1,nats://plain:4222"),
            "nats://nats:4222,tls://c:1,nats://plain:4222"
        );
    }

    /// Passwords holding the characters that end an authority, or the separators of user
    /// information, must never come out, whole or in part.
    #[test]
    fn no_part_of_a_password_reaches_the_redacted_form() {
        for (url, password) in [
            ("nats://callout:S3cr/et@host", "S3cr"),
            ("nats://callout:S3cr#et@host:4222", "S3cr"),
            ("nats://callout:S3cr?et@host", "S3cr"),
            ("nats://callout:S3cr@et@host", "S3cr"),
            ("nats://callout:S3:cr:et@host", "S3"),
            ("callout:S3cr/et@host:4222", "S3cr"),
            ("tls://callout:S3cr%2Fet@host", "S3cr"),
            ("nats://S3cr%40et@host", "S3cr"),
            ("https://u:S3cr/et@h/p", "S3cr"),
            ("https://u:S3cr?et@h/p", "S3cr"),
            ("https://u:S3cr#et@h/p", "S3cr"),
            // A backslash ends the host of a web URL: the rest reads as a path.
            ("https://CORP\\svc:S3cr@h/p", "S3cr"),
            ("http://CORP\\svc:S3cr@h:4222", "S3cr"),
            ("https://te/am:S3cr@h/p", "S3cr"),
        ] {
            let shown = redact_url(url);
            assert!(
                !shown.contains(password) && !shown.contains("et@"),
                "{url} came out as {shown}"
            );
        }
        // Percent-encoded user information is removed, the host kept.
        assert_eq!(
            redact_url("nats://callout:S3cr%2Fet@host:4222"),
            "nats://host:4222"
        );
        assert_eq!(redact_url("nats://callout:S3cr@et@host"), "nats://host");
        assert_eq!(redact_url("nats://callout:S3:cr@host"), "nats://host");
        // What cannot be parsed keeps only its scheme.
        assert_eq!(
            redact_url("nats://callout:S3cr/et@host"),
            "nats://<not a valid URL>"
        );
        assert_eq!(redact_url("callout:S3cr/et@host:4222"), "<not a valid URL>");
        assert_eq!(redact_url("na ts://a:b/c@d"), "<not a valid URL>");
        // A numeric start of a password reads as a port: the URL is not shown at all.
        for url in [
            "nats://callout:1234/et@host",
            "nats://callout:1234#et@host",
            "nats://callout:1234?et@host",
            "https://u:1234?et@h/p",
            "https://u:1234#et@h/p",
            "https://u:1234/et@h/p",
            "http://u:1234\\et@h:4222",
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains("1234"), "{url} came out as {shown}");
            assert!(
                shown.ends_with("<URL not shown: it has an @ after the host>"),
                "{shown}"
            );
        }
    }

    #[test]
    fn http_urls_parse_once_and_answer_origin_and_loopback() {
        let u = HttpUrl::parse("HTTP://127.0.0.1:8080/prefix/").unwrap();
        assert_eq!(u.base(), "http://127.0.0.1:8080/prefix");
        assert!(!u.is_https());
        assert!(u.is_loopback());
        assert!(u.same_origin(&HttpUrl::parse("http://127.0.0.1:8080/openid/v1/jwks").unwrap()));
        assert!(!u.same_origin(&HttpUrl::parse("https://127.0.0.1:8080/").unwrap()));
        assert!(!u.same_origin(&HttpUrl::parse("http://127.0.0.1:8081/").unwrap()));
        let v6 = HttpUrl::parse("https://[FD00::1]/").unwrap();
        assert_eq!(v6.base(), "https://[fd00::1]");
        assert!(v6.same_origin(&HttpUrl::parse("https://[fd00::1]:443/x").unwrap()));
        assert!(!v6.is_loopback());
        assert!(HttpUrl::parse("http://[::1]:9/").unwrap().is_loopback());
        assert!(HttpUrl::parse("http://LocalHost/").unwrap().is_loopback());
        assert!(!HttpUrl::parse("http://127.0.0.1.evil.example/")
            .unwrap()
            .is_loopback());
        assert!(HttpUrl::parse("https://fd00::1/x").is_err());
        assert_eq!(HttpUrl::parse("nats://h:4222"), Err(UrlError::NotHttp));
        assert!(matches!(
            HttpUrl::parse("not a url"),
            Err(UrlError::Invalid(_))
        ));
    }

    /// The WHATWG parser rewrites these silently (a backslash becomes `/`, tabs and line breaks
    /// are dropped, missing or extra slashes after the scheme are mended); kubectl's Go parser
    /// and the HTTP client's `http::Uri` refuse them or find another host.
    #[test]
    fn http_urls_that_parsers_read_apart_are_refused() {
        for s in [
            "https://CORP\\apiserver:6443",
            "https://10.0.0.1:6443\\@evil.example/",
            "http://127.0.0.1\\@evil.example/keys",
            "https://keys.example/a\\b",
            "https://keys.example/jwks?x=a\\b",
            "https:keys.example/jwks",
            "https:/keys.example/jwks",
            "https:///keys.example/jwks",
            "https:\\\\keys.example/jwks",
            "https:/\\keys.example/jwks",
            "https://keys.exa\nmple/jwks",
            "https://keys.example/jw\tks",
            "https://keys.example:64\r43/jwks",
        ] {
            assert_eq!(HttpUrl::parse(s), Err(UrlError::Irregular), "{s:?}");
        }
        for s in ["HTTPS://Keys.Example/jwks", " https://keys.example/jwks\n"] {
            assert!(HttpUrl::parse(s).is_ok(), "{s:?}");
        }
    }

    #[test]
    fn credentials_query_and_fragment_are_seen() {
        let u = HttpUrl::parse("https://user:secret@h/x?sig=1").unwrap();
        assert!(u.has_credentials() && u.has_query_or_fragment());
        assert_eq!(u.to_string(), "https://h/x?…");
        assert!(!format!("{u:?}").contains("secret"));
        assert!(HttpUrl::parse("https://user@h/").unwrap().has_credentials());
        assert!(HttpUrl::parse("https://h/#f")
            .unwrap()
            .has_query_or_fragment());
        assert!(!HttpUrl::parse("https://h/x").unwrap().has_credentials());
    }
}
