//! A local token signer for development without a cluster: it plays the API server's part.
//!
//! It holds an ES256 key, publishes its JWKS and mints tokens shaped exactly like projected
//! service-account tokens.
//!
//! Use: `generate_signer(dir)` once writes `signer.key` (PKCS#8 PEM, mode 0600) and `jwks.json`;
//! point the service's JWKS file setting at `jwks.json`; then `DevSigner::load(dir/signer.key)?
//! .mint(..)` gives tokens for clients, with the issuer and audience the service is set up for.
//! This is a real operating mode for local work, not a test fixture: the key is a real secret
//! for whatever trusts its `jwks.json`, so keep it out of shared places.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rand_core::{OsRng, RngCore};
use serde_json::json;
use sha2::{Digest, Sha256};

/// File name of the private key written by [`generate_signer`].
pub const KEY_FILE: &str = "signer.key";
/// File name of the public key set written by [`generate_signer`].
pub const JWKS_FILE: &str = "jwks.json";
/// A sensible issuer for development: what kubeadm, kind and k3s clusters use.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// `warnafter` is set this long after issue, as the API server does for extended tokens.
const WARN_AFTER_SECS: u64 = 3607;

/// What to put in a minted token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MintRequest {
    /// `iss`.
    pub issuer: String,
    /// The single entry of `aud`.
    pub audience: String,
    /// The service account's namespace.
    pub namespace: String,
    /// The service account's name.
    pub name: String,
    /// The service account's UID.
    pub uid: String,
    /// Lifetime: `exp` = now + ttl (whole seconds, at least one).
    pub ttl: Duration,
}

/// An ES256 signing key with its key id.
pub struct DevSigner {
    kid: String,
    signing: SigningKey,
    /// The public key set as a JWKS document.
    jwks_json: String,
}

impl fmt::Debug for DevSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key itself.
        f.debug_struct("DevSigner").field("kid", &self.kid).finish()
    }
}

/// Creates a new P-256 key in `dir` (created if missing): writes `signer.key` (PKCS#8 PEM, mode
/// 0600; an existing one is never overwritten) and `jwks.json` (its public JWK).
pub fn generate_signer(dir: &Path) -> Result<DevSigner, String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let secret = random_secret_key()?;
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| format!("cannot encode the key: {e}"))?;
    let key_path = dir.join(KEY_FILE);
    write_private(&key_path, pem.as_bytes())?;
    let signer = DevSigner::from_secret(&secret)?;
    let jwks_path = dir.join(JWKS_FILE);
    fs::write(&jwks_path, signer.jwks_json())
        .map_err(|e| format!("cannot write {}: {e}", jwks_path.display()))?;
    Ok(signer)
}

fn random_secret_key() -> Result<p256::SecretKey, String> {
    // A random 32-byte string is a valid scalar except with negligible probability; retry then.
    for _ in 0..8 {
        let mut bytes = [0u8; 32];
        OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| format!("no randomness: {e}"))?;
        if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
            return Ok(secret);
        }
    }
    Err("could not generate a key".to_string())
}

/// Writes a new file readable by its owner only; refuses to replace an existing one.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), String> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} already exists; load it, or delete it to make a new key",
                path.display()
            )
        } else {
            format!("cannot create {}: {e}", path.display())
        }
    })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

impl DevSigner {
    /// Loads a key written by [`generate_signer`] (any PKCS#8 PEM P-256 key).
    pub fn load(key_path: &Path) -> Result<DevSigner, String> {
        let pem = fs::read_to_string(key_path)
            .map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
        // The parse error says nothing about the content, but is replaced anyway: it is a key.
        let secret = p256::SecretKey::from_pkcs8_pem(&pem).map_err(|_| {
            format!(
                "{} is not a PKCS#8 PEM P-256 private key",
                key_path.display()
            )
        })?;
        DevSigner::from_secret(&secret)
    }

