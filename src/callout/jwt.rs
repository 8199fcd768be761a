//! The NATS JWT codec: `base64url(header).base64url(claims).base64url(ed25519 signature)`.
//!
//! No JWT crate speaks the `ed25519-nkey` algorithm, so encoding and verification are built here
//! on `serde_json`, `base64` and `nkeys`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::collections::HashMap;

use nkeys::KeyPair;
use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512_256};

use super::wire::{JWT_ALGORITHM, JWT_HEADER, MAX_JWT_BYTES};

/// Why a NATS JWT could not be decoded or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Larger than the decoder accepts.
    #[error("jwt too large")]
    TooLarge,
    /// Not three dot-separated base64url parts.
    #[error("jwt does not have three parts")]
    NotThreeParts,
    /// A part is not valid base64url.
    #[error("jwt part is not base64url")]
    BadBase64,
    /// The header or claims are not the expected JSON.
    #[error("jwt json: {0}")]
    BadJson(String),
    /// The header names another algorithm.
    #[error("jwt algorithm is not ed25519-nkey")]
    WrongAlgorithm,
    /// `iss` is not a usable public nkey.
    #[error("jwt issuer is not a public nkey")]
    BadIssuerKey,
    /// The signature does not verify with the issuer's key.
    #[error("jwt signature does not verify")]
    BadSignature,
    /// Signing failed (the key pair has no seed).
    #[error("jwt signing failed")]
    Signing,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct IssuerOnly {
    iss: String,
}

/// Signs `claims` (which must carry `iss` = the key's public key) into a NATS JWT.
pub fn encode<T: Serialize>(claims: &T, key: &KeyPair) -> Result<String, JwtError> {
    let body = serde_json::to_vec(claims).map_err(|e| JwtError::BadJson(e.to_string()))?;
    let mut out = String::with_capacity(body.len() * 4 / 3 + 160);
    URL_SAFE_NO_PAD.encode_string(JWT_HEADER, &mut out);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(&body, &mut out);
    let sig = key.sign(out.as_bytes()).map_err(|_| JwtError::Signing)?;
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(sig, &mut out);
    Ok(out)
}

/// Decodes a NATS JWT and verifies its signature with the key named by its own `iss` claim.
///
/// The caller still has to check that `iss` is the key it expects.
pub fn decode_verified<T: DeserializeOwned>(token: &str) -> Result<T, JwtError> {
    let parts = split(token)?;
    let issuer: IssuerOnly =
        serde_json::from_slice(&parts.claims).map_err(|e| JwtError::BadJson(e.to_string()))?;
    let key = KeyPair::from_public_key(&issuer.iss).map_err(|_| JwtError::BadIssuerKey)?;
    key.verify(parts.signed.as_bytes(), &parts.sig)
        .map_err(|_| JwtError::BadSignature)?;
    serde_json::from_slice(&parts.claims).map_err(|e| JwtError::BadJson(e.to_string()))
}

/// Claims that name their issuer, so [`decode_verified_issued`] parses them only once.
pub trait Issued {
    /// The `iss` claim: the public nkey that must have signed the JWT.
    fn issuer(&self) -> &str;
}

/// [`decode_verified`] for claims that name their issuer, on the hot path: the claims are
/// parsed once, and the issuers' public keys are kept decoded (every request of one
/// nats-server is signed by the same key; decoding one costs a curve-point decompression).
pub fn decode_verified_issued<T: DeserializeOwned + Issued>(token: &str) -> Result<T, JwtError> {
    let parts = split(token)?;
    let claims: T =
        serde_json::from_slice(&parts.claims).map_err(|e| JwtError::BadJson(e.to_string()))?;
    let iss = claims.issuer();
    let verified = {
        let keys = ISSUER_KEYS.read();
        keys.get(iss)
            .map(|key| key.verify(parts.signed.as_bytes(), &parts.sig).is_ok())
    };
    let verified = match verified {
        Some(v) => v,
        None => {
            let key = KeyPair::from_public_key(iss).map_err(|_| JwtError::BadIssuerKey)?;
            let ok = key.verify(parts.signed.as_bytes(), &parts.sig).is_ok();
            // Only a key that verified is kept: junk signatures cannot churn the cache (a
            // request self-signed by a throwaway key still can; request.rs refuses it next,
            // and the bound keeps the cost at one decompression per such request).
            if ok {
                let mut keys = ISSUER_KEYS.write();
                if keys.len() >= MAX_ISSUER_KEYS {
                    // Servers restarted (each start makes a new key) or someone is sending
                    // junk: start again rather than track which keys are still in use.
                    keys.clear();
                }
                keys.insert(iss.to_string(), key);
            }
            ok
        }
    };
    if !verified {
        return Err(JwtError::BadSignature);
    }
    Ok(claims)
}

/// Issuer keys kept decoded by [`decode_verified_issued`]; far more than a cluster has servers.
const MAX_ISSUER_KEYS: usize = 64;

static ISSUER_KEYS: std::sync::LazyLock<RwLock<HashMap<String, KeyPair>>> =
    std::sync::LazyLock::new(|| RwLock::new(HashMap::new()));

/// A JWT's parts: the signed text, the decoded claims and the decoded signature.
struct Parts<'a> {
    signed: &'a str,
    claims: Vec<u8>,
    sig: Vec<u8>,
}

