//! The worker runtime across real processes on one file store: workers killed with SIGKILL at
//! random instants, crashing before any progress, frozen with SIGSTOP past `stale_after`.
//!
//! The worker is this test binary run again with `worker_process` as the only test and the
//! `JOBS_WORKER_*` variables set.
#![cfg(unix)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use syncstatus::jobs::{self, AttemptEnd, JobHandle, Runtime, RuntimeConfig};
use syncstatus::{
    DynSyncStorage, FileStorage, Progress, State, SyncStatus, WatchEvent, WatchOptions,
    WatchSelector,
};

const DEADLINE: Duration = Duration::from_secs(20);
const STALE_AFTER_MS: u64 = 400;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The worker side: runs until SIGTERM, then shuts the runtime down.
#[test]
fn worker_process() {
    let Some(dir) = std::env::var_os("JOBS_WORKER_DIR") else {
        return;
    };
    let kind = std::env::var("JOBS_WORKER_KIND").unwrap_or_default();
    let page_ms = env_u64("JOBS_WORKER_PAGE_MS", 20);
    let config = RuntimeConfig::default()
        .with_stale_after(Duration::from_millis(STALE_AFTER_MS))
        .with_heartbeat_every(Duration::from_millis(env_u64(
            "JOBS_WORKER_HEARTBEAT_MS",
            50,
        )))
        .with_history_limit(20);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let store: DynSyncStorage = Arc::new(FileStorage::open(dir).unwrap());
        let job = move |job: JobHandle| {
            let kind = kind.clone();
            async move {
                if kind == "hang" {
                    std::future::pending::<()>().await;
                }
                let pages = job.data().and_then(|d| d["pages"].as_u64()).unwrap_or(10);
                let mut page = job.checkpoint().and_then(Value::as_u64).unwrap_or(0);
                while page < pages {
                    tokio::time::sleep(Duration::from_millis(page_ms)).await;
                    page += 1;
                    if let Err(error) = job
                        .save_checkpoint(json!(page), Some(Progress::new(page, pages)))
                        .await
                    {
                        eprintln!("worker {}: write refused: {error}", std::process::id());
                        return Err(error.into());
                    }
                }
                Ok::<Value, jobs::BoxError>(json!({ "pages": pages, "pid": std::process::id() }))
            }
        };
        let runtime = Runtime::start(store, config, job);
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        terminate.recv().await;
        runtime.shutdown().await;
    });
}

struct Worker(Child);

impl Worker {
    fn start(dir: &Path, kind: &str, log: Option<&Path>, env: &[(&str, &str)]) -> Worker {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "worker_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("JOBS_WORKER_DIR", dir)
            .env("JOBS_WORKER_KIND", kind)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match log {
            Some(log) => command.stderr(std::fs::File::create(log).unwrap()),
            None => command.stderr(Stdio::null()),
        };
        for (name, value) in env {
            command.env(name, value);
        }
        Worker(command.spawn().expect("the worker starts"))
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.0.id()).unwrap();
        // SAFETY: kill(2) has no memory effects; the pid is our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits until the kernel reports the process stopped (SIGSTOP is delivered
    /// asynchronously).
    fn wait_stopped(&self) {
        let stat = format!("/proc/{}/stat", self.0.id());
        let until = std::time::Instant::now() + DEADLINE;
        loop {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            // The state follows the parenthesised command name: `pid (name) T ...`.
            let state = text
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            if matches!(state, Some('T' | 't')) || !Path::new("/proc/self/stat").exists() {
                return;
            }
            assert!(std::time::Instant::now() < until, "the worker did not stop");
            std::thread::yield_now();
        }
    }

    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits, on the store's watch, until the status of `id` satisfies `done`; returns it.
async fn wait_for(
    store: &DynSyncStorage,
    id: &str,
    what: &str,
    mut done: impl FnMut(&SyncStatus) -> bool,
) -> SyncStatus {
    let mut events = store
        .watch(
            WatchSelector::ids([id]),
            WatchOptions {
                snapshot: true,
                resume: None,
            },
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut last = None;
    loop {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("gave up waiting for {what}; last seen {last:?}"))
            .expect("the watch goes on")
            .expect("no watch error");
        let records = match event {
            WatchEvent::Upsert(record) => vec![record],
            WatchEvent::Resync(records) => records,
            WatchEvent::Removed { .. } => Vec::new(),
        };
        for record in records.into_iter().filter(|r| r.id == id) {
            let status: SyncStatus = serde_json::from_value(record.status.clone()).unwrap();
            if done(&status) {
                return status;
            }
            last = Some(status);
        }
    }
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

fn open(dir: &Path) -> DynSyncStorage {
    Arc::new(FileStorage::open(dir).unwrap())
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
    assert_eq!(done.attempt, 11);
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
        ("JOBS_WORKER_PAGE_MS", "100"),
        ("JOBS_WORKER_HEARTBEAT_MS", "100"),
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
