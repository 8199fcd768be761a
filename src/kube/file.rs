//! ServiceAccounts from a local YAML or JSON file, for development without a cluster.
//!
//! The file (`SERVICE_ACCOUNTS_PATH`) may hold a `ServiceAccountList` / `List` with `items`, a
//! single ServiceAccount, a YAML sequence of them, or several YAML documents of any of these.
//! Only `metadata.name`, `namespace` (default `default`, as kubectl does), `uid` and
//! `annotations` are read. The file is polled about once a second; a good version replaces the
//! cache whole, a bad one is reported (naming the file) and the last good content stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;
use log::{debug, error, info, warn};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::cache::ServiceAccountCache;
use super::{wait_or_stop, RawObject, ResourceVersion, ServiceAccount};
use crate::files::{read_bounded, ReadError};
use crate::readiness::Readiness;

/// How often the file is checked for changes.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Largest file accepted.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Namespace of an account whose manifest names none.
const DEFAULT_NAMESPACE: &str = "default";

/// Why a ServiceAccount file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read ServiceAccount file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is larger than the limit.
    #[error("ServiceAccount file {} is larger than {limit} bytes", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// The file holds nothing but whitespace (an empty list is written `items: []` or `[]`).
    #[error(
        "ServiceAccount file {} is empty (write `items: []` for no accounts)",
        .path.display()
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid JSON.
    #[error("ServiceAccount file {} is not valid JSON: {source}", .path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The file is not valid YAML.
    #[error("ServiceAccount file {} is not valid YAML: {source}", .path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: serde_yaml_ng::Error,
    },
    /// A document is neither a ServiceAccount, a list with `items`, nor a sequence.
    #[error(
        "ServiceAccount file {} document {document} is not a ServiceAccount, \
         a list with items, or a sequence",
        .path.display()
    )]
    Shape {
        /// The file.
        path: PathBuf,
        /// Index of the document (0-based).
        document: usize,
    },
    /// An item could not be read as a ServiceAccount.
    #[error(
        "ServiceAccount file {} document {document} item {item}: {problem}",
        .path.display()
    )]
    Item {
        /// The file.
        path: PathBuf,
        /// Index of the document (0-based).
        document: usize,
        /// Index of the item in the document (0-based).
        item: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// Two items name the same namespace and name.
    #[error(
        "ServiceAccount file {} lists {namespace}/{name} more than once",
        .path.display()
    )]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The namespace.
        namespace: String,
        /// The name.
        name: String,
    },
}

/// Reads and parses the ServiceAccount file at `path`.
pub fn load_file(path: &Path) -> Result<Vec<ServiceAccount>, FileError> {
    let bytes = read_limited(path)?;
    parse_file(path, &bytes)
}

fn read_limited(path: &Path) -> Result<Vec<u8>, FileError> {
    read_bounded(path, MAX_FILE_BYTES).map_err(|e| match e {
        ReadError::Io(source) => FileError::Read {
            path: path.to_owned(),
            source,
        },
        ReadError::TooLarge { limit } => FileError::TooLarge {
            path: path.to_owned(),
            limit,
        },
    })
}

/// Parses file content; `path` names the file in errors and picks JSON for `.json`.
fn parse_file(path: &Path, bytes: &[u8]) -> Result<Vec<ServiceAccount>, FileError> {
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(FileError::Empty {
            path: path.to_owned(),
        });
    }
    let is_json_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let documents = if is_json_name {
        vec![parse_json(path, &text)?]
    } else if trimmed.starts_with(['{', '[']) {
        // Looks like JSON; YAML also reads most of that, so try it before giving up.
        match parse_json(path, &text) {
            Ok(doc) => vec![doc],
            Err(json_err) => parse_yaml(path, &text).map_err(|_| json_err)?,
        }
    } else {
        parse_yaml(path, &text)?
    };

    let mut accounts: Vec<ServiceAccount> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut without_uid = 0usize;
    for (document, doc) in documents.into_iter().enumerate() {
        let items = match doc {
            serde_json::Value::Null => continue,
            serde_json::Value::Array(items) => items,
            serde_json::Value::Object(mut map) if map.contains_key("items") => {
                match map.remove("items") {
                    Some(serde_json::Value::Array(items)) => items,
                    Some(serde_json::Value::Null) | None => Vec::new(),
                    Some(_) => {
                        return Err(FileError::Shape {
                            path: path.to_owned(),
                            document,
                        })
                    }
                }
            }
            single @ serde_json::Value::Object(_) => vec![single],
            _ => {
                return Err(FileError::Shape {
                    path: path.to_owned(),
                    document,
                })
            }
        };
        for (item, value) in items.into_iter().enumerate() {
            let item_err = |problem: String| FileError::Item {
                path: path.to_owned(),
                document,
                item,
                problem,
            };
            if !value.is_object() {
                return Err(item_err("not a mapping".to_owned()));
            }
            let raw: RawObject =
                serde_json::from_value(value).map_err(|e| item_err(e.to_string()))?;
            if let Some(kind) = raw.kind.as_deref().filter(|k| *k != "ServiceAccount") {
                debug!("{}: skipping a {kind} object", path.display());
                continue;
            }
            let mut sa = raw
                .into_service_account(Some(DEFAULT_NAMESPACE))
                .map_err(|p| item_err(p.describe().to_owned()))?;
            // A manifest's resourceVersion (one exported with `kubectl get -o yaml`, say) names
            // no version of a live object.
            sa.resource_version = ResourceVersion::default();
            if !seen.insert((sa.namespace.to_string(), sa.name.to_string())) {
                return Err(FileError::Duplicate {
                    path: path.to_owned(),
                    namespace: sa.namespace.to_string(),
                    name: sa.name.into(),
                });
            }
            if sa.uid.is_empty() {
                without_uid += 1;
            }
            accounts.push(sa);
        }
    }
    if without_uid > 0 {
        warn!(
            "{}: {without_uid} ServiceAccount(s) have no metadata.uid; tokens carry the account's uid, so they will not match",
            path.display()
        );
    }
    Ok(accounts)
}

