//! Service-account token minting for tests: real RSA and ECDSA keys, Kubernetes key ids, the claim
//! shapes of a real cluster (kubernetes-facts.md §1), and deliberately hostile variants.
//!
//! Kubernetes signs with go-jose, whose header is exactly `{"alg":..,"kid":..}` (no `typ`), so the
//! compact form is assembled here and only the signature itself is computed by `jsonwebtoken`
//! (from the PEM private key).

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The issuer of kubeadm, kind, minikube and k3s clusters.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The audience test tokens carry unless told otherwise.
pub const DEFAULT_AUDIENCE: &str = "nats";
/// The issuer of legacy secret-based tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// Lifetime of a default token, as a projected volume with `expirationSeconds: 600` gives.
pub const DEFAULT_LIFETIME_SECS: i64 = 600;
/// `warnafter` offset of an extended token (`WarnOnlyBoundTokenExpirationSeconds`).
pub const WARN_ONLY_SECS: i64 = 3607;
/// Lifetime of an extended in-pod token (`ExpirationExtensionSeconds`).
pub const EXTENDED_LIFETIME_SECS: i64 = 24 * 365 * 3600;

/// Size of the pool of pre-generated RSA keys (2048-bit generation is slow in debug builds).
const RSA_POOL_SIZE: usize = 8;
static RSA_POOL: [OnceLock<SigningKey>; RSA_POOL_SIZE] = [const { OnceLock::new() }; RSA_POOL_SIZE];

/// A private signing key with everything a test needs about it: the algorithm Kubernetes would use
/// with it, its Kubernetes key id, PEM forms and its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    algorithm: Algorithm,
    kid: String,
    private_pem: String,
    public_pem: String,
    /// `kty` plus `n`/`e` or `crv`/`x`/`y`.
    public_params: Map<String, Value>,
}

impl SigningKey {
    /// The first pooled 2048-bit RSA key (RS256). Same key on every call within one test binary.
    pub fn rs256() -> Self {
        Self::rs256_n(0)
    }

    /// Pooled 2048-bit RSA key number `i` (`i < 8`); distinct `i` give distinct keys.
    pub fn rs256_n(i: usize) -> Self {
        assert!(
            i < RSA_POOL_SIZE,
            "rs256_n({i}): the pool holds {RSA_POOL_SIZE} keys"
        );
        RSA_POOL[i].get_or_init(Self::rs256_fresh).clone()
    }

    /// A freshly generated 2048-bit RSA key (slow: prefer [`SigningKey::rs256_n`]).
    pub fn rs256_fresh() -> Self {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        use rsa::traits::PublicKeyParts;

        let private = rsa::RsaPrivateKey::new(&mut OsRng, 2048).expect("generate an RSA key");
        let public = private.to_public_key();
        let spki = public
            .to_public_key_der()
            .expect("encode the RSA public key");
        let mut params = Map::new();
        params.insert("kty".into(), json!("RSA"));
        params.insert("n".into(), json!(b64url(&public.n().to_bytes_be())));
        params.insert("e".into(), json!(b64url(&public.e().to_bytes_be())));
        SigningKey {
            algorithm: Algorithm::RS256,
            kid: kid_for_spki(spki.as_bytes()),
            private_pem: private
                .to_pkcs8_pem(LineEnding::LF)
                .expect("encode the RSA private key")
                .to_string(),
            public_pem: public
                .to_public_key_pem(LineEnding::LF)
                .expect("encode the RSA public key"),
            public_params: params,
        }
    }

