//! `POST /admin/cancel/{id}` and `POST /admin/retry/{id}` (of jobs and batches), and a batch's
//! rollup in `GET /syncs/{id}`, driven with `tower::ServiceExt`.
#![cfg(feature = "axum")]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use syncstatus::http::RouterConfig;
use syncstatus::{DynSyncStorage, MemoryStorage, PutMode, SyncStatus, SyncStorageExt, jobs};
use tower::ServiceExt;

const KEY: &str = "admin-key";
const DEADLINE: Duration = Duration::from_secs(10);

async fn post(store: &DynSyncStorage, uri: &str, key: Option<&str>) -> (StatusCode, Value) {
    send(store, Method::POST, uri, key).await
}

async fn send(
    store: &DynSyncStorage,
    method: Method,
    uri: &str,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let app = RouterConfig::new(store.clone())
        .with_admin_key(KEY)
        .router();
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let response =
        tokio::time::timeout(DEADLINE, app.oneshot(request.body(Body::empty()).unwrap()))
            .await
            .unwrap()
            .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn put(store: &DynSyncStorage, id: &str, status: SyncStatus) {
    store
        .put(
            id,
            serde_json::to_value(status).unwrap(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn admin_cancels_and_retries_jobs() {
    let store: DynSyncStorage = Arc::new(MemoryStorage::new());
    put(&store, "waiting", SyncStatus::pending()).await;
    put(&store, "busy", SyncStatus::pending().start(store.now())).await;

    let (status, _) = post(&store, "/admin/cancel/waiting", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        store.get_required("waiting").await.unwrap().state(),
        Some("pending")
    );

    let (status, body) = post(&store, "/admin/cancel/waiting", Some(KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"]["state"], "cancelled");

    let (status, body) = post(&store, "/admin/cancel/busy", Some(KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"]["state"], "running");
    assert_eq!(body["status"]["cancel_requested"], json!(true));

    let (status, body) = post(&store, "/admin/cancel/waiting", Some(KEY)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["id"], "waiting");

    let (status, body) = post(&store, "/admin/retry/waiting", Some(KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"]["state"], "pending");
    assert_eq!(body["status"]["attempt"], json!(2));

    let (status, body) = post(&store, "/admin/retry/busy", Some(KEY)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("retry"), "{body}");

    let (status, body) = post(&store, "/admin/cancel/nobody", Some(KEY)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = post(&store, "/admin/retry/..", Some(KEY)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    store
        .put(
            "foreign",
            json!({"state": "running", "attempt": "one"}),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let (status, body) = post(&store, "/admin/cancel/foreign", Some(KEY)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["id"], "foreign");
}

#[tokio::test]
async fn reads_return_a_batch_rollup_and_admin_acts_on_the_whole_batch() {
    let store: DynSyncStorage = Arc::new(MemoryStorage::new());
    let children = vec![SyncStatus::pending(); 3];
    jobs::submit_batch(&*store, "imp", children, jobs::FailurePolicy::Continue)
        .await
        .unwrap();
    let (status, body) = send(&store, Method::GET, "/syncs/imp", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"]["batch"]["size"], json!(3));
    assert_eq!(body["status"]["batch"]["counts"]["pending"], json!(3));
    assert_eq!(body["status"]["progress"], json!({"done": 0, "total": 3}));

    let (status, body) = post(&store, "/admin/cancel/imp", Some(KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"]["state"], "cancelled");
    assert_eq!(body["status"]["batch"]["counts"]["cancelled"], json!(3));
    assert_eq!(
        store.get_required("imp.2").await.unwrap().state(),
        Some("cancelled")
    );
    let (status, body) = post(&store, "/admin/retry/imp", Some(KEY)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"]["state"], "pending");
    assert_eq!(body["status"]["batch"]["counts"]["pending"], json!(3));
}
