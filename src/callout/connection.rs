//! The callout's own NATS connection: the part of the client protocol the service speaks, on a
//! blocking socket.
//!
//! The caller's reader loop reads the socket itself ([`Connection::next_event`]) and every worker
//! writes its answer straight to the socket ([`Publisher::publish`]): one write per answer, no
//! flush round trip (PING/PONG) and no hand-off through a client library's reader and flusher
//! threads. That is the whole point of having it; a general-purpose client is not the aim.
//!
//! Spoken: INFO, CONNECT (user/password, token, creds with the nonce signed), TLS when the URL
//! says `tls://` or the server requires it (roots from the system store, which honours
//! `SSL_CERT_FILE`), SUB in a queue group, UNSUB, MSG, HMSG, PUB, PING/PONG both ways, +OK and
//! -ERR. Servers announced by INFO `connect_urls` join the list tried on reconnect.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use parking_lot::Mutex;
use serde::Deserialize;

/// How long one TCP connect, the INFO, the TLS handshake or the first PONG may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a blocked write may last before the connection counts as lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After this long without a byte from the server, a PING is sent.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// PINGs without a PONG after which the connection counts as lost.
const MAX_PINGS_OUT: u32 = 2;
/// Longest protocol line accepted (INFO of a large cluster included).
const MAX_CONTROL_LINE: usize = 64 * 1024;
/// Payload bound used until the server's INFO says otherwise (nats-server's default).
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// The largest `max_payload` honoured (nats-server refuses to be configured above it).
const MAX_PAYLOAD_LIMIT: usize = 64 * 1024 * 1024;
/// Servers remembered from `connect_urls`, so a hostile or broken INFO cannot grow the list.
const MAX_DISCOVERED: usize = 64;
/// The subscription id of the one subscription this connection makes.
const SID: &str = "1";

/// How the service logs in, besides what each URL carries (`user:pass@` or `token@`).
#[derive(Clone)]
pub enum Login {
    /// Only what the URL carries.
    None,
    /// A creds file (user JWT + seed), read at every connect so a replaced file is used.
    CredsFile(std::path::PathBuf),
    /// A token. Never logged.
    Token(String),
    /// A user nkey seed file: the public key is sent and the server's nonce signed, the seed
    /// never; read at every connect.
    NkeySeedFile(std::path::PathBuf),
    /// A file holding the token (surrounding blanks ignored), read at every connect. Never
    /// logged.
    TokenFile(std::path::PathBuf),
    /// A client of an operator-mode server without `default_sentinel`: the sentinel's creds file
    /// (its JWT, the nonce signed) and a token for the callout. Never logged.
    SentinelAndToken(std::path::PathBuf, String),
}

impl Login {
    /// The file the login is read from, when it is one.
    fn file(&self) -> Option<&Path> {
        match self {
            Login::CredsFile(p)
            | Login::NkeySeedFile(p)
            | Login::TokenFile(p)
            | Login::SentinelAndToken(p, _) => Some(p),
            Login::None | Login::Token(_) => None,
        }
    }
}

/// TLS beyond what each URL says; the files are read at every connect, so a replaced
/// certificate or CA is used from the next connection on.
#[derive(Clone, Default, Debug)]
pub struct TlsSettings {
    /// A PEM bundle of the CAs to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// A PEM certificate chain and its PEM private key, presented to the server (mutual TLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Every connection must be TLS, whatever its URL says; a server that does not offer TLS
    /// is refused.
    pub required: bool,
}

impl TlsSettings {
    /// Whether TLS is asked for whatever the URL says: required, or a CA or client certificate
    /// given (which only mean something over TLS).
    fn forced(&self) -> bool {
        self.required || self.ca_file.is_some() || self.client_cert.is_some()
    }

    /// Builds the client settings from the files now, so a bad file stops start-up with its
    /// cause rather than failing every connect.
    pub fn check(&self) -> Result<(), String> {
        self.client_config().map(|_| ())
    }

    /// The rustls client settings: ring as the provider (the same rustls ureq uses), the CA file
    /// or else the system roots (`SSL_CERT_FILE`, `SSL_CERT_DIR` honoured), the client
    /// certificate when one is given.
    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let roots = match &self.ca_file {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("NATS_CA_FILE {}: {e}", path.display()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!(
                        "NATS_CA_FILE {}: no usable PEM certificate in it",
                        path.display()
                    ));
                }
                roots
            }
            None => system_roots()?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("NATS_CLIENT_CERT_FILE {}: {e}", cert.display()))?;
                if chain.is_empty() {
                    return Err(format!(
                        "NATS_CLIENT_CERT_FILE {}: no PEM certificate in it",
                        cert.display()
                    ));
                }
                // The error names the file only: a key's bytes never reach a message.
                let key = PrivateKeyDer::from_pem_file(key).map_err(|_| {
                    format!(
                        "NATS_CLIENT_KEY_FILE {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
                        key.display()
                    )
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("NATS_CLIENT_CERT_FILE and NATS_CLIENT_KEY_FILE: {e}"))?
            }
        };
        Ok(Arc::new(config))
    }
}

/// The system's trusted CAs, read once (the store does not change under a running process).
fn system_roots() -> Result<rustls::RootCertStore, String> {
    // Only a success is kept: a store that is missing at the first connect (a volume not
    // mounted yet) is looked for again at the next one.
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    if let Some(roots) = ROOTS.get() {
        return Ok(roots.clone());
    }
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "no trusted CA certificate found for TLS to NATS (set NATS_CA_FILE or SSL_CERT_FILE){}",
            found
                .errors
                .first()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    Ok(ROOTS.get_or_init(|| roots).clone())
}

/// One server to try.
#[derive(Clone, PartialEq, Eq)]
struct Server {
    host: String,
    port: u16,
    tls: bool,
    user: Option<String>,
    pass: Option<String>,
    /// The name the server's certificate must carry: the configured host, also for the
    /// addresses a server announces (they are usually IPs).
    tls_name: String,
    /// Learned from a server's `connect_urls`, not configured: dropped once no longer announced.
    implicit: bool,
}

impl fmt::Display for Server {
    // Never the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "tls" } else { "nats" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Why a connect attempt failed; the text never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `NATS_URL` does not parse (config validation makes this unreachable in the service).
    #[error("bad server url: {0}")]
    BadUrl(String),
    /// No server could be reached; the last failure is given.
    #[error("{0}")]
    Io(String),
    /// The server answered CONNECT with an error (e.g. `Authorization Violation`).
    #[error("the server refused the login: {0}")]
    Refused(String),
    /// The creds file could not be used.
    #[error("creds file {path}: {why}")]
    Creds {
        /// Its path.
        path: String,
        /// What is wrong (never its content).
        why: String,
    },
}

/// The servers to try and how to log in; shared by every (re)connect.
#[derive(Clone)]
pub struct Dialer {
    servers: Vec<Server>,
    login: Login,
    tls: TlsSettings,
    name: String,
    /// Where the next attempt starts in `servers`.
    next: usize,
    /// How long a connect may take from the TCP connection to the server's PONG.
    handshake: Duration,
    /// A client's dialer: a refused login ends the attempt, rather than trying the next server
    /// (a refusal is what a check wants to know about that server).
    refusal_ends: bool,
}

