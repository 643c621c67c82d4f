//! Put/get throughput of `RedisStorage` against the raw `redis` crate doing `SET`/`GET` of the
//! same JSON over the same kind of connection, in one run with interleaved rounds.
//!
//! A third variant, for puts, is the floor of a compare-and-set write done in Lua that keeps
//! what ours keeps: the least script that reads the stored version and creation time, writes
//! the envelope with the next version and `PX`, adds the id to the index and publishes the
//! change (no mode checks, no expiry judged by the store's clock, no corruption fallback).
//! Every baseline does the client's work of ours per op: the raw `SET` and the script
//! serialize the status (the `SET` the whole record), the raw `GET` parses the record.
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

/// Rounds per run (`ROUNDS` overrides).
fn rounds() -> usize {
    std::env::var("ROUNDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(7)
}
const IDS: usize = 100;
const SEQUENTIAL_OPS: usize = 2_000;
const TASKS: usize = 16;
const OPS_PER_TASK: usize = 500;
/// The store's default TTL, which every variant's write sets.
const TTL_MS: u64 = 300_000;

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

/// The least a compare-and-set write in Lua does that keeps a versioned envelope, an index of
/// the ids and a change feed. KEYS: record, index. ARGV: id, status JSON, now (RFC 3339), PX,
/// index score, channel, `expires_at` as JSON.
const FLOOR_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
local version = 0
local created = ARGV[3]
if current then
  local v, c = string.match(current, '^{"id":"[^"]*","version":(%d+),"created_at":"([^"]*)"')
  version = tonumber(v)
  created = c
end
version = version + 1
redis.call('SET', KEYS[1], '{"id":"' .. ARGV[1] .. '","version":' .. version .. ',"created_at":"'
  .. created .. '","updated_at":"' .. ARGV[3] .. '","expires_at":' .. ARGV[7] .. ',"status":' .. ARGV[2] .. '}',
  'PX', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('PUBLISH', ARGV[6], ARGV[1] .. ' ' .. version)
return version
"#;

/// [`FLOOR_SCRIPT`] writing the index only for a new id, as ours does on Redis 7: the least
/// a write that keeps an id index can do.
const FLOOR_NEW_ID_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
local version = 0
local created = ARGV[3]
if current then
  local v, c = string.match(current, '^{"id":"[^"]*","version":(%d+),"created_at":"([^"]*)"')
  version = tonumber(v)
  created = c
end
version = version + 1
redis.call('SET', KEYS[1], '{"id":"' .. ARGV[1] .. '","version":' .. version .. ',"created_at":"'
  .. created .. '","updated_at":"' .. ARGV[3] .. '","expires_at":' .. ARGV[7] .. ',"status":' .. ARGV[2] .. '}',
  'PX', ARGV[4])
if not current then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
end
redis.call('PUBLISH', ARGV[6], ARGV[1] .. ' ' .. version)
return version
"#;

/// The record the raw `SET` writes for op `i`, serialized per op as ours serializes.
fn record_json(id: &str, i: usize) -> String {
    let now = Timestamp::now();
    serde_json::to_string(&Record {
        id: id.to_string(),
        version: 1,
        created_at: now,
        updated_at: now,
        expires_at: Some(Timestamp::from_millis(now.as_millis() + TTL_MS)),
        status: status(i),
    })
    .expect("json")
}

#[derive(Clone)]
enum Target {
    Ours(Arc<RedisStorage>),
    Raw {
        conn: ConnectionManager,
        prefix: String,
    },
    Floor {
        conn: ConnectionManager,
        prefix: String,
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
                (Target::Raw { conn, prefix }, Op::Put) => {
                    let _: () = redis::cmd("SET")
                        .arg(format!("{prefix}{id}"))
                        .arg(record_json(id, i))
                        .arg("PX")
                        .arg(TTL_MS)
                        .query_async(&mut conn.clone())
                        .await
                        .expect("SET");
                }
                (
                    Target::Floor {
                        conn,
                        prefix,
                        script,
                    },
                    _,
                ) => {
                    let status = serde_json::to_string(&status(i)).expect("json");
                    let now = Timestamp::now();
                    let _: u64 = script
                        .key(format!("{prefix}{id}"))
                        .key(format!("{prefix}.ids"))
                        .arg(id)
                        .arg(status)
                        .arg(now.to_string())
                        .arg(TTL_MS)
                        .arg(now.as_millis() + TTL_MS)
                        .arg(format!("{prefix}.events"))
                        .arg(format!(
                            "\"{}\"",
                            Timestamp::from_millis(now.as_millis() + TTL_MS)
                        ))
                        .invoke_async(&mut conn.clone())
                        .await
                        .expect("EVALSHA");
                }
                (Target::Raw { conn, prefix, .. }, Op::Get) => {
                    let value: Vec<u8> = redis::cmd("GET")
                        .arg(format!("{prefix}{id}"))
                        .query_async(&mut conn.clone())
                        .await
                        .expect("GET");
                    let record: Record = serde_json::from_slice(&value).expect("a record");
                    assert_eq!(&record.id, id);
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
    floor_new_id: Vec<f64>,
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
            floor_new_id: vec![],
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
    let record_bytes = record_json(&ids[0], 0).len();
    let ours = Target::Ours(store.clone());
    let raw = Target::Raw {
        conn: conn.clone(),
        prefix: raw_prefix.clone(),
    };
    let floor = Target::Floor {
        conn: conn.clone(),
        prefix: format!("{prefix}floor:"),
        script: Arc::new(redis::Script::new(FLOOR_SCRIPT)),
    };
    // Seed all, so gets find records, and warm up connections and the script cache.
    ours.run(Op::Put, &ids, 0, IDS).await;
    raw.run(Op::Put, &ids, 0, IDS).await;
    floor.run(Op::Put, &ids, 0, IDS).await;
    let floor_new_id = Target::Floor {
        conn: conn.clone(),
        prefix: format!("{prefix}floor-new-id:"),
        script: Arc::new(redis::Script::new(FLOOR_NEW_ID_SCRIPT)),
    };
    floor_new_id.run(Op::Put, &ids, 0, IDS).await;

    let mut rows = vec![
        Row::new("put, sequential", Op::Put, false),
        Row::new("get, sequential", Op::Get, false),
        Row::new("put, 16 tasks", Op::Put, true),
        Row::new("get, 16 tasks", Op::Get, true),
    ];
    let mut watched = Row::new("put, 16 tasks, 1 watch open", Op::Put, true);
    let rounds = rounds();
    for round in 0..rounds {
        for row in rows.iter_mut() {
            let mut variants: Vec<(&Target, &mut Vec<f64>)> =
                vec![(&ours, &mut row.ours), (&raw, &mut row.raw)];
            if row.op == Op::Put {
                variants.push((&floor, &mut row.floor));
                variants.push((&floor_new_id, &mut row.floor_new_id));
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
         record, {rounds} interleaved rounds; sequential rounds {SEQUENTIAL_OPS} ops, concurrent \
         rounds {TASKS} tasks x {OPS_PER_TASK} ops; one multiplexed connection each"
    );
    println!();
    println!(
        "| {:<28} | {:>24} | {:>24} | {:>19} | {:>24} | {:>19} | {:>24} | {:>19} |",
        "operation",
        "RedisStorage ops/s",
        "raw SET/GET ops/s",
        "ours/raw",
        "minimal Lua CAS ops/s",
        "ours/minimal CAS",
        "CAS, index new ids ops/s",
        "ours/that"
    );
    println!(
        "|{:-<30}|{:->26}|{:->26}|{:->21}|{:->26}|{:->21}|{:->26}|{:->21}|",
        "", "", "", "", "", "", "", ""
    );
    for row in &rows {
        println!(
            "| {:<28} | {:>24} | {:>24} | {:>19} | {:>24} | {:>19} | {:>24} | {:>19} |",
            row.name,
            cell(&row.ours),
            cell(&row.raw),
            ratio_cell(&row.ours, &row.raw),
            cell(&row.floor),
            ratio_cell(&row.ours, &row.floor),
            cell(&row.floor_new_id),
            ratio_cell(&row.ours, &row.floor_new_id),
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
