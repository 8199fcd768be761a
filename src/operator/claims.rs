//! Operator-mode NATS JWT claims: the operator, its accounts (limits, signing keys, the callout's
//! `authorization`) and users, in the shapes of nats-io/jwt v2, signed with the callout's codec.
//!
//! Every JWT carries `jti`, `iat`, `iss`, `name`, `sub` and, under `nats`, the body plus
//! `type` and `version: 2` (no top-level `type`: that would make it a v1 JWT).

use nkeys::KeyPair;
use serde::Serialize;

use crate::callout::jwt::{encode, jti, JwtError, Registered};
use crate::callout::wire::{
    ACCOUNT_TYPE, CLAIMS_VERSION, OPERATOR_TYPE, USER_SCOPE_KIND, USER_TYPE,
};

/// `-1`: no limit (nats-io/jwt `NoLimit`).
pub const NO_LIMIT: i64 = -1;

/// The body of one kind of JWT; its kind is the `nats.type` it is signed with.
pub trait ClaimBody: Serialize {
    /// `nats.type`.
    const TYPE: &'static str;
}

#[derive(Serialize)]
struct Nats<'a, T> {
    #[serde(flatten)]
    body: &'a T,
    #[serde(rename = "type")]
    kind: &'static str,
    version: i64,
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    jti: String,
    iat: i64,
    iss: &'a str,
    name: &'a str,
    sub: &'a str,
    nats: Nats<'a, T>,
}

