//! Every setting: its environment variable, default and validation.
//!
//! Read in two stages: the raw environment, then a validated [`Config`]. A bad setting stops
//! start-up with one message naming every problem.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::callout::connection::{Login, TlsSettings};
use crate::identity::jwks::DEFAULT_REFETCH_WAIT;
use crate::keys::{is_account_public_key, CalloutKeys, KeyFiles};

use crate::kube::{ApiClient, ConfigError};
use crate::policy::{AdminPolicy, InboxMode};
use crate::urls::{parse_nats_address, redact_url, redact_urls, HttpUrl, UrlError};

/// Where the service-account tokens' signing keys come from.
#[derive(Clone, PartialEq, Eq)]
pub enum JwksLocation {
    /// `JWKS_URL`: fetched over HTTPS (with cluster credentials only when it is the API server).
    Url(String),
    /// `JWKS_PATH`: a local file, re-read when it changes.
    Path(PathBuf),
    /// Neither set: the API server's `/openid/v1/jwks`, fetched with the cluster's credentials.
    ApiServer,
}

impl fmt::Debug for JwksLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // A URL may carry credentials or a signed query: never shown whole.
            JwksLocation::Url(u) => write!(f, "Url({:?})", redact_url(u)),
            JwksLocation::Path(p) => write!(f, "Path({p:?})"),
            JwksLocation::ApiServer => write!(f, "ApiServer"),
        }
    }
}

/// Where ServiceAccounts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountsSource {
    /// The Kubernetes API, from inside the cluster.
    InCluster,
    /// The Kubernetes API, through a kubeconfig file (`None`: `KUBECONFIG` or `~/.kube/config`).
    Kubeconfig(Option<PathBuf>),
    /// `SERVICE_ACCOUNTS_PATH`: a local file, for development without a cluster.
    File(PathBuf),
}

/// An [`AccountsSource`] made ready to ask: the API client, or the file.
#[derive(Debug)]
pub enum AccountsBackend {
    /// The Kubernetes API, through this client (in-cluster or from the kubeconfig).
    Api(Box<ApiClient>),
    /// The local ServiceAccount file.
    File(PathBuf),
}

impl AccountsSource {
    /// Builds the API client this source names (reading the in-cluster files or the
    /// kubeconfig), or passes the file on.
    pub fn open(&self) -> Result<AccountsBackend, ConfigError> {
        match self {
            AccountsSource::InCluster => ApiClient::in_cluster(),
            AccountsSource::Kubeconfig(path) => ApiClient::from_kubeconfig(path.as_deref()),
            AccountsSource::File(path) => return Ok(AccountsBackend::File(path.clone())),
        }
        .map(|client| AccountsBackend::Api(Box::new(client)))
    }
}

/// The settings that decide where a ServiceAccount is found and what it is granted: read by one
/// code path for the service ([`Config`]) and for `explain`, which needs nothing else.
#[derive(Debug)]
pub struct PermissionSettings {
    /// `K8S_IN_CLUSTER` / `KUBECONFIG` / `SERVICE_ACCOUNTS_PATH`.
    pub accounts: AccountsSource,
    /// `NATS_ACCOUNT`: the account clients are placed in unless a policy rule names another.
    pub nats_account: String,
    /// `INBOX_MODE`: how clients receive replies.
    pub inbox_mode: InboxMode,
    /// `POLICY_FILE`: the admin policy's file.
    pub policy_file: Option<PathBuf>,
    /// The admin policy read from `POLICY_FILE` (unrestricted without one).
    pub policy: AdminPolicy,
}

/// The validated configuration.
pub struct Config {
    /// `NATS_URL`: comma-separated server URLs.
    pub nats_url: String,
    /// The service's own login: `NATS_USER_CREDS_FILE` (alias `NATS_CREDS_FILE`),
    /// `NATS_NKEY_SEED_FILE`, `NATS_TOKEN` or `NATS_TOKEN_FILE` (never logged), else what
    /// `NATS_URL` carries.
    pub nats_login: Login,
    /// `NATS_CA_FILE`, `NATS_CLIENT_CERT_FILE` + `NATS_CLIENT_KEY_FILE`, `NATS_TLS_REQUIRED`.
    pub nats_tls: TlsSettings,
    /// `NATS_ACCOUNT`: the account clients are placed in.
    pub nats_account: String,
    /// Where the signing keys and the xkey are read from (and re-read when they change).
    pub key_files: KeyFiles,
    /// The keys as read at start (`NATS_SIGNING_KEY_FILE`, `NATS_XKEY_SEED_FILE`, and in
    /// operator mode the callout key and the accounts' keys).
    pub keys: Arc<CalloutKeys>,
    /// `JWKS_URL` / `JWKS_PATH`.
    pub jwks: JwksLocation,
    /// `JWT_ISSUER`.
    pub issuer: String,
    /// Whether `issuer` is the in-cluster default rather than a setting: the service then reads the
    /// real one from the API server's discovery document, falling back to the default.
    pub issuer_is_default: bool,
    /// `JWT_AUDIENCE`.
    pub audience: String,
    /// `JWT_LEEWAY`: clock skew allowed on `exp`/`nbf`/`iat`.
    pub leeway: Duration,
    /// `JWKS_MIN_REFETCH_INTERVAL`: least time between two key-set fetches for an unknown `kid`.
    pub jwks_min_refetch: Duration,
    /// `JWKS_REFETCH_WAIT`: longest a request with an unknown `kid` waits for the refetch it
    /// asked for (or found asked for), counted from when that refetch was asked for.
    pub jwks_refetch_wait: Duration,
    /// `K8S_IN_CLUSTER` / `KUBECONFIG` / `SERVICE_ACCOUNTS_PATH`.
    pub accounts: AccountsSource,
    /// `WATCH_TIMEOUT_SECONDS`: server-side timeout of each watch request.
    pub watch_timeout_secs: u64,
    /// `PORT`: HTTP port for health and metrics.
    pub port: u16,
    /// `HTTP_ADDRESS` (default `0.0.0.0`, every IPv4 interface): the IP address the health and
    /// metrics port listens on; `::` listens on every IPv6 interface (and IPv4 ones too, unless
    /// the host sets `net.ipv6.bindv6only`).
    pub http_address: IpAddr,
    /// `LOG_LEVEL`.
    pub log_level: String,
    /// `WORKERS`: threads deciding requests.
    pub workers: usize,
    /// `QUEUE_SIZE`: requests that may wait for a worker.
    pub queue_size: usize,
    /// `TOKEN_CACHE_SIZE`: tokens of allowed clients remembered as verified (0: none).
    pub token_cache_size: usize,
    /// `USER_JWT_MAX_LIFETIME`: longest a client stays connected before presenting a new token.
    pub max_lifetime: Duration,
    /// `SHUTDOWN_TIMEOUT`: time allowed to finish in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// `INBOX_MODE`: how clients receive replies.
    pub inbox_mode: InboxMode,
    /// `POLICY_FILE`: the admin policy's file, re-read when it changes.
    pub policy_file: Option<PathBuf>,
    /// The admin policy read from `POLICY_FILE` (unrestricted without one).
    pub policy: AdminPolicy,
    /// `SERVICEACCOUNT_EVENTS` (default `true`): a Warning Event on a ServiceAccount whose
    /// annotation entries were dropped. Needs ServiceAccounts from the API (ignored with
    /// `SERVICE_ACCOUNTS_PATH`) and RBAC `create` on `events`.
    pub serviceaccount_events: bool,
    /// `HOSTNAME` (the pod's name in a cluster): the Events' `reportingInstance`.
    pub instance: Option<String>,
    /// Live revocation, when `NATS_SYSTEM_URL` is set.
    pub revocation: Option<RevocationConfig>,
    /// The self-check, when `SELF_CHECK_INTERVAL` turns it on (ignored with
    /// `SERVICE_ACCOUNTS_PATH` and no `SELF_CHECK_TOKEN_FILE`: no API server to ask for a token).
    pub self_check: Option<SelfCheckConfig>,
    /// `POD_BINDING` / `NON_POD_TOKENS`: what is required of a token's bound object.
    pub binding: BindingConfig,
}

