//! Tests of the test support itself: the Kubernetes API emulator behaves like a real API server
//! (kubernetes-facts.md §4, §7) and tokens minted by `support::tokens` verify against the key set
//! it serves. The client is `ureq`, as in the service; a real `kubectl` is one too.
//! The same behaviours hold over TLS (`KubeEmulatorBuilder::tls`), checked at the end.

mod support;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use support::kube::{KubeEmulator, KubeEmulatorBuilder, RequestKind, TlsOptions};
use support::kubeconfig::{
    kubeconfig, kubectl as kubectl_command, require_kubectl, write_kubeconfig,
};
use support::tokens::{self, SigningKey, TokenBuilder};

/// A client that returns 4xx/5xx as responses, with a bound on every call.
fn agent() -> ureq::Agent {
    agent_with(ureq::tls::TlsConfig::default())
}

fn agent_with(tls: ureq::tls::TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .tls_config(tls)
        .build()
        .into()
}

fn pem_certs(pem: &str) -> Vec<ureq::tls::Certificate<'static>> {
    ureq::tls::parse_pem(pem.as_bytes())
        .filter_map(|item| match item.expect("valid PEM") {
            ureq::tls::PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// A TLS client trusting `ca_pem`, presenting `identity` (certificate and key PEM) if given.
fn tls_agent(ca_pem: &str, identity: Option<(&str, &str)>) -> ureq::Agent {
    let mut tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&pem_certs(ca_pem)));
    if let Some((cert, key)) = identity {
        let key = ureq::tls::parse_pem(key.as_bytes())
            .find_map(|item| match item.expect("valid PEM") {
                ureq::tls::PemItem::PrivateKey(k) => Some(k),
                _ => None,
            })
            .expect("a private key");
        tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(
            &pem_certs(cert),
            key,
        )));
    }
    agent_with(tls.build())
}

/// The client for `emu`: plain, or trusting its CA and presenting its client certificate when
/// it has one.
fn agent_for(emu: &KubeEmulator) -> ureq::Agent {
    match emu.tls() {
        None => agent(),
        Some(tls) => tls_agent(
            &tls.ca_pem,
            tls.client_cert_pem
                .as_deref()
                .zip(tls.client_key_pem.as_deref()),
        ),
    }
}

/// A response reduced to what the tests look at.
struct Answer {
    status: u16,
    content_type: String,
    cache_control: String,
    retry_after: Option<String>,
    body: Value,
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// GET `path` with the emulator's current token.
fn get(emu: &KubeEmulator, path: &str) -> Answer {
    get_with(emu, path, Some(&emu.token()))
}

fn get_with(emu: &KubeEmulator, path: &str, token: Option<&str>) -> Answer {
    let mut request = agent_for(emu).get(format!("{}{path}", emu.url()));
    if let Some(t) = token {
        request = request.header("Authorization", format!("Bearer {t}"));
    }
    Answer::read(request.call().expect("request reaches the emulator"))
}

/// GET `path` with the emulator's token and this `Accept` header.
fn get_accept(emu: &KubeEmulator, path: &str, accept: &str) -> Answer {
    let request = agent_for(emu)
        .get(format!("{}{path}", emu.url()))
        .header("Authorization", format!("Bearer {}", emu.token()))
        .header("Accept", accept);
    Answer::read(request.call().expect("request reaches the emulator"))
}

/// What client-go's metadata client sends for a list, and for a watch or one object.
const METADATA_LIST: &str =
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json";
const METADATA: &str =
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";

/// POSTs `body` to `path` as JSON, with `token` as the bearer if given.
fn post(emu: &KubeEmulator, path: &str, body: &str, token: Option<&str>) -> Answer {
    let mut request = agent_for(emu)
        .post(format!("{}{path}", emu.url()))
        .header("Content-Type", "application/json");
    if let Some(t) = token {
        request = request.header("Authorization", format!("Bearer {t}"));
    }
    Answer::read(request.send(body).expect("request reaches the emulator"))
}

impl Answer {
    fn read(mut resp: ureq::http::Response<ureq::Body>) -> Answer {
        Answer {
            status: resp.status().as_u16(),
            content_type: header(&resp, "content-type").unwrap_or_default(),
            cache_control: header(&resp, "cache-control").unwrap_or_default(),
            retry_after: header(&resp, "retry-after"),
            body: serde_json::from_str(&resp.body_mut().read_to_string().expect("a body"))
                .expect("a JSON body"),
        }
    }
}

/// An open watch stream, read event by event.
struct Watch {
    lines: BufReader<ureq::BodyReader<'static>>,
    opened: Instant,
}

impl Watch {
    fn open(emu: &KubeEmulator, path: &str) -> Watch {
        Watch::open_accept(emu, path, "application/json")
    }

    fn open_accept(emu: &KubeEmulator, path: &str, accept: &str) -> Watch {
        let resp = agent_for(emu)
            .get(format!("{}{path}", emu.url()))
            .header("Authorization", format!("Bearer {}", emu.token()))
            .header("Accept", accept)
            .call()
            .expect("watch request");
        assert_eq!(resp.status().as_u16(), 200, "watch status");
        assert_eq!(
            header(&resp, "content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            header(&resp, "transfer-encoding").as_deref(),
            Some("chunked")
        );
        Watch {
            lines: BufReader::new(resp.into_body().into_reader()),
            opened: Instant::now(),
        }
    }

    /// The next event; `Ok(None)` when the server ended the stream cleanly.
    fn next(&mut self) -> std::io::Result<Option<Value>> {
        let mut line = String::new();
        if self.lines.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(
            serde_json::from_str(&line).expect("one JSON event per line"),
        ))
    }

