//! NATS auth callout wire names: subjects, headers, claim types and audiences.

/// Subject on which nats-server publishes authorization requests.
pub const AUTH_REQUEST_SUBJECT: &str = "$SYS.REQ.USER.AUTH";
/// Queue group shared by every replica, so each request is handled once.
pub const QUEUE_GROUP: &str = "nats-k8s-oidc-callout";
/// Header carrying the server's per-process curve key when a request is sealed.
pub const SERVER_XKEY_HEADER: &str = "Nats-Server-Xkey";
/// `aud` of every authorization request.
pub const REQUEST_AUDIENCE: &str = "nats-authorization-request";
/// `nats.type` of an authorization request.
pub const REQUEST_TYPE: &str = "authorization_request";
/// `nats.type` of an authorization response.
pub const RESPONSE_TYPE: &str = "authorization_response";
/// `nats.type` of a user JWT.
pub const USER_TYPE: &str = "user";
/// `nats.type` of an operator JWT.
pub const OPERATOR_TYPE: &str = "operator";
/// `nats.type` of an account JWT.
pub const ACCOUNT_TYPE: &str = "account";
/// `kind` of a scoped signing key in an account's `signing_keys` (nats-server 2.15 reads this name).
pub const USER_SCOPE_KIND: &str = "user_scope";
/// Claims version of every JWT exchanged.
pub const CLAIMS_VERSION: i64 = 2;
/// Header of every NATS JWT.
pub const JWT_HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;
/// Algorithm name in the NATS JWT header.
pub const JWT_ALGORITHM: &str = "ed25519-nkey";
/// The error text every denial carries; the specific reason goes to the log only.
pub const GENERIC_DENIAL: &str = "authorization failed";
/// Largest NATS JWT the decoder accepts (nats-server refuses tokens over 1 MB too).
pub const MAX_JWT_BYTES: usize = 1 << 20;
