//! The pod binding check (`POD_BINDING=watch`) on a real nats-server with the API emulator's
//! pods: a pod-bound token works while its pod lives; a deleted pod's connections close within
//! seconds and its token is refused, while its sibling pods' connections stay; a pod replaced
//! under its name refuses the old token; tokens bound to no pod follow `NON_POD_TOKENS`; a
//! ServiceAccount's own changes still reach connections named by pod; a replica restarted after
//! the grant still finds them; readiness waits for the pod list.
#![allow(deprecated)] // the tests' NATS client is the `nats` sync crate

mod support;

use std::time::Duration;

use support::client::{connect_token, Client};
use support::kube::RequestKind;
use support::service::Service;
use support::stack::{system_url, wait_revoking, Stack, StackBuilder};
use support::tokens::TokenBuilder;

/// How long a revoked connection may stay open.
const BOUND: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(15);

/// Starts `builder` with the pod binding check and revocation on, creates `pods`
/// (namespace, name, ServiceAccount) and waits until the service holds them and its system
/// connection is up.
fn start_with_pods(builder: StackBuilder, pods: &[(&str, &str, &str)]) -> Stack {
    let s = builder
        .account("team-b", "other", &[])
        .env("POD_BINDING", "watch")
        .revocation()
        .start();
    for (ns, name, sa) in pods {
        s.api.create_pod(ns, name, sa);
    }
    wait_pods(&s.service, pods.len());
    wait_revoking(&s.service);
    s
}

/// Another replica of `s` with the pod binding check and revocation on, ready and connected as
/// a system-account user.
fn revoking_replica(s: &Stack) -> Service {
    let replica = s
        .replica()
        .env("POD_BINDING", "watch")
        .env("NATS_SYSTEM_URL", &system_url(s.nats.port))
        .spawn();
    replica.wait_ready(WAIT);
    wait_revoking(&replica);
    replica
}

/// Asserts that `c` is still connected and can still use its namespace (`subject`).
fn assert_untouched(c: &Client, subject: &str) {
    assert!(c.wait_disconnected(Duration::from_millis(200)).is_none());
    assert!(c.round_trip(subject), "{subject}");
}

/// team-a/app and team-b/other, the pod binding check on, revocation on, two pods of team-a/app
/// and one of team-b/other.
fn binding() -> Stack {
    start_with_pods(
        StackBuilder::new(),
        &[
            ("team-a", "app-1", "app"),
            ("team-a", "app-2", "app"),
            ("team-b", "other-1", "other"),
        ],
    )
}

/// Waits until `service` holds `n` pods.
fn wait_pods(service: &Service, n: usize) {
    service.wait_for(&format!("{n} pods cached"), WAIT, || {
        service.metric("nats_callout_pods") == n as f64
    });
}

/// A token of `ns/sa` bound to pod `pod` as the kubelet would get it (the pod's current uid;
/// `gone` when there is no such pod).
fn pod_token(s: &Stack, ns: &str, sa: &str, pod: &str) -> String {
    let sa_uid = s.api.uid_of(ns, sa).expect("the ServiceAccount exists");
    let pod_uid = s.api.pod_uid(ns, pod).unwrap_or_else(|| "gone".into());
    TokenBuilder::for_sa(ns, sa, &sa_uid)
        .pod(pod, &pod_uid)
        .sign(&s.key)
}

fn connect(s: &Stack, token: &str) -> Client {
    connect_token(&s.url(), token).unwrap_or_else(|e| panic!("{e}\n{}", s.service.log()))
}

fn reason(s: &Stack, reason: &str) -> f64 {
    s.service.metric(&format!(
        "nats_callout_revocations_total{{reason=\"{reason}\"}}"
    ))
}

#[test]
fn a_deleted_pods_connections_close_and_its_token_is_refused_while_its_siblings_stay() {
    let s = binding();
    let (t1, t2) = (
        pod_token(&s, "team-a", "app", "app-1"),
        pod_token(&s, "team-a", "app", "app-2"),
    );
    let (a1, a1b) = (connect(&s, &t1), connect(&s, &t1));
    let a2 = connect(&s, &t2);
    let b = connect(&s, &pod_token(&s, "team-b", "other", "other-1"));
    assert!(a1.round_trip("team-a.before"));

    s.api.delete_pod("team-a", "app-1");
    for c in [&a1, &a1b] {
        assert!(
            c.wait_disconnected(BOUND).is_some(),
            "still connected after its pod's deletion:\n{}",
            s.service.log()
        );
    }
    s.service.wait_for("the revocation's line", WAIT, || {
        s.service
            .log()
            .contains("revocation: closed 2 connection(s) of pod team-a/app-1 of app (pod_deleted)")
    });
    assert_eq!(reason(&s, "pod_deleted"), 1.0);
    // The pod's token is refused from now on; the sibling pod of the same ServiceAccount and the
    // other namespace's pod were never touched.
    s.assert_denied(&t1, "pod_not_found");
    assert!(
        s.service
            .log()
            .contains("denied team-a/app pod app-1 (client"),
        "the denial names the pod:\n{}",
        s.service.log()
    );
    assert_untouched(&a2, "team-a.sibling");
    assert_untouched(&b, "team-b.other");
}