/// `POD_BINDING`: whether a pod-bound token's pod is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodBinding {
    /// `off` (the default): a token is checked on its own, as before.
    Off,
    /// `watch`: the pods are listed and watched; a token whose pod is gone (or another pod
    /// now) is refused, and a deleted pod's connections are closed when revocation is on.
    Watch,
}

/// What is required of the object a token is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingConfig {
    /// `POD_BINDING`.
    pub pod: PodBinding,
    /// `NON_POD_TOKENS` (`accept` or `refuse`): whether a token bound to no pod (bound to a
    /// node or a Secret only, or to nothing, as `kubectl create token` makes them) is
    /// accepted. Default: `refuse` with `POD_BINDING=watch` (such a token would not die with any
    /// pod), `accept` otherwise.
    pub non_pod_tokens: bool,
}

/// Reads `POD_BINDING` and `NON_POD_TOKENS`.
fn binding_config(r: &mut Reader<'_>, accounts: &AccountsSource) -> BindingConfig {
    let pod = match r.get("POD_BINDING").map(str::to_ascii_lowercase).as_deref() {
        None | Some("off") => PodBinding::Off,
        Some("watch") => PodBinding::Watch,
        Some(other) => {
            r.problems
                .push(format!("POD_BINDING={other:?} is not one of off, watch"));
            PodBinding::Off
        }
    };
    if pod == PodBinding::Watch && matches!(accounts, AccountsSource::File(_)) {
        r.problems.push(
            "POD_BINDING=watch needs the Kubernetes API (SERVICE_ACCOUNTS_PATH has no pods)".into(),
        );
    }
    let default = pod == PodBinding::Off;
    let non_pod_tokens = match r
        .get("NON_POD_TOKENS")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => default,
        Some("accept") => true,
        Some("refuse") => false,
        Some(other) => {
            r.problems.push(format!(
                "NON_POD_TOKENS={other:?} is not one of accept, refuse"
            ));
            default
        }
    };
    BindingConfig {
        pod,
        non_pod_tokens,
    }
}

/// How live revocation reaches nats-server's system account.
#[derive(Clone, PartialEq, Eq)]
pub struct RevocationConfig {
    /// `NATS_SYSTEM_URL`: comma-separated URLs (may embed `user:pass@`) of a system-account user.
    pub url: String,
    /// `NATS_SYSTEM_CREDS_FILE`: that user's creds (operator mode).
    pub creds: Option<PathBuf>,
}

impl fmt::Debug for RevocationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationConfig")
            .field("url", &redact_urls(&self.url))
            .field("creds", &self.creds)
            .finish()
    }
}

/// The self-check's settings (`SELF_CHECK_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfCheckConfig {
    /// `SELF_CHECK_INTERVAL`: time between checks.
    pub interval: Duration,
    /// Namespace of `SELF_CHECK_SERVICE_ACCOUNT` (`namespace/name`): the service's own.
    pub namespace: String,
    /// Name of `SELF_CHECK_SERVICE_ACCOUNT`.
    pub name: String,
    /// `SELF_CHECK_READINESS`: `/readyz` waits for a passing check.
    pub gates_readiness: bool,
    /// `SELF_CHECK_CREDS_FILE`: the sentinel's creds, for an operator-mode server without
    /// `default_sentinel` (its clients present the sentinel and their token).
    pub sentinel_creds: Option<PathBuf>,
    /// `SELF_CHECK_TOKEN_FILE`: a token of the service's ServiceAccount that the kubelet keeps
    /// current (a projected volume); without it the check asks the API server (TokenRequest).
    pub token_file: Option<PathBuf>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("nats_url", &redact_urls(&self.nats_url))
            .field("nats_account", &self.nats_account)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("jwks", &self.jwks)
            .field("accounts", &self.accounts)
            .field("inbox_mode", &self.inbox_mode)
            .field("policy_file", &self.policy_file)
            .field("serviceaccount_events", &self.serviceaccount_events)
            .field("revocation", &self.revocation)
            .field("self_check", &self.self_check)
            .field("binding", &self.binding)
            .finish_non_exhaustive()
    }
}

/// Checks every entry of the comma-separated `urls` (the value of `name`) the way the NATS
/// client parses them: one that does not parse could never connect.
fn check_nats_urls(r: &mut Reader<'_>, name: &str, urls: &str) {
    for (i, u) in urls.split(',').enumerate() {
        match parse_nats_address(u) {
            Ok((url, _)) if matches!(url.scheme(), "nats" | "tls") => {}
            Ok((url, _)) => r.problems.push(format!(
                "{name} entry {} ({}) has the scheme {:?}; use nats:// or tls://",
                i + 1,
                redact_url(u),
                url.scheme()
            )),
            Err(e) => r.problems.push(format!(
                "{name} entry {} is not a valid URL ({e}); a / # or ? in a user name or password ends the host part",
                i + 1
            )),
        }
    }
}

/// Reads `NATS_SYSTEM_URL` and `NATS_SYSTEM_CREDS_FILE`.
fn revocation_config(r: &mut Reader<'_>) -> Option<RevocationConfig> {
    let creds = self_check_file(r, "NATS_SYSTEM_CREDS_FILE");
    let Some(url) = r.get("NATS_SYSTEM_URL").map(str::to_owned) else {
        if creds.is_some() {
            r.problems
                .push("NATS_SYSTEM_CREDS_FILE needs NATS_SYSTEM_URL (where to connect)".into());
        }
        return None;
    };
    let url = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    check_nats_urls(r, "NATS_SYSTEM_URL", &url);
    Some(RevocationConfig { url, creds })
}

