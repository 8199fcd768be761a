//! Operator mode for real: the output of `keys operator` in a directory of its own, a
//! nats-server booted on one of its configurations, and an operator-mode stack (that server, the
//! service binary run with the generated `service.env`, the Kubernetes API emulator and minted
//! tokens) built from it.
#![allow(deprecated)]

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nkeys::KeyPair;
use serde_json::{json, Value};

use nats_k8s_oidc_callout::callout::jwt::{decode_verified, encode, jti, Registered};

use super::client::{connect_creds, connect_token, Client};
use super::kube::{KubeEmulator, DEFAULT_ISSUER};
use super::nats::{free_port, NatsServer};
use super::service::{Service, ServiceBuilder};
use super::stack::{
    account_spec, assert_refused, mint_token, start_cluster, write_atomically, AccountSpec,
};
use super::tokens::SigningKey;

const BIN: &str = env!("CARGO_BIN_EXE_nats-k8s-oidc-callout");
/// How long a request to the server may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// The output of one `keys operator` run, in its own directory.
pub struct Generated {
    /// The output directory.
    pub dir: tempfile::TempDir,
    /// What the command printed.
    pub summary: String,
}

impl Generated {
    /// Runs `keys operator --dir <new directory> ARGS`.
    pub fn new(args: &[&str]) -> Generated {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(BIN)
            .args(["keys", "operator", "--dir"])
            .arg(dir.path())
            .args(args)
            .output()
            .expect("run keys operator");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Generated {
            dir,
            summary: String::from_utf8(out.stdout).expect("utf8 summary"),
        }
    }

    /// The absolute path of `rel`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The text of `rel`.
    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// The key whose seed `rel` holds.
    pub fn key(&self, rel: &str) -> KeyPair {
        KeyPair::from_seed(self.read(rel).trim()).expect("a seed")
    }

    /// The public key of the generated account `name` (`APP`, `AUTH`, …).
    pub fn account(&self, name: &str) -> String {
        self.key(&format!("accounts/{name}.nk")).public_key()
    }

    /// The claims of the JWT in `rel`.
    pub fn claims(&self, rel: &str) -> Value {
        decode_verified(self.read(rel).trim()).expect("a JWT")
    }

    /// The user JWT of a creds file.
    pub fn creds_jwt(&self, rel: &str) -> String {
        self.read(rel)
            .lines()
            .nth(1)
            .expect("a creds file")
            .to_string()
    }

    /// Boots nats-server on the generated configuration `config`, on a free port.
    pub fn boot(&self, config: &str) -> NatsServer {
        boot_text(&self.read(config))
    }

    /// The account JWT of `name` re-signed by the operator after `change`.
    pub fn resigned_account(&self, name: &str, change: impl FnOnce(&mut Value)) -> String {
        resign(
            self.claims(&format!("accounts/{name}.jwt")),
            &self.key("operator.nk"),
            change,
        )
    }
}

/// Boots nats-server on `config`, listening on a free port of 127.0.0.1.
pub fn boot_text(config: &str) -> NatsServer {
    let port = free_port();
    NatsServer::start_with_config(port, format!("listen: \"127.0.0.1:{port}\"\n{config}"))
}

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Re-signs `claims` with `key` after `change`, recomputing `jti`.
pub fn resign(mut claims: Value, key: &KeyPair, change: impl FnOnce(&mut Value)) -> String {
    change(&mut claims);
    let s = |k: &str| claims[k].as_str().unwrap_or_default().to_string();
    let (iss, name, sub) = (s("iss"), s("name"), s("sub"));
    claims["jti"] = json!(jti(&Registered {
        iat: claims["iat"].as_i64().expect("iat"),
        iss: &iss,
        name: &name,
        sub: &sub,
        ..Registered::default()
    }));
    encode(&claims, key).expect("sign")
}

