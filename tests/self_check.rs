//! The self-check on a real nats-server: the service asks the API emulator for a token of its
//! own ServiceAccount (TokenRequest), connects through nats-server with it at an interval, and
//! reports the outcome as a metric, a log line naming the cause and (when asked) `/readyz`.
//! Matching keys pass; a server with another callout issuer or xkey fails within one interval
//! and the line says which key nats-server must have; a missing token permission is told apart.

mod support;

use std::time::Duration;

use nkeys::{KeyPair, XKey};
use support::client::connect_token;
use support::kube::RequestKind;
use support::operator::{OperatorStackBuilder, UserSigner};
use support::stack::{Stack, StackBuilder};

/// The service's own ServiceAccount in these tests.
const OWN_NS: &str = "nats-auth";
const OWN_NAME: &str = "nats-k8s-oidc-callout";
/// Long enough for a few checks at the shortest interval.
const WAIT: Duration = Duration::from_secs(20);

fn checks(stack: &Stack, result: &str) -> f64 {
    stack.service.metric(&format!(
        "nats_callout_self_checks_total{{result=\"{result}\"}}"
    ))
}

/// `config` with the value of its `setting: "…"` line (the callout's issuer or xkey) replaced.
fn replace_setting(config: &str, setting: &str, value: &str) -> String {
    let current = config
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{setting}: \"")))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no {setting} line in:\n{config}"))
        .to_owned();
    config.replace(&current, value)
}

/// Another replica of `stack` checking itself every 5 s, its readiness gated on the check.
fn checking_replica(stack: &Stack) -> support::service::Service {
    stack
        .replica()
        .env("SELF_CHECK_INTERVAL", "5s")
        .env(
            "SELF_CHECK_SERVICE_ACCOUNT",
            &format!("{OWN_NS}/{OWN_NAME}"),
        )
        .env("SELF_CHECK_READINESS", "true")
        .spawn()
}

/// The service's first line about a refused check.
fn refused_line(stack: &Stack) -> String {
    let log = stack.service.log();
    log.lines()
        .find(|l| l.contains("self-check failed (result=refused)"))
        .unwrap_or_else(|| panic!("no failure line:\n{log}"))
        .to_owned()
}

/// A stack whose service checks itself every 5 s, as its own ServiceAccount; the policy
/// excludes the service's namespace, as the deploy guide's does.
fn checking() -> StackBuilder {
    StackBuilder::new()
        .account(
            OWN_NS,
            OWN_NAME,
            &[("nats.io/allowed-pub-subjects", "nats-auth.>")],
        )
        .policy("namespaces:\n  exclude: [nats-auth]\n")
        .env("SELF_CHECK_INTERVAL", "5s")
        .env(
            "SELF_CHECK_SERVICE_ACCOUNT",
            &format!("{OWN_NS}/{OWN_NAME}"),
        )
}

#[test]
fn matching_keys_pass_and_the_own_account_is_granted_nothing() {
    // With the readiness gate, the stack is ready only once a check has passed.
    let stack = checking().env("SELF_CHECK_READINESS", "true").start();
    assert!(checks(&stack, "ok") >= 1.0, "{}", stack.service.log());
    assert_eq!(stack.service.metric("nats_callout_self_check_failing"), 0.0);
    let log = stack.service.log();
    assert!(
        log.contains("self-check passed: connected through"),
        "{log}"
    );
    let granted = format!("allowed {OWN_NS}/{OWN_NAME}");
    assert!(log.contains(&granted), "{log}");

    // The check's token is reused, not asked for at every check.
    stack
        .service
        .wait_for("a second check", WAIT, || checks(&stack, "ok") >= 2.0);
    assert_eq!(stack.api.token_requests(), 1);
    let asked = stack.api.requests_of(RequestKind::TokenRequest);
    assert!(
        asked[0].path.ends_with(&format!(
            "/namespaces/{OWN_NS}/serviceaccounts/{OWN_NAME}/token"
        )),
        "{:?}",
        asked[0].path
    );
    // Its audience is JWT_AUDIENCE: the service accepted it as any workload's token.

    // Whoever holds a token of the service's ServiceAccount connects, but may do nothing: not
    // its annotation's subjects, not its namespace, not the inboxes.
    let own = connect_token(&stack.url(), &stack.token(OWN_NS, OWN_NAME))
        .expect("the service's own ServiceAccount connects");
    for subject in ["nats-auth.x", "team-a.x", "_INBOX.x", "anything"] {
        assert!(!own.can_publish(subject), "published to {subject}");
        assert!(!own.can_subscribe(subject), "subscribed to {subject}");
    }
    // The policy still applies to everyone else in the excluded namespace.
    stack.api.create_service_account(OWN_NS, "other", &[]);
    stack.assert_denied(&stack.token(OWN_NS, "other"), "namespace_not_allowed");
    stack.assert_connects("team-a", "app");
}

