//! Waiting, on a store's watch, until a job's status gets somewhere. Shared by the test
//! binaries of both packages (the CLI's includes this file by path).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use syncstatus::{
    DynSyncStorage, Record, SyncStatus, WatchEvent, WatchOptions, WatchSelector, WatchStream,
};
use tokio::time::Instant;

/// How long a job may take to get where a test waits for it: a guard against a hang, not a
/// timing (a debug build on 2 loaded cores ran a 400-page job killed ten times in over 30 s).
pub const STATUS_DEADLINE: Duration = Duration::from_secs(120);

/// Waits, on the store's watch, until the status of `id` satisfies `done`, and returns it;
/// fails the test after [`STATUS_DEADLINE`], naming `what` it waited for and what it saw.
pub async fn wait_for_status(
    store: &DynSyncStorage,
    id: &str,
    what: &str,
    done: impl FnMut(&SyncStatus) -> bool,
) -> SyncStatus {
    wait_for_status_within(store, id, what, STATUS_DEADLINE, done).await
}

/// [`wait_for_status`] with another deadline.
pub async fn wait_for_status_within(
    store: &DynSyncStorage,
    id: &str,
    what: &str,
    within: Duration,
    mut done: impl FnMut(&SyncStatus) -> bool,
) -> SyncStatus {
    let mut watch = StatusWatch::start(store, id).await;
    let deadline = Instant::now() + within;
    loop {
        if let Some((_, status)) = watch.next(what, deadline).await
            && done(&status)
        {
            return status;
        }
    }
}

/// The watch of one record, from its status when the watch starts (the watch's snapshot)
/// on: every version of it the store reports.
pub struct StatusWatch {
    store: DynSyncStorage,
    id: String,
    events: WatchStream,
    /// What a resync reported and [`next`](Self::next) has not handed out yet.
    unread: VecDeque<Option<(u64, SyncStatus)>>,
    /// The status [`next`](Self::next) handed out last, to say what was seen on a timeout.
    last: Option<SyncStatus>,
}

impl StatusWatch {
    /// Watches the record `id` of `store`.
    pub async fn start(store: &DynSyncStorage, id: &str) -> StatusWatch {
        let events = store
            .watch(
                WatchSelector::ids([id]),
                WatchOptions {
                    snapshot: true,
                    resume: None,
                },
            )
            .await
            .unwrap();
        StatusWatch {
            store: store.clone(),
            id: id.to_string(),
            events,
            unread: VecDeque::new(),
            last: None,
        }
    }

    /// The next report on the record: a version and its status, or `None` when the record
    /// was deleted or expired. Fails the test, naming `what` it waits for, on a watch error,
    /// an ended watch, or when nothing comes before `deadline`.
    pub async fn next(&mut self, what: &str, deadline: Instant) -> Option<(u64, SyncStatus)> {
        loop {
            if let Some(seen) = self.unread.pop_front() {
                if let Some((_, status)) = &seen {
                    self.last = Some(status.clone());
                }
                return seen;
            }
            let event = match tokio::time::timeout_at(deadline, self.events.next()).await {
                Ok(Some(Ok(event))) => event,
                Ok(Some(Err(error))) => panic!("watch error while waiting for {what}: {error}"),
                Ok(None) => panic!("watch ended while waiting for {what}"),
                Err(_) => {
                    let stored = self.store.get(&self.id).await;
                    panic!(
                        "gave up waiting for {what}; last seen {:?}; stored {stored:?}",
                        self.last
                    )
                }
            };
            match event {
                WatchEvent::Upsert(record) => self.unread.extend(self.seen(&[record])),
                WatchEvent::Resync(records) => self.unread.extend(self.seen(&records)),
                WatchEvent::Removed { id } if id == self.id => self.unread.push_back(None),
                WatchEvent::Removed { .. } => {}
            }
        }
    }

    /// The versions of the watched record among `records`.
    fn seen(&self, records: &[Arc<Record>]) -> Vec<Option<(u64, SyncStatus)>> {
        records
            .iter()
            .filter(|record| record.id == self.id)
            .map(|record| {
                let status = serde_json::from_value(record.status.clone()).unwrap();
                Some((record.version, status))
            })
            .collect()
    }
}
