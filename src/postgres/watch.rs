//! Watching a PostgreSQL store: `LISTEN` on a dedicated connection; notifications are hints
//! naming ids, and a reconciler re-reads those rows and publishes them to the store's hub.
//!
//! The connection's messages are polled by a task of their own, which records the ids it
//! hears of and wakes the reconciler. When the connection is lost, the reconciler reports it,
//! reconnects with bounded backoff, listens again and resyncs from a full scan.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::AsyncMessage;

use super::{PostgresStorage, backend_error};
use crate::error::{Error, Result};
use crate::id::validate_id;
use crate::task::AbortOnDrop;
use crate::watch::{EXPIRY_LOOK, HubHandle, WatchHub};

/// The first pause before reconnecting; doubled after every failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Idle time after which the listening connection is probed, so a silently dead network is
/// noticed instead of waiting forever for notifications.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Signals {
    dirty: Mutex<HashSet<String>>,
    lost: Mutex<Option<Error>>,
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

    fn take_lost(&self) -> Option<Error> {
        self.lost
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    fn on_payload(&self, payload: &str) {
        // `<id>:<version>`; anything else on the channel is not ours and is ignored.
        let id = payload.rsplit_once(':').map_or(payload, |(id, _)| id);
        if validate_id(id).is_ok() {
            self.dirty
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(id.to_string());
            self.wake.notify_one();
        }
    }

    fn on_lost(&self, error: Error) {
        *self
            .lost
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error);
        self.wake.notify_one();
    }
}

/// A listening connection: the client (kept so the connection stays open), the task
/// polling its messages, and its registration (which makes writers notify).
struct Listener {
    _client: tokio_postgres::Client,
    _driver: AbortOnDrop,
    registration: Option<Registration>,
}

struct Registration {
    store: PostgresStorage,
    pid: i32,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let Some(Registration { store, pid }) = self.registration.take() else {
            return;
        };
        // A destructor cannot wait for the round trip: a short task deregisters. If it never
        // runs, the next watcher start or sweep purges the row of the ended session.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let outcome = match store.client().await {
                    Ok(client) => client
                        .execute(&store.inner.statements.deregister_listener, &[&pid])
                        .await
                        .map(|_| ())
                        .map_err(backend_error),
                    Err(error) => Err(error),
                };
                if let Err(error) = outcome {
                    tracing::debug!(%error, pid, "could not deregister a watcher");
                }
            });
        }
    }
}

