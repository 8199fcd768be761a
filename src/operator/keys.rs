//! `keys operator`: every key, JWT, creds file and configuration an operator-mode deployment
//! needs, generated without nsc.
//!
//! The accounts: SYS (system), AUTH (the callout: its JWT carries the `authorization` that sends
//! sentinel users to the service), APP (the clients' account, JetStream on, a plain and a scoped
//! signing key), NACK (a JetStream account whose controller connects with its own creds, never
//! through the callout) and any extra client accounts. Everything is generated in memory first
//! ([`generate`]); [`write`] refuses to start if any file exists and never replaces one.

use std::fs::{self, DirBuilder};
use std::io;
#[cfg(unix)]
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nkeys::{KeyPair, XKey};

use super::claims::{
    sign, Account, AccountLimits, ExternalAuthorization, Operator, Permission, SigningKey, User,
    UserPermissionLimits, UserScope,
};
use super::render::{
    creds, server_config, service_env, Preload, Resolver, ServerConfig, ServiceEnv,
};
use crate::callout::jwt::JwtError;
use crate::files::write_new;

/// Operator seed.
pub const OPERATOR_SEED: &str = "operator.nk";
/// Operator JWT.
pub const OPERATOR_JWT: &str = "operator.jwt";
/// Directory of account seeds (`<NAME>.nk`), JWTs (`<NAME>.jwt`) and APP's scoped key.
pub const ACCOUNTS_DIR: &str = "accounts";
/// APP's scoped signing key seed, in [`ACCOUNTS_DIR`].
pub const SCOPED_KEY_SEED: &str = "APP.scoped.nk";
/// AUTH's signing key seed, in [`ACCOUNTS_DIR`]: it signs the callout's responses.
pub const CALLOUT_SIGNING_KEY_SEED: &str = "AUTH.signing.nk";
/// Directory of the client accounts' plain signing-key seeds, `<ACCOUNT_PUBLIC_KEY>.nk`.
pub const SIGNING_KEYS_DIR: &str = "signing-keys";
/// Directory of the creds files.
pub const CREDS_DIR: &str = "creds";
/// The callout's xkey seed.
pub const XKEY_SEED: &str = "xkey.nk";
/// Configuration with the memory resolver.
pub const MEMORY_CONFIG: &str = "nats-memory.conf";
/// The same with `default_sentinel`.
pub const MEMORY_SENTINEL_CONFIG: &str = "nats-memory-default-sentinel.conf";
/// Configuration with the full resolver.
pub const FULL_CONFIG: &str = "nats-full.conf";
/// The service's environment.
pub const SERVICE_ENV: &str = "service.env";
/// Default full-resolver directory, inside the output directory.
pub const FULL_RESOLVER_DIR: &str = "jwt";
/// Where nats-server keeps JetStream data: it appends this to the configured `store_dir`, which
/// is the output directory.
pub const JETSTREAM_DIR: &str = "jetstream";

/// The system account.
pub const SYS: &str = "SYS";
/// The callout account.
pub const AUTH: &str = "AUTH";
/// The default client account.
pub const APP: &str = "APP";
/// The JetStream controller's account.
pub const NACK: &str = "NACK";

/// Role of APP's scoped signing key.
pub const SCOPED_ROLE: &str = "service-account";
/// Subjects the scoped key grants, to publish and subscribe: one space per user name.
///
/// The service names a user `system:serviceaccount:<namespace>:<name>`. A ServiceAccount name
/// may contain dots but never `_`, so the `_` token ends the name: `sa.<…:a>._.>` does not cover
/// the space of a ServiceAccount named `a.b`, as `sa.<…:a>.>` would.
pub const SCOPED_SUBJECTS: &str = "sa.{{name()}}._.>";
/// What the NACK user may publish: the JetStream API only.
pub const NACK_PUBLISH: &str = "$JS.API.>";
/// Where the NACK user receives the API's answers.
pub const NACK_SUBSCRIBE: &str = "_INBOX.>";

/// What `keys operator` is asked for.
#[derive(Debug, Clone)]
pub struct OperatorKeysOptions {
    /// Output directory (created if missing).
    pub dir: PathBuf,
    /// Generate the callout xkey (requests sealed to the service).
    pub xkey: bool,
    /// Full-resolver directory; default `<dir>/jwt`.
    pub full_resolver_dir: Option<PathBuf>,
    /// Client accounts besides APP.
    pub client_accounts: Vec<String>,
}

