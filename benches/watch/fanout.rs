//! Many subscribers of one store: the memory of 1,000 streams that each start with a snapshot,
//! and what 1,000 live subscribers cost the delivery of a write and the writer itself. Every
//! case runs in a fresh process (peak RSS of one case cannot hide another's), rounds
//! interleaved with the order of the cases rotated.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use serde_json::json;
use syncstatus::{
    FileStorage, MemoryStorage, PutMode, Record, SyncStorage, Timestamp, TtlPolicy, WatchEvent,
    WatchOptions, WatchSelector,
};

use super::{CHILD, DEADLINE, median, percentile, runtime, status_kib};

const SUBSCRIBER_CASES: [usize; 3] = [0, 1, 1_000];
const PACED: usize = 500;
const PACED_EVERY: Duration = Duration::from_millis(2);
const FAST_WRITES: usize = 2_000;
const FAST_IDS: usize = 100;
const STREAM_CASES: [usize; 2] = [1, 1_000];
const SNAPSHOT_RECORDS: usize = 1_000;

fn rounds() -> usize {
    std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn open(dir: &std::path::Path) -> FileStorage {
    FileStorage::builder(dir)
        .with_ttl(TtlPolicy::never())
        .with_lazy_sweep(None)
        .build()
        .expect("open the store")
}

/// A status of the size a job's status has (about 300 bytes of JSON).
fn status(n: usize) -> serde_json::Value {
    json!({
        "state": "running",
        "progress": {"done": n, "total": 1000},
        "message": format!("page {n} of the nightly import from the billing system"),
        "started_at": "2026-12-02T00:00:00.000Z",
        "heartbeat_at": "2026-12-02T00:10:00.000Z",
        "attempt": 1,
        "result": {"rows": n, "skipped": 0, "source": "s3://bucket/exports/2026-12-01/part-0001.csv"}
    })
}

fn child<T>(what: &str, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    let output = std::process::Command::new(std::env::current_exe().ok()?)
        .env(CHILD, what)
        .output()
        .ok()?;
    parse(&String::from_utf8_lossy(&output.stdout))
}

/// In a process of its own: `n` streams on a store of 1,000 records, each asked for a
/// snapshot; the first item of every stream (the snapshot) is held, as 1,000 SSE responses
/// hold theirs while they write it out. Prints VmHWM before the streams and after.
pub(crate) fn snapshots_child(n: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime();
    let store = open(dir.path());
    rt.block_on(async {
        for i in 0..SNAPSHOT_RECORDS {
            store
                .put(&format!("s{i:04}"), status(i), PutMode::Overwrite)
                .await
                .expect("write");
        }
    });
    // The watch itself (the hub's one copy of every record) is in the baseline.
    let first = rt
        .block_on(store.watch(WatchSelector::All, WatchOptions::default()))
        .expect("watch");
    let before = status_kib("VmHWM:");
    let held = rt.block_on(async {
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            let options = WatchOptions {
                snapshot: true,
                ..WatchOptions::default()
            };
            let mut stream = store
                .watch(WatchSelector::All, options)
                .await
                .expect("watch");
            let snapshot = stream.next().await;
            held.push((stream, snapshot));
        }
        held
    });
    let complete = held.iter().all(|(_, snapshot)| {
        matches!(snapshot, Some(Ok(WatchEvent::Resync(records))) if records.len() == SNAPSHOT_RECORDS)
    });
    let after = status_kib("VmHWM:");
    println!("{before} {after} {complete}");
    drop((held, first));
}

pub(crate) fn snapshots() {
    let rounds = rounds();
    println!();
    println!(
        "snapshots: N streams (watch with snapshot) on a store of {SNAPSHOT_RECORDS} records of \
         about {} bytes, the first item of each held; peak RSS (VmHWM) growth over a process \
         holding one watch, each case in a fresh process, {rounds} rounds, order rotated",
        serde_json::to_vec(&status(500)).map_or(0, |v| v.len())
    );
    println!(
        "{:<6} {:>8} {:>14} {:>10}",
        "round", "streams", "extra peak", "complete"
    );
    let mut extra: Vec<Vec<f64>> = vec![Vec::new(); STREAM_CASES.len()];
    for round in 0..rounds {
        for k in 0..STREAM_CASES.len() {
            let case = (k + round) % STREAM_CASES.len();
            let n = STREAM_CASES[case];
            let measured = child(&format!("snapshots:{n}"), |out| {
                let mut f = out.split_whitespace();
                let before: u64 = f.next()?.parse().ok()?;
                let after: u64 = f.next()?.parse().ok()?;
                let complete: bool = f.next()?.parse().ok()?;
                Some((after.saturating_sub(before), complete))
            });
            match measured {
                Some((kib, complete)) => {
                    println!(
                        "{:<6} {:>8} {:>10.1} MiB {:>10}",
                        round + 1,
                        n,
                        kib as f64 / 1024.0,
                        complete
                    );
                    extra[case].push(kib as f64 / 1024.0);
                }
                None => println!("{:<6} {:>8} the measuring process failed", round + 1, n),
            }
        }
    }
    for (case, values) in extra.into_iter().enumerate() {
        if values.is_empty() {
            continue;
        }
        let (med, min, max) = median(values);
        println!(
            "{:>5} streams: extra peak median {med:.1} MiB (min {min:.1}, max {max:.1})",
            STREAM_CASES[case]
        );
    }
}

