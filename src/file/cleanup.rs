//! Removing expired records, for an explicit cleanup and for the lazy sweep: each record is
//! judged by one read, and on Unix read and removed with its lock file in runs under one
//! commit lock, without taking the ids' locks.

use std::sync::atomic::{AtomicBool, Ordering};

use super::Inner;
use super::disk::{self, Layout};
#[cfg(unix)]
use super::format::Head;
use crate::error::{Error, Result};
use crate::storage::{CleanupOptions, CleanupProblem, CleanupReport, SWEEP_LOCK};

/// How many records share one hold of the directory's commit lock. Writers of the store wait
/// for that lock while a run holds it: the 2026-12-06 cleanup bench removed 50,000 of 100,000
/// records in 1.2–1.4 s, under 30 µs a record with the listing, so a run of 32 holds it under a
/// millisecond (half the 64 of before, as the reads are now done under it too; a record whose
/// head is not at the start of its file is read whole). Taking it per removal (open, `flock`,
/// close of the directory) was a third of a removal's system calls.
#[cfg(unix)]
const REMOVALS_PER_COMMIT_LOCK: usize = 32;

/// Records old enough to be expired, to be judged and removed together.
#[cfg(unix)]
#[derive(Default)]
struct PendingRemovals(Vec<disk::RemovalCandidate>);

#[cfg(unix)]
impl PendingRemovals {
    /// Reads the pending records under one commit lock, removes those expired, and tells the
    /// report what became of each.
    fn flush(
        &mut self,
        inner: &Inner,
        options: &CleanupOptions,
        report: &mut CleanupReport,
    ) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let expired = |head: &Head| head.is_expired(inner.clock.now(), options.ttl);
        let outcomes = inner
            .layout
            .remove_expired_run(&self.0, expired, inner.durability)?;
        for (candidate, outcome) in self.0.drain(..).zip(outcomes) {
            let id = candidate.id;
            match outcome {
                Ok(disk::RunOutcome::Removed) => report.removed.push(id),
                Ok(disk::RunOutcome::Kept) => report.kept += 1,
                Ok(disk::RunOutcome::Gone) => {}
                Err(error) => report.errors.push(CleanupProblem {
                    id: Some(id),
                    message: error.to_string(),
                }),
            }
        }
        Ok(())
    }
}

impl Inner {
    /// Removes what is expired. Never waits for an id's lock, so one held lock (a frozen
    /// process) cannot stall a sweep nor what waits on it. On Unix an expired record is
    /// removed even while a writer holds its lock: that writer read it as absent and, finding
    /// it and its lock file gone at its commit, starts over and reads it so again (see
    /// `Layout::remove_expired_run`). Elsewhere a record whose lock is held is left for a
    /// later sweep. Stops early once `stop` is set.
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
        #[cfg(unix)]
        let mut pending = PendingRemovals::default();
        // The lock files there are now; each name a record of the pass below matches is taken
        // out, so what is left at the end are the candidates for leftovers.
        let mut lock_files = if options.dry_run {
            None
        } else {
            self.layout.lock_file_names()
        };
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
                // What is pending stays for the next sweep: it was not removed.
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
            let may_have_lock_file = lock_files.as_mut().is_none_or(|names| names.remove(&id));
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
                // Judged by the one read that is needed anyway, on Unix under the commit lock
                // with others, elsewhere under the id's lock.
                #[cfg(unix)]
                {
                    pending.0.push(disk::RemovalCandidate {
                        id,
                        has_lock_file: may_have_lock_file,
                    });
                    if pending.0.len() >= REMOVALS_PER_COMMIT_LOCK {
                        pending.flush(self, options, &mut report)?;
                    }
                }
                #[cfg(not(unix))]
                match self.remove_if_expired(&id, options, may_have_lock_file) {
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
        #[cfg(unix)]
        pending.flush(self, options, &mut report)?;
        report.removed.sort();
        if !options.dry_run {
            report.leftovers_removed += self.layout.remove_orphan_staging(&mut io_problems);
            report.leftovers_removed += match lock_files {
                Some(unmatched) => self
                    .layout
                    .remove_unused_locks_of(unmatched, &mut io_problems),
                // `.locks/` could not be listed before the pass: try once more now.
                None => self.layout.remove_unused_locks(&mut io_problems),
            };
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
    /// means keep it (see [`Inner::cleanup`]). `may_have_lock_file` false means the id had
    /// none when the sweep looked. Where there is no commit lock (see `PendingRemovals` for
    /// Unix), the id's lock is what orders the removal with a writer.
    #[cfg(not(unix))]
    fn remove_if_expired(
        &self,
        id: &str,
        options: &CleanupOptions,
        may_have_lock_file: bool,
    ) -> Result<Removal> {
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
        // The id's lock file is taken as a writer takes it, and held until the removal so
        // that it goes with the record.
        let existing = if may_have_lock_file {
            self.layout.try_lock_existing(id)?
        } else {
            disk::ExistingLock::Absent
        };
        let file_lock = match existing {
            disk::ExistingLock::Held => return Ok(Removal::Kept),
            disk::ExistingLock::Locked(file_lock) => file_lock,
            disk::ExistingLock::Absent => match self.layout.try_lock(id)? {
                Some(file_lock) => file_lock,
                None => return Ok(Removal::Kept),
            },
        };
        let (head, read) = self.layout.read_head_with_id(id)?;
        match head {
            None => return Ok(Removal::Gone),
            Some(head) if !head.is_expired(self.clock.now(), options.ttl) => {
                return Ok(Removal::Kept);
            }
            Some(_) => {}
        }
        match self
            .layout
            .remove_locked(id, self.durability, &file_lock, read)?
        {
            Ok(_) => {}
            // Someone took the id meanwhile; leave it to them.
            Err(disk::Commit::LockLost) | Err(disk::Commit::Done) => {
                return Ok(Removal::Kept);
            }
        }
        file_lock
            .remove()
            .map_err(|e| Error::io(self.layout.locks.join(format!("{id}.lock")), e))?;
        Ok(Removal::Removed)
    }
}

/// What a sweep did with one record.
#[cfg(not(unix))]
enum Removal {
    Removed,
    /// Live, or locked by a writer, or replaced meanwhile: left.
    Kept,
    /// There was no record by the time it was looked at.
    Gone,
}
