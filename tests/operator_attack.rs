//! Operator mode under attack, on a real nats-server 2.15.1, the service binary and the
//! Kubernetes API emulator: key files that say one account and hold another's key, a callout
//! key whose account is left unnamed, broken key files swapped in, a response key dropped from
//! the callout account, a config-mode service facing an operator-mode server, and the logs
//! after each (no seed in them).
//!
//! What nats-server 2.15.1 does and logs here:
//! - A user JWT whose `issuer_account` names an account that does not list its signer:
//!   `[WRN] User JWT issuer "<signer>" is not known`; the client gets `Authorization Violation`.
//! - An empty answer (the service refusing a request it will not answer):
//!   `[WRN] Auth callout violation: "no reason supplied" on account "<AUTH>"`.
//! - A sealed answer: its signer is not checked at all (a key AUTH dropped, or none of AUTH's);
//!   an unsealed one must be signed by AUTH or a key AUTH lists, `issuer_account` or not.
//! - A user JWT signed by the callout account's own key is placed in the callout account
//!   without `allowed_accounts` being consulted; `aud` is ignored in operator mode.
#![allow(deprecated)]

mod support;

use std::fs;
use std::time::Duration;

use support::client::{connect_token, is_authorization_violation};
use support::operator::{logged, Generated, OperatorStack, OperatorStackBuilder};

const SENTINEL_CONFIG: &str = "nats-memory-default-sentinel.conf";
const WAIT: Duration = Duration::from_secs(10);

/// An admin policy placing `ns` in `account`.
fn policy(ns: &str, account: &str) -> String {
    format!("rules:\n  - namespaces: [\"{ns}\"]\n    account: {account}\n")
}

/// Asserts that no seed of the generated files (`S…` lines of every `.nk` and `.creds` file)
/// appears in the service's or nats-server's log.
fn assert_no_seed_logged(s: &OperatorStack) {
    let logs = format!("{}\n{}", s.service.log(), s.nats.log());
    let mut seeds = 0;
    let mut dirs = vec![s.keys.dir.path().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = fs::read_to_string(&path).unwrap_or_default();
            for seed in text
                .lines()
                .map(str::trim)
                .filter(|l| l.len() == 58 && ["SO", "SA", "SU", "SX"].contains(&&l[..2]))
            {
                seeds += 1;
                assert!(
                    !logs.contains(seed),
                    "the seed of {} is logged",
                    path.display()
                );
                // Nor the seed's characters after the prefix (a log line quoting it cut).
                assert!(!logs.contains(&seed[2..40]), "{}", path.display());
            }
        }
    }
    assert!(seeds >= 8, "only {seeds} seeds found");
}

/// Without `NATS_CALLOUT_ACCOUNT`, the service takes the public key of its callout signing key
/// for the callout account, so the guard that keeps clients out of the callout account compares
/// the wrong key: a keys directory holding the callout account's key and a policy naming it
/// would place clients in AUTH, where the callout's requests (tokens included) and the
/// server's answers flow. nats-server takes the answers (signed by a key AUTH lists), so the
/// service must check which account each request is for.
#[test]
fn a_callout_signing_key_with_its_account_unnamed_places_no_client_in_the_callout_account() {
    unnamed_callout_account(&[]);
}

/// The same unsealed: nats-server then checks the responses' signer, and takes a signing key
/// that AUTH lists even without `issuer_account`.
#[test]
fn a_callout_signing_key_with_its_account_unnamed_places_no_client_in_the_callout_account_unsealed()
{
    unnamed_callout_account(&["--no-xkey"]);
}

fn unnamed_callout_account(keys_args: &[&str]) {
    let s = OperatorStackBuilder::new()
        .keys_args(keys_args)
        .config(SENTINEL_CONFIG)
        .account("team-x", "app", &[])
        .policy(|k: &Generated| policy("team-x", &k.account("AUTH")))
        .prepare(|k: &Generated| {
            let auth = k.account("AUTH");
            fs::copy(
                k.path("accounts/AUTH.nk"),
                k.path(&format!("signing-keys/{auth}.nk")),
            )
            .unwrap();
            vec![("NATS_CALLOUT_ACCOUNT".into(), String::new())]
        })
        .start();
    let auth = s.keys.account("AUTH");
    let callout_key = s.keys.key("accounts/AUTH.signing.nk").public_key();

    match connect_token(&s.url(), &s.token("team-x", "app")) {
        Ok(c) => panic!(
            "team-x/app was placed in {:?} (AUTH is {auth})",
            s.placement(&c)
        ),
        Err(e) => assert!(is_authorization_violation(&e), "{e}"),
    }
    // Every request is refused, each saying why: the service answers for another account.
    let refused = connect_token(&s.url(), &s.token("team-a", "app"))
        .err()
        .expect("team-a/app refused too");
    assert!(is_authorization_violation(&refused), "{refused}");
    s.service.wait_for("the denial counted", WAIT, || {
        s.service.decisions("deny", "request_wrong_account") >= 2.0
    });
    let log = s.service.log();
    assert!(
        log.contains(&format!(
            "request is for the callout account {auth}, but this service answers for {callout_key}"
        )) && log.contains("NATS_CALLOUT_ACCOUNT"),
        "{log}"
    );
    assert!(!log.contains("allowed team-x/app"), "{log}");
    assert!(logged(
        &s.nats,
        "Auth callout violation: \"no reason supplied\""
    ));
    assert_no_seed_logged(&s);
}

