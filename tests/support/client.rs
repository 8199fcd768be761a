//! A NATS client connecting with a token, and probes of what it may publish and subscribe to.
#![allow(deprecated)]

use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver};

/// A connected client with its asynchronous server errors collected.
pub struct Client {
    /// The connection.
    pub nc: nats::Connection,
    errors: Receiver<String>,
    disconnects: Receiver<()>,
}

/// Connects to `url` presenting `token` as `auth_token`; `Err` carries the refusal text.
pub fn connect_token(url: &str, token: &str) -> Result<Client, String> {
    connect_with(url, nats::Options::with_token(token))
}

/// Connects presenting `token` as the password of user `user` (like an MQTT or user/pass client).
pub fn connect_user_pass(url: &str, user: &str, token: &str) -> Result<Client, String> {
    connect_with(url, nats::Options::with_user_pass(user, token))
}

/// Connects with the creds file at `path` (a user JWT and its seed).
pub fn connect_creds(url: &str, path: &std::path::Path) -> Result<Client, String> {
    connect_with(url, nats::Options::with_credentials(path))
}

/// Connects with creds given as text.
pub fn connect_static_creds(url: &str, creds: &str) -> Result<Client, String> {
    let opts = nats::Options::with_static_credentials(creds).map_err(|e| e.to_string())?;
    connect_with(url, opts)
}

/// Connects with no credentials at all.
pub fn connect_anonymous(url: &str) -> Result<Client, String> {
    connect_with(url, nats::Options::new())
}

fn connect_with(url: &str, opts: nats::Options) -> Result<Client, String> {
    let (etx, errors) = unbounded();
    let (dtx, disconnects) = unbounded();
    let nc = opts
        .max_reconnects(1)
        .error_callback(move |e| {
            let _ = etx.send(e.to_string());
        })
        .disconnect_callback(move || {
            let _ = dtx.send(());
        })
        .connect(url)
        .map_err(|e| e.to_string())?;
    Ok(Client {
        nc,
        errors,
        disconnects,
    })
}

impl Client {
    fn violation(&self, what: &str, subject: &str) -> bool {
        let needle = format!("Permissions Violation for {what} to \"{subject}\"");
        let _ = self.nc.flush_timeout(Duration::from_secs(2));
        // The server answers a violation with -ERR right after the offending operation; a PING
        // round trip after it proves no error is coming.
        let _ = self.nc.rtt();
        while let Ok(e) = self.errors.recv_timeout(Duration::from_millis(200)) {
            if e.contains(&needle) {
                return true;
            }
        }
        false
    }

    /// Whether publishing to `subject` is accepted (no permission violation).
    pub fn can_publish(&self, subject: &str) -> bool {
        self.nc.publish(subject, b"probe").is_ok() && !self.violation("Publish", subject)
    }

    /// Whether subscribing to `subject` is accepted (no permission violation).
    pub fn can_subscribe(&self, subject: &str) -> bool {
        match self.nc.subscribe(subject) {
            Ok(_sub) => !self.violation("Subscription", subject),
            Err(_) => false,
        }
    }

    /// Whether a queue subscription to `subject` in `queue` is accepted.
    pub fn can_queue_subscribe(&self, subject: &str, queue: &str) -> bool {
        match self.nc.queue_subscribe(subject, queue) {
            Ok(_sub) => !self.violation("Subscription", subject),
            Err(_) => false,
        }
    }

    /// Subscribes to `subject`, publishes to it and reports whether the message came back.
    pub fn round_trip(&self, subject: &str) -> bool {
        let Ok(sub) = self.nc.subscribe(subject) else {
            return false;
        };
        let _ = self.nc.flush();
        if self.nc.publish(subject, b"hello").is_err() {
            return false;
        }
        sub.next_timeout(Duration::from_secs(2))
            .map(|m| m.data == b"hello")
            .unwrap_or(false)
    }

    /// Waits up to `timeout` for the server to drop the connection; returns the errors seen.
    pub fn wait_disconnected(&self, timeout: Duration) -> Option<Vec<String>> {
        self.disconnects.recv_timeout(timeout).ok()?;
        Some(self.errors.try_iter().collect())
    }
}

/// Whether an error text is the server's authorization refusal.
pub fn is_authorization_violation(err: &str) -> bool {
    err.to_ascii_lowercase().contains("authorization violation")
}

/// Connects to `url` over the bare NATS protocol with `token` (no client library: the nats crate
/// takes 0.2 to 1 s per connect, the server answers in milliseconds) and closes again.
/// `Ok(None)`: admitted (PONG); `Ok(Some(line))`: refused with that `-ERR` line (or the server
/// closed); `Err`: the connection itself failed.
pub fn bare_connect(url: &str, token: &str) -> std::io::Result<Option<String>> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(url.trim_start_matches("nats://"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?; // INFO
    let connect = serde_json::json!({"auth_token": token, "verbose": false, "protocol": 1});
    (&stream).write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())?;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(Some("closed".into()));
        }
        match line.trim_end() {
            "PONG" => return Ok(None),
            l if l.starts_with("-ERR") => return Ok(Some(l.to_string())),
            _ => {}
        }
    }
}
