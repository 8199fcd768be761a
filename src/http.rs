//! The HTTP endpoints: `/healthz` (alive), `/readyz` (ready to answer), `/health` (alias of
//! `/healthz`) and `/metrics` (Prometheus), served so that no client, and no number of them, can
//! keep the kubelet's probes from an answer.
//!
//! Thread layout, all started in [`HttpServer::start`] and fixed for the life of the process
//! ([`THREADS`] in all):
//! - `http-accept` accepts each connection and takes what already arrived of it without waiting.
//!   A connection whose whole `/healthz`, `/health` or `/readyz` request is already here (the
//!   kubelet's, under load) is answered there and then, without waiting, and closed: it never
//!   takes a slot. Any other is registered (socket and bytes read) in the connection table and
//!   its id queued for the workers on one of two queues, probes (pipelined ones) ahead of the
//!   others. When the table already holds [`MAX_CONNECTIONS`] it first closes one: the oldest
//!   still waiting for its request (looked at once more, if no worker has it, in case its
//!   request came meanwhile), else the oldest answering `/metrics`, else the oldest probe. A
//!   client holding connections open only ever pushes out older idle connections (its own,
//!   under an attack), while a probe, which asks at once and is answered in microseconds, gets
//!   in. A closed connection leaves only its id in a queue, which a worker skips: a flood
//!   arriving faster than the workers take it neither holds sockets open nor fills a queue
//!   (which would close the next connection, a probe among them). Nothing waits on a client in
//!   this thread.
//! - `http-worker` × [`MAX_CONNECTIONS`] serve one connection each at a time, so every
//!   registered connection has a thread at once; every read and write has a deadline
//!   ([`HEAD_TIMEOUT`], [`WRITE_TIMEOUT`]), and a request head is at most [`MAX_HEAD_BYTES`].
//!
//! The request head is parsed by `httparse` (the parser under the HTTP client `ureq`); the
//! endpoints take no body, so a request that announces one is answered and its connection closed.
//! `tiny_http`, used before, could not be bounded: it spawns a thread per connection with no
//! limit, sets no socket timeouts, and answers every request from the thread that receives it.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use log::{debug, info, warn};
use parking_lot::Mutex;

use crate::metrics::{HttpDropLabels, Metrics};
use crate::readiness::Readiness;

/// Connections open at once; beyond it one is closed to make room for the new one (see above).
pub const MAX_CONNECTIONS: usize = 32;
/// Threads of the HTTP server: one accepting, one per connection slot.
pub const THREADS: usize = MAX_CONNECTIONS + 1;
/// Time for a whole request head to arrive, counted from when a worker takes the connection or
/// from the previous answer on it (so also the idle time allowed between keep-alive requests).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole answer to be taken by the client.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head (request line and headers); a longer one is answered 431.
pub const MAX_HEAD_BYTES: usize = 8192;
/// Most header lines in one request; more are answered 431.
const MAX_HEADERS: usize = 32;
/// Requests answered on one connection before it is closed (the client reconnects).
/// Also bounds the work one connection's pipelined requests cost.
const MAX_REQUESTS_PER_CONNECTION: u32 = 10;
/// Stack of each worker: the endpoints answer from memory and need little.
const WORKER_STACK: usize = 256 * 1024;
/// Connections the kernel completes and holds for the accept thread (capped by the host's
/// `net.core.somaxconn`, 4096 by default): std's fixed 128 overflowed when hundreds of clients
/// reconnected at once, and beyond the backlog every new connection's SYN, a probe's included,
/// is dropped and only retried a second later.
const LISTEN_BACKLOG: i32 = 1024;
/// Ids of connections accepted and not yet taken by a worker, per queue: under a flood of new
/// connections mostly of ones already closed (evicted), which a worker skips in a microsecond.
/// Only ids wait there: open descriptors of the port stay at most 2 × [`MAX_CONNECTIONS`] (the
/// table's handles and the workers' copies) however long the queues grow.
const HANDOFF_QUEUE: usize = 32 * MAX_CONNECTIONS;
/// How long [`HttpServer::stop`] waits for the threads.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How long a connection whose request has been read is spared from eviction while answered:
/// far longer than any answer takes a reading client, far shorter than [`WRITE_TIMEOUT`].
const ANSWER_SPARED: Duration = Duration::from_secs(1);

