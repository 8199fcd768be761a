//! The emulator's shared state, behind one mutex: the ServiceAccount store and its change log
//! (the watch history that watches replay and exact-resourceVersion lists read the past from),
//! issued continue tokens, the switches a test flips, the counters and the request log.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Shutdown;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use serde_json::{json, Map, Value};

use super::super::tokens::{random_uuid, SigningKey};
use super::http::Connections;
use super::routing::{Fault, RecordedRequest};

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
    pub(super) list: u64,
    pub(super) watch: u64,
    pub(super) get: u64,
    pub(super) discovery: u64,
    pub(super) jwks: u64,
    pub(super) token: u64,
    pub(super) events: u64,
    pub(super) total: u64,
    pub(super) connections: u64,
    pub(super) tls_handshake_failures: u64,
}

/// One ServiceAccount as stored.
#[derive(Clone, Debug)]
pub(super) struct StoredAccount {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) uid: String,
    pub(super) resource_version: u64,
    pub(super) created: String,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) annotations: BTreeMap<String, String>,
}

impl StoredAccount {
    /// The object's JSON; list items leave out `kind` and `apiVersion`, as the apiserver does.
    pub(super) fn to_json(&self, with_type: bool) -> Value {
        let mut meta = Map::new();
        meta.insert("name".into(), json!(self.name));
        meta.insert("namespace".into(), json!(self.namespace));
        meta.insert("uid".into(), json!(self.uid));
        meta.insert(
            "resourceVersion".into(),
            json!(self.resource_version.to_string()),
        );
        meta.insert("creationTimestamp".into(), json!(self.created));
        if !self.labels.is_empty() {
            meta.insert("labels".into(), json!(self.labels));
        }
        if !self.annotations.is_empty() {
            meta.insert("annotations".into(), json!(self.annotations));
        }
        let mut obj = Map::new();
        if with_type {
            obj.insert("kind".into(), json!("ServiceAccount"));
            obj.insert("apiVersion".into(), json!("v1"));
        }
        obj.insert("metadata".into(), Value::Object(meta));
        Value::Object(obj)
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
    pub(super) object: StoredAccount,
    /// The state before the write (none for a creation).
    pub(super) previous: Option<StoredAccount>,
}

/// A continue token handed out, remembered so that it can expire.
pub(super) struct IssuedContinue {
    pub(super) rv: u64,
    pub(super) issued: Instant,
}

/// Everything behind the emulator's one mutex.
pub(super) struct State {
    /// The global resourceVersion: that of the latest write.
    pub(super) rv: u64,
    pub(super) objects: BTreeMap<(String, String), StoredAccount>,
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
            objects: BTreeMap::new(),
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

    /// Stores a new `namespace/name` (an ADDED event); returns its fresh uid. Panics if it
    /// already exists (a test bug).
    pub(super) fn create(
        &mut self,
        namespace: &str,
        name: &str,
        annotations: BTreeMap<String, String>,
        labels: BTreeMap<String, String>,
    ) -> String {
        let key = (namespace.to_string(), name.to_string());
        assert!(
            !self.objects.contains_key(&key),
            "serviceaccount {namespace}/{name} already exists"
        );
        self.rv += 1;
        let account = StoredAccount {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: random_uuid(),
            resource_version: self.rv,
            created: rfc3339_now(),
            labels,
            annotations,
        };
        let uid = account.uid.clone();
        self.objects.insert(key, account.clone());
        self.record_change(ChangeKind::Added, account, None);
        uid
    }

    /// Edits `namespace/name` (a MODIFIED event); returns the new resourceVersion. Panics if it
    /// does not exist.
    pub(super) fn modify(
        &mut self,
        namespace: &str,
        name: &str,
        edit: impl FnOnce(&mut StoredAccount),
    ) -> u64 {
        let key = (namespace.to_string(), name.to_string());
        let previous = self
            .objects
            .get(&key)
            .cloned()
            .unwrap_or_else(|| panic!("serviceaccount {namespace}/{name} does not exist"));
        self.rv += 1;
        let mut account = previous.clone();
        edit(&mut account);
        account.resource_version = self.rv;
        self.objects.insert(key, account.clone());
        self.record_change(ChangeKind::Modified, account, Some(previous));
        self.rv
    }

    /// Deletes `namespace/name` (a DELETED event carrying its last state); returns the
    /// resourceVersion of the deletion. Panics if it does not exist.
    pub(super) fn delete(&mut self, namespace: &str, name: &str) -> u64 {
        let key = (namespace.to_string(), name.to_string());
        let previous = self
            .objects
            .remove(&key)
            .unwrap_or_else(|| panic!("serviceaccount {namespace}/{name} does not exist"));
        self.rv += 1;
        let mut last = previous.clone();
        last.resource_version = self.rv;
        self.record_change(ChangeKind::Deleted, last, Some(previous));
        self.rv
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
        object: StoredAccount,
        previous: Option<StoredAccount>,
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

    /// The objects as they were at `rv` (which must not be older than what the log covers).
    pub(super) fn objects_at(&self, rv: u64) -> BTreeMap<(String, String), StoredAccount> {
        let mut objects = self.objects.clone();
        for change in self.log.iter().rev().take_while(|c| c.rv > rv) {
            match &change.previous {
                Some(prev) => {
                    objects.insert(prev.key(), prev.clone());
                }
                None => {
                    objects.remove(&change.object.key());
                }
            }
        }
        objects
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
