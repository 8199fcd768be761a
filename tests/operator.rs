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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nkeys::{KeyPair, XKey};
use serde_json::json;

use nats_k8s_oidc_callout::callout::jwt::decode_verified;
use support::client::{
    bare_connect, connect_creds, connect_token, is_authorization_violation, Client,
};
use support::examples::python_with_nats_py;
use support::operator::{logged, now, Generated, OperatorStack, OperatorStackBuilder, UserSigner};
use support::stack::write_atomically;

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

// ---------------------------------------------------------------------------------------------
// Rotation without a restart (full resolver: the system user pushes account JWTs).
//
// nats-server seals each request to the xkey that the callout account's JWT names at that
// moment, and opens the answer with the same key. It accepts an unsealed answer signed by the
// callout account's key or by a key listed in the account JWT's `signing_keys` (a sealed answer's
// signer is not checked). The service re-reads a key file within about 4 s of its change (2 s
// polls, read once it stayed the same for one more poll); a replaced xkey still opens requests
// until the next rotation. Hence the order: whatever the service must accept (a new xkey) or
// the server must accept (a new signing key) is in place before the other side starts using it.
//
// Procedure (AUTH is the callout account; S1 the signing key in NATS_CALLOUT_SIGNING_KEY_FILE,
// as `keys operator` sets it up with NATS_CALLOUT_ACCOUNT; X1 the xkey in NATS_XKEY_SEED_FILE):
//  1. Generate the new keys: a curve key X2 (`SX…`) and an account-type nkey S2 (`SA…`).
//  2. The operator re-signs AUTH's JWT with S2 added to `signing_keys` (S1 kept), xkey still X1,
//     and pushes it as the system user: `$SYS.REQ.CLAIMS.UPDATE` with the JWT as the body
//     (answer `{"data":{"code":200,"message":"jwt updated"}}`).
//  3. Replace the seeds in the service's Secret: X2 in NATS_XKEY_SEED_FILE, S2 in
//     NATS_CALLOUT_SIGNING_KEY_FILE. Wait until EVERY replica has logged `key files re-read:
//     responses signed by <S2> (signing key of <AUTH>); …; xkey <X2>` (or its
//     `nats_callout_key_reloads_total{result="success"}` went up): a mounted Secret changes when
//     the kubelet syncs it (up to a minute or two), so wait for the log, not a fixed time. The
//     replicas now sign with S2 (accepted: listed) and open requests sealed to X1 or X2.
//  4. The operator re-signs AUTH's JWT with xkey X2 and S1 dropped from `signing_keys`, and
//     pushes it. From then on requests are sealed to X2, and S1 signs no unsealed answer nats-server
//     accepts.
// Either rotation alone is the same steps without the other key. Measured here: no client
// refused in either order-respecting run. Out of order, clients are refused until the service
// re-reads its file: the AUTH JWT naming X2 pushed before the service has X2 (every client
// refused, nats-server logs `Auth callout violation: "no reason supplied"`, the service `denied:
// sealed request does not open with the configured xkey`), or, unsealed, the service signing with
// a key AUTH's JWT does not list (`Auth callout signing key is unknown`).

/// Most attempts one connect loop makes, and the longest it runs.
const LOOP_ATTEMPTS: usize = 5000;
const LOOP_LIMIT: Duration = Duration::from_secs(180);

/// One connection attempt of a [`ConnectLoop`].
struct Attempt {
    at: Instant,
    refusal: Option<String>,
}

/// A client of team-a/app connecting again and again (each connection closed at once) until
/// stopped, at most [`LOOP_ATTEMPTS`] times and for at most [`LOOP_LIMIT`].
struct ConnectLoop {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    handle: std::thread::JoinHandle<Vec<Attempt>>,
}

