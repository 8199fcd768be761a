//! The keys the callout signs and opens with, read from their seed files and kept current: a
//! file that changes (a rotated Secret, swapped in by the kubelet) is read again, without a
//! restart, and a request sealed to the curve key just replaced still opens.
//!
//! Config mode: one account seed (`NATS_SIGNING_KEY_FILE`) signs responses and user JWTs.
//! Operator mode (`NATS_OPERATOR_MODE=true`): the callout account's seed, or one of its signing
//! keys named with the account (`NATS_CALLOUT_ACCOUNT`), signs responses
//! (`NATS_CALLOUT_SIGNING_KEY_FILE`); the clients' account's seed or one of its signing keys
//! (`NATS_SIGNING_KEY_FILE`) signs their user JWTs, and more accounts' keys come from a directory
//! (`NATS_ACCOUNT_SIGNING_KEYS_DIR`, one `<ACCOUNT>.nk` or `<ACCOUNT>.scoped.nk` each).
//! Seeds never reach a log line; public keys do.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{error, info};
use nkeys::{KeyPair, XKey};
use parking_lot::RwLock;

use crate::callout::request::RequestDecoder;
use crate::callout::response::{ResponseSigner, UserSigningKey};
use crate::files::{read_bounded, FileStamp};
use crate::metrics::{Metrics, ReloadLabels};

/// How often the key files are checked for a change.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Largest seed file read (a creds-style block is well under 4 KiB).
const MAX_SEED_FILE: u64 = 64 * 1024;
/// Suffix of an account's plain signing-key file in the keys directory.
pub const KEY_FILE_SUFFIX: &str = ".nk";
/// Suffix of an account's scoped signing-key file in the keys directory.
pub const SCOPED_KEY_FILE_SUFFIX: &str = ".scoped.nk";

/// Reads an account seed (`SA…`) from a bare seed file or a creds-style file holding one.
pub fn read_account_seed(text: &str) -> Result<KeyPair, String> {
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| {
            l.starts_with('S') && l.len() == 58 && l.chars().all(|c| c.is_ascii_alphanumeric())
        })
        .ok_or("holds no nkey seed")?;
    match &seed[..2] {
        "SA" => KeyPair::from_seed(seed).map_err(|_| "holds an invalid account seed".to_string()),
        "SU" => Err("holds a user seed (SU…); auth callout responses must be signed by an account seed (SA…)".into()),
        "SO" => Err("holds an operator seed (SO…); an account seed (SA…) is needed".into()),
        "SX" => Err("holds a curve (xkey) seed (SX…); an account seed (SA…) is needed".into()),
        _ => Err("holds a seed that is not an account seed (SA…)".into()),
    }
}

/// Reads a curve seed (`SX…`) from a bare seed file or a block holding one.
pub fn read_xkey_seed(text: &str) -> Result<XKey, String> {
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("SX"))
        .ok_or("holds no curve seed (SX…)")?;
    XKey::from_seed(seed).map_err(|_| "holds an invalid curve seed".to_string())
}

/// The value of `r`, or `None` with its error added to `problems`.
fn note<T>(problems: &mut Vec<String>, r: Result<T, String>) -> Option<T> {
    r.map_err(|e| problems.push(e)).ok()
}

/// Whether `s` is an account public key (`A…`, a valid nkey).
pub fn is_account_public_key(s: &str) -> bool {
    s.starts_with('A') && KeyPair::from_public_key(s).is_ok()
}

/// Where the keys are read from (the settings of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    /// `NATS_OPERATOR_MODE`.
    pub operator_mode: bool,
    /// `NATS_ACCOUNT`: the clients' account (a name in config mode, `A…` in operator mode).
    pub default_account: String,
    /// `NATS_SIGNING_KEY_FILE`.
    pub signing: PathBuf,
    /// `NATS_SIGNING_KEY_SCOPED`: the signing key is a scoped one (operator mode).
    pub signing_scoped: bool,
    /// `NATS_CALLOUT_SIGNING_KEY_FILE`: the callout account's seed or one of its signing keys'
    /// (operator mode).
    pub callout: Option<PathBuf>,
    /// `NATS_CALLOUT_ACCOUNT`: the callout account (`A…`) when that file holds a signing key
    /// (which cannot be told from its seed); default: the file's key is the account's own.
    pub callout_account: Option<String>,
    /// `NATS_XKEY_SEED_FILE`.
    pub xkey: Option<PathBuf>,
    /// `NATS_ACCOUNT_SIGNING_KEYS_DIR`: more accounts' keys (operator mode).
    pub accounts_dir: Option<PathBuf>,
}

