//! The permission model on the real stack: the inbox modes (and the reply-subject escalation
//! that only `INBOX_MODE=responses` allows), the admin policy (served namespaces, annotation
//! bounds, accounts, reloads) as nats-server enforces what the service grants, and the Warning
//! Events that tell annotation writers what was dropped.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::client::{connect_token, Client};
use support::service::Service;
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

    // 14 KB whose aliases expand to 4 million globs: refused as well, at once.
    let list = vec!["a"; 2000].join(", ");
    let rules = vec!["*r"; 2000].join(", ");
    s.replace_policy(&format!(
        "namespaces:\n  exclude: &n [{list}]\nrules: [&r {{namespaces: *n}}, {rules}]\n"
    ));
    s.service
        .wait_for("alias bomb refused", WAIT, || reloads("failure") >= 2.0);
    assert!(s.service.log().contains("its aliases expand it beyond"));
    s.assert_denied(&s.token("team-a", "app"), "namespace_not_allowed");
}

/// nats-server checks a subscription against the grants token by token, and a grant's last `*`
/// matches the subscription's `>`: a client granted `orders.*` may subscribe `orders.>` and then
/// receives `orders.<anything>.<deeper>`. So an annotation's subscribe entry ending in `*` reaches
/// as far as one ending in `>`, and must lie within the policy as such.
#[test]
fn a_subscribe_entry_ending_in_a_star_is_bounded_by_all_it_lets_the_client_subscribe() {
    let s = StackBuilder::new()
        .policy("annotations:\n  subscribe: [\"orders.*\", \"metrics.>\"]\n")
        .account(
            "team-b",
            "app",
            &[(
                "nats.io/allowed-sub-subjects",
                "orders.*, orders.eu, metrics.eu.*",
            )],
        )
        .start();
    let fresh = || connect(&s, "team-b", "app");
    assert!(
        !fresh().can_subscribe("orders.>"),
        "orders.* would have let the client subscribe orders.>, beyond the policy's orders.*"
    );
    assert!(!fresh().can_subscribe("orders.us"), "the entry was dropped");
    assert!(
        fresh().can_subscribe("orders.eu"),
        "a single subject within orders.* is granted"
    );
    assert!(
        fresh().can_subscribe("metrics.eu.>"),
        "metrics.eu.* reaches metrics.eu.>, which lies within metrics.>"
    );
    let e = s.service.metric(
        "nats_callout_dropped_annotation_entries_total{direction=\"sub\",cause=\"not_allowed_by_policy\"}",
    );
    assert_eq!(e, 1.0, "{}", s.service.log());
}

// ---------------------------------------------------------------------------------------------
// Warning Events about dropped annotation entries (SERVICEACCOUNT_EVENTS).

const BOUNDED: &str =
    "annotations:\n  publish: [\"{namespace}.>\"]\n  subscribe: [\"{namespace}.>\"]\n";
const PUB: &str = "nats.io/allowed-pub-subjects";
const SUB: &str = "nats.io/allowed-sub-subjects";
/// `team-b/app` asks for one grantable entry and three the policy drops, each for another cause.
const ASKED: [(&str, &str); 2] = [(PUB, "team-b.ok, orders.x, a..b"), (SUB, "_INBOX.x")];

/// A stack whose policy bounds annotations to the own namespace, with `team-b/app` asking for
/// [`ASKED`], reported as pod `callout-0`.
fn annotated() -> StackBuilder {
    StackBuilder::new()
        .policy(BOUNDED)
        .account("team-b", "app", &ASKED)
        .env("HOSTNAME", "callout-0")
}

/// `nats_callout_events_total{result}` of one replica.
fn events(service: &Service, result: &str) -> f64 {
    service.metric(&format!("nats_callout_events_total{{result=\"{result}\"}}"))
}

