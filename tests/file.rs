//! The conformance suite on `FileStorage`, and the file store's own behaviour.

mod conformance;
mod jobs;
mod lifecycle;
mod support;

use std::sync::Arc;

use conformance::{Fixture, NowTs, standard_ttl};
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
    let path = dir.path().to_path_buf();
    let now = clock.now_ts();
    Some(Fixture {
        store: Arc::new(store),
        other: Arc::new(other),
        clock,
        seed_max_version: Some(Box::new(move |id| {
            // By hand: no store API writes a record at u64::MAX.
            let record = serde_json::json!({
                "id": id,
                "version": u64::MAX,
                "created_at": now.to_string(),
                "updated_at": now.to_string(),
                "status": {"state": "running"},
            });
            std::fs::write(
                path.join(format!("{id}.json")),
                serde_json::to_vec_pretty(&record).unwrap(),
            )
            .unwrap();
            Box::pin(async { u64::MAX })
        })),
        _guard: Box::new(dir),
    })
}

all_conformance_tests!(make);

all_lifecycle_tests!(make);
all_jobs_tests!(make);
