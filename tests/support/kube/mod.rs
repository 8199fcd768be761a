//! A Kubernetes API server emulator for ServiceAccounts, Pods and OIDC discovery, faithful to the
//! behaviours in kubernetes-facts.md §4 and §7 that the service relies on: paginated lists with
//! continue tokens, a global resourceVersion shared by both kinds (one change log, as etcd's one
//! revision), chunked watch streams with history replay, 410 expiry, bookmarks, graceful pod
//! deletion (`deletionTimestamp` first, then DELETED), bearer-token checks, the OIDC discovery
//! endpoints, the TokenRequest subresource (`kubectl create token`), Events (created, validated
//! and kept for the test to read; `create` can be refused as by RBAC), and fault injection
//! driven by the test.
//!
//! Not emulated, because the service never asks for them: label and field selectors (answered 400
//! BadRequest saying so, rather than ignored) and streaming lists (`sendInitialEvents`, answered
//! 422 Invalid as by an API server with the WatchList feature gate off); reading Events back
//! through the API (answered 405: tests read them from the handle).
//!
//! Plain HTTP by default; [`KubeEmulatorBuilder::tls`] makes it serve HTTPS with freshly
//! generated certificates (and optionally require client certificates), with every behaviour
//! above unchanged.
//!
//! Thread layout: one accept thread; one thread per TCP connection, which does the TLS handshake
//! if any, reads requests (keep-alive supported), answers them, and for a watch stays in the
//! streaming loop until the stream ends. All state sits in one `parking_lot` mutex; a condvar
//! wakes watch streams on every write or fault switch. Dropping the emulator stops and joins
//! every thread.
//!
//! One request's path through the files: [`http`] accepts the connection ([`tls`] does the
//! handshake) and parses the request; [`routing`] routes it, applies injected faults and
//! authentication, and records it; then [`list`], [`watch`], [`discovery`], [`token_request`] or
//! [`events`] answers it from the store in [`state`] (pods are written by [`pods`]). This file is
//! the test's side: the builder and the handle. It is about 800 lines because it is the
//! emulator's whole public surface, one short documented method per setting, switch, write or
//! counter.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex, MutexGuard};
use serde_json::{json, Value};

use super::tokens::{random_uuid, SigningKey};

mod discovery;
mod events;
mod http;
mod list;
mod pods;
mod routing;
mod state;
pub mod tls;
mod token_request;
mod watch;

pub use routing::{Fault, RecordedRequest, RequestKind};
use state::{to_map, Deletion, Resource, Shared, State, StoredObject};
pub use tls::{TlsMaterial, TlsOptions};