/// Waits up to two seconds for the server's log to contain `needle`.
pub fn logged(nats: &NatsServer, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if nats.log().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The account a connection is in, as the server reports it to the user itself (the user must
/// be allowed to publish `$SYS.REQ.USER.INFO`).
pub fn account_of(client: &Client) -> String {
    let reply = client
        .nc
        .request_timeout("$SYS.REQ.USER.INFO", b"", WAIT)
        .expect("user info answered");
    let reply: Value = serde_json::from_slice(&reply.data).expect("json");
    reply["data"]["account"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"))
        .to_string()
}

/// Which key signs the user JWTs of the default account (APP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserSigner {
    /// APP's own key (`accounts/APP.nk`).
    Account,
    /// APP's plain signing key (`signing-keys/<APP>.nk`, what `service.env` names).
    Plain,
    /// APP's scoped signing key (`accounts/APP.scoped.nk`, `NATS_SIGNING_KEY_SCOPED=true`).
    Scoped,
}

type Prepare = Box<dyn FnOnce(&Generated) -> Vec<(String, String)>>;
type Policy = Box<dyn FnOnce(&Generated) -> String>;

/// Builder of an [`OperatorStack`]: by default `keys operator` with an xkey, the memory-resolver
/// configuration, APP's plain signing key, and one ServiceAccount `team-a/app`.
pub struct OperatorStackBuilder {
    args: Vec<String>,
    config: &'static str,
    default_sentinel: bool,
    signer: UserSigner,
    accounts: Vec<AccountSpec>,
    policy: Option<Policy>,
    prepare: Vec<Prepare>,
    revocation: bool,
}

impl OperatorStackBuilder {
    /// The defaults above.
    pub fn new() -> OperatorStackBuilder {
        OperatorStackBuilder {
            args: Vec::new(),
            config: "nats-memory.conf",
            default_sentinel: false,
            signer: UserSigner::Plain,
            accounts: vec![account_spec("team-a", "app", &[])],
            policy: None,
            prepare: Vec::new(),
            revocation: false,
        }
    }

    /// The service closes revoked connections as the generated system-account user
    /// (`NATS_SYSTEM_URL` and `NATS_SYSTEM_CREDS_FILE` = `creds/sys.creds`).
    pub fn revocation(mut self) -> Self {
        self.revocation = true;
        self
    }

    /// More arguments to `keys operator` (`--no-xkey`, `--client-account NAME`).
    pub fn keys_args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The generated nats-server configuration to boot (`nats-memory.conf`,
    /// `nats-memory-default-sentinel.conf`, `nats-full.conf`).
    pub fn config(mut self, config: &'static str) -> Self {
        self.config = config;
        self
    }

    /// Adds `default_sentinel` (the generated sentinel's JWT) to the configuration, for one
    /// that has none (`nats-full.conf`): clients may then present a token alone.
    pub fn default_sentinel(mut self) -> Self {
        self.default_sentinel = true;
        self
    }

    /// Which key signs APP's user JWTs.
    pub fn signer(mut self, signer: UserSigner) -> Self {
        self.signer = signer;
        self
    }

    /// One more ServiceAccount `ns/name` with these annotations.
    pub fn account(mut self, ns: &str, name: &str, annotations: &[(&str, &str)]) -> Self {
        self.accounts.push(account_spec(ns, name, annotations));
        self
    }

    /// The admin policy (`POLICY_FILE`), written from the generated keys (rules name accounts by
    /// public key).
    pub fn policy(mut self, policy: impl FnOnce(&Generated) -> String + 'static) -> Self {
        self.policy = Some(Box::new(policy));
        self
    }

    /// Runs `prepare` on the generated files before anything starts; the settings it returns
    /// are set on the service after `service.env`'s.
    pub fn prepare(
        mut self,
        prepare: impl FnOnce(&Generated) -> Vec<(String, String)> + 'static,
    ) -> Self {
        self.prepare.push(Box::new(prepare));
        self
    }

    /// Generates the keys, starts the emulator, nats-server and the service, and waits until
    /// the service is ready.
    pub fn start(self) -> OperatorStack {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let keys = Generated::new(&args);
        let key = SigningKey::rs256();
        let api = start_cluster(&key, &self.accounts);
        let mut config = keys.read(self.config);
        if self.default_sentinel {
            config.push_str(&format!(
                "default_sentinel: \"{}\"\n",
                keys.creds_jwt("creds/sentinel.creds")
            ));
        }
        let nats = boot_text(&config);
        let mut b = ServiceBuilder::bare(&nats.url())
            .env_file(&keys.read("service.env"))
            .kube_api(&api.url(), &api.token())
            .env("JWT_ISSUER", DEFAULT_ISSUER);
        let app = keys.account("APP");
        b = match self.signer {
            UserSigner::Account => b.env(
                "NATS_SIGNING_KEY_FILE",
                path_str(&keys.path("accounts/APP.nk")),
            ),
            UserSigner::Plain => b.env(
                "NATS_SIGNING_KEY_FILE",
                path_str(&keys.path(&format!("signing-keys/{app}.nk"))),
            ),
            UserSigner::Scoped => b
                .env(
                    "NATS_SIGNING_KEY_FILE",
                    path_str(&keys.path("accounts/APP.scoped.nk")),
                )
                .env("NATS_SIGNING_KEY_SCOPED", "true"),
        };
        let policy_file = self.policy.map(|policy| {
            let path = b.dir().join("policy.yaml");
            write_atomically(&path, &policy(&keys));
            path
        });
        if let Some(path) = &policy_file {
            b = b.env("POLICY_FILE", path_str(path));
        }
        if self.revocation {
            b = b.env("NATS_SYSTEM_URL", &nats.url()).env(
                "NATS_SYSTEM_CREDS_FILE",
                path_str(&keys.path("creds/sys.creds")),
            );
        }
        for prepare in self.prepare {
            for (k, v) in prepare(&keys) {
                b = b.env(&k, &v);
            }
        }
        let service = b.spawn();
        service.wait_ready(Duration::from_secs(15));
        OperatorStack {
            keys,
            api,
            key,
            nats,
            service,
            policy_file,
        }
    }
}

fn path_str(p: &std::path::Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// nats-server in operator mode, the service and a cluster, from one `keys operator` run.
pub struct OperatorStack {
    /// The generated files.
    pub keys: Generated,
    /// The Kubernetes API emulator.
    pub api: KubeEmulator,
    /// The key the cluster signs service-account tokens with.
    pub key: SigningKey,
    /// The nats-server.
    pub nats: NatsServer,
    /// The service.
    pub service: Service,
    /// The admin policy's file, when the service has one.
    pub policy_file: Option<PathBuf>,
}

impl OperatorStack {
    /// A valid token for `ns/name`.
    pub fn token(&self, ns: &str, name: &str) -> String {
        mint_token(&self.api, &self.key, ns, name)
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        self.nats.url()
    }

    /// A client of `ns/name` presenting its token alone (needs `default_sentinel`).
    pub fn connect(&self, ns: &str, name: &str) -> Client {
        connect_token(&self.url(), &self.token(ns, name)).unwrap_or_else(|e| {
            panic!(
                "{ns}/{name} should connect: {e}\nservice log:\n{}\nnats-server log:\n{}",
                self.service.log(),
                self.nats.log()
            )
        })
    }

    /// Asserts that `token` is refused and that the service counts the denial under `reason`.
    pub fn assert_denied(&self, token: &str, reason: &str) {
        assert_refused(&self.url(), &self.service, token, reason);
    }

    /// A connection of the system account's user.
    pub fn sys(&self) -> Client {
        connect_creds(&self.url(), &self.keys.path("creds/sys.creds")).expect("sys connects")
    }

    /// The account and user name the server gives the connection of `client`, asked by the
    /// system user (clients of the callout may not ask themselves).
    pub fn placement(&self, client: &Client) -> (String, String) {
        let ask = json!({"cid": client.nc.client_id(), "auth": true});
        let reply = self
            .sys()
            .nc
            .request_timeout("$SYS.REQ.SERVER.PING.CONNZ", ask.to_string(), WAIT)
            .expect("connz answered");
        let reply: Value = serde_json::from_slice(&reply.data).expect("json");
        let conn = &reply["data"]["connections"][0];
        let field = |k: &str| {
            conn[k]
                .as_str()
                .unwrap_or_else(|| panic!("no {k} in {reply}"))
                .to_string()
        };
        (field("account"), field("authorized_user"))
    }

    /// Pushes an account JWT as the system user (`$SYS.REQ.CLAIMS.UPDATE`, full resolver);
    /// returns the server's answer.
    pub fn push_account(&self, jwt: &str) -> Value {
        let reply = self
            .sys()
            .nc
            .request_timeout("$SYS.REQ.CLAIMS.UPDATE", jwt, WAIT)
            .expect("claims update answered");
        serde_json::from_slice(&reply.data).expect("json")
    }
}
