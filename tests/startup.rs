//! Start-up, readiness and the local development mode, on the real binary.

mod support;

use std::fs;
use std::process::Command;
use std::time::Duration;

use support::client::connect_token;
use support::kube::{KubeEmulator, DEFAULT_ISSUER};
use support::nats::{free_port, CalloutKeys, NatsServer, CLIENT_ACCOUNT};
use support::service::ServiceBuilder;
use support::stack::StackBuilder;
use support::tokens::{jwks, SigningKey, TokenBuilder};

const BIN: &str = env!("CARGO_BIN_EXE_nats-k8s-oidc-callout");

/// Runs the binary with `args`, asserts it succeeded, and returns its standard output.
fn run_ok(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_bad_configuration_stops_start_up_naming_every_problem() {
    let out = Command::new(BIN)
        .env_clear()
        .env("NATS_TOKEN", "very-secret-token")
        .env("NATS_CREDS_FILE", "/nonexistent/creds")
        .env("JWKS_URL", "ftp://x")
        .env("PORT", "99999")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "NATS_SIGNING_KEY_FILE is required",
        "NATS_ACCOUNT is required",
        "both set",
        "JWKS_URL",
        "PORT",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    assert!(!err.contains("very-secret-token"));
}

#[test]
fn not_ready_and_not_in_the_queue_group_until_keys_and_cache_are_loaded() {
    let key = SigningKey::rs256();
    let api = KubeEmulator::builder().jwks(jwks(&[&key])).build();
    let uid = api.create_service_account("team-a", "app", &[]);
    let token = TokenBuilder::for_sa("team-a", "app", &uid).sign(&key);
    api.set_down(true);
    let keys = CalloutKeys::new(false);
    let nats = NatsServer::start(&keys);
    let service = ServiceBuilder::new(&keys, &nats.service_url(), CLIENT_ACCOUNT)
        .kube_api(&api.url(), &api.token())
        .env("JWT_ISSUER", DEFAULT_ISSUER)
        .spawn();
    service.wait_for("http up", Duration::from_secs(10), || {
        service.get("/healthz").is_some()
    });
    let (status, body) = service.get("/readyz").unwrap();
    assert_eq!(status, 503);
    assert!(
        body.contains("cache_synced") && body.contains("jwks_loaded"),
        "{body}"
    );
    assert_eq!(service.get("/health").unwrap().0, 200);
    // Not subscribed yet: the request is left to another replica (here none, so the server's
    // auth timeout refuses it) instead of being denied by one that cannot decide.
    assert!(connect_token(&nats.url(), &token).is_err());
    let (_, metrics) = service.get("/metrics").unwrap();
    assert!(
        !metrics.contains("decisions_total{"),
        "no decision was made:\n{metrics}"
    );
    api.set_down(false);
    service.wait_ready(Duration::from_secs(40));
    assert!(connect_token(&nats.url(), &token).is_ok());
}

#[test]
fn the_keys_subcommand_prints_a_config_nats_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let block = run_ok(&[
        "keys",
        "--dir",
        dir_arg,
        "--auth-user",
        "callout",
        "--auth-account",
        "AUTH",
    ]);
    let port = free_port();
    let config = format!(
        "listen: \"127.0.0.1:{port}\"\naccounts {{\n  AUTH {{ users: [ {{ user: callout, password: pw }} ] }}\n  APP {{ }}\n}}\n{block}"
    );
    let _server = NatsServer::start_with_config(port, config);
}

#[test]
fn local_mode_with_a_dev_signer_and_a_serviceaccount_file() {
    let keys = CalloutKeys::new(true);
    let nats = NatsServer::start(&keys);
    let b = ServiceBuilder::new(&keys, &nats.service_url(), CLIENT_ACCOUNT);
    let dir = b.dir().to_path_buf();
    run_ok(&["dev-signer", "init", "--dir", dir.to_str().unwrap()]);
    let accounts = dir.join("serviceaccounts.yaml");
    // An entry the guard rails drop: logged; no Events without an API server, and no error.
    fs::write(&accounts, "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: app\n  namespace: dev\n  uid: \"1111\"\n  annotations:\n    nats.io/allowed-pub-subjects: \"a..b\"\n").unwrap();
    let service = b
        .env("SERVICE_ACCOUNTS_PATH", accounts.to_str().unwrap())
        .env("JWKS_PATH", dir.join("jwks.json").to_str().unwrap())
        .env("JWT_ISSUER", nats_k8s_oidc_callout::devtools::DEV_ISSUER)
        .start();
    let mint = |name: &str, uid: &str| {
        let key = dir.join("signer.key");
        let key = key.to_str().unwrap();
        run_ok(&[
            "dev-signer",
            "mint",
            "--key",
            key,
            "--namespace",
            "dev",
            "--name",
            name,
            "--uid",
            uid,
        ])
        .trim()
        .to_string()
    };
    let c = connect_token(&nats.url(), &mint("app", "1111")).expect("local mode allows");
    assert!(c.round_trip("dev.hello"));
    let log = service.log();
    assert!(log.contains("entry \"a..b\" dropped"), "{log}");
    assert!(
        log.contains("no Events about dropped annotation entries without the Kubernetes API"),
        "{log}"
    );
    assert!(!log.contains("cannot create"), "{log}");
    assert!(connect_token(&nats.url(), &mint("other", "2222")).is_err());
    // The file is re-read when it changes.
    fs::write(
        &accounts,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: app\n  namespace: dev\n  uid: \"1111\"\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: other\n  namespace: dev\n  uid: \"2222\"\n",
    )
    .unwrap();
    service.wait_for("file re-read", Duration::from_secs(10), || {
        connect_token(&nats.url(), &mint("other", "2222")).is_ok()
    });
}

