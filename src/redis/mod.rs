//! A store on Redis (feature `redis`): one JSON string per id, written by Lua scripts.
//!
//! ```text
//! <prefix><id>            the record, the same JSON envelope as a file store's file
//!                         (`redis-cli GET 'syncstatus:job-1'`), with Redis's own expiry
//! <prefix>.ids            sorted set of the ids (on Redis 7 and later written only when an
//!                         id is new, scored `+inf`; before, scored by expiry time in ms)
//! <prefix>.lock:<name>    store-wide locks (`SET NX PX` with a unique token)
//! <prefix>.events         pub/sub channel: `<id> <version>` per write (`0`: removed)
//! ```
//!
//! Ids never start with `.`, so the store's own keys cannot collide with a record.
//!
//! On a Redis Cluster (`redis+cluster://`, feature `redis-cluster`) every key starts with
//! [`RedisStorage::key_prefix`], the prefix within a hash tag (`{syncstatus:}job-1`), so that a
//! store's keys share one slot: a script may touch only keys of one slot. The watch subscribes
//! on any node, since a classic `PUBLISH` reaches every node.
//!
//! Watching needs Redis 6 or later: the watch connection speaks RESP3, so that it can name
//! itself (`CLIENT SETNAME syncstatus-watch:<prefix>`) and learn at once when it is cut.
//!
//! Every write (put, delete, cleanup removal) runs in one Lua script that checks its condition,
//! writes, keeps the index and publishes, so compare-and-set happens inside Redis and watchers
//! on any machine see every write. Expiry is twofold: Redis expires keys by itself (set on
//! every write from the TTL policy of the written state: `PXAT` at the expiry time by the
//! store's clock on Redis 7 and later, `PX` before), and every read judges expiry by the
//! store's clock, so an injected clock is obeyed. Stores that share a prefix should share
//! their TTL policy: writers judge an older record's expiry by the expiry time recorded when
//! it was written (the key's `PEXPIRETIME`; before Redis 7, the index score).

mod builder;
mod client;
mod keys;
mod lock;
mod read;
mod scripts;
mod sweep;
mod watch;

pub use builder::RedisStorageBuilder;

use client::Conn;
use keys::Keys;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::id::{validate_id, validate_lock_name};
use crate::record::{Record, SharedClock, Timestamp};
use crate::storage::{
    CleanupOptions, CleanupReport, ListFilter, Listing, LockGuard, PutMode, SyncStorage, UpdateFn,
    WatchOptions, WatchSelector, WatchStream, update_optimistically,
};
use crate::ttl::TtlPolicy;
use crate::watch::SharedHub;

/// The key prefix used when none is given.
pub const DEFAULT_PREFIX: &str = "syncstatus:";

const STORE: &str = "redis";
use crate::storage::SWEEP_LOCK;
/// How long a cleanup's sweep lock outlives a process that died while sweeping.
const SWEEP_LEASE: Duration = Duration::from_secs(60);
/// Keys per `MGET` and ids per `ZSCAN` step: large enough to save round trips, small enough
/// not to block the server for long.
const BATCH: usize = 500;
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// A failed Redis command, naming the command and the key.
#[derive(Debug, thiserror::Error)]
#[error("{command} `{key}`: {source}")]
pub(crate) struct CommandError {
    command: &'static str,
    key: String,
    #[source]
    source: redis::RedisError,
}

fn command_error(command: &'static str, key: &str) -> impl FnOnce(redis::RedisError) -> Error {
    let key = key.to_string();
    move |source| {
        Error::backend(
            STORE,
            CommandError {
                command,
                key,
                source,
            },
        )
    }
}

/// A store on Redis, shared by every process and machine that opens the same prefix.
///
/// Cloning gives another handle on the same store (sharing its connection and watcher).
/// See the [module docs](self) for the layout in Redis.
///
/// `update` is optimistic: it reads, runs the closure and writes conditioned on the version it
/// read, retrying on conflict, so the closure may run more than once. A lost connection gives
/// [`Error::Backend`] naming the command and key; the store reconnects by itself on later
/// calls.
#[derive(Clone)]
pub struct RedisStorage {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    watch_clients: client::WatchClients,
    watch_name: String,
    keys: Keys,
    ttl: TtlPolicy,
    clock: SharedClock,
    max_record_size: u64,
    hub: SharedHub,
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage")
            .field("prefix", &self.inner.keys.prefix)
            .field("ttl", &self.inner.ttl)
            .field("clock", &self.inner.clock)
            .field("hub", &self.inner.hub)
            .finish_non_exhaustive()
    }
}

impl RedisStorage {
    /// The prefix of every key of this store.
    pub fn prefix(&self) -> &str {
        &self.inner.keys.prefix
    }

    /// What every key of this store starts with: [`prefix`](Self::prefix), on a cluster
    /// within a hash tag (`{myapp:jobs:}job-1`) unless the prefix holds one.
    pub fn key_prefix(&self) -> &str {
        &self.inner.keys.key_prefix
    }

    /// The key that holds the record of `id`.
    pub fn key_of(&self, id: &str) -> Result<String> {
        validate_id(id)?;
        Ok(self.inner.keys.record(id))
    }

    /// The name the watch connection gives itself (`CLIENT SETNAME`), to find it in
    /// `CLIENT LIST`.
    pub fn watch_connection_name(&self) -> &str {
        &self.inner.watch_name
    }

    fn conn(&self) -> Conn {
        self.inner.conn.clone()
    }
}

