//! A Kubernetes API server emulator for ServiceAccounts and OIDC discovery, faithful to the
//! behaviours in kubernetes-facts.md §4 and §7 that the service relies on: paginated lists with
//! continue tokens, a global resourceVersion, chunked watch streams with history replay, 410
//! expiry, bookmarks, bearer-token checks, the OIDC discovery endpoints, the TokenRequest
//! subresource (`kubectl create token`, see [`token_request`]), and fault injection driven by the
//! test.
//!
//! Not emulated, because the service never asks for them: label and field selectors (answered 400
//! BadRequest saying so, rather than ignored) and streaming lists (`sendInitialEvents`, answered
//! 422 Invalid as by an API server with the WatchList feature gate off).
//!
//! Plain HTTP by default; [`KubeEmulatorBuilder::tls`] makes it serve HTTPS with freshly
//! generated certificates (and optionally require client certificates), with every behaviour
//! above unchanged: see [`tls`].
//!
//! Thread layout: one accept thread; one thread per TCP connection, which does the TLS handshake
//! if any, reads requests (keep-alive supported), answers them, and for a watch stays in the
//! streaming loop until the stream ends. All state sits in one `parking_lot` mutex; a condvar
//! wakes watch streams on every write or fault switch. Dropping the emulator stops and joins
//! every thread.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use parking_lot::{Condvar, Mutex, MutexGuard};
use serde_json::{json, Map, Value};

use super::tokens::{random_uuid, SigningKey};

pub mod tls;
mod token_request;

use tls::Conn;
pub use tls::{TlsMaterial, TlsOptions};

/// The resourceVersion of an empty emulator; the first write gets the next one.
const FIRST_RESOURCE_VERSION: u64 = 1000;
/// How many events a new watch can replay (the watch cache's default capacity is 100).
const DEFAULT_HISTORY_WINDOW: usize = 100;
/// Periodic bookmark interval for tests (the real cache sends one about once a minute).
const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// The cache sends a bookmark this long before a watch's deadline.
const PRE_DEADLINE_BOOKMARK_LEAD: Duration = Duration::from_secs(2);
/// The TLS handshake errors kept for [`KubeEmulator::tls_errors`].
const MAX_RECORDED_TLS_ERRORS: usize = 100;
/// How long a request for a future resourceVersion waits before answering 504.
const TOO_LARGE_RV_WAIT: Duration = Duration::from_secs(1);
/// How long an issued continue token stays valid (etcd compaction runs about every 5 minutes).
const CONTINUE_TOKEN_TTL: Duration = Duration::from_secs(300);
/// Idle keep-alive connections are closed after this.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(30);
/// A client that stops reading for this long loses its connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle watch stream checks that its client is still connected.
const LIVENESS_POLL: Duration = Duration::from_millis(200);
/// Default `Cache-Control: max-age` of the discovery endpoints (static key files).
const DEFAULT_JWKS_MAX_AGE: u64 = 3600;
/// The request log keeps at most this many entries (oldest dropped first).
const MAX_RECORDED_REQUESTS: usize = 100_000;
/// Longest request line or header line accepted.
const MAX_LINE: u64 = 16 * 1024;
/// Most header lines accepted in one request.
const MAX_HEADERS: usize = 100;
/// Largest request body kept for the handler; larger ones are read and discarded.
const MAX_BODY: u64 = 1024 * 1024;
/// The issuer a kubeadm-style cluster reports.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// What a request was, as the emulator routed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// A ServiceAccount list (cluster-wide or in one namespace).
    List,
    /// A ServiceAccount watch.
    Watch,
    /// A single ServiceAccount GET.
    Get,
    /// `/.well-known/openid-configuration`.
    Discovery,
    /// `/openid/v1/jwks`.
    Jwks,
    /// `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token` (any method on that path).
    TokenRequest,
    /// Anything else (answered 404 or 405).
    Other,
}

/// One request as the emulator saw it. The token itself is never stored.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string (without `?`), still percent-encoded.
    pub query: String,
    /// How the request was routed.
    pub kind: RequestKind,
    /// Whether an `Authorization` header was present.
    pub authorization_present: bool,
    /// Whether the connection presented a client certificate the emulator verified (TLS only).
    pub client_certificate: bool,
    /// Status code answered (200 for a watch stream, even one that carries an ERROR event).
    pub status: u16,
}

impl RecordedRequest {
    /// The decoded value of query parameter `name`, if present.
    pub fn param(&self, name: &str) -> Option<String> {
        parse_query(&self.query)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The `resourceVersion` parameter, if present.
    pub fn resource_version(&self) -> Option<String> {
        self.param("resourceVersion")
    }
}

/// An injected failure: the next `times` matching requests are answered with `status` and a
/// proper Status body instead of being served.
#[derive(Clone, Debug)]
pub struct Fault {
    status: u16,
    times: usize,
    retry_after: Option<u64>,
    target_contains: Option<String>,
    only: Option<RequestKind>,
}

impl Fault {
    /// Answer one request with `status`.
    pub fn status(status: u16) -> Self {
        Fault {
            status,
            times: 1,
            retry_after: None,
            target_contains: None,
            only: None,
        }
    }

    /// Answer `n` requests instead of one.
    pub fn times(mut self, n: usize) -> Self {
        self.times = n;
        self
    }

    /// Send `Retry-After: secs` (and `details.retryAfterSeconds`).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Only requests whose path-and-query contains `needle` (raw, still percent-encoded).
    pub fn target_containing(mut self, needle: &str) -> Self {
        self.target_contains = Some(needle.to_string());
        self
    }

    /// Only requests of this kind.
    pub fn only(mut self, kind: RequestKind) -> Self {
        self.only = Some(kind);
        self
    }

    fn matches(&self, kind: RequestKind, target: &str) -> bool {
        self.times > 0
            && self.only.is_none_or(|k| k == kind)
            && self
                .target_contains
                .as_deref()
                .is_none_or(|n| target.contains(n))
    }
}

/// Configures a [`KubeEmulator`] before it starts.
#[derive(Clone, Debug)]
pub struct KubeEmulatorBuilder {
    history_window: usize,
    bookmark_interval: Option<Duration>,
    tokens: Vec<String>,
    auth_required: bool,
    oidc_anonymous: bool,
    issuer: String,
    jwks: Value,
    jwks_max_age: u64,
    expired_watch_as_http: bool,
    tls: Option<TlsOptions>,
    token_signer: Option<SigningKey>,
}

impl Default for KubeEmulatorBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl KubeEmulatorBuilder {
    /// Defaults: window 100, bookmarks every second, one random accepted token, auth required
    /// everywhere, issuer [`DEFAULT_ISSUER`], an empty key set with max-age 3600, too-old
    /// watches answered with an in-stream ERROR event.
    pub fn new() -> Self {
        KubeEmulatorBuilder {
            history_window: DEFAULT_HISTORY_WINDOW,
            bookmark_interval: Some(DEFAULT_BOOKMARK_INTERVAL),
            tokens: vec![format!("emulator-{}", random_uuid())],
            auth_required: true,
            oidc_anonymous: false,
            issuer: DEFAULT_ISSUER.to_string(),
            jwks: json!({ "keys": [] }),
            jwks_max_age: DEFAULT_JWKS_MAX_AGE,
            expired_watch_as_http: false,
            tls: None,
            token_signer: None,
        }
    }

    /// Serve HTTPS instead of plain HTTP, with a CA and server certificate (for `127.0.0.1`,
    /// `localhost` and `::1`) generated for this emulator, and client certificates as `options`
    /// say. [`KubeEmulator::url`] is then `https://…`; the PEMs a client needs are on
    /// [`KubeEmulator::ca_pem`], [`KubeEmulator::client_cert_pem`] and
    /// [`KubeEmulator::client_key_pem`].
    pub fn tls(mut self, options: TlsOptions) -> Self {
        self.tls = Some(options);
        self
    }

