//! Wiring of the service: configuration -> components -> threads; signals; orderly shutdown.
//!
//! Threads, and why each exists:
//! - `signals`: turns SIGTERM/SIGINT into the stop signal (dropping the one stop sender);
//! - `http`: health and metrics;
//! - `serviceaccounts`: list + watch (or the local file) keeping the ServiceAccount cache current;
//! - `jwks`: loads and refreshes the token signing keys;
//! - `policy`: re-reads the admin policy file when it changes;
//! - `events`: creates the Warning Events about dropped annotation entries, so that a round trip
//!   to the API server never delays a decision (the workers only offer reports to its queue);
//! - the main thread runs the callout loop: one NATS reader feeding a fixed pool of workers.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use log::{debug, error, info, warn};

use crate::authorizer::Authorizer;
use crate::callout::connection::{Dialer, Login};
use crate::callout::service::{self, CalloutContext, CalloutSettings};
use crate::config::{AccountsBackend, Config, JwksLocation, PodBinding, SelfCheckConfig};
use crate::events::{self, EventRecorder};
use crate::http::HttpServer;
use crate::identity::{
    discover_issuer, ApiServerFetcher, Discovered, JwksSettings, JwksSource, JwksStore,
    PublicUrlFetcher, TokenSettings, TokenValidator, API_SERVER_JWKS_PATH,
};
use crate::keys::KeyStore;
use crate::kube::cache::{
    ApiDirectory, FileDirectory, LookupSettings, ServiceAccountCache, ServiceAccountDirectory,
};
use crate::kube::{file, watch, ApiClient, PodCache};
use crate::metrics::Metrics;
use crate::policy::{InboxMode, PermissionCache, PolicyStore};
use crate::readiness::Readiness;
use crate::revoke::Revoker;
use crate::selfcheck::{SelfCheck, SelfCheckSettings, TokenSource};

/// How long the background threads get to stop once the callout loop has finished.
const THREAD_STOP_GRACE: Duration = Duration::from_secs(3);
/// Timeout of one key-set fetch.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Logs to standard error at `level`; `RUST_LOG`, when set, refines it per module.
pub(crate) fn init_logging(level: &str) {
    let mut b = env_logger::Builder::new();
    b.parse_filters(level);
    // At debug and trace, the HTTP and TLS libraries would drown the service's own lines.
    if matches!(level, "debug" | "trace") {
        for noisy in ["ureq", "ureq_proto", "rustls"] {
            b.filter_module(noisy, log::LevelFilter::Info);
        }
        // Module filters match by prefix, and this crate's name starts with `nats`: the longer
        // name wins, so the service's own lines keep LOG_LEVEL.
        if let Ok(own) = level.parse::<log::LevelFilter>() {
            b.filter_module(env!("CARGO_CRATE_NAME"), own);
        }
    }
    // RUST_LOG, when set, refines LOG_LEVEL per module.
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    b.format_timestamp_millis();
    let _ = b.try_init();
}

/// Spawns the thread that turns SIGTERM/SIGINT into the stop signal; a second signal exits at once.
fn spawn_signal_thread(stop: crossbeam_channel::Sender<()>) -> Result<JoinHandle<()>, String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stop = Some(stop);
            for sig in signals.forever() {
                if stop.take().is_some() {
                    info!("signal {sig} received: shutting down");
                } else {
                    error!("second signal {sig}: exiting now");
                    std::process::exit(1);
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))
}

