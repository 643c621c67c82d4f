//! Errors as JSON responses.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Error;

/// An error answer of the router: a status code and a JSON body
/// `{"error": "<message>", "id": "<id>"}` (`id` only when the error concerns one).
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
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            id: None,
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
        | Error::InvalidTransition { .. } => StatusCode::CONFLICT,
        Error::InvalidStatus { .. } => StatusCode::UNPROCESSABLE_ENTITY,
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
        | Error::InvalidStatus { id, .. } => Some(id),
        _ => None,
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = status_of(&error);
        if status.is_server_error() {
            tracing::error!(error = &error as &dyn std::error::Error, "request failed");
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
            id: id_of(&error).map(str::to_string),
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
                Error::backend("redis", std::io::Error::other("connection refused")),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (error, status) in cases {
            let text = error.to_string();
            let answer = ApiError::from(error);
            assert_eq!(answer.status, status, "{text}");
            assert!(answer.error.contains(&text), "{}", answer.error);
        }
        let conflict = ApiError::from(Error::VersionConflict {
            id: "job-1".into(),
            expected: 1,
            found: None,
        });
        assert_eq!(conflict.id.as_deref(), Some("job-1"));
    }
}