    /// How many past events a new watch can replay; older resourceVersions get 410.
    pub fn history_window(mut self, events: usize) -> Self {
        self.history_window = events;
        self
    }

    /// Interval of periodic bookmarks (to watches that allow them).
    pub fn bookmark_interval(mut self, interval: Duration) -> Self {
        self.bookmark_interval = Some(interval);
        self
    }

    /// Only the bookmark just before a watch's deadline.
    pub fn no_periodic_bookmarks(mut self) -> Self {
        self.bookmark_interval = None;
        self
    }

    /// The one accepted bearer token.
    pub fn token(mut self, token: &str) -> Self {
        self.tokens = vec![token.to_string()];
        self
    }

    /// Serve every request without checking credentials.
    pub fn without_auth(mut self) -> Self {
        self.auth_required = false;
        self
    }

    /// Serve the two discovery endpoints to requests without credentials, like a cluster that
    /// binds `system:service-account-issuer-discovery` to `system:unauthenticated`.
    pub fn oidc_anonymous(mut self, anonymous: bool) -> Self {
        self.oidc_anonymous = anonymous;
        self
    }

    /// The `issuer` the discovery document reports.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.issuer = issuer.to_string();
        self
    }

    /// The key set `/openid/v1/jwks` serves.
    pub fn jwks(mut self, jwks: Value) -> Self {
        self.jwks = jwks;
        self
    }

    /// The key the TokenRequest subresource signs tokens with (`kubectl create token`). Its
    /// public half is added to the served key set if [`KubeEmulatorBuilder::jwks`] lacks it, as a
    /// real API server always publishes its signing key. Without a signer, TokenRequests are
    /// answered 500.
    pub fn token_signer(mut self, key: SigningKey) -> Self {
        self.token_signer = Some(key);
        self
    }

    /// `Cache-Control: public, max-age=N` of the discovery endpoints.
    pub fn jwks_max_age(mut self, secs: u64) -> Self {
        self.jwks_max_age = secs;
        self
    }

    /// Answer too-old watches with a plain HTTP 410 instead of an in-stream ERROR event.
    pub fn expired_watch_as_http(mut self, plain: bool) -> Self {
        self.expired_watch_as_http = plain;
        self
    }

    /// Binds 127.0.0.1 on a free port and starts serving.
    pub fn build(self) -> KubeEmulator {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the emulator");
        let addr = listener.local_addr().expect("emulator address");
        let (tls_config, tls) = match &self.tls {
            Some(options) => {
                let (config, material) = tls::generate(options);
                (Some(config), Some(material))
            }
            None => (None, None),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut jwks = self.jwks;
        if let Some(key) = &self.token_signer {
            token_request::publish_key(&mut jwks, key);
        }
        let state = State {
            rv: FIRST_RESOURCE_VERSION,
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            horizon: FIRST_RESOURCE_VERSION,
            history_window: self.history_window,
            watch_cursors: HashMap::new(),
            next_watch_id: 1,
            watch_generation: 0,
            continues: HashMap::new(),
            tokens: self.tokens,
            auth_required: self.auth_required,
            oidc_anonymous: self.oidc_anonymous,
            faults: Vec::new(),
            down: false,
            watch_hang: false,
            expired_watch_as_http: self.expired_watch_as_http,
            jwks,
            jwks_max_age: self.jwks_max_age,
            token_signer: self.token_signer,
            requests: VecDeque::new(),
            tls_errors: VecDeque::new(),
            counters: Counters::default(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
            conns: Mutex::new(Connections::default()),
            bookmark_interval: self.bookmark_interval,
            issuer: self.issuer,
            url: format!("{scheme}://{addr}"),
            tls: tls_config,
        });
        let accept_shared = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("kube-emu-accept".into())
            .spawn(move || accept_loop(accept_shared, listener))
            .expect("spawn the accept thread");
        KubeEmulator {
            shared,
            addr,
            accept: Some(accept),
            tls,
        }
    }
}

/// The running emulator. See the module docs; dropping it stops every thread.
pub struct KubeEmulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
    tls: Option<TlsMaterial>,
}

impl KubeEmulator {
    /// An emulator with the default settings.
    pub fn start() -> Self {
        KubeEmulatorBuilder::new().build()
    }

