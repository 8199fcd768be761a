//! A small NATS client for the demo: connects with a service-account token and reports, for each
//! subject given, whether a publish and a subscribe are allowed.
//!
//! ```text
//! cargo run --example probe -- nats://127.0.0.1:4222 TOKEN_FILE team-a.greetings team-b.secrets
//! ```
#![allow(deprecated)]

use std::time::Duration;

use crossbeam_channel::unbounded;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: probe NATS_URL TOKEN_FILE [SUBJECT ...]");
        std::process::exit(2);
    }
    let token = match std::fs::read_to_string(&args[1]) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            eprintln!("cannot read {}: {e}", args[1]);
            std::process::exit(2);
        }
    };
    let (etx, errors) = unbounded::<String>();
    let nc = match nats::Options::with_token(&token)
        .max_reconnects(1)
        .error_callback(move |e| {
            let _ = etx.send(e.to_string());
        })
        .connect(args[0].as_str())
    {
        Ok(nc) => nc,
        Err(e) => {
            println!("  connect: REFUSED ({e})");
            std::process::exit(1);
        }
    };
    println!("  connect: ok");
    for subject in &args[2..] {
        let verdict = |ok: bool| {
            let _ = nc.flush();
            let _ = nc.rtt();
            let violated = errors
                .try_iter()
                .chain(errors.recv_timeout(Duration::from_millis(200)).ok())
                .any(|e| e.contains("Permissions Violation") && e.contains(subject.as_str()));
            if ok && !violated {
                "allowed"
            } else {
                "DENIED"
            }
        };
        let sub = nc.subscribe(subject);
        let sub_verdict = verdict(sub.is_ok());
        let pub_ok = nc.publish(subject, b"hello").is_ok();
        let pub_verdict = verdict(pub_ok);
        let delivered = match (&sub, sub_verdict, pub_verdict) {
            (Ok(s), "allowed", "allowed") => s.next_timeout(Duration::from_secs(1)).is_ok(),
            _ => false,
        };
        println!(
            "  {subject:<28} publish: {pub_verdict:<8} subscribe: {sub_verdict:<8}{}",
            if delivered {
                " (message delivered)"
            } else {
                ""
            }
        );
    }
    nc.close();
}
