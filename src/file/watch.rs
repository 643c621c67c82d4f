//! Watching a file store: `notify` events are hints; a reconciler re-reads and diffs.
//!
//! The notify callback runs on notify's own thread and never blocks: it records which ids are
//! dirty (or that a full rescan is needed) and wakes the reconciler task. The reconciler
//! re-reads those files off the async threads and publishes what changed to the store's hub.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::Notify;

use super::FileStorage;
use super::disk::Layout;
use crate::error::{Error, Result};
use crate::record::{Record, Timestamp};
use crate::task::AbortOnDrop;
use crate::watch::{EXPIRY_LOOK, HubHandle, WatchHub};

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

#[derive(Debug, Default)]
struct Signals {
    dirty: Mutex<HashSet<String>>,
    rescan: AtomicBool,
    directory_gone: AtomicBool,
    problem: Mutex<Option<String>>,
    wake: Notify,
}

impl Signals {
    fn take_dirty(&self) -> HashSet<String> {
        std::mem::take(
            &mut *self
                .dirty
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Called on notify's thread for every event: record, wake, return. Never blocks on
    /// anything but the short dirty-set lock. `dir` is the watched directory as notify
    /// reports it (absolute).
    fn on_event(&self, dir: &Path, result: notify::Result<notify::Event>) {
        match result {
            Ok(event) => {
                if event.need_rescan() {
                    self.rescan.store(true, Ordering::SeqCst);
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
                            self.directory_gone.store(true, Ordering::SeqCst);
                        }
                    } else if let Some(id) = path.file_name().and_then(Layout::id_of) {
                        self.dirty
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .insert(id.to_string());
                    }
                }
            }
            Err(error) => {
                *self
                    .problem
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error.to_string());
                self.rescan.store(true, Ordering::SeqCst);
            }
        }
        self.wake.notify_one();
    }
}

/// Whether an event may mean the content of a file changed. Only closing a file opened for
/// writing among the accesses: an editor that writes in place is done then.
fn changes_content(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn event_watcher(dir: &Path, signals: &Arc<Signals>) -> notify::Result<notify::RecommendedWatcher> {
    let callback_signals = Arc::downgrade(signals);
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
        if let Some(signals) = callback_signals.upgrade() {
            signals.on_event(&callback_dir, result);
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Starts notify's watcher off the async threads: it waits for notify's own thread to
/// confirm the watch.
async fn start_events(
    store: &FileStorage,
    dir: &Path,
    signals: &Arc<Signals>,
) -> notify::Result<notify::RecommendedWatcher> {
    let dir = dir.to_path_buf();
    let signals = signals.clone();
    match store
        .blocking(move |_| Ok(event_watcher(&dir, &signals)))
        .await
    {
        Ok(started) => started,
        Err(error) => Err(notify::Error::generic(&error.to_string())),
    }
}

/// Whether watching failed because the directory does not exist.
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
    let dir = store.dir().to_path_buf();
    let signals = Arc::new(Signals::default());
    let (watcher, poll) = match store.inner.watch_mode {
        WatchMode::Poll(interval) => (None, Some(interval)),
        WatchMode::Events => match start_events(&store, &dir, &signals).await {
            Ok(watcher) => (Some(watcher), None),
            Err(error) if is_missing(&error) => {
                // Removed since the store was opened: wait for it as for a directory removed
                // while watched.
                signals.directory_gone.store(true, Ordering::SeqCst);
                signals.wake.notify_one();
                (None, None)
            }
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "no file system events; polling instead");
                (None, Some(FALLBACK_POLL))
            }
        },
    };
    let records = scan(&store).await?.0;
    let mut expiries = Expiries::default();
    for record in &records {
        let at = store
            .inner
            .ttl
            .expires_at(&record.status, record.updated_at);
        expiries.track(&record.id, at);
    }
    let hub = Arc::new(WatchHub::new(records));
    let reconcile_at = watcher
        .as_ref()
        .and(EVENTS_RECONCILE)
        .map(|every| tokio::time::Instant::now() + every);
    let reconciler = Reconciler {
        store,
        dir,
        hub: Arc::downgrade(&hub),
        signals,
        watcher,
        poll,
        expiries,
        retry: false,
        reconcile_at,
    };
    let task = tokio::spawn(reconciler.run());
    Ok(HubHandle {
        hub,
        _source: Box::new(AbortOnDrop(task)),
    })
}

