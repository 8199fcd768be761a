//! End to end: a real nats-server in config mode with auth callout, the service binary, the
//! Kubernetes API emulator, and real clients connecting with RS256/ES256 service-account tokens.

mod support;

use std::time::Duration;

use support::client::{
    connect_anonymous, connect_token, connect_user_pass, is_authorization_violation,
};
use support::kube::{RequestKind, DEFAULT_ISSUER};
use support::nats::CLIENT_ACCOUNT;
use support::service::ServiceBuilder;
use support::stack::{Stack, StackBuilder};
use support::tokens::{jwks, tamper_payload, SigningKey, TokenBuilder};

const WAIT: Duration = Duration::from_secs(10);

/// The earlier permissions, kept as `INBOX_MODE=responses` (tests/permissions.rs covers the
/// default and private modes, and the escalation this mode allows).
#[test]
fn a_pod_token_grants_its_namespace_and_nothing_else() {
    let s = StackBuilder::new().env("INBOX_MODE", "responses").start();
    let token = s.token("team-a", "app");
    let c = connect_token(&s.url(), &token).unwrap_or_else(|e| {
        panic!(
            "valid token connects: {e}\n{}\n{}",
            s.service.log(),
            s.nats.log()
        )
    });
    assert!(
        c.round_trip("team-a.orders.created"),
        "pub/sub in its own namespace"
    );
    assert!(
        c.can_subscribe("_INBOX_team-a_app.reply"),
        "its private inbox"
    );
    // Request/reply inside the namespace: the responder answers on the requester's inbox through
    // the one-response allowance, without any publish right on inboxes.
    let responder = connect_token(&s.url(), &token).expect("connects");
    let svc = responder.nc.subscribe("team-a.svc").expect("subscribe");
    responder.nc.flush().unwrap();
    std::thread::spawn(move || {
        if let Some(m) = svc.next() {
            let _ = m.respond(b"pong");
        }
    });
    let reply =
        c.nc.request_timeout("team-a.svc", b"ping", Duration::from_secs(3))
            .expect("reply");
    assert_eq!(reply.data, b"pong");
    drop(c);
    // A fresh connection per check, so one violation cannot mask the next.
    let check = |f: &dyn Fn(&support::client::Client) -> bool| {
        f(&connect_token(&s.url(), &token).expect("connects"))
    };
    assert!(
        !check(&|c| c.can_publish("team-b.orders")),
        "publish to another namespace"
    );
    assert!(
        !check(&|c| c.can_subscribe("team-b.>")),
        "subscribe to another namespace"
    );
    assert!(
        !check(&|c| c.can_subscribe("_INBOX_team-b_app.>")),
        "another account's private inbox"
    );
    assert!(
        !check(&|c| c.can_publish("$SYS.REQ.SERVER.PING")),
        "system subjects"
    );
    assert!(!check(&|c| c.can_subscribe(">")), "everything");
    assert!(
        check(&|c| c.can_subscribe("_INBOX.abc")),
        "shared inboxes for request/reply"
    );
    assert!(s.service.decisions("allow", "granted") >= 8.0);
}

#[test]
fn sealed_requests_with_xkey_and_es256_tokens_work() {
    let s = StackBuilder::new().xkey().key(SigningKey::es256()).start();
    let c = connect_token(&s.url(), &s.token("team-a", "app"))
        .expect("connects through sealed callout");
    assert!(c.round_trip("team-a.x"));
    s.assert_denied(
        &tamper_payload(&s.token("team-a", "app")),
        "token_bad_signature",
    );
}

