//! The worker runtime's checks (claim, fencing, heartbeats, graceful requeue, progress-aware
//! give-up, history, cancel, retry, batches) that every backend runs, with the conformance fixtures.
//! Crashes are a runtime dropped without `shutdown`; staleness comes from the manual clock.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use syncstatus::jobs::{self, AttemptEnd, JobHandle, Runtime, RuntimeConfig, StopReason};
use syncstatus::{Error, Progress, RecoveryPolicy, State, SyncStatus, recover_stale};
use tokio::sync::Notify;

use crate::conformance::Fixture;
use crate::support::status_watch::wait_for_status;

mod batch;
pub use batch::*;

/// Longest wait for a job to reach a state; far above what any check needs.
pub const JOB_DEADLINE: Duration = Duration::from_secs(120);
/// The store-clock time after which a silent job is stale.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(60);

pub(crate) fn config() -> RuntimeConfig {
    RuntimeConfig::default()
        .with_stale_after(STALE_AFTER)
        .with_heartbeat_every(Duration::from_millis(50))
        .with_grace(Duration::from_secs(5))
}

pub(crate) fn parse(record: &syncstatus::Record) -> SyncStatus {
    serde_json::from_value(record.status.clone()).unwrap()
}

/// Fails the test unless `error` refuses `action` (`"cancel"`, `"retry"`) in the state the
/// job is in.
pub(crate) fn assert_refused(error: &Error, action: &str) {
    assert!(
        matches!(error, Error::InvalidTransition { action: asked, .. } if *asked == action),
        "{error:?}"
    );
}

/// A job that completes at once with the pages of its data.
async fn quick_job(job: JobHandle) -> Result<Value, jobs::BoxError> {
    job.set_progress(Progress::new(1, 1)).await?;
    Ok(json!({ "attempt": job.attempt() }))
}

/// A job that never ends by itself: it waits for its stop signal and returns an error.
async fn endless_job(job: JobHandle) -> Result<Value, jobs::BoxError> {
    let reason = job.stopped().await;
    Err(format!("stopped: {reason:?}").into())
}

pub async fn check_job_runs_to_completion_and_submit_is_idempotent(f: Fixture) {
    let runtime = Runtime::start(f.store.clone(), config(), quick_job);
    let first = runtime
        .submit("job-1", SyncStatus::pending().with_data(json!({"n": 1})))
        .await
        .unwrap();
    let again = runtime
        .submit("job-1", SyncStatus::pending().with_data(json!({"n": 2})))
        .await
        .unwrap();
    assert_eq!(again.status["data"], json!({"n": 1}), "{again:?}");
    assert!(again.version >= first.version);
    let done = wait_for_status(&f.store, "job-1", "completion", |s| {
        s.state == State::Completed
    })
    .await;
    assert_eq!(done.result, Some(json!({"attempt": 1})));
    assert_eq!(done.progress, Some(Progress::new(1, 1)));
    assert_eq!(done.lease, None);
    assert_eq!(done.history.len(), 1, "{done:?}");
    assert_eq!(done.history[0].outcome, Some(AttemptEnd::Completed));
    assert_eq!(done.history[0].progress, Some(Progress::new(1, 1)));
    let refused = runtime
        .submit("job-2", SyncStatus::pending().start(f.clock.now_ts_()))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::InvalidStatus { .. }),
        "{refused:?}"
    );
    runtime.shutdown().await;
}

