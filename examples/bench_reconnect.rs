//! A reconnect storm: N clients connect (each with its own token, one thread each) and stay
//! connected. `scripts/bench` then restarts nats-server and, once the service has reconnected to
//! it, writes `go` on standard input: every client that lost its connection reconnects at once,
//! and this measures how long until all are back. (Client libraries wait about 2 s before
//! retrying the same server; by then the service is back, and a client that came earlier would
//! only measure nats-server's authorization timeout.) A refused attempt is retried after
//! 100–200 ms.
//!
//! ```text
//! cargo run --release --example bench_reconnect -- HOST:PORT TOKEN_FILE CLIENTS
//! ```
//!
//! Prints `ready` once every client is connected, then, after the storm, one summary line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier, RwLock};
use std::time::{Duration, Instant};

/// Connects once; the stream when the server answered PONG.
fn connect(addr: &str, line: &str) -> Option<TcpStream> {
    let stream = TcpStream::connect(addr).ok()?;
    stream.set_nodelay(true).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut text = String::new();
    reader.read_line(&mut text).ok()?; // INFO
    (&stream).write_all(line.as_bytes()).ok()?;
    loop {
        text.clear();
        if reader.read_line(&mut text).ok()? == 0 {
            return None;
        }
        if text.starts_with("PONG") {
            return Some(stream);
        }
        if text.starts_with("-ERR") {
            return None;
        }
    }
}

/// Connects until it works; returns the stream and the attempts that failed.
fn connect_until(addr: &str, line: &str) -> (TcpStream, u32) {
    let mut failed = 0;
    loop {
        if let Some(s) = connect(addr, line) {
            return (s, failed);
        }
        failed += 1;
        std::thread::sleep(Duration::from_millis(100 + fastrand::u64(0..100)));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: bench_reconnect HOST:PORT TOKEN_FILE CLIENTS");
        std::process::exit(2);
    }
    let addr = args[0].trim_start_matches("nats://").to_string();
    let tokens: Vec<String> = std::fs::read_to_string(&args[1])
        .expect("token file")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|t| t.trim().to_string())
        .collect();
    let clients: usize = args[2].parse().expect("CLIENTS");
    assert!(!tokens.is_empty(), "no token");
    let all_connected = Arc::new(Barrier::new(clients + 1));
    // Held for writing until `go`: lost clients wait on it before reconnecting.
    let gate = Arc::new(RwLock::new(()));
    let held = gate.write().expect("the gate");
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let addr = addr.clone();
            let line = format!(
                "CONNECT {}\r\nPING\r\n",
                serde_json::json!({"auth_token": tokens[i % tokens.len()], "verbose": false,
                                   "pedantic": false, "lang": "bench", "version": "0",
                                   "protocol": 1, "headers": true})
            );
            let all_connected = all_connected.clone();
            let gate = gate.clone();
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let (mut stream, _) = connect_until(&addr, &line);
                    all_connected.wait();
                    // Connected: answer the server's PINGs until it goes away.
                    stream.set_read_timeout(None).expect("blocking reads");
                    let mut buf = [0u8; 512];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if buf[..n].windows(4).any(|w| w == b"PING") {
                                    let _ = stream.write_all(b"PONG\r\n");
                                }
                            }
                        }
                    }
                    drop(gate.read().expect("the gate"));
                    let (_back, failed) = connect_until(&addr, &line);
                    (Instant::now(), failed)
                })
                .expect("spawn a client")
        })
        .collect();
    all_connected.wait();
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).expect("stdin");
    let released = Instant::now();
    drop(held);
    let results: Vec<(Instant, u32)> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    let mut back: Vec<Duration> = results.iter().map(|r| r.0 - released).collect();
    back.sort();
    let failed: u64 = results.iter().map(|r| u64::from(r.1)).sum();
    println!(
        "{clients} clients all back in {:.2} s (half in {:.2} s, {:.0} connects/s); {failed} attempts refused and retried",
        back[back.len() - 1].as_secs_f64(),
        back[back.len() / 2].as_secs_f64(),
        clients as f64 / back[back.len() - 1].as_secs_f64(),
    );
}