fn split(token: &str) -> Result<Parts<'_>, JwtError> {
    if token.len() > MAX_JWT_BYTES {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::NotThreeParts);
    };
    let header = URL_SAFE_NO_PAD.decode(h).map_err(|_| JwtError::BadBase64)?;
    let header: Header =
        serde_json::from_slice(&header).map_err(|e| JwtError::BadJson(e.to_string()))?;
    if header.alg != JWT_ALGORITHM {
        return Err(JwtError::WrongAlgorithm);
    }
    let claims = URL_SAFE_NO_PAD.decode(c).map_err(|_| JwtError::BadBase64)?;
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::BadBase64)?;
    // The signature covers the ASCII text `header.claims` exactly as received.
    Ok(Parts {
        signed: &token[..h.len() + 1 + c.len()],
        claims,
        sig,
    })
}

/// Registered claims that go into the `jti` hash, in the order nats-io/jwt hashes them.
#[derive(Serialize)]
struct HashedClaims<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    aud: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    exp: i64,
    #[serde(skip_serializing_if = "is_zero")]
    iat: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    iss: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    nbf: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    sub: &'a str,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// Registered claims common to every NATS JWT this service issues.
#[derive(Debug, Clone, Default)]
pub struct Registered<'a> {
    /// `aud`.
    pub aud: &'a str,
    /// `exp` (0 = none).
    pub exp: i64,
    /// `iat`.
    pub iat: i64,
    /// `iss`.
    pub iss: &'a str,
    /// `name`.
    pub name: &'a str,
    /// `sub`.
    pub sub: &'a str,
}

/// The `jti` of a JWT: base32 (no padding) of SHA-512/256 over its registered claims.
pub fn jti(r: &Registered<'_>) -> String {
    let hashed = HashedClaims {
        aud: r.aud,
        exp: r.exp,
        iat: r.iat,
        iss: r.iss,
        name: r.name,
        nbf: 0,
        sub: r.sub,
    };
    // Serializing plain strings and integers cannot fail.
    let json = serde_json::to_vec(&hashed).unwrap_or_default();
    let digest = Sha512_256::digest(&json);
    data_encoding::BASE32_NOPAD.encode(&digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn round_trip_verifies_with_the_issuer_key() {
        let account = KeyPair::new_account();
        let claims = json!({"iss": account.public_key(), "sub": "x", "nats": {"type": "user", "version": 2}});
        let token = encode(&claims, &account).unwrap();
        let back: Value = decode_verified(&token).unwrap();
        assert_eq!(back, claims);
        let header = URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap();
        assert_eq!(header, JWT_HEADER.as_bytes());
    }

    #[test]
    fn claims_altered_after_signing_are_refused() {
        let account = KeyPair::new_account();
        let token = encode(&json!({"iss": account.public_key(), "sub": "a"}), &account).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims =
            URL_SAFE_NO_PAD.encode(json!({"iss": account.public_key(), "sub": "b"}).to_string());
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(
            decode_verified::<Value>(&forged).unwrap_err(),
            JwtError::BadSignature
        );
    }

    #[test]
    fn a_token_claiming_another_issuer_is_refused() {
        let signer = KeyPair::new_account();
        let other = KeyPair::new_account();
        let token = encode(&json!({"iss": other.public_key()}), &signer).unwrap();
        assert_eq!(
            decode_verified::<Value>(&token).unwrap_err(),
            JwtError::BadSignature
        );
    }

    #[test]
    fn malformed_tokens_are_refused_with_their_cause() {
        assert_eq!(
            decode_verified::<Value>("a.b").unwrap_err(),
            JwtError::NotThreeParts
        );
        assert_eq!(
            decode_verified::<Value>("a.b.c.d").unwrap_err(),
            JwtError::NotThreeParts
        );
        assert_eq!(
            decode_verified::<Value>("!!.b.c").unwrap_err(),
            JwtError::BadBase64
        );
        let other_alg = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"HS256"}"#),
            URL_SAFE_NO_PAD.encode("{}"),
            URL_SAFE_NO_PAD.encode("sig")
        );
        assert_eq!(
            decode_verified::<Value>(&other_alg).unwrap_err(),
            JwtError::WrongAlgorithm
        );
        let user_iss = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(JWT_HEADER),
            URL_SAFE_NO_PAD.encode(r#"{"iss":"not-a-key"}"#),
            URL_SAFE_NO_PAD.encode("sig")
        );
        assert_eq!(
            decode_verified::<Value>(&user_iss).unwrap_err(),
            JwtError::BadIssuerKey
        );
        let huge = "a".repeat(MAX_JWT_BYTES + 1);
        assert_eq!(
            decode_verified::<Value>(&huge).unwrap_err(),
            JwtError::TooLarge
        );
    }

    #[test]
    fn each_error_names_its_cause_in_the_log() {
        let cases = [
            (JwtError::TooLarge, "jwt too large"),
            (JwtError::NotThreeParts, "jwt does not have three parts"),
            (JwtError::BadBase64, "jwt part is not base64url"),
            (
                JwtError::BadJson("missing field `iss`".into()),
                "jwt json: missing field `iss`",
            ),
            (
                JwtError::WrongAlgorithm,
                "jwt algorithm is not ed25519-nkey",
            ),
            (JwtError::BadIssuerKey, "jwt issuer is not a public nkey"),
            (JwtError::BadSignature, "jwt signature does not verify"),
            (JwtError::Signing, "jwt signing failed"),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message, "{error:?}");
        }
    }

    #[test]
    fn jti_is_base32_of_sha512_256_and_depends_on_every_registered_claim() {
        let base = Registered {
            aud: "APP",
            exp: 10,
            iat: 5,
            iss: "AISS",
            name: "n",
            sub: "UX",
        };
        let a = jti(&base);
        assert_eq!(a.len(), 52, "32 bytes in unpadded base32");
        assert!(a
            .chars()
            .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c)));
        let changed = Registered {
            sub: "UY",
            ..base.clone()
        };
        assert_ne!(a, jti(&changed));
        assert_eq!(a, jti(&base));
    }
}
