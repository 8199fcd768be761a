//! Validation of Kubernetes service-account tokens into an [`Identity`] or a [`TokenError`].
//!
//! Checked: the signature against the JWKS, the algorithm allow-list, issuer, audience, time and
//! the `kubernetes.io` claims.
//!
//! Every rule is commented where it is enforced and has a test named for it. A refused token
//! yields a [`TokenError`] whose [`TokenError::reason`] is the metric label and whose `Display` is
//! the log text; neither ever contains the token.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use log::warn;
use parking_lot::Mutex;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde::{Deserialize, Deserializer};

use super::jwks::{JwksStore, KeySet, SigningAlgorithm, VerificationKey};
use super::printable;

/// Tokens longer than this are refused before any parsing (real ones are about 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The issuer of legacy, secret-based service-account tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
/// The prefix of a service account's subject: `system:serviceaccount:<namespace>:<name>`.
pub const SUBJECT_PREFIX: &str = "system:serviceaccount:";
/// Clock-skew allowance for `exp`, `nbf` and `iat`: the API server's 60 s.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// Most keys a token without a key id is tried against: a set with more keys of the token's
/// algorithm refuses such tokens (`token_kid_required`) instead of trying them all, so an
/// unauthenticated client cannot make the cost of one token grow with the key set. Kubernetes
/// always sets `kid`; two or three keys of one algorithm cover a rotation.
pub const MAX_KEYS_WITHOUT_KID: usize = 4;
/// At most one operator log line per this interval about tokens refused `token_kid_required`.
const KID_REQUIRED_LOG_EVERY: Duration = Duration::from_secs(60);

/// What a token must be issued by and for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSettings {
    /// The exact `iss` required (compared byte for byte: a trailing slash matters).
    pub issuer: String,
    /// The audience `aud` must contain.
    pub audience: String,
    /// Clock-skew allowance for the time claims.
    pub leeway: Duration,
}

impl TokenSettings {
    /// Settings for this issuer and audience with the default leeway.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> TokenSettings {
        TokenSettings {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: DEFAULT_LEEWAY,
        }
    }
}

/// Who a valid token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account's name.
    pub service_account: String,
    /// The service account's UID, to compare with the live object.
    pub uid: String,
    /// The token's `exp` (unix seconds).
    pub expires_at: u64,
    /// The pod the token is bound to, if any.
    pub pod_name: Option<String>,
    /// That pod's uid (set exactly when `pod_name` is).
    pub pod_uid: Option<String>,
    /// The token's `jti`, which the API server's audit log records as its credential id
    /// (`authentication.kubernetes.io/credential-id: JTI=<jti>`); printable, at most
    /// [`MAX_CREDENTIAL_ID`] characters. Only for the log.
    pub credential_id: Option<String>,
}

/// The longest `jti` kept for the log (a Kubernetes one is a 36-character UUID).
pub const MAX_CREDENTIAL_ID: usize = 64;

/// Why a token was refused. Variants are named as facts about the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS of base64url JSON parts, or a claim of the wrong type.
    #[error("malformed token")]
    Malformed,
    /// Longer than [`MAX_TOKEN_BYTES`]; not parsed.
    #[error("token of {len} bytes exceeds {MAX_TOKEN_BYTES}")]
    TooLarge {
        /// Length in bytes.
        len: usize,
    },
    /// The header's `alg` is not RS256, ES256 or ES384.
    #[error("unsupported signing algorithm {alg:?}")]
    UnsupportedAlgorithm {
        /// The `alg` value (shortened, printable).
        alg: String,
    },
    /// The key the token names is of a type that does not verify the token's algorithm.
    #[error("no key of a type that verifies {alg}")]
    KeyAlgorithmMismatch {
        /// The token's algorithm.
        alg: SigningAlgorithm,
    },
    /// No key with the token's key id, even after waiting (briefly) for a refetch.
    #[error("unknown key id {kid:?}")]
    UnknownKey {
        /// The key id (shortened, printable).
        kid: String,
    },
    /// No key id, and the key set has more keys of the token's algorithm than
    /// [`MAX_KEYS_WITHOUT_KID`]: none is tried.
    #[error("no key id, and the key set has {keys} {alg} keys (at most {MAX_KEYS_WITHOUT_KID} are tried without one)")]
    KidRequired {
        /// The token's algorithm.
        alg: SigningAlgorithm,
        /// How many keys of that algorithm the set has.
        keys: usize,
    },
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is past, beyond the leeway.
    #[error("token expired at {expired_at}")]
    Expired {
        /// The token's `exp`.
        expired_at: u64,
    },
    /// `nbf` is in the future, beyond the leeway.
    #[error("token not valid before {not_before}")]
    NotYetValid {
        /// The token's `nbf`.
        not_before: u64,
    },
    /// `iat` is in the future, beyond the leeway.
    #[error("token issued in the future at {issued_at}")]
    IssuedInFuture {
        /// The token's `iat`.
        issued_at: u64,
    },
    /// `iss` is missing or not exactly the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` is missing or does not contain the configured audience.
    #[error("audience not accepted")]
    WrongAudience,
    /// No `exp`: the token would never expire.
    #[error("token has no expiry")]
    MissingExpiry,
    /// The `kubernetes.io` claim lacks the namespace, service account name or UID.
    #[error("missing kubernetes.io service account claims")]
    MissingKubernetesClaims,
    /// `sub` is not `system:serviceaccount:<namespace>:<name>` of the `kubernetes.io` claim.
    #[error("subject does not match service account")]
    SubjectMismatch,
    /// A legacy secret-based token: no expiry, no audience, revocable only by deleting a Secret.
    #[error("legacy secret-based token")]
    LegacyToken,
    /// No key set has been loaded yet.
    #[error("no signing keys loaded")]
    KeysUnavailable,
}

impl TokenError {
    /// The metric label of this refusal (snake_case, stable).
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::TooLarge { .. } => "token_too_large",
            TokenError::UnsupportedAlgorithm { .. } => "token_unsupported_algorithm",
            TokenError::KeyAlgorithmMismatch { .. } => "token_key_algorithm_mismatch",
            TokenError::UnknownKey { .. } => "token_unknown_key",
            TokenError::KidRequired { .. } => "token_kid_required",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::Expired { .. } => "token_expired",
            TokenError::NotYetValid { .. } => "token_not_yet_valid",
            TokenError::IssuedInFuture { .. } => "token_issued_in_future",
            TokenError::WrongIssuer => "token_wrong_issuer",
            TokenError::WrongAudience => "token_wrong_audience",
            TokenError::MissingExpiry => "token_missing_expiry",
            TokenError::MissingKubernetesClaims => "token_missing_kubernetes_claims",
            TokenError::SubjectMismatch => "token_subject_mismatch",
            TokenError::LegacyToken => "token_legacy",
            TokenError::KeysUnavailable => "jwks_unavailable",
        }
    }
}

/// The service account a token claims, read without any verification: only for log lines about
/// a refused token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedServiceAccount {
    /// Claimed namespace.
    pub namespace: String,
    /// Claimed service account name.
    pub name: String,
}

impl fmt::Display for ClaimedServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Reads the namespace and name a token claims, without verifying anything, for the log line of a
/// refusal. Returns `None` unless both look like Kubernetes names, so nothing odd reaches a log.
pub fn claimed_service_account(token: &str) -> Option<ClaimedServiceAccount> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let parts = CompactParts::split(token).ok()?;
    let claims: RawClaims = decode_part(parts.payload).ok()?;
    let (namespace, name) = match claims.kubernetes {
        Some(KubernetesClaims {
            namespace: Some(namespace),
            serviceaccount: Some(ObjectRef {
                name: Some(name), ..
            }),
            ..
        }) => (namespace, name),
        _ => {
            let rest = claims.sub.as_deref()?.strip_prefix(SUBJECT_PREFIX)?;
            let (namespace, name) = rest.split_once(':')?;
            (namespace.to_string(), name.to_string())
        }
    };
    (looks_like_kubernetes_name(&namespace) && looks_like_kubernetes_name(&name))
        .then_some(ClaimedServiceAccount { namespace, name })
}