/// NATS_URL passwords holding the characters that end a URL's host part (or a numeric start
/// that reads as a port) must not reach the log at any level, at start-up or on reconnects.
#[test]
fn no_part_of_a_nats_url_password_reaches_the_log_even_at_trace() {
    let keys = CalloutKeys::new(false);
    // Unparseable: refused at start-up, naming the entry but not its text.
    let out = Command::new(BIN)
        .env_clear()
        .env("NATS_URL", "nats://callout:S3cr/et@127.0.0.1:4222")
        .env("NATS_ACCOUNT", CLIENT_ACCOUNT)
        .env("LOG_LEVEL", "trace")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NATS_URL entry 1 is not a valid URL"), "{err}");
    assert!(!err.contains("S3cr") && !err.contains("et@"), "{err}");

    // Parseable, with an @ and a : in the password, against a port nothing listens on: the
    // start-up line and every reconnect warning show the host only.
    let port = free_port();
    let b = ServiceBuilder::new(
        &keys,
        &format!("nats://callout:Tr4ce:P@ss@127.0.0.1:{port}"),
        CLIENT_ACCOUNT,
    );
    let dir = b.dir().to_path_buf();
    run_ok(&["dev-signer", "init", "--dir", dir.to_str().unwrap()]);
    let accounts = dir.join("serviceaccounts.yaml");
    fs::write(&accounts, "items: []\n").unwrap();
    let service = b
        .env("SERVICE_ACCOUNTS_PATH", accounts.to_str().unwrap())
        .env("JWKS_PATH", dir.join("jwks.json").to_str().unwrap())
        .env("JWT_ISSUER", nats_k8s_oidc_callout::devtools::DEV_ISSUER)
        .env("LOG_LEVEL", "trace")
        .env("RUST_LOG", "trace")
        .spawn();
    let shown = format!("cannot connect to nats at nats://127.0.0.1:{port}");
    service.wait_for("two connect attempts", Duration::from_secs(15), || {
        service.log().matches(&shown).count() >= 2
    });
    let log = service.log();
    for part in ["Tr4ce", "P@ss", "P%40ss", "ss@127"] {
        assert!(!log.contains(part), "{part} in the log:\n{log}");
    }
}

/// A `/` in a URL's password ends the host (`https://u:1234/Pa55word@h` reads as host `u`,
/// port `1234` and path `/Pa55word@h`): no part of such a password reaches the log, whether the
/// URL is accepted (a key-set URL) or refused (an API server URL).
#[test]
fn a_url_password_cut_short_by_a_slash_stays_out_of_the_log() {
    let keys = CalloutKeys::new(false);
    let nats_url = format!("nats://127.0.0.1:{}", free_port());
    let b = ServiceBuilder::new(&keys, &nats_url, CLIENT_ACCOUNT);
    let accounts = b.dir().join("serviceaccounts.yaml");
    fs::write(&accounts, "items: []\n").unwrap();
    let key_set = b
        .env("SERVICE_ACCOUNTS_PATH", accounts.to_str().unwrap())
        .env(
            "JWKS_URL",
            "https://jwks.invalid:1234/Pa55word@keys.example/openid/v1/jwks",
        )
        .env("JWT_ISSUER", DEFAULT_ISSUER)
        .env("LOG_LEVEL", "trace")
        .unset("RUST_LOG")
        .spawn();
    key_set.wait_for("a failed key-set fetch", Duration::from_secs(15), || {
        key_set.log().contains("loading keys from")
    });
    let not_shown_in = |log: String| {
        for part in ["Pa55word", "invalid:1234", "svc:1234"] {
            assert!(!log.contains(part), "{part} in the log:\n{log}");
        }
    };
    not_shown_in(key_set.log());

    let api_server = ServiceBuilder::new(&keys, &nats_url, CLIENT_ACCOUNT)
        .kube_api("https://svc:1234/Pa55word@127.0.0.1:6443", "cluster-token")
        .env("JWT_ISSUER", DEFAULT_ISSUER)
        .env("LOG_LEVEL", "trace")
        .unset("RUST_LOG")
        .spawn();
    api_server.wait_for(
        "the API server URL refused",
        Duration::from_secs(15),
        || api_server.log().contains("invalid API server URL"),
    );
    not_shown_in(api_server.log());
}

