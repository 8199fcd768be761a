//! The emulator's shared state, behind one mutex: the object stores (ServiceAccounts and Pods)
//! and their one change log under one resourceVersion sequence, as etcd's global revision (the
//! watch history that watches replay and exact-resourceVersion lists read the past from), issued
//! continue tokens, the switches a test flips, the counters and the request log.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Shutdown;
use std::ops::Bound;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use serde_json::{json, Map, Value};

use super::super::tokens::{random_uuid, SigningKey};
use super::http::Connections;
use super::pods::PodBody;
use super::routing::{Fault, RecordedRequest, RequestKind};

/// The resourceVersion of an empty emulator; the first write gets the next one.
const FIRST_RESOURCE_VERSION: u64 = 1000;
/// How long an issued continue token stays valid (etcd compaction runs about every 5 minutes).
pub(super) const CONTINUE_TOKEN_TTL: Duration = Duration::from_secs(300);

/// What the accept thread, the connection threads and the handle share.
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    /// Notified on every write, fault switch and shutdown; watch streams wait on it.
    pub(super) wake: Condvar,
    /// Set once when the emulator is dropped.
    pub(super) stopping: AtomicBool,
    pub(super) conns: Mutex<Connections>,
    /// Interval of periodic bookmarks; none for only the pre-deadline one.
    pub(super) bookmark_interval: Option<Duration>,
    pub(super) issuer: String,
    /// The base URL, `http://` or `https://` and the listening address.
    pub(super) url: String,
    /// The server configuration when serving TLS.
    pub(super) tls: Option<Arc<rustls::ServerConfig>>,
}

impl Shared {
    /// Cuts every open connection, watch streams included.
    pub(super) fn shutdown_connections(&self) {
        for stream in self.conns.lock().open.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Requests and connections received, by kind (failed and refused ones included).
#[derive(Default)]
pub(super) struct Counters {
    /// Requests by how they were routed.
    pub(super) requests: HashMap<RequestKind, u64>,
    /// Response body bytes written, by the kind of request answered (a watch's events as its
    /// client decodes them: the JSON lines with their newlines, without the chunk framing).
    pub(super) bytes: HashMap<RequestKind, u64>,
    pub(super) total: u64,
    pub(super) connections: u64,
    pub(super) tls_handshake_failures: u64,
}

impl Counters {
    /// The number of requests of `kind` received.
    pub(super) fn of(&self, kind: RequestKind) -> u64 {
        self.requests.get(&kind).copied().unwrap_or(0)
    }
}

/// The kinds of object the store holds: each has its own collection paths, and all share one
/// resourceVersion sequence and change log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Resource {
    ServiceAccounts,
    Pods,
}

impl Resource {
    /// Every kind, in the order of [`State::stores`].
    const ALL: [Resource; 2] = [Resource::ServiceAccounts, Resource::Pods];

    /// The resource name: the collection's path segment, and what RBAC messages name.
    pub(super) fn plural(self) -> &'static str {
        match self {
            Resource::ServiceAccounts => "serviceaccounts",
            Resource::Pods => "pods",
        }
    }

    /// The object's `kind`.
    pub(super) fn kind(self) -> &'static str {
        match self {
            Resource::ServiceAccounts => "ServiceAccount",
            Resource::Pods => "Pod",
        }
    }

    /// The resource a collection path segment names, if the emulator serves it.
    pub(super) fn from_plural(segment: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.plural() == segment)
    }

    /// The position of this kind's store in [`State::stores`].
    fn index(self) -> usize {
        match self {
            Resource::ServiceAccounts => 0,
            Resource::Pods => 1,
        }
    }
}

/// A graceful deletion in progress: `metadata.deletionTimestamp` and
/// `metadata.deletionGracePeriodSeconds`.
#[derive(Clone, Debug)]
pub(super) struct Deletion {
    pub(super) timestamp: String,
    pub(super) grace_seconds: u64,
}

