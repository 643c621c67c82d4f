//! Put/get throughput of `RedisStorage` against the raw `redis` crate doing `SET`/`GET` of the
//! same JSON over the same kind of connection, in one run with interleaved rounds.
//!
//! A third variant, for puts, is the floor of any atomic versioned write done in Lua: a
//! minimal script that reads the version and writes the same JSON with `PX` (no index, no
//! publish, no mode checks), called through the same connection.
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

const ROUNDS: usize = 7;
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

/// The least an atomic versioned write in Lua does.
const FLOOR_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
local version = 0
if current then
  version = tonumber(string.match(current, '"version":(%d+)')) or 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return version + 1
"#;

#[derive(Clone)]
enum Target {
    Ours(Arc<RedisStorage>),
    Raw {
        conn: ConnectionManager,
        prefix: String,
        json: Arc<Vec<String>>,
    },
    Floor {
        conn: ConnectionManager,
        prefix: String,
        json: Arc<Vec<String>>,
        script: Arc<redis::Script>,
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
                (
                    Target::Floor {
                        conn,
                        prefix,
                        json,
                        script,
                    },
                    _,
                ) => {
                    let _: u64 = script
                        .key(format!("{prefix}{id}"))
                        .arg(&json[slot])
                        .arg(300_000)
                        .invoke_async(&mut conn.clone())
                        .await
                        .expect("EVALSHA");
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
    floor: Vec<f64>,
}

impl Row {
    fn new(name: &'static str, op: Op, concurrent: bool) -> Self {
        Row {
            name,
            op,
            concurrent,
            ours: vec![],
            raw: vec![],
            floor: vec![],
        }
    }
}

/// `median (min–max)` of a series, or `-` for none.
fn cell(values: &[f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    let (lo, hi) = min_max(values);
    format!("{:.0} ({:.0}–{:.0})", median(values), lo, hi)
}

/// `median (min–max)` of the per-round ratios `ours / base`.
fn ratio_cell(ours: &[f64], base: &[f64]) -> String {
    if base.is_empty() {
        return "-".into();
    }
    let ratios: Vec<f64> = ours.iter().zip(base).map(|(o, b)| o / b).collect();
    let (lo, hi) = min_max(&ratios);
    format!("{:.2}x ({:.2}–{:.2})", median(&ratios), lo, hi)
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
                expires_at: None,
                status: status(i),
            })
            .expect("json")
        })
        .collect();
    let record_bytes = json.iter().map(String::len).sum::<usize>() / json.len();
    let json = Arc::new(json);
    let ours = Target::Ours(store.clone());
    let raw = Target::Raw {
        conn: conn.clone(),
        prefix: raw_prefix.clone(),
        json: json.clone(),
    };
    // Seed both, so gets find records, and warm up connections and the script cache.
    ours.run(Op::Put, &ids, 0, IDS).await;
    raw.run(Op::Put, &ids, 0, IDS).await;

    let floor = Target::Floor {
        conn: conn.clone(),
        prefix: format!("{prefix}floor:"),
        json: json.clone(),
        script: Arc::new(redis::Script::new(FLOOR_SCRIPT)),
    };
    floor.run(Op::Put, &ids, 0, IDS).await;

    let mut rows = vec![
        Row::new("put, sequential", Op::Put, false),
        Row::new("get, sequential", Op::Get, false),
        Row::new("put, 16 tasks", Op::Put, true),
        Row::new("get, 16 tasks", Op::Get, true),
    ];
    let mut watched = Row::new("put, 16 tasks, 1 watch open", Op::Put, true);
    for round in 0..ROUNDS {
        for row in rows.iter_mut() {
            let mut variants: Vec<(&Target, &mut Vec<f64>)> =
                vec![(&ours, &mut row.ours), (&raw, &mut row.raw)];
            if row.op == Op::Put {
                variants.push((&floor, &mut row.floor));
            }
            // Rotate which goes first, so none always runs on a warmer server.
            let len = variants.len();
            variants.rotate_left(round % len);
            for (target, results) in variants {
                results.push(target.measure(row.op, &ids, row.concurrent).await);
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
        "| {:<28} | {:>24} | {:>24} | {:>19} | {:>24} | {:>19} |",
        "operation",
        "RedisStorage ops/s",
        "raw SET/GET ops/s",
        "ours/raw",
        "minimal Lua CAS ops/s",
        "ours/minimal CAS"
    );
    println!(
        "|{:-<30}|{:->26}|{:->26}|{:->21}|{:->26}|{:->21}|",
        "", "", "", "", "", ""
    );
    for row in &rows {
        println!(
            "| {:<28} | {:>24} | {:>24} | {:>19} | {:>24} | {:>19} |",
            row.name,
            cell(&row.ours),
            cell(&row.raw),
            ratio_cell(&row.ours, &row.raw),
            cell(&row.floor),
            ratio_cell(&row.ours, &row.floor),
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
