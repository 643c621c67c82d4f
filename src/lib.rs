// The README is the crate's documentation (docs.rs shows the file format, the contracts, the
// backends and the CLI), and its examples run as doctests.
#![doc = include_str!("../README.md")]
// On docs.rs (nightly), every item gated on a feature carries a badge naming it.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod error;
pub mod file;
mod id;
pub mod lifecycle;
mod memory;
mod record;
mod status;
mod storage;
mod ttl;
mod typed;
mod watch;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod http;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

use std::sync::Arc;

pub use error::{Error, Location, Result};
pub use file::{Durability, FileStorage, FileStorageBuilder, WatchMode};
pub use id::{MAX_ID_LEN, validate_id};
pub use lifecycle::{
    DEFAULT_STALE_AFTER, Idempotency, InProgressPolicy, RecoveredJob, RecoveryAction,
    RecoveryPolicy, RecoveryReport, RunError, Stats, Sweeper, SweeperConfig, heartbeat,
    recover_job, recover_stale, stats,
};
pub use memory::MemoryStorage;
pub use record::{Clock, ManualClock, Record, SharedClock, SystemClock, Timestamp, state_of};
pub use status::{Progress, State, SyncStatus};
pub use storage::{
    CleanupOptions, CleanupProblem, CleanupReport, DynSyncStorage, ListFilter, Listing, LockGuard,
    PutMode, SyncStorage, SyncStorageExt, UpdateFn, WatchEvent, WatchOptions, WatchSelector,
    WatchStream, update_optimistically,
};
pub use ttl::{DEFAULT_TTL, TtlPolicy};
pub use typed::{StatusStore, SyncStatusStore, TypedRecord};

/// The store URL used when none is given: `file:./data/sync-status`.
pub const DEFAULT_STORE_URL: &str = "file:./data/sync-status";

/// Opens a store by URL, with default settings:
///
/// - `file:./data/sync-status`, `file:/abs/dir`, `file:///abs/dir`: a [`FileStorage`];
/// - `memory:`: a new, empty [`MemoryStorage`];
/// - `redis://host:port/db` (feature `redis`): see `redis::RedisStorage`;
/// - `postgres://…` or `postgresql://…` (feature `postgres`): see `postgres::PostgresStorage`.
pub async fn open(url: &str) -> Result<DynSyncStorage> {
    let (scheme, rest) = url.split_once(':').ok_or_else(|| {
        Error::Config(format!(
            "store URL `{url}` has no scheme (expected file:, memory:, redis:// or postgres://)"
        ))
    })?;
    match scheme {
        "file" => {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(Error::Config(format!(
                    "store URL `{url}` names no directory"
                )));
            }
            let dir = std::path::PathBuf::from(path);
            let store = tokio::task::spawn_blocking(move || FileStorage::open(dir))
                .await
                .map_err(|e| Error::backend("file", e))??;
            Ok(Arc::new(store))
        }
        "memory" => Ok(Arc::new(MemoryStorage::new())),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Arc::new(redis::RedisStorage::open(url).await?)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(postgres::PostgresStorage::open(url).await?)),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" => Err(Error::Config(format!(
            "store URL `{url}` needs syncstatus built with the `redis` feature"
        ))),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(Error::Config(format!(
            "store URL `{url}` needs syncstatus built with the `postgres` feature"
        ))),
        other => Err(Error::Config(format!(
            "unknown store scheme `{other}:` in `{url}` (expected file:, memory:, redis:// or postgres://)"
        ))),
    }
}
