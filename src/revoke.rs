//! Live revocation: when a ServiceAccount is deleted, re-created (a new uid) or its NATS
//! annotations change, the connections nats-server let in on its earlier decision are closed, so
//! that they reconnect and get the current one.
//!
//! The ServiceAccount cache reports each such change ([`Revocation`]) on a bounded queue. One
//! thread holds a connection as a system-account user (`NATS_SYSTEM_URL`) and, for each change,
//! asks every server of the cluster for that account's connections
//! (`$SYS.REQ.SERVER.PING.CONNZ` filtered by the user name the service gives every user JWT,
//! `system:serviceaccount:<namespace>:<name>`), then closes each one that started before the
//! change was seen, give or take [`CLOCK_MARGIN`] (`$SYS.REQ.SERVER.<server_id>.KICK`). Nothing
//! is remembered between decisions: a replica that restarted finds connections granted by any
//! replica. A connection that started after the change was decided on it already (possibly by a
//! replica whose cache was a moment behind, which then closes it when it sees the change itself).

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{info, warn};
use serde::Deserialize;

use crate::callout::connection::{Connection, Dialer, Event};
use crate::kube::cache::ServiceAccountCache;
use crate::kube::PodCache;
use crate::metrics::{Metrics, RevocationLabels};
use crate::policy::{evaluate, InboxMode, PolicyChange};

/// Changes waiting for the revocation thread; beyond it, a change is counted as failed.
pub const QUEUE_CAPACITY: usize = 4096;
/// How long replies to a cluster-wide request are awaited at most.
const GATHER_AT_MOST: Duration = Duration::from_secs(2);
/// A cluster-wide request is complete once no reply came for this long.
const GATHER_QUIET: Duration = Duration::from_millis(250);
/// How long one server's answer is awaited.
const ONE_REPLY: Duration = Duration::from_secs(2);
/// Connections asked for per CONNZ page (nats-server's default limit).
const PAGE: usize = 1024;
/// Pages asked of one server at most for one account.
const MAX_PAGES: usize = 16;
/// How far this host's clock may run behind nats-server's without a connection that started
/// before a change being taken for one that started after it.
const CLOCK_MARGIN: jiff::SignedDuration = jiff::SignedDuration::from_secs(2);
/// Searches (each followed by its KICKs) for one batch at most: a search that read more than one
/// page is made again after its KICKs, for connections that the client's own closes shifted past
/// a page boundary.
const ROUNDS_AT_MOST: usize = 4;
/// Changes handled together at most.
const BATCH_AT_MOST: usize = 4096;
/// Up to this many accounts in a batch are searched one by one (the servers filter); more are
/// matched in one search of every connection.
const FILTERED_AT_MOST: usize = 4;
/// How long after a pod's deletion its connections are searched for once more. A grant decided
/// just before the deletion was seen reaches nats-server, which only then names the connection
/// by its user, up to its authorization timeout after it asked (the `timeout: 5` of the block
/// `keys` prints): the first search, a moment after the deletion, can miss it.
const IN_FLIGHT_AT_MOST: Duration = Duration::from_secs(6);
/// The client name of the system connection (in nats-server's monitoring).
const CLIENT_NAME: &str = "nats-k8s-oidc-callout-revocation";

/// Why a ServiceAccount's connections are closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// The ServiceAccount was deleted.
    Deleted,
    /// It was deleted and created again under the same name (a new uid).
    Recreated,
    /// Its NATS annotations changed.
    AnnotationsChanged,
    /// The admin policy changed what it gets.
    PolicyChanged,
    /// The pod its token is bound to was deleted (`POD_BINDING=watch`).
    PodDeleted,
}

impl RevokeReason {
    /// The metric label and log word.
    pub fn label(self) -> &'static str {
        match self {
            RevokeReason::Deleted => "deleted",
            RevokeReason::Recreated => "recreated",
            RevokeReason::AnnotationsChanged => "annotations_changed",
            RevokeReason::PolicyChanged => "policy_changed",
            RevokeReason::PodDeleted => "pod_deleted",
        }
    }

    /// Every reason, each exposed from the start.
    pub const ALL: [RevokeReason; 5] = [
        RevokeReason::Deleted,
        RevokeReason::Recreated,
        RevokeReason::AnnotationsChanged,
        RevokeReason::PolicyChanged,
        RevokeReason::PodDeleted,
    ];
}

/// The prefix of every user name the service gives.
const USER_PREFIX: &str = "system:serviceaccount:";
/// What separates a ServiceAccount's user name from the pod part, when there is one.
const POD_PART: &str = ":pod:";

/// The user name of a user JWT (the user nats-server reports its connection as, and finds it
/// by): `system:serviceaccount:<namespace>:<name>`, followed by `:pod:<pod>:<pod uid>` for a
/// client whose pod the pod binding check confirmed, so that the pod's connections can be
/// found when it is deleted. None of the parts can hold a `:` (Kubernetes names and uids).
pub fn user_name(namespace: &str, service_account: &str, pod: Option<(&str, &str)>) -> String {
    match pod {
        None => format!("{USER_PREFIX}{namespace}:{service_account}"),
        Some((pod, uid)) => {
            format!("{USER_PREFIX}{namespace}:{service_account}{POD_PART}{pod}:{uid}")
        }
    }
}

/// The ServiceAccount's user name within `user` (which may name a pod too). The pod part is
/// looked for after the namespace and the ServiceAccount, not anywhere: either may be named
/// `pod` (`system:serviceaccount:pod:app`, `system:serviceaccount:team-a:pod:pod:p-1:<uid>`),
/// and the first `:pod:` of such a name is not the pod part.
fn account_user(user: &str) -> &str {
    let Some(rest) = user.strip_prefix(USER_PREFIX) else {
        return user;
    };
    let Some((namespace, after)) = rest.split_once(':') else {
        return user;
    };
    match after.find(':') {
        Some(at) if after[at..].starts_with(POD_PART) => {
            &user[..USER_PREFIX.len() + namespace.len() + 1 + at]
        }
        _ => user,
    }
}

/// The namespace, ServiceAccount, pod and pod uid a pod's user name names.
fn pod_of(user: &str) -> Option<(&str, &str, &str, &str)> {
    let account = account_user(user);
    let (namespace, name) = account_of(account)?;
    let (pod, uid) = user[account.len()..]
        .strip_prefix(POD_PART)?
        .split_once(':')?;
    Some((namespace, name, pod, uid))
}

/// The namespace and ServiceAccount a user name names.
fn account_of(user: &str) -> Option<(&str, &str)> {
    account_user(user)
        .strip_prefix(USER_PREFIX)?
        .split_once(':')
        .filter(|(_, name)| !name.contains(':'))
}

/// A pod whose connections must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
}

/// One ServiceAccount (or one pod of it) whose connections must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Its namespace.
    pub namespace: String,
    /// The ServiceAccount's name.
    pub name: String,
    /// The pod, when only that pod's connections go.
    pub pod: Option<PodRef>,
    /// Why.
    pub reason: RevokeReason,
    /// When the change was seen: connections that started later are left alone.
    pub seen: jiff::Timestamp,
}

