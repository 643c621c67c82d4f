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
