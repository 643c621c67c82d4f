//! A ready status type for people who don't bring their own.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;
use crate::jobs::{Attempt, BatchRollup};
use crate::record::Timestamp;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting to run (or to run again after its worker died).
    Pending,
    /// A worker is on it and heartbeats.
    Running,
    /// Finished well.
    Completed,
    /// A batch whose children ended some completed, some not (failed, cancelled or gone).
    Partial,
    /// Finished badly.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl State {
    /// Every state, in life order.
    pub const ALL: [State; 6] = [
        State::Pending,
        State::Running,
        State::Completed,
        State::Partial,
        State::Failed,
        State::Cancelled,
    ];

    /// The name written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Completed => "completed",
            State::Partial => "partial",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    /// Completed, partial, failed or cancelled: nothing more will happen (unless retried).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Completed | State::Partial | State::Failed | State::Cancelled
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        State::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown state {text:?} (expected pending, running, completed, partial, failed or cancelled)"
                ))
            })
    }
}

/// The longest state name [`validate_state`] accepts, in bytes.
pub const MAX_STATE_LEN: usize = 32;

/// Checks a state name against the grammar every state follows: a lowercase ASCII letter,
/// then lowercase letters, digits and `_`, at most [`MAX_STATE_LEN`] bytes
/// (`running`, `waiting_for_input`, `step2`).
///
/// States are compared exactly, by listings, stats and the lifecycle helpers, so `Running`
/// or `in progress` would count apart from `running` and never be recovered or swept as
/// one; refusing them where they are written keeps every tool agreeing.
///
/// ```
/// assert!(syncstatus::validate_state("running").is_ok());
/// assert!(syncstatus::validate_state("Running").is_err());
/// ```
pub fn validate_state(state: &str) -> Result<(), Error> {
    let refuse = |why: String| {
        Err(Error::Config(format!(
            "invalid state {state:?}: {why} (a state is a lowercase letter followed by lowercase letters, digits or `_`, at most {MAX_STATE_LEN} characters)"
        )))
    };
    let Some(first) = state.chars().next() else {
        return refuse("it is empty".into());
    };
    if state.len() > MAX_STATE_LEN {
        return refuse(format!("it is {} bytes long", state.len()));
    }
    if !first.is_ascii_lowercase() {
        if first.is_ascii_uppercase() || state.chars().any(|c| c.is_ascii_uppercase()) {
            return refuse(format!("did you mean `{}`?", state.to_ascii_lowercase()));
        }
        return refuse("it does not start with a lowercase letter".into());
    }
    if let Some(bad) = state
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        if bad.is_ascii_uppercase() {
            return refuse(format!("did you mean `{}`?", state.to_ascii_lowercase()));
        }
        return refuse(format!("it contains {bad:?}"));
    }
    Ok(())
}

/// How far a job got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

impl Progress {
    /// `done` of `total`.
    pub fn new(done: u64, total: u64) -> Self {
        Progress {
            done,
            total: Some(total),
        }
    }

    /// Done as a fraction of the total, in `0.0..=1.0`, when the total is known.
    pub fn fraction(&self) -> Option<f64> {
        match self.total {
            Some(0) => Some(1.0),
            Some(total) => Some((self.done as f64 / total as f64).clamp(0.0, 1.0)),
            None => None,
        }
    }
}

