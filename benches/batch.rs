//! Reading a batch's status against reading one job: the parent of a 600-child batch holds
//! the rollup, so its status is one `get`, and it should cost at most twice a `get` of a
//! single finished job. Reading every child (what a rollup-less design does for each read)
//! is measured beside it as the contrast.
//!
//! Run with `cargo bench --all-features --bench batch`. Knobs: `ROUNDS` (default 5), `GETS`
//! (reads per variant per round, default 20000), `LISTS` (child listings per round, default
//! 20). Rounds interleave the variants, in an order rotated every round.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use syncstatus::jobs::{FailurePolicy, child_id, reconcile_batch, submit_batch};
use syncstatus::{
    DynSyncStorage, FileStorage, ListFilter, MemoryStorage, Progress, PutMode, SyncStatus,
    Timestamp,
};

const CHILDREN: u64 = 600;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A finished job as the runtime leaves it: progress, result, one attempt in its history.
fn finished(now: Timestamp, parent: Option<&str>) -> SyncStatus {
    let mut status = SyncStatus::pending()
        .with_data(json!({"file": "invoice-0042.pdf"}))
        .start(now)
        .with_progress(Progress::new(12, 12))
        .complete(now, json!({"pages": 12}));
    status.parent = parent.map(str::to_string);
    status
}

async fn prepare(store: &DynSyncStorage) {
    let now = store.clock().now();
    store
        .put(
            "single",
            serde_json::to_value(finished(now, None)).unwrap(),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let children = (0..CHILDREN).map(|_| SyncStatus::pending()).collect();
    submit_batch(&**store, "batch", children, FailurePolicy::Continue)
        .await
        .unwrap();
    // Two thirds done: the rollup is as big as it gets (every count non-zero).
    for n in 1..=CHILDREN {
        let mut child = finished(now, Some("batch"));
        if n % 3 == 0 {
            child = SyncStatus::pending()
                .start(now)
                .with_progress(Progress::new(5, 12));
            child.parent = Some("batch".into());
        }
        store
            .put(
                &child_id("batch", n),
                serde_json::to_value(child).unwrap(),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
    }
    reconcile_batch(&**store, "batch").await.unwrap();
}

/// Reads `id` and decodes its status `gets` times; returns reads per second.
async fn read_status(store: &DynSyncStorage, id: &str, gets: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..gets {
        let record = store.get(id).await.unwrap().unwrap();
        let status: SyncStatus = serde_json::from_value(record.status).unwrap();
        std::hint::black_box(status);
    }
    gets as f64 / start.elapsed().as_secs_f64()
}

/// Reads every child and sums them, `lists` times; returns batch reads per second.
async fn read_children(store: &DynSyncStorage, lists: usize) -> f64 {
    let filter = ListFilter {
        state: None,
        prefix: Some("batch.".into()),
    };
    let start = Instant::now();
    for _ in 0..lists {
        let listing = store.list(&filter).await.unwrap();
        let done: u64 = listing
            .records
            .iter()
            .filter(|r| r.state() == Some("completed"))
            .count() as u64;
        std::hint::black_box(done);
    }
    lists as f64 / start.elapsed().as_secs_f64()
}

/// The median and the range of `values`.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
    )
}

async fn sitting(name: &str, store: DynSyncStorage, rounds: usize, gets: usize, lists: usize) {
    prepare(&store).await;
    let record = store.get("batch").await.unwrap().unwrap();
    let size = serde_json::to_vec(&record).unwrap().len();
    let single = serde_json::to_vec(&store.get("single").await.unwrap().unwrap())
        .unwrap()
        .len();
    let (mut job, mut batch, mut children, mut ratio) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        // Rotate which variant goes first, so none always runs on a cold or warm cache.
        for variant in (0..3).map(|i| (i + round) % 3) {
            match variant {
                0 => job.push(read_status(&store, "single", gets).await),
                1 => batch.push(read_status(&store, "batch", gets).await),
                _ => children.push(read_children(&store, lists).await),
            }
        }
        ratio.push(job[round] / batch[round]);
    }
    println!("\n{name} store: job record {single} B, batch parent {size} B ({CHILDREN} children)");
    println!("| variant | median | min–max |");
    println!("|---|---|---|");
    for (what, rates) in [
        ("get + decode of one finished job (reads/s)", &job),
        ("get + decode of the batch's parent (reads/s)", &batch),
        ("list + count every child (batch reads/s)", &children),
    ] {
        let (median, min, max) = spread(rates);
        println!("| {what} | {median:.0} | {min:.0}–{max:.0} |");
    }
    let (median, min, max) = spread(&ratio);
    println!("| batch read / job read, time (per round) | {median:.2}x | {min:.2}–{max:.2}x |");
}

fn main() {
    let rounds = env_or("ROUNDS", 5).max(1);
    let gets = env_or("GETS", 20_000).max(1);
    let lists = env_or("LISTS", 20).max(1);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "batch status reads: {rounds} rounds, {gets} reads and {lists} child listings per variant per round; load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let memory: DynSyncStorage = Arc::new(MemoryStorage::new());
        sitting("memory", memory, rounds, gets, lists).await;
        let dir = tempfile::tempdir().unwrap();
        let file: DynSyncStorage = Arc::new(FileStorage::open(dir.path()).unwrap());
        sitting("file (default durability)", file, rounds, gets, lists).await;
    });
}