/// Reads `SELF_CHECK_INTERVAL`, `SELF_CHECK_SERVICE_ACCOUNT` and `SELF_CHECK_READINESS`.
fn self_check_config(r: &mut Reader<'_>) -> Option<SelfCheckConfig> {
    let interval = r.duration(
        "SELF_CHECK_INTERVAL",
        Duration::ZERO,
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    let gates_readiness = r.bool("SELF_CHECK_READINESS", false);
    if interval.is_zero() {
        if gates_readiness {
            r.problems.push(
                "SELF_CHECK_READINESS=true needs the self-check on (SELF_CHECK_INTERVAL)".into(),
            );
        }
        return None;
    }
    if interval < Duration::from_secs(5) {
        r.problems.push(format!(
            "SELF_CHECK_INTERVAL={interval:?} is too short: 0 (off) or at least 5s"
        ));
        return None;
    }
    let Some(own) = r.get("SELF_CHECK_SERVICE_ACCOUNT").map(str::to_owned) else {
        r.problems.push(
            "SELF_CHECK_INTERVAL needs SELF_CHECK_SERVICE_ACCOUNT: the service's own ServiceAccount as namespace/name".into(),
        );
        return None;
    };
    match own.split_once('/') {
        Some((ns, name))
            if crate::kube::is_valid_namespace(ns) && crate::kube::is_valid_object_name(name) =>
        {
            Some(SelfCheckConfig {
                interval,
                namespace: ns.to_owned(),
                name: name.to_owned(),
                gates_readiness,
                sentinel_creds: self_check_file(r, "SELF_CHECK_CREDS_FILE"),
                token_file: self_check_file(r, "SELF_CHECK_TOKEN_FILE"),
            })
        }
        _ => {
            r.problems.push(format!(
                "SELF_CHECK_SERVICE_ACCOUNT={own:?} is not namespace/name of a ServiceAccount"
            ));
            None
        }
    }
}

/// The file the variable `name` names, which must be one.
fn self_check_file(r: &mut Reader<'_>, name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(r.get(name)?);
    if !path.is_file() {
        r.problems
            .push(format!("{name}: {} is not a readable file", path.display()));
    }
    Some(path)
}

/// The in-cluster default issuer.
pub const IN_CLUSTER_ISSUER: &str = "https://kubernetes.default.svc";

/// Parses a duration: `90`, `90s`, `15m`, `1h`, `500ms`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

struct Reader<'a> {
    env: &'a HashMap<String, String>,
    problems: Vec<String>,
}

impl Reader<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.env
            .get(name)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    fn or(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_string()
    }

    fn parsed<T: std::str::FromStr>(
        &mut self,
        name: &str,
        default: T,
        what: &str,
        ok: impl Fn(&T) -> bool,
    ) -> T {
        match self.get(name) {
            None => default,
            Some(v) => match v.parse::<T>() {
                Ok(x) if ok(&x) => x,
                _ => {
                    self.problems.push(format!("{name}={v:?} is not {what}"));
                    default
                }
            },
        }
    }

    fn duration(
        &mut self,
        name: &str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        match self.get(name) {
            None => default,
            Some(v) => match parse_duration(v) {
                Some(d) if d >= min && d <= max => d,
                _ => {
                    self.problems.push(format!(
                        "{name}={v:?} is not a duration between {min:?} and {max:?} (e.g. 90s, 15m, 1h)"
                    ));
                    default
                }
            },
        }
    }

    fn bool(&mut self, name: &str, default: bool) -> bool {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None => default,
            Some("true" | "1" | "yes") => true,
            Some("false" | "0" | "no") => false,
            Some(v) => {
                self.problems
                    .push(format!("{name}={v:?} is not true or false"));
                default
            }
        }
    }

    /// Every problem found, as one error.
    fn into_error(self) -> InvalidConfig {
        InvalidConfig {
            problems: self.problems,
        }
    }
}

/// Settings that cannot be used: every problem found, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct InvalidConfig {
    /// One line per problem, naming the variable.
    pub problems: Vec<String>,
}

impl PermissionSettings {
    /// Reads these settings alone from the process environment.
    pub fn from_env() -> Result<PermissionSettings, InvalidConfig> {
        PermissionSettings::from_map(&std::env::vars().collect())
    }

    /// Reads these settings alone from `env`; the error names every problem found.
    pub fn from_map(env: &HashMap<String, String>) -> Result<PermissionSettings, InvalidConfig> {
        let mut r = Reader {
            env,
            problems: Vec::new(),
        };
        let settings = PermissionSettings::read(&mut r);
        if r.problems.is_empty() {
            Ok(settings)
        } else {
            Err(r.into_error())
        }
    }

