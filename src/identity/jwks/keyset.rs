//! One JWKS document in, the usable verification keys out, each skipped key logged with why.

use std::collections::HashMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use log::warn;
use ring::signature::{
    RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED,
    RSA_PKCS1_2048_8192_SHA256,
};
use serde::Deserialize;

use super::JwksError;
use crate::identity::printable;

/// Smallest RSA modulus accepted; weaker keys are skipped when the set is loaded.
const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted. `ring` would verify up to 8192 bits, but a larger modulus makes
/// every check of an unauthenticated token dearer and no API server uses one, so such a key is
/// reported once at load time instead.
const MAX_RSA_BITS: usize = 4096;
/// `ring` refuses public exponents above 2^33 - 1, so such a key would fail every signature check.
const MAX_RSA_EXPONENT: u64 = (1 << 33) - 1;

/// A signature algorithm this service accepts for service-account tokens.
///
/// Each key type verifies exactly one algorithm, as in Kubernetes: RSA keys sign RS256 whatever
/// their size, P-256 keys ES256 and P-384 keys ES384.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
}

impl SigningAlgorithm {
    /// The algorithm named by a JWS `alg` value, if it is on the allow-list.
    pub fn from_name(name: &str) -> Option<SigningAlgorithm> {
        match name {
            "RS256" => Some(SigningAlgorithm::Rs256),
            "ES256" => Some(SigningAlgorithm::Es256),
            "ES384" => Some(SigningAlgorithm::Es384),
            _ => None,
        }
    }

    /// The JWS `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            SigningAlgorithm::Rs256 => "RS256",
            SigningAlgorithm::Es256 => "ES256",
            SigningAlgorithm::Es384 => "ES384",
        }
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type of a verification key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// An RSA key with a modulus of this many bits.
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
    /// An EC key on P-256.
    EcP256,
    /// An EC key on P-384.
    EcP384,
}

impl KeyType {
    /// How log lines name this type: `RSA`, `P-256` or `P-384`.
    fn name(self) -> &'static str {
        match self {
            KeyType::Rsa { .. } => "RSA",
            KeyType::EcP256 => "P-256",
            KeyType::EcP384 => "P-384",
        }
    }

    /// The only algorithm a key of this type verifies.
    pub fn algorithm(self) -> SigningAlgorithm {
        match self {
            KeyType::Rsa { .. } => SigningAlgorithm::Rs256,
            KeyType::EcP256 => SigningAlgorithm::Es256,
            KeyType::EcP384 => SigningAlgorithm::Es384,
        }
    }
}

/// The public part of a key, in the forms `ring` verifies with.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PublicKey {
    /// RSA modulus and public exponent, big-endian without leading zeros (`ring` refuses them).
    Rsa { n: Box<[u8]>, e: Box<[u8]> },
    /// An uncompressed SEC1 point on P-256: `0x04 || x || y`.
    P256(Box<[u8; 65]>),
    /// An uncompressed SEC1 point on P-384: `0x04 || x || y`.
    P384(Box<[u8; 97]>),
}

/// One public key from the JWKS, parsed and checked once when the set is loaded.
#[derive(Debug)]
pub struct VerificationKey {
    kid: Option<String>,
    key_type: KeyType,
    public: PublicKey,
}

impl VerificationKey {
    /// The key id (`kid`), if the JWK had one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The type of the key.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The only algorithm this key verifies.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.key_type.algorithm()
    }

    /// Whether `signature` is this key's valid `alg` signature of `signing_input` (the token's
    /// `header.payload`). A signature by any other algorithm than the key's own never verifies;
    /// JWS ECDSA signatures are the fixed-size `r || s`, not DER.
    pub fn verify(&self, alg: SigningAlgorithm, signing_input: &[u8], signature: &[u8]) -> bool {
        if alg != self.algorithm() {
            return false;
        }
        let verified = match &self.public {
            PublicKey::Rsa { n, e } => RsaPublicKeyComponents {
                n: &n[..],
                e: &e[..],
            }
            .verify(&RSA_PKCS1_2048_8192_SHA256, signing_input, signature),
            PublicKey::P256(point) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point[..])
                .verify(signing_input, signature),
            PublicKey::P384(point) => UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &point[..])
                .verify(signing_input, signature),
        };
        verified.is_ok()
    }
}

