//! From a ServiceAccount to NATS permissions: namespace isolation by default, more subjects granted by
//! annotations, and the guard rails that keep an annotation from granting what it must not.

use std::collections::HashMap;
use std::sync::Arc;

use log::warn;
use parking_lot::Mutex;

use crate::kube::ServiceAccount;
use crate::metrics::{DroppedEntryLabels, Metrics};

/// Annotation listing extra subjects the account may publish to (comma-separated).
pub const PUB_ANNOTATION: &str = "nats.io/allowed-pub-subjects";
/// Annotation listing extra subjects the account may subscribe to (comma-separated).
pub const SUB_ANNOTATION: &str = "nats.io/allowed-sub-subjects";

/// Subjects no client of this service may be granted through either direction.
const ALWAYS_DENIED: &str = "$SYS.>";

/// The permissions one ServiceAccount gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects the client may publish to.
    pub pub_allow: Vec<String>,
    /// Subjects the client may never publish to, whatever `pub_allow` says.
    pub pub_deny: Vec<String>,
    /// Subjects the client may subscribe to.
    pub sub_allow: Vec<String>,
    /// Subjects the client may never subscribe to, whatever `sub_allow` says.
    pub sub_deny: Vec<String>,
    /// Responses the client may publish to a request's reply subject (0: none).
    pub resp_max: i64,
}

/// Why an annotation entry was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// Not a valid NATS subject.
    Invalid,
    /// An inbox, reply or system subject, which only the defaults may grant.
    Reserved,
}

impl DropCause {
    fn label(self) -> &'static str {
        match self {
            DropCause::Invalid => "invalid",
            DropCause::Reserved => "reserved",
        }
    }
}

/// The private inbox prefix of a ServiceAccount: `_INBOX_<ns>_<sa>` with every `.` of the name
/// turned into `_`.
///
/// Without the substitution the account `app` could subscribe to `_INBOX_ns_app.>` and so read
/// the inbox of `app.x` (`_INBOX_ns_app.x.…`). Namespaces cannot contain `_` or `.`, and names
/// cannot contain `_`, so the mapping is one-to-one.
pub fn private_inbox(namespace: &str, name: &str) -> String {
    format!("_INBOX_{}_{}", namespace, name.replace('.', "_"))
}

/// Checks that `subject` is a valid NATS subject for a permission: non-empty tokens without
/// whitespace, `*` only as a whole token, `>` only as the whole last token.
pub fn is_valid_subject(subject: &str) -> bool {
    if subject.is_empty() || subject.len() > 512 {
        return false;
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t.chars().any(|c| c.is_whitespace() || c.is_control())
            && (*t == "*" || !t.contains('*'))
            && (*t == ">" && i == last || !t.contains('>'))
    })
}

/// Whether `subject` could match a subject only the defaults may grant: inboxes, replies and the
/// system subjects. A wildcard first token (`>`, `*.>`, `*.x`) matches them too, so it is
/// reserved as well: granted, it would let one account read every other account's private inbox.
fn is_reserved(subject: &str) -> bool {
    let first = subject.split('.').next().unwrap_or("");
    first.starts_with("_INBOX")
        || first.starts_with("_REPLY")
        || first == "$SYS"
        || first == "*"
        || first == ">"
}

/// Splits an annotation value into its valid entries, reporting each refused one.
fn parse_entries(value: &str, mut refused: impl FnMut(&str, DropCause)) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for entry in value.split(',').map(str::trim) {
        if entry.is_empty() {
            continue;
        }
        if !is_valid_subject(entry) {
            refused(entry, DropCause::Invalid);
        } else if is_reserved(entry) {
            refused(entry, DropCause::Reserved);
        } else if !out.iter().any(|e| e == entry) {
            out.push(entry.to_string());
        }
    }
    out
}

