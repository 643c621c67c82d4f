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

mod client;
mod lock;
mod scripts;
mod watch;

use client::Conn;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::id::{validate_id, validate_lock_name};
use crate::record::{Record, SharedClock, SystemClock, Timestamp};
use crate::storage::{
    CleanupOptions, CleanupProblem, CleanupReport, ListFilter, Listing, LockGuard, PutMode,
    SyncStorage, UpdateFn, WatchOptions, WatchSelector, WatchStream, update_optimistically,
};
use crate::store_url::redact;
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

/// Builds a [`RedisStorage`].
///
/// ```no_run
/// # async fn example() -> syncstatus::Result<()> {
/// use std::time::Duration;
/// use syncstatus::TtlPolicy;
/// use syncstatus::redis::RedisStorage;
///
/// let store = RedisStorage::builder("redis://127.0.0.1:6379/0")
///     .with_prefix("myapp:jobs:")
///     .with_ttl(TtlPolicy::uniform(Duration::from_secs(3600)).with_state("failed", None))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStorageBuilder {
    source: client::Source,
    connection: Option<ConnectionManager>,
    prefix: Option<String>,
    ttl: TtlPolicy,
    clock: SharedClock,
    max_record_size: u64,
}

impl fmt::Debug for RedisStorageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            client::Source::Url { url, tls_ca } => format!("{} (CA {tls_ca:?})", redact(url)),
            client::Source::Client(client) => format!("{:?}", client.get_connection_info().addr()),
        };
        f.debug_struct("RedisStorageBuilder")
            .field("source", &source)
            .field("connection", &self.connection.as_ref().map(|_| "given"))
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("clock", &self.clock)
            .field("max_record_size", &self.max_record_size)
            .finish()
    }
}

impl RedisStorageBuilder {
    /// The largest status, as JSON, a write sends (default:
    /// [`DEFAULT_MAX_RECORD_SIZE`](crate::DEFAULT_MAX_RECORD_SIZE)); larger writes fail with
    /// [`Error::TooLarge`] before reaching the server.
    pub fn with_max_record_size(mut self, bytes: u64) -> Self {
        self.max_record_size = bytes;
        self
    }

    /// The prefix of every key of the store (default: the URL's `?prefix=`, else
    /// [`DEFAULT_PREFIX`]). Stores with the same prefix on the same database share records.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// Trusts the certificates of this PEM file for a `rediss://` URL instead of the
    /// platform's roots. A server whose certificate they do not sign, or whose certificate
    /// does not name the URL's host, is refused with an error that says so.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn with_tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        if let client::Source::Url { tls_ca, .. } = &mut self.source {
            *tls_ca = Some(path.into());
        }
        self
    }

    /// Uses the application's own connection manager for commands instead of opening one.
    /// It must talk to the same server and database as the client the builder was made
    /// with; the watch still opens a connection of its own from that client. Not for a
    /// cluster URL ([`build`](Self::build) refuses it).
    pub fn with_connection_manager(mut self, connection: ConnectionManager) -> Self {
        self.connection = Some(connection);
        self
    }

    /// The TTL policy (default: 5 minutes after the last write, every state). It sets both
    /// Redis's own key expiry and the expiry judged on read.
    pub fn with_ttl(mut self, ttl: TtlPolicy) -> Self {
        self.ttl = ttl;
        self
    }

    /// The clock expiry is judged by on read (default: the system clock). Tests pass a
    /// [`ManualClock`](crate::ManualClock).
    ///
    /// On Redis 7 and later the key's own expiry is set at the expiry time by this clock
    /// (`PXAT`), so that writers can judge it from the key alone: a clock that lags the
    /// server's by more than a TTL makes Redis drop the records it writes at once.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Connects. Fails with [`Error::Config`] for a bad URL (an unknown or repeated parameter
    /// too) or prefix and with
    /// [`Error::Backend`] when the server cannot be reached.
    pub async fn build(self) -> Result<RedisStorage> {
        let (target, url_prefix, shown) = client::Target::of(&self.source)?;
        let prefix = self
            .prefix
            .or(url_prefix)
            .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        if prefix.chars().any(char::is_control) {
            return Err(Error::Config(format!(
                "redis key prefix {prefix:?} contains control characters"
            )));
        }
        let keys = Keys::new(prefix, target.is_cluster())?;
        let watch_clients = client::WatchClients::new(target.nodes(), &shown)?;
        let timeouts = client::Timeouts {
            connection: CONNECTION_TIMEOUT,
            response: RESPONSE_TIMEOUT,
        };
        let conn = match self.connection {
            Some(_) if target.is_cluster() => {
                return Err(Error::Config(format!(
                    "a connection manager talks to one server, and `{shown}` is a cluster"
                )));
            }
            Some(conn) => Conn::Single(conn),
            None => target.connect(timeouts).await.map_err(|error| {
                let error = command_error("connect to", &shown)(error);
                #[cfg(feature = "redis-tls")]
                let error = crate::tls::clarify(error, &format!("Redis at {shown}"));
                error
            })?,
        };
        Ok(RedisStorage {
            inner: Arc::new(Inner {
                conn,
                watch_clients,
                watch_name: keys.watch_connection_name(),
                keys,
                ttl: self.ttl,
                clock: self.clock,
                max_record_size: self.max_record_size,
                hub: SharedHub::default(),
            }),
        })
    }
}

