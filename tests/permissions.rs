//! The permission model on the real stack: the inbox modes (and the reply-subject escalation
//! that only `INBOX_MODE=responses` allows), the admin policy (served namespaces, annotation
//! bounds, accounts, reloads) as nats-server enforces what the service grants.

mod support;

use std::time::Duration;

use support::client::{connect_token, Client};
use support::stack::{Stack, StackBuilder};

const WAIT: Duration = Duration::from_secs(10);
const FORGED: &[u8] = b"forged by team-a";

/// A stack with `team-a/app` and `team-b/app`, clients in `mode`.
fn two_namespaces(mode: &str) -> Stack {
    StackBuilder::new()
        .account("team-b", "app", &[])
        .env("INBOX_MODE", mode)
        .start()
}

fn connect(s: &Stack, ns: &str, name: &str) -> Client {
    connect_token(&s.url(), &s.token(ns, name))
        .unwrap_or_else(|e| panic!("{ns}/{name} connects: {e}\n{}", s.service.log()))
}

/// The attack of the response permission: a client publishes to its own subject with another
/// namespace's subject as the reply, receives its own message (echo) and publishes to the
/// reply subject. Returns whether team-b's subscriber got the forged message.
fn forge_through_own_reply(s: &Stack, target: &str) -> bool {
    let victim = connect(s, "team-b", "app");
    let inbox = victim.nc.subscribe(target).expect("victim subscribes");
    victim.nc.flush().expect("flush");
    let attacker = connect(s, "team-a", "app");
    let own = attacker.nc.subscribe("team-a.t").expect("own subject");
    attacker
        .nc
        .publish_request("team-a.t", target, b"trigger")
        .expect("publish to its own subject");
    let msg = own.next_timeout(WAIT).expect("its own message comes back");
    let reply = msg.reply.clone().expect("with the reply subject it chose");
    assert_eq!(reply, target);
    let _ = attacker.nc.publish(&reply, FORGED);
    let _ = attacker.nc.flush();
    inbox
        .next_timeout(Duration::from_millis(800))
        .is_ok_and(|m| m.data == FORGED)
}

#[test]
fn the_reply_subject_escalation_works_only_in_responses_mode() {
    for (mode, escalates) in [("shared", false), ("private", false), ("responses", true)] {
        let s = two_namespaces(mode);
        assert_eq!(
            forge_through_own_reply(&s, "team-b.cmd"),
            escalates,
            "INBOX_MODE={mode}: a forged message reached team-b\n{}",
            s.service.log()
        );
        let log = s.service.log();
        assert_eq!(
            log.contains("INBOX_MODE=responses grants the response permission"),
            escalates,
            "only responses mode warns at start:\n{log}"
        );
    }
}

#[test]
fn shared_inboxes_carry_request_reply_within_and_across_namespaces() {
    let s = StackBuilder::new()
        .account(
            "team-b",
            "svc",
            &[("nats.io/allowed-sub-subjects", "team-b.svc")],
        )
        .account(
            "team-c",
            "client",
            &[("nats.io/allowed-pub-subjects", "team-b.svc")],
        )
        .start();
    let responder = connect(&s, "team-b", "svc");
    let svc = responder.nc.subscribe("team-b.svc").expect("subscribe");
    responder.nc.flush().unwrap();
    let handle = std::thread::spawn(move || {
        for _ in 0..2 {
            if let Ok(m) = svc.next_timeout(WAIT) {
                // The reply goes to the requester's default inbox: publish on `_INBOX.>`.
                let _ = m.respond(b"pong");
            }
        }
        responder
    });
    let same_ns = connect(&s, "team-b", "svc");
    let reply = same_ns
        .nc
        .request_timeout("team-b.svc", b"ping", WAIT)
        .expect("within the namespace");
    assert_eq!(reply.data, b"pong");
    let other_ns = connect(&s, "team-c", "client");
    let reply = other_ns
        .nc
        .request_timeout("team-b.svc", b"ping", WAIT)
        .expect("across namespaces");
    assert_eq!(reply.data, b"pong");
    let responder = handle.join().unwrap();
    // Only the defaults and annotations: no earlier-style private inbox, nothing of $SYS.
    assert!(!connect(&s, "team-a", "app").can_subscribe("_INBOX_team-a_app.>"));
    assert!(!connect(&s, "team-a", "app").can_publish("$SYS.REQ.SERVER.PING"));
    assert!(connect(&s, "team-a", "app").can_publish("_INBOX.anyone"));
    drop(responder);
}

#[test]
fn private_inboxes_are_readable_by_their_own_account_only() {
    let s = StackBuilder::new()
        .account("team-a", "svc.v2", &[])
        .account("team-b", "app", &[])
        .env("INBOX_MODE", "private")
        .start();
    let responder = connect(&s, "team-a", "svc.v2");
    let svc = responder.nc.subscribe("team-a.svc").expect("subscribe");
    responder.nc.flush().unwrap();
    std::thread::spawn(move || {
        if let Ok(m) = svc.next_timeout(WAIT) {
            let _ = m.respond(b"pong");
        }
        drop(responder);
    });
    // The requester uses its own inbox prefix, as a client configured for private mode does.
    let requester = connect(&s, "team-a", "app");
    let prefix = "_INBOX.team-a.app";
    let inbox = requester
        .nc
        .subscribe(&format!("{prefix}.>"))
        .expect("its own inbox space");
    requester
        .nc
        .publish_request("team-a.svc", &format!("{prefix}.r1"), b"ping")
        .unwrap();
    let reply = inbox.next_timeout(WAIT).expect("the reply arrives");
    assert_eq!(reply.data, b"pong");
    drop(requester);
    let fresh = |ns: &str, name: &str| connect(&s, ns, name);
    assert!(
        !fresh("team-b", "app").can_subscribe("_INBOX.team-a.app.>"),
        "another namespace reads no one else's replies"
    );
    assert!(
        !fresh("team-a", "svc.v2").can_subscribe("_INBOX.team-a.app.>"),
        "nor does another account of the same namespace"
    );
    assert!(
        !fresh("team-a", "app").can_subscribe("_INBOX.team-a.app_x.>"),
        "a name is one token: app's space does not reach another account's"
    );
    assert!(!fresh("team-b", "app").can_subscribe("_INBOX.>"));
    assert!(fresh("team-a", "svc.v2").can_subscribe("_INBOX.team-a.svc_v2.r"));
}