    /// Every remaining event up to the clean end of the stream.
    fn rest(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        while let Some(e) = self.next().expect("stream ends cleanly") {
            events.push(e);
        }
        events
    }
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["type"].as_str().unwrap_or("?"),
                e["object"]["metadata"]["name"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

fn item_names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().expect("name").to_string())
        .collect()
}

fn assert_status(answer: &Answer, code: u16, reason: &str) {
    assert_eq!(answer.status, code, "status of {}", answer.body);
    assert_eq!(answer.body["kind"], "Status");
    assert_eq!(answer.body["apiVersion"], "v1");
    assert_eq!(answer.body["status"], "Failure");
    assert_eq!(answer.body["code"], code);
    assert_eq!(answer.body["reason"], reason);
    assert!(answer.body["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[test]
fn list_pages_keep_the_first_page_resource_version() {
    let emu = KubeEmulator::start();
    for name in ["a", "b", "c", "d", "e"] {
        emu.create_service_account("team-a", name, &[]);
    }
    let first = get(&emu, "/api/v1/serviceaccounts?limit=2");
    assert_eq!(first.status, 200);
    assert_eq!(first.body["kind"], "ServiceAccountList");
    assert_eq!(first.body["apiVersion"], "v1");
    assert_eq!(item_names(&first.body), ["a", "b"]);
    assert_eq!(first.body["metadata"]["remainingItemCount"], 3);
    let item = &first.body["items"][0];
    assert!(item.get("kind").is_none() && item.get("apiVersion").is_none());
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        assert!(item["metadata"][field].is_string(), "metadata.{field}");
    }
    let rv = first.body["metadata"]["resourceVersion"].clone();
    assert_eq!(rv.as_str(), Some(emu.resource_version().as_str()));

    // Writes between pages are not seen: the list is a snapshot at the first page's version.
    emu.create_service_account("team-a", "bb", &[]);
    emu.delete_service_account("team-a", "e");
    let token = first.body["metadata"]["continue"]
        .as_str()
        .expect("continue");
    let second = get(
        &emu,
        &format!("/api/v1/serviceaccounts?limit=2&continue={token}"),
    );
    assert_eq!(item_names(&second.body), ["c", "d"]);
    assert_eq!(second.body["metadata"]["resourceVersion"], rv);
    assert_eq!(second.body["metadata"]["remainingItemCount"], 1);
    let token = second.body["metadata"]["continue"]
        .as_str()
        .expect("continue");
    let last = get(
        &emu,
        &format!("/api/v1/serviceaccounts?limit=2&continue={token}"),
    );
    assert_eq!(item_names(&last.body), ["e"]);
    assert_eq!(last.body["metadata"]["resourceVersion"], rv);
    assert!(last.body["metadata"].get("continue").is_none());
    assert!(last.body["metadata"].get("remainingItemCount").is_none());
    assert_eq!(emu.list_requests(), 3);
}

#[test]
fn metadata_lists_are_partial_object_metadata_lists_with_every_metadata_field() {
    let emu = KubeEmulator::start();
    for name in ["a", "b", "c"] {
        emu.create_service_account_with_labels(
            "team-a",
            name,
            &[("nats.io/allowed-pub-subjects", "x.>"), ("other", "1")],
            &[("app", name)],
        );
    }
    let first = get_accept(&emu, "/api/v1/serviceaccounts?limit=2", METADATA_LIST);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.content_type, "application/json");
    assert_eq!(first.body["kind"], "PartialObjectMetadataList");
    assert_eq!(first.body["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(item_names(&first.body), ["a", "b"]);
    assert_eq!(first.body["metadata"]["remainingItemCount"], 1);
    let item = &first.body["items"][0];
    // Unlike ServiceAccountList items, metadata items carry their kind; nothing but metadata.
    assert_eq!(item["kind"], "PartialObjectMetadata");
    assert_eq!(item["apiVersion"], "meta.k8s.io/v1");
    let fields: Vec<&str> = item
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, ["apiVersion", "kind", "metadata"]);
    // Every annotation and label still comes: the client filters.
    assert_eq!(item["metadata"]["annotations"]["other"], "1");
    assert_eq!(item["metadata"]["labels"]["app"], "a");
    let token = first.body["metadata"]["continue"]
        .as_str()
        .expect("continue");
    let rest = get_accept(
        &emu,
        &format!("/api/v1/serviceaccounts?limit=2&continue={token}"),
        METADATA_LIST,
    );
    assert_eq!(rest.body["kind"], "PartialObjectMetadataList");
    assert_eq!(item_names(&rest.body), ["c"]);
    // No items: `null`, as the API server's appended-to nil slice encodes.
    let empty = get_accept(
        &emu,
        "/api/v1/namespaces/none/serviceaccounts",
        METADATA_LIST,
    );
    assert_eq!(empty.status, 200);
    assert!(empty.body["items"].is_null(), "{}", empty.body);
    // The v1beta1 group version is offered too.
    let beta = get_accept(
        &emu,
        "/api/v1/serviceaccounts",
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1beta1",
    );
    assert_eq!(beta.body["apiVersion"], "meta.k8s.io/v1beta1");
    assert_eq!(beta.body["items"][0]["apiVersion"], "meta.k8s.io/v1beta1");
    // The Accept header is recorded.
    let lists = emu.requests_of(RequestKind::List);
    assert_eq!(lists[0].accept.as_deref(), Some(METADATA_LIST));
}

#[test]
fn accept_headers_are_negotiated_as_the_api_server_does() {
    let emu = KubeEmulator::start();
    emu.create_service_account("ns", "a", &[]);
    let list = "/api/v1/serviceaccounts";
    let one = "/api/v1/namespaces/ns/serviceaccounts/a";
    // One object's metadata for a list: the transform after the list refuses it, whatever the
    // fallback says.
    let refused = get_accept(&emu, list, METADATA);
    assert_status(&refused, 406, "NotAcceptable");
    assert_eq!(
        refused.body["message"],
        "you requested PartialObjectMetadata, but the requested object is a list \
         (*core.ServiceAccountList)"
    );
    // And a list of metadata for one object.
    let refused = get_accept(&emu, one, METADATA_LIST);
    assert_status(&refused, 406, "NotAcceptable");
    assert!(refused.body["message"]
        .as_str()
        .is_some_and(|m| m.contains("is not a list")));
    // A missing object is 404 before any transform.
    let missing = get_accept(
        &emu,
        "/api/v1/namespaces/ns/serviceaccounts/b",
        METADATA_LIST,
    );
    assert_status(&missing, 404, "NotFound");
    // One object's metadata.
    let meta = get_accept(&emu, one, METADATA);
    assert_eq!(meta.status, 200);
    assert_eq!(meta.body["kind"], "PartialObjectMetadata");
    assert_eq!(meta.body["metadata"]["name"], "a");
    // Nothing acceptable: 406. Conversions the API server does not offer make a range
    // unacceptable; the next one is used.
    for accept in [
        "application/yaml",
        "text/plain",
        "application/json;as=Foo;g=meta.k8s.io;v=v1",
        "application/json;as=PartialObjectMetadataList;g=apps;v=v1",
        "application/json;as=PartialObjectMetadataList",
        "application/json;q=0",
    ] {
        assert_status(&get_accept(&emu, list, accept), 406, "NotAcceptable");
    }
    for (accept, kind) in [
        ("*/*", "ServiceAccountList"),
        ("application/*", "ServiceAccountList"),
        ("application/json", "ServiceAccountList"),
        (
            "application/json;as=Foo;g=meta.k8s.io;v=v1, application/json",
            "ServiceAccountList",
        ),
        (
            "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,\
             application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
            "PartialObjectMetadataList",
        ),
        (
            "application/json;q=0.5, application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            "PartialObjectMetadataList",
        ),
    ] {
        let answer = get_accept(&emu, list, accept);
        assert_eq!(answer.status, 200, "{accept}: {}", answer.body);
        assert_eq!(answer.body["kind"], kind, "{accept}");
    }
    assert_eq!(
        get(&emu, list).body["kind"],
        "ServiceAccountList",
        "no Accept"
    );
}

#[test]
fn metadata_watches_wrap_objects_and_bookmarks_but_not_error_statuses() {
    let emu = KubeEmulatorBuilder::new()
        .history_window(2)
        .no_periodic_bookmarks()
        .build();
    let old = emu.resource_version();
    emu.create_service_account("ns", "a", &[("nats.io/allowed-sub-subjects", "y")]);
    let from = emu.resource_version();
    emu.create_service_account("ns", "b", &[]);
    emu.delete_service_account("ns", "a");
    let mut watch = Watch::open_accept(
        &emu,
        &format!(
            "/api/v1/serviceaccounts?watch=1&resourceVersion={from}&allowWatchBookmarks=true&timeoutSeconds=1"
        ),
        METADATA,
    );
    let events = watch.rest();
    assert_eq!(names(&events), ["ADDED b", "DELETED a", "BOOKMARK -"]);
    for e in &events {
        assert_eq!(e["object"]["kind"], "PartialObjectMetadata", "{e}");
        assert_eq!(e["object"]["apiVersion"], "meta.k8s.io/v1");
    }
    assert_eq!(
        events[1]["object"]["metadata"]["annotations"]["nats.io/allowed-sub-subjects"],
        "y"
    );
    assert_eq!(
        events[2]["object"]["metadata"]["resourceVersion"],
        emu.resource_version().as_str()
    );
    // From "0": the current objects as ADDED metadata.
    let mut synthetic = Watch::open_accept(
        &emu,
        "/api/v1/serviceaccounts?watch=1&resourceVersion=0&timeoutSeconds=1",
        METADATA,
    );
    let events = synthetic.rest();
    assert_eq!(names(&events), ["ADDED b"]);
    assert_eq!(events[0]["object"]["kind"], "PartialObjectMetadata");
    // Too old: the ERROR event's Status is not transformed.
    let mut expired = Watch::open_accept(
        &emu,
        &format!("/api/v1/serviceaccounts?watch=1&resourceVersion={old}"),
        METADATA,
    );
    let events = expired.rest();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["kind"], "Status");
    assert_eq!(events[0]["object"]["code"], 410);
    let watches = emu.requests_of(RequestKind::Watch);
    assert_eq!(watches[0].accept.as_deref(), Some(METADATA));
}

#[test]
fn a_bulk_seeded_store_of_realistic_objects_lists_page_by_page() {
    let emu = KubeEmulator::start();
    let count = 20_000;
    emu.seed_realistic_service_accounts(count, 300);
    let rv = emu.resource_version();
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &token {
            None => "/api/v1/serviceaccounts?limit=500".to_string(),
            Some(t) => format!("/api/v1/serviceaccounts?limit=500&continue={t}"),
        };
        let page = get_accept(&emu, &path, METADATA_LIST);
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(page.body["metadata"]["resourceVersion"], rv.as_str());
        if pages == 0 {
            // A realistic object: the two nats.io annotations, kubectl's last-applied
            // configuration, three labels and a managedFields entry.
            let meta = &page.body["items"][0]["metadata"];
            let annotations = meta["annotations"].as_object().expect("annotations");
            assert!(annotations.contains_key("nats.io/allowed-pub-subjects"));
            assert!(annotations.contains_key("nats.io/allowed-sub-subjects"));
            let applied = annotations["kubectl.kubernetes.io/last-applied-configuration"]
                .as_str()
                .expect("last-applied");
            assert!((650..=800).contains(&applied.len()), "{}", applied.len());
            assert_eq!(meta["labels"].as_object().map(|l| l.len()), Some(3));
            assert_eq!(meta["managedFields"].as_array().map(Vec::len), Some(1));
            let uid = meta["uid"].as_str().expect("uid");
            assert_eq!(uid.len(), 36);
            assert_eq!(uid, uid.to_ascii_lowercase());
        }
        let page_names = item_names(&page.body);
        names.extend(page_names.iter().cloned());
        pages += 1;
        let remaining = page.body["metadata"]["remainingItemCount"].as_u64();
        assert_eq!(
            remaining.unwrap_or(0) as usize,
            count - names.len(),
            "remainingItemCount after page {pages}"
        );
        // A write between pages is not seen by the list (a snapshot at its first page).
        if pages == 2 {
            emu.create_service_account("team-00000", "sa-late", &[]);
            emu.delete_service_account("team-00066", "sa-0019999");
        }
        match page.body["metadata"]["continue"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, count / 500);
    assert_eq!(names.len(), count);
    let unique: std::collections::BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), count);
    assert!(names.iter().any(|n| n == "sa-0019999") && !names.iter().any(|n| n == "sa-late"));
    // One namespace, continued: only its objects.
    let first = get_accept(
        &emu,
        "/api/v1/namespaces/team-00001/serviceaccounts?limit=200",
        METADATA_LIST,
    );
    assert_eq!(first.body["metadata"]["remainingItemCount"], 100);
    let token = first.body["metadata"]["continue"]
        .as_str()
        .expect("continue");
    let second = get_accept(
        &emu,
        &format!("/api/v1/namespaces/team-00001/serviceaccounts?limit=200&continue={token}"),
        METADATA_LIST,
    );
    let second_names = item_names(&second.body);
    assert_eq!(second_names.len(), 100);
    assert_eq!(second_names.last().map(String::as_str), Some("sa-0000599"));
    assert!(second.body["metadata"].get("continue").is_none());
}

#[test]
fn expired_continue_token_is_410_expired() {
    let emu = KubeEmulator::start();
    emu.create_service_account("ns", "a", &[]);
    emu.create_service_account("ns", "b", &[]);
    let first = get(&emu, "/api/v1/namespaces/ns/serviceaccounts?limit=1");
    let token = first.body["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_string();
    emu.expire_continue_tokens();
    let stale = get(
        &emu,
        &format!("/api/v1/namespaces/ns/serviceaccounts?limit=1&continue={token}"),
    );
    assert_status(&stale, 410, "Expired");
    let garbage = get(
        &emu,
        "/api/v1/serviceaccounts?limit=1&continue=bm90LWEtdG9rZW4",
    );
    assert_status(&garbage, 400, "BadRequest");
}

#[test]
fn list_at_resource_version_zero_ignores_limit() {
    let emu = KubeEmulator::start();
    for name in ["a", "b", "c"] {
        emu.create_service_account("ns", name, &[]);
    }
    let all = get(&emu, "/api/v1/serviceaccounts?limit=1&resourceVersion=0");
    assert_eq!(item_names(&all.body), ["a", "b", "c"]);
    assert!(all.body["metadata"].get("continue").is_none());
}

#[test]
fn list_at_an_exact_resource_version_sees_the_past() {
    let emu = KubeEmulator::start();
    emu.create_service_account("ns", "a", &[]);
    let then = emu.resource_version();
    emu.create_service_account("ns", "b", &[]);
    emu.delete_service_account("ns", "a");
    let past = get(
        &emu,
        &format!("/api/v1/serviceaccounts?resourceVersion={then}&resourceVersionMatch=Exact"),
    );
    assert_eq!(item_names(&past.body), ["a"]);
    assert_eq!(past.body["metadata"]["resourceVersion"], then.as_str());
    emu.compact_history();
    let gone = get(
        &emu,
        &format!("/api/v1/serviceaccounts?resourceVersion={then}&resourceVersionMatch=Exact"),
    );
    assert_status(&gone, 410, "Expired");
}

#[test]
fn a_namespace_path_scopes_lists_and_watches() {
    let emu = KubeEmulator::start();
    let from = emu.resource_version();
    emu.create_service_account_with_labels("team-a", "app", &[], &[("tier", "web")]);
    emu.create_service_account("team-a", "db", &[]);
    emu.create_service_account("team-b", "app", &[]);
    emu.update_annotations("team-a", "app", &[("a", "b")]);

    let ns = get(&emu, "/api/v1/namespaces/team-a/serviceaccounts");
    assert_eq!(item_names(&ns.body), ["app", "db"]);
    assert_eq!(ns.body["items"][0]["metadata"]["labels"]["tier"], "web");
    let mut watch = Watch::open(
        &emu,
        &format!(
            "/api/v1/namespaces/team-a/serviceaccounts?watch=1&resourceVersion={from}\
             &timeoutSeconds=1"
        ),
    );
    let events = watch.rest();
    assert_eq!(names(&events), ["ADDED app", "ADDED db", "MODIFIED app"]);
    assert!(events
        .iter()
        .all(|e| e["object"]["metadata"]["namespace"] == "team-a"));
}

#[test]
fn selectors_are_refused_rather_than_ignored() {
    let emu = KubeEmulator::start();
    emu.create_service_account("team-a", "app", &[]);
    for path in [
        "/api/v1/serviceaccounts?fieldSelector=metadata.name%3Dapp",
        "/api/v1/serviceaccounts?labelSelector=tier%3Dweb",
        "/api/v1/serviceaccounts?watch=1&labelSelector=tier&timeoutSeconds=1",
    ] {
        assert_status(&get(&emu, path), 400, "BadRequest");
    }
}

#[test]
fn single_get_returns_the_typed_object_or_not_found() {
    let emu = KubeEmulator::start();
    let uid = emu.create_service_account("team-a", "app", &[("nats.io/allowed-pub", "a.>")]);
    let found = get(&emu, "/api/v1/namespaces/team-a/serviceaccounts/app");
    assert_eq!(found.status, 200);
    assert_eq!(found.body["kind"], "ServiceAccount");
    assert_eq!(found.body["metadata"]["uid"], uid.as_str());
    assert_eq!(
        found.body["metadata"]["annotations"]["nats.io/allowed-pub"],
        "a.>"
    );
    let missing = get(&emu, "/api/v1/namespaces/team-a/serviceaccounts/nope");
    assert_status(&missing, 404, "NotFound");
    assert_eq!(emu.get_requests(), 2);
    let elsewhere = get(&emu, "/api/v1/configmaps");
    assert_status(&elsewhere, 404, "NotFound");
}

#[test]
fn watch_replays_history_after_the_resource_version() {
    let emu = KubeEmulator::start();
    emu.create_service_account("ns", "a", &[("k", "1")]);
    let from = emu.resource_version();
    emu.update_annotations("ns", "a", &[("k", "2")]);
    emu.create_service_account("ns", "b", &[]);
    let deleted_at = emu.delete_service_account("ns", "a");

    let mut watch = Watch::open(
        &emu,
        &format!("/api/v1/serviceaccounts?watch=1&resourceVersion={from}&timeoutSeconds=1"),
    );
    let events = watch.rest();
    assert_eq!(names(&events), ["MODIFIED a", "ADDED b", "DELETED a"]);
    let deleted = &events[2]["object"];
    assert_eq!(deleted["kind"], "ServiceAccount");
    assert_eq!(deleted["metadata"]["annotations"]["k"], "2", "last state");
    assert_eq!(deleted["metadata"]["resourceVersion"], deleted_at.as_str());
    // timeoutSeconds ended the stream cleanly, and on time.
    let elapsed = watch.opened.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");

    let recorded = emu.requests_of(RequestKind::Watch);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].resource_version(), Some(from));
    assert!(recorded[0].authorization_present);
}

