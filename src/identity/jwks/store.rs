//! The key set in use: whole-set loads and the rate-limited refetch for an unknown key id.
//!
//! A refetch never runs on the thread that validates a token: the validating worker only signals
//! the refresher thread (see `refresh`) and waits a short, bounded time for the result.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use log::{debug, info, warn};
use parking_lot::{Condvar, Mutex, RwLock};
use sha2::{Digest, Sha256};

use super::{JwksError, JwksSource, KeySet, MAX_JWKS_BYTES};
use crate::files::{read_bounded, FileStamp, ReadError};
use crate::identity::printable;
use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// Timing of loads, refreshes and refetches.
#[derive(Clone, Debug)]
pub struct JwksSettings {
    /// Refresh period when the source gives no `max-age` (default 1 h).
    pub default_refresh: Duration,
    /// Shortest refresh period, whatever `max-age` says (default 1 min).
    pub min_refresh: Duration,
    /// Longest refresh period, whatever `max-age` says (default 24 h).
    pub max_refresh: Duration,
    /// At most one refetch for an unknown key id per this interval (default 60 s).
    pub min_refetch_interval: Duration,
    /// How long a token with an unknown key id waits for the refetch it asked for (or found
    /// asked for), counted from when that refetch was asked for (default 500 ms).
    pub refetch_wait: Duration,
    /// How often a key file is stat-ed for changes (default 2 s).
    pub file_poll: Duration,
    /// First retry delay after a failed load (default 500 ms), doubled on each failure.
    pub initial_backoff: Duration,
    /// Longest retry delay after failed loads (default 30 s).
    pub max_backoff: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            default_refresh: Duration::from_secs(3600),
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(24 * 3600),
            min_refetch_interval: Duration::from_secs(60),
            // Callers are workers answering a server that waits at most its auth timeout (2 s by
            // default). The wait counts from when the refetch was asked for, so however many
            // tokens name unknown key ids, together they hold each worker at most this long per
            // refetch; a source slower than this costs the first token with a new key one denial.
            refetch_wait: DEFAULT_REFETCH_WAIT,
            file_poll: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Default of [`JwksSettings::refetch_wait`] (`JWKS_REFETCH_WAIT`).
pub const DEFAULT_REFETCH_WAIT: Duration = Duration::from_millis(500);

/// Whether a load re-reads an unchanged key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LoadKind {
    /// Skip the read when the file's stamp is unchanged (the periodic poll).
    IfChanged,
    /// Always read or fetch.
    Always,
}

/// What a successful load did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LoadOutcome {
    /// The key file has not changed since the last read.
    Unchanged,
    /// A key set was loaded and installed.
    Loaded { max_age: Option<Duration> },
}

/// State that only a load touches; its mutex also makes loads one at a time, so an older fetch
/// can never overwrite the result of a newer one.
#[derive(Default)]
struct LoadState {
    file_stamp: Option<FileStamp>,
}

/// Bookkeeping for refetches on an unknown key id.
#[derive(Default)]
struct RefetchGate {
    /// When the last refetch was asked for (the rate limit counts from there, failed or not).
    last_asked: Option<Instant>,
    /// When the refetch not finished yet was asked for: other callers wait for that one (until
    /// this instant plus `refetch_wait`) instead of asking for their own.
    pending: Option<Instant>,
    /// Number of refetches finished, so waiters can tell theirs has completed.
    completed: u64,
}

/// The current key set and everything needed to keep it current.
pub struct JwksStore {
    pub(super) source: JwksSource,
    pub(super) settings: JwksSettings,
    current: RwLock<Arc<KeySet>>,
    /// SHA-256 of the document the set in use came from, and how many times it has differed from
    /// the one before: verified tokens are remembered per generation (see `crate::verified`).
    fingerprint: Mutex<Option<[u8; 32]>>,
    generation: AtomicU64,
    loaded: AtomicBool,
    load_state: Mutex<LoadState>,
    refetch_gate: Mutex<RefetchGate>,
    refetch_done: Condvar,
    /// Wakes the refresher thread to refetch; set once by [`JwksStore::spawn_refresher`]. Without
    /// a refresher nobody refetches, and an unknown key id is refused at once.
    refetch_signal: OnceLock<Sender<()>>,
    pub(super) metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

impl fmt::Debug for JwksStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksStore")
            .field("source", &self.source)
            .field("keys", &self.current.read().kids())
            .finish()
    }
}

