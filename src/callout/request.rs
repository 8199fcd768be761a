//! Decoding and verifying the authorization requests nats-server sends.

use std::fmt;

use nkeys::XKey;
use serde::Deserialize;

use super::jwt::{decode_verified, decode_verified_issued, Issued, JwtError};
use super::wire::{CLAIMS_VERSION, REQUEST_AUDIENCE, REQUEST_TYPE};

/// Clock difference tolerated between nats-server and this service when checking `exp`.
pub const REQUEST_CLOCK_SKEW_SECS: i64 = 5;
/// Furthest ahead a request's `exp` may lie. nats-server sets it to the send time plus its
/// authorization timeout (2 s by default); a request claiming more was not sent by a server
/// waiting for an answer, or by one whose timeout no client would sit through.
pub const REQUEST_MAX_LIFETIME_SECS: i64 = 60;

/// Why an authorization request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request is sealed but this service has no xkey seed to open it.
    #[error("request is sealed but NATS_XKEY_SEED_FILE is not set")]
    SealedWithoutXkey,
    /// This service has an xkey and the request came in plain text.
    #[error(
        "request is not sealed although an xkey is configured \
         (is `xkey` set in the server's auth_callout block?)"
    )]
    NotSealed,
    /// The `Nats-Server-Xkey` header is not a curve public key.
    #[error("request header Nats-Server-Xkey is not a curve key")]
    BadServerXkey,
    /// The sealed payload does not open with our key and the server's.
    #[error("sealed request does not open with the configured xkey")]
    CannotOpen,
    /// The JWT is malformed or its signature does not verify.
    #[error("request {0}")]
    Jwt(#[source] JwtError),
    /// `iss` is not a server key or differs from `server_id.id`.
    #[error("request issuer is not the server id")]
    WrongIssuer,
    /// `aud` is not the authorization request audience.
    #[error("request audience is not {REQUEST_AUDIENCE}")]
    WrongAudience,
    /// `exp` is missing or has passed.
    #[error("request expired")]
    Expired,
    /// `exp` lies further ahead than [`REQUEST_MAX_LIFETIME_SECS`].
    #[error(
        "request claims to stay valid for {secs} s, more than the {REQUEST_MAX_LIFETIME_SECS} s \
         allowed (nats-server sets its authorization timeout, 2 s by default)"
    )]
    LivesTooLong {
        /// Seconds from now to the request's `exp`.
        secs: i64,
    },
    /// `nats.type` or `nats.version` is not an authorization request.
    #[error("request is not an authorization_request v2")]
    WrongType,
    /// `nats.user_nkey` is not a user public key.
    #[error("request user_nkey is not a user key")]
    BadUserNkey,
    /// Operator mode: `sub` names a callout account other than the one the responses are
    /// signed for.
    #[error(
        "request is for the callout account {asked}, but this service answers for {ours}: \
         NATS_CALLOUT_SIGNING_KEY_FILE must hold a key of the callout account (without it, \
         NATS_ACCOUNT must be the callout account), and NATS_CALLOUT_ACCOUNT name the account \
         when that key is one of its signing keys"
    )]
    WrongAccount {
        /// The account the server asks for.
        asked: String,
        /// The account the responses are signed for.
        ours: String,
    },
    /// Config mode: the request carries a user JWT of the account it is for (a sentinel), so
    /// the server runs in operator mode and would place clients by the user JWT's issuer.
    #[error(
        "the client presented a user JWT of the callout account: nats-server runs in operator \
         mode; set NATS_OPERATOR_MODE=true (with NATS_ACCOUNT the clients' account public key)"
    )]
    OperatorModeServer,
}

