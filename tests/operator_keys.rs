//! `keys operator` on a real nats-server: each generated configuration boots, each creds user
//! connects in its account, a sentinel reaches the callout, the signing keys sign usable users,
//! and the full resolver takes an updated account JWT from the system user. No service runs:
//! the tests play its part where one is needed.
//!
//! What nats-server 2.15.1 logs for each refusal met while writing these (`[DBG]` needs `-D`):
//! - An account JWT without `limits`: the client is told `maximum account active connections
//!   exceeded` (there is no other connection: the missing limits mean `conn: 0`), and the log has
//!   `[ERR] … maximum account active connections exceeded`, then `maximum subscriptions exceeded`.
//! - A callout account with `disallow_bearer`: the sentinel is refused without a callout
//!   request, after the 2 s auth timeout: `[DBG] … Account does not allow bearer tokens`, then
//!   `[ERR] … authentication error`; the client gets `Authorization Violation`.
//! - No JWT and no `default_sentinel`: `[ERR] … authentication error - Token "[REDACTED]"`; no
//!   callout request is made.
//! - An empty answer to a callout request: `[ERR] … authentication error - JWT User "U…"` and
//!   `[WRN] Auth callout violation: "no reason supplied" on account "<AUTH>"`; the client gets
//!   `Authorization Violation`.
//! - A user of a scoped signing key that carries permissions: `[DBG] … User JWT is not valid:
//!   scoped users require no permissions or limits set`, then `[ERR] … authentication error`.
//! - At start-up, `default_sentinel` set to a user JWT that is not a bearer token:
//!   `nats-server: default sentinel must be a bearer token`; an `authorization { auth_callout }`
//!   block next to `operator`: `nats-server: operators do not allow authorization callouts to
//!   be configured directly`.
//! - Not a refusal: `$SYS.REQ.CLAIMS.UPDATE` answered `"jwt updated"` and applied an AUTH JWT
//!   whose `iat` was the stored one's, and one 10 s older, too: the full resolver does not keep
//!   a system user from pushing an older account JWT.
#![allow(deprecated)]

mod support;

use std::fs;
use std::process::Command;
use std::time::Duration;

use nkeys::{KeyPair, XKey};
use serde_json::{json, Value};

use nats_k8s_oidc_callout::callout::jwt::decode_verified;
use nats_k8s_oidc_callout::operator::claims::{sign, Permission, User, UserPermissionLimits};
use nats_k8s_oidc_callout::operator::render::creds;
use support::client::{connect_creds, connect_static_creds, connect_token, Client};
use support::nats::NatsServer;
use support::operator::{account_of, boot_text, logged, now, Generated, WAIT};

const BIN: &str = env!("CARGO_BIN_EXE_nats-k8s-oidc-callout");
const AUTH_REQUEST: &str = "$SYS.REQ.USER.AUTH";

/// Creds of a new user named `name` in `account`, signed by `signer` (one of its signing keys).
fn creds_signed_by(
    signer: &KeyPair,
    account: &str,
    name: &str,
    permissions: UserPermissionLimits,
) -> String {
    let user = KeyPair::new_user();
    let body = User {
        permissions,
        issuer_account: account.to_string(),
    };
    let jwt = sign(signer, &user.public_key(), name, now(), &body).unwrap();
    creds(&jwt, &user.seed().unwrap())
}

/// Connects with `connect` in a thread, takes the authorization request that causes off `sub`
/// and denies it; returns the request and the client's refusal.
fn callout_request(
    sub: &nats::Subscription,
    connect: impl FnOnce() -> Result<Client, String> + Send + 'static,
) -> (nats::Message, String) {
    let client = std::thread::spawn(connect);
    let msg = sub.next_timeout(WAIT).expect("an authorization request");
    // An empty answer is a denial: the client is refused at once.
    msg.respond(b"").unwrap();
    let refused = match client.join().unwrap() {
        Ok(_) => panic!("a denied client connected"),
        Err(e) => e,
    };
    (msg, refused)
}

