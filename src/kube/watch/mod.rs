//! List + watch of a cluster-wide collection (every ServiceAccount, or every Pod for the pod
//! binding check), keeping its store current. What differs between collections (path, decoding,
//! the store, metrics) is a [`Collection`]; the loop is the same.
//!
//! The loop is a private state machine: `State` holds only what each phase needs and one
//! `step` function moves it on, returning at most one `Output` for the driver to act on
//! (replace the cache, apply a change, back off). The I/O sits behind the small `WatchApi`
//! trait so the machine can be fed scripted sequences in tests. Backoff lives in the driver.
//!
//! - A paginated list (`limit`, `continue`) is built page by page into a new map (sharing the
//!   accounts the cache holds unchanged) and swapped into the cache whole.
//! - The watch starts from the list's resourceVersion, with bookmarks and `timeoutSeconds`.
//! - A stream that ends (cleanly or not) is watched again from the last resourceVersion seen.
//! - `410 Gone` on the watch (HTTP or in-stream `ERROR`) relists; on a list page it restarts the
//!   list. The old cache keeps serving until the new list is complete.
//! - Other errors back off: 800 ms doubling to 30 s with jitter, reset after 2 min without one,
//!   never less than the server's `Retry-After`.

use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use log::{debug, info, warn};
use serde::de::DeserializeOwned;

use self::http::ClientApi;
use super::cache::{CacheBuilder, Change, ServiceAccountCache};
use super::{
    stop_requested, wait_or_stop, ApiClient, ApiStatus, KubeError, RawObject, ServiceAccount,
};
use crate::backoff::Backoff;
pub use crate::backoff::BackoffSettings;
use crate::metrics::Metrics;
use crate::readiness::Readiness;

mod http;

/// Decodes one line of a watch stream as the watch loop does, as a ServiceAccount event and as a
/// Pod event; whether either was an event (the fuzz target's entry point).
pub(crate) fn decode_watch_line(line: &[u8]) -> bool {
    let account = http::parse_watch_line::<ServiceAccountCache>(line).is_ok();
    let pod = http::parse_watch_line::<super::PodCache>(line).is_ok();
    account || pod
}

/// How long the driver waits for a stream item before it checks for stop.
const STREAM_POLL: Duration = Duration::from_millis(500);
/// Events buffered between a watch stream's reader thread and the loop.
const STREAM_BUFFER: usize = 64;
/// How long the cache may go without following the cluster before each failure's log line says
/// for how long (deletions and annotation changes since are not seen).
const STALE_AFTER: Duration = Duration::from_secs(60);

/// Settings of the list + watch loop.
#[derive(Clone, Debug)]
pub struct WatchSettings {
    /// Items per list page (`limit`). Default: 500.
    pub page_size: u32,
    /// Server-side watch duration (`timeoutSeconds`). Default: 290.
    pub timeout_seconds: u64,
    /// Bound on one list page request. Default: 60 s.
    pub list_timeout: Duration,
    /// Added to `timeout_seconds` for the per-read timeout of a watch stream. Default: 15 s.
    pub read_margin: Duration,
    /// A watch that ends sooner than this with no event counts as a failure. Default: 1 s.
    pub very_short_watch: Duration,
    /// Backoff between failures.
    pub backoff: BackoffSettings,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            page_size: 500,
            timeout_seconds: 290,
            list_timeout: Duration::from_secs(60),
            read_margin: Duration::from_secs(15),
            very_short_watch: Duration::from_secs(1),
            backoff: BackoffSettings::default(),
        }
    }
}

impl WatchSettings {
    /// Per-read timeout of a watch stream: longer than the server's own deadline.
    fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds) + self.read_margin
    }
}

/// A collection the loop lists and watches: where it is, how its objects are read, the store
/// they go to, and what the loop reports.
pub(crate) trait Collection: Send + Sync + 'static {
    /// An object as the store keeps it.
    type Object: fmt::Debug + Send + 'static;
    /// A complete list under construction, before it replaces the store's content.
    type Builder: Send + 'static;
    /// An object as read from a list page or a watch event.
    type Raw: DeserializeOwned + fmt::Debug + Send + 'static;
    /// The cluster-wide collection's path.
    const PATH: &'static str;
    /// The kind, for log lines.
    const KIND: &'static str;
    /// Whether lists and watches ask for metadata only (`PartialObjectMetadata`).
    const METADATA_ONLY: bool;

    /// A raw object's resourceVersion, if it has one.
    fn raw_resource_version(raw: &Self::Raw) -> Option<&str>;
    /// Reads a raw object, or says why it cannot be kept.
    fn decode(raw: Self::Raw) -> Result<Self::Object, &'static str>;
    /// An empty list.
    fn new_builder() -> Self::Builder;
    /// Adds a page's objects to `builder`, sharing what `previous` holds unchanged.
    fn add(builder: &mut Self::Builder, items: Vec<Self::Object>, previous: Option<&Self>);
    /// How many objects `builder` holds.
    fn builder_len(builder: &Self::Builder) -> usize;
    /// Replaces the store's content with a complete list.
    fn replace(&self, builder: Self::Builder);
    /// Applies one watch change.
    fn apply(&self, change: Change<Self::Object>);
    /// Called when the store follows the cluster again (listed, or a watch open).
    fn followed(&self, metrics: &Metrics);
    /// Called after each complete list.
    fn listed(&self, metrics: &Metrics, readiness: &Readiness);
    /// Called when a watch ends and is opened again.
    fn watch_restarted(&self, metrics: &Metrics);
}

