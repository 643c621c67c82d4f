//! Batch checks every backend runs: the rollup, end states, fail fast, cancel, retry, and a
//! parent that is never claimed nor recovered as a job.

use std::time::Duration;

use serde_json::{Value, json};
use syncstatus::jobs::{
    self, BatchRollup, FailurePolicy, JobHandle, Runtime, StateCounts, cancel_batch,
    reconcile_batch, retry_child, submit_batch,
};
use syncstatus::{Error, Progress, PutMode, RecoveryPolicy, State, SyncStatus, recover_stale};

use super::{STALE_AFTER, assert_refused, config, parse, wait_for_status};
use crate::conformance::Fixture;

fn rollup(status: &SyncStatus) -> &BatchRollup {
    status.batch.as_ref().expect("a batch's parent")
}

fn counts(status: &SyncStatus) -> StateCounts {
    rollup(status).counts
}

fn fast() -> syncstatus::jobs::RuntimeConfig {
    config().with_batch_every(Duration::from_millis(20))
}

fn child(kind: &str, pages: u64) -> SyncStatus {
    SyncStatus::pending().with_data(json!({ "kind": kind, "pages": pages }))
}

/// A child job by its data: `ok` writes its pages and completes, `fail` fails, `flaky` fails
/// on its first attempt only, `endless` waits for its stop signal.
async fn kind_job(job: JobHandle) -> Result<Value, jobs::BoxError> {
    let data = job.data().cloned().unwrap_or(Value::Null);
    let pages = data["pages"].as_u64().unwrap_or(1);
    match data["kind"].as_str() {
        Some("fail") => return Err("this child fails".into()),
        Some("flaky") if job.attempt() == 1 => return Err("the first attempt breaks".into()),
        Some("endless") => {
            let reason = job.stopped().await;
            return Err(format!("stopped: {reason:?}").into());
        }
        _ => {}
    }
    for page in 1..=pages {
        job.set_progress(Progress::new(page, pages)).await?;
    }
    Ok(json!({ "pages": pages }))
}

pub async fn check_batch_rolls_up_its_children_in_one_record(f: Fixture) {
    let children: Vec<SyncStatus> = (1..=5).map(|pages| child("ok", pages)).collect();
    let submitted = submit_batch(&*f.store, "bat", children, FailurePolicy::Continue)
        .await
        .unwrap();
    let submitted = parse(&submitted);
    assert_eq!(submitted.state, State::Pending, "{submitted:?}");
    assert_eq!(rollup(&submitted).size, 5);
    assert_eq!(counts(&submitted).pending, 5);
    // Children without progress weigh one unit each until they report theirs.
    assert_eq!(submitted.progress, Some(Progress::new(0, 5)));
    for n in 1..=5 {
        let child = parse(&f.store.get(&format!("bat.{n}")).await.unwrap().unwrap());
        assert_eq!(child.parent.as_deref(), Some("bat"));
        assert_eq!(child.data.unwrap()["pages"], json!(n));
    }
    // Submitting again changes nothing.
    let again = submit_batch(
        &*f.other,
        "bat",
        vec![child("ok", 9)],
        FailurePolicy::FailFast,
    )
    .await
    .unwrap();
    assert_eq!(rollup(&parse(&again)).size, 5);
    assert_eq!(rollup(&parse(&again)).policy, FailurePolicy::Continue);

    let runtime = Runtime::start(f.store.clone(), fast(), kind_job);
    let done = wait_for_status(&f.store, "bat", "the batch to complete", |s| {
        s.is_terminal()
    })
    .await;
    runtime.shutdown().await;
    assert_eq!(done.state, State::Completed, "{done:?}");
    assert_eq!(
        counts(&done),
        StateCounts {
            completed: 5,
            ..StateCounts::default()
        }
    );
    assert_eq!(done.progress, Some(Progress::new(15, 15)));
    assert!(done.finished_at.is_some() && done.started_at.is_some());
    // The parent itself was never run.
    assert!(done.history.is_empty(), "{done:?}");
    assert_eq!(done.attempt, 1);
    assert_eq!(done.lease, None);
    for n in 1..=5 {
        let child = parse(&f.store.get(&format!("bat.{n}")).await.unwrap().unwrap());
        assert_eq!(child.state, State::Completed, "bat.{n}: {child:?}");
    }
}

