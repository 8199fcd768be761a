//! Measures client connects through the auth callout end to end, speaking the NATS client protocol
//! directly so no client library timing is measured: TCP connect, INFO, CONNECT with the token,
//! PING, and the server's PONG (allowed) or `-ERR 'Authorization Violation'` (denied). Each
//! connect is an authorization request to the service, its decision and its answer.
//!
//! ```text
//! cargo run --release --example bench_connect -- HOST:PORT TOKEN_FILE CONNECTS CONCURRENCY [TRACE_FILE]
//! ```
//!
//! TOKEN_FILE holds one token per line; connect `k` presents token `k mod lines`, so one line is
//! the same client reconnecting and as many lines as connects is a crowd of distinct pods.
//! TRACE_FILE, when given, receives one line per connect with wall-clock microseconds:
//! `start connected info_read connect_written pong_read`, which `scripts/bench` pairs with the
//! service's own `callout::timing` lines.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One connect; `Ok(true)` when the server answered PONG. Fills `stamps` (see the module doc).
fn connect_once(addr: &str, connect_line: &str, stamps: &mut [u64; 5]) -> std::io::Result<bool> {
    stamps[0] = unix_us();
    let stream = TcpStream::connect(addr)?;
    stamps[1] = unix_us();
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?; // INFO
    stamps[2] = unix_us();
    (&stream).write_all(connect_line.as_bytes())?;
    stamps[3] = unix_us();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(false);
        }
        if line.starts_with("PONG") {
            stamps[4] = unix_us();
            return Ok(true);
        }
        if line.starts_with("-ERR") {
            return Ok(false);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: bench_connect HOST:PORT TOKEN_FILE CONNECTS CONCURRENCY [TRACE_FILE]");
        std::process::exit(2);
    }
    let addr = args[0].trim_start_matches("nats://").to_string();
    let lines: Arc<Vec<String>> = Arc::new(
        std::fs::read_to_string(&args[1])
            .expect("token file")
            .lines()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|token| {
                format!(
                    "CONNECT {}\r\nPING\r\n",
                    serde_json::json!({"auth_token": token, "verbose": false, "pedantic": false,
                                       "lang": "bench", "version": "0", "protocol": 1, "headers": true})
                )
            })
            .collect(),
    );
    assert!(!lines.is_empty(), "the token file holds no token");
    let total: usize = args[2].parse().expect("CONNECTS");
    let concurrency: usize = args[3].parse::<usize>().expect("CONCURRENCY").max(1);
    let trace = args.get(4).cloned();
    let per_thread = total / concurrency;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..concurrency)
        .map(|_| {
            let (addr, lines, next) = (addr.clone(), lines.clone(), next.clone());
            std::thread::spawn(move || {
                let mut times = Vec::with_capacity(per_thread);
                let mut stamps = Vec::with_capacity(per_thread);
                let mut refused = 0usize;
                for _ in 0..per_thread {
                    let line = &lines[next.fetch_add(1, Ordering::Relaxed) % lines.len()];
                    let t = Instant::now();
                    let mut s = [0u64; 5];
                    match connect_once(&addr, line, &mut s) {
                        Ok(true) => {
                            times.push(t.elapsed());
                            stamps.push(s);
                        }
                        _ => refused += 1,
                    }
                }
                (times, stamps, refused)
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut stamps = Vec::new();
    let mut refused = 0;
    for h in handles {
        let (t, s, r) = h.join().expect("bench thread");
        times.extend(t);
        stamps.extend(s);
        refused += r;
    }
    let elapsed = started.elapsed();
    times.sort();
    if times.is_empty() {
        eprintln!("no connect was allowed ({refused} refused)");
        std::process::exit(1);
    }
    if let Some(path) = trace {
        stamps.sort();
        let text: String = stamps
            .iter()
            .map(|s| format!("{} {} {} {} {}\n", s[0], s[1], s[2], s[3], s[4]))
            .collect();
        std::fs::write(path, text).expect("write the trace file");
    }
    println!(
        "  {:>6} connects, concurrency {:>2}: p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms  {:>6.0} connects/s  refused {}",
        times.len(),
        concurrency,
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        times.len() as f64 / elapsed.as_secs_f64(),
        refused
    );
}
