//! The watch loop's API calls over HTTP: list pages and watch streams of a cluster-wide
//! collection, each watch stream read by its own thread. For ServiceAccounts both ask for
//! metadata only (`PartialObjectMetadataList` pages, `PartialObjectMetadata` events): all the
//! service reads of an object, without its other fields.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{debug, warn};
use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use url::form_urlencoded;

use super::{
    Collection, EventStream, ListPage, StreamItem, WatchApi, WatchEvent, WatchSettings,
    STREAM_BUFFER, STREAM_POLL,
};
use crate::kube::cache::Change;
use crate::kube::client::{METADATA_ACCEPT, METADATA_LIST_ACCEPT};
use crate::kube::{ApiClient, ApiStatus, KubeError, LineStream};

/// [`WatchApi`] over an [`ApiClient`], for collection `C`.
pub(super) struct ClientApi<C> {
    client: Arc<ApiClient>,
    settings: WatchSettings,
    collection: PhantomData<fn() -> C>,
}

impl<C: Collection> ClientApi<C> {
    /// The calls of the loop, made through `client`.
    pub(super) fn new(client: Arc<ApiClient>, settings: WatchSettings) -> ClientApi<C> {
        ClientApi {
            client,
            settings,
            collection: PhantomData,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(default, rename = "continue")]
    continue_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(bound = "R: Deserialize<'de>")]
struct RawList<R> {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default = "Option::default")]
    items: Option<Vec<R>>,
}

impl<R> RawList<R> {
    fn into_page<C: Collection<Raw = R>>(self) -> ListPage<C::Object> {
        let mut items = Vec::new();
        for raw in self.items.unwrap_or_default() {
            match C::decode(raw) {
                Ok(object) => items.push(object),
                Err(problem) => warn!("skipping a listed {}: {problem}", C::KIND),
            }
        }
        ListPage {
            items,
            resource_version: self.metadata.resource_version.unwrap_or_default(),
            continue_token: self.metadata.continue_token,
        }
    }
}

/// The object of a watch event, read straight into the type its event `type` calls for (no
/// intermediate `serde_json::Value` when, as the API server writes them, `type` comes first).
#[derive(Debug)]
enum EventObject<R> {
    /// ADDED, MODIFIED, DELETED or BOOKMARK: an object (for a bookmark, only its
    /// resourceVersion counts).
    Object(R),
    /// ERROR: a Status, as the server sent it.
    Status(ApiStatus),
    /// Any other type: not read.
    Ignored,
}

/// One watch line: `{"type": ..., "object": ...}`.
#[derive(Debug)]
struct RawEvent<R> {
    kind: String,
    object: EventObject<R>,
}

/// What an event of type `kind` carries; objects are read as `R`.
enum ObjectKind<R> {
    Object(PhantomData<fn() -> R>),
    Status,
    Ignored,
}

impl<R> ObjectKind<R> {
    fn of(kind: &str) -> ObjectKind<R> {
        match kind {
            "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" => ObjectKind::Object(PhantomData),
            "ERROR" => ObjectKind::Status,
            _ => ObjectKind::Ignored,
        }
    }
}

/// Reads an event's object as its type calls for: from the stream, or from a value buffered
/// because it came before `type`.
impl<'de, R: Deserialize<'de>> DeserializeSeed<'de> for ObjectKind<R> {
    type Value = EventObject<R>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<EventObject<R>, D::Error> {
        Ok(match self {
            ObjectKind::Object(_) => EventObject::Object(R::deserialize(d)?),
            ObjectKind::Status => EventObject::Status(ApiStatus::deserialize(d)?),
            ObjectKind::Ignored => {
                IgnoredAny::deserialize(d)?;
                EventObject::Ignored
            }
        })
    }
}

impl<'de, R: DeserializeOwned> Deserialize<'de> for RawEvent<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawEvent<R>, D::Error> {
        struct Event<R>(PhantomData<fn() -> R>);
        impl<'de, R: DeserializeOwned> Visitor<'de> for Event<R> {
            type Value = RawEvent<R>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a watch event")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEvent<R>, A::Error> {
                let mut kind: Option<String> = None;
                let mut object: Option<EventObject<R>> = None;
                // An object before its type (not how the API server writes events) is buffered.
                let mut early: Option<serde_json::Value> = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match &*key {
                        "type" => kind = Some(map.next_value()?),
                        "object" => match kind.as_deref().map(ObjectKind::<R>::of) {
                            Some(of) => object = Some(map.next_value_seed(of)?),
                            None => early = Some(map.next_value()?),
                        },
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
                let object = match object {
                    Some(object) => object,
                    // A missing object reads as `null`, which only an unknown type accepts.
                    None => ObjectKind::<R>::of(&kind)
                        .deserialize(early.unwrap_or_default())
                        .map_err(de::Error::custom)?,
                };
                Ok(RawEvent { kind, object })
            }
        }
        d.deserialize_map(Event(PhantomData))
    }
}

