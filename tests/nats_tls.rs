//! The service's own NATS connection over TLS (src/callout/connection.rs): a real nats-server
//! that requires TLS of every client, certificates made here, the service trusting the CA
//! through `SSL_CERT_FILE` as its image does, and clients connecting over TLS with
//! service-account tokens.
//!
//! Covered: a `tls://` URL; a `nats://` URL to a server that requires TLS (upgraded, as NATS
//! clients do); a CA that did not sign the server's certificate (never subscribed, the cause
//! in the log, no password in it).

#![allow(deprecated)] // the tests' NATS client is the `nats` sync crate

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use support::nats::{AUTH_PASS, AUTH_USER};
use support::stack::{Stack, StackBuilder};

const READY: Duration = Duration::from_secs(15);

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it, as PEM files in
/// `dir`; returns (ca, cert, key) paths.
fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_pem = ca.self_signed(&ca_key).expect("self-sign").pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params");
    server
        .distinguished_name
        .push(DnType::CommonName, "nats-server");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().expect("server key");
    let cert = server.signed_by(&server_key, &issuer).expect("sign");
    let paths = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-server.pem")),
        dir.join(format!("{name}-server-key.pem")),
    );
    fs::write(&paths.0, ca_pem).unwrap();
    fs::write(&paths.1, cert.pem()).unwrap();
    fs::write(&paths.2, server_key.serialize_pem()).unwrap();
    paths
}

/// A stack whose nats-server requires TLS; the service connects with `url(port)` trusting `ca`.
fn tls_stack(dir: &Path, url: fn(u16) -> String) -> (Stack, PathBuf) {
    let (ca, cert, key) = certificates(dir, "good");
    let s = StackBuilder::new()
        .nats_tls(&cert, &key, url)
        .env("SSL_CERT_FILE", ca.to_str().unwrap())
        .start();
    (s, ca)
}

/// A client over TLS trusting `ca`, presenting `token`.
fn tls_client(url: &str, ca: &Path, token: &str) -> Result<nats::Connection, String> {
    nats::Options::with_token(token)
        .add_root_certificate(ca)
        .max_reconnects(1)
        .connect(url)
        .map_err(|e| e.to_string())
}

#[test]
fn over_a_tls_url_the_service_answers_and_clients_connect_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (s, ca) = tls_stack(dir.path(), |port| {
        format!("tls://{AUTH_USER}:{AUTH_PASS}@localhost:{port}")
    });
    let token = s.token("team-a", "app");
    let url = format!("tls://localhost:{}", s.nats.port);
    let c = tls_client(&url, &ca, &token)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", s.service.log(), s.nats.log()));
    c.publish("team-a.hello", b"x").unwrap();
    c.flush().unwrap();
    assert_eq!(s.service.decisions("allow", "granted"), 1.0);
    assert!(tls_client(&url, &ca, "not-a-token").is_err());
    assert!(
        s.nats.log().contains("TLS handshake complete"),
        "{}",
        s.nats.log()
    );
}

#[test]
fn a_plain_url_is_upgraded_when_the_server_requires_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (s, ca) = tls_stack(dir.path(), |port| {
        format!("nats://{AUTH_USER}:{AUTH_PASS}@localhost:{port}")
    });
    let token = s.token("team-a", "app");
    let url = format!("tls://localhost:{}", s.nats.port);
    tls_client(&url, &ca, &token)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", s.service.log(), s.nats.log()));
    assert_eq!(s.service.decisions("allow", "granted"), 1.0);
}

#[test]
fn a_ca_that_did_not_sign_the_servers_certificate_is_refused_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = tls_stack(dir.path(), |port| {
        format!("tls://{AUTH_USER}:{AUTH_PASS}@localhost:{port}")
    });
    let (other_ca, _, _) = certificates(dir.path(), "other");
    let replica = s
        .replica()
        .env(
            "NATS_URL",
            &format!("tls://{AUTH_USER}:{AUTH_PASS}@localhost:{}", s.nats.port),
        )
        .env("SSL_CERT_FILE", other_ca.to_str().unwrap())
        .spawn();
    replica.wait_for("a refused handshake", READY, || {
        replica
            .log()
            .contains("cannot connect to nats at tls://localhost:")
    });
    let log = replica.log();
    assert!(
        log.contains("TLS") && log.contains("UnknownIssuer"),
        "{log}"
    );
    assert!(!log.contains(AUTH_PASS), "{log}");
    let (status, body) = replica.get("/readyz").expect("the health port answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("nats_connected"), "{body}");
}
