//! The JWKS store: the public keys that sign service-account tokens, loaded from a file or a URL,
//! refreshed in the background and refetched (rate-limited) when a token names an unknown key id.
//!
//! Keys are parsed once per load into ready-to-use [`jsonwebtoken::DecodingKey`]s and handed out as
//! an [`Arc<KeySet>`], so validating a token costs one read lock and one reference-count increment.
//! A failed load never replaces a good key set: the last good set stays in use.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use jsonwebtoken::DecodingKey;
use log::{debug, info, warn};
use parking_lot::{Condvar, Mutex, RwLock};
use serde::Deserialize;

use crate::backoff::{Backoff, BackoffSettings};
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::redact::redact_url;

/// Largest JWKS document accepted, from a file or over HTTP (1 MiB).
pub const MAX_JWKS_BYTES: u64 = 1024 * 1024;

/// Smallest RSA modulus accepted; weaker keys are skipped when the set is loaded.
const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted: the verifier behind `jsonwebtoken` refuses larger ones, so such a
/// key would fail every signature check instead of being reported once at load time.
const MAX_RSA_BITS: usize = 4096;
/// The RSA verifier refuses public exponents above 2^33 - 1.
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

    /// The same algorithm as `jsonwebtoken` names it.
    pub fn to_jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            SigningAlgorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            SigningAlgorithm::Es256 => jsonwebtoken::Algorithm::ES256,
            SigningAlgorithm::Es384 => jsonwebtoken::Algorithm::ES384,
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
    /// The only algorithm a key of this type verifies.
    pub fn algorithm(self) -> SigningAlgorithm {
        match self {
            KeyType::Rsa { .. } => SigningAlgorithm::Rs256,
            KeyType::EcP256 => SigningAlgorithm::Es256,
            KeyType::EcP384 => SigningAlgorithm::Es384,
        }
    }
}

/// One public key from the JWKS, parsed and checked once when the set is loaded.
#[derive(Debug)]
pub struct VerificationKey {
    kid: Option<String>,
    key_type: KeyType,
    decoding: DecodingKey,
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

    /// The parsed key, ready for `jsonwebtoken::decode`.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
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
            let raw: RawJwk = match serde_json::from_value(value) {
                Ok(raw) => raw,
                Err(_) => {
                    warn!("jwks: skipping key {label}: a field has the wrong type");
                    skipped += 1;
                    continue;
                }
            };
            match parse_key(raw) {
                Ok(key) => {
                    if let Some(kid) = &key.kid {
                        if set.by_kid.contains_key(kid) {
                            warn!(
                                "jwks: skipping key {label}: its key id is used by an earlier key"
                            );
                            skipped += 1;
                            continue;
                        }
                        set.by_kid.insert(kid.clone(), set.keys.len());
                    }
                    set.keys.push(key);
                }
                Err(why) => {
                    warn!("jwks: skipping key {label}: {why}");
                    skipped += 1;
                }
            }
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKeys { skipped });
        }
        Ok(set)
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

/// How a key is named in log lines: its key id when it has a readable one, else its position.
fn key_label(value: &serde_json::Value, index: usize) -> String {
    match value.get("kid").and_then(|k| k.as_str()) {
        Some(kid) => format!("{:?}", printable(kid, 80)),
        None => format!("#{index} (no kid)"),
    }
}

fn parse_key(raw: RawJwk) -> Result<VerificationKey, String> {
    // Only signature keys: a key published for encryption must not verify tokens.
    if let Some(usage) = raw.use_.as_deref() {
        if usage != "sig" {
            return Err(format!("use is {:?}, not \"sig\"", printable(usage, 16)));
        }
    }
    if let Some(ops) = &raw.key_ops {
        if !ops.iter().any(|op| op == "verify") {
            return Err("key_ops does not include \"verify\"".to_string());
        }
    }
    if raw.d.is_some() {
        // Not refused (the public part is all we use), but the publisher is leaking a private key.
        warn!("jwks: a key in the set contains private key material; only its public part is used");
    }
    let kty = raw.kty.as_deref().ok_or("no kty")?;
    let (key_type, decoding) = match kty {
        "RSA" => parse_rsa(&raw)?,
        "EC" => parse_ec(&raw)?,
        other => return Err(format!("unsupported key type {:?}", printable(other, 16))),
    };
    // A JWK that names an algorithm must name the one its type verifies: an RSA JWK claiming
    // ES256 (or a P-256 key claiming ES384) is inconsistent and is not used at all.
    if let Some(alg) = raw.alg.as_deref() {
        if alg != key_type.algorithm().name() {
            return Err(format!(
                "alg {:?} does not match a {} key",
                printable(alg, 16),
                key_type_name(key_type)
            ));
        }
    }
    Ok(VerificationKey {
        kid: raw.kid,
        key_type,
        decoding,
    })
}

fn key_type_name(key_type: KeyType) -> &'static str {
    match key_type {
        KeyType::Rsa { .. } => "RSA",
        KeyType::EcP256 => "P-256",
        KeyType::EcP384 => "P-384",
    }
}