const POLICY: &str = r#"
namespaces:
  exclude: ["kube-*"]
annotations:
  publish: ["{namespace}.>", "orders.>"]
  subscribe: ["{namespace}.>", "orders.>"]
rules:
  - namespaces: ["payments"]
    account: PAYMENTS
    annotations:
      publish: ["orders.>", "ledger.{name}.>"]
      subscribe: ["orders.>"]
"#;

#[test]
fn the_policy_serves_namespaces_bounds_annotations_and_separates_accounts() {
    let s = StackBuilder::new()
        .nats_account("PAYMENTS")
        .policy(POLICY)
        .account(
            "team-a",
            "shop",
            &[
                (
                    "nats.io/allowed-pub-subjects",
                    "orders.>, team-b.cmd, ledger.api.x",
                ),
                ("nats.io/allowed-sub-subjects", "orders.>"),
            ],
        )
        .account(
            "payments",
            "api",
            &[
                (
                    "nats.io/allowed-pub-subjects",
                    "orders.>, ledger.api.>, ledger.other.x",
                ),
                ("nats.io/allowed-sub-subjects", "orders.>"),
            ],
        )
        .account("kube-system", "ops", &[])
        .start();
    s.assert_denied(&s.token("kube-system", "ops"), "namespace_not_allowed");
    assert!(s
        .service
        .log()
        .contains("namespace is not served by the policy: namespaces.exclude pattern \"kube-*\" matches it (reason=namespace_not_allowed)"));

    let fresh = |ns: &str, name: &str| connect(&s, ns, name);
    assert!(fresh("team-a", "shop").can_publish("orders.new"));
    assert!(
        !fresh("team-a", "shop").can_publish("team-b.cmd"),
        "outside the bounds"
    );
    assert!(
        !fresh("team-a", "shop").can_publish("ledger.api.x"),
        "only the rule allows ledger"
    );
    assert!(fresh("payments", "api").can_publish("ledger.api.x"));
    assert!(
        !fresh("payments", "api").can_publish("ledger.other.x"),
        "{{name}} is the account's own name"
    );
    assert!(
        s.service.metric(
            "nats_callout_dropped_annotation_entries_total{direction=\"pub\",cause=\"not_allowed_by_policy\"}"
        ) >= 3.0
    );

    // Both may use `orders.>`, but in two accounts: neither sees the other's messages.
    let app = fresh("team-a", "shop");
    let app_orders = app.nc.subscribe("orders.>").unwrap();
    app.nc.flush().unwrap();
    let payments_reader = fresh("payments", "api");
    let payments_orders = payments_reader.nc.subscribe("orders.>").unwrap();
    payments_reader.nc.flush().unwrap();
    let payments = fresh("payments", "api");
    payments
        .nc
        .publish("orders.created", b"from PAYMENTS")
        .unwrap();
    payments.nc.flush().unwrap();
    assert_eq!(
        payments_orders.next_timeout(WAIT).unwrap().data,
        b"from PAYMENTS",
        "delivered inside its account"
    );
    assert!(
        app_orders.next_timeout(Duration::from_millis(800)).is_err(),
        "not to the other account"
    );
    let log = s.service.log();
    assert!(log.contains("accounts named by rules: PAYMENTS"), "{log}");
}

#[test]
fn a_changed_policy_applies_to_new_connections_and_a_broken_one_is_refused() {
    let s = StackBuilder::new()
        .policy("annotations:\n  publish: [\"orders.>\"]\n")
        .account(
            "team-b",
            "app",
            &[("nats.io/allowed-pub-subjects", "orders.new")],
        )
        .start();
    assert!(connect(&s, "team-b", "app").can_publish("orders.new"));
    let reloads = |result: &str| {
        s.service.metric(&format!(
            "nats_callout_policy_reloads_total{{result=\"{result}\"}}"
        ))
    };
    // Narrowed: the entry is no longer within the bounds, and team-a is no longer served.
    s.replace_policy(
        "namespaces:\n  exclude: [team-a]\nannotations:\n  publish: [\"invoices.>\"]\n",
    );
    s.service
        .wait_for("policy re-read", WAIT, || reloads("success") >= 1.0);
    assert!(!connect(&s, "team-b", "app").can_publish("orders.new"));
    s.assert_denied(&s.token("team-a", "app"), "namespace_not_allowed");

    // A broken file: counted, logged, and the last good policy stays.
    s.replace_policy("annotations:\n  publish: [\"a..b\"]\n");
    s.service
        .wait_for("broken policy counted", WAIT, || reloads("failure") >= 1.0);
    assert!(s
        .service
        .log()
        .contains("annotations.publish[0] \"a..b\" is not a valid NATS subject"));
    s.assert_denied(&s.token("team-a", "app"), "namespace_not_allowed");
    assert!(!connect(&s, "team-b", "app").can_publish("orders.new"));
}
