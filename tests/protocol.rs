//! The auth callout protocol against a real nats-server, without the service: requests the server
//! produces decode and verify with the service's decoder (plain and sealed), and the server's
//! reaction to answers built by the service's signer.
#![allow(deprecated)]

mod support;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nats_k8s_oidc_callout::callout::request::{RequestDecoder, RequestError};
use nats_k8s_oidc_callout::callout::response::{seal_if_needed, Grant, ResponseSigner};
use nats_k8s_oidc_callout::callout::wire::{AUTH_REQUEST_SUBJECT, SERVER_XKEY_HEADER};
use nats_k8s_oidc_callout::policy::Permissions;
use support::client::{connect_token, is_authorization_violation};
use support::nats::{CalloutKeys, NatsServer, CLIENT_ACCOUNT};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn perms(subject: &str) -> Permissions {
    Permissions {
        pub_allow: vec![subject.to_string()],
        pub_deny: vec![],
        sub_allow: vec![subject.to_string()],
        sub_deny: vec![],
        resp_max: 1,
    }
}

/// Answers every callout request on `server` with `answer(payload, xkey header)`, in a thread.
fn responder(
    server: &NatsServer,
    answer: impl Fn(&[u8], Option<&str>) -> Option<Vec<u8>> + Send + 'static,
) -> nats::Connection {
    let nc = nats::connect(server.service_url().as_str()).expect("service user connects");
    let sub = nc.subscribe(AUTH_REQUEST_SUBJECT).expect("subscribe");
    nc.flush().unwrap();
    thread::spawn(move || {
        for msg in sub.iter() {
            let header = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(SERVER_XKEY_HEADER))
                .cloned();
            if let Some(reply) = answer(&msg.data, header.as_deref()) {
                let _ = msg.respond(reply);
            }
        }
    });
    nc
}

fn answer_with(
    keys: &CalloutKeys,
    allow: bool,
) -> impl Fn(&[u8], Option<&str>) -> Option<Vec<u8>> + Send + 'static {
    let decoder = RequestDecoder::new(keys.xkey.clone());
    let signer = Arc::new(ResponseSigner::new(
        keys.account.clone(),
        CLIENT_ACCOUNT.to_string(),
    ));
    move |payload, header| {
        let req = decoder
            .decode(payload, header, now())
            .expect("a real server request decodes");
        assert_eq!(req.connect.bearer_token(), Some("the-token"));
        assert!(req.user_nkey.starts_with('U'));
        assert!(req.server.id.starts_with('N'));
        let p = perms("probe.>");
        let grant = Grant {
            name: "probe".into(),
            expires_at: now() + 60,
            account: None,
            permissions: &p,
        };
        let body = if allow {
            signer.allow(&req, &grant, now())
        } else {
            signer.deny(&req, "probe", now())
        }
        .unwrap();
        Some(seal_if_needed(body, &req, decoder.xkey()).unwrap())
    }
}

#[test]
fn a_plain_request_from_a_real_server_decodes_and_an_allow_is_honoured() {
    let keys = CalloutKeys::new(false);
    let server = NatsServer::start(&keys);
    let _r = responder(&server, answer_with(&keys, true));
    let c = connect_token(&server.url(), "the-token").expect("allowed by our answer");
    assert!(c.round_trip("probe.x"));
    assert!(
        !c.can_publish("other"),
        "the permissions of our user JWT are enforced"
    );
}

#[test]
fn a_sealed_request_from_a_real_server_opens_and_a_sealed_denial_is_honoured() {
    let keys = CalloutKeys::new(true);
    let server = NatsServer::start(&keys);
    let _r = responder(&server, answer_with(&keys, false));
    let e = connect_token(&server.url(), "the-token")
        .err()
        .expect("denied");
    assert!(is_authorization_violation(&e), "{e}");
}

#[test]
fn a_plain_request_is_refused_when_the_service_expects_sealed_ones() {
    let keys = CalloutKeys::new(false);
    let server = NatsServer::start(&keys);
    let (tx, rx) = crossbeam_channel::unbounded();
    let decoder = RequestDecoder::new(Some(nkeys::XKey::new()));
    let _r = responder(&server, move |payload, header| {
        let _ = tx.send(decoder.decode(payload, header, now()).err());
        Some(Vec::new())
    });
    let e = connect_token(&server.url(), "the-token")
        .err()
        .expect("an empty answer denies");
    assert!(is_authorization_violation(&e));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(2)).unwrap(),
        Some(RequestError::NotSealed)
    );
}

#[test]
fn an_answer_signed_by_another_account_is_ignored_by_the_server() {
    let keys = CalloutKeys::new(false);
    let server = NatsServer::start(&keys);
    let impostor = CalloutKeys::new(false);
    let decoder = RequestDecoder::new(None);
    let signer = ResponseSigner::new(impostor.account, CLIENT_ACCOUNT.to_string());
    let _r = responder(&server, move |payload, header| {
        let req = decoder.decode(payload, header, now()).unwrap();
        let p = perms(">");
        let grant = Grant {
            name: "x".into(),
            expires_at: now() + 60,
            account: None,
            permissions: &p,
        };
        Some(signer.allow(&req, &grant, now()).unwrap().into_bytes())
    });
    let e = connect_token(&server.url(), "the-token")
        .err()
        .expect("a foreign signature grants nothing");
    assert!(is_authorization_violation(&e), "{e}");
}
