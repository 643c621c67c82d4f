//! The handle a job runs with: fenced writes, its own heartbeat, and the stop signal.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::jobs::history::{Attempt, AttemptEnd, close_last};
use crate::jobs::{status_of, value_of};
use crate::record::{Record, Timestamp};
use crate::status::{Progress, State, SyncStatus};
use crate::storage::DynSyncStorage;

/// Why a job was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The runtime is shutting down; the job will be requeued (no failure counted).
    Shutdown,
    /// Someone cancelled the job; it ends cancelled with its progress kept.
    Cancelled,
    /// The job is no longer this worker's (it was presumed dead and requeued or claimed by
    /// another); nothing this worker writes will be stored.
    Lost,
}

/// What a fenced write lets through when a cancel was asked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnCancel {
    Refuse,
    Allow,
}

/// The worker's claim: every write goes through here and is checked against the lease.
#[derive(Clone)]
struct Fence {
    store: DynSyncStorage,
    id: String,
    lease: String,
    stop: Arc<watch::Sender<Option<StopReason>>>,
}

impl Fence {
    fn signal(&self, reason: StopReason) {
        self.stop.send_if_modified(|current| match current {
            // Losing the job overrides any other reason: nothing can be written any more.
            Some(StopReason::Lost) => false,
            Some(_) if reason != StopReason::Lost => false,
            _ => {
                *current = Some(reason);
                true
            }
        });
    }

    /// Read-modify-write of the job, only while it is running under this lease.
    async fn write(
        &self,
        on_cancel: OnCancel,
        change: &mut (dyn FnMut(&mut SyncStatus, Timestamp) -> Result<()> + Send),
    ) -> Result<Record> {
        let now = self.store.clock().now();
        let (id, lease) = (self.id.as_str(), self.lease.as_str());
        let written = self
            .store
            .update(id, &mut |current: Option<&Record>| {
                let record = current.ok_or_else(|| Error::LostOwnership {
                    id: id.to_string(),
                    lease: lease.to_string(),
                    reason: "the record is gone".into(),
                })?;
                let mut status = status_of(record)?;
                if status.state != State::Running || status.lease.as_deref() != Some(lease) {
                    return Err(Error::LostOwnership {
                        id: id.to_string(),
                        lease: lease.to_string(),
                        reason: format!("it is {} on attempt {} now", status.state, status.attempt),
                    });
                }
                if status.cancel_requested && on_cancel == OnCancel::Refuse {
                    return Err(Error::Cancelled { id: id.to_string() });
                }
                change(&mut status, now)?;
                value_of(id, &status)
            })
            .await;
        match &written {
            Err(Error::LostOwnership { .. }) => self.signal(StopReason::Lost),
            Err(Error::Cancelled { .. }) => self.signal(StopReason::Cancelled),
            Ok(record) if record.status.get("cancel_requested") == Some(&Value::Bool(true)) => {
                self.signal(StopReason::Cancelled)
            }
            _ => {}
        }
        written
    }
}

/// Marks the open attempt as advanced when `status` moved on from where it started.
fn note_progress(status: &mut SyncStatus, checkpoint_saved: bool) {
    let progress = status.progress;
    if let Some(attempt) = status.history.last_mut().filter(|a| a.is_open()) {
        let start = attempt.progress_at_start.map_or(0, |p| p.done);
        if checkpoint_saved || progress.is_some_and(|p| p.done > start) {
            attempt.advanced = true;
        }
        attempt.progress = progress;
    }
}

struct Inner {
    fence: Fence,
    claimed: SyncStatus,
    stopped: watch::Receiver<Option<StopReason>>,
    /// Set once the job ended itself (complete or fail), so the runtime writes nothing more.
    ended: AtomicBool,
    heartbeat: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self
            .heartbeat
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// What a job function gets: the job as claimed, fenced writes, and the stop signal.
///
/// It heartbeats on its own (a task it owns, stopped when the last clone is dropped or the
/// runtime ends the job). Every write is checked against the lease of the claim: once the job
/// is no longer this worker's, writes fail with [`Error::LostOwnership`]; once a cancel was
/// asked, with [`Error::Cancelled`]. Either also resolves [`JobHandle::stopped`].
#[derive(Clone)]
pub struct JobHandle {
    inner: Arc<Inner>,
}

impl fmt::Debug for JobHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle")
            .field("id", &self.inner.fence.id)
            .field("attempt", &self.inner.claimed.attempt)
            .field("lease", &self.inner.fence.lease)
            .finish_non_exhaustive()
    }
}

