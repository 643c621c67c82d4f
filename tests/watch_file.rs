//! The file store's watch, end to end: writers in other processes, bursts, records and whole
//! directories removed and made again, queue overflows, polling, lagging subscribers, and
//! the watcher's threads stopping with the last stream.
//!
//! Writers in another process are this test binary run again as `child_writer` (with the
//! harness of `support::child`); the child tests return at once in an ordinary run.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use syncstatus::{
    FileStorage, ListFilter, PutMode, Record, Result, SyncStorage, Timestamp, TtlPolicy,
    WatchEvent, WatchMode, WatchOptions, WatchSelector, WatchStream,
};

use support::child;
use support::listing::readable_records;
#[cfg(target_os = "linux")]
use support::watch_feed::check_last_watch_stops_its_feed;

const CHILD_ID: &str = "SYNCSTATUS_WATCH_ID";
const CHILD_IDS: &str = "SYNCSTATUS_WATCH_IDS";
const CHILD_ROUNDS: &str = "SYNCSTATUS_WATCH_ROUNDS";
const CHILD_TASKS: &str = "SYNCSTATUS_WATCH_TASKS";

/// How long any expected event may take to arrive (debug builds on a shared 2-core box).
const DEADLINE: Duration = Duration::from_secs(60);

const MAX_QUEUED_EVENTS: &str = "/proc/sys/fs/inotify/max_queued_events";

/// The kernel reads `max_queued_events` when a watcher starts; the overflow test lowers it
/// for a moment, so other watches of this process start outside that moment.
static INOTIFY_START: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn open(dir: &Path, mode: WatchMode) -> FileStorage {
    FileStorage::builder(dir)
        .with_ttl(TtlPolicy::never())
        .with_lazy_sweep(None)
        .with_watch_mode(mode)
        .build()
        .unwrap()
}

async fn watch(store: &FileStorage) -> WatchStream {
    let _outside_window = INOTIFY_START.read().await;
    store
        .watch(WatchSelector::All, WatchOptions::default())
        .await
        .unwrap()
}

/// What a subscriber believes the store holds, built from its events alone.
#[derive(Default)]
struct Mirror {
    records: BTreeMap<String, Record>,
    resyncs: usize,
    upserts: usize,
    errors: Vec<String>,
    /// Every upsert and removal, in order, as (id, Some(version) or None for removed).
    log: Vec<(String, Option<Record>)>,
}

impl Mirror {
    fn take(&mut self, item: Option<Result<WatchEvent>>) {
        match item {
            None => panic!("the watch stream ended while the store still exists"),
            Some(Err(error)) => self.errors.push(format!("{error:?}")),
            Some(Ok(WatchEvent::Upsert(record))) => {
                let record = std::sync::Arc::unwrap_or_clone(record);
                self.upserts += 1;
                self.log.push((record.id.clone(), Some(record.clone())));
                self.records.insert(record.id.clone(), record);
            }
            Some(Ok(WatchEvent::Removed { id })) => {
                self.log.push((id.clone(), None));
                self.records.remove(&id);
            }
            Some(Ok(WatchEvent::Resync(records))) => {
                self.resyncs += 1;
                self.records = records
                    .into_iter()
                    .map(|r| (r.id.clone(), std::sync::Arc::unwrap_or_clone(r)))
                    .collect();
            }
        }
    }

    fn versions(&self) -> BTreeMap<String, u64> {
        self.records
            .iter()
            .map(|(id, record)| (id.clone(), record.version))
            .collect()
    }

    /// Version and time stamps of every record: what tells one write from another.
    fn revisions(&self) -> BTreeMap<String, Revision> {
        self.records
            .iter()
            .map(|(id, record)| (id.clone(), revision(record)))
            .collect()
    }

    /// The upserts and removals of `id`, oldest first.
    fn history(&self, id: &str) -> Vec<Option<Record>> {
        self.log
            .iter()
            .filter(|(logged, _)| logged == id)
            .map(|(_, record)| record.clone())
            .collect()
    }
}