impl RequestError {
    /// The metric label of this error.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::SealedWithoutXkey => "request_sealed_without_xkey",
            RequestError::NotSealed => "request_not_sealed",
            RequestError::BadServerXkey | RequestError::CannotOpen => "request_cannot_open",
            RequestError::Jwt(JwtError::BadSignature) => "request_bad_signature",
            RequestError::Jwt(_) => "request_malformed",
            RequestError::WrongIssuer => "request_wrong_issuer",
            RequestError::WrongAudience => "request_wrong_audience",
            RequestError::Expired => "request_expired",
            RequestError::LivesTooLong { .. } => "request_lives_too_long",
            RequestError::WrongType => "request_malformed",
            RequestError::BadUserNkey => "request_malformed",
            RequestError::WrongAccount { .. } => "request_wrong_account",
            RequestError::OperatorModeServer => "request_operator_mode_server",
        }
    }
}

/// The server that sent a request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServerId {
    /// Server name.
    #[serde(default)]
    pub name: String,
    /// Server public nkey (`N…`), new at every server start.
    #[serde(default)]
    pub id: String,
    /// Server version.
    #[serde(default)]
    pub version: String,
    /// Server curve key, when it encrypts requests.
    #[serde(default)]
    pub xkey: String,
}

/// The connecting client as the server describes it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClientInfo {
    /// Client address.
    #[serde(default)]
    pub host: String,
    /// Client connection id on that server.
    #[serde(default)]
    pub id: u64,
    /// Client-chosen connection name.
    #[serde(default)]
    pub name: String,
    /// `Client` or `Leafnode`.
    #[serde(default)]
    pub kind: String,
    /// `nats`, `websocket` or `mqtt`.
    #[serde(default, rename = "type")]
    pub client_type: String,
}

/// The client's CONNECT options. Holds credentials: never logged.
#[derive(Clone, Default, Deserialize)]
pub struct ConnectOpts {
    /// `auth_token` from CONNECT.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// `user` from CONNECT.
    #[serde(default)]
    pub user: Option<String>,
    /// `pass` from CONNECT (MQTT clients put their password here).
    #[serde(default)]
    pub pass: Option<String>,
    /// `jwt` from CONNECT: in operator mode the sentinel's user JWT (`default_sentinel`'s when
    /// the client sent none).
    #[serde(default)]
    pub jwt: Option<String>,
    /// Client library name.
    #[serde(default)]
    pub lang: Option<String>,
    /// Client library version.
    #[serde(default)]
    pub version: Option<String>,
}

impl fmt::Debug for ConnectOpts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOpts")
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .field("user", &self.user)
            .field("pass", &self.pass.as_ref().map(|_| "<redacted>"))
            .field("jwt", &self.jwt.as_ref().map(|_| "<redacted>"))
            .field("lang", &self.lang)
            .field("version", &self.version)
            .finish()
    }
}

impl ConnectOpts {
    /// The service-account token the client presented: `auth_token`, else `pass`.
    pub fn bearer_token(&self) -> Option<&str> {
        self.auth_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .or(self.pass.as_deref().filter(|t| !t.is_empty()))
    }
}

#[derive(Deserialize)]
struct RequestBody {
    #[serde(default)]
    server_id: ServerId,
    #[serde(default)]
    user_nkey: String,
    #[serde(default)]
    client_info: ClientInfo,
    #[serde(default)]
    connect_opts: ConnectOpts,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    version: i64,
}

#[derive(Deserialize)]
struct RequestClaims {
    iss: String,
    #[serde(default)]
    sub: String,
    #[serde(default)]
    aud: Option<String>,
    #[serde(default)]
    exp: Option<i64>,
    nats: RequestBody,
}

impl Issued for RequestClaims {
    fn issuer(&self) -> &str {
        &self.iss
    }
}

/// A verified authorization request.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    /// The server that asked; responses are addressed to `server.id`.
    pub server: ServerId,
    /// The user nkey the server generated for this connection; the user JWT's subject.
    pub user_nkey: String,
    /// The account the server asks for (`sub`): the callout account in operator mode,
    /// `auth_callout.issuer` in config mode.
    pub account: String,
    /// The connecting client.
    pub client: ClientInfo,
    /// Its CONNECT options (credentials inside).
    pub connect: ConnectOpts,
    /// The server's curve key when the request was sealed: the response is sealed to it.
    pub seal_to: Option<String>,
    /// Which of the decoder's curve keys opened it (see [`RequestDecoder::key_that_opened`]).
    pub opened_with: Option<usize>,
}

