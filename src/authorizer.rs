//! The decision: a validated identity and its ServiceAccount become permissions, or a denial with
//! a specific reason.
//!
//! [`decide`] is pure (no I/O, no logging, no metrics, time passed in) so every rule is tested
//! without servers; [`Authorizer::authorize`] wires it to token validation, the ServiceAccount
//! directory and the permission cache. The decision knows nothing of the NATS wire format: the
//! callout layer hands it a [`ConnectAttempt`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::identity::token::MAX_TOKEN_BYTES;
use crate::identity::{claimed_service_account, Identity, TokenError, TokenValidator};
use crate::kube::cache::{Lookup, ServiceAccountDirectory};
use crate::kube::{is_valid_namespace, is_valid_object_name, PodCache, PodCheck, ServiceAccount};
use crate::metrics::Metrics;
use crate::policy::{Evaluation, NotServed, PermissionCache, Permissions, PolicyStore};
use crate::verified::{TokenKey, VerifiedTokens};

/// Why a client was denied. Only the log and the metrics see it; the client sees the generic text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenyReason {
    /// Neither `auth_token` nor `pass` carried a token.
    #[error("no token in auth_token or pass")]
    NoToken,
    /// The connection is of a kind the service does not authorize (a leafnode, say).
    #[error("connection kind {0:?} is not allowed")]
    ConnectionKindNotAllowed(String),
    /// The service-account token was refused.
    #[error("token refused: {0}")]
    Token(#[source] TokenError),
    /// The token's ServiceAccount does not exist.
    #[error("serviceaccount not found")]
    ServiceAccountNotFound,
    /// The ServiceAccount could not be looked up (API unreachable, lookups rate-limited).
    #[error("serviceaccount lookup failed")]
    ServiceAccountLookupFailed,
    /// The ServiceAccount exists but is not the one the token was minted for (deleted and
    /// re-created under the same name).
    #[error("serviceaccount uid differs from the token's (account re-created?)")]
    ServiceAccountUidMismatch,
    /// The account's namespace or name is not a valid Kubernetes name (only a broken local
    /// ServiceAccount file can produce one): its subjects could not be trusted.
    #[error("serviceaccount namespace or name is not a valid Kubernetes name")]
    InvalidAccountName,
    /// The admin policy does not serve the token's namespace.
    #[error("namespace is not served by the policy: {0}")]
    NamespaceNotAllowed(NotServed),
    /// `POD_BINDING=watch`: no pod of the token's pod name exists (deleted).
    #[error("the token's pod does not exist (deleted?)")]
    PodNotFound,
    /// `POD_BINDING=watch`: a pod of that name exists but is another one (re-created).
    #[error("the token's pod was replaced by another of the same name")]
    PodUidMismatch,
    /// `POD_BINDING=watch`: the pod runs as another ServiceAccount than the token names.
    #[error("the token's pod runs as another serviceaccount")]
    PodServiceAccountMismatch,
    /// `POD_BINDING=watch`: the pod's deletion began more than the API server's grace ago.
    #[error("the token's pod is being deleted")]
    PodDeleted,
    /// `POD_BINDING=watch`: the pods are not listed yet.
    #[error("pods not listed yet")]
    PodLookupFailed,
    /// `NON_POD_TOKENS=refuse`: the token is bound to no pod (a node, a Secret, or nothing).
    #[error("the token is not bound to a pod (NON_POD_TOKENS=refuse)")]
    NotPodBound,
    /// Operator mode: the client's account (named by the policy) has no signing key here.
    #[error("no signing key for account {0} (NATS_ACCOUNT_SIGNING_KEYS_DIR)")]
    AccountKeyMissing(String),
    /// A bug: a panic while deciding.
    #[error("internal error")]
    Internal,
}

impl DenyReason {
    /// The metric label of this reason.
    pub fn reason(&self) -> &'static str {
        match self {
            DenyReason::NoToken => "no_token",
            DenyReason::ConnectionKindNotAllowed(_) => "connection_kind_not_allowed",
            DenyReason::Token(e) => e.reason(),
            DenyReason::ServiceAccountNotFound => "serviceaccount_not_found",
            DenyReason::ServiceAccountLookupFailed => "serviceaccount_lookup_failed",
            DenyReason::ServiceAccountUidMismatch => "serviceaccount_uid_mismatch",
            DenyReason::InvalidAccountName => "serviceaccount_invalid_name",
            DenyReason::NamespaceNotAllowed(_) => "namespace_not_allowed",
            DenyReason::PodNotFound => "pod_not_found",
            DenyReason::PodUidMismatch => "pod_uid_mismatch",
            DenyReason::PodServiceAccountMismatch => "pod_serviceaccount_mismatch",
            DenyReason::PodDeleted => "pod_deleted",
            DenyReason::PodLookupFailed => "pod_lookup_failed",
            DenyReason::NotPodBound => "token_not_pod_bound",
            DenyReason::AccountKeyMissing(_) => "account_key_missing",
            DenyReason::Internal => "internal_error",
        }
    }
}

