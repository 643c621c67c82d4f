//! Store URLs, parsed in one place for [`crate::open`], the CLI and the backends, and printed
//! without their passwords.
//!
//! The forms: `file:DIR`, `file:///abs/dir`, a bare path (`./data/sync-status`, `/var/lib/x`,
//! `data`), `memory:`, `redis://…`/`rediss://…`, `redis+cluster://…`/`rediss+cluster://…` and
//! `postgres://…`/`postgresql://…`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use url::Url;

use crate::error::{Error, Result};
use crate::file::FileStorage;
use crate::memory::MemoryStorage;
use crate::storage::DynSyncStorage;

/// What replaces a password wherever a URL is printed.
const REDACTED: &str = "***";

/// The query parameters the Redis backend understands: its own `prefix`, and the client's
/// `protocol` (`resp2`/`resp3`). The client ignores every other one, so a typo (`prefx=`)
/// would silently choose another key space: unknown ones are refused instead.
const REDIS_PARAMS: &[&str] = &["prefix", "protocol"];

/// The query parameters of a PostgreSQL URL: the backend's own `table` and `schema`, and
/// those tokio-postgres takes. The driver refuses others with a bare "invalid connection
/// string"; refused here, the message names the parameter.
const POSTGRES_PARAMS: &[&str] = &[
    "table",
    "schema",
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    // Read by the store itself (the driver knows no root certificate file): see
    // `postgres::tls`.
    "sslrootcert",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// A parsed store URL. Its `Display` and `Debug` never show a password.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreUrl {
    /// A directory of the file store.
    File(PathBuf),
    /// A new, empty memory store.
    Memory,
    /// A Redis server (`redis://` or `rediss://`).
    Redis(Url),
    /// A Redis Cluster (`redis+cluster://host:port,host:port/` or `rediss+cluster://…`): one
    /// `redis://` (or `rediss://`) URL per seed node, each with the credentials and parameters
    /// of the whole.
    RedisCluster(Vec<Url>),
    /// A PostgreSQL server (`postgres://` or `postgresql://`).
    Postgres(Url),
}

impl StoreUrl {
    /// Parses a store URL or a bare directory path. A text is a URL when it starts with a
    /// scheme of two or more characters and a colon before any `/` (so `C:\dir` and
    /// `./a:b` are paths); anything else is a path of the file store.
    pub fn parse(text: &str) -> Result<Self> {
        let shown = redact(text);
        if text.trim().is_empty() {
            return Err(Error::Config("the store URL is empty".into()));
        }
        let Some((scheme, rest)) = split_scheme(text) else {
            return Ok(StoreUrl::File(PathBuf::from(text)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                if path.is_empty() {
                    return Err(Error::Config(format!(
                        "store URL `{shown}` names no directory"
                    )));
                }
                Ok(StoreUrl::File(PathBuf::from(path)))
            }
            "memory" => {
                if !matches!(rest, "" | "//") {
                    return Err(Error::Config(format!(
                        "store URL `{shown}`: memory: takes no path or parameters"
                    )));
                }
                Ok(StoreUrl::Memory)
            }
            "redis" | "rediss" => {
                let url = parse_url(text, "Redis")?;
                query_params(&url, Some(REDIS_PARAMS))?;
                Ok(StoreUrl::Redis(url))
            }
            "redis+cluster" | "rediss+cluster" => {
                Ok(StoreUrl::RedisCluster(redis_cluster_nodes(text)?))
            }
            "postgres" | "postgresql" => {
                let url = parse_url(text, "PostgreSQL")?;
                query_params(&url, Some(POSTGRES_PARAMS))?;
                Ok(StoreUrl::Postgres(url))
            }
            other => Err(Error::Config(format!(
                "unknown store scheme `{other}:` in `{shown}` (expected a directory, file:DIR, memory:, redis://, redis+cluster:// or postgres://)"
            ))),
        }
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        self.to_string()
    }
}

impl StoreUrl {
    /// Opens the store, creating a file store's directory if it is missing.
    pub async fn open(&self) -> Result<DynSyncStorage> {
        self.open_with(true).await
    }

    /// Opens the store, but fails with [`Error::Io`] (`NotFound`) rather than create a file
    /// store's directory: for tools that only read, where a mistyped path must not leave an
    /// empty store behind. Other backends open as with [`open`](Self::open).
    pub async fn open_existing(&self) -> Result<DynSyncStorage> {
        self.open_with(false).await
    }

