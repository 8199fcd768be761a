//! The callout loop: one NATS connection, a reader thread, a bounded queue and a fixed pool of
//! workers that decide and answer.
//!
//! ```text
//! nats-server --$SYS.REQ.USER.AUTH--> reader --bounded channel--> worker x N --respond--> nats-server
//! ```

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, TrySendError};
use log::{debug, error, info, log_enabled, warn, Level};

use super::connection::{ConnectError, Connection, Dialer, Event, Message, Publisher};
pub use super::connection::{Login, TlsSettings};
use super::denial_log::{self, log_denial};
use super::jwt::JwtError;
use super::request::{AuthRequest, RequestError, REQUEST_CLOCK_SKEW_SECS};
use super::response::{seal_if_needed, Grant, ResponseError};
use super::wire::{AUTH_REQUEST_SUBJECT, QUEUE_GROUP};
use crate::authorizer::{Authorizer, ConnectAttempt, Decision, Denial, DenyReason};
use crate::backoff::{Backoff, BackoffSettings};
use crate::identity::printable;
use crate::keys::{CalloutKeys, KeyStore};
use crate::metrics::{DecisionLabels, Metrics, ReloadLabels};
use crate::readiness::Readiness;
use crate::unix_now;
use crate::urls::redact_urls;

/// Settings of the callout loop.
#[derive(Clone)]
pub struct CalloutSettings {
    /// Comma-separated server URLs (may embed `user:pass@`).
    pub url: String,
    /// The service's own login.
    pub login: Login,
    /// TLS beyond what the URLs say.
    pub tls: TlsSettings,
    /// Worker threads.
    pub workers: usize,
    /// Capacity of the queue between the reader and the workers.
    pub queue_size: usize,
    /// How long in-flight requests may take to finish at shutdown.
    pub shutdown_timeout: Duration,
}

/// Everything a worker needs to answer a request.
pub struct CalloutContext {
    /// Opens requests and signs answers; re-read when the key files change.
    pub keys: Arc<KeyStore>,
    /// Decides.
    pub authorizer: Authorizer,
    /// Counts.
    pub metrics: Arc<Metrics>,
    /// Tells the self-check how this replica answered its connect, when self-checks are on.
    pub self_check: Option<Arc<crate::selfcheck::Probe>>,
}

/// The outcome of one request, as it is counted and answered.
pub struct Outcome {
    /// The bytes to publish on the reply subject (an empty body is a denial); `None`: no answer
    /// at all (the server has stopped waiting for one).
    pub reply: Option<Vec<u8>>,
    /// `allow` or `deny`.
    pub result: &'static str,
    /// The metric reason.
    pub reason: &'static str,
}

impl CalloutContext {
    /// Decides one request payload and builds the reply; never panics, never grants on error.
    pub fn handle(&self, payload: &[u8], server_xkey: Option<&str>) -> Outcome {
        let now = unix_now();
        // One version of the keys for the whole request: the one that opened it seals the answer.
        let keys = self.keys.current();
        let req = match keys.decoder.decode(payload, server_xkey, now) {
            Ok(r) => r,
            Err(RequestError::Expired) => {
                // nats-server has already given up on it (it waited in a full queue, or the
                // clocks disagree): no answer, no decision, a line at most every few seconds.
                EXPIRED_LOG.lock().dropped(Instant::now());
                return Outcome {
                    reply: None,
                    result: "deny",
                    reason: RequestError::Expired.reason(),
                };
            }
            Err(e) => {
                log_denial!(e.reason(), "denied: {e} (reason={})", e.reason());
                // Without a verified request there is no one to address a signed denial to; an
                // empty reply makes a genuine server deny at once instead of waiting.
                return Outcome {
                    reply: Some(Vec::new()),
                    result: "deny",
                    reason: e.reason(),
                };
            }
        };
        let outcome = self.answer(&keys, &req, now);
        if let Some(probe) = &self.self_check {
            probe.observe(&req.client.name, &outcome);
        }
        outcome
    }

