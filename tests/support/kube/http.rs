//! HTTP/1.1 for the emulator: the accept loop and one thread per connection (keep-alive, the TLS
//! handshake first when serving HTTPS), request parsing (request line, headers, Content-Length
//! bodies, the query string) and JSON answers.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use super::routing::{respond, status_body};
use super::state::Shared;
use super::tls::Conn;

/// The TLS handshake errors kept for [`KubeEmulator::tls_errors`](super::KubeEmulator::tls_errors).
const MAX_RECORDED_TLS_ERRORS: usize = 100;
/// Idle keep-alive connections are closed after this.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(30);
/// A client that stops reading for this long loses its connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request line or header line accepted.
const MAX_LINE: u64 = 16 * 1024;
/// Most header lines accepted in one request.
const MAX_HEADERS: usize = 100;
/// Largest request body kept for the handler; larger ones are read and discarded.
const MAX_BODY: u64 = 1024 * 1024;

/// The connection threads and their sockets.
#[derive(Default)]
pub(super) struct Connections {
    next_id: u64,
    /// A clone of every open connection, so shutdown and outages can cut them.
    pub(super) open: HashMap<u64, TcpStream>,
    /// Joined when the emulator is dropped.
    pub(super) threads: Vec<JoinHandle<()>>,
}

/// Accepts connections until the emulator stops: while it is down they are closed at once,
/// otherwise each gets its own thread.
pub(super) fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
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
                let conn = reader.get_mut();
                let _ = write_json(conn, 400, &body, &[], "application/json", false, |_| {});
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

/// One parsed request.
pub(super) struct Request {
    pub(super) method: String,
    /// The path, percent-decoded.
    pub(super) path: String,
    /// The raw query string, without `?`.
    pub(super) query: String,
    /// The query decoded into pairs, in order.
    params: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    http11: bool,
    /// The connection presented a verified client certificate.
    pub(super) client_certificate: bool,
    /// The request body (empty when there was none or it exceeded [`MAX_BODY`]).
    pub(super) body: Vec<u8>,
}

impl Request {
    /// The value of header `name` (case-insensitive), if present.
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The decoded value of query parameter `name`, if present.
    pub(super) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Path and query as sent (still percent-encoded), what fault rules match against.
    pub(super) fn target(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }

    /// Whether the client wants the connection kept open after the answer.
    pub(super) fn keep_alive(&self) -> bool {
        match self.header("Connection") {
            Some(v) if v.eq_ignore_ascii_case("close") => false,
            Some(v) if v.eq_ignore_ascii_case("keep-alive") => true,
            _ => self.http11,
        }
    }

    /// The media type of the body, lower-cased (JSON when the header is missing).
    pub(super) fn content_type(&self) -> String {
        self.header("Content-Type")
            .unwrap_or("application/json")
            .to_ascii_lowercase()
    }

    /// The token of an `Authorization: Bearer` header.
    pub(super) fn bearer(&self) -> Option<&str> {
        let value = self.header("Authorization")?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    }
}

/// Why no request could be read.
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

/// Writes one JSON answer. `sending` is told the length of its body in bytes before it is written
/// (so that a client that has read it finds it counted).
pub(super) fn write_json(
    stream: &mut Conn,
    status: u16,
    body: &Value,
    headers: &[(String, String)],
    content_type: &str,
    keep_alive: bool,
    sending: impl FnOnce(u64),
) -> io::Result<()> {
    let mut payload = serde_json::to_vec(body).map_err(io::Error::other)?;
    payload.push(b'\n');
    sending(payload.len() as u64);
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
pub(super) fn parse_bool(value: Option<&str>) -> bool {
    matches!(value, Some("1" | "t" | "T" | "true" | "TRUE" | "True"))
}

/// Decodes an `application/x-www-form-urlencoded` query into pairs, in order.
pub(super) fn parse_query(query: &str) -> Vec<(String, String)> {
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
