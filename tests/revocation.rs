//! Live revocation (`NATS_SYSTEM_URL`) on a real nats-server with the API emulator: a
//! ServiceAccount deleted, re-created or re-annotated loses its open connections within seconds;
//! they are refused, or get the new permissions, when they reconnect; other accounts' clients are
//! untouched; a replica that started after the grant still finds the connection.
#![allow(deprecated)] // the tests' NATS client is the `nats` sync crate

mod support;

use std::time::Duration;

use support::client::{connect_token, Client};
use support::nats::{free_port, NatsServer};
use support::stack::{system_url, wait_revoking, Stack, StackBuilder};

/// How long a revoked connection may stay open.
const BOUND: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(15);

/// team-a/app (may publish `shared.x` by annotation) and team-b/other, with revocation on.
fn revoking() -> Stack {
    StackBuilder::new()
        .account("team-b", "other", &[])
        .policy("annotations:\n  publish: [\"shared.>\"]\n")
        .revocation()
        .start()
}

fn revoked(s: &Stack) -> f64 {
    s.service.metric("nats_callout_connections_revoked_total")
}

fn reason(s: &Stack, reason: &str) -> f64 {
    s.service.metric(&format!(
        "nats_callout_revocations_total{{reason=\"{reason}\"}}"
    ))
}

/// A revoking stack where team-c/svc may publish `shared.x` by annotation, within the policy's
/// `shared.>`, and team-b/other has no annotation.
fn annotated() -> Stack {
    let s = StackBuilder::new()
        .account("team-b", "other", &[])
        .account(
            "team-c",
            "svc",
            &[("nats.io/allowed-pub-subjects", "shared.x")],
        )
        .policy("annotations:\n  publish: [\"shared.>\"]\n")
        .revocation()
        .start();
    wait_revoking(&s.service);
    s
}

fn connect(s: &Stack, ns: &str, name: &str) -> Client {
    connect_token(&s.url(), &s.token(ns, name))
        .unwrap_or_else(|e| panic!("{ns}/{name}: {e}\n{}", s.service.log()))
}

#[test]
fn a_deleted_account_loses_its_connections_and_is_refused_on_reconnect() {
    let s = revoking();
    wait_revoking(&s.service);
    let (a1, a2) = (connect(&s, "team-a", "app"), connect(&s, "team-a", "app"));
    let b = connect(&s, "team-b", "other");
    let token = s.token("team-a", "app");

    s.api.delete_service_account("team-a", "app");
    for a in [&a1, &a2] {
        assert!(
            a.wait_disconnected(BOUND).is_some(),
            "still connected after the deletion:\n{}",
            s.service.log()
        );
    }
    s.service
        .wait_for("both counted", WAIT, || revoked(&s) >= 2.0);
    assert_eq!(revoked(&s), 2.0);
    assert_eq!(reason(&s, "deleted"), 1.0);
    s.service.wait_for("the revocation's line", WAIT, || {
        s.service
            .log()
            .contains("revocation: closed 2 connection(s) of team-a/app (deleted)")
    });
    // The reconnect is refused; the other namespace's client never noticed.
    s.assert_denied(&token, "serviceaccount_not_found");
    assert!(b.round_trip("team-b.still-here"));
    assert!(b.wait_disconnected(Duration::from_millis(200)).is_none());
}

#[test]
fn a_recreated_account_loses_the_old_tokens_connections() {
    let s = revoking();
    wait_revoking(&s.service);
    let old_token = s.token("team-a", "app");
    let a = connect(&s, "team-a", "app");
    s.api.delete_service_account("team-a", "app");
    s.api.create_service_account("team-a", "app", &[]);
    assert!(a.wait_disconnected(BOUND).is_some(), "{}", s.service.log());
    // Deleted, then created again: whichever the watch delivered, the old uid's token is out.
    s.assert_denied(&old_token, "serviceaccount_uid_mismatch");
    // A token of the new account is let in (and not closed by the revocation that came before).
    let fresh = connect(&s, "team-a", "app");
    std::thread::sleep(Duration::from_secs(1));
    assert!(fresh.round_trip("team-a.again"), "{}", s.service.log());
}

