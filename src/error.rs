//! The one public error type of the crate.

use std::path::PathBuf;

/// Every failure of a store, typed by meaning, with the id or file it concerns.
///
/// Backends keep their own detailed errors as the [`std::error::Error::source`] of
/// [`Error::Backend`], so nothing of the cause is lost.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The id names no record (or only an expired one) where one was required.
    #[error("no record with id `{id}`")]
    NotFound {
        /// The id that was looked up.
        id: String,
    },

    /// A write conditioned on a version found another version.
    #[error("version conflict on `{id}`: expected version {expected}, found {}", found.map_or_else(|| "no record".to_string(), |v| v.to_string()))]
    VersionConflict {
        /// The id written.
        id: String,
        /// The version the caller expected.
        expected: u64,
        /// The version in the store, `None` when the record does not exist.
        found: Option<u64>,
    },

    /// A create-only write found a record already there.
    #[error("record `{id}` already exists (version {version})")]
    AlreadyExists {
        /// The id written.
        id: String,
        /// The version of the record in the way.
        version: u64,
    },

    /// The id is not allowed: it could escape the store or is not portable.
    #[error("invalid id `{id}`: {reason}")]
    InvalidId {
        /// The id as given (control characters escaped by `Debug` where printed).
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A stored record could not be understood.
    #[error("corrupt record `{id}` in {location}: {source}")]
    Corrupt {
        /// The id whose record is corrupt.
        id: String,
        /// Where it is stored.
        location: Location,
        /// What was wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A file system operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The status value could not be converted to or from the caller's type.
    #[error("status of `{id}` does not fit the requested type: {source}")]
    Serde {
        /// The id concerned.
        id: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },

    /// Invalid configuration or argument (a store URL, a duration, an option).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The operation is not supported by this backend.
    #[error("{store} does not support {operation}")]
    NotSupported {
        /// Which backend.
        store: &'static str,
        /// What was asked.
        operation: &'static str,
    },

    /// The record is not in a state that allows the operation (a job that is completed, not
    /// running; a retry of a job that has not failed).
    #[error("cannot {action} `{id}`: it is {state}")]
    InvalidTransition {
        /// The id concerned.
        id: String,
        /// What was asked (`"recover"`, `"cancel"`, `"retry"`, ...).
        action: &'static str,
        /// The state it is in (`"completed"`, or `"not a job status"`).
        state: String,
    },

    /// The stored status does not have the shape the operation needs (not a JSON object, or
    /// fields of the wrong type).
    #[error("status of `{id}` cannot be used: {reason}")]
    InvalidStatus {
        /// The id concerned.
        id: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An update closure refused to go on with its own error, which is kept as the source.
    #[error("update of `{id}` aborted: {source}")]
    Aborted {
        /// The id being updated.
        id: String,
        /// The closure's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A worker's write was refused because the job is no longer its own: another worker
    /// claimed it (the worker was presumed dead) or it was requeued. The worker must stop.
    #[error("job `{id}` is no longer owned by this worker (lease {lease}): {reason}")]
    LostOwnership {
        /// The job's id.
        id: String,
        /// The fencing token the worker held.
        lease: String,
        /// What happened to the job.
        reason: String,
    },

    /// The job was cancelled; the worker's writes are refused and it should stop.
    #[error("job `{id}` was cancelled")]
    Cancelled {
        /// The job's id.
        id: String,
    },

    /// A lock held by another task or process was not released in time.
    #[error("timed out after {waited:?} waiting for the lock of `{id}`")]
    LockTimeout {
        /// The id (or lock name) waited for.
        id: String,
        /// How long it waited.
        waited: std::time::Duration,
    },

    /// A record at the highest version cannot be written again.
    #[error("record `{id}` is at the highest version ({version}) and cannot be written again")]
    VersionExhausted {
        /// The id concerned.
        id: String,
        /// Its version.
        version: u64,
    },

    /// A record is larger than the store's limit; it was neither written nor read.
    #[error("record `{id}` is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The id concerned.
        id: String,
        /// Its size in bytes (of the serialized record).
        size: u64,
        /// The store's limit.
        limit: u64,
    },

    /// The work of an idempotency key is being done by another caller right now.
    #[error("work for key `{key}` is in progress elsewhere")]
    InProgress {
        /// The idempotency key.
        key: String,
    },

    /// A backend (a server, a connection, a watcher) failed.
    #[error("{store} error: {source}")]
    Backend {
        /// Which backend.
        store: &'static str,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Wraps a backend error.
    pub fn backend(
        store: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Backend {
            store,
            source: source.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps the own error of an update closure ([`Error::Aborted`]).
    pub fn aborted(
        id: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Aborted {
            id: id.into(),
            source: source.into(),
        }
    }

    /// True for [`Error::VersionConflict`] and [`Error::AlreadyExists`]: a retry may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::VersionConflict { .. } | Error::AlreadyExists { .. }
        )
    }
}

/// Where a record is stored, for errors that must name it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location {
    /// A file of the file store.
    File(PathBuf),
    /// A Redis key.
    RedisKey(String),
    /// A row of a PostgreSQL table.
    PostgresRow {
        /// The schema-qualified table.
        table: String,
    },
    /// The memory store.
    Memory,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => write!(f, "file {}", path.display()),
            Location::RedisKey(key) => write!(f, "Redis key `{key}`"),
            Location::PostgresRow { table } => write!(f, "a row of PostgreSQL table {table}"),
            Location::Memory => f.write_str("the memory store"),
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