/// Builds the permissions of `sa`, logging and counting every refused annotation entry.
pub fn permissions_for(sa: &ServiceAccount, metrics: Option<&Metrics>) -> Permissions {
    let namespace_subjects = format!("{}.>", sa.namespace);
    let inbox = format!("{}.>", private_inbox(&sa.namespace, &sa.name));
    let mut pub_allow = vec![namespace_subjects.clone()];
    let mut sub_allow = vec![namespace_subjects, "_INBOX.>".to_string(), inbox];
    for (annotation, direction, target) in [
        (PUB_ANNOTATION, "pub", &mut pub_allow),
        (SUB_ANNOTATION, "sub", &mut sub_allow),
    ] {
        let Some(value) = sa.annotations.get(annotation) else {
            continue;
        };
        let entries = parse_entries(value, |entry, cause| {
            warn!(
                "serviceaccount {}/{}: annotation {} entry {:?} dropped ({})",
                sa.namespace,
                sa.name,
                annotation,
                entry,
                match cause {
                    DropCause::Invalid => "not a valid NATS subject",
                    DropCause::Reserved => {
                        "inbox, reply and $SYS subjects, and wildcard first tokens that cover them, cannot be granted"
                    }
                }
            );
            if let Some(m) = metrics {
                m.dropped_annotation_entries
                    .get_or_create(&DroppedEntryLabels {
                        direction,
                        cause: cause.label(),
                    })
                    .inc();
            }
        });
        for e in entries {
            if !target.contains(&e) {
                target.push(e);
            }
        }
    }
    Permissions {
        pub_allow,
        pub_deny: vec![ALWAYS_DENIED.to_string()],
        sub_allow,
        sub_deny: vec![ALWAYS_DENIED.to_string()],
        resp_max: 1,
    }
}

/// `(namespace, name)` of a ServiceAccount.
type AccountKey = (String, String);
/// The object permissions were computed from, and the result.
type Computed = (Arc<ServiceAccount>, Arc<Permissions>);

/// Remembers the permissions computed for each ServiceAccount object, so annotations are parsed
/// (and their warnings logged) once per version of the object rather than once per connection.
pub struct PermissionCache {
    entries: Mutex<HashMap<AccountKey, Computed>>,
    metrics: Arc<Metrics>,
    capacity: usize,
}

impl PermissionCache {
    /// Creates an empty cache holding at most `capacity` accounts.
    pub fn new(metrics: Arc<Metrics>, capacity: usize) -> PermissionCache {
        PermissionCache {
            entries: Mutex::new(HashMap::new()),
            metrics,
            capacity: capacity.max(1),
        }
    }

