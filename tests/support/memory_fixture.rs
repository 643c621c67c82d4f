//! A memory store on a manual clock, for the router's tests: the clock is moved to age and
//! expire records.

use std::sync::Arc;
use std::time::Duration;

use syncstatus::{DynSyncStorage, ManualClock, MemoryStorage, TtlPolicy};

/// The store's TTL, every state.
pub const TTL: Duration = Duration::from_secs(300);

/// A fresh memory store and the clock it runs on.
pub struct Fixture {
    pub store: DynSyncStorage,
    pub clock: ManualClock,
}

/// A memory store expiring records [`TTL`] after their last write by a manual clock.
pub fn fixture() -> Fixture {
    let clock = ManualClock::starting_now();
    let store = MemoryStorage::with_options(TtlPolicy::uniform(TTL), Arc::new(clock.clone()));
    Fixture {
        store: Arc::new(store),
        clock,
    }
}