    /// A builder for a configured emulator.
    pub fn builder() -> KubeEmulatorBuilder {
        KubeEmulatorBuilder::new()
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`, or `https://127.0.0.1:41234` with TLS (no
    /// trailing slash).
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// The generated certificates and keys, when the emulator serves TLS.
    pub fn tls(&self) -> Option<&TlsMaterial> {
        self.tls.as_ref()
    }

    /// The PEM of the CA a client must trust. Panics on a plain-HTTP emulator.
    pub fn ca_pem(&self) -> &str {
        &self.tls_material().ca_pem
    }

    /// The PEM of a client certificate the emulator accepts. Panics unless it asks for them.
    pub fn client_cert_pem(&self) -> &str {
        self.tls_material()
            .client_cert_pem
            .as_deref()
            .expect("the emulator asks for client certificates (TlsOptions::require_client_cert)")
    }

    /// The PEM (PKCS#8) key of [`KubeEmulator::client_cert_pem`].
    pub fn client_key_pem(&self) -> &str {
        self.tls_material()
            .client_key_pem
            .as_deref()
            .expect("the emulator asks for client certificates (TlsOptions::require_client_cert)")
    }

    fn tls_material(&self) -> &TlsMaterial {
        self.tls
            .as_ref()
            .expect("the emulator serves TLS (KubeEmulatorBuilder::tls)")
    }

    /// Number of TLS handshakes that failed (the client refused the server certificate, sent
    /// no or a wrong client certificate, or spoke plain HTTP).
    pub fn tls_handshake_failures(&self) -> u64 {
        self.lock().counters.tls_handshake_failures
    }

    /// The errors of failed TLS handshakes, oldest first (at most the last 100), e.g.
    /// `received fatal alert: UnknownCA`.
    pub fn tls_errors(&self) -> Vec<String> {
        self.lock().tls_errors.iter().cloned().collect()
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The issuer the discovery document reports.
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// The current accepted bearer token (the first of the accepted set).
    pub fn token(&self) -> String {
        self.lock().tokens.first().cloned().unwrap_or_default()
    }

    /// Accept exactly this token from now on (e.g. after "rotating" the projected token).
    pub fn set_token(&self, token: &str) {
        self.set_tokens(&[token]);
    }

    /// Accept exactly these tokens from now on; the first is what [`KubeEmulator::token`] returns.
    pub fn set_tokens(&self, tokens: &[&str]) {
        self.lock().tokens = tokens.iter().map(|t| t.to_string()).collect();
    }

    /// Whether requests need a valid bearer token at all.
    pub fn set_auth_required(&self, required: bool) {
        self.lock().auth_required = required;
    }

    /// Whether the discovery endpoints answer requests that carry no credentials.
    pub fn set_oidc_anonymous(&self, anonymous: bool) {
        self.lock().oidc_anonymous = anonymous;
    }

    /// Creates `namespace/name` with these annotations; returns its fresh uid.
    /// Panics if it already exists (a test bug).
    pub fn create_service_account(
        &self,
        namespace: &str,
        name: &str,
        annotations: &[(&str, &str)],
    ) -> String {
        self.create_service_account_with_labels(namespace, name, annotations, &[])
    }

    /// Creates `namespace/name` with annotations and labels; returns its fresh uid.
    pub fn create_service_account_with_labels(
        &self,
        namespace: &str,
        name: &str,
        annotations: &[(&str, &str)],
        labels: &[(&str, &str)],
    ) -> String {
        let mut st = self.lock();
        let key = (namespace.to_string(), name.to_string());
        assert!(
            !st.objects.contains_key(&key),
            "serviceaccount {namespace}/{name} already exists"
        );
        st.rv += 1;
        let account = StoredAccount {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: random_uuid(),
            resource_version: st.rv,
            created: rfc3339_now(),
            labels: to_map(labels),
            annotations: to_map(annotations),
        };
        let uid = account.uid.clone();
        st.objects.insert(key, account.clone());
        st.record_change(ChangeKind::Added, account, None);
        drop(st);
        self.shared.wake.notify_all();
        uid
    }

    /// Replaces the annotations of `namespace/name` (a MODIFIED event); returns the new
    /// resourceVersion. Panics if it does not exist.
    pub fn update_annotations(
        &self,
        namespace: &str,
        name: &str,
        annotations: &[(&str, &str)],
    ) -> String {
        let annotations = to_map(annotations);
        self.modify(namespace, name, move |a| a.annotations = annotations)
    }

    fn modify(&self, namespace: &str, name: &str, edit: impl FnOnce(&mut StoredAccount)) -> String {
        let mut st = self.lock();
        let key = (namespace.to_string(), name.to_string());
        let previous = st
            .objects
            .get(&key)
            .cloned()
            .unwrap_or_else(|| panic!("serviceaccount {namespace}/{name} does not exist"));
        st.rv += 1;
        let mut account = previous.clone();
        edit(&mut account);
        account.resource_version = st.rv;
        st.objects.insert(key, account.clone());
        st.record_change(ChangeKind::Modified, account, Some(previous));
        let rv = st.rv.to_string();
        drop(st);
        self.shared.wake.notify_all();
        rv
    }

    /// Deletes `namespace/name` (a DELETED event carrying its last state); returns the
    /// resourceVersion of the deletion. Panics if it does not exist.
    pub fn delete_service_account(&self, namespace: &str, name: &str) -> String {
        let mut st = self.lock();
        let key = (namespace.to_string(), name.to_string());
        let previous = st
            .objects
            .remove(&key)
            .unwrap_or_else(|| panic!("serviceaccount {namespace}/{name} does not exist"));
        st.rv += 1;
        let mut last = previous.clone();
        last.resource_version = st.rv;
        st.record_change(ChangeKind::Deleted, last, Some(previous));
        let rv = st.rv.to_string();
        drop(st);
        self.shared.wake.notify_all();
        rv
    }

    /// The object as a single GET would return it, if it exists.
    pub fn service_account(&self, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .map(|a| a.to_json(true))
    }

    /// The uid of `namespace/name`, if it exists.
    pub fn uid_of(&self, namespace: &str, name: &str) -> Option<String> {
        self.lock()
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .map(|a| a.uid.clone())
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> String {
        self.lock().rv.to_string()
    }

    /// Forgets all history: a watch from any resourceVersion older than now gets 410, and so do
    /// exact-resourceVersion lists.
    pub fn compact_history(&self) {
        let mut st = self.lock();
        st.horizon = st.rv;
        st.prune();
    }

    /// Makes every continue token issued so far answer 410 Expired.
    pub fn expire_continue_tokens(&self) {
        let mut st = self.lock();
        st.continues.clear();
        st.prune();
    }

    /// Cuts every open watch stream: TCP shutdown without the terminating chunk.
    pub fn close_watch_streams(&self) {
        self.lock().watch_generation += 1;
        self.shared.wake.notify_all();
    }

    /// Answers the next `n` requests (only those whose path-and-query contains
    /// `only_path_containing`, if given) with `status` and a Status body.
    pub fn fail_next(
        &self,
        n: usize,
        status: u16,
        retry_after: Option<u64>,
        only_path_containing: Option<&str>,
    ) {
        let mut fault = Fault::status(status).times(n);
        if let Some(secs) = retry_after {
            fault = fault.retry_after(secs);
        }
        if let Some(needle) = only_path_containing {
            fault = fault.target_containing(needle);
        }
        self.inject(fault);
    }

    /// Answers the next `n` requests of `kind` with `status`.
    pub fn fail_next_of(&self, kind: RequestKind, n: usize, status: u16, retry_after: Option<u64>) {
        let mut fault = Fault::status(status).times(n).only(kind);
        if let Some(secs) = retry_after {
            fault = fault.retry_after(secs);
        }
        self.inject(fault);
    }

    /// Adds a fault rule; rules are tried in the order added.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Drops all pending fault rules.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// API outage: while down, connections are accepted and closed at once. Going down also cuts
    /// every open connection, watch streams included.
    pub fn set_down(&self, down: bool) {
        {
            let mut st = self.lock();
            st.down = down;
            if down {
                st.watch_generation += 1;
            }
        }
        self.shared.wake.notify_all();
        if down {
            self.shared.shutdown_connections();
        }
    }

    /// While on, watch streams (new and open) send nothing at all, not even bookmarks, and ignore
    /// their deadline; events queue up and flow again when it is switched off.
    pub fn set_watch_hang(&self, hang: bool) {
        self.lock().watch_hang = hang;
        self.shared.wake.notify_all();
    }

    /// Answer too-old watches with a plain HTTP 410 instead of an in-stream ERROR event.
    pub fn set_expired_watch_as_http(&self, plain: bool) {
        self.lock().expired_watch_as_http = plain;
    }

    /// Replaces the served key set (for rotation tests).
    pub fn set_jwks(&self, jwks: Value) {
        self.lock().jwks = jwks;
    }

    /// Sets `Cache-Control: public, max-age=N` of the discovery endpoints.
    pub fn set_jwks_max_age(&self, secs: u64) {
        self.lock().jwks_max_age = secs;
    }

    /// Signs TokenRequest tokens with `key` from now on (see
    /// [`KubeEmulatorBuilder::token_signer`]); adds its public half to the served key set if
    /// missing.
    pub fn set_token_signer(&self, key: SigningKey) {
        let mut st = self.lock();
        token_request::publish_key(&mut st.jwks, &key);
        st.token_signer = Some(key);
    }

    /// Number of TokenRequests received (any method, including refused ones).
    pub fn token_requests(&self) -> u64 {
        self.lock().counters.token
    }

    /// Number of ServiceAccount list requests received (including failed ones).
    pub fn list_requests(&self) -> u64 {
        self.lock().counters.list
    }

    /// Number of ServiceAccount watch requests received (including failed ones).
    pub fn watch_requests(&self) -> u64 {
        self.lock().counters.watch
    }

    /// Number of single ServiceAccount GETs received.
    pub fn get_requests(&self) -> u64 {
        self.lock().counters.get
    }

    /// Number of `/openid/v1/jwks` requests received.
    pub fn jwks_requests(&self) -> u64 {
        self.lock().counters.jwks
    }

    /// Number of `/.well-known/openid-configuration` requests received.
    pub fn discovery_requests(&self) -> u64 {
        self.lock().counters.discovery
    }

    /// Number of requests received, of any kind.
    pub fn total_requests(&self) -> u64 {
        self.lock().counters.total
    }

    /// Number of TCP connections accepted (including those closed at once while down).
    pub fn connections_accepted(&self) -> u64 {
        self.lock().counters.connections
    }

    /// Number of watch streams currently open and following events.
    pub fn open_watches(&self) -> usize {
        self.lock().watch_cursors.len()
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.iter().cloned().collect()
    }

    /// The requests of one kind, oldest first.
    pub fn requests_of(&self, kind: RequestKind) -> Vec<RecordedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.kind == kind)
            .cloned()
            .collect()
    }

    /// Forgets the request log (counters are kept).
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Polls `condition` every 10 ms until it holds or `timeout` passes; returns whether it held.
    pub fn wait_for(&self, timeout: Duration, condition: impl Fn(&KubeEmulator) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until at least `n` watch streams are open.
    pub fn wait_for_open_watches(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |e| e.open_watches() >= n)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock()
    }
}

impl Drop for KubeEmulator {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        {
            // Taking the lock orders this notification after any watcher's check of `stopping`.
            let _st = self.shared.state.lock();
            self.shared.wake.notify_all();
        }
        self.shared.shutdown_connections();
        // Wake the accept thread, which is blocked in accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let threads = std::mem::take(&mut self.shared.conns.lock().threads);
        for t in threads {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state

struct Shared {
    state: Mutex<State>,
    /// Notified on every write, fault switch and shutdown; watch streams wait on it.
    wake: Condvar,
    stopping: AtomicBool,
    conns: Mutex<Connections>,
    bookmark_interval: Option<Duration>,
    issuer: String,
    url: String,
    /// The server configuration when serving TLS.
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Shared {
    fn shutdown_connections(&self) {
        for stream in self.conns.lock().open.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

#[derive(Default)]
struct Connections {
    next_id: u64,
    /// A clone of every open connection, so shutdown and outages can cut them.
    open: HashMap<u64, TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct Counters {
    list: u64,
    watch: u64,
    get: u64,
    discovery: u64,
    jwks: u64,
    token: u64,
    total: u64,
    connections: u64,
    tls_handshake_failures: u64,
}

#[derive(Clone, Debug)]
struct StoredAccount {
    namespace: String,
    name: String,
    uid: String,
    resource_version: u64,
    created: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

impl StoredAccount {
    /// The object's JSON; list items leave out `kind` and `apiVersion`, as the apiserver does.
    fn to_json(&self, with_type: bool) -> Value {
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

    fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }

    /// Whether a list or watch of `namespace` (all namespaces if none) sees this object.
    fn in_scope(&self, namespace: Option<&str>) -> bool {
        namespace.is_none_or(|ns| ns == self.namespace)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    /// The watch event type that reports this change.
    fn event_type(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One write, as the watch cache remembers it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: ChangeKind,
    /// The new state; for a deletion the last state, with the deletion's resourceVersion.
    object: StoredAccount,
    /// The state before the write (none for a creation).
    previous: Option<StoredAccount>,
}

struct IssuedContinue {
    rv: u64,
    issued: Instant,
}

struct State {
    rv: u64,
    objects: BTreeMap<(String, String), StoredAccount>,
    /// Every change newer than what the oldest user (window, open watch, continue token) needs.
    log: VecDeque<Change>,
    /// Oldest resourceVersion a watch may start from; older ones are "too old".
    horizon: u64,
    history_window: usize,
    /// Open watch streams: id -> resourceVersion up to which they have consumed the log.
    watch_cursors: HashMap<u64, u64>,
    next_watch_id: u64,
    /// Bumped to cut every open watch stream.
    watch_generation: u64,
    continues: HashMap<String, IssuedContinue>,
    tokens: Vec<String>,
    auth_required: bool,
    oidc_anonymous: bool,
    faults: Vec<Fault>,
    down: bool,
    watch_hang: bool,
    expired_watch_as_http: bool,
    jwks: Value,
    jwks_max_age: u64,
    token_signer: Option<SigningKey>,
    requests: VecDeque<RecordedRequest>,
    tls_errors: VecDeque<String>,
    counters: Counters,
}

impl State {
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
    fn prune(&mut self) {
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
    fn objects_at(&self, rv: u64) -> BTreeMap<(String, String), StoredAccount> {
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

    fn too_old(&self, rv: u64) -> bool {
        rv < self.horizon
    }

    fn too_old_message(&self, rv: &str) -> String {
        format!("too old resource version: {rv} ({})", self.horizon + 1)
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    for incoming in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = incoming else { continue };
        {
            let mut st = shared.state.lock();
            st.counters.connections += 1;
            if st.down {
                // Outage: accepted, then closed with nothing said.
                let _ = stream.shutdown(Shutdown::Both);
                continue;
            }
        }
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        let mut conns = shared.conns.lock();
        conns.threads.retain(|t| !t.is_finished());
        let id = conns.next_id;
        conns.next_id += 1;
        conns.open.insert(id, registered);
        let conn_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("kube-emu-conn".into())
            .spawn(move || {
                serve_connection(&conn_shared, stream);
                conn_shared.conns.lock().open.remove(&id);
            });
        match spawned {
            Ok(handle) => conns.threads.push(handle),
            Err(_) => {
                if let Some(s) = conns.open.remove(&id) {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

/// Serves requests on one connection until it closes, a response asks to close, or shutdown.
fn serve_connection(shared: &Shared, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let (conn, client_certificate) = match &shared.tls {
        None => (Conn::Plain(stream), false),
        Some(config) => match Conn::accept_tls(config, stream) {
            Ok((conn, handshake)) => (conn, handshake.client_certificate),
            Err(error) => {
                let mut st = shared.state.lock();
                st.counters.tls_handshake_failures += 1;
                if st.tls_errors.len() >= MAX_RECORDED_TLS_ERRORS {
                    st.tls_errors.pop_front();
                }
                st.tls_errors.push_back(error);
                return;
            }
        },
    };
    // Requests are read through the buffer and answers written to the stream beneath it.
    let mut reader = BufReader::new(conn);
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let _ = reader
            .get_ref()
            .tcp()
            .set_read_timeout(Some(KEEP_ALIVE_IDLE));
        let mut request = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(RequestError::Malformed(msg)) => {
                let body = status_body(400, "BadRequest", &msg, None);
                let _ = write_json(reader.get_mut(), 400, &body, &[], "application/json", false);
                break;
            }
            Err(RequestError::Io) => break,
        };
        request.client_certificate = client_certificate;
        match respond(shared, &request, reader.get_mut()) {
            Ok(true) => continue,
            _ => break,
        }
    }
    reader.get_mut().close();
}

struct Request {
    method: String,
    path: String,
    query: String,
    params: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    http11: bool,
    /// The connection presented a verified client certificate.
    client_certificate: bool,
    /// The request body (empty when there was none or it exceeded [`MAX_BODY`]).
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn target(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }

    fn keep_alive(&self) -> bool {
        match self.header("Connection") {
            Some(v) if v.eq_ignore_ascii_case("close") => false,
            Some(v) if v.eq_ignore_ascii_case("keep-alive") => true,
            _ => self.http11,
        }
    }

    fn bearer(&self) -> Option<&str> {
        let value = self.header("Authorization")?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    }
}

enum RequestError {
    Io,
    Malformed(String),
}

fn read_line(reader: &mut BufReader<Conn>) -> Result<Option<String>, RequestError> {
    let mut line = String::new();
    let n = reader
        .by_ref()
        .take(MAX_LINE)
        .read_line(&mut line)
        .map_err(|_| RequestError::Io)?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') {
        return Err(RequestError::Malformed("request line too long".into()));
    }
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_string()))
}

/// Reads one request; `Ok(None)` when the client closed the connection between requests.
fn read_request(reader: &mut BufReader<Conn>) -> Result<Option<Request>, RequestError> {
    let request_line = loop {
        match read_line(reader)? {
            None => return Ok(None),
            // Tolerate stray empty lines between requests (RFC 9112 §2.2).
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed("malformed request line".into()));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(RequestError::Malformed("unsupported HTTP version".into()));
    }
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?.ok_or(RequestError::Io)?;
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(RequestError::Malformed("too many headers".into()));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| RequestError::Malformed("malformed header".into()))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method: method.to_string(),
        path: percent_decode(path, false),
        query: query.to_string(),
        params: parse_query(query),
        headers,
        http11: version == "HTTP/1.1",
        client_certificate: false,
        body: Vec::new(),
    };
    if request
        .header("Transfer-Encoding")
        .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
    {
        return Err(RequestError::Malformed(
            "chunked request bodies are not supported".into(),
        ));
    }
    // Read any body (discarding an oversized one) so the next request on the connection parses.
    let length: u64 = match request.header("Content-Length") {
        Some(v) => v
            .parse()
            .map_err(|_| RequestError::Malformed("bad Content-Length".into()))?,
        None => 0,
    };
    if length > MAX_BODY {
        io::copy(&mut reader.by_ref().take(length), &mut io::sink())
            .map_err(|_| RequestError::Io)?;
    } else if length > 0 {
        reader
            .by_ref()
            .take(length)
            .read_to_end(&mut request.body)
            .map_err(|_| RequestError::Io)?;
        if request.body.len() as u64 != length {
            return Err(RequestError::Io);
        }
    }
    Ok(Some(request))
}

// ---------------------------------------------------------------------------------------------
// Routing and replies

enum Route {
    Collection {
        namespace: Option<String>,
    },
    Item {
        namespace: String,
        name: String,
    },
    /// The `token` subresource of one ServiceAccount.
    TokenRequest {
        namespace: String,
        name: String,
    },
    Discovery,
    Jwks,
    /// `/version`, which `system:public-info-viewer` opens to everyone.
    Version,
    Unknown,
}

fn route(path: &str) -> Route {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segments.as_slice() {
        [".well-known", "openid-configuration"] => Route::Discovery,
        ["openid", "v1", "jwks"] => Route::Jwks,
        ["version"] => Route::Version,
        ["api", "v1", "serviceaccounts"] => Route::Collection { namespace: None },
        ["api", "v1", "namespaces", ns, "serviceaccounts"] if !ns.is_empty() => Route::Collection {
            namespace: Some(ns.to_string()),
        },
        ["api", "v1", "namespaces", ns, "serviceaccounts", name]
            if !ns.is_empty() && !name.is_empty() =>
        {
            Route::Item {
                namespace: ns.to_string(),
                name: name.to_string(),
            }
        }
        ["api", "v1", "namespaces", ns, "serviceaccounts", name, "token"]
            if !ns.is_empty() && !name.is_empty() =>
        {
            Route::TokenRequest {
                namespace: ns.to_string(),
                name: name.to_string(),
            }
        }
        _ => Route::Unknown,
    }
}

/// What to send back for one request.
enum Reply {
    Json {
        status: u16,
        body: Value,
        content_type: &'static str,
        headers: Vec<(String, String)>,
    },
    Watch(Box<WatchPlan>),
}

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Reply::Json {
            status,
            body,
            content_type: "application/json",
            headers: Vec::new(),
        }
    }

    fn status(code: u16, reason: &str, message: &str) -> Self {
        Reply::json(code, status_body(code, reason, message, None))
    }

    fn with_header(mut self, name: &str, value: String) -> Self {
        if let Reply::Json { headers, .. } = &mut self {
            headers.push((name.to_string(), value));
        }
        self
    }

    fn code(&self) -> u16 {
        match self {
            Reply::Json { status, .. } => *status,
            Reply::Watch(_) => 200,
        }
    }
}

/// Answers one request; returns whether the connection may serve another one.
fn respond(shared: &Shared, req: &Request, stream: &mut Conn) -> io::Result<bool> {
    let route = route(&req.path);
    let kind = match &route {
        Route::Collection { .. } if parse_bool(req.param("watch")) => RequestKind::Watch,
        Route::Collection { .. } => RequestKind::List,
        Route::Item { .. } => RequestKind::Get,
        Route::Discovery => RequestKind::Discovery,
        Route::Jwks => RequestKind::Jwks,
        Route::TokenRequest { .. } => RequestKind::TokenRequest,
        Route::Version | Route::Unknown => RequestKind::Other,
    };
    let reply = {
        let mut st = shared.state.lock();
        let reply = decide(shared, &mut st, req, &route, kind);
        if st.requests.len() >= MAX_RECORDED_REQUESTS {
            st.requests.pop_front();
        }
        st.requests.push_back(RecordedRequest {
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            kind,
            authorization_present: req.header("Authorization").is_some(),
            client_certificate: req.client_certificate,
            status: reply.code(),
        });
        reply
    };
    let keep_alive = req.keep_alive();
    match reply {
        Reply::Json {
            status,
            body,
            content_type,
            headers,
        } => {
            write_json(stream, status, &body, &headers, content_type, keep_alive)?;
            Ok(keep_alive)
        }
        Reply::Watch(plan) => run_watch(shared, stream, *plan, keep_alive),
    }
}

/// Everything that happens before a request is served: counting, faults, authentication.
fn decide(
    shared: &Shared,
    st: &mut MutexGuard<'_, State>,
    req: &Request,
    route: &Route,
    kind: RequestKind,
) -> Reply {
    st.counters.total += 1;
    match kind {
        RequestKind::List => st.counters.list += 1,
        RequestKind::Watch => st.counters.watch += 1,
        RequestKind::Get => st.counters.get += 1,
        RequestKind::Discovery => st.counters.discovery += 1,
        RequestKind::Jwks => st.counters.jwks += 1,
        RequestKind::TokenRequest => st.counters.token += 1,
        RequestKind::Other => {}
    }
    let target = req.target();
    if let Some(fault) = st.faults.iter_mut().find(|f| f.matches(kind, &target)) {
        fault.times -= 1;
        let fault = fault.clone();
        st.faults.retain(|f| f.times > 0);
        return injected_failure(&fault, kind);
    }
    if let Err(denied) = authenticate(st, req, kind, matches!(route, Route::Version)) {
        return denied;
    }
    if let Route::TokenRequest { namespace, name } = route {
        // The subresource only implements create.
        if req.method != "POST" {
            return method_not_allowed(&req.method);
        }
        return token_request::create(shared, st, req, namespace, name);
    }
    if req.method != "GET" {
        return match route {
            Route::Unknown => not_found_path(),
            _ => method_not_allowed(&req.method),
        };
    }
    match route {
        Route::Collection { namespace } if kind == RequestKind::Watch => {
            start_watch(shared, st, req, namespace.as_deref())
        }
        Route::Collection { namespace } => list(shared, st, req, namespace.as_deref()),
        Route::Item { namespace, name } => get_one(st, namespace, name),
        Route::Discovery => discovery(shared, st),
        Route::Jwks => Reply::Json {
            status: 200,
            body: st.jwks.clone(),
            content_type: "application/jwk-set+json",
            headers: vec![(
                "Cache-Control".into(),
                format!("public, max-age={}", st.jwks_max_age),
            )],
        },
        Route::Version => Reply::json(
            200,
            json!({
                "major": "1",
                "minor": "34",
                "gitVersion": "v1.34.0",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2025-08-27T00:00:00Z",
                "goVersion": "go1.24.6",
                "compiler": "gc",
                "platform": "linux/amd64",
            }),
        ),
        Route::TokenRequest { .. } | Route::Unknown => not_found_path(),
    }
}

fn method_not_allowed(method: &str) -> Reply {
    Reply::status(
        405,
        "MethodNotAllowed",
        &format!("the server does not allow this method on the requested resource ({method})"),
    )
}

/// Bearer-token authentication, then the anonymous-user rules of a real cluster: without
/// credentials a request is anonymous, which is only allowed for discovery when enabled.
fn authenticate(
    st: &State,
    req: &Request,
    kind: RequestKind,
    public_info: bool,
) -> Result<(), Reply> {
    // A verified client certificate authenticates the request, as the apiserver's x509
    // authenticator does (it runs before the token authenticators; the first success wins).
    if !st.auth_required || req.client_certificate {
        return Ok(());
    }
    let discovery = matches!(kind, RequestKind::Discovery | RequestKind::Jwks);
    match (req.header("Authorization"), req.bearer()) {
        (_, Some(token)) if st.tokens.iter().any(|t| t == token) => Ok(()),
        // Wrong or unusable credentials fail authentication even where anonymous would pass.
        (Some(_), _) => Err(unauthorized()),
        // kubeadm clusters let anonymous requests read /version (kubectl's wrapper asks first).
        (None, _) if public_info => Ok(()),
        (None, _) if st.oidc_anonymous && discovery => Ok(()),
        (None, _) if st.oidc_anonymous => Err(Reply::status(
            403,
            "Forbidden",
            &forbidden_message("system:anonymous", kind, &req.path),
        )),
        (None, _) => Err(unauthorized()),
    }
}

fn unauthorized() -> Reply {
    Reply::status(401, "Unauthorized", "Unauthorized")
}

fn not_found_path() -> Reply {
    Reply::json(
        404,
        status_body(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Some(json!({})),
        ),
    )
}

fn forbidden_message(user: &str, kind: RequestKind, path: &str) -> String {
    let verb = match kind {
        RequestKind::List => "list",
        RequestKind::Watch => "watch",
        RequestKind::TokenRequest => "create",
        _ => "get",
    };
    match kind {
        RequestKind::Discovery | RequestKind::Jwks | RequestKind::Other => {
            format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\"")
        }
        _ => {
            let scope = match path.split('/').nth(4) {
                Some(ns) if path.starts_with("/api/v1/namespaces/") => {
                    format!("in the namespace \"{ns}\"")
                }
                _ => "at the cluster scope".to_string(),
            };
            if kind == RequestKind::TokenRequest {
                let name = path.split('/').nth(6).unwrap_or_default();
                return format!(
                    "serviceaccounts \"{name}\" is forbidden: User \"{user}\" cannot create \
                     resource \"serviceaccounts/token\" in API group \"\" {scope}"
                );
            }
            format!(
                "serviceaccounts is forbidden: User \"{user}\" cannot {verb} resource \
                 \"serviceaccounts\" in API group \"\" {scope}"
            )
        }
    }
}

fn injected_failure(fault: &Fault, kind: RequestKind) -> Reply {
    let (reason, message) = match fault.status {
        400 => ("BadRequest", "bad request".to_string()),
        401 => ("Unauthorized", "Unauthorized".to_string()),
        403 => (
            "Forbidden",
            forbidden_message(
                "system:serviceaccount:nats:nats-k8s-oidc-callout",
                kind,
                "/",
            ),
        ),
        404 => (
            "NotFound",
            "the server could not find the requested resource".into(),
        ),
        409 => ("Conflict", "the object has been modified".into()),
        410 => ("Expired", "too old resource version".into()),
        422 => ("Invalid", "the request is invalid".into()),
        429 => (
            "TooManyRequests",
            "Too many requests, please try again later.".into(),
        ),
        500 => (
            "InternalError",
            "Internal error occurred: injected fault".into(),
        ),
        503 => (
            "ServiceUnavailable",
            "the server is currently unable to handle the request".into(),
        ),
        504 => (
            "Timeout",
            "Timeout: request did not complete within the allowed duration".into(),
        ),
        _ => ("", "injected fault".into()),
    };
    let details = fault
        .retry_after
        .map(|secs| json!({ "retryAfterSeconds": secs }));
    let reply = Reply::json(
        fault.status,
        status_body(fault.status, reason, &message, details),
    );
    match fault.retry_after {
        Some(secs) => reply.with_header("Retry-After", secs.to_string()),
        None => reply,
    }
}

fn get_one(st: &State, namespace: &str, name: &str) -> Reply {
    match st.objects.get(&(namespace.to_string(), name.to_string())) {
        Some(account) => Reply::json(200, account.to_json(true)),
        None => service_account_not_found(name),
    }
}

/// The API server's 404 for a ServiceAccount that does not exist (GET, TokenRequest).
fn service_account_not_found(name: &str) -> Reply {
    Reply::json(
        404,
        status_body(
            404,
            "NotFound",
            &format!("serviceaccounts \"{name}\" not found"),
            Some(json!({ "name": name, "kind": "serviceaccounts" })),
        ),
    )
}

fn discovery(shared: &Shared, st: &State) -> Reply {
    let mut algs: Vec<String> = st.jwks["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k["alg"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    algs.sort();
    algs.dedup();
    let body = json!({
        "issuer": shared.issuer,
        "jwks_uri": format!("{}/openid/v1/jwks", shared.url),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
    });
    Reply::json(200, body).with_header(
        "Cache-Control",
        format!("public, max-age={}", st.jwks_max_age),
    )
}

// ---------------------------------------------------------------------------------------------
// Lists

/// The continue token format of the apiserver: base64 of `{"v","rv","start"}`.
fn encode_continue(rv: u64, last_key: &(String, String)) -> String {
    let start = format!("{}/{}\u{0}", last_key.0, last_key.1);
    let token = json!({ "v": "meta.k8s.io/v1", "rv": rv, "start": start });
    URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Option<(u64, String)> {
    let bytes = URL_SAFE_NO_PAD.decode(token.trim_end_matches('=')).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    if value["v"] != "meta.k8s.io/v1" {
        return None;
    }
    Some((value["rv"].as_u64()?, value["start"].as_str()?.to_string()))
}

fn list(
    shared: &Shared,
    st: &mut MutexGuard<'_, State>,
    req: &Request,
    namespace: Option<&str>,
) -> Reply {
    if let Some(refused) = refuse_selectors(req) {
        return refused;
    }
    let limit = match req.param("limit").filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n > 0 => Some(n as usize),
            Ok(_) => None,
            Err(_) => return Reply::status(400, "BadRequest", &format!("invalid limit: {l:?}")),
        },
    };
    let rv_param = req.param("resourceVersion").unwrap_or("");
    let rv_match = req.param("resourceVersionMatch").unwrap_or("");

    if let Some(token) = req.param("continue").filter(|c| !c.is_empty()) {
        if !rv_param.is_empty() {
            return Reply::status(
                400,
                "BadRequest",
                "specifying resource version is not allowed when using continue",
            );
        }
        let Some((rv, start)) = decode_continue(token) else {
            return Reply::status(
                400,
                "BadRequest",
                "continue key is not valid: incorrect encoded start resourceVersion",
            );
        };
        let issued = st
            .continues
            .get(token)
            .is_some_and(|c| c.issued.elapsed() < CONTINUE_TOKEN_TTL);
        if !issued {
            return Reply::status(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list \
                 result. You can start a new list without the continue parameter.",
            );
        }
        let objects = st.objects_at(rv);
        let rest = objects
            .values()
            .filter(|a| format!("{}/{}\u{0}", a.namespace, a.name) > start);
        return list_page(&mut st.continues, namespace, rv, rest, limit);
    }

    if rv_param.is_empty() && !rv_match.is_empty() {
        return invalid_list_options(
            "resourceVersionMatch",
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        );
    }
    if !rv_match.is_empty() && rv_match != "NotOlderThan" && rv_match != "Exact" {
        return invalid_list_options(
            "resourceVersionMatch",
            &format!(
                "Unsupported value: \"{rv_match}\": supported values: \"Exact\", \"NotOlderThan\""
            ),
        );
    }
    if rv_param.is_empty() {
        return list_current(st, namespace, limit);
    }
    let Ok(requested) = rv_param.parse::<u64>() else {
        return invalid_rv(rv_param);
    };
    if requested == 0 {
        if rv_match == "Exact" {
            return invalid_list_options(
                "resourceVersionMatch",
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            );
        }
        // Served from the watch cache: the whole list, limit ignored.
        return list_current(st, namespace, None);
    }
    if !wait_for_rv(shared, st, requested) {
        return too_large_rv(st, requested);
    }
    let exact = rv_match == "Exact" || (rv_match.is_empty() && limit.is_some());
    if !exact {
        return list_current(st, namespace, limit);
    }
    if st.too_old(requested) {
        let message = st.too_old_message(rv_param);
        return Reply::status(410, "Expired", &message);
    }
    let objects = st.objects_at(requested);
    list_page(
        &mut st.continues,
        namespace,
        requested,
        objects.values(),
        limit,
    )
}

/// A list of the current state.
fn list_current(st: &mut State, namespace: Option<&str>, limit: Option<usize>) -> Reply {
    let rv = st.rv;
    list_page(&mut st.continues, namespace, rv, st.objects.values(), limit)
}

/// One page of a list at `rv`, with a continue token when more items remain.
fn list_page<'a>(
    continues: &mut HashMap<String, IssuedContinue>,
    namespace: Option<&str>,
    rv: u64,
    candidates: impl Iterator<Item = &'a StoredAccount>,
    limit: Option<usize>,
) -> Reply {
    let matching: Vec<&StoredAccount> = candidates.filter(|a| a.in_scope(namespace)).collect();
    let take = limit.unwrap_or(usize::MAX).min(matching.len());
    let items: Vec<Value> = matching[..take].iter().map(|a| a.to_json(false)).collect();
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    let remaining = matching.len() - take;
    if remaining > 0 {
        let token = encode_continue(rv, &matching[take - 1].key());
        continues.insert(
            token.clone(),
            IssuedContinue {
                rv,
                issued: Instant::now(),
            },
        );
        meta.insert("continue".into(), json!(token));
        meta.insert("remainingItemCount".into(), json!(remaining));
    }
    Reply::json(
        200,
        json!({
            "kind": "ServiceAccountList",
            "apiVersion": "v1",
            "metadata": Value::Object(meta),
            "items": items,
        }),
    )
}

/// The 400 for a label or field selector, which the emulator does not implement: refused rather
/// than ignored, so that a test relying on one fails instead of seeing unfiltered objects.
fn refuse_selectors(req: &Request) -> Option<Reply> {
    let selector = ["labelSelector", "fieldSelector"]
        .into_iter()
        .find(|name| req.param(name).is_some_and(|v| !v.is_empty()))?;
    Some(Reply::status(
        400,
        "BadRequest",
        &format!("{selector} is not implemented by the emulator (tests/support/kube)"),
    ))
}

fn invalid_list_options(field: &str, detail: &str) -> Reply {
    invalid_list_options_all(&[(field.to_string(), detail.to_string())])
}

/// A 422 Invalid Status about ListOptions, the shape the apiserver uses for bad list/watch options.
fn invalid_list_options_all(errors: &[(String, String)]) -> Reply {
    let forbidden = |d: &str| {
        if d.starts_with("Unsupported value") {
            ("FieldValueNotSupported", d.to_string())
        } else {
            ("FieldValueForbidden", format!("Forbidden: {d}"))
        }
    };
    let causes: Vec<Value> = errors
        .iter()
        .map(|(field, d)| {
            let (reason, message) = forbidden(d);
            json!({ "reason": reason, "message": message, "field": field })
        })
        .collect();
    let described: Vec<String> = errors
        .iter()
        .map(|(field, d)| format!("{field}: {}", forbidden(d).1))
        .collect();
    let summary = if described.len() == 1 {
        described[0].clone()
    } else {
        format!("[{}]", described.join(", "))
    };
    Reply::json(
        422,
        status_body(
            422,
            "Invalid",
            &format!("ListOptions.meta.k8s.io \"\" is invalid: {summary}"),
            Some(json!({ "group": "meta.k8s.io", "kind": "ListOptions", "causes": causes })),
        ),
    )
}

fn invalid_rv(rv: &str) -> Reply {
    Reply::status(
        400,
        "BadRequest",
        &format!("resourceVersion: Invalid value: \"{rv}\": invalid resource version"),
    )
}

/// Waits (bounded) for the store to reach `rv`, as the watch cache does; false if it never did.
fn wait_for_rv(shared: &Shared, st: &mut MutexGuard<'_, State>, rv: u64) -> bool {
    let deadline = Instant::now() + TOO_LARGE_RV_WAIT;
    while st.rv < rv {
        if shared.wake.wait_until(st, deadline).timed_out() {
            return st.rv >= rv;
        }
    }
    true
}

fn too_large_rv(st: &State, requested: u64) -> Reply {
    Reply::json(
        504,
        status_body(
            504,
            "Timeout",
            &format!(
                "Timeout: Too large resource version: {requested}, current: {}",
                st.rv
            ),
            Some(json!({
                "causes": [{ "reason": "ResourceVersionTooLarge",
                             "message": "Too large resource version" }],
                "retryAfterSeconds": 1,
            })),
        ),
    )
    .with_header("Retry-After", "1".into())
}

// ---------------------------------------------------------------------------------------------
// Watches

/// A watch that has been accepted: what to send first, and how to follow.
struct WatchPlan {
    /// Lines (JSON events) to send before following the log.
    initial: Vec<String>,
    /// End the stream cleanly right after `initial` (used for the in-stream 410).
    end_after_initial: bool,
    /// Registered in `watch_cursors` under this id while following.
    id: u64,
    cursor: u64,
    /// The namespace watched, or none for all.
    namespace: Option<String>,
    bookmarks: bool,
    deadline: Instant,
    generation: u64,
}

fn event_line(kind: &str, object: &Value) -> String {
    json!({ "type": kind, "object": object }).to_string()
}

fn bookmark_line(rv: u64) -> String {
    // A typed bookmark: metadata carries only the resourceVersion (and the zero
    // creationTimestamp Go serializes as null).
    let meta = json!({ "resourceVersion": rv.to_string(), "creationTimestamp": null });
    event_line(
        "BOOKMARK",
        &json!({ "kind": "ServiceAccount", "apiVersion": "v1", "metadata": meta }),
    )
}

/// A change as a watch of `namespace` sees it, if it sees it at all. A deletion carries the
/// object's last state at the deletion's resourceVersion.
fn view_change(change: &Change, namespace: Option<&str>) -> Option<String> {
    change
        .object
        .in_scope(namespace)
        .then(|| event_line(change.kind.event_type(), &change.object.to_json(true)))
}

/// The current objects as ADDED events, for a watch from resourceVersion "" or "0".
fn synthetic_added(st: &State, namespace: Option<&str>) -> Vec<String> {
    st.objects
        .values()
        .filter(|a| a.in_scope(namespace))
        .map(|a| event_line("ADDED", &a.to_json(true)))
        .collect()
}

/// Streaming lists are not emulated: a watch asking for one (`sendInitialEvents`, which needs
/// `resourceVersionMatch=NotOlderThan`) gets the 422 of an API server with the WatchList feature
/// gate off, with the causes its watch-option validation lists, in its order.
fn refuse_streaming_list(req: &Request) -> Option<Reply> {
    let send_initial = req.param("sendInitialEvents").is_some();
    let rv_match = req.param("resourceVersionMatch").unwrap_or("");
    let mut errors = Vec::new();
    let mut forbid = |field: &str, detail: String| errors.push((field.to_string(), detail));
    if send_initial {
        if rv_match != "NotOlderThan" {
            forbid(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".into(),
            );
        }
        forbid(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"
                .into(),
        );
    }
    if !rv_match.is_empty() {
        if !send_initial {
            forbid(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
                    .into(),
            );
        }
        if rv_match != "NotOlderThan" {
            forbid(
                "resourceVersionMatch",
                format!("Unsupported value: \"{rv_match}\": supported values: \"NotOlderThan\""),
            );
        }
    }
    (!errors.is_empty()).then(|| invalid_list_options_all(&errors))
}

fn start_watch(
    shared: &Shared,
    st: &mut MutexGuard<'_, State>,
    req: &Request,
    namespace: Option<&str>,
) -> Reply {
    if let Some(refused) = refuse_selectors(req) {
        return refused;
    }
    if let Some(refused) = refuse_streaming_list(req) {
        return refused;
    }
    let timeout = match req
        .param("timeoutSeconds")
        .filter(|t| !t.is_empty() && *t != "0")
    {
        Some(t) => match t.parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => {
                return Reply::status(400, "BadRequest", &format!("invalid timeoutSeconds: {t:?}"))
            }
        },
        // Unset or 0: the apiserver's default, random in [min-request-timeout, 2x] (1800 s).
        None => Duration::from_secs(fastrand::u64(1800..=3600)),
    };
    let bookmarks = parse_bool(req.param("allowWatchBookmarks"));
    let rv_param = req.param("resourceVersion").unwrap_or("");
    let requested = match rv_param {
        "" => None,
        other => match other.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => return invalid_rv(other),
        },
    };
    if let Some(rv) = requested.filter(|rv| *rv > 0) {
        if !wait_for_rv(shared, st, rv) {
            return too_large_rv(st, rv);
        }
    }

    let initial = match requested {
        None | Some(0) => synthetic_added(st, namespace),
        Some(rv) if st.too_old(rv) => {
            let message = st.too_old_message(rv_param);
            if st.expired_watch_as_http {
                return Reply::status(410, "Expired", &message);
            }
            let error = status_body(410, "Expired", &message, None);
            return Reply::Watch(Box::new(WatchPlan {
                initial: vec![event_line("ERROR", &error)],
                end_after_initial: true,
                id: 0,
                cursor: st.rv,
                namespace: namespace.map(String::from),
                bookmarks: false,
                deadline: Instant::now(),
                generation: st.watch_generation,
            }));
        }
        Some(rv) => st
            .log
            .iter()
            .filter(|c| c.rv > rv)
            .filter_map(|c| view_change(c, namespace))
            .collect(),
    };
    let id = st.next_watch_id;
    st.next_watch_id += 1;
    let cursor = st.rv;
    st.watch_cursors.insert(id, cursor);
    Reply::Watch(Box::new(WatchPlan {
        initial,
        end_after_initial: false,
        id,
        cursor,
        namespace: namespace.map(String::from),
        bookmarks,
        deadline: Instant::now() + timeout,
        generation: st.watch_generation,
    }))
}

/// Removes a watch's cursor however the stream ends, so the log can be pruned.
struct WatchRegistration<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for WatchRegistration<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        st.watch_cursors.remove(&self.id);
        st.prune();
    }
}

/// What a watch stream does next.
enum WatchStep {
    /// Cut the connection without the terminating chunk.
    Abort,
    /// Send these lines and carry on.
    Send(Vec<String>),
    /// Send these lines, then end the stream cleanly.
    End(Vec<String>),
    /// Nothing to send: check the client is still there.
    Idle,
}

/// Streams one watch; returns whether the connection may serve another request.
fn run_watch(
    shared: &Shared,
    stream: &mut Conn,
    plan: WatchPlan,
    keep_alive: bool,
) -> io::Result<bool> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
         Cache-Control: no-cache, private\r\nTransfer-Encoding: chunked\r\n",
    );
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    if plan.end_after_initial {
        stream.write_all(head.as_bytes())?;
        write_lines(stream, &plan.initial)?;
        stream.write_all(b"0\r\n\r\n")?;
        return Ok(keep_alive);
    }
    let _registration = WatchRegistration {
        shared,
        id: plan.id,
    };
    stream.write_all(head.as_bytes())?;
    stream.flush()?;
    let mut follower = WatchFollower::new(shared, plan);
    loop {
        let step = follower.step(&mut shared.state.lock());
        match step {
            WatchStep::Abort => {
                stream.abort();
                return Ok(false);
            }
            WatchStep::Send(lines) => write_lines(stream, &lines)?,
            WatchStep::End(lines) => {
                write_lines(stream, &lines)?;
                stream.write_all(b"0\r\n\r\n")?;
                return Ok(keep_alive);
            }
            WatchStep::Idle => {
                if !stream.peer_connected() {
                    return Ok(false);
                }
            }
        }
    }
}