/// Feeds `mirror` from `stream` until `done` holds; false when the deadline passes first.
async fn wait_for(
    stream: &mut WatchStream,
    mirror: &mut Mirror,
    deadline: Duration,
    done: impl Fn(&Mirror) -> bool,
) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if done(mirror) {
            return true;
        }
        match tokio::time::timeout_at(until, stream.next()).await {
            Ok(item) => mirror.take(item),
            Err(_) => return false,
        }
    }
}

/// Runs `work` while feeding `mirror`, so the subscriber keeps up as a real one would.
async fn feeding<F: Future>(stream: &mut WatchStream, mirror: &mut Mirror, work: F) -> F::Output {
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            item = stream.next() => mirror.take(item),
        }
    }
}

type Revision = (u64, Timestamp, Timestamp);

fn revision(record: &Record) -> Revision {
    (record.version, record.created_at, record.updated_at)
}

/// The revision of every record on disk, as a fresh store lists them.
async fn disk_revisions(dir: &Path) -> BTreeMap<String, Revision> {
    readable_records(&open(dir, WatchMode::Events), &ListFilter::all())
        .await
        .into_iter()
        .map(|record| (record.id.clone(), revision(&record)))
        .collect()
}

/// Waits until the mirror equals what is on disk now, then asserts it does.
async fn assert_mirror_matches_disk(stream: &mut WatchStream, mirror: &mut Mirror, dir: &Path) {
    let expected = disk_revisions(dir).await;
    wait_for(stream, mirror, DEADLINE, |m| m.revisions() == expected).await;
    let seen = mirror.revisions();
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(id, version)| seen.get(*id) != Some(version))
        .map(|(id, revision)| (id.clone(), *revision, seen.get(id).copied()))
        .take(10)
        .collect();
    let extra: Vec<_> = seen
        .keys()
        .filter(|id| !expected.contains_key(*id))
        .take(10)
        .collect();
    assert!(
        seen == expected,
        "after {DEADLINE:?} the subscriber still differs from the disk ({} ids on disk, {} \
         seen): (id, on disk, seen) {wrong:?}, not on disk {extra:?}",
        expected.len(),
        seen.len()
    );
    assert!(mirror.errors.is_empty(), "error items: {:?}", mirror.errors);
}

/// Runs this test binary again as a writer; returns when it exited successfully.
async fn writer(role: &str, dir: &Path, vars: &[(&str, String)]) {
    child::run("child_writer", role, dir, vars).await;
}

fn env_number(name: &str) -> usize {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number"))
}

/// The writer side, in its own process.
#[test]
fn child_writer() {
    child::play(|role, dir| async move {
        if !matches!(role.as_str(), "burst" | "put" | "delete" | "recreate") {
            return;
        }
        let store = open(&dir, WatchMode::Events);
        match role.as_str() {
            "burst" => {
                // Every id is written `rounds` times; each task owns its own ids, so the
                // writes of one id are in order and the last one is the final state.
                let ids = env_number(CHILD_IDS);
                let rounds = env_number(CHILD_ROUNDS);
                let tasks = env_number(CHILD_TASKS);
                let mut set = tokio::task::JoinSet::new();
                for task in 0..tasks {
                    let store = store.clone();
                    set.spawn(async move {
                        for round in 0..rounds {
                            for n in (task..ids).step_by(tasks) {
                                let status = json!({"state": "running", "round": round});
                                store
                                    .put(&format!("id{n:05}"), status, PutMode::Overwrite)
                                    .await
                                    .unwrap();
                            }
                        }
                    });
                }
                while let Some(done) = set.join_next().await {
                    done.unwrap();
                }
            }
            "put" => {
                let id = std::env::var(CHILD_ID).unwrap();
                store
                    .put(&id, json!({"state": "running"}), PutMode::Overwrite)
                    .await
                    .unwrap();
            }
            "delete" => {
                let id = std::env::var(CHILD_ID).unwrap();
                assert!(store.delete(&id).await.unwrap());
            }
            "recreate" => {
                let id = std::env::var(CHILD_ID).unwrap();
                let old = store.get(&id).await.unwrap().unwrap();
                assert!(store.delete(&id).await.unwrap());
                // The new record must carry a new creation stamp (milliseconds).
                while Timestamp::now() <= old.created_at {
                    std::thread::yield_now();
                }
                let new = store
                    .put(&id, json!({"state": "pending"}), PutMode::Create)
                    .await
                    .unwrap();
                assert_eq!(new.version, 1);
            }
            _ => unreachable!(),
        }
    });
}

