//! The file store's own guarantees, beyond the conformance suite: records survive writers
//! killed with SIGKILL, updates and conditional writes from several processes, cleanups racing
//! writers, evil ids, corrupt and foreign files, symbolic links, lazy sweeps, the on-disk
//! format, and blocking work kept off the async threads.
//!
//! Multi-process tests re-execute this test binary running only `child_process`, with the
//! harness of `support::child`.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use syncstatus::{
    CleanupOptions, CleanupReport, Durability, Error, FileStorage, ListFilter, Location,
    ManualClock, PutMode, Record, SyncStorage, SyncStorageExt, Timestamp, TtlPolicy,
};

use support::child::{self, Child, read_command, say};

/// A number a child uses (its index, or a seed).
const CHILD_ARG: &str = "SYNCSTATUS_FILE_STORE_ARG";

// ---------------------------------------------------------------------------------------------
// Helpers

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A small xorshift generator: enough to spread kill instants and record sizes.
struct Rng(u64);

impl Rng {
    fn seeded(extra: u64) -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ extra.wrapping_mul(0x9E37_79B9);
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A child process playing `role` on `dir`, with `arg` in [`CHILD_ARG`].
fn spawn_child(role: &str, dir: &Path, arg: u64) -> Child {
    Child::spawn("child_process", role, dir, &[(CHILD_ARG, arg.to_string())])
}

/// Every path below `root` (relative), directories included, symbolic links not followed.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            out.insert(path.strip_prefix(root).unwrap().to_path_buf());
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Writes an envelope by hand, as if written `age` ago by some process.
fn write_envelope(dir: &Path, id: &str, version: u64, age: Duration, status: Value) {
    let at = Timestamp::from_system_time(SystemTime::now() - age);
    let record = Record {
        id: id.to_string(),
        version,
        created_at: at,
        updated_at: at,
        expires_at: None,
        status,
    };
    // Without `expires_at`, as an older version wrote them: the reading store's policy
    // decides.
    let mut value = serde_json::to_value(&record).unwrap();
    value.as_object_mut().unwrap().remove("expires_at");
    let mut bytes = serde_json::to_vec_pretty(&value).unwrap();
    bytes.push(b'\n');
    let path = dir.join(format!("{id}.json"));
    fs::write(&path, bytes).unwrap();
    // The file's time says so too, as it would for a file written back then.
    set_age(&path, age);
}

fn set_age(path: &Path, age: Duration) {
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

fn manual_store(dir: &Path, clock: &ManualClock) -> FileStorage {
    FileStorage::builder(dir)
        .with_clock(Arc::new(clock.clone()))
        .with_lazy_sweep(None)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The child side of the multi-process tests

/// Plays the role named in `CHILD_ROLE`; returns at once in an ordinary test run.
#[test]
fn child_process() {
    let Some((role, dir)) = child::role() else {
        return;
    };
    let arg: u64 = std::env::var(CHILD_ARG).unwrap().parse().unwrap();
    let store = FileStorage::builder(&dir)
        .with_lazy_sweep(None)
        .build()
        .unwrap();
    let rt = runtime();
    match role.as_str() {
        "writer" => rt.block_on(child_writer(store, arg)),
        "updater" => rt.block_on(child_updater(store)),
        "cas" => rt.block_on(child_cas(store, arg)),
        "rewriter" => rt.block_on(child_rewriter(store)),
        "cleaner" => rt.block_on(child_cleaner(store)),
        "holder" => child_holder(&dir),
        "lock-updater" => rt.block_on(child_lock_updater(store)),
        other => panic!("unknown child role {other}"),
    }
}

/// Sets the returned flag once a line arrives on stdin (or stdin closes).
fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let _ = read_command();
        flag.store(true, Ordering::SeqCst);
    });
    stop
}

const KILL_IDS: [&str; 3] = ["rec-0", "rec-1", "rec-2"];

/// Puts records of 1–64 KiB on a few ids until killed.
async fn child_writer(store: FileStorage, seed: u64) {
    let mut rng = Rng::seeded(seed);
    let mut seq = 0u64;
    loop {
        let id = KILL_IDS[rng.below(KILL_IDS.len() as u64) as usize];
        let len = 1024 + rng.below(63 * 1024) as usize;
        let status = json!({"writer": seed, "seq": seq, "len": len, "pad": "x".repeat(len)});
        store.put(id, status, PutMode::Overwrite).await.unwrap();
        if seq == 0 {
            say("ready");
        }
        seq += 1;
    }
}

/// Takes the file lock of each id named on stdin, as another process writing it (or frozen
/// while writing) would, and holds them all until stdin closes.
fn child_holder(dir: &Path) {
    let mut held = Vec::new();
    while let Some(id) = read_command() {
        let file = fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(".locks").join(format!("{id}.lock")))
            .unwrap();
        file.lock().unwrap();
        held.push(file);
        say("locked");
    }
}

/// Updates the counter `UPDATES_EACH` times and reports how many updates succeeded.
async fn child_lock_updater(store: FileStorage) {
    say("ready");
    assert_eq!(read_command().as_deref(), Some("go"));
    let mut succeeded = 0u64;
    for _ in 0..UPDATES_EACH {
        let result = store
            .update_with("counter", |current| {
                let n = current.map_or(0, |r| r.status["n"].as_u64().unwrap());
                Ok(json!({"n": n + 1}))
            })
            .await;
        if result.is_ok() {
            succeeded += 1;
        }
    }
    say(format!("done {succeeded}"));
}

async fn child_updater(store: FileStorage) {
    say("ready");
    assert_eq!(read_command().as_deref(), Some("go"));
    for _ in 0..UPDATES_EACH {
        store
            .update_with("counter", |current| {
                let n = current.map_or(0, |r| r.status["n"].as_u64().unwrap());
                Ok(json!({"n": n + 1}))
            })
            .await
            .unwrap();
    }
    say("done");
}

async fn child_cas(store: FileStorage, index: u64) {
    say("ready");
    while let Some(command) = read_command() {
        let Some(version) = command.strip_prefix("put ") else {
            break;
        };
        let expected: u64 = version.parse().unwrap();
        let status = json!({"writer": index, "expected": expected});
        match store.put("cas", status, PutMode::Update(expected)).await {
            Ok(record) => say(format!("won {}", record.version)),
            Err(Error::VersionConflict {
                expected: e, found, ..
            }) if e == expected => say(format!("conflict {}", found.unwrap_or(0))),
            Err(other) => say(format!("error {other}")),
        }
    }
}

const FRESH_IDS: usize = 8;
const REWRITTEN_EXPIRED_IDS: usize = 8;
const REWRITE_ROUNDS: u64 = 60;