pub async fn check_batch_submit_refuses_bad_batches(f: Fixture) {
    let empty = submit_batch(&*f.store, "none", Vec::new(), FailurePolicy::Continue)
        .await
        .unwrap_err();
    assert!(matches!(empty, Error::InvalidStatus { .. }), "{empty:?}");
    let long = "b".repeat(101);
    let refused = submit_batch(
        &*f.store,
        &long,
        vec![child("ok", 1)],
        FailurePolicy::Continue,
    )
    .await
    .unwrap_err();
    assert!(matches!(refused, Error::InvalidId { .. }), "{refused:?}");
    // A child id held by a job of no batch.
    jobs::submit(&*f.store, "taken.2", SyncStatus::pending())
        .await
        .unwrap();
    let clash = submit_batch(
        &*f.store,
        "taken",
        vec![child("ok", 1), child("ok", 1)],
        FailurePolicy::Continue,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&clash, Error::AlreadyExists { id, .. } if id == "taken.2"),
        "{clash:?}"
    );
    assert!(f.store.get("taken").await.unwrap().is_none());
    // An id held by a job that is not a batch.
    let job = submit_batch(
        &*f.store,
        "taken.2",
        vec![child("ok", 1)],
        FailurePolicy::Continue,
    )
    .await
    .unwrap_err();
    assert!(matches!(job, Error::AlreadyExists { .. }), "{job:?}");
    let not_a_batch = reconcile_batch(&*f.store, "taken.2").await.unwrap_err();
    assert!(
        matches!(not_a_batch, Error::InvalidStatus { .. }),
        "{not_a_batch:?}"
    );
}

pub async fn check_batch_end_states_follow_the_children(f: Fixture) {
    let runtime = Runtime::start(f.store.clone(), fast(), kind_job);
    let go_on = FailurePolicy::Continue;
    let mixed = vec![child("ok", 1), child("fail", 1), child("ok", 2)];
    submit_batch(&*f.store, "mixed", mixed, go_on)
        .await
        .unwrap();
    let doomed = vec![child("fail", 1), child("fail", 1)];
    submit_batch(&*f.store, "doomed", doomed, go_on)
        .await
        .unwrap();
    let mut strict = vec![child("fail", 1)];
    strict.extend((0..3).map(|_| child("endless", 1)));
    submit_batch(&*f.store, "strict", strict, FailurePolicy::FailFast)
        .await
        .unwrap();

    let partial = wait_for_status(&f.store, "mixed", "mixed to end", |s| s.is_terminal()).await;
    assert_eq!(partial.state, State::Partial, "{partial:?}");
    assert_eq!(
        (counts(&partial).completed, counts(&partial).failed),
        (2, 1)
    );
    assert!(
        partial.error.as_deref().unwrap().contains("1 of 3"),
        "{partial:?}"
    );
    let failed = wait_for_status(&f.store, "doomed", "doomed to end", |s| s.is_terminal()).await;
    assert_eq!(failed.state, State::Failed, "{failed:?}");
    assert_eq!(counts(&failed).failed, 2);
    // Fail fast: the first failure stops the endless siblings.
    let stopped = wait_for_status(&f.store, "strict", "strict to end", |s| s.is_terminal()).await;
    runtime.shutdown().await;
    assert_eq!(stopped.state, State::Failed, "{stopped:?}");
    assert_eq!(
        (counts(&stopped).failed, counts(&stopped).cancelled),
        (1, 3)
    );
    for n in 2..=4 {
        let sibling = parse(&f.store.get(&format!("strict.{n}")).await.unwrap().unwrap());
        assert_eq!(sibling.state, State::Cancelled, "strict.{n}: {sibling:?}");
    }
}

pub async fn check_batch_cancel_keeps_completed_children(f: Fixture) {
    let mut children = vec![child("ok", 3)];
    children.extend((0..5).map(|_| child("endless", 1)));
    submit_batch(&*f.store, "halt", children, FailurePolicy::Continue)
        .await
        .unwrap();
    // The first child alone runs to completion first.
    let first = Runtime::start(f.store.clone(), fast().with_prefix("halt.1"), kind_job);
    wait_for_status(&f.store, "halt.1", "the first child", |s| {
        s.state == State::Completed
    })
    .await;
    first.shutdown().await;
    // Two slots: two children run, three wait.
    let runtime = Runtime::start(f.store.clone(), fast().with_max_jobs(2), kind_job);
    wait_for_status(&f.store, "halt", "two running children", |s| {
        let c = counts(s);
        c.running == 2 && c.completed == 1 && c.pending == 3
    })
    .await;
    let asked = parse(&cancel_batch(&*f.other, "halt").await.unwrap());
    assert!(asked.cancel_requested, "{asked:?}");
    // The pending ones at once; the running ones are asked to stop (and may have already).
    let at_cancel = counts(&asked);
    assert_eq!(
        (at_cancel.pending, at_cancel.completed),
        (0, 1),
        "{asked:?}"
    );
    assert!(at_cancel.cancelled >= 3, "{asked:?}");
    assert_eq!(at_cancel.running + at_cancel.cancelled, 5, "{asked:?}");
    if at_cancel.running > 0 {
        assert_eq!(asked.state, State::Running, "{asked:?}");
        assert!(
            asked.message.as_deref().unwrap().ends_with("stopping"),
            "{asked:?}"
        );
    }
    let ended = wait_for_status(&f.store, "halt", "the batch to be cancelled", |s| {
        s.is_terminal()
    })
    .await;
    runtime.shutdown().await;
    assert_eq!(ended.state, State::Cancelled, "{ended:?}");
    assert_eq!((counts(&ended).completed, counts(&ended).cancelled), (1, 5));
    let kept = parse(&f.store.get("halt.1").await.unwrap().unwrap());
    assert_eq!(kept.state, State::Completed);
    let again = jobs::cancel(&*f.other, "halt").await.unwrap_err();
    assert_refused(&again, "cancel");
}

