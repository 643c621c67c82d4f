//! How fast and how completely the file store's watch reports writes of another store, next
//! to a bare `notify` watcher seeing the same writes, what a watch of 100,000 records costs in
//! memory, and (`watch/fanout.rs`) what 1,000 streams starting with a snapshot cost and what
//! 1,000 live subscribers cost a writer of the same store.
//!
//! `cargo bench --all-features --bench watch`; `SECTIONS=fanout,snapshots` runs only those
//! (all by default: `latency,memory,fanout,snapshots`); `ROUNDS` sets the rounds of those two. Everything that is compared runs in one
//! process on one monotonic clock: a writer thread writes through a second `FileStorage` on
//! the same directory (so its writes reach the subscriber through the file system, not the
//! in-process shortcut), while a subscriber task and a bare notify watcher timestamp what
//! they receive.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

#[path = "watch/fanout.rs"]
mod fanout;
use fanout::load_average;
use notify::Watcher;
use serde_json::json;
use syncstatus::{
    FileStorage, ListFilter, PutMode, Record, SyncStorage, Timestamp, TtlPolicy, WatchEvent,
    WatchOptions, WatchSelector,
};

const ROUNDS: usize = 3;
const PACED_WRITES: usize = 2_000;
const PACE: Duration = Duration::from_millis(2);
const BURST_IDS: usize = 1_000;
const BURST_WRITES: usize = 20_000;
const BURST_TASKS: usize = 4;
const RSS_RECORDS: usize = 100_000;
const DEADLINE: Duration = Duration::from_secs(60);
const CHILD: &str = "SYNCSTATUS_BENCH_WATCH_CHILD";

