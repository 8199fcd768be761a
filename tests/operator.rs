//! Operator mode end to end: nats-server 2.15 on the configurations `keys operator` writes, the
//! service binary on its `service.env` (logging in with `callout.creds`, so every test also
//! proves the service's own connection), the Kubernetes API emulator, and clients presenting
//! service-account tokens.
//!
//! What nats-server 2.15.1 logs for each refusal met here (`[DBG]` lines need `-D`); the
//! client sees only `Authorization Violation` each time, and `JWT User "U…"` names the sentinel
//! the client presented (the default one included), not the client:
//! - The service denies (any reason): `[ERR] <client> - cid:N - authentication error - JWT User
//!   "U…"`, then `[WRN] Auth callout service returned an error: authorization failed`.
//! - The user JWT is signed for an account outside the callout account's `allowed_accounts`:
//!   the same `[ERR]` line, then `[WRN] Account "<iss>" not permitted as valid account option
//!   for auth callout for account "<AUTH>"` (`<iss>` is the key that signed the user JWT, the
//!   account's own or a signing key). The service believes it allowed the client.
//! - Sentinel creds without a token (all the `nats` crate can send with creds): no refusal of
//!   the server's; the service denies the request (`no_token`).
//! - A token without a JWT and no `default_sentinel` (all the `nats` crate can send with a
//!   token): `[ERR] … authentication error - Token "[REDACTED]"`; no callout request is made.
//! - Not a refusal but a client's violation of its permissions: `[ERR] <client> - cid:N -
//!   "<lang version>" - "<account>/APP/user:system:serviceaccount:<ns>:<name>" - Publish
//!   Violation - Subject "<subject>"`.
#![allow(deprecated)]

mod support;

use std::fs;
use std::time::Duration;

use nkeys::XKey;
use support::client::{connect_creds, connect_token, is_authorization_violation, Client};
use support::examples::python_with_nats_py;
use support::operator::{logged, Generated, OperatorStack, OperatorStackBuilder, UserSigner};

const AUTH_REQUEST: &str = "$SYS.REQ.USER.AUTH";
const SENTINEL_CONFIG: &str = "nats-memory-default-sentinel.conf";
const WAIT: Duration = Duration::from_secs(10);

/// A fresh connection of `ns/name` per probe, so one violation cannot mask the next.
fn probe(s: &OperatorStack, ns: &str, name: &str, check: impl Fn(&Client) -> bool) -> bool {
    check(&s.connect(ns, name))
}

/// team-a/app is in APP under its ServiceAccount's name, and may use `subject`, `_INBOX.>`
/// (unless `scoped`) and nothing of team-b or `$SYS`.
fn assert_placed_in_app(s: &OperatorStack, subject: &str) {
    let c = s.connect("team-a", "app");
    assert_eq!(
        s.placement(&c),
        (
            s.keys.account("APP"),
            "system:serviceaccount:team-a:app".to_string()
        )
    );
    assert!(c.round_trip(subject), "{subject}");
    for refused in [
        "team-b.orders",
        "$SYS.REQ.SERVER.PING",
        "$SYS.REQ.USER.INFO",
    ] {
        assert!(
            !probe(s, "team-a", "app", |c| c.can_publish(refused)),
            "publish {refused}"
        );
    }
    for refused in ["team-b.>", "$SYS.>", ">"] {
        assert!(
            !probe(s, "team-a", "app", |c| c.can_subscribe(refused)),
            "subscribe {refused}"
        );
    }
}