pub async fn check_batch_retry_one_child_then_all_failed(f: Fixture) {
    let runtime = Runtime::start(f.store.clone(), fast(), kind_job);
    let children = vec![child("flaky", 1), child("flaky", 1), child("ok", 1)];
    submit_batch(&*f.store, "again", children, FailurePolicy::Continue)
        .await
        .unwrap();
    let partial = wait_for_status(&f.store, "again", "the first end", |s| s.is_terminal()).await;
    assert_eq!(partial.state, State::Partial, "{partial:?}");
    // One child, through the job's own retry.
    let retried = parse(&jobs::retry(&*f.other, "again.1").await.unwrap());
    assert_eq!((retried.state, retried.attempt), (State::Pending, 2));
    let one_more = wait_for_status(&f.store, "again", "the retried child", |s| {
        s.is_terminal() && counts(s).completed == 2
    })
    .await;
    assert_eq!(one_more.state, State::Partial, "{one_more:?}");
    assert_eq!(counts(&one_more).failed, 1);
    // Every failed child, through the batch's id.
    jobs::retry(&*f.other, "again").await.unwrap();
    let done = wait_for_status(&f.store, "again", "completion", |s| {
        s.state == State::Completed
    })
    .await;
    runtime.shutdown().await;
    assert_eq!(counts(&done).completed, 3);
    let untouched = parse(&f.store.get("again.3").await.unwrap().unwrap());
    assert_eq!(untouched.attempt, 1, "a completed child is not run again");
    let nothing = jobs::retry(&*f.other, "again").await.unwrap_err();
    assert_refused(&nothing, "retry");
    let running = retry_child(&*f.other, "again", 3).await.unwrap_err();
    assert!(
        matches!(running, Error::InvalidTransition { .. }),
        "{running:?}"
    );
}

pub async fn check_batch_parent_is_never_claimed_nor_recovered(f: Fixture) {
    submit_batch(
        &*f.store,
        "idle",
        vec![child("ok", 1), child("ok", 1)],
        FailurePolicy::Continue,
    )
    .await
    .unwrap();
    // A child whose worker died, written by hand: the batch is running, with no heartbeat.
    let now = syncstatus::Clock::now(&f.clock);
    let mut dead = child("ok", 1).start(now);
    dead.parent = Some("idle".into());
    f.store
        .put(
            "idle.1",
            serde_json::to_value(dead).unwrap(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let parent = parse(&reconcile_batch(&*f.other, "idle").await.unwrap());
    assert_eq!(parent.state, State::Running, "{parent:?}");
    f.clock.advance(STALE_AFTER + Duration::from_secs(1));
    let stats = syncstatus::stats(&*f.other, STALE_AFTER).await.unwrap();
    assert_eq!(stats.batches.get("running"), Some(&1), "{stats:?}");
    assert_eq!(stats.counts.get("running"), Some(&1), "{stats:?}");
    assert_eq!(stats.stale_running, vec!["idle.1".to_string()]);
    let report = recover_stale(&*f.other, STALE_AFTER, &RecoveryPolicy::default())
        .await
        .unwrap();
    let recovered: Vec<&str> = report.recovered.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(recovered, vec!["idle.1"], "{report:?}");
    let refused = syncstatus::recover_job(&*f.other, "idle", &RecoveryPolicy::default())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::InvalidTransition { .. }),
        "{refused:?}"
    );

    let runtime = Runtime::start(f.store.clone(), fast(), kind_job);
    let done = wait_for_status(&f.store, "idle", "completion", |s| s.is_terminal()).await;
    runtime.shutdown().await;
    assert_eq!(done.state, State::Completed, "{done:?}");
    assert!(done.history.is_empty() && done.lease.is_none(), "{done:?}");
}

pub async fn check_batch_shutdown_rolls_up_the_requeued_children(f: Fixture) {
    let children = vec![child("endless", 1), child("endless", 1)];
    submit_batch(&*f.store, "pause", children, FailurePolicy::Continue)
        .await
        .unwrap();
    let runtime = Runtime::start(f.store.clone(), fast(), kind_job);
    wait_for_status(&f.store, "pause", "both children running", |s| {
        counts(s).running == 2
    })
    .await;
    runtime.shutdown().await;
    // No runtime is left to roll it up: the stopping one did, after requeueing.
    let parent = parse(&f.store.get("pause").await.unwrap().unwrap());
    assert_eq!(parent.state, State::Pending, "{parent:?}");
    assert_eq!(counts(&parent).pending, 2, "{parent:?}");
}
