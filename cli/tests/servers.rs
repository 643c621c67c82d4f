//! The same CLI commands against Redis and PostgreSQL (`--store redis://…`, `postgres://…`),
//! each test under its own key prefix or schema. When the server is unreachable each test
//! prints `SKIPPED <test>: ...` and passes, unless `CI` or `SYNCSTATUS_REQUIRE_SERVICES` is set.

// The library's tests skip the same way; one copy of the helper for both packages.
#[path = "../../tests/skips/mod.rs"]
mod skips;

use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("cli_{name}_{}_{nanos}", std::process::id())
}

fn run(store: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_syncstatus"))
        .env_remove("SYNCSTATUS_STORE")
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

fn ok(store: &str, args: &[&str]) -> String {
    let output = run(store, args);
    assert!(
        output.status.success(),
        "{args:?} failed with {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn ok_json(store: &str, args: &[&str]) -> Value {
    let text = ok(store, args);
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{args:?}: {error} in {text}"))
}

/// Whether the store answers; fails instead of skipping where the servers are required.
fn reachable(store: &str, what: &str, variable: &str) -> bool {
    let output = run(store, &["ls", "--json"]);
    if output.status.success() {
        return true;
    }
    let reason = String::from_utf8_lossy(&output.stderr);
    skips::skip(
        &format!(
            "{what} at {} is unreachable ({})",
            skips::redacted(store),
            reason.trim()
        ),
        &format!("start it, or point {variable} at one"),
    );
    false
}

/// Without a server a test passes, but says so where a person reads it (past libtest's
/// capture of `eprintln!`), rather than passing in silence.
#[test]
fn an_unreachable_server_is_reported_as_a_visible_skip() {
    let exe = std::env::current_exe().unwrap();
    let stderr = skips::stderr_of_skipping_run(
        &exe,
        "commands_work_against_redis",
        &[("SYNCSTATUS_REDIS_URL", "redis://127.0.0.1:1")],
    );
    assert!(
        stderr.contains("SKIPPED commands_work_against_redis: Redis at redis://127.0.0.1:1"),
        "{stderr}"
    );
    let stderr = skips::stderr_of_skipping_run(
        &exe,
        "commands_work_against_postgres",
        &[(
            "SYNCSTATUS_POSTGRES_URL",
            "postgres://postgres:hunter2@127.0.0.1:1/test",
        )],
    );
    assert!(
        stderr.contains(
            "SKIPPED commands_work_against_postgres: PostgreSQL at postgres://postgres:***@127.0.0.1:1/test"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// Every command a user runs, against one store.
fn round_trip(store: &str) {
    assert_eq!(
        ok(
            store,
            &["set", "job-1", "--state", "running", "--progress", "1/4"]
        )
        .trim(),
        "1"
    );
    assert_eq!(
        ok(
            store,
            &["update", "job-1", "--progress", "2/4", "--heartbeat"]
        )
        .trim(),
        "2"
    );
    let conflict = run(
        store,
        &["update", "job-1", "--if-version", "1", "--progress", "3/4"],
    );
    assert_eq!(
        conflict.status.code(),
        Some(4),
        "a stale --if-version is a conflict"
    );
    let record = ok_json(store, &["get", "job-1", "--json"]);
    assert_eq!(record["version"], 2);
    assert_eq!(record["status"]["progress"]["done"], 2);
    ok(store, &["set", "job-2", "--state", "completed"]);
    let running = ok_json(store, &["ls", "--state", "running", "--json"]);
    let ids: Vec<&str> = running
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["job-1"]);
    let stats = ok_json(store, &["stats", "--json"]);
    assert_eq!(stats["total"], 2);
    assert_eq!(stats["counts"]["running"], 1);
    // Stale after zero seconds: the running job is recovered back to pending.
    let recovered = ok_json(store, &["recover", "--stale-after", "0s", "--json"]);
    assert_eq!(recovered["recovered"][0]["id"], "job-1");
    assert_eq!(recovered["recovered"][0]["action"], "requeued");
    let record = ok_json(store, &["get", "job-1", "--json"]);
    assert_eq!(record["status"]["state"], "pending");
    assert_eq!(record["status"]["attempt"], 2);
    let cleaned = ok_json(store, &["cleanup", "--ttl", "0s", "--json"]);
    let mut removed: Vec<&str> = cleaned["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    removed.sort();
    assert_eq!(removed, ["job-1", "job-2"]);
    assert_eq!(
        run(store, &["get", "job-1"]).status.code(),
        Some(3),
        "gone after cleanup"
    );
    ok(store, &["set", "job-3"]);
    ok(store, &["rm", "job-3"]);
    assert_eq!(run(store, &["rm", "job-3"]).status.code(), Some(3));
    assert_eq!(ok_json(store, &["ls", "--json"]), Value::Array(Vec::new()));
}

#[test]
fn commands_work_against_redis() {
    let base =
        std::env::var("SYNCSTATUS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let store = format!("{base}?prefix={}:", unique("redis"));
    if reachable(&store, "Redis", "SYNCSTATUS_REDIS_URL") {
        round_trip(&store);
    }
}

#[test]
fn commands_work_against_postgres() {
    let base = std::env::var("SYNCSTATUS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = unique("pg");
    let store = format!("{base}?schema={schema}");
    if !reachable(&store, "PostgreSQL", "SYNCSTATUS_POSTGRES_URL") {
        return;
    }
    let dropped = DropSchema { url: base, schema };
    round_trip(&store);
    drop(dropped);
}

/// Drops the test's schema at the end, also when the test fails.
struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let url = self.url.clone();
        let schema = self.schema.clone();
        // A fresh runtime on its own thread: this may run while a test panics.
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                let connection = tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await?;
                drop(client);
                let _ = connection.await;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("could not drop schema {}", self.schema);
        }
    }
}