/// Whether the authorization request of a client is sealed to the generated xkey, as seen by a
/// second subscriber of the callout user (outside the service's queue group, so it gets a copy).
fn request_sealed(s: &OperatorStack) -> bool {
    let monitor = connect_creds(&s.url(), &s.keys.path("creds/callout.creds")).expect("callout");
    let requests = monitor.nc.subscribe(AUTH_REQUEST).unwrap();
    monitor.nc.flush().unwrap();
    s.connect("team-a", "app");
    let msg = requests.next_timeout(WAIT).expect("a copy of the request");
    let sender = msg.headers.as_ref().and_then(|h| h.get("Nats-Server-Xkey"));
    match sender {
        Some(server) => {
            let ours = XKey::from_seed(s.keys.read("xkey.nk").trim()).unwrap();
            let opened = ours
                .open(&msg.data, &XKey::from_public_key(server).unwrap())
                .expect("sealed to the generated xkey");
            assert!(opened.starts_with(b"eyJ"), "a JWT inside");
            true
        }
        None => {
            assert!(msg.data.starts_with(b"eyJ"), "a plain JWT");
            false
        }
    }
}

/// The start-up line naming the key that signs APP's user JWTs.
fn signing_line(s: &OperatorStack) -> String {
    let app = s.keys.account("APP");
    let log = s.service.log();
    log.lines()
        .find(|l| l.contains(&format!("clients of account {app} get user JWTs signed by")))
        .unwrap_or_else(|| panic!("no signing line:\n{log}"))
        .to_string()
}

#[test]
fn users_signed_by_the_account_key_are_placed_in_it_with_their_namespace_with_an_xkey() {
    let s = OperatorStackBuilder::new()
        .config(SENTINEL_CONFIG)
        .signer(UserSigner::Account)
        .start();
    assert!(request_sealed(&s), "sealed with the xkey");
    assert_placed_in_app(&s, "team-a.orders");
    assert!(probe(&s, "team-a", "app", |c| c.can_subscribe("_INBOX.x")));
    assert!(signing_line(&s).ends_with("signed by the account key itself"));
}

#[test]
fn users_signed_by_a_plain_signing_key_name_their_account_without_an_xkey() {
    let s = OperatorStackBuilder::new()
        .keys_args(&["--no-xkey"])
        .config(SENTINEL_CONFIG)
        .signer(UserSigner::Plain)
        .start();
    assert!(!request_sealed(&s), "--no-xkey: plain");
    assert!(
        !s.keys.path("xkey.nk").exists() && !s.keys.read("service.env").contains("XKEY"),
        "--no-xkey"
    );
    // Unsealed, the responses' signer is checked: AUTH's signing key, as service.env says.
    let callout_key = s.keys.key("accounts/AUTH.signing.nk").public_key();
    assert!(s.service.log().contains(&format!(
        "responses signed by {callout_key}, a signing key of the callout account {}",
        s.keys.account("AUTH")
    )));
    assert_placed_in_app(&s, "team-a.orders");
    let app = s.keys.account("APP");
    let plain = s.keys.key(&format!("signing-keys/{app}.nk")).public_key();
    assert!(
        signing_line(&s).ends_with(&format!("signed by its signing key {plain}")),
        "{}",
        signing_line(&s)
    );
}

#[test]
fn users_of_a_scoped_signing_key_get_what_the_scope_allows_and_nothing_of_the_policy() {
    let s = OperatorStackBuilder::new()
        .config(SENTINEL_CONFIG)
        .signer(UserSigner::Scoped)
        .start();
    assert!(
        signing_line(&s).ends_with(
            "; the key is scoped: its scope in the account JWT decides the permissions, the user JWTs carry none"
        ),
        "{}",
        signing_line(&s)
    );
    // The template `sa.{{name()}}._.>`: the space of the user's own name.
    let own = "sa.system:serviceaccount:team-a:app._";
    assert_placed_in_app(&s, &format!("{own}.orders"));
    // What the service's permissions would have granted, the scope does not.
    for refused in ["team-a.orders", "_INBOX.x"] {
        assert!(!probe(&s, "team-a", "app", |c| c.can_publish(refused)));
        assert!(!probe(&s, "team-a", "app", |c| c.can_subscribe(refused)));
    }
    // Another ServiceAccount's space, and one whose name only starts like its own.
    for refused in [
        "sa.system:serviceaccount:team-b:app._.orders",
        "sa.system:serviceaccount:team-a:app.b._.orders",
    ] {
        assert!(!probe(&s, "team-a", "app", |c| c.can_publish(refused)));
        assert!(!probe(&s, "team-a", "app", |c| c.can_subscribe(refused)));
    }
}

