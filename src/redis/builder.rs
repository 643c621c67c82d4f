//! The settings of a Redis store and connecting to the server.

use std::fmt;
use std::sync::Arc;

use redis::aio::ConnectionManager;

use super::client::{self, Conn};
use super::keys::Keys;
use super::{
    CONNECTION_TIMEOUT, DEFAULT_PREFIX, Inner, RESPONSE_TIMEOUT, RedisStorage, command_error,
};
use crate::error::{Error, Result};
use crate::record::{SharedClock, SystemClock};
use crate::store_url::redact;
use crate::ttl::TtlPolicy;
use crate::watch::SharedHub;

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
}
