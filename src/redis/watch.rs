//! Watching a Redis store: every write script publishes `<id> <version>` on the store's
//! channel; a task re-reads the ids it hears of and feeds the store's hub.
//!
//! The subscription is confirmed before the first scan, so nothing written after the scan is
//! missed. A lost connection is reported, then the task reconnects with a bounded backoff,
//! subscribes again and rescans, publishing a resync. Records Redis expires by itself send no
//! message, so the task also re-reads every record when its expiry time (by the store's clock)
//! comes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind};
use tokio::sync::Notify;

use super::{CONNECTION_TIMEOUT, RESPONSE_TIMEOUT, RedisStorage, STORE, command_error};
use crate::error::{Error, Result};
use crate::id::validate_id;
use crate::record::{Record, Timestamp};
use crate::task::AbortOnDrop;
use crate::watch::{HubHandle, WatchHub};

/// First pause before reconnecting; doubled per failed attempt up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest sleep between two looks at the expiry queue. The store's clock may be moved by
/// hand (tests), so a far expiry is looked at again after this, not slept on.
const EXPIRY_POLL: Duration = Duration::from_secs(1);

/// The connection lost its server.
#[derive(Debug, thiserror::Error)]
#[error("the watch connection to redis was lost; reconnecting, then resyncing")]
struct ConnectionLost;

/// What the connection's push callback hands to the task. The callback runs on the
/// connection's reader and must not block: it records and wakes.
#[derive(Debug, Default)]
struct Signals {
    dirty: Mutex<HashSet<String>>,
    /// The connection of this generation is the current one; pushes of older ones are stale.
    generation: AtomicU64,
    disconnected: AtomicBool,
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

    fn on_push(&self, generation: u64, push: PushInfo) {
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        match push.kind {
            PushKind::Message => {
                // `[channel, payload]`; the payload is `<id> <version>`.
                let Some(redis::Value::BulkString(payload)) = push.data.last() else {
                    return;
                };
                let Some(id) = payload
                    .split(|byte| *byte == b' ')
                    .next()
                    .and_then(|id| std::str::from_utf8(id).ok())
                else {
                    return;
                };
                // Anyone may publish on the channel; only ids can name records.
                if validate_id(id).is_err() {
                    return;
                }
                self.dirty
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(id.to_string());
            }
            PushKind::Disconnection => self.disconnected.store(true, Ordering::SeqCst),
            _ => return,
        }
        self.wake.notify_one();
    }
}

/// Connects, names the connection and subscribes to the store's channel. Returns once the
/// server confirmed the subscription.
async fn subscribe(store: &RedisStorage, signals: &Arc<Signals>) -> Result<MultiplexedConnection> {
    let generation = signals.generation.fetch_add(1, Ordering::SeqCst) + 1;
    // Any loss reported so far was of an older connection.
    signals.disconnected.store(false, Ordering::SeqCst);
    let weak = Arc::downgrade(signals);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_push_sender(move |push: PushInfo| match weak.upgrade() {
            Some(signals) => {
                signals.on_push(generation, push);
                Ok(())
            }
            None => Err(()),
        });
    let inner = &store.inner;
    let mut conn = inner
        .watch_clients
        .connect(&config)
        .await
        .map_err(command_error("connect for watching", &inner.keys.channel))?;
    // The name only helps people find the connection; a server that refuses it (an ACL, a
    // proxy) still gets watched.
    if let Err(error) = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(&inner.watch_name)
        .query_async::<()>(&mut conn)
        .await
    {
        tracing::debug!(name = %inner.watch_name, %error, "could not name the watch connection");
    }
    conn.subscribe(&inner.keys.channel)
        .await
        .map_err(command_error("SUBSCRIBE", &inner.keys.channel))?;
    Ok(conn)
}

/// Starts the watch task of `store`, seeded with a scan taken after the subscription is
/// confirmed.
pub(super) async fn start(store: RedisStorage) -> Result<HubHandle> {
    let signals = Arc::new(Signals::default());
    let conn = subscribe(&store, &signals).await?;
    let (records, errors) = store.scan().await?;
    for error in errors {
        tracing::warn!(%error, "unreadable record at the start of a watch");
    }
    let mut expiries = Expiries::default();
    for record in &records {
        expiries.track(&store, record);
    }
    let hub = Arc::new(WatchHub::new(records));
    let watcher = Watcher {
        store,
        hub: Arc::downgrade(&hub),
        signals,
        conn: Some(conn),
        expiries,
    };
    let task = tokio::spawn(watcher.run());
    Ok(HubHandle {
        hub,
        _source: Box::new(AbortOnDrop(task)),
    })
}

