//! A minimal HTTP/1.1 server on 127.0.0.1 for unit tests: it answers each request (one per
//! connection) with the bytes a test's closure returns.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;

/// One received request: its request line, headers (lower-cased names) and body.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    /// The `Content-Length` bytes that followed the headers.
    pub(crate) body: Vec<u8>,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What to send back: the raw bytes after the connection is accepted (status line included).
pub(crate) type Responder = dyn Fn(&Request) -> Vec<u8> + Send + Sync;

/// Starts the server; returns its base URL. The thread lives until the test process ends.
pub(crate) fn start(respond: Arc<Responder>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let respond = respond.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_owned();
                let path = parts.next().unwrap_or("").to_owned();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some((n, v)) = h.split_once(':') {
                        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
                let mut request = Request {
                    method,
                    path,
                    headers,
                    body: Vec::new(),
                };
                let length = request
                    .header("content-length")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                if (&mut reader)
                    .take(length)
                    .read_to_end(&mut request.body)
                    .is_err()
                {
                    return;
                }
                let out = respond(&request);
                let _ = stream.write_all(&out);
                let _ = stream.flush();
            });
        }
    });
    format!("http://{addr}")
}

/// A complete response with a body and `Connection: close`.
pub(crate) fn response(status: &str, extra_headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in extra_headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}
