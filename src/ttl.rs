//! How long records live after their last write.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::record::{Record, Timestamp, state_of};

/// The default time a record lives after its last write: 5 minutes.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Time to live after the last write, by state.
///
/// A record expires when `updated_at + ttl <= now`. Heartbeats are writes, so a job that
/// heartbeats more often than its TTL never expires; a record whose TTL is `None` never does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TtlPolicy {
    default: Option<Duration>,
    by_state: BTreeMap<String, Option<Duration>>,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        TtlPolicy::uniform(DEFAULT_TTL)
    }
}

impl TtlPolicy {
    /// The same TTL for every state.
    pub fn uniform(ttl: Duration) -> Self {
        TtlPolicy {
            default: Some(ttl),
            by_state: BTreeMap::new(),
        }
    }

    /// Records never expire.
    pub fn never() -> Self {
        TtlPolicy {
            default: None,
            by_state: BTreeMap::new(),
        }
    }

    /// A different TTL for records in `state` (`None`: never expire).
    pub fn with_state(mut self, state: impl Into<String>, ttl: Option<Duration>) -> Self {
        self.by_state.insert(state.into(), ttl);
        self
    }

    /// The TTL of a status value.
    pub fn ttl_for(&self, status: &Value) -> Option<Duration> {
        state_of(status)
            .and_then(|state| self.by_state.get(state).copied())
            .unwrap_or(self.default)
    }

    /// When a record written at `updated_at` with `status` expires, if ever.
    pub fn expires_at(&self, status: &Value, updated_at: Timestamp) -> Option<Timestamp> {
        self.ttl_for(status)
            .map(|ttl| updated_at.saturating_add(ttl))
    }

    /// The shortest TTL of any state, if any state expires: no record written under this
    /// policy expires sooner after its last write.
    pub fn shortest(&self) -> Option<Duration> {
        self.by_state
            .values()
            .copied()
            .chain(std::iter::once(self.default))
            .flatten()
            .min()
    }

    /// Whether `record` has expired at `now`.
    pub fn is_expired(&self, record: &Record, now: Timestamp) -> bool {
        self.expires_at(&record.status, record.updated_at)
            .is_some_and(|at| at <= now)
    }

    /// Whether `record` has expired at `now` under `override_ttl` if given, else this policy.
    pub fn is_expired_with(
        &self,
        record: &Record,
        now: Timestamp,
        override_ttl: Option<Duration>,
    ) -> bool {
        match override_ttl {
            Some(ttl) => record.updated_at.saturating_add(ttl) <= now,
            None => self.is_expired(record, now),
        }
    }
}
