//! Lifecycle checks (heartbeats, recovery, stats, idempotency) that every backend runs,
//! with the conformance suite's fixtures.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use syncstatus::{
    DynSyncStorage, Error, Idempotency, InProgressPolicy, PutMode, Record, RecoveryAction,
    RecoveryPolicy, RunError, State, SyncStatus, SyncStorage, heartbeat, recover_job,
    recover_stale, stats,
};

use crate::conformance::{Fixture, NowTs};
use crate::support::forwarding::{Hooked, Hooks};

fn running_job(now: syncstatus::Timestamp) -> Value {
    serde_json::to_value(SyncStatus::pending().start(now)).unwrap()
}

pub async fn check_heartbeat(f: Fixture) {
    let missing = heartbeat(&*f.store, "nobody").await.unwrap_err();
    assert!(matches!(missing, Error::NotFound { .. }), "{missing:?}");
    f.store
        .put("job", running_job(f.clock.now_ts()), PutMode::Overwrite)
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(10));
    let record = heartbeat(&*f.store, "job").await.unwrap();
    assert_eq!(record.version, 2);
    let status: SyncStatus = serde_json::from_value(record.status).unwrap();
    assert_eq!(status.heartbeat_at, Some(f.clock.now_ts()));
    assert_eq!(status.state, State::Running);
}

pub async fn check_recover_stale(f: Fixture) {
    let stale_after = Duration::from_secs(60);
    let policy = RecoveryPolicy { max_attempts: 2 };
    f.store
        .put("dead", running_job(f.clock.now_ts()), PutMode::Overwrite)
        .await
        .unwrap();
    f.store
        .put("alive", running_job(f.clock.now_ts()), PutMode::Overwrite)
        .await
        .unwrap();
    f.store
        .put("done", json!({"state": "completed"}), PutMode::Overwrite)
        .await
        .unwrap();
    for _ in 0..4 {
        f.clock.advance(Duration::from_secs(30));
        heartbeat(&*f.store, "alive").await.unwrap();
    }
    let report = recover_stale(&*f.store, stale_after, &policy)
        .await
        .unwrap();
    assert_eq!(report.alive, 1);
    assert_eq!(report.recovered.len(), 1, "{report:?}");
    let job = &report.recovered[0];
    assert_eq!(
        (job.id.as_str(), job.action, job.attempt),
        ("dead", RecoveryAction::Requeued, 2)
    );
    let dead: SyncStatus =
        serde_json::from_value(f.store.get("dead").await.unwrap().unwrap().status).unwrap();
    assert_eq!(dead.state, State::Pending);
    assert_eq!(dead.attempt, 2);
    assert!(dead.message.as_deref().unwrap().contains("no heartbeat"));
    let alive: SyncStatus =
        serde_json::from_value(f.store.get("alive").await.unwrap().unwrap().status).unwrap();
    assert_eq!(alive.state, State::Running);

    // Started again, it dies again: attempt 2 of 2 is the last, so it fails.
    let restarted = serde_json::to_value(dead.start(f.clock.now_ts())).unwrap();
    f.store
        .put("dead", restarted, PutMode::Overwrite)
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(61));
    heartbeat(&*f.store, "alive").await.unwrap();
    let report = recover_stale(&*f.store, stale_after, &policy)
        .await
        .unwrap();
    assert_eq!(report.recovered.len(), 1, "{report:?}");
    assert_eq!(report.recovered[0].action, RecoveryAction::Failed);
    let failed: SyncStatus =
        serde_json::from_value(f.store.get("dead").await.unwrap().unwrap().status).unwrap();
    assert_eq!(failed.state, State::Failed);
    assert!(failed.error.unwrap().contains("gave up after 2 attempts"));
}

/// Hooks that land a heartbeat of the job just before recovery's conditional write: the
/// race between a late heartbeat and recovery, made deterministic.
#[derive(Debug, Default)]
struct LateHeartbeat {
    fired: AtomicUsize,
}

