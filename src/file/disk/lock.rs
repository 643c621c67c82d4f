//! The per-id sidecar lock files, and store-wide locks by name.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use super::Layout;
use super::platform::{is_same_file, no_follow, symlink_aware};

/// The first pause between two attempts at a lock another process holds; it doubles up to
/// [`LOCK_POLL_MAX`]. A blocking `flock` cannot be given up on, so a bounded wait polls.
pub(super) const LOCK_POLL_MIN: Duration = Duration::from_millis(1);
pub(super) const LOCK_POLL_MAX: Duration = Duration::from_millis(20);

/// The lock file of an id, as a sweep finds it where there is no commit lock.
#[cfg(not(unix))]
pub(crate) enum ExistingLock {
    /// There is none.
    Absent,
    /// Someone holds it.
    Held,
    /// Now held by the sweep.
    Locked(FileLock),
}

impl Layout {
    /// Locks `name` exclusively, waiting for other processes until `timeout` has passed since
    /// `started` ([`Error::LockTimeout`] then). Names are ids, or `@name` for store-wide locks
    /// (`@` is not allowed in ids, so the two never meet).
    pub(crate) fn lock(&self, name: &str, started: Instant, timeout: Duration) -> Result<FileLock> {
        let mut pause = LOCK_POLL_MIN;
        loop {
            if let Some(lock) = self.try_lock(name)? {
                return Ok(lock);
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(Error::LockTimeout {
                    id: name.trim_start_matches('@').to_string(),
                    waited,
                });
            }
            std::thread::sleep(pause.min(timeout - waited));
            pause = (pause * 2).min(LOCK_POLL_MAX);
        }
    }

    /// Locks `name` if no other process holds it.
    pub(crate) fn try_lock(&self, name: &str) -> Result<Option<FileLock>> {
        let path = self.lock_path(name);
        loop {
            let file = match open_lock_file(&path) {
                Ok(file) => file,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    // The locks directory itself was removed; make it again (and should it be
                    // removed once more before the open, go round again).
                    fs::create_dir_all(&self.locks).map_err(|e| Error::io(&self.locks, e))?;
                    continue;
                }
                Err(error) => return Err(Error::io(&path, error)),
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => return Ok(None),
                Err(fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
            // A holder may have removed the lock file between our open and our lock; a lock
            // on that unlinked file protects nothing, so start over on the file now there.
            if is_same_file(&file, &path) {
                return Ok(Some(FileLock { file, path }));
            }
        }
    }

    /// The names of the lock files there are now (ids, and `@name`s), read in one pass, or
    /// `None` when the directory cannot be read (then each must be looked for). A sweep looks
    /// up the lock of an expired id here instead of trying to open a lock file that is
    /// mostly not there; one made after this pass belongs to a writer that started after it,
    /// which the commit lock orders with the removal.
    pub(crate) fn lock_file_names(&self) -> Option<HashSet<String>> {
        let entries = match fs::read_dir(&self.locks) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Some(HashSet::new()),
            Err(_) => return None,
        };
        let mut names = HashSet::new();
        for entry in entries {
            let name = entry.ok()?.file_name();
            if let Some(name) = name.to_str().and_then(|name| name.strip_suffix(".lock")) {
                names.insert(name.to_string());
            }
        }
        Some(names)
    }

    /// Like [`Layout::try_lock`], but never makes the lock file: a sweep has no use for the
    /// lock of an id nobody writes.
    #[cfg(not(unix))]
    pub(crate) fn try_lock_existing(&self, name: &str) -> Result<ExistingLock> {
        let path = self.lock_path(name);
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        no_follow(&mut options);
        #[cfg(windows)]
        {
            use std::os::windows::fs::OpenOptionsExt;
            /// `FILE_SHARE_READ | FILE_SHARE_WRITE`, as in `open_lock_file`.
            const SHARE_READ_WRITE: u32 = 0x1 | 0x2;
            options.share_mode(SHARE_READ_WRITE);
        }
        let file = match options.open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(ExistingLock::Absent);
            }
            Err(error) => return Err(Error::io(&path, symlink_aware(error))),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(ExistingLock::Held),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        if is_same_file(&file, &path) {
            Ok(ExistingLock::Locked(FileLock { file, path }))
        } else {
            // Removed by its holder between the open and the lock: there is none now.
            Ok(ExistingLock::Absent)
        }
    }
}

/// An exclusive lock on a sidecar lock file, released when dropped.
#[derive(Debug)]
pub(crate) struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Whether the lock file is still the one locked: not removed, nor replaced by another.
    pub(crate) fn still_held(&self) -> bool {
        is_same_file(&self.file, &self.path)
    }

    /// Removes the lock file while still holding it; whoever opened it meanwhile sees the
    /// file gone after locking and opens the new one.
    #[cfg(not(windows))]
    pub(crate) fn remove(self) -> io::Result<()> {
        self.remove_held()
        // `self.file` drops here, releasing the lock.
    }

    /// Removes the lock file while holding it, keeping the lock until dropped (see
    /// [`FileLock::remove`]).
    #[cfg(not(windows))]
    pub(crate) fn remove_held(&self) -> io::Result<()> {
        match fs::remove_file(&self.path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Releases the lock, then removes the lock file unless someone opened it meanwhile
    /// (Windows removes no open file, see `open_lock_file`): that one holds or awaits the lock,
    /// and the file stays for a later sweep of unused lock files.
    #[cfg(windows)]
    pub(crate) fn remove(self) -> io::Result<()> {
        let path = self.path.clone();
        drop(self);
        match fs::remove_file(&path) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) if crate::file::replace::is_held_open(&error) => Ok(()),
            outcome => outcome,
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first makes the release prompt
        // even if the descriptor were shared.
        let _ = self.file.unlock();
    }
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    no_follow(&mut options);
    // Windows cannot unlink a file that is open: a removal would leave the name "pending
    // delete", refusing every open (and so every locker) until the last handle closes.
    // Without FILE_SHARE_DELETE a removal fails while anyone has the file open, so a lock
    // file only ever goes away when nobody uses it (see `FileLock::remove`).
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        /// `FILE_SHARE_READ | FILE_SHARE_WRITE`.
        const SHARE_READ_WRITE: u32 = 0x1 | 0x2;
        options.share_mode(SHARE_READ_WRITE);
    }
    options.open(path).map_err(symlink_aware)
}