fn open(dir: &Path) -> FileStorage {
    FileStorage::builder(dir)
        .with_ttl(TtlPolicy::never())
        .with_lazy_sweep(None)
        .build()
        .expect("open the store")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Signed microseconds from `from` to `to` (a watcher may see the rename before the writer's
/// call has returned).
fn micros_between(from: Instant, to: Instant) -> f64 {
    if to >= from {
        (to - from).as_secs_f64() * 1e6
    } else {
        -((from - to).as_secs_f64() * 1e6)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
    early: usize,
    missing: usize,
}

fn summarize(write_ends: &[Instant], seen: &HashMap<usize, Instant>) -> Latency {
    let mut micros: Vec<f64> = write_ends
        .iter()
        .enumerate()
        .filter_map(|(n, end)| seen.get(&n).map(|at| micros_between(*end, *at)))
        .collect();
    micros.sort_by(f64::total_cmp);
    Latency {
        p50: percentile(&micros, 50.0),
        p99: percentile(&micros, 99.0),
        max: micros.last().copied().unwrap_or(f64::NAN),
        early: micros.iter().filter(|m| **m < 0.0).count(),
        missing: write_ends.len() - micros.len(),
    }
}

fn paced_id(n: usize) -> String {
    format!("w{n:05}")
}

fn id_number(name: &str) -> Option<usize> {
    name.strip_prefix('w')?.strip_suffix(".json")?.parse().ok()
}

/// Per write, how much later our subscriber saw it than the bare notify watcher.
fn added_over_notify(ours: &HashMap<usize, Instant>, bare: &HashMap<usize, Instant>) -> Latency {
    let mut micros: Vec<f64> = ours
        .iter()
        .filter_map(|(n, at)| bare.get(n).map(|raw| micros_between(*raw, *at)))
        .collect();
    micros.sort_by(f64::total_cmp);
    Latency {
        p50: percentile(&micros, 50.0),
        p99: percentile(&micros, 99.0),
        max: micros.last().copied().unwrap_or(f64::NAN),
        early: micros.iter().filter(|m| **m < 0.0).count(),
        missing: ours.len().max(bare.len()) - micros.len(),
    }
}

/// One round of paced writes: (ours, bare notify, ours minus bare notify per write).
fn latency_round() -> (Latency, Latency, Latency) {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime();
    let subscriber_store = open(dir.path());
    let writer_store = open(dir.path());

    let raw_seen: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let raw_sink = raw_seen.clone();
    let mut raw = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let at = Instant::now();
        if let Ok(event) = event {
            let mut seen = raw_sink.lock().expect("raw map");
            for path in &event.paths {
                if let Some(n) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(id_number)
                {
                    seen.entry(n).or_insert(at);
                }
            }
        }
    })
    .expect("bare notify watcher");
    raw.watch(dir.path(), notify::RecursiveMode::NonRecursive)
        .expect("bare notify watch");

    let mut stream = rt
        .block_on(subscriber_store.watch(WatchSelector::All, WatchOptions::default()))
        .expect("watch");
    let ours_seen: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let ours_sink = ours_seen.clone();
    let subscriber = rt.spawn(async move {
        while let Some(item) = stream.next().await {
            let at = Instant::now();
            if let Ok(WatchEvent::Upsert(record)) = item
                && let Some(n) = record.id.strip_prefix('w').and_then(|n| n.parse().ok())
            {
                ours_sink.lock().expect("ours map").entry(n).or_insert(at);
                if n + 1 == PACED_WRITES {
                    return;
                }
            }
        }
    });

    let writer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("writer runtime");
        let start = Instant::now();
        let mut ends = Vec::with_capacity(PACED_WRITES);
        for n in 0..PACED_WRITES {
            let due = start + PACE * n as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            rt.block_on(writer_store.put(
                &paced_id(n),
                json!({"state": "running", "n": n}),
                PutMode::Overwrite,
            ))
            .expect("paced write");
            ends.push(Instant::now());
        }
        ends
    });
    let ends = writer.join().expect("writer thread");
    let _ = rt.block_on(async { tokio::time::timeout(DEADLINE, subscriber).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while raw_seen.lock().expect("raw map").len() < PACED_WRITES && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(raw);
    let ours_seen = ours_seen.lock().expect("ours map");
    let raw_seen = raw_seen.lock().expect("raw map");
    (
        summarize(&ends, &ours_seen),
        summarize(&ends, &raw_seen),
        added_over_notify(&ours_seen, &raw_seen),
    )
}

struct Burst {
    write_secs: f64,
    converge_ms: f64,
    final_states: usize,
    events: usize,
    resyncs: usize,
}

/// 20,000 writes over 1,000 ids through a second store as fast as it goes; how many ids end
/// in their final state at the subscriber, and how long after the last write.
fn burst_round() -> Burst {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = runtime();
    let subscriber_store = open(dir.path());
    let writer_store = open(dir.path());
    let mut stream = rt
        .block_on(subscriber_store.watch(WatchSelector::All, WatchOptions::default()))
        .expect("watch");

    let (done_tx, mut done_rx) = tokio::sync::watch::channel(None::<BTreeMap<String, u64>>);
    let listing_dir = dir.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        let rt = runtime();
        let start = Instant::now();
        rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for task in 0..BURST_TASKS {
                let store = writer_store.clone();
                tasks.spawn(async move {
                    for round in 0..BURST_WRITES / BURST_IDS {
                        for n in (task..BURST_IDS).step_by(BURST_TASKS) {
                            store
                                .put(
                                    &format!("b{n:04}"),
                                    json!({"round": round}),
                                    PutMode::Overwrite,
                                )
                                .await
                                .expect("burst write");
                        }
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.expect("burst task");
            }
        });
        let write_secs = start.elapsed().as_secs_f64();
        let listing = rt
            .block_on(open(&listing_dir).list(&ListFilter::all()))
            .expect("listing");
        let finals = listing
            .records
            .into_iter()
            .map(|r| (r.id, r.version))
            .collect();
        let _ = done_tx.send(Some(finals));
        write_secs
    });

    let (converge_ms, final_states, events, resyncs) = rt.block_on(async {
        let mut mirror: HashMap<String, u64> = HashMap::new();
        let mut events = 0;
        let mut resyncs = 0;
        let mut finals: Option<(BTreeMap<String, u64>, Instant)> = None;
        let matching = |mirror: &HashMap<String, u64>, finals: &BTreeMap<String, u64>| {
            finals
                .iter()
                .filter(|(id, v)| mirror.get(*id) == Some(v))
                .count()
        };
        loop {
            if let Some((expected, since)) = &finals {
                let matched = matching(&mirror, expected);
                if matched == expected.len() || since.elapsed() > DEADLINE {
                    return (
                        since.elapsed().as_secs_f64() * 1e3,
                        matched,
                        events,
                        resyncs,
                    );
                }
            }
            tokio::select! {
                changed = done_rx.changed(), if finals.is_none() => {
                    changed.expect("writer thread");
                    let expected = done_rx.borrow().clone().expect("final states");
                    finals = Some((expected, Instant::now()));
                }
                item = tokio::time::timeout(Duration::from_millis(100), stream.next()) => {
                    match item {
                        Ok(Some(Ok(WatchEvent::Upsert(r)))) => {
                            events += 1;
                            mirror.insert(r.id.clone(), r.version);
                        }
                        Ok(Some(Ok(WatchEvent::Removed { id }))) => {
                            events += 1;
                            mirror.remove(&id);
                        }
                        Ok(Some(Ok(WatchEvent::Resync(records)))) => {
                            resyncs += 1;
                            mirror = records.iter().map(|r| (r.id.clone(), r.version)).collect();
                        }
                        Ok(Some(Err(error))) => eprintln!("watch error: {error}"),
                        Ok(None) => panic!("the watch ended"),
                        Err(_) => {}
                    }
                }
            }
        }
    });
    let write_secs = writer.join().expect("writer thread");
    Burst {
        write_secs,
        converge_ms,
        final_states,
        events,
        resyncs,
    }
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// Writes 100,000 small records in the store's own format, directly to save time.
fn many_records(dir: &Path) -> usize {
    let now = Timestamp::now();
    let mut bytes_on_disk = 0;
    for n in 0..RSS_RECORDS {
        // The store's own format, written directly to save time; the watch reads them back.
        let record = Record {
            id: format!("r{n:06}"),
            version: 1,
            created_at: now,
            updated_at: now,
            expires_at: None,
            status: json!({"state": "completed", "progress": {"done": n, "total": n}}),
        };
        let mut json = serde_json::to_vec_pretty(&record).expect("json");
        json.push(b'\n');
        bytes_on_disk += json.len();
        std::fs::write(dir.join(format!("{}.json", record.id)), json).expect("write");
    }
    bytes_on_disk
}

/// In a process of its own: peak RSS before and after holding 100,000 records, either in a
/// watch (`watch`) or, as the baseline, in the result of one `list` (`list`).
fn rss_child(what: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let bytes_on_disk = many_records(dir.path());
    let rt = runtime();
    // The default TTL (5 minutes, every record due): the watch also tracks when each expires.
    let store = FileStorage::builder(dir.path())
        .with_lazy_sweep(None)
        .build()
        .expect("open the store");
    if what == "list" {
        let before = status_kib("VmHWM:");
        let start = Instant::now();
        let listing = rt.block_on(store.list(&ListFilter::all())).expect("list");
        let took = start.elapsed();
        let after = status_kib("VmHWM:");
        println!(
            "{} {} {} {} {} {}",
            before,
            after,
            status_kib("VmRSS:"),
            took.as_millis(),
            bytes_on_disk / 1024,
            listing.records.len() == RSS_RECORDS
        );
        return;
    }
    let before = status_kib("VmHWM:");
    let start = Instant::now();
    let mut stream = rt
        .block_on(store.watch(WatchSelector::All, WatchOptions::default()))
        .expect("watch");
    let started = start.elapsed();
    // Make sure it is live: a write of another store arrives.
    let other = open(dir.path());
    rt.block_on(other.put("r000000", json!({"state": "running"}), PutMode::Overwrite))
        .expect("write");
    let arrived = rt.block_on(async {
        tokio::time::timeout(DEADLINE, async {
            while let Some(item) = stream.next().await {
                if let Ok(WatchEvent::Upsert(record)) = item
                    && record.id == "r000000"
                    && record.version == 2
                {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false)
    });
    let after = status_kib("VmHWM:");
    println!(
        "{} {} {} {} {} {}",
        before,
        after,
        status_kib("VmRSS:"),
        started.as_millis(),
        bytes_on_disk / 1024,
        arrived
    );
}

struct Rss {
    before_kib: u64,
    peak_kib: u64,
    now_kib: u64,
    took_ms: u128,
    disk_kib: usize,
    ok: bool,
}

fn rss(what: &str) -> Option<Rss> {
    let output = std::process::Command::new(std::env::current_exe().ok()?)
        .env(CHILD, what)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text.split_whitespace();
    Some(Rss {
        before_kib: fields.next()?.parse().ok()?,
        peak_kib: fields.next()?.parse().ok()?,
        now_kib: fields.next()?.parse().ok()?,
        took_ms: fields.next()?.parse().ok()?,
        disk_kib: fields.next()?.parse().ok()?,
        ok: fields.next()?.parse().ok()?,
    })
}

fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn main() {
    if let Ok(what) = std::env::var(CHILD) {
        if let Some(n) = what.strip_prefix("fanout:") {
            fanout::fanout_child(n);
        } else if let Some(n) = what.strip_prefix("snapshots:") {
            fanout::snapshots_child(n.parse().expect("stream count"));
        } else {
            rss_child(&what);
        }
        return;
    }
    let sections =
        std::env::var("SECTIONS").unwrap_or_else(|_| "latency,memory,fanout,snapshots".into());
    let wanted = |name: &str| sections.split(',').any(|s| s.trim() == name);
    println!("load average at start: {}", load_average());
    if wanted("latency") {
        latency_and_burst();
    }
    if wanted("memory") {
        memory_of_many_records();
    }
    if wanted("fanout") {
        fanout::fanout();
    }
    if wanted("snapshots") {
        fanout::snapshots();
    }
    println!("load average at end: {}", load_average());
}

fn latency_and_burst() {
    println!(
        "file store watch: {PACED_WRITES} paced writes (one every {PACE:?}) through a second \
         store on the same directory, {ROUNDS} rounds; latency from the writer's put returning \
         to the event, in µs"
    );
    println!(
        "{:<6} {:>22} {:>22} {:>10} {:>22} {:>8}",
        "round",
        "ours p50 / p99 / max",
        "notify p50 / p99 / max",
        "p99 ratio",
        "added p50 / p99 / max",
        "missing"
    );
    let mut ours_p50 = Vec::new();
    let mut ours_p99 = Vec::new();
    let mut bare_p50 = Vec::new();
    let mut bare_p99 = Vec::new();
    let mut ratios = Vec::new();
    let mut added_p50 = Vec::new();
    let mut added_p99 = Vec::new();
    let mut bursts = Vec::new();
    for round in 1..=ROUNDS {
        let (ours, bare, added) = latency_round();
        println!(
            "{:<6} {:>6.0} / {:>5.0} / {:>6.0} {:>6.0} / {:>5.0} / {:>6.0} {:>9.1}x \
             {:>6.0} / {:>5.0} / {:>6.0} {:>4} / {:<3}",
            round,
            ours.p50,
            ours.p99,
            ours.max,
            bare.p50,
            bare.p99,
            bare.max,
            ours.p99 / bare.p99,
            added.p50,
            added.p99,
            added.max,
            ours.missing,
            bare.missing
        );
        added_p50.push(added.p50);
        added_p99.push(added.p99);
        if ours.early + bare.early > 0 {
            println!(
                "       (seen before the put returned: ours {}, notify {})",
                ours.early, bare.early
            );
        }
        ours_p50.push(ours.p50);
        ours_p99.push(ours.p99);
        bare_p50.push(bare.p50);
        bare_p99.push(bare.p99);
        ratios.push(ours.p99 / bare.p99);
        bursts.push(burst_round());
    }
    let show = |name: &str, values: Vec<f64>| {
        let (median, min, max) = median(values);
        println!("{name:<26} median {median:>8.1}   (min {min:.1}, max {max:.1})");
    };
    println!();
    show("ours p50 µs", ours_p50);
    show("ours p99 µs", ours_p99);
    show("bare notify p50 µs", bare_p50);
    show("bare notify p99 µs", bare_p99);
    show("p99 ratio ours / notify", ratios);
    show("added over notify p50 µs", added_p50);
    show("added over notify p99 µs", added_p99);

    println!();
    println!(
        "burst: {BURST_WRITES} writes over {BURST_IDS} ids, {BURST_TASKS} writing tasks in a \
         second store, as fast as they go"
    );
    println!(
        "{:<6} {:>10} {:>10} {:>16} {:>18} {:>8} {:>8}",
        "round", "writes/s", "write s", "final states", "converged after", "events", "resyncs"
    );
    for (n, burst) in bursts.iter().enumerate() {
        println!(
            "{:<6} {:>10.0} {:>10.2} {:>9}/{} {:>5.1}% {:>15.1} ms {:>8} {:>8}",
            n + 1,
            BURST_WRITES as f64 / burst.write_secs,
            burst.write_secs,
            burst.final_states,
            BURST_IDS,
            100.0 * burst.final_states as f64 / BURST_IDS as f64,
            burst.converge_ms,
            burst.events,
            burst.resyncs
        );
    }
}

fn memory_of_many_records() {
    println!();
    let cases: Vec<(&str, Option<Rss>)> = vec![
        ("watch (started, live)", rss("watch")),
        ("one list() (baseline)", rss("list")),
    ];
    let record_bytes = cases
        .iter()
        .find_map(|(_, r)| r.as_ref())
        .map_or(0, |r| r.disk_kib * 1024 / RSS_RECORDS);
    println!(
        "memory: {RSS_RECORDS} records of about {record_bytes} bytes on disk, each case in a \
         fresh process"
    );
    println!(
        "{:<26} {:>12} {:>12} {:>12} {:>14} {:>10} {:>6}",
        "case", "VmHWM before", "VmHWM after", "VmRSS after", "peak growth", "took", "ok"
    );
    for (name, measured) in cases {
        match measured {
            Some(r) => {
                let growth = r.peak_kib.saturating_sub(r.before_kib);
                println!(
                    "{:<26} {:>8.1} MiB {:>8.1} MiB {:>8.1} MiB {:>6.1} MiB {:>4.0} B/rec {:>7} ms {:>6}",
                    name,
                    r.before_kib as f64 / 1024.0,
                    r.peak_kib as f64 / 1024.0,
                    r.now_kib as f64 / 1024.0,
                    growth as f64 / 1024.0,
                    growth as f64 * 1024.0 / RSS_RECORDS as f64,
                    r.took_ms,
                    r.ok
                );
            }
            None => println!("{name:<26} the measuring process failed"),
        }
    }
}
