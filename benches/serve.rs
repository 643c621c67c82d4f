//! `GET /syncs/{id}` of the router over a file store under 16 keep-alive connections, against
//! the floor of the same work: a bare axum route on the same runtime that reads the record
//! file inline (`std::fs::read` + `serde_json` parse into a `Record` + serialize, with the
//! router's `ETag` and `Cache-Control`, so the answers are the same bytes). Also a 304 poll
//! (`If-None-Match` naming the current write) and a minimal Node server that serves the same
//! file the way hand-rolled Node stores do (`tests/node/baseline_server.mjs`: readFile +
//! JSON.parse + JSON.stringify per request). The variants run in rotated rounds (each round
//! starts one variant later), so none always runs first or after the same neighbour.
//!
//! What the bare route leaves out, being a floor: the router's query-parameter check (the
//! request has none), and the store's file checks (no `O_NOFOLLOW`, no regular-file and size
//! check before the read, no id in the file compared with the path's).
//!
//! Run with `cargo bench --features axum --bench serve`. Knobs: `ROUNDS` (default 5),
//! `REQUESTS` (per variant and round, default 20000). Needs `node` on PATH for the Node row
//! (skipped with a note otherwise). Client and servers share this machine's cores: the client
//! runs on the servers' runtime (2 workers on 2 cores, as `#[tokio::main]` makes it).

#[path = "support/mod.rs"]
mod support;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use support::{env_or, load_average, median, min_max, ratio_text, rotated_rounds};
use syncstatus::{FileStorage, PutMode, Record, SyncStorage, Timestamp, TtlPolicy};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 16;
const ID: &str = "sync-1732240000";

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

