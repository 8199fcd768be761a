//! Harness for the client examples of docs/examples: installs what they need, runs them as child
//! processes with their output collected line by line, and plays the kubelet by rewriting a
//! projected token file.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::tokens::{SigningKey, TokenBuilder};

/// The version of nats-py docs/examples/python/requirements.txt pins.
pub const NATS_PY_VERSION: &str = "2.16.0";

/// `docs/examples/<lang>` in this checkout.
pub fn example_dir(lang: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/examples")
        .join(lang)
}

fn run(what: &str, cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Panics with a clear message when `tool --version` cannot run.
pub fn require_tool(tool: &str, why: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed or not on PATH: it is needed to {why}; install it (the \
         project's machines have it) rather than skipping this test"
    );
}

/// `python3`, with nats-py at the pinned version (installed with pip from requirements.txt
/// when missing, the way scripts/ensure-nats-server installs nats-server).
pub fn python_with_nats_py() -> &'static str {
    require_tool("python3", "run docs/examples/python/client.py");
    let installed = || {
        Command::new("python3")
            .args([
                "-c",
                "from nats.aio.client import __version__ as v; print(v)",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if installed().as_deref() != Some(NATS_PY_VERSION) {
        eprintln!("installing nats-py=={NATS_PY_VERSION} with pip");
        let reqs = example_dir("python").join("requirements.txt");
        run(
            "pip install -r docs/examples/python/requirements.txt",
            Command::new("python3").args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                reqs.to_str().expect("utf8 path"),
            ]),
        );
        assert_eq!(
            installed().as_deref(),
            Some(NATS_PY_VERSION),
            "nats-py still not importable after pip install"
        );
    }
    "python3"
}

/// `node`, with docs/examples/node/node_modules installed by `npm ci` from the lock file when
/// the pinned `nats` package is not there yet.
pub fn node_with_nats() -> &'static str {
    require_tool("node", "run docs/examples/node/client.mjs");
    let dir = example_dir("node");
    let want = package_json_version(&dir.join("package.json"));
    let have = fs::read_to_string(dir.join("node_modules/nats/package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_string));
    if have.as_deref() != Some(want.as_str()) {
        require_tool("npm", "install the nats package for docs/examples/node");
        eprintln!("installing nats@{want} with npm ci in {}", dir.display());
        run(
            "npm ci in docs/examples/node",
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir),
        );
    }
    "node"
}

fn package_json_version(path: &Path) -> String {
    let text = fs::read_to_string(path).expect("read package.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("package.json is JSON");
    v["dependencies"]["nats"]
        .as_str()
        .expect("package.json pins nats")
        .to_string()
}

/// Builds docs/examples/rust (its own crate and lock file, its own target directory under this
/// project's `target/`) and returns the binary's path.
pub fn rust_example_binary() -> PathBuf {
    let dir = example_dir("rust");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/client-examples");
    let started = Instant::now();
    run(
        "cargo build of docs/examples/rust",
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--locked", "--quiet", "--manifest-path"])
            .arg(dir.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target),
    );
    eprintln!(
        "docs/examples/rust built in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    target.join("debug/nats-token-file-client")
}

/// A running example with its stdout and stderr collected as lines; killed when dropped.
pub struct Example {
    name: String,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(
    stream: impl Read + Send + 'static,
    prefix: &'static str,
    into: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            into.lock().expect("lines").push(format!("{prefix}{line}"));
        }
    })
}

impl Example {
    /// Starts `cmd` with `NATS_URL`, `NATS_TOKEN_FILE` and `NATS_NAMESPACE` set.
    pub fn start(name: &str, mut cmd: Command, url: &str, token_file: &Path, ns: &str) -> Example {
        let mut child = cmd
            .env("NATS_URL", url)
            .env("NATS_TOKEN_FILE", token_file)
            .env("NATS_NAMESPACE", ns)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({cmd:?}): {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), "", lines.clone()),
            collect(
                child.stderr.take().expect("stderr"),
                "stderr: ",
                lines.clone(),
            ),
        ];
        Example {
            name: name.to_string(),
            child: Some(child),
            lines,
            readers,
        }
    }

    /// Every line printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// The output so far, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "--- {} output ---\n{}\n---",
            self.name,
            self.lines().join("\n")
        )
    }

    /// Number of lines equal to `line`.
    pub fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| l.as_str() == line).count()
    }

    /// Waits up to `timeout` until `cond` holds on the lines printed so far.
    pub fn wait_until(&self, timeout: Duration, cond: impl Fn(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(&self.lines()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                // The pipes close with the process: take the last lines.
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let pid = self.child.as_ref()?.id();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        self.wait_exit(timeout)
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes `text` beside `path` and renames it over `path`, as the kubelet's atomic writer does.
pub fn write_token(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{text}\n")).expect("write token");
    fs::rename(&tmp, path).expect("rename token");
}

/// Plays the kubelet for one projected token: writes a token with `lifetime_secs` for `ns/name`
/// at once and, while running, a fresh one every `every`, so the file always holds a token that
/// has most of its life ahead.
pub struct TokenRotator {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl TokenRotator {
    pub fn start(
        path: &Path,
        key: &SigningKey,
        ns: &str,
        name: &str,
        uid: &str,
        lifetime_secs: i64,
        every: Duration,
    ) -> TokenRotator {
        let mint = {
            let (key, ns, name, uid) = (
                key.clone(),
                ns.to_string(),
                name.to_string(),
                uid.to_string(),
            );
            move || {
                TokenBuilder::for_sa(&ns, &name, &uid)
                    .expires_in(lifetime_secs)
                    .sign(&key)
            }
        };
        write_token(path, &mint());
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicUsize::new(1));
        let thread = {
            let (stop, written, path) = (stop.clone(), written.clone(), path.to_path_buf());
            std::thread::spawn(move || {
                let mut next = Instant::now() + every;
                while !stop.load(Ordering::SeqCst) {
                    if Instant::now() >= next {
                        write_token(&path, &mint());
                        written.fetch_add(1, Ordering::SeqCst);
                        next += every;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        TokenRotator {
            stop,
            written,
            thread: Some(thread),
        }
    }

    /// How many tokens were written so far.
    pub fn written(&self) -> usize {
        self.written.load(Ordering::SeqCst)
    }
}

impl Drop for TokenRotator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
