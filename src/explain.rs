//! `explain NAMESPACE/NAME`: what the service would grant one ServiceAccount, and why.
//!
//! It reads the service's own settings ([`PermissionSettings`]: where ServiceAccounts come from,
//! `NATS_ACCOUNT`, `INBOX_MODE`, `POLICY_FILE`), gets the one ServiceAccount (a GET through the
//! service's API client, or the local file) and runs the service's own [`evaluate`] on it. Nothing
//! else is needed: no signing key, no xkey, no NATS connection.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use crate::config::{AccountsBackend, InvalidConfig, PermissionSettings};
use crate::kube::{
    is_valid_namespace, is_valid_object_name, load_file, ConfigError, FileError, KubeError,
    ServiceAccount,
};
use crate::policy::{
    evaluate, Direction, EntryOutcome, Evaluation, Governance, InboxMode, NotServed,
};

/// Exit code: the ServiceAccount would be granted.
pub const EXIT_GRANTED: u8 = 0;
/// Exit code: the report could not be written to standard output.
pub const EXIT_OUTPUT: u8 = 1;
/// Exit code: the policy does not serve the ServiceAccount's namespace (the report says why).
pub const EXIT_NOT_SERVED: u8 = 3;
/// Exit code: there is no such ServiceAccount.
pub const EXIT_NOT_FOUND: u8 = 4;
/// Exit code: a setting, the policy file, the kubeconfig or the ServiceAccount file is unusable.
pub const EXIT_CONFIG: u8 = 5;
/// Exit code: the API server could not be asked, or answered with an error.
pub const EXIT_API: u8 = 6;

/// Bound on the one GET of the ServiceAccount.
const GET_TIMEOUT: Duration = Duration::from_secs(10);

/// A ServiceAccount named as `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Target, String> {
        let (namespace, name) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not NAMESPACE/NAME"))?;
        // The names go into an API path: the same checks as the service's own lookups.
        if !is_valid_namespace(namespace) {
            return Err(format!("{namespace:?} is not a valid namespace name"));
        }
        if !is_valid_object_name(name) {
            return Err(format!("{name:?} is not a valid ServiceAccount name"));
        }
        Ok(Target {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How the report is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// For people: one fact a line.
    Text,
    /// For scripts: one JSON object, its shape stable.
    Json,
}

/// Where the ServiceAccount was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The Kubernetes API at this base URL.
    Api(String),
    /// The local ServiceAccount file (`SERVICE_ACCOUNTS_PATH`).
    File(PathBuf),
}

impl Source {
    fn kind(&self) -> &'static str {
        match self {
            Source::Api(_) => "api",
            Source::File(_) => "file",
        }
    }

    fn location(&self) -> String {
        match self {
            Source::Api(url) => url.clone(),
            Source::File(path) => path.display().to_string(),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Api(url) => write!(f, "the Kubernetes API at {url}"),
            Source::File(path) => write!(f, "the file {}", path.display()),
        }
    }
}

/// Why there is no report.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The settings cannot be used.
    #[error(transparent)]
    Settings(#[from] InvalidConfig),
    /// The API client cannot be built (in-cluster files, kubeconfig).
    #[error("kubernetes client: {source}{}", outside_cluster_hint(.source))]
    Client {
        /// Why.
        #[from]
        source: ConfigError,
    },
    /// The ServiceAccount file cannot be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// The GET failed.
    #[error("cannot get serviceaccount {target} from {server}: {source}")]
    Api {
        /// The ServiceAccount asked for.
        target: Target,
        /// The API server's base URL.
        server: String,
        /// Why.
        source: Box<KubeError>,
    },
    /// There is no such ServiceAccount.
    #[error("serviceaccount {target} not found in {looked_in}")]
    NotFound {
        /// The ServiceAccount asked for.
        target: Target,
        /// Where it was looked for.
        looked_in: Source,
    },
}

/// A hint for the likeliest cause of running outside a cluster with the in-cluster default.
fn outside_cluster_hint(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::NotInCluster => {
            " (outside the cluster, set K8S_IN_CLUSTER=false to use KUBECONFIG or ~/.kube/config, or SERVICE_ACCOUNTS_PATH)"
        }
        _ => "",
    }
}