impl Dialer {
    /// Parses `urls` (comma-separated `nats://` or `tls://` URLs).
    pub fn new(
        urls: &str,
        login: Login,
        tls: TlsSettings,
        name: &str,
    ) -> Result<Dialer, ConnectError> {
        let mut servers = Vec::new();
        for entry in urls.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let with_scheme = if entry.contains("://") {
                entry.to_string()
            } else {
                format!("nats://{entry}")
            };
            let url = url::Url::parse(&with_scheme).map_err(|e| {
                ConnectError::BadUrl(format!("{}: {e}", crate::urls::redact_urls(entry)))
            })?;
            let tls = match url.scheme() {
                "nats" => false,
                "tls" => true,
                other => return Err(ConnectError::BadUrl(format!("scheme {other:?}"))),
            };
            let host = url
                .host_str()
                .ok_or_else(|| ConnectError::BadUrl("no host".into()))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|d| d.into_owned())
                    .map_err(|_| ConnectError::BadUrl("bad percent-encoding".into()))
            };
            let user = match url.username() {
                "" => None,
                u => Some(decode(u)?),
            };
            let pass = url.password().map(decode).transpose()?;
            servers.push(Server {
                tls_name: host.clone(),
                host,
                port: url.port().unwrap_or(4222),
                tls,
                user,
                pass,
                implicit: false,
            });
        }
        if servers.is_empty() {
            return Err(ConnectError::BadUrl("no server url".into()));
        }
        // Replicas start at different servers, as NATS clients do, so they spread over a cluster.
        let next = fastrand::usize(..servers.len());
        Ok(Dialer {
            servers,
            login,
            tls,
            name: name.to_string(),
            next,
            handshake: CONNECT_TIMEOUT,
            refusal_ends: false,
        })
    }

    /// This dialer, giving the server `name` as its client name.
    pub fn renamed(mut self, name: &str) -> Dialer {
        self.name = name.to_string();
        self
    }

    /// The same servers and TLS settings, logging in as a client with `login` instead of the
    /// service's own login (the logins the URLs carry are dropped too), under `name`, with
    /// `handshake` for each connect: the server answers a client's CONNECT only once the auth
    /// callout has decided, which may take its whole authorization timeout. It starts at a
    /// random server, and a refused login ends a connect.
    pub fn as_client(&self, login: Login, name: &str, handshake: Duration) -> Dialer {
        let servers = self
            .servers
            .iter()
            .filter(|s| !s.implicit)
            .map(|s| Server {
                user: None,
                pass: None,
                ..s.clone()
            })
            .collect();
        let next = fastrand::usize(..self.servers.len().max(1));
        Dialer {
            servers,
            login,
            tls: self.tls.clone(),
            name: name.to_string(),
            next,
            handshake,
            refusal_ends: true,
        }
    }

    /// Tries each server once, starting after the last one used; the first that accepts the
    /// login wins. A failure names the last server tried (without credentials) and why.
    pub fn connect(&mut self) -> Result<Connection, (String, ConnectError)> {
        // Taken before the files are read, so a change while connecting is seen afterwards.
        let made_from = if self.has_files() {
            self.files_fingerprint()
        } else {
            [0; 32]
        };
        let mut last = (String::new(), ConnectError::Io("no server url".into()));
        for _ in 0..self.servers.len() {
            let i = self.next % self.servers.len();
            self.next = i + 1;
            let server = self.servers[i].clone();
            match self.connect_to(&server) {
                Ok(mut conn) => {
                    self.next = i;
                    self.remember(&conn);
                    conn.made_from = made_from;
                    return Ok(conn);
                }
                // A login file that cannot be used is unusable for every server.
                Err(e @ ConnectError::Creds { .. }) => return Err((server.to_string(), e)),
                Err(e @ ConnectError::Refused(_)) if self.refusal_ends => {
                    return Err((server.to_string(), e))
                }
                Err(e) => last = (server.to_string(), e),
            }
        }
        Err(last)
    }

    /// A digest of every file the connection is made from (the login's, the CA, the client
    /// certificate and key): when it changes, a Secret was swapped and a new connection should
    /// use the new files. A file that cannot be read counts as its error.
    pub fn files_fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut files: Vec<&Path> = self.login.file().into_iter().collect();
        files.extend(self.tls.ca_file.as_deref());
        if let Some((cert, key)) = &self.tls.client_cert {
            files.push(cert);
            files.push(key);
        }
        for f in files {
            match std::fs::read(f) {
                Ok(bytes) => {
                    h.update((bytes.len() as u64).to_le_bytes());
                    h.update(&bytes);
                }
                Err(e) => h.update(format!("unreadable: {}", e.kind()).as_bytes()),
            }
        }
        h.finalize().into()
    }

    /// Whether the connection is made from files at all (else there is nothing to watch).
    pub fn has_files(&self) -> bool {
        self.login.file().is_some() || self.tls.ca_file.is_some() || self.tls.client_cert.is_some()
    }

    /// Adds the servers `conn`'s server has announced so far to those tried on reconnect.
    pub fn remember(&mut self, conn: &Connection) {
        // A nats:// URL upgraded because this server requires TLS: the servers it announces
        // get TLS too, so a man in the middle who strips their `tls_required` does not get
        // the password in clear.
        let via = Server {
            tls: conn.via.tls || conn.info.tls_required,
            ..conn.via.clone()
        };
        self.learn(&via, &conn.info.connect_urls);
    }

    /// Adds servers a connected server announced, with the credentials and TLS of the one that
    /// announced them (the same cluster, the same login).
    fn learn(&mut self, via: &Server, urls: &[String]) {
        let announced: Vec<(String, u16)> = urls
            .iter()
            .filter_map(|hp| {
                let url = url::Url::parse(&format!("nats://{hp}")).ok()?;
                let host = url
                    .host_str()?
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                Some((host.to_string(), url.port().unwrap_or(4222)))
            })
            .take(MAX_DISCOVERED)
            .collect();
        // As nats.go does: servers no longer announced leave the list (pods that are gone),
        // except the configured ones and the one connected to.
        self.servers.retain(|s| {
            !s.implicit
                || (s.host == via.host && s.port == via.port)
                || announced.iter().any(|(h, p)| *h == s.host && *p == s.port)
        });
        for (host, port) in announced {
            if self.servers.len() >= MAX_DISCOVERED + 16 {
                break;
            }
            if self
                .servers
                .iter()
                .any(|s| s.host == host && s.port == port)
            {
                continue;
            }
            self.servers.push(Server {
                host,
                port,
                implicit: true,
                ..via.clone()
            });
        }
    }

    fn connect_to(&self, server: &Server) -> Result<Connection, ConnectError> {
        let addrs: Vec<SocketAddr> = (server.host.as_str(), server.port)
            .to_socket_addrs()
            .map_err(|e| ConnectError::Io(format!("cannot resolve: {e}")))?
            .collect();
        let mut last = ConnectError::Io("no address".into());
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT.min(self.handshake)) {
                Ok(tcp) => match self.handshake(server, tcp) {
                    Ok(c) => return Ok(c),
                    Err(e @ (ConnectError::Refused(_) | ConnectError::Creds { .. })) => {
                        return Err(e)
                    }
                    Err(e) => last = e,
                },
                Err(e) => last = ConnectError::Io(e.to_string()),
            }
        }
        Err(last)
    }

    /// INFO, TLS if wanted, CONNECT and a PING answered by PONG.
    fn handshake(&self, server: &Server, tcp: TcpStream) -> Result<Connection, ConnectError> {
        let io_err = |e: io::Error| {
            ConnectError::Io(match e.kind() {
                // A socket read timeout reads as "Resource temporarily unavailable".
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    format!("no answer within {:?}", self.handshake)
                }
                _ => e.to_string(),
            })
        };
        tcp.set_nodelay(true).map_err(io_err)?;
        tcp.set_read_timeout(Some(self.handshake)).map_err(io_err)?;
        tcp.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(io_err)?;
        let mut raw = tcp.try_clone().map_err(io_err)?;
        let deadline = Instant::now() + self.handshake;
        let late = || {
            (Instant::now() > deadline)
                .then(|| ConnectError::Io(format!("no handshake within {:?}", self.handshake)))
        };
        let mut frames = Frames::new(DEFAULT_MAX_PAYLOAD);
        let mut info = loop {
            if let Some(e) = late() {
                return Err(e);
            }
            match frames.next_frame().map_err(io_err)? {
                Some(Frame::Info(info)) => break info,
                Some(_) => {
                    return Err(ConnectError::Io(
                        "did not start with INFO; not a NATS server?".to_string(),
                    ))
                }
                None => {
                    if frames.fill(&mut raw).map_err(io_err)? == 0 {
                        return Err(ConnectError::Io("closed before INFO".into()));
                    }
                }
            }
        };
        let tls = if server.tls || info.tls_required || self.tls.forced() {
            if !(info.tls_required || info.tls_available) {
                return Err(ConnectError::Io(
                    "TLS is asked for (a tls:// URL, NATS_TLS_REQUIRED, NATS_CA_FILE or a client certificate) but the server does not offer it".to_string(),
                ));
            }
            Some(start_tls(server, &self.tls, &tcp, deadline)?)
        } else {
            None
        };
        let mut stream = Stream::new(tcp, tls);
        let connect = self.connect_line(server, &info)?;
        let mut hello = Vec::with_capacity(connect.len() + 16);
        hello.extend_from_slice(b"CONNECT ");
        hello.extend_from_slice(&connect);
        hello.extend_from_slice(b"\r\nPING\r\n");
        stream.write_all(&hello).map_err(io_err)?;
        let mut frames = Frames::new(info.max_payload());
        loop {
            if let Some(e) = late() {
                return Err(e);
            }
            match frames.next_frame().map_err(io_err)? {
                Some(Frame::Pong) => break,
                Some(Frame::Err(msg)) => return Err(ConnectError::Refused(msg)),
                Some(Frame::Ping) => stream.write_all(b"PONG\r\n").map_err(io_err)?,
                // nats-server sends a fresh INFO before its first PONG when the cluster's
                // addresses changed since it accepted the connection.
                Some(Frame::Info(fresh)) => info = fresh,
                Some(_) => {}
                None => {
                    if frames.fill(&mut stream).map_err(io_err)? == 0 {
                        return Err(ConnectError::Io(
                            "closed the connection after CONNECT".to_string(),
                        ));
                    }
                }
            }
        }
        stream
            .tcp
            .set_read_timeout(Some(READ_TICK))
            .map_err(io_err)?;
        let mut writer = stream.writer().map_err(io_err)?;
        writer.max_payload = info.max_payload();
        Ok(Connection {
            stream,
            frames,
            publisher: Publisher {
                out: Arc::new(Mutex::new(Some(writer))),
                failure: Arc::new(Mutex::new(None)),
            },
            info,
            via: server.clone(),
            last_read: Instant::now(),
            since: Instant::now(),
            made_from: [0; 32],
            pings_out: 0,
            subscribed: None,
        })
    }

    /// The CONNECT JSON for `server`.
    fn connect_line(&self, server: &Server, info: &Info) -> Result<Vec<u8>, ConnectError> {
        let mut jwt = None;
        let mut nkey = None;
        let mut sig = None;
        let mut auth_token = None;
        let file_token;
        match &self.login {
            Login::None => {}
            Login::Token(t) => auth_token = Some(t.as_str()),
            Login::TokenFile(path) => {
                file_token = read_token(path)?;
                auth_token = Some(file_token.as_str());
            }
            Login::CredsFile(path) => {
                let creds = read_creds(path)?;
                sig = Some(sign_nonce(&creds.key, info, path)?);
                jwt = Some(creds.jwt);
            }
            Login::SentinelAndToken(path, token) => {
                let creds = read_creds(path)?;
                sig = Some(sign_nonce(&creds.key, info, path)?);
                jwt = Some(creds.jwt);
                auth_token = Some(token.as_str());
            }
            Login::NkeySeedFile(path) => {
                let key = read_seed(path)?;
                sig = Some(sign_nonce(&key, info, path)?);
                nkey = Some(key.public_key());
            }
        }
        // `nats://token@host`: a user name without a password is a token.
        let (user, pass) = match (&server.user, &server.pass) {
            (Some(u), None) if auth_token.is_none() => {
                auth_token = Some(u.as_str());
                (None, None)
            }
            (u, p) => (u.as_deref(), p.as_deref()),
        };
        let connect = ConnectOptions {
            verbose: false,
            pedantic: false,
            tls_required: server.tls || info.tls_required || self.tls.forced(),
            name: &self.name,
            lang: "rust",
            version: env!("CARGO_PKG_VERSION"),
            protocol: 1,
            echo: false,
            headers: true,
            no_responders: true,
            user,
            pass,
            auth_token,
            jwt: jwt.as_deref(),
            nkey: nkey.as_deref(),
            sig: sig.as_deref(),
        };
        serde_json::to_vec(&connect).map_err(|e| ConnectError::Io(format!("CONNECT: {e}")))
    }
}

