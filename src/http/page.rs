//! The status page: one self-contained HTML document, fed by `GET /events`.

use axum::http::header;
use axum::response::{Html, IntoResponse};

use super::error::ApiError;
use super::params::{NoParams, Params};

const STATUS_PAGE: &str = include_str!("status.html");

pub(super) async fn status_page(
    params: Result<Params<NoParams>, ApiError>,
) -> Result<impl IntoResponse, ApiError> {
    params?;
    Ok((
        [
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        ],
        Html(STATUS_PAGE),
    ))
}
