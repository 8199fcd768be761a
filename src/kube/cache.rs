//! The ServiceAccount cache and the lookup path the workers use.
//!
//! The cache is written by one source (the watch loop or the file source) and read by every
//! worker. A whole list replaces it atomically; watch events change single entries. Workers go
//! through a [`ServiceAccountDirectory`]: [`ApiDirectory`] falls back to one rate-limited,
//! negatively cached GET on a miss, so an account created a moment ago works before its watch
//! event arrives.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};
use parking_lot::{Mutex, RwLock};

use super::{is_valid_namespace, is_valid_object_name, ServiceAccount};
use super::{ApiClient, KubeError};
use crate::metrics::Metrics;
use crate::revoke::{Revocation, RevokeReason};

/// How long a deletion is remembered to stop a concurrent GET from resurrecting the account.
/// Much longer than any lookup timeout.
const TOMBSTONE_TTL: Duration = Duration::from_secs(60);
/// Most names held in the negative cache; beyond it, new misses are not remembered.
const NEGATIVE_CACHE_CAP: usize = 10_000;

/// One change from a watch event (of a ServiceAccount unless said otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<T = ServiceAccount> {
    /// The object was added or modified: store it.
    Upsert(T),
    /// The object was deleted: drop it (if the cache still holds that same object).
    Delete(T),
}

/// A mark in the cache's write history, taken before a GET so its result can be checked against
/// writes that happened meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct WriteMark(u64);

/// An account in its namespace's set, found by its name: the name is not stored twice.
#[derive(Clone, Debug)]
struct ByName(Arc<ServiceAccount>);

impl Borrow<str> for ByName {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

// Hash and Eq are those of the name as `str`, as `Borrow<str>` requires.
impl Hash for ByName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        str::hash(&self.0.name, state)
    }
}

impl PartialEq for ByName {
    fn eq(&self, other: &ByName) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for ByName {}

#[derive(Default)]
struct Inner {
    /// namespace → accounts by name; nested so lookups need no allocation. Each key is the one
    /// allocation of that namespace's name, which its accounts share.
    by_namespace: HashMap<Arc<str>, HashSet<ByName>>,
    len: usize,
    /// Incremented on every write by the list/watch source.
    seq: u64,
    /// `seq` of the last whole replacement.
    replaced_at: u64,
    /// Recent deletions: (namespace, name) → (`seq` of the deletion, when).
    tombstones: HashMap<(String, String), (u64, Instant)>,
}

impl Inner {
    fn get(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceAccount>> {
        self.by_namespace.get(namespace)?.get(name).map(|b| &b.0)
    }

    /// Stores `sa`, its namespace shared with the accounts already held there.
    fn insert(&mut self, mut sa: ServiceAccount) -> Arc<ServiceAccount> {
        if let Some((namespace, _)) = self.by_namespace.get_key_value(&*sa.namespace) {
            sa.namespace = namespace.clone();
        }
        let sa = Arc::new(sa);
        self.insert_arc(sa.clone());
        sa
    }

    fn insert_arc(&mut self, sa: Arc<ServiceAccount>) {
        let names = self.by_namespace.entry(sa.namespace.clone()).or_default();
        if names.replace(ByName(sa)).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        if let Some(names) = self.by_namespace.get_mut(namespace) {
            if names.remove(name) {
                self.len -= 1;
            }
            if names.is_empty() {
                self.by_namespace.remove(namespace);
            }
        }
    }
}

/// What replacing `held` by `now` (`None`: gone) means for its live connections.
fn revocation_of(held: &ServiceAccount, now: Option<&ServiceAccount>) -> Option<Revocation> {
    let reason = match now {
        None => RevokeReason::Deleted,
        Some(now) if now.uid != held.uid => RevokeReason::Recreated,
        Some(now) if !now.same_annotations(held) => RevokeReason::AnnotationsChanged,
        Some(_) => return None,
    };
    Some(Revocation::now(&held.namespace, &held.name, reason))
}

/// A complete list under construction, page by page, before it replaces a cache's content
/// ([`ServiceAccountCache::replace_with`]). Only the accounts are held, not the pages.
#[derive(Default)]
pub struct CacheBuilder {
    fresh: Inner,
}

impl std::fmt::Debug for CacheBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("len", &self.len())
            .finish()
    }
}

