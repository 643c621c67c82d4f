//! Helpers of the multi-process job tests: the worker process (this test binary run again),
//! waiting on the store's watch, and a small random generator.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use syncstatus::jobs::{self, JobHandle, Runtime, RuntimeConfig};
use syncstatus::{
    DynSyncStorage, FileStorage, Progress, SyncStatus, WatchEvent, WatchOptions, WatchSelector,
};

/// A guard against a hang, not a timing: debug builds on 2 loaded cores are slow.
pub const DEADLINE: Duration = Duration::from_secs(120);
pub const STALE_AFTER_MS: u64 = 400;

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The worker side (the test binary's `worker_process` test calls it): runs until SIGTERM,
/// then shuts the runtime down. Does nothing unless started by [`Worker::start`].
pub fn run_worker() {
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
        .with_history_limit(20)
        .with_max_jobs(env_u64("JOBS_WORKER_MAX_JOBS", 16) as usize);
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

/// A worker process: this test binary run again as `worker_process`.
pub struct Worker(pub Child);

impl Worker {
    pub fn start(dir: &Path, kind: &str, log: Option<&Path>, env: &[(&str, &str)]) -> Worker {
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

    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.0.id()).unwrap();
        // SAFETY: kill(2) has no memory effects; the pid is our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits until the kernel reports the process stopped (SIGSTOP is delivered
    /// asynchronously).
    pub fn wait_stopped(&self) {
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

    pub fn kill(mut self) {
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
pub async fn wait_for(
    store: &DynSyncStorage,
    id: &str,
    what: &str,
    done: impl FnMut(&SyncStatus) -> bool,
) -> SyncStatus {
    wait_for_within(store, id, what, DEADLINE, done).await
}

/// [`wait_for`] with another deadline.
pub async fn wait_for_within(
    store: &DynSyncStorage,
    id: &str,
    what: &str,
    within: Duration,
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
    let deadline = tokio::time::Instant::now() + within;
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
pub struct Random(u64);

impl Random {
    pub fn seeded() -> Random {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("random seed {seed}");
        Random(seed)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

pub fn open(dir: &Path) -> DynSyncStorage {
    Arc::new(FileStorage::open(dir).unwrap())
}