/// `rules` of an admin policy, each `(namespace, account public key)`.
fn policy(rules: &[(&str, String)]) -> String {
    let mut yaml = String::from("rules:\n");
    for (ns, account) in rules {
        yaml.push_str(&format!(
            "  - namespaces: [\"{ns}\"]\n    account: {account}\n"
        ));
    }
    yaml
}

#[test]
fn an_account_outside_allowed_accounts_is_refused_by_the_server_and_one_without_a_key_by_the_service(
) {
    let s = OperatorStackBuilder::new()
        .keys_args(&["--client-account", "APP2"])
        .config(SENTINEL_CONFIG)
        .account("team-n", "app", &[])
        .account("team-z", "app", &[])
        // NACK is no client account: AUTH's allowed_accounts does not list it. APP2 is, but
        // its key is taken away.
        .policy(|k: &Generated| {
            policy(&[("team-n", k.account("NACK")), ("team-z", k.account("APP2"))])
        })
        .prepare(|k: &Generated| {
            let (nack, app2) = (k.account("NACK"), k.account("APP2"));
            fs::copy(
                k.path("accounts/NACK.nk"),
                k.path(&format!("signing-keys/{nack}.nk")),
            )
            .unwrap();
            fs::remove_file(k.path(&format!("signing-keys/{app2}.nk"))).unwrap();
            Vec::new()
        })
        .start();
    let (nack, app2, auth) = (
        s.keys.account("NACK"),
        s.keys.account("APP2"),
        s.keys.account("AUTH"),
    );

    // The service signs for NACK; nats-server refuses the user JWT.
    let refused = connect_token(&s.url(), &s.token("team-n", "app"))
        .err()
        .expect("refused");
    assert!(is_authorization_violation(&refused), "{refused}");
    assert!(
        logged(
            &s.nats,
            &format!(
                "Account \"{nack}\" not permitted as valid account option for auth callout for account \"{auth}\""
            )
        ),
        "{}",
        s.nats.log()
    );
    s.service.wait_for("the service's allow", WAIT, || {
        s.service.log().contains("allowed team-n/app")
    });

    // No key for APP2: the service denies, and says so at start.
    s.assert_denied(&s.token("team-z", "app"), "account_key_missing");
    let log = s.service.log();
    assert!(log.contains(&format!(
        "the policy places namespaces in account {app2}, but NATS_ACCOUNT_SIGNING_KEYS_DIR has no key for it"
    )), "{log}");
    assert!(
        log.contains("denied team-z/app (client")
            && log.contains(&format!("no signing key for account {app2}")),
        "{log}"
    );
    assert!(logged(
        &s.nats,
        "Auth callout service returned an error: authorization failed"
    ));
    // The default account still works.
    assert_placed_in_app(&s, "team-a.orders");
}

#[test]
fn namespaces_placed_in_two_accounts_by_the_policy_cannot_see_each_other() {
    let shared = [
        ("nats.io/allowed-pub-subjects", "shared.>"),
        ("nats.io/allowed-sub-subjects", "shared.>"),
    ];
    let s = OperatorStackBuilder::new()
        .keys_args(&["--client-account", "APP2"])
        .config(SENTINEL_CONFIG)
        .account("team-a", "peer", &shared)
        .account("team-b", "app", &shared)
        .policy(|k: &Generated| {
            format!(
                r#"
annotations:
  publish: ["shared.>"]
  subscribe: ["shared.>"]
rules:
  - namespaces: ["team-b"]
    account: {}
    annotations:
      publish: ["shared.>"]
      subscribe: ["shared.>"]
"#,
                k.account("APP2")
            )
        })
        .start();
    let a = s.connect("team-a", "peer");
    let b = s.connect("team-b", "app");
    assert_eq!(s.placement(&a).0, s.keys.account("APP"));
    assert_eq!(s.placement(&b).0, s.keys.account("APP2"));
    assert!(b.round_trip("team-b.x"), "APP2's user JWTs are honoured");

    let a_inbox = a.nc.subscribe("shared.>").unwrap();
    let b_inbox = b.nc.subscribe("shared.>").unwrap();
    a.nc.flush().unwrap();
    b.nc.flush().unwrap();
    for (from, to_own, to_other, text) in [
        (s.connect("team-a", "peer"), &a_inbox, &b_inbox, "from APP"),
        (s.connect("team-b", "app"), &b_inbox, &a_inbox, "from APP2"),
    ] {
        from.nc.publish("shared.news", text).unwrap();
        from.nc.flush().unwrap();
        assert_eq!(to_own.next_timeout(WAIT).unwrap().data, text.as_bytes());
        assert!(
            to_other.next_timeout(Duration::from_millis(500)).is_err(),
            "{text} crossed accounts"
        );
    }
    // Nor can one ask the other: team-b's namespace is not team-a's to publish to.
    assert!(!a.can_publish("team-b.x"));
}

