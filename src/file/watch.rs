//! Watching a file store: file system events are hints naming ids; the shared reconciler
//! (`crate::watch`) re-reads those files and diffs.
//!
//! On Linux the events are inotify's, read by a task of the runtime (`inotify_feed`); on
//! macOS and Windows notify's, whose callback runs on notify's own thread and never blocks.
//! Either records which ids are dirty (or that a full rescan is needed, or that the directory
//! is gone) and wakes the reconciler, which reads through [`FileSource`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
#[cfg(not(target_os = "linux"))]
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::time::Instant;

use super::FileStorage;
#[cfg(not(target_os = "linux"))]
use super::disk::Layout;
#[cfg(not(target_os = "linux"))]
use crate::error::Error;
use crate::error::Result;
use crate::watch::{Backoff, ChangeSource, Changes, Duty, HubHandle, Reads, Scan, Settings};

/// How a file store's watches learn about changes.
///
/// All watches of one [`FileStorage`] (and its clones) share one watcher, started by the
/// first and stopped when the last stream is dropped. Writes made through that same store
/// reach its subscribers directly; everything else (other processes, other stores on the
/// same directory, people editing files) is learnt from the file system.
///
/// # Known problems
///
/// - **Network file systems** (NFS, SMB/CIFS, sshfs, most FUSE mounts) deliver no events for
///   changes made on other machines, and often not even for changes made locally. Use
///   [`WatchMode::Poll`] there.
/// - **Container bind mounts and VM shared folders** (Docker Desktop on macOS and Windows,
///   WSL2 paths under `/mnt`, VirtualBox/Vagrant shares) do not forward events made on the
///   other side of the mount. Use [`WatchMode::Poll`], or watch from the side that writes.
/// - **Windows** (ReadDirectoryChangesW) loses events silently when a burst overflows its
///   buffer. A watch there also re-reads the whole directory every 30 seconds and reports
///   what differs, so a lost change arrives late rather than never; that re-read costs a read
///   of every record file.
/// - **inotify limits** (Linux). Each watch takes one inotify instance
///   (`/proc/sys/fs/inotify/max_user_instances`) and one watch
///   (`/proc/sys/fs/inotify/max_user_watches`); when none can be had the store logs a warning
///   and polls every second instead. The kernel queue holds
///   `/proc/sys/fs/inotify/max_queued_events` events; a burst beyond it overflows, and the
///   watch answers with a full rescan sent as [`WatchEvent::Resync`](crate::WatchEvent) —
///   nothing is lost, but a rescan of a large store costs a read of every file.
/// - **Editors and tools that replace files** (write a copy, then rename over or delete and
///   re-create) are seen as removals and creations; the watch re-reads the file and reports
///   its final content. A file holding something that is not a record is reported as an
///   error item and the stream goes on. Files written by hand without the envelope
///   (version 0) carry no creation stamp, so their re-creation is reported as an upsert.
/// - **Removing the store directory** (`rm -rf`) is reported as the removal of every record;
///   the watch then looks for the directory every 200 ms and, once it is back, watches the
///   new one and sends a resync. A directory moved away is treated the same way.
/// - **The clocks of other writers.** `created_at`/`updated_at` come from the clock of
///   whichever process wrote the record, and expiry is judged by this store's clock: a
///   record is reported removed when it expires by that clock, whether or not a sweep has
///   deleted its file yet. Records written by a machine whose clock runs behind may look
///   expired (and are then reported as removed) or stale; keep clocks synchronised. A clock
///   that jumps ahead (a [`ManualClock`](crate::ManualClock) in tests) is noticed within a
///   second.
/// - **Polling** costs a read of every record file per interval and reports only the state
///   at each look: writes between two looks are coalesced, and a record removed and made
///   again between two looks is seen as a removal followed by the new record only when its
///   creation stamp changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WatchMode {
    /// File system events (inotify, FSEvents, ...), with a full rescan whenever the event
    /// queue overflows or the directory is replaced.
    #[default]
    Events,
    /// Re-read the directory at this interval: for file systems that deliver no events
    /// (network mounts, some container bind mounts).
    Poll(Duration),
}

