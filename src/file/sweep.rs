//! The lazy sweep: a cleanup (see `cleanup.rs`) run in the background now and then, off the
//! request path.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{FileStorage, Inner};
use crate::record::Timestamp;
use crate::storage::{CleanupOptions, CleanupReport};

/// The lazy sweep running in the background, if any. Sweeps run off the request path (a
/// request never pays for the whole directory); dropping the last handle of the store stops
/// the running one within a file.
#[derive(Debug, Default)]
pub(super) struct LazySweep {
    signal: Arc<SweepSignal>,
    running: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// How long a due lazy sweep waits before it starts. A sweep is garbage collection (expired
/// records already read as absent), so a process that lives less than this (a CLI call)
/// leaves it to longer-lived ones or to an explicit cleanup instead of starting one it would
/// stop at once on exit.
const LAZY_SWEEP_DELAY: Duration = Duration::from_secs(1);

/// Tells a waiting or running lazy sweep to stop (the store is gone) or to start now.
#[derive(Debug, Default)]
struct SweepSignal {
    stop: AtomicBool,
    hurry: Mutex<bool>,
    wake: std::sync::Condvar,
}

impl SweepSignal {
    /// Waits out [`LAZY_SWEEP_DELAY`] unless hurried; false if stopped meanwhile.
    fn wait_to_start(&self) -> bool {
        let hurry = self
            .hurry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _hurry = self
            .wake
            .wait_timeout_while(hurry, LAZY_SWEEP_DELAY, |hurry| {
                !*hurry && !self.stop.load(Ordering::SeqCst)
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        !self.stop.load(Ordering::SeqCst)
    }

    fn wake(&self, stop: bool) {
        let mut hurry = self
            .hurry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if stop {
            self.stop.store(true, Ordering::SeqCst);
        } else {
            *hurry = true;
        }
        self.wake.notify_all();
    }
}

impl Drop for LazySweep {
    fn drop(&mut self) {
        self.signal.wake(true);
        if let Some(task) = self
            .running
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl FileStorage {
    /// Starts a cleanup in the background if the lazy-sweep interval has passed since the
    /// last one (of this or, through the marker, another process) and none is running.
    pub(super) fn maybe_lazy_sweep(&self) {
        let Some(interval) = self.inner.sweep_interval else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let now = self.inner.clock.now();
        let mut running = self
            .lazy_sweep
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if running.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        {
            let mut last = self
                .inner
                .last_sweep
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match *last {
                Some(at) if at.saturating_add(interval) > now => return,
                _ => *last = Some(now),
            }
        }
        let inner = self.inner.clone();
        let signal = self.lazy_sweep.signal.clone();
        let sweep = runtime.spawn_blocking(move || {
            if !signal.wait_to_start() {
                return;
            }
            let Some(report) = inner.lazy_sweep(now, interval, &signal.stop) else {
                return;
            };
            if let Some(handle) = inner.hub.running() {
                for id in &report.removed {
                    handle.hub.apply_local(id, None);
                }
            }
        });
        // The blocking sweep itself cannot be aborted; the task only carries its end.
        *running = Some(runtime.spawn(async move {
            let _ = sweep.await;
        }));
    }

    /// Starts the lazy sweep due in the background at once, if any, and waits for it. For
    /// tests, which must see what it removed.
    #[doc(hidden)]
    pub async fn wait_for_lazy_sweep(&self) {
        self.lazy_sweep.signal.wake(false);
        let running = self
            .lazy_sweep
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = running {
            let _ = task.await;
        }
    }
}

/// The file under `.locks/` that holds the store-clock time (ms) of the last lazy sweep by
/// any process. Its name is no lock name, so lock cleanup leaves it alone.
const SWEEP_MARKER: &str = "@sweep.last";

/// The time in the sweep marker; `None` when there is none or it is unreadable (then a sweep
/// runs, which is always safe).
fn read_sweep_marker(path: &Path) -> Option<Timestamp> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok().map(Timestamp::from_millis)
}

impl Inner {
    /// A lazy sweep, unless another process swept within `interval` (its marker says so) or
    /// holds the sweep lock. Stops early once `stop` is set.
    fn lazy_sweep(
        &self,
        now: Timestamp,
        interval: Duration,
        stop: &AtomicBool,
    ) -> Option<CleanupReport> {
        // Other processes on the directory (a CLI call, a cron job, the previous run of a
        // server) leave the time of their last sweep behind; short-lived processes would
        // otherwise each scan the whole directory.
        let marker = self.layout.locks.join(SWEEP_MARKER);
        if let Some(at) = read_sweep_marker(&marker)
            && at <= now
            && at.saturating_add(interval) > now
        {
            return None;
        }
        let report = match self.cleanup(&CleanupOptions::default(), stop) {
            Ok(report) => report,
            Err(error) => {
                tracing::warn!(dir = %self.layout.dir.display(), %error, "lazy sweep failed");
                return None;
            }
        };
        if !report.removed.is_empty() || !report.errors.is_empty() {
            tracing::debug!(
                dir = %self.layout.dir.display(),
                removed = report.removed.len(),
                problems = report.errors.len(),
                "lazy sweep"
            );
        }
        // A sweep stopped half-way did not sweep the store: the next one must not wait.
        if report.ran
            && !stop.load(Ordering::SeqCst)
            && let Err(error) = std::fs::write(&marker, now.as_millis().to_string())
        {
            tracing::debug!(%error, path = %marker.display(), "could not record the lazy sweep");
        }
        Some(report)
    }
}