/// How many events a new watch can replay (the watch cache's default capacity is 100).
const DEFAULT_HISTORY_WINDOW: usize = 100;
/// Periodic bookmark interval for tests (the real cache sends one about once a minute).
const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// Default `Cache-Control: max-age` of the discovery endpoints (static key files).
const DEFAULT_JWKS_MAX_AGE: u64 = 3600;
/// The issuer a kubeadm-style cluster reports.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

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
            history_window: self.history_window,
            tokens: self.tokens,
            auth_required: self.auth_required,
            oidc_anonymous: self.oidc_anonymous,
            expired_watch_as_http: self.expired_watch_as_http,
            jwks,
            jwks_max_age: self.jwks_max_age,
            token_signer: self.token_signer,
            ..State::empty()
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
            conns: Mutex::default(),
            bookmark_interval: self.bookmark_interval,
            issuer: self.issuer,
            url: format!("{scheme}://{addr}"),
            tls: tls_config,
        });
        let accept_shared = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("kube-emu-accept".into())
            .spawn(move || http::accept_loop(accept_shared, listener))
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
        let account =
            StoredObject::service_account(namespace, name, to_map(annotations), to_map(labels));
        self.write(|st| st.create(account))
    }

    /// Seeds `count` realistic ServiceAccounts at once (one resourceVersion, no watch events),
    /// `per_namespace` to a namespace (`team-00000`, `team-00001`, ...; names `sa-0000000`, ...).
    /// Each is what a GitOps-managed account looks like on a cluster: the two `nats.io/`
    /// annotations, kubectl's `last-applied-configuration` (about 700 bytes), three labels and a
    /// `managedFields` entry; its uid is a random canonical UUID. Annotations, labels and managed
    /// fields are shared within a namespace, so a million objects stay cheap to hold here.
    pub fn seed_realistic_service_accounts(&self, count: usize, per_namespace: usize) {
        let per_namespace = per_namespace.max(1);
        let created = state::rfc3339_now();
        let mut shared: Option<(String, state::Realistic)> = None;
        let accounts = (0..count).map(|i| {
            let namespace = format!("team-{:05}", i / per_namespace);
            if shared.as_ref().is_none_or(|(ns, _)| *ns != namespace) {
                shared = Some((namespace.clone(), state::Realistic::new(&namespace)));
            }
            let realistic = &shared.as_ref().expect("just set").1;
            StoredObject {
                name: format!("sa-{i:07}"),
                namespace,
                uid: state::fast_uuid(),
                resource_version: 0,
                created: created.clone(),
                labels: realistic.labels.clone(),
                annotations: realistic.annotations.clone(),
                managed_fields: Some(realistic.managed_fields.clone()),
                deletion: None,
                body: state::Body::ServiceAccount,
            }
        });
        self.lock().seed(accounts);
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
        self.write(|st| {
            st.modify(Resource::ServiceAccounts, namespace, name, |a| {
                a.annotations = Arc::new(annotations)
            })
        })
        .to_string()
    }

    /// Deletes `namespace/name` (a DELETED event carrying its last state); returns the
    /// resourceVersion of the deletion. Panics if it does not exist.
    pub fn delete_service_account(&self, namespace: &str, name: &str) -> String {
        self.write(|st| st.delete(Resource::ServiceAccounts, namespace, name))
            .to_string()
    }

    /// The object as a single GET would return it, if it exists.
    pub fn service_account(&self, namespace: &str, name: &str) -> Option<Value> {
        self.object_json(Resource::ServiceAccounts, namespace, name)
    }

    /// The uid of `namespace/name`, if it exists.
    pub fn uid_of(&self, namespace: &str, name: &str) -> Option<String> {
        self.object_uid(Resource::ServiceAccounts, namespace, name)
    }

    /// Creates pod `namespace/name` running as `service_account` on `node-1`; returns its uid.
    pub fn create_pod(&self, namespace: &str, name: &str, service_account: &str) -> String {
        self.create_pod_on_node(namespace, name, service_account, "node-1")
    }

    /// Creates pod `namespace/name` running as `service_account` on `node`; returns its uid.
    /// It is a Deployment's pod: owned by the ReplicaSet its name's `generateName` (all up to
    /// the last `-`) names, Running and Ready. Panics if it already exists (a test bug).
    pub fn create_pod_on_node(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
        node: &str,
    ) -> String {
        let created = state::rfc3339_now();
        let shape = pods::PodShape::new(&created);
        let template = pods::PodTemplate::new(namespace, name, &shape);
        let pod = template.pod(namespace, name, service_account, node, &created);
        self.write(|st| st.create(pod))
    }

    /// Deletes pod `namespace/name` at once (a DELETED event carrying its last state, with the
    /// deletionTimestamp of a graceful deletion begun before); returns the deletion's
    /// resourceVersion. Panics if it does not exist.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> String {
        self.write(|st| st.delete(Resource::Pods, namespace, name))
            .to_string()
    }

    /// Begins a graceful deletion of pod `namespace/name`, as `kubectl delete` does: sets
    /// `deletionTimestamp` (now + `grace_seconds`) and `deletionGracePeriodSeconds` (a MODIFIED
    /// event); the pod stays until [`KubeEmulator::delete_pod`] finishes it, as the kubelet
    /// would. Returns the new resourceVersion. Panics if it does not exist.
    pub fn terminate_pod(&self, namespace: &str, name: &str, grace_seconds: u64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let deletion = Deletion {
            timestamp: state::rfc3339(now + grace_seconds),
            grace_seconds,
        };
        self.write(|st| {
            st.modify(Resource::Pods, namespace, name, |p| {
                p.deletion = Some(deletion)
            })
        })
        .to_string()
    }

    /// The uid of pod `namespace/name`, if it exists.
    pub fn pod_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.object_uid(Resource::Pods, namespace, name)
    }

    /// Pod `namespace/name` as a single GET would return it, if it exists.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        self.object_json(Resource::Pods, namespace, name)
    }

    /// Seeds `count` realistic Pods at once (one resourceVersion, no watch events),
    /// `per_namespace` to a namespace (`team-00000`, ...; names `pod-0000000`, ...), pod `i`
    /// running as ServiceAccount `sa-{i:07}` (the account [`Self::seed_realistic_service_accounts`]
    /// seeds with the same numbers) on one of 100 nodes (`node-1` to `node-100`). Each is a full
    /// Deployment pod as [`Self::create_pod`] makes; the bulk of the JSON (spec, managed fields)
    /// is held once for all, the owner and labels once a namespace, so a million pods stay
    /// affordable here (under 1 KiB each).
    pub fn seed_realistic_pods(&self, count: usize, per_namespace: usize) {
        let per_namespace = per_namespace.max(1);
        let created = state::rfc3339_now();
        let shape = pods::PodShape::new(&created);
        let mut shared: Option<(String, Arc<pods::PodTemplate>)> = None;
        let pods = (0..count).map(|i| {
            let namespace = format!("team-{:05}", i / per_namespace);
            let name = format!("pod-{i:07}");
            if shared.as_ref().is_none_or(|(ns, _)| *ns != namespace) {
                let template = pods::PodTemplate::new(&namespace, &name, &shape);
                shared = Some((namespace.clone(), template));
            }
            let template = &shared.as_ref().expect("just set").1;
            let node = format!("node-{}", i % 100 + 1);
            template.pod(&namespace, &name, &format!("sa-{i:07}"), &node, &created)
        });
        self.lock().seed(pods);
    }

    /// Response body bytes served so far to requests of `kind`, each answer counted just before
    /// it is written (a watch's events without the chunk framing; Status bodies included).
    pub fn bytes_served(&self, kind: RequestKind) -> u64 {
        self.lock().counters.bytes.get(&kind).copied().unwrap_or(0)
    }

    /// Number of requests of `kind` received (including failed and refused ones).
    pub fn requests_counted(&self, kind: RequestKind) -> u64 {
        self.lock().counters.of(kind)
    }

    /// An object as a single GET would return it, if it exists.
    fn object_json(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .object(resource, namespace, name)
            .map(|o| o.to_json(true))
    }

    /// The uid of an object, if it exists.
    fn object_uid(&self, resource: Resource, namespace: &str, name: &str) -> Option<String> {
        self.lock()
            .object(resource, namespace, name)
            .map(|o| o.uid.clone())
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> String {
        self.lock().rv.to_string()
    }

    /// Forgets all history: a watch from any resourceVersion older than now gets 410, and so do
    /// exact-resourceVersion lists.
    pub fn compact_history(&self) {
        self.lock().compact();
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

    /// Holds every answer of `/openid/v1/jwks` back for `delay` before writing it: a slow key-set
    /// endpoint, or a hanging one with a delay longer than the service's fetch timeout. Answers
    /// already held are released once the new delay has passed since they came.
    pub fn set_jwks_delay(&self, delay: Duration) {
        self.lock().jwks_delay = delay;
        self.shared.wake.notify_all();
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
        self.requests_counted(RequestKind::TokenRequest)
    }

    /// Whether the service may create Events; `false` answers them 403 Forbidden, as an API
    /// server does when the service's role lacks `create` on `events`.
    pub fn set_create_events_allowed(&self, allowed: bool) {
        self.lock().create_events_allowed = allowed;
    }

    /// Every Event created, oldest first, as the API server stored it.
    pub fn events(&self) -> Vec<Value> {
        self.lock().events.clone()
    }

    /// The Events whose involvedObject is the ServiceAccount `namespace/name`, oldest first.
    pub fn events_about(&self, namespace: &str, name: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| {
                let o = &e["involvedObject"];
                o["kind"] == "ServiceAccount" && o["namespace"] == namespace && o["name"] == name
            })
            .collect()
    }

    /// Number of requests on an Events collection (any method, including refused ones).
    pub fn event_requests(&self) -> u64 {
        self.requests_counted(RequestKind::Events)
    }

    /// Number of ServiceAccount list requests received (including failed ones).
    pub fn list_requests(&self) -> u64 {
        self.requests_counted(RequestKind::List)
    }

    /// Number of ServiceAccount watch requests received (including failed ones).
    pub fn watch_requests(&self) -> u64 {
        self.requests_counted(RequestKind::Watch)
    }

    /// Number of single ServiceAccount GETs received.
    pub fn get_requests(&self) -> u64 {
        self.requests_counted(RequestKind::Get)
    }

    /// Number of `/openid/v1/jwks` requests received.
    pub fn jwks_requests(&self) -> u64 {
        self.requests_counted(RequestKind::Jwks)
    }

    /// Number of `/.well-known/openid-configuration` requests received.
    pub fn discovery_requests(&self) -> u64 {
        self.requests_counted(RequestKind::Discovery)
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

    /// Runs one write to the store, then wakes the watch streams to send what it changed.
    fn write<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let out = change(&mut self.lock());
        self.shared.wake.notify_all();
        out
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