impl ExplainError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExplainError::Settings(_) | ExplainError::Client { .. } | ExplainError::File(_) => {
                EXIT_CONFIG
            }
            ExplainError::Api { .. } => EXIT_API,
            ExplainError::NotFound { .. } => EXIT_NOT_FOUND,
        }
    }
}

/// What the service would do with one ServiceAccount, and why.
#[derive(Debug, Clone)]
pub struct Report {
    /// The ServiceAccount.
    pub service_account: ServiceAccount,
    /// Where it was read.
    pub source: Source,
    /// `INBOX_MODE`.
    pub inbox_mode: InboxMode,
    /// `POLICY_FILE`, if any.
    pub policy_file: Option<PathBuf>,
    /// `NATS_ACCOUNT`: the account used when the policy names none.
    pub default_account: String,
    /// The service's evaluation, or why its namespace is not served.
    pub decision: Result<Evaluation, NotServed>,
}

/// Finds `target` where the service would and evaluates it as the service does.
pub fn explain(settings: &PermissionSettings, target: &Target) -> Result<Report, ExplainError> {
    let (found, source) = match settings.accounts.open()? {
        AccountsBackend::Api(client) => {
            let server = client.base_url().to_owned();
            let found = client
                .get_service_account(&target.namespace, &target.name, GET_TIMEOUT)
                .map_err(|source| ExplainError::Api {
                    target: target.clone(),
                    server: server.clone(),
                    source: Box::new(source),
                })?;
            (found, Source::Api(server))
        }
        AccountsBackend::File(path) => {
            let found = load_file(&path)?
                .into_iter()
                .find(|sa| *sa.namespace == *target.namespace && *sa.name == *target.name);
            (found, Source::File(path))
        }
    };
    let service_account = found.ok_or_else(|| ExplainError::NotFound {
        target: target.clone(),
        looked_in: source.clone(),
    })?;
    let decision = evaluate(&service_account, &settings.policy, settings.inbox_mode);
    Ok(Report {
        service_account,
        source,
        inbox_mode: settings.inbox_mode,
        policy_file: settings.policy_file.clone(),
        default_account: settings.nats_account.clone(),
        decision,
    })
}

/// Runs `explain` from the process environment: the report on standard output, failures on
/// standard error; returns the exit code.
pub fn run(target: &Target, format: OutputFormat) -> u8 {
    // Only warnings (an unverified or plain-http API server) and worse, on standard error.
    crate::app::init_logging("warn");
    let report = match PermissionSettings::from_env()
        .map_err(ExplainError::from)
        .and_then(|settings| explain(&settings, target))
    {
        Ok(report) => report,
        Err(e) => {
            eprintln!("nats-k8s-oidc-callout explain: {e}");
            return e.exit_code();
        }
    };
    let text = match format {
        OutputFormat::Text => report.to_string(),
        OutputFormat::Json => report.to_json(),
    };
    if let Err(e) = std::io::stdout().lock().write_all(text.as_bytes()) {
        eprintln!("nats-k8s-oidc-callout explain: cannot write the report: {e}");
        return EXIT_OUTPUT;
    }
    match &report.decision {
        Ok(_) => EXIT_GRANTED,
        Err(reason) => {
            eprintln!(
                "nats-k8s-oidc-callout explain: {target} would be refused: the policy does not serve its namespace ({reason})"
            );
            EXIT_NOT_SERVED
        }
    }
}

/// The JSON report: every key is always present (`null` or empty where it does not apply).
#[derive(Serialize)]
struct JsonReport<'a> {
    service_account: JsonServiceAccount<'a>,
    source: JsonSource,
    inbox_mode: &'static str,
    policy_file: Option<String>,
    default_account: &'a str,
    served: bool,
    not_served_reason: Option<String>,
    account: Option<JsonAccount>,
    governance: Option<JsonGovernance>,
    permissions: Option<JsonPermissions<'a>>,
    entries: Vec<JsonEntry<'a>>,
    ignored: Vec<JsonIgnored>,
}

/// Entries of one annotation beyond the number the service reads.
#[derive(Serialize)]
struct JsonIgnored {
    direction: &'static str,
    annotation: &'static str,
    count: usize,
}

#[derive(Serialize)]
struct JsonServiceAccount<'a> {
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
}

#[derive(Serialize)]
struct JsonSource {
    kind: &'static str,
    location: String,
}

