//! The PostgreSQL store (feature `postgres`): one row per id in one table.
//!
//! ```text
//! "<schema>"."<table>" (
//!     id          text COLLATE "C" PRIMARY KEY,   -- byte order, like every other backend
//!     version     bigint NOT NULL,
//!     created_at  bigint NOT NULL,                -- milliseconds since the Unix epoch
//!     updated_at  bigint NOT NULL,
//!     expires_at  bigint,                         -- NULL: never expires
//!     status      jsonb NOT NULL,
//!     state       text GENERATED ALWAYS AS (status ->> 'state') STORED   -- strings only
//! )
//! "<schema>"."<table>_listeners" (pid integer PRIMARY KEY, since bigint)  -- live watchers
//! ```
//!
//! - The tables and the index for listing by state, `(state, id)`, are created on first use,
//!   under an advisory lock so that replicas starting at once do not collide. `expires_at` is
//!   deliberately not indexed: every write changes it, and an indexed column that changes
//!   makes every update a non-HOT one (new entries in every index; 16 concurrent writers ran at
//!   0.65–0.74x of a raw upsert with that index, 0.77x without, see BENCHMARKS.md). Reads
//!   judge expiry on the row they fetch; cleanups find expired rows by a scan in bounded
//!   batches, which for a table of job statuses is cheap and rare.
//! - Every write is one statement: a versioned upsert (or compare-and-set update) that also
//!   sends `pg_notify` on the table's channel, so a watcher hears exactly the committed
//!   writes. PostgreSQL serializes the commits of all transactions that notify, so writes
//!   notify only while a watcher is registered in `<table>_listeners`; a starting watcher
//!   registers, then waits for the writes in flight before its first scan.
//! - Expiry is judged by the store's clock, passed to every statement (never the server's
//!   `now()`). `expires_at` is computed by the writer's [`TtlPolicy`] when it writes.
//! - Watches `LISTEN` on a dedicated connection whose `application_name` is
//!   `syncstatus-watch:<schema>.<table>` (cut to 63 bytes), and re-read the rows they hear of.
//! - [`SyncStorage::try_lock`] is a session-level advisory lock on a connection held by the
//!   guard; the server releases it if the holder dies, so the lease is not needed.
//!
//! This file holds the store and its trait impl. Beside it: `builder.rs` (settings and
//! assembly), `connect.rs` (the pool, connection errors), `migrate.rs` (tables on first use),
//! `sql.rs` (the statements), `row.rs` (row decoding), `lock.rs` (advisory locks), `tls.rs`
//! and `watch.rs` (the `LISTEN` change feed).

mod builder;
mod connect;
mod lock;
mod migrate;
mod row;
mod sql;
mod tls;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use serde_json::Value;
use tokio_postgres::types::Json;

use crate::error::{Error, Result};
use crate::id::{validate_id, validate_lock_name};
use crate::record::{Record, SharedClock, Timestamp};
use crate::storage::{
    CleanupOptions, CleanupProblem, CleanupReport, ListFilter, Listing, LockGuard, PutMode,
    SWEEP_LOCK, SyncStorage, UpdateFn, WatchOptions, WatchSelector, WatchStream,
    update_optimistically,
};
use crate::ttl::TtlPolicy;
use crate::watch::SharedHub;

pub use builder::{
    DEFAULT_POOL_SIZE, DEFAULT_SCHEMA, DEFAULT_TABLE, DEFAULT_WATCH_LEASE, PostgresStorageBuilder,
};
use sql::Statements;

const STORE: &str = "postgres";
/// How often a conditional write whose failure cannot be explained (the row changed again
/// between the write and the look at it) is tried again before reporting the conflict.
const CONFLICT_RECHECKS: usize = 16;

