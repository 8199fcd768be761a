//! A ServiceAccount as the service keeps it, read from the API's (or a manifest's) objects;
//! and the name checks that keep anything a token says from changing an API path or a subject.
//!
//! The kept form is compact (a few hundred bytes per account, whatever the object holds): the
//! namespace is shared by every account of it, the uid is 16 bytes when it is a canonical
//! UUID, the resourceVersion 8 bytes when it is a canonical decimal, and of the annotations only
//! the two the service reads are kept.

use std::fmt;
use std::sync::Arc;

use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::policy::{PUB_ANNOTATION, SUB_ANNOTATION};

/// Longest value kept of an annotation the service reads: a longer one is kept up to its last
/// comma within this many bytes, and the entries past it are not read (counted as `too_many`).
/// Kubernetes allows 256 KiB of annotations per object; keeping them whole would let anyone who
/// may edit ServiceAccounts grow every replica's memory by that much per object.
pub const MAX_ANNOTATION_BYTES: usize = 16 * 1024;

/// An object's uid, kept in 16 bytes when it is a canonical (lowercase, hyphenated) UUID, as the
/// API server makes them; any other text is kept as it is. Displays exactly as received.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Uid {
    /// A canonical UUID: its text is `8-4-4-4-12` lowercase hex digits.
    Uuid([u8; 16]),
    /// Any other text (empty when the object had none).
    Text(Box<str>),
}

impl Uid {
    /// The uid `text` in its compact form.
    pub fn new(text: &str) -> Uid {
        match parse_uuid(text) {
            Some(bytes) => Uid::Uuid(bytes),
            None => Uid::Text(text.into()),
        }
    }

    /// Whether the uid is empty.
    pub fn is_empty(&self) -> bool {
        matches!(self, Uid::Text(t) if t.is_empty())
    }

    /// Whether the uid's text is exactly `text`.
    pub fn is(&self, text: &str) -> bool {
        match self {
            Uid::Uuid(bytes) => parse_uuid(text).as_ref() == Some(bytes),
            Uid::Text(t) => **t == *text,
        }
    }
}

impl Default for Uid {
    fn default() -> Self {
        Uid::Text(Box::default())
    }
}

/// Byte offsets of the hyphens in a canonical UUID's text.
const UUID_HYPHENS: [usize; 4] = [8, 13, 18, 23];

