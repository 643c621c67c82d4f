//! The Redis client of a store: from a URL (with TLS for `rediss://`, trusting the platform's
//! roots or a given CA), or handed over by the application; one server, or a Redis Cluster
//! (`redis+cluster://`, feature `redis-cluster`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Value};

use crate::error::{Error, Result};

/// The connection a store sends its commands on: one server's, or a cluster's, which sends
/// each command to the node that holds its first key's slot (and follows `MOVED`/`ASK`).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The clients the watch may subscribe through: the server, or every seed node of a cluster
/// (a classic `PUBLISH` reaches the subscribers of every node, so any one will do).
pub(crate) struct WatchClients {
    clients: Vec<redis::Client>,
    /// The client to try first: the one that last connected.
    next: AtomicUsize,
}

impl WatchClients {
    /// RESP3 clients of `clients`, so that the watch connection can subscribe and still take
    /// ordinary commands (CLIENT SETNAME), and learns at once when it is cut.
    pub(crate) fn new(clients: &[redis::Client], shown: &str) -> Result<Self> {
        let clients = clients
            .iter()
            .map(|client| {
                let info = client.get_connection_info().clone();
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(redis::ProtocolVersion::RESP3);
                redis::Client::open(info.set_redis_settings(settings))
                    .map_err(|error| Error::Config(format!("invalid redis URL `{shown}`: {error}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(WatchClients {
            clients,
            next: AtomicUsize::new(0),
        })
    }

    /// A connection to the first node that answers, starting with the one that last did, so
    /// that a watch outlives the failure of one node of a cluster.
    pub(crate) async fn connect(
        &self,
        config: &AsyncConnectionConfig,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let first = self.next.load(Ordering::Relaxed);
        let mut last_error = None;
        for step in 0..self.clients.len() {
            let index = (first + step) % self.clients.len();
            match self.clients[index]
                .get_multiplexed_async_connection_with_config(config)
                .await
            {
                Ok(conn) => {
                    self.next.store(index, Ordering::Relaxed);
                    return Ok(conn);
                }
                Err(error) => {
                    tracing::debug!(%error, node = index, "watch connection to a node failed");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Client, "no redis node to watch"))
        }))
    }
}

/// Where a store's connections come from.
#[derive(Clone)]
pub(crate) enum Source {
    /// A URL (the store's own `prefix` parameter already taken out).
    Url {
        url: String,
        /// A PEM file of the certificates to trust for `rediss://`, instead of the platform's.
        tls_ca: Option<PathBuf>,
    },
    /// The application's own client, with whatever TLS settings it was built with.
    Client(redis::Client),
}

/// What a store's URL or client names: one server, or the seed nodes of a cluster.
pub(crate) enum Target {
    Single(redis::Client),
    #[cfg(feature = "redis-cluster")]
    Cluster {
        nodes: Vec<redis::Client>,
        /// The PEM certificates to trust instead of the platform's, for `rediss+cluster://`.
        root_cert: Option<Vec<u8>>,
    },
}

impl Target {
    /// The target of `source`, the prefix its URL names, and how to show it in messages.
    pub(crate) fn of(source: &Source) -> Result<(Target, Option<String>, String)> {
        match source {
            Source::Url { url, tls_ca } if crate::store_url::is_redis_cluster(url) => {
                cluster_target(url, tls_ca.as_ref())
            }
            Source::Url { url, tls_ca } => {
                let (url, url_prefix) = crate::store_url::redis_parts(url)?;
                let shown = crate::store_url::redact(&url);
                Ok((
                    Target::Single(open(&url, tls_ca.as_ref(), &shown)?),
                    url_prefix,
                    shown,
                ))
            }
            Source::Client(client) => Ok((
                Target::Single(client.clone()),
                None,
                format!("{:?}", client.get_connection_info().addr()),
            )),
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        !matches!(self, Target::Single(_))
    }

    /// The server, or the cluster's seed nodes.
    pub(crate) fn nodes(&self) -> &[redis::Client] {
        match self {
            Target::Single(client) => std::slice::from_ref(client),
            #[cfg(feature = "redis-cluster")]
            Target::Cluster { nodes, .. } => nodes,
        }
    }

    /// Connects the commands' connection.
    pub(crate) async fn connect(
        &self,
        timeouts: Timeouts,
    ) -> std::result::Result<Conn, redis::RedisError> {
        match self {
            Target::Single(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeouts.connection))
                    .set_response_timeout(Some(timeouts.response))
                    .set_number_of_retries(3)
                    .set_max_delay(std::time::Duration::from_secs(1));
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(client.clone(), config).await?,
                ))
            }
            #[cfg(feature = "redis-cluster")]
            Target::Cluster { nodes, root_cert } => {
                let builder = redis::cluster::ClusterClientBuilder::new(
                    nodes.iter().map(|node| node.get_connection_info().clone()),
                )
                .connection_timeout(timeouts.connection)
                .response_timeout(timeouts.response)
                .retries(3);
                #[cfg(feature = "redis-tls")]
                let builder = match root_cert {
                    Some(pem) => builder.certs(redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.clone()),
                    }),
                    None => builder,
                };
                #[cfg(not(feature = "redis-tls"))]
                let _ = root_cert;
                let client = builder.build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

