//! The conformance suite on `PostgresStorage`, and the PostgreSQL store's own behaviour.
//!
//! Needs a server: `SYNCSTATUS_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Each test works in a schema of its own, dropped when the test ends. Without a server each
//! test prints `SKIPPED <test>: ...` and passes, unless `CI` or `SYNCSTATUS_REQUIRE_SERVICES`
//! is set.

#![cfg(feature = "postgres")]

mod conformance;
mod jobs;
mod lifecycle;
mod skips;
mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use conformance::{EVENT_DEADLINE, Fixture, follow_until, standard_ttl};
use futures_util::StreamExt;
use serde_json::json;
use support::watch_feed::check_last_watch_stops_its_feed;
use syncstatus::postgres::PostgresStorage;
use syncstatus::{
    CleanupOptions, Error, ListFilter, ManualClock, PutMode, SyncStorage, SyncStorageExt,
    WatchEvent, WatchOptions, WatchSelector,
};
use tokio_postgres::NoTls;

fn server_url() -> String {
    std::env::var("SYNCSTATUS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Without a server a test passes, but says so where a person reads it (past libtest's
/// capture of `eprintln!`), rather than passing in silence; a password in the URL is not shown.
#[test]
fn an_unreachable_server_is_reported_as_a_visible_skip() {
    let stderr = skips::stderr_of_skipping_run(
        &std::env::current_exe().unwrap(),
        "check_get_missing_is_none",
        &[(
            "SYNCSTATUS_POSTGRES_URL",
            "postgres://postgres:hunter2@127.0.0.1:1/test",
        )],
    );
    let expected = "SKIPPED check_get_missing_is_none: PostgreSQL at \
                    postgres://postgres:***@127.0.0.1:1/test is unreachable";
    assert!(stderr.contains(expected), "{stderr}");
    assert!(stderr.contains("SYNCSTATUS_POSTGRES_URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// A connection for the test's own SQL, or `None` (after saying so) when there is no server
/// and none is required.
async fn admin() -> Option<tokio_postgres::Client> {
    let url = server_url();
    let connected =
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(&url, NoTls)).await;
    match connected {
        Ok(Ok((client, connection))) => {
            tokio::spawn(connection);
            Some(client)
        }
        failure => {
            let reason = match failure {
                Ok(Err(error)) => match std::error::Error::source(&error) {
                    Some(cause) => format!("{error}: {cause}"),
                    None => error.to_string(),
                },
                _ => "connection timed out".to_string(),
            };
            skips::skip(
                &format!(
                    "PostgreSQL at {} is unreachable ({reason})",
                    skips::redacted(&url)
                ),
                "start PostgreSQL, or point SYNCSTATUS_POSTGRES_URL at one",
            );
            None
        }
    }
}

/// A schema name unique to this test, process and call.
fn unique_schema(name: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let short: String = name
        .trim_start_matches("check_")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(32)
        .collect();
    format!("ss_{short}_{}_{n}", std::process::id())
}

/// Drops the schema when dropped. The drop runs on a thread of its own with its own runtime,
/// since a destructor cannot await and may run inside the test's runtime.
struct DropSchema(String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&server_url(), NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not drop schema {}: {error}", self.0),
            Err(_) => eprintln!(
                "could not drop schema {}: the cleanup thread panicked",
                self.0
            ),
        }
    }
}

async fn store_in(schema: &str, clock: &ManualClock) -> PostgresStorage {
    PostgresStorage::builder(server_url())
        .with_table("jobs")
        .with_schema(schema)
        .unwrap()
        .with_ttl(standard_ttl())
        .with_clock(Arc::new(clock.clone()))
        .build()
        .await
        .unwrap()
}

async fn make(name: &str) -> Option<Fixture> {
    admin().await?;
    let schema = unique_schema(name);
    let guard = DropSchema(schema.clone());
    let clock = ManualClock::starting_now();
    let store = store_in(&schema, &clock).await;
    let other = store_in(&schema, &clock).await;
    let seeding = schema.clone();
    Some(Fixture {
        store: Arc::new(store),
        other: Arc::new(other),
        clock,
        seed_max_version: Some(Box::new(move |id| {
            let schema = seeding.clone();
            Box::pin(async move {
                // A row at the top of the bigint column, made by hand: no store API gets there.
                let client = admin().await.unwrap();
                client
                    .execute(
                        &format!(
                            "INSERT INTO \"{schema}\".jobs (id, version, created_at, updated_at, status)
                            VALUES ($1, $2, 0, 0, '{{\"state\": \"running\"}}')"
                        ),
                        &[&id, &i64::MAX],
                    )
                    .await
                    .unwrap();
                i64::MAX as u64
            })
        })),
        _guard: Box::new(guard),
    })
}

all_conformance_tests!(make);
all_lifecycle_tests!(make);
all_jobs_tests!(make);

/// A schema of its own, an admin connection and a clock, for the tests below.
async fn setup(name: &str) -> Option<(tokio_postgres::Client, DropSchema, ManualClock)> {
    let admin = admin().await?;
    Some((
        admin,
        DropSchema(unique_schema(name)),
        ManualClock::starting_now(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_by_url_with_table_and_schema() {
    let Some((admin, schema, _clock)) = setup("open_url").await else {
        return;
    };
    let url = format!("{}?schema={}&table=from_url", server_url(), schema.0);
    let store = syncstatus::open(&url).await.unwrap();
    assert_eq!(store.backend_name(), "postgres");
    store
        .put("via-url", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();
    let row = admin
        .query_one(
            &format!(
                "SELECT version, state, status FROM \"{}\".from_url WHERE id = 'via-url'",
                schema.0
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("running"));
    assert_eq!(
        row.get::<_, tokio_postgres::types::Json<serde_json::Value>>(2)
            .0,
        json!({"state": "running"})
    );
}

#[tokio::test]
async fn refuses_bad_names_before_connecting() {
    // These fail before any connection is attempted, so they need no server.
    for bad in ["a-b", "x\"y", "a;drop table t", "", "1abc", "pg_x", "é"] {
        assert!(
            matches!(
                PostgresStorage::builder(server_url()).with_schema(bad),
                Err(Error::Config(_))
            ),
            "schema {bad:?} was accepted"
        );
        let built = PostgresStorage::builder(server_url())
            .with_table(bad)
            .build()
            .await;
        assert!(
            matches!(built, Err(Error::Config(_))),
            "table {bad:?} was accepted: {built:?}"
        );
    }
    let built = PostgresStorage::open("postgres://postgres@127.0.0.1:1/test?table=bad-name").await;
    assert!(matches!(built, Err(Error::Config(_))), "{built:?}");
    let built = PostgresStorage::builder(server_url())
        .with_table("x".repeat(49))
        .build()
        .await;
    assert!(matches!(built, Err(Error::Config(_))), "{built:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_onto_expired_row_starts_new_incarnation() {
    let Some((_admin, schema, clock)) = setup("incarnation").await else {
        return;
    };
    let store = store_in(&schema.0, &clock).await;
    let first = store
        .put("job", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();
    store
        .put("job", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(301));
    let error = store
        .put("job", json!({}), PutMode::Update(2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::VersionConflict {
                expected: 2,
                found: None,
                ..
            }
        ),
        "{error:?}"
    );
    let again = store
        .put("job", json!({"state": "pending"}), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(again.version, 1);
    assert_eq!(again.created_at, syncstatus::Clock::now(&clock));
    assert_ne!(again.created_at, first.created_at);
    assert_eq!(store.get("job").await.unwrap(), Some(again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_row_is_reported_and_hides_nothing() {
    let Some((admin, schema, clock)) = setup("corrupt").await else {
        return;
    };
    let store = store_in(&schema.0, &clock).await;
    store
        .put("good", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();
    // A number jsonb holds but no f64 can: the status cannot be decoded.
    admin
        .batch_execute(&format!(
            "INSERT INTO \"{s}\".jobs (id, version, created_at, updated_at, status)
             VALUES ('huge', 1, 0, 0, '{{\"n\": 1e400}}'),
                    ('negative', -3, 0, 0, '{{}}')",
            s = schema.0
        ))
        .await
        .unwrap();
    for id in ["huge", "negative"] {
        match store.get(id).await {
            Err(Error::Corrupt {
                id: found,
                location,
                ..
            }) => {
                assert_eq!(found, id);
                assert_eq!(
                    location,
                    syncstatus::Location::PostgresRow {
                        table: format!("{}.jobs", schema.0)
                    }
                );
            }
            other => panic!("expected corrupt {id}, got {other:?}"),
        }
    }
    let listing = store.list(&ListFilter::all()).await.unwrap();
    let ids: Vec<&str> = listing.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["good"]);
    let mut bad: Vec<String> = listing
        .errors
        .iter()
        .map(|error| match error {
            Error::Corrupt { id, .. } => id.clone(),
            other => panic!("expected corrupt, got {other:?}"),
        })
        .collect();
    bad.sort();
    assert_eq!(bad, ["huge", "negative"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_cleanups_remove_every_expired_row_exactly_once() {
    let Some((_admin, schema, clock)) = setup("racing_cleanup").await else {
        return;
    };
    let stores = [
        store_in(&schema.0, &clock).await,
        store_in(&schema.0, &clock).await,
    ];
    const ROUNDS: usize = 5;
    const EXPIRED: usize = 300;
    let mut expected = BTreeSet::new();
    let mut all_removed = Vec::new();
    let mut skipped = 0;
    for round in 0..ROUNDS {
        for i in 0..EXPIRED {
            let id = format!("r{round}-{i}");
            stores[i % 2]
                .put(&id, json!({"state": "completed"}), PutMode::Overwrite)
                .await
                .unwrap();
            expected.insert(id);
        }
        clock.advance(Duration::from_secs(301));
        stores[0]
            .put(
                &format!("live-{round}"),
                json!({"state": "running"}),
                PutMode::Overwrite,
            )
            .await
            .unwrap();
        let mut sweepers = Vec::new();
        for store in stores.iter().cycle().take(8) {
            let store = store.clone();
            sweepers.push(tokio::spawn(async move {
                let mut reports = Vec::new();
                for _ in 0..4 {
                    reports.push(store.cleanup(&CleanupOptions::default()).await.unwrap());
                }
                reports
            }));
        }
        for sweeper in sweepers {
            for report in sweeper.await.unwrap() {
                assert!(report.errors.is_empty(), "{:?}", report.errors);
                if !report.ran {
                    skipped += 1;
                    assert!(report.removed.is_empty());
                }
                all_removed.extend(report.removed);
            }
        }
        // The live record of this round survives every sweep.
        let live = stores[1].get(&format!("live-{round}")).await.unwrap();
        assert!(live.is_some(), "a live record was swept");
        clock.advance(Duration::from_secs(301));
        expected.insert(format!("live-{round}"));
        // Swept in the next round (it expires now), except the last one: swept below.
    }
    let last = stores[1].cleanup(&CleanupOptions::default()).await.unwrap();
    all_removed.extend(last.removed);
    let unique: BTreeSet<String> = all_removed.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        all_removed.len(),
        "a row was reported removed twice"
    );
    assert_eq!(unique, expected);
    eprintln!("{skipped} of {} sweeps found the lock taken", ROUNDS * 32);
    assert!(
        stores[0]
            .list(&ListFilter::all())
            .await
            .unwrap()
            .records
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_starting_at_once_migrate_one_table() {
    let Some((admin, schema, clock)) = setup("migration").await else {
        return;
    };
    const STORES: usize = 8;
    let mut starts = Vec::new();
    for _ in 0..STORES {
        let schema = schema.0.clone();
        let clock = clock.clone();
        starts.push(tokio::spawn(async move {
            PostgresStorage::builder(server_url())
                .with_table("jobs")
                .with_schema(schema)?
                .with_clock(Arc::new(clock))
                .build()
                .await
        }));
    }
    let mut stores = Vec::new();
    for start in starts {
        stores.push(start.await.unwrap().unwrap());
    }
    for (i, store) in stores.iter().enumerate() {
        store
            .update_with("shared", |current| {
                let n = current.map_or(0, |r| r.status["n"].as_u64().unwrap_or(0));
                Ok(json!({"n": n + 1, "last": i}))
            })
            .await
            .unwrap();
    }
    let record = stores[0].get("shared").await.unwrap().unwrap();
    assert_eq!(record.version, STORES as u64);
    let tables: Vec<String> = admin
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
            &[&schema.0],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(tables, ["jobs", "jobs_listeners"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_recovers_after_listener_is_killed() {
    let Some((admin, schema, clock)) = setup("watch_kill").await else {
        return;
    };
    let store = store_in(&schema.0, &clock).await;
    store
        .put("before", json!({"n": 1}), PutMode::Overwrite)
        .await
        .unwrap();
    let mut stream = store
        .watch(WatchSelector::All, WatchOptions::default())
        .await
        .unwrap();
    let application_name = format!("syncstatus-watch:{}.jobs", schema.0);
    let find_listeners =
        format!("SELECT pid FROM pg_stat_activity WHERE application_name = '{application_name}'");
    let listeners = admin.query(&find_listeners, &[]).await.unwrap();
    assert_eq!(listeners.len(), 1, "expected exactly one listener");
    let killed_pid: i32 = listeners[0].get(0);
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&killed_pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    // Written while the watcher has no connection: must arrive through the resync.
    store
        .put("during", json!({"n": 1}), PutMode::Overwrite)
        .await
        .unwrap();

    let mut reported = false;
    let mut state: HashMap<String, u64> = HashMap::new();
    loop {
        let item = tokio::time::timeout(EVENT_DEADLINE, stream.next())
            .await
            .expect("no watch item after the listener was killed")
            .expect("the watch ended");
        match item {
            Err(error) => {
                assert!(matches!(error, Error::Backend { .. }), "{error:?}");
                reported = true;
            }
            Ok(WatchEvent::Resync(records)) => {
                state = records.iter().map(|r| (r.id.clone(), r.version)).collect();
                break;
            }
            Ok(WatchEvent::Upsert(record)) => {
                state.insert(record.id.clone(), record.version);
            }
            Ok(WatchEvent::Removed { id }) => {
                state.remove(&id);
            }
        }
    }
    assert!(reported, "the lost connection was not reported");
    assert_eq!(state.get("before"), Some(&1));
    // The reconnect is tried at once, so its resync may have read the table before the
    // write made while the listener was down committed; that write then arrives on the new
    // listener. Either way it must arrive.
    while !state.contains_key("during") {
        let item = tokio::time::timeout(EVENT_DEADLINE, stream.next())
            .await
            .expect("the write made while the listener was down never arrived")
            .expect("the watch ended")
            .unwrap();
        if let WatchEvent::Upsert(record) = item {
            state.insert(record.id.clone(), record.version);
        }
    }
    assert_eq!(state.get("during"), Some(&1));

    let relisteners = admin.query(&find_listeners, &[]).await.unwrap();
    assert_eq!(relisteners.len(), 1, "expected one new listener");
    assert_ne!(relisteners[0].get::<_, i32>(0), killed_pid);

    store
        .put("after", json!({"n": 1}), PutMode::Overwrite)
        .await
        .unwrap();
    follow_until(&mut stream, &mut state, |s| s.get("after") == Some(&1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_watch_closes_the_listener() {
    let Some((admin, schema, clock)) = setup("watch_drop").await else {
        return;
    };
    let store = store_in(&schema.0, &clock).await;
    let count_listeners = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'syncstatus-watch:{}.jobs'",
        schema.0
    );
    check_last_watch_stops_its_feed(&store, async || {
        let listeners: i64 = admin.query_one(&count_listeners, &[]).await.unwrap().get(0);
        usize::try_from(listeners).unwrap()
    })
    .await;
}

/// A connection listening on `channel`, its notifications' payloads sent to the receiver.
async fn raw_listener(
    channel: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<()>,
) {
    let (client, mut connection) = tokio_postgres::connect(&server_url(), NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(notification) = message {
                let _ = tx.send(notification.payload().to_string());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await
        .unwrap();
    (client, rx, driver)
}

/// The payloads received up to `marker`, which the caller notified after the writes it wants
/// to see: notifications arrive in commit order, so nothing sent before it can come later.
async fn payloads_until(
    client: &tokio_postgres::Client,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    channel: &str,
    marker: &str,
) -> Vec<String> {
    client
        .execute("SELECT pg_notify($1, $2)", &[&channel, &marker])
        .await
        .unwrap();
    let mut payloads = Vec::new();
    loop {
        let payload = tokio::time::timeout(EVENT_DEADLINE, rx.recv())
            .await
            .expect("the marker notification did not arrive")
            .expect("the listening connection ended");
        if payload == marker {
            return payloads;
        }
        payloads.push(payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_notify_only_while_a_watch_runs() {
    let Some((_admin, schema, clock)) = setup("notify_gate").await else {
        return;
    };
    let store = store_in(&schema.0, &clock).await;
    let channel = store.channel().to_string();
    let (client, mut rx, _driver) = raw_listener(&channel).await;

    store
        .put("quiet", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    let heard = payloads_until(&client, &mut rx, &channel, "marker-1").await;
    assert!(
        heard.is_empty(),
        "notified with no watch running: {heard:?}"
    );

    let stream = store
        .watch(WatchSelector::All, WatchOptions::default())
        .await
        .unwrap();
    store
        .put("loud", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    store.delete("loud").await.unwrap();
    let heard = payloads_until(&client, &mut rx, &channel, "marker-2").await;
    assert_eq!(heard, ["loud:1", "loud:0"]);

    // The last watch gone, its registration goes too, and writes are quiet again.
    drop(stream);
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    loop {
        store
            .put("quiet", json!({}), PutMode::Overwrite)
            .await
            .unwrap();
        let heard = payloads_until(&client, &mut rx, &channel, "marker-3").await;
        if heard.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes still notify after the last watch ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_starting_among_writers_misses_no_write() {
    let Some((admin, schema, clock)) = setup("watch_start_race").await else {
        return;
    };
    let store = store_in(&schema.0, &clock).await;
    // Slow writes: each holds its snapshot for a while before it commits, so the watch
    // starts while some are in flight (those that checked for watchers before it registered).
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION \"{s}\".slow() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(0.02); RETURN NEW; END $$;
             CREATE TRIGGER slow BEFORE INSERT ON \"{s}\".jobs
               FOR EACH ROW EXECUTE FUNCTION \"{s}\".slow();",
            s = schema.0
        ))
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for task in 0..8 {
        let store = store.clone();
        let stop = stop.clone();
        let written = written.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                // Each id is written once: a write the watch misses is never made up for.
                let id = format!("w{task}-{n}");
                store
                    .put(&id, json!({"n": n}), PutMode::Create)
                    .await
                    .unwrap();
                ids.push(id);
                n += 1;
                written.fetch_add(1, Ordering::SeqCst);
            }
            ids
        }));
    }
    let wait_for = |target: usize| {
        let written = written.clone();
        async move {
            let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
            while written.load(Ordering::SeqCst) < target {
                assert!(tokio::time::Instant::now() < deadline, "writers stalled");
                tokio::task::yield_now().await;
            }
        }
    };
    wait_for(100).await;
    let mut stream = store
        .watch(
            WatchSelector::All,
            WatchOptions {
                snapshot: true,
                resume: None,
            },
        )
        .await
        .unwrap();
    let started_at = written.load(Ordering::SeqCst);
    wait_for(started_at + 100).await;
    stop.store(true, Ordering::SeqCst);
    let mut all = BTreeSet::new();
    for writer in writers {
        all.extend(writer.await.unwrap());
    }
    let mut state = HashMap::new();
    follow_until(&mut stream, &mut state, |s| {
        all.iter().all(|id| s.contains_key(id))
    })
    .await;
    assert_eq!(state.len(), all.len());
}

/// Waits (with a deadline) until no registration of the store's watchers has a running
/// lease, by the server's clock.
async fn until_leases_ran_out(admin: &tokio_postgres::Client, schema: &str) {
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    loop {
        let running: i64 = admin
            .query_one(
                &format!(
                    "SELECT count(*) FROM \"{schema}\".\"jobs_listeners\"
                    WHERE lease_until > (extract(epoch FROM now()) * 1000)::bigint"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if running == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leases still running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_lease_ran_out_makes_writes_quiet() {
    let Some((admin, schema, clock)) = setup("lease_quiet").await else {
        return;
    };
    let store = store_in(&schema.0, &clock).await;
    let channel = store.channel().to_string();
    let (client, mut rx, _driver) = raw_listener(&channel).await;
    // A watcher that was killed (or froze) after registering: a live session's row that is
    // never renewed, with half a second of lease.
    admin
        .execute(
            &format!(
                "INSERT INTO \"{}\".\"jobs_listeners\" (pid, since, lease_until)
                VALUES (pg_backend_pid(), 0, (extract(epoch FROM now()) * 1000)::bigint + 500)",
                schema.0
            ),
            &[],
        )
        .await
        .unwrap();
    store.put("a", json!({}), PutMode::Overwrite).await.unwrap();
    let heard = payloads_until(&client, &mut rx, &channel, "marker-1").await;
    assert_eq!(heard, ["a:1"], "a running lease makes writes notify");

    until_leases_ran_out(&admin, &schema.0).await;
    store.put("b", json!({}), PutMode::Overwrite).await.unwrap();
    let heard = payloads_until(&client, &mut rx, &channel, "marker-2").await;
    assert!(heard.is_empty(), "notified for a dead watcher: {heard:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_whose_lease_ran_out_resyncs_and_misses_no_write() {
    let Some((admin, schema, clock)) = setup("lease_resync").await else {
        return;
    };
    let watched = PostgresStorage::builder(server_url())
        .with_table("jobs")
        .with_schema(&schema.0)
        .unwrap()
        .with_clock(Arc::new(clock.clone()))
        .with_watch_lease(Duration::from_secs(3))
        .build()
        .await
        .unwrap();
    // Writes from another store: they reach the watcher only through the server.
    let writer = store_in(&schema.0, &clock).await;
    let mut stream = watched
        .watch(WatchSelector::All, WatchOptions::default())
        .await
        .unwrap();
    // As if the watcher's process had been frozen past its lease: writers stop notifying.
    admin
        .execute(
            &format!(
                "UPDATE \"{}\".\"jobs_listeners\" SET lease_until = 0",
                schema.0
            ),
            &[],
        )
        .await
        .unwrap();
    writer
        .put("unheard", json!({"n": 1}), PutMode::Overwrite)
        .await
        .unwrap();
    // The next renewal finds the lease gone and resyncs: the write arrives anyway.
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = tokio::time::timeout(left, stream.next())
            .await
            .expect("the write made while the lease had run out never arrived")
            .expect("the watch ended");
        match event {
            Ok(WatchEvent::Upsert(record)) if record.id == "unheard" => break,
            Ok(WatchEvent::Resync(records)) if records.iter().any(|r| r.id == "unheard") => break,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_the_applications_own_pool_reads_writes_and_watches() {
    let Some((_admin, schema, _clock)) = setup("own_pool").await else {
        return;
    };
    let config: tokio_postgres::Config = server_url().parse().unwrap();
    let manager = deadpool_postgres::Manager::from_config(
        config.clone(),
        NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(4)
        .build()
        .unwrap();
    let store = PostgresStorage::builder_from_pool(pool.clone(), config)
        .with_table("jobs")
        .with_schema(&schema.0)
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut stream = store
        .watch(WatchSelector::All, WatchOptions::default())
        .await
        .unwrap();
    // Written through another store, so the change reaches the watch only over LISTEN.
    let other = store_in(&schema.0, &ManualClock::starting_now()).await;
    let written = other
        .put("job", json!({"state": "running"}), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(store.get("job").await.unwrap(), Some(written));
    loop {
        let event = tokio::time::timeout(EVENT_DEADLINE, stream.next())
            .await
            .expect("no watch event")
            .expect("the watch ended")
            .unwrap();
        if let WatchEvent::Upsert(record) = event
            && record.id == "job"
        {
            break;
        }
    }
    // The application's pool is the store's: it serves the store's queries.
    assert!(pool.status().size >= 1);
}
