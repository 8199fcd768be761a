//! Building the answers: the user JWT of an allowed client and the signed (optionally sealed)
//! authorization response.

use nkeys::{KeyPair, XKey};
use serde::Serialize;

use super::jwt::{encode, jti, JwtError, Registered};
use super::request::AuthRequest;
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

#[derive(Serialize)]
struct UserBody<'a> {
    #[serde(rename = "pub")]
    publish: SubjectRule<'a>,
    sub: SubjectRule<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resp: Option<ResponseRule>,
    // -1: no per-user limit; the account's limits apply.
    subs: i64,
    data: i64,
    payload: i64,
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
    aud: &'a str,
    exp: i64,
    nats: UserBody<'a>,
}

#[derive(Serialize)]
struct ResponseBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
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

/// Signs user JWTs and authorization responses with the account key.
pub struct ResponseSigner {
    account: KeyPair,
    account_public: String,
    default_account: String,
}

impl ResponseSigner {
    /// A signer for `account` (an account key pair with its seed) placing clients in
    /// `default_account` unless a grant names another.
    pub fn new(account: KeyPair, default_account: String) -> ResponseSigner {
        let account_public = account.public_key();
        ResponseSigner {
            account,
            account_public,
            default_account,
        }
    }

    /// The public key of the signing account (the server's `auth_callout.issuer`).
    pub fn issuer(&self) -> &str {
        &self.account_public
    }

    /// The user JWT for an allowed client.
    pub fn user_jwt(
        &self,
        req: &AuthRequest,
        grant: &Grant<'_>,
        now: i64,
    ) -> Result<String, JwtError> {
        let p = grant.permissions;
        let target_account = grant.account.unwrap_or(&self.default_account);
        let registered = Registered {
            aud: target_account,
            exp: grant.expires_at,
            iat: now,
            iss: &self.account_public,
            name: &grant.name,
            sub: &req.user_nkey,
        };
        let claims = UserClaims {
            jti: jti(&registered),
            iat: now,
            iss: &self.account_public,
            name: &grant.name,
            // The JWT is bound to the nkey the server generated for this very connection.
            sub: &req.user_nkey,
            // Config mode: `aud` names the account the client is placed in.
            aud: target_account,
            // A client never outlives its service-account token.
            exp: grant.expires_at,
            nats: UserBody {
                publish: SubjectRule {
                    allow: &p.pub_allow,
                    deny: &p.pub_deny,
                },
                sub: SubjectRule {
                    allow: &p.sub_allow,
                    deny: &p.sub_deny,
                },
                resp: (p.resp_max > 0).then_some(ResponseRule {
                    max: p.resp_max,
                    ttl: 0,
                }),
                subs: -1,
                data: -1,
                payload: -1,
                kind: USER_TYPE,
                version: CLAIMS_VERSION,
            },
        };
        encode(&claims, &self.account)
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

    /// The signed denial; it carries only the generic text.
    pub fn deny(&self, req: &AuthRequest, now: i64) -> Result<String, JwtError> {
        self.response(req, None, Some(GENERIC_DENIAL), now)
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

    #[test]
    fn a_denial_carries_only_the_generic_text() {
        let account = KeyPair::new_account();
        let signer = ResponseSigner::new(account, "APP".into());
        let (req, _) = request(None);
        let claims: Value = decode_verified(&signer.deny(&req, 1_800_000_000).unwrap()).unwrap();
        assert_eq!(claims["nats"]["error"], GENERIC_DENIAL);
        assert!(claims["nats"].get("jwt").is_none());
    }

    #[test]
    fn an_answer_that_cannot_be_signed_says_why() {
        // A key pair without its seed cannot sign.
        let public_only = KeyPair::from_public_key(&KeyPair::new_account().public_key()).unwrap();
        let signer = ResponseSigner::new(public_only, "APP".into());
        let (req, _) = request(None);
        let refused = ResponseError::from(signer.deny(&req, 1_800_000_000).unwrap_err());
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
        let plain = signer.deny(&req, 1_800_000_000).unwrap();
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
        let plain = signer.deny(&req, 1_800_000_000).unwrap();
        let sealed = seal_if_needed(plain.clone(), &req, Some(&ours)).unwrap();
        assert_ne!(sealed, plain.as_bytes());
        let opened = server_x
            .open(&sealed, &XKey::from_public_key(&ours.public_key()).unwrap())
            .unwrap();
        assert_eq!(opened, plain.as_bytes());
    }
}