/// What a stored object is besides its metadata.
#[derive(Clone, Debug)]
pub(super) enum Body {
    /// A ServiceAccount: metadata only.
    ServiceAccount,
    /// A Pod: its spec and status, and the metadata only pods have.
    Pod(Box<PodBody>),
}

/// One object as stored. Labels, annotations, managed fields (and a pod's spec) are shared
/// (`Arc`), so a bulk-seeded store of a million objects holds them once.
#[derive(Clone, Debug)]
pub(super) struct StoredObject {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) uid: String,
    pub(super) resource_version: u64,
    pub(super) created: String,
    pub(super) labels: Arc<BTreeMap<String, String>>,
    pub(super) annotations: Arc<BTreeMap<String, String>>,
    /// `metadata.managedFields`, as the API server keeps them (none for objects a test creates).
    pub(super) managed_fields: Option<Arc<Value>>,
    /// Set once a graceful deletion has begun.
    pub(super) deletion: Option<Deletion>,
    pub(super) body: Body,
}

/// How an object is written in an answer, as the client's `Accept` asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Representation {
    /// The object itself (`application/json`).
    Full,
    /// `as=PartialObjectMetadata`: one object's metadata (`g`/`v` give its `apiVersion`).
    Metadata { v1beta1: bool },
    /// `as=PartialObjectMetadataList`: a list of metadata.
    MetadataList { v1beta1: bool },
}

impl Representation {
    /// The `apiVersion` of metadata objects in this representation.
    pub(super) fn meta_api_version(self) -> &'static str {
        match self {
            Representation::Metadata { v1beta1: true }
            | Representation::MetadataList { v1beta1: true } => "meta.k8s.io/v1beta1",
            _ => "meta.k8s.io/v1",
        }
    }
}

impl StoredObject {
    /// A new ServiceAccount, not yet stored: a fresh uid, created now.
    pub(super) fn service_account(
        namespace: &str,
        name: &str,
        annotations: BTreeMap<String, String>,
        labels: BTreeMap<String, String>,
    ) -> StoredObject {
        StoredObject {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: random_uuid(),
            resource_version: 0,
            created: rfc3339_now(),
            labels: Arc::new(labels),
            annotations: Arc::new(annotations),
            managed_fields: None,
            deletion: None,
            body: Body::ServiceAccount,
        }
    }

    /// Which kind of object this is.
    pub(super) fn resource(&self) -> Resource {
        match self.body {
            Body::ServiceAccount => Resource::ServiceAccounts,
            Body::Pod(_) => Resource::Pods,
        }
    }

    /// The object in `repr`: a full list item (`with_type` false) leaves out `kind` and
    /// `apiVersion`, as the apiserver does; metadata items always carry theirs.
    pub(super) fn render(&self, repr: Representation, with_type: bool) -> Value {
        match repr {
            Representation::Full => self.to_json(with_type),
            _ => {
                let mut obj = Map::new();
                obj.insert("kind".into(), json!("PartialObjectMetadata"));
                obj.insert("apiVersion".into(), json!(repr.meta_api_version()));
                obj.insert("metadata".into(), self.metadata());
                Value::Object(obj)
            }
        }
    }

    /// The object's JSON; list items leave out `kind` and `apiVersion`, as the apiserver does.
    pub(super) fn to_json(&self, with_type: bool) -> Value {
        let mut obj = Map::new();
        if with_type {
            obj.insert("kind".into(), json!(self.resource().kind()));
            obj.insert("apiVersion".into(), json!("v1"));
        }
        obj.insert("metadata".into(), self.metadata());
        if let Body::Pod(pod) = &self.body {
            obj.insert("spec".into(), pod.spec());
            obj.insert("status".into(), pod.status(&self.uid, &self.created));
        }
        Value::Object(obj)
    }