    async fn open_with(&self, create_dir: bool) -> Result<DynSyncStorage> {
        match self {
            StoreUrl::File(dir) => {
                let dir = dir.clone();
                let store = tokio::task::spawn_blocking(move || {
                    FileStorage::builder(dir)
                        .with_create_dir(create_dir)
                        .build()
                })
                .await
                .map_err(|e| Error::backend("file", e))??;
                Ok(Arc::new(store))
            }
            StoreUrl::Memory => Ok(Arc::new(MemoryStorage::new())),
            #[cfg(feature = "redis")]
            StoreUrl::Redis(url) => Ok(Arc::new(
                crate::redis::RedisStorage::open(url.as_str()).await?,
            )),
            #[cfg(feature = "redis")]
            StoreUrl::RedisCluster(nodes) => Ok(Arc::new(
                crate::redis::RedisStorage::open(&cluster_text(nodes, false)).await?,
            )),
            #[cfg(feature = "postgres")]
            StoreUrl::Postgres(url) => Ok(Arc::new(
                crate::postgres::PostgresStorage::open(url.as_str()).await?,
            )),
            #[cfg(not(feature = "redis"))]
            StoreUrl::Redis(_) | StoreUrl::RedisCluster(_) => Err(Error::Config(format!(
                "store URL `{self}` needs syncstatus built with the `redis` feature"
            ))),
            #[cfg(not(feature = "postgres"))]
            StoreUrl::Postgres(_) => Err(Error::Config(format!(
                "store URL `{self}` needs syncstatus built with the `postgres` feature"
            ))),
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::File(path) => write!(f, "file:{}", path.display()),
            StoreUrl::Memory => f.write_str("memory:"),
            StoreUrl::Redis(url) | StoreUrl::Postgres(url) => f.write_str(&redact_url(url)),
            StoreUrl::RedisCluster(nodes) => f.write_str(&cluster_text(nodes, true)),
        }
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        StoreUrl::parse(text)
    }
}

/// Whether `text` names a Redis Cluster (`redis+cluster://`, `rediss+cluster://`).
#[cfg(feature = "redis")]
pub(crate) fn is_redis_cluster(text: &str) -> bool {
    split_scheme(text).is_some_and(|(scheme, _)| {
        matches!(
            scheme.to_ascii_lowercase().as_str(),
            "redis+cluster" | "rediss+cluster"
        )
    })
}

/// The seed nodes of a Redis Cluster URL,
/// `redis+cluster://[user:password@]host:port[,host:port…][/0][?prefix=…]`, each as a
/// `redis://` (`rediss://` for `rediss+cluster://`) URL with the credentials, path and
/// parameters of the whole. A cluster has only database 0.
fn redis_cluster_nodes(text: &str) -> Result<Vec<Url>> {
    let shown = redact(text);
    let invalid = |why: &str| Error::Config(format!("invalid Redis Cluster URL `{shown}`: {why}"));
    let (scheme, rest) = text
        .split_once("://")
        .ok_or_else(|| invalid("expected `redis+cluster://host:port,host:port`"))?;
    let node_scheme = if scheme.eq_ignore_ascii_case("rediss+cluster") {
        "rediss"
    } else {
        "redis"
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let mut nodes = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err(invalid("a node is empty (expected host:port,host:port)"));
        }
        let node = parse_url(&format!("{node_scheme}://{userinfo}{host}{tail}"), "Redis")
            .map_err(|_| invalid(&format!("node `{host}` is not host:port")))?;
        if !matches!(node.path(), "" | "/" | "/0") {
            return Err(invalid("a cluster has only database 0"));
        }
        query_params(&node, Some(REDIS_PARAMS)).map_err(|error| invalid(&error.to_string()))?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// The text of a cluster URL of `nodes` (see [`redis_cluster_nodes`]), its password shown
/// as `***` when `redacted`.
fn cluster_text(nodes: &[Url], redacted: bool) -> String {
    let Some(first) = nodes.first() else {
        return "redis+cluster://".to_string();
    };
    let mut text = format!("{}+cluster://", first.scheme());
    if !first.username().is_empty() || first.password().is_some() {
        text.push_str(first.username());
        if let Some(password) = first.password() {
            text.push(':');
            text.push_str(if redacted { REDACTED } else { password });
        }
        text.push('@');
    }
    let hosts: Vec<String> = nodes
        .iter()
        .map(|node| match node.port() {
            Some(port) => format!("{}:{port}", node.host_str().unwrap_or_default()),
            None => node.host_str().unwrap_or_default().to_string(),
        })
        .collect();
    text.push_str(&hosts.join(","));
    text.push_str(first.path());
    if let Some(query) = first.query() {
        text.push('?');
        text.push_str(query);
    }
    text
}

/// The seed nodes' URLs of a Redis Cluster URL without `prefix=`, and the prefix it named.
#[cfg(feature = "redis-cluster")]
pub(crate) fn redis_cluster_parts(text: &str) -> Result<(Vec<String>, Option<String>)> {
    let mut prefix = None;
    let mut urls = Vec::new();
    for node in redis_cluster_nodes(text)? {
        let (url, node_prefix) = redis_parts(node.as_str())?;
        prefix = node_prefix;
        urls.push(url);
    }
    Ok((urls, prefix))
}

/// `text` with the password of any URL in it replaced by `***`, for messages and logs. Text
/// that does not parse as a URL still loses what sits between `user:` and `@`.
pub fn redact(text: &str) -> String {
    if let Ok(url) = Url::parse(text)
        && url.has_authority()
    {
        return redact_url(&url);
    }
    // Not a URL the parser takes (a bad port, say), but it may still hold a password.
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:{REDACTED}{}", &rest[at..]),
            None => text.to_string(),
        },
        None => text.to_string(),
    }
}

