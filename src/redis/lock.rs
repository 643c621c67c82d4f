//! Store-wide locks: `SET NX PX` with a token unique to the holder.
//!
//! While held, a task renews the lease, so `lease` bounds only how long a holder that died keeps
//! the lock. Dropping the guard stops the renewal and releases the lock at once (a script
//! deletes the key only if it still holds this holder's token).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::client::Conn;

use super::{command_error, scripts};
use crate::error::Result;
use crate::storage::LockGuard;
use crate::task::AbortOnDrop;

/// The shortest renewal period, so that tiny leases do not spin.
const MIN_RENEW_PERIOD: Duration = Duration::from_millis(10);

/// [`try_lock`] for the trait: the guard releases when dropped.
pub(super) async fn try_lock_guard(
    conn: Conn,
    key: String,
    lease: Duration,
) -> Result<Option<LockGuard>> {
    Ok(try_lock(conn, key, lease).await?.map(LockGuard::new))
}

/// Takes the lock at `key` unless someone holds it.
pub(super) async fn try_lock(
    mut conn: Conn,
    key: String,
    lease: Duration,
) -> Result<Option<HeldLock>> {
    let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
    let token = unique_token();
    let taken: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(lease_ms)
        .query_async(&mut conn)
        .await
        .map_err(command_error("SET NX", &key))?;
    if taken.is_none() {
        return Ok(None);
    }
    let renewal = tokio::spawn(renew(
        conn.clone(),
        key.clone(),
        token.clone(),
        lease_ms,
        (lease / 3).max(MIN_RENEW_PERIOD),
    ));
    Ok(Some(HeldLock {
        release: Some((conn, key, token)),
        runtime: tokio::runtime::Handle::current(),
        _renewal: AbortOnDrop(renewal),
    }))
}

async fn renew(mut conn: Conn, key: String, token: String, lease_ms: u64, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let renewed: redis::RedisResult<i64> = scripts::RENEW
            .key(&key)
            .arg(&token)
            .arg(lease_ms)
            .invoke_async(&mut conn)
            .await;
        match renewed {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!(key = %key, "lock lost: its lease ran out before it was renewed");
                return;
            }
            // The lease may still be running; the next period tries again.
            Err(error) => tracing::warn!(key = %key, %error, "could not renew a lock's lease"),
        }
    }
}

/// A lock this process holds. Dropping it releases the lock in the background;
/// [`HeldLock::release`] releases it before returning.
pub(super) struct HeldLock {
    release: Option<(Conn, String, String)>,
    runtime: tokio::runtime::Handle,
    _renewal: AbortOnDrop,
}

impl HeldLock {
    /// Releases the lock now, so that whoever tries next finds it free.
    pub(super) async fn release(mut self) {
        if let Some((conn, key, token)) = self.release.take() {
            unlock(conn, key, token).await;
        }
    }
}

async fn unlock(mut conn: Conn, key: String, token: String) {
    let released: redis::RedisResult<i64> = scripts::UNLOCK
        .key(&key)
        .arg(&token)
        .invoke_async(&mut conn)
        .await;
    if let Err(error) = released {
        tracing::warn!(key = %key, %error, "could not release a lock; its lease will");
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let Some((conn, key, token)) = self.release.take() else {
            return;
        };
        // Drop cannot wait; the release runs at once on the runtime that took the lock.
        // Should that runtime be gone, the lease frees the lock.
        self.runtime.spawn(unlock(conn, key, token));
    }
}

/// A token no other holder, in this or another process or machine, will use.
fn unique_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    // RandomState is seeded from the operating system's randomness.
    let random = RandomState::new().hash_one((count, nanos, std::process::id()));
    format!(
        "{:x}-{:x}-{count:x}-{random:016x}",
        std::process::id(),
        nanos
    )
}