impl ConnectLoop {
    fn start(s: &OperatorStack) -> ConnectLoop {
        let (url, token) = (s.url(), s.token("team-a", "app"));
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let (stop2, count2) = (stop.clone(), count.clone());
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let mut attempts = Vec::new();
            while !stop2.load(Ordering::SeqCst)
                && attempts.len() < LOOP_ATTEMPTS
                && started.elapsed() < LOOP_LIMIT
            {
                let refusal = match bare_connect(&url, &token) {
                    Ok(refusal) => refusal,
                    Err(e) => Some(e.to_string()),
                };
                attempts.push(Attempt {
                    at: Instant::now(),
                    refusal,
                });
                count2.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
            attempts
        });
        ConnectLoop {
            stop,
            count,
            handle,
        }
    }

    /// Waits until `n` more attempts were made (clients kept connecting across a step).
    fn wait_attempts(&self, n: usize) {
        let target = self.count.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + WAIT;
        while self.count.load(Ordering::SeqCst) < target {
            assert!(Instant::now() < deadline, "the connect loop stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("connect loop")
    }
}

/// The refusals among `attempts`, and the time from the first to the last.
fn refusals(attempts: &[Attempt]) -> (Vec<&Attempt>, Duration) {
    let refused: Vec<&Attempt> = attempts.iter().filter(|a| a.refusal.is_some()).collect();
    let window = match (refused.first(), refused.last()) {
        (Some(first), Some(last)) => last.at - first.at,
        _ => Duration::ZERO,
    };
    (refused, window)
}

/// Asserts that none of `attempts` was refused, and reports how many there were.
fn assert_none_refused(s: &OperatorStack, attempts: Vec<Attempt>, what: &str) {
    let (refused, _) = refusals(&attempts);
    if let Some(first) = refused.first() {
        panic!(
            "{what}: {} of {} clients refused: {:?}\n{}",
            refused.len(),
            attempts.len(),
            first.refusal,
            s.nats.log()
        );
    }
    eprintln!("{what}: {} clients, none refused", attempts.len());
}

/// Pushes AUTH's JWT re-signed by the operator with `signing_keys` and `xkey`.
fn push_auth(s: &OperatorStack, signing_keys: &[String], xkey: &str) {
    let jwt = s.keys.resigned_account("AUTH", |c| {
        c["nats"]["signing_keys"] = json!(signing_keys);
        c["nats"]["authorization"]["xkey"] = json!(xkey);
        c["iat"] = json!(now());
    });
    let answer = s.push_account(&jwt);
    assert_eq!(answer["data"]["code"], 200, "{answer}");
    assert_eq!(answer["data"]["message"], "jwt updated");
}

/// Replaces the seed in `rel` as the kubelet swaps a Secret's file.
fn swap_seed(s: &OperatorStack, rel: &str, seed: &str) {
    write_atomically(&s.keys.path(rel), seed);
}

/// Waits until the service logged a re-read of its key files whose description holds every
/// one of `needles`.
fn wait_reread(s: &OperatorStack, needles: &[&str]) {
    s.service.wait_for("the key files re-read", WAIT, || {
        s.service
            .log()
            .lines()
            .any(|l| l.contains("key files re-read:") && needles.iter().all(|n| l.contains(n)))
    });
}

fn seed(key: &KeyPair) -> String {
    key.seed().expect("seed")
}

#[test]
fn rotating_the_xkey_and_the_response_key_in_order_refuses_no_client() {
    let s = OperatorStackBuilder::new()
        .config("nats-full.conf")
        .default_sentinel()
        .start();
    let s1 = s.keys.key("accounts/AUTH.signing.nk").public_key();
    let x1 = XKey::from_seed(s.keys.read("xkey.nk").trim()).unwrap();
    let held = s.connect("team-a", "app");
    let monitor = connect_creds(&s.url(), &s.keys.path("creds/callout.creds")).unwrap();
    let requests = monitor.nc.subscribe(AUTH_REQUEST).unwrap();
    monitor.nc.flush().unwrap();

    let clients = ConnectLoop::start(&s);
    clients.wait_attempts(20);
    // 1. New keys.
    let (x2, s2) = (XKey::new(), KeyPair::new_account());
    // 2. AUTH lists the new response key beside the old one.
    push_auth(&s, &[s1.clone(), s2.public_key()], &x1.public_key());
    clients.wait_attempts(20);
    // 3. The service gets both new seeds and re-reads them.
    swap_seed(&s, "xkey.nk", &x2.seed().unwrap());
    swap_seed(&s, "accounts/AUTH.signing.nk", &seed(&s2));
    wait_reread(
        &s,
        &[
            &format!("responses signed by {}", s2.public_key()),
            &format!("xkey {}", x2.public_key()),
        ],
    );
    clients.wait_attempts(20);
    // 4. AUTH names the new xkey and drops the old response key.
    push_auth(&s, &[s2.public_key()], &x2.public_key());
    clients.wait_attempts(20);
    assert_none_refused(&s, clients.finish(), "in-order rotation");
    // Requests are now sealed to X2, and the client connected before is still there.
    while requests.try_next().is_some() {}
    s.connect("team-a", "app");
    let msg = requests.next_timeout(WAIT).unwrap();
    let server = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Server-Xkey"))
        .unwrap();
    let server = XKey::from_public_key(server).unwrap();
    assert!(x2.open(&msg.data, &server).is_ok() && x1.open(&msg.data, &server).is_err());
    assert!(held.round_trip("team-a.after-rotation"));

    // Out of order: AUTH names X3 before the service has it. Every client is refused until
    // the service re-reads its file.
    let x3 = XKey::new();
    let clients = ConnectLoop::start(&s);
    clients.wait_attempts(10);
    push_auth(&s, &[s2.public_key()], &x3.public_key());
    clients.wait_attempts(20);
    swap_seed(&s, "xkey.nk", &x3.seed().unwrap());
    wait_reread(&s, &[&format!("xkey {}", x3.public_key())]);
    clients.wait_attempts(20);
    let attempts = clients.finish();
    let (refused, window) = refusals(&attempts);
    assert!(!refused.is_empty(), "the JWT pushed first refuses clients");
    assert!(
        attempts.last().is_some_and(|a| a.refusal.is_none()),
        "and then no more"
    );
    eprintln!(
        "xkey pushed before the service had it: {} of {} clients refused over {window:?}",
        refused.len(),
        attempts.len()
    );
    assert!(s
        .nats
        .log()
        .contains("Auth callout violation: \"no reason supplied\""));
    assert!(s
        .service
        .log()
        .contains("denied: sealed request does not open with the configured xkey"));
}

#[test]
fn rotating_the_response_key_unsealed_refuses_no_client_and_revokes_the_old_key() {
    let s = OperatorStackBuilder::new()
        .keys_args(&["--no-xkey"])
        .config("nats-full.conf")
        .default_sentinel()
        .start();
    let old = s.keys.key("accounts/AUTH.signing.nk");
    let auth = s.keys.account("AUTH");
    // A second callout user sees the requests and, unsealed, the answers on the server's inbox.
    let monitor = connect_creds(&s.url(), &s.keys.path("creds/callout.creds")).unwrap();
    let answers = monitor.nc.subscribe("$SYS._INBOX.>").unwrap();
    monitor.nc.flush().unwrap();
    let answer_issuer = || {
        while answers.try_next().is_some() {}
        s.connect("team-a", "app");
        let msg = answers.next_timeout(WAIT).expect("an answer");
        let claims: serde_json::Value =
            decode_verified(std::str::from_utf8(&msg.data).unwrap()).unwrap();
        assert_eq!(claims["nats"]["issuer_account"], auth.as_str(), "{claims}");
        claims["iss"].as_str().unwrap().to_string()
    };
    assert_eq!(answer_issuer(), old.public_key());

    let clients = ConnectLoop::start(&s);
    clients.wait_attempts(20);
    let new = KeyPair::new_account();
    push_auth(&s, &[old.public_key(), new.public_key()], "");
    clients.wait_attempts(20);
    swap_seed(&s, "accounts/AUTH.signing.nk", &seed(&new));
    wait_reread(&s, &[&format!("responses signed by {}", new.public_key())]);
    clients.wait_attempts(20);
    push_auth(&s, &[new.public_key()], "");
    clients.wait_attempts(20);
    assert_none_refused(&s, clients.finish(), "in-order response key rotation");
    assert_eq!(answer_issuer(), new.public_key());

    // The old key is revoked: a service still signing with it is refused.
    swap_seed(&s, "accounts/AUTH.signing.nk", &seed(&old));
    wait_reread(&s, &[&format!("responses signed by {}", old.public_key())]);
    let refused = connect_token(&s.url(), &s.token("team-a", "app"))
        .err()
        .expect("refused");
    assert!(is_authorization_violation(&refused), "{refused}");
    assert!(logged(&s.nats, "Auth callout signing key is unknown"));
    assert!(s.service.log().contains("allowed team-a/app"));
}
