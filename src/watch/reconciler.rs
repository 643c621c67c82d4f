//! The one reconciler every backend's watch runs.
//!
//! A backend's change feed (notify's callback, a pub/sub push, a `LISTEN` notification, the
//! store's own write) never blocks: it records in [`Changes`] which ids are dirty, that events
//! were lost, or that the feed itself was lost, and wakes the reconciler. The reconciler
//! re-reads the dirty ids and the ids whose expiry time has come through the backend's
//! [`ChangeSource`], publishes what it finds to the [`WatchHub`], and after any loss of
//! continuity starts the feed again (pausing by a [`Backoff`] between failed attempts) and
//! publishes a full scan as a resync.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::expiry::ExpiryQueue;
use super::hub::{HubHandle, WatchHub};
use crate::error::{Error, Result};
use crate::record::{Record, SharedClock, Timestamp};
use crate::task::AbortOnDrop;

/// Every live record, and an error per unreadable one.
pub(crate) type Scan = (Vec<Record>, Vec<Error>);

/// The current state of each id read (`None`: missing or expired), or why it is unreadable.
pub(crate) type Reads = Vec<(String, Result<Option<Record>>)>;

/// What differs between backends: where changes are heard of, and how records are read.
///
/// The reconciler calls these one at a time from its own task.
#[async_trait]
pub(crate) trait ChangeSource: Send + 'static {
    /// Starts the change feed (again), reporting to the [`Changes`] the source was made with.
    /// Returns once every later change is sure to be reported, so a scan taken after it
    /// misses nothing. `Ok(false)`: not possible yet (a removed directory); tried again after
    /// a pause without telling subscribers.
    async fn connect(&mut self) -> Result<bool>;

    /// Stops what is left of a feed that was lost.
    fn disconnect(&mut self);

    /// The current state of `ids`.
    async fn read(&mut self, ids: Vec<String>) -> Result<Reads>;

    /// Every live record.
    async fn scan(&mut self) -> Result<Scan>;

    /// When [`Self::duty`] is next due; `None`: the source has no timed work.
    fn next_duty(&self) -> Option<Instant> {
        None
    }

    /// Timed work of the source (polling, renewing a lease) and what it calls for.
    async fn duty(&mut self) -> Result<Duty> {
        Ok(Duty::Nothing)
    }
}

/// What a source's timed work calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Duty {
    Nothing,
    /// Scan everything and publish what differs (polling, a safety re-read).
    Diff,
    /// Continuity may be lost: scan everything and publish it as a resync. (Only the
    /// PostgreSQL source asks for it, when its listener lease ran out.)
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Resync,
}

/// How the reconciler of one store behaves.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The store's clock, which expiry is judged by.
    pub(crate) clock: SharedClock,
    /// The pauses between failed attempts to restart the feed or to resync.
    pub(crate) backoff: Backoff,
    /// When the feed is lost, first publish a scan as differences (a removed directory is
    /// reported as the removal of its records rather than silence until it is back).
    pub(crate) scan_after_loss: bool,
}

/// What a change feed tells the reconciler. Every method records and wakes; none blocks on
/// more than a short lock, so feeds may call them from any thread or callback.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    dirty: Mutex<HashSet<String>>,
    rescan: AtomicBool,
    /// The feed was lost, with the cause to tell subscribers (if any).
    lost: Mutex<Option<Option<Error>>>,
    problems: Mutex<Vec<Error>>,
    expiring: Mutex<Expiring>,
    wake: Notify,
}

/// Expiry times handed over by the store's own writes ([`Changes::expires`]), and when the
/// reconciler looks at its expiry queue next: a write wakes it only to look sooner.
#[derive(Debug, Default)]
struct Expiring {
    pending: HashMap<String, Timestamp>,
    /// By the store's clock; `None`: the reconciler sleeps until woken.
    next_look: Option<Timestamp>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every mutation under these locks is one insert, take or push: a poisoned lock still
    // holds consistent data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Changes {
    /// `id` may have changed.
    pub(crate) fn changed(&self, id: &str) {
        locked(&self.dirty).insert(id.to_string());
        self.wake.notify_one();
    }

    /// This process just wrote `id`, expiring at `at`, and published it itself: nothing is
    /// to be read now, only the removal to publish when that time comes. The reconciler is
    /// woken only if it would not look at its expiry queue by then anyway.
    pub(crate) fn expires(&self, id: &str, at: Timestamp) {
        let wake = {
            let mut expiring = locked(&self.expiring);
            match expiring.pending.get_mut(id) {
                Some(pending) => *pending = at,
                None => {
                    expiring.pending.insert(id.to_string(), at);
                }
            }
            let sooner = expiring.next_look.is_none_or(|look| at < look);
            if sooner {
                // It looks by `at` now; the writes until it plans again need not wake it.
                expiring.next_look = Some(at);
            }
            sooner
        };
        if wake {
            self.wake.notify_one();
        }
    }