impl CacheBuilder {
    /// An empty list.
    pub fn new() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// Adds `accounts`. An account that `previous` already holds unchanged is shared with it
    /// rather than stored again, so a relist holds about one copy of the accounts, not two.
    pub fn add(
        &mut self,
        accounts: impl IntoIterator<Item = ServiceAccount>,
        previous: Option<&ServiceAccountCache>,
    ) {
        let held = previous.map(|cache| cache.inner.read());
        for sa in accounts {
            match held.as_ref().and_then(|h| h.get(&sa.namespace, &sa.name)) {
                Some(old) if **old == sa => self.fresh.insert_arc(old.clone()),
                _ => {
                    self.fresh.insert(sa);
                }
            }
        }
    }

    /// Number of accounts added.
    pub fn len(&self) -> usize {
        self.fresh.len
    }

    /// Whether no account was added.
    pub fn is_empty(&self) -> bool {
        self.fresh.len == 0
    }

    /// The account `namespace/name`, if added.
    #[cfg(test)]
    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<&Arc<ServiceAccount>> {
        self.fresh.get(namespace, name)
    }
}

/// The ServiceAccounts of the cluster (or of the development file), keyed by namespace and name.
pub struct ServiceAccountCache {
    inner: RwLock<Inner>,
    synced: AtomicBool,
    metrics: Arc<Metrics>,
    /// Where changes that must close live connections go, when revocation is on.
    revocations: std::sync::OnceLock<crossbeam_channel::Sender<Revocation>>,
}

impl std::fmt::Debug for ServiceAccountCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountCache")
            .field("len", &self.len())
            .field("synced", &self.is_synced())
            .finish()
    }
}

