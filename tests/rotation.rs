//! Secrets rotated in place: the kubelet swaps a mounted Secret (`..data`) and the service
//! uses the new files without a restart and without refusing a client meanwhile.
//!
//! Covered: the service's own NATS login (an nkey seed) rotated, then the old key removed from
//! nats-server, with clients connecting all along; a replaced seed that nats-server does not
//! accept (the current connection stays, the cause is logged), also when the connect with it
//! is slow (a server that hangs): the reader never waits for it.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nkeys::KeyPair;

use support::client::connect_token;
use support::nats::{AUTH_PASS, AUTH_USER};
use support::stack::{Stack, StackBuilder};
use support::volume::SecretVolume;

const WAIT: Duration = Duration::from_secs(20);

/// A stack whose service logs in with the nkey seed in a kubelet-style volume; nats-server
/// accepts every key in `accepted` (public keys) as the callout's user.
fn nkey_stack(
    dir: &std::path::Path,
    first: &KeyPair,
    accepted: &[String],
) -> (Stack, SecretVolume) {
    let volume = SecretVolume::create(
        &dir.join("nkey"),
        &[("nkey.seed", &first.seed().expect("seed"))],
    );
    let accepted = accepted.to_vec();
    let stack = StackBuilder::new()
        .nats_config(move |config| with_callout_nkeys(&config, &accepted, &accepted))
        .service_nats_url(|port| format!("nats://127.0.0.1:{port}"))
        .env(
            "NATS_NKEY_SEED_FILE",
            volume.path("nkey.seed").to_str().expect("utf8"),
        )
        .start();
    (stack, volume)
}

/// The server configuration with the callout's users being the nkeys `users` (instead of the
/// password), all of `auth_users` skipping the callout.
fn with_callout_nkeys(config: &str, users: &[String], auth_users: &[String]) -> String {
    let users: Vec<String> = users
        .iter()
        .map(|k| format!("{{ nkey: \"{k}\" }}"))
        .collect();
    let auth_users: Vec<String> = auth_users.iter().map(|k| format!("\"{k}\"")).collect();
    let user_line = format!("{{ user: \"{AUTH_USER}\", password: \"{AUTH_PASS}\" }}");
    let current = if config.contains(&user_line) {
        user_line
    } else {
        // Already rewritten: the users between "users: [ " and " ] }" of the AUTH account.
        let start = config.find("{ nkey:").expect("nkey users");
        let end = config[start..].find(" ] }").expect("end of users") + start;
        config[start..end].to_string()
    };
    let auth_start = config.find("auth_users: [ ").expect("auth_users") + "auth_users: [ ".len();
    let auth_end = config[auth_start..]
        .find(", \"sys\"")
        .expect("sys in auth_users")
        + auth_start;
    let mut out = config.to_string();
    out.replace_range(auth_start..auth_end, &auth_users.join(", "));
    out.replace(&current, &users.join(", "))
}

/// Connects clients with a valid token back to back until `stop`; counts the refused ones.
fn clients_all_along(
    s: &Stack,
    stop: Arc<AtomicBool>,
) -> (
    std::thread::JoinHandle<()>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
) {
    let url = s.url();
    let token = s.token("team-a", "app");
    let refused = Arc::new(AtomicUsize::new(0));
    let allowed = Arc::new(AtomicUsize::new(0));
    let (r, a) = (refused.clone(), allowed.clone());
    let t = std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match connect_token(&url, &token) {
                Ok(_) => a.fetch_add(1, Ordering::SeqCst),
                Err(_) => r.fetch_add(1, Ordering::SeqCst),
            };
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (t, refused, allowed)
}