    /// The object's `metadata`.
    fn metadata(&self) -> Value {
        let mut meta = Map::new();
        meta.insert("name".into(), json!(self.name));
        meta.insert("namespace".into(), json!(self.namespace));
        meta.insert("uid".into(), json!(self.uid));
        meta.insert(
            "resourceVersion".into(),
            json!(self.resource_version.to_string()),
        );
        meta.insert("creationTimestamp".into(), json!(self.created));
        if let Some(deletion) = &self.deletion {
            meta.insert("deletionTimestamp".into(), json!(deletion.timestamp));
            meta.insert(
                "deletionGracePeriodSeconds".into(),
                json!(deletion.grace_seconds),
            );
        }
        if let Body::Pod(pod) = &self.body {
            pod.add_metadata(&mut meta);
        }
        if !self.labels.is_empty() {
            meta.insert("labels".into(), json!(*self.labels));
        }
        if !self.annotations.is_empty() {
            meta.insert("annotations".into(), json!(*self.annotations));
        }
        if let Some(fields) = &self.managed_fields {
            meta.insert("managedFields".into(), Value::clone(fields));
        }
        Value::Object(meta)
    }

    /// The store's key: namespace and name.
    pub(super) fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }

    /// Whether a list or watch of `namespace` (all namespaces if none) sees this object.
    pub(super) fn in_scope(&self, namespace: Option<&str>) -> bool {
        namespace.is_none_or(|ns| ns == self.namespace)
    }
}

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    /// The watch event type that reports this change.
    pub(super) fn event_type(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One write, as the watch cache remembers it.
#[derive(Clone, Debug)]
pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) kind: ChangeKind,
    /// The new state; for a deletion the last state, with the deletion's resourceVersion.
    pub(super) object: StoredObject,
    /// The state before the write (none for a creation).
    pub(super) previous: Option<StoredObject>,
}

/// A continue token handed out, remembered so that it can expire.
pub(super) struct IssuedContinue {
    /// The kind of object listed: a token only continues a list of its own kind.
    pub(super) resource: Resource,
    pub(super) rv: u64,
    pub(super) issued: Instant,
    /// How many items of the list follow the page that handed it out.
    pub(super) remaining: usize,
}

/// Everything behind the emulator's one mutex.
pub(super) struct State {
    /// The global resourceVersion: that of the latest write.
    pub(super) rv: u64,
    /// One store per [`Resource`] (in the order of `Resource::ALL`), keyed by namespace and name.
    pub(super) stores: [BTreeMap<(String, String), StoredObject>; 2],
    /// Every change newer than what the oldest user (window, open watch, continue token) needs.
    pub(super) log: VecDeque<Change>,
    /// Oldest resourceVersion a watch may start from; older ones are "too old".
    pub(super) horizon: u64,
    /// How many past changes a new watch can replay.
    pub(super) history_window: usize,
    /// Open watch streams: id -> resourceVersion up to which they have consumed the log.
    pub(super) watch_cursors: HashMap<u64, u64>,
    pub(super) next_watch_id: u64,
    /// Bumped to cut every open watch stream.
    pub(super) watch_generation: u64,
    pub(super) continues: HashMap<String, IssuedContinue>,
    pub(super) tokens: Vec<String>,
    pub(super) auth_required: bool,
    pub(super) oidc_anonymous: bool,
    pub(super) faults: Vec<Fault>,
    pub(super) down: bool,
    pub(super) watch_hang: bool,
    pub(super) expired_watch_as_http: bool,
    pub(super) jwks: Value,
    pub(super) jwks_max_age: u64,
    /// How long an answer of `/openid/v1/jwks` is held back before it is written (a slow or
    /// hanging key-set endpoint); zero answers at once.
    pub(super) jwks_delay: std::time::Duration,
    pub(super) token_signer: Option<SigningKey>,
    /// Events created, oldest first (the emulator never expires them).
    pub(super) events: Vec<Value>,
    /// Whether the service's RBAC allows `create` on `events` (403 Forbidden otherwise).
    pub(super) create_events_allowed: bool,
    pub(super) requests: VecDeque<RecordedRequest>,
    pub(super) tls_errors: VecDeque<String>,
    pub(super) counters: Counters,
}