/// The state of one open watch stream between steps.
struct WatchFollower<'a> {
    shared: &'a Shared,
    plan: WatchPlan,
    /// The initial events, until they are sent (held back while watches hang).
    pending_initial: Option<Vec<String>>,
    /// Everything up to this resourceVersion has been considered for this stream.
    cursor: u64,
    next_bookmark: Option<Instant>,
    pre_deadline_bookmark: Option<Instant>,
}

impl<'a> WatchFollower<'a> {
    fn new(shared: &'a Shared, mut plan: WatchPlan) -> Self {
        let now = Instant::now();
        let next_bookmark = shared
            .bookmark_interval
            .filter(|_| plan.bookmarks)
            .map(|d| now + d);
        let lead = PRE_DEADLINE_BOOKMARK_LEAD.min(plan.deadline.saturating_duration_since(now) / 2);
        let pre_deadline_bookmark = plan.bookmarks.then(|| plan.deadline - lead);
        WatchFollower {
            shared,
            pending_initial: Some(std::mem::take(&mut plan.initial)),
            cursor: plan.cursor,
            plan,
            next_bookmark,
            pre_deadline_bookmark,
        }
    }

    /// Decides the next step, waiting (bounded) on the condvar when there is nothing to do.
    fn step(&mut self, st: &mut MutexGuard<'_, State>) -> WatchStep {
        if self.shared.stopping.load(Ordering::SeqCst)
            || st.watch_generation != self.plan.generation
        {
            return WatchStep::Abort;
        }
        let now = Instant::now();
        if st.watch_hang {
            self.shared.wake.wait_until(st, now + LIVENESS_POLL);
            return WatchStep::Idle;
        }
        let mut lines = self.pending_initial.take().unwrap_or_default();
        lines.extend(
            st.log
                .iter()
                .filter(|c| c.rv > self.cursor)
                .filter_map(|c| view_change(c, self.plan.namespace.as_deref())),
        );
        self.cursor = st.rv;
        st.watch_cursors.insert(self.plan.id, self.cursor);
        if now >= self.plan.deadline {
            return WatchStep::End(lines);
        }
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.next_bookmark) || due(self.pre_deadline_bookmark) {
            lines.push(bookmark_line(self.cursor));
            if due(self.pre_deadline_bookmark) {
                self.pre_deadline_bookmark = None;
            }
            if let (Some(t), Some(interval)) = (self.next_bookmark, self.shared.bookmark_interval) {
                if t <= now {
                    self.next_bookmark = Some(now + interval);
                }
            }
        }
        if !lines.is_empty() {
            return WatchStep::Send(lines);
        }
        let wake_at = [
            self.next_bookmark,
            self.pre_deadline_bookmark,
            Some(self.plan.deadline),
        ]
        .into_iter()
        .flatten()
        .fold(now + LIVENESS_POLL, Instant::min);
        self.shared.wake.wait_until(st, wake_at);
        WatchStep::Idle
    }
}

