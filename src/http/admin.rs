//! The admin routes, behind a bearer key: one router, one layer that checks the key.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::auth::has_bearer_key;
use super::error::ApiError;
use super::params::{NoParams, Params};
use super::reads::checked_id;
use super::{AppState, metrics};
use crate::jobs;
use crate::lifecycle::{self, RecoveredJob, RecoveryReport, Stats};
use crate::storage::{CleanupOptions, CleanupReport};

/// The routes that answer only with the admin key (`/admin/...` and `/metrics`), all behind
/// one check of it. The check runs before anything else of a matched route, the query
/// string included; an unknown path is still a 404 without the key.
pub(super) fn routes(state: &AppState) -> Router<AppState> {
    let admin = Router::new()
        .route("/stats", get(stats))
        .route("/health", get(health))
        .route("/cleanup", post(cleanup))
        .route("/recover", post(recover_stale))
        .route("/recover/{id}", post(recover_one))
        .route("/cancel/{id}", job_action(JobAction::Cancel))
        .route("/retry/{id}", job_action(JobAction::Retry));
    Router::new()
        .nest("/admin", admin)
        .route("/metrics", get(metrics::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
}

/// Lets the request through only with the configured bearer key.
async fn require_key(
    State(config): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(key) = &config.admin_key else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin disabled",
        ));
    };
    if !has_bearer_key(request.headers(), key) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin key",
        ));
    }
    Ok(next.run(request).await)
}

async fn stats(
    State(config): State<AppState>,
    params: Result<Params<NoParams>, ApiError>,
) -> Result<Json<Stats>, ApiError> {
    params?;
    let stats = lifecycle::stats(&*config.store, config.stale_after).await?;
    Ok(Json(stats))
}

async fn health(
    State(config): State<AppState>,
    params: Result<Params<NoParams>, ApiError>,
) -> Result<Response, ApiError> {
    params?;
    let stats = lifecycle::stats(&*config.store, config.stale_after).await?;
    let status = if stats.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(stats)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CleanupQuery {
    #[serde(default)]
    dry_run: bool,
    ttl: Option<String>,
}

fn parse_ttl(text: &str) -> Result<Duration, ApiError> {
    humantime::parse_duration(text).map_err(|error| {
        ApiError::bad_request(format!(
            "invalid ttl `{text}`: {error} (expected a duration such as 30s, 5m or 1h)"
        ))
    })
}

async fn cleanup(
    State(config): State<AppState>,
    params: Result<Params<CleanupQuery>, ApiError>,
) -> Result<Json<CleanupReport>, ApiError> {
    let Params(params) = params?;
    let options = CleanupOptions {
        ttl: params.ttl.as_deref().map(parse_ttl).transpose()?,
        dry_run: params.dry_run,
    };
    let report = config.store.cleanup(&options).await?;
    if report.ran && !options.dry_run {
        config.metrics.cleanups.fetch_add(1, Ordering::Relaxed);
        let removed = u64::try_from(report.removed.len()).unwrap_or(u64::MAX);
        config
            .metrics
            .expired_removed
            .fetch_add(removed, Ordering::Relaxed);
    }
    Ok(Json(report))
}

async fn recover_one(
    State(config): State<AppState>,
    params: Result<Params<NoParams>, ApiError>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RecoveredJob>, ApiError> {
    params?;
    let id = checked_id(path)?;
    let recovered = lifecycle::recover_job(&*config.store, &id, &config.recovery).await?;
    config.metrics.recoveries.fetch_add(1, Ordering::Relaxed);
    Ok(Json(recovered))
}

async fn recover_stale(
    State(config): State<AppState>,
    params: Result<Params<NoParams>, ApiError>,
) -> Result<Json<RecoveryReport>, ApiError> {
    params?;
    let report =
        lifecycle::recover_stale(&*config.store, config.stale_after, &config.recovery).await?;
    let recovered = u64::try_from(report.recovered.len()).unwrap_or(u64::MAX);
    config
        .metrics
        .recoveries
        .fetch_add(recovered, Ordering::Relaxed);
    Ok(Json(report))
}

/// What an operator asks of one job.
#[derive(Clone, Copy, Debug)]
enum JobAction {
    Cancel,
    Retry,
}

/// `POST /admin/cancel/{id}` and `POST /admin/retry/{id}`: the job's record once the action
/// is written.
fn job_action(action: JobAction) -> MethodRouter<AppState> {
    post(
        move |State(config): State<AppState>,
              params: Result<Params<NoParams>, ApiError>,
              path: Result<Path<String>, PathRejection>| async move {
            params?;
            let id = checked_id(path)?;
            let record = match action {
                JobAction::Cancel => jobs::cancel(&*config.store, &id).await?,
                JobAction::Retry => jobs::retry(&*config.store, &id).await?,
            };
            Ok::<_, ApiError>(Json(record))
        },
    )
}
