//! The HTTP endpoints: `/healthz` (alive), `/readyz` (ready to answer), `/health` (alias of
//! `/healthz`) and `/metrics` (Prometheus).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{info, warn};
use tiny_http::{Header, Response, Server};

use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// A running HTTP server; stops when [`HttpServer::stop`] is called.
pub struct HttpServer {
    server: Arc<Server>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The bound address (useful when port 0 was asked for).
    pub addr: std::net::SocketAddr,
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn respond(req: tiny_http::Request, status: u16, content_type: &str, body: String) {
    let mut resp = Response::from_string(body).with_status_code(status);
    if let Some(h) = header("Content-Type", content_type) {
        resp.add_header(h);
    }
    if let Err(e) = req.respond(resp) {
        warn!("http: cannot answer: {e}");
    }
}

impl HttpServer {
    /// Binds `0.0.0.0:port` and serves the endpoints on one thread.
    pub fn start(
        port: u16,
        readiness: Arc<Readiness>,
        metrics: Arc<Metrics>,
    ) -> Result<HttpServer, String> {
        let server = Server::http(("0.0.0.0", port))
            .map_err(|e| format!("cannot listen on port {port}: {e}"))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| "http server has no IP address".to_string())?;
        let server = Arc::new(server);
        let s = server.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = stopping.clone();
        // One thread is enough: every endpoint answers from memory in microseconds.
        let thread = thread::Builder::new()
            .name("http".into())
            .spawn(move || serve(&s, &flag, &readiness, &metrics))
            .map_err(|e| format!("cannot start http thread: {e}"))?;
        info!("health and metrics on http://{addr}");
        Ok(HttpServer {
            server,
            stopping,
            thread: Some(thread),
            addr,
        })
    }

    /// Stops serving and joins the thread.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &Server, stopping: &AtomicBool, readiness: &Readiness, metrics: &Metrics) {
    while !stopping.load(Ordering::SeqCst) {
        let req = match server.recv_timeout(Duration::from_secs(1)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(_) => return,
        };
        let path = req.url().split('?').next().unwrap_or("").to_string();
        if *req.method() != tiny_http::Method::Get && *req.method() != tiny_http::Method::Head {
            respond(req, 405, "text/plain", "method not allowed\n".into());
            continue;
        }
        match path.as_str() {
            "/healthz" | "/health" => respond(req, 200, "text/plain", "ok\n".into()),
            "/readyz" => {
                let missing = readiness.missing();
                if missing.is_empty() {
                    respond(req, 200, "application/json", "{\"ready\":true}\n".into());
                } else {
                    let body = serde_json::json!({"ready": false, "missing": missing});
                    respond(req, 503, "application/json", format!("{body}\n"));
                }
            }
            "/metrics" => respond(
                req,
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.render(),
            ),
            _ => respond(req, 404, "text/plain", "not found\n".into()),
        }
    }
}