fn parse_json(path: &Path, text: &str) -> Result<serde_json::Value, FileError> {
    serde_json::from_str(text).map_err(|source| FileError::Json {
        path: path.to_owned(),
        source,
    })
}

fn parse_yaml(path: &Path, text: &str) -> Result<Vec<serde_json::Value>, FileError> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| {
            serde_json::Value::deserialize(doc).map_err(|source| FileError::Yaml {
                path: path.to_owned(),
                source,
            })
        })
        .collect()
}

/// What the poller last saw, so an unchanged file (good or bad) is neither reloaded nor
/// reported again.
#[derive(PartialEq, Eq)]
enum Seen {
    Nothing,
    /// SHA-256 of the content: the bytes themselves (as large as the file) are not kept.
    Content([u8; 32]),
    /// The file could not be read; the error's text, to report each new error once.
    Unreadable(String),
}

/// Checks the file once; loads it into the cache if it changed and parses.
fn poll_once(path: &Path, seen: &mut Seen, cache: &ServiceAccountCache, readiness: &Readiness) {
    let bytes = match read_limited(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            let now = Seen::Unreadable(e.to_string());
            if *seen != now {
                error!("{e}; keeping the last good content");
            }
            *seen = now;
            return;
        }
    };
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    if matches!(seen, Seen::Content(prev) if *prev == digest) {
        return;
    }
    match parse_file(path, &bytes) {
        Ok(accounts) => {
            let count = accounts.len();
            cache.replace_all(accounts);
            readiness.set_cache_synced(true);
            info!("loaded {count} ServiceAccounts from {}", path.display());
        }
        Err(e) => error!("{e}; keeping the last good content"),
    }
    *seen = Seen::Content(digest);
}

fn run_file_source(
    path: &Path,
    cache: &ServiceAccountCache,
    readiness: &Readiness,
    stop: &Receiver<()>,
    interval: Duration,
) {
    let mut seen = Seen::Nothing;
    loop {
        poll_once(path, &mut seen, cache, readiness);
        if wait_or_stop(stop, interval) {
            return;
        }
    }
}