/// Signs `body` as the JWT of `subject` (a public key) named `name`, issued by `issuer` at `iat`.
pub fn sign<T: ClaimBody>(
    issuer: &KeyPair,
    subject: &str,
    name: &str,
    iat: i64,
    body: &T,
) -> Result<String, JwtError> {
    let iss = issuer.public_key();
    let registered = Registered {
        iat,
        iss: &iss,
        name,
        sub: subject,
        ..Registered::default()
    };
    let claims = Envelope {
        jti: jti(&registered),
        iat,
        iss: &iss,
        name,
        sub: subject,
        nats: Nats {
            body,
            kind: T::TYPE,
            version: CLAIMS_VERSION,
        },
    };
    encode(&claims, issuer)
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// The operator's body.
#[derive(Debug, Clone, Serialize)]
pub struct Operator {
    /// Public key of the system account (the server's `system_account` must be the same).
    pub system_account: String,
}

impl ClaimBody for Operator {
    const TYPE: &'static str = OPERATOR_TYPE;
}

/// An account's limits: nats-io/jwt `OperatorLimits` without tiers, flattened as it encodes them.
///
/// They must be written out: an account JWT without `limits` gets `conn: 0` on nats-server, so
/// no one can connect to it.
#[derive(Debug, Clone, Serialize)]
pub struct AccountLimits {
    /// Subscriptions.
    pub subs: i64,
    /// Bytes in flight.
    pub data: i64,
    /// Message payload size.
    pub payload: i64,
    /// Imports.
    pub imports: i64,
    /// Exports.
    pub exports: i64,
    /// Whether exports may contain wildcards.
    pub wildcards: bool,
    /// Refuse user JWTs marked `bearer_token`.
    #[serde(skip_serializing_if = "is_false")]
    pub disallow_bearer: bool,
    /// Client connections.
    pub conn: i64,
    /// Leaf node connections.
    pub leaf: i64,
    /// JetStream memory bytes; JetStream is enabled when this or `disk_storage` is not 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub mem_storage: i64,
    /// JetStream file bytes.
    #[serde(skip_serializing_if = "is_zero")]
    pub disk_storage: i64,
    /// JetStream streams.
    #[serde(skip_serializing_if = "is_zero")]
    pub streams: i64,
    /// JetStream consumers.
    #[serde(skip_serializing_if = "is_zero")]
    pub consumer: i64,
}

impl AccountLimits {
    /// No limit on anything (within the server's own), bearer users allowed, JetStream off.
    pub fn unlimited() -> AccountLimits {
        AccountLimits {
            subs: NO_LIMIT,
            data: NO_LIMIT,
            payload: NO_LIMIT,
            imports: NO_LIMIT,
            exports: NO_LIMIT,
            wildcards: true,
            disallow_bearer: false,
            conn: NO_LIMIT,
            leaf: NO_LIMIT,
            mem_storage: 0,
            disk_storage: 0,
            streams: 0,
            consumer: 0,
        }
    }

    /// The same with JetStream enabled, without limits of its own.
    pub fn with_jetstream(self) -> AccountLimits {
        AccountLimits {
            mem_storage: NO_LIMIT,
            disk_storage: NO_LIMIT,
            streams: NO_LIMIT,
            consumer: NO_LIMIT,
            ..self
        }
    }

    /// The same refusing bearer user JWTs.
    pub fn without_bearer(self) -> AccountLimits {
        AccountLimits {
            disallow_bearer: true,
            ..self
        }
    }
}

/// Subjects allowed and denied for one direction.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Permission {
    /// Allowed subjects.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Denied subjects (they win over `allow`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl Permission {
    /// Allows exactly `subjects`.
    pub fn allow(subjects: &[&str]) -> Permission {
        Permission {
            allow: subjects.iter().map(|s| s.to_string()).collect(),
            deny: Vec::new(),
        }
    }

    /// Denies `subjects`.
    pub fn deny(subjects: &[&str]) -> Permission {
        Permission {
            allow: Vec::new(),
            deny: subjects.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// A user's permissions and limits (nats-io/jwt `UserPermissionLimits`); also a scoped signing
/// key's template.
///
/// Zero limits are left out: a user signed by a scoped key must carry no permissions and no
/// limits at all, or nats-server refuses it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UserPermissionLimits {
    /// Publish permission.
    #[serde(rename = "pub", skip_serializing_if = "Permission::is_empty")]
    pub publish: Permission,
    /// Subscribe permission.
    #[serde(rename = "sub", skip_serializing_if = "Permission::is_empty")]
    pub subscribe: Permission,
    /// Subscriptions (`-1`: the account's limit applies).
    #[serde(skip_serializing_if = "is_zero")]
    pub subs: i64,
    /// Bytes in flight.
    #[serde(skip_serializing_if = "is_zero")]
    pub data: i64,
    /// Message payload size.
    #[serde(skip_serializing_if = "is_zero")]
    pub payload: i64,
    /// The JWT alone authenticates: the server does not ask for the nonce to be signed.
    #[serde(skip_serializing_if = "is_false")]
    pub bearer_token: bool,
}

impl UserPermissionLimits {
    /// `publish` and `subscribe` with no per-user limit (the account's limits apply).
    pub fn new(publish: Permission, subscribe: Permission) -> UserPermissionLimits {
        UserPermissionLimits {
            publish,
            subscribe,
            subs: NO_LIMIT,
            data: NO_LIMIT,
            payload: NO_LIMIT,
            bearer_token: false,
        }
    }
}

/// A scoped signing key: users it signs get `template`'s permissions and limits, never their own.
#[derive(Debug, Clone, Serialize)]
pub struct UserScope {
    kind: &'static str,
    /// The signing key's public key.
    pub key: String,
    /// A name for what the key is for.
    pub role: String,
    /// Permissions and limits of every user it signs; `{{name()}}` and the like are expanded.
    pub template: UserPermissionLimits,
    /// What the scope is for, for people reading the JWT.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl UserScope {
    /// A user scope for the signing key `key`.
    pub fn new(
        key: String,
        role: &str,
        template: UserPermissionLimits,
        description: &str,
    ) -> UserScope {
        UserScope {
            kind: USER_SCOPE_KIND,
            key,
            role: role.to_string(),
            template,
            description: description.to_string(),
        }
    }
}

/// One entry of an account's `signing_keys`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SigningKey {
    /// A plain signing key (its public key): signs users with any permissions.
    Plain(String),
    /// A scoped signing key.
    Scoped(UserScope),
}

/// The auth callout of an account (nats-io/jwt `ExternalAuthorization`).
#[derive(Debug, Clone, Serialize)]
pub struct ExternalAuthorization {
    /// Users that bypass the callout: the service's own.
    pub auth_users: Vec<String>,
    /// Accounts the callout may place users in, besides its own.
    pub allowed_accounts: Vec<String>,
    /// The service's curve key: requests are sealed to it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub xkey: String,
}

/// An account's body.
#[derive(Debug, Clone, Serialize)]
pub struct Account {
    /// Limits (always written: see [`AccountLimits`]).
    pub limits: AccountLimits,
    /// Keys besides the account's own that may sign its users.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<SigningKey>,
    /// The auth callout, in the callout account only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<ExternalAuthorization>,
    /// What the account is for.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl ClaimBody for Account {
    const TYPE: &'static str = ACCOUNT_TYPE;
}

/// A user's body.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// Permissions and limits (all empty when a scoped key signs).
    #[serde(flatten)]
    pub permissions: UserPermissionLimits,
    /// The account, when a signing key rather than the account key signs.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub issuer_account: String,
}

