//! The subscribers' side of a watch.
//!
//! The reconciler (or a store's own write) feeds a [`WatchHub`] with what it learns (one id
//! re-read, or a full rescan after lost continuity); the hub keeps the last state it published
//! per id, drops repeats, and fans events out to every subscriber. Subscribers that fall behind
//! get a resync built from the hub's state under the same lock that publishes, so nothing falls
//! between the two.
//!
//! A write only records its event (in order, under the hub's lock); the hub's fan-out task
//! hands the batch to the subscribers ([`super::fanout`]), so the writer pays one wake per
//! batch of writes instead of waking every waiting subscriber itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use futures_util::StreamExt;
use tokio::sync::Notify;

use super::fanout::{Fanout, Receiver, TakeError};
use super::reconciler::Changes;
use crate::error::{Error, Result};
use crate::record::Record;
use crate::storage::{WatchEvent, WatchOptions, WatchSelector, WatchStream};
use crate::task::AbortOnDrop;

/// How many events a subscriber may fall behind before it gets a resync instead.
const SUBSCRIBER_BUFFER: usize = 4096;

#[derive(Clone, Debug)]
pub(crate) enum HubMessage {
    /// An upsert or a removal of one id.
    Change(WatchEvent),
    /// Every record there is, after lost continuity; each subscriber narrows it to its
    /// selector.
    Resync(Arc<[Arc<Record>]>),
    /// A problem of the source; subscribers see it as an error item. A resync follows.
    Problem(Arc<Error>),
}

#[derive(Debug)]
struct HubState {
    /// Shared with every event and snapshot that carries them: a subscriber costs a pointer
    /// per record it is sent, never a copy.
    records: HashMap<String, Arc<Record>>,
    /// Counts writes this process published itself ([`WatchHub::apply_local`]).
    local_epoch: u64,
    /// The epoch of the last local write per id while a read is open, so a re-read begun
    /// before it (and finished after it) is known to be stale. No read open, no write can
    /// make one stale: nothing is marked, so the marks do not grow with every id written.
    local_marks: HashMap<String, u64>,
    /// A read of the source is under way (an [`OpenRead`] is alive).
    reading: bool,
    /// Events published to `records` but not yet sent, oldest first. An upsert of an id
    /// written again before it was sent is cleared (`None`): its subscribers get the newer
    /// one, in the place of that later write, as [`WatchEvent::Upsert`] allows.
    unsent: Vec<Option<HubMessage>>,
    /// Where in `unsent` the upsert of each id stands, while it is there to be replaced.
    unsent_upserts: HashMap<String, usize>,
}

/// The last published state of every id, and the fan-out to subscribers.
#[derive(Debug)]
pub(crate) struct WatchHub {
    state: Mutex<HubState>,
    /// What was sent, for the subscribers to take.
    sent: Arc<Fanout<HubMessage>>,
    /// Held while sending, so sends keep the order of `unsent` and a new receiver is taken
    /// only between two batches (never while one is half sent).
    sending: Mutex<()>,
    /// Wakes the fan-out task, once [`Self::start_fanout`] started it; until then whoever
    /// publishes sends the event itself.
    fanout: OnceLock<Arc<Notify>>,
}

/// Whether `a` and `b` are the same write. Version 0 is a file written by another tool as
/// plain status JSON: it has no version of its own and its times are the file's, which stay
/// the same across writes within one timestamp tick or by a tool that keeps them, so only
/// its content tells one write from the next.
fn same_revision(a: &Record, b: &Record) -> bool {
    a.version == b.version
        && a.created_at == b.created_at
        && a.updated_at == b.updated_at
        && (a.version > 0 || a.status == b.status)
}

/// Whether `new` is a record made again after `known` was removed, the removal itself having
/// been coalesced away (a source that re-reads after the fact sees only the new record).
/// Files written by other tools (version 0) take their times from the file, so they carry
/// no creation stamp to tell.
fn is_recreation(known: &Record, new: &Record) -> bool {
    known.version > 0 && new.version > 0 && known.created_at != new.created_at
}

impl Drop for WatchHub {
    /// Subscribers still holding the hub's events end once they have taken them.
    fn drop(&mut self) {
        self.sent.close();
    }
}

