//! The service's own NATS connection over TLS and its logins (src/callout/connection.rs): a
//! real nats-server that requires TLS of every client, certificates made here, and clients
//! connecting over TLS with service-account tokens.
//!
//! Covered: a `tls://` URL trusting the CA through `SSL_CERT_FILE` (as the image does) and
//! through `NATS_CA_FILE`; a `nats://` URL to a server that requires TLS (upgraded, as NATS
//! clients do); mutual TLS (`NATS_CLIENT_CERT_FILE`, `NATS_CLIENT_KEY_FILE`) and a server that
//! refuses the service without its certificate; a CA that did not sign the server's
//! certificate (never subscribed, the cause in the log, no password in it);
//! `NATS_TLS_REQUIRED` against a server without TLS; the service logging in with an nkey
//! (`NATS_NKEY_SEED_FILE`); a system CA bundle that appears after the first connect; the
//! server's CA rotated, the service's CA file swapped by the kubelet at each step.
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
use support::service::Service;
use support::stack::{Stack, StackBuilder};
use support::volume::SecretVolume;

const READY: Duration = Duration::from_secs(15);

/// PEM files made for one test: a CA, a server certificate for `localhost` and 127.0.0.1, and
/// a client certificate, both signed by the CA.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
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
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names).expect("params");
            params
                .distinguished_name
                .push(DnType::CommonName, format!("{name} {usage:?}"));
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &issuer).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let server = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = leaf(Vec::new(), ExtendedKeyUsagePurpose::ClientAuth);
        let write = |file: &str, text: &str| {
            let path = dir.join(format!("{name}-{file}"));
            fs::write(&path, text).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", &ca_pem),
            server_cert: write("server.pem", &server.0),
            server_key: write("server-key.pem", &server.1),
            client_cert: write("client.pem", &client.0),
            client_key: write("client-key.pem", &client.1),
        }
    }

    /// The nats-server's `tls { }` lines; `verify` asks every client for a certificate.
    fn server_block(&self, verify: bool) -> String {
        let mut block = format!(
            "  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 3\n",
            self.server_cert.display(),
            self.server_key.display()
        );
        if verify {
            block.push_str(&format!(
                "  ca_file: \"{}\"\n  verify: true\n",
                self.ca.display()
            ));
        }
        block
    }
}

fn tls_url(port: u16) -> String {
    format!("tls://{AUTH_USER}:{AUTH_PASS}@localhost:{port}")
}

fn plain_url(port: u16) -> String {
    format!("nats://{AUTH_USER}:{AUTH_PASS}@localhost:{port}")
}

/// A client over TLS trusting `pki`'s CA (presenting its client certificate when `mutual`),
/// with `token`.
fn tls_client(s: &Stack, pki: &Pki, mutual: bool, token: &str) -> Result<nats::Connection, String> {
    let mut opts = nats::Options::with_token(token)
        .add_root_certificate(&pki.ca)
        .max_reconnects(1);
    if mutual {
        opts = opts.client_cert(&pki.client_cert, &pki.client_key);
    }
    opts.connect(format!("tls://localhost:{}", s.nats.port))
        .map_err(|e| e.to_string())
}

/// A client over TLS is allowed with the namespace's token and refused without one.
fn assert_serves_tls_clients(s: &Stack, pki: &Pki, mutual: bool) {
    let token = s.token("team-a", "app");
    let c = tls_client(s, pki, mutual, &token)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", s.service.log(), s.nats.log()));
    c.publish("team-a.hello", b"x").unwrap();
    c.flush().unwrap();
    assert_eq!(s.service.decisions("allow", "granted"), 1.0);
    assert!(tls_client(s, pki, mutual, "not-a-token").is_err());
}

/// Waits until `service` has failed to connect at least once, and returns its log.
fn refused_log(service: &Service) -> String {
    service.wait_for("a refused connect", READY, || {
        service.log().contains("cannot connect to nats at ")
    });
    let log = service.log();
    let (status, body) = service.get("/readyz").expect("the health port answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("nats_connected"), "{body}");
    assert!(!log.contains(AUTH_PASS), "{log}");
    log
}

#[test]
fn over_a_tls_url_trusting_the_system_store_the_service_answers_tls_clients() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "good");
    let s = StackBuilder::new()
        .nats_tls(&pki.server_block(false))
        .service_nats_url(tls_url)
        .env("SSL_CERT_FILE", pki.ca.to_str().unwrap())
        .start();
    assert_serves_tls_clients(&s, &pki, false);
    assert!(
        s.nats.log().contains("TLS handshake complete"),
        "{}",
        s.nats.log()
    );
}