    /// Reads the settings, noting each problem in `r` (a missing `NATS_ACCOUNT` is left empty).
    fn read(r: &mut Reader<'_>) -> PermissionSettings {
        let nats_account = r
            .get("NATS_ACCOUNT")
            .map(str::to_string)
            .unwrap_or_else(|| {
                r.problems
                    .push("NATS_ACCOUNT is required (the account clients are placed in)".into());
                String::new()
            });
        if nats_account == crate::policy::admin::SYSTEM_ACCOUNT {
            r.problems.push(format!(
                "NATS_ACCOUNT={nats_account:?} is nats-server's system account: clients placed there read the answers to operators' $SYS requests"
            ));
        }
        let accounts = if let Some(p) = r.get("SERVICE_ACCOUNTS_PATH") {
            AccountsSource::File(PathBuf::from(p))
        } else if r.bool("K8S_IN_CLUSTER", true) {
            AccountsSource::InCluster
        } else {
            AccountsSource::Kubeconfig(r.get("KUBECONFIG").map(PathBuf::from))
        };
        let inbox_mode = match r.get("INBOX_MODE").map(str::to_ascii_lowercase) {
            None => InboxMode::Shared,
            Some(v) => InboxMode::parse(&v).unwrap_or_else(|| {
                r.problems.push(format!(
                    "INBOX_MODE={v:?} is not one of shared, private, responses"
                ));
                InboxMode::Shared
            }),
        };
        let policy_file = r.get("POLICY_FILE").map(PathBuf::from);
        let policy = match &policy_file {
            None => AdminPolicy::unrestricted(),
            Some(path) => AdminPolicy::load(path).unwrap_or_else(|e| {
                r.problems.push(format!("POLICY_FILE: {e}"));
                AdminPolicy::unrestricted()
            }),
        };
        PermissionSettings {
            accounts,
            nats_account,
            inbox_mode,
            policy_file,
            policy,
        }
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, String> {
        Config::from_map(&std::env::vars().collect())
    }

    /// Reads the configuration from `env`; the error names every problem found.
    pub fn from_map(env: &HashMap<String, String>) -> Result<Config, String> {
        let mut r = Reader {
            env,
            problems: Vec::new(),
        };
        // A comma-separated list; blanks around the commas are tolerated.
        let nats_url = r
            .or("NATS_URL", "nats://nats:4222")
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect::<Vec<_>>()
            .join(",");
        // Parsed as the NATS client parses them: one that does not parse could never connect.
        check_nats_urls(&mut r, "NATS_URL", &nats_url);
        let creds = r
            .get("NATS_USER_CREDS_FILE")
            .or(r.get("NATS_CREDS_FILE"))
            .map(PathBuf::from);
        let nats_token = r.get("NATS_TOKEN").map(str::to_string);
        let nkey_seed = r.get("NATS_NKEY_SEED_FILE").map(PathBuf::from);
        let token_file = r.get("NATS_TOKEN_FILE").map(PathBuf::from);
        let logins = [
            creds.as_ref().map(|_| "NATS_USER_CREDS_FILE"),
            nkey_seed.as_ref().map(|_| "NATS_NKEY_SEED_FILE"),
            nats_token.as_ref().map(|_| "NATS_TOKEN"),
            token_file.as_ref().map(|_| "NATS_TOKEN_FILE"),
        ];
        let given: Vec<&str> = logins.into_iter().flatten().collect();
        match given.as_slice() {
            [a, b] => r
                .problems
                .push(format!("{a} and {b} are both set; use at most one")),
            [a, b, c] => r
                .problems
                .push(format!("{a}, {b} and {c} are all set; use at most one")),
            [a, b, c, d] => r.problems.push(format!(
                "{a}, {b}, {c} and {d} are all set; use at most one"
            )),
            _ => {}
        }
        for (name, path) in [
            ("NATS_USER_CREDS_FILE", &creds),
            ("NATS_NKEY_SEED_FILE", &nkey_seed),
            ("NATS_TOKEN_FILE", &token_file),
        ] {
            if let Some(p) = path {
                if !p.is_file() {
                    r.problems
                        .push(format!("{name}: {} is not a readable file", p.display()));
                }
            }
        }
        let nats_login = match (creds, nkey_seed, nats_token, token_file) {
            (Some(p), _, _, _) => Login::CredsFile(p),
            (None, Some(p), _, _) => Login::NkeySeedFile(p),
            (None, None, Some(t), _) => Login::Token(t),
            (None, None, None, Some(p)) => Login::TokenFile(p),
            (None, None, None, None) => Login::None,
        };
        let client_cert = match (
            r.get("NATS_CLIENT_CERT_FILE").map(PathBuf::from),
            r.get("NATS_CLIENT_KEY_FILE").map(PathBuf::from),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (cert, _) => {
                r.problems.push(format!(
                    "{} is set without {}; mutual TLS needs both",
                    if cert.is_some() {
                        "NATS_CLIENT_CERT_FILE"
                    } else {
                        "NATS_CLIENT_KEY_FILE"
                    },
                    if cert.is_some() {
                        "NATS_CLIENT_KEY_FILE"
                    } else {
                        "NATS_CLIENT_CERT_FILE"
                    },
                ));
                None
            }
        };
        let nats_tls = TlsSettings {
            ca_file: r.get("NATS_CA_FILE").map(PathBuf::from),
            client_cert,
            required: r.bool("NATS_TLS_REQUIRED", false),
        };
        // Read now, so a missing or unusable file is a start-up error naming it. The system
        // store is only read when TLS is used (at the first connect).
        if nats_tls.ca_file.is_some() || nats_tls.client_cert.is_some() {
            if let Err(e) = nats_tls.check() {
                r.problems.push(e);
            }
        }
        if r.get("NATS_SIGNING_KEY_FILE").is_none() {
            r.problems.push(
                "NATS_SIGNING_KEY_FILE is required (a file holding the account seed, SA…)".into(),
            );
        }
        let operator_mode = r.bool("NATS_OPERATOR_MODE", false);
        let PermissionSettings {
            accounts,
            nats_account,
            inbox_mode,
            policy_file,
            policy,
        } = PermissionSettings::read(&mut r);
        let key_files = KeyFiles {
            operator_mode,
            default_account: nats_account.clone(),
            signing: r
                .get("NATS_SIGNING_KEY_FILE")
                .map(PathBuf::from)
                .unwrap_or_default(),
            signing_scoped: r.bool("NATS_SIGNING_KEY_SCOPED", false),
            callout: r.get("NATS_CALLOUT_SIGNING_KEY_FILE").map(PathBuf::from),
            callout_account: r.get("NATS_CALLOUT_ACCOUNT").map(str::to_owned),
            xkey: r.get("NATS_XKEY_SEED_FILE").map(PathBuf::from),
            accounts_dir: r.get("NATS_ACCOUNT_SIGNING_KEYS_DIR").map(PathBuf::from),
        };
        let keys = if r.get("NATS_SIGNING_KEY_FILE").is_some() {
            match key_files.load(None) {
                Ok(keys) => Some(Arc::new(keys)),
                Err(problems) => {
                    r.problems.extend(problems);
                    None
                }
            }
        } else {
            None
        };
        if operator_mode {
            // In operator mode an account is named by its public key, in the policy too.
            for account in policy.accounts() {
                if !is_account_public_key(account) {
                    r.problems.push(format!(
                        "POLICY_FILE: rule account {account:?} must be an account public key (A…) in operator mode"
                    ));
                }
            }
        }

        let jwks_url = r.get("JWKS_URL").map(str::to_string);
        let jwks_path = r.get("JWKS_PATH").map(str::to_string);
        let jwks = match (jwks_url.as_deref(), jwks_path.as_deref()) {
            (Some(_), Some(_)) => {
                r.problems
                    .push("JWKS_URL and JWKS_PATH are both set; use exactly one".into());
                JwksLocation::ApiServer
            }
            (Some(u), None) => match HttpUrl::parse(u) {
                Ok(url) if url.is_https() || url.is_loopback() => {
                    JwksLocation::Url(url.as_str().to_owned())
                }
                Err(e @ UrlError::Irregular) => {
                    r.problems
                        .push(format!("JWKS_URL={:?} is {e}", redact_url(u)));
                    JwksLocation::ApiServer
                }
                _ => {
                    r.problems.push(format!(
                        "JWKS_URL={:?} is not an https URL (plain http is accepted for loopback addresses only: anyone on the path could swap the keys)",
                        redact_url(u)
                    ));
                    JwksLocation::ApiServer
                }
            },
            (None, Some(p)) => JwksLocation::Path(PathBuf::from(p)),
            (None, None) => {
                if matches!(accounts, AccountsSource::File(_)) {
                    r.problems.push("SERVICE_ACCOUNTS_PATH needs JWKS_PATH or JWKS_URL (there is no API server to ask)".into());
                }
                JwksLocation::ApiServer
            }
        };
        let issuer_is_default =
            r.get("JWT_ISSUER").is_none() && accounts == AccountsSource::InCluster;
        let issuer = match r.get("JWT_ISSUER") {
            Some(i) => i.to_string(),
            None if accounts == AccountsSource::InCluster => IN_CLUSTER_ISSUER.to_string(),
            None => {
                r.problems.push(
                    "JWT_ISSUER is required outside the cluster (the exact `iss` of the tokens)"
                        .into(),
                );
                String::new()
            }
        };
        let audience = r.or("JWT_AUDIENCE", "nats");
        let leeway = r.duration(
            "JWT_LEEWAY",
            Duration::from_secs(60),
            Duration::ZERO,
            Duration::from_secs(300),
        );
        let jwks_min_refetch = r.duration(
            "JWKS_MIN_REFETCH_INTERVAL",
            Duration::from_secs(60),
            Duration::from_secs(1),
            Duration::from_secs(3600),
        );
        // Bounded by nats-server's default auth timeout (2 s): a longer wait only makes the
        // request that asked for the refetch miss it.
        let jwks_refetch_wait = r.duration(
            "JWKS_REFETCH_WAIT",
            DEFAULT_REFETCH_WAIT,
            Duration::ZERO,
            Duration::from_secs(2),
        );
        let watch_timeout_secs = r.parsed(
            "WATCH_TIMEOUT_SECONDS",
            290u64,
            "a number of seconds from 10 to 3600",
            |v| (10..=3600).contains(v),
        );
        let port = r.parsed("PORT", 8080u16, "a TCP port", |p| *p > 0);
        let http_address = match r.get("HTTP_ADDRESS") {
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Some(v) => {
                // `[::]` as well as `::`: the brackets of a URL are a common habit.
                let bare = v.strip_prefix('[').and_then(|b| b.strip_suffix(']'));
                match bare.unwrap_or(v).parse::<IpAddr>() {
                    Ok(ip) => ip,
                    Err(_) => {
                        r.problems.push(format!(
                            "HTTP_ADDRESS={v:?} is not an IP address (0.0.0.0, ::, 127.0.0.1 …; the port is PORT)"
                        ));
                        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                    }
                }
            }
        };
        let log_level = r.or("LOG_LEVEL", "info").to_ascii_lowercase();
        if !["error", "warn", "info", "debug", "trace", "off"].contains(&log_level.as_str()) {
            r.problems.push(format!(
                "LOG_LEVEL={log_level:?} is not one of error, warn, info, debug, trace, off"
            ));
        }
        let default_workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            * 2;
        let workers = r.parsed("WORKERS", default_workers, "a number from 1 to 256", |v| {
            (1..=256).contains(v)
        });
        let queue_size = r.parsed("QUEUE_SIZE", 1024usize, "a number from 1 to 1000000", |v| {
            (1..=1_000_000).contains(v)
        });
        let token_cache_size = r.parsed(
            "TOKEN_CACHE_SIZE",
            10_000usize,
            "a number from 0 to 1000000",
            |v| (0..=1_000_000).contains(v),
        );
        let max_lifetime = r.duration(
            "USER_JWT_MAX_LIFETIME",
            Duration::from_secs(3600),
            Duration::from_secs(10),
            Duration::from_secs(7 * 24 * 3600),
        );
        let shutdown_timeout = r.duration(
            "SHUTDOWN_TIMEOUT",
            Duration::from_secs(10),
            Duration::ZERO,
            Duration::from_secs(300),
        );

        let serviceaccount_events = r.bool("SERVICEACCOUNT_EVENTS", true);
        let instance = r.get("HOSTNAME").map(str::to_owned);
        let self_check = self_check_config(&mut r);
        let revocation = revocation_config(&mut r);
        let binding = binding_config(&mut r, &accounts);

        match (keys, r.problems.is_empty()) {
            (Some(keys), true) => Ok(Config {
                nats_url,
                nats_login,
                nats_tls,
                nats_account,
                key_files,
                keys,
                jwks,
                issuer,
                issuer_is_default,
                audience,
                leeway,
                jwks_min_refetch,
                jwks_refetch_wait,
                accounts,
                watch_timeout_secs,
                port,
                http_address,
                log_level,
                workers,
                queue_size,
                token_cache_size,
                max_lifetime,
                shutdown_timeout,
                inbox_mode,
                policy_file,
                policy,
                serviceaccount_events,
                instance,
                revocation,
                self_check,
                binding,
            }),
            _ => Err(r.into_error().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nkeys::KeyPair;
    use std::io::Write;

    fn seed_file(seed: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "{seed}").unwrap();
        f
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn in_cluster_defaults() {
        let seed = KeyPair::new_account().seed().unwrap();
        let f = seed_file(&seed);
        let c = Config::from_map(&env(&[
            ("NATS_SIGNING_KEY_FILE", f.path().to_str().unwrap()),
            ("NATS_ACCOUNT", "APP"),
        ]))
        .unwrap();
        assert_eq!(c.nats_url, "nats://nats:4222");
        assert_eq!(c.issuer, IN_CLUSTER_ISSUER);
        assert_eq!(c.audience, "nats");
        assert_eq!(c.jwks, JwksLocation::ApiServer);
        assert_eq!(c.accounts, AccountsSource::InCluster);
        assert_eq!(c.port, 8080);
        assert_eq!(c.http_address, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(c.max_lifetime, Duration::from_secs(3600));
        assert_eq!(
            c.keys.signer.issuer(),
            KeyPair::from_seed(&seed).unwrap().public_key()
        );
        assert!(c.keys.decoder.xkey().is_none());
        assert_eq!(c.inbox_mode, InboxMode::Shared);
        assert!(c.policy_file.is_none() && c.policy.is_unrestricted());
        assert!(c.serviceaccount_events);
        assert_eq!(c.instance, None);
    }

    /// The configuration from a minimal environment (a signing key, an account) plus `extra`.
    fn with(extra: &[(&str, &str)]) -> Result<Config, String> {
        let seed = seed_file(&KeyPair::new_account().seed().unwrap());
        let mut pairs = vec![
            ("NATS_SIGNING_KEY_FILE", seed.path().to_str().unwrap()),
            ("NATS_ACCOUNT", "APP"),
        ];
        pairs.extend_from_slice(extra);
        Config::from_map(&env(&pairs))
    }

    #[test]
    fn pod_binding_is_off_by_default_and_refuses_tokens_bound_to_no_pod_when_on() {
        let off = with(&[]).unwrap().binding;
        assert_eq!((off.pod, off.non_pod_tokens), (PodBinding::Off, true));
        let on = with(&[("POD_BINDING", "watch")]).unwrap().binding;
        assert_eq!((on.pod, on.non_pod_tokens), (PodBinding::Watch, false));
        let lenient = with(&[("POD_BINDING", "Watch"), ("NON_POD_TOKENS", "accept")]).unwrap();
        assert!(lenient.binding.non_pod_tokens);
        let strict = with(&[("NON_POD_TOKENS", "refuse")]).unwrap().binding;
        assert_eq!(
            (strict.pod, strict.non_pod_tokens),
            (PodBinding::Off, false)
        );
        let err = with(&[("POD_BINDING", "tokenreview"), ("NON_POD_TOKENS", "maybe")])
            .err()
            .unwrap();
        assert!(
            err.contains("POD_BINDING=\"tokenreview\" is not one of off, watch"),
            "{err}"
        );
        assert!(
            err.contains("NON_POD_TOKENS=\"maybe\" is not one of accept, refuse"),
            "{err}"
        );
        let err = with(&[
            ("POD_BINDING", "watch"),
            ("SERVICE_ACCOUNTS_PATH", "/x"),
            ("JWKS_PATH", "/y"),
            ("JWT_ISSUER", "https://i"),
        ])
        .err()
        .unwrap();
        assert!(
            err.contains("POD_BINDING=watch needs the Kubernetes API"),
            "{err}"
        );
    }

    #[test]
    fn revocation_is_off_without_a_system_url_and_its_url_is_checked_and_never_printed() {
        assert_eq!(with(&[]).unwrap().revocation, None);
        let on = with(&[(
            "NATS_SYSTEM_URL",
            " nats://sys:s3cret@nats:4222 , tls://b:4222",
        )])
        .unwrap();
        let revocation = on.revocation.clone().unwrap();
        assert_eq!(revocation.url, "nats://sys:s3cret@nats:4222,tls://b:4222");
        assert!(!format!("{on:?}").contains("s3cret"), "{on:?}");
        let err = with(&[("NATS_SYSTEM_URL", "http://sys:s3cret@nats:4222")]).unwrap_err();
        assert!(
            err.contains("NATS_SYSTEM_URL entry 1") && !err.contains("s3cret"),
            "{err}"
        );
        let err = with(&[("NATS_SYSTEM_CREDS_FILE", "/etc/hosts")]).unwrap_err();
        assert!(
            err.contains("NATS_SYSTEM_CREDS_FILE needs NATS_SYSTEM_URL"),
            "{err}"
        );
    }

    #[test]
    fn the_self_check_is_off_by_default_and_needs_its_own_service_account() {
        assert_eq!(with(&[]).unwrap().self_check, None);
        assert_eq!(
            with(&[("SELF_CHECK_INTERVAL", "0")]).unwrap().self_check,
            None
        );
        let on = with(&[
            ("SELF_CHECK_INTERVAL", "30s"),
            ("SELF_CHECK_SERVICE_ACCOUNT", "nats-auth/callout"),
            ("SELF_CHECK_READINESS", "true"),
        ])
        .unwrap()
        .self_check;
        assert_eq!(
            on,
            Some(SelfCheckConfig {
                interval: Duration::from_secs(30),
                namespace: "nats-auth".into(),
                name: "callout".into(),
                gates_readiness: true,
                sentinel_creds: None,
                token_file: None,
            })
        );
        for (pairs, says) in [
            (
                vec![("SELF_CHECK_INTERVAL", "30s")],
                "SELF_CHECK_INTERVAL needs SELF_CHECK_SERVICE_ACCOUNT",
            ),
            (
                vec![
                    ("SELF_CHECK_INTERVAL", "2s"),
                    ("SELF_CHECK_SERVICE_ACCOUNT", "a/b"),
                ],
                "0 (off) or at least 5s",
            ),
            (
                vec![
                    ("SELF_CHECK_INTERVAL", "2h"),
                    ("SELF_CHECK_SERVICE_ACCOUNT", "a/b"),
                ],
                "SELF_CHECK_INTERVAL=\"2h\" is not a duration",
            ),
            (
                vec![("SELF_CHECK_READINESS", "true")],
                "SELF_CHECK_READINESS=true needs the self-check on",
            ),
            (
                vec![
                    ("SELF_CHECK_INTERVAL", "30s"),
                    ("SELF_CHECK_SERVICE_ACCOUNT", "a/b"),
                    ("SELF_CHECK_CREDS_FILE", "/nonexistent/sentinel.creds"),
                ],
                "SELF_CHECK_CREDS_FILE: /nonexistent/sentinel.creds is not a readable file",
            ),
        ] {
            let err = with(&pairs).unwrap_err();
            assert!(err.contains(says), "{pairs:?}: {err}");
        }
        // Not namespace/name, or names a Kubernetes object cannot have: a wildcard, a path.
        for bad in [
            "callout",
            "nats-auth/",
            "/callout",
            "nats-auth/*",
            "a/b/c",
            "Nats/x",
        ] {
            let err = with(&[
                ("SELF_CHECK_INTERVAL", "30s"),
                ("SELF_CHECK_SERVICE_ACCOUNT", bad),
            ])
            .unwrap_err();
            assert!(
                err.contains("is not namespace/name of a ServiceAccount"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn token_cache_size_defaults_to_ten_thousand_takes_zero_and_refuses_junk() {
        assert_eq!(with(&[]).unwrap().token_cache_size, 10_000);
        assert_eq!(
            with(&[("TOKEN_CACHE_SIZE", "0")]).unwrap().token_cache_size,
            0
        );
        for bad in ["-1", "lots", "1000001"] {
            let err = with(&[("TOKEN_CACHE_SIZE", bad)]).unwrap_err();
            assert!(
                err.contains("TOKEN_CACHE_SIZE") && err.contains("a number from 0 to 1000000"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_unknown_kid_wait_defaults_to_500ms_and_stays_under_the_auth_timeout() {
        assert_eq!(
            with(&[]).unwrap().jwks_refetch_wait,
            Duration::from_millis(500)
        );
        let c = with(&[("JWKS_REFETCH_WAIT", "0s")]).unwrap();
        assert_eq!(c.jwks_refetch_wait, Duration::ZERO);
        let c = with(&[("JWKS_REFETCH_WAIT", "2s")]).unwrap();
        assert_eq!(c.jwks_refetch_wait, Duration::from_secs(2));
        let err = with(&[("JWKS_REFETCH_WAIT", "3s")]).unwrap_err();
        assert!(
            err.contains("JWKS_REFETCH_WAIT=\"3s\" is not a duration between"),
            "{err}"
        );
    }

    #[test]
    fn serviceaccount_events_are_a_boolean_and_the_pod_name_reports_them() {
        let seed = seed_file(&KeyPair::new_account().seed().unwrap());
        let with = |value: &str| {
            Config::from_map(&env(&[
                ("NATS_SIGNING_KEY_FILE", seed.path().to_str().unwrap()),
                ("NATS_ACCOUNT", "APP"),
                ("SERVICEACCOUNT_EVENTS", value),
                ("HOSTNAME", "callout-7d9f-abcde"),
            ]))
        };
        let c = with("false").unwrap();
        assert!(!c.serviceaccount_events);
        assert_eq!(c.instance.as_deref(), Some("callout-7d9f-abcde"));
        assert!(with("TRUE").unwrap().serviceaccount_events);
        let err = with("sometimes").unwrap_err();
        assert!(
            err.contains("SERVICEACCOUNT_EVENTS=\"sometimes\" is not true or false"),
            "{err}"
        );
    }

    #[test]
    fn the_inbox_mode_and_the_policy_file_are_checked_at_start() {
        let seed = seed_file(&KeyPair::new_account().seed().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.yaml");
        std::fs::write(
            &policy,
            "namespaces:\n  exclude: [\"Kube\"]\nrules:\n  - namespaces: []\n",
        )
        .unwrap();
        let err = Config::from_map(&env(&[
            ("NATS_SIGNING_KEY_FILE", seed.path().to_str().unwrap()),
            ("NATS_ACCOUNT", "APP"),
            ("INBOX_MODE", "public"),
            ("POLICY_FILE", policy.to_str().unwrap()),
        ]))
        .unwrap_err();
        for needle in [
            "INBOX_MODE=\"public\" is not one of shared, private, responses",
            "namespaces.exclude[0] \"Kube\"",
            "rules[0].namespaces is empty",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
        std::fs::write(&policy, "namespaces:\n  exclude: [kube-system]\n").unwrap();
        let c = Config::from_map(&env(&[
            ("NATS_SIGNING_KEY_FILE", seed.path().to_str().unwrap()),
            ("NATS_ACCOUNT", "APP"),
            ("INBOX_MODE", "Private"),
            ("POLICY_FILE", policy.to_str().unwrap()),
        ]))
        .unwrap();
        assert_eq!(c.inbox_mode, InboxMode::Private);
        assert!(c.policy.place("kube-system").is_err());
    }

    #[test]
    fn the_permission_settings_alone_need_no_key_and_fail_as_the_service_does() {
        let s = PermissionSettings::from_map(&env(&[
            ("NATS_ACCOUNT", "APP"),
            ("SERVICE_ACCOUNTS_PATH", "/tmp/sa.yaml"),
            ("INBOX_MODE", "responses"),
        ]))
        .unwrap();
        assert_eq!(s.accounts, AccountsSource::File("/tmp/sa.yaml".into()));
        assert_eq!(s.inbox_mode, InboxMode::Responses);
        assert!(s.policy_file.is_none() && s.policy.is_unrestricted());
        let system = PermissionSettings::from_map(&env(&[("NATS_ACCOUNT", "$SYS")])).unwrap_err();
        assert!(
            system.problems[0].contains("NATS_ACCOUNT=\"$SYS\" is nats-server's system account"),
            "{system}"
        );

        let bad = [
            ("INBOX_MODE", "public"),
            ("POLICY_FILE", "/nonexistent/policy.yaml"),
            ("K8S_IN_CLUSTER", "maybe"),
        ];
        let alone = PermissionSettings::from_map(&env(&bad)).unwrap_err();
        let service = Config::from_map(&env(&bad)).unwrap_err();
        assert_eq!(alone.problems.len(), 4, "{alone}");
        for problem in &alone.problems {
            assert!(
                service.contains(problem.as_str()),
                "{problem} missing from: {service}"
            );
        }
        assert!(alone
            .to_string()
            .starts_with("invalid configuration:\n  - NATS_ACCOUNT is required"));
    }

    #[test]
    fn the_http_address_is_an_ipv4_or_ipv6_address_with_or_without_brackets() {
        let seed = seed_file(&KeyPair::new_account().seed().unwrap());
        let with = |v: &str| {
            Config::from_map(&env(&[
                ("NATS_SIGNING_KEY_FILE", seed.path().to_str().unwrap()),
                ("NATS_ACCOUNT", "APP"),
                ("HTTP_ADDRESS", v),
            ]))
        };
        for (v, ip) in [
            ("::", "::"),
            ("[::]", "::"),
            ("::1", "::1"),
            ("127.0.0.1", "127.0.0.1"),
            ("0.0.0.0", "0.0.0.0"),
        ] {
            assert_eq!(with(v).unwrap().http_address, ip.parse::<IpAddr>().unwrap());
        }
        for bad in ["0.0.0.0:8080", "localhost", "[::1]:80"] {
            let err = with(bad).unwrap_err();
            assert!(
                err.contains("HTTP_ADDRESS") && err.contains("is not an IP address"),
                "{err}"
            );
        }
    }

    #[test]
    fn every_problem_is_named_in_one_error() {
        let user = seed_file(&KeyPair::new_user().seed().unwrap());
        let err = Config::from_map(&env(&[
            ("NATS_SIGNING_KEY_FILE", user.path().to_str().unwrap()),
            ("JWKS_URL", "https://a/jwks"),
            ("JWKS_PATH", "/tmp/x"),
            ("K8S_IN_CLUSTER", "false"),
            ("PORT", "http"),
            ("NATS_TOKEN", "t"),
            ("NATS_CREDS_FILE", "/nonexistent"),
            ("USER_JWT_MAX_LIFETIME", "forever"),
            ("LOG_LEVEL", "loud"),
        ]))
        .unwrap_err();
        for needle in [
            "user seed",
            "NATS_ACCOUNT is required",
            "JWKS_URL and JWKS_PATH",
            "JWT_ISSUER is required",
            "PORT=\"http\"",
            "both set; use at most one",
            "/nonexistent",
            "USER_JWT_MAX_LIFETIME",
            "LOG_LEVEL",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
        assert!(!err.contains("\"t\""), "the token must not be echoed");
    }

    #[test]
    fn nats_tls_and_login_files_are_checked_at_start_and_named() {
        let seed = seed_file(&KeyPair::new_account().seed().unwrap());
        let junk = seed_file("not a certificate");
        let user_seed = seed_file(&KeyPair::new_user().seed().unwrap());
        let with = |extra: &[(&str, &str)]| {
            let mut vars = vec![
                ("NATS_SIGNING_KEY_FILE", seed.path().to_str().unwrap()),
                ("NATS_ACCOUNT", "APP"),
                ("JWKS_PATH", "/tmp/jwks.json"),
                ("JWT_ISSUER", "https://issuer"),
            ];
            vars.extend_from_slice(extra);
            Config::from_map(&env(&vars))
        };
        let junk_path = junk.path().to_str().unwrap();
        let err = with(&[("NATS_CA_FILE", junk_path)]).unwrap_err();
        assert!(
            err.contains("NATS_CA_FILE") && err.contains("no usable PEM certificate"),
            "{err}"
        );
        let err = with(&[("NATS_CLIENT_CERT_FILE", junk_path)]).unwrap_err();
        assert!(
            err.contains("NATS_CLIENT_CERT_FILE is set without NATS_CLIENT_KEY_FILE"),
            "{err}"
        );
        let err = with(&[("NATS_CA_FILE", "/nonexistent/ca.pem")]).unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let err = with(&[
            ("NATS_TOKEN", "tok3n"),
            ("NATS_NKEY_SEED_FILE", user_seed.path().to_str().unwrap()),
            ("NATS_CREDS_FILE", user_seed.path().to_str().unwrap()),
        ])
        .unwrap_err();
        assert!(
            err.contains("NATS_USER_CREDS_FILE, NATS_NKEY_SEED_FILE and NATS_TOKEN are all set"),
            "{err}"
        );
        assert!(!err.contains("tok3n"), "{err}");
        let c = with(&[
            ("NATS_NKEY_SEED_FILE", user_seed.path().to_str().unwrap()),
            ("NATS_TLS_REQUIRED", "true"),
        ])
        .unwrap();
        assert!(matches!(c.nats_login, Login::NkeySeedFile(_)));
        assert!(c.nats_tls.required && c.nats_tls.ca_file.is_none());
        let err = with(&[("NATS_TLS_REQUIRED", "maybe")]).unwrap_err();
        assert!(err.contains("NATS_TLS_REQUIRED"), "{err}");
    }

    #[test]
    fn a_jwks_url_is_https_or_loopback_and_never_shown_with_credentials() {
        let seed = seed_file(&KeyPair::new_account().seed().unwrap());
        let with = |url: &str| {
            Config::from_map(&env(&[
                ("NATS_SIGNING_KEY_FILE", seed.path().to_str().unwrap()),
                ("NATS_ACCOUNT", "APP"),
                ("JWKS_URL", url),
            ]))
        };
        assert!(with("https://oidc.example.com/keys").is_ok());
        assert!(with("http://127.0.0.1:8080/keys").is_ok());
        assert!(with("http://localhost/keys").is_ok());
        assert!(with("http://[::1]:9/keys").is_ok());
        let err = with("http://user:secret@oidc.example.com/keys").unwrap_err();
        assert!(
            err.contains("not an https URL") && !err.contains("secret"),
            "{err}"
        );
        assert!(with("http://127.0.0.1.evil.example/keys").is_err());
        let c = with("https://user:secret@oidc.example.com/keys?sig=abc").unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("sig=abc"),
            "{shown}"
        );
        // The host of these reads as 127.0.0.1 to the WHATWG parser, as evil.example (or as
        // nothing) to others: refused, and said why.
        for url in [
            "http://127.0.0.1\\@evil.example/keys",
            "http:///127.0.0.1/keys",
        ] {
            let err = with(url).unwrap_err();
            assert!(err.contains("parsers read differently"), "{err}");
        }
        // A / in the password ends the host: the rest reads as a path, and is not shown.
        let c = with("https://user:1234/secret@oidc.example.com/keys").unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("1234"),
            "{shown}"
        );
    }

    #[test]
    fn nats_urls_that_could_never_connect_are_refused_without_their_passwords() {
        let seed = seed_file(&KeyPair::new_account().seed().unwrap());
        let with = |url: &str| {
            Config::from_map(&env(&[
                ("NATS_SIGNING_KEY_FILE", seed.path().to_str().unwrap()),
                ("NATS_ACCOUNT", "APP"),
                ("NATS_URL", url),
            ]))
        };
        assert!(with("nats://callout:S3cr%2Fet@nats:4222, tls://b:4222,c:4222").is_ok());
        let err = with("nats://a:4222,nats://callout:S3cr/et@host").unwrap_err();
        assert!(err.contains("NATS_URL entry 2 is not a valid URL"), "{err}");
        assert!(!err.contains("S3cr"), "{err}");
        let err = with("http://callout:S3cret@host:4222").unwrap_err();
        assert!(
            err.contains("NATS_URL entry 1 (http://host:4222) has the scheme \"http\""),
            "{err}"
        );
        assert!(!err.contains("S3cret"), "{err}");
        let c = with("nats://callout:S3cr%40et@nats:4222").unwrap();
        assert!(!format!("{c:?}").contains("S3cr"));
        // A numeric start of a password reads as a port, its rest after a / as a path.
        let err = with("http://callout:1234/S3cret@host:4222").unwrap_err();
        assert!(err.contains("NATS_URL entry 1"), "{err}");
        assert!(!err.contains("S3cret") && !err.contains("1234"), "{err}");
    }

    #[test]
    fn operator_mode_names_accounts_by_public_key_and_reads_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let app = KeyPair::new_account();
        let signing = KeyPair::new_account();
        let callout = KeyPair::new_account();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.to_str().unwrap().to_owned()
        };
        let signing_file = write("signing.nk", &signing.seed().unwrap());
        let callout_file = write("callout.nk", &callout.seed().unwrap());
        let policy = write(
            "policy.yaml",
            "rules:\n  - namespaces: [payments]\n    account: PAYMENTS\n",
        );
        let base = [
            ("NATS_OPERATOR_MODE", "true"),
            ("NATS_SIGNING_KEY_FILE", signing_file.as_str()),
            ("NATS_CALLOUT_SIGNING_KEY_FILE", callout_file.as_str()),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            Config::from_map(&env(&pairs))
        };
        let err = with(&[("NATS_ACCOUNT", "APP"), ("POLICY_FILE", &policy)]).unwrap_err();
        assert!(
            err.contains("NATS_ACCOUNT=\"APP\" must be the clients' account public key (A…)"),
            "{err}"
        );
        assert!(
            err.contains(
                "rule account \"PAYMENTS\" must be an account public key (A…) in operator mode"
            ),
            "{err}"
        );
        let c = with(&[("NATS_ACCOUNT", &app.public_key())]).unwrap();
        assert!(c.key_files.operator_mode);
        assert_eq!(c.keys.signer.issuer(), callout.public_key());
        let k = c.keys.signer.user_keys()[0];
        assert_eq!(k.account(), app.public_key());
        assert_eq!(k.issuer_account(), Some(app.public_key().as_str()));
        // The callout file holding a signing key of the account NATS_CALLOUT_ACCOUNT names.
        let auth = KeyPair::new_account().public_key();
        let c = with(&[
            ("NATS_ACCOUNT", &app.public_key()),
            ("NATS_CALLOUT_ACCOUNT", &auth),
        ])
        .unwrap();
        assert_eq!(c.keys.signer.issuer(), callout.public_key());
        assert_eq!(c.keys.signer.callout_account(), auth);
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration("-1"), None);
    }

    #[test]
    fn local_mode_needs_a_key_source_and_an_issuer() {
        let seed = seed_file(&KeyPair::new_account().seed().unwrap());
        let err = Config::from_map(&env(&[
            ("NATS_SIGNING_KEY_FILE", seed.path().to_str().unwrap()),
            ("NATS_ACCOUNT", "APP"),
            ("SERVICE_ACCOUNTS_PATH", "/tmp/sa.yaml"),
        ]))
        .unwrap_err();
        assert!(err.contains("needs JWKS_PATH or JWKS_URL"));
        assert!(err.contains("JWT_ISSUER is required"));
    }
}
