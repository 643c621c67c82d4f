//! The write routes: `PUT`, `PATCH` (JSON Merge Patch) and `DELETE /syncs/{id}`, and
//! `POST /syncs/{id}/heartbeat`. Opt-in: without a write key or local writes they answer 403.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::auth::has_bearer_key;
use super::error::ApiError;
use super::etag::{Condition, condition, etag_of, header_value};
use super::reads::checked_id;
use super::{AppState, RouterConfig};
use crate::error::Error;
use crate::lifecycle;
use crate::record::Record;
use crate::storage::PutMode;

/// Who may use the write routes.
#[derive(Clone, Default)]
pub(super) enum WriteAccess {
    /// Nobody: the write routes answer 403.
    #[default]
    Disabled,
    /// Requests with `Authorization: Bearer <key>`.
    Key(Vec<u8>),
    /// Requests from loopback without a key (a developer's own machine).
    Local,
}

impl std::fmt::Debug for WriteAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.write_str(match self {
            WriteAccess::Disabled => "Disabled",
            WriteAccess::Key(_) => "Key",
            WriteAccess::Local => "Local",
        })
    }
}

impl RouterConfig {
    /// Enables the write routes for requests with `Authorization: Bearer <key>` (compared in
    /// constant time). An empty key leaves them as they were, since it would let anybody in.
    pub fn with_write_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        if !key.is_empty() {
            self.writes = WriteAccess::Key(key.into_bytes());
        }
        self
    }

    /// Enables the write routes without a key, for requests from loopback only: the peer
    /// address (when served with `into_make_service_with_connect_info::<SocketAddr>`) and the
    /// `Host` header (so a page on another site resolving its name to 127.0.0.1 cannot write)
    /// must both be loopback. Listen on a loopback address only; `syncstatus serve` refuses
    /// `--local-writes` on any other.
    pub fn with_local_writes(mut self) -> Self {
        self.writes = WriteAccess::Local;
        self
    }
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, message)
}

fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // `[::1]:3001`
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Lets a write through as the configured [`WriteAccess`] allows.
fn authorize(
    config: &RouterConfig,
    headers: &HeaderMap,
    extensions: &Extensions,
) -> Result<(), ApiError> {
    match &config.writes {
        WriteAccess::Disabled => Err(forbidden(
            "writes are disabled on this server (start it with a write key)",
        )),
        WriteAccess::Key(key) => {
            if has_bearer_key(headers, key) {
                Ok(())
            } else {
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong write key",
                ))
            }
        }
        WriteAccess::Local => {
            let peer = extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(peer)| *peer);
            if peer.is_some_and(|peer| !peer.ip().is_loopback()) {
                return Err(forbidden(
                    "writes without a key are accepted from loopback only",
                ));
            }
            let host = headers
                .get(header::HOST)
                .and_then(|host| host.to_str().ok())
                .unwrap_or_default();
            if !is_loopback_host(host) {
                return Err(forbidden(
                    "writes without a key need a loopback Host (localhost, 127.0.0.1 or [::1])",
                ));
            }
            Ok(())
        }
    }
}

/// Refuses a request whose body is not declared as one of `accepted`. A page on another site
/// can send a form or `text/plain` without asking (a "simple" request); a JSON content type
/// makes the browser ask first (a CORS preflight), which an unlisted origin fails.
fn require_content_type(headers: &HeaderMap, accepted: &[&str]) -> Result<(), ApiError> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    if accepted
        .iter()
        .any(|accepted| media_type.eq_ignore_ascii_case(accepted))
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "expected Content-Type {}, got `{media_type}`",
                accepted.join(" or ")
            ),
        ))
    }
}

fn json_body(id: &str, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body.map_err(|rejection| {
        ApiError::new(rejection.status(), rejection.body_text()).with_id(id)
    })?;
    serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request(format!("the body is not JSON: {error}")).with_id(id)
    })
}