#[derive(Serialize)]
struct JsonAccount {
    name: String,
    /// `rule`: named by the governing rule; `default`: `NATS_ACCOUNT`.
    from: &'static str,
}

#[derive(Serialize)]
struct JsonGovernance {
    /// `no_policy`, `defaults` or `rule`.
    kind: &'static str,
    /// The rule's index, for `rule`.
    rule: Option<usize>,
    description: String,
}

#[derive(Serialize)]
struct JsonSubjects<'a> {
    allow: &'a [String],
    deny: &'a [String],
}

#[derive(Serialize)]
struct JsonPermissions<'a> {
    publish: JsonSubjects<'a>,
    subscribe: JsonSubjects<'a>,
    /// Responses allowed to each request received (0: none).
    responses: i64,
}

#[derive(Serialize)]
struct JsonEntry<'a> {
    direction: &'static str,
    annotation: &'static str,
    entry: &'a str,
    kept: bool,
    /// `granted`, `already_granted` or `dropped`.
    outcome: &'static str,
    within: Option<&'a str>,
    covered_by: Option<&'a str>,
    cause: Option<&'static str>,
    reason: Option<String>,
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Publish => "publish",
        Direction::Subscribe => "subscribe",
    }
}

impl Report {
    /// The account the ServiceAccount is placed in, and whether a rule named it (`false`: the
    /// default `NATS_ACCOUNT`).
    fn account(evaluation: &Evaluation, default_account: &str) -> (String, bool) {
        match &evaluation.account {
            Some(name) => (name.clone(), true),
            None => (default_account.to_owned(), false),
        }
    }