#[test]
fn a_server_with_another_issuer_fails_the_check_and_names_the_key() {
    let other = KeyPair::new_account().public_key();
    let stack = checking()
        .nats_config(move |config| replace_setting(&config, "issuer", &other))
        .start();
    stack
        .service
        .wait_for("a refused check", WAIT, || checks(&stack, "refused") >= 1.0);
    assert_eq!(checks(&stack, "ok"), 0.0);
    assert_eq!(stack.service.metric("nats_callout_self_check_failing"), 1.0);
    let line = refused_line(&stack);
    // A single replica answers every check, so the cause is pinned on nats-server's keys.
    assert!(
        line.contains("this replica granted it, so nats-server refused the service's answer")
            && line.contains(&format!(
                "auth_callout.issuer must be {}",
                stack.keys.account.public_key()
            ))
            && line.contains("Authorization Violation"),
        "{line}"
    );
    // One line for a failure that goes on, not one per check.
    stack.service.wait_for("another refused check", WAIT, || {
        checks(&stack, "refused") >= 2.0
    });
    assert_eq!(
        stack.service.log().matches("self-check failed").count(),
        1,
        "{}",
        stack.service.log()
    );

    // A replica that gates its readiness on the check never becomes ready.
    let gated = checking_replica(&stack);
    gated.wait_for("the gated replica's first check", WAIT, || {
        gated.metric("nats_callout_self_checks_total{result=\"refused\"}") >= 1.0
    });
    let (status, body) = gated.get("/readyz").expect("/readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"self_check\""), "{body}");
}

#[test]
fn a_server_sealing_for_another_xkey_fails_the_check_and_names_the_xkey() {
    let other = XKey::new().public_key();
    let stack = checking()
        .xkey()
        .nats_config(move |config| replace_setting(&config, "xkey", &other))
        .start();
    stack
        .service
        .wait_for("a refused check", WAIT, || checks(&stack, "refused") >= 1.0);
    let line = refused_line(&stack);
    let want = stack.keys.xkey.as_ref().expect("an xkey").public_key();
    assert!(
        line.contains("reason=request_cannot_open")
            && line.contains(&format!("auth_callout.xkey must be {want}")),
        "{line}"
    );
}

