//! CPU of an idle dev server (issue 14: "dev server idle on a 10k-record store ≤ 1% of a
//! core; follow changes, do not poll the store"). Each variant runs in a process of its own
//! with what `examples/dev_server.rs` runs: a file store opened by `syncstatus::open`, the job
//! runtime (`syncstatus::jobs::Runtime`: supervisor, heartbeats, batch reconciler) and the
//! router served on a loopback port. After a settling time (the startup snapshot, the first
//! sweep) the process reads its own user + system CPU time from `/proc/self/stat` before and
//! after a quiet window in which nothing writes and nobody requests. Variants: a store of
//! `RECORDS` finished jobs (default 10,000) and an empty store, in rotated rounds.
//!
//! Run with `cargo bench --features axum --bench idle`. Knobs: `ROUNDS` (default 3),
//! `RECORDS`, `WINDOW_SECS` (default 20), `SETTLE_SECS` (default 5). Linux only (`/proc`).

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::{env_or, fresh_dir, load_average, median, min_max, rotated_rounds};
use syncstatus::jobs::{Runtime, RuntimeConfig};
use syncstatus::{FileStorage, PutMode, SyncStorage, TtlPolicy};

/// `/proc/<pid>/stat` counts CPU time in clock ticks of 1/100 s (`USER_HZ`, fixed for the
/// `/proc` interface on the kernels this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU time of this process so far, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat (Linux only)");
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let after_name = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime), counted from 1 with pid and name as 1 and 2.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / TICKS_PER_SECOND
}

/// In a child process: the dev server's parts over `dir`, idle; prints the CPU share.
fn child(dir: &Path, settle: Duration, window: Duration) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = syncstatus::open(dir.to_str().unwrap()).await.unwrap();
        let runtime = Runtime::start(store.clone(), RuntimeConfig::default(), |_job| async {
            Ok(json!({}))
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let app = syncstatus::http::RouterConfig::new(store).router();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        tokio::time::sleep(settle).await;
        let before = cpu_seconds();
        tokio::time::sleep(window).await;
        let used = cpu_seconds() - before;
        println!("{}", used / window.as_secs_f64() * 100.0);
        server.abort();
        runtime.shutdown().await;
    });
}

fn run_child(dir: &Path, settle: usize, window: usize) -> f64 {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--child", &settle.to_string(), &window.to_string()])
        .arg(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `count` finished jobs, written through the store (so each has its lock file, as a store
/// that ran them leaves it), expiring in a year so that no sweep has work.
fn populate(dir: &Path, count: usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = FileStorage::builder(dir)
        .with_ttl(TtlPolicy::uniform(Duration::from_secs(365 * 24 * 3600)))
        .build()
        .unwrap();
    rt.block_on(async {
        for n in 0..count {
            let status = json!({
                "state": "completed",
                "attempt": 1,
                "progress": {"done": 50, "total": 50},
                "message": "page 50 of 50",
                "result": {"pages": 50},
            });
            store
                .put(&format!("sync-{n:07}"), status, PutMode::Overwrite)
                .await
                .unwrap();
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        let settle = Duration::from_secs(args[at + 1].parse().unwrap());
        let window = Duration::from_secs(args[at + 2].parse().unwrap());
        child(Path::new(&args[at + 3]), settle, window);
        return;
    }
    let rounds = env_or("ROUNDS", 3).max(3);
    let records = env_or("RECORDS", 10_000);
    let window = env_or("WINDOW_SECS", 20);
    let settle = env_or("SETTLE_SECS", 5);
    println!(
        "idle: the dev server's parts (file store, job runtime, router) idle for {window} s after {settle} s to settle, each in its own process, {rounds} rotated rounds; load average at start {}",
        load_average()
    );
    let root = tempfile::tempdir().unwrap();
    let full = fresh_dir(root.path(), "full");
    populate(&full, records);
    let empty = fresh_dir(root.path(), "empty");
    let mut on_full = || run_child(&full, settle, window);
    let mut on_empty = || run_child(&empty, settle, window);
    let values = rotated_rounds(rounds, &mut [&mut on_full, &mut on_empty]);
    println!("| store | CPU % of one core, median (min–max) | goal |");
    println!("|---|---|---|");
    for (what, at, goal) in [
        (format!("{records} finished jobs"), 0, "≤ 1%"),
        ("empty".to_string(), 1, ""),
    ] {
        let (lo, hi) = min_max(&values[at]);
        println!(
            "| {what} | {:.2} ({lo:.2}–{hi:.2}) | {goal} |",
            median(&values[at])
        );
    }
    println!("load average at end {}", load_average());
}
