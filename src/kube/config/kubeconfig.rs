//! A kubeconfig file read as kubectl reads it: the current (or a named) context, its cluster
//! and user; relative file names resolve against the file's directory; inline `*-data` wins
//! over a file. Mechanisms that would run code or need a browser (`exec`, `auth-provider`) and
//! settings this client cannot honour are refused with a message naming them.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::{read_file, ClientIdentity, ConfigError, CredentialSpec, Endpoint, ENV_KUBECONFIG};
use crate::kube::credential::Secret;

/// `KUBECONFIG`'s first path, else `~/.kube/config`.
pub(super) fn default_path() -> Result<PathBuf, ConfigError> {
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

/// The endpoint of `context` (or the current context) of the kubeconfig at `path`.
pub(super) fn endpoint(path: &Path, context: Option<&str>) -> Result<Endpoint, ConfigError> {
    let bytes = super::read_file("kubeconfig", path)?;
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::ReadFile {
        what: "kubeconfig",
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
    })?;
    endpoint_from_text(&text, path, context)
}

/// The endpoint of `context` (or the current context) of the kubeconfig `text` read from `path`
/// (files it names are resolved against `path`'s directory).
pub(crate) fn endpoint_from_text(
    text: &str,
    path: &Path,
    context: Option<&str>,
) -> Result<Endpoint, ConfigError> {
    let doc: KubeConfigDoc = if text.trim().is_empty() {
        KubeConfigDoc::default()
    } else {
        serde_yaml_ng::from_str(text).map_err(|source| ConfigError::ParseKubeConfig {
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

#[cfg(test)]
mod tests {
    use super::super::{
        test_base64 as b64, test_kubeconfig as kubeconfig, write_test_file as write,
        TEST_CA_PEM as CA_PEM,
    };
    use super::*;

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
        let ep = endpoint(&path, None).unwrap();
        assert_eq!(ep.server, "https://10.0.0.1:6443/");
        assert_eq!(ep.ca_pem.as_deref(), Some(CA_PEM.as_bytes()));
        assert!(!ep.insecure);
        assert!(matches!(ep.credential, CredentialSpec::Token(Secret(ref t)) if t == "abc"));
        assert!(ep.identity.is_none());
    }

    /// A kubeconfig or a file it names that is a device or huge stops start-up with a message,
    /// instead of reading without end (a fuzzed kubeconfig named `/dev/zero`).
    #[test]
    fn kubeconfig_files_are_read_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = kubeconfig(
            dir.path(),
            "    server: https://example:6443\n    certificate-authority: /dev/zero\n",
            "    token: abc\n",
        );
        let err = endpoint(&path, None).unwrap_err().to_string();
        assert!(
            err.contains("certificate authority") && err.contains("larger than 1048576 bytes"),
            "{err}"
        );
        let err = endpoint(Path::new("/dev/zero"), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kubeconfig") && err.contains("larger than 1048576 bytes"),
            "{err}"
        );
        let err = crate::kube::credential::read_token_file(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("token") && err.contains("larger than 1048576 bytes"),
            "{err}"
        );
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
        let ep = endpoint(&path, None).unwrap();
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
        let ep = endpoint(&path, None).unwrap();
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
        let err = endpoint(&path, None).unwrap_err();
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
        let err = endpoint(&path, None).unwrap_err();
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
        let ep = endpoint(&path, Some("other")).unwrap();
        assert!(
            matches!(ep.credential, CredentialSpec::None),
            "context without user"
        );
        let err = endpoint(&path, Some("nope")).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::MissingEntry {
                what: "context",
                ..
            }
        ));
        let bad = write(dir.path(), "bad", "clusters: [\n");
        assert!(matches!(
            endpoint(&bad, None),
            Err(ConfigError::ParseKubeConfig { .. })
        ));
        let no_ctx = write(dir.path(), "noctx", "clusters: []\n");
        assert!(matches!(
            endpoint(&no_ctx, None),
            Err(ConfigError::NoCurrentContext { .. })
        ));
    }
}