#[test]
fn narrowed_annotations_close_the_connection_and_the_reconnect_gets_the_new_grant() {
    let s = annotated();
    let c = connect(&s, "team-c", "svc");
    assert!(c.can_publish("shared.x"));
    // An unrelated annotation changes nothing: no revocation.
    s.api.update_annotations(
        "team-c",
        "svc",
        &[
            ("nats.io/allowed-pub-subjects", "shared.x"),
            ("owner", "team-c"),
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        reason(&s, "annotations_changed"),
        0.0,
        "{}",
        s.service.log()
    );
    assert!(c.wait_disconnected(Duration::from_millis(100)).is_none());

    s.api
        .update_annotations("team-c", "svc", &[("owner", "team-c")]);
    assert!(c.wait_disconnected(BOUND).is_some(), "{}", s.service.log());
    s.service
        .wait_for("counted", WAIT, || reason(&s, "annotations_changed") >= 1.0);
    // The client reconnected by itself and now has the narrower grant.
    s.service.wait_for("the reconnect's grant", WAIT, || {
        s.service.decisions("allow", "granted") >= 2.0
    });
    assert!(!c.can_publish("shared.x"), "{}", s.service.log());
    assert!(c.round_trip("team-c.own"), "its namespace stays");
}

#[test]
fn a_replica_that_never_granted_the_connection_still_closes_it() {
    // Stateless: the first replica grants; a second one, started afterwards with revocation, is
    // the only one that closes connections. It finds the client by its user name on the server.
    let s = StackBuilder::new().account("team-b", "other", &[]).start();
    let a = connect(&s, "team-a", "app");
    let b = connect(&s, "team-b", "other");
    let replica = s
        .replica()
        .env("NATS_SYSTEM_URL", &system_url(s.nats.port))
        .spawn();
    replica.wait_ready(WAIT);
    wait_revoking(&replica);
    s.api.delete_service_account("team-a", "app");
    assert!(a.wait_disconnected(BOUND).is_some(), "{}", replica.log());
    replica.wait_for("counted", WAIT, || {
        replica.metric("nats_callout_connections_revoked_total") >= 1.0
    });
    assert!(b.round_trip("team-b.untouched"));
    // The first replica has no system connection: it counts nothing.
    assert_eq!(revoked(&s), 0.0);
}

#[test]
fn without_a_system_account_user_the_failure_is_counted_and_says_why() {
    // A user of an ordinary account: nats-server does not answer its $SYS requests.
    let s = StackBuilder::new()
        .revocation_via(|port| format!("nats://callout:callout-secret@127.0.0.1:{port}"))
        .start();
    let _a = connect(&s, "team-a", "app");
    s.api.delete_service_account("team-a", "app");
    s.service.wait_for("a counted failure", WAIT, || {
        s.service.metric("nats_callout_revocation_failures_total") >= 1.0
    });
    let log = s.service.log();
    assert!(
        log.contains("revocation: the user of NATS_SYSTEM_URL cannot close connections")
            && log.contains("it must be a user of nats-server's system account")
            && log.contains("cannot look up the connections of team-a/app (deleted)"),
        "{log}"
    );
    assert!(!log.contains("revocation: connected to nats"), "{log}");
}

#[test]
fn a_client_on_another_server_of_the_cluster_is_closed_too() {
    // Two routed servers; the service is connected to the first only. A client of the second
    // server is authorized through the route, and closed there by the KICK of its own server.
    let (route_a, route_b) = (free_port(), free_port());
    let cluster = move |listen: u16, other: u16| {
        format!(
            "cluster {{\n  name: \"revocation\"\n  listen: \"127.0.0.1:{listen}\"\n  routes: [ \"nats-route://127.0.0.1:{other}\" ]\n}}\n"
        )
    };
    let s = StackBuilder::new()
        .account("team-b", "other", &[])
        .revocation()
        .nats_config(move |config| config + &cluster(route_a, route_b))
        .start();
    let port_b = free_port();
    let config_b = s
        .nats
        .config_text()
        .replace(
            &format!("127.0.0.1:{}\"", s.nats.port),
            &format!("127.0.0.1:{port_b}\""),
        )
        .replace(&format!("test-{}", s.nats.port), &format!("test-{port_b}"))
        .replace(
            &format!("listen: \"127.0.0.1:{route_a}\""),
            &format!("listen: \"127.0.0.1:{route_b}\""),
        )
        .replace(
            &format!("nats-route://127.0.0.1:{route_b}"),
            &format!("nats-route://127.0.0.1:{route_a}"),
        );
    let server_b = NatsServer::start_with_config(port_b, config_b);
    s.service
        .wait_for("the route between the servers", WAIT, || {
            server_b.log().contains("Route connection created")
        });
    wait_revoking(&s.service);
    // The route carries the callout's subscription to server B a moment after it is up.
    let token = s.token("team-a", "app");
    let mut on_b = None;
    for _ in 0..50 {
        if let Ok(c) = connect_token(&server_b.url(), &token) {
            on_b = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let on_b = on_b.unwrap_or_else(|| panic!("no client on server B:\n{}", server_b.log()));
    let on_a = connect(&s, "team-a", "app");
    let other_on_b = connect_token(&server_b.url(), &s.token("team-b", "other")).expect("team-b");

    s.api.delete_service_account("team-a", "app");
    assert!(
        on_b.wait_disconnected(BOUND).is_some(),
        "{}",
        s.service.log()
    );
    assert!(
        on_a.wait_disconnected(BOUND).is_some(),
        "{}",
        s.service.log()
    );
    s.service
        .wait_for("both counted", WAIT, || revoked(&s) >= 2.0);
    assert!(
        server_b.log().contains("Kicked"),
        "server B closed its client"
    );
    assert!(other_on_b.round_trip("team-b.on-b"));
}

#[test]
fn a_deleted_namespace_closes_the_connections_of_all_its_accounts() {
    // Many changes at once are searched together: every client of the namespace goes, the
    // other namespace's stays.
    let mut b = StackBuilder::new()
        .account("team-b", "other", &[])
        .revocation();
    let names: Vec<String> = (0..6).map(|i| format!("svc-{i}")).collect();
    for name in &names {
        b = b.account("team-n", name, &[]);
    }
    let s = b.start();
    wait_revoking(&s.service);
    let clients: Vec<Client> = names.iter().map(|n| connect(&s, "team-n", n)).collect();
    let other = connect(&s, "team-b", "other");
    for name in &names {
        s.api.delete_service_account("team-n", name);
    }
    for c in &clients {
        assert!(c.wait_disconnected(BOUND).is_some(), "{}", s.service.log());
    }
    s.service
        .wait_for("all counted", WAIT, || revoked(&s) >= 6.0);
    assert_eq!(reason(&s, "deleted"), 6.0);
    assert!(other.round_trip("team-b.untouched"));
}

#[test]
fn a_narrower_policy_closes_exactly_the_connections_whose_grant_it_changes() {
    // team-c/svc may publish shared.x through its annotation while the policy allows shared.>;
    // team-b/other has no annotation: the policy's annotation patterns change nothing for it.
    let s = annotated();
    let narrowed = connect(&s, "team-c", "svc");
    let unchanged = connect(&s, "team-b", "other");
    assert!(narrowed.can_publish("shared.x"));
    s.replace_policy("annotations:\n  publish: []\n");
    // The policy file is polled every 2 s and read once it stood still for one more poll.
    let policy_bound = BOUND + Duration::from_secs(6);
    assert!(
        narrowed.wait_disconnected(policy_bound).is_some(),
        "{}",
        s.service.log()
    );
    // The line comes once the server has answered the KICK, after the client saw the close.
    s.service.wait_for("the revocation's line", WAIT, || {
        s.service
            .log()
            .contains("closed 1 connection(s) whose grant it changes")
    });
    assert_eq!(reason(&s, "policy_changed"), 1.0);
    assert!(unchanged
        .wait_disconnected(Duration::from_millis(300))
        .is_none());
    assert!(unchanged.round_trip("team-b.untouched"));
    // The client came back by itself with the narrower grant.
    s.service.wait_for("the reconnect's grant", WAIT, || {
        s.service.decisions("allow", "granted") >= 3.0
    });
    assert!(!narrowed.can_publish("shared.x"), "{}", s.service.log());

    // A policy that no longer serves a namespace closes its connections; the reconnect is refused.
    let token = s.token("team-b", "other");
    s.replace_policy("namespaces:\n  exclude: [team-b]\nannotations:\n  publish: []\n");
    assert!(
        unchanged.wait_disconnected(policy_bound).is_some(),
        "{}",
        s.service.log()
    );
    s.assert_denied(&token, "namespace_not_allowed");
}

#[test]
fn operator_mode_closes_connections_through_the_system_accounts_creds() {
    // The system-account user of `keys operator` (creds/sys.creds) finds and closes the deleted
    // account's connection; the reconnect is refused.
    let s = support::operator::OperatorStackBuilder::new()
        .config("nats-memory-default-sentinel.conf")
        .account("team-b", "other", &[])
        .revocation()
        .start();
    wait_revoking(&s.service);
    let a = s.connect("team-a", "app");
    let b = s.connect("team-b", "other");
    let token = s.token("team-a", "app");
    s.api.delete_service_account("team-a", "app");
    assert!(a.wait_disconnected(BOUND).is_some(), "{}", s.service.log());
    s.service.wait_for("the revocation's line", WAIT, || {
        s.service
            .log()
            .contains("revocation: closed 1 connection(s) of team-a/app (deleted)")
    });
    s.assert_denied(&token, "serviceaccount_not_found");
    assert!(b.wait_disconnected(Duration::from_millis(300)).is_none());
}

#[test]
fn a_user_pass_client_of_a_deleted_account_is_closed_whatever_user_name_it_gave() {
    // MQTT-style clients present the token as the password of a user name of their choice; the
    // name must not hide the connection from the revocation's search (nor make it another's).
    let s = revoking();
    wait_revoking(&s.service);
    let token = s.token("team-a", "app");
    let plain = support::client::connect_user_pass(&s.url(), "device-1", &token)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.service.log()));
    let disguised =
        support::client::connect_user_pass(&s.url(), "system:serviceaccount:team-b:other", &token)
            .unwrap_or_else(|e| panic!("{e}\n{}", s.service.log()));
    let b = connect(&s, "team-b", "other");
    s.api.delete_service_account("team-a", "app");
    for c in [&plain, &disguised] {
        assert!(
            c.wait_disconnected(BOUND).is_some(),
            "a user/pass client kept its grant:\n{}",
            s.service.log()
        );
    }
    assert!(b.round_trip("team-b.untouched"));
}

#[test]
fn a_client_naming_itself_after_another_account_is_not_closed_with_it() {
    // The user name a client gives is not what nats-server searches by: the user JWT's name is.
    let s = revoking();
    wait_revoking(&s.service);
    let disguised = support::client::connect_user_pass(
        &s.url(),
        "system:serviceaccount:team-b:other",
        &s.token("team-a", "app"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", s.service.log()));
    let b = connect(&s, "team-b", "other");
    s.api.delete_service_account("team-b", "other");
    assert!(b.wait_disconnected(BOUND).is_some(), "{}", s.service.log());
    s.service.wait_for("counted", WAIT, || revoked(&s) >= 1.0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(revoked(&s), 1.0, "{}", s.service.log());
    assert!(disguised.round_trip("team-a.untouched"));
    assert!(disguised
        .wait_disconnected(Duration::from_millis(100))
        .is_none());
}

/// A bare NATS connection presenting `token` (no client library: a thousand of them are cheap).
fn raw_connect(url: &str, token: &str) -> std::net::TcpStream {
    try_raw_connect(url, token).expect("refused")
}

/// [`raw_connect`], `None` when refused.
fn try_raw_connect(url: &str, token: &str) -> Option<std::net::TcpStream> {
    use std::io::{BufRead, BufReader, Write};
    let addr = url.trim_start_matches("nats://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut info = String::new();
    r.read_line(&mut info).unwrap();
    assert!(info.starts_with("INFO "), "{info}");
    let connect = serde_json::json!({"verbose": false, "pedantic": false, "protocol": 1, "auth_token": token});
    write!(s, "CONNECT {connect}\r\nPING\r\n").unwrap();
    let mut line = String::new();
    let _ = r.read_line(&mut line);
    (line == "PONG\r\n").then_some(s)
}

/// Whether the server closed `s` within `within` (it sends nothing else to an idle client).
fn closed(s: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a PING, or an -ERR before the close
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn more_connections_of_one_account_than_a_connz_page_are_all_closed() {
    // nats-server answers CONNZ 1024 connections at a time: the rest are on later pages.
    let s = revoking();
    wait_revoking(&s.service);
    let token = s.token("team-a", "app");
    let mut many: Vec<std::net::TcpStream> =
        (0..1100).map(|_| raw_connect(&s.url(), &token)).collect();
    let b = connect(&s, "team-b", "other");
    s.api.delete_service_account("team-a", "app");
    s.service
        .wait_for("all counted", Duration::from_secs(60), || {
            revoked(&s) >= 1100.0
        });
    let open = many
        .iter_mut()
        .filter(|c| !closed(&mut (*c).try_clone().unwrap(), Duration::from_millis(50)))
        .count();
    assert_eq!(
        open,
        0,
        "{}",
        s.service
            .log()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(revoked(&s), 1100.0);
    assert!(b.round_trip("team-b.untouched"));
}

#[test]
fn the_system_users_password_is_never_logged() {
    // At trace, refused (a wrong password) and accepted, through a revocation.
    let refused = StackBuilder::new()
        .revocation_via(|port| format!("nats://sys:Wrong-Sys-Pass@127.0.0.1:{port}"))
        .env("LOG_LEVEL", "trace")
        .start();
    let _a = connect(&refused, "team-a", "app");
    refused.api.delete_service_account("team-a", "app");
    refused.service.wait_for("a counted failure", WAIT, || {
        refused
            .service
            .metric("nats_callout_revocation_failures_total")
            >= 1.0
    });
    let log = refused.service.log();
    assert!(log.contains("cannot connect to nats"), "{log}");
    assert!(!log.contains("Wrong-Sys-Pass"), "{log}");

    let s = StackBuilder::new()
        .revocation()
        .env("LOG_LEVEL", "trace")
        .start();
    let a = connect(&s, "team-a", "app");
    s.api.delete_service_account("team-a", "app");
    assert!(a.wait_disconnected(BOUND).is_some(), "{}", s.service.log());
    s.service.wait_for("counted", WAIT, || revoked(&s) >= 1.0);
    let log = s.service.log();
    assert!(log.contains("revocation: connected to nats"), "{log}");
    assert!(!log.contains("sys-secret"), "{log}");
}

#[test]
fn a_grant_in_flight_when_the_account_is_deleted_does_not_outlive_the_revocation() {
    // Clients connect without pause while the account is deleted: one whose callout answer was
    // decided just before the deletion and reached nats-server after the revocation's search
    // would keep the deleted account's grant.
    let s = revoking();
    wait_revoking(&s.service);
    let token = s.token("team-a", "app");
    let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (url, token, open, stop) = (s.url(), token.clone(), open.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Some(c) = try_raw_connect(&url, &token) {
                        open.lock().unwrap().push(c);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    s.api.delete_service_account("team-a", "app");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    std::thread::sleep(BOUND);
    let open = open.lock().unwrap();
    let still = open
        .iter()
        .filter(|c| !closed(&mut (*c).try_clone().unwrap(), Duration::from_millis(20)))
        .count();
    assert_eq!(
        still,
        0,
        "{still} of {} connections of the deleted account still open",
        open.len()
    );
}

#[test]
fn connections_closed_by_the_client_during_the_search_do_not_hide_others() {
    // CONNZ pages by offset over connections sorted by cid: a client that closes some of its
    // oldest connections while the revocation reads the first page shifts the next page past
    // as many of its others, which would keep the deleted account's grant.
    let s = revoking();
    wait_revoking(&s.service);
    let token = s.token("team-a", "app");
    let mut many: Vec<std::net::TcpStream> =
        (0..1300).map(|_| raw_connect(&s.url(), &token)).collect();
    let rest = many.split_off(300);
    s.api.delete_service_account("team-a", "app");
    // The oldest go, one every 2 ms, from the moment of the deletion.
    for c in many {
        drop(c);
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(BOUND);
    let open = rest
        .iter()
        .filter(|c| !closed(&mut (*c).try_clone().unwrap(), Duration::from_millis(20)))
        .count();
    assert_eq!(
        open,
        0,
        "{open} connections of the deleted account still open:\n{}",
        s.service
            .log()
            .lines()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