fn burst_vars(ids: usize, rounds: usize, tasks: usize) -> Vec<(&'static str, String)> {
    vec![
        (CHILD_IDS, ids.to_string()),
        (CHILD_ROUNDS, rounds.to_string()),
        (CHILD_TASKS, tasks.to_string()),
    ]
}

#[tokio::test]
async fn writes_of_another_process_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), WatchMode::Events);
    let mut stream = watch(&store).await;
    let mut mirror = Mirror::default();
    feeding(
        &mut stream,
        &mut mirror,
        writer("burst", dir.path(), &burst_vars(50, 10, 2)),
    )
    .await;
    assert_mirror_matches_disk(&mut stream, &mut mirror, dir.path()).await;
    assert_eq!(mirror.versions().len(), 50);
    assert!(mirror.versions().values().all(|version| *version == 10));
    // The subscriber learnt it from events of the other process, not from a rescan.
    assert!(mirror.upserts >= 50, "only {} upserts", mirror.upserts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_20000_writes_over_1000_ids_ends_in_every_final_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), WatchMode::Events);
    let mut stream = watch(&store).await;
    let mut mirror = Mirror::default();
    feeding(
        &mut stream,
        &mut mirror,
        writer("burst", dir.path(), &burst_vars(1000, 20, 4)),
    )
    .await;
    assert_mirror_matches_disk(&mut stream, &mut mirror, dir.path()).await;
    assert_eq!(mirror.versions().len(), 1000);
    assert!(mirror.versions().values().all(|version| *version == 20));
}

#[tokio::test]
async fn burst_from_this_process_and_another_ends_in_every_final_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), WatchMode::Events);
    let mut stream = watch(&store).await;
    let mut mirror = Mirror::default();
    let local = async {
        // Ids of their own (`local…`), written while the other process writes `id…`.
        for round in 0..10 {
            for n in 0..100 {
                store
                    .put(
                        &format!("local{n:03}"),
                        json!({"round": round}),
                        PutMode::Overwrite,
                    )
                    .await
                    .unwrap();
            }
        }
    };
    let vars = burst_vars(500, 10, 2);
    let other = writer("burst", dir.path(), &vars);
    feeding(&mut stream, &mut mirror, async {
        tokio::join!(local, other)
    })
    .await;
    assert_mirror_matches_disk(&mut stream, &mut mirror, dir.path()).await;
    assert_eq!(mirror.versions().len(), 600);
}