#[async_trait]
impl SyncStorage for RedisStorage {
    fn backend_name(&self) -> &'static str {
        STORE
    }

    fn clock(&self) -> SharedClock {
        self.inner.clock.clone()
    }

    fn ttl_for(&self, status: &serde_json::Value) -> Result<Option<std::time::Duration>> {
        Ok(self.inner.ttl.ttl_for(status))
    }

    async fn get(&self, id: &str) -> Result<Option<Record>> {
        validate_id(id)?;
        let key = self.inner.keys.record(id);
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.conn())
            .await
            .map_err(command_error("GET", &key))?;
        self.live(id, value.as_deref(), self.inner.clock.now())
    }

    async fn put(&self, id: &str, status: Value, mode: PutMode) -> Result<Record> {
        validate_id(id)?;
        let key = self.inner.keys.record(id);
        let status_json = serde_json::to_string(&status).map_err(|source| Error::Serde {
            id: id.to_string(),
            source,
        })?;
        crate::storage::check_record_size(
            id,
            status_json.len() as u64,
            self.inner.max_record_size,
        )?;
        let now = self.inner.clock.now();
        let now_text = now.to_string();
        let ttl = self.inner.ttl.ttl_for(&status);
        // PX must be positive; a zero TTL expires by the clock at once anyway.
        let px = ttl.map_or_else(String::new, |ttl| ttl.as_millis().max(1).to_string());
        let expires_at = ttl.map(|ttl| now.saturating_add(ttl));
        let score = expires_at.map_or_else(|| "+inf".to_string(), |at| at.as_millis().to_string());
        let expires_json = expires_at.map_or_else(|| "null".to_string(), |at| format!("\"{at}\""));
        let (mode_arg, expected) = match mode {
            PutMode::Overwrite => ("o", 0),
            PutMode::Create => ("c", 0),
            PutMode::Update(expected) => ("u", expected),
        };
        let (kind, number, text): (String, i64, String) = scripts::PUT
            .key(&key)
            .key(&self.inner.keys.index)
            .arg(id)
            .arg(&status_json)
            .arg(&now_text)
            .arg(now.as_millis())
            .arg(mode_arg)
            .arg(expected)
            .arg(px)
            .arg(score)
            .arg(&self.inner.keys.channel)
            .arg(&expires_json)
            .invoke_async(&mut self.conn())
            .await
            .map_err(command_error("write script on", &key))?;
        let corrupt = |source: Box<dyn std::error::Error + Send + Sync>| Error::Corrupt {
            id: id.to_string(),
            location: crate::Location::RedisKey(key.clone()),
            source,
        };
        let found = u64::try_from(number).ok();
        match kind.as_str() {
            "ok" => {
                let created_at: Timestamp =
                    serde_json::from_str(&text).map_err(|e| corrupt(Box::new(e)))?;
                Ok(Record {
                    id: id.to_string(),
                    version: found.unwrap_or_default(),
                    created_at,
                    updated_at: now,
                    expires_at,
                    status,
                })
            }
            "exists" => Err(Error::AlreadyExists {
                id: id.to_string(),
                version: found.unwrap_or_default(),
            }),
            "conflict" => Err(Error::VersionConflict {
                id: id.to_string(),
                expected,
                found,
            }),
            "exhausted" => Err(Error::VersionExhausted {
                id: id.to_string(),
                version: text.parse().unwrap_or(scripts::MAX_VERSION),
            }),
            "corrupt" => Err(corrupt(text.into())),
            other => Err(Error::backend(
                STORE,
                format!("unexpected reply `{other}` from the write script on `{key}`"),
            )),
        }
    }

    async fn update(&self, id: &str, f: &mut UpdateFn<'_>) -> Result<Record> {
        validate_id(id)?;
        update_optimistically(self, id, f).await
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        validate_id(id)?;
        let key = self.inner.keys.record(id);
        let removed: i64 = scripts::DELETE
            .key(&key)
            .key(&self.inner.keys.index)
            .arg(id)
            .arg(self.inner.clock.now().as_millis())
            .arg(&self.inner.keys.channel)
            .invoke_async(&mut self.conn())
            .await
            .map_err(command_error("delete script on", &key))?;
        Ok(removed == 1)
    }

    async fn list(&self, filter: &ListFilter) -> Result<Listing> {
        let mut ids = self.indexed_ids().await?;
        if let Some(prefix) = &filter.prefix {
            ids.retain(|id| id.starts_with(prefix.as_str()));
        }
        let mut listing = Listing::default();
        for (_, result) in self.read_many(&ids).await? {
            match result {
                Ok(Some(record)) if filter.matches(&record) => listing.records.push(record),
                Ok(_) => {}
                Err(error) => listing.errors.push(error),
            }
        }
        Ok(listing)
    }

    async fn cleanup(&self, options: &CleanupOptions) -> Result<CleanupReport> {
        let key = self.inner.keys.lock(SWEEP_LOCK);
        let Some(sweep) = lock::try_lock(self.conn(), key, SWEEP_LEASE).await? else {
            return Ok(CleanupReport::default());
        };
        let result = self.sweep(options).await;
        // Released before returning, so that a cleanup right after this one runs.
        sweep.release().await;
        result
    }

    async fn watch(&self, selector: WatchSelector, options: WatchOptions) -> Result<WatchStream> {
        let handle = self
            .inner
            .hub
            .get_or_start(|| watch::start(self.clone()))
            .await?;
        Ok(SharedHub::subscribe(handle, selector, options))
    }

    async fn try_lock(&self, name: &str, lease: Duration) -> Result<Option<LockGuard>> {
        validate_lock_name(name)?;
        let key = self.inner.keys.lock(name);
        lock::try_lock_guard(self.conn(), key, lease).await
    }
}
