use std::fs;
use std::time::Duration;

use super::{Durability, ExpiredRecord, Layout, ReadFile};
use crate::ttl::TtlPolicy;

fn layout(dir: &std::path::Path) -> Layout {
    let layout = Layout::new(
        dir.to_path_buf(),
        1 << 20,
        Duration::from_secs(5),
        TtlPolicy::default(),
    );
    layout.create_dirs().unwrap();
    layout
}

/// A run of removals judged without the ids' locks removes a record only if the file is
/// still the one read: one replaced (renamed over, as every writer does) or removed since
/// is left alone, and the others are removed. The lock file the sweep holds for a record goes
/// with it, and stays with a record that stays.
#[test]
fn a_run_of_removals_removes_only_the_files_still_as_read() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = layout(tmp.path());
    let ids: Vec<String> = [
        "same",
        "replaced",
        "gone",
        "also-same",
        "locked",
        "locked-replaced",
    ]
    .map(str::to_string)
    .into();
    let locked = |id: &str| id.starts_with("locked");
    for id in &ids {
        fs::write(layout.record_path(id), b"{}\n").unwrap();
    }
    let run: Vec<ExpiredRecord> = ids
        .iter()
        .map(|id| ExpiredRecord {
            id: id.clone(),
            read: ReadFile::at(&layout.record_path(id)).unwrap(),
            lock: locked(id).then(|| layout.try_lock(id).unwrap().unwrap()),
        })
        .collect();
    for replaced in ["replaced", "locked-replaced"] {
        let staged = tmp.path().join("staged");
        fs::write(&staged, b"{\"new\": true}\n").unwrap();
        fs::rename(&staged, layout.record_path(replaced)).unwrap();
    }
    fs::remove_file(layout.record_path("gone")).unwrap();

    for durability in [Durability::Rename, Durability::Fsync] {
        let outcomes = layout.remove_unlocked_run(&run, durability).unwrap();
        let removed: Vec<bool> = outcomes.into_iter().map(|o| o.unwrap()).collect();
        // Run twice: the second finds nothing more to remove.
        if durability == Durability::Rename {
            assert_eq!(removed, [true, false, false, true, true, false]);
        } else {
            assert_eq!(removed, [false; 6]);
        }
    }
    for id in ["same", "also-same", "locked"] {
        assert!(!layout.record_path(id).exists(), "{id}");
    }
    assert!(!layout.lock_path("locked").exists());
    assert!(layout.lock_path("locked-replaced").exists());
    for replaced in ["replaced", "locked-replaced"] {
        assert_eq!(
            fs::read(layout.record_path(replaced)).unwrap(),
            b"{\"new\": true}\n"
        );
    }
    // The locks are let go with the run.
    drop(run);
    assert!(layout.try_lock("locked-replaced").unwrap().is_some());
}

/// Reading a record leaves its access time alone (on Linux, where the owner may ask): with
/// `relatime` the first read after a write would otherwise write the inode back. A twin file
/// read by `std::fs::read` on the same mount shows the mount does update access times; on one
/// that never does, there is nothing to tell apart.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn reading_a_record_leaves_its_access_time_alone() {
    use std::fs::FileTimes;
    use std::time::SystemTime;

    let tmp = tempfile::tempdir().unwrap();
    let layout = layout(tmp.path());
    let record = br#"{"id":"job","version":1,"created_at":"2026-12-01T00:00:00.000Z","updated_at":"2026-12-01T00:00:00.000Z","expires_at":null,"status":{"state":"running"}}"#;
    let twin = tmp.path().join("twin");
    fs::write(layout.record_path("job"), record).unwrap();
    fs::write(&twin, record).unwrap();
    // Accessed long before it was last modified: relatime updates the access time on the
    // next read.
    let accessed = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for path in [layout.record_path("job"), twin.clone()] {
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_times(
                FileTimes::new()
                    .set_accessed(accessed)
                    .set_modified(modified),
            )
            .unwrap();
    }
    fs::read(&twin).unwrap();
    let twin_accessed = fs::metadata(&twin).unwrap().accessed().unwrap();
    if twin_accessed == accessed {
        eprintln!("this mount never updates access times: nothing to compare");
        return;
    }
    let (head, _) = layout.read_head_with_id("job").unwrap();
    assert!(head.is_some());
    let (read, _) = layout.read_with_id("job").unwrap();
    assert_eq!(read.unwrap().id, "job");
    let record_accessed = fs::metadata(layout.record_path("job"))
        .unwrap()
        .accessed()
        .unwrap();
    assert_eq!(record_accessed, accessed, "the read moved the access time");
}

/// A record another user owns is still read: the kernel grants `O_NOATIME` only to the
/// file's owner (anyone else gets EPERM), and the read then opens the file without it. Root
/// is granted it on every file, so the reading thread takes another user's file-system
/// identity (`setfsuid`, which holds for the calling thread alone and takes root's file
/// capabilities with it) and the thread ends with the test.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[test]
fn a_record_of_another_user_is_read_without_no_atime() {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: every file this test can make is its own, and O_NOATIME is allowed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let layout = layout(tmp.path());
    let path = layout.record_path("job");
    fs::write(&path, br#"{"id":"job","version":1,"created_at":"2026-12-01T00:00:00.000Z","updated_at":"2026-12-01T00:00:00.000Z","expires_at":null,"status":{"state":"running"}}"#).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let (refused, read) = std::thread::spawn(move || {
        // SAFETY: changes the file-system identity of this thread only (no other thread
        // shares it), which ends right after.
        unsafe { libc::setfsuid(65534) };
        let refused = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(&path)
            .err()
            .and_then(|error| error.raw_os_error());
        let read = layout
            .read_with_id("job")
            .map(|(record, _)| record.map(|record| record.id))
            .map_err(|error| error.to_string());
        (refused, read)
    })
    .join()
    .unwrap();
    assert_eq!(
        refused,
        Some(libc::EPERM),
        "the thread is not the file's owner"
    );
    assert_eq!(read, Ok(Some("job".to_string())));
}
