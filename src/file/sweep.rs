//! Removing expired records: an explicit cleanup, and the lazy sweep that runs one in the
//! background now and then, off the request path.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::disk::{self, Layout};
use super::format::Head;
use super::{FileStorage, Inner};
use crate::error::{Error, Result};
use crate::record::Timestamp;
use crate::storage::{CleanupOptions, CleanupProblem, CleanupReport, SWEEP_LOCK};

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

    /// Removes what is expired. Never waits for a lock: a record whose lock is held is being
    /// written (fresh by definition) or held by a frozen process, and either way is left for a
    /// later sweep, so one held lock cannot stall a sweep nor what waits on it. Stops early
    /// once `stop` is set.
    pub(super) fn cleanup(
        &self,
        options: &CleanupOptions,
        stop: &AtomicBool,
    ) -> Result<CleanupReport> {
        self.layout.check_private_dirs()?;
        let Some(_sweep) = self.layout.try_lock(&format!("@{SWEEP_LOCK}"))? else {
            return Ok(CleanupReport::default());
        };
        let mut report = CleanupReport {
            ran: true,
            ..CleanupReport::default()
        };
        let mut io_problems = Vec::new();
        // Read entry by entry, not listed first, so that a stop is noticed at once even in a
        // large directory.
        let entries = match std::fs::read_dir(&self.layout.dir) {
            Ok(entries) => Some(entries),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(Error::io(&self.layout.dir, error)),
        };
        let fresh_for = if self.wall_clock {
            options.ttl.or_else(|| self.ttl.shortest())
        } else {
            None
        };
        for entry in entries.into_iter().flatten() {
            if stop.load(Ordering::Relaxed) {
                report.removed.sort();
                return Ok(report);
            }
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    io_problems.push((self.layout.dir.clone(), error));
                    continue;
                }
            };
            let Some(id) = Layout::id_of(&entry.file_name()).map(str::to_string) else {
                continue;
            };
            // A file written more recently than the shortest TTL holds no expired record, by
            // this store's policy: one `stat`, as `find -mmin` does, instead of a read. (A
            // file copied with a new time, or written by a tool with a shorter TTL of its
            // own, is swept once its time is old enough; reads judge it by its content
            // meanwhile.) Only against the wall clock: an injected clock is not the disk's.
            if let Some(fresh_for) = fresh_for
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|modified| modified + fresh_for > std::time::SystemTime::now())
            {
                report.kept += 1;
                continue;
            }
            if !options.dry_run {
                // Judged under the id's lock, by the one read that is needed anyway.
                match self.remove_if_expired(&id, options) {
                    Ok(Removal::Removed) => report.removed.push(id),
                    Ok(Removal::Kept) => report.kept += 1,
                    Ok(Removal::Gone) => {}
                    Err(error) => report.errors.push(CleanupProblem {
                        id: Some(id.clone()),
                        message: error.to_string(),
                    }),
                }
                continue;
            }
            // The head is enough to judge, and of most files only the first bytes are read.
            match self.layout.read_head_with_id(&id) {
                Ok((Some(head), _)) if head.is_expired(self.clock.now(), options.ttl) => {
                    report.removed.push(id);
                }
                Ok((Some(_), _)) => report.kept += 1,
                Ok((None, _)) => {}
                Err(error) => report.errors.push(CleanupProblem {
                    id: Some(id.clone()),
                    message: error.to_string(),
                }),
            }
        }
        report.removed.sort();
        if !options.dry_run {
            report.leftovers_removed += self.layout.remove_orphan_staging(&mut io_problems);
            report.leftovers_removed += self.layout.remove_unused_locks(&mut io_problems);
        }
        report
            .errors
            .extend(io_problems.into_iter().map(|(path, error)| CleanupProblem {
                id: None,
                message: format!("{}: {error}", path.display()),
            }));
        Ok(report)
    }

    /// Removes `id` if it is still expired once its locks are held; a lock someone holds
    /// means keep it (see [`Inner::cleanup`]).
    fn remove_if_expired(&self, id: &str, options: &CleanupOptions) -> Result<Removal> {
        // A task of this process writing the id holds its in-process lock. Looked up, not
        // made: a sweep of many ids must not fill the map, and a writer that comes after
        // the look is ordered by the file locks below like one of another process.
        let lock = self.id_locks.existing(id);
        let _in_process = match &lock {
            Some(lock) => match lock.try_lock() {
                Ok(guard) => Some(guard),
                Err(_) => return Ok(Removal::Kept),
            },
            None => None,
        };
        let expired = |head: &Head| head.is_expired(self.clock.now(), options.ttl);
        let file_lock = match self.layout.try_lock_existing(id)? {
            disk::ExistingLock::Held => return Ok(Removal::Kept),
            disk::ExistingLock::Locked(file_lock) => file_lock,
            // No lock file, so nobody is writing the id (a writer makes it first). Making one
            // only to remove it would double the cost of a removal; the commit lock orders
            // this removal with a writer that starts now (see `Layout::remove_unlocked`).
            #[cfg(unix)]
            disk::ExistingLock::Absent => {
                let (head, read) = self.layout.read_head_with_id(id)?;
                match head {
                    None => return Ok(Removal::Gone),
                    Some(head) if !expired(&head) => return Ok(Removal::Kept),
                    Some(_) => {}
                }
                return Ok(if self.layout.remove_unlocked(id, self.durability, read)? {
                    Removal::Removed
                } else {
                    Removal::Kept
                });
            }
            #[cfg(not(unix))]
            disk::ExistingLock::Absent => match self.layout.try_lock(id)? {
                Some(file_lock) => file_lock,
                None => return Ok(Removal::Kept),
            },
        };
        let (head, read) = self.layout.read_head_with_id(id)?;
        match head {
            None => return Ok(Removal::Gone),
            Some(head) if !expired(&head) => return Ok(Removal::Kept),
            Some(_) => {}
        }
        match self
            .layout
            .remove_locked(id, self.durability, &file_lock, read)?
        {
            Ok(_) => {}
            // Someone took the id meanwhile; leave it to them.
            Err(disk::Commit::LockLost) | Err(disk::Commit::Done) => return Ok(Removal::Kept),
        }
        file_lock
            .remove()
            .map_err(|e| Error::io(self.layout.locks.join(format!("{id}.lock")), e))?;
        Ok(Removal::Removed)
    }
}

/// What a sweep did with one record.
enum Removal {
    Removed,
    /// Live, or locked by a writer, or replaced meanwhile: left.
    Kept,
    /// There was no record by the time it was looked at.
    Gone,
}
