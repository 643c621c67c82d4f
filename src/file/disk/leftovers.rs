//! Removing what killed writers and removed records leave behind: staging files and lock
//! files.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::error::Error;
use crate::id::validate_id;

use super::{Layout, STAGING_ORPHAN_AGE};

impl Layout {
    /// Removes staging files left by killed writers. Returns how many, and the problems.
    pub(crate) fn remove_orphan_staging(&self, problems: &mut Vec<(PathBuf, io::Error)>) -> usize {
        let Ok(entries) = fs::read_dir(&self.staging) else {
            return 0;
        };
        let cutoff = SystemTime::now()
            .checked_sub(STAGING_ORPHAN_AGE)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified < cutoff);
            if old {
                match fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => problems.push((path, error)),
                }
            }
        }
        removed
    }

    /// Removes lock files of ids that have no record, taking each lock first so nobody holding
    /// it is disturbed. Returns how many were removed.
    pub(crate) fn remove_unused_locks(&self, problems: &mut Vec<(PathBuf, io::Error)>) -> usize {
        let Ok(entries) = fs::read_dir(&self.locks) else {
            return 0;
        };
        let ids = entries.flatten().filter_map(|entry| {
            let name = entry.file_name();
            name.to_str()
                .and_then(|name| name.strip_suffix(".lock"))
                .map(str::to_string)
        });
        self.remove_unused_locks_of(ids, problems)
    }

    /// Like [`Layout::remove_unused_locks`] for the lock files of `ids` only: a cleanup that
    /// listed `.locks/` before its pass over the records hands in the names no record
    /// matched, so the lock files of the records it kept cost no second listing and no
    /// `stat` each.
    pub(crate) fn remove_unused_locks_of(
        &self,
        ids: impl IntoIterator<Item = String>,
        problems: &mut Vec<(PathBuf, io::Error)>,
    ) -> usize {
        let mut removed = 0;
        for id in ids {
            if validate_id(&id).is_err() || self.record_path(&id).symlink_metadata().is_ok() {
                continue;
            }
            match self.try_lock(&id) {
                Ok(Some(lock)) => {
                    // Checked again under the lock: a writer may have made the record since.
                    if self.record_path(&id).symlink_metadata().is_err() {
                        match lock.remove() {
                            Ok(()) => removed += 1,
                            Err(error) => problems.push((self.lock_path(&id), error)),
                        }
                    }
                }
                Ok(None) => {}
                Err(Error::Io { path, source }) => problems.push((path, source)),
                Err(_) => {}
            }
        }
        removed
    }
}
