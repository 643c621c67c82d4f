use std::fs;
use std::time::Duration;

use super::{Durability, Layout};
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

fn envelope(id: &str, expires_at: &str) -> String {
    format!(
        r#"{{"id":"{id}","version":1,"created_at":"2026-12-01T00:00:00.000Z","updated_at":"2026-12-01T00:00:00.000Z","expires_at":"{expires_at}","status":{{"state":"running"}}}}"#
    )
}

const PAST: &str = "2001-01-01T00:00:00.000Z";
const FUTURE: &str = "2999-01-01T00:00:00.000Z";

/// A run of removals reads each candidate under the commit lock and removes only what is
/// expired then: a record replaced since the sweep listed it is judged by what replaced it
/// (removed if that is expired too, kept if not), one removed meanwhile is reported gone. The
/// lock file of a removed record goes with it even while a writer holds it, and that writer
/// sees its lock lost (so it starts over at its commit); the lock file of a record that stays
/// stays, still held.
#[cfg(unix)]
#[test]
fn a_run_of_removals_judges_each_record_as_it_is_under_the_commit_lock() {
    use super::{RemovalCandidate, RunOutcome};
    use crate::record::Timestamp;

    let tmp = tempfile::tempdir().unwrap();
    let layout = layout(tmp.path());
    let ids: Vec<String> = [
        "expired",
        "live",
        "replaced-live",
        "replaced-expired",
        "gone",
        "locked",
        "locked-replaced-live",
    ]
    .map(str::to_string)
    .into();
    let locked = |id: &str| id.starts_with("locked");
    for id in &ids {
        let expires = if id == "live" { FUTURE } else { PAST };
        fs::write(layout.record_path(id), envelope(id, expires)).unwrap();
    }
    // Writers in the middle of a write of these ids.
    let held: Vec<_> = ids
        .iter()
        .filter(|id| locked(id))
        .map(|id| (id.clone(), layout.try_lock(id).unwrap().unwrap()))
        .collect();
    let run: Vec<RemovalCandidate> = ids
        .iter()
        .map(|id| RemovalCandidate {
            id: id.clone(),
            has_lock_file: locked(id),
        })
        .collect();
    // Replaced the way every writer replaces a record: a rename over it.
    for (replaced, expires) in [
        ("replaced-live", FUTURE),
        ("replaced-expired", PAST),
        ("locked-replaced-live", FUTURE),
    ] {
        let staged = tmp.path().join("staged");
        fs::write(&staged, envelope(replaced, expires)).unwrap();
        fs::rename(&staged, layout.record_path(replaced)).unwrap();
    }
    fs::remove_file(layout.record_path("gone")).unwrap();

    let now = Timestamp::now();
    let expired = |head: &crate::file::format::Head| head.expires_at.is_some_and(|at| at <= now);
    use RunOutcome::{Gone, Kept, Removed};
    for durability in [Durability::Rename, Durability::Fsync] {
        let outcomes: Vec<RunOutcome> = layout
            .remove_expired_run(&run, expired, durability)
            .unwrap()
            .into_iter()
            .map(|o| o.unwrap())
            .collect();
        // Run twice: the second finds nothing more to remove.
        if durability == Durability::Rename {
            assert_eq!(
                outcomes,
                [Removed, Kept, Kept, Removed, Gone, Removed, Kept]
            );
        } else {
            assert_eq!(outcomes, [Gone, Kept, Kept, Gone, Gone, Gone, Kept]);
        }
    }
    for id in ["expired", "replaced-expired", "locked"] {
        assert!(!layout.record_path(id).exists(), "{id}");
    }
    for id in ["live", "replaced-live", "locked-replaced-live"] {
        assert!(layout.record_path(id).exists(), "{id}");
    }
    assert!(!layout.lock_path("locked").exists());
    assert!(layout.lock_path("locked-replaced-live").exists());
    for (id, lock) in &held {
        assert_eq!(lock.still_held(), id == "locked-replaced-live", "{id}");
    }
}

/// Nothing of a run is read or removed while another holder has the commit lock (a writer
/// between its check and its rename): the run waits for it, here until its lock timeout.
#[cfg(unix)]
#[test]
fn a_run_of_removals_waits_for_the_commit_lock() {
    use super::RemovalCandidate;

    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(
        tmp.path().to_path_buf(),
        1 << 20,
        Duration::from_millis(50),
        TtlPolicy::default(),
    );
    layout.create_dirs().unwrap();
    fs::write(layout.record_path("expired"), envelope("expired", PAST)).unwrap();
    let writer = fs::File::open(tmp.path()).unwrap();
    writer.lock().unwrap();
    let run = [RemovalCandidate {
        id: "expired".into(),
        has_lock_file: false,
    }];
    let outcome = layout.remove_expired_run(&run, |_| true, Durability::Rename);
    assert!(
        matches!(outcome, Err(crate::error::Error::LockTimeout { .. })),
        "{outcome:?}"
    );
    assert!(layout.record_path("expired").exists());
    writer.unlock().unwrap();
    let outcome = layout.remove_expired_run(&run, |_| true, Durability::Rename);
    assert_eq!(outcome.unwrap().len(), 1);
    assert!(!layout.record_path("expired").exists());
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
