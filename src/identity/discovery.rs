//! OIDC issuer discovery: the cluster's service-account issuer, read from the API server.

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::warn;
use serde::Deserialize;

use crate::backoff::{Backoff, BackoffSettings};
use crate::kube::{ApiClient, KubeError};

/// Path of the API server's OIDC discovery document.
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Timeout of one discovery request.
const DISCOVERY_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait before asking for the discovery document again; it doubles up to the maximum.
const DISCOVERY_FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between two discovery attempts.
const DISCOVERY_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The part of the OIDC discovery document the service reads.
#[derive(Debug, Deserialize)]
struct DiscoveryDocument {
    issuer: String,
}

/// What became of reading the issuer from the API server.
#[derive(Debug)]
pub enum Discovered {
    /// The discovery document's `issuer`.
    Issuer(String),
    /// The API server answered, but not with an issuer: asking again would get the same answer.
    Unavailable(IssuerUnavailable),
    /// The stop signal came while waiting to ask again.
    Stopped,
}

/// Why the API server gave no issuer, in words fit for a log line.
#[derive(Debug, thiserror::Error)]
pub enum IssuerUnavailable {
    /// The discovery document has no (or an empty) `issuer` field.
    #[error("the document has no issuer")]
    NoIssuer,
    /// The request failed in a way that would repeat (no discovery endpoint, forbidden, not
    /// JSON, not the API server's origin, a client that cannot be configured).
    #[error(transparent)]
    Refused(KubeError),
}

/// Whether a failed discovery request would fail the same way again: the server did answer.
fn discovery_failure_is_final(e: &KubeError) -> bool {
    matches!(e.status_code(), Some(403 | 404))
        || matches!(
            e,
            KubeError::Decode(_) | KubeError::CrossOrigin | KubeError::Config(_)
        )
}

/// Reads the cluster's service-account issuer from `/.well-known/openid-configuration`: the
/// exact `iss` differs between distributions (`https://kubernetes.default.svc.cluster.local` on
/// kubeadm, kind and k3s; a cloud URL on EKS, GKE, AKS). Failures that may pass (no connection,
/// 5xx, 429, 401 while the token file is rotated) are retried with a jittered backoff from
/// 500 ms to 30 s (or the server's `Retry-After`) until `stop`: the service is not ready
/// meanwhile, so a replica never starts deciding with a guessed issuer because the API server
/// hiccuped once.
pub fn discover_issuer(client: &ApiClient, stop: &Receiver<()>) -> Discovered {
    let backoff = Backoff::new(BackoffSettings::doubling(
        DISCOVERY_FIRST_BACKOFF,
        DISCOVERY_MAX_BACKOFF,
    ));
    let ask = || client.get_json::<DiscoveryDocument>(DISCOVERY_PATH, DISCOVERY_REQUEST_TIMEOUT);
    discover_with(ask, backoff, stop)
}

/// The discovery loop over any way of asking for the document, so that its decisions can be
/// tested with scripted answers.
fn discover_with(
    mut ask: impl FnMut() -> Result<DiscoveryDocument, KubeError>,
    mut backoff: Backoff,
    stop: &Receiver<()>,
) -> Discovered {
    loop {
        let e = match ask() {
            Ok(doc) if !doc.issuer.is_empty() => return Discovered::Issuer(doc.issuer),
            Ok(_) => return Discovered::Unavailable(IssuerUnavailable::NoIssuer),
            Err(e) if discovery_failure_is_final(&e) => {
                return Discovered::Unavailable(IssuerUnavailable::Refused(e))
            }
            Err(e) => e,
        };
        let wait = backoff.next_delay(e.retry_after());
        warn!(
            "cannot read the issuer from the API server's discovery document ({e}); retrying in {wait:?} (not ready until then)"
        );
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return Discovered::Stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const ISSUER: &str = "https://oidc.example.com/cluster";

    /// The API server answered with this status.
    fn answered(code: u16) -> KubeError {
        KubeError::Status {
            code,
            reason: None,
            message: None,
            retry_after: None,
        }
    }

    fn document(issuer: &str) -> Result<DiscoveryDocument, KubeError> {
        Ok(DiscoveryDocument {
            issuer: issuer.to_string(),
        })
    }

    fn not_json() -> KubeError {
        let e = serde_json::from_slice::<DiscoveryDocument>(b"<html>").expect_err("not JSON");
        KubeError::Decode(e)
    }

    /// Runs the loop over these answers, with millisecond waits; returns the result and how
    /// many answers were asked for.
    fn discover(
        answers: Vec<Result<DiscoveryDocument, KubeError>>,
        stop: &Receiver<()>,
    ) -> (Discovered, usize) {
        let mut answers = VecDeque::from(answers);
        let mut asked = 0;
        let ask = || {
            asked += 1;
            answers.pop_front().unwrap_or_else(|| Err(answered(503)))
        };
        let backoff = Backoff::new(BackoffSettings::doubling(
            Duration::from_millis(1),
            Duration::from_millis(2),
        ));
        let result = discover_with(ask, backoff, stop);
        (result, asked)
    }

    fn never_stopped() -> (crossbeam_channel::Sender<()>, Receiver<()>) {
        crossbeam_channel::bounded(1)
    }

    #[test]
    fn answers_that_would_repeat_are_final() {
        for e in [
            answered(403),
            answered(404),
            not_json(),
            KubeError::CrossOrigin,
        ] {
            assert!(discovery_failure_is_final(&e), "{e}");
        }
    }

    #[test]
    fn answers_that_may_pass_are_retried() {
        for code in [401, 429, 500, 502, 503, 504] {
            assert!(!discovery_failure_is_final(&answered(code)), "{code}");
        }
    }

    #[test]
    fn issuer_is_read_after_failures_that_may_pass() {
        let (_keep, stop) = never_stopped();
        let (result, asked) = discover(
            vec![Err(answered(503)), Err(answered(429)), document(ISSUER)],
            &stop,
        );
        assert!(
            matches!(result, Discovered::Issuer(ref i) if i == ISSUER),
            "{result:?}"
        );
        assert_eq!(asked, 3);
    }

    #[test]
    fn forbidden_discovery_is_not_asked_again() {
        let (_keep, stop) = never_stopped();
        let (result, asked) = discover(vec![Err(answered(403)), document(ISSUER)], &stop);
        assert!(
            matches!(
                result,
                Discovered::Unavailable(IssuerUnavailable::Refused(_))
            ),
            "{result:?}"
        );
        assert_eq!(asked, 1);
    }

    #[test]
    fn document_without_issuer_is_unavailable_and_says_so() {
        let (_keep, stop) = never_stopped();
        let (result, asked) = discover(vec![document("")], &stop);
        match result {
            Discovered::Unavailable(why) => {
                assert_eq!(why.to_string(), "the document has no issuer")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(asked, 1);
    }

    #[test]
    fn stop_while_waiting_to_ask_again_ends_discovery() {
        let (stop_tx, stop) = never_stopped();
        drop(stop_tx);
        let (result, asked) = discover(vec![Err(answered(503)), document(ISSUER)], &stop);
        assert!(matches!(result, Discovered::Stopped), "{result:?}");
        assert_eq!(asked, 1);
    }
}
