//! The check every backend's watch passes: the watches of a store share one feed (a
//! connection, a listener, a thread), and dropping the last of them stops it.

use std::time::Duration;

use syncstatus::{SyncStorage, WatchOptions, WatchSelector};
use tokio::time::Instant;

/// How long a feed may take to start or stop.
const DEADLINE: Duration = Duration::from_secs(60);

/// Opens two watches of `store` and drops them one after the other. `feeds` counts what
/// the backend runs for its watches: one while any watch runs, none soon after the last is
/// dropped.
pub async fn check_last_watch_stops_its_feed(
    store: &dyn SyncStorage,
    mut feeds: impl AsyncFnMut() -> usize,
) {
    let first = store
        .watch(WatchSelector::All, WatchOptions::default())
        .await
        .unwrap();
    let second = store
        .watch(WatchSelector::ids(["x"]), WatchOptions::default())
        .await
        .unwrap();
    assert_eq!(
        settled(&mut feeds, 1).await,
        1,
        "one feed for every watch of the store"
    );
    drop(first);
    assert_eq!(feeds().await, 1, "the feed stopped while a watch still ran");
    drop(second);
    assert_eq!(
        settled(&mut feeds, 0).await,
        0,
        "the feed outlived the last watch"
    );
}

/// `feeds` once it counts `wanted`, or what it counts when the deadline passes.
async fn settled(feeds: &mut impl AsyncFnMut() -> usize, wanted: usize) -> usize {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let count = feeds().await;
        if count == wanted || Instant::now() >= deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