impl Revocation {
    /// A revocation of `namespace/name` seen now.
    pub fn now(namespace: &str, name: &str, reason: RevokeReason) -> Revocation {
        Revocation {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            pod: None,
            reason,
            seen: jiff::Timestamp::now(),
        }
    }

    /// A revocation of the connections of pod `pod` (uid `uid`) of ServiceAccount
    /// `namespace/service_account`, which was deleted, seen now.
    pub fn pod(namespace: &str, service_account: &str, pod: &str, uid: &str) -> Revocation {
        Revocation {
            pod: Some(PodRef {
                name: pod.to_owned(),
                uid: uid.to_owned(),
            }),
            ..Revocation::now(namespace, service_account, RevokeReason::PodDeleted)
        }
    }

    /// The name nats-server knows the users by (the user JWT's `name`).
    fn user(&self) -> String {
        let pod = self.pod.as_ref().map(|p| (p.name.as_str(), p.uid.as_str()));
        user_name(&self.namespace, &self.name, pod)
    }

    /// What the log calls it.
    fn label(&self) -> String {
        match &self.pod {
            None => format!("{}/{}", self.namespace, self.name),
            Some(pod) => format!("pod {}/{} of {}", self.namespace, pod.name, self.name),
        }
    }
}

/// One server's CONNZ answer (the fields used).
#[derive(Deserialize)]
struct ConnzReply {
    #[serde(default)]
    data: Option<Connz>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Connz {
    server_id: String,
    #[serde(default)]
    now: String,
    #[serde(default)]
    connections: Option<Vec<ConnInfo>>,
}

#[derive(Deserialize)]
struct ConnInfo {
    cid: u64,
    #[serde(default)]
    authorized_user: String,
    #[serde(default)]
    start: String,
}

/// A KICK answer: success has neither `data` nor `error`.
#[derive(Deserialize)]
struct KickReply {
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// The revocation thread's state.
pub struct Revoker {
    dialer: Dialer,
    metrics: Arc<Metrics>,
    conn: Option<Connection>,
    /// The subscription's prefix: each request's reply subject is `<inbox>.<n>`.
    inbox: String,
    next_reply: u64,
    /// When a failed connect may be retried, and whether its failure was logged.
    retry_at: Option<Instant>,
    /// Policy replacements, and what is needed to tell whom they narrowed.
    policy: Option<PolicyWatch>,
    /// The pods, for the searches of every connection the pod cache asks for.
    pods: Option<Arc<PodCache>>,
    /// Pod deletions searched for once more when their time comes (see [`IN_FLIGHT_AT_MOST`]).
    again: Vec<(Instant, Vec<Revocation>)>,
    /// [`IN_FLIGHT_AT_MOST`], shorter in tests.
    in_flight: Duration,
}

/// One connection to close: (user, server id, client id).
type Found = (String, String, u64);

/// What one search found.
#[derive(Default)]
struct Search {
    /// The connections to close.
    found: Vec<Found>,
    /// Whether a server's connections were read in more than one page.
    paged: bool,
    /// Per server, its clock when its first page was read.
    nows: HashMap<String, jiff::Timestamp>,
}

impl Search {
    /// Adds `other`'s results; a server's earliest clock stands.
    fn merge(&mut self, other: Search) {
        self.found.extend(other.found);
        self.paged |= other.paged;
        for (server, now) in other.nows {
            self.nows.entry(server).or_insert(now);
        }
    }
}

/// Per server, connections that started at or after this are left alone: set for the searches
/// made again after a paged one, so that the clients which reconnected after its KICKs are not
/// closed again.
type Caps = HashMap<String, jiff::Timestamp>;

/// What the revoker needs to find the connections a policy change narrowed.
struct PolicyWatch {
    changes: Receiver<PolicyChange>,
    cache: Arc<ServiceAccountCache>,
    mode: InboxMode,
}

impl Revoker {
    /// A revoker connecting with `dialer` (the system-account user's URL, login and TLS).
    pub fn new(dialer: Dialer, metrics: Arc<Metrics>) -> Revoker {
        Revoker {
            dialer: dialer.renamed(CLIENT_NAME),
            metrics,
            conn: None,
            inbox: format!(
                "_INBOX.{:016x}{:016x}",
                fastrand::u64(..),
                fastrand::u64(..)
            ),
            next_reply: 0,
            retry_at: None,
            policy: None,
            pods: None,
            again: Vec::new(),
            in_flight: IN_FLIGHT_AT_MOST,
        }
    }

    /// Also finds the connections of users named by pod ([`user_name`]): a ServiceAccount's
    /// change then searches every connection, since nats-server filters by exact name only.
    /// When `pods` asks for it ([`PodCache::take_sweep`]), every connection is searched for
    /// those of pods it no longer holds.
    pub fn with_pod_users(mut self, pods: Arc<PodCache>) -> Revoker {
        self.pods = Some(pods);
        self
    }

    /// Also closes the connections a replaced policy grants otherwise: their account (from `cache`)
    /// is evaluated under the old and the new policy (with `mode`), and those whose account or
    /// permissions differ go.
    pub fn with_policy_changes(
        mut self,
        changes: Receiver<PolicyChange>,
        cache: Arc<ServiceAccountCache>,
        mode: InboxMode,
    ) -> Revoker {
        self.policy = Some(PolicyWatch {
            changes,
            cache,
            mode,
        });
        self
    }

    /// Runs until `stop` fires, taking revocations from `rx`.
    pub fn spawn(
        mut self,
        rx: Receiver<Revocation>,
        stop: Receiver<()>,
    ) -> Result<JoinHandle<()>, String> {
        std::thread::Builder::new()
            .name("revocation".into())
            .spawn(move || loop {
                if !matches!(stop.try_recv(), Err(crossbeam_channel::TryRecvError::Empty)) {
                    if let Some(conn) = self.conn.as_mut() {
                        conn.close();
                    }
                    return;
                }
                self.ensure_connected();
                self.revoke_queued_policy_changes();
                self.sweep_pods();
                self.revoke_again_when_due();
                self.revoke_overdue_pods();
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(first) => {
                        // Everything queued meanwhile goes in the same search.
                        let mut batch = vec![first];
                        batch.extend(rx.try_iter().take(BATCH_AT_MOST));
                        self.revoke_all(batch);
                    }
                    Err(RecvTimeoutError::Timeout) => self.keep_alive(),
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            })
            .map_err(|e| format!("cannot start the revocation thread: {e}"))
    }

