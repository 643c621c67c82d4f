//! The synchronous file operations of the file store: the directory's layout here, and by
//! concern in the modules below. Everything here blocks and runs on the blocking thread
//! pool, never on the async workers.

mod leftovers;
mod lock;
mod platform;
mod read;
#[cfg(all(test, unix))]
mod tests;
mod write;

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::id::validate_id;
use crate::ttl::TtlPolicy;

use platform::symlink_error;

#[cfg(not(unix))]
pub(crate) use lock::ExistingLock;
pub(crate) use lock::FileLock;
pub(crate) use read::{OpenRecord, ReadFile};
pub(crate) use write::Commit;
#[cfg(unix)]
pub(crate) use write::{RemovalCandidate, RunOutcome};

/// Where staging files live while they are written.
pub(crate) const STAGING_DIR: &str = ".tmp";
/// Where the sidecar lock files live.
pub(crate) const LOCKS_DIR: &str = ".locks";
/// Staging files older than this belong to a killed writer.
pub(crate) const STAGING_ORPHAN_AGE: Duration = Duration::from_secs(600);

/// How hard a write tries to reach the disk before it returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Staging file + atomic rename: a killed process (even SIGKILL) leaves the old record or
    /// the new one, never a torn one. A power loss may lose recent writes.
    #[default]
    Rename,
    /// Also fsync the staging file before the rename and the directory after it, so a write
    /// that returned survives power loss.
    Fsync,
}

/// The directory of a file store and its layout.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) dir: PathBuf,
    pub(crate) staging: PathBuf,
    pub(crate) locks: PathBuf,
    /// The largest record file written or read, in bytes.
    pub(crate) max_record_size: u64,
    /// How long a write waits for a lock another process holds.
    pub(crate) lock_timeout: Duration,
    /// When records that do not say when they expire do (see [`format`]).
    pub(crate) ttl: TtlPolicy,
}

impl Layout {
    pub(crate) fn new(
        dir: PathBuf,
        max_record_size: u64,
        lock_timeout: Duration,
        ttl: TtlPolicy,
    ) -> Self {
        Layout {
            staging: dir.join(STAGING_DIR),
            locks: dir.join(LOCKS_DIR),
            dir,
            max_record_size,
            lock_timeout,
            ttl,
        }
    }

    pub(crate) fn create_dirs(&self) -> Result<()> {
        for dir in [&self.dir, &self.staging, &self.locks] {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        self.check_private_dirs()
    }

    /// Refuses a `.tmp` or `.locks` that is a symbolic link: cleanups delete files in both,
    /// and must never do so in a directory elsewhere.
    pub(crate) fn check_private_dirs(&self) -> Result<()> {
        for dir in [&self.staging, &self.locks] {
            match fs::symlink_metadata(dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Error::io(dir, symlink_error()));
                }
                Ok(meta) if !meta.is_dir() => {
                    return Err(Error::io(
                        dir,
                        io::Error::new(io::ErrorKind::InvalidInput, "is not a directory"),
                    ));
                }
                // A missing directory is made again when next needed.
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(Error::io(dir, error)),
            }
        }
        Ok(())
    }

    pub(crate) fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub(super) fn lock_path(&self, name: &str) -> PathBuf {
        self.locks.join(format!("{name}.lock"))
    }

    /// The id a directory entry's file name holds, if it is a record file.
    pub(crate) fn id_of(file_name: &std::ffi::OsStr) -> Option<&str> {
        let id = file_name.to_str()?.strip_suffix(".json")?;
        validate_id(id).ok().map(|()| id)
    }

    /// The ids of every record file, sorted; entries that are not record files are skipped.
    pub(crate) fn ids(&self) -> Result<Vec<String>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(Error::io(&self.dir, error)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            if let Some(id) = Self::id_of(&entry.file_name()) {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }
}

/// Whether `error` says the record file holds something that is not a record of its id
/// (bad content, a link, a special file), as opposed to a failure to reach it. Such a file
/// can be replaced by an unconditional write.
pub(crate) fn is_unusable_record_file(error: &Error) -> bool {
    match error {
        Error::Corrupt { .. } => true,
        // This module makes `InvalidInput` only for links and special files.
        Error::Io { source, .. } => source.kind() == io::ErrorKind::InvalidInput,
        _ => false,
    }
}