/// A key file named after one account holding another account's signing key (a copy-paste
/// slip, or a swapped Secret): the service cannot tell and signs with `issuer_account` set to
/// the file's account; nats-server refuses the user, since that account does not list the key.
/// The client lands neither in the account of the file nor in that of the key.
#[test]
fn a_key_file_holding_another_accounts_signing_key_places_no_client() {
    let s = OperatorStackBuilder::new()
        .keys_args(&["--client-account", "APP2"])
        .config(SENTINEL_CONFIG)
        .account("team-z", "app", &[])
        .policy(|k: &Generated| policy("team-z", &k.account("APP2")))
        .prepare(|k: &Generated| {
            let (app, app2) = (k.account("APP"), k.account("APP2"));
            fs::copy(
                k.path(&format!("signing-keys/{app}.nk")),
                k.path(&format!("signing-keys/{app2}.nk")),
            )
            .unwrap();
            Vec::new()
        })
        .start();
    let app = s.keys.account("APP");
    let app_key = s.keys.key(&format!("signing-keys/{app}.nk")).public_key();
    let refused = connect_token(&s.url(), &s.token("team-z", "app"))
        .err()
        .expect("refused");
    assert!(is_authorization_violation(&refused), "{refused}");
    assert!(
        logged(
            &s.nats,
            &format!("User JWT issuer \"{app_key}\" is not known")
        ),
        "{}",
        s.nats.log()
    );
    // The service believed it allowed the client; APP's own clients are unaffected.
    s.service.wait_for("the service's allow", WAIT, || {
        s.service.log().contains("allowed team-z/app")
    });
    let c = s.connect("team-a", "app");
    assert_eq!(s.placement(&c).0, app);
    assert_no_seed_logged(&s);
}

/// Key files broken in every way a rotation can break them (a user, operator or curve seed, a
/// half-written seed, an oversized file) while the service runs: each re-reading fails, is
/// logged without any seed, and the keys in use keep signing.
#[test]
fn broken_key_files_swapped_in_keep_the_keys_in_use_and_log_no_seed() {
    let s = OperatorStackBuilder::new().config(SENTINEL_CONFIG).start();
    let app = s.keys.account("APP");
    let file = s.keys.path(&format!("signing-keys/{app}.nk"));
    let good = fs::read_to_string(&file).unwrap();
    let read = |rel: &str| s.keys.read(rel);
    let broken = [
        ("a user seed", read("creds/sentinel.creds")),
        ("an operator seed", read("operator.nk")),
        ("a curve seed", read("xkey.nk")),
        ("a half-written seed", good.trim()[..30].to_string()),
        (
            "an oversized file",
            format!("{}\n{}", good, "#".repeat(70_000)),
        ),
    ];
    let failures = || {
        s.service
            .metric("nats_callout_key_reloads_total{result=\"failure\"}")
    };
    for (i, (what, text)) in broken.iter().enumerate() {
        let next = file.with_extension("next");
        fs::write(&next, text).unwrap();
        fs::rename(&next, &file).unwrap();
        s.service.wait_for(&format!("{what} refused"), WAIT, || {
            failures() >= (i + 1) as f64
        });
        let c = s.connect("team-a", "app");
        assert_eq!(s.placement(&c).0, app, "{what}: the keys in use still sign");
    }
    assert!(
        s.service
            .log()
            .contains("key files changed but cannot be used; the keys in use stay"),
        "{}",
        s.service.log()
    );
    assert_no_seed_logged(&s);
}

/// Dropping the response key from AUTH's `signing_keys` revokes it only for unsealed answers:
/// nats-server checks the signer of an answer only when it is not sealed (auth_callout.go: "if
/// response is encrypted none of this is needed"), so with an xkey a service still holding the
/// dropped key keeps placing clients. Revoking a leaked response key takes a new xkey too.
#[test]
fn a_dropped_response_key_still_answers_while_the_answers_are_sealed() {
    let s = OperatorStackBuilder::new()
        .config("nats-full.conf")
        .default_sentinel()
        .start();
    let xkey = nkeys::XKey::from_seed(s.keys.read("xkey.nk").trim())
        .unwrap()
        .public_key();
    let jwt = s.keys.resigned_account("AUTH", |c| {
        c["nats"]["signing_keys"] = serde_json::json!([]);
        c["nats"]["authorization"]["xkey"] = serde_json::json!(xkey);
        c["iat"] = serde_json::json!(support::operator::now());
    });
    let answer = s.push_account(&jwt);
    assert_eq!(answer["data"]["message"], "jwt updated", "{answer}");
    let c = s.connect("team-a", "app");
    assert_eq!(s.placement(&c).0, s.keys.account("APP"));
    assert!(
        !s.nats.log().contains("signing key is unknown"),
        "{}",
        s.nats.log()
    );
}

