//! The hand-over of a hub's events to its subscribers: a bounded log of the latest events and
//! one waker slot per subscriber.
//!
//! `tokio::sync::broadcast` did this before. There every receiver, after each event, puts
//! itself back into one waiter list under the channel's one mutex, and the sender takes that
//! mutex again for every 32 receivers it wakes: with 1,000 subscribers on 2 workers, the
//! sender and the woken receivers take turns on that lock for most of a delivery. Here a
//! subscriber parks its waker in a slot of its own ([`AtomicWaker`], no lock), takes what it
//! has not seen in one short hold of the log, and the sender only wakes the slots.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

use futures_util::task::AtomicWaker;

/// Up to how many items a receiver takes in one hold of the log: what it holds taken but not
/// yet handed on stays small, whatever the log's capacity.
const TAKE_AT_ONCE: usize = 64;

/// Why a receiver got no items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TakeError {
    /// It fell so far behind that items it had not taken were dropped from the log; it goes
    /// on from the oldest item the log still holds.
    Lagged,
    /// The sender is gone and every item was taken.
    Closed,
}

/// One sender's items, kept for receivers up to a capacity.
#[derive(Debug)]
pub(crate) struct Fanout<T> {
    log: Mutex<Log<T>>,
    /// The sequence number the next item gets: every receiver whose own is lower has items to
    /// take. Written under the log's lock, read without it to decide whether to wait.
    head: AtomicU64,
    waiters: Mutex<Waiters>,
    capacity: usize,
    closed: AtomicBool,
}

#[derive(Debug)]
struct Log<T> {
    /// The sequence number of `items[0]`.
    first: u64,
    items: VecDeque<T>,
}

impl<T> Log<T> {
    fn head(&self) -> u64 {
        self.first + self.items.len() as u64
    }
}

/// The waker slot of every receiver, by the index each receiver keeps.
#[derive(Debug, Default)]
struct Waiters {
    slots: Vec<Option<Arc<AtomicWaker>>>,
    free: Vec<usize>,
}

/// Takes a sender's items in order, from the moment it subscribed.
#[derive(Debug)]
pub(crate) struct Receiver<T> {
    fanout: Arc<Fanout<T>>,
    /// The sequence number of the next item to take.
    next: u64,
    waker: Arc<AtomicWaker>,
    slot: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every mutation under these locks is a single push, pop or slot write: a panic
    // elsewhere while one was held leaves them consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T> Fanout<T> {
    /// A fan-out keeping the latest `capacity` items (at least one).
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Fanout {
            log: Mutex::new(Log {
                first: 0,
                items: VecDeque::new(),
            }),
            head: AtomicU64::new(0),
            waiters: Mutex::new(Waiters::default()),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
        })
    }

    /// Appends `items` in order and wakes every receiver waiting for one.
    pub(crate) fn send_all(&self, items: impl IntoIterator<Item = T>) {
        {
            let mut log = lock(&self.log);
            let before = log.head();
            log.items.extend(items);
            if log.head() == before {
                return;
            }
            let excess = log.items.len().saturating_sub(self.capacity);
            log.items.drain(..excess);
            log.first += excess as u64;
            self.head.store(log.head(), Ordering::SeqCst);
        }
        self.wake_all();
    }

    /// Ends the receivers once they have taken what was sent.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    fn wake_all(&self) {
        // A receiver that found nothing registered its waker before looking at `head` (and
        // `closed`) again, so it either sees the change or is woken here. The wakers run
        // after the lock is released: one that polls its task at once may drop a receiver.
        let waiting: Vec<Waker> = lock(&self.waiters)
            .slots
            .iter()
            .flatten()
            .filter_map(|slot| slot.take())
            .collect();
        for waker in waiting {
            waker.wake();
        }
    }

    /// A receiver of every item sent from now on.
    pub(crate) fn subscribe(self: &Arc<Self>) -> Receiver<T> {
        let waker = Arc::new(AtomicWaker::new());
        let slot = {
            let mut waiters = lock(&self.waiters);
            match waiters.free.pop() {
                Some(slot) => {
                    waiters.slots[slot] = Some(waker.clone());
                    slot
                }
                None => {
                    waiters.slots.push(Some(waker.clone()));
                    waiters.slots.len() - 1
                }
            }
        };
        Receiver {
            fanout: self.clone(),
            next: lock(&self.log).head(),
            waker,
            slot,
        }
    }
}

impl<T> Receiver<T> {
    /// Looks at the items it has not taken yet (up to a few dozen), moving what `keep` makes
    /// of them to the back of `out`; `false` if it kept none. `keep` runs under the log's
    /// lock, so it should be quick: a clone of what the receiver wants, `None` for the rest
    /// (which then costs no clone at all).
    pub(crate) fn try_take<U>(
        &mut self,
        out: &mut VecDeque<U>,
        keep: &mut impl FnMut(&T) -> Option<U>,
    ) -> Result<bool, TakeError> {
        if self.fanout.head.load(Ordering::SeqCst) == self.next {
            if self.fanout.closed.load(Ordering::SeqCst) {
                return Err(TakeError::Closed);
            }
            return Ok(false);
        }
        let log = lock(&self.fanout.log);
        if self.next < log.first {
            self.next = log.first;
            return Err(TakeError::Lagged);
        }
        let start = (self.next - log.first) as usize;
        let end = log.items.len().min(start + TAKE_AT_ONCE);
        let before = out.len();
        out.extend(log.items.range(start..end).filter_map(&mut *keep));
        self.next += (end - start) as u64;
        Ok(out.len() > before)
    }

    /// [`Self::try_take`], waiting until it kept at least one item. Each call uses one unit of
    /// the task's cooperative budget, as tokio's own channels do, so a subscriber that always
    /// has items cannot keep its worker from the other tasks.
    pub(crate) async fn take<U>(
        &mut self,
        out: &mut VecDeque<U>,
        mut keep: impl FnMut(&T) -> Option<U>,
    ) -> Result<(), TakeError> {
        poll_fn(|cx| self.poll_take(cx, out, &mut keep)).await
    }

    fn poll_take<U>(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<U>,
        keep: &mut impl FnMut(&T) -> Option<U>,
    ) -> Poll<Result<(), TakeError>> {
        let budget = ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            match self.try_take(out, keep) {
                Ok(false) => {}
                taken => {
                    budget.made_progress();
                    return Poll::Ready(taken.map(|_| ()));
                }
            }
            self.waker.register(cx.waker());
            // An item sent (or the close) between the look above and the registration woke
            // nobody: look again now that a send is sure to see the waker.
            if self.fanout.head.load(Ordering::SeqCst) == self.next
                && !self.fanout.closed.load(Ordering::SeqCst)
            {
                return Poll::Pending;
            }
        }
    }

    /// Skips every item sent so far: the receiver goes on from the next one.
    pub(crate) fn skip_to_head(&mut self) {
        self.next = lock(&self.fanout.log).head();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut waiters = lock(&self.fanout.waiters);
        waiters.slots[self.slot] = None;
        waiters.free.push(self.slot);
    }
}

#[cfg(test)]
mod tests;