/// Creates object `ns/name` of the kind a test exercises.
type Create = fn(&KubeEmulator, &str);

/// Watches of `collection` (e.g. `/api/v1/pods`) from a resourceVersion older than the history
/// window get an in-stream 410, or a plain one when so set; exact lists past a compaction too.
fn assert_too_old_versions_get_410(collection: &str, create: Create) {
    let emu = KubeEmulatorBuilder::new().history_window(2).build();
    let from = emu.resource_version();
    for name in ["a", "b", "c"] {
        create(&emu, name);
    }
    let mut watch = Watch::open(
        &emu,
        &format!("{collection}?watch=1&resourceVersion={from}"),
    );
    let events = watch.rest();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "ERROR");
    let status = &events[0]["object"];
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 410);
    assert_eq!(status["reason"], "Expired");
    let message = status["message"].as_str().expect("message");
    assert!(
        message.starts_with(&format!("too old resource version: {from} (")),
        "{message}"
    );

    // Still inside the window: replayed, and listed as it was.
    let inside: u64 = from.parse::<u64>().expect("rv") + 1;
    let mut ok = Watch::open(
        &emu,
        &format!("{collection}?watch=1&resourceVersion={inside}&timeoutSeconds=1"),
    );
    assert_eq!(names(&ok.rest()), ["ADDED b", "ADDED c"]);
    let exact = format!("{collection}?resourceVersion={inside}&resourceVersionMatch=Exact");
    assert_eq!(item_names(&get(&emu, &exact).body), ["a"]);

    // After compaction even the newest old version is gone; and the plain-HTTP variant.
    emu.compact_history();
    assert_status(&get(&emu, &exact), 410, "Expired");
    emu.set_expired_watch_as_http(true);
    let plain = get(
        &emu,
        &format!("{collection}?watch=1&resourceVersion={inside}"),
    );
    assert_status(&plain, 410, "Expired");
}

#[test]
fn watch_older_than_the_window_gets_an_in_stream_410() {
    assert_too_old_versions_get_410("/api/v1/serviceaccounts", |emu, name| {
        emu.create_service_account("ns", name, &[]);
    });
}

#[test]
fn watch_from_zero_lists_then_follows_live_changes() {
    let emu = KubeEmulator::start();
    emu.create_service_account("ns", "old", &[]);
    let mut watch = Watch::open(
        &emu,
        "/api/v1/namespaces/ns/serviceaccounts?watch=true&resourceVersion=0&timeoutSeconds=2",
    );
    let first = watch.next().expect("read").expect("event");
    assert_eq!(names(&[first]), ["ADDED old"]);
    assert!(emu.wait_for_open_watches(1, Duration::from_secs(2)));
    emu.create_service_account("other", "ignored", &[]);
    emu.create_service_account("ns", "new", &[]);
    emu.update_annotations("ns", "new", &[("x", "y")]);
    let live = watch.rest();
    assert_eq!(names(&live), ["ADDED new", "MODIFIED new"]);
}

#[test]
fn bookmarks_arrive_periodically_and_before_the_deadline() {
    let emu = KubeEmulatorBuilder::new()
        .bookmark_interval(Duration::from_millis(300))
        .build();
    emu.create_service_account("ns", "a", &[]);
    let rv = emu.resource_version();
    let mut watch = Watch::open(
        &emu,
        &format!(
            "/api/v1/serviceaccounts?watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1"
        ),
    );
    let events = watch.rest();
    assert!(events.len() >= 2, "{events:?}");
    for e in &events {
        assert_eq!(e["type"], "BOOKMARK");
        assert_eq!(e["object"]["kind"], "ServiceAccount");
        assert_eq!(e["object"]["apiVersion"], "v1");
        assert_eq!(e["object"]["metadata"]["resourceVersion"], rv.as_str());
    }
    // Without allowWatchBookmarks: none.
    let mut quiet = Watch::open(
        &emu,
        &format!("/api/v1/serviceaccounts?watch=1&resourceVersion={rv}&timeoutSeconds=1"),
    );
    assert!(quiet.rest().is_empty());
}

#[test]
fn without_periodic_bookmarks_one_comes_just_before_the_deadline() {
    let emu = KubeEmulatorBuilder::new().no_periodic_bookmarks().build();
    let mut watch = Watch::open(
        &emu,
        "/api/v1/serviceaccounts?watch=1&allowWatchBookmarks=true&timeoutSeconds=1",
    );
    let events = watch.rest();
    assert_eq!(names(&events), ["BOOKMARK -"]);
    assert_eq!(
        events[0]["object"]["metadata"]["resourceVersion"],
        emu.resource_version().as_str()
    );
}

#[test]
fn connections_are_kept_alive_between_requests() {
    let emu = KubeEmulator::start();
    let client = agent();
    for _ in 0..3 {
        let resp = client
            .get(format!("{}/api/v1/serviceaccounts", emu.url()))
            .header("Authorization", format!("Bearer {}", emu.token()))
            .call()
            .expect("request");
        assert_eq!(resp.status().as_u16(), 200);
        resp.into_body().read_to_string().expect("body");
    }
    assert_eq!(emu.total_requests(), 3);
    assert_eq!(emu.connections_accepted(), 1);
}

#[test]
fn streaming_lists_are_refused_as_with_the_watch_list_gate_off() {
    let emu = KubeEmulator::start();
    emu.create_service_account("ns", "a", &[]);
    let refused = get(
        &emu,
        "/api/v1/serviceaccounts?watch=1&sendInitialEvents=true\
         &resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true\
         &resourceVersion=&timeoutSeconds=1",
    );
    assert_status(&refused, 422, "Invalid");
    let message = refused.body["message"].as_str().expect("message");
    assert!(
        message.contains(
            "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"
        ),
        "{message}"
    );
    let match_alone = get(
        &emu,
        "/api/v1/serviceaccounts?watch=1&resourceVersionMatch=NotOlderThan&resourceVersion=1",
    );
    assert_status(&match_alone, 422, "Invalid");
}

#[test]
fn credentials_are_checked() {
    let emu = KubeEmulatorBuilder::new().token("good").build();
    assert_status(
        &get_with(&emu, "/api/v1/serviceaccounts", Some("bad")),
        401,
        "Unauthorized",
    );
    assert_status(
        &get_with(&emu, "/api/v1/serviceaccounts", None),
        401,
        "Unauthorized",
    );
    assert_eq!(
        get_with(&emu, "/api/v1/serviceaccounts", Some("good")).status,
        200
    );
    emu.set_tokens(&["new", "good"]);
    assert_eq!(emu.token(), "new");
    assert_eq!(
        get_with(&emu, "/api/v1/serviceaccounts", Some("good")).status,
        200
    );
    emu.set_token("newer");
    assert_eq!(
        get_with(&emu, "/api/v1/serviceaccounts", Some("good")).status,
        401
    );
    let log = emu.requests();
    assert!(!log[1].authorization_present && log[0].authorization_present);

    // Discovery with anonymous access: no credentials pass, bad credentials still fail.
    assert_eq!(get_with(&emu, "/openid/v1/jwks", None).status, 401);
    emu.set_oidc_anonymous(true);
    assert_eq!(get_with(&emu, "/openid/v1/jwks", None).status, 200);
    assert_eq!(
        get_with(&emu, "/.well-known/openid-configuration", None).status,
        200
    );
    assert_eq!(get_with(&emu, "/openid/v1/jwks", Some("bad")).status, 401);
    assert_status(
        &get_with(&emu, "/api/v1/serviceaccounts", None),
        403,
        "Forbidden",
    );
}

#[test]
fn injected_429_carries_retry_after() {
    let emu = KubeEmulator::start();
    emu.fail_next(1, 429, Some(3), Some("/serviceaccounts"));
    assert_eq!(get(&emu, "/openid/v1/jwks").status, 200, "path filter");
    let limited = get(&emu, "/api/v1/serviceaccounts");
    assert_status(&limited, 429, "TooManyRequests");
    assert_eq!(limited.retry_after.as_deref(), Some("3"));
    assert_eq!(limited.body["details"]["retryAfterSeconds"], 3);
    assert_eq!(get(&emu, "/api/v1/serviceaccounts").status, 200);

    emu.fail_next_of(RequestKind::Watch, 2, 503, None);
    assert_eq!(get(&emu, "/api/v1/serviceaccounts").status, 200);
    let unavailable = get(&emu, "/api/v1/serviceaccounts?watch=1");
    assert_status(&unavailable, 503, "ServiceUnavailable");
    emu.fail_next(1, 403, None, None);
    assert_status(&get(&emu, "/api/v1/serviceaccounts"), 403, "Forbidden");
    assert_status(
        &get(&emu, "/api/v1/serviceaccounts?watch=1"),
        503,
        "ServiceUnavailable",
    );
    assert_eq!(emu.watch_requests(), 2);
}

#[test]
fn closing_watch_streams_cuts_them_without_the_last_chunk() {
    let emu = KubeEmulator::start();
    emu.create_service_account("ns", "a", &[]);
    let mut watch = Watch::open(&emu, "/api/v1/serviceaccounts?watch=1&resourceVersion=0");
    assert!(watch.next().expect("read").is_some());
    assert!(emu.wait_for_open_watches(1, Duration::from_secs(2)));
    emu.close_watch_streams();
    assert!(
        watch.next().is_err(),
        "an abrupt close is an error, not a clean end"
    );
    assert!(emu.wait_for(Duration::from_secs(2), |e| e.open_watches() == 0));
}

#[test]
fn hanging_watches_send_nothing_until_released() {
    let emu = KubeEmulatorBuilder::new()
        .bookmark_interval(Duration::from_millis(100))
        .build();
    emu.create_service_account("ns", "a", &[]);
    emu.set_watch_hang(true);
    let started = Instant::now();
    let mut watch = Watch::open(
        &emu,
        "/api/v1/serviceaccounts?watch=1&resourceVersion=0&allowWatchBookmarks=true&timeoutSeconds=1",
    );
    emu.create_service_account("ns", "b", &[]);
    std::thread::sleep(Duration::from_millis(500));
    emu.set_watch_hang(false);
    // Nothing came while hanging, not even the initial events or bookmarks past the deadline.
    let first = watch.next().expect("read").expect("event");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert_eq!(names(&[first]), ["ADDED a"]);
    let second = watch.next().expect("read").expect("event");
    assert_eq!(names(&[second]), ["ADDED b"]);
}