/// The service left in config mode (`NATS_OPERATOR_MODE` unset) against a server in operator
/// mode, with the callout account's seed as `NATS_SIGNING_KEY_FILE` (config mode's docs: "its
/// public key is the server's issuer"): nats-server ignores the user JWT's `aud` and places the
/// client in the account that signed it, AUTH, and config mode has no guard against that. Every
/// request of an operator-mode server carries the sentinel's user JWT, issued by the account the
/// request is for; the service refuses them, naming the setting.
#[test]
fn a_config_mode_service_refuses_the_requests_of_an_operator_mode_server() {
    for (seed, sealed) in [("accounts/AUTH.nk", true), ("accounts/APP.nk", false)] {
        let s = OperatorStackBuilder::new()
            .keys_args(if sealed { &[] } else { &["--no-xkey"] })
            .config(SENTINEL_CONFIG)
            .prepare(move |k: &Generated| {
                let mut env: Vec<(String, String)> = [
                    "NATS_OPERATOR_MODE",
                    "NATS_CALLOUT_SIGNING_KEY_FILE",
                    "NATS_CALLOUT_ACCOUNT",
                    "NATS_ACCOUNT_SIGNING_KEYS_DIR",
                ]
                .into_iter()
                .map(|name| (name.to_string(), String::new()))
                .collect();
                env.push((
                    "NATS_SIGNING_KEY_FILE".into(),
                    k.path(seed).to_str().unwrap().into(),
                ));
                env.push(("NATS_ACCOUNT".into(), "APP".into()));
                env
            })
            .start();
        if let Ok(c) = connect_token(&s.url(), &s.token("team-a", "app")) {
            panic!(
                "{seed}: placed in {:?} (AUTH is {})",
                s.placement(&c),
                s.keys.account("AUTH")
            );
        }
        s.service.wait_for("the denial counted", WAIT, || {
            s.service.decisions("deny", "request_operator_mode_server") >= 1.0
        });
        let log = s.service.log();
        assert!(
            log.contains(
                "the client presented a user JWT of the callout account: nats-server runs in operator mode; set NATS_OPERATOR_MODE=true"
            ),
            "{seed}: {log}"
        );
        assert_no_seed_logged(&s);
    }
}

/// Without `NATS_CALLOUT_SIGNING_KEY_FILE`, `NATS_SIGNING_KEY_FILE` signs the answers too: with
/// the callout account's key (the documented way: clients share its account) clients are
/// placed there; with a client account's key the requests are refused, sealed ones included,
/// which nats-server would have taken whatever their signer.
#[test]
fn without_a_callout_key_only_the_callout_accounts_own_key_answers() {
    for (seed, answered) in [("accounts/AUTH.nk", true), ("accounts/APP.nk", false)] {
        let s = OperatorStackBuilder::new()
            .config(SENTINEL_CONFIG)
            .prepare(move |k: &Generated| {
                vec![
                    ("NATS_CALLOUT_SIGNING_KEY_FILE".into(), String::new()),
                    ("NATS_CALLOUT_ACCOUNT".into(), String::new()),
                    ("NATS_ACCOUNT_SIGNING_KEYS_DIR".into(), String::new()),
                    (
                        "NATS_SIGNING_KEY_FILE".into(),
                        k.path(seed).to_str().unwrap().into(),
                    ),
                    ("NATS_ACCOUNT".into(), k.key(seed).public_key()),
                ]
            })
            .start();
        let auth = s.keys.account("AUTH");
        if answered {
            let c = s.connect("team-a", "app");
            assert_eq!(s.placement(&c).0, auth);
            assert!(s.service.log().contains(
                "operator mode without NATS_CALLOUT_SIGNING_KEY_FILE: the clients' account key signs the responses too"
            ));
        } else {
            let refused = connect_token(&s.url(), &s.token("team-a", "app"))
                .err()
                .expect("refused");
            assert!(is_authorization_violation(&refused), "{refused}");
            s.service.wait_for("the denial counted", WAIT, || {
                s.service.decisions("deny", "request_wrong_account") >= 1.0
            });
            assert!(s.service.log().contains(&format!(
                "request is for the callout account {auth}, but this service answers for {}",
                s.keys.account("APP")
            )));
        }
    }
}
