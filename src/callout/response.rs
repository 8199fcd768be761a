//! Building the answers: the user JWT of an allowed client and the signed (optionally sealed)
//! authorization response.

use std::collections::HashMap;

use nkeys::{KeyPair, XKey};
use serde::Serialize;

use super::jwt::{encode, jti, JwtError, Registered};
use super::request::{AuthRequest, RequestError};
use super::wire::{CLAIMS_VERSION, GENERIC_DENIAL, RESPONSE_TYPE, USER_TYPE};
use crate::policy::Permissions;

/// What the service grants one client.
#[derive(Debug, Clone)]
pub struct Grant<'a> {
    /// `system:serviceaccount:<ns>:<sa>`.
    pub name: String,
    /// Unix time at which the client is disconnected.
    pub expires_at: i64,
    /// The account it is placed in; `None`: the signer's default account.
    pub account: Option<&'a str>,
    /// Its permissions.
    pub permissions: &'a Permissions,
}

#[derive(Serialize)]
struct SubjectRule<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    allow: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    deny: &'a [String],
}

#[derive(Serialize)]
struct ResponseRule {
    max: i64,
    ttl: i64,
}

/// The `nats` object of a user JWT. Every permission and limit is absent for a scoped signing
/// key: nats-server refuses a scoped user that carries any, the scope supplies them.
#[derive(Serialize)]
struct UserBody<'a> {
    #[serde(rename = "pub", skip_serializing_if = "Option::is_none")]
    publish: Option<SubjectRule<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<SubjectRule<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resp: Option<ResponseRule>,
    // -1: no per-user limit; the account's limits apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    subs: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<i64>,
    /// Operator mode, signed by a signing key: the account the key belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer_account: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
    version: i64,
}

#[derive(Serialize)]
struct UserClaims<'a> {
    jti: String,
    iat: i64,
    iss: &'a str,
    name: &'a str,
    sub: &'a str,
    /// Config mode only: the account's name. In operator mode the issuer decides the account.
    #[serde(skip_serializing_if = "str::is_empty")]
    aud: &'a str,
    exp: i64,
    nats: UserBody<'a>,
}

/// A key that signs for one account in operator mode (a client account's user JWTs, or the
/// callout account's responses): the account's own key or one of its signing keys (then the JWT
/// names the account in `issuer_account`).
#[derive(Clone)]
pub struct UserSigningKey {
    account: String,
    key: KeyPair,
    public: String,
    scoped: bool,
}

impl std::fmt::Debug for UserSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSigningKey")
            .field("account", &self.account)
            .field("key", &self.public)
            .field("scoped", &self.scoped)
            .finish()
    }
}

impl UserSigningKey {
    /// `key` (with its seed) signs for `account` (`A…`); `scoped` when the account JWT lists it
    /// as a scoped signing key (it cannot be told from the seed).
    pub fn new(account: String, key: KeyPair, scoped: bool) -> UserSigningKey {
        let public = key.public_key();
        UserSigningKey {
            account,
            key,
            public,
            scoped,
        }
    }

    /// The account it signs for.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The public key the user JWTs name as their issuer.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// Whether the account JWT's scope, not the user JWT, carries the permissions.
    pub fn is_scoped(&self) -> bool {
        self.scoped
    }

    /// `issuer_account` for the user JWT: the account, when this is one of its signing keys.
    pub fn issuer_account(&self) -> Option<&str> {
        (self.public != self.account).then_some(self.account.as_str())
    }
}

/// Where user JWTs place clients and which key signs them.
enum Placement {
    /// Config mode: the response key signs every user JWT; `aud` names the account.
    Config { default_account: String },
    /// Operator mode: each account's own key signs its user JWTs; no `aud`.
    Operator {
        default_account: String,
        keys: HashMap<String, UserSigningKey>,
    },
}

#[derive(Serialize)]
struct ResponseBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    /// Operator mode, signed by a signing key of the callout account: that account.
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer_account: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
    version: i64,
}

#[derive(Serialize)]
struct ResponseClaims<'a> {
    jti: String,
    iat: i64,
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    nats: ResponseBody<'a>,
}

/// Signs user JWTs and authorization responses.
pub struct ResponseSigner {
    /// Signs the responses: config mode's `auth_callout.issuer`, operator mode's callout account
    /// or one of its signing keys.
    account: KeyPair,
    account_public: String,
    /// Operator mode, responses signed by a signing key: the callout account it belongs to.
    issuer_account: Option<String>,
    placement: Placement,
}

