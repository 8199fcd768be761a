//! `explain NAMESPACE/NAME` on the real binary: against the Kubernetes API emulator and a local
//! ServiceAccount file, with a policy of rules and bounds, in each inbox mode; its JSON checked
//! against the user JWT the real service issues on a connect; and each way it refuses.
#![allow(deprecated)]

mod support;

use std::fs;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use support::client::connect_token;
use support::kube::KubeEmulator;
use support::kubeconfig::{kubeconfig, write_kubeconfig};
use support::stack::{Stack, StackBuilder};
use support::tokens::claims_of;

const BIN: &str = env!("CARGO_BIN_EXE_nats-k8s-oidc-callout");
const WAIT: Duration = Duration::from_secs(10);
const MODES: [&str; 3] = ["shared", "private", "responses"];

const PUB: &str = "nats.io/allowed-pub-subjects";
const SUB: &str = "nats.io/allowed-sub-subjects";

/// Bounds for every namespace, a rule with its own account and bounds, a rule that keeps the
/// default account, and namespaces that are not served.
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
  - namespaces: ["batch-*"]
    annotations:
      publish: ["jobs.{namespace}.>"]
"#;

/// A ServiceAccount: namespace, name and annotations.
type AccountSpec = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The ServiceAccounts of every test.
const ACCOUNTS: &[AccountSpec] = &[
    (
        "team-a",
        "shop",
        &[
            (PUB, "orders.>, team-b.cmd, ledger.shop.x, team-a.x"),
            (SUB, "orders.>, _INBOX.team-a.>"),
        ],
    ),
    (
        "payments",
        "api",
        &[
            (PUB, "orders.>, ledger.api.>, ledger.other.x, a..b"),
            (SUB, "orders.>"),
        ],
    ),
    ("batch-1", "worker", &[(PUB, "jobs.batch-1.done, orders.x")]),
    ("kube-system", "ops", &[]),
];

