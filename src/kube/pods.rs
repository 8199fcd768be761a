//! The pod binding check (`POD_BINDING=watch`): the pods of the cluster, kept current by the
//! same list + watch as the ServiceAccounts, so that a token bound to a pod that is gone is
//! refused and the connections granted to it are closed when the pod goes.
//!
//! Only what the check needs is kept of a pod: its name, uid, ServiceAccount (one allocation per
//! distinct name) and when its deletion began, whatever the object holds. The whole object is read from
//! the API rather than its metadata only, because the pod's ServiceAccount (`spec`) is part of
//! the NATS user name its connections are found by when it is deleted.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use log::warn;
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;

use super::cache::Change;
use super::watch::Collection;
use super::{is_valid_namespace, is_valid_object_name, Uid};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::revoke::Revocation;

/// How long after its `deletionTimestamp` a pod's tokens are still accepted: the API server's own
/// grace for tokens of a pod being deleted.
pub const DELETION_GRACE_SECS: i64 = 60;

/// A pod as kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Its namespace.
    pub namespace: Box<str>,
    /// Its name.
    pub name: Box<str>,
    /// Its uid.
    pub uid: Uid,
    /// `spec.serviceAccountName`.
    pub service_account: Box<str>,
    /// `metadata.deletionTimestamp` (unix seconds): when its graceful deletion ends.
    pub deletion: Option<i64>,
}

/// What the pod cache says of a token's pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodCheck {
    /// The pod exists with the token's uid and ServiceAccount.
    Live,
    /// No pod of that name in the namespace.
    NotFound,
    /// A pod of that name exists but is another one (deleted and created again).
    UidMismatch,
    /// The pod runs as another ServiceAccount than the token's.
    ServiceAccountMismatch,
    /// The pod's deletion began more than [`DELETION_GRACE_SECS`] ago.
    Deleted,
    /// No complete list of pods yet.
    NotSynced,
}

/// A pod as read from the API: only the fields kept.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawPod {
    #[serde(default)]
    metadata: RawPodMeta,
    #[serde(default)]
    spec: Option<RawPodSpec>,
}

#[derive(Debug, Default, Deserialize)]
struct RawPodMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(default, rename = "deletionTimestamp")]
    deletion_timestamp: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawPodSpec {
    #[serde(default, rename = "serviceAccountName")]
    service_account_name: Option<String>,
}

impl RawPod {
    /// The pod as kept, or why it cannot be.
    fn into_pod(self) -> Result<Pod, &'static str> {
        let meta = self.metadata;
        let name = meta
            .name
            .filter(|n| is_valid_object_name(n))
            .ok_or("metadata.name is missing or not a valid name")?;
        let namespace = meta
            .namespace
            .filter(|n| is_valid_namespace(n))
            .ok_or("metadata.namespace is missing or not a valid name")?;
        let uid = meta
            .uid
            .filter(|u| !u.is_empty())
            .ok_or("metadata.uid is missing")?;
        // A pod without one runs as `default`, which the API server fills in on creation.
        let service_account = self
            .spec
            .and_then(|s| s.service_account_name)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let deletion = match meta.deletion_timestamp {
            None => None,
            Some(text) => Some(
                text.parse::<jiff::Timestamp>()
                    .map_err(|_| "metadata.deletionTimestamp is not a timestamp")?
                    .as_second(),
            ),
        };
        Ok(Pod {
            namespace: namespace.into(),
            name: name.into(),
            uid: Uid::new(&uid),
            service_account: service_account.into(),
            deletion,
        })
    }
}

/// A pod as held: its namespace and name are the keys it is found by.
#[derive(Debug)]
struct Held {
    uid: Uid,
    /// Shared by every pod of the cache that runs as an account of that name.
    service_account: Arc<str>,
    deletion: Option<i64>,
}

/// Pods by namespace and name, each string held once.
#[derive(Debug, Default)]
struct Store {
    by_namespace: HashMap<Box<str>, HashMap<Box<str>, Held>>,
    len: usize,
    /// The ServiceAccount names the pods run as, each allocated once.
    accounts: HashSet<Arc<str>>,
}

impl Store {
    fn get(&self, namespace: &str, name: &str) -> Option<&Held> {
        self.by_namespace.get(namespace)?.get(name)
    }

