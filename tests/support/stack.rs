//! One cluster, one nats-server and one service: the Kubernetes API emulator with some
//! ServiceAccounts, a real nats-server in config mode with auth callout, the service binary
//! pointed at both, and tokens minted as the cluster would mint them.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client::{connect_token, is_authorization_violation};
use super::kube::{KubeEmulator, DEFAULT_ISSUER};
use super::kubeconfig::{kubeconfig, write_kubeconfig};
use super::nats::{free_port, server_config, CalloutKeys, NatsServer, CLIENT_ACCOUNT};
use super::service::{Service, ServiceBuilder};
use super::tokens::{jwks, random_uuid, SigningKey, TokenBuilder};

/// How long [`Stack::assert_denied`] waits for the denial to be counted.
const DENIAL_COUNTED: Duration = Duration::from_secs(10);

/// One cluster, one nats-server and one service.
pub struct Stack {
    pub api: KubeEmulator,
    pub nats: NatsServer,
    pub keys: CalloutKeys,
    /// The key the cluster signs service-account tokens with.
    pub key: SigningKey,
    pub service: Service,
    /// The service's API token file, when the kubeconfig points at one.
    pub token_file: Option<PathBuf>,
    /// The hub's leafnode listener, when it has one.
    pub leafnode_port: Option<u16>,
    /// The admin policy's file, when the service has one.
    pub policy_file: Option<PathBuf>,
    /// Where a JetStream server keeps its streams (removed with the stack).
    _jetstream_store: tempfile::TempDir,
}

/// namespace, name and annotations of a ServiceAccount present from the start.
pub type AccountSpec = (String, String, Vec<(String, String)>);

/// The API emulator of a cluster whose tokens `key` signs, holding `accounts`.
pub fn start_cluster(key: &SigningKey, accounts: &[AccountSpec]) -> KubeEmulator {
    let api = KubeEmulator::builder()
        .jwks(jwks(&[key]))
        // `kubectl create token` gets tokens signed like the test's own.
        .token_signer(key.clone())
        .build();
    for (ns, name, ann) in accounts {
        let ann: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        api.create_service_account(ns, name, &ann);
    }
    api
}