/// What a fan-out case writes to: `file` (the disk sets the write's pace), `memory` (the
/// write costs microseconds, so what is left is the fan-out) and two floors without any store:
/// `broadcast`, a bare `tokio::sync::broadcast` channel of shared records, each subscriber a
/// task receiving from it; `channels`, a `tokio::sync::mpsc` channel of its own per subscriber
/// task, which the writer sends to one by one (no waiter list shared by the subscribers). The
/// floors' 1,000-subscriber p99 is what waking and polling 1,000 tasks on 2 workers costs by
/// itself, whatever a store does.
pub(crate) const STORES: [&str; 4] = ["file", "memory", "broadcast", "channels"];

/// `fanout:STORE:N` in a child process.
pub(crate) fn fanout_child(what: &str) {
    let (store, n) = what.split_once(':').expect("fanout:STORE:N");
    let n = n.parse().expect("subscriber count");
    let dir = tempfile::tempdir().expect("temp dir");
    match store {
        "memory" => fanout_child_on(
            MemoryStorage::with_options(TtlPolicy::never(), Arc::new(syncstatus::SystemClock)),
            n,
        ),
        "broadcast" => broadcast_child(n),
        "channels" => channels_child(n),
        _ => fanout_child_on(open(dir.path()), n),
    }
}

/// `n` subscribers of one store, each a task with its own `watch(All)` stream, written
/// through that same store.
fn fanout_child_on<S: SyncStorage + Clone + 'static>(store: S, n: usize) {
    let rt = runtime();
    let measured = rt.block_on(async {
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            streams.push(
                store
                    .watch(WatchSelector::All, WatchOptions::default())
                    .await
                    .expect("watch"),
            );
        }
        measure(streams, move |id: String, status: serde_json::Value| {
            let store = store.clone();
            async move {
                store
                    .put(&id, status, PutMode::Overwrite)
                    .await
                    .expect("write");
            }
        })
        .await
    });
    println!("{measured}");
}

/// The floor: `n` tasks each receiving from a bare broadcast channel (of the hub's buffer
/// size) what a writer sends, a shared record made of the same id and status as a store's
/// write; no store, no hub, no selector.
fn broadcast_child(n: usize) {
    let rt = runtime();
    let measured = rt.block_on(async {
        let (tx, _) = tokio::sync::broadcast::channel::<Arc<Record>>(4096);
        let streams: Vec<_> = (0..n)
            .map(|_| {
                futures_util::stream::unfold(tx.subscribe(), |mut rx| async move {
                    loop {
                        match rx.recv().await {
                            Ok(record) => {
                                return Some((Ok(WatchEvent::Upsert(record)), rx));
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                })
                .boxed()
            })
            .collect();
        measure(streams, move |id: String, status: serde_json::Value| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(shared_record(id, status));
            }
        })
        .await
    });
    println!("{measured}");
}

/// The other floor: `n` tasks each receiving from a channel of its own, the writer sending
/// the shared record to every channel in turn.
fn channels_child(n: usize) {
    let rt = runtime();
    let measured = rt.block_on(async {
        let (senders, streams): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Arc<Record>>();
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    let record = rx.recv().await?;
                    Some((Ok(WatchEvent::Upsert(record)), rx))
                })
                .boxed();
                (tx, stream)
            })
            .unzip();
        let senders = Arc::new(senders);
        measure(streams, move |id: String, status: serde_json::Value| {
            let senders = senders.clone();
            async move {
                let record = shared_record(id, status);
                for tx in senders.iter() {
                    let _ = tx.send(record.clone());
                }
            }
        })
        .await
    });
    println!("{measured}");
}

/// A record as a store's write of `id` would make it, shared by every subscriber.
fn shared_record(id: String, status: serde_json::Value) -> Arc<Record> {
    let now = Timestamp::now();
    Arc::new(Record {
        id,
        version: 1,
        created_at: now,
        updated_at: now,
        expires_at: None,
        status,
    })
}

