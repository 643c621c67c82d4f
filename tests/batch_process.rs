//! Batches across real processes on one file store: 600 children completed by workers in
//! four processes, one of them SIGKILLed while it runs children; a watcher checks at every
//! version of the parent that it never counts more done than the children are. Cancel and
//! retry come from this process while the workers run in others.
//!
//! The workers are this test binary run again as `worker_process` (see
//! `support::job_worker`).
#![cfg(unix)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::job_worker::{self, Worker, open};
use support::listing::readable_records;
use support::status_watch::{StatusWatch, wait_for_status_within as wait_for_within};
use syncstatus::jobs::{
    self, AttemptEnd, FailurePolicy, StateCounts, cancel_batch, child_progress, submit_batch,
};
use syncstatus::{DynSyncStorage, ListFilter, State, SyncStatus};

/// Longest wait for a whole batch on a shared two-core machine; far above what it needs.
const LONG: Duration = Duration::from_secs(240);

/// The worker side: see [`job_worker::run_worker`].
#[test]
fn worker_process() {
    job_worker::run_worker();
}

fn counts(status: &SyncStatus) -> StateCounts {
    status.batch.as_ref().expect("a batch's parent").counts
}

async fn read_children(store: &DynSyncStorage, batch: &str) -> Vec<(String, SyncStatus)> {
    let filter = ListFilter {
        state: None,
        prefix: Some(format!("{batch}.")),
    };
    readable_records(&**store, &filter)
        .await
        .into_iter()
        .map(|record| {
            (
                record.id,
                serde_json::from_value(record.status.clone()).unwrap(),
            )
        })
        .collect()
}

