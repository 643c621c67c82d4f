//! `PostgresStorage` against raw statements on the same driver and pool, in one run.
//!
//! ```text
//! cargo bench --all-features --bench postgres
//! ```
//!
//! Every round runs each variant once, back to back; the table shows the median of the
//! rounds with min–max, and the median of the per-round ratios ours/raw. Needs a server at
//! `SYNCSTATUS_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`); works in a
//! schema of its own, dropped at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use serde_json::{Value, json};
use syncstatus::postgres::PostgresStorage;
use syncstatus::{PutMode, SyncStorage, TtlPolicy, WatchOptions, WatchSelector};
use tokio_postgres::NoTls;
use tokio_postgres::types::Json;

const ROUNDS: usize = 7;
/// Operations per variant per round.
const OPS: usize = 2000;
/// Distinct ids written and read, cycled through.
const IDS: usize = 100;
const CONCURRENCY: usize = 16;
/// Operations a variant runs before the next one takes its turn.
const BLOCK: usize = 200;
const POOL_SIZE: usize = 16;

fn status(n: usize) -> Value {
    json!({
        "state": "running",
        "progress": {"done": n, "total": 600},
        "message": format!("page {n} of 600"),
        "started_at": "2026-11-22T03:40:00.123Z",
        "heartbeat_at": "2026-11-22T03:41:10.456Z",
        "attempt": 1
    })
}

#[derive(Clone)]
struct Raw {
    pool: Pool,
    upsert: String,
    upsert_shaped: String,
    upsert_notify: String,
    select: String,
    select_shaped: String,
}

impl Raw {
    async fn put(&self, id: &str, status: &Value) {
        let client = self.pool.get().await.unwrap();
        let statement = client.prepare_cached(&self.upsert).await.unwrap();
        client
            .execute(&statement, &[&id, &Json(status)])
            .await
            .unwrap();
    }

    async fn put_shaped(&self, id: &str, status: &Value) {
        let client = self.pool.get().await.unwrap();
        let statement = client.prepare_cached(&self.upsert_shaped).await.unwrap();
        let now = i64::try_from(syncstatus::Timestamp::now().as_millis()).unwrap();
        let expires_at = now + 3_600_000;
        client
            .execute(&statement, &[&id, &now, &expires_at, &Json(status)])
            .await
            .unwrap();
    }

    async fn put_notify(&self, id: &str, status: &Value) {
        let client = self.pool.get().await.unwrap();
        let statement = client.prepare_cached(&self.upsert_notify).await.unwrap();
        client
            .query(&statement, &[&id, &Json(status)])
            .await
            .unwrap();
    }

    async fn get(&self, id: &str, shaped: bool) -> Value {
        let client = self.pool.get().await.unwrap();
        let sql = if shaped {
            &self.select_shaped
        } else {
            &self.select
        };
        let statement = client.prepare_cached(sql).await.unwrap();
        let row = client.query_one(&statement, &[&id]).await.unwrap();
        row.get::<_, Json<Value>>(0).0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    OursPut,
    RawPut,
    RawPutShaped,
    RawPutNotify,
    OursGet,
    RawGet,
    RawGetShaped,
}

impl Variant {
    const ALL: [Variant; 7] = [
        Variant::OursPut,
        Variant::RawPut,
        Variant::RawPutShaped,
        Variant::RawPutNotify,
        Variant::OursGet,
        Variant::RawGet,
        Variant::RawGetShaped,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::OursPut => "put (PostgresStorage, Overwrite)",
            Variant::RawPut => "put (raw upsert)",
            Variant::RawPutShaped => "put (raw upsert, table shaped like ours)",
            Variant::RawPutNotify => "put (raw upsert + pg_notify, no listener)",
            Variant::OursGet => "get (PostgresStorage)",
            Variant::RawGet => "get (raw select)",
            Variant::RawGetShaped => "get (raw select, table shaped like ours)",
        }
    }
}

async fn one_op(variant: Variant, store: &PostgresStorage, raw: &Raw, i: usize, value: &Value) {
    let id = format!("bench-{}", i % IDS);
    match variant {
        Variant::OursPut => {
            store
                .put(&id, value.clone(), PutMode::Overwrite)
                .await
                .unwrap();
        }
        Variant::RawPut => raw.put(&id, value).await,
        Variant::RawPutShaped => raw.put_shaped(&id, value).await,
        Variant::RawPutNotify => raw.put_notify(&id, value).await,
        Variant::OursGet => {
            let record = store.get(&id).await.unwrap();
            assert!(record.is_some());
        }
        Variant::RawGet => {
            raw.get(&id, false).await;
        }
        Variant::RawGetShaped => {
            raw.get(&id, true).await;
        }
    }
}