/// Files written by another tool as plain status JSON (no envelope) read as version 0 with
/// the file's time, every time: a watch must still deliver each change, also when two writes
/// fall within the file system's timestamp granularity or the tool keeps the time (`cp -p`,
/// `rsync -t`). Before, the second write was taken for a repeat of the first and dropped, and
/// watchers stayed at "running" while the file said "completed".
#[tokio::test]
async fn plain_json_files_changed_within_one_timestamp_are_all_seen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = open(dir, WatchMode::Events);
    let mut stream = watch(&store).await;
    let mut mirror = Mirror::default();
    let path = dir.join("foreign.json");
    let stamp = std::time::SystemTime::now();
    // Written as docs/file-format.md asks of other tools: whole, then renamed over the record
    // (an in-place write may be read half-done, and was, under Wine). The time is set before
    // the rename, so both versions carry the same one.
    let staged = dir.join(".tmp").join("foreign.staged");
    let write_plain = |status: serde_json::Value| {
        std::fs::write(&staged, serde_json::to_vec(&status).unwrap()).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&staged)
            .unwrap()
            .set_modified(stamp)
            .unwrap();
        // Windows refuses to replace a file while a reader has it open (the watcher may be
        // reading the last version): try again, as the store's own writes do.
        for attempt in 0.. {
            match std::fs::rename(&staged, &path) {
                Ok(()) => break,
                Err(error)
                    if error.kind() == std::io::ErrorKind::PermissionDenied && attempt < 200 =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(error) => panic!("rename: {error}"),
            }
        }
    };
    let state_is = |mirror: &Mirror, state: &str| {
        mirror
            .records
            .get("foreign")
            .is_some_and(|record| record.status["state"] == state)
    };
    write_plain(json!({"state": "running", "progress": {"done": 0, "total": 100}}));
    assert!(
        wait_for(&mut stream, &mut mirror, DEADLINE, |m| state_is(
            m, "running"
        ))
        .await,
        "the first write was not seen"
    );
    write_plain(json!({"state": "completed", "progress": {"done": 100, "total": 100}}));
    assert!(
        wait_for(&mut stream, &mut mirror, DEADLINE, |m| state_is(
            m,
            "completed"
        ))
        .await,
        "the change was dropped as a repeat: {:?}",
        mirror.records.get("foreign")
    );
    assert_eq!(mirror.records["foreign"].version, 0);
    assert!(mirror.errors.is_empty(), "{:?}", mirror.errors);
}

#[tokio::test]
async fn record_removed_and_made_again_is_a_removal_then_version_1() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), WatchMode::Events);
    let mut stream = watch(&store).await;
    let mut mirror = Mirror::default();
    let vars = |id: &str| vec![(CHILD_ID, id.to_string())];

    for id in ["apart", "at-once"] {
        for _ in 0..3 {
            feeding(
                &mut stream,
                &mut mirror,
                writer("put", dir.path(), &vars(id)),
            )
            .await;
        }
    }
    let third = |m: &Mirror, id: &str| m.records.get(id).map(|r| r.version) == Some(3);
    assert!(
        wait_for(&mut stream, &mut mirror, DEADLINE, |m| third(m, "apart")
            && third(m, "at-once"))
        .await
    );
    let old_apart = mirror.records["apart"].clone();
    let old_at_once = mirror.records["at-once"].clone();

    // Removed by one process, made again by another after the removal was seen.
    feeding(
        &mut stream,
        &mut mirror,
        writer("delete", dir.path(), &vars("apart")),
    )
    .await;
    assert!(
        wait_for(&mut stream, &mut mirror, DEADLINE, |m| !m
            .records
            .contains_key("apart"))
        .await,
        "the removal never arrived"
    );
    feeding(
        &mut stream,
        &mut mirror,
        writer("put", dir.path(), &vars("apart")),
    )
    .await;

    // Removed and made again by one process straight away: the two may reach the watcher
    // as one change, and must still not look like a newer version of the old record.
    feeding(
        &mut stream,
        &mut mirror,
        writer("recreate", dir.path(), &vars("at-once")),
    )
    .await;
    assert_mirror_matches_disk(&mut stream, &mut mirror, dir.path()).await;
    assert_eq!(mirror.resyncs, 0);

    for (id, old) in [("apart", old_apart), ("at-once", old_at_once)] {
        let history = mirror.history(id);
        let after_old = history
            .iter()
            .position(|seen| seen.as_ref() == Some(&old))
            .unwrap_or_else(|| panic!("{id}: version 3 never seen: {history:?}"));
        let rest = &history[after_old + 1..];
        assert_eq!(rest.len(), 2, "{id}: {rest:?}");
        assert_eq!(rest[0], None, "{id}: not a removal first: {rest:?}");
        let new = rest[1].as_ref().unwrap();
        assert_eq!(new.version, 1, "{id}: {new:?}");
        assert!(
            new.created_at > old.created_at,
            "{id}: {new:?} after {old:?}"
        );
    }
}

