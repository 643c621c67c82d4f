//! Put/get throughput of `RedisStorage` against the raw `redis` crate doing `SET`/`GET` of the
//! same JSON over the same kind of connection, in one run with interleaved rounds.
//!
//! `cargo bench --all-features --bench redis` (server: `SYNCSTATUS_REDIS_URL`, default
//! `redis://127.0.0.1:6379/0`). Prints one table; every figure is the median of the rounds
//! with min–max beside it, and the ratio to the raw baseline of the same round.

use std::sync::Arc;
use std::time::Instant;

use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use syncstatus::redis::RedisStorage;
use syncstatus::{PutMode, Record, SyncStorage, Timestamp, WatchOptions, WatchSelector};

const ROUNDS: usize = 5;
const IDS: usize = 100;
const SEQUENTIAL_OPS: usize = 2_000;
const TASKS: usize = 16;
const OPS_PER_TASK: usize = 500;

fn status(n: usize) -> Value {
    json!({
        "state": "running",
        "progress": {"done": n, "total": 600},
        "message": format!("page {n} of 600"),
        "attempt": 1,
        "started_at": "2026-11-22T03:40:00.123Z",
        "heartbeat_at": "2026-11-22T03:41:02.456Z"
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Put,
    Get,
}

#[derive(Clone)]
enum Target {
    Ours(Arc<RedisStorage>),
    Raw {
        conn: ConnectionManager,
        prefix: String,
        json: Arc<Vec<String>>,
    },
}

impl Target {
    async fn run(&self, op: Op, ids: &[String], first: usize, count: usize) {
        for i in first..first + count {
            let slot = i % IDS;
            let id = &ids[slot];
            match (self, op) {
                (Target::Ours(store), Op::Put) => {
                    store
                        .put(id, status(i), PutMode::Overwrite)
                        .await
                        .expect("put");
                }
                (Target::Ours(store), Op::Get) => {
                    store.get(id).await.expect("get").expect("present");
                }
                (Target::Raw { conn, prefix, json }, Op::Put) => {
                    let _: () = redis::cmd("SET")
                        .arg(format!("{prefix}{id}"))
                        .arg(&json[slot])
                        .query_async(&mut conn.clone())
                        .await
                        .expect("SET");
                }
                (Target::Raw { conn, prefix, .. }, Op::Get) => {
                    let value: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(format!("{prefix}{id}"))
                        .query_async(&mut conn.clone())
                        .await
                        .expect("GET");
                    assert!(value.is_some());
                }
            }
        }
    }

    /// Ops per second of `op`, sequential or from [`TASKS`] concurrent tasks.
    async fn measure(&self, op: Op, ids: &Arc<Vec<String>>, concurrent: bool) -> f64 {
        let started = Instant::now();
        let total = if concurrent {
            let mut tasks = Vec::new();
            for task in 0..TASKS {
                let target = self.clone();
                let ids = ids.clone();
                tasks.push(tokio::spawn(async move {
                    target
                        .run(op, &ids, task * OPS_PER_TASK, OPS_PER_TASK)
                        .await
                }));
            }
            for task in tasks {
                task.await.expect("task");
            }
            TASKS * OPS_PER_TASK
        } else {
            self.run(op, ids, 0, SEQUENTIAL_OPS).await;
            SEQUENTIAL_OPS
        };
        total as f64 / started.elapsed().as_secs_f64()
    }
}

struct Row {
    name: &'static str,
    op: Op,
    concurrent: bool,
    ours: Vec<f64>,
    raw: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn delete_prefix(conn: &mut ConnectionManager, prefix: &str) {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(conn)
                .await
                .expect("DEL");
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

async fn bench() {
    let url =
        std::env::var("SYNCSTATUS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let nanos = Timestamp::now().as_millis();
    let prefix = format!("syncstatus-bench:{}:{nanos}:", std::process::id());
    let raw_prefix = format!("{prefix}raw:");
    let store = RedisStorage::builder(&url)
        .with_prefix(&prefix)
        .build()
        .await
        .expect("a redis server (SYNCSTATUS_REDIS_URL)");
    let store = Arc::new(store);
    let client = redis::Client::open(url.as_str()).expect("redis URL");
    let mut conn = ConnectionManager::new(client).await.expect("connect");
    let ids: Arc<Vec<String>> = Arc::new((0..IDS).map(|i| format!("job-{i:04}")).collect());
    // The raw baseline writes the very bytes our store writes.
    let json: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            serde_json::to_string(&Record {
                id: id.clone(),
                version: 1,
                created_at: Timestamp::now(),
                updated_at: Timestamp::now(),
                status: status(i),
            })
            .expect("json")
        })
        .collect();
    let record_bytes = json.iter().map(String::len).sum::<usize>() / json.len();
    let ours = Target::Ours(store.clone());
    let raw = Target::Raw {
        conn: conn.clone(),
        prefix: raw_prefix.clone(),
        json: Arc::new(json),
    };
    // Seed both, so gets find records, and warm up connections and the script cache.
    ours.run(Op::Put, &ids, 0, IDS).await;
    raw.run(Op::Put, &ids, 0, IDS).await;

    let mut rows = vec![
        Row {
            name: "put, sequential",
            op: Op::Put,
            concurrent: false,
            ours: vec![],
            raw: vec![],
        },
        Row {
            name: "get, sequential",
            op: Op::Get,
            concurrent: false,
            ours: vec![],
            raw: vec![],
        },
        Row {
            name: "put, 16 tasks",
            op: Op::Put,
            concurrent: true,
            ours: vec![],
            raw: vec![],
        },
        Row {
            name: "get, 16 tasks",
            op: Op::Get,
            concurrent: true,
            ours: vec![],
            raw: vec![],
        },
    ];
    let mut watched = Row {
        name: "put, 16 tasks, 1 watch open",
        op: Op::Put,
        concurrent: true,
        ours: vec![],
        raw: vec![],
    };
    for round in 0..ROUNDS {
        for row in rows.iter_mut() {
            // Alternate which goes first, so neither always runs on a warmer server.
            if round % 2 == 0 {
                row.ours
                    .push(ours.measure(row.op, &ids, row.concurrent).await);
                row.raw
                    .push(raw.measure(row.op, &ids, row.concurrent).await);
            } else {
                row.raw
                    .push(raw.measure(row.op, &ids, row.concurrent).await);
                row.ours
                    .push(ours.measure(row.op, &ids, row.concurrent).await);
            }
        }
        let stream = store
            .watch(WatchSelector::All, WatchOptions::default())
            .await
            .expect("watch");
        watched.ours.push(ours.measure(Op::Put, &ids, true).await);
        drop(stream);
        watched.raw.push(raw.measure(Op::Put, &ids, true).await);
    }
    rows.push(watched);

    println!(
        "RedisStorage vs raw redis SET/GET of the same JSON: {IDS} ids, ~{record_bytes} B per \
         record, {ROUNDS} interleaved rounds; sequential rounds {SEQUENTIAL_OPS} ops, concurrent \
         rounds {TASKS} tasks x {OPS_PER_TASK} ops; one multiplexed connection each"
    );
    println!();
    println!(
        "| {:<28} | {:>24} | {:>24} | {:>18} |",
        "operation", "RedisStorage ops/s", "raw redis ops/s", "ratio (min–max)"
    );
    println!("|{:-<30}|{:->26}|{:->26}|{:->20}|", "", "", "", "");
    for row in &rows {
        let (ours_lo, ours_hi) = min_max(&row.ours);
        let (raw_lo, raw_hi) = min_max(&row.raw);
        let ratios: Vec<f64> = row.ours.iter().zip(&row.raw).map(|(o, r)| o / r).collect();
        let (ratio_lo, ratio_hi) = min_max(&ratios);
        println!(
            "| {:<28} | {:>7.0} ({:>6.0}–{:>6.0}) | {:>7.0} ({:>6.0}–{:>6.0}) | {:>4.2}x ({:.2}–{:.2}) |",
            row.name,
            median(&row.ours),
            ours_lo,
            ours_hi,
            median(&row.raw),
            raw_lo,
            raw_hi,
            median(&ratios),
            ratio_lo,
            ratio_hi,
        );
    }
    println!();
    if let Some(kib) = peak_rss_kib() {
        println!("peak RSS (VmHWM): {kib} KiB");
    }
    delete_prefix(&mut conn, &prefix).await;
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench());
}
