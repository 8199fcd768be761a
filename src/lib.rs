//! nats-k8s-oidc-callout: a NATS auth callout service that authorizes Kubernetes workloads by their
//! service-account tokens.
//!
//! The data path of one authorization follows the modules: [`callout`] takes the request off NATS,
//! [`identity`] validates the service-account token, [`kube`] finds the ServiceAccount, [`policy`]
//! turns it into NATS permissions, and [`authorizer`] makes the decision; [`events`] tells the
//! writers of annotations what the policy dropped, off the request path.
//!
//! Log messages never contain tokens, passwords, seeds or the credential part of URLs.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod app;
pub mod authorizer;
pub mod backoff;
pub mod callout;
pub mod config;
pub mod devtools;
pub mod events;
pub mod explain;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod identity;
pub mod keys;
pub mod kube;
pub mod metrics;
pub mod operator;
pub mod policy;
pub mod readiness;
pub mod revoke;
pub mod selfcheck;
pub mod urls;
pub mod verified;

/// Seconds since the Unix epoch now (0 if the clock is before it): what JWT times and the
/// metrics' timestamps count in.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
