//! The router's write routes, conditional requests, CORS and `/metrics`, driven request by
//! request with `tower::ServiceExt::oneshot`.
#![cfg(feature = "axum")]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::memory_fixture::{Fixture, TTL, fixture};
use syncstatus::http::RouterConfig;
use syncstatus::{DynSyncStorage, PutMode, SyncStorage};
use tokio::time::timeout;
use tower::ServiceExt;

const DEADLINE: Duration = Duration::from_secs(10);
const WRITE_KEY: &str = "write key for tests";
const ADMIN_KEY: &str = "admin key for tests";

impl Fixture {
    fn config(&self) -> RouterConfig {
        RouterConfig::new(self.store.clone())
            .with_write_key(WRITE_KEY)
            .with_admin_key(ADMIN_KEY)
    }

    fn app(&self) -> Router {
        self.config().router()
    }
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
    raw: Vec<u8>,
}

impl Answer {
    fn etag(&self) -> &str {
        self.headers
            .get(header::ETAG)
            .unwrap_or_else(|| panic!("no ETag in {self:?}"))
            .to_str()
            .unwrap()
    }
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = timeout(DEADLINE, app.clone().oneshot(request))
        .await
        .expect("the router answers in time")
        .expect("the router is infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let raw = timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("the body arrives in time")
        .expect("the body can be read")
        .to_bytes()
        .to_vec();
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        raw,
    }
}

/// A write with the key, JSON content type and `headers`.
fn write(
    method: Method,
    uri: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "localhost")
        .header(header::AUTHORIZATION, format!("Bearer {WRITE_KEY}"))
        .header(header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = body.map_or_else(Body::empty, |body| Body::from(body.to_string()));
    builder.body(body).unwrap()
}

/// `PUT /syncs/{id}` of `status`, with the key and `headers`.
async fn put(app: &Router, id: &str, status: Value, headers: &[(&str, &str)]) -> Answer {
    send(
        app,
        write(Method::PUT, &format!("/syncs/{id}"), Some(status), headers),
    )
    .await
}

fn read(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder().uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap()
}

fn assert_status(answer: &Answer, status: StatusCode) {
    assert_eq!(
        answer.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&answer.raw)
    );
}

// ---------------------------------------------------------------------------------------
// Who may write

#[tokio::test]
async fn writes_are_refused_until_enabled_and_without_the_key() {
    let fx = fixture();
    let closed = RouterConfig::new(fx.store.clone()).router();
    let answer = put(&closed, "job-1", json!({}), &[]).await;
    assert_status(&answer, StatusCode::FORBIDDEN);

    let app = fx.app();
    let mut no_key = write(Method::PUT, "/syncs/job-1", Some(json!({})), &[]);
    no_key.headers_mut().remove(header::AUTHORIZATION);
    assert_status(&send(&app, no_key).await, StatusCode::UNAUTHORIZED);
    let mut wrong = write(Method::PUT, "/syncs/job-1", Some(json!({})), &[]);
    wrong
        .headers_mut()
        .insert(header::AUTHORIZATION, "Bearer not the key".parse().unwrap());
    assert_status(&send(&app, wrong).await, StatusCode::UNAUTHORIZED);
    // The admin key is not a write key.
    let mut admin = write(Method::DELETE, "/syncs/job-1", None, &[]);
    admin.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {ADMIN_KEY}").parse().unwrap(),
    );
    assert_status(&send(&app, admin).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        fx.store.get("job-1").await.unwrap(),
        None,
        "nothing written"
    );

    let answer = put(&app, "job-1", json!({"state": "pending"}), &[]).await;
    assert_status(&answer, StatusCode::CREATED);
}