/// The claims of an authorization request, opened with `xkey` if it was sealed to it.
fn request_claims(msg: &nats::Message, xkey: Option<&XKey>) -> Value {
    let sender = msg.headers.as_ref().and_then(|h| h.get("Nats-Server-Xkey"));
    let jwt = match (sender, xkey) {
        (Some(server), Some(ours)) => ours
            .open(&msg.data, &XKey::from_public_key(server).unwrap())
            .expect("sealed to our xkey"),
        (None, None) => msg.data.clone(),
        (sender, _) => panic!("sealed by {sender:?}, expected {:?}", xkey.is_some()),
    };
    decode_verified(std::str::from_utf8(&jwt).unwrap()).unwrap()
}

#[test]
fn the_memory_resolver_config_admits_each_creds_user_in_its_account() {
    let keys = Generated::new(&[]);
    let nats = keys.boot("nats-memory.conf");
    let url = nats.url();
    let public = |account: &str| keys.key(&format!("accounts/{account}.nk")).public_key();

    // The system user: the server answers its requests.
    let sys = connect_creds(&url, &keys.path("creds/sys.creds")).expect("sys connects");
    assert_eq!(account_of(&sys), public("SYS"));
    let pong = sys
        .nc
        .request_timeout("$SYS.REQ.SERVER.PING", b"", WAIT)
        .expect("server ping answered");
    let pong: Value = serde_json::from_slice(&pong.data).unwrap();
    assert!(
        pong["server"]["id"].as_str().unwrap().starts_with('N'),
        "{pong}"
    );

    // The callout user is in AUTH's auth_users: it connects without any callout answering.
    let callout = connect_creds(&url, &keys.path("creds/callout.creds")).expect("callout connects");
    assert_eq!(account_of(&callout), public("AUTH"));

    // NACK's account has JetStream; its user publishes the JetStream API and nothing else.
    let nack = connect_creds(&url, &keys.path("creds/nack.creds")).expect("nack connects");
    let config = json!({"name": "ORDERS", "subjects": ["orders.>"], "storage": "memory"});
    let created = nack
        .nc
        .request_timeout("$JS.API.STREAM.CREATE.ORDERS", config.to_string(), WAIT)
        .expect("stream create answered");
    let created: Value = serde_json::from_slice(&created.data).unwrap();
    assert!(created.get("error").is_none(), "{created}");
    assert_eq!(created["config"]["name"], "ORDERS");
    assert!(!nack.can_publish("orders.new"));
}

#[test]
fn a_client_presenting_the_sentinel_reaches_the_callout_sealed_to_its_xkey() {
    let keys = Generated::new(&[]);
    let nats = keys.boot("nats-memory.conf");
    let callout = connect_creds(&nats.url(), &keys.path("creds/callout.creds")).unwrap();
    let sub = callout.nc.subscribe(AUTH_REQUEST).unwrap();
    callout.nc.flush().unwrap();

    let (url, sentinel) = (nats.url(), keys.path("creds/sentinel.creds"));
    let (msg, refused) = callout_request(&sub, move || connect_creds(&url, &sentinel));
    let xkey = XKey::from_seed(keys.read("xkey.nk").trim()).unwrap();
    let request = request_claims(&msg, Some(&xkey));
    assert_eq!(request["aud"], "nats-authorization-request");
    assert_eq!(
        request["nats"]["connect_opts"]["jwt"],
        keys.creds_jwt("creds/sentinel.creds")
    );
    assert!(refused.contains("Authorization Violation"), "{refused}");
    assert!(logged(
        &nats,
        "Auth callout violation: \"no reason supplied\""
    ));

    // Without default_sentinel, a client presenting no JWT is refused and no request is sent.
    assert!(connect_token(&nats.url(), "a-token").is_err());
    assert!(sub.next_timeout(Duration::from_millis(500)).is_err());
    assert!(logged(&nats, "authentication error - Token \"[REDACTED]\""));
}