/// When the records the hub holds expire by the store's clock.
#[derive(Debug, Default)]
struct Expiries {
    by_id: HashMap<String, Timestamp>,
    queue: BTreeSet<(Timestamp, String)>,
}

impl Expiries {
    fn forget(&mut self, id: &str) {
        if let Some(at) = self.by_id.remove(id) {
            self.queue.remove(&(at, id.to_string()));
        }
    }

    fn track(&mut self, store: &RedisStorage, record: &Record) {
        self.forget(&record.id);
        if let Some(at) = store
            .inner
            .ttl
            .expires_at(&record.status, record.updated_at)
        {
            self.by_id.insert(record.id.clone(), at);
            self.queue.insert((at, record.id.clone()));
        }
    }

    fn clear(&mut self) {
        self.by_id.clear();
        self.queue.clear();
    }

    /// The ids whose expiry time has come.
    fn due(&self, now: Timestamp) -> impl Iterator<Item = &String> {
        self.queue
            .iter()
            .take_while(move |(at, _)| *at <= now)
            .map(|(_, id)| id)
    }

    /// How long to sleep before looking again; `None`: nothing will expire.
    fn next_look(&self, now: Timestamp) -> Option<Duration> {
        let (at, _) = self.queue.first()?;
        let wait = Duration::from_millis(at.as_millis().saturating_sub(now.as_millis()));
        Some(wait.min(EXPIRY_POLL))
    }
}

struct Watcher {
    store: RedisStorage,
    hub: Weak<WatchHub>,
    signals: Arc<Signals>,
    /// Owned by the task, so dropping the hub handle (which aborts the task) closes it.
    conn: Option<MultiplexedConnection>,
    expiries: Expiries,
}

impl Watcher {
    async fn run(mut self) {
        loop {
            let now = self.store.inner.clock.now();
            match self.expiries.next_look(now) {
                Some(wait) if wait.is_zero() => {}
                Some(wait) => {
                    let _ = tokio::time::timeout(wait, self.signals.wake.notified()).await;
                }
                None => self.signals.wake.notified().await,
            }
            let Some(hub) = self.hub.upgrade() else {
                return;
            };
            if self.signals.disconnected.swap(false, Ordering::SeqCst) {
                hub.report(Error::backend(STORE, ConnectionLost));
                drop(hub);
                if !self.reconnect().await {
                    return;
                }
                continue;
            }
            let mut ids = self.signals.take_dirty();
            let now = self.store.inner.clock.now();
            ids.extend(self.expiries.due(now).cloned());
            if !ids.is_empty() {
                let ids: Vec<String> = ids.into_iter().collect();
                if let Err(error) = self.reread(&hub, &ids).await {
                    hub.report(error);
                    drop(hub);
                    // Continuity is lost for these ids; start again from a full scan.
                    if !self.reconnect().await {
                        return;
                    }
                }
            }
        }
    }

    async fn reread(&mut self, hub: &WatchHub, ids: &[String]) -> Result<()> {
        for (id, current) in self.store.read_many(ids).await? {
            match current {
                Ok(current) => {
                    match &current {
                        Some(record) => self.expiries.track(&self.store, record),
                        None => self.expiries.forget(&id),
                    }
                    hub.apply(&id, current);
                }
                Err(error) => {
                    // Unreadable: not published, and not looked at again until written.
                    self.expiries.forget(&id);
                    hub.report(error);
                }
            }
        }
        Ok(())
    }

    /// Connects and subscribes again, then rescans and publishes a resync, retrying with a
    /// bounded backoff. Returns false when the hub is gone meanwhile.
    async fn reconnect(&mut self) -> bool {
        self.conn = None;
        let mut backoff = MIN_BACKOFF;
        let mut reported = false;
        loop {
            let Some(hub) = self.hub.upgrade() else {
                return false;
            };
            let attempt = async {
                let conn = subscribe(&self.store, &self.signals).await?;
                // Everything heard before the scan is covered by it.
                self.signals.take_dirty();
                let scan = self.store.scan().await?;
                Ok::<_, Error>((conn, scan))
            }
            .await;
            match attempt {
                Ok((conn, (records, errors))) => {
                    self.conn = Some(conn);
                    for error in errors {
                        hub.report(error);
                    }
                    self.expiries.clear();
                    for record in &records {
                        self.expiries.track(&self.store, record);
                    }
                    hub.replace_all(records);
                    return true;
                }
                Err(error) => {
                    tracing::debug!(%error, "watch reconnect failed");
                    if !reported {
                        hub.report(error);
                        reported = true;
                    }
                }
            }
            drop(hub);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
