//! The attempt history a record keeps, so a person can read what happened to a job.

use serde::{Deserialize, Serialize};

use crate::record::Timestamp;
use crate::status::Progress;

/// How many attempts a record keeps unless told otherwise.
pub const DEFAULT_HISTORY_LIMIT: usize = 10;

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptEnd {
    /// The job completed.
    Completed,
    /// The job failed (its own error, or it crashed too often without progress).
    Failed,
    /// The runtime shut down gracefully and gave the job back; not counted as a failure.
    RequeuedOnShutdown,
    /// The worker stopped heartbeating (it crashed or froze) and recovery requeued the job.
    Interrupted,
    /// The job was cancelled on request.
    Cancelled,
    /// The job was taken from this attempt without it ending (the record was requeued or
    /// claimed by hand or by a tool that does not keep the history).
    Lost,
}

impl AttemptEnd {
    /// The name written in records (`requeued_on_shutdown`).
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptEnd::Completed => "completed",
            AttemptEnd::Failed => "failed",
            AttemptEnd::RequeuedOnShutdown => "requeued_on_shutdown",
            AttemptEnd::Interrupted => "interrupted",
            AttemptEnd::Cancelled => "cancelled",
            AttemptEnd::Lost => "lost",
        }
    }
}

/// One attempt of a job: one claim by one worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The attempt number (the status's `attempt` while it ran).
    pub attempt: u32,
    /// The fencing token of the worker that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// When it was claimed.
    pub started_at: Timestamp,
    /// When it ended; `None` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// How it ended; `None` while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AttemptEnd>,
    /// The job's progress when it was claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_at_start: Option<Progress>,
    /// The job's progress when it ended (or now, while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Whether this attempt moved progress forward or saved a checkpoint. A crash of an
    /// attempt that advanced does not count towards giving up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub advanced: bool,
}

impl Attempt {
    /// Whether the attempt is still running.
    pub fn is_open(&self) -> bool {
        self.outcome.is_none()
    }
}

/// Closes the open last attempt of `history`, if any, and returns whether it had advanced.
pub(crate) fn close_last(
    history: &mut [Attempt],
    outcome: AttemptEnd,
    now: Timestamp,
    progress: Option<Progress>,
) -> bool {
    match history.last_mut() {
        Some(last) if last.is_open() => {
            last.outcome = Some(outcome);
            last.ended_at = Some(now);
            last.progress = progress;
            last.advanced
        }
        _ => false,
    }
}

/// Appends `attempt`, dropping the oldest entries beyond `limit` (at least one is kept).
pub(crate) fn push_bounded(history: &mut Vec<Attempt>, attempt: Attempt, limit: usize) {
    history.push(attempt);
    let limit = limit.max(1);
    if history.len() > limit {
        let excess = history.len() - limit;
        history.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u32) -> Attempt {
        Attempt {
            attempt: n,
            lease: None,
            started_at: Timestamp::from_millis(u64::from(n)),
            ended_at: None,
            outcome: None,
            progress_at_start: None,
            progress: None,
            advanced: false,
        }
    }

    #[test]
    fn the_history_keeps_the_last_attempts() {
        let mut history = Vec::new();
        for n in 1..=12 {
            push_bounded(&mut history, attempt(n), 10);
        }
        let numbers: Vec<u32> = history.iter().map(|a| a.attempt).collect();
        assert_eq!(numbers, (3..=12).collect::<Vec<_>>());
    }

    #[test]
    fn closing_touches_only_an_open_attempt() {
        let mut history = vec![attempt(1)];
        history[0].advanced = true;
        let now = Timestamp::from_millis(99);
        assert!(close_last(&mut history, AttemptEnd::Interrupted, now, None));
        assert_eq!(history[0].outcome, Some(AttemptEnd::Interrupted));
        assert!(!close_last(&mut history, AttemptEnd::Lost, now, None));
        assert_eq!(history[0].outcome, Some(AttemptEnd::Interrupted));
    }
}
