//! The refresher thread and its schedule: when the key set is loaded, retried and re-read.
//!
//! The first load is retried until it succeeds; then the set is refreshed at the source's
//! `max-age` (clamped), and a key file is polled for changes. The same thread runs the refetches
//! that workers ask for when a token names an unknown key id, so every load happens here, one at
//! a time, and no worker ever waits on the network.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{never, select, Receiver};
use log::debug;

use super::store::{LoadKind, LoadOutcome};
use super::{JwksSettings, JwksSource, JwksStore};
use crate::backoff::{Backoff, BackoffSettings};

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

impl JwksStore {
    /// Starts the thread that loads the key set (retrying with backoff until the first success),
    /// refreshes it at the `max-age` or the default period, polls a key file for changes and runs
    /// the refetches asked for by [`JwksStore::refetch_for_unknown_kid`]. It stops when `stop`
    /// receives a message or is disconnected. Only the first refresher of a store runs refetches.
    pub fn spawn_refresher(self: &Arc<Self>, stop: Receiver<()>) -> JoinHandle<()> {
        let store = Arc::clone(self);
        let refetches = self.take_refetch_signal().unwrap_or_else(never);
        // Why this thread exists: the first load must be retried until it succeeds, and the set
        // must follow rotation without any request waiting for it: a worker that meets an
        // unknown key id only signals this thread.
        std::thread::spawn(move || store.run_refresher(&stop, &refetches))
    }

    /// The refresher thread: one step, then sleep until the next step is due, a refetch is asked
    /// for or `stop` says so.
    fn run_refresher(&self, stop: &Receiver<()>, refetches: &Receiver<()>) {
        let mut schedule = Schedule::new(&self.settings);
        loop {
            let wait = self.refresh_step(&mut schedule);
            select! {
                recv(stop) -> _ => break,
                recv(refetches) -> asked => if asked.is_ok() {
                    // The schedule stays as it is: a refetch is extra, on top of the refreshes.
                    self.refetch();
                },
                default(wait) => {}
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
                schedule.retry_backoff.reset();
                let every = self.settings.refresh_interval(max_age);
                schedule.next_full_load = now + every;
                schedule.next_attempt = if is_file {
                    now + self.settings.file_poll
                } else {
                    now + every
                };
            }
            Err(_) => schedule.next_attempt = now + schedule.retry_delay(now),
        }
        schedule.next_attempt.saturating_duration_since(now)
    }
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
    /// Waits after failed loads: doubling from `initial_backoff` to `max_backoff`, restarted by
    /// each success.
    retry_backoff: Backoff,
}

impl Schedule {
    fn new(settings: &JwksSettings) -> Schedule {
        let now = Instant::now();
        Schedule {
            next_attempt: now,
            next_full_load: now,
            retry_backoff: Backoff::new(BackoffSettings::doubling(
                settings.initial_backoff,
                settings.max_backoff,
            )),
        }
    }

    /// The wait after a load failed at `now`: the backoff's current step times a random factor
    /// in [0.5, 1.5).
    fn retry_delay(&mut self, now: Instant) -> Duration {
        self.retry_backoff.delay(now, None, centred_jitter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::jwks::testing::{
        fast_settings, file_store, kids, remote_store, wait_for, FakeFetcher,
    };
    use crate::identity::token::testkit::{jwks, TestKey};

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
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut schedule = Schedule::new(&JwksSettings {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            ..JwksSettings::default()
        });
        let delays: Vec<Duration> = (0..10)
            .map(|_| schedule.retry_delay(Instant::now()))
            .collect();
        assert!(delays[0] >= Duration::from_millis(250) && delays[0] < Duration::from_millis(750));
        assert!(delays[9] >= Duration::from_secs(15) && delays[9] < Duration::from_secs(45));
        schedule.retry_backoff.reset();
        assert!(schedule.retry_delay(Instant::now()) < Duration::from_millis(750));
    }
}