fn redact_url(url: &Url) -> String {
    if url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    // Only URLs that cannot have a password refuse one, and this one has one.
    let _ = shown.set_password(Some(REDACTED));
    shown.to_string()
}

/// The scheme and the rest, when `text` starts with one (see [`StoreUrl::parse`]).
fn split_scheme(text: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = text.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic()
        && scheme.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some((scheme, rest))
}

fn parse_url(text: &str, what: &str) -> Result<Url> {
    Url::parse(text)
        .map_err(|error| Error::Config(format!("invalid {what} URL `{}`: {error}", redact(text))))
}

/// The decoded query parameters of `url`. Refuses a parameter given twice (which one would
/// win is a guess) and, when `allowed` is given, any parameter not in it.
pub(crate) fn query_params(
    url: &Url,
    allowed: Option<&[&str]>,
) -> Result<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    for (key, value) in url.query_pairs() {
        if let Some(allowed) = allowed
            && !allowed.contains(&key.as_ref())
        {
            return Err(Error::Config(format!(
                "unknown parameter `{key}` in store URL `{}` (expected one of: {})",
                redact_url(url),
                allowed.join(", ")
            )));
        }
        if params.insert(key.to_string(), value.into_owned()).is_some() {
            return Err(Error::Config(format!(
                "parameter `{key}` is given twice in store URL `{}`",
                redact_url(url)
            )));
        }
    }
    Ok(params)
}

/// `url` without the parameters in `take`, and the values taken out. The rest is left for
/// the backend's own client, which would refuse (PostgreSQL) or ignore (Redis) ours.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn take_params(
    text: &str,
    what: &str,
    allowed: Option<&[&str]>,
    take: &[&str],
) -> Result<(String, BTreeMap<String, String>)> {
    let mut url = parse_url(text, what)?;
    let params = query_params(&url, allowed)?;
    let (taken, kept): (BTreeMap<_, _>, BTreeMap<_, _>) = params
        .into_iter()
        .partition(|(key, _)| take.contains(&key.as_str()));
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((url.to_string(), taken))
}

/// A Redis URL without `prefix=`, and the prefix it named.
#[cfg(feature = "redis")]
pub(crate) fn redis_parts(text: &str) -> Result<(String, Option<String>)> {
    let (url, mut taken) = take_params(text, "Redis", Some(REDIS_PARAMS), &["prefix"])?;
    Ok((url, taken.remove("prefix")))
}

/// A PostgreSQL URL without `table=` and `schema=`, and what they named. Key-value
/// connection strings (`host=… user=…`) are passed through untouched.
#[cfg(feature = "postgres")]
pub(crate) fn postgres_parts(text: &str) -> Result<(String, Option<String>, Option<String>)> {
    if !text.contains("://") {
        return Ok((text.to_string(), None, None));
    }
    let (url, mut taken) = take_params(
        text,
        "PostgreSQL",
        Some(POSTGRES_PARAMS),
        &["table", "schema"],
    )?;
    Ok((url, taken.remove("table"), taken.remove("schema")))
}

#[cfg(test)]
mod tests;
