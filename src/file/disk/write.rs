//! Replacing and removing record files under the commit lock.

use std::fs;
#[cfg(unix)]
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
#[cfg(unix)]
use std::time::Instant;

use crate::error::{Error, Result};
use crate::record::Record;

use super::lock::FileLock;
#[cfg(unix)]
use super::lock::{LOCK_POLL_MAX, LOCK_POLL_MIN};
use super::platform::sync_dir;
use super::read::{FileId, ReadFile};
use super::{Durability, Layout};
#[cfg(unix)]
use crate::file::format::Head;
use crate::file::replace;

/// What a write under a lock found when it came to replace the record file.
#[derive(Debug)]
#[must_use]
pub(crate) enum Commit {
    Done,
    /// The lock file was removed or replaced while held (an operator clearing "stale locks",
    /// a tmp cleaner), or the record file changed under the lock, so another writer may have
    /// come in: nothing was written, and the whole read-modify-write must start over.
    LockLost,
}

/// A record a sweep found old enough to be expired, to be judged and removed under the
/// commit lock.
#[cfg(unix)]
#[derive(Debug)]
pub(crate) struct RemovalCandidate {
    pub(crate) id: String,
    /// The id had a lock file when the sweep listed them, to be removed with the record.
    pub(crate) has_lock_file: bool,
}

/// What a run of removals did with one candidate.
#[cfg(unix)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    Removed,
    /// Not expired when read under the commit lock.
    Kept,
    /// There was no record file by then.
    Gone,
}

/// What stands for the commit lock where there is none to take.
#[cfg(not(unix))]
struct NoCommitLock;

impl Layout {
    /// Makes "check that the record file is still the one read, then replace it" one step
    /// for every writer of the directory: an exclusive `flock` on the store directory itself,
    /// held for two `stat`s and a rename. The per-id lock files keep writers of an id from
    /// working at once, but anyone can delete a lock file while it is held; the record check
    /// under this lock is what makes a second writer let in that way start over instead of
    /// writing over the first.
    #[cfg(unix)]
    fn commit_lock(&self) -> Result<File> {
        let dir = File::open(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let started = Instant::now();
        let mut pause = LOCK_POLL_MIN;
        loop {
            match dir.try_lock() {
                Ok(()) => return Ok(dir),
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(e)) => return Err(Error::io(&self.dir, e)),
            }
            let waited = started.elapsed();
            if waited >= self.lock_timeout {
                return Err(Error::LockTimeout {
                    id: self.dir.display().to_string(),
                    waited,
                });
            }
            // Holders keep it for microseconds: yield a little before sleeping.
            if waited < LOCK_POLL_MIN {
                std::thread::yield_now();
                continue;
            }
            std::thread::sleep(pause.min(self.lock_timeout - waited));
            pause = (pause * 2).min(LOCK_POLL_MAX);
        }
    }

    /// Without `flock` on directories, only the record check guards the commit there.
    #[cfg(not(unix))]
    fn commit_lock(&self) -> Result<NoCommitLock> {
        Ok(NoCommitLock)
    }

