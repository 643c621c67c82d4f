//! A worker runtime in a process of its own, on a file store's directory: the test binary run
//! again as its `worker_process` test (the harness of [`super::child`]), which a test can
//! kill, freeze or let run. Its job saves a checkpoint per page.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use syncstatus::jobs::{self, JobHandle, Runtime, RuntimeConfig};
use syncstatus::{DynSyncStorage, FileStorage, Progress};

use super::child;
use super::status_watch::STATUS_DEADLINE;

/// The `stale_after` of every worker: short, so that tests see a frozen worker's job
/// recovered soon.
pub const STALE_AFTER_MS: u64 = 400;

/// The test every binary that starts workers names `worker_process` and that calls
/// [`run_worker`].
const ENTRY: &str = "worker_process";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The worker side (the test binary's `worker_process` test calls it): runs until SIGTERM,
/// then shuts the runtime down. Does nothing unless started by [`Worker::start`].
///
/// Its role is the kind of job: `hang` never ends an attempt; any other saves a checkpoint
/// every `JOBS_WORKER_PAGE_MS` (default 20) until `data.pages` (default 10). The runtime
/// heartbeats every `JOBS_WORKER_HEARTBEAT_MS` (default 50) and runs up to
/// `JOBS_WORKER_MAX_JOBS` (default 16) jobs.
pub fn run_worker() {
    let Some((kind, dir)) = child::role() else {
        return;
    };
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
        let store = open(&dir);
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

/// A worker process. Dropping it kills the process.
pub struct Worker(pub std::process::Child);

impl Worker {
    /// Starts a worker on `dir` for jobs of `kind`, its stderr in `log` if given, with the
    /// `JOBS_WORKER_*` settings of `vars`.
    pub fn start(dir: &Path, kind: &str, log: Option<&Path>, vars: &[(&str, String)]) -> Worker {
        let mut command = child::command(ENTRY, kind, dir, vars);
        command.stdin(Stdio::null()).stdout(Stdio::null());
        match log {
            Some(log) => command.stderr(std::fs::File::create(log).unwrap()),
            None => command.stderr(Stdio::null()),
        };
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
        let until = std::time::Instant::now() + STATUS_DEADLINE;
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

    /// SIGKILL, then reaps the process.
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

/// The file store on `dir`, as the workers open it.
pub fn open(dir: &Path) -> DynSyncStorage {
    Arc::new(FileStorage::open(dir).unwrap())
}
