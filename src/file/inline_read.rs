//! `get` of a small record on the async worker itself.
//!
//! [`FileStorage::blocking`] runs its closure in `block_in_place`, which first hands the
//! worker's other tasks to another thread (waking or spawning one) and takes them back after:
//! tens of microseconds, more on a loaded machine, while opening, reading and parsing a record
//! of a few KiB from the page cache costs a few. Under many concurrent reads those hand-offs
//! also multiply the runnable threads, and the slowest answers wait behind them (the serve
//! bench saw a p99 three times that of a route reading inline). So `get` opens the file on the
//! worker and reads a small record there; a large one is read off the worker, from the file
//! already open. Every check of the blocking read is made all the same (no link followed,
//! regular files only, the size limit, the id in the file, expiry judged before the read).
//!
//! A slow disk (a network file system, a disk under heavy load) would stall the worker and
//! the tasks queued on it, so slow reads turn inline reads off for a while ([`InlineReads`]).
//! One slow read alone does not: on a loaded machine the kernel preempts a worker in the
//! middle of a read now and then, which makes it look slow, and turning inline reads off for
//! that would bring the hand-offs back exactly when they cost most.
//!
//! Current-thread runtimes read inline too: there `blocking` sends the read to the blocking
//! pool and waits for that thread to wake the one worker, two thread switches that cost more
//! than the read itself; the latch guards them against a slow disk the same way.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::disk::OpenRecord;
use super::{FileStorage, Inner};
use crate::error::Result;
use crate::record::{Record, Timestamp};

/// The largest record file read on the async worker, in bytes. Parsing 64 KiB of JSON takes
/// on the order of a hundred microseconds; larger records (up to the store's limit, a
/// megabyte by default) would hold the worker and its queued tasks for milliseconds.
pub(super) const INLINE_MAX_SIZE: u64 = 64 * 1024;

/// An inline read that takes longer than this is slow: from the page cache, it takes
/// microseconds.
pub(super) const SLOW_READ: Duration = Duration::from_millis(1);

/// How many slow inline reads in a row turn inline reads off. Preemption makes single reads
/// slow now and then; a slow disk makes every read slow.
pub(super) const SLOW_READS_IN_A_ROW: u32 = 3;

/// How long inline reads stay off once turned off; the reads after that try again.
pub(super) const OFF_FOR: Duration = Duration::from_secs(10);

/// Whether a record file of `size` bytes may be read on the async worker.
pub(super) fn is_small(size: u64) -> bool {
    size <= INLINE_MAX_SIZE
}

/// What an inline read that took `took` makes of the count of slow reads just before it:
/// the new count, and whether inline reads turn off (the count then starts over).
pub(super) fn after_read(slow_in_a_row: u32, took: Duration) -> (u32, bool) {
    if took <= SLOW_READ {
        return (0, false);
    }
    let slow = slow_in_a_row.saturating_add(1);
    if slow >= SLOW_READS_IN_A_ROW {
        (0, true)
    } else {
        (slow, false)
    }
}

/// Whether reads go inline, and how the last ones went; one per store, shared by its
/// handles. Updated without a lock: two reads that finish together may count as one, which
/// only delays the turn by a read.
#[derive(Debug)]
pub(super) struct InlineReads {
    /// What `off_until` counts from.
    origin: Instant,
    /// Until when inline reads are off, in nanoseconds after `origin` (0: never turned off).
    off_until: AtomicU64,
    /// How many inline reads in a row were slow.
    slow_in_a_row: AtomicU32,
}

impl Default for InlineReads {
    fn default() -> Self {
        InlineReads {
            origin: Instant::now(),
            off_until: AtomicU64::new(0),
            slow_in_a_row: AtomicU32::new(0),
        }
    }
}

impl InlineReads {
    fn nanos_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether a read starting at `now` may go inline.
    pub(super) fn on_at(&self, now: Instant) -> bool {
        self.nanos_at(now) >= self.off_until.load(Ordering::Relaxed)
    }

    /// Counts an inline read that took `took` and ended at `now`.
    pub(super) fn note(&self, took: Duration, now: Instant) {
        let before = self.slow_in_a_row.load(Ordering::Relaxed);
        let (after, turn_off) = after_read(before, took);
        // Fast reads leave a zero alone: no write to a line every worker reads.
        if after != before {
            self.slow_in_a_row.store(after, Ordering::Relaxed);
        }
        if turn_off {
            let off_for = u64::try_from(OFF_FOR.as_nanos()).unwrap_or(u64::MAX);
            self.off_until.store(
                self.nanos_at(now).saturating_add(off_for),
                Ordering::Relaxed,
            );
        }
    }
}

impl FileStorage {
    /// The live record of the (valid) `id`: read on the worker when it is small and the disk
    /// quick, else off it (see the module docs). The same answer as [`Inner::read_live`].
    pub(super) async fn get_live(&self, id: &str) -> Result<Option<Record>> {
        let inner = &self.inner;
        let started = Instant::now();
        if !inner.inline_reads.on_at(started) {
            let id = id.to_string();
            return self.blocking(move |inner| inner.read_live(&id)).await;
        }
        // Judged when `read_live` judges it: before the file is opened.
        let now = inner.clock.now();
        let opened = inner.layout.open_record(id);
        let open = match opened {
            Ok(Some(open)) => open,
            Ok(None) => {
                inner.note_inline_read(started);
                return Ok(None);
            }
            Err(error) => {
                inner.note_inline_read(started);
                return Err(error);
            }
        };
        if !is_small(open.size()) {
            // The open ran on the worker: a slow one counts like a slow read.
            inner.note_inline_read(started);
            let id = id.to_string();
            return self
                .blocking(move |inner| inner.finish_live(&id, open, now))
                .await;
        }
        let record = inner.finish_live(id, open, now);
        inner.note_inline_read(started);
        record
    }
}

impl Inner {
    /// Reads the rest of `open` and keeps the record if it is live at `now`.
    fn finish_live(&self, id: &str, open: OpenRecord, now: Timestamp) -> Result<Option<Record>> {
        let (record, _read) = self.layout.finish_read(id, open)?;
        Ok(Some(record).filter(|record| !record.is_expired_at(now)))
    }

    fn note_inline_read(&self, started: Instant) {
        let now = Instant::now();
        self.inline_reads
            .note(now.saturating_duration_since(started), now);
    }
}

#[cfg(test)]
mod tests;
