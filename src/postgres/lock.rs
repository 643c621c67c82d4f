//! The advisory lock behind [`SyncStorage::try_lock`](crate::SyncStorage::try_lock) and the
//! sweep: session-level, on a pooled connection the lock keeps; the server releases it if the
//! holder dies.

use deadpool_postgres::Object;

use super::sql::lock_key;
use super::{PostgresStorage, backend_error};
use crate::error::Result;

impl PostgresStorage {
    /// Takes the session-level advisory lock `name` on a connection of its own.
    pub(super) async fn acquire(&self, name: &str) -> Result<Option<AdvisoryLock>> {
        let client = self.client().await?;
        let key = lock_key(&["syncstatus", &self.inner.schema, &self.inner.table, name]);
        let statement = client
            .prepare_cached("SELECT pg_try_advisory_lock($1)")
            .await
            .map_err(backend_error)?;
        let held: bool = client
            .query_one(&statement, &[&key])
            .await
            .map_err(backend_error)?
            .try_get(0)
            .map_err(backend_error)?;
        Ok(held.then(|| AdvisoryLock {
            client: Some(client),
            key,
        }))
    }
}

/// A session-level advisory lock and the connection that holds it.
pub(super) struct AdvisoryLock {
    client: Option<Object>,
    key: i64,
}

impl AdvisoryLock {
    pub(super) fn client(&self) -> Option<&Object> {
        self.client.as_ref()
    }

    /// Unlocks and returns the connection to the pool.
    pub(super) async fn release(mut self) {
        if let Some(client) = self.client.take() {
            unlock(client, self.key).await;
        }
    }
}

/// Unlocks, then returns the connection to the pool. If the unlock fails or is cancelled,
/// the connection is closed instead, which makes the server release the lock.
async fn unlock(client: Object, key: i64) {
    struct Unlocking {
        client: Option<Object>,
        unlocked: bool,
    }
    impl Drop for Unlocking {
        fn drop(&mut self) {
            if !self.unlocked
                && let Some(client) = self.client.take()
            {
                // Taken out of the pool and dropped: the connection closes.
                drop(Object::take(client));
            }
        }
    }
    let mut unlocking = Unlocking {
        client: Some(client),
        unlocked: false,
    };
    if let Some(client) = &unlocking.client {
        match client
            .query_one("SELECT pg_advisory_unlock($1)", &[&key])
            .await
        {
            Ok(row) => unlocking.unlocked = row.try_get::<_, bool>(0).unwrap_or(false),
            Err(error) => tracing::debug!(%error, "advisory unlock failed; closing the connection"),
        }
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            // The unlock needs a round trip, which a destructor cannot wait for: it runs on
            // a short task of its own that ends with the unlock.
            Ok(runtime) => {
                runtime.spawn(unlock(client, self.key));
            }
            // No runtime to unlock on: close the connection; the server releases the lock.
            Err(_) => drop(Object::take(client)),
        }
    }
}