    /// Changes may have been missed (an overflowed queue): publish a full scan as a resync.
    pub(crate) fn rescan(&self) {
        self.rescan.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The feed itself was lost: tell subscribers `cause`, start the feed again, resync.
    pub(crate) fn lost(&self, cause: Option<Error>) {
        *locked(&self.lost) = Some(cause);
        self.wake.notify_one();
    }

    /// A problem to tell subscribers about; the watch goes on.
    // Used by notify's feed (not on Linux) and PostgreSQL's.
    #[cfg_attr(all(target_os = "linux", not(feature = "postgres")), allow(dead_code))]
    pub(crate) fn report(&self, problem: Error) {
        locked(&self.problems).push(problem);
        self.wake.notify_one();
    }

    fn take_dirty(&self) -> HashSet<String> {
        std::mem::take(&mut *locked(&self.dirty))
    }

    fn take_rescan(&self) -> bool {
        self.rescan.swap(false, Ordering::SeqCst)
    }

    fn take_lost(&self) -> Option<Option<Error>> {
        locked(&self.lost).take()
    }

    fn take_problems(&self) -> Vec<Error> {
        std::mem::take(&mut *locked(&self.problems))
    }
}

/// Starts `source`'s feed, seeds a hub with a scan taken after it, and runs the reconciler
/// until the returned handle is dropped.
pub(crate) async fn start<S: ChangeSource>(
    mut source: S,
    changes: Arc<Changes>,
    settings: Settings,
) -> Result<HubHandle> {
    let linked = source.connect().await?;
    let (records, unreadable) = source.scan().await?;
    // Nobody is subscribed yet to be told; unreadable records stay out until they are fixed.
    for error in unreadable {
        tracing::warn!(%error, "unreadable record left out of the watch");
    }
    Ok(start_seeded(source, changes, settings, records, linked))
}

/// Runs the reconciler of a hub seeded with `records` by the caller (which knows no change
/// can fall between the seed and its feed). `linked`: the feed is already running.
pub(crate) fn start_seeded<S: ChangeSource>(
    source: S,
    changes: Arc<Changes>,
    settings: Settings,
    records: Vec<Record>,
    linked: bool,
) -> HubHandle {
    let mut expiry = ExpiryQueue::default();
    for record in &records {
        expiry.track(&record.id, record.expires_at);
    }
    let hub = Arc::new(WatchHub::new(records));
    let reconciler = Reconciler {
        source,
        hub: Arc::downgrade(&hub),
        changes: changes.clone(),
        expiry,
        backoff: settings.backoff,
        settings,
        linked,
        resync: false,
        retry_at: None,
        reported: false,
    };
    let task = tokio::spawn(reconciler.run());
    let fanout = hub.start_fanout();
    HubHandle {
        hub,
        changes,
        _source: Box::new((AbortOnDrop(task), fanout)),
    }
}

/// Sleeps until `changes` wakes, or until `until`.
async fn wait(changes: &Changes, until: Option<Instant>) {
    match until {
        Some(at) if at <= Instant::now() => {}
        Some(at) => {
            let _ = tokio::time::timeout_at(at, changes.wake.notified()).await;
        }
        None => changes.wake.notified().await,
    }
}

struct Reconciler<S> {
    source: S,
    hub: Weak<WatchHub>,
    changes: Arc<Changes>,
    expiry: ExpiryQueue,
    settings: Settings,
    backoff: Backoff,
    /// The feed is running.
    linked: bool,
    /// Continuity was lost: publish a full scan as a resync before anything else.
    resync: bool,
    /// After a failure nothing but the next attempt happens, and not before this.
    retry_at: Option<Instant>,
    /// The failures of the current attempt to recover were already reported once.
    reported: bool,
}

impl<S: ChangeSource> Reconciler<S> {
    async fn run(mut self) {
        loop {
            let until = self.plan();
            wait(&self.changes, until).await;
            let Some(hub) = self.hub.upgrade() else {
                return;
            };
            self.step(&hub).await;
        }
    }

    /// Tracks the expiry times handed over by writes and tells them when the reconciler
    /// looks next (under their lock, so a write either is tracked here or sees the new look);
    /// when to look again without being woken.
    fn plan(&mut self) -> Option<Instant> {
        let changes = self.changes.clone();
        let mut expiring = locked(&changes.expiring);
        for (id, at) in expiring.pending.drain() {
            self.expiry.track(&id, Some(at));
        }
        let now = self.settings.clock.now();
        expiring.next_look = if self.retry_at.is_some() || !self.linked || self.resync {
            // The queue waits for the resync, whose scan tracks every record again; the
            // handed-over times are tracked at the next plan.
            Some(Timestamp::from_millis(u64::MAX))
        } else {
            self.expiry
                .next_look(now)
                .map(|wait| now.saturating_add(wait))
        };
        drop(expiring);
        self.wake_at()
    }

