//! Throughput of the file store against the baselines of BENCHMARKING.md, measured in the
//! same run with interleaved rounds: naive `std::fs::write`, the raw floor of the contract
//! (staging file + rename under a per-id `File::lock`), and `std::fs::read` +
//! `serde_json::from_slice`.
//!
//! Variants run in rotated order within each round; the 16-task rows are compared with 16 OS
//! threads doing the raw work (like with like).
//!
//! Run with `cargo bench --all-features --bench file_store`. Environment knobs:
//! `ROUNDS` (default 5), `PUTS` (per round, default 2000), `GETS` (default 20000),
//! `FSYNC_PUTS` (default 300).

#[path = "support/mod.rs"]
mod support;

use std::fs;
use std::path::Path;
use std::time::Instant;

use support::{
    env_or, fresh_dir, load_average, median, min_max, peak_rss_kib, raw_put, rotated_rounds,
};

use serde_json::{Value, json};
use syncstatus::{
    Durability, FileStorage, PutMode, Record, SyncStorage, SyncStorageExt, Timestamp,
};

const IDS: usize = 100;
const TASKS: usize = 16;

fn ids() -> Vec<String> {
    (0..IDS).map(|i| format!("sync-17322400{i:02}")).collect()
}

/// A status like the ones `SyncStatus` writes, about 300 bytes on disk with its envelope.
fn status(n: usize) -> Value {
    json!({
        "state": "running",
        "progress": {"done": n % 600, "total": 600},
        "message": format!("page {} of 60", n % 60),
        "started_at": "2026-11-22T03:40:00.123Z",
        "heartbeat_at": "2026-11-22T03:41:10.456Z",
        "attempt": 1
    })
}

fn record(id: &str, n: usize) -> Record {
    let now = Timestamp::now();
    Record {
        id: id.to_string(),
        version: n as u64 + 1,
        created_at: now,
        updated_at: now,
        expires_at: None,
        status: status(n),
    }
}

fn to_bytes(record: &Record) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(record).unwrap();
    bytes.push(b'\n');
    bytes
}

/// Naive: `fs::write` of the serialized record.
fn naive_puts(dir: &Path, ids: &[String], ops: usize) {
    for n in 0..ops {
        let id = &ids[n % ids.len()];
        let bytes = to_bytes(&record(id, n));
        fs::write(dir.join(format!("{id}.json")), bytes).unwrap();
    }
}

fn raw_puts(dir: &Path, ids: &[String], ops: usize, fsync: bool) {
    for n in 0..ops {
        let id = &ids[n % ids.len()];
        raw_put(dir, id, &to_bytes(&record(id, n)), fsync);
    }
}

fn raw_gets(dir: &Path, ids: &[String], ops: usize) {
    for n in 0..ops {
        let id = &ids[n % ids.len()];
        let bytes = fs::read(dir.join(format!("{id}.json"))).unwrap();
        let record: Record = serde_json::from_slice(&bytes).unwrap();
        std::hint::black_box(record);
    }
}

/// `ops` of `f` spread over `TASKS` OS threads, each on its own share of the ids: the raw
/// baseline for the 16-task rows (16 tasks against 16 threads, like with like).
fn threads(dir: &Path, ids: &[String], ops: usize, f: fn(&Path, &[String], usize)) {
    std::thread::scope(|scope| {
        for task in 0..TASKS {
            let mine: Vec<String> = ids.iter().skip(task).step_by(TASKS).cloned().collect();
            scope.spawn(move || f(dir, &mine, ops / TASKS));
        }
    });
}

fn raw_puts_rename(dir: &Path, ids: &[String], ops: usize) {
    raw_puts(dir, ids, ops, false);
}

async fn store_puts(store: &FileStorage, ids: &[String], ops: usize) {
    for n in 0..ops {
        let id = &ids[n % ids.len()];
        store.put(id, status(n), PutMode::Overwrite).await.unwrap();
    }
}

/// `update` hands the caller's closure the live record between two blocking steps, so it
/// shows what a second hop to the blocking pool costs next to `put`'s single one.
async fn store_updates(store: &FileStorage, ids: &[String], ops: usize) {
    for n in 0..ops {
        let id = &ids[n % ids.len()];
        store.update_with(id, |_| Ok(status(n))).await.unwrap();
    }
}

