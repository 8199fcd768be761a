//! A ServiceAccount as the service keeps it, read from the API's (or a manifest's) objects;
//! and the name checks that keep anything a token says from changing an API path or a subject.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::policy::{PUB_ANNOTATION, SUB_ANNOTATION};

/// Longest value kept of an annotation the service reads: a longer one is kept up to its last
/// comma within this many bytes, and the entries past it are not read (counted as `too_many`).
/// Kubernetes allows 256 KiB of annotations per object; keeping them whole would let anyone who
/// may edit ServiceAccounts grow every replica's memory by that much per object.
pub const MAX_ANNOTATION_BYTES: usize = 16 * 1024;

/// The parts of a Kubernetes ServiceAccount the service uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Namespace of the account.
    pub namespace: String,
    /// Name of the account (may contain dots).
    pub name: String,
    /// The object's uid; a re-created account has a new one.
    pub uid: String,
    /// The object's resourceVersion (opaque, compared only for equality): it changes with every
    /// write. Empty when the account comes from a local file.
    pub resource_version: String,
    /// The annotations the service reads ([`PUB_ANNOTATION`], [`SUB_ANNOTATION`]), each at most
    /// [`MAX_ANNOTATION_BYTES`]; the object's other annotations are not kept.
    pub annotations: BTreeMap<String, String>,
    /// Per annotation cut to [`MAX_ANNOTATION_BYTES`], how many entries were past the cut.
    pub entries_past_limit: Vec<(&'static str, usize)>,
}

impl ServiceAccount {
    /// A ServiceAccount `namespace/name` with this `uid` and no annotations, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_test(namespace: &str, name: &str, uid: &str) -> ServiceAccount {
        ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            resource_version: String::new(),
            annotations: BTreeMap::new(),
            entries_past_limit: Vec::new(),
        }
    }
}

/// The `metadata` of an object as the API (or a manifest file) writes it; other fields are ignored.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ObjectMeta {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) namespace: Option<String>,
    #[serde(default)]
    pub(crate) uid: Option<String>,
    #[serde(default, rename = "resourceVersion")]
    pub(crate) resource_version: Option<String>,
    #[serde(default, deserialize_with = "read_annotations")]
    pub(crate) annotations: Option<ReadAnnotations>,
}

/// The annotations the service reads, taken from an object's `annotations` map.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ReadAnnotations {
    /// Each at most [`MAX_ANNOTATION_BYTES`].
    pub(crate) kept: BTreeMap<String, String>,
    /// Per annotation cut, the entries past the cut.
    pub(crate) entries_past_limit: Vec<(&'static str, usize)>,
}

/// Reads `metadata.annotations` keeping only the annotations the service reads: the others
/// (kubectl's last-applied-configuration among them) are skipped as they are parsed, never
/// stored. `null` reads as no annotations.
fn read_annotations<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ReadAnnotations>, D::Error> {
    struct Annotations;
    impl<'de> Visitor<'de> for Annotations {
        type Value = Option<ReadAnnotations>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of annotations")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut read = ReadAnnotations::default();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                let Some(name) = [PUB_ANNOTATION, SUB_ANNOTATION]
                    .into_iter()
                    .find(|n| *n == key)
                else {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                };
                let mut value: String = map.next_value()?;
                // A repeated key (a hand-written file): the last one counts, as for the value.
                read.entries_past_limit.retain(|(n, _)| *n != name);
                if value.len() > MAX_ANNOTATION_BYTES {
                    let past = cut_entries(&mut value);
                    if past > 0 {
                        read.entries_past_limit.push((name, past));
                    }
                }
                read.kept.insert(name.to_owned(), value);
            }
            Ok(Some(read))
        }
    }
    d.deserialize_option(Annotations)
}

/// Cuts a list of entries longer than [`MAX_ANNOTATION_BYTES`] at its last comma within the
/// bound; the number of entries cut off (an entry the bound splits is one of them).
fn cut_entries(value: &mut String) -> usize {
    let within = &value.as_bytes()[..MAX_ANNOTATION_BYTES.min(value.len())];
    let at = within.iter().rposition(|b| *b == b',').unwrap_or(0);
    let past = value[at..]
        .split(',')
        .filter(|e| !e.trim().is_empty())
        .count();
    value.truncate(at);
    // Gives the rest of the allocation back: truncating alone keeps it all.
    value.shrink_to_fit();
    past
}

