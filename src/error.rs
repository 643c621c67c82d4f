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
    #[error("corrupt record `{id}` in {path}: {source}")]
    Corrupt {
        /// The id whose record is corrupt.
        id: String,
        /// Where it is stored (a file path, a key, a table row).
        path: PathBuf,
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

    /// True for [`Error::VersionConflict`] and [`Error::AlreadyExists`]: a retry may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::VersionConflict { .. } | Error::AlreadyExists { .. }
        )
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