/// A loaded key set: the usable keys of one JWKS document, indexed by key id.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<VerificationKey>,
    by_kid: HashMap<String, usize>,
}

impl KeySet {
    /// A set with no keys: what the store holds before its first successful load.
    pub fn empty() -> KeySet {
        KeySet::default()
    }

    /// Parses a JWKS document, skipping (with a warning naming the key id and why) every key that
    /// is malformed or of a type this service does not verify; a set with no usable key is an error.
    pub fn parse(json: &[u8]) -> Result<KeySet, JwksError> {
        let doc: RawJwks = serde_json::from_slice(json).map_err(|e| JwksError::NotAJwks {
            detail: json_error_position(&e),
        })?;
        let mut set = KeySet::default();
        let mut skipped = 0;
        for (index, value) in doc.keys.into_iter().enumerate() {
            let label = key_label(&value, index);
            if let Err(why) = set.add(value) {
                warn!("jwks: skipping key {label}: {why}");
                skipped += 1;
            }
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKeys { skipped });
        }
        Ok(set)
    }

    /// Parses one JWK of the document and adds it, unless it is unusable or an earlier key has
    /// its key id (the first one wins).
    fn add(&mut self, jwk: serde_json::Value) -> Result<(), KeyRejection> {
        let raw: RawJwk =
            serde_json::from_value(jwk).map_err(|_| KeyRejection::FieldOfWrongType)?;
        let key = parse_key(raw)?;
        if let Some(kid) = &key.kid {
            if self.by_kid.contains_key(kid) {
                return Err(KeyRejection::DuplicateKid);
            }
            self.by_kid.insert(kid.clone(), self.keys.len());
        }
        self.keys.push(key);
        Ok(())
    }

    /// The key with this id.
    pub fn get(&self, kid: &str) -> Option<&VerificationKey> {
        self.by_kid.get(kid).and_then(|&i| self.keys.get(i))
    }

    /// Every key, in document order.
    pub fn iter(&self) -> impl Iterator<Item = &VerificationKey> {
        self.keys.iter()
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set has no key (nothing loaded yet).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids, for log lines.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().filter_map(|k| k.kid()).collect()
    }
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    key_ops: Option<Vec<String>>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    d: Option<serde::de::IgnoredAny>,
}

