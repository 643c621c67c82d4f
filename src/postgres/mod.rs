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

mod sql;
mod tls;
mod watch;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use serde_json::Value;
use tokio_postgres::types::Json;

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

use sql::{MAX_IDENTIFIER_LEN, MAX_TABLE_LEN, Statements, lock_key, validate_identifier};

const STORE: &str = "postgres";

/// The table used when none is named.
pub const DEFAULT_TABLE: &str = "syncstatus";
/// The schema used when none is named.
pub const DEFAULT_SCHEMA: &str = "public";
/// How long a watcher's registration lasts unless renewed.
pub const DEFAULT_WATCH_LEASE: Duration = Duration::from_secs(30);

/// The default number of pooled connections.
pub const DEFAULT_POOL_SIZE: usize = 16;

use crate::storage::SWEEP_LOCK;
/// How long an operation waits for a pooled connection before failing.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// How long opening a connection may take, unless the URL says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
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

/// Where a store's connections come from.
#[derive(Clone)]
enum Source {
    /// A URL, with the store's own parameters (`table`, `schema`, `sslmode`, ...).
    Url(String),
    /// The application's pool, and the settings of the one connection the store opens
    /// itself: the watch's `LISTEN` (pooled connections cannot receive notifications).
    Pool {
        pool: Pool,
        listener: Box<tokio_postgres::Config>,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The URL may hold a password.
            Source::Url(url) => f.write_str(&redact(url)),
            Source::Pool { .. } => f.write_str("the application's pool"),
        }
    }
}

/// Builds a [`PostgresStorage`].
///
/// ```no_run
/// # async fn example() -> syncstatus::Result<()> {
/// use std::time::Duration;
/// use syncstatus::TtlPolicy;
/// use syncstatus::postgres::PostgresStorage;
///
/// let store = PostgresStorage::builder("postgres://postgres@127.0.0.1:5432/test")
///     .with_table("job_status")
///     .with_schema("jobs")?
///     .with_ttl(TtlPolicy::uniform(Duration::from_secs(3600)))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStorageBuilder {
    source: Source,
    table: Option<String>,
    schema: Option<String>,
    ttl: TtlPolicy,
    clock: SharedClock,
    pool_size: usize,
    watch_lease: Duration,
    max_record_size: u64,
}

impl std::fmt::Debug for PostgresStorageBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorageBuilder")
            .field("source", &self.source)
            .field("table", &self.table)
            .field("schema", &self.schema)
            .field("ttl", &self.ttl)
            .field("clock", &self.clock)
            .field("pool_size", &self.pool_size)
            .field("watch_lease", &self.watch_lease)
            .field("max_record_size", &self.max_record_size)
            .finish()
    }
}

