//! The embedded store: one JSON file per id in a directory.
//!
//! ```text
//! <dir>/<id>.json          the records, pretty-printed (see the crate docs for the format)
//! <dir>/.tmp/              staging files of writes in progress
//! <dir>/.locks/<id>.lock   per-id sidecar locks (std `File::lock`), valid across processes
//! ```

mod cleanup;
mod disk;
mod format;
mod inline_read;
#[cfg(target_os = "linux")]
mod inotify_feed;
mod replace;
mod sweep;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;

pub use disk::Durability;
use disk::Layout;
use format::Head;
use inline_read::InlineReads;
use sweep::LazySweep;
pub use watch::WatchMode;

use crate::error::{Error, Result};
use crate::id::{validate_id, validate_lock_name};
use crate::record::{Record, SharedClock, SystemClock, Timestamp};
use crate::storage::{
    CleanupOptions, CleanupReport, ListFilter, Listing, LockGuard, PutMode, ScanFn, SyncStorage,
    UpdateFn, WatchOptions, WatchSelector, WatchStream,
};
use crate::ttl::TtlPolicy;
use crate::watch::SharedHub;
use crate::write::{self, IdLocks, Live};

/// How many records [`SyncStorage::scan`] reads per step.
const SCAN_CHUNK: usize = 256;

/// The default pause between two lazy sweeps.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Builds a [`FileStorage`].
///
/// ```
/// # fn main() -> syncstatus::Result<()> {
/// use std::time::Duration;
/// use syncstatus::{Durability, FileStorage, TtlPolicy};
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = FileStorage::builder(dir.path())
///     .with_ttl(TtlPolicy::uniform(Duration::from_secs(600)).with_state("failed", None))
///     .with_durability(Durability::Fsync)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FileStorageBuilder {
    dir: PathBuf,
    ttl: TtlPolicy,
    durability: Durability,
    clock: SharedClock,
    wall_clock: bool,
    sweep_interval: Option<Duration>,
    watch_mode: WatchMode,
    create_dir: bool,
    lock_timeout: Duration,
    max_record_size: u64,
}

/// How long a write waits by default for the lock of its id held by another task or process.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

impl FileStorageBuilder {
    /// The TTL policy (default: 5 minutes after the last write, every state).
    pub fn with_ttl(mut self, ttl: TtlPolicy) -> Self {
        self.ttl = ttl;
        self
    }

    /// How hard writes try to reach the disk (default: [`Durability::Rename`]).
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The clock expiry is judged by (default: the system clock). Tests pass a
    /// [`ManualClock`](crate::ManualClock).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self.wall_clock = false;
        self
    }

    /// How often writes and listings sweep expired records on the side (default: every
    /// minute; `None`: never, leaving cleanup to [`SyncStorage::cleanup`] or a sweeper).
    pub fn with_lazy_sweep(mut self, interval: Option<Duration>) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// How long a write (`put`, `update`, `delete`) waits for the lock of its id while another
    /// task or process holds it, before failing with [`Error::LockTimeout`] (default:
    /// [`DEFAULT_LOCK_TIMEOUT`]). A holder that froze would otherwise block its id forever.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The largest record file written or read, in bytes (default:
    /// [`DEFAULT_MAX_RECORD_SIZE`](crate::DEFAULT_MAX_RECORD_SIZE)). Larger writes fail with
    /// [`Error::TooLarge`], and larger files are refused without being read.
    pub fn with_max_record_size(mut self, bytes: u64) -> Self {
        self.max_record_size = bytes;
        self
    }

    /// How watches learn about changes (default: file system events).
    pub fn with_watch_mode(mut self, mode: WatchMode) -> Self {
        self.watch_mode = mode;
        self
    }

    /// Whether [`build`](Self::build) creates the directory when it is missing (default:
    /// yes). Tools that only read pass `false`, so a mistyped path fails with
    /// [`Error::Io`] (`NotFound`) instead of leaving an empty store behind.
    pub fn with_create_dir(mut self, create: bool) -> Self {
        self.create_dir = create;
        self
    }

    /// Creates the directory (and its `.tmp` and `.locks`) if needed and opens the store.
    pub fn build(self) -> Result<FileStorage> {
        if let WatchMode::Poll(interval) = self.watch_mode
            && interval.is_zero()
        {
            return Err(Error::Config(
                "the polling interval must not be zero".into(),
            ));
        }
        check_store_dir(&self.dir, self.create_dir)?;
        let layout = Layout::new(
            self.dir,
            self.max_record_size,
            self.lock_timeout,
            self.ttl.clone(),
        );
        if self.create_dir {
            layout.create_dirs()?;
        } else {
            layout.check_private_dirs()?;
        }
        Ok(FileStorage {
            lazy_sweep: Arc::new(LazySweep::default()),
            inner: Arc::new(Inner {
                layout,
                ttl: self.ttl,
                durability: self.durability,
                clock: self.clock,
                wall_clock: self.wall_clock,
                sweep_interval: self.sweep_interval,
                last_sweep: Mutex::new(None),
                id_locks: IdLocks::default(),
                watch_mode: self.watch_mode,
                hub: SharedHub::default(),
                inline_reads: InlineReads::default(),
            }),
        })
    }
}