    fn from_secret(secret: &p256::SecretKey) -> Result<DevSigner, String> {
        let public = secret.public_key();
        let spki = public
            .to_public_key_der()
            .map_err(|e| format!("cannot encode the public key: {e}"))?;
        // The key id Kubernetes gives key-file keys: base64url(SHA-256(PKIX DER)), unpadded.
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(spki.as_bytes()));
        let point = public.to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err("cannot encode the public key".to_string());
        };
        let jwks_json = json!({"keys": [{
            "use": "sig",
            "kty": "EC",
            "kid": kid,
            "crv": "P-256",
            "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        }]})
        .to_string();
        Ok(DevSigner {
            kid,
            signing: SigningKey::from(secret),
            jwks_json,
        })
    }

    /// The key id in tokens and in the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key set, as written to `jwks.json`.
    pub fn jwks_json(&self) -> String {
        self.jwks_json.clone()
    }

    /// Mints a token issued now.
    pub fn mint(&self, request: &MintRequest) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the system clock is before 1970".to_string())?
            .as_secs();
        self.mint_at(request, now)
    }

    /// Mints a token issued at `now` (unix seconds), with the claim shape of a projected token:
    /// `iss`, `sub`, `aud` (an array), `iat` = `nbf` = now, `exp`, a random `jti` and the
    /// `kubernetes.io` claim with the namespace, service account and `warnafter`.
    pub fn mint_at(&self, request: &MintRequest, now: u64) -> Result<String, String> {
        for (what, value) in [
            ("issuer", &request.issuer),
            ("audience", &request.audience),
            ("namespace", &request.namespace),
            ("name", &request.name),
            ("uid", &request.uid),
        ] {
            if value.is_empty() {
                return Err(format!("the {what} must not be empty"));
            }
        }
        if request.namespace.contains(':') || request.name.contains(':') {
            return Err("namespace and name must not contain ':'".to_string());
        }
        let ttl = request.ttl.as_secs();
        if ttl == 0 {
            return Err("the ttl must be at least one second".to_string());
        }
        let exp = now.saturating_add(ttl);
        let claims = json!({
            "aud": [request.audience],
            "exp": exp,
            "iat": now,
            "iss": request.issuer,
            "jti": random_uuid()?,
            "kubernetes.io": {
                "namespace": request.namespace,
                "serviceaccount": {"name": request.name, "uid": request.uid},
                "warnafter": now.saturating_add(WARN_AFTER_SECS).min(exp),
            },
            "nbf": now,
            "sub": format!("system:serviceaccount:{}:{}", request.namespace, request.name),
        });
        // The API server's header is just {"alg", "kid"}.
        let header = json!({"alg": "ES256", "kid": self.kid});
        let (Ok(header), Ok(claims)) = (serde_json::to_vec(&header), serde_json::to_vec(&claims))
        else {
            return Err("cannot encode the token".to_string());
        };
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        // A JWS ES256 signature is the fixed-size `r || s` (RFC 7518 3.4), not DER.
        let signature: Signature = self
            .signing
            .try_sign(signing_input.as_bytes())
            .map_err(|e| format!("cannot sign: {e}"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }
}

/// A random version-4 UUID in its usual textual form (the `jti` of a minted token).
pub fn random_uuid() -> Result<String, String> {
    let mut b = [0u8; 16];
    OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| format!("no randomness: {e}"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::jwks::JwksStore;
    use crate::identity::token::{TokenSettings, TokenValidator};
    use std::sync::Arc;

    fn request() -> MintRequest {
        MintRequest {
            issuer: DEFAULT_ISSUER.into(),
            audience: "nats".into(),
            namespace: "team-a".into(),
            name: "app".into(),
            uid: "6f9d8a3e-2b1c-4d5e-8f7a-9b0c1d2e3f4a".into(),
            ttl: Duration::from_secs(600),
        }
    }

    fn payload(token: &str) -> serde_json::Value {
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn generated_signer_mints_tokens_the_validator_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let signer = generate_signer(dir.path()).unwrap();
        let jwks = fs::read(dir.path().join(JWKS_FILE)).unwrap();
        let store = Arc::new(JwksStore::from_jwks_json(&jwks).unwrap());
        let validator = TokenValidator::new(store, TokenSettings::new(DEFAULT_ISSUER, "nats"));
        let token = signer.mint_at(&request(), 1_700_000_000).unwrap();
        let identity = validator.validate(&token, 1_700_000_000).unwrap();
        assert_eq!(identity.namespace, "team-a");
        assert_eq!(identity.service_account, "app");
        assert_eq!(identity.expires_at, 1_700_000_600);
        assert!(validator
            .validate(&signer.mint(&request()).unwrap(), now())
            .is_ok());
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn token_has_the_claim_shape_of_a_projected_token() {
        let dir = tempfile::tempdir().unwrap();
        let signer = generate_signer(dir.path()).unwrap();
        let token = signer.mint_at(&request(), 1_700_000_000).unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header, json!({"alg": "ES256", "kid": signer.kid()}));
        let claims = payload(&token);
        let jti = claims["jti"].as_str().unwrap().to_string();
        assert_eq!(jti.len(), 36);
        assert_eq!(&jti[14..15], "4");
        assert_eq!(
            claims,
            json!({
                "aud": ["nats"],
                "exp": 1_700_000_600u64,
                "iat": 1_700_000_000u64,
                "iss": DEFAULT_ISSUER,
                "jti": jti,
                "kubernetes.io": {
                    "namespace": "team-a",
                    "serviceaccount": {"name": "app", "uid": "6f9d8a3e-2b1c-4d5e-8f7a-9b0c1d2e3f4a"},
                    "warnafter": 1_700_000_600u64,
                },
                "nbf": 1_700_000_000u64,
                "sub": "system:serviceaccount:team-a:app",
            })
        );
    }

    #[test]
    fn jti_is_different_for_each_token() {
        let dir = tempfile::tempdir().unwrap();
        let signer = generate_signer(dir.path()).unwrap();
        let a = payload(&signer.mint(&request()).unwrap());
        let b = payload(&signer.mint(&request()).unwrap());
        assert_ne!(a["jti"], b["jti"]);
    }

    #[test]
    fn kid_is_the_sha256_of_the_public_key_der() {
        let dir = tempfile::tempdir().unwrap();
        let signer = generate_signer(dir.path()).unwrap();
        let pem = fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
        let secret = p256::SecretKey::from_pkcs8_pem(&pem).unwrap();
        let der = secret.public_key().to_public_key_der().unwrap();
        assert_eq!(
            signer.kid(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(der.as_bytes()))
        );
        let jwks: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join(JWKS_FILE)).unwrap()).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], signer.kid());
    }

    #[cfg(unix)]
    #[test]
    fn key_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        generate_signer(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn existing_key_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate_signer(dir.path()).unwrap();
        let err = generate_signer(dir.path()).unwrap_err();
        assert!(err.contains("already exists"), "{err}");
        let loaded = DevSigner::load(&dir.path().join(KEY_FILE)).unwrap();
        assert_eq!(loaded.kid(), first.kid());
        assert_eq!(loaded.jwks_json(), first.jwks_json());
    }

    #[test]
    fn token_carries_the_requested_issuer() {
        let dir = tempfile::tempdir().unwrap();
        generate_signer(dir.path()).unwrap();
        let signer = DevSigner::load(&dir.path().join(KEY_FILE)).unwrap();
        let req = MintRequest {
            issuer: "https://oidc.example/id/1/".into(),
            ..request()
        };
        assert_eq!(
            payload(&signer.mint(&req).unwrap())["iss"],
            "https://oidc.example/id/1/"
        );
    }

    #[test]
    fn loading_something_that_is_not_a_key_fails_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        fs::write(&path, "hunter2").unwrap();
        let err = DevSigner::load(&path).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(DevSigner::load(&dir.path().join("missing.key")).is_err());
    }

    #[test]
    fn incomplete_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let signer = generate_signer(dir.path()).unwrap();
        let cases = [
            MintRequest {
                namespace: String::new(),
                ..request()
            },
            MintRequest {
                uid: String::new(),
                ..request()
            },
            MintRequest {
                issuer: String::new(),
                ..request()
            },
            MintRequest {
                name: "a:b".into(),
                ..request()
            },
            MintRequest {
                ttl: Duration::from_millis(500),
                ..request()
            },
        ];
        for req in &cases {
            assert!(signer.mint(req).is_err(), "{req:?}");
        }
    }
}