/// Says at start what decides clients' permissions, and warns about the choices that let a
/// client or a namespace editor widen them.
fn log_permission_model(config: &Config) {
    match config.inbox_mode {
        InboxMode::Shared => info!(
            "INBOX_MODE=shared: clients publish and subscribe {{namespace}}.> and _INBOX.>, without the response permission"
        ),
        InboxMode::Private => info!(
            "INBOX_MODE=private: clients subscribe only their own _INBOX.<namespace>.<name>.> (set it as the client's inbox prefix), without the response permission"
        ),
        InboxMode::Responses => warn!(
            "INBOX_MODE=responses grants the response permission: a client may publish once to the reply subject of every message it receives, its own included, so one with publish and subscribe on a subject can publish to any subject (other namespaces, $SYS, $JS.API) outside its deny list; use shared or private unless clients cannot change their inbox handling yet"
        ),
    }
    match &config.policy_file {
        None => warn!(
            "no POLICY_FILE: every namespace is served, and anyone who can edit a ServiceAccount (Kubernetes' edit role can, in its namespace) decides its NATS permissions through annotations, within the reserved subjects only"
        ),
        Some(path) => {
            let accounts: Vec<&str> = config.policy.accounts().collect();
            info!(
                "policy {}: annotations granted only within its patterns; accounts named by rules: {}",
                path.display(),
                if accounts.is_empty() { "none".to_owned() } else { accounts.join(", ") }
            );
        }
    }
}

/// Says at start which keys sign what, and warns about policy accounts no key can sign for.
fn log_signing_keys(config: &Config) {
    let signer = &config.keys.signer;
    if !config.key_files.operator_mode {
        info!(
            "signing as account {}; clients go to account {}",
            signer.issuer(),
            config.nats_account
        );
        return;
    }
    if signer.callout_account() == signer.issuer() {
        info!(
            "operator mode: responses signed by the callout account {}",
            signer.issuer()
        );
    } else {
        info!(
            "operator mode: responses signed by {}, a signing key of the callout account {} (NATS_CALLOUT_ACCOUNT): the account JWT must list it in signing_keys",
            signer.issuer(),
            signer.callout_account()
        );
    }
    if config.key_files.callout.is_none() {
        warn!(
            "operator mode without NATS_CALLOUT_SIGNING_KEY_FILE: the clients' account key signs the responses too, so it must be the callout account itself (clients share its account with the callout service)"
        );
    }
    for key in signer.user_keys() {
        info!(
            "operator mode: clients of account {} get user JWTs signed by {}{}",
            key.account(),
            match key.issuer_account() {
                Some(_) => format!("its signing key {}", key.public_key()),
                None => "the account key itself".to_owned(),
            },
            if key.is_scoped() {
                "; the key is scoped: its scope in the account JWT decides the permissions, the user JWTs carry none"
            } else {
                ""
            }
        );
    }
    for account in config.policy.accounts() {
        if !signer.can_sign_for(Some(account)) {
            warn!(
                "operator mode: the policy places namespaces in account {account}, but NATS_ACCOUNT_SIGNING_KEYS_DIR has no key for it: their clients are denied (account_key_missing)"
            );
        }
    }
}

/// Whether the default account's user JWTs are signed by a scoped key (operator mode).
fn default_key_is_scoped(config: &Config) -> bool {
    config
        .keys
        .signer
        .user_keys()
        .iter()
        .any(|k| k.account() == config.nats_account && k.is_scoped())
}

/// What the self-check needs from the configuration, with what nats-server must be configured
/// with for this service (for the line that explains a refused grant).
fn self_check_settings(config: &Config, own: &SelfCheckConfig) -> SelfCheckSettings {
    let signer = &config.keys.signer;
    let refused_grant_hint = if config.key_files.operator_mode {
        format!(
            "the account JWT of the callout account {} must name the key this service signs with ({}) and the callout's settings, and account {} must be one nats-server can resolve",
            signer.callout_account(),
            signer.issuer(),
            config.nats_account
        )
    } else {
        format!(
            "its auth_callout.issuer must be {} (the key this service signs with), and account {} must exist there",
            signer.issuer(),
            config.nats_account
        )
    };
    SelfCheckSettings {
        interval: own.interval,
        namespace: own.namespace.clone(),
        name: own.name.clone(),
        audience: config.audience.clone(),
        gates_readiness: own.gates_readiness,
        refused_grant_hint,
        xkey_public: config.keys.decoder.xkey().map(|x| x.public_key()),
        sentinel_creds: own.sentinel_creds.clone(),
        operator_mode: config.key_files.operator_mode,
    }
}

