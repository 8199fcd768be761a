//! The service against a Kubernetes API server that speaks TLS: the real binary, a kubeconfig
//! written by the test, the API emulator serving HTTPS with certificates generated per test,
//! a real nats-server with auth callout, and clients connecting with service-account tokens.
//!
//! Covered: the CA from `certificate-authority-data` and from a `certificate-authority` file
//! relative to the kubeconfig, a CA that does not match (never ready, a clear log, no token
//! leaked, nothing sent), client-certificate authentication, and `insecure-skip-tls-verify`.
//! Every emulator has its own CAs, so another emulator's CA or client certificate is a "wrong"
//! one.

mod support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;

use support::client::connect_token;
use support::kube::{KubeEmulator, KubeEmulatorBuilder, RequestKind, TlsOptions};
use support::kubeconfig::{kubeconfig, write_kubeconfig};
use support::nats::{CalloutKeys, NatsServer, CLIENT_ACCOUNT};
use support::service::{Service, ServiceBuilder};
use support::tokens::{jwks, SigningKey, TokenBuilder};

/// How long a service gets to become ready (it lists, watches and loads the key set over TLS).
const READY: Duration = Duration::from_secs(15);
/// How long a misconfigured service is watched for not becoming ready.
const NOT_READY_FOR: Duration = Duration::from_secs(3);

/// One API server over TLS with the account `team-a/app`, a nats-server and the callout keys.
struct Cluster {
    api: KubeEmulator,
    key: SigningKey,
    keys: CalloutKeys,
    nats: NatsServer,
}

impl Cluster {
    fn start(tls: TlsOptions) -> Cluster {
        let key = SigningKey::rs256();
        let api = KubeEmulatorBuilder::new()
            .jwks(jwks(&[&key]))
            .tls(tls)
            .build();
        api.create_service_account("team-a", "app", &[]);
        let keys = CalloutKeys::new(false);
        let nats = NatsServer::start(&keys);
        Cluster {
            api,
            key,
            keys,
            nats,
        }
    }

    /// A service pointed at this cluster through the kubeconfig `write` returns; `write` gets
    /// the service's scratch directory (for files the kubeconfig refers to) and returns the
    /// kubeconfig's path.
    fn service(&self, write: impl FnOnce(&Path) -> std::path::PathBuf) -> ServiceBuilder {
        let b = ServiceBuilder::new(&self.keys, &self.nats.service_url(), CLIENT_ACCOUNT);
        let kubeconfig = write(b.dir());
        b.env("K8S_IN_CLUSTER", "false")
            .env("KUBECONFIG", kubeconfig.to_str().expect("utf8 path"))
            .env("JWT_ISSUER", &self.api.issuer())
    }

    /// A service trusting the cluster's CA (inline data) and logging in with its token.
    fn service_with_ca_data_and_token(&self) -> ServiceBuilder {
        self.service(|dir| {
            write_kubeconfig(
                dir,
                "kubeconfig",
                &kubeconfig(
                    &self.api.url(),
                    &[format!(
                        "certificate-authority-data: {}",
                        b64(self.api.ca_pem())
                    )],
                    &[format!("token: {}", self.api.token())],
                ),
            )
        })
    }

    /// A token for `ns/name` as the cluster would mint it.
    fn token(&self, ns: &str, name: &str) -> String {
        let uid = self.api.uid_of(ns, name).expect("the account exists");
        TokenBuilder::for_sa(ns, name, &uid).sign(&self.key)
    }

    /// Asserts that `ns/name` connects through nats-server and can use its namespace.
    fn assert_connects(&self, service: &Service, ns: &str, name: &str) {
        let c = connect_token(&self.nats.url(), &self.token(ns, name)).unwrap_or_else(|e| {
            panic!(
                "{ns}/{name} should connect: {e}\nservice log:\n{}",
                service.log()
            )
        });
        assert!(
            c.round_trip(&format!("{ns}.check")),
            "{ns}/{name} round trip"
        );
    }
}