/// How much a connection is worth keeping when a slot is needed; the lowest goes first, the
/// oldest among equals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Standing {
    /// No whole request yet (or one answered more than [`ANSWER_SPARED`] ago).
    Waiting,
    /// A whole request for `/metrics` (or anything else) waiting or being answered.
    Request,
    /// A whole probe (`/healthz`, `/health`, `/readyz`) waiting or being answered: the answer
    /// is a few bytes from memory, the kubelet restarts the pod when it fails.
    Probe,
}

impl Standing {
    fn of(req: &Request) -> Standing {
        match req.path.split('?').next() {
            Some("/healthz" | "/health" | "/readyz") => Standing::Probe,
            _ => Standing::Request,
        }
    }
}

/// One open connection.
struct Entry {
    id: u64,
    /// The socket: the only handle until a worker takes a copy; closes it from outside.
    stream: TcpStream,
    /// What the accept thread read of it, until a worker takes it (`None` from then on).
    pending: Option<HeadReader>,
    /// Its standing, and since when (for `Request` and `Probe`).
    standing: (Standing, Instant),
    /// Whether nothing has been read of it yet: nothing had arrived when it was accepted and no
    /// worker has taken it. Its request may have arrived since, unseen: it is looked at once
    /// before it could be closed.
    unseen: bool,
}

impl Entry {
    fn standing(&self) -> Standing {
        match self.standing {
            (s, since) if s != Standing::Waiting && since.elapsed() > ANSWER_SPARED => {
                Standing::Waiting
            }
            (s, _) => s,
        }
    }
}

/// A connection handed to a worker: its socket and what was already read of it.
type Handoff = (TcpStream, HeadReader);

/// The open connections, oldest first.
#[derive(Default)]
struct Table {
    next_id: u64,
    open: VecDeque<Entry>,
}

/// What the threads share.
struct Shared {
    table: Mutex<Table>,
    stopping: AtomicBool,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn dropped(&self, reason: &'static str) {
        self.metrics
            .http_connections_dropped
            .get_or_create(&HttpDropLabels { reason })
            .inc();
    }