#[test]
fn with_default_sentinel_a_client_presenting_only_a_token_reaches_the_callout() {
    let keys = Generated::new(&["--no-xkey"]);
    let nats = keys.boot("nats-memory-default-sentinel.conf");
    let callout = connect_creds(&nats.url(), &keys.path("creds/callout.creds")).unwrap();
    let sub = callout.nc.subscribe(AUTH_REQUEST).unwrap();
    callout.nc.flush().unwrap();

    let url = nats.url();
    let (msg, refused) = callout_request(&sub, move || connect_token(&url, "a-k8s-token"));
    // --no-xkey: the request is not sealed.
    let request = request_claims(&msg, None);
    assert_eq!(request["nats"]["connect_opts"]["auth_token"], "a-k8s-token");
    assert!(refused.contains("Authorization Violation"), "{refused}");
}

#[test]
fn apps_signing_keys_sign_users_of_app_and_the_scoped_key_confines_each_to_its_space() {
    let keys = Generated::new(&[]);
    let nats = keys.boot("nats-memory.conf");
    let url = nats.url();
    let app = keys.key("accounts/APP.nk").public_key();
    let plain = keys.key(&format!("signing-keys/{app}.nk"));
    let scoped = keys.key("accounts/APP.scoped.nk");
    let name = "system:serviceaccount:team-a:app";

    // The plain key: the user carries its own permissions.
    let own = UserPermissionLimits::new(
        Permission::allow(&["team-a.>", "$SYS.REQ.USER.INFO"]),
        Permission::allow(&["team-a.>", "_INBOX.>"]),
    );
    let user = connect_static_creds(&url, &creds_signed_by(&plain, &app, name, own))
        .expect("a user of the plain signing key connects");
    assert_eq!(account_of(&user), app);
    assert!(user.round_trip("team-a.hello"));
    assert!(!user.can_publish("team-b.hello"));

    // The scoped key: the user carries nothing; the template gives it its own space.
    let user = connect_static_creds(
        &url,
        &creds_signed_by(&scoped, &app, name, UserPermissionLimits::default()),
    )
    .expect("a user of the scoped signing key connects");
    assert!(user.round_trip(&format!("sa.{name}._.hello")));
    // The space of a ServiceAccount named `app.b` is not inside it.
    assert!(!user.can_publish(&format!("sa.{name}.b._.hello")));
    assert!(!user.can_subscribe(&format!("sa.{name}.b._.hello")));
    assert!(!user.can_publish("team-a.hello"));

    // A user of the scoped key carrying permissions of its own is refused.
    let carrying = UserPermissionLimits::new(Permission::allow(&[">"]), Permission::default());
    let refused = connect_static_creds(&url, &creds_signed_by(&scoped, &app, name, carrying))
        .err()
        .expect("refused");
    assert!(refused.contains("Authorization Violation"), "{refused}");
    assert!(logged(
        &nats,
        "User JWT is not valid: scoped users require no permissions or limits set"
    ));
}