    /// Stores `pod`; returns the pod it replaced under that name, if any.
    fn insert(&mut self, pod: Pod) -> Option<Pod> {
        let service_account = match self.accounts.get(&*pod.service_account) {
            Some(held) => held.clone(),
            None => {
                let name: Arc<str> = pod.service_account.into();
                self.accounts.insert(name.clone());
                name
            }
        };
        let held = Held {
            uid: pod.uid,
            service_account,
            deletion: pod.deletion,
        };
        let names = self.by_namespace.entry(pod.namespace.clone()).or_default();
        match names.insert(pod.name.clone(), held) {
            None => {
                self.len += 1;
                None
            }
            Some(old) => Some(old.into_pod(pod.namespace, pod.name)),
        }
    }

    /// Removes `namespace/name` if it is the pod of `uid`.
    fn remove_if(&mut self, namespace: &str, name: &str, uid: &Uid) -> Option<Pod> {
        let names = self.by_namespace.get_mut(namespace)?;
        if names.get(name).is_none_or(|held| held.uid != *uid) {
            return None;
        }
        let (name, held) = names.remove_entry(name)?;
        if names.is_empty() {
            self.by_namespace.remove(namespace);
        }
        self.len -= 1;
        Some(held.into_pod(namespace.into(), name))
    }

    /// Every pod, taken out.
    fn into_pods(self) -> impl Iterator<Item = Pod> {
        self.by_namespace
            .into_iter()
            .flat_map(|(namespace, names)| {
                names
                    .into_iter()
                    .map(move |(name, held)| held.into_pod(namespace.clone(), name))
            })
    }
}

impl Held {
    /// Whether its deletion's grace ended before unix time `now`.
    fn deleted_by(&self, now: i64) -> bool {
        self.deletion
            .is_some_and(|at| at.saturating_add(DELETION_GRACE_SECS) < now)
    }

    fn into_pod(self, namespace: Box<str>, name: Box<str>) -> Pod {
        Pod {
            namespace,
            name,
            uid: self.uid,
            service_account: self.service_account.as_ref().into(),
            deletion: self.deletion,
        }
    }
}

/// A pod's namespace and name.
type PodKey = (Box<str>, Box<str>);

/// A complete list of pods under construction.
#[derive(Debug, Default)]
pub struct PodsBuilder {
    store: Store,
}

/// The pods of the cluster, by namespace and name.
#[derive(Default)]
pub struct PodCache {
    inner: RwLock<Store>,
    synced: AtomicBool,
    /// Where deletions that must close live connections go, when revocation is on.
    revocations: OnceLock<crossbeam_channel::Sender<Revocation>>,
    /// When the connections of every pod the cache no longer holds must be looked for: a
    /// deletion the full queue could not take, or the first list (deletions no replica watched).
    sweep: Mutex<Option<jiff::Timestamp>>,
    /// Pods whose deletion began, when revocation is on: uid and the unix time their grace
    /// ends, after which their connections go if the pod is still there (stuck terminating).
    terminating: Mutex<HashMap<PodKey, (Uid, i64)>>,
}

impl std::fmt::Debug for PodCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCache")
            .field("len", &self.len())
            .field("synced", &self.is_synced())
            .finish()
    }
}

impl PodCache {
    /// An empty, not yet synced cache.
    pub fn new() -> PodCache {
        PodCache::default()
    }

    /// From now on, reports every pod that is gone (deleted, or replaced by another of the same
    /// name) to `revocations`; what a full queue cannot take, and the pods deleted before the
    /// first list, are left to a search of every connection ([`PodCache::take_sweep`]).
    pub fn report_changes_to(&self, revocations: crossbeam_channel::Sender<Revocation>) {
        let _ = self.revocations.set(revocations);
    }

    /// Number of pods held.
    pub fn len(&self) -> usize {
        self.inner.read().len
    }

    /// Whether no pod is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a complete list has been loaded at least once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Checks the pod a token is bound to: `namespace/name` with `uid`, running as
    /// `service_account`, not deleted for longer than the grace at unix time `now`.
    pub fn check(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        service_account: &str,
        now: i64,
    ) -> PodCheck {
        if !self.is_synced() {
            return PodCheck::NotSynced;
        }
        let inner = self.inner.read();
        let Some(pod) = inner.get(namespace, name) else {
            return PodCheck::NotFound;
        };
        if !pod.uid.is(uid) {
            PodCheck::UidMismatch
        } else if *pod.service_account != *service_account {
            PodCheck::ServiceAccountMismatch
        } else if pod.deleted_by(now) {
            PodCheck::Deleted
        } else {
            PodCheck::Live
        }
    }

