//! Tokens already verified: a client that reconnects with the same token (every pod does, until
//! the kubelet rotates it) is not put through signature verification again.
//!
//! An entry is keyed by the SHA-256 of the token's exact bytes (a collision would have to be
//! found in SHA-256 to pass one token off as another) and remembers what verification produced.
//! It holds only while:
//! - the token's `exp` (plus the leeway) is not past, and the clock has not gone back to before
//!   the token was verified (so `nbf` and `iat`, checked then, still hold);
//! - the key set is the one that verified it: any change of the key material forgets every entry;
//! - its ServiceAccount is the very object it was admitted with: an update, a re-creation or a
//!   deletion makes the next connect verify the token again.
//!
//! Only allowed connects are added, so unauthenticated clients can neither fill the cache nor push
//! entries out; it holds at most its configured number of entries. Everything after verification
//! (the ServiceAccount lookup, the uid comparison, the policy, the grant's expiry) still runs on
//! every connect. No token bytes are kept.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::identity::Identity;
use crate::kube::ServiceAccount;
use crate::metrics::{Metrics, TokenCacheLabels};

/// The cache's key: SHA-256 of a token's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// The key of `token`, byte for byte (no normalisation).
    pub fn of(token: &str) -> TokenKey {
        TokenKey(Sha256::digest(token.as_bytes()).into())
    }
}

/// What was verified once, and what it was admitted with.
struct Entry {
    identity: Identity,
    /// Unix time of the verification: a clock earlier than this re-verifies.
    verified_at: u64,
    /// The key set generation that verified the signature.
    key_generation: u64,
    /// The ServiceAccount object the token was admitted with. A `Weak` keeps its allocation
    /// alive, so no other object can later sit at the same address and pass for it.
    account: Weak<ServiceAccount>,
}

/// A cached verification, handed out by [`VerifiedTokens::get`] with the identity it proved.
#[derive(Debug)]
pub struct Verified {
    account: Weak<ServiceAccount>,
}

impl Verified {
    /// Whether `account` is the very object this token was admitted with.
    pub fn admitted_with(&self, account: &Arc<ServiceAccount>) -> bool {
        std::ptr::eq(self.account.as_ptr(), Arc::as_ptr(account))
    }
}

/// The verified-token cache; see the module documentation.
pub struct VerifiedTokens {
    capacity: usize,
    leeway: u64,
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
}

struct Inner {
    entries: HashMap<TokenKey, Entry>,
    /// When expired entries were last swept out (at most once per [`SWEEP_EVERY`]).
    last_sweep: Option<Instant>,
}

