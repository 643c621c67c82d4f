//! A development server whose background syncs survive restarts.
//!
//! ```text
//! cargo run --example dev_server --features axum
//! curl -X POST localhost:3000/syncs -d '{"pages": 50, "page_ms": 100}'
//! open http://localhost:3000/
//! ```
//!
//! `POST /syncs` starts a simulated sync (`pages` pages of `page_ms` ms) run by the
//! [`syncstatus::jobs::Runtime`]: it heartbeats every 500 ms and keeps its resume point in
//! `progress.done`. Kill the server mid-sync (as a hot reload does) and start it again: the
//! job is requeued after `SYNCSTATUS_STALE_AFTER` and resumed from the last page done.
//! SIGTERM and Ctrl-C requeue running jobs at once, counting no failure. The rest is
//! `syncstatus::http`. Environment: `PORT` (default 3000; 0: any free port; the first stdout
//! line is the address), `SYNCSTATUS_STORE` (a directory or URL, default
//! `./data/sync-status`), `SYNCSTATUS_ADMIN_KEY` (unset: `/admin` disabled),
//! `SYNCSTATUS_STALE_AFTER` (default 3s).

use std::process::ExitCode;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use syncstatus::http::{ApiError, RouterConfig};
use syncstatus::jobs::{AttemptEnd, BoxError, JobHandle, Runtime, RuntimeConfig};
use syncstatus::{DynSyncStorage, Error, Progress, PutMode, SyncStatus, SyncStorageExt};

const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(3);
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// What a simulated sync does: `pages` pages of `page_ms` milliseconds each.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
struct Plan {
    pages: u64,
    page_ms: u64,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            pages: 50,
            page_ms: 100,
        }
    }
}

/// The one job function: does the pages from where the last attempt left off.
async fn sync(job: JobHandle) -> Result<Value, BoxError> {
    let plan: Plan = match job.data() {
        Some(data) => serde_json::from_value(data.clone())?,
        None => Plan::default(),
    };
    let mut done = job.progress().map_or(0, |p| p.done).min(plan.pages);
    let (id, attempt) = (job.id().to_string(), job.attempt());
    let died = job.previous_attempt().and_then(|a| a.outcome) == Some(AttemptEnd::Interrupted);
    let why = if died { "worker died; " } else { "" };
    eprintln!("dev_server: {id}: {why}attempt {attempt} from page {done}");
    while done < plan.pages {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(plan.page_ms)) => {}
            reason = job.stopped() => return Err(format!("stopped: {reason:?}").into()),
        }
        done += 1;
        let total = plan.pages;
        job.update(|status| {
            status.progress = Some(Progress::new(done, total));
            status.checkpoint = Some(json!(done));
            status.message = Some(format!("page {done} of {total}"));
        })
        .await?;
    }
    eprintln!("dev_server: {id}: completed on attempt {attempt}");
    Ok(json!({ "pages": plan.pages }))
}

/// `POST /syncs`: stores a pending job for the runtime. Answers 202 with the record.
async fn start_sync(
    State(store): State<DynSyncStorage>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let plan = if body.iter().all(u8::is_ascii_whitespace) {
        Plan::default()
    } else {
        serde_json::from_slice::<Plan>(&body)
            .map_err(|error| ApiError::bad_request(format!("invalid body: {error}")))?
    };
    if !(1..=1_000_000).contains(&plan.pages) || plan.page_ms > 600_000 {
        let why = "pages must be 1 to 1000000 and page_ms at most 600000";
        return Err(ApiError::bad_request(why));
    }
    let status = SyncStatus::pending()
        .with_progress(Progress::new(0, plan.pages))
        .with_message("waiting for a worker")
        .with_data(json!(plan));
    let status = serde_json::to_value(status).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let millis = store.now().as_millis();
    let mut id = format!("sync-{millis}");
    let record = loop {
        match store.put(&id, status.clone(), PutMode::Create).await {
            Ok(record) => break record,
            Err(Error::AlreadyExists { .. }) if id.len() < 40 => id.push('x'),
            Err(error) => return Err(error.into()),
        }
    };
    let location = [(header::LOCATION, format!("/syncs/{}", record.id))];
    Ok((StatusCode::ACCEPTED, location, Json(record)).into_response())
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Resolves on SIGTERM (never where there is none).
async fn terminate() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        term.recv().await;
        return;
    }
    std::future::pending().await
}

/// Resolves on SIGTERM or Ctrl-C.
async fn stop_signal() {
    tokio::select! { _ = tokio::signal::ctrl_c() => {}, () = terminate() => {} }
    eprintln!("dev_server: stopping");
}

async fn run() -> Result<(), BoxError> {
    let port: u16 = env_var("PORT").map_or(Ok(3000), |text| text.parse())?;
    let stale_after = match env_var("SYNCSTATUS_STALE_AFTER") {
        Some(text) => humantime::parse_duration(&text)
            .map_err(|error| format!("SYNCSTATUS_STALE_AFTER `{text}`: {error}"))?,
        None => DEFAULT_STALE_AFTER,
    };
    // A directory or a store URL; `open` takes both.
    let location = env_var("SYNCSTATUS_STORE").unwrap_or_else(|| "./data/sync-status".into());
    let store = syncstatus::open(&location).await?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // The URL may hold a password.
    let shown = syncstatus::store_url::redact(&location);
    eprintln!("dev_server: store {shown}, stale after {stale_after:?}");

    let jobs = RuntimeConfig::default()
        .with_stale_after(stale_after)
        .with_heartbeat_every(HEARTBEAT_EVERY.min(stale_after / 3));
    let runtime = Runtime::start(store.clone(), jobs, sync);

    let stopping = futures_util::FutureExt::shared(stop_signal());
    let mut config = RouterConfig::new(store.clone())
        .with_stale_after(stale_after)
        .with_shutdown(stopping.clone());
    match env_var("SYNCSTATUS_ADMIN_KEY") {
        Some(key) => config = config.with_admin_key(key),
        None => eprintln!("dev_server: SYNCSTATUS_ADMIN_KEY is not set; /admin is disabled"),
    }
    let app = config.router().merge(
        Router::new()
            .route("/syncs", post(start_sync))
            .with_state(store),
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stopping)
        .await;
    // Also when serving failed: running jobs go back to pending for the next start.
    runtime.shutdown().await;
    Ok(served?)
}

#[tokio::main]
async fn main() -> ExitCode {
    let Err(error) = run().await else {
        return ExitCode::SUCCESS;
    };
    eprintln!("dev_server: {error}");
    ExitCode::FAILURE
}