#[test]
fn annotations_grant_more_subjects_and_guard_rails_drop_the_rest() {
    let s = StackBuilder::new()
        .env("INBOX_MODE", "responses")
        .account(
            "team-b",
            "svc.v2",
            &[
                (
                    "nats.io/allowed-pub-subjects",
                    "orders.>, inventory.check, bad..subject",
                ),
                (
                    "nats.io/allowed-sub-subjects",
                    "orders.responses.*, _INBOX_team-a_app.>, $SYS.>, *.>",
                ),
            ],
        )
        .start();
    let token = s.token("team-b", "svc.v2");
    let fresh = || connect_token(&s.url(), &token).expect("connects");
    assert!(fresh().can_publish("orders.eu.new"));
    assert!(fresh().can_publish("inventory.check"));
    assert!(!fresh().can_publish("inventory.other"));
    assert!(fresh().can_subscribe("orders.responses.x"));
    assert!(!fresh().can_subscribe("orders.responses.x.y"));
    assert!(
        !fresh().can_subscribe("_INBOX_team-a_app.>"),
        "reserved entry was dropped"
    );
    assert!(!fresh().can_subscribe("$SYS.>"));
    assert!(
        fresh().can_subscribe("_INBOX_team-b_svc_v2.>"),
        "dots become underscores"
    );
    assert!(
        !fresh().can_subscribe("_INBOX_team-a_other.x"),
        "a wildcard entry was dropped"
    );
    assert!(
        s.service.metric(
            "nats_callout_dropped_annotation_entries_total{direction=\"sub\",cause=\"reserved\"}"
        ) >= 3.0
    );
    assert!(
        s.service.metric(
            "nats_callout_dropped_annotation_entries_total{direction=\"pub\",cause=\"invalid\"}"
        ) >= 1.0
    );
}

#[test]
fn every_bad_token_is_refused_with_its_own_reason() {
    let s = Stack::start();
    let uid = s.api.uid_of("team-a", "app").expect("uid");
    let t = || TokenBuilder::for_sa("team-a", "app", &uid);
    let stranger = SigningKey::es256();
    s.assert_denied(&t().expires_in(-120).sign(&s.key), "token_expired");
    s.assert_denied(
        &t().not_before(support::tokens::now_unix() + 600)
            .sign(&s.key),
        "token_not_yet_valid",
    );
    s.assert_denied(&t().audience("vault").sign(&s.key), "token_wrong_audience");
    s.assert_denied(
        &t().issuer("https://elsewhere.example").sign(&s.key),
        "token_wrong_issuer",
    );
    s.assert_denied(&t().sign(&stranger), "token_unknown_key");
    s.assert_denied(&tamper_payload(&t().sign(&s.key)), "token_bad_signature");
    s.assert_denied(&t().legacy_secret_format().sign(&s.key), "token_legacy");
    s.assert_denied(&t().sign_hs256(b"secret"), "token_unsupported_algorithm");
    s.assert_denied(&t().unsigned_alg_none(), "token_unsupported_algorithm");
    s.assert_denied("not-a-jwt", "token_malformed");
    s.assert_denied(
        &TokenBuilder::for_sa("team-a", "ghost", "u-1").sign(&s.key),
        "serviceaccount_not_found",
    );
    s.assert_denied(
        &TokenBuilder::for_sa("team-a", "app", "someone-elses-uid").sign(&s.key),
        "serviceaccount_uid_mismatch",
    );
    // The audience may be a plain string.
    assert!(connect_token(&s.url(), &t().audience_string("nats").sign(&s.key)).is_ok());
    // Nothing the client sent, and no token, ends up in the log.
    let log = s.service.log();
    assert!(!log.contains(&s.token("team-a", "app")[..40]));
}

#[test]
fn clients_without_a_token_are_refused_and_the_password_field_carries_a_token() {
    let s = Stack::start();
    let e = connect_anonymous(&s.url())
        .err()
        .expect("no credentials: refused");
    assert!(is_authorization_violation(&e));
    s.service.wait_for("no_token counted", WAIT, || {
        s.service.decisions("deny", "no_token") >= 1.0
    });
    let c = connect_user_pass(&s.url(), "mqtt-client", &s.token("team-a", "app"))
        .expect("token as password");
    assert!(c.round_trip("team-a.via-pass"));
}

