//! Denial lines under a budget: the first [`DenialLog::LINES`] denials of every
//! [`DenialLog::EVERY`] are logged one by one (warn), the rest at debug only, and a line per
//! window says how many were not logged, by reason. Anyone who can reach the NATS port can
//! present a bad token as often as they can connect (thousands a second from one pod), so a line
//! per denial would let any client fill the node's disk with the service's log; the counts stay
//! exact in `nats_callout_decisions_total`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use log::warn;
use parking_lot::Mutex;

/// The process's budget, shared by the workers.
static DENIALS: Mutex<DenialLog> = Mutex::new(DenialLog::new());

/// Whether a denial for `reason` may have its own warn line now (else it goes to debug and is
/// counted for the window's summary).
pub(super) fn admit(reason: &'static str) -> bool {
    DENIALS.lock().admit(Instant::now(), reason)
}

/// Logs a denial line under the budget: warn while the window has room, else debug. A macro,
/// so the line keeps the target (module) of the code that denies.
macro_rules! log_denial {
    ($reason:expr, $($line:tt)+) => {
        if $crate::callout::denial_log::admit($reason) {
            ::log::warn!($($line)+)
        } else {
            ::log::debug!($($line)+)
        }
    };
}
pub(super) use log_denial;

/// Writes the summary of a window that is over (called by the reader every few hundred ms, so
/// the summary comes even when the denials stop).
pub(super) fn tick() {
    DENIALS.lock().roll(Instant::now());
}

/// Writes the summary of the current window now (at shutdown).
pub(super) fn flush() {
    DENIALS.lock().summary();
}

/// One window's budget and what it did not log.
pub(crate) struct DenialLog {
    /// When the current window began.
    start: Option<Instant>,
    /// Lines written in it.
    logged: u32,
    /// Denials not logged one by one in it, by reason.
    unlogged: BTreeMap<&'static str, u64>,
}

impl DenialLog {
    /// Length of a window.
    pub(crate) const EVERY: Duration = Duration::from_secs(10);
    /// Denials logged one by one per window.
    pub(crate) const LINES: u32 = 20;

    const fn new() -> DenialLog {
        DenialLog {
            start: None,
            logged: 0,
            unlogged: BTreeMap::new(),
        }
    }

    /// Whether a denial for `reason` may have its own warn line; when not, it is counted.
    fn admit(&mut self, now: Instant, reason: &'static str) -> bool {
        self.roll(now);
        if self.logged < Self::LINES {
            self.logged += 1;
            return true;
        }
        *self.unlogged.entry(reason).or_default() += 1;
        false
    }

    /// Starts a new window once the current one is over, first summing up what it did not log.
    fn roll(&mut self, now: Instant) {
        if self
            .start
            .is_some_and(|s| now.saturating_duration_since(s) < Self::EVERY)
        {
            return;
        }
        self.summary();
        self.start = Some(now);
        self.logged = 0;
    }

    /// Logs how many denials were not logged one by one, by reason; returns that number.
    fn summary(&mut self) -> u64 {
        let total: u64 = self.unlogged.values().sum();
        if total > 0 {
            let by_reason: Vec<String> = self
                .unlogged
                .iter()
                .map(|(reason, n)| format!("{reason}={n}"))
                .collect();
            warn!(
                "{total} more denial(s) within {:?} not logged one by one (at most {} are; LOG_LEVEL=debug shows each): {}",
                Self::EVERY,
                Self::LINES,
                by_reason.join(" ")
            );
            self.unlogged.clear();
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_lines_of_each_window_are_logged_and_the_rest_summed_by_reason() {
        let mut log = DenialLog::new();
        let t0 = Instant::now();
        let admitted = (0..DenialLog::LINES + 30)
            .filter(|i| {
                log.admit(
                    t0,
                    if i % 2 == 0 {
                        "token_malformed"
                    } else {
                        "token_expired"
                    },
                )
            })
            .count();
        assert_eq!(admitted, DenialLog::LINES as usize);
        assert_eq!(log.unlogged.get("token_malformed"), Some(&15));
        assert_eq!(log.unlogged.get("token_expired"), Some(&15));
        // Within the window: nothing summed yet, nothing more admitted.
        log.roll(t0 + Duration::from_secs(9));
        assert!(!log.admit(t0 + Duration::from_secs(9), "token_expired"));
        // The next window: the summary is written (and cleared) and lines are admitted again.
        let next = t0 + DenialLog::EVERY;
        assert!(log.admit(next, "namespace_not_allowed"));
        assert!(log.unlogged.is_empty());
        assert_eq!(log.summary(), 0, "nothing left to sum");
        for _ in 1..DenialLog::LINES {
            assert!(log.admit(next, "namespace_not_allowed"));
        }
        assert!(!log.admit(next, "namespace_not_allowed"));
        assert_eq!(log.summary(), 1, "shutdown sums what is left");
    }
}