/// How long a read waits before [`Connection::next_event`] returns [`Event::Idle`].
const READ_TICK: Duration = Duration::from_millis(200);

#[derive(serde::Serialize)]
struct ConnectOptions<'a> {
    verbose: bool,
    pedantic: bool,
    tls_required: bool,
    name: &'a str,
    lang: &'a str,
    version: &'a str,
    protocol: u8,
    echo: bool,
    headers: bool,
    no_responders: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pass: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nkey: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sig: Option<&'a str>,
}

/// What the server says about itself (the fields used here).
#[derive(Deserialize, Default, Clone, Debug, PartialEq, Eq)]
struct Info {
    #[serde(default)]
    tls_required: bool,
    #[serde(default)]
    tls_available: bool,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    max_payload: i64,
    #[serde(default)]
    connect_urls: Vec<String>,
}

impl Info {
    /// The server's `max_payload`, within what nats-server can be configured to (64 MiB): the
    /// parser's buffer grows to at most about this much.
    fn max_payload(&self) -> usize {
        usize::try_from(self.max_payload)
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_MAX_PAYLOAD)
            .min(MAX_PAYLOAD_LIMIT)
    }
}

/// A user JWT and the key that signs the server's nonce.
struct Creds {
    jwt: String,
    key: nkeys::KeyPair,
}

/// Reads a creds file: the first armored block is the JWT, the second the seed.
fn read_creds(path: &Path) -> Result<Creds, ConnectError> {
    let fail = |why: &str| ConnectError::Creds {
        path: path.display().to_string(),
        why: why.to_string(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(&e.to_string()))?;
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line.starts_with("---") && line.contains("BEGIN") {
            if let Some(value) = lines.by_ref().find(|l| !l.is_empty()) {
                blocks.push(value);
            }
        }
    }
    let (Some(jwt), Some(seed)) = (blocks.first(), blocks.get(1)) else {
        return Err(fail("expected a JWT block and a seed block"));
    };
    if jwt.split('.').count() != 3 {
        return Err(fail("the first block is not a JWT"));
    }
    let key = nkeys::KeyPair::from_seed(seed)
        .map_err(|_| fail("the second block is not an nkey seed"))?;
    Ok(Creds {
        jwt: (*jwt).to_string(),
        key,
    })
}

/// The server's nonce signed by `key` (read from `path`), as CONNECT's `sig`.
fn sign_nonce(key: &nkeys::KeyPair, info: &Info, path: &Path) -> Result<String, ConnectError> {
    let nonce = info.nonce.as_deref().unwrap_or_default();
    let signed = key
        .sign(nonce.as_bytes())
        .map_err(|_| ConnectError::Creds {
            path: path.display().to_string(),
            why: "the seed cannot sign".into(),
        })?;
    Ok(URL_SAFE_NO_PAD.encode(signed))
}