#[test]
fn accounts_created_reannotated_deleted_and_recreated_while_running() {
    let s = Stack::start();
    // Created while the watch is stalled: the cache-miss GET finds it at once.
    s.api.set_watch_hang(true);
    s.api.create_service_account("team-c", "late", &[]);
    let c =
        connect_token(&s.url(), &s.token("team-c", "late")).expect("a just-created account works");
    assert!(c.round_trip("team-c.hello"));
    assert!(s.api.get_requests() >= 1, "found through a single GET");
    s.api.set_watch_hang(false);

    // Re-annotated: the next connection gets the new subject.
    let token = s.token("team-a", "app");
    assert!(!connect_token(&s.url(), &token)
        .unwrap()
        .can_publish("billing.x"));
    s.api.update_annotations(
        "team-a",
        "app",
        &[("nats.io/allowed-pub-subjects", "billing.>")],
    );
    s.service.wait_for("annotation applied", WAIT, || {
        connect_token(&s.url(), &token)
            .unwrap()
            .can_publish("billing.x")
    });

    // Deleted: refused.
    s.api.delete_service_account("team-a", "app");
    s.service.wait_for("deletion seen", WAIT, || {
        connect_token(&s.url(), &token).is_err()
    });
    assert!(s.service.decisions("deny", "serviceaccount_not_found") >= 1.0);

    // Re-created under the same name: the old token names the old uid and stays refused.
    s.api.create_service_account("team-a", "app", &[]);
    s.service.wait_for("re-creation seen", WAIT, || {
        connect_token(&s.url(), &s.token("team-a", "app")).is_ok()
    });
    s.assert_denied(&token, "serviceaccount_uid_mismatch");

    // Everything was read as metadata only: lists as a PartialObjectMetadataList, watches and
    // the miss-lookup GET as PartialObjectMetadata (the API server refuses that on a list).
    let metadata = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";
    let metadata_list =
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
    for (kind, accept) in [
        (RequestKind::List, metadata_list),
        (RequestKind::Watch, metadata),
        (RequestKind::Get, metadata),
    ] {
        let requests = s.api.requests_of(kind);
        assert!(!requests.is_empty(), "{kind:?}");
        for r in requests {
            assert_eq!(r.accept.as_deref(), Some(accept), "{kind:?} {}", r.query);
            assert_ne!(r.status, 406, "{kind:?} {}", r.query);
        }
    }
}

#[test]
fn a_rotated_signing_key_is_picked_up_by_its_new_kid() {
    let s = Stack::start();
    let new_key = SigningKey::es256();
    let uid = s.api.uid_of("team-a", "app").unwrap();
    let fetches = s.api.jwks_requests();
    s.api.set_jwks(jwks(&[&s.key, &new_key]));
    let c = connect_token(
        &s.url(),
        &TokenBuilder::for_sa("team-a", "app", &uid).sign(&new_key),
    )
    .expect("new kid accepted after refetch");
    assert!(c.round_trip("team-a.rotated"));
    assert!(s.api.jwks_requests() > fetches);
    // Old key still served: still accepted.
    assert!(connect_token(&s.url(), &s.token("team-a", "app")).is_ok());
}

/// The verified-token cache: a client reconnecting with the same token is not verified again,
/// and a token whose signing key left the cluster's key set is refused even though it was
/// remembered.
#[test]
fn a_reconnect_skips_verification_until_its_signing_key_leaves_the_key_set() {
    let s = Stack::start();
    let lookups = |result: &str| {
        s.service.metric(&format!(
            "nats_callout_token_cache_lookups_total{{result=\"{result}\"}}"
        ))
    };
    let token = s.token("team-a", "app");
    for _ in 0..3 {
        assert!(connect_token(&s.url(), &token)
            .expect("connects")
            .round_trip("team-a.again"));
    }
    assert_eq!((lookups("miss"), lookups("hit")), (1.0, 2.0));
    assert_eq!(s.service.metric("nats_callout_token_cache_entries"), 1.0);

    // The cluster replaces its key; a token of the new key makes the service refetch the set.
    let new_key = SigningKey::es256();
    let uid = s.api.uid_of("team-a", "app").unwrap();
    s.api.set_jwks(jwks(&[&new_key]));
    let fresh = TokenBuilder::for_sa("team-a", "app", &uid).sign(&new_key);
    assert!(
        connect_token(&s.url(), &fresh).is_ok(),
        "{}",
        s.service.log()
    );
    // The remembered token's key is gone: verified again, and refused.
    s.assert_denied(&token, "token_unknown_key");
    assert_eq!(lookups("hit"), 2.0, "no hit after the key set changed");
}

