//! The embedded store: one JSON file per id in a directory.
//!
//! ```text
//! <dir>/<id>.json          the records, pretty-printed (see the crate docs for the format)
//! <dir>/.tmp/              staging files of writes in progress
//! <dir>/.locks/<id>.lock   per-id sidecar locks (std `File::lock`), valid across processes
//! ```

mod disk;
mod replace;
mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

pub use disk::Durability;
use disk::Layout;
pub use watch::WatchMode;

use crate::error::{Error, Result};
use crate::id::validate_id;
use crate::record::{Record, SharedClock, SystemClock, Timestamp};
use crate::storage::{
    CleanupOptions, CleanupProblem, CleanupReport, ListFilter, Listing, LockGuard, PutMode,
    SyncStorage, UpdateFn, WatchOptions, WatchSelector, WatchStream,
};
use crate::ttl::TtlPolicy;
use crate::watch::SharedHub;

/// The default pause between two lazy sweeps.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The name of the store-wide lock cleanups take.
const SWEEP_LOCK: &str = "sweep";

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
    sweep_interval: Option<Duration>,
    watch_mode: WatchMode,
}

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
        self
    }

    /// How often writes and listings sweep expired records on the side (default: every
    /// minute; `None`: never, leaving cleanup to [`SyncStorage::cleanup`] or a sweeper).
    pub fn with_lazy_sweep(mut self, interval: Option<Duration>) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// How watches learn about changes (default: file system events).
    pub fn with_watch_mode(mut self, mode: WatchMode) -> Self {
        self.watch_mode = mode;
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
        let layout = Layout::new(self.dir);
        layout.create_dirs()?;
        Ok(FileStorage {
            inner: Arc::new(Inner {
                layout,
                ttl: self.ttl,
                durability: self.durability,
                clock: self.clock,
                sweep_interval: self.sweep_interval,
                last_sweep: Mutex::new(None),
                id_locks: Mutex::new(HashMap::new()),
                watch_mode: self.watch_mode,
                hub: SharedHub::default(),
            }),
        })
    }
}

/// One `<id>.json` per id in a directory; safe across tasks and processes.
///
/// Cloning gives another handle on the same store (sharing its watcher).
#[derive(Debug, Clone)]
pub struct FileStorage {
    inner: Arc<Inner>,
}

type IdLocks = HashMap<String, Arc<tokio::sync::Mutex<()>>>;

#[derive(Debug)]
struct Inner {
    layout: Layout,
    ttl: TtlPolicy,
    durability: Durability,
    clock: SharedClock,
    sweep_interval: Option<Duration>,
    last_sweep: Mutex<Option<Timestamp>>,
    id_locks: Mutex<IdLocks>,
    watch_mode: WatchMode,
    hub: SharedHub,
}

