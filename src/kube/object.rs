//! A ServiceAccount as the service keeps it, read from the API's (or a manifest's) objects;
//! and the name checks that keep anything a token says from changing an API path or a subject.

use std::collections::BTreeMap;

use serde::Deserialize;

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
    /// The object's annotations.
    pub annotations: BTreeMap<String, String>,
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
    #[serde(default)]
    pub(crate) annotations: Option<BTreeMap<String, String>>,
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
        Ok(ServiceAccount {
            namespace,
            name,
            uid: meta.uid.unwrap_or_default(),
            resource_version: meta.resource_version.unwrap_or_default(),
            annotations: meta.annotations.unwrap_or_default(),
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
                "annotations":{"k":"v"}},"secrets":[]}"#,
        )
        .unwrap();
        assert_eq!(raw.resource_version(), Some("7"));
        let sa = raw.into_service_account(None).unwrap();
        assert_eq!(sa.namespace, "team-a");
        assert_eq!(sa.name, "app");
        assert_eq!(sa.uid, "u1");
        assert_eq!(sa.resource_version, "7");
        assert_eq!(sa.annotations.get("k").map(String::as_str), Some("v"));
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