#[async_trait]
impl Hooks for LateHeartbeat {
    async fn put(
        &self,
        inner: &DynSyncStorage,
        id: &str,
        status: Value,
        mode: PutMode,
    ) -> syncstatus::Result<Record> {
        if matches!(mode, PutMode::Update(_)) && self.fired.fetch_add(1, Ordering::SeqCst) == 0 {
            heartbeat(&**inner, id).await?;
        }
        inner.put(id, status, mode).await
    }
}

pub async fn check_late_heartbeat_beats_recovery(f: Fixture) {
    f.store
        .put("job", running_job(f.clock.now_ts()), PutMode::Overwrite)
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(120));
    let racing = Hooked::new(f.store.clone(), LateHeartbeat::default());
    let report = recover_stale(&racing, Duration::from_secs(60), &RecoveryPolicy::default())
        .await
        .unwrap();
    assert!(report.recovered.is_empty(), "{report:?}");
    assert_eq!(report.alive, 1);
    let record = f.store.get("job").await.unwrap().unwrap();
    assert_eq!(record.state(), Some("running"));
    assert_eq!(record.version, 2, "the heartbeat is the last write");
}

pub async fn check_recover_job(f: Fixture) {
    let missing = recover_job(&*f.store, "nobody", &RecoveryPolicy::default())
        .await
        .unwrap_err();
    assert!(matches!(missing, Error::NotFound { .. }));
    f.store
        .put("done", json!({"state": "completed"}), PutMode::Overwrite)
        .await
        .unwrap();
    let not_running = recover_job(&*f.store, "done", &RecoveryPolicy::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            not_running,
            Error::InvalidTransition {
                action: "recover",
                ..
            }
        ),
        "{not_running:?}"
    );
    f.store
        .put("job", running_job(f.clock.now_ts()), PutMode::Overwrite)
        .await
        .unwrap();
    let job = recover_job(&*f.store, "job", &RecoveryPolicy::default())
        .await
        .unwrap();
    assert_eq!(
        (job.action, job.attempt, job.version),
        (RecoveryAction::Requeued, 2, 2)
    );
}

pub async fn check_stats(f: Fixture) {
    let empty = stats(&*f.store, Duration::from_secs(60)).await.unwrap();
    assert!(empty.healthy);
    assert_eq!((empty.total, empty.oldest_age_ms), (0, None));
    f.store
        .put(
            "old-done",
            json!({"state": "completed"}),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(30));
    f.store
        .put("run-1", running_job(f.clock.now_ts()), PutMode::Overwrite)
        .await
        .unwrap();
    f.store
        .put("run-2", running_job(f.clock.now_ts()), PutMode::Overwrite)
        .await
        .unwrap();
    let fresh = stats(&*f.store, Duration::from_secs(60)).await.unwrap();
    assert!(fresh.healthy);
    assert_eq!(fresh.total, 3);
    assert_eq!(fresh.counts.get("running"), Some(&2));
    assert_eq!(fresh.oldest_age_ms, Some(30_000));
    f.clock.advance(Duration::from_secs(61));
    heartbeat(&*f.store, "run-2").await.unwrap();
    let stale = stats(&*f.store, Duration::from_secs(60)).await.unwrap();
    assert!(!stale.healthy);
    assert_eq!(stale.stale_running, ["run-1"]);
}

#[derive(Debug)]
struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

impl std::error::Error for Boom {}

