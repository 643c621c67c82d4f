//! Connections: the pool built from a URL, the server as messages name it, and what a failure
//! to get a pooled connection says.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{ManagerConfig, Object, Pool, RecyclingMethod, Runtime};

use super::{PostgresStorage, backend_error, tls};
use crate::error::{Error, Result};

/// How long an operation waits for a pooled connection before failing.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// How long opening a connection may take, unless the URL says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The pool, the connection settings (for the watch's own connection) and the connector of a
/// URL whose store parameters were taken out.
pub(super) fn pool_for_url(
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
pub(super) fn describe_server(config: &tokio_postgres::Config) -> String {
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

impl PostgresStorage {
    /// A pooled connection.
    pub(super) async fn client(&self) -> Result<Object> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|error| pool_error(&self.inner.target, error))
    }
}