    /// Connects when not connected (at most every few seconds), subscribing to the inbox.
    fn ensure_connected(&mut self) {
        if self.conn.is_some() || self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        match self.dialer.connect() {
            Ok(mut conn) => match conn.subscribe(&format!("{}.*", self.inbox)) {
                Ok(()) => {
                    let server = conn.server();
                    self.conn = Some(conn);
                    match self.verify_system_user() {
                        Ok(()) => {
                            info!(
                                "revocation: connected to nats at {server} as a system-account user"
                            );
                            self.retry_at = None;
                        }
                        Err(why) => {
                            warn!(
                                "revocation: the user of NATS_SYSTEM_URL cannot close connections ({why}); it must be a user of nats-server's system account"
                            );
                            if let Some(conn) = self.conn.as_mut() {
                                conn.close();
                            }
                            self.conn = None;
                            self.retry_at = Some(Instant::now() + Duration::from_secs(60));
                        }
                    }
                }
                Err(e) => {
                    warn!("revocation: cannot subscribe on the system connection: {e}");
                    self.retry_at = Some(Instant::now() + Duration::from_secs(5));
                }
            },
            Err((server, e)) => {
                warn!(
                    "revocation: cannot connect to nats at {server} (NATS_SYSTEM_URL): {e}; live connections are not closed on ServiceAccount changes until it works"
                );
                self.retry_at = Some(Instant::now() + Duration::from_secs(5));
            }
        }
    }

    /// Makes sure the connection's user may close connections: any account may ask for CONNZ
    /// (and sees only its own connections), but only the system account's users reach a
    /// server's KICK, which answers a client id that no connection has (0) with an error.
    fn verify_system_user(&mut self) -> Result<(), String> {
        let replies = self.gather(
            "$SYS.REQ.SERVER.PING.CONNZ",
            br#"{"limit":1,"user":"nats-k8s-oidc-callout:no-such-user"}"#,
        )?;
        let server_id = replies
            .iter()
            .filter_map(|r| serde_json::from_slice::<ConnzReply>(r).ok())
            .find_map(|r| r.data.map(|d| d.server_id))
            .ok_or("no server answered $SYS.REQ.SERVER.PING.CONNZ")?;
        if !valid_server_id(&server_id) {
            return Err(format!("not a server id: {server_id:?}"));
        }
        let reply = self.one(
            &format!("$SYS.REQ.SERVER.{server_id}.KICK"),
            br#"{"cid":0}"#,
        )?;
        match serde_json::from_slice::<KickReply>(&reply) {
            Ok(KickReply { error: Some(e) }) if e.to_string().contains("no such client") => Ok(()),
            _ => Err(format!(
                "server {server_id} did not answer its KICK request as it answers the system account"
            )),
        }
    }

    /// Reads the connection for a moment, so the server's PINGs are answered.
    fn keep_alive(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            if let Event::Lost(why) = conn.next_event() {
                warn!("revocation: the system connection was lost: {why}");
                self.conn = None;
            }
        }
    }

    /// Closes the connections of the ServiceAccounts of `batch` (changes queued together, the
    /// same account's coalesced), counting and logging what was done per account. Its pod
    /// deletions are searched for once more [`IN_FLIGHT_AT_MOST`] later.
    fn revoke_all(&mut self, batch: Vec<Revocation>) {
        let pods: Vec<Revocation> = batch.iter().filter(|r| r.pod.is_some()).cloned().collect();
        self.revoke(batch, false);
        if !pods.is_empty() {
            self.again.push((Instant::now() + self.in_flight, pods));
        }
    }

    /// Closes the connections of the pods stuck terminating past their deletion's grace.
    fn revoke_overdue_pods(&mut self) {
        let Some(pods) = self.pods.clone() else {
            return;
        };
        let overdue = pods.overdue(crate::unix_now());
        if !overdue.is_empty() {
            self.revoke_all(overdue);
        }
    }

    /// Searches once more for the connections of the pod deletions whose time came: grants in
    /// flight at the first search. Only what it closes is counted and logged.
    fn revoke_again_when_due(&mut self) {
        let now = Instant::now();
        if !self.again.iter().any(|(at, _)| *at <= now) {
            return;
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.again)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.again = later;
        let batch: Vec<Revocation> = due.into_iter().flat_map(|(_, batch)| batch).collect();
        self.revoke(batch, true);
    }

    /// [`Revoker::revoke_all`]'s work; `again`: a second search, counted only by what it
    /// closes.
    fn revoke(&mut self, batch: Vec<Revocation>, again: bool) {
        let mut targets: HashMap<String, Revocation> = HashMap::new();
        for revocation in batch {
            if !again {
                self.metrics
                    .revocations
                    .get_or_create(&RevocationLabels {
                        reason: revocation.reason.label(),
                    })
                    .inc();
            }
            // The latest change of an account stands for all: every connection that started
            // before it goes.
            targets.insert(revocation.user(), revocation);
        }
        let seen: HashMap<String, jiff::Timestamp> =
            targets.iter().map(|(u, r)| (u.clone(), r.seen)).collect();
        // A connection's user names its pod, or only its ServiceAccount: a change of the
        // ServiceAccount reaches both.
        let changed_at = |u: &str| {
            let own = seen.get(u).copied();
            let account = seen.get(account_user(u)).copied();
            own.max(account)
        };
        // nats-server finds users by their exact name: a ServiceAccount's change must also reach
        // its pods' users when pods are named, which only a search of every connection does.
        let exact = self.pods.is_none() || targets.values().all(|r| r.pod.is_some());
        let tally = self.search_and_close(&mut |revoker, caps| {
            // A few accounts: one filtered search each. More (a namespace deleted): one search
            // of every connection, matched here.
            if exact && targets.len() <= FILTERED_AT_MOST {
                let mut all = Search::default();
                for (user, revocation) in &targets {
                    match revoker.find_again_if_lost(Some(user), &changed_at, caps) {
                        Ok(search) => all.merge(search),
                        Err(why) => revoker.failed(revocation, &why),
                    }
                }
                Some(all)
            } else {
                match revoker.find_again_if_lost(None, &changed_at, caps) {
                    Ok(search) => Some(search),
                    Err(why) => {
                        for revocation in targets.values() {
                            revoker.failed(revocation, &why);
                        }
                        None
                    }
                }
            }
        });
        // Per change: a pod's users count for their ServiceAccount's change when only it changed.
        let mut per_target: HashMap<&str, (u64, u64)> = HashMap::new();
        for (user, (closed, failed)) in tally.unwrap_or_default() {
            let key = [user.as_str(), account_user(&user)]
                .into_iter()
                .find_map(|u| targets.get_key_value(u).map(|(k, _)| k.as_str()));
            if let Some(key) = key {
                let entry = per_target.entry(key).or_default();
                entry.0 += closed;
                entry.1 += failed;
            }
        }
        for (key, (closed, failed)) in per_target {
            let Some(revocation) = targets.get(key) else {
                continue;
            };
            if again && closed == 0 && failed == 0 {
                continue;
            }
            let not_closed = self.count(closed, failed);
            info!(
                "revocation: closed {closed} connection(s) of {} ({}){}{not_closed}",
                revocation.label(),
                revocation.reason.label(),
                if again { ", granted as it went" } else { "" },
            );
        }
    }