/// Runs nats-py (the version the Python example pins) connecting to `url` with `creds` and
/// `token` together; returns what the script printed.
fn nats_py(url: &str, creds: &std::path::Path, token: &str) -> String {
    let script = r#"
import asyncio, sys
import nats

async def main(url, creds, token):
    errors = []
    async def on_error(e):
        errors.append(str(e))
    try:
        nc = await nats.connect(url, user_credentials=creds, token=token, error_cb=on_error,
                                allow_reconnect=False, connect_timeout=5)
    except Exception as e:
        print("refused:", type(e).__name__, e)
        return
    sub = await nc.subscribe("team-a.py")
    await nc.publish("team-a.py", b"hello")
    msg = await sub.next_msg(timeout=5)
    print("received:", msg.data.decode())
    await nc.publish("team-b.py", b"x")
    await nc.flush()
    await asyncio.sleep(0.5)
    print("errors:", errors)
    await nc.close()

asyncio.run(main(*sys.argv[1:4]))
"#;
    let out = std::process::Command::new(python_with_nats_py())
        .arg("-c")
        .arg(script)
        .arg(url)
        .arg(creds)
        .arg(token)
        .output()
        .expect("run python");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn an_explicit_sentinel_carries_the_token_with_nats_py_and_not_with_the_nats_crate() {
    // No default_sentinel: a client must present the sentinel's creds itself.
    let s = OperatorStackBuilder::new().start();
    let sentinel = s.keys.path("creds/sentinel.creds");
    let token = s.token("team-a", "app");

    // nats-py sends the creds' JWT and the token in one CONNECT.
    let out = nats_py(&s.url(), &sentinel, &token);
    assert!(
        out.contains("received: hello"),
        "{out}\n{}",
        s.service.log()
    );
    assert!(
        out.contains("permissions violation for publish to \"team-b.py\""),
        "{out}"
    );
    assert!(s.service.log().contains("allowed team-a/app"));
    let stranger = s.token("team-q", "nobody");
    let out = nats_py(&s.url(), &sentinel, &stranger);
    assert!(out.contains("refused:"), "{out}");

    // The nats crate sends one credential: the sentinel alone reaches the service without a
    // token, and a token alone is refused by the server before any callout.
    let before = s.service.decisions("deny", "no_token");
    let refused = connect_creds(&s.url(), &sentinel).err().expect("refused");
    assert!(is_authorization_violation(&refused), "{refused}");
    s.service.wait_for("no_token counted", WAIT, || {
        s.service.decisions("deny", "no_token") > before
    });
    let requests = s
        .service
        .metric("nats_callout_decisions_total{result=\"deny\",reason=\"no_token\"}");
    let refused = connect_token(&s.url(), &token).err().expect("refused");
    assert!(is_authorization_violation(&refused), "{refused}");
    assert!(logged(
        &s.nats,
        "authentication error - Token \"[REDACTED]\""
    ));
    assert_eq!(
        s.service
            .metric("nats_callout_decisions_total{result=\"deny\",reason=\"no_token\"}"),
        requests
    );
}
