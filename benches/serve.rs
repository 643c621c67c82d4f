//! `GET /syncs/{id}` of the router over a file store under 16 keep-alive connections, against
//! a minimal Node server that serves the same file the way hand-rolled Node stores do
//! (`tests/node/baseline_server.mjs`: readFile + JSON.parse + JSON.stringify per request), and
//! a 304 poll (`If-None-Match` naming the current write) against a 200 poll. Rounds are
//! interleaved so both servers see the same machine.
//!
//! Run with `cargo bench --features axum --bench serve`. Knobs: `ROUNDS` (default 5),
//! `REQUESTS` (per variant and round, default 20000). Needs `node` on PATH for the baseline
//! row (skipped with a note otherwise). Client and servers share this machine's cores.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use syncstatus::{FileStorage, PutMode, SyncStorage};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 16;
const ID: &str = "sync-1732240000";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One keep-alive connection sending `request` `count` times; returns each answer's latency.
async fn connection(
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    expect: u16,
    count: usize,
) -> Vec<Duration> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut latencies = Vec::with_capacity(count);
    let mut line = String::new();
    let mut body = Vec::new();
    for _ in 0..count {
        let start = Instant::now();
        write.write_all(&request).await.expect("send");
        line.clear();
        read.read_line(&mut line).await.expect("status line");
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line from {addr}: {line:?}"));
        assert_eq!(status, expect, "{line}");
        let mut length = 0;
        loop {
            line.clear();
            read.read_line(&mut line).await.expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("content-length");
            }
        }
        body.resize(length, 0);
        read.read_exact(&mut body).await.expect("body");
        latencies.push(start.elapsed());
    }
    latencies
}

struct Sample {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn load(addr: SocketAddr, extra_headers: &str, expect: u16, requests: usize) -> Sample {
    let request = Arc::new(
        format!("GET /syncs/{ID} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra_headers}\r\n").into_bytes(),
    );
    let per_connection = requests / CONNECTIONS;
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(connection(addr, request.clone(), expect, per_connection)))
        .collect();
    let mut latencies = Vec::with_capacity(requests);
    for task in tasks {
        latencies.extend(task.await.expect("connection task"));
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Sample {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
    }
}

/// The Node baseline, listening; killed when dropped.
async fn node_baseline(dir: &std::path::Path) -> Option<(tokio::process::Child, SocketAddr)> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/node/baseline_server.mjs"
    );
    let mut child = match tokio::process::Command::new("node")
        .arg(script)
        .env("DIR", dir)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(error) => {
            eprintln!("skipping the Node baseline: cannot run node: {error}");
            return None;
        }
    };
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .await
        .expect("node prints its port");
    let port: u16 = line.trim().strip_prefix("listening ")?.parse().ok()?;
    Some((child, SocketAddr::from(([127, 0, 0, 1], port))))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let rounds = env_or("ROUNDS", 5);
    let requests = env_or("REQUESTS", 20_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FileStorage::open(dir.path()).expect("store"));
    let record = store
        .put(
            ID,
            json!({
                "state": "running",
                "progress": {"done": 40, "total": 600},
                "message": "page 4 of 60",
                "started_at": "2026-11-22T03:40:00.123Z",
                "heartbeat_at": "2026-11-22T03:41:10.456Z",
                "attempt": 1
            }),
            PutMode::Overwrite,
        )
        .await
        .expect("put");
    let etag = format!("\"{}.{}\"", record.created_at.as_millis(), record.version);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, syncstatus::http::router(store)).await;
    });
    let node = node_baseline(dir.path()).await;

    let names = [
        "syncstatus serve router, 200 poll",
        "syncstatus serve router, 304 poll (If-None-Match)",
        "Node readFile + JSON.parse + JSON.stringify, 200",
    ];
    let mut samples: Vec<Vec<Sample>> = (0..names.len()).map(|_| Vec::new()).collect();
    // A warm-up round, not counted.
    load(addr, "", 200, requests / 4).await;
    if let Some((_, node_addr)) = &node {
        load(*node_addr, "", 200, requests / 4).await;
    }
    for _ in 0..rounds {
        samples[0].push(load(addr, "", 200, requests).await);
        samples[1].push(load(addr, &format!("If-None-Match: {etag}\r\n"), 304, requests).await);
        if let Some((_, node_addr)) = &node {
            samples[2].push(load(*node_addr, "", 200, requests).await);
        }
    }
    println!(
        "GET /syncs/{{id}}, {CONNECTIONS} keep-alive connections, {requests} requests per round, {rounds} rounds"
    );
    println!(
        "| {:<50} | {:>12} | {:>21} | {:>8} | {:>8} |",
        "variant", "median req/s", "min–max req/s", "p50 ms", "p99 ms"
    );
    println!(
        "|{:-<52}|{:-<14}|{:-<23}|{:-<10}|{:-<10}|",
        "", "", "", "", ""
    );
    let mut medians = Vec::new();
    for (name, runs) in names.iter().zip(&samples) {
        if runs.is_empty() {
            medians.push(None);
            continue;
        }
        let mut rates: Vec<f64> = runs.iter().map(|s| s.per_second).collect();
        let mut p50: Vec<f64> = runs.iter().map(|s| s.p50.as_secs_f64() * 1000.0).collect();
        let mut p99: Vec<f64> = runs.iter().map(|s| s.p99.as_secs_f64() * 1000.0).collect();
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        let rate = median(&mut rates);
        medians.push(Some(rate));
        println!(
            "| {:<50} | {:>12.0} | {:>9.0} – {:<9.0} | {:>8.3} | {:>8.3} |",
            name,
            rate,
            min,
            max,
            median(&mut p50),
            median(&mut p99)
        );
    }
    if let (Some(router), Some(not_modified)) = (medians[0], medians[1]) {
        println!("304 poll / 200 poll: {:.2}x", not_modified / router);
    }
    if let (Some(router), Some(Some(node))) = (medians[0], medians.get(2)) {
        println!("router 200 / Node baseline 200: {:.2}x", router / node);
    }
    server.abort();
    if let Some((mut child, _)) = node {
        let _ = child.kill().await;
    }
}