/// Reads a token file (surrounding blanks ignored); an empty one is an error naming the file.
fn read_token(path: &Path) -> Result<String, ConnectError> {
    let fail = |why: &str| ConnectError::Creds {
        path: path.display().to_string(),
        why: why.to_string(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(&e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(fail("the token file is empty"));
    }
    Ok(token.to_string())
}

/// Reads a user nkey seed file (`SU…`, surrounding blanks ignored).
fn read_seed(path: &Path) -> Result<nkeys::KeyPair, ConnectError> {
    let fail = |why: &str| ConnectError::Creds {
        path: path.display().to_string(),
        why: why.to_string(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(&e.to_string()))?;
    let seed = text.trim();
    if !seed.starts_with("SU") {
        return Err(fail("not a user nkey seed (SU…)"));
    }
    nkeys::KeyPair::from_seed(seed).map_err(|_| fail("not a valid user nkey seed"))
}

/// Runs the TLS handshake over `tcp` (after the plaintext INFO, as NATS does).
fn start_tls(
    server: &Server,
    settings: &TlsSettings,
    tcp: &TcpStream,
    deadline: Instant,
) -> Result<Arc<Mutex<rustls::ClientConnection>>, ConnectError> {
    let fail = |why: String| ConnectError::Io(format!("TLS: {why}"));
    let config = settings.client_config().map_err(fail)?;
    let name = rustls::pki_types::ServerName::try_from(server.tls_name.clone())
        .map_err(|e| fail(e.to_string()))?;
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| fail(e.to_string()))?;
    let mut sock = tcp.try_clone().map_err(|e| fail(e.to_string()))?;
    while conn.is_handshaking() {
        if Instant::now() > deadline {
            return Err(fail("no handshake in time".to_string()));
        }
        conn.complete_io(&mut sock)
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(Arc::new(Mutex::new(conn)))
}

/// The socket, and the TLS session over it when there is one.
struct Stream {
    tcp: TcpStream,
    tls: Option<Arc<Mutex<rustls::ClientConnection>>>,
    /// Bytes read from the socket that the TLS session has not taken yet.
    raw: Vec<u8>,
}

impl Stream {
    fn new(tcp: TcpStream, tls: Option<Arc<Mutex<rustls::ClientConnection>>>) -> Stream {
        Stream {
            tcp,
            tls,
            raw: Vec::new(),
        }
    }

    fn writer(&self) -> io::Result<Writer> {
        Ok(Writer {
            tcp: self.tcp.try_clone()?,
            tls: self.tls.clone(),
            max_payload: usize::MAX,
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer()?.write_all(bytes)
    }
}

impl Read for Stream {
    /// Reads plaintext: straight from the socket, or the socket's bytes through the TLS session
    /// (its lock is held only to decrypt, never while waiting for the network).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            return self.tcp.read(buf);
        };
        loop {
            if !self.raw.is_empty() {
                let mut conn = tls.lock();
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                let taken = conn.read_tls(&mut &self.raw[..])?;
                if taken == 0 {
                    // Only an empty source gives 0; never let `raw` grow behind a stalled session.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the TLS session takes no more bytes",
                    ));
                }
                self.raw.drain(..taken);
                // TLS 1.3 finishes the client's handshake before the server has judged its
                // certificate: a refusal arrives here, as an alert, on the first read.
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")))?;
                // Whatever the session must send back (e.g. a key update) goes out now.
                while conn.wants_write() {
                    conn.write_tls(&mut self.tcp)?;
                }
                continue;
            }
            {
                let mut conn = tls.lock();
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.tcp.read(&mut chunk)?;
            if n == 0 {
                // Tell the session, so a clean close_notify and a cut connection are told apart.
                let mut conn = tls.lock();
                let _ = conn.read_tls(&mut io::empty());
                let _ = conn.process_new_packets();
                return conn.reader().read(buf);
            }
            self.raw.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The writing end of a connection.
struct Writer {
    tcp: TcpStream,
    tls: Option<Arc<Mutex<rustls::ClientConnection>>>,
    /// The server's `max_payload`: a larger message would make it close the connection.
    max_payload: usize,
}

impl Writer {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return self.tcp.write_all(bytes);
        };
        let mut conn = tls.lock();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = conn.writer().write(rest)?;
            rest = &rest[n..];
            while conn.wants_write() {
                conn.write_tls(&mut self.tcp)?;
            }
            if n == 0 && !conn.wants_write() {
                return Err(io::ErrorKind::WriteZero.into());
            }
        }
        Ok(())
    }
}

/// `PUB <subject> [<reply>] <len>` and the payload, as one frame.
fn pub_frame(subject: &str, reply: Option<&str>, payload: &[u8]) -> Vec<u8> {
    let reply_len = reply.map_or(0, |r| r.len() + 1);
    let mut frame = Vec::with_capacity(subject.len() + reply_len + payload.len() + 32);
    frame.extend_from_slice(b"PUB ");
    frame.extend_from_slice(subject.as_bytes());
    if let Some(reply) = reply {
        frame.push(b' ');
        frame.extend_from_slice(reply.as_bytes());
    }
    frame.push(b' ');
    frame.extend_from_slice(payload.len().to_string().as_bytes());
    frame.extend_from_slice(b"\r\n");
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\n");
    frame
}

/// Writes to the connection from any thread; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    out: Arc<Mutex<Option<Writer>>>,
    /// Why the last write failed (and took the connection down), for the reader to report.
    failure: Arc<Mutex<Option<String>>>,
}

impl Publisher {
    /// Publishes `payload` on `subject` at once (one write, no flush round trip). Fails when the
    /// connection is down; a write that fails or times out takes the connection down, and the
    /// reader then reconnects.
    pub fn publish(&self, subject: &str, payload: &[u8]) -> io::Result<()> {
        self.write_checked(&pub_frame(subject, None, payload), Some(payload.len()))
    }

    /// Publishes `payload` on `subject` with `reply` as the subject answers go to.
    pub fn request(&self, subject: &str, reply: &str, payload: &[u8]) -> io::Result<()> {
        self.write_checked(
            &pub_frame(subject, Some(reply), payload),
            Some(payload.len()),
        )
    }

    fn write(&self, frame: &[u8]) -> io::Result<()> {
        self.write_checked(frame, None)
    }

    /// Writes `frame`; a payload over the server's limit fails alone, before anything is sent
    /// (nats-server would close the connection and every answer in flight with it).
    fn write_checked(&self, frame: &[u8], payload: Option<usize>) -> io::Result<()> {
        let mut out = self.out.lock();
        let Some(w) = out.as_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "not connected to nats",
            ));
        };
        if let Some(len) = payload.filter(|&len| len > w.max_payload) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a message of {len} bytes is over the server's max_payload ({})",
                    w.max_payload
                ),
            ));
        }
        let res = w.write_all(frame);
        if let Err(e) = &res {
            *self.failure.lock() = Some(format!("a write failed: {e}"));
            let _ = w.tcp.shutdown(Shutdown::Both);
            *out = None;
        }
        res
    }

    /// Points this publisher at `other`'s socket in one step and returns the writer it had.
    fn swap(&self, other: &Publisher) -> Option<Writer> {
        let taken = other.out.lock().take();
        *self.failure.lock() = None;
        std::mem::replace(&mut *self.out.lock(), taken)
    }

    /// Why the last write failed, once.
    fn take_failure(&self) -> Option<String> {
        self.failure.lock().take()
    }

    /// Stops writing: later publishes fail until [`Publisher::replace`].
    fn detach(&self) {
        if let Some(w) = self.out.lock().take() {
            let _ = w.tcp.shutdown(Shutdown::Both);
        }
    }
}

/// A request the server delivered.
#[derive(Debug, PartialEq, Eq)]
pub struct Message {
    /// The subject it was published on.
    pub subject: String,
    /// Where the answer goes.
    pub reply: Option<String>,
    /// The `Nats-Server-Xkey` header, when the request is sealed.
    pub server_xkey: Option<String>,
    /// The body.
    pub payload: Vec<u8>,
}

/// What [`Connection::next_event`] saw.
#[derive(Debug)]
pub enum Event {
    /// A message of the subscription.
    Message(Message),
    /// Nothing within the read tick.
    Idle,
    /// The connection is gone (its cause, never a secret); reconnect.
    Lost(String),
}

/// One live connection; read by one thread, written through its [`Publisher`].
pub struct Connection {
    stream: Stream,
    frames: Frames,
    publisher: Publisher,
    info: Info,
    via: Server,
    last_read: Instant,
    /// When the current socket was established.
    since: Instant,
    /// [`Dialer::files_fingerprint`] of the files it was made from.
    made_from: [u8; 32],
    pings_out: u32,
    /// The subscription to restore after a reconnect: subject and queue group.
    subscribed: Option<(String, String)>,
}

impl Connection {
    /// A handle that writes on this connection (and, after [`Connection::take_over`], on the
    /// one that replaced it).
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// The fingerprint of the files the current socket was made from.
    pub fn made_from(&self) -> [u8; 32] {
        self.made_from
    }

    /// How long the current socket has been up.
    pub fn up_for(&self) -> Duration {
        self.since.elapsed()
    }

    /// The server connected to, without credentials.
    pub fn server(&self) -> String {
        self.via.to_string()
    }

    /// Subscribes to `subject` in `queue` (one subscription per connection).
    pub fn queue_subscribe(&mut self, subject: &str, queue: &str) -> io::Result<()> {
        self.publisher
            .write(format!("SUB {subject} {queue} {SID}\r\n").as_bytes())?;
        self.subscribed = Some((subject.to_string(), queue.to_string()));
        Ok(())
    }

    /// Subscribes to `subject`, outside any queue group (one subscription per connection; it
    /// is not renewed by [`Connection::take_over`]).
    pub fn subscribe(&mut self, subject: &str) -> io::Result<()> {
        self.publisher
            .write(format!("SUB {subject} {SID}\r\n").as_bytes())
    }

    /// Ends the subscription and returns the requests the server delivered before it took the
    /// UNSUB in (those already in the buffer or on the way), so they are answered rather than
    /// left to time out: UNSUB and a PING go out, and reading stops at its PONG or `within`.
    pub fn unsubscribe_and_drain(&mut self, within: Duration) -> Vec<Message> {
        self.subscribed = None;
        self.round_trip(&format!("UNSUB {SID}\r\n"), within).0
    }

