//! Errors as JSON responses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Error;

/// An error answer of the router: a status code and a JSON body
/// `{"error": "<message>", "id": "<id>"}` (`id` only when the error concerns one).
///
/// A 500 says only `internal error (error id <error_id>)` and carries `error_id`: the
/// detail (file paths, SQL, server addresses) goes to the log, in a `tracing` error event
/// with the same `error_id` field, never to whoever sent the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    /// The HTTP status.
    #[serde(skip)]
    pub status: StatusCode,
    /// What went wrong, for people.
    pub error: String,
    /// The id concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// For a 500: the id of the log event that has the detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_id: Option<String>,
}

/// A new id for an error's log event: unique across the processes of a machine (time,
/// process id, a counter), short enough to quote.
pub(super) fn new_error_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{millis:x}-{:x}-{count:x}", std::process::id())
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            id: None,
            error_id: None,
        }
    }

    /// The same error, about `id`.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// 404 for an id that has no live record.
    pub fn not_found(id: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, format!("no record with id `{id}`")).with_id(id)
    }

    /// 400 for a bad argument.
    pub fn bad_request(error: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, error)
    }
}

/// The status a store error is answered with.
fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::InvalidId { .. } | Error::Config(_) => StatusCode::BAD_REQUEST,
        Error::VersionConflict { .. }
        | Error::AlreadyExists { .. }
        | Error::InvalidTransition { .. }
        | Error::LostOwnership { .. }
        | Error::Cancelled { .. }
        | Error::VersionExhausted { .. }
        | Error::InProgress { .. } => StatusCode::CONFLICT,
        Error::InvalidStatus { .. } | Error::Aborted { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::LockTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The id a store error concerns, if any.
fn id_of(error: &Error) -> Option<&str> {
    match error {
        Error::NotFound { id }
        | Error::VersionConflict { id, .. }
        | Error::AlreadyExists { id, .. }
        | Error::InvalidId { id, .. }
        | Error::Corrupt { id, .. }
        | Error::Serde { id, .. }
        | Error::InvalidTransition { id, .. }
        | Error::InvalidStatus { id, .. }
        | Error::Aborted { id, .. }
        | Error::LostOwnership { id, .. }
        | Error::Cancelled { id }
        | Error::LockTimeout { id, .. }
        | Error::VersionExhausted { id, .. }
        | Error::TooLarge { id, .. } => Some(id),
        _ => None,
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = status_of(&error);
        let id = id_of(&error).map(str::to_string);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            let error_id = new_error_id();
            tracing::error!(
                error_id = %error_id,
                error = &error as &dyn std::error::Error,
                "request failed"
            );
            return ApiError {
                status,
                error: format!("internal error (error id {error_id})"),
                id,
                error_id: Some(error_id),
            };
        }
        if status.is_server_error() {
            tracing::warn!(error = &error as &dyn std::error::Error, "request failed");
        }
        let mut message = error.to_string();
        // The message of a backend error is its own; the chain below it tells the cause.
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        ApiError {
            status,
            error: message,
            id,
            error_id: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(&self)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_statuses_by_meaning() {
        let cases = [
            (Error::NotFound { id: "a".into() }, StatusCode::NOT_FOUND),
            (
                Error::InvalidId {
                    id: "..".into(),
                    reason: "it starts with a dot",
                },
                StatusCode::BAD_REQUEST,
            ),
            (Error::Config("bad".into()), StatusCode::BAD_REQUEST),
            (
                Error::VersionConflict {
                    id: "a".into(),
                    expected: 1,
                    found: Some(2),
                },
                StatusCode::CONFLICT,
            ),
            (
                Error::AlreadyExists {
                    id: "a".into(),
                    version: 1,
                },
                StatusCode::CONFLICT,
            ),
            (
                Error::InvalidTransition {
                    id: "a".into(),
                    action: "recover",
                    state: "completed".into(),
                },
                StatusCode::CONFLICT,
            ),
            (
                Error::InvalidStatus {
                    id: "a".into(),
                    reason: "not an object".into(),
                },
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (Error::aborted("a", "no"), StatusCode::UNPROCESSABLE_ENTITY),
            (
                Error::LostOwnership {
                    id: "a".into(),
                    lease: "l".into(),
                    reason: "claimed".into(),
                },
                StatusCode::CONFLICT,
            ),
            (Error::Cancelled { id: "a".into() }, StatusCode::CONFLICT),
            (
                Error::LockTimeout {
                    id: "a".into(),
                    waited: std::time::Duration::from_secs(1),
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                Error::VersionExhausted {
                    id: "a".into(),
                    version: u64::MAX,
                },
                StatusCode::CONFLICT,
            ),
            (
                Error::TooLarge {
                    id: "a".into(),
                    size: 2,
                    limit: 1,
                },
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
        ];
        for (error, status) in cases {
            let text = error.to_string();
            let answer = ApiError::from(error);
            assert_eq!(answer.status, status, "{text}");
            assert!(answer.error.contains(&text), "{}", answer.error);
            if status != StatusCode::BAD_REQUEST && status != StatusCode::NOT_FOUND {
                assert_eq!(answer.id.as_deref(), Some("a"), "{text}");
            }
        }
        // A 500 says nothing of its cause, only the id of the log event that does.
        let answer = ApiError::from(Error::backend(
            "redis",
            std::io::Error::other("connection refused by 10.0.0.7:6379"),
        ));
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!answer.error.contains("10.0.0.7"), "{}", answer.error);
        let error_id = answer.error_id.expect("an error id");
        assert!(answer.error.contains(&error_id), "{}", answer.error);
        let conflict = ApiError::from(Error::VersionConflict {
            id: "job-1".into(),
            expected: 1,
            found: None,
        });
        assert_eq!(conflict.id.as_deref(), Some("job-1"));
    }
}