/// How often a full cache is swept for expired entries before one is evicted.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens (0 turns it off), honouring the validator's `leeway`
    /// on `exp` exactly as verification does.
    pub fn new(capacity: usize, leeway: Duration, metrics: Arc<Metrics>) -> VerifiedTokens {
        VerifiedTokens {
            capacity,
            leeway: leeway.as_secs(),
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                last_sweep: None,
            }),
            metrics,
        }
    }

    /// Whether the cache is in use (a capacity above 0).
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// The verification of the token with `key`, if it still holds at `now` under key set
    /// `key_generation`; an entry that no longer holds is removed. Counts a miss; the caller
    /// counts what it does with an entry ([`Self::used`] or [`Self::forget_stale`]).
    pub fn get(
        &self,
        key: &TokenKey,
        now: u64,
        key_generation: u64,
    ) -> Option<(Identity, Verified)> {
        if !self.enabled() {
            return None;
        }
        let mut inner = self.inner.lock();
        let found = match inner.entries.get(key) {
            None => None,
            Some(e) => {
                let holds = e.key_generation == key_generation
                    && now >= e.verified_at
                    && now <= e.identity.expires_at.saturating_add(self.leeway);
                Some(holds.then(|| {
                    let verified = Verified {
                        account: e.account.clone(),
                    };
                    (e.identity.clone(), verified)
                }))
            }
        };
        if let Some(None) = found {
            inner.entries.remove(key);
            self.set_size(&inner);
        }
        drop(inner);
        let found = found.flatten();
        if found.is_none() {
            self.count(TokenCacheLabels::MISS);
        }
        found
    }

    /// Counts a hit: the entry [`Self::get`] gave was used (its ServiceAccount is unchanged).
    pub fn used(&self) {
        self.count(TokenCacheLabels::HIT);
    }

    /// Forgets the token with `key`: its ServiceAccount changed since it was verified. Counted
    /// as stale.
    pub fn forget_stale(&self, key: &TokenKey) {
        let mut inner = self.inner.lock();
        inner.entries.remove(key);
        self.set_size(&inner);
        drop(inner);
        self.count(TokenCacheLabels::STALE);
    }

    /// Remembers that the token with `key` verified at `now` under key set `key_generation` as
    /// `identity`, and was admitted with `account`. A full cache first sweeps out expired
    /// entries (at most once a second), then evicts an arbitrary one.
    pub fn insert(
        &self,
        key: TokenKey,
        identity: &Identity,
        account: &Arc<ServiceAccount>,
        now: u64,
        key_generation: u64,
    ) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.inner.lock();
        if !inner.entries.contains_key(&key) && inner.entries.len() >= self.capacity {
            let clock = Instant::now();
            if inner
                .last_sweep
                .is_none_or(|t| clock.duration_since(t) >= SWEEP_EVERY)
            {
                inner.last_sweep = Some(clock);
                let leeway = self.leeway;
                inner
                    .entries
                    .retain(|_, e| now <= e.identity.expires_at.saturating_add(leeway));
            }
            if inner.entries.len() >= self.capacity {
                // The map's order is random per process: no client can choose the victim.
                if let Some(victim) = inner.entries.keys().next().copied() {
                    inner.entries.remove(&victim);
                }
            }
        }
        inner.entries.insert(
            key,
            Entry {
                identity: identity.clone(),
                verified_at: now,
                key_generation,
                account: Arc::downgrade(account),
            },
        );
        self.set_size(&inner);
    }

    /// Tokens held now.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn set_size(&self, inner: &Inner) {
        self.metrics
            .token_cache_entries
            .set(i64::try_from(inner.entries.len()).unwrap_or(i64::MAX));
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .token_cache
            .get_or_create(&TokenCacheLabels { result })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn identity(expires_in: u64) -> Identity {
        Identity {
            namespace: "team-a".into(),
            service_account: "app".into(),
            uid: "u-1".into(),
            expires_at: NOW + expires_in,
            pod_name: None,
            pod_uid: None,
            credential_id: None,
        }
    }

    fn cache(capacity: usize) -> VerifiedTokens {
        VerifiedTokens::new(capacity, Duration::from_secs(60), Arc::new(Metrics::new()))
    }

    fn account() -> Arc<ServiceAccount> {
        Arc::new(ServiceAccount::for_test("team-a", "app", "u-1"))
    }

    #[test]
    fn a_verified_token_is_found_with_its_identity_and_account() {
        let c = cache(10);
        let sa = account();
        let key = TokenKey::of("a.b.c");
        c.insert(key, &identity(600), &sa, NOW, 1);
        let (found, hit) = c.get(&key, NOW + 10, 1).expect("a hit");
        assert_eq!(found, identity(600));
        assert!(hit.admitted_with(&sa));
        assert!(!hit.admitted_with(&account()), "an equal but other object");
        assert!(c.get(&TokenKey::of("a.b.d"), NOW, 1).is_none());
    }

    #[test]
    fn an_expired_token_is_forgotten_after_the_leeway() {
        let c = cache(10);
        let key = TokenKey::of("t");
        c.insert(key, &identity(600), &account(), NOW, 1);
        assert!(
            c.get(&key, NOW + 600 + 60, 1).is_some(),
            "within the leeway"
        );
        assert!(c.get(&key, NOW + 600 + 61, 1).is_none());
        assert!(c.is_empty(), "the entry is removed");
    }

    #[test]
    fn a_changed_key_set_or_a_clock_gone_back_forgets_the_token() {
        let c = cache(10);
        let key = TokenKey::of("t");
        c.insert(key, &identity(600), &account(), NOW, 1);
        assert!(c.get(&key, NOW, 2).is_none());
        assert!(c.is_empty());
        c.insert(key, &identity(600), &account(), NOW, 1);
        assert!(c.get(&key, NOW - 1, 1).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity_and_prefers_evicting_expired_tokens() {
        let c = cache(100);
        let sa = account();
        // 50 tokens that expire early, 50 that live long.
        for i in 0..50 {
            c.insert(
                TokenKey::of(&format!("short-{i}")),
                &identity(1),
                &sa,
                NOW,
                1,
            );
        }
        for i in 0..50 {
            c.insert(
                TokenKey::of(&format!("long-{i}")),
                &identity(600),
                &sa,
                NOW,
                1,
            );
        }
        assert_eq!(c.len(), 100);
        // Once the short ones have expired, a new token sweeps them out.
        c.insert(TokenKey::of("new"), &identity(600), &sa, NOW + 120, 1);
        assert_eq!(c.len(), 51);
        for i in 0..50 {
            assert!(c
                .get(&TokenKey::of(&format!("long-{i}")), NOW + 120, 1)
                .is_some());
        }
        // A flood of valid tokens never grows it past the bound.
        for i in 0..1000 {
            c.insert(
                TokenKey::of(&format!("flood-{i}")),
                &identity(600),
                &sa,
                NOW + 120,
                1,
            );
            assert!(c.len() <= 100);
        }
    }

    #[test]
    fn capacity_zero_turns_the_cache_off() {
        let c = cache(0);
        let key = TokenKey::of("t");
        c.insert(key, &identity(600), &account(), NOW, 1);
        assert!(c.get(&key, NOW, 1).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn the_key_is_the_exact_bytes() {
        assert_ne!(TokenKey::of("a.b.c"), TokenKey::of("a.b.c "));
        assert_ne!(TokenKey::of("a.b.c"), TokenKey::of("A.b.c"));
        assert_eq!(TokenKey::of("a.b.c"), TokenKey::of("a.b.c"));
    }
}