/// Follows the parent until it ends; at every version seen, the children read after it must
/// hold at least as many completed and as much progress. Returns how many versions it checked.
async fn check_never_ahead(store: DynSyncStorage, batch: &'static str) -> usize {
    let mut watch = StatusWatch::start(&store, batch).await;
    let (mut checked, mut last_completed) = (0, 0);
    loop {
        let deadline = tokio::time::Instant::now() + LONG;
        let (version, parent) = match watch.next("the parent to end", deadline).await {
            Some(seen) => seen,
            None => panic!("the parent was removed"),
        };
        let now = read_children(&store, batch).await;
        let completed = now
            .iter()
            .filter(|(_, c)| c.state == State::Completed)
            .count() as u64;
        let done: u64 = now.iter().map(|(_, c)| child_progress(c).done).sum();
        let shown = counts(&parent);
        assert!(
            shown.completed <= completed,
            "the parent (v{version}) counts {} completed, the children {completed}",
            shown.completed
        );
        let shown_done = parent.progress.unwrap().done;
        assert!(
            shown_done <= done,
            "the parent (v{version}) shows {shown_done} done, the children {done}"
        );
        assert!(shown.completed >= last_completed, "the count went back");
        last_completed = shown.completed;
        checked += 1;
        if parent.is_terminal() {
            return checked;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_600_done_by_four_processes_is_never_ahead_and_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (size, pages) = (600u64, 2u64);
    let children: Vec<SyncStatus> = (0..size)
        .map(|_| SyncStatus::pending().with_data(json!({ "pages": pages })))
        .collect();
    submit_batch(&*store, "invoices", children, FailurePolicy::Continue)
        .await
        .unwrap();
    let watcher = tokio::spawn(check_never_ahead(store.clone(), "invoices"));

    // The first worker claims eight children and hangs on them, until it is killed.
    let hung = 8;
    let doomed = Worker::start(
        dir.path(),
        "hang",
        None,
        &[("JOBS_WORKER_MAX_JOBS", hung.to_string())],
    );
    let lease_of_doomed = format!("{:x}-", doomed.0.id());
    wait_for_within(
        &store,
        "invoices",
        "the doomed worker's claims",
        LONG,
        |s| counts(s).running == hung,
    )
    .await;
    let fast = [("JOBS_WORKER_PAGE_MS", "2".to_string())];
    let workers: Vec<Worker> = (0..3)
        .map(|_| Worker::start(dir.path(), "steady", None, &fast))
        .collect();
    wait_for_within(&store, "invoices", "a sixth of the batch", LONG, |s| {
        counts(s).completed >= size / 6
    })
    .await;
    doomed.kill();

    let done = wait_for_within(&store, "invoices", "the batch to end", LONG, |s| {
        s.is_terminal()
    })
    .await;
    let checked = watcher.await.unwrap();
    drop(workers);
    assert_eq!(done.state, State::Completed, "{done:?}");
    assert_eq!(
        counts(&done),
        StateCounts {
            completed: size,
            ..StateCounts::default()
        }
    );
    assert_eq!(
        done.progress,
        Some(syncstatus::Progress::new(size * pages, size * pages))
    );
    assert!(checked >= 3, "the watcher saw only {checked} versions");
    // The children the killed worker held were recovered and completed by the others. (On a
    // loaded machine its heartbeats can come late enough for a child to be recovered before
    // the kill, and it then claims another: it held at least `hung`.)
    let all = read_children(&store, "invoices").await;
    assert_eq!(all.len() as u64, size);
    let held: Vec<&SyncStatus> = all
        .iter()
        .map(|(_, c)| c)
        .filter(|c| {
            c.history.iter().any(|a| {
                a.lease
                    .as_deref()
                    .is_some_and(|lease| lease.starts_with(&lease_of_doomed))
            })
        })
        .collect();
    assert!(held.len() as u64 >= hung, "{} held", held.len());
    for child in held {
        for attempt in &child.history {
            if attempt
                .lease
                .as_deref()
                .is_some_and(|lease| lease.starts_with(&lease_of_doomed))
            {
                assert_eq!(attempt.outcome, Some(AttemptEnd::Interrupted), "{child:?}");
            }
        }
        assert_eq!(
            child.history.last().unwrap().outcome,
            Some(AttemptEnd::Completed),
            "{child:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cancelled_and_retried_from_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let size = 30u64;
    let children: Vec<SyncStatus> = (0..size)
        .map(|_| SyncStatus::pending().with_data(json!({ "pages": 20 })))
        .collect();
    submit_batch(&*store, "halt", children, FailurePolicy::Continue)
        .await
        .unwrap();
    let slow = [
        ("JOBS_WORKER_PAGE_MS", "50".to_string()),
        ("JOBS_WORKER_MAX_JOBS", "3".to_string()),
    ];
    let workers: Vec<Worker> = (0..2)
        .map(|_| Worker::start(dir.path(), "steady", None, &slow))
        .collect();
    wait_for_within(&store, "halt", "three completed children", LONG, |s| {
        counts(s).completed >= 3
    })
    .await;

    let asked: SyncStatus =
        serde_json::from_value(cancel_batch(&*store, "halt").await.unwrap().status).unwrap();
    assert!(asked.cancel_requested, "{asked:?}");
    assert_eq!(
        counts(&asked).pending,
        0,
        "pending children at once: {asked:?}"
    );
    assert!(counts(&asked).running <= 6, "{asked:?}");
    let ended = wait_for_within(&store, "halt", "the cancel", LONG, |s| s.is_terminal()).await;
    assert_eq!(ended.state, State::Cancelled, "{ended:?}");
    let c = counts(&ended);
    assert!(c.completed >= counts(&asked).completed, "{ended:?}");
    assert_eq!(c.completed + c.cancelled, size, "{ended:?}");
    let kept: Vec<String> = read_children(&store, "halt")
        .await
        .into_iter()
        .filter(|(_, c)| c.state == State::Completed)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(kept.len() as u64, c.completed);

    jobs::retry(&*store, "halt").await.unwrap();
    let done = wait_for_within(&store, "halt", "completion after the retry", LONG, |s| {
        s.is_terminal()
    })
    .await;
    drop(workers);
    assert_eq!(done.state, State::Completed, "{done:?}");
    assert_eq!(counts(&done).completed, size);
    for (id, child) in read_children(&store, "halt").await {
        if kept.contains(&id) {
            assert_eq!(child.attempt, 1, "{id} was run again");
        } else {
            assert_eq!(
                child.history.last().unwrap().outcome,
                Some(AttemptEnd::Completed),
                "{id}"
            );
        }
    }
}