impl PostgresStorageBuilder {
    /// The table (default: `table=` of the URL, else [`DEFAULT_TABLE`]). ASCII letters,
    /// digits and `_`, at most 48 bytes; checked by [`build`](Self::build).
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }

    /// The schema (default: `schema=` of the URL, else [`DEFAULT_SCHEMA`]); created if
    /// missing. ASCII letters, digits and `_`, at most 63 bytes, not starting with `pg_`.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Result<Self> {
        let schema = schema.into();
        validate_identifier("schema", &schema, MAX_IDENTIFIER_LEN)?;
        self.schema = Some(schema);
        Ok(self)
    }

    /// The TTL policy (default: 5 minutes after the last write, every state). Each write
    /// stores its expiry time as this policy gives it.
    pub fn with_ttl(mut self, ttl: TtlPolicy) -> Self {
        self.ttl = ttl;
        self
    }

    /// The clock expiry is judged by (default: the system clock). Tests pass a
    /// [`ManualClock`](crate::ManualClock).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// How many connections the store pools (default: [`DEFAULT_POOL_SIZE`]). Every held
    /// [`LockGuard`] keeps one of them, and each watch opens one more of its own.
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// How long a watcher's registration lasts unless renewed (default:
    /// [`DEFAULT_WATCH_LEASE`]; renewed every third of it). Writes send a notification only
    /// while some registration runs, so a watcher whose process was killed stops costing
    /// writers a NOTIFY after this long. A watcher that could not renew in time (a frozen
    /// process) resyncs when it can.
    pub fn with_watch_lease(mut self, lease: Duration) -> Self {
        self.watch_lease = lease;
        self
    }

    /// The largest status, as JSON, a write sends (default:
    /// [`DEFAULT_MAX_RECORD_SIZE`](crate::DEFAULT_MAX_RECORD_SIZE)); larger writes fail with
    /// [`Error::TooLarge`] before reaching the server.
    pub fn with_max_record_size(mut self, bytes: u64) -> Self {
        self.max_record_size = bytes;
        self
    }

    /// Checks the settings, connects, and creates the table if it does not exist.
    pub async fn build(self) -> Result<PostgresStorage> {
        if self.pool_size == 0 {
            return Err(Error::Config("the pool size must not be zero".into()));
        }
        if self.watch_lease < Duration::from_millis(300) {
            return Err(Error::Config(format!(
                "the watch lease must be at least 300ms, not {:?}",
                self.watch_lease
            )));
        }
        let (pool, pg_config, connector, url_table, url_schema) = match self.source {
            Source::Url(url) => {
                let (url, url_table, url_schema) = crate::store_url::postgres_parts(&url)?;
                let (pool, pg_config, connector) = pool_for_url(&url, self.pool_size)?;
                (pool, pg_config, connector, url_table, url_schema)
            }
            Source::Pool { pool, listener } => {
                let connector =
                    tls::TlsSettings::for_driver_mode(listener.get_ssl_mode()).connector()?;
                (pool, *listener, connector, None, None)
            }
        };
        let table = self
            .table
            .or(url_table)
            .unwrap_or_else(|| DEFAULT_TABLE.to_string());
        validate_identifier("table", &table, MAX_TABLE_LEN)?;
        let schema = self
            .schema
            .or(url_schema)
            .unwrap_or_else(|| DEFAULT_SCHEMA.to_string());
        validate_identifier("schema", &schema, MAX_IDENTIFIER_LEN)?;
        let target = describe_server(&pg_config);
        let statements = Statements::new(&schema, &table);
        let channel = {
            let name = format!("syncstatus:{schema}.{table}");
            if name.len() <= MAX_IDENTIFIER_LEN {
                name
            } else {
                format!("syncstatus:{:016x}", sql::stable_hash(&[&schema, &table]))
            }
        };
        let store = PostgresStorage {
            inner: Arc::new(Inner {
                pool,
                target,
                listener_config: {
                    let mut config = pg_config;
                    config.application_name(sql::cut(
                        &format!("syncstatus-watch:{schema}.{table}"),
                        MAX_IDENTIFIER_LEN,
                    ));
                    config
                },
                connector,
                location: format!("{schema}.{table}"),
                channel,
                migration: statements.migration(&table),
                statements,
                schema,
                table,
                ttl: self.ttl,
                watch_lease: self.watch_lease,
                clock: self.clock,
                max_record_size: self.max_record_size,
                hub: SharedHub::default(),
            }),
        };
        let migrated = store.migrate().await;
        #[cfg(feature = "postgres-tls")]
        let migrated = migrated.map_err(|error| crate::tls::clarify(error, &store.inner.target));
        migrated?;
        Ok(store)
    }
}

/// The pool, the connection settings (for the watch's own connection) and the connector of a
/// URL whose store parameters were taken out.
fn pool_for_url(
    url: &str,
    pool_size: usize,
) -> Result<(Pool, tokio_postgres::Config, tls::Connector)> {
    let (url, tls_settings) = tls::take_tls_params(url)?;
    let connector = tls_settings.connector()?;
    // The URL may hold a password: errors name the problem, never the URL.
    let mut pg_config = tokio_postgres::Config::from_str(&url)
        .map_err(|error| Error::Config(format!("invalid PostgreSQL URL: {error}")))?;
    if pg_config.get_application_name().is_none() {
        pg_config.application_name("syncstatus");
    }
    if pg_config.get_connect_timeout().is_none() {
        pg_config.connect_timeout(CONNECT_TIMEOUT);
    }
    pg_config.ssl_mode(tls_settings.driver_mode());
    let manager = connector.manager(
        pg_config.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|error| Error::Config(format!("cannot build the connection pool: {error}")))?;
    Ok((pool, pg_config, connector))
}

/// The server a configuration connects to, for messages: hosts, ports, database and user,
/// never the password.
fn describe_server(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let name = match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(index)
                .or_else(|| config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{name}:{port}")
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "the default host".to_string()
    } else {
        hosts.join(",")
    };
    let mut text = format!("PostgreSQL at {hosts}");
    if let Some(db) = config.get_dbname() {
        text.push_str(&format!("/{db}"));
    }
    if let Some(user) = config.get_user() {
        text.push_str(&format!(" as {user}"));
    }
    text
}

