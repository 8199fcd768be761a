//! From a ServiceAccount to NATS permissions: namespace isolation by default, replies by the
//! inbox mode, more subjects granted by annotations within what the admin policy allows, and the
//! guard rails that keep an annotation from granting what it must not.
//!
//! - [`subject`]: subject validity, reserved subjects, one pattern within another, globs;
//! - [`admin`]: the admin policy file (served namespaces, accounts, annotation bounds);
//! - [`store`]: the policy in use, re-read when its file changes;
//! - [`evaluate`] (pure) and [`PermissionCache`] (once per object version and policy), which
//!   hands each evaluation that dropped entries on as a [`DropReport`] (see [`crate::events`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};
use log::warn;
use parking_lot::Mutex;

use crate::kube::object::MAX_ANNOTATION_BYTES;
use crate::kube::ServiceAccount;
use crate::metrics::{DroppedEntryLabels, EventLabels, Metrics};

pub mod admin;
pub mod store;
pub mod subject;

pub use admin::{AdminPolicy, Bounds, Governance, NotServed, Placement, PolicyError};
pub use store::{LoadedPolicy, PolicyChange, PolicyStore};
pub use subject::{is_valid_subject, lies_within};

/// Annotation listing extra subjects the account may publish to (comma-separated).
pub const PUB_ANNOTATION: &str = "nats.io/allowed-pub-subjects";
/// Annotation listing extra subjects the account may subscribe to (comma-separated).
pub const SUB_ANNOTATION: &str = "nats.io/allowed-sub-subjects";

/// Entries of one annotation that are evaluated; the rest are ignored (counted, `too_many`).
/// An annotation may hold 256 KiB: tens of thousands of entries, each compared with every grant
/// before it, would let whoever edits a ServiceAccount pin a worker for minutes at each connect.
pub const MAX_ENTRIES_PER_ANNOTATION: usize = 256;
/// Dropped entries logged one by one per evaluation; the rest are summed in one line.
const MAX_DROP_LINES: usize = 20;

/// Subjects no client of this service may be granted through either direction.
const ALWAYS_DENIED: &str = "$SYS.>";
/// The reply space of clients' default inbox prefix.
const SHARED_INBOXES: &str = "_INBOX.>";

/// The permissions one ServiceAccount gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects the client may publish to.
    pub pub_allow: Vec<String>,
    /// Subjects the client may never publish to, whatever `pub_allow` says.
    pub pub_deny: Vec<String>,
    /// Subjects the client may subscribe to.
    pub sub_allow: Vec<String>,
    /// Subjects the client may never subscribe to, whatever `sub_allow` says.
    pub sub_deny: Vec<String>,
    /// Responses the client may publish to a request's reply subject (0: none).
    pub resp_max: i64,
}

impl Permissions {
    /// Nothing at all: no publish, no subscribe, no responses (the self-check's grant).
    pub fn none() -> Permissions {
        Permissions {
            pub_allow: Vec::new(),
            pub_deny: vec![">".to_owned()],
            sub_allow: Vec::new(),
            sub_deny: vec![">".to_owned()],
            resp_max: 0,
        }
    }
}

/// How clients receive replies (`INBOX_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxMode {
    /// Publish and subscribe `_INBOX.>`: request/reply with clients' default inbox prefix, within
    /// and across namespaces; any account can read replies on `_INBOX.>`.
    Shared,
    /// Publish `_INBOX.>`, subscribe only the account's own `_INBOX.<ns>.<name>.>`: clients set
    /// that inbox prefix, and no other account can read their replies.
    Private,
    /// The earlier permissions: subscribe `_INBOX.>` and `_INBOX_<ns>_<name>.>`, no publish on
    /// inboxes, one response to each request received. The response allowance lets a client
    /// publish once to the reply subject of any message it receives, its own included: a
    /// client with publish and subscribe on one subject can publish anywhere.
    Responses,
}

impl InboxMode {
    /// Reads a setting value: `shared`, `private` or `responses`.
    pub fn parse(value: &str) -> Option<InboxMode> {
        match value {
            "shared" => Some(InboxMode::Shared),
            "private" => Some(InboxMode::Private),
            "responses" => Some(InboxMode::Responses),
            _ => None,
        }
    }

    /// The setting value.
    pub fn name(self) -> &'static str {
        match self {
            InboxMode::Shared => "shared",
            InboxMode::Private => "private",
            InboxMode::Responses => "responses",
        }
    }
}

/// A direction of a permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Publish.
    Publish,
    /// Subscribe.
    Subscribe,
}

