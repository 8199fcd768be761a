//! Test doubles shared by the JWKS tests: a scriptable fetcher and stores built over it.

use std::ops::Deref;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use super::{FetchError, FetchedJwks, JwksFetcher, JwksSettings, JwksSource, JwksStore};
use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// A fetcher whose answer the test changes, counting its calls; optionally blocking until
/// released so that concurrent refetches can be observed.
#[derive(Clone)]
pub(crate) struct FakeFetcher(Arc<FakeInner>);

struct FakeInner {
    /// The document, or the status code of a failed fetch.
    answer: Mutex<Result<FetchedJwks, u16>>,
    calls: AtomicUsize,
    /// While set, each fetch waits (up to 5 s) until this channel is released.
    release: Mutex<Option<Receiver<()>>>,
}

impl FakeFetcher {
    pub(crate) fn serving(body: Vec<u8>) -> FakeFetcher {
        FakeFetcher(Arc::new(FakeInner {
            answer: Mutex::new(Ok(FetchedJwks {
                body,
                max_age: None,
            })),
            calls: AtomicUsize::new(0),
            release: Mutex::new(None),
        }))
    }
    pub(crate) fn failing() -> FakeFetcher {
        let f = FakeFetcher::serving(Vec::new());
        f.fail(503);
        f
    }
    pub(crate) fn serve(&self, body: Vec<u8>) {
        *self.0.answer.lock() = Ok(FetchedJwks {
            body,
            max_age: None,
        });
    }
    pub(crate) fn serve_with_max_age(&self, body: Vec<u8>, max_age: Duration) {
        *self.0.answer.lock() = Ok(FetchedJwks {
            body,
            max_age: Some(max_age),
        });
    }
    /// Fetches fail from now on as if the server answered `status`.
    pub(crate) fn fail(&self, status: u16) {
        *self.0.answer.lock() = Err(status);
    }
    pub(crate) fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }
    pub(crate) fn block_until(&self, release: Receiver<()>) {
        *self.0.release.lock() = Some(release);
    }
}

impl JwksFetcher for FakeFetcher {
    fn fetch(&self) -> Result<FetchedJwks, FetchError> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let release = self.0.release.lock().clone();
        if let Some(release) = release {
            let _ = release.recv_timeout(Duration::from_secs(5));
        }
        self.0
            .answer
            .lock()
            .clone()
            .map_err(|code| FetchError::HttpStatus { code })
    }
    fn describe(&self) -> String {
        "fake".to_string()
    }
}

pub(crate) fn fast_settings() -> JwksSettings {
    JwksSettings {
        default_refresh: Duration::from_secs(3600),
        min_refresh: Duration::from_millis(10),
        max_refresh: Duration::from_secs(3600),
        min_refetch_interval: Duration::from_secs(60),
        refetch_wait: Duration::from_secs(5),
        file_poll: Duration::from_millis(20),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
    }
}

pub(crate) fn remote_store(fetcher: &FakeFetcher, settings: JwksSettings) -> Arc<JwksStore> {
    Arc::new(JwksStore::new(
        JwksSource::Remote(Box::new(fetcher.clone())),
        settings,
        Arc::new(Metrics::default()),
        Arc::new(Readiness::default()),
    ))
}

/// A store with its refresher thread running (which also runs the refetches workers ask for),
/// its first load done; the thread is stopped and joined when this is dropped.
pub(crate) struct RunningStore {
    store: Arc<JwksStore>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Deref for RunningStore {
    type Target = Arc<JwksStore>;
    fn deref(&self) -> &Arc<JwksStore> {
        &self.store
    }
}

impl Drop for RunningStore {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// [`remote_store`] with its refresher running and the first load (one fetch) done.
pub(crate) fn running_store(fetcher: &FakeFetcher, settings: JwksSettings) -> RunningStore {
    let store = remote_store(fetcher, settings);
    let (stop, stopped) = crossbeam_channel::bounded(1);
    let thread = store.spawn_refresher(stopped);
    wait_for("the first load", || store.is_loaded());
    RunningStore {
        store,
        stop: Some(stop),
        thread: Some(thread),
    }
}

pub(crate) fn file_store(path: &Path) -> Arc<JwksStore> {
    Arc::new(JwksStore::new(
        JwksSource::File(path.to_path_buf()),
        fast_settings(),
        Arc::new(Metrics::default()),
        Arc::new(Readiness::default()),
    ))
}

pub(crate) fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub(crate) fn kids(store: &JwksStore) -> Vec<String> {
    store.keys().kids().iter().map(|k| k.to_string()).collect()
}

pub(crate) fn jwk_set(keys: &[serde_json::Value]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
}