#[tokio::test]
async fn cross_site_simple_requests_cannot_write() {
    let fx = fixture();
    let app = fx.app();
    // What a form or `fetch(.., {mode: "no-cors"})` on another site can send without a
    // preflight: these content types, or none.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        for (method, uri) in [
            (Method::PUT, "/syncs/job-1"),
            (Method::PATCH, "/syncs/job-1"),
            (Method::POST, "/syncs/job-1/heartbeat"),
        ] {
            let mut request = write(method.clone(), uri, Some(json!({"state": "running"})), &[]);
            match content_type {
                Some(value) => {
                    request
                        .headers_mut()
                        .insert(header::CONTENT_TYPE, value.parse().unwrap());
                }
                None => {
                    request.headers_mut().remove(header::CONTENT_TYPE);
                }
            }
            let answer = send(&app, request).await;
            assert_status(&answer, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
    }
    assert_eq!(fx.store.get("job-1").await.unwrap(), None);
}

#[tokio::test]
async fn local_writes_need_a_loopback_peer_and_a_loopback_host() {
    let fx = fixture();
    let app = RouterConfig::new(fx.store.clone())
        .with_local_writes()
        .router();
    let mut request = write(Method::PUT, "/syncs/job-1", Some(json!({"n": 1})), &[]);
    request.headers_mut().remove(header::AUTHORIZATION);
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    assert_status(&send(&app, request).await, StatusCode::CREATED);

    // A page on another site whose name resolves to 127.0.0.1 sends its own Host.
    let mut rebound = write(Method::PUT, "/syncs/job-1", Some(json!({"n": 2})), &[]);
    rebound
        .headers_mut()
        .insert(header::HOST, "evil.example:3001".parse().unwrap());
    assert_status(&send(&app, rebound).await, StatusCode::FORBIDDEN);

    let mut remote = write(Method::PUT, "/syncs/job-1", Some(json!({"n": 3})), &[]);
    remote
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 7], 40000))));
    assert_status(&send(&app, remote).await, StatusCode::FORBIDDEN);
    assert_eq!(
        fx.store.get("job-1").await.unwrap().unwrap().status,
        json!({"n": 1})
    );
}

// ---------------------------------------------------------------------------------------
// Writes and conditions