#[test]
fn dropped_entries_give_one_warning_event_whatever_the_connects_and_replicas() {
    let s = annotated().start();
    let second = s.replica().env("HOSTNAME", "callout-1").start();
    let token = s.token("team-b", "app");
    // Until both replicas have decided for team-b/app (the queue group picks one per request).
    let granted = |r: &Service| r.decisions("allow", "granted");
    s.service.wait_for("both replicas decide", WAIT, || {
        connect(&s, "team-b", "app");
        granted(&s.service) >= 1.0 && granted(&second) >= 1.0
    });
    for _ in 0..4 {
        connect_token(&s.url(), &token).expect("connects");
    }
    // Each replica evaluated this version once and reported it once: one created, one found.
    let reported = || {
        let total = |result| events(&s.service, result) + events(&second, result);
        (total("created"), total("exists"))
    };
    s.service
        .wait_for("both replicas report", WAIT, || reported() == (1.0, 1.0));
    assert_eq!(
        events(&s.service, "failed") + events(&second, "failed"),
        0.0
    );
    let about = s.api.events_about("team-b", "app");
    assert_eq!(about.len(), 1, "{about:#?}");
    let event = &about[0];
    let account = s.api.service_account("team-b", "app").expect("exists");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "NatsAnnotationEntryDropped");
    assert_eq!(event["count"], 1);
    assert_eq!(event["metadata"]["namespace"], "team-b");
    assert!(event["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n.starts_with("app.")));
    let involved = &event["involvedObject"];
    assert_eq!(involved["kind"], "ServiceAccount");
    assert_eq!(involved["apiVersion"], "v1");
    assert_eq!(involved["name"], "app");
    assert_eq!(involved["uid"], account["metadata"]["uid"]);
    assert_eq!(
        involved["resourceVersion"],
        account["metadata"]["resourceVersion"]
    );
    assert_eq!(event["source"]["component"], "nats-k8s-oidc-callout");
    assert_eq!(event["reportingComponent"], "nats-k8s-oidc-callout");
    assert!(
        ["callout-0", "callout-1"].contains(&event["reportingInstance"].as_str().unwrap_or("")),
        "{event}"
    );
    assert_eq!(event["firstTimestamp"], event["lastTimestamp"]);
    let message = event["message"].as_str().expect("a message");
    for part in [
        "3 annotation entries not granted: ",
        "nats.io/allowed-pub-subjects entry \"orders.x\": not within what the admin policy lets annotations grant: the policy's top-level annotations",
        "nats.io/allowed-pub-subjects entry \"a..b\": not a valid NATS subject",
        "nats.io/allowed-sub-subjects entry \"_INBOX.x\": inbox, reply and $SYS subjects",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message:?}");
    }
    assert!(
        !message.contains("team-b.ok"),
        "a granted entry is not named"
    );
    // An account without dropped entries gets no Event.
    connect(&s, "team-a", "app");
    assert_eq!(s.api.events().len(), 1);
}

#[test]
fn a_new_version_of_the_annotations_is_reported_again() {
    let s = annotated().start();
    connect(&s, "team-b", "app");
    s.service.wait_for("the first report", WAIT, || {
        events(&s.service, "created") >= 1.0
    });
    s.api
        .update_annotations("team-b", "app", &[(PUB, "team-b.ok, invoices.>")]);
    // The watch brings the new version; the next connect after it evaluates and reports it.
    s.service.wait_for("the second report", WAIT, || {
        connect(&s, "team-b", "app");
        events(&s.service, "created") >= 2.0
    });
    let about = s.api.events_about("team-b", "app");
    assert_eq!(about.len(), 2, "{about:#?}");
    let rv = |e: &Value| e["involvedObject"]["resourceVersion"].clone();
    assert_ne!(rv(&about[0]), rv(&about[1]));
    assert_ne!(about[0]["metadata"]["name"], about[1]["metadata"]["name"]);
    assert_eq!(
        about[1]["message"],
        "1 annotation entry not granted: nats.io/allowed-pub-subjects entry \"invoices.>\": not within what the admin policy lets annotations grant: the policy's top-level annotations"
    );
}

#[test]
fn without_rbac_for_events_decisions_still_work_and_the_failure_is_logged_and_counted() {
    let s = annotated()
        .account("team-c", "app", &[(PUB, "team-c.ok, elsewhere.x")])
        .start();
    s.api.set_create_events_allowed(false);
    let c = connect(&s, "team-b", "app");
    assert!(
        c.can_publish("team-b.ok"),
        "what the policy allows is granted"
    );
    assert!(!c.can_publish("orders.x"), "what it drops is not");
    s.service.wait_for("the refusal counted", WAIT, || {
        events(&s.service, "failed") >= 1.0
    });
    connect(&s, "team-c", "app");
    s.service.wait_for("the second refusal counted", WAIT, || {
        events(&s.service, "failed") >= 2.0
    });
    let log = s.service.log();
    let advice = "cannot create Events: grant create on events or set SERVICEACCOUNT_EVENTS=false";
    assert_eq!(
        log.matches(advice).count(),
        1,
        "logged once a minute at most:\n{log}"
    );
    assert!(log.contains("events is forbidden"), "{log}");
    assert!(s.api.events().is_empty());
    assert_eq!(events(&s.service, "created"), 0.0);
}

#[test]
fn with_serviceaccount_events_false_nothing_is_sent() {
    let s = annotated().env("SERVICEACCOUNT_EVENTS", "false").start();
    connect(&s, "team-b", "app");
    let dropped = || {
        s.service.metric(
            "nats_callout_dropped_annotation_entries_total{direction=\"pub\",cause=\"invalid\"}",
        )
    };
    s.service
        .wait_for("the drops counted", WAIT, || dropped() >= 1.0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.api.event_requests(), 0);
    for result in ["created", "exists", "failed", "dropped"] {
        assert_eq!(events(&s.service, result), 0.0, "{result}");
    }
    assert!(s.service.log().contains(
        "SERVICEACCOUNT_EVENTS=false: dropped annotation entries are only logged and counted"
    ));
}