fn looks_like_kubernetes_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Validates service-account tokens against the keys of a [`JwksStore`].
pub struct TokenValidator {
    store: Arc<JwksStore>,
    settings: TokenSettings,
    /// When the operator was last told about tokens refused `token_kid_required`.
    kid_required_log: Mutex<LogLimit>,
}

impl fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenValidator")
            .field("settings", &self.settings)
            .field("store", &self.store)
            .finish()
    }
}

impl TokenValidator {
    /// A validator for tokens issued by and for `settings`, verified with the keys of `store`.
    pub fn new(store: Arc<JwksStore>, settings: TokenSettings) -> TokenValidator {
        TokenValidator {
            store,
            settings,
            kid_required_log: Mutex::new(LogLimit::default()),
        }
    }

    /// The key set's generation (see [`JwksStore::generation`]); read before [`Self::validate`].
    pub fn key_generation(&self) -> u64 {
        self.store.generation()
    }

    /// The leeway granted on `exp`, `nbf` and `iat`.
    pub fn leeway(&self) -> std::time::Duration {
        self.settings.leeway
    }

    /// Checks a token at time `now` (unix seconds) and returns whom it speaks for.
    pub fn validate(&self, token: &str, now: u64) -> Result<Identity, TokenError> {
        // Rule: oversize tokens are refused before any parsing, bounding the work an
        // unauthenticated client can cause.
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLarge { len: token.len() });
        }
        // Rule: exactly three base64url parts whose header and payload are JSON objects.
        let parts = CompactParts::split(token)?;
        let header: RawHeader = decode_part(parts.header)?;

        // Rule: algorithm allow-list (RS256, ES256, ES384). `none`, HMAC (`HS*`, which would let
        // a published public key act as a shared secret) and everything else are refused.
        let alg = SigningAlgorithm::from_name(&header.alg).ok_or_else(|| {
            TokenError::UnsupportedAlgorithm {
                alg: printable(&header.alg, 16),
            }
        })?;
        // Rule: a header with critical extensions is refused: none are understood here (RFC 7515
        // 4.1.11). Keys embedded in or referenced by the header (`jwk`, `jku`, `x5u`, `x5c`) are
        // never used: only the JWKS store supplies keys.
        if header.crit.is_some() {
            return Err(TokenError::Malformed);
        }
        let claims: RawClaims = decode_part(parts.payload)?;
        // Rule: legacy secret-based tokens are refused with their own reason: they never expire,
        // have no audience and are revoked only by deleting a Secret.
        if claims.is_legacy() {
            return Err(TokenError::LegacyToken);
        }
        // Rule: exact issuer. Checked on the claims before the key lookup, so that a token of
        // another cluster is reported as such and cannot trigger a JWKS refetch.
        if claims.iss.as_deref() != Some(self.settings.issuer.as_str()) {
            return Err(TokenError::WrongIssuer);
        }

        let keys = self.store.keys();
        if keys.is_empty() {
            return Err(TokenError::KeysUnavailable);
        }
        self.verify_signature(&parts, alg, header.kid.as_deref(), keys)?;
        // From here on the claims are the signed ones: the signature covers these very bytes.
        self.check_claims(claims, now)
    }

    fn verify_signature(
        &self,
        parts: &CompactParts<'_>,
        alg: SigningAlgorithm,
        kid: Option<&str>,
        keys: Arc<KeySet>,
    ) -> Result<(), TokenError> {
        let Some(kid) = kid else {
            // Rule: a token without a key id is tried against every key of a type that verifies
            // its algorithm, as the API server does, but only while there are at most
            // MAX_KEYS_WITHOUT_KID of them: the token is unauthenticated, so its cost must not
            // grow with the key set.
            let candidates: Vec<&VerificationKey> =
                keys.iter().filter(|k| k.algorithm() == alg).collect();
            if candidates.is_empty() {
                return Err(TokenError::KeyAlgorithmMismatch { alg });
            }
            if candidates.len() > MAX_KEYS_WITHOUT_KID {
                self.tell_kid_required(alg, candidates.len());
                return Err(TokenError::KidRequired {
                    alg,
                    keys: candidates.len(),
                });
            }
            let signature = parts.signature()?;
            return if candidates
                .iter()
                .any(|key| key.verify(alg, parts.signing_input.as_bytes(), &signature))
            {
                Ok(())
            } else {
                Err(TokenError::BadSignature)
            };
        };
        // Rule: the key is chosen by key id. An unknown id asks the store for a rate-limited
        // refetch (the key set may have rotated), run by the refresher thread; this worker waits
        // for it at most `JwksSettings::refetch_wait`, then fails as an unknown key.
        let keys = if keys.get(kid).is_some() {
            keys
        } else {
            self.store.refetch_for_unknown_kid(kid)
        };
        let key = keys.get(kid).ok_or_else(|| TokenError::UnknownKey {
            kid: printable(kid, 64),
        })?;
        // Rule: the key's type must verify the token's algorithm: an EC key is never used for
        // RS256, an RSA key never for ES256, a P-384 key never for ES256.
        if key.algorithm() != alg {
            return Err(TokenError::KeyAlgorithmMismatch { alg });
        }
        if key.verify(alg, parts.signing_input.as_bytes(), &parts.signature()?) {
            Ok(())
        } else {
            Err(TokenError::BadSignature)
        }
    }

    /// The operator's line about tokens refused `token_kid_required`, at most once per
    /// [`KID_REQUIRED_LOG_EVERY`] with how many were refused meanwhile: each refusal has its own
    /// deny line already, this one says what to do about them.
    fn tell_kid_required(&self, alg: SigningAlgorithm, keys: usize) {
        let Some(refused) = self.kid_required_log.lock().count(Instant::now()) else {
            return;
        };
        warn!(
            "jwks: refused {refused} token(s) without a key id: the key set has {keys} {alg} keys, more than the {MAX_KEYS_WITHOUT_KID} such tokens are tried against; Kubernetes always sets kid, so these tokens come from another signer (reason=token_kid_required; at most one such line a minute)"
        );
    }

    fn check_claims(&self, claims: RawClaims, now: u64) -> Result<Identity, TokenError> {
        let leeway = self.settings.leeway.as_secs();
        // The time rules are checked against the caller's `now`, so that one clock governs all
        // three.
        // Rule: `exp` is required: a whole or fractional number of seconds from 0 to 2^64 (a
        // negative, infinite or larger one counts as none). Checked before `aud`.
        let expires_at = claims
            .exp
            .and_then(Expiry::seconds)
            .ok_or(TokenError::MissingExpiry)?;
        // Rule: `aud` must be a string or an array of strings that contains the configured
        // audience; missing, empty, of another shape or without ours, it is refused.
        if !claims
            .aud
            .is_some_and(|aud| aud.contains(&self.settings.audience))
        {
            return Err(TokenError::WrongAudience);
        }
        // Rule: `exp` must not be past, beyond the leeway.
        if now > expires_at.saturating_add(leeway) {
            return Err(TokenError::Expired {
                expired_at: expires_at,
            });
        }
        // Rule: `nbf`, when present, must not be in the future beyond the leeway.
        if let Some(not_before) = numeric_date(claims.nbf)? {
            if not_before > now.saturating_add(leeway) {
                return Err(TokenError::NotYetValid { not_before });
            }
        }
        // Rule: `iat`, when present, must not be in the future beyond the leeway.
        if let Some(issued_at) = numeric_date(claims.iat)? {
            if issued_at > now.saturating_add(leeway) {
                return Err(TokenError::IssuedInFuture { issued_at });
            }
        }
        // Rule: the `kubernetes.io` claim must name the namespace and the service account's
        // name and UID.
        let kubernetes = claims
            .kubernetes
            .ok_or(TokenError::MissingKubernetesClaims)?;
        let service_account = kubernetes
            .serviceaccount
            .ok_or(TokenError::MissingKubernetesClaims)?;
        let (Some(namespace), Some(name), Some(uid)) = (
            non_empty(kubernetes.namespace),
            non_empty(service_account.name),
            non_empty(service_account.uid),
        ) else {
            return Err(TokenError::MissingKubernetesClaims);
        };
        // Rule: `sub` must be exactly `system:serviceaccount:<namespace>:<name>` of that claim.
        if !subject_matches(claims.sub.as_deref(), &namespace, &name) {
            return Err(TokenError::SubjectMismatch);
        }
        // A pod binding counts only with both the pod's name and uid.
        let pod = kubernetes
            .pod
            .and_then(|pod| Some((non_empty(pod.name)?, non_empty(pod.uid)?)));
        Ok(Identity {
            namespace,
            service_account: name,
            uid,
            expires_at,
            pod_name: pod.as_ref().map(|(name, _)| name.clone()),
            pod_uid: pod.map(|(_, uid)| uid),
            credential_id: claims
                .jti
                .as_ref()
                .and_then(serde_json::Value::as_str)
                .filter(|jti| !jti.is_empty())
                .map(|jti| crate::identity::printable(jti, MAX_CREDENTIAL_ID)),
        })
    }
}