/// A failure to get a pooled connection, saying what failed instead of the pool's "Error
/// occurred while creating a new object".
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("cannot connect to {target}: {source}")]
    Refused {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("timed out after {waited:?} connecting to {target}")]
    ConnectTimeout { target: String, waited: Duration },
    #[error("no pooled connection to {target} became free within {waited:?} (all are in use)")]
    PoolBusy { target: String, waited: Duration },
}

fn pool_error(target: &str, error: deadpool_postgres::PoolError) -> Error {
    use deadpool_postgres::{PoolError, TimeoutType};
    let target = target.to_string();
    match error {
        PoolError::Backend(source) => backend_error(ConnectError::Refused { target, source }),
        PoolError::Timeout(TimeoutType::Create) => backend_error(ConnectError::ConnectTimeout {
            target,
            waited: CONNECT_TIMEOUT,
        }),
        PoolError::Timeout(TimeoutType::Wait) => backend_error(ConnectError::PoolBusy {
            target,
            waited: POOL_WAIT,
        }),
        other => backend_error(other),
    }
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
    /// Connects to the server at `url` with the default settings, creating the table if it
    /// does not exist. `?table=name` and `?schema=name` in the URL choose the table.
    pub async fn open(url: &str) -> Result<Self> {
        Self::builder(url).build().await
    }

    /// A builder for a store on the server at `url`.
    pub fn builder(url: impl Into<String>) -> PostgresStorageBuilder {
        PostgresStorageBuilder {
            source: Source::Url(url.into()),
            table: None,
            schema: None,
            ttl: TtlPolicy::default(),
            clock: Arc::new(SystemClock),
            pool_size: DEFAULT_POOL_SIZE,
            watch_lease: DEFAULT_WATCH_LEASE,
            max_record_size: crate::storage::DEFAULT_MAX_RECORD_SIZE,
        }
    }

    /// A builder for a store on the application's own pool. `listener` are the settings
    /// of the one connection the store opens itself, for the watch's `LISTEN` (a pooled
    /// connection cannot receive notifications); its `sslmode` is read as libpq reads it
    /// without a root certificate file: `require` encrypts without checking the
    /// certificate. The table and schema are the defaults unless the builder says
    /// otherwise; [`with_pool_size`](PostgresStorageBuilder::with_pool_size) does not apply.
    pub fn builder_from_pool(
        pool: deadpool_postgres::Pool,
        listener: tokio_postgres::Config,
    ) -> PostgresStorageBuilder {
        PostgresStorageBuilder {
            source: Source::Pool {
                pool,
                listener: Box::new(listener),
            },
            table: None,
            schema: None,
            ttl: TtlPolicy::default(),
            clock: Arc::new(SystemClock),
            pool_size: DEFAULT_POOL_SIZE,
            watch_lease: DEFAULT_WATCH_LEASE,
            max_record_size: crate::storage::DEFAULT_MAX_RECORD_SIZE,
        }
    }

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

    async fn client(&self) -> Result<Object> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|error| pool_error(&self.inner.target, error))
    }

    async fn migrate(&self) -> Result<()> {
        let mut client = self.client().await?;
        // Checked first so a role without DDL rights can use a table made for it.
        let exists: bool = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL",
                &[
                    &self.inner.statements.qualified,
                    &self.inner.statements.listeners,
                ],
            )
            .await
            .map_err(backend_error)?
            .get(0);
        if exists {
            return Ok(());
        }
        let transaction = client.transaction().await.map_err(backend_error)?;
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&lock_key(&["syncstatus", "migrate"])],
            )
            .await
            .map_err(backend_error)?;
        let schema_exists: bool = transaction
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&self.inner.schema],
            )
            .await
            .map_err(backend_error)?
            .get(0);
        if !schema_exists {
            transaction
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{}\"",
                    self.inner.schema
                ))
                .await
                .map_err(backend_error)?;
        }
        transaction
            .batch_execute(&self.inner.migration)
            .await
            .map_err(backend_error)?;
        transaction.commit().await.map_err(backend_error)
    }

    fn corrupt(
        &self,
        id: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Corrupt {
            id: id.to_string(),
            location: crate::Location::PostgresRow {
                table: self.inner.location.clone(),
            },
            source: source.into(),
        }
    }

    /// A record from a row of `id, version, created_at, updated_at, status, expires_at`.
    fn record_from_row(&self, row: &tokio_postgres::Row) -> Result<Record> {
        let id: String = row
            .try_get(0)
            .map_err(|error| self.corrupt("<unreadable id>", error))?;
        self.record_of(id, row, 1)
    }

    /// A record from a row of `version, created_at, updated_at, status, expires_at` starting
    /// at column `first`.
    fn record_of(&self, id: String, row: &tokio_postgres::Row, first: usize) -> Result<Record> {
        let unsigned = |index: usize, what: &str| -> Result<u64> {
            let value: i64 = row
                .try_get(index)
                .map_err(|error| self.corrupt(&id, error))?;
            u64::try_from(value).map_err(|_| self.corrupt(&id, format!("negative {what}: {value}")))
        };
        let version = unsigned(first, "version")?;
        if version == 0 {
            return Err(self.corrupt(&id, "version 0 (versions start at 1)"));
        }
        let created_at = Timestamp::from_millis(unsigned(first + 1, "created_at")?);
        let updated_at = Timestamp::from_millis(unsigned(first + 2, "updated_at")?);
        let Json(status) = row
            .try_get::<_, Json<Value>>(first + 3)
            .map_err(|error| self.corrupt(&id, error))?;
        let expires_at = row
            .try_get::<_, Option<i64>>(first + 4)
            .map_err(|error| self.corrupt(&id, error))?
            .map(|millis| Timestamp::from_millis(u64::try_from(millis).unwrap_or(0)));
        Ok(Record {
            id,
            version,
            created_at,
            updated_at,
            expires_at,
            status,
        })
    }

    /// Every live record, sorted by id, and an error per unreadable row.
    async fn scan(&self) -> Result<(Vec<Record>, Vec<Error>)> {
        let client = self.client().await?;
        let now = millis(self.inner.clock.now());
        let rows = query(&client, &self.inner.statements.scan, &[&now]).await?;
        Ok(self.records_from_rows(&rows))
    }

    fn records_from_rows(&self, rows: &[tokio_postgres::Row]) -> (Vec<Record>, Vec<Error>) {
        let mut records = Vec::with_capacity(rows.len());
        let mut errors = Vec::new();
        for row in rows {
            match self.record_from_row(row) {
                Ok(record) => records.push(record),
                Err(error) => errors.push(error),
            }
        }
        (records, errors)
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

    /// Takes the session-level advisory lock `name` on a connection of its own.
    async fn acquire(&self, name: &str) -> Result<Option<AdvisoryLock>> {
        let client = self.client().await?;
        let key = lock_key(&["syncstatus", &self.inner.schema, &self.inner.table, name]);
        let statement = client
            .prepare_cached("SELECT pg_try_advisory_lock($1)")
            .await
            .map_err(backend_error)?;
        let held: bool = client
            .query_one(&statement, &[&key])
            .await
            .map_err(backend_error)?
            .try_get(0)
            .map_err(backend_error)?;
        Ok(held.then(|| AdvisoryLock {
            client: Some(client),
            key,
        }))
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

/// A session-level advisory lock and the connection that holds it.
struct AdvisoryLock {
    client: Option<Object>,
    key: i64,
}

impl AdvisoryLock {
    fn client(&self) -> Option<&Object> {
        self.client.as_ref()
    }

    /// Unlocks and returns the connection to the pool.
    async fn release(mut self) {
        if let Some(client) = self.client.take() {
            unlock(client, self.key).await;
        }
    }
}

/// Unlocks, then returns the connection to the pool. If the unlock fails or is cancelled,
/// the connection is closed instead, which makes the server release the lock.
async fn unlock(client: Object, key: i64) {
    struct Unlocking {
        client: Option<Object>,
        unlocked: bool,
    }
    impl Drop for Unlocking {
        fn drop(&mut self) {
            if !self.unlocked
                && let Some(client) = self.client.take()
            {
                // Taken out of the pool and dropped: the connection closes.
                drop(Object::take(client));
            }
        }
    }
    let mut unlocking = Unlocking {
        client: Some(client),
        unlocked: false,
    };
    if let Some(client) = &unlocking.client {
        match client
            .query_one("SELECT pg_advisory_unlock($1)", &[&key])
            .await
        {
            Ok(row) => unlocking.unlocked = row.try_get::<_, bool>(0).unwrap_or(false),
            Err(error) => tracing::debug!(%error, "advisory unlock failed; closing the connection"),
        }
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            // The unlock needs a round trip, which a destructor cannot wait for: it runs on
            // a short task of its own that ends with the unlock.
            Ok(runtime) => {
                runtime.spawn(unlock(client, self.key));
            }
            // No runtime to unlock on: close the connection; the server releases the lock.
            Err(_) => drop(Object::take(client)),
        }
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
