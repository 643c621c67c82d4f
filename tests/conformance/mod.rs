//! The conformance suite: plain async checks every backend must pass, each taking a store
//! made by the backend's test file. `conformance_tests!` turns the list into one named test
//! per check.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use syncstatus::{
    CleanupOptions, DynSyncStorage, Error, ListFilter, ManualClock, PutMode, SyncStorage,
    SyncStorageExt, TtlPolicy, WatchEvent, WatchOptions, WatchSelector, WatchStream,
};

/// What a backend test hands to every check: a fresh, empty store whose clock the check
/// moves, with the TTL policy the check asked for. `_guard` cleans up when dropped.
pub struct Fixture {
    pub store: DynSyncStorage,
    /// A second handle on the same records, opened the way another process or replica opens
    /// it (another `FileStorage` on the directory, another client on the prefix or table).
    pub other: DynSyncStorage,
    pub clock: ManualClock,
    /// Writes a record of the given id at the highest version the backend can hold, by hand
    /// (no store API makes one), and returns that version. `None` when the backend test cannot.
    pub seed_max_version: Option<Seeder>,
    pub _guard: Box<dyn Send>,
}

/// See [`Fixture::seed_max_version`].
pub type Seeder = Box<
    dyn Fn(&'static str) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>>
        + Send
        + Sync,
>;

/// Longest wait for a watch event before a check fails.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(10);

fn ttl_policy() -> TtlPolicy {
    TtlPolicy::uniform(Duration::from_secs(300)).with_state("forever", None)
}

pub fn standard_ttl() -> TtlPolicy {
    ttl_policy()
}

pub async fn check_get_missing_is_none(f: Fixture) {
    assert!(f.store.get("nothing-here").await.unwrap().is_none());
}

pub async fn check_put_then_get(f: Fixture) {
    let now = f.clock.now_ts();
    let written = f
        .store
        .put(
            "job-1",
            json!({"state": "running", "n": 1}),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert_eq!(written.id, "job-1");
    assert_eq!(written.version, 1);
    assert_eq!(written.updated_at, now);
    assert_eq!(written.created_at, now);
    let read = f.store.get("job-1").await.unwrap().unwrap();
    assert_eq!(read, written);
    assert_eq!(read.state(), Some("running"));
}

pub async fn check_versions_grow_by_one(f: Fixture) {
    for expected in 1..=5u64 {
        let record = f
            .store
            .put("v", json!({"n": expected}), PutMode::Overwrite)
            .await
            .unwrap();
        assert_eq!(record.version, expected);
    }
    let record = f
        .store
        .update_with("v", |current| {
            let n = current.unwrap().status["n"].as_u64().unwrap();
            Ok(json!({"n": n + 1}))
        })
        .await
        .unwrap();
    assert_eq!(record.version, 6);
    assert_eq!(record.status, json!({"n": 6}));
}

pub async fn check_create_only(f: Fixture) {
    f.store
        .put("c", json!({"a": 1}), PutMode::Create)
        .await
        .unwrap();
    let error = f
        .store
        .put("c", json!({"a": 2}), PutMode::Create)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::AlreadyExists { id, version: 1 } if id == "c"),
        "{error:?}"
    );
    assert_eq!(
        f.store.get("c").await.unwrap().unwrap().status,
        json!({"a": 1})
    );
}

pub async fn check_compare_and_set(f: Fixture) {
    let error = f
        .store
        .put("cas", json!({}), PutMode::Update(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::VersionConflict { id, expected: 1, found: None } if id == "cas"),
        "{error:?}"
    );
    assert!(f.store.get("cas").await.unwrap().is_none());
    f.store
        .put("cas", json!({"x": 1}), PutMode::Create)
        .await
        .unwrap();
    f.store
        .put("cas", json!({"x": 2}), PutMode::Update(1))
        .await
        .unwrap();
    let error = f
        .store
        .put("cas", json!({"x": 3}), PutMode::Update(1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::VersionConflict {
                expected: 1,
                found: Some(2),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_conflict());
    assert_eq!(
        f.store.get("cas").await.unwrap().unwrap().status,
        json!({"x": 2})
    );
}

pub async fn check_update_error_writes_nothing(f: Fixture) {
    f.store
        .put("u", json!({"keep": true}), PutMode::Overwrite)
        .await
        .unwrap();
    let error = f
        .store
        .update_with("u", |_| Err(Error::NotFound { id: "u".into() }))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NotFound { .. }));
    let record = f.store.get("u").await.unwrap().unwrap();
    assert_eq!(record.version, 1);
    assert_eq!(record.status, json!({"keep": true}));
}