/// The names of a store's keys.
#[derive(Debug)]
struct Keys {
    /// The prefix the store was given.
    prefix: String,
    /// What every key starts with: the prefix, on a cluster within a hash tag.
    key_prefix: String,
    index: String,
    channel: String,
}

impl Keys {
    fn new(prefix: String, cluster: bool) -> Result<Self> {
        let key_prefix = if cluster {
            slot_prefix(&prefix)?
        } else {
            prefix.clone()
        };
        Ok(Keys {
            index: format!("{key_prefix}.ids"),
            channel: format!("{key_prefix}.events"),
            key_prefix,
            prefix,
        })
    }

    fn record(&self, id: &str) -> String {
        format!("{}{id}", self.key_prefix)
    }

    fn lock(&self, name: &str) -> String {
        format!("{}.lock:{name}", self.key_prefix)
    }

    /// `CLIENT SETNAME` allows only printable ASCII without spaces.
    fn watch_connection_name(&self) -> String {
        format!("syncstatus-watch:{}", self.prefix)
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .collect()
    }
}

/// The start of the keys of a store on a cluster: the scripts touch a record and the index in
/// one call, and a cluster runs a script only on keys of one slot. Redis hashes only the part
/// of a key within its first `{...}`, so every key that starts with the returned text hashes
/// alike: `prefix` itself when it holds a non-empty hash tag, else `{prefix}`.
fn slot_prefix(prefix: &str) -> Result<String> {
    if let Some(open) = prefix.find('{')
        && let Some(len) = prefix[open + 1..].find('}')
        && len > 0
    {
        return Ok(prefix.to_string());
    }
    if prefix.is_empty() {
        return Err(Error::Config(
            "a store on a Redis Cluster needs a key prefix: it becomes the hash tag that keeps \
             the store's keys in one slot"
                .into(),
        ));
    }
    Ok(format!("{{{prefix}}}"))
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
    /// A builder for a store on the server at `url` (`redis://host:port/db`, optionally
    /// `?prefix=...`).
    pub fn builder(url: impl Into<String>) -> RedisStorageBuilder {
        RedisStorageBuilder {
            source: client::Source::Url {
                url: url.into(),
                tls_ca: None,
            },
            connection: None,
            prefix: None,
            ttl: TtlPolicy::default(),
            clock: Arc::new(SystemClock),
            max_record_size: crate::storage::DEFAULT_MAX_RECORD_SIZE,
        }
    }

    /// A builder for a store on the application's own client (for example one built with
    /// its own TLS settings). The key prefix is [`DEFAULT_PREFIX`] unless
    /// [`with_prefix`](RedisStorageBuilder::with_prefix) says otherwise.
    pub fn builder_from_client(client: redis::Client) -> RedisStorageBuilder {
        RedisStorageBuilder {
            source: client::Source::Client(client),
            connection: None,
            prefix: None,
            ttl: TtlPolicy::default(),
            clock: Arc::new(SystemClock),
            max_record_size: crate::storage::DEFAULT_MAX_RECORD_SIZE,
        }
    }

    /// Connects to the server at `url` with the default settings, e.g.
    /// `redis://127.0.0.1:6379/0?prefix=myapp:`.
    pub async fn open(url: &str) -> Result<Self> {
        Self::builder(url).build().await
    }

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

    /// Parses a stored value of `id`.
    fn decode(&self, id: &str, bytes: &[u8]) -> Result<Record> {
        let corrupt = |source: Box<dyn std::error::Error + Send + Sync>| Error::Corrupt {
            id: id.to_string(),
            location: crate::Location::RedisKey(self.inner.keys.record(id)),
            source,
        };
        let mut record: Record = serde_json::from_slice(bytes).map_err(|e| corrupt(Box::new(e)))?;
        // Values written before `expires_at` was stored expire by the policy, as Redis does
        // them (PX and the index score were set from it).
        if record.expires_at.is_none() {
            record.expires_at = self.inner.ttl.expires_at(&record.status, record.updated_at);
        }
        if record.id != id {
            return Err(corrupt(
                format!("the record names another id, `{}`", record.id).into(),
            ));
        }
        Ok(record)
    }

    /// The record in `bytes` unless it expired by the store's clock.
    fn live(&self, id: &str, bytes: Option<&[u8]>, now: Timestamp) -> Result<Option<Record>> {
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let record = self.decode(id, bytes)?;
        Ok((!self.inner.ttl.is_expired(&record, now)).then_some(record))
    }

    /// The live records of `ids`, in that order, as a result per id.
    async fn read_many(&self, ids: &[String]) -> Result<Vec<(String, Result<Option<Record>>)>> {
        let mut out = Vec::with_capacity(ids.len());
        let mut conn = self.conn();
        for chunk in ids.chunks(BATCH) {
            let keys: Vec<String> = chunk.iter().map(|id| self.inner.keys.record(id)).collect();
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(command_error("MGET", &keys[0]))?;
            let now = self.inner.clock.now();
            for (id, value) in chunk.iter().zip(values) {
                out.push((id.clone(), self.live(id, value.as_deref(), now)));
            }
        }
        Ok(out)
    }

    /// Every id in the index (including ids of records Redis has expired since), sorted.
    async fn indexed_ids(&self) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let index = &self.inner.keys.index;
        let mut ids = BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("ZSCAN")
                .arg(index)
                .arg(cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn)
                .await
                .map_err(command_error("ZSCAN", index))?;
            // The page alternates members and scores.
            for id in page.into_iter().step_by(2) {
                if validate_id(&id).is_ok() {
                    ids.insert(id);
                } else {
                    tracing::debug!(index = %index, id = %id.escape_debug(), "ignoring a foreign index entry");
                }
            }
            if next == 0 {
                return Ok(ids.into_iter().collect());
            }
            cursor = next;
        }
    }

    /// Every live record and an error per unreadable one.
    async fn scan(&self) -> Result<(Vec<Record>, Vec<Error>)> {
        let ids = self.indexed_ids().await?;
        let mut records = Vec::new();
        let mut errors = Vec::new();
        for (_, result) in self.read_many(&ids).await? {
            match result {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(error) => errors.push(error),
            }
        }
        Ok((records, errors))
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

impl RedisStorage {
    /// The work of a cleanup, under the sweep lock.
    async fn sweep(&self, options: &CleanupOptions) -> Result<CleanupReport> {
        let mut report = CleanupReport {
            ran: true,
            ..CleanupReport::default()
        };
        let ids = self.indexed_ids().await?;
        let mut conn = self.conn();
        for chunk in ids.chunks(BATCH) {
            let keys: Vec<String> = chunk.iter().map(|id| self.inner.keys.record(id)).collect();
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(command_error("MGET", &keys[0]))?;
            let now = self.inner.clock.now();
            for ((id, key), value) in chunk.iter().zip(&keys).zip(values) {
                let expected = match &value {
                    // Redis expired it already; only its index entry is left.
                    None => Vec::new(),
                    Some(bytes) => match self.decode(id, bytes) {
                        Err(error) => {
                            report.errors.push(CleanupProblem {
                                id: Some(id.clone()),
                                message: error.to_string(),
                            });
                            continue;
                        }
                        Ok(record) => {
                            if !self.inner.ttl.is_expired_with(&record, now, options.ttl) {
                                report.kept += 1;
                                continue;
                            }
                            if options.dry_run {
                                report.removed.push(id.clone());
                                continue;
                            }
                            bytes.clone()
                        }
                    },
                };
                if options.dry_run {
                    continue;
                }
                let removed: Result<i64, _> = scripts::REMOVE_IF_UNCHANGED
                    .key(key)
                    .key(&self.inner.keys.index)
                    .arg(id)
                    .arg(&expected)
                    .arg(&self.inner.keys.channel)
                    .invoke_async(&mut conn)
                    .await;
                match removed {
                    Ok(1) if expected.is_empty() => report.leftovers_removed += 1,
                    Ok(1) => report.removed.push(id.clone()),
                    // Written again since it was read: live, so kept.
                    Ok(_) if !expected.is_empty() => report.kept += 1,
                    Ok(_) => {}
                    Err(source) => report.errors.push(CleanupProblem {
                        id: Some(id.clone()),
                        message: CommandError {
                            command: "cleanup script on",
                            key: key.clone(),
                            source,
                        }
                        .to_string(),
                    }),
                }
            }
        }
        report.removed.sort();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_connection_names_are_valid() {
        let keys = Keys::new("my app:\tjobs:".to_string(), false).unwrap();
        assert_eq!(
            keys.watch_connection_name(),
            "syncstatus-watch:my_app:_jobs:"
        );
    }

    #[test]
    fn keys_of_a_cluster_store_share_one_hash_tag() {
        let plain = Keys::new("app:".into(), false).unwrap();
        assert_eq!(plain.record("job"), "app:job");
        let keys = Keys::new("app:".into(), true).unwrap();
        assert_eq!(
            (keys.record("job"), keys.index.as_str(), keys.lock("sweep")),
            (
                "{app:}job".to_string(),
                "{app:}.ids",
                "{app:}.lock:sweep".to_string()
            )
        );
        // A prefix with a tag of its own is kept as it is.
        let tagged = Keys::new("app:{jobs}:".into(), true).unwrap();
        assert_eq!(tagged.record("job"), "app:{jobs}:job");
        // An empty or unclosed tag in the prefix would let the id choose the slot.
        for prefix in ["a{}b:", "a{b:"] {
            let keys = Keys::new(prefix.into(), true).unwrap();
            assert_eq!(keys.record("x"), format!("{{{prefix}}}x"), "{prefix}");
        }
        assert!(matches!(
            Keys::new(String::new(), true),
            Err(Error::Config(_))
        ));
    }
}