/// Rewrites the fresh ids `a-*` and the initially expired ids `c-*`, checking that every
/// version it gets follows its previous one (a cleanup removing a fresh record would reset it).
async fn child_rewriter(store: FileStorage) {
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..FRESH_IDS {
        let id = format!("a-{i}");
        let record = store
            .put(&id, json!({"round": 0}), PutMode::Overwrite)
            .await
            .unwrap();
        last.insert(id, record.version);
    }
    say("ready");
    assert_eq!(read_command().as_deref(), Some("go"));
    let mut violations = Vec::new();
    for round in 1..=REWRITE_ROUNDS {
        for i in 0..FRESH_IDS {
            let id = format!("a-{i}");
            let record = store
                .put(&id, json!({"round": round}), PutMode::Overwrite)
                .await
                .unwrap();
            if record.version != last[&id] + 1 {
                violations.push(format!("{id}: {} after {}", record.version, last[&id]));
            }
            last.insert(id, record.version);
        }
        for i in 0..REWRITTEN_EXPIRED_IDS {
            let id = format!("c-{i}");
            let record = store
                .put(&id, json!({"round": round}), PutMode::Overwrite)
                .await
                .unwrap();
            // The first rewrite continues the expired record (version 8) or, if a cleanup
            // removed it first, starts a new one (version 1); afterwards it is fresh.
            let fine = match last.get(&id) {
                None => record.version == EXPIRED_VERSION + 1 || record.version == 1,
                Some(previous) => record.version == previous + 1,
            };
            if !fine {
                violations.push(format!(
                    "{id}: {} after {:?}",
                    record.version,
                    last.get(&id)
                ));
            }
            last.insert(id, record.version);
        }
    }
    say(serde_json::to_string(&last).unwrap());
    say(serde_json::to_string(&violations).unwrap());
}

/// Runs cleanups back to back until told to stop, then reports what they removed.
async fn child_cleaner(store: FileStorage) {
    say("ready");
    assert_eq!(read_command().as_deref(), Some("go"));
    let stop = stop_flag();
    let mut tally = CleanupTally::default();
    while !stop.load(Ordering::SeqCst) {
        tally.add(store.cleanup(&CleanupOptions::default()).await.unwrap());
    }
    say(serde_json::to_string(&tally).unwrap());
}

/// What a series of cleanups did.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct CleanupTally {
    runs: usize,
    ran: usize,
    removed: Vec<String>,
}

impl CleanupTally {
    fn add(&mut self, report: CleanupReport) {
        assert!(report.errors.is_empty(), "{report:?}");
        assert!(report.ran || report.removed.is_empty(), "{report:?}");
        self.runs += 1;
        self.ran += usize::from(report.ran);
        self.removed.extend(report.removed);
    }

    fn merge(&mut self, other: CleanupTally) {
        self.runs += other.runs;
        self.ran += other.ran;
        self.removed.extend(other.removed);
    }
}

// ---------------------------------------------------------------------------------------------
// SIGKILL

/// Reads every record file directly: none may be torn, and no version may go back.
fn check_records(dir: &Path, last: &mut HashMap<String, u64>) {
    for name in names(dir) {
        if name == ".tmp" || name == ".locks" {
            continue;
        }
        let id = name
            .strip_suffix(".json")
            .unwrap_or_else(|| panic!("unexpected file {name} in the store"));
        let bytes = fs::read(dir.join(&name)).unwrap();
        let record: Record = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{name} is torn ({} bytes): {e}", bytes.len()));
        assert_eq!(record.id, id);
        let len = record.status["len"].as_u64().unwrap() as usize;
        assert_eq!(record.status["pad"].as_str().unwrap().len(), len, "{name}");
        let seen = last.entry(id.to_string()).or_insert(0);
        assert!(
            record.version >= *seen,
            "{id} went back from version {seen} to {}",
            record.version
        );
        *seen = record.version;
    }
}

#[test]
fn sigkill_mid_write_leaves_no_torn_record_and_cleanup_removes_orphans() {
    const KILLS: u64 = 50;
    const WRITERS: u64 = 2;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    FileStorage::open(&dir).unwrap();
    let mut rng = Rng::seeded(0);
    let spawn = |n: u64| {
        let child = spawn_child("writer", &dir, n);
        child.expect("ready");
        child
    };
    let mut writers: VecDeque<Child> = (0..WRITERS).map(spawn).collect();
    let mut last = HashMap::new();
    for kill in 0..KILLS {
        let victim = writers.pop_front().unwrap();
        // A random instant while both writers are busy.
        std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        victim.kill_hard();
        check_records(&dir, &mut last);
        writers.push_back(spawn(WRITERS + kill));
    }
    for writer in writers {
        writer.kill_hard();
    }
    check_records(&dir, &mut last);
    for id in KILL_IDS {
        assert!(
            last.get(id).is_some_and(|v| *v > 0),
            "{id} was never written"
        );
    }
    // Every record also reads through the store.
    let rt = runtime();
    let store = FileStorage::builder(&dir)
        .with_lazy_sweep(None)
        .build()
        .unwrap();
    for id in KILL_IDS {
        let record = rt.block_on(store.get(id)).unwrap().unwrap();
        assert!(record.version >= last[id]);
    }

    // Killed writers leave staging files; once old they are orphans, and cleanup removes
    // them, but never a staging file young enough to belong to a live writer.
    let staging = dir.join(".tmp");
    let orphans = names(&staging);
    eprintln!("{} staging files left by {KILLS} kills", orphans.len());
    for name in &orphans {
        set_age(&staging.join(name), Duration::from_secs(3600));
    }
    let young = staging.join("rec-0.young.tmp");
    fs::write(&young, b"{").unwrap();
    let report = rt
        .block_on(store.cleanup(&CleanupOptions::default()))
        .unwrap();
    assert!(report.ran);
    assert_eq!(report.leftovers_removed, orphans.len(), "{report:?}");
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(report.kept, KILL_IDS.len());
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(names(&staging), vec!["rec-0.young.tmp".to_string()]);
}

// ---------------------------------------------------------------------------------------------
// Contention between processes

const UPDATERS: u64 = 4;
const UPDATES_EACH: u64 = 100;

#[test]
fn updates_from_several_processes_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    FileStorage::open(&dir).unwrap();
    let mut children: Vec<Child> = (0..UPDATERS)
        .map(|i| spawn_child("updater", &dir, i))
        .collect();
    for child in &children {
        child.expect("ready");
    }
    for child in &mut children {
        child.send("go");
    }
    for child in children {
        child.expect("done");
        child.finish();
    }
    let store = FileStorage::open(&dir).unwrap();
    let record = runtime().block_on(store.get("counter")).unwrap().unwrap();
    assert_eq!(record.status["n"], UPDATERS * UPDATES_EACH);
    assert_eq!(record.version, UPDATERS * UPDATES_EACH);
}

/// Lock files (and the whole `.locks` directory) removed again and again while several
/// processes update one counter, as an operator clearing "stale locks" or a tmp cleaner would:
/// no update that reported success is lost. Before, two writers could each hold "the" lock
/// (one on the removed file, one on its replacement) and one update overwrote the other.
#[test]
fn removing_lock_files_while_held_loses_no_update() {
    const PROCESSES: u64 = 6;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    FileStorage::open(&dir).unwrap();
    let mut children: Vec<Child> = (0..PROCESSES)
        .map(|i| spawn_child("lock-updater", &dir, i))
        .collect();
    for child in &children {
        child.expect("ready");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let remover = {
        let (stop, locks) = (stop.clone(), dir.join(".locks"));
        std::thread::spawn(move || {
            let mut removals = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let removed = if removals % 16 == 15 {
                    fs::remove_dir_all(&locks).is_ok()
                } else {
                    fs::remove_file(locks.join("counter.lock")).is_ok()
                };
                removals += u64::from(removed);
                std::thread::yield_now();
            }
            removals
        })
    };
    for child in &mut children {
        child.send("go");
    }
    let mut succeeded = 0;
    for child in children {
        let line = child.recv();
        let count: u64 = line.strip_prefix("done ").unwrap().parse().unwrap();
        succeeded += count;
        child.finish();
    }
    stop.store(true, Ordering::SeqCst);
    let removals = remover.join().unwrap();
    eprintln!("{removals} lock files or directories removed during {succeeded} updates");
    assert!(removals > 0);
    let store = FileStorage::open(&dir).unwrap();
    let record = runtime().block_on(store.get("counter")).unwrap().unwrap();
    assert_eq!(record.status["n"], succeeded, "updates were lost");
    assert_eq!(record.version, succeeded);
}