    /// When the pod cache asks for it (deletions the full queue did not take, or its first
    /// list), closes every connection of a pod the cache no longer holds, or holds as deleted,
    /// that started before the request. Made again later when the search fails.
    fn sweep_pods(&mut self) {
        if self.conn.is_none() {
            return;
        }
        let Some(pods) = self.pods.clone() else {
            return;
        };
        let Some(requested) = pods.take_sweep() else {
            return;
        };
        // Not a change of its own: its closes count, the pods' deletions were counted or lost.
        let now = crate::unix_now();
        let gone = |user: &str| {
            let (namespace, name, pod, uid) = pod_of(user)?;
            pods.is_gone(namespace, pod, uid, name, now)
                .then_some(requested)
        };
        let mut retry = false;
        let tally = self.search_and_close(&mut |revoker, caps| {
            match revoker.find_again_if_lost(None, &gone, caps) {
                Ok(search) => Some(search),
                Err(why) => {
                    revoker.metrics.revocation_failures.inc();
                    // Made again once connected; another failure (too many connections, a
                    // refusal) would only fail again, every turn.
                    retry = revoker.conn.is_none();
                    warn!(
                        "revocation: cannot look up the connections of deleted pods: {why}{}",
                        if retry {
                            "; trying again once connected"
                        } else {
                            ""
                        }
                    );
                    None
                }
            }
        });
        if retry {
            pods.sweep_again(requested);
        }
        let Some(tally) = tally else {
            return;
        };
        let (closed, failed) = totals(&tally);
        let not_closed = self.count(closed, failed);
        info!(
            "revocation: closed {closed} connection(s) of pods deleted unseen or unqueued (pod_deleted){not_closed}"
        );
    }

    /// Handles the policy replacements queued, together: a connection may have been granted
    /// under any policy of the chain, not only the first.
    fn revoke_queued_policy_changes(&mut self) {
        let changes: Vec<PolicyChange> = match self.policy.as_ref() {
            Some(p) => p.changes.try_iter().collect(),
            None => return,
        };
        if !changes.is_empty() {
            self.revoke_for_policy(&changes);
        }
    }

    /// Closes the connections whose account the newest policy of `changes` (consecutive
    /// replacements) places elsewhere, grants other permissions, or no longer serves, compared
    /// with any earlier policy of the chain that served it. Accounts the cache does not hold are
    /// left to their deletion's revocation.
    fn revoke_for_policy(&mut self, changes: &[PolicyChange]) {
        let (Some(first), Some(last)) = (changes.first(), changes.last()) else {
            return;
        };
        let label = RevokeReason::PolicyChanged.label();
        self.metrics
            .revocations
            .get_or_create(&RevocationLabels { reason: label })
            .inc();
        let Some(watch) = self.policy.as_ref() else {
            return;
        };
        let (cache, mode) = (watch.cache.clone(), watch.mode);
        // Every policy a live connection may have been granted under, then the one in force.
        let earlier: Vec<&crate::policy::AdminPolicy> = std::iter::once(&first.old.policy)
            .chain(changes[..changes.len() - 1].iter().map(|c| &c.new.policy))
            .collect();
        let (newest, seen) = (&last.new.policy, last.seen);
        let narrowed = |user: &str| -> Option<jiff::Timestamp> {
            let (namespace, name) = account_of(user)?;
            let sa = cache.get(namespace, name)?;
            let after = evaluate(&sa, newest, mode).ok();
            let differs = earlier.iter().any(|policy| {
                evaluate(&sa, policy, mode).is_ok_and(|before| {
                    after.as_ref().is_none_or(|after| {
                        after.account != before.account || after.permissions != before.permissions
                    })
                })
            });
            differs.then_some(seen)
        };
        let tally = self.search_and_close(&mut |revoker, caps| match revoker
            .find_again_if_lost(None, &narrowed, caps)
        {
            Ok(search) => Some(search),
            Err(why) => {
                revoker.metrics.revocation_failures.inc();
                warn!("revocation: cannot look up the connections the new policy changes: {why}");
                None
            }
        });
        let Some(tally) = tally else {
            return;
        };
        let (closed, failed) = totals(&tally);
        let not_closed = self.count(closed, failed);
        info!(
            "revocation: the policy changed (generation {} to {}): closed {closed} connection(s) whose grant it changes{not_closed}",
            first.old.generation,
            last.new.generation,
        );
    }

    /// Runs `search` and closes what it found; while a search read some server in more than
    /// one page, again (up to [`ROUNDS_AT_MOST`]): offsets shift when connections close during
    /// a paged search, so once the KICKs thinned them out the next search finds those it
    /// skipped. `search` reports its own failures and returns `None` for one that stops the
    /// rounds. Returns, per user, the connections closed and those that could not be; `None`
    /// when the first search failed.
    fn search_and_close(
        &mut self,
        search: &mut dyn FnMut(&mut Revoker, &Caps) -> Option<Search>,
    ) -> Option<HashMap<String, (u64, u64)>> {
        let mut tally: HashMap<String, (u64, u64)> = HashMap::new();
        let mut caps = Caps::new();
        for round in 0..ROUNDS_AT_MOST {
            let Some(Search { found, paged, nows }) = search(self, &caps) else {
                return (round > 0).then_some(tally);
            };
            if round == 0 {
                caps = nows;
            }
            for (user, server_id, cid) in &found {
                let entry = tally.entry(user.clone()).or_default();
                match self.kick(server_id, *cid) {
                    Ok(()) => entry.0 += 1,
                    Err(why) => {
                        entry.1 += 1;
                        warn!("revocation: cannot close connection {cid} of {user} on server {server_id}: {why}");
                    }
                }
            }
            if !paged || found.is_empty() {
                break;
            }
            if round + 1 == ROUNDS_AT_MOST {
                self.metrics.revocation_failures.inc();
                warn!("revocation: connections still found after {ROUNDS_AT_MOST} searches; the rest are not closed");
            }
        }
        Some(tally)
    }

    /// Counts `closed` connections, and one failure when `failed` could not be closed; the end
    /// of the log line that says so (empty when all were).
    fn count(&self, closed: u64, failed: u64) -> String {
        self.metrics.connections_revoked.inc_by(closed);
        if failed == 0 {
            return String::new();
        }
        self.metrics.revocation_failures.inc();
        format!(", {failed} could not be closed")
    }

    /// Counts and logs a change whose connections could not be looked up.
    /// A pod's deletion is not lost for a lost connection: the pod cache no longer holds the
    /// pod, so a search of every connection once connected again finds its connections.
    fn failed(&self, revocation: &Revocation, why: &str) {
        self.metrics.revocation_failures.inc();
        let retried = match (&revocation.pod, &self.pods) {
            (Some(_), Some(pods)) if self.conn.is_none() => {
                pods.sweep_again(revocation.seen);
                "; a search of every connection follows once connected"
            }
            _ => "",
        };
        warn!(
            "revocation: cannot look up the connections of {} ({}): {why}{retried}",
            revocation.label(),
            revocation.reason.label()
        );
    }

