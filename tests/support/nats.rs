//! A real nats-server in config mode with auth callout, started on a free port for one test.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nkeys::{KeyPair, XKey};

/// Name of the account the callout service lives in.
pub const AUTH_ACCOUNT: &str = "AUTH";
/// Name of the account clients are placed in (not `$G`, on purpose).
pub const CLIENT_ACCOUNT: &str = "APP";
/// The service's own user in the AUTH account.
pub const AUTH_USER: &str = "callout";
/// Its password.
pub const AUTH_PASS: &str = "callout-secret";

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Keys shared by a server and the service: the account that signs, and optionally the xkey.
pub struct CalloutKeys {
    /// The signing account key pair (the server's `auth_callout.issuer`).
    pub account: KeyPair,
    /// The service's curve key, when requests are encrypted.
    pub xkey: Option<XKey>,
}

impl CalloutKeys {
    /// New random keys, with or without an xkey.
    pub fn new(with_xkey: bool) -> CalloutKeys {
        CalloutKeys {
            account: KeyPair::new_account(),
            xkey: with_xkey.then(XKey::new),
        }
    }
}

/// The nats-server config text for config mode with auth callout.
pub fn server_config(port: u16, keys: &CalloutKeys, auth_timeout_secs: u64) -> String {
    let xkey = keys
        .xkey
        .as_ref()
        .map(|x| format!("    xkey: \"{}\"\n", x.public_key()))
        .unwrap_or_default();
    format!(
        r#"listen: "127.0.0.1:{port}"
server_name: "test-{port}"
accounts {{
  {AUTH_ACCOUNT} {{ users: [ {{ user: "{AUTH_USER}", password: "{AUTH_PASS}" }} ] }}
  {CLIENT_ACCOUNT} {{ }}
  SYS {{ users: [ {{ user: "sys", password: "sys-secret" }} ] }}
}}
system_account: SYS
authorization {{
  timeout: {auth_timeout_secs}
  auth_callout {{
    issuer: "{issuer}"
    auth_users: [ "{AUTH_USER}", "sys" ]
    account: "{AUTH_ACCOUNT}"
{xkey}  }}
}}
"#,
        issuer = keys.account.public_key(),
    )
}

/// A running nats-server; killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    /// Port clients connect to.
    pub port: u16,
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// Path of the nats-server binary (`NATS_SERVER_BIN` or the one on PATH).
pub fn nats_server_bin() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_string())
}

impl NatsServer {
    /// Starts a server with `config` text on `port` and waits until it accepts connections.
    pub fn start_with_config(port: u16, config: String) -> NatsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nats.conf");
        fs::write(&path, config).expect("write config");
        let mut s = NatsServer {
            child: None,
            port,
            dir,
            config: path,
        };
        s.spawn();
        s
    }

    /// Starts a config-mode callout server for `keys`.
    pub fn start(keys: &CalloutKeys) -> NatsServer {
        let port = free_port();
        NatsServer::start_with_config(port, server_config(port, keys, 2))
    }

    fn spawn(&mut self) {
        let log = fs::File::create(self.dir.path().join("server.log")).expect("log file");
        let child = Command::new(nats_server_bin())
            .arg("-D")
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("nats-server exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// URL for clients.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// URL with the service's own login embedded.
    pub fn service_url(&self) -> String {
        format!("nats://{AUTH_USER}:{AUTH_PASS}@127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The configuration text the server runs with.
    pub fn config_text(&self) -> String {
        fs::read_to_string(&self.config).expect("read config")
    }

    /// Replaces the configuration and has the running server reload it (SIGHUP), waiting until
    /// it says it has.
    pub fn reload(&self, config: &str) {
        let before = self.log().matches("Reloaded server configuration").count();
        fs::write(&self.config, config).expect("write config");
        let pid = self.child.as_ref().expect("a running server").id();
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success(), "kill -HUP {pid}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches("Reloaded server configuration").count() <= before {
            assert!(
                Instant::now() < deadline,
                "nats-server did not reload:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops and starts the server again on the same port with the same config.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
