//! A development server whose background syncs survive restarts.
//!
//! ```text
//! cargo run --example dev_server --features axum
//! curl -X POST localhost:3000/syncs -d '{"pages": 50, "page_ms": 100}'
//! open http://localhost:3000/
//! ```
//!
//! `POST /syncs` starts a simulated sync of `pages` pages, `page_ms` milliseconds each, that
//! keeps its progress (and so its resume point) in the store and heartbeats while it works.
//! Kill the server mid-sync (as a hot reload does) and start it again: a job whose worker
//! died stops heartbeating, is requeued after `SYNCSTATUS_STALE_AFTER`, and a new worker
//! resumes it from the last page done. Everything else comes from `syncstatus::http`.
//!
//! Environment:
//! - `PORT`: the port on 127.0.0.1 (default 3000; 0 picks a free one). The first line on
//!   stdout is the address, `listening on http://127.0.0.1:3000`.
//! - `SYNCSTATUS_STORE`: a store directory or URL (default `./data/sync-status`).
//! - `SYNCSTATUS_ADMIN_KEY`: the bearer key of the `/admin` routes (unset: disabled).
//! - `SYNCSTATUS_STALE_AFTER`: how long a running job may go without a heartbeat before it
//!   is requeued (default 3s; workers heartbeat every 500 ms).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use syncstatus::http::{ApiError, RouterConfig};
use syncstatus::{
    DynSyncStorage, Error, ListFilter, Progress, PutMode, RecoveryPolicy, State, SyncStatus,
    SyncStatusStore,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const DEFAULT_STORE: &str = "./data/sync-status";
const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(3);
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a simulated sync does: `pages` pages of `page_ms` milliseconds each.
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Plan {
    #[serde(default = "Plan::default_pages")]
    pages: u64,
    #[serde(default = "Plan::default_page_ms")]
    page_ms: u64,
}

impl Plan {
    fn default_pages() -> u64 {
        50
    }

    fn default_page_ms() -> u64 {
        100
    }

    fn check(self) -> Result<Self, String> {
        if !(1..=1_000_000).contains(&self.pages) {
            return Err(format!("pages must be 1 to 1000000, not {}", self.pages));
        }
        if self.page_ms > 600_000 {
            return Err(format!(
                "page_ms must be at most 600000, not {}",
                self.page_ms
            ));
        }
        Ok(self)
    }
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            pages: Self::default_pages(),
            page_ms: Self::default_page_ms(),
        }
    }
}

/// The workers of this process, one per job at most.
#[derive(Clone)]
struct Jobs {
    store: SyncStatusStore,
    workers: Arc<Mutex<HashMap<String, JoinHandle<()>>>>,
    stop: watch::Receiver<bool>,
}

impl Jobs {
    fn workers(&self) -> MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a worker for `id` unless this process already runs one.
    fn spawn(&self, id: &str) {
        if *self.stop.borrow() {
            return;
        }
        let mut workers = self.workers();
        workers.retain(|_, handle| !handle.is_finished());
        if workers.contains_key(id) {
            return;
        }
        let jobs = self.clone();
        let job_id = id.to_string();
        let handle = tokio::spawn(async move {
            match work(&jobs.store, &job_id, jobs.stop.clone()).await {
                Ok(outcome) => eprintln!("dev_server: {job_id}: worker done: {outcome:?}"),
                Err(error) => eprintln!("dev_server: {job_id}: worker failed: {error}"),
            }
        });
        workers.insert(id.to_string(), handle);
    }

    /// Waits for every worker, after the stop signal, to requeue its job and return.
    async fn join(&self) {
        let handles: Vec<JoinHandle<()>> = self.workers().drain().map(|(_, h)| h).collect();
        for handle in handles {
            let _ = handle.await;
        }
    }
}

/// Why a worker gave its job up.
#[derive(Debug)]
enum Outcome {
    Completed,
    NotPending,
    Lost,
    Requeued,
}

