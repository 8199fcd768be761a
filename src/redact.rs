//! Making URLs fit for log lines: no credentials, no query, no fragment.

/// A URL fit for a log line: without user information, query or fragment.
pub fn redact_url(url: &str) -> String {
    let without_fragment = url.split('#').next().unwrap_or("");
    let (base, had_query) = match without_fragment.split_once('?') {
        Some((base, _)) => (base, true),
        None => (without_fragment, false),
    };
    let (scheme, rest) = match base.find("://") {
        Some(i) => base.split_at(i + 3),
        None => ("", base),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let redacted = format!("{scheme}{host}{path}");
    if had_query {
        format!("{redacted}?…")
    } else {
        redacted
    }
}

/// Every URL of a comma-separated list (as `NATS_URL` takes them), redacted.
pub fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| redact_url(u.trim()))
        .collect::<Vec<_>>()
        .join(",")
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
            "https://h/x@y",
            "an @ in the path is not userinfo"
        );
        assert_eq!(redact_url("svc:s3cret@host:4222"), "host:4222");
    }

    #[test]
    fn every_url_of_a_list_is_redacted() {
        assert_eq!(
            redact_urls("nats://svc:s3cret@nats:4222, tls://a:b@c:1,nats://plain:4222"),
            "nats://nats:4222,tls://c:1,nats://plain:4222"
        );
    }
}