impl WatchHub {
    pub(crate) fn new(initial: impl IntoIterator<Item = Record>) -> Self {
        WatchHub {
            state: Mutex::new(HubState {
                records: initial
                    .into_iter()
                    .map(|record| (record.id.clone(), Arc::new(record)))
                    .collect(),
                local_epoch: 0,
                local_marks: HashMap::new(),
                reading: false,
                unsent: Vec::new(),
                unsent_upserts: HashMap::new(),
            }),
            sent: Fanout::new(SUBSCRIBER_BUFFER),
            sending: Mutex::new(()),
            fanout: OnceLock::new(),
        }
    }

    /// Starts the task that sends published events to subscribers; it stops when the returned
    /// handle is dropped (with the hub's source) or the hub is gone.
    pub(crate) fn start_fanout(self: &Arc<Self>) -> AbortOnDrop {
        let notify = Arc::new(Notify::new());
        let hub = Arc::downgrade(self);
        let wake = notify.clone();
        let task = tokio::spawn(async move {
            loop {
                wake.notified().await;
                let Some(hub) = hub.upgrade() else { return };
                hub.send_unsent();
            }
        });
        // A hub has one source and so one fan-out task; events published before it existed
        // were sent by their publishers.
        let _ = self.fanout.set(notify);
        AbortOnDrop(task)
    }

    /// Sends every published event not sent yet, in order.
    fn send_unsent(&self) {
        let _sending = self
            .sending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let unsent = Self::take_unsent(&mut self.lock());
        self.sent.send_all(unsent.into_iter().flatten());
    }

    /// Hands what was just published to the fan-out task, or sends it here if none runs.
    /// `position`: where the publish's first event stands in the unsent queue (1: the first,
    /// so the task is not woken for it yet; 0: nothing was queued). A task a subscriber's
    /// whole buffer behind (a writer that never yields its thread) is not waited for: the
    /// publisher sends, which keeps the queue bounded.
    fn dispatch(&self, position: usize) {
        if position == 0 {
            return;
        }
        match self.fanout.get() {
            Some(notify) if position == 1 => notify.notify_one(),
            Some(_) if position < SUBSCRIBER_BUFFER => {}
            _ => self.send_unsent(),
        }
    }

