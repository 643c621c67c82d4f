//! Throughput of the file store against the baselines of BENCHMARKING.md, measured in the
//! same run with interleaved rounds: naive `std::fs::write`, the raw floor of the contract
//! (staging file + rename under a per-id `File::lock`), and `std::fs::read` +
//! `serde_json::from_slice`.
//!
//! Run with `cargo bench --all-features --bench file_store`. Environment knobs:
//! `ROUNDS` (default 5), `PUTS` (per round, default 2000), `GETS` (default 20000),
//! `FSYNC_PUTS` (default 300).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{Value, json};
use syncstatus::{
    Durability, FileStorage, PutMode, Record, SyncStorage, SyncStorageExt, Timestamp,
};

const IDS: usize = 100;
const TASKS: usize = 16;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

/// The raw floor of the contract: per-id lock file, unique staging file, rename.
fn raw_put(dir: &Path, id: &str, bytes: &[u8], fsync: bool) {
    let lock_path = dir.join(".locks").join(format!("{id}.lock"));
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .unwrap();
    lock.lock().unwrap();
    let staged = dir.join(".tmp").join(format!(
        "{id}.{}.{}.tmp",
        std::process::id(),
        STAGING_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&staged)
        .unwrap();
    file.write_all(bytes).unwrap();
    if fsync {
        file.sync_all().unwrap();
    }
    drop(file);
    fs::rename(&staged, dir.join(format!("{id}.json"))).unwrap();
    if fsync {
        File::open(dir).unwrap().sync_all().unwrap();
    }
    lock.unlock().unwrap();
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

/// The raw floor, one op per trip to the blocking pool, as an async caller must do it.
async fn hop_raw_puts(dir: &Path, ids: &[String], ops: usize) {
    for n in 0..ops {
        let id = ids[n % ids.len()].clone();
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || raw_put(&dir, &id, &to_bytes(&record(&id, n)), false))
            .await
            .unwrap();
    }
}

/// Read + parse, one op per trip to the blocking pool.
async fn hop_raw_gets(dir: &Path, ids: &[String], ops: usize) {
    for n in 0..ops {
        let path = dir.join(format!("{}.json", ids[n % ids.len()]));
        let record = tokio::task::spawn_blocking(move || {
            let bytes = fs::read(path).unwrap();
            serde_json::from_slice::<Record>(&bytes).unwrap()
        })
        .await
        .unwrap();
        std::hint::black_box(record);
    }
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

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn min_max(values: &[f64]) -> (f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    (min, max)
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

fn fresh_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join(".tmp")).unwrap();
    fs::create_dir_all(dir.join(".locks")).unwrap();
    dir
}

fn peak_rss_kib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
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

    let mut put_series = [
        Series {
            name: "naive fs::write",
            ops: puts,
            rates: vec![],
        },
        Series {
            name: "raw floor: lock + staging + rename",
            ops: puts,
            rates: vec![],
        },
        Series {
            name: "raw floor, each op via spawn_blocking",
            ops: puts,
            rates: vec![],
        },
        Series {
            name: "FileStorage::put, sequential",
            ops: puts,
            rates: vec![],
        },
        Series {
            name: "FileStorage::put, 16 tasks",
            ops: puts,
            rates: vec![],
        },
        Series {
            name: "FileStorage::update, sequential (2 hops)",
            ops: puts,
            rates: vec![],
        },
    ];
    let mut get_series = [
        Series {
            name: "raw fs::read + serde_json::from_slice",
            ops: gets,
            rates: vec![],
        },
        Series {
            name: "raw read+parse, each op via spawn_blocking",
            ops: gets,
            rates: vec![],
        },
        Series {
            name: "FileStorage::get, sequential",
            ops: gets,
            rates: vec![],
        },
        Series {
            name: "FileStorage::get, 16 tasks",
            ops: gets,
            rates: vec![],
        },
    ];
    for _ in 0..rounds {
        put_series[0]
            .rates
            .push(rate(puts, || naive_puts(&naive_dir, &ids, puts)));
        put_series[1]
            .rates
            .push(rate(puts, || raw_puts(&raw_dir, &ids, puts, false)));
        put_series[2].rates.push(rate(puts, || {
            rt.block_on(hop_raw_puts(&raw_dir, &ids, puts))
        }));
        put_series[3]
            .rates
            .push(rate(puts, || rt.block_on(store_puts(&store, &ids, puts))));
        put_series[4].rates.push(rate(puts, || {
            rt.block_on(concurrent(&store16, &ids, puts, true))
        }));
        put_series[5].rates.push(rate(puts, || {
            rt.block_on(store_updates(&store, &ids, puts))
        }));
        get_series[0]
            .rates
            .push(rate(gets, || raw_gets(&raw_dir, &ids, gets)));
        get_series[1].rates.push(rate(gets, || {
            rt.block_on(hop_raw_gets(&raw_dir, &ids, gets))
        }));
        get_series[2]
            .rates
            .push(rate(gets, || rt.block_on(store_gets(&store, &ids, gets))));
        get_series[3].rates.push(rate(gets, || {
            rt.block_on(concurrent(&store16, &ids, gets, false))
        }));
    }

    // Fsync in rounds of its own: it slows the renames that follow it.
    let raw_fsync_dir = fresh_dir(root.path(), "raw-fsync");
    let fsync_dir = root.path().join("store-fsync");
    let fsync_store = FileStorage::builder(&fsync_dir)
        .with_durability(Durability::Fsync)
        .build()
        .unwrap();
    let mut fsync_series = [
        Series {
            name: "raw floor + fsync of file and directory",
            ops: fsync_puts,
            rates: vec![],
        },
        Series {
            name: "FileStorage::put, Durability::Fsync",
            ops: fsync_puts,
            rates: vec![],
        },
    ];
    for _ in 0..rounds {
        fsync_series[0].rates.push(rate(fsync_puts, || {
            raw_puts(&raw_fsync_dir, &ids, fsync_puts, true)
        }));
        fsync_series[1].rates.push(rate(fsync_puts, || {
            rt.block_on(store_puts(&fsync_store, &ids, fsync_puts))
        }));
    }

    println!(
        "file store: {IDS} ids, records of {size} bytes, {rounds} interleaved rounds, \
         default durability Rename unless noted"
    );
    print_table("put (overwrite)", &put_series);
    print_table("get", &get_series);
    print_table("put with fsync (own rounds)", &fsync_series);
    println!("\nratios (per round, median (min–max)):");
    let ratios: [(&str, &Series, &Series, Option<f64>); 10] = [
        (
            "put sequential / naive write",
            &put_series[3],
            &put_series[0],
            Some(0.5),
        ),
        (
            "put 16 tasks / naive write",
            &put_series[4],
            &put_series[0],
            Some(0.5),
        ),
        (
            "put sequential / raw floor",
            &put_series[3],
            &put_series[1],
            None,
        ),
        (
            "put sequential / raw floor via spawn_blocking",
            &put_series[3],
            &put_series[2],
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
            "get 16 tasks / raw read+parse",
            &get_series[3],
            &get_series[0],
            Some(0.8),
        ),
        (
            "get sequential / raw read+parse via spawn_blocking",
            &get_series[2],
            &get_series[1],
            None,
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