fn b64(data: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Asserts that none of `secrets` shows in the service's log.
fn assert_not_logged(service: &Service, secrets: &[(&str, &str)]) {
    let log = service.log();
    for (what, secret) in secrets {
        assert!(!secret.is_empty());
        assert!(!log.contains(secret), "the log shows the {what}:\n{log}");
    }
}

/// Asserts that the service stays unready for [`NOT_READY_FOR`] with `/readyz` naming both
/// the cache and the key set, and returns the last `/readyz` body.
fn assert_never_ready(service: &Service) -> String {
    let deadline = Instant::now() + NOT_READY_FOR;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some((status, body)) = service.get("/readyz") {
            assert_eq!(
                status,
                503,
                "ready against the wrong CA:\n{}",
                service.log()
            );
            last = body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        last.contains("cache_synced") && last.contains("jwks_loaded"),
        "/readyz: {last}"
    );
    last
}

/// `(kind, count)` of the requests the emulator served.
fn served(api: &KubeEmulator) -> Vec<(RequestKind, usize)> {
    [RequestKind::List, RequestKind::Watch, RequestKind::Jwks]
        .into_iter()
        .map(|k| (k, api.requests_of(k).len()))
        .collect()
}

/// Asserts that lists, watches and key-set fetches all reached the emulator (over TLS, the only
/// thing it speaks) with no failed handshake.
fn assert_served_over_tls(api: &KubeEmulator) {
    let served = served(api);
    assert!(served.iter().all(|(_, n)| *n >= 1), "{served:?}");
    assert_eq!(api.tls_handshake_failures(), 0, "{:?}", api.tls_errors());
}

#[test]
fn ca_data_and_token_serve_lists_watches_and_keys_over_tls() {
    let c = Cluster::start(TlsOptions::new());
    let service = c.service_with_ca_data_and_token().spawn();
    service.wait_ready(READY);
    c.assert_connects(&service, "team-a", "app");
    assert_served_over_tls(&c.api);
    // The watch stream (chunked, over TLS) delivers an account created after the start.
    c.api.create_service_account("team-b", "late", &[]);
    service.wait_for("the watch to deliver team-b/late", READY, || {
        service.metric("nats_callout_serviceaccounts") >= 2.0
    });
    c.assert_connects(&service, "team-b", "late");
    assert!(c
        .api
        .requests()
        .iter()
        .all(|r| r.authorization_present && !r.client_certificate));
    assert_not_logged(&service, &[("API token", &c.api.token())]);
}

#[test]
fn ca_file_relative_to_the_kubeconfig_and_a_host_name_work() {
    let c = Cluster::start(TlsOptions::new());
    let service = c
        .service(|dir| {
            // The kubeconfig and its CA live in their own directory, not the working directory.
            let kube_dir = dir.join("kube");
            fs::create_dir_all(kube_dir.join("pki")).expect("mkdir");
            fs::write(kube_dir.join("pki").join("ca.crt"), c.api.ca_pem()).expect("write CA");
            let path = kube_dir.join("config");
            // `localhost`: the certificate's DNS name is checked, not only its IP address.
            let server = c.api.url().replace("127.0.0.1", "localhost");
            fs::write(
                &path,
                kubeconfig(
                    &server,
                    &["certificate-authority: pki/ca.crt".to_string()],
                    &[format!("token: {}", c.api.token())],
                ),
            )
            .expect("write kubeconfig");
            path
        })
        .spawn();
    service.wait_ready(READY);
    c.assert_connects(&service, "team-a", "app");
    assert_served_over_tls(&c.api);
}

#[test]
fn jwks_url_on_the_api_server_origin_uses_the_cluster_ca() {
    let c = Cluster::start(TlsOptions::new());
    let service = c
        .service_with_ca_data_and_token()
        .env("JWKS_URL", &format!("{}/openid/v1/jwks", c.api.url()))
        .spawn();
    service.wait_ready(READY);
    c.assert_connects(&service, "team-a", "app");
    assert_served_over_tls(&c.api);
    assert!(c
        .api
        .requests_of(RequestKind::Jwks)
        .iter()
        .all(|r| r.authorization_present));
}

#[test]
fn a_ca_that_does_not_match_keeps_the_service_unready_and_says_why() {
    let c = Cluster::start(TlsOptions::new());
    let other = KubeEmulatorBuilder::new().tls(TlsOptions::new()).build();
    let service = c
        .service(|dir| {
            write_kubeconfig(
                dir,
                "kubeconfig",
                &kubeconfig(
                    &c.api.url(),
                    &[format!(
                        "certificate-authority-data: {}",
                        b64(other.ca_pem())
                    )],
                    &[format!("token: {}", c.api.token())],
                ),
            )
        })
        .spawn();
    service.wait_for("the certificate error in the log", READY, || {
        let log = service.log();
        log.contains("UnknownIssuer") && log.contains("jwks:")
    });
    let readyz = assert_never_ready(&service);
    assert!(readyz.contains("\"ready\":false"), "{readyz}");
    let log = service.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("invalid peer certificate")),
        "the log names the certificate problem:\n{log}"
    );
    // The handshake failed before any request: the token went nowhere.
    assert!(
        c.api.tls_handshake_failures() >= 2,
        "{:?}",
        c.api.tls_errors()
    );
    assert_eq!(c.api.total_requests(), 0);
    assert_not_logged(&service, &[("API token", &c.api.token())]);
    match connect_token(&c.nats.url(), &c.token("team-a", "app")) {
        Ok(_) => panic!("a client was let in by a service that cannot reach its cluster"),
        Err(e) => assert!(!e.is_empty()),
    }
}

