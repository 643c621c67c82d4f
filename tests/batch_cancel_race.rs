//! A cancel of a batch while another reconcile of the same batch stops its children: the
//! parent the cancel returns must count them as stopped, not as still pending (CI saw a
//! cancel return "3 pending" after the runtime's own reconcile had cancelled them).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use syncstatus::jobs::{self, FailurePolicy, cancel_batch, submit_batch};
use syncstatus::{
    DynSyncStorage, ListFilter, Listing, MemoryStorage, Result, SyncStatus, SyncStorage,
};

use support::forwarding::{Hooked, Hooks};

/// The first listing of the batch's children is answered as read, but before it returns
/// every child is cancelled by someone else (as the runtime's reconcile does).
#[derive(Debug, Default)]
struct OtherReconcile {
    done: AtomicBool,
}

#[async_trait]
impl Hooks for OtherReconcile {
    async fn list(&self, inner: &DynSyncStorage, filter: &ListFilter) -> Result<Listing> {
        let listing = inner.list(filter).await?;
        let parent = inner.get("halt").await?;
        let cancelling = parent.is_some_and(|parent| parent.status["cancel_requested"] == true);
        if cancelling && !self.done.swap(true, Ordering::SeqCst) {
            for record in &listing.records {
                jobs::cancel(&**inner, &record.id).await?;
            }
        }
        Ok(listing)
    }
}

#[tokio::test]
async fn a_cancel_counts_children_another_reconcile_stopped_first() {
    let inner: DynSyncStorage = Arc::new(MemoryStorage::new());
    let hooks = OtherReconcile::default();
    let store = Hooked::new(inner.clone(), hooks);
    let children = (0..3).map(|_| SyncStatus::pending()).collect();
    submit_batch(&store, "halt", children, FailurePolicy::Continue)
        .await
        .unwrap();

    let returned = cancel_batch(&store, "halt").await.unwrap();
    assert!(
        store.hooks.done.load(Ordering::SeqCst),
        "the hook never ran"
    );
    let status: SyncStatus = serde_json::from_value(returned.status.clone()).unwrap();
    let counts = status.batch.as_ref().expect("a batch").counts;
    assert_eq!((counts.pending, counts.cancelled), (0, 3), "{status:?}");
    // And what the cancel returned is what the store holds.
    assert_eq!(inner.get("halt").await.unwrap(), Some(returned));
}