/// The 16 bytes of a canonical UUID's text: 36 characters, hyphens at 8, 13, 18 and 23,
/// lowercase hex digits elsewhere. Anything else (upper case, braces, another length) is `None`,
/// so the bytes always display back as the same text.
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let s = text.as_bytes();
    if s.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut nibbles = 0usize;
    for (i, b) in s.iter().enumerate() {
        if UUID_HYPHENS.contains(&i) {
            if *b != b'-' {
                return None;
            }
            continue;
        }
        let v = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        let byte = out.get_mut(nibbles / 2)?;
        *byte = (*byte << 4) | v;
        nibbles += 1;
    }
    Some(out)
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uid::Uuid(bytes) => {
                for (i, b) in bytes.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
            Uid::Text(t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

impl From<&str> for Uid {
    fn from(text: &str) -> Uid {
        Uid::new(text)
    }
}

impl PartialEq<str> for Uid {
    fn eq(&self, other: &str) -> bool {
        self.is(other)
    }
}

impl PartialEq<&str> for Uid {
    fn eq(&self, other: &&str) -> bool {
        self.is(other)
    }
}

impl Serialize for Uid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An object's resourceVersion, kept in 8 bytes when it is a canonical decimal number (as etcd's
/// revisions are), as text otherwise. Opaque: compared only for equality, displayed exactly as
/// received. Empty when the account comes from a local file.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ResourceVersion {
    /// A decimal number without sign or leading zero.
    Number(u64),
    /// Any other text.
    Text(Box<str>),
}

impl ResourceVersion {
    /// The resourceVersion `text` in its compact form.
    pub fn new(text: &str) -> ResourceVersion {
        let canonical = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'));
        match text.parse::<u64>() {
            Ok(n) if canonical => ResourceVersion::Number(n),
            _ => ResourceVersion::Text(text.into()),
        }
    }

    /// Whether the resourceVersion is empty.
    pub fn is_empty(&self) -> bool {
        matches!(self, ResourceVersion::Text(t) if t.is_empty())
    }
}

impl Default for ResourceVersion {
    fn default() -> Self {
        ResourceVersion::Text(Box::default())
    }
}

impl fmt::Display for ResourceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceVersion::Number(n) => write!(f, "{n}"),
            ResourceVersion::Text(t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for ResourceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

impl From<&str> for ResourceVersion {
    fn from(text: &str) -> ResourceVersion {
        ResourceVersion::new(text)
    }
}

impl PartialEq<str> for ResourceVersion {
    fn eq(&self, other: &str) -> bool {
        *self == ResourceVersion::new(other)
    }
}

impl PartialEq<&str> for ResourceVersion {
    fn eq(&self, other: &&str) -> bool {
        *self == ResourceVersion::new(other)
    }
}

impl Serialize for ResourceVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The parts of a Kubernetes ServiceAccount the service uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Namespace of the account; the cache shares one allocation among its accounts.
    pub namespace: Arc<str>,
    /// Name of the account (may contain dots).
    pub name: Box<str>,
    /// The object's uid; a re-created account has a new one.
    pub uid: Uid,
    /// The object's resourceVersion: it changes with every write. Empty when the account comes
    /// from a local file.
    pub resource_version: ResourceVersion,
    /// [`PUB_ANNOTATION`], at most [`MAX_ANNOTATION_BYTES`].
    publish: Option<Box<str>>,
    /// [`SUB_ANNOTATION`], at most [`MAX_ANNOTATION_BYTES`].
    subscribe: Option<Box<str>>,
    /// Entries past the cut of [`PUB_ANNOTATION`] and [`SUB_ANNOTATION`] (saturating).
    past_limit: [u32; 2],
}

impl ServiceAccount {
    /// Whether `other` carries the same NATS annotations as this account (what its grant is
    /// made of, besides its namespace and name).
    pub fn same_annotations(&self, other: &ServiceAccount) -> bool {
        self.publish == other.publish
            && self.subscribe == other.subscribe
            && self.past_limit == other.past_limit
    }

    /// An account `namespace/name` with this uid and resourceVersion and no annotations.
    pub fn new(namespace: &str, name: &str, uid: &str, resource_version: &str) -> ServiceAccount {
        ServiceAccount {
            namespace: namespace.into(),
            name: name.into(),
            uid: Uid::new(uid),
            resource_version: ResourceVersion::new(resource_version),
            publish: None,
            subscribe: None,
            past_limit: [0; 2],
        }
    }

    /// A ServiceAccount `namespace/name` with this `uid` and no annotations, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_test(namespace: &str, name: &str, uid: &str) -> ServiceAccount {
        ServiceAccount::new(namespace, name, uid, "")
    }

    /// The same account with the annotation `key` set to `value` (cut to
    /// [`MAX_ANNOTATION_BYTES`] as when read); keys the service does not read are not kept.
    pub fn with_annotation(mut self, key: &str, value: &str) -> ServiceAccount {
        if let Some(i) = annotation_index(key) {
            let (value, past) = capped(value.to_owned());
            self.set(i, value, past);
        }
        self
    }

    /// The same account with `count` entries of annotation `key` past the kept length.
    #[cfg(test)]
    pub(crate) fn with_entries_past_limit(mut self, key: &str, count: usize) -> ServiceAccount {
        if let Some(i) = annotation_index(key) {
            self.past_limit[i] = u32::try_from(count).unwrap_or(u32::MAX);
        }
        self
    }

    fn set(&mut self, i: usize, value: Box<str>, past: usize) {
        let slot = if i == 0 {
            &mut self.publish
        } else {
            &mut self.subscribe
        };
        *slot = Some(value);
        self.past_limit[i] = u32::try_from(past).unwrap_or(u32::MAX);
    }

    /// The value of annotation `key` ([`PUB_ANNOTATION`] or [`SUB_ANNOTATION`]), if present.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        match annotation_index(key)? {
            0 => self.publish.as_deref(),
            _ => self.subscribe.as_deref(),
        }
    }

    /// Whether the account has none of the annotations the service reads.
    pub fn has_no_annotations(&self) -> bool {
        self.publish.is_none() && self.subscribe.is_none()
    }

    /// How many entries of annotation `key` lay past [`MAX_ANNOTATION_BYTES`] and were not kept.
    pub fn entries_past_limit(&self, key: &str) -> usize {
        annotation_index(key).map_or(0, |i| self.past_limit[i] as usize)
    }
}

/// An annotation value as kept: cut to [`MAX_ANNOTATION_BYTES`] at an entry boundary, with the
/// number of entries past the cut.
fn capped(mut value: String) -> (Box<str>, usize) {
    let past = if value.len() > MAX_ANNOTATION_BYTES {
        cut_entries(&mut value)
    } else {
        0
    };
    (value.into_boxed_str(), past)
}