    /// Asks the revoker for a search of every connection, closing those of pods the cache no
    /// longer holds (see [`PodCache::take_sweep`]); the earliest request stands.
    fn request_sweep(&self) {
        self.sweep.lock().get_or_insert_with(jiff::Timestamp::now);
    }

    /// The pending request for a search of every connection, if any (taken: a failed search
    /// asks again with [`PodCache::sweep_again`]): connections of pods the cache no longer holds,
    /// or holds as deleted, that started before it go. Nothing of them was queued (the queue
    /// was full), or no replica watched when they went (before this one's first list).
    pub fn take_sweep(&self) -> Option<jiff::Timestamp> {
        self.sweep.lock().take()
    }

    /// Puts back a sweep that could not be made.
    pub fn sweep_again(&self, requested: jiff::Timestamp) {
        let mut sweep = self.sweep.lock();
        *sweep = Some(sweep.map_or(requested, |later| later.min(requested)));
    }

    /// Whether the connection of a token bound to pod `namespace/name` (`uid`, running as
    /// `service_account`) must go at unix time `now`: the cache holds no such pod, or holds it
    /// as deleted. Never before the first list.
    pub fn is_gone(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        service_account: &str,
        now: i64,
    ) -> bool {
        !matches!(
            self.check(namespace, name, uid, service_account, now),
            PodCheck::Live | PodCheck::NotSynced
        )
    }

    /// Remembers the pods of `pods` (namespace, name, uid, deletion) whose deletion began, when
    /// revocation is on.
    fn note_terminating<'a>(
        &self,
        pods: impl Iterator<Item = (&'a str, &'a str, &'a Uid, Option<i64>)>,
    ) {
        if self.revocations.get().is_none() {
            return;
        }
        let mut terminating = self.terminating.lock();
        for (namespace, name, uid, deletion) in pods {
            if let Some(at) = deletion {
                terminating.insert(
                    (namespace.into(), name.into()),
                    (uid.clone(), at.saturating_add(DELETION_GRACE_SECS)),
                );
            }
        }
    }

    /// The revocations of the pods still held at unix time `now` though their deletion's grace
    /// ended: a pod stuck terminating (a finalizer, a node that stopped answering) is no longer
    /// accepted, and its connections must not stay either. Each is given once.
    pub fn overdue(&self, now: i64) -> Vec<Revocation> {
        let due: Vec<(PodKey, Uid)> = {
            let mut terminating = self.terminating.lock();
            if terminating.values().all(|(_, ends)| *ends >= now) {
                return Vec::new();
            }
            let due = terminating
                .iter()
                .filter(|(_, (_, ends))| *ends < now)
                .map(|(key, (uid, _))| (key.clone(), uid.clone()))
                .collect::<Vec<_>>();
            for (key, _) in &due {
                terminating.remove(key);
            }
            due
        };
        let inner = self.inner.read();
        due.into_iter()
            .filter_map(|((namespace, name), uid)| {
                let pod = inner.get(&namespace, &name)?;
                (pod.uid == uid && pod.deleted_by(now)).then(|| {
                    Revocation::pod(
                        &namespace,
                        &pod.service_account,
                        &name,
                        &pod.uid.to_string(),
                    )
                })
            })
            .collect()
    }

    /// Queues the revocation of `pod`'s connections.
    fn report(&self, gone: impl IntoIterator<Item = Pod>) {
        let Some(tx) = self.revocations.get() else {
            return;
        };
        for pod in gone {
            let revocation = Revocation::pod(
                &pod.namespace,
                &pod.service_account,
                &pod.name,
                &pod.uid.to_string(),
            );
            if tx.try_send(revocation).is_err() {
                // Dropped, the deletion would be forgotten: a burst of deletions (a namespace,
                // a node drain, an editor's own pods deleted at once) would keep other pods'
                // connections open. The search of every connection finds them all.
                let first = self.sweep.lock().is_none();
                self.request_sweep();
                if first {
                    warn!(
                        "revocation queue full: the live connections of pod {}/{} and of the pods deleted after it are closed by a search of every connection once the queue drains",
                        pod.namespace, pod.name
                    );
                }
            }
        }
    }
}

