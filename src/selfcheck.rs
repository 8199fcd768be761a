//! The self-check: at an interval the service connects through nats-server as an ordinary
//! client, with a token the API server issues for the service's own ServiceAccount, and so
//! proves the whole chain a workload's connect takes: nats-server sends the request to this
//! service, the service decides, and nats-server accepts the answer (its `auth_callout.issuer`
//! and `xkey` are this service's keys, the account exists). The authorizer grants that
//! ServiceAccount nothing at all (see [`crate::authorizer::Authorizer::with_own_account`]).
//!
//! Each check names its client uniquely; the replica that answers it records what it answered
//! in a [`Probe`], so when this replica answered its own check, a refusal can be pinned on
//! nats-server (it refused a grant) or on the decision (the service denied it, and why).
//! The outcome is counted, logged when it changes, and can hold `/readyz`.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{info, warn};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::callout::connection::{ConnectError, Dialer, Login};
use crate::callout::service::Outcome;
use crate::kube::ApiClient;
use crate::metrics::{DecisionLabels, Metrics, SelfCheckLabels};
use crate::readiness::Readiness;

/// The start of every self-check client's name; the rest is random per check.
pub const CLIENT_NAME_PREFIX: &str = "nats-k8s-oidc-callout-self-check-";
/// How long a check's connect may take: nats-server answers only after the callout has, within
/// its authorization timeout (a few seconds).
const HANDSHAKE: Duration = Duration::from_secs(15);
/// The lifetime asked for the check's token (the API server's minimum).
const TOKEN_SECONDS: u64 = 600;
/// A token is asked for again once it is this old.
const TOKEN_RENEW_AFTER: Duration = Duration::from_secs(300);
/// Timeout of one TokenRequest.
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Checks in one round when a refusal was answered by another replica: each lands on a replica
/// at random, so a few more find out what this one would have answered.
const ATTEMPTS_PER_ROUND: usize = 3;
/// A failure that goes on is logged again this often.
const RELOG_EVERY: Duration = Duration::from_secs(600);

/// What the self-check needs to know.
#[derive(Debug, Clone)]
pub struct SelfCheckSettings {
    /// Time between checks.
    pub interval: Duration,
    /// Namespace of the service's own ServiceAccount.
    pub namespace: String,
    /// Name of the service's own ServiceAccount.
    pub name: String,
    /// The audience the check's token is asked for (`JWT_AUDIENCE`).
    pub audience: String,
    /// Whether `/readyz` waits for a passing check.
    pub gates_readiness: bool,
    /// What nats-server must be configured with for this service, for the log line of a
    /// refused grant (the issuer key, the account).
    pub refused_grant_hint: String,
    /// The xkey nats-server must seal requests for, when the service has one.
    pub xkey_public: Option<String>,
    /// The sentinel's creds file presented with the token (operator mode without
    /// `default_sentinel`).
    pub sentinel_creds: Option<std::path::PathBuf>,
    /// Whether nats-server runs in operator mode (where a client without a sentinel may be
    /// refused before the callout is asked).
    pub operator_mode: bool,
}

/// Where the replica that answers a check's connect records its answer.
#[derive(Default)]
pub struct Probe {
    watched: Mutex<Option<Watched>>,
}

struct Watched {
    client_name: String,
    answer: Option<(&'static str, &'static str)>,
}

impl Probe {
    /// Records `outcome` when `client_name` is the check being watched; cheap for any other.
    pub fn observe(&self, client_name: &str, outcome: &Outcome) {
        if !client_name.starts_with(CLIENT_NAME_PREFIX) {
            return;
        }
        if let Some(w) = self.watched.lock().as_mut() {
            if w.client_name == client_name {
                w.answer = Some((outcome.result, outcome.reason));
            }
        }
    }

    fn watch(&self, client_name: &str) {
        *self.watched.lock() = Some(Watched {
            client_name: client_name.to_owned(),
            answer: None,
        });
    }

    /// What this replica answered the watched check (`result`, `reason`), if it answered it.
    fn take(&self) -> Option<(&'static str, &'static str)> {
        self.watched.lock().take().and_then(|w| w.answer)
    }
}

