//! An in-process store: for tests and for embedding where nothing must outlive the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::Result;
use crate::id::{validate_id, validate_lock_name};
use crate::record::{Record, SharedClock, SystemClock};
use crate::storage::{
    CleanupOptions, CleanupReport, DEFAULT_MAX_RECORD_SIZE, ListFilter, Listing, LockGuard,
    PutMode, SyncStorage, UpdateFn, WatchOptions, WatchSelector, WatchStream, check_record_size,
    json_len,
};
use crate::ttl::TtlPolicy;
use crate::watch::{Backoff, ChangeSource, Reads, Scan, Settings, SharedHub};
use crate::write::{self, IdLocks, Live};

/// Keeps records in memory. Cloning gives another handle on the same records.
#[derive(Clone, Debug)]
pub struct MemoryStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Shared with the watch hub, which publishes the record a write made instead of a copy.
    records: Mutex<HashMap<String, Arc<Record>>>,
    locks: IdLocks,
    ttl: TtlPolicy,
    clock: SharedClock,
    max_record_size: AtomicU64,
    hub: SharedHub,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStorage {
    /// An empty store with the default TTL policy and the system clock.
    pub fn new() -> Self {
        Self::with_options(TtlPolicy::default(), Arc::new(SystemClock))
    }

    /// An empty store with this TTL policy and clock.
    pub fn with_options(ttl: TtlPolicy, clock: SharedClock) -> Self {
        MemoryStorage {
            inner: Arc::new(Inner {
                records: Mutex::new(HashMap::new()),
                locks: IdLocks::default(),
                ttl,
                clock,
                max_record_size: AtomicU64::new(DEFAULT_MAX_RECORD_SIZE),
                hub: SharedHub::default(),
            }),
        }
    }

    /// The largest status, as compact JSON, this store accepts (default:
    /// [`DEFAULT_MAX_RECORD_SIZE`]); larger writes fail with [`Error::TooLarge`](crate::Error::TooLarge).
    pub fn with_max_record_size(self, bytes: u64) -> Self {
        self.inner.max_record_size.store(bytes, Ordering::Relaxed);
        self
    }

    fn records(&self) -> MutexGuard<'_, HashMap<String, Arc<Record>>> {
        // Every mutation is one insert or remove, so a poisoned map is still consistent.
        self.inner
            .records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn live<'a>(
        &self,
        records: &'a HashMap<String, Arc<Record>>,
        id: &str,
    ) -> Option<&'a Arc<Record>> {
        let now = self.inner.clock.now();
        records
            .get(id)
            .filter(|record| !self.inner.ttl.is_expired(record, now))
    }

    /// Publishes the state of `id` to watchers; called with the records lock held so that
    /// watchers see writes in the order they happened. The store's writes are its change
    /// feed, so the reconciler reads nothing for them: it is handed the record's expiry,
    /// the one thing it needs (to publish the removal when that time comes), and is woken
    /// only if that is sooner than it would look anyway.
    fn publish(&self, records: &HashMap<String, Arc<Record>>, id: &str) {
        if let Some(handle) = self.inner.hub.running() {
            let current = self.live(records, id).cloned();
            if let Some(at) = current.as_ref().and_then(|record| record.expires_at) {
                handle.changes.expires(id, at);
            }
            // A removal, or a record that never expires, needs no look: an expiry tracked
            // for an older version only makes the reconciler read the id once, finding it
            // as the hub already has it.
            handle.hub.apply_local_shared(id, current);
        }
    }

    fn write_locked(
        &self,
        records: &mut HashMap<String, Arc<Record>>,
        id: &str,
        status: Value,
        mode: PutMode,
    ) -> Result<Record> {
        let live = self.live(records, id).map(|record| Live::of(record));
        write::check_mode(id, mode, live.map(|live| live.version))?;
        check_record_size(
            id,
            json_len(&status),
            self.inner.max_record_size.load(Ordering::Relaxed),
        )?;
        let record = write::next_record(id, live, status, &self.inner.ttl, self.inner.clock.now())?;
        let shared = Arc::new(record);
        records.insert(id.to_string(), shared.clone());
        self.publish(records, id);
        Ok(Arc::unwrap_or_clone(shared))
    }

    fn id_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner.locks.of(id)
    }
}

#[async_trait]
impl SyncStorage for MemoryStorage {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    fn ttl_for(&self, status: &serde_json::Value) -> Result<Option<std::time::Duration>> {
        Ok(self.inner.ttl.ttl_for(status))
    }