/// Why one key of a JWKS document is not used: the end of its `skipping key` log line.
/// Attacker-supplied values in fields are shortened and printable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum KeyRejection {
    /// A member has a JSON type other than the JWK format gives it.
    #[error("a field has the wrong type")]
    FieldOfWrongType,
    /// An earlier key in the document has the same key id.
    #[error("its key id is used by an earlier key")]
    DuplicateKid,
    /// `use` is present and is not `sig`: the key is published for encryption.
    #[error("use is {usage:?}, not \"sig\"")]
    NotForSignatures { usage: String },
    /// `key_ops` is present and does not allow verification.
    #[error("key_ops does not include \"verify\"")]
    NotForVerifying,
    /// A member the key type needs is absent.
    #[error("no {member}")]
    MissingMember { member: &'static str },
    /// A key component is not unpadded base64url.
    #[error("{member} is not base64url")]
    NotBase64Url { member: &'static str },
    /// `kty` is neither RSA nor EC (symmetric keys, OKP, …).
    #[error("unsupported key type {kty:?}")]
    UnsupportedKeyType { kty: String },
    /// `alg` names an algorithm other than the only one the key's type verifies.
    #[error("alg {alg:?} does not match a {} key", .key_type.name())]
    AlgorithmMismatch { alg: String, key_type: KeyType },
    /// The RSA modulus is weaker or larger than accepted.
    #[error("RSA modulus of {bits} bits is outside {MIN_RSA_BITS}..={MAX_RSA_BITS}")]
    RsaModulusSize { bits: usize },
    /// The RSA public exponent does not fit in 64 bits.
    #[error("RSA exponent is too large")]
    RsaExponentTooLarge,
    /// The RSA public exponent is even, below 3 or above what the verifier accepts.
    #[error("RSA exponent is not an odd number in 3..2^33")]
    RsaExponentOutOfRange,
    /// `crv` is neither P-256 nor P-384.
    #[error("unsupported curve {crv:?}")]
    UnsupportedCurve { crv: String },
    /// The EC coordinates are not the curve's size.
    #[error("{} coordinates must be {len} bytes each", .curve.name())]
    CoordinateLength { curve: KeyType, len: usize },
    /// The EC point is not on its curve.
    #[error("the point is not on {}", .curve.name())]
    PointNotOnCurve { curve: KeyType },
}

/// How a key is named in log lines: its key id when it has a readable one, else its position.
fn key_label(value: &serde_json::Value, index: usize) -> String {
    match value.get("kid").and_then(|k| k.as_str()) {
        Some(kid) => format!("{:?}", printable(kid, 80)),
        None => format!("#{index} (no kid)"),
    }
}

fn parse_key(raw: RawJwk) -> Result<VerificationKey, KeyRejection> {
    // Only signature keys: a key published for encryption must not verify tokens.
    if let Some(usage) = raw.use_.as_deref() {
        if usage != "sig" {
            return Err(KeyRejection::NotForSignatures {
                usage: printable(usage, 16),
            });
        }
    }
    if let Some(ops) = &raw.key_ops {
        if !ops.iter().any(|op| op == "verify") {
            return Err(KeyRejection::NotForVerifying);
        }
    }
    if raw.d.is_some() {
        // Not refused (the public part is all we use), but the publisher is leaking a private key.
        warn!("jwks: a key in the set contains private key material; only its public part is used");
    }
    let kty = raw
        .kty
        .as_deref()
        .ok_or(KeyRejection::MissingMember { member: "kty" })?;
    let (key_type, public) = match kty {
        "RSA" => parse_rsa(&raw)?,
        "EC" => parse_ec(&raw)?,
        other => {
            return Err(KeyRejection::UnsupportedKeyType {
                kty: printable(other, 16),
            })
        }
    };
    // A JWK that names an algorithm must name the one its type verifies: an RSA JWK claiming
    // ES256 (or a P-256 key claiming ES384) is inconsistent and is not used at all.
    if let Some(alg) = raw.alg.as_deref() {
        if alg != key_type.algorithm().name() {
            return Err(KeyRejection::AlgorithmMismatch {
                alg: printable(alg, 16),
                key_type,
            });
        }
    }
    Ok(VerificationKey {
        kid: raw.kid,
        key_type,
        public,
    })
}

/// The bytes of a base64url key component (`n`, `e`, `x`, `y`).
fn decode_component(value: Option<&String>, member: &'static str) -> Result<Vec<u8>, KeyRejection> {
    let value = value.ok_or(KeyRejection::MissingMember { member })?;
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| KeyRejection::NotBase64Url { member })
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn parse_rsa(raw: &RawJwk) -> Result<(KeyType, PublicKey), KeyRejection> {
    let n = decode_component(raw.n.as_ref(), "n")?;
    let e = decode_component(raw.e.as_ref(), "e")?;
    let modulus = strip_leading_zeros(&n);
    let bits = match modulus.first() {
        Some(&top) => modulus.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    };
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(KeyRejection::RsaModulusSize { bits });
    }
    let exponent = strip_leading_zeros(&e);
    if exponent.len() > 8 {
        return Err(KeyRejection::RsaExponentTooLarge);
    }
    let exponent_value = exponent
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if exponent_value < 3 || exponent_value % 2 == 0 || exponent_value > MAX_RSA_EXPONENT {
        return Err(KeyRejection::RsaExponentOutOfRange);
    }
    // These are the rules `ring` applies to every verification (2048 bits or more, an odd
    // exponent in 3..2^33, no leading zeros), so a key kept here is one it will use.
    Ok((
        KeyType::Rsa { bits },
        PublicKey::Rsa {
            n: modulus.into(),
            e: exponent.into(),
        },
    ))
}