/// With one task per stream receiving: first 500 paced writes (one every 2 ms, each a new
/// id), timed from the START of each write to each subscriber's receipt; then 2,000 writes over
/// 100 ids as fast as one writer task goes. Gives `p50_us p99_us max_us missing writes_per_s`.
async fn measure<St, W, Fut>(streams: Vec<St>, write: W) -> String
where
    St: Stream<Item = syncstatus::Result<WatchEvent>> + Send + Unpin + 'static,
    W: Fn(String, serde_json::Value) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let n = streams.len();
    let mut subscribers = Vec::with_capacity(n);
    for mut stream in streams {
        subscribers.push(tokio::spawn(async move {
            let mut seen = vec![None; PACED];
            while let Some(item) = stream.next().await {
                let at = Instant::now();
                if let Ok(WatchEvent::Upsert(record)) = item {
                    if record.id == "end" {
                        break;
                    }
                    if let Some(k) = record
                        .id
                        .strip_prefix('p')
                        .and_then(|k| k.parse::<usize>().ok())
                        && k < PACED
                        && seen[k].is_none()
                    {
                        seen[k] = Some(at);
                    }
                }
            }
            seen
        }));
    }
    let writer = write.clone();
    let paced = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut starts = Vec::with_capacity(PACED);
        for k in 0..PACED {
            tokio::time::sleep_until(start + PACED_EVERY * k as u32).await;
            starts.push(Instant::now());
            writer(format!("p{k:04}"), status(k)).await;
        }
        starts
    })
    .await
    .expect("paced writer");
    let writer = write.clone();
    let rate = tokio::spawn(async move {
        let began = Instant::now();
        for k in 0..FAST_WRITES {
            writer(format!("t{:03}", k % FAST_IDS), status(k)).await;
        }
        FAST_WRITES as f64 / began.elapsed().as_secs_f64()
    })
    .await
    .expect("fast writer");
    write("end".into(), json!({"state": "completed"})).await;
    let mut micros = Vec::with_capacity(n * PACED);
    let mut missing = 0;
    for subscriber in subscribers {
        let seen = tokio::time::timeout(DEADLINE, subscriber)
            .await
            .expect("subscriber ended")
            .expect("subscriber task");
        for (k, at) in seen.into_iter().enumerate() {
            match at {
                Some(at) => micros.push((at - paced[k]).as_secs_f64() * 1e6),
                None => missing += 1,
            }
        }
    }
    micros.sort_by(f64::total_cmp);
    format!(
        "{} {} {} {missing} {rate}",
        percentile(&micros, 50.0),
        percentile(&micros, 99.0),
        micros.last().copied().unwrap_or(f64::NAN)
    )
}

struct Fanout {
    p50: f64,
    p99: f64,
    max: f64,
    missing: usize,
    rate: f64,
}

pub(crate) fn fanout() {
    for store in STORES {
        fanout_on(store);
    }
}

fn fanout_on(store: &str) {
    let rounds = rounds();
    println!();
    println!(
        "fan-out: N subscribers on one {store} store, writes through that same store; delivery \
         from the START of put to each subscriber ({PACED} paced writes, one per {PACED_EVERY:?}), \
         then {FAST_WRITES} writes over {FAST_IDS} ids as fast as one writer task goes; each case \
         in a fresh process, {rounds} rounds, order rotated; load average {}",
        load_average()
    );
    println!(
        "{:<6} {:>6} {:>10} {:>10} {:>10} {:>9} {:>10}",
        "round", "subs", "p50 µs", "p99 µs", "max µs", "missing", "writes/s"
    );
    let mut by_round: Vec<Vec<Option<Fanout>>> = Vec::new();
    for round in 0..rounds {
        let mut results: Vec<Option<Fanout>> = (0..SUBSCRIBER_CASES.len()).map(|_| None).collect();
        for k in 0..SUBSCRIBER_CASES.len() {
            let case = (k + round) % SUBSCRIBER_CASES.len();
            let n = SUBSCRIBER_CASES[case];
            let measured = child(&format!("fanout:{store}:{n}"), |out| {
                let mut f = out.split_whitespace();
                Some(Fanout {
                    p50: f.next()?.parse().ok()?,
                    p99: f.next()?.parse().ok()?,
                    max: f.next()?.parse().ok()?,
                    missing: f.next()?.parse().ok()?,
                    rate: f.next()?.parse().ok()?,
                })
            });
            match &measured {
                Some(r) => println!(
                    "{:<6} {:>6} {:>10.0} {:>10.0} {:>10.0} {:>9} {:>10.0}",
                    round + 1,
                    n,
                    r.p50,
                    r.p99,
                    r.max,
                    r.missing,
                    r.rate
                ),
                None => println!("{:<6} {:>6} the measuring process failed", round + 1, n),
            }
            results[case] = measured;
        }
        by_round.push(results);
    }
    let ratio = |pick: &dyn Fn(&[Option<Fanout>]) -> Option<f64>| -> Vec<f64> {
        by_round.iter().filter_map(|round| pick(round)).collect()
    };
    let show = |name: &str, values: Vec<f64>| {
        if values.is_empty() {
            println!("{name:<40} no complete round");
            return;
        }
        let (med, min, max) = median(values);
        println!("{name:<40} median {med:>7.2}x (min {min:.2}, max {max:.2})");
    };
    println!();
    println!("{store} store:");
    show(
        "p99 delivery, 1000 subscribers / 1",
        ratio(&|r| Some(r[2].as_ref()?.p99 / r[1].as_ref()?.p99)),
    );
    show(
        "writes/s, 1000 subscribers / none",
        ratio(&|r| Some(r[2].as_ref()?.rate / r[0].as_ref()?.rate)),
    );
    show(
        "writes/s, 1 subscriber / none",
        ratio(&|r| Some(r[1].as_ref()?.rate / r[0].as_ref()?.rate)),
    );
}