fn write_lines(stream: &mut Conn, lines: &[String]) -> io::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::new();
    for line in lines {
        // One event per chunk, newline-terminated, as the apiserver frames them.
        buf.extend_from_slice(format!("{:x}\r\n", line.len() + 1).as_bytes());
        buf.extend_from_slice(line.as_bytes());
        buf.extend_from_slice(b"\n\r\n");
    }
    stream.write_all(&buf)?;
    stream.flush()
}

// ---------------------------------------------------------------------------------------------
// Wire helpers

/// A `kind: Status` failure body.
fn status_body(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut body = Map::new();
    body.insert("kind".into(), json!("Status"));
    body.insert("apiVersion".into(), json!("v1"));
    body.insert("metadata".into(), json!({}));
    body.insert("status".into(), json!("Failure"));
    body.insert("message".into(), json!(message));
    body.insert("reason".into(), json!(reason));
    if let Some(d) = details {
        body.insert("details".into(), d);
    }
    body.insert("code".into(), json!(code));
    Value::Object(body)
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn write_json(
    stream: &mut Conn,
    status: u16,
    body: &Value,
    headers: &[(String, String)],
    content_type: &str,
    keep_alive: bool,
) -> io::Result<()> {
    let mut payload = serde_json::to_vec(body).map_err(io::Error::other)?;
    payload.push(b'\n');
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason_phrase(status),
        payload.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&payload);
    stream.write_all(&out)?;
    stream.flush()
}

/// Go's `strconv.ParseBool` truthy values.
fn parse_bool(value: Option<&str>) -> bool {
    matches!(value, Some("1" | "t" | "T" | "true" | "TRUE" | "True"))
}

/// Decodes an `application/x-www-form-urlencoded` query into pairs, in order.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn to_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The current time as RFC 3339 in UTC with second precision, like `metav1.Time`.
fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// `secs` since the Unix epoch as RFC 3339 in UTC with second precision.
fn rfc3339(secs: u64) -> String {
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