/// Rule: a token without a `kid` is tried against at most 4 keys of its algorithm. Once the
/// cluster publishes 5 RSA keys, such a token is refused `token_kid_required` without any
/// signature check, and the operator is told in one line, not one per token.
#[test]
fn a_token_without_kid_is_refused_once_the_set_has_more_keys_of_its_algorithm_than_the_bound() {
    let s = Stack::start();
    let uid = s.api.uid_of("team-a", "app").unwrap();
    let kidless = || TokenBuilder::for_sa("team-a", "app", &uid).without_kid();
    connect_token(&s.url(), &kidless().sign(&s.key)).expect("one key: tried and accepted");

    let more: Vec<SigningKey> = (1..5).map(SigningKey::rs256_n).collect();
    let mut published = vec![&s.key];
    published.extend(more.iter());
    s.api.set_jwks(jwks(&published));
    // A token of a new key brings the new set in (its client retries if the refetch is slow).
    let rotated = TokenBuilder::for_sa("team-a", "app", &uid).sign(&more[3]);
    s.service.wait_for("the new key accepted", WAIT, || {
        connect_token(&s.url(), &rotated).is_ok()
    });
    for _ in 0..3 {
        s.assert_denied(&kidless().sign(&s.key), "token_kid_required");
    }
    let log = s.service.log();
    assert_eq!(
        log.matches("token(s) without a key id: the key set has 5 RS256 keys")
            .count(),
        1,
        "one operator line for three refusals:\n{log}"
    );
}

#[test]
fn the_cache_survives_410_dropped_streams_and_an_api_outage() {
    let s = Stack::start();
    let relists = s.service.metric("nats_callout_cache_relists_total");
    // A change the service has not seen, then the history compacted past it and the stream cut:
    // the resumed watch gets 410 and the service relists, which brings the change in.
    s.api.set_watch_hang(true);
    s.api.create_service_account("team-d", "missed", &[]);
    s.api.compact_history();
    s.api.close_watch_streams();
    s.api.set_watch_hang(false);
    s.service.wait_for("relist after 410", WAIT, || {
        s.service.metric("nats_callout_cache_relists_total") > relists
    });
    assert!(connect_token(&s.url(), &s.token("team-d", "missed")).is_ok());
    s.api.create_service_account("team-d", "after-relist", &[]);
    s.service.wait_for("watch resumed", WAIT, || {
        s.service.metric("nats_callout_serviceaccounts") >= 3.0
    });

    // API down: the warm cache keeps answering.
    s.api.set_down(true);
    let c = connect_token(&s.url(), &s.token("team-a", "app"))
        .expect("warm cache serves during an outage");
    assert!(c.round_trip("team-a.outage"));
    s.api.set_down(false);
    s.api.create_service_account("team-d", "after-outage", &[]);
    s.service
        .wait_for("watch back after outage", Duration::from_secs(40), || {
            s.service.metric("nats_callout_serviceaccounts") >= 4.0
        });
    assert!(s.service.metric("nats_callout_watch_restarts_total") >= 1.0);
}

#[test]
fn the_service_reconnects_after_a_nats_server_restart() {
    let mut s = Stack::start();
    s.nats.restart();
    s.service
        .wait_for("reconnected", Duration::from_secs(20), || {
            s.service.metric("nats_callout_nats_reconnects_total") >= 1.0
                && connect_token(&s.url(), &s.token("team-a", "app")).is_ok()
        });
}

#[test]
fn two_replicas_share_the_load_and_one_can_die() {
    let s = Stack::start();
    let mut second = ServiceBuilder::new(&s.keys, &s.nats.service_url(), CLIENT_ACCOUNT)
        .kube_api(&s.api.url(), &s.api.token())
        .env("JWT_ISSUER", DEFAULT_ISSUER)
        .start();
    let token = s.token("team-a", "app");
    for _ in 0..20 {
        connect_token(&s.url(), &token).expect("connects");
    }
    let first_share = s.service.decisions("allow", "granted");
    let second_share = second.decisions("allow", "granted");
    assert_eq!(
        first_share + second_share,
        20.0,
        "each request answered exactly once"
    );
    second.kill();
    for _ in 0..5 {
        connect_token(&s.url(), &token).expect("the survivor answers alone");
    }
}