#[test]
fn a_rotated_nkey_seed_is_used_without_a_restart_or_a_refused_client() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (KeyPair::new_user(), KeyPair::new_user());
    let both = [old.public_key(), new.public_key()];
    let (s, mut volume) = nkey_stack(dir.path(), &old, &both);
    let stop = Arc::new(AtomicBool::new(false));
    let (clients, refused, allowed) = clients_all_along(&s, stop.clone());

    // The kubelet swaps the Secret: the service connects with the new seed and leaves the old
    // connection only once the new one is in the queue group.
    volume.update(&[("nkey.seed", &new.seed().unwrap())]);
    s.service
        .wait_for("the connection made with the new seed", WAIT, || {
            s.service
                .log()
                .contains("with the changed files; the previous connection is closed")
        });
    // The old key is withdrawn from nats-server: a connection still using it would be closed.
    // (Its callout settings cannot change on a reload: auth_users keeps both.)
    s.nats.reload(&with_callout_nkeys(
        &s.nats.config_text(),
        &[new.public_key()],
        &both,
    ));
    // Clients go on until a few more were answered after the reload (a count, not a time: a
    // loaded machine connects fewer per second).
    let after_reload = allowed.load(Ordering::SeqCst) + refused.load(Ordering::SeqCst);
    s.service.wait_for("clients after the reload", WAIT, || {
        allowed.load(Ordering::SeqCst) + refused.load(Ordering::SeqCst) >= (after_reload + 3).max(5)
    });
    stop.store(true, Ordering::SeqCst);
    clients.join().unwrap();

    assert_eq!(refused.load(Ordering::SeqCst), 0, "{}", s.service.log());
    let allowed = allowed.load(Ordering::SeqCst);
    assert!(allowed >= 5, "only {allowed} clients tried across the swap");
    assert_eq!(
        s.service.metric("nats_callout_nats_disconnects_total"),
        0.0,
        "{}",
        s.service.log()
    );
    connect_token(&s.url(), &s.token("team-a", "app")).expect("still answered after the reload");
    let reloads = |result: &str| {
        s.service.metric(&format!(
            "nats_callout_nats_file_reloads_total{{result=\"{result}\"}}"
        ))
    };
    assert_eq!((reloads("success"), reloads("failure")), (1.0, 0.0));
    let log = s.service.log();
    assert!(!log.contains(&new.seed().unwrap()) && !log.contains(&old.seed().unwrap()));
}

#[test]
fn a_rotated_seed_the_server_refuses_leaves_the_current_connection_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (old, stranger) = (KeyPair::new_user(), KeyPair::new_user());
    let (s, mut volume) = nkey_stack(dir.path(), &old, &[old.public_key()]);
    volume.update(&[("nkey.seed", &stranger.seed().unwrap())]);
    s.service
        .wait_for("the refused connect with the new seed", WAIT, || {
            s.service
                .log()
                .contains("with the changed files: the server refused the login")
        });
    assert!(s.service.log().contains("the current connection stays"));
    connect_token(&s.url(), &s.token("team-a", "app")).expect("the current connection answers");
    assert_eq!(s.service.metric("nats_callout_nats_disconnects_total"), 0.0);
    // Counted, for the alert on a rotation that did not take.
    assert_eq!(
        s.service
            .metric("nats_callout_nats_file_reloads_total{result=\"failure\"}"),
        1.0
    );
    assert_eq!(
        s.service
            .metric("nats_callout_nats_file_reloads_total{result=\"success\"}"),
        0.0
    );
}

/// The port of a listener that accepts and never answers (a server that hangs).
static SILENT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

#[test]
fn a_failing_connect_with_changed_files_does_not_hold_up_the_current_connection() {
    // Two servers: the real one, and one that accepts and says nothing (each try of it takes
    // the whole connect timeout). The new seed is refused by the real one.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    SILENT_PORT.store(silent.local_addr().unwrap().port(), Ordering::SeqCst);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming() {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (old, stranger) = (KeyPair::new_user(), KeyPair::new_user());
    let mut volume = SecretVolume::create(
        &dir.path().join("nkey"),
        &[("nkey.seed", &old.seed().unwrap())],
    );
    let accepted = vec![old.public_key()];
    let s = StackBuilder::new()
        .nats_config(move |c| with_callout_nkeys(&c, &accepted, &accepted))
        .service_nats_url(|port| {
            format!(
                "nats://127.0.0.1:{port},nats://127.0.0.1:{}",
                SILENT_PORT.load(Ordering::SeqCst)
            )
        })
        .env(
            "NATS_NKEY_SEED_FILE",
            volume.path("nkey.seed").to_str().unwrap(),
        )
        .start();
    let stop = Arc::new(AtomicBool::new(false));
    let (url, token, stop2) = (s.url(), s.token("team-a", "app"), stop.clone());
    let clients = std::thread::spawn(move || {
        let (mut refused, mut slowest) = (0, Duration::ZERO);
        while !stop2.load(Ordering::SeqCst) {
            let t = std::time::Instant::now();
            if connect_token(&url, &token).is_err() {
                refused += 1;
            }
            slowest = slowest.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(20));
        }
        (refused, slowest)
    });
    volume.update(&[("nkey.seed", &stranger.seed().unwrap())]);
    s.service
        .wait_for("the failed connect with the new seed", WAIT, || {
            s.service.log().contains("the current connection stays")
        });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let (refused, slowest) = clients.join().unwrap();
    assert_eq!(refused, 0, "{}", s.service.log());
    // The reader went on reading while the new connection was tried (its own authorization
    // request included): no client waited for the connect timeout (3 s) or nats-server's auth
    // timeout (2 s). 1.5 s leaves room for a loaded machine (1.003 s was seen) and still tells
    // a held-up reader apart.
    assert!(
        slowest < Duration::from_millis(1500),
        "a client waited {slowest:?}"
    );
}
