//! TLS for the emulator: freshly generated certificate authorities, a server certificate for
//! `127.0.0.1` / `localhost` / `::1`, optional client certificates, and [`Conn`], the one stream
//! type the connection threads read requests from and write answers to, plain or TLS.
//!
//! Every emulator gets its own CAs, with a unique subject name each, so one emulator's CA (or
//! client certificate) is a convenient "wrong" one for another, refused as `UnknownIssuer`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};

use super::super::tokens::random_uuid;

/// How long a client gets to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the emulator asks clients for a certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate is asked for (bearer tokens only).
    #[default]
    None,
    /// A certificate is asked for; a client without one still connects and is then anonymous
    /// unless it sends a token.
    Optional,
    /// A handshake without a certificate signed by the emulator's client CA fails.
    Required,
}

/// TLS settings of an emulator: see [`KubeEmulatorBuilder::tls`](super::KubeEmulatorBuilder::tls).
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    client_auth: ClientAuth,
}

impl TlsOptions {
    /// HTTPS with a server certificate only; clients authenticate with bearer tokens.
    pub fn new() -> Self {
        TlsOptions::default()
    }

    /// Clients must present a certificate signed by the emulator's client CA; one that does is
    /// authenticated by it, as by the apiserver's x509 authenticator, with or without a token.
    pub fn require_client_cert(mut self) -> Self {
        self.client_auth = ClientAuth::Required;
        self
    }

    /// Clients may present a certificate signed by the emulator's client CA (which then
    /// authenticates them); clients without one fall back to bearer tokens.
    pub fn accept_client_cert(mut self) -> Self {
        self.client_auth = ClientAuth::Optional;
        self
    }

    /// What is asked of clients.
    pub fn client_auth(&self) -> ClientAuth {
        self.client_auth
    }
}

/// The generated certificates and keys of one emulator, all PEM.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    /// The CA that signed the server certificate: what a client must trust
    /// (`certificate-authority-data` of a kubeconfig, `ca.crt` in a pod).
    pub ca_pem: String,
    /// The server certificate (SANs `127.0.0.1`, `localhost`, `::1`).
    pub server_cert_pem: String,
    /// The CA client certificates must chain to, when client certificates are asked for.
    pub client_ca_pem: Option<String>,
    /// A client certificate signed by the client CA (CN `kube-emulator-client`).
    pub client_cert_pem: Option<String>,
    /// The PKCS#8 key of [`TlsMaterial::client_cert_pem`].
    pub client_key_pem: Option<String>,
}

/// Generates the CAs and certificates and builds the server configuration.
pub(super) fn generate(options: &TlsOptions) -> (Arc<ServerConfig>, TlsMaterial) {
    let id = &random_uuid()[..8];
    let (ca, ca_pem) = new_ca(&format!("kube-emulator-ca-{id}"));
    let mut server_params = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "::1".to_string(),
    ])
    .expect("server certificate names");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    server_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().expect("server key");
    let server_cert = server_params
        .signed_by(&server_key, &ca)
        .expect("sign the server certificate");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("TLS versions");
    let mut material = TlsMaterial {
        ca_pem,
        server_cert_pem: server_cert.pem(),
        client_ca_pem: None,
        client_cert_pem: None,
        client_key_pem: None,
    };
    let builder = match options.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        mode => {
            let (client_ca, client_ca_pem) = new_ca(&format!("kube-emulator-client-ca-{id}"));
            let mut params =
                CertificateParams::new(Vec::<String>::new()).expect("client certificate params");
            params
                .distinguished_name
                .push(DnType::CommonName, "kube-emulator-client");
            params
                .distinguished_name
                .push(DnType::OrganizationName, "system:masters");
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let client_key = KeyPair::generate().expect("client key");
            let client_cert = params
                .signed_by(&client_key, &client_ca)
                .expect("sign the client certificate");
            let mut roots = RootCertStore::empty();
            let client_ca_der = rustls_pem_certificate(&client_ca_pem);
            roots.add(client_ca_der).expect("client CA as a root");
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = if mode == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            material.client_ca_pem = Some(client_ca_pem);
            material.client_cert_pem = Some(client_cert.pem());
            material.client_key_pem = Some(client_key.serialize_pem());
            builder.with_client_cert_verifier(verifier.build().expect("client verifier"))
        }
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let config = builder
        .with_single_cert(vec![server_cert.der().clone()], key)
        .expect("server certificate and key");
    (Arc::new(config), material)
}

/// A self-signed CA able to sign certificates, and its certificate as PEM.
fn new_ca(common_name: &str) -> (Issuer<'static, KeyPair>, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("self-sign the CA");
    (Issuer::new(params, key), cert.pem())
}

/// The DER of the one certificate in `pem`.
fn rustls_pem_certificate(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
}

/// What a TLS handshake established.
pub(super) struct Handshake {
    /// Whether the client presented a certificate (verified against the client CA).
    pub(super) client_certificate: bool,
}

/// One accepted connection, plain or TLS: requests are read and answers written through it.
pub(super) enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Conn {
    /// Completes a TLS handshake on `tcp` (bounded by [`HANDSHAKE_TIMEOUT`]).
    pub(super) fn accept_tls(
        config: &Arc<ServerConfig>,
        mut tcp: TcpStream,
    ) -> Result<(Conn, Handshake), String> {
        let mut server = ServerConnection::new(Arc::clone(config)).map_err(|e| e.to_string())?;
        let _ = tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
        while server.is_handshaking() {
            if let Err(e) = server.complete_io(&mut tcp) {
                let _ = tcp.shutdown(Shutdown::Both);
                return Err(e.to_string());
            }
        }
        // Session tickets and the like, queued once the handshake is done.
        while server.wants_write() {
            if server.write_tls(&mut tcp).is_err() {
                break;
            }
        }
        let handshake = Handshake {
            client_certificate: server.peer_certificates().is_some_and(|c| !c.is_empty()),
        };
        Ok((
            Conn::Tls(Box::new(StreamOwned::new(server, tcp))),
            handshake,
        ))
    }

    /// The TCP connection underneath.
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }

    /// Cuts the connection at once: no TLS close_notify, no terminating chunk. Pending reads
    /// and writes of both sides fail.
    pub(super) fn abort(&self) {
        let _ = self.tcp().shutdown(Shutdown::Both);
    }

    /// Closes the connection in order: TLS close_notify first, as Go's server does on Close.
    pub(super) fn close(&mut self) {
        if let Conn::Tls(s) = self {
            s.conn.send_close_notify();
            while s.conn.wants_write() {
                if s.conn.write_tls(&mut s.sock).is_err() {
                    break;
                }
            }
        }
        self.abort();
    }

    /// Whether the peer still has the connection open, without blocking: for TLS, a
    /// close_notify counts as closed; data the client sent stays buffered for the next read.
    pub(super) fn peer_connected(&mut self) -> bool {
        if self.tcp().set_nonblocking(true).is_err() {
            return false;
        }
        let alive = match self {
            Conn::Plain(s) => {
                let mut probe = [0u8; 1];
                match s.peek(&mut probe) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) => e.kind() == io::ErrorKind::WouldBlock,
                }
            }
            Conn::Tls(s) => {
                // rustls does not read on while plaintext is buffered or after close_notify.
                let gone = s.conn.wants_read()
                    && match s.conn.read_tls(&mut s.sock) {
                        Ok(0) => true,
                        Ok(_) => false,
                        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                    };
                !gone
                    && s.conn
                        .process_new_packets()
                        .is_ok_and(|state| !state.peer_has_closed())
            }
        };
        let _ = self.tcp().set_nonblocking(false);
        alive
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}