/// kubectl refuses a `server` with a backslash, a control character or extra slashes after the
/// scheme (or finds another host in one without them); the WHATWG parser mends them all into a
/// host. Such a server is refused, and the cluster token is sent nowhere.
#[test]
fn a_server_that_kubectl_reads_apart_gets_no_token() {
    let api = KubeEmulator::start();
    let keys = CalloutKeys::new(false);
    let nats_url = format!("nats://127.0.0.1:{}", free_port());
    let base = api.url();
    let host_port = base.trim_start_matches("http://");
    for server in [
        format!("'{base}\\api'"),
        format!("http:///{host_port}"),
        format!("http:{host_port}"),
        format!("\"http://{host_port}/\\tapi\""),
    ] {
        let service = ServiceBuilder::new(&keys, &nats_url, CLIENT_ACCOUNT)
            .kube_api(&server, &api.token())
            .env("JWT_ISSUER", DEFAULT_ISSUER)
            .spawn();
        service.wait_for("the server refused", Duration::from_secs(15), || {
            service.log().contains("invalid API server URL")
        });
        assert_eq!(api.total_requests(), 0, "{server}: {}", service.log());
    }
}

/// An invalid policy file stops start-up with one message naming every problem, and nothing is
/// served meanwhile: no replica decides with a policy other than the one written.
#[test]
fn an_invalid_policy_file_stops_start_up_naming_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("signing.nk");
    fs::write(&seed, CalloutKeys::new(false).account.seed().unwrap()).unwrap();
    let policy = dir.path().join("policy.yaml");
    fs::write(
        &policy,
        "namespaces:\n  include: [\"Team-A\"]\nannotations:\n  publish: [\"{namespace}..x\"]\nrules:\n  - namespaces: []\n    account: \"two words\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .env("NATS_SIGNING_KEY_FILE", &seed)
        .env("NATS_ACCOUNT", CLIENT_ACCOUNT)
        .env("POLICY_FILE", &policy)
        .env("INBOX_MODE", "everyone")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "INBOX_MODE=\"everyone\" is not one of shared, private, responses",
        &format!("POLICY_FILE: invalid policy {}:", policy.display()),
        "namespaces.include[0] \"Team-A\" is not a namespace pattern",
        "annotations.publish[0] \"{namespace}..x\" is not a valid NATS subject",
        "rules[0].namespaces is empty",
        "rules[0].account \"two words\" is not an account name",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
}

/// Starts a stack at `level` and makes the service log at every level it has: a warning at
/// start (INBOX_MODE=responses), info lines (connected), a debug line per answer, an error for
/// a policy file that no longer parses. Returns the levels of the service's own lines.
fn own_levels_at(level: &str) -> std::collections::BTreeSet<String> {
    let s = StackBuilder::new()
        .policy("annotations:\n  publish: [\"orders.>\"]\n")
        .env("INBOX_MODE", "responses")
        .env("LOG_LEVEL", level)
        .env("RUST_LOG", "")
        .start();
    s.assert_connects("team-a", "app");
    s.replace_policy("rules: [\n");
    let failed = "nats_callout_policy_reloads_total{result=\"failure\"}";
    s.service
        .wait_for("the broken policy re-read", Duration::from_secs(20), || {
            s.service.metric(failed) >= 1.0
        });
    let log = s.service.log();
    // `[2026-12-04T20:00:00.000Z DEBUG nats_k8s_oidc_callout::callout::service] answered in …`
    log.lines()
        .filter_map(|l| l.strip_prefix('['))
        .filter_map(|l| {
            let mut words = l.split_whitespace().skip(1);
            let (lvl, module) = (words.next()?, words.next()?);
            (module == "nats_k8s_oidc_callout]" || module.starts_with("nats_k8s_oidc_callout::"))
                .then(|| lvl.to_string())
        })
        .collect()
}

fn levels(names: &[&str]) -> std::collections::BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn log_level_off_silences_the_service() {
    assert_eq!(own_levels_at("off"), levels(&[]));
}

#[test]
fn log_level_error_shows_errors_only() {
    assert_eq!(own_levels_at("error"), levels(&["ERROR"]));
}

#[test]
fn log_level_warn_adds_warnings() {
    assert_eq!(own_levels_at("warn"), levels(&["ERROR", "WARN"]));
}

#[test]
fn log_level_info_adds_info() {
    assert_eq!(own_levels_at("info"), levels(&["ERROR", "WARN", "INFO"]));
}

/// The libraries are kept at info at debug and trace; the service's own lines must not be,
/// although its crate name starts with theirs (`nats`).
#[test]
fn log_level_debug_shows_the_services_debug_lines() {
    assert_eq!(
        own_levels_at("debug"),
        levels(&["ERROR", "WARN", "INFO", "DEBUG"])
    );
}

#[test]
fn log_level_trace_shows_the_services_debug_lines() {
    assert_eq!(
        own_levels_at("TRACE"),
        levels(&["ERROR", "WARN", "INFO", "DEBUG"])
    );
}
