//! The worker side of a job's life, on the [`SyncStorage`](crate::SyncStorage) trait so every
//! backend gets it: submit, claim (fenced), heartbeat, progress and checkpoints, cancel, retry,
//! graceful requeue, progress-aware give-up and an attempt history in the record; and
//! [batches](batch) whose parent rolls up its children.
//!
//! A [`Runtime`] runs one job function. Its supervisor claims pending jobs (woken by the
//! store's watch), recovers jobs whose worker stopped heartbeating, and gives each claimed job
//! a [`JobHandle`]. The handle heartbeats on its own while the job runs and fences every write
//! with the lease stored in the record at the claim: a worker that lost its job (it froze,
//! was presumed dead, and another worker claimed the job) gets [`Error::LostOwnership`] from
//! its next write and can never write over the new owner.
//!
//! Restarts are not failures:
//! - [`Runtime::shutdown`] (wire it to SIGTERM and Ctrl-C) requeues running jobs at once and
//!   counts nothing against them;
//! - a crash (no heartbeat for `stale_after`) counts only when the attempt advanced neither
//!   its progress nor its checkpoint; the job fails after
//!   [`RuntimeConfig::with_max_crashes`] such attempts in a row (default 3).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> syncstatus::Result<()> {
//! use std::sync::Arc;
//! use syncstatus::jobs::{Runtime, RuntimeConfig};
//! use syncstatus::{MemoryStorage, Progress, SyncStatus, SyncStorageExt};
//!
//! let store: syncstatus::DynSyncStorage = Arc::new(MemoryStorage::new());
//! let runtime = Runtime::start(store.clone(), RuntimeConfig::default(), |job| async move {
//!     // Resume where the last attempt left off.
//!     let mut page = job.checkpoint().and_then(|c| c.as_u64()).unwrap_or(0);
//!     while page < 3 {
//!         page += 1;
//!         job.save_checkpoint(serde_json::json!(page), Some(Progress::new(page, 3))).await?;
//!     }
//!     Ok(serde_json::json!({ "pages": page }))
//! });
//! runtime.submit("import-1", SyncStatus::pending()).await?;
//! loop {
//!     let record = store.get_required("import-1").await?;
//!     if record.state() == Some("completed") {
//!         break;
//!     }
//!     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
//! }
//! runtime.shutdown().await;
//! # Ok(()) }
//! ```

pub mod batch;
mod claim;
mod control;
mod handle;
mod history;
mod runtime;

pub use batch::{
    BatchRollup, FailurePolicy, StateCounts, cancel_batch, child_id, child_progress,
    reconcile_batch, retry_batch, retry_child, submit_batch,
};
pub use control::{cancel, retry, submit};
pub use handle::{JobHandle, StopReason};
pub(crate) use history::close_last;
pub use history::{Attempt, AttemptEnd, DEFAULT_HISTORY_LIMIT};
pub use runtime::{BoxError, DEFAULT_BATCH_EVERY, Runtime, RuntimeConfig};

use crate::error::{Error, Result};
use crate::record::Record;
use crate::status::SyncStatus;

/// The record's status as a [`SyncStatus`], or [`Error::InvalidStatus`] naming the id.
pub(crate) fn status_of(record: &Record) -> Result<SyncStatus> {
    serde_json::from_value(record.status.clone()).map_err(|error| Error::InvalidStatus {
        id: record.id.clone(),
        reason: format!("it is not a job status: {error}"),
    })
}

/// The JSON of a status being written.
pub(crate) fn value_of(id: &str, status: &SyncStatus) -> Result<serde_json::Value> {
    serde_json::to_value(status).map_err(|source| Error::Serde {
        id: id.to_string(),
        source,
    })
}