#[test]
fn a_plain_url_is_upgraded_when_the_server_requires_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "good");
    let s = StackBuilder::new()
        .nats_tls(&pki.server_block(false))
        .service_nats_url(plain_url)
        .env("NATS_CA_FILE", pki.ca.to_str().unwrap())
        .start();
    assert_serves_tls_clients(&s, &pki, false);
}

#[test]
fn mutual_tls_with_the_services_certificate_and_refused_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "good");
    let s = StackBuilder::new()
        .nats_tls(&pki.server_block(true))
        .service_nats_url(tls_url)
        .env("NATS_CA_FILE", pki.ca.to_str().unwrap())
        .env("NATS_CLIENT_CERT_FILE", pki.client_cert.to_str().unwrap())
        .env("NATS_CLIENT_KEY_FILE", pki.client_key.to_str().unwrap())
        .start();
    assert_serves_tls_clients(&s, &pki, true);

    // A replica without a client certificate: the server ends the handshake.
    let replica = s
        .replica()
        .env("NATS_URL", &tls_url(s.nats.port))
        .env("NATS_CA_FILE", pki.ca.to_str().unwrap())
        .spawn();
    let log = refused_log(&replica);
    assert!(
        log.contains("TLS: received fatal alert: CertificateRequired"),
        "{log}"
    );
}

#[test]
fn a_ca_that_did_not_sign_the_servers_certificate_is_refused_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "good");
    let other = Pki::new(dir.path(), "other");
    let s = StackBuilder::new()
        .nats_tls(&pki.server_block(false))
        .service_nats_url(tls_url)
        .env("NATS_CA_FILE", pki.ca.to_str().unwrap())
        .start();
    for (var, ca) in [("SSL_CERT_FILE", &other.ca), ("NATS_CA_FILE", &other.ca)] {
        let replica = s
            .replica()
            .env("NATS_URL", &tls_url(s.nats.port))
            .env(var, ca.to_str().unwrap())
            .spawn();
        let log = refused_log(&replica);
        assert!(
            log.contains("cannot connect to nats at tls://localhost:")
                && log.contains("TLS")
                && log.contains("UnknownIssuer"),
            "{var}: {log}"
        );
    }
}

#[test]
fn tls_required_refuses_a_server_without_tls() {
    let s = StackBuilder::new().start();
    let replica = s.replica().env("NATS_TLS_REQUIRED", "true").spawn();
    let log = refused_log(&replica);
    assert!(log.contains("but the server does not offer it"), "{log}");
}

#[test]
fn the_service_logs_in_with_an_nkey() {
    let user = nkeys::KeyPair::new_user();
    let public = user.public_key();
    let dir = tempfile::tempdir().unwrap();
    let seed_path = dir.path().join("callout.nk");
    fs::write(&seed_path, format!("{}\n", user.seed().unwrap())).unwrap();
    let s = StackBuilder::new()
        .nats_config(move |config| {
            config
                .replace(
                    &format!("{{ user: \"{AUTH_USER}\", password: \"{AUTH_PASS}\" }}"),
                    &format!("{{ nkey: \"{public}\" }}"),
                )
                .replace(
                    &format!("auth_users: [ \"{AUTH_USER}\""),
                    &format!("auth_users: [ \"{public}\""),
                )
        })
        .service_nats_url(|port| format!("nats://127.0.0.1:{port}"))
        .env("NATS_NKEY_SEED_FILE", seed_path.to_str().unwrap())
        .start();
    let token = s.token("team-a", "app");
    support::client::connect_token(&s.url(), &token)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", s.service.log(), s.nats.log()));
    assert_eq!(s.service.decisions("allow", "granted"), 1.0);
    let seed = user.seed().unwrap();
    assert!(!s.service.log().contains(&seed));
}