/// The result of one check, with the cause for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Checked {
    result: &'static str,
    cause: String,
    /// Whether the outcome says something about this replica's keys and decisions: a pass or a
    /// refusal of a check this replica answered (or could not open). Only these move readiness.
    verdict: bool,
}

/// A TokenRequest's answer (the fields used).
#[derive(Deserialize)]
struct TokenRequestAnswer {
    status: TokenRequestStatus,
}

#[derive(Deserialize)]
struct TokenRequestStatus {
    token: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequestSpec<'a> {
    audiences: [&'a str; 1],
    expiration_seconds: u64,
}

/// Where the check's token comes from.
pub enum TokenSource {
    /// A TokenRequest to the API server for the service's own ServiceAccount.
    Request(Arc<ApiClient>),
    /// A file the kubelet keeps current (a projected `serviceAccountToken` volume), read at
    /// every check.
    File(std::path::PathBuf),
}

/// Runs the checks on their own thread until `stop` fires.
pub struct SelfCheck {
    settings: SelfCheckSettings,
    source: TokenSource,
    dialer: Dialer,
    probe: Arc<Probe>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    token: Option<(String, Instant)>,
    /// The last result and cause logged, and when.
    logged: Option<(Checked, Instant)>,
}

impl SelfCheck {
    /// A self-check connecting to the servers of `dialer` (its TLS settings included).
    pub fn new(
        settings: SelfCheckSettings,
        source: TokenSource,
        dialer: &Dialer,
        probe: Arc<Probe>,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> SelfCheck {
        if settings.gates_readiness {
            readiness.gate_on_self_check();
        }
        SelfCheck {
            dialer: dialer.as_client(Login::None, CLIENT_NAME_PREFIX, HANDSHAKE),
            settings,
            source,
            probe,
            metrics,
            readiness,
            token: None,
            logged: None,
        }
    }

    /// Starts the thread: the first check once the callout subscription is in place, then one
    /// every interval (give or take a tenth, so replicas do not check in step).
    pub fn spawn(mut self, stop: Receiver<()>) -> Result<JoinHandle<()>, String> {
        std::thread::Builder::new()
            .name("self-check".into())
            .spawn(move || {
                info!(
                    "self-check every {:?} as {}/{}{}",
                    self.settings.interval,
                    self.settings.namespace,
                    self.settings.name,
                    if self.settings.gates_readiness {
                        "; /readyz waits for it to pass"
                    } else {
                        ""
                    }
                );
                let mut wait = Duration::from_millis(500);
                loop {
                    match stop.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    if !self.readiness.subscribed() {
                        wait = Duration::from_millis(500);
                        continue;
                    }
                    let checked = self.round();
                    self.record(checked);
                    let tenth = self.settings.interval.as_millis() as u64 / 10;
                    wait = self.settings.interval - Duration::from_millis(tenth)
                        + Duration::from_millis(fastrand::u64(0..=2 * tenth));
                }
            })
            .map_err(|e| format!("cannot start the self-check thread: {e}"))
    }

    /// Up to [`ATTEMPTS_PER_ROUND`] checks, until one this replica answered passes or fails, or
    /// one fails for a cause outside the service (no token, no server, no answer).
    fn round(&mut self) -> Checked {
        let mut checked = self.check();
        for _ in 1..ATTEMPTS_PER_ROUND {
            let answered_elsewhere = !checked.verdict
                && (checked.result == SelfCheckLabels::REFUSED
                    || checked.result == SelfCheckLabels::OK);
            if !answered_elsewhere {
                break;
            }
            checked = self.check();
        }
        checked
    }

    /// One connect with the service's own token.
    fn check(&mut self) -> Checked {
        let token = match self.token() {
            Ok(t) => t,
            Err(why) => {
                return Checked {
                    verdict: false,
                    result: SelfCheckLabels::NO_TOKEN,
                    cause: format!(
                        "no token for {}/{}: {why}{}",
                        self.settings.namespace,
                        self.settings.name,
                        match self.source {
                            TokenSource::Request(_) => " (the Role must allow create on serviceaccounts/token for this ServiceAccount)",
                            TokenSource::File(_) => " (SELF_CHECK_TOKEN_FILE: a projected serviceAccountToken volume with the audience JWT_AUDIENCE)",
                        }
                    ),
                }
            }
        };
        let client_name = format!("{CLIENT_NAME_PREFIX}{:016x}", fastrand::u64(..));
        let login = match &self.settings.sentinel_creds {
            Some(creds) => Login::SentinelAndToken(creds.clone(), token),
            None => Login::Token(token),
        };
        let mut dialer = self.dialer.as_client(login, &client_name, HANDSHAKE);
        let sealed_for_another = || {
            self.metrics
                .decisions
                .get_or_create(&DecisionLabels {
                    result: "deny",
                    reason: "request_cannot_open",
                })
                .get()
        };
        let unopened_before = sealed_for_another();
        self.probe.watch(&client_name);
        let started = Instant::now();
        let connected = dialer.connect();
        let took = started.elapsed();
        let answered_here = self.probe.take();
        match connected {
            Ok(mut conn) => {
                conn.close();
                // A pass another replica answered proves that one's keys, not this one's: a new
                // pod with keys nats-server refuses must not become ready from an old pod's pass.
                let here = answered_here.is_some();
                Checked {
                    verdict: here,
                    result: SelfCheckLabels::OK,
                    cause: format!(
                        "connected through {} in {took:.1?}{}",
                        conn.server(),
                        if here { "" } else { " (another replica answered it)" }
                    ),
                }
            }
            Err((server, ConnectError::Refused(words))) => {
                let sealed = sealed_for_another() > unopened_before;
                Checked {
                    verdict: answered_here.is_some() || sealed,
                    result: SelfCheckLabels::REFUSED,
                    cause: format!(
                        "{server} refused the check's client ({words:?}) after {took:.1?}: {}",
                        self.refusal_cause(answered_here, sealed)
                    ),
                }
            }
            Err((server, e)) if took + Duration::from_millis(500) >= HANDSHAKE => Checked {
                verdict: false,
                result: SelfCheckLabels::TIMEOUT,
                cause: format!(
                    "{server} did not answer the check's connect within {HANDSHAKE:?} ({e}): no replica's answer reached it"
                ),
            },
            Err((server, e)) => Checked {
                verdict: false,
                result: SelfCheckLabels::UNREACHABLE,
                cause: format!("cannot reach {server}: {e}"),
            },
        }
    }

    /// The likely cause of a refusal, from what this replica saw of the check.
    fn refusal_cause(
        &self,
        answered_here: Option<(&str, &str)>,
        sealed_for_another: bool,
    ) -> String {
        match answered_here {
            Some(("allow", _)) => format!(
                "this replica granted it, so nats-server refused the service's answer: {}",
                self.settings.refused_grant_hint
            ),
            Some((_, reason)) => format!(
                "this replica denied it (reason={reason}): the service refuses its own ServiceAccount's token, so it would refuse workloads' tokens alike"
            ),
            None if sealed_for_another => format!(
                "this replica could not open nats-server's requests (reason=request_cannot_open): nats-server seals them for another xkey than this service's{}",
                self.settings
                    .xkey_public
                    .as_deref()
                    .map(|x| format!(" (auth_callout.xkey must be {x})"))
                    .unwrap_or_default()
            ),
            None => format!(
                "{ELSEWHERE}: their log says what they answered{}",
                if self.settings.operator_mode && self.settings.sentinel_creds.is_none() {
                    " (or, with an operator-mode server without default_sentinel, nats-server refused it before asking: set SELF_CHECK_CREDS_FILE to the sentinel's creds)"
                } else {
                    ""
                }
            ),
        }
    }

    /// A token for the service's own ServiceAccount: the file's, or one asked for again when
    /// half its life is gone.
    fn token(&mut self) -> Result<String, String> {
        let api = match &self.source {
            TokenSource::Request(api) => api.clone(),
            TokenSource::File(path) => {
                return match std::fs::read_to_string(path) {
                    Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
                    Ok(_) => Err(format!("{} is empty", path.display())),
                    Err(e) => Err(format!("cannot read {}: {e}", path.display())),
                }
            }
        };
        if let Some((token, at)) = &self.token {
            if at.elapsed() < TOKEN_RENEW_AFTER {
                return Ok(token.clone());
            }
        }
        let path = format!(
            "/api/v1/namespaces/{}/serviceaccounts/{}/token",
            self.settings.namespace, self.settings.name
        );
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": TokenRequestSpec {
                audiences: [&self.settings.audience],
                expiration_seconds: TOKEN_SECONDS,
            },
        });
        let answer: TokenRequestAnswer = api
            .post_json(&path, &body, TOKEN_REQUEST_TIMEOUT)
            .map_err(|e| e.to_string())?;
        self.token = Some((answer.status.token.clone(), Instant::now()));
        Ok(answer.status.token)
    }

    /// Counts a check, sets the gauge and readiness, and logs it when the outcome changed (or
    /// a failure has gone on for [`RELOG_EVERY`]).
    fn record(&mut self, checked: Checked) {
        self.metrics
            .self_checks
            .get_or_create(&SelfCheckLabels {
                result: checked.result,
            })
            .inc();
        let passed = checked.result == SelfCheckLabels::OK;
        self.metrics.self_check_failing.set(i64::from(!passed));
        // Only a verdict on this replica moves readiness: a token or network failure, a timeout,
        // or a pass or refusal another replica answered (one of an older version, during a
        // rollout) says nothing about whether nats-server takes this replica's answers.
        if checked.verdict {
            self.readiness.set_self_check_passed(passed);
        }
        let same = self.logged.as_ref().is_some_and(|(last, at)| {
            last.result == checked.result && (passed || at.elapsed() < RELOG_EVERY)
        });
        if same {
            return;
        }
        if passed {
            info!("self-check passed: {}", checked.cause);
        } else {
            warn!(
                "self-check failed (result={}): {}",
                checked.result, checked.cause
            );
        }
        self.logged = Some((checked, Instant::now()));
    }
}