impl FileStorage {
    /// A builder for a store in `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> FileStorageBuilder {
        FileStorageBuilder {
            dir: dir.into(),
            ttl: TtlPolicy::default(),
            durability: Durability::default(),
            clock: Arc::new(SystemClock),
            sweep_interval: Some(DEFAULT_SWEEP_INTERVAL),
            watch_mode: WatchMode::default(),
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
        let mut locks = self
            .inner
            .id_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if locks.len() > 1024 {
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        locks.entry(id.to_string()).or_default().clone()
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
    /// here, between two blocking steps that both hold the file lock.
    async fn write_locked(&self, id: &str, decide: &mut UpdateFn<'_>) -> Result<Record> {
        validate_id(id)?;
        let lock = self.id_lock(id);
        let held = lock.lock().await;
        let id_owned = id.to_string();
        let (file_lock, current) = self
            .blocking(move |inner| {
                let file_lock = inner.layout.lock(&id_owned)?;
                let current = inner.read_live(&id_owned)?;
                Ok((file_lock, current))
            })
            .await?;
        let status = decide(current.as_ref())?;
        let record = next_record(id, current.as_ref(), status, self.inner.clock.now());
        let written = record.clone();
        self.blocking(move |inner| {
            inner.layout.write(&written, inner.durability)?;
            drop(file_lock);
            Ok(())
        })
        .await?;
        self.after_write(record, held).await
    }

    /// A conditional or unconditional put: lock, read, check, write and unlock in one
    /// blocking step, as nothing of the caller's runs in between.
    async fn put_locked(&self, id: &str, status: Value, mode: PutMode) -> Result<Record> {
        validate_id(id)?;
        let lock = self.id_lock(id);
        let held = lock.lock().await;
        let id_owned = id.to_string();
        let record = self
            .blocking(move |inner| {
                let file_lock = inner.layout.lock(&id_owned)?;
                let current = match inner.read_live(&id_owned) {
                    // An unconditional write needs nothing of the old file, so it replaces
                    // one that holds no record of this id (corrupt, a link, a special file).
                    Err(error)
                        if mode == PutMode::Overwrite && disk::is_unusable_record_file(&error) =>
                    {
                        None
                    }
                    other => other?,
                };
                check_mode(&id_owned, mode, current.as_ref())?;
                let record = next_record(&id_owned, current.as_ref(), status, inner.clock.now());
                inner.layout.write(&record, inner.durability)?;
                drop(file_lock);
                Ok(record)
            })
            .await?;
        self.after_write(record, held).await
    }

    /// Publishes a written record, releases the in-process lock and sweeps if it is time.
    async fn after_write(
        &self,
        record: Record,
        held: tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<Record> {
        if let Some(handle) = self.inner.hub.running() {
            handle.hub.apply_local(&record.id, Some(record.clone()));
        }
        drop(held);
        self.maybe_lazy_sweep().await;
        Ok(record)
    }

    /// Runs a cleanup if the lazy-sweep interval has passed since the last one.
    async fn maybe_lazy_sweep(&self) {
        let Some(interval) = self.inner.sweep_interval else {
            return;
        };
        let now = self.inner.clock.now();
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
        // Other processes on the directory (a CLI call, a cron job, the previous run of a
        // server) leave the time of their last sweep behind; short-lived processes would
        // otherwise each scan the whole directory on their first write.
        let marker = self.inner.layout.locks.join(SWEEP_MARKER);
        let shared = self
            .blocking(move |_| Ok(read_sweep_marker(&marker)))
            .await
            .ok()
            .flatten();
        if let Some(at) = shared
            && at <= now
            && at.saturating_add(interval) > now
        {
            *self
                .inner
                .last_sweep
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(at);
            return;
        }
        match self.cleanup(&CleanupOptions::default()).await {
            Ok(report) => {
                if !report.removed.is_empty() || !report.errors.is_empty() {
                    tracing::debug!(
                        dir = %self.dir().display(),
                        removed = report.removed.len(),
                        problems = report.errors.len(),
                        "lazy sweep"
                    );
                }
                if report.ran {
                    let marker = self.inner.layout.locks.join(SWEEP_MARKER);
                    let written = self
                        .blocking(move |_| {
                            std::fs::write(&marker, now.as_millis().to_string())
                                .map_err(|e| Error::io(marker, e))
                        })
                        .await;
                    if let Err(error) = written {
                        tracing::debug!(%error, "could not record the lazy sweep");
                    }
                }
            }
            Err(error) => tracing::warn!(dir = %self.dir().display(), %error, "lazy sweep failed"),
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

/// The record that follows `current` with `status`, written at `now`.
fn next_record(id: &str, current: Option<&Record>, status: Value, now: Timestamp) -> Record {
    Record {
        id: id.to_string(),
        version: current.map_or(1, |r| r.version + 1),
        created_at: current.map_or(now, |r| r.created_at),
        updated_at: now,
        status,
    }
}

/// Whether a put in `mode` may replace `current`.
fn check_mode(id: &str, mode: PutMode, current: Option<&Record>) -> Result<()> {
    match (mode, current) {
        (PutMode::Create, Some(existing)) => Err(Error::AlreadyExists {
            id: id.to_string(),
            version: existing.version,
        }),
        (PutMode::Update(expected), found) if found.map(|r| r.version) != Some(expected) => {
            Err(Error::VersionConflict {
                id: id.to_string(),
                expected,
                found: found.map(|r| r.version),
            })
        }
        _ => Ok(()),
    }
}

impl Inner {
    /// The record of `id` unless it is missing or expired.
    fn read_live(&self, id: &str) -> Result<Option<Record>> {
        let now = self.clock.now();
        Ok(self
            .layout
            .read(id)?
            .filter(|record| !self.ttl.is_expired(record, now)))
    }

    fn cleanup(
        &self,
        options: &CleanupOptions,
        id_locks: &Mutex<IdLocks>,
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
        for id in self.layout.ids()? {
            let now = self.clock.now();
            let expired = match self.layout.read(&id) {
                Ok(Some(record)) => self.ttl.is_expired_with(&record, now, options.ttl),
                Ok(None) => continue,
                Err(error) => {
                    report.errors.push(CleanupProblem {
                        id: Some(id.clone()),
                        message: error.to_string(),
                    });
                    continue;
                }
            };
            if !expired {
                report.kept += 1;
                continue;
            }
            if options.dry_run {
                report.removed.push(id);
                continue;
            }
            match self.remove_if_expired(&id, options, id_locks) {
                Ok(true) => report.removed.push(id),
                Ok(false) => report.kept += 1,
                Err(error) => report.errors.push(CleanupProblem {
                    id: Some(id.clone()),
                    message: error.to_string(),
                }),
            }
        }
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

    /// Removes `id` if it is still expired once its locks are held. A record that is being
    /// written right now is fresh by definition, so a busy in-process lock means keep it.
    fn remove_if_expired(
        &self,
        id: &str,
        options: &CleanupOptions,
        id_locks: &Mutex<IdLocks>,
    ) -> Result<bool> {
        let lock = id_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        let Ok(_in_process) = lock.try_lock() else {
            return Ok(false);
        };
        let file_lock = self.layout.lock(id)?;
        let still_expired = self.layout.read(id)?.is_some_and(|record| {
            self.ttl
                .is_expired_with(&record, self.clock.now(), options.ttl)
        });
        if !still_expired {
            return Ok(false);
        }
        self.layout.remove(id, self.durability)?;
        file_lock
            .remove()
            .map_err(|e| Error::io(self.layout.locks.join(format!("{id}.lock")), e))?;
        Ok(true)
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

    async fn get(&self, id: &str) -> Result<Option<Record>> {
        validate_id(id)?;
        let id = id.to_string();
        self.blocking(move |inner| inner.read_live(&id)).await
    }

    async fn put(&self, id: &str, status: Value, mode: PutMode) -> Result<Record> {
        self.put_locked(id, status, mode).await
    }

    async fn update(&self, id: &str, f: &mut UpdateFn<'_>) -> Result<Record> {
        self.write_locked(id, f).await
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        validate_id(id)?;
        let lock = self.id_lock(id);
        let _held = lock.lock().await;
        let id_owned = id.to_string();
        let removed = self
            .blocking(move |inner| {
                let file_lock = inner.layout.lock(&id_owned)?;
                let was_live = inner.read_live(&id_owned).ok().flatten().is_some();
                inner.layout.remove(&id_owned, inner.durability)?;
                file_lock.remove().map_err(|e| {
                    Error::io(inner.layout.locks.join(format!("{id_owned}.lock")), e)
                })?;
                Ok(was_live)
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
                            if !inner.ttl.is_expired(&record, now) && filter.matches(&record) {
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
        self.maybe_lazy_sweep().await;
        Ok(listing)
    }

    async fn cleanup(&self, options: &CleanupOptions) -> Result<CleanupReport> {
        let dry_run = options.dry_run;
        let options = options.clone();
        let this = self.clone();
        let report = self
            .blocking(move |inner| inner.cleanup(&options, &this.inner.id_locks))
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
        validate_id(name)?;
        let name = format!("@{name}");
        let lock = self
            .blocking(move |inner| inner.layout.try_lock(&name))
            .await?;
        Ok(lock.map(LockGuard::new))
    }
}
