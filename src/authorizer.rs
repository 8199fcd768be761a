//! The decision: a validated identity and its ServiceAccount become permissions, or a denial with
//! a specific reason.
//!
//! [`decide`] is pure (no I/O, time passed in) so every rule is tested without servers;
//! [`Authorizer::authorize`] wires it to token validation and the ServiceAccount directory.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::callout::request::AuthRequest;
use crate::identity::{claimed_service_account, Identity, TokenError, TokenValidator};
use crate::kube::cache::{Lookup, ServiceAccountDirectory};
use crate::policy::{PermissionCache, Permissions};

/// Why a client was denied. Only the log and the metrics see it; the client sees the generic text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// Neither `auth_token` nor `pass` carried a token.
    NoToken,
    /// The connection is of a kind the service does not authorize (a leafnode, say).
    ConnectionKindNotAllowed(String),
    /// The service-account token was refused.
    Token(TokenError),
    /// The token's ServiceAccount does not exist.
    ServiceAccountNotFound,
    /// The ServiceAccount could not be looked up (API unreachable, lookups rate-limited).
    ServiceAccountLookupFailed,
    /// The ServiceAccount exists but is not the one the token was minted for (deleted and
    /// re-created under the same name).
    ServiceAccountUidMismatch,
    /// A bug: a panic while deciding.
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
            DenyReason::Internal => "internal_error",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NoToken => write!(f, "no token in auth_token or pass"),
            DenyReason::ConnectionKindNotAllowed(k) => {
                write!(f, "connection kind {k:?} is not allowed")
            }
            DenyReason::Token(e) => write!(f, "token refused: {e}"),
            DenyReason::ServiceAccountNotFound => write!(f, "serviceaccount not found"),
            DenyReason::ServiceAccountLookupFailed => write!(f, "serviceaccount lookup failed"),
            DenyReason::ServiceAccountUidMismatch => {
                write!(
                    f,
                    "serviceaccount uid differs from the token's (account re-created?)"
                )
            }
            DenyReason::Internal => write!(f, "internal error"),
        }
    }
}

/// A denial with what was known about the client when it was decided.
#[derive(Debug, Clone)]
pub struct Denial {
    /// Why.
    pub reason: DenyReason,
    /// `namespace/name` of the service account, when the token was readable.
    pub account: Option<String>,
}

impl Denial {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        self.reason.reason()
    }
    /// Who was denied, for the log.
    pub fn subject(&self) -> &str {
        self.account.as_deref().unwrap_or("unknown account")
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
    /// Unix time at which the client is disconnected.
    pub expires_at: i64,
    /// Its permissions.
    pub permissions: Arc<Permissions>,
}

impl Allowed {
    /// The user name in the user JWT: `system:serviceaccount:<ns>:<sa>`.
    pub fn user_name(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
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
        })
    }

    fn deny(reason: DenyReason, identity: Option<&Identity>) -> Decision {
        Decision::Deny(Denial {
            reason,
            account: identity.map(|i| format!("{}/{}", i.namespace, i.service_account)),
        })
    }
}

/// The pure decision for a validated identity and the result of looking its account up.
pub fn decide(
    identity: &Identity,
    lookup: Lookup,
    permissions: &PermissionCache,
    max_lifetime: Duration,
    now: i64,
) -> Decision {
    let sa = match lookup {
        Lookup::Found(sa) => sa,
        Lookup::NotFound => {
            return Decision::deny(DenyReason::ServiceAccountNotFound, Some(identity))
        }
        Lookup::Unavailable => {
            return Decision::deny(DenyReason::ServiceAccountLookupFailed, Some(identity))
        }
    };
    // A token minted for an account that was deleted and re-created under the same name names
    // the old uid: it must not inherit the new account's permissions.
    if sa.uid != identity.uid {
        return Decision::deny(DenyReason::ServiceAccountUidMismatch, Some(identity));
    }
    // A client never outlives its token, nor the configured maximum lifetime.
    let token_exp = i64::try_from(identity.expires_at).unwrap_or(i64::MAX);
    let cap = now.saturating_add(i64::try_from(max_lifetime.as_secs()).unwrap_or(i64::MAX));
    Decision::Allow(Allowed {
        namespace: sa.namespace.clone(),
        service_account: sa.name.clone(),
        expires_at: token_exp.min(cap),
        permissions: permissions.permissions(&sa),
    })
}

/// Runs the whole decision for one request: token, account, policy.
pub struct Authorizer {
    validator: TokenValidator,
    directory: Arc<dyn ServiceAccountDirectory>,
    permissions: PermissionCache,
    max_lifetime: Duration,
}

impl Authorizer {
    /// Builds an authorizer from its parts.
    pub fn new(
        validator: TokenValidator,
        directory: Arc<dyn ServiceAccountDirectory>,
        permissions: PermissionCache,
        max_lifetime: Duration,
    ) -> Authorizer {
        Authorizer {
            validator,
            directory,
            permissions,
            max_lifetime,
        }
    }

    /// Decides one verified request at unix time `now`.
    pub fn authorize(&self, req: &AuthRequest, now: i64) -> Decision {
        // Leafnode connections carry a remote server's credentials, not a workload's: never
        // authorize them with a service-account token.
        if !req.client.kind.is_empty() && req.client.kind != "Client" {
            return Decision::deny(
                DenyReason::ConnectionKindNotAllowed(req.client.kind.clone()),
                None,
            );
        }
        let Some(token) = req.connect.bearer_token() else {
            return Decision::deny(DenyReason::NoToken, None);
        };
        let identity = match self
            .validator
            .validate(token, u64::try_from(now).unwrap_or(0))
        {
            Ok(i) => i,
            Err(e) => {
                // The claims of a refused token are unverified: logged as "claimed" only.
                return Decision::Deny(Denial {
                    reason: DenyReason::Token(e),
                    account: claimed_service_account(token).map(|c| format!("{c} (claimed)")),
                });
            }
        };
        let lookup = self
            .directory
            .lookup(&identity.namespace, &identity.service_account);
        decide(&identity, lookup, &self.permissions, self.max_lifetime, now)
    }
}
