//! What anyone (another process, the CLI, an admin route) does to a job through the store:
//! submit, cancel, retry.

use crate::error::{Error, Result};
use crate::jobs::{batch, status_of, value_of};
use crate::record::Record;
use crate::status::{State, SyncStatus};
use crate::storage::{PutMode, SyncStorage};

/// Stores `status` (which must be pending) as the new job `id`, unless a record of `id`
/// exists: then that record is returned unchanged, so submitting twice runs the job once.
///
/// [`Error::InvalidStatus`] if `status` is not pending.
pub async fn submit(store: &dyn SyncStorage, id: &str, status: SyncStatus) -> Result<Record> {
    if status.state != State::Pending {
        return Err(Error::InvalidStatus {
            id: id.to_string(),
            reason: format!("a job is submitted pending, not {}", status.state),
        });
    }
    let value = value_of(id, &status)?;
    // A record that exists when the create fails may expire before the read; then try again.
    for _ in 0..3 {
        match store.put(id, value.clone(), PutMode::Create).await {
            Err(Error::AlreadyExists { .. }) => {
                if let Some(existing) = store.get(id).await? {
                    return Ok(existing);
                }
            }
            other => return other,
        }
    }
    store.put(id, value, PutMode::Create).await
}

/// Cancels job `id`: a pending job becomes cancelled at once; a running one gets a cancel
/// request that its worker sees within one heartbeat interval, and it ends cancelled with its
/// progress kept (or recovery cancels it if the worker is gone). Cancelling a job already
/// asked to cancel changes nothing more. A batch's id cancels the batch
/// ([`cancel_batch`](crate::jobs::batch::cancel_batch)).
///
/// [`Error::NotFound`] if there is no such job, [`Error::InvalidTransition`] if it already
/// ended, [`Error::InvalidStatus`] if the record is not a job status.
pub async fn cancel(store: &dyn SyncStorage, id: &str) -> Result<Record> {
    match store.get(id).await? {
        Some(record) if batch::is_batch(&record) => batch::cancel_batch(store, id).await,
        _ => cancel_job(store, id).await,
    }
}

/// [`cancel`] of a job that is not a batch.
pub(crate) async fn cancel_job(store: &dyn SyncStorage, id: &str) -> Result<Record> {
    let now = store.clock().now();
    store
        .update(id, &mut |current: Option<&Record>| {
            let record = current.ok_or_else(|| Error::NotFound { id: id.to_string() })?;
            let mut status = status_of(record)?;
            match status.state {
                State::Pending => {
                    status = status.cancel(now);
                    status.message = Some("cancelled before it ran".into());
                }
                State::Running => status.cancel_requested = true,
                State::Completed | State::Partial | State::Failed | State::Cancelled => {
                    return Err(Error::InvalidTransition {
                        id: id.to_string(),
                        action: "cancel",
                        state: status.state.to_string(),
                    });
                }
            }
            value_of(id, &status)
        })
        .await
}

/// Puts a failed or cancelled job `id` back to pending for a new attempt, with its history,
/// progress and checkpoint kept and its count of crashes reset. A batch's id retries the
/// batch's failed and cancelled children ([`retry_batch`](crate::jobs::batch::retry_batch));
/// a batch child's id retries it as [`retry_child`](crate::jobs::batch::retry_child) does.
///
/// [`Error::NotFound`] if there is no such job, [`Error::InvalidTransition`] if it is not
/// failed or cancelled, [`Error::InvalidStatus`] if the record is not a job status.
pub async fn retry(store: &dyn SyncStorage, id: &str) -> Result<Record> {
    let record = store.get(id).await?;
    if let Some(record) = &record {
        if batch::is_batch(record) {
            return batch::retry_batch(store, id).await;
        }
        if let Some(n) = batch::parent_of(record).and_then(|parent| {
            let n = id.strip_prefix(parent)?.strip_prefix('.')?.parse().ok()?;
            Some((parent.to_string(), n))
        }) {
            return batch::retry_child(store, &n.0, n.1).await;
        }
    }
    retry_job(store, id).await
}

/// [`retry`] of one job, whatever batch it is in.
pub(crate) async fn retry_job(store: &dyn SyncStorage, id: &str) -> Result<Record> {
    store
        .update(id, &mut |current: Option<&Record>| {
            let record = current.ok_or_else(|| Error::NotFound { id: id.to_string() })?;
            let mut status = status_of(record)?;
            if !matches!(status.state, State::Failed | State::Cancelled) {
                return Err(Error::InvalidTransition {
                    id: id.to_string(),
                    action: "retry",
                    state: status.state.to_string(),
                });
            }
            status.state = State::Pending;
            status.attempt = status.attempt.saturating_add(1);
            status.crashes = 0;
            status.error = None;
            status.result = None;
            status.finished_at = None;
            status.cancel_requested = false;
            status.lease = None;
            status.message = Some(format!("retry requested for attempt {}", status.attempt));
            value_of(id, &status)
        })
        .await
}