#[test]
fn the_full_resolver_takes_an_updated_callout_account_from_the_system_user() {
    let resolver = tempfile::tempdir().unwrap();
    let jwt_dir = resolver.path().join("accounts");
    let keys = Generated::new(&["--full-resolver-dir", jwt_dir.to_str().unwrap()]);
    assert!(keys
        .read("nats-full.conf")
        .contains(&format!("dir: \"{}\"", jwt_dir.display())));
    let nats = keys.boot("nats-full.conf");
    let url = nats.url();

    // The operator signs AUTH again with a new xkey; the system user pushes it.
    let new_xkey = XKey::new();
    let auth = keys.key("accounts/AUTH.nk").public_key();
    let updated = keys.resigned_account("AUTH", |c| {
        c["nats"]["authorization"]["xkey"] = json!(new_xkey.public_key());
        c["iat"] = json!(c["iat"].as_i64().unwrap() + 1);
    });
    let sys = connect_creds(&url, &keys.path("creds/sys.creds")).unwrap();
    let reply = sys
        .nc
        .request_timeout("$SYS.REQ.CLAIMS.UPDATE", &updated, WAIT)
        .expect("claims update answered");
    let reply: Value = serde_json::from_slice(&reply.data).unwrap();
    assert_eq!(reply["data"]["code"], 200, "{reply}");
    assert_eq!(reply["data"]["message"], "jwt updated");
    // The resolver keeps one `<public key>.jwt` a account: the preloaded ones, and this one.
    assert_eq!(
        fs::read_to_string(jwt_dir.join(format!("{auth}.jwt"))).unwrap(),
        updated
    );
    let sys_account = keys.key("accounts/SYS.nk").public_key();
    assert!(jwt_dir.join(format!("{sys_account}.jwt")).exists());

    // From now on requests are sealed to the new xkey.
    let callout = connect_creds(&url, &keys.path("creds/callout.creds")).unwrap();
    let sub = callout.nc.subscribe(AUTH_REQUEST).unwrap();
    callout.nc.flush().unwrap();
    let sentinel = keys.path("creds/sentinel.creds");
    let (msg, _) = callout_request(&sub, move || connect_creds(&url, &sentinel));
    let request = request_claims(&msg, Some(&new_xkey));
    assert_eq!(request["nats"]["type"], "authorization_request");
}

/// Boots the memory-resolver configuration with `account`'s JWT re-signed after `change`.
fn boot_with_changed_account(
    keys: &Generated,
    account: &str,
    change: impl FnOnce(&mut Value),
) -> NatsServer {
    let original = keys.read(&format!("accounts/{account}.jwt"));
    let changed = keys.resigned_account(account, change);
    boot_text(
        &keys
            .read("nats-memory.conf")
            .replace(original.trim(), &changed),
    )
}

#[test]
fn an_account_jwt_without_limits_admits_no_connection() {
    let keys = Generated::new(&[]);
    let nats = boot_with_changed_account(&keys, "NACK", |c| {
        c["nats"].as_object_mut().unwrap().remove("limits");
    });
    let refused = connect_creds(&nats.url(), &keys.path("creds/nack.creds"))
        .err()
        .expect("refused");
    // Misleading: no other connection exists; a JWT without limits means `conn: 0`.
    assert!(
        refused.contains("maximum account active connections exceeded"),
        "{refused}"
    );
    assert!(logged(&nats, "[ERR]"));
    assert!(nats
        .log()
        .contains("- maximum account active connections exceeded"));
}

#[test]
fn a_callout_account_refusing_bearer_users_refuses_the_sentinel() {
    let keys = Generated::new(&[]);
    let nats = boot_with_changed_account(&keys, "AUTH", |c| {
        c["nats"]["limits"]["disallow_bearer"] = json!(true);
    });
    let callout = connect_creds(&nats.url(), &keys.path("creds/callout.creds")).unwrap();
    let sub = callout.nc.subscribe(AUTH_REQUEST).unwrap();
    callout.nc.flush().unwrap();
    let refused = connect_creds(&nats.url(), &keys.path("creds/sentinel.creds"))
        .err()
        .expect("refused");
    assert!(refused.contains("Authorization Violation"), "{refused}");
    assert!(logged(&nats, "Account does not allow bearer tokens"));
    // The callout never hears of it.
    assert!(sub.next_timeout(Duration::from_millis(200)).is_err());
}

#[test]
fn keys_operator_never_overwrites_and_prints_no_seed() {
    let keys = Generated::new(&["--client-account", "APP2"]);
    for f in [
        "operator.nk",
        "accounts/APP2.nk",
        "accounts/APP.scoped.nk",
        "xkey.nk",
    ] {
        assert!(!keys.summary.contains(keys.read(f).trim()), "{f}");
    }
    let app2 = keys.key("accounts/APP2.nk").public_key();
    assert!(keys.summary.contains(&app2));
    assert!(keys.path(&format!("signing-keys/{app2}.nk")).exists());

    let again = Command::new(BIN)
        .args(["keys", "operator", "--dir"])
        .arg(keys.dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));
}
