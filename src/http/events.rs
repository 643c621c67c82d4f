//! `GET /syncs/{id}/events` and `GET /events`: watch streams as Server-Sent Events.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_core::Stream;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::reads::{checked_id, query};
use crate::error::Result;
use crate::storage::{WatchEvent, WatchOptions, WatchSelector};

/// How soon a browser reconnects after the stream breaks (a restarting server, say).
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The `Last-Event-ID` header a reconnecting `EventSource` sends.
const LAST_EVENT_ID: &str = "last-event-id";

fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(LAST_EVENT_ID)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// An SSE event with JSON data; serializing our own values cannot fail, but if it did the
/// client would get a `problem` event rather than a broken stream.
fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|error| {
            Event::default()
                .event("problem")
                .data(json!({ "error": error.to_string() }).to_string())
        })
}

fn error_event(error: &crate::Error) -> Event {
    tracing::warn!(
        error = error as &dyn std::error::Error,
        "watch stream reported a problem"
    );
    json_event("problem", &json!({ "error": error.to_string() }))
}

/// Events of a one-id stream: the id of every event is the version the client then holds.
fn single_event(item: Result<WatchEvent>) -> Event {
    match item {
        Ok(WatchEvent::Upsert(record)) => {
            json_event("upsert", &record).id(record.version.to_string())
        }
        Ok(WatchEvent::Removed { id }) => json_event("removed", &json!({ "id": id })).id("0"),
        Ok(WatchEvent::Resync(records)) => {
            let version = records.first().map_or(0, |record| record.version);
            json_event("resync", &records).id(version.to_string())
        }
        Err(error) => error_event(&error),
    }
}

/// Events of the all-ids stream: ids are `<id>:<version>` (`<id>:0` for a removal).
fn multi_event(item: Result<WatchEvent>) -> Event {
    match item {
        Ok(WatchEvent::Upsert(record)) => {
            json_event("upsert", &record).id(format!("{}:{}", record.id, record.version))
        }
        Ok(WatchEvent::Removed { id }) => {
            json_event("removed", &json!({ "id": id })).id(format!("{id}:0"))
        }
        Ok(WatchEvent::Resync(records)) => json_event("resync", &records),
        Err(error) => error_event(&error),
    }
}

fn sse_response(config: &AppState, events: impl Stream<Item = Event> + Send + 'static) -> Response {
    let first = futures_util::stream::once(async { Event::default().retry(RECONNECT_AFTER) });
    let events = first.chain(events);
    let events = match config.shutdown.clone() {
        Some(shutdown) => events.take_until(shutdown).left_stream(),
        None => events.right_stream(),
    };
    let mut response = Sse::new(events.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::new().interval(config.keep_alive))
        .into_response();
    // Reverse proxies such as nginx would otherwise hold events back in their buffers.
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

pub(super) async fn one(
    State(config): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = checked_id(path)?;
    // A version the client holds lets the store send only what it missed; anything else
    // (no header, or one not made by this route) starts over with a snapshot.
    let options = match last_event_id(&headers).and_then(|text| text.parse::<u64>().ok()) {
        Some(0) => WatchOptions {
            snapshot: false,
            resume: Some(HashMap::new()),
        },
        Some(version) => WatchOptions {
            snapshot: false,
            resume: Some(HashMap::from([(id.clone(), version)])),
        },
        None => WatchOptions {
            snapshot: true,
            resume: None,
        },
    };
    let stream = config
        .store
        .watch(WatchSelector::ids([id]), options)
        .await?;
    Ok(sse_response(&config, stream.map(single_event)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    prefix: Option<String>,
}

pub(super) async fn all(
    State(config): State<AppState>,
    params: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query(params)?;
    let selector = match params.prefix.filter(|prefix| !prefix.is_empty()) {
        Some(prefix) => WatchSelector::Prefix(prefix),
        None => WatchSelector::All,
    };
    let options = WatchOptions {
        snapshot: true,
        resume: None,
    };
    let stream = config.store.watch(selector, options).await?;
    Ok(sse_response(&config, stream.map(multi_event)))
}