/// Time `tasks` tasks take to share operations `first..first + count` of `variant`.
async fn run_block(
    variant: Variant,
    store: &PostgresStorage,
    raw: &Raw,
    tasks: usize,
    first: usize,
    count: usize,
) -> Duration {
    let value = Arc::new(status(42));
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let store = store.clone();
        let raw = raw.clone();
        let value = value.clone();
        handles.push(tokio::spawn(async move {
            let mut i = first + task;
            while i < first + count {
                one_op(variant, &store, &raw, i, &value).await;
                i += tasks;
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    started.elapsed()
}

/// Ops per second of every variant in one round. The variants take turns in blocks of
/// `BLOCK` operations, so load from other users of the machine falls on all of them alike.
async fn round(store: &PostgresStorage, raw: &Raw, tasks: usize) -> Vec<f64> {
    let mut totals = vec![Duration::ZERO; Variant::ALL.len()];
    for block in 0..OPS / BLOCK {
        for (slot, variant) in Variant::ALL.into_iter().enumerate() {
            totals[slot] += run_block(variant, store, raw, tasks, block * BLOCK, BLOCK).await;
        }
    }
    totals
        .into_iter()
        .map(|total| OPS as f64 / total.as_secs_f64())
        .collect()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[sorted.len() / 2]
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let url = std::env::var("SYNCSTATUS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let (admin, connection) = match tokio_postgres::connect(&url, NoTls).await {
        Ok(connected) => connected,
        Err(error) => {
            eprintln!("PostgreSQL unreachable at {url}: {error}; nothing measured");
            return;
        }
    };
    tokio::spawn(connection);
    let schema = format!("ss_bench_{}", std::process::id());

    let store = PostgresStorage::builder(url.clone())
        .with_schema(schema.clone())
        .unwrap()
        .with_table("jobs")
        .with_ttl(TtlPolicy::uniform(Duration::from_secs(3600)))
        .with_pool_size(POOL_SIZE)
        .build()
        .await
        .unwrap();
    // Same columns and indexes as the store's table, written by plain statements.
    let shaped = PostgresStorage::builder(url.clone())
        .with_schema(schema.clone())
        .unwrap()
        .with_table("shaped")
        .build()
        .await
        .unwrap();
    drop(shaped);
    admin
        .batch_execute(&format!(
            "CREATE TABLE \"{schema}\".raw (id text PRIMARY KEY, version bigint NOT NULL,
             status jsonb NOT NULL)"
        ))
        .await
        .unwrap();
    let manager = Manager::from_config(
        url.parse().unwrap(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let raw = Raw {
        pool: Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .build()
            .unwrap(),
        upsert: format!(
            "INSERT INTO \"{schema}\".raw AS r (id, version, status) VALUES ($1, 1, $2)
             ON CONFLICT (id) DO UPDATE SET version = r.version + 1, status = $2"
        ),
        upsert_shaped: format!(
            "INSERT INTO \"{schema}\".shaped AS r
               (id, version, created_at, updated_at, expires_at, status)
             VALUES ($1, 1, $2, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET version = r.version + 1, updated_at = $2,
               expires_at = $3, status = $4"
        ),
        upsert_notify: format!(
            "WITH w AS (
                INSERT INTO \"{schema}\".raw AS r (id, version, status) VALUES ($1, 1, $2)
                ON CONFLICT (id) DO UPDATE SET version = r.version + 1, status = $2
                RETURNING version
             )
             SELECT pg_notify('{schema}_raw', $1 || ':' || version) FROM w"
        ),
        select: format!("SELECT status FROM \"{schema}\".raw WHERE id = $1"),
        select_shaped: format!("SELECT status FROM \"{schema}\".shaped WHERE id = $1"),
    };

    // Warm-up: fills the tables with every id and the pools with connections.
    for tasks in [1, CONCURRENCY] {
        round(&store, &raw, tasks).await;
    }

    println!(
        "PostgreSQL store vs raw statements, same driver (tokio-postgres) and pool size {POOL_SIZE}"
    );
    println!(
        "{OPS} ops per variant per round over {IDS} ids, {}-byte JSON status, {ROUNDS} rounds, \
         variants taking turns every {BLOCK} ops",
        serde_json::to_string(&status(42)).map_or(0, |json| json.len())
    );
    println!();
    println!("| tasks | variant | ops/s median | min–max | ratio vs raw (median of rounds) |");
    println!("|---|---|---|---|---|");
    // Last, the same with a watch running on the store's table, which makes its writes
    // notify (and the watcher re-read every row written).
    let mut watch: Option<tokio::task::JoinHandle<()>> = None;
    for (tasks, watched) in [
        (1, false),
        (CONCURRENCY, false),
        (1, true),
        (CONCURRENCY, true),
    ] {
        if watched && watch.is_none() {
            let mut stream = store
                .watch(WatchSelector::All, WatchOptions::default())
                .await
                .unwrap();
            watch = Some(tokio::spawn(async move {
                while stream.next().await.is_some() {}
            }));
        }
        let label = if watched {
            format!("{tasks}, watched")
        } else {
            tasks.to_string()
        };
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); Variant::ALL.len()];
        for _ in 0..ROUNDS {
            for (slot, ops) in round(&store, &raw, tasks).await.into_iter().enumerate() {
                results[slot].push(ops);
            }
        }
        for (slot, variant) in Variant::ALL.into_iter().enumerate() {
            let baseline = match variant {
                Variant::OursPut | Variant::RawPutShaped | Variant::RawPutNotify => Some(1),
                Variant::OursGet | Variant::RawGetShaped => Some(5),
                _ => None,
            };
            let ratio = baseline.map_or_else(
                || "baseline".to_string(),
                |base| {
                    let ratios: Vec<f64> = results[slot]
                        .iter()
                        .zip(&results[base])
                        .map(|(ours, raw)| ours / raw)
                        .collect();
                    let (lo, hi) = min_max(&ratios);
                    format!("{:.2}x ({lo:.2}–{hi:.2})", median(&ratios))
                },
            );
            let (lo, hi) = min_max(&results[slot]);
            println!(
                "| {label} | {} | {:.0} | {lo:.0}–{hi:.0} | {ratio} |",
                variant.name(),
                median(&results[slot])
            );
        }
    }

    if let Some(watch) = watch {
        watch.abort();
    }
    drop(store);
    raw.pool.close();
    admin
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}