impl ResponseSigner {
    /// A signer for `account` (an account key pair with its seed) placing clients in
    /// `default_account` unless a grant names another.
    pub fn new(account: KeyPair, default_account: String) -> ResponseSigner {
        let account_public = account.public_key();
        ResponseSigner {
            account,
            account_public,
            issuer_account: None,
            placement: Placement::Config { default_account },
        }
    }

    /// An operator-mode signer: `callout` (the callout account's key or one of its signing keys)
    /// signs the responses, `default` the user JWTs of the default account, `others` those of
    /// more accounts.
    pub fn operator(
        callout: UserSigningKey,
        default: UserSigningKey,
        others: Vec<UserSigningKey>,
    ) -> ResponseSigner {
        let issuer_account = callout.issuer_account().map(str::to_owned);
        let default_account = default.account.clone();
        let mut keys: HashMap<String, UserSigningKey> =
            others.into_iter().map(|k| (k.account.clone(), k)).collect();
        keys.insert(default_account.clone(), default);
        ResponseSigner {
            account: callout.key,
            account_public: callout.public,
            issuer_account,
            placement: Placement::Operator {
                default_account,
                keys,
            },
        }
    }

    /// Whether a user JWT for `account` (`None`: the default one) can be signed.
    pub fn can_sign_for(&self, account: Option<&str>) -> bool {
        match &self.placement {
            Placement::Config { .. } => true,
            Placement::Operator {
                default_account,
                keys,
            } => keys.contains_key(account.unwrap_or(default_account)),
        }
    }

    /// Whether a request for the callout account `account` (the request's `sub`) is this
    /// signer's to answer: in operator mode only one for the account its responses are signed
    /// for; config mode does not check (nats-server names its `auth_callout.issuer` there).
    pub fn answers_for(&self, account: &str) -> bool {
        match &self.placement {
            Placement::Config { .. } => true,
            Placement::Operator { .. } => account == self.callout_account(),
        }
    }

    /// Why `req` is not this signer's to answer, if it is not: in operator mode a request for
    /// another callout account; in config mode a request of an operator-mode server (which
    /// would place clients in the account of the key signing their user JWTs, whatever `aud`).
    pub fn refusal(&self, req: &AuthRequest) -> Option<RequestError> {
        match &self.placement {
            Placement::Config { .. } => req
                .presents_user_jwt_of_its_account()
                .then_some(RequestError::OperatorModeServer),
            Placement::Operator { .. } => {
                (!self.answers_for(&req.account)).then(|| RequestError::WrongAccount {
                    asked: req.account.clone(),
                    ours: self.callout_account().to_owned(),
                })
            }
        }
    }

    /// The keys that sign user JWTs in operator mode (none in config mode), for start-up logs.
    pub fn user_keys(&self) -> Vec<&UserSigningKey> {
        match &self.placement {
            Placement::Config { .. } => Vec::new(),
            Placement::Operator { keys, .. } => {
                let mut keys: Vec<_> = keys.values().collect();
                keys.sort_by(|a, b| a.account.cmp(&b.account));
                keys
            }
        }
    }

    /// The public key that signs the responses (config mode: the server's
    /// `auth_callout.issuer`; operator mode: the callout account's key or a signing key of it).
    pub fn issuer(&self) -> &str {
        &self.account_public
    }

    /// The account the responses come from: the callout account in operator mode.
    pub fn callout_account(&self) -> &str {
        self.issuer_account
            .as_deref()
            .unwrap_or(&self.account_public)
    }