/// One version of every key: what opens requests and what signs answers.
pub struct CalloutKeys {
    /// Opens and verifies requests.
    pub decoder: RequestDecoder,
    /// Signs answers.
    pub signer: ResponseSigner,
}

impl CalloutKeys {
    /// One line naming every public key in use, for the log.
    pub fn describe(&self) -> String {
        let mut out = format!("responses signed by {}", self.signer.issuer());
        if self.signer.callout_account() != self.signer.issuer() {
            out.push_str(&format!(
                " (signing key of {})",
                self.signer.callout_account()
            ));
        }
        for k in self.signer.user_keys() {
            out.push_str(&format!(
                "; account {} signed by {}{}",
                k.account(),
                k.public_key(),
                if k.is_scoped() { " (scoped)" } else { "" }
            ));
        }
        if let Some(x) = self.decoder.xkey() {
            out.push_str(&format!("; xkey {}", x.public_key()));
        }
        out
    }
}

fn read_file(what: &str, path: &Path) -> Result<String, String> {
    let bytes = read_bounded(path, MAX_SEED_FILE)
        .map_err(|e| format!("{what}: cannot read {}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| format!("{what}: {} is not text", path.display()))
}

fn read_with<T>(
    what: &str,
    path: &Path,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, String> {
    let text = read_file(what, path)?;
    parse(&text).map_err(|e| format!("{what}: {} {e}", path.display()))
}

impl KeyFiles {
    /// Reads every key; `previous` (the keys in use) lends its current curve key as the second
    /// one when the curve key changed. The error lists every problem.
    pub fn load(&self, previous: Option<&CalloutKeys>) -> Result<CalloutKeys, Vec<String>> {
        let mut problems = Vec::new();
        let signing = note(
            &mut problems,
            read_with("NATS_SIGNING_KEY_FILE", &self.signing, read_account_seed),
        );
        if let (true, true, Some(key)) = (self.operator_mode, self.signing_scoped, &signing) {
            if key.public_key() == self.default_account {
                problems.push(format!(
                    "NATS_SIGNING_KEY_SCOPED=true but NATS_SIGNING_KEY_FILE {}",
                    own_key_not_scoped(&self.default_account)
                ));
            }
        }
        let xkey = match &self.xkey {
            Some(p) => note(
                &mut problems,
                read_with("NATS_XKEY_SEED_FILE", p, read_xkey_seed),
            ),
            None => None,
        };
        let callout = match &self.callout {
            Some(p) => note(
                &mut problems,
                read_with("NATS_CALLOUT_SIGNING_KEY_FILE", p, read_account_seed),
            ),
            None => None,
        };
        let others = match &self.accounts_dir {
            Some(dir) => note(&mut problems, read_accounts_dir(dir)),
            None => Some(Vec::new()),
        };
        if !self.operator_mode {
            for (set, name) in [
                (self.callout.is_some(), "NATS_CALLOUT_SIGNING_KEY_FILE"),
                (self.callout_account.is_some(), "NATS_CALLOUT_ACCOUNT"),
                (self.accounts_dir.is_some(), "NATS_ACCOUNT_SIGNING_KEYS_DIR"),
                (self.signing_scoped, "NATS_SIGNING_KEY_SCOPED"),
            ] {
                if set {
                    problems.push(format!(
                        "{name} applies to operator mode only (NATS_OPERATOR_MODE=true); in config mode NATS_SIGNING_KEY_FILE signs everything"
                    ));
                }
            }
        } else {
            if !is_account_public_key(&self.default_account) {
                problems.push(format!(
                    "NATS_ACCOUNT={:?} must be the clients' account public key (A…) in operator mode",
                    self.default_account
                ));
            }
            match (&self.callout_account, &self.callout) {
                (Some(a), _) if !is_account_public_key(a) => problems.push(format!(
                    "NATS_CALLOUT_ACCOUNT={a:?} must be the callout account's public key (A…)"
                )),
                (Some(_), None) => problems.push(
                    "NATS_CALLOUT_ACCOUNT names the account of NATS_CALLOUT_SIGNING_KEY_FILE's key; set that file too".into(),
                ),
                _ => {}
            }
        }
        let (Some(signing), Some(others), true) = (signing, others, problems.is_empty()) else {
            return Err(problems);
        };
        // The callout key signs for its own account unless NATS_CALLOUT_ACCOUNT names another
        // (then it is one of that account's signing keys).
        let callout = callout.map(|key| {
            let account = self
                .callout_account
                .clone()
                .unwrap_or_else(|| key.public_key());
            UserSigningKey::new(account, key, false)
        });
        if let (true, Some(callout)) = (self.operator_mode, &callout) {
            // Clients in the callout account could subscribe to the requests of every other
            // client (tokens included) if ever granted `$SYS.REQ.USER.AUTH`; never place them there.
            let callout_account = callout.account();
            if self.default_account == callout_account
                || others.iter().any(|k| k.account() == callout_account)
            {
                return Err(vec![format!(
                    "the callout account {callout_account} (NATS_CALLOUT_SIGNING_KEY_FILE) must not be a clients' account (NATS_ACCOUNT or NATS_ACCOUNT_SIGNING_KEYS_DIR)"
                )]);
            }
        }
        // The key just replaced keeps opening requests (the server seals to it until it gets the
        // new one); it stays until the next rotation, whatever else is re-read meanwhile.
        let mut xkeys: Vec<XKey> = xkey.into_iter().collect();
        if let (Some(current), Some(before)) = (xkeys.first(), previous.map(|p| &p.decoder)) {
            let kept = match before.xkey() {
                Some(b) if b.public_key() != current.public_key() => Some(b),
                _ => before.replaced_xkey(),
            };
            if let Some(k) = kept.filter(|k| k.public_key() != current.public_key()) {
                xkeys.push(k.clone());
            }
        }
        let signer = if self.operator_mode {
            let default = UserSigningKey::new(
                self.default_account.clone(),
                signing.clone(),
                self.signing_scoped,
            );
            // Without a callout key, the clients' account is the callout account too.
            let callout = callout.unwrap_or_else(|| default.clone());
            ResponseSigner::operator(callout, default, others)
        } else {
            ResponseSigner::new(signing, self.default_account.clone())
        };
        Ok(CalloutKeys {
            decoder: RequestDecoder::with_keys(xkeys),
            signer,
        })
    }

    /// The stamps of every key file, in a fixed order: keys are read again when one changes.
    fn stamps(&self) -> Vec<(PathBuf, Option<FileStamp>)> {
        let mut paths: Vec<PathBuf> = [
            Some(&self.signing),
            self.callout.as_ref(),
            self.xkey.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        if let Some(dir) = &self.accounts_dir {
            paths.push(dir.clone());
            paths.extend(key_file_names(dir).into_iter().map(|n| dir.join(n)));
        }
        paths
            .into_iter()
            .map(|p| {
                let stamp = FileStamp::of(&p).ok();
                (p, stamp)
            })
            .collect()
    }
}

/// Why an account's own key marked scoped is refused: nats-server scopes signing keys only, so
/// its users (whose JWTs carry no permissions, the scope being expected to) would get every one.
fn own_key_not_scoped(account: &str) -> String {
    format!(
        "holds the seed of account {account} itself, which cannot be a scoped signing key: its users would carry no permissions and nats-server would give them every one"
    )
}

/// The names in `dir` that are not hidden (a kubelet-mounted Secret also holds `..data` and
/// `..<timestamp>` entries), sorted.
fn key_file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The signing keys of `dir`: `<ACCOUNT>.nk` (plain) or `<ACCOUNT>.scoped.nk` (scoped), each
/// holding the account's seed or one of its signing keys' seeds.
fn read_accounts_dir(dir: &Path) -> Result<Vec<UserSigningKey>, String> {
    let what = "NATS_ACCOUNT_SIGNING_KEYS_DIR";
    if !dir.is_dir() {
        return Err(format!("{what}: {} is not a directory", dir.display()));
    }
    let mut keys: Vec<UserSigningKey> = Vec::new();
    let mut problems = Vec::new();
    for name in key_file_names(dir) {
        let (account, scoped) = match (
            name.strip_suffix(SCOPED_KEY_FILE_SUFFIX),
            name.strip_suffix(KEY_FILE_SUFFIX),
        ) {
            (Some(a), _) => (a, true),
            (None, Some(a)) => (a, false),
            (None, None) => {
                problems.push(format!(
                    "{what}: {name} is not named <ACCOUNT PUBLIC KEY>{KEY_FILE_SUFFIX} or <ACCOUNT PUBLIC KEY>{SCOPED_KEY_FILE_SUFFIX}"
                ));
                continue;
            }
        };
        if !is_account_public_key(account) {
            problems.push(format!(
                "{what}: {name} does not start with an account public key (A…)"
            ));
            continue;
        }
        if keys.iter().any(|k| k.account() == account) {
            problems.push(format!(
                "{what}: more than one key file for account {account}"
            ));
            continue;
        }
        match read_with(what, &dir.join(&name), read_account_seed) {
            Ok(key) if scoped && key.public_key() == account => {
                problems.push(format!("{what}: {name} {}", own_key_not_scoped(account)));
            }
            Ok(key) => keys.push(UserSigningKey::new(account.to_owned(), key, scoped)),
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(problems.join("; "))
    }
}

/// The keys in use, shared by the workers and the thread that re-reads their files.
pub struct KeyStore {
    current: RwLock<Arc<CalloutKeys>>,
    files: Option<KeyFiles>,
}

impl KeyStore {
    /// Reads the keys from `files`; the error lists every problem.
    pub fn load(files: KeyFiles) -> Result<KeyStore, Vec<String>> {
        let keys = files.load(None)?;
        Ok(KeyStore {
            current: RwLock::new(Arc::new(keys)),
            files: Some(files),
        })
    }

    /// A store holding `keys` (read from `files` already), re-read from `files` when they change.
    pub fn with_initial(files: KeyFiles, keys: Arc<CalloutKeys>) -> KeyStore {
        KeyStore {
            current: RwLock::new(keys),
            files: Some(files),
        }
    }

    /// Keys that never change (tests, benchmarks).
    pub fn fixed(keys: CalloutKeys) -> KeyStore {
        KeyStore {
            current: RwLock::new(Arc::new(keys)),
            files: None,
        }
    }

    /// The keys in use now.
    pub fn current(&self) -> Arc<CalloutKeys> {
        self.current.read().clone()
    }

    /// Starts the thread that reads the key files again when they change (and then stay the
    /// same for one more check), until `stop` fires. A good new set replaces the keys whole; a
    /// bad one is logged and counted, and the last good keys stay.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        metrics: Arc<Metrics>,
        stop: Receiver<()>,
    ) -> Option<JoinHandle<()>> {
        let files = self.files.clone()?;
        let store = self.clone();
        let mut seen = files.stamps();
        let mut changed_to = None;
        let spawned = std::thread::Builder::new()
            .name("keys".into())
            .spawn(move || loop {
                match stop.recv_timeout(POLL_INTERVAL) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let stamps = files.stamps();
                if stamps == seen {
                    changed_to = None;
                    continue;
                }
                if changed_to.as_ref() != Some(&stamps) {
                    changed_to = Some(stamps);
                    continue;
                }
                changed_to = None;
                seen = stamps;
                let result = match files.load(Some(&store.current())) {
                    Ok(keys) => {
                        info!("key files re-read: {}", keys.describe());
                        *store.current.write() = Arc::new(keys);
                        "success"
                    }
                    Err(problems) => {
                        error!(
                            "key files changed but cannot be used; the keys in use stay:\n  - {}",
                            problems.join("\n  - ")
                        );
                        "failure"
                    }
                };
                metrics
                    .key_reloads
                    .get_or_create(&ReloadLabels { result })
                    .inc();
            });
        match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                error!("cannot start the key reloading thread ({e}): key changes need a restart");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signing_seed_may_sit_in_a_creds_style_block() {
        let seed = KeyPair::new_account().seed().unwrap();
        let text = format!(
            "-----BEGIN ACCOUNT NKEY SEED-----\n{seed}\n------END ACCOUNT NKEY SEED------\n"
        );
        assert!(read_account_seed(&text).is_ok());
        assert!(read_account_seed("nothing here").is_err());
        assert!(read_account_seed(&KeyPair::new_operator().seed().unwrap())
            .unwrap_err()
            .contains("operator"));
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn seed(k: &KeyPair) -> String {
        k.seed().unwrap()
    }

    /// The problems `files` is refused with (a test failure when it loads).
    fn refusals(files: &KeyFiles) -> Vec<String> {
        match files.load(None) {
            Ok(_) => panic!("the key files were accepted"),
            Err(problems) => problems,
        }
    }

    /// Asserts that the first problem `files` is refused with says `needle`.
    fn assert_refused_first_with(files: &KeyFiles, needle: &str) {
        let problems = refusals(files);
        assert!(
            problems[0].contains(needle),
            "{needle:?} not first in {problems:?}"
        );
    }

    fn operator_files(dir: &Path, app: &KeyPair, signing: &KeyPair) -> KeyFiles {
        KeyFiles {
            operator_mode: true,
            default_account: app.public_key(),
            signing: write(dir, "signing.nk", &seed(signing)),
            signing_scoped: false,
            callout: None,
            callout_account: None,
            xkey: None,
            accounts_dir: None,
        }
    }

    #[test]
    fn operator_settings_are_refused_in_config_mode() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles {
            operator_mode: false,
            default_account: "APP".into(),
            signing: write(dir.path(), "s.nk", &seed(&KeyPair::new_account())),
            signing_scoped: true,
            callout: Some(write(dir.path(), "c.nk", &seed(&KeyPair::new_account()))),
            callout_account: Some(KeyPair::new_account().public_key()),
            xkey: None,
            accounts_dir: Some(dir.path().to_owned()),
        };
        let problems = refusals(&files);
        for name in [
            "NATS_CALLOUT_SIGNING_KEY_FILE",
            "NATS_CALLOUT_ACCOUNT",
            "NATS_ACCOUNT_SIGNING_KEYS_DIR",
            "NATS_SIGNING_KEY_SCOPED",
        ] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(name) && p.contains("operator mode only")),
                "{name}: {problems:?}"
            );
        }
    }

    #[test]
    fn clients_are_never_placed_in_the_callout_account() {
        let dir = tempfile::tempdir().unwrap();
        let auth = KeyPair::new_account();
        let mut files = operator_files(dir.path(), &auth, &auth);
        files.callout = Some(write(dir.path(), "callout.nk", &seed(&auth)));
        assert_refused_first_with(&files, "must not be a clients' account");
    }

    #[test]
    fn a_callout_signing_key_answers_for_the_account_named_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let (app, auth, auth_signing) = (
            KeyPair::new_account(),
            KeyPair::new_account(),
            KeyPair::new_account(),
        );
        let mut files = operator_files(dir.path(), &app, &app);
        files.callout = Some(write(dir.path(), "callout.nk", &seed(&auth_signing)));
        files.callout_account = Some(auth.public_key());
        let keys = files.load(None).unwrap();
        assert_eq!(keys.signer.issuer(), auth_signing.public_key());
        assert_eq!(keys.signer.callout_account(), auth.public_key());
        assert!(keys.describe().starts_with(&format!(
            "responses signed by {} (signing key of {})",
            auth_signing.public_key(),
            auth.public_key()
        )));

        // The guard compares the named account, not the signing key, with the clients' ones.
        files.default_account = auth.public_key();
        assert_refused_first_with(&files, &format!(
                "the callout account {} (NATS_CALLOUT_SIGNING_KEY_FILE) must not be a clients' account",
                auth.public_key()
            ));

        files.default_account = app.public_key();
        files.callout_account = Some("AUTH".into());
        assert_refused_first_with(
            &files,
            "NATS_CALLOUT_ACCOUNT=\"AUTH\" must be the callout account's public key",
        );
        files.callout_account = Some(auth.public_key());
        files.callout = None;
        assert_refused_first_with(&files, "set that file too");
    }

    #[test]
    fn operator_mode_needs_the_clients_account_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut files =
            operator_files(dir.path(), &KeyPair::new_account(), &KeyPair::new_account());
        files.default_account = "APP".into();
        assert_refused_first_with(
            &files,
            "NATS_ACCOUNT=\"APP\" must be the clients' account public key",
        );
    }

    #[test]
    fn the_keys_directory_names_accounts_and_marks_scoped_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (app, callout) = (KeyPair::new_account(), KeyPair::new_account());
        let (b, b_signing, c, c_scoped) = (
            KeyPair::new_account(),
            KeyPair::new_account(),
            KeyPair::new_account(),
            KeyPair::new_account(),
        );
        let keys_dir = dir.path().join("accounts");
        std::fs::create_dir(&keys_dir).unwrap();
        write(
            &keys_dir,
            &format!("{}.nk", b.public_key()),
            &seed(&b_signing),
        );
        write(
            &keys_dir,
            &format!("{}.scoped.nk", c.public_key()),
            &seed(&c_scoped),
        );
        // What a kubelet-mounted Secret also holds.
        std::fs::create_dir(keys_dir.join("..2026_12_04")).unwrap();
        let mut files = operator_files(dir.path(), &app, &app);
        files.callout = Some(write(dir.path(), "callout.nk", &seed(&callout)));
        files.accounts_dir = Some(keys_dir.clone());
        let keys = files.load(None).unwrap();
        assert_eq!(keys.signer.issuer(), callout.public_key());
        let user_keys = keys.signer.user_keys();
        assert_eq!(user_keys.len(), 3);
        let find = |a: &KeyPair| {
            user_keys
                .iter()
                .find(|k| k.account() == a.public_key())
                .copied()
                .unwrap()
        };
        assert_eq!(find(&app).issuer_account(), None, "the account's own key");
        assert_eq!(find(&b).issuer_account(), Some(b.public_key().as_str()));
        assert_eq!(find(&b).public_key(), b_signing.public_key());
        assert!(find(&c).is_scoped() && !find(&b).is_scoped());
        assert!(keys.describe().contains(&format!(
            "account {} signed by {} (scoped)",
            c.public_key(),
            c_scoped.public_key()
        )));

        // Badly named files and a second key for one account are refused, each named.
        write(&keys_dir, "readme.txt", "hi");
        write(&keys_dir, "NOTANACCOUNT.nk", &seed(&b));
        write(
            &keys_dir,
            &format!("{}.scoped.nk", b.public_key()),
            &seed(&b),
        );
        let problems = refusals(&files).join("\n");
        for needle in [
            "readme.txt is not named <ACCOUNT PUBLIC KEY>.nk",
            "NOTANACCOUNT.nk does not start with an account public key",
            &format!("more than one key file for account {}", b.public_key()),
        ] {
            assert!(problems.contains(needle), "{needle}: {problems}");
        }
        assert!(!problems.contains(&seed(&b)), "no seed in a message");
    }

    #[test]
    fn a_key_file_of_the_callout_account_in_the_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (app, auth, auth_signing) = (
            KeyPair::new_account(),
            KeyPair::new_account(),
            KeyPair::new_account(),
        );
        let keys_dir = dir.path().join("accounts");
        std::fs::create_dir(&keys_dir).unwrap();
        let mut files = operator_files(dir.path(), &app, &app);
        files.callout = Some(write(dir.path(), "callout.nk", &seed(&auth_signing)));
        files.callout_account = Some(auth.public_key());
        files.accounts_dir = Some(keys_dir.clone());
        assert!(files.load(None).is_ok());
        // Whatever key it holds, plain or scoped: a policy naming AUTH would place clients there.
        for name in [
            format!("{}.nk", auth.public_key()),
            format!("{}.scoped.nk", auth.public_key()),
        ] {
            let path = write(&keys_dir, &name, &seed(&KeyPair::new_account()));
            let problems = refusals(&files);
            assert!(
                problems[0].contains(&format!(
                    "the callout account {} (NATS_CALLOUT_SIGNING_KEY_FILE) must not be a clients' account",
                    auth.public_key()
                )),
                "{name}: {problems:?}"
            );
            std::fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn the_clients_account_key_file_wins_over_its_file_in_the_directory() {
        // `keys operator` writes APP's plain key into the directory; service.env's alternative
        // signs with APP's scoped key instead. The scoped key must then sign APP's users: the
        // plain one would carry the policy's permissions past the scope.
        let dir = tempfile::tempdir().unwrap();
        let (app, plain, scoped) = (
            KeyPair::new_account(),
            KeyPair::new_account(),
            KeyPair::new_account(),
        );
        let keys_dir = dir.path().join("accounts");
        std::fs::create_dir(&keys_dir).unwrap();
        write(
            &keys_dir,
            &format!("{}.nk", app.public_key()),
            &seed(&plain),
        );
        let mut files = operator_files(dir.path(), &app, &scoped);
        files.signing_scoped = true;
        files.accounts_dir = Some(keys_dir);
        let keys = files.load(None).unwrap();
        let user_keys = keys.signer.user_keys();
        assert_eq!(user_keys.len(), 1, "{user_keys:?}");
        assert_eq!(user_keys[0].public_key(), scoped.public_key());
        assert!(user_keys[0].is_scoped());
    }

    #[test]
    fn an_accounts_own_key_marked_scoped_is_refused() {
        // nats-server scopes signing keys only: a user signed by the account's own key carries
        // its permissions itself, and a scoped user JWT carries none, so it would get them all.
        let dir = tempfile::tempdir().unwrap();
        let (app, other) = (KeyPair::new_account(), KeyPair::new_account());
        let mut files = operator_files(dir.path(), &app, &app);
        files.signing_scoped = true;
        let problems = refusals(&files).join("\n");
        assert!(
            problems.contains("NATS_SIGNING_KEY_SCOPED")
                && problems.contains(&format!(
                    "holds the seed of account {} itself, which cannot be a scoped signing key",
                    app.public_key()
                )),
            "{problems}"
        );
        files.signing_scoped = false;
        let keys_dir = dir.path().join("accounts");
        std::fs::create_dir(&keys_dir).unwrap();
        let name = format!("{}.scoped.nk", other.public_key());
        write(&keys_dir, &name, &seed(&other));
        files.accounts_dir = Some(keys_dir.clone());
        let problems = refusals(&files).join("\n");
        assert!(
            problems.contains(&name)
                && problems.contains(&format!(
                    "holds the seed of account {} itself, which cannot be a scoped signing key",
                    other.public_key()
                )),
            "{problems}"
        );
        // Its own key as a plain file is fine.
        std::fs::rename(
            keys_dir.join(&name),
            keys_dir.join(format!("{}.nk", other.public_key())),
        )
        .unwrap();
        assert!(files.load(None).is_ok());
    }

    #[test]
    fn keys_of_the_wrong_kind_in_the_directory_are_refused_without_their_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let app = KeyPair::new_account();
        let keys_dir = dir.path().join("accounts");
        std::fs::create_dir(&keys_dir).unwrap();
        let mut files = operator_files(dir.path(), &app, &app);
        files.accounts_dir = Some(keys_dir.clone());
        let account_seed = seed(&KeyPair::new_account());
        // One character in the middle changed: the checksum no longer matches.
        let flipped = |s: &str| {
            let mut chars: Vec<char> = s.chars().collect();
            chars[30] = if chars[30] == 'A' { 'B' } else { 'A' };
            chars.into_iter().collect::<String>()
        };
        let (user, operator, curve) = (
            seed(&KeyPair::new_user()),
            seed(&KeyPair::new_operator()),
            XKey::new().seed().unwrap(),
        );
        let cases = [
            (user.clone(), "holds a user seed"),
            (operator.clone(), "holds an operator seed"),
            (curve.clone(), "holds a curve (xkey) seed"),
            // Cut during a write, or a seed with one character changed.
            (account_seed[..40].to_string(), "holds no nkey seed"),
            (flipped(&account_seed), "holds an invalid account seed"),
            (String::new(), "holds no nkey seed"),
            (
                format!("{account_seed}\n{}", "#".repeat(70_000)),
                "larger than 65536 bytes",
            ),
        ];
        for (text, needle) in cases {
            let name = format!("{}.nk", KeyPair::new_account().public_key());
            let path = write(&keys_dir, &name, &text);
            let problems = refusals(&files).join("\n");
            assert!(
                problems.contains(&name) && problems.contains(needle),
                "{needle}: {problems}"
            );
            for secret in [&user, &operator, &curve, &account_seed] {
                assert!(!problems.contains(&secret[2..40]), "a seed in {problems}");
            }
            std::fs::remove_file(path).unwrap();
        }
        // A directory under a key file's name is refused, not skipped.
        let name = format!("{}.nk", KeyPair::new_account().public_key());
        std::fs::create_dir(keys_dir.join(&name)).unwrap();
        let problems = refusals(&files).join("\n");
        assert!(problems.contains(&name), "{problems}");
    }

    #[test]
    fn a_rotated_xkey_keeps_the_one_it_replaced_for_opening() {
        use crate::callout::jwt::encode;
        use crate::callout::request::tests::server_request;
        let dir = tempfile::tempdir().unwrap();
        let app = KeyPair::new_account();
        let (first, second, third) = (XKey::new(), XKey::new(), XKey::new());
        let mut files = operator_files(dir.path(), &app, &app);
        files.xkey = Some(write(dir.path(), "xkey.nk", &first.seed().unwrap()));
        let server = KeyPair::new_server();
        let server_x = XKey::new();
        let now = 1_800_000_000;
        let sealed_to = |ours: &XKey| {
            let jwt = encode(
                &server_request(
                    &server,
                    &KeyPair::new_user().public_key(),
                    "t",
                    now + 2,
                    &server_x.public_key(),
                ),
                &server,
            )
            .unwrap();
            server_x
                .seal(
                    jwt.as_bytes(),
                    &XKey::from_public_key(&ours.public_key()).unwrap(),
                )
                .unwrap()
        };
        let opens = |keys: &CalloutKeys, ours: &XKey| {
            keys.decoder
                .decode(&sealed_to(ours), Some(&server_x.public_key()), now)
                .is_ok()
        };
        let v1 = files.load(None).unwrap();
        write(dir.path(), "xkey.nk", &second.seed().unwrap());
        let v2 = files.load(Some(&v1)).unwrap();
        assert_eq!(v2.decoder.xkey().unwrap().public_key(), second.public_key());
        assert!(
            opens(&v2, &second) && opens(&v2, &first),
            "the replaced key still opens"
        );
        // One rotation later, only the last two keys open.
        write(dir.path(), "xkey.nk", &third.seed().unwrap());
        let v3 = files.load(Some(&v2)).unwrap();
        assert!(opens(&v3, &third) && opens(&v3, &second) && !opens(&v3, &first));
        // Re-read with the xkey unchanged (another key file changed): the replaced key stays.
        let v4 = files.load(Some(&v3)).unwrap();
        assert!(opens(&v4, &third) && opens(&v4, &second) && !opens(&v4, &first));
    }

    #[test]
    fn changed_key_files_are_read_again_and_broken_ones_keep_the_keys_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let (app, k1, k2) = (
            KeyPair::new_account(),
            KeyPair::new_account(),
            KeyPair::new_account(),
        );
        let files = operator_files(dir.path(), &app, &k1);
        let store = Arc::new(KeyStore::load(files).unwrap());
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = crossbeam_channel::bounded(1);
        let handle = store.spawn_watcher(metrics.clone(), rx).unwrap();
        let signing_key = |s: &KeyStore| s.current().signer.user_keys()[0].public_key().to_owned();
        assert_eq!(signing_key(&store), k1.public_key());
        let reloads = |result: &'static str| {
            metrics
                .key_reloads
                .get_or_create(&ReloadLabels { result })
                .get()
        };
        let wait = |what: &str, cond: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while !cond() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        // Swapped in as the kubelet does: written aside, renamed over.
        let swap = |text: &str| {
            let next = write(dir.path(), "next", text);
            std::fs::rename(next, dir.path().join("signing.nk")).unwrap();
        };
        swap(&seed(&k2));
        wait("re-read", &|| reloads("success") == 1);
        assert_eq!(signing_key(&store), k2.public_key());
        swap("not a seed");
        wait("failure counted", &|| reloads("failure") == 1);
        assert_eq!(signing_key(&store), k2.public_key(), "the keys in use stay");
        drop(tx);
        handle.join().unwrap();
    }
}