#[tokio::test]
async fn put_creates_overwrites_and_names_each_write_in_its_etag() {
    let fx = fixture();
    let app = fx.app();
    let created = put(&app, "job-1", json!({"state": "pending"}), &[]).await;
    assert_status(&created, StatusCode::CREATED);
    let record = fx.store.get("job-1").await.unwrap().unwrap();
    assert_eq!(
        created.etag(),
        format!("\"{}.1\"", record.created_at.as_millis())
    );
    assert_eq!(created.body["version"], json!(1));

    let again = put(
        &app,
        "job-1",
        json!({"state": "running"}),
        &[("if-none-match", "*")],
    )
    .await;
    assert_status(&again, StatusCode::PRECONDITION_FAILED);
    assert_eq!(again.body["id"], json!("job-1"));

    let stale = put(
        &app,
        "job-1",
        json!({"state": "running"}),
        &[("if-match", "\"1.1\"")],
    )
    .await;
    assert_status(&stale, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        stale.etag(),
        created.etag(),
        "a 412 tells the current write"
    );

    let updated = send(
        &app,
        write(
            Method::PUT,
            "/syncs/job-1",
            Some(json!({"state": "running"})),
            &[("if-match", created.etag())],
        ),
    )
    .await;
    assert_status(&updated, StatusCode::OK);
    assert_eq!(updated.body["version"], json!(2));
    assert_ne!(updated.etag(), created.etag());

    let overwritten = put(&app, "job-1", json!({"x": 1}), &[]).await;
    assert_status(&overwritten, StatusCode::OK);
    assert_eq!(
        fx.store.get("job-1").await.unwrap().unwrap().status,
        json!({"x": 1})
    );

    let bad = send(
        &app,
        Request::builder()
            .method(Method::PUT)
            .uri("/syncs/job-1")
            .header(header::AUTHORIZATION, format!("Bearer {WRITE_KEY}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{not json"))
            .unwrap(),
    )
    .await;
    assert_status(&bad, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["id"], json!("job-1"));
    let evil = send(&app, write(Method::PUT, "/syncs/..", Some(json!({})), &[])).await;
    assert_status(&evil, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_record_made_again_does_not_match_the_old_incarnations_etag() {
    let fx = fixture();
    let app = fx.app();
    let first = put(&app, "job-1", json!({"n": 1}), &[]).await;
    let old_tag = first.etag().to_string();
    assert_status(
        &send(&app, write(Method::DELETE, "/syncs/job-1", None, &[])).await,
        StatusCode::NO_CONTENT,
    );
    fx.clock.advance(Duration::from_millis(5));
    let second = put(&app, "job-1", json!({"n": 2}), &[]).await;
    assert_eq!(
        second.body["version"],
        json!(1),
        "same version as the old one"
    );
    assert_ne!(second.etag(), old_tag);
    let answer = send(
        &app,
        write(
            Method::PATCH,
            "/syncs/job-1",
            Some(json!({"n": 3})),
            &[("if-match", &old_tag)],
        ),
    )
    .await;
    assert_status(&answer, StatusCode::PRECONDITION_FAILED);
    let polled = send(&app, read("/syncs/job-1", &[("if-none-match", &old_tag)])).await;
    assert_status(&polled, StatusCode::OK);
}

#[tokio::test]
async fn patch_merges_under_if_match_and_a_stale_tag_changes_nothing() {
    let fx = fixture();
    let app = fx.app();
    let created = put(
        &app,
        "job-1",
        json!({"state": "running", "progress": {"done": 1, "total": 10}, "message": "page 1"}),
        &[],
    )
    .await;
    let patched = send(
        &app,
        write(
            Method::PATCH,
            "/syncs/job-1",
            Some(json!({"progress": {"done": 2}, "message": null})),
            &[
                ("if-match", created.etag()),
                ("content-type", "application/merge-patch+json"),
            ],
        ),
    )
    .await;
    assert_status(&patched, StatusCode::OK);
    assert_eq!(
        patched.body["status"],
        json!({"state": "running", "progress": {"done": 2, "total": 10}})
    );
    let stale = send(
        &app,
        write(
            Method::PATCH,
            "/syncs/job-1",
            Some(json!({"state": "failed"})),
            &[("if-match", created.etag())],
        ),
    )
    .await;
    assert_status(&stale, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.etag(), patched.etag());
    let record = fx.store.get("job-1").await.unwrap().unwrap();
    assert_eq!(record.version, 2);
    assert_eq!(record.state(), Some("running"));

    let missing = send(
        &app,
        write(Method::PATCH, "/syncs/job-2", Some(json!({"a": 1})), &[]),
    )
    .await;
    assert_status(&missing, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["id"], json!("job-2"));
}

/// On the file store, whose reads and writes leave the task (blocking IO), so patches
/// interleave: a read-then-write outside `update` loses some of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_patches_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let store: DynSyncStorage = Arc::new(syncstatus::FileStorage::open(dir.path()).unwrap());
    let app = RouterConfig::new(store.clone())
        .with_write_key(WRITE_KEY)
        .router();
    store
        .put("job-1", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    let writers: Vec<_> = (0..32)
        .map(|n| {
            let app = app.clone();
            tokio::spawn(async move {
                let key = format!("k{n}");
                send(
                    &app,
                    write(Method::PATCH, "/syncs/job-1", Some(json!({ key: n })), &[]),
                )
                .await
            })
        })
        .collect();
    for writer in writers {
        assert_status(&writer.await.unwrap(), StatusCode::OK);
    }
    let record = store.get("job-1").await.unwrap().unwrap();
    assert_eq!(record.version, 33);
    assert_eq!(
        record.status.as_object().unwrap().len(),
        32,
        "{}",
        record.status
    );
}

#[tokio::test]
async fn reads_answer_304_while_the_etag_names_the_current_write() {
    let fx = fixture();
    let app = fx.app();
    let created = put(&app, "job-1", json!({"n": 1}), &[]).await;
    let tag = created.etag().to_string();
    let full = send(&app, read("/syncs/job-1", &[])).await;
    assert_status(&full, StatusCode::OK);
    assert_eq!(full.etag(), tag);
    for condition in [
        tag.clone(),
        format!("W/{tag}"),
        format!("\"1.1\", {tag}"),
        "*".into(),
    ] {
        let polled = send(&app, read("/syncs/job-1", &[("if-none-match", &condition)])).await;
        assert_status(&polled, StatusCode::NOT_MODIFIED);
        assert!(polled.raw.is_empty(), "a 304 has no body");
        assert_eq!(polled.etag(), tag);
    }
    send(
        &app,
        write(Method::PATCH, "/syncs/job-1", Some(json!({"n": 2})), &[]),
    )
    .await;
    let changed = send(&app, read("/syncs/job-1", &[("if-none-match", &tag)])).await;
    assert_status(&changed, StatusCode::OK);
    assert_eq!(changed.body["status"], json!({"n": 2}));
    let bad = send(&app, read("/syncs/job-1", &[("if-none-match", "unquoted")])).await;
    assert_status(&bad, StatusCode::BAD_REQUEST);
    // A missing record is a 404 whatever the header says.
    let missing = send(&app, read("/syncs/job-2", &[("if-none-match", "unquoted")])).await;
    assert_status(&missing, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn delete_and_heartbeat() {
    let fx = fixture();
    let app = fx.app();
    put(&app, "job-1", json!({"state": "running"}), &[]).await;
    fx.clock.advance(Duration::from_secs(2));
    let beat = send(
        &app,
        write(Method::POST, "/syncs/job-1/heartbeat", None, &[]),
    )
    .await;
    assert_status(&beat, StatusCode::OK);
    assert_eq!(beat.body["version"], json!(2));
    let at = beat.body["status"]["heartbeat_at"].as_str().unwrap();
    assert_eq!(
        syncstatus::Timestamp::parse(at),
        Some(syncstatus::Clock::now(&fx.clock))
    );

    let conditional = send(
        &app,
        write(
            Method::DELETE,
            "/syncs/job-1",
            None,
            &[("if-match", beat.etag())],
        ),
    )
    .await;
    assert_status(&conditional, StatusCode::BAD_REQUEST);
    assert!(fx.store.get("job-1").await.unwrap().is_some());
    assert_status(
        &send(&app, write(Method::DELETE, "/syncs/job-1", None, &[])).await,
        StatusCode::NO_CONTENT,
    );
    let gone = send(&app, write(Method::DELETE, "/syncs/job-1", None, &[])).await;
    assert_status(&gone, StatusCode::NOT_FOUND);
    assert_eq!(gone.body["id"], json!("job-1"));
    let no_job = send(
        &app,
        write(Method::POST, "/syncs/job-1/heartbeat", None, &[]),
    )
    .await;
    assert_status(&no_job, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------
// CORS

#[tokio::test]
async fn cors_preflight_admits_listed_origins_only() {
    let fx = fixture();
    let app = fx
        .config()
        .with_cors_origin("http://localhost:3000")
        .unwrap()
        .router();
    let preflight = |origin: &'static str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/syncs/job-1")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "PATCH")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "content-type,if-match,authorization",
            )
            .body(Body::empty())
            .unwrap()
    };
    let allowed = send(&app, preflight("http://localhost:3000")).await;
    assert!(allowed.status.is_success(), "{allowed:?}");
    let headers = &allowed.headers;
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "http://localhost:3000"
    );
    let methods = headers[header::ACCESS_CONTROL_ALLOW_METHODS]
        .to_str()
        .unwrap();
    assert!(methods.contains("PATCH"), "{methods}");
    let allowed_headers = headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .unwrap();
    for name in ["content-type", "if-match", "authorization"] {
        assert!(allowed_headers.contains(name), "{allowed_headers}");
    }

    let refused = send(&app, preflight("http://evil.example")).await;
    assert!(
        refused
            .headers
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );

    fx.store
        .put("job-1", json!({"n": 1}), PutMode::Overwrite)
        .await
        .unwrap();
    let get = send(
        &app,
        read("/syncs/job-1", &[("origin", "http://localhost:3000")]),
    )
    .await;
    assert_eq!(
        get.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "http://localhost:3000"
    );
    let exposed = get.headers[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()
        .unwrap();
    assert!(exposed.contains("etag"), "{exposed}");

    assert!(
        RouterConfig::new(fx.store.clone())
            .with_cors_origin("localhost:3000")
            .is_err()
    );
}

// ---------------------------------------------------------------------------------------
// Metrics

#[tokio::test]
async fn metrics_parse_as_prometheus_text_with_gauges_and_counters() {
    let fx = fixture();
    let app = fx.app();
    put(&app, "a", json!({"state": "running"}), &[]).await;
    put(&app, "b", json!({"state": "completed"}), &[]).await;
    put(&app, "c", json!({"state": "say \"hi\"\n"}), &[]).await;
    put(&app, "a", json!({}), &[("if-none-match", "*")]).await;
    fx.clock.advance(TTL + Duration::from_secs(1));
    put(&app, "d", json!({"state": "running"}), &[]).await;
    let cleanup = Request::builder()
        .method(Method::POST)
        .uri("/admin/cleanup")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN_KEY}"))
        .body(Body::empty())
        .unwrap();
    let report = send(&app, cleanup).await;
    assert_status(&report, StatusCode::OK);
    assert_eq!(report.body["removed"], json!(["a", "b", "c"]));

    let unauthorized = send(&app, read("/metrics", &[])).await;
    assert_status(&unauthorized, StatusCode::UNAUTHORIZED);
    let answer = send(
        &app,
        read(
            "/metrics",
            &[("authorization", &format!("Bearer {ADMIN_KEY}"))],
        ),
    )
    .await;
    assert_status(&answer, StatusCode::OK);
    assert_eq!(
        answer.headers[header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(answer.raw).unwrap();
    let lines = text.lines().map(|line| Ok(line.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let sample_lines = text.lines().filter(|line| !line.starts_with('#')).count();
    assert_eq!(
        scrape.samples.len(),
        sample_lines,
        "every sample parsed:\n{text}"
    );
    let value = |name: &str| {
        let sample = scrape
            .samples
            .iter()
            .find(|sample| sample.metric == name)
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        sample.value.clone()
    };
    use prometheus_parse::Value::{Counter, Gauge};
    assert_eq!(value("syncstatus_writes_total"), Counter(4.0));
    assert_eq!(value("syncstatus_write_conflicts_total"), Counter(1.0));
    assert_eq!(value("syncstatus_cleanups_total"), Counter(1.0));
    // The counter keeps what the cleanup removed from the gauges.
    assert_eq!(value("syncstatus_expired_removed_total"), Counter(3.0));
    assert_eq!(value("syncstatus_recoveries_total"), Counter(0.0));
    assert_eq!(value("syncstatus_stale_running_jobs"), Gauge(0.0));
    assert_eq!(value("syncstatus_oldest_record_age_seconds"), Gauge(0.0));
    let records: Vec<_> = scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == "syncstatus_records")
        .map(|sample| {
            (
                sample.labels.get("state").map(str::to_string),
                sample.value.clone(),
            )
        })
        .collect();
    assert_eq!(records, vec![(Some("running".to_string()), Gauge(1.0))]);
    assert!(scrape.docs.contains_key("syncstatus_writes_total"));
}

#[tokio::test]
async fn metric_label_values_with_quotes_and_newlines_stay_one_sample() {
    let fx = fixture();
    let app = fx.app();
    fx.store
        .put(
            "c",
            json!({"state": "say \"hi\"\nbye\\"}),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let answer = send(
        &app,
        read(
            "/metrics",
            &[("authorization", &format!("Bearer {ADMIN_KEY}"))],
        ),
    )
    .await;
    let text = String::from_utf8(answer.raw).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let states: Vec<_> = scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == "syncstatus_records")
        .filter_map(|sample| sample.labels.get("state").map(str::to_string))
        .collect();
    assert_eq!(states.len(), 1, "{text}");
}