/// `path` as seen from the current directory, through `..` (the store is opened by a
/// relative path, as `file:./data/sync-status` does).
fn relative_from_cwd(path: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let mut relative = PathBuf::new();
    for component in cwd.components() {
        if matches!(component, Component::Normal(_)) {
            relative.push("..");
        }
    }
    for component in path.components() {
        if let Component::Normal(part) = component {
            relative.push(part);
        }
    }
    relative
}

#[tokio::test]
async fn store_directory_removed_and_made_again_is_watched_again() {
    let parent = tempfile::tempdir().unwrap();
    let absolute = parent.path().join("store");
    let dir = relative_from_cwd(&absolute);
    assert!(dir.is_relative());
    let store = open(&dir, WatchMode::Events);
    assert_eq!(
        dir.canonicalize().unwrap(),
        absolute.canonicalize().unwrap()
    );
    for id in ["before1", "before2"] {
        store
            .put(id, json!({"state": "running"}), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let mut stream = watch(&store).await;
    let mut mirror = Mirror::default();

    std::fs::remove_dir_all(&absolute).unwrap();
    std::fs::create_dir(&absolute).unwrap();
    // Another store (a hub of its own), so the write is learnt from the file system.
    let other = open(&absolute, WatchMode::Events);
    other
        .put("after", json!({"state": "pending"}), PutMode::Create)
        .await
        .unwrap();
    assert!(
        wait_for(&mut stream, &mut mirror, DEADLINE, |m| m.resyncs > 0
            && m.versions() == BTreeMap::from([("after".to_string(), 1)]))
        .await,
        "no resync to the new directory: resyncs {}, seen {:?}",
        mirror.resyncs,
        mirror.versions()
    );

    // The new directory is watched, not just scanned once.
    let resyncs = mirror.resyncs;
    other
        .put("after", json!({"state": "running"}), PutMode::Update(1))
        .await
        .unwrap();
    other
        .put("later", json!({"state": "pending"}), PutMode::Create)
        .await
        .unwrap();
    assert_mirror_matches_disk(&mut stream, &mut mirror, &absolute).await;
    assert_eq!(mirror.versions().len(), 2);
    assert_eq!(
        mirror.resyncs, resyncs,
        "learnt by rescanning, not by events"
    );
}

#[tokio::test]
async fn watch_of_a_store_whose_directory_is_missing_waits_for_it() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("store");
    let store = open(&dir, WatchMode::Events);
    std::fs::remove_dir_all(&dir).unwrap();
    let mut stream = watch(&store).await;
    let mut mirror = Mirror::default();

    let other = open(&dir, WatchMode::Events);
    other
        .put("first", json!({"state": "pending"}), PutMode::Create)
        .await
        .unwrap();
    assert!(
        wait_for(&mut stream, &mut mirror, DEADLINE, |m| m.resyncs > 0
            && m.records.contains_key("first"))
        .await,
        "the directory was never watched: resyncs {}, seen {:?}",
        mirror.resyncs,
        mirror.versions()
    );
    // Watched by events from then on: later writes arrive without another rescan.
    let resyncs = mirror.resyncs;
    other
        .put("second", json!({"state": "pending"}), PutMode::Create)
        .await
        .unwrap();
    assert_mirror_matches_disk(&mut stream, &mut mirror, &dir).await;
    assert_eq!(mirror.resyncs, resyncs);
}

#[tokio::test]
async fn expiry_is_reported_as_a_removal_without_waiting_for_a_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let short = |dir: &Path| {
        FileStorage::builder(dir)
            .with_ttl(TtlPolicy::uniform(Duration::from_millis(300)).with_state("kept", None))
            .with_lazy_sweep(None)
            .build()
            .unwrap()
    };
    let store = short(dir.path());
    let other = short(dir.path());
    // One record there before the watch starts, one written while it runs.
    other
        .put("before", json!({"state": "running"}), PutMode::Create)
        .await
        .unwrap();
    let mut stream = watch(&store).await;
    let mut mirror = Mirror::default();
    other
        .put("during", json!({"state": "running"}), PutMode::Create)
        .await
        .unwrap();
    other
        .put("kept", json!({"state": "kept"}), PutMode::Create)
        .await
        .unwrap();
    assert!(
        wait_for(&mut stream, &mut mirror, DEADLINE, |m| m
            .records
            .contains_key("during"))
        .await
    );
    assert!(
        wait_for(&mut stream, &mut mirror, DEADLINE, |m| {
            let removed = |id: &str| m.history(id).last() == Some(&None);
            removed("before") && removed("during")
        })
        .await,
        "expired records not reported removed: {:?}",
        mirror.log
    );
    assert!(mirror.records.contains_key("kept"));
    assert!(!mirror.records.contains_key("during"));
    // Nobody swept: the files are still there, the removal came from the expiry itself.
    assert!(store.path_of("before").unwrap().exists());
    assert!(store.path_of("during").unwrap().exists());
    assert_eq!(store.get("during").await.unwrap(), None);
}