/// Why operator keys could not be generated or written.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A client account name cannot be used.
    #[error("client account name {name:?}: {reason}")]
    BadAccountName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A path cannot go into the configurations or the environment file.
    #[error("{}: {reason}", path.display())]
    UnusablePath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// Files that would be written exist already.
    #[error("{} already exist(s) (existing keys are never overwritten): {}", .0.len(), list(.0))]
    Exists(Vec<PathBuf>),
    /// A file or directory could not be created.
    #[error("cannot create {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A JWT could not be signed.
    #[error("cannot sign a JWT: {0}")]
    Signing(#[from] JwtError),
    /// A seed could not be encoded.
    #[error("cannot encode a seed: {0}")]
    Seed(#[source] nkeys::error::Error),
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One file to write.
#[derive(Debug, Clone)]
pub struct OutFile {
    /// Path relative to the output directory.
    pub path: PathBuf,
    /// Contents.
    pub contents: String,
    /// Holds a seed: mode 0600 (else 0644).
    pub secret: bool,
}

/// Everything `keys operator` makes, before anything is written.
#[derive(Debug, Clone)]
pub struct OperatorKeys {
    /// The files.
    pub files: Vec<OutFile>,
    /// What to print: public keys, what each file is, how to boot; never a seed.
    pub summary: String,
}

/// Directories the generated files refer to; absolute.
#[derive(Debug, Clone, Copy)]
pub struct Paths<'a> {
    /// The output directory.
    pub dir: &'a str,
    /// The full-resolver directory.
    pub full_resolver_dir: &'a str,
}

fn check_client_account(name: &str, seen: &[String]) -> Result<(), KeysError> {
    let bad = |reason| KeysError::BadAccountName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > 64 {
        return Err(bad("use 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        // It names files (accounts/<NAME>.nk) and appears in configuration comments.
        return Err(bad("use only letters, digits, '_' and '-'"));
    }
    // Case-insensitively, as files on some file systems would be.
    if [SYS, AUTH, APP, NACK]
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
    {
        return Err(bad("SYS, AUTH, APP and NACK are generated anyway"));
    }
    if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
        return Err(bad("given twice"));
    }
    Ok(())
}

/// Refuses a path that cannot go unquoted into `service.env` and quoted into a configuration.
pub fn usable_path(path: &Path) -> Result<&str, KeysError> {
    let unusable = |reason| KeysError::UnusablePath {
        path: path.to_path_buf(),
        reason,
    };
    let text = path.to_str().ok_or_else(|| unusable("not UTF-8"))?;
    if text
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\"'\\$`".contains(c))
    {
        return Err(unusable(
            "contains whitespace, a quote, '\\', '$' or '`', which the configuration and \
             service.env files cannot carry",
        ));
    }
    Ok(text)
}

fn seed_of(key: &KeyPair) -> Result<String, KeysError> {
    key.seed().map_err(KeysError::Seed)
}

/// An account being generated.
struct AccountKeys {
    name: String,
    key: KeyPair,
    /// Its plain signing key (client accounts only).
    signing: Option<KeyPair>,
}

impl AccountKeys {
    fn new(name: &str, signing: bool) -> AccountKeys {
        AccountKeys {
            name: name.to_string(),
            key: KeyPair::new_account(),
            signing: signing.then(KeyPair::new_account),
        }
    }

    fn public_key(&self) -> String {
        self.key.public_key()
    }
}

/// A creds user to generate.
struct UserSpec<'a> {
    name: &'static str,
    account: &'a AccountKeys,
    /// File name in [`CREDS_DIR`].
    file: &'static str,
    /// What it is for (the summary).
    what: &'static str,
    permissions: UserPermissionLimits,
}

/// A generated creds user.
struct UserKeys {
    name: &'static str,
    account: String,
    file: &'static str,
    what: &'static str,
    public_key: String,
    jwt: String,
    creds: String,
}

impl UserSpec<'_> {
    /// A new user key and its JWT, signed by the account's own key.
    fn generate(self, now: i64) -> Result<UserKeys, KeysError> {
        let key = KeyPair::new_user();
        let body = User {
            permissions: self.permissions,
            issuer_account: String::new(),
        };
        let jwt = sign(&self.account.key, &key.public_key(), self.name, now, &body)?;
        Ok(UserKeys {
            name: self.name,
            account: self.account.name.clone(),
            file: self.file,
            what: self.what,
            public_key: key.public_key(),
            creds: creds(&jwt, &seed_of(&key)?),
            jwt,
        })
    }
}

/// Refuses client account names that are unusable, reserved or repeated.
pub fn check_client_accounts(names: &[String]) -> Result<(), KeysError> {
    for (i, name) in names.iter().enumerate() {
        check_client_account(name, &names[..i])?;
    }
    Ok(())
}