fn parse_ec(raw: &RawJwk) -> Result<(KeyType, PublicKey), KeyRejection> {
    let crv = raw
        .crv
        .as_deref()
        .ok_or(KeyRejection::MissingMember { member: "crv" })?;
    let (key_type, coordinate_len) = match crv {
        "P-256" => (KeyType::EcP256, 32),
        "P-384" => (KeyType::EcP384, 48),
        other => {
            return Err(KeyRejection::UnsupportedCurve {
                crv: printable(other, 16),
            })
        }
    };
    let x = decode_component(raw.x.as_ref(), "x")?;
    let y = decode_component(raw.y.as_ref(), "y")?;
    if x.len() != coordinate_len || y.len() != coordinate_len {
        return Err(KeyRejection::CoordinateLength {
            curve: key_type,
            len: coordinate_len,
        });
    }
    // `ring` checks the point on every verification and reports nothing but failure, so a point
    // that is not on the curve is refused here, once, with a reason in the log.
    let public = if key_type == KeyType::EcP256 {
        sec1_point::<65>(&x, &y)
            .filter(|point| p256::PublicKey::from_sec1_bytes(point).is_ok())
            .map(|point| PublicKey::P256(Box::new(point)))
    } else {
        sec1_point::<97>(&x, &y)
            .filter(|point| p384::PublicKey::from_sec1_bytes(point).is_ok())
            .map(|point| PublicKey::P384(Box::new(point)))
    }
    .ok_or(KeyRejection::PointNotOnCurve { curve: key_type })?;
    Ok((key_type, public))
}

/// The uncompressed SEC1 point `0x04 || x || y` of `N` bytes, if the coordinates fill it exactly.
fn sec1_point<const N: usize>(x: &[u8], y: &[u8]) -> Option<[u8; N]> {
    let mut point = [0u8; N];
    if 1 + x.len() + y.len() != N || x.len() != y.len() {
        return None;
    }
    point[0] = 0x04;
    point[1..1 + x.len()].copy_from_slice(x);
    point[1 + x.len()..].copy_from_slice(y);
    Some(point)
}