impl Direction {
    /// The metric label: `pub` or `sub`.
    pub fn label(self) -> &'static str {
        match self {
            Direction::Publish => "pub",
            Direction::Subscribe => "sub",
        }
    }

    /// The annotation that adds subjects in this direction.
    pub fn annotation(self) -> &'static str {
        match self {
            Direction::Publish => PUB_ANNOTATION,
            Direction::Subscribe => SUB_ANNOTATION,
        }
    }
}

/// Why an annotation entry was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// Not a valid NATS subject.
    Invalid,
    /// An inbox, reply or system subject, which only the defaults may grant.
    Reserved,
    /// Not within any pattern the admin policy lets annotations grant here.
    NotAllowedByPolicy,
    /// Beyond the first [`MAX_ENTRIES_PER_ANNOTATION`] entries of its annotation: not read.
    TooMany,
}

impl DropCause {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropCause::Invalid => "invalid",
            DropCause::Reserved => "reserved",
            DropCause::NotAllowedByPolicy => "not_allowed_by_policy",
            DropCause::TooMany => "too_many",
        }
    }
}

impl fmt::Display for DropCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropCause::Invalid => "not a valid NATS subject",
            DropCause::Reserved => {
                "inbox, reply and $SYS subjects, and wildcard first tokens that cover them, cannot be granted"
            }
            DropCause::NotAllowedByPolicy => "not within what the admin policy lets annotations grant",
            DropCause::TooMany => "beyond the first 256 entries of the annotation",
        })
    }
}

/// What became of one annotation entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// Granted; `within` is the policy pattern it lies within (`None` without a policy file).
    Granted {
        /// The (substituted) policy pattern.
        within: Option<String>,
    },
    /// Already granted by the defaults or an earlier entry: nothing added, whatever the policy
    /// allows (it is not a drop: the client may use it).
    AlreadyGranted {
        /// The (substituted) policy pattern it also lies within, if any.
        within: Option<String>,
        /// The grant that covers it.
        covered_by: String,
    },
    /// Refused.
    Dropped(DropCause),
}

/// One annotation entry and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryVerdict {
    /// The annotation's direction.
    pub direction: Direction,
    /// The entry, trimmed.
    pub entry: String,
    /// Kept or dropped, and why.
    pub outcome: EntryOutcome,
}

/// Everything the policy decides for one ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The account it is placed in; `None`: the default account (`NATS_ACCOUNT`).
    pub account: Option<String>,
    /// The part of the policy that decided.
    pub governance: Governance,
    /// Its permissions.
    pub permissions: Arc<Permissions>,
    /// Every annotation entry read, in order, with what became of it.
    pub entries: Vec<EntryVerdict>,
    /// Per direction, how many entries were not read: beyond [`MAX_ENTRIES_PER_ANNOTATION`], or
    /// past the first [`MAX_ANNOTATION_BYTES`] of the annotation.
    pub ignored: Vec<(Direction, usize)>,
}

impl Evaluation {
    /// The entries that were dropped.
    pub fn dropped(&self) -> impl Iterator<Item = (&EntryVerdict, DropCause)> {
        self.entries.iter().filter_map(|v| match v.outcome {
            EntryOutcome::Dropped(cause) => Some((v, cause)),
            _ => None,
        })
    }

    /// Why `cause` dropped an entry here: its text, and for a policy drop the part of the
    /// policy that bounded it.
    pub fn explain(&self, cause: DropCause) -> String {
        match cause {
            DropCause::NotAllowedByPolicy => format!("{cause}: {}", self.governance),
            _ => cause.to_string(),
        }
    }
}

/// An evaluation that dropped annotation entries, for the people who wrote them: the object
/// version it was computed for and the evaluation itself (two pointers, cheap to hand over).
#[derive(Debug, Clone)]
pub struct DropReport {
    /// The ServiceAccount object, at the version evaluated.
    pub account: Arc<ServiceAccount>,
    /// What the policy made of its annotations.
    pub evaluation: Arc<Evaluation>,
}

/// The earlier private inbox prefix of a ServiceAccount (`INBOX_MODE=responses`):
/// `_INBOX_<ns>_<sa>` with every `.` of the name turned into `_`.
///
/// Without the substitution the account `app` could subscribe to `_INBOX_ns_app.>` and so read
/// the inbox of `app.x` (`_INBOX_ns_app.x.…`). Namespaces cannot contain `_` or `.`, and names
/// cannot contain `_`, so the mapping is one-to-one.
pub fn private_inbox(namespace: &str, name: &str) -> String {
    format!("_INBOX_{}_{}", namespace, name.replace('.', "_"))
}

