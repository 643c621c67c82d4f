//! The file store at scale (issue 14): cost must follow the work, not the size of the store.
//! Every figure is a ratio against a baseline measured in the same run, with the order of
//! the variants rotated from round to round.
//!
//! - put of records of 1 KB to 10 MB against the raw floor (serialize the same record, lock
//!   file, staging file, rename);
//! - put and get in a store of 100k records against a store of 1k (a lazy sweep due in both);
//! - cleanup of 100k records, half expired, against `find -mmin +5 -delete`, with a floor
//!   beside it: the least a cleanup that reads what it removes does (list, stat, read, parse,
//!   unlink, in one thread, no store);
//! - stats over 100k records against a raw streaming count (read + parse + count per file),
//!   time and peak memory, each in a process of its own.
//!
//! Run with `cargo bench --bench file_scale`. Knobs: `ROUNDS` (default 3), `RECORDS`
//! (default 100000), `SECTIONS` (any of `sizes,dirs,cleanup,stats`; default all).

#[path = "support/mod.rs"]
mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use support::{
    env_or, fresh_dir, load_average, median, min_max, peak_rss_kib, ratio_text, raw_put,
    rotated_rounds,
};
use syncstatus::{CleanupOptions, FileStorage, PutMode, Record, SyncStorage, Timestamp};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A status of about `bytes` bytes on disk: a list of items, as a batch import writes.
fn status_of_size(bytes: usize) -> Value {
    let items: Vec<Value> = (0..bytes / 64)
        .map(|i| json!({"n": i, "name": format!("invoice-{i:08}"), "ok": true}))
        .collect();
    json!({"state": "running", "progress": {"done": 1, "total": 2}, "items": items})
}

fn envelope(id: &str, at: Timestamp, ttl: Duration, state: &str) -> Vec<u8> {
    let record = Record {
        id: id.to_string(),
        version: 1,
        created_at: at,
        updated_at: at,
        expires_at: Some(at.saturating_add(ttl)),
        status: json!({"state": state, "progress": {"done": 3, "total": 600}, "message": "page 3"}),
    };
    let mut bytes = serde_json::to_vec_pretty(&record).unwrap();
    bytes.push(b'\n');
    bytes
}