#[test]
fn a_token_the_api_server_refuses_is_its_own_result_and_the_check_recovers() {
    let stack = checking().start();
    // Once the first replica has its token (kept for minutes), a second one asks an API server
    // that refuses TokenRequests, as one without the RBAC rule would.
    stack
        .service
        .wait_for("a first check", WAIT, || checks(&stack, "ok") >= 1.0);
    stack
        .api
        .fail_next_of(RequestKind::TokenRequest, 1000, 403, None);
    let replica = stack
        .replica()
        .env("SELF_CHECK_INTERVAL", "5s")
        .env(
            "SELF_CHECK_SERVICE_ACCOUNT",
            &format!("{OWN_NS}/{OWN_NAME}"),
        )
        .spawn();
    replica.wait_for("a check without a token", WAIT, || {
        replica.metric("nats_callout_self_checks_total{result=\"no_token\"}") >= 1.0
    });
    assert_eq!(replica.metric("nats_callout_self_check_failing"), 1.0);
    let log = replica.log();
    assert!(
        log.contains("self-check failed (result=no_token)")
            && log.contains(&format!("no token for {OWN_NS}/{OWN_NAME}"))
            && log.contains("create on serviceaccounts/token"),
        "{log}"
    );
    // Without the readiness gate, a check that cannot run leaves the replica ready.
    assert_eq!(replica.get("/readyz").map(|(s, _)| s), Some(200));
    stack.api.clear_faults();
    replica.wait_for("a passing check", WAIT, || {
        replica.metric("nats_callout_self_checks_total{result=\"ok\"}") >= 1.0
    });
    assert_eq!(replica.metric("nats_callout_self_check_failing"), 0.0);
    assert!(
        replica.log().contains("self-check passed"),
        "{}",
        replica.log()
    );
}

#[test]
fn a_refusal_another_replica_answered_does_not_hold_readiness() {
    // A replica without the self-check (an older version, mid-rollout) refuses the service's own
    // ServiceAccount like any account of the excluded namespace. A new replica gating its
    // readiness on the check still becomes ready: the checks that other replica answers are no
    // verdict on this one, and those it answers itself pass.
    let stack = StackBuilder::new()
        .account(OWN_NS, OWN_NAME, &[])
        .policy("namespaces:\n  exclude: [nats-auth]\n")
        .start();
    let gated = checking_replica(&stack);
    gated.wait_ready(Duration::from_secs(60));
    assert!(gated.metric("nats_callout_self_checks_total{result=\"ok\"}") >= 1.0);
    // The old replica's refusals, if any landed there, were logged as not this replica's.
    let log = gated.log();
    assert!(!log.contains("this replica granted it"), "{log}");
    if log.contains("self-check failed") {
        assert!(log.contains("another replica answered it"), "{log}");
    }
}