pub async fn check_graceful_shutdown_requeues_without_counting(f: Fixture) {
    let saved = Arc::new(Notify::new());
    let job = {
        let saved = saved.clone();
        move |job: JobHandle| {
            let saved = saved.clone();
            async move {
                let from = job.checkpoint().and_then(Value::as_u64).unwrap_or(0);
                job.save_checkpoint(json!(from + 1), Some(Progress::new(from + 1, 10)))
                    .await?;
                saved.notify_one();
                let reason = job.stopped().await;
                Err::<Value, jobs::BoxError>(format!("stopped: {reason:?}").into())
            }
        }
    };
    let runtime = Runtime::start(f.store.clone(), config(), job.clone());
    runtime
        .submit("gentle", SyncStatus::pending())
        .await
        .unwrap();
    saved.notified().await;
    runtime.shutdown().await;
    let requeued = parse(&f.store.get("gentle").await.unwrap().unwrap());
    assert_eq!(requeued.state, State::Pending, "{requeued:?}");
    assert_eq!(requeued.attempt, 2);
    assert_eq!(requeued.crashes, 0);
    assert_eq!(requeued.lease, None);
    assert_eq!(requeued.checkpoint, Some(json!(1)));
    assert_eq!(requeued.history.len(), 1);
    assert_eq!(
        requeued.history[0].outcome,
        Some(AttemptEnd::RequeuedOnShutdown)
    );

    // Four more graceful restarts: still no failure counted, and each resumes the checkpoint.
    for restart in 2..=5 {
        let runtime = Runtime::start(f.store.clone(), config(), job.clone());
        saved.notified().await;
        runtime.shutdown().await;
        let status = parse(&f.store.get("gentle").await.unwrap().unwrap());
        assert_eq!(status.state, State::Pending);
        assert_eq!(status.attempt, restart + 1);
        assert_eq!(status.crashes, 0);
        assert_eq!(status.checkpoint, Some(json!(restart)));
    }
}

/// Drops `runtime` without shutdown (a crash) and makes its job look stale.
fn crash(runtime: Runtime, f: &Fixture) {
    drop(runtime);
    f.clock.advance(STALE_AFTER + Duration::from_secs(1));
}