    async fn get(&self, id: &str) -> Result<Option<Record>> {
        validate_id(id)?;
        let records = self.records();
        Ok(self.live(&records, id).map(|record| Record::clone(record)))
    }

    async fn put(&self, id: &str, status: Value, mode: PutMode) -> Result<Record> {
        validate_id(id)?;
        let mut records = self.records();
        self.write_locked(&mut records, id, status, mode)
    }

    async fn update(&self, id: &str, f: &mut UpdateFn<'_>) -> Result<Record> {
        validate_id(id)?;
        // The closure runs outside the records lock (it may be slow), so `put` and `delete`
        // can land while it runs. The write goes through only if the record is still what the
        // closure saw; otherwise the closure runs again on what is there now. The per-id lock
        // keeps updates of one id from making each other retry.
        let lock = self.id_lock(id);
        let _held = lock.lock().await;
        loop {
            let current = self.get(id).await?;
            let status = f(current.as_ref())?;
            {
                let mut records = self.records();
                if self.live(&records, id).map(|record| &**record) == current.as_ref() {
                    return self.write_locked(&mut records, id, status, PutMode::Overwrite);
                }
            }
            tokio::task::yield_now().await;
        }
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        validate_id(id)?;
        let mut records = self.records();
        let was_live = self.live(&records, id).is_some();
        records.remove(id);
        self.publish(&records, id);
        Ok(was_live)
    }