/// Runs one job: claims it (pending to running), does its pages from where the last
/// attempt left off, heartbeats, and completes it. On the stop signal it requeues the job so
/// the next start of the server resumes it at once.
async fn work(
    store: &SyncStatusStore,
    id: &str,
    stop: watch::Receiver<bool>,
) -> Result<Outcome, Error> {
    let now = store.now();
    let claimed = store
        .update(id, |current| {
            let status = current.ok_or_else(|| Error::NotFound { id: id.to_string() })?;
            if status.state != State::Pending {
                return Err(Error::Config(format!("`{id}` is {}", status.state)));
            }
            // `start` keeps the attempt number: recovery raised it when it requeued the job.
            let status = status.start(now);
            let attempt = status.attempt;
            let done = status.progress.map_or(0, |progress| progress.done);
            Ok(status.with_message(format!("attempt {attempt} from page {done}")))
        })
        .await;
    let claimed = match claimed {
        Ok(record) => record,
        Err(Error::Config(_)) => return Ok(Outcome::NotPending),
        Err(error) => return Err(error),
    };
    let attempt = claimed.status.attempt;
    let plan: Plan = claimed
        .status
        .data
        .clone()
        .and_then(|data| serde_json::from_value(data).ok())
        .unwrap_or_default();
    let mut done = claimed
        .status
        .progress
        .map_or(0, |progress| progress.done)
        .min(plan.pages);
    eprintln!(
        "dev_server: {id}: attempt {attempt}, page {done} of {}",
        plan.pages
    );

    // Every write checks the job is still ours: recovery may have given it to another worker
    // if this one looked dead.
    let write = |change: Box<dyn Fn(SyncStatus) -> SyncStatus + Send + Sync>| async move {
        store
            .update(id, |current| {
                let status = current.ok_or_else(|| Error::NotFound { id: id.to_string() })?;
                if status.state != State::Running || status.attempt != attempt {
                    return Err(Error::Config(format!(
                        "`{id}` is no longer this worker's (now {}, attempt {})",
                        status.state, status.attempt
                    )));
                }
                Ok(change(status))
            })
            .await
    };

    while done < plan.pages {
        let page = tokio::time::sleep(Duration::from_millis(plan.page_ms));
        tokio::pin!(page);
        loop {
            tokio::select! {
                () = &mut page => break,
                () = tokio::time::sleep(HEARTBEAT_EVERY) => {
                    let now = store.now();
                    if let Err(error) = write(Box::new(move |status| status.heartbeat(now))).await {
                        return lost(error);
                    }
                }
                () = stopped(stop.clone()) => {
                    let requeue = write(Box::new(|mut status| {
                        status.state = State::Pending;
                        status.attempt += 1;
                        status.message = Some("server stopped; requeued".to_string());
                        status
                    }));
                    return match requeue.await {
                        Ok(_) => Ok(Outcome::Requeued),
                        Err(error) => lost(error),
                    };
                }
            }
        }
        done += 1;
        let now = store.now();
        let total = plan.pages;
        let written = write(Box::new(move |status| {
            status
                .heartbeat(now)
                .with_progress(Progress::new(done, total))
                .with_message(format!("page {done} of {total}"))
        }))
        .await;
        if let Err(error) = written {
            return lost(error);
        }
    }
    let now = store.now();
    let pages = plan.pages;
    let finished = write(Box::new(move |status| {
        status
            .with_message(format!("synced {pages} pages"))
            .complete(now, json!({ "pages": pages }))
    }))
    .await;
    match finished {
        Ok(_) => {
            eprintln!("dev_server: {id}: completed on attempt {attempt}");
            Ok(Outcome::Completed)
        }
        Err(error) => lost(error),
    }
}

fn lost(error: Error) -> Result<Outcome, Error> {
    match error {
        Error::Config(_) | Error::NotFound { .. } => Ok(Outcome::Lost),
        other => Err(other),
    }
}

/// Requeues jobs whose worker died and starts a worker for every pending job, now and then
/// until the stop signal.
async fn supervise(
    jobs: Jobs,
    storage: DynSyncStorage,
    stale_after: Duration,
    stop: watch::Receiver<bool>,
) {
    let policy = RecoveryPolicy::default();
    let every = (stale_after / 3).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        match syncstatus::recover_stale(&*storage, stale_after, &policy).await {
            Ok(report) => {
                for job in &report.recovered {
                    eprintln!(
                        "dev_server: {}: worker died, {:?} (attempt {})",
                        job.id, job.action, job.attempt
                    );
                }
            }
            Err(error) => eprintln!("dev_server: recovery failed: {error}"),
        }
        match jobs
            .store
            .list(&ListFilter::state(State::Pending.as_str()))
            .await
        {
            Ok((pending, _unreadable)) => {
                for record in pending {
                    jobs.spawn(&record.id);
                }
            }
            Err(error) => eprintln!("dev_server: listing pending jobs failed: {error}"),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stopped(stop.clone()) => return,
        }
    }
}

