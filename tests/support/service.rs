//! The service as its real binary, started with an environment built for one test.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use super::kubeconfig::{kubeconfig, write_kubeconfig};
use super::nats::{free_port, CalloutKeys};

/// Builder of a service process.
pub struct ServiceBuilder {
    env: BTreeMap<String, String>,
    dir: tempfile::TempDir,
    /// A command the binary is started through (its path is appended as the last argument).
    wrapper: Vec<String>,
}

/// A running service; killed when dropped.
pub struct Service {
    child: Option<Child>,
    /// HTTP port of health and metrics.
    pub port: u16,
    /// The loopback address of that port: `[::1]` when `HTTP_ADDRESS` is an IPv6 address.
    host: &'static str,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServiceBuilder {
    /// A service logging in through `nats_url`, with debug logs and two workers, and no keys or
    /// account yet: the caller sets them.
    pub fn bare(nats_url: &str) -> ServiceBuilder {
        ServiceBuilder {
            env: BTreeMap::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            wrapper: Vec::new(),
        }
        .env("NATS_URL", nats_url)
        .env("LOG_LEVEL", "debug")
        .env("WORKERS", "2")
    }

    /// A service signing with `keys`, placing clients in `account`, logging in through `nats_url`.
    pub fn new(keys: &CalloutKeys, nats_url: &str, account: &str) -> ServiceBuilder {
        let mut b = ServiceBuilder::bare(nats_url);
        let seed = b.dir.path().join("signing.nk");
        fs::write(&seed, keys.account.seed().expect("seed")).expect("write seed");
        b = b
            .env("NATS_ACCOUNT", account)
            .env("NATS_SIGNING_KEY_FILE", seed.to_str().expect("utf8 path"));
        if let Some(x) = &keys.xkey {
            let path = b.dir.path().join("xkey.nk");
            fs::write(&path, x.seed().expect("xkey seed")).expect("write xkey");
            b = b.env("NATS_XKEY_SEED_FILE", path.to_str().expect("utf8 path"));
        }
        b
    }

    /// Sets one environment variable.
    pub fn env(mut self, k: &str, v: &str) -> ServiceBuilder {
        self.env.insert(k.to_string(), v.to_string());
        self
    }

    /// Sets every `NAME=value` line of an environment file (`#` lines are comments).
    pub fn env_file(mut self, text: &str) -> ServiceBuilder {
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                self = self.env(k, v);
            }
        }
        self
    }

    /// Removes one environment variable set so far (e.g. a default of [`ServiceBuilder::new`]).
    pub fn unset(mut self, k: &str) -> ServiceBuilder {
        self.env.remove(k);
        self
    }

    /// Starts the binary through `argv` (program and arguments), with the binary's path appended
    /// as the last argument; the wrapper must end by exec'ing it, so that the process the test
    /// holds (signals, kill on drop) is the service itself. The wrapper gets the same
    /// environment as the service.
    pub fn wrapper(mut self, argv: &[&str]) -> ServiceBuilder {
        assert!(!argv.is_empty(), "a wrapper needs a program");
        self.wrapper = argv.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Points the service at a Kubernetes API (the emulator) through a kubeconfig with a token.
    pub fn kube_api(self, server: &str, token: &str) -> ServiceBuilder {
        let text = kubeconfig(server, &[], &[format!("token: {token}")]);
        let kubeconfig = write_kubeconfig(self.dir.path(), "kubeconfig", &text);
        let path = kubeconfig.to_str().expect("utf8 path").to_string();
        self.env("K8S_IN_CLUSTER", "false").env("KUBECONFIG", &path)
    }

    /// A scratch directory that lives as long as the service.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the binary without waiting for readiness.
    pub fn spawn(self) -> Service {
        let port = free_port();
        let log = self.dir.path().join("service.log");
        let out = fs::File::create(&log).expect("log file");
        let bin = env!("CARGO_BIN_EXE_nats-k8s-oidc-callout");
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .env("PORT", port.to_string())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("start the service binary");
        let ipv6 = self
            .env
            .get("HTTP_ADDRESS")
            .is_some_and(|a| a.contains(':'));
        Service {
            child: Some(child),
            port,
            host: if ipv6 { "[::1]" } else { "127.0.0.1" },
            log,
            _dir: self.dir,
        }
    }

    /// Starts the binary and waits until `/readyz` answers 200.
    pub fn start(self) -> Service {
        let s = self.spawn();
        s.wait_ready(Duration::from_secs(15));
        s
    }
}

fn http_get(host: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let mut resp = agent
        .get(&format!("http://{host}:{port}{path}"))
        .call()
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().ok()?;
    Some((status, body))
}

impl Service {
    /// Process id of the running service (of its wrapper's final exec, when it has one).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// GET on the service's HTTP port: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.host, self.port, path)
    }

    /// Waits for `/readyz` to answer 200, panicking with the log when it does not.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, _)) = self.get("/readyz") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "service not ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of one metric sample (exact series text before the value), or 0.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.get("/metrics").unwrap_or_default();
        body.lines()
            .filter_map(|l| l.strip_prefix(series))
            .filter_map(|rest| rest.strip_prefix(' '))
            .filter_map(|v| v.split_whitespace().next())
            .filter_map(|v| v.parse::<f64>().ok())
            .next()
            .unwrap_or(0.0)
    }

    /// Number of decisions with this result and reason.
    pub fn decisions(&self, result: &str, reason: &str) -> f64 {
        self.metric(&format!(
            "nats_callout_decisions_total{{result=\"{result}\",reason=\"{reason}\"}}"
        ))
    }

    /// Waits until `cond` holds, panicking with the log when it does not within `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The directory holding the service's files (its seed `signing.nk`, an xkey `xkey.nk`).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The service's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One field of `/proc/<pid>/status` (`"VmRSS:"`, `"VmHWM:"`, `"Threads:"` ...) as a number (kB
/// for the memory fields); 0 when the process or the field is gone.
pub fn proc_status(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
