//! Listing a store in a test that expects every record to be readable.

use syncstatus::{ListFilter, Record, SyncStorage};

/// The records of `store` that `filter` selects; fails the test if the listing reports an
/// unreadable record.
pub async fn readable_records(store: &dyn SyncStorage, filter: &ListFilter) -> Vec<Record> {
    let listing = store.list(filter).await.unwrap();
    assert!(listing.errors.is_empty(), "{:?}", listing.errors);
    listing.records
}