pub async fn check_crashes_without_progress_give_up(f: Fixture) {
    jobs::submit(&*f.store, "poison", SyncStatus::pending())
        .await
        .unwrap();
    for attempt in 1..=3 {
        let runtime = Runtime::start(f.store.clone(), config(), endless_job);
        wait_for_status(&f.store, "poison", "the job to run", |s| {
            s.state == State::Running && s.attempt == attempt
        })
        .await;
        crash(runtime, &f);
    }
    // The next start recovers it: three crashes in a row without progress.
    let runtime = Runtime::start(f.store.clone(), config(), endless_job);
    let failed = wait_for_status(&f.store, "poison", "the job to fail", |s| {
        s.state == State::Failed
    })
    .await;
    runtime.shutdown().await;
    assert!(
        failed.error.as_deref().unwrap().contains("gave up after 3"),
        "{failed:?}"
    );
    assert_eq!(failed.crashes, 3);
    let outcomes: Vec<_> = failed.history.iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, vec![Some(AttemptEnd::Interrupted); 3]);
    assert_eq!(
        failed.history.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

pub async fn check_crashes_with_progress_never_give_up(f: Fixture) {
    // Each attempt saves one more page and then hangs until it crashes; the seventh finishes.
    let job = |job: JobHandle| async move {
        let page = job.checkpoint().and_then(Value::as_u64).unwrap_or(0) + 1;
        job.save_checkpoint(json!(page), Some(Progress::new(page, 7)))
            .await?;
        if page < 7 {
            std::future::pending::<()>().await;
        }
        Ok::<Value, jobs::BoxError>(json!({ "pages": page }))
    };
    jobs::submit(&*f.store, "steady", SyncStatus::pending())
        .await
        .unwrap();
    for page in 1..=6 {
        let runtime = Runtime::start(f.store.clone(), config(), job);
        wait_for_status(&f.store, "steady", "a page saved", |s| {
            s.checkpoint == Some(json!(page))
        })
        .await;
        crash(runtime, &f);
    }
    let runtime = Runtime::start(f.store.clone(), config(), job);
    let done = wait_for_status(&f.store, "steady", "completion", |s| s.is_terminal()).await;
    runtime.shutdown().await;
    assert_eq!(done.state, State::Completed, "{done:?}");
    assert_eq!(done.result, Some(json!({"pages": 7})));
    assert_eq!(done.attempt, 7);
    let outcomes: Vec<_> = done.history.iter().map(|a| a.outcome.unwrap()).collect();
    let mut expected = vec![AttemptEnd::Interrupted; 6];
    expected.push(AttemptEnd::Completed);
    assert_eq!(outcomes, expected);
    assert!(done.history.iter().all(|a| a.advanced));
    assert_eq!(done.history[5].progress, Some(Progress::new(6, 7)));
}

pub async fn check_cancel_pending_and_running(f: Fixture) {
    jobs::submit(&*f.store, "early", SyncStatus::pending())
        .await
        .unwrap();
    let cancelled = jobs::cancel(&*f.other, "early").await.unwrap();
    assert_eq!(parse(&cancelled).state, State::Cancelled);
    let again = jobs::cancel(&*f.other, "early").await.unwrap_err();
    assert_refused(&again, "cancel");
    let missing = jobs::cancel(&*f.other, "nobody").await.unwrap_err();
    assert!(matches!(missing, Error::NotFound { .. }), "{missing:?}");

    // A running job writes progress until its next write is refused.
    let job = |job: JobHandle| async move {
        let mut done = 0;
        loop {
            done += 1;
            match job.set_progress(Progress::new(done, 1_000_000)).await {
                Ok(_) => tokio::task::yield_now().await,
                Err(Error::Cancelled { .. }) => {
                    assert_eq!(job.stopped().await, StopReason::Cancelled);
                    return Err::<Value, jobs::BoxError>("cancelled".into());
                }
                Err(other) => return Err(other.into()),
            }
        }
    };
    let runtime = Runtime::start(f.store.clone(), config(), job);
    runtime.submit("busy", SyncStatus::pending()).await.unwrap();
    wait_for_status(&f.store, "busy", "progress", |s| {
        s.progress.is_some_and(|p| p.done >= 3)
    })
    .await;
    let requested = jobs::cancel(&*f.other, "busy").await.unwrap();
    assert!(parse(&requested).cancel_requested);
    let at_request = parse(&requested).progress.unwrap().done;
    let ended = wait_for_status(&f.store, "busy", "the cancel", |s| {
        s.state == State::Cancelled
    })
    .await;
    runtime.shutdown().await;
    assert!(ended.progress.unwrap().done >= at_request, "{ended:?}");
    assert!(!ended.cancel_requested);
    assert_eq!(ended.lease, None);
    assert_eq!(
        ended.history.last().unwrap().outcome,
        Some(AttemptEnd::Cancelled)
    );
}

pub async fn check_retry_keeps_history(f: Fixture) {
    let job = |job: JobHandle| async move {
        if job.attempt() == 1 {
            return Err::<Value, jobs::BoxError>("the first attempt breaks".into());
        }
        Ok(json!("fine"))
    };
    let runtime = Runtime::start(f.store.clone(), config(), job);
    runtime
        .submit("flaky", SyncStatus::pending())
        .await
        .unwrap();
    let failed = wait_for_status(&f.store, "flaky", "the failure", |s| {
        s.state == State::Failed
    })
    .await;
    assert_eq!(failed.error.as_deref(), Some("the first attempt breaks"));
    let retried = jobs::retry(&*f.other, "flaky").await.unwrap();
    assert_eq!(parse(&retried).attempt, 2);
    let done = wait_for_status(&f.store, "flaky", "completion", |s| {
        s.state == State::Completed
    })
    .await;
    runtime.shutdown().await;
    let outcomes: Vec<_> = done.history.iter().map(|a| a.outcome.unwrap()).collect();
    assert_eq!(outcomes, vec![AttemptEnd::Failed, AttemptEnd::Completed]);
    assert_eq!(done.error, None);
    let refused = jobs::retry(&*f.other, "flaky").await.unwrap_err();
    assert_refused(&refused, "retry");
}

pub async fn check_a_worker_presumed_dead_cannot_write_over_the_new_owner(f: Fixture) {
    let resume = Arc::new(Notify::new());
    let (told, mut refused) = tokio::sync::mpsc::unbounded_channel();
    let frozen_job = {
        let resume = resume.clone();
        move |job: JobHandle| {
            let (resume, told) = (resume.clone(), told.clone());
            async move {
                resume.notified().await;
                let written = job.set_progress(Progress::new(999, 1000)).await;
                let _ = told.send((written.map(|r| r.version), job.stop_reason()));
                Ok::<Value, jobs::BoxError>(json!("the frozen worker finished"))
            }
        }
    };
    // A worker that never heartbeats in time: frozen, as far as the store can tell.
    let frozen = Runtime::start(
        f.store.clone(),
        config().with_heartbeat_every(Duration::from_secs(3600)),
        frozen_job,
    );
    frozen
        .submit("contested", SyncStatus::pending())
        .await
        .unwrap();
    let first = wait_for_status(&f.store, "contested", "the first claim", |s| {
        s.state == State::Running
    })
    .await;
    f.clock.advance(STALE_AFTER + Duration::from_secs(1));
    let successor = Runtime::start(f.other.clone(), config(), endless_job);
    let second = wait_for_status(&f.store, "contested", "the second claim", |s| {
        s.state == State::Running && s.attempt == 2
    })
    .await;
    assert_ne!(first.lease, second.lease);

    resume.notify_one();
    let (written, reason) = tokio::time::timeout(JOB_DEADLINE, refused.recv())
        .await
        .unwrap()
        .unwrap();
    match written {
        Err(Error::LostOwnership { id, .. }) => assert_eq!(id, "contested"),
        other => panic!("the frozen worker's write was not refused: {other:?}"),
    }
    assert_eq!(reason, Some(StopReason::Lost));
    frozen.shutdown().await;
    let now = parse(&f.store.get("contested").await.unwrap().unwrap());
    assert_eq!(now.state, State::Running);
    assert_eq!(now.lease, second.lease);
    assert_ne!(now.progress, Some(Progress::new(999, 1000)));
    assert_eq!(now.history[0].outcome, Some(AttemptEnd::Interrupted));
    successor.shutdown().await;
}

pub async fn check_a_runtime_never_recovers_a_job_it_runs_itself(f: Fixture) {
    // Another worker's job, running and silent: the witness that a recovery round ran.
    put_running_without_worker(&f.other, "theirs", f.clock.now_ts_()).await;
    // Its own job's heartbeats come too late: as when the whole process stalls.
    let stale_after = Duration::from_millis(200);
    let runtime = Runtime::start(
        f.store.clone(),
        config()
            .with_stale_after(stale_after)
            .with_heartbeat_every(Duration::from_secs(3600)),
        endless_job,
    );
    runtime.submit("mine", SyncStatus::pending()).await.unwrap();
    let mine = wait_for_status(&f.store, "mine", "the claim", |s| s.state == State::Running).await;
    f.clock.advance(Duration::from_secs(1));
    // The round that recovers "theirs" looks at "mine" too; the claim of "theirs" is handled
    // after that round.
    let theirs = wait_for_status(&f.store, "theirs", "its recovery and claim", |s| {
        s.state == State::Running && s.lease.is_some()
    })
    .await;
    assert_eq!(theirs.crashes, 1, "{theirs:?}");
    let still = parse(&f.store.get("mine").await.unwrap().unwrap());
    assert_eq!(still.state, State::Running, "{still:?}");
    assert_eq!(still.attempt, mine.attempt, "{still:?}");
    assert_eq!(still.lease, mine.lease, "{still:?}");
    assert_eq!(still.crashes, 0, "{still:?}");
    runtime.shutdown().await;
}

pub async fn check_a_job_asked_to_cancel_whose_worker_died_ends_cancelled(f: Fixture) {
    let job = |job: JobHandle| async move {
        job.set_progress(Progress::new(4, 10)).await?;
        std::future::pending::<()>().await;
        Ok::<Value, jobs::BoxError>(Value::Null)
    };
    // A worker that does not heartbeat in time, then crashes with the cancel unseen.
    let runtime = Runtime::start(
        f.store.clone(),
        config().with_heartbeat_every(Duration::from_secs(3600)),
        job,
    );
    runtime
        .submit("orphan", SyncStatus::pending())
        .await
        .unwrap();
    wait_for_status(&f.store, "orphan", "progress", |s| s.progress.is_some()).await;
    drop(runtime);
    assert!(parse(&jobs::cancel(&*f.other, "orphan").await.unwrap()).cancel_requested);
    f.clock.advance(STALE_AFTER + Duration::from_secs(1));
    let report = recover_stale(&*f.other, STALE_AFTER, &RecoveryPolicy::default())
        .await
        .unwrap();
    assert_eq!(report.recovered.len(), 1, "{report:?}");
    assert_eq!(
        report.recovered[0].action,
        syncstatus::RecoveryAction::Cancelled
    );
    let ended = parse(&f.store.get("orphan").await.unwrap().unwrap());
    assert_eq!(ended.state, State::Cancelled, "{ended:?}");
    assert_eq!(ended.progress, Some(Progress::new(4, 10)));
    assert_eq!(ended.lease, None);
    assert_eq!(ended.history[0].outcome, Some(AttemptEnd::Cancelled));
}

pub async fn check_recovery_names_the_real_stale_limit(f: Fixture) {
    put_running_without_worker(&f.store, "quiet", f.clock.now_ts_()).await;
    f.clock.advance(Duration::from_millis(1700));
    let report = recover_stale(
        &*f.store,
        Duration::from_millis(500),
        &RecoveryPolicy::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.recovered.len(), 1);
    let status = parse(&f.store.get("quiet").await.unwrap().unwrap());
    let message = status.message.unwrap();
    assert!(message.starts_with("no heartbeat for 500ms;"), "{message}");
}

/// Writes `id` as a job running since `now` with no lease: a worker no runtime here knows of.
async fn put_running_without_worker(
    store: &syncstatus::DynSyncStorage,
    id: &str,
    now: syncstatus::Timestamp,
) {
    jobs::submit(&**store, id, SyncStatus::pending())
        .await
        .unwrap();
    store
        .put(
            id,
            serde_json::to_value(SyncStatus::pending().start(now)).unwrap(),
            syncstatus::PutMode::Overwrite,
        )
        .await
        .unwrap();
}

trait NowTsExt {
    fn now_ts_(&self) -> syncstatus::Timestamp;
}

impl NowTsExt for syncstatus::ManualClock {
    fn now_ts_(&self) -> syncstatus::Timestamp {
        syncstatus::Clock::now(self)
    }
}

/// One `#[tokio::test]` per jobs check, with fixtures from `$make`.
#[macro_export]
macro_rules! all_jobs_tests {
    ($make:path) => {
        mod jobs_checks {
            use super::*;
            macro_rules! one {
                ($check:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $check() {
                        if let Some(fixture) = $make(stringify!($check)).await {
                            $crate::jobs::$check(fixture).await;
                        }
                    }
                };
            }
            one!(check_job_runs_to_completion_and_submit_is_idempotent);
            one!(check_graceful_shutdown_requeues_without_counting);
            one!(check_crashes_without_progress_give_up);
            one!(check_crashes_with_progress_never_give_up);
            one!(check_cancel_pending_and_running);
            one!(check_retry_keeps_history);
            one!(check_a_worker_presumed_dead_cannot_write_over_the_new_owner);
            one!(check_a_runtime_never_recovers_a_job_it_runs_itself);
            one!(check_a_job_asked_to_cancel_whose_worker_died_ends_cancelled);
            one!(check_recovery_names_the_real_stale_limit);
            one!(check_batch_rolls_up_its_children_in_one_record);
            one!(check_batch_submit_refuses_bad_batches);
            one!(check_batch_end_states_follow_the_children);
            one!(check_batch_cancel_keeps_completed_children);
            one!(check_batch_retry_one_child_then_all_failed);
            one!(check_batch_parent_is_never_claimed_nor_recovered);
            one!(check_batch_shutdown_rolls_up_the_requeued_children);
        }
    };
}