/// Refuses a store path that is not a directory (creating it would fail with a bare "File
/// exists"), and a missing one unless it may be created.
fn check_store_dir(dir: &Path, create: bool) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "the store path is not a directory",
            ),
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && create => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(Error::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the store directory does not exist",
            ),
        )),
        Err(error) => Err(Error::io(dir, error)),
    }
}

/// One `<id>.json` per id in a directory; safe across tasks and processes.
///
/// Cloning gives another handle on the same store (sharing its watcher).
#[derive(Debug, Clone)]
pub struct FileStorage {
    inner: Arc<Inner>,
    /// Shared by the clones of this handle, and stopped when the last is dropped.
    lazy_sweep: Arc<LazySweep>,
}

#[derive(Debug)]
struct Inner {
    layout: Layout,
    ttl: TtlPolicy,
    durability: Durability,
    clock: SharedClock,
    /// Whether `clock` is the wall clock, so that file times can be compared with it.
    wall_clock: bool,
    sweep_interval: Option<Duration>,
    last_sweep: Mutex<Option<Timestamp>>,
    id_locks: IdLocks,
    watch_mode: WatchMode,
    hub: SharedHub,
    inline_reads: InlineReads,
}

impl FileStorage {
    /// A builder for a store in `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> FileStorageBuilder {
        FileStorageBuilder {
            dir: dir.into(),
            ttl: TtlPolicy::default(),
            durability: Durability::default(),
            clock: Arc::new(SystemClock),
            wall_clock: true,
            sweep_interval: Some(DEFAULT_SWEEP_INTERVAL),
            watch_mode: WatchMode::default(),
            create_dir: true,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            max_record_size: crate::storage::DEFAULT_MAX_RECORD_SIZE,
        }
    }

    /// Opens (creating if needed) a store in `dir` with the default settings.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        Self::builder(dir).build()
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.layout.dir
    }

    /// Whether a watch of this store is running (some stream is alive). For tests that
    /// check dropping the last stream stops the watcher.
    #[doc(hidden)]
    pub fn watch_is_running(&self) -> bool {
        self.inner.hub.running().is_some()
    }

    /// The file that holds the record of `id`.
    pub fn path_of(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        Ok(self.inner.layout.record_path(id))
    }

    /// The in-process lock of `id`, taken before the cross-process file lock so that tasks
    /// of this process queue here instead of each holding a blocking thread on the file lock.
    fn id_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner.id_locks.of(id)
    }

    /// Runs `f`, which blocks on the file system, off the async worker threads.
    ///
    /// On a multi-threaded runtime this is `block_in_place`: the worker hands its other tasks
    /// to a fresh worker and becomes a blocking thread while `f` runs, so the caller does not
    /// wait for another thread to be scheduled (a hand-off to the blocking pool costs more
    /// than a small file read, tens to hundreds of microseconds on a busy machine). On a
    /// current-thread runtime, where that is impossible, `f` goes to the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|handle| {
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        if multi_thread {
            return tokio::task::block_in_place(move || f(&inner));
        }
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(result) => result,
            Err(join_error) => match join_error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(cancelled) => Err(Error::backend("file", cancelled)),
            },
        }
    }

    /// Read-modify-write under the id's in-process and file locks; `decide` sees the live
    /// record and returns the new status. The closure may borrow from the caller, so it runs
    /// here, between two blocking steps that both hold the file lock. Should the lock file be
    /// removed meanwhile (see [`disk::Commit::LockLost`]), it all starts over.
    async fn write_locked(&self, id: &str, decide: &mut UpdateFn<'_>) -> Result<Record> {
        validate_id(id)?;
        let started = Instant::now();
        let lock = self.id_lock(id);
        let held = lock.lock().await;
        loop {
            let id_owned = id.to_string();
            let (file_lock, current, read) = self
                .blocking(move |inner| {
                    let file_lock = inner.lock(&id_owned, started)?;
                    let (current, read) = inner.read_live_with_id(&id_owned)?;
                    Ok((file_lock, current, read))
                })
                .await?;
            let status = decide(current.as_ref())?;
            let head = current.as_ref().map(Head::of);
            let record = self.inner.next_record(id, head, status)?;
            // The record goes to the blocking step and comes back: no copy of its status.
            let (commit, record) = self
                .blocking(move |inner| {
                    let commit = inner
                        .layout
                        .write(&record, inner.durability, &file_lock, read)?;
                    drop(file_lock);
                    Ok((commit, record))
                })
                .await?;
            if let disk::Commit::Done = commit {
                return self.after_write(record, held).await;
            }
        }
    }

    /// A conditional or unconditional put: lock, read, check, write and unlock in one
    /// blocking step, as nothing of the caller's runs in between.
    async fn put_locked(&self, id: &str, status: Value, mode: PutMode) -> Result<Record> {
        validate_id(id)?;
        let started = Instant::now();
        let lock = self.id_lock(id);
        let held = lock.lock().await;
        let id_owned = id.to_string();
        let record = self
            .blocking(move |inner| {
                // Moved into the record, and back out should the write have to start over:
                // a deep copy of a large status costs as much as parsing it.
                let mut status = status;
                loop {
                    let file_lock = inner.lock(&id_owned, started)?;
                    // Only the head of the old record: its status, possibly megabytes, is
                    // replaced unread.
                    let (current, read) = match inner.read_live_head(&id_owned) {
                        // An unconditional write needs nothing of the old file, so it replaces
                        // one that holds no record of this id (corrupt, a link, a special file).
                        Err(error)
                            if mode == PutMode::Overwrite
                                && disk::is_unusable_record_file(&error) =>
                        {
                            let path = inner.layout.record_path(&id_owned);
                            (
                                None,
                                disk::ReadFile::at(&path).map_err(|e| Error::io(path, e))?,
                            )
                        }
                        other => other?,
                    };
                    write::check_mode(&id_owned, mode, current.map(|head| head.version))?;
                    let record = inner.next_record(&id_owned, current, status)?;
                    let commit = inner
                        .layout
                        .write(&record, inner.durability, &file_lock, read)?;
                    drop(file_lock);
                    if let disk::Commit::Done = commit {
                        return Ok(record);
                    }
                    status = record.status;
                }
            })
            .await?;
        self.after_write(record, held).await
    }

    /// Publishes a written record, releases the in-process lock and starts a lazy sweep if
    /// it is time.
    async fn after_write(
        &self,
        record: Record,
        held: tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<Record> {
        if let Some(handle) = self.inner.hub.running() {
            handle.hub.apply_local(&record.id, Some(record.clone()));
        }
        drop(held);
        self.maybe_lazy_sweep();
        Ok(record)
    }
}

