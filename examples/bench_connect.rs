//! Measures client connects through the auth callout end to end, speaking the NATS client protocol
//! directly so no client library timing is measured: TCP connect, INFO, CONNECT with the token,
//! PING, and the server's PONG (allowed) or `-ERR 'Authorization Violation'` (denied). Each
//! connect is an authorization request to the service, its decision and its answer.
//!
//! ```text
//! cargo run --release --example bench_connect -- HOST:PORT TOKEN_FILE CONNECTS CONCURRENCY
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One connect; `Ok(true)` when the server answered PONG.
fn connect_once(addr: &str, connect_line: &str) -> std::io::Result<bool> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?; // INFO
    (&stream).write_all(connect_line.as_bytes())?;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(false);
        }
        if line.starts_with("PONG") {
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
        eprintln!("usage: bench_connect HOST:PORT TOKEN_FILE CONNECTS CONCURRENCY");
        std::process::exit(2);
    }
    let addr = args[0].trim_start_matches("nats://").to_string();
    let token = std::fs::read_to_string(&args[1])
        .expect("token file")
        .trim()
        .to_string();
    let total: usize = args[2].parse().expect("CONNECTS");
    let concurrency: usize = args[3].parse::<usize>().expect("CONCURRENCY").max(1);
    let connect_line = format!(
        "CONNECT {}\r\nPING\r\n",
        serde_json::json!({"auth_token": token, "verbose": false, "pedantic": false,
                           "lang": "bench", "version": "0", "protocol": 1, "headers": true})
    );
    let per_thread = total / concurrency;
    let started = Instant::now();
    let handles: Vec<_> = (0..concurrency)
        .map(|_| {
            let (addr, line) = (addr.clone(), connect_line.clone());
            std::thread::spawn(move || {
                let mut times = Vec::with_capacity(per_thread);
                let mut refused = 0usize;
                for _ in 0..per_thread {
                    let t = Instant::now();
                    match connect_once(&addr, &line) {
                        Ok(true) => times.push(t.elapsed()),
                        _ => refused += 1,
                    }
                }
                (times, refused)
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut refused = 0;
    for h in handles {
        let (t, r) = h.join().expect("bench thread");
        times.extend(t);
        refused += r;
    }
    let elapsed = started.elapsed();
    times.sort();
    if times.is_empty() {
        eprintln!("no connect was allowed ({refused} refused)");
        std::process::exit(1);
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