/// Lowers `max_queued_events` until dropped (also on panic).
struct QueueLimit {
    old: String,
}

impl QueueLimit {
    fn lower(to: u32) -> std::result::Result<Self, String> {
        let old = std::fs::read_to_string(MAX_QUEUED_EVENTS)
            .map_err(|e| format!("cannot read {MAX_QUEUED_EVENTS}: {e}"))?;
        std::fs::write(MAX_QUEUED_EVENTS, to.to_string())
            .map_err(|e| format!("cannot write {MAX_QUEUED_EVENTS}: {e}"))?;
        Ok(QueueLimit { old })
    }
}

impl Drop for QueueLimit {
    fn drop(&mut self) {
        if let Err(error) = std::fs::write(MAX_QUEUED_EVENTS, self.old.trim()) {
            eprintln!(
                "could not restore {MAX_QUEUED_EVENTS} to {}: {error}",
                self.old.trim()
            );
        }
    }
}

#[tokio::test]
async fn queue_overflow_leads_to_a_resync_and_the_final_states() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), WatchMode::Events);
    let mut stream = {
        let _window = INOTIFY_START.write().await;
        let limit = match QueueLimit::lower(1) {
            Ok(limit) => limit,
            Err(reason) => {
                eprintln!("skipped: cannot provoke an inotify overflow here: {reason}");
                return;
            }
        };
        let stream = store
            .watch(WatchSelector::All, WatchOptions::default())
            .await
            .unwrap();
        let lowered_to = std::fs::read_to_string(MAX_QUEUED_EVENTS).unwrap_or_default();
        let old = limit.old.clone();
        drop(limit);
        assert_eq!(lowered_to.trim(), "1");
        assert_eq!(
            std::fs::read_to_string(MAX_QUEUED_EVENTS).unwrap().trim(),
            old.trim(),
            "{MAX_QUEUED_EVENTS} not restored"
        );
        stream
    };
    let mut mirror = Mirror::default();
    // With a queue of one event, two renames landing before notify reads the first
    // overflow it; several writing tasks make that all but certain, and a few bursts make
    // it certain enough.
    let mut bursts = 0;
    while mirror.resyncs == 0 && bursts < 8 {
        bursts += 1;
        feeding(
            &mut stream,
            &mut mirror,
            writer("burst", dir.path(), &burst_vars(200, 5, 8)),
        )
        .await;
        wait_for(&mut stream, &mut mirror, Duration::from_secs(2), |m| {
            m.resyncs > 0
        })
        .await;
    }
    assert!(mirror.resyncs > 0, "no resync after {bursts} bursts");
    eprintln!(
        "overflow seen after {bursts} burst(s): {} resyncs",
        mirror.resyncs
    );
    assert_mirror_matches_disk(&mut stream, &mut mirror, dir.path()).await;
    assert_eq!(mirror.versions().len(), 200);
    assert!(
        mirror
            .versions()
            .values()
            .all(|version| *version == 5 * bursts)
    );
}

