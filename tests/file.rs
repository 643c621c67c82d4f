//! The conformance suite on `FileStorage`, and the file store's own behaviour.

mod conformance;
mod lifecycle;

use std::sync::Arc;

use conformance::{Fixture, standard_ttl};
use syncstatus::{FileStorage, ManualClock};

async fn make(_name: &str) -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let open = || {
        FileStorage::builder(dir.path())
            .with_ttl(standard_ttl())
            .with_clock(Arc::new(clock.clone()))
            .build()
            .unwrap()
    };
    let (store, other) = (open(), open());
    Some(Fixture {
        store: Arc::new(store),
        other: Arc::new(other),
        clock,
        seed_max_version: None,
        _guard: Box::new(dir),
    })
}

all_conformance_tests!(make);

all_lifecycle_tests!(make);