fn decode_component(value: Option<&String>, name: &str) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("no {name}"))?;
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| format!("{name} is not base64url"))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn parse_rsa(raw: &RawJwk) -> Result<(KeyType, DecodingKey), String> {
    let n = decode_component(raw.n.as_ref(), "n")?;
    let e = decode_component(raw.e.as_ref(), "e")?;
    let modulus = strip_leading_zeros(&n);
    let bits = match modulus.first() {
        Some(&top) => modulus.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    };
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(format!(
            "RSA modulus of {bits} bits is outside {MIN_RSA_BITS}..={MAX_RSA_BITS}"
        ));
    }
    let exponent = strip_leading_zeros(&e);
    if exponent.len() > 8 {
        return Err("RSA exponent is too large".to_string());
    }
    let exponent_value = exponent
        .iter()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if exponent_value < 3 || exponent_value % 2 == 0 || exponent_value > MAX_RSA_EXPONENT {
        return Err("RSA exponent is not an odd number in 3..2^33".to_string());
    }
    Ok((
        KeyType::Rsa { bits },
        DecodingKey::from_rsa_raw_components(modulus, exponent),
    ))
}

fn parse_ec(raw: &RawJwk) -> Result<(KeyType, DecodingKey), String> {
    let crv = raw.crv.as_deref().ok_or("no crv")?;
    let (key_type, coordinate_len) = match crv {
        "P-256" => (KeyType::EcP256, 32),
        "P-384" => (KeyType::EcP384, 48),
        other => return Err(format!("unsupported curve {:?}", printable(other, 16))),
    };
    let x = decode_component(raw.x.as_ref(), "x")?;
    let y = decode_component(raw.y.as_ref(), "y")?;
    if x.len() != coordinate_len || y.len() != coordinate_len {
        return Err(format!(
            "{crv} coordinates must be {coordinate_len} bytes each"
        ));
    }
    let mut point = Vec::with_capacity(1 + 2 * coordinate_len);
    point.push(0x04); // SEC1 uncompressed point: 0x04 || x || y
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    // `from_ec_der` takes the SEC1 point bytes, despite its name (as `from_ec_components` builds them).
    let decoding = DecodingKey::from_ec_der(&point);
    // Build the verifier once now: it refuses a point that is not on the curve, so such a key is
    // reported here instead of failing every signature check later.
    if jsonwebtoken::crypto::verify("", b"", &decoding, key_type.algorithm().to_jwt()).is_err() {
        return Err(format!("the point is not on {crv}"));
    }
    Ok((key_type, decoding))
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

/// At most `max` characters of `s`, with control characters dropped: safe to put in a log line
/// even when the string came from an unauthenticated client.
pub(crate) fn printable(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// Why a key set could not be loaded.
#[derive(Debug)]
pub enum JwksError {
    /// The fetcher failed; its message (never containing credentials).
    Fetch(String),
    /// The key file could not be read.
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// The document is larger than [`MAX_JWKS_BYTES`].
    TooLarge,
    /// The document is not a JSON object with a `keys` array.
    NotAJwks {
        /// Where parsing failed (no document content).
        detail: String,
    },
    /// No key in the document is usable.
    NoUsableKeys {
        /// How many keys were skipped.
        skipped: usize,
    },
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::Fetch(msg) => write!(f, "fetch failed: {msg}"),
            JwksError::ReadFile { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            JwksError::TooLarge => write!(f, "key set is larger than {MAX_JWKS_BYTES} bytes"),
            JwksError::NotAJwks { detail } => write!(f, "not a JWKS document: {detail}"),
            JwksError::NoUsableKeys { skipped } => {
                write!(f, "no usable key in the key set ({skipped} skipped)")
            }
        }
    }
}

impl std::error::Error for JwksError {}

/// A JWKS document as fetched, with how long the server says it may be cached.
#[derive(Clone, Debug)]
pub struct FetchedJwks {
    /// The response body.
    pub body: Vec<u8>,
    /// The `Cache-Control: max-age`, if the response had one (see [`parse_max_age`]).
    pub max_age: Option<Duration>,
}

/// Something that fetches a JWKS document over the network.
pub trait JwksFetcher: Send + Sync {
    /// Fetches the document once; the error message must not contain credentials.
    fn fetch(&self) -> Result<FetchedJwks, String>;
    /// Where the keys come from, for log lines: a URL without credentials.
    fn describe(&self) -> String;
}

/// Where the key set comes from.
pub enum JwksSource {
    /// A file, re-read when its modification time, length or inode changes. The path is opened
    /// and stat-ed anew each time, so a Kubernetes volume that swaps its `..data` symlink is followed.
    File(PathBuf),
    /// A network endpoint.
    Remote(Box<dyn JwksFetcher>),
    /// A fixed document given in memory (configuration or tests); never changes.
    Inline(Vec<u8>),
}

impl JwksSource {
    /// Where the keys come from, for log lines.
    pub fn describe(&self) -> String {
        match self {
            JwksSource::File(path) => format!("file {}", path.display()),
            JwksSource::Remote(fetcher) => fetcher.describe(),
            JwksSource::Inline(_) => "inline key set".to_string(),
        }
    }
}

impl fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Timing of loads, refreshes and refetches.
#[derive(Clone, Debug)]
pub struct JwksSettings {
    /// Refresh period when the source gives no `max-age` (default 1 h).
    pub default_refresh: Duration,
    /// Shortest refresh period, whatever `max-age` says (default 1 min).
    pub min_refresh: Duration,
    /// Longest refresh period, whatever `max-age` says (default 24 h).
    pub max_refresh: Duration,
    /// At most one refetch for an unknown key id per this interval (default 60 s).
    pub min_refetch_interval: Duration,
    /// How long a validation waits for a refetch another caller started (default 10 s).
    pub refetch_wait: Duration,
    /// How often a key file is stat-ed for changes (default 2 s).
    pub file_poll: Duration,
    /// First retry delay after a failed load (default 500 ms), doubled on each failure.
    pub initial_backoff: Duration,
    /// Longest retry delay after failed loads (default 30 s).
    pub max_backoff: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            default_refresh: Duration::from_secs(3600),
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(24 * 3600),
            min_refetch_interval: Duration::from_secs(60),
            // Callers of an unknown-kid refetch are workers answering a server that waits at most
            // its auth timeout (2 s by default): waiting longer only ties the worker up.
            refetch_wait: Duration::from_secs(2),
            file_poll: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl JwksSettings {
    /// The refresh period for a load that reported this `max-age`, clamped to the sane range.
    pub fn refresh_interval(&self, max_age: Option<Duration>) -> Duration {
        // max/min rather than clamp: clamp panics when a misconfiguration inverts the bounds.
        max_age
            .unwrap_or(self.default_refresh)
            .max(self.min_refresh)
            .min(self.max_refresh)
    }
}

/// Whether a load re-reads an unchanged key file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoadKind {
    /// Skip the read when the file's stamp is unchanged (the periodic poll).
    IfChanged,
    /// Always read or fetch.
    Always,
}

/// What a successful load did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoadOutcome {
    /// The key file has not changed since the last read.
    Unchanged,
    /// A key set was loaded and installed.
    Loaded { max_age: Option<Duration> },
}

