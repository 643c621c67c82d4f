//! The storage trait every backend implements, and the values it speaks in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_core::Stream;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::record::{Record, SharedClock, Timestamp};

/// The default largest record a store writes or reads, in bytes: 1 MiB.
///
/// A status is a small document (a state, progress, a message, a result summary); a record of
/// tens of megabytes is a mistake that costs memory in every reader and watcher it reaches
/// (each SSE client holds a copy). 1 MiB is the item limit memcached uses by default, of the
/// order of etcd's 1.5 MiB request limit, and far above any status this crate's helpers write.
/// Stores take another limit through their builders.
pub const DEFAULT_MAX_RECORD_SIZE: u64 = 1024 * 1024;

/// Refuses a record of `size` bytes when it is over `limit`.
pub(crate) fn check_record_size(id: &str, size: u64, limit: u64) -> Result<()> {
    if size > limit {
        return Err(Error::TooLarge {
            id: id.to_string(),
            size,
            limit,
        });
    }
    Ok(())
}

/// The length of `value` as compact JSON, counted without building the text.
pub(crate) fn json_len(value: &Value) -> u64 {
    struct Counter(u64);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` to a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// How a [`SyncStorage::put`] is conditioned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Write whatever is there. Never fails with a conflict.
    Overwrite,
    /// Write only if no live record exists; otherwise [`Error::AlreadyExists`].
    Create,
    /// Write only if the live record is at exactly this version; otherwise
    /// [`Error::VersionConflict`] (with `found: None` when there is no record).
    Update(u64),
}

/// Which records [`SyncStorage::list`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only records whose status has this `state`.
    pub state: Option<String>,
    /// Only ids starting with this.
    pub prefix: Option<String>,
}

impl ListFilter {
    /// Every record.
    pub fn all() -> Self {
        Self::default()
    }

    /// Records in `state`.
    pub fn state(state: impl Into<String>) -> Self {
        ListFilter {
            state: Some(state.into()),
            prefix: None,
        }
    }

    /// Whether `record` passes this filter.
    pub fn matches(&self, record: &Record) -> bool {
        self.prefix
            .as_deref()
            .is_none_or(|prefix| record.id.starts_with(prefix))
            && self
                .state
                .as_deref()
                .is_none_or(|state| record.state() == Some(state))
    }
}

/// The result of [`SyncStorage::list`]: every good record, and an error for every bad one.
#[derive(Debug, Default)]
pub struct Listing {
    /// The live records that passed the filter, sorted by id.
    pub records: Vec<Record>,
    /// One error per record that could not be read (a corrupt file, say). One bad record
    /// never hides the others.
    pub errors: Vec<Error>,
}

/// Options for [`SyncStorage::cleanup`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupOptions {
    /// Remove records not written for this long, instead of the store's TTL policy.
    pub ttl: Option<Duration>,
    /// Report what would be removed without removing it.
    pub dry_run: bool,
}

/// A problem met during a cleanup, reported instead of stopping it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CleanupProblem {
    /// The id concerned, when known.
    pub id: Option<String>,
    /// What went wrong, with the file or key.
    pub message: String,
}

/// What a cleanup did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// False when another sweep of the same store (another task, process or replica) held the
    /// sweep lock, so this one skipped.
    pub ran: bool,
    /// The ids removed (or that would be, in a dry run), sorted.
    pub removed: Vec<String>,
    /// Live records left in place.
    pub kept: usize,
    /// Leftover staging or lock files removed (file store).
    pub leftovers_removed: usize,
    /// Problems met; the sweep went on past each.
    pub errors: Vec<CleanupProblem>,
}

/// Which ids a watch follows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WatchSelector {
    /// Every id.
    #[default]
    All,
    /// Just these ids.
    Ids(BTreeSet<String>),
    /// Ids starting with this.
    Prefix(String),
}

impl WatchSelector {
    /// Just these ids.
    pub fn ids<I: IntoIterator<Item = S>, S: Into<String>>(ids: I) -> Self {
        WatchSelector::Ids(ids.into_iter().map(Into::into).collect())
    }

    /// Whether `id` is followed.
    pub fn matches(&self, id: &str) -> bool {
        match self {
            WatchSelector::All => true,
            WatchSelector::Ids(ids) => ids.contains(id),
            WatchSelector::Prefix(prefix) => id.starts_with(prefix.as_str()),
        }
    }
}

/// How a watch starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Start with a [`WatchEvent::Resync`] holding every selected record, then changes, with
    /// no gap between them.
    pub snapshot: bool,
    /// Versions the caller already has (from an earlier watch): the stream starts with an
    /// upsert for every selected id whose version differs or that the caller lacks, and a removal
    /// for every id it knows that is gone. Ignored when `snapshot` is set.
    pub resume: Option<HashMap<String, u64>>,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    /// A record was created or written. Intermediate versions may be skipped; the last one
    /// always arrives. Shared: every subscriber of a store gets the same allocation, so a
    /// thousand streams cost one record, not a thousand copies.
    Upsert(Arc<Record>),
    /// A record was deleted or expired.
    Removed {
        /// Its id.
        id: String,
    },
    /// Every selected record as it is now. Sent at the start when asked for, and whenever
    /// continuity was broken (overflow, lag, reconnect): the receiver should replace what it
    /// holds with this. The records are shared with the watch's own state, not copied.
    Resync(Vec<Arc<Record>>),
}

impl WatchEvent {
    /// The id of an upsert or removal.
    pub fn id(&self) -> Option<&str> {
        match self {
            WatchEvent::Upsert(record) => Some(&record.id),
            WatchEvent::Removed { id } => Some(id),
            WatchEvent::Resync(_) => None,
        }
    }
}

/// The stream a watch returns. Errors are reported as items and the stream goes on (a
/// resync follows once the cause is gone); it ends only when the store is gone.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send>>;

/// A held lock; dropping it releases the lock.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard {
    _held: Box<dyn Send + Sync>,
}

impl LockGuard {
    /// Wraps whatever releases the lock when dropped.
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        LockGuard {
            _held: Box::new(held),
        }
    }
}

impl Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockGuard")
    }
}

/// The closure of [`SyncStorage::update`]: given the live record (or `None`), returns the new
/// status. Returning an error aborts the update and returns that error. Backends that update
/// optimistically may call it more than once.
pub type UpdateFn<'a> = dyn FnMut(Option<&Record>) -> Result<Value> + Send + 'a;

/// Where statuses are kept. Async and dyn-compatible: use it as `Arc<dyn SyncStorage>`.
///
/// # Contract
///
/// Every backend keeps these; the conformance suite checks them all.
///
/// - Ids are checked with [`validate_id`](crate::validate_id); a refused id is
///   [`Error::InvalidId`] and touches nothing.
/// - `get` of a missing or expired id is `Ok(None)`, never an error.
/// - `version` starts at 1 and grows by one per write of an id. A record deleted (or expired)
///   and written again starts a new incarnation with a new `created_at`.
/// - A write is all or nothing: a reader sees the old record or the new one, never a torn one.
/// - `update` loses no update under contention from tasks or other processes; `put` with
///   [`PutMode::Update`] or [`PutMode::Create`] fails with a typed conflict when its condition
///   does not hold.
/// - Expiry: a record expires when its TTL (by state, see [`TtlPolicy`](crate::TtlPolicy)) has
///   passed since its last write; an expired record reads as absent. A heartbeat is a write,
///   so a job that heartbeats more often than its TTL never expires.
/// - `cleanup` removes only what is expired at the moment of removal (checked again under the
///   lock), and at most one cleanup of a store runs at a time across processes; others report
///   `ran: false`.
/// - A watch delivers, for every selected id, its final state or its removal. Events may be
///   coalesced, never lost; lost continuity leads to a [`WatchEvent::Resync`].
/// - Corrupt data gives [`Error::Corrupt`] naming the id and where it is stored; `list`
///   returns every good record beside the errors.
#[async_trait]
pub trait SyncStorage: Send + Sync + Debug + 'static {
    /// A short name of the backend, used in errors (`"file"`, `"memory"`, `"redis"`, ...).
    fn backend_name(&self) -> &'static str;

    /// The clock this store judges expiry by. Lifecycle helpers use it for heartbeats.
    fn clock(&self) -> SharedClock;

    /// How long a record with `status` lives after its last write by this store's TTL
    /// policy (`Ok(None)`: it never expires). Helpers use it to refuse promises the store
    /// would not keep, such as an idempotency result kept longer than the store keeps it.
    /// The default answers [`Error::NotSupported`].
    fn ttl_for(&self, status: &Value) -> Result<Option<Duration>> {
        let _ = status;
        Err(Error::NotSupported {
            store: self.backend_name(),
            operation: "telling its TTL policy",
        })
    }

    /// The live record of `id`, or `None` if there is none or it expired.
    async fn get(&self, id: &str) -> Result<Option<Record>>;

    /// Writes `status` as the new record of `id`, as `mode` allows. Returns the written record.
    async fn put(&self, id: &str, status: Value, mode: PutMode) -> Result<Record>;

    /// Read-modify-write of `id` that loses no update. See [`UpdateFn`].
    async fn update(&self, id: &str, f: &mut UpdateFn<'_>) -> Result<Record>;

    /// Removes the record of `id`. Returns whether a live record was removed.
    async fn delete(&self, id: &str) -> Result<bool>;

    /// The live records passing `filter`, sorted by id, and an error per unreadable record.
    async fn list(&self, filter: &ListFilter) -> Result<Listing>;

    /// Calls `visit` with every live record passing `filter`, and with the error of every
    /// unreadable one, in no promised order. Unlike [`SyncStorage::list`], backends that can
    /// hold only a bounded number of records in memory at a time (the file store reads a few
    /// hundred files per step), so a count over a large store costs its time, not its size.
    /// The default lists everything first.
    async fn scan(&self, filter: &ListFilter, visit: &mut ScanFn<'_>) -> Result<()> {
        let listing = self.list(filter).await?;
        for record in listing.records {
            visit(Ok(record));
        }
        for error in listing.errors {
            visit(Err(error));
        }
        Ok(())
    }

    /// Number of live records per state. Records without a `state` are counted under `""`.
    ///
    /// For callers that want the counts alone: PostgreSQL and memory answer it without
    /// moving the records (the default scans them). [`stats`](crate::stats) does not call
    /// it: it scans every record anyway, for stale jobs, ages and unreadable records, and
    /// counts in that same pass, so its counts and its other figures come from one read.
    async fn count_by_state(&self) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        self.scan(&ListFilter::all(), &mut |record| {
            if let Ok(record) = record {
                *counts
                    .entry(record.state().unwrap_or_default().to_string())
                    .or_insert(0) += 1;
            }
        })
        .await?;
        Ok(counts)
    }

    /// Removes expired records (and, for the file store, leftovers of killed writers).
    async fn cleanup(&self, options: &CleanupOptions) -> Result<CleanupReport>;

    /// Follows changes of the selected ids.
    async fn watch(&self, selector: WatchSelector, options: WatchOptions) -> Result<WatchStream>;

    /// Takes the store-wide lock `name` if nobody holds it, across processes and (for server
    /// backends) machines. `lease` bounds how long a holder that dies keeps it, for backends
    /// that cannot notice death themselves. `Ok(None)`: someone else holds it.
    async fn try_lock(&self, name: &str, lease: Duration) -> Result<Option<LockGuard>>;
}

/// The store-wide lock every backend's cleanup takes, so one sweep of a store runs at a time
/// across tasks, processes and machines.
pub(crate) const SWEEP_LOCK: &str = "sweep";

/// What [`SyncStorage::scan`] calls with each record, or with the error of an unreadable one.
pub type ScanFn<'a> = dyn FnMut(Result<Record>) + Send + 'a;

/// A shared, dynamically typed store.
pub type DynSyncStorage = Arc<dyn SyncStorage>;

macro_rules! forward_storage {
    ($ty:ty) => {
        // Every method forwarded, provided ones too: a wrapper that fell back to a default
        // would silently lose the inner store's own behaviour.
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<S: SyncStorage + ?Sized> SyncStorage for $ty {
            fn backend_name(&self) -> &'static str {
                (**self).backend_name()
            }
            fn clock(&self) -> SharedClock {
                (**self).clock()
            }
            fn ttl_for(&self, status: &Value) -> Result<Option<Duration>> {
                (**self).ttl_for(status)
            }
            async fn get(&self, id: &str) -> Result<Option<Record>> {
                (**self).get(id).await
            }
            async fn put(&self, id: &str, status: Value, mode: PutMode) -> Result<Record> {
                (**self).put(id, status, mode).await
            }
            async fn update(&self, id: &str, f: &mut UpdateFn<'_>) -> Result<Record> {
                (**self).update(id, f).await
            }
            async fn delete(&self, id: &str) -> Result<bool> {
                (**self).delete(id).await
            }
            async fn list(&self, filter: &ListFilter) -> Result<Listing> {
                (**self).list(filter).await
            }
            async fn scan(&self, filter: &ListFilter, visit: &mut ScanFn<'_>) -> Result<()> {
                (**self).scan(filter, visit).await
            }
            async fn count_by_state(&self) -> Result<BTreeMap<String, u64>> {
                (**self).count_by_state().await
            }
            async fn cleanup(&self, options: &CleanupOptions) -> Result<CleanupReport> {
                (**self).cleanup(options).await
            }
            async fn watch(
                &self,
                selector: WatchSelector,
                options: WatchOptions,
            ) -> Result<WatchStream> {
                (**self).watch(selector, options).await
            }
            async fn try_lock(&self, name: &str, lease: Duration) -> Result<Option<LockGuard>> {
                (**self).try_lock(name, lease).await
            }
        }
    };
}

forward_storage!(Arc<S>);
forward_storage!(Box<S>);

/// Convenience methods on every store.
#[async_trait]
pub trait SyncStorageExt: SyncStorage {
    /// [`SyncStorage::update`] with a plain closure.
    async fn update_with<F>(&self, id: &str, mut f: F) -> Result<Record>
    where
        F: FnMut(Option<&Record>) -> Result<Value> + Send,
    {
        self.update(id, &mut f).await
    }

    /// Like `get`, but a missing record is [`Error::NotFound`].
    async fn get_required(&self, id: &str) -> Result<Record> {
        self.get(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_string() })
    }

    /// The current time by the store's clock.
    fn now(&self) -> Timestamp {
        self.clock().now()
    }
}

impl<S: SyncStorage + ?Sized> SyncStorageExt for S {}

/// `update` for backends without a lock held across the closure: read, apply, write
/// conditioned on the version read, and retry on conflict.
pub async fn update_optimistically<S: SyncStorage + ?Sized>(
    store: &S,
    id: &str,
    f: &mut UpdateFn<'_>,
) -> Result<Record> {
    loop {
        let current = store.get(id).await?;
        let status = f(current.as_ref())?;
        let mode = current
            .as_ref()
            .map_or(PutMode::Create, |record| PutMode::Update(record.version));
        match store.put(id, status, mode).await {
            Err(error) if error.is_conflict() => {
                tokio::task::yield_now().await;
            }
            other => return other,
        }
    }
}