/// The inbox prefix clients set in `INBOX_MODE=private`: `_INBOX.<ns>.<sa>` with every `.` of
/// the name turned into `_` (one token per name, so no account's prefix covers another's).
pub fn private_inbox_prefix(namespace: &str, name: &str) -> String {
    format!("_INBOX.{}.{}", namespace, name.replace('.', "_"))
}

/// The policy's decision for `sa` (pure): its account, its permissions and what became of
/// each annotation entry; an error when its namespace is not served.
pub fn evaluate(
    sa: &ServiceAccount,
    policy: &AdminPolicy,
    mode: InboxMode,
) -> Result<Evaluation, NotServed> {
    let placement = policy.place(&sa.namespace)?;
    let namespace_subjects = format!("{}.>", sa.namespace);
    let (mut pub_allow, mut sub_allow, resp_max) = match mode {
        InboxMode::Shared => (
            vec![namespace_subjects.clone(), SHARED_INBOXES.to_owned()],
            vec![namespace_subjects, SHARED_INBOXES.to_owned()],
            0,
        ),
        InboxMode::Private => (
            vec![namespace_subjects.clone(), SHARED_INBOXES.to_owned()],
            vec![
                namespace_subjects,
                format!("{}.>", private_inbox_prefix(&sa.namespace, &sa.name)),
            ],
            0,
        ),
        InboxMode::Responses => (
            vec![namespace_subjects.clone()],
            vec![
                namespace_subjects,
                SHARED_INBOXES.to_owned(),
                format!("{}.>", private_inbox(&sa.namespace, &sa.name)),
            ],
            1,
        ),
    };
    let mut entries = Vec::new();
    let mut ignored = Vec::new();
    for (direction, target) in [
        (Direction::Publish, &mut pub_allow),
        (Direction::Subscribe, &mut sub_allow),
    ] {
        let Some(value) = sa.annotation(direction.annotation()) else {
            continue;
        };
        let bounds: Option<Vec<String>> = match placement.bounds {
            Bounds::Unbounded => None,
            Bounds::Within { publish, subscribe } => Some(
                match direction {
                    Direction::Publish => publish,
                    Direction::Subscribe => subscribe,
                }
                .iter()
                .map(|p| admin::substitute(p, &sa.namespace, &sa.name))
                .collect(),
            ),
        };
        let mut listed = value.split(',').map(str::trim).filter(|e| !e.is_empty());
        for entry in listed.by_ref().take(MAX_ENTRIES_PER_ANNOTATION) {
            let outcome = if !is_valid_subject(entry) {
                EntryOutcome::Dropped(DropCause::Invalid)
            } else if subject::is_reserved(entry) {
                // Whatever the policy says: the defaults alone grant these.
                EntryOutcome::Dropped(DropCause::Reserved)
            } else {
                // What the client can reach with the entry: for a subscription, a last `*`
                // reaches as far as `>` (see `subject::subscribe_reach`).
                let reach = match direction {
                    Direction::Publish => Cow::Borrowed(entry),
                    Direction::Subscribe => subject::subscribe_reach(entry),
                };
                let within = bounds
                    .as_ref()
                    .and_then(|patterns| patterns.iter().find(|p| lies_within(&reach, p)).cloned());
                match target.iter().find(|e| lies_within(entry, e)) {
                    // Nothing to add, whatever the policy allows: a grant covering it (a default
                    // or an earlier entry) is already there.
                    Some(covering) => EntryOutcome::AlreadyGranted {
                        within,
                        covered_by: covering.clone(),
                    },
                    None if bounds.is_some() && within.is_none() => {
                        EntryOutcome::Dropped(DropCause::NotAllowedByPolicy)
                    }
                    None => {
                        target.push(entry.to_owned());
                        EntryOutcome::Granted { within }
                    }
                }
            };
            entries.push(EntryVerdict {
                direction,
                entry: entry.to_owned(),
                outcome,
            });
        }
        // Entries past the first MAX_ENTRIES_PER_ANNOTATION, and those past the length the
        // object kept of the annotation (`MAX_ANNOTATION_BYTES`).
        let past_limit = sa.entries_past_limit(direction.annotation());
        let rest = listed.count() + past_limit;
        if rest > 0 {
            ignored.push((direction, rest));
        }
    }
    Ok(Evaluation {
        account: placement.account.map(str::to_owned),
        governance: placement.governance,
        permissions: Arc::new(Permissions {
            pub_allow,
            pub_deny: vec![ALWAYS_DENIED.to_string()],
            sub_allow,
            sub_deny: vec![ALWAYS_DENIED.to_string()],
            resp_max,
        }),
        entries,
        ignored,
    })
}