impl ServiceAccountCache {
    /// An empty, not yet synced cache that reports its size to `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> ServiceAccountCache {
        ServiceAccountCache {
            inner: RwLock::new(Inner::default()),
            synced: AtomicBool::new(false),
            metrics,
            revocations: std::sync::OnceLock::new(),
        }
    }

    /// From now on, reports every deletion, re-creation and change of NATS annotations (by the
    /// watch, or by a list that replaces the content) to `revocations`; a full queue counts a
    /// failure and logs it.
    pub fn report_changes_to(&self, revocations: crossbeam_channel::Sender<Revocation>) {
        let _ = self.revocations.set(revocations);
    }

    /// Queues `changes` for the revocation thread.
    fn report(&self, changes: Vec<Revocation>) {
        let Some(tx) = self.revocations.get() else {
            return;
        };
        for change in changes {
            if let Err(e) = tx.try_send(change) {
                let change = e.into_inner();
                self.metrics.revocation_failures.inc();
                warn!(
                    "revocation queue full: the live connections of {}/{} ({}) are not closed",
                    change.namespace,
                    change.name,
                    change.reason.label()
                );
            }
        }
    }

    /// The metrics the cache and its sources report to.
    #[cfg(test)]
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The account `namespace/name`, if the cache holds it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<ServiceAccount>> {
        self.inner.read().get(namespace, name).cloned()
    }

    /// Number of accounts held.
    pub fn len(&self) -> usize {
        self.inner.read().len
    }

    /// Whether the cache holds no account.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a complete list has been loaded at least once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Replaces the whole content with a complete list: accounts missing from it disappear.
    /// The new map is built before the lock is taken, so readers never see a partial list.
    pub fn replace_all(&self, accounts: Vec<ServiceAccount>) {
        let mut builder = CacheBuilder::new();
        builder.add(accounts, Some(self));
        self.replace_with(builder);
    }

    /// Replaces the whole content with a complete list built page by page: accounts missing
    /// from it disappear, and readers never see a partial list.
    pub fn replace_with(&self, builder: CacheBuilder) {
        let mut fresh = builder.fresh;
        let len = fresh.len;
        let old = {
            let mut inner = self.inner.write();
            fresh.seq = inner.seq + 1;
            fresh.replaced_at = fresh.seq;
            std::mem::replace(&mut *inner, fresh)
        };
        self.synced.store(true, Ordering::SeqCst);
        self.set_size_metric(len);
        if self.revocations.get().is_some() {
            // What a list replaced: compared outside the lock, against the new content.
            let inner = self.inner.read();
            let mut changes = Vec::new();
            for names in old.by_namespace.values() {
                for ByName(held) in names {
                    let now = inner.get(&held.namespace, &held.name);
                    changes.extend(revocation_of(held, now.map(|sa| &**sa)));
                }
            }
            drop(inner);
            self.report(changes);
        }
    }

    /// Applies one watch change.
    pub fn apply(&self, change: Change) {
        let reporting = self.revocations.get().is_some();
        let mut revoked = None;
        let len = {
            let mut inner = self.inner.write();
            inner.seq += 1;
            match change {
                Change::Upsert(sa) => {
                    if let Some(held) = inner.get(&sa.namespace, &sa.name).filter(|_| reporting) {
                        revoked = revocation_of(held, Some(&sa));
                    }
                    inner.insert(sa);
                }
                Change::Delete(sa) => {
                    // Events arrive in order, so a delete for an older uid can only meet a newer
                    // object that a miss-lookup GET stored early: keep that one.
                    let same = inner
                        .get(&sa.namespace, &sa.name)
                        .is_some_and(|held| held.uid == sa.uid);
                    if same {
                        inner.remove(&sa.namespace, &sa.name);
                        if reporting {
                            revoked = revocation_of(&sa, None);
                        }
                    }
                    let now = Instant::now();
                    let seq = inner.seq;
                    inner
                        .tombstones
                        .retain(|_, (_, at)| now.duration_since(*at) < TOMBSTONE_TTL);
                    inner
                        .tombstones
                        .insert((sa.namespace.to_string(), sa.name.into()), (seq, now));
                }
            }
            inner.len
        };
        self.set_size_metric(len);
        self.report(revoked.into_iter().collect());
    }

    fn write_mark(&self) -> WriteMark {
        WriteMark(self.inner.read().seq)
    }

    /// Stores an account fetched by a GET that started at `since`, unless the list/watch source
    /// wrote something newer meanwhile. Returns what the cache now says about the name
    /// (`None`: the account was deleted, or a newer list did not contain it).
    fn insert_fetched(&self, sa: ServiceAccount, since: WriteMark) -> Option<Arc<ServiceAccount>> {
        let mut inner = self.inner.write();
        if let Some(held) = inner.get(&sa.namespace, &sa.name) {
            // The watch got there first: its object wins.
            return Some(held.clone());
        }
        // A list completed after the GET began and does not hold the account: it is newer.
        if inner.replaced_at > since.0 {
            return None;
        }
        // The watch deleted it after the GET began: storing it would resurrect it.
        let key = (sa.namespace.to_string(), sa.name.to_string());
        if inner
            .tombstones
            .get(&key)
            .is_some_and(|(seq, _)| *seq > since.0)
        {
            return None;
        }
        let sa = inner.insert(sa);
        let len = inner.len;
        drop(inner);
        self.set_size_metric(len);
        Some(sa)
    }

    fn set_size_metric(&self, len: usize) {
        self.metrics
            .cache_size
            .set(i64::try_from(len).unwrap_or(i64::MAX));
    }
}

/// The answer to a ServiceAccount lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The account exists.
    Found(Arc<ServiceAccount>),
    /// The account does not exist.
    NotFound,
    /// The answer is unknown right now (API unreachable, rate-limited, cache not loaded).
    Unavailable,
}

/// Where workers look ServiceAccounts up.
pub trait ServiceAccountDirectory: Send + Sync {
    /// Looks `namespace/name` up.
    fn lookup(&self, namespace: &str, name: &str) -> Lookup;
}