impl AuthRequest {
    /// Whether the client presented a user JWT issued by the account the request is for (by
    /// its key, or by a signing key naming it in `issuer_account`), its signature verified: what
    /// every request of an operator-mode server carries (the sentinel), and what no client of a
    /// config-mode server holds (the user JWTs the service signs go to the server only).
    pub fn presents_user_jwt_of_its_account(&self) -> bool {
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            issuer_account: Option<String>,
        }
        #[derive(Deserialize)]
        struct Claims {
            iss: String,
            #[serde(default)]
            nats: Option<Body>,
        }
        let Some(jwt) = self.connect.jwt.as_deref().filter(|j| !j.is_empty()) else {
            return false;
        };
        let Ok(claims) = decode_verified::<Claims>(jwt) else {
            return false;
        };
        let issuer_account = claims.nats.and_then(|n| n.issuer_account);
        !self.account.is_empty()
            && (claims.iss == self.account || issuer_account.as_deref() == Some(&self.account))
    }
}

/// Opens and verifies authorization requests.
pub struct RequestDecoder {
    /// Our curve keys: the current one first, then the one it replaced (requests sealed to it
    /// during a rotation still open).
    xkeys: Vec<XKey>,
}

impl RequestDecoder {
    /// A decoder; with `xkey`, sealed requests are opened and plain ones refused.
    pub fn new(xkey: Option<XKey>) -> RequestDecoder {
        RequestDecoder::with_keys(xkey.into_iter().collect())
    }

    /// A decoder that opens with any of `xkeys` (current first); none: plain requests only.
    pub fn with_keys(xkeys: Vec<XKey>) -> RequestDecoder {
        RequestDecoder { xkeys }
    }

    /// The service's current curve key.
    pub fn xkey(&self) -> Option<&XKey> {
        self.xkeys.first()
    }

    /// The curve key the current one replaced, while it still opens requests.
    pub fn replaced_xkey(&self) -> Option<&XKey> {
        self.xkeys.get(1)
    }

    /// The curve key that opened `req` (the one its answer is sealed with), if it was sealed.
    pub fn key_that_opened(&self, req: &AuthRequest) -> Option<&XKey> {
        req.opened_with.and_then(|i| self.xkeys.get(i))
    }