#[test]
fn a_pod_replaced_under_its_name_refuses_the_old_token_and_admits_the_new_one() {
    // A StatefulSet's pod: deleted and created again under the same name, with a new uid.
    let s = binding();
    let old = pod_token(&s, "team-a", "app", "app-1");
    let c = connect(&s, &old);
    s.api.delete_pod("team-a", "app-1");
    s.api.create_pod("team-a", "app-1", "app");
    assert!(c.wait_disconnected(BOUND).is_some(), "{}", s.service.log());
    wait_pods(&s.service, 3);
    s.assert_denied(&old, "pod_uid_mismatch");
    let fresh = connect(&s, &pod_token(&s, "team-a", "app", "app-1"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(fresh.round_trip("team-a.again"), "{}", s.service.log());
}

#[test]
fn tokens_bound_to_no_pod_are_refused_unless_allowed_and_a_pod_must_run_as_the_token_says() {
    let s = binding();
    let sa_uid = s.api.uid_of("team-a", "app").expect("uid");
    // `kubectl create token`: bound to nothing; a node-bound token.
    let unbound = s.token("team-a", "app");
    let node_bound = TokenBuilder::for_sa("team-a", "app", &sa_uid)
        .node("node-1", "11111111-0000-4000-8000-000000000001")
        .sign(&s.key);
    s.assert_denied(&unbound, "token_not_pod_bound");
    s.assert_denied(&node_bound, "token_not_pod_bound");
    // A pod of team-b's ServiceAccount named in a team-a token: never issued by the API server.
    s.api.create_pod("team-a", "borrowed", "other");
    wait_pods(&s.service, 4);
    s.assert_denied(
        &pod_token(&s, "team-a", "app", "borrowed"),
        "pod_serviceaccount_mismatch",
    );
    // A pod that never existed.
    s.assert_denied(&pod_token(&s, "team-a", "app", "app-9"), "pod_not_found");

    let lenient = StackBuilder::new()
        .env("POD_BINDING", "watch")
        .env("NON_POD_TOKENS", "accept")
        .start();
    let c = connect(&lenient, &lenient.token("team-a", "app"));
    assert!(c.round_trip("team-a.unbound"));
}

#[test]
fn a_service_accounts_deletion_still_closes_its_connections_named_by_pod() {
    // nats-server finds users by exact name: the ServiceAccount's change must reach users named
    // `…:app:pod:<pod>:<uid>` and the plain name alike.
    let s = start_with_pods(
        StackBuilder::new().env("NON_POD_TOKENS", "accept"),
        &[("team-a", "app-1", "app"), ("team-b", "other-1", "other")],
    );
    let by_pod = connect(&s, &pod_token(&s, "team-a", "app", "app-1"));
    let plain = connect(&s, &s.token("team-a", "app"));
    let other = connect(&s, &pod_token(&s, "team-b", "other", "other-1"));
    s.api.delete_service_account("team-a", "app");
    for c in [&by_pod, &plain] {
        assert!(c.wait_disconnected(BOUND).is_some(), "{}", s.service.log());
    }
    s.service.wait_for("one line for the account", WAIT, || {
        s.service
            .log()
            .contains("revocation: closed 2 connection(s) of team-a/app (deleted)")
    });
    assert_untouched(&other, "team-b.untouched");
}

#[test]
fn a_policy_change_reaches_connections_named_by_pod() {
    let s = start_with_pods(
        StackBuilder::new().policy("annotations:\n  publish: []\n"),
        &[("team-a", "app-1", "app"), ("team-b", "other-1", "other")],
    );
    let a = connect(&s, &pod_token(&s, "team-a", "app", "app-1"));
    let b = connect(&s, &pod_token(&s, "team-b", "other", "other-1"));
    s.replace_policy("namespaces:\n  exclude: [team-a]\nannotations:\n  publish: []\n");
    assert!(a.wait_disconnected(WAIT).is_some(), "{}", s.service.log());
    assert_untouched(&b, "team-b.still-served");
}

#[test]
fn a_replica_restarted_after_the_grant_closes_the_deleted_pods_connection() {
    // Nothing is remembered between decisions: the granting replica stops (its clients stay
    // connected to nats-server), another starts, and it finds the connection by its user name.
    let mut s = binding();
    let gone = connect(&s, &pod_token(&s, "team-a", "app", "app-1"));
    let stays = connect(&s, &pod_token(&s, "team-a", "app", "app-2"));
    s.service.terminate(WAIT);
    let replica = revoking_replica(&s);
    wait_pods(&replica, 3);
    assert!(stays.round_trip("team-a.across-the-restart"));
    s.api.delete_pod("team-a", "app-1");
    assert!(gone.wait_disconnected(BOUND).is_some(), "{}", replica.log());
    assert_untouched(&stays, "team-a.stays");
    replica.wait_for("counted", WAIT, || {
        replica.metric("nats_callout_revocations_total{reason=\"pod_deleted\"}") == 1.0
    });
}

#[test]
fn readiness_waits_for_the_pod_list_and_says_so() {
    let s = StackBuilder::new().start();
    s.api.create_pod("team-a", "app-1", "app");
    s.api.fail_next_of(RequestKind::PodList, 1_000, 500, None);
    let replica = s.replica().env("POD_BINDING", "watch").spawn();
    replica.wait_for("a failed pod list", WAIT, || {
        replica.log().contains("listing Pods failed")
    });
    let (status, body) = replica.get("/readyz").expect("GET /readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("pods_synced"), "{body}");
    s.api.clear_faults();
    replica.wait_ready(Duration::from_secs(60));
    wait_pods(&replica, 1);
}

#[test]
fn a_service_account_or_namespace_named_pod_is_not_taken_for_the_pod_part_of_a_user_name() {
    // Both are valid names, and an editor may choose the first: the user names
    // `system:serviceaccount:team-a:pod:pod:p-1:<uid>` and `system:serviceaccount:pod:app:pod:…`
    // hold a `:pod:` before the pod part. Read as the pod part, their account was
    // `system:serviceaccount:team-a` and `system:serviceaccount`: the account's deletion and a
    // policy change did not reach them.
    let s = start_with_pods(
        StackBuilder::new()
            .account("team-a", "pod", &[])
            .account("pod", "app", &[])
            .policy("annotations:\n  publish: []\n"),
        &[
            ("team-a", "p-1", "pod"),
            ("pod", "app-1", "app"),
            ("team-a", "app-1", "app"),
        ],
    );
    let sa_named_pod = connect(&s, &pod_token(&s, "team-a", "pod", "p-1"));
    let ns_named_pod = connect(&s, &pod_token(&s, "pod", "app", "app-1"));
    let bystander = connect(&s, &pod_token(&s, "team-a", "app", "app-1"));

    s.api.delete_service_account("team-a", "pod");
    assert!(
        sa_named_pod.wait_disconnected(BOUND).is_some(),
        "the deleted ServiceAccount `pod`'s connection stayed:\n{}",
        s.service.log()
    );
    s.replace_policy("namespaces:\n  exclude: [pod]\nannotations:\n  publish: []\n");
    assert!(
        ns_named_pod.wait_disconnected(WAIT).is_some(),
        "the connection of namespace `pod`, no longer served, stayed:\n{}",
        s.service.log()
    );
    assert_untouched(&bystander, "team-a.untouched");
}

#[test]
fn a_pod_deleted_while_no_replica_watched_has_its_connections_closed_by_the_next_replica() {
    // A single replica without a system connection (or restarting, or upgraded) while the pod
    // goes: no replica that closes connections sees the deletion. The next one to list the pods
    // searches every connection for those of pods it does not hold, once.
    let s = StackBuilder::new().env("POD_BINDING", "watch").start();
    s.api.create_pod("team-a", "app-1", "app");
    s.api.create_pod("team-a", "app-2", "app");
    wait_pods(&s.service, 2);
    let gone = connect(&s, &pod_token(&s, "team-a", "app", "app-1"));
    let stays = connect(&s, &pod_token(&s, "team-a", "app", "app-2"));
    s.api.delete_pod("team-a", "app-1");
    wait_pods(&s.service, 1);
    assert!(gone.wait_disconnected(Duration::from_millis(500)).is_none());

    let replica = revoking_replica(&s);
    assert!(
        gone.wait_disconnected(BOUND + BOUND).is_some(),
        "the deleted pod's connection stayed:\n{}",
        replica.log()
    );
    replica.wait_for("the sweep's line", WAIT, || {
        replica.log().contains(
            "revocation: closed 1 connection(s) of pods deleted unseen or unqueued (pod_deleted)",
        )
    });
    assert_untouched(&stays, "team-a.stays");
}

#[test]
fn the_pod_binding_check_without_live_revocation_says_what_it_leaves_open() {
    // Without a system connection a deleted pod's connections are never closed: its token is
    // refused from then on, and that is all. Said at start rather than found out.
    let s = StackBuilder::new().env("POD_BINDING", "watch").start();
    assert!(
        s.service.log().contains(
            "POD_BINDING=watch without live revocation (NATS_SYSTEM_URL): a deleted pod's token is refused from then on, but the connections it has stay open"
        ),
        "{}",
        s.service.log()
    );
    let revoking = StackBuilder::new()
        .env("POD_BINDING", "watch")
        .revocation()
        .start();
    assert!(!revoking
        .service
        .log()
        .contains("POD_BINDING=watch without live revocation"));
}