/// How long to wait for a connection and for each reply.
#[derive(Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connection: std::time::Duration,
    pub(crate) response: std::time::Duration,
}

#[cfg(feature = "redis-cluster")]
fn cluster_target(url: &str, tls_ca: Option<&PathBuf>) -> Result<(Target, Option<String>, String)> {
    let shown = crate::store_url::redact(url);
    let (nodes, prefix) = crate::store_url::redis_cluster_parts(url)?;
    let nodes = nodes
        .iter()
        .map(|node| open(node, tls_ca, &shown))
        .collect::<Result<Vec<_>>>()?;
    // `open` refused a CA file without the `redis-tls` feature already.
    #[cfg(feature = "redis-tls")]
    let root_cert = tls_ca.map(|path| crate::tls::read_pem(path)).transpose()?;
    #[cfg(not(feature = "redis-tls"))]
    let root_cert = None;
    Ok((Target::Cluster { nodes, root_cert }, prefix, shown))
}

#[cfg(not(feature = "redis-cluster"))]
fn cluster_target(url: &str, _: Option<&PathBuf>) -> Result<(Target, Option<String>, String)> {
    Err(Error::Config(format!(
        "a Redis Cluster (`{}`) needs syncstatus built with the `redis-cluster` feature",
        crate::store_url::redact(url)
    )))
}

/// Opens the client for `url`.
pub(crate) fn open(url: &str, tls_ca: Option<&PathBuf>, redacted: &str) -> Result<redis::Client> {
    let tls = url.starts_with("rediss://");
    #[cfg(not(feature = "redis-tls"))]
    if tls || tls_ca.is_some() {
        return Err(Error::Config(format!(
            "TLS to Redis (`{redacted}`) needs syncstatus built with the `redis-tls` feature"
        )));
    }
    let invalid = |error: redis::RedisError| {
        Error::Config(format!("invalid redis URL `{redacted}`: {error}"))
    };
    match tls_ca {
        #[cfg(feature = "redis-tls")]
        Some(path) => {
            if !tls {
                return Err(Error::Config(format!(
                    "a TLS CA file is given but `{redacted}` is not a rediss:// URL"
                )));
            }
            install_provider();
            let root_cert = crate::tls::read_pem(path)?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )
            .map_err(invalid)
        }
        _ => {
            #[cfg(feature = "redis-tls")]
            if tls {
                install_provider();
            }
            redis::Client::open(url).map_err(invalid)
        }
    }
}

/// The Redis client builds its TLS settings with rustls's process-wide provider: make it ours
/// unless the application chose one.
#[cfg(feature = "redis-tls")]
fn install_provider() {
    // An error means a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "redis-tls"))]
    #[test]
    fn tls_without_the_feature_says_which_feature() {
        let error = open(
            "rediss://localhost:6390/0",
            None,
            "rediss://localhost:6390/0",
        )
        .unwrap_err();
        assert!(matches!(error, Error::Config(_)), "{error:?}");
        assert!(error.to_string().contains("redis-tls"), "{error}");
    }

    #[cfg(feature = "redis-tls")]
    #[test]
    fn a_ca_file_needs_a_tls_url() {
        let ca = PathBuf::from("/nonexistent/ca.pem");
        let error = open(
            "redis://localhost:6379/0",
            Some(&ca),
            "redis://localhost:6379/0",
        )
        .unwrap_err();
        assert!(error.to_string().contains("not a rediss:// URL"), "{error}");
    }
}