/// Counts events and says when one log line about them is due: at once for the first, then at
/// most once per [`KID_REQUIRED_LOG_EVERY`], reporting how many happened since the last line.
#[derive(Default)]
struct LogLimit {
    /// When the last line was written.
    last: Option<Instant>,
    /// Events since the last line, the current one included.
    pending: u64,
}

impl LogLimit {
    /// Counts one event; returns how many to report if a line is due now.
    fn count(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < KID_REQUIRED_LOG_EVERY)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

fn subject_matches(sub: Option<&str>, namespace: &str, name: &str) -> bool {
    sub.and_then(|s| s.strip_prefix(SUBJECT_PREFIX))
        .and_then(|s| s.strip_prefix(namespace))
        .and_then(|s| s.strip_prefix(':'))
        == Some(name)
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// A NumericDate (RFC 7519: seconds, possibly fractional) as whole unix seconds.
fn numeric_date(value: Option<f64>) -> Result<Option<u64>, TokenError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_finite() && v >= 0.0 => Ok(Some(v as u64)),
        Some(_) => Err(TokenError::Malformed),
    }
}

/// The three parts of a compact JWS.
struct CompactParts<'a> {
    header: &'a str,
    payload: &'a str,
    /// `header.payload`: the bytes the signature covers.
    signing_input: &'a str,
    /// The signature, still base64url.
    signature: &'a str,
}

impl<'a> CompactParts<'a> {
    fn split(token: &'a str) -> Result<CompactParts<'a>, TokenError> {
        let mut parts = token.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            // The signature may be empty here so that `alg: none` is reported as such; an empty
            // signature never verifies.
            (Some(header), Some(payload), Some(signature), None)
                if !header.is_empty() && !payload.is_empty() =>
            {
                let signing_input = token
                    .get(..header.len() + 1 + payload.len())
                    .ok_or(TokenError::Malformed)?;
                Ok(CompactParts {
                    header,
                    payload,
                    signing_input,
                    signature,
                })
            }
            _ => Err(TokenError::Malformed),
        }
    }

    /// The signature's bytes: unpadded base64url, strictly (no padding, no stray bits).
    fn signature(&self) -> Result<Vec<u8>, TokenError> {
        URL_SAFE_NO_PAD
            .decode(self.signature)
            .map_err(|_| TokenError::Malformed)
    }
}

fn decode_part<T: DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<IgnoredAny>,
}

/// The claims this service reads; unknown fields are ignored, as newer API servers add some.
#[derive(Deserialize)]
struct RawClaims {
    iss: Option<String>,
    /// Any JSON: only a string is kept, for the log; nothing is decided on it.
    jti: Option<serde_json::Value>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<Expiry>,
    nbf: Option<f64>,
    iat: Option<f64>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaims>,
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    legacy_namespace: Option<IgnoredAny>,
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    legacy_secret_name: Option<IgnoredAny>,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    legacy_service_account_name: Option<IgnoredAny>,
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    legacy_service_account_uid: Option<IgnoredAny>,
}

impl RawClaims {
    fn is_legacy(&self) -> bool {
        self.iss.as_deref() == Some(LEGACY_ISSUER)
            || self.legacy_namespace.is_some()
            || self.legacy_secret_name.is_some()
            || self.legacy_service_account_name.is_some()
            || self.legacy_service_account_uid.is_some()
    }
}

/// The `exp` claim as read, before its rule is applied (see [`Expiry::seconds`]). Any JSON number
/// is read; anything else makes the token malformed.
#[derive(Clone, Copy)]
enum Expiry {
    /// A whole number of seconds, from 0 to 2^64 - 1.
    Whole(u64),
    /// A negative whole number.
    Negative,
    /// A number with a fraction or an exponent.
    Fractional(f64),
}

