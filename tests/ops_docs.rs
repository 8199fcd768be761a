//! The operations documentation, checked against the real thing:
//!
//! - `docs/alerts/prometheus-rules.yaml` passes `promtool check rules`, its alerts fire (and stay
//!   quiet) as docs/OPERATIONS.md says under `promtool test rules`, and every metric it queries
//!   is one the service really exposes on `/metrics` (or a documented kube-state-metrics one);
//! - every query of the chart's Grafana dashboard is valid PromQL (promtool) on metrics the
//!   service really exposes, and every family the alerts leave out is on the dashboard;
//! - the metric table of docs/OPERATIONS.md lists exactly the service's metric families, with
//!   their real types and labels;
//! - the signing-key rotation procedure of docs/OPERATIONS.md works as written, step by step,
//!   with a real nats-server in config mode and the service binary.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::client::{connect_token, is_authorization_violation, Client};
use support::kube::{KubeEmulator, DEFAULT_ISSUER};
use support::nats::{free_port, nats_server_bin, CalloutKeys};
use support::service::{Service, ServiceBuilder};
use support::stack::StackBuilder;
use support::tokens::{jwks, SigningKey, TokenBuilder};

const RULES: &str = "docs/alerts/prometheus-rules.yaml";
const DASHBOARD: &str = "helm/nats-k8s-oidc-callout/files/grafana-dashboard.json";
const OPERATIONS: &str = "docs/OPERATIONS.md";
const WAIT: Duration = Duration::from_secs(20);

/// Metrics the rules may use that come from elsewhere than the service (each must be named in
/// OPERATIONS.md, which says where it comes from).
const EXTERNAL_METRICS: &[&str] = &[
    "up",
    "kube_deployment_status_replicas_available",
    "kube_pod_status_ready",
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// promtool

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn apt_get(args: &[&str]) -> bool {
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The `promtool` binary: `PROMTOOL`, the one on PATH, or installed from the Debian package
/// `prometheus`. Panics when none can be had: the rules must never go unchecked.
fn promtool() -> &'static Path {
    static PROMTOOL: OnceLock<PathBuf> = OnceLock::new();
    PROMTOOL.get_or_init(|| {
        if let Some(p) = std::env::var_os("PROMTOOL") {
            return PathBuf::from(p);
        }
        if let Some(p) = find_on_path("promtool") {
            return p;
        }
        let install = ["install", "-y", "--no-install-recommends", "prometheus"];
        if !apt_get(&install) {
            apt_get(&["update"]);
            apt_get(&install);
        }
        find_on_path("promtool").unwrap_or_else(|| {
            panic!(
                "promtool is not installed and `apt-get install prometheus` did not provide it: \
                 install it (Debian package `prometheus`) or set PROMTOOL; the alert rules are \
                 not checked without it"
            )
        })
    })
}

fn run_promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------------------------
// the rules file

/// (alert name, expression) of every rule in the rules file.
fn rules() -> Vec<(String, String)> {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(RULES)).expect("the rules file is YAML");
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups: a list") {
        for rule in group["rules"].as_sequence().expect("rules: a list") {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .expect("each rule has a name")
                .to_string();
            let expr = rule["expr"].as_str().expect("each rule has an expr");
            out.push((name, expr.to_string()));
        }
    }
    out
}

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];