impl JwksStore {
    /// A store with no keys yet; [`JwksStore::spawn_refresher`] loads them (or call
    /// [`JwksStore::reload`]).
    pub fn new(
        source: JwksSource,
        settings: JwksSettings,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> JwksStore {
        JwksStore {
            source,
            settings,
            current: RwLock::new(Arc::new(KeySet::empty())),
            fingerprint: Mutex::new(None),
            generation: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            load_state: Mutex::new(LoadState::default()),
            refetch_gate: Mutex::new(RefetchGate::default()),
            refetch_done: Condvar::new(),
            refetch_signal: OnceLock::new(),
            metrics,
            readiness,
        }
    }

    /// A loaded store over a fixed JWKS document, with default settings and its own metrics and
    /// readiness: for tests and tools, no thread needed.
    pub fn from_jwks_json(json: &[u8]) -> Result<JwksStore, JwksError> {
        let store = JwksStore::new(
            JwksSource::Inline(json.to_vec()),
            JwksSettings::default(),
            Arc::new(Metrics::default()),
            Arc::new(Readiness::default()),
        );
        store.reload()?;
        Ok(store)
    }

    /// The key set in use (empty until the first successful load).
    pub fn keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read())
    }

    /// A number that changes whenever the key set changes (any byte of its document): a token
    /// verified under one generation is verified again under the next. Read it before
    /// verifying, so a change during verification makes the result stale rather than trusted.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether a key set has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
    }

    /// Loads the key set from the source now (re-reading a file even if unchanged); returns the
    /// number of keys. A failure is counted and logged, and the last good set stays in use.
    pub fn reload(&self) -> Result<usize, JwksError> {
        self.load(LoadKind::Always)?;
        Ok(self.keys().len())
    }

    /// Called by a validating worker when a token names a key id that is not in the set: asks
    /// the refresher thread for a refetch of the key set (at most one per
    /// `min_refetch_interval`, one at a time) and waits for it, but never longer than
    /// `refetch_wait` after that refetch was asked for; then returns the set in use.
    ///
    /// The worker itself never touches the network. Waiting is bounded from when the refetch was
    /// asked for, not from when each caller arrived: once a refetch has run for `refetch_wait`,
    /// further unknown key ids are answered at once, so a flood of them cannot hold the workers.
    pub fn refetch_for_unknown_kid(&self, kid: &str) -> Arc<KeySet> {
        // The set may have changed since the caller looked (a refresh or another refetch).
        let current = self.keys();
        if current.get(kid).is_some() {
            return current;
        }
        let Some(signal) = self.refetch_signal.get() else {
            // No refresher thread (a fixed set, a tool): nobody could refetch.
            return current;
        };
        drop(current);
        let mut gate = self.refetch_gate.lock();
        let asked_at = match gate.pending {
            // Someone already asked: wait for that result rather than asking again.
            Some(asked_at) => asked_at,
            None => {
                // Rate limit: a client sending random key ids must not turn into a stream of
                // fetches.
                if gate
                    .last_asked
                    .is_some_and(|last| last.elapsed() < self.settings.min_refetch_interval)
                {
                    debug!(
                        "jwks: unknown key id {:?}; last refetch was too recent, not refetching",
                        printable(kid, 80)
                    );
                    drop(gate);
                    return self.keys();
                }
                match signal.try_send(()) {
                    // Full: a wake-up is already queued, which serves this request as well.
                    Ok(()) | Err(TrySendError::Full(())) => {}
                    // The refresher has stopped (shutting down): nobody will refetch.
                    Err(TrySendError::Disconnected(())) => {
                        drop(gate);
                        return self.keys();
                    }
                }
                let now = Instant::now();
                gate.pending = Some(now);
                gate.last_asked = Some(now);
                info!(
                    "jwks: token names unknown key id {:?}; refetching the key set from {}",
                    printable(kid, 80),
                    self.source.describe()
                );
                now
            }
        };
        let seen = gate.completed;
        let deadline = asked_at + self.settings.refetch_wait;
        while gate.completed == seen {
            if self
                .refetch_done
                .wait_until(&mut gate, deadline)
                .timed_out()
            {
                break;
            }
        }
        drop(gate);
        self.keys()
    }

    /// The refresher's end of the refetch signal; the first call wires it up, later ones (a
    /// second refresher) get `None`.
    pub(super) fn take_refetch_signal(&self) -> Option<Receiver<()>> {
        // One slot: a wake-up already queued covers every later request until it is taken.
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.refetch_signal.set(tx).ok().map(|()| rx)
    }

    /// Runs the refetch a worker asked for (on the refresher thread), then wakes the workers
    /// waiting for it.
    pub(super) fn refetch(&self) {
        // Clears the pending mark and wakes the waiters even if the load panics.
        let _done = RefetchDone { store: self };
        // A failure is logged and counted by `load`; the last good set stays.
        let _ = self.load(LoadKind::Always);
    }

    /// One load from the source, counted in the metrics and logged.
    pub(super) fn load(&self, kind: LoadKind) -> Result<LoadOutcome, JwksError> {
        let mut state = self.load_state.lock();
        match self.load_locked(kind, &mut state) {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                self.metrics.jwks_refresh_failures.inc();
                if self.is_loaded() {
                    warn!(
                        "jwks: loading keys from {} failed: {e}; keeping the last good key set",
                        self.source.describe()
                    );
                } else {
                    warn!(
                        "jwks: loading keys from {} failed: {e}; not ready until a key set loads",
                        self.source.describe()
                    );
                }
                Err(e)
            }
        }
    }

    fn load_locked(&self, kind: LoadKind, state: &mut LoadState) -> Result<LoadOutcome, JwksError> {
        let (body, max_age) = match &self.source {
            JwksSource::File(path) => {
                let read_error = |error| JwksError::ReadFile {
                    path: path.clone(),
                    error,
                };
                let stamp = FileStamp::of(path).map_err(read_error)?;
                if kind == LoadKind::IfChanged && state.file_stamp == Some(stamp) {
                    return Ok(LoadOutcome::Unchanged);
                }
                // Stat before read: if the file changes in between, the next poll sees a new
                // stamp and reads again. The stamp is kept even if parsing fails, so a broken
                // file is reported once per change rather than on every poll.
                state.file_stamp = Some(stamp);
                let body = read_bounded(path, MAX_JWKS_BYTES).map_err(|e| match e {
                    ReadError::Io(error) => read_error(error),
                    ReadError::TooLarge { .. } => JwksError::TooLarge,
                })?;
                (body, None)
            }
            JwksSource::Remote(fetcher) => {
                let fetched = fetcher.fetch()?;
                if fetched.body.len() as u64 > MAX_JWKS_BYTES {
                    return Err(JwksError::TooLarge);
                }
                (fetched.body, fetched.max_age)
            }
            JwksSource::Inline(body) => (body.clone(), None),
        };
        let set = KeySet::parse(&body)?;
        self.install(set, Sha256::digest(&body).into());
        Ok(LoadOutcome::Loaded { max_age })
    }

    /// Swaps a freshly loaded set in whole, then updates metrics, readiness and the log.
    fn install(&self, set: KeySet, fingerprint: [u8; 32]) {
        let count = set.len();
        let new = Arc::new(set);
        let old = {
            let mut current = self.current.write();
            // Under the write lock, so no token is verified with the new set and remembered
            // under the old generation.
            if self.fingerprint.lock().replace(fingerprint) != Some(fingerprint) {
                self.generation.fetch_add(1, Ordering::SeqCst);
            }
            std::mem::replace(&mut *current, Arc::clone(&new))
        };
        self.metrics.jwks_refreshes.inc();
        self.metrics
            .jwks_keys
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        let source = self.source.describe();
        if !self.loaded.swap(true, Ordering::SeqCst) {
            self.readiness.set_jwks_loaded(true);
            info!(
                "jwks: loaded {count} keys from {source} (key ids: {:?})",
                new.kids()
            );
            return;
        }
        let before = old.kids();
        let after = new.kids();
        let added: Vec<&str> = after
            .iter()
            .filter(|k| !before.contains(k))
            .copied()
            .collect();
        let removed: Vec<&str> = before
            .iter()
            .filter(|k| !after.contains(k))
            .copied()
            .collect();
        if added.is_empty() && removed.is_empty() && old.len() == new.len() {
            debug!("jwks: refreshed {count} keys from {source}, unchanged");
        } else {
            info!(
                "jwks: key set from {source} changed: {count} keys, added {added:?}, removed {removed:?}"
            );
        }
    }
}