/// Runs a statement (prepared once per connection) and returns its rows.
async fn query(
    client: &Object,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>> {
    let statement = client.prepare_cached(sql).await.map_err(backend_error)?;
    client
        .query(&statement, params)
        .await
        .map_err(backend_error)
}

/// Runs a statement (prepared once per connection) that returns at most one row.
async fn query_opt(
    client: &Object,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<tokio_postgres::Row>> {
    let statement = client.prepare_cached(sql).await.map_err(backend_error)?;
    client
        .query_opt(&statement, params)
        .await
        .map_err(backend_error)
}

pub(crate) fn backend_error(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::backend(STORE, source)
}

fn millis(at: Timestamp) -> i64 {
    i64::try_from(at.as_millis()).unwrap_or(i64::MAX)
}

fn duration_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Keeps records in a PostgreSQL table; safe across tasks, processes and machines.
///
/// Cloning gives another handle on the same store (sharing its pool and watcher).
#[derive(Clone, Debug)]
pub struct PostgresStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    /// The server as errors name it: `PostgreSQL at host:port/db as user`, no password.
    target: String,
    /// The pool's settings with the listener's `application_name`.
    listener_config: tokio_postgres::Config,
    /// How the listener connects (TLS or not, as the pool does).
    connector: tls::Connector,
    schema: String,
    table: String,
    /// `<schema>.<table>`, named in [`Error::Corrupt`].
    location: String,
    channel: String,
    statements: Statements,
    migration: String,
    ttl: TtlPolicy,
    clock: SharedClock,
    max_record_size: u64,
    hub: SharedHub,
    watch_lease: Duration,
}

impl PostgresStorage {
    /// The table's schema.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The channel writes are announced on (`pg_notify` with `<id>:<version>`, version 0 for
    /// a removal) while at least one watch of this table is running in some process.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Every live record, sorted by id, and an error per unreadable row.
    async fn scan(&self) -> Result<(Vec<Record>, Vec<Error>)> {
        let client = self.client().await?;
        let now = millis(self.inner.clock.now());
        let rows = query(&client, &self.inner.statements.scan, &[&now]).await?;
        Ok(self.records_from_rows(&rows))
    }

    /// The live records among `ids` (for watchers).
    async fn fetch_many(&self, ids: &[String]) -> Result<(Vec<Record>, Vec<Error>)> {
        let client = self.client().await?;
        let now = millis(self.inner.clock.now());
        let rows = query(&client, &self.inner.statements.fetch_many, &[&ids, &now]).await?;
        Ok(self.records_from_rows(&rows))
    }

    /// One conditional write: the version, `created_at` and `updated_at` written, or `None`
    /// when its condition did not hold.
    async fn try_write(
        &self,
        client: &Object,
        id: &str,
        status: &Value,
        mode: PutMode,
    ) -> Result<Option<(u64, Timestamp, Timestamp)>> {
        let statements = &self.inner.statements;
        let sql = match mode {
            PutMode::Overwrite => &statements.put_overwrite,
            PutMode::Create => &statements.put_create,
            PutMode::Update(_) => &statements.put_update,
        };
        let statement = client.prepare_cached(sql).await.map_err(backend_error)?;
        let now = self.inner.clock.now();
        let now_ms = millis(now);
        let expires_at = self.inner.ttl.expires_at(status, now).map(millis);
        let json = Json(status);
        let row = match mode {
            PutMode::Update(expected) => {
                let expected = i64::try_from(expected).unwrap_or(i64::MAX);
                client
                    .query_opt(
                        &statement,
                        &[
                            &id,
                            &now_ms,
                            &expires_at,
                            &json,
                            &self.inner.channel,
                            &expected,
                        ],
                    )
                    .await
            }
            _ => {
                client
                    .query_opt(
                        &statement,
                        &[&id, &now_ms, &expires_at, &json, &self.inner.channel],
                    )
                    .await
            }
        }
        .map_err(backend_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let version: i64 = row.try_get(0).map_err(backend_error)?;
        let created_at: i64 = row.try_get(1).map_err(backend_error)?;
        Ok(Some((
            u64::try_from(version).map_err(|_| self.corrupt(id, "negative version"))?,
            Timestamp::from_millis(
                u64::try_from(created_at).map_err(|_| self.corrupt(id, "negative created_at"))?,
            ),
            now,
        )))
    }

    /// The version of the live record of `id`, if any.
    async fn live_version(&self, client: &Object, id: &str) -> Result<Option<u64>> {
        let now = millis(self.inner.clock.now());
        let row = query_opt(client, &self.inner.statements.live_version, &[&id, &now]).await?;
        row.map(|row| {
            let version: i64 = row.try_get(0).map_err(backend_error)?;
            u64::try_from(version).map_err(|_| self.corrupt(id, "negative version"))
        })
        .transpose()
    }

    async fn sweep(
        &self,
        client: &Object,
        options: &CleanupOptions,
        report: &mut CleanupReport,
    ) -> Result<()> {
        let statements = &self.inner.statements;
        let (sweep, expired, kept) = match options.ttl {
            None => (
                &statements.sweep_by_policy,
                &statements.expired_by_policy,
                &statements.kept_by_policy,
            ),
            Some(_) => (
                &statements.sweep_by_age,
                &statements.expired_by_age,
                &statements.kept_by_age,
            ),
        };
        // Expired by the policy: `expires_at <= now`; by an explicit TTL:
        // `updated_at + ttl <= now`, that is `updated_at <= now - ttl`.
        let bound = || {
            let now = millis(self.inner.clock.now());
            match options.ttl {
                None => now,
                Some(ttl) => now.saturating_sub(duration_millis(ttl)),
            }
        };
        if options.dry_run {
            let statement = client
                .prepare_cached(expired)
                .await
                .map_err(backend_error)?;
            let rows = client
                .query(&statement, &[&bound()])
                .await
                .map_err(backend_error)?;
            for row in rows {
                report.removed.push(row.try_get(0).map_err(backend_error)?);
            }
        } else {
            let statement = client.prepare_cached(sweep).await.map_err(backend_error)?;
            loop {
                // The time is taken again for every batch: a row is removed only if it is
                // expired when its batch runs, checked again by the DELETE itself.
                let rows = client
                    .query(&statement, &[&bound(), &self.inner.channel])
                    .await
                    .map_err(backend_error)?;
                for row in &rows {
                    report.removed.push(row.try_get(0).map_err(backend_error)?);
                }
                if (rows.len() as i64) < sql::SWEEP_BATCH {
                    break;
                }
            }
        }
        if !options.dry_run {
            // Registrations left by watchers whose process died make every write notify.
            client
                .execute(&statements.purge_listeners, &[])
                .await
                .map_err(backend_error)?;
        }
        let statement = client.prepare_cached(kept).await.map_err(backend_error)?;
        let kept: i64 = client
            .query_one(&statement, &[&bound()])
            .await
            .map_err(backend_error)?
            .try_get(0)
            .map_err(backend_error)?;
        report.kept = usize::try_from(kept).unwrap_or(0);
        Ok(())
    }
}

#[async_trait]
impl SyncStorage for PostgresStorage {
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
        let client = self.client().await?;
        let now = millis(self.inner.clock.now());
        let row = query_opt(&client, &self.inner.statements.get, &[&id, &now]).await?;
        row.map(|row| self.record_of(id.to_string(), &row, 0))
            .transpose()
    }

    async fn put(&self, id: &str, status: Value, mode: PutMode) -> Result<Record> {
        validate_id(id)?;
        crate::storage::check_record_size(
            id,
            crate::storage::json_len(&status),
            self.inner.max_record_size,
        )?;
        let client = self.client().await?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            if let Some((version, created_at, updated_at)) =
                self.try_write(&client, id, &status, mode).await?
            {
                return Ok(Record {
                    id: id.to_string(),
                    version,
                    created_at,
                    updated_at,
                    expires_at: self.inner.ttl.expires_at(&status, updated_at),
                    status,
                });
            }
            // The condition did not hold; look at what is there to say why. If what is there
            // now would have passed, the row changed in between: try again.
            let found = self.live_version(&client, id).await?;
            // The writing statements do not go past the column's range (see `MAX_VERSION`).
            let exhausted = found == Some(sql::MAX_VERSION)
                && matches!(mode, PutMode::Overwrite | PutMode::Update(sql::MAX_VERSION));
            if exhausted {
                return Err(Error::VersionExhausted {
                    id: id.to_string(),
                    version: sql::MAX_VERSION,
                });
            }
            let error = match mode {
                PutMode::Create => found.map(|version| Error::AlreadyExists {
                    id: id.to_string(),
                    version,
                }),
                PutMode::Update(expected) => (found != Some(expected)
                    || attempts >= CONFLICT_RECHECKS)
                    .then(|| Error::VersionConflict {
                        id: id.to_string(),
                        expected,
                        found,
                    }),
                PutMode::Overwrite => None,
            };
            if let Some(error) = error {
                return Err(error);
            }
            if attempts >= CONFLICT_RECHECKS {
                return Err(backend_error(format!(
                    "conditional write of `{id}` kept failing while the record kept changing"
                )));
            }
        }
    }

    async fn update(&self, id: &str, f: &mut UpdateFn<'_>) -> Result<Record> {
        update_optimistically(self, id, f).await
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        validate_id(id)?;
        let client = self.client().await?;
        let now = millis(self.inner.clock.now());
        let row = query_opt(
            &client,
            &self.inner.statements.delete,
            &[&id, &now, &self.inner.channel],
        )
        .await?;
        match row {
            Some(row) => row.try_get::<_, bool>(0).map_err(backend_error),
            None => Ok(false),
        }
    }

    async fn list(&self, filter: &ListFilter) -> Result<Listing> {
        let client = self.client().await?;
        let sql = self
            .inner
            .statements
            .list(filter.state.is_some(), filter.prefix.is_some());
        let now = millis(self.inner.clock.now());
        let pattern = filter.prefix.as_deref().map(sql::like_prefix);
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&now];
        if let Some(state) = &filter.state {
            params.push(state);
        }
        if let Some(pattern) = &pattern {
            params.push(pattern);
        }
        let rows = query(&client, &sql, &params).await?;
        let (records, errors) = self.records_from_rows(&rows);
        Ok(Listing { records, errors })
    }

    async fn count_by_state(&self) -> Result<BTreeMap<String, u64>> {
        let client = self.client().await?;
        let now = millis(self.inner.clock.now());
        let rows = query(&client, &self.inner.statements.count_by_state, &[&now]).await?;
        let mut counts = BTreeMap::new();
        for row in rows {
            let state: String = row.try_get(0).map_err(backend_error)?;
            let count: i64 = row.try_get(1).map_err(backend_error)?;
            counts.insert(state, u64::try_from(count).unwrap_or(0));
        }
        Ok(counts)
    }

    async fn cleanup(&self, options: &CleanupOptions) -> Result<CleanupReport> {
        let Some(lock) = self.acquire(SWEEP_LOCK).await? else {
            return Ok(CleanupReport::default());
        };
        let mut report = CleanupReport {
            ran: true,
            ..CleanupReport::default()
        };
        // The sweep runs on the connection that holds the lock: it needs no second one.
        if let Some(client) = lock.client()
            && let Err(error) = self.sweep(client, options, &mut report).await
        {
            // What was removed before the failure is still reported.
            report.errors.push(CleanupProblem {
                id: None,
                message: format!("{} in {}: {error}", STORE, self.inner.location),
            });
        }
        lock.release().await;
        report.removed.sort();
        Ok(report)
    }

    async fn watch(&self, selector: WatchSelector, options: WatchOptions) -> Result<WatchStream> {
        let this = self.clone();
        let handle = self.inner.hub.get_or_start(|| watch::start(this)).await?;
        Ok(SharedHub::subscribe(handle, selector, options))
    }

    /// A session-level advisory lock (`pg_try_advisory_lock`) on a pooled connection that the
    /// guard keeps; dropping the guard unlocks and returns the connection. If the process
    /// dies, the server ends the session and releases the lock, so `lease` is not used.
    async fn try_lock(&self, name: &str, _lease: Duration) -> Result<Option<LockGuard>> {
        validate_lock_name(name)?;
        Ok(self.acquire(name).await?.map(LockGuard::new))
    }
}