impl Inner {
    /// The record of `id` unless it is missing or expired.
    fn read_live(&self, id: &str) -> Result<Option<Record>> {
        Ok(self.read_live_with_id(id)?.0)
    }

    /// [`Inner::read_live`], and which file was read (also for an expired record).
    fn read_live_with_id(&self, id: &str) -> Result<(Option<Record>, Option<disk::ReadFile>)> {
        let now = self.clock.now();
        let (record, file) = self.layout.read_with_id(id)?;
        Ok((record.filter(|record| !record.is_expired_at(now)), file))
    }

    /// The head of the live record of `id`, and which file was read (also for an expired
    /// record).
    fn read_live_head(&self, id: &str) -> Result<(Option<Head>, Option<disk::ReadFile>)> {
        let now = self.clock.now();
        let (head, file) = self.layout.read_head_with_id(id)?;
        Ok((head.filter(|head| !head.is_expired(now, None)), file))
    }

    /// The record that follows the live record `current` (its head) with `status`, written
    /// now and expiring as the policy says.
    fn next_record(&self, id: &str, current: Option<Head>, status: Value) -> Result<Record> {
        let live = current.map(|head| Live {
            version: head.version,
            created_at: head.created_at,
        });
        write::next_record(id, live, status, &self.ttl, self.clock.now())
    }

    /// The file lock of `id` for a write that started at `started`, waited for at most the
    /// store's lock timeout.
    fn lock(&self, id: &str, started: Instant) -> Result<disk::FileLock> {
        self.layout.lock(id, started, self.layout.lock_timeout)
    }
}