impl ClaimBody for User {
    const TYPE: &'static str = USER_TYPE;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callout::jwt::decode_verified;
    use serde_json::{json, Value};

    fn claims(token: &str) -> Value {
        decode_verified(token).unwrap()
    }

    #[test]
    fn every_jwt_carries_the_registered_claims_and_a_v2_type() {
        let operator = KeyPair::new_operator();
        let sys = KeyPair::new_account().public_key();
        let token = sign(
            &operator,
            &operator.public_key(),
            "op",
            1_800_000_000,
            &Operator {
                system_account: sys.clone(),
            },
        )
        .unwrap();
        let c = claims(&token);
        assert_eq!(c["iss"], operator.public_key());
        assert_eq!(c["sub"], operator.public_key());
        assert_eq!(c["name"], "op");
        assert_eq!(c["iat"], 1_800_000_000);
        assert_eq!(
            c["jti"],
            jti(&Registered {
                iat: 1_800_000_000,
                iss: &operator.public_key(),
                name: "op",
                sub: &operator.public_key(),
                ..Registered::default()
            })
        );
        assert_eq!(
            c["nats"],
            json!({"system_account": sys, "type": "operator", "version": 2})
        );
        assert!(c.get("type").is_none(), "a top-level type makes a v1 JWT");
    }

    #[test]
    fn account_limits_are_explicit_and_jetstream_only_where_enabled() {
        let plain = serde_json::to_value(AccountLimits::unlimited()).unwrap();
        assert_eq!(
            plain,
            json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                   "wildcards": true, "conn": -1, "leaf": -1})
        );
        let js = serde_json::to_value(AccountLimits::unlimited().with_jetstream().without_bearer())
            .unwrap();
        assert_eq!(js["mem_storage"], -1);
        assert_eq!(js["disk_storage"], -1);
        assert_eq!(js["streams"], -1);
        assert_eq!(js["consumer"], -1);
        assert_eq!(js["disallow_bearer"], true);
    }

    #[test]
    fn signing_keys_list_plain_keys_as_strings_and_scopes_as_objects() {
        let plain = KeyPair::new_account().public_key();
        let scoped = KeyPair::new_account().public_key();
        let template = UserPermissionLimits::new(
            Permission::allow(&["a.{{name()}}.>"]),
            Permission::default(),
        );
        let keys = vec![
            SigningKey::Plain(plain.clone()),
            SigningKey::Scoped(UserScope::new(scoped.clone(), "r", template, "")),
        ];
        assert_eq!(
            serde_json::to_value(keys).unwrap(),
            json!([plain, {"kind": "user_scope", "key": scoped, "role": "r",
                "template": {"pub": {"allow": ["a.{{name()}}.>"]}, "subs": -1, "data": -1,
                             "payload": -1}}])
        );
    }

    #[test]
    fn a_user_for_a_scoped_key_has_nothing_but_its_account() {
        let user = User {
            permissions: UserPermissionLimits::default(),
            issuer_account: "AACCOUNT".into(),
        };
        assert_eq!(
            serde_json::to_value(user).unwrap(),
            json!({"issuer_account": "AACCOUNT"})
        );
    }

    #[test]
    fn the_callout_account_names_its_users_accounts_and_xkey() {
        let account = Account {
            limits: AccountLimits::unlimited(),
            signing_keys: Vec::new(),
            authorization: Some(ExternalAuthorization {
                auth_users: vec!["UCALLOUT".into()],
                allowed_accounts: vec!["AAPP".into()],
                xkey: String::new(),
            }),
            description: String::new(),
        };
        let v = serde_json::to_value(account).unwrap();
        assert_eq!(
            v["authorization"],
            json!({"auth_users": ["UCALLOUT"], "allowed_accounts": ["AAPP"]})
        );
        assert!(v.get("signing_keys").is_none());
    }
}
