//! The Kubernetes side: API client, ServiceAccount list + watch, and the ServiceAccount cache.

use std::collections::BTreeMap;

/// The parts of a Kubernetes ServiceAccount the service uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Namespace of the account.
    pub namespace: String,
    /// Name of the account (may contain dots).
    pub name: String,
    /// The object's uid; a re-created account has a new one.
    pub uid: String,
    /// The object's annotations.
    pub annotations: BTreeMap<String, String>,
}
