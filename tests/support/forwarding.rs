//! A store that forwards every method to another, except where a test hooks in: the one
//! hand-written forwarder the tests share, so a wrapper never falls back to a default method
//! of the trait by mistake.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use syncstatus::{
    CleanupOptions, CleanupReport, DynSyncStorage, ListFilter, Listing, LockGuard, PutMode, Record,
    Result, ScanFn, SharedClock, SyncStorage, UpdateFn, WatchOptions, WatchSelector, WatchStream,
};

/// What a test changes of the store it wraps. Each method gets the inner store; the
/// defaults forward to it.
#[async_trait]
pub trait Hooks: Send + Sync + Debug + 'static {
    /// [`SyncStorage::put`].
    async fn put(
        &self,
        inner: &DynSyncStorage,
        id: &str,
        status: Value,
        mode: PutMode,
    ) -> Result<Record> {
        inner.put(id, status, mode).await
    }

    /// [`SyncStorage::list`].
    async fn list(&self, inner: &DynSyncStorage, filter: &ListFilter) -> Result<Listing> {
        inner.list(filter).await
    }

    /// [`SyncStorage::cleanup`].
    async fn cleanup(
        &self,
        inner: &DynSyncStorage,
        options: &CleanupOptions,
    ) -> Result<CleanupReport> {
        inner.cleanup(options).await
    }
}

/// `inner` with `hooks` in the way of some of its methods.
#[derive(Debug)]
pub struct Hooked<H> {
    pub inner: DynSyncStorage,
    pub hooks: H,
}

impl<H> Hooked<H> {
    pub fn new(inner: DynSyncStorage, hooks: H) -> Self {
        Hooked { inner, hooks }
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<H: Hooks> SyncStorage for Hooked<H> {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
    fn clock(&self) -> SharedClock {
        self.inner.clock()
    }
    fn ttl_for(&self, status: &Value) -> Result<Option<Duration>> {
        self.inner.ttl_for(status)
    }
    async fn get(&self, id: &str) -> Result<Option<Record>> {
        self.inner.get(id).await
    }
    async fn put(&self, id: &str, status: Value, mode: PutMode) -> Result<Record> {
        self.hooks.put(&self.inner, id, status, mode).await
    }
    async fn update(&self, id: &str, f: &mut UpdateFn<'_>) -> Result<Record> {
        self.inner.update(id, f).await
    }
    async fn delete(&self, id: &str) -> Result<bool> {
        self.inner.delete(id).await
    }
    async fn list(&self, filter: &ListFilter) -> Result<Listing> {
        self.hooks.list(&self.inner, filter).await
    }
    async fn scan(&self, filter: &ListFilter, visit: &mut ScanFn<'_>) -> Result<()> {
        self.inner.scan(filter, visit).await
    }
    async fn count_by_state(&self) -> Result<BTreeMap<String, u64>> {
        self.inner.count_by_state().await
    }
    async fn cleanup(&self, options: &CleanupOptions) -> Result<CleanupReport> {
        self.hooks.cleanup(&self.inner, options).await
    }
    async fn watch(&self, selector: WatchSelector, options: WatchOptions) -> Result<WatchStream> {
        self.inner.watch(selector, options).await
    }
    async fn try_lock(&self, name: &str, lease: Duration) -> Result<Option<LockGuard>> {
        self.inner.try_lock(name, lease).await
    }
}
