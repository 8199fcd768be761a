//! What each request gets: routing by path, the faults a test injected, authentication (bearer
//! tokens, client certificates, the anonymous user), the one RBAC rule a test can take away
//! (`create` on `events`), the single-object GET and `/version` replies, the request log, the
//! decoding of create bodies, and the `kind: Status` body every failure carries.

use std::io;

use parking_lot::MutexGuard;
use serde_json::{json, Map, Value};

use super::discovery::{discovery, jwks};
use super::events;
use super::http::{parse_bool, parse_query, write_json, Request};
use super::list::list;
use super::state::{Representation, Resource, Shared, State};
use super::tls::Conn;
use super::token_request;
use super::watch::{run_watch, start_watch, WatchPlan};

/// The request log keeps at most this many entries (oldest dropped first).
const MAX_RECORDED_REQUESTS: usize = 100_000;
/// The user the service authenticates as, named in its RBAC refusals.
const SERVICE_USER: &str = "system:serviceaccount:nats:nats-k8s-oidc-callout";

/// What a request was, as the emulator routed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// A ServiceAccount list (cluster-wide or in one namespace).
    List,
    /// A ServiceAccount watch.
    Watch,
    /// A single ServiceAccount GET.
    Get,
    /// A Pod list (cluster-wide or in one namespace).
    PodList,
    /// A Pod watch.
    PodWatch,
    /// A single Pod GET.
    PodGet,
    /// `/.well-known/openid-configuration`.
    Discovery,
    /// `/openid/v1/jwks`.
    Jwks,
    /// `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token` (any method on that path).
    TokenRequest,
    /// `POST /api/v1/namespaces/{ns}/events` (any method on that path).
    Events,
    /// Anything else (answered 404 or 405).
    Other,
}

/// What is done to a collection or one of its objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    List,
    Watch,
    Get,
}

impl RequestKind {
    /// The kind of a `verb` on `resource`.
    fn of(resource: Resource, verb: Verb) -> RequestKind {
        match (resource, verb) {
            (Resource::ServiceAccounts, Verb::List) => RequestKind::List,
            (Resource::ServiceAccounts, Verb::Watch) => RequestKind::Watch,
            (Resource::ServiceAccounts, Verb::Get) => RequestKind::Get,
            (Resource::Pods, Verb::List) => RequestKind::PodList,
            (Resource::Pods, Verb::Watch) => RequestKind::PodWatch,
            (Resource::Pods, Verb::Get) => RequestKind::PodGet,
        }
    }