    /// The user JWT for an allowed client.
    pub fn user_jwt(
        &self,
        req: &AuthRequest,
        grant: &Grant<'_>,
        now: i64,
    ) -> Result<String, JwtError> {
        let p = grant.permissions;
        // Config mode: our key, `aud` names the account. Operator mode: the account's key.
        let (key, issuer, aud, user_key) = match &self.placement {
            Placement::Config { default_account } => (
                &self.account,
                self.account_public.as_str(),
                grant.account.unwrap_or(default_account),
                None,
            ),
            Placement::Operator {
                default_account,
                keys,
            } => {
                let k = keys
                    .get(grant.account.unwrap_or(default_account))
                    .ok_or(JwtError::Signing)?;
                (&k.key, k.public.as_str(), "", Some(k))
            }
        };
        let scoped = user_key.is_some_and(|k| k.scoped);
        let registered = Registered {
            aud,
            exp: grant.expires_at,
            iat: now,
            iss: issuer,
            name: &grant.name,
            sub: &req.user_nkey,
        };
        let claims = UserClaims {
            jti: jti(&registered),
            iat: now,
            iss: issuer,
            name: &grant.name,
            // The JWT is bound to the nkey the server generated for this very connection.
            sub: &req.user_nkey,
            aud,
            // A client never outlives its service-account token.
            exp: grant.expires_at,
            nats: UserBody {
                publish: (!scoped).then_some(SubjectRule {
                    allow: &p.pub_allow,
                    deny: &p.pub_deny,
                }),
                sub: (!scoped).then_some(SubjectRule {
                    allow: &p.sub_allow,
                    deny: &p.sub_deny,
                }),
                resp: (!scoped && p.resp_max > 0).then_some(ResponseRule {
                    max: p.resp_max,
                    ttl: 0,
                }),
                subs: (!scoped).then_some(-1),
                data: (!scoped).then_some(-1),
                payload: (!scoped).then_some(-1),
                issuer_account: user_key.and_then(UserSigningKey::issuer_account),
                kind: USER_TYPE,
                version: CLAIMS_VERSION,
            },
        };
        encode(&claims, key)
    }

    fn response(
        &self,
        req: &AuthRequest,
        jwt: Option<&str>,
        error: Option<&str>,
        now: i64,
    ) -> Result<String, JwtError> {
        let registered = Registered {
            aud: &req.server.id,
            iat: now,
            iss: &self.account_public,
            sub: &req.user_nkey,
            ..Registered::default()
        };
        let claims = ResponseClaims {
            jti: jti(&registered),
            iat: now,
            iss: &self.account_public,
            // The server accepts a response only for the user nkey it asked about (no replay
            // across connections) and only when addressed to itself.
            sub: &req.user_nkey,
            aud: &req.server.id,
            nats: ResponseBody {
                jwt,
                error,
                // nats-server accepts a response signed by a key its callout account's JWT lists
                // in `signing_keys`; dropping the key from the JWT revokes it for unsealed
                // answers only: a sealed answer's signer is not checked, the xkey vouches.
                issuer_account: self.issuer_account.as_deref(),
                kind: RESPONSE_TYPE,
                version: CLAIMS_VERSION,
            },
        };
        encode(&claims, &self.account)
    }

    /// The signed response granting `grant`.
    pub fn allow(
        &self,
        req: &AuthRequest,
        grant: &Grant<'_>,
        now: i64,
    ) -> Result<String, JwtError> {
        let user = self.user_jwt(req, grant, now)?;
        self.response(req, Some(&user), None, now)
    }

    /// The signed denial. Its error is the generic text and the reason label, which
    /// nats-server writes to its own log (`Auth callout service returned an error: …`) and never
    /// passes on: the client sees only `Authorization Violation`. A label is a fixed metric
    /// name; anything else is left out rather than let request data into a server's log.
    pub fn deny(&self, req: &AuthRequest, reason: &str, now: i64) -> Result<String, JwtError> {
        let is_label = !reason.is_empty()
            && reason.len() <= 64
            && reason
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let error = if is_label {
            format!("{GENERIC_DENIAL} ({reason})")
        } else {
            GENERIC_DENIAL.to_string()
        };
        self.response(req, None, Some(&error), now)
    }
}

