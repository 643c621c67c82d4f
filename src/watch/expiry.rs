//! When the records a watch holds expire.
//!
//! Expiry writes nothing a change feed could hear of (a file stays, Redis expires a key
//! silently, a row only ages), so the reconciler re-reads each record when its expiry time
//! comes by the store's clock and publishes what it finds, usually its removal.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::record::Timestamp;

/// The longest the reconciler sleeps before looking at the queue again. The store's clock
/// may jump ahead (a test's [`ManualClock`](crate::ManualClock), a corrected wall clock), so
/// a far expiry is looked at again after this rather than slept on.
pub(crate) const EXPIRY_LOOK: Duration = Duration::from_secs(1);

/// The expiry time of every tracked id, in order.
#[derive(Debug, Default)]
pub(crate) struct ExpiryQueue {
    by_id: HashMap<String, Timestamp>,
    due: BTreeSet<(Timestamp, String)>,
}

impl ExpiryQueue {
    /// Tracks `id` as expiring at `expires_at` (`None`: never), replacing what was tracked.
    pub(crate) fn track(&mut self, id: &str, expires_at: Option<Timestamp>) {
        self.forget(id);
        if let Some(at) = expires_at {
            self.by_id.insert(id.to_string(), at);
            self.due.insert((at, id.to_string()));
        }
    }

    /// Stops tracking `id`.
    pub(crate) fn forget(&mut self, id: &str) {
        if let Some(at) = self.by_id.remove(id) {
            self.due.remove(&(at, id.to_string()));
        }
    }

    /// Stops tracking everything (a full scan tracks again what it finds).
    pub(crate) fn clear(&mut self) {
        self.by_id.clear();
        self.due.clear();
    }

    /// The ids expired at `now`, no longer tracked (a re-read tracks them again if needed).
    pub(crate) fn take_due(&mut self, now: Timestamp) -> Vec<String> {
        let mut ids = Vec::new();
        while self.due.first().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, id)) = self.due.pop_first() {
                self.by_id.remove(&id);
                ids.push(id);
            }
        }
        ids
    }

    /// How long to sleep before looking again at `now`; `None`: nothing will expire.
    pub(crate) fn next_look(&self, now: Timestamp) -> Option<Duration> {
        let (at, _) = self.due.first()?;
        let wait = Duration::from_millis(at.as_millis().saturating_sub(now.as_millis()));
        Some(wait.min(EXPIRY_LOOK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_due_in_order_and_once() {
        let at = Timestamp::from_millis;
        let mut queue = ExpiryQueue::default();
        queue.track("late", Some(at(5_000)));
        queue.track("soon", Some(at(1_200)));
        queue.track("never", None);
        queue.track("moved", Some(at(1_100)));
        queue.track("moved", Some(at(9_000)));
        assert_eq!(queue.next_look(at(1_000)), Some(Duration::from_millis(200)));
        assert_eq!(queue.take_due(at(1_199)), Vec::<String>::new());
        assert_eq!(queue.take_due(at(5_000)), ["soon", "late"]);
        assert_eq!(queue.take_due(at(5_000)), Vec::<String>::new());
        // Far away: looked at again after EXPIRY_LOOK, in case the clock jumps.
        assert_eq!(queue.next_look(at(5_000)), Some(EXPIRY_LOOK));
        queue.forget("moved");
        assert_eq!(queue.next_look(at(5_000)), None);
    }
}