#[test]
fn a_down_server_accepts_and_closes_connections() {
    let emu = KubeEmulator::start();
    emu.set_down(true);
    let failed = agent()
        .get(format!("{}/api/v1/serviceaccounts", emu.url()))
        .header("Authorization", format!("Bearer {}", emu.token()))
        .call();
    assert!(failed.is_err());
    assert!(emu.connections_accepted() >= 1);
    assert_eq!(emu.total_requests(), 0);
    emu.set_down(false);
    assert_eq!(get(&emu, "/api/v1/serviceaccounts").status, 200);
}

#[test]
fn future_resource_version_times_out_with_504() {
    let emu = KubeEmulator::start();
    let future = emu.resource_version().parse::<u64>().expect("rv") + 10;
    let answer = get(
        &emu,
        &format!("/api/v1/serviceaccounts?watch=1&resourceVersion={future}"),
    );
    assert_status(&answer, 504, "Timeout");
}

#[test]
fn discovery_endpoints_have_the_apiserver_headers() {
    let key = SigningKey::rs256();
    let emu = KubeEmulatorBuilder::new()
        .jwks(tokens::jwks(&[&key]))
        .build();
    let config = get(&emu, "/.well-known/openid-configuration");
    assert_eq!(config.status, 200);
    assert_eq!(config.content_type, "application/json");
    assert_eq!(config.body["issuer"], tokens::DEFAULT_ISSUER);
    assert_eq!(
        config.body["jwks_uri"],
        format!("{}/openid/v1/jwks", emu.url())
    );
    assert_eq!(config.body["response_types_supported"][0], "id_token");
    assert_eq!(config.body["subject_types_supported"][0], "public");
    assert_eq!(
        config.body["id_token_signing_alg_values_supported"][0],
        "RS256"
    );

    let keys = get(&emu, "/openid/v1/jwks");
    assert_eq!(keys.content_type, "application/jwk-set+json");
    assert_eq!(keys.cache_control, "public, max-age=3600");
    assert_eq!(keys.body["keys"][0]["kid"], key.kid());
    assert_eq!(keys.body["keys"][0]["use"], "sig");

    // Rotation: add a key, later drop the old one.
    let next = SigningKey::es256();
    emu.set_jwks(tokens::jwks(&[&key, &next]));
    emu.set_jwks_max_age(60);
    let rotated = get(&emu, "/openid/v1/jwks");
    assert_eq!(rotated.cache_control, "public, max-age=60");
    assert_eq!(rotated.body["keys"].as_array().map(Vec::len), Some(2));
    emu.set_jwks(tokens::jwks(&[&next]));
    assert_eq!(
        get(&emu, "/openid/v1/jwks").body["keys"][0]["kid"],
        next.kid()
    );
    assert_eq!(emu.jwks_requests(), 3);
    assert_eq!(emu.discovery_requests(), 1);
}

/// Verifies `token` the way a relying party does: pick the key by `kid` from the served set.
fn verify_against(emu: &KubeEmulator, token: &str) -> jsonwebtoken::errors::Result<Value> {
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_value(get(emu, "/openid/v1/jwks").body).expect("a JWK set");
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.expect("kid");
    let jwk = set.find(&kid).expect("key by kid");
    let alg: Algorithm = jwk
        .common
        .key_algorithm
        .expect("alg")
        .to_string()
        .parse()
        .expect("known alg");
    let mut validation = Validation::new(alg);
    validation.set_audience(&[tokens::DEFAULT_AUDIENCE]);
    validation.set_issuer(&[tokens::DEFAULT_ISSUER]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &validation)?;
    Ok(data.claims)
}

#[test]
fn minted_tokens_verify_against_the_served_key_set() {
    let rsa = SigningKey::rs256();
    let ec = SigningKey::es256();
    let ec384 = SigningKey::es384();
    let emu = KubeEmulatorBuilder::new()
        .jwks(tokens::jwks(&[&rsa, &ec, &ec384]))
        .build();
    let uid = emu.create_service_account("team-a", "app", &[]);
    let builder = TokenBuilder::for_sa("team-a", "app", &uid).pod("app-7d9f", "pod-uid");
    for key in [&rsa, &ec, &ec384] {
        let token = builder.sign(key);
        let header = tokens::header_of(&token);
        assert_eq!(header["alg"], key.alg_name());
        assert_eq!(header["kid"], key.kid());
        assert!(header.get("typ").is_none(), "go-jose writes no typ");
        let claims = verify_against(&emu, &token).expect("a valid token verifies");
        assert_eq!(claims["sub"], "system:serviceaccount:team-a:app");
        assert_eq!(claims["aud"][0], "nats");
        assert_eq!(
            claims["kubernetes.io"]["serviceaccount"]["uid"],
            uid.as_str()
        );
        assert_eq!(claims["kubernetes.io"]["pod"]["name"], "app-7d9f");
        assert_eq!(
            claims["exp"].as_i64(),
            claims["iat"].as_i64().map(|t| t + 600)
        );
        // Also against the PEM public key, as a key file would hold it.
        let mut validation = Validation::new(key.algorithm());
        validation.set_audience(&["nats"]);
        assert!(jsonwebtoken::decode::<Value>(&token, &key.decoding_key(), &validation).is_ok());

        assert!(verify_against(&emu, &tokens::tamper_payload(&token)).is_err());
    }
    let expired = builder.clone().expires_in(-120).sign(&rsa);
    assert!(verify_against(&emu, &expired).is_err());
    let mismatch = builder.sign_with_header_alg(&rsa, "RS384");
    assert!(jsonwebtoken::decode::<Value>(
        &mismatch,
        &rsa.decoding_key(),
        &Validation::new(Algorithm::RS384)
    )
    .is_err());
    assert!(verify_against(&emu, &builder.clone().audience("other").sign(&ec)).is_err());
}

#[test]
fn token_builder_shapes_match_kubernetes() {
    let keys = [SigningKey::rs256_n(0), SigningKey::rs256_n(1)];
    assert_ne!(keys[0].kid(), keys[1].kid());
    assert_eq!(SigningKey::rs256().kid(), keys[0].kid(), "pooled");
    assert_eq!(keys[0].kid().len(), 43, "base64url of a SHA-256");

    let claims = TokenBuilder::for_sa("ns", "sa", "uid-1").claims();
    assert_eq!(claims["iss"], tokens::DEFAULT_ISSUER);
    assert!(claims["aud"].is_array());
    assert_eq!(claims["iat"], claims["nbf"]);
    assert_eq!(claims["jti"].as_str().map(str::len), Some(36));
    assert_eq!(claims["kubernetes.io"]["namespace"], "ns");

    let legacy = tokens::claims_of(
        &TokenBuilder::for_sa("ns", "sa", "uid-1")
            .legacy_secret_format()
            .sign(&keys[0]),
    );
    assert_eq!(legacy["iss"], tokens::LEGACY_ISSUER);
    assert_eq!(
        legacy["kubernetes.io/serviceaccount/service-account.uid"],
        "uid-1"
    );
    for absent in ["exp", "aud", "iat", "jti", "kubernetes.io"] {
        assert!(legacy.get(absent).is_none(), "{absent}");
    }
    let single = TokenBuilder::for_sa("ns", "sa", "u")
        .audience_string("x")
        .claims();
    assert_eq!(single["aud"], "x");

    let none = TokenBuilder::for_sa("ns", "sa", "u").unsigned_alg_none();
    assert!(none.ends_with('.'));
    assert_eq!(tokens::header_of(&none)["alg"], "none");
    let hs = TokenBuilder::for_sa("ns", "sa", "u").sign_hs256_with_public_key_of(&keys[0]);
    assert_eq!(tokens::header_of(&hs)["alg"], "HS256");
    let no_kid = TokenBuilder::for_sa("ns", "sa", "u")
        .without_kid()
        .sign(&keys[0]);
    assert!(tokens::header_of(&no_kid).get("kid").is_none());
}

#[test]
fn kubectl_can_read_from_the_emulator() {
    require_kubectl();
    let emu = KubeEmulator::start();
    emu.create_service_account("ns", "a", &[]);
    emu.create_service_account("ns", "b", &[]);
    let home = tempfile::tempdir().expect("tempdir");
    let kubectl = || {
        std::process::Command::new("kubectl")
            .env("KUBECONFIG", home.path().join("none"))
            .env("HOME", home.path())
            .args(["--server", &emu.url(), "--token", &emu.token()])
            .args(["get", "--raw", "/api/v1/serviceaccounts?limit=1"])
            .output()
            .expect("run kubectl")
    };
    // client-go never sends a bearer token over plain http, so kubectl meets the 401 first
    // and must understand it as a real apiserver's.
    let refused = kubectl();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("(Unauthorized)"), "{stderr}");

    emu.set_auth_required(false);
    let out = kubectl();
    assert!(
        out.status.success(),
        "kubectl failed: {}\nrequests seen: {:?}",
        String::from_utf8_lossy(&out.stderr),
        emu.requests()
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("kubectl printed JSON");
    assert_eq!(list["kind"], "ServiceAccountList");
    assert_eq!(item_names(&list), ["a"]);
    assert_eq!(list["metadata"]["remainingItemCount"], 1);
    assert!(list["metadata"]["continue"].is_string());
}

// ---------------------------------------------------------------------------------------------
// TLS: the same emulator behind HTTPS, with generated certificates.

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn tls_serves_lists_watches_faults_and_keep_alive() {
    let emu = KubeEmulatorBuilder::new().tls(TlsOptions::new()).build();
    assert!(emu.url().starts_with("https://127.0.0.1:"), "{}", emu.url());
    emu.create_service_account("ns", "a", &[]);
    let client = agent_for(&emu);
    for _ in 0..3 {
        let resp = client
            .get(format!("{}/api/v1/serviceaccounts", emu.url()))
            .header("Authorization", format!("Bearer {}", emu.token()))
            .call()
            .expect("request");
        assert_eq!(resp.status().as_u16(), 200);
        resp.into_body().read_to_string().expect("body");
    }
    assert_eq!(emu.total_requests(), 3);
    assert_eq!(
        emu.connections_accepted(),
        1,
        "one TLS connection kept alive"
    );

    let mut watch = Watch::open(
        &emu,
        "/api/v1/namespaces/ns/serviceaccounts?watch=true&resourceVersion=0&timeoutSeconds=2",
    );
    let first = watch.next().expect("read").expect("event");
    assert_eq!(names(&[first]), ["ADDED a"]);
    assert!(emu.wait_for_open_watches(1, Duration::from_secs(2)));
    emu.create_service_account("ns", "b", &[]);
    emu.update_annotations("ns", "b", &[("x", "y")]);
    assert_eq!(names(&watch.rest()), ["ADDED b", "MODIFIED b"]);

    emu.fail_next(1, 429, Some(3), Some("/serviceaccounts"));
    let limited = get(&emu, "/api/v1/serviceaccounts");
    assert_status(&limited, 429, "TooManyRequests");
    assert_eq!(limited.retry_after.as_deref(), Some("3"));
    assert_eq!(get(&emu, "/api/v1/serviceaccounts").status, 200);

    let discovery = get(&emu, "/.well-known/openid-configuration");
    assert_eq!(
        discovery.body["jwks_uri"],
        format!("{}/openid/v1/jwks", emu.url())
    );
    assert_eq!(get(&emu, "/openid/v1/jwks").status, 200);
    assert_eq!(emu.tls_handshake_failures(), 0, "{:?}", emu.tls_errors());
}