    /// The hub's state with every published event sent: a snapshot and a receiver taken
    /// while holding both guards agree (what is in the snapshot is not sent again).
    fn lock_sent(&self) -> (MutexGuard<'_, ()>, MutexGuard<'_, HubState>) {
        let sending = self
            .sending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut state = self.lock();
        self.sent
            .send_all(Self::take_unsent(&mut state).into_iter().flatten());
        (sending, state)
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding this lock leaves the map consistent (every mutation is a
        // single insert or remove), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes the current state of one id (`None`: gone). Repeats are dropped; a record
    /// made again after a removal the source did not see is published as that removal
    /// followed by the new record, so subscribers never mistake it for the old one.
    #[cfg(test)]
    pub(crate) fn apply(&self, id: &str, current: Option<Record>) {
        let position = Self::apply_locked(&mut self.lock(), id, current.map(Arc::new));
        self.dispatch(position);
    }

    /// Publishes a write this process just made. Re-reads that began before it are then
    /// dropped by [`Self::apply_read`] instead of moving subscribers back to an older version.
    pub(crate) fn apply_local(&self, id: &str, current: Option<Record>) {
        self.apply_local_shared(id, current.map(Arc::new));
    }

    /// [`Self::apply_local`] of a record the store keeps shared: subscribers get the store's
    /// own record, not a copy.
    pub(crate) fn apply_local_shared(&self, id: &str, current: Option<Arc<Record>>) {
        let mut state = self.lock();
        state.local_epoch += 1;
        if state.reading {
            let epoch = state.local_epoch;
            match state.local_marks.get_mut(id) {
                Some(mark) => *mark = epoch,
                None => {
                    state.local_marks.insert(id.to_string(), epoch);
                }
            }
        }
        let position = Self::apply_locked(&mut state, id, current);
        drop(state);
        self.dispatch(position);
    }

    /// Opens a read of the source starting now; local writes are marked until it drops, and
    /// its [`OpenRead::epoch`] goes to [`Self::apply_read`]. Ended by dropping it, so a read
    /// that fails or whose task is cancelled ends all the same.
    ///
    /// Sources read one batch at a time, so marks older than the read starting now can make
    /// no read stale any more: they are dropped here, which keeps the marks few.
    pub(crate) fn open_read(&self) -> OpenRead<'_> {
        let mut state = self.lock();
        state.local_marks.clear();
        state.reading = true;
        OpenRead {
            hub: self,
            epoch: state.local_epoch,
        }
    }

    /// Publishes a state read from the source by a read that started at `epoch`, unless this
    /// process wrote the id since: that read may predate the write, and the write's own event
    /// brings a fresh read anyway.
    pub(crate) fn apply_read(&self, id: &str, current: Option<Record>, epoch: u64) {
        let mut state = self.lock();
        if state.local_marks.get(id).is_some_and(|mark| *mark > epoch) {
            return;
        }
        let position = Self::apply_locked(&mut state, id, current.map(Arc::new));
        drop(state);
        self.dispatch(position);
    }

    /// Replaces the whole state after lost continuity and sends every subscriber a resync,
    /// from a scan that started at `epoch`: ids this process wrote since keep the state it
    /// published.
    pub(crate) fn replace_all_read(&self, records: Vec<Record>, epoch: u64) {
        let mut records: Vec<Arc<Record>> = records.into_iter().map(Arc::new).collect();
        let mut state = self.lock();
        let newer: Vec<String> = state
            .local_marks
            .iter()
            .filter(|(_, mark)| **mark > epoch)
            .map(|(id, _)| id.clone())
            .collect();
        if !newer.is_empty() {
            records.retain(|record| !newer.contains(&record.id));
            records.extend(newer.iter().filter_map(|id| state.records.get(id).cloned()));
            records.sort_by(|a, b| a.id.cmp(&b.id));
        }
        let position = Self::replace_all_locked(&mut state, records);
        drop(state);
        self.dispatch(position);
    }

    /// The events to send now; what is queued after is a new batch.
    fn take_unsent(state: &mut HubState) -> Vec<Option<HubMessage>> {
        state.unsent_upserts.clear();
        std::mem::take(&mut state.unsent)
    }

    /// Queues `message` to be sent; its position in the queue, from 1.
    fn queue(state: &mut HubState, message: HubMessage) -> usize {
        state.unsent.push(Some(message));
        state.unsent.len()
    }

    /// Queues the upsert of `id`, clearing one of it still unsent: a writer faster than the
    /// fan-out keeps one record per id waiting, not one per write.
    fn queue_upsert(state: &mut HubState, id: &str, record: Arc<Record>) -> usize {
        let position = state.unsent.len();
        match state.unsent_upserts.get_mut(id) {
            Some(earlier) => {
                state.unsent[*earlier] = None;
                *earlier = position;
            }
            None => {
                state.unsent_upserts.insert(id.to_string(), position);
            }
        }
        Self::queue(state, HubMessage::Change(WatchEvent::Upsert(record)))
    }

    /// Publishes one id; the position of its first queued event (see [`Self::dispatch`]).
    fn apply_locked(state: &mut HubState, id: &str, current: Option<Arc<Record>>) -> usize {
        let queued_before = state.unsent.len();
        match current {
            Some(record) => {
                match state.records.get_mut(id) {
                    Some(known) => {
                        if same_revision(known, &record) {
                            return 0;
                        }
                        let recreated = is_recreation(known, &record);
                        *known = record.clone();
                        if recreated {
                            Self::queue_removal(state, id);
                        }
                    }
                    None => {
                        state.records.insert(id.to_string(), record.clone());
                    }
                }
                Self::queue_upsert(state, id, record);
            }
            None => {
                if state.records.remove(id).is_none() {
                    return 0;
                }
                Self::queue_removal(state, id);
            }
        }
        queued_before + 1
    }

    /// Queues the removal of `id`; an upsert before it stays, so a later one is not moved
    /// ahead of the removal.
    fn queue_removal(state: &mut HubState, id: &str) {
        state.unsent_upserts.remove(id);
        Self::queue(
            state,
            HubMessage::Change(WatchEvent::Removed { id: id.to_string() }),
        );
    }

    fn replace_all_locked(state: &mut HubState, records: Vec<Arc<Record>>) -> usize {
        state.records = records
            .iter()
            .map(|record| (record.id.clone(), record.clone()))
            .collect();
        // The resync carries every record: no upsert after it replaces one before it.
        state.unsent_upserts.clear();
        Self::queue(state, HubMessage::Resync(records.into()))
    }

    /// Tells subscribers about a problem of the source (a resync follows when it is fixed).
    pub(crate) fn report(&self, error: Error) {
        let position = Self::queue(&mut self.lock(), HubMessage::Problem(Arc::new(error)));
        self.dispatch(position);
    }

    /// The ids the hub currently holds.
    pub(crate) fn known_ids(&self) -> Vec<String> {
        self.lock().records.keys().cloned().collect()
    }

    fn snapshot(state: &HubState, selector: &WatchSelector) -> Vec<Arc<Record>> {
        let mut records: Vec<Arc<Record>> = state
            .records
            .values()
            .filter(|record| selector.matches(&record.id))
            .cloned()
            .collect();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        records
    }

    /// A stream of events for `selector`. `keep_alive` is held by the stream, so the source
    /// that feeds the hub lives exactly as long as some subscriber does.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        selector: WatchSelector,
        options: WatchOptions,
        keep_alive: Arc<dyn Send + Sync>,
    ) -> WatchStream {
        let mut pending = VecDeque::new();
        let sent = {
            let (_sending, state) = self.lock_sent();
            if options.snapshot {
                pending.push_back(Ok(WatchEvent::Resync(Self::snapshot(&state, &selector))));
            } else if let Some(known) = &options.resume {
                let snapshot = Self::snapshot(&state, &selector);
                let mut gone: Vec<&String> = known
                    .keys()
                    .filter(|id| selector.matches(id) && !state.records.contains_key(*id))
                    .collect();
                gone.sort();
                for id in gone {
                    pending.push_back(Ok(WatchEvent::Removed { id: id.clone() }));
                }
                for record in snapshot {
                    if known.get(&record.id) != Some(&record.version) {
                        pending.push_back(Ok(WatchEvent::Upsert(record)));
                    }
                }
            }
            self.sent.subscribe()
        };
        let subscriber = Subscriber {
            hub: Arc::downgrade(self),
            selector,
            sent,
            taken: VecDeque::new(),
            pending,
            _keep_alive: keep_alive,
        };
        futures_util::stream::unfold(subscriber, |mut subscriber| async move {
            let item = subscriber.next().await?;
            Some((item, subscriber))
        })
        .boxed()
    }
}

