//! Readiness flags that each component sets and `/readyz` reads.

use std::sync::atomic::{AtomicBool, Ordering};

/// What the service needs before it can answer authorization requests correctly.
#[derive(Debug, Default)]
pub struct Readiness {
    nats_connected: AtomicBool,
    subscribed: AtomicBool,
    jwks_loaded: AtomicBool,
    cache_synced: AtomicBool,
    /// Whether decisions wait for a complete list of pods (`POD_BINDING=watch`).
    pods_gate: AtomicBool,
    pods_synced: AtomicBool,
    shutting_down: AtomicBool,
    /// Whether a failing self-check makes the service unready (`SELF_CHECK_READINESS`).
    self_check_gates: AtomicBool,
    self_check_passed: AtomicBool,
}

impl Readiness {
    /// Records whether the NATS connection is up.
    pub fn set_nats_connected(&self, v: bool) {
        self.nats_connected.store(v, Ordering::SeqCst);
    }
    /// Records whether the callout subscription is in place.
    pub fn set_subscribed(&self, v: bool) {
        self.subscribed.store(v, Ordering::SeqCst);
    }
    /// Records whether a key set has been loaded.
    pub fn set_jwks_loaded(&self, v: bool) {
        self.jwks_loaded.store(v, Ordering::SeqCst);
    }
    /// Records whether the ServiceAccount cache has completed a full list.
    pub fn set_cache_synced(&self, v: bool) {
        self.cache_synced.store(v, Ordering::SeqCst);
    }
    /// Makes decisions (and `/readyz`) wait for a complete list of pods.
    pub fn gate_on_pods(&self) {
        self.pods_gate.store(true, Ordering::SeqCst);
    }
    /// Records whether the pod cache has completed a full list.
    pub fn set_pods_synced(&self, v: bool) {
        self.pods_synced.store(v, Ordering::SeqCst);
    }
    /// Whether the pods are listed, or not needed.
    fn pods_ready(&self) -> bool {
        !self.pods_gate.load(Ordering::SeqCst) || self.pods_synced.load(Ordering::SeqCst)
    }
    /// Records that shutdown has begun: the service stops being ready.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
    /// Makes `/readyz` wait for a passing self-check (until then, and while checks fail).
    pub fn gate_on_self_check(&self) {
        self.self_check_gates.store(true, Ordering::SeqCst);
    }
    /// Records whether the last self-check passed.
    pub fn set_self_check_passed(&self, v: bool) {
        self.self_check_passed.store(v, Ordering::SeqCst);
    }
    /// Whether the callout subscription is in place.
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }
    /// Whether the service has what it needs to decide: a key set and a synced cache (and the
    /// pods, when the pod binding check is on).
    pub fn can_decide(&self) -> bool {
        self.jwks_loaded.load(Ordering::SeqCst)
            && self.cache_synced.load(Ordering::SeqCst)
            && self.pods_ready()
    }
    /// Whether the NATS connection is up.
    pub fn nats_connected(&self) -> bool {
        self.nats_connected.load(Ordering::SeqCst)
    }
    /// Whether the ServiceAccount cache has synced.
    pub fn cache_synced(&self) -> bool {
        self.cache_synced.load(Ordering::SeqCst)
    }
    /// Names of what is still missing; empty when ready.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.shutting_down.load(Ordering::SeqCst) {
            out.push("shutting_down");
        }
        if !self.nats_connected.load(Ordering::SeqCst) {
            out.push("nats_connected");
        }
        if !self.subscribed.load(Ordering::SeqCst) {
            out.push("nats_subscribed");
        }
        if !self.jwks_loaded.load(Ordering::SeqCst) {
            out.push("jwks_loaded");
        }
        if !self.cache_synced.load(Ordering::SeqCst) {
            out.push("cache_synced");
        }
        if !self.pods_ready() {
            out.push("pods_synced");
        }
        if self.self_check_gates.load(Ordering::SeqCst)
            && !self.self_check_passed.load(Ordering::SeqCst)
        {
            out.push("self_check");
        }
        out
    }
}
