//! Batches: a parent record whose counts, progress and state roll up from its children.
//!
//! A batch `imports` of N children is N ordinary jobs `imports.1` … `imports.N` (each
//! carrying `parent: "imports"`, run by any [`Runtime`](crate::jobs::Runtime) like every
//! other job) and one parent record `imports` whose status carries a [`BatchRollup`]: the
//! children's counts by state, their summed progress as the parent's `progress`, and the
//! batch's state. Reading a batch is one `get` of the parent, whatever its size.
//!
//! # Consistency
//!
//! The parent is written by a *reconcile* ([`reconcile_batch`]): it reads the parent, then
//! lists the children, and writes the rollup conditioned on the parent's version. Every
//! runtime reconciles the batches whose children it sees change (one process at a time per
//! batch, under a store lock), at most once per
//! [`RuntimeConfig::with_batch_every`](crate::jobs::RuntimeConfig::with_batch_every)
//! interval; submit, cancel and retry reconcile before they return. So:
//!
//! - the parent never counts a child as completed before it is, and its summed progress never
//!   exceeds what the children had reported: the counts come from child records read before
//!   the parent was written, and a child never leaves `completed`;
//! - the counts never go back to an older reading: a reconcile's write succeeds only on the
//!   version it read before listing, so each written rollup was read after the previous one;
//! - the counts are exact within one interval after the children stop changing (or at once,
//!   for the caller of [`reconcile_batch`]); failed and cancelled counts can lag a retry by
//!   that interval.
//!
//! The parent is never claimed, heartbeated nor recovered as a job; it is not running
//! anything itself.

mod control;
mod create;
mod reconciler;
mod rollup;

use serde::{Deserialize, Serialize};

pub use control::{cancel_batch, retry_batch, retry_child};
pub use create::submit_batch;
pub(crate) use reconciler::{BatchReconciler, DirtyBatches};
pub use rollup::{child_progress, reconcile_batch};

use crate::error::{Error, Result};
use crate::id::{MAX_ID_LEN, validate_id};
use crate::record::{Record, Timestamp};
use crate::status::State;

/// The longest batch id, in bytes: room for `.` and the child number within
/// [`MAX_ID_LEN`], and for the batch's lock name.
pub const MAX_BATCH_ID_LEN: usize = 100;

/// The most children a batch has.
pub const MAX_BATCH_SIZE: u64 = 1_000_000;

/// What a batch does when a child fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// The other children go on; the batch ends partial (or failed, if none completed).
    #[default]
    Continue,
    /// The first failure stops the batch: pending children are cancelled, running ones asked
    /// to stop, and the batch ends failed.
    FailFast,
}

/// The children of a batch, counted by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    /// Waiting to run.
    pub pending: u64,
    /// Being run.
    pub running: u64,
    /// Finished well.
    pub completed: u64,
    /// Finished badly.
    pub failed: u64,
    /// Stopped on request.
    pub cancelled: u64,
    /// Gone (deleted or expired) or unreadable: counted as not completed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub missing: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl StateCounts {
    /// Counts one child in `state` (a child that says `partial` counts as failed).
    pub fn add(&mut self, state: State) {
        match state {
            State::Pending => self.pending += 1,
            State::Running => self.running += 1,
            State::Completed => self.completed += 1,
            State::Partial | State::Failed => self.failed += 1,
            State::Cancelled => self.cancelled += 1,
        }
    }

    /// Children still to end (pending or running).
    pub fn active(&self) -> u64 {
        self.pending + self.running
    }

    /// Every child counted.
    pub fn total(&self) -> u64 {
        self.active() + self.completed + self.failed + self.cancelled + self.missing
    }
}

impl std::fmt::Display for StateCounts {
    /// `412 completed, 20 running, 165 pending, 3 failed`: completed always, the others when
    /// not zero.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} completed", self.completed)?;
        for (n, what) in [
            (self.running, "running"),
            (self.pending, "pending"),
            (self.failed, "failed"),
            (self.cancelled, "cancelled"),
            (self.missing, "missing"),
        ] {
            if n > 0 {
                write!(f, ", {n} {what}")?;
            }
        }
        Ok(())
    }
}

/// What a batch's parent record holds beside its state and summed progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRollup {
    /// How many children the batch has (`<id>.1` to `<id>.<size>`).
    pub size: u64,
    /// The children by state, as of the last reconcile.
    pub counts: StateCounts,
    /// What a failure does.
    #[serde(default)]
    pub policy: FailurePolicy,
    /// When the last retry was asked: a fail-fast batch stops only for failures after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_at: Option<Timestamp>,
}

/// The id of child `n` (from 1) of batch `batch`.
pub fn child_id(batch: &str, n: u64) -> String {
    format!("{batch}.{n}")
}

/// Whether `record` is a batch's parent.
pub fn is_batch(record: &Record) -> bool {
    record
        .status
        .get("batch")
        .is_some_and(|batch| batch.is_object())
}

/// The batch `record` is a child of, if it is one.
pub(crate) fn parent_of(record: &Record) -> Option<&str> {
    record
        .status
        .get("parent")
        .and_then(|parent| parent.as_str())
}

/// The name of the store lock held by the runtime reconciling `batch`.
fn lock_name(batch: &str) -> String {
    format!("batch.{batch}")
}

/// Checks a batch id and size.
fn validate_batch(id: &str, size: u64) -> Result<()> {
    validate_id(id)?;
    if id.len() > MAX_BATCH_ID_LEN {
        return Err(Error::InvalidId {
            id: id.to_string(),
            reason: "a batch id is at most 100 bytes (its children add a number)",
        });
    }
    if size == 0 || size > MAX_BATCH_SIZE {
        return Err(Error::InvalidStatus {
            id: id.to_string(),
            reason: format!("a batch has 1 to {MAX_BATCH_SIZE} children, not {size}"),
        });
    }
    debug_assert!(child_id(id, MAX_BATCH_SIZE).len() <= MAX_ID_LEN);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_ids_and_lock_names_are_valid_ids() {
        let longest = "b".repeat(MAX_BATCH_ID_LEN);
        assert!(validate_batch(&longest, MAX_BATCH_SIZE).is_ok());
        assert!(validate_id(&child_id(&longest, MAX_BATCH_SIZE)).is_ok());
        assert!(validate_id(&lock_name(&longest)).is_ok());
        assert!(validate_batch(&format!("{longest}b"), 1).is_err());
        assert!(validate_batch("b", 0).is_err());
        assert!(validate_batch("../b", 1).is_err());
    }

    #[test]
    fn counts_add_up() {
        let mut counts = StateCounts::default();
        for state in State::ALL {
            counts.add(state);
        }
        assert_eq!(counts.total(), 6);
        assert_eq!(counts.failed, 2);
        assert_eq!(counts.active(), 2);
    }
}
