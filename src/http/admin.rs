//! The admin routes, behind a bearer key.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::params::{NoParams, Params};
use super::reads::checked_id;
use crate::jobs;
use crate::lifecycle::{self, RecoveredJob, RecoveryReport, Stats};
use crate::record::Record;
use crate::storage::{CleanupOptions, CleanupReport};

/// Equality whose time depends only on the length of `given`, not on where it differs from
/// `expected`, so a caller cannot find the key byte by byte by timing answers.
pub(super) fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(given.len() != expected.len());
    for (index, byte) in given.iter().enumerate() {
        let other = expected.get(index).copied().unwrap_or(!*byte);
        difference |= byte ^ other;
    }
    std::hint::black_box(difference) == 0
}

/// Lets the request through only with the configured bearer key.
pub(super) fn authorize(config: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &config.admin_key else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin disabled",
        ));
    };
    let unauthorized = || ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong admin key");
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(unauthorized)?
        .as_bytes();
    let (scheme, token) = match value.iter().position(|byte| *byte == b' ') {
        Some(space) => (&value[..space], &value[space + 1..]),
        None => return Err(unauthorized()),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(unauthorized());
    }
    let token = token.trim_ascii();
    if constant_time_eq(token, key) {
        Ok(())
    } else {
        Err(unauthorized())
    }
}

pub(super) async fn stats(
    State(config): State<AppState>,
    headers: HeaderMap,
    params: Result<Params<NoParams>, ApiError>,
) -> Result<Json<Stats>, ApiError> {
    authorize(&config, &headers)?;
    params?;
    let stats = lifecycle::stats(&*config.store, config.stale_after).await?;
    Ok(Json(stats))
}

pub(super) async fn health(
    State(config): State<AppState>,
    headers: HeaderMap,
    params: Result<Params<NoParams>, ApiError>,
) -> Result<Response, ApiError> {
    authorize(&config, &headers)?;
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
pub(super) struct CleanupQuery {
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

pub(super) async fn cleanup(
    State(config): State<AppState>,
    headers: HeaderMap,
    params: Result<Params<CleanupQuery>, ApiError>,
) -> Result<Json<CleanupReport>, ApiError> {
    authorize(&config, &headers)?;
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

pub(super) async fn recover_one(
    State(config): State<AppState>,
    headers: HeaderMap,
    params: Result<Params<NoParams>, ApiError>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RecoveredJob>, ApiError> {
    authorize(&config, &headers)?;
    params?;
    let id = checked_id(path)?;
    let recovered = lifecycle::recover_job(&*config.store, &id, &config.recovery).await?;
    config.metrics.recoveries.fetch_add(1, Ordering::Relaxed);
    Ok(Json(recovered))
}

pub(super) async fn recover_stale(
    State(config): State<AppState>,
    headers: HeaderMap,
    params: Result<Params<NoParams>, ApiError>,
) -> Result<Json<RecoveryReport>, ApiError> {
    authorize(&config, &headers)?;
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

pub(super) async fn cancel_one(
    State(config): State<AppState>,
    headers: HeaderMap,
    params: Result<Params<NoParams>, ApiError>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Record>, ApiError> {
    authorize(&config, &headers)?;
    params?;
    let id = checked_id(path)?;
    Ok(Json(jobs::cancel(&*config.store, &id).await?))
}

pub(super) async fn retry_one(
    State(config): State<AppState>,
    headers: HeaderMap,
    params: Result<Params<NoParams>, ApiError>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Record>, ApiError> {
    authorize(&config, &headers)?;
    params?;
    let id = checked_id(path)?;
    Ok(Json(jobs::retry(&*config.store, &id).await?))
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn equal_only_when_every_byte_and_the_length_match() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cre", b"s3cret"));
        assert!(!constant_time_eq(b"s3crett", b"s3cret"));
        assert!(!constant_time_eq(b"", b"s3cret"));
        assert!(!constant_time_eq(b"x", b""));
    }
}
