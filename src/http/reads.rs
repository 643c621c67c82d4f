//! `GET /syncs` and `GET /syncs/{id}`.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::etag::IfNoneMatch;
use super::params::{NoParams, Params};
use crate::error::Error;
use crate::id::validate_id;
use crate::storage::ListFilter;

/// The header telling how many records a listing could not read (they are logged).
pub(super) const LIST_ERRORS_HEADER: &str = "x-syncstatus-unreadable";

/// The `{id}` of a route, checked against the id allowlist, with every refusal as a JSON 400.
pub(super) fn checked_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    validate_id(&id).map_err(ApiError::from)?;
    Ok(id)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    state: Option<String>,
    prefix: Option<String>,
}

pub(super) async fn list(
    State(config): State<AppState>,
    Params(params): Params<ListQuery>,
) -> Result<Response, ApiError> {
    let filter = ListFilter {
        state: params.state.filter(|state| !state.is_empty()),
        prefix: params.prefix.filter(|prefix| !prefix.is_empty()),
    };
    let listing = config.store.list(&filter).await?;
    for error in &listing.errors {
        tracing::warn!(
            error = error as &dyn std::error::Error,
            "listing skipped an unreadable record"
        );
    }
    let unreadable = listing.errors.len();
    let mut response = Json(listing.records).into_response();
    response.headers_mut().insert(
        HeaderName::from_static(LIST_ERRORS_HEADER),
        HeaderValue::from(unreadable),
    );
    Ok(response)
}

pub(super) async fn get_one(
    State(config): State<AppState>,
    Params(NoParams {}): Params<NoParams>,
    path: Result<Path<String>, PathRejection>,
    if_none_match: IfNoneMatch,
) -> Result<Response, ApiError> {
    let id = checked_id(path)?;
    match config.store.get(&id).await {
        Ok(Some(record)) => super::etag::conditional_read(if_none_match, record),
        Ok(None) | Err(Error::NotFound { .. }) => Err(ApiError::not_found(&id)),
        Err(error) => Err(error.into()),
    }
}
