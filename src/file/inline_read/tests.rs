use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use crate::storage::{PutMode, SyncStorage};

const FAST: Duration = Duration::from_micros(20);
const SLOW: Duration = Duration::from_millis(5);

#[test]
fn only_slow_reads_in_a_row_turn_inline_reads_off() {
    assert_eq!(after_read(0, FAST), (0, false));
    assert_eq!(after_read(2, FAST), (0, false), "a fast read ends the run");
    assert_eq!(
        after_read(0, SLOW_READ),
        (0, false),
        "the limit itself is not slow"
    );
    assert_eq!(after_read(0, SLOW), (1, false));
    assert_eq!(
        after_read(SLOW_READS_IN_A_ROW - 2, SLOW),
        (SLOW_READS_IN_A_ROW - 1, false)
    );
    assert_eq!(after_read(SLOW_READS_IN_A_ROW - 1, SLOW), (0, true));
    assert_eq!(after_read(u32::MAX, SLOW), (0, true));
}

#[test]
fn the_latch_stays_off_for_its_time_then_reads_go_inline_again() {
    let reads = InlineReads::default();
    let start = Instant::now();
    assert!(reads.on_at(start));
    // Preempted reads now and then, with fast ones between: inline reads stay on.
    for _ in 0..10 {
        for _ in 0..SLOW_READS_IN_A_ROW - 1 {
            reads.note(SLOW, start);
        }
        reads.note(FAST, start);
    }
    assert!(reads.on_at(start));
    for _ in 0..SLOW_READS_IN_A_ROW {
        reads.note(SLOW, start);
    }
    assert!(!reads.on_at(start));
    assert!(!reads.on_at(start + OFF_FOR - Duration::from_nanos(1)));
    assert!(reads.on_at(start + OFF_FOR));
    // The count started over: one more slow read does not turn them off again.
    reads.note(SLOW, start + OFF_FOR);
    assert!(reads.on_at(start + OFF_FOR));
}

#[test]
fn the_size_limit_of_inline_reads_is_inclusive() {
    assert!(is_small(0));
    assert!(is_small(INLINE_MAX_SIZE));
    assert!(!is_small(INLINE_MAX_SIZE + 1));
}

/// A status whose record file is about `bytes` long.
fn status_of(bytes: usize) -> Value {
    json!({"state": "running", "items": "x".repeat(bytes)})
}

fn record_size(store: &FileStorage, id: &str) -> u64 {
    let path = store.path_of(id).unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// Writes a small and a large record and reads both back through `get`, and a missing one.
async fn small_and_large_read_back(store: &FileStorage) {
    let small = store
        .put("small", status_of(100), PutMode::Overwrite)
        .await
        .unwrap();
    let large = store
        .put(
            "large",
            status_of(INLINE_MAX_SIZE as usize * 2),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert!(is_small(record_size(store, "small")));
    assert!(!is_small(record_size(store, "large")));
    assert_eq!(store.get("small").await.unwrap(), Some(small));
    assert_eq!(store.get("large").await.unwrap(), Some(large));
    assert_eq!(store.get("missing").await.unwrap(), None);
}

fn store_in(dir: &std::path::Path) -> FileStorage {
    FileStorage::builder(dir)
        .with_lazy_sweep(None)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_and_large_records_read_back_on_a_multi_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    small_and_large_read_back(&store_in(dir.path())).await;
}

#[tokio::test(flavor = "current_thread")]
async fn small_and_large_records_read_back_on_a_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    small_and_large_read_back(&store_in(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_read_back_while_inline_reads_are_off() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    for _ in 0..SLOW_READS_IN_A_ROW {
        store.inner.inline_reads.note(SLOW, Instant::now());
    }
    assert!(!store.inner.inline_reads.on_at(Instant::now()));
    small_and_large_read_back(&store).await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_expired_small_record_is_not_read_inline() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::ManualClock::new(Timestamp::from_millis(1_000_000)));
    let store = FileStorage::builder(dir.path())
        .with_clock(clock.clone())
        .with_ttl(crate::TtlPolicy::uniform(Duration::from_secs(60)))
        .with_lazy_sweep(None)
        .build()
        .unwrap();
    store
        .put("job-1", status_of(10), PutMode::Overwrite)
        .await
        .unwrap();
    assert!(store.get("job-1").await.unwrap().is_some());
    clock.advance(Duration::from_secs(60));
    assert_eq!(store.get("job-1").await.unwrap(), None);
}

/// A small record is read without the blocking pool: with its one thread held, `get` still
/// answers, where a trip through the pool would queue behind the held thread.
#[test]
fn a_small_record_is_read_without_the_blocking_pool() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    runtime.block_on(async {
        let written = store
            .put("small", status_of(100), PutMode::Overwrite)
            .await
            .unwrap();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (held, holding) = tokio::sync::oneshot::channel::<()>();
        let holder = tokio::task::spawn_blocking(move || {
            let _ = held.send(());
            let _ = released.recv();
        });
        holding.await.unwrap();
        // A deadline on the answer, so that a regression fails instead of hanging.
        let read = tokio::time::timeout(Duration::from_secs(60), store.get("small")).await;
        let _ = release.send(());
        holder.await.unwrap();
        assert_eq!(
            read.expect("get went through the held blocking pool")
                .unwrap(),
            Some(written)
        );
    });
}
