//! Prometheus metrics of the service, registered once and shared by every thread.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of one authorization decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allow` or `deny`.
    pub result: &'static str,
    /// Why: `granted` for an allow, the deny reason otherwise.
    pub reason: &'static str,
}

/// Labels of an annotation entry that was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DroppedEntryLabels {
    /// `pub` or `sub`.
    pub direction: &'static str,
    /// `invalid` (not a NATS subject), `reserved` (inbox, reply or `$SYS` subjects) or
    /// `not_allowed_by_policy` (outside what the admin policy lets annotations grant).
    pub cause: &'static str,
}

/// Labels of one Warning Event about dropped annotation entries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `created`, `exists` (another replica or an earlier run reported it), `failed` (refused,
    /// say for lack of RBAC, or the API server was unreachable) or `dropped` (the queue to the
    /// recording thread was full).
    pub result: &'static str,
}

/// Labels of one reading of a changed file (the policy, the key files).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `success` (the new version is in use) or `failure` (the last good one stays).
    pub result: &'static str,
}

/// Labels of one look into the verified-token cache.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenCacheLabels {
    /// One of [`TokenCacheLabels::RESULTS`].
    pub result: &'static str,
}

impl TokenCacheLabels {
    /// The token was verified before and still holds: its signature was not checked again.
    pub const HIT: &'static str = "hit";
    /// Not in the cache (first sight, evicted, expired, or the key set changed).
    pub const MISS: &'static str = "miss";
    /// In the cache, but its ServiceAccount changed since: verified again.
    pub const STALE: &'static str = "stale";
    /// Every result, each exposed from the start.
    pub const RESULTS: [&'static str; 3] = [Self::HIT, Self::MISS, Self::STALE];
}

/// Labels of an HTTP connection the server closed for misbehaving.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpDropLabels {
    /// One of [`HttpDropLabels::REASONS`].
    pub reason: &'static str,
}

impl HttpDropLabels {
    /// Every slot was taken: the oldest connection was closed to make room for a new one.
    pub const EVICTED: &'static str = "evicted";
    /// A request head did not arrive whole in time (an idle new connection included).
    pub const READ_TIMEOUT: &'static str = "read_timeout";
    /// An answer was not taken by the client in time.
    pub const WRITE_TIMEOUT: &'static str = "write_timeout";
    /// A request head was too long or had too many header lines (answered 431).
    pub const TOO_LARGE: &'static str = "too_large";
    /// Not an HTTP/1.x request (answered 400).
    pub const MALFORMED: &'static str = "malformed";
    /// No worker could take the connection (closed connections piled up faster than noticed).
    pub const OVERLOADED: &'static str = "overloaded";
    /// Every reason, each exposed from the start.
    pub const REASONS: [&'static str; 6] = [
        Self::EVICTED,
        Self::READ_TIMEOUT,
        Self::WRITE_TIMEOUT,
        Self::TOO_LARGE,
        Self::MALFORMED,
        Self::OVERLOADED,
    ];
}

/// Labels of one self-check (a connect through nats-server with the service's own token).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SelfCheckLabels {
    /// One of [`SelfCheckLabels::RESULTS`].
    pub result: &'static str,
}

impl SelfCheckLabels {
    /// nats-server let the check's client in.
    pub const OK: &'static str = "ok";
    /// nats-server refused the check's client.
    pub const REFUSED: &'static str = "refused";
    /// nats-server did not answer the check's CONNECT in time.
    pub const TIMEOUT: &'static str = "timeout";
    /// No server could be reached (network, TLS).
    pub const UNREACHABLE: &'static str = "unreachable";
    /// The API server did not give the service a token for itself.
    pub const NO_TOKEN: &'static str = "no_token";
    /// Every result, each exposed from the start.
    pub const RESULTS: [&'static str; 5] = [
        Self::OK,
        Self::REFUSED,
        Self::TIMEOUT,
        Self::UNREACHABLE,
        Self::NO_TOKEN,
    ];
}

/// Labels of one ServiceAccount change whose live connections were looked for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevocationLabels {
    /// `deleted`, `recreated` or `annotations_changed`.
    pub reason: &'static str,
}