/// Generates every key, JWT and file for `opts` at time `now` (Unix seconds); writes nothing.
pub fn generate(
    opts: &OperatorKeysOptions,
    paths: Paths<'_>,
    now: i64,
) -> Result<OperatorKeys, KeysError> {
    check_client_accounts(&opts.client_accounts)?;
    let material = Material::new(&opts.client_accounts, opts.xkey, now)?;
    Ok(OperatorKeys {
        files: material.files(paths)?,
        summary: material.summary(paths),
    })
}

/// An account with its JWT.
struct SignedAccount {
    keys: AccountKeys,
    description: &'static str,
    jwt: String,
}

/// Every key and JWT of one run, before any of it becomes a file.
struct Material {
    operator: KeyPair,
    operator_jwt: String,
    sys: SignedAccount,
    auth: SignedAccount,
    app: SignedAccount,
    nack: SignedAccount,
    clients: Vec<SignedAccount>,
    /// APP's scoped signing key.
    scoped: KeyPair,
    /// AUTH's signing key: signs the responses, so AUTH's own seed need not be in the service's
    /// hands and the key can be replaced without a restart.
    callout_signing: KeyPair,
    xkey: Option<XKey>,
    /// callout, sentinel, nack, sys.
    users: Vec<UserKeys>,
    sentinel_jwt: String,
}

