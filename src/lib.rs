// The README is the crate's documentation (docs.rs shows the file format, the contracts, the
// backends and the CLI), and its examples run as doctests.
#![doc = include_str!("../README.md")]
// On docs.rs (nightly), every item gated on a feature carries a badge naming it.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod error;
pub mod file;
mod id;
pub mod jobs;
pub mod lifecycle;
mod memory;
mod record;
mod status;
mod storage;
pub mod store_url;
mod task;
#[cfg(any(feature = "redis-tls", feature = "postgres-tls"))]
mod tls;
mod ttl;
mod typed;
mod watch;
mod write;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod http;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

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
pub use status::{MAX_STATE_LEN, Progress, State, SyncStatus, validate_state};
pub use storage::{
    CleanupOptions, CleanupProblem, CleanupReport, DEFAULT_MAX_RECORD_SIZE, DynSyncStorage,
    ListFilter, Listing, LockGuard, PutMode, ScanFn, SyncStorage, SyncStorageExt, UpdateFn,
    WatchEvent, WatchOptions, WatchSelector, WatchStream, update_optimistically,
};
pub use store_url::StoreUrl;
pub use ttl::{DEFAULT_TTL, TtlPolicy};
pub use typed::{StatusStore, SyncStatusStore, TypedRecord};

/// The store URL used when none is given: `file:./data/sync-status`.
pub const DEFAULT_STORE_URL: &str = "file:./data/sync-status";

/// Opens a store by URL, with default settings:
///
/// - `file:./data/sync-status`, `file:/abs/dir`, `file:///abs/dir`, or a bare path
///   (`./data/sync-status`, `/abs/dir`): a [`FileStorage`], its directory created if missing;
/// - `memory:`: a new, empty [`MemoryStorage`];
/// - `redis://host:port/db` (feature `redis`): see `redis::RedisStorage`;
/// - `postgres://…` or `postgresql://…` (feature `postgres`): see `postgres::PostgresStorage`.
///
/// A bad URL is an [`Error::Config`] that shows the URL without its password. See
/// [`StoreUrl`] for the rules and [`StoreUrl::open_existing`] to open a file store only if
/// its directory exists.
pub async fn open(url: &str) -> Result<DynSyncStorage> {
    StoreUrl::parse(url)?.open().await
}