/// The cause given when another replica answered the check (and a reason to try again).
const ELSEWHERE: &str = "another replica answered it";

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(result: &'static str, reason: &'static str) -> Outcome {
        Outcome {
            reply: Some(Vec::new()),
            result,
            reason,
        }
    }

    #[test]
    fn only_the_watched_name_is_recorded_and_only_until_it_is_taken() {
        // Attack: clients naming themselves with the check's prefix (any client picks its own
        // name) must not be taken for the check, however close the name.
        let probe = Probe::default();
        let watched = format!("{CLIENT_NAME_PREFIX}00112233aabbccdd");
        probe.observe(&watched, &outcome("deny", "early"));
        probe.watch(&watched);
        for name in [
            CLIENT_NAME_PREFIX.to_owned(),
            format!("{CLIENT_NAME_PREFIX}00112233AABBCCDD"),
            format!("{CLIENT_NAME_PREFIX}00112233aabbccd"),
            format!("{CLIENT_NAME_PREFIX}00112233aabbccdd "),
            format!(" {CLIENT_NAME_PREFIX}00112233aabbccdd"),
            "00112233aabbccdd".to_owned(),
        ] {
            probe.observe(&name, &outcome("deny", "token_expired"));
        }
        assert_eq!(
            probe.take(),
            None,
            "an answer before watching or to another name"
        );
        probe.watch(&watched);
        probe.observe(&watched, &outcome("allow", "allowed"));
        assert_eq!(probe.take(), Some(("allow", "allowed")));
        // A late answer to a check already taken is no answer to the next one.
        probe.observe(&watched, &outcome("deny", "late"));
        assert_eq!(probe.take(), None);
        let next = format!("{CLIENT_NAME_PREFIX}ffffffffffffffff");
        probe.watch(&next);
        probe.observe(&watched, &outcome("deny", "late"));
        assert_eq!(probe.take(), None);
    }
}
