//! Claiming a pending job: compare-and-set pending to running with a fresh lease.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::jobs::history::{Attempt, AttemptEnd, close_last, push_bounded};
use crate::jobs::{status_of, value_of};
use crate::record::{Record, Timestamp};
use crate::status::{State, SyncStatus};
use crate::storage::SyncStorage;

/// A token no other claim (of this or another process) carries.
pub(crate) fn new_lease() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}-{:x}-{}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A job this worker now owns.
pub(crate) struct Claimed {
    pub(crate) record: Record,
    pub(crate) status: SyncStatus,
    pub(crate) lease: String,
}

/// Claims `id` if it is pending and no cancel was asked: it becomes running, owned by a new
/// lease, with a new open attempt in its history. `Ok(None)` when it is not claimable (gone,
/// not pending, or another worker was first).
pub(crate) async fn claim(
    store: &dyn SyncStorage,
    id: &str,
    history_limit: usize,
) -> Result<Option<Claimed>> {
    let now = store.clock().now();
    let lease = new_lease();
    let mut claimed = None;
    let written = store
        .update(id, &mut |current: Option<&Record>| {
            let record = current.ok_or_else(|| Error::NotFound { id: id.to_string() })?;
            let status = status_of(record)?;
            // A batch's parent runs nothing itself: its children are the jobs.
            if status.state != State::Pending || status.cancel_requested || status.batch.is_some() {
                return Err(Error::InvalidTransition {
                    id: id.to_string(),
                    action: "claim",
                    state: status.state.to_string(),
                });
            }
            let status = started(status, now, &lease, history_limit);
            let value = value_of(id, &status)?;
            claimed = Some(status);
            Ok(value)
        })
        .await;
    match (written, claimed) {
        (Ok(record), Some(status)) => Ok(Some(Claimed {
            record,
            status,
            lease,
        })),
        (Ok(record), None) => Err(Error::InvalidStatus {
            id: record.id,
            reason: "the store wrote a claim the claim did not make".into(),
        }),
        (Err(Error::NotFound { .. } | Error::InvalidTransition { .. }), _) => Ok(None),
        (Err(error), _) => Err(error),
    }
}

fn started(mut status: SyncStatus, now: Timestamp, lease: &str, limit: usize) -> SyncStatus {
    // An attempt still open here was requeued by something that keeps no history.
    close_last(&mut status.history, AttemptEnd::Lost, now, status.progress);
    let mut status = status.start(now);
    status.lease = Some(lease.to_string());
    let attempt = Attempt {
        attempt: status.attempt,
        lease: Some(lease.to_string()),
        started_at: now,
        ended_at: None,
        outcome: None,
        progress_at_start: status.progress,
        progress: status.progress,
        advanced: false,
    };
    push_bounded(&mut status.history, attempt, limit);
    status
}