impl JobHandle {
    /// A handle on a job just claimed with `lease`, heartbeating every `heartbeat_every`.
    pub(crate) fn start(
        store: DynSyncStorage,
        id: String,
        lease: String,
        claimed: SyncStatus,
        heartbeat_every: Duration,
    ) -> Self {
        let (stop, stopped) = watch::channel(None);
        let fence = Fence {
            store,
            id,
            lease,
            stop: Arc::new(stop),
        };
        let beating = fence.clone();
        // The task holds the fence, not the handle, so dropping the handle stops it.
        let heartbeat = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(heartbeat_every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let beat = beating
                    .write(OnCancel::Allow, &mut |status, now| {
                        status.heartbeat_at = Some(now);
                        Ok(())
                    })
                    .await;
                match beat {
                    Ok(_) => {}
                    Err(Error::LostOwnership { .. }) => return,
                    Err(error) => {
                        tracing::warn!(id = %beating.id, %error, "heartbeat failed; will try again")
                    }
                }
            }
        });
        JobHandle {
            inner: Arc::new(Inner {
                fence,
                claimed,
                stopped,
                ended: AtomicBool::new(false),
                heartbeat: std::sync::Mutex::new(Some(heartbeat)),
            }),
        }
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        &self.inner.fence.id
    }

    /// The attempt number of this run.
    pub fn attempt(&self) -> u32 {
        self.inner.claimed.attempt
    }

    /// The fencing token of this run.
    pub fn lease(&self) -> &str {
        &self.inner.fence.lease
    }

    /// The status as it was claimed (its data, progress and checkpoint are where to resume).
    pub fn status(&self) -> &SyncStatus {
        &self.inner.claimed
    }

    /// The job's data (its arguments), as submitted.
    pub fn data(&self) -> Option<&Value> {
        self.inner.claimed.data.as_ref()
    }

    /// The checkpoint the last attempt saved: where to resume.
    pub fn checkpoint(&self) -> Option<&Value> {
        self.inner.claimed.checkpoint.as_ref()
    }

    /// The attempt before this one, if the history holds it: how it ended tells a job whether
    /// it resumes after a crash, a graceful restart or a retry.
    pub fn previous_attempt(&self) -> Option<&Attempt> {
        let history = &self.inner.claimed.history;
        history.len().checked_sub(2).and_then(|i| history.get(i))
    }

    /// The progress when this attempt started.
    pub fn progress(&self) -> Option<Progress> {
        self.inner.claimed.progress
    }

    /// Why the job was asked to stop, if it was.
    pub fn stop_reason(&self) -> Option<StopReason> {
        *self.inner.stopped.borrow()
    }

    /// Resolves when the job is asked to stop: a shutdown, a cancel (seen within one heartbeat
    /// interval), or the loss of the job.
    pub async fn stopped(&self) -> StopReason {
        let mut stopped = self.inner.stopped.clone();
        match stopped.wait_for(Option::is_some).await {
            Ok(reason) => reason.unwrap_or(StopReason::Lost),
            // The sender lives in the fence this handle holds; it cannot be gone.
            Err(_) => StopReason::Lost,
        }
    }

    pub(crate) fn request_stop(&self, reason: StopReason) {
        self.inner.fence.signal(reason);
    }

    /// A fenced change of the status (anything the other writes do not cover).
    pub async fn update<F>(&self, mut change: F) -> Result<Record>
    where
        F: FnMut(&mut SyncStatus) + Send,
    {
        self.inner
            .fence
            .write(OnCancel::Refuse, &mut |status, now| {
                change(status);
                status.heartbeat_at = Some(now);
                note_progress(status, false);
                Ok(())
            })
            .await
    }

    /// Stores how far the job got.
    pub async fn set_progress(&self, progress: Progress) -> Result<Record> {
        self.update(|status| status.progress = Some(progress)).await
    }

    /// Stores a line for people.
    pub async fn set_message(&self, message: impl Into<String>) -> Result<Record> {
        let message = message.into();
        self.update(|status| status.message = Some(message.clone()))
            .await
    }

    /// Stores the resume point (and the progress it stands for): the next attempt starts
    /// from here. Saving a checkpoint counts as progress for the give-up rule.
    pub async fn save_checkpoint(
        &self,
        checkpoint: Value,
        progress: Option<Progress>,
    ) -> Result<Record> {
        self.inner
            .fence
            .write(OnCancel::Refuse, &mut |status, now| {
                let moved = status.checkpoint.as_ref() != Some(&checkpoint);
                status.checkpoint = Some(checkpoint.clone());
                if progress.is_some() {
                    status.progress = progress;
                }
                status.heartbeat_at = Some(now);
                note_progress(status, moved);
                Ok(())
            })
            .await
    }

    /// Ends the job as completed with `result`. A cancel asked meanwhile does not stop it: the
    /// work is done.
    pub async fn complete(&self, result: Value) -> Result<Record> {
        self.end(OnCancel::Allow, &mut |status, now| {
            close_last(
                &mut status.history,
                AttemptEnd::Completed,
                now,
                status.progress,
            );
            status.crashes = 0;
            take_over(status, SyncStatus::complete, now, result.clone());
        })
        .await
    }

    /// Ends the job as failed with `error`. It stays failed until retried.
    pub async fn fail(&self, error: impl fmt::Display) -> Result<Record> {
        let error = error.to_string();
        self.end(OnCancel::Allow, &mut |status, now| {
            close_last(
                &mut status.history,
                AttemptEnd::Failed,
                now,
                status.progress,
            );
            take_over(status, SyncStatus::fail, now, error.clone());
        })
        .await
    }

    /// Ends the job as cancelled, progress kept.
    pub(crate) async fn end_cancelled(&self) -> Result<Record> {
        self.end(OnCancel::Allow, &mut |status, now| {
            cancelled(status, now);
        })
        .await
    }

    /// Gives the job back to pending at once, counting no failure (a cancel asked meanwhile
    /// wins: it ends cancelled).
    pub(crate) async fn requeue(&self) -> Result<Record> {
        self.end(OnCancel::Allow, &mut |status, now| {
            if status.cancel_requested {
                cancelled(status, now);
                return;
            }
            if close_last(
                &mut status.history,
                AttemptEnd::RequeuedOnShutdown,
                now,
                status.progress,
            ) {
                status.crashes = 0;
            }
            status.state = State::Pending;
            status.lease = None;
            status.attempt = status.attempt.saturating_add(1);
            status.message = Some("requeued on shutdown".into());
        })
        .await
    }

    async fn end(
        &self,
        on_cancel: OnCancel,
        change: &mut (dyn FnMut(&mut SyncStatus, Timestamp) + Send),
    ) -> Result<Record> {
        let written = self
            .inner
            .fence
            .write(on_cancel, &mut |status, now| {
                change(status, now);
                Ok(())
            })
            .await?;
        self.inner.ended.store(true, Ordering::SeqCst);
        self.stop_heartbeat();
        Ok(written)
    }

    pub(crate) fn has_ended(&self) -> bool {
        self.inner.ended.load(Ordering::SeqCst)
    }

    pub(crate) fn stop_heartbeat(&self) {
        if let Some(task) = self
            .inner
            .heartbeat
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// Applies a terminal transition of [`SyncStatus`] in place.
fn take_over<A>(
    status: &mut SyncStatus,
    transition: fn(SyncStatus, Timestamp, A) -> SyncStatus,
    now: Timestamp,
    argument: A,
) {
    let mut done = transition(std::mem::take(status), now, argument);
    done.lease = None;
    done.cancel_requested = false;
    *status = done;
}

fn cancelled(status: &mut SyncStatus, now: Timestamp) {
    close_last(
        &mut status.history,
        AttemptEnd::Cancelled,
        now,
        status.progress,
    );
    let mut done = std::mem::take(status).cancel(now);
    done.lease = None;
    done.cancel_requested = false;
    done.message = Some("cancelled on request".into());
    *status = done;
}