#[test]
fn tls_watch_streams_end_on_abrupt_close_outage_and_client_exit() {
    let emu = KubeEmulatorBuilder::new()
        .tls(TlsOptions::new())
        .no_periodic_bookmarks()
        .build();
    emu.create_service_account("ns", "a", &[]);
    let mut watch = Watch::open(&emu, "/api/v1/serviceaccounts?watch=1&resourceVersion=0");
    assert!(watch.next().expect("read").is_some());
    assert!(emu.wait_for_open_watches(1, Duration::from_secs(2)));
    emu.close_watch_streams();
    assert!(
        watch.next().is_err(),
        "an abrupt close is an error, not a clean end"
    );
    assert!(emu.wait_for(Duration::from_secs(2), |e| e.open_watches() == 0));

    // A client that goes away is noticed while the stream is idle (no events, no bookmarks).
    let mut watch = Watch::open(&emu, "/api/v1/serviceaccounts?watch=1&resourceVersion=0");
    assert!(watch.next().expect("read").is_some());
    assert!(emu.wait_for_open_watches(1, Duration::from_secs(2)));
    drop(watch);
    assert!(emu.wait_for(Duration::from_secs(3), |e| e.open_watches() == 0));

    emu.set_down(true);
    let failed = agent_for(&emu)
        .get(format!("{}/api/v1/serviceaccounts", emu.url()))
        .header("Authorization", format!("Bearer {}", emu.token()))
        .call();
    assert!(failed.is_err());
    emu.set_down(false);
    assert_eq!(get(&emu, "/api/v1/serviceaccounts").status, 200);
}

#[test]
fn tls_handshake_failures_are_counted_and_nothing_is_served() {
    let emu = KubeEmulatorBuilder::new().tls(TlsOptions::new()).build();
    let other = KubeEmulatorBuilder::new().tls(TlsOptions::new()).build();
    let url = format!("{}/api/v1/serviceaccounts", emu.url());
    // A client trusting another CA refuses the certificate before any request is sent.
    let err = tls_agent(other.ca_pem(), None)
        .get(&url)
        .header("Authorization", format!("Bearer {}", emu.token()))
        .call()
        .expect_err("an untrusted certificate is refused")
        .to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(emu.wait_for(Duration::from_secs(2), |e| e.tls_handshake_failures() == 1));
    // ureq hangs up without an alert; the emulator sees the handshake end early.
    assert_eq!(emu.tls_errors().len(), 1);
    // Plain HTTP on the TLS port.
    let plain = agent()
        .get(format!("http://{}/api/v1/serviceaccounts", emu.addr()))
        .call();
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status().as_u16() >= 400));
    assert!(emu.wait_for(Duration::from_secs(2), |e| e.tls_handshake_failures() == 2));
    assert_eq!(emu.total_requests(), 0);
    assert_eq!(get(&emu, "/api/v1/serviceaccounts").status, 200);
}

#[test]
fn tls_required_client_certificates_authenticate_without_a_token() {
    let emu = KubeEmulatorBuilder::new()
        .tls(TlsOptions::new().require_client_cert())
        .build();
    let other = KubeEmulatorBuilder::new()
        .tls(TlsOptions::new().require_client_cert())
        .build();
    let url = format!("{}/api/v1/serviceaccounts", emu.url());
    let answer = get_with(&emu, "/api/v1/serviceaccounts", None);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = emu.requests();
    assert!(seen[0].client_certificate && !seen[0].authorization_present);

    // Without a certificate the handshake fails, whatever the token.
    let no_cert = tls_agent(emu.ca_pem(), None)
        .get(&url)
        .header("Authorization", format!("Bearer {}", emu.token()))
        .call();
    assert!(no_cert.is_err());
    // So it does with a certificate of another client CA.
    let wrong = tls_agent(
        emu.ca_pem(),
        Some((other.client_cert_pem(), other.client_key_pem())),
    )
    .get(&url)
    .call();
    assert!(wrong.is_err());
    assert!(emu.wait_for(Duration::from_secs(2), |e| e.tls_handshake_failures() == 2));
    let errors = emu.tls_errors();
    assert!(errors[0].contains("no certificates"), "{errors:?}");
    assert!(errors[1].contains("UnknownIssuer"), "{errors:?}");
    assert_eq!(emu.total_requests(), 1);
}

#[test]
fn tls_optional_client_certificates_fall_back_to_tokens() {
    let emu = KubeEmulatorBuilder::new()
        .tls(TlsOptions::new().accept_client_cert())
        .build();
    let url = format!("{}/api/v1/serviceaccounts", emu.url());
    let status = |agent: ureq::Agent, token: Option<String>| {
        let mut request = agent.get(&url);
        if let Some(t) = token {
            request = request.header("Authorization", format!("Bearer {t}"));
        }
        request.call().expect("served").status().as_u16()
    };
    let with_cert = || {
        tls_agent(
            emu.ca_pem(),
            Some((emu.client_cert_pem(), emu.client_key_pem())),
        )
    };
    let without_cert = || tls_agent(emu.ca_pem(), None);
    assert_eq!(status(with_cert(), None), 200);
    assert_eq!(status(with_cert(), Some("wrong".into())), 200, "x509 first");
    assert_eq!(status(without_cert(), Some(emu.token())), 200);
    assert_eq!(status(without_cert(), None), 401);
    let certs: Vec<bool> = emu
        .requests()
        .iter()
        .map(|r| r.client_certificate)
        .collect();
    assert_eq!(certs, [true, true, false, false]);
}

#[test]
fn kubectl_trusts_the_emulator_over_tls() {
    require_kubectl();
    let emu = KubeEmulatorBuilder::new()
        .tls(TlsOptions::new().accept_client_cert())
        .build();
    let other = KubeEmulatorBuilder::new().tls(TlsOptions::new()).build();
    emu.create_service_account("ns", "a", &[]);
    let home = tempfile::tempdir().expect("tempdir");
    let kubectl = |cluster: Vec<String>, user: Vec<String>| {
        let text = kubeconfig(&emu.url(), &cluster, &user);
        let path = write_kubeconfig(home.path(), "kubeconfig", &text);
        kubectl_command(home.path(), &path)
            .args(["get", "--raw", "/api/v1/serviceaccounts"])
            .output()
            .expect("run kubectl")
    };
    let ca = |pem: &str| vec![format!("certificate-authority-data: {}", b64(pem))];
    let token = vec![format!("token: {}", emu.token())];
    let cert = vec![
        format!("client-certificate-data: {}", b64(emu.client_cert_pem())),
        format!("client-key-data: {}", b64(emu.client_key_pem())),
    ];
    for (what, out) in [
        ("CA + token", kubectl(ca(emu.ca_pem()), token.clone())),
        ("CA + client certificate", kubectl(ca(emu.ca_pem()), cert)),
    ] {
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Value = serde_json::from_slice(&out.stdout).expect("kubectl printed JSON");
        assert_eq!(item_names(&list), ["a"], "{what}");
    }
    // kubectl asks for /version before the list; either way, the token first, then the certificate.
    assert_eq!(
        emu.requests_of(RequestKind::List)
            .iter()
            .map(|r| (r.authorization_present, r.client_certificate))
            .collect::<Vec<_>>(),
        [(true, false), (false, true)],
        "{:?}",
        emu.requests()
    );
    let refused = kubectl(ca(other.ca_pem()), token);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("certificate signed by unknown authority"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// The TokenRequest subresource (`kubectl create token`).

/// POSTs a TokenRequest `body` for `ns/name` as JSON, with `token` as the bearer if given.
fn post_token_request(
    emu: &KubeEmulator,
    ns: &str,
    name: &str,
    body: &Value,
    token: Option<&str>,
) -> Answer {
    let path = format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}/token");
    post(emu, &path, &body.to_string(), token)
}

fn token_request(audiences: &[&str], expiration: Option<i64>) -> Value {
    let mut spec = serde_json::json!({ "audiences": audiences });
    if let Some(secs) = expiration {
        spec["expirationSeconds"] = secs.into();
    }
    serde_json::json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "spec": spec,
    })
}

/// The seconds since the epoch of an RFC 3339 UTC timestamp with second precision.
fn unix_of(rfc3339: &str) -> i64 {
    let n = |range: std::ops::Range<usize>| -> i64 {
        rfc3339[range].parse().expect("a numeric date field")
    };
    assert!(rfc3339.len() == 20 && rfc3339.ends_with('Z'), "{rfc3339}");
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant), the inverse of the emulator's formatting.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

#[test]
fn token_request_issues_a_signed_token_with_the_claims_of_a_real_cluster() {
    let key = SigningKey::es256();
    let emu = KubeEmulatorBuilder::new().token_signer(key.clone()).build();
    // The signer's public half is published even though no key set was given.
    assert_eq!(
        get(&emu, "/openid/v1/jwks").body["keys"][0]["kid"],
        key.kid()
    );
    let uid = emu.create_service_account("my-app", "client", &[]);
    let before = tokens::now_unix();
    let answer = post_token_request(
        &emu,
        "my-app",
        "client",
        &token_request(&["nats"], Some(600)),
        Some(&emu.token()),
    );
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(answer.content_type, "application/json");
    let body = &answer.body;
    assert_eq!(body["kind"], "TokenRequest");
    assert_eq!(body["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(body["metadata"]["name"], "client");
    assert_eq!(body["metadata"]["namespace"], "my-app");
    assert_eq!(body["spec"]["audiences"], serde_json::json!(["nats"]));
    assert_eq!(body["spec"]["expirationSeconds"], 600);
    let token = body["status"]["token"].as_str().expect("status.token");
    let claims = verify_against(&emu, token).expect("signed by a key of the served set");
    assert_eq!(tokens::header_of(token)["kid"], key.kid());
    assert_eq!(tokens::header_of(token)["alg"], "ES256");
    assert_eq!(claims["iss"], emu.issuer());
    assert_eq!(claims["sub"], "system:serviceaccount:my-app:client");
    assert_eq!(claims["aud"], serde_json::json!(["nats"]));
    let iat = claims["iat"].as_i64().expect("iat");
    assert!(iat >= before && iat <= tokens::now_unix(), "iat {iat}");
    assert_eq!(claims["nbf"], iat);
    assert_eq!(claims["exp"].as_i64(), Some(iat + 600));
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() == 36));
    assert_eq!(
        claims["kubernetes.io"],
        serde_json::json!({
            "namespace": "my-app",
            "serviceaccount": { "name": "client", "uid": uid },
        })
    );
    let expires = body["status"]["expirationTimestamp"]
        .as_str()
        .expect("status.expirationTimestamp");
    assert_eq!(unix_of(expires), iat + 600, "{expires}");
    assert_eq!(emu.token_requests(), 1);
    let seen = emu.requests_of(RequestKind::TokenRequest);
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (
            seen[0].method.as_str(),
            seen[0].path.as_str(),
            seen[0].status
        ),
        (
            "POST",
            "/api/v1/namespaces/my-app/serviceaccounts/client/token",
            201
        )
    );

    // Bound to a pod: the pod appears in the claim; asked for 3607 s with the API audience, the
    // token lives a year and warns after 3607 s, while the answer still says 3607 s.
    let mut bound = token_request(&[], Some(3607));
    bound["spec"]["boundObjectRef"] =
        serde_json::json!({ "kind": "Pod", "apiVersion": "v1", "name": "web-0", "uid": "pod-uid" });
    let answer = post_token_request(&emu, "my-app", "client", &bound, Some(&emu.token()));
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(answer.body["spec"]["boundObjectRef"]["name"], "web-0");
    let token = answer.body["status"]["token"].as_str().expect("token");
    let claims = tokens::claims_of(token);
    let iat = claims["iat"].as_i64().expect("iat");
    assert_eq!(
        claims["kubernetes.io"]["pod"],
        serde_json::json!({ "name": "web-0", "uid": "pod-uid" })
    );
    assert_eq!(claims["kubernetes.io"]["warnafter"], iat + 3607);
    assert_eq!(claims["exp"].as_i64(), Some(iat + 24 * 365 * 3600));
    let expires = answer.body["status"]["expirationTimestamp"]
        .as_str()
        .expect("expirationTimestamp");
    assert_eq!(unix_of(expires), iat + 3607);
    // The same for a custom audience is not extended.
    bound["spec"]["audiences"] = serde_json::json!(["nats"]);
    let answer = post_token_request(&emu, "my-app", "client", &bound, Some(&emu.token()));
    let claims = tokens::claims_of(answer.body["status"]["token"].as_str().expect("token"));
    assert_eq!(
        claims["exp"].as_i64(),
        claims["iat"].as_i64().map(|i| i + 3607)
    );
    assert!(claims["kubernetes.io"].get("warnafter").is_none());
    // Only Pods, Secrets and Nodes of the core group can be bound.
    bound["spec"]["boundObjectRef"]["kind"] = "Deployment".into();
    bound["spec"]["boundObjectRef"]["apiVersion"] = "apps/v1".into();
    let refused = post_token_request(&emu, "my-app", "client", &bound, Some(&emu.token()));
    assert_status(&refused, 400, "BadRequest");
    assert_eq!(
        refused.body["message"],
        "cannot bind token to object of type apps/v1, Kind=Deployment"
    );
}