/// Decodes one line of a watch stream of collection `C`.
pub(super) fn parse_watch_line<C: Collection>(
    line: &[u8],
) -> Result<WatchEvent<C::Object>, KubeError> {
    let event: RawEvent<C::Raw> = serde_json::from_slice(line).map_err(KubeError::Decode)?;
    match (event.kind.as_str(), event.object) {
        (_, EventObject::Status(status)) => Ok(WatchEvent::Error(status)),
        ("BOOKMARK", EventObject::Object(raw)) => Ok(WatchEvent::Bookmark {
            resource_version: C::raw_resource_version(&raw).unwrap_or_default().to_owned(),
        }),
        (kind, EventObject::Object(raw)) => {
            let resource_version = C::raw_resource_version(&raw).map(str::to_owned);
            match C::decode(raw) {
                Ok(object) => Ok(WatchEvent::Change {
                    change: if kind == "DELETED" {
                        Change::Delete(object)
                    } else {
                        Change::Upsert(object)
                    },
                    resource_version,
                }),
                Err(problem) => {
                    warn!("skipping a {kind} {} event: {problem}", C::KIND);
                    Ok(WatchEvent::Skipped { resource_version })
                }
            }
        }
        (other, EventObject::Ignored) => {
            debug!("skipping a watch event of unknown type {other:?}");
            Ok(WatchEvent::Skipped {
                resource_version: None,
            })
        }
    }
}

impl<C: Collection> WatchApi<C::Object> for ClientApi<C> {
    type Stream = ChannelStream<C::Object>;