async fn store_gets(store: &FileStorage, ids: &[String], ops: usize) {
    for n in 0..ops {
        let id = &ids[n % ids.len()];
        std::hint::black_box(store.get(id).await.unwrap().unwrap());
    }
}

/// `ops` spread over `TASKS` tasks, each on its own share of the ids.
async fn concurrent(store: &FileStorage, ids: &[String], ops: usize, put: bool) {
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        let mine: Vec<String> = ids.iter().skip(task).step_by(TASKS).cloned().collect();
        handles.push(tokio::spawn(async move {
            let share = ops / TASKS;
            if put {
                store_puts(&store, &mine, share).await;
            } else {
                store_gets(&store, &mine, share).await;
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
}

/// Ops per second of one run of `f`.
fn rate(ops: usize, f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    ops as f64 / start.elapsed().as_secs_f64()
}

struct Series {
    name: &'static str,
    ops: usize,
    rates: Vec<f64>,
}

fn print_table(title: &str, series: &[Series]) {
    println!("\n{title}");
    println!(
        "| {:<44} | {:>9} | {:>12} | {:>21} |",
        "variant", "ops/round", "median ops/s", "min–max ops/s"
    );
    println!("|{:-<46}|{:->11}|{:->14}|{:->23}|", "", "", "", "");
    for s in series {
        let (min, max) = min_max(&s.rates);
        println!(
            "| {:<44} | {:>9} | {:>12.0} | {:>10.0} – {:<8.0} |",
            s.name,
            s.ops,
            median(&s.rates),
            min,
            max
        );
    }
}

/// Per-round ratio of `ours` to `base`: median (min–max).
fn print_ratio(label: &str, ours: &Series, base: &Series, target: Option<f64>) {
    let ratios: Vec<f64> = ours
        .rates
        .iter()
        .zip(&base.rates)
        .map(|(o, b)| o / b)
        .collect();
    let (min, max) = min_max(&ratios);
    let verdict = target.map_or(String::new(), |t| {
        let met = if median(&ratios) >= t {
            "met"
        } else {
            "MISSED"
        };
        format!("  target ≥ {t:.2}x: {met}")
    });
    println!(
        "{label:<52} {:.2}x ({min:.2}–{max:.2}){verdict}",
        median(&ratios)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` run only checks it builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds = env_or("ROUNDS", 5).max(3);
    let puts = env_or("PUTS", 2000);
    let gets = env_or("GETS", 20_000);
    let fsync_puts = env_or("FSYNC_PUTS", 300);
    let ids = ids();
    let root = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let naive_dir = fresh_dir(root.path(), "naive");
    let raw_dir = fresh_dir(root.path(), "raw");
    let store_dir = root.path().join("store");
    let store = FileStorage::open(&store_dir).unwrap();
    let concurrent_dir = root.path().join("store-16");
    let store16 = FileStorage::open(&concurrent_dir).unwrap();
    // Every id exists before the first round, so gets always find a record.
    naive_puts(&naive_dir, &ids, ids.len());
    raw_puts(&raw_dir, &ids, ids.len(), false);
    rt.block_on(store_puts(&store, &ids, ids.len()));
    rt.block_on(store_puts(&store16, &ids, ids.len()));
    let size = fs::metadata(store_dir.join(format!("{}.json", ids[0])))
        .unwrap()
        .len();

    let raw16_dir = fresh_dir(root.path(), "raw-16");
    raw_puts(&raw16_dir, &ids, ids.len(), false);
    let timed = |ops: usize, f: &dyn Fn()| rate(ops, f);

    // Every variant once per round, the order rotated from round to round.
    let put_names = [
        "naive fs::write",
        "raw floor: lock + staging + rename",
        "raw floor, 16 OS threads",
        "FileStorage::put, sequential",
        "FileStorage::put, 16 tasks",
        "FileStorage::update, sequential (2 hops)",
    ];
    let put_values = rotated_rounds(
        rounds,
        &mut [
            &mut || timed(puts, &|| naive_puts(&naive_dir, &ids, puts)),
            &mut || timed(puts, &|| raw_puts(&raw_dir, &ids, puts, false)),
            &mut || timed(puts, &|| threads(&raw16_dir, &ids, puts, raw_puts_rename)),
            &mut || timed(puts, &|| rt.block_on(store_puts(&store, &ids, puts))),
            &mut || {
                timed(puts, &|| {
                    rt.block_on(concurrent(&store16, &ids, puts, true))
                })
            },
            &mut || timed(puts, &|| rt.block_on(store_updates(&store, &ids, puts))),
        ],
    );
    let get_names = [
        "raw fs::read + serde_json::from_slice",
        "raw read+parse, 16 OS threads",
        "FileStorage::get, sequential",
        "FileStorage::get, 16 tasks",
    ];
    let get_values = rotated_rounds(
        rounds,
        &mut [
            &mut || timed(gets, &|| raw_gets(&raw_dir, &ids, gets)),
            &mut || timed(gets, &|| threads(&raw16_dir, &ids, gets, raw_gets)),
            &mut || timed(gets, &|| rt.block_on(store_gets(&store, &ids, gets))),
            &mut || {
                timed(gets, &|| {
                    rt.block_on(concurrent(&store16, &ids, gets, false))
                })
            },
        ],
    );

    // Fsync in rounds of its own: it slows the renames that follow it.
    let raw_fsync_dir = fresh_dir(root.path(), "raw-fsync");
    let fsync_dir = root.path().join("store-fsync");
    let fsync_store = FileStorage::builder(&fsync_dir)
        .with_durability(Durability::Fsync)
        .build()
        .unwrap();
    let fsync_names = [
        "raw floor + fsync of file and directory",
        "FileStorage::put, Durability::Fsync",
    ];
    let fsync_values = rotated_rounds(
        rounds,
        &mut [
            &mut || {
                timed(fsync_puts, &|| {
                    raw_puts(&raw_fsync_dir, &ids, fsync_puts, true)
                })
            },
            &mut || {
                timed(fsync_puts, &|| {
                    rt.block_on(store_puts(&fsync_store, &ids, fsync_puts))
                })
            },
        ],
    );
    let series = |names: &[&'static str], values: Vec<Vec<f64>>, ops: usize| -> Vec<Series> {
        names
            .iter()
            .copied()
            .zip(values)
            .map(|(name, rates)| Series { name, ops, rates })
            .collect()
    };
    let put_series = series(&put_names, put_values, puts);
    let get_series = series(&get_names, get_values, gets);
    let fsync_series = series(&fsync_names, fsync_values, fsync_puts);

    println!(
        "file store: {IDS} ids, records of {size} bytes, {rounds} rotated rounds, \
         default durability Rename unless noted; load average {}",
        load_average()
    );
    print_table("put (overwrite)", &put_series);
    print_table("get", &get_series);
    print_table("put with fsync (own rounds)", &fsync_series);
    println!("\nratios (per round, median (min–max)):");
    let ratios: [(&str, &Series, &Series, Option<f64>); 8] = [
        (
            "put sequential / raw floor",
            &put_series[3],
            &put_series[1],
            Some(0.8),
        ),
        (
            "put 16 tasks / raw floor 16 threads",
            &put_series[4],
            &put_series[2],
            Some(0.8),
        ),
        (
            "put sequential / naive write",
            &put_series[3],
            &put_series[0],
            None,
        ),
        (
            "update sequential / put sequential",
            &put_series[5],
            &put_series[3],
            None,
        ),
        (
            "raw floor / naive write",
            &put_series[1],
            &put_series[0],
            None,
        ),
        (
            "get sequential / raw read+parse",
            &get_series[2],
            &get_series[0],
            Some(0.8),
        ),
        (
            "get 16 tasks / raw read+parse 16 threads",
            &get_series[3],
            &get_series[1],
            Some(0.8),
        ),
        (
            "fsync put / raw floor + fsync",
            &fsync_series[1],
            &fsync_series[0],
            None,
        ),
    ];
    for (label, ours, base, target) in ratios {
        print_ratio(label, ours, base, target);
    }
    if let Some(kib) = peak_rss_kib() {
        println!("peak RSS (VmHWM): {kib} KiB");
    }
}
