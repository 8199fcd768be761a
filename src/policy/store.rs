//! The admin policy in use, and the thread that re-reads its file when it changes: a good new
//! version replaces it whole, a bad one is logged and counted and the last good one stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{error, info};
use parking_lot::RwLock;

use super::admin::{AdminPolicy, PolicyError};
use crate::files::FileStamp;
use crate::metrics::{Metrics, ReloadLabels};

/// How often the policy file is checked for a change (a `stat`; read only when it changed).
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// One version of the policy; `generation` grows with every replacement.
#[derive(Debug)]
pub struct LoadedPolicy {
    /// The policy.
    pub policy: AdminPolicy,
    /// Starts at 1; a permission computed under another generation is computed again.
    pub generation: u64,
}

/// The policy in use, shared by the workers and the reloading thread.
pub struct PolicyStore {
    current: RwLock<Arc<LoadedPolicy>>,
    file: Option<PathBuf>,
    /// Where a replaced policy is reported, when revocation is on.
    changes: std::sync::OnceLock<crossbeam_channel::Sender<PolicyChange>>,
}

/// A policy replaced by another: the live connections it decided may now get less.
#[derive(Debug, Clone)]
pub struct PolicyChange {
    /// The policy that was in use.
    pub old: Arc<LoadedPolicy>,
    /// The one in use now.
    pub new: Arc<LoadedPolicy>,
    /// When the change was seen.
    pub seen: jiff::Timestamp,
}

impl PolicyStore {
    /// A store holding `policy`, read from `file` (`None`: no policy file, nothing to re-read).
    pub fn new(policy: AdminPolicy, file: Option<PathBuf>) -> PolicyStore {
        PolicyStore {
            current: RwLock::new(Arc::new(LoadedPolicy {
                policy,
                generation: 1,
            })),
            file,
            changes: std::sync::OnceLock::new(),
        }
    }

    /// From now on, reports every replacement of the policy to `changes` (a full queue drops
    /// the report: the next one carries the older policy's decisions too, as they are compared
    /// with the current state of each connection's account).
    pub fn report_changes_to(&self, changes: crossbeam_channel::Sender<PolicyChange>) {
        let _ = self.changes.set(changes);
    }

    /// The policy in use now.
    pub fn current(&self) -> Arc<LoadedPolicy> {
        self.current.read().clone()
    }

    /// Reads the file again and, if it is valid, puts it in use; the error otherwise.
    fn reload(&self) -> Result<(), PolicyError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let policy = AdminPolicy::load(path)?;
        let mut current = self.current.write();
        if current.policy != policy {
            let new = Arc::new(LoadedPolicy {
                policy,
                generation: current.generation + 1,
            });
            let old = std::mem::replace(&mut *current, new.clone());
            drop(current);
            if let Some(tx) = self.changes.get() {
                let _ = tx.try_send(PolicyChange {
                    old,
                    new,
                    seen: jiff::Timestamp::now(),
                });
            }
        }
        Ok(())
    }

    /// Starts the thread that re-reads the policy file whenever its stamp changes (a kubelet
    /// ConfigMap update swaps a symlink: the stamp follows it) and then stays unchanged for one
    /// more check, until `stop` fires. Nothing to do, and no thread, without a policy file.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        metrics: Arc<Metrics>,
        stop: Receiver<()>,
    ) -> Option<JoinHandle<()>> {
        let path = self.file.clone()?;
        let store = self.clone();
        let mut seen = FileStamp::of(&path).ok();
        // A changed stamp is read only once it has stayed the same for one more poll: a file
        // written in place (not swapped in, as the kubelet does) may be caught half-written,
        // and a cut-off policy can be valid and wider than the whole one.
        let mut changed_to = None;
        let spawned = std::thread::Builder::new()
            .name("policy".into())
            .spawn(move || loop {
                match stop.recv_timeout(POLL_INTERVAL) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let stamp = FileStamp::of(&path).ok();
                if stamp == seen {
                    changed_to = None;
                    continue;
                }
                if changed_to != Some(stamp) {
                    changed_to = Some(stamp);
                    continue;
                }
                changed_to = None;
                seen = stamp;
                let result = match store.reload() {
                    Ok(()) => {
                        info!(
                            "policy {} re-read (generation {})",
                            path.display(),
                            store.current().generation
                        );
                        "success"
                    }
                    Err(e) => {
                        error!("{e}\nthe last good policy stays in use");
                        "failure"
                    }
                };
                metrics
                    .policy_reloads
                    .get_or_create(&ReloadLabels { result })
                    .inc();
            });
        match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                error!(
                    "cannot start the policy reloading thread ({e}): policy changes need a restart"
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn reloads(m: &Metrics, result: &'static str) -> u64 {
        m.policy_reloads
            .get_or_create(&ReloadLabels { result })
            .get()
    }

    #[test]
    fn a_changed_file_replaces_the_policy_and_a_broken_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "namespaces:\n  exclude: [a]\n").unwrap();
        let store = Arc::new(PolicyStore::new(
            AdminPolicy::load(&path).unwrap(),
            Some(path.clone()),
        ));
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = crossbeam_channel::bounded(1);
        let handle = store.spawn_watcher(metrics.clone(), rx).unwrap();
        assert!(store.current().policy.place("a").is_err());

        let wait = |what: &str, cond: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !cond() {
                assert!(Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        // Written aside and renamed over, as editors and the kubelet do.
        let replace = |text: &str| {
            let next = dir.path().join("next.yaml");
            std::fs::write(&next, text).unwrap();
            std::fs::rename(&next, &path).unwrap();
        };
        replace("namespaces:\n  exclude: [b]\n");
        wait("re-read", &|| store.current().generation == 2);
        assert!(store.current().policy.place("a").is_ok());
        assert!(store.current().policy.place("b").is_err());
        assert_eq!(reloads(&metrics, "success"), 1);

        replace("namespaces:\n  exclude: [\"B\"]\n");
        wait("failure counted", &|| reloads(&metrics, "failure") == 1);
        assert_eq!(store.current().generation, 2, "the last good policy stays");
        assert!(store.current().policy.place("b").is_err());

        drop(tx);
        handle.join().unwrap();
    }

    #[test]
    fn a_file_written_in_place_is_read_only_once_it_stops_changing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "namespaces:\n  exclude: [kube-system]\n").unwrap();
        let store = Arc::new(PolicyStore::new(
            AdminPolicy::load(&path).unwrap(),
            Some(path.clone()),
        ));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let handle = store.spawn_watcher(Arc::new(Metrics::new()), rx).unwrap();
        // An editor truncates and writes in two steps; the first is a valid, wider policy.
        std::fs::write(&path, "namespaces:\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(12);
        let mut appended = false;
        let started = Instant::now();
        while store.current().generation < 2 {
            assert!(Instant::now() < deadline, "the complete file is read");
            assert!(
                store.current().policy.place("kube-system").is_err(),
                "the half-written file must never be in use"
            );
            if !appended && started.elapsed() > POLL_INTERVAL + Duration::from_millis(500) {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                std::io::Write::write_all(&mut f, b"  exclude: [kube-system, x]\n").unwrap();
                appended = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(store.current().policy.place("x").is_err());
        drop(tx);
        handle.join().unwrap();
    }

    #[test]
    fn without_a_file_there_is_nothing_to_watch() {
        let store = Arc::new(PolicyStore::new(AdminPolicy::unrestricted(), None));
        let (_tx, rx) = crossbeam_channel::bounded(1);
        assert!(store.spawn_watcher(Arc::new(Metrics::new()), rx).is_none());
        assert_eq!(store.current().generation, 1);
    }
}