    async fn list(&self, filter: &ListFilter) -> Result<Listing> {
        let records = self.records();
        let now = self.inner.clock.now();
        let mut found: Vec<Record> = records
            .values()
            .filter(|record| !self.inner.ttl.is_expired(record, now) && filter.matches(record))
            .map(|record| Record::clone(record))
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Listing {
            records: found,
            errors: Vec::new(),
        })
    }

    async fn count_by_state(&self) -> Result<BTreeMap<String, u64>> {
        let records = self.records();
        let now = self.inner.clock.now();
        let mut counts = BTreeMap::new();
        for record in records.values() {
            if !self.inner.ttl.is_expired(record, now) {
                *counts
                    .entry(record.state().unwrap_or_default().to_string())
                    .or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    async fn cleanup(&self, options: &CleanupOptions) -> Result<CleanupReport> {
        let Some(_sweep) = self
            .try_lock(crate::storage::SWEEP_LOCK, Duration::from_secs(60))
            .await?
        else {
            return Ok(CleanupReport::default());
        };
        let mut records = self.records();
        let now = self.inner.clock.now();
        let mut report = CleanupReport {
            ran: true,
            ..CleanupReport::default()
        };
        let expired: Vec<String> = records
            .values()
            .filter(|record| self.inner.ttl.is_expired_with(record, now, options.ttl))
            .map(|record| record.id.clone())
            .collect();
        report.kept = records.len() - expired.len();
        for id in expired {
            if !options.dry_run {
                records.remove(&id);
                self.publish(&records, &id);
            }
            report.removed.push(id);
        }
        report.removed.sort();
        Ok(report)
    }

    async fn watch(&self, selector: WatchSelector, options: WatchOptions) -> Result<WatchStream> {
        // Seeded under the records lock, and every write publishes under that lock, so the
        // hub misses nothing written after the seed.
        let records = self.records();
        let handle = self.inner.hub.get_or_start_sync(|| {
            let now = self.inner.clock.now();
            let seed = records
                .values()
                .filter(|record| !self.inner.ttl.is_expired(record, now))
                .map(|record| Record::clone(record))
                .collect();
            let settings = Settings {
                clock: self.inner.clock.clone(),
                // Reading memory cannot fail; nothing is ever retried.
                backoff: Backoff::fixed(Duration::from_secs(1)),
                scan_after_loss: false,
            };
            let source = MemorySource(Arc::downgrade(&self.inner));
            let changes = Arc::default();
            Ok(crate::watch::start_seeded(
                source, changes, settings, seed, true,
            ))
        })?;
        drop(records);
        Ok(SharedHub::subscribe(handle, selector, options))
    }

    async fn try_lock(&self, name: &str, _lease: Duration) -> Result<Option<LockGuard>> {
        validate_lock_name(name)?;
        let lock = self.id_lock(&format!("\0lock:{name}"));
        Ok(lock.try_lock_owned().ok().map(LockGuard::new))
    }
}

/// The memory store's side of the reconciler. It has no feed but its own writes, which
/// publish directly; the reconciler reads through it when a record's expiry time comes.
struct MemorySource(Weak<Inner>);

impl MemorySource {
    fn live(
        &self,
        mut select: impl FnMut(&HashMap<String, Arc<Record>>) -> Vec<Record>,
    ) -> Vec<Record> {
        let Some(inner) = self.0.upgrade() else {
            return Vec::new();
        };
        let records = inner
            .records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = inner.clock.now();
        select(&records)
            .into_iter()
            .filter(|record| !inner.ttl.is_expired(record, now))
            .collect()
    }
}

#[async_trait]
impl ChangeSource for MemorySource {
    async fn connect(&mut self) -> Result<bool> {
        Ok(true)
    }

    fn disconnect(&mut self) {}

    async fn read(&mut self, ids: Vec<String>) -> Result<Reads> {
        let mut live: HashMap<String, Record> = self
            .live(|records| {
                ids.iter()
                    .filter_map(|id| records.get(id).map(|record| Record::clone(record)))
                    .collect()
            })
            .into_iter()
            .map(|record| (record.id.clone(), record))
            .collect();
        Ok(ids
            .into_iter()
            .map(|id| {
                let current = live.remove(&id);
                (id, Ok(current))
            })
            .collect())
    }

    async fn scan(&mut self) -> Result<Scan> {
        Ok((
            self.live(|records| {
                records
                    .values()
                    .map(|record| Record::clone(record))
                    .collect()
            }),
            Vec::new(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::storage::SyncStorageExt;
    use serde_json::json;

    /// No store API makes a record at `u64::MAX`; placed by hand, it cannot be written again.
    #[tokio::test]
    async fn a_record_at_the_highest_version_is_not_written_again() {
        let store = MemoryStorage::new();
        let mut record = store
            .put("top", json!({"n": 0}), PutMode::Overwrite)
            .await
            .unwrap();
        record.version = u64::MAX;
        store
            .records()
            .insert("top".into(), Arc::new(record.clone()));
        let exhausted = |result: Result<Record>| matches!(result, Err(Error::VersionExhausted { ref id, version: u64::MAX }) if id == "top");
        assert!(exhausted(
            store.put("top", json!({}), PutMode::Overwrite).await
        ));
        assert!(exhausted(
            store.put("top", json!({}), PutMode::Update(u64::MAX)).await
        ));
        assert!(exhausted(store.update_with("top", |_| Ok(json!({}))).await));
        assert_eq!(store.get("top").await.unwrap(), Some(record));
    }

    /// The watch learns a write's expiry from the write itself (the reconciler reads
    /// nothing for it), and still reports the removal when the store's clock reaches it.
    #[tokio::test(start_paused = true)]
    async fn a_watched_write_with_a_ttl_is_removed_when_it_expires() {
        use futures_util::StreamExt;
        let start = crate::Timestamp::from_millis(1_000_000);
        let clock = crate::ManualClock::new(start);
        let store = MemoryStorage::with_options(
            TtlPolicy::uniform(Duration::from_secs(10)),
            Arc::new(clock.clone()),
        );
        let mut stream = store
            .watch(WatchSelector::All, WatchOptions::default())
            .await
            .unwrap();
        let written = store
            .put("job", json!({"state": "running"}), PutMode::Overwrite)
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
        let Ok(Some(Ok(crate::WatchEvent::Upsert(seen)))) = first else {
            panic!("no upsert: {first:?}");
        };
        assert_eq!(*seen, written);
        // The stream is the hub's; the record it carries is the store's own, not a copy.
        assert!(Arc::ptr_eq(&seen, &store.records()["job"]));
        clock.set(start.saturating_add(Duration::from_secs(10)));
        let removed = tokio::time::timeout(
            crate::watch::EXPIRY_LOOK + Duration::from_millis(1),
            stream.next(),
        )
        .await;
        assert!(
            matches!(removed, Ok(Some(Ok(crate::WatchEvent::Removed { ref id }))) if id == "job"),
            "{removed:?}"
        );
    }

    #[tokio::test]
    async fn the_size_limit_is_configurable() {
        let store = MemoryStorage::new().with_max_record_size(16);
        let error = store
            .put("s", json!({"pad": "0123456789"}), PutMode::Overwrite)
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::TooLarge { ref id, size: 20, limit: 16 } if id == "s"),
            "{error:?}"
        );
        store
            .put("s", json!({"n": 1}), PutMode::Overwrite)
            .await
            .unwrap();
    }
}