/// Runs the service until SIGTERM or SIGINT; `Err` is a start-up failure.
pub fn serve() -> Result<(), String> {
    let config = Config::from_env()?;
    init_logging(&config.log_level);
    info!(
        "nats-k8s-oidc-callout {} starting: {config:?}",
        env!("CARGO_PKG_VERSION")
    );
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(Readiness::default());
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let _signals = spawn_signal_thread(stop_tx)?;
    let http = HttpServer::start(
        std::net::SocketAddr::new(config.http_address, config.port),
        readiness.clone(),
        metrics.clone(),
    )?;

    let mut threads = Vec::new();
    let cache = Arc::new(ServiceAccountCache::new(metrics.clone()));
    // `POD_BINDING=watch` (refused at start with a local ServiceAccount file).
    let pods = (config.binding.pod == PodBinding::Watch).then(|| Arc::new(PodCache::new()));
    // Started once the policy store exists: its replacements are revoked too.
    let mut revoker = None;
    if let Some(revocation) = &config.revocation {
        let login = match &revocation.creds {
            Some(path) => Login::CredsFile(path.clone()),
            None => Login::None,
        };
        let dialer = Dialer::new(
            &revocation.url,
            login,
            config.nats_tls.clone(),
            "nats-k8s-oidc-callout-revocation",
        )
        .map_err(|e| format!("NATS_SYSTEM_URL: {e}"))?;
        let (tx, rx) = bounded(crate::revoke::QUEUE_CAPACITY);
        cache.report_changes_to(tx.clone());
        let mut r = Revoker::new(dialer, metrics.clone());
        if let Some(pods) = &pods {
            pods.report_changes_to(tx);
            r = r.with_pod_users(pods.clone());
        }
        revoker = Some((r, rx));
        info!(
            "live revocation on: connections of a deleted, re-created or re-annotated ServiceAccount, and those a policy change narrows, are closed through {}",
            crate::urls::redact_urls(&revocation.url)
        );
    }
    let backend = config
        .accounts
        .open()
        .map_err(|e| format!("kubernetes client: {e}"))?;
    let (directory, api): (Arc<dyn ServiceAccountDirectory>, Option<Arc<ApiClient>>) = match backend
    {
        AccountsBackend::File(path) => {
            threads.push(file::spawn_file_source(
                path,
                cache.clone(),
                readiness.clone(),
                stop_rx.clone(),
            ));
            (Arc::new(FileDirectory::new(cache.clone())), None)
        }
        AccountsBackend::Api(client) => {
            let client = Arc::new(*client);
            info!("kubernetes api at {}", client.base_url());
            let settings = watch::WatchSettings {
                timeout_seconds: config.watch_timeout_secs,
                ..watch::WatchSettings::default()
            };
            threads.push(watch::spawn_watcher(
                client.clone(),
                cache.clone(),
                settings.clone(),
                readiness.clone(),
                metrics.clone(),
                stop_rx.clone(),
            ));
            if let Some(pods) = &pods {
                readiness.gate_on_pods();
                threads.push(watch::spawn_pod_watcher(
                    client.clone(),
                    pods.clone(),
                    settings,
                    readiness.clone(),
                    metrics.clone(),
                    stop_rx.clone(),
                ));
                info!(
                    "pod binding check on: a pod-bound token is accepted only while its pod exists; tokens bound to no pod are {}",
                    if config.binding.non_pod_tokens { "accepted (NON_POD_TOKENS=accept)" } else { "refused" }
                );
                if config.revocation.is_none() {
                    // Half of what the check is for: the connections a deleted pod has stay.
                    warn!(
                        "POD_BINDING=watch without live revocation (NATS_SYSTEM_URL): a deleted pod's token is refused from then on, but the connections it has stay open until their user JWT expires (USER_JWT_MAX_LIFETIME)"
                    );
                }
            }
            let dir = ApiDirectory::new(
                cache.clone(),
                client.clone(),
                LookupSettings::default(),
                metrics.clone(),
            );
            (Arc::new(dir), Some(client))
        }
    };

    let source = match (&config.jwks, &api) {
        (JwksLocation::Path(p), _) => JwksSource::File(p.clone()),
        (JwksLocation::ApiServer, Some(client)) => JwksSource::Remote(Box::new(
            ApiServerFetcher::new(client.clone(), API_SERVER_JWKS_PATH, JWKS_FETCH_TIMEOUT),
        )),
        // The cluster's credentials go to the API server only: any other origin (a cloud
        // provider's public OIDC endpoint, say) is fetched without them.
        // The client takes a full URL on its own origin as it is (an API path prefix included).
        (JwksLocation::Url(url), Some(client)) if client.is_same_origin(url) => {
            JwksSource::Remote(Box::new(ApiServerFetcher::new(
                client.clone(),
                url.clone(),
                JWKS_FETCH_TIMEOUT,
            )))
        }
        (JwksLocation::Url(url), _) => JwksSource::Remote(Box::new(PublicUrlFetcher::new(
            url.clone(),
            JWKS_FETCH_TIMEOUT,
        ))),
        (JwksLocation::ApiServer, None) => {
            return Err("no JWKS source (set JWKS_PATH or JWKS_URL)".into())
        }
    };
    let jwks_settings = JwksSettings {
        min_refetch_interval: config.jwks_min_refetch,
        refetch_wait: config.jwks_refetch_wait,
        ..JwksSettings::default()
    };
    let store = Arc::new(JwksStore::new(
        source,
        jwks_settings,
        metrics.clone(),
        readiness.clone(),
    ));
    threads.push(store.spawn_refresher(stop_rx.clone()));
    let issuer = match (&api, config.issuer_is_default) {
        (Some(client), true) => match discover_issuer(client, &stop_rx) {
            Discovered::Issuer(issuer) => issuer,
            Discovered::Unavailable(why) => {
                warn!(
                    "the API server has no usable discovery document ({why}); using {}; set JWT_ISSUER if tokens are refused as token_wrong_issuer",
                    config.issuer
                );
                config.issuer.clone()
            }
            Discovered::Stopped => {
                info!("stopped before the issuer could be read");
                http.stop();
                return Ok(());
            }
        },
        _ => config.issuer.clone(),
    };
    info!(
        "accepting tokens from issuer {issuer:?} for audience {:?}",
        config.audience
    );
    // The API server's own audience defaults to its issuer: a token for it opens the API.
    if config.audience == issuer {
        warn!(
            "JWT_AUDIENCE {:?} is the issuer: such tokens are also accepted by the API server, and every client (the self-check included) hands one to nats-server; use an audience of its own (nats)",
            config.audience
        );
    }
    let validator = TokenValidator::new(
        store,
        TokenSettings {
            issuer,
            audience: config.audience.clone(),
            leeway: config.leeway,
        },
    );
    let policy = Arc::new(PolicyStore::new(
        config.policy.clone(),
        config.policy_file.clone(),
    ));
    threads.extend(policy.spawn_watcher(metrics.clone(), stop_rx.clone()));
    if let Some((revoker, rx)) = revoker {
        let (policy_tx, policy_rx) = bounded(16);
        policy.report_changes_to(policy_tx);
        let revoker = revoker.with_policy_changes(policy_rx, cache.clone(), config.inbox_mode);
        threads.push(revoker.spawn(rx, stop_rx.clone())?);
    }
    log_permission_model(&config);
    let mut permissions = PermissionCache::new(metrics.clone(), 65_536, config.inbox_mode);
    match (&api, config.serviceaccount_events) {
        (Some(client), true) => {
            let (reports_tx, reports_rx) = bounded(events::QUEUE_CAPACITY);
            let recorder =
                EventRecorder::new(client.clone(), metrics.clone(), config.instance.clone());
            if let Some(t) = events::spawn_event_recorder(recorder, reports_rx, stop_rx.clone()) {
                threads.push(t);
                permissions = permissions.report_drops_to(reports_tx);
            }
        }
        // A local ServiceAccount file has no API server to hold Events.
        (None, true) => {
            debug!("no Events about dropped annotation entries without the Kubernetes API")
        }
        (_, false) => info!(
            "SERVICEACCOUNT_EVENTS=false: dropped annotation entries are only logged and counted"
        ),
    }
    // The check's token comes from the API server: none with a local ServiceAccount file.
    let self_check = match (&config.self_check, &api) {
        // A scoped key's scope, not the service, decides what its users may do: the check's
        // user would get what the scope grants, so there is no way to grant it nothing.
        (Some(_), _) if default_key_is_scoped(&config) => {
            warn!(
                "SELF_CHECK_INTERVAL is ignored: clients of account {} get user JWTs signed by a scoped key, whose scope would give the check's user its permissions",
                config.nats_account
            );
            None
        }
        (Some(own), Some(_)) => Some(own),
        (Some(own), None) if own.token_file.is_some() => Some(own),
        (Some(_), None) => {
            warn!("SELF_CHECK_INTERVAL is ignored with SERVICE_ACCOUNTS_PATH and no SELF_CHECK_TOKEN_FILE: no Kubernetes API to ask for the check's token");
            None
        }
        (None, _) => None,
    };
    let mut authorizer = Authorizer::new(
        validator,
        directory,
        policy,
        permissions,
        config.max_lifetime,
    )
    .with_verified_tokens(config.token_cache_size, metrics.clone())
    .with_pod_binding(pods, config.binding.non_pod_tokens);
    if !config.binding.non_pod_tokens && config.binding.pod == PodBinding::Off {
        info!("NON_POD_TOKENS=refuse: tokens bound to no pod are refused");
    }
    if let Some(own) = self_check {
        authorizer = authorizer.with_own_account(&own.namespace, &own.name);
    }
    let probe = self_check.map(|_| Arc::new(crate::selfcheck::Probe::default()));
    let keys = Arc::new(KeyStore::with_initial(
        config.key_files.clone(),
        config.keys.clone(),
    ));
    threads.extend(keys.spawn_watcher(metrics.clone(), stop_rx.clone()));
    log_signing_keys(&config);
    let ctx = Arc::new(CalloutContext {
        keys,
        authorizer,
        metrics: metrics.clone(),
        self_check: probe.clone(),
    });
    let settings = CalloutSettings {
        url: config.nats_url.clone(),
        login: config.nats_login.clone(),
        tls: config.nats_tls.clone(),
        workers: config.workers,
        queue_size: config.queue_size,
        shutdown_timeout: config.shutdown_timeout,
    };
    if let (Some(own), Some(probe)) = (self_check, probe) {
        let dialer = service::dialer(&settings)?;
        let source = match (&own.token_file, &api) {
            (Some(path), _) => TokenSource::File(path.clone()),
            (None, Some(client)) => TokenSource::Request(client.clone()),
            (None, None) => return Err("the self-check has no token source".into()),
        };
        let check = SelfCheck::new(
            self_check_settings(&config, own),
            source,
            &dialer,
            probe,
            metrics.clone(),
            readiness.clone(),
        );
        threads.push(check.spawn(stop_rx.clone())?);
    }
    // Returns after the stop signal, or early with an error that ends the process.
    service::run(settings, ctx, readiness.clone(), stop_rx.clone())?;
    // The background threads only read; one stuck in a slow request must not hold the exit.
    let deadline = Instant::now() + THREAD_STOP_GRACE;
    for t in threads {
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
    http.stop();
    info!("stopped");
    Ok(())
}
