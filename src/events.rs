//! Feedback to the people who write annotations: a Warning Event on a ServiceAccount naming each
//! annotation entry the policy dropped and why, so that `kubectl describe serviceaccount` shows
//! what the service's log and metrics already say.
//!
//! The [`PermissionCache`](crate::policy::PermissionCache) hands a [`DropReport`] over a bounded
//! queue once per object version and policy generation; the `events` thread started by
//! [`spawn_event_recorder`] turns it into a core/v1 Event and POSTs it. Nothing here is on the
//! request path, and nothing here changes a decision.
//!
//! Replicas and restarts do not multiply Events: an Event's name is derived from the
//! ServiceAccount's name and a hash of its uid, its resourceVersion and the message
//! ([`event_name`]), so every replica computes the same name for the same report, and the API
//! server's 409 AlreadyExists means "already reported".

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use log::{debug, error, info, warn};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::kube::{is_valid_namespace, ApiClient, KubeError, ServiceAccount};
use crate::metrics::{EventLabels, Metrics};
use crate::policy::{DropCause, DropReport, Evaluation};
use crate::unix_now;

/// The Event `reason`: a machine-readable word for this kind of Event.
pub const REASON: &str = "NatsAnnotationEntryDropped";
/// The `source.component` and `reportingComponent` of every Event.
pub const COMPONENT: &str = "nats-k8s-oidc-callout";
/// Reports that may wait for the recording thread; more are dropped and counted.
pub const QUEUE_CAPACITY: usize = 256;
/// Longest message: the API server's limit on an Event's note (`NoteLengthLimit`).
const MAX_MESSAGE: usize = 1024;
/// Longest entry quoted in a message, in characters (annotation values may be long): even
/// escaped, the first entry always fits in a message.
const MAX_QUOTED_ENTRY: usize = 64;
/// Longest `reportingInstance` the API server accepts.
const MAX_INSTANCE: usize = 128;
/// Longest object name (a DNS subdomain).
const MAX_NAME: usize = 253;
/// Hex digits of the hash in an Event's name.
const NAME_HASH_HEX: usize = 16;
/// Bound on one POST.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one failure is logged per this interval; the others are counted.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The name of the Event about `message` on this version of a ServiceAccount:
/// `<name>.<16 hex digits of SHA-256(uid, resourceVersion, message)>`.
///
/// The same report gives the same name on every replica and after every restart, so only the
/// first POST creates it. The ServiceAccount's name (itself a DNS subdomain) is cut so that the
/// whole stays a DNS subdomain of at most 253 characters, with no label ending in `-` or empty.
pub fn event_name(account: &ServiceAccount, message: &str) -> String {
    let mut hasher = Sha256::new();
    let (uid, resource_version) = (
        account.uid.to_string(),
        account.resource_version.to_string(),
    );
    for part in [uid.as_str(), resource_version.as_str(), message] {
        // Length-prefixed, so no two different triples hash the same bytes.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let hash = data_encoding::HEXLOWER.encode(&hasher.finalize());
    let room = MAX_NAME - 1 - NAME_HASH_HEX;
    // Object names are ASCII: cutting at a byte index is cutting at a character.
    let prefix = account
        .name
        .get(..account.name.len().min(room))
        .unwrap_or_default()
        .trim_end_matches(['.', '-']);
    let hash = hash.get(..NAME_HASH_HEX).unwrap_or_default();
    if prefix.is_empty() {
        // Only a name that is not a DNS subdomain gets here (a file source, a test).
        return format!("serviceaccount.{hash}");
    }
    format!("{prefix}.{hash}")
}

/// The Event's message: how many entries were dropped, then each with its annotation and why
/// (for a policy drop, which part of the policy bounded it). At most [`MAX_MESSAGE`] bytes: the
/// entries that do not fit are counted at the end.
pub fn event_message(evaluation: &Evaluation) -> String {
    let mut dropped: Vec<String> = evaluation
        .dropped()
        .map(|(verdict, cause)| {
            format!(
                "{} entry {:?}: {}",
                verdict.direction.annotation(),
                quoted_entry(&verdict.entry),
                evaluation.explain(cause)
            )
        })
        .collect();
    let mut granted_none = dropped.len();
    for &(direction, n) in &evaluation.ignored {
        granted_none += n;
        dropped.push(format!(
            "{} has {n} more entries: {}",
            direction.annotation(),
            evaluation.explain(DropCause::TooMany)
        ));
    }
    let total = dropped.len();
    let mut message = format!(
        "{granted_none} annotation {} not granted: ",
        if granted_none == 1 {
            "entry"
        } else {
            "entries"
        }
    );
    let more =
        |n: usize, separator: &str| format!("{separator}and {n} more (see the service's log)");
    for (i, part) in dropped.iter().enumerate() {
        let separator = if i == 0 { "" } else { "; " };
        // Room for the ending that would follow this entry, unless it is the last.
        let left = total - i - 1;
        let reserve = if left == 0 { 0 } else { more(left, "; ").len() };
        if message.len() + separator.len() + part.len() + reserve > MAX_MESSAGE {
            message.push_str(&more(total - i, separator));
            break;
        }
        message.push_str(separator);
        message.push_str(part);
    }
    message
}

/// An entry as quoted in a message: cut (at a character boundary) past [`MAX_QUOTED_ENTRY`].
pub(crate) fn quoted_entry(entry: &str) -> String {
    match entry.char_indices().nth(MAX_QUOTED_ENTRY) {
        Some((cut, _)) => format!("{}…", &entry[..cut]),
        None => entry.to_owned(),
    }
}

/// The core/v1 Event for `report`, named `name`, with `message`, observed at unix time
/// `now_secs`, reported by `instance` (the pod's name) if known.
pub fn event_object(
    report: &DropReport,
    name: &str,
    message: &str,
    now_secs: i64,
    instance: Option<&str>,
) -> Value {
    let sa = &report.account;
    let now = jiff::Timestamp::from_second(now_secs)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_string();
    let mut event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": { "name": name, "namespace": &*sa.namespace },
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "namespace": &*sa.namespace,
            "name": &*sa.name,
            "uid": sa.uid,
            "resourceVersion": sa.resource_version,
        },
        "type": "Warning",
        "reason": REASON,
        "message": message,
        "source": { "component": COMPONENT },
        "reportingComponent": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    if let Some(instance) = instance {
        let cut = instance
            .char_indices()
            .nth(MAX_INSTANCE)
            .map_or(instance, |(i, _)| &instance[..i]);
        event["reportingInstance"] = json!(cut);
    }
    event
}