/// One object of any kind, reduced to its metadata. `kind` is optional: the API server leaves it
/// off list items, so nothing here relies on it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawObject {
    #[serde(default)]
    pub(crate) kind: Option<String>,
    #[serde(default)]
    pub(crate) metadata: ObjectMeta,
}

/// Why an object could not be read as a ServiceAccount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ObjectProblem {
    /// `metadata.name` is missing or empty.
    MissingName,
    /// `metadata.namespace` is missing or empty and no default applies.
    MissingNamespace,
}

impl ObjectProblem {
    /// A short description for error messages.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            ObjectProblem::MissingName => "metadata.name is missing",
            ObjectProblem::MissingNamespace => "metadata.namespace is missing",
        }
    }
}

impl RawObject {
    /// The object's resourceVersion, if it has one.
    pub(crate) fn resource_version(&self) -> Option<&str> {
        self.metadata.resource_version.as_deref()
    }

    /// Reads the object as a ServiceAccount; `default_namespace` fills a missing namespace.
    pub(crate) fn into_service_account(
        self,
        default_namespace: Option<&str>,
    ) -> Result<ServiceAccount, ObjectProblem> {
        let meta = self.metadata;
        let name = meta
            .name
            .filter(|n| !n.is_empty())
            .ok_or(ObjectProblem::MissingName)?;
        let namespace = match meta.namespace.filter(|n| !n.is_empty()) {
            Some(ns) => ns,
            None => default_namespace
                .map(str::to_owned)
                .ok_or(ObjectProblem::MissingNamespace)?,
        };
        let annotations = meta.annotations.unwrap_or_default();
        Ok(ServiceAccount {
            namespace,
            name,
            uid: meta.uid.unwrap_or_default(),
            resource_version: meta.resource_version.unwrap_or_default(),
            annotations: annotations.kept,
            entries_past_limit: annotations.entries_past_limit,
        })
    }
}

/// Whether `s` is a valid namespace name (an RFC 1123 label). Checked before a name is put into
/// an API path, so nothing a token says can steer the request elsewhere.
pub fn is_valid_namespace(s: &str) -> bool {
    s.len() <= 63 && is_dns_name(s, false)
}

/// Whether `s` is a valid ServiceAccount name (an RFC 1123 subdomain: labels joined by dots).
/// Rejects `.`, `..`, slashes and anything else that could change the meaning of an API path.
pub fn is_valid_object_name(s: &str) -> bool {
    s.len() <= 253 && is_dns_name(s, true)
}

