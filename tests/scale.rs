//! Memory and time to ready at cluster scale (issue 11): the service binary in cluster mode
//! against the Kubernetes API emulator seeded with realistic ServiceAccounts (two `nats.io/`
//! annotations, kubectl's ~700-byte last-applied-configuration, three labels, a managedFields
//! entry), 100 to a namespace.
//!
//! A measurement, not a check: it prints figures and asserts only that the cache holds every
//! account. Run it alone, in release:
//!
//! ```text
//! cargo test --release --test scale -- --ignored --nocapture
//! ```
//!
//! `SCALE_SIZES` (comma-separated, default `100000,1000000`) chooses the sizes;
//! `SCALE_SERVICE_BIN` measures another build of the service (an older one, or the musl
//! binary) instead of this one; `SCALE_ENV` adds `NAME=value` pairs (comma-separated) to the
//! service's environment. The idle RSS is that of the same service with no ServiceAccount.
//! Once ready, a relist of everything is forced (history compacted, watch cut: 410) and its
//! time and the memory after it (VmHWM: its peak) are printed too.

mod support;

use std::time::{Duration, Instant};

use support::kube::{RequestKind, DEFAULT_ISSUER};
use support::nats::{free_port, server_config, CalloutKeys, NatsServer, CLIENT_ACCOUNT};
use support::service::proc_status;
use support::service::{Service, ServiceBuilder};
use support::stack::start_cluster;
use support::tokens::SigningKey;

/// Accounts per namespace.
const PER_NAMESPACE: usize = 100;
/// Longest wait for readiness.
const READY_WITHIN: Duration = Duration::from_secs(600);

/// What one run measured.
struct Measurement {
    accounts: usize,
    ready: Duration,
    rss_kb: u64,
    hwm_kb: u64,
    /// How long a relist (after a 410) took, and VmRSS / VmHWM after it.
    relist: Duration,
    relist_rss_kb: u64,
    relist_hwm_kb: u64,
}

/// Starts a cluster of `accounts` seeded ServiceAccounts, a nats-server and the service, and
/// measures time to ready and memory once the cache holds them all.
fn measure(accounts: usize) -> Measurement {
    let key = SigningKey::rs256();
    let api = start_cluster(&key, &[]);
    let seeding = Instant::now();
    api.seed_realistic_service_accounts(accounts, PER_NAMESPACE);
    eprintln!(
        "seeded {accounts} in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    let (mut builder, _nats) = service_on(&api);
    if let Ok(extra) = std::env::var("SCALE_ENV") {
        for pair in extra.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .expect("SCALE_ENV holds NAME=value pairs");
            builder = builder.env(k, v);
        }
    }
    if let Ok(bin) = std::env::var("SCALE_SERVICE_BIN") {
        // The wrapper execs the other binary; the appended path of this one is ignored.
        builder = builder.wrapper(&["sh", "-c", &format!("exec '{bin}'"), "sh"]);
    }
    let started = Instant::now();
    let service = builder.spawn();
    let ready = wait_ready(&service);
    let pid = service.pid().expect("the service runs");
    service.wait_for("the cache holds every account", READY_WITHIN, || {
        service.metric("nats_callout_serviceaccounts") as usize == accounts
    });
    // Let the list's transient buffers go back before reading the resident size.
    std::thread::sleep(Duration::from_secs(2));
    let (rss_kb, hwm_kb) = (proc_status(pid, "VmRSS:"), proc_status(pid, "VmHWM:"));
    // A relist of everything: a write the watch does not see, the history compacted past it
    // and the stream cut, so the resumed watch gets 410.
    let relists = service.metric("nats_callout_cache_relists_total");
    let relisting = Instant::now();
    api.set_watch_hang(true);
    api.create_service_account("scale-relist", "marker", &[]);
    api.delete_service_account("scale-relist", "marker");
    api.compact_history();
    api.close_watch_streams();
    api.set_watch_hang(false);
    service.wait_for("a relist", READY_WITHIN, || {
        service.metric("nats_callout_cache_relists_total") > relists
    });
    let relist = relisting.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let m = Measurement {
        accounts,
        ready: ready.duration_since(started),
        rss_kb,
        hwm_kb,
        relist,
        relist_rss_kb: proc_status(pid, "VmRSS:"),
        relist_hwm_kb: proc_status(pid, "VmHWM:"),
    };
    assert_eq!(
        service.metric("nats_callout_serviceaccounts") as usize,
        accounts,
        "the cache holds every account"
    );
    m
}

/// A nats-server of its own and a builder of the service on it and on `api`.
fn service_on(api: &support::kube::KubeEmulator) -> (ServiceBuilder, NatsServer) {
    let keys = CalloutKeys::new(false);
    let port = free_port();
    let nats = NatsServer::start_with_config(port, server_config(port, &keys, 2));
    let builder = ServiceBuilder::new(&keys, &nats.service_url(), CLIENT_ACCOUNT)
        .env("JWT_ISSUER", DEFAULT_ISSUER)
        .kube_api(&api.url(), &api.token())
        .env("LOG_LEVEL", "info");
    (builder, nats)
}