/// What became of one report.
#[derive(Debug)]
enum Outcome {
    /// The Event was created.
    Created,
    /// An Event of that name exists: this report was already made.
    AlreadyReported,
    /// The API server refused the Event or could not be reached.
    Failed(KubeError),
    /// The namespace is not a Kubernetes name, so it cannot go into an API path (only an object
    /// that did not come from the API could have one).
    InvalidNamespace,
}

impl Outcome {
    /// The metric label.
    fn label(&self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::AlreadyReported => "exists",
            Outcome::Failed(_) | Outcome::InvalidNamespace => "failed",
        }
    }
}

/// Creates the Events, on its own thread (see [`spawn_event_recorder`]).
pub struct EventRecorder {
    client: Arc<ApiClient>,
    metrics: Arc<Metrics>,
    instance: Option<String>,
    /// When a failure was last logged, and how many failed since without a log line.
    last_failure_log: Option<Instant>,
    unlogged_failures: u64,
}

impl EventRecorder {
    /// A recorder creating Events through `client`, reported by `instance` (the pod's name).
    pub fn new(
        client: Arc<ApiClient>,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> EventRecorder {
        EventRecorder {
            client,
            metrics,
            instance,
            last_failure_log: None,
            unlogged_failures: 0,
        }
    }

    /// Creates the Event for `report`, counts the outcome and logs a failure (at most once per
    /// [`FAILURE_LOG_INTERVAL`]).
    pub fn record(&mut self, report: &DropReport) {
        let sa = &report.account;
        let outcome = self.create(report);
        self.metrics
            .events
            .get_or_create(&EventLabels {
                result: outcome.label(),
            })
            .inc();
        match outcome {
            Outcome::Created => debug!(
                "warning Event created on serviceaccount {}/{} for its dropped annotation entries",
                sa.namespace, sa.name
            ),
            Outcome::AlreadyReported => debug!(
                "serviceaccount {}/{}: its dropped annotation entries were already reported",
                sa.namespace, sa.name
            ),
            Outcome::Failed(e) => self.log_failure(sa, &e),
            Outcome::InvalidNamespace => warn!(
                "no Event on serviceaccount {:?}/{:?}: the namespace is not a Kubernetes name",
                sa.namespace, sa.name
            ),
        }
    }

    fn create(&self, report: &DropReport) -> Outcome {
        let sa = &report.account;
        // The namespace goes into the path.
        if !is_valid_namespace(&sa.namespace) {
            return Outcome::InvalidNamespace;
        }
        let message = event_message(&report.evaluation);
        let name = event_name(sa, &message);
        let event = event_object(
            report,
            &name,
            &message,
            unix_now(),
            self.instance.as_deref(),
        );
        let path = format!("/api/v1/namespaces/{}/events", sa.namespace);
        match self.client.post_json::<Value>(&path, &event, POST_TIMEOUT) {
            Ok(_) => Outcome::Created,
            Err(e) if e.status_code() == Some(409) => Outcome::AlreadyReported,
            Err(e) => Outcome::Failed(e),
        }
    }

    fn log_failure(&mut self, sa: &ServiceAccount, e: &KubeError) {
        let due = self
            .last_failure_log
            .is_none_or(|at| at.elapsed() >= FAILURE_LOG_INTERVAL);
        if !due {
            self.unlogged_failures += 1;
            debug!(
                "cannot create an Event on serviceaccount {}/{}: {e}",
                sa.namespace, sa.name
            );
            return;
        }
        let since = match std::mem::take(&mut self.unlogged_failures) {
            0 => String::new(),
            n => format!(" ({n} more failed since the last report)"),
        };
        if e.status_code() == Some(403) {
            warn!(
                "cannot create Events: grant create on events or set SERVICEACCOUNT_EVENTS=false \
                 (serviceaccount {}/{}: {e}){since}",
                sa.namespace, sa.name
            );
        } else {
            warn!(
                "cannot create an Event on serviceaccount {}/{} about its dropped annotation \
                 entries: {e}{since}",
                sa.namespace, sa.name
            );
        }
        self.last_failure_log = Some(Instant::now());
    }
}

/// Starts the `events` thread. It exists so that creating an Event (a round trip to the API
/// server, bounded by [`POST_TIMEOUT`]) never delays an authorization: the workers only offer
/// reports to the bounded queue. It stops on `stop` (a message or every sender gone) or when
/// the queue's senders are gone. `None`, with an error logged, when no thread can be started:
/// decisions go on without Events.
pub fn spawn_event_recorder(
    mut recorder: EventRecorder,
    reports: Receiver<DropReport>,
    stop: Receiver<()>,
) -> Option<JoinHandle<()>> {
    let spawned = std::thread::Builder::new()
        .name("events".into())
        .spawn(move || loop {
            select! {
                recv(stop) -> _ => return,
                recv(reports) -> report => match report {
                    Ok(report) => recorder.record(&report),
                    Err(_) => return,
                },
            }
        });
    match spawned {
        Ok(handle) => {
            info!(
                "dropped annotation entries are reported as Warning Events ({REASON}) on their ServiceAccounts"
            );
            Some(handle)
        }
        Err(e) => {
            error!(
                "cannot start the events thread ({e}): no Events about dropped annotation entries"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::client::test_client;
    use crate::kube::is_valid_object_name;
    use crate::kube::test_server::{response, start, Request};
    use crate::policy::{evaluate, AdminPolicy, InboxMode, PUB_ANNOTATION, SUB_ANNOTATION};
    use parking_lot::Mutex;

    fn account(name: &str, uid: &str, rv: &str) -> ServiceAccount {
        ServiceAccount::new("team-a", name, uid, rv)
    }

    /// The report for `team-a/app` (uid `u1`, version `7`) with these annotations under `policy`.
    fn report(annotations: &[(&str, &str)], policy: &AdminPolicy) -> DropReport {
        let sa = annotations
            .iter()
            .fold(account("app", "u1", "7"), |sa, (k, v)| {
                sa.with_annotation(k, v)
            });
        let evaluation = evaluate(&sa, policy, InboxMode::Shared).unwrap();
        DropReport {
            account: Arc::new(sa),
            evaluation: Arc::new(evaluation),
        }
    }

    fn events(m: &Metrics, result: &'static str) -> u64 {
        m.events.get_or_create(&EventLabels { result }).get()
    }

    #[test]
    fn an_event_name_is_the_same_for_the_same_report_and_differs_for_any_other() {
        let name = event_name(&account("app", "u1", "7"), "m");
        assert!(name.starts_with("app."), "{name}");
        assert_eq!(name.len(), "app.".len() + NAME_HASH_HEX);
        assert_eq!(name, event_name(&account("app", "u1", "7"), "m"));
        for other in [
            event_name(&account("app", "u2", "7"), "m"),
            event_name(&account("app", "u1", "8"), "m"),
            event_name(&account("app", "u1", "7"), "n"),
        ] {
            assert_ne!(other, name);
        }
        // The parts are delimited: moving a character from one to the next is another report.
        assert_ne!(
            event_name(&account("app", "u1", "7"), "m"),
            event_name(&account("app", "u", "17"), "m")
        );
    }

    #[test]
    fn an_event_name_is_a_dns_subdomain_even_for_the_longest_account_names() {
        let long = [
            "a".repeat(253),
            format!("{}.{}", "a".repeat(235), "b".repeat(17)),
            format!("{}-{}", "a".repeat(235), "b".repeat(17)),
            format!("{}-.{}", "a".repeat(234), "b".repeat(17)),
            "my.app-1".to_string(),
        ];
        for sa_name in long {
            assert!(is_valid_object_name(&sa_name), "{sa_name}");
            let name = event_name(&account(&sa_name, "u1", "7"), "m");
            assert!(name.len() <= 253, "{} chars", name.len());
            assert!(is_valid_object_name(&name), "{name}");
            assert!(sa_name.starts_with(name.rsplit_once('.').unwrap().0));
        }
    }

    #[test]
    fn the_message_names_each_dropped_entry_its_annotation_and_why() {
        let policy = AdminPolicy::parse(
            "annotations:\n  publish: [\"{namespace}.>\"]\n  subscribe: [\"{namespace}.>\"]\n\
             rules:\n  - namespaces: [\"payments\"]\n    annotations:\n      publish: [\"orders.>\"]\n",
        )
        .unwrap();
        let r = report(
            &[
                (PUB_ANNOTATION, "team-a.ok, team-b.cmd, a..b"),
                (SUB_ANNOTATION, "_INBOX.x"),
            ],
            &policy,
        );
        assert_eq!(
            event_message(&r.evaluation),
            "3 annotation entries not granted: \
             nats.io/allowed-pub-subjects entry \"team-b.cmd\": not within what the admin policy \
             lets annotations grant: the policy's top-level annotations; \
             nats.io/allowed-pub-subjects entry \"a..b\": not a valid NATS subject; \
             nats.io/allowed-sub-subjects entry \"_INBOX.x\": inbox, reply and $SYS subjects, and \
             wildcard first tokens that cover them, cannot be granted"
        );
        let one = report(&[(PUB_ANNOTATION, "x..y")], &AdminPolicy::unrestricted());
        assert_eq!(
            event_message(&one.evaluation),
            "1 annotation entry not granted: nats.io/allowed-pub-subjects entry \"x..y\": not a valid NATS subject"
        );
    }

    #[test]
    fn a_long_message_is_cut_and_counts_what_it_leaves_out() {
        let many: Vec<String> = (0..100).map(|i| format!("bad..{i}")).collect();
        let long_entry = format!("{}..x", "é".repeat(300));
        let value = format!("{long_entry}, {}", many.join(", "));
        let r = report(&[(PUB_ANNOTATION, &value)], &AdminPolicy::unrestricted());
        let message = event_message(&r.evaluation);
        assert!(message.len() <= MAX_MESSAGE, "{} bytes", message.len());
        assert!(message.starts_with("101 annotation entries not granted: "));
        assert!(message.contains(&format!("\"{}…\"", "é".repeat(MAX_QUOTED_ENTRY))));
        let shown = message.matches(" entry \"").count();
        let (_, rest) = message.rsplit_once("; and ").unwrap();
        assert_eq!(
            rest,
            format!("{} more (see the service's log)", 101 - shown)
        );
        // Whatever the count, the message fits and accounts for every entry.
        for n in 1..=60 {
            let value: Vec<String> = (0..n).map(|i| format!("bad..subject.{i:04}")).collect();
            let r = report(
                &[(SUB_ANNOTATION, &value.join(","))],
                &AdminPolicy::unrestricted(),
            );
            let message = event_message(&r.evaluation);
            assert!(message.len() <= MAX_MESSAGE, "{n}: {} bytes", message.len());
            let shown = message.matches(" entry \"").count();
            let more = message
                .rsplit_once("and ")
                .and_then(|(_, m)| m.strip_suffix(" more (see the service's log)"))
                .map_or(0, |m| m.parse::<usize>().unwrap());
            assert_eq!(shown + more, n, "{message}");
        }
    }

    #[test]
    fn the_event_is_a_warning_about_this_version_of_the_service_account() {
        let r = report(&[(PUB_ANNOTATION, "a..b")], &AdminPolicy::unrestricted());
        let event = event_object(&r, "app.0123", "msg", 1_800_000_000, Some("callout-abc"));
        assert_eq!(
            event,
            json!({
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": { "name": "app.0123", "namespace": "team-a" },
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "namespace": "team-a",
                    "name": "app",
                    "uid": "u1",
                    "resourceVersion": "7",
                },
                "type": "Warning",
                "reason": "NatsAnnotationEntryDropped",
                "message": "msg",
                "source": { "component": "nats-k8s-oidc-callout" },
                "reportingComponent": "nats-k8s-oidc-callout",
                "reportingInstance": "callout-abc",
                "firstTimestamp": "2027-01-15T08:00:00Z",
                "lastTimestamp": "2027-01-15T08:00:00Z",
                "count": 1,
            })
        );
        let anonymous = event_object(&r, "n", "m", 0, None);
        assert!(anonymous.get("reportingInstance").is_none());
        let long = "p".repeat(300);
        let cut = event_object(&r, "n", "m", 0, Some(&long));
        assert_eq!(
            cut["reportingInstance"].as_str().unwrap().len(),
            MAX_INSTANCE
        );
    }

    /// A recorder against a server that answers each POST with `answer(path)`; returns it with
    /// the metrics it counts into and the requests the server saw.
    fn recorder_against(
        answer: fn(&str) -> Vec<u8>,
    ) -> (EventRecorder, Arc<Metrics>, Arc<Mutex<Vec<Request>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let base = start(Arc::new(move |req: &Request| {
            seen2.lock().push(req.clone());
            answer(&req.path)
        }));
        let metrics = Arc::new(Metrics::new());
        let client = Arc::new(test_client(&base, Some("t")));
        let recorder = EventRecorder::new(client, metrics.clone(), Some("pod-1".into()));
        (recorder, metrics, seen)
    }

    /// A refusal with this status line and a Status body of this reason.
    fn refusal(status: &str, reason: &str) -> Vec<u8> {
        let code = &status[..3];
        let body =
            format!(r#"{{"kind":"Status","status":"Failure","reason":"{reason}","code":{code}}}"#);
        response(status, &[], &body)
    }

    #[test]
    fn created_already_reported_and_refused_events_are_counted() {
        let (mut recorder, metrics, seen) = recorder_against(|_| {
            response(
                "201 Created",
                &[],
                r#"{"kind":"Event","metadata":{"name":"x"}}"#,
            )
        });
        let r = report(&[(PUB_ANNOTATION, "a..b")], &AdminPolicy::unrestricted());
        recorder.record(&r);
        assert_eq!(events(&metrics, "created"), 1);
        let sent = seen.lock()[0].clone();
        assert_eq!(sent.method, "POST");
        assert_eq!(sent.path, "/api/v1/namespaces/team-a/events");
        let body: Value = serde_json::from_slice(&sent.body).unwrap();
        let message = event_message(&r.evaluation);
        assert_eq!(body["message"], message.as_str());
        assert_eq!(
            body["metadata"]["name"],
            event_name(&r.account, &message).as_str()
        );
        assert_eq!(body["reportingInstance"], "pod-1");

        let (mut recorder, metrics, _) =
            recorder_against(|_| refusal("409 Conflict", "AlreadyExists"));
        recorder.record(&r);
        assert_eq!(events(&metrics, "exists"), 1);

        let (mut recorder, metrics, _) =
            recorder_against(|_| refusal("403 Forbidden", "Forbidden"));
        recorder.record(&r);
        recorder.record(&r);
        assert_eq!(events(&metrics, "failed"), 2);
        assert_eq!(
            recorder.unlogged_failures, 1,
            "the second failure is not logged"
        );

        let mut odd = r.clone();
        odd.account = Arc::new(ServiceAccount::for_test("Not/A/Namespace", "app", "u1"));
        recorder.record(&odd);
        assert_eq!(events(&metrics, "failed"), 3);
    }

    #[test]
    fn the_events_thread_records_what_it_is_handed_and_stops_on_the_stop_signal() {
        let (recorder, metrics, seen) = recorder_against(|_| response("201 Created", &[], "{}"));
        let (reports_tx, reports_rx) = crossbeam_channel::bounded(4);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let thread = spawn_event_recorder(recorder, reports_rx, stop_rx).unwrap();
        assert_eq!(thread.thread().name(), Some("events"));
        let r = report(&[(PUB_ANNOTATION, "a..b")], &AdminPolicy::unrestricted());
        reports_tx.send(r).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while events(&metrics, "created") < 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(seen.lock().len(), 1);
        drop(stop_tx);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(thread.is_finished(), "the thread stops with the service");
        drop(reports_tx);
    }
}
