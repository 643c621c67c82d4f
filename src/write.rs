//! The write recipe of the stores that decide a write in this process (memory, file): one
//! queue per id, the check of a put's mode, and the record that follows the live one. Redis
//! and PostgreSQL decide the same on the server (a Lua script, one SQL statement), where the
//! compare-and-set must happen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::record::{Record, Timestamp};
use crate::storage::PutMode;
use crate::ttl::TtlPolicy;

/// Above this many entries, locks nobody holds are dropped, so the map does not grow with
/// every id ever written.
const PRUNE_ABOVE: usize = 1024;

/// One async lock per id, so that the writes of one id queue in this process instead of
/// each taking a thread (or a retry) to wait.
#[derive(Debug, Default)]
pub(crate) struct IdLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl IdLocks {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        // Every mutation is one insert or a prune: a poisoned map is still consistent.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lock of `id`, made if it has none yet.
    pub(crate) fn of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.map();
        if locks.len() > PRUNE_ABOVE {
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        if let Some(lock) = locks.get(id) {
            return lock.clone();
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(id.to_string(), lock.clone());
        lock
    }

    /// The lock of `id` if one exists: looked up, not made (a sweep over many ids must not
    /// fill the map; a writer that comes after the look is ordered by the store's own locks).
    /// Only the file store's sweeps where it has no commit lock look (see `file::cleanup`).
    #[cfg(not(unix))]
    pub(crate) fn existing(&self, id: &str) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.map().get(id).cloned()
    }
}

/// What the next record needs of the live one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Live {
    pub(crate) version: u64,
    pub(crate) created_at: Timestamp,
}

impl Live {
    pub(crate) fn of(record: &Record) -> Self {
        Live {
            version: record.version,
            created_at: record.created_at,
        }
    }
}

/// Whether a put in `mode` may replace the live record at version `current`.
pub(crate) fn check_mode(id: &str, mode: PutMode, current: Option<u64>) -> Result<()> {
    match (mode, current) {
        (PutMode::Create, Some(version)) => Err(Error::AlreadyExists {
            id: id.to_string(),
            version,
        }),
        (PutMode::Update(expected), found) if found != Some(expected) => {
            Err(Error::VersionConflict {
                id: id.to_string(),
                expected,
                found,
            })
        }
        _ => Ok(()),
    }
}

/// The record that follows `live` (none: the first) with `status`, written at `now` and
/// expiring as `ttl` says. A record at the highest version is not written again.
pub(crate) fn next_record(
    id: &str,
    live: Option<Live>,
    status: Value,
    ttl: &TtlPolicy,
    now: Timestamp,
) -> Result<Record> {
    let version = match live {
        None => 1,
        Some(live) => live
            .version
            .checked_add(1)
            .ok_or_else(|| Error::VersionExhausted {
                id: id.to_string(),
                version: live.version,
            })?,
    };
    Ok(Record {
        id: id.to_string(),
        version,
        created_at: live.map_or(now, |live| live.created_at),
        updated_at: now,
        expires_at: ttl.expires_at(&status, now),
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn locks_nobody_holds_are_pruned_past_the_bound() {
        let locks = IdLocks::default();
        let held = locks.of("held");
        for n in 0..=PRUNE_ABOVE {
            locks.of(&format!("id-{n}"));
        }
        // Past the bound, the locks nobody holds were dropped: the held one stays the same.
        assert!(locks.map().len() <= PRUNE_ABOVE);
        assert!(!locks.map().contains_key("id-0"));
        assert!(Arc::ptr_eq(&held, &locks.of("held")));
    }

    #[test]
    fn the_next_record_keeps_the_creation_and_steps_the_version() {
        let ttl = TtlPolicy::never();
        let first = next_record("a", None, json!({}), &ttl, Timestamp::from_millis(5)).unwrap();
        assert_eq!(
            (first.version, first.created_at),
            (1, Timestamp::from_millis(5))
        );
        let second = next_record(
            "a",
            Some(Live::of(&first)),
            json!({}),
            &ttl,
            Timestamp::from_millis(9),
        )
        .unwrap();
        assert_eq!(second.version, 2);
        assert_eq!(second.created_at, Timestamp::from_millis(5));
        assert_eq!(second.updated_at, Timestamp::from_millis(9));
    }

    #[test]
    fn a_put_mode_is_checked_against_the_live_version() {
        assert!(check_mode("a", PutMode::Overwrite, Some(3)).is_ok());
        assert!(check_mode("a", PutMode::Create, None).is_ok());
        assert!(matches!(
            check_mode("a", PutMode::Create, Some(3)),
            Err(Error::AlreadyExists { version: 3, .. })
        ));
        assert!(check_mode("a", PutMode::Update(3), Some(3)).is_ok());
        assert!(matches!(
            check_mode("a", PutMode::Update(2), None),
            Err(Error::VersionConflict {
                expected: 2,
                found: None,
                ..
            })
        ));
    }
}
