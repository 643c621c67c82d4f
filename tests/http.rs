//! The axum router, driven request by request with `tower::ServiceExt::oneshot`.
#![cfg(feature = "axum")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::memory_fixture::{Fixture, TTL, fixture};
use syncstatus::http::{RouterConfig, router};
use syncstatus::{Clock, DynSyncStorage, PutMode, State, SyncStatus, SyncStorage, SyncStorageExt};
use tokio::time::timeout;
use tower::ServiceExt;

/// How long a test waits for something that should happen at once.
const DEADLINE: Duration = Duration::from_secs(10);
const KEY: &str = "correct horse battery staple";
const STALE_AFTER: Duration = Duration::from_secs(60);

impl Fixture {
    fn app(&self) -> Router {
        router(self.store.clone())
    }

    fn admin_app(&self) -> Router {
        RouterConfig::new(self.store.clone())
            .with_admin_key(KEY)
            .with_stale_after(STALE_AFTER)
            .router()
    }

    async fn put(&self, id: &str, status: &SyncStatus) -> syncstatus::Record {
        self.store
            .put(
                id,
                serde_json::to_value(status).expect("a SyncStatus serializes"),
                PutMode::Overwrite,
            )
            .await
            .expect("put")
    }

    fn running(&self) -> SyncStatus {
        SyncStatus::pending().start(self.clock.now())
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

fn request(method: Method, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

async fn send(app: Router, request: Request<Body>) -> Answer {
    let response = timeout(DEADLINE, app.oneshot(request))
        .await
        .expect("the router answers in time")
        .expect("the router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("the body arrives in time")
        .expect("the body can be read")
        .to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(app: Router, uri: &str) -> Answer {
    send(app, request(Method::GET, uri).body(Body::empty()).unwrap()).await
}

async fn admin(app: Router, method: Method, uri: &str, key: Option<&str>) -> Answer {
    let mut builder = request(method, uri);
    if let Some(key) = key {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    send(app, builder.body(Body::empty()).unwrap()).await
}

fn assert_error(answer: &Answer, status: StatusCode, id: Option<&str>) {
    assert_eq!(answer.status, status, "body: {}", answer.body);
    assert_eq!(
        answer.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    let error = answer.body["error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "no error message in {}", answer.body);
    match id {
        Some(id) => assert_eq!(answer.body["id"], json!(id), "body: {}", answer.body),
        None => assert!(answer.body.get("id").is_none(), "body: {}", answer.body),
    }
}

// ---------------------------------------------------------------------------------------
// Reads

#[tokio::test]
async fn list_returns_every_record_sorted_and_filters_by_state_and_prefix() {
    let fx = fixture();
    let empty = get(fx.app(), "/syncs").await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.body, json!([]));

    fx.put("b-run", &fx.running()).await;
    fx.put("a-wait", &SyncStatus::pending()).await;
    let done = fx.running().complete(fx.clock.now(), json!({"pages": 3}));
    fx.put("c-done", &done).await;

    let all = get(fx.app(), "/syncs").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.headers.get("x-syncstatus-unreadable").unwrap(), "0");
    let ids: Vec<&str> = all
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a-wait", "b-run", "c-done"]);
    assert_eq!(all.body[2]["status"]["result"], json!({"pages": 3}));
    assert_eq!(all.body[0]["version"], json!(1));

    let running = get(fx.app(), "/syncs?state=running").await;
    assert_eq!(running.status, StatusCode::OK);
    assert_eq!(running.body.as_array().unwrap().len(), 1);
    assert_eq!(running.body[0]["id"], "b-run");

    let prefixed = get(fx.app(), "/syncs?prefix=c-").await;
    assert_eq!(prefixed.body.as_array().unwrap().len(), 1);
    assert_eq!(prefixed.body[0]["id"], "c-done");

    let none = get(fx.app(), "/syncs?state=failed").await;
    assert_eq!(none.body, json!([]));

    let unknown = get(fx.app(), "/syncs?colour=blue").await;
    assert_error(&unknown, StatusCode::BAD_REQUEST, None);
}

#[tokio::test]
async fn get_returns_the_record() {
    let fx = fixture();
    let written = fx.put("sync-1", &fx.running()).await;
    let answer = get(fx.app(), "/syncs/sync-1").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, serde_json::to_value(&written).unwrap());
    assert_eq!(answer.body["status"]["state"], "running");
}

#[tokio::test]
async fn get_of_a_missing_record_is_a_json_404() {
    let fx = fixture();
    let answer = get(fx.app(), "/syncs/never-written").await;
    assert_error(&answer, StatusCode::NOT_FOUND, Some("never-written"));
}

#[tokio::test]
async fn get_of_an_expired_record_is_a_json_404() {
    let fx = fixture();
    fx.put("short-lived", &fx.running()).await;
    assert_eq!(
        get(fx.app(), "/syncs/short-lived").await.status,
        StatusCode::OK
    );
    fx.clock.advance(TTL + Duration::from_secs(1));
    let answer = get(fx.app(), "/syncs/short-lived").await;
    assert_error(&answer, StatusCode::NOT_FOUND, Some("short-lived"));
    let listed = get(fx.app(), "/syncs").await;
    assert_eq!(listed.body, json!([]));
}

const BAD_IDS: &[(&str, &str)] = &[
    ("..", "dot"),
    (".hidden", "dot"),
    ("a%2Fb", "separator"),
    ("a%5Cb", "separator"),
    ("%2Fetc%2Fpasswd", "separator"),
    ("CON", "device"),
    ("nul.json", "device"),
    ("a%00b", "NUL"),
    ("trailing.", "dot"),
    ("a%20b", "only ASCII letters"),
    ("%C3%A9", "non-ASCII"),
];

#[tokio::test]
async fn bad_ids_are_a_400_with_the_reason_on_every_id_route() {
    let fx = fixture();
    let long = "x".repeat(129);
    let mut ids: Vec<(String, &str)> = BAD_IDS
        .iter()
        .map(|(id, reason)| (id.to_string(), *reason))
        .collect();
    ids.push((long, "longer than 128"));
    for (id, reason) in &ids {
        for (method, uri) in [
            (Method::GET, format!("/syncs/{id}")),
            (Method::GET, format!("/syncs/{id}/events")),
            (Method::POST, format!("/admin/recover/{id}")),
        ] {
            let answer = admin(fx.admin_app(), method, &uri, Some(KEY)).await;
            assert_eq!(
                answer.status,
                StatusCode::BAD_REQUEST,
                "{uri}: {}",
                answer.body
            );
            let error = answer.body["error"].as_str().unwrap();
            assert!(error.contains(reason), "{uri}: `{error}` lacks `{reason}`");
            assert!(answer.body["id"].is_string(), "{uri}: {}", answer.body);
        }
    }
    // A path segment that is not UTF-8 is refused before it becomes an id, also as JSON.
    let answer = get(fx.app(), "/syncs/%FF").await;
    assert_error(&answer, StatusCode::BAD_REQUEST, None);
}

#[tokio::test]
async fn status_page_is_self_contained_html_fed_by_the_event_stream() {
    let fx = fixture();
    let response = fx
        .app()
        .oneshot(request(Method::GET, "/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(html.contains("new EventSource(base + \"events\")"));
    assert!(html.contains("createElement(\"progress\")"));
    for external in ["src=\"http", "href=\"http", "src=\"//", "@import"] {
        assert!(!html.contains(external), "the page loads `{external}`");
    }
}

// ---------------------------------------------------------------------------------------
// Admin

const ADMIN_ROUTES: &[(&str, &str)] = &[
    ("GET", "/admin/stats"),
    ("GET", "/admin/health"),
    ("POST", "/admin/cleanup"),
    ("POST", "/admin/recover"),
    ("POST", "/admin/recover/sync-1"),
];

fn method(name: &str) -> Method {
    name.parse().unwrap()
}

#[tokio::test]
async fn admin_routes_without_a_configured_key_are_disabled_never_open() {
    let fx = fixture();
    fx.put("sync-1", &fx.running()).await;
    for (name, uri) in ADMIN_ROUTES {
        for key in [None, Some(KEY), Some("")] {
            let answer = admin(fx.app(), method(name), uri, key).await;
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
            assert_eq!(answer.body, json!({"error": "admin disabled"}), "{uri}");
        }
        // An empty key leaves the routes disabled: it would let `Bearer ` in.
        let empty_key = RouterConfig::new(fx.store.clone())
            .with_admin_key("")
            .router();
        let answer = admin(empty_key, method(name), uri, Some("")).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
    }
    // Nothing was done behind the refusals.
    let record = fx.store.get_required("sync-1").await.unwrap();
    assert_eq!(record.version, 1);
    assert_eq!(record.state(), Some("running"));
}

#[tokio::test]
async fn admin_routes_refuse_a_missing_or_wrong_key_with_401() {
    let fx = fixture();
    fx.put("sync-1", &fx.running()).await;
    for (name, uri) in ADMIN_ROUTES {
        let missing = admin(fx.admin_app(), method(name), uri, None).await;
        assert_error(&missing, StatusCode::UNAUTHORIZED, None);
        assert_eq!(missing.headers[header::WWW_AUTHENTICATE], "Bearer");
        for wrong in [
            "wrong",
            "",
            "correct horse battery stapl",
            "correct horse battery staplee",
        ] {
            let answer = admin(fx.admin_app(), method(name), uri, Some(wrong)).await;
            assert_error(&answer, StatusCode::UNAUTHORIZED, None);
        }
        let basic = send(
            fx.admin_app(),
            request(method(name), uri)
                .header(header::AUTHORIZATION, format!("Basic {KEY}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_error(&basic, StatusCode::UNAUTHORIZED, None);
    }
    let record = fx.store.get_required("sync-1").await.unwrap();
    assert_eq!(record.version, 1);
}

#[tokio::test]
async fn admin_stats_with_the_right_key() {
    let fx = fixture();
    fx.put("a", &fx.running()).await;
    fx.put("b", &fx.running()).await;
    fx.put("c", &SyncStatus::pending()).await;
    let answer = admin(fx.admin_app(), Method::GET, "/admin/stats", Some(KEY)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["counts"], json!({"pending": 1, "running": 2}));
    assert_eq!(answer.body["total"], json!(3));
    assert_eq!(answer.body["stale_running"], json!([]));
    assert_eq!(answer.body["healthy"], json!(true));
    // The scheme is case-insensitive, as RFC 9110 says.
    let lower = send(
        fx.admin_app(),
        request(Method::GET, "/admin/stats")
            .header(header::AUTHORIZATION, format!("bearer {KEY}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(lower.status, StatusCode::OK);
}

#[tokio::test]
async fn admin_health_is_503_while_a_stale_job_exists() {
    let fx = fixture();
    fx.put("worker-alive", &fx.running()).await;
    let healthy = admin(fx.admin_app(), Method::GET, "/admin/health", Some(KEY)).await;
    assert_eq!(healthy.status, StatusCode::OK, "{}", healthy.body);
    assert_eq!(healthy.body["healthy"], json!(true));

    fx.clock.advance(STALE_AFTER + Duration::from_secs(1));
    let stale = admin(fx.admin_app(), Method::GET, "/admin/health", Some(KEY)).await;
    assert_eq!(
        stale.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        stale.body
    );
    assert_eq!(stale.body["healthy"], json!(false));
    assert_eq!(stale.body["stale_running"], json!(["worker-alive"]));

    // A heartbeat makes it healthy again.
    syncstatus::heartbeat(&*fx.store, "worker-alive")
        .await
        .unwrap();
    let again = admin(fx.admin_app(), Method::GET, "/admin/health", Some(KEY)).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
}

#[tokio::test]
async fn admin_cleanup_honours_dry_run_and_ttl() {
    let fx = fixture();
    fx.put("old", &SyncStatus::pending()).await;
    fx.clock.advance(Duration::from_secs(120));
    fx.put("young", &SyncStatus::pending()).await;

    let dry = admin(
        fx.admin_app(),
        Method::POST,
        "/admin/cleanup?dry_run=true&ttl=1m",
        Some(KEY),
    )
    .await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.body);
    assert_eq!(dry.body["removed"], json!(["old"]));
    assert_eq!(dry.body["ran"], json!(true));
    assert!(fx.store.get("old").await.unwrap().is_some());

    // Under the store's own TTL (5 minutes) nothing is due yet.
    let by_policy = admin(fx.admin_app(), Method::POST, "/admin/cleanup", Some(KEY)).await;
    assert_eq!(by_policy.status, StatusCode::OK, "{}", by_policy.body);
    assert_eq!(by_policy.body["removed"], json!([]));
    assert_eq!(by_policy.body["kept"], json!(2));

    let real = admin(
        fx.admin_app(),
        Method::POST,
        "/admin/cleanup?ttl=1m",
        Some(KEY),
    )
    .await;
    assert_eq!(real.status, StatusCode::OK, "{}", real.body);
    assert_eq!(real.body["removed"], json!(["old"]));
    assert!(fx.store.get("old").await.unwrap().is_none());
    assert!(fx.store.get("young").await.unwrap().is_some());

    for bad in ["/admin/cleanup?ttl=soon", "/admin/cleanup?dry_run=maybe"] {
        let answer = admin(fx.admin_app(), Method::POST, bad, Some(KEY)).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, None);
    }
    let wrong_method = admin(fx.admin_app(), Method::GET, "/admin/cleanup", Some(KEY)).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn admin_recover_one_job() {
    let fx = fixture();
    fx.put("stuck", &fx.running()).await;
    fx.put("waiting", &SyncStatus::pending()).await;

    let answer = admin(
        fx.admin_app(),
        Method::POST,
        "/admin/recover/stuck",
        Some(KEY),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["id"], "stuck");
    assert_eq!(answer.body["action"], "requeued");
    assert_eq!(answer.body["attempt"], json!(2));
    assert_eq!(answer.body["version"], json!(2));
    let record = fx.store.get_required("stuck").await.unwrap();
    assert_eq!(record.state(), Some("pending"));

    let not_running = admin(
        fx.admin_app(),
        Method::POST,
        "/admin/recover/waiting",
        Some(KEY),
    )
    .await;
    assert_error(&not_running, StatusCode::CONFLICT, Some("waiting"));
    assert!(
        not_running.body["error"]
            .as_str()
            .unwrap()
            .contains("not running")
    );

    let missing = admin(
        fx.admin_app(),
        Method::POST,
        "/admin/recover/nobody",
        Some(KEY),
    )
    .await;
    assert_error(&missing, StatusCode::NOT_FOUND, Some("nobody"));
}

#[tokio::test]
async fn admin_recover_every_stale_job() {
    let fx = fixture();
    fx.put("dead", &fx.running()).await;
    fx.clock.advance(STALE_AFTER + Duration::from_secs(1));
    fx.put("alive", &fx.running()).await;
    let answer = admin(fx.admin_app(), Method::POST, "/admin/recover", Some(KEY)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["alive"], json!(1));
    let recovered = answer.body["recovered"].as_array().unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0]["id"], "dead");
    let dead: SyncStatus =
        serde_json::from_value(fx.store.get_required("dead").await.unwrap().status).unwrap();
    assert_eq!(dead.state, State::Pending);
    assert_eq!(dead.attempt, 2);
}

// ---------------------------------------------------------------------------------------
// Server-Sent Events

#[derive(Debug, Default, Clone, PartialEq)]
struct SseFrame {
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    retry: Option<String>,
    comments: Vec<String>,
}

impl SseFrame {
    fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("the event has data"))
            .expect("the data is JSON")
    }

    fn is_message(&self) -> bool {
        self.event.is_some() || self.data.is_some()
    }
}

/// Reads an SSE body frame by frame.
struct SseReader {
    body: Body,
    buffer: String,
}

impl SseReader {
    async fn open(app: Router, uri: &str, last_event_id: Option<&str>) -> Self {
        let mut builder = request(Method::GET, uri).header(header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            builder = builder.header("last-event-id", id);
        }
        let response = timeout(DEADLINE, app.oneshot(builder.body(Body::empty()).unwrap()))
            .await
            .expect("the stream opens in time")
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        SseReader {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next frame, or `None` when the stream ended. Panics after the deadline.
    async fn frame(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                let mut frame = SseFrame::default();
                for line in raw.lines().filter(|line| !line.is_empty()) {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value).to_string();
                    match field {
                        "" => frame.comments.push(value),
                        "event" => frame.event = Some(value),
                        "data" => {
                            frame.data = Some(match frame.data.take() {
                                Some(before) => format!("{before}\n{value}"),
                                None => value,
                            })
                        }
                        "id" => frame.id = Some(value),
                        "retry" => frame.retry = Some(value),
                        other => panic!("unknown SSE field `{other}` in {raw:?}"),
                    }
                }
                return Some(frame);
            }
            let next = timeout(DEADLINE, self.body.frame())
                .await
                .expect("an SSE frame arrives before the deadline");
            match next {
                None => return None,
                Some(frame) => {
                    let frame = frame.expect("the body reads");
                    if let Ok(data) = frame.into_data() {
                        self.buffer.push_str(std::str::from_utf8(&data).unwrap());
                    }
                }
            }
        }
    }

    /// The next event with a name or data, skipping keep-alives and the retry hint.
    async fn event(&mut self) -> SseFrame {
        loop {
            let frame = self.frame().await.expect("the stream goes on");
            if frame.is_message() {
                return frame;
            }
        }
    }
}

/// The event id of a one-record stream for `record`: its incarnation and version.
fn event_id(record: &syncstatus::Record) -> String {
    format!("{}-{}", record.created_at.as_millis(), record.version)
}

async fn write_progress(fx: &Fixture, id: &str, done: u64) -> syncstatus::Record {
    fx.store
        .update_with(id, |current| {
            let mut status: SyncStatus = match current {
                Some(record) => serde_json::from_value(record.status.clone()).unwrap(),
                None => SyncStatus::pending().start(fx.clock.now()),
            };
            status = status.with_progress(syncstatus::Progress::new(done, 10));
            Ok(serde_json::to_value(status).unwrap())
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn one_record_stream_starts_with_a_snapshot_then_follows_changes() {
    let fx = fixture();
    let first = write_progress(&fx, "sync-1", 1).await;
    let mut events = SseReader::open(fx.app(), "/syncs/sync-1/events", None).await;

    let hint = events.frame().await.unwrap();
    assert_eq!(hint.retry.as_deref(), Some("1000"), "{hint:?}");

    let resync = events.event().await;
    assert_eq!(resync.event.as_deref(), Some("resync"));
    assert_eq!(resync.id, Some(event_id(&first)));
    assert_eq!(resync.json(), json!([first]));

    let second = write_progress(&fx, "sync-1", 2).await;
    let upsert = events.event().await;
    assert_eq!(upsert.event.as_deref(), Some("upsert"));
    assert_eq!(upsert.id, Some(event_id(&second)));
    assert_eq!(upsert.json(), serde_json::to_value(&second).unwrap());

    // Other ids are not part of this stream.
    write_progress(&fx, "sync-2", 1).await;
    assert!(fx.store.delete("sync-1").await.unwrap());
    let removed = events.event().await;
    assert_eq!(removed.event.as_deref(), Some("removed"));
    assert_eq!(removed.id.as_deref(), Some("0"));
    assert_eq!(removed.json(), json!({"id": "sync-1"}));
}

#[tokio::test]
async fn one_record_stream_of_a_missing_record_starts_with_an_empty_snapshot() {
    let fx = fixture();
    let mut events = SseReader::open(fx.app(), "/syncs/later/events", None).await;
    let resync = events.event().await;
    assert_eq!(resync.event.as_deref(), Some("resync"));
    assert_eq!(resync.id.as_deref(), Some("0"));
    assert_eq!(resync.json(), json!([]));
    let created = write_progress(&fx, "later", 1).await;
    let upsert = events.event().await;
    assert_eq!(upsert.event.as_deref(), Some("upsert"));
    assert_eq!(upsert.json(), serde_json::to_value(&created).unwrap());
}

#[tokio::test]
async fn resuming_from_last_event_id_gets_exactly_what_was_missed() {
    let fx = fixture();
    let mut seen = Vec::new();
    for done in 1..=4 {
        seen.push(write_progress(&fx, "sync-1", done).await);
    }
    // The client saw version 2; versions 3 and 4 happened while it was away. The store
    // coalesces: it gets the latest, once.
    let held = event_id(&seen[1]);
    let mut events = SseReader::open(fx.app(), "/syncs/sync-1/events", Some(&held)).await;
    let missed = events.event().await;
    assert_eq!(missed.event.as_deref(), Some("upsert"));
    assert_eq!(missed.id, Some(event_id(&seen[3])));
    assert_eq!(missed.json()["status"]["progress"]["done"], json!(4));
    // Nothing else was queued: the next event is the next write.
    let fifth = write_progress(&fx, "sync-1", 5).await;
    let next = events.event().await;
    assert_eq!(next.event.as_deref(), Some("upsert"));
    assert_eq!(next.id, Some(event_id(&fifth)));
}

#[tokio::test]
async fn resuming_at_the_current_version_sends_nothing_until_the_next_change() {
    let fx = fixture();
    write_progress(&fx, "sync-1", 1).await;
    let held = event_id(&write_progress(&fx, "sync-1", 2).await);
    let mut events = SseReader::open(fx.app(), "/syncs/sync-1/events", Some(&held)).await;
    let third = write_progress(&fx, "sync-1", 3).await;
    let next = events.event().await;
    assert_eq!(next.event.as_deref(), Some("upsert"));
    assert_eq!(next.id, Some(event_id(&third)));
}

#[tokio::test]
async fn resuming_after_a_removal_that_was_missed_sends_the_removal() {
    let fx = fixture();
    write_progress(&fx, "sync-1", 1).await;
    let held = event_id(&write_progress(&fx, "sync-1", 2).await);
    fx.store.delete("sync-1").await.unwrap();
    let mut events = SseReader::open(fx.app(), "/syncs/sync-1/events", Some(&held)).await;
    let removed = events.event().await;
    assert_eq!(removed.event.as_deref(), Some("removed"));
    assert_eq!(removed.id.as_deref(), Some("0"));

    // Having seen the removal (id 0), a client that reconnects while there is still no
    // record gets nothing, then the record once it is written again.
    let mut again = SseReader::open(fx.app(), "/syncs/sync-1/events", Some("0")).await;
    let recreated = write_progress(&fx, "sync-1", 1).await;
    let upsert = again.event().await;
    assert_eq!(upsert.event.as_deref(), Some("upsert"));
    assert_eq!(upsert.json(), serde_json::to_value(&recreated).unwrap());
}

#[tokio::test]
async fn an_unreadable_last_event_id_starts_over_with_a_snapshot() {
    let fx = fixture();
    let record = write_progress(&fx, "sync-1", 1).await;
    // An id of `/events`, and a bare version (what this route sent before ids named the
    // incarnation): neither says which record the client holds.
    for held in ["sync-1:1", "1"] {
        let mut events = SseReader::open(fx.app(), "/syncs/sync-1/events", Some(held)).await;
        let resync = events.event().await;
        assert_eq!(resync.event.as_deref(), Some("resync"), "{held}");
        assert_eq!(resync.json(), json!([record]), "{held}");
    }
}

#[tokio::test]
async fn resuming_notices_a_new_incarnation_at_the_same_version() {
    let fx = fixture();
    let mut old = None;
    for done in 1..=3 {
        old = Some(write_progress(&fx, "inc", done).await);
    }
    let old = old.unwrap();
    assert_eq!(old.version, 3);
    // While the client was away, `inc` was deleted and written again up to version 3.
    fx.store.delete("inc").await.unwrap();
    fx.clock.advance(Duration::from_millis(5));
    let mut new = None;
    for done in 7..=9 {
        new = Some(write_progress(&fx, "inc", done).await);
    }
    let new = new.unwrap();
    assert_eq!(new.version, 3);
    assert_ne!(new.created_at, old.created_at);

    let held = event_id(&old);
    let mut events = SseReader::open(fx.app(), "/syncs/inc/events", Some(&held)).await;
    let missed = events.event().await;
    assert_eq!(missed.event.as_deref(), Some("upsert"));
    assert_eq!(missed.id, Some(event_id(&new)));
    assert_eq!(missed.json(), serde_json::to_value(&new).unwrap());

    // Holding the new one, a client gets nothing until the next write.
    let mut current = SseReader::open(fx.app(), "/syncs/inc/events", Some(&event_id(&new))).await;
    let fourth = write_progress(&fx, "inc", 10).await;
    let next = current.event().await;
    assert_eq!(next.id, Some(event_id(&fourth)));
}

#[tokio::test]
async fn all_records_stream_starts_with_a_snapshot_and_names_events_by_id_and_version() {
    let fx = fixture();
    let a = write_progress(&fx, "a", 1).await;
    let b = write_progress(&fx, "b", 1).await;
    let mut events = SseReader::open(fx.app(), "/events", None).await;
    let resync = events.event().await;
    assert_eq!(resync.event.as_deref(), Some("resync"));
    assert_eq!(resync.json(), json!([a, b]));

    let b2 = write_progress(&fx, "b", 2).await;
    let upsert = events.event().await;
    assert_eq!(upsert.event.as_deref(), Some("upsert"));
    assert_eq!(upsert.id, Some(format!("b:{}", event_id(&b2))));
    assert_eq!(upsert.json(), serde_json::to_value(&b2).unwrap());

    fx.store.delete("a").await.unwrap();
    let removed = events.event().await;
    assert_eq!(removed.event.as_deref(), Some("removed"));
    assert_eq!(removed.id.as_deref(), Some("a:0"));
    assert_eq!(removed.json(), json!({"id": "a"}));

    // A reconnecting client is given the whole picture again.
    let held = format!("b:{}", event_id(&b2));
    let mut resumed = SseReader::open(fx.app(), "/events", Some(&held)).await;
    let again = resumed.event().await;
    assert_eq!(again.event.as_deref(), Some("resync"));
    assert_eq!(again.json(), json!([b2]));
}

#[tokio::test]
async fn all_records_stream_filters_by_prefix() {
    let fx = fixture();
    write_progress(&fx, "import-1", 1).await;
    let sync = write_progress(&fx, "sync-1", 1).await;
    let mut events = SseReader::open(fx.app(), "/events?prefix=sync-", None).await;
    let resync = events.event().await;
    assert_eq!(resync.json(), json!([sync]));
    write_progress(&fx, "import-1", 2).await;
    let sync2 = write_progress(&fx, "sync-1", 2).await;
    let upsert = events.event().await;
    assert_eq!(upsert.json(), serde_json::to_value(&sync2).unwrap());
}

#[tokio::test]
async fn idle_streams_send_keep_alive_comments() {
    let fx = fixture();
    let app = RouterConfig::new(fx.store.clone())
        .with_keep_alive(Duration::from_millis(20))
        .router();
    let mut events = SseReader::open(app, "/events", None).await;
    let resync = events.event().await;
    assert_eq!(resync.event.as_deref(), Some("resync"));
    loop {
        let frame = events.frame().await.expect("the stream goes on");
        assert!(
            !frame.is_message(),
            "nothing changed, yet an event came: {frame:?}"
        );
        if !frame.comments.is_empty() {
            break;
        }
    }
}

#[tokio::test]
async fn streams_end_on_the_shutdown_signal() {
    let fx = fixture();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = RouterConfig::new(fx.store.clone())
        .with_shutdown(async move {
            let _ = stopped.await;
        })
        .router();
    let mut all = SseReader::open(app.clone(), "/events", None).await;
    let mut one = SseReader::open(app, "/syncs/x/events", None).await;
    assert_eq!(all.event().await.event.as_deref(), Some("resync"));
    assert_eq!(one.event().await.event.as_deref(), Some("resync"));
    stop.send(()).unwrap();
    for reader in [&mut all, &mut one] {
        while let Some(frame) = reader.frame().await {
            assert!(!frame.is_message(), "{frame:?}");
        }
    }
}

#[tokio::test]
async fn the_router_merges_with_the_applications_own_routes() {
    let fx = fixture();
    let app = router(fx.store.clone()).merge(Router::new().route(
        "/syncs",
        axum::routing::post(|| async { (StatusCode::ACCEPTED, axum::Json(json!({"ok": true}))) }),
    ));
    let posted = send(
        app.clone(),
        request(Method::POST, "/syncs").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(posted.status, StatusCode::ACCEPTED);
    let listed = get(app, "/syncs").await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body, json!([]));
}

#[tokio::test]
async fn the_router_works_nested_under_a_prefix() {
    let fx = fixture();
    let record = write_progress(&fx, "sync-1", 1).await;
    let app = Router::new().nest("/status", router(fx.store.clone()));
    let page = app
        .clone()
        .oneshot(request(Method::GET, "/status").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let one = get(app.clone(), "/status/syncs/sync-1").await;
    assert_eq!(one.body, serde_json::to_value(&record).unwrap());
    let mut events = SseReader::open(app, "/status/events", None).await;
    assert_eq!(events.event().await.json(), json!([record]));
}

#[tokio::test]
async fn a_corrupt_record_is_a_json_500_naming_it_and_never_hides_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let store: DynSyncStorage = Arc::new(syncstatus::FileStorage::open(dir.path()).unwrap());
    store
        .put("good", json!({"state": "running"}), PutMode::Create)
        .await
        .unwrap();
    std::fs::write(dir.path().join("broken.json"), b"{ not json").unwrap();
    let app = router(store);

    let (log, _guard) = LogCapture::install();
    let broken = get(app.clone(), "/syncs/broken").await;
    assert_error(&broken, StatusCode::INTERNAL_SERVER_ERROR, Some("broken"));
    // The answer names no file and no cause, only the log event that does.
    let error = broken.body["error"].as_str().unwrap();
    let dir_name = dir.path().display().to_string();
    assert!(
        !error.contains("broken.json") && !error.contains(&dir_name),
        "{error}"
    );
    let error_id = broken.body["error_id"].as_str().expect("an error id");
    assert!(error.contains(error_id), "{error}");
    let lines = log.lines();
    let logged = lines
        .iter()
        .find(|line| line.contains(error_id))
        .unwrap_or_else(|| panic!("no log line with {error_id}: {lines:?}"));
    assert!(logged.contains("broken.json"), "{logged}");

    let listed = get(app, "/syncs").await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.headers["x-syncstatus-unreadable"], "1");
    assert_eq!(listed.body.as_array().unwrap().len(), 1);
    assert_eq!(listed.body[0]["id"], "good");
}

/// Records the `tracing` events of the current thread, one line each with every field.
#[derive(Clone, Default)]
struct LogCapture {
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl LogCapture {
    fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        let capture = LogCapture::default();
        let guard = tracing::subscriber::set_default(capture.clone());
        (capture, guard)
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

struct LineVisitor<'a>(&'a mut String);

impl tracing::field::Visit for LineVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={value:?}", field.name());
    }

    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        use std::fmt::Write as _;
        let _ = write!(self.0, " {}={value}", field.name());
    }
}

impl tracing::Subscriber for LogCapture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = event.metadata().level().to_string();
        event.record(&mut LineVisitor(&mut line));
        self.lines.lock().unwrap().push(line);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// ---------------------------------------------------------------------------------------
// Query parameters

#[tokio::test]
async fn every_route_refuses_unknown_query_parameters() {
    let fx = fixture();
    let job = fx.put("job-1", &fx.running()).await;
    // A live job: a recovery that ignored `dry_run` would requeue it.
    let routes = [
        (Method::GET, "/?x=1"),
        (Method::GET, "/syncs?bogus=1"),
        (Method::GET, "/syncs?state=running&state=failed"),
        (Method::GET, "/syncs/job-1?fields=all"),
        (Method::GET, "/syncs/job-1/events?since=3"),
        (Method::GET, "/events?prefx=job-"),
        (Method::GET, "/admin/stats?verbose=1"),
        (Method::GET, "/admin/health?deep=true"),
        (Method::POST, "/admin/cleanup?dry-run=true"),
        (Method::POST, "/admin/recover?dry_run=true"),
        (Method::POST, "/admin/recover/job-1?dry_run=true"),
    ];
    for (method, uri) in routes {
        let answer = admin(fx.admin_app(), method.clone(), uri, Some(KEY)).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, None);
        let error = answer.body["error"].as_str().unwrap();
        assert!(
            error.contains("unknown field") || error.contains("duplicate field"),
            "{method} {uri}: {error}"
        );
    }
    let after = fx.store.get("job-1").await.unwrap().unwrap();
    assert_eq!(after.version, job.version, "a refused request wrote");
    assert_eq!(after.status["state"], "running");
    // The routes still answer without the stray parameter.
    assert_eq!(get(fx.app(), "/syncs/job-1").await.status, StatusCode::OK);
    // An unauthenticated request is still refused for its key first.
    let answer = admin(
        fx.admin_app(),
        Method::POST,
        "/admin/recover/job-1?dry_run=true",
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}