/// A denial with what was known about the client when it was decided.
#[derive(Debug, Clone)]
pub struct Denial {
    /// Why.
    pub reason: DenyReason,
    /// `namespace/name` of the service account (and ` pod <pod>` for a pod-bound token), when
    /// the token was readable.
    pub account: Option<String>,
    /// The token's `jti`, when the token was verified (see [`Identity::credential_id`]).
    pub credential_id: Option<String>,
}

impl Denial {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        self.reason.reason()
    }
    /// The ServiceAccount denied, for the log: `namespace/name` (marked `(claimed)` when the
    /// token failed verification), or `unknown account`.
    pub fn account_label(&self) -> &str {
        self.account.as_deref().unwrap_or("unknown account")
    }

    fn new(reason: DenyReason, identity: Option<&Identity>) -> Denial {
        Denial {
            reason,
            // The pod too, as the allow line names it: the pod binding's denials are about it.
            account: identity.map(|i| match &i.pod_name {
                Some(pod) => format!("{}/{} pod {pod}", i.namespace, i.service_account),
                None => format!("{}/{}", i.namespace, i.service_account),
            }),
            credential_id: identity.and_then(|i| i.credential_id.clone()),
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reason.fmt(f)
    }
}

/// What an allowed client gets.
#[derive(Debug, Clone)]
pub struct Allowed {
    /// Namespace of its ServiceAccount.
    pub namespace: String,
    /// Name of its ServiceAccount.
    pub service_account: String,
    /// The pod the token is bound to, when it is pod-bound (for the log).
    pub pod: Option<String>,
    /// The pod's uid, when the pod binding check confirmed the pod: the user name then names
    /// the pod, so its connections can be found when it is deleted.
    pub checked_pod_uid: Option<String>,
    /// The token's `jti` (for the log, see [`Identity::credential_id`]).
    pub credential_id: Option<String>,
    /// Unix time at which the client is disconnected.
    pub expires_at: i64,
    /// The account it is placed in; `None`: the default account.
    pub account: Option<String>,
    /// Its permissions.
    pub permissions: Arc<Permissions>,
}

impl Allowed {
    /// The user name in the user JWT: `system:serviceaccount:<ns>:<sa>`, and
    /// `:pod:<pod>:<uid>` after it for a pod the pod binding check confirmed.
    pub fn user_name(&self) -> String {
        let pod = match (&self.pod, &self.checked_pod_uid) {
            (Some(pod), Some(uid)) => Some((pod.as_str(), uid.as_str())),
            _ => None,
        };
        crate::revoke::user_name(&self.namespace, &self.service_account, pod)
    }
}

/// The outcome of one authorization.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Connect with these permissions.
    Allow(Allowed),
    /// Refuse.
    Deny(Denial),
}

impl Decision {
    /// The denial used when deciding panicked.
    pub fn internal_error() -> Decision {
        Decision::Deny(Denial {
            reason: DenyReason::Internal,
            account: None,
            credential_id: None,
        })
    }

    fn deny(reason: DenyReason, identity: Option<&Identity>) -> Decision {
        Decision::Deny(Denial::new(reason, identity))
    }
}

/// What a connecting client presented, as the callout layer read it from the request.
#[derive(Debug, Clone, Copy)]
pub struct ConnectAttempt<'a> {
    /// The connection kind the server reported (`Client`, `Leafnode` …; empty when unknown).
    pub kind: &'a str,
    /// The service-account token the client presented, if any.
    pub token: Option<&'a str>,
}

/// A client [`decide`] lets in: its ServiceAccount and until when. What it may do is the
/// policy's part, computed from the account afterwards.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The ServiceAccount object the token was checked against.
    pub account: Arc<ServiceAccount>,
    /// The pod the token is bound to, when it is pod-bound (for the log).
    pub pod: Option<String>,
    /// The token's `jti` (for the log).
    pub credential_id: Option<String>,
    /// Unix time at which the client is disconnected.
    pub expires_at: i64,
}

impl Admission {
    /// The grant: this admission with the account and permissions the policy gives it.
    pub fn into_allowed(self, evaluation: &Evaluation) -> Allowed {
        Allowed {
            namespace: self.account.namespace.to_string(),
            service_account: self.account.name.to_string(),
            pod: self.pod,
            checked_pod_uid: None,
            credential_id: self.credential_id,
            expires_at: self.expires_at,
            account: evaluation.account.clone(),
            permissions: evaluation.permissions.clone(),
        }
    }
}

