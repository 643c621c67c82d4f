//! `syncstatus cancel`, `syncstatus retry` and the history in `get`, against a file store that
//! a worker runtime in this test process works on: cancel comes from another process.

// Only the waits of the shared file are used here, not all it offers.
#[allow(dead_code)]
#[path = "../../tests/support/status_watch.rs"]
mod status_watch;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use syncstatus::jobs::{self, JobHandle, Runtime, RuntimeConfig};
use syncstatus::{DynSyncStorage, Error, FileStorage, Progress, State, SyncStatus};

use status_watch::wait_for_status;

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_syncstatus"))
        .env_remove("SYNCSTATUS_STORE")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run syncstatus")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let output = run(dir, args);
    assert!(
        output.status.success(),
        "{args:?} failed with {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn fails(dir: &Path, args: &[&str], code: i32) -> String {
    let output = run(dir, args);
    assert_eq!(output.status.code(), Some(code), "{args:?}: {output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn cancel_and_retry_follow_the_job_states() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["set", "job", "--state", "pending"]);
    assert_eq!(ok(d, &["cancel", "job"]), "job: cancelled (version 2)\n");
    let again = fails(d, &["cancel", "job"], 4);
    assert!(
        again.contains("cannot cancel `job`: it is cancelled"),
        "{again}"
    );
    let retried: Value = serde_json::from_str(&ok(d, &["retry", "job", "--json"])).unwrap();
    assert_eq!(retried["status"]["state"], "pending");
    assert_eq!(retried["status"]["attempt"], json!(2));
    let not_failed = fails(d, &["retry", "job"], 4);
    assert!(
        not_failed.contains("cannot retry `job`: it is pending"),
        "{not_failed}"
    );
    fails(d, &["cancel", "nobody"], 3);
    fails(d, &["retry", "../x"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_another_process_stops_a_running_job_and_get_shows_its_history() {
    let dir = tempfile::tempdir().unwrap();
    let store: DynSyncStorage = Arc::new(FileStorage::open(dir.path()).unwrap());
    let job = |job: JobHandle| async move {
        let mut done = 0;
        loop {
            done += 1;
            match job.set_progress(Progress::new(done, 1_000_000)).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(Error::Cancelled { .. }) => {
                    return Err::<Value, jobs::BoxError>("cancelled".into());
                }
                Err(other) => return Err(other.into()),
            }
        }
    };
    let config = RuntimeConfig::default()
        .with_stale_after(Duration::from_secs(30))
        .with_heartbeat_every(Duration::from_millis(100));
    let runtime = Runtime::start(store.clone(), config, job);
    runtime.submit("busy", SyncStatus::pending()).await.unwrap();
    wait_for_status(&store, "busy", "progress", |s| {
        s.progress.is_some_and(|p| p.done >= 3)
    })
    .await;

    let dir_path = dir.path().to_path_buf();
    let said = tokio::task::spawn_blocking(move || ok(&dir_path, &["cancel", "busy"]))
        .await
        .unwrap();
    assert!(said.contains("cancel requested"), "{said}");
    wait_for_status(&store, "busy", "the cancel", |s| {
        s.state == State::Cancelled
    })
    .await;
    runtime.shutdown().await;

    let dir_path = dir.path().to_path_buf();
    let view = tokio::task::spawn_blocking(move || ok(&dir_path, &["get", "busy"]))
        .await
        .unwrap();
    assert!(view.contains("state:"), "{view}");
    let history = view
        .lines()
        .skip_while(|line| *line != "history:")
        .collect::<Vec<_>>();
    assert_eq!(history.len(), 2, "{view}");
    assert!(
        history[1].contains("#1") && history[1].contains("cancelled"),
        "{view}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_in_get_ls_stats_cancel_and_retry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let store: DynSyncStorage = Arc::new(FileStorage::open(&d).unwrap());
    let children = (0..3)
        .map(|_| SyncStatus::pending().with_progress(Progress::new(0, 4)))
        .collect();
    jobs::submit_batch(&*store, "imp", children, jobs::FailurePolicy::Continue)
        .await
        .unwrap();
    ok(&d, &["set", "other", "--state", "pending"]);
    let cli = |args: &'static [&'static str]| {
        let d = d.clone();
        tokio::task::spawn_blocking(move || ok(&d, args))
    };

    let get = cli(&["get", "imp"]).await.unwrap();
    assert!(get.contains("children:"), "{get}");
    assert!(get.contains("3 (0 completed, 3 pending)"), "{get}");
    assert_eq!(get.matches('[').count(), 1, "one bar: {get}");
    assert!(get.contains("0/12"), "{get}");
    let ls = cli(&["ls"]).await.unwrap();
    assert!(ls.contains("imp ") && ls.contains("other"), "{ls}");
    assert!(!ls.contains("imp.1"), "children folded: {ls}");
    let children = cli(&["ls", "--prefix", "imp."]).await.unwrap();
    assert_eq!(children.lines().count(), 4, "{children}");
    let stats = cli(&["stats"]).await.unwrap();
    assert!(stats.contains("batches: 1\n  pending: 1\n"), "{stats}");
    assert!(stats.contains("  pending: 4\n"), "{stats}");

    let cancelled = cli(&["cancel", "imp"]).await.unwrap();
    assert!(
        cancelled.starts_with("imp: batch cancelled, 0 of 3 completed"),
        "{cancelled}"
    );
    let retried = cli(&["retry", "imp"]).await.unwrap();
    assert!(retried.starts_with("imp: batch pending"), "{retried}");
    let runtime = Runtime::start(
        store.clone(),
        RuntimeConfig::default(),
        |job: JobHandle| async move {
            job.set_progress(Progress::new(4, 4)).await?;
            Ok::<Value, jobs::BoxError>(json!("done"))
        },
    );
    wait_for_status(&store, "imp", "completion", |s| s.state == State::Completed).await;
    runtime.shutdown().await;
    let get = cli(&["get", "imp"]).await.unwrap();
    assert!(
        get.contains("3 (3 completed)") && get.contains("12/12"),
        "{get}"
    );
}