#[test]
fn a_system_store_missing_at_the_first_connect_is_read_again_at_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "good");
    let s = StackBuilder::new()
        .nats_tls(&pki.server_block(false))
        .service_nats_url(tls_url)
        .env("NATS_CA_FILE", pki.ca.to_str().unwrap())
        .start();
    // A replica whose CA bundle is not there yet (a volume mounted late).
    let late = dir.path().join("late-ca.pem");
    let replica = s
        .replica()
        .env("NATS_URL", &tls_url(s.nats.port))
        .env("SSL_CERT_FILE", late.to_str().unwrap())
        .env(
            "SSL_CERT_DIR",
            dir.path().join("no-such-dir").to_str().unwrap(),
        )
        .spawn();
    let log = refused_log(&replica);
    assert!(log.contains("no trusted CA certificate found"), "{log}");
    fs::copy(&pki.ca, &late).unwrap();
    replica.wait_ready(READY);
}

#[test]
fn the_servers_ca_is_rotated_through_the_services_swapped_ca_file_without_a_gap() {
    // The service reads its CA from a Secret volume, as the chart mounts it. The server moves
    // from the old CA's certificate to the new one's in three steps, each without a restart:
    // the service trusts both, the server switches, the service trusts only the new one.
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Pki::new(dir.path(), "old"), Pki::new(dir.path(), "new"));
    let pem = |p: &Path| fs::read_to_string(p).unwrap();
    let mut volume =
        SecretVolume::create(&dir.path().join("nats-tls"), &[("ca.crt", &pem(&old.ca))]);
    let ca_file = volume.path("ca.crt");
    let s = StackBuilder::new()
        .nats_tls(&old.server_block(false))
        .service_nats_url(tls_url)
        .env("NATS_CA_FILE", ca_file.to_str().unwrap())
        .start();
    assert_serves_tls_clients(&s, &old, false);
    let reloads = |result: &str| {
        s.service.metric(&format!(
            "nats_callout_nats_file_reloads_total{{result=\"{result}\"}}"
        ))
    };
    let swapped = |n: f64| {
        s.service
            .wait_for("a connection with the swapped CA file", READY, || {
                reloads("success") + reloads("failure") >= n
            });
    };

    // 1. Both CAs: a new connection, to the same server certificate.
    volume.update(&[("ca.crt", &format!("{}{}", pem(&old.ca), pem(&new.ca)))]);
    swapped(1.0);
    assert_eq!(
        (reloads("success"), reloads("failure")),
        (1.0, 0.0),
        "{}",
        s.service.log()
    );

    // 2. The server takes the new CA's certificate (TLS settings reload without a restart).
    let config = s
        .nats
        .config_text()
        .replace(&old.server_block(false), &new.server_block(false));
    s.nats.reload(&config);
    let token = s.token("team-a", "app");
    tls_client(&s, &new, false, &token)
        .unwrap_or_else(|e| panic!("after the server's switch: {e}\n{}", s.service.log()));

    // 3. Only the new CA: the service connects again with it, which proves the server's new
    // certificate is checked against the swapped file, not against what was read at start.
    volume.update(&[("ca.crt", &pem(&new.ca))]);
    swapped(2.0);
    assert_eq!(
        (reloads("success"), reloads("failure")),
        (2.0, 0.0),
        "{}",
        s.service.log()
    );
    tls_client(&s, &new, false, &token).expect("answered on the connection made with the new CA");

    // 4. A CA that did not sign the server's certificate: refused and counted; the connection
    // made with the new CA stays and keeps answering.
    let stranger = Pki::new(dir.path(), "stranger");
    volume.update(&[("ca.crt", &pem(&stranger.ca))]);
    swapped(3.0);
    assert_eq!(reloads("failure"), 1.0, "{}", s.service.log());
    assert!(
        s.service.log().contains("with the changed files")
            && s.service.log().contains("the current connection stays"),
        "{}",
        s.service.log()
    );
    tls_client(&s, &new, false, &token).expect("the current connection still answers");
    assert_eq!(s.service.metric("nats_callout_nats_disconnects_total"), 0.0);
}