/// Up to how many ids named by the feed are read on the async worker (see
/// [`FileSource::read`]): a few small reads take microseconds there, while a batch of
/// records could hold the worker and the tasks queued on it for milliseconds.
const INLINE_READ_IDS: usize = 4;
/// How often the reconciler looks for a store directory that was removed to come back.
const DIRECTORY_RETRY: Duration = Duration::from_millis(200);
/// Polling interval used when file system events cannot be had at all.
const FALLBACK_POLL: Duration = Duration::from_secs(1);
/// How often a watch on file system events also re-reads the whole directory and reports
/// what differs. Windows' ReadDirectoryChangesW drops events without a word when its buffer
/// overflows (notify#963: no rescan is signalled), so there this is the safety net that
/// turns a lost event into a late one. inotify and FSEvents report their overflows.
const EVENTS_RECONCILE: Option<Duration> = if cfg!(windows) {
    Some(Duration::from_secs(30))
} else {
    None
};

/// The file system's change feed while it runs; dropping it stops it. On Linux inotify read
/// by a task of the runtime (see `inotify_feed`), elsewhere notify's watcher and its thread.
#[cfg(target_os = "linux")]
type EventFeed = super::inotify_feed::Feed;
#[cfg(not(target_os = "linux"))]
type EventFeed = notify::RecommendedWatcher;

/// Why a feed of file system events could not be started.
enum StartError {
    /// The directory does not exist (yet, or any more).
    Missing,
    /// Anything else (the kernel's limits, a file system without events): poll instead.
    Other(String),
}

/// Called on notify's thread for every event: record, wake, return. Never blocks on anything
/// but the short dirty-set lock. `dir` is the watched directory as notify reports it
/// (absolute).
#[cfg(not(target_os = "linux"))]
fn on_event(changes: &Changes, dir: &Path, result: notify::Result<notify::Event>) {
    match result {
        Ok(event) => {
            if event.need_rescan() {
                changes.rescan();
            }
            if !changes_content(&event.kind) {
                // Opening and reading are reported too (inotify's IN_OPEN), and the
                // reconciler's own re-read is one: reacting to it would re-read forever.
                return;
            }
            for path in &event.paths {
                if path == dir {
                    if matches!(
                        event.kind,
                        EventKind::Remove(_)
                            | EventKind::Modify(notify::event::ModifyKind::Name(_))
                    ) {
                        changes.lost(None);
                    }
                } else if let Some(id) = path.file_name().and_then(Layout::id_of) {
                    changes.changed(id);
                }
            }
        }
        Err(error) => {
            changes.report(Error::backend("file watch", error.to_string()));
            changes.rescan();
        }
    }
}