/// The pure decision for a validated identity and the result of looking its account up: it
/// reads only its arguments and touches nothing (no metrics, no log).
pub fn decide(
    identity: &Identity,
    lookup: Lookup,
    max_lifetime: Duration,
    now: i64,
) -> Result<Admission, Denial> {
    let deny = |reason| Err(Denial::new(reason, Some(identity)));
    let sa = match lookup {
        Lookup::Found(sa) => sa,
        Lookup::NotFound => return deny(DenyReason::ServiceAccountNotFound),
        Lookup::Unavailable => return deny(DenyReason::ServiceAccountLookupFailed),
    };
    // A token minted for an account that was deleted and re-created under the same name names
    // the old uid: it must not inherit the new account's permissions.
    if !sa.uid.is(&identity.uid) {
        return deny(DenyReason::ServiceAccountUidMismatch);
    }
    // The namespace and name become subjects (`<ns>.>`, `_INBOX_<ns>_<name>`): a `*`, `>` or `.`
    // in them would widen the grant.
    if !is_valid_namespace(&sa.namespace) || !is_valid_object_name(&sa.name) {
        return deny(DenyReason::InvalidAccountName);
    }
    // A client never outlives its token, nor the configured maximum lifetime.
    let token_exp = i64::try_from(identity.expires_at).unwrap_or(i64::MAX);
    // A token inside the validation leeway but past its `exp` would give a user JWT that is
    // already expired: say so rather than count a grant the server then refuses.
    if token_exp <= now {
        return deny(DenyReason::Token(TokenError::Expired {
            expired_at: identity.expires_at,
        }));
    }
    let cap = now.saturating_add(i64::try_from(max_lifetime.as_secs()).unwrap_or(i64::MAX));
    Ok(Admission {
        account: sa,
        pod: identity.pod_name.clone(),
        credential_id: identity.credential_id.clone(),
        expires_at: token_exp.min(cap),
    })
}

/// Runs the whole decision for one request: token, account, policy.
pub struct Authorizer {
    validator: TokenValidator,
    directory: Arc<dyn ServiceAccountDirectory>,
    policy: Arc<PolicyStore>,
    permissions: PermissionCache,
    max_lifetime: Duration,
    verified: Option<VerifiedTokens>,
    /// The service's own ServiceAccount (`namespace`, `name`) when self-checks are on.
    own_account: Option<(String, String)>,
    /// The pods, when a pod-bound token's pod is checked (`POD_BINDING=watch`).
    pods: Option<Arc<PodCache>>,
    /// Whether tokens bound to no pod are accepted (`NON_POD_TOKENS`).
    non_pod_tokens: bool,
}

/// How long the self-check's connection may stay: it closes at once, this only bounds a leak.
const OWN_ACCOUNT_LIFETIME: Duration = Duration::from_secs(60);

impl Authorizer {
    /// Builds an authorizer from its parts.
    pub fn new(
        validator: TokenValidator,
        directory: Arc<dyn ServiceAccountDirectory>,
        policy: Arc<PolicyStore>,
        permissions: PermissionCache,
        max_lifetime: Duration,
    ) -> Authorizer {
        Authorizer {
            validator,
            directory,
            policy,
            permissions,
            max_lifetime,
            verified: None,
            own_account: None,
            pods: None,
            non_pod_tokens: true,
        }
    }

    /// Checks the pod of each pod-bound token in `pods` (when given), and accepts tokens bound
    /// to no pod only when `non_pod_tokens`.
    pub fn with_pod_binding(mut self, pods: Option<Arc<PodCache>>, non_pod_tokens: bool) -> Self {
        self.pods = pods;
        self.non_pod_tokens = non_pod_tokens;
        self
    }

    /// The pod binding rules for `identity` at `now`: `Ok(Some(uid))` for a pod the check
    /// confirmed, `Ok(None)` when nothing was checked.
    fn pod_binding(&self, identity: &Identity, now: i64) -> Result<Option<String>, DenyReason> {
        let (Some(pod), Some(uid)) = (&identity.pod_name, &identity.pod_uid) else {
            return if self.non_pod_tokens {
                Ok(None)
            } else {
                Err(DenyReason::NotPodBound)
            };
        };
        let Some(pods) = &self.pods else {
            return Ok(None);
        };
        let check = pods.check(
            &identity.namespace,
            pod,
            uid,
            &identity.service_account,
            now,
        );
        match check {
            PodCheck::Live => Ok(Some(uid.clone())),
            PodCheck::NotFound => Err(DenyReason::PodNotFound),
            PodCheck::UidMismatch => Err(DenyReason::PodUidMismatch),
            PodCheck::ServiceAccountMismatch => Err(DenyReason::PodServiceAccountMismatch),
            PodCheck::Deleted => Err(DenyReason::PodDeleted),
            PodCheck::NotSynced => Err(DenyReason::PodLookupFailed),
        }
    }

    /// Admits tokens of the service's own ServiceAccount with no permissions at all, whatever
    /// the policy says of its namespace: the self-check connects with one to prove that
    /// nats-server takes this service's answers.
    pub fn with_own_account(mut self, namespace: &str, name: &str) -> Authorizer {
        self.own_account = Some((namespace.to_owned(), name.to_owned()));
        self
    }

    /// The grant of the service's own ServiceAccount: the usual checks (the account exists
    /// with the token's uid, the token is current), then nothing permitted, in the default
    /// account, for at most a minute.
    fn own_account_decision(&self, identity: &Identity, now: i64) -> Decision {
        let lookup = self
            .directory
            .lookup(&identity.namespace, &identity.service_account);
        match decide(identity, lookup, OWN_ACCOUNT_LIFETIME, now) {
            Ok(admitted) => Decision::Allow(Allowed {
                namespace: admitted.account.namespace.to_string(),
                service_account: admitted.account.name.to_string(),
                pod: admitted.pod,
                checked_pod_uid: None,
                credential_id: admitted.credential_id,
                expires_at: admitted.expires_at,
                account: None,
                permissions: Arc::new(Permissions::none()),
            }),
            Err(denial) => Decision::Deny(denial),
        }
    }