    /// The resource RBAC checks this request against, if it is one of the store's.
    fn resource(self) -> Option<Resource> {
        match self {
            RequestKind::List | RequestKind::Watch | RequestKind::Get => {
                Some(Resource::ServiceAccounts)
            }
            RequestKind::PodList | RequestKind::PodWatch | RequestKind::PodGet => {
                Some(Resource::Pods)
            }
            _ => None,
        }
    }
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
    /// The `Accept` header, if any.
    pub accept: Option<String>,
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

/// What a path names.
enum Route {
    Collection {
        resource: Resource,
        namespace: Option<String>,
    },
    Item {
        resource: Resource,
        namespace: String,
        name: String,
    },
    /// The `token` subresource of one ServiceAccount.
    TokenRequest {
        namespace: String,
        name: String,
    },
    /// The Events of one namespace.
    Events {
        namespace: String,
    },
    Discovery,
    Jwks,
    /// `/version`, which `system:public-info-viewer` opens to everyone.
    Version,
    Unknown,
}

/// Routes a (decoded) path.
fn route(path: &str) -> Route {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segments.as_slice() {
        [".well-known", "openid-configuration"] => Route::Discovery,
        ["openid", "v1", "jwks"] => Route::Jwks,
        ["version"] => Route::Version,
        ["api", "v1", plural] => match Resource::from_plural(plural) {
            Some(resource) => Route::Collection {
                resource,
                namespace: None,
            },
            None => Route::Unknown,
        },
        ["api", "v1", "namespaces", ns, plural] if !ns.is_empty() => {
            match Resource::from_plural(plural) {
                Some(resource) => Route::Collection {
                    resource,
                    namespace: Some(ns.to_string()),
                },
                None if *plural == "events" => Route::Events {
                    namespace: ns.to_string(),
                },
                None => Route::Unknown,
            }
        }
        ["api", "v1", "namespaces", ns, plural, name] if !ns.is_empty() && !name.is_empty() => {
            match Resource::from_plural(plural) {
                Some(resource) => Route::Item {
                    resource,
                    namespace: ns.to_string(),
                    name: name.to_string(),
                },
                None => Route::Unknown,
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
pub(super) enum Reply {
    Json {
        status: u16,
        body: Value,
        content_type: &'static str,
        headers: Vec<(String, String)>,
    },
    Watch(Box<WatchPlan>),
}

impl Reply {
    pub(super) fn json(status: u16, body: Value) -> Self {
        Reply::Json {
            status,
            body,
            content_type: "application/json",
            headers: Vec::new(),
        }
    }

    pub(super) fn status(code: u16, reason: &str, message: &str) -> Self {
        Reply::json(code, status_body(code, reason, message, None))
    }

    pub(super) fn with_header(mut self, name: &str, value: String) -> Self {
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
pub(super) fn respond(shared: &Shared, req: &Request, stream: &mut Conn) -> io::Result<bool> {
    let route = route(&req.path);
    let kind = match &route {
        Route::Collection { resource, .. } if parse_bool(req.param("watch")) => {
            RequestKind::of(*resource, Verb::Watch)
        }
        Route::Collection { resource, .. } => RequestKind::of(*resource, Verb::List),
        Route::Item { resource, .. } => RequestKind::of(*resource, Verb::Get),
        Route::Discovery => RequestKind::Discovery,
        Route::Jwks => RequestKind::Jwks,
        Route::TokenRequest { .. } => RequestKind::TokenRequest,
        Route::Events { .. } => RequestKind::Events,
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
            accept: req.header("Accept").map(str::to_owned),
        });
        reply
    };
    if kind == RequestKind::Jwks {
        hold_jwks_answer(shared);
    }
    let keep_alive = req.keep_alive();
    match reply {
        Reply::Json {
            status,
            body,
            content_type,
            headers,
        } => {
            let count = |bytes| shared.state.lock().count_bytes(kind, bytes);
            write_json(
                stream,
                status,
                &body,
                &headers,
                content_type,
                keep_alive,
                count,
            )?;
            Ok(keep_alive)
        }
        Reply::Watch(plan) => run_watch(shared, stream, *plan, kind, keep_alive),
    }
}

/// Holds a key-set answer back while [`State::jwks_delay`] (re-read on every wake, so shortening
/// it releases the held answers) has not passed since the request came, or until the emulator
/// stops.
fn hold_jwks_answer(shared: &Shared) {
    let came = std::time::Instant::now();
    let mut st = shared.state.lock();
    loop {
        let until = came + st.jwks_delay;
        if shared.stopping.load(std::sync::atomic::Ordering::SeqCst)
            || std::time::Instant::now() >= until
        {
            return;
        }
        shared.wake.wait_until(&mut st, until);
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
    *st.counters.requests.entry(kind).or_default() += 1;
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
    if let Route::Events { namespace } = route {
        // Only create is emulated: the service never reads Events.
        if req.method != "POST" {
            return method_not_allowed(&req.method);
        }
        if !st.create_events_allowed {
            return Reply::status(
                403,
                "Forbidden",
                &forbidden_message(SERVICE_USER, kind, &req.path),
            );
        }
        return events::create(st, req, namespace);
    }
    if req.method != "GET" {
        return match route {
            Route::Unknown => not_found_path(),
            _ => method_not_allowed(&req.method),
        };
    }
    let repr = match route {
        Route::Collection { .. } | Route::Item { .. } => match negotiate(req.header("Accept")) {
            Ok(repr) => repr,
            Err(refused) => return refused,
        },
        _ => Representation::Full,
    };
    match route {
        Route::Collection {
            resource,
            namespace,
        } => match refuse_selectors(req) {
            Some(refused) => refused,
            None if kind == RequestKind::of(*resource, Verb::Watch) => {
                start_watch(shared, st, req, *resource, namespace.as_deref(), repr)
            }
            None => list(shared, st, req, *resource, namespace.as_deref(), repr),
        },
        Route::Item {
            resource,
            namespace,
            name,
        } => get_one(st, *resource, namespace, name, repr),
        Route::Discovery => discovery(shared, st),
        Route::Jwks => jwks(st),
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
        Route::TokenRequest { .. } | Route::Events { .. } | Route::Unknown => not_found_path(),
    }
}

/// The 405 for a method a resource does not support.
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

/// The 401 for missing or unaccepted credentials.
fn unauthorized() -> Reply {
    Reply::status(401, "Unauthorized", "Unauthorized")
}

/// The 404 for a path the emulator does not serve.
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

/// The RBAC denial message the API server gives `user` for this request.
fn forbidden_message(user: &str, kind: RequestKind, path: &str) -> String {
    let verb = match kind {
        RequestKind::List | RequestKind::PodList => "list",
        RequestKind::Watch | RequestKind::PodWatch => "watch",
        RequestKind::TokenRequest | RequestKind::Events => "create",
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
            if kind == RequestKind::Events {
                return format!(
                    "events is forbidden: User \"{user}\" cannot create resource \"events\" in \
                     API group \"\" {scope}"
                );
            }
            if kind == RequestKind::TokenRequest {
                let name = path.split('/').nth(6).unwrap_or_default();
                return format!(
                    "serviceaccounts \"{name}\" is forbidden: User \"{user}\" cannot create \
                     resource \"serviceaccounts/token\" in API group \"\" {scope}"
                );
            }
            let resource = kind
                .resource()
                .unwrap_or(Resource::ServiceAccounts)
                .plural();
            format!(
                "{resource} is forbidden: User \"{user}\" cannot {verb} resource \
                 \"{resource}\" in API group \"\" {scope}"
            )
        }
    }
}

/// The answer to a request a fault rule caught: its status with the matching Status reason.
fn injected_failure(fault: &Fault, kind: RequestKind) -> Reply {
    let (reason, message) = match fault.status {
        400 => ("BadRequest", "bad request".to_string()),
        401 => ("Unauthorized", "Unauthorized".to_string()),
        403 => ("Forbidden", forbidden_message(SERVICE_USER, kind, "/")),
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

/// The 400 for a label or field selector on a list or watch, which the emulator does not
/// implement: refused rather than ignored, so that a test relying on one fails instead of seeing
/// unfiltered objects.
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

/// A single ServiceAccount or Pod GET. A metadata *list* of one object is the API server's 406,
/// which its transform gives after the object was read (a missing one is still 404).
fn get_one(
    st: &State,
    resource: Resource,
    namespace: &str,
    name: &str,
    repr: Representation,
) -> Reply {
    match st.object(resource, namespace, name) {
        Some(_) if matches!(repr, Representation::MetadataList { .. }) => Reply::status(
            406,
            "NotAcceptable",
            &format!(
                "you requested PartialObjectMetadataList, but the requested object is not a \
                 list (*core.{})",
                resource.kind()
            ),
        ),
        Some(object) => Reply::json(200, object.render(repr, true)),
        None => not_found(resource, name),
    }
}

/// The representation an `Accept` header asks for, as the API server negotiates it for a
/// ServiceAccount or Pod list, watch or GET: the media ranges in order of their `q` (0 refuses
/// one), the first acceptable one wins. JSON (`application/json`, `application/*`, `*/*`) is
/// served as the object itself, or with `as=PartialObjectMetadata` /
/// `as=PartialObjectMetadataList` and `g=meta.k8s.io`, `v=v1` or `v1beta1` as metadata; a
/// conversion the API server does not offer (another `as`, `g` or `v`) makes the range
/// unacceptable. YAML, protobuf and
/// `as=Table` are not emulated: they are passed over as if not offered. No header is JSON;
/// nothing acceptable is the API server's 406.
pub(super) fn negotiate(accept: Option<&str>) -> Result<Representation, Reply> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Ok(Representation::Full);
    };
    let mut ranges: Vec<(f64, Option<Representation>)> = Vec::new();
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let mut q = 1.0;
        let (mut as_kind, mut group, mut version) = (None, None, None);
        for param in parts {
            let (k, v) = param.split_once('=').unwrap_or((param, ""));
            let v = v.trim().trim_matches('"');
            match k.trim() {
                "q" => q = v.parse().unwrap_or(0.0),
                "as" => as_kind = Some(v),
                "g" => group = Some(v),
                "v" => version = Some(v),
                _ => {}
            }
        }
        let json = matches!(media.as_str(), "application/json" | "application/*" | "*/*");
        let repr = match (json, as_kind, group, version) {
            (false, ..) => None,
            (true, None, _, _) => Some(Representation::Full),
            (true, Some(kind), Some("meta.k8s.io"), Some(v @ ("v1" | "v1beta1"))) => {
                let v1beta1 = v == "v1beta1";
                match kind {
                    "PartialObjectMetadata" => Some(Representation::Metadata { v1beta1 }),
                    "PartialObjectMetadataList" => Some(Representation::MetadataList { v1beta1 }),
                    _ => None,
                }
            }
            (true, Some(_), _, _) => None,
        };
        if q > 0.0 {
            ranges.push((q, repr));
        }
    }
    // Stable: equal q keep the header's order.
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranges
        .into_iter()
        .find_map(|(_, repr)| repr)
        .ok_or_else(|| {
            Reply::status(
                406,
                "NotAcceptable",
                "only the following media types are accepted: application/json, \
                 application/yaml, application/vnd.kubernetes.protobuf",
            )
        })
}

/// The API server's 404 for an object of `resource` that does not exist (GET, TokenRequest).
pub(super) fn not_found(resource: Resource, name: &str) -> Reply {
    let plural = resource.plural();
    Reply::json(
        404,
        status_body(
            404,
            "NotFound",
            &format!("{plural} \"{name}\" not found"),
            Some(json!({ "name": name, "kind": plural })),
        ),
    )
}

/// The body of a create request as a JSON object: 415 for a media type not in `accepted`, 400
/// for anything but a JSON object, as the API server's decoder answers them.
pub(super) fn json_object_body(req: &Request, kind: &str, accepted: &str) -> Result<Value, Reply> {
    if !req.content_type().starts_with("application/json") {
        return Err(Reply::status(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types \
                 include: {accepted}"
            ),
        ));
    }
    let body = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(other) => {
            return Err(undecodable(
                kind,
                &format!("expected an object, got {other}"),
            ))
        }
        Err(e) => return Err(undecodable(kind, &e.to_string())),
    };
    expect_kind(&body, kind)?;
    Ok(body)
}

/// The 400 for a body that is not a `kind` object.
pub(super) fn undecodable(kind: &str, why: &str) -> Reply {
    Reply::status(
        400,
        "BadRequest",
        &format!("{kind} in version \"v1\" cannot be handled as a {kind}: {why}"),
    )
}

/// The 400 for a body that says it is another kind of object (a missing `kind` is the path's).
pub(super) fn expect_kind(body: &Value, kind: &str) -> Result<(), Reply> {
    match body["kind"].as_str().filter(|k| *k != kind) {
        Some(other) => Err(Reply::status(
            400,
            "BadRequest",
            &format!("the body of the request is a {other}, not a {kind}"),
        )),
        None => Ok(()),
    }
}

/// A `kind: Status` failure body.
pub(super) fn status_body(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
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