pub async fn check_idempotency_runs_once(f: Fixture) {
    let idempotency = Idempotency::new(f.store.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..8 {
        let idempotency = idempotency.clone();
        let runs = runs.clone();
        callers.push(tokio::spawn(async move {
            idempotency
                .run("order-1", Duration::from_secs(300), async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    Ok::<_, Boom>(json!({"charged": 42}))
                })
                .await
                .unwrap()
        }));
    }
    for caller in callers {
        assert_eq!(caller.await.unwrap(), json!({"charged": 42}));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Later, within the TTL: the stored result, nothing run.
    let again: Value = idempotency
        .run("order-1", Duration::from_secs(300), async {
            Ok::<_, Boom>(json!("ran again"))
        })
        .await
        .unwrap();
    assert_eq!(again, json!({"charged": 42}));
    // After the result's TTL: runs again.
    f.clock.advance(Duration::from_secs(301));
    let fresh: Value = idempotency
        .run("order-1", Duration::from_secs(300), async {
            Ok::<_, Boom>(json!("ran again"))
        })
        .await
        .unwrap();
    assert_eq!(fresh, json!("ran again"));
}

pub async fn check_idempotency_failure_can_retry(f: Fixture) {
    let idempotency = Idempotency::new(f.store.clone());
    let failed = idempotency
        .run("k", Duration::from_secs(60), async { Err::<u32, _>(Boom) })
        .await;
    assert!(matches!(failed, Err(RunError::Work(Boom))));
    let retried: u32 = idempotency
        .run("k", Duration::from_secs(60), async { Ok::<_, Boom>(5) })
        .await
        .unwrap();
    assert_eq!(retried, 5);
}

pub async fn check_idempotency_in_progress_and_lease(f: Fixture) {
    // A claim left by a caller that died: in progress until its lease runs out.
    let lease = Duration::from_secs(30);
    let idempotency = Idempotency::new(f.store.clone()).with_lease(lease);
    f.store
        .put(
            "idem-job-7",
            json!({"state": "idempotency-claimed", "owner": "dead-process", "until": f.clock.now_ts().saturating_add(lease)}),
            PutMode::Create,
        )
        .await
        .unwrap();
    let rejecting = idempotency
        .clone()
        .with_in_progress(InProgressPolicy::Reject);
    let refused = rejecting
        .run("job-7", Duration::from_secs(60), async { Ok::<_, Boom>(1) })
        .await;
    assert!(
        matches!(refused, Err(RunError::Store(Error::InProgress { .. }))),
        "{refused:?}"
    );
    f.clock.advance(lease + Duration::from_secs(1));
    let taken_over: u32 = idempotency
        .run("job-7", Duration::from_secs(60), async { Ok::<_, Boom>(9) })
        .await
        .unwrap();
    assert_eq!(taken_over, 9);
}

pub async fn check_idempotency_refuses_a_ttl_the_store_would_not_keep(f: Fixture) {
    // The fixture's store keeps every record 5 minutes after its last write.
    let idempotency = Idempotency::new(f.store.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let refused = idempotency
        .run("charge-order-42", Duration::from_secs(3600), async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Boom>(1)
        })
        .await;
    let Err(RunError::Store(Error::Config(message))) = refused else {
        panic!("an hour was promised on a store that keeps 5 minutes: {refused:?}");
    };
    assert!(message.contains("charge-order-42"), "{message}");
    assert!(
        message.contains("1h") && message.contains("5m"),
        "{message}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the work ran");
    // A lease longer than the store keeps a claim would let a second caller in mid-work.
    let long_lease = Idempotency::new(f.store.clone()).with_lease(Duration::from_secs(600));
    let refused = long_lease
        .run("k", Duration::from_secs(60), async { Ok::<_, Boom>(1) })
        .await;
    assert!(
        matches!(refused, Err(RunError::Store(Error::Config(_)))),
        "{refused:?}"
    );
}

pub async fn check_idempotency_bad_key(f: Fixture) {
    let idempotency = Idempotency::new(f.store.clone());
    let refused = idempotency
        .run("../etc", Duration::from_secs(60), async {
            Ok::<_, Boom>(1)
        })
        .await;
    assert!(
        matches!(refused, Err(RunError::Store(Error::InvalidId { .. }))),
        "{refused:?}"
    );
}

/// One `#[tokio::test]` per lifecycle check, with fixtures from `$make`.
#[macro_export]
macro_rules! all_lifecycle_tests {
    ($make:path) => {
        mod lifecycle_checks {
            use super::*;
            macro_rules! one {
                ($check:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $check() {
                        if let Some(fixture) = $make(stringify!($check)).await {
                            $crate::lifecycle::$check(fixture).await;
                        }
                    }
                };
            }
            one!(check_heartbeat);
            one!(check_recover_stale);
            one!(check_late_heartbeat_beats_recovery);
            one!(check_recover_job);
            one!(check_stats);
            one!(check_idempotency_runs_once);
            one!(check_idempotency_failure_can_retry);
            one!(check_idempotency_in_progress_and_lease);
            one!(check_idempotency_refuses_a_ttl_the_store_would_not_keep);
            one!(check_idempotency_bad_key);
        }
    };
}