impl Collection for PodCache {
    type Object = Pod;
    type Builder = PodsBuilder;
    type Raw = RawPod;
    const PATH: &'static str = "/api/v1/pods";
    const KIND: &'static str = "Pod";
    const METADATA_ONLY: bool = false;

    fn raw_resource_version(raw: &RawPod) -> Option<&str> {
        raw.metadata.resource_version.as_deref()
    }
    fn decode(raw: RawPod) -> Result<Pod, &'static str> {
        raw.into_pod()
    }
    fn new_builder() -> PodsBuilder {
        PodsBuilder::default()
    }
    fn add(builder: &mut PodsBuilder, items: Vec<Pod>, _previous: Option<&Self>) {
        for pod in items {
            builder.store.insert(pod);
        }
    }
    fn builder_len(builder: &PodsBuilder) -> usize {
        builder.store.len
    }
    fn replace(&self, builder: PodsBuilder) {
        let old = std::mem::replace(&mut *self.inner.write(), builder.store);
        let first = !self.synced.swap(true, Ordering::SeqCst);
        if first && self.revocations.get().is_some() {
            // Pods deleted while no replica watched (this one restarting alone, say) left
            // connections that no event will name.
            self.request_sweep();
        }
        if self.revocations.get().is_some() {
            // Pods the new list no longer has (or has as another pod): missed deletions.
            let inner = self.inner.read();
            self.note_terminating(inner.by_namespace.iter().flat_map(|(namespace, names)| {
                names
                    .iter()
                    .map(|(name, held)| (&**namespace, &**name, &held.uid, held.deletion))
            }));
            let gone: Vec<Pod> = old
                .into_pods()
                .filter(|pod| {
                    inner
                        .get(&pod.namespace, &pod.name)
                        .is_none_or(|now| now.uid != pod.uid)
                })
                .collect();
            drop(inner);
            self.report(gone);
        }
    }
    fn apply(&self, change: Change<Pod>) {
        let gone = {
            let mut inner = self.inner.write();
            match change {
                Change::Upsert(pod) => {
                    self.note_terminating(std::iter::once((
                        &*pod.namespace,
                        &*pod.name,
                        &pod.uid,
                        pod.deletion,
                    )));
                    let uid = pod.uid.clone();
                    // The same name, another uid: the old pod is gone.
                    inner.insert(pod).filter(|old| old.uid != uid)
                }
                // Only that same pod goes: a delete of an older one leaves a newer alone.
                Change::Delete(pod) => inner.remove_if(&pod.namespace, &pod.name, &pod.uid),
            }
        };
        self.report(gone);
    }
    fn followed(&self, metrics: &Metrics) {
        metrics
            .pods
            .set(i64::try_from(self.len()).unwrap_or(i64::MAX));
        metrics.pod_cache_current.set(crate::unix_now());
    }
    fn listed(&self, metrics: &Metrics, readiness: &Readiness) {
        metrics
            .pods
            .set(i64::try_from(self.len()).unwrap_or(i64::MAX));
        readiness.set_pods_synced(true);
    }
    fn watch_restarted(&self, _metrics: &Metrics) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revoke::RevokeReason;

    const UID_A: &str = "0b6c1c7e-4a39-4d5e-9b7a-2f4c8e1d3a01";
    const UID_B: &str = "0b6c1c7e-4a39-4d5e-9b7a-2f4c8e1d3a02";

    fn pod(name: &str, uid: &str) -> Pod {
        Pod {
            namespace: "team-a".into(),
            name: name.into(),
            uid: Uid::new(uid),
            service_account: "app".into(),
            deletion: None,
        }
    }

    fn listed(pods: Vec<Pod>) -> PodCache {
        let cache = PodCache::new();
        let mut builder = PodCache::new_builder();
        PodCache::add(&mut builder, pods, None);
        cache.replace(builder);
        cache
    }

    fn reporting(cache: &PodCache) -> crossbeam_channel::Receiver<Revocation> {
        let (tx, rx) = crossbeam_channel::bounded(16);
        cache.report_changes_to(tx);
        rx
    }

    #[test]
    fn a_pod_is_read_from_the_whole_object_keeping_only_what_the_check_needs() {
        let raw: RawPod = serde_json::from_str(&format!(
            r#"{{"kind":"Pod","metadata":{{"name":"app-1","namespace":"team-a","uid":"{UID_A}",
            "resourceVersion":"7","labels":{{"a":"b"}},"deletionTimestamp":"2026-12-05T10:00:00Z"}},
            "spec":{{"serviceAccountName":"app","containers":[{{"name":"c","env":[{{"name":"K","value":"secret"}}]}}]}},
            "status":{{"phase":"Running"}}}}"#
        ))
        .unwrap();
        assert_eq!(PodCache::raw_resource_version(&raw), Some("7"));
        let pod = PodCache::decode(raw).unwrap();
        assert_eq!(&*pod.service_account, "app");
        assert_eq!(pod.deletion, Some(1_796_464_800));
        assert!(pod.uid.is(UID_A));
    }

    #[test]
    fn a_pod_without_a_service_account_runs_as_default_and_one_without_uid_is_skipped() {
        let raw: RawPod = serde_json::from_str(&format!(
            r#"{{"metadata":{{"name":"p","namespace":"n","uid":"{UID_A}"}}}}"#
        ))
        .unwrap();
        assert_eq!(&*PodCache::decode(raw).unwrap().service_account, "default");
        for bad in [
            r#"{"metadata":{"name":"p","namespace":"n"}}"#,
            r#"{"metadata":{"name":"P*","namespace":"n","uid":"u"}}"#,
            r#"{"metadata":{"name":"p","uid":"u"}}"#,
            r#"{"metadata":{"name":"p","namespace":"n","uid":"u","deletionTimestamp":"soon"}}"#,
        ] {
            let raw: RawPod = serde_json::from_str(bad).unwrap();
            assert!(PodCache::decode(raw).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_check_names_what_differs() {
        let mut terminating = pod("old", UID_B);
        terminating.deletion = Some(1_000);
        let cache = listed(vec![pod("app-1", UID_A), terminating]);
        let check = |name, uid, sa, now| cache.check("team-a", name, uid, sa, now);
        assert_eq!(check("app-1", UID_A, "app", 0), PodCheck::Live);
        assert_eq!(check("app-2", UID_A, "app", 0), PodCheck::NotFound);
        assert_eq!(check("app-1", UID_B, "app", 0), PodCheck::UidMismatch);
        assert_eq!(
            check("app-1", UID_A, "other", 0),
            PodCheck::ServiceAccountMismatch
        );
        // Within the API server's grace after the deletion timestamp, then refused.
        assert_eq!(check("old", UID_B, "app", 1_060), PodCheck::Live);
        assert_eq!(check("old", UID_B, "app", 1_061), PodCheck::Deleted);
        assert_eq!(
            PodCache::new().check("team-a", "app-1", UID_A, "app", 0),
            PodCheck::NotSynced
        );
    }

    #[test]
    fn deletions_and_replacements_are_reported_and_other_changes_are_not() {
        let cache = listed(vec![pod("a", UID_A), pod("b", UID_A)]);
        let rx = reporting(&cache);
        // A status update of the same pod: nothing to close.
        cache.apply(Change::Upsert(pod("a", UID_A)));
        // A delete of an older pod of the same name leaves the current one.
        cache.apply(Change::Delete(pod("a", UID_B)));
        assert!(rx.try_recv().is_err());
        assert_eq!(cache.len(), 2);
        // The same name, another pod: the old one's connections go.
        cache.apply(Change::Upsert(pod("a", UID_B)));
        let r = rx.try_recv().unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str(), r.reason),
            ("team-a", "app", RevokeReason::PodDeleted)
        );
        assert_eq!(r.pod.as_ref().map(|p| p.uid.as_str()), Some(UID_A));
        cache.apply(Change::Delete(pod("b", UID_A)));
        assert_eq!(rx.try_recv().unwrap().pod.unwrap().name, "b");
        assert_eq!(cache.len(), 1);
        assert_eq!(
            cache.check("team-a", "b", UID_A, "app", 0),
            PodCheck::NotFound
        );
    }

    #[test]
    fn a_deletion_the_full_queue_cannot_take_and_the_first_list_ask_for_a_sweep() {
        // A burst of deletions beyond the queue (a namespace, a node drain, an editor deleting
        // many pods of their own at once): the deletions past it used to be dropped, their
        // pods' connections (and those of any other namespace's pod deleted meanwhile) kept.
        let cache = listed(vec![pod("a", UID_A), pod("b", UID_A), pod("c", UID_A)]);
        let (tx, rx) = crossbeam_channel::bounded(1);
        cache.report_changes_to(tx);
        assert_eq!(cache.take_sweep(), None);
        cache.apply(Change::Delete(pod("a", UID_A)));
        assert_eq!(cache.take_sweep(), None, "queued");
        let before = jiff::Timestamp::now();
        cache.apply(Change::Delete(pod("b", UID_A)));
        cache.apply(Change::Delete(pod("c", UID_A)));
        let requested = cache.take_sweep().expect("the full queue asks for a sweep");
        assert!(requested >= before);
        assert_eq!(cache.take_sweep(), None, "taken");
        assert_eq!(rx.try_iter().count(), 1);
        // A failed sweep is asked again, from the earliest request.
        cache.sweep_again(requested);
        cache.request_sweep();
        assert_eq!(cache.take_sweep(), Some(requested));
        // What the sweep closes: a pod the cache does not hold, holds as another, or as deleted.
        assert!(cache.is_gone("team-a", "a", UID_A, "app", 0));
        assert!(!PodCache::new().is_gone("team-a", "a", UID_A, "app", 0));

        // The first list with revocation on: the pods deleted while no replica watched.
        let cache = PodCache::new();
        let _rx = reporting(&cache);
        let mut builder = PodCache::new_builder();
        PodCache::add(&mut builder, vec![pod("kept", UID_A)], None);
        cache.replace(builder);
        assert!(cache.take_sweep().is_some(), "the first list");
        let mut builder = PodCache::new_builder();
        PodCache::add(&mut builder, vec![pod("kept", UID_A)], Some(&cache));
        cache.replace(builder);
        assert_eq!(
            cache.take_sweep(),
            None,
            "a relist names what it no longer has"
        );
        assert!(!cache.is_gone("team-a", "kept", UID_A, "app", 0));
        assert!(cache.is_gone("team-a", "kept", UID_B, "app", 0));
    }

    #[test]
    fn a_pod_stuck_terminating_past_its_grace_is_revoked_once() {
        // A finalizer, or a node that stopped answering: the pod stays with its
        // deletionTimestamp, its token is refused 60 s after it, and its connections used to
        // stay until the object went, which may be never.
        let cache = listed(vec![pod("stuck", UID_A), pod("quick", UID_A)]);
        let _rx = reporting(&cache);
        let terminating = |name, at| {
            let mut p = pod(name, UID_A);
            p.deletion = Some(at);
            p
        };
        cache.apply(Change::Upsert(terminating("stuck", 1_000)));
        cache.apply(Change::Upsert(terminating("quick", 1_000)));
        // The usual end: the object goes within the grace (its deletion is revoked as ever).
        cache.apply(Change::Delete(pod("quick", UID_A)));
        assert!(cache.overdue(1_060).is_empty(), "within the grace");
        let due = cache.overdue(1_061);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].pod.as_ref().map(|p| p.name.as_str()), Some("stuck"));
        assert_eq!(due[0].reason, RevokeReason::PodDeleted);
        assert!(cache.overdue(2_000).is_empty(), "once");

        // One found terminating by a relist, and one replaced meanwhile by another pod.
        let mut builder = PodCache::new_builder();
        PodCache::add(
            &mut builder,
            vec![terminating("listed", 1_000), terminating("stuck", 1_000)],
            Some(&cache),
        );
        cache.replace(builder);
        cache.apply(Change::Upsert(pod("stuck", UID_B)));
        let due = cache.overdue(1_061);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].pod.as_ref().map(|p| p.name.as_str()), Some("listed"));
        // Without revocation nothing is kept.
        let quiet = listed(vec![]);
        quiet.apply(Change::Upsert(terminating("x", 1_000)));
        assert!(quiet.terminating.lock().is_empty());
    }

    #[test]
    fn a_relist_reports_the_pods_it_no_longer_has() {
        let cache = listed(vec![
            pod("kept", UID_A),
            pod("gone", UID_A),
            pod("new", UID_A),
        ]);
        let rx = reporting(&cache);
        let mut builder = PodCache::new_builder();
        PodCache::add(
            &mut builder,
            vec![pod("kept", UID_A), pod("new", UID_B), pod("added", UID_A)],
            Some(&cache),
        );
        cache.replace(builder);
        let mut gone: Vec<String> = rx.try_iter().map(|r| r.pod.unwrap().name).collect();
        gone.sort();
        assert_eq!(gone, ["gone", "new"]);
        assert_eq!(cache.len(), 3);
    }
}
