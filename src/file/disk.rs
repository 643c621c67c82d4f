//! The synchronous file operations of the file store. Everything here blocks and runs on
//! the blocking thread pool, never on the async workers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::id::validate_id;
use crate::record::{Record, Timestamp};
use crate::ttl::TtlPolicy;

use super::format::{self, Head};
use super::replace;

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

/// A record file opened for reading, and what has been read of it.
struct OpenRecord {
    path: PathBuf,
    file: File,
    metadata: fs::Metadata,
    bytes: Vec<u8>,
}

impl OpenRecord {
    fn into_read_file(self) -> ReadFile {
        ReadFile {
            key: FileId::of(&self.metadata),
            _open: kept_open(self.file),
        }
    }
}

/// The first pause between two attempts at a lock another process holds; it doubles up to
/// [`LOCK_POLL_MAX`]. A blocking `flock` cannot be given up on, so a bounded wait polls.
const LOCK_POLL_MIN: Duration = Duration::from_millis(1);
const LOCK_POLL_MAX: Duration = Duration::from_millis(20);

/// Which file a name pointed at when it was read, to tell later whether it was replaced.
///
/// It keeps the file open: an inode number is unique only while its file exists, and a file
/// replaced and closed frees its number for the next file made (a staging file of another
/// writer, renamed over the record in turn), which would look unchanged.
#[derive(Debug)]
pub(crate) struct ReadFile {
    key: FileId,
    _open: Option<File>,
}