/// The result of one run.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// `explain` with only the environment given here (nothing inherited): `NATS_ACCOUNT=APP`, and
/// whatever the test adds.
struct Explain {
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Explain {
    fn new() -> Explain {
        Explain {
            env: vec![("NATS_ACCOUNT".into(), "APP".into())],
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn env(mut self, k: &str, v: &str) -> Explain {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Reads ServiceAccounts from `api` through a kubeconfig, as an operator's shell would.
    fn kube_api(self, api: &KubeEmulator) -> Explain {
        let text = kubeconfig(&api.url(), &[], &[format!("token: {}", api.token())]);
        let path = write_kubeconfig(self.dir.path(), "kubeconfig", &text);
        let path = path.to_str().expect("utf8").to_owned();
        self.env("K8S_IN_CLUSTER", "false").env("KUBECONFIG", &path)
    }

    /// Writes `text` into the scratch directory and sets `var` to its path.
    fn file(self, var: &str, name: &str, text: &str) -> Explain {
        let path = self.dir.path().join(name);
        fs::write(&path, text).expect("write");
        let path = path.to_str().expect("utf8").to_owned();
        self.env(var, &path)
    }

    fn run(&self, args: &[&str]) -> Run {
        let out = Command::new(BIN)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("explain")
            .args(args)
            .output()
            .expect("run the binary");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The JSON report of a run that must exit with `code`.
    fn json(&self, target: &str, code: i32) -> Value {
        let run = self.run(&[target, "--output", "json"]);
        assert_eq!(run.code, code, "{target}: {}", run.stderr);
        run.json()
    }
}

/// The ServiceAccounts as a local file (a List), with fixed uids.
fn accounts_file() -> String {
    let items: Vec<Value> = ACCOUNTS
        .iter()
        .enumerate()
        .map(|(i, (ns, name, ann))| {
            let annotations: serde_json::Map<String, Value> =
                ann.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{i}"), "annotations": annotations}
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// A list of subjects from a JSON value; a missing list (the JWT leaves empty ones out) is empty.
fn subjects(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The user JWT's claims the service issued when `ns/name` connected, read off the auth callout
/// reply (plain: the stack has no xkey) by a second connection of the service's own user.
fn granted(s: &Stack, ns: &str, name: &str) -> Value {
    let spy = nats::connect(s.nats.service_url().as_str()).expect("service user connects");
    let replies = spy
        .subscribe("$SYS._INBOX.>")
        .expect("subscribe to the replies");
    spy.flush().expect("flush");
    let _client = connect_token(&s.url(), &s.token(ns, name))
        .unwrap_or_else(|e| panic!("{ns}/{name} connects: {e}\n{}", s.service.log()));
    let user = format!("system:serviceaccount:{ns}:{name}");
    loop {
        let msg = replies
            .next_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no callout reply for {user}"));
        let response = claims_of(&String::from_utf8_lossy(&msg.data));
        let Some(jwt) = response["nats"]["jwt"].as_str() else {
            continue;
        };
        let claims = claims_of(jwt);
        if claims["name"] == user.as_str() {
            return claims;
        }
    }
}

/// Asserts that the explained account and permissions are those of the issued user JWT.
fn assert_same_grant(explained: &Value, user: &Value, what: &str) {
    let p = &explained["permissions"];
    let nats = &user["nats"];
    assert!(
        !subjects(&nats["pub"]["allow"]).is_empty(),
        "{what}: {user}"
    );
    assert_eq!(user["aud"], explained["account"]["name"], "{what}: account");
    for (direction, claim) in [("publish", "pub"), ("subscribe", "sub")] {
        for list in ["allow", "deny"] {
            assert_eq!(
                subjects(&p[direction][list]),
                subjects(&nats[claim][list]),
                "{what}: {direction} {list}"
            );
        }
    }
    assert_eq!(
        p["responses"].as_i64(),
        Some(nats["resp"]["max"].as_i64().unwrap_or(0)),
        "{what}: responses"
    );
}

#[test]
fn explain_agrees_with_what_the_service_grants_in_each_inbox_mode() {
    for mode in MODES {
        let mut b = StackBuilder::new().nats_account("PAYMENTS").policy(POLICY);
        b = b.env("INBOX_MODE", mode);
        for (ns, name, ann) in ACCOUNTS {
            b = b.account(ns, name, ann);
        }
        let s = b.start();
        let policy = s.policy_file.as_ref().expect("policy file");
        let explain = Explain::new()
            .kube_api(&s.api)
            .env("POLICY_FILE", policy.to_str().expect("utf8"))
            .env("INBOX_MODE", mode);
        for (ns, name, _) in &ACCOUNTS[..3] {
            let what = format!("INBOX_MODE={mode} {ns}/{name}");
            let before = s.api.get_requests();
            let explained = explain.json(&format!("{ns}/{name}"), 0);
            assert_eq!(s.api.get_requests(), before + 1, "{what}: one GET");
            assert_eq!(explained["inbox_mode"], mode);
            assert_eq!(explained["source"]["kind"], "api");
            assert_eq!(
                explained["service_account"]["uid"].as_str(),
                s.api.uid_of(ns, name).as_deref()
            );
            assert_same_grant(&explained, &granted(&s, ns, name), &what);
        }
        // The service refuses what explain says is not served, for the reason it gives.
        let refused = explain.json("kube-system/ops", 3);
        assert_eq!(refused["served"], false);
        s.assert_denied(&s.token("kube-system", "ops"), "namespace_not_allowed");
        let reason = refused["not_served_reason"].as_str().expect("a reason");
        assert!(s.service.log().contains(reason), "{reason}");
    }
}

#[test]
fn explain_says_why_each_entry_is_kept_or_dropped_and_where_the_account_comes_from() {
    let api = KubeEmulator::start();
    for (ns, name, ann) in ACCOUNTS {
        api.create_service_account(ns, name, ann);
    }
    let explain = Explain::new()
        .kube_api(&api)
        .file("POLICY_FILE", "policy.yaml", POLICY);

    let payments = explain.json("payments/api", 0);
    assert_eq!(
        payments["account"],
        json!({"name": "PAYMENTS", "from": "rule"})
    );
    assert_eq!(
        payments["governance"],
        json!({"kind": "rule", "rule": 0, "description": "rules[0]"})
    );
    let entry = |report: &Value, i: usize| {
        let e = &report["entries"][i];
        (
            e["entry"].as_str().unwrap_or_default().to_owned(),
            e["outcome"].as_str().unwrap_or_default().to_owned(),
            e["within"]
                .as_str()
                .or(e["cause"].as_str())
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let owned = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        entry(&payments, 0),
        owned("orders.>", "granted", "orders.>")
    );
    assert_eq!(
        entry(&payments, 1),
        owned("ledger.api.>", "granted", "ledger.api.>")
    );
    assert_eq!(
        entry(&payments, 2),
        owned("ledger.other.x", "dropped", "not_allowed_by_policy")
    );
    assert_eq!(entry(&payments, 3), owned("a..b", "dropped", "invalid"));
    assert_eq!(payments["entries"][3]["reason"], "not a valid NATS subject");
    assert_eq!(payments["entries"][4]["direction"], "subscribe");

    let shop = explain.json("team-a/shop", 0);
    assert_eq!(shop["account"], json!({"name": "APP", "from": "default"}));
    assert_eq!(shop["governance"]["kind"], "defaults");
    assert_eq!(
        entry(&shop, 1),
        owned("team-b.cmd", "dropped", "not_allowed_by_policy")
    );
    assert_eq!(shop["entries"][3]["outcome"], "already_granted");
    assert_eq!(shop["entries"][3]["covered_by"], "team-a.>");
    assert_eq!(shop["entries"][5]["cause"], "reserved");

    // A rule without an account: governed by the rule, placed in the default account.
    let worker = explain.json("batch-1/worker", 0);
    assert_eq!(worker["account"], json!({"name": "APP", "from": "default"}));
    assert_eq!(worker["governance"]["rule"], 1);
    assert_eq!(
        entry(&worker, 0),
        owned("jobs.batch-1.done", "granted", "jobs.batch-1.>")
    );
    assert_eq!(entry(&worker, 1).1, "dropped");

    // The text report says the same for people.
    let text = explain.run(&["payments/api"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    for line in [
        "serviceaccount  payments/api (uid ",
        "served          yes",
        "inbox mode      shared",
        "account         PAYMENTS (named by rules[0])",
        "governed by     rules[0]",
        "publish         allow payments.>, _INBOX.>, orders.>, ledger.api.>",
        "                deny  $SYS.>",
        "responses       none",
        "  publish   ledger.other.x  dropped: not within what the admin policy lets annotations grant",
        "  publish   orders.>        kept, within orders.> (rules[0])",
    ] {
        assert!(text.stdout.contains(line), "{line:?} missing from:\n{}", text.stdout);
    }

    // Without a policy file: unbounded, and said so.
    let unbounded = Explain::new().kube_api(&api).json("team-a/shop", 0);
    assert!(unbounded["policy_file"].is_null());
    assert_eq!(unbounded["governance"]["kind"], "no_policy");
    assert_eq!(unbounded["entries"][1]["outcome"], "granted");
    assert!(unbounded["entries"][1]["within"].is_null());
    let text = Explain::new().kube_api(&api).run(&["team-a/shop"]);
    assert!(
        text.stdout
            .contains("team-b.cmd       kept (no policy file)"),
        "{}",
        text.stdout
    );
}

#[test]
fn explain_reads_a_local_serviceaccount_file_in_each_inbox_mode() {
    let expected = [
        (
            "shared",
            vec!["payments.>", "_INBOX.>", "orders.>", "ledger.api.>"],
            vec!["payments.>", "_INBOX.>", "orders.>"],
            0,
        ),
        (
            "private",
            vec!["payments.>", "_INBOX.>", "orders.>", "ledger.api.>"],
            vec!["payments.>", "_INBOX.payments.api.>", "orders.>"],
            0,
        ),
        (
            "responses",
            vec!["payments.>", "orders.>", "ledger.api.>"],
            vec![
                "payments.>",
                "_INBOX.>",
                "_INBOX_payments_api.>",
                "orders.>",
            ],
            1,
        ),
    ];
    for (mode, publish, subscribe, responses) in expected {
        let explain = Explain::new()
            .file("SERVICE_ACCOUNTS_PATH", "sa.json", &accounts_file())
            .file("POLICY_FILE", "policy.yaml", POLICY)
            .env("INBOX_MODE", mode);
        let r = explain.json("payments/api", 0);
        assert_eq!(r["source"]["kind"], "file");
        assert!(r["source"]["location"]
            .as_str()
            .unwrap_or_default()
            .ends_with("sa.json"));
        assert_eq!(r["service_account"]["uid"], "uid-1");
        assert_eq!(r["inbox_mode"], mode);
        assert_eq!(r["account"]["name"], "PAYMENTS");
        let p = &r["permissions"];
        assert_eq!(subjects(&p["publish"]["allow"]), publish, "{mode}");
        assert_eq!(subjects(&p["subscribe"]["allow"]), subscribe, "{mode}");
        assert_eq!(subjects(&p["publish"]["deny"]), ["$SYS.>"]);
        assert_eq!(subjects(&p["subscribe"]["deny"]), ["$SYS.>"]);
        assert_eq!(p["responses"], responses);
        assert_eq!(explain.json("kube-system/ops", 3)["served"], false);
    }
}

#[test]
fn explain_needs_none_of_the_services_other_settings_and_works_beside_them() {
    let explain = Explain::new()
        .file("SERVICE_ACCOUNTS_PATH", "sa.json", &accounts_file())
        .file("POLICY_FILE", "policy.yaml", POLICY);
    // Only the settings it needs: no signing key, xkey, NATS or JWKS settings.
    assert_eq!(explain.json("team-a/shop", 0)["account"]["name"], "APP");
    // The pod's whole environment, even with settings the service would refuse: not read.
    let pod = explain
        .env("NATS_URL", "nats://callout:S3cret@nats:4222")
        .env(
            "NATS_SIGNING_KEY_FILE",
            "/var/run/secrets/callout/signing.nk",
        )
        .env("NATS_XKEY_SEED_FILE", "/var/run/secrets/callout/xkey.nk")
        .env("JWKS_URL", "http://not-https.example/keys")
        .env("PORT", "http");
    let run = pod.run(&["team-a/shop"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stdout.contains("S3cret") && !run.stderr.contains("S3cret"));
}

#[test]
fn a_serviceaccount_that_does_not_exist_exits_4() {
    let api = KubeEmulator::start();
    let run = Explain::new().kube_api(&api).run(&["team-a/nobody"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr.contains(&format!(
            "serviceaccount team-a/nobody not found in the Kubernetes API at {}",
            api.url()
        )),
        "{}",
        run.stderr
    );
    let run = Explain::new()
        .file("SERVICE_ACCOUNTS_PATH", "sa.json", &accounts_file())
        .run(&["team-a/nobody", "--output", "json"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stdout.is_empty());
    assert!(run
        .stderr
        .contains("serviceaccount team-a/nobody not found in the file "));
}

#[test]
fn a_namespace_the_policy_does_not_serve_exits_3_with_the_reason() {
    let explain = Explain::new()
        .file("SERVICE_ACCOUNTS_PATH", "sa.json", &accounts_file())
        .file("POLICY_FILE", "policy.yaml", POLICY);
    let r = explain.json("kube-system/ops", 3);
    assert_eq!(
        r["not_served_reason"],
        "namespaces.exclude pattern \"kube-*\" matches it"
    );
    for key in ["account", "governance", "permissions"] {
        assert!(r[key].is_null(), "{key}: {r}");
    }
    let run = explain.run(&["kube-system/ops"]);
    assert_eq!(run.code, 3);
    assert!(run
        .stdout
        .contains("served          no: namespaces.exclude pattern \"kube-*\" matches it"));
    assert!(
        run.stderr.contains("kube-system/ops would be refused: the policy does not serve its namespace (namespaces.exclude pattern \"kube-*\" matches it)"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_missing_or_broken_policy_file_is_a_configuration_error() {
    let base = || Explain::new().file("SERVICE_ACCOUNTS_PATH", "sa.json", &accounts_file());
    let missing = base()
        .env("POLICY_FILE", "/nonexistent/policy.yaml")
        .run(&["team-a/shop"]);
    assert_eq!(missing.code, 5, "{}", missing.stderr);
    assert!(missing.stdout.is_empty());
    assert!(
        missing
            .stderr
            .contains("POLICY_FILE: invalid policy /nonexistent/policy.yaml:\n  - cannot read it"),
        "{}",
        missing.stderr
    );
    let broken = base()
        .file(
            "POLICY_FILE",
            "policy.yaml",
            "annotations:\n  publish: [\"a..b\"]\nrules:\n  - namespaces: []\n",
        )
        .run(&["team-a/shop"]);
    assert_eq!(broken.code, 5, "{}", broken.stderr);
    for needle in [
        "annotations.publish[0] \"a..b\" is not a valid NATS subject",
        "rules[0].namespaces is empty",
    ] {
        assert!(
            broken.stderr.contains(needle),
            "{needle}: {}",
            broken.stderr
        );
    }
}

#[test]
fn other_settings_and_sources_that_cannot_be_used_exit_5() {
    let cases: [(Explain, &str); 5] = [
        (
            Explain::new().env("INBOX_MODE", "public"),
            "INBOX_MODE=\"public\" is not one of",
        ),
        (
            Explain::new()
                .env("NATS_ACCOUNT", "")
                .env("SERVICE_ACCOUNTS_PATH", "/x"),
            "NATS_ACCOUNT is required",
        ),
        // Outside a cluster, the in-cluster default names the way out.
        (Explain::new(), "set K8S_IN_CLUSTER=false"),
        (
            Explain::new()
                .env("K8S_IN_CLUSTER", "false")
                .env("KUBECONFIG", "/nonexistent/kubeconfig"),
            "cannot read kubeconfig file /nonexistent/kubeconfig",
        ),
        (
            Explain::new().file("SERVICE_ACCOUNTS_PATH", "sa.yaml", "kind: [unclosed"),
            "is not valid YAML",
        ),
    ];
    for (explain, needle) in cases {
        let run = explain.run(&["team-a/shop"]);
        assert_eq!(run.code, 5, "{needle}: {}", run.stderr);
        assert!(run.stderr.contains(needle), "{needle}: {}", run.stderr);
    }
}

#[test]
fn an_api_failure_exits_6_without_the_credentials() {
    let api = KubeEmulator::start();
    api.create_service_account("team-a", "app", &[]);
    api.fail_next(1, 403, None, Some("/serviceaccounts/app"));
    let explain = Explain::new().kube_api(&api);
    let run = explain.run(&["team-a/app"]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("cannot get serviceaccount team-a/app from")
            && run.stderr.contains("403"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(&api.token()), "{}", run.stderr);
    api.set_down(true);
    assert_eq!(explain.run(&["team-a/app"]).code, 6);
}

#[test]
fn a_target_that_is_not_namespace_slash_name_is_a_usage_error() {
    for bad in ["app", "Team-A/app", "team-a/app/x"] {
        let run = Explain::new().run(&[bad]);
        assert_eq!(run.code, 2, "{bad}: {}", run.stderr);
        assert!(
            run.stderr.contains("NAMESPACE/NAME"),
            "{bad}: {}",
            run.stderr
        );
    }
}