/// Every live record and the errors of unreadable ones.
async fn scan(store: &FileStorage) -> Result<(Vec<Record>, Vec<Error>)> {
    store
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

/// When each published record expires under the store's TTL policy. Expiry changes no file,
/// so without this a record would be reported removed only once a sweep deletes its file.
#[derive(Debug, Default)]
struct Expiries {
    by_id: HashMap<String, Timestamp>,
    due: BTreeSet<(Timestamp, String)>,
}

impl Expiries {
    fn track(&mut self, id: &str, expires_at: Option<Timestamp>) {
        if let Some(old) = self.by_id.remove(id) {
            self.due.remove(&(old, id.to_string()));
        }
        if let Some(at) = expires_at {
            self.by_id.insert(id.to_string(), at);
            self.due.insert((at, id.to_string()));
        }
    }

    fn next(&self) -> Option<Timestamp> {
        self.due.first().map(|(at, _)| *at)
    }

    /// The ids expired at `now`, no longer tracked (a re-read tracks them again if needed).
    fn take_due(&mut self, now: Timestamp) -> Vec<String> {
        let mut ids = Vec::new();
        while self.due.first().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, id)) = self.due.pop_first() {
                self.by_id.remove(&id);
                ids.push(id);
            }
        }
        ids
    }
}

struct Reconciler {
    store: FileStorage,
    dir: PathBuf,
    hub: Weak<WatchHub>,
    signals: Arc<Signals>,
    /// Dropped with the task, which stops notify's thread.
    watcher: Option<notify::RecommendedWatcher>,
    poll: Option<Duration>,
    expiries: Expiries,
    /// A scan failed: try again after a pause even if no event comes.
    retry: bool,
    /// When the next safety re-read of the whole directory is due (see `EVENTS_RECONCILE`).
    reconcile_at: Option<tokio::time::Instant>,
}

impl Reconciler {
    fn expires_at(&self, record: &Record) -> Option<Timestamp> {
        self.store
            .inner
            .ttl
            .expires_at(&record.status, record.updated_at)
    }

    fn track(&mut self, id: &str, current: Option<&Record>) {
        let at = current.and_then(|record| self.expires_at(record));
        self.expiries.track(id, at);
    }

    /// How long to sleep at most before looking again without an event.
    fn next_look(&self) -> Option<Duration> {
        let now = self.store.inner.clock.now();
        // Capped so that a clock that jumps ahead (a test's manual clock, a corrected wall
        // clock) is noticed within EXPIRY_LOOK rather than at the time first computed.
        let until_expiry = self.expiries.next().map(|at| {
            Duration::from_millis(at.as_millis().saturating_sub(now.as_millis())).min(EXPIRY_LOOK)
        });
        let retry = self.retry.then_some(DIRECTORY_RETRY);
        let reconcile = self
            .reconcile_at
            .map(|at| at.saturating_duration_since(tokio::time::Instant::now()));
        [self.poll, until_expiry, retry, reconcile]
            .into_iter()
            .flatten()
            .min()
    }