/// Skips a quoted string starting at `i` (the quote); returns the index after it.
fn skip_string(c: &[char], mut i: usize) -> usize {
    let q = c[i];
    i += 1;
    while i < c.len() && c[i] != q {
        if c[i] == '\\' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Skips a bracketed group starting at `i` (the opening bracket), strings inside included.
fn skip_group(c: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    while i < c.len() {
        match c[i] {
            '"' | '\'' | '`' => {
                i = skip_string(c, i);
                continue;
            }
            x if x == open => depth += 1,
            x if x == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// The metric names a PromQL expression selects: identifiers that are not functions,
/// aggregations, keywords, label names (in `{…}` or grouping lists) or numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let c: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i = skip_string(&c, i);
        } else if ch == '{' {
            i = skip_group(&c, i, '{', '}');
        } else if ch == '[' {
            i = skip_group(&c, i, '[', ']');
        } else if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch.is_ascii_digit()
            || (ch == '.' && c.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let mut j = i;
            while j < c.len() && c[j].is_whitespace() {
                j += 1;
            }
            let lower = word.to_ascii_lowercase();
            // `sum by (x) (…)`: an aggregation whose grouping comes before its argument.
            let rest: String = c[j..]
                .iter()
                .take(8)
                .collect::<String>()
                .to_ascii_lowercase();
            let grouped_aggregation = ["by", "without"].iter().any(|k| {
                rest.strip_prefix(k)
                    .is_some_and(|r| r.starts_with(|ch: char| ch == '(' || ch.is_whitespace()))
            });
            if grouped_aggregation {
                // an aggregation operator
            } else if GROUPING.contains(&lower.as_str()) {
                if c.get(j) == Some(&'(') {
                    i = skip_group(&c, j, '(', ')');
                }
            } else if c.get(j) == Some(&'(') || KEYWORDS.contains(&lower.as_str()) {
                // a function or aggregation, or an operator keyword
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_metric_name_extraction_sees_selectors_only() {
    let names = metric_names(
        r#"sum by (reason) (rate(a_total{result="deny", x=~"b|c{"}[5m])) / on() group_left()
           sum(rate(a_total[10m])) > 0.25 and on(instance) histogram_quantile(0.99, b_bucket) > 1e3
           or absent(up{job="j"}) unless ignoring(le) c"#,
    );
    let want: BTreeSet<String> = ["a_total", "b_bucket", "up", "c"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, want);
}

// ---------------------------------------------------------------------------------------------
// /metrics

/// What the service's `/metrics` says about its metric families.
struct Exposition {
    /// Family name → type, from `# TYPE`.
    types: BTreeMap<String, String>,
    /// Series name (as PromQL selects it) → label names seen on its samples.
    series: BTreeMap<String, BTreeSet<String>>,
}

impl Exposition {
    fn parse(body: &str) -> Exposition {
        let mut types = BTreeMap::new();
        let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                    panic!("bad TYPE line {line:?}");
                };
                types.insert(name.to_string(), kind.to_string());
                // A family with labels has no sample until its first observation: its series
                // names follow from the type (OpenMetrics suffixes).
                let names: Vec<String> = match kind {
                    "counter" => vec![format!("{name}_total")],
                    "histogram" => ["_bucket", "_sum", "_count"]
                        .iter()
                        .map(|s| format!("{name}{s}"))
                        .collect(),
                    _ => vec![name.to_string()],
                };
                for n in names {
                    series.entry(n).or_default();
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                let name = &line[..end];
                let labels = series.entry(name.to_string()).or_default();
                if let Some(open) = line.find('{') {
                    let close = line.rfind('}').expect("closing brace");
                    for pair in line[open + 1..close].split(',') {
                        if let Some((k, _)) = pair.split_once('=') {
                            labels.insert(k.trim().to_string());
                        }
                    }
                }
            }
        }
        Exposition { types, series }
    }
}

/// The real `/metrics` of a service that has allowed a client, denied one and dropped an
/// annotation entry, so every labelled family has samples.
fn scrape_exercised_service() -> String {
    let policy = "annotations:\n  publish: [\"shared.>\"]\n";
    let s = StackBuilder::new()
        .policy(policy)
        .account(
            "team-b",
            "worker",
            &[("nats.io/allowed-pub-subjects", "shared.>, bad subject")],
        )
        .start();
    // One good and one broken new version of the policy file.
    let reloads = |result: &str| {
        s.service.metric(&format!(
            "nats_callout_policy_reloads_total{{result=\"{result}\"}}"
        ))
    };
    s.replace_policy(&format!("{policy}namespaces:\n  exclude: [kube-system]\n"));
    s.service
        .wait_for("policy re-read", Duration::from_secs(10), || {
            reloads("success") >= 1.0
        });
    s.replace_policy("rules: oops\n");
    s.service
        .wait_for("broken policy counted", Duration::from_secs(10), || {
            reloads("failure") >= 1.0
        });
    // The signing key file swapped in again (same seed), then a broken one.
    let key_reloads = |result: &str| {
        s.service.metric(&format!(
            "nats_callout_key_reloads_total{{result=\"{result}\"}}"
        ))
    };
    let seed = s.service.dir().join("signing.nk");
    let swap = |text: &str| {
        let next = s.service.dir().join("signing.next");
        fs::write(&next, text).expect("write the key");
        fs::rename(&next, &seed).expect("swap the key");
    };
    swap(&s.keys.account.seed().expect("seed"));
    s.service
        .wait_for("key re-read", Duration::from_secs(15), || {
            key_reloads("success") >= 1.0
        });
    swap("not a seed");
    s.service
        .wait_for("broken key counted", Duration::from_secs(15), || {
            key_reloads("failure") >= 1.0
        });
    s.assert_connects("team-a", "app");
    s.assert_connects("team-b", "worker");
    s.assert_denied(
        &TokenBuilder::for_sa("team-a", "app", "wrong-uid").sign(&s.key),
        "serviceaccount_uid_mismatch",
    );
    let (status, body) = s.service.get("/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    body
}

fn exposition() -> &'static Exposition {
    static EXPO: OnceLock<Exposition> = OnceLock::new();
    EXPO.get_or_init(|| Exposition::parse(&scrape_exercised_service()))
}

// ---------------------------------------------------------------------------------------------
// the dashboard: valid PromQL on real metrics, covering what the alerts leave out

/// (panel title, expression) of every query of the dashboard.
fn dashboard_queries() -> Vec<(String, String)> {
    let doc: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in doc["panels"].as_array().expect("panels: a list") {
        let title = panel["title"].as_str().expect("each panel has a title");
        for target in panel["targets"].as_array().expect("each panel has targets") {
            let expr = target["expr"].as_str().expect("each target has an expr");
            out.push((title.to_string(), expr.to_string()));
        }
    }
    out
}

#[test]
fn every_dashboard_query_is_valid_promql_on_real_metrics() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{} queries", queries.len());
    // promtool reads each as a recording rule: a syntax error fails the check.
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("dashboard.yaml");
    let mut text = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        text.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).expect("quote")
        ));
    }
    fs::write(&rules, text).expect("write");
    let (ok, out) = run_promtool(&["check", "rules", rules.to_str().expect("utf8 path")]);
    assert!(
        ok,
        "promtool check rules on the dashboard's queries failed:\n{out}"
    );
    // Each queries series the service exposes.
    let expo = exposition();
    let mut used = BTreeSet::new();
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr:?}");
        for name in names {
            assert!(
                expo.series.contains_key(&name),
                "{title} queries {name}, which the service's /metrics does not expose"
            );
            used.insert(name);
        }
    }
    // What no alert watches is at least on the dashboard.
    for family in DASHBOARD_ONLY {
        assert!(
            used.iter()
                .any(|u| u == family || u.starts_with(&format!("{family}_"))),
            "{family} is said to be read on the dashboard, which has no query of it"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// the rules: valid, behaving as documented, on real metrics

#[test]
fn the_alert_rules_pass_promtool_check() {
    let (ok, out) = run_promtool(&["check", "rules", RULES]);
    assert!(ok, "promtool check rules failed:\n{out}");
    let n = rules().len();
    assert!(n >= 10, "expected the documented alerts, found {n}");
    assert!(
        out.contains(&format!("SUCCESS: {n} rules found")),
        "promtool saw another number of rules than {n}:\n{out}"
    );
}

#[test]
fn every_metric_the_rules_query_exists() {
    let expo = exposition();
    let ops = read(OPERATIONS);
    let mut used = BTreeSet::new();
    for (alert, expr) in rules() {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{alert}: no metric found in {expr:?}");
        for name in names {
            if EXTERNAL_METRICS.contains(&name.as_str()) {
                assert!(
                    ops.contains(&format!("`{name}`")),
                    "{alert} uses {name}: OPERATIONS.md must say where it comes from"
                );
            } else {
                assert!(
                    expo.series.contains_key(&name),
                    "{alert} queries {name}, which the service's /metrics does not expose; it has: {:?}",
                    expo.series.keys().collect::<Vec<_>>()
                );
            }
            used.insert(name);
        }
    }
    // The rules watch every family the service has, except these, read on dashboards only.
    for family in DASHBOARD_ONLY {
        assert!(
            expo.types.contains_key(*family),
            "{family} is no metric family"
        );
    }
    for family in expo.types.keys() {
        let covered = used.iter().any(|u| {
            u == family
                || (u
                    .strip_prefix(family.as_str())
                    .is_some_and(|s| s.starts_with('_'))
                    && expo.series.contains_key(u))
        });
        assert!(
            covered || DASHBOARD_ONLY.contains(&family.as_str()),
            "no rule watches {family}; add one or list it as dashboard-only"
        );
    }
}

/// Families graphed on the dashboard but watched by no alert.
const DASHBOARD_ONLY: &[&str] = &[
    "nats_callout_queue_depth",
    "nats_callout_serviceaccounts",
    "nats_callout_cache_miss_lookups",
    "nats_callout_jwks_refreshes",
    // Misbehaving HTTP clients do not keep the probes from answering (tests/http_attack.rs):
    // worth a graph, not a page.
    "nats_callout_http_connections",
    "nats_callout_http_connections_dropped",
    // The self-check's results by kind: the alert watches the failing gauge, the graph says why.
    "nats_callout_self_checks",
    // Revocations that worked: the alert watches the failures.
    "nats_callout_revocations",
    "nats_callout_connections_revoked",
    // A cold verified-token cache costs CPU, not correctness: worth a graph, not a page.
    "nats_callout_token_cache_lookups",
    "nats_callout_token_cache_entries",
    // How many pods the pod binding check holds: the alert watches whether it follows the cluster.
    "nats_callout_pods",
];

/// A `promtool test rules` file: the problems OPERATIONS.md names make their alert fire, and a
/// healthy hour fires nothing.
fn rule_unit_tests(rules_path: &Path) -> String {
    format!(
        r#"rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  # A healthy hour: 2 replicas, 1 connect/s with 1 % denials, a watch ending every 5 minutes,
  # one relist at start, fast decisions.
  - interval: 1m
    input_series:
      - series: 'up{{job="nats-k8s-oidc-callout",instance="a"}}'
        values: '1x60'
      - series: 'kube_deployment_status_replicas_available{{deployment="nats-k8s-oidc-callout"}}'
        values: '2x60'
      - series: 'kube_pod_status_ready{{condition="false",namespace="nats",pod="nats-k8s-oidc-callout-7d9f-abcde"}}'
        values: '0x60'
      - series: 'nats_callout_decisions_total{{instance="a",result="allow",reason="granted"}}'
        values: '0+59x60'
      - series: 'nats_callout_decisions_total{{instance="a",result="deny",reason="token_expired"}}'
        values: '0+1x60'
      - series: 'nats_callout_decision_duration_seconds_bucket{{instance="a",le="0.0016"}}'
        values: '0+59x60'
      - series: 'nats_callout_decision_duration_seconds_bucket{{instance="a",le="0.0032"}}'
        values: '0+60x60'
      - series: 'nats_callout_decision_duration_seconds_bucket{{instance="a",le="+Inf"}}'
        values: '0+60x60'
      - series: 'nats_callout_decision_duration_seconds_count{{instance="a"}}'
        values: '0+60x60'
      - series: 'nats_callout_queue_rejected_total{{instance="a"}}'
        values: '0x60'
      - series: 'nats_callout_nats_disconnects_total{{instance="a"}}'
        values: '0x60'
      - series: 'nats_callout_nats_reconnects_total{{instance="a"}}'
        values: '0x60'
      - series: 'nats_callout_jwks_refresh_failures_total{{instance="a"}}'
        values: '0x60'
      - series: 'nats_callout_jwks_keys{{instance="a"}}'
        values: '2x60'
      - series: 'nats_callout_watch_restarts_total{{instance="a"}}'
        values: '0 0 0 0 1 1 1 1 1 2 2 2 2 2 3 3 3 3 3 4 4 4 4 4 5 5 5 5 5 6 6 6 6 6 7 7 7 7 7 8 8 8 8 8 9 9 9 9 9 10 10 10 10 10 11 11 11 11 11 12 12'
      - series: 'nats_callout_cache_relists_total{{instance="a"}}'
        values: '1x60'
      - series: 'nats_callout_cache_current_timestamp_seconds{{instance="a"}}'
        values: '0+60x60'
      # A replica reading ServiceAccounts from a file: never "current", never stale.
      - series: 'nats_callout_cache_current_timestamp_seconds{{instance="file"}}'
        values: '0x60'
      # The pod cache following the cluster, and a replica with the pod binding check off (0).
      - series: 'nats_callout_pod_cache_current_timestamp_seconds{{instance="a"}}'
        values: '0+60x60'
      - series: 'nats_callout_pod_cache_current_timestamp_seconds{{instance="off"}}'
        values: '0x60'
      - series: 'nats_callout_dropped_annotation_entries_total{{instance="a",direction="pub",cause="invalid"}}'
        values: '0x60'
      - series: 'nats_callout_policy_reloads_total{{instance="a",result="success"}}'
        values: '0 0 0 0 0 0 0 0 0 0 1x50'
      - series: 'nats_callout_events_total{{instance="a",result="created"}}'
        values: '0 0 0 1x57'
      - series: 'nats_callout_events_total{{instance="a",result="exists"}}'
        values: '0 0 0 0 1x56'
      - series: 'nats_callout_key_reloads_total{{instance="a",result="success"}}'
        values: '0x20 1x40'
      - series: 'nats_callout_nats_file_reloads_total{{instance="a",result="success"}}'
        values: '0x30 1x30'
      # A self-check refused once (a rollout in between), passing again the next minute.
      - series: 'nats_callout_self_check_failing{{instance="a"}}'
        values: '0x20 1 0x39'
      - series: 'nats_callout_revocation_failures_total{{instance="a"}}'
        values: '0x60'
    promql_expr_test:
      - expr: ALERTS{{alertstate="firing"}}
        eval_time: 60m
        exp_samples: []
  # Everything going wrong at once on replica "b".
  - interval: 1m
    input_series:
      - series: 'up{{job="nats-k8s-oidc-callout",instance="b"}}'
        values: '0x40'
      - series: 'kube_deployment_status_replicas_available{{deployment="nats-k8s-oidc-callout"}}'
        values: '0x40'
      - series: 'kube_pod_status_ready{{condition="false",namespace="nats",pod="nats-k8s-oidc-callout-7d9f-abcde"}}'
        values: '1x40'
      - series: 'nats_callout_decisions_total{{instance="b",result="allow",reason="granted"}}'
        values: '0+60x40'
      - series: 'nats_callout_decisions_total{{instance="b",result="deny",reason="token_wrong_audience"}}'
        values: '0+60x40'
      - series: 'nats_callout_decisions_total{{instance="b",result="deny",reason="serviceaccount_lookup_failed"}}'
        values: '0+2x40'
      - series: 'nats_callout_decision_duration_seconds_bucket{{instance="b",le="0.1024"}}'
        values: '0+50x40'
      - series: 'nats_callout_decision_duration_seconds_bucket{{instance="b",le="+Inf"}}'
        values: '0+122x40'
      - series: 'nats_callout_decision_duration_seconds_count{{instance="b"}}'
        values: '0+122x40'
      - series: 'nats_callout_queue_rejected_total{{instance="b"}}'
        values: '0+5x40'
      - series: 'nats_callout_nats_disconnects_total{{instance="b"}}'
        values: '0 1 1 2 2 3 3 4 5 5x31'
      - series: 'nats_callout_nats_reconnects_total{{instance="b"}}'
        values: '0 0 1 1 2 2 3 3 4 4x31'
      - series: 'nats_callout_jwks_refresh_failures_total{{instance="b"}}'
        values: '0+2x40'
      - series: 'nats_callout_jwks_keys{{instance="b"}}'
        values: '0x40'
      - series: 'nats_callout_watch_restarts_total{{instance="b"}}'
        values: '0+2x40'
      - series: 'nats_callout_cache_relists_total{{instance="b"}}'
        values: '0+1x40'
      - series: 'nats_callout_cache_current_timestamp_seconds{{instance="b"}}'
        values: '0+60x10 600x30'
      - series: 'nats_callout_pod_cache_current_timestamp_seconds{{instance="b"}}'
        values: '0+60x10 600x30'
      - series: 'nats_callout_dropped_annotation_entries_total{{instance="b",direction="sub",cause="reserved"}}'
        values: '0+1x40'
      - series: 'nats_callout_policy_reloads_total{{instance="b",result="failure"}}'
        values: '0x30 1x10'
      - series: 'nats_callout_events_total{{instance="b",result="failed"}}'
        values: '0+1x40'
      - series: 'nats_callout_key_reloads_total{{instance="b",result="failure"}}'
        values: '0x30 1x10'
      - series: 'nats_callout_nats_file_reloads_total{{instance="b",result="failure"}}'
        values: '0x30 1x10'
      - series: 'nats_callout_self_check_failing{{instance="b"}}'
        values: '0x10 1x30'
      - series: 'nats_callout_revocation_failures_total{{instance="b"}}'
        values: '0x30 1x10'
    promql_expr_test:
      - expr: count by (alertname) (ALERTS{{alertstate="firing"}})
        eval_time: 40m
        exp_samples:
          - {{labels: '{{alertname="NatsCalloutNoReadyReplica"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutReplicaNotReady"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutScrapeDown"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutNatsDisconnected"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutDenyRatioHigh"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutClusterSideDenials"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutDecisionLatencyHigh"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutQueueRejections"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutJwksRefreshFailing"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutNoKeySet"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutWatchRestartStorm"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutCacheStale"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutPodCacheStale"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutRelistStorm"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutDroppedAnnotationEntries"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutPolicyReloadFailing"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutEventsFailing"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutKeyReloadFailing"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutSelfCheckFailing"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutNatsFileRotationFailing"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutRevocationFailing"}}', value: 1}}
      - expr: ALERTS{{alertstate="firing",alertname=~"NatsCalloutDenyRatioHigh|NatsCalloutClusterSideDenials"}}
        eval_time: 40m
        exp_samples:
          - labels: 'ALERTS{{alertname="NatsCalloutDenyRatioHigh",alertstate="firing",reason="token_wrong_audience",severity="warning"}}'
            value: 1
          - labels: 'ALERTS{{alertname="NatsCalloutClusterSideDenials",alertstate="firing",reason="serviceaccount_lookup_failed",severity="warning"}}'
            value: 1
  # The NATS connection flaps but comes back each time: flapping, not disconnected.
  - interval: 1m
    input_series:
      - series: 'nats_callout_nats_disconnects_total{{instance="c"}}'
        values: '0 1 2 3 4 5x10'
      - series: 'nats_callout_nats_reconnects_total{{instance="c"}}'
        values: '0 1 2 3 4 5x10'
    promql_expr_test:
      - expr: count by (alertname) (ALERTS{{alertstate="firing",alertname=~"NatsCalloutNats.*"}})
        eval_time: 10m
        exp_samples:
          - {{labels: '{{alertname="NatsCalloutNatsFlapping"}}', value: 1}}
  # The pod cache stuck at 5m on "d" (its pod watch failing): stale from 10m on, firing 5 minutes
  # later. "off" runs without the pod binding check, its gauge 0: never stale. Neither touches
  # the ServiceAccount cache's alert.
  - interval: 1m
    input_series:
      - series: 'nats_callout_pod_cache_current_timestamp_seconds{{instance="d"}}'
        values: '0+60x5 300x25'
      - series: 'nats_callout_pod_cache_current_timestamp_seconds{{instance="off"}}'
        values: '0x30'
    promql_expr_test:
      - expr: ALERTS{{alertname=~"NatsCallout(Pod)?CacheStale"}}
        eval_time: 14m
        exp_samples:
          - labels: 'ALERTS{{alertname="NatsCalloutPodCacheStale",alertstate="pending",instance="d",severity="warning"}}'
            value: 1
      - expr: ALERTS{{alertname=~"NatsCallout(Pod)?CacheStale"}}
        eval_time: 30m
        exp_samples:
          - labels: 'ALERTS{{alertname="NatsCalloutPodCacheStale",alertstate="firing",instance="d",severity="warning"}}'
            value: 1
  # The Deployment deleted: kube-state-metrics has no series for it any more, and no replica is
  # scraped; the alerts must not go silent with the series.
  - interval: 1m
    input_series:
      - series: 'kube_deployment_status_replicas_available{{deployment="other"}}'
        values: '1x10'
    promql_expr_test:
      - expr: count by (alertname) (ALERTS{{alertstate="firing"}})
        eval_time: 10m
        exp_samples:
          - {{labels: '{{alertname="NatsCalloutNoReadyReplica"}}', value: 1}}
          - {{labels: '{{alertname="NatsCalloutScrapeDown"}}', value: 1}}
"#,
        rules = rules_path.display()
    )
}

#[test]
fn the_alerts_fire_on_the_documented_problems_and_stay_quiet_when_healthy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tests = dir.path().join("rules_test.yaml");
    fs::write(&tests, rule_unit_tests(&repo(RULES))).expect("write the rule tests");
    let (ok, out) = run_promtool(&["test", "rules", tests.to_str().expect("utf8 path")]);
    assert!(ok, "promtool test rules failed:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// the metric table of OPERATIONS.md

/// Rows of the metric table: (name, label names, type).
fn documented_metrics() -> Vec<(String, BTreeSet<String>, String)> {
    let ops = read(OPERATIONS);
    let mut rows = Vec::new();
    for line in ops.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with("`nats_callout_") {
            continue;
        }
        let name = cells[1].trim_matches('`').to_string();
        let labels = cells[2]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        rows.push((name, labels, cells[3].to_string()));
    }
    rows
}

#[test]
fn the_metric_table_matches_the_real_metrics() {
    let expo = exposition();
    let rows = documented_metrics();
    assert!(!rows.is_empty(), "no metric table found in {OPERATIONS}");
    let mut documented_families = BTreeSet::new();
    for (name, labels, kind) in &rows {
        // The family a documented series name belongs to.
        let family = expo
            .types
            .iter()
            .find(|(f, t)| match t.as_str() {
                "counter" => *name == format!("{f}_total"),
                _ => name == *f,
            })
            .map(|(f, _)| f.clone())
            .unwrap_or_else(|| panic!("{OPERATIONS} documents {name}, which /metrics lacks"));
        assert_eq!(
            &expo.types[&family], kind,
            "{name}: type in {OPERATIONS} differs from /metrics"
        );
        let sample_name = if kind == "histogram" {
            format!("{family}_bucket")
        } else {
            name.clone()
        };
        let mut seen = expo.series[&sample_name].clone();
        seen.remove("le");
        assert_eq!(&seen, labels, "{name}: labels in {OPERATIONS} differ");
        documented_families.insert(family);
    }
    let all: BTreeSet<String> = expo.types.keys().cloned().collect();
    assert_eq!(
        documented_families, all,
        "every metric family is documented once in {OPERATIONS}"
    );
}

// ---------------------------------------------------------------------------------------------
// signing-key rotation, as OPERATIONS.md describes it

/// A nats-server run from a config file this test rewrites; killed when dropped.
struct Server {
    child: Option<Child>,
    port: u16,
    config: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(dir: &Path, port: u16, config: &str) -> Server {
        let path = dir.join("nats.conf");
        fs::write(&path, config).expect("write nats.conf");
        let mut s = Server {
            child: None,
            port,
            config: path,
            log: dir.join("nats-server.log"),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("nats-server log");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server must be installed (scripts/ensure-nats-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `nats-server --signal reload=<pid>`; waits until the server has logged the outcome.
    fn reload(&self) {
        let before = self.log().matches("Trapped \"hangup\" signal").count();
        let st = Command::new(nats_server_bin())
            .arg("--signal")
            .arg(format!("reload={}", self.pid()))
            .status()
            .expect("nats-server --signal");
        assert!(st.success(), "nats-server --signal reload failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches("Trapped \"hangup\" signal").count() == before {
            assert!(Instant::now() < deadline, "no reload seen:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Stops the server (SIGTERM, as a pod deletion does) and starts it on the same config file.
    fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What `nats-k8s-oidc-callout keys` printed, and where it put the seeds.
struct Keys {
    /// Where `signing.nk` is.
    dir: PathBuf,
    /// Where `xkey.nk` is (the same directory unless an xkey is kept across a rotation).
    xkey_dir: PathBuf,
    issuer: String,
    xkey: Option<String>,
    /// The printed `authorization { … }` block.
    block: String,
}

fn generate_keys(dir: &Path, xkey: bool) -> Keys {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nats-k8s-oidc-callout"));
    cmd.arg("keys").arg("--dir").arg(dir).args([
        "--auth-user",
        "callout",
        "--auth-account",
        "AUTH",
    ]);
    if !xkey {
        cmd.arg("--no-xkey");
    }
    let out = cmd.output().expect("run the keys subcommand");
    assert!(out.status.success(), "keys failed: {out:?}");
    let text = String::from_utf8(out.stdout).expect("utf8 output");
    let value = |key: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(&format!("{key}: \"")))
            .map(|v| v.trim_end_matches('"').to_string())
    };
    let block = text
        .lines()
        .skip_while(|l| !l.starts_with("authorization {"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !block.is_empty(),
        "keys printed no authorization block:\n{text}"
    );
    Keys {
        dir: dir.to_path_buf(),
        xkey_dir: dir.to_path_buf(),
        issuer: value("issuer").expect("issuer printed"),
        xkey: value("xkey"),
        block,
    }
}

/// The nats-server config of OPERATIONS.md's example with the `authorization` block `keys`
/// printed.
fn server_config(port: u16, block: &str) -> String {
    format!(
        "listen: \"127.0.0.1:{port}\"\nserver_name: \"rotation\"\naccounts {{\n  AUTH {{ users: [ {{ user: \"callout\", password: \"callout-secret\" }} ] }}\n  APP {{ }}\n}}\n{block}\n"
    )
}

fn start_service(nats: &Server, api: &KubeEmulator, keys: &Keys) -> Service {
    let url = format!("nats://callout:callout-secret@127.0.0.1:{}", nats.port);
    // The harness writes a seed of its own; the environment below points at the `keys` output.
    let mut b = ServiceBuilder::new(&CalloutKeys::new(false), &url, "APP")
        .kube_api(&api.url(), &api.token())
        .env("JWT_ISSUER", DEFAULT_ISSUER)
        .env(
            "NATS_SIGNING_KEY_FILE",
            keys.dir.join("signing.nk").to_str().expect("utf8 path"),
        );
    if keys.xkey.is_some() {
        b = b.env(
            "NATS_XKEY_SEED_FILE",
            keys.xkey_dir.join("xkey.nk").to_str().expect("utf8 path"),
        );
    }
    b.start()
}

fn refused(url: &str, token: &str, when: &str) {
    match connect_token(url, token) {
        Ok(_) => panic!("{when}: a client connected"),
        Err(e) => assert!(is_authorization_violation(&e), "{when}: {e}"),
    }
}

fn connects(url: &str, token: &str, when: &str) -> Client {
    let c = connect_token(url, token).unwrap_or_else(|e| panic!("{when}: {e}"));
    assert!(c.round_trip("team-a.rotation"), "{when}: round trip");
    c
}

/// Which keys a rotation replaces.
#[derive(Clone, Copy, PartialEq)]
enum Rotation {
    /// The signing key and the xkey.
    Both,
    /// The signing key; the xkey stays.
    SigningKeyOnly,
    /// The signing key of a setup without an xkey.
    NoXkey,
}

/// Runs the rotation procedure of OPERATIONS.md; returns the nats-server log and the log of the
/// old service during the switch window.
fn rotate(rotation: Rotation) -> (String, String) {
    let xkey = rotation != Rotation::NoXkey;
    let key = SigningKey::rs256();
    let api = KubeEmulator::builder().jwks(jwks(&[&key])).build();
    api.create_service_account("team-a", "app", &[]);
    let uid = api.uid_of("team-a", "app").expect("uid");
    let token = TokenBuilder::for_sa("team-a", "app", &uid).sign(&key);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();

    // Before: the old keys are in use.
    let old = generate_keys(&dir.path().join("old"), xkey);
    let mut nats = Server::start(dir.path(), port, &server_config(port, &old.block));
    let mut service = start_service(&nats, &api, &old);
    let held = connects(&nats.url(), &token, "before the rotation");

    // Step 1: new keys.
    let mut new = generate_keys(&dir.path().join("new"), xkey);
    assert_ne!(new.issuer, old.issuer);
    if rotation == Rotation::SigningKeyOnly {
        new.xkey = old.xkey.clone();
        new.xkey_dir = old.xkey_dir.clone();
    }
    // Steps 2-3: the service's seeds are replaced on disk (the Secret) and the server's config
    // names the new issuer and xkey. Nothing changes yet: both read them only at start.
    let config = fs::read_to_string(&nats.config).expect("read nats.conf");
    let mut edited = config.replace(&old.issuer, &new.issuer);
    if let (Some(o), Some(n)) = (&old.xkey, &new.xkey) {
        edited = edited.replace(o, n);
    }
    assert_eq!(
        edited.contains(old.xkey.as_deref().unwrap_or("no xkey")),
        rotation == Rotation::SigningKeyOnly
    );
    assert_ne!(edited, config);
    fs::write(&nats.config, &edited).expect("write nats.conf");

    // A reload does not apply it: nats-server refuses to reload auth_callout changes and keeps
    // running on the old keys, its clients untouched.
    nats.reload();
    assert!(
        nats.log()
            .contains("config reload not supported for AuthCallout"),
        "nats-server reloaded the auth_callout block?\n{}",
        nats.log()
    );
    assert!(
        held.round_trip("team-a.after-reload"),
        "a connected client stays connected through the reload"
    );
    connects(
        &nats.url(),
        &token,
        "after the refused reload (old keys still in force)",
    );

    // Step 4: restart nats-server. Its clients are disconnected, as by any restart.
    nats.restart();
    assert!(
        held.wait_disconnected(Duration::from_secs(10)).is_some(),
        "the server restart disconnects its clients"
    );
    service.wait_for("the service reconnected to NATS", WAIT, || {
        service.metric("nats_callout_nats_reconnects_total") >= 1.0
            && service.get("/readyz").map(|(s, _)| s) == Some(200)
    });
    // The switch window: the server trusts the new key, the service still signs with the old.
    refused(&nats.url(), &token, "during the switch window");
    let window_log = service.log();

    // Step 5: restart the service on the new seeds.
    assert!(
        service.terminate(Duration::from_secs(20)).is_some(),
        "the service stops on SIGTERM"
    );
    let mut service = start_service(&nats, &api, &new);
    let after = connects(&nats.url(), &token, "after the rotation");

    // Rolling the service again (any later rollout) disconnects no one.
    assert!(service.terminate(Duration::from_secs(20)).is_some());
    let _service = start_service(&nats, &api, &new);
    assert!(
        after.round_trip("team-a.after-service-restart"),
        "a service restart leaves connected clients alone"
    );
    connects(&nats.url(), &token, "after a later service restart");
    (nats.log(), window_log)
}

#[test]
fn rotating_the_signing_key_and_xkey_works_as_documented() {
    let (nats_log, window_log) = rotate(Rotation::Both);
    // What OPERATIONS.md and TROUBLESHOOTING.md tell the operator to look for in the window.
    assert!(
        nats_log.contains("Auth callout violation: \"no reason supplied\" on account \"AUTH\""),
        "{nats_log}"
    );
    assert!(
        window_log.contains("denied: sealed request does not open with the configured xkey"),
        "{window_log}"
    );
}

#[test]
fn rotating_the_signing_key_without_an_xkey_works_as_documented() {
    let (nats_log, window_log) = rotate(Rotation::NoXkey);
    assert!(
        nats_log.contains("Auth callout signing key is unknown"),
        "{nats_log}"
    );
    // The old service believes it allowed the client: the server threw the answer away.
    assert!(window_log.contains("allowed team-a/app"), "{window_log}");
}

#[test]
fn rotating_only_the_signing_key_works_as_documented() {
    let (nats_log, window_log) = rotate(Rotation::SigningKeyOnly);
    assert!(
        nats_log.contains("Wrong issuer for auth callout response on account \"AUTH\""),
        "{nats_log}"
    );
    assert!(window_log.contains("allowed team-a/app"), "{window_log}");
}