#[test]
fn token_request_defaults_to_the_api_audience_and_an_hour() {
    let emu = KubeEmulatorBuilder::new()
        .issuer("https://oidc.example.com/cluster-1")
        .token_signer(SigningKey::rs256())
        .build();
    emu.create_service_account("ns", "sa", &[]);
    for body in [
        token_request(&[], None),
        serde_json::json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest" }),
    ] {
        let answer = post_token_request(&emu, "ns", "sa", &body, Some(&emu.token()));
        assert_eq!(answer.status, 201, "{}", answer.body);
        assert_eq!(
            answer.body["spec"]["audiences"],
            serde_json::json!(["https://oidc.example.com/cluster-1"])
        );
        assert_eq!(answer.body["spec"]["expirationSeconds"], 3600);
        let claims = tokens::claims_of(answer.body["status"]["token"].as_str().expect("token"));
        assert_eq!(
            claims["aud"],
            serde_json::json!(["https://oidc.example.com/cluster-1"])
        );
        assert_eq!(claims["iss"], "https://oidc.example.com/cluster-1");
        assert_eq!(
            claims["exp"].as_i64(),
            claims["iat"].as_i64().map(|i| i + 3600)
        );
    }
}

#[test]
fn token_request_refuses_what_the_api_server_refuses() {
    let emu = KubeEmulatorBuilder::new()
        .token("good")
        .token_signer(SigningKey::rs256())
        .build();
    emu.create_service_account("ns", "sa", &[]);
    let ok = token_request(&["nats"], Some(600));

    let missing = post_token_request(&emu, "ns", "nope", &ok, Some("good"));
    assert_status(&missing, 404, "NotFound");
    assert_eq!(
        missing.body["message"],
        "serviceaccounts \"nope\" not found"
    );
    assert_eq!(
        missing.body["details"],
        serde_json::json!({ "name": "nope", "kind": "serviceaccounts" })
    );
    // Another namespace's account of the same name is not it.
    assert_status(
        &post_token_request(&emu, "other", "sa", &ok, Some("good")),
        404,
        "NotFound",
    );

    for (secs, detail) in [
        (599, "may not specify a duration less than 10 minutes"),
        (0, "may not specify a duration less than 10 minutes"),
        (
            (1 << 32) + 1,
            "may not specify a duration larger than 2^32 seconds",
        ),
    ] {
        let refused = post_token_request(
            &emu,
            "ns",
            "sa",
            &token_request(&["nats"], Some(secs)),
            Some("good"),
        );
        assert_status(&refused, 422, "Invalid");
        assert_eq!(
            refused.body["message"],
            format!(
                "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: \
                 Invalid value: {secs}: {detail}"
            )
        );
        assert_eq!(
            refused.body["details"]["causes"][0],
            serde_json::json!({
                "reason": "FieldValueInvalid",
                "message": format!("Invalid value: {secs}: {detail}"),
                "field": "spec.expirationSeconds",
            })
        );
        assert_eq!(refused.body["details"]["kind"], "TokenRequest");
        assert_eq!(refused.body["details"]["group"], "authentication.k8s.io");
    }
    // The lower bound itself is fine; an unknown account is reported before a bad lifetime.
    assert_eq!(
        post_token_request(&emu, "ns", "sa", &ok, Some("good")).status,
        201
    );
    assert_status(
        &post_token_request(
            &emu,
            "ns",
            "nope",
            &token_request(&[], Some(1)),
            Some("good"),
        ),
        404,
        "NotFound",
    );
    // The body's name must be the path's.
    let mut renamed = ok.clone();
    renamed["metadata"] = serde_json::json!({ "name": "other" });
    let refused = post_token_request(&emu, "ns", "sa", &renamed, Some("good"));
    assert_status(&refused, 422, "Invalid");
    assert_eq!(
        refused.body["details"]["causes"][0]["field"],
        "metadata.name"
    );

    // Credentials are checked first, as everywhere.
    assert_status(
        &post_token_request(&emu, "ns", "sa", &ok, None),
        401,
        "Unauthorized",
    );
    assert_status(
        &post_token_request(&emu, "ns", "sa", &ok, Some("bad")),
        401,
        "Unauthorized",
    );
    emu.set_oidc_anonymous(true);
    let anonymous = post_token_request(&emu, "ns", "sa", &ok, None);
    assert_status(&anonymous, 403, "Forbidden");
    assert_eq!(
        anonymous.body["message"],
        "serviceaccounts \"sa\" is forbidden: User \"system:anonymous\" cannot create resource \
         \"serviceaccounts/token\" in API group \"\" in the namespace \"ns\""
    );
    // Only create is implemented on the subresource.
    assert_status(
        &get_with(
            &emu,
            "/api/v1/namespaces/ns/serviceaccounts/sa/token",
            Some("good"),
        ),
        405,
        "MethodNotAllowed",
    );
    // Faults apply to it like to any request.
    emu.fail_next_of(RequestKind::TokenRequest, 1, 503, Some(1));
    assert_status(
        &post_token_request(&emu, "ns", "sa", &ok, Some("good")),
        503,
        "ServiceUnavailable",
    );
    let statuses: Vec<u16> = emu
        .requests_of(RequestKind::TokenRequest)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses,
        [404, 404, 422, 422, 422, 201, 404, 422, 401, 401, 403, 405, 503]
    );

    // An emulator nobody gave a signer cannot issue tokens and says why.
    let unsigned = KubeEmulatorBuilder::new().token("good").build();
    unsigned.create_service_account("ns", "sa", &[]);
    let failed = post_token_request(&unsigned, "ns", "sa", &ok, Some("good"));
    assert_status(&failed, 500, "InternalError");
    assert!(failed.body["message"]
        .as_str()
        .is_some_and(|m| m.contains("token_signer")));
    unsigned.set_token_signer(SigningKey::rs256());
    assert_eq!(
        post_token_request(&unsigned, "ns", "sa", &ok, Some("good")).status,
        201
    );
    assert_eq!(
        get(&unsigned, "/openid/v1/jwks").body["keys"][0]["kid"],
        SigningKey::rs256().kid()
    );
}

#[test]
fn kubectl_creates_tokens_over_tls() {
    require_kubectl();
    let key = SigningKey::rs256();
    let emu = KubeEmulatorBuilder::new()
        .tls(TlsOptions::new())
        .token_signer(key.clone())
        .build();
    let uid = emu.create_service_account("my-app", "client", &[]);
    let home = tempfile::tempdir().expect("tempdir");
    let text = kubeconfig(
        &emu.url(),
        &[format!("certificate-authority-data: {}", b64(emu.ca_pem()))],
        &[format!("token: {}", emu.token())],
    );
    let path = write_kubeconfig(home.path(), "kubeconfig", &text);
    let kubectl = |args: &[&str]| {
        kubectl_command(home.path(), &path)
            .args(args)
            .output()
            .expect("run kubectl")
    };
    let out = kubectl(&[
        "-n",
        "my-app",
        "create",
        "token",
        "client",
        "--audience",
        "nats",
        "--duration",
        "10m",
    ]);
    assert!(
        out.status.success(),
        "{}\nrequests: {:?}",
        String::from_utf8_lossy(&out.stderr),
        emu.requests()
    );
    // kubectl sends the TokenRequest (as protobuf) with its bearer token and asks for no API
    // discovery (/api, /apis); the only other request is the `/version` probe of the
    // google-cloud-sdk kubectl dispatcher installed here, which picks a kubectl by server version.
    let seen = emu.requests();
    let token_requests: Vec<_> = seen
        .iter()
        .filter(|r| r.kind == RequestKind::TokenRequest)
        .collect();
    assert_eq!(token_requests.len(), 1, "{seen:?}");
    assert!(token_requests[0].authorization_present);
    assert!(
        seen.iter()
            .all(|r| r.kind == RequestKind::TokenRequest || r.path == "/version"),
        "{seen:?}"
    );
    let token = String::from_utf8(out.stdout).expect("utf8");
    let token = token.trim_end();
    let claims = verify_against(&emu, token).expect("verifies against the served key set");
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["uid"], uid);
    assert_eq!(
        claims["exp"].as_i64(),
        claims["iat"].as_i64().map(|i| i + 600)
    );

    let bound = kubectl(&[
        "-n",
        "my-app",
        "create",
        "token",
        "client",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "web-0",
        "--bound-object-uid",
        "pod-uid",
    ]);
    assert!(
        bound.status.success(),
        "{}",
        String::from_utf8_lossy(&bound.stderr)
    );
    let claims = tokens::claims_of(String::from_utf8_lossy(&bound.stdout).trim_end());
    assert_eq!(claims["aud"], serde_json::json!([emu.issuer()]));
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "web-0");
    assert_eq!(
        claims["exp"].as_i64(),
        claims["iat"].as_i64().map(|i| i + 3600)
    );

    for (args, message) in [
        (
            vec![
                "-n",
                "my-app",
                "create",
                "token",
                "client",
                "--duration",
                "5m",
            ],
            "error: failed to create token: TokenRequest.authentication.k8s.io \"\" is invalid: \
             spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 \
             minutes",
        ),
        (
            vec!["-n", "my-app", "create", "token", "nope"],
            "error: failed to create token: serviceaccounts \"nope\" not found",
        ),
    ] {
        let out = kubectl(&args);
        assert!(!out.status.success());
        assert!(out.stdout.is_empty());
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), message);
    }
}

// ---------------------------------------------------------------------------------------------
// Events (`POST /api/v1/namespaces/{ns}/events`).

/// A core/v1 Event `name` in `ns` about the ServiceAccount `ns/sa`, as client-go's recorder
/// writes one.
fn event_about(ns: &str, sa: &str, name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": { "name": name, "namespace": ns },
        "involvedObject": {
            "apiVersion": "v1", "kind": "ServiceAccount", "namespace": ns, "name": sa,
            "uid": "u1", "resourceVersion": "7",
        },
        "type": "Warning",
        "reason": "Test",
        "message": "something about it",
        "source": { "component": "test" },
        "count": 1,
    })
}

/// POSTs `body` to the Events of `ns` with the emulator's token.
fn post_event(emu: &KubeEmulator, ns: &str, body: &Value) -> Answer {
    post_event_raw(emu, ns, &body.to_string())
}

fn post_event_raw(emu: &KubeEmulator, ns: &str, body: &str) -> Answer {
    post(
        emu,
        &format!("/api/v1/namespaces/{ns}/events"),
        body,
        Some(&emu.token()),
    )
}