#[async_trait]
impl SyncStorage for FileStorage {
    fn backend_name(&self) -> &'static str {
        "file"
    }

    fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    fn ttl_for(&self, status: &serde_json::Value) -> Result<Option<std::time::Duration>> {
        Ok(self.inner.ttl.ttl_for(status))
    }

    async fn get(&self, id: &str) -> Result<Option<Record>> {
        validate_id(id)?;
        self.get_live(id).await
    }

    async fn put(&self, id: &str, status: Value, mode: PutMode) -> Result<Record> {
        self.put_locked(id, status, mode).await
    }

    async fn update(&self, id: &str, f: &mut UpdateFn<'_>) -> Result<Record> {
        self.write_locked(id, f).await
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        validate_id(id)?;
        let started = Instant::now();
        let lock = self.id_lock(id);
        let _held = lock.lock().await;
        let id_owned = id.to_string();
        let removed = self
            .blocking(move |inner| {
                loop {
                    let file_lock = inner.lock(&id_owned, started)?;
                    let (was_live, read) = match inner.read_live_with_id(&id_owned) {
                        Ok((record, read)) => (record.is_some(), read),
                        // A file that holds no record is removed all the same.
                        Err(_) => {
                            let path = inner.layout.record_path(&id_owned);
                            (
                                false,
                                disk::ReadFile::at(&path).map_err(|e| Error::io(path, e))?,
                            )
                        }
                    };
                    match inner.layout.remove_locked(
                        &id_owned,
                        inner.durability,
                        &file_lock,
                        read,
                    )? {
                        Ok(_) => {}
                        Err(_) => continue,
                    }
                    file_lock.remove().map_err(|e| {
                        Error::io(inner.layout.locks.join(format!("{id_owned}.lock")), e)
                    })?;
                    return Ok(was_live);
                }
            })
            .await?;
        if let Some(handle) = self.inner.hub.running() {
            handle.hub.apply_local(id, None);
        }
        Ok(removed)
    }

    async fn list(&self, filter: &ListFilter) -> Result<Listing> {
        let filter = filter.clone();
        let listing = self
            .blocking(move |inner| {
                let now = inner.clock.now();
                let mut listing = Listing::default();
                for id in inner.layout.ids()? {
                    if filter.prefix.as_deref().is_some_and(|p| !id.starts_with(p)) {
                        continue;
                    }
                    match inner.layout.read(&id) {
                        Ok(Some(record)) => {
                            if !record.is_expired_at(now) && filter.matches(&record) {
                                listing.records.push(record);
                            }
                        }
                        Ok(None) => {}
                        Err(error) => listing.errors.push(error),
                    }
                }
                Ok(listing)
            })
            .await?;
        self.maybe_lazy_sweep();
        Ok(listing)
    }

    async fn scan(&self, filter: &ListFilter, visit: &mut ScanFn<'_>) -> Result<()> {
        let mut ids = self.blocking(|inner| inner.layout.ids()).await?;
        if let Some(prefix) = &filter.prefix {
            ids.retain(|id| id.starts_with(prefix.as_str()));
        }
        // A few hundred files per trip off the async threads: few trips, little memory.
        for chunk in ids.chunks(SCAN_CHUNK) {
            let chunk = chunk.to_vec();
            let filter = filter.clone();
            let found = self
                .blocking(move |inner| {
                    let now = inner.clock.now();
                    let mut found = Vec::with_capacity(chunk.len());
                    for id in &chunk {
                        match inner.layout.read(id) {
                            Ok(Some(record)) => {
                                if !record.is_expired_at(now) && filter.matches(&record) {
                                    found.push(Ok(record));
                                }
                            }
                            Ok(None) => {}
                            Err(error) => found.push(Err(error)),
                        }
                    }
                    Ok(found)
                })
                .await?;
            for record in found {
                visit(record);
            }
        }
        Ok(())
    }

    async fn cleanup(&self, options: &CleanupOptions) -> Result<CleanupReport> {
        let dry_run = options.dry_run;
        let options = options.clone();
        let report = self
            .blocking(move |inner| inner.cleanup(&options, &AtomicBool::new(false)))
            .await?;
        if report.ran
            && !dry_run
            && let Some(handle) = self.inner.hub.running()
        {
            for id in &report.removed {
                handle.hub.apply_local(id, None);
            }
        }
        Ok(report)
    }

    async fn watch(&self, selector: WatchSelector, options: WatchOptions) -> Result<WatchStream> {
        let this = self.clone();
        let handle = self.inner.hub.get_or_start(|| watch::start(this)).await?;
        Ok(SharedHub::subscribe(handle, selector, options))
    }

    async fn try_lock(&self, name: &str, _lease: Duration) -> Result<Option<LockGuard>> {
        validate_lock_name(name)?;
        let name = format!("@{name}");
        let lock = self
            .blocking(move |inner| inner.layout.try_lock(&name))
            .await?;
        Ok(lock.map(LockGuard::new))
    }
}