struct Subscriber {
    hub: Weak<WatchHub>,
    selector: WatchSelector,
    sent: Receiver<HubMessage>,
    /// What was taken from `sent` for this subscriber and not yet handed on.
    taken: VecDeque<HubMessage>,
    pending: VecDeque<Result<WatchEvent>>,
    _keep_alive: Arc<dyn Send + Sync>,
}

/// What a subscriber of `selector` keeps of `message`, cloned while the hub's log is held:
/// a pointer (and for a removal the id) for a change of an id it watches, nothing for the
/// others, so 1,000 subscribers of one id each cost no copy of the others' events. A resync
/// is narrowed to the selector only after it was taken, as it carries every record.
fn kept(selector: &WatchSelector, message: &HubMessage) -> Option<HubMessage> {
    match message {
        HubMessage::Change(event) => event
            .id()
            .is_some_and(|id| selector.matches(id))
            .then(|| message.clone()),
        HubMessage::Resync(_) | HubMessage::Problem(_) => Some(message.clone()),
    }
}

impl Subscriber {
    async fn next(&mut self) -> Option<Result<WatchEvent>> {
        if let Some(item) = self.pending.pop_front() {
            return Some(item);
        }
        if self.taken.is_empty() {
            let selector = &self.selector;
            match self
                .sent
                .take(&mut self.taken, |message| kept(selector, message))
                .await
            {
                Ok(()) => {}
                Err(TakeError::Closed) => return None,
                Err(TakeError::Lagged) => return self.resync(),
            }
        }
        Some(match self.taken.pop_front()? {
            HubMessage::Change(event) => Ok(event),
            HubMessage::Resync(records) => Ok(WatchEvent::Resync(
                records
                    .iter()
                    .filter(|record| self.selector.matches(&record.id))
                    .cloned()
                    .collect(),
            )),
            HubMessage::Problem(error) => Err(Error::backend("watch", SharedError(error))),
        })
    }

