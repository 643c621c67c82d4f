//! Submitting a batch: its children first, then the parent that rolls them up.

use futures_util::StreamExt;
use futures_util::stream;

use crate::error::{Error, Result};
use crate::jobs::batch::{
    BatchRollup, FailurePolicy, StateCounts, child_id, reconcile_batch, validate_batch,
};
use crate::jobs::{status_of, submit, value_of};
use crate::record::Record;
use crate::status::{Progress, SyncStatus};
use crate::storage::{PutMode, SyncStorage};

/// How many children are written at once.
const CONCURRENT_WRITES: usize = 16;

/// Submits batch `id`: each of `children` (pending statuses) becomes the job `<id>.<n>`
/// (from 1, in order), then the parent record `id` is created to roll them up, and a first
/// reconcile runs. Submitting again with the same id creates what is missing (after a crash
/// in between) and returns the parent unchanged, so a batch runs once.
///
/// The children are written before the parent, so a parent always has all its children
/// (a child that later disappears counts as missing). A child id held by a record that is
/// not this batch's child is refused with [`Error::AlreadyExists`]; an empty or over-long
/// batch, or a child that is not pending, with [`Error::InvalidStatus`]; a batch id over
/// [`MAX_BATCH_ID_LEN`](crate::jobs::batch::MAX_BATCH_ID_LEN) bytes with
/// [`Error::InvalidId`].
pub async fn submit_batch(
    store: &dyn SyncStorage,
    id: &str,
    children: Vec<SyncStatus>,
    policy: FailurePolicy,
) -> Result<Record> {
    let size = children.len() as u64;
    validate_batch(id, size)?;
    if let Some(existing) = store.get(id).await? {
        return existing_batch(existing);
    }
    let mut progress = Progress::new(0, 0);
    let mut writes = Vec::with_capacity(children.len());
    for (n, mut child) in (1..).zip(children) {
        let child_id = child_id(id, n);
        if child.batch.is_some() {
            return Err(Error::InvalidStatus {
                id: child_id,
                reason: "a batch's child cannot be a batch".into(),
            });
        }
        child.parent = Some(id.to_string());
        let contribution = super::child_progress(&child);
        progress.done = progress.done.saturating_add(contribution.done);
        progress.total = Some(
            progress
                .total
                .unwrap_or(0)
                .saturating_add(contribution.total.unwrap_or(0)),
        );
        writes.push((child_id, child));
    }
    let mut written = stream::iter(writes)
        .map(|(child_id, child)| async move {
            let record = submit(store, &child_id, child).await?;
            let status = status_of(&record)?;
            if status.parent.as_deref() != Some(id) {
                return Err(Error::AlreadyExists {
                    id: child_id,
                    version: record.version,
                });
            }
            Ok(())
        })
        .buffer_unordered(CONCURRENT_WRITES);
    while let Some(child) = written.next().await {
        child?;
    }
    let mut parent = SyncStatus::pending();
    parent.progress = Some(progress);
    parent.batch = Some(BatchRollup {
        size,
        counts: StateCounts {
            pending: size,
            ..StateCounts::default()
        },
        policy,
        retried_at: None,
    });
    match store.put(id, value_of(id, &parent)?, PutMode::Create).await {
        Ok(_) => {}
        Err(Error::AlreadyExists { .. }) => {
            if let Some(existing) = store.get(id).await? {
                return existing_batch(existing);
            }
        }
        Err(error) => return Err(error),
    }
    reconcile_batch(store, id).await
}

/// The batch already there, or [`Error::AlreadyExists`] if the id holds something else.
fn existing_batch(existing: Record) -> Result<Record> {
    if super::is_batch(&existing) {
        Ok(existing)
    } else {
        Err(Error::AlreadyExists {
            id: existing.id,
            version: existing.version,
        })
    }
}