    /// Decides a verified request and builds its answer.
    fn answer(&self, keys: &CalloutKeys, req: &AuthRequest, now: i64) -> Outcome {
        // Operator mode: the request names the callout account it is for. Answering one for
        // another account (NATS_CALLOUT_ACCOUNT unset while the callout key is a signing key, or
        // naming another account) would defeat the guard that keeps clients out of the callout
        // account, which compares the account named here; nats-server would take the answer.
        // Config mode: an operator-mode server would place clients by the signing key.
        if let Some(e) = keys.signer.refusal(req) {
            error!("denied: {e} (reason={})", e.reason());
            return Outcome {
                reply: Some(Vec::new()),
                result: "deny",
                reason: e.reason(),
            };
        }
        let attempt = ConnectAttempt {
            kind: &req.client.kind,
            token: req.connect.bearer_token(),
        };
        let decision = catch_unwind(AssertUnwindSafe(|| self.authorizer.authorize(attempt, now)))
            .unwrap_or_else(|_| Decision::internal_error());
        // Operator mode: a client placed in an account no key here can sign for is refused
        // with its own reason (the policy named an account whose key was not given).
        let decision = match decision {
            Decision::Allow(a) if !keys.signer.can_sign_for(a.account.as_deref()) => {
                Decision::Deny(Denial {
                    account: Some(format!("{}/{}", a.namespace, a.service_account)),
                    reason: DenyReason::AccountKeyMissing(a.account.unwrap_or_default()),
                    credential_id: a.credential_id,
                })
            }
            other => other,
        };
        match decision {
            Decision::Allow(allowed) => {
                let grant = Grant {
                    name: allowed.user_name(),
                    expires_at: allowed.expires_at,
                    account: allowed.account.as_deref(),
                    permissions: &allowed.permissions,
                };
                match seal(keys, req, keys.signer.allow(req, &grant, now)) {
                    Ok(reply) => {
                        info!(
                            "allowed {}/{}{} (client {} {} on {}), expires in {}s{}",
                            allowed.namespace,
                            allowed.service_account,
                            allowed
                                .pod
                                .as_deref()
                                .map(|p| format!(" pod {p}"))
                                .unwrap_or_default(),
                            req.client.id,
                            printable(&req.client.host, MAX_LOGGED_NAME),
                            printable(&req.server.name, MAX_LOGGED_NAME),
                            allowed.expires_at - now,
                            credential(allowed.credential_id.as_deref())
                        );
                        Outcome {
                            reply: Some(reply),
                            result: "allow",
                            reason: "granted",
                        }
                    }
                    Err(e) => {
                        error!(
                            "cannot build the answer for client {}: {e}; denying",
                            req.client.id
                        );
                        denial(keys, req, now, "internal_error")
                    }
                }
            }
            Decision::Deny(deny) => {
                log_denial!(
                    deny.reason(),
                    "denied {} (client {} {} on {}): {} (reason={}){}",
                    deny.account_label(),
                    req.client.id,
                    printable(&req.client.host, MAX_LOGGED_NAME),
                    printable(&req.server.name, MAX_LOGGED_NAME),
                    deny,
                    deny.reason(),
                    credential(deny.credential_id.as_deref())
                );
                denial(keys, req, now, deny.reason())
            }
        }
    }
}

/// `, credential JTI=<jti>` for a decision's log line, in the form the API server's audit log
/// gives the token's credential id, so the two can be matched; empty without a `jti`.
fn credential(jti: Option<&str>) -> String {
    jti.map(|j| format!(", credential JTI={j}"))
        .unwrap_or_default()
}

/// A signed (and, when the request was, sealed) denial of `req`, counted under `reason`.
fn denial(keys: &CalloutKeys, req: &AuthRequest, now: i64, reason: &'static str) -> Outcome {
    // An empty reply also makes the server deny at once; the failure is still worth a line.
    let reply = seal(keys, req, keys.signer.deny(req, reason, now)).unwrap_or_else(|e| {
        error!(
            "cannot build the denial for client {}: {e}; answering empty",
            req.client.id
        );
        Vec::new()
    });
    Outcome {
        reply: Some(reply),
        result: "deny",
        reason,
    }
}