/// `count` records in `dir`, every other one written 10 minutes ago (file time too) and so
/// expired under the default 5-minute TTL when `half_expired`.
fn populate(dir: &Path, count: usize, half_expired: bool) {
    let now = SystemTime::now();
    let old = now - Duration::from_secs(600);
    let states = ["running", "completed", "failed", "pending"];
    for n in 0..count {
        let id = format!("job-{n:07}");
        let expired = half_expired && n % 2 == 0;
        let at = if expired { old } else { now };
        let bytes = envelope(
            &id,
            Timestamp::from_system_time(at),
            syncstatus::DEFAULT_TTL,
            states[n % states.len()],
        );
        let path = dir.join(format!("{id}.json"));
        fs::write(&path, bytes).unwrap();
        if expired {
            fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
    }
}

/// A lock file for each record, as the store leaves them after a write, as old as its record.
fn add_lock_files(dir: &Path, count: usize) {
    let locks = dir.join(".locks");
    fs::create_dir_all(&locks).unwrap();
    let old = SystemTime::now() - Duration::from_secs(600);
    for n in 0..count {
        let file = fs::File::create(locks.join(format!("job-{n:07}.lock"))).unwrap();
        if n % 2 == 0 {
            file.set_modified(old).unwrap();
        }
    }
}

fn seconds(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

fn sizes(rounds: usize, root: &Path) {
    println!("\n## put by record size (ops/s; ours / raw floor, goal >= 0.8x)");
    println!(
        "| record on disk | ops/round | floor median ops/s | put median ops/s | put / floor |"
    );
    println!("|---|---|---|---|---|");
    let rt = runtime();
    for (size, ops) in [
        (1_000, 400),
        (100_000, 100),
        (1_000_000, 20),
        (10_000_000, 4),
    ] {
        let status = status_of_size(size);
        let floor_dir = fresh_dir(root, "floor");
        let store_dir = root.join("sized");
        let _ = fs::remove_dir_all(&store_dir);
        let store = FileStorage::builder(&store_dir)
            .with_max_record_size(64 << 20)
            .with_lazy_sweep(None)
            .build()
            .unwrap();
        let ids: Vec<String> = (0..4).map(|i| format!("big-{i}")).collect();
        for id in &ids {
            rt.block_on(store.put(id, status.clone(), PutMode::Overwrite))
                .unwrap();
        }
        let on_disk = fs::metadata(store_dir.join("big-0.json")).unwrap().len();
        let mut version = 1;
        let mut floor = || {
            let start = Instant::now();
            for n in 0..ops {
                let id = &ids[n % ids.len()];
                let now = Timestamp::now();
                version += 1;
                // The same work as the store: serialize the whole record, then write it.
                let record = Record {
                    id: id.clone(),
                    version,
                    created_at: now,
                    updated_at: now,
                    expires_at: Some(now.saturating_add(syncstatus::DEFAULT_TTL)),
                    status: status.clone(),
                };
                let mut bytes = serde_json::to_vec_pretty(&record).unwrap();
                bytes.push(b'\n');
                raw_put(&floor_dir, id, &bytes, false);
            }
            ops as f64 / start.elapsed().as_secs_f64()
        };
        let mut ours = || {
            let start = Instant::now();
            rt.block_on(async {
                for n in 0..ops {
                    store
                        .put(&ids[n % ids.len()], status.clone(), PutMode::Overwrite)
                        .await
                        .unwrap();
                }
            });
            ops as f64 / start.elapsed().as_secs_f64()
        };
        let values = rotated_rounds(rounds, &mut [&mut floor, &mut ours]);
        let (_, ratio) = ratio_text(&values[1], &values[0]);
        println!(
            "| {on_disk} B | {ops} | {:.0} | {:.0} | {ratio} |",
            median(&values[0]),
            median(&values[1])
        );
    }
}

fn dirs(rounds: usize, root: &Path, records: usize) {
    println!(
        "\n## put and get in a store of {records} records vs 1000 (ops/s; a lazy sweep due in both; goal: >= 0.5x, i.e. at most 2x the time)"
    );
    let rt = runtime();
    let small_dir = fresh_dir(root, "small");
    let large_dir = fresh_dir(root, "large");
    populate(&small_dir, 1_000, false);
    populate(&large_dir, records, false);
    let open = |dir: &Path| FileStorage::builder(dir).build().unwrap();
    let puts = 2_000;
    let gets = 20_000;
    let run = |dir: &Path, put: bool| {
        // A fresh handle per round: its first write finds the sweep due, as a restarted
        // server does.
        let _ = fs::remove_file(dir.join(".locks").join("@sweep.last"));
        let store = open(dir);
        let ops = if put { puts } else { gets };
        let start = Instant::now();
        rt.block_on(async {
            for n in 0..ops {
                let id = format!("job-{:07}", n % 1_000);
                if put {
                    store
                        .put(&id, json!({"state": "running", "n": n}), PutMode::Overwrite)
                        .await
                        .unwrap();
                } else {
                    std::hint::black_box(store.get(&id).await.unwrap());
                }
            }
        });
        ops as f64 / start.elapsed().as_secs_f64()
    };
    let mut small_put = || run(&small_dir, true);
    let mut large_put = || run(&large_dir, true);
    let mut small_get = || run(&small_dir, false);
    let mut large_get = || run(&large_dir, false);
    let values = rotated_rounds(
        rounds,
        &mut [
            &mut small_put,
            &mut large_put,
            &mut small_get,
            &mut large_get,
        ],
    );
    println!("| op | 1k median ops/s | {records} median ops/s | large / small |");
    println!("|---|---|---|---|");
    for (name, small, large) in [("put", 0, 1), ("get", 2, 3)] {
        let (_, ratio) = ratio_text(&values[large], &values[small]);
        println!(
            "| {name} | {:.0} | {:.0} | {ratio} |",
            median(&values[small]),
            median(&values[large])
        );
    }
}

/// CPU seconds (user + system) this process has used, or with `children` those of the
/// children it has waited for, from `/proc/self/stat` (in USER_HZ ticks, 100 a second on
/// Linux). Beside the wall time: a disk that stalls swings the wall time of both a cleanup
/// and `find` far more than the work either does.
fn cpu_seconds(children: bool) -> f64 {
    let Ok(stat) = fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // After the command name in parentheses: field 3 (state) onwards.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (user, system) = if children { (13, 14) } else { (11, 12) };
    let ticks = |k: usize| {
        fields
            .get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(user) + ticks(system)) / 100.0
}

/// How the floor names the files it opens and removes.
#[derive(Clone, Copy)]
enum Naming {
    /// By path, as the store does: every call walks the directory's path again.
    Paths,
    /// Relative to the open directory (`openat`, `unlinkat`), as `find` does (Linux only; by
    /// path elsewhere).
    Relative,
}

/// A directory opened, for calls relative to it.
struct OpenDir {
    #[cfg(target_os = "linux")]
    dir: fs::File,
    path: std::path::PathBuf,
}

impl OpenDir {
    fn open(path: &Path) -> Self {
        OpenDir {
            #[cfg(target_os = "linux")]
            dir: fs::File::open(path).unwrap(),
            path: path.to_path_buf(),
        }
    }

    /// `name` opened for reading without touching its access time.
    fn open_file(&self, name: &str, naming: Naming) -> fs::File {
        #[cfg(target_os = "linux")]
        if let Naming::Relative = naming {
            use std::os::fd::{AsRawFd, FromRawFd};
            let name = std::ffi::CString::new(name).unwrap();
            // SAFETY: the directory's descriptor is open for the call and `name` is
            // NUL-terminated; the descriptor returned is owned by the `File` made of it alone.
            unsafe {
                let fd = libc::openat(
                    self.dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOATIME,
                );
                assert!(fd >= 0, "openat: {}", std::io::Error::last_os_error());
                return fs::File::from_raw_fd(fd);
            }
        }
        let _ = naming;
        let mut options = fs::OpenOptions::new();
        options.read(true);
        #[cfg(target_os = "linux")]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOATIME);
        options.open(self.path.join(name)).unwrap()
    }

    fn remove(&self, name: &str, naming: Naming) {
        #[cfg(target_os = "linux")]
        if let Naming::Relative = naming {
            use std::os::fd::AsRawFd;
            let name = std::ffi::CString::new(name).unwrap();
            // SAFETY: the directory's descriptor is open for the call and `name` is
            // NUL-terminated.
            let done = unsafe { libc::unlinkat(self.dir.as_raw_fd(), name.as_ptr(), 0) };
            assert_eq!(done, 0, "unlinkat: {}", std::io::Error::last_os_error());
            return;
        }
        let _ = naming;
        fs::remove_file(self.path.join(name)).unwrap();
    }
}

/// The least a cleanup that judges each removed record by its content can do, in one thread
/// with no store: list the directory, skip files newer than the TTL by their time (as
/// `find -mmin` does), open each older one without touching its access time, read it with one
/// `read`, parse its expiry, and unlink it (and its lock file with `lock_files`) if expired.
/// No locks and no re-check under them, so our cleanup's distance from it is what locking and
/// the store's own code cost, and its distance from `find` what reading every removed record
/// costs by itself. Gives how many records it removed.
fn read_and_remove_floor(dir: &Path, lock_files: bool, naming: Naming) -> usize {
    #[derive(serde::Deserialize)]
    struct Expiry {
        expires_at: Option<Timestamp>,
    }
    let now = SystemTime::now();
    let records = OpenDir::open(dir);
    let locks = OpenDir::open(&dir.join(".locks"));
    let mut buf = vec![0u8; 64 * 1024];
    let mut removed = 0;
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        if entry.metadata().unwrap().modified().unwrap() + syncstatus::DEFAULT_TTL > now {
            continue;
        }
        let mut file = records.open_file(name, naming);
        let n = std::io::Read::read(&mut file, &mut buf).unwrap();
        assert!(n < buf.len(), "{id}: a record of the bench fits the buffer");
        drop(file);
        let expiry: Expiry = serde_json::from_slice(&buf[..n]).unwrap();
        if expiry.expires_at.is_some_and(|at| at <= Timestamp::now()) {
            records.remove(name, naming);
            if lock_files {
                locks.remove(&format!("{id}.lock"), naming);
            }
            removed += 1;
        }
    }
    removed
}

fn cleanup(rounds: usize, root: &Path, records: usize) {
    println!(
        "\n## cleanup of {records} records, half expired (seconds; ours / find, goal <= 1.5x)"
    );
    let rt = runtime();
    let find_dir = root.join("find");
    let ours_dir = root.join("ours");
    let floor_dir = root.join("floor");
    let mut cpu: [Vec<f64>; 8] = Default::default();
    let [
        cpu_find,
        cpu_ours,
        cpu_find_locked,
        cpu_ours_locked,
        cpu_floor,
        cpu_floor_locked,
        cpu_floor_at,
        cpu_floor_at_locked,
    ] = &mut cpu;
    let mut find = || {
        let dir = fresh_dir(root, "find");
        populate(&dir, records, true);
        let before = cpu_seconds(true);
        let wall = seconds(|| {
            let status = Command::new("find")
                .arg(&find_dir)
                .args([
                    "-maxdepth",
                    "1",
                    "-name",
                    "*.json",
                    "-mmin",
                    "+5",
                    "-delete",
                ])
                .status()
                .unwrap();
            assert!(status.success());
        });
        cpu_find.push(cpu_seconds(true) - before);
        wall
    };
    // Like with like for records the store wrote: `find` removes the expired records and
    // their lock files (as old as the record), the work the cleanup does for them.
    let mut find_locked = || {
        let dir = fresh_dir(root, "find");
        populate(&dir, records, true);
        add_lock_files(&dir, records);
        let before = cpu_seconds(true);
        let wall = seconds(|| {
            let status = Command::new("find")
                .arg(&find_dir)
                .args("-maxdepth 2 ( -name *.json -o -name *.lock ) -mmin +5 -delete".split(' '))
                .status()
                .unwrap();
            assert!(status.success());
        });
        cpu_find_locked.push(cpu_seconds(true) - before);
        wall
    };
    // Records written by another tool have no lock file; those the store wrote keep theirs
    // (a writer leaves it for the next one), and a cleanup then takes and removes it too.
    let run_ours = |with_lock_files: bool, cpu: &mut Vec<f64>| {
        let dir = fresh_dir(root, "ours");
        populate(&dir, records, true);
        let store = FileStorage::builder(&ours_dir)
            .with_lazy_sweep(None)
            .build()
            .unwrap();
        if with_lock_files {
            add_lock_files(&dir, records);
        }
        let mut removed = 0;
        let before = cpu_seconds(false);
        let time = seconds(|| {
            removed = rt
                .block_on(store.cleanup(&CleanupOptions::default()))
                .unwrap()
                .removed
                .len();
        });
        cpu.push(cpu_seconds(false) - before);
        assert_eq!(removed, records / 2);
        time
    };
    let mut ours = || run_ours(false, cpu_ours);
    let mut ours_locked = || run_ours(true, cpu_ours_locked);
    let run_floor = |with_lock_files: bool, naming: Naming, cpu: &mut Vec<f64>| {
        let dir = fresh_dir(root, "floor");
        populate(&dir, records, true);
        if with_lock_files {
            add_lock_files(&dir, records);
        }
        let mut removed = 0;
        let before = cpu_seconds(false);
        let time = seconds(|| {
            removed = read_and_remove_floor(&floor_dir, with_lock_files, naming);
        });
        cpu.push(cpu_seconds(false) - before);
        assert_eq!(removed, records / 2);
        time
    };
    let mut floor = || run_floor(false, Naming::Paths, cpu_floor);
    let mut floor_locked = || run_floor(true, Naming::Paths, cpu_floor_locked);
    let mut floor_at = || run_floor(false, Naming::Relative, cpu_floor_at);
    let mut floor_at_locked = || run_floor(true, Naming::Relative, cpu_floor_at_locked);
    let values = rotated_rounds(
        rounds,
        &mut [
            &mut find,
            &mut ours,
            &mut find_locked,
            &mut ours_locked,
            &mut floor,
            &mut floor_locked,
            &mut floor_at,
            &mut floor_at_locked,
        ],
    );
    cleanup_table(&values);
    println!(
        "\nCPU seconds (user + system, 10 ms ticks) of the same rounds: find's process, and this one during the cleanup"
    );
    cleanup_table(&cpu);
}

/// Seconds (or CPU seconds) per case, `values` in the order of the variants: find, ours,
/// find with lock files, ours with them, the read-and-remove floor, the floor with them, and
/// the floor with calls relative to the directory, without and with lock files.
fn cleanup_table(values: &[Vec<f64>]) {
    println!(
        "| records | measured | baseline | median s (min–max) | baseline median s (min–max) | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    const WITHOUT: &str = "without lock files";
    const WITH: &str = "with a lock file each (find removes both)";
    const RELATIVE: &str = "floor, relative calls";
    for (what, name, at, base_name, base) in [
        (WITHOUT, "cleanup", 1, "find", 0),
        (WITHOUT, "floor", 4, "find", 0),
        (WITHOUT, "cleanup", 1, "floor", 4),
        (WITHOUT, RELATIVE, 6, "find", 0),
        (WITHOUT, "cleanup", 1, RELATIVE, 6),
        (WITH, "cleanup", 3, "find", 2),
        (WITH, "floor", 5, "find", 2),
        (WITH, "cleanup", 3, "floor", 5),
        (WITH, RELATIVE, 7, "find", 2),
        (WITH, "cleanup", 3, RELATIVE, 7),
    ] {
        let (_, ratio) = ratio_text(&values[at], &values[base]);
        let (bmin, bmax) = min_max(&values[base]);
        let (omin, omax) = min_max(&values[at]);
        println!(
            "| {what} | {name} | {base_name} | {:.3} ({omin:.3}–{omax:.3}) | {:.3} ({bmin:.3}–{bmax:.3}) | {ratio} |",
            median(&values[at]),
            median(&values[base])
        );
    }
}

/// In a child process: runs `what` over `dir` and prints `seconds peak_kib`.
fn child(what: &str, dir: &Path) {
    let elapsed = match what {
        "idle" => 0.0,
        "raw-count" => seconds(|| {
            let mut counts = std::collections::BTreeMap::<String, u64>::new();
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let record: Record = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
                *counts
                    .entry(record.state().unwrap_or_default().to_string())
                    .or_default() += 1;
            }
            std::hint::black_box(counts);
        }),
        "stats" => {
            let rt = runtime();
            let store = FileStorage::builder(dir)
                .with_lazy_sweep(None)
                .build()
                .unwrap();
            seconds(|| {
                let stats = rt
                    .block_on(syncstatus::stats(&store, Duration::from_secs(60)))
                    .unwrap();
                std::hint::black_box(stats);
            })
        }
        other => panic!("unknown child {other}"),
    };
    println!("{elapsed} {}", peak_rss_kib().unwrap_or(0));
}

fn run_child(what: &str, dir: &Path) -> (f64, f64) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--child", what])
        .arg(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let mut parts = text.split_whitespace();
    let seconds: f64 = parts.next().unwrap().parse().unwrap();
    let kib: f64 = parts.next().unwrap().parse().unwrap();
    (seconds, kib)
}

fn stats(rounds: usize, root: &Path, records: usize) {
    println!(
        "\n## stats over {records} records, each run in its own process (goal: <= 10 MB over an idle process, time <= 1.2x the raw streaming count)"
    );
    let dir = fresh_dir(root, "stats");
    populate(&dir, records, false);
    let (mut raw_peaks, mut our_peaks) = (Vec::new(), Vec::new());
    let mut raw = || {
        let (s, kib) = run_child("raw-count", &dir);
        raw_peaks.push(kib);
        s
    };
    let mut ours = || {
        let (s, kib) = run_child("stats", &dir);
        our_peaks.push(kib);
        s
    };
    let values = rotated_rounds(rounds, &mut [&mut raw, &mut ours]);
    let idle_peaks: Vec<f64> = (0..rounds).map(|_| run_child("idle", &dir).1).collect();
    let peaks = [raw_peaks, our_peaks, idle_peaks];
    let (_, ratio) = ratio_text(&values[1], &values[0]);
    let idle = median(&peaks[2]);
    println!("| variant | median s | peak RSS median KiB | over idle KiB |");
    println!("|---|---|---|---|");
    for (name, i) in [("raw streaming count", 0), ("syncstatus::stats", 1)] {
        println!(
            "| {name} | {:.3} | {:.0} | {:.0} |",
            median(&values[i]),
            median(&peaks[i]),
            median(&peaks[i]) - idle
        );
    }
    println!("| idle process | | {idle:.0} | |");
    println!("stats / raw count time: {ratio}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        child(&args[at + 1], Path::new(&args[at + 2]));
        return;
    }
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` run only checks it builds.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let rounds = env_or("ROUNDS", 3).max(3);
    let records = env_or("RECORDS", 100_000);
    let sections = std::env::var("SECTIONS").unwrap_or_else(|_| "sizes,dirs,cleanup,stats".into());
    let root = tempfile::tempdir().unwrap();
    println!(
        "file_scale: {rounds} rotated rounds, load average at start {}",
        load_average()
    );
    for section in sections.split(',') {
        match section {
            "sizes" => sizes(rounds, root.path()),
            "dirs" => dirs(rounds, root.path(), records),
            "cleanup" => cleanup(rounds, root.path(), records),
            "stats" => stats(rounds, root.path(), records),
            other => eprintln!("unknown section {other}"),
        }
    }
    println!("\nload average at end {}", load_average());
}
