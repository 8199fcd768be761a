//! Exponential backoff with jitter, shared by everything that retries: the ServiceAccount
//! watch, the key-set loader, the first NATS connection and issuer discovery.

use std::time::{Duration, Instant};

/// Longest `Retry-After` honoured; a larger one is treated as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Backoff between failed attempts (client-go's numbers by default).
#[derive(Clone, Debug)]
pub struct BackoffSettings {
    /// First delay. Default: 800 ms.
    pub initial: Duration,
    /// Largest delay, jitter included. Default: 30 s.
    pub max: Duration,
    /// After this long without a failure the delay starts again at `initial`. Default: 120 s.
    pub reset_after: Duration,
}

impl Default for BackoffSettings {
    fn default() -> Self {
        BackoffSettings {
            initial: Duration::from_millis(800),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(120),
        }
    }
}

impl BackoffSettings {
    /// From `initial` doubling to `max`, started again only by [`Backoff::reset`].
    pub fn doubling(initial: Duration, max: Duration) -> BackoffSettings {
        BackoffSettings {
            initial,
            max,
            reset_after: Duration::MAX,
        }
    }
}

/// Exponential backoff with jitter, reset after a quiet period or by [`Backoff::reset`].
#[derive(Debug)]
pub struct Backoff {
    settings: BackoffSettings,
    next: Duration,
    last_failure: Option<Instant>,
}

impl Backoff {
    /// A backoff that starts at `settings.initial`.
    pub fn new(settings: BackoffSettings) -> Backoff {
        Backoff {
            next: settings.initial,
            settings,
            last_failure: None,
        }
    }

    /// The wait after a failure at `now`: the current step times `1 + jitter` (`jitter` in
    /// [-1, 1), clamped; it spreads clients apart), at most `max`, at least the server's
    /// `retry_after`; the step doubles up to `max`.
    pub fn delay(&mut self, now: Instant, retry_after: Option<Duration>, jitter: f64) -> Duration {
        if self
            .last_failure
            .is_some_and(|t| now.saturating_duration_since(t) >= self.settings.reset_after)
        {
            self.next = self.settings.initial;
        }
        self.last_failure = Some(now);
        let base = self.next.min(self.settings.max);
        self.next = base.saturating_mul(2).min(self.settings.max);
        let jittered = base
            .mul_f64(1.0 + jitter.clamp(-1.0, 1.0))
            .min(self.settings.max);
        match retry_after {
            Some(server) => jittered.max(server.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }

    /// [`Backoff::delay`] now, with a random jitter in [0, 1).
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        self.delay(Instant::now(), retry_after, fastrand::f64())
    }

    /// Starts again at `initial` (after a success).
    pub fn reset(&mut self) {
        self.next = self.settings.initial;
        self.last_failure = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_honours_retry_after_and_resets() {
        let mut b = Backoff::new(BackoffSettings::default());
        let t = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(b.delay(t, None, 0.0), ms(800));
        assert_eq!(b.delay(t, None, 0.0), ms(1600));
        assert_eq!(
            b.delay(t, None, 0.5),
            ms(4800),
            "jitter adds up to one more delay"
        );
        for _ in 0..10 {
            b.delay(t, None, 0.0);
        }
        assert_eq!(b.delay(t, None, 0.99), Duration::from_secs(30), "capped");
        assert_eq!(
            b.delay(t, Some(Duration::from_secs(45)), 0.0),
            Duration::from_secs(45),
            "Retry-After is a floor"
        );
        let later = t + Duration::from_secs(121);
        assert_eq!(
            b.delay(later, None, 0.0),
            ms(800),
            "reset after 2 min healthy"
        );
    }

    #[test]
    fn doubling_resets_only_when_told() {
        let mut b = Backoff::new(BackoffSettings::doubling(
            Duration::from_millis(500),
            Duration::from_secs(30),
        ));
        let t = Instant::now();
        assert_eq!(b.delay(t, None, 0.0), Duration::from_millis(500));
        let much_later = t + Duration::from_secs(86_400);
        assert_eq!(b.delay(much_later, None, 0.0), Duration::from_secs(1));
        assert_eq!(
            b.delay(much_later, None, -0.5),
            Duration::from_secs(1),
            "negative jitter shortens"
        );
        b.reset();
        assert_eq!(b.delay(much_later, None, 0.0), Duration::from_millis(500));
    }
}