/// Expired requests dropped since the last line about them, logged at most every
/// [`ExpiredLog::EVERY`]: an overloaded queue can expire thousands at once.
static EXPIRED_LOG: parking_lot::Mutex<ExpiredLog> = parking_lot::Mutex::new(ExpiredLog {
    last: None,
    pending: 0,
});

/// Rate-limited reporting of expired requests.
struct ExpiredLog {
    last: Option<Instant>,
    pending: u64,
}

impl ExpiredLog {
    const EVERY: Duration = Duration::from_secs(10);

    /// Counts one dropped request; logs the count when no line was written for a while.
    fn dropped(&mut self, now: Instant) {
        self.pending += 1;
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Self::EVERY)
        {
            return;
        }
        self.last = Some(now);
        warn!(
            "dropped {} expired request(s) unanswered: nats-server had stopped waiting (they \
             waited too long in the queue, or this host's clock runs ahead of the server's by \
             more than {REQUEST_CLOCK_SKEW_SECS} s) (reason=request_expired)",
            std::mem::take(&mut self.pending)
        );
    }
}

/// The bytes of a signed answer to `req`, sealed to the server, with the curve key that opened
/// it, when the request was sealed.
fn seal(
    keys: &CalloutKeys,
    req: &AuthRequest,
    signed: Result<String, JwtError>,
) -> Result<Vec<u8>, ResponseError> {
    seal_if_needed(signed?, req, keys.decoder.key_that_opened(req))
}

struct Job {
    msg: Message,
    queued: Instant,
    /// Wall-clock µs when the reader took the request, for the `callout::timing` lines.
    received_us: u64,
}

/// Log target of the per-request timestamps (`debug`, off by default): `scripts/bench` pairs
/// them with a client's own timestamps to split a connect's latency between nats-server and
/// the service.
const TIMING: &str = "callout::timing";