    /// Registers a new connection, closing another when every slot is taken: the oldest of
    /// those still waiting for a request (or stuck answering one), else the oldest answering
    /// `/metrics`, else the oldest probe. A probe is answered in microseconds once it is read,
    /// so it is only ever closed by a flood of [`MAX_CONNECTIONS`] probes.
    /// `reader` holds what was read of it, `standing` what that gives.
    fn register(&self, stream: TcpStream, reader: HeadReader, standing: Standing) -> u64 {
        let unseen = reader.filled == 0;
        let mut t = self.table.lock();
        // At most MAX_CONNECTIONS rounds: each one that does not close looks at an unseen
        // connection, which is then seen.
        while t.open.len() >= MAX_CONNECTIONS {
            let victim = t
                .open
                .iter()
                .enumerate()
                .min_by_key(|(i, e)| (e.standing(), *i))
                .map_or(0, |(i, _)| i);
            if let Some(e) = t.open.get_mut(victim).filter(|e| e.unseen) {
                // A probe accepted a moment before its request arrived, still queued behind a
                // flood: the request is there now. No worker touches it while the table is
                // locked (a worker marks it seen first).
                e.unseen = false;
                e.standing = (peek_standing(&e.stream), Instant::now());
                continue;
            }
            if let Some(e) = t.open.remove(victim) {
                // Wakes its worker at once: its read or write fails and it takes the next one.
                let _ = e.stream.shutdown(Shutdown::Both);
                self.dropped(HttpDropLabels::EVICTED);
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        t.open.push_back(Entry {
            id,
            stream,
            pending: Some(reader),
            standing: (standing, Instant::now()),
            unseen,
        });
        self.metrics.http_connections.set(t.open.len() as i64);
        id
    }

    /// Takes connection `id` for a worker: a copy of its socket (the table keeps its own to
    /// close it from outside) and what was read of it; `None` when it was closed meanwhile.
    fn take(&self, id: u64) -> Option<Handoff> {
        let mut t = self.table.lock();
        let i = t.open.iter().position(|e| e.id == id)?;
        let e = t.open.get_mut(i)?;
        e.unseen = false;
        let reader = e.pending.take()?;
        match e.stream.try_clone() {
            Ok(stream) => Some((stream, reader)),
            Err(e) => {
                // Out of descriptors: closing it gives one back.
                debug!("http: cannot take a connection: {e}");
                t.open.remove(i);
                self.metrics.http_connections.set(t.open.len() as i64);
                None
            }
        }
    }

    /// Sets the standing of connection `id`; false when it was closed from outside meanwhile.
    fn set_standing(&self, id: u64, standing: Standing) -> bool {
        let mut t = self.table.lock();
        match t.open.iter_mut().find(|e| e.id == id) {
            Some(e) => {
                e.standing = (standing, Instant::now());
                true
            }
            None => false,
        }
    }

    fn is_open(&self, id: u64) -> bool {
        self.table.lock().open.iter().any(|e| e.id == id)
    }

    fn unregister(&self, id: u64) {
        let mut t = self.table.lock();
        t.open.retain(|e| e.id != id);
        self.metrics.http_connections.set(t.open.len() as i64);
    }

    fn close_all(&self) {
        for e in self.table.lock().open.drain(..) {
            let _ = e.stream.shutdown(Shutdown::Both);
        }
    }
}

/// A running HTTP server; stops when [`HttpServer::stop`] is called.
pub struct HttpServer {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// The bound address (useful when port 0 was asked for).
    pub addr: SocketAddr,
}

impl HttpServer {
    /// Binds `addr` and serves the endpoints on [`THREADS`] threads.
    pub fn start(
        addr: SocketAddr,
        readiness: Arc<Readiness>,
        metrics: Arc<Metrics>,
    ) -> Result<HttpServer, String> {
        let listener = listen(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("http server has no address: {e}"))?;
        let shared = Arc::new(Shared {
            table: Mutex::new(Table::default()),
            stopping: AtomicBool::new(false),
            readiness,
            metrics,
        });
        // Ids of what the accept thread takes faster than the workers: closed (evicted)
        // connections they have not yet skipped, and new ones taking the closed ones' place.
        // Two queues: connections whose whole probe request came with them never wait behind
        // the others.
        let (ready_tx, ready_rx) = bounded::<u64>(HANDOFF_QUEUE);
        let (other_tx, other_rx) = bounded::<u64>(HANDOFF_QUEUE);
        let mut threads = Vec::with_capacity(THREADS);
        for _ in 0..MAX_CONNECTIONS {
            let rx = Queues {
                ready: ready_rx.clone(),
                other: other_rx.clone(),
            };
            let s = shared.clone();
            let t = thread::Builder::new()
                .name("http-worker".into())
                .stack_size(WORKER_STACK)
                .spawn(move || work(&rx, &s));
            match t {
                Ok(t) => threads.push(t),
                // The workers started so far end when `tx` is dropped with this return.
                Err(e) => return Err(format!("cannot start an http thread: {e}")),
            }
        }
        let s = shared.clone();
        let t = thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || accept(&listener, &ready_tx, &other_tx, &s))
            .map_err(|e| format!("cannot start the http accept thread: {e}"))?;
        threads.push(t);
        info!("health and metrics on http://{addr}");
        Ok(HttpServer {
            shared,
            threads,
            addr,
        })
    }

    /// Stops serving: closes every connection and joins the threads (waiting at most 2 s).
    pub fn stop(self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept thread, blocked in accept(): it sees the flag and drops the sender,
        // which ends the workers once they are idle.
        let _ = TcpStream::connect_timeout(&wake_address(self.addr), Duration::from_secs(1));
        self.shared.close_all();
        let deadline = Instant::now() + STOP_GRACE;
        for t in self.threads {
            while !t.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// A listener on `addr` with a [`LISTEN_BACKLOG`] backlog.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As std does: a restarted process binds at once though old connections are in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The standing a whole request waiting on `stream` gives, read without taking it off the
/// socket nor waiting. Called only while no worker has the connection.
fn peek_standing(stream: &TcpStream) -> Standing {
    let mut buf = [0u8; 1024];
    if stream.set_nonblocking(true).is_err() {
        return Standing::Waiting;
    }
    let n = stream.peek(&mut buf).unwrap_or(0);
    // Unless blocking is restored the worker's deadlines do not hold: closed at once.
    if stream.set_nonblocking(false).is_err() {
        let _ = stream.shutdown(Shutdown::Both);
        return Standing::Waiting;
    }
    match parse(&buf[..n]) {
        Ok(Some((req, _))) => Standing::of(&req),
        _ => Standing::Waiting,
    }
}

/// Where a connection reaches a server bound to `addr` (the loopback for "all interfaces").
fn wake_address(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// The accept loop; returns when the server stops.
fn accept(listener: &TcpListener, ready: &Sender<u64>, other: &Sender<u64>, shared: &Shared) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                // The server keeps accepting whatever happens (tiny_http stopped for good on any
                // accept error). A connection reset before it was taken costs nothing; out of
                // descriptors or memory, a pause lets the workers close some.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) {
                    warn!("http: cannot accept a connection: {e}");
                    thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        // Non-blocking while this thread has it: nothing here waits on a client.
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        // A probe sends its request with the connection: when it is already here (always so
        // when connections arrive faster than they are served), it is answered at once, or
        // spared from eviction until answered however many connections follow it.
        let mut reader = HeadReader::new();
        let standing = reader.take_waiting(&stream);
        if standing == Standing::Probe && answer_at_once(&stream, &reader, shared) {
            continue;
        }
        // Unless blocking is restored the worker's deadlines do not hold: dropped at once.
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        let _ = stream.set_nodelay(true);
        let id = shared.register(stream, reader, standing);
        // Never waits: while this thread waits, new connections, probes among them, pile up
        // in the kernel's listen backlog, and beyond it their SYNs are dropped.
        let queue = if standing == Standing::Probe {
            ready
        } else {
            other
        };
        if queue.try_send(id).is_err() {
            shared.unregister(id);
            shared.dropped(HttpDropLabels::OVERLOADED);
        }
    }
}

/// Answers a probe whose whole request came with its connection, from the accept thread, and
/// closes it: the answer is a few bytes from memory, and a fresh socket's send buffer takes it
/// without waiting (`stream` is non-blocking). Such a connection never takes a slot, so no number of clients sending probe
/// requests (and never reading) can push a real probe out. False, with nothing written, when
/// more than the one request arrived (pipelining) or it announces a body: the workers serve it.
fn answer_at_once(stream: &TcpStream, reader: &HeadReader, shared: &Shared) -> bool {
    let Ok(Some((req, used))) = parse(&reader.buf[..reader.filled]) else {
        return false;
    };
    if used != reader.filled || req.has_body {
        return false;
    }
    let bytes = answer(&req, shared, false);
    // Never waits: a client that advertised no room (a zero window) gets nothing.
    let written = matches!((&*stream).write(&bytes), Ok(n) if n == bytes.len());
    if !written {
        shared.dropped(HttpDropLabels::WRITE_TIMEOUT);
    }
    let _ = stream.shutdown(Shutdown::Write);
    true
}

/// The workers' ends of the two hand-off queues.
struct Queues {
    /// Connections whose whole probe request had arrived when accepted.
    ready: Receiver<u64>,
    /// The others.
    other: Receiver<u64>,
}

impl Queues {
    /// The next connection, one from `ready` whenever there is one; `None` once the accept
    /// thread has ended.
    fn next(&self) -> Option<u64> {
        if let Ok(h) = self.ready.try_recv() {
            return Some(h);
        }
        crossbeam_channel::select_biased! {
            recv(self.ready) -> h => h.ok(),
            recv(self.other) -> h => h.ok(),
        }
    }
}

/// A worker: serves the connections it is handed until the accept thread ends.
fn work(rx: &Queues, shared: &Shared) {
    while let Some(id) = rx.next() {
        if shared.stopping.load(Ordering::SeqCst) {
            shared.unregister(id);
            continue;
        }
        // An id whose connection was closed meanwhile is skipped.
        let Some((mut stream, reader)) = shared.take(id) else {
            continue;
        };
        if let Some(reason) = serve_connection(id, &mut stream, reader, shared) {
            // A connection the accept thread closed was counted there.
            if shared.is_open(id) {
                shared.dropped(reason);
            }
        }
        let _ = stream.shutdown(Shutdown::Both);
        shared.unregister(id);
    }
}

/// Why reading a request head stopped without a request.
#[derive(Debug, PartialEq, Eq)]
enum ReadError {
    /// The client closed the connection (or it was closed from outside).
    Closed,
    /// The head did not arrive whole within [`HEAD_TIMEOUT`].
    TimedOut,
    /// No byte of a next request within [`HEAD_TIMEOUT`] after an answer: a normal keep-alive end.
    Idle,
    /// The head is longer than [`MAX_HEAD_BYTES`] or has more than [`MAX_HEADERS`] lines.
    TooLarge,
    /// Not an HTTP/1.x request.
    Malformed,
}

/// What the endpoints need of one request.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    /// Whether the connection may serve another request after this one.
    keep_alive: bool,
    /// Whether the request announces a body (which is never read).
    has_body: bool,
}

/// Reads requests from the buffer `buf[..filled]`, topping it up from the connection.
struct HeadReader {
    buf: Box<[u8; MAX_HEAD_BYTES]>,
    filled: usize,
}

impl HeadReader {
    fn new() -> HeadReader {
        HeadReader {
            buf: Box::new([0; MAX_HEAD_BYTES]),
            filled: 0,
        }
    }

    /// Takes what has already arrived on the non-blocking `stream`; the standing it gives.
    fn take_waiting(&mut self, stream: &TcpStream) -> Standing {
        if let Ok(n) = (&*stream).read(&mut self.buf[self.filled..]) {
            self.filled += n;
        }
        match parse(&self.buf[..self.filled]) {
            Ok(Some((req, _))) => Standing::of(&req),
            _ => Standing::Waiting,
        }
    }

    /// The next request; `first` says whether it is the connection's first.
    fn next(&mut self, stream: &mut impl DeadlineRead, first: bool) -> Result<Request, ReadError> {
        let deadline = Instant::now() + HEAD_TIMEOUT;
        loop {
            if let Some((req, used)) = parse(&self.buf[..self.filled])? {
                self.buf.copy_within(used..self.filled, 0);
                self.filled -= used;
                return Ok(req);
            }
            if self.filled == MAX_HEAD_BYTES {
                return Err(ReadError::TooLarge);
            }
            let quiet = self.filled == 0;
            match stream.read_by(&mut self.buf[self.filled..], deadline) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(n) => self.filled += n,
                Err(e) if is_timeout(&e) && quiet && !first => return Err(ReadError::Idle),
                Err(e) if is_timeout(&e) => return Err(ReadError::TimedOut),
                Err(_) => return Err(ReadError::Closed),
            }
        }
    }
}

/// Parses one request head from the start of `bytes`: the request and the bytes it took, or
/// `None` while it is incomplete.
fn parse(bytes: &[u8]) -> Result<Option<(Request, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ReadError::TooLarge),
        Err(_) => return Err(ReadError::Malformed),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(ReadError::Malformed);
    };
    let header = |name: &str| -> Vec<String> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
            .collect()
    };
    let connection = header("connection");
    let says = |token: &str| {
        connection
            .iter()
            .any(|v| v.split(',').any(|t| t.trim() == token))
    };
    let keep_alive = match version {
        1 => !says("close"),
        _ => says("keep-alive"),
    };
    let has_body = !header("transfer-encoding").is_empty()
        || header("content-length").iter().any(|v| v != "0");
    Ok(Some((
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
            keep_alive,
            has_body,
        },
        used,
    )))
}

