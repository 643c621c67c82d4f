//! The rollup: a batch's counts, summed progress and state computed from its children, and
//! the reconcile that writes it.

use crate::error::{Error, Result};
use crate::jobs::batch::{BatchRollup, FailurePolicy, StateCounts, child_id};
use crate::jobs::control::cancel_job;
use crate::jobs::{status_of, value_of};
use crate::record::{Record, Timestamp};
use crate::status::{Progress, State, SyncStatus};
use crate::storage::{ListFilter, PutMode, SyncStorage};

/// How often a reconcile starts again when the parent was written meanwhile.
const MAX_ATTEMPTS: usize = 8;

/// What one child adds to its batch's summed progress: its own progress, bounded by its
/// total; a child without a known total counts as 0 of 1, or 1 of 1 once completed.
pub fn child_progress(child: &SyncStatus) -> Progress {
    match child.progress {
        Some(Progress {
            done,
            total: Some(total),
        }) => Progress::new(done.min(total), total),
        _ => Progress::new(u64::from(child.state == State::Completed), 1),
    }
}

/// The children of a batch as read now: the status of each child present, by number.
pub(crate) struct Children {
    pub(crate) present: Vec<(u64, SyncStatus)>,
}

/// Lists the children of `batch` (numbers 1 to `size` whose `parent` is `batch`). A child
/// that cannot be read is left out (it counts as missing) and logged.
pub(crate) async fn read_children(
    store: &dyn SyncStorage,
    batch: &str,
    size: u64,
) -> Result<Children> {
    let prefix = format!("{batch}.");
    let listing = store
        .list(&ListFilter {
            state: None,
            prefix: Some(prefix.clone()),
        })
        .await?;
    for error in &listing.errors {
        tracing::warn!(%batch, %error, "a child of the batch cannot be read");
    }
    let mut present = Vec::with_capacity(listing.records.len());
    for record in &listing.records {
        let Some(n) = record.id[prefix.len()..]
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=size).contains(n) && child_id(batch, *n) == record.id)
        else {
            continue;
        };
        match status_of(record) {
            Ok(status) if status.parent.as_deref() == Some(batch) => present.push((n, status)),
            Ok(_) => {}
            Err(error) => tracing::warn!(%batch, %error, "a child of the batch is not a job"),
        }
    }
    Ok(Children { present })
}

/// Whether the batch must stop its children: cancelled, or a fail-fast batch with a child
/// that failed since the last retry.
fn must_stop(parent: &SyncStatus, rollup: &BatchRollup, children: &Children) -> bool {
    parent.cancel_requested
        || (rollup.policy == FailurePolicy::FailFast
            && children.present.iter().any(|(_, child)| {
                child.state == State::Failed
                    && rollup
                        .retried_at
                        .is_none_or(|retried| child.finished_at.is_none_or(|at| at > retried))
            }))
}

/// The parent's status after rolling `children` up into it at `now`. Pure: equal inputs give
/// an equal status, so an unchanged batch is not written again.
pub(crate) fn rolled_up(
    mut parent: SyncStatus,
    rollup: BatchRollup,
    children: &Children,
    now: Timestamp,
) -> SyncStatus {
    let mut counts = StateCounts::default();
    let (mut done, mut total) = (0u64, 0u64);
    for (_, child) in &children.present {
        counts.add(child.state);
        let progress = child_progress(child);
        done = done.saturating_add(progress.done);
        total = total.saturating_add(progress.total.unwrap_or(0));
    }
    let present = children.present.len() as u64;
    counts.missing = rollup.size.saturating_sub(present);
    // A missing child still weighs one unit in the bar, so the bar never jumps to full.
    total = total.saturating_add(counts.missing);
    let stopping = must_stop(&parent, &rollup, children);
    let state = if counts.active() > 0 {
        if counts.pending == rollup.size {
            State::Pending
        } else {
            State::Running
        }
    } else if parent.cancel_requested {
        State::Cancelled
    } else if rollup.policy == FailurePolicy::FailFast && counts.failed > 0 {
        State::Failed
    } else if counts.completed == rollup.size {
        State::Completed
    } else if counts.completed > 0 {
        State::Partial
    } else if counts.cancelled == rollup.size {
        State::Cancelled
    } else {
        State::Failed
    };
    if state != State::Pending && parent.started_at.is_none() {
        parent.started_at = Some(now);
    }
    parent.finished_at = if state.is_terminal() {
        parent
            .finished_at
            .filter(|_| parent.state.is_terminal())
            .or(Some(now))
    } else {
        None
    };
    let not_completed = counts.failed + counts.missing;
    parent.error = match state {
        State::Failed | State::Partial if not_completed > 0 => Some(format!(
            "{not_completed} of {} children failed or are gone",
            rollup.size
        )),
        _ => None,
    };
    parent.message = Some(summary(
        &counts,
        rollup.size,
        stopping && !state.is_terminal(),
    ));
    parent.state = state;
    parent.progress = Some(Progress::new(done, total));
    parent.batch = Some(BatchRollup { counts, ..rollup });
    parent
}

fn summary(counts: &StateCounts, size: u64, stopping: bool) -> String {
    let stopping = if stopping { "; stopping" } else { "" };
    format!("{size} children: {counts}{stopping}")
}

