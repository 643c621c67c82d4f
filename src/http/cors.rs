//! CORS for pages served from other origins (a Next.js app on :3000 reading :3001), with
//! preflight, by `tower-http`'s layer.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::RouterConfig;
use super::reads::LIST_ERRORS_HEADER;
use crate::error::{Error, Result};

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Checks that `origin` is what a browser sends as `Origin`: `scheme://host[:port]`, nothing
/// after it.
fn parse_origin(origin: &str) -> Result<HeaderValue> {
    let invalid = |why: &str| {
        Error::Config(format!(
            "invalid CORS origin `{origin}`: {why} (expected scheme://host[:port], such as http://localhost:3000)"
        ))
    };
    let (scheme, rest) = origin
        .split_once("://")
        .ok_or_else(|| invalid("no scheme"))?;
    if !matches!(scheme, "http" | "https") {
        return Err(invalid("the scheme is not http or https"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(invalid("a host (and port) alone must follow the scheme"));
    }
    HeaderValue::from_str(origin).map_err(|_| invalid("not a valid header value"))
}

impl RouterConfig {
    /// Lets pages from `origin` (`http://localhost:3000`) read and, with a write key or local
    /// writes, write through the browser's CORS checks. Call once per origin.
    pub fn with_cors_origin(mut self, origin: &str) -> Result<Self> {
        let origin = parse_origin(origin)?;
        if !self.cors_origins.contains(&origin) {
            self.cors_origins.push(origin);
        }
        Ok(self)
    }
}

/// The layer for the configured origins; `None` without any.
pub(super) fn layer(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::POST,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_MATCH,
                header::IF_NONE_MATCH,
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([header::ETAG, HeaderName::from_static(LIST_ERRORS_HEADER)])
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

#[cfg(test)]
mod tests {
    use super::parse_origin;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        for good in [
            "http://localhost:3000",
            "https://app.example",
            "http://[::1]:3000",
        ] {
            assert!(parse_origin(good).is_ok(), "{good}");
        }
        for bad in [
            "localhost:3000",
            "ftp://x",
            "http://",
            "http://a/b",
            "http://a?x",
            "*",
            "http://u@a",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}
