//! The conformance suite on `RedisStorage`, and the Redis store's own behaviour, against a real
//! server (`SYNCSTATUS_REDIS_URL`, default `redis://127.0.0.1:6379/0`). Every test uses its own
//! key prefix and removes its keys afterwards, so tests run in parallel. Without a server each
//! test prints `SKIPPED <test>: ...` and passes, unless `CI` or `SYNCSTATUS_REQUIRE_SERVICES`
//! is set.

#![cfg(feature = "redis")]

mod conformance;
mod jobs;
mod lifecycle;
mod redis_support;
mod skips;
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use conformance::{EVENT_DEADLINE, Fixture, standard_ttl};
use futures_util::StreamExt;
use redis_support::{Server, Setup};
use serde_json::json;
use support::watch_feed::check_last_watch_stops_its_feed;
use syncstatus::redis::RedisStorage;
use syncstatus::{
    CleanupOptions, Error, ListFilter, PutMode, Record, SyncStorage, SyncStorageExt, TtlPolicy,
    WatchEvent, WatchOptions, WatchSelector, WatchStream,
};

fn redis_url() -> String {
    std::env::var("SYNCSTATUS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn server() -> Server {
    Server {
        url: redis_url(),
        nodes: vec![redis_url()],
        enable: "start redis-server, or point SYNCSTATUS_REDIS_URL at one",
    }
}

async fn setup(name: &str) -> Option<Setup> {
    setup_with(name, standard_ttl()).await
}

async fn setup_with(name: &str, ttl: TtlPolicy) -> Option<Setup> {
    redis_support::setup_with(&server(), name, ttl).await
}

async fn make(name: &str) -> Option<Fixture> {
    redis_support::fixture(&server(), name, |seeding| {
        Some(Box::new(move |id| {
            let store = seeding.clone();
            Box::pin(async move {
                // Written, then its version changed by hand: no store API gets there.
                store
                    .put(id, json!({"state": "running"}), PutMode::Overwrite)
                    .await
                    .unwrap();
                let key = store.key_of(id).unwrap();
                let mut conn = raw().await;
                let value: String = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let value =
                    value.replacen("\"version\":1,", &format!("\"version\":{},", u64::MAX), 1);
                let () = redis::cmd("SET")
                    .arg(&key)
                    .arg(value)
                    .arg("KEEPTTL")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                u64::MAX
            })
        }))
    })
    .await
}

all_conformance_tests!(make);
all_lifecycle_tests!(make);
all_jobs_tests!(make);

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// What one watch item was, besides its effect on the state.
enum Seen {
    Change,
    Resync,
    Error,
}

/// Applies the next item of `stream` to `state`, failing after [`EVENT_DEADLINE`].
async fn step(stream: &mut WatchStream, state: &mut HashMap<String, u64>) -> Seen {
    match tokio::time::timeout(EVENT_DEADLINE, stream.next()).await {
        Ok(Some(Ok(WatchEvent::Upsert(record)))) => {
            state.insert(record.id.clone(), record.version);
            Seen::Change
        }
        Ok(Some(Ok(WatchEvent::Removed { id }))) => {
            state.remove(&id);
            Seen::Change
        }
        Ok(Some(Ok(WatchEvent::Resync(records)))) => {
            *state = records.iter().map(|r| (r.id.clone(), r.version)).collect();
            Seen::Resync
        }
        Ok(Some(Err(_))) => Seen::Error,
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {EVENT_DEADLINE:?}; state {state:?}"),
    }
}

/// Follows `stream` until `done` holds for the versions seen, tolerating reported errors.
async fn follow(
    stream: &mut WatchStream,
    state: &mut HashMap<String, u64>,
    done: impl Fn(&HashMap<String, u64>) -> bool,
) {
    while !done(state) {
        step(stream, state).await;
    }
}

/// The ids of the connections named `name` in `CLIENT LIST`.
async fn client_ids(conn: &mut redis::aio::MultiplexedConnection, name: &str) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    list.lines()
        .filter(|line| line.split(' ').any(|field| field == format!("name={name}")))
        .filter_map(|line| {
            line.split(' ')
                .find_map(|field| field.strip_prefix("id="))
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_plain_json_with_native_expiry() {
    let Some(s) = setup("plain_json").await else {
        return;
    };
    let written = s
        .store
        .put(
            "job-1",
            json!({"state": "running", "n": 1}),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let key = s.store.key_of("job-1").unwrap();
    assert_eq!(key, format!("{}job-1", s.prefix));
    let mut conn = raw().await;
    let text: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(text, serde_json::to_string(&written).unwrap());
    let parsed: Record = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed, written);

    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 300_000, "PTTL {pttl}");
    // Every write refreshes the expiry.
    let _: () = redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(5_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    s.store
        .put(
            "job-1",
            json!({"state": "running", "n": 2}),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 5_000, "PTTL {pttl} after a write");
    // A state without TTL has no native expiry either.
    s.store
        .put("job-1", json!({"state": "forever"}), PutMode::Overwrite)
        .await
        .unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pttl, -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn natively_expired_records_leave_only_index_entries() {
    let Some(s) = setup("native_expiry").await else {
        return;
    };
    s.store
        .put("gone", json!({"state": "completed"}), PutMode::Overwrite)
        .await
        .unwrap();
    s.store
        .put("here", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();
    let mut stream = s
        .store
        .watch(WatchSelector::All, WatchOptions::default())
        .await
        .unwrap();
    // What Redis's own expiry does: the key vanishes, nothing else happens.
    let mut conn = raw().await;
    let _: () = redis::cmd("DEL")
        .arg(s.store.key_of("gone").unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(s.store.get("gone").await.unwrap().is_none());
    let listing = s.store.list(&ListFilter::all()).await.unwrap();
    let ids: Vec<&str> = listing.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["here"]);
    assert!(listing.errors.is_empty());
    assert_eq!(
        s.store.count_by_state().await.unwrap().get("completed"),
        None
    );
    let created = s
        .store
        .put("gone", json!({"state": "pending"}), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    let _: () = redis::cmd("DEL")
        .arg(s.store.key_of("gone").unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();

    let dry = s
        .store
        .cleanup(&CleanupOptions {
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(dry.leftovers_removed, 0);
    let report = s.store.cleanup(&CleanupOptions::default()).await.unwrap();
    assert!(report.ran);
    assert!(report.removed.is_empty());
    assert_eq!(report.leftovers_removed, 1);
    assert_eq!(report.kept, 1);
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{}.ids", s.prefix))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members, ["here"]);
    // The watcher hears of the removal through the cleanup.
    let mut state = HashMap::from([("gone".to_string(), 1), ("here".to_string(), 1)]);
    follow(&mut stream, &mut state, |s| !s.contains_key("gone")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resyncs_after_its_connection_is_killed() {
    let Some(s) = setup("watch_killed").await else {
        return;
    };
    let mut stream = s
        .store
        .watch(WatchSelector::All, WatchOptions::default())
        .await
        .unwrap();
    s.store
        .put("a", json!({"n": 1}), PutMode::Overwrite)
        .await
        .unwrap();
    let mut state = HashMap::new();
    follow(&mut stream, &mut state, |s| s.get("a") == Some(&1)).await;

    let mut conn = raw().await;
    let name = s.store.watch_connection_name().to_string();
    let ids = client_ids(&mut conn, &name).await;
    assert_eq!(ids.len(), 1, "one watch connection named {name}");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&ids[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(killed, 1);

    s.store
        .put("b", json!({"n": 1}), PutMode::Overwrite)
        .await
        .unwrap();
    s.store
        .put("a", json!({"n": 2}), PutMode::Overwrite)
        .await
        .unwrap();
    let mut resyncs = 0;
    let mut errors = 0;
    while resyncs == 0 || state.get("a") != Some(&2) || state.get("b") != Some(&1) {
        match step(&mut stream, &mut state).await {
            Seen::Change => {}
            Seen::Resync => resyncs += 1,
            Seen::Error => errors += 1,
        }
    }
    assert!(errors >= 1, "the lost connection was reported");

    // The new subscription carries writes made after the resync.
    let ids_after = client_ids(&mut conn, &name).await;
    assert_eq!(ids_after.len(), 1);
    assert_ne!(ids_after, ids);
    s.store
        .put("c", json!({"n": 1}), PutMode::Overwrite)
        .await
        .unwrap();
    follow(&mut stream, &mut state, |s| s.get("c") == Some(&1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_outlives_its_lease() {
    let Some(s) = setup("lock_renewal").await else {
        return;
    };
    let lease = Duration::from_millis(300);
    let held = s.store.try_lock("long", lease).await.unwrap();
    assert!(held.is_some());
    let key = format!("{}.lock:long", s.prefix);
    let mut conn = raw().await;
    let pttl = |mut conn: redis::aio::MultiplexedConnection| {
        let key = key.clone();
        async move {
            redis::cmd("PTTL")
                .arg(&key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    // Wait for a renewal: the remaining lease goes up again.
    let first = pttl(conn.clone()).await;
    assert!(first > 0);
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    let mut last = first;
    loop {
        let now = pttl(conn.clone()).await;
        assert!(now > 0, "the lock expired while held");
        if now > last {
            break;
        }
        last = now;
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease never renewed"
        );
        tokio::task::yield_now().await;
    }
    assert!(s.store.try_lock("long", lease).await.unwrap().is_none());
    drop(held);
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !exists {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "lock not released");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_values_are_reported_with_their_key() {
    let Some(s) = setup("corrupt").await else {
        return;
    };
    s.store
        .put("good", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();
    let key = s.store.key_of("bad").unwrap();
    let mut conn = raw().await;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg(format!("{}.ids", s.prefix))
        .arg("+inf")
        .arg("bad")
        .query_async(&mut conn)
        .await
        .unwrap();
    let error = s.store.get("bad").await.unwrap_err();
    assert!(
        matches!(&error, Error::Corrupt { id, location: syncstatus::Location::RedisKey(found), .. } if id == "bad" && found == &key),
        "{error:?}"
    );
    let error = s
        .store
        .put("bad", json!({}), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Corrupt { id, .. } if id == "bad"),
        "{error:?}"
    );
    let listing = s.store.list(&ListFilter::all()).await.unwrap();
    assert_eq!(listing.records.len(), 1);
    assert_eq!(listing.errors.len(), 1);
    let report = s.store.cleanup(&CleanupOptions::default()).await.unwrap();
    assert_eq!(report.errors.len(), 1);
    assert_eq!(report.errors[0].id.as_deref(), Some("bad"));
    assert!(s.store.delete("bad").await.unwrap());
    assert!(s.store.get("bad").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opened_by_url_with_a_prefix() {
    let Some(s) = setup("by_url").await else {
        return;
    };
    let encoded = s.prefix.replace(':', "%3A");
    let url = format!("{}?prefix={encoded}", redis_url());
    let store = syncstatus::open(&url).await.unwrap();
    assert_eq!(store.backend_name(), "redis");
    store
        .put("via-url", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();
    // The store built with the same prefix sees it.
    assert!(s.store.get("via-url").await.unwrap().is_some());
    let mut conn = raw().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(format!("{}via-url", s.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(exists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_backend_error() {
    let error = RedisStorage::open("redis://127.0.0.1:1/0")
        .await
        .unwrap_err();
    match &error {
        Error::Backend { store, source } => {
            assert_eq!(*store, "redis");
            assert!(std::error::Error::source(&**source).is_some(), "{error}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    let error = RedisStorage::open("http://nowhere").await.unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
}

/// Without a server a test passes, but says so where a person reads it (past libtest's
/// capture of `eprintln!`), rather than passing in silence.
#[test]
fn an_unreachable_server_is_reported_as_a_visible_skip() {
    let url = "redis://127.0.0.1:1/0";
    let stderr = skips::stderr_of_skipping_run(
        &std::env::current_exe().unwrap(),
        "check_get_missing_is_none",
        &[("SYNCSTATUS_REDIS_URL", url)],
    );
    let expected = format!("SKIPPED check_get_missing_is_none: Redis at {url} is unreachable");
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("SYNCSTATUS_REDIS_URL"), "{stderr}");
}

/// A TCP proxy in front of the Redis server that the test can take down (cutting every
/// connection and refusing new ones) and bring back: a server outage without stopping the
/// server other tests use.
struct Proxy {
    url: String,
    up: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Proxy {
        let info = redis::Client::open(redis_url().as_str())
            .unwrap()
            .get_connection_info()
            .clone();
        let redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            panic!("the proxy test needs a TCP redis URL");
        };
        let upstream = format!("{host}:{port}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "redis://{}/{}",
            listener.local_addr().unwrap(),
            info.redis_settings().db()
        );
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let up = up.clone();
            let connections = connections.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(std::sync::atomic::Ordering::SeqCst) {
                        continue;
                    }
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections.lock().unwrap().push(task.abort_handle());
                }
            }
        });
        Proxy {
            url,
            up,
            connections,
            accept,
        }
    }

    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_when_the_server_comes_back() {
    let Some(s) = setup("outage").await else {
        return;
    };
    let proxy = Proxy::start().await;
    let store = RedisStorage::builder(&proxy.url)
        .with_prefix(&s.prefix)
        .with_ttl(standard_ttl())
        .with_clock(Arc::new(s.clock.clone()))
        .build()
        .await
        .unwrap();
    let mut stream = store
        .watch(WatchSelector::All, WatchOptions::default())
        .await
        .unwrap();
    store
        .put("a", json!({"n": 1}), PutMode::Overwrite)
        .await
        .unwrap();
    let mut state = HashMap::new();
    follow(&mut stream, &mut state, |s| s.get("a") == Some(&1)).await;

    proxy.down();
    let error = store.get("a").await.unwrap_err();
    assert!(
        matches!(&error, Error::Backend { store: "redis", .. }),
        "{error:?}"
    );
    let error = store
        .put("a", json!({"n": 2}), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Backend { store: "redis", .. }),
        "{error:?}"
    );
    // The watch says it lost its connection.
    while !matches!(step(&mut stream, &mut state).await, Seen::Error) {}
    // Another machine writes meanwhile.
    s.store
        .put("b", json!({"n": 1}), PutMode::Overwrite)
        .await
        .unwrap();

    proxy.up();
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    let record = loop {
        match store.get("a").await {
            Ok(record) => break record,
            Err(error) => assert!(
                tokio::time::Instant::now() < deadline,
                "store not back within {EVENT_DEADLINE:?}: {error}"
            ),
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(record.unwrap().version, 1);
    // The watch resyncs, including what was written during the outage, and goes on.
    let mut resynced = false;
    while !resynced || state.get("b") != Some(&1) {
        resynced |= matches!(step(&mut stream, &mut state).await, Seen::Resync);
    }
    store
        .put("a", json!({"n": 2}), PutMode::Overwrite)
        .await
        .unwrap();
    follow(&mut stream, &mut state, |s| s.get("a") == Some(&2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_watch_closes_its_connection() {
    let Some(s) = setup("watch_dropped").await else {
        return;
    };
    let name = s.store.watch_connection_name().to_string();
    let mut conn = raw().await;
    check_last_watch_stops_its_feed(&s.store, async || client_ids(&mut conn, &name).await.len())
        .await;
}

/// Set for the child process of [`another_process_shares_the_store`]: the prefix to write under.
const CHILD_PREFIX: &str = "SYNCSTATUS_TEST_REDIS_CHILD_PREFIX";
const UPDATES_PER_PROCESS: u64 = 50;

/// The other process: increments the shared counter. Does nothing unless started by
/// [`another_process_shares_the_store`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_writer() {
    let Ok(prefix) = std::env::var(CHILD_PREFIX) else {
        return;
    };
    let url = format!("{}?prefix={}", redis_url(), prefix.replace(':', "%3A"));
    let store = syncstatus::open(&url).await.unwrap();
    for _ in 0..UPDATES_PER_PROCESS {
        store
            .update_with("shared", |current| {
                let n = current.map_or(0, |r| r.status["n"].as_u64().unwrap());
                Ok(json!({"n": n + 1}))
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_shares_the_store() {
    let Some(s) = setup("two_processes").await else {
        return;
    };
    let mut stream = s
        .store
        .watch(WatchSelector::ids(["shared"]), WatchOptions::default())
        .await
        .unwrap();
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_PREFIX, &s.prefix)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..UPDATES_PER_PROCESS {
        s.store
            .update_with("shared", |current| {
                let n = current.map_or(0, |r| r.status["n"].as_u64().unwrap());
                Ok(json!({"n": n + 1}))
            })
            .await
            .unwrap();
    }
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "the child process failed");
    let record = s.store.get("shared").await.unwrap().unwrap();
    assert_eq!(record.status, json!({"n": 2 * UPDATES_PER_PROCESS}));
    assert_eq!(record.version, 2 * UPDATES_PER_PROCESS);
    // The watch saw the final state, whichever process wrote it.
    let mut state = HashMap::new();
    follow(&mut stream, &mut state, |s| {
        s.get("shared") == Some(&(2 * UPDATES_PER_PROCESS))
    })
    .await;
}

/// On Redis 7 and later an update writes one key: the expiry time is the key's own (`PXAT`
/// at the store clock's expiry, read back with `PEXPIRETIME`) and the index entry, written
/// when the id was new, is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_on_redis_7_keep_the_expiry_in_the_key_and_leave_the_index() {
    let Some(s) = setup("pexpiretime").await else {
        return;
    };
    let mut conn = raw().await;
    let version: String = redis::cmd("EVAL")
        .arg("return redis.REDIS_VERSION or ''")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    if version.is_empty() {
        // Before Redis 7 the index score holds the expiry time, as the write script's
        // other branch does.
        return;
    }
    let key = s.store.key_of("job").unwrap();
    let index = format!("{}.ids", s.store.key_prefix());
    let mut written = None;
    for n in 0..3 {
        s.clock.advance(Duration::from_secs(7));
        let record = s
            .store
            .put(
                "job",
                json!({"state": "running", "n": n}),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        let expires_at: i64 = redis::cmd("PEXPIRETIME")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let ttl = standard_ttl().ttl_for(&record.status).unwrap();
        assert_eq!(
            expires_at as u64,
            record.updated_at.as_millis() + ttl.as_millis() as u64
        );
        let score: String = redis::cmd("ZSCORE")
            .arg(&index)
            .arg("job")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(score, "inf", "the index entry of a new id, never rewritten");
        written = Some(record);
    }
    assert_eq!(written.unwrap().version, 3);
    // Expired by the store's clock while Redis still holds the key: a write starts again.
    s.clock.advance(Duration::from_secs(3600));
    let again = s
        .store
        .put("job", json!({"state": "running"}), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(again.version, 1);
}