#[test]
fn conditional_puts_from_several_processes_one_wins_per_version() {
    const PROCESSES: u64 = 4;
    const ROUNDS: u64 = 30;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let store = FileStorage::builder(&dir)
        .with_lazy_sweep(None)
        .build()
        .unwrap();
    let rt = runtime();
    rt.block_on(store.put("cas", json!({"writer": null}), PutMode::Create))
        .unwrap();
    let mut children: Vec<Child> = (0..PROCESSES)
        .map(|i| spawn_child("cas", &dir, i))
        .collect();
    for child in &children {
        child.expect("ready");
    }
    for _ in 0..ROUNDS {
        let version = rt.block_on(store.get("cas")).unwrap().unwrap().version;
        // Everyone is told the same, soon stale, version at once.
        for child in &mut children {
            child.send(&format!("put {version}"));
        }
        let answers: Vec<String> = children.iter().map(Child::recv).collect();
        let winners: Vec<usize> = (0..answers.len())
            .filter(|&i| answers[i] == format!("won {}", version + 1))
            .collect();
        assert_eq!(winners.len(), 1, "round at version {version}: {answers:?}");
        for (i, answer) in answers.iter().enumerate() {
            if i != winners[0] {
                assert_eq!(answer, &format!("conflict {}", version + 1));
            }
        }
        let record = rt.block_on(store.get("cas")).unwrap().unwrap();
        assert_eq!(record.version, version + 1);
        assert_eq!(record.status["writer"], winners[0] as u64);
    }
    for mut child in children {
        child.send("exit");
        child.finish();
    }
}

const EXPIRED_IDS: usize = 30;
const EXPIRED_VERSION: u64 = 7;

#[test]
fn cleanups_racing_writers_remove_only_expired_records_once() {
    const CLEANER_PROCESSES: u64 = 2;
    const CLEANER_TASKS: usize = 3;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    FileStorage::open(&dir).unwrap();

    let mut rewriter = spawn_child("rewriter", &dir, 0);
    rewriter.expect("ready");
    let hour = Duration::from_secs(3600);
    for i in 0..EXPIRED_IDS {
        write_envelope(&dir, &format!("b-{i}"), EXPIRED_VERSION, hour, json!({}));
    }
    for i in 0..REWRITTEN_EXPIRED_IDS {
        write_envelope(&dir, &format!("c-{i}"), EXPIRED_VERSION, hour, json!({}));
    }
    let mut cleaners: Vec<Child> = (0..CLEANER_PROCESSES)
        .map(|i| spawn_child("cleaner", &dir, i))
        .collect();
    for cleaner in &cleaners {
        cleaner.expect("ready");
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Two handles on the store in this process: tasks of one handle share its in-process
    // locks, the other handle meets them only through the files.
    let handles = [
        FileStorage::builder(&dir)
            .with_lazy_sweep(None)
            .build()
            .unwrap(),
        FileStorage::builder(&dir)
            .with_lazy_sweep(None)
            .build()
            .unwrap(),
    ];
    let tasks: Vec<_> = (0..CLEANER_TASKS)
        .map(|i| {
            let store = handles[i % 2].clone();
            let stop = stop.clone();
            rt.spawn(async move {
                let mut tally = CleanupTally::default();
                while !stop.load(Ordering::SeqCst) {
                    tally.add(store.cleanup(&CleanupOptions::default()).await.unwrap());
                    tokio::task::yield_now().await;
                }
                tally
            })
        })
        .collect();
    for cleaner in &mut cleaners {
        cleaner.send("go");
    }
    rewriter.send("go");
    let last: BTreeMap<String, u64> = serde_json::from_str(&rewriter.recv()).unwrap();
    let violations: Vec<String> = serde_json::from_str(&rewriter.recv()).unwrap();
    rewriter.finish();

    stop.store(true, Ordering::SeqCst);
    let mut tally = CleanupTally::default();
    for task in tasks {
        tally.merge(rt.block_on(task).unwrap());
    }
    for mut cleaner in cleaners {
        cleaner.send("stop");
        tally.merge(serde_json::from_str(&cleaner.recv()).unwrap());
        cleaner.finish();
    }

    assert!(
        violations.is_empty(),
        "fresh records were lost: {violations:?}"
    );
    let mut removed: BTreeMap<String, usize> = BTreeMap::new();
    for id in &tally.removed {
        *removed.entry(id.clone()).or_default() += 1;
    }
    eprintln!(
        "{} cleanups, {} ran, {} skipped",
        tally.runs,
        tally.ran,
        tally.runs - tally.ran
    );
    for i in 0..EXPIRED_IDS {
        let id = format!("b-{i}");
        assert_eq!(removed.get(&id), Some(&1), "{id} removed {removed:?}");
        assert!(!dir.join(format!("{id}.json")).exists());
    }
    for i in 0..FRESH_IDS {
        let id = format!("a-{i}");
        assert_eq!(removed.get(&id), None, "fresh {id} was removed");
    }
    for i in 0..REWRITTEN_EXPIRED_IDS {
        let id = format!("c-{i}");
        assert!(
            removed.get(&id).copied().unwrap_or(0) <= 1,
            "{id}: {removed:?}"
        );
    }
    // Every rewritten record is on disk as last written.
    for (id, version) in &last {
        let bytes = fs::read(dir.join(format!("{id}.json"))).unwrap();
        let record: Record = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(record.version, *version, "{id}");
        assert_eq!(record.status, json!({"round": REWRITE_ROUNDS}), "{id}");
    }
}

/// A cleanup never waits for the lock of a record another process holds (a writer right now,
/// or a frozen one), and goes on with the others. Before, the cleanup waited for the lock
/// without bound. On Unix it removes the expired record all the same, lock file and all (the
/// holder starts over at its commit: see the test after this one); elsewhere it leaves it.
#[test]
fn a_cleanup_does_not_wait_for_a_record_whose_lock_another_process_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let store = FileStorage::builder(&dir)
        .with_lazy_sweep(None)
        .build()
        .unwrap();
    let hour = Duration::from_secs(3600);
    write_envelope(&dir, "held", 4, hour, json!({"state": "running"}));
    write_envelope(&dir, "free", 4, hour, json!({"state": "running"}));
    let mut holder = spawn_child("holder", &dir, 0);
    holder.send("held");
    holder.expect("locked");
    let report =
        run_within_deadline(async move { store.cleanup(&CleanupOptions::default()).await })
            .unwrap();
    if cfg!(unix) {
        assert_eq!(report.removed, ["free", "held"]);
        assert_eq!(report.kept, 0);
        assert!(!dir.join("held.json").exists());
        assert!(!dir.join(".locks/held.lock").exists());
    } else {
        assert_eq!(report.removed, ["free"]);
        assert_eq!(report.kept, 1);
        assert!(dir.join("held.json").exists());
    }
    holder.finish();
}