/// Rolls the children of batch `id` up into its parent record now and returns the parent.
/// The parent is read first, then the children, and the rollup is written only on the
/// version read (see the [module docs](crate::jobs::batch) for what that guarantees); it is
/// not written when nothing changed. A cancelled batch, or a fail-fast batch with a new
/// failure, has its pending children cancelled and its running ones asked to stop.
///
/// [`Error::NotFound`] if there is no such record, [`Error::InvalidStatus`] if it is not a
/// batch, [`Error::VersionConflict`] if the parent kept changing under every attempt.
pub async fn reconcile_batch(store: &dyn SyncStorage, id: &str) -> Result<Record> {
    let mut last_version = 0;
    for _ in 0..MAX_ATTEMPTS {
        let parent = store
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.to_string() })?;
        last_version = parent.version;
        let status = status_of(&parent)?;
        let Some(rollup) = status.batch.clone() else {
            return Err(Error::InvalidStatus {
                id: id.to_string(),
                reason: "it is not a batch".into(),
            });
        };
        let children = read_children(store, id, rollup.size).await?;
        let stop = must_stop(&status, &rollup, &children);
        let next = rolled_up(status.clone(), rollup, &children, store.clock().now());
        let written = if next == status {
            parent
        } else {
            match store
                .put(id, value_of(id, &next)?, PutMode::Update(parent.version))
                .await
            {
                Ok(written) => written,
                Err(error) if error.is_conflict() => continue,
                Err(error) => return Err(error),
            }
        };
        // Children just stopped change the counts: roll up again, so the caller (a cancel)
        // gets the batch with its pending children cancelled. Also when another reconcile
        // stopped them first: the counts just written are then as stale as ours.
        if stop && stop_children(store, id, &children).await > 0 {
            continue;
        }
        return Ok(written);
    }
    Err(Error::VersionConflict {
        id: id.to_string(),
        expected: last_version,
        found: None,
    })
}

/// Cancels the children that are still to end and not yet asked to: pending ones at once,
/// running ones by a cancel request their worker sees. Children already asked are skipped,
/// so a stopping batch writes each child once. Returns how many children read as still to
/// stop have changed since: stopped here, or found ended or gone (by another reconcile, a
/// worker) when this one tried.
async fn stop_children(store: &dyn SyncStorage, batch: &str, children: &Children) -> usize {
    let mut changed = 0;
    for (n, child) in &children.present {
        if child.state.is_terminal() || child.cancel_requested {
            continue;
        }
        let id = child_id(batch, *n);
        match cancel_job(store, &id).await {
            Ok(_) | Err(Error::InvalidTransition { .. } | Error::NotFound { .. }) => changed += 1,
            Err(error) => tracing::warn!(%id, %error, "could not stop a child of the batch"),
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollup(size: u64, policy: FailurePolicy) -> BatchRollup {
        BatchRollup {
            size,
            counts: StateCounts::default(),
            policy,
            retried_at: None,
        }
    }

    fn children(states: &[State]) -> Children {
        let now = Timestamp::from_millis(1);
        Children {
            present: states
                .iter()
                .enumerate()
                .map(|(i, state)| {
                    let mut child = SyncStatus::pending();
                    child.state = *state;
                    if state.is_terminal() {
                        child.finished_at = Some(now);
                    }
                    (i as u64 + 1, child)
                })
                .collect(),
        }
    }

    fn state_of(states: &[State], policy: FailurePolicy) -> State {
        let parent = SyncStatus::pending();
        let size = states.len() as u64;
        rolled_up(
            parent,
            rollup(size, policy),
            &children(states),
            Timestamp::from_millis(2),
        )
        .state
    }

    #[test]
    fn the_end_state_follows_the_children() {
        use State::*;
        let go_on = FailurePolicy::Continue;
        assert_eq!(state_of(&[Completed, Completed], go_on), Completed);
        assert_eq!(state_of(&[Completed, Failed], go_on), Partial);
        assert_eq!(state_of(&[Failed, Failed], go_on), Failed);
        assert_eq!(state_of(&[Cancelled, Cancelled], go_on), Cancelled);
        assert_eq!(state_of(&[Pending, Pending], go_on), Pending);
        assert_eq!(state_of(&[Completed, Pending], go_on), Running);
        assert_eq!(
            state_of(&[Completed, Failed], FailurePolicy::FailFast),
            Failed
        );
    }

    #[test]
    fn a_missing_child_is_not_completed() {
        let parent = SyncStatus::pending();
        let next = rolled_up(
            parent,
            rollup(3, FailurePolicy::Continue),
            &children(&[State::Completed, State::Completed]),
            Timestamp::from_millis(2),
        );
        assert_eq!(next.state, State::Partial);
        assert_eq!(next.batch.unwrap().counts.missing, 1);
        assert_eq!(next.progress, Some(Progress::new(2, 3)));
    }

    #[test]
    fn rolling_up_twice_changes_nothing() {
        let kids = children(&[State::Completed, State::Running, State::Failed]);
        let once = rolled_up(
            SyncStatus::pending(),
            rollup(3, FailurePolicy::Continue),
            &kids,
            Timestamp::from_millis(2),
        );
        let rollup_again = once.batch.clone().unwrap();
        let twice = rolled_up(once.clone(), rollup_again, &kids, Timestamp::from_millis(9));
        assert_eq!(once, twice);
    }

    #[test]
    fn fail_fast_stops_only_for_failures_after_the_last_retry() {
        let kids = children(&[State::Failed, State::Pending]);
        let parent = SyncStatus::pending();
        let mut policy = rollup(2, FailurePolicy::FailFast);
        assert!(must_stop(&parent, &policy, &kids));
        policy.retried_at = Some(Timestamp::from_millis(5));
        assert!(!must_stop(&parent, &policy, &kids));
    }
}