/// Identity of a file's content as far as `stat` can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    device: u64,
    inode: u64,
}

fn file_stamp(path: &Path) -> io::Result<FileStamp> {
    // `metadata` follows symlinks, so after a `..data` swap this is the new file's inode.
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    let (device, inode) = {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    };
    #[cfg(not(unix))]
    let (device, inode) = (0, 0);
    Ok(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        device,
        inode,
    })
}

fn read_limited(path: &Path) -> Result<Vec<u8>, JwksError> {
    let read_error = |error| JwksError::ReadFile {
        path: path.to_path_buf(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut body = Vec::new();
    file.take(MAX_JWKS_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(read_error)?;
    if body.len() as u64 > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge);
    }
    Ok(body)
}

/// State that only a load touches; its mutex also makes loads one at a time, so an older fetch
/// can never overwrite the result of a newer one.
#[derive(Default)]
struct LoadState {
    file_stamp: Option<FileStamp>,
}

/// Bookkeeping for refetches on an unknown key id.
#[derive(Default)]
struct RefetchGate {
    /// When the last refetch started (the rate limit counts from there, failed or not).
    last_started: Option<Instant>,
    /// A refetch is running; other callers wait for it instead of starting their own.
    in_flight: bool,
    /// Number of refetches finished, so waiters can tell theirs has completed.
    completed: u64,
}

/// The current key set and everything needed to keep it current.
pub struct JwksStore {
    source: JwksSource,
    settings: JwksSettings,
    current: RwLock<Arc<KeySet>>,
    loaded: AtomicBool,
    load_state: Mutex<LoadState>,
    refetch: Mutex<RefetchGate>,
    refetch_done: Condvar,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

impl fmt::Debug for JwksStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksStore")
            .field("source", &self.source)
            .field("keys", &self.current.read().kids())
            .finish()
    }
}