/// The ready status of a background job.
///
/// ```
/// use syncstatus::{Progress, State, SyncStatus, Timestamp};
/// let now = Timestamp::now();
/// let status = SyncStatus::pending().start(now).with_progress(Progress::new(40, 600));
/// assert_eq!(status.state, State::Running);
/// let done = status.complete(now, serde_json::json!({"pages": 600}));
/// assert!(done.state.is_terminal());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// Where the job is.
    pub state: State,
    /// How far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// A line for people ("page 4").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What it produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Anything else the job wants to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// When it started running (the current attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it reached a final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// When its worker last said it is alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_at: Option<Timestamp>,
    /// Which attempt this is: 1 for the first run, raised by one each time recovery requeues
    /// the job after its worker died.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// The resume point the job last saved (its own value: a page, a cursor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Value>,
    /// The fencing token of the worker that owns the running job: every write of a worker is
    /// checked against it, so a worker presumed dead cannot write over its successor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// Someone asked the running job to stop; its worker ends it as cancelled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// Attempts in a row that ended in a crash without advancing progress or the checkpoint.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub crashes: u32,
    /// The last attempts, oldest first (bounded; see
    /// [`RuntimeConfig::with_history_limit`](crate::jobs::RuntimeConfig::with_history_limit)).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
    /// Set on a batch's parent record: its children's counts by state, rolled up (see
    /// [`jobs::submit_batch`](crate::jobs::submit_batch)). A parent is never claimed nor
    /// recovered as a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchRollup>,
    /// Set on a batch's child: the id of its batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A status written without an attempt number (by hand, by another tool) is on its first.
fn first_attempt() -> u32 {
    1
}

impl Default for SyncStatus {
    fn default() -> Self {
        Self::pending()
    }
}

impl SyncStatus {
    /// A job waiting to run.
    pub fn pending() -> Self {
        SyncStatus {
            state: State::Pending,
            progress: None,
            message: None,
            error: None,
            result: None,
            data: None,
            started_at: None,
            finished_at: None,
            heartbeat_at: None,
            attempt: 1,
            checkpoint: None,
            lease: None,
            cancel_requested: false,
            crashes: 0,
            history: Vec::new(),
            batch: None,
            parent: None,
        }
    }

    /// Moves to running, started and heartbeating at `now`. The attempt number is kept
    /// (recovery raises it when it requeues a job whose worker died).
    pub fn start(mut self, now: Timestamp) -> Self {
        self.state = State::Running;
        self.attempt = self.attempt.max(1);
        self.started_at = Some(now);
        self.heartbeat_at = Some(now);
        self.finished_at = None;
        self.error = None;
        self
    }

    /// Sets the progress.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Sets the data the job works from (its arguments).
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// Sets the message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Records that the worker is alive.
    pub fn heartbeat(mut self, now: Timestamp) -> Self {
        self.heartbeat_at = Some(now);
        self
    }

    /// Moves to completed with a result.
    pub fn complete(mut self, now: Timestamp, result: Value) -> Self {
        self.state = State::Completed;
        self.result = Some(result);
        self.finished_at = Some(now);
        self
    }

    /// Moves to failed with the reason.
    pub fn fail(mut self, now: Timestamp, error: impl Into<String>) -> Self {
        self.state = State::Failed;
        self.error = Some(error.into());
        self.finished_at = Some(now);
        self
    }

    /// Moves to cancelled.
    pub fn cancel(mut self, now: Timestamp) -> Self {
        self.state = State::Cancelled;
        self.finished_at = Some(now);
        self
    }

    /// Whether nothing more will happen to this job.
    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_one_grammar() {
        for good in ["running", "waiting_for_input", "step2", "a"] {
            assert!(validate_state(good).is_ok(), "{good}");
        }
        let why = |state: &str| match validate_state(state) {
            Err(Error::Config(message)) => message,
            other => panic!("{state}: {other:?}"),
        };
        assert!(why("Running").contains("did you mean `running`?"));
        assert!(why("some thing").contains("' '"));
        assert!(why("").contains("empty"));
        assert!(why("2nd").contains("does not start"));
        assert!(why("run\u{1b}[2J").contains("\\u{1b}"));
        assert!(why(&"x".repeat(MAX_STATE_LEN + 1)).contains("33 bytes"));
        assert!(validate_state(&"x".repeat(MAX_STATE_LEN)).is_ok());
    }

    #[test]
    fn a_status_without_an_attempt_is_on_its_first() {
        let status: SyncStatus = serde_json::from_value(serde_json::json!({"state": "running"}))
            .expect("a minimal status parses");
        assert_eq!(status.attempt, 1);
        assert_eq!(status.state, State::Running);
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in State::ALL {
            assert_eq!(state.as_str().parse::<State>().ok(), Some(state));
        }
        assert!("finished".parse::<State>().is_err());
    }
}