impl Expiry {
    /// Whole unix seconds, if the value is a usable expiry: a whole number, or a finite
    /// fractional one from 0 up to (not including) 2^64, truncated.
    fn seconds(self) -> Option<u64> {
        match self {
            Expiry::Whole(secs) => Some(secs),
            Expiry::Negative => None,
            Expiry::Fractional(v) => {
                (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Expiry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Expiry, D::Error> {
        struct ExpiryVisitor;
        impl Visitor<'_> for ExpiryVisitor {
            type Value = Expiry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a NumericDate")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Expiry, E> {
                Ok(Expiry::Whole(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Expiry, E> {
                Ok(u64::try_from(v).map_or(Expiry::Negative, Expiry::Whole))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Expiry, E> {
                Ok(Expiry::Fractional(v))
            }
        }
        deserializer.deserialize_any(ExpiryVisitor)
    }
}

/// The `aud` claim: the audiences of a string or of an array of strings (RFC 7519 4.1.3). Any
/// other shape is read as [`Audience::Unusable`] instead of failing the parse, so that it is
/// refused as a wrong audience once the signature has verified, like a missing `aud`.
enum Audience {
    /// The audiences named.
    Named(Vec<String>),
    /// Not a string nor an array of only strings.
    Unusable,
}

impl Audience {
    /// Whether `audience` is one of the audiences named.
    fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::Named(names) => names.iter().any(|name| name == audience),
            Audience::Unusable => false,
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Audience, D::Error> {
        deserializer.deserialize_any(AudienceVisitor { top: true })
    }
}

/// Reads `aud` (`top`) or one entry of an `aud` array: a string names an audience; an array of
/// strings at the top names them all; anything else is read through and is unusable.
#[derive(Clone, Copy)]
struct AudienceVisitor {
    top: bool,
}

impl<'de> DeserializeSeed<'de> for AudienceVisitor {
    type Value = Audience;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Audience, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AudienceVisitor {
    type Value = Audience;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Audience, E> {
        Ok(Audience::Named(vec![v.to_string()]))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Audience, A::Error> {
        let entry = AudienceVisitor { top: false };
        // `None` once an entry is not a string (or this array is itself an entry).
        let mut names = self.top.then(Vec::new);
        while let Some(read) = seq.next_element_seed(entry)? {
            match (read, names.as_mut()) {
                (Audience::Named(mut one), Some(names)) => names.append(&mut one),
                _ => names = None,
            }
        }
        Ok(names.map_or(Audience::Unusable, Audience::Named))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Audience, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Audience::Unusable)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Audience, E> {
        Ok(Audience::Unusable)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Audience, E> {
        Ok(Audience::Unusable)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Audience, E> {
        Ok(Audience::Unusable)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Audience, E> {
        Ok(Audience::Unusable)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Audience, E> {
        Ok(Audience::Unusable)
    }
}

#[derive(Deserialize)]
struct KubernetesClaims {
    namespace: Option<String>,
    serviceaccount: Option<ObjectRef>,
    pod: Option<ObjectRef>,
}

#[derive(Deserialize)]
struct ObjectRef {
    name: Option<String>,
    uid: Option<String>,
}

/// Test keys and a token builder that mint real RS256, ES256 and ES384 tokens with the claim
/// shapes of a real cluster.
#[cfg(test)]
pub(crate) mod testkit {
    use std::sync::OnceLock;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey};
    use p256::pkcs8::EncodePrivateKey;
    use serde_json::{json, Map, Value};

    /// The issuer of test tokens (a kubeadm cluster's).
    pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
    /// The audience of test tokens.
    pub const AUDIENCE: &str = "nats";
    /// "Now" in tests.
    pub const NOW: u64 = 1_700_000_000;
    /// The service account UID of test tokens.
    pub const UID: &str = "6f9d8a3e-2b1c-4d5e-8f7a-9b0c1d2e3f4a";

    /// A P-384 key made with openssl for the tests (the p384 crate is not a dependency).
    const P384_PKCS8_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDCzu05xyRYT8GIusrnC
6UibltMof/MEw7jdIkIRXgwr5LrHVHMJFdffanWO/ThpaW2hZANiAATxs6Qyg+TF
KT/nI5gZO5CP5OA2NC7jEy2qr8TeBS8AzS61UAyQMAJyBM6GXqB8XBJVqZa/Q3TL
qoPIZMm24QXIJwrQNgyVYB8eTfos4rz1dPWUgleiFsY4LspXOf5F4PQ=
-----END PRIVATE KEY-----
";

    /// A signing key and its public JWK.
    pub struct TestKey {
        pub alg: Algorithm,
        pub kid: String,
        pub encoding: EncodingKey,
        jwk: Value,
    }

    fn rsa_key() -> &'static rsa::RsaPrivateKey {
        static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap())
    }

    impl TestKey {
        /// The test binary's RSA key (generated once), under this key id.
        pub fn rsa(kid: &str) -> TestKey {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            use rsa::traits::PublicKeyParts;
            let key = rsa_key();
            let der = key.to_pkcs1_der().unwrap();
            TestKey {
                alg: Algorithm::RS256,
                kid: kid.to_string(),
                encoding: EncodingKey::from_rsa_der(der.as_bytes()),
                jwk: json!({
                    "use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256",
                    "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
                    "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
                }),
            }
        }

        /// A fresh P-256 key under this key id.
        pub fn es256(kid: &str) -> TestKey {
            use p256::elliptic_curve::sec1::ToEncodedPoint;
            let secret = p256::SecretKey::random(&mut rand_core::OsRng);
            let point = secret.public_key().to_encoded_point(false);
            TestKey {
                alg: Algorithm::ES256,
                kid: kid.to_string(),
                encoding: EncodingKey::from_ec_der(secret.to_pkcs8_der().unwrap().as_bytes()),
                jwk: json!({
                    "use": "sig", "kty": "EC", "kid": kid, "alg": "ES256", "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
                    "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
                }),
            }
        }

        /// The fixed P-384 key under this key id.
        pub fn es384(kid: &str) -> TestKey {
            let encoding = EncodingKey::from_ec_pem(P384_PKCS8_PEM.as_bytes()).unwrap();
            let public =
                jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, Algorithm::ES384).unwrap();
            let mut jwk = serde_json::to_value(public).unwrap();
            jwk["kid"] = kid.into();
            jwk["use"] = "sig".into();
            TestKey {
                alg: Algorithm::ES384,
                kid: kid.to_string(),
                encoding,
                jwk,
            }
        }

        /// The public JWK.
        pub fn jwk(&self) -> Value {
            self.jwk.clone()
        }
    }

    /// A JWKS document holding these keys' public parts.
    pub fn jwks(keys: &[&TestKey]) -> Vec<u8> {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk()).collect();
        serde_json::to_vec(&json!({ "keys": keys })).unwrap()
    }

    /// Builds a token shaped like a pod-bound projected token; each method changes one thing.
    pub struct TokenBuilder {
        header: Map<String, Value>,
        claims: Map<String, Value>,
    }

    impl TokenBuilder {
        /// A token for this service account, issued at [`NOW`] for an hour.
        pub fn for_sa(namespace: &str, name: &str) -> TokenBuilder {
            let claims = json!({
                "aud": [AUDIENCE],
                "exp": NOW + 3600,
                "iat": NOW,
                "iss": ISSUER,
                "jti": "1b2c3d4e-0000-4000-8000-000000000001",
                "kubernetes.io": {
                    "namespace": namespace,
                    "node": {"name": "node-1", "uid": "aaaaaaaa-0000-4000-8000-000000000002"},
                    "pod": {"name": format!("{name}-7d9f8c6b5-x2x4q"), "uid": "bbbbbbbb-0000-4000-8000-000000000003"},
                    "serviceaccount": {"name": name, "uid": UID},
                    "warnafter": NOW + 3607
                },
                "nbf": NOW,
                "sub": format!("system:serviceaccount:{namespace}:{name}"),
            });
            TokenBuilder {
                header: Map::new(),
                claims: claims.as_object().unwrap().clone(),
            }
        }

        /// Sets (or replaces) a claim.
        pub fn claim(mut self, name: &str, value: Value) -> TokenBuilder {
            self.claims.insert(name.to_string(), value);
            self
        }

        /// Removes a claim.
        pub fn without(mut self, name: &str) -> TokenBuilder {
            self.claims.remove(name);
            self
        }

        /// Changes one field inside the `kubernetes.io` claim, by JSON pointer (`/namespace`).
        pub fn kubernetes(mut self, pointer: &str, value: Value) -> TokenBuilder {
            let k8s = self.claims.get_mut("kubernetes.io").unwrap();
            *k8s.pointer_mut(pointer).unwrap() = value;
            self
        }

        /// Sets a header field (`kid: null` removes the key id).
        pub fn header(mut self, name: &str, value: Value) -> TokenBuilder {
            self.header.insert(name.to_string(), value);
            self
        }

        /// Expires this many seconds after [`NOW`] (negative: in the past).
        pub fn expires_in(self, secs: i64) -> TokenBuilder {
            let exp = NOW.checked_add_signed(secs).unwrap();
            self.claim("exp", exp.into())
        }

        fn encoded_parts(&self, alg: &str, kid: &str) -> String {
            let mut header = Map::new();
            header.insert("alg".into(), alg.into());
            header.insert("kid".into(), kid.into());
            for (k, v) in &self.header {
                if v.is_null() {
                    header.remove(k);
                } else {
                    header.insert(k.clone(), v.clone());
                }
            }
            format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&self.claims).unwrap())
            )
        }

        /// Signs with the key's algorithm and names its key id.
        pub fn sign(&self, key: &TestKey) -> String {
            let alg = serde_json::to_value(key.alg).unwrap();
            let message = self.encoded_parts(alg.as_str().unwrap(), &key.kid);
            let signature =
                jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding, key.alg).unwrap();
            format!("{message}.{signature}")
        }

        /// Header naming `alg` and `kid`, with an arbitrary signature (for refusals that come
        /// before any signature check).
        pub fn with_fake_signature(&self, alg: &str, kid: &str) -> String {
            format!("{}.c2lnbmF0dXJl", self.encoded_parts(alg, kid))
        }

        /// Signed with HMAC-SHA256 using `secret`, naming `kid`.
        pub fn sign_hs256(&self, secret: &[u8], kid: &str) -> String {
            let message = self.encoded_parts("HS256", kid);
            let key = EncodingKey::from_secret(secret);
            let signature =
                jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
            format!("{message}.{signature}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::{jwks, TestKey, TokenBuilder, AUDIENCE, ISSUER, NOW, UID};
    use super::*;
    use crate::identity::jwks::testing::{running_store, FakeFetcher, RunningStore};
    use crate::identity::jwks::{JwksSettings, JwksSource};
    use crate::metrics::Metrics;
    use crate::readiness::Readiness;
    use serde_json::json;
    use std::sync::OnceLock;

    /// The keys most tests use: the RSA key "rsa", a P-256 key "ec" and a P-384 key "ec384".
    fn keys() -> &'static (TestKey, TestKey, TestKey) {
        static KEYS: OnceLock<(TestKey, TestKey, TestKey)> = OnceLock::new();
        KEYS.get_or_init(|| {
            (
                TestKey::rsa("rsa"),
                TestKey::es256("ec"),
                TestKey::es384("ec384"),
            )
        })
    }

    fn validator_over(jwks_json: &[u8]) -> TokenValidator {
        let store = Arc::new(JwksStore::from_jwks_json(jwks_json).unwrap());
        TokenValidator::new(store, TokenSettings::new(ISSUER, AUDIENCE))
    }

    fn validator() -> TokenValidator {
        let (rsa, ec, ec384) = keys();
        validator_over(&jwks(&[rsa, ec, ec384]))
    }

    fn app() -> TokenBuilder {
        TokenBuilder::for_sa("team-a", "app")
    }

    fn refused(token: &str) -> TokenError {
        validator().validate(token, NOW).unwrap_err()
    }

    /// A validator over a store that fetched `initial` from a fake fetcher the test can change,
    /// with the store's refresher running (it runs the refetches) while the third value lives.
    fn remote_validator(initial: Vec<u8>) -> (TokenValidator, FakeFetcher, RunningStore) {
        let fetcher = FakeFetcher::serving(initial);
        let store = running_store(&fetcher, JwksSettings::default());
        let validator =
            TokenValidator::new(Arc::clone(&store), TokenSettings::new(ISSUER, AUDIENCE));
        (validator, fetcher, store)
    }

    // ---- accepted tokens ----

    #[test]
    fn rs256_pod_bound_token_is_accepted() {
        let token = app().sign(&keys().0);
        let identity = validator().validate(&token, NOW).unwrap();
        assert_eq!(
            identity,
            Identity {
                namespace: "team-a".into(),
                service_account: "app".into(),
                uid: UID.into(),
                expires_at: NOW + 3600,
                pod_name: Some("app-7d9f8c6b5-x2x4q".into()),
                pod_uid: Some("bbbbbbbb-0000-4000-8000-000000000003".into()),
                credential_id: Some("1b2c3d4e-0000-4000-8000-000000000001".into()),
            }
        );
    }

    #[test]
    fn the_jti_is_kept_for_the_log_printable_and_bounded_and_never_decides() {
        let key = &keys().0;
        let id = |b: TokenBuilder| {
            validator()
                .validate(&b.sign(key), NOW)
                .unwrap()
                .credential_id
        };
        assert_eq!(id(app().without("jti")), None);
        assert_eq!(id(app().claim("jti", json!(""))), None);
        // Not a string: not Kubernetes' form, but no reason to refuse the token.
        assert_eq!(id(app().claim("jti", json!(42))), None);
        assert_eq!(
            id(app().claim("jti", json!("ab\ncd\u{1b}[31m"))).as_deref(),
            Some("abcd[31m"),
            "control characters cannot forge log lines"
        );
        let long = "x".repeat(1000);
        assert_eq!(
            id(app().claim("jti", json!(long))).map(|j| j.len()),
            Some(MAX_CREDENTIAL_ID)
        );
    }

    #[test]
    fn es256_token_is_accepted() {
        let token = app().sign(&keys().1);
        assert_eq!(
            validator().validate(&token, NOW).unwrap().namespace,
            "team-a"
        );
    }

    #[test]
    fn es384_token_is_accepted() {
        let token = app().sign(&keys().2);
        assert!(validator().validate(&token, NOW).is_ok());
    }

    #[test]
    fn token_not_bound_to_a_pod_has_no_pod_name() {
        let token = app()
            .claim(
                "kubernetes.io",
                json!({"namespace": "team-a", "serviceaccount": {"name": "app", "uid": UID}}),
            )
            .sign(&keys().0);
        assert_eq!(validator().validate(&token, NOW).unwrap().pod_name, None);
    }

    #[test]
    fn audience_as_a_plain_string_is_accepted() {
        let token = app().claim("aud", json!(AUDIENCE)).sign(&keys().1);
        assert!(validator().validate(&token, NOW).is_ok());
    }

    #[test]
    fn audience_array_containing_ours_among_others_is_accepted() {
        let token = app()
            .claim("aud", json!(["https://kubernetes.default.svc", AUDIENCE]))
            .sign(&keys().1);
        assert!(validator().validate(&token, NOW).is_ok());
    }

    #[test]
    fn unknown_claims_are_ignored() {
        let token = app()
            .claim("attestations", json!({"x": [1, 2]}))
            .kubernetes("/warnafter", json!(1))
            .sign(&keys().1);
        assert!(validator().validate(&token, NOW).is_ok());
    }

    #[test]
    fn fractional_numeric_dates_are_accepted() {
        let token = app()
            .claim("exp", json!((NOW + 100) as f64 + 0.5))
            .sign(&keys().1);
        assert_eq!(
            validator().validate(&token, NOW).unwrap().expires_at,
            NOW + 100
        );
    }

    #[test]
    fn token_without_kid_is_tried_against_every_key_of_its_type() {
        let signer = TestKey::es256("signer");
        let other = TestKey::es256("other");
        let v = validator_over(&jwks(&[&keys().0, &other, &signer]));
        let token = app().header("kid", json!(null)).sign(&signer);
        assert!(v.validate(&token, NOW).is_ok());
    }

    /// Rule: a token without a key id is not tried against more than MAX_KEYS_WITHOUT_KID keys
    /// of its algorithm; keys of other algorithms do not count.
    #[test]
    fn token_without_kid_and_more_keys_of_its_type_than_the_bound_is_refused() {
        let ec: Vec<TestKey> = (0..=MAX_KEYS_WITHOUT_KID)
            .map(|i| TestKey::es256(&format!("ec-{i}")))
            .collect();
        let token = app().header("kid", json!(null)).sign(&ec[0]);
        let at_bound: Vec<&TestKey> = ec[..MAX_KEYS_WITHOUT_KID]
            .iter()
            .chain([&keys().0, &keys().2])
            .collect();
        assert!(validator_over(&jwks(&at_bound))
            .validate(&token, NOW)
            .is_ok());
        let beyond: Vec<&TestKey> = ec.iter().collect();
        assert_eq!(
            validator_over(&jwks(&beyond))
                .validate(&token, NOW)
                .unwrap_err(),
            TokenError::KidRequired {
                alg: SigningAlgorithm::Es256,
                keys: MAX_KEYS_WITHOUT_KID + 1
            }
        );
        // With a key id the size of the set does not matter.
        let token = app().sign(&ec[MAX_KEYS_WITHOUT_KID]);
        assert!(validator_over(&jwks(&beyond)).validate(&token, NOW).is_ok());
    }

    #[test]
    fn the_kid_required_line_is_written_at_most_once_a_minute() {
        let mut limit = LogLimit::default();
        let start = Instant::now();
        assert_eq!(limit.count(start), Some(1));
        for s in 1..60 {
            assert_eq!(limit.count(start + Duration::from_secs(s)), None);
        }
        assert_eq!(limit.count(start + Duration::from_secs(60)), Some(60));
        assert_eq!(limit.count(start + Duration::from_secs(61)), None);
    }

    #[test]
    fn token_without_kid_that_no_key_verifies_is_refused() {
        let stranger = TestKey::es256("stranger");
        let token = app().header("kid", json!(null)).sign(&stranger);
        assert_eq!(refused(&token), TokenError::BadSignature);
    }

    #[test]
    fn token_without_kid_and_no_key_of_its_type_is_refused() {
        let v = validator_over(&jwks(&[&keys().1]));
        let token = app().header("kid", json!(null)).sign(&keys().0);
        assert_eq!(
            v.validate(&token, NOW).unwrap_err().reason(),
            "token_key_algorithm_mismatch"
        );
    }

    // ---- algorithms and keys ----

    #[test]
    fn alg_none_is_refused() {
        let unsigned = app().with_fake_signature("none", "rsa");
        let unsigned = format!("{}.", unsigned.rsplit_once('.').unwrap().0);
        assert_eq!(
            refused(&unsigned),
            TokenError::UnsupportedAlgorithm { alg: "none".into() }
        );
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        // The classic confusion attack: the published RSA modulus used as an HMAC secret.
        let secret = serde_json::to_vec(&keys().0.jwk()).unwrap();
        let token = app().sign_hs256(&secret, "rsa");
        assert_eq!(refused(&token).reason(), "token_unsupported_algorithm");
    }

    #[test]
    fn algorithms_off_the_allow_list_are_refused() {
        for alg in [
            "HS384", "HS512", "RS384", "RS512", "PS256", "ES512", "EdDSA", "rs256", "",
        ] {
            let token = app().with_fake_signature(alg, "rsa");
            assert_eq!(
                refused(&token).reason(),
                "token_unsupported_algorithm",
                "{alg}"
            );
        }
    }

    #[test]
    fn ec_key_used_with_rs256_is_refused() {
        let token = app().with_fake_signature("RS256", "ec");
        assert_eq!(
            refused(&token),
            TokenError::KeyAlgorithmMismatch {
                alg: SigningAlgorithm::Rs256
            }
        );
    }

    #[test]
    fn rsa_key_used_with_es256_is_refused() {
        let token = app().with_fake_signature("ES256", "rsa");
        assert_eq!(refused(&token).reason(), "token_key_algorithm_mismatch");
    }

    #[test]
    fn p384_key_used_with_es256_is_refused() {
        let token = app().with_fake_signature("ES256", "ec384");
        assert_eq!(refused(&token).reason(), "token_key_algorithm_mismatch");
    }

    #[test]
    fn rsa_jwk_claiming_es256_is_never_used() {
        let mut jwk = keys().0.jwk();
        jwk["alg"] = "ES256".into();
        jwk["kid"] = "liar".into();
        let body = serde_json::to_vec(&json!({"keys": [jwk, keys().1.jwk()]})).unwrap();
        let (v, _, _refresher) = remote_validator(body);
        let token = app().with_fake_signature("ES256", "liar");
        assert_eq!(
            v.validate(&token, NOW).unwrap_err().reason(),
            "token_unknown_key"
        );
    }

    #[test]
    fn critical_header_extension_is_refused() {
        let token = app()
            .header("crit", json!(["b64"]))
            .header("b64", json!(false));
        assert_eq!(refused(&token.sign(&keys().1)), TokenError::Malformed);
    }

    #[test]
    fn key_embedded_in_the_header_is_not_used() {
        let attacker = TestKey::es256("ec");
        let token = app()
            .header("jwk", attacker.jwk())
            .header("jku", json!("https://attacker.example/jwks"))
            .sign(&attacker);
        assert_eq!(refused(&token), TokenError::BadSignature);
    }

    // ---- key ids and rotation ----

    #[test]
    fn unknown_kid_refetches_once_then_fails_as_unknown_key() {
        let (v, fetcher, _refresher) = remote_validator(jwks(&[&keys().1]));
        let stranger = TestKey::es256("stranger");
        let token = app().sign(&stranger);
        assert_eq!(
            v.validate(&token, NOW).unwrap_err(),
            TokenError::UnknownKey {
                kid: "stranger".into()
            }
        );
        assert_eq!(fetcher.calls(), 2, "initial load + one refetch");
        // Within the rate-limit interval, another unknown kid does not fetch again.
        let token = app().sign(&TestKey::es256("another"));
        assert_eq!(
            v.validate(&token, NOW).unwrap_err().reason(),
            "token_unknown_key"
        );
        assert_eq!(fetcher.calls(), 2);
    }

    #[test]
    fn rotated_key_is_found_by_refetch_on_unknown_kid() {
        let (v, fetcher, _refresher) = remote_validator(jwks(&[&keys().1]));
        let rotated = TestKey::es256("rotated");
        fetcher.serve(jwks(&[&keys().1, &rotated]));
        let token = app().sign(&rotated);
        assert!(v.validate(&token, NOW).is_ok());
        assert_eq!(fetcher.calls(), 2);
        // The key is now known: no further fetch.
        assert!(v.validate(&token, NOW).is_ok());
        assert_eq!(fetcher.calls(), 2);
    }

    #[test]
    fn known_kid_never_fetches() {
        let (v, fetcher, _refresher) = remote_validator(jwks(&[&keys().1]));
        for _ in 0..3 {
            v.validate(&app().sign(&keys().1), NOW).unwrap();
        }
        assert_eq!(fetcher.calls(), 1);
    }

    #[test]
    fn token_of_another_issuer_does_not_trigger_a_refetch() {
        let (v, fetcher, _refresher) = remote_validator(jwks(&[&keys().1]));
        let token = app()
            .claim("iss", json!("https://other-cluster.example"))
            .sign(&TestKey::es256("theirs"));
        assert_eq!(
            v.validate(&token, NOW).unwrap_err(),
            TokenError::WrongIssuer
        );
        assert_eq!(fetcher.calls(), 1);
    }

    #[test]
    fn keys_not_yet_loaded_are_reported() {
        let store = Arc::new(JwksStore::new(
            JwksSource::File("/nonexistent/jwks.json".into()),
            JwksSettings::default(),
            Arc::new(Metrics::default()),
            Arc::new(Readiness::default()),
        ));
        let v = TokenValidator::new(store, TokenSettings::new(ISSUER, AUDIENCE));
        let err = v.validate(&app().sign(&keys().1), NOW).unwrap_err();
        assert_eq!(err, TokenError::KeysUnavailable);
        assert_eq!(err.reason(), "jwks_unavailable");
    }

    // ---- signature ----

    /// Replaces a token's signature by `f` of its bytes.
    fn with_signature(token: &str, f: impl FnOnce(Vec<u8>) -> Vec<u8>) -> String {
        let (message, signature) = token.rsplit_once('.').unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(f(bytes)))
    }

    /// Rule: an RSA signature is exactly as long as the modulus; the same number with a leading
    /// zero byte, or cut short, does not verify.
    #[test]
    fn rsa_signature_of_the_wrong_length_is_refused() {
        let token = app().sign(&keys().0);
        assert!(validator().validate(&token, NOW).is_ok());
        let padded = with_signature(&token, |sig| [&[0u8][..], &sig].concat());
        assert_eq!(refused(&padded), TokenError::BadSignature);
        let short = with_signature(&token, |mut sig| {
            sig.pop();
            sig
        });
        assert_eq!(refused(&short), TokenError::BadSignature);
        assert_eq!(
            refused(&with_signature(&token, |_| Vec::new())),
            TokenError::BadSignature
        );
    }

    /// Rule: a JWS ECDSA signature is the fixed-size `r || s`; the same signature in DER (what
    /// X.509 and TLS use) is refused.
    #[test]
    fn ecdsa_signature_in_der_form_is_refused() {
        let token = app().sign(&keys().1);
        assert!(validator().validate(&token, NOW).is_ok());
        let der = with_signature(&token, |sig| {
            let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
            sig.to_der().as_bytes().to_vec()
        });
        assert_eq!(refused(&der), TokenError::BadSignature);
        let es384 = app().sign(&keys().2);
        let doubled = with_signature(&es384, |sig| [&sig[..], &sig].concat());
        assert_eq!(refused(&doubled), TokenError::BadSignature);
    }

    #[test]
    fn signature_that_is_not_base64url_is_malformed() {
        let token = app().sign(&keys().1);
        let (message, signature) = token.rsplit_once('.').unwrap();
        for bad in [
            format!("{signature}="),
            format!("{signature}!"),
            format!("+{signature}"),
        ] {
            assert_eq!(refused(&format!("{message}.{bad}")), TokenError::Malformed);
        }
    }

    #[test]
    fn tampered_payload_is_refused() {
        let token = app().sign(&keys().0);
        let forged_claims = app().claim("sub", json!("system:serviceaccount:kube-system:admin"));
        let forged = forged_claims.with_fake_signature("RS256", "rsa");
        let (forged_message, _) = forged.rsplit_once('.').unwrap();
        let (_, signature) = token.rsplit_once('.').unwrap();
        let spliced = format!("{forged_message}.{signature}");
        assert_eq!(refused(&spliced), TokenError::BadSignature);
    }

    #[test]
    fn token_signed_by_another_key_under_a_known_kid_is_refused() {
        let impostor = TestKey::es256("ec");
        assert_eq!(refused(&app().sign(&impostor)), TokenError::BadSignature);
    }

    // ---- issuer and audience ----

    #[test]
    fn wrong_issuer_is_refused() {
        let token = app()
            .claim("iss", json!("https://evil.example"))
            .sign(&keys().1);
        assert_eq!(refused(&token).reason(), "token_wrong_issuer");
    }

    #[test]
    fn issuer_is_compared_exactly() {
        let token = app()
            .claim("iss", json!(format!("{ISSUER}/")))
            .sign(&keys().1);
        assert_eq!(refused(&token), TokenError::WrongIssuer);
    }

    #[test]
    fn missing_issuer_is_refused() {
        let token = app().without("iss").sign(&keys().1);
        assert_eq!(refused(&token), TokenError::WrongIssuer);
    }

    #[test]
    fn wrong_audience_is_refused() {
        let token = app()
            .claim("aud", json!(["https://kubernetes.default.svc"]))
            .sign(&keys().1);
        assert_eq!(refused(&token).reason(), "token_wrong_audience");
    }

    #[test]
    fn audience_as_a_wrong_plain_string_is_refused() {
        let token = app().claim("aud", json!("other")).sign(&keys().1);
        assert_eq!(refused(&token), TokenError::WrongAudience);
    }

    #[test]
    fn empty_audience_is_refused() {
        let token = app().claim("aud", json!([])).sign(&keys().1);
        assert_eq!(refused(&token), TokenError::WrongAudience);
    }

    #[test]
    fn missing_audience_is_refused() {
        let token = app().without("aud").sign(&keys().1);
        assert_eq!(refused(&token), TokenError::WrongAudience);
    }

    /// Rule: an `aud` that is neither a string nor an array of only strings is a wrong audience
    /// (checked after the signature), not a malformed token, even when it holds ours.
    #[test]
    fn audience_of_another_shape_is_refused_as_wrong_audience() {
        for aud in [
            json!(null),
            json!(7),
            json!(true),
            json!({ AUDIENCE: true }),
            json!([AUDIENCE, 1]),
            json!([[AUDIENCE]]),
            json!([null, AUDIENCE]),
        ] {
            let token = app().claim("aud", aud.clone()).sign(&keys().1);
            assert_eq!(refused(&token), TokenError::WrongAudience, "{aud}");
            let unsigned = app()
                .claim("aud", aud.clone())
                .with_fake_signature("ES256", "ec");
            assert_eq!(refused(&unsigned), TokenError::BadSignature, "{aud}");
        }
    }

    /// Rule: `exp` and `aud` are checked after the signature: a token missing them that does
    /// not verify is a bad signature.
    #[test]
    fn claims_checked_after_the_signature_are_not_reported_for_a_forged_token() {
        let forged = app().without("aud").without("exp");
        assert_eq!(
            refused(&forged.with_fake_signature("RS256", "rsa")),
            TokenError::BadSignature
        );
        assert_eq!(
            refused(&forged.sign(&keys().0)),
            TokenError::MissingExpiry,
            "exp is checked before aud"
        );
    }

    // ---- time ----

    #[test]
    fn missing_expiry_is_refused() {
        let token = app().without("exp").sign(&keys().1);
        assert_eq!(refused(&token).reason(), "token_missing_expiry");
    }

    #[test]
    fn expired_token_is_refused() {
        let token = app().expires_in(-61).sign(&keys().1);
        assert_eq!(
            refused(&token),
            TokenError::Expired {
                expired_at: NOW - 61
            }
        );
    }

    #[test]
    fn token_expired_within_the_leeway_is_accepted() {
        let token = app().expires_in(-60).sign(&keys().1);
        assert!(validator().validate(&token, NOW).is_ok());
    }

    #[test]
    fn leeway_is_configurable() {
        let (rsa, ec, _) = keys();
        let store = Arc::new(JwksStore::from_jwks_json(&jwks(&[rsa, ec])).unwrap());
        let settings = TokenSettings {
            leeway: Duration::ZERO,
            ..TokenSettings::new(ISSUER, AUDIENCE)
        };
        let v = TokenValidator::new(store, settings);
        let token = app().expires_in(-1).sign(ec);
        assert_eq!(
            v.validate(&token, NOW).unwrap_err().reason(),
            "token_expired"
        );
    }

    #[test]
    fn not_yet_valid_token_is_refused() {
        let token = app().claim("nbf", json!(NOW + 61)).sign(&keys().1);
        assert_eq!(
            refused(&token),
            TokenError::NotYetValid {
                not_before: NOW + 61
            }
        );
    }

    #[test]
    fn not_before_within_the_leeway_is_accepted() {
        let token = app().claim("nbf", json!(NOW + 60)).sign(&keys().1);
        assert!(validator().validate(&token, NOW).is_ok());
    }

    #[test]
    fn token_issued_in_the_future_is_refused() {
        let token = app()
            .claim("iat", json!(NOW + 3600))
            .claim("nbf", json!(NOW))
            .sign(&keys().1);
        assert_eq!(refused(&token).reason(), "token_issued_in_future");
    }

    #[test]
    fn negative_expiry_is_refused() {
        let token = app().claim("exp", json!(-5)).sign(&keys().1);
        assert_eq!(refused(&token), TokenError::MissingExpiry);
    }

    /// Rule: `exp` counts only as a number from 0 up to 2^64 seconds; beyond, or negative in any
    /// form, it counts as missing. A far-future one is accepted.
    #[test]
    fn expiry_outside_the_range_of_a_numeric_date_counts_as_missing() {
        for exp in [
            json!(-5.5),
            json!(-1e-9),
            json!(1e20),
            json!(18446744073709551616.0),
        ] {
            let token = app().claim("exp", exp.clone()).sign(&keys().1);
            assert_eq!(refused(&token), TokenError::MissingExpiry, "{exp}");
        }
        for (exp, want) in [
            (json!(u64::MAX), u64::MAX),
            (json!(1e19), 10_000_000_000_000_000_000),
        ] {
            let token = app().claim("exp", exp).sign(&keys().1);
            assert_eq!(validator().validate(&token, NOW).unwrap().expires_at, want);
        }
        let token = app().claim("exp", json!("soon")).sign(&keys().1);
        assert_eq!(refused(&token), TokenError::Malformed);
    }

    // ---- kubernetes claims and subject ----

    #[test]
    fn missing_kubernetes_claim_is_refused() {
        let token = app().without("kubernetes.io").sign(&keys().1);
        assert_eq!(refused(&token).reason(), "token_missing_kubernetes_claims");
    }

    #[test]
    fn empty_namespace_is_refused() {
        let token = app().kubernetes("/namespace", json!("")).sign(&keys().1);
        assert_eq!(refused(&token), TokenError::MissingKubernetesClaims);
    }

    #[test]
    fn missing_service_account_name_is_refused() {
        let token = app()
            .kubernetes("/serviceaccount", json!({"uid": UID}))
            .sign(&keys().1);
        assert_eq!(refused(&token), TokenError::MissingKubernetesClaims);
    }

    #[test]
    fn missing_service_account_uid_is_refused() {
        let token = app()
            .kubernetes("/serviceaccount/uid", json!(""))
            .sign(&keys().1);
        assert_eq!(refused(&token), TokenError::MissingKubernetesClaims);
    }

    #[test]
    fn subject_of_another_service_account_is_refused() {
        let token = app()
            .claim("sub", json!("system:serviceaccount:team-a:admin"))
            .sign(&keys().1);
        assert_eq!(refused(&token).reason(), "token_subject_mismatch");
    }

    #[test]
    fn subject_split_differently_is_refused() {
        // "team-a:app" could also read as namespace "team" + name "a:app"; only the exact
        // composition of the kubernetes.io claim counts.
        let token = app()
            .kubernetes("/namespace", json!("team"))
            .kubernetes("/serviceaccount/name", json!("a:app"))
            .claim("sub", json!("system:serviceaccount:team-a:app"))
            .sign(&keys().1);
        assert_eq!(refused(&token), TokenError::SubjectMismatch);
    }

    #[test]
    fn missing_subject_is_refused() {
        let token = app().without("sub").sign(&keys().1);
        assert_eq!(refused(&token), TokenError::SubjectMismatch);
    }

    // ---- legacy tokens ----

    #[test]
    fn legacy_issuer_is_refused_as_legacy() {
        let token = TokenBuilder::for_sa("team-a", "app")
            .claim("iss", json!(LEGACY_ISSUER))
            .without("aud")
            .without("exp")
            .without("kubernetes.io")
            .sign(&keys().0);
        assert_eq!(refused(&token).reason(), "token_legacy");
    }

    #[test]
    fn legacy_flat_claims_are_refused_as_legacy() {
        let token = app()
            .claim("kubernetes.io/serviceaccount/namespace", json!("team-a"))
            .claim(
                "kubernetes.io/serviceaccount/secret.name",
                json!("app-token-x7k2p"),
            )
            .claim(
                "kubernetes.io/serviceaccount/service-account.name",
                json!("app"),
            )
            .claim(
                "kubernetes.io/serviceaccount/service-account.uid",
                json!(UID),
            )
            .sign(&keys().0);
        assert_eq!(refused(&token), TokenError::LegacyToken);
    }

    // ---- malformed input ----

    #[test]
    fn oversize_token_is_refused_before_parsing() {
        let token = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            refused(&token),
            TokenError::TooLarge {
                len: MAX_TOKEN_BYTES + 1
            }
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = app().sign(&keys().1);
        let (header, rest) = good.split_once('.').unwrap();
        let (payload, signature) = rest.split_once('.').unwrap();
        let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let cases = [
            String::new(),
            "abc".to_string(),
            format!("{header}.{payload}"),
            format!("{good}.extra"),
            format!(".{payload}.{signature}"),
            format!("{header}..{signature}"),
            format!("{header}.{payload}!.{signature}"),
            format!("{header}=.{payload}.{signature}"),
            format!("{}.{payload}.{signature}", b64("not json")),
            format!("{}.{payload}.{signature}", b64("[1]")),
            format!("{header}.{}.{signature}", b64("{\"iss\": ")),
            format!("{header}.{}.{signature}", b64("{\"iss\": 5}")),
            format!("{header}.{payload}.{signature}!"),
            format!("{{\"alg\":\"RS256\"}}.{payload}.{signature}"),
        ];
        for token in &cases {
            assert_eq!(refused(token), TokenError::Malformed, "{token}");
        }
    }

    // ---- errors ----

    fn every_error() -> Vec<TokenError> {
        vec![
            TokenError::Malformed,
            TokenError::TooLarge { len: 1 },
            TokenError::UnsupportedAlgorithm { alg: "x".into() },
            TokenError::KeyAlgorithmMismatch {
                alg: SigningAlgorithm::Rs256,
            },
            TokenError::UnknownKey { kid: "k".into() },
            TokenError::KidRequired {
                alg: SigningAlgorithm::Es256,
                keys: 5,
            },
            TokenError::BadSignature,
            TokenError::Expired { expired_at: 1 },
            TokenError::NotYetValid { not_before: 1 },
            TokenError::IssuedInFuture { issued_at: 1 },
            TokenError::WrongIssuer,
            TokenError::WrongAudience,
            TokenError::MissingExpiry,
            TokenError::MissingKubernetesClaims,
            TokenError::SubjectMismatch,
            TokenError::LegacyToken,
            TokenError::KeysUnavailable,
        ]
    }

    #[test]
    fn reasons_are_distinct_snake_case_labels() {
        let reasons: Vec<&str> = every_error().iter().map(|e| e.reason()).collect();
        let mut unique = reasons.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), reasons.len());
        for r in reasons {
            assert!(
                r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{r}"
            );
        }
        for e in every_error() {
            let text = e.to_string();
            assert!(
                !text.is_empty() && !text.starts_with(char::is_uppercase),
                "{text}"
            );
        }
    }

    #[test]
    fn log_texts_read_as_documented() {
        let texts: Vec<String> = every_error().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            texts,
            [
                "malformed token",
                "token of 1 bytes exceeds 16384",
                r#"unsupported signing algorithm "x""#,
                "no key of a type that verifies RS256",
                r#"unknown key id "k""#,
                "no key id, and the key set has 5 ES256 keys (at most 4 are tried without one)",
                "bad signature",
                "token expired at 1",
                "token not valid before 1",
                "token issued in the future at 1",
                "wrong issuer",
                "audience not accepted",
                "token has no expiry",
                "missing kubernetes.io service account claims",
                "subject does not match service account",
                "legacy secret-based token",
                "no signing keys loaded",
            ]
        );
    }

    #[test]
    fn log_text_never_contains_the_token() {
        let tokens = [
            app().expires_in(-3600).sign(&keys().1),
            app().claim("aud", json!("x")).sign(&keys().1),
            app().sign(&TestKey::es256("unknown-key")),
            app().with_fake_signature("HS256", "rsa"),
        ];
        for token in &tokens {
            let err = refused(token);
            let text = format!("{err} {err:?}");
            let (header, rest) = token.split_once('.').unwrap();
            let (payload, signature) = rest.split_once('.').unwrap();
            for part in [header, payload, signature] {
                assert!(!text.contains(part), "{text}");
            }
        }
    }

    #[test]
    fn attacker_controlled_strings_in_errors_are_shortened_and_printable() {
        let kid = format!("evil\nkid{}", "x".repeat(500));
        let token = app().with_fake_signature("RS256", &kid);
        match refused(&token) {
            TokenError::UnknownKey { kid } => {
                assert!(kid.len() <= 64 && !kid.contains('\n'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn claimed_service_account_is_read_for_logs_only_when_it_looks_sane() {
        let token = app().expires_in(-3600).sign(&keys().1);
        assert_eq!(
            claimed_service_account(&token).unwrap().to_string(),
            "team-a/app"
        );
        let odd = app()
            .kubernetes("/namespace", json!("Team A\n"))
            .sign(&keys().1);
        assert_eq!(claimed_service_account(&odd), None);
        let no_k8s = app().without("kubernetes.io").sign(&keys().1);
        assert_eq!(
            claimed_service_account(&no_k8s).unwrap().to_string(),
            "team-a/app"
        );
        assert_eq!(claimed_service_account("garbage"), None);
    }
}