    /// A fresh P-256 key (ES256).
    pub fn es256() -> Self {
        use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

        let secret = p256::SecretKey::random(&mut OsRng);
        let public = secret.public_key();
        let spki = public
            .to_public_key_der()
            .expect("encode the P-256 public key");
        let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&public, false);
        let (x, y) = (point.x().expect("x"), point.y().expect("y"));
        SigningKey {
            algorithm: Algorithm::ES256,
            kid: kid_for_spki(spki.as_bytes()),
            private_pem: secret
                .to_pkcs8_pem(LineEnding::LF)
                .expect("encode the P-256 private key")
                .to_string(),
            public_pem: public
                .to_public_key_pem(LineEnding::LF)
                .expect("encode the P-256 public key"),
            public_params: ec_params("P-256", x, y),
        }
    }

    /// A fresh P-384 key (ES384). The `p384` crate is not a direct dependency, so the PKCS#8
    /// document is assembled here and the public point is derived through `jsonwebtoken`.
    pub fn es384() -> Self {
        let mut scalar = [0u8; 48];
        OsRng.fill_bytes(&mut scalar);
        // The group order starts with 0xff..: a first byte below 0xff keeps the scalar in range,
        // and a set low bit keeps it non-zero.
        scalar[0] %= 0xff;
        scalar[47] |= 1;
        let bare = p384_pkcs8(&scalar, None);
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(
            &EncodingKey::from_ec_der(&bare),
            Algorithm::ES384,
        )
        .expect("derive the P-384 public key");
        let jwk = serde_json::to_value(jwk).expect("serialize the P-384 jwk");
        let x = b64url_decode(jwk["x"].as_str().expect("x"));
        let y = b64url_decode(jwk["y"].as_str().expect("y"));
        let mut point = vec![0x04];
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        let spki = der(
            0x30,
            &[
                der(0x30, &[OID_EC_PUBLIC_KEY, OID_SECP384R1].concat()),
                der(0x03, &[&[0u8][..], &point].concat()),
            ]
            .concat(),
        );
        SigningKey {
            algorithm: Algorithm::ES384,
            kid: kid_for_spki(&spki),
            private_pem: pem("PRIVATE KEY", &p384_pkcs8(&scalar, Some(&point))),
            public_pem: pem("PUBLIC KEY", &spki),
            public_params: ec_params("P-384", &x, &y),
        }
    }

    /// The algorithm Kubernetes uses with this key (RS256 for any RSA key, ESnnn by curve).
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The algorithm's JOSE name, e.g. `"RS256"`.
    pub fn alg_name(&self) -> &'static str {
        alg_name(self.algorithm)
    }

    /// `base64url_nopad(SHA-256(PKIX DER of the public key))`, as `keyIDFromPublicKey` computes it.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// PKCS#8 PEM of the private key.
    pub fn private_key_pem(&self) -> &str {
        &self.private_pem
    }

    /// PKIX (SubjectPublicKeyInfo) PEM of the public key: what `--service-account-key-file` holds.
    pub fn public_key_pem(&self) -> &str {
        &self.public_pem
    }

    /// The public key as a JWK, the way `/openid/v1/jwks` lists it.
    pub fn jwk(&self) -> Value {
        let mut jwk = self.public_params.clone();
        jwk.insert("use".into(), json!("sig"));
        jwk.insert("kid".into(), json!(self.kid));
        jwk.insert("alg".into(), json!(self.alg_name()));
        Value::Object(jwk)
    }

    /// A `jsonwebtoken` signing key made from the PEM private key.
    pub fn encoding_key(&self) -> EncodingKey {
        let pem = self.private_pem.as_bytes();
        match self.algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
            _ => EncodingKey::from_ec_pem(pem),
        }
        .expect("load the private key PEM")
    }

    /// A `jsonwebtoken` verification key made from the PEM public key.
    pub fn decoding_key(&self) -> DecodingKey {
        let pem = self.public_pem.as_bytes();
        match self.algorithm {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
            _ => DecodingKey::from_ec_pem(pem),
        }
        .expect("load the public key PEM")
    }
}

/// Shows the algorithm and key id only, never the private key.
impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg_name())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A JWK set (`{"keys":[...]}`) listing the public halves of `keys`, in order.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}