/// Reading with a deadline: the socket's read timeout is set to the time left before each read.
trait DeadlineRead {
    /// Reads into `buf`, failing with a timeout error once `deadline` has passed.
    fn read_by(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize>;
}

impl DeadlineRead for TcpStream {
    fn read_by(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.set_read_timeout(Some(left))?;
            match self.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
}

/// Writes all of `data` before `deadline`, however slowly the client reads.
fn write_by(stream: &mut TcpStream, mut data: &[u8], deadline: Instant) -> io::Result<()> {
    while !data.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether an I/O error is a socket timeout (Linux reports it as `WouldBlock`).
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Serves requests on one connection until it ends; `Some(reason)` when the server dropped it
/// for misbehaving.
fn serve_connection(
    id: u64,
    stream: &mut TcpStream,
    mut reader: HeadReader,
    shared: &Shared,
) -> Option<&'static str> {
    for n in 1..=MAX_REQUESTS_PER_CONNECTION {
        let (answer, keep_alive) = match reader.next(stream, n == 1) {
            Ok(req) => {
                if !shared.set_standing(id, Standing::of(&req)) {
                    return None;
                }
                let keep_alive = req.keep_alive && !req.has_body && n < MAX_REQUESTS_PER_CONNECTION;
                (answer(&req, shared, keep_alive), keep_alive)
            }
            Err(ReadError::Closed | ReadError::Idle) => return None,
            Err(ReadError::TimedOut) => return Some(HttpDropLabels::READ_TIMEOUT),
            Err(ReadError::TooLarge) => {
                let a = Answer::text(431, "request header fields too large\n").encode(false, false);
                let _ = write_by(stream, &a, Instant::now() + WRITE_TIMEOUT);
                return Some(HttpDropLabels::TOO_LARGE);
            }
            Err(ReadError::Malformed) => {
                let a = Answer::text(400, "bad request\n").encode(false, false);
                let _ = write_by(stream, &a, Instant::now() + WRITE_TIMEOUT);
                return Some(HttpDropLabels::MALFORMED);
            }
        };
        if let Err(e) = write_by(stream, &answer, Instant::now() + WRITE_TIMEOUT) {
            debug!("http: answer not taken: {e}");
            return is_timeout(&e).then_some(HttpDropLabels::WRITE_TIMEOUT);
        }
        shared.set_standing(id, Standing::Waiting);
        if !keep_alive || shared.stopping.load(Ordering::SeqCst) {
            return None;
        }
    }
    None
}

/// One answer before encoding.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn text(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain",
            body: body.to_owned(),
        }
    }

    /// The bytes on the wire; `head_only` for a HEAD request.
    fn encode(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        if !keep_alive {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        if !head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

/// The encoded answer to one request.
fn answer(req: &Request, shared: &Shared, keep_alive: bool) -> Vec<u8> {
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        return Answer::text(405, "method not allowed\n").encode(keep_alive, false);
    }
    let a = match req.path.split('?').next().unwrap_or("") {
        "/healthz" | "/health" => Answer::text(200, "ok\n"),
        "/readyz" => {
            let missing = shared.readiness.missing();
            if missing.is_empty() {
                Answer {
                    status: 200,
                    content_type: "application/json",
                    body: "{\"ready\":true}\n".into(),
                }
            } else {
                let body = serde_json::json!({"ready": false, "missing": missing});
                Answer {
                    status: 503,
                    content_type: "application/json",
                    body: format!("{body}\n"),
                }
            }
        }
        "/metrics" => Answer {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: shared.metrics.render(),
        },
        _ => Answer::text(404, "not found\n"),
    };
    a.encode(keep_alive, head_only)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::DecisionLabels;

    fn head(bytes: &[u8]) -> Result<Option<(Request, usize)>, ReadError> {
        parse(bytes)
    }

    #[test]
    fn a_request_head_is_parsed_with_its_connection_rules() {
        let (r, n) = head(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /")
            .unwrap()
            .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/healthz"));
        assert_eq!(n, 34, "only the first of pipelined requests is taken");
        assert!(r.keep_alive && !r.has_body);
        let close = b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n";
        assert!(!head(close).unwrap().unwrap().0.keep_alive);
        assert!(
            !head(b"GET / HTTP/1.0\r\n\r\n")
                .unwrap()
                .unwrap()
                .0
                .keep_alive
        );
        let ka = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        assert!(head(ka).unwrap().unwrap().0.keep_alive);
        assert!(head(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_request_announcing_a_body_is_marked() {
        for h in ["Content-Length: 5", "Transfer-Encoding: chunked"] {
            let req = format!("POST /metrics HTTP/1.1\r\n{h}\r\n\r\n");
            assert!(head(req.as_bytes()).unwrap().unwrap().0.has_body, "{h}");
        }
        let empty = b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        assert!(!head(empty).unwrap().unwrap().0.has_body);
    }

    #[test]
    fn too_many_headers_or_garbage_are_refused() {
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(head(many.as_bytes()).unwrap_err(), ReadError::TooLarge);
        assert_eq!(
            head(b"\x16\x03\x01\x02\x00\x01").unwrap_err(),
            ReadError::Malformed
        );
        assert_eq!(
            head(b"GET / HTTP/2.0\r\n\r\n").unwrap_err(),
            ReadError::Malformed
        );
    }

    /// A server on a free loopback port, with its metrics.
    fn server() -> (HttpServer, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let s = HttpServer::start(addr, Arc::new(Readiness::default()), metrics.clone()).unwrap();
        (s, metrics)
    }

    fn connect(s: &HttpServer) -> TcpStream {
        let c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c
    }

    /// Everything the server sends until it closes (or resets) the connection.
    fn read_all(c: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&out).into_owned(),
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn dropped(m: &Metrics, reason: &'static str) -> u64 {
        m.http_connections_dropped
            .get_or_create(&HttpDropLabels { reason })
            .get()
    }

    /// `/healthz` on a new connection: the answer, and how long it took.
    fn probe(s: &HttpServer) -> (String, Duration) {
        let start = Instant::now();
        let mut c = connect(s);
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        (read_all(&mut c), start.elapsed())
    }

    #[test]
    fn answers_keep_their_status_type_and_body_and_keep_alive_works() {
        let (s, _) = server();
        let mut c = connect(&s);
        c.write_all(b"GET /healthz HTTP/1.1\r\n\r\nGET /readyz?x=1 HTTP/1.1\r\n\r\nHEAD /metrics HTTP/1.1\r\n\r\nPOST /healthz HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let all = read_all(&mut c);
        let answers: Vec<&str> = all.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(answers.len(), 5, "{all}");
        assert!(
            answers[0]
                .starts_with("200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"),
            "{all}"
        );
        assert!(
            answers[1].starts_with("503 Service Unavailable\r\nContent-Type: application/json\r\n"),
            "{all}"
        );
        assert!(
            answers[1].contains("{\"missing\":[\"nats_connected\""),
            "{all}"
        );
        assert!(
            answers[2].contains(
                "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
            ),
            "{all}"
        );
        assert!(answers[2].ends_with("\r\n\r\n"), "HEAD has no body: {all}");
        assert!(
            answers[3].starts_with("405 Method Not Allowed\r\n")
                && answers[3].ends_with("method not allowed\n"),
            "{all}"
        );
        assert!(
            answers[4].starts_with("404 Not Found\r\n")
                && answers[4].contains("Connection: close\r\n"),
            "{all}"
        );
        s.stop();
    }

    #[test]
    fn a_request_with_a_body_is_answered_and_its_connection_closed() {
        let (s, _) = server();
        let mut c = connect(&s);
        c.write_all(
            b"POST /healthz HTTP/1.1\r\nContent-Length: 10\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
        )
        .unwrap();
        let all = read_all(&mut c);
        assert!(
            all.starts_with("HTTP/1.1 405 ") && all.contains("Connection: close"),
            "{all}"
        );
        assert_eq!(
            all.matches("HTTP/1.1").count(),
            1,
            "the body is never read as a request: {all}"
        );
    }

    #[test]
    fn a_half_sent_request_is_closed_at_the_head_timeout() {
        let (s, m) = server();
        let mut c = connect(&s);
        let start = Instant::now();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: ").unwrap();
        assert_eq!(read_all(&mut c), "");
        let took = start.elapsed();
        assert!(took >= HEAD_TIMEOUT && took < HEAD_TIMEOUT * 3, "{took:?}");
        assert_eq!(dropped(&m, HttpDropLabels::READ_TIMEOUT), 1);
    }

    #[test]
    fn a_slow_writer_does_not_get_longer_than_the_head_timeout() {
        let (s, m) = server();
        let mut c = connect(&s);
        let start = Instant::now();
        c.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        // One byte every 200 ms: each read succeeds, the head never ends.
        let closed = loop {
            thread::sleep(Duration::from_millis(200));
            if c.write_all(b"X").is_err() || start.elapsed() > HEAD_TIMEOUT * 3 {
                break start.elapsed();
            }
        };
        assert!(closed < HEAD_TIMEOUT * 3, "still open after {closed:?}");
        assert_eq!(dropped(&m, HttpDropLabels::READ_TIMEOUT), 1);
    }

    #[test]
    fn an_idle_connection_is_closed_and_counted_only_before_its_first_request() {
        let (s, m) = server();
        let mut idle = connect(&s);
        let mut used = connect(&s);
        used.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_all(&mut idle), "");
        assert!(read_all(&mut used).ends_with("ok\n"));
        assert_eq!(dropped(&m, HttpDropLabels::READ_TIMEOUT), 1);
    }

    #[test]
    fn an_overlong_head_is_answered_431_and_closed() {
        let (s, m) = server();
        let mut c = connect(&s);
        let line = format!(
            "GET /healthz HTTP/1.1\r\nX-Long: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        // The server may close before taking everything: a failed write is part of the answer.
        let _ = c.write_all(line.as_bytes());
        let all = read_all(&mut c);
        assert!(all.is_empty() || all.starts_with("HTTP/1.1 431 "), "{all}");
        assert_eq!(dropped(&m, HttpDropLabels::TOO_LARGE), 1);
        let mut c = connect(&s);
        c.write_all(b"\x16\x03\x01 hello\r\n\r\n").unwrap();
        assert!(read_all(&mut c).starts_with("HTTP/1.1 400 "));
        assert_eq!(dropped(&m, HttpDropLabels::MALFORMED), 1);
    }

    #[test]
    fn a_client_that_never_reads_is_dropped_at_the_write_timeout() {
        let (s, m) = server();
        // A /metrics of several MiB, so that the pipelined answers overflow the socket buffers.
        for i in 0..40_000 {
            let reason: &'static str = Box::leak(format!("padding_{i:0>40}").into_boxed_str());
            m.decisions
                .get_or_create(&DecisionLabels {
                    result: "deny",
                    reason,
                })
                .inc();
        }
        let c = connect(&s);
        let mut w = c.try_clone().unwrap();
        w.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        let start = Instant::now();
        for _ in 0..MAX_REQUESTS_PER_CONNECTION {
            if w.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").is_err() {
                break;
            }
        }
        let deadline = Instant::now() + WRITE_TIMEOUT * 4;
        while dropped(&m, HttpDropLabels::WRITE_TIMEOUT) == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            dropped(&m, HttpDropLabels::WRITE_TIMEOUT),
            1,
            "after {:?}",
            start.elapsed()
        );
        assert!(start.elapsed() >= WRITE_TIMEOUT);
        drop(c);
    }

    #[test]
    fn over_the_cap_the_oldest_connections_are_closed_and_health_still_answers() {
        let (s, m) = server();
        let mut held: Vec<TcpStream> = (0..MAX_CONNECTIONS + 10).map(|_| connect(&s)).collect();
        let (answer, took) = probe(&s);
        assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
        assert!(took < Duration::from_secs(1), "{took:?}");
        // The 10 oldest were closed at once for the held ones beyond the cap. The probe took a
        // slot (closing an 11th) only if its request came after the connection was accepted;
        // otherwise it was answered at once.
        for c in held.iter_mut().take(10) {
            c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            assert_eq!(read_all(c), "");
        }
        let evicted = dropped(&m, HttpDropLabels::EVICTED);
        assert!(evicted == 10 || evicted == 11, "{evicted}");
        let mut newest = held.pop().unwrap();
        newest.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
        assert!(
            read_all(&mut newest).ends_with("ok\n"),
            "the newest are kept"
        );
        s.stop();
    }

    #[test]
    fn connections_opened_and_closed_fast_leave_nothing_open_and_health_answers() {
        let (s, m) = server();
        for _ in 0..2000 {
            drop(TcpStream::connect(s.addr).unwrap());
        }
        let (answer, took) = probe(&s);
        assert!(
            answer.ends_with("ok\n") && took < Duration::from_secs(1),
            "{answer} {took:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while m.http_connections.get() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(m.http_connections.get(), 0);
    }

    #[test]
    fn keep_alive_serves_a_bounded_number_of_requests() {
        let (s, _) = server();
        let mut c = connect(&s);
        let n = MAX_REQUESTS_PER_CONNECTION as usize + 5;
        c.write_all(&b"GET /healthz HTTP/1.1\r\n\r\n".repeat(n))
            .unwrap();
        let all = read_all(&mut c);
        assert_eq!(
            all.matches("ok\n").count(),
            MAX_REQUESTS_PER_CONNECTION as usize
        );
        assert_eq!(all.matches("Connection: close").count(), 1, "{all}");
    }

    #[test]
    fn a_client_that_half_closes_after_its_request_gets_the_answer() {
        let (s, _) = server();
        let mut c = connect(&s);
        c.write_all(b"GET /readyz HTTP/1.1\r\n\r\n").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert!(read_all(&mut c).starts_with("HTTP/1.1 503 "));
    }

    #[test]
    fn a_pipelining_non_reader_of_probes_does_not_hold_a_slot() {
        // Fake probes are answered (a few bytes each) and the connection closed after the tenth.
        let (s, m) = server();
        let mut c = connect(&s);
        let _ = c.write_all(&b"GET /healthz HTTP/1.1\r\n\r\n".repeat(1000));
        let deadline = Instant::now() + Duration::from_secs(5);
        while m.http_connections.get() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(m.http_connections.get(), 0);
    }

    #[test]
    fn stop_ends_every_thread_while_clients_hold_connections() {
        let (s, _) = server();
        let _held: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect(&s)).collect();
        let start = Instant::now();
        s.stop();
        assert!(start.elapsed() < STOP_GRACE, "{:?}", start.elapsed());
    }
}
