//! Acting on a batch as a whole: cancel it, retry what failed, retry one child.

use crate::error::{Error, Result};
use crate::jobs::batch::rollup::read_children;
use crate::jobs::batch::{BatchRollup, child_id, reconcile_batch};
use crate::jobs::control::retry_job;
use crate::jobs::{status_of, value_of};
use crate::record::Record;
use crate::status::{State, SyncStatus};
use crate::storage::SyncStorage;

/// The rollup of a parent's status, or [`Error::InvalidStatus`] if it is not a batch.
fn rollup_of<'a>(id: &str, status: &'a mut SyncStatus) -> Result<&'a mut BatchRollup> {
    status.batch.as_mut().ok_or_else(|| Error::InvalidStatus {
        id: id.to_string(),
        reason: "it is not a batch".into(),
    })
}

/// Cancels batch `id`: its pending children are cancelled at once, its running ones asked to
/// stop (each ends cancelled within one heartbeat interval of its worker), completed ones are
/// kept. The batch ends cancelled once no child runs. Returns the parent as rolled up after
/// the pending children were cancelled. [`jobs::cancel`](crate::jobs::cancel) of a batch's id
/// does this.
///
/// [`Error::NotFound`] if there is no such record, [`Error::InvalidStatus`] if it is not a
/// batch, [`Error::InvalidTransition`] if the batch already ended.
pub async fn cancel_batch(store: &dyn SyncStorage, id: &str) -> Result<Record> {
    store
        .update(id, &mut |current: Option<&Record>| {
            let record = current.ok_or_else(|| Error::NotFound { id: id.to_string() })?;
            let mut status = status_of(record)?;
            rollup_of(id, &mut status)?;
            if status.state.is_terminal() {
                return Err(Error::InvalidTransition {
                    id: id.to_string(),
                    action: "cancel",
                    state: status.state.to_string(),
                });
            }
            status.cancel_requested = true;
            value_of(id, &status)
        })
        .await?;
    // The reconcile stops the children the parent's cancel request covers.
    reconcile_batch(store, id).await
}

/// Marks the parent as being retried now: a cancel asked of the batch is withdrawn, and a
/// fail-fast batch stops only for failures after this.
async fn note_retry(store: &dyn SyncStorage, id: &str) -> Result<Record> {
    let now = store.clock().now();
    store
        .update(id, &mut |current: Option<&Record>| {
            let record = current.ok_or_else(|| Error::NotFound { id: id.to_string() })?;
            let mut status = status_of(record)?;
            rollup_of(id, &mut status)?.retried_at = Some(now);
            status.cancel_requested = false;
            value_of(id, &status)
        })
        .await
}

fn retryable(state: State) -> bool {
    matches!(state, State::Failed | State::Cancelled)
}

/// Retries every failed or cancelled child of batch `id` (each as
/// [`jobs::retry`](crate::jobs::retry) does: history, progress and checkpoint kept), keeps
/// the completed ones, withdraws a cancel asked of the batch, and returns the parent rolled
/// up after. [`jobs::retry`](crate::jobs::retry) of a batch's id does this.
///
/// [`Error::NotFound`] if there is no such record, [`Error::InvalidStatus`] if it is not a
/// batch, [`Error::InvalidTransition`] if no child failed or was cancelled.
pub async fn retry_batch(store: &dyn SyncStorage, id: &str) -> Result<Record> {
    let parent = store
        .get(id)
        .await?
        .ok_or_else(|| Error::NotFound { id: id.to_string() })?;
    let mut status = status_of(&parent)?;
    let size = rollup_of(id, &mut status)?.size;
    let children = read_children(store, id, size).await?;
    let to_retry: Vec<u64> = children
        .present
        .iter()
        .filter(|(_, child)| retryable(child.state))
        .map(|(n, _)| *n)
        .collect();
    if to_retry.is_empty() {
        return Err(Error::InvalidTransition {
            id: id.to_string(),
            action: "retry",
            state: format!("{} with no failed or cancelled child", status.state),
        });
    }
    // The parent first: a reconcile in between must not cancel the retried children again.
    note_retry(store, id).await?;
    for n in to_retry {
        let child = child_id(id, n);
        match retry_job(store, &child).await {
            // Retried meanwhile by someone else: nothing left to do for it.
            Ok(_) | Err(Error::InvalidTransition { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    reconcile_batch(store, id).await
}

/// Retries child `n` of batch `batch` (failed or cancelled) and returns the child; the
/// parent is rolled up again. [`jobs::retry`](crate::jobs::retry) of a child's id does this.
///
/// [`Error::NotFound`] if the batch or the child is missing, [`Error::InvalidStatus`] if
/// `batch` is not a batch, [`Error::InvalidTransition`] if the child is not failed or
/// cancelled.
pub async fn retry_child(store: &dyn SyncStorage, batch: &str, n: u64) -> Result<Record> {
    let id = child_id(batch, n);
    let child = store
        .get(&id)
        .await?
        .ok_or_else(|| Error::NotFound { id: id.clone() })?;
    let state = status_of(&child)?.state;
    if !retryable(state) {
        return Err(Error::InvalidTransition {
            id,
            action: "retry",
            state: state.to_string(),
        });
    }
    note_retry(store, batch).await?;
    let retried = retry_job(store, &id).await?;
    reconcile_batch(store, batch).await?;
    Ok(retried)
}