/// A random version-4 UUID in its usual textual form (the service's own generator).
pub fn random_uuid() -> String {
    nats_k8s_oidc_callout::identity::dev::random_uuid().expect("os randomness")
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// How the `aud` claim is written.
#[derive(Clone, Debug)]
enum Audience {
    /// A JSON array, as real tokens always have.
    List(Vec<String>),
    /// A plain string (allowed by RFC 7519).
    Single(String),
    Absent,
}

/// Which `kid` goes into the header.
#[derive(Clone, Debug)]
enum KidChoice {
    FromKey,
    Absent,
    Fixed(String),
}

/// An object a token is bound to (`pod`, `secret` or `node` in the `kubernetes.io` claim).
#[derive(Clone, Debug)]
struct BoundObject {
    name: String,
    uid: String,
}

impl BoundObject {
    fn to_json(&self) -> Value {
        json!({ "name": self.name, "uid": self.uid })
    }
}

/// Builds the claims of a projected service-account token and signs them.
///
/// Defaults: `iss` [`DEFAULT_ISSUER`], `aud` `["nats"]`, `iat` = `nbf` = now, `exp` = `iat` + 600,
/// a random `jti`, `sub` `system:serviceaccount:<ns>:<name>`, and `kubernetes.io` with `namespace`
/// and `serviceaccount{name,uid}`. `warnafter` appears only when asked for
/// ([`TokenBuilder::warn_after`], [`TokenBuilder::extended_expiry`]), as in real tokens.
#[derive(Clone, Debug)]
pub struct TokenBuilder {
    namespace: String,
    name: String,
    uid: String,
    issuer: String,
    subject: Option<String>,
    audience: Audience,
    issued_at: Option<i64>,
    not_before: Option<i64>,
    expires_at: Option<i64>,
    with_times: bool,
    jti: Option<String>,
    pod: Option<BoundObject>,
    secret: Option<BoundObject>,
    node: Option<BoundObject>,
    warn_after: Option<i64>,
    kid: KidChoice,
    kubernetes_claims: bool,
    legacy: bool,
    extra: Vec<(String, Value)>,
    removed: Vec<String>,
}

impl TokenBuilder {
    /// A token for ServiceAccount `namespace/name` whose object uid is `uid`.
    pub fn for_sa(namespace: &str, name: &str, uid: &str) -> Self {
        TokenBuilder {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
            issuer: DEFAULT_ISSUER.to_string(),
            subject: None,
            audience: Audience::List(vec![DEFAULT_AUDIENCE.to_string()]),
            issued_at: None,
            not_before: None,
            expires_at: None,
            with_times: true,
            jti: None,
            pod: None,
            secret: None,
            node: None,
            warn_after: None,
            kid: KidChoice::FromKey,
            kubernetes_claims: true,
            legacy: false,
            extra: Vec::new(),
            removed: Vec::new(),
        }
    }

    /// Sets `iss`.
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.issuer = issuer.to_string();
        self
    }

    /// Overrides `sub` (by default derived from the namespace and name).
    pub fn subject(mut self, subject: &str) -> Self {
        self.subject = Some(subject.to_string());
        self
    }

    /// `aud` as a one-element array (the form real tokens use).
    pub fn audience(mut self, audience: &str) -> Self {
        self.audience = Audience::List(vec![audience.to_string()]);
        self
    }

    /// `aud` as a plain string.
    pub fn audience_string(mut self, audience: &str) -> Self {
        self.audience = Audience::Single(audience.to_string());
        self
    }

    /// `aud` as an array of several audiences.
    pub fn audiences(mut self, audiences: Vec<&str>) -> Self {
        self.audience = Audience::List(audiences.into_iter().map(String::from).collect());
        self
    }

    /// No `aud` claim at all.
    pub fn without_audience(mut self) -> Self {
        self.audience = Audience::Absent;
        self
    }

    /// `exp` = now + `secs` (negative: already expired).
    pub fn expires_in(mut self, secs: i64) -> Self {
        self.expires_at = Some(now_unix() + secs);
        self
    }

    /// `exp` at an absolute Unix time.
    pub fn expires_at(mut self, unix: i64) -> Self {
        self.expires_at = Some(unix);
        self
    }

    /// `iat` at an absolute Unix time; `nbf` follows it unless set, and so does the default `exp`.
    pub fn issued_at(mut self, unix: i64) -> Self {
        self.issued_at = Some(unix);
        self
    }

    /// `nbf` at an absolute Unix time.
    pub fn not_before(mut self, unix: i64) -> Self {
        self.not_before = Some(unix);
        self
    }

    /// A default in-pod token as the token REST storage extends it: `exp` = `iat` + 1 year and
    /// `warnafter` = `iat` + 3607.
    pub fn extended_expiry(mut self) -> Self {
        let iat = self.issued_at.unwrap_or_else(now_unix);
        self.issued_at = Some(iat);
        self.expires_at = Some(iat + EXTENDED_LIFETIME_SECS);
        self.warn_after = Some(iat + WARN_ONLY_SECS);
        self
    }

    /// Sets `kubernetes.io.warnafter`.
    pub fn warn_after(mut self, unix: i64) -> Self {
        self.warn_after = Some(unix);
        self
    }

    /// Sets `jti` (random by default).
    pub fn jti(mut self, jti: &str) -> Self {
        self.jti = Some(jti.to_string());
        self
    }

    /// Binds the token to a pod (`kubernetes.io.pod`).
    pub fn pod(mut self, name: &str, uid: &str) -> Self {
        self.pod = Some(BoundObject {
            name: name.to_string(),
            uid: uid.to_string(),
        });
        self
    }

    /// Binds the token to a secret (`kubernetes.io.secret`).
    pub fn secret(mut self, name: &str, uid: &str) -> Self {
        self.secret = Some(BoundObject {
            name: name.to_string(),
            uid: uid.to_string(),
        });
        self
    }

    /// Adds node information (`kubernetes.io.node`).
    pub fn node(mut self, name: &str, uid: &str) -> Self {
        self.node = Some(BoundObject {
            name: name.to_string(),
            uid: uid.to_string(),
        });
        self
    }

    /// No `kid` in the header.
    pub fn without_kid(mut self) -> Self {
        self.kid = KidChoice::Absent;
        self
    }

    /// This `kid` in the header instead of the signing key's.
    pub fn kid_override(mut self, kid: &str) -> Self {
        self.kid = KidChoice::Fixed(kid.to_string());
        self
    }

    /// No `kubernetes.io` claim.
    pub fn without_kubernetes_claims(mut self) -> Self {
        self.kubernetes_claims = false;
        self
    }

    /// No `iat`, `nbf` or `exp`.
    pub fn without_times(mut self) -> Self {
        self.with_times = false;
        self
    }

    /// The legacy secret-based format: `iss` `kubernetes/serviceaccount`, flat
    /// `kubernetes.io/serviceaccount/*` claims, and no `exp`, `aud`, `iat`, `nbf` or `jti`.
    pub fn legacy_secret_format(mut self) -> Self {
        self.legacy = true;
        self
    }

    /// Sets (or overrides) a top-level claim; applied after everything else.
    pub fn extra_claim(mut self, key: &str, value: Value) -> Self {
        self.extra.push((key.to_string(), value));
        self
    }

    /// Removes a top-level claim; applied last.
    pub fn without_claim(mut self, key: &str) -> Self {
        self.removed.push(key.to_string());
        self
    }

    /// The payload this builder produces (fresh `jti` and times on each call unless fixed).
    pub fn claims(&self) -> Value {
        let mut c = Map::new();
        let sub = self
            .subject
            .clone()
            .unwrap_or_else(|| format!("system:serviceaccount:{}:{}", self.namespace, self.name));
        if self.legacy {
            let p = "kubernetes.io/serviceaccount";
            c.insert("iss".into(), json!(LEGACY_ISSUER));
            c.insert(format!("{p}/namespace"), json!(self.namespace));
            c.insert(
                format!("{p}/secret.name"),
                json!(format!("{}-token-{}", self.name, &random_uuid()[..5])),
            );
            c.insert(format!("{p}/service-account.name"), json!(self.name));
            c.insert(format!("{p}/service-account.uid"), json!(self.uid));
            c.insert("sub".into(), json!(sub));
        } else {
            c.insert("iss".into(), json!(self.issuer));
            c.insert("sub".into(), json!(sub));
            match &self.audience {
                Audience::List(list) => {
                    c.insert("aud".into(), json!(list));
                }
                Audience::Single(one) => {
                    c.insert("aud".into(), json!(one));
                }
                Audience::Absent => {}
            }
            if self.with_times {
                let iat = self.issued_at.unwrap_or_else(now_unix);
                c.insert("iat".into(), json!(iat));
                c.insert("nbf".into(), json!(self.not_before.unwrap_or(iat)));
                c.insert(
                    "exp".into(),
                    json!(self.expires_at.unwrap_or(iat + DEFAULT_LIFETIME_SECS)),
                );
            }
            let jti = self.jti.clone().unwrap_or_else(random_uuid);
            c.insert("jti".into(), json!(jti));
            if self.kubernetes_claims {
                c.insert("kubernetes.io".into(), self.kubernetes_claim());
            }
        }
        for (k, v) in &self.extra {
            c.insert(k.clone(), v.clone());
        }
        for k in &self.removed {
            c.remove(k);
        }
        Value::Object(c)
    }

    fn kubernetes_claim(&self) -> Value {
        let mut k = Map::new();
        k.insert("namespace".into(), json!(self.namespace));
        k.insert(
            "serviceaccount".into(),
            json!({ "name": self.name, "uid": self.uid }),
        );
        for (field, bound) in [
            ("pod", &self.pod),
            ("secret", &self.secret),
            ("node", &self.node),
        ] {
            if let Some(b) = bound {
                k.insert(field.into(), b.to_json());
            }
        }
        if let Some(w) = self.warn_after {
            k.insert("warnafter".into(), json!(w));
        }
        Value::Object(k)
    }

    fn header(&self, key: Option<&SigningKey>, alg: &str) -> Value {
        let mut h = Map::new();
        h.insert("alg".into(), json!(alg));
        match (&self.kid, key) {
            (KidChoice::FromKey, Some(k)) => {
                h.insert("kid".into(), json!(k.kid()));
            }
            (KidChoice::Fixed(kid), _) => {
                h.insert("kid".into(), json!(kid));
            }
            _ => {}
        }
        Value::Object(h)
    }

    /// Signs with the key's own algorithm (RS256, ES256 or ES384), the way the apiserver would.
    pub fn sign(&self, key: &SigningKey) -> String {
        self.sign_with_alg(key, key.algorithm())
    }

    /// Signs for real with `alg` (which must suit the key's family, e.g. RS384 or PS256 with an
    /// RSA key): a correctly signed token with an algorithm Kubernetes never uses.
    pub fn sign_with_alg(&self, key: &SigningKey, alg: Algorithm) -> String {
        let input = signing_input(&self.header(Some(key), alg_name(alg)), &self.claims());
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding_key(), alg)
            .expect("sign the token");
        format!("{input}.{sig}")
    }

    /// Writes `header_alg` into the header but signs with the key's own algorithm: a key/alg
    /// mismatch (e.g. header `RS384` over an RS256 signature, or `ES256` over an RSA signature).
    pub fn sign_with_header_alg(&self, key: &SigningKey, header_alg: &str) -> String {
        let input = signing_input(&self.header(Some(key), header_alg), &self.claims());
        let sig =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key.encoding_key(), key.algorithm())
                .expect("sign the token");
        format!("{input}.{sig}")
    }

    /// HS256 with a shared secret; pass a public key PEM to build the classic key-confusion attack.
    /// The `kid` is taken from [`TokenBuilder::kid_override`] if set.
    pub fn sign_hs256(&self, secret: &[u8]) -> String {
        let input = signing_input(&self.header(None, "HS256"), &self.claims());
        let sig = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
        .expect("sign the token");
        format!("{input}.{sig}")
    }

    /// HS256 keyed with the PEM of `key`'s public half, with `key`'s `kid` in the header.
    pub fn sign_hs256_with_public_key_of(&self, key: &SigningKey) -> String {
        let input = signing_input(&self.header(Some(key), "HS256"), &self.claims());
        let sig = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_secret(key.public_key_pem().as_bytes()),
            Algorithm::HS256,
        )
        .expect("sign the token");
        format!("{input}.{sig}")
    }

    /// `alg: none` with an empty signature part.
    pub fn unsigned_alg_none(&self) -> String {
        format!(
            "{}.",
            signing_input(&self.header(None, "none"), &self.claims())
        )
    }
}