fn is_dns_name(s: &str, dots_allowed: bool) -> bool {
    let bytes = s.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    alnum(first)
        && alnum(last)
        && bytes
            .iter()
            .all(|b| alnum(b) || *b == b'-' || (dots_allowed && *b == b'.'))
        && !(dots_allowed && s.contains(".."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> ServiceAccount {
        serde_json::from_str::<RawObject>(json)
            .unwrap()
            .into_service_account(None)
            .unwrap()
    }

    #[test]
    fn only_the_annotations_the_service_reads_are_kept() {
        let big = "x".repeat(200_000);
        let sa = read(&format!(
            r#"{{"metadata": {{"name": "app", "namespace": "ns", "annotations": {{
                "kubectl.kubernetes.io/last-applied-configuration": "{big}",
                "nats.io/allowed-pub-subjects": "a.b, c.>",
                "nats.io/other": "{{\"nested\": [1, 2]}}",
                "nats.io/allowed-sub-subjects": "d.*"}}}}}}"#
        ));
        let kept: Vec<(&str, &str)> = sa
            .annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            kept,
            [(PUB_ANNOTATION, "a.b, c.>"), (SUB_ANNOTATION, "d.*")]
        );
        assert!(sa.entries_past_limit.is_empty());
        for none in [
            r#""annotations": null"#,
            r#""annotations": {}"#,
            r#""uid": "u""#,
        ] {
            let sa = read(&format!(
                r#"{{"metadata": {{"name": "a", "namespace": "n", {none}}}}}"#
            ));
            assert!(sa.annotations.is_empty(), "{none}");
        }
        assert!(
            serde_json::from_str::<RawObject>(r#"{"metadata": {"annotations": [1]}}"#).is_err()
        );
    }

    #[test]
    fn a_read_annotation_longer_than_the_bound_is_cut_at_its_last_comma_within_it() {
        // 2,000 entries of 9 bytes + ", ": the bound falls inside an entry.
        let entries: Vec<String> = (0..2000).map(|i| format!("sub.{i:05}")).collect();
        let value = entries.join(", ");
        assert!(value.len() > MAX_ANNOTATION_BYTES);
        let sa = read(&format!(
            r#"{{"metadata": {{"name": "a", "namespace": "n", "annotations": {{"{PUB_ANNOTATION}": "{value}"}}}}}}"#
        ));
        let kept = &sa.annotations[PUB_ANNOTATION];
        assert!(kept.len() <= MAX_ANNOTATION_BYTES && value.starts_with(kept.as_str()));
        assert!(
            kept.capacity() <= MAX_ANNOTATION_BYTES,
            "the cut part is not held"
        );
        let kept_entries = kept.split(", ").count();
        assert_eq!(
            kept.split(", ").last(),
            Some(entries[kept_entries - 1].as_str()),
            "whole entries only"
        );
        assert_eq!(
            sa.entries_past_limit,
            [(PUB_ANNOTATION, 2000 - kept_entries)]
        );
        // The same key again (a hand-written file): the last value counts, cut or not.
        let sa = read(&format!(
            r#"{{"metadata": {{"name": "a", "namespace": "n", "annotations": {{"{PUB_ANNOTATION}": "{value}", "{PUB_ANNOTATION}": "a.b"}}}}}}"#
        ));
        assert_eq!(sa.annotations[PUB_ANNOTATION], "a.b");
        assert!(sa.entries_past_limit.is_empty());
        // Exactly at the bound: kept whole.
        let exact = "a".repeat(MAX_ANNOTATION_BYTES);
        let mut v = exact.clone();
        assert_eq!(
            cut_entries(&mut v),
            1,
            "one entry longer than the bound: cut whole"
        );
        assert_eq!(v, "");
        let sa = read(&format!(
            r#"{{"metadata": {{"name": "a", "namespace": "n", "annotations": {{"{SUB_ANNOTATION}": "{exact}"}}}}}}"#
        ));
        assert_eq!(sa.annotations[SUB_ANNOTATION], exact);
        assert!(sa.entries_past_limit.is_empty());
        // Multi-byte text around the bound never splits a character.
        let mut v = format!("a,{}", "é".repeat(MAX_ANNOTATION_BYTES));
        assert_eq!(cut_entries(&mut v), 1);
        assert_eq!(v, "a");
    }

    #[test]
    fn names_that_could_change_an_api_path_are_refused() {
        assert!(is_valid_object_name("app"));
        assert!(is_valid_object_name("my.app-1"));
        assert!(!is_valid_object_name(""));
        assert!(!is_valid_object_name("."));
        assert!(!is_valid_object_name(".."));
        assert!(!is_valid_object_name("a..b"));
        assert!(!is_valid_object_name("a/b"));
        assert!(!is_valid_object_name("a%2Fb"));
        assert!(!is_valid_object_name("App"));
        assert!(!is_valid_object_name("-a"));
        assert!(is_valid_namespace("team-a"));
        assert!(!is_valid_namespace("team.a"));
        assert!(!is_valid_namespace(&"a".repeat(64)));
    }

    #[test]
    fn objects_without_kind_are_read() {
        let raw: RawObject = serde_json::from_str(
            r#"{"metadata":{"name":"app","namespace":"team-a","uid":"u1","resourceVersion":"7",
                "annotations":{"nats.io/allowed-pub-subjects":"v"}},"secrets":[]}"#,
        )
        .unwrap();
        assert_eq!(raw.resource_version(), Some("7"));
        let sa = raw.into_service_account(None).unwrap();
        assert_eq!(sa.namespace, "team-a");
        assert_eq!(sa.name, "app");
        assert_eq!(sa.uid, "u1");
        assert_eq!(sa.resource_version, "7");
        assert_eq!(
            sa.annotations.get(PUB_ANNOTATION).map(String::as_str),
            Some("v")
        );
    }

    #[test]
    fn objects_without_name_are_refused() {
        let raw: RawObject = serde_json::from_str(r#"{"metadata":{"namespace":"a"}}"#).unwrap();
        assert_eq!(
            raw.into_service_account(None),
            Err(ObjectProblem::MissingName)
        );
        let raw: RawObject = serde_json::from_str(r#"{"metadata":{"name":"a"}}"#).unwrap();
        assert_eq!(
            raw.into_service_account(None),
            Err(ObjectProblem::MissingNamespace)
        );
    }
}
