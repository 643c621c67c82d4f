//! Waiting, on a store's watch, until a job's status gets somewhere. Shared by the test
//! binaries of both packages (the CLI's includes this file by path).

use std::time::Duration;

use futures_util::StreamExt;
use syncstatus::{DynSyncStorage, SyncStatus, WatchEvent, WatchOptions, WatchSelector};

/// How long a job may take to get where a test waits for it: a guard against a hang, not a
/// timing (a debug build on 2 loaded cores ran a 400-page job killed ten times in over 30 s).
pub const STATUS_DEADLINE: Duration = Duration::from_secs(120);

/// Waits, on the store's watch, until the status of `id` satisfies `done`, and returns it;
/// fails the test after [`STATUS_DEADLINE`], naming `what` it waited for and what it saw.
pub async fn wait_for_status(
    store: &DynSyncStorage,
    id: &str,
    what: &str,
    mut done: impl FnMut(&SyncStatus) -> bool,
) -> SyncStatus {
    let mut events = store
        .watch(
            WatchSelector::ids([id]),
            WatchOptions {
                snapshot: true,
                resume: None,
            },
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + STATUS_DEADLINE;
    let mut last = None;
    loop {
        let event = match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(error))) => panic!("watch error while waiting for {what}: {error}"),
            Ok(None) => panic!("watch ended while waiting for {what}"),
            Err(_) => {
                let stored = store.get(id).await;
                panic!("gave up waiting for {what}; last seen {last:?}; stored {stored:?}")
            }
        };
        let records = match event {
            WatchEvent::Upsert(record) => vec![record],
            WatchEvent::Resync(records) => records,
            WatchEvent::Removed { .. } => Vec::new(),
        };
        for record in records.into_iter().filter(|record| record.id == id) {
            let status: SyncStatus = serde_json::from_value(record.status.clone()).unwrap();
            if done(&status) {
                return status;
            }
            last = Some(status);
        }
    }
}