    /// A page of at most `page_size` objects; when its answer is larger than the client's body
    /// limit, the same page is asked again with half as many objects, down to one. Objects can
    /// be large (annotations up to 256 KiB, labels, ...): anyone who may create ServiceAccounts
    /// could otherwise make every list fail, and the service never get ready or never relist.
    fn list_page(
        &mut self,
        continue_token: Option<&str>,
    ) -> Result<ListPage<C::Object>, KubeError> {
        let mut limit = self.settings.page_size.max(1);
        loop {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.to_string());
            if let Some(token) = continue_token {
                query.append_pair("continue", token);
            }
            let path = format!("{}?{}", C::PATH, query.finish());
            let accept = C::METADATA_ONLY.then_some(METADATA_LIST_ACCEPT);
            match self.client.get_json_as::<RawList<C::Raw>>(
                &path,
                accept,
                self.settings.list_timeout,
            ) {
                Ok(list) => return Ok(list.into_page::<C>()),
                Err(KubeError::BodyTooLarge { limit: bytes }) if limit > 1 => {
                    limit /= 2;
                    warn!(
                        "a page of {}s is larger than {bytes} bytes: asking again for {limit} at a time", C::KIND
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn watch(&mut self, resource_version: &str) -> Result<ChannelStream<C::Object>, KubeError> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("watch", "1")
            .append_pair("resourceVersion", resource_version)
            .append_pair("allowWatchBookmarks", "true")
            .append_pair("timeoutSeconds", &self.settings.timeout_seconds.to_string())
            .finish();
        let path = format!("{}?{query}", C::PATH);
        let accept = C::METADATA_ONLY.then_some(METADATA_ACCEPT);
        let lines = self
            .client
            .get_lines_as(&path, accept, self.settings.read_timeout())?;
        ChannelStream::spawn::<C>(lines)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A watch stream read by its own thread, so the loop can wait on it with a short timeout and
/// notice stop promptly. The thread ends when the stream ends or the loop drops this value
/// (at its next line, or at the stream's read timeout at the latest).
pub(super) struct ChannelStream<T> {
    items: Receiver<StreamItem<T>>,
}

impl<T: Send + 'static> ChannelStream<T> {
    fn spawn<C: Collection<Object = T>>(
        mut lines: LineStream,
    ) -> Result<ChannelStream<T>, KubeError> {
        let (tx, rx) = crossbeam_channel::bounded(STREAM_BUFFER);
        std::thread::Builder::new()
            .name("kube-watch-stream".to_owned())
            .spawn(move || loop {
                let item = match lines.next_line() {
                    Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
                    Ok(Some(line)) => match parse_watch_line::<C>(&line) {
                        Ok(event) => StreamItem::Event(event),
                        Err(e) => StreamItem::Broken(e),
                    },
                    Ok(None) => StreamItem::Closed,
                    Err(e) => StreamItem::Broken(e),
                };
                // An ERROR event ends the watch (the loop drops the stream and opens another),
                // whether or not the server closes the connection after it: the thread and its
                // connection end here rather than at the read timeout (~5 min).
                let last =
                    !matches!(item, StreamItem::Event(ref e) if !matches!(e, WatchEvent::Error(_)));
                if tx.send(item).is_err() || last {
                    return;
                }
            })
            .map_err(KubeError::Local)?;
        Ok(ChannelStream { items: rx })
    }
}

impl<T> EventStream<T> for ChannelStream<T> {
    fn next_item(&mut self) -> StreamItem<T> {
        match self.items.recv_timeout(STREAM_POLL) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => StreamItem::Idle,
            Err(RecvTimeoutError::Disconnected) => StreamItem::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::spawn_watcher;
    use super::*;
    use crate::kube::client::test_client;
    use crate::kube::test_server::{response, start, Request};
    use crate::kube::{RawObject, ServiceAccount, ServiceAccountCache};
    use crate::metrics::Metrics;
    use crate::readiness::Readiness;
    use std::time::Duration;

    #[test]
    fn watch_lines_are_decoded_without_kind_or_api_version() {
        let ev = parse_watch_line::<ServiceAccountCache>(
            br#"{"type":"ADDED","object":{"metadata":{"name":"app","namespace":"ns","uid":"u","resourceVersion":"5","annotations":{"a":"b"}}}}"#,
        )
        .unwrap();
        match ev {
            WatchEvent::Change {
                change: Change::Upsert(s),
                resource_version,
            } => {
                assert_eq!((&*s.namespace, &*s.name), ("ns", "app"));
                assert_eq!(resource_version.as_deref(), Some("5"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let ev = parse_watch_line::<ServiceAccountCache>(
            br#"{"type":"DELETED","object":{"kind":"ServiceAccount","metadata":{"name":"a","namespace":"n","uid":"u","resourceVersion":"6"}}}"#,
        )
        .unwrap();
        assert!(matches!(
            ev,
            WatchEvent::Change {
                change: Change::Delete(_),
                ..
            }
        ));
        let ev = parse_watch_line::<ServiceAccountCache>(
            br#"{"type":"BOOKMARK","object":{"kind":"ServiceAccount","apiVersion":"v1","metadata":{"resourceVersion":"9"}}}"#,
        )
        .unwrap();
        assert!(
            matches!(ev, WatchEvent::Bookmark { ref resource_version } if resource_version == "9")
        );
        let ev = parse_watch_line::<ServiceAccountCache>(
            br#"{"type":"ERROR","object":{"kind":"Status","status":"Failure","reason":"Expired","code":410,"message":"too old resource version: 1 (2)"}}"#,
        )
        .unwrap();
        assert!(matches!(
            ev,
            WatchEvent::Error(ApiStatus {
                code: Some(410),
                ..
            })
        ));
        let ev = parse_watch_line::<ServiceAccountCache>(
            br#"{"type":"ADDED","object":{"metadata":{"resourceVersion":"3"}}}"#,
        )
        .unwrap();
        assert!(matches!(
            ev,
            WatchEvent::Skipped {
                resource_version: Some(_)
            }
        ));
        assert!(matches!(
            parse_watch_line::<ServiceAccountCache>(b"{not json"),
            Err(KubeError::Decode(_))
        ));
        // The object before its type (not how the API server writes it) reads the same.
        let ev = parse_watch_line::<ServiceAccountCache>(
            br#"{"object":{"metadata":{"name":"a","namespace":"n","uid":"u","resourceVersion":"6"}},"type":"MODIFIED"}"#,
        )
        .unwrap();
        assert!(matches!(
            ev,
            WatchEvent::Change { change: Change::Upsert(ref s), ref resource_version }
                if &*s.name == "a" && resource_version.as_deref() == Some("6")
        ));
        let ev =
            parse_watch_line::<ServiceAccountCache>(br#"{"object":{"code":500},"type":"ERROR"}"#)
                .unwrap();
        assert!(matches!(
            ev,
            WatchEvent::Error(ApiStatus {
                code: Some(500),
                ..
            })
        ));
        // Unknown types are skipped whatever their object; known ones need an object.
        for line in [
            &br#"{"type":"SOMETHING","object":[1]}"#[..],
            br#"{"object":7,"type":"SOMETHING"}"#,
            br#"{"type":"SOMETHING"}"#,
        ] {
            assert!(matches!(
                parse_watch_line::<ServiceAccountCache>(line),
                Ok(WatchEvent::Skipped {
                    resource_version: None
                })
            ));
        }
        for line in [
            &br#"{"type":"ADDED"}"#[..],
            br#"{"type":"ERROR"}"#,
            br#"{"type":"ADDED","object":null}"#,
            br#"{"type":"ERROR","object":"x"}"#,
            br#"{"object":{}}"#,
            br#"[]"#,
        ] {
            assert!(
                matches!(
                    parse_watch_line::<ServiceAccountCache>(line),
                    Err(KubeError::Decode(_))
                ),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn list_pages_are_decoded_without_kind() {
        let list: RawList<RawObject> = serde_json::from_str(
            r#"{"kind":"ServiceAccountList","apiVersion":"v1",
                "metadata":{"resourceVersion":"10245","continue":"tok","remainingItemCount":1},
                "items":[{"metadata":{"name":"a","namespace":"n","uid":"u"}},{"metadata":{}}]}"#,
        )
        .unwrap();
        let p = list.into_page::<ServiceAccountCache>();
        assert_eq!(p.items, vec![ServiceAccount::for_test("n", "a", "u")]);
        assert_eq!(p.resource_version, "10245");
        assert_eq!(p.continue_token.as_deref(), Some("tok"));
        let empty: RawList<RawObject> =
            serde_json::from_str(r#"{"metadata":{"resourceVersion":"1"},"items":null}"#).unwrap();
        assert!(empty.into_page::<ServiceAccountCache>().items.is_empty());
    }

    /// Continue tokens and resourceVersions are opaque: whatever characters the server puts in
    /// them come back to it unchanged once its query string is decoded.
    #[test]
    fn opaque_tokens_round_trip_through_the_query_string() {
        const ODD: &str = "a+b/c=d&e f%g?h#i;j\u{e9}\n";
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let base = start(Arc::new(move |req: &Request| {
            let query = req.path.split_once('?').map_or("", |(_, q)| q);
            let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            seen2.lock().push(pairs);
            response(
                "200 OK",
                &[],
                &serde_json::json!({"metadata": {"resourceVersion": "1", "continue": ODD}, "items": []})
                    .to_string(),
            )
        }));
        let client = Arc::new(test_client(&base, None));
        let mut api = ClientApi::<ServiceAccountCache>::new(client, WatchSettings::default());
        let page = api.list_page(Some(ODD)).unwrap();
        assert_eq!(page.continue_token.as_deref(), Some(ODD));
        let _ = api.watch(ODD);
        let seen = seen.lock();
        let value = |i: usize, name: &str| {
            seen[i]
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(value(0, "continue").as_deref(), Some(ODD));
        assert_eq!(value(0, "limit").as_deref(), Some("500"));
        assert_eq!(seen[0].len(), 2, "{:?}", seen[0]);
        assert_eq!(value(1, "resourceVersion").as_deref(), Some(ODD));
        assert_eq!(seen[1].len(), 4, "{:?}", seen[1]);
    }

    #[test]
    fn a_page_larger_than_the_body_limit_is_asked_again_in_halves() {
        // Each object ~1 KiB: 500 of them pass the 100 KiB limit, 62 do not.
        let limits = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = limits.clone();
        let base = start(Arc::new(move |req: &Request| {
            let (_, query) = req.path.split_once('?').unwrap_or_default();
            let limit: usize = form_urlencoded::parse(query.as_bytes())
                .find(|(n, _)| n == "limit")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            seen.lock().push(limit);
            let items: Vec<serde_json::Value> = (0..limit)
                .map(|i| {
                    serde_json::json!({"metadata": {"name": format!("sa-{i}"), "namespace": "n",
                    "annotations": {"padding": "x".repeat(1000)}}})
                })
                .collect();
            response(
                "200 OK",
                &[],
                &serde_json::json!({"metadata": {"resourceVersion": "5", "continue": "next"}, "items": items})
                    .to_string(),
            )
        }));
        let client = Arc::new(crate::kube::client::test_client_bounded(
            &base,
            None,
            100 * 1024,
        ));
        let mut api =
            ClientApi::<ServiceAccountCache>::new(client.clone(), WatchSettings::default());
        let page = api.list_page(Some("here")).unwrap();
        assert_eq!(*limits.lock(), [500, 250, 125, 62]);
        assert_eq!(page.items.len(), 62);
        assert_eq!(page.continue_token.as_deref(), Some("next"));
        // One object over the limit: the page of one fails as before.
        let tiny = Arc::new(crate::kube::client::test_client_bounded(&base, None, 100));
        let mut api = ClientApi::<ServiceAccountCache>::new(
            tiny,
            WatchSettings {
                page_size: 4,
                ..WatchSettings::default()
            },
        );
        limits.lock().clear();
        assert!(matches!(
            api.list_page(None),
            Err(KubeError::BodyTooLarge { limit: 100 })
        ));
        assert_eq!(*limits.lock(), [4, 2, 1]);
    }

    #[test]
    fn a_watch_stream_ends_at_its_error_event_though_the_server_keeps_the_connection() {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let event =
                r#"{"type":"ERROR","object":{"kind":"Status","code":500,"message":"boom"}}"#;
            let mut w = &stream;
            let _ = write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{event}\n\r\n",
                event.len() + 1
            );
            let _ = w.flush();
            // Holds the connection open, sending nothing more, until the client goes.
            let mut rest = String::new();
            let _ = reader.read_line(&mut rest);
        });
        let client = Arc::new(test_client(&base, None));
        let mut api = ClientApi::<ServiceAccountCache>::new(client, WatchSettings::default());
        let mut stream = api.watch("7").unwrap();
        let first = (0..20)
            .map(|_| stream.next_item())
            .find(|i| !matches!(i, StreamItem::Idle));
        assert!(
            matches!(first, Some(StreamItem::Event(WatchEvent::Error(_)))),
            "{first:?}"
        );
        // The reader thread is gone: the stream reports its end at once, not Idle until the
        // read timeout.
        assert!(matches!(stream.next_item(), StreamItem::Closed));
        drop(stream);
        server.join().unwrap();
    }

    /// End to end over a socket: a hand-rolled server answers the list and one watch.
    #[test]
    fn spawn_watcher_lists_and_watches_over_http() {
        let base = start(Arc::new(|req: &Request| {
            // Metadata only: a list's items, and a watch's objects, one at a time.
            let accept = if req.path.contains("watch=1") {
                METADATA_ACCEPT
            } else {
                METADATA_LIST_ACCEPT
            };
            assert_eq!(req.header("accept"), Some(accept), "{}", req.path);
            if req.path.contains("watch=1") && req.path.contains("resourceVersion=10&") {
                assert!(req.path.contains("allowWatchBookmarks=true"));
                assert!(req.path.contains("timeoutSeconds=290"));
                let body = concat!(
                    r#"{"type":"ADDED","object":{"metadata":{"name":"b","namespace":"n","uid":"u2","resourceVersion":"11"}}}"#,
                    "\n",
                    r#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"12"}}}"#,
                    "\n"
                );
                response("200 OK", &[], body)
            } else if req.path.contains("watch=1") {
                // Later watches hang a little and end with nothing new.
                std::thread::sleep(Duration::from_millis(300));
                response("200 OK", &[], "")
            } else if req.path.contains("continue=c%2B1") {
                response(
                    "200 OK",
                    &[],
                    r#"{"metadata":{"resourceVersion":"10"},"items":[{"metadata":{"name":"a2","namespace":"n","uid":"u3"}}]}"#,
                )
            } else {
                assert!(req.path.contains("limit=500"), "{}", req.path);
                response(
                    "200 OK",
                    &[],
                    r#"{"metadata":{"resourceVersion":"10","continue":"c+1"},"items":[{"metadata":{"name":"a","namespace":"n","uid":"u1"}}]}"#,
                )
            }
        }));
        let client = Arc::new(test_client(&base, Some("t")));
        let cache = Arc::new(ServiceAccountCache::new(Arc::new(Metrics::new())));
        let readiness = Arc::new(Readiness::default());
        let (tx, rx) = crossbeam_channel::bounded(1);
        let handle = spawn_watcher(
            client,
            cache.clone(),
            WatchSettings::default(),
            readiness.clone(),
            cache.metrics().clone(),
            rx,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(readiness.cache_synced());
        assert_eq!(cache.len(), 3);
        assert!(cache.get("n", "b").is_some());
        let stopping = Instant::now();
        drop(tx);
        handle.join().unwrap();
        assert!(stopping.elapsed() < Duration::from_secs(3));
    }
}
