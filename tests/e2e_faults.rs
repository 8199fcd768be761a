//! End to end under API faults: a real nats-server with auth callout, the service binary, the
//! Kubernetes API emulator and real service-account tokens, while the API misbehaves: the
//! service's own credential rotates, the API answers 429 with `Retry-After`, a watch goes silent,
//! the collection needs several pages, a leafnode tries to log in with a workload's token, and the
//! key-set endpoint hangs while clients flood the service with key ids nobody published.
//! Each test asserts what an operator would see: metrics, the API's request log, client outcomes.

mod support;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::client::{bare_connect, connect_token, is_authorization_violation};
use support::kube::{RecordedRequest, RequestKind};
use support::nats::{free_port, NatsServer};
use support::stack::{Stack, StackBuilder};
use support::tokens::{SigningKey, TokenBuilder};

/// Generous bound for anything that should take a second or two on a quiet machine.
const WAIT: Duration = Duration::from_secs(20);
/// The service's list page size (`limit`), as documented in src/kube/watch.rs.
const PAGE_SIZE: usize = 500;

/// A request as the test saw it appear in the emulator's log, stamped when it was first seen.
type Seen = (Instant, RecordedRequest);

/// Polls the emulator's request log every 10 ms from entry `from` on, stamping each new request,
/// until `done` holds for what was seen; panics after `timeout` with everything seen.
fn record_requests(
    s: &Stack,
    from: usize,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[Seen]) -> bool,
) -> Vec<Seen> {
    let deadline = Instant::now() + timeout;
    let mut seen: Vec<Seen> = Vec::new();
    loop {
        let all = s.api.requests();
        let now = Instant::now();
        for r in all.into_iter().skip(from + seen.len()) {
            seen.push((now, r));
        }
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; requests seen: {:#?}\nservice log:\n{}",
            seen.iter().map(|(_, r)| describe(r)).collect::<Vec<_>>(),
            s.service.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn describe(r: &RecordedRequest) -> String {
    format!("{:?} {} {}?{}", r.kind, r.status, r.path, r.query)
}

/// Index of the first request of `kind` answered `status` at or after `from`.
fn position(seen: &[Seen], from: usize, kind: RequestKind, status: u16) -> Option<usize> {
    (from..seen.len()).find(|&i| seen[i].1.kind == kind && seen[i].1.status == status)
}

/// Index of the first request of `kind` (any status) after `after`.
fn next_of(seen: &[Seen], after: usize, kind: RequestKind) -> Option<usize> {
    (after + 1..seen.len()).find(|&i| seen[i].1.kind == kind)
}

/// Every request answered 401 must be followed by the same request answered with success: the
/// service re-read its token file and retried once.
fn assert_401s_retried(seen: &[RecordedRequest]) {
    for (i, r) in seen.iter().enumerate() {
        if r.status == 401 {
            let retry = seen[i + 1..]
                .iter()
                .find(|n| n.path == r.path && n.query == r.query)
                .unwrap_or_else(|| panic!("401 on {} was not retried", describe(r)));
            assert_eq!(
                retry.status,
                200,
                "the retry of {} used the rotated token",
                describe(r)
            );
        }
    }
}

#[test]
fn the_services_own_api_token_rotates_and_list_watch_keeps_working() {
    let s = StackBuilder::new().token_file().start();
    let original = s.api.token();
    assert!(s.api.wait_for_open_watches(1, WAIT), "a watch is open");
    let listed = s.api.requests_of(RequestKind::List);
    assert!(
        listed
            .iter()
            .all(|r| r.status == 200 && r.authorization_present),
        "the first list used the file's token: {listed:?}"
    );

    // Rotation 1, noticed by the watch: the stream is cut, the service opens a new one with the
    // token it read at start (the file is re-read at most once a minute), gets 401, re-reads the
    // file at once and retries with the new token.
    let mark = s.api.requests().len();
    let first = s.rotate_api_token();
    assert_ne!(first, original);
    s.api.close_watch_streams();
    let seen = record_requests(&s, mark, WAIT, "a watch with the rotated token", |seen| {
        position(seen, 0, RequestKind::Watch, 200).is_some()
    });
    let unauthorized = position(&seen, 0, RequestKind::Watch, 401)
        .expect("the first watch after the rotation still carried the old token");
    let retried = position(&seen, unauthorized, RequestKind::Watch, 200).expect("retried");
    assert_eq!(
        seen[unauthorized].1.query, seen[retried].1.query,
        "the retry is the same watch"
    );
    assert!(
        !seen.iter().any(|(_, r)| r.kind == RequestKind::List),
        "a rotated token does not cause a relist: {:?}",
        seen.iter().map(|(_, r)| describe(r)).collect::<Vec<_>>()
    );
    let gets = s.api.get_requests();
    s.api
        .create_service_account("team-r", "after-rotation", &[]);
    s.wait_cached("the account created after the rotation, by watch", 2, WAIT);
    assert_eq!(s.api.get_requests(), gets, "it came by watch, not by a GET");
    s.assert_connects("team-r", "after-rotation");

    // Rotation 2, noticed by a cache-miss GET while the watch is silent.
    s.api.set_watch_hang(true);
    let mark = s.api.requests().len();
    s.rotate_api_token();
    s.api.create_service_account("team-r", "during-hang", &[]);
    s.assert_connects("team-r", "during-hang");
    let seen: Vec<RecordedRequest> = s.api.requests().into_iter().skip(mark).collect();
    assert!(
        seen.iter()
            .any(|r| r.kind == RequestKind::Get && r.status == 401),
        "the GET first carried the previous token: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|r| r.kind == RequestKind::Get && r.status == 200),
        "the GET was retried with the new token: {seen:?}"
    );
    assert_401s_retried(&seen);
    s.api.set_watch_hang(false);

    // The re-read token is the one in use from now on: a new watch succeeds at the first try.
    let mark = s.api.requests().len();
    s.api.close_watch_streams();
    let seen = record_requests(&s, mark, WAIT, "a watch after rotation 2", |seen| {
        position(seen, 0, RequestKind::Watch, 200).is_some()
    });
    let seen: Vec<RecordedRequest> = seen.into_iter().map(|(_, r)| r).collect();
    assert_401s_retried(&seen);
    s.api
        .create_service_account("team-r", "after-second-rotation", &[]);
    s.wait_cached("the account created after rotation 2, by watch", 4, WAIT);
    s.assert_connects("team-r", "after-second-rotation");
    let after: Vec<RecordedRequest> = s.api.requests().into_iter().skip(mark).collect();
    assert!(
        after.iter().all(|r| r.status == 200),
        "every request after the token was re-read succeeds: {:?}",
        after.iter().map(describe).collect::<Vec<_>>()
    );
    assert!(s.service.decisions("allow", "granted") >= 3.0);
}

/// Starts a stack whose first watch has lived past the service's very-short-watch threshold, so
/// the backoff is fresh: its first delay is 0.8-1.6 s, the second 1.6-3.2 s.
fn settled_stack() -> Stack {
    let s = StackBuilder::new().start();
    assert!(s.api.wait_for_open_watches(1, WAIT), "a watch is open");
    std::thread::sleep(Duration::from_millis(1500));
    s
}

/// How long after the first 429 on `kind` the next request of that kind came, and that request.
fn retry_gap(seen: &[Seen], kind: RequestKind) -> (Duration, RecordedRequest, RecordedRequest) {
    let throttled = position(seen, 0, kind, 429).expect("a 429");
    let next = next_of(seen, throttled, kind).expect("a retry");
    (
        seen[next].0 - seen[throttled].0,
        seen[throttled].1.clone(),
        seen[next].1.clone(),
    )
}

/// The delay the service logged for its retry after a 429 (`…answered 429 …; retrying in 4s`).
fn logged_retry_after_429(log: &str) -> Duration {
    let line = log
        .lines()
        .find(|l| l.contains("answered 429") && l.contains("retrying in "))
        .unwrap_or_else(|| panic!("no retry logged after the 429; log:\n{log}"));
    let text = line
        .rsplit("retrying in ")
        .next()
        .unwrap_or_default()
        .trim();
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| text.split_at(i))
        .unwrap_or((text, ""));
    let value: f64 = number.parse().unwrap_or_else(|_| panic!("a delay: {line}"));
    match unit {
        "s" => Duration::from_secs_f64(value),
        "ms" => Duration::from_secs_f64(value / 1000.0),
        _ => panic!("unexpected delay unit in {line}"),
    }
}

#[test]
fn a_429_on_the_watch_is_waited_out_and_changes_made_meanwhile_arrive() {
    let s = settled_stack();
    let gets = s.api.get_requests();
    // The stream is cut and the next watch answered 429 with Retry-After: 4. Without the header
    // the service's first backoff would be at most 1.6 s.
    s.api.fail_next_of(RequestKind::Watch, 1, 429, Some(4));
    let mark = s.api.requests().len();
    s.api.close_watch_streams();
    s.api
        .create_service_account("team-e", "during-watch-backoff", &[]);
    let seen = record_requests(&s, mark, WAIT, "watch recovery", |seen| {
        position(seen, 0, RequestKind::Watch, 429)
            .and_then(|i| position(seen, i, RequestKind::Watch, 200))
            .is_some()
    });
    let (waited, throttled, retry) = retry_gap(&seen, RequestKind::Watch);
    eprintln!("watch retried {waited:?} after its 429");
    let logged = logged_retry_after_429(&s.service.log());
    assert!(
        logged >= Duration::from_secs(4),
        "the service planned {logged:?} after a 429 asking for 4 s"
    );
    // Polled from the outside, so only roughly: well above the 1.6 s of the plain backoff.
    assert!(
        waited >= Duration::from_millis(2500),
        "the watch was retried {waited:?} after a 429 asking for 4 s"
    );
    assert_eq!(retry.status, 200, "one 429, then served");
    assert_eq!(
        retry.resource_version(),
        throttled.resource_version(),
        "the watch resumed where it was"
    );
    assert!(
        !seen.iter().any(|(_, r)| r.kind == RequestKind::List),
        "a 429 on the watch does not relist"
    );
    // The change made during the backoff is replayed by the resumed watch.
    s.wait_cached("the account created during the watch backoff", 2, WAIT);
    s.api
        .create_service_account("team-e", "after-recovery", &[]);
    s.wait_cached("the account created after recovery", 3, WAIT);
    assert_eq!(s.api.get_requests(), gets, "no cache-miss GET was needed");
    s.assert_connects("team-e", "during-watch-backoff");
    s.assert_connects("team-e", "after-recovery");
    assert_eq!(s.api.get_requests(), gets, "served from the cache");
    assert!(s.service.metric("nats_callout_watch_restarts_total") >= 1.0);
    assert_eq!(s.service.metric("nats_callout_cache_relists_total"), 1.0);
}

#[test]
fn a_429_on_the_list_is_waited_out_and_changes_made_meanwhile_arrive() {
    let s = settled_stack();
    let gets = s.api.get_requests();
    let relists = s.service.metric("nats_callout_cache_relists_total");
    // A relist is forced: a change the service has not seen, the history compacted past it and
    // the stream cut, so the resumed watch gets 410 (the first failure: 0.8-1.6 s). The list's
    // first page is then answered 429 with Retry-After: 6; without the header the second
    // backoff would be at most 3.2 s.
    s.api.fail_next_of(RequestKind::List, 1, 429, Some(6));
    s.api.set_watch_hang(true);
    s.api.create_service_account("team-e", "missed", &[]);
    s.api.compact_history();
    let mark = s.api.requests().len();
    s.api.close_watch_streams();
    s.api.set_watch_hang(false);
    s.api
        .create_service_account("team-e", "during-list-backoff", &[]);
    let seen = record_requests(&s, mark, Duration::from_secs(30), "list recovery", |seen| {
        position(seen, 0, RequestKind::List, 429)
            .and_then(|i| position(seen, i, RequestKind::List, 200))
            .is_some()
    });
    let (waited, _, retry) = retry_gap(&seen, RequestKind::List);
    eprintln!("list retried {waited:?} after its 429");
    let logged = logged_retry_after_429(&s.service.log());
    assert!(
        logged >= Duration::from_secs(6),
        "the service planned {logged:?} after a 429 asking for 6 s"
    );
    // Polled from the outside, so only roughly: well above the 3.2 s of the plain backoff.
    assert!(
        waited >= Duration::from_millis(4500),
        "the list was retried {waited:?} after a 429 asking for 6 s"
    );
    assert_eq!(retry.status, 200, "one 429, then served");
    assert!(retry.param("continue").is_none(), "a fresh list");
    s.service.wait_for("the relist completed", WAIT, || {
        s.service.metric("nats_callout_cache_relists_total") > relists
    });
    s.wait_cached(
        "the accounts changed before and during the list backoff",
        3,
        WAIT,
    );

    // Watching again after the relist: a later change arrives by watch.
    assert!(s.api.wait_for_open_watches(1, WAIT), "watching again");
    s.api
        .create_service_account("team-e", "after-recovery", &[]);
    s.wait_cached("the account created after recovery", 4, WAIT);
    assert_eq!(s.api.get_requests(), gets, "no cache-miss GET was needed");
    for name in ["missed", "during-list-backoff", "after-recovery"] {
        s.assert_connects("team-e", name);
    }
    assert_eq!(s.api.get_requests(), gets, "served from the cache");
}

#[test]
fn a_watch_that_goes_silent_is_abandoned_and_events_arrive_afterwards() {
    let s = StackBuilder::new()
        .env("WATCH_TIMEOUT_SECONDS", "10")
        .start();
    assert!(s.api.wait_for_open_watches(1, WAIT), "a watch is open");
    std::thread::sleep(Duration::from_millis(1500));
    s.api.set_watch_hang(true);
    let hung_at = Instant::now();
    // A watch that ended just before the hang may be re-opened at once: let that settle.
    std::thread::sleep(Duration::from_secs(1));
    let watches = s.api.watch_requests();
    let restarts = s.service.metric("nats_callout_watch_restarts_total");
    let gets = s.api.get_requests();
    s.api.create_service_account("team-h", "during-hang", &[]);

    // The silent stream sends nothing, not even bookmarks, past its own timeoutSeconds: the
    // service must give up on it and watch again (here: read timeout = 10 s + its margin).
    s.service.wait_for(
        "a new watch while the old one hangs",
        Duration::from_secs(60),
        || s.api.watch_requests() > watches,
    );
    let gave_up_after = hung_at.elapsed();
    eprintln!("new watch {gave_up_after:?} after the hang began");
    assert!(
        gave_up_after >= Duration::from_secs(9),
        "the service gave up after {gave_up_after:?}, before the watch's own 10 s timeout"
    );
    s.service.wait_for("the restart counted", WAIT, || {
        s.service.metric("nats_callout_watch_restarts_total") > restarts
    });
    assert_eq!(s.cached(), 1.0, "nothing arrived while the API was silent");

    // The API speaks again: the queued event arrives through the new watch, with no GET.
    s.api.set_watch_hang(false);
    s.wait_cached("the account created during the hang", 2, WAIT);
    assert_eq!(
        s.api.get_requests(),
        gets,
        "the account came by watch, not by a cache-miss GET"
    );
    s.api.create_service_account("team-h", "after-hang", &[]);
    s.wait_cached("an account created after the hang", 3, WAIT);
    s.assert_connects("team-h", "during-hang");
    s.assert_connects("team-h", "after-hang");
    assert_eq!(s.api.get_requests(), gets, "served from the cache");
}

#[test]
fn list_and_watch_requests_carry_the_fields_the_api_expects() {
    let s = StackBuilder::new()
        .account("team-b", "one", &[])
        .account("team-b", "two", &[])
        .env("WATCH_TIMEOUT_SECONDS", "12")
        .start();
    // No write happens between here and the list: the list's collection resourceVersion.
    let listed_rv = s.api.resource_version();
    assert!(s.api.wait_for_open_watches(1, WAIT), "a watch is open");

    let lists = s.api.requests_of(RequestKind::List);
    assert!(!lists.is_empty());
    for l in &lists {
        assert_eq!(
            l.param("limit").as_deref(),
            Some("500"),
            "paginated list: {}",
            describe(l)
        );
        assert!(l.param("watch").is_none(), "{}", describe(l));
    }
    assert!(
        lists[0].param("continue").is_none(),
        "starts at the first page"
    );
    assert_eq!(s.cached(), 3.0);

    let first = &s.api.requests_of(RequestKind::Watch)[0];
    assert_eq!(
        first.param("watch").as_deref(),
        Some("1"),
        "{}",
        describe(first)
    );
    assert_eq!(
        first.param("allowWatchBookmarks").as_deref(),
        Some("true"),
        "{}",
        describe(first)
    );
    assert_eq!(
        first.param("timeoutSeconds").as_deref(),
        Some("12"),
        "WATCH_TIMEOUT_SECONDS is passed on: {}",
        describe(first)
    );
    assert_eq!(
        first.resource_version(),
        Some(listed_rv.clone()),
        "the watch starts at the list's resourceVersion: {}",
        describe(first)
    );

    // A change, then the server ends the watch at its timeoutSeconds (bookmarks in between, one
    // just before the deadline): the next watch resumes from the latest resourceVersion seen,
    // not from the list's, and nothing is relisted.
    s.api.create_service_account("team-b", "three", &[]);
    let latest_rv = s.api.resource_version();
    s.wait_cached("the new account", 4, WAIT);
    let lists_before = s.api.list_requests();
    s.service.wait_for(
        "the watch renewed after its timeout",
        Duration::from_secs(40),
        || s.api.requests_of(RequestKind::Watch).len() >= 2,
    );
    let watches = s.api.requests_of(RequestKind::Watch);
    let second = &watches[1];
    assert_eq!(
        second.resource_version(),
        Some(latest_rv.clone()),
        "the renewed watch starts at the last event's / bookmark's resourceVersion: {}",
        describe(second)
    );
    assert_eq!(second.param("allowWatchBookmarks").as_deref(), Some("true"));
    assert_eq!(second.param("timeoutSeconds").as_deref(), Some("12"));
    assert_eq!(s.api.list_requests(), lists_before, "no relist");
    assert_eq!(
        s.service.metric("nats_callout_cache_relists_total"),
        1.0,
        "one list at start, none since"
    );

    let (listed, latest): (u64, u64) = (listed_rv.parse().unwrap(), latest_rv.parse().unwrap());
    for w in &watches {
        let rv: u64 = w
            .resource_version()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("a concrete resourceVersion: {}", describe(w)));
        assert!(
            (listed..=latest).contains(&rv),
            "never older than the list, never invented: {}",
            describe(w)
        );
        assert!(w.param("sendInitialEvents").is_none(), "{}", describe(w));
        assert_eq!(w.status, 200, "{}", describe(w));
    }
}

#[test]
fn leafnode_connections_are_refused_even_with_a_valid_token() {
    let s = StackBuilder::new().leafnodes().start();
    let token = s.token("team-a", "app");
    let leaf_port = s.leafnode_port.expect("a leafnode listener");
    let port = free_port();
    let leaf = NatsServer::start_with_config(
        port,
        format!(
            "listen: \"127.0.0.1:{port}\"\nserver_name: \"leaf-{port}\"\nleafnodes {{\n  reconnect: 1\n  remotes: [ {{ url: \"nats://{token}@127.0.0.1:{leaf_port}\" }} ]\n}}\n"
        ),
    );
    s.service
        .wait_for("a leafnode denial", Duration::from_secs(30), || {
            s.service.decisions("deny", "connection_kind_not_allowed") >= 1.0
        });
    assert_eq!(
        s.service.decisions("allow", "granted"),
        0.0,
        "the leafnode was never let in"
    );
    // Both servers tell the same story: the hub closed the leafnode as an authentication failure
    // and the leaf was told Authorization Violation.
    s.service.wait_for("the hub and leaf logs", WAIT, || {
        leaf.log().contains("Authorization Violation")
    });
    let hub_log = s.nats.log();
    assert!(
        hub_log.contains("Leafnode connection closed: Authentication Failure"),
        "hub log:\n{hub_log}"
    );
    // The service never logs the token it was shown.
    assert!(!s.service.log().contains(&token[token.len() - 40..]));
    // The same token is fine for a client: the refusal is about the connection kind.
    s.assert_connects("team-a", "app");
}

#[test]
fn more_service_accounts_than_one_list_page() {
    const COUNT: usize = 1200;
    let s = StackBuilder::new().bulk(COUNT).start();
    let total = COUNT + 1;
    let listed_rv = s.api.resource_version();
    s.wait_cached("every account listed", total, WAIT);
    assert_eq!(s.cached(), total as f64);

    let lists = s.api.requests_of(RequestKind::List);
    let pages = total.div_ceil(PAGE_SIZE);
    assert_eq!(
        lists.len(),
        pages,
        "{pages} pages: {:?}",
        lists.iter().map(describe).collect::<Vec<_>>()
    );
    assert!(lists[0].param("continue").is_none());
    for l in &lists[1..] {
        assert!(
            l.param("continue").is_some_and(|c| !c.is_empty()),
            "later pages continue: {}",
            describe(l)
        );
    }
    for l in &lists {
        assert_eq!(l.param("limit").as_deref(), Some("500"), "{}", describe(l));
        assert_eq!(l.status, 200);
    }
    assert!(s.api.wait_for_open_watches(1, WAIT), "a watch is open");
    let watch = &s.api.requests_of(RequestKind::Watch)[0];
    assert_eq!(
        watch.resource_version(),
        Some(listed_rv),
        "the watch starts at the collection's resourceVersion"
    );

    let gets = s.api.get_requests();
    s.assert_connects("bulk", &format!("sa-{:04}", COUNT - 1));
    s.assert_connects("bulk", "sa-0000");
    s.assert_connects("team-a", "app");
    assert_eq!(s.api.get_requests(), gets, "all served from the cache");
    assert_eq!(s.service.decisions("allow", "granted"), 3.0);
}

/// What one client thread saw: refused or admitted, and how long the connect took.
type Outcome = (Result<(), String>, Duration);

/// Connects with each token on its own thread, all at once; the outcomes in token order.
fn connect_all(url: &str, tokens: Vec<String>) -> Vec<std::thread::JoinHandle<Outcome>> {
    tokens
        .into_iter()
        .map(|token| {
            let url = url.to_string();
            std::thread::spawn(move || {
                let started = Instant::now();
                let result = connect_token(&url, &token).map(|_| ());
                (result, started.elapsed())
            })
        })
        .collect()
}

/// Fails, with the refusals and the service's log, when any of `legitimate` was refused.
fn assert_none_refused(legitimate: &[Outcome], when: &str, s: &Stack) {
    let refused: Vec<&String> = legitimate
        .iter()
        .filter_map(|(r, _)| r.as_ref().err())
        .collect();
    assert!(
        refused.is_empty(),
        "{} of {} legitimate clients were refused {when}: {refused:?}\nservice log:\n{}",
        refused.len(),
        legitimate.len(),
        s.service.log()
    );
}

/// Joins the client threads of [`connect_all`]; their outcomes in token order.
fn outcomes(threads: Vec<std::thread::JoinHandle<Outcome>>) -> Vec<Outcome> {
    threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect()
}

/// Issue 10, point 2: a token naming a key id the cluster never published (right issuer, any
/// signature: it is never checked) must not hold a worker on the network. With the key-set
/// endpoint hanging past the service's 10 s fetch timeout and the default two workers, floods of
/// such tokens (distinct key ids, in two rounds across `JWKS_MIN_REFETCH_INTERVAL`) arrive just
/// before legitimate clients: every legitimate client is admitted within nats-server's 2 s auth
/// timeout, and every flood token is denied `token_unknown_key`.
#[test]
fn unknown_key_ids_while_the_key_set_endpoint_hangs_do_not_hold_the_workers() {
    const FLOOD: usize = 16;
    const LEGITIMATE: usize = 12;
    let s = StackBuilder::new()
        .env("JWKS_MIN_REFETCH_INTERVAL", "1s")
        .start();
    let uid = s.api.uid_of("team-a", "app").expect("team-a/app exists");
    s.assert_connects("team-a", "app");
    s.api.set_jwks_delay(Duration::from_secs(60));
    let stranger = SigningKey::es256();
    let denied_before = s.service.decisions("deny", "token_unknown_key");
    let mut legitimate = Vec::new();
    let mut flooded = Vec::new();
    for round in 0..2 {
        let forged: Vec<String> = (0..FLOOD)
            .map(|i| {
                TokenBuilder::for_sa("team-a", "app", &uid)
                    .kid_override(&format!("nope-{round}-{i}"))
                    .sign(&stranger)
            })
            .collect();
        let flood = connect_all(&s.url(), forged);
        std::thread::sleep(Duration::from_millis(50));
        let tokens = (0..LEGITIMATE).map(|_| s.token("team-a", "app")).collect();
        legitimate.extend(outcomes(connect_all(&s.url(), tokens)));
        flooded.extend(outcomes(flood));
        // The next round comes after the rate-limit interval has passed.
        std::thread::sleep(Duration::from_millis(1200));
    }
    let slowest = legitimate.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let slowest_denial = flooded.iter().map(|(_, d)| *d).max().unwrap_or_default();
    eprintln!(
        "legitimate connects: slowest {slowest:?}, all {:?}; flood denials: slowest {slowest_denial:?}",
        legitimate.iter().map(|(_, d)| *d).collect::<Vec<_>>()
    );
    assert_none_refused(&legitimate, "while unknown key ids flooded the service", &s);
    for (result, _) in &flooded {
        match result {
            Ok(()) => panic!("a token with an unpublished key id was admitted"),
            Err(e) => assert!(is_authorization_violation(e), "{e}"),
        }
    }
    let want = denied_before + (2 * FLOOD) as f64;
    s.service.wait_for("every flood token counted", WAIT, || {
        s.service.decisions("deny", "token_unknown_key") >= want
    });
}

/// A slow key-set endpoint (every answer 1.5 s late) and tokens with unknown key ids sent
/// without pause for 4 s with `JWKS_MIN_REFETCH_INTERVAL=1s`, so refetches are asked for again at
/// every interval boundary: legitimate clients connecting throughout are all admitted, the
/// refetches stay one at a time and at most one per interval, and a key the cluster published
/// meanwhile is accepted once a refetch has brought it.
#[test]
fn a_refetch_storm_against_a_slow_key_set_endpoint_does_not_refuse_legitimate_clients() {
    const STORM: Duration = Duration::from_secs(4);
    let s = StackBuilder::new()
        .env("JWKS_MIN_REFETCH_INTERVAL", "1s")
        .start();
    let uid = s.api.uid_of("team-a", "app").expect("team-a/app exists");
    s.assert_connects("team-a", "app");
    let rotated = SigningKey::es256();
    s.api.set_jwks(support::tokens::jwks(&[&s.key, &rotated]));
    s.api.set_jwks_delay(Duration::from_millis(1500));
    let fetches_before = s.api.jwks_requests();
    let started = Instant::now();
    let stranger = SigningKey::es256();
    let attackers: Vec<_> = (0..4)
        .map(|a| {
            let url = s.url();
            let token = |i: usize| {
                TokenBuilder::for_sa("team-a", "app", &uid)
                    .kid_override(&format!("storm-{a}-{i}"))
                    .sign(&stranger)
            };
            let tokens: Vec<String> = (0..400).map(token).collect();
            std::thread::spawn(move || {
                let mut admitted = 0;
                for token in tokens {
                    if started.elapsed() > STORM {
                        break;
                    }
                    admitted += usize::from(connect_token(&url, &token).is_ok());
                }
                admitted
            })
        })
        .collect();
    let mut legitimate: Vec<Outcome> = Vec::new();
    while started.elapsed() < STORM {
        let token = s.token("team-a", "app");
        let t = Instant::now();
        legitimate.push((connect_token(&s.url(), &token).map(|_| ()), t.elapsed()));
        std::thread::sleep(Duration::from_millis(100));
    }
    for attacker in attackers {
        assert_eq!(
            attacker.join().expect("attacker thread"),
            0,
            "a forged token got in"
        );
    }
    let storm = started.elapsed();
    let fetches = s.api.jwks_requests() - fetches_before;
    let slowest = legitimate.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let forged = s.service.decisions("deny", "token_unknown_key");
    eprintln!(
        "{} legitimate connects during a {storm:?} storm ({forged} forged tokens denied): slowest {slowest:?}; {fetches} key-set fetches",
        legitimate.len()
    );
    assert_none_refused(&legitimate, "during the storm", &s);
    // One at a time, each 1.5 s long, at most one per second: never more than one per second of
    // storm plus the one under way.
    assert!(
        fetches as f64 <= storm.as_secs_f64() + 1.0,
        "{fetches} key-set fetches in {storm:?}"
    );
    let token = TokenBuilder::for_sa("team-a", "app", &uid).sign(&rotated);
    s.service.wait_for("the published key accepted", WAIT, || {
        connect_token(&s.url(), &token).is_ok()
    });
}

/// `VmRSS` of a process, for the test's output.
fn rss(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or("VmRSS unknown")
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Attack review of issue 10: a namespace editor creates ServiceAccounts with 250 KiB of
/// annotations each (the API server allows 256 KiB per object), 270 of them, so one list page
/// of 500 is larger than the client's 64 MiB body limit. Before, a new replica never got ready
/// (`API response larger than 67108864 bytes` on every retry), a running one kept a frozen cache
/// after its next 410 (a deleted account was still admitted), and each object cost its
/// annotations in memory. Now the page is asked again in halves, only the service's own
/// annotations are kept, and the relist sees the deletion.
#[test]
fn service_accounts_with_huge_annotations_neither_block_lists_nor_fill_memory() {
    const OBJECTS: usize = 270;
    let pad = "x".repeat(250 * 1024);
    let s = StackBuilder::new().start();
    let pid = s.service.pid().expect("service pid");
    let before = rss(pid);
    for i in 0..OBJECTS {
        s.api.create_service_account(
            "attacker",
            &format!("sa-{i:03}"),
            &[("kubectl.kubernetes.io/last-applied-configuration", &pad)],
        );
    }
    s.wait_cached("the padded accounts", OBJECTS + 1, Duration::from_secs(60));
    let after_watch = rss(pid);

    let replica = s.replica().spawn();
    replica.wait_for("the new replica ready", Duration::from_secs(60), || {
        matches!(replica.get("/readyz"), Some((200, _)))
    });
    assert!(
        replica.log().contains("asking again for 250 at a time"),
        "{}",
        replica.log()
    );
    let replica_rss = rss(replica.pid().expect("replica pid"));
    // Gone before the 410: its own relist of ~66 MiB would keep the emulator busy past
    // nats-server's 2 s auth timeout while the running service looks the deleted account up.
    drop(replica);

    // The running service relists after a 410, and the list sees what changed.
    let token = s.token("team-a", "app");
    let relists = s.service.metric("nats_callout_cache_relists_total");
    s.api.set_watch_hang(true);
    s.api.delete_service_account("team-a", "app");
    s.api.compact_history();
    s.api.close_watch_streams();
    s.api.set_watch_hang(false);
    s.service
        .wait_for("the relist completed", Duration::from_secs(60), || {
            s.service.metric("nats_callout_cache_relists_total") > relists
        });
    // Exactly (wait_cached counts at least): another relist, before the deletion, may have
    // moved the counter (a stream of huge events can end a watch).
    s.service
        .wait_for("the deleted account gone from the cache", WAIT, || {
            s.cached() == OBJECTS as f64
        });
    s.assert_denied(&token, "serviceaccount_not_found");
    eprintln!(
        "RSS of the running service: {before} before, {after_watch} after {OBJECTS} padded accounts arrived by watch; new replica after its list: {replica_rss}"
    );
}

/// Attack review of issue 10: a client reconnecting with a garbage token as fast as it can cost
/// a WARN line per attempt (~1,700 lines/s from one pod). Denials now have their own line for
/// the first 20 of every 10 s (the rest at debug), then one line sums them up by reason; every
/// one is still counted.
#[test]
fn a_garbage_token_flood_writes_a_bounded_number_of_warn_lines() {
    const LINES_PER_WINDOW: usize = 20;
    let s = StackBuilder::new().start();
    let url = s.url();
    let before = s.service.log().len();
    let denied_before = s.service.decisions("deny", "token_malformed");
    let stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, url) = (stop.clone(), url.clone());
            std::thread::spawn(move || {
                let mut attempts = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let admitted = bare_connect(&url, "not-a-token").expect("connect");
                    assert!(admitted.is_some(), "a garbage token was admitted");
                    attempts += 1;
                }
                attempts
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let attempts: u32 = attackers.into_iter().map(|a| a.join().unwrap()).sum();
    let want = denied_before + f64::from(attempts);
    s.service.wait_for("every attempt counted", WAIT, || {
        s.service.decisions("deny", "token_malformed") >= want
    });
    // The summary comes when the window ends (at most 10 s after it began).
    s.service
        .wait_for("the summary line", Duration::from_secs(15), || {
            s.service.log()[before..].contains("not logged one by one")
        });
    let log = s.service.log();
    let added = &log[before..];
    let warned = added
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("] denied"))
        .count();
    let summary = added
        .lines()
        .find(|l| l.contains("not logged one by one"))
        .unwrap_or_default();
    eprintln!("{attempts} garbage tokens in 3 s: {warned} WARN denial lines; {summary}");
    assert!(
        attempts as usize > 3 * LINES_PER_WINDOW,
        "too few attempts to show anything: {attempts}"
    );
    // The flood spans at most two windows.
    assert!(
        warned <= 2 * LINES_PER_WINDOW,
        "{warned} WARN denial lines for {attempts} attempts"
    );
    assert!(
        summary.contains(" WARN ") && summary.contains("token_malformed="),
        "{summary}"
    );
}