/// Wall-clock microseconds since the Unix epoch for a `callout::timing` line; 0 (and no clock
/// read) while that target is off, so requests pay nothing for it.
fn unix_us() -> u64 {
    if !log_enabled!(target: TIMING, Level::Debug) {
        return 0;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The client name the service gives nats-server (seen in its monitoring and logs).
const CLIENT_NAME: &str = "nats-k8s-oidc-callout";

/// Connects, trying every server in turn with backoff between rounds, until it works or `stop`
/// fires (`None`). Each failed round is one warning naming the cause, never a secret.
fn connect_until(dialer: &mut Dialer, stop: &Receiver<()>, what: &str) -> Option<Connection> {
    let mut backoff = Backoff::new(BackoffSettings::doubling(
        Duration::from_millis(250),
        Duration::from_secs(10),
    ));
    loop {
        match dialer.connect() {
            Ok(conn) => return Some(conn),
            Err((server, e)) => {
                let delay = backoff.next_delay(None);
                warn!("cannot {what} nats at {server}: {e}; retrying in {delay:?}");
                match stop.recv_timeout(delay) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return None,
                }
            }
        }
    }
}

/// The dialer of `settings`: its servers, login and TLS.
pub fn dialer(settings: &CalloutSettings) -> Result<Dialer, String> {
    Dialer::new(
        &settings.url,
        settings.login.clone(),
        settings.tls.clone(),
        CLIENT_NAME,
    )
    .map_err(|e| format!("NATS_URL: {e}"))
}

/// Runs the callout loop until `stop` fires; returns once in-flight requests are answered or the
/// shutdown deadline has passed.
pub fn run(
    settings: CalloutSettings,
    ctx: Arc<CalloutContext>,
    readiness: Arc<Readiness>,
    stop: Receiver<()>,
) -> Result<(), String> {
    let metrics = ctx.metrics.clone();
    let where_ = redact_urls(&settings.url);
    let dialer = dialer(&settings)?;
    let mut redial = Redial::new(dialer, &stop, &metrics, &readiness);
    let Some(mut conn) = connect_until(&mut redial.dialer, &stop, "connect to") else {
        return Ok(());
    };
    readiness.set_nats_connected(true);
    // Join the queue group only once requests can be decided: a replica still loading keys or
    // listing accounts would otherwise take its share of requests and deny them, while a ready
    // replica could have answered. The connection is read meanwhile, so the server's PINGs
    // are answered.
    let mut waiting_logged = false;
    while !readiness.can_decide() {
        if !waiting_logged {
            info!("waiting for the key set and the ServiceAccount cache before taking requests");
            waiting_logged = true;
        }
        if !matches!(stop.try_recv(), Err(crossbeam_channel::TryRecvError::Empty)) {
            conn.close();
            return Ok(());
        }
        if let Event::Lost(why) = conn.next_event() {
            if redial.reconnect(&mut conn, &why).is_none() {
                return Ok(());
            }
        }
    }
    conn.queue_subscribe(AUTH_REQUEST_SUBJECT, QUEUE_GROUP)
        .map_err(|e| format!("cannot subscribe to {AUTH_REQUEST_SUBJECT}: {e}"))?;
    readiness.set_subscribed(true);
    info!(
        "connected to nats at {} (of {where_}); answering {AUTH_REQUEST_SUBJECT} in queue group {QUEUE_GROUP} with {} workers",
        conn.server(),
        settings.workers
    );

    let (tx, rx) = bounded::<Job>(settings.queue_size.max(1));
    // Workers: each takes a request, runs the whole decision and writes the answer to the
    // socket itself. They end when the reader drops the sender and the queue is empty.
    let workers: Vec<JoinHandle<()>> = (0..settings.workers.max(1))
        .map(|i| {
            let rx = rx.clone();
            let ctx = ctx.clone();
            let out = conn.publisher();
            thread::Builder::new()
                .name(format!("callout-worker-{i}"))
                .spawn(move || worker(rx, ctx, out))
                .map_err(|e| format!("cannot start worker thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    drop(rx);

    // The reader: reads the socket and moves requests into the bounded queue, so a burst waits
    // in a queue of known size.
    let out = conn.publisher();
    let mut overload = OverloadLog::default();
    let mut ticked = Instant::now();
    let mut files = FileWatch::new(&redial.dialer);
    loop {
        if !matches!(stop.try_recv(), Err(crossbeam_channel::TryRecvError::Empty)) {
            break;
        }
        // The log summaries come due under steady traffic too, not only in a pause.
        if ticked.elapsed() >= TICK {
            ticked = Instant::now();
            overload.tick(ticked, settings.queue_size);
            denial_log::tick();
            for msg in files.rotate_if_changed(&redial.dialer, &mut conn, &metrics) {
                enqueue(&tx, msg, &out, &metrics, &mut overload, settings.queue_size);
            }
        }
        let msg = match conn.next_event() {
            Event::Message(m) => m,
            Event::Idle => continue,
            Event::Lost(why) => match redial.reconnect(&mut conn, &why) {
                Some(()) => continue,
                None => break,
            },
        };
        if !enqueue(&tx, msg, &out, &metrics, &mut overload, settings.queue_size) {
            break;
        }
    }

    // Shutdown: stop taking requests, let the workers drain the queue within the deadline.
    readiness.set_shutting_down();
    info!("shutting down: no new requests; finishing those in flight");
    // Requests the server sent before it took the UNSUB in are answered too.
    for msg in conn.unsubscribe_and_drain(DRAIN_WAIT) {
        enqueue(&tx, msg, &out, &metrics, &mut overload, settings.queue_size);
    }
    overload.flush(settings.queue_size);
    denial_log::flush();
    drop(tx);
    let deadline = Instant::now() + settings.shutdown_timeout;
    if !workers.into_iter().all(|w| join_by(w, deadline)) {
        warn!("shutdown deadline passed with requests still in flight");
    }
    // Every answer is written by now (each worker writes its own); nothing is buffered.
    conn.close();
    Ok(())
}

/// How often the files the connection is made from are compared with those in use.
const FILES_EVERY: Duration = Duration::from_secs(2);

/// How long after a failed connect with changed files they are tried again.
const FILES_RETRY: Duration = Duration::from_secs(30);

/// Watches the files the NATS connection is made from (creds, nkey seed, token, CA, client
/// certificate and key). When the kubelet swaps a mounted Secret, a connection with the new
/// files replaces the current one without a gap; if it cannot be made, the current one stays
/// and the new files are tried again every [`FILES_RETRY`].
struct FileWatch {
    enabled: bool,
    checked: Instant,
    /// A fingerprint that could not be connected with, and when to try it again.
    failed: Option<([u8; 32], Instant)>,
    /// A connect with changed files in progress on its own thread (the reader goes on reading,
    /// so it can even answer the authorization request of that very connect).
    dialing: Option<([u8; 32], Receiver<Dialed>)>,
}

/// What a connect on the dialing thread gave.
type Dialed = Result<Connection, (String, ConnectError)>;

impl FileWatch {
    fn new(dialer: &Dialer) -> FileWatch {
        FileWatch {
            enabled: dialer.has_files(),
            checked: Instant::now(),
            failed: None,
            dialing: None,
        }
    }

    /// Replaces the connection when the files differ from those it was made from; returns the
    /// requests the old one had received before it left the queue group, to be answered.
    fn rotate_if_changed(
        &mut self,
        dialer: &Dialer,
        conn: &mut Connection,
        metrics: &Metrics,
    ) -> Vec<Message> {
        let now = Instant::now();
        if let Some((seen, rx)) = &self.dialing {
            let dialed = match rx.try_recv() {
                Err(crossbeam_channel::TryRecvError::Empty) => return Vec::new(),
                Err(crossbeam_channel::TryRecvError::Disconnected) => None,
                Ok(dialed) => Some(dialed),
            };
            let seen = *seen;
            self.dialing = None;
            let (left, result) = match dialed {
                Some(dialed) => self.finish(dialed, seen, conn, now),
                None => {
                    self.failed = Some((seen, now + FILES_RETRY));
                    (Vec::new(), "failure")
                }
            };
            metrics
                .nats_file_reloads
                .get_or_create(&ReloadLabels { result })
                .inc();
            return left;
        }
        if !self.enabled || now.duration_since(self.checked) < FILES_EVERY {
            return Vec::new();
        }
        self.checked = now;
        let seen = dialer.files_fingerprint();
        if seen == conn.made_from() {
            return Vec::new();
        }
        if self
            .failed
            .is_some_and(|(fp, again)| fp == seen && now < again)
        {
            return Vec::new();
        }
        info!("the NATS login or TLS files changed; connecting with them");
        let (tx, rx) = bounded::<Dialed>(1);
        let mut dialer = dialer.clone();
        let spawned = thread::Builder::new()
            .name("nats-redial".into())
            .spawn(move || {
                let _ = tx.send(dialer.connect());
            });
        match spawned {
            Ok(_) => self.dialing = Some((seen, rx)),
            Err(e) => {
                warn!("cannot start the thread that connects with the changed files: {e}");
                self.failed = Some((seen, now + FILES_RETRY));
                metrics
                    .nats_file_reloads
                    .get_or_create(&ReloadLabels { result: "failure" })
                    .inc();
            }
        }
        Vec::new()
    }

    fn finish(
        &mut self,
        dialed: Dialed,
        seen: [u8; 32],
        conn: &mut Connection,
        now: Instant,
    ) -> (Vec<Message>, &'static str) {
        let fresh = match dialed {
            Ok(fresh) => fresh,
            Err((server, e)) => {
                warn!(
                    "cannot connect to nats at {server} with the changed files: {e}; the current connection stays, trying again in {FILES_RETRY:?}"
                );
                self.failed = Some((seen, now + FILES_RETRY));
                return (Vec::new(), "failure");
            }
        };
        match conn.replace_with(fresh) {
            Ok(left) => {
                info!(
                    "now connected to {} with the changed files; the previous connection is closed",
                    conn.server()
                );
                self.failed = None;
                (left, "success")
            }
            Err(e) => {
                warn!("the new connection failed while subscribing ({e}); the current one stays, trying again in {FILES_RETRY:?}");
                self.failed = Some((seen, now + FILES_RETRY));
                (Vec::new(), "failure")
            }
        }
    }
}

/// How often the reader writes the log summaries that have come due.
const TICK: Duration = Duration::from_millis(200);

/// How long the shutdown waits for the requests the server sent before the UNSUB.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Queues `msg` for the workers, or denies it at once when the queue is full (rather than let
/// the client wait for the auth timeout); `false` once the workers are gone.
fn enqueue(
    tx: &crossbeam_channel::Sender<Job>,
    msg: Message,
    out: &Publisher,
    metrics: &Metrics,
    overload: &mut OverloadLog,
    queue_size: usize,
) -> bool {
    match tx.try_send(Job {
        msg,
        queued: Instant::now(),
        received_us: unix_us(),
    }) {
        Ok(()) => {
            metrics.queue_depth.inc();
            true
        }
        Err(TrySendError::Full(job)) => {
            metrics.queue_rejected.inc();
            count(metrics, "deny", "overloaded");
            if let Some(reply) = &job.msg.reply {
                let _ = out.publish(reply, b"");
            }
            overload.denied(Instant::now(), queue_size);
            true
        }
        Err(TrySendError::Disconnected(_)) => false,
    }
}

/// What replaces a lost connection: the servers to dial, the pause after connections that die
/// young, and where to report.
struct Redial<'a> {
    dialer: Dialer,
    flap: Backoff,
    stop: &'a Receiver<()>,
    metrics: &'a Metrics,
    readiness: &'a Readiness,
}

impl<'a> Redial<'a> {
    fn new(
        dialer: Dialer,
        stop: &'a Receiver<()>,
        metrics: &'a Metrics,
        readiness: &'a Readiness,
    ) -> Redial<'a> {
        Redial {
            dialer,
            flap: flap_backoff(),
            stop,
            metrics,
            readiness,
        }
    }

    /// After a lost connection: reports it, reconnects (restoring the subscription) and
    /// reports that; `None` when `stop` fired first.
    fn reconnect(&mut self, conn: &mut Connection, why: &str) -> Option<()> {
        self.metrics.nats_disconnects.inc();
        self.readiness.set_nats_connected(false);
        // A connection that died right after it was made is not redialled at once: a server
        // (or proxy) that accepts and then drops every connection would make a tight loop.
        if conn.up_for() < Duration::from_secs(10) {
            let delay = self.flap.next_delay(None);
            warn!(
                "nats connection to {} lost ({why}) soon after it was made; reconnecting in {delay:?}",
                conn.server()
            );
            if !matches!(
                self.stop.recv_timeout(delay),
                Err(RecvTimeoutError::Timeout)
            ) {
                return None;
            }
        } else {
            self.flap = flap_backoff();
            warn!(
                "nats connection to {} lost ({why}); reconnecting",
                conn.server()
            );
        }
        self.dialer.remember(conn);
        loop {
            let fresh = connect_until(&mut self.dialer, self.stop, "reconnect to")?;
            match conn.take_over(fresh) {
                Ok(()) => break,
                Err(e) => {
                    warn!("nats connection lost while subscribing again ({e}); reconnecting")
                }
            }
        }
        info!("nats connection re-established to {}", conn.server());
        self.metrics.nats_reconnects.inc();
        self.readiness.set_nats_connected(true);
        Some(())
    }
}

/// The backoff between connections that die soon after they are made.
fn flap_backoff() -> Backoff {
    Backoff::new(BackoffSettings::doubling(
        Duration::from_millis(250),
        Duration::from_secs(10),
    ))
}

/// Joins `t` if it ends before `deadline`; reports whether it did.
fn join_by(t: JoinHandle<()>, deadline: Instant) -> bool {
    while !t.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let done = t.is_finished();
    if done {
        let _ = t.join();
    }
    done
}

/// Longest client host or server name written to a log line (both come from the request, so
/// control characters are dropped too: no client can forge a line).
const MAX_LOGGED_NAME: usize = 128;

fn count(metrics: &Metrics, result: &'static str, reason: &'static str) {
    metrics
        .decisions
        .get_or_create(&DecisionLabels { result, reason })
        .inc();
}

fn worker(rx: Receiver<Job>, ctx: Arc<CalloutContext>, out: Publisher) {
    for job in rx.iter() {
        ctx.metrics.queue_depth.dec();
        let dequeued = unix_us();
        let xkey = job.msg.server_xkey.as_deref();
        // A panic anywhere in the decision ends as a denial, never as a silent drop.
        let outcome = catch_unwind(AssertUnwindSafe(|| ctx.handle(&job.msg.payload, xkey)))
            .unwrap_or_else(|_| {
                error!("worker panicked while deciding; denying");
                Outcome {
                    reply: Some(Vec::new()),
                    result: "deny",
                    reason: "internal_error",
                }
            });
        let decided = unix_us();
        if let (Some(answer), Some(reply)) = (&outcome.reply, &job.msg.reply) {
            if let Err(e) = out.publish(reply, answer) {
                warn!("cannot publish the answer: {e}");
            }
        }
        debug!(
            target: TIMING,
            "request received={} dequeued={dequeued} decided={decided} published={}",
            job.received_us,
            unix_us()
        );
        count(&ctx.metrics, outcome.result, outcome.reason);
        ctx.metrics
            .decision_seconds
            .observe(job.queued.elapsed().as_secs_f64());
        debug!("answered in {:?}", job.queued.elapsed());
    }
}

/// Logs `overloaded` denials at most once per [`OverloadLog::EVERY`], with how many there were:
/// a burst of thousands must not become thousands of log lines.
#[derive(Default)]
struct OverloadLog {
    /// When the last line was written.
    last: Option<Instant>,
    /// Denials since then that no line has reported yet.
    pending: u64,
}

impl OverloadLog {
    const EVERY: Duration = Duration::from_secs(10);

    /// Counts one denial; logs at once when no line was written in the last [`Self::EVERY`].
    fn denied(&mut self, now: Instant, queue_size: usize) -> Option<u64> {
        self.pending += 1;
        self.tick(now, queue_size)
    }

    /// Logs the denials not yet reported once [`Self::EVERY`] has passed since the last line;
    /// returns how many the line reported.
    fn tick(&mut self, now: Instant, queue_size: usize) -> Option<u64> {
        if self.pending == 0
            || self
                .last
                .is_some_and(|t| now.duration_since(t) < Self::EVERY)
        {
            return None;
        }
        self.last = Some(now);
        self.flush(queue_size)
    }

    /// Logs whatever is pending now (at shutdown).
    fn flush(&mut self, queue_size: usize) -> Option<u64> {
        if self.pending == 0 {
            return None;
        }
        warn!(
            "denied {} request(s): the queue of {queue_size} was full; add replicas or WORKERS (reason=overloaded)",
            self.pending
        );
        Some(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod overload_log_tests {
    use super::*;

    #[test]
    fn a_burst_is_one_line_then_one_summary_per_interval() {
        let t0 = Instant::now();
        let mut log = OverloadLog::default();
        assert_eq!(
            log.denied(t0, 8),
            Some(1),
            "the first denial is logged at once"
        );
        for i in 1..=500 {
            assert_eq!(log.denied(t0 + Duration::from_millis(i), 8), None);
        }
        assert_eq!(log.tick(t0 + Duration::from_secs(5), 8), None);
        assert_eq!(log.tick(t0 + OverloadLog::EVERY, 8), Some(500));
        assert_eq!(
            log.tick(t0 + OverloadLog::EVERY * 3, 8),
            None,
            "nothing pending"
        );
        assert_eq!(log.denied(t0 + OverloadLog::EVERY * 3, 8), Some(1));
        assert_eq!(log.denied(t0 + OverloadLog::EVERY * 3, 8), None);
        assert_eq!(log.flush(8), Some(1), "shutdown reports the rest");
        assert_eq!(log.flush(8), None);
    }
}

#[cfg(test)]
mod request_lifetime_tests {
    use super::*;
    use crate::callout::jwt::encode;
    use crate::callout::request::tests::server_request;
    use crate::callout::request::REQUEST_MAX_LIFETIME_SECS;
    use crate::callout::response::ResponseSigner;
    use crate::identity::jwks::JwksStore;
    use crate::identity::token::{TokenSettings, TokenValidator};
    use crate::kube::cache::{FileDirectory, ServiceAccountCache};
    use crate::policy::admin::AdminPolicy;
    use crate::policy::{InboxMode, PermissionCache, PolicyStore};
    use nkeys::KeyPair;

    fn context() -> CalloutContext {
        let metrics = Arc::new(Metrics::new());
        let account = KeyPair::new_account();
        let keys = CalloutKeys {
            decoder: crate::callout::request::RequestDecoder::new(None),
            signer: ResponseSigner::new(account, "APP".into()),
        };
        let dir = tempfile::tempdir().unwrap();
        let signer = crate::identity::dev::generate_signer(dir.path()).unwrap();
        let store = Arc::new(JwksStore::from_jwks_json(signer.jwks_json().as_bytes()).unwrap());
        let authorizer = Authorizer::new(
            TokenValidator::new(store, TokenSettings::new("https://issuer.example", "nats")),
            Arc::new(FileDirectory::new(Arc::new(ServiceAccountCache::new(
                metrics.clone(),
            )))),
            Arc::new(PolicyStore::new(AdminPolicy::unrestricted(), None)),
            PermissionCache::new(metrics.clone(), 16, InboxMode::Shared),
            Duration::from_secs(3600),
        );
        CalloutContext {
            keys: Arc::new(KeyStore::fixed(keys)),
            authorizer,
            metrics,
            self_check: None,
        }
    }

    fn request(exp: i64) -> Vec<u8> {
        let server = KeyPair::new_server();
        let user = KeyPair::new_user().public_key();
        encode(
            &server_request(&server, &user, "not-a-jwt", exp, ""),
            &server,
        )
        .unwrap()
        .into_bytes()
    }

    #[test]
    fn a_request_within_its_lifetime_is_decided_and_answered() {
        let out = context().handle(&request(unix_now() + 2), None);
        // A signed denial of the bad token: the request reached the decision.
        assert_eq!((out.result, out.reason), ("deny", "token_malformed"));
        assert!(out.reply.is_some_and(|r| !r.is_empty()));
    }

    #[test]
    fn a_request_claiming_decades_is_refused_before_any_decision() {
        let ctx = context();
        for exp in [
            unix_now() + 30 * 365 * 86_400,
            unix_now() + REQUEST_MAX_LIFETIME_SECS + 5,
        ] {
            let out = ctx.handle(&request(exp), None);
            assert_eq!((out.result, out.reason), ("deny", "request_lives_too_long"));
            assert_eq!(
                out.reply,
                Some(Vec::new()),
                "an empty answer, no signed one"
            );
        }
    }

    #[test]
    fn an_expired_request_is_dropped_unanswered() {
        let out = context().handle(&request(unix_now() - REQUEST_CLOCK_SKEW_SECS - 1), None);
        assert_eq!((out.result, out.reason), ("deny", "request_expired"));
        assert_eq!(out.reply, None, "nothing is published");
    }
}

#[cfg(test)]
mod reconnect_tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_server_that_drops_each_connection_after_its_pong_is_not_redialled_in_a_tight_loop() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    let _ = s.write_all(b"INFO {}\r\n");
                    let r = BufReader::new(s.try_clone().unwrap());
                    for line in r.lines() {
                        let Ok(line) = line else { return };
                        if line == "PING" {
                            let _ = s.write_all(b"PONG\r\n");
                            return; // and close
                        }
                    }
                });
            }
        });
        let dialer = Dialer::new(
            &format!("nats://127.0.0.1:{port}"),
            Login::None,
            TlsSettings::default(),
            "t",
        )
        .unwrap();
        let (_stop_tx, stop) = bounded::<()>(1);
        let metrics = Metrics::new();
        let readiness = Readiness::default();
        let mut redial = Redial::new(dialer, &stop, &metrics, &readiness);
        let mut conn = connect_until(&mut redial.dialer, &stop, "connect to").unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(2) {
            if let Event::Lost(why) = conn.next_event() {
                redial.reconnect(&mut conn, &why).unwrap();
            }
        }
        let n = accepted.load(Ordering::SeqCst);
        assert!(n < 10, "{n} connections in 2 s");
    }
}