#[test]
fn an_event_is_created_once_by_name_and_kept_for_the_test() {
    let emu = KubeEmulator::start();
    emu.create_service_account("team-a", "app", &[]);
    let rv: u64 = emu.resource_version().parse().unwrap();
    let created = post_event(&emu, "team-a", &event_about("team-a", "app", "app.1"));
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.content_type, "application/json");
    assert_eq!(created.body["kind"], "Event");
    assert_eq!(created.body["apiVersion"], "v1");
    let meta = &created.body["metadata"];
    assert_eq!(meta["name"], "app.1");
    assert_eq!(meta["namespace"], "team-a");
    assert!(meta["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(meta["creationTimestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    // One resourceVersion sequence for every object.
    assert_eq!(meta["resourceVersion"], (rv + 1).to_string());
    assert_eq!(emu.resource_version(), (rv + 1).to_string());
    assert_eq!(created.body["message"], "something about it");
    assert_eq!(created.body["involvedObject"]["uid"], "u1");

    // The same name again: 409 AlreadyExists, the first one stays.
    let mut again = event_about("team-a", "app", "app.1");
    again["message"] = "another text".into();
    let refused = post_event(&emu, "team-a", &again);
    assert_status(&refused, 409, "AlreadyExists");
    assert_eq!(refused.body["message"], "events \"app.1\" already exists");
    assert_eq!(
        refused.body["details"],
        serde_json::json!({ "name": "app.1", "kind": "events" })
    );
    // The same name in another namespace is another Event.
    let other = post_event(&emu, "team-b", &event_about("team-b", "app", "app.1"));
    assert_eq!(other.status, 201);
    // generateName gets five random characters; the namespace comes from the path.
    let mut generated = event_about("team-a", "app", "");
    generated["metadata"] = serde_json::json!({ "generateName": "app." });
    let answer = post_event(&emu, "team-a", &generated);
    assert_eq!(answer.status, 201, "{}", answer.body);
    let name = answer.body["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(name.starts_with("app.") && name.len() == 9, "{name}");
    assert_eq!(answer.body["metadata"]["namespace"], "team-a");

    assert_eq!(emu.events().len(), 3);
    let about: Vec<Value> = emu
        .events_about("team-a", "app")
        .iter()
        .map(|e| e["metadata"]["name"].clone())
        .collect();
    assert_eq!(about, [Value::from("app.1"), Value::from(name)]);
    assert_eq!(
        emu.events_about("team-a", "app")[0]["message"],
        "something about it"
    );
    assert_eq!(emu.event_requests(), 4);
    assert_eq!(emu.requests_of(RequestKind::Events).len(), 4);
}

#[test]
fn events_are_refused_as_the_api_server_refuses_them() {
    let emu = KubeEmulator::start();
    let ok = event_about("team-a", "app", "e1");
    let refused = |ns: &str, body: &Value, code: u16, reason: &str| {
        let answer = post_event(&emu, ns, body);
        assert_status(&answer, code, reason);
        answer.body
    };

    // The object's namespace must be the path's.
    let body = refused("team-b", &ok, 400, "BadRequest");
    assert_eq!(
        body["message"],
        "the namespace of the provided object does not match the namespace sent on the request"
    );
    // Without one it is the path's, and the involvedObject must then be there too.
    let mut elsewhere = ok.clone();
    elsewhere["metadata"]["namespace"] = "".into();
    let body = refused("team-b", &elsewhere, 422, "Invalid");
    assert_eq!(
        body["message"],
        "Event \"e1\" is invalid: involvedObject.namespace: Invalid value: \"team-a\": does not match event.namespace"
    );
    assert_eq!(
        body["details"],
        serde_json::json!({
            "name": "e1",
            "kind": "Event",
            "causes": [{
                "reason": "FieldValueInvalid",
                "message": "Invalid value: \"team-a\": does not match event.namespace",
                "field": "involvedObject.namespace",
            }],
        })
    );
    // No involvedObject: it has no namespace, which only an Event in "" or "default" may have.
    let mut bare = ok.clone();
    bare.as_object_mut().unwrap().remove("involvedObject");
    let body = refused("team-a", &bare, 422, "Invalid");
    assert!(body["message"].as_str().unwrap().ends_with(
        "involvedObject.namespace: Invalid value: \"\": does not match event.namespace"
    ));
    // A name or generateName is required, and a name must be a path segment.
    let mut nameless = ok.clone();
    nameless["metadata"] = serde_json::json!({ "namespace": "team-a" });
    let body = refused("team-a", &nameless, 422, "Invalid");
    assert_eq!(
        body["message"],
        "Event \"\" is invalid: metadata.name: Required value: name or generateName is required"
    );
    let mut slash = ok.clone();
    slash["metadata"]["name"] = "a/b".into();
    let body = refused("team-a", &slash, 422, "Invalid");
    assert_eq!(
        body["message"],
        "Event \"a/b\" is invalid: metadata.name: Invalid value: \"a/b\": may not contain '/'"
    );
    // With an eventTime the reporting fields are required too (all errors in one answer).
    let mut timed = ok.clone();
    timed["eventTime"] = "2025-01-01T00:00:00.000000Z".into();
    let body = refused("team-a", &timed, 422, "Invalid");
    assert_eq!(
        body["message"],
        "Event \"e1\" is invalid: [reportingController: Required value, reportingInstance: Required value, action: Required value]"
    );
    // Not an Event, not JSON.
    let mut pod = ok.clone();
    pod["kind"] = "Pod".into();
    refused("team-a", &pod, 400, "BadRequest");
    let answer = post_event_raw(&emu, "team-a", "{not json");
    assert_status(&answer, 400, "BadRequest");
    assert!(answer.body["message"]
        .as_str()
        .unwrap()
        .starts_with("Event in version \"v1\" cannot be handled as a Event: "));
    assert!(emu.events().is_empty(), "nothing refused is stored");
    // Only create is emulated.
    assert_status(
        &get(&emu, "/api/v1/namespaces/team-a/events"),
        405,
        "MethodNotAllowed",
    );
}

#[test]
fn creating_events_can_be_forbidden_as_without_the_rbac_rule() {
    let emu = KubeEmulator::start();
    let event = event_about("team-a", "app", "e1");
    emu.set_create_events_allowed(false);
    let answer = post_event(&emu, "team-a", &event);
    assert_status(&answer, 403, "Forbidden");
    assert_eq!(
        answer.body["message"],
        "events is forbidden: User \"system:serviceaccount:nats:nats-k8s-oidc-callout\" \
         cannot create resource \"events\" in API group \"\" in the namespace \"team-a\""
    );
    // Authentication comes first.
    let path = "/api/v1/namespaces/team-a/events";
    let unauthenticated = post(&emu, path, &event.to_string(), Some("wrong"));
    assert_status(&unauthenticated, 401, "Unauthorized");
    emu.set_create_events_allowed(true);
    assert_eq!(post_event(&emu, "team-a", &event).status, 201);
    let statuses: Vec<u16> = emu
        .requests_of(RequestKind::Events)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [403, 401, 201]);
    assert_eq!(emu.events().len(), 1);
}

// Pods: the same collection machinery as ServiceAccounts, one resourceVersion sequence for both.

/// GET `path` with the emulator's token and this `Accept` header; the status and the raw body.
fn get_raw(emu: &KubeEmulator, path: &str, accept: &str) -> (u16, String) {
    let mut resp = agent_for(emu)
        .get(format!("{}{path}", emu.url()))
        .header("Authorization", format!("Bearer {}", emu.token()))
        .header("Accept", accept)
        .call()
        .expect("request reaches the emulator");
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().expect("a body"))
}

/// The resourceVersion of a watch event's object, as a number.
fn event_rv(event: &Value) -> u64 {
    event["object"]["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .expect("a numeric resourceVersion")
}

#[test]
fn pods_list_page_by_page_at_the_resource_version_they_share_with_service_accounts() {
    let emu = KubeEmulator::start();
    let before: u64 = emu.resource_version().parse().expect("rv");
    for name in ["a", "b", "c"] {
        emu.create_pod("team-a", &format!("web-{name}"), "web");
        emu.create_service_account("team-a", name, &[]);
    }
    // One sequence for both kinds: six writes, six versions.
    assert_eq!(emu.resource_version(), (before + 6).to_string());

    let first = get(&emu, "/api/v1/pods?limit=2");
    assert_eq!(first.status, 200);
    assert_eq!(first.body["kind"], "PodList");
    assert_eq!(first.body["apiVersion"], "v1");
    assert_eq!(item_names(&first.body), ["web-a", "web-b"]);
    assert_eq!(first.body["metadata"]["remainingItemCount"], 1);
    assert_eq!(
        first.body["metadata"]["resourceVersion"],
        emu.resource_version().as_str()
    );
    let item = &first.body["items"][0];
    assert!(item.get("kind").is_none() && item.get("apiVersion").is_none());

    // Writes of either kind between pages are not seen.
    emu.create_pod("team-a", "web-bb", "web");
    emu.delete_pod("team-a", "web-c");
    emu.create_service_account("team-a", "d", &[]);
    let token = first.body["metadata"]["continue"]
        .as_str()
        .expect("continue");
    let second = get(&emu, &format!("/api/v1/pods?limit=2&continue={token}"));
    assert_eq!(item_names(&second.body), ["web-c"]);
    assert_eq!(
        second.body["metadata"]["resourceVersion"],
        first.body["metadata"]["resourceVersion"]
    );
    assert!(second.body["metadata"].get("continue").is_none());

    // A pod list's continue token does not continue a ServiceAccount list, and it expires.
    let again = get(&emu, "/api/v1/pods?limit=1");
    let token = again.body["metadata"]["continue"]
        .as_str()
        .expect("continue");
    let crossed = get(&emu, &format!("/api/v1/serviceaccounts?continue={token}"));
    assert_status(&crossed, 410, "Expired");
    emu.expire_continue_tokens();
    let expired = get(&emu, &format!("/api/v1/pods?limit=1&continue={token}"));
    assert_status(&expired, 410, "Expired");

    // Each kind lists only its own objects, and is counted as its own kind.
    let accounts = get(&emu, "/api/v1/serviceaccounts");
    assert_eq!(item_names(&accounts.body), ["a", "b", "c", "d"]);
    let pods = get(&emu, "/api/v1/pods?resourceVersion=0&limit=1");
    assert_eq!(item_names(&pods.body), ["web-a", "web-b", "web-bb"]);
    assert_eq!(emu.requests_counted(RequestKind::PodList), 5);
    assert_eq!(emu.list_requests(), 2, "ServiceAccount lists only");
    assert_eq!(emu.requests_of(RequestKind::PodList).len(), 5);
}

#[test]
fn pods_are_full_deployment_pods_or_their_metadata_only() {
    let emu = KubeEmulator::start();
    let uid = emu.create_pod("team-a", "web-7d9f8b6c5d-x2k4p", "web");
    emu.create_pod_on_node("team-a", "web-7d9f8b6c5d-q8m2n", "web", "node-7");
    assert_eq!(
        emu.pod_uid("team-a", "web-7d9f8b6c5d-x2k4p").as_deref(),
        Some(uid.as_str())
    );
    assert_eq!(emu.pod_uid("team-a", "nope"), None);

    let (status, raw) = get_raw(
        &emu,
        "/api/v1/namespaces/team-a/pods/web-7d9f8b6c5d-x2k4p",
        "application/json",
    );
    assert_eq!(status, 200);
    // About the size of a real Deployment's pod.
    assert!((4096..=8192).contains(&raw.len()), "{} bytes", raw.len());
    let pod: Value = serde_json::from_str(&raw).expect("JSON");
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["apiVersion"], "v1");
    assert_eq!(
        Some(&pod),
        emu.pod("team-a", "web-7d9f8b6c5d-x2k4p").as_ref()
    );
    let meta = &pod["metadata"];
    assert_eq!(meta["uid"], uid.as_str());
    assert_eq!(meta["generateName"], "web-7d9f8b6c5d-");
    assert_eq!(meta["ownerReferences"][0]["kind"], "ReplicaSet");
    assert_eq!(meta["ownerReferences"][0]["name"], "web-7d9f8b6c5d");
    assert_eq!(meta["ownerReferences"][0]["controller"], true);
    assert!(meta["labels"]["pod-template-hash"].is_string());
    assert!(meta["managedFields"]
        .as_array()
        .is_some_and(|m| m.len() == 2));
    assert!(meta.get("deletionTimestamp").is_none());
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], "web");
    assert_eq!(spec["nodeName"], "node-1");
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 2);
    for field in [
        "env",
        "ports",
        "resources",
        "livenessProbe",
        "readinessProbe",
    ] {
        assert!(!containers[0][field].is_null(), "containers[0].{field}");
    }
    let access = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["projected"].is_object())
        .expect("the projected token volume");
    let access_name = access["name"].as_str().expect("name");
    assert!(access_name.starts_with("kube-api-access-") && access_name.len() == 21);
    assert_eq!(
        access["projected"]["sources"][0]["serviceAccountToken"]["path"],
        "token"
    );
    assert!(containers.iter().all(|c| c["volumeMounts"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["name"] == access_name))));
    let status = &pod["status"];
    assert_eq!(status["phase"], "Running");
    assert!(status["podIP"].is_string());
    assert_eq!(status["conditions"].as_array().map(Vec::len), Some(5));
    assert_eq!(status["containerStatuses"][0]["ready"], true);
    let other = emu.pod("team-a", "web-7d9f8b6c5d-q8m2n").expect("pod");
    assert_eq!(other["spec"]["nodeName"], "node-7");

    // Metadata only: one object, and a list.
    let one = get_accept(
        &emu,
        "/api/v1/namespaces/team-a/pods/web-7d9f8b6c5d-x2k4p",
        METADATA,
    );
    assert_eq!(one.body["kind"], "PartialObjectMetadata");
    assert_eq!(one.body["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(one.body["metadata"], pod["metadata"]);
    assert!(one.body.get("spec").is_none() && one.body.get("status").is_none());
    let list = get_accept(&emu, "/api/v1/pods", METADATA_LIST);
    assert_eq!(list.body["kind"], "PartialObjectMetadataList");
    let items = list.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| i["kind"] == "PartialObjectMetadata"
        && i.get("spec").is_none()
        && i["metadata"]["ownerReferences"].is_array()));
    // The API server's 406s name the pod types.
    for (path, accept, type_name) in [
        (
            "/api/v1/namespaces/team-a/pods/web-7d9f8b6c5d-x2k4p",
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            "(*core.Pod)",
        ),
        (
            "/api/v1/pods",
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
            "(*core.PodList)",
        ),
    ] {
        let refused = get_accept(&emu, path, accept);
        assert_status(&refused, 406, "NotAcceptable");
        let message = refused.body["message"].as_str().expect("message");
        assert!(message.ends_with(type_name), "{message}");
    }
}

