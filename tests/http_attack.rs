//! The health and metrics port of the real binary under hostile clients: `/healthz` keeps
//! answering within the kubelet's default probe timeout (1 s) and the thread count stays fixed,
//! while 500 connections misbehave at once (slow writers, non-readers, half-sent requests, idle
//! connections, oversized heads, bodies); and `HTTP_ADDRESS` chooses the interface.

mod support;

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::nats::{CalloutKeys, NatsServer, CLIENT_ACCOUNT};
use support::service::{Service, ServiceBuilder};

const BIN: &str = env!("CARGO_BIN_EXE_nats-k8s-oidc-callout");
/// Hostile connections the attackers hold open at once (reopening each one the server closes).
const ATTACKERS: usize = 500;
/// How long the attack lasts: longer than the server's 5 s head and write timeouts.
const ATTACK: Duration = Duration::from_secs(15);
/// The kubelet's default probe timeout, and the issue's bound.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Threads of the HTTP server (`http::THREADS`, documented in OPERATIONS.md).
const HTTP_THREADS: usize = 33;

/// A ready service in local mode (ServiceAccounts from a file, dev-signer keys).
fn ready_service(nats: &NatsServer, keys: &CalloutKeys, extra: &[(&str, &str)]) -> Service {
    let mut b = ServiceBuilder::new(keys, &nats.service_url(), CLIENT_ACCOUNT);
    let dir = b.dir().to_path_buf();
    let out = Command::new(BIN)
        .args(["dev-signer", "init", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let accounts = dir.join("serviceaccounts.yaml");
    fs::write(&accounts, "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: app\n  namespace: dev\n  uid: \"1111\"\n").unwrap();
    b = b
        .env("SERVICE_ACCOUNTS_PATH", accounts.to_str().unwrap())
        .env("JWKS_PATH", dir.join("jwks.json").to_str().unwrap())
        .env("JWT_ISSUER", nats_k8s_oidc_callout::devtools::DEV_ISSUER)
        // The server logs each dropped connection at debug.
        .env("LOG_LEVEL", "info")
        .env("RUST_LOG", "info");
    for (k, v) in extra {
        b = b.env(k, v);
    }
    b.start()
}

/// How a probe's error starts when the connection itself was not made (the kernel dropped the
/// SYN of a full listen queue and its retry came too late), not the service's doing.
const NOT_CONNECTED: &str = "not connected: ";

/// `GET path` on a new connection to `addr`, as a kubelet probe does: the status line and body,
/// or the error, and the time it took.
fn probe(addr: SocketAddr, path: &str) -> (Result<String, String>, Duration) {
    let start = Instant::now();
    let answer = (|| {
        let mut c = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
            .map_err(|e| format!("{NOT_CONNECTED}{e}"))?;
        // As the kubelet does: the request right after the connect (a fresh socket takes it
        // without waiting), the timeouts after it.
        let req = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
        c.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(PROBE_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if start.elapsed() > PROBE_TIMEOUT {
                return Err("no answer within 1 s".to_string());
            }
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    })();
    (answer, start.elapsed())
}

/// One probe as the test saw it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// 200 within 1 s.
    Answered,
    /// The connection was not made in time (see [`NOT_CONNECTED`]).
    NotConnected,
    /// Connected, then no 200 within 1 s: closed unanswered, another status, or too slow.
    Unanswered,
}

impl Seen {
    fn of(answer: &Result<String, String>, took: Duration) -> Seen {
        match answer {
            Ok(a) if a.starts_with("HTTP/1.1 200 ") && took < PROBE_TIMEOUT => Seen::Answered,
            Err(e) if e.starts_with(NOT_CONNECTED) => Seen::NotConnected,
            _ => Seen::Unanswered,
        }
    }
}

/// Fails when the probes (in order) would come near making the kubelet restart the pod, which
/// it does once `failureThreshold` (3 by default) liveness probes fail in a row: two failures in
/// a row fail the test, and so do more than `max_unanswered` probes the service left
/// unanswered. A lone probe that was not connected is the margin's: a local flood that keeps
/// the listen queue full makes the kernel drop a SYN now and then, the probe's included, and the
/// retry comes a second later.
fn assert_kubelet_keeps_the_pod(seen: &[Seen], failures: &[String], max_unanswered: usize) {
    let in_a_row = seen
        .windows(2)
        .any(|w| w[0] != Seen::Answered && w[1] != Seen::Answered);
    let count = |kind| seen.iter().filter(|s| **s == kind).count();
    let unanswered = count(Seen::Unanswered);
    let too_many_unanswered = unanswered > max_unanswered;
    println!(
        "{} probes: {} answered, {} not connected, {unanswered} unanswered",
        seen.len(),
        count(Seen::Answered),
        count(Seen::NotConnected)
    );
    assert!(
        !in_a_row && !too_many_unanswered,
        "{} of {} probes failed{}:\n{}",
        failures.len(),
        seen.len(),
        if in_a_row { ", two in a row" } else { "" },
        failures.join("\n")
    );
}

/// `Threads:` of /proc/<pid>/status.
fn threads(pid: u32) -> usize {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The kinds of hostile client, a sixth of the attackers each.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Sends a request head one byte every pass (slowloris).
    SlowWriter,
    /// Pipelines `GET /metrics` as fast as the socket takes them and never reads.
    NonReader,
    /// Sends half a request head and nothing more.
    HalfSent,
    /// Connects and sends nothing.
    Idle,
    /// Sends a 16 KiB header line (answered 431 and closed, then reconnects).
    Oversized,
    /// Announces a 1 MB body to `POST /metrics` and sends it 100 bytes a pass.
    WithBody,
}

const PIPELINED: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: attack\r\n\r\n";

/// One hostile connection, reopened whenever the server closes it.
struct Attacker {
    kind: Kind,
    stream: Option<TcpStream>,
}

impl Attacker {
    fn open(&mut self, addr: SocketAddr, opened: &AtomicUsize) {
        self.stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .ok()
            .filter(|s| s.set_nonblocking(true).is_ok());
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        let _ = match self.kind {
            Kind::SlowWriter => s.write(b"GET /metrics HTTP/1.1\r\nHost: attack\r\n"),
            // About 136 KB of requests, as much as the socket takes without blocking.
            Kind::NonReader => s.write(&PIPELINED.repeat(136_000 / PIPELINED.len())),
            Kind::HalfSent => s.write(b"GET /healthz HTTP/1.1\r\nHost: "),
            Kind::Idle => Ok(0),
            Kind::Oversized => {
                let line = format!("GET /metrics HTTP/1.1\r\nX-Big: {}", "a".repeat(16 * 1024));
                s.write(line.as_bytes())
            }
            Kind::WithBody => s.write(b"POST /metrics HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n"),
        };
    }

    /// One step of misbehaviour; false once the server has closed the connection.
    fn step(&mut self) -> bool {
        let Some(s) = self.stream.as_mut() else {
            return false;
        };
        let gone = |r: io::Result<usize>| r.is_err() && !would_block(&r);
        let closed = match self.kind {
            Kind::SlowWriter => gone(s.write(b"X")) || peer_closed(s),
            Kind::NonReader => gone(s.write(PIPELINED)),
            Kind::WithBody => gone(s.write(&[b'b'; 100])) || peer_closed(s),
            Kind::HalfSent | Kind::Idle | Kind::Oversized => peer_closed(s),
        };
        if closed {
            self.stream = None;
        }
        !closed
    }
}

fn would_block<T>(r: &io::Result<T>) -> bool {
    matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Whether the server closed the connection (reading what it sent, which only non-readers
/// would leave).
fn peer_closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Keeps [`ATTACKERS`] hostile connections open until `stop`: every 200 ms each one misbehaves
/// once, and each the server closed is opened again.
fn attack(addr: SocketAddr, stop: &AtomicBool, open_now: &AtomicUsize, opened: &AtomicUsize) {
    let kinds = [
        Kind::SlowWriter,
        Kind::NonReader,
        Kind::HalfSent,
        Kind::Idle,
        Kind::Oversized,
        Kind::WithBody,
    ];
    let mut attackers: Vec<Attacker> = (0..ATTACKERS)
        .map(|i| Attacker {
            kind: kinds[i % kinds.len()],
            stream: None,
        })
        .collect();
    for a in &mut attackers {
        a.open(addr, opened);
    }
    while !stop.load(Ordering::SeqCst) {
        let mut open = 0;
        for a in &mut attackers {
            if a.step() {
                open += 1;
            } else if !stop.load(Ordering::SeqCst) {
                a.open(addr, opened);
            }
        }
        open_now.store(open, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn healthz_answers_within_1s_and_threads_stay_fixed_under_500_hostile_connections() {
    let keys = CalloutKeys::new(false);
    let nats = NatsServer::start(&keys);
    let service = ready_service(&nats, &keys, &[]);
    let pid = service.pid().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], service.port));
    let before = threads(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let open_now = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(AtomicUsize::new(0));
    let attacker = {
        let (stop, open_now, opened) = (stop.clone(), open_now.clone(), opened.clone());
        thread::spawn(move || attack(addr, &stop, &open_now, &opened))
    };
    let start = Instant::now();
    let (mut probes, mut worst, mut max_threads) = (0, Duration::ZERO, before);
    let (mut outcomes, mut failures) = (Vec::new(), Vec::new());
    while start.elapsed() < ATTACK {
        for path in ["/healthz", "/healthz", "/healthz", "/readyz"] {
            let (answer, took) = probe(addr, path);
            probes += 1;
            worst = worst.max(took);
            let seen = Seen::of(&answer, took);
            outcomes.push(seen);
            if seen != Seen::Answered {
                failures.push(format!(
                    "{path} at {:?}: {answer:?} in {took:?}",
                    start.elapsed()
                ));
            }
            max_threads = max_threads.max(threads(pid));
            thread::sleep(Duration::from_millis(50));
        }
    }
    stop.store(true, Ordering::SeqCst);
    attacker.join().unwrap();
    let (_, metrics) = service.get("/metrics").unwrap_or_default();
    let drops: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("nats_callout_http_connections_dropped_total{"))
        .collect();
    println!(
        "{probes} probes during {ATTACK:?} of {ATTACKERS} hostile connections ({} opened in all, {} open at the end): worst {worst:?}, {} failed; threads {before} before, at most {max_threads} during\n{}",
        opened.load(Ordering::SeqCst),
        open_now.load(Ordering::SeqCst),
        failures.len(),
        drops.join("\n")
    );
    // A probe whose request came a moment after its connection was accepted may, alone, be
    // closed under this flood: the service cannot tell it from an idle attacker.
    assert_kubelet_keeps_the_pod(&outcomes, &failures, usize::MAX);
    // The HTTP server's threads all exist from the start; the rest of the service does not
    // grow with HTTP clients.
    assert!(
        max_threads <= before && before > HTTP_THREADS,
        "threads: {before} before, {max_threads} during the attack"
    );
    assert!(
        drops
            .iter()
            .any(|l| l.contains("evicted") && !l.ends_with(" 0")),
        "{drops:?}"
    );
    assert!(service.get("/healthz").is_some_and(|(s, _)| s == 200));
}

/// Attack review of issue 10: clients that each send a whole `GET /healthz` with their
/// connection, never read and never close (three threads, each holding its last 300). Every
/// such connection used to take a slot as a probe, so the kubelet's probe, accepted a moment
/// before its request came, was the one closed: 4-6 of ~100 probes failed. Such requests are
/// now answered by the accept thread and closed, taking no slot.
#[test]
fn a_flood_of_probe_requests_that_are_never_read_does_not_push_out_the_kubelets_probe() {
    const ATTACKERS: usize = 3;
    const FLOOD: Duration = Duration::from_secs(10);
    let keys = CalloutKeys::new(false);
    let nats = NatsServer::start(&keys);
    let service = ready_service(&nats, &keys, &[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], service.port));
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|_| {
            let (stop, opened) = (stop.clone(), opened.clone());
            thread::spawn(move || {
                let mut held = std::collections::VecDeque::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut c) = TcpStream::connect(addr) else {
                        thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
                    held.push_back(c);
                    if held.len() > 300 {
                        held.pop_front();
                    }
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    let (mut probes, mut worst) = (0, Duration::ZERO);
    let (mut outcomes, mut failures) = (Vec::new(), Vec::new());
    while start.elapsed() < FLOOD {
        let (answer, took) = probe(addr, "/healthz");
        probes += 1;
        worst = worst.max(took);
        let seen = Seen::of(&answer, took);
        outcomes.push(seen);
        if seen != Seen::Answered {
            failures.push(format!("at {:?}: {answer:?} in {took:?}", start.elapsed()));
        }
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    for a in attackers {
        a.join().unwrap();
    }
    let flood = opened.load(Ordering::SeqCst);
    println!("{probes} probes during {FLOOD:?} of {flood} unread probe requests: worst {worst:?}, {} failed", failures.len());
    // Requests that came with their connection never take a slot, so the flood closes no
    // probe (before: 4-8 of ~100 closed unanswered). One is left to a starved machine: a probe
    // accepted before its request arrived, not read before 32 later connections that also
    // lost that race.
    assert_kubelet_keeps_the_pod(&outcomes, &failures, 1);
    assert!(
        flood > 1000,
        "the flood was too weak to show anything: {flood} connections"
    );
}

#[test]
fn http_address_chooses_the_interface_ipv6_included() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let keys = CalloutKeys::new(false);
    let nats = NatsServer::start(&keys);
    let b = ready_service(&nats, &keys, &[("HTTP_ADDRESS", "::1")]);
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, b.port));
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (answer, _) = probe(v6, path);
        assert!(
            answer
                .as_ref()
                .is_ok_and(|a| a.starts_with("HTTP/1.1 200 ")),
            "{path}: {answer:?}"
        );
    }
    assert!(
        probe(SocketAddr::from(([127, 0, 0, 1], b.port)), "/healthz")
            .0
            .is_err(),
        "listens on IPv4 too"
    );
    assert!(b.log().contains(&format!("http://[::1]:{}", b.port)));
}