impl State {
    /// An empty store at [`FIRST_RESOURCE_VERSION`] with every setting off or empty;
    /// [`KubeEmulatorBuilder::build`](super::KubeEmulatorBuilder::build) fills the settings in.
    pub(super) fn empty() -> Self {
        State {
            rv: FIRST_RESOURCE_VERSION,
            stores: [BTreeMap::new(), BTreeMap::new()],
            log: VecDeque::new(),
            horizon: FIRST_RESOURCE_VERSION,
            history_window: 0,
            watch_cursors: HashMap::new(),
            next_watch_id: 1,
            watch_generation: 0,
            continues: HashMap::new(),
            tokens: Vec::new(),
            auth_required: false,
            oidc_anonymous: false,
            faults: Vec::new(),
            down: false,
            watch_hang: false,
            expired_watch_as_http: false,
            jwks: Value::Null,
            jwks_max_age: 0,
            jwks_delay: std::time::Duration::ZERO,
            token_signer: None,
            events: Vec::new(),
            create_events_allowed: true,
            requests: VecDeque::new(),
            tls_errors: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// The store of one kind of object.
    pub(super) fn store(&self, resource: Resource) -> &BTreeMap<(String, String), StoredObject> {
        &self.stores[resource.index()]
    }

    /// The object `namespace/name` of `resource`, if it exists.
    pub(super) fn object(
        &self,
        resource: Resource,
        namespace: &str,
        name: &str,
    ) -> Option<&StoredObject> {
        self.store(resource)
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Stores a new object (an ADDED event); returns its uid. Panics if it already exists (a
    /// test bug).
    pub(super) fn create(&mut self, mut object: StoredObject) -> String {
        let resource = object.resource();
        let key = object.key();
        assert!(
            !self.store(resource).contains_key(&key),
            "{} {}/{} already exists",
            resource.plural(),
            key.0,
            key.1
        );
        self.rv += 1;
        object.resource_version = self.rv;
        let uid = object.uid.clone();
        self.stores[resource.index()].insert(key, object.clone());
        self.record_change(ChangeKind::Added, object, None);
        uid
    }

    /// Edits `namespace/name` of `resource` (a MODIFIED event); returns the new
    /// resourceVersion. Panics if it does not exist.
    pub(super) fn modify(
        &mut self,
        resource: Resource,
        namespace: &str,
        name: &str,
        edit: impl FnOnce(&mut StoredObject),
    ) -> u64 {
        let key = (namespace.to_string(), name.to_string());
        let previous =
            self.store(resource).get(&key).cloned().unwrap_or_else(|| {
                panic!("{} {namespace}/{name} does not exist", resource.plural())
            });
        self.rv += 1;
        let mut object = previous.clone();
        edit(&mut object);
        object.resource_version = self.rv;
        self.stores[resource.index()].insert(key, object.clone());
        self.record_change(ChangeKind::Modified, object, Some(previous));
        self.rv
    }

    /// Deletes `namespace/name` of `resource` (a DELETED event carrying its last state); returns
    /// the resourceVersion of the deletion. Panics if it does not exist.
    pub(super) fn delete(&mut self, resource: Resource, namespace: &str, name: &str) -> u64 {
        let key = (namespace.to_string(), name.to_string());
        let previous = self.stores[resource.index()]
            .remove(&key)
            .unwrap_or_else(|| panic!("{} {namespace}/{name} does not exist", resource.plural()));
        self.rv += 1;
        let mut last = previous.clone();
        last.resource_version = self.rv;
        self.record_change(ChangeKind::Deleted, last, Some(previous));
        self.rv
    }

    /// Adds `bytes` of response body to what requests of `kind` were served.
    pub(super) fn count_bytes(&mut self, kind: RequestKind, bytes: u64) {
        *self.counters.bytes.entry(kind).or_default() += bytes;
    }

    /// Forgets all history: every resourceVersion older than now becomes too old.
    pub(super) fn compact(&mut self) {
        self.horizon = self.rv;
        self.prune();
    }

    /// Appends a write to the log and slides the replay window.
    fn record_change(
        &mut self,
        kind: ChangeKind,
        object: StoredObject,
        previous: Option<StoredObject>,
    ) {
        self.log.push_back(Change {
            rv: self.rv,
            kind,
            object,
            previous,
        });
        // Slide the window: only the last `history_window` changes can be replayed.
        let replayable = self
            .log
            .iter()
            .rev()
            .take_while(|c| c.rv > self.horizon)
            .count();
        if replayable > self.history_window {
            let idx = self.log.len() - self.history_window - 1;
            self.horizon = self.horizon.max(self.log[idx].rv);
        }
        self.prune();
    }

    /// Drops log entries no one can still need.
    pub(super) fn prune(&mut self) {
        let now = Instant::now();
        self.continues
            .retain(|_, c| now.duration_since(c.issued) < CONTINUE_TOKEN_TTL);
        let keep_after = self
            .watch_cursors
            .values()
            .copied()
            .chain(self.continues.values().map(|c| c.rv))
            .fold(self.horizon, u64::min);
        while self.log.front().is_some_and(|c| c.rv <= keep_after) {
            self.log.pop_front();
        }
    }

    /// The objects of `resource` as they were at `rv` (which must not be older than what the log
    /// covers), in key order, those after the key `after` only, and of `namespace` only if one is
    /// given. Reads the store in place: only the changes newer than `rv` are laid over it, so a
    /// page of a list of a million objects costs its own length, not the store's.
    pub(super) fn objects_after<'a>(
        &'a self,
        resource: Resource,
        rv: u64,
        after: Option<&(String, String)>,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a StoredObject> + 'a {
        let ns_start = namespace.map(|ns| (ns.to_string(), String::new()));
        let lower = match (after, ns_start) {
            (Some(after), Some(start)) if start > *after => Bound::Included(start),
            (Some(after), _) => Bound::Excluded(after.clone()),
            (None, Some(start)) => Bound::Included(start),
            (None, None) => Bound::Unbounded,
        };
        // key -> the object at `rv` (none: it did not exist then). Walking back from the newest
        // change, the oldest change after `rv` writes last: its previous state is the one at `rv`.
        let mut overlay: BTreeMap<(String, String), Option<&'a StoredObject>> = BTreeMap::new();
        let newer = self.log.iter().rev().take_while(|c| c.rv > rv);
        for change in newer.filter(|c| c.object.resource() == resource) {
            overlay.insert(change.object.key(), change.previous.as_ref());
        }
        let overlay: Vec<((String, String), Option<&'a StoredObject>)> = overlay
            .range((lower.clone(), Bound::Unbounded))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut current = self
            .store(resource)
            .range((lower, Bound::Unbounded))
            .peekable();
        let mut past = overlay.into_iter().peekable();
        std::iter::from_fn(move || loop {
            let order = match (current.peek(), past.peek()) {
                (None, None) => return None,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((k, _)), Some((p, _))) => (*k).cmp(p),
            };
            match order {
                std::cmp::Ordering::Less => return current.next().map(|(_, a)| a),
                std::cmp::Ordering::Equal => {
                    current.next();
                    if let Some((_, Some(a))) = past.next() {
                        return Some(a);
                    }
                }
                std::cmp::Ordering::Greater => {
                    if let Some((_, Some(a))) = past.next() {
                        return Some(a);
                    }
                }
            }
        })
        .take_while(move |a| a.in_scope(namespace))
    }

    /// Stores `objects` at once at one new resourceVersion, with no change log entries and no
    /// wake-up (a store that existed before any watch): for seeding 100,000s of objects.
    /// Panics on an object that already exists (a test bug).
    pub(super) fn seed(&mut self, objects: impl IntoIterator<Item = StoredObject>) {
        self.rv += 1;
        for mut object in objects {
            object.resource_version = self.rv;
            let (resource, key) = (object.resource(), object.key());
            assert!(
                self.stores[resource.index()].insert(key, object).is_none(),
                "a seeded object of {} already exists",
                resource.plural()
            );
        }
        // No watch can replay what happened before the seed.
        self.horizon = self.rv;
        self.prune();
    }

    /// Whether a watch or exact list from `rv` is older than the history kept.
    pub(super) fn too_old(&self, rv: u64) -> bool {
        rv < self.horizon
    }

    /// The API server's message for a too-old resourceVersion.
    pub(super) fn too_old_message(&self, rv: &str) -> String {
        format!("too old resource version: {rv} ({})", self.horizon + 1)
    }
}

/// What the seeded ServiceAccounts of one namespace share: annotations (the two `nats.io/`
/// ones and kubectl's last-applied-configuration), three labels and a `managedFields` entry.
pub(super) struct Realistic {
    pub(super) labels: Arc<BTreeMap<String, String>>,
    pub(super) annotations: Arc<BTreeMap<String, String>>,
    pub(super) managed_fields: Arc<Value>,
}

impl Realistic {
    /// The shared parts of the accounts of `namespace`.
    pub(super) fn new(namespace: &str) -> Realistic {
        let pub_subjects = format!("{namespace}.orders.>, {namespace}.events.*, shared.audit");
        let sub_subjects = format!("{namespace}.replies.>, shared.broadcast.>");
        let labels = to_map(&[
            ("app.kubernetes.io/name", "workload"),
            ("app.kubernetes.io/part-of", namespace),
            ("app.kubernetes.io/managed-by", "argocd"),
        ]);
        let last_applied = json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "annotations": {
                    "nats.io/allowed-pub-subjects": pub_subjects,
                    "nats.io/allowed-sub-subjects": sub_subjects,
                    "argocd.argoproj.io/sync-wave": "0",
                },
                "labels": labels,
                "name": "workload",
                "namespace": namespace,
            },
            "automountServiceAccountToken": false,
            "imagePullSecrets": [{ "name": "registry-credentials" }],
            "secrets": [{ "name": "workload-token" }],
        })
        .to_string();
        let mut last_applied = last_applied;
        // Pad to the ~700 bytes a GitOps-applied object typically has.
        if last_applied.len() < 700 {
            let pad = 700 - last_applied.len();
            last_applied.insert_str(1, &format!("\"x-padding\":\"{}\",", "p".repeat(pad)));
        }
        let annotations = to_map(&[
            ("nats.io/allowed-pub-subjects", &pub_subjects),
            ("nats.io/allowed-sub-subjects", &sub_subjects),
            (
                "kubectl.kubernetes.io/last-applied-configuration",
                &last_applied,
            ),
        ]);
        let managed_fields = json!([{
            "manager": "kubectl-client-side-apply",
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2025-01-01T00:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {
                    "f:annotations": {
                        ".": {},
                        "f:kubectl.kubernetes.io/last-applied-configuration": {},
                        "f:nats.io/allowed-pub-subjects": {},
                        "f:nats.io/allowed-sub-subjects": {},
                    },
                    "f:labels": {
                        ".": {},
                        "f:app.kubernetes.io/managed-by": {},
                        "f:app.kubernetes.io/name": {},
                        "f:app.kubernetes.io/part-of": {},
                    },
                },
                "f:automountServiceAccountToken": {},
            },
        }]);
        Realistic {
            labels: Arc::new(labels),
            annotations: Arc::new(annotations),
            managed_fields: Arc::new(managed_fields),
        }
    }
}

/// A random canonical (lowercase, version 4) UUID from a fast, non-cryptographic generator:
/// for seeding many objects.
pub(super) fn fast_uuid() -> String {
    let n = fastrand::u128(..);
    let n = (n & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Key-value pairs as a map (labels, annotations).
pub(super) fn to_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The current time as RFC 3339 in UTC with second precision, like `metav1.Time`.
pub(super) fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// `secs` since the Unix epoch as RFC 3339 in UTC with second precision.
pub(super) fn rfc3339(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
