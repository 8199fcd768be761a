//! The soak: the service under a steady mixed workload for a chosen time, on a real nats-server,
//! the binary and the Kubernetes API emulator. Not part of the suite (minutes to hours): run it
//! with `scripts/soak MINUTES`, which builds in release mode, runs this test and plots the CSV.
//!
//! Workload, all at once: valid clients (random ServiceAccounts of a few hundred) at a steady
//! rate; invalid ones (tampered tokens, unknown accounts, the wrong audience); ServiceAccount
//! churn through the watch (create, annotate, delete); watch streams closed (restarts) and the
//! history compacted under them (410, relist); the cluster's signing key rotated (JWKS with
//! both, tokens from the new key, then the old key dropped); policy reloads; one nats-server
//! restart halfway. Every `SOAK_SAMPLE_SECS` (default 60) a CSV row: decisions by reason since
//! the last row, the service's decision latency percentiles (from its histogram) and the
//! clients' connect latency percentiles, RSS and threads of the service process.
#![allow(deprecated)]

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::client::bare_connect;
use support::service::proc_status;
use support::stack::{mint_token, write_atomically, StackBuilder};
use support::tokens::{jwks, tamper_payload, SigningKey, TokenBuilder};

/// ServiceAccounts the valid clients pick from.
const ACCOUNTS: usize = 300;
/// Valid and invalid connects per second.
const VALID_PER_SEC: u64 = 20;
const INVALID_PER_SEC: u64 = 5;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the client threads saw since the last sample.
#[derive(Default)]
struct ClientTally {
    valid_ok: u64,
    valid_refused: u64,
    invalid_admitted: u64,
    invalid_refused: u64,
    errors: u64,
    latencies: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

/// `(name, value)` of every sample line of a Prometheus text page.
fn samples(page: &str) -> Vec<(String, f64)> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The p-th percentile (ms) of the observations between two readings of a histogram's buckets.
fn histogram_percentile(
    before: &BTreeMap<String, f64>,
    now: &BTreeMap<String, f64>,
    p: f64,
) -> f64 {
    let mut buckets: Vec<(f64, f64)> = now
        .iter()
        .filter_map(|(k, v)| {
            let le = k
                .strip_prefix("nats_callout_decision_duration_seconds_bucket{le=\"")?
                .strip_suffix("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v - before.get(k).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return 0.0;
    }
    let want = total * p;
    buckets
        .iter()
        .find(|(_, count)| *count >= want)
        .map_or(f64::INFINITY, |(le, _)| le * 1000.0)
}

const POLICY_A: &str = "annotations:\n  publish: [\"{namespace}.>\", \"shared.>\"]\n  subscribe: [\"{namespace}.>\", \"shared.>\"]\n";
const POLICY_B: &str = "annotations:\n  publish: [\"{namespace}.>\"]\n  subscribe: [\"{namespace}.>\", \"shared.>\"]\n";

#[test]
#[ignore = "the soak runs for minutes to hours: scripts/soak MINUTES"]
fn soak() {
    let minutes = env_u64("SOAK_MINUTES", 30);
    let sample = Duration::from_secs(env_u64("SOAK_SAMPLE_SECS", 60));
    let out = PathBuf::from(std::env::var("SOAK_OUT").unwrap_or_else(|_| "soak-out".into()));
    fs::create_dir_all(&out).unwrap();
    let duration = Duration::from_secs(minutes * 60);

    let mut builder = StackBuilder::new()
        .policy(POLICY_A)
        .env("LOG_LEVEL", "info")
        .env("JWKS_MIN_REFETCH_INTERVAL", "10s");
    for i in 0..ACCOUNTS {
        builder = builder.account(&format!("team-{}", i % 20), &format!("app-{i}"), &[]);
    }
    let mut s = builder.start();
    let addr = s.url().trim_start_matches("nats://").to_string();
    let pid = s.service.pid().expect("the service runs");
    let signing = Arc::new(Mutex::new(s.key.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(ClientTally::default()));
    let churned = Arc::new(AtomicU64::new(0));
    let api = &s.api;
    let policy_file = s.policy_file.clone().expect("a policy file");
    let summary = thread::scope(|scope| {
        // Valid clients at a steady rate.
        {
            let (stop, tally, signing, addr) =
                (stop.clone(), tally.clone(), signing.clone(), addr.clone());
            scope.spawn(move || {
                let mut i = 0usize;
                let tick = Duration::from_micros(1_000_000 / VALID_PER_SEC);
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let (ns, name) = (format!("team-{}", i % 20), format!("app-{}", i % ACCOUNTS));
                    let key = signing.lock().unwrap().clone();
                    let token = mint_token(api, &key, &ns, &name);
                    let result = bare_connect(&addr, &token).map(|refusal| refusal.is_none());
                    let mut t = tally.lock().unwrap();
                    match result {
                        Ok(true) => t.valid_ok += 1,
                        Ok(false) => t.valid_refused += 1,
                        Err(_) => t.errors += 1,
                    }
                    t.latencies.push(started.elapsed());
                    drop(t);
                    i = i.wrapping_add(7);
                    thread::sleep(tick.saturating_sub(started.elapsed()));
                }
            });
        }
        // Invalid clients: tampered, unknown account, wrong audience.
        {
            let (stop, tally, signing, addr) =
                (stop.clone(), tally.clone(), signing.clone(), addr.clone());
            scope.spawn(move || {
                let mut i = 0u64;
                let tick = Duration::from_micros(1_000_000 / INVALID_PER_SEC);
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let key = signing.lock().unwrap().clone();
                    let token = match i % 3 {
                        0 => tamper_payload(&mint_token(api, &key, "team-1", "app-1")),
                        1 => TokenBuilder::for_sa("ghost", "nobody", "no-uid").sign(&key),
                        _ => TokenBuilder::for_sa("team-2", "app-2", "uid")
                            .audience("someone-else")
                            .sign(&key),
                    };
                    let result = bare_connect(&addr, &token).map(|refusal| refusal.is_none());
                    let mut t = tally.lock().unwrap();
                    match result {
                        Ok(true) => t.invalid_admitted += 1,
                        Ok(false) => t.invalid_refused += 1,
                        Err(_) => t.errors += 1,
                    }
                    drop(t);
                    i += 1;
                    thread::sleep(tick.saturating_sub(started.elapsed()));
                }
            });
        }
        // ServiceAccount churn through the watch.
        {
            let (stop, churned) = (stop.clone(), churned.clone());
            scope.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    // Each name is created, annotated, then deleted; fifty names in turn.
                    let name = format!("churn-{}", (i / 3) % 50);
                    match i % 3 {
                        0 => {
                            api.create_service_account("churn", &name, &[]);
                        }
                        1 => {
                            api.update_annotations(
                                "churn",
                                &name,
                                &[("nats.io/allowed-pub-subjects", &format!("shared.{i}"))],
                            );
                        }
                        _ => {
                            api.delete_service_account("churn", &name);
                        }
                    }
                    churned.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                    thread::sleep(Duration::from_millis(500));
                }
            });
        }

        let mut csv = fs::File::create(out.join("soak.csv")).unwrap();
        writeln!(
            csv,
            "minute,valid_ok,valid_refused,invalid_refused,invalid_admitted,client_errors,\
         client_p50_ms,client_p99_ms,decision_p50_ms,decision_p99_ms,rss_kib,threads,\
         churn_ops,events,decisions"
        )
        .unwrap();
        let started = Instant::now();
        let mut last_metrics: BTreeMap<String, f64> = BTreeMap::new();
        let mut events: Vec<String> = Vec::new();
        let mut next_sample = sample;
        let (mut watch_restarts, mut compactions, mut rotations, mut reloads) = (0, 0, 0, 0);
        let mut restarted = false;
        // The rotation under way: when it began, the new key, whether tokens use it yet.
        let mut rotation: Option<(Instant, SigningKey, bool)> = None;
        let mut minute_events: Vec<String> = Vec::new();
        let mut rows = 0;
        while started.elapsed() < duration {
            thread::sleep(Duration::from_secs(1));
            let t = started.elapsed().as_secs();
            // Faults on a schedule (seconds since start).
            if t % 120 == 30 {
                api.close_watch_streams();
                watch_restarts += 1;
                minute_events.push("watch-restart".into());
            }
            if t % 300 == 90 {
                api.compact_history();
                api.close_watch_streams();
                compactions += 1;
                minute_events.push("410".into());
            }
            if t % 180 == 150 {
                reloads += 1;
                write_atomically(
                    &policy_file,
                    if reloads % 2 == 1 { POLICY_B } else { POLICY_A },
                );
                minute_events.push("policy-reload".into());
            }
            if t % 600 == 200 && rotation.is_none() {
                let old = signing.lock().unwrap().clone();
                let new = SigningKey::rs256_fresh();
                api.set_jwks(jwks(&[&old, &new]));
                rotation = Some((Instant::now(), new, false));
                minute_events.push("jwks-both".into());
            }
            if let Some((at, new, switched)) = &mut rotation {
                if at.elapsed() > Duration::from_secs(30) && !*switched {
                    *signing.lock().unwrap() = new.clone();
                    *switched = true;
                    minute_events.push("tokens-new-key".into());
                } else if at.elapsed() > Duration::from_secs(90) {
                    api.set_jwks(jwks(&[new]));
                    rotations += 1;
                    minute_events.push("jwks-old-dropped".into());
                    rotation = None;
                }
            }
            if !restarted && t >= duration.as_secs() / 2 {
                s.nats.restart();
                restarted = true;
                minute_events.push("nats-restart".into());
            }
            if started.elapsed() >= next_sample {
                next_sample += sample;
                let page = s
                    .service
                    .get("/metrics")
                    .map(|(_, b)| b)
                    .unwrap_or_default();
                let now: BTreeMap<String, f64> = samples(&page).into_iter().collect();
                let mut decisions: Vec<String> = now
                    .iter()
                    .filter(|(k, _)| k.starts_with("nats_callout_decisions_total{"))
                    .map(|(k, v)| {
                        let delta = v - last_metrics.get(k).copied().unwrap_or(0.0);
                        // `…{result="deny",reason="token_bad_signature"}` → `deny/token_bad_signature`.
                        let label: Vec<&str> = k.split('"').skip(1).step_by(2).collect();
                        format!("{}={delta}", label.join("/"))
                    })
                    .collect();
                decisions.sort();
                let d50 = histogram_percentile(&last_metrics, &now, 0.5);
                let d99 = histogram_percentile(&last_metrics, &now, 0.99);
                let mut t = std::mem::take(&mut *tally.lock().unwrap());
                t.latencies.sort();
                rows += 1;
                writeln!(
                    csv,
                    "{:.1},{},{},{},{},{},{:.2},{:.2},{:.3},{:.3},{},{},{},{},{}",
                    started.elapsed().as_secs_f64() / 60.0,
                    t.valid_ok,
                    t.valid_refused,
                    t.invalid_refused,
                    t.invalid_admitted,
                    t.errors,
                    percentile(&t.latencies, 0.5),
                    percentile(&t.latencies, 0.99),
                    d50,
                    d99,
                    proc_status(pid, "VmRSS:"),
                    proc_status(pid, "Threads:"),
                    churned.load(Ordering::SeqCst),
                    minute_events.join(" "),
                    decisions.join(" ")
                )
                .unwrap();
                csv.flush().unwrap();
                assert_eq!(t.invalid_admitted, 0, "an invalid client was admitted");
                events.append(&mut minute_events);
                last_metrics = now;
            }
        }
        stop.store(true, Ordering::SeqCst);
        (
            rows,
            watch_restarts,
            compactions,
            rotations,
            reloads,
            restarted,
        )
    });
    let (rows, watch_restarts, compactions, rotations, reloads, restarted) = summary;
    let log = s.service.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    fs::write(out.join("service-warnings.log"), warnings.join("\n")).unwrap();
    eprintln!(
        "soak: {minutes} min, {rows} samples, {watch_restarts} watch restarts, {compactions} \
         compactions (410), {rotations} key rotations, {reloads} policy reloads, nats restarted: \
         {restarted}; {} warning/error lines in {}",
        warnings.len(),
        out.join("service-warnings.log").display()
    );
    assert!(s.service.pid().is_some(), "the service is still running");
}