    /// Writes `before` and a PING, and reads up to the PONG that answers it (or `within`):
    /// the server has then processed `before`. Returns the messages read meanwhile, and
    /// whether the PONG came.
    fn round_trip(&mut self, before: &str, within: Duration) -> (Vec<Message>, bool) {
        let mut left = Vec::new();
        if self
            .publisher
            .write(format!("{before}PING\r\n").as_bytes())
            .is_err()
        {
            return (left, false);
        }
        // PONGs owed to keepalive PINGs sent earlier come first.
        let mut pongs_before_ours = self.pings_out;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.frames.next_frame() {
                Ok(Some(Frame::Msg(m))) => left.push(m),
                Ok(Some(Frame::Pong)) if pongs_before_ours > 0 => pongs_before_ours -= 1,
                Ok(Some(Frame::Pong)) => {
                    self.pings_out = 0;
                    return (left, true);
                }
                Ok(Some(Frame::Ping)) => {
                    let _ = self.publisher.write(b"PONG\r\n");
                }
                Ok(Some(_)) => {}
                Err(_) => break,
                Ok(None) => match self.frames.fill(&mut self.stream) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => break,
                },
            }
        }
        (left, false)
    }

    /// Moves `fresh` (a new connection) under this one's publishers and restores the
    /// subscription on it; the old socket is closed.
    pub fn take_over(&mut self, fresh: Connection) -> io::Result<()> {
        if let Some(old) = self.publisher.swap(&fresh.publisher) {
            let _ = old.tcp.shutdown(Shutdown::Both);
        }
        self.adopt_socket(fresh);
        if let Some((subject, queue)) = self.subscribed.clone() {
            self.queue_subscribe(&subject, &queue)?;
        }
        Ok(())
    }

    /// Reads from `fresh`'s socket from now on (its publisher is dealt with by the caller).
    fn adopt_socket(&mut self, fresh: Connection) {
        self.stream = fresh.stream;
        self.frames = fresh.frames;
        self.info = fresh.info;
        self.via = fresh.via;
        self.last_read = Instant::now();
        self.since = Instant::now();
        self.made_from = fresh.made_from;
        self.pings_out = 0;
    }

    /// Moves this connection over to `fresh` without a gap: `fresh` joins the queue group
    /// first, then this one leaves it and hands over the requests delivered to it before it left
    /// (answered by the caller), and the publishers switch to `fresh`'s socket in one step.
    pub fn replace_with(&mut self, mut fresh: Connection) -> io::Result<Vec<Message>> {
        let mut left = Vec::new();
        if let Some((subject, queue)) = self.subscribed.clone() {
            fresh.queue_subscribe(&subject, &queue)?;
            // Only once nats-server has taken the SUB in (its PONG) does the old connection
            // leave the queue group: never a moment with no member of this replica in it.
            let (delivered, confirmed) = fresh.round_trip("", Duration::from_secs(2));
            left.extend(delivered);
            if !confirmed {
                // The old connection stays subscribed; the requests the new one had already
                // received are still answered through it (the caller gets them).
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the new connection did not confirm its subscription",
                ));
            }
        }
        left.extend(self.unsubscribe_and_drain(Duration::from_secs(1)));
        let old = self.publisher.swap(&fresh.publisher);
        self.subscribed = fresh.subscribed.take();
        self.adopt_socket(fresh);
        if let Some(w) = old {
            let _ = w.tcp.shutdown(Shutdown::Both);
        }
        Ok(left)
    }

    /// Closes the socket; publishes fail from now on.
    pub fn close(&mut self) {
        self.publisher.detach();
    }

    /// Waits up to the read tick for the next message, answering the server's PINGs and sending
    /// ours when it has been quiet.
    pub fn next_event(&mut self) -> Event {
        let mut control_frames = 0u32;
        loop {
            // A server that sends nothing but PING, +OK or INFO must not keep the caller from
            // checking for shutdown (or from pinging).
            control_frames += 1;
            if control_frames > 1024 {
                return self.idle();
            }
            match self.frames.next_frame() {
                Err(e) => return self.lost(format!("protocol error: {e}")),
                Ok(Some(frame)) => match frame {
                    Frame::Msg(m) => return Event::Message(m),
                    Frame::Ping => {
                        if let Err(e) = self.publisher.write(b"PONG\r\n") {
                            return self.lost(e.to_string());
                        }
                    }
                    Frame::Pong => self.pings_out = 0,
                    Frame::Ok => {}
                    Frame::Info(info) => self.info = info,
                    Frame::Err(msg) => {
                        // Fatal ones are followed by the server closing the socket.
                        log::warn!("nats server {} says: {msg}", self.via);
                    }
                },
                Ok(None) => match self.frames.fill(&mut self.stream) {
                    Ok(0) => return self.lost("closed by the server".into()),
                    Ok(_) => {
                        self.last_read = Instant::now();
                        self.pings_out = 0;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        return self.idle();
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return self.lost(e.to_string()),
                },
            }
        }
    }

    fn idle(&mut self) -> Event {
        if self.last_read.elapsed() < PING_INTERVAL * (self.pings_out + 1) {
            return Event::Idle;
        }
        if self.pings_out >= MAX_PINGS_OUT {
            return self.lost(format!(
                "no answer to {MAX_PINGS_OUT} PINGs in {:?}",
                self.last_read.elapsed()
            ));
        }
        self.pings_out += 1;
        match self.publisher.write(b"PING\r\n") {
            Ok(()) => Event::Idle,
            Err(e) => self.lost(e.to_string()),
        }
    }

    fn lost(&mut self, why: String) -> Event {
        // A failed write shuts the socket, and the read then ends too: report the write.
        let why = self.publisher.take_failure().unwrap_or(why);
        self.publisher.detach();
        Event::Lost(why)
    }
}

/// One protocol unit from the server.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Info(Info),
    Msg(Message),
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// The parser's buffer, enough for many requests at once.
const INITIAL_BUFFER: usize = 32 * 1024;

/// The server-to-client protocol parser over a buffer that grows only for a large message.
struct Frames {
    buf: Vec<u8>,
    /// The unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    max_payload: usize,
}

impl Frames {
    fn new(max_payload: usize) -> Frames {
        Frames {
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
            max_payload,
        }
    }

    /// Reads once from `src` into the buffer; returns what was read (0: end of stream).
    fn fill(&mut self, src: &mut impl Read) -> io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
            // Back to the usual size once a large message has been read.
            if self.buf.len() > 4 * INITIAL_BUFFER {
                self.buf.truncate(INITIAL_BUFFER);
                self.buf.shrink_to_fit();
            }
        } else if self.buf.len() - self.end < 4096 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.buf.len() - self.end < 4096 {
                // Bounded by next_frame, which refuses a frame over max_payload.
                let grown = (self.buf.len() * 2).max(self.end + 4096);
                self.buf.resize(grown, 0);
            }
        }
        let n = src.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// The next whole frame in the buffer, `None` when more bytes are needed.
    fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
        let pending = &self.buf[self.start..self.end];
        let Some(eol) = pending.windows(2).position(|w| w == b"\r\n") else {
            if pending.len() > MAX_CONTROL_LINE {
                return Err(bad("protocol line too long"));
            }
            return Ok(None);
        };
        let line = std::str::from_utf8(&pending[..eol]).map_err(|_| bad("line is not UTF-8"))?;
        let (op, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
        let rest = rest.trim();
        let frame = match op.to_ascii_uppercase().as_str() {
            "MSG" | "HMSG" => {
                let headers = op.eq_ignore_ascii_case("HMSG");
                let args: Vec<&str> = rest.split_ascii_whitespace().collect();
                let (reply, hdr_len, total) = match (headers, args.as_slice()) {
                    (false, [_, _, len]) => (None, 0, *len),
                    (false, [_, _, reply, len]) => (Some(*reply), 0, *len),
                    (true, [_, _, hdr, len]) => (None, parse_len(hdr)?, *len),
                    (true, [_, _, reply, hdr, len]) => (Some(*reply), parse_len(hdr)?, *len),
                    _ => return Err(bad("malformed MSG line")),
                };
                let total = parse_len(total)?;
                if total > self.max_payload + MAX_CONTROL_LINE || hdr_len > total {
                    return Err(bad("message larger than the server's max_payload"));
                }
                let body_start = eol + 2;
                if pending.len() < body_start + total + 2 {
                    return Ok(None);
                }
                let body = &pending[body_start..body_start + total];
                if &pending[body_start + total..body_start + total + 2] != b"\r\n" {
                    return Err(bad("message not followed by CRLF"));
                }
                let server_xkey = if hdr_len > 0 {
                    header_value(&body[..hdr_len], super::wire::SERVER_XKEY_HEADER)
                } else {
                    None
                };
                let msg = Message {
                    subject: args[0].to_string(),
                    reply: reply.map(str::to_string),
                    server_xkey,
                    payload: body[hdr_len..].to_vec(),
                };
                self.start += body_start + total + 2;
                return Ok(Some(Frame::Msg(msg)));
            }
            "PING" => Frame::Ping,
            "PONG" => Frame::Pong,
            "+OK" => Frame::Ok,
            "-ERR" => Frame::Err(
                rest.trim_matches('\'')
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(256)
                    .collect(),
            ),
            "INFO" => {
                let info: Info =
                    serde_json::from_str(rest).map_err(|e| bad(&format!("INFO: {e}")))?;
                self.max_payload = info.max_payload();
                Frame::Info(info)
            }
            _ => return Err(bad("unknown protocol operation")),
        };
        self.start += eol + 2;
        Ok(Some(frame))
    }
}

fn parse_len(s: &str) -> io::Result<usize> {
    s.parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad length in MSG line"))
}