    /// [`Revoker::find`], made once more on a new connection when the system connection was
    /// found lost meanwhile (a server restart not noticed yet): the change is not dropped for it.
    fn find_again_if_lost(
        &mut self,
        user: Option<&str>,
        seen: &dyn Fn(&str) -> Option<jiff::Timestamp>,
        caps: &Caps,
    ) -> Result<Search, String> {
        let had_connection = self.conn.is_some();
        match self.find(user, seen, caps) {
            Err(why) if had_connection && self.conn.is_none() => {
                self.ensure_connected();
                if self.conn.is_none() {
                    return Err(why);
                }
                self.find(user, seen, caps)
            }
            found => found,
        }
    }

    /// (user, server id, client id) of every connection whose user `seen` gives a change time
    /// for and that started before it, on every server that answers; `user` narrows the search
    /// to one user on the servers' side.
    fn find(
        &mut self,
        user: Option<&str>,
        seen: &dyn Fn(&str) -> Option<jiff::Timestamp>,
        caps: &Caps,
    ) -> Result<Search, String> {
        let ask = |offset: usize| {
            let mut q = serde_json::json!({"auth": true, "limit": PAGE, "offset": offset});
            if let Some(user) = user {
                q["user"] = serde_json::Value::from(user);
            }
            q.to_string()
        };
        let replies = self.gather("$SYS.REQ.SERVER.PING.CONNZ", ask(0).as_bytes())?;
        if replies.is_empty() {
            return Err("no server answered $SYS.REQ.SERVER.PING.CONNZ".into());
        }
        let mut search = Search::default();
        let mut pending: Vec<(String, usize)> = Vec::new();
        for reply in replies {
            if let Some((server_id, n, now)) = collect(&reply, seen, caps, &mut search.found)? {
                if let Some(now) = now {
                    search.nows.insert(server_id.clone(), now);
                }
                if n >= PAGE {
                    pending.push((server_id, PAGE));
                }
            }
        }
        // A server with a full page has more: ask it alone for the next ones.
        while let Some((server_id, offset)) = pending.pop() {
            search.paged = true;
            if offset >= PAGE * MAX_PAGES {
                return Err(format!(
                    "more than {} connections to search on server {server_id}",
                    PAGE * MAX_PAGES
                ));
            }
            if !valid_server_id(&server_id) {
                return Err(format!("not a server id: {server_id:?}"));
            }
            let reply = self.one(
                &format!("$SYS.REQ.SERVER.{server_id}.CONNZ"),
                ask(offset).as_bytes(),
            )?;
            if let Some((_, n, _)) = collect(&reply, seen, caps, &mut search.found)? {
                if n >= PAGE {
                    pending.push((server_id, offset + PAGE));
                }
            }
        }
        Ok(search)
    }

    /// Closes one connection.
    fn kick(&mut self, server_id: &str, cid: u64) -> Result<(), String> {
        if !valid_server_id(server_id) {
            return Err(format!("not a server id: {server_id:?}"));
        }
        let body = serde_json::json!({ "cid": cid }).to_string();
        let reply = self.one(
            &format!("$SYS.REQ.SERVER.{server_id}.KICK"),
            body.as_bytes(),
        )?;
        let answer: KickReply =
            serde_json::from_slice(&reply).map_err(|e| format!("unreadable answer: {e}"))?;
        match answer.error {
            // Gone meanwhile (it disconnected, or another replica closed it): nothing to do.
            Some(e) if e.to_string().contains("no such client") => Ok(()),
            Some(e) => Err(e.to_string()),
            None => Ok(()),
        }
    }

    /// Sends a request and returns its one answer.
    fn one(&mut self, subject: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        let mut replies = self.request(subject, body, ONE_REPLY, true)?;
        replies
            .pop()
            .ok_or_else(|| format!("no answer to {subject} within {ONE_REPLY:?}"))
    }

    /// Sends a request that every server answers and returns the answers that came.
    fn gather(&mut self, subject: &str, body: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        self.request(subject, body, GATHER_AT_MOST, false)
    }

