//! The conformance suite on `MemoryStorage`.

mod conformance;
mod jobs;
mod lifecycle;
mod support;

use std::sync::Arc;

use conformance::{Fixture, standard_ttl};
use syncstatus::{ManualClock, MemoryStorage, SyncStorage};

async fn make(_name: &str) -> Option<Fixture> {
    let clock = ManualClock::starting_now();
    let store = MemoryStorage::with_options(standard_ttl(), Arc::new(clock.clone()));
    Some(Fixture {
        other: Arc::new(store.clone()),
        store: Arc::new(store),
        clock,
        seed_max_version: None,
        _guard: Box::new(()),
    })
}

all_conformance_tests!(make);

#[test]
fn object_safe() {
    let store = MemoryStorage::new();
    let as_dyn: &dyn SyncStorage = &store;
    let _ = conformance::assert_object_safe(as_dyn);
}

all_lifecycle_tests!(make);
all_jobs_tests!(make);