    /// After falling behind: the hub's state as a resync, moving on to what is sent next under
    /// the same lock, so no event falls between snapshot and stream. What was taken before is
    /// older than the snapshot.
    fn resync(&mut self) -> Option<Result<WatchEvent>> {
        self.taken.clear();
        let hub = self.hub.upgrade()?;
        let (_sending, state) = hub.lock_sent();
        self.sent.skip_to_head();
        Some(Ok(WatchEvent::Resync(WatchHub::snapshot(
            &state,
            &self.selector,
        ))))
    }
}

/// An error shared between subscribers, shown with its own message and source.
#[derive(Debug)]
struct SharedError(Arc<Error>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// The hub of a store and whatever feeds it, shared by all subscribers of that store and
/// dropped with the last of them.
pub(crate) struct SharedHub {
    slot: Mutex<Weak<HubHandle>>,
}

/// A running hub and its source; dropping it stops the source.
pub(crate) struct HubHandle {
    pub(crate) hub: Arc<WatchHub>,
    /// Where the store's own writes tell the reconciler what changed, when its change feed
    /// does not (the memory store has none).
    pub(crate) changes: Arc<Changes>,
    pub(crate) _source: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for SharedHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let running = self
            .slot
            .lock()
            .map(|slot| slot.strong_count() > 0)
            .unwrap_or(false);
        f.debug_struct("SharedHub")
            .field("running", &running)
            .finish()
    }
}

impl Default for SharedHub {
    fn default() -> Self {
        SharedHub {
            slot: Mutex::new(Weak::new()),
        }
    }
}

impl SharedHub {
    /// The running hub, if any subscriber holds one.
    pub(crate) fn running(&self) -> Option<Arc<HubHandle>> {
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .upgrade()
    }

    /// The running hub, or a new one made by `start`. Two first subscribers racing may both
    /// start one; the second to finish drops its own and shares the first.
    pub(crate) async fn get_or_start<F, Fut>(&self, start: F) -> Result<Arc<HubHandle>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<HubHandle>>,
    {
        if let Some(handle) = self.running() {
            return Ok(handle);
        }
        let handle = Arc::new(start().await?);
        let mut slot = self
            .slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = slot.upgrade() {
            // Another subscriber started one meanwhile; keep theirs, drop ours.
            return Ok(existing);
        }
        *slot = Arc::downgrade(&handle);
        Ok(handle)
    }

    /// Like [`Self::get_or_start`] for sources that start without waiting; `start` runs with
    /// the slot locked, so callers that publish while holding their own lock (taken before
    /// this) cannot miss the new hub.
    pub(crate) fn get_or_start_sync(
        &self,
        start: impl FnOnce() -> Result<HubHandle>,
    ) -> Result<Arc<HubHandle>> {
        let mut slot = self
            .slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = slot.upgrade() {
            return Ok(existing);
        }
        let handle = Arc::new(start()?);
        *slot = Arc::downgrade(&handle);
        Ok(handle)
    }

    /// Subscribes through `handle`, keeping it alive as long as the stream.
    pub(crate) fn subscribe(
        handle: Arc<HubHandle>,
        selector: WatchSelector,
        options: WatchOptions,
    ) -> WatchStream {
        let hub = handle.hub.clone();
        hub.subscribe(selector, options, handle)
    }
}

/// A read of the source under way ([`WatchHub::open_read`]).
pub(crate) struct OpenRead<'a> {
    hub: &'a WatchHub,
    /// The local epoch when the read started.
    pub(crate) epoch: u64,
}

impl Drop for OpenRead<'_> {
    /// The read is published (or given up): local writes need no marks until the next one.
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        state.local_marks.clear();
        state.reading = false;
    }
}

#[cfg(test)]
mod tests;
