//! Watching a PostgreSQL store: `LISTEN` on a dedicated connection; notifications are hints
//! naming ids, and the shared reconciler (`crate::watch`) re-reads those rows.
//!
//! The connection's messages are polled by a task of their own, which records the ids it
//! hears of and wakes the reconciler. When the connection is lost, the reconciler reports it,
//! reconnects with bounded backoff, listens again and resyncs from a full scan.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_postgres::AsyncMessage;

use super::{PostgresStorage, backend_error};
use crate::error::{Error, Result};
use crate::id::validate_id;
use crate::record::Record;
use crate::task::AbortOnDrop;
use crate::watch::{Backoff, ChangeSource, Changes, Duty, HubHandle, Reads, Scan, Settings};

/// The first pause before reconnecting is 100 ms, doubled after every failure up to 5 s.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// Idle time after which the listening connection is probed, so a silently dead network is
/// noticed instead of waiting forever for notifications.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

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

/// What the listening connection's messages say. `<id>:<version>`; anything else on the
/// channel is not ours and is ignored.
fn on_payload(changes: &Changes, payload: &str) {
    let id = payload.rsplit_once(':').map_or(payload, |(id, _)| id);
    if validate_id(id).is_ok() {
        changes.changed(id);
    }
}

impl Listener {
    async fn connect(store: &PostgresStorage, changes: &Arc<Changes>) -> Result<Listener> {
        let mut config = store.inner.listener_config.clone();
        config.keepalives_idle(KEEPALIVE_IDLE);
        let (client, mut messages) = store
            .inner
            .connector
            .connect(&config)
            .await
            .map_err(backend_error)?;
        let driver_changes: Weak<Changes> = Arc::downgrade(changes);
        let driver = tokio::spawn(async move {
            let end = loop {
                let Some(changes) = driver_changes.upgrade() else {
                    return;
                };
                match messages.next().await {
                    Some(Ok(AsyncMessage::Notification(notification))) => {
                        on_payload(&changes, notification.payload());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => break backend_error(error),
                    None => break backend_error("the listening connection was closed"),
                }
            };
            if let Some(changes) = driver_changes.upgrade() {
                changes.lost(Some(end));
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
    let changes = Arc::new(Changes::default());
    let settings = Settings {
        clock: store.inner.clock.clone(),
        backoff: BACKOFF,
        scan_after_loss: false,
    };
    let renew_every = store.inner.watch_lease / 3;
    let source = PostgresSource {
        store,
        changes: changes.clone(),
        listener: None,
        renew_every,
        renew_at: Instant::now() + renew_every,
    };
    crate::watch::start(source, changes, settings).await
}

/// The PostgreSQL store's side of the reconciler: `LISTEN` as the feed, rows as the records,
/// and the renewal of the listener's lease as its timed duty.
struct PostgresSource {
    store: PostgresStorage,
    changes: Arc<Changes>,
    /// Dropped with the reconciler's task, which closes the connection and stops its driver.
    listener: Option<Listener>,
    /// How often the listener's lease is renewed, and when next.
    renew_every: Duration,
    renew_at: Instant,
}

#[async_trait]
impl ChangeSource for PostgresSource {
    async fn connect(&mut self) -> Result<bool> {
        self.listener = None;
        self.listener = Some(Listener::connect(&self.store, &self.changes).await?);
        self.renew_at = Instant::now() + self.renew_every;
        Ok(true)
    }

    fn disconnect(&mut self) {
        self.listener = None;
    }

    async fn read(&mut self, ids: Vec<String>) -> Result<Reads> {
        let (records, unreadable) = self.store.fetch_many(&ids).await?;
        let mut found: HashMap<String, Result<Option<Record>>> =
            ids.into_iter().map(|id| (id, Ok(None))).collect();
        for error in unreadable {
            match &error {
                Error::Corrupt { id, .. } if found.contains_key(id) => {
                    let id = id.clone();
                    found.insert(id, Err(error));
                }
                // A row whose id cannot be read names none of ours: told, the rest go on.
                _ => self.changes.report(error),
            }
        }
        for record in records {
            found.insert(record.id.clone(), Ok(Some(record)));
        }
        Ok(found.into_iter().collect())
    }

    async fn scan(&mut self) -> Result<Scan> {
        self.store.scan().await
    }

    fn next_duty(&self) -> Option<Instant> {
        self.listener.as_ref().map(|_| self.renew_at)
    }

    async fn duty(&mut self) -> Result<Duty> {
        let Some(listener) = &self.listener else {
            return Ok(Duty::Nothing);
        };
        let (_, was_running) = renew(&listener._client, &self.store).await?;
        self.renew_at = Instant::now() + self.renew_every;
        if was_running {
            return Ok(Duty::Nothing);
        }
        // Writers saw no registration for a while and may not have notified: wait out those
        // still in flight, then rescan.
        listener
            ._client
            .batch_execute(&self.store.inner.statements.wait_for_writers)
            .await
            .map_err(backend_error)?;
        tracing::debug!("the watch lease had run out; resyncing");
        Ok(Duty::Resync)
    }
}