    /// Remembers the tokens of at most `capacity` allowed clients (0: none), so that a
    /// reconnect with the same token skips signature verification (see [`crate::verified`]).
    /// The cache honours the validator's own leeway.
    pub fn with_verified_tokens(mut self, capacity: usize, metrics: Arc<Metrics>) -> Authorizer {
        let verified = VerifiedTokens::new(capacity, self.validator.leeway(), metrics);
        self.verified = verified.enabled().then_some(verified);
        self
    }

    /// The verified-token cache, when one is in use.
    pub fn verified_tokens(&self) -> Option<&VerifiedTokens> {
        self.verified.as_ref()
    }

    /// The token's identity: from the verified-token cache when it holds, else by verification.
    fn identity_of(
        &self,
        token: &str,
        key: Option<&TokenKey>,
        generation: u64,
        now: u64,
    ) -> Result<(Identity, Option<crate::verified::Verified>), Denial> {
        if let (Some(cache), Some(key)) = (&self.verified, key) {
            if let Some((identity, hit)) = cache.get(key, now, generation) {
                return Ok((identity, Some(hit)));
            }
        }
        Ok((self.verify(token, now)?, None))
    }

    /// Verifies `token` in full at unix time `now`.
    fn verify(&self, token: &str, now: u64) -> Result<Identity, Denial> {
        self.validator
            .validate(token, now)
            // The claims of a refused token are unverified: logged as "claimed" only.
            .map_err(|e| Denial {
                reason: DenyReason::Token(e),
                account: claimed_service_account(token).map(|c| format!("{c} (claimed)")),
                credential_id: None,
            })
    }