    /// The permissions of `sa`, computed when this exact object was not seen before.
    pub fn permissions(&self, sa: &Arc<ServiceAccount>) -> Arc<Permissions> {
        let key = (sa.namespace.clone(), sa.name.clone());
        if let Some((seen, perms)) = self.entries.lock().get(&key) {
            // The cache hands out a new Arc for every new version of the object.
            if Arc::ptr_eq(seen, sa) || **seen == **sa {
                return perms.clone();
            }
        }
        let perms = Arc::new(permissions_for(sa, Some(&self.metrics)));
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key, (sa.clone(), perms.clone()));
        perms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sa(ns: &str, name: &str, annotations: &[(&str, &str)]) -> ServiceAccount {
        ServiceAccount {
            namespace: ns.into(),
            name: name.into(),
            uid: "uid-1".into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn dropped(m: &Metrics, direction: &'static str, cause: &'static str) -> u64 {
        m.dropped_annotation_entries
            .get_or_create(&DroppedEntryLabels { direction, cause })
            .get()
    }

    #[test]
    fn defaults_isolate_the_namespace() {
        let p = permissions_for(&sa("team-a", "app", &[]), None);
        assert_eq!(p.pub_allow, vec!["team-a.>"]);
        assert_eq!(
            p.sub_allow,
            vec!["team-a.>", "_INBOX.>", "_INBOX_team-a_app.>"]
        );
        assert_eq!(p.resp_max, 1);
        assert_eq!(p.pub_deny, vec!["$SYS.>"]);
        assert_eq!(p.sub_deny, vec!["$SYS.>"]);
    }

    #[test]
    fn dots_in_the_account_name_cannot_reach_another_accounts_inbox() {
        assert_eq!(private_inbox("ns", "app.x"), "_INBOX_ns_app_x");
        let app = permissions_for(&sa("ns", "app", &[]), None);
        let app_x = permissions_for(&sa("ns", "app.x", &[]), None);
        assert!(app.sub_allow.contains(&"_INBOX_ns_app.>".to_string()));
        assert!(app_x.sub_allow.contains(&"_INBOX_ns_app_x.>".to_string()));
        // `_INBOX_ns_app.>` does not match anything under `_INBOX_ns_app_x`.
        assert!(!app
            .sub_allow
            .iter()
            .any(|s| s.starts_with("_INBOX_ns_app_x")));
    }

    #[test]
    fn annotations_add_trimmed_subjects_in_order_without_duplicates() {
        let p = permissions_for(
            &sa(
                "prod",
                "svc",
                &[
                    (PUB_ANNOTATION, " orders.> ,inventory.check,, orders.>"),
                    (SUB_ANNOTATION, "orders.responses.*, prod.>"),
                ],
            ),
            None,
        );
        assert_eq!(p.pub_allow, vec!["prod.>", "orders.>", "inventory.check"]);
        assert_eq!(
            p.sub_allow,
            vec![
                "prod.>",
                "_INBOX.>",
                "_INBOX_prod_svc.>",
                "orders.responses.*"
            ]
        );
    }

    #[test]
    fn invalid_subjects_are_dropped_and_counted() {
        let m = Metrics::new();
        let bad = "a..b, .a, a., a b, a.>.b, a.b*, a.*b, >x, a\tb, ";
        let p = permissions_for(
            &sa(
                "ns",
                "svc",
                &[(PUB_ANNOTATION, bad), (SUB_ANNOTATION, "ok.*, x..y")],
            ),
            Some(&m),
        );
        assert_eq!(p.pub_allow, vec!["ns.>"]);
        assert!(p.sub_allow.contains(&"ok.*".to_string()));
        assert_eq!(dropped(&m, "pub", "invalid"), 9);
        assert_eq!(dropped(&m, "sub", "invalid"), 1);
    }

    #[test]
    fn inbox_reply_and_system_subjects_cannot_be_granted() {
        let m = Metrics::new();
        let reserved =
            "_INBOX.>, _INBOX_other_app.>, _INBOX_x, _REPLY.a, $SYS.>, $SYS.REQ.USER.AUTH, >, *.>, *.events, *";
        let p = permissions_for(
            &sa(
                "ns",
                "svc",
                &[(SUB_ANNOTATION, reserved), (PUB_ANNOTATION, reserved)],
            ),
            Some(&m),
        );
        assert_eq!(p.pub_allow, vec!["ns.>"]);
        assert_eq!(p.sub_allow, vec!["ns.>", "_INBOX.>", "_INBOX_ns_svc.>"]);
        assert_eq!(dropped(&m, "sub", "reserved"), 10);
        assert_eq!(dropped(&m, "pub", "reserved"), 10);
    }

    #[test]
    fn wildcards_are_valid_only_as_whole_tokens() {
        for ok in [
            "a",
            "a.b",
            "a.*",
            "*.b",
            "a.>",
            ">",
            "*",
            "a.*.>",
            "$JS.API.>",
            "a-b_c.d",
        ] {
            assert!(is_valid_subject(ok), "{ok}");
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "a.>.b", ">.a", "a>", "a*", "*a", "a b", "a\nb",
        ] {
            assert!(!is_valid_subject(bad), "{bad:?}");
        }
    }

    #[test]
    fn permission_cache_recomputes_only_for_a_new_object() {
        let m = Arc::new(Metrics::new());
        let cache = PermissionCache::new(m.clone(), 10);
        let v1 = Arc::new(sa("ns", "svc", &[(PUB_ANNOTATION, "a.b, bad..")]));
        let p1 = cache.permissions(&v1);
        let again = cache.permissions(&v1);
        assert!(Arc::ptr_eq(&p1, &again));
        assert_eq!(
            dropped(&m, "pub", "invalid"),
            1,
            "counted once per object version"
        );
        let v2 = Arc::new(sa("ns", "svc", &[(PUB_ANNOTATION, "c.d")]));
        let p2 = cache.permissions(&v2);
        assert_eq!(p2.pub_allow, vec!["ns.>", "c.d"]);
    }
}