impl JwksStore {
    /// A store with no keys yet; [`JwksStore::spawn_refresher`] loads them (or call
    /// [`JwksStore::reload`]).
    pub fn new(
        source: JwksSource,
        settings: JwksSettings,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> JwksStore {
        JwksStore {
            source,
            settings,
            current: RwLock::new(Arc::new(KeySet::empty())),
            loaded: AtomicBool::new(false),
            load_state: Mutex::new(LoadState::default()),
            refetch: Mutex::new(RefetchGate::default()),
            refetch_done: Condvar::new(),
            metrics,
            readiness,
        }
    }

    /// A loaded store over a fixed JWKS document, with default settings and its own metrics and
    /// readiness: for tests and tools, no thread needed.
    pub fn from_jwks_json(json: &[u8]) -> Result<JwksStore, JwksError> {
        let store = JwksStore::new(
            JwksSource::Inline(json.to_vec()),
            JwksSettings::default(),
            Arc::new(Metrics::default()),
            Arc::new(Readiness::default()),
        );
        store.reload()?;
        Ok(store)
    }

    /// The key set in use (empty until the first successful load).
    pub fn keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read())
    }

    /// Whether a key set has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
    }

    /// Loads the key set from the source now (re-reading a file even if unchanged); returns the
    /// number of keys. A failure is counted and logged, and the last good set stays in use.
    pub fn reload(&self) -> Result<usize, JwksError> {
        self.load(LoadKind::Always)?;
        Ok(self.keys().len())
    }

    /// Called when a token names a key id that is not in the set: refetches the key set, at most
    /// once per `min_refetch_interval` and one refetch at a time (other callers wait for the
    /// running one, up to `refetch_wait`), then returns the set in use.
    pub fn refetch_for_unknown_kid(&self, kid: &str) -> Arc<KeySet> {
        // The set may have changed since the caller looked (a refresh or another refetch).
        let current = self.keys();
        if current.get(kid).is_some() {
            return current;
        }
        drop(current);
        let mut gate = self.refetch.lock();
        if gate.in_flight {
            // Someone is already refetching: wait for that result rather than fetching again.
            let seen = gate.completed;
            let deadline = Instant::now() + self.settings.refetch_wait;
            while gate.completed == seen {
                if self
                    .refetch_done
                    .wait_until(&mut gate, deadline)
                    .timed_out()
                {
                    break;
                }
            }
            drop(gate);
            return self.keys();
        }
        // Rate limit: a client sending random key ids must not turn into a stream of fetches.
        if let Some(last) = gate.last_started {
            if last.elapsed() < self.settings.min_refetch_interval {
                debug!(
                    "jwks: unknown key id {:?}; last refetch was too recent, not refetching",
                    printable(kid, 80)
                );
                drop(gate);
                return self.keys();
            }
        }
        gate.in_flight = true;
        gate.last_started = Some(Instant::now());
        drop(gate);
        // Clears `in_flight` and wakes the waiters even if the load panics.
        let _finish = RefetchFinished { store: self };
        info!(
            "jwks: token names unknown key id {:?}; refetching the key set from {}",
            printable(kid, 80),
            self.source.describe()
        );
        // A failure is logged and counted by `load`; the last good set stays.
        let _ = self.load(LoadKind::Always);
        self.keys()
    }

    /// Starts the thread that loads the key set (retrying with backoff until the first success),
    /// refreshes it at the `max-age` or the default period and polls a key file for changes. It
    /// stops when `stop` receives a message or is disconnected.
    pub fn spawn_refresher(self: &Arc<Self>, stop: Receiver<()>) -> JoinHandle<()> {
        let store = Arc::clone(self);
        // Why this thread exists: the first load must be retried until it succeeds, and the set
        // must follow rotation without any request waiting for it.
        std::thread::spawn(move || store.run_refresher(&stop))
    }

    /// The refresher thread: one step, then sleep on the stop channel until the next step is due.
    fn run_refresher(&self, stop: &Receiver<()>) {
        let mut schedule = Schedule::new(&self.settings);
        loop {
            let wait = self.refresh_step(&mut schedule);
            match stop.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        debug!("jwks: refresher stopped");
    }

    /// Does whatever load is due and returns how long to sleep before the next step.
    fn refresh_step(&self, schedule: &mut Schedule) -> Duration {
        let now = Instant::now();
        if now < schedule.next_attempt {
            return schedule.next_attempt - now;
        }
        let is_file = matches!(self.source, JwksSource::File(_));
        let kind = if is_file && self.is_loaded() && now < schedule.next_full_load {
            LoadKind::IfChanged
        } else {
            LoadKind::Always
        };
        let result = self.load(kind);
        let now = Instant::now();
        match result {
            Ok(LoadOutcome::Unchanged) => schedule.next_attempt = now + self.settings.file_poll,
            Ok(LoadOutcome::Loaded { max_age }) => {
                schedule.backoff.reset();
                let every = self.settings.refresh_interval(max_age);
                schedule.next_full_load = now + every;
                schedule.next_attempt = if is_file {
                    now + self.settings.file_poll
                } else {
                    now + every
                };
            }
            Err(_) => {
                schedule.next_attempt = now + schedule.backoff.delay(now, None, centred_jitter())
            }
        }
        schedule.next_attempt.saturating_duration_since(now)
    }

    /// One load from the source, counted in the metrics and logged.
    fn load(&self, kind: LoadKind) -> Result<LoadOutcome, JwksError> {
        let mut state = self.load_state.lock();
        match self.load_locked(kind, &mut state) {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                self.metrics.jwks_refresh_failures.inc();
                if self.is_loaded() {
                    warn!(
                        "jwks: loading keys from {} failed: {e}; keeping the last good key set",
                        self.source.describe()
                    );
                } else {
                    warn!(
                        "jwks: loading keys from {} failed: {e}; not ready until a key set loads",
                        self.source.describe()
                    );
                }
                Err(e)
            }
        }
    }

    fn load_locked(&self, kind: LoadKind, state: &mut LoadState) -> Result<LoadOutcome, JwksError> {
        let (body, max_age) = match &self.source {
            JwksSource::File(path) => {
                let stamp = file_stamp(path).map_err(|error| JwksError::ReadFile {
                    path: path.clone(),
                    error,
                })?;
                if kind == LoadKind::IfChanged && state.file_stamp == Some(stamp) {
                    return Ok(LoadOutcome::Unchanged);
                }
                // Stat before read: if the file changes in between, the next poll sees a new
                // stamp and reads again. The stamp is kept even if parsing fails, so a broken
                // file is reported once per change rather than on every poll.
                state.file_stamp = Some(stamp);
                (read_limited(path)?, None)
            }
            JwksSource::Remote(fetcher) => {
                let fetched = fetcher.fetch().map_err(JwksError::Fetch)?;
                if fetched.body.len() as u64 > MAX_JWKS_BYTES {
                    return Err(JwksError::TooLarge);
                }
                (fetched.body, fetched.max_age)
            }
            JwksSource::Inline(body) => (body.clone(), None),
        };
        let set = KeySet::parse(&body)?;
        self.install(set);
        Ok(LoadOutcome::Loaded { max_age })
    }

    /// Swaps a freshly loaded set in whole, then updates metrics, readiness and the log.
    fn install(&self, set: KeySet) {
        let count = set.len();
        let new = Arc::new(set);
        let old = std::mem::replace(&mut *self.current.write(), Arc::clone(&new));
        self.metrics.jwks_refreshes.inc();
        self.metrics
            .jwks_keys
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        let source = self.source.describe();
        if !self.loaded.swap(true, Ordering::SeqCst) {
            self.readiness.set_jwks_loaded(true);
            info!(
                "jwks: loaded {count} keys from {source} (key ids: {:?})",
                new.kids()
            );
            return;
        }
        let before = old.kids();
        let after = new.kids();
        let added: Vec<&str> = after
            .iter()
            .filter(|k| !before.contains(k))
            .copied()
            .collect();
        let removed: Vec<&str> = before
            .iter()
            .filter(|k| !after.contains(k))
            .copied()
            .collect();
        if added.is_empty() && removed.is_empty() && old.len() == new.len() {
            debug!("jwks: refreshed {count} keys from {source}, unchanged");
        } else {
            info!(
                "jwks: key set from {source} changed: {count} keys, added {added:?}, removed {removed:?}"
            );
        }
    }
}