#[test]
fn a_client_is_disconnected_when_its_token_expires() {
    let s = Stack::start();
    let uid = s.api.uid_of("team-a", "app").unwrap();
    let token = TokenBuilder::for_sa("team-a", "app", &uid)
        .expires_in(3)
        .sign(&s.key);
    let c = connect_token(&s.url(), &token).expect("connects");
    let errors = c
        .wait_disconnected(Duration::from_secs(10))
        .expect("disconnected at expiry");
    assert!(
        errors.iter().any(|e| e.contains("Expired")),
        "errors: {errors:?}"
    );
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut s = Stack::start();
    let status = s
        .service
        .terminate(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no exit after SIGTERM; log:\n{}", s.service.log()));
    assert!(status.success(), "{status}");
}

#[test]
fn a_client_never_outlives_the_maximum_lifetime() {
    let s = StackBuilder::new()
        .env("USER_JWT_MAX_LIFETIME", "10s")
        .start();
    let c = connect_token(&s.url(), &s.token("team-a", "app")).expect("connects");
    let started = std::time::Instant::now();
    let errors = c
        .wait_disconnected(Duration::from_secs(20))
        .expect("disconnected at the cap");
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "not before the cap"
    );
    assert!(
        errors.iter().any(|e| e.contains("Expired")),
        "errors: {errors:?}"
    );
}

#[test]
fn a_list_of_servers_is_tried_until_one_answers() {
    let mut s = Stack::start();
    s.service.kill();
    let dead = support::nats::free_port();
    let list = format!(
        "nats://callout:callout-secret@127.0.0.1:{dead} , {}",
        s.nats.service_url()
    );
    let _replacement = ServiceBuilder::new(&s.keys, &list, CLIENT_ACCOUNT)
        .kube_api(&s.api.url(), &s.api.token())
        .env("JWT_ISSUER", DEFAULT_ISSUER)
        .start();
    assert!(connect_token(&s.url(), &s.token("team-a", "app")).is_ok());
}

#[test]
fn sigterm_exits_even_while_nats_is_unreachable() {
    let mut s = Stack::start();
    s.nats.stop();
    s.service.wait_for("the disconnect noticed", WAIT, || {
        s.service.metric("nats_callout_nats_disconnects_total") >= 1.0
    });
    let status = s
        .service
        .terminate(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no exit after SIGTERM; log:\n{}", s.service.log()));
    assert!(status.success(), "{status}");
}

/// Only nats-server publishes authorization requests: it refuses a client's publish on the
/// request subject, even from a user of the callout account listed in `auth_users` (nats-server
/// 2.15.1 logs `Publish Violation - Subject "$SYS.REQ.USER.AUTH"`). So a request with a forged
/// lifetime cannot come from a client here; the service's bounds on `exp` are unit-tested in
/// `callout::service`.
#[test]
fn no_client_may_publish_an_authorization_request() {
    let s = StackBuilder::new().start();
    let c =
        connect_user_pass(&s.url(), support::nats::AUTH_USER, support::nats::AUTH_PASS).unwrap();
    assert!(!c.can_publish("$SYS.REQ.USER.AUTH"));
    assert!(c.can_publish("anything.else"));
    assert!(s
        .nats
        .log()
        .contains("Publish Violation - Subject \"$SYS.REQ.USER.AUTH\""));
}

#[test]
fn each_decision_names_the_tokens_credential_id_as_the_audit_log_does() {
    // The API server's audit log records a token's use as `credential-id: JTI=<jti>`: the
    // service's allow and deny lines carry the same text, for the verified tokens.
    let s = StackBuilder::new()
        .account("kube-system", "job", &[])
        .policy("namespaces:\n  exclude: [kube-system]\n")
        .start();
    let token = |ns: &str, name: &str, jti: &str| {
        let uid = s.api.uid_of(ns, name).expect("uid");
        TokenBuilder::for_sa(ns, name, &uid).jti(jti).sign(&s.key)
    };
    connect_token(&s.url(), &token("team-a", "app", "3f6b2c1e-allowed")).expect("allowed");
    s.assert_denied(
        &token("kube-system", "job", "3f6b2c1e-denied"),
        "namespace_not_allowed",
    );
    let log = s.service.log();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{log}"))
            .to_owned()
    };
    assert!(line("allowed team-a/app").ends_with(", credential JTI=3f6b2c1e-allowed"));
    assert!(line("denied kube-system/job").ends_with(", credential JTI=3f6b2c1e-denied"));
    // A token that fails verification has no credential id worth logging: its claims are
    // anyone's words.
    let forged = TokenBuilder::for_sa("team-a", "app", "u")
        .jti("forged-jti")
        .sign(&SigningKey::es256());
    s.assert_denied(&forged, "token_unknown_key");
    assert!(
        !s.service.log().contains("forged-jti"),
        "{}",
        s.service.log()
    );
}
