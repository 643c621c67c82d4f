//! The file store's change feed on Linux: inotify, read by a task of the async runtime.
//!
//! notify, the feed elsewhere, asks inotify for opens too (`IN_OPEN`, which it does not let
//! its users leave out), so every open of a record in the directory woke its thread only for
//! the event to be dropped: the writer's read of the record it replaces and the watch's own
//! re-read, twice for every write of this store. And what it did report reached the reconciler
//! from that other thread. With the watch polling instead, a writer with one subscriber kept
//! 0.96x of its speed against 0.85x on notify's events (BENCHMARKS.md). Here the kernel is
//! asked only for what can change a record or the directory, and the events are read by a
//! task on the same runtime as the reconciler.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};

use super::disk::Layout;
use crate::error::Error;
use crate::task::AbortOnDrop;
use crate::watch::Changes;

/// What may change a record file's content or presence: writes in place and the close that
/// ends them, renames in and out (every write of a store, editors that replace a file),
/// creation, removal and attribute changes (a `touch`); and the removal or move of the
/// directory itself. Not opens, reads or closes after reading.
fn mask() -> WatchMask {
    WatchMask::ATTRIB
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// Bytes read at once: a few hundred events, with names of the longest ids.
const BUFFER: usize = 64 * 1024;

/// The running feed of one directory; dropping it stops the task and closes the inotify
/// instance.
pub(super) struct Feed {
    _task: AbortOnDrop,
}

/// Starts watching `dir`, telling `changes` what it hears. Must run within the runtime. An
/// error of kind `NotFound` means the directory is missing; one from the kernel's limits
/// (`max_user_instances`, `max_user_watches`) says which.
pub(super) fn start(dir: &Path, changes: &Arc<Changes>) -> io::Result<Feed> {
    let inotify = Inotify::init()?;
    inotify.watches().add(dir, mask())?;
    let mut events = inotify.into_event_stream(vec![0u8; BUFFER])?;
    let changes = Arc::downgrade(changes);
    let task = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let Some(changes) = changes.upgrade() else {
                return;
            };
            let going_on = match event {
                Ok(event) => on_event(&changes, event.mask, event.name.as_deref()),
                Err(error) => {
                    // The instance itself failed: the reconciler starts a new one and resyncs.
                    changes.lost(Some(Error::backend("file watch", error.to_string())));
                    false
                }
            };
            if !going_on {
                return;
            }
        }
        if let Some(changes) = changes.upgrade() {
            changes.lost(None);
        }
    });
    Ok(Feed {
        _task: AbortOnDrop(task),
    })
}

/// Tells `changes` what one event means; false once the watch has ended (the directory was
/// removed or moved away: the reconciler waits for it and starts a new feed).
fn on_event(changes: &Changes, mask: EventMask, name: Option<&OsStr>) -> bool {
    if mask.contains(EventMask::Q_OVERFLOW) {
        changes.rescan();
        return true;
    }
    if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED) {
        changes.lost(None);
        return false;
    }
    if let Some(id) = name.and_then(Layout::id_of) {
        changes.changed(id);
    }
    true
}