#[tokio::test]
async fn polling_mode_sees_writes_of_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), WatchMode::Poll(Duration::from_millis(50)));
    let mut stream = store
        .watch(WatchSelector::All, WatchOptions::default())
        .await
        .unwrap();
    let mut mirror = Mirror::default();
    let vars = vec![(CHILD_ID, "polled".to_string())];
    feeding(&mut stream, &mut mirror, writer("put", dir.path(), &vars)).await;
    assert!(
        wait_for(&mut stream, &mut mirror, DEADLINE, |m| m
            .records
            .contains_key("polled"))
        .await,
        "the write never arrived"
    );
    feeding(&mut stream, &mut mirror, writer("put", dir.path(), &vars)).await;
    feeding(
        &mut stream,
        &mut mirror,
        writer("delete", dir.path(), &vars),
    )
    .await;
    feeding(&mut stream, &mut mirror, writer("put", dir.path(), &vars)).await;
    assert_mirror_matches_disk(&mut stream, &mut mirror, dir.path()).await;
    assert_eq!(mirror.records["polled"].version, 1);
    assert!(mirror.history("polled").contains(&None), "no removal seen");
}

#[tokio::test]
async fn lagging_subscriber_gets_a_resync_then_the_final_states() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), WatchMode::Events);
    let mut lagging = watch(&store).await;
    // Writes through the watched store publish one event each, more than a subscriber may
    // fall behind.
    for round in 0..50 {
        for n in 0..100 {
            store
                .put(
                    &format!("id{n:03}"),
                    json!({"round": round}),
                    PutMode::Overwrite,
                )
                .await
                .unwrap();
        }
    }
    let mut mirror = Mirror::default();
    let first = lagging.next().await;
    assert!(
        matches!(first, Some(Ok(WatchEvent::Resync(_)))),
        "first item after lagging: {first:?}"
    );
    mirror.take(first);
    assert_mirror_matches_disk(&mut lagging, &mut mirror, dir.path()).await;
    assert_eq!(mirror.versions().len(), 100);
    assert!(mirror.versions().values().all(|version| *version == 50));
}

// ---- The feed's resources: each check runs in a process of its own, so no other test's
// threads or descriptors count. Threads are counted by name in /proc/self/task and inotify
// instances in /proc/self/fd, so these run on Linux only.

#[cfg(target_os = "linux")]
const POOL_THREAD: &str = "watch-test-pool";

#[cfg(target_os = "linux")]
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .collect()
}

#[cfg(target_os = "linux")]
/// (inotify instances open in this process, threads other than the blocking pool's). On
/// Linux the feed is an inotify instance read by a task of the runtime: no thread of its own.
fn feed_counts() -> (usize, usize) {
    let instances = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.as_os_str() == "anon_inode:inotify")
        .count();
    let names = thread_names();
    (
        instances,
        names.iter().filter(|n| n.as_str() != POOL_THREAD).count(),
    )
}