/// `ns/name` with these annotations, as an [`AccountSpec`].
pub fn account_spec(ns: &str, name: &str, annotations: &[(&str, &str)]) -> AccountSpec {
    (
        ns.into(),
        name.into(),
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// A valid token for `ns/name` as the cluster of `api` would mint it with `key`.
pub fn mint_token(api: &KubeEmulator, key: &SigningKey, ns: &str, name: &str) -> String {
    let uid = api.uid_of(ns, name).unwrap_or_else(|| "no-such-uid".into());
    TokenBuilder::for_sa(ns, name, &uid).sign(key)
}

/// Asserts that a client presenting `token` at `url` is refused with `Authorization Violation`
/// and that `service` counts the denial under `reason`.
pub fn assert_refused(url: &str, service: &Service, token: &str, reason: &str) {
    let before = service.decisions("deny", reason);
    match connect_token(url, token) {
        Ok(_) => panic!("a client with a bad token ({reason}) was let in"),
        Err(e) => assert!(
            is_authorization_violation(&e) && !e.contains(reason),
            "unexpected error for {reason}: {e}"
        ),
    }
    service.wait_for(&format!("deny/{reason} counted"), DENIAL_COUNTED, || {
        service.decisions("deny", reason) > before
    });
}

/// Builder of a [`Stack`]: by default RS256 tokens, no xkey, and one account `team-a/app`.
pub struct StackBuilder {
    xkey: bool,
    key: SigningKey,
    env: Vec<(String, String)>,
    accounts: Vec<AccountSpec>,
    bulk: usize,
    token_file: bool,
    leafnodes: bool,
    nats_accounts: Vec<String>,
    policy: Option<String>,
    jetstream: bool,
    nats_tls: Option<String>,
    service_nats_url: Option<fn(u16) -> String>,
    nats_config: Option<Box<dyn FnOnce(String) -> String>>,
    revocation: Option<fn(u16) -> String>,
}

/// The JetStream administrator of the client account (JetStream stacks only): a user that
/// bypasses the callout, to create streams, consumers and buckets for a test.
pub const JS_ADMIN_USER: &str = "js-admin";
/// Its password.
pub const JS_ADMIN_PASS: &str = "js-admin-secret";

impl StackBuilder {
    pub fn new() -> StackBuilder {
        StackBuilder {
            xkey: false,
            key: SigningKey::rs256(),
            env: Vec::new(),
            accounts: vec![("team-a".into(), "app".into(), Vec::new())],
            bulk: 0,
            token_file: false,
            leafnodes: false,
            nats_accounts: Vec::new(),
            policy: None,
            jetstream: false,
            nats_tls: None,
            service_nats_url: None,
            nats_config: None,
            revocation: None,
        }
    }

    /// The nats-server requires TLS of every client, with the settings `block` (the lines of its
    /// `tls { }` block: certificate, key, `verify`…).
    pub fn nats_tls(mut self, block: &str) -> Self {
        self.nats_tls = Some(block.to_string());
        self
    }

    /// The service's `NATS_URL` for the nats-server's port (by default the URL with the
    /// service's user and password).
    pub fn service_nats_url(mut self, url: fn(u16) -> String) -> Self {
        self.service_nats_url = Some(url);
        self
    }

    /// The service closes revoked connections as the server's system-account user
    /// (`NATS_SYSTEM_URL`).
    pub fn revocation(self) -> Self {
        self.revocation_via(system_url)
    }

    /// The service closes revoked connections as the user of `url` (`NATS_SYSTEM_URL`) for the
    /// server's port.
    pub fn revocation_via(mut self, url: fn(u16) -> String) -> Self {
        self.revocation = Some(url);
        self
    }

    /// Edits the nats-server's configuration text before it starts.
    pub fn nats_config(mut self, edit: impl FnOnce(String) -> String + 'static) -> Self {
        self.nats_config = Some(Box::new(edit));
        self
    }

    /// The nats-server runs JetStream, enabled for the client account, which also gets the
    /// administrator [`JS_ADMIN_USER`] (a callout `auth_users` entry, so not via the service).
    pub fn jetstream(mut self) -> Self {
        self.jetstream = true;
        self
    }

    /// The nats-server also has this (empty) account, for clients the policy places there.
    pub fn nats_account(mut self, name: &str) -> Self {
        self.nats_accounts.push(name.to_owned());
        self
    }

    /// The service reads this admin policy from a file (`POLICY_FILE`, see [`Stack::policy_file`]).
    pub fn policy(mut self, yaml: &str) -> Self {
        self.policy = Some(yaml.to_owned());
        self
    }

    /// Authorization requests are sealed with an xkey.
    pub fn xkey(mut self) -> Self {
        self.xkey = true;
        self
    }

    /// The cluster signs tokens with `key` instead of a fresh RS256 key.
    pub fn key(mut self, key: SigningKey) -> Self {
        self.key = key;
        self
    }

    /// Sets one environment variable of the service.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// One more account `ns/name` with these annotations, created before the service starts.
    pub fn account(mut self, ns: &str, name: &str, annotations: &[(&str, &str)]) -> Self {
        self.accounts.push(account_spec(ns, name, annotations));
        self
    }

    /// `n` more accounts `bulk/sa-0000` … created before the service starts.
    pub fn bulk(mut self, n: usize) -> Self {
        self.bulk = n;
        self
    }

    /// The kubeconfig's user reads its token from a file (`tokenFile`) instead of inline.
    pub fn token_file(mut self) -> Self {
        self.token_file = true;
        self
    }

    /// The nats-server also listens for leafnode connections.
    pub fn leafnodes(mut self) -> Self {
        self.leafnodes = true;
        self
    }

    /// Starts the API emulator, the nats-server and the service, and waits until it is ready.
    pub fn start(self) -> Stack {
        let api = start_cluster(&self.key, &self.accounts);
        for i in 0..self.bulk {
            api.create_service_account("bulk", &format!("sa-{i:04}"), &[]);
        }
        let keys = CalloutKeys::new(self.xkey);
        let port = free_port();
        let mut config = server_config(port, &keys, 2);
        for account in &self.nats_accounts {
            config = config.replace("accounts {\n", &format!("accounts {{\n  {account} {{ }}\n"));
        }
        let store = tempfile::tempdir().expect("JetStream store dir");
        if self.jetstream {
            config = config
                .replace(
                    &format!("  {CLIENT_ACCOUNT} {{ }}\n"),
                    &format!(
                        "  {CLIENT_ACCOUNT} {{ jetstream: enabled, users: [ {{ user: \"{JS_ADMIN_USER}\", password: \"{JS_ADMIN_PASS}\" }} ] }}\n"
                    ),
                )
                .replace("auth_users: [ ", &format!("auth_users: [ \"{JS_ADMIN_USER}\", "));
            config.push_str(&format!(
                "jetstream {{\n  store_dir: \"{}\"\n}}\n",
                store.path().display()
            ));
        }
        if let Some(block) = &self.nats_tls {
            config.push_str(&format!("tls {{\n{block}\n}}\n"));
        }
        if let Some(edit) = self.nats_config {
            config = edit(config);
        }
        let leafnode_port = self.leafnodes.then(free_port);
        if let Some(leaf_port) = leafnode_port {
            config.push_str(&format!(
                "leafnodes {{\n  listen: \"127.0.0.1:{leaf_port}\"\n}}\n"
            ));
        }
        let nats = NatsServer::start_with_config(port, config);
        let mut b = ServiceBuilder::new(&keys, &nats.service_url(), CLIENT_ACCOUNT)
            .env("JWT_ISSUER", DEFAULT_ISSUER);
        let token_file = if self.token_file {
            let token_path = b.dir().join("api-token");
            write_atomically(&token_path, &api.token());
            let text = kubeconfig(
                &api.url(),
                &[],
                &[format!("tokenFile: {}", token_path.display())],
            );
            let kubeconfig = write_kubeconfig(b.dir(), "kubeconfig-token-file", &text);
            b = b
                .env("K8S_IN_CLUSTER", "false")
                .env("KUBECONFIG", kubeconfig.to_str().expect("utf8 path"));
            Some(token_path)
        } else {
            b = b.kube_api(&api.url(), &api.token());
            None
        };
        let policy_file = self.policy.map(|yaml| {
            let path = b.dir().join("policy.yaml");
            write_atomically(&path, &yaml);
            path
        });
        if let Some(path) = &policy_file {
            b = b.env("POLICY_FILE", path.to_str().expect("utf8 path"));
        }
        if let Some(url) = self.service_nats_url {
            b = b.env("NATS_URL", &url(port));
        }
        if let Some(url) = self.revocation {
            b = b.env("NATS_SYSTEM_URL", &url(port));
        }
        for (k, v) in &self.env {
            b = b.env(k, v);
        }
        let service = b.start();
        Stack {
            api,
            nats,
            keys,
            key: self.key,
            service,
            token_file,
            leafnode_port,
            policy_file,
            _jetstream_store: store,
        }
    }
}

impl Stack {
    /// A stack with the defaults of [`StackBuilder::new`].
    pub fn start() -> Stack {
        StackBuilder::new().start()
    }

    /// A valid token for `ns/name` as the cluster would mint it.
    pub fn token(&self, ns: &str, name: &str) -> String {
        mint_token(&self.api, &self.key, ns, name)
    }

    /// A builder for another replica of the service: the same keys, nats-server, Kubernetes API,
    /// issuer and policy file (other settings of the first one are not copied).
    pub fn replica(&self) -> ServiceBuilder {
        let mut b = ServiceBuilder::new(&self.keys, &self.nats.service_url(), CLIENT_ACCOUNT)
            .kube_api(&self.api.url(), &self.api.token())
            .env("JWT_ISSUER", DEFAULT_ISSUER);
        if let Some(path) = &self.policy_file {
            b = b.env("POLICY_FILE", path.to_str().expect("utf8 path"));
        }
        b
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        self.nats.url()
    }

    /// Asserts that `token` is refused with `Authorization Violation` and counted under `reason`;
    /// the client saw only `Authorization Violation`; nats-server's log names the reason.
    pub fn assert_denied(&self, token: &str, reason: &str) {
        assert_refused(&self.url(), &self.service, token, reason);
        let logged =
            format!("Auth callout service returned an error: authorization failed ({reason})");
        self.service.wait_for(
            &format!("nats-server to log {logged:?}"),
            DENIAL_COUNTED,
            || self.nats.log().contains(&logged),
        );
    }

    /// The number of ServiceAccounts the service's cache holds.
    pub fn cached(&self) -> f64 {
        self.service.metric("nats_callout_serviceaccounts")
    }

    /// Waits until the cache holds at least `n` ServiceAccounts.
    pub fn wait_cached(&self, what: &str, n: usize, timeout: Duration) {
        self.service
            .wait_for(what, timeout, || self.cached() >= n as f64);
    }

    /// Asserts that a client with `ns/name`'s token connects and can use its namespace.
    pub fn assert_connects(&self, ns: &str, name: &str) {
        let c = connect_token(&self.url(), &self.token(ns, name)).unwrap_or_else(|e| {
            panic!(
                "{ns}/{name} should connect: {e}\nservice log:\n{}",
                self.service.log()
            )
        });
        assert!(
            c.round_trip(&format!("{ns}.check")),
            "{ns}/{name} round trip"
        );
    }

    /// Replaces the admin policy's file as a ConfigMap update does (written aside, renamed over).
    pub fn replace_policy(&self, yaml: &str) {
        write_atomically(
            self.policy_file.as_ref().expect("a stack with a policy"),
            yaml,
        );
    }

    /// Rotates the service's own API credential: the kubelet writes a new token to the file and
    /// the API server accepts only the new one from then on.
    pub fn rotate_api_token(&self) -> String {
        let path = self.token_file.as_ref().expect("a token-file stack");
        let token = format!("rotated-{}", random_uuid());
        write_atomically(path, &token);
        self.api.set_token(&token);
        token
    }
}

/// Waits until `service` is connected as a system-account user (and has checked it is one).
pub fn wait_revoking(service: &Service) {
    service.wait_for("the system connection", Duration::from_secs(15), || {
        service.log().contains("revocation: connected to nats")
    });
}

/// The URL of the test servers' system-account user on `port`.
pub fn system_url(port: u16) -> String {
    format!("nats://sys:sys-secret@127.0.0.1:{port}")
}

/// Writes `text` to a temporary file beside `path` and renames it over `path`, as the kubelet's
/// atomic writer does, so a reader never sees a half-written token.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{text}\n")).expect("write token");
    fs::rename(&tmp, path).expect("rename token");
}