/// A writer in the middle of an update of an expired record (its lock held, the record read
/// as absent) when a cleanup removes that record and its lock file finds both gone at its
/// commit, starts over, and its write lands as the first of a new record. On Unix a cleanup
/// does not let a held lock keep an expired record; before, it skipped the record.
#[cfg(unix)]
#[test]
fn an_update_whose_expired_record_a_cleanup_removes_meanwhile_starts_over_and_lands() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let hour = Duration::from_secs(3600);
    write_envelope(&dir, "job", 4, hour, json!({"state": "running"}));
    let writer = FileStorage::builder(&dir)
        .with_lazy_sweep(None)
        .build()
        .unwrap();
    // Another handle: it shares no in-process lock with the writer, as another process.
    let cleaner = FileStorage::builder(&dir)
        .with_lazy_sweep(None)
        .build()
        .unwrap();
    // The closure below blocks its worker while the cleanup runs on another.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (inside, in_closure) = mpsc::channel();
    let (go, until_go) = mpsc::channel::<()>();
    let until_go = std::sync::Mutex::new(until_go);
    let update = rt.spawn(async move {
        let mut seen = Vec::new();
        let record = writer
            .update_with("job", |current| {
                seen.push(current.map(|record| record.version));
                if seen.len() == 1 {
                    // Holding the id's lock: let the cleanup run now.
                    inside.send(()).unwrap();
                    let until_go = until_go.lock().unwrap();
                    until_go.recv_timeout(child::DEADLINE).unwrap();
                }
                Ok(json!({"state": "completed"}))
            })
            .await;
        (record, seen)
    });
    in_closure.recv_timeout(child::DEADLINE).unwrap();
    assert!(dir.join(".locks/job.lock").exists());
    let report = rt
        .block_on(cleaner.cleanup(&CleanupOptions::default()))
        .unwrap();
    assert_eq!(report.removed, ["job"]);
    assert!(!dir.join("job.json").exists());
    go.send(()).unwrap();
    let (record, seen) = rt
        .block_on(async { tokio::time::timeout(child::DEADLINE, update).await })
        .unwrap()
        .unwrap();
    let record = record.unwrap();
    // Read as absent both times (expired, then removed), and written once, as a new record.
    assert_eq!(seen, [None, None]);
    assert_eq!(record.version, 1);
    let on_disk: Record = serde_json::from_slice(&fs::read(dir.join("job.json")).unwrap()).unwrap();
    assert_eq!(on_disk.version, 1);
    assert_eq!(on_disk.status, json!({"state": "completed"}));
}

/// A write waits for the lock of its id for the store's lock timeout, then fails with a
/// typed error naming the id: a frozen holder does not block writers forever.
#[test]
fn a_write_waits_for_a_held_lock_only_as_long_as_the_lock_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let timeout = Duration::from_millis(200);
    let store = FileStorage::builder(&dir)
        .with_lazy_sweep(None)
        .with_lock_timeout(timeout)
        .build()
        .unwrap();
    write_envelope(&dir, "frozen", 1, Duration::ZERO, json!({"n": 1}));
    let mut holder = spawn_child("holder", &dir, 0);
    holder.send("frozen");
    holder.expect("locked");
    let results = run_within_deadline(async move {
        let update = store.update_with("frozen", |_| Ok(json!({"n": 2}))).await;
        let put = store
            .put("frozen", json!({"n": 3}), PutMode::Overwrite)
            .await;
        let delete = store.delete("frozen").await.map(|_| ());
        // Other ids are not held up.
        store
            .put("other", json!({}), PutMode::Overwrite)
            .await
            .unwrap();
        [update.map(|_| ()), put.map(|_| ()), delete]
    });
    for result in results {
        match result {
            Err(Error::LockTimeout { id, waited }) => {
                assert_eq!(id, "frozen");
                assert!(waited >= timeout, "{waited:?}");
            }
            other => panic!("expected a lock timeout, got {other:?}"),
        }
    }
    let record: Value =
        serde_json::from_slice(&fs::read(dir.join("frozen.json")).unwrap()).unwrap();
    assert_eq!(record["status"], json!({"n": 1}));
    holder.finish();
}

/// A write of one id is not held up by the lock of another, expired id that another process
/// holds, even when the lazy sweep is due: the sweep runs in the background, skips the held
/// record and removes the rest. Before, the write swept inline and waited for the lock.
#[test]
fn a_due_lazy_sweep_does_not_hold_up_writes_behind_a_held_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let hour = Duration::from_secs(3600);
    write_envelope(&dir, "stuck", 1, hour, json!({"state": "running"}));
    write_envelope(&dir, "stale", 1, hour, json!({"state": "running"}));
    let store = FileStorage::builder(&dir)
        .with_lazy_sweep(Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    let mut holder = spawn_child("holder", &dir, 0);
    holder.send("stuck");
    holder.expect("locked");
    let listed = run_within_deadline(async move {
        store.put("a", json!({}), PutMode::Overwrite).await.unwrap();
        let listed = store.list(&ListFilter::all()).await.unwrap().records.len();
        store.wait_for_lazy_sweep().await;
        listed
    });
    assert_eq!(listed, 1);
    assert!(
        !dir.join("stale.json").exists(),
        "the lazy sweep did not run"
    );
    // On Unix the sweep removes an expired record whatever its lock (see
    // `a_cleanup_does_not_wait_for_a_record_whose_lock_another_process_holds`).
    assert_eq!(dir.join("stuck.json").exists(), cfg!(not(unix)));
    holder.finish();
}

/// Runs `work` on a runtime of its own, failing the test if it is not done within
/// [`child::DEADLINE`] (before the fixes, these waited without bound).
fn run_within_deadline<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(runtime().block_on(work));
    });
    finished
        .recv_timeout(child::DEADLINE)
        .expect("the work waited without bound")
}

// ---------------------------------------------------------------------------------------------
// Bad input

#[tokio::test]
async fn evil_ids_are_refused_and_touch_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outer").join("store");
    let store = FileStorage::builder(&dir)
        .with_lazy_sweep(None)
        .build()
        .unwrap();
    store
        .put("good", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();
    let before = tree(tmp.path());
    let absolute = tmp.path().join("outer").join("escaped");
    let evil = [
        "../x".to_string(),
        "../../x".to_string(),
        "..".to_string(),
        ".".to_string(),
        "a/b".to_string(),
        "a\\b".to_string(),
        "/etc/passwd".to_string(),
        absolute.to_str().unwrap().to_string(),
        "C:\\x".to_string(),
        "a\0b".to_string(),
        "good\0".to_string(),
        ".hidden".to_string(),
        ".locks".to_string(),
        ".tmp".to_string(),
        "CON".to_string(),
        "nul".to_string(),
        "com1.json".to_string(),
        "LPT9".to_string(),
        "x".repeat(129),
        String::new(),
        "a b".to_string(),
        "é".to_string(),
    ];
    for id in &evil {
        let invalid = |result: Result<_, Error>, op: &str| match result {
            Err(Error::InvalidId { .. }) => {}
            Err(other) => panic!("{op}({id:?}) gave {other:?}"),
            Ok(_) => panic!("{op}({id:?}) was accepted"),
        };
        invalid(store.get(id).await.map(|_| ()), "get");
        for mode in [PutMode::Overwrite, PutMode::Create, PutMode::Update(1)] {
            invalid(
                store.put(id, json!({"evil": true}), mode).await.map(|_| ()),
                "put",
            );
        }
        let mut called = false;
        invalid(
            store
                .update_with(id, |_| {
                    called = true;
                    Ok(json!({}))
                })
                .await
                .map(|_| ()),
            "update",
        );
        assert!(!called, "update called its closure for {id:?}");
        invalid(store.delete(id).await.map(|_| ()), "delete");
        invalid(store.path_of(id).map(|_| ()), "path_of");
        invalid(
            store.try_lock(id, Duration::from_secs(1)).await.map(|_| ()),
            "try_lock",
        );
    }
    assert_eq!(tree(tmp.path()), before);
    assert_eq!(
        store.get("good").await.unwrap().unwrap().status,
        json!({"state": "running"})
    );
}

