//! The worker runtime across real processes on one file store: workers killed with SIGKILL at
//! random instants, crashing before any progress, frozen with SIGSTOP past `stale_after`.
//!
//! The worker is this test binary run again as `worker_process` (see `support::job_worker`).
#![cfg(unix)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::job_worker::{self, Worker, open};
use support::status_watch::wait_for_status as wait_for;
use syncstatus::jobs::{self, AttemptEnd};
use syncstatus::{Progress, State, SyncStatus};

/// The worker side: see [`job_worker::run_worker`].
#[test]
fn worker_process() {
    job_worker::run_worker();
}

/// A small xorshift generator: random kill instants without a dependency.
struct Random(u64);

impl Random {
    fn seeded() -> Random {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("random seed {seed}");
        Random(seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_ten_times_while_progressing_completes_with_every_attempt_in_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pages = 400;
    jobs::submit(
        &*store,
        "steady",
        SyncStatus::pending().with_data(json!({ "pages": pages })),
    )
    .await
    .unwrap();
    let mut random = Random::seeded();
    let mut seen = 0;
    for attempt in 1..=10u32 {
        let worker = Worker::start(dir.path(), "steady", None, &[]);
        let running = wait_for(&store, "steady", "the attempt to progress", |s| {
            s.state == State::Running
                && s.attempt == attempt
                && s.progress.is_some_and(|p| p.done > seen)
        })
        .await;
        // Kill at a random instant of the attempt's work, not right at a write.
        tokio::time::sleep(Duration::from_millis(random.below(150))).await;
        worker.kill();
        let at_kill = store.get("steady").await.unwrap().unwrap();
        let at_kill: SyncStatus = serde_json::from_value(at_kill.status).unwrap();
        assert!(
            at_kill.progress.unwrap().done < pages,
            "it finished early; make it longer"
        );
        assert!(at_kill.progress.unwrap().done >= running.progress.unwrap().done);
        seen = at_kill.progress.unwrap().done;
    }
    let worker = Worker::start(dir.path(), "steady", None, &[]);
    let done = wait_for(&store, "steady", "completion", |s| s.is_terminal()).await;
    drop(worker);
    assert_eq!(done.state, State::Completed, "{done:?}");
    assert_eq!(done.progress, Some(Progress::new(pages, pages)));
    assert_eq!(done.attempt, 11, "{done:?}");
    assert_eq!(
        done.history.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        (1..=11).collect::<Vec<_>>()
    );
    let outcomes: Vec<_> = done.history.iter().map(|a| a.outcome.unwrap()).collect();
    let mut expected = vec![AttemptEnd::Interrupted; 10];
    expected.push(AttemptEnd::Completed);
    assert_eq!(outcomes, expected);
    assert!(done.history.iter().all(|a| a.advanced), "{done:?}");
    // Each attempt resumed where the previous one left off.
    for pair in done.history.windows(2) {
        assert_eq!(pair[1].progress_at_start, pair[0].progress, "{done:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_crashing_before_any_progress_three_times_ends_failed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    jobs::submit(&*store, "poison", SyncStatus::pending())
        .await
        .unwrap();
    for attempt in 1..=3u32 {
        let worker = Worker::start(dir.path(), "hang", None, &[]);
        wait_for(&store, "poison", "the attempt to start", |s| {
            s.state == State::Running && s.attempt == attempt
        })
        .await;
        worker.kill();
    }
    let worker = Worker::start(dir.path(), "hang", None, &[]);
    let failed = wait_for(&store, "poison", "the job to fail", |s| s.is_terminal()).await;
    drop(worker);
    assert_eq!(failed.state, State::Failed, "{failed:?}");
    assert!(
        failed.error.as_deref().unwrap().contains("gave up after 3"),
        "{failed:?}"
    );
    let outcomes: Vec<_> = failed.history.iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, vec![Some(AttemptEnd::Interrupted); 3]);
    assert!(failed.history.iter().all(|a| !a.advanced));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_past_stale_after_cannot_write_over_the_new_owner() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pages = 40;
    jobs::submit(
        &*store,
        "contested",
        SyncStatus::pending().with_data(json!({ "pages": pages })),
    )
    .await
    .unwrap();
    let slow = [
        ("JOBS_WORKER_PAGE_MS", "100".to_string()),
        ("JOBS_WORKER_HEARTBEAT_MS", "100".to_string()),
    ];
    let log = dir.path().join("frozen.log");
    std::fs::create_dir_all(dir.path()).unwrap();
    let frozen = Worker::start(dir.path(), "steady", Some(&log), &slow);
    // Freeze it outside a write: a worker stopped while it holds the record's lock would
    // hold back every other process (the store's lock, not the runtime, decides that).
    let lock_file = dir.path().join(".locks/contested.lock");
    let mut first;
    let mut at_least = 2;
    loop {
        first = wait_for(&store, "contested", "progress", |s| {
            s.state == State::Running && s.progress.is_some_and(|p| p.done >= at_least)
        })
        .await;
        // Not right after a write seen: the writer may still be finishing it (fsync, unlock).
        // The probe below, not this pause, decides whether the instant was good.
        tokio::time::sleep(Duration::from_millis(30)).await;
        frozen.signal(libc::SIGSTOP);
        frozen.wait_stopped();
        let probe = std::fs::File::open(&lock_file).unwrap();
        if probe.try_lock().is_ok() {
            break;
        }
        frozen.signal(libc::SIGCONT);
        at_least = first.progress.unwrap().done + 1;
    }

    let successor = Worker::start(dir.path(), "steady", None, &slow);
    let second = wait_for(&store, "contested", "the successor's claim", |s| {
        s.state == State::Running && s.attempt == 2
    })
    .await;
    assert_ne!(second.lease, first.lease);
    frozen.signal(libc::SIGCONT);

    // Every write from here on is the successor's, up to completion.
    let mut last_done = 0;
    let done = wait_for(&store, "contested", "completion", |s| {
        if s.state == State::Running {
            assert_eq!(s.lease, second.lease, "a write by the frozen worker: {s:?}");
        }
        let progress = s.progress.map_or(0, |p| p.done);
        assert!(progress >= last_done, "progress went back: {s:?}");
        last_done = progress;
        s.is_terminal()
    })
    .await;
    assert_eq!(done.state, State::Completed, "{done:?}");
    let result_pid = done.result.as_ref().unwrap()["pid"].as_u64().unwrap();
    assert_eq!(result_pid, u64::from(successor.0.id()));
    assert_eq!(done.history[0].outcome, Some(AttemptEnd::Interrupted));
    assert_eq!(done.history[1].outcome, Some(AttemptEnd::Completed));

    frozen.kill();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("write refused") && said.contains("no longer owned"),
        "{said}"
    );
}