/// Rewrites the payload of a signed token (namespace and `sub` moved to `kube-system`) and keeps
/// the original signature, which therefore no longer matches.
pub fn tamper_payload(token: &str) -> String {
    tamper_payload_with(token, |claims| {
        claims.insert(
            "sub".into(),
            json!("system:serviceaccount:kube-system:default"),
        );
        if let Some(Value::Object(k)) = claims.get_mut("kubernetes.io") {
            k.insert("namespace".into(), json!("kube-system"));
        }
    })
}

/// Applies `edit` to the payload of a signed token and keeps the original signature.
pub fn tamper_payload_with(token: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWS has three parts");
    let mut claims = match decode_part(parts[1]) {
        Value::Object(m) => m,
        other => panic!("payload is not an object: {other}"),
    };
    edit(&mut claims);
    let payload = b64url(&serde_json::to_vec(&Value::Object(claims)).expect("serialize"));
    format!("{}.{}.{}", parts[0], payload, parts[2])
}

/// The decoded header of a compact token, without any verification.
pub fn header_of(token: &str) -> Value {
    decode_part(token.split('.').next().unwrap_or_default())
}

/// The decoded payload of a compact token, without any verification.
pub fn claims_of(token: &str) -> Value {
    decode_part(token.split('.').nth(1).unwrap_or_default())
}