    /// Decides one connect attempt (from a verified request) at unix time `now`. Computing
    /// the permissions of an account version not seen before counts and logs the annotation
    /// entries it drops (see [`PermissionCache`]).
    pub fn authorize(&self, attempt: ConnectAttempt<'_>, now: i64) -> Decision {
        // Leafnode connections carry a remote server's credentials, not a workload's: never
        // authorize them with a service-account token.
        if !attempt.kind.is_empty() && attempt.kind != "Client" {
            return Decision::deny(
                DenyReason::ConnectionKindNotAllowed(attempt.kind.to_owned()),
                None,
            );
        }
        let Some(token) = attempt.token else {
            return Decision::deny(DenyReason::NoToken, None);
        };
        // Read before verifying: a key set that changes meanwhile leaves a stale generation
        // behind, never a trusted one.
        let generation = self.validator.key_generation();
        // An oversize token is refused by verification before any parsing: no hashing either.
        let key = self
            .verified
            .as_ref()
            .filter(|_| token.len() <= MAX_TOKEN_BYTES)
            .map(|_| TokenKey::of(token));
        let now_secs = u64::try_from(now).unwrap_or(0);
        let (mut identity, mut cached) =
            match self.identity_of(token, key.as_ref(), generation, now_secs) {
                Ok(found) => found,
                Err(denial) => return Decision::Deny(denial),
            };
        if self.own_account.as_ref().is_some_and(|(ns, name)| {
            *ns == identity.namespace && *name == identity.service_account
        }) {
            return self.own_account_decision(&identity, now);
        }
        // The token's pod (or its lack of one), before anything is looked up for it.
        let checked_pod_uid = match self.pod_binding(&identity, now) {
            Ok(uid) => uid,
            Err(reason) => return Decision::deny(reason, Some(&identity)),
        };
        // One policy version for the whole decision. A namespace it does not serve is refused
        // before anything is looked up for it.
        let policy = self.policy.current();
        if let Err(not_served) = policy.policy.place(&identity.namespace) {
            return Decision::deny(DenyReason::NamespaceNotAllowed(not_served), Some(&identity));
        }
        let lookup = self
            .directory
            .lookup(&identity.namespace, &identity.service_account);
        // A remembered token whose ServiceAccount changed since (updated, re-created, deleted)
        // is verified again; the same bytes name the same account, so the lookup stands.
        if let (Some(hit), Some(key), Some(cache)) = (&cached, &key, &self.verified) {
            let same = matches!(&lookup, Lookup::Found(sa) if hit.admitted_with(sa));
            if same {
                cache.used();
            } else {
                cache.forget_stale(key);
                identity = match self.verify(token, now_secs) {
                    Ok(i) => i,
                    Err(denial) => return Decision::Deny(denial),
                };
                cached = None;
            }
        }
        let admitted = match decide(&identity, lookup, self.max_lifetime, now) {
            Ok(admitted) => admitted,
            Err(denial) => return Decision::Deny(denial),
        };
        match self.permissions.evaluation(&admitted.account, &policy) {
            Ok(evaluation) => {
                if let (None, Some(key), Some(cache)) = (&cached, key, &self.verified) {
                    cache.insert(key, &identity, &admitted.account, now_secs, generation);
                }
                let mut allowed = admitted.into_allowed(&evaluation);
                allowed.checked_pod_uid = checked_pod_uid;
                Decision::Allow(allowed)
            }
            Err(not_served) => {
                Decision::deny(DenyReason::NamespaceNotAllowed(not_served), Some(&identity))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{evaluate, AdminPolicy, InboxMode};

    const NOW: i64 = 1_800_000_000;

    fn identity(uid: &str, expires_in: i64) -> Identity {
        Identity {
            namespace: "team-a".into(),
            service_account: "app".into(),
            uid: uid.into(),
            expires_at: (NOW + expires_in) as u64,
            pod_name: None,
            pod_uid: None,
            credential_id: None,
        }
    }

    fn found(ns: &str, name: &str, uid: &str) -> Lookup {
        Lookup::Found(Arc::new(ServiceAccount::for_test(ns, name, uid)))
    }

    fn run(identity: &Identity, lookup: Lookup, max_lifetime: u64) -> Decision {
        match decide(identity, lookup, Duration::from_secs(max_lifetime), NOW) {
            Ok(admitted) => {
                let evaluation = evaluate(
                    &admitted.account,
                    &AdminPolicy::unrestricted(),
                    InboxMode::Responses,
                )
                .unwrap();
                Decision::Allow(admitted.into_allowed(&evaluation))
            }
            Err(denial) => Decision::Deny(denial),
        }
    }

    fn denied(d: Decision) -> &'static str {
        match d {
            Decision::Deny(d) => d.reason(),
            Decision::Allow(a) => panic!("allowed: {a:?}"),
        }
    }

    #[test]
    fn a_matching_account_is_allowed_with_its_namespace_permissions() {
        match run(&identity("u1", 600), found("team-a", "app", "u1"), 3600) {
            Decision::Allow(a) => {
                assert_eq!(a.user_name(), "system:serviceaccount:team-a:app");
                let checked = Allowed {
                    pod: Some("app-1".into()),
                    checked_pod_uid: Some("p-1".into()),
                    ..a.clone()
                };
                assert_eq!(
                    checked.user_name(),
                    "system:serviceaccount:team-a:app:pod:app-1:p-1"
                );
                assert_eq!(a.permissions.pub_allow, vec!["team-a.>"]);
                assert_eq!(a.expires_at, NOW + 600, "the token's exp when it is sooner");
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn the_grant_ends_at_the_maximum_lifetime_when_the_token_lives_longer() {
        match run(
            &identity("u1", 365 * 24 * 3600),
            found("team-a", "app", "u1"),
            3600,
        ) {
            Decision::Allow(a) => assert_eq!(a.expires_at, NOW + 3600),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn token_for_recreated_service_account_is_refused() {
        let d = run(
            &identity("old-uid", 600),
            found("team-a", "app", "new-uid"),
            3600,
        );
        assert_eq!(denied(d), "serviceaccount_uid_mismatch");
    }

    #[test]
    fn missing_and_unreachable_accounts_are_refused_with_their_reasons() {
        assert_eq!(
            denied(run(&identity("u1", 600), Lookup::NotFound, 3600)),
            "serviceaccount_not_found"
        );
        assert_eq!(
            denied(run(&identity("u1", 600), Lookup::Unavailable, 3600)),
            "serviceaccount_lookup_failed"
        );
    }

    #[test]
    fn an_account_whose_names_would_widen_the_subjects_is_refused() {
        for (ns, name) in [
            ("*", "app"),
            (">", "app"),
            ("team-a", "a*b"),
            ("team.a", "app"),
            ("team-a", ""),
        ] {
            let d = run(&identity("u1", 600), found(ns, name, "u1"), 3600);
            assert_eq!(denied(d), "serviceaccount_invalid_name", "{ns}/{name}");
        }
    }

    #[test]
    fn a_token_past_exp_but_inside_the_leeway_is_refused_as_expired() {
        assert_eq!(
            denied(run(&identity("u1", 0), found("team-a", "app", "u1"), 3600)),
            "token_expired"
        );
        assert_eq!(
            denied(run(
                &identity("u1", -30),
                found("team-a", "app", "u1"),
                3600
            )),
            "token_expired"
        );
    }

    #[test]
    fn each_deny_reason_names_its_cause_in_the_log() {
        let cases = [
            (DenyReason::NoToken, "no token in auth_token or pass"),
            (
                DenyReason::ConnectionKindNotAllowed("Leafnode".into()),
                "connection kind \"Leafnode\" is not allowed",
            ),
            (
                DenyReason::Token(TokenError::WrongAudience),
                "token refused: audience not accepted",
            ),
            (
                DenyReason::ServiceAccountNotFound,
                "serviceaccount not found",
            ),
            (
                DenyReason::ServiceAccountLookupFailed,
                "serviceaccount lookup failed",
            ),
            (
                DenyReason::ServiceAccountUidMismatch,
                "serviceaccount uid differs from the token's (account re-created?)",
            ),
            (
                DenyReason::InvalidAccountName,
                "serviceaccount namespace or name is not a valid Kubernetes name",
            ),
            (
                DenyReason::NamespaceNotAllowed(NotServed::Excluded("kube-*".into())),
                "namespace is not served by the policy: namespaces.exclude pattern \"kube-*\" matches it",
            ),
            (DenyReason::PodNotFound, "the token's pod does not exist (deleted?)"),
            (
                DenyReason::NotPodBound,
                "the token is not bound to a pod (NON_POD_TOKENS=refuse)",
            ),
            (DenyReason::Internal, "internal error"),
        ];
        for (reason, message) in cases {
            assert_eq!(reason.to_string(), message, "{reason:?}");
            let denial = Denial {
                reason,
                account: Some("team-a/app".into()),
                credential_id: None,
            };
            assert_eq!(denial.to_string(), message, "a denial shows its reason");
        }
    }

    #[test]
    fn the_log_names_the_account_of_a_denial() {
        match run(&identity("x", 600), found("team-a", "app", "y"), 3600) {
            Decision::Deny(d) => {
                assert_eq!(d.account_label(), "team-a/app");
                assert!(d.to_string().contains("re-created"));
            }
            d => panic!("{d:?}"),
        }
    }

    /// The verified-token cache as the authorizer uses it: real ES256 tokens from the dev
    /// signer, a key set read from a file (so it can change), and a directory whose object the
    /// test replaces.
    mod verified_tokens {
        use super::*;
        use crate::identity::jwks::testing::file_store;
        use crate::identity::{generate_signer, DevSigner, JwksStore, MintRequest, TokenSettings};
        use crate::kube::cache::ServiceAccountDirectory;
        use parking_lot::Mutex;

        const ISSUER: &str = "https://issuer.test";

        struct Directory(Mutex<Option<Arc<ServiceAccount>>>);

        impl ServiceAccountDirectory for Directory {
            fn lookup(&self, _namespace: &str, _name: &str) -> Lookup {
                match &*self.0.lock() {
                    Some(sa) => Lookup::Found(sa.clone()),
                    None => Lookup::NotFound,
                }
            }
        }

        struct Setup {
            dir: tempfile::TempDir,
            signer: DevSigner,
            store: Arc<JwksStore>,
            accounts: Arc<Directory>,
            metrics: Arc<Metrics>,
            authorizer: Authorizer,
        }

        impl Setup {
            fn new() -> Setup {
                let dir = tempfile::tempdir().unwrap();
                let signer = generate_signer(&dir.path().join("a")).unwrap();
                let jwks = dir.path().join("jwks.json");
                std::fs::write(&jwks, signer.jwks_json()).unwrap();
                let store = file_store(&jwks);
                store.reload().unwrap();
                let accounts = Arc::new(Directory(Mutex::new(Some(Arc::new(
                    ServiceAccount::for_test("team-a", "app", "u-1"),
                )))));
                let metrics = Arc::new(Metrics::new());
                let authorizer = Authorizer::new(
                    TokenValidator::new(store.clone(), TokenSettings::new(ISSUER, "nats")),
                    accounts.clone(),
                    Arc::new(PolicyStore::new(AdminPolicy::unrestricted(), None)),
                    PermissionCache::new(metrics.clone(), 16, InboxMode::Shared),
                    Duration::from_secs(3600),
                )
                .with_verified_tokens(8, metrics.clone());
                Setup {
                    dir,
                    signer,
                    store,
                    accounts,
                    metrics,
                    authorizer,
                }
            }

            /// Another authorizer on the same keys and accounts, under `policy`, without the
            /// verified-token cache.
            fn with_policy(&self, policy: &AdminPolicy) -> Authorizer {
                Authorizer::new(
                    TokenValidator::new(self.store.clone(), TokenSettings::new(ISSUER, "nats")),
                    self.accounts.clone(),
                    Arc::new(PolicyStore::new(policy.clone(), None)),
                    PermissionCache::new(self.metrics.clone(), 16, InboxMode::Shared),
                    Duration::from_secs(3600),
                )
            }

            fn token(&self, uid: &str, ttl: u64) -> String {
                self.signer
                    .mint_at(
                        &MintRequest {
                            issuer: ISSUER.into(),
                            audience: "nats".into(),
                            namespace: "team-a".into(),
                            name: "app".into(),
                            uid: uid.into(),
                            ttl: Duration::from_secs(ttl),
                        },
                        NOW as u64,
                    )
                    .unwrap()
            }

            fn authorize(&self, token: &str, now: i64) -> Decision {
                self.authorizer.authorize(
                    ConnectAttempt {
                        kind: "Client",
                        token: Some(token),
                    },
                    now,
                )
            }

            /// Lookups so far by result: (hit, miss, stale).
            fn lookups(&self) -> (u64, u64, u64) {
                let text = self.metrics.render();
                let count = |result: &str| {
                    let prefix =
                        format!("nats_callout_token_cache_lookups_total{{result=\"{result}\"}} ");
                    text.lines()
                        .find_map(|l| l.strip_prefix(&prefix))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(u64::MAX)
                };
                (count("hit"), count("miss"), count("stale"))
            }

            fn held(&self) -> usize {
                self.authorizer.verified_tokens().map_or(0, |c| c.len())
            }
        }

        fn reason(d: &Decision) -> &'static str {
            match d {
                Decision::Allow(_) => "granted",
                Decision::Deny(d) => d.reason(),
            }
        }

        #[test]
        fn the_own_account_gets_nothing_even_where_the_policy_serves_nobody() {
            let s = Setup::new();
            let policy = AdminPolicy::parse("namespaces:\n  exclude: [team-a]\n").unwrap();
            let authorizer = |own: Option<(&str, &str)>| {
                let a = s.with_policy(&policy);
                match own {
                    Some((ns, name)) => a.with_own_account(ns, name),
                    None => a,
                }
            };
            let attempt = |a: &Authorizer, token: &str| {
                a.authorize(
                    ConnectAttempt {
                        kind: "Client",
                        token: Some(token),
                    },
                    NOW,
                )
            };
            let token = s.token("u-1", 3600);
            // Without the self-check the policy refuses the namespace; another account named as
            // the service's own changes nothing.
            assert_eq!(
                reason(&attempt(&authorizer(None), &token)),
                "namespace_not_allowed"
            );
            assert_eq!(
                reason(&attempt(&authorizer(Some(("team-a", "other"))), &token)),
                "namespace_not_allowed"
            );
            let own = authorizer(Some(("team-a", "app")));
            match attempt(&own, &token) {
                Decision::Allow(a) => {
                    assert_eq!(*a.permissions, Permissions::none());
                    assert_eq!(a.account, None);
                    assert_eq!(a.expires_at, NOW + 60, "a minute at most");
                }
                Decision::Deny(d) => panic!("denied: {d}"),
            }
            // The usual checks still hold: a re-created account, a deleted one, a bad token.
            assert_eq!(
                reason(&attempt(&own, &s.token("u-old", 3600))),
                "serviceaccount_uid_mismatch"
            );
            *s.accounts.0.lock() = None;
            assert_eq!(reason(&attempt(&own, &token)), "serviceaccount_not_found");
            assert_eq!(reason(&attempt(&own, "not.a.token")), "token_malformed");
        }

        #[test]
        fn only_the_exact_own_account_gets_the_own_grant() {
            // Attack: a ServiceAccount whose name is near the service's (case, swapped parts,
            // a prefix, the parts joined differently) must get the policy's treatment, here
            // the excluded namespace's refusal, never the own grant that bypasses it.
            let s = Setup::new();
            let policy = AdminPolicy::parse("namespaces:\n  exclude: [team-a]\n").unwrap();
            let token = s.token("u-1", 3600);
            for (ns, name) in [
                ("Team-a", "app"),
                ("team-a", "App"),
                ("app", "team-a"),
                ("team-a", "ap"),
                ("team-a", "app2"),
                ("team", "a:app"),
                ("team-a:app", ""),
                ("team-a", "app "),
            ] {
                let a = s.with_policy(&policy).with_own_account(ns, name);
                let d = a.authorize(
                    ConnectAttempt {
                        kind: "Client",
                        token: Some(&token),
                    },
                    NOW,
                );
                assert_eq!(reason(&d), "namespace_not_allowed", "own = {ns}/{name}");
            }
        }

        #[test]
        fn a_second_connect_with_the_same_token_is_a_hit_and_still_allowed() {
            let s = Setup::new();
            let token = s.token("u-1", 600);
            assert_eq!(reason(&s.authorize(&token, NOW)), "granted");
            assert_eq!((s.lookups(), s.held()), ((0, 1, 0), 1));
            let again = s.authorize(&token, NOW + 5);
            let Decision::Allow(a) = again else {
                panic!("{again:?}")
            };
            assert_eq!(a.namespace, "team-a");
            assert_eq!(
                a.expires_at,
                NOW + 600,
                "the grant still ends with the token"
            );
            assert_eq!(s.lookups(), (1, 1, 0));
        }

        #[test]
        fn a_token_past_its_expiry_is_verified_again_and_refused() {
            let s = Setup::new();
            let token = s.token("u-1", 600);
            assert_eq!(reason(&s.authorize(&token, NOW)), "granted");
            assert_eq!(
                reason(&s.authorize(&token, NOW + 600 + 61)),
                "token_expired"
            );
            assert_eq!(s.lookups(), (0, 2, 0));
            assert_eq!(s.held(), 0);
        }

        #[test]
        fn a_changed_key_set_forgets_every_token_and_a_removed_key_refuses_it() {
            let s = Setup::new();
            let token = s.token("u-1", 600);
            assert_eq!(reason(&s.authorize(&token, NOW)), "granted");
            // The same document again: still a hit.
            s.store.reload().unwrap();
            assert_eq!(reason(&s.authorize(&token, NOW)), "granted");
            assert_eq!(s.lookups(), (1, 1, 0));
            // Another key replaces the signer's.
            let other = generate_signer(&s.dir.path().join("b")).unwrap();
            std::fs::write(s.dir.path().join("jwks.json"), other.jwks_json()).unwrap();
            s.store.reload().unwrap();
            assert_eq!(reason(&s.authorize(&token, NOW)), "token_unknown_key");
            assert_eq!(s.lookups(), (1, 2, 0));
        }

        #[test]
        fn a_changed_or_recreated_service_account_makes_the_token_verify_again() {
            let s = Setup::new();
            let token = s.token("u-1", 600);
            assert_eq!(reason(&s.authorize(&token, NOW)), "granted");
            // Updated (say, re-annotated): same uid, a new object.
            *s.accounts.0.lock() = Some(Arc::new(ServiceAccount::for_test("team-a", "app", "u-1")));
            assert_eq!(reason(&s.authorize(&token, NOW)), "granted");
            assert_eq!(s.lookups(), (0, 1, 1));
            assert_eq!(reason(&s.authorize(&token, NOW)), "granted");
            assert_eq!(s.lookups(), (1, 1, 1), "remembered with the new object");
            // Deleted and re-created under the same name.
            *s.accounts.0.lock() = Some(Arc::new(ServiceAccount::for_test("team-a", "app", "u-2")));
            assert_eq!(
                reason(&s.authorize(&token, NOW)),
                "serviceaccount_uid_mismatch"
            );
            // Deleted.
            *s.accounts.0.lock() = None;
            assert_eq!(
                reason(&s.authorize(&token, NOW)),
                "serviceaccount_not_found"
            );
            assert_eq!(s.held(), 0, "denials are never remembered");
        }

        #[test]
        fn denied_tokens_are_never_remembered() {
            let s = Setup::new();
            *s.accounts.0.lock() = None;
            let token = s.token("u-1", 600);
            for _ in 0..3 {
                assert_eq!(
                    reason(&s.authorize(&token, NOW)),
                    "serviceaccount_not_found"
                );
            }
            assert_eq!((s.lookups(), s.held()), ((0, 3, 0), 0));
            // A forged signature on the same claims is refused however often it comes.
            let mut forged = token.clone();
            forged.truncate(forged.len() - 4);
            forged.push_str("AAAA");
            assert_eq!(reason(&s.authorize(&forged, NOW)), "token_bad_signature");
            assert_eq!(s.held(), 0);
        }

        #[test]
        fn an_oversize_token_is_refused_without_a_look_into_the_cache() {
            let s = Setup::new();
            let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
            assert_eq!(reason(&s.authorize(&huge, NOW)), "token_too_large");
            assert_eq!((s.lookups(), s.held()), ((0, 0, 0), 0));
        }

        #[test]
        fn the_cache_holds_at_most_its_size_of_distinct_tokens() {
            let s = Setup::new();
            for i in 0..40 {
                // Distinct tokens (each mint has a random jti).
                let token = s.token("u-1", 600 + i);
                assert_eq!(reason(&s.authorize(&token, NOW)), "granted");
                assert!(s.held() <= 8);
            }
            assert_eq!(s.held(), 8);
        }

        #[test]
        fn the_pod_binding_rules_refuse_a_gone_pod_and_name_a_confirmed_one() {
            use crate::kube::pods::Pod;
            use crate::kube::watch::Collection;
            use crate::kube::Uid;
            let s = Setup::new();
            let pods = Arc::new(PodCache::new());
            let mut listed = PodCache::new_builder();
            let pod = |name: &str, uid: &str| Pod {
                namespace: "team-a".into(),
                name: name.into(),
                uid: Uid::new(uid),
                service_account: "app".into(),
                deletion: None,
            };
            PodCache::add(&mut listed, vec![pod("app-1", "p-1")], None);
            let identity = |pod: Option<(&str, &str)>| Identity {
                namespace: "team-a".into(),
                service_account: "app".into(),
                uid: "u-1".into(),
                expires_at: NOW as u64 + 600,
                pod_name: pod.map(|p| p.0.to_owned()),
                pod_uid: pod.map(|p| p.1.to_owned()),
                credential_id: None,
            };
            let watching = s
                .with_policy(&AdminPolicy::unrestricted())
                .with_pod_binding(Some(pods.clone()), false);
            let check = |a: &Authorizer, pod| a.pod_binding(&identity(pod), NOW);
            // Before the first list nothing is decided on a guess.
            assert_eq!(
                check(&watching, Some(("app-1", "p-1"))),
                Err(DenyReason::PodLookupFailed)
            );
            pods.replace(listed);
            assert_eq!(
                check(&watching, Some(("app-1", "p-1"))),
                Ok(Some("p-1".to_owned()))
            );
            assert_eq!(
                check(&watching, Some(("app-2", "p-1"))),
                Err(DenyReason::PodNotFound)
            );
            assert_eq!(
                check(&watching, Some(("app-1", "p-2"))),
                Err(DenyReason::PodUidMismatch)
            );
            assert_eq!(check(&watching, None), Err(DenyReason::NotPodBound));
            // Off: a pod-bound token is not checked, and one bound to no pod is accepted.
            let off = s.with_policy(&AdminPolicy::unrestricted());
            assert_eq!(check(&off, Some(("gone", "p-9"))), Ok(None));
            assert_eq!(check(&off, None), Ok(None));
            // Refusing tokens bound to no pod does not need the pods.
            let strict = s
                .with_policy(&AdminPolicy::unrestricted())
                .with_pod_binding(None, false);
            assert_eq!(check(&strict, None), Err(DenyReason::NotPodBound));
            assert_eq!(check(&strict, Some(("any", "p-9"))), Ok(None));
        }
    }
}