/// Whether an event may mean the content of a file changed. Only closing a file opened for
/// writing among the accesses: an editor that writes in place is done then.
#[cfg(not(target_os = "linux"))]
fn changes_content(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(not(target_os = "linux"))]
fn event_watcher(dir: &Path, changes: &Arc<Changes>) -> notify::Result<notify::RecommendedWatcher> {
    let callback_changes = Arc::downgrade(changes);
    // notify reports paths under the watched directory made absolute against the current
    // directory, so the removal of a store opened by a relative path is only recognised
    // against the same absolute form.
    let callback_dir = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(notify::Error::io)?
            .join(dir)
    };
    let mut watcher = notify::recommended_watcher(move |result| {
        if let Some(changes) = callback_changes.upgrade() {
            on_event(&changes, &callback_dir, result);
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Starts inotify on `dir`: two system calls, made on the worker.
#[cfg(target_os = "linux")]
async fn start_events(
    _store: &FileStorage,
    dir: &Path,
    changes: &Arc<Changes>,
) -> std::result::Result<EventFeed, StartError> {
    super::inotify_feed::start(dir, changes).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => StartError::Missing,
        _ => StartError::Other(error.to_string()),
    })
}

/// Starts notify's watcher off the async threads: it waits for notify's own thread to
/// confirm the watch.
#[cfg(not(target_os = "linux"))]
async fn start_events(
    store: &FileStorage,
    dir: &Path,
    changes: &Arc<Changes>,
) -> std::result::Result<EventFeed, StartError> {
    let dir = dir.to_path_buf();
    let changes = changes.clone();
    match store
        .blocking(move |_| Ok(event_watcher(&dir, &changes)))
        .await
    {
        Ok(Ok(watcher)) => Ok(watcher),
        Ok(Err(error)) if is_missing(&error) => Err(StartError::Missing),
        Ok(Err(error)) => Err(StartError::Other(error.to_string())),
        Err(error) => Err(StartError::Other(error.to_string())),
    }
}

/// Whether watching failed because the directory does not exist.
#[cfg(not(target_os = "linux"))]
fn is_missing(error: &notify::Error) -> bool {
    match &error.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Starts the watcher and reconciler of `store`, seeded with a full scan taken after the
/// watcher is in place, so no change falls between the two.
pub(super) async fn start(store: FileStorage) -> Result<HubHandle> {
    let changes = Arc::new(Changes::default());
    let poll = match store.inner.watch_mode {
        WatchMode::Poll(interval) => Some(interval),
        WatchMode::Events => None,
    };
    let settings = Settings {
        clock: store.inner.clock.clone(),
        backoff: Backoff::fixed(DIRECTORY_RETRY),
        // A removed directory is reported as the removal of every record, not as silence.
        scan_after_loss: true,
    };
    let source = FileSource {
        dir: store.dir().to_path_buf(),
        store,
        changes: changes.clone(),
        watcher: None,
        poll,
        poll_at: poll.map(|every| Instant::now() + every),
        reconcile_at: None,
        gone: false,
    };
    crate::watch::start(source, changes, settings).await
}

/// The file store's side of the reconciler: notify as the feed, files as the records.
struct FileSource {
    store: FileStorage,
    dir: PathBuf,
    changes: Arc<Changes>,
    /// Dropped with the reconciler's task, which stops the feed.
    watcher: Option<EventFeed>,
    /// Re-read the whole directory at this interval instead of (or for want of) events.
    poll: Option<Duration>,
    poll_at: Option<Instant>,
    /// When the next safety re-read of the whole directory is due (see `EVENTS_RECONCILE`).
    reconcile_at: Option<Instant>,
    /// The directory was removed or moved away since the feed last started.
    gone: bool,
}

#[async_trait]
impl ChangeSource for FileSource {
    async fn connect(&mut self) -> Result<bool> {
        if self.gone {
            let dir = self.dir.clone();
            let exists = self
                .store
                .blocking(move |_| Ok(dir.is_dir()))
                .await
                .unwrap_or(false);
            if !exists {
                return Ok(false);
            }
        }
        if self.poll.is_none() {
            match start_events(&self.store, &self.dir, &self.changes).await {
                Ok(watcher) => {
                    self.watcher = Some(watcher);
                    self.reconcile_at = EVENTS_RECONCILE.map(|every| Instant::now() + every);
                }
                // Removed since the store was opened, or again in between: wait for it as for
                // a directory removed while watched.
                Err(StartError::Missing) => {
                    self.gone = true;
                    return Ok(false);
                }
                Err(StartError::Other(error)) => {
                    tracing::warn!(dir = %self.dir.display(), %error, "no file system events; polling instead");
                    self.poll = Some(FALLBACK_POLL);
                    self.poll_at = Some(Instant::now() + FALLBACK_POLL);
                }
            }
        }
        self.gone = false;
        Ok(true)
    }

    fn disconnect(&mut self) {
        self.watcher = None;
        self.reconcile_at = None;
        self.gone = true;
    }

    async fn read(&mut self, ids: Vec<String>) -> Result<Reads> {
        // What a write of this store (or a few writes of others) names is read as `get` reads:
        // small records on the worker itself, because `blocking` would first hand the worker's
        // other tasks (the subscribers, who are about to receive that write) to another thread,
        // once for every write. A larger batch (a burst, a rescan's worth) is read off it.
        if ids.len() <= INLINE_READ_IDS {
            let mut reads = Vec::with_capacity(ids.len());
            for id in ids {
                let current = self.store.get_live(&id).await;
                reads.push((id, current));
            }
            return Ok(reads);
        }
        self.store
            .blocking(move |inner| {
                Ok(ids
                    .into_iter()
                    .map(|id| {
                        let current = inner.read_live(&id);
                        (id, current)
                    })
                    .collect())
            })
            .await
    }

    async fn scan(&mut self) -> Result<Scan> {
        self.store
            .blocking(|inner| {
                let mut records = Vec::new();
                let mut errors = Vec::new();
                for id in inner.layout.ids()? {
                    match inner.read_live(&id) {
                        Ok(Some(record)) => records.push(record),
                        Ok(None) => {}
                        Err(error) => errors.push(error),
                    }
                }
                Ok((records, errors))
            })
            .await
    }

    fn next_duty(&self) -> Option<Instant> {
        [self.poll_at, self.reconcile_at]
            .into_iter()
            .flatten()
            .min()
    }

    async fn duty(&mut self) -> Result<Duty> {
        let now = Instant::now();
        if let (Some(every), Some(at)) = (self.poll, self.poll_at)
            && at <= now
        {
            self.poll_at = Some(now + every);
        }
        if self.reconcile_at.is_some_and(|at| at <= now) {
            self.reconcile_at = EVENTS_RECONCILE.map(|every| now + every);
        }
        Ok(Duty::Diff)
    }
}
