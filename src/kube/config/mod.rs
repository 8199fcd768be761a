//! Where the API server is and how to authenticate to it: in-cluster files and environment, or
//! a kubeconfig, resolved into one [`Endpoint`] that the client is built from.
//!
//! - [`in_cluster`]: `KUBERNETES_SERVICE_HOST`/`PORT`, the projected token and the cluster CA;
//! - [`kubeconfig`]: a kubeconfig file's current (or named) context.

use std::fmt;
use std::path::{Path, PathBuf};

use super::credential::CredentialSpec;
use super::error::ConfigError;

mod in_cluster;
mod kubeconfig;

pub(crate) use kubeconfig::endpoint_from_text;

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

/// A client certificate and key in PEM form. `Debug` never shows the key.
pub(crate) struct ClientIdentity {
    pub(crate) cert_pem: Vec<u8>,
    pub(crate) key_pem: Vec<u8>,
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
pub(crate) struct Endpoint {
    /// The server URL as configured (checked when the client is built).
    pub(crate) server: String,
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) insecure: bool,
    pub(crate) credential: CredentialSpec,
    pub(crate) identity: Option<ClientIdentity>,
    /// Where the settings came from, for the start-up log line.
    pub(crate) description: String,
}

/// Resolves `source` into an endpoint, reading the files it names.
pub(crate) fn resolve(source: &KubeConfigSource) -> Result<Endpoint, ConfigError> {
    match source {
        KubeConfigSource::Auto => {
            if in_cluster::from_env().is_some() {
                in_cluster::endpoint_from_env(&InClusterPaths::default())
            } else {
                kubeconfig::endpoint(&kubeconfig::default_path()?, None)
            }
        }
        KubeConfigSource::InCluster(paths) => in_cluster::endpoint_from_env(paths),
        KubeConfigSource::KubeConfig { path, context } => {
            let path = match path {
                Some(p) => p.clone(),
                None => kubeconfig::default_path()?,
            };
            kubeconfig::endpoint(&path, context.as_deref())
        }
    }
}

/// Largest kubeconfig, certificate, key or token file read (real ones are a few KiB): a path
/// naming a device or a huge file stops start-up with a message instead of filling memory.
pub const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// Reads a whole file of at most [`MAX_CONFIG_FILE`] bytes, naming what it is for in the error.
pub(crate) fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    crate::files::read_bounded(path, MAX_CONFIG_FILE).map_err(|e| ConfigError::ReadFile {
        what,
        path: path.to_owned(),
        source: match e {
            crate::files::ReadError::Io(io) => io,
            too_large => {
                std::io::Error::new(std::io::ErrorKind::InvalidData, too_large.to_string())
            }
        },
    })
}

/// A self-signed P-256 test CA (no private key kept anywhere), for the tests of this module.
#[cfg(test)]
pub(crate) const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
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

/// Writes `content` to `dir/name`, for the tests of this module and the client's.
#[cfg(test)]
pub(crate) fn write_test_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write test file");
    p
}

/// `s` in standard base64, as kubeconfig `*-data` fields hold it (tests only).
#[cfg(test)]
pub(crate) fn test_base64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Writes `dir/config`: a kubeconfig whose current context `dev` joins the cluster `c1` (these
/// `cluster` lines) and the user `u1` (these `user` lines); a second context `other` has no
/// user (tests only).
#[cfg(test)]
pub(crate) fn test_kubeconfig(dir: &Path, cluster: &str, user: &str) -> PathBuf {
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: dev\n\
         contexts:\n- name: dev\n  context:\n    cluster: c1\n    user: u1\n\
         - name: other\n  context:\n    cluster: c1\n\
         clusters:\n- name: c1\n  cluster:\n{cluster}\
         users:\n- name: u1\n  user:\n{user}"
    );
    write_test_file(dir, "config", &text)
}