impl Listener {
    async fn connect(store: &PostgresStorage, signals: &Arc<Signals>) -> Result<Listener> {
        let mut config = store.inner.listener_config.clone();
        config.keepalives_idle(KEEPALIVE_IDLE);
        let (client, mut messages) = store
            .inner
            .connector
            .connect(&config)
            .await
            .map_err(backend_error)?;
        let driver_signals = Arc::downgrade(signals);
        let driver = tokio::spawn(async move {
            let end = loop {
                let Some(signals) = driver_signals.upgrade() else {
                    return;
                };
                match messages.next().await {
                    Some(Ok(AsyncMessage::Notification(notification))) => {
                        signals.on_payload(notification.payload());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => break backend_error(error),
                    None => break backend_error("the listening connection was closed"),
                }
            };
            if let Some(signals) = driver_signals.upgrade() {
                signals.on_lost(end);
            }
        });
        let mut listener = Listener {
            _client: client,
            _driver: AbortOnDrop(driver),
            registration: None,
        };
        let client = &listener._client;
        let statements = &store.inner.statements;
        client
            .batch_execute(&format!("LISTEN \"{}\"", store.inner.channel))
            .await
            .map_err(backend_error)?;
        client
            .execute(&statements.purge_listeners, &[])
            .await
            .map_err(backend_error)?;
        let pid = renew(client, store).await?.0;
        listener.registration = Some(Registration {
            store: store.clone(),
            pid,
        });
        // Writers that checked for watchers before the registration committed did not
        // notify; wait for them to commit so the scan that follows sees their writes.
        listener
            ._client
            .batch_execute(&statements.wait_for_writers)
            .await
            .map_err(backend_error)?;
        Ok(listener)
    }
}

/// Registers the listening connection, or renews its lease. Returns its backend id and
/// whether the lease it renewed was still running.
async fn renew(client: &tokio_postgres::Client, store: &PostgresStorage) -> Result<(i32, bool)> {
    let since = super::millis(store.inner.clock.now());
    let lease = super::duration_millis(store.inner.watch_lease);
    let row = client
        .query_one(&store.inner.statements.register_listener, &[&since, &lease])
        .await
        .map_err(backend_error)?;
    Ok((
        row.try_get(0).map_err(backend_error)?,
        row.try_get(1).map_err(backend_error)?,
    ))
}

/// Starts listening, then seeds the hub with a full scan taken after `LISTEN` is active, so
/// no write falls between the two.
pub(super) async fn start(store: PostgresStorage) -> Result<HubHandle> {
    let signals = Arc::new(Signals::default());
    let listener = Listener::connect(&store, &signals).await?;
    let (records, unreadable) = store.scan().await?;
    // Nobody is subscribed yet to be told; the rows stay out of the hub until they are fixed.
    for error in unreadable {
        tracing::warn!(%error, "unreadable row left out of the watch");
    }
    let hub = Arc::new(WatchHub::new(records));
    let renew_every = store.inner.watch_lease / 3;
    let reconciler = Reconciler {
        store,
        hub: Arc::downgrade(&hub),
        signals,
        listener: Some(listener),
        resync: false,
        renew_every,
        renew_at: Instant::now() + renew_every,
    };
    let task = tokio::spawn(reconciler.run());
    Ok(HubHandle {
        hub,
        _source: Box::new(AbortOnDrop(task)),
    })
}

struct Reconciler {
    store: PostgresStorage,
    hub: Weak<WatchHub>,
    signals: Arc<Signals>,
    /// Dropped with the task, which closes the connection and stops its driver.
    listener: Option<Listener>,
    /// Continuity was lost: publish a full scan as a resync before anything else.
    resync: bool,
    /// How often the listener's lease is renewed, and when next.
    renew_every: Duration,
    renew_at: Instant,
}

impl Reconciler {
    async fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if self.listener.is_some() && !self.resync {
                // Expiry sends no notification: while the hub holds records, look for
                // expired ones at least every EXPIRY_LOOK. The lease is renewed in time
                // either way.
                let holds_records = self.hub.upgrade().is_some_and(|hub| !hub.is_empty());
                let mut until = self.renew_at;
                if holds_records {
                    until = until.min(Instant::now() + EXPIRY_LOOK);
                }
                let _ = tokio::time::timeout_at(until, self.signals.wake.notified()).await;
            }
            let Some(hub) = self.hub.upgrade() else {
                return;
            };
            match self.step(&hub).await {
                Ok(()) => backoff = FIRST_BACKOFF,
                Err(error) => {
                    hub.report(error);
                    drop(hub);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn step(&mut self, hub: &WatchHub) -> Result<()> {
        if let Some(cause) = self.signals.take_lost() {
            self.listener = None;
            self.resync = true;
            return Err(cause);
        }
        if self.listener.is_none() {
            self.listener = Some(Listener::connect(&self.store, &self.signals).await?);
            self.renew_at = Instant::now() + self.renew_every;
            self.resync = true;
        }
        if let Some(listener) = &self.listener
            && Instant::now() >= self.renew_at
        {
            let (_, was_running) = renew(&listener._client, &self.store).await?;
            self.renew_at = Instant::now() + self.renew_every;
            if !was_running {
                // Writers saw no registration for a while and may not have notified: wait
                // out those still in flight, then rescan.
                listener
                    ._client
                    .batch_execute(&self.store.inner.statements.wait_for_writers)
                    .await
                    .map_err(backend_error)?;
                tracing::debug!("the watch lease had run out; resyncing");
                self.resync = true;
            }
        }
        if self.resync {
            // Everything dirty is covered by the scan, which starts after LISTEN is active.
            self.signals.take_dirty();
            let (records, unreadable) = self.store.scan().await?;
            for error in unreadable {
                hub.report(error);
            }
            hub.replace_all(records);
            self.resync = false;
            return Ok(());
        }
        let mut dirty = self.signals.take_dirty();
        dirty.extend(hub.expired_ids(&self.store.inner.ttl, self.store.inner.clock.now()));
        let dirty: Vec<String> = dirty.into_iter().collect();
        if dirty.is_empty() {
            return Ok(());
        }
        let (records, unreadable) = match self.store.fetch_many(&dirty).await {
            Ok(found) => found,
            Err(error) => {
                // Those ids' changes are not published: only a resync can make up for it.
                self.resync = true;
                return Err(error);
            }
        };
        let mut absent: HashSet<&str> = dirty.iter().map(String::as_str).collect();
        for error in unreadable {
            if let Error::Corrupt { id, .. } = &error {
                absent.remove(id.as_str());
            }
            hub.report(error);
        }
        for record in records {
            absent.remove(record.id.as_str());
            let id = record.id.clone();
            hub.apply(&id, Some(record));
        }
        for id in absent {
            hub.apply(id, None);
        }
        Ok(())
    }
}