/// Held while a refetch runs; dropping it ends the refetch: clears the pending mark and wakes
/// the callers waiting for it.
struct RefetchDone<'a> {
    store: &'a JwksStore,
}

impl Drop for RefetchDone<'_> {
    fn drop(&mut self) {
        let mut gate = self.store.refetch_gate.lock();
        gate.pending = None;
        gate.completed = gate.completed.wrapping_add(1);
        drop(gate);
        self.store.refetch_done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::jwks::testing::{
        fast_settings, file_store, kids, remote_store, running_store, wait_for, FakeFetcher,
    };
    use crate::identity::token::testkit::{jwks, TestKey};

    #[test]
    fn store_built_from_json_is_loaded() {
        let store = JwksStore::from_jwks_json(&jwks(&[&TestKey::es256("a")])).unwrap();
        assert!(store.is_loaded());
        assert_eq!(kids(&store), vec!["a"]);
    }

    #[test]
    fn first_success_sets_readiness_and_metrics() {
        let fetcher = FakeFetcher::failing();
        let metrics = Arc::new(Metrics::default());
        let readiness = Arc::new(Readiness::default());
        let store = JwksStore::new(
            JwksSource::Remote(Box::new(fetcher.clone())),
            fast_settings(),
            Arc::clone(&metrics),
            Arc::clone(&readiness),
        );
        assert!(store.reload().is_err());
        assert!(!store.is_loaded());
        assert!(readiness.missing().contains(&"jwks_loaded"));
        assert_eq!(metrics.jwks_refresh_failures.get(), 1);
        assert!(store.keys().is_empty());

        fetcher.serve(jwks(&[&TestKey::es256("a"), &TestKey::rsa("b")]));
        assert_eq!(store.reload().unwrap(), 2);
        assert!(store.is_loaded());
        assert!(!readiness.missing().contains(&"jwks_loaded"));
        assert_eq!(metrics.jwks_refreshes.get(), 1);
        assert_eq!(metrics.jwks_keys.get(), 2);
    }

    #[test]
    fn failed_refresh_keeps_the_last_good_set() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("good")]));
        let store = remote_store(&fetcher, fast_settings());
        store.reload().unwrap();
        for failure in [Some(504), None] {
            match failure {
                Some(status) => fetcher.fail(status),
                None => fetcher.serve(br#"{"keys":[]}"#.to_vec()),
            }
            assert!(store.reload().is_err());
            assert_eq!(kids(&store), vec!["good"]);
        }
        assert_eq!(store.metrics.jwks_refresh_failures.get(), 2);
        assert_eq!(store.metrics.jwks_keys.get(), 1);
    }

    #[test]
    fn unknown_kid_refetches_and_finds_the_rotated_key() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old")]));
        let store = running_store(&fetcher, fast_settings());
        fetcher.serve(jwks(&[&TestKey::es256("old"), &TestKey::es256("new")]));
        let keys = store.refetch_for_unknown_kid("new");
        assert!(keys.get("new").is_some());
        assert_eq!(fetcher.calls(), 2);
    }

    #[test]
    fn kid_that_arrived_meanwhile_needs_no_refetch() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old"), &TestKey::es256("new")]));
        let store = running_store(&fetcher, fast_settings());
        assert!(store.refetch_for_unknown_kid("new").get("new").is_some());
        assert_eq!(fetcher.calls(), 1);
    }

    #[test]
    fn unknown_kid_refetch_is_rate_limited() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old")]));
        let store = running_store(&fetcher, fast_settings());
        store.refetch_for_unknown_kid("x");
        store.refetch_for_unknown_kid("y");
        store.refetch_for_unknown_kid("z");
        assert_eq!(fetcher.calls(), 2, "one load plus one refetch");
    }

    #[test]
    fn failed_refetch_also_counts_against_the_rate_limit() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old")]));
        let store = running_store(&fetcher, fast_settings());
        fetcher.fail(500);
        assert_eq!(store.refetch_for_unknown_kid("x").kids(), vec!["old"]);
        store.refetch_for_unknown_kid("x");
        assert_eq!(fetcher.calls(), 2);
    }

    #[test]
    fn unknown_kid_refetches_again_after_the_interval() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old")]));
        let settings = JwksSettings {
            min_refetch_interval: Duration::from_millis(50),
            ..fast_settings()
        };
        let store = running_store(&fetcher, settings);
        store.refetch_for_unknown_kid("x");
        std::thread::sleep(Duration::from_millis(70));
        store.refetch_for_unknown_kid("x");
        assert_eq!(fetcher.calls(), 3);
    }

    #[test]
    fn concurrent_unknown_kids_share_one_refetch() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old")]));
        let store = running_store(&fetcher, fast_settings());
        let (release, released) = crossbeam_channel::bounded::<()>(0);
        fetcher.block_until(released);
        fetcher.serve(jwks(&[&TestKey::es256("new")]));
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || store.refetch_for_unknown_kid("new").kids().len())
            })
            .collect();
        // All four are in: the refresher fetching (blocked), the four callers waiting for it.
        wait_for("the refetch to start", || fetcher.calls() == 2);
        std::thread::sleep(Duration::from_millis(30));
        drop(release);
        for caller in callers {
            assert_eq!(caller.join().unwrap(), 1);
        }
        assert_eq!(fetcher.calls(), 2);
        assert_eq!(kids(&store), vec!["new"]);
    }

    /// Rule: the worker never waits on the network: with the source hanging, the caller that
    /// asked for the refetch and every caller after it get the set in use within `refetch_wait`
    /// of the request, and the refetch lands later in the background.
    #[test]
    fn waiting_for_a_hanging_refetch_is_bounded() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old")]));
        let settings = JwksSettings {
            refetch_wait: Duration::from_millis(50),
            ..fast_settings()
        };
        let store = running_store(&fetcher, settings);
        let (release, released) = crossbeam_channel::bounded::<()>(0);
        fetcher.block_until(released);
        fetcher.serve(jwks(&[&TestKey::es256("old"), &TestKey::es256("a")]));
        let started = Instant::now();
        assert_eq!(store.refetch_for_unknown_kid("a").kids(), vec!["old"]);
        assert!(started.elapsed() < Duration::from_secs(2));
        wait_for("the refetch to start", || fetcher.calls() == 2);
        let started = Instant::now();
        assert_eq!(store.refetch_for_unknown_kid("b").kids(), vec!["old"]);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(fetcher.calls(), 2, "no second refetch while one is running");
        drop(release);
        wait_for("the refetch to land", || kids(&store) == vec!["old", "a"]);
    }

    /// A flood of distinct unknown key ids while the source hangs: together the callers wait
    /// `refetch_wait` once, not once each (50 calls × 200 ms would be 10 s per thread).
    #[test]
    fn a_flood_of_unknown_kids_waits_once_per_refetch_not_once_per_token() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old")]));
        let settings = JwksSettings {
            refetch_wait: Duration::from_millis(200),
            min_refetch_interval: Duration::from_millis(100),
            ..fast_settings()
        };
        let store = running_store(&fetcher, settings);
        let (release, released) = crossbeam_channel::bounded::<()>(0);
        fetcher.block_until(released);
        let started = Instant::now();
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        store.refetch_for_unknown_kid(&format!("nope-{w}-{i}"));
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(fetcher.calls(), 2, "one load plus the one hanging refetch");
        drop(release);
    }

    #[test]
    fn unknown_kid_without_a_refresher_is_answered_at_once() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old")]));
        let store = remote_store(&fetcher, fast_settings());
        store.reload().unwrap();
        let started = Instant::now();
        assert_eq!(store.refetch_for_unknown_kid("x").kids(), vec!["old"]);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(fetcher.calls(), 1);
    }

    #[test]
    fn broken_key_file_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks(&[&TestKey::es256("good")])).unwrap();
        let store = file_store(&path);
        store.reload().unwrap();
        std::fs::write(&path, b"{ half written").unwrap();
        assert!(store.reload().is_err());
        assert_eq!(kids(&store), vec!["good"]);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(store.reload(), Err(JwksError::ReadFile { .. })));
        assert_eq!(kids(&store), vec!["good"]);
    }

    #[test]
    fn oversize_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, vec![b' '; MAX_JWKS_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            file_store(&path).reload(),
            Err(JwksError::TooLarge)
        ));
    }
}
