//! Watching a Redis store: every write script publishes `<id> <version>` on the store's
//! channel; the shared reconciler (`crate::watch`) re-reads the ids heard of.
//!
//! The subscription is confirmed before the first scan, so nothing written after the scan is
//! missed. A lost connection is reported, then the reconciler subscribes again with a bounded
//! backoff and rescans, publishing a resync. Records Redis expires by itself send no message;
//! the reconciler re-reads them when their expiry time (by the store's clock) comes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind};

use super::{CONNECTION_TIMEOUT, RESPONSE_TIMEOUT, RedisStorage, STORE, command_error};
use crate::error::{Error, Result};
use crate::id::validate_id;
use crate::watch::{Backoff, ChangeSource, Changes, HubHandle, Reads, Scan, Settings};

/// First pause before reconnecting; doubled per failed attempt up to 5 s.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));

/// The connection lost its server.
#[derive(Debug, thiserror::Error)]
#[error("the watch connection to redis was lost; reconnecting, then resyncing")]
struct ConnectionLost;

/// What the connection's push callback reports to. The callback runs on the connection's
/// reader and must not block: it records and wakes.
#[derive(Debug)]
struct Signals {
    changes: Arc<Changes>,
    /// The connection of this generation is the current one; pushes of older ones are stale.
    generation: AtomicU64,
}

impl Signals {
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
                if validate_id(id).is_ok() {
                    self.changes.changed(id);
                }
            }
            PushKind::Disconnection => self
                .changes
                .lost(Some(Error::backend(STORE, ConnectionLost))),
            _ => {}
        }
    }
}

/// Connects, names the connection and subscribes to the store's channel. Returns once the
/// server confirmed the subscription.
async fn subscribe(store: &RedisStorage, signals: &Arc<Signals>) -> Result<MultiplexedConnection> {
    let generation = signals.generation.fetch_add(1, Ordering::SeqCst) + 1;
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

/// Starts the watch of `store`, seeded with a scan taken after the subscription is confirmed.
pub(super) async fn start(store: RedisStorage) -> Result<HubHandle> {
    let changes = Arc::new(Changes::default());
    let settings = Settings {
        clock: store.inner.clock.clone(),
        backoff: BACKOFF,
        scan_after_loss: false,
    };
    let source = RedisSource {
        store,
        signals: Arc::new(Signals {
            changes: changes.clone(),
            generation: AtomicU64::new(0),
        }),
        conn: None,
    };
    crate::watch::start(source, changes, settings).await
}

/// The Redis store's side of the reconciler: the channel as the feed, `MGET` as the reads.
struct RedisSource {
    store: RedisStorage,
    signals: Arc<Signals>,
    /// Owned by the reconciler's task, so dropping the hub handle (which aborts the task)
    /// closes it.
    conn: Option<MultiplexedConnection>,
}

#[async_trait]
impl ChangeSource for RedisSource {
    async fn connect(&mut self) -> Result<bool> {
        self.conn = None;
        self.conn = Some(subscribe(&self.store, &self.signals).await?);
        Ok(true)
    }

    fn disconnect(&mut self) {
        self.conn = None;
    }

    async fn read(&mut self, ids: Vec<String>) -> Result<Reads> {
        self.store.read_many(&ids).await
    }

    async fn scan(&mut self) -> Result<Scan> {
        self.store.scan().await
    }
}
