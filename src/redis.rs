//! Redis backend (feature `redis`). Placeholder until the backend lands: every call is refused.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::record::{Record, SharedClock, SystemClock};
use crate::storage::{
    CleanupOptions, CleanupReport, ListFilter, Listing, LockGuard, PutMode, SyncStorage, UpdateFn,
    WatchOptions, WatchSelector, WatchStream,
};

/// A store on Redis.
#[derive(Debug)]
pub struct RedisStorage {}

impl RedisStorage {
    /// Connects to the server at `url`.
    pub async fn open(url: &str) -> Result<Self> {
        Err(Error::Config(format!(
            "the redis backend is not built yet: {url}"
        )))
    }
}

const NONE: Error = Error::NotSupported {
    store: "redis",
    operation: "anything yet",
};

#[async_trait]
impl SyncStorage for RedisStorage {
    fn backend_name(&self) -> &'static str {
        "redis"
    }
    fn clock(&self) -> SharedClock {
        std::sync::Arc::new(SystemClock)
    }
    async fn get(&self, _id: &str) -> Result<Option<Record>> {
        Err(NONE)
    }
    async fn put(&self, _id: &str, _status: Value, _mode: PutMode) -> Result<Record> {
        Err(NONE)
    }
    async fn update(&self, _id: &str, _f: &mut UpdateFn<'_>) -> Result<Record> {
        Err(NONE)
    }
    async fn delete(&self, _id: &str) -> Result<bool> {
        Err(NONE)
    }
    async fn list(&self, _filter: &ListFilter) -> Result<Listing> {
        Err(NONE)
    }
    async fn cleanup(&self, _options: &CleanupOptions) -> Result<CleanupReport> {
        Err(NONE)
    }
    async fn watch(&self, _selector: WatchSelector, _options: WatchOptions) -> Result<WatchStream> {
        Err(NONE)
    }
    async fn try_lock(&self, _name: &str, _lease: Duration) -> Result<Option<LockGuard>> {
        Err(NONE)
    }
}