    /// Publishes `body` on `subject` with a fresh reply subject and reads answers until
    /// `at_most` has passed, the first one came (`first_only`), or none came for
    /// [`GATHER_QUIET`] after one did.
    fn request(
        &mut self,
        subject: &str,
        body: &[u8],
        at_most: Duration,
        first_only: bool,
    ) -> Result<Vec<Vec<u8>>, String> {
        let Some(conn) = self.conn.as_mut() else {
            return Err("no connection as a system-account user (NATS_SYSTEM_URL)".into());
        };
        self.next_reply += 1;
        let reply = format!("{}.{}", self.inbox, self.next_reply);
        if let Err(e) = conn.publisher().request(subject, &reply, body) {
            self.conn = None;
            return Err(format!("cannot send {subject}: {e}"));
        }
        let started = Instant::now();
        let mut last = None::<Instant>;
        let mut answers = Vec::new();
        loop {
            let now = Instant::now();
            if now.duration_since(started) >= at_most
                || last.is_some_and(|t| now.duration_since(t) >= GATHER_QUIET)
            {
                return Ok(answers);
            }
            match conn.next_event() {
                // An earlier request's late answer (to its own reply subject) is dropped: a
                // KICK's error taken for a CONNZ refusal would lose a revocation, a CONNZ answer
                // taken for a KICK's would count a close that did not happen.
                Event::Message(m) if m.subject != reply => {}
                Event::Message(m) => {
                    answers.push(m.payload);
                    if first_only {
                        return Ok(answers);
                    }
                    last = Some(Instant::now());
                }
                Event::Idle => {}
                Event::Lost(why) => {
                    self.conn = None;
                    return Err(format!("the system connection was lost: {why}"));
                }
            }
        }
    }
}

/// The connections closed and those that could not be, over every user of a tally.
fn totals(tally: &HashMap<String, (u64, u64)>) -> (u64, u64) {
    tally
        .values()
        .fold((0, 0), |(c, f), (closed, failed)| (c + closed, f + failed))
}

/// Whether `id` can be a server id (a public nkey): it goes into a subject.
fn valid_server_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Adds the connections whose user `seen` gives a change time for and that started before it,
/// in one CONNZ answer, to `found`; returns the answering server and how many connections the page
/// held.
fn collect(
    reply: &[u8],
    seen: &dyn Fn(&str) -> Option<jiff::Timestamp>,
    caps: &Caps,
    found: &mut Vec<Found>,
) -> Result<Option<(String, usize, Option<jiff::Timestamp>)>, String> {
    let Ok(reply) = serde_json::from_slice::<ConnzReply>(reply) else {
        // Not a CONNZ answer (a late answer to a KICK): not this request's.
        return Ok(None);
    };
    if let Some(e) = reply.error {
        return Err(format!("CONNZ refused: {e}"));
    }
    let Some(data) = reply.data else {
        return Ok(None);
    };
    let connections = data.connections.unwrap_or_default();
    let n = connections.len();
    let cap = caps.get(&data.server_id).copied();
    for c in connections {
        // The server filters by user when asked to; an earlier request's late answer, or a
        // search of every connection, names others.
        let Some(changed) = seen(&c.authorized_user) else {
            continue;
        };
        // A connection that started after the change was decided on the current state. The
        // start is nats-server's clock, the change this host's: within CLOCK_MARGIN after it
        // still counts as before (a needless reconnect beats a stale grant kept because this
        // clock runs behind), and so does a start that cannot be read.
        // A search made again after a paged one (`cap`: the server's clock at the first) leaves
        // alone the connections that started since: clients that reconnected after its KICKs.
        let before = c.start.parse::<jiff::Timestamp>().map_or(true, |start| {
            changed
                .checked_add(CLOCK_MARGIN)
                .map_or(true, |limit| start < limit)
                && cap.is_none_or(|cap| start < cap)
        });
        if before {
            found.push((c.authorized_user, data.server_id.clone(), c.cid));
        }
    }
    let now = data.now.parse().ok();
    Ok(Some((data.server_id, n, now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_name_names_its_account_with_or_without_a_pod() {
        let plain = user_name("team-a", "app", None);
        let pod = user_name("team-a", "app", Some(("app-1", "p-1")));
        assert_eq!(plain, "system:serviceaccount:team-a:app");
        assert_eq!(pod, "system:serviceaccount:team-a:app:pod:app-1:p-1");
        assert_eq!(account_user(&pod), plain);
        assert_eq!(account_of(&pod), Some(("team-a", "app")));
        assert_eq!(account_of(&plain), Some(("team-a", "app")));
        assert_eq!(account_of("bob"), None);
        assert_eq!(account_of("system:serviceaccount:a:b:c"), None);
        let r = Revocation::pod("team-a", "app", "app-1", "p-1");
        assert_eq!((r.user(), r.reason), (pod, RevokeReason::PodDeleted));
        assert_eq!(r.label(), "pod team-a/app-1 of app");
    }

    #[test]
    fn a_namespace_or_service_account_named_pod_is_not_taken_for_the_pod_part() {
        // Both are valid names: the first `:pod:` of the user name is then theirs.
        for (namespace, name) in [("pod", "app"), ("team-a", "pod"), ("pod", "pod")] {
            let plain = user_name(namespace, name, None);
            for pod in ["pod", "app-1"] {
                let by_pod = user_name(namespace, name, Some((pod, "p-1")));
                assert_eq!(account_user(&by_pod), plain, "{by_pod}");
                assert_eq!(account_of(&by_pod), Some((namespace, name)), "{by_pod}");
            }
            assert_eq!(account_user(&plain), plain);
            assert_eq!(account_of(&plain), Some((namespace, name)), "{plain}");
        }
    }

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn a_connz_answer_yields_the_changed_users_connections_that_started_before_the_change() {
        let seen = HashMap::from([
            (
                "system:serviceaccount:a:x".to_owned(),
                at("2026-12-05T10:00:00Z"),
            ),
            (
                "system:serviceaccount:a:y".to_owned(),
                at("2026-12-05T10:00:00Z"),
            ),
        ]);
        let reply = serde_json::json!({
            "server": {"id": "NSERVER"},
            "data": {"server_id": "NSERVER", "connections": [
                {"cid": 1, "authorized_user": "system:serviceaccount:a:x", "start": "2026-12-05T09:59:59.9Z"},
                // After the change, beyond the clock margin: decided on the current state.
                {"cid": 2, "authorized_user": "system:serviceaccount:a:x", "start": "2026-12-05T10:00:02.1Z"},
                // Within the margin: this host's clock may run behind the server's.
                {"cid": 7, "authorized_user": "system:serviceaccount:a:x", "start": "2026-12-05T10:00:01.5Z"},
                // Another offset: 09:59 UTC.
                {"cid": 3, "authorized_user": "system:serviceaccount:a:y", "start": "2026-12-05T10:59:00+01:00"},
                // Unchanged account, and one the service never named.
                {"cid": 4, "authorized_user": "system:serviceaccount:a:z", "start": "2026-12-05T09:00:00Z"},
                {"cid": 5, "authorized_user": "", "start": "2026-12-05T09:00:00Z"},
                // A start that does not parse: closed.
                {"cid": 6, "authorized_user": "system:serviceaccount:a:y", "start": "yesterday"}
            ]}
        })
        .to_string();
        let mut found = Vec::new();
        let seen = |u: &str| seen.get(u).copied();
        let page = collect(reply.as_bytes(), &seen, &HashMap::new(), &mut found).unwrap();
        assert_eq!(page, Some(("NSERVER".to_owned(), 7, None)));
        let cids: Vec<u64> = found.iter().map(|(_, _, cid)| *cid).collect();
        assert_eq!(cids, vec![1, 7, 3, 6]);
        assert!(found.iter().all(|(_, server, _)| server == "NSERVER"));

        // Not a CONNZ answer (a late KICK answer), and a refusal.
        let mut none = Vec::new();
        assert_eq!(
            collect(br#"{"server":{}}"#, &seen, &HashMap::new(), &mut none).unwrap(),
            None
        );
        assert_eq!(
            collect(b"not json", &seen, &HashMap::new(), &mut none).unwrap(),
            None
        );
        assert!(none.is_empty());
        let refused = collect(
            br#"{"error":{"code":403}}"#,
            &seen,
            &HashMap::new(),
            &mut none,
        )
        .unwrap_err();
        assert!(refused.contains("CONNZ refused"), "{refused}");
    }

    #[test]
    fn only_a_server_id_can_go_into_a_subject() {
        assert!(valid_server_id(
            "NCLY5JQYBRSFKK3JD3GDNHGC4CJOAKL5J7DSWNDDN3K6UAFVHWO5D6ZV"
        ));
        for bad in ["", "a.b", "a *", ">", "x".repeat(65).as_str()] {
            assert!(!valid_server_id(bad), "{bad:?}");
        }
    }

    /// A fake nats-server answering CONNZ (after sending `stale` to an earlier reply subject of
    /// the inbox) and KICK; the kicked client ids go to the returned channel.
    fn fake_cluster(stale: &'static str, connz: String) -> (u16, crossbeam_channel::Receiver<u64>) {
        fake_cluster_dropping(0, stale, connz)
    }

    /// [`fake_cluster`] whose first `dropped` connections are closed at their first CONNZ.
    fn fake_cluster_dropping(
        dropped: usize,
        stale: &'static str,
        connz: String,
    ) -> (u16, crossbeam_channel::Receiver<u64>) {
        fake_cluster_answering(dropped, stale, vec![connz])
    }

    /// [`fake_cluster_dropping`] answering its n-th CONNZ (from 0, on any connection) with
    /// `answers[n]`, the last one from then on.
    fn fake_cluster_answering(
        dropped: usize,
        stale: &'static str,
        answers: Vec<String>,
    ) -> (u16, crossbeam_channel::Receiver<u64>) {
        use std::io::{BufRead, BufReader, Write};
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for (i, s) in l.incoming().enumerate() {
                let s = s.unwrap();
                let mut w = s.try_clone().unwrap();
                w.write_all(b"INFO {\"max_payload\":1048576}\r\n").unwrap();
                let mut lines = BufReader::new(s).lines();
                let mut inbox = String::new();
                while let Some(Ok(line)) = lines.next() {
                    let words: Vec<&str> = line.split(' ').collect();
                    let send = |w: &mut std::net::TcpStream, subject: &str, body: &str| {
                        let _ = write!(w, "MSG {subject} 1 {}\r\n{body}\r\n", body.len());
                    };
                    match words.as_slice() {
                        ["PING"] => {
                            let _ = w.write_all(b"PONG\r\n");
                        }
                        ["SUB", subject, _] => inbox = subject.trim_end_matches(".*").to_owned(),
                        ["PUB", subject, reply, _] => {
                            let body = lines.next().unwrap().unwrap();
                            if subject.ends_with(".CONNZ") && i < dropped {
                                let _ = w.shutdown(std::net::Shutdown::Both);
                                break;
                            } else if subject.ends_with(".CONNZ") {
                                let n = asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                let connz = &answers[n.min(answers.len() - 1)];
                                send(&mut w, &format!("{inbox}.0"), stale);
                                send(&mut w, reply, connz);
                            } else if subject.ends_with(".KICK") {
                                let cid: serde_json::Value = serde_json::from_str(&body).unwrap();
                                let cid = cid["cid"].as_u64().unwrap();
                                if cid == 0 {
                                    send(
                                        &mut w,
                                        reply,
                                        r#"{"error":{"code":400,"description":"no such client"}}"#,
                                    );
                                } else {
                                    let _ = tx.send(cid);
                                    send(&mut w, reply, r#"{"server":{"id":"NS1"}}"#);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        });
        (port, rx)
    }

    fn connected_revoker(port: u16) -> Revoker {
        let dialer = Dialer::new(
            &format!("nats://127.0.0.1:{port}"),
            crate::callout::connection::Login::None,
            Default::default(),
            "test",
        )
        .unwrap();
        let mut r = Revoker::new(dialer, Arc::new(Metrics::default()));
        let mut conn = r.dialer.connect().unwrap();
        conn.subscribe(&format!("{}.*", r.inbox)).unwrap();
        r.conn = Some(conn);
        r
    }

    #[test]
    fn a_late_answer_to_an_earlier_request_does_not_spoil_the_next_search() {
        // An earlier KICK answered after its wait (a slow server): its error must not be taken
        // for a refusal of the CONNZ search that follows, which would drop the revocation.
        let connz = serde_json::json!({"data": {"server_id": "NS1", "connections": [
            {"cid": 5, "authorized_user": "system:serviceaccount:a:x", "start": "2020-01-01T00:00:00Z"}
        ]}})
        .to_string();
        let stale =
            r#"{"server":{"id":"NS1"},"error":{"code":400,"description":"no such client"}}"#;
        let (port, kicked) = fake_cluster(stale, connz);
        let mut r = connected_revoker(port);
        r.revoke_all(vec![Revocation::now("a", "x", RevokeReason::Deleted)]);
        assert_eq!(kicked.try_iter().collect::<Vec<_>>(), vec![5]);
        assert_eq!(r.metrics.revocation_failures.get(), 0);
    }

    #[test]
    fn a_search_cut_by_a_lost_connection_is_made_again_on_a_new_one() {
        // The system connection died unnoticed (its server restarted): the change that found it
        // dead is searched again once reconnected rather than dropped.
        let connz = serde_json::json!({"data": {"server_id": "NS1", "connections": [
            {"cid": 5, "authorized_user": "system:serviceaccount:a:x", "start": "2020-01-01T00:00:00Z"}
        ]}})
        .to_string();
        let (port, kicked) = fake_cluster_dropping(1, "{}", connz);
        let mut r = connected_revoker(port);
        r.revoke_all(vec![Revocation::now("a", "x", RevokeReason::Deleted)]);
        assert_eq!(kicked.try_iter().collect::<Vec<_>>(), vec![5]);
        assert_eq!(r.metrics.revocation_failures.get(), 0);
    }

    #[test]
    fn a_widening_undone_before_the_revoker_looked_still_closes_what_it_granted() {
        // Generation 1 gives a/x nothing beyond its namespace, 2 (a mistake) shared.>, 3 undoes
        // it. Both replacements queued while the revoker was busy: 1 against 3 changes nothing,
        // but a connection granted under 2 holds shared.> and must go.
        use crate::policy::{AdminPolicy, LoadedPolicy};
        let loaded = |generation: u64, yaml: &str| {
            Arc::new(LoadedPolicy {
                policy: AdminPolicy::parse(yaml).unwrap(),
                generation,
            })
        };
        let narrow = "annotations:\n  publish: []\n";
        let (p1, p2, p3) = (
            loaded(1, narrow),
            loaded(2, "annotations:\n  publish: [\"shared.>\"]\n"),
            loaded(3, narrow),
        );
        let cache = Arc::new(ServiceAccountCache::new(Arc::new(Metrics::default())));
        cache.replace_all(vec![crate::kube::object::ServiceAccount::for_test(
            "a", "x", "u",
        )
        .with_annotation("nats.io/allowed-pub-subjects", "shared.x")]);
        let connz = serde_json::json!({"data": {"server_id": "NS1", "connections": [
            {"cid": 5, "authorized_user": "system:serviceaccount:a:x", "start": "2020-01-01T00:00:00Z"}
        ]}})
        .to_string();
        let (port, kicked) = fake_cluster("{}", connz);
        let (tx, changes) = crossbeam_channel::unbounded();
        let mut r = connected_revoker(port).with_policy_changes(changes, cache, InboxMode::Shared);
        let seen = jiff::Timestamp::now();
        tx.send(PolicyChange {
            old: p1,
            new: p2.clone(),
            seen,
        })
        .unwrap();
        tx.send(PolicyChange {
            old: p2,
            new: p3,
            seen,
        })
        .unwrap();
        r.revoke_queued_policy_changes();
        assert_eq!(kicked.try_iter().collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn a_sweep_closes_the_connections_of_the_pods_the_cache_no_longer_holds() {
        // What the pod cache asks for when its queue was full or at its first list: every
        // connection is searched, and those of pods it does not hold (or holds as another pod,
        // or as deleted past the grace) go; live pods' and plain users' stay.
        use crate::kube::pods::Pod;
        use crate::kube::watch::Collection;
        const LIVE: &str = "0b6c1c7e-4a39-4d5e-9b7a-2f4c8e1d3a01";
        const OTHER: &str = "0b6c1c7e-4a39-4d5e-9b7a-2f4c8e1d3a02";
        let pods = Arc::new(PodCache::new());
        let pod = |namespace: &str, name: &str, sa: &str, deletion| Pod {
            namespace: namespace.into(),
            name: name.into(),
            uid: crate::kube::Uid::new(LIVE),
            service_account: sa.into(),
            deletion,
        };
        let mut listed = PodCache::new_builder();
        PodCache::add(
            &mut listed,
            vec![
                pod("a", "live", "x", None),
                pod("a", "replaced", "x", None),
                pod("a", "stuck", "x", Some(1_000)),
                pod("pod", "pod", "pod", None),
            ],
            None,
        );
        let (tx, _rx) = crossbeam_channel::bounded(1);
        pods.report_changes_to(tx);
        pods.replace(listed);
        let user = |ns, sa, p, uid| user_name(ns, sa, Some((p, uid)));
        let connz = serde_json::json!({"data": {"server_id": "NS1", "connections": [
            {"cid": 1, "authorized_user": user("a", "x", "live", LIVE), "start": "2020-01-01T00:00:00Z"},
            {"cid": 2, "authorized_user": user("a", "x", "gone", LIVE), "start": "2020-01-01T00:00:00Z"},
            {"cid": 3, "authorized_user": user("a", "x", "replaced", OTHER), "start": "2020-01-01T00:00:00Z"},
            {"cid": 4, "authorized_user": user("a", "x", "stuck", LIVE), "start": "2020-01-01T00:00:00Z"},
            {"cid": 5, "authorized_user": user("pod", "pod", "pod", LIVE), "start": "2020-01-01T00:00:00Z"},
            {"cid": 6, "authorized_user": user_name("a", "x", None), "start": "2020-01-01T00:00:00Z"},
            {"cid": 7, "authorized_user": "bob", "start": "2020-01-01T00:00:00Z"}
        ]}})
        .to_string();
        let (port, kicked) = fake_cluster("{}", connz);
        let mut r = connected_revoker(port).with_pod_users(pods.clone());
        r.sweep_pods();
        let mut closed: Vec<u64> = kicked.try_iter().collect();
        closed.sort();
        assert_eq!(closed, vec![2, 3, 4]);
        assert_eq!(r.metrics.revocation_failures.get(), 0);
        // Asked once: the next turn of the loop searches nothing.
        r.sweep_pods();
        assert!(kicked.try_iter().next().is_none());
    }

    #[test]
    fn a_pod_grant_in_flight_when_the_deletion_was_seen_is_closed_by_a_second_search() {
        // The pod check passed just before the deletion reached the cache; nats-server names the
        // connection by its user only once the answer arrives, after the first search: a stolen
        // token connecting again and again would keep one such connection past the deletion.
        let user = user_name("a", "x", Some(("p-1", "u-1")));
        let empty = serde_json::json!({"data": {"server_id": "NS1", "connections": []}});
        let registered = serde_json::json!({"data": {"server_id": "NS1", "connections": [
            {"cid": 9, "authorized_user": user, "start": "2020-01-01T00:00:00Z"}
        ]}});
        let (port, kicked) =
            fake_cluster_answering(0, "{}", vec![empty.to_string(), registered.to_string()]);
        let mut r = connected_revoker(port);
        r.in_flight = Duration::ZERO;
        r.revoke_all(vec![Revocation::pod("a", "x", "p-1", "u-1")]);
        assert!(kicked.try_iter().next().is_none(), "not registered yet");
        r.revoke_again_when_due();
        assert_eq!(kicked.try_iter().collect::<Vec<_>>(), vec![9]);
        assert!(r.again.is_empty());
        let counted = r
            .metrics
            .revocations
            .get_or_create(&RevocationLabels {
                reason: RevokeReason::PodDeleted.label(),
            })
            .get();
        assert_eq!(counted, 1, "one deletion, searched twice");
        // A ServiceAccount's change is not searched again.
        r.revoke_all(vec![Revocation::now("a", "x", RevokeReason::Deleted)]);
        assert!(r.again.is_empty());
    }

    #[test]
    fn a_pod_deletion_that_cannot_be_searched_for_is_left_to_a_sweep() {
        // No system connection (nats-server restarting, say): a pod's deletion used to be counted
        // as failed and forgotten, its connections on the other servers kept.
        let pods = Arc::new(PodCache::new());
        let dialer = Dialer::new(
            "nats://127.0.0.1:1",
            crate::callout::connection::Login::None,
            Default::default(),
            "test",
        )
        .unwrap();
        let mut r = Revoker::new(dialer, Arc::new(Metrics::default())).with_pod_users(pods.clone());
        let deletion = Revocation::pod("a", "x", "p-1", "u-1");
        let seen = deletion.seen;
        r.revoke_all(vec![deletion]);
        assert_eq!(r.metrics.revocation_failures.get(), 1);
        assert_eq!(pods.take_sweep(), Some(seen));
        // A ServiceAccount's change has no such fallback.
        r.revoke_all(vec![Revocation::now("a", "x", RevokeReason::Deleted)]);
        assert_eq!(pods.take_sweep(), None);
    }

    #[test]
    fn a_policy_rewritten_to_the_same_grants_closes_nothing() {
        use crate::policy::{AdminPolicy, LoadedPolicy};
        let loaded = |generation: u64, yaml: &str| {
            Arc::new(LoadedPolicy {
                policy: AdminPolicy::parse(yaml).unwrap(),
                generation,
            })
        };
        // The same rules, reordered patterns and a comment: every grant stays.
        let p1 = loaded(1, "annotations:\n  publish: [\"shared.>\", \"other.>\"]\n");
        let p2 = loaded(
            2,
            "# reviewed\nannotations:\n  publish: [\"other.>\", \"shared.>\"]\n",
        );
        let cache = Arc::new(ServiceAccountCache::new(Arc::new(Metrics::default())));
        cache.replace_all(vec![crate::kube::object::ServiceAccount::for_test(
            "a", "x", "u",
        )
        .with_annotation("nats.io/allowed-pub-subjects", "shared.x")]);
        let connz = serde_json::json!({"data": {"server_id": "NS1", "connections": [
            {"cid": 5, "authorized_user": "system:serviceaccount:a:x", "start": "2020-01-01T00:00:00Z"},
            // Not in the cache (granted by a replica that fetched it): left alone.
            {"cid": 6, "authorized_user": "system:serviceaccount:a:unknown", "start": "2020-01-01T00:00:00Z"}
        ]}})
        .to_string();
        let (port, kicked) = fake_cluster("{}", connz);
        let (tx, changes) = crossbeam_channel::unbounded();
        let mut r = connected_revoker(port).with_policy_changes(changes, cache, InboxMode::Shared);
        tx.send(PolicyChange {
            old: p1,
            new: p2,
            seen: jiff::Timestamp::now(),
        })
        .unwrap();
        r.revoke_queued_policy_changes();
        assert!(kicked.try_iter().next().is_none());
        assert_eq!(r.metrics.revocation_failures.get(), 0);
    }
}