/// `POST /syncs`: creates a pending job and starts its worker. Answers 202 with the record.
async fn start_sync(AxumState(jobs): AxumState<Jobs>, body: Bytes) -> Result<Response, ApiError> {
    let plan = if body.iter().all(u8::is_ascii_whitespace) {
        Plan::default()
    } else {
        serde_json::from_slice::<Plan>(&body)
            .map_err(|error| ApiError::bad_request(format!("invalid body: {error}")))?
    };
    let plan = plan.check().map_err(ApiError::bad_request)?;
    let mut status = SyncStatus::pending()
        .with_progress(Progress::new(0, plan.pages))
        .with_message("waiting for a worker");
    status.data = Some(json!(plan));
    let millis = jobs.store.now().as_millis();
    let mut id = format!("sync-{millis}");
    let mut suffix = 1;
    let record = loop {
        match jobs.store.put_with(&id, &status, PutMode::Create).await {
            Ok(record) => break record,
            Err(Error::AlreadyExists { .. }) if suffix < 1000 => {
                suffix += 1;
                id = format!("sync-{millis}-{suffix}");
            }
            Err(error) => return Err(error.into()),
        }
    };
    jobs.spawn(&record.id);
    let body = json!({
        "id": record.id,
        "version": record.version,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "status": record.status,
    });
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/syncs/{}", record.id))],
        Json(body),
    )
        .into_response())
}

async fn open_store(location: &str) -> syncstatus::Result<DynSyncStorage> {
    let url = if location.contains(':') {
        location.to_string()
    } else {
        format!("file:{location}")
    };
    syncstatus::open(&url).await
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn run() -> Result<(), BoxError> {
    let port: u16 = match env_var("PORT") {
        Some(text) => text
            .parse()
            .map_err(|error| format!("PORT `{text}`: {error}"))?,
        None => 3000,
    };
    let stale_after = match env_var("SYNCSTATUS_STALE_AFTER") {
        Some(text) => humantime::parse_duration(&text)
            .map_err(|error| format!("SYNCSTATUS_STALE_AFTER `{text}`: {error}"))?,
        None => DEFAULT_STALE_AFTER,
    };
    let location = env_var("SYNCSTATUS_STORE").unwrap_or_else(|| DEFAULT_STORE.to_string());
    let storage = open_store(&location).await?;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    eprintln!("dev_server: store {location}, stale after {stale_after:?}");

    let (stop_tx, stop_rx) = watch::channel(false);
    let jobs = Jobs {
        store: SyncStatusStore::from_dyn(storage.clone()),
        workers: Arc::default(),
        stop: stop_rx.clone(),
    };
    let supervisor = tokio::spawn(supervise(
        jobs.clone(),
        storage.clone(),
        stale_after,
        stop_rx.clone(),
    ));

    let mut config = RouterConfig::new(storage)
        .with_stale_after(stale_after)
        .with_shutdown(stopped(stop_rx.clone()));
    match env_var("SYNCSTATUS_ADMIN_KEY") {
        Some(key) => config = config.with_admin_key(key),
        None => eprintln!("dev_server: SYNCSTATUS_ADMIN_KEY is not set; /admin is disabled"),
    }
    let app: Router = config.router().merge(
        Router::new()
            .route("/syncs", post(start_sync))
            .with_state(jobs.clone()),
    );

    let stop_tx = Arc::new(stop_tx);
    let signal = tokio::spawn({
        let stop_tx = stop_tx.clone();
        async move {
            stop_signal().await;
            eprintln!("dev_server: stopping");
            let _ = stop_tx.send(true);
        }
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stopped(stop_rx))
        .await;
    // Also when serving failed: the workers must requeue their jobs and return.
    let _ = stop_tx.send(true);
    signal.abort();
    let _ = supervisor.await;
    jobs.join().await;
    served?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dev_server: {error}");
            ExitCode::FAILURE
        }
    }
}