/// Ends a refetch: clears the in-flight mark and wakes the callers waiting for it.
struct RefetchFinished<'a> {
    store: &'a JwksStore,
}

impl Drop for RefetchFinished<'_> {
    fn drop(&mut self) {
        let mut gate = self.store.refetch.lock();
        gate.in_flight = false;
        gate.completed = gate.completed.wrapping_add(1);
        drop(gate);
        self.store.refetch_done.notify_all();
    }
}

/// The loader's backoff: doubling from `initial` to `max`, restarted by each success.
fn jittered_backoff(initial: Duration, max: Duration) -> Backoff {
    Backoff::new(BackoffSettings::doubling(initial, max))
}

/// A jitter in [-0.5, 0.5): each delay is the current step times a factor in [0.5, 1.5).
fn centred_jitter() -> f64 {
    fastrand::f64() - 0.5
}

/// When the refresher thread acts next.
struct Schedule {
    /// The next step that does any work.
    next_attempt: Instant,
    /// When a key file is re-read even if its stamp is unchanged (a safety net).
    next_full_load: Instant,
    backoff: Backoff,
}

impl Schedule {
    fn new(settings: &JwksSettings) -> Schedule {
        let now = Instant::now();
        Schedule {
            next_attempt: now,
            next_full_load: now,
            backoff: jittered_backoff(settings.initial_backoff, settings.max_backoff),
        }
    }
}

/// Reads the `max-age` of a `Cache-Control` header value.
///
/// Directives are matched without regard to case and a quoted value is accepted. `no-store` or
/// `no-cache` give zero ("refresh as often as allowed"; the store clamps it to its minimum
/// period). A value too large to count saturates. A missing or malformed `max-age` gives `None`.
pub fn parse_max_age(cache_control: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in cache_control.split(',') {
        let (name, value) = match directive.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (directive.trim(), None),
        };
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if max_age.is_some() || !name.eq_ignore_ascii_case("max-age") {
            continue;
        }
        if let Some(value) = value {
            if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                let secs = value.parse::<u64>().unwrap_or(u64::MAX);
                max_age = Some(Duration::from_secs(secs));
            }
        }
    }
    max_age
}

/// Fetches a JWKS from a public URL (a cloud provider's OIDC endpoint) with no credentials,
/// trusting the WebPKI roots.
pub struct PublicUrlFetcher {
    url: String,
    agent: ureq::Agent,
}

impl PublicUrlFetcher {
    /// A fetcher for this URL; `timeout` bounds each whole fetch (connect, request and body).
    pub fn new(url: impl Into<String>, timeout: Duration) -> PublicUrlFetcher {
        let url = url.into();
        if !url.starts_with("https://") {
            warn!(
                "jwks: {} is not an https URL; the keys can be altered in transit",
                redact_url(&url)
            );
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .max_redirects(3)
            // An https key set must not be redirected to plain http, where it could be altered.
            .https_only(url.starts_with("https://"))
            .http_status_as_error(false)
            .build()
            .new_agent();
        PublicUrlFetcher { url, agent }
    }
}

impl fmt::Debug for PublicUrlFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicUrlFetcher")
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

impl JwksFetcher for PublicUrlFetcher {
    fn fetch(&self) -> Result<FetchedJwks, String> {
        let mut response = self
            .agent
            .get(self.url.as_str())
            .header("Accept", "application/jwk-set+json, application/json")
            .call()
            .map_err(|e| describe_http_error(&e))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(format!("http status {status}"));
        }
        let max_age = response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age);
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_JWKS_BYTES)
            .read_to_vec()
            .map_err(|e| describe_http_error(&e))?;
        Ok(FetchedJwks { body, max_age })
    }

    fn describe(&self) -> String {
        redact_url(&self.url)
    }
}