impl Material {
    fn new(client_accounts: &[String], with_xkey: bool, now: i64) -> Result<Material, KeysError> {
        let operator = KeyPair::new_operator();
        let sys = AccountKeys::new(SYS, false);
        let auth = AccountKeys::new(AUTH, false);
        let app = AccountKeys::new(APP, true);
        let nack = AccountKeys::new(NACK, false);
        let clients: Vec<AccountKeys> = client_accounts
            .iter()
            .map(|n| AccountKeys::new(n, true))
            .collect();
        let scoped = KeyPair::new_account();
        let callout_signing = KeyPair::new_account();
        let xkey = with_xkey.then(XKey::new);

        let unrestricted =
            || UserPermissionLimits::new(Permission::default(), Permission::default());
        let users = [
            // Listed in AUTH's auth_users, so it bypasses the callout. AUTH holds no one else
            // but sentinels, so it needs no permissions of its own.
            UserSpec {
                name: "callout",
                account: &auth,
                file: "callout.creds",
                what: "the service's own user, in AUTH's auth_users: bypasses the callout",
                permissions: unrestricted(),
            },
            // A bearer JWT (clients present it without its seed) that may do nothing:
            // presenting it only sends the client's credentials to the callout.
            UserSpec {
                name: "sentinel",
                account: &auth,
                file: "sentinel.creds",
                what: "bearer, denies pub/sub >: clients present it with their token to reach \
                       the callout",
                permissions: UserPermissionLimits {
                    bearer_token: true,
                    ..UserPermissionLimits::new(Permission::deny(&[">"]), Permission::deny(&[">"]))
                },
            },
            UserSpec {
                name: "nack",
                account: &nack,
                file: "nack.creds",
                what: "the JetStream controller: publishes the JetStream API only",
                permissions: UserPermissionLimits::new(
                    Permission::allow(&[NACK_PUBLISH]),
                    Permission::allow(&[NACK_SUBSCRIBE]),
                ),
            },
            UserSpec {
                name: "sys",
                account: &sys,
                file: "sys.creds",
                what: "system account user: server requests, $SYS.REQ.CLAIMS.UPDATE",
                permissions: unrestricted(),
            },
        ]
        .into_iter()
        .map(|spec| spec.generate(now))
        .collect::<Result<Vec<_>, KeysError>>()?;
        let (callout_key, sentinel_jwt) = (users[0].public_key.clone(), users[1].jwt.clone());

        // The description goes into the JWT too, for people reading it.
        let signed = |keys: AccountKeys, description: &'static str, mut body: Account| {
            body.description = description.to_string();
            let jwt = sign(&operator, &keys.public_key(), &keys.name, now, &body)?;
            Ok::<_, KeysError>(SignedAccount {
                keys,
                description,
                jwt,
            })
        };
        // Client accounts: JetStream, a plain signing key, and for APP the scoped key too.
        let client = |a: &AccountKeys, extra: Option<SigningKey>| Account {
            limits: AccountLimits::unlimited().with_jetstream(),
            signing_keys: a
                .signing
                .iter()
                .map(|k| SigningKey::Plain(k.public_key()))
                .chain(extra)
                .collect(),
            authorization: None,
            description: String::new(),
        };
        let scope = UserScope::new(
            scoped.public_key(),
            SCOPED_ROLE,
            UserPermissionLimits::new(
                Permission::allow(&[SCOPED_SUBJECTS]),
                Permission::allow(&[SCOPED_SUBJECTS]),
            ),
            "each ServiceAccount may publish and subscribe in its own space only",
        );
        let auth_body = Account {
            // Bearer users stay allowed: the sentinel is one.
            limits: AccountLimits::unlimited(),
            // nats-server accepts a response signed by a key listed here.
            signing_keys: vec![SigningKey::Plain(callout_signing.public_key())],
            authorization: Some(ExternalAuthorization {
                auth_users: vec![callout_key],
                // Only the client accounts: never SYS, and not NACK, whose controller has its
                // own creds and whose JetStream administration no client should be given.
                allowed_accounts: std::iter::once(&app)
                    .chain(&clients)
                    .map(AccountKeys::public_key)
                    .collect(),
                xkey: xkey.as_ref().map(XKey::public_key).unwrap_or_default(),
            }),
            description: String::new(),
        };
        let plain = |limits| Account {
            limits,
            signing_keys: Vec::new(),
            authorization: None,
            description: String::new(),
        };
        let app_body = client(&app, Some(SigningKey::Scoped(scope)));
        let clients = clients
            .into_iter()
            .map(|c| {
                let body = client(&c, None);
                signed(c, "client account", body)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let operator_jwt = sign(
            &operator,
            &operator.public_key(),
            "nats-k8s-oidc-callout",
            now,
            &Operator {
                system_account: sys.public_key(),
            },
        )?;
        Ok(Material {
            // No one signs bearer users in SYS or NACK; refuse them should a key ever leak.
            sys: signed(
                sys,
                "system account",
                plain(AccountLimits::unlimited().without_bearer()),
            )?,
            auth: signed(auth, "auth callout account", auth_body)?,
            app: signed(app, "client account", app_body)?,
            nack: signed(
                nack,
                "JetStream controller account",
                plain(AccountLimits::unlimited().with_jetstream().without_bearer()),
            )?,
            clients,
            operator_jwt,
            operator,
            scoped,
            callout_signing,
            xkey,
            users,
            sentinel_jwt,
        })
    }

    /// SYS, AUTH, APP, NACK, then the extra client accounts.
    fn accounts(&self) -> impl Iterator<Item = &SignedAccount> {
        [&self.sys, &self.auth, &self.app, &self.nack]
            .into_iter()
            .chain(&self.clients)
    }

    fn files(&self, paths: Paths<'_>) -> Result<Vec<OutFile>, KeysError> {
        let mut files = Vec::new();
        let mut add = |path: PathBuf, contents: String, secret: bool| {
            files.push(OutFile {
                path,
                contents,
                secret,
            })
        };
        add(OPERATOR_SEED.into(), line(seed_of(&self.operator)?), true);
        add(OPERATOR_JWT.into(), line(self.operator_jwt.clone()), false);
        let accounts = Path::new(ACCOUNTS_DIR);
        for a in self.accounts() {
            let name = &a.keys.name;
            add(
                accounts.join(format!("{name}.nk")),
                line(seed_of(&a.keys.key)?),
                true,
            );
            add(
                accounts.join(format!("{name}.jwt")),
                line(a.jwt.clone()),
                false,
            );
            if let Some(k) = &a.keys.signing {
                add(
                    Path::new(SIGNING_KEYS_DIR).join(format!("{}.nk", a.keys.public_key())),
                    line(seed_of(k)?),
                    true,
                );
            }
        }
        add(
            accounts.join(SCOPED_KEY_SEED),
            line(seed_of(&self.scoped)?),
            true,
        );
        add(
            accounts.join(CALLOUT_SIGNING_KEY_SEED),
            line(seed_of(&self.callout_signing)?),
            true,
        );
        if let Some(x) = &self.xkey {
            add(
                XKEY_SEED.into(),
                line(x.seed().map_err(KeysError::Seed)?),
                true,
            );
        }
        for u in &self.users {
            add(Path::new(CREDS_DIR).join(u.file), u.creds.clone(), true);
        }

        let preload: Vec<Preload> = self
            .accounts()
            .map(|a| Preload {
                name: a.keys.name.clone(),
                public_key: a.keys.public_key(),
                jwt: a.jwt.clone(),
            })
            .collect();
        let config = ServerConfig {
            operator_jwt: &self.operator_jwt,
            system_account: &self.sys.keys.public_key(),
            jetstream_store_dir: paths.dir,
            preload: &preload,
        };
        let configs = [
            (
                MEMORY_CONFIG,
                Resolver::Memory {
                    default_sentinel: None,
                },
            ),
            (
                MEMORY_SENTINEL_CONFIG,
                Resolver::Memory {
                    default_sentinel: Some(&self.sentinel_jwt),
                },
            ),
            (
                FULL_CONFIG,
                Resolver::Full {
                    dir: paths.full_resolver_dir,
                },
            ),
        ];
        for (name, resolver) in configs {
            add(name.into(), server_config(&config, resolver), false);
        }

        let abs = |rel: &str| format!("{}/{rel}", paths.dir);
        let app = self.app.keys.public_key();
        let auth = self.auth.keys.public_key();
        let xkey_file = self.xkey.as_ref().map(|_| abs(XKEY_SEED));
        let env = ServiceEnv {
            account: &app,
            signing_key_file: &abs(&format!("{SIGNING_KEYS_DIR}/{app}.nk")),
            scoped_signing_key_file: &abs(&format!("{ACCOUNTS_DIR}/{SCOPED_KEY_SEED}")),
            callout_account: &auth,
            callout_signing_key_file: &abs(&format!("{ACCOUNTS_DIR}/{CALLOUT_SIGNING_KEY_SEED}")),
            xkey_seed_file: xkey_file.as_deref(),
            user_creds_file: &abs(&format!("{CREDS_DIR}/callout.creds")),
            account_signing_keys_dir: &abs(SIGNING_KEYS_DIR),
        };
        add(SERVICE_ENV.into(), service_env(&env), false);
        Ok(files)
    }

    /// Public keys and file names only.
    fn summary(&self, paths: Paths<'_>) -> String {
        let mut s = format!(
            "# operator-mode keys in {dir}; files ending in .nk or .creds hold seeds (mode 0600)\n\
             operator   {op}  {OPERATOR_SEED} {OPERATOR_JWT}\n",
            dir = paths.dir,
            op = self.operator.public_key(),
        );
        for a in self.accounts() {
            s.push_str(&format!(
                "account    {}  {ACCOUNTS_DIR}/{n}.nk {ACCOUNTS_DIR}/{n}.jwt ({n}: {})\n",
                a.keys.public_key(),
                a.description,
                n = a.keys.name,
            ));
            if let Some(k) = &a.keys.signing {
                s.push_str(&format!(
                    "  signing  {}  {SIGNING_KEYS_DIR}/{}.nk (plain signing key of {})\n",
                    k.public_key(),
                    a.keys.public_key(),
                    a.keys.name
                ));
            }
        }
        s.push_str(&format!(
            "  scoped   {}  {ACCOUNTS_DIR}/{SCOPED_KEY_SEED} (APP's scoped key, role \
             {SCOPED_ROLE}: pub/sub {SCOPED_SUBJECTS})\n",
            self.scoped.public_key()
        ));
        s.push_str(&format!(
            "  signing  {}  {ACCOUNTS_DIR}/{CALLOUT_SIGNING_KEY_SEED} (AUTH's signing key: signs \
             the callout's responses)\n",
            self.callout_signing.public_key()
        ));
        match &self.xkey {
            Some(x) => s.push_str(&format!(
                "xkey       {}  {XKEY_SEED} (AUTH's authorization.xkey: requests are sealed to \
                 it)\n",
                x.public_key()
            )),
            None => {
                s.push_str("xkey       none (--no-xkey): requests travel unsealed inside NATS\n")
            }
        }
        for u in &self.users {
            s.push_str(&format!(
                "user       {}  {CREDS_DIR}/{} ({} in {}: {})\n",
                u.public_key, u.file, u.name, u.account, u.what
            ));
        }
        s.push_str(&format!(
            "# nats-server configurations (add listen, TLS, cluster):\n\
             #   {MEMORY_CONFIG}: MEMORY resolver, accounts fixed until restart\n\
             #   {MEMORY_SENTINEL_CONFIG}: the same with default_sentinel: clients need no creds\n\
             #   {FULL_CONFIG}: full resolver in {full}; push account JWTs with \
             $SYS.REQ.CLAIMS.UPDATE as the sys user\n\
             #   JetStream data goes to {dir}/{JETSTREAM_DIR}\n\
             # boot: nats-server -c {dir}/{MEMORY_CONFIG}\n\
             # the service's environment: {dir}/{SERVICE_ENV} (plus NATS_URL)\n",
            full = paths.full_resolver_dir,
            dir = paths.dir,
        ));
        s
    }
}

fn line(mut text: String) -> String {
    text.push('\n');
    text
}

/// Writes `files` under `dir`: refuses before writing anything if one exists; directories it
/// creates are owner-only.
pub fn write(dir: &Path, files: &[OutFile]) -> Result<(), KeysError> {
    let existing: Vec<PathBuf> = files
        .iter()
        .map(|f| dir.join(&f.path))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    if !existing.is_empty() {
        return Err(KeysError::Exists(existing));
    }
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            let mut builder = DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            builder.mode(0o700);
            builder.create(parent).map_err(|source| KeysError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let mode = if f.secret { 0o600 } else { 0o644 };
        write_new(&path, f.contents.as_bytes(), mode).map_err(|source| KeysError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// `keys operator`: generates, writes and prints the summary.
pub fn run(opts: &OperatorKeysOptions) -> Result<(), KeysError> {
    // Refuse what can be refused before creating the directory.
    check_client_accounts(&opts.client_accounts)?;
    let requested = std::path::absolute(&opts.dir).map_err(|source| KeysError::Io {
        path: opts.dir.clone(),
        source,
    })?;
    usable_path(&requested)?;
    fs::create_dir_all(&opts.dir).map_err(|source| KeysError::Io {
        path: opts.dir.clone(),
        source,
    })?;
    let dir = fs::canonicalize(&opts.dir).map_err(|source| KeysError::Io {
        path: opts.dir.clone(),
        source,
    })?;
    let full = match &opts.full_resolver_dir {
        Some(p) => std::path::absolute(p).map_err(|source| KeysError::Io {
            path: p.clone(),
            source,
        })?,
        None => dir.join(FULL_RESOLVER_DIR),
    };
    let paths = Paths {
        dir: usable_path(&dir)?,
        full_resolver_dir: usable_path(&full)?,
    };
    let now = crate::unix_now();
    let keys = generate(opts, paths, now)?;
    write(&dir, &keys.files)?;
    print!("{}", keys.summary);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callout::jwt::decode_verified;
    use serde_json::{json, Value};

    fn options(clients: &[&str], xkey: bool) -> OperatorKeysOptions {
        OperatorKeysOptions {
            dir: "/d".into(),
            xkey,
            full_resolver_dir: None,
            client_accounts: clients.iter().map(|c| c.to_string()).collect(),
        }
    }

    const PATHS: Paths<'static> = Paths {
        dir: "/d",
        full_resolver_dir: "/d/jwt",
    };

    fn generated(clients: &[&str], xkey: bool) -> OperatorKeys {
        generate(&options(clients, xkey), PATHS, 1_800_000_000).unwrap()
    }

    fn file<'a>(keys: &'a OperatorKeys, path: &str) -> &'a OutFile {
        keys.files
            .iter()
            .find(|f| f.path == Path::new(path))
            .unwrap_or_else(|| panic!("{path} not generated"))
    }

    fn jwt(keys: &OperatorKeys, path: &str) -> Value {
        decode_verified(file(keys, path).contents.trim()).unwrap()
    }

    fn public_of_seed(keys: &OperatorKeys, path: &str) -> String {
        KeyPair::from_seed(file(keys, path).contents.trim())
            .unwrap()
            .public_key()
    }

    #[test]
    fn the_layout_is_fixed_and_every_seed_is_secret() {
        let keys = generated(&["APP2"], true);
        let app = public_of_seed(&keys, "accounts/APP.nk");
        let app2 = public_of_seed(&keys, "accounts/APP2.nk");
        let mut names: Vec<String> = keys
            .files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
        names.sort();
        let mut expected = vec![
            "operator.nk".to_string(),
            "operator.jwt".into(),
            "xkey.nk".into(),
            "accounts/APP.scoped.nk".into(),
            "accounts/AUTH.signing.nk".into(),
            "creds/callout.creds".into(),
            "creds/sentinel.creds".into(),
            "creds/nack.creds".into(),
            "creds/sys.creds".into(),
            "nats-memory.conf".into(),
            "nats-memory-default-sentinel.conf".into(),
            "nats-full.conf".into(),
            "service.env".into(),
            format!("signing-keys/{app}.nk"),
            format!("signing-keys/{app2}.nk"),
        ];
        for a in ["SYS", "AUTH", "APP", "NACK", "APP2"] {
            expected.push(format!("accounts/{a}.nk"));
            expected.push(format!("accounts/{a}.jwt"));
        }
        expected.sort();
        assert_eq!(names, expected);
        let seeds: Vec<&str> = keys
            .files
            .iter()
            .flat_map(|f| f.contents.lines())
            .filter(|l| l.len() == 58 && l.starts_with('S'))
            .collect();
        // Operator, 5 accounts, scoped key, 2 plain signing keys, AUTH's signing key, xkey,
        // 4 users.
        assert_eq!(seeds.len(), 15);
        for f in &keys.files {
            let name = f.path.display().to_string();
            let holds_seed = seeds.iter().any(|s| f.contents.contains(s));
            assert_eq!(f.secret, holds_seed, "{name}");
            assert_eq!(f.secret, name.ends_with(".nk") || name.ends_with(".creds"));
        }
    }

    #[test]
    fn accounts_are_signed_by_the_operator_and_sys_is_the_system_account() {
        let keys = generated(&[], true);
        let operator = jwt(&keys, "operator.jwt");
        let operator_pub = public_of_seed(&keys, "operator.nk");
        assert_eq!(operator["iss"], operator_pub);
        assert_eq!(operator["sub"], operator_pub);
        assert_eq!(
            operator["nats"]["system_account"],
            public_of_seed(&keys, "accounts/SYS.nk")
        );
        for a in ["SYS", "AUTH", "APP", "NACK"] {
            let claims = jwt(&keys, &format!("accounts/{a}.jwt"));
            assert_eq!(claims["iss"], operator_pub, "{a}");
            assert_eq!(
                claims["sub"],
                public_of_seed(&keys, &format!("accounts/{a}.nk"))
            );
            assert_eq!(claims["name"], a);
            assert_eq!(claims["nats"]["type"], "account");
            assert_eq!(claims["nats"]["version"], 2);
            // Without limits nats-server admits no connection to the account.
            assert_eq!(claims["nats"]["limits"]["conn"], -1, "{a}");
        }
        let js = |a: &str| {
            jwt(&keys, &format!("accounts/{a}.jwt"))["nats"]["limits"]
                .get("disk_storage")
                .cloned()
        };
        assert_eq!(js("APP"), Some(json!(-1)));
        assert_eq!(js("NACK"), Some(json!(-1)));
        assert_eq!(js("AUTH"), None);
        assert_eq!(js("SYS"), None);
    }

    #[test]
    fn auth_sends_sentinels_to_the_callout_user_and_allows_only_client_accounts() {
        let keys = generated(&["APP2"], true);
        let auth = jwt(&keys, "accounts/AUTH.jwt");
        let callout = creds_jwt(&keys, "creds/callout.creds");
        assert_eq!(
            auth["nats"]["authorization"],
            json!({
                "auth_users": [callout["sub"]],
                "allowed_accounts": [public_of_seed(&keys, "accounts/APP.nk"),
                                     public_of_seed(&keys, "accounts/APP2.nk")],
                "xkey": XKey::from_seed(file(&keys, "xkey.nk").contents.trim()).unwrap().public_key(),
            })
        );
        assert!(
            auth["nats"]["limits"].get("disallow_bearer").is_none(),
            "the sentinel is a bearer JWT"
        );
        // The responses' key, and nothing else.
        assert_eq!(
            auth["nats"]["signing_keys"],
            json!([public_of_seed(&keys, "accounts/AUTH.signing.nk")])
        );
        assert!(!keys.files.iter().any(|f| f.path
            == Path::new(&format!(
                "signing-keys/{}.nk",
                public_of_seed(&keys, "accounts/AUTH.nk")
            ))));
        let without = generated(&[], false);
        assert!(jwt(&without, "accounts/AUTH.jwt")["nats"]["authorization"]
            .get("xkey")
            .is_none());
        assert!(!without.files.iter().any(|f| f.path == Path::new("xkey.nk")));
    }

    fn creds_jwt(keys: &OperatorKeys, path: &str) -> Value {
        let text = &file(keys, path).contents;
        decode_verified(text.lines().nth(1).unwrap()).unwrap()
    }

    #[test]
    fn creds_users_belong_to_their_accounts_and_the_sentinel_may_do_nothing() {
        let keys = generated(&[], true);
        for (creds, account) in [
            ("creds/callout.creds", "AUTH"),
            ("creds/sentinel.creds", "AUTH"),
            ("creds/nack.creds", "NACK"),
            ("creds/sys.creds", "SYS"),
        ] {
            let user = creds_jwt(&keys, creds);
            assert_eq!(
                user["iss"],
                public_of_seed(&keys, &format!("accounts/{account}.nk")),
                "{creds}"
            );
            assert_eq!(user["nats"]["type"], "user");
            assert!(user["nats"].get("issuer_account").is_none());
            let text = &file(&keys, creds).contents;
            let seed = text
                .lines()
                .skip_while(|l| *l != "-----BEGIN USER NKEY SEED-----")
                .nth(1)
                .unwrap();
            assert_eq!(KeyPair::from_seed(seed).unwrap().public_key(), user["sub"]);
        }
        let sentinel = creds_jwt(&keys, "creds/sentinel.creds");
        assert_eq!(sentinel["nats"]["bearer_token"], true);
        assert_eq!(sentinel["nats"]["pub"], json!({"deny": [">"]}));
        assert_eq!(sentinel["nats"]["sub"], json!({"deny": [">"]}));
        let nack = creds_jwt(&keys, "creds/nack.creds");
        assert_eq!(nack["nats"]["pub"], json!({"allow": ["$JS.API.>"]}));
        assert_eq!(nack["nats"]["sub"], json!({"allow": ["_INBOX.>"]}));
    }

    #[test]
    fn app_lists_its_plain_and_scoped_keys_and_the_service_env_points_at_the_plain_one() {
        let keys = generated(&[], true);
        let app_pub = public_of_seed(&keys, "accounts/APP.nk");
        let plain = public_of_seed(&keys, &format!("signing-keys/{app_pub}.nk"));
        let scoped = public_of_seed(&keys, "accounts/APP.scoped.nk");
        let app = jwt(&keys, "accounts/APP.jwt");
        assert_eq!(
            app["nats"]["signing_keys"],
            json!([plain, {
                "kind": "user_scope", "key": scoped, "role": "service-account",
                "template": {"pub": {"allow": ["sa.{{name()}}._.>"]},
                             "sub": {"allow": ["sa.{{name()}}._.>"]},
                             "subs": -1, "data": -1, "payload": -1},
                "description": "each ServiceAccount may publish and subscribe in its own space only",
            }])
        );
        let env = &file(&keys, "service.env").contents;
        assert!(
            env.contains(&format!("\nNATS_ACCOUNT={app_pub}\n")),
            "{env}"
        );
        assert!(env.contains(&format!(
            "\nNATS_SIGNING_KEY_FILE=/d/signing-keys/{app_pub}.nk\n"
        )));
        assert!(env.contains(&format!(
            "\nNATS_CALLOUT_ACCOUNT={}\n",
            public_of_seed(&keys, "accounts/AUTH.nk")
        )));
        assert!(env.contains("\nNATS_CALLOUT_SIGNING_KEY_FILE=/d/accounts/AUTH.signing.nk\n"));
        assert!(env.contains("\nNATS_XKEY_SEED_FILE=/d/xkey.nk\n"));
        assert!(env.contains("\nNATS_USER_CREDS_FILE=/d/creds/callout.creds\n"));
        assert!(env.contains("\nNATS_ACCOUNT_SIGNING_KEYS_DIR=/d/signing-keys\n"));
    }

    #[test]
    fn the_summary_shows_public_keys_and_no_seed() {
        let keys = generated(&["APP2"], true);
        for f in keys.files.iter().filter(|f| f.secret) {
            let seed = f
                .contents
                .lines()
                .find(|l| l.starts_with('S') && l.len() > 50)
                .unwrap();
            assert!(!keys.summary.contains(seed), "{}", f.path.display());
        }
        assert!(keys
            .summary
            .contains(&public_of_seed(&keys, "accounts/APP2.nk")));
        assert!(keys.summary.contains("nats-server -c /d/nats-memory.conf"));
    }

    #[test]
    fn client_account_names_are_refused_with_the_reason() {
        for (names, reason) in [
            (&["a.b"][..], "use only letters"),
            (&[""][..], "1 to 64"),
            (&["app"][..], "generated anyway"),
            (&["X", "x"][..], "given twice"),
        ] {
            let err = generate(&options(names, false), PATHS, 0).unwrap_err();
            assert!(err.to_string().contains(reason), "{names:?}: {err}");
        }
    }

    #[test]
    fn paths_the_files_cannot_carry_are_refused() {
        for bad in ["/a b", "/a\"b", "/a$b", "/a\\b", "/a'b"] {
            let err = usable_path(Path::new(bad)).unwrap_err();
            assert!(err.to_string().contains("cannot carry"), "{bad}: {err}");
        }
        assert_eq!(usable_path(Path::new("/tmp/x-1_y")).unwrap(), "/tmp/x-1_y");
    }

    #[test]
    fn write_refuses_before_writing_anything_and_keeps_seeds_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let keys = generated(&[], true);
        // One existing file blocks the whole set, and is named.
        fs::write(dir.path().join("service.env"), "mine").unwrap();
        let err = write(dir.path(), &keys.files).unwrap_err();
        assert!(
            matches!(&err, KeysError::Exists(p) if p.len() == 1),
            "{err}"
        );
        assert!(err.to_string().contains("never overwritten"));
        assert!(!dir.path().join("operator.nk").exists());
        fs::remove_file(dir.path().join("service.env")).unwrap();
        write(dir.path(), &keys.files).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &str| {
                fs::metadata(dir.path().join(p))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode("operator.nk"), 0o600);
            assert_eq!(mode("creds/sentinel.creds"), 0o600);
            assert_eq!(mode("accounts/APP.scoped.nk"), 0o600);
            assert_eq!(mode("signing-keys"), 0o700);
        }
        assert!(matches!(
            write(dir.path(), &keys.files).unwrap_err(),
            KeysError::Exists(p) if p.len() == keys.files.len()
        ));
    }
}
