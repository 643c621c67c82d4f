//! What a store needs to live for weeks in a real server, written once on the
//! [`SyncStorage`](crate::SyncStorage) trait so every backend gets it:
//!
//! - [`Sweeper`]: scheduled cleanup with a graceful [`Sweeper::shutdown`];
//! - [`heartbeat`] and [`recover_stale`]: jobs whose worker died go back to pending (or to
//!   failed after [`RecoveryPolicy::max_attempts`] crashes in a row without progress); the
//!   worker runtime that uses them is [`crate::jobs`];
//! - [`Idempotency`]: work done once per key, across tasks and processes;
//! - [`stats`]: counts by state, stale jobs, and a health verdict.

mod idempotency;
mod recovery;
mod sweeper;

pub use idempotency::{Idempotency, InProgressPolicy, RunError};
pub use recovery::{
    DEFAULT_STALE_AFTER, RecoveredJob, RecoveryAction, RecoveryPolicy, RecoveryReport, Stats,
    heartbeat, last_heartbeat, recover_job, recover_stale, stats,
};
pub(crate) use recovery::{recover_if_stale, recover_stale_matching};
pub use sweeper::{Sweeper, SweeperConfig};
