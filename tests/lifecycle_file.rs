//! Lifecycle across processes on one directory, and the Sweeper's handle contract.
//!
//! Multi-process tests re-run this test binary as children (`child` below, with the harness
//! of `support::child`).

mod support;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use syncstatus::{
    CleanupOptions, CleanupReport, DynSyncStorage, Error, FileStorage, Idempotency,
    InProgressPolicy, ListFilter, ManualClock, MemoryStorage, PutMode, RunError, Sweeper,
    SweeperConfig, SyncStorage, Timestamp, TtlPolicy,
};
use tokio::sync::Notify;

use support::child::{self, Child};
use support::forwarding::{Hooked, Hooks};

/// Entry point of the child processes; does nothing when run as an ordinary test.
#[test]
fn child() {
    child::play(|role, dir| async move {
        let store = FileStorage::builder(&dir)
            .with_lazy_sweep(None)
            .build()
            .unwrap();
        match role.as_str() {
            "sweep" => {
                for _ in 0..5 {
                    let report = store.cleanup(&CleanupOptions::default()).await.unwrap();
                    child::say(serde_json::to_string(&report).unwrap());
                }
            }
            "idempotent" => {
                child::say("ready");
                child::read_command();
                let runs = dir.join("..").join("runs.log");
                let idempotency = Idempotency::new(Arc::new(store));
                let result: Value = idempotency
                    .run("shared-key", Duration::from_secs(300), async move {
                        let mut log = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&runs)
                            .unwrap();
                        writeln!(log, "{}", std::process::id()).unwrap();
                        // The work takes a while, so the other process finds it in progress.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, std::io::Error>(json!({"by": std::process::id()}))
                    })
                    .await
                    .unwrap();
                child::say(result);
            }
            "claim-and-hang" => {
                let idempotency =
                    Idempotency::new(Arc::new(store)).with_lease(Duration::from_secs(30));
                let _: Result<Value, RunError<std::io::Error>> = idempotency
                    .run("crashy", Duration::from_secs(300), async {
                        child::say("working");
                        std::future::pending().await
                    })
                    .await;
            }
            other => panic!("unknown child role {other}"),
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sweeping_at_once_remove_each_record_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    const EXPIRED: usize = 300;
    // Written an hour ago by the clock of the writer: expired for everyone now.
    let past = ManualClock::new(Timestamp::from_millis(
        Timestamp::now().as_millis() - 3_600_000,
    ));
    let writer = FileStorage::builder(dir.path())
        .with_clock(Arc::new(past))
        .with_lazy_sweep(None)
        .build()
        .unwrap();
    for i in 0..EXPIRED {
        writer
            .put(
                &format!("old-{i:03}"),
                json!({"state": "completed"}),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        // The files' times say an hour ago too: sweeps skip files written more recently
        // than the shortest TTL without reading them.
        std::fs::File::options()
            .write(true)
            .open(dir.path().join(format!("old-{i:03}.json")))
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
    }
    let fresh = FileStorage::builder(dir.path())
        .with_lazy_sweep(None)
        .build()
        .unwrap();
    fresh
        .put("fresh", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();

    let children: Vec<Child> = (0..4)
        .map(|_| Child::spawn("child", "sweep", dir.path(), &[]))
        .collect();
    let mut removed = Vec::new();
    let mut ran = 0;
    for child in children {
        while let Some(line) = child.next_line() {
            let report: Value = serde_json::from_str(&line).unwrap();
            if report["ran"] == true {
                ran += 1;
            }
            for id in report["removed"].as_array().unwrap() {
                removed.push(id.as_str().unwrap().to_string());
            }
        }
        child.finish();
    }
    assert!(ran >= 1);
    let total = removed.len();
    removed.sort();
    removed.dedup();
    assert_eq!(removed.len(), total, "a record was reported removed twice");
    assert_eq!(total, EXPIRED, "the reports add up to every expired record");
    let left = fresh.list(&ListFilter::all()).await.unwrap();
    let ids: Vec<&str> = left.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["fresh"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_run_the_work_of_one_key_once() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    FileStorage::open(&dir).unwrap();
    let mut children: Vec<Child> = (0..2)
        .map(|_| Child::spawn("child", "idempotent", &dir, &[]))
        .collect();
    for child in &children {
        child.expect("ready");
    }
    // Both children are waiting: let them go at once.
    for child in &mut children {
        child.send("go");
    }
    let results: Vec<String> = children.iter().map(Child::recv).collect();
    for child in children {
        child.finish();
    }
    assert_eq!(results[0], results[1], "both callers get the one result");
    let runs = std::fs::read_to_string(root.path().join("runs.log")).unwrap();
    assert_eq!(
        runs.lines().count(),
        1,
        "the work ran more than once: {runs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_blocks_its_key_only_until_the_lease_ends() {
    let dir = tempfile::tempdir().unwrap();
    let child = Child::spawn("child", "claim-and-hang", dir.path(), &[]);
    child.expect("working");
    child.kill_hard();

    let clock = ManualClock::starting_now();
    let store = FileStorage::builder(dir.path())
        .with_clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    let idempotency = Idempotency::new(Arc::new(store)).with_lease(Duration::from_secs(30));
    let refused = idempotency
        .clone()
        .with_in_progress(InProgressPolicy::Reject)
        .run("crashy", Duration::from_secs(60), async {
            Ok::<_, std::io::Error>(1)
        })
        .await;
    assert!(
        matches!(refused, Err(RunError::Store(Error::InProgress { .. }))),
        "{refused:?}"
    );
    clock.advance(Duration::from_secs(31));
    let result: u32 = idempotency
        .run("crashy", Duration::from_secs(60), async {
            Ok::<_, std::io::Error>(2)
        })
        .await
        .unwrap();
    assert_eq!(result, 2);
}

/// Hooks that make a cleanup wait for the test's permission, to catch a sweep in progress.
#[derive(Debug, Default)]
struct SlowCleanup {
    entered: Notify,
    release: Notify,
    finished: AtomicBool,
    cleanups: AtomicUsize,
}

#[async_trait]
impl Hooks for SlowCleanup {
    async fn cleanup(
        &self,
        inner: &DynSyncStorage,
        options: &CleanupOptions,
    ) -> syncstatus::Result<CleanupReport> {
        self.cleanups.fetch_add(1, Ordering::SeqCst);
        self.entered.notify_one();
        self.release.notified().await;
        let report = inner.cleanup(options).await;
        self.finished.store(true, Ordering::SeqCst);
        report
    }
}

fn slow_cleanup() -> Arc<Hooked<SlowCleanup>> {
    Arc::new(Hooked::new(
        Arc::new(MemoryStorage::default()),
        SlowCleanup::default(),
    ))
}

#[tokio::test(start_paused = true)]
async fn sweeper_waits_its_initial_delay_then_sweeps_on_interval() {
    let clock = ManualClock::starting_now();
    let memory = MemoryStorage::with_options(
        TtlPolicy::uniform(Duration::from_secs(60)),
        Arc::new(clock.clone()),
    );
    memory
        .put("old", json!({"state": "completed"}), PutMode::Overwrite)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(120));
    let store: DynSyncStorage = Arc::new(memory.clone());
    let started = tokio::time::Instant::now();
    let mut sweeper = Sweeper::spawn(store, SweeperConfig::default());
    let report = sweeper.next_report().await.unwrap();
    assert!(
        started.elapsed() >= SweeperConfig::default().initial_delay,
        "swept before the initial delay"
    );
    assert!(report.ran);
    assert_eq!(report.removed, ["old"]);
    memory
        .put("later", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(120));
    let report = sweeper.next_report().await.unwrap();
    assert_eq!(report.removed, ["later"]);
    sweeper.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_only_after_the_sweep_in_progress() {
    let store = slow_cleanup();
    let sweeper = Sweeper::spawn(
        store.clone(),
        SweeperConfig {
            initial_delay: Duration::ZERO,
            ..SweeperConfig::default()
        },
    );
    store.hooks.entered.notified().await;
    let shutdown = tokio::spawn(sweeper.shutdown());
    // The shutdown must still be waiting: the sweep has not been released.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!shutdown.is_finished(), "shutdown returned during a sweep");
    store.hooks.release.notify_one();
    shutdown.await.unwrap();
    assert!(
        store.hooks.finished.load(Ordering::SeqCst),
        "shutdown returned before the sweep finished"
    );
    assert_eq!(
        store.hooks.cleanups.load(Ordering::SeqCst),
        1,
        "no sweep after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_sweeper_stops_its_task() {
    let store = slow_cleanup();
    let sweeper = Sweeper::spawn(store.clone(), SweeperConfig::default());
    assert_eq!(Arc::strong_count(&store), 2, "the task holds the store");
    drop(sweeper);
    // The aborted task drops its future, and with it the store; wait for that, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&store) > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweeper task outlived its handle"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(store.hooks.cleanups.load(Ordering::SeqCst), 0);
}

/// The README's idempotency example, on its store settings, with time moved on: within the
/// hour it was given the work runs once, also past the store's default 5-minute TTL.
#[tokio::test]
async fn the_readme_idempotency_example_runs_its_work_once_within_the_hour() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let ttl = TtlPolicy::default().with_state("idempotency-done", Some(Duration::from_secs(3600)));
    let store: DynSyncStorage = Arc::new(
        FileStorage::builder(dir.path())
            .with_ttl(ttl)
            .with_clock(Arc::new(clock.clone()))
            .build()
            .unwrap(),
    );
    let runs = Arc::new(AtomicUsize::new(0));
    let charge = || {
        let runs = runs.clone();
        async move {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            Ok::<_, std::io::Error>(format!("charged (run {n})"))
        }
    };
    let idempotency = Idempotency::new(store.clone());
    let hour = Duration::from_secs(3600);
    let receipt: String = idempotency
        .run("charge-order-42", hour, charge())
        .await
        .unwrap();
    assert_eq!(receipt, "charged (run 1)");
    clock.advance(Duration::from_secs(6 * 60));
    let again: String = idempotency
        .run("charge-order-42", hour, charge())
        .await
        .unwrap();
    assert_eq!(again, "charged (run 1)");
    clock.advance(Duration::from_secs(50 * 60));
    let still: String = idempotency
        .run("charge-order-42", hour, charge())
        .await
        .unwrap();
    assert_eq!(still, "charged (run 1)");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Past the hour the promise is over: it runs again.
    clock.advance(Duration::from_secs(5 * 60));
    let later: String = idempotency
        .run("charge-order-42", hour, charge())
        .await
        .unwrap();
    assert_eq!(later, "charged (run 2)");
}