#[test]
fn pod_and_service_account_watches_each_see_only_their_kind() {
    let emu = KubeEmulator::start();
    emu.create_pod("team-a", "web-1", "web");
    let listed = get(&emu, "/api/v1/pods");
    let from = listed.body["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    let mut pods = Watch::open(
        &emu,
        &format!(
            "/api/v1/pods?watch=1&resourceVersion={from}&allowWatchBookmarks=true\
             &timeoutSeconds=2"
        ),
    );
    assert!(emu.wait_for_open_watches(1, Duration::from_secs(2)));
    emu.create_pod("team-a", "web-2", "web");
    emu.create_service_account("team-a", "web", &[]);
    emu.terminate_pod("team-a", "web-2", 30);
    emu.update_annotations("team-a", "web", &[("k", "v")]);
    emu.delete_pod("team-a", "web-2");
    emu.delete_service_account("team-a", "web");

    let events = pods.rest();
    let (bookmarks, changes): (Vec<Value>, Vec<Value>) =
        events.into_iter().partition(|e| e["type"] == "BOOKMARK");
    assert_eq!(
        names(&changes),
        ["ADDED web-2", "MODIFIED web-2", "DELETED web-2"]
    );
    assert!(changes.iter().all(|e| e["object"]["kind"] == "Pod"));
    let terminating = &changes[1]["object"]["metadata"];
    assert_eq!(terminating["deletionGracePeriodSeconds"], 30);
    assert!(terminating["deletionTimestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(
        changes[2]["object"]["metadata"]["deletionTimestamp"], terminating["deletionTimestamp"],
        "the last state"
    );
    assert!(!bookmarks.is_empty(), "a bookmark before the deadline");
    assert!(bookmarks.iter().all(|b| b["object"]["kind"] == "Pod"));

    // The ServiceAccount watch from the same version sees the other half.
    let mut accounts = Watch::open(
        &emu,
        &format!("/api/v1/serviceaccounts?watch=1&resourceVersion={from}&timeoutSeconds=1"),
    );
    let seen = accounts.rest();
    assert_eq!(names(&seen), ["ADDED web", "MODIFIED web", "DELETED web"]);
    // One sequence: the two kinds' versions interleave.
    let mut versions: Vec<u64> = changes.iter().chain(&seen).map(event_rv).collect();
    versions.sort_unstable();
    let first: u64 = from.parse().expect("rv");
    assert_eq!(versions, ((first + 1)..=(first + 6)).collect::<Vec<_>>());

    // A metadata watch of pods: metadata-only objects, with the deletion metadata.
    let mut meta = Watch::open_accept(
        &emu,
        &format!("/api/v1/pods?watch=1&resourceVersion={from}&timeoutSeconds=1"),
        METADATA,
    );
    let meta_events = meta.rest();
    assert_eq!(names(&meta_events), names(&changes));
    assert!(meta_events.iter().all(
        |e| e["object"]["kind"] == "PartialObjectMetadata" && e["object"].get("spec").is_none()
    ));
    assert_eq!(
        meta_events[1]["object"]["metadata"]["deletionGracePeriodSeconds"],
        30
    );
    assert_eq!(emu.requests_counted(RequestKind::PodWatch), 2);
    assert_eq!(emu.watch_requests(), 1, "ServiceAccount watches only");
}

#[test]
fn pod_watches_and_exact_lists_older_than_the_history_get_410() {
    assert_too_old_versions_get_410("/api/v1/pods", |emu, name| {
        emu.create_pod("ns", name, "sa");
    });
}

#[test]
fn a_namespace_path_scopes_pods_and_a_missing_pod_is_404() {
    let emu = KubeEmulator::start();
    let from = emu.resource_version();
    emu.create_pod("team-a", "web-1", "web");
    emu.create_pod("team-b", "web-1", "web");
    emu.create_pod("team-a", "db-1", "db");
    emu.create_service_account("team-a", "web", &[]);

    let ns = get(&emu, "/api/v1/namespaces/team-a/pods");
    assert_eq!(ns.body["kind"], "PodList");
    assert_eq!(item_names(&ns.body), ["db-1", "web-1"]);
    let mut watch = Watch::open(
        &emu,
        &format!("/api/v1/namespaces/team-b/pods?watch=1&resourceVersion={from}&timeoutSeconds=1"),
    );
    assert_eq!(names(&watch.rest()), ["ADDED web-1"]);

    let found = get(&emu, "/api/v1/namespaces/team-b/pods/web-1");
    assert_eq!(found.status, 200);
    assert_eq!(found.body["metadata"]["namespace"], "team-b");
    let missing = get(&emu, "/api/v1/namespaces/team-b/pods/db-1");
    assert_status(&missing, 404, "NotFound");
    assert_eq!(missing.body["message"], "pods \"db-1\" not found");
    assert_eq!(
        missing.body["details"],
        serde_json::json!({ "name": "db-1", "kind": "pods" })
    );
    // Shaped as the ServiceAccount one.
    let account = get(&emu, "/api/v1/namespaces/team-b/serviceaccounts/db-1");
    assert_eq!(account.body["details"]["kind"], "serviceaccounts");
    assert_eq!(
        missing
            .body
            .as_object()
            .map(|o| o.keys().collect::<Vec<_>>()),
        account
            .body
            .as_object()
            .map(|o| o.keys().collect::<Vec<_>>())
    );
    assert_eq!(emu.requests_counted(RequestKind::PodGet), 2);
    assert_eq!(emu.get_requests(), 1, "ServiceAccount GETs only");
}

#[test]
fn pod_requests_need_credentials_and_are_refused_naming_pods() {
    let emu = KubeEmulatorBuilder::new().token("good").build();
    emu.create_pod("team-a", "web-1", "web");
    assert_status(&get_with(&emu, "/api/v1/pods", None), 401, "Unauthorized");
    assert_status(
        &get_with(&emu, "/api/v1/namespaces/team-a/pods/web-1", Some("bad")),
        401,
        "Unauthorized",
    );
    emu.set_oidc_anonymous(true);
    let cluster = get_with(&emu, "/api/v1/pods?watch=1", None);
    assert_status(&cluster, 403, "Forbidden");
    assert_eq!(
        cluster.body["message"],
        "pods is forbidden: User \"system:anonymous\" cannot watch resource \"pods\" in API \
         group \"\" at the cluster scope"
    );
    let ns = get_with(&emu, "/api/v1/namespaces/team-a/pods", None);
    assert_eq!(
        ns.body["message"],
        "pods is forbidden: User \"system:anonymous\" cannot list resource \"pods\" in API \
         group \"\" in the namespace \"team-a\""
    );
    assert_eq!(get_with(&emu, "/api/v1/pods", Some("good")).status, 200);
    // Faults can single pod requests out.
    emu.fail_next_of(RequestKind::PodList, 1, 503, None);
    assert_eq!(
        get_with(&emu, "/api/v1/serviceaccounts", Some("good")).status,
        200
    );
    assert_status(
        &get_with(&emu, "/api/v1/pods", Some("good")),
        503,
        "ServiceUnavailable",
    );
}

#[test]
fn bytes_served_are_counted_per_kind_for_full_and_metadata_pods() {
    let emu = KubeEmulator::start();
    emu.seed_realistic_pods(40, 10);
    let pod = emu.pod("team-00001", "pod-0000013").expect("seeded");
    assert_eq!(pod["spec"]["serviceAccountName"], "sa-0000013");
    assert_eq!(pod["metadata"]["generateName"], "pod-");
    assert!(emu.pod_uid("team-00003", "pod-0000039").is_some());
    assert!(emu.pod_uid("team-00003", "pod-0000040").is_none());

    let (status, full) = get_raw(&emu, "/api/v1/pods", "application/json");
    assert_eq!(status, 200);
    // The body and its closing newline.
    assert_eq!(emu.bytes_served(RequestKind::PodList), full.len() as u64);
    let (_, meta) = get_raw(&emu, "/api/v1/pods", METADATA_LIST);
    let meta_bytes = emu.bytes_served(RequestKind::PodList) - full.len() as u64;
    assert_eq!(meta_bytes, meta.len() as u64);
    let (full_per_pod, meta_per_pod) = (full.len() / 40, meta.len() / 40);
    assert!(full_per_pod > 4096, "{full_per_pod} bytes a pod");
    assert!(
        meta_per_pod * 2 < full_per_pod,
        "{meta_per_pod} bytes a pod"
    );

    let mut watch = Watch::open(
        &emu,
        "/api/v1/namespaces/team-00000/pods?watch=1&resourceVersion=0&timeoutSeconds=1",
    );
    let events = watch.rest();
    assert_eq!(events.len(), 10);
    let lines: u64 = events.iter().map(|e| e.to_string().len() as u64 + 1).sum();
    assert_eq!(emu.bytes_served(RequestKind::PodWatch), lines);
    // Other kinds are counted apart.
    assert_eq!(emu.bytes_served(RequestKind::List), 0);
    let (_, accounts) = get_raw(&emu, "/api/v1/serviceaccounts", "application/json");
    assert_eq!(emu.bytes_served(RequestKind::List), accounts.len() as u64);
}