    /// Opens (when sealed), decodes and verifies one request payload at unix time `now`.
    pub fn decode(
        &self,
        payload: &[u8],
        server_xkey_header: Option<&str>,
        now: i64,
    ) -> Result<AuthRequest, RequestError> {
        let opened;
        let (jwt, seal_to, opened_with) = match (server_xkey_header, self.xkeys.is_empty()) {
            (Some(sender), false) => {
                let sender_key =
                    XKey::from_public_key(sender).map_err(|_| RequestError::BadServerXkey)?;
                let (i, plain) = self
                    .xkeys
                    .iter()
                    .enumerate()
                    .find_map(|(i, ours)| ours.open(payload, &sender_key).ok().map(|p| (i, p)))
                    .ok_or(RequestError::CannotOpen)?;
                opened = plain;
                (opened.as_slice(), Some(sender.to_string()), Some(i))
            }
            (Some(_), true) => return Err(RequestError::SealedWithoutXkey),
            // With an xkey configured the server seals every request; a plain one did not come
            // from a server configured with our key.
            (None, false) => return Err(RequestError::NotSealed),
            (None, true) => (payload, None, None),
        };
        let jwt = std::str::from_utf8(jwt)
            .map_err(|_| RequestError::Jwt(JwtError::NotThreeParts))?
            .trim();
        // Verifies the Ed25519 signature with the key the request names as its issuer.
        let claims: RequestClaims = decode_verified_issued(jwt).map_err(RequestError::Jwt)?;
        // The issuer must be a server key and the very server the request says it comes from.
        if !claims.iss.starts_with('N') || claims.iss != claims.nats.server_id.id {
            return Err(RequestError::WrongIssuer);
        }
        if claims.aud.as_deref() != Some(REQUEST_AUDIENCE) {
            return Err(RequestError::WrongAudience);
        }
        // exp = send time + auth timeout; an old request replayed later is refused.
        match claims.exp {
            Some(exp) if exp.saturating_add(REQUEST_CLOCK_SKEW_SECS) < now => {
                return Err(RequestError::Expired)
            }
            Some(exp) if exp.saturating_sub(now) > REQUEST_MAX_LIFETIME_SECS => {
                return Err(RequestError::LivesTooLong {
                    secs: exp.saturating_sub(now),
                })
            }
            Some(_) => {}
            None => return Err(RequestError::Expired),
        }
        if claims.nats.kind != REQUEST_TYPE || claims.nats.version != CLAIMS_VERSION {
            return Err(RequestError::WrongType);
        }
        // A user public key: length, base32, prefix and checksum. Its curve point is not
        // decompressed (a few µs): nats-server made the key and signed this request, and it
        // only becomes the `sub` of the user JWT that the same server checks.
        let user_key_ok = claims.nats.user_nkey.starts_with('U')
            && nkeys::from_public_key(&claims.nats.user_nkey).is_ok();
        if !user_key_ok {
            return Err(RequestError::BadUserNkey);
        }
        if let (Some(sender), false) = (&seal_to, claims.nats.server_id.xkey.is_empty()) {
            // The header and the signed claims must name the same server curve key.
            if *sender != claims.nats.server_id.xkey {
                return Err(RequestError::BadServerXkey);
            }
        }
        Ok(AuthRequest {
            server: claims.nats.server_id,
            user_nkey: claims.nats.user_nkey,
            account: claims.sub,
            client: claims.nats.client_info,
            connect: claims.nats.connect_opts,
            seal_to,
            opened_with,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::callout::jwt::encode;
    use nkeys::KeyPair;
    use serde_json::{json, Value};

    /// A request as nats-server builds it, signed by `server`.
    pub(crate) fn server_request(
        server: &KeyPair,
        user: &str,
        token: &str,
        exp: i64,
        xkey: &str,
    ) -> Value {
        json!({
            "jti": "X", "iat": exp - 2, "exp": exp,
            "iss": server.public_key(), "sub": server.public_key(),
            "aud": REQUEST_AUDIENCE,
            "nats": {
                "server_id": {"name": "s1", "host": "127.0.0.1", "id": server.public_key(), "version": "2.15.1", "xkey": xkey},
                "user_nkey": user,
                "client_info": {"host": "127.0.0.1", "id": 7, "kind": "Client", "type": "nats"},
                "connect_opts": {"auth_token": token, "lang": "rust", "version": "0.26", "protocol": 1},
                "type": REQUEST_TYPE, "version": 2
            }
        })
    }

    fn now() -> i64 {
        1_800_000_000
    }

    #[test]
    fn a_plain_request_from_the_server_decodes() {
        let server = KeyPair::new_server();
        let user = KeyPair::new_user().public_key();
        let jwt = encode(
            &server_request(&server, &user, "tok", now() + 2, ""),
            &server,
        )
        .unwrap();
        let req = RequestDecoder::new(None)
            .decode(jwt.as_bytes(), None, now())
            .unwrap();
        assert_eq!(req.user_nkey, user);
        assert_eq!(req.server.id, server.public_key());
        assert_eq!(req.connect.bearer_token(), Some("tok"));
        assert_eq!(req.client.id, 7);
        assert!(req.seal_to.is_none());
    }

    #[test]
    fn a_sealed_request_opens_and_names_the_key_to_seal_to() {
        let server = KeyPair::new_server();
        let server_x = XKey::new();
        let ours = XKey::new();
        let user = KeyPair::new_user().public_key();
        let jwt = encode(
            &server_request(&server, &user, "tok", now() + 2, &server_x.public_key()),
            &server,
        )
        .unwrap();
        let sealed = server_x
            .seal(
                jwt.as_bytes(),
                &XKey::from_public_key(&ours.public_key()).unwrap(),
            )
            .unwrap();
        let dec = RequestDecoder::new(Some(ours.clone()));
        let req = dec
            .decode(&sealed, Some(&server_x.public_key()), now())
            .unwrap();
        assert_eq!(req.seal_to.as_deref(), Some(server_x.public_key().as_str()));
        // Opening with another key fails.
        let other = RequestDecoder::new(Some(XKey::new()));
        assert_eq!(
            other
                .decode(&sealed, Some(&server_x.public_key()), now())
                .unwrap_err(),
            RequestError::CannotOpen
        );
        // Without a key we cannot open it at all.
        assert_eq!(
            RequestDecoder::new(None)
                .decode(&sealed, Some(&server_x.public_key()), now())
                .unwrap_err(),
            RequestError::SealedWithoutXkey
        );
        // With a key, a plain request is refused: the configured server always seals.
        assert_eq!(
            dec.decode(jwt.as_bytes(), None, now()).unwrap_err(),
            RequestError::NotSealed
        );
    }

    #[test]
    fn a_request_sealed_by_another_curve_key_than_its_server_names_is_refused() {
        // Whoever holds a server-signed request in the clear (an unsealed copy, while it has not
        // expired) could seal it to us with a key of theirs and get the answer sealed to them.
        let server = KeyPair::new_server();
        let (server_x, other_x, ours) = (XKey::new(), XKey::new(), XKey::new());
        let user = KeyPair::new_user().public_key();
        let jwt = encode(
            &server_request(&server, &user, "tok", now() + 2, &server_x.public_key()),
            &server,
        )
        .unwrap();
        let ours_public = XKey::from_public_key(&ours.public_key()).unwrap();
        let dec = RequestDecoder::new(Some(ours));
        let resealed = other_x.seal(jwt.as_bytes(), &ours_public).unwrap();
        assert_eq!(
            dec.decode(&resealed, Some(&other_x.public_key()), now())
                .unwrap_err(),
            RequestError::BadServerXkey
        );
        let sealed = server_x.seal(jwt.as_bytes(), &ours_public).unwrap();
        let req = dec
            .decode(&sealed, Some(&server_x.public_key()), now())
            .unwrap();
        // The account the server asks for is its `sub` (the callout account in operator mode).
        assert_eq!(req.account, server.public_key());
    }

    #[test]
    fn a_user_jwt_of_the_requests_account_marks_an_operator_mode_server() {
        let server = KeyPair::new_server();
        let (auth, auth_signing, other) = (
            KeyPair::new_account(),
            KeyPair::new_account(),
            KeyPair::new_account(),
        );
        let sentinel = |iss: &KeyPair, issuer_account: Option<&str>| {
            let mut nats = json!({"type": "user", "version": 2, "bearer_token": true});
            if let Some(a) = issuer_account {
                nats["issuer_account"] = json!(a);
            }
            let claims = json!({"iss": iss.public_key(), "sub": KeyPair::new_user().public_key(), "nats": nats});
            encode(&claims, iss).unwrap()
        };
        let decoded = |jwt: Option<String>| {
            let mut claims = server_request(
                &server,
                &KeyPair::new_user().public_key(),
                "tok",
                now() + 2,
                "",
            );
            claims["sub"] = json!(auth.public_key());
            if let Some(jwt) = jwt {
                claims["nats"]["connect_opts"]["jwt"] = json!(jwt);
            }
            let payload = encode(&claims, &server).unwrap();
            RequestDecoder::new(None)
                .decode(payload.as_bytes(), None, now())
                .unwrap()
        };
        let cut = |jwt: String| format!("{}AAAA", &jwt[..jwt.len() - 4]);
        for (jwt, operator) in [
            (Some(sentinel(&auth, None)), true),
            (
                Some(sentinel(&auth_signing, Some(&auth.public_key()))),
                true,
            ),
            (None, false),
            (Some(String::new()), false),
            (Some(sentinel(&other, None)), false),
            (Some("not a jwt".into()), false),
            // Signature broken: anyone could write the claims.
            (Some(cut(sentinel(&auth, None))), false),
        ] {
            let req = decoded(jwt.clone());
            assert_eq!(req.account, auth.public_key());
            assert_eq!(req.presents_user_jwt_of_its_account(), operator, "{jwt:?}");
        }
        // Credentials stay out of the debug output.
        let req = decoded(Some(sentinel(&auth, None)));
        assert!(!format!("{:?}", req.connect).contains("eyJ"));
    }

    #[test]
    fn during_an_xkey_rotation_a_request_sealed_to_the_previous_key_still_opens() {
        let server = KeyPair::new_server();
        let server_x = XKey::new();
        let (new, old) = (XKey::new(), XKey::new());
        let user = KeyPair::new_user().public_key();
        let jwt = encode(
            &server_request(&server, &user, "tok", now() + 2, &server_x.public_key()),
            &server,
        )
        .unwrap();
        let sealed_to = |ours: &XKey| {
            server_x
                .seal(
                    jwt.as_bytes(),
                    &XKey::from_public_key(&ours.public_key()).unwrap(),
                )
                .unwrap()
        };
        let dec = RequestDecoder::with_keys(vec![new.clone(), old.clone()]);
        assert_eq!(dec.xkey().unwrap().public_key(), new.public_key());
        for (ours, index) in [(&new, 0), (&old, 1)] {
            let req = dec
                .decode(&sealed_to(ours), Some(&server_x.public_key()), now())
                .unwrap();
            assert_eq!(req.opened_with, Some(index));
            assert_eq!(
                dec.key_that_opened(&req).unwrap().public_key(),
                ours.public_key(),
                "the answer is sealed with the key that opened the request"
            );
        }
        assert_eq!(
            dec.decode(
                &sealed_to(&XKey::new()),
                Some(&server_x.public_key()),
                now()
            )
            .unwrap_err(),
            RequestError::CannotOpen
        );
    }

    #[test]
    fn a_request_whose_issuer_is_not_the_server_id_is_refused() {
        let server = KeyPair::new_server();
        let user = KeyPair::new_user().public_key();
        let mut claims = server_request(&server, &user, "t", now() + 2, "");
        claims["nats"]["server_id"]["id"] = json!(KeyPair::new_server().public_key());
        let jwt = encode(&claims, &server).unwrap();
        assert_eq!(
            RequestDecoder::new(None)
                .decode(jwt.as_bytes(), None, now())
                .unwrap_err(),
            RequestError::WrongIssuer
        );
        // An account key is not a server key even when the ids agree.
        let account = KeyPair::new_account();
        let mut claims = server_request(&account, &user, "t", now() + 2, "");
        claims["nats"]["server_id"]["id"] = json!(account.public_key());
        let jwt = encode(&claims, &account).unwrap();
        assert_eq!(
            RequestDecoder::new(None)
                .decode(jwt.as_bytes(), None, now())
                .unwrap_err(),
            RequestError::WrongIssuer
        );
    }

    #[test]
    fn wrong_audience_expiry_type_and_user_key_are_refused() {
        let server = KeyPair::new_server();
        let user = KeyPair::new_user().public_key();
        let dec = RequestDecoder::new(None);
        let check = |edit: &dyn Fn(&mut Value), want: RequestError| {
            let mut claims = server_request(&server, &user, "t", now() + 2, "");
            edit(&mut claims);
            let jwt = encode(&claims, &server).unwrap();
            assert_eq!(dec.decode(jwt.as_bytes(), None, now()).unwrap_err(), want);
        };
        check(
            &|c| c["aud"] = json!("something-else"),
            RequestError::WrongAudience,
        );
        check(
            &|c| c["exp"] = json!(now() - REQUEST_CLOCK_SKEW_SECS - 1),
            RequestError::Expired,
        );
        check(
            &|c| {
                c.as_object_mut()
                    .unwrap()
                    .remove("exp")
                    .map(|_| ())
                    .unwrap()
            },
            RequestError::Expired,
        );
        // 30 years ahead, and just past the bound; the bound itself passes.
        check(
            &|c| c["exp"] = json!(now() + 30 * 365 * 86_400),
            RequestError::LivesTooLong {
                secs: 30 * 365 * 86_400,
            },
        );
        check(
            &|c| c["exp"] = json!(now() + REQUEST_MAX_LIFETIME_SECS + 1),
            RequestError::LivesTooLong {
                secs: REQUEST_MAX_LIFETIME_SECS + 1,
            },
        );
        let mut claims = server_request(&server, &user, "t", now() + REQUEST_MAX_LIFETIME_SECS, "");
        claims["exp"] = json!(now() + REQUEST_MAX_LIFETIME_SECS);
        let jwt = encode(&claims, &server).unwrap();
        assert!(dec.decode(jwt.as_bytes(), None, now()).is_ok());
        check(
            &|c| c["nats"]["type"] = json!("user"),
            RequestError::WrongType,
        );
        check(
            &|c| c["nats"]["version"] = json!(1),
            RequestError::WrongType,
        );
        check(
            &|c| c["nats"]["user_nkey"] = json!(KeyPair::new_account().public_key()),
            RequestError::BadUserNkey,
        );
        check(
            &|c| c["nats"]["user_nkey"] = json!("Unot-a-key"),
            RequestError::BadUserNkey,
        );
        // The right length and prefix, one character changed: the checksum catches it.
        let mut flipped = KeyPair::new_user().public_key().into_bytes();
        flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
        check(
            &|c| c["nats"]["user_nkey"] = json!(String::from_utf8(flipped.clone()).unwrap()),
            RequestError::BadUserNkey,
        );
    }

    #[test]
    fn each_error_names_its_cause_in_the_log() {
        let cases = [
            (
                RequestError::SealedWithoutXkey,
                "request is sealed but NATS_XKEY_SEED_FILE is not set",
            ),
            (
                RequestError::NotSealed,
                "request is not sealed although an xkey is configured \
                 (is `xkey` set in the server's auth_callout block?)",
            ),
            (
                RequestError::BadServerXkey,
                "request header Nats-Server-Xkey is not a curve key",
            ),
            (
                RequestError::CannotOpen,
                "sealed request does not open with the configured xkey",
            ),
            (
                RequestError::Jwt(JwtError::BadSignature),
                "request jwt signature does not verify",
            ),
            (
                RequestError::WrongIssuer,
                "request issuer is not the server id",
            ),
            (
                RequestError::WrongAudience,
                "request audience is not nats-authorization-request",
            ),
            (RequestError::Expired, "request expired"),
            (
                RequestError::LivesTooLong { secs: 3600 },
                "request claims to stay valid for 3600 s, more than the 60 s allowed \
                 (nats-server sets its authorization timeout, 2 s by default)",
            ),
            (
                RequestError::WrongType,
                "request is not an authorization_request v2",
            ),
            (
                RequestError::BadUserNkey,
                "request user_nkey is not a user key",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message, "{error:?}");
        }
    }

    #[test]
    fn a_jwt_error_is_the_source_of_its_request_error() {
        let e = RequestError::Jwt(JwtError::BadSignature);
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("jwt signature does not verify"));
    }

    #[test]
    fn the_token_comes_from_auth_token_then_pass() {
        let mut c = ConnectOpts::default();
        assert_eq!(c.bearer_token(), None);
        c.pass = Some("from-pass".into());
        assert_eq!(c.bearer_token(), Some("from-pass"));
        c.auth_token = Some(String::new());
        assert_eq!(c.bearer_token(), Some("from-pass"));
        c.auth_token = Some("from-token".into());
        assert_eq!(c.bearer_token(), Some("from-token"));
        let shown = format!("{c:?}");
        assert!(!shown.contains("from-token") && !shown.contains("from-pass"));
    }
}