/// The floor: what any axum route serving a record file does, inline on the async worker.
async fn bare_get(
    axum::extract::State(dir): axum::extract::State<Arc<PathBuf>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if syncstatus::validate_id(&id).is_err() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let Ok(bytes) = std::fs::read(dir.join(format!("{id}.json"))) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(record) = serde_json::from_slice::<Record>(&bytes) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if record.is_expired_at(Timestamp::now()) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Ok(body) = serde_json::to_vec(&record) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let etag = format!("\"{}.{}\"", record.created_at.as_millis(), record.version);
    let Ok(etag) = HeaderValue::from_str(&etag) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn serve(listener: TcpListener, app: axum::Router) {
    let _ = axum::serve(listener, app).await;
}

/// The Node baseline, listening; killed when dropped.
async fn node_baseline(dir: &Path) -> Option<(tokio::process::Child, SocketAddr)> {
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

/// The status line, the headers a cache or client reads, and the body of one answer.
async fn answer(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request =
        format!("GET /syncs/{ID} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).await.expect("answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut kept: Vec<String> = head
        .lines()
        .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
        .map(str::to_ascii_lowercase)
        .collect();
    kept.sort();
    format!("{}\n\n{body}", kept.join("\n"))
}

fn rates(samples: &[Sample]) -> Vec<f64> {
    samples.iter().map(|s| s.per_second).collect()
}

fn millis(samples: &[Sample], of: impl Fn(&Sample) -> Duration) -> Vec<f64> {
    samples
        .iter()
        .map(|s| of(s).as_secs_f64() * 1000.0)
        .collect()
}

fn main() {
    let rounds = env_or("ROUNDS", 5);
    let requests = env_or("REQUESTS", 20_000);
    // What `#[tokio::main]` builds: one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    // An hour, not the default 5 minutes: a slow sitting must not see the record expire.
    let store = Arc::new(
        FileStorage::builder(dir.path())
            .with_ttl(TtlPolicy::uniform(Duration::from_secs(3600)))
            .build()
            .expect("store"),
    );
    let record = runtime
        .block_on(store.put(
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
        ))
        .expect("put");
    let etag = format!("\"{}.{}\"", record.created_at.as_millis(), record.version);
    let (router_addr, bare_addr) = runtime.block_on(async {
        let router = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let bare = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addrs = (
            router.local_addr().expect("addr"),
            bare.local_addr().expect("addr"),
        );
        tokio::spawn(serve(router, syncstatus::http::router(store)));
        let bare_app = axum::Router::new()
            .route("/syncs/{id}", axum::routing::get(bare_get))
            .with_state(Arc::new(dir.path().to_path_buf()));
        tokio::spawn(serve(bare, bare_app));
        addrs
    });
    let node = runtime.block_on(node_baseline(dir.path()));
    let node_addr = node.as_ref().map(|(_, addr)| *addr);

    // The answers must be the same bytes: the floor is only a floor if it does the same work.
    let (router_answer, bare_answer) =
        runtime.block_on(async { (answer(router_addr).await, answer(bare_addr).await) });
    assert_eq!(
        router_answer, bare_answer,
        "router and bare route answer alike"
    );

    // A warm-up of each server, not counted.
    runtime.block_on(async {
        load(router_addr, "", 200, requests / 4).await;
        load(bare_addr, "", 200, requests / 4).await;
        if let Some(addr) = node_addr {
            load(addr, "", 200, requests / 4).await;
        }
    });

    let load_before = load_average();
    let not_modified = format!("If-None-Match: {etag}\r\n");
    let router_200 = RefCell::new(Vec::new());
    let router_304 = RefCell::new(Vec::new());
    let bare_200 = RefCell::new(Vec::new());
    let node_200 = RefCell::new(Vec::new());
    let run = |samples: &RefCell<Vec<Sample>>, addr: SocketAddr, headers: &str, expect: u16| {
        let sample = runtime.block_on(load(addr, headers, expect, requests));
        let rate = sample.per_second;
        samples.borrow_mut().push(sample);
        rate
    };
    let mut router_ok = || run(&router_200, router_addr, "", 200);
    let mut router_cached = || run(&router_304, router_addr, &not_modified, 304);
    let mut bare_ok = || run(&bare_200, bare_addr, "", 200);
    let mut node_ok = || match node_addr {
        Some(addr) => run(&node_200, addr, "", 200),
        None => 0.0,
    };
    let mut variants: Vec<&mut dyn FnMut() -> f64> =
        vec![&mut router_ok, &mut router_cached, &mut bare_ok];
    if node_addr.is_some() {
        variants.push(&mut node_ok);
    }
    rotated_rounds(rounds, &mut variants);
    let load_after = load_average();

    println!(
        "GET /syncs/{{id}}, {CONNECTIONS} keep-alive connections, {requests} requests per round, {rounds} rotated rounds; load average {load_before} before, {load_after} after"
    );
    println!(
        "| {:<50} | {:>12} | {:>21} | {:>8} | {:>8} |",
        "variant", "median req/s", "min–max req/s", "p50 ms", "p99 ms"
    );
    println!(
        "|{:-<52}|{:-<14}|{:-<23}|{:-<10}|{:-<10}|",
        "", "", "", "", ""
    );
    let rows = [
        ("syncstatus serve router, 200 poll", &router_200),
        (
            "syncstatus serve router, 304 poll (If-None-Match)",
            &router_304,
        ),
        (
            "bare axum route, fs::read + parse + serialize, 200",
            &bare_200,
        ),
        (
            "Node readFile + JSON.parse + JSON.stringify, 200",
            &node_200,
        ),
    ];
    for (name, samples) in rows {
        let samples = samples.borrow();
        if samples.is_empty() {
            continue;
        }
        let rates = rates(&samples);
        let (min, max) = min_max(&rates);
        println!(
            "| {:<50} | {:>12.0} | {:>9.0} – {:<9.0} | {:>8.3} | {:>8.3} |",
            name,
            median(&rates),
            min,
            max,
            median(&millis(&samples, |s| s.p50)),
            median(&millis(&samples, |s| s.p99)),
        );
    }
    let (router, bare, cached) = (router_200.borrow(), bare_200.borrow(), router_304.borrow());
    let p99 = |samples: &[Sample]| millis(samples, |s| s.p99);
    println!(
        "router 200 / bare route 200, req/s per round: {}",
        ratio_text(&rates(&router), &rates(&bare)).1
    );
    println!(
        "router 200 / bare route 200, p99 per round: {}",
        ratio_text(&p99(&router), &p99(&bare)).1
    );
    println!(
        "304 poll / 200 poll, req/s per round: {}",
        ratio_text(&rates(&cached), &rates(&router)).1
    );
    let node_samples = node_200.borrow();
    if !node_samples.is_empty() {
        println!(
            "router 200 / Node baseline 200, req/s per round: {}",
            ratio_text(&rates(&router), &rates(&node_samples)).1
        );
    }
    if let Some((mut child, _)) = node {
        let _ = runtime.block_on(child.kill());
    }
    runtime.shutdown_background();
}