impl PermissionCache {
    /// Logs (the first few one by one, the rest summed) and counts the entries `evaluation`
    /// dropped: annotations are written by whoever may edit the ServiceAccount, so neither the
    /// log nor the time spent may grow with what they write.
    fn report_drops(&self, sa: &ServiceAccount, evaluation: &Evaluation) {
        let count = |direction: Direction, cause: DropCause, n: u64| {
            self.metrics
                .dropped_annotation_entries
                .get_or_create(&DroppedEntryLabels {
                    direction: direction.label(),
                    cause: cause.label(),
                })
                .inc_by(n);
        };
        let mut unlogged = 0usize;
        for (i, (verdict, cause)) in evaluation.dropped().enumerate() {
            count(verdict.direction, cause, 1);
            if i >= MAX_DROP_LINES {
                unlogged += 1;
                continue;
            }
            warn!(
                "serviceaccount {}/{}: annotation {} entry {:?} dropped ({})",
                sa.namespace,
                sa.name,
                verdict.direction.annotation(),
                // An entry may be as long as the annotation: quoted as the Event quotes it.
                crate::events::quoted_entry(&verdict.entry),
                evaluation.explain(cause)
            );
        }
        if unlogged > 0 {
            warn!(
                "serviceaccount {}/{}: {unlogged} more annotation entries dropped (not logged one by one)",
                sa.namespace, sa.name
            );
        }
        for &(direction, n) in &evaluation.ignored {
            count(
                direction,
                DropCause::TooMany,
                u64::try_from(n).unwrap_or(u64::MAX),
            );
            warn!(
                "serviceaccount {}/{}: annotation {} has {n} entries it does not read (only the first {MAX_ENTRIES_PER_ANNOTATION}, within its first {MAX_ANNOTATION_BYTES} bytes, are)",
                sa.namespace,
                sa.name,
                direction.annotation()
            );
        }
    }
}

/// `(namespace, name)` of a ServiceAccount.
type AccountKey = (String, String);

/// What was computed for one ServiceAccount object under one policy generation.
struct Computed {
    object: Arc<ServiceAccount>,
    generation: u64,
    evaluation: Arc<Evaluation>,
}

/// Remembers the evaluation of each ServiceAccount object, so annotations are parsed (and their
/// drops logged, counted and reported) once per version of the object and of the policy rather
/// than once per connection.
pub struct PermissionCache {
    entries: Mutex<HashMap<AccountKey, Computed>>,
    metrics: Arc<Metrics>,
    capacity: usize,
    mode: InboxMode,
    reports: Option<Sender<DropReport>>,
}

impl PermissionCache {
    /// Creates an empty cache holding at most `capacity` accounts, for clients in `mode`.
    pub fn new(metrics: Arc<Metrics>, capacity: usize, mode: InboxMode) -> PermissionCache {
        PermissionCache {
            entries: Mutex::new(HashMap::new()),
            metrics,
            capacity: capacity.max(1),
            mode,
            reports: None,
        }
    }

    /// Hands every evaluation that drops entries to `reports` as well (the Event recorder's
    /// bounded queue). The request path never waits for it: when the queue is full the report
    /// is dropped and counted as `events_total{result="dropped"}`.
    pub fn report_drops_to(mut self, reports: Sender<DropReport>) -> PermissionCache {
        self.reports = Some(reports);
        self
    }

    /// The evaluation of `sa` under `policy`, computed when this exact object or this policy
    /// generation was not seen before; then every dropped entry is logged and counted.
    pub fn evaluation(
        &self,
        sa: &Arc<ServiceAccount>,
        policy: &LoadedPolicy,
    ) -> Result<Arc<Evaluation>, NotServed> {
        let key = (sa.namespace.to_string(), sa.name.to_string());
        if let Some(c) = self.entries.lock().get(&key) {
            // The cache hands out a new Arc for every new version of the object.
            if c.generation == policy.generation
                && (Arc::ptr_eq(&c.object, sa) || *c.object == **sa)
            {
                return Ok(c.evaluation.clone());
            }
        }
        let evaluation = Arc::new(evaluate(sa, &policy.policy, self.mode)?);
        self.report_drops(sa, &evaluation);
        if evaluation.dropped().next().is_some() || !evaluation.ignored.is_empty() {
            self.report(sa, &evaluation);
        }
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(
            key,
            Computed {
                object: sa.clone(),
                generation: policy.generation,
                evaluation: evaluation.clone(),
            },
        );
        Ok(evaluation)
    }