    /// When to look again without being woken: the next retry, duty or expiry.
    fn wake_at(&self) -> Option<Instant> {
        let now = Instant::now();
        match self.retry_at {
            Some(at) => Some(at),
            None if !self.linked || self.resync => Some(now),
            None => {
                let expiry = self
                    .expiry
                    .next_look(self.settings.clock.now())
                    .map(|wait| now + wait);
                [expiry, self.source.next_duty()]
                    .into_iter()
                    .flatten()
                    .min()
            }
        }
    }

    async fn step(&mut self, hub: &WatchHub) {
        for problem in self.changes.take_problems() {
            hub.report(problem);
        }
        if let Some(cause) = self.changes.take_lost() {
            if let Some(cause) = cause {
                hub.report(cause);
            }
            self.source.disconnect();
            self.linked = false;
            self.reported = false;
            self.retry_at = None;
            if self.settings.scan_after_loss {
                // Tell subscribers what is there now rather than going silent until the feed
                // is back; the resync after it is what counts.
                self.publish_diff(hub).await;
            }
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.retry_at = None;
        if self.changes.take_rescan() {
            self.resync = true;
        }
        if !self.linked || self.resync {
            match self.relink(hub).await {
                Ok(true) => {
                    self.backoff.reset();
                    self.reported = false;
                }
                Ok(false) => self.retry_later(),
                Err(error) => {
                    tracing::debug!(%error, "watch recovery failed");
                    if !self.reported {
                        hub.report(error);
                        self.reported = true;
                    }
                    self.retry_later();
                }
            }
            return;
        }
        if self
            .source
            .next_duty()
            .is_some_and(|at| at <= Instant::now())
        {
            match self.source.duty().await {
                Ok(Duty::Nothing) => {}
                Ok(Duty::Diff) => self.publish_diff(hub).await,
                Ok(Duty::Resync) => {
                    self.resync = true;
                    return;
                }
                Err(error) => {
                    hub.report(error);
                    self.retry_later();
                    return;
                }
            }
        }
        let mut ids = self.changes.take_dirty();
        ids.extend(self.expiry.take_due(self.settings.clock.now()));
        if !ids.is_empty() {
            self.reread(hub, ids.into_iter().collect()).await;
        }
    }

    fn retry_later(&mut self) {
        self.retry_at = Some(Instant::now() + self.backoff.next_pause());
    }

    /// Starts the feed if it is down, then publishes a full scan as a resync.
    async fn relink(&mut self, hub: &WatchHub) -> Result<bool> {
        if !self.linked {
            // Any loss heard of so far was of the feed being replaced.
            self.changes.take_lost();
            if !self.source.connect().await? {
                return Ok(false);
            }
            self.linked = true;
            self.resync = true;
        }
        // Everything dirty so far is covered by the scan, which starts after the feed is up.
        self.changes.take_dirty();
        self.changes.take_rescan();
        let read = hub.open_read();
        let (records, unreadable) = self.source.scan().await?;
        for error in unreadable {
            hub.report(error);
        }
        self.track_all(&records);
        hub.replace_all_read(records, read.epoch);
        drop(read);
        self.resync = false;
        Ok(true)
    }

    fn track_all(&mut self, records: &[Record]) {
        self.expiry.clear();
        for record in records {
            self.expiry.track(&record.id, record.expires_at);
        }
    }

    /// Publishes a full scan as differences from what the hub holds.
    async fn publish_diff(&mut self, hub: &WatchHub) {
        let read = hub.open_read();
        let epoch = read.epoch;
        match self.source.scan().await {
            Ok((records, unreadable)) => {
                for error in unreadable {
                    hub.report(error);
                }
                self.track_all(&records);
                let present: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
                for id in hub.known_ids() {
                    if !present.contains(id.as_str()) {
                        hub.apply_read(&id, None, epoch);
                    }
                }
                for record in records {
                    let id = record.id.clone();
                    hub.apply_read(&id, Some(record), epoch);
                }
            }
            Err(error) => self.lost_continuity(hub, error),
        }
        drop(read);
    }

    async fn reread(&mut self, hub: &WatchHub, ids: Vec<String>) {
        let read = hub.open_read();
        let epoch = read.epoch;
        match self.source.read(ids).await {
            Ok(reads) => {
                for (id, current) in reads {
                    match current {
                        Ok(current) => {
                            let at = current.as_ref().and_then(|record| record.expires_at);
                            self.expiry.track(&id, at);
                            hub.apply_read(&id, current, epoch);
                        }
                        Err(error) => {
                            // Unreadable: not published, and not looked at again until
                            // the feed names it.
                            self.expiry.forget(&id);
                            hub.report(error);
                        }
                    }
                }
            }
            Err(error) => self.lost_continuity(hub, error),
        }
        drop(read);
    }

    /// Changes were not published: only a resync (after a pause) can make up for it.
    fn lost_continuity(&mut self, hub: &WatchHub, error: Error) {
        hub.report(error);
        self.resync = true;
        self.reported = true;
        self.retry_later();
    }
}

#[cfg(test)]
mod tests;