/// Every metric the service exposes on `/metrics`.
pub struct Metrics {
    registry: Registry,
    /// Decisions by result and reason.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Time from taking a request off the queue to publishing its answer.
    pub decision_seconds: Histogram,
    /// Requests waiting in the queue between the reader and the workers.
    pub queue_depth: Gauge,
    /// Requests dropped because the queue was full.
    pub queue_rejected: Counter,
    /// ServiceAccounts held in the cache.
    pub cache_size: Gauge,
    /// Full relists of the ServiceAccount collection.
    pub cache_relists: Counter,
    /// Watch streams that ended and were started again.
    pub watch_restarts: Counter,
    /// Unix time (s) at which the ServiceAccount cache last followed the cluster: a watch open,
    /// or a list just completed. Frozen while lists or watches fail.
    pub cache_current: Gauge,
    /// On-demand GETs of a single ServiceAccount after a cache miss.
    pub cache_miss_lookups: Counter,
    /// Pods held for the pod binding check.
    pub pods: Gauge,
    /// Unix time (s) at which the pod cache last followed the cluster (0: never, or the check
    /// is off).
    pub pod_cache_current: Gauge,
    /// Successful JWKS loads.
    pub jwks_refreshes: Counter,
    /// Failed JWKS loads (the last good key set stays in use).
    pub jwks_refresh_failures: Counter,
    /// Keys in the JWKS in use.
    pub jwks_keys: Gauge,
    /// Times the NATS connection was re-established.
    pub nats_reconnects: Counter,
    /// Times the NATS connection was lost.
    pub nats_disconnects: Counter,
    /// Annotation entries dropped by the policy guard rails.
    pub dropped_annotation_entries: Family<DroppedEntryLabels, Counter>,
    /// Re-readings of the policy file after it changed, by result.
    pub policy_reloads: Family<ReloadLabels, Counter>,
    /// Re-readings of the key files (signing keys, xkey) after they changed, by result.
    pub key_reloads: Family<ReloadLabels, Counter>,
    /// New NATS connections made after the login or TLS files changed, by result.
    pub nats_file_reloads: Family<ReloadLabels, Counter>,
    /// Self-checks by result.
    pub self_checks: Family<SelfCheckLabels, Counter>,
    /// 1 while the last self-check failed, else 0 (also when self-checks are off).
    pub self_check_failing: Gauge,
    /// ServiceAccount changes whose live connections were looked for, by reason.
    pub revocations: Family<RevocationLabels, Counter>,
    /// Live connections closed because their ServiceAccount changed.
    pub connections_revoked: Counter,
    /// Changes whose connections could not all be found or closed (or were not queued).
    pub revocation_failures: Counter,
    /// Warning Events about dropped annotation entries, by result.
    pub events: Family<EventLabels, Counter>,
    /// Looks into the verified-token cache, by result.
    pub token_cache: Family<TokenCacheLabels, Counter>,
    /// Tokens held in the verified-token cache.
    pub token_cache_entries: Gauge,
    /// HTTP connections open on the health and metrics port.
    pub http_connections: Gauge,
    /// HTTP connections the server closed for misbehaving, by reason.
    pub http_connections_dropped: Family<HttpDropLabels, Counter>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("nats_callout");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Authorization decisions by result and reason",
            decisions.clone(),
        );
        // 100 µs .. ~1.6 s: the decision itself is sub-millisecond, a JWKS refetch is not.
        let decision_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 15),
        );
        registry.register(
            "decision_duration_seconds",
            "Time to decide and answer one authorization request",
            decision_seconds.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Authorization requests waiting for a worker",
            queue_depth.clone(),
        );
        let queue_rejected = Counter::default();
        registry.register(
            "queue_rejected",
            "Authorization requests dropped because the queue was full",
            queue_rejected.clone(),
        );
        let cache_size = Gauge::default();
        registry.register(
            "serviceaccounts",
            "ServiceAccounts in the cache",
            cache_size.clone(),
        );
        let cache_relists = Counter::default();
        registry.register(
            "cache_relists",
            "Full lists of ServiceAccounts that replaced the cache",
            cache_relists.clone(),
        );
        let watch_restarts = Counter::default();
        registry.register(
            "watch_restarts",
            "ServiceAccount watch streams started again after they ended",
            watch_restarts.clone(),
        );
        let cache_current = Gauge::default();
        registry.register(
            "cache_current_timestamp_seconds",
            "Unix time at which the ServiceAccount cache last followed the cluster (a watch open or a list just completed)",
            cache_current.clone(),
        );
        let pods = Gauge::default();
        registry.register(
            "pods",
            "Pods held for the pod binding check (POD_BINDING=watch)",
            pods.clone(),
        );
        let pod_cache_current = Gauge::default();
        registry.register(
            "pod_cache_current_timestamp_seconds",
            "Unix time at which the pod cache last followed the cluster (0 when the pod binding check is off)",
            pod_cache_current.clone(),
        );
        let cache_miss_lookups = Counter::default();
        registry.register(
            "cache_miss_lookups",
            "Single ServiceAccount GETs after a cache miss",
            cache_miss_lookups.clone(),
        );
        let jwks_refreshes = Counter::default();
        registry.register(
            "jwks_refreshes",
            "Successful JWKS loads",
            jwks_refreshes.clone(),
        );
        let jwks_refresh_failures = Counter::default();
        registry.register(
            "jwks_refresh_failures",
            "Failed JWKS loads",
            jwks_refresh_failures.clone(),
        );
        let jwks_keys = Gauge::default();
        registry.register("jwks_keys", "Keys in the JWKS in use", jwks_keys.clone());
        let nats_reconnects = Counter::default();
        registry.register(
            "nats_reconnects",
            "NATS connection re-established",
            nats_reconnects.clone(),
        );
        let nats_disconnects = Counter::default();
        registry.register(
            "nats_disconnects",
            "NATS connection lost",
            nats_disconnects.clone(),
        );
        let dropped_annotation_entries = Family::<DroppedEntryLabels, Counter>::default();
        registry.register(
            "dropped_annotation_entries",
            "ServiceAccount annotation entries refused by the policy",
            dropped_annotation_entries.clone(),
        );
        let key_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "key_reloads",
            "Re-readings of the signing-key and xkey files after they changed, by result",
            key_reloads.clone(),
        );
        let nats_file_reloads = Family::<ReloadLabels, Counter>::default();
        for result in ["success", "failure"] {
            let _ = nats_file_reloads.get_or_create(&ReloadLabels { result });
        }
        registry.register(
            "nats_file_reloads",
            "New NATS connections made after the login or TLS files changed, by result (on failure the current connection stays)",
            nats_file_reloads.clone(),
        );
        let self_checks = Family::<SelfCheckLabels, Counter>::default();
        for result in SelfCheckLabels::RESULTS {
            let _ = self_checks.get_or_create(&SelfCheckLabels { result });
        }
        registry.register(
            "self_checks",
            "Connects through nats-server with the service's own token, by result",
            self_checks.clone(),
        );
        let self_check_failing = Gauge::default();
        registry.register(
            "self_check_failing",
            "1 while the last self-check failed, else 0 (also when self-checks are off)",
            self_check_failing.clone(),
        );
        let revocations = Family::<RevocationLabels, Counter>::default();
        for reason in crate::revoke::RevokeReason::ALL {
            let _ = revocations.get_or_create(&RevocationLabels {
                reason: reason.label(),
            });
        }
        registry.register(
            "revocations",
            "ServiceAccount changes whose live connections were looked for (NATS_SYSTEM_URL), by reason",
            revocations.clone(),
        );
        let connections_revoked = Counter::default();
        registry.register(
            "connections_revoked",
            "Live connections closed because their ServiceAccount was deleted, re-created or re-annotated",
            connections_revoked.clone(),
        );
        let revocation_failures = Counter::default();
        registry.register(
            "revocation_failures",
            "ServiceAccount changes whose live connections could not all be found or closed",
            revocation_failures.clone(),
        );
        let policy_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Re-readings of the policy file after it changed, by result",
            policy_reloads.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "Warning Events on ServiceAccounts about dropped annotation entries, by result",
            events.clone(),
        );
        let token_cache = Family::<TokenCacheLabels, Counter>::default();
        for result in TokenCacheLabels::RESULTS {
            let _ = token_cache.get_or_create(&TokenCacheLabels { result });
        }
        registry.register(
            "token_cache_lookups",
            "Looks into the verified-token cache, by result",
            token_cache.clone(),
        );
        let token_cache_entries = Gauge::default();
        registry.register(
            "token_cache_entries",
            "Tokens held in the verified-token cache",
            token_cache_entries.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "Connections open on the health and metrics port",
            http_connections.clone(),
        );
        let http_connections_dropped = Family::<HttpDropLabels, Counter>::default();
        for reason in HttpDropLabels::REASONS {
            // Every reason from the start, so that rate() sees the first one.
            let _ = http_connections_dropped.get_or_create(&HttpDropLabels { reason });
        }
        registry.register(
            "http_connections_dropped",
            "HTTP connections closed by the server for misbehaving, by reason",
            http_connections_dropped.clone(),
        );
        Metrics {
            registry,
            decisions,
            decision_seconds,
            queue_depth,
            queue_rejected,
            cache_size,
            cache_relists,
            watch_restarts,
            cache_current,
            pods,
            pod_cache_current,
            cache_miss_lookups,
            jwks_refreshes,
            jwks_refresh_failures,
            jwks_keys,
            nats_reconnects,
            nats_disconnects,
            dropped_annotation_entries,
            policy_reloads,
            key_reloads,
            nats_file_reloads,
            self_checks,
            self_check_failing,
            revocations,
            connections_revoked,
            revocation_failures,
            events,
            token_cache,
            token_cache_entries,
            http_connections,
            http_connections_dropped,
        }
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