/// An HTTP error message without the URL (which may hold credentials or a signed query).
pub fn describe_http_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::StatusCode(code) => format!("http status {code}"),
        ureq::Error::BadUri(_) => "invalid URL".to_string(),
        ureq::Error::RequireHttpsOnly(_) => "https required".to_string(),
        ureq::Error::ConnectProxyFailed(_) => "proxy connect failed".to_string(),
        ureq::Error::InvalidProxyUrl => "invalid proxy URL".to_string(),
        ureq::Error::BodyExceedsLimit(_) => format!("body larger than {MAX_JWKS_BYTES} bytes"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::token::testkit::{jwks, TestKey};
    use std::sync::atomic::AtomicUsize;

    /// A fetcher whose answer the test changes, counting its calls; optionally blocking until
    /// released so that concurrent refetches can be observed.
    #[derive(Clone)]
    struct FakeFetcher(Arc<FakeInner>);

    struct FakeInner {
        answer: Mutex<Result<FetchedJwks, String>>,
        calls: AtomicUsize,
        gate: Mutex<Option<Receiver<()>>>,
    }

    impl FakeFetcher {
        fn serving(body: Vec<u8>) -> FakeFetcher {
            FakeFetcher(Arc::new(FakeInner {
                answer: Mutex::new(Ok(FetchedJwks {
                    body,
                    max_age: None,
                })),
                calls: AtomicUsize::new(0),
                gate: Mutex::new(None),
            }))
        }
        fn failing() -> FakeFetcher {
            let f = FakeFetcher::serving(Vec::new());
            f.fail("connection refused");
            f
        }
        fn serve(&self, body: Vec<u8>) {
            *self.0.answer.lock() = Ok(FetchedJwks {
                body,
                max_age: None,
            });
        }
        fn serve_with_max_age(&self, body: Vec<u8>, max_age: Duration) {
            *self.0.answer.lock() = Ok(FetchedJwks {
                body,
                max_age: Some(max_age),
            });
        }
        fn fail(&self, msg: &str) {
            *self.0.answer.lock() = Err(msg.to_string());
        }
        fn calls(&self) -> usize {
            self.0.calls.load(Ordering::SeqCst)
        }
        fn block_until(&self, release: Receiver<()>) {
            *self.0.gate.lock() = Some(release);
        }
    }

    impl JwksFetcher for FakeFetcher {
        fn fetch(&self) -> Result<FetchedJwks, String> {
            self.0.calls.fetch_add(1, Ordering::SeqCst);
            let gate = self.0.gate.lock().clone();
            if let Some(release) = gate {
                let _ = release.recv_timeout(Duration::from_secs(5));
            }
            self.0.answer.lock().clone()
        }
        fn describe(&self) -> String {
            "fake".to_string()
        }
    }

    fn fast_settings() -> JwksSettings {
        JwksSettings {
            default_refresh: Duration::from_secs(3600),
            min_refresh: Duration::from_millis(10),
            max_refresh: Duration::from_secs(3600),
            min_refetch_interval: Duration::from_secs(60),
            refetch_wait: Duration::from_secs(5),
            file_poll: Duration::from_millis(20),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
        }
    }

    fn remote_store(fetcher: &FakeFetcher, settings: JwksSettings) -> Arc<JwksStore> {
        Arc::new(JwksStore::new(
            JwksSource::Remote(Box::new(fetcher.clone())),
            settings,
            Arc::new(Metrics::default()),
            Arc::new(Readiness::default()),
        ))
    }

    fn file_store(path: &Path) -> Arc<JwksStore> {
        Arc::new(JwksStore::new(
            JwksSource::File(path.to_path_buf()),
            fast_settings(),
            Arc::new(Metrics::default()),
            Arc::new(Readiness::default()),
        ))
    }

    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kids(store: &JwksStore) -> Vec<String> {
        store.keys().kids().iter().map(|k| k.to_string()).collect()
    }

    fn jwk_set(keys: &[serde_json::Value]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
    }

    // ---- parsing ----

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

    // ---- Cache-Control and URLs ----

    #[test]
    fn max_age_is_read_from_cache_control() {
        let cases: &[(&str, Option<u64>)] = &[
            ("public, max-age=3600", Some(3600)),
            ("max-age=60", Some(60)),
            ("Max-Age = 120 , public", Some(120)),
            ("max-age=\"90\"", Some(90)),
            ("private, s-maxage=10, max-age=30", Some(30)),
            ("max-age=30, max-age=40", Some(30)),
            ("public", None),
            ("", None),
            ("max-age=", None),
            ("max-age=-5", None),
            ("max-age=1h", None),
            ("max-age", None),
            ("no-store", Some(0)),
            ("public, no-cache, max-age=600", Some(0)),
            ("max-age=99999999999999999999999", Some(u64::MAX)),
        ];
        for (header, want) in cases {
            assert_eq!(
                parse_max_age(header),
                want.map(Duration::from_secs),
                "{header:?}"
            );
        }
    }

    #[test]
    fn refresh_interval_is_clamped() {
        let s = JwksSettings::default();
        assert_eq!(s.refresh_interval(None), Duration::from_secs(3600));
        assert_eq!(
            s.refresh_interval(Some(Duration::ZERO)),
            Duration::from_secs(60)
        );
        assert_eq!(
            s.refresh_interval(Some(Duration::from_secs(7200))),
            Duration::from_secs(7200)
        );
        assert_eq!(
            s.refresh_interval(Some(Duration::from_secs(u64::MAX))),
            Duration::from_secs(24 * 3600)
        );
    }

    #[test]
    fn unreachable_url_fails_with_a_message_without_credentials() {
        // Port 9 on localhost: nothing listens there, so this fails fast without a network.
        let fetcher = PublicUrlFetcher::new(
            "http://user:hunter2@127.0.0.1:9/keys?token=abc",
            Duration::from_secs(2),
        );
        assert_eq!(fetcher.describe(), "http://127.0.0.1:9/keys?…");
        let err = fetcher.fetch().unwrap_err();
        assert!(
            !err.contains("hunter2") && !err.contains("token=abc"),
            "{err}"
        );
    }

    // ---- the store ----

    #[test]
    fn store_built_from_json_is_loaded() {
        let store = JwksStore::from_jwks_json(&jwks(&[&TestKey::es256("a")])).unwrap();
        assert!(store.is_loaded());
        assert_eq!(kids(&store), vec!["a"]);
    }

    #[test]
    fn first_success_sets_readiness_and_metrics() {
        let fetcher = FakeFetcher::failing();
        let metrics = Arc::new(Metrics::default());
        let readiness = Arc::new(Readiness::default());
        let store = JwksStore::new(
            JwksSource::Remote(Box::new(fetcher.clone())),
            fast_settings(),
            Arc::clone(&metrics),
            Arc::clone(&readiness),
        );
        assert!(store.reload().is_err());
        assert!(!store.is_loaded());
        assert!(readiness.missing().contains(&"jwks_loaded"));
        assert_eq!(metrics.jwks_refresh_failures.get(), 1);
        assert!(store.keys().is_empty());

        fetcher.serve(jwks(&[&TestKey::es256("a"), &TestKey::rsa("b")]));
        assert_eq!(store.reload().unwrap(), 2);
        assert!(store.is_loaded());
        assert!(!readiness.missing().contains(&"jwks_loaded"));
        assert_eq!(metrics.jwks_refreshes.get(), 1);
        assert_eq!(metrics.jwks_keys.get(), 2);
    }

    #[test]
    fn failed_refresh_keeps_the_last_good_set() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("good")]));
        let store = remote_store(&fetcher, fast_settings());
        store.reload().unwrap();
        for failure in ["timeout", ""] {
            if failure.is_empty() {
                fetcher.serve(br#"{"keys":[]}"#.to_vec());
            } else {
                fetcher.fail(failure);
            }
            assert!(store.reload().is_err());
            assert_eq!(kids(&store), vec!["good"]);
        }
        assert_eq!(store.metrics.jwks_refresh_failures.get(), 2);
        assert_eq!(store.metrics.jwks_keys.get(), 1);
    }

    #[test]
    fn unknown_kid_refetches_and_finds_the_rotated_key() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old")]));
        let store = remote_store(&fetcher, fast_settings());
        store.reload().unwrap();
        fetcher.serve(jwks(&[&TestKey::es256("old"), &TestKey::es256("new")]));
        let keys = store.refetch_for_unknown_kid("new");
        assert!(keys.get("new").is_some());
        assert_eq!(fetcher.calls(), 2);
    }

    #[test]
    fn kid_that_arrived_meanwhile_needs_no_refetch() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old"), &TestKey::es256("new")]));
        let store = remote_store(&fetcher, fast_settings());
        store.reload().unwrap();
        assert!(store.refetch_for_unknown_kid("new").get("new").is_some());
        assert_eq!(fetcher.calls(), 1);
    }

    #[test]
    fn unknown_kid_refetch_is_rate_limited() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old")]));
        let store = remote_store(&fetcher, fast_settings());
        store.reload().unwrap();
        store.refetch_for_unknown_kid("x");
        store.refetch_for_unknown_kid("y");
        store.refetch_for_unknown_kid("z");
        assert_eq!(fetcher.calls(), 2, "one load plus one refetch");
    }

    #[test]
    fn failed_refetch_also_counts_against_the_rate_limit() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old")]));
        let store = remote_store(&fetcher, fast_settings());
        store.reload().unwrap();
        fetcher.fail("boom");
        assert_eq!(store.refetch_for_unknown_kid("x").kids(), vec!["old"]);
        store.refetch_for_unknown_kid("x");
        assert_eq!(fetcher.calls(), 2);
    }

    #[test]
    fn unknown_kid_refetches_again_after_the_interval() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old")]));
        let settings = JwksSettings {
            min_refetch_interval: Duration::from_millis(50),
            ..fast_settings()
        };
        let store = remote_store(&fetcher, settings);
        store.reload().unwrap();
        store.refetch_for_unknown_kid("x");
        std::thread::sleep(Duration::from_millis(70));
        store.refetch_for_unknown_kid("x");
        assert_eq!(fetcher.calls(), 3);
    }

    #[test]
    fn concurrent_unknown_kids_share_one_refetch() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old")]));
        let store = remote_store(&fetcher, fast_settings());
        store.reload().unwrap();
        let (release, released) = crossbeam_channel::bounded::<()>(0);
        fetcher.block_until(released);
        fetcher.serve(jwks(&[&TestKey::es256("new")]));
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || store.refetch_for_unknown_kid("new").kids().len())
            })
            .collect();
        // All four are in: one fetching (blocked), three waiting for it.
        wait_for("the refetch to start", || fetcher.calls() == 2);
        std::thread::sleep(Duration::from_millis(30));
        drop(release);
        for caller in callers {
            assert_eq!(caller.join().unwrap(), 1);
        }
        assert_eq!(fetcher.calls(), 2);
        assert_eq!(kids(&store), vec!["new"]);
    }

    #[test]
    fn waiting_for_another_refetch_is_bounded() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("old")]));
        let settings = JwksSettings {
            refetch_wait: Duration::from_millis(50),
            ..fast_settings()
        };
        let store = remote_store(&fetcher, settings);
        store.reload().unwrap();
        let (release, released) = crossbeam_channel::bounded::<()>(0);
        fetcher.block_until(released);
        let fetching = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || store.refetch_for_unknown_kid("a"))
        };
        wait_for("the refetch to start", || fetcher.calls() == 2);
        let started = Instant::now();
        let keys = store.refetch_for_unknown_kid("b");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(keys.kids(), vec!["old"]);
        drop(release);
        fetching.join().unwrap();
    }

    #[test]
    fn refresher_retries_until_the_first_load_then_stops_on_request() {
        let fetcher = FakeFetcher::failing();
        let store = remote_store(&fetcher, fast_settings());
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let handle = store.spawn_refresher(stopped);
        wait_for("a few failed attempts", || fetcher.calls() >= 3);
        assert!(!store.is_loaded());
        fetcher.serve(jwks(&[&TestKey::es256("a")]));
        wait_for("the first load", || store.is_loaded());
        let started = Instant::now();
        stop.send(()).unwrap();
        handle.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn refresher_stops_when_the_sender_is_dropped() {
        let fetcher = FakeFetcher::serving(jwks(&[&TestKey::es256("a")]));
        let store = remote_store(&fetcher, JwksSettings::default());
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let handle = store.spawn_refresher(stopped);
        wait_for("the first load", || store.is_loaded());
        let started = Instant::now();
        drop(stop);
        handle.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn refresher_follows_max_age() {
        let fetcher = FakeFetcher::serving(Vec::new());
        fetcher.serve_with_max_age(jwks(&[&TestKey::es256("a")]), Duration::from_millis(20));
        let store = remote_store(&fetcher, fast_settings());
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let handle = store.spawn_refresher(stopped);
        wait_for("periodic refreshes", || fetcher.calls() >= 4);
        stop.send(()).unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn key_file_is_reread_when_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks(&[&TestKey::es256("one")])).unwrap();
        let store = file_store(&path);
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let handle = store.spawn_refresher(stopped);
        wait_for("the first load", || store.is_loaded());
        assert_eq!(kids(&store), vec!["one"]);

        // Replace it the way editors and config tools do: write aside, then rename over.
        let tmp = dir.path().join("jwks.json.tmp");
        std::fs::write(&tmp, jwks(&[&TestKey::es256("two")])).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        wait_for("the new key", || kids(&store) == vec!["two"]);
        let refreshes = store.metrics.jwks_refreshes.get();

        // An unchanged file is not re-read on each poll.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(store.metrics.jwks_refreshes.get(), refreshes);
        stop.send(()).unwrap();
        handle.join().unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn key_file_behind_a_swapped_data_symlink_is_followed() {
        use std::os::unix::fs::symlink;
        // The layout kubelet's AtomicWriter gives a ConfigMap volume.
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/jwks.json"), jwks(&[&TestKey::es256("one")])).unwrap();
        symlink("..v1", d.join("..data")).unwrap();
        symlink("..data/jwks.json", d.join("jwks.json")).unwrap();
        let store = file_store(&d.join("jwks.json"));
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let handle = store.spawn_refresher(stopped);
        wait_for("the first load", || store.is_loaded());

        std::fs::create_dir(d.join("..v2")).unwrap();
        std::fs::write(d.join("..v2/jwks.json"), jwks(&[&TestKey::es256("two")])).unwrap();
        symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        std::fs::remove_dir_all(d.join("..v1")).unwrap();
        wait_for("the new key", || kids(&store) == vec!["two"]);
        stop.send(()).unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn key_file_missing_at_start_is_loaded_once_it_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let store = file_store(&path);
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let handle = store.spawn_refresher(stopped);
        wait_for("a failed attempt", || {
            store.metrics.jwks_refresh_failures.get() >= 1
        });
        assert!(!store.is_loaded());
        std::fs::write(&path, jwks(&[&TestKey::es256("late")])).unwrap();
        wait_for("the first load", || store.is_loaded());
        stop.send(()).unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn broken_key_file_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks(&[&TestKey::es256("good")])).unwrap();
        let store = file_store(&path);
        store.reload().unwrap();
        std::fs::write(&path, b"{ half written").unwrap();
        assert!(store.reload().is_err());
        assert_eq!(kids(&store), vec!["good"]);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(store.reload(), Err(JwksError::ReadFile { .. })));
        assert_eq!(kids(&store), vec!["good"]);
    }

    #[test]
    fn oversize_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, vec![b' '; MAX_JWKS_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            file_store(&path).reload(),
            Err(JwksError::TooLarge)
        ));
    }

    // ---- log texts: operators and docs/TROUBLESHOOTING.md match these ----

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
    }

    #[test]
    fn load_failures_read_as_documented() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let cases = [
            (
                JwksError::Fetch("HTTP 403".into()),
                "fetch failed: HTTP 403".to_string(),
            ),
            (
                JwksError::ReadFile {
                    path: PathBuf::from("/keys/jwks.json"),
                    error: std::io::Error::from(std::io::ErrorKind::NotFound),
                },
                format!("cannot read /keys/jwks.json: {missing}"),
            ),
            (
                JwksError::TooLarge,
                "key set is larger than 1048576 bytes".to_string(),
            ),
            (
                KeySet::parse(b"{").unwrap_err(),
                "not a JWKS document: unexpected end at line 1 column 1".to_string(),
            ),
            (
                JwksError::NoUsableKeys { skipped: 3 },
                "no usable key in the key set (3 skipped)".to_string(),
            ),
        ];
        for (error, want) in cases {
            assert_eq!(error.to_string(), want);
        }
    }

    #[test]
    fn public_url_answering_other_than_200_fails_with_its_status() {
        use crate::kube::client::test_server::{response, start};
        let base = start(Arc::new(|_| response("404 Not Found", &[], "{}")));
        let fetcher = PublicUrlFetcher::new(format!("{base}/keys"), Duration::from_secs(2));
        assert_eq!(fetcher.fetch().unwrap_err(), "http status 404");
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = jittered_backoff(Duration::from_millis(500), Duration::from_secs(30));
        let next_delay = |b: &mut Backoff| b.delay(Instant::now(), None, centred_jitter());
        let delays: Vec<Duration> = (0..10).map(|_| next_delay(&mut b)).collect();
        assert!(delays[0] >= Duration::from_millis(250) && delays[0] < Duration::from_millis(750));
        assert!(delays[9] >= Duration::from_secs(15) && delays[9] < Duration::from_secs(45));
        b.reset();
        assert!(next_delay(&mut b) < Duration::from_millis(750));
    }
}