/// The ServiceAccounts, kept as their metadata.
impl Collection for ServiceAccountCache {
    type Object = ServiceAccount;
    type Builder = CacheBuilder;
    type Raw = RawObject;
    const PATH: &'static str = "/api/v1/serviceaccounts";
    const KIND: &'static str = "ServiceAccount";
    const METADATA_ONLY: bool = true;

    fn raw_resource_version(raw: &RawObject) -> Option<&str> {
        raw.resource_version()
    }
    fn decode(raw: RawObject) -> Result<ServiceAccount, &'static str> {
        raw.into_service_account(None).map_err(|p| p.describe())
    }
    fn new_builder() -> CacheBuilder {
        CacheBuilder::new()
    }
    fn add(builder: &mut CacheBuilder, items: Vec<ServiceAccount>, previous: Option<&Self>) {
        builder.add(items, previous);
    }
    fn builder_len(builder: &CacheBuilder) -> usize {
        builder.len()
    }
    fn replace(&self, builder: CacheBuilder) {
        self.replace_with(builder);
    }
    fn apply(&self, change: Change) {
        ServiceAccountCache::apply(self, change);
    }
    fn followed(&self, metrics: &Metrics) {
        metrics.cache_current.set(crate::unix_now());
    }
    fn listed(&self, metrics: &Metrics, readiness: &Readiness) {
        metrics.cache_relists.inc();
        // Ready after the first complete list; later relists keep it ready because the
        // previous content served until this swap.
        readiness.set_cache_synced(true);
    }
    fn watch_restarted(&self, metrics: &Metrics) {
        metrics.watch_restarts.inc();
    }
}

// ---------------------------------------------------------------------------------------------
// The I/O seam

/// One page of a list.
#[derive(Debug)]
struct ListPage<T = ServiceAccount> {
    items: Vec<T>,
    resource_version: String,
    /// Empty or `None` on the last page.
    continue_token: Option<String>,
}

/// One decoded watch event.
#[derive(Debug)]
enum WatchEvent<T = ServiceAccount> {
    /// ADDED, MODIFIED or DELETED.
    Change {
        change: Change<T>,
        resource_version: Option<String>,
    },
    /// BOOKMARK: only the resourceVersion moves.
    Bookmark { resource_version: String },
    /// An event whose object could not be read (skipped).
    Skipped { resource_version: Option<String> },
    /// ERROR with a Status object.
    Error(ApiStatus),
}

/// What reading a watch stream produced.
#[derive(Debug)]
enum StreamItem<T = ServiceAccount> {
    Event(WatchEvent<T>),
    /// Nothing arrived within the poll interval; the stream is still open.
    Idle,
    /// The server ended the stream.
    Closed,
    /// The stream broke (reset, read timeout, undecodable line).
    Broken(KubeError),
}

/// An open watch stream of objects `T`.
trait EventStream<T> {
    /// The next item; waits at most a short poll interval.
    fn next_item(&mut self) -> StreamItem<T>;
}

/// The API calls of the loop for objects `T`, and its clock.
trait WatchApi<T> {
    type Stream: EventStream<T>;
    /// Lists one page, from the start (`None`) or from a continue token.
    fn list_page(&mut self, continue_token: Option<&str>) -> Result<ListPage<T>, KubeError>;
    /// Opens a watch from `resource_version`.
    fn watch(&mut self, resource_version: &str) -> Result<Self::Stream, KubeError>;
    /// The current time.
    fn now(&self) -> Instant;
}

// ---------------------------------------------------------------------------------------------
// The state machine

/// Where the loop is. Each variant holds only what that phase needs.
enum State<S, B = CacheBuilder> {
    /// Nothing listed (start, or after a 410): list from the beginning.
    Empty,
    /// A list is under way: the pages so far, and the token of the next one.
    InitPage { continue_token: String, objects: B },
    /// Listed (or a watch ended): open a watch from this resourceVersion.
    InitListed { resource_version: String },
    /// A watch is open.
    Watching {
        resource_version: String,
        stream: S,
        opened: Instant,
        events: u64,
    },
}

/// Why the loop must wait before its next step.
#[derive(Debug)]
enum Failure {
    /// A list page failed; the same page is retried.
    List(KubeError),
    /// The continue token expired (410); the list starts again.
    ListExpired,
    /// Opening the watch failed; it is opened again from the same resourceVersion.
    WatchOpen(KubeError),
    /// Opening the watch was refused because the resourceVersion is too old (410) or unknown to
    /// the server: relist.
    ResourceVersionRefused(KubeError),
    /// The stream carried an ERROR 410: the resourceVersion is too old; relist.
    Expired,
    /// The stream carried an ERROR other than 410; the watch is opened again.
    WatchError(ApiStatus),
    /// The watch ended at once with no event; opened again.
    VeryShortWatch,
    /// The stream carried something undecodable; opened again after a pause so a bad event
    /// cannot make the loop spin.
    WatchUndecodable(KubeError),
}