/// Index of an annotation the service reads: 0 for publish, 1 for subscribe.
fn annotation_index(key: &str) -> Option<usize> {
    [PUB_ANNOTATION, SUB_ANNOTATION]
        .iter()
        .position(|k| *k == key)
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
    /// [`PUB_ANNOTATION`] and [`SUB_ANNOTATION`], each at most [`MAX_ANNOTATION_BYTES`].
    values: [Option<Box<str>>; 2],
    /// Per annotation, the entries past the cut.
    past: [usize; 2],
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
                let Some(i) = annotation_index(&key) else {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                };
                // A repeated key (a hand-written file): the last one counts, as for the value.
                let (value, past) = capped(map.next_value()?);
                if let (Some(slot), Some(count)) = (read.values.get_mut(i), read.past.get_mut(i)) {
                    *slot = Some(value);
                    *count = past;
                }
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
        let mut sa = ServiceAccount {
            namespace: namespace.into(),
            name: name.into_boxed_str(),
            uid: Uid::new(meta.uid.as_deref().unwrap_or_default()),
            resource_version: ResourceVersion::new(
                meta.resource_version.as_deref().unwrap_or_default(),
            ),
            publish: None,
            subscribe: None,
            past_limit: [0; 2],
        };
        let ReadAnnotations { values, past } = meta.annotations.unwrap_or_default();
        for (i, (value, past)) in values.into_iter().zip(past).enumerate() {
            if let Some(value) = value {
                sa.set(i, value, past);
            }
        }
        Ok(sa)
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
        assert_eq!(sa.annotation(PUB_ANNOTATION), Some("a.b, c.>"));
        assert_eq!(sa.annotation(SUB_ANNOTATION), Some("d.*"));
        assert_eq!(sa.annotation("nats.io/other"), None);
        assert_eq!(sa.entries_past_limit(PUB_ANNOTATION), 0);
        assert_eq!(sa.entries_past_limit(SUB_ANNOTATION), 0);
        for none in [
            r#""annotations": null"#,
            r#""annotations": {}"#,
            r#""uid": "u""#,
        ] {
            let sa = read(&format!(
                r#"{{"metadata": {{"name": "a", "namespace": "n", {none}}}}}"#
            ));
            assert!(sa.has_no_annotations(), "{none}");
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
        let kept = sa.annotation(PUB_ANNOTATION).unwrap();
        assert!(kept.len() <= MAX_ANNOTATION_BYTES && value.starts_with(kept));
        let kept_entries = kept.split(", ").count();
        assert_eq!(
            kept.split(", ").last(),
            Some(entries[kept_entries - 1].as_str()),
            "whole entries only"
        );
        assert_eq!(sa.entries_past_limit(PUB_ANNOTATION), 2000 - kept_entries);
        assert_eq!(
            sa,
            ServiceAccount::new("n", "a", "", "").with_annotation(PUB_ANNOTATION, &value),
            "built the same way as read"
        );
        // The same key again (a hand-written file): the last value counts, cut or not.
        let sa = read(&format!(
            r#"{{"metadata": {{"name": "a", "namespace": "n", "annotations": {{"{PUB_ANNOTATION}": "{value}", "{PUB_ANNOTATION}": "a.b"}}}}}}"#
        ));
        assert_eq!(sa.annotation(PUB_ANNOTATION), Some("a.b"));
        assert_eq!(sa.entries_past_limit(PUB_ANNOTATION), 0);
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
        assert_eq!(sa.annotation(SUB_ANNOTATION), Some(exact.as_str()));
        assert_eq!(sa.entries_past_limit(SUB_ANNOTATION), 0);
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
        assert_eq!(&*sa.namespace, "team-a");
        assert_eq!(&*sa.name, "app");
        assert_eq!(sa.uid, "u1");
        assert_eq!(sa.resource_version, "7");
        assert_eq!(sa.annotation(PUB_ANNOTATION), Some("v"));
    }

    #[test]
    fn uids_and_resource_versions_display_exactly_as_received() {
        let uuid = "0f3c2a1e-9b7d-4c55-8e21-a1b2c3d4e5f6";
        assert!(matches!(Uid::new(uuid), Uid::Uuid(_)));
        for text in [
            uuid,
            "0F3C2A1E-9B7D-4C55-8E21-A1B2C3D4E5F6",
            "{0f3c2a1e-9b7d-4c55-8e21-a1b2c3d4e5f6}",
            "0f3c2a1e9b7d4c558e21a1b2c3d4e5f6",
            "0f3c2a1e-9b7d-4c55-8e21-a1b2c3d4e5fg",
            "0f3c2a1e-9b7d-4c55-8e21+a1b2c3d4e5f6",
            "u-1",
            "",
            "é",
        ] {
            let uid = Uid::new(text);
            assert_eq!(uid.to_string(), text);
            assert!(uid.is(text) && uid == *text);
            assert_eq!(uid.is_empty(), text.is_empty());
            assert!(!uid.is("other"));
            assert_eq!(serde_json::to_string(&uid).unwrap(), format!("{text:?}"));
        }
        assert!(!Uid::new(uuid).is("0F3C2A1E-9B7D-4C55-8E21-A1B2C3D4E5F6"));
        assert!(!Uid::new("0F3C2A1E-9B7D-4C55-8E21-A1B2C3D4E5F6").is(uuid));
        assert!(matches!(
            ResourceVersion::new("123"),
            ResourceVersion::Number(123)
        ));
        for text in [
            "0",
            "7",
            "18446744073709551615",
            "18446744073709551616",
            "007",
            "+7",
            "-1",
            "1.0",
            "",
            "abc",
        ] {
            let rv = ResourceVersion::new(text);
            assert_eq!(rv.to_string(), text);
            assert!(rv == *text);
            assert_eq!(rv.is_empty(), text.is_empty());
        }
        assert_ne!(ResourceVersion::new("7"), ResourceVersion::new("07"));
    }

    #[test]
    fn a_kept_service_account_is_small() {
        // The Arc block adds 16 bytes; the name and the two annotations are allocated apart.
        assert!(std::mem::size_of::<ServiceAccount>() <= 120);
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