/// The self-check's settings for an operator-mode stack, `extra` added.
fn operator_checking(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("SELF_CHECK_INTERVAL".to_owned(), "5s".to_owned()),
        (
            "SELF_CHECK_SERVICE_ACCOUNT".to_owned(),
            format!("{OWN_NS}/{OWN_NAME}"),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

#[test]
fn operator_mode_passes_with_the_sentinel_or_the_servers_default_sentinel() {
    // Without default_sentinel, a client presents the sentinel's creds with its token: so does
    // the check. The stack is ready only once the check has passed.
    let s = OperatorStackBuilder::new()
        .account(OWN_NS, OWN_NAME, &[])
        .prepare(|keys| {
            let creds = keys.path("creds/sentinel.creds");
            operator_checking(&[
                ("SELF_CHECK_CREDS_FILE", creds.to_str().expect("utf8")),
                ("SELF_CHECK_READINESS", "true"),
            ])
        })
        .start();
    assert!(
        s.service
            .metric("nats_callout_self_checks_total{result=\"ok\"}")
            >= 1.0
    );
    assert!(
        s.service.log().contains("self-check passed"),
        "{}",
        s.service.log()
    );
    // Neither the sentinel's creds (its JWT, its seed) nor the check's token is logged, at
    // LOG_LEVEL=debug.
    let creds = std::fs::read_to_string(s.keys.path("creds/sentinel.creds")).expect("creds");
    let log = s.service.log();
    let secrets: Vec<&str> = creds
        .lines()
        .filter(|l| l.starts_with("eyJ") || l.starts_with("SU"))
        .collect();
    assert_eq!(secrets.len(), 2, "the creds' JWT and seed");
    for secret in secrets {
        assert!(
            !log.contains(secret),
            "the sentinel's creds in the log:\n{log}"
        );
    }
    assert!(!log.contains("eyJ"), "a JWT in the log:\n{log}");

    // With the server's default_sentinel, the token alone.
    let s = OperatorStackBuilder::new()
        .config("nats-memory-default-sentinel.conf")
        .account(OWN_NS, OWN_NAME, &[])
        .prepare(|_| operator_checking(&[("SELF_CHECK_READINESS", "true")]))
        .start();
    assert!(
        s.service
            .metric("nats_callout_self_checks_total{result=\"ok\"}")
            >= 1.0
    );
}

#[test]
fn operator_mode_without_a_sentinel_says_what_to_set() {
    let s = OperatorStackBuilder::new()
        .account(OWN_NS, OWN_NAME, &[])
        .prepare(|_| operator_checking(&[]))
        .start();
    s.service.wait_for("a refused check", WAIT, || {
        s.service
            .metric("nats_callout_self_checks_total{result=\"refused\"}")
            >= 1.0
    });
    let log = s.service.log();
    assert!(
        log.contains("set SELF_CHECK_CREDS_FILE to the sentinel's creds"),
        "{log}"
    );
}

#[test]
fn a_scoped_signing_key_turns_the_self_check_off() {
    // The scope would give the check's user its permissions: the service cannot grant it
    // nothing, so it does not check, and its own ServiceAccount is an account like any other.
    let s = OperatorStackBuilder::new()
        .config("nats-memory-default-sentinel.conf")
        .signer(UserSigner::Scoped)
        .account(OWN_NS, OWN_NAME, &[])
        .prepare(|_| operator_checking(&[]))
        .start();
    let log = s.service.log();
    assert!(
        log.contains("SELF_CHECK_INTERVAL is ignored: clients of account")
            && log.contains("scoped key"),
        "{log}"
    );
    std::thread::sleep(Duration::from_secs(6));
    for result in ["ok", "refused", "no_token", "timeout", "unreachable"] {
        assert_eq!(
            s.service.metric(&format!(
                "nats_callout_self_checks_total{{result=\"{result}\"}}"
            )),
            0.0
        );
    }
    assert_eq!(s.api.token_requests(), 0);
    // Its token gets what the scope gives its name, as any account's would.
    let own = s.connect(OWN_NS, OWN_NAME);
    let space = format!("sa.system:serviceaccount:{OWN_NS}:{OWN_NAME}._.x");
    assert!(own.can_publish(&space), "the scope's subjects");
}

#[test]
fn the_own_account_cannot_reach_system_jetstream_or_reply_subjects() {
    // Attack: a pod running as the service's ServiceAccount (or anyone holding its token) uses
    // the grant for anything nats-server offers every account without an explicit grant: the
    // system imports every account gets ($SYS.REQ.ACCOUNT.PING.*, $SYS.REQ.USER.INFO), the
    // JetStream API, request/reply through its own inbox, queue and wildcard subscriptions, and
    // the response allowance. nats-server checks all of them against pub/sub deny ">".
    let stack = checking().jetstream().start();
    let own = connect_token(&stack.url(), &stack.token(OWN_NS, OWN_NAME))
        .expect("the service's own ServiceAccount connects");
    for subject in [
        "$SYS.REQ.USER.INFO",
        "$SYS.REQ.ACCOUNT.PING.CONNZ",
        "$SYS.REQ.SERVER.PING",
        "$SYS.REQ.SERVER.PING.CONNZ",
        "$JS.API.INFO",
        "$JS.API.STREAM.CREATE.X",
        "$KV.bucket.key",
        "$SYS.REQ.USER.AUTH",
        "_INBOX.anyone",
        "_R_.x",
    ] {
        assert!(!own.can_publish(subject), "published to {subject}");
        // A request is a publish with a reply subject: refused just the same, and no answer.
        assert!(
            own.nc
                .request_timeout(subject, b"{}", Duration::from_millis(500))
                .is_err(),
            "a request to {subject} was answered"
        );
    }
    for subject in [">", "*", "*.>", "_INBOX.*", "_INBOX.>", "$SYS.>", "$JS.>"] {
        assert!(!own.can_subscribe(subject), "subscribed to {subject}");
    }
    // A queue subscription is checked on the subject as well as on the queue.
    assert!(
        !own.can_queue_subscribe("team-a.x", "q"),
        "queue-subscribed"
    );

    // The response allowance: a granted client sends it a request; with no subscription it
    // cannot receive it, so it has no reply subject to answer on. Nor does a message reach it
    // through a subscription the server refused.
    let app = connect_token(&stack.url(), &stack.token("team-a", "app")).expect("team-a connects");
    let sub = own
        .nc
        .subscribe("team-a.req")
        .expect("the client sends SUB");
    let _ = own.nc.flush();
    let control = app.nc.subscribe("team-a.req").expect("team-a subscribes");
    let _ = app.nc.flush();
    app.nc
        .publish_request("team-a.req", "_INBOX.app.1", b"ping")
        .expect("team-a publishes");
    let _ = app.nc.flush();
    // The request was sent (a granted subscriber gets it) …
    assert!(control.next_timeout(Duration::from_secs(2)).is_ok());
    // … and not to the own account's refused subscription.
    assert!(
        sub.next_timeout(Duration::from_secs(1)).is_err(),
        "a refused subscription received a message"
    );
    // It is still connected: nothing above was a way to make the server drop it either.
    assert!(own.nc.rtt().is_ok());

    // Secrets: with LOG_LEVEL=debug, neither the check's token (asked of the API server) nor
    // the one presented above appears in the log: no JWT at all does.
    stack
        .service
        .wait_for("a passing check", WAIT, || checks(&stack, "ok") >= 1.0);
    let log = stack.service.log();
    assert!(log.contains("DEBUG") || log.contains("debug"), "{log}");
    assert!(!log.contains("eyJ"), "a JWT in the log:\n{log}");
}

#[test]
fn a_pass_another_replica_answered_does_not_make_a_broken_replica_ready() {
    // A rollout whose new pods sign with a key nats-server does not trust (a wrong Secret) must
    // stop at its first new pod (docs/OPERATIONS.md). The old replica is fine and also grants
    // the service's own ServiceAccount, so every check the new pod's connect lands on it
    // passes: a pass this replica did not answer says nothing about this replica's keys, and
    // must not make it ready, any more than a refusal it did not answer makes it unready.
    let stack = checking().start();
    let wrong = KeyPair::new_account();
    let broken = stack.replica();
    let seed = broken.dir().join("wrong-signing.nk");
    std::fs::write(&seed, wrong.seed().expect("seed")).expect("write seed");
    let broken = broken
        .env("NATS_SIGNING_KEY_FILE", seed.to_str().expect("utf8 path"))
        .env("SELF_CHECK_INTERVAL", "5s")
        .env(
            "SELF_CHECK_SERVICE_ACCOUNT",
            &format!("{OWN_NS}/{OWN_NAME}"),
        )
        .env("SELF_CHECK_READINESS", "true")
        .spawn();
    // Several rounds: each check lands on either replica at random.
    let until = std::time::Instant::now() + Duration::from_secs(25);
    let mut ready_once = false;
    while std::time::Instant::now() < until {
        if broken
            .get("/readyz")
            .is_some_and(|(status, _)| status == 200)
        {
            ready_once = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = broken.log();
    assert!(
        !ready_once,
        "the replica whose grants nats-server refuses became ready:\n{log}"
    );
    // It did find out about itself.
    assert!(log.contains("this replica granted it"), "{log}");
}

#[test]
fn a_check_stuck_on_a_silent_server_does_not_hold_shutdown() {
    // Attack: a server that accepts the check's TCP connection and never says a word holds the
    // check for its whole handshake (15 s, per server, per attempt). SIGTERM must not wait for
    // it: the thread is left behind after the short grace for background threads.
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    let stack = checking().start();
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let accepted: Arc<Mutex<Vec<(Instant, std::net::TcpStream)>>> = Arc::default();
    let held = accepted.clone();
    std::thread::spawn(move || {
        for s in silent.incoming().flatten() {
            held.lock().unwrap().push((Instant::now(), s));
        }
    });
    let real = stack.nats.service_url();
    let port = stack.nats.port.to_string();
    let quiet = real.replace(&format!(":{port}"), &format!(":{silent_port}"));
    // Each check starts at a server picked at random (two of the three are silent):
    // start replicas until one whose first check is stuck on a silent one.
    let mut tries = 0;
    let mut replica = loop {
        tries += 1;
        assert!(tries <= 8, "no replica's check tried a silent server");
        let before = accepted.lock().unwrap().len();
        let mut replica = stack
            .replica()
            .env("NATS_URL", &format!("{real},{quiet},{quiet}"))
            .env("SHUTDOWN_TIMEOUT", "2s")
            .env("SELF_CHECK_INTERVAL", "5s")
            .env(
                "SELF_CHECK_SERVICE_ACCOUNT",
                &format!("{OWN_NS}/{OWN_NAME}"),
            )
            .spawn();
        replica.wait_ready(Duration::from_secs(60));
        // The first check starts half a second after the callout subscription.
        std::thread::sleep(Duration::from_secs(2));
        let log = replica.log();
        if !log.contains("self-check passed") && accepted.lock().unwrap().len() > before {
            break replica;
        }
        let _ = replica.terminate(Duration::from_secs(15));
    };
    std::thread::sleep(Duration::from_secs(1));
    let asked = Instant::now();
    let status = replica.terminate(Duration::from_secs(12));
    let took = asked.elapsed();
    assert!(
        status.is_some(),
        "still running 12 s after SIGTERM:\n{}",
        replica.log()
    );
    // SHUTDOWN_TIMEOUT (2 s) for in-flight requests, 3 s for background threads, and slack;
    // well under the 14 s the check still had to wait.
    assert!(took < Duration::from_secs(9), "{took:?}\n{}", replica.log());
}

#[test]
fn a_token_file_the_kubelet_keeps_is_read_at_every_check_and_no_token_is_requested() {
    // The chart's default: a projected token in a file, no TokenRequest and no RBAC for it.
    // Until the kubelet has written a valid one, the check is refused by this very replica's
    // decision, which says why; the next check reads the file again and passes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    support::stack::write_atomically(&path, "not-yet-a-token");
    let stack = checking()
        .env("SELF_CHECK_TOKEN_FILE", path.to_str().unwrap())
        .start();
    stack
        .service
        .wait_for("a refused check", WAIT, || checks(&stack, "refused") >= 1.0);
    let log = stack.service.log();
    assert!(
        log.contains("this replica denied it (reason=token_"),
        "{log}"
    );
    support::stack::write_atomically(&path, &stack.token(OWN_NS, OWN_NAME));
    stack
        .service
        .wait_for("a passing check", WAIT, || checks(&stack, "ok") >= 1.0);
    assert_eq!(stack.service.metric("nats_callout_self_check_failing"), 0.0);
    assert_eq!(stack.api.token_requests(), 0);
    // A file that disappears is no token, not a verdict on the keys.
    std::fs::remove_file(&path).unwrap();
    stack.service.wait_for("a check without a token", WAIT, || {
        checks(&stack, "no_token") >= 1.0
    });
    assert!(
        stack
            .service
            .log()
            .contains("SELF_CHECK_TOKEN_FILE: a projected serviceAccountToken volume"),
        "{}",
        stack.service.log()
    );
}