    /// Offers the report without waiting; a full queue drops it (counted), a stopped recorder
    /// takes nothing more.
    fn report(&self, sa: &Arc<ServiceAccount>, evaluation: &Arc<Evaluation>) {
        let Some(reports) = &self.reports else {
            return;
        };
        let report = DropReport {
            account: sa.clone(),
            evaluation: evaluation.clone(),
        };
        if let Err(TrySendError::Full(_)) = reports.try_send(report) {
            self.metrics
                .events
                .get_or_create(&EventLabels { result: "dropped" })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(ns: &str, name: &str, annotations: &[(&str, &str)]) -> ServiceAccount {
        annotations
            .iter()
            .fold(ServiceAccount::for_test(ns, name, "uid-1"), |sa, (k, v)| {
                sa.with_annotation(k, v)
            })
    }

    /// The permissions without a policy file, in `mode`.
    fn perms(sa: &ServiceAccount, mode: InboxMode) -> Permissions {
        Permissions::clone(
            &evaluate(sa, &AdminPolicy::unrestricted(), mode)
                .unwrap()
                .permissions,
        )
    }

    /// The permissions through a cache that logs and counts into `m`.
    fn counted(sa: ServiceAccount, policy: &AdminPolicy, m: &Arc<Metrics>) -> Arc<Evaluation> {
        let cache = PermissionCache::new(m.clone(), 16, InboxMode::Responses);
        let loaded = LoadedPolicy {
            policy: policy.clone(),
            generation: 1,
        };
        cache.evaluation(&Arc::new(sa), &loaded).unwrap()
    }

    fn dropped(m: &Metrics, direction: &'static str, cause: &'static str) -> u64 {
        m.dropped_annotation_entries
            .get_or_create(&DroppedEntryLabels { direction, cause })
            .get()
    }

    #[test]
    fn shared_inboxes_by_default_and_no_response_permission() {
        let p = perms(&sa("team-a", "app", &[]), InboxMode::Shared);
        assert_eq!(p.pub_allow, vec!["team-a.>", "_INBOX.>"]);
        assert_eq!(p.sub_allow, vec!["team-a.>", "_INBOX.>"]);
        assert_eq!(
            p.resp_max, 0,
            "no response permission: it is an escalation path"
        );
        assert_eq!(p.pub_deny, vec!["$SYS.>"]);
        assert_eq!(p.sub_deny, vec!["$SYS.>"]);
    }

    #[test]
    fn private_inboxes_are_readable_by_their_account_only() {
        let p = perms(&sa("team-a", "svc.v2", &[]), InboxMode::Private);
        assert_eq!(p.pub_allow, vec!["team-a.>", "_INBOX.>"]);
        assert_eq!(p.sub_allow, vec!["team-a.>", "_INBOX.team-a.svc_v2.>"]);
        assert_eq!(p.resp_max, 0);
        assert_eq!(
            private_inbox_prefix("team-a", "svc.v2"),
            "_INBOX.team-a.svc_v2"
        );
        // `app`'s inbox space does not cover `app.x`'s: the name is one token.
        let app = perms(&sa("ns", "app", &[]), InboxMode::Private);
        assert!(!app
            .sub_allow
            .iter()
            .any(|s| lies_within("_INBOX.ns.app_x.reply", s)));
    }

    #[test]
    fn defaults_isolate_the_namespace() {
        let p = perms(&sa("team-a", "app", &[]), InboxMode::Responses);
        assert_eq!(p.pub_allow, vec!["team-a.>"]);
        assert_eq!(
            p.sub_allow,
            vec!["team-a.>", "_INBOX.>", "_INBOX_team-a_app.>"]
        );
        assert_eq!(p.resp_max, 1);
        assert_eq!(p.pub_deny, vec!["$SYS.>"]);
        assert_eq!(p.sub_deny, vec!["$SYS.>"]);
    }

    #[test]
    fn dots_in_the_account_name_cannot_reach_another_accounts_inbox() {
        assert_eq!(private_inbox("ns", "app.x"), "_INBOX_ns_app_x");
        let app = perms(&sa("ns", "app", &[]), InboxMode::Responses);
        let app_x = perms(&sa("ns", "app.x", &[]), InboxMode::Responses);
        assert!(app.sub_allow.contains(&"_INBOX_ns_app.>".to_string()));
        assert!(app_x.sub_allow.contains(&"_INBOX_ns_app_x.>".to_string()));
        // `_INBOX_ns_app.>` does not match anything under `_INBOX_ns_app_x`.
        assert!(!app
            .sub_allow
            .iter()
            .any(|s| s.starts_with("_INBOX_ns_app_x")));
    }

    #[test]
    fn annotations_add_trimmed_subjects_in_order_without_duplicates() {
        let p = perms(
            &sa(
                "prod",
                "svc",
                &[
                    (PUB_ANNOTATION, " orders.> ,inventory.check,, orders.>"),
                    (SUB_ANNOTATION, "orders.responses.*, prod.>"),
                ],
            ),
            InboxMode::Responses,
        );
        assert_eq!(p.pub_allow, vec!["prod.>", "orders.>", "inventory.check"]);
        assert_eq!(
            p.sub_allow,
            vec![
                "prod.>",
                "_INBOX.>",
                "_INBOX_prod_svc.>",
                "orders.responses.*"
            ]
        );
    }

    #[test]
    fn invalid_subjects_are_dropped_and_counted() {
        let m = Arc::new(Metrics::new());
        let bad = "a..b, .a, a., a b, a.>.b, a.b*, a.*b, >x, a\tb, ";
        let e = counted(
            sa(
                "ns",
                "svc",
                &[(PUB_ANNOTATION, bad), (SUB_ANNOTATION, "ok.*, x..y")],
            ),
            &AdminPolicy::unrestricted(),
            &m,
        );
        assert_eq!(e.permissions.pub_allow, vec!["ns.>"]);
        assert!(e.permissions.sub_allow.contains(&"ok.*".to_string()));
        assert_eq!(dropped(&m, "pub", "invalid"), 9);
        assert_eq!(dropped(&m, "sub", "invalid"), 1);
    }

    #[test]
    fn inbox_reply_and_system_subjects_cannot_be_granted() {
        let m = Arc::new(Metrics::new());
        let reserved =
            "_INBOX.>, _INBOX_other_app.>, _INBOX_x, _REPLY.a, $SYS.>, $SYS.REQ.USER.AUTH, >, *.>, *.events, *";
        let e = counted(
            sa(
                "ns",
                "svc",
                &[(SUB_ANNOTATION, reserved), (PUB_ANNOTATION, reserved)],
            ),
            &AdminPolicy::unrestricted(),
            &m,
        );
        assert_eq!(e.permissions.pub_allow, vec!["ns.>"]);
        assert_eq!(
            e.permissions.sub_allow,
            vec!["ns.>", "_INBOX.>", "_INBOX_ns_svc.>"]
        );
        assert_eq!(dropped(&m, "sub", "reserved"), 10);
        assert_eq!(dropped(&m, "pub", "reserved"), 10);
    }

    #[test]
    fn the_policy_bounds_what_annotations_grant() {
        let policy = AdminPolicy::parse(
            "annotations:\n  publish: [\"{namespace}.>\", \"shared.{name}.>\"]\n  subscribe: [\"{namespace}.>\"]\n\
             rules:\n  - namespaces: [\"payments\"]\n    account: PAYMENTS\n    annotations:\n      publish: [\"orders.>\", \"$JS.API.>\", \">\"]\n",
        )
        .unwrap();
        let m = Arc::new(Metrics::new());
        let e = counted(
            sa(
                "team-a",
                "svc.v2",
                &[
                    (
                        PUB_ANNOTATION,
                        "team-a.x, shared.svc_v2.events, shared.other.x, orders.>, team-b.x",
                    ),
                    (SUB_ANNOTATION, "team-a.*.y, orders.>"),
                ],
            ),
            &policy,
            &m,
        );
        assert_eq!(e.account, None);
        assert_eq!(e.governance, Governance::Defaults);
        assert_eq!(
            e.permissions.pub_allow,
            vec!["team-a.>", "shared.svc_v2.events"]
        );
        assert_eq!(dropped(&m, "pub", "not_allowed_by_policy"), 3);
        assert_eq!(dropped(&m, "sub", "not_allowed_by_policy"), 1);
        let verdict = |entry: &str| {
            e.entries
                .iter()
                .find(|v| v.entry == entry)
                .map(|v| v.outcome.clone())
                .unwrap()
        };
        assert_eq!(
            verdict("team-a.x"),
            EntryOutcome::AlreadyGranted {
                within: Some("team-a.>".into()),
                covered_by: "team-a.>".into()
            }
        );
        assert_eq!(
            verdict("shared.svc_v2.events"),
            EntryOutcome::Granted {
                within: Some("shared.svc_v2.>".into())
            }
        );
        assert_eq!(
            verdict("team-b.x"),
            EntryOutcome::Dropped(DropCause::NotAllowedByPolicy)
        );

        // A rule places its namespaces in its account; even `>` does not open reserved subjects.
        let e = counted(
            sa(
                "payments",
                "api",
                &[(
                    PUB_ANNOTATION,
                    "orders.eu.*, $JS.API.STREAM.INFO.orders, _INBOX.x, $SYS.x, anything.else",
                )],
            ),
            &policy,
            &m,
        );
        assert_eq!(e.account.as_deref(), Some("PAYMENTS"));
        assert_eq!(e.governance, Governance::Rule(0));
        assert_eq!(
            e.permissions.pub_allow,
            vec![
                "payments.>",
                "orders.eu.*",
                "$JS.API.STREAM.INFO.orders",
                "anything.else"
            ]
        );
        assert_eq!(dropped(&m, "pub", "reserved"), 2);
    }

    #[test]
    fn an_entry_the_defaults_already_grant_is_not_a_drop_whatever_the_bounds() {
        let policy = AdminPolicy::parse("annotations:\n  publish: [\"orders.>\"]\n").unwrap();
        let e = evaluate(
            &sa(
                "payments",
                "api",
                &[(PUB_ANNOTATION, "payments.audit, orders.x")],
            ),
            &policy,
            InboxMode::Shared,
        )
        .unwrap();
        assert_eq!(
            e.entries[0].outcome,
            EntryOutcome::AlreadyGranted {
                within: None,
                covered_by: "payments.>".into()
            }
        );
        assert_eq!(e.dropped().count(), 0);
        assert_eq!(
            e.permissions.pub_allow,
            vec!["payments.>", "_INBOX.>", "orders.x"]
        );
    }

    #[test]
    fn a_subscribe_entry_ending_in_a_star_must_lie_within_the_policy_as_if_it_ended_in_gt() {
        let policy = AdminPolicy::parse(
            "annotations:\n  publish: [\"orders.*\"]\n  subscribe: [\"orders.*\", \"metrics.>\"]\n",
        )
        .unwrap();
        let e = evaluate(
            &sa(
                "ns",
                "svc",
                &[
                    (PUB_ANNOTATION, "orders.*"),
                    (SUB_ANNOTATION, "orders.*, orders.eu, metrics.eu.*"),
                ],
            ),
            &policy,
            InboxMode::Shared,
        )
        .unwrap();
        // A publish goes to one subject: `orders.*` publishes nothing beyond `orders.*`.
        assert_eq!(
            e.permissions.pub_allow,
            vec!["ns.>", "_INBOX.>", "orders.*"]
        );
        // Subscribed, `orders.*` would let the client subscribe `orders.>`.
        assert_eq!(
            e.entries[1].outcome,
            EntryOutcome::Dropped(DropCause::NotAllowedByPolicy)
        );
        assert_eq!(
            e.permissions.sub_allow,
            vec!["ns.>", "_INBOX.>", "orders.eu", "metrics.eu.*"]
        );
        assert_eq!(
            e.entries[3].outcome,
            EntryOutcome::Granted {
                within: Some("metrics.>".into())
            }
        );
    }

    #[test]
    fn only_the_first_entries_of_an_annotation_are_read() {
        let m = Arc::new(Metrics::new());
        let value = (0..10_000)
            .map(|i| format!("ns.s{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let other = (0..300)
            .map(|i| format!("x{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let e = counted(
            sa(
                "ns",
                "svc",
                &[(PUB_ANNOTATION, &value), (SUB_ANNOTATION, &other)],
            ),
            &AdminPolicy::unrestricted(),
            &m,
        );
        let read = |d: Direction| e.entries.iter().filter(|v| v.direction == d).count();
        assert_eq!(read(Direction::Publish), MAX_ENTRIES_PER_ANNOTATION);
        assert_eq!(read(Direction::Subscribe), MAX_ENTRIES_PER_ANNOTATION);
        assert_eq!(
            e.ignored,
            vec![
                (Direction::Publish, 10_000 - MAX_ENTRIES_PER_ANNOTATION),
                (Direction::Subscribe, 300 - MAX_ENTRIES_PER_ANNOTATION)
            ]
        );
        assert_eq!(dropped(&m, "pub", "too_many"), 9_744);
        assert_eq!(dropped(&m, "sub", "too_many"), 44);
        // Within the namespace grant: nothing added to the JWT.
        assert_eq!(e.permissions.pub_allow, vec!["ns.>"]);
        assert_eq!(
            e.permissions.sub_allow.len(),
            3 + MAX_ENTRIES_PER_ANNOTATION
        );
    }

    #[test]
    fn entries_past_the_kept_length_of_an_annotation_are_counted_as_not_read() {
        let m = Arc::new(Metrics::new());
        let e = counted(
            sa("ns", "svc", &[(SUB_ANNOTATION, "ns.a, ns.b")])
                .with_entries_past_limit(SUB_ANNOTATION, 7),
            &AdminPolicy::unrestricted(),
            &m,
        );
        assert_eq!(e.entries.len(), 2);
        assert_eq!(e.ignored, vec![(Direction::Subscribe, 7)]);
        assert_eq!(dropped(&m, "sub", "too_many"), 7);
    }

    #[test]
    fn a_namespace_the_policy_does_not_serve_gets_nothing() {
        let policy = AdminPolicy::parse("namespaces:\n  exclude: [\"kube-*\"]\n").unwrap();
        assert_eq!(
            evaluate(&sa("kube-system", "x", &[]), &policy, InboxMode::Shared),
            Err(NotServed::Excluded("kube-*".into()))
        );
    }

    #[test]
    fn dropped_entries_are_reported_once_per_version_without_waiting_for_the_recorder() {
        let m = Arc::new(Metrics::new());
        // A queue of one that nobody reads: the second report finds it full.
        let (tx, rx) = crossbeam_channel::bounded(1);
        let cache = PermissionCache::new(m.clone(), 10, InboxMode::Shared).report_drops_to(tx);
        let policy = LoadedPolicy {
            policy: AdminPolicy::unrestricted(),
            generation: 1,
        };
        let clean = Arc::new(sa("ns", "clean", &[(PUB_ANNOTATION, "a.b")]));
        cache.evaluation(&clean, &policy).unwrap();
        assert!(rx.is_empty(), "nothing to report without a dropped entry");
        let v1 = Arc::new(sa("ns", "svc", &[(PUB_ANNOTATION, "a.b, bad..")]));
        let e1 = cache.evaluation(&v1, &policy).unwrap();
        cache.evaluation(&v1, &policy).unwrap();
        assert_eq!(rx.len(), 1, "once per object version");
        let mut v2 = Arc::unwrap_or_clone(v1.clone());
        v2.resource_version = "2".into();
        let v2 = Arc::new(v2);
        cache.evaluation(&v2, &policy).unwrap();
        let events = |result| m.events.get_or_create(&EventLabels { result }).get();
        assert_eq!(events("dropped"), 1, "a full queue drops the report");
        let report = rx.try_recv().unwrap();
        assert!(Arc::ptr_eq(&report.account, &v1));
        assert!(Arc::ptr_eq(&report.evaluation, &e1));
        // Once the recorder is gone, reports go nowhere and nothing more is counted.
        drop(rx);
        let v3 = Arc::new(sa("ns", "other", &[(SUB_ANNOTATION, "x..")]));
        cache.evaluation(&v3, &policy).unwrap();
        assert_eq!(events("dropped"), 1);
    }

    #[test]
    fn permission_cache_recomputes_only_for_a_new_object_or_policy() {
        let m = Arc::new(Metrics::new());
        let cache = PermissionCache::new(m.clone(), 10, InboxMode::Responses);
        let v1_policy = LoadedPolicy {
            policy: AdminPolicy::unrestricted(),
            generation: 1,
        };
        let v1 = Arc::new(sa("ns", "svc", &[(PUB_ANNOTATION, "a.b, bad..")]));
        let p1 = cache.evaluation(&v1, &v1_policy).unwrap();
        let again = cache.evaluation(&v1, &v1_policy).unwrap();
        assert!(Arc::ptr_eq(&p1, &again));
        assert_eq!(
            dropped(&m, "pub", "invalid"),
            1,
            "counted once per object version"
        );
        let v2 = Arc::new(sa("ns", "svc", &[(PUB_ANNOTATION, "c.d")]));
        let p2 = cache.evaluation(&v2, &v1_policy).unwrap();
        assert_eq!(p2.permissions.pub_allow, vec!["ns.>", "c.d"]);
        // A new policy generation: computed again, and now bounded.
        let v2_policy = LoadedPolicy {
            policy: AdminPolicy::parse("annotations:\n  publish: [\"a.>\"]\n").unwrap(),
            generation: 2,
        };
        let p3 = cache.evaluation(&v2, &v2_policy).unwrap();
        assert_eq!(p3.permissions.pub_allow, vec!["ns.>"]);
        assert_eq!(dropped(&m, "pub", "not_allowed_by_policy"), 1);
    }
}