fn place_fixture(dir: &Path, fixture: &str, id: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(fixture);
    let path = dir.join(format!("{id}.json"));
    // Written, not copied: Windows' copy keeps the fixture's old modification time, which a
    // plain status takes as its last write, so it would read as long expired.
    fs::write(&path, fs::read(source).unwrap()).unwrap();
    path
}

fn assert_corrupt(error: &Error, want_id: &str, want_path: &Path) {
    match error {
        Error::Corrupt { id, location, .. } => {
            assert_eq!(id, want_id);
            assert_eq!(location, &Location::File(want_path.to_path_buf()));
            let text = error.to_string();
            assert!(text.contains(want_id), "{text}");
            assert!(text.contains(&want_path.display().to_string()), "{text}");
        }
        other => panic!("expected Corrupt for {want_id}, got {other:?}"),
    }
}

#[tokio::test]
async fn corrupt_and_foreign_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clock = ManualClock::starting_now();
    let store = manual_store(dir, &clock);
    store
        .put("good-1", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();
    store
        .put("good-2", json!({"state": "completed"}), PutMode::Overwrite)
        .await
        .unwrap();
    let broken = place_fixture(dir, "corrupt.json", "broken");
    let array = place_fixture(dir, "array.json", "array");
    let stolen = place_fixture(dir, "other-id.json", "stolen");
    let foreign = place_fixture(dir, "foreign-status.json", "foreign");

    for (id, path) in [("broken", &broken), ("array", &array), ("stolen", &stolen)] {
        assert_corrupt(&store.get(id).await.unwrap_err(), id, path);
        // A conditional write or an update cannot judge the unreadable record either.
        assert_corrupt(
            &store.update_with(id, |_| Ok(json!({}))).await.unwrap_err(),
            id,
            path,
        );
    }
    // One bad file never hides the others.
    let listing = store.list(&ListFilter::all()).await.unwrap();
    let ids: Vec<&str> = listing.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["foreign", "good-1", "good-2"]);
    let mut bad: Vec<(String, PathBuf)> = listing
        .errors
        .iter()
        .map(|error| match error {
            Error::Corrupt {
                id,
                location: Location::File(path),
                ..
            } => (id.clone(), path.clone()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    bad.sort();
    assert_eq!(
        bad,
        vec![
            ("array".to_string(), array.clone()),
            ("broken".to_string(), broken.clone()),
            ("stolen".to_string(), stolen.clone()),
        ]
    );
    // A cleanup reports them and goes on.
    clock.advance(Duration::from_secs(3600));
    let report = store.cleanup(&CleanupOptions::default()).await.unwrap();
    assert_eq!(report.removed, ["foreign", "good-1", "good-2"]);
    let mut problem_ids: Vec<_> = report.errors.iter().map(|p| p.id.clone()).collect();
    problem_ids.sort();
    assert_eq!(
        problem_ids,
        [
            Some("array".into()),
            Some("broken".into()),
            Some("stolen".into())
        ]
    );
    assert!(broken.exists() && array.exists() && stolen.exists());
    assert!(!foreign.exists());
    // An unconditional put replaces a corrupt record; a conditional one cannot judge it.
    assert_corrupt(
        &store
            .put("array", json!({}), PutMode::Create)
            .await
            .unwrap_err(),
        "array",
        &array,
    );
    let replaced = store
        .put("array", json!({"fresh": true}), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(replaced.version, 1);
    assert_eq!(store.get("array").await.unwrap().unwrap(), replaced);
    // Deleting a corrupt record clears the way.
    store.delete("broken").await.unwrap();
    assert!(!broken.exists());
    assert!(store.get("broken").await.unwrap().is_none());
}

#[tokio::test]
async fn plain_status_from_another_tool_reads_as_version_0_and_update_wraps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clock = ManualClock::starting_now();
    let store = manual_store(dir, &clock);
    let path = place_fixture(dir, "foreign-status.json", "script-job");
    let plain: Value =
        serde_json::from_slice(&fs::read(dir.join("script-job.json")).unwrap()).unwrap();

    let record = store.get("script-job").await.unwrap().unwrap();
    assert_eq!(record.id, "script-job");
    assert_eq!(record.version, 0);
    assert_eq!(record.status, plain);
    assert_eq!(record.state(), Some("running"));

    let updated = store
        .update_with("script-job", |current| {
            let mut status = current.unwrap().status.clone();
            status["progress"]["done"] = json!(4);
            Ok(status)
        })
        .await
        .unwrap();
    assert_eq!(updated.version, 1);
    let on_disk: Record = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(on_disk, updated);
    assert_eq!(on_disk.status["progress"]["done"], 4);
    assert_eq!(on_disk.status["message"], "written by a shell script");
}

#[cfg(unix)]
#[tokio::test]
async fn symbolic_links_are_never_followed() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let clock = ManualClock::starting_now();
    let store = manual_store(&dir, &clock);
    // The outside file is a valid record of the id: reading through the link would succeed.
    write_envelope(
        &outside,
        "linked",
        3,
        Duration::ZERO,
        json!({"secret": true}),
    );
    let target = outside.join("linked.json");
    let target_bytes = fs::read(&target).unwrap();
    for id in ["linked", "link-2", "link-3"] {
        symlink(&target, dir.join(format!("{id}.json"))).unwrap();
    }
    store
        .put("plain", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();

    let error = store.get("linked").await.unwrap_err();
    assert!(
        matches!(&error, Error::Io { path, .. } if path == &dir.join("linked.json")),
        "{error:?}"
    );
    let listing = store.list(&ListFilter::all()).await.unwrap();
    assert_eq!(listing.records.len(), 1);
    assert_eq!(listing.records[0].id, "plain");
    assert_eq!(listing.errors.len(), 3, "{:?}", listing.errors);

    // A cleanup that would remove everything reports the links and leaves the target alone.
    clock.advance(Duration::from_secs(3600));
    let report = store
        .cleanup(&CleanupOptions {
            ttl: Some(Duration::ZERO),
            dry_run: false,
        })
        .await
        .unwrap();
    assert_eq!(report.removed, ["plain"]);
    assert_eq!(report.errors.len(), 3, "{report:?}");
    assert_eq!(fs::read(&target).unwrap(), target_bytes);

    // put replaces the link itself.
    let written = store
        .put("linked", json!({"mine": true}), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(written.version, 1);
    let meta = fs::symlink_metadata(dir.join("linked.json")).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(store.get("linked").await.unwrap().unwrap(), written);
    assert_eq!(fs::read(&target).unwrap(), target_bytes);
    // A conditional put cannot judge the link and refuses.
    assert!(
        store
            .put("link-3", json!({}), PutMode::Create)
            .await
            .is_err()
    );
    assert!(
        fs::symlink_metadata(dir.join("link-3.json"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // delete removes the link only.
    assert!(!store.delete("link-2").await.unwrap());
    assert!(fs::symlink_metadata(dir.join("link-2.json")).is_err());
    assert_eq!(fs::read(&target).unwrap(), target_bytes);
}

#[cfg(unix)]
#[tokio::test]
async fn symlinked_staging_or_locks_directory_is_refused_and_never_swept() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    // Files a sweep through the links would remove: an old "staging" file and a lock file
    // of an id without a record.
    let victim_staging = outside.join("job.123.tmp");
    let victim_lock = outside.join("job.lock");
    fs::write(&victim_staging, b"keep me").unwrap();
    fs::write(&victim_lock, b"keep me").unwrap();
    let victims = names(&outside);
    set_age(&victim_staging, Duration::from_secs(3600));
    set_age(&victim_lock, Duration::from_secs(3600));

    for sub in [".tmp", ".locks"] {
        let dir = tmp.path().join(format!("store{sub}"));
        fs::create_dir_all(&dir).unwrap();
        symlink(&outside, dir.join(sub)).unwrap();
        // Opening refuses the layout.
        let error = FileStorage::open(&dir).unwrap_err();
        assert!(
            matches!(&error, Error::Io { path, .. } if path == &dir.join(sub)),
            "{error:?}"
        );
        // If the link appears after the store was opened, cleanup reports it and removes
        // nothing through it.
        fs::remove_file(dir.join(sub)).unwrap();
        let store = FileStorage::builder(&dir)
            .with_lazy_sweep(None)
            .build()
            .unwrap();
        fs::remove_dir(dir.join(sub)).unwrap();
        symlink(&outside, dir.join(sub)).unwrap();
        let error = store.cleanup(&CleanupOptions::default()).await.unwrap_err();
        assert!(
            matches!(&error, Error::Io { path, .. } if path == &dir.join(sub)),
            "{error:?}"
        );
        assert_eq!(names(&outside), victims);
        assert!(victim_staging.exists() && victim_lock.exists());
    }
}

/// A FIFO named like a record would block a reader forever in `open`; the store must report
/// it instead. Run on its own thread so that a hang fails the test instead of stalling it.
#[cfg(unix)]
#[test]
fn a_fifo_in_place_of_a_record_is_an_error_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let fifo = std::ffi::CString::new(dir.join("pipe.json").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let (done, finished) = mpsc::channel();
    let work_dir = dir.clone();
    std::thread::spawn(move || {
        let result = runtime().block_on(async move {
            let store = FileStorage::builder(&work_dir)
                .with_lazy_sweep(None)
                .build()
                .unwrap();
            store
                .put("good", json!({}), PutMode::Overwrite)
                .await
                .unwrap();
            let get = store.get("pipe").await;
            let listing = store.list(&ListFilter::all()).await.unwrap();
            (get, listing)
        });
        let _ = done.send(result);
    });
    let (get, listing) = finished
        .recv_timeout(Duration::from_secs(60))
        .expect("reading the fifo blocked");
    let error = get.unwrap_err();
    assert!(
        matches!(&error, Error::Io { path, .. } if path == &dir.join("pipe.json")),
        "{error:?}"
    );
    assert_eq!(listing.records.len(), 1);
    assert_eq!(listing.errors.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Expiry and lazy sweeps

#[tokio::test]
async fn lazy_sweep_runs_on_writes_after_its_interval_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clock = ManualClock::starting_now();
    let store = FileStorage::builder(dir)
        .with_clock(Arc::new(clock.clone()))
        .with_ttl(TtlPolicy::uniform(Duration::from_secs(60)))
        .with_lazy_sweep(Some(Duration::from_secs(600)))
        .build()
        .unwrap();
    let old = dir.join("old.json");
    // The first write of a store handle sweeps (in the background) and starts the interval.
    store
        .put("old", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    store.wait_for_lazy_sweep().await;
    clock.advance(Duration::from_secs(120));
    // Expired: reads as absent, but the file stays until a sweep.
    assert!(store.get("old").await.unwrap().is_none());
    store
        .put("other", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    store.list(&ListFilter::all()).await.unwrap();
    store.wait_for_lazy_sweep().await;
    assert!(old.exists(), "swept before the interval");
    clock.advance(Duration::from_secs(481));
    store
        .put("other", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    store.wait_for_lazy_sweep().await;
    assert!(!old.exists(), "not swept after the interval");
    assert!(dir.join("other.json").exists());
    assert_eq!(names(dir), [".locks", ".tmp", "other.json"]);
}

#[tokio::test]
async fn a_new_handle_does_not_sweep_again_within_the_interval_of_another() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clock = ManualClock::starting_now();
    let handle = || {
        FileStorage::builder(dir)
            .with_clock(Arc::new(clock.clone()))
            .with_ttl(TtlPolicy::uniform(Duration::from_secs(60)))
            .with_lazy_sweep(Some(Duration::from_secs(600)))
            .build()
            .unwrap()
    };
    // One process sweeps on its first write and leaves the time behind.
    let first = handle();
    first
        .put("first", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    first.wait_for_lazy_sweep().await;
    drop(first);
    let old = dir.join("first.json");
    clock.advance(Duration::from_secs(120));
    // A short-lived process (a CLI call) writes within the interval: no second sweep, so
    // the expired record's file is still there.
    let second = handle();
    second
        .put("second", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    second.wait_for_lazy_sweep().await;
    assert!(old.exists(), "a new handle swept again within the interval");
    clock.advance(Duration::from_secs(481));
    let third = handle();
    third
        .put("third", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    third.wait_for_lazy_sweep().await;
    assert!(!old.exists(), "no sweep once the interval had passed");
}

#[tokio::test]
async fn lazy_sweep_on_list_after_its_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clock = ManualClock::starting_now();
    let store = FileStorage::builder(dir)
        .with_clock(Arc::new(clock.clone()))
        .with_ttl(TtlPolicy::uniform(Duration::from_secs(60)))
        .with_lazy_sweep(Some(Duration::from_secs(600)))
        .build()
        .unwrap();
    store
        .put("old", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(601));
    assert!(dir.join("old.json").exists());
    let listing = store.list(&ListFilter::all()).await.unwrap();
    assert!(listing.records.is_empty());
    store.wait_for_lazy_sweep().await;
    assert!(!dir.join("old.json").exists());
}

#[tokio::test]
async fn without_lazy_sweep_nothing_is_removed_on_the_side() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clock = ManualClock::starting_now();
    let store = FileStorage::builder(dir)
        .with_clock(Arc::new(clock.clone()))
        .with_ttl(TtlPolicy::uniform(Duration::from_secs(60)))
        .with_lazy_sweep(None)
        .build()
        .unwrap();
    store
        .put("old", json!({}), PutMode::Overwrite)
        .await
        .unwrap();
    for _ in 0..3 {
        clock.advance(Duration::from_secs(86_400));
        store
            .put("other", json!({}), PutMode::Overwrite)
            .await
            .unwrap();
        store.list(&ListFilter::all()).await.unwrap();
        store.update_with("third", |_| Ok(json!({}))).await.unwrap();
    }
    assert!(dir.join("old.json").exists());
    assert!(store.get("old").await.unwrap().is_none());
    // An explicit cleanup still works.
    let report = store.cleanup(&CleanupOptions::default()).await.unwrap();
    assert_eq!(report.removed, ["old"]);
    assert!(!dir.join("old.json").exists());
}

/// A record file over the store's size limit is refused by its metadata, before any of it
/// is read (a sparse file of 1 GiB would take that much memory otherwise), with a typed
/// error naming the id; listings report it beside the good records. Writes over the limit
/// are refused too, and the limit is the builder's.
#[tokio::test]
async fn oversize_records_are_refused_on_read_and_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let store = FileStorage::builder(dir)
        .with_lazy_sweep(None)
        .with_max_record_size(4096)
        .build()
        .unwrap();
    // Sparse: its length says 1 GiB, though nothing is on the disk.
    let huge = fs::File::create(dir.join("huge.json")).unwrap();
    huge.set_len(1 << 30).unwrap();
    drop(huge);
    let too_large = |error: &Error, want: &str| matches!(error, Error::TooLarge { id, size, limit: 4096 } if id == want && *size > 4096);
    let error = store.get("huge").await.unwrap_err();
    assert!(too_large(&error, "huge"), "{error:?}");
    store
        .put("small", json!({"n": 1}), PutMode::Overwrite)
        .await
        .unwrap();
    let listing = store.list(&ListFilter::all()).await.unwrap();
    assert_eq!(listing.records.len(), 1);
    assert_eq!(listing.errors.len(), 1);
    assert!(
        too_large(&listing.errors[0], "huge"),
        "{:?}",
        listing.errors
    );
    let error = store
        .put("big", json!({"pad": "x".repeat(4096)}), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert!(too_large(&error, "big"), "{error:?}");
    assert!(!dir.join("big.json").exists());
    assert_eq!(fs::read_dir(dir.join(".tmp")).unwrap().count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Durability and format

#[tokio::test]
async fn fsync_durability_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStorage::builder(tmp.path())
        .with_durability(Durability::Fsync)
        .with_lazy_sweep(None)
        .build()
        .unwrap();
    let first = store
        .put("durable", json!({"state": "running"}), PutMode::Create)
        .await
        .unwrap();
    let second = store
        .update_with("durable", |_| Ok(json!({"state": "completed"})))
        .await
        .unwrap();
    assert_eq!(second.version, first.version + 1);
    assert_eq!(store.get("durable").await.unwrap().unwrap(), second);
    let on_disk: Record =
        serde_json::from_slice(&fs::read(tmp.path().join("durable.json")).unwrap()).unwrap();
    assert_eq!(on_disk, second);
    assert!(store.delete("durable").await.unwrap());
    assert!(store.get("durable").await.unwrap().is_none());
    assert_eq!(names(tmp.path()), [".locks", ".tmp"]);
}

#[tokio::test]
async fn file_format_and_directory_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clock = ManualClock::new(Timestamp::from_millis(1_795_000_000_123));
    let store = manual_store(dir, &clock);
    assert_eq!(names(dir), [".locks", ".tmp"]);
    let record = store
        .put("fmt", json!({"state": "running"}), PutMode::Overwrite)
        .await
        .unwrap();
    let text = fs::read_to_string(dir.join("fmt.json")).unwrap();
    let at = record.updated_at.to_string();
    let expires = record
        .expires_at
        .expect("the default policy expires records");
    assert_eq!(
        expires,
        record.updated_at.saturating_add(syncstatus::DEFAULT_TTL)
    );
    assert_eq!(
        text,
        format!(
            "{{\n  \"id\": \"fmt\",\n  \"version\": 1,\n  \"created_at\": \"{at}\",\n  \
             \"updated_at\": \"{at}\",\n  \"expires_at\": \"{expires}\",\n  \
             \"status\": {{\n    \"state\": \"running\"\n  }}\n}}\n"
        )
    );
    assert!(at.ends_with(".123Z"), "{at}");
    // Readable like a file `fs::write` made: 0666 less the umask, not a temporary 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let reference = dir.join("reference");
        fs::write(&reference, b"{}").unwrap();
        let expected = fs::metadata(&reference).unwrap().permissions().mode() & 0o777;
        fs::remove_file(&reference).unwrap();
        let mode = fs::metadata(dir.join("fmt.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, expected, "record file mode {mode:o}");
    }

    for id in ["a", "b", "c"] {
        store
            .put(id, json!({"n": 1}), PutMode::Overwrite)
            .await
            .unwrap();
    }
    store
        .update_with("b", |_| Ok(json!({"n": 2})))
        .await
        .unwrap();
    store.delete("a").await.unwrap();
    assert_eq!(
        names(dir),
        [".locks", ".tmp", "b.json", "c.json", "fmt.json"]
    );
    assert!(names(&dir.join(".tmp")).is_empty());
    // Lock files of deleted ids are gone.
    assert_eq!(names(&dir.join(".locks")), ["b.lock", "c.lock", "fmt.lock"]);

    clock.advance(Duration::from_secs(3600));
    let report = store.cleanup(&CleanupOptions::default()).await.unwrap();
    assert_eq!(report.removed, ["b", "c", "fmt"]);
    assert_eq!(names(dir), [".locks", ".tmp"]);
    assert!(names(&dir.join(".tmp")).is_empty());
    // Only the store-wide sweep lock stays.
    assert_eq!(names(&dir.join(".locks")), ["@sweep.lock"]);
}

/// A cleanup removes the lock files of ids that have no record (left by a writer killed after
/// a delete, or by a removal that could not take them), and keeps every other: those of the
/// records it keeps, of the ones it could not judge, and one that somebody holds.
#[cfg(unix)]
#[tokio::test]
async fn cleanup_removes_the_lock_files_no_record_uses() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clock = ManualClock::starting_now();
    let store = manual_store(dir, &clock);
    for id in ["live", "other"] {
        store
            .put(id, json!({"state": "running"}), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let locks = dir.join(".locks");
    for orphan in ["gone-1", "gone-2", "held"] {
        fs::write(locks.join(format!("{orphan}.lock")), b"").unwrap();
    }
    // Not a record's lock file by its name: none of the store's business.
    fs::write(locks.join("notes.txt"), b"").unwrap();
    // A record that cannot be judged keeps its lock file too.
    fs::write(dir.join("broken.json"), b"{").unwrap();
    fs::write(locks.join("broken.lock"), b"").unwrap();
    let held = fs::File::options()
        .read(true)
        .write(true)
        .open(locks.join("held.lock"))
        .unwrap();
    held.lock().unwrap();

    let report = store.cleanup(&CleanupOptions::default()).await.unwrap();
    assert!(report.ran);
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(report.leftovers_removed, 2, "{report:?}");
    assert_eq!(
        names(&locks),
        [
            "@sweep.lock",
            "broken.lock",
            "held.lock",
            "live.lock",
            "notes.txt",
            "other.lock"
        ]
    );
    drop(held);
    let report = store.cleanup(&CleanupOptions::default()).await.unwrap();
    assert_eq!(report.leftovers_removed, 1, "{report:?}");
    assert!(!locks.join("held.lock").exists());
    assert!(store.get("live").await.unwrap().is_some());
}

// ---------------------------------------------------------------------------------------------
// Blocking work stays off the async threads

/// A write waiting for the lock of its id (held here, as another process would) must leave
/// the runtime free: on a single-threaded runtime, a heartbeat task keeps ticking and is the
/// one that releases the lock. Done on the async thread, the wait would never end.
#[cfg(unix)]
#[test]
fn a_write_waiting_for_its_lock_leaves_the_runtime_free() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = runtime();
        let result = rt.block_on(async move {
            let store = FileStorage::builder(&dir)
                .with_lazy_sweep(None)
                .build()
                .unwrap();
            store
                .put("busy", json!({"n": 0}), PutMode::Overwrite)
                .await
                .unwrap();
            let held = fs::File::options()
                .read(true)
                .write(true)
                .open(dir.join(".locks").join("busy.lock"))
                .unwrap();
            held.lock().unwrap();
            let writer = {
                let store = store.clone();
                tokio::spawn(
                    async move { store.put("busy", json!({"n": 1}), PutMode::Overwrite).await },
                )
            };
            let ticks = Arc::new(AtomicU64::new(0));
            let heartbeat = {
                let ticks = ticks.clone();
                tokio::spawn(async move {
                    for _ in 0..1000 {
                        ticks.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                    }
                    held.unlock().unwrap();
                })
            };
            heartbeat.await.unwrap();
            let record = writer.await.unwrap().unwrap();
            (ticks.load(Ordering::SeqCst), record.version)
        });
        let _ = done.send(result);
    });
    let (ticks, version) = finished
        .recv_timeout(Duration::from_secs(60))
        .expect("the runtime was blocked by a write waiting for its lock");
    assert_eq!(ticks, 1000);
    assert_eq!(version, 2);
}

/// A listing of many files runs while another task keeps making progress on a
/// single-threaded runtime.
#[test]
fn a_long_listing_leaves_the_runtime_free() {
    const FILES: usize = 3000;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    for i in 0..FILES {
        write_envelope(
            &dir,
            &format!("job-{i:05}"),
            1,
            Duration::ZERO,
            json!({"i": i}),
        );
    }
    let rt = runtime();
    let (records, ticks_during) = rt.block_on(async move {
        let store = FileStorage::builder(&dir)
            .with_lazy_sweep(None)
            .build()
            .unwrap();
        let ticks = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let heartbeat = {
            let (ticks, stop) = (ticks.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    ticks.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
            })
        };
        // Let the heartbeat start.
        while ticks.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let before = ticks.load(Ordering::SeqCst);
        let listing = store.list(&ListFilter::all()).await.unwrap();
        let during = ticks.load(Ordering::SeqCst) - before;
        stop.store(true, Ordering::SeqCst);
        heartbeat.await.unwrap();
        (listing.records.len(), during)
    });
    assert_eq!(records, FILES);
    assert!(
        ticks_during > 0,
        "the heartbeat stood still during the listing"
    );
    eprintln!("{ticks_during} heartbeat ticks during a listing of {FILES} files");
}

/// Windows refuses a rename over a file that another handle holds open (access denied or a
/// sharing violation); writes retry with a bounded backoff, so a reader that keeps opening
/// the record (a poller, a virus scanner, an indexer) never makes one fail. Elsewhere the
/// rename replaces the open file and this passes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_succeed_while_another_handle_keeps_opening_the_record() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStorage::open(tmp.path()).unwrap();
    store
        .put("held", json!({"n": 0}), PutMode::Overwrite)
        .await
        .unwrap();
    let path = tmp.path().join("held.json");
    let stop = Arc::new(AtomicBool::new(false));
    let opens = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, opens) = (stop.clone(), opens.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(bytes) = fs::read(&path) {
                    assert!(
                        serde_json::from_slice::<Value>(&bytes).is_ok(),
                        "a torn read"
                    );
                    opens.fetch_add(1, Ordering::SeqCst);
                }
                // A poller's pace (100 reads a second), not a wait for anything: the file
                // is open for a good part of the time, so a write that does not retry
                // fails within a few dozen, and one that retries finds it closed.
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let writes = 200;
    for n in 1..=writes {
        let written = store.put("held", json!({"n": n}), PutMode::Overwrite).await;
        if let Err(error) = written {
            stop.store(true, Ordering::SeqCst);
            panic!("write {n} failed while a reader held the file open: {error}");
        }
    }
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    assert!(opens.load(Ordering::SeqCst) > 0, "the reader never read");
    let record = store.get("held").await.unwrap().unwrap();
    assert_eq!(record.version, writes + 1);
    assert_eq!(record.status, json!({"n": writes}));
}

#[tokio::test]
async fn a_put_reads_only_the_head_of_the_record_it_replaces() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let store = manual_store(tmp.path(), &clock);
    let first = store
        .put(
            "big",
            json!({"state": "running", "blob": "x".repeat(100_000)}),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    // Damage the status far behind the head: a write that parsed the whole old record would
    // fail on it; one that reads the head (all it needs: version, creation, expiry) does not.
    let path = tmp.path().join("big.json");
    let mut bytes = fs::read(&path).unwrap();
    let len = bytes.len();
    bytes[len - 1000..].fill(b'#');
    fs::write(&path, &bytes).unwrap();
    assert!(
        store.get("big").await.is_err(),
        "the damage is seen by a read"
    );
    let second = store
        .put(
            "big",
            json!({"state": "completed"}),
            PutMode::Update(first.version),
        )
        .await
        .unwrap();
    assert_eq!(second.version, first.version + 1);
    assert_eq!(second.created_at, first.created_at);
    assert_eq!(store.get("big").await.unwrap().unwrap(), second);
}

#[tokio::test]
async fn cleanup_skips_files_written_more_recently_than_the_shortest_ttl_without_reading_them() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStorage::builder(tmp.path())
        .with_ttl(TtlPolicy::uniform(Duration::from_secs(300)))
        .with_lazy_sweep(None)
        .build()
        .unwrap();
    // Both expired by their content; only the second also has an old file time.
    write_envelope(
        tmp.path(),
        "copied",
        1,
        Duration::from_secs(600),
        json!({"state": "running"}),
    );
    write_envelope(
        tmp.path(),
        "old",
        1,
        Duration::from_secs(600),
        json!({"state": "running"}),
    );
    // As `cp` without `-p` leaves it: old content, a new file time.
    set_age(&tmp.path().join("copied.json"), Duration::ZERO);
    // A damaged file with a fresh time is not even opened, so it is no problem to report.
    fs::write(tmp.path().join("fresh-garbage.json"), b"not json").unwrap();
    let report = store.cleanup(&CleanupOptions::default()).await.unwrap();
    assert_eq!(report.removed, ["old"]);
    assert_eq!(report.kept, 2, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    // Reads judge by content all the same: the copied record is expired.
    assert_eq!(store.get("copied").await.unwrap(), None);
    assert!(tmp.path().join("copied.json").exists());
}