impl ReadFile {
    /// The file at `path` now, kept open, or `None` when there is none.
    pub(crate) fn at(path: &Path) -> io::Result<Option<Self>> {
        let file = match open_no_follow(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            // A link or something else not openable as a file: known by its metadata alone.
            Err(_) => {
                return Ok(FileId::at(path)?.map(|key| ReadFile { key, _open: None }));
            }
        };
        let key = FileId::of(&file.metadata()?);
        Ok(Some(ReadFile {
            key,
            _open: kept_open(file),
        }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    #[cfg(unix)]
    dev: u64,
    #[cfg(unix)]
    ino: u64,
    #[cfg(not(unix))]
    len: u64,
    #[cfg(not(unix))]
    modified: Option<SystemTime>,
}

impl FileId {
    fn of(metadata: &fs::Metadata) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            FileId {
                dev: metadata.dev(),
                ino: metadata.ino(),
            }
        }
        #[cfg(not(unix))]
        {
            FileId {
                len: metadata.len(),
                modified: metadata.modified().ok(),
            }
        }
    }

    /// What `path` names now (`None`: nothing).
    fn at(path: &Path) -> io::Result<Option<Self>> {
        match fs::symlink_metadata(path) {
            Ok(metadata) => Ok(Some(FileId::of(&metadata))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }
}

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

/// The lock file of an id, as a sweep finds it.
pub(crate) enum ExistingLock {
    /// There is none.
    Absent,
    /// Someone holds it.
    Held,
    /// Now held by the sweep.
    Locked(FileLock),
}

/// What stands for the commit lock where there is none to take.
#[cfg(not(unix))]
struct NoCommitLock;

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

    fn lock_path(&self, name: &str) -> PathBuf {
        self.locks.join(format!("{name}.lock"))
    }

    /// The id a directory entry's file name holds, if it is a record file.
    pub(crate) fn id_of(file_name: &std::ffi::OsStr) -> Option<&str> {
        let id = file_name.to_str()?.strip_suffix(".json")?;
        validate_id(id).ok().map(|()| id)
    }

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

    /// Like [`Layout::try_lock`], but never makes the lock file: a sweep has no use for the
    /// lock of an id nobody writes.
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

    /// Removes the record file of `id` if it is still the file read (`read`), without the
    /// id's lock. Safe because every rename over a record file and every removal happens
    /// under the commit lock after checking the file is still the one its writer read: a
    /// writer that read the removed file starts over, and a file renamed in before this
    /// check is not the one read, so it stays.
    #[cfg(unix)]
    pub(crate) fn remove_unlocked(
        &self,
        id: &str,
        durability: Durability,
        read: Option<ReadFile>,
    ) -> Result<bool> {
        let path = self.record_path(id);
        let removed = {
            let _commit = self.commit_lock()?;
            if FileId::at(&path).map_err(|e| Error::io(&path, e))? != read.as_ref().map(|r| r.key) {
                return Ok(false);
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
        Ok(removed)
    }

    /// Opens the record file of `id` for reading: `None` when there is none. Only regular
    /// files within the size limit are records.
    fn open_record(&self, id: &str) -> Result<Option<OpenRecord>> {
        let path = self.record_path(id);
        let file = match open_no_follow(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Error::io(&path, symlink_aware(error))),
        };
        // A FIFO or device in place of a record would block or never end.
        let metadata = file.metadata().map_err(|e| Error::io(&path, e))?;
        if !metadata.is_file() {
            return Err(Error::io(
                &path,
                io::Error::new(io::ErrorKind::InvalidInput, "is not a regular file"),
            ));
        }
        // Refused before a byte is read: an oversize file must not cost its size in memory.
        crate::storage::check_record_size(id, metadata.len(), self.max_record_size)?;
        Ok(Some(OpenRecord {
            path,
            file,
            metadata,
            bytes: Vec::new(),
        }))
    }

    /// Reads the rest of `open` and parses the whole record.
    fn finish_read(&self, id: &str, mut open: OpenRecord) -> Result<(Record, ReadFile)> {
        // Sized from the metadata already at hand (`read_to_end` on a `File` would ask the
        // kernel for it again); one byte more so the end is seen in the same pass. The read
        // stops one byte past the limit should the file grow meanwhile.
        let expected = usize::try_from(open.metadata.len()).unwrap_or(0);
        open.bytes.reserve(
            expected
                .saturating_add(1)
                .max(512)
                .saturating_sub(open.bytes.len()),
        );
        let already = open.bytes.len() as u64;
        (&mut open.file)
            .take(
                self.max_record_size
                    .saturating_add(1)
                    .saturating_sub(already),
            )
            .read_to_end(&mut open.bytes)
            .map_err(|e| Error::io(&open.path, e))?;
        crate::storage::check_record_size(id, open.bytes.len() as u64, self.max_record_size)?;
        let metadata = &open.metadata;
        let record = format::parse_record(id, &open.path, &open.bytes, &self.ttl, || {
            metadata
                .modified()
                .map(Timestamp::from_system_time)
                .unwrap_or_default()
        })?;
        Ok((record, open.into_read_file()))
    }

    /// Reads the record of `id`, and which file it was read from. `Ok((None, None))` when
    /// there is no file.
    pub(crate) fn read_with_id(&self, id: &str) -> Result<(Option<Record>, Option<ReadFile>)> {
        let Some(open) = self.open_record(id)? else {
            return Ok((None, None));
        };
        let (record, read) = self.finish_read(id, open)?;
        Ok((Some(record), Some(read)))
    }

    /// Reads the head of the record of `id` (all but its status), and which file it was read
    /// from. Only the first bytes of the file are read when they hold the head (see
    /// [`format`]); otherwise the whole record is.
    pub(crate) fn read_head_with_id(&self, id: &str) -> Result<(Option<Head>, Option<ReadFile>)> {
        let Some(mut open) = self.open_record(id)? else {
            return Ok((None, None));
        };
        open.bytes.reserve(format::HEAD_PREFIX);
        (&mut open.file)
            .take(format::HEAD_PREFIX as u64)
            .read_to_end(&mut open.bytes)
            .map_err(|e| Error::io(&open.path, e))?;
        if let Some(head) = format::parse_head(id, &open.bytes) {
            return Ok((Some(head), Some(open.into_read_file())));
        }
        let (record, read) = self.finish_read(id, open)?;
        Ok((Some(Head::of(&record)), Some(read)))
    }

    /// Reads the record of `id`. `Ok(None)` when there is no file.
    pub(crate) fn read(&self, id: &str) -> Result<Option<Record>> {
        Ok(self.read_with_id(id)?.0)
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
        let path = self.record_path(id);
        let removed = {
            let _commit = self.commit_lock()?;
            if !self.still_current(lock, &path, &read)? {
                return Ok(Err(Commit::LockLost));
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
        Ok(Ok(removed))
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
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|name| name.strip_suffix(".lock"))
                .filter(|id| validate_id(id).is_ok())
            else {
                continue;
            };
            if self.record_path(id).symlink_metadata().is_ok() {
                continue;
            }
            match self.try_lock(id) {
                Ok(Some(lock)) => {
                    // Checked again under the lock: a writer may have made the record since.
                    if self.record_path(id).symlink_metadata().is_err() {
                        match lock.remove() {
                            Ok(()) => removed += 1,
                            Err(error) => problems.push((entry.path(), error)),
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
        match fs::remove_file(&self.path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
        // `self.file` drops here, releasing the lock.
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
            Err(error) if super::replace::is_held_open(&error) => Ok(()),
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

/// The read file, kept open where that pins its identity (an inode number is not reused
/// while its file is open). Elsewhere the identity is its length and time, which an open
/// handle does not pin, and an open handle would make Windows refuse the rename that
/// replaces the file.
#[cfg(unix)]
fn kept_open(file: File) -> Option<File> {
    Some(file)
}

#[cfg(not(unix))]
fn kept_open(_file: File) -> Option<File> {
    None
}

/// Opens a record file for reading without following a link, and without blocking in
/// `open` should the name be a FIFO (the caller then refuses anything but a regular file).
fn open_no_follow(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    // A write keeps the file it read open until its rename has replaced it: without
    // FILE_SHARE_DELETE, Windows refuses to replace a file that is open (access denied).
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        /// `FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE`.
        const SHARE_ALL: u32 = 0x1 | 0x2 | 0x4;
        options.share_mode(SHARE_ALL);
    }
    options.open(path)
}

#[cfg(unix)]
fn no_follow(options: &mut OpenOptions) {
    use std::os::unix::fs::OpenOptionsExt;
    options.custom_flags(libc::O_NOFOLLOW);
}

#[cfg(not(unix))]
fn no_follow(_options: &mut OpenOptions) {}

fn symlink_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "is a symbolic link; the store never follows links",
    )
}

/// Turns the `ELOOP` of `O_NOFOLLOW` into an error that says what happened.
fn symlink_aware(error: io::Error) -> io::Error {
    #[cfg(unix)]
    if error.raw_os_error() == Some(libc::ELOOP) {
        return symlink_error();
    }
    error
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

#[cfg(unix)]
fn is_same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(held), Ok(now)) => held.dev() == now.dev() && held.ino() == now.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn is_same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}