impl Failure {
    /// The log text, for a collection of `kind`.
    fn describe(&self, kind: &str) -> String {
        match self {
            Failure::List(e) => format!("listing {kind}s failed: {e}"),
            Failure::ListExpired => "list continue token expired; listing again".to_owned(),
            Failure::WatchOpen(e) => format!("opening the {kind} watch failed: {e}"),
            Failure::ResourceVersionRefused(e) => {
                format!("watch resourceVersion no longer valid ({e}); relisting")
            }
            Failure::Expired => "watch resourceVersion expired; relisting".to_owned(),
            Failure::WatchError(status) => format!("{kind} watch error: {status}"),
            Failure::VeryShortWatch => format!("{kind} watch ended at once without events"),
            Failure::WatchUndecodable(e) => format!("{kind} watch stream: {e}"),
        }
    }

    /// The wait the server asked for, if any.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::List(e)
            | Failure::WatchOpen(e)
            | Failure::ResourceVersionRefused(e)
            | Failure::WatchUndecodable(e) => e.retry_after(),
            Failure::WatchError(status) => status.retry_after(),
            Failure::ListExpired | Failure::Expired | Failure::VeryShortWatch => None,
        }
    }

    /// Whether an open watch ended with this failure (and is started again).
    fn ends_watch(&self) -> bool {
        matches!(
            self,
            Failure::WatchError(_) | Failure::VeryShortWatch | Failure::WatchUndecodable(_)
        )
    }
}

/// What a step asks the driver to do.
#[derive(Debug)]
enum Output<T = ServiceAccount, B = CacheBuilder> {
    /// A complete list: replace the cache with it.
    Listed {
        objects: B,
        resource_version: String,
    },
    /// One watch change: apply it.
    Applied(Change<T>),
    /// The watch ended after a healthy life; it is opened again at once from the last RV.
    WatchEnded(Option<KubeError>),
    /// Something failed; wait before the next step.
    Failed(Failure),
}

/// Moves the loop one step as [`step_with`] does, with no previous content to share.
#[cfg(test)]
fn step<A: WatchApi<ServiceAccount>>(
    state: State<A::Stream>,
    api: &mut A,
    very_short_watch: Duration,
) -> (State<A::Stream>, Option<Output>) {
    step_with::<ServiceAccountCache, A>(state, api, very_short_watch, None)
}

/// Shorthand for the loop's state and output types of collection `C` read through API `A`.
type StepResult<C, A> = (
    State<<A as WatchApi<<C as Collection>::Object>>::Stream, <C as Collection>::Builder>,
    Option<Output<<C as Collection>::Object, <C as Collection>::Builder>>,
);

/// Moves the loop one step: at most one request or one stream item, at most one output. A list
/// page's objects that `previous` holds unchanged are shared with it.
fn step_with<C: Collection, A: WatchApi<C::Object>>(
    state: State<A::Stream, C::Builder>,
    api: &mut A,
    very_short_watch: Duration,
    previous: Option<&C>,
) -> StepResult<C, A> {
    match state {
        State::Empty => match api.list_page(None) {
            Ok(page) => after_page(C::new_builder(), page, previous),
            Err(e) => (State::Empty, Some(Output::Failed(Failure::List(e)))),
        },
        State::InitPage {
            continue_token,
            objects,
        } => match api.list_page(Some(&continue_token)) {
            Ok(page) => after_page(objects, page, previous),
            // The continue token expired (about 5 min): the buffered pages are dropped and the
            // list starts over; the cache keeps serving the previous complete list meanwhile.
            Err(e) if e.is_gone() => (State::Empty, Some(Output::Failed(Failure::ListExpired))),
            Err(e) => (
                State::InitPage {
                    continue_token,
                    objects,
                },
                Some(Output::Failed(Failure::List(e))),
            ),
        },
        State::InitListed { resource_version } => match api.watch(&resource_version) {
            Ok(stream) => (
                State::Watching {
                    resource_version,
                    stream,
                    opened: api.now(),
                    events: 0,
                },
                None,
            ),
            Err(e) if e.is_gone() || e.is_too_large_resource_version() => (
                State::Empty,
                Some(Output::Failed(Failure::ResourceVersionRefused(e))),
            ),
            Err(e) => (
                State::InitListed { resource_version },
                Some(Output::Failed(Failure::WatchOpen(e))),
            ),
        },
        State::Watching {
            mut resource_version,
            mut stream,
            opened,
            mut events,
        } => {
            let item = stream.next_item();
            let output = match item {
                StreamItem::Idle => None,
                StreamItem::Event(WatchEvent::Error(status)) => {
                    drop(stream);
                    return if status.code == Some(410) {
                        (State::Empty, Some(Output::Failed(Failure::Expired)))
                    } else {
                        (
                            State::InitListed { resource_version },
                            Some(Output::Failed(Failure::WatchError(status))),
                        )
                    };
                }
                StreamItem::Event(WatchEvent::Change {
                    change,
                    resource_version: rv,
                }) => {
                    events += 1;
                    if let Some(rv) = rv.filter(|rv| !rv.is_empty()) {
                        resource_version = rv;
                    }
                    Some(Output::Applied(change))
                }
                StreamItem::Event(WatchEvent::Bookmark {
                    resource_version: rv,
                }) => {
                    // A bookmark only moves the resourceVersion.
                    events += 1;
                    if !rv.is_empty() {
                        resource_version = rv;
                    }
                    None
                }
                StreamItem::Event(WatchEvent::Skipped {
                    resource_version: rv,
                }) => {
                    events += 1;
                    if let Some(rv) = rv.filter(|rv| !rv.is_empty()) {
                        resource_version = rv;
                    }
                    None
                }
                StreamItem::Closed | StreamItem::Broken(_) => {
                    drop(stream);
                    let lived = api.now().saturating_duration_since(opened);
                    let cause = match item {
                        StreamItem::Broken(e) => Some(e),
                        _ => None,
                    };
                    let output = match cause {
                        Some(e @ (KubeError::Decode(_) | KubeError::BodyTooLarge { .. })) => {
                            Output::Failed(Failure::WatchUndecodable(e))
                        }
                        cause if events == 0 && lived < very_short_watch => {
                            if let Some(e) = &cause {
                                debug!("very short {} watch broke: {e}", C::KIND);
                            }
                            Output::Failed(Failure::VeryShortWatch)
                        }
                        cause => Output::WatchEnded(cause),
                    };
                    return (State::InitListed { resource_version }, Some(output));
                }
            };
            (
                State::Watching {
                    resource_version,
                    stream,
                    opened,
                    events,
                },
                output,
            )
        }
    }
}