pub async fn check_update_missing_creates(f: Fixture) {
    let record = f
        .store
        .update_with("fresh", |current| {
            assert!(current.is_none());
            Ok(json!({"state": "pending"}))
        })
        .await
        .unwrap();
    assert_eq!(record.version, 1);
}

/// Counts `id` up from as many tasks as `stores` has entries (handles may repeat), `each`
/// read-modify-writes per task, and checks that the count and the version end at the total.
async fn count_up_concurrently(stores: Vec<DynSyncStorage>, id: &'static str, each: u64) {
    let total = stores.len() as u64 * each;
    let reader = stores[0].clone();
    let mut writers = Vec::new();
    for store in stores {
        writers.push(tokio::spawn(async move {
            for _ in 0..each {
                store
                    .update_with(id, |current| {
                        let n = current.map_or(0, |r| r.status["n"].as_u64().unwrap());
                        Ok(json!({"n": n + 1}))
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let record = reader.get(id).await.unwrap().unwrap();
    assert_eq!(record.status["n"], total);
    assert_eq!(record.version, total);
}

pub async fn check_concurrent_updates_lose_nothing(f: Fixture) {
    count_up_concurrently(vec![f.store.clone(); 16], "counter", 25).await;
}

pub async fn check_delete_and_recreate(f: Fixture) {
    assert!(!f.store.delete("d").await.unwrap());
    let first = f
        .store
        .put("d", json!({"n": 1}), PutMode::Overwrite)
        .await
        .unwrap();
    f.store
        .put("d", json!({"n": 2}), PutMode::Overwrite)
        .await
        .unwrap();
    assert!(f.store.delete("d").await.unwrap());
    assert!(f.store.get("d").await.unwrap().is_none());
    assert!(!f.store.delete("d").await.unwrap());
    f.clock.advance(Duration::from_secs(1));
    let again = f
        .store
        .put("d", json!({"n": 3}), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(again.version, 1);
    assert_ne!(again.created_at, first.created_at);
}

pub async fn check_invalid_ids_refused(f: Fixture) {
    for id in [
        "",
        "../x",
        "a/b",
        "a\\b",
        "/abs",
        ".hidden",
        "a\0b",
        "CON",
        &"x".repeat(200),
    ] {
        let invalid = |r: Result<_, Error>| matches!(r, Err(Error::InvalidId { .. }));
        assert!(invalid(f.store.get(id).await.map(|_| ())), "get {id:?}");
        assert!(
            invalid(
                f.store
                    .put(id, json!({}), PutMode::Overwrite)
                    .await
                    .map(|_| ())
            ),
            "put {id:?}"
        );
        assert!(
            invalid(f.store.update_with(id, |_| Ok(json!({}))).await.map(|_| ())),
            "update {id:?}"
        );
        assert!(
            invalid(f.store.delete(id).await.map(|_| ())),
            "delete {id:?}"
        );
    }
    assert!(
        f.store
            .list(&ListFilter::all())
            .await
            .unwrap()
            .records
            .is_empty()
    );
}

pub async fn check_expiry(f: Fixture) {
    f.store
        .put("old", json!({"state": "completed"}), PutMode::Overwrite)
        .await
        .unwrap();
    f.store
        .put("kept", json!({"state": "forever"}), PutMode::Overwrite)
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(299));
    assert!(f.store.get("old").await.unwrap().is_some());
    f.store
        .put("young", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(2));
    assert!(
        f.store.get("old").await.unwrap().is_none(),
        "expired reads as absent"
    );
    assert!(f.store.get("young").await.unwrap().is_some());
    assert!(
        f.store.get("kept").await.unwrap().is_some(),
        "a state with no TTL never expires"
    );
    let ids: Vec<String> = f
        .store
        .list(&ListFilter::all())
        .await
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["kept", "young"]);
    // An expired record is gone for writers too: create succeeds, a new incarnation.
    let created = f
        .store
        .put("old", json!({"state": "pending"}), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(created.version, 1);
}

pub async fn check_heartbeat_keeps_alive(f: Fixture) {
    f.store
        .put("hb", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();
    for _ in 0..10 {
        f.clock.advance(Duration::from_secs(200));
        f.store
            .update_with("hb", |current| Ok(current.unwrap().status.clone()))
            .await
            .unwrap();
    }
    let report = f.store.cleanup(&CleanupOptions::default()).await.unwrap();
    assert!(report.ran);
    assert!(report.removed.is_empty());
    assert!(f.store.get("hb").await.unwrap().is_some());
}

pub async fn check_cleanup(f: Fixture) {
    for i in 0..5 {
        f.store
            .put(
                &format!("old-{i}"),
                json!({"state": "completed"}),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
    }
    f.clock.advance(Duration::from_secs(250));
    f.store
        .put("new", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(100));

    let dry = f
        .store
        .cleanup(&CleanupOptions {
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(dry.ran);
    assert_eq!(dry.removed, ["old-0", "old-1", "old-2", "old-3", "old-4"]);

    let report = f.store.cleanup(&CleanupOptions::default()).await.unwrap();
    assert!(report.ran);
    assert_eq!(report.removed, dry.removed);
    assert_eq!(report.kept, 1);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(f.store.get("new").await.unwrap().is_some());

    // An explicit TTL overrides the policy.
    let report = f
        .store
        .cleanup(&CleanupOptions {
            ttl: Some(Duration::from_secs(60)),
            dry_run: false,
        })
        .await
        .unwrap();
    assert_eq!(report.removed, ["new"]);
    assert!(
        f.store
            .list(&ListFilter::all())
            .await
            .unwrap()
            .records
            .is_empty()
    );
}

pub async fn check_list_and_count(f: Fixture) {
    for (id, state) in [
        ("b-1", "running"),
        ("a-2", "completed"),
        ("a-1", "running"),
        ("c", "failed"),
    ] {
        f.store
            .put(id, json!({"state": state}), PutMode::Overwrite)
            .await
            .unwrap();
    }
    f.store
        .put("plain", json!({"other": 1}), PutMode::Overwrite)
        .await
        .unwrap();
    let all = f.store.list(&ListFilter::all()).await.unwrap();
    let ids: Vec<&str> = all.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["a-1", "a-2", "b-1", "c", "plain"]);
    assert!(all.errors.is_empty());
    let running = f.store.list(&ListFilter::state("running")).await.unwrap();
    let ids: Vec<&str> = running.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["a-1", "b-1"]);
    let prefixed = f
        .store
        .list(&ListFilter {
            prefix: Some("a-".into()),
            state: None,
        })
        .await
        .unwrap();
    assert_eq!(prefixed.records.len(), 2);
    let counts = f.store.count_by_state().await.unwrap();
    assert_eq!(counts.get("running"), Some(&2));
    assert_eq!(counts.get("completed"), Some(&1));
    assert_eq!(counts.get("failed"), Some(&1));
    assert_eq!(counts.get(""), Some(&1));
    // A scan sees what a list sees, filters alike, each record once.
    for filter in [
        ListFilter::all(),
        ListFilter::state("running"),
        ListFilter {
            prefix: Some("a-".into()),
            state: None,
        },
    ] {
        let mut scanned = Vec::new();
        f.store
            .scan(&filter, &mut |record| scanned.push(record.unwrap()))
            .await
            .unwrap();
        scanned.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(
            scanned,
            f.store.list(&filter).await.unwrap().records,
            "{filter:?}"
        );
    }
}

pub async fn check_expires_at_is_stored_and_read(f: Fixture) {
    let written = f
        .store
        .put("exp", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();
    let ttl = f.store.ttl_for(&written.status).unwrap();
    assert_eq!(
        written.expires_at,
        ttl.map(|ttl| written.updated_at.saturating_add(ttl)),
        "the written record says when it expires, by the store's policy"
    );
    let read = f.store.get("exp").await.unwrap().unwrap();
    assert_eq!(read.expires_at, written.expires_at);
    let listed = f.store.list(&ListFilter::all()).await.unwrap();
    assert_eq!(listed.records[0].expires_at, written.expires_at);
    let again = f
        .store
        .update_with("exp", |_| Ok(json!({"state": "running", "n": 1})))
        .await
        .unwrap();
    assert!(
        again.expires_at >= written.expires_at,
        "a write moves expiry on"
    );
}

pub async fn check_try_lock(f: Fixture) {
    let held = f
        .store
        .try_lock("sweep-test", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(held.is_some());
    assert!(
        f.store
            .try_lock("sweep-test", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        f.store
            .try_lock("other", Duration::from_secs(30))
            .await
            .unwrap()
            .is_some()
    );
    drop(held);
    let mut again = None;
    // Some backends release asynchronously; wait for the release, bounded.
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    while again.is_none() && tokio::time::Instant::now() < deadline {
        again = f
            .store
            .try_lock("sweep-test", Duration::from_secs(30))
            .await
            .unwrap();
        if again.is_none() {
            tokio::task::yield_now().await;
        }
    }
    assert!(again.is_some(), "lock not released after drop");
}

pub async fn check_cleanup_skips_while_sweep_locked(f: Fixture) {
    f.store
        .put("x", json!({"state": "completed"}), PutMode::Overwrite)
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(600));
    let held = f
        .store
        .try_lock("sweep", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(held.is_some());
    let report = f.store.cleanup(&CleanupOptions::default()).await.unwrap();
    assert!(
        !report.ran,
        "a cleanup ran while another held the sweep lock"
    );
    assert!(report.removed.is_empty());
}

/// The next event of `stream`, failing the check after [`EVENT_DEADLINE`].
pub async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_DEADLINE, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("watch error: {error}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {EVENT_DEADLINE:?}"),
    }
}

/// Follows `stream`, applying events to `state`, until `done(state)` holds.
pub async fn follow_until(
    stream: &mut WatchStream,
    state: &mut HashMap<String, u64>,
    done: impl Fn(&HashMap<String, u64>) -> bool,
) {
    while !done(state) {
        match next_event(stream).await {
            WatchEvent::Upsert(record) => {
                state.insert(record.id.clone(), record.version);
            }
            WatchEvent::Removed { id } => {
                state.remove(&id);
            }
            WatchEvent::Resync(records) => {
                *state = records.iter().map(|r| (r.id.clone(), r.version)).collect();
            }
        }
    }
}

pub async fn check_watch_sees_writes_and_removals(f: Fixture) {
    let mut stream = f
        .store
        .watch(WatchSelector::All, WatchOptions::default())
        .await
        .unwrap();
    f.store
        .put("w", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();
    match next_event(&mut stream).await {
        WatchEvent::Upsert(record) => {
            assert_eq!(record.id, "w");
            assert_eq!(record.version, 1);
            assert_eq!(record.status, json!({"state": "running"}));
        }
        other => panic!("expected an upsert, got {other:?}"),
    }
    f.store.delete("w").await.unwrap();
    let mut state = HashMap::from([("w".to_string(), 1)]);
    follow_until(&mut stream, &mut state, |s| !s.contains_key("w")).await;
}

pub async fn check_watch_final_state_of_burst(f: Fixture) {
    let mut stream = f
        .store
        .watch(WatchSelector::All, WatchOptions::default())
        .await
        .unwrap();
    const IDS: usize = 20;
    const WRITES: usize = 10;
    let mut writers = Vec::new();
    for i in 0..IDS {
        let store = f.store.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..WRITES {
                store
                    .put(&format!("burst-{i}"), json!({"n": n}), PutMode::Overwrite)
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut state = HashMap::new();
    follow_until(&mut stream, &mut state, |s| {
        s.len() == IDS && s.values().all(|v| *v == WRITES as u64)
    })
    .await;
}

pub async fn check_watch_selector_and_snapshot(f: Fixture) {
    f.store
        .put("sel-a", json!({"n": 1}), PutMode::Overwrite)
        .await
        .unwrap();
    f.store
        .put("sel-b", json!({"n": 1}), PutMode::Overwrite)
        .await
        .unwrap();
    let mut stream = f
        .store
        .watch(
            WatchSelector::ids(["sel-b"]),
            WatchOptions {
                snapshot: true,
                resume: None,
            },
        )
        .await
        .unwrap();
    match next_event(&mut stream).await {
        WatchEvent::Resync(records) => {
            let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids, ["sel-b"]);
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    f.store
        .put("sel-a", json!({"n": 2}), PutMode::Overwrite)
        .await
        .unwrap();
    f.store
        .put("sel-b", json!({"n": 2}), PutMode::Overwrite)
        .await
        .unwrap();
    match next_event(&mut stream).await {
        WatchEvent::Upsert(record) => {
            assert_eq!((record.id.as_str(), record.version), ("sel-b", 2))
        }
        other => panic!("expected sel-b's upsert only, got {other:?}"),
    }
}

pub async fn check_watch_resume(f: Fixture) {
    f.store
        .put("r-same", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    f.store
        .put("r-newer", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    f.store
        .put("r-newer", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    let known = HashMap::from([
        ("r-same".to_string(), 1),
        ("r-newer".to_string(), 1),
        ("r-gone".to_string(), 4),
    ]);
    let mut stream = f
        .store
        .watch(
            WatchSelector::Prefix("r-".into()),
            WatchOptions {
                snapshot: false,
                resume: Some(known),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut stream).await,
        WatchEvent::Removed {
            id: "r-gone".into()
        }
    );
    match next_event(&mut stream).await {
        WatchEvent::Upsert(record) => {
            assert_eq!((record.id.as_str(), record.version), ("r-newer", 2))
        }
        other => panic!("expected r-newer at 2, got {other:?}"),
    }
    f.store
        .put("r-same", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    match next_event(&mut stream).await {
        WatchEvent::Upsert(record) => {
            assert_eq!((record.id.as_str(), record.version), ("r-same", 2))
        }
        other => panic!("expected r-same at 2, got {other:?}"),
    }
}

pub async fn check_second_handle_shares_records(f: Fixture) {
    f.other
        .put("shared", json!({"n": 1}), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(f.store.get("shared").await.unwrap().unwrap().version, 1);
    f.store
        .put("shared", json!({"n": 2}), PutMode::Update(1))
        .await
        .unwrap();
    let error = f
        .other
        .put("shared", json!({"n": 3}), PutMode::Update(1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::VersionConflict {
                expected: 1,
                found: Some(2),
                ..
            }
        ),
        "{error:?}"
    );
    // Read-modify-writes through both handles at once lose nothing.
    let both = vec![
        f.store.clone(),
        f.other.clone(),
        f.store.clone(),
        f.other.clone(),
    ];
    count_up_concurrently(both, "both", 20).await;
    // A store-wide lock held through one handle is held for the other.
    let held = f
        .store
        .try_lock("shared-lock", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(held.is_some());
    assert!(
        f.other
            .try_lock("shared-lock", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );
    // So is the sweep lock: one replica sweeping makes another's cleanup skip, and once it
    // lets go, the other sweeps.
    f.other
        .put("stale", json!({"state": "completed"}), PutMode::Overwrite)
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(600));
    let sweeping = f
        .store
        .try_lock("sweep", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(sweeping.is_some());
    let skipped = f.other.cleanup(&CleanupOptions::default()).await.unwrap();
    assert!(
        !skipped.ran,
        "swept while another handle held the sweep lock"
    );
    assert!(skipped.removed.is_empty());
    drop(sweeping);
    // Some backends release asynchronously; wait for the release, bounded.
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    let report = loop {
        let report = f.other.cleanup(&CleanupOptions::default()).await.unwrap();
        if report.ran || tokio::time::Instant::now() > deadline {
            break report;
        }
        tokio::task::yield_now().await;
    };
    assert!(report.ran, "the sweep lock was not released");
    assert!(report.removed.contains(&"stale".to_string()), "{report:?}");
}

pub async fn check_watch_sees_writes_of_another_handle(f: Fixture) {
    let mut stream = f
        .store
        .watch(WatchSelector::All, WatchOptions::default())
        .await
        .unwrap();
    for n in 1..=5u64 {
        f.other
            .put("elsewhere", json!({"n": n}), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let mut state = HashMap::new();
    follow_until(&mut stream, &mut state, |s| s.get("elsewhere") == Some(&5)).await;
    f.other.delete("elsewhere").await.unwrap();
    follow_until(&mut stream, &mut state, |s| !s.contains_key("elsewhere")).await;
}

pub async fn check_watch_reports_expiry(f: Fixture) {
    f.store
        .put("fading", json!({"state": "completed"}), PutMode::Overwrite)
        .await
        .unwrap();
    f.store
        .put("lasting", json!({"state": "forever"}), PutMode::Overwrite)
        .await
        .unwrap();
    let mut stream = f
        .store
        .watch(
            WatchSelector::All,
            WatchOptions {
                snapshot: true,
                resume: None,
            },
        )
        .await
        .unwrap();
    let mut state = HashMap::new();
    follow_until(&mut stream, &mut state, |s| s.len() == 2).await;
    // Nothing is written: the removal comes from the watch noticing the expiry by the clock.
    f.clock.advance(Duration::from_secs(301));
    follow_until(&mut stream, &mut state, |s| !s.contains_key("fading")).await;
    assert!(
        state.contains_key("lasting"),
        "a record without a TTL was reported removed"
    );
}

pub async fn check_invalid_lock_names_refused(f: Fixture) {
    for name in [
        "",
        "../x",
        "a/b",
        "a\\b",
        "/abs",
        ".hidden",
        "a\0b",
        "a b",
        "CON",
        &"x".repeat(200),
    ] {
        let result = f.store.try_lock(name, Duration::from_secs(30)).await;
        assert!(
            matches!(result, Err(Error::InvalidId { .. })),
            "try_lock({name:?}) was not refused: {result:?}"
        );
    }
    assert!(
        f.store
            .try_lock("good-name_1.x", Duration::from_secs(30))
            .await
            .unwrap()
            .is_some()
    );
}

/// How long an update's closure waits for a racing write to finish. On backends that hold a
/// lock across the closure the racing write cannot finish, so the wait runs out and the
/// closure goes on; either way the outcome checked is the same.
const RACE_WAIT: Duration = Duration::from_millis(200);

/// A `put` through the other handle lands while an `update`'s closure runs (on backends whose
/// update does not exclude it): the update must not write over it with what it read before.
pub async fn check_update_racing_put_loses_nothing(f: Fixture) {
    f.store
        .put("raced", json!({"n": 0}), PutMode::Overwrite)
        .await
        .unwrap();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let other = f.other.clone();
    let racer = tokio::spawn(async move {
        started_rx.await.unwrap();
        loop {
            let current = other.get("raced").await.unwrap().unwrap();
            let n = current.status["n"].as_u64().unwrap();
            match other
                .put(
                    "raced",
                    json!({"n": n + 1}),
                    PutMode::Update(current.version),
                )
                .await
            {
                Ok(_) => break,
                Err(error) if error.is_conflict() => tokio::task::yield_now().await,
                Err(error) => panic!("put: {error}"),
            }
        }
        let _ = done_tx.send(());
    });
    let mut started = Some(started_tx);
    f.store
        .update_with("raced", move |current| {
            if let Some(started) = started.take() {
                started.send(()).unwrap();
                let _ = done_rx.recv_timeout(RACE_WAIT);
            }
            let n = current.map_or(0, |r| r.status["n"].as_u64().unwrap());
            Ok(json!({"n": n + 1}))
        })
        .await
        .unwrap();
    racer.await.unwrap();
    let record = f.store.get("raced").await.unwrap().unwrap();
    assert_eq!(record.status, json!({"n": 2}), "a write was lost");
    assert_eq!(record.version, 3);
}

/// A delete through the other handle lands while an `update`'s closure runs: once the delete
/// reports it removed the record, the update (which here refuses to create one) must not
/// write it back.
pub async fn check_update_racing_delete_stays_deleted(f: Fixture) {
    f.store
        .put("doomed", json!({"n": 0}), PutMode::Overwrite)
        .await
        .unwrap();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let other = f.other.clone();
    let deleter = tokio::spawn(async move {
        started_rx.await.unwrap();
        let removed = other.delete("doomed").await.unwrap();
        let _ = done_tx.send(());
        removed
    });
    let mut started = Some(started_tx);
    let result = f
        .store
        .update_with("doomed", move |current| {
            if let Some(started) = started.take() {
                started.send(()).unwrap();
                let _ = done_rx.recv_timeout(RACE_WAIT);
            }
            let Some(current) = current else {
                return Err(Error::aborted("doomed", "the record is gone"));
            };
            let n = current.status["n"].as_u64().unwrap();
            Ok(json!({"n": n + 1}))
        })
        .await;
    assert!(deleter.await.unwrap(), "the delete found no record");
    match result {
        // The update came first (a lock held it off the delete) or saw the record gone.
        Ok(_) | Err(Error::Aborted { .. }) => {}
        Err(error) => panic!("update: {error}"),
    }
    let back = f.store.get("doomed").await.unwrap();
    assert!(back.is_none(), "a deleted record came back: {back:?}");
}

/// A record at the highest version the backend holds cannot be written again: a typed error,
/// not a wrap to 0 nor a server error, and the record is left as it was.
pub async fn check_version_exhausted(f: Fixture) {
    let Some(seed) = &f.seed_max_version else {
        return;
    };
    let max = seed("at-max").await;
    let before = f.store.get("at-max").await.unwrap().unwrap();
    assert_eq!(before.version, max);
    let exhausted = |result: &Result<syncstatus::Record, Error>| matches!(result, Err(Error::VersionExhausted { id, version }) if id == "at-max" && *version == max);
    let put = f
        .store
        .put("at-max", json!({"n": 1}), PutMode::Overwrite)
        .await;
    assert!(exhausted(&put), "put: {put:?}");
    let cas = f
        .store
        .put("at-max", json!({"n": 1}), PutMode::Update(max))
        .await;
    assert!(exhausted(&cas), "put(Update): {cas:?}");
    let update = f.store.update_with("at-max", |_| Ok(json!({"n": 1}))).await;
    assert!(exhausted(&update), "update: {update:?}");
    assert_eq!(f.store.get("at-max").await.unwrap().unwrap(), before);
    // Deleted, the id starts a new incarnation at version 1.
    assert!(f.store.delete("at-max").await.unwrap());
    let again = f
        .store
        .put("at-max", json!({}), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(again.version, 1);
}

/// A record over the size limit is refused with a typed error naming the id, and nothing is
/// written; a record well under it is fine.
pub async fn check_too_large_refused(f: Fixture) {
    let limit = syncstatus::DEFAULT_MAX_RECORD_SIZE;
    let big = json!({"pad": "x".repeat(usize::try_from(limit).unwrap())});
    for mode in [PutMode::Overwrite, PutMode::Create] {
        let error = f.store.put("big", big.clone(), mode).await.unwrap_err();
        assert!(
            matches!(&error, Error::TooLarge { id, size, limit: l } if id == "big" && *size > limit && *l == limit),
            "{error:?}"
        );
    }
    assert!(f.store.get("big").await.unwrap().is_none());
    f.store
        .put("big", json!({"n": 1}), PutMode::Overwrite)
        .await
        .unwrap();
    let error = f
        .store
        .update_with("big", |_| Ok(big.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::TooLarge { id, .. } if id == "big"),
        "{error:?}"
    );
    let error = f
        .store
        .put("big", big.clone(), PutMode::Update(1))
        .await
        .unwrap_err();
    assert!(matches!(&error, Error::TooLarge { .. }), "{error:?}");
    assert_eq!(f.store.get("big").await.unwrap().unwrap().version, 1);
    let half = json!({"pad": "x".repeat(usize::try_from(limit / 2).unwrap())});
    let record = f.store.put("big", half, PutMode::Overwrite).await.unwrap();
    assert_eq!(record.version, 2);
}

/// Checks that a store is usable as `&dyn SyncStorage` and `Arc<dyn SyncStorage>`.
pub fn assert_object_safe(store: &dyn SyncStorage) -> Arc<dyn SyncStorage> {
    let _ = store.backend_name();
    Arc::new(MemoryProbe)
}

#[derive(Debug)]
struct MemoryProbe;

#[async_trait::async_trait]
impl SyncStorage for MemoryProbe {
    fn backend_name(&self) -> &'static str {
        "probe"
    }
    fn clock(&self) -> syncstatus::SharedClock {
        Arc::new(syncstatus::SystemClock)
    }
    async fn get(&self, _: &str) -> syncstatus::Result<Option<syncstatus::Record>> {
        Ok(None)
    }
    async fn put(
        &self,
        id: &str,
        _: serde_json::Value,
        _: PutMode,
    ) -> syncstatus::Result<syncstatus::Record> {
        Err(Error::NotFound { id: id.into() })
    }
    async fn update(
        &self,
        id: &str,
        _: &mut syncstatus::UpdateFn<'_>,
    ) -> syncstatus::Result<syncstatus::Record> {
        Err(Error::NotFound { id: id.into() })
    }
    async fn delete(&self, _: &str) -> syncstatus::Result<bool> {
        Ok(false)
    }
    async fn list(&self, _: &ListFilter) -> syncstatus::Result<syncstatus::Listing> {
        Ok(Default::default())
    }
    async fn cleanup(&self, _: &CleanupOptions) -> syncstatus::Result<syncstatus::CleanupReport> {
        Ok(Default::default())
    }
    async fn watch(&self, _: WatchSelector, _: WatchOptions) -> syncstatus::Result<WatchStream> {
        Ok(Box::pin(futures_util::stream::empty()))
    }
    async fn try_lock(
        &self,
        _: &str,
        _: Duration,
    ) -> syncstatus::Result<Option<syncstatus::LockGuard>> {
        Ok(None)
    }
}

/// The manual clock's time, under a name that reads well in checks.
pub trait NowTs {
    fn now_ts(&self) -> syncstatus::Timestamp;
}

impl NowTs for ManualClock {
    fn now_ts(&self) -> syncstatus::Timestamp {
        syncstatus::Clock::now(self)
    }
}

/// One `#[tokio::test]` per check, each with a fixture from `$make` (an async fn taking the
/// check's name, for a unique key prefix, table or directory).
#[macro_export]
macro_rules! conformance_tests {
    ($make:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                if let Some(fixture) = $make(stringify!($check)).await {
                    conformance::$check(fixture).await;
                }
            }
        )*
    };
}

/// Every check, for backend test files: `conformance_tests!(make; all_checks!())` is not
/// possible in macro_rules, so backends list them through this macro instead.
#[macro_export]
macro_rules! all_conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!($make;
            check_get_missing_is_none,
            check_put_then_get,
            check_versions_grow_by_one,
            check_create_only,
            check_compare_and_set,
            check_update_error_writes_nothing,
            check_update_missing_creates,
            check_concurrent_updates_lose_nothing,
            check_delete_and_recreate,
            check_invalid_ids_refused,
            check_expiry,
            check_heartbeat_keeps_alive,
            check_cleanup,
            check_list_and_count,
            check_expires_at_is_stored_and_read,
            check_try_lock,
            check_cleanup_skips_while_sweep_locked,
            check_watch_sees_writes_and_removals,
            check_watch_final_state_of_burst,
            check_watch_selector_and_snapshot,
            check_watch_resume,
            check_second_handle_shares_records,
            check_watch_sees_writes_of_another_handle,
            check_watch_reports_expiry,
            check_invalid_lock_names_refused,
            check_update_racing_put_loses_nothing,
            check_update_racing_delete_stays_deleted,
            check_version_exhausted,
            check_too_large_refused,
        );
    };
}