/// Why an answer could not be built for a verified request.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// The user JWT or the response could not be signed.
    #[error("{0}")]
    SigningFailed(#[from] JwtError),
    /// The server curve key the request was sealed with is not a usable public xkey.
    #[error("{0}")]
    ServerXkeyInvalid(#[source] nkeys::error::Error),
    /// Sealing the response to the server's curve key failed.
    #[error("{0}")]
    SealingFailed(#[source] nkeys::error::Error),
}

/// Seals `response` to the server's curve key when the request was sealed.
pub fn seal_if_needed(
    response: String,
    req: &AuthRequest,
    ours: Option<&XKey>,
) -> Result<Vec<u8>, ResponseError> {
    match (&req.seal_to, ours) {
        (Some(server), Some(ours)) => {
            let server = XKey::from_public_key(server).map_err(ResponseError::ServerXkeyInvalid)?;
            ours.seal(response.as_bytes(), &server)
                .map_err(ResponseError::SealingFailed)
        }
        _ => Ok(response.into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callout::jwt::decode_verified;
    use crate::callout::request::tests::server_request;
    use crate::callout::request::RequestDecoder;
    use serde_json::Value;

    fn request(with_xkey: Option<&XKey>) -> (AuthRequest, Option<XKey>) {
        let server = KeyPair::new_server();
        let user = KeyPair::new_user().public_key();
        let now = 1_800_000_000;
        let server_x = XKey::new();
        let jwt = encode(
            &server_request(&server, &user, "t", now + 2, &server_x.public_key()),
            &server,
        )
        .unwrap();
        match with_xkey {
            None => (
                RequestDecoder::new(None)
                    .decode(jwt.as_bytes(), None, now)
                    .unwrap(),
                None,
            ),
            Some(ours) => {
                let sealed = server_x
                    .seal(
                        jwt.as_bytes(),
                        &XKey::from_public_key(&ours.public_key()).unwrap(),
                    )
                    .unwrap();
                let req = RequestDecoder::new(Some(ours.clone()))
                    .decode(&sealed, Some(&server_x.public_key()), now)
                    .unwrap();
                (req, Some(server_x))
            }
        }
    }

    fn perms() -> Permissions {
        let sa = crate::kube::ServiceAccount::for_test("ns", "app", "u");
        let policy = crate::policy::AdminPolicy::unrestricted();
        let evaluation =
            crate::policy::evaluate(&sa, &policy, crate::policy::InboxMode::Responses).unwrap();
        Permissions::clone(&evaluation.permissions)
    }

    #[test]
    fn an_allow_carries_a_user_jwt_bound_to_the_request() {
        let account = KeyPair::new_account();
        let signer = ResponseSigner::new(account.clone(), "APP".into());
        let (req, _) = request(None);
        let p = perms();
        let grant = Grant {
            name: "system:serviceaccount:ns:app".into(),
            expires_at: 1_800_000_600,
            account: None,
            permissions: &p,
        };
        let resp = signer.allow(&req, &grant, 1_800_000_000).unwrap();
        let claims: Value = decode_verified(&resp).unwrap();
        assert_eq!(claims["iss"], account.public_key());
        assert_eq!(claims["sub"], req.user_nkey.as_str());
        assert_eq!(claims["aud"], req.server.id.as_str());
        assert_eq!(claims["nats"]["type"], "authorization_response");
        assert_eq!(claims["nats"]["version"], 2);
        assert!(claims["nats"].get("error").is_none());
        let user: Value = decode_verified(claims["nats"]["jwt"].as_str().unwrap()).unwrap();
        assert_eq!(user["iss"], account.public_key());
        assert_eq!(user["sub"], req.user_nkey.as_str());
        assert_eq!(user["aud"], "APP");
        assert_eq!(user["name"], "system:serviceaccount:ns:app");
        assert_eq!(user["exp"], 1_800_000_600);
        assert_eq!(user["nats"]["pub"]["allow"], serde_json::json!(["ns.>"]));
        assert_eq!(
            user["nats"]["sub"]["allow"],
            serde_json::json!(["ns.>", "_INBOX.>", "_INBOX_ns_app.>"])
        );
        assert_eq!(user["nats"]["resp"]["max"], 1);
        assert_eq!(user["nats"]["type"], "user");
        assert!(
            user.get("type").is_none(),
            "a top-level type would make it a v1 JWT"
        );
        assert!(
            user.get("issuer_account").is_none() && user["nats"].get("issuer_account").is_none()
        );
        // Never a bearer token: an unsealed answer passes through the callout account, where
        // its user JWT is readable; without the nkey seed only the server holds, it is useless.
        let mut fields: Vec<&str> = user["nats"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            ["data", "payload", "pub", "resp", "sub", "subs", "type", "version"],
            "{user}"
        );
    }

    #[test]
    fn a_grant_names_its_account_and_a_shared_inbox_grant_has_no_response_permission() {
        let account = KeyPair::new_account();
        let signer = ResponseSigner::new(account, "APP".into());
        let (req, _) = request(None);
        let sa = crate::kube::ServiceAccount::for_test("ns", "app", "u");
        let policy = crate::policy::AdminPolicy::unrestricted();
        let p = crate::policy::evaluate(&sa, &policy, crate::policy::InboxMode::Shared)
            .unwrap()
            .permissions;
        let grant = Grant {
            name: "system:serviceaccount:ns:app".into(),
            expires_at: 1_800_000_600,
            account: Some("PAYMENTS"),
            permissions: &p,
        };
        let resp = signer.allow(&req, &grant, 1_800_000_000).unwrap();
        let claims: Value = decode_verified(&resp).unwrap();
        let user: Value = decode_verified(claims["nats"]["jwt"].as_str().unwrap()).unwrap();
        assert_eq!(user["aud"], "PAYMENTS");
        assert!(user["nats"].get("resp").is_none(), "{user}");
        assert_eq!(
            user["nats"]["pub"]["allow"],
            serde_json::json!(["ns.>", "_INBOX.>"])
        );
    }

    /// The user JWT inside the response `signer` gives for `account`.
    fn operator_user_jwt(signer: &ResponseSigner, account: Option<&str>) -> (Value, Value) {
        let (req, _) = request(None);
        let p = perms();
        let grant = Grant {
            name: "system:serviceaccount:ns:app".into(),
            expires_at: 1_800_000_600,
            account,
            permissions: &p,
        };
        let resp = signer.allow(&req, &grant, 1_800_000_000).unwrap();
        let claims: Value = decode_verified(&resp).unwrap();
        let user: Value = decode_verified(claims["nats"]["jwt"].as_str().unwrap()).unwrap();
        (claims, user)
    }

    #[test]
    fn operator_mode_signs_users_with_their_accounts_key_and_responses_with_the_callouts() {
        let callout = KeyPair::new_account();
        let app = KeyPair::new_account();
        let app_signing = KeyPair::new_account();
        let other = KeyPair::new_account();
        let scoped = KeyPair::new_account();
        let team = KeyPair::new_account();
        let signer = ResponseSigner::operator(
            UserSigningKey::new(callout.public_key(), callout.clone(), false),
            UserSigningKey::new(app.public_key(), app_signing.clone(), false),
            vec![
                UserSigningKey::new(other.public_key(), other.clone(), false),
                UserSigningKey::new(team.public_key(), scoped.clone(), true),
            ],
        );
        // The default account, through one of its signing keys.
        let (claims, user) = operator_user_jwt(&signer, None);
        assert_eq!(
            claims["iss"],
            callout.public_key(),
            "the callout account answers"
        );
        assert!(claims["nats"].get("issuer_account").is_none(), "{claims}");
        assert_eq!(user["iss"], app_signing.public_key());
        assert_eq!(user["nats"]["issuer_account"], app.public_key().as_str());
        assert!(
            user.get("aud").is_none(),
            "operator mode: the issuer picks the account"
        );
        assert_eq!(user["nats"]["pub"]["allow"], serde_json::json!(["ns.>"]));
        // Another account with its own key: no issuer_account.
        let (_, user) = operator_user_jwt(&signer, Some(&other.public_key()));
        assert_eq!(user["iss"], other.public_key());
        assert!(user["nats"].get("issuer_account").is_none());
        // A scoped key: the scope carries every permission and limit.
        let (_, user) = operator_user_jwt(&signer, Some(&team.public_key()));
        assert_eq!(user["iss"], scoped.public_key());
        let nats = user["nats"].as_object().unwrap();
        let mut fields: Vec<&str> = nats.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(fields, ["issuer_account", "type", "version"], "{user}");
        // An account without a key cannot be signed for.
        let stranger = KeyPair::new_account().public_key();
        assert!(signer.can_sign_for(None));
        assert!(signer.can_sign_for(Some(&team.public_key())));
        assert!(!signer.can_sign_for(Some(&stranger)));
        let (req, _) = request(None);
        let p = perms();
        let grant = Grant {
            name: "x".into(),
            expires_at: 1_800_000_600,
            account: Some(&stranger),
            permissions: &p,
        };
        assert!(signer.allow(&req, &grant, 1_800_000_000).is_err());
        assert_eq!(signer.issuer(), callout.public_key());
        assert_eq!(signer.user_keys().len(), 3);
    }

    #[test]
    fn a_callout_signing_key_signs_responses_naming_the_callout_account() {
        let (callout, callout_signing, app) = (
            KeyPair::new_account(),
            KeyPair::new_account(),
            KeyPair::new_account(),
        );
        let signer = ResponseSigner::operator(
            UserSigningKey::new(callout.public_key(), callout_signing.clone(), false),
            UserSigningKey::new(app.public_key(), app.clone(), false),
            Vec::new(),
        );
        assert_eq!(signer.issuer(), callout_signing.public_key());
        assert_eq!(signer.callout_account(), callout.public_key());
        // Requests are answered for the callout account only, never for the signing key taken
        // as an account (or a client account).
        assert!(signer.answers_for(&callout.public_key()));
        for other in [callout_signing.public_key(), app.public_key()] {
            assert!(!signer.answers_for(&other));
        }
        assert!(ResponseSigner::new(app.clone(), "APP".into()).answers_for("anything"));
        let (claims, user) = operator_user_jwt(&signer, None);
        assert_eq!(claims["iss"], callout_signing.public_key());
        assert_eq!(
            claims["nats"]["issuer_account"],
            callout.public_key().as_str()
        );
        assert_eq!(user["iss"], app.public_key(), "users are signed as before");
        let (req, _) = request(None);
        let denial: Value =
            decode_verified(&signer.deny(&req, "token_expired", 1_800_000_000).unwrap()).unwrap();
        assert_eq!(denial["iss"], callout_signing.public_key());
        assert_eq!(
            denial["nats"]["issuer_account"],
            callout.public_key().as_str()
        );
        // Config mode has no issuer_account.
        let config = ResponseSigner::new(callout.clone(), "APP".into());
        assert_eq!(config.callout_account(), callout.public_key());
        let denial: Value =
            decode_verified(&config.deny(&req, "token_expired", 1_800_000_000).unwrap()).unwrap();
        assert!(denial["nats"].get("issuer_account").is_none());
    }

    #[test]
    fn a_denial_carries_the_generic_text_and_a_reason_label_only() {
        let account = KeyPair::new_account();
        let signer = ResponseSigner::new(account, "APP".into());
        let (req, _) = request(None);
        let error = |reason: &str| -> Value {
            let claims: Value =
                decode_verified(&signer.deny(&req, reason, 1_800_000_000).unwrap()).unwrap();
            assert!(claims["nats"].get("jwt").is_none());
            claims["nats"]["error"].clone()
        };
        assert_eq!(
            error("token_expired"),
            "authorization failed (token_expired)"
        );
        for not_a_label in [
            "",
            "Token Expired",
            "a\nforged line",
            "x'y",
            &"a".repeat(65),
        ] {
            assert_eq!(error(not_a_label), GENERIC_DENIAL, "{not_a_label:?}");
        }
    }

    #[test]
    fn an_answer_that_cannot_be_signed_says_why() {
        // A key pair without its seed cannot sign.
        let public_only = KeyPair::from_public_key(&KeyPair::new_account().public_key()).unwrap();
        let signer = ResponseSigner::new(public_only, "APP".into());
        let (req, _) = request(None);
        let refused = ResponseError::from(
            signer
                .deny(&req, "token_expired", 1_800_000_000)
                .unwrap_err(),
        );
        assert!(
            matches!(refused, ResponseError::SigningFailed(JwtError::Signing)),
            "{refused:?}"
        );
        // The worker logs the JWT error's own text after "cannot sign the answer: ".
        assert_eq!(refused.to_string(), "jwt signing failed");
    }

    #[test]
    fn an_answer_that_cannot_be_sealed_says_why() {
        let ours = XKey::new();
        let (mut req, _) = request(Some(&ours));
        req.seal_to = Some("not-a-curve-key".into());
        let signer = ResponseSigner::new(KeyPair::new_account(), "APP".into());
        let plain = signer.deny(&req, "token_expired", 1_800_000_000).unwrap();
        let refused = seal_if_needed(plain, &req, Some(&ours)).unwrap_err();
        assert!(
            matches!(refused, ResponseError::ServerXkeyInvalid(_)),
            "{refused:?}"
        );
        // The worker logs the key's own error, as it did when this was a string.
        let cause = XKey::from_public_key("not-a-curve-key").unwrap_err();
        assert_eq!(refused.to_string(), cause.to_string());
    }

    #[test]
    fn the_answer_to_a_sealed_request_is_sealed_to_the_server() {
        let ours = XKey::new();
        let (req, server_x) = request(Some(&ours));
        let server_x = server_x.unwrap();
        let signer = ResponseSigner::new(KeyPair::new_account(), "APP".into());
        let plain = signer.deny(&req, "token_expired", 1_800_000_000).unwrap();
        let sealed = seal_if_needed(plain.clone(), &req, Some(&ours)).unwrap();
        assert_ne!(sealed, plain.as_bytes());
        let opened = server_x
            .open(&sealed, &XKey::from_public_key(&ours.public_key()).unwrap())
            .unwrap();
        assert_eq!(opened, plain.as_bytes());
    }
}