    async fn run(mut self) {
        loop {
            match self.next_look() {
                Some(wait) => {
                    let _ = tokio::time::timeout(wait, self.signals.wake.notified()).await;
                }
                None => self.signals.wake.notified().await,
            }
            let Some(hub) = self.hub.upgrade() else {
                return;
            };
            if std::mem::take(&mut self.retry) {
                self.signals.rescan.store(true, Ordering::SeqCst);
            }
            let expired = self.expiries.take_due(self.store.inner.clock.now());
            if !expired.is_empty() {
                self.signals
                    .dirty
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .extend(expired);
            }
            if let Some(problem) = self
                .signals
                .problem
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take()
            {
                hub.report(Error::backend("file watch", problem));
            }
            if self.signals.directory_gone.swap(false, Ordering::SeqCst) {
                // Tell subscribers what is there now (usually nothing: every record is
                // reported removed) rather than going silent until the directory is back.
                self.signals.take_dirty();
                self.full_scan(&hub, false).await;
                drop(hub);
                if !self.rewatch().await {
                    return;
                }
                continue;
            }
            let reconcile_due = self
                .reconcile_at
                .is_some_and(|at| at <= tokio::time::Instant::now());
            if reconcile_due {
                self.reconcile_at =
                    EVENTS_RECONCILE.map(|every| tokio::time::Instant::now() + every);
            }
            if self.signals.rescan.swap(false, Ordering::SeqCst) {
                // Events were lost: everything dirty is covered by the full scan.
                self.signals.take_dirty();
                self.full_scan(&hub, true).await;
            } else if self.poll.is_some() || reconcile_due {
                self.signals.take_dirty();
                self.full_scan(&hub, false).await;
            } else {
                let dirty = self.signals.take_dirty();
                if !dirty.is_empty() {
                    self.reread(&hub, dirty).await;
                }
            }
        }
    }

    /// Publishes the whole directory: as a resync when continuity was lost, else as a diff.
    async fn full_scan(&mut self, hub: &WatchHub, resync: bool) {
        let epoch = hub.read_epoch();
        match scan(&self.store).await {
            Ok((records, errors)) => {
                for error in errors {
                    hub.report(error);
                }
                self.expiries = Expiries::default();
                for record in &records {
                    self.track(&record.id, Some(record));
                }
                if resync {
                    hub.replace_all_read(records, epoch);
                } else {
                    let present: HashSet<String> =
                        records.iter().map(|record| record.id.clone()).collect();
                    for id in hub.known_ids() {
                        if !present.contains(&id) {
                            hub.apply_read(&id, None, epoch);
                        }
                    }
                    for record in records {
                        let id = record.id.clone();
                        hub.apply_read(&id, Some(record), epoch);
                    }
                }
            }
            Err(error) => {
                hub.report(error);
                self.retry = true;
            }
        }
    }

    async fn reread(&mut self, hub: &WatchHub, dirty: HashSet<String>) {
        let ids: Vec<String> = dirty.into_iter().collect();
        let epoch = hub.read_epoch();
        let read = self
            .store
            .blocking(move |inner| {
                Ok(ids
                    .into_iter()
                    .map(|id| {
                        let current = inner.read_live(&id);
                        (id, current)
                    })
                    .collect::<Vec<_>>())
            })
            .await;
        match read {
            Ok(results) => {
                for (id, current) in results {
                    match current {
                        Ok(current) => {
                            self.track(&id, current.as_ref());
                            hub.apply_read(&id, current, epoch);
                        }
                        Err(error) => hub.report(error),
                    }
                }
            }
            Err(error) => {
                hub.report(error);
                self.retry = true;
            }
        }
    }

    /// The directory was removed or moved away: wait for it to exist again, watch the new
    /// one, and resync. Returns false when the hub is gone meanwhile.
    async fn rewatch(&mut self) -> bool {
        self.watcher = None;
        loop {
            if self.hub.strong_count() == 0 {
                return false;
            }
            let dir = self.dir.clone();
            let exists = self
                .store
                .blocking(move |_| Ok(dir.is_dir()))
                .await
                .unwrap_or(false);
            if exists {
                if self.poll.is_none() {
                    match start_events(&self.store, &self.dir, &self.signals).await {
                        Ok(watcher) => {
                            self.watcher = Some(watcher);
                            self.reconcile_at =
                                EVENTS_RECONCILE.map(|every| tokio::time::Instant::now() + every);
                        }
                        Err(error) if is_missing(&error) => {
                            // Removed again in between.
                            tokio::time::sleep(DIRECTORY_RETRY).await;
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(dir = %self.dir.display(), %error, "no file system events; polling instead");
                            self.poll = Some(FALLBACK_POLL);
                        }
                    }
                }
                self.signals.rescan.store(true, Ordering::SeqCst);
                self.signals.wake.notify_one();
                return true;
            }
            tokio::time::sleep(DIRECTORY_RETRY).await;
        }
    }
}