/// RFC 7396 (JSON Merge Patch, which obsoletes RFC 7386): objects merge key by key, `null`
/// removes a key, anything else replaces the target.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// The `If-Match` of an update did not name the current write. Carried out of the update
/// closure as the source of [`Error::Aborted`].
#[derive(Debug)]
struct PreconditionFailed {
    current: Option<String>,
}

impl std::fmt::Display for PreconditionFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.current {
            Some(tag) => write!(f, "If-Match does not name the current write {tag}"),
            None => f.write_str("If-Match names a write, but there is no record"),
        }
    }
}

impl std::error::Error for PreconditionFailed {}

/// Checks `condition` against the live record inside an update closure.
fn check(id: &str, condition: Option<&Condition>, current: Option<&Record>) -> crate::Result<()> {
    match condition {
        Some(condition) if !condition.strongly_matches(current) => Err(Error::aborted(
            id,
            PreconditionFailed {
                current: current.map(etag_of),
            },
        )),
        _ => Ok(()),
    }
}

fn precondition_failed(id: &str, message: String, current: Option<&str>) -> Response {
    let mut response = ApiError::new(StatusCode::PRECONDITION_FAILED, message)
        .with_id(id)
        .into_response();
    if let Some(tag) = current.and_then(|tag| tag.parse().ok()) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

/// A store error as an answer; a failed precondition is 412 with the current `ETag`.
fn write_error(config: &RouterConfig, id: &str, error: Error) -> Response {
    let response = match &error {
        Error::Aborted { source, .. } => match source.downcast_ref::<PreconditionFailed>() {
            Some(failed) => precondition_failed(id, failed.to_string(), failed.current.as_deref()),
            None => ApiError::from(error).into_response(),
        },
        Error::AlreadyExists { version, .. } => precondition_failed(
            id,
            format!("If-None-Match: * but `{id}` exists (version {version})"),
            None,
        ),
        _ => ApiError::from(error).into_response(),
    };
    let status = response.status();
    if status == StatusCode::PRECONDITION_FAILED || status == StatusCode::CONFLICT {
        config.metrics.conflicts.fetch_add(1, Ordering::Relaxed);
    }
    response
}

/// The answer to a successful write: the record and its `ETag`, 201 for a new record.
fn written(config: &RouterConfig, record: Record) -> Response {
    config.metrics.writes.fetch_add(1, Ordering::Relaxed);
    let status = if record.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let etag = header_value(&record);
    let mut response = (status, axum::Json(record)).into_response();
    response.headers_mut().insert(header::ETAG, etag);
    response
}

type Answer = Result<Response, Response>;

/// The checks every write passes before it touches the store; the checked id.
fn admit(
    config: &RouterConfig,
    headers: &HeaderMap,
    extensions: &Extensions,
    path: Result<Path<String>, PathRejection>,
) -> Result<String, ApiError> {
    authorize(config, headers, extensions)?;
    checked_id(path)
}

/// `PUT /syncs/{id}`: the body is the new status. `If-None-Match: *` creates only;
/// `If-Match` writes only over the named write; otherwise it overwrites.
pub(super) async fn put(
    State(config): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    extensions: Extensions,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let id = admit(&config, &headers, &extensions, path).map_err(IntoResponse::into_response)?;
    require_content_type(&headers, &["application/json"])
        .map_err(|e| e.with_id(&id).into_response())?;
    let status = json_body(&id, body).map_err(IntoResponse::into_response)?;
    let if_match = condition(&headers, header::IF_MATCH).map_err(IntoResponse::into_response)?;
    let if_none_match =
        condition(&headers, header::IF_NONE_MATCH).map_err(IntoResponse::into_response)?;
    let result = match (if_match, if_none_match) {
        (Some(_), Some(_)) => {
            return Err(
                ApiError::bad_request("give If-Match or If-None-Match, not both")
                    .with_id(&id)
                    .into_response(),
            );
        }
        (None, Some(Condition::Any)) => config.store.put(&id, status, PutMode::Create).await,
        (None, Some(Condition::Tags(_))) => {
            return Err(
                ApiError::bad_request("If-None-Match on a write must be *: create only")
                    .with_id(&id)
                    .into_response(),
            );
        }
        (Some(wanted), None) => {
            config
                .store
                .update(&id, &mut |current| {
                    check(&id, Some(&wanted), current)?;
                    Ok(status.clone())
                })
                .await
        }
        (None, None) => config.store.put(&id, status, PutMode::Overwrite).await,
    };
    result
        .map(|record| written(&config, record))
        .map_err(|error| write_error(&config, &id, error))
}

/// `PATCH /syncs/{id}`: a JSON Merge Patch of the status, applied inside `update` so no
/// concurrent write is lost; `If-Match` is checked against the record the patch applies to.
pub(super) async fn patch(
    State(config): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    extensions: Extensions,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let id = admit(&config, &headers, &extensions, path).map_err(IntoResponse::into_response)?;
    require_content_type(
        &headers,
        &["application/merge-patch+json", "application/json"],
    )
    .map_err(|e| e.with_id(&id).into_response())?;
    let patch = json_body(&id, body).map_err(IntoResponse::into_response)?;
    let if_match = condition(&headers, header::IF_MATCH).map_err(IntoResponse::into_response)?;
    let result = config
        .store
        .update(&id, &mut |current| {
            check(&id, if_match.as_ref(), current)?;
            let record = current.ok_or_else(|| Error::NotFound { id: id.clone() })?;
            let mut status = record.status.clone();
            merge_patch(&mut status, &patch);
            Ok(status)
        })
        .await;
    result
        .map(|record| written(&config, record))
        .map_err(|error| write_error(&config, &id, error))
}

/// `DELETE /syncs/{id}`: 204 when a live record was removed, 404 when there was none.
pub(super) async fn delete(
    State(config): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    extensions: Extensions,
) -> Answer {
    let id = admit(&config, &headers, &extensions, path).map_err(IntoResponse::into_response)?;
    if headers.contains_key(header::IF_MATCH) {
        // A check before the delete could pass and still remove a newer write: the store
        // has no conditional delete, so refuse rather than pretend.
        return Err(ApiError::bad_request(
            "DELETE with If-Match is not supported: the store cannot delete conditionally",
        )
        .with_id(&id)
        .into_response());
    }
    match config.store.delete(&id).await {
        Ok(true) => {
            config.metrics.writes.fetch_add(1, Ordering::Relaxed);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Ok(false) => Err(ApiError::not_found(&id).into_response()),
        Err(error) => Err(write_error(&config, &id, error)),
    }
}

/// `POST /syncs/{id}/heartbeat`: records that the job's worker is alive
/// ([`lifecycle::heartbeat`]). The body is empty or `{}`, declared as JSON, so that a page on
/// another site cannot send it without a preflight.
pub(super) async fn heartbeat(
    State(config): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    extensions: Extensions,
) -> Answer {
    let id = admit(&config, &headers, &extensions, path).map_err(IntoResponse::into_response)?;
    require_content_type(&headers, &["application/json"])
        .map_err(|e| e.with_id(&id).into_response())?;
    match lifecycle::heartbeat(&*config.store, &id).await {
        Ok(record) => Ok(written(&config, record)),
        Err(Error::NotFound { .. }) => Err(ApiError::not_found(&id).into_response()),
        Err(error) => Err(write_error(&config, &id, error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The examples of RFC 7396, appendix A.
    #[test]
    fn merge_patch_follows_the_rfc_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (mut target, patch, expected) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, expected, "patch {patch}");
        }
    }

    #[test]
    fn loopback_hosts_are_names_and_addresses_of_this_machine() {
        for host in [
            "localhost:3001",
            "LOCALHOST",
            "127.0.0.1:80",
            "127.1.2.3",
            "[::1]:3001",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:3001",
            "192.168.1.2:3001",
            "",
            "localhost.evil.example",
            "[::2]:1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