#[cfg(target_os = "linux")]
/// Waits until the feed counts (see [`feed_counts`]) are `expected`; returns the last seen.
async fn wait_for_feed_counts(expected: (usize, usize)) -> (usize, usize) {
    let until = Instant::now() + DEADLINE;
    loop {
        let counts = feed_counts();
        if counts == expected || Instant::now() > until {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(target_os = "linux")]
async fn feed_check(role: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), WatchMode::Events);
    let (instances_before, others_before) = feed_counts();
    assert_eq!(instances_before, 0);

    let mut streams = Vec::new();
    let clone = store.clone();
    for (n, selector) in [
        WatchSelector::All,
        WatchSelector::Prefix("sh".into()),
        WatchSelector::ids(["shared"]),
        WatchSelector::All,
        WatchSelector::All,
    ]
    .into_iter()
    .enumerate()
    {
        let on = if n % 2 == 0 { &store } else { &clone };
        streams.push(on.watch(selector, WatchOptions::default()).await.unwrap());
    }
    assert!(store.watch_is_running());
    // One inotify instance for the five, and no thread: it is read by a task.
    let during = wait_for_feed_counts((1, others_before)).await;
    assert_eq!(
        during,
        (1, others_before),
        "five streams: (inotify instances, other threads) before ({instances_before}, \
         {others_before}); names {:?}",
        thread_names()
    );

    // Every stream is fed by that one watcher: a write of another store reaches them all.
    let other = open(dir.path(), WatchMode::Events);
    other
        .put("shared", json!({"state": "running"}), PutMode::Create)
        .await
        .unwrap();
    for (n, stream) in streams.iter_mut().enumerate() {
        let mut mirror = Mirror::default();
        assert!(
            wait_for(stream, &mut mirror, DEADLINE, |m| m
                .records
                .contains_key("shared"))
            .await,
            "stream {n} never saw the write"
        );
    }

    if role == "stop" {
        drop(streams);
        assert!(!store.watch_is_running(), "the hub outlived its streams");
        let after = wait_for_feed_counts((0, others_before)).await;
        assert_eq!(
            after,
            (0, others_before),
            "after dropping every stream: names {:?}",
            thread_names()
        );
        // New watches start a new feed, and the last one dropped stops it: the check every
        // backend passes, counting inotify instances.
        {
            let _outside_window = INOTIFY_START.read().await;
            check_last_watch_stops_its_feed(&store, async || feed_counts().0).await;
        }
        assert_eq!(
            wait_for_feed_counts((0, others_before)).await,
            (0, others_before)
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn child_feed() {
    let Some((role, _)) = child::role() else {
        return;
    };
    if !matches!(role.as_str(), "stop" | "share") {
        return;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(POOL_THREAD)
        .build()
        .unwrap()
        .block_on(feed_check(&role));
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn dropping_every_stream_closes_the_inotify_instance() {
    let dir = tempfile::tempdir().unwrap();
    child::run("child_feed", "stop", dir.path(), &[]).await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn streams_of_one_store_share_one_inotify_instance_and_start_no_thread() {
    let dir = tempfile::tempdir().unwrap();
    child::run("child_feed", "share", dir.path(), &[]).await;
}

#[tokio::test]
async fn reading_records_does_not_make_the_watcher_read_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), WatchMode::Events);
    let mut stream = watch(&store).await;
    let mut mirror = Mirror::default();
    let other = open(dir.path(), WatchMode::Events);
    other
        .put("read-often", json!({"state": "running"}), PutMode::Create)
        .await
        .unwrap();
    assert!(
        wait_for(&mut stream, &mut mirror, DEADLINE, |m| m
            .records
            .contains_key("read-often"))
        .await
    );

    // Every open of the file is an inotify event; count them with a bare watcher.
    let opens = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = opens.clone();
    let mut bare = {
        let _outside_window = INOTIFY_START.read().await;
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event
                && matches!(
                    event.kind,
                    notify::EventKind::Access(notify::event::AccessKind::Open(_))
                )
            {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .unwrap()
    };
    notify::Watcher::watch(&mut bare, dir.path(), notify::RecursiveMode::NonRecursive).unwrap();
    for _ in 0..10 {
        assert!(other.get("read-often").await.unwrap().is_some());
    }
    // Readers open the file ten times. A watcher that re-read on every open would answer
    // each of its own reads with another, without end; wait for that to show, bounded.
    let until = Instant::now() + Duration::from_secs(2);
    while opens.load(std::sync::atomic::Ordering::SeqCst) < 100 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = opens.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        seen <= 20,
        "{seen} opens of a record read ten times: the watcher keeps re-reading it"
    );
    assert!(mirror.errors.is_empty(), "{:?}", mirror.errors);
}