fn decode_part(part: &str) -> Value {
    serde_json::from_slice(&b64url_decode(part)).expect("a JSON token part")
}

fn signing_input(header: &Value, claims: &Value) -> String {
    let h = serde_json::to_vec(header).expect("serialize header");
    let c = serde_json::to_vec(claims).expect("serialize claims");
    format!("{}.{}", b64url(&h), b64url(&c))
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        other => panic!("no JOSE name known for {other:?}"),
    }
}

fn kid_for_spki(spki_der: &[u8]) -> String {
    b64url(&Sha256::digest(spki_der))
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64url_decode(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).expect("base64url")
}

fn ec_params(crv: &str, x: &[u8], y: &[u8]) -> Map<String, Value> {
    let mut params = Map::new();
    params.insert("kty".into(), json!("EC"));
    params.insert("crv".into(), json!(crv));
    params.insert("x".into(), json!(b64url(x)));
    params.insert("y".into(), json!(b64url(y)));
    params
}

/// `id-ecPublicKey` (1.2.840.10045.2.1), DER-encoded.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// `secp384r1` (1.3.132.0.34), DER-encoded.
const OID_SECP384R1: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// One DER TLV with a definite length.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// PKCS#8 `PrivateKeyInfo` wrapping an RFC 5915 `ECPrivateKey` on P-384.
fn p384_pkcs8(scalar: &[u8; 48], public_point: Option<&[u8]>) -> Vec<u8> {
    let mut ec_key = [der(0x02, &[1]), der(0x04, scalar)].concat();
    if let Some(point) = public_point {
        let bits = der(0x03, &[&[0u8][..], point].concat());
        ec_key.extend(der(0xa1, &bits));
    }
    let algorithm = der(0x30, &[OID_EC_PUBLIC_KEY, OID_SECP384R1].concat());
    der(
        0x30,
        &[der(0x02, &[0]), algorithm, der(0x04, &der(0x30, &ec_key))].concat(),
    )
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
