//! ServiceAccount and Pod watches: the chunked stream of JSON events (each watch sees its own
//! kind only), replay of the history after a resourceVersion (or synthetic ADDED events from ""
//! and "0"), the in-stream or plain 410 for a resourceVersion older than the window, periodic
//! and pre-deadline bookmarks, `timeoutSeconds`, and the test's switches that hang or cut open
//! streams.

use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;
use serde_json::{json, Value};

use super::http::{parse_bool, Request};
use super::list::{invalid_list_options_all, invalid_rv, too_large_rv, wait_for_rv};
use super::routing::{status_body, Reply, RequestKind};
use super::state::{Change, Representation, Resource, Shared, State, StoredObject};
use super::tls::Conn;

/// The cache sends a bookmark this long before a watch's deadline.
const PRE_DEADLINE_BOOKMARK_LEAD: Duration = Duration::from_secs(2);
/// How often an idle watch stream checks that its client is still connected.
const LIVENESS_POLL: Duration = Duration::from_millis(200);

/// A watch that has been accepted: what to send first, and how to follow.
pub(super) struct WatchPlan {
    /// Lines (JSON events) to send before following the log.
    initial: Vec<String>,
    /// End the stream cleanly right after `initial` (used for the in-stream 410).
    end_after_initial: bool,
    /// Registered in `watch_cursors` under this id while following.
    id: u64,
    cursor: u64,
    /// The kind of object watched.
    resource: Resource,
    /// The namespace watched, or none for all.
    namespace: Option<String>,
    bookmarks: bool,
    deadline: Instant,
    generation: u64,
    /// How event objects are written.
    repr: Representation,
}

/// One watch event as a JSON line.
fn event_line(kind: &str, object: &Value) -> String {
    json!({ "type": kind, "object": object }).to_string()
}

/// A BOOKMARK event at `rv` on a watch of `resource`.
fn bookmark_line(rv: u64, resource: Resource, repr: Representation) -> String {
    // A typed bookmark: metadata carries only the resourceVersion (and the zero
    // creationTimestamp Go serializes as null).
    let meta = json!({ "resourceVersion": rv.to_string(), "creationTimestamp": null });
    let (kind, api_version) = match repr {
        Representation::Metadata { .. } => ("PartialObjectMetadata", repr.meta_api_version()),
        _ => (resource.kind(), "v1"),
    };
    event_line(
        "BOOKMARK",
        &json!({ "kind": kind, "apiVersion": api_version, "metadata": meta }),
    )
}

/// An event's object in `repr`. A watch that asked for a metadata *list* gets the objects
/// untransformed: the API server's watch encoder logs the failed transform of each object and
/// writes it as it is (read from the apiserver source, not checked against a live server).
fn watch_object(object: &StoredObject, repr: Representation) -> Value {
    match repr {
        Representation::Metadata { .. } => object.render(repr, true),
        _ => object.to_json(true),
    }
}

/// A change as a watch of `resource` in `namespace` sees it, if it sees it at all. A deletion
/// carries the object's last state at the deletion's resourceVersion.
fn view_change(
    change: &Change,
    resource: Resource,
    namespace: Option<&str>,
    repr: Representation,
) -> Option<String> {
    let seen = change.object.resource() == resource && change.object.in_scope(namespace);
    seen.then(|| {
        event_line(
            change.kind.event_type(),
            &watch_object(&change.object, repr),
        )
    })
}

/// The current objects as ADDED events, for a watch from resourceVersion "" or "0".
fn synthetic_added(
    st: &State,
    resource: Resource,
    namespace: Option<&str>,
    repr: Representation,
) -> Vec<String> {
    st.objects_after(resource, st.rv, None, namespace)
        .map(|a| event_line("ADDED", &watch_object(a, repr)))
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

/// Accepts (or refuses) a watch of `resource`, all namespaces or one.
pub(super) fn start_watch(
    shared: &Shared,
    st: &mut MutexGuard<'_, State>,
    req: &Request,
    resource: Resource,
    namespace: Option<&str>,
    repr: Representation,
) -> Reply {
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
        None | Some(0) => synthetic_added(st, resource, namespace, repr),
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
                resource,
                namespace: namespace.map(String::from),
                bookmarks: false,
                deadline: Instant::now(),
                generation: st.watch_generation,
                repr,
            }));
        }
        Some(rv) => st
            .log
            .iter()
            .filter(|c| c.rv > rv)
            .filter_map(|c| view_change(c, resource, namespace, repr))
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
        resource,
        namespace: namespace.map(String::from),
        bookmarks,
        deadline: Instant::now() + timeout,
        generation: st.watch_generation,
        repr,
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

/// Streams one watch; returns whether the connection may serve another request. The events'
/// bytes are counted for `kind` just before they are sent.
pub(super) fn run_watch(
    shared: &Shared,
    stream: &mut Conn,
    plan: WatchPlan,
    kind: RequestKind,
    keep_alive: bool,
) -> io::Result<bool> {
    let send = |stream: &mut Conn, lines: &[String]| -> io::Result<()> {
        // Each line and its newline: the body as the client decodes it.
        let bytes: usize = lines.iter().map(|line| line.len() + 1).sum();
        if bytes > 0 {
            shared.state.lock().count_bytes(kind, bytes as u64);
        }
        write_lines(stream, lines)
    };
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
        send(stream, &plan.initial)?;
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
            WatchStep::Send(lines) => send(stream, &lines)?,
            WatchStep::End(lines) => {
                send(stream, &lines)?;
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
                .filter_map(|c| {
                    let plan = &self.plan;
                    view_change(c, plan.resource, plan.namespace.as_deref(), plan.repr)
                }),
        );
        self.cursor = st.rv;
        st.watch_cursors.insert(self.plan.id, self.cursor);
        if now >= self.plan.deadline {
            return WatchStep::End(lines);
        }
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.next_bookmark) || due(self.pre_deadline_bookmark) {
            lines.push(bookmark_line(
                self.cursor,
                self.plan.resource,
                self.plan.repr,
            ));
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

/// Sends events, one chunk each.
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