    /// The report as JSON, keys in the order below. The shape is stable (keys are only ever added):
    ///
    /// - `service_account`: `{namespace, name, uid}`; `source`: `{kind: "api" | "file", location}`;
    /// - `inbox_mode`; `policy_file` (or `null`); `default_account` (`NATS_ACCOUNT`);
    /// - `served`; `not_served_reason` (text, or `null` when served);
    /// - `account`: `{name, from: "rule" | "default"}`; `governance`:
    ///   `{kind: "no_policy" | "defaults" | "rule", rule (index or null), description}`;
    ///   `permissions`: `{publish: {allow, deny}, subscribe: {allow, deny}, responses}`; all three
    ///   `null` when not served;
    /// - `entries`: each annotation entry in order, `{direction: "publish" | "subscribe",
    ///   annotation, entry, kept, outcome: "granted" | "already_granted" | "dropped", within
    ///   (policy pattern or null), covered_by (for already_granted), cause (`invalid`,
    ///   `reserved`, `not_allowed_by_policy`, as in the metric) and reason (text) for dropped}`;
    /// - `ignored`: `{direction, annotation, count}` for each annotation with more entries than
    ///   the service reads (metric cause `too_many`); empty otherwise.
    pub fn to_json(&self) -> String {
        let sa = &self.service_account;
        let evaluation = self.decision.as_ref().ok();
        let uid = sa.uid.to_string();
        let report = JsonReport {
            service_account: JsonServiceAccount {
                namespace: &sa.namespace,
                name: &sa.name,
                uid: &uid,
            },
            source: JsonSource {
                kind: self.source.kind(),
                location: self.source.location(),
            },
            inbox_mode: self.inbox_mode.name(),
            policy_file: self.policy_file.as_ref().map(|p| p.display().to_string()),
            default_account: &self.default_account,
            served: evaluation.is_some(),
            not_served_reason: self.decision.as_ref().err().map(ToString::to_string),
            account: evaluation.map(|e| {
                let (name, by_rule) = Report::account(e, &self.default_account);
                JsonAccount {
                    name,
                    from: if by_rule { "rule" } else { "default" },
                }
            }),
            governance: evaluation.map(|e| JsonGovernance {
                kind: match e.governance {
                    Governance::NoPolicy => "no_policy",
                    Governance::Defaults => "defaults",
                    Governance::Rule(_) => "rule",
                },
                rule: match e.governance {
                    Governance::Rule(i) => Some(i),
                    _ => None,
                },
                description: e.governance.to_string(),
            }),
            permissions: evaluation.map(|e| JsonPermissions {
                publish: JsonSubjects {
                    allow: &e.permissions.pub_allow,
                    deny: &e.permissions.pub_deny,
                },
                subscribe: JsonSubjects {
                    allow: &e.permissions.sub_allow,
                    deny: &e.permissions.sub_deny,
                },
                responses: e.permissions.resp_max,
            }),
            ignored: evaluation
                .map(|e| {
                    e.ignored
                        .iter()
                        .map(|&(direction, count)| JsonIgnored {
                            direction: direction_name(direction),
                            annotation: direction.annotation(),
                            count,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            entries: evaluation
                .map(|e| {
                    e.entries
                        .iter()
                        .map(|v| {
                            let (outcome, within, covered_by, dropped) = match &v.outcome {
                                EntryOutcome::Granted { within } => {
                                    ("granted", within.as_deref(), None, None)
                                }
                                EntryOutcome::AlreadyGranted { within, covered_by } => (
                                    "already_granted",
                                    within.as_deref(),
                                    Some(covered_by.as_str()),
                                    None,
                                ),
                                EntryOutcome::Dropped(cause) => {
                                    ("dropped", None, None, Some(cause))
                                }
                            };
                            JsonEntry {
                                direction: direction_name(v.direction),
                                annotation: v.direction.annotation(),
                                entry: &v.entry,
                                kept: dropped.is_none(),
                                outcome,
                                within,
                                covered_by,
                                cause: dropped.map(|c| c.label()),
                                reason: dropped.map(ToString::to_string),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
    }
}

/// Width of the labels of the text report.
const LABEL: usize = 16;

/// Whether a terminal would act on `c` or not show it: control characters (escape sequences
/// start with one), bidirectional overrides, zero-width and other unprintable characters.
fn unprintable(c: char) -> bool {
    c.is_control() || (!matches!(c, '\\' | '"' | '\'') && c.escape_debug().next() == Some('\\'))
}

/// `s` as the text report shows it: every [`unprintable`] character as a `\u{…}` escape.
/// Annotation entries are written by whoever may edit the ServiceAccount, and the report is
/// read in a terminal: raw, an entry could move the cursor and rewrite the lines around it.
fn shown(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unprintable) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unprintable(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Subjects as one line (`-` for none).
fn subjects(list: &[String]) -> String {
    if list.is_empty() {
        "-".to_owned()
    } else {
        list.iter().map(|s| shown(s)).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for Report {
    /// The text report: one fact a line, then one line per annotation entry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sa = &self.service_account;
        writeln!(
            f,
            "{:LABEL$}{}/{} (uid {})",
            "serviceaccount",
            sa.namespace,
            sa.name,
            shown(&sa.uid.to_string())
        )?;
        writeln!(f, "{:LABEL$}{}", "read from", self.source)?;
        match &self.policy_file {
            Some(path) => writeln!(f, "{:LABEL$}{}", "policy file", path.display())?,
            None => writeln!(
                f,
                "{:LABEL$}none (every namespace served, annotations bounded only by the reserved subjects)",
                "policy file"
            )?,
        }
        writeln!(f, "{:LABEL$}{}", "inbox mode", self.inbox_mode.name())?;
        let evaluation = match &self.decision {
            Err(reason) => {
                return writeln!(
                    f,
                    "{:LABEL$}no: {reason}; the service refuses it (namespace_not_allowed)",
                    "served"
                );
            }
            Ok(evaluation) => evaluation,
        };
        writeln!(f, "{:LABEL$}yes", "served")?;
        let (account, by_rule) = Report::account(evaluation, &self.default_account);
        if by_rule {
            writeln!(
                f,
                "{:LABEL$}{} (named by {})",
                "account",
                shown(&account),
                evaluation.governance
            )?;
        } else {
            writeln!(
                f,
                "{:LABEL$}{} (the default, NATS_ACCOUNT)",
                "account",
                shown(&account)
            )?;
        }
        writeln!(f, "{:LABEL$}{}", "governed by", evaluation.governance)?;
        let p = &evaluation.permissions;
        writeln!(f, "{:LABEL$}allow {}", "publish", subjects(&p.pub_allow))?;
        writeln!(f, "{:LABEL$}deny  {}", "", subjects(&p.pub_deny))?;
        writeln!(f, "{:LABEL$}allow {}", "subscribe", subjects(&p.sub_allow))?;
        writeln!(f, "{:LABEL$}deny  {}", "", subjects(&p.sub_deny))?;
        match p.resp_max {
            0 => writeln!(f, "{:LABEL$}none", "responses")?,
            n => writeln!(
                f,
                "{:LABEL$}{n} to each request received (to any reply subject)",
                "responses"
            )?,
        }
        if evaluation.entries.is_empty() && evaluation.ignored.is_empty() {
            return writeln!(f, "{:LABEL$}none", "annotations");
        }
        writeln!(f, "annotations")?;
        let width = evaluation
            .entries
            .iter()
            .map(|v| shown(&v.entry).chars().count())
            .max()
            .unwrap_or(0);
        for v in &evaluation.entries {
            let verdict = match &v.outcome {
                EntryOutcome::Granted { within: Some(p) } => {
                    format!("kept, within {} ({})", shown(p), evaluation.governance)
                }
                EntryOutcome::Granted { within: None } => "kept (no policy file)".to_owned(),
                EntryOutcome::AlreadyGranted { covered_by, .. } => {
                    format!("kept, already granted by {}", shown(covered_by))
                }
                EntryOutcome::Dropped(cause) => format!("dropped: {cause}"),
            };
            writeln!(
                f,
                "  {:9} {:width$}  {verdict}",
                direction_name(v.direction),
                shown(&v.entry)
            )?;
        }
        for &(direction, n) in &evaluation.ignored {
            writeln!(
                f,
                "  {:9} {n} more entries not read ({})",
                direction_name(direction),
                crate::policy::DropCause::TooMany
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{AdminPolicy, PUB_ANNOTATION, SUB_ANNOTATION};

    fn report(policy: &str, namespace: &str, annotations: &[(&str, &str)]) -> Report {
        let policy = AdminPolicy::parse(policy).unwrap();
        let service_account = annotations.iter().fold(
            ServiceAccount::new(namespace, "app", "u-1", ""),
            |sa, (k, v)| sa.with_annotation(k, v),
        );
        Report {
            decision: evaluate(&service_account, &policy, InboxMode::Shared),
            service_account,
            source: Source::File("/sa.yaml".into()),
            inbox_mode: InboxMode::Shared,
            policy_file: Some("/policy.yaml".into()),
            default_account: "APP".into(),
        }
    }

    const POLICY: &str = "namespaces:\n  exclude: [\"kube-*\"]\nannotations:\n  publish: [\"{namespace}.>\"]\n\
         rules:\n  - namespaces: [payments]\n    account: PAYMENTS\n    annotations:\n      publish: [\"orders.>\"]\n";

    #[test]
    fn targets_are_namespace_slash_name_with_valid_names() {
        let t: Target = "team-a/svc.v2".parse().unwrap();
        assert_eq!(
            (t.namespace.as_str(), t.name.as_str()),
            ("team-a", "svc.v2")
        );
        for bad in ["team-a", "Team-A/app", "team-a/", "/app", "a/b/c", "a/b c"] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_json_names_the_rules_account_and_each_entrys_fate() {
        let r = report(
            POLICY,
            "payments",
            &[
                (PUB_ANNOTATION, "orders.eu, payments.x, team-b.x, a..b"),
                (SUB_ANNOTATION, "_INBOX.x"),
            ],
        );
        let j: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(j["served"], true);
        assert_eq!(j["account"]["name"], "PAYMENTS");
        assert_eq!(j["account"]["from"], "rule");
        assert_eq!(j["governance"]["kind"], "rule");
        assert_eq!(j["governance"]["rule"], 0);
        assert_eq!(
            j["permissions"]["publish"]["allow"],
            serde_json::json!(["payments.>", "_INBOX.>", "orders.eu"])
        );
        let entries = j["entries"].as_array().unwrap();
        assert_eq!(entries[0]["outcome"], "granted");
        assert_eq!(entries[0]["within"], "orders.>");
        // Within the namespace's default grant: nothing to add, not a drop, whatever the bounds.
        assert_eq!(entries[1]["outcome"], "already_granted");
        assert_eq!(entries[1]["covered_by"], "payments.>");
        assert_eq!(entries[2]["cause"], "not_allowed_by_policy");
        assert_eq!(entries[3]["cause"], "invalid");
        assert_eq!(entries[4]["direction"], "subscribe");
        assert_eq!(entries[4]["cause"], "reserved");
        assert_eq!(entries[4]["kept"], false);
    }

    #[test]
    fn the_default_account_and_an_already_granted_entry_are_said_so() {
        let r = report(POLICY, "team-a", &[(PUB_ANNOTATION, "team-a.x")]);
        let j: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(j["account"]["name"], "APP");
        assert_eq!(j["account"]["from"], "default");
        assert_eq!(j["governance"]["kind"], "defaults");
        assert_eq!(j["entries"][0]["outcome"], "already_granted");
        assert_eq!(j["entries"][0]["covered_by"], "team-a.>");
        let text = r.to_string();
        assert!(text.contains("APP (the default, NATS_ACCOUNT)"), "{text}");
        assert!(text.contains("kept, already granted by team-a.>"), "{text}");
    }

    #[test]
    fn entries_beyond_what_the_service_reads_are_counted() {
        let many = (0..300)
            .map(|i| format!("team-a.s{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let r = report(POLICY, "team-a", &[(PUB_ANNOTATION, &many)]);
        let j: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(
            j["ignored"],
            serde_json::json!([{"direction": "publish", "annotation": PUB_ANNOTATION, "count": 44}])
        );
        assert!(r.to_string().contains(
            "publish   44 more entries not read (beyond the first 256 entries of the annotation)"
        ));
    }

    #[test]
    fn a_namespace_not_served_has_a_reason_and_nothing_else() {
        let r = report(POLICY, "kube-system", &[(PUB_ANNOTATION, "a.b")]);
        let j: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(j["served"], false);
        assert_eq!(
            j["not_served_reason"],
            "namespaces.exclude pattern \"kube-*\" matches it"
        );
        for key in ["account", "governance", "permissions"] {
            assert!(j[key].is_null(), "{key}");
        }
        assert_eq!(j["entries"], serde_json::json!([]));
        assert_eq!(j["ignored"], serde_json::json!([]));
        assert!(r
            .to_string()
            .contains("served          no: namespaces.exclude"));
    }

    #[test]
    fn the_text_report_shows_what_a_terminal_would_act_on_as_escapes() {
        // Annotations are written by whoever may edit the ServiceAccount, the report is read in
        // a terminal: an escape sequence could move the cursor and rewrite a dropped entry's
        // line, a bidirectional override reverse what a granted one seems to say.
        let mut r = report(
            "",
            "team-a",
            &[(
                PUB_ANNOTATION,
                "team-b.x\u{1b}[1A\u{1b}[2K\rpublish team-b.x kept, team-a.\u{202e}x, team-a.\u{1b}]52;c;aGk=\u{7}",
            )],
        );
        r.service_account.uid = "u-1\u{1b}]0;title\u{7}".into();
        let text = r.to_string();
        assert!(
            !text
                .chars()
                .any(|c| c.is_control() && c != '\n' || c == '\u{202e}'),
            "{text:?}"
        );
        assert!(
            text.contains(r"team-b.x\u{1b}[1A\u{1b}[2K\u{d}publish team-b.x kept  dropped:"),
            "{text}"
        );
        assert!(text.contains(r"(uid u-1\u{1b}]0;title\u{7})"), "{text}");
        // `team-a.\u{202e}x` lies within team-a.>: listed as already granted, escaped.
        assert!(text.contains(r"team-a.\u{202e}x"), "{text}");
        // JSON escapes control characters itself and keeps the entries as they are.
        let j: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(j["entries"][1]["entry"], "team-a.\u{202e}x");
    }

    #[test]
    fn each_failure_has_its_exit_code() {
        let target: Target = "a/b".parse().unwrap();
        let not_found = ExplainError::NotFound {
            target: target.clone(),
            looked_in: Source::Api("https://k".into()),
        };
        assert_eq!(not_found.exit_code(), EXIT_NOT_FOUND);
        assert_eq!(
            not_found.to_string(),
            "serviceaccount a/b not found in the Kubernetes API at https://k"
        );
        let settings = ExplainError::from(InvalidConfig {
            problems: vec!["POLICY_FILE: x".into()],
        });
        assert_eq!(settings.exit_code(), EXIT_CONFIG);
        let client = ExplainError::from(ConfigError::NotInCluster);
        assert_eq!(client.exit_code(), EXIT_CONFIG);
        assert!(client.to_string().contains("K8S_IN_CLUSTER=false"));
        let api = ExplainError::Api {
            target,
            server: "https://k".into(),
            source: Box::new(KubeError::Timeout),
        };
        assert_eq!(api.exit_code(), EXIT_API);
    }
}
