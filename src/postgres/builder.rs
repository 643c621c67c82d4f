//! The builder of a [`PostgresStorage`]: its settings, their checks, and the assembly of the
//! store from a URL or from the application's own pool.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;

use super::connect::{describe_server, pool_for_url};
use super::sql::{self, MAX_IDENTIFIER_LEN, MAX_TABLE_LEN, Statements, validate_identifier};
use super::{Inner, PostgresStorage, tls};
use crate::error::{Error, Result};
use crate::record::{SharedClock, SystemClock};
use crate::store_url::redact;
use crate::ttl::TtlPolicy;
use crate::watch::SharedHub;

/// The table used when none is named.
pub const DEFAULT_TABLE: &str = "syncstatus";
/// The schema used when none is named.
pub const DEFAULT_SCHEMA: &str = "public";
/// How long a watcher's registration lasts unless renewed.
pub const DEFAULT_WATCH_LEASE: Duration = Duration::from_secs(30);

/// The default number of pooled connections.
pub const DEFAULT_POOL_SIZE: usize = 16;

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

impl PostgresStorage {
    /// Connects to the server at `url` with the default settings, creating the table if it
    /// does not exist. `?table=name` and `?schema=name` in the URL choose the table.
    pub async fn open(url: &str) -> Result<Self> {
        Self::builder(url).build().await
    }

    /// A builder for a store on the server at `url`.
    pub fn builder(url: impl Into<String>) -> PostgresStorageBuilder {
        PostgresStorageBuilder::new(Source::Url(url.into()))
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
        PostgresStorageBuilder::new(Source::Pool {
            pool,
            listener: Box::new(listener),
        })
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
    /// The default settings for connections from `source`.
    fn new(source: Source) -> Self {
        Self {
            source,
            table: None,
            schema: None,
            ttl: TtlPolicy::default(),
            clock: Arc::new(SystemClock),
            pool_size: DEFAULT_POOL_SIZE,
            watch_lease: DEFAULT_WATCH_LEASE,
            max_record_size: crate::storage::DEFAULT_MAX_RECORD_SIZE,
        }
    }

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
    /// [`LockGuard`](crate::LockGuard) keeps one of them, and each watch opens one more of its own.
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