/// Adds a page to the list under construction; the last page completes it.
#[allow(clippy::type_complexity)]
fn after_page<S, C: Collection>(
    mut objects: C::Builder,
    page: ListPage<C::Object>,
    previous: Option<&C>,
) -> (State<S, C::Builder>, Option<Output<C::Object, C::Builder>>) {
    C::add(&mut objects, page.items, previous);
    match page.continue_token.filter(|t| !t.is_empty()) {
        Some(continue_token) => (
            State::InitPage {
                continue_token,
                objects,
            },
            None,
        ),
        None => (
            State::InitListed {
                resource_version: page.resource_version.clone(),
            },
            Some(Output::Listed {
                objects,
                resource_version: page.resource_version,
            }),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The driver

/// Runs the loop until stop: each step's output goes to the store, the metrics and readiness.
fn run<C: Collection, A: WatchApi<C::Object>>(
    api: &mut A,
    store: &C,
    readiness: &Readiness,
    metrics: &Metrics,
    settings: &WatchSettings,
    stop: &Receiver<()>,
) {
    let kind = C::KIND;
    let mut backoff = Backoff::new(settings.backoff.clone());
    let mut state = State::Empty;
    // When the store last followed the cluster (start counts: nothing was missed before it).
    let mut followed = api.now();
    loop {
        if stop_requested(stop) {
            debug!("{kind} watch stopping");
            return;
        }
        let (next, output) = step_with(state, api, settings.very_short_watch, Some(store));
        state = next;
        if matches!(state, State::Watching { .. }) || matches!(output, Some(Output::Listed { .. }))
        {
            followed = api.now();
            store.followed(metrics);
        }
        match output {
            None => {}
            Some(Output::Listed {
                objects,
                resource_version,
            }) => {
                let count = C::builder_len(&objects);
                store.replace(objects);
                store.listed(metrics, readiness);
                info!("listed {count} {kind}s at resourceVersion {resource_version}");
            }
            Some(Output::Applied(change)) => store.apply(change),
            Some(Output::WatchEnded(cause)) => {
                store.watch_restarted(metrics);
                match cause {
                    Some(e) => info!("{kind} watch broke ({e}); watching again"),
                    None => debug!("{kind} watch ended; watching again"),
                }
            }
            Some(Output::Failed(failure)) => {
                if failure.ends_watch() {
                    store.watch_restarted(metrics);
                }
                let delay = backoff.delay(api.now(), failure.retry_after(), fastrand::f64());
                let why = failure.describe(kind);
                match failure {
                    Failure::ListExpired
                    | Failure::Expired
                    | Failure::ResourceVersionRefused(_) => {
                        info!("{why}; next attempt in {delay:?}")
                    }
                    _ => {
                        let stale = api.now().saturating_duration_since(followed);
                        if stale >= STALE_AFTER {
                            warn!(
                                "{why}; retrying in {delay:?} (the {kind} cache has not followed the cluster for {}s: deletions and changes since are not seen)",
                                stale.as_secs()
                            )
                        } else {
                            warn!("{why}; retrying in {delay:?}")
                        }
                    }
                }
                if wait_or_stop(stop, delay) {
                    debug!("{kind} watch stopping");
                    return;
                }
            }
        }
    }
}

/// Starts the thread that lists and watches ServiceAccounts into `cache` until `stop` receives a
/// message or every sender of it is dropped. Readiness `cache_synced` is set after the first
/// complete list. Stopping takes at most about half a second while watching, or the remainder
/// of an in-flight list request. Relists and watch restarts are counted in `metrics`.
pub fn spawn_watcher(
    client: Arc<ApiClient>,
    cache: Arc<ServiceAccountCache>,
    settings: WatchSettings,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    stop: Receiver<()>,
) -> JoinHandle<()> {
    spawn_collection_watcher(client, cache, settings, readiness, metrics, stop)
}

/// Starts the thread that lists and watches pods into `pods` until `stop` fires, for the pod
/// binding check. Readiness `pods_synced` is set after the first complete list.
pub fn spawn_pod_watcher(
    client: Arc<ApiClient>,
    pods: Arc<super::PodCache>,
    settings: WatchSettings,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    stop: Receiver<()>,
) -> JoinHandle<()> {
    spawn_collection_watcher(client, pods, settings, readiness, metrics, stop)
}

/// Starts the thread that lists and watches collection `C` into `store` until `stop` receives a
/// message or every sender of it is dropped.
fn spawn_collection_watcher<C: Collection>(
    client: Arc<ApiClient>,
    store: Arc<C>,
    settings: WatchSettings,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    stop: Receiver<()>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut api = ClientApi::<C>::new(client, settings.clone());
        run(&mut api, &*store, &readiness, &metrics, &settings, &stop);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::collections::VecDeque;

    fn page(
        items: Vec<ServiceAccount>,
        rv: &str,
        cont: Option<&str>,
    ) -> Result<ListPage, KubeError> {
        Ok(ListPage {
            items,
            resource_version: rv.into(),
            continue_token: cont.map(str::to_owned),
        })
    }

    fn status(code: u16, retry_after: Option<u64>) -> KubeError {
        KubeError::Status {
            code,
            reason: None,
            message: None,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn upsert(s: ServiceAccount, rv: &str) -> Script {
        Script::Item(StreamItem::Event(WatchEvent::Change {
            change: Change::Upsert(s),
            resource_version: Some(rv.into()),
        }))
    }

    fn delete(s: ServiceAccount, rv: &str) -> Script {
        Script::Item(StreamItem::Event(WatchEvent::Change {
            change: Change::Delete(s),
            resource_version: Some(rv.into()),
        }))
    }

    fn bookmark(rv: &str) -> Script {
        Script::Item(StreamItem::Event(WatchEvent::Bookmark {
            resource_version: rv.into(),
        }))
    }

    fn stream_error(code: u16) -> Script {
        Script::Item(StreamItem::Event(WatchEvent::Error(ApiStatus {
            code: Some(code),
            reason: Some("Expired".into()),
            ..ApiStatus::default()
        })))
    }

    /// One scripted stream step: an item, or time passing on the fake clock.
    enum Script {
        Item(StreamItem),
        Sleep(Duration),
    }

    struct FakeStream {
        script: VecDeque<Script>,
        clock: Arc<Mutex<Instant>>,
    }

    impl EventStream<ServiceAccount> for FakeStream {
        fn next_item(&mut self) -> StreamItem {
            loop {
                match self.script.pop_front() {
                    Some(Script::Sleep(d)) => *self.clock.lock() += d,
                    Some(Script::Item(item)) => return item,
                    None => return StreamItem::Closed,
                }
            }
        }
    }

    /// A scripted API: answers list and watch calls in order and records what was asked.
    struct FakeApi {
        lists: VecDeque<Result<ListPage, KubeError>>,
        watches: VecDeque<Result<Vec<Script>, KubeError>>,
        clock: Arc<Mutex<Instant>>,
        list_calls: Vec<Option<String>>,
        watch_calls: Vec<String>,
        /// Dropped when the script runs out, which stops the driver.
        stop: Option<crossbeam_channel::Sender<()>>,
    }

    impl FakeApi {
        fn new() -> FakeApi {
            FakeApi {
                lists: VecDeque::new(),
                watches: VecDeque::new(),
                clock: Arc::new(Mutex::new(Instant::now())),
                list_calls: Vec::new(),
                watch_calls: Vec::new(),
                stop: None,
            }
        }
        fn list(mut self, r: Result<ListPage, KubeError>) -> Self {
            self.lists.push_back(r);
            self
        }
        fn watch_ok(mut self, script: Vec<Script>) -> Self {
            self.watches.push_back(Ok(script));
            self
        }
        fn watch_err(mut self, e: KubeError) -> Self {
            self.watches.push_back(Err(e));
            self
        }
        fn exhausted(&mut self) -> KubeError {
            self.stop = None;
            status(599, None)
        }
    }

    impl WatchApi<ServiceAccount> for FakeApi {
        type Stream = FakeStream;
        fn list_page(&mut self, continue_token: Option<&str>) -> Result<ListPage, KubeError> {
            self.list_calls.push(continue_token.map(str::to_owned));
            match self.lists.pop_front() {
                Some(r) => r,
                None => Err(self.exhausted()),
            }
        }
        fn watch(&mut self, resource_version: &str) -> Result<FakeStream, KubeError> {
            self.watch_calls.push(resource_version.to_owned());
            match self.watches.pop_front() {
                Some(Ok(script)) => Ok(FakeStream {
                    script: script.into(),
                    clock: self.clock.clone(),
                }),
                Some(Err(e)) => Err(e),
                None => Err(self.exhausted()),
            }
        }
        fn now(&self) -> Instant {
            *self.clock.lock()
        }
    }

    const SHORT: Duration = Duration::from_secs(1);
    const HEALTHY: Script = Script::Sleep(Duration::from_secs(30));

    /// Steps until an output appears (or `limit` steps pass).
    fn next_output(
        state: State<FakeStream>,
        api: &mut FakeApi,
    ) -> (State<FakeStream>, Option<Output>) {
        let mut state = state;
        for _ in 0..20 {
            let (next, out) = step(state, api, SHORT);
            state = next;
            if out.is_some() {
                return (state, out);
            }
        }
        (state, None)
    }

    fn rv_of<S>(state: &State<S>) -> Option<&str> {
        match state {
            State::InitListed { resource_version }
            | State::Watching {
                resource_version, ..
            } => Some(resource_version),
            _ => None,
        }
    }

    #[test]
    fn list_pages_are_buffered_and_delivered_whole() {
        let mut api = FakeApi::new()
            .list(page(
                vec![ServiceAccount::for_test("a", "1", "u1")],
                "100",
                Some("c1"),
            ))
            .list(page(
                vec![ServiceAccount::for_test("a", "2", "u2")],
                "100",
                Some("c2"),
            ))
            .list(page(
                vec![ServiceAccount::for_test("b", "3", "u3")],
                "100",
                None,
            ));
        let (s, out) = step(State::Empty, &mut api, SHORT);
        assert!(out.is_none(), "no output before the last page");
        let (s, out) = step(s, &mut api, SHORT);
        assert!(out.is_none());
        let (s, out) = step(s, &mut api, SHORT);
        match out {
            Some(Output::Listed {
                objects,
                resource_version,
            }) => {
                assert_eq!(objects.len(), 3);
                assert_eq!(resource_version, "100");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(rv_of(&s), Some("100"));
        assert_eq!(
            api.list_calls,
            vec![None, Some("c1".to_owned()), Some("c2".to_owned())]
        );
    }

    #[test]
    fn expired_continue_token_restarts_the_list() {
        let mut api = FakeApi::new()
            .list(page(
                vec![ServiceAccount::for_test("a", "1", "u1")],
                "100",
                Some("c1"),
            ))
            .list(Err(status(410, None)))
            .list(page(
                vec![ServiceAccount::for_test("a", "2", "u2")],
                "200",
                None,
            ));
        let (s, _) = step(State::Empty, &mut api, SHORT);
        let (s, out) = step(s, &mut api, SHORT);
        assert!(matches!(out, Some(Output::Failed(Failure::ListExpired))));
        assert!(matches!(s, State::Empty));
        let (_, out) = step(s, &mut api, SHORT);
        match out {
            Some(Output::Listed { objects, .. }) => {
                assert_eq!(objects.len(), 1, "stale pages dropped");
                assert!(objects.get("a", "2").is_some());
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(api.list_calls, vec![None, Some("c1".into()), None]);
    }

    #[test]
    fn failed_page_is_retried_with_the_same_token() {
        let mut api = FakeApi::new()
            .list(page(
                vec![ServiceAccount::for_test("a", "1", "u1")],
                "100",
                Some("c1"),
            ))
            .list(Err(status(500, None)))
            .list(page(vec![], "100", None));
        let (s, _) = step(State::Empty, &mut api, SHORT);
        let (s, out) = step(s, &mut api, SHORT);
        assert!(matches!(out, Some(Output::Failed(Failure::List(_)))));
        let (_, out) = step(s, &mut api, SHORT);
        assert!(matches!(out, Some(Output::Listed { ref objects, .. }) if objects.len() == 1));
        assert_eq!(api.list_calls[2].as_deref(), Some("c1"));
    }

    #[test]
    fn watch_starts_from_the_list_rv_and_bookmarks_only_move_it() {
        let mut api = FakeApi::new()
            .list(page(vec![], "100", None))
            .watch_ok(vec![
                bookmark("150"),
                upsert(ServiceAccount::for_test("a", "x", "u"), "160"),
                bookmark("170"),
            ]);
        let (s, _) = next_output(State::Empty, &mut api);
        let (s, out) = next_output(s, &mut api);
        assert!(matches!(out, Some(Output::Applied(Change::Upsert(ref x))) if &*x.name == "x"));
        assert_eq!(rv_of(&s), Some("160"));
        let (s, out) = step(s, &mut api, SHORT);
        assert!(out.is_none(), "a bookmark changes nothing in the cache");
        assert_eq!(rv_of(&s), Some("170"));
        assert_eq!(api.watch_calls, vec!["100"]);
    }

    #[test]
    fn stream_end_rewatches_from_the_last_rv() {
        let mut api = FakeApi::new()
            .list(page(vec![], "100", None))
            .watch_ok(vec![
                HEALTHY,
                upsert(ServiceAccount::for_test("a", "x", "u"), "120"),
                Script::Item(StreamItem::Closed),
            ])
            .watch_ok(vec![
                HEALTHY,
                bookmark("130"),
                Script::Item(StreamItem::Broken(KubeError::Timeout)),
            ])
            .watch_ok(vec![]);
        let (s, _) = next_output(State::Empty, &mut api);
        let (s, _) = next_output(s, &mut api);
        let (s, out) = next_output(s, &mut api);
        assert!(matches!(out, Some(Output::WatchEnded(None))), "{out:?}");
        let (s, out) = next_output(s, &mut api);
        assert!(
            matches!(out, Some(Output::WatchEnded(Some(KubeError::Timeout)))),
            "{out:?}"
        );
        let _ = step(s, &mut api, SHORT);
        assert_eq!(api.watch_calls, vec!["100", "120", "130"]);
        assert_eq!(api.list_calls.len(), 1, "no relist on a plain stream end");
    }

    #[test]
    fn in_stream_410_relists() {
        let mut api = FakeApi::new()
            .list(page(
                vec![ServiceAccount::for_test("a", "old", "u0")],
                "100",
                None,
            ))
            .watch_ok(vec![HEALTHY, bookmark("140"), stream_error(410)])
            .list(page(
                vec![ServiceAccount::for_test("a", "new", "u1")],
                "500",
                None,
            ));
        let (s, _) = next_output(State::Empty, &mut api);
        let (s, out) = next_output(s, &mut api);
        assert!(
            matches!(out, Some(Output::Failed(Failure::Expired))),
            "{out:?}"
        );
        assert!(matches!(s, State::Empty));
        let (s, out) = next_output(s, &mut api);
        assert!(
            matches!(out, Some(Output::Listed { ref resource_version, .. }) if resource_version == "500")
        );
        assert_eq!(rv_of(&s), Some("500"));
    }

    #[test]
    fn http_410_on_watch_relists() {
        let mut api = FakeApi::new()
            .list(page(vec![], "100", None))
            .watch_err(status(410, None))
            .list(page(vec![], "300", None));
        let (s, _) = next_output(State::Empty, &mut api);
        let (s, out) = next_output(s, &mut api);
        assert!(matches!(
            out,
            Some(Output::Failed(Failure::ResourceVersionRefused(_)))
        ));
        let (_, out) = next_output(s, &mut api);
        assert!(matches!(out, Some(Output::Listed { .. })));
        assert_eq!(api.list_calls.len(), 2);
    }

    #[test]
    fn other_watch_errors_rewatch_from_the_same_rv() {
        let mut api = FakeApi::new()
            .list(page(vec![], "100", None))
            .watch_err(status(429, Some(3)))
            .watch_ok(vec![HEALTHY, bookmark("110"), stream_error(500)])
            .watch_ok(vec![]);
        let (s, _) = next_output(State::Empty, &mut api);
        let (s, out) = next_output(s, &mut api);
        match out {
            Some(Output::Failed(f @ Failure::WatchOpen(_))) => {
                assert_eq!(f.retry_after(), Some(Duration::from_secs(3)));
                assert!(!f.ends_watch());
            }
            other => panic!("unexpected {other:?}"),
        }
        let (s, out) = next_output(s, &mut api);
        assert!(
            matches!(out, Some(Output::Failed(ref f @ Failure::WatchError(_))) if f.ends_watch())
        );
        let _ = step(s, &mut api, SHORT);
        assert_eq!(api.watch_calls, vec!["100", "100", "110"]);
        assert_eq!(api.list_calls.len(), 1);
    }

    #[test]
    fn an_undecodable_event_rewatches_after_a_pause() {
        let bad = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let mut api = FakeApi::new()
            .list(page(vec![], "100", None))
            .watch_ok(vec![
                HEALTHY,
                bookmark("105"),
                Script::Item(StreamItem::Broken(KubeError::Decode(bad))),
            ]);
        let (s, _) = next_output(State::Empty, &mut api);
        let (s, out) = next_output(s, &mut api);
        assert!(
            matches!(out, Some(Output::Failed(ref f @ Failure::WatchUndecodable(_))) if f.ends_watch()),
            "{out:?}"
        );
        assert_eq!(rv_of(&s), Some("105"));
    }

    #[test]
    fn a_very_short_watch_is_a_failure() {
        let mut api = FakeApi::new()
            .list(page(vec![], "100", None))
            .watch_ok(vec![Script::Item(StreamItem::Closed)])
            .watch_ok(vec![
                Script::Sleep(Duration::from_millis(100)),
                bookmark("101"),
            ]);
        let (s, _) = next_output(State::Empty, &mut api);
        let (s, out) = next_output(s, &mut api);
        assert!(
            matches!(out, Some(Output::Failed(Failure::VeryShortWatch))),
            "{out:?}"
        );
        // A short watch that did deliver an event is a normal end.
        let (_, out) = next_output(s, &mut api);
        assert!(matches!(out, Some(Output::WatchEnded(None))), "{out:?}");
    }

    #[test]
    fn each_failure_names_its_cause_in_the_log() {
        let cases = [
            (
                Failure::List(KubeError::Timeout),
                "listing ServiceAccounts failed: API request timed out",
            ),
            (
                Failure::ListExpired,
                "list continue token expired; listing again",
            ),
            (
                Failure::WatchOpen(status(503, None)),
                "opening the ServiceAccount watch failed: API server answered 503",
            ),
            (
                Failure::ResourceVersionRefused(status(410, None)),
                "watch resourceVersion no longer valid (API server answered 410); relisting",
            ),
            (Failure::Expired, "watch resourceVersion expired; relisting"),
            (
                Failure::WatchError(ApiStatus {
                    code: Some(500),
                    reason: Some("InternalError".into()),
                    message: Some("etcd unavailable".into()),
                    details: None,
                }),
                "ServiceAccount watch error: status 500 InternalError: etcd unavailable",
            ),
            (
                Failure::VeryShortWatch,
                "ServiceAccount watch ended at once without events",
            ),
            (
                Failure::WatchUndecodable(KubeError::BodyTooLarge { limit: 1024 }),
                "ServiceAccount watch stream: API response larger than 1024 bytes",
            ),
        ];
        for (failure, message) in cases {
            assert_eq!(failure.describe("ServiceAccount"), message, "{failure:?}");
        }
    }

    /// Runs the driver against a fake API until its script runs out.
    fn drive(mut api: FakeApi, cache: &ServiceAccountCache, readiness: &Readiness) -> FakeApi {
        let (tx, rx) = crossbeam_channel::unbounded();
        api.stop = Some(tx);
        let settings = WatchSettings {
            backoff: BackoffSettings {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(2),
                reset_after: Duration::from_secs(120),
            },
            ..WatchSettings::default()
        };
        run(&mut api, cache, readiness, cache.metrics(), &settings, &rx);
        api
    }

    #[test]
    fn the_cache_current_timestamp_moves_only_while_the_cache_follows_the_cluster() {
        let cache = ServiceAccountCache::new(Arc::new(Metrics::new()));
        let readiness = Readiness::default();
        let current = || cache.metrics().cache_current.get();
        drive(
            FakeApi::new()
                .list(Err(status(500, None)))
                .list(Err(status(403, None))),
            &cache,
            &readiness,
        );
        assert_eq!(current(), 0, "no list yet: never current");
        drive(
            FakeApi::new().list(page(
                vec![ServiceAccount::for_test("a", "1", "u1")],
                "7",
                None,
            )),
            &cache,
            &readiness,
        );
        assert!(current() > 1_700_000_000, "listed: {}", current());
        // A relist that keeps failing leaves the timestamp where it was.
        cache.metrics().cache_current.set(1);
        drive(
            FakeApi::new()
                .list(Err(status(500, None)))
                .list(Err(status(500, None))),
            &cache,
            &readiness,
        );
        assert_eq!(current(), 1);
    }

    #[test]
    fn driver_applies_lists_and_events_to_the_cache() {
        let cache = ServiceAccountCache::new(Arc::new(Metrics::new()));
        let readiness = Readiness::default();
        let api = FakeApi::new()
            .list(page(
                vec![
                    ServiceAccount::for_test("a", "keep", "u1"),
                    ServiceAccount::for_test("a", "drop", "u2"),
                ],
                "100",
                None,
            ))
            .watch_ok(vec![
                HEALTHY,
                upsert(ServiceAccount::for_test("a", "added", "u3"), "101"),
                delete(ServiceAccount::for_test("a", "keep", "u1"), "102"),
                Script::Item(StreamItem::Closed),
            ])
            .watch_ok(vec![HEALTHY, bookmark("103"), stream_error(410)])
            .list(page(
                vec![ServiceAccount::for_test("b", "fresh", "u4")],
                "200",
                Some("c"),
            ))
            .list(page(
                vec![ServiceAccount::for_test("a", "added", "u3")],
                "200",
                None,
            ));
        let api = drive(api, &cache, &readiness);
        let m = cache.metrics();
        assert!(readiness.cache_synced());
        assert_eq!(cache.len(), 2, "relist replaced the cache atomically");
        assert!(cache.get("a", "keep").is_none());
        assert!(cache.get("a", "drop").is_none());
        assert!(cache.get("b", "fresh").is_some());
        assert!(cache.get("a", "added").is_some());
        assert_eq!(m.cache_relists.get(), 2);
        assert_eq!(m.watch_restarts.get(), 1);
        assert_eq!(m.cache_size.get(), 2);
        assert_eq!(api.watch_calls[..2], ["100".to_owned(), "102".to_owned()]);
    }

    #[test]
    fn readiness_waits_for_the_first_complete_list_and_stays_through_relists() {
        let cache = ServiceAccountCache::new(Arc::new(Metrics::new()));
        let readiness = Readiness::default();
        let api = FakeApi::new()
            .list(page(
                vec![ServiceAccount::for_test("a", "1", "u")],
                "100",
                Some("c"),
            ))
            .list(Err(status(503, None)));
        drive(api, &cache, &readiness);
        assert!(!readiness.cache_synced(), "half a list is not a sync");
        assert!(cache.is_empty());

        let api = FakeApi::new()
            .list(page(
                vec![ServiceAccount::for_test("a", "1", "u")],
                "100",
                None,
            ))
            .watch_err(status(410, None))
            .list(Err(status(503, None)));
        drive(api, &cache, &readiness);
        assert!(
            readiness.cache_synced(),
            "a failing relist keeps the old cache serving"
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn driver_stops_promptly_when_asked() {
        let cache = ServiceAccountCache::new(Arc::new(Metrics::new()));
        let readiness = Readiness::default();
        let (tx, rx) = crossbeam_channel::bounded(1);
        // A server that always fails: the driver sits in backoff and must wake for stop.
        let mut api = FakeApi::new();
        for _ in 0..5 {
            api = api.list(Err(status(500, None)));
        }
        let settings = WatchSettings::default();
        let handle = std::thread::spawn(move || {
            let mut api = api;
            let metrics = cache.metrics().clone();
            run(&mut api, &cache, &readiness, &metrics, &settings, &rx);
        });
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        tx.send(()).unwrap();
        handle.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
