//! The in-cluster configuration: the API server from `KUBERNETES_SERVICE_HOST`/`PORT`, the
//! pod's projected token and the cluster CA from their mounted files.

use super::{read_file, ConfigError, CredentialSpec, Endpoint, InClusterPaths};
use super::{ENV_SERVICE_HOST, ENV_SERVICE_PORT};
use crate::kube::credential::read_token_file;

/// The API server's host and port from the environment, when both are set.
pub(super) fn from_env() -> Option<(String, String)> {
    let host = std::env::var(ENV_SERVICE_HOST)
        .ok()
        .filter(|h| !h.is_empty())?;
    let port = std::env::var(ENV_SERVICE_PORT)
        .ok()
        .filter(|p| !p.is_empty())?;
    Some((host, port))
}

/// The in-cluster endpoint; an error when the environment does not name an API server.
pub(super) fn endpoint_from_env(paths: &InClusterPaths) -> Result<Endpoint, ConfigError> {
    let (host, port) = from_env().ok_or(ConfigError::NotInCluster)?;
    endpoint(&host, &port, paths)
}

fn endpoint(host: &str, port: &str, paths: &InClusterPaths) -> Result<Endpoint, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::super::{write_test_file as write, TEST_CA_PEM as CA_PEM};
    use super::*;

    #[test]
    fn in_cluster_brackets_ipv6_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let paths = InClusterPaths {
            token: write(dir.path(), "token", "tok"),
            ca: write(dir.path(), "ca.crt", CA_PEM),
        };
        let ep = endpoint("fd00::1", "443", &paths).unwrap();
        assert_eq!(ep.server, "https://[fd00::1]:443");
        let ep = endpoint("10.96.0.1", "443", &paths).unwrap();
        assert_eq!(ep.server, "https://10.96.0.1:443");
        let missing = InClusterPaths {
            token: dir.path().join("missing"),
            ca: paths.ca.clone(),
        };
        assert!(matches!(
            endpoint("10.96.0.1", "443", &missing),
            Err(ConfigError::ReadFile { what: "token", .. })
        ));
    }
}