/// Polls `/readyz` until it answers 200; when it did.
fn wait_ready(service: &Service) -> Instant {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Some((200, _)) = service.get("/readyz") {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "service not ready; log:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[ignore = "a measurement of minutes and GiBs: cargo test --release --test scale -- --ignored --nocapture"]
fn memory_and_time_to_ready_at_cluster_scale() {
    let sizes: Vec<usize> = std::env::var("SCALE_SIZES")
        .unwrap_or_else(|_| "100000,1000000".into())
        .split(',')
        .map(|n| n.trim().parse().expect("SCALE_SIZES holds numbers"))
        .collect();
    let binary = std::env::var("SCALE_SERVICE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_nats-k8s-oidc-callout").into());
    let idle = measure(0);
    println!("service: {binary}");
    println!(
        "idle: VmRSS {:.1} MiB, VmHWM {:.1} MiB, ready in {:.2} s",
        idle.rss_kb as f64 / 1024.0,
        idle.hwm_kb as f64 / 1024.0,
        idle.ready.as_secs_f64()
    );
    println!(
        "{:>10} {:>10} {:>12} {:>12} {:>15} {:>11} {:>13} {:>13}",
        "accounts",
        "ready (s)",
        "VmRSS (MiB)",
        "VmHWM (MiB)",
        "(RSS-idle)/N B",
        "relist (s)",
        "after: RSS",
        "after: HWM"
    );
    for n in sizes {
        let m = measure(n);
        let per = (m.rss_kb.saturating_sub(idle.rss_kb) * 1024) as f64 / m.accounts.max(1) as f64;
        println!(
            "{:>10} {:>10.2} {:>12.1} {:>12.1} {:>15.0} {:>11.2} {:>13.1} {:>13.1}",
            m.accounts,
            m.ready.as_secs_f64(),
            m.rss_kb as f64 / 1024.0,
            m.hwm_kb as f64 / 1024.0,
            per,
            m.relist.as_secs_f64(),
            m.relist_rss_kb as f64 / 1024.0,
            m.relist_hwm_kb as f64 / 1024.0,
        );
    }
}

/// Resident memory of a service started on `api` with `env`, once it holds `accounts`
/// ServiceAccounts and (with the pod binding check) `pods` pods: (VmRSS KiB, time to ready).
fn service_rss(
    api: &support::kube::KubeEmulator,
    env: &[(&str, &str)],
    accounts: usize,
    pods: usize,
) -> (u64, Duration, Service, NatsServer) {
    let (mut builder, nats) = service_on(api);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    let started = Instant::now();
    let service = builder.spawn();
    let ready = wait_ready(&service).duration_since(started);
    service.wait_for("every account and pod held", READY_WITHIN, || {
        service.metric("nats_callout_serviceaccounts") as usize == accounts
            && service.metric("nats_callout_pods") as usize == pods
    });
    std::thread::sleep(Duration::from_secs(2));
    let pid = service.pid().expect("the service runs");
    (proc_status(pid, "VmRSS:"), ready, service, nats)
}

#[test]
#[ignore = "a measurement: cargo test --release --test scale pod_binding -- --ignored --nocapture"]
fn pod_binding_memory_and_api_cost() {
    // `SCALE_PODS` pods (default 100 000), as many ServiceAccounts, 100 to a namespace.
    let n: usize = std::env::var("SCALE_PODS")
        .map(|v| v.trim().parse().expect("SCALE_PODS is a number"))
        .unwrap_or(100_000);
    let key = SigningKey::rs256();
    let api = start_cluster(&key, &[]);
    api.seed_realistic_service_accounts(n, PER_NAMESPACE);
    api.seed_realistic_pods(n, PER_NAMESPACE);
    let sample = api.pod("team-00000", "pod-0000000").expect("a seeded pod");
    let full = serde_json::to_vec(&sample).expect("json").len();
    let metadata = serde_json::to_vec(&sample["metadata"]).expect("json").len();

    let (off_kb, off_ready, off, _off_nats) = service_rss(&api, &[], n, 0);
    drop(off);
    let (lists, bytes) = (
        api.requests_counted(RequestKind::PodList),
        api.bytes_served(RequestKind::PodList),
    );
    let (on_kb, on_ready, on, _on_nats) = service_rss(&api, &[("POD_BINDING", "watch")], n, n);
    let list_requests = api.requests_counted(RequestKind::PodList) - lists;
    let list_bytes = api.bytes_served(RequestKind::PodList) - bytes;

    // Watch traffic: one MODIFIED event per pod whose deletion begins.
    let events = 1000.min(n);
    let watched = api.bytes_served(RequestKind::PodWatch);
    for i in 0..events {
        api.terminate_pod(
            &format!("team-{:05}", i / PER_NAMESPACE),
            &format!("pod-{i:07}"),
            30,
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let per_event = (api.bytes_served(RequestKind::PodWatch) - watched) as f64 / events as f64;
    let pid = on.pid().expect("running");

    println!("pods: {n} (and as many ServiceAccounts), 100 to a namespace");
    println!(
        "one pod: {full} B of JSON, of which {metadata} B metadata (what a metadata-only watch would carry)"
    );
    println!(
        "POD_BINDING=off:   VmRSS {:.1} MiB, ready in {:.2} s",
        off_kb as f64 / 1024.0,
        off_ready.as_secs_f64()
    );
    println!(
        "POD_BINDING=watch: VmRSS {:.1} MiB, ready in {:.2} s; VmHWM {:.1} MiB",
        on_kb as f64 / 1024.0,
        on_ready.as_secs_f64(),
        proc_status(pid, "VmHWM:") as f64 / 1024.0
    );
    println!(
        "memory per pod: {:.0} B ((RSS on - RSS off) / pods)",
        (on_kb.saturating_sub(off_kb) * 1024) as f64 / n as f64
    );
    println!(
        "API cost of the list: {list_requests} requests, {:.1} MiB, {:.0} B per pod",
        list_bytes as f64 / (1024.0 * 1024.0),
        list_bytes as f64 / n as f64
    );
    println!("API cost of the watch: {per_event:.0} B per pod event ({events} events)");
    assert_eq!(on.metric("nats_callout_pods") as usize, n);
}