/// The value of header `name` (case-insensitive) in a `NATS/1.0` header block.
fn header_value(block: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(block).ok()?;
    let mut lines = text.split("\r\n");
    if !lines.next()?.starts_with("NATS/1.0") {
        return None;
    }
    lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
}

/// A dialer of the fake server on 127.0.0.1:`port`, for tests.
#[cfg(test)]
fn local_dialer(port: u16) -> Dialer {
    Dialer::new(
        &format!("nats://127.0.0.1:{port}"),
        Login::None,
        TlsSettings::default(),
        "t",
    )
    .expect("a valid url")
}

/// Servers tried on the next reconnect, for tests.
#[cfg(test)]
fn server_list(d: &Dialer) -> Vec<String> {
    d.servers.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<Frame> {
        let mut f = Frames::new(1024);
        let mut out = Vec::new();
        for c in chunks {
            let mut src: &[u8] = c;
            f.fill(&mut src).unwrap();
            while let Some(frame) = f.next_frame().unwrap() {
                out.push(frame);
            }
        }
        out
    }

    #[test]
    fn frames_split_anywhere_parse_the_same() {
        let wire = b"INFO {\"max_payload\":2048,\"nonce\":\"abc\"}\r\nPING\r\nMSG $SYS.REQ.USER.AUTH 1 _INBOX.x 5\r\nhello\r\nHMSG s 1 r 42 44\r\nNATS/1.0\r\nnats-server-xkey:  XKEYVALUE\r\n\r\nhi\r\n+OK\r\n-ERR 'Permissions Violation'\r\nPONG\r\n";
        let whole = parse_all(&[wire]);
        assert_eq!(whole.len(), 7, "{whole:?}");
        assert_eq!(
            whole[2],
            Frame::Msg(Message {
                subject: "$SYS.REQ.USER.AUTH".into(),
                reply: Some("_INBOX.x".into()),
                server_xkey: None,
                payload: b"hello".to_vec()
            })
        );
        assert_eq!(
            whole[3],
            Frame::Msg(Message {
                subject: "s".into(),
                reply: Some("r".into()),
                server_xkey: Some("XKEYVALUE".into()),
                payload: b"hi".to_vec()
            })
        );
        assert_eq!(whole[5], Frame::Err("Permissions Violation".into()));
        for cut in 1..wire.len() {
            assert_eq!(
                parse_all(&[&wire[..cut], &wire[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(parse_all(&bytes), whole);
    }

    #[test]
    fn a_message_without_reply_and_a_zero_length_one_parse() {
        let frames = parse_all(&[b"MSG a 1 0\r\n\r\nMSG a 1 3\r\nabc\r\n"]);
        assert_eq!(frames.len(), 2);
        assert!(matches!(&frames[0], Frame::Msg(m) if m.reply.is_none() && m.payload.is_empty()));
    }

    #[test]
    fn malformed_or_oversized_input_is_a_protocol_error_not_a_panic() {
        for wire in [
            &b"MSG a 1 x\r\n"[..],
            b"MSG a\r\n",
            b"HMSG a 1 9 3\r\nabc\r\n",
            b"MSG a 1 99999999999\r\n",
            b"MSG a 1 3\r\nabcXY",
            b"INFO {not json\r\n",
            b"WHAT\r\n",
            b"\xff\xfe\r\n",
        ] {
            let mut f = Frames::new(1024);
            let mut src = wire;
            f.fill(&mut src).unwrap();
            assert!(
                f.next_frame().is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let mut f = Frames::new(1024);
        let long = vec![b'x'; 4 * MAX_CONTROL_LINE];
        let mut src = &long[..];
        let failed = loop {
            match f.next_frame() {
                Err(_) => break true,
                Ok(Some(_)) => break false,
                Ok(None) => {
                    if f.fill(&mut src).unwrap() == 0 {
                        break false;
                    }
                }
            }
        };
        assert!(failed, "a line without end is refused once over the limit");
        assert!(f.buf.len() <= 2 * MAX_CONTROL_LINE, "{}", f.buf.len());
    }

    #[test]
    fn urls_give_servers_with_their_logins_and_tls() {
        let d = Dialer::new(
            "nats://svc:S3cr%2Fet@a:4222, tls://tok@b, c:5222,nats://[::1]:7",
            Login::None,
            TlsSettings::default(),
            "t",
        )
        .unwrap();
        assert_eq!(
            server_list(&d),
            [
                "nats://a:4222",
                "tls://b:4222",
                "nats://c:5222",
                "nats://[::1]:7"
            ]
        );
        assert_eq!(d.servers[0].user.as_deref(), Some("svc"));
        assert_eq!(d.servers[0].pass.as_deref(), Some("S3cr/et"));
        assert_eq!(d.servers[1].user.as_deref(), Some("tok"));
        assert!(d.servers[1].pass.is_none());
        assert!(Dialer::new("http://a", Login::None, TlsSettings::default(), "t").is_err());
        assert!(Dialer::new(" , ", Login::None, TlsSettings::default(), "t").is_err());
    }

    #[test]
    fn connect_lines_carry_each_login_and_a_bare_user_is_a_token() {
        let info = Info::default();
        let d = Dialer::new(
            "nats://tok@a,nats://u:p@b",
            Login::None,
            TlsSettings::default(),
            "svc",
        )
        .unwrap();
        let line = |d: &Dialer, i: usize| -> serde_json::Value {
            serde_json::from_slice(&d.connect_line(&d.servers[i], &info).unwrap()).unwrap()
        };
        let v = line(&d, 0);
        assert_eq!(v["auth_token"], "tok");
        assert!(v.get("user").is_none());
        let v = line(&d, 1);
        assert_eq!(
            (v["user"].as_str(), v["pass"].as_str()),
            (Some("u"), Some("p"))
        );
        assert_eq!(v["echo"], false);
        assert_eq!(v["headers"], true);
        let d = Dialer::new(
            "nats://a",
            Login::Token("T".into()),
            TlsSettings::default(),
            "svc",
        )
        .unwrap();
        assert_eq!(line(&d, 0)["auth_token"], "T");
    }

    #[test]
    fn creds_sign_the_nonce_with_the_seed_and_send_the_jwt() {
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.creds");
        std::fs::write(
            &path,
            format!("-----BEGIN NATS USER JWT-----\naaa.bbb.ccc\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"),
        )
        .unwrap();
        let d = Dialer::new(
            "nats://a",
            Login::CredsFile(path.clone()),
            TlsSettings::default(),
            "svc",
        )
        .unwrap();
        let info = Info {
            nonce: Some("n0nce".into()),
            ..Info::default()
        };
        let v: serde_json::Value =
            serde_json::from_slice(&d.connect_line(&d.servers[0], &info).unwrap()).unwrap();
        assert_eq!(v["jwt"], "aaa.bbb.ccc");
        let sig = URL_SAFE_NO_PAD.decode(v["sig"].as_str().unwrap()).unwrap();
        user.verify(b"n0nce", &sig).unwrap();

        std::fs::write(&path, "-----BEGIN NATS USER JWT-----\naaa.bbb.ccc\n").unwrap();
        let err = d
            .connect_line(&d.servers[0], &info)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected a JWT block and a seed block"),
            "{err}"
        );
        std::fs::write(
            &path,
            "-----BEGIN X-----\naaa.bbb.ccc\n-----BEGIN Y-----\nSUNOTASEED\n",
        )
        .unwrap();
        let err = d
            .connect_line(&d.servers[0], &info)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not an nkey seed") && !err.contains("SUNOTASEED"),
            "{err}"
        );
    }

    #[test]
    fn announced_servers_join_the_list_once_with_the_announcers_login() {
        let mut d = Dialer::new(
            "tls://u:p@a:4222",
            Login::None,
            TlsSettings::default(),
            "svc",
        )
        .unwrap();
        let via = d.servers[0].clone();
        d.learn(
            &via,
            &[
                "10.0.0.2:4222".into(),
                "a:4222".into(),
                "10.0.0.2:4222".into(),
                "[fd00::1]:4223".into(),
            ],
        );
        assert_eq!(
            server_list(&d),
            [
                "tls://a:4222",
                "tls://10.0.0.2:4222",
                "tls://[fd00::1]:4223"
            ]
        );
        assert_eq!(d.servers[1].pass.as_deref(), Some("p"));
        let many: Vec<String> = (0..500)
            .map(|i| format!("10.1.{}.{}:4222", i / 250, i % 250))
            .collect();
        d.learn(&via, &many);
        assert!(d.servers.len() <= MAX_DISCOVERED + 16);
    }

    /// A one-connection fake server: sends `greeting`, then hands the socket to `script`.
    fn fake_server(
        greeting: &'static [u8],
        script: impl FnOnce(TcpStream) + Send + 'static,
    ) -> (String, std::thread::JoinHandle<()>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "nats://u:secret-pass@127.0.0.1:{}",
            l.local_addr().unwrap().port()
        );
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(greeting).unwrap();
            script(s);
        });
        (url, t)
    }

    fn read_line(s: &mut TcpStream) -> String {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if s.read(&mut b).unwrap() == 0 {
                break;
            }
            line.push(b[0]);
        }
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn a_clients_dialer_drops_the_url_logins_and_stops_at_the_first_refusal() {
        // Two servers: the first refuses, the second would take anyone. A client's dialer (the
        // self-check's) reports the first one's refusal rather than trying the second, and sends
        // its own token, not the URL's password.
        let accepting = |mut s: TcpStream| {
            let _ = read_line(&mut s);
            let _ = s.write_all(b"PONG\r\n");
        };
        let refusing = |mut s: TcpStream| {
            let connect = read_line(&mut s);
            assert!(!connect.contains("secret-pass"), "{connect}");
            assert!(
                connect.contains("\"auth_token\":\"client-token\""),
                "{connect}"
            );
            assert!(connect.contains("\"name\":\"check-1\""), "{connect}");
            let _ = s.write_all(b"-ERR 'Authorization Violation'\r\n");
        };
        let greeting: &'static [u8] = b"INFO {\"max_payload\":1024}\r\n";
        let (first, t1) = fake_server(greeting, refusing);
        let (second, t2) = fake_server(greeting, accepting);
        let service = Dialer::new(
            &format!("{first},{second}"),
            Login::None,
            TlsSettings::default(),
            "t",
        )
        .unwrap();
        let mut client = service.as_client(
            Login::Token("client-token".into()),
            "check-1",
            Duration::from_secs(5),
        );
        client.next = 0;
        let (server, err) = client.connect().err().expect("refused");
        t1.join().unwrap();
        assert!(matches!(&err, ConnectError::Refused(m) if m == "Authorization Violation"));
        assert_eq!(server, first.replace("u:secret-pass@", ""));
        // The second server was never dialled: its thread still waits for a connection.
        assert!(!t2.is_finished());
    }

    #[test]
    fn a_refused_login_is_reported_with_the_servers_words_and_no_secret() {
        let (url, t) = fake_server(b"INFO {\"max_payload\":1024}\r\n", |mut s| {
            let connect = read_line(&mut s);
            assert!(connect.starts_with("CONNECT {"), "{connect}");
            assert!(connect.contains("\"pass\":\"secret-pass\""), "{connect}");
            s.write_all(b"-ERR 'Authorization Violation'\r\n").unwrap();
        });
        let mut d = Dialer::new(&url, Login::None, TlsSettings::default(), "t").unwrap();
        let (server, err) = d.connect().err().unwrap();
        t.join().unwrap();
        assert!(matches!(&err, ConnectError::Refused(m) if m == "Authorization Violation"));
        assert!(!server.contains("secret") && !err.to_string().contains("secret"));
    }

    #[test]
    fn something_that_is_not_a_nats_server_is_refused() {
        let (url, t) = fake_server(b"HTTP/1.1 400 Bad Request\r\n\r\n", |_| {});
        let mut d = Dialer::new(&url, Login::None, TlsSettings::default(), "t").unwrap();
        let (_, err) = d.connect().err().unwrap();
        t.join().unwrap();
        assert!(
            err.to_string().contains("unknown protocol operation"),
            "{err}"
        );
    }

    #[test]
    fn a_connection_answers_pings_delivers_messages_resubscribes_and_reports_a_close() {
        let (url, t) = fake_server(b"INFO {\"max_payload\":1024}\r\n", |mut s| {
            assert!(read_line(&mut s).starts_with("CONNECT "));
            assert_eq!(read_line(&mut s), "PING\r\n");
            s.write_all(b"PONG\r\n").unwrap();
            assert_eq!(read_line(&mut s), "SUB subj q 1\r\n");
            s.write_all(b"PING\r\nMSG subj 1 reply.1 2\r\nhi\r\n")
                .unwrap();
            assert_eq!(read_line(&mut s), "PONG\r\n");
            assert_eq!(read_line(&mut s), "PUB reply.1 3\r\n");
            assert_eq!(read_line(&mut s), "yes\r\n");
            // Closing ends the connection; the client sees it.
        });
        let mut d = Dialer::new(&url, Login::None, TlsSettings::default(), "t").unwrap();
        let mut c = d.connect().map_err(|e| e.1.to_string()).unwrap();
        c.queue_subscribe("subj", "q").unwrap();
        let msg = loop {
            match c.next_event() {
                Event::Message(m) => break m,
                Event::Idle => {}
                Event::Lost(why) => panic!("{why}"),
            }
        };
        assert_eq!(msg.reply.as_deref(), Some("reply.1"));
        assert_eq!(msg.payload, b"hi");
        c.publisher().publish("reply.1", b"yes").unwrap();
        t.join().unwrap();
        let lost = loop {
            match c.next_event() {
                Event::Lost(why) => break why,
                Event::Idle => {}
                Event::Message(m) => panic!("{m:?}"),
            }
        };
        assert!(lost.contains("closed"), "{lost}");
        assert!(
            c.publisher().publish("reply.1", b"late").is_err(),
            "a lost connection takes no more answers"
        );
    }

    #[test]
    fn with_tls_required_nothing_is_sent_to_a_server_without_tls() {
        let (url, t) = fake_server(b"INFO {\"max_payload\":1024}\r\n", |mut s| {
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
            assert!(
                rest.is_empty(),
                "sent in clear: {:?}",
                String::from_utf8_lossy(&rest)
            );
        });
        let tls = TlsSettings {
            required: true,
            ..TlsSettings::default()
        };
        let mut d = Dialer::new(&url, Login::Token("tok".into()), tls, "t").unwrap();
        let (_, err) = d.connect().err().unwrap();
        t.join().unwrap();
        assert!(err.to_string().contains("does not offer it"), "{err}");
    }
}

#[cfg(test)]
mod hostile_server_tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

    /// A fake nats-server on 127.0.0.1: `script(connection index, socket)` per accepted socket.
    fn fake_server<F>(script: F) -> u16
    where
        F: Fn(usize, TcpStream) + Send + Sync + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let script = Arc::new(script);
        thread::spawn(move || {
            for (i, s) in l.incoming().enumerate() {
                let Ok(s) = s else { continue };
                let script = script.clone();
                thread::spawn(move || script(i, s));
            }
        });
        port
    }

    /// INFO, a PONG for each PING; every line received is reported with its connection index.
    fn well_behaved(i: usize, s: TcpStream, lines: &mpsc::Sender<(usize, String)>) {
        let mut w = s.try_clone().unwrap();
        w.write_all(b"INFO {\"max_payload\":1048576}\r\n").unwrap();
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { return };
            if line == "PING" {
                let _ = w.write_all(b"PONG\r\n");
            }
            let _ = lines.send((i, line));
        }
    }

    #[test]
    fn a_failed_resubscribe_is_retried_on_the_next_connection() {
        let (tx, rx) = mpsc::channel();
        let tx = parking_lot::Mutex::new(tx);
        let port = fake_server(move |i, s| {
            let tx = tx.lock().clone();
            well_behaved(i, s, &tx)
        });
        let mut d = local_dialer(port);
        let mut conn = d.connect().unwrap();
        conn.queue_subscribe("subj", "q").unwrap();
        // The new connection dies between its PONG and the SUB (its writer fails).
        let fresh = d.connect().unwrap();
        fresh.publisher().detach();
        assert!(conn.take_over(fresh).is_err());
        // service::reconnect() then dials again and takes the next one over.
        let fresh = d.connect().unwrap();
        conn.take_over(fresh).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut subs_on_third = 0;
        while let Ok((i, line)) =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if i == 2 && line.starts_with("SUB ") {
                subs_on_third += 1;
            }
        }
        assert_eq!(
            subs_on_third, 1,
            "the third connection must subscribe again"
        );
    }

    #[test]
    fn connect_timeout_bounds_the_whole_handshake() {
        // INFO dribbled one byte every 300 ms: each read is within CONNECT_TIMEOUT.
        let port = fake_server(|_, s| {
            let mut w = s.try_clone().unwrap();
            for b in b"INFO {                    }\r\n" {
                if w.write_all(&[*b]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(300));
            }
            for line in BufReader::new(s).lines() {
                let Ok(line) = line else { return };
                if line == "PING" {
                    let _ = w.write_all(b"PONG\r\n");
                }
            }
        });
        let mut d = local_dialer(port);
        let t0 = Instant::now();
        let res = d.connect();
        let took = t0.elapsed();
        assert!(
            took <= CONNECT_TIMEOUT + Duration::from_millis(500),
            "connect took {took:?} (ok: {})",
            res.is_ok()
        );
    }

    #[test]
    fn an_err_line_cannot_carry_a_line_break_into_the_log() {
        let mut f = Frames::new(1024);
        let mut src: &[u8] =
            b"-ERR 'x'\n[2026-01-01T00:00:00Z INFO  nats_k8s_oidc_callout] forged line\r\n";
        f.fill(&mut src).unwrap();
        match f.next_frame() {
            Ok(Some(Frame::Err(msg))) => assert!(!msg.contains('\n'), "{msg:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn servers_no_longer_announced_are_dropped_and_new_ones_learned() {
        let mut d =
            Dialer::new("nats://nats:4222", Login::None, TlsSettings::default(), "t").unwrap();
        let via = d.servers[0].clone();
        // The pods of earlier rollouts of a 3-node cluster...
        let old: Vec<String> = (0..100)
            .map(|i| format!("10.0.{}.{}:4222", i / 3, i % 3))
            .collect();
        d.learn(&via, &old);
        // ...and the pods now.
        let now = ["10.9.0.1:4222".to_string(), "10.9.0.2:4222".to_string()];
        d.learn(&via, &now);
        let list = server_list(&d);
        assert!(
            list.iter().any(|s| s.contains("10.9.0.1")) && list.len() <= 4,
            "{} servers, current pods learned: {}",
            list.len(),
            list.iter().any(|s| s.contains("10.9.0.1"))
        );
    }

    #[test]
    fn a_flood_of_control_lines_still_returns_to_the_caller() {
        // A server that only ever sends PING (or +OK/INFO): next_event never returns, so the
        // reader never checks `stop` and never reaches idle().
        let port = fake_server(|_, s| {
            let mut w = s.try_clone().unwrap();
            w.write_all(b"INFO {}\r\n").unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line.trim_end() == "PING" {
                    w.write_all(b"PONG\r\n").unwrap();
                    break;
                }
                line.clear();
            }
            thread::spawn(move || {
                let mut sink = [0u8; 4096];
                while r.get_mut().read(&mut sink).is_ok_and(|n| n > 0) {}
            });
            let flood = b"+OK\r\n".repeat(1000);
            while w.write_all(&flood).is_ok() {}
        });
        let mut d = local_dialer(port);
        let mut conn = d.connect().unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = conn.next_event();
            let _ = done_tx.send(());
        });
        assert!(
            done_rx.recv_timeout(Duration::from_secs(3)).is_ok(),
            "next_event did not return within 3 s"
        );
    }

    /// A server that answers the handshake with `after_connect` (before its PONG), then PONG,
    /// then runs `rest`.
    fn scripted(
        after_connect: &'static [u8],
        rest: impl Fn(TcpStream, BufReader<TcpStream>) + Send + Sync + 'static,
    ) -> u16 {
        fake_server(move |_, s| {
            let mut w = s.try_clone().unwrap();
            w.write_all(b"INFO {\"max_payload\":64}\r\n").unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line == "PING\r\n" {
                    w.write_all(after_connect).unwrap();
                    w.write_all(b"PONG\r\n").unwrap();
                    break;
                }
                line.clear();
            }
            rest(w, r);
        })
    }

    #[test]
    fn an_answer_over_max_payload_fails_alone_and_the_connection_stays() {
        let (tx, rx) = mpsc::channel();
        let tx = parking_lot::Mutex::new(tx);
        let port = scripted(b"", move |_, r| {
            for line in r.lines().map_while(Result::ok) {
                let _ = tx.lock().send(line);
            }
        });
        let mut d = local_dialer(port);
        let conn = d.connect().unwrap();
        let out = conn.publisher();
        let err = out.publish("r", &[b'x'; 65]).unwrap_err();
        assert!(err.to_string().contains("max_payload (64)"), "{err}");
        out.publish("r", b"ok").unwrap();
        let first = rx.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!(first, "PUB r 2", "nothing of the oversized answer was sent");
    }

    #[test]
    fn an_info_before_the_first_pong_is_taken_and_an_upgraded_url_keeps_tls_for_announced_servers()
    {
        let port = scripted(
            b"INFO {\"max_payload\":64,\"tls_required\":true,\"connect_urls\":[\"10.1.1.1:4222\"]}\r\n",
            |_, r| {
                for _ in r.lines() {}
            },
        );
        let mut d = local_dialer(port);
        let conn = d.connect().unwrap();
        assert_eq!(conn.info.connect_urls, ["10.1.1.1:4222"]);
        d.remember(&conn);
        let learnt = d.servers.iter().find(|s| s.host == "10.1.1.1").unwrap();
        assert!(
            learnt.tls,
            "the server requires TLS: so do those it announces"
        );
    }

    #[test]
    fn a_write_that_fails_is_the_reported_cause() {
        let port = scripted(b"", |_, r| for _ in r.lines() {});
        let mut d = local_dialer(port);
        let mut conn = d.connect().unwrap();
        // The write fails as it would on a dead socket.
        *conn.publisher.failure.lock() = Some("a write failed: broken pipe".into());
        conn.publisher().detach();
        match conn.next_event() {
            Event::Lost(why) => assert_eq!(why, "a write failed: broken pipe"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_sent_before_the_unsub_was_taken_in_are_drained() {
        let port = scripted(b"", |mut w, r| {
            for line in r.lines().map_while(Result::ok) {
                if line == "PING" {
                    // Two requests were on the way before the UNSUB arrived.
                    w.write_all(
                        b"MSG s 1 r1 1\r\na\r\nMSG s 1 r2 1\r\nb\r\nPONG\r\nMSG s 1 r3 1\r\nc\r\n",
                    )
                    .unwrap();
                }
            }
        });
        let mut d = local_dialer(port);
        let mut conn = d.connect().unwrap();
        conn.queue_subscribe("s", "q").unwrap();
        let left = conn.unsubscribe_and_drain(Duration::from_secs(2));
        let replies: Vec<_> = left.iter().filter_map(|m| m.reply.as_deref()).collect();
        assert_eq!(replies, ["r1", "r2"], "up to the PONG, nothing after");
    }

    #[test]
    fn the_read_buffer_shrinks_back_after_a_large_message() {
        let mut f = Frames::new(1 << 20);
        let mut big = b"MSG a 1 200000\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', 200_000));
        big.extend_from_slice(b"\r\n");
        let mut src = &big[..];
        let mut got = None;
        while got.is_none() {
            assert!(f.fill(&mut src).unwrap() > 0);
            got = f.next_frame().unwrap();
        }
        assert!(f.buf.len() >= 200_000);
        f.fill(&mut &b"PING\r\n"[..]).unwrap();
        assert_eq!(f.buf.len(), INITIAL_BUFFER);
        assert_eq!(f.next_frame().unwrap(), Some(Frame::Ping));
    }

    #[test]
    fn the_files_fingerprint_follows_every_file_and_a_token_file_is_read_at_connect() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&token, "t0k3n\n").unwrap();
        std::fs::write(&ca, "ca one").unwrap();
        let tls = TlsSettings {
            ca_file: Some(ca.clone()),
            ..TlsSettings::default()
        };
        let d = Dialer::new("nats://a", Login::TokenFile(token.clone()), tls, "t").unwrap();
        assert!(d.has_files());
        let first = d.files_fingerprint();
        assert_eq!(d.files_fingerprint(), first, "stable while nothing changes");
        std::fs::write(&ca, "ca two").unwrap();
        let second = d.files_fingerprint();
        assert_ne!(second, first);
        std::fs::write(&token, "other").unwrap();
        assert_ne!(d.files_fingerprint(), second);
        std::fs::remove_file(&token).unwrap();
        let gone = d.files_fingerprint();
        assert_ne!(gone, second, "a file that went away counts as a change");

        std::fs::write(&token, "  t0k3n \n").unwrap();
        let line: serde_json::Value =
            serde_json::from_slice(&d.connect_line(&d.servers[0], &Info::default()).unwrap())
                .unwrap();
        assert_eq!(line["auth_token"], "t0k3n");
        std::fs::write(&token, "\n").unwrap();
        let err = d.connect_line(&d.servers[0], &Info::default()).unwrap_err();
        assert!(err.to_string().contains("the token file is empty"), "{err}");
        let plain = Dialer::new(
            "nats://u:p@a",
            Login::Token("x".into()),
            TlsSettings::default(),
            "t",
        )
        .unwrap();
        assert!(!plain.has_files());
    }
}