#[test]
fn a_client_certificate_authenticates_without_a_token() {
    let c = Cluster::start(TlsOptions::new().require_client_cert());
    let service = c
        .service(|dir| {
            write_kubeconfig(
                dir,
                "kubeconfig",
                &kubeconfig(
                    &c.api.url(),
                    &[format!(
                        "certificate-authority-data: {}",
                        b64(c.api.ca_pem())
                    )],
                    &[
                        format!("client-certificate-data: {}", b64(c.api.client_cert_pem())),
                        format!("client-key-data: {}", b64(c.api.client_key_pem())),
                    ],
                ),
            )
        })
        .spawn();
    service.wait_ready(READY);
    c.assert_connects(&service, "team-a", "app");
    assert_served_over_tls(&c.api);
    let requests = c.api.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.client_certificate && !r.authorization_present),
        "{requests:?}"
    );
    let key_body = c
        .api
        .client_key_pem()
        .lines()
        .find(|l| !l.starts_with("-----"))
        .expect("key body")
        .to_string();
    assert_not_logged(&service, &[("client key", &key_body)]);
}

#[test]
fn a_client_certificate_of_another_ca_is_refused_by_the_server() {
    let c = Cluster::start(TlsOptions::new().require_client_cert());
    let other = KubeEmulatorBuilder::new()
        .tls(TlsOptions::new().require_client_cert())
        .build();
    let service = c
        .service(|dir| {
            write_kubeconfig(
                dir,
                "kubeconfig",
                &kubeconfig(
                    &c.api.url(),
                    &[format!(
                        "certificate-authority-data: {}",
                        b64(c.api.ca_pem())
                    )],
                    &[
                        format!("client-certificate-data: {}", b64(other.client_cert_pem())),
                        format!("client-key-data: {}", b64(other.client_key_pem())),
                    ],
                ),
            )
        })
        .spawn();
    service.wait_for("the refused handshake in the log", READY, || {
        service.log().contains("jwks:") && c.api.tls_handshake_failures() >= 2
    });
    assert_never_ready(&service);
    assert_eq!(c.api.total_requests(), 0);
    let errors = c.api.tls_errors();
    assert!(
        errors.iter().all(|e| e.contains("UnknownIssuer")),
        "{errors:?}"
    );
    let log = service.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.to_lowercase().contains("alert")),
        "the log names the refusal:\n{log}"
    );
}

#[test]
fn insecure_skip_tls_verify_works_without_a_ca_and_warns() {
    let c = Cluster::start(TlsOptions::new());
    let service = c
        .service(|dir| {
            write_kubeconfig(
                dir,
                "kubeconfig",
                &kubeconfig(
                    &c.api.url(),
                    &["insecure-skip-tls-verify: true".to_string()],
                    &[format!("token: {}", c.api.token())],
                ),
            )
        })
        .spawn();
    service.wait_ready(READY);
    c.assert_connects(&service, "team-a", "app");
    assert_served_over_tls(&c.api);
    let log = service.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("TLS verification")
            && l.contains("disabled")
            && l.contains(&c.api.url())),
        "a warning names the unverified server:\n{log}"
    );
    assert_not_logged(&service, &[("API token", &c.api.token())]);
}

/// client-go (kubectl) refuses a cluster with both `insecure-skip-tls-verify: true` and a CA
/// ("specifying a root certificates file with the insecure flag is not allowed"), and so does the
/// service: an operator who pinned a CA must not silently get no verification at all.
#[test]
fn insecure_together_with_a_ca_is_refused_like_client_go() {
    let c = Cluster::start(TlsOptions::new());
    let other = KubeEmulatorBuilder::new().tls(TlsOptions::new()).build();
    let service = c
        .service(|dir| {
            write_kubeconfig(
                dir,
                "kubeconfig",
                &kubeconfig(
                    &c.api.url(),
                    &[
                        "insecure-skip-tls-verify: true".to_string(),
                        format!("certificate-authority-data: {}", b64(other.ca_pem())),
                    ],
                    &[format!("token: {}", c.api.token())],
                ),
            )
        })
        .spawn();
    let ready = || matches!(service.get("/readyz"), Some((200, _)));
    // Refused, the service exits at once; accepted, it is ready within a second or two.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !ready() {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !ready(),
        "the service accepted insecure-skip-tls-verify together with a CA:\n{}",
        service.log()
    );
    assert_eq!(
        c.api.total_requests(),
        0,
        "the token went to an unverified server"
    );
    service.wait_for("the start-up error", Duration::from_secs(10), || {
        service
            .log()
            .contains("sets both a certificate authority and insecure-skip-tls-verify")
    });
}
