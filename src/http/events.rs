//! `GET /syncs/{id}/events` and `GET /events`: watch streams as Server-Sent Events.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_core::Stream;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::params::{NoParams, Params};
use super::reads::checked_id;
use crate::error::Result;
use crate::record::Record;
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
    let error_id = super::error::new_error_id();
    // The detail (file paths, SQL) is for the log; the stream's readers get the id to quote.
    tracing::warn!(
        error_id = %error_id,
        error = error as &dyn std::error::Error,
        "watch stream reported a problem"
    );
    json_event(
        "problem",
        &json!({
            "error": format!("the store reported a problem (error id {error_id})"),
            "error_id": error_id,
        }),
    )
}

/// The event id of a record: `<created_at millis>-<version>`. The version alone would name
/// two records when one is deleted and written again up to the same version; the creation
/// time tells these incarnations apart.
fn incarnation_id(record: &Record) -> String {
    format!("{}-{}", record.created_at.as_millis(), record.version)
}

/// What a reconnecting client of a one-id stream holds, read from its `Last-Event-ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// It saw the record missing or removed (`0`).
    Nothing,
    /// It holds this incarnation at this version (`<created_at millis>-<version>`).
    Record { created_at: u64, version: u64 },
}

impl Held {
    /// `None` for anything this route did not make (an id of `/events`, or a bare version
    /// from before ids named the incarnation): those clients start over with a snapshot.
    fn parse(text: &str) -> Option<Self> {
        if text == "0" {
            return Some(Held::Nothing);
        }
        let (created_at, version) = text.split_once('-')?;
        Some(Held::Record {
            created_at: created_at.parse().ok()?,
            version: version.parse().ok()?,
        })
    }

    fn is(self, record: Option<&Record>) -> bool {
        match (self, record) {
            (Held::Nothing, None) => true,
            (
                Held::Record {
                    created_at,
                    version,
                },
                Some(record),
            ) => record.created_at.as_millis() == created_at && record.version == version,
            _ => false,
        }
    }
}

/// Events of a one-id stream: the id of every event names what the client then holds.
fn single_event(item: Result<WatchEvent>) -> Event {
    match item {
        Ok(WatchEvent::Upsert(record)) => {
            let id = incarnation_id(&record);
            json_event("upsert", &record).id(id)
        }
        Ok(WatchEvent::Removed { id }) => json_event("removed", &json!({ "id": id })).id("0"),
        Ok(WatchEvent::Resync(records)) => {
            let id = records
                .first()
                .map_or_else(|| "0".to_string(), |record| incarnation_id(record));
            json_event("resync", &records).id(id)
        }
        Err(error) => error_event(&error),
    }
}

/// The first snapshot of a resumed one-id stream, told against what the client holds:
/// nothing when it holds the same incarnation at the same version, else the change it
/// missed (the record, or its removal). Later events pass unchanged.
fn resumed(held: Held, id: String) -> impl FnMut(Result<WatchEvent>) -> Option<Result<WatchEvent>> {
    let mut held = Some(held);
    move |item| match (held.take(), item) {
        (Some(held), Ok(WatchEvent::Resync(mut records))) => {
            let current = records.pop();
            if held.is(current.as_deref()) {
                None
            } else {
                Some(Ok(match current {
                    Some(record) => WatchEvent::Upsert(record),
                    None => WatchEvent::Removed { id: id.clone() },
                }))
            }
        }
        // A problem before the snapshot: the snapshot still to come is the one to judge.
        (Some(held_now), Err(error)) => {
            held = Some(held_now);
            Some(Err(error))
        }
        (_, item) => Some(item),
    }
}

/// Events of the all-ids stream: ids are `<id>:<created_at millis>-<version>` (`<id>:0` for
/// a removal), so clients can drop repeats without taking a new incarnation for one.
fn multi_event(item: Result<WatchEvent>) -> Event {
    match item {
        Ok(WatchEvent::Upsert(record)) => {
            let id = format!("{}:{}", record.id, incarnation_id(&record));
            json_event("upsert", &record).id(id)
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
    Params(NoParams {}): Params<NoParams>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = checked_id(path)?;
    // Every stream starts from a snapshot taken with the watch, so nothing falls between
    // them; a client that says what it holds gets only the difference.
    let held = last_event_id(&headers).and_then(Held::parse);
    let options = WatchOptions {
        snapshot: true,
        resume: None,
    };
    let stream = config
        .store
        .watch(WatchSelector::ids([id.clone()]), options)
        .await?;
    let events = match held {
        Some(held) => stream
            .filter_map({
                let mut judge = resumed(held, id);
                move |item| std::future::ready(judge(item))
            })
            .map(single_event)
            .left_stream(),
        None => stream.map(single_event).right_stream(),
    };
    Ok(sse_response(&config, events))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    prefix: Option<String>,
}

pub(super) async fn all(
    State(config): State<AppState>,
    Params(params): Params<EventsQuery>,
) -> Result<Response, ApiError> {
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
