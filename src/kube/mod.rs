//! The Kubernetes side: where the API server is, the client that talks to it, the ServiceAccount
//! list + watch, and the ServiceAccount cache.
//!
//! - [`config`]: in-cluster settings or a kubeconfig, resolved into one endpoint;
//! - [`credential`]: the bearer token, re-read from its file when the kubelet rotates it;
//! - [`client`]: the HTTP transport, with bounded waits; [`error`]: what can go wrong;
//! - [`object`]: the ServiceAccount as kept, read from API objects;
//! - [`watch`] keeps the [`cache`] current with a paginated list followed by a watch;
//! - [`file`](mod@file) fills the same cache from a local file, for development without a cluster;
//! - [`cache`] answers lookups, with a rate-limited GET on a miss when backed by the API;
//! - [`pods`] keeps the pods the pod binding check reads, through the same list + watch.

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

pub mod cache;
pub mod client;
pub mod config;
pub(crate) mod credential;
pub mod error;
pub mod file;
pub mod object;
pub mod pods;
#[cfg(test)]
pub(crate) mod test_server;
pub mod watch;

pub use cache::{
    ApiDirectory, CacheBuilder, Change, FileDirectory, Lookup, LookupSettings, ServiceAccountCache,
    ServiceAccountDirectory, ServiceAccountFetcher,
};
pub use client::{ApiClient, ClientSettings, LineStream, RawResponse};
pub use config::{InClusterPaths, KubeConfigSource};
pub use error::{ApiStatus, ConfigError, KubeError};
pub use file::{load_file, spawn_file_source, FileError};
pub(crate) use object::RawObject;
pub use object::{is_valid_namespace, is_valid_object_name, ResourceVersion, ServiceAccount, Uid};
pub use pods::{PodCache, PodCheck};
pub use watch::{spawn_pod_watcher, spawn_watcher, BackoffSettings, WatchSettings};

/// Whether stop was requested: a message arrived or every sender is gone.
pub(crate) fn stop_requested(stop: &Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(TryRecvError::Empty))
}

/// Waits `delay` unless stop is requested first; returns whether to stop.
pub(crate) fn wait_or_stop(stop: &Receiver<()>, delay: Duration) -> bool {
    !matches!(stop.recv_timeout(delay), Err(RecvTimeoutError::Timeout))
}