/// Position of a JSON error, without any of the document's content.
fn json_error_position(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected structure",
        serde_json::error::Category::Eof => "unexpected end",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::jwks::testing::jwk_set;
    use crate::identity::token::testkit::{jwks, TestKey};

    #[test]
    fn rsa_and_ec_keys_are_parsed_with_their_types() {
        let set = KeySet::parse(&jwks(&[
            &TestKey::rsa("r"),
            &TestKey::es256("e1"),
            &TestKey::es384("e2"),
        ]))
        .unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(
            set.get("r").unwrap().key_type(),
            KeyType::Rsa { bits: 2048 }
        );
        assert_eq!(set.get("e1").unwrap().algorithm(), SigningAlgorithm::Es256);
        assert_eq!(set.get("e2").unwrap().algorithm(), SigningAlgorithm::Es384);
        assert!(set.get("nope").is_none());
    }

    #[test]
    fn key_for_encryption_is_skipped() {
        let mut enc = TestKey::es256("enc").jwk();
        enc["use"] = "enc".into();
        let set = KeySet::parse(&jwk_set(&[enc, TestKey::es256("sig").jwk()])).unwrap();
        assert_eq!(set.kids(), vec!["sig"]);
    }

    #[test]
    fn key_without_use_is_accepted() {
        let mut jwk = TestKey::es256("a").jwk();
        jwk.as_object_mut().unwrap().remove("use");
        assert_eq!(KeySet::parse(&jwk_set(&[jwk])).unwrap().len(), 1);
    }

    #[test]
    fn key_ops_without_verify_is_skipped() {
        let mut jwk = TestKey::es256("a").jwk();
        jwk["key_ops"] = serde_json::json!(["sign"]);
        let err = KeySet::parse(&jwk_set(&[jwk])).unwrap_err();
        assert!(matches!(err, JwksError::NoUsableKeys { skipped: 1 }));
    }

    #[test]
    fn symmetric_and_unknown_key_types_are_skipped() {
        let oct = serde_json::json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"});
        let okp = serde_json::json!({"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AAAA"});
        let set = KeySet::parse(&jwk_set(&[oct, okp, TestKey::es256("ok").jwk()])).unwrap();
        assert_eq!(set.kids(), vec!["ok"]);
    }

    #[test]
    fn unsupported_curve_is_skipped() {
        let mut jwk = TestKey::es256("p521").jwk();
        jwk["crv"] = "P-521".into();
        assert!(KeySet::parse(&jwk_set(&[jwk])).is_err());
    }

    #[test]
    fn ec_point_off_the_curve_is_skipped() {
        let mut jwk = TestKey::es256("bad").jwk();
        jwk["y"] = URL_SAFE_NO_PAD.encode([7u8; 32]).into();
        assert!(matches!(
            KeySet::parse(&jwk_set(&[jwk])),
            Err(JwksError::NoUsableKeys { skipped: 1 })
        ));
    }

    #[test]
    fn ec_coordinates_of_the_wrong_length_are_skipped() {
        let mut jwk = TestKey::es256("short").jwk();
        jwk["x"] = URL_SAFE_NO_PAD.encode([1u8; 31]).into();
        assert!(KeySet::parse(&jwk_set(&[jwk])).is_err());
    }

    #[test]
    fn weak_rsa_key_is_skipped() {
        let mut n = vec![0xC5u8; 128]; // 1024 bits
        n[127] |= 1;
        let jwk = serde_json::json!({"kty": "RSA", "kid": "weak", "n": URL_SAFE_NO_PAD.encode(&n), "e": "AQAB"});
        assert!(KeySet::parse(&jwk_set(&[jwk])).is_err());
    }

    /// A real 1024-bit key and a valid RS256 signature by it.
    fn rsa_1024() -> (serde_json::Value, PublicKey, Vec<u8>) {
        use rsa::pkcs1v15::SigningKey;
        use rsa::signature::{SignatureEncoding, Signer};
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 1024).unwrap();
        let (n, e) = (key.n().to_bytes_be(), key.e().to_bytes_be());
        let jwk = serde_json::json!({"kty": "RSA", "kid": "weak", "n": URL_SAFE_NO_PAD.encode(&n), "e": URL_SAFE_NO_PAD.encode(&e)});
        let signature = SigningKey::<sha2::Sha256>::new(key).sign(b"a.b").to_vec();
        let public = PublicKey::Rsa {
            n: n.into(),
            e: e.into(),
        };
        (jwk, public, signature)
    }

    /// Rule: a 1024-bit key is refused when the set is loaded, and `ring` would not verify with
    /// one either.
    #[test]
    fn real_1024_bit_rsa_key_is_skipped_and_never_verifies() {
        let (jwk, public, signature) = rsa_1024();
        let raw: RawJwk = serde_json::from_value(jwk.clone()).unwrap();
        assert_eq!(
            parse_key(raw).unwrap_err(),
            KeyRejection::RsaModulusSize { bits: 1024 }
        );
        assert!(matches!(
            KeySet::parse(&jwk_set(&[jwk])),
            Err(JwksError::NoUsableKeys { skipped: 1 })
        ));
        let key = VerificationKey {
            kid: None,
            key_type: KeyType::Rsa { bits: 1024 },
            public,
        };
        assert!(!key.verify(SigningAlgorithm::Rs256, b"a.b", &signature));
    }

    /// Rule: a key verifies only its own algorithm, whatever the caller asks.
    #[test]
    fn a_key_verifies_no_other_algorithm_than_its_own() {
        use p256::ecdsa::signature::Signer;
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let signature: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(&secret).sign(b"a.b");
        let jwk = serde_json::to_value(secret.public_key().to_jwk()).unwrap();
        let set = KeySet::parse(&jwk_set(&[jwk])).unwrap();
        let key = set.iter().next().unwrap();
        let signature = signature.to_bytes();
        assert!(key.verify(SigningAlgorithm::Es256, b"a.b", &signature));
        assert!(!key.verify(SigningAlgorithm::Es256, b"a.c", &signature));
        assert!(!key.verify(SigningAlgorithm::Es384, b"a.b", &signature));
        assert!(!key.verify(SigningAlgorithm::Rs256, b"a.b", &signature));
    }

    #[test]
    fn rsa_key_with_even_exponent_is_skipped() {
        let mut jwk = TestKey::rsa("r").jwk();
        jwk["e"] = "AQAA".into(); // 65536
        assert!(KeySet::parse(&jwk_set(&[jwk])).is_err());
    }

    #[test]
    fn malformed_base64_is_skipped() {
        let mut jwk = TestKey::rsa("r").jwk();
        jwk["n"] = "not base64!".into();
        assert!(KeySet::parse(&jwk_set(&[jwk])).is_err());
    }

    #[test]
    fn key_whose_alg_does_not_match_its_type_is_skipped() {
        let mut rsa_claiming_es256 = TestKey::rsa("r").jwk();
        rsa_claiming_es256["alg"] = "ES256".into();
        let mut p256_claiming_es384 = TestKey::es256("e").jwk();
        p256_claiming_es384["alg"] = "ES384".into();
        let mut rsa_pss = TestKey::rsa("pss").jwk();
        rsa_pss["alg"] = "PS256".into();
        let set = KeySet::parse(&jwk_set(&[
            rsa_claiming_es256,
            p256_claiming_es384,
            rsa_pss,
            TestKey::es256("good").jwk(),
        ]))
        .unwrap();
        assert_eq!(set.kids(), vec!["good"]);
    }

    #[test]
    fn key_with_a_field_of_the_wrong_type_is_skipped() {
        let bad = serde_json::json!({"kty": "EC", "kid": "k", "crv": 256});
        let set = KeySet::parse(&jwk_set(&[bad, TestKey::es256("ok").jwk()])).unwrap();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn duplicate_kid_keeps_the_first_key() {
        let first = TestKey::es256("same");
        let second = TestKey::rsa("same");
        let set = KeySet::parse(&jwks(&[&first, &second])).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.get("same").unwrap().key_type(), KeyType::EcP256);
    }

    #[test]
    fn empty_key_set_is_a_failed_load() {
        assert!(matches!(
            KeySet::parse(br#"{"keys":[]}"#),
            Err(JwksError::NoUsableKeys { skipped: 0 })
        ));
    }

    #[test]
    fn document_that_is_not_a_jwks_is_refused_without_echoing_it() {
        for doc in [&b"not json"[..], br#"{"keys":"secret-value"}"#, br#"[1,2]"#] {
            let err = KeySet::parse(doc).unwrap_err();
            assert!(matches!(err, JwksError::NotAJwks { .. }));
            assert!(!err.to_string().contains("secret-value"), "{err}");
        }
    }

    #[test]
    fn reasons_for_skipping_a_key_read_as_documented() {
        let b64 = |bytes: &[u8]| serde_json::Value::from(URL_SAFE_NO_PAD.encode(bytes));
        let rsa = TestKey::rsa("r").jwk();
        let ec = TestKey::es256("e").jwk();
        let with = |base: &serde_json::Value, field: &str, value: serde_json::Value| {
            let mut jwk = base.clone();
            jwk[field] = value;
            jwk
        };
        let without = |base: &serde_json::Value, field: &str| {
            let mut jwk = base.clone();
            jwk.as_object_mut().unwrap().remove(field);
            jwk
        };
        let mut weak = vec![0xC5u8; 128];
        weak[127] |= 1;
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (with(&ec, "use", "enc".into()), r#"use is "enc", not "sig""#),
            (
                with(&ec, "key_ops", serde_json::json!(["sign"])),
                r#"key_ops does not include "verify""#,
            ),
            (without(&ec, "kty"), "no kty"),
            (
                with(&ec, "kty", "oct".into()),
                r#"unsupported key type "oct""#,
            ),
            (
                with(&rsa, "alg", "ES256".into()),
                r#"alg "ES256" does not match a RSA key"#,
            ),
            (
                with(&ec, "alg", "ES384".into()),
                r#"alg "ES384" does not match a P-256 key"#,
            ),
            (without(&rsa, "n"), "no n"),
            (with(&rsa, "e", "not base64!".into()), "e is not base64url"),
            (
                with(&rsa, "n", b64(&weak)),
                "RSA modulus of 1024 bits is outside 2048..=4096",
            ),
            (with(&rsa, "e", b64(&[1; 9])), "RSA exponent is too large"),
            (
                with(&rsa, "e", "AQAA".into()),
                "RSA exponent is not an odd number in 3..2^33",
            ),
            (without(&ec, "crv"), "no crv"),
            (
                with(&ec, "crv", "P-521".into()),
                r#"unsupported curve "P-521""#,
            ),
            (
                with(&ec, "x", b64(&[1; 31])),
                "P-256 coordinates must be 32 bytes each",
            ),
            (with(&ec, "y", b64(&[7; 32])), "the point is not on P-256"),
        ];
        for (jwk, want) in cases {
            let raw: RawJwk = serde_json::from_value(jwk).unwrap();
            assert_eq!(parse_key(raw).unwrap_err().to_string(), want);
        }
        let mut set = KeySet::empty();
        set.add(ec.clone()).unwrap();
        let cases = [
            (serde_json::json!({"kty": 1}), "a field has the wrong type"),
            (ec, "its key id is used by an earlier key"),
        ];
        for (jwk, want) in cases {
            assert_eq!(set.add(jwk).unwrap_err().to_string(), want);
        }
    }
}