    /// Reads each record of `run` and removes those `expired` judges so, with their lock
    /// files, all under one hold of the commit lock. Safe without the ids' locks because every
    /// rename over a record file and every removal happens under that lock after its writer
    /// checked that its lock file and the record file are still the ones it locked and read:
    /// nothing a writer does falls between this read and the removal, and a writer that holds
    /// the lock of a record removed here, or read it, finds both changed and starts over (it
    /// read the expired record as absent, and reads it so again). Judged here rather than
    /// before the lock, the file needs no second look (a `stat` that it is still the one read)
    /// nor to stay open meanwhile, and no lock file needs opening and locking to be removed.
    /// Says for each what became of it; an error fails the one record.
    #[cfg(unix)]
    pub(crate) fn remove_expired_run(
        &self,
        run: &[RemovalCandidate],
        expired: impl Fn(&Head) -> bool,
        durability: Durability,
    ) -> Result<Vec<Result<RunOutcome>>> {
        let outcomes: Vec<Result<RunOutcome>> = {
            let _commit = self.commit_lock()?;
            run.iter()
                .map(|candidate| {
                    let (head, read) = self.read_head_with_id(&candidate.id)?;
                    // Closed before the removal: nothing can replace it while this lock is held.
                    drop(read);
                    match head {
                        None => return Ok(RunOutcome::Gone),
                        Some(head) if !expired(&head) => return Ok(RunOutcome::Kept),
                        Some(_) => {}
                    }
                    let path = self.record_path(&candidate.id);
                    match fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(error) if error.kind() == io::ErrorKind::NotFound => {
                            return Ok(RunOutcome::Gone);
                        }
                        Err(error) => return Err(Error::io(&path, error)),
                    }
                    if candidate.has_lock_file {
                        // One that cannot be removed now is a lock file of an id with no
                        // record, which the next cleanup's pass over unused lock files takes
                        // (this one's looks only at ids it saw no record of).
                        let _ = fs::remove_file(self.lock_path(&candidate.id));
                    }
                    Ok(RunOutcome::Removed)
                })
                .collect()
        };
        if durability == Durability::Fsync
            && outcomes
                .iter()
                .any(|o| matches!(o, Ok(RunOutcome::Removed)))
        {
            sync_dir(&self.dir)?;
        }
        Ok(outcomes)
    }

    /// Writes `record` atomically: a unique staging file, then a rename over the record file.
    ///
    /// `lock` is the record's lock and `read` the file the caller read the old record from:
    /// the rename happens only if the lock file is still the one locked and the record file is
    /// still the one read ([`Commit::LockLost`] otherwise, with nothing written).
    pub(crate) fn write(
        &self,
        record: &Record,
        durability: Durability,
        lock: &FileLock,
        read: Option<ReadFile>,
    ) -> Result<Commit> {
        let path = self.record_path(&record.id);
        let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Serde {
            id: record.id.clone(),
            source: e,
        })?;
        bytes.push(b'\n');
        crate::storage::check_record_size(&record.id, bytes.len() as u64, self.max_record_size)?;
        let mut staged = match staging_file(&self.staging, &record.id) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.staging).map_err(|e| Error::io(&self.staging, e))?;
                staging_file(&self.staging, &record.id).map_err(|e| Error::io(&self.staging, e))?
            }
            Err(error) => return Err(Error::io(&self.staging, error)),
        };
        let staged_path = staged.path().to_path_buf();
        staged
            .write_all(&bytes)
            .map_err(|e| Error::io(&staged_path, e))?;
        if durability == Durability::Fsync {
            staged
                .as_file()
                .sync_all()
                .map_err(|e| Error::io(&staged_path, e))?;
        }
        // Checked as late as possible, right before the rename, so that the window in which
        // a removed lock file can let a second writer in is as short as a rename.
        {
            let _commit = self.commit_lock()?;
            if !self.still_current(lock, &path, &read)? {
                return Ok(Commit::LockLost);
            }
            // On failure the staging file is removed when `staged` drops.
            replace::persist(staged, &path).map_err(|e| Error::io(&path, e))?;
        }
        if durability == Durability::Fsync {
            sync_dir(&self.dir)?;
        }
        Ok(Commit::Done)
    }

    /// Whether `lock` still guards `path` and `path` still names the file read (`read`).
    fn still_current(&self, lock: &FileLock, path: &Path, read: &Option<ReadFile>) -> Result<bool> {
        if !lock.still_held() {
            return Ok(false);
        }
        Ok(FileId::at(path).map_err(|e| Error::io(path, e))? == read.as_ref().map(|r| r.key))
    }

    /// Removes the record file of `id` under `lock`, if it is still the file read (`read`).
    /// Returns whether there was one, or [`Commit::LockLost`] as for [`Layout::write`].
    pub(crate) fn remove_locked(
        &self,
        id: &str,
        durability: Durability,
        lock: &FileLock,
        read: Option<ReadFile>,
    ) -> Result<std::result::Result<bool, Commit>> {
        Ok(self
            .remove_if_current(id, durability, |path| self.still_current(lock, path, &read))?
            .ok_or(Commit::LockLost))
    }

    /// Removes the record file of `id` under the commit lock if `is_current` (given its path)
    /// says it may: `None` when it said no, else whether there was a file to remove.
    fn remove_if_current(
        &self,
        id: &str,
        durability: Durability,
        is_current: impl FnOnce(&Path) -> Result<bool>,
    ) -> Result<Option<bool>> {
        let path = self.record_path(id);
        let removed = {
            let _commit = self.commit_lock()?;
            if !is_current(&path)? {
                return Ok(None);
            }
            match fs::remove_file(&path) {
                Ok(()) => true,
                Err(error) if error.kind() == io::ErrorKind::NotFound => false,
                Err(error) => return Err(Error::io(&path, error)),
            }
        };
        if removed && durability == Durability::Fsync {
            sync_dir(&self.dir)?;
        }
        Ok(Some(removed))
    }
}

fn staging_file(dir: &Path, id: &str) -> io::Result<tempfile::NamedTempFile> {
    let prefix = format!("{id}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // Record files are for people and other tools to read: created like `fs::write` creates
    // them (0666 less the umask), not with a temporary file's private 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir)
}