/// Starts the thread that keeps `cache` equal to the file at `path` (checked about once a
/// second) until `stop` receives a message or every sender is dropped. Readiness
/// `cache_synced` is set after the first good load.
pub fn spawn_file_source(
    path: PathBuf,
    cache: Arc<ServiceAccountCache>,
    readiness: Arc<Readiness>,
    stop: Receiver<()>,
) -> JoinHandle<()> {
    std::thread::spawn(move || run_file_source(&path, &cache, &readiness, &stop, POLL_INTERVAL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::time::Instant;

    fn parse(name: &str, text: &str) -> Result<Vec<ServiceAccount>, FileError> {
        parse_file(Path::new(name), text.as_bytes())
    }

    fn names(v: &[ServiceAccount]) -> Vec<String> {
        v.iter()
            .map(|s| format!("{}/{}", s.namespace, s.name))
            .collect()
    }

    #[test]
    fn a_service_account_list_in_json() {
        let v = parse(
            "sa.json",
            r#"{"kind":"ServiceAccountList","apiVersion":"v1","items":[
                {"metadata":{"name":"a","namespace":"n1","uid":"u1","resourceVersion":"42","annotations":{"k":"v","nats.io/allowed-sub-subjects":"x.>"}}},
                {"metadata":{"name":"b","namespace":"n2","uid":"u2"}}]}"#,
        )
        .unwrap();
        assert_eq!(names(&v), ["n1/a", "n2/b"]);
        assert_eq!(v[0].annotation(crate::policy::SUB_ANNOTATION), Some("x.>"));
        assert_eq!(v[0].annotation("k"), None, "not read, not kept");
        assert_eq!(v[0].uid, "u1");
        assert_eq!(
            v[0].resource_version, "",
            "a file names no live object version"
        );
    }

    #[test]
    fn a_generic_list_in_yaml_skips_other_kinds() {
        let v = parse(
            "sa.yaml",
            "apiVersion: v1\nkind: List\nitems:\n\
             - apiVersion: v1\n  kind: ServiceAccount\n  metadata:\n    name: a\n    namespace: n\n    uid: u\n\
             - apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: cm\n    namespace: n\n",
        )
        .unwrap();
        assert_eq!(names(&v), ["n/a"]);
    }

    #[test]
    fn a_single_service_account_defaults_to_the_default_namespace() {
        let v = parse(
            "sa.yaml",
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: app\n  uid: u\n  annotations:\n    nats.io/allowed-pub-subjects: \"a.>\"\n",
        )
        .unwrap();
        assert_eq!(names(&v), ["default/app"]);
        assert_eq!(v[0].annotation("nats.io/allowed-pub-subjects"), Some("a.>"));
    }

    #[test]
    fn a_yaml_sequence() {
        let v = parse(
            "sa.yaml",
            "- metadata: {name: a, namespace: n, uid: u1}\n- metadata: {name: b, namespace: n, uid: u2}\n",
        )
        .unwrap();
        assert_eq!(names(&v), ["n/a", "n/b"]);
    }

    #[test]
    fn yaml_multi_documents_of_any_shape() {
        let v = parse(
            "sa.yaml",
            "---\nkind: ServiceAccount\nmetadata: {name: a, namespace: n, uid: u1}\n---\n\
             kind: ServiceAccountList\nitems:\n- metadata: {name: b, namespace: n, uid: u2}\n---\n\
             - metadata: {name: c, namespace: m, uid: u3}\n---\n",
        )
        .unwrap();
        assert_eq!(names(&v), ["n/a", "n/b", "m/c"]);
    }

    #[test]
    fn an_empty_list_is_valid_but_an_empty_file_is_not() {
        assert!(parse("sa.yaml", "items: []\n").unwrap().is_empty());
        assert!(parse("sa.json", "[]").unwrap().is_empty());
        assert!(matches!(
            parse("sa.yaml", "  \n"),
            Err(FileError::Empty { .. })
        ));
    }

    #[test]
    fn malformed_files_are_reported_with_the_file_name() {
        let cases = [
            ("bad.json", "{\"items\": [", "not valid JSON"),
            ("bad.yaml", "items: [\n", "not valid YAML"),
            ("bad.yaml", "42\n", "is not a ServiceAccount"),
            (
                "bad.yaml",
                "items:\n- metadata: {namespace: n}\n",
                "metadata.name is missing",
            ),
            (
                "bad.yaml",
                "items:\n- metadata: {name: a, annotations: {nats.io/allowed-pub-subjects: [1]}}\n",
                "item 0",
            ),
            (
                "bad.yaml",
                "- metadata: {name: a, namespace: n}\n- metadata: {name: a, namespace: n}\n",
                "more than once",
            ),
        ];
        for (name, text, expected) in cases {
            let err = parse(name, text).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn each_error_names_the_file_and_its_cause_in_the_log() {
        let path = || PathBuf::from("/etc/sa/accounts.yaml");
        let json = || serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let yaml = || serde_yaml_ng::from_str::<serde_json::Value>("[").unwrap_err();
        let cases = [
            (
                FileError::Read {
                    path: path(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
                },
                "cannot read ServiceAccount file /etc/sa/accounts.yaml: gone".to_owned(),
            ),
            (
                FileError::TooLarge {
                    path: path(),
                    limit: 16,
                },
                "ServiceAccount file /etc/sa/accounts.yaml is larger than 16 bytes".to_owned(),
            ),
            (
                FileError::Empty { path: path() },
                "ServiceAccount file /etc/sa/accounts.yaml is empty \
                 (write `items: []` for no accounts)"
                    .to_owned(),
            ),
            (
                FileError::Json {
                    path: path(),
                    source: json(),
                },
                format!(
                    "ServiceAccount file /etc/sa/accounts.yaml is not valid JSON: {}",
                    json()
                ),
            ),
            (
                FileError::Yaml {
                    path: path(),
                    source: yaml(),
                },
                format!(
                    "ServiceAccount file /etc/sa/accounts.yaml is not valid YAML: {}",
                    yaml()
                ),
            ),
            (
                FileError::Shape {
                    path: path(),
                    document: 2,
                },
                "ServiceAccount file /etc/sa/accounts.yaml document 2 is not a ServiceAccount, \
                 a list with items, or a sequence"
                    .to_owned(),
            ),
            (
                FileError::Item {
                    path: path(),
                    document: 0,
                    item: 3,
                    problem: "not a mapping".into(),
                },
                "ServiceAccount file /etc/sa/accounts.yaml document 0 item 3: not a mapping"
                    .to_owned(),
            ),
            (
                FileError::Duplicate {
                    path: path(),
                    namespace: "team-a".into(),
                    name: "app".into(),
                },
                "ServiceAccount file /etc/sa/accounts.yaml lists team-a/app more than once"
                    .to_owned(),
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message, "{error:?}");
        }
    }

    #[test]
    fn read_and_parse_errors_keep_their_cause_as_source() {
        use std::error::Error;
        let read = FileError::Read {
            path: PathBuf::from("sa.yaml"),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        };
        let cause = read.source().map(ToString::to_string);
        assert_eq!(cause.as_deref(), Some("gone"));
        assert!(parse("bad.json", "{").unwrap_err().source().is_some());
        assert!(parse("bad.yaml", "items: [\n")
            .unwrap_err()
            .source()
            .is_some());
        assert!(parse("sa.yaml", "  \n").unwrap_err().source().is_none());
    }

    #[test]
    fn load_file_reads_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sa.yaml");
        std::fs::write(&p, "metadata: {name: a, namespace: n, uid: u}\n").unwrap();
        assert_eq!(names(&load_file(&p).unwrap()), ["n/a"]);
        assert!(matches!(
            load_file(&dir.path().join("missing.yaml")),
            Err(FileError::Read { .. })
        ));
    }

    #[test]
    fn bad_content_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sa.yaml");
        let cache = ServiceAccountCache::new(Arc::new(Metrics::new()));
        let readiness = Readiness::default();
        let mut seen = Seen::Nothing;

        poll_once(&p, &mut seen, &cache, &readiness);
        assert!(!readiness.cache_synced(), "a missing file is not a sync");

        std::fs::write(&p, "- metadata: {name: a, namespace: n, uid: u}\n").unwrap();
        poll_once(&p, &mut seen, &cache, &readiness);
        assert!(readiness.cache_synced());
        assert_eq!(cache.len(), 1);

        std::fs::write(&p, "- metadata: {name: [broken\n").unwrap();
        poll_once(&p, &mut seen, &cache, &readiness);
        assert_eq!(cache.len(), 1, "last good content kept");

        std::fs::remove_file(&p).unwrap();
        poll_once(&p, &mut seen, &cache, &readiness);
        assert_eq!(
            cache.len(),
            1,
            "a vanished file keeps the last good content"
        );

        std::fs::write(&p, "- metadata: {name: b, namespace: n, uid: u}\n").unwrap();
        poll_once(&p, &mut seen, &cache, &readiness);
        assert!(cache.get("n", "a").is_none(), "replaced whole");
        assert!(cache.get("n", "b").is_some());
    }

    #[test]
    fn the_source_thread_follows_changes_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sa.json");
        std::fs::write(
            &p,
            r#"[{"metadata":{"name":"a","namespace":"n","uid":"u"}}]"#,
        )
        .unwrap();
        let cache = Arc::new(ServiceAccountCache::new(Arc::new(Metrics::new())));
        let readiness = Arc::new(Readiness::default());
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (c, r, path) = (cache.clone(), readiness.clone(), p.clone());
        let handle = std::thread::spawn(move || {
            run_file_source(&path, &c, &r, &rx, Duration::from_millis(20))
        });
        let wait_for = |f: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !f() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            f()
        };
        assert!(wait_for(&|| cache.get("n", "a").is_some()));
        assert!(readiness.cache_synced());
        std::fs::write(
            &p,
            r#"{"items":[{"metadata":{"name":"b","namespace":"n","uid":"u"}}]}"#,
        )
        .unwrap();
        assert!(wait_for(
            &|| cache.get("n", "b").is_some() && cache.get("n", "a").is_none()
        ));
        tx.send(()).unwrap();
        handle.join().unwrap();
    }
}