/// Fetches a single ServiceAccount from the API (faked in tests).
pub trait ServiceAccountFetcher: Send + Sync {
    /// GETs `namespace/name`: `Ok(None)` when it does not exist.
    fn fetch_service_account(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<ServiceAccount>, KubeError>;
}

impl ServiceAccountFetcher for ApiClient {
    fn fetch_service_account(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<ServiceAccount>, KubeError> {
        self.get_service_account(namespace, name, timeout)
    }
}

/// Settings of the GET made on a cache miss.
#[derive(Clone, Debug)]
pub struct LookupSettings {
    /// Sustained GETs per second across all names. Default: 5.
    pub rate: f64,
    /// GETs allowed in a burst. Default: 10.
    pub burst: u32,
    /// How long a 404 is remembered for that name. Default: 5 s.
    pub negative_ttl: Duration,
    /// Bound on one GET. Default: 2 s.
    pub timeout: Duration,
}

impl Default for LookupSettings {
    fn default() -> Self {
        LookupSettings {
            rate: 5.0,
            burst: 10,
            negative_ttl: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` per second.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: if rate.is_finite() { rate.max(0.0) } else { 0.0 },
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The directory backed by the file source: a miss is simply not found (no API to ask).
#[derive(Debug)]
pub struct FileDirectory {
    cache: Arc<ServiceAccountCache>,
}

impl FileDirectory {
    /// A directory answering from `cache`, which the file source fills.
    pub fn new(cache: Arc<ServiceAccountCache>) -> FileDirectory {
        FileDirectory { cache }
    }
}

impl ServiceAccountDirectory for FileDirectory {
    fn lookup(&self, namespace: &str, name: &str) -> Lookup {
        match self.cache.get(namespace, name) {
            Some(sa) => Lookup::Found(sa),
            // Before the first good load the answer is unknown, not "no such account".
            None if !self.cache.is_synced() => Lookup::Unavailable,
            None => Lookup::NotFound,
        }
    }
}

/// The directory backed by the list/watch cache, with a GET on a miss.
pub struct ApiDirectory<F: ServiceAccountFetcher = ApiClient> {
    cache: Arc<ServiceAccountCache>,
    fetcher: Arc<F>,
    metrics: Arc<Metrics>,
    settings: LookupSettings,
    limiter: Mutex<TokenBucket>,
    /// (namespace, name) → until when a 404 is remembered.
    negative: Mutex<HashMap<(String, String), Instant>>,
}

impl<F: ServiceAccountFetcher> ApiDirectory<F> {
    /// A directory over `cache` that GETs misses through `fetcher`, counted in `metrics`.
    pub fn new(
        cache: Arc<ServiceAccountCache>,
        fetcher: Arc<F>,
        settings: LookupSettings,
        metrics: Arc<Metrics>,
    ) -> ApiDirectory<F> {
        let limiter = Mutex::new(TokenBucket::new(settings.rate, settings.burst));
        ApiDirectory {
            cache,
            fetcher,
            metrics,
            settings,
            limiter,
            negative: Mutex::new(HashMap::new()),
        }
    }

    fn recently_missing(&self, namespace: &str, name: &str, now: Instant) -> bool {
        let negative = self.negative.lock();
        negative
            .get(&(namespace.to_owned(), name.to_owned()))
            .is_some_and(|until| *until > now)
    }

    fn remember_missing(&self, namespace: &str, name: &str, now: Instant) {
        let mut negative = self.negative.lock();
        if negative.len() >= NEGATIVE_CACHE_CAP {
            negative.retain(|_, until| *until > now);
        }
        if negative.len() < NEGATIVE_CACHE_CAP {
            negative.insert(
                (namespace.to_owned(), name.to_owned()),
                now + self.settings.negative_ttl,
            );
        }
    }
}

impl<F: ServiceAccountFetcher> ServiceAccountDirectory for ApiDirectory<F> {
    fn lookup(&self, namespace: &str, name: &str) -> Lookup {
        if let Some(sa) = self.cache.get(namespace, name) {
            return Lookup::Found(sa);
        }
        // Only valid Kubernetes names can exist; anything else is not worth an API call.
        if !is_valid_namespace(namespace) || !is_valid_object_name(name) {
            return Lookup::NotFound;
        }
        let now = Instant::now();
        // A name that was just confirmed missing is not fetched again until the entry expires:
        // a client retrying with a token for a deleted account cannot drive API traffic.
        if self.recently_missing(namespace, name, now) {
            return Lookup::NotFound;
        }
        // The rate limit bounds API load whatever the pattern of misses.
        if !self.limiter.lock().try_take(now) {
            debug!(
                "ServiceAccount {namespace}/{name} not cached and the lookup rate limit is reached"
            );
            return Lookup::Unavailable;
        }
        self.metrics.cache_miss_lookups.inc();
        let since = self.cache.write_mark();
        match self
            .fetcher
            .fetch_service_account(namespace, name, self.settings.timeout)
        {
            Ok(Some(sa)) => match self.cache.insert_fetched(sa, since) {
                Some(sa) => Lookup::Found(sa),
                None => Lookup::NotFound,
            },
            Ok(None) => {
                self.remember_missing(namespace, name, now);
                Lookup::NotFound
            }
            Err(e) => {
                warn!("lookup of ServiceAccount {namespace}/{name} failed: {e}");
                Lookup::Unavailable
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn cache() -> Arc<ServiceAccountCache> {
        Arc::new(ServiceAccountCache::new(Arc::new(Metrics::new())))
    }

    /// A fetcher that answers from a map, counts calls, and can run a hook during the GET.
    struct FakeFetcher {
        known: Mutex<HashMap<(String, String), ServiceAccount>>,
        fail: AtomicBool,
        calls: AtomicUsize,
        during: Mutex<Option<Box<dyn Fn() + Send>>>,
    }

    impl FakeFetcher {
        fn new(known: Vec<ServiceAccount>) -> Arc<FakeFetcher> {
            Arc::new(FakeFetcher {
                known: Mutex::new(
                    known
                        .into_iter()
                        .map(|s| ((s.namespace.to_string(), s.name.to_string()), s))
                        .collect(),
                ),
                fail: AtomicBool::new(false),
                calls: AtomicUsize::new(0),
                during: Mutex::new(None),
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl ServiceAccountFetcher for FakeFetcher {
        fn fetch_service_account(
            &self,
            namespace: &str,
            name: &str,
            _timeout: Duration,
        ) -> Result<Option<ServiceAccount>, KubeError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Some(hook) = self.during.lock().as_ref() {
                hook();
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(KubeError::Timeout);
            }
            Ok(self
                .known
                .lock()
                .get(&(namespace.to_owned(), name.to_owned()))
                .cloned())
        }
    }

    fn settings() -> LookupSettings {
        LookupSettings {
            rate: 0.0,
            burst: 100,
            negative_ttl: Duration::from_millis(200),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn replace_all_swaps_the_whole_content_and_updates_size() {
        let c = cache();
        assert!(!c.is_synced());
        c.replace_all(vec![
            ServiceAccount::for_test("a", "x", "1"),
            ServiceAccount::for_test("a", "y", "2"),
            ServiceAccount::for_test("b", "x", "3"),
        ]);
        assert!(c.is_synced());
        assert_eq!(c.len(), 3);
        assert_eq!(c.metrics().cache_size.get(), 3);
        c.replace_all(vec![ServiceAccount::for_test("a", "y", "2b")]);
        assert_eq!(c.len(), 1);
        assert_eq!(
            c.get("a", "x"),
            None,
            "objects missing from a new list disappear"
        );
        assert_eq!(c.get("a", "y").unwrap().uid, "2b");
        assert_eq!(c.metrics().cache_size.get(), 1);
    }

    #[test]
    fn deletions_recreations_and_nats_annotation_changes_are_reported_and_nothing_else() {
        const PUB_ANNOTATION: &str = "nats.io/allowed-pub-subjects";
        let c = cache();
        let (tx, rx) = crossbeam_channel::bounded(16);
        let sa = |name: &str, uid: &str| ServiceAccount::for_test("a", name, uid);
        let granted = |name: &str, uid: &str, subjects: &str| {
            sa(name, uid).with_annotation(PUB_ANNOTATION, subjects)
        };
        let reported = || -> Vec<(String, &'static str)> {
            rx.try_iter()
                .map(|r: Revocation| (format!("{}/{}", r.namespace, r.name), r.reason.label()))
                .collect()
        };
        // Before reporting is on, and for the first list: nothing to revoke.
        c.replace_all(vec![sa("x", "1")]);
        c.report_changes_to(tx);
        c.replace_all(vec![sa("x", "1"), granted("y", "2", "a.b"), sa("z", "3")]);
        assert_eq!(reported(), vec![]);

        // Watch events: a new account and an unchanged one are nothing; the rest is reported.
        c.apply(Change::Upsert(sa("new", "4")));
        c.apply(Change::Upsert(sa("x", "1")));
        c.apply(Change::Upsert(granted("y", "2", "a.>")));
        c.apply(Change::Upsert(sa("z", "3b")));
        c.apply(Change::Delete(sa("x", "1")));
        // A delete of an older uid than the one held removes nothing and revokes nothing.
        c.apply(Change::Delete(sa("z", "3")));
        assert_eq!(
            reported(),
            vec![
                ("a/y".into(), "annotations_changed"),
                ("a/z".into(), "recreated"),
                ("a/x".into(), "deleted"),
            ]
        );

        // A list after a 410 reports what it changed, against what the cache held.
        c.replace_all(vec![granted("y", "2", "a.>"), sa("z", "3c")]);
        let mut after_list = reported();
        after_list.sort();
        assert_eq!(
            after_list,
            vec![("a/new".into(), "deleted"), ("a/z".into(), "recreated")]
        );
    }

    #[test]
    fn a_full_revocation_queue_counts_a_failure() {
        let c = cache();
        let (tx, _rx) = crossbeam_channel::bounded(1);
        c.replace_all(vec![
            ServiceAccount::for_test("a", "x", "1"),
            ServiceAccount::for_test("a", "y", "2"),
        ]);
        c.report_changes_to(tx);
        c.apply(Change::Delete(ServiceAccount::for_test("a", "x", "1")));
        c.apply(Change::Delete(ServiceAccount::for_test("a", "y", "2")));
        assert_eq!(c.metrics().revocation_failures.get(), 1);
    }

    #[test]
    fn accounts_of_a_namespace_share_its_name() {
        let c = cache();
        c.replace_all(vec![
            ServiceAccount::for_test("a", "x", "1"),
            ServiceAccount::for_test("a", "y", "2"),
        ]);
        c.apply(Change::Upsert(ServiceAccount::for_test("a", "z", "3")));
        let x = c.get("a", "x").unwrap();
        for other in ["y", "z"] {
            assert!(Arc::ptr_eq(
                &x.namespace,
                &c.get("a", other).unwrap().namespace
            ));
        }
    }

    #[test]
    fn a_relist_shares_the_unchanged_accounts_it_already_holds() {
        let c = cache();
        let v1 = |name: &str| ServiceAccount::new("a", name, "u", "1");
        c.replace_all(vec![v1("same"), v1("changed"), v1("gone")]);
        let same = c.get("a", "same").unwrap();
        let changed = c.get("a", "changed").unwrap();
        let mut builder = CacheBuilder::new();
        builder.add([v1("same")], Some(&c));
        builder.add(
            [
                ServiceAccount::new("a", "changed", "u", "2"),
                v1("new").with_annotation(crate::policy::PUB_ANNOTATION, "a.b"),
            ],
            Some(&c),
        );
        assert_eq!(builder.len(), 3);
        c.replace_with(builder);
        assert_eq!(c.len(), 3);
        assert!(Arc::ptr_eq(&same, &c.get("a", "same").unwrap()));
        assert!(!Arc::ptr_eq(&changed, &c.get("a", "changed").unwrap()));
        assert_eq!(c.get("a", "changed").unwrap().resource_version, "2");
        assert_eq!(c.get("a", "gone"), None);
        // The same uid and version with other annotations (a file has no versions): not shared.
        let before = c.get("a", "new").unwrap();
        c.replace_all(vec![v1("new")]);
        assert_eq!(
            c.get("a", "new")
                .unwrap()
                .annotation(crate::policy::PUB_ANNOTATION),
            None
        );
        assert!(!Arc::ptr_eq(&before, &c.get("a", "new").unwrap()));
    }

    #[test]
    fn apply_upserts_and_deletes() {
        let c = cache();
        c.apply(Change::Upsert(ServiceAccount::for_test("a", "x", "1")));
        c.apply(Change::Upsert(ServiceAccount::for_test("a", "x", "1")));
        assert_eq!(c.len(), 1);
        c.apply(Change::Upsert(ServiceAccount::for_test("a", "x.y", "2")));
        assert_eq!(c.metrics().cache_size.get(), 2);
        c.apply(Change::Delete(ServiceAccount::for_test("a", "x", "1")));
        assert_eq!(c.get("a", "x"), None);
        assert_eq!(c.len(), 1);
        assert_eq!(c.metrics().cache_size.get(), 1);
    }

    #[test]
    fn delete_of_an_older_uid_keeps_the_newer_object() {
        let c = cache();
        c.apply(Change::Upsert(ServiceAccount::for_test("a", "x", "new")));
        c.apply(Change::Delete(ServiceAccount::for_test("a", "x", "old")));
        assert_eq!(c.get("a", "x").unwrap().uid, "new");
    }

    #[test]
    fn cache_hit_needs_no_get() {
        let c = cache();
        c.replace_all(vec![ServiceAccount::for_test("a", "x", "1")]);
        let f = FakeFetcher::new(vec![]);
        let d = ApiDirectory::new(c.clone(), f.clone(), settings(), c.metrics().clone());
        assert_eq!(
            d.lookup("a", "x"),
            Lookup::Found(Arc::new(ServiceAccount::for_test("a", "x", "1")))
        );
        assert_eq!(f.calls(), 0);
    }

    #[test]
    fn miss_is_fetched_once_and_stored() {
        let c = cache();
        c.replace_all(vec![]);
        let f = FakeFetcher::new(vec![ServiceAccount::for_test("a", "new", "9")]);
        let d = ApiDirectory::new(c.clone(), f.clone(), settings(), c.metrics().clone());
        assert!(matches!(d.lookup("a", "new"), Lookup::Found(s) if s.uid == "9"));
        assert!(matches!(d.lookup("a", "new"), Lookup::Found(_)));
        assert_eq!(f.calls(), 1);
        assert_eq!(c.metrics().cache_miss_lookups.get(), 1);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn not_found_is_negatively_cached_for_a_while() {
        let c = cache();
        let f = FakeFetcher::new(vec![]);
        let d = ApiDirectory::new(c.clone(), f.clone(), settings(), c.metrics().clone());
        assert_eq!(d.lookup("a", "ghost"), Lookup::NotFound);
        assert_eq!(d.lookup("a", "ghost"), Lookup::NotFound);
        assert_eq!(f.calls(), 1, "second miss answered from the negative cache");
        assert_eq!(d.lookup("a", "other"), Lookup::NotFound);
        assert_eq!(f.calls(), 2, "the negative cache is per name");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(d.lookup("a", "ghost"), Lookup::NotFound);
        assert_eq!(f.calls(), 3, "expired entries are fetched again");
    }

    #[test]
    fn invalid_names_are_not_fetched() {
        let c = cache();
        let f = FakeFetcher::new(vec![]);
        let d = ApiDirectory::new(c.clone(), f.clone(), settings(), c.metrics().clone());
        assert_eq!(d.lookup("a", "../../secrets/x"), Lookup::NotFound);
        assert_eq!(d.lookup("A", "x"), Lookup::NotFound);
        assert_eq!(f.calls(), 0);
    }

    #[test]
    fn misses_beyond_the_rate_limit_are_unavailable() {
        let c = cache();
        let f = FakeFetcher::new(vec![]);
        let d = ApiDirectory::new(
            c.clone(),
            f.clone(),
            LookupSettings {
                rate: 0.0,
                burst: 3,
                ..settings()
            },
            c.metrics().clone(),
        );
        for i in 0..3 {
            assert_eq!(d.lookup("a", &format!("n{i}")), Lookup::NotFound);
        }
        assert_eq!(d.lookup("a", "n9"), Lookup::Unavailable);
        assert_eq!(f.calls(), 3);
    }

    #[test]
    fn file_directory_misses_are_not_found_once_loaded() {
        let c = cache();
        let d = FileDirectory::new(c.clone());
        assert_eq!(d.lookup("n", "a"), Lookup::Unavailable);
        c.replace_all(vec![ServiceAccount::for_test("n", "a", "u")]);
        assert!(matches!(d.lookup("n", "a"), Lookup::Found(_)));
        assert_eq!(d.lookup("n", "b"), Lookup::NotFound);
    }

    #[test]
    fn rate_limit_refills_over_time() {
        let mut bucket = TokenBucket::new(5.0, 10);
        let t0 = Instant::now();
        assert_eq!((0..20).filter(|_| bucket.try_take(t0)).count(), 10);
        assert!(bucket.try_take(t0 + Duration::from_millis(200)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(200)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| bucket.try_take(later)).count(), 10);
    }

    #[test]
    fn api_failure_is_unavailable_and_not_negatively_cached() {
        let c = cache();
        let f = FakeFetcher::new(vec![ServiceAccount::for_test("a", "x", "1")]);
        f.fail.store(true, Ordering::SeqCst);
        let d = ApiDirectory::new(c.clone(), f.clone(), settings(), c.metrics().clone());
        assert_eq!(d.lookup("a", "x"), Lookup::Unavailable);
        f.fail.store(false, Ordering::SeqCst);
        assert!(matches!(d.lookup("a", "x"), Lookup::Found(_)));
    }

    #[test]
    fn get_result_does_not_override_a_watch_write() {
        let c = cache();
        let f = FakeFetcher::new(vec![ServiceAccount::for_test("a", "x", "from-get")]);
        let c2 = c.clone();
        *f.during.lock() = Some(Box::new(move || {
            c2.apply(Change::Upsert(ServiceAccount::for_test(
                "a",
                "x",
                "from-watch",
            )))
        }));
        let d = ApiDirectory::new(c.clone(), f.clone(), settings(), c.metrics().clone());
        assert!(matches!(d.lookup("a", "x"), Lookup::Found(s) if s.uid == "from-watch"));
        assert_eq!(c.get("a", "x").unwrap().uid, "from-watch");
    }

    #[test]
    fn get_result_does_not_resurrect_an_account_deleted_meanwhile() {
        let c = cache();
        let f = FakeFetcher::new(vec![ServiceAccount::for_test("a", "x", "1")]);
        let c2 = c.clone();
        *f.during.lock() = Some(Box::new(move || {
            c2.apply(Change::Upsert(ServiceAccount::for_test("a", "x", "1")));
            c2.apply(Change::Delete(ServiceAccount::for_test("a", "x", "1")));
        }));
        let d = ApiDirectory::new(c.clone(), f.clone(), settings(), c.metrics().clone());
        assert_eq!(d.lookup("a", "x"), Lookup::NotFound);
        assert_eq!(c.get("a", "x"), None);
    }

    #[test]
    fn get_result_does_not_survive_a_newer_list_without_it() {
        let c = cache();
        let f = FakeFetcher::new(vec![ServiceAccount::for_test("a", "x", "1")]);
        let c2 = c.clone();
        *f.during.lock() = Some(Box::new(move || {
            c2.replace_all(vec![ServiceAccount::for_test("a", "y", "2")])
        }));
        let d = ApiDirectory::new(c.clone(), f.clone(), settings(), c.metrics().clone());
        assert_eq!(d.lookup("a", "x"), Lookup::NotFound);
        assert_eq!(c.get("a", "x"), None);
    }
}
