//! Work done once per key, across tasks, processes and (on server backends) machines.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::id::validate_id;
use crate::record::{Record, Timestamp};
use crate::storage::{DynSyncStorage, PutMode, WatchOptions, WatchSelector};

/// The state of a key whose work is being done.
const CLAIMED: &str = "idempotency-claimed";
/// The state of a key whose result is stored.
const DONE: &str = "idempotency-done";

/// What a second caller does while the work of its key is in progress elsewhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InProgressPolicy {
    /// Wait for the first caller's result (or for its lease to run out, then take over).
    #[default]
    Wait,
    /// Return [`RunError::Store`] with [`Error::InProgress`] at once.
    Reject,
}

/// Why [`Idempotency::run`] returned no result.
#[derive(Debug)]
pub enum RunError<E> {
    /// The work ran here and failed. Nothing was stored, so a later call runs it again.
    Work(E),
    /// The store failed, or (with [`InProgressPolicy::Reject`]) the key is in progress.
    Store(Error),
}

impl<E: fmt::Display> fmt::Display for RunError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Work(error) => write!(f, "the work failed: {error}"),
            RunError::Store(error) => fmt::Display::fmt(error, f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RunError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RunError::Work(error) => Some(error),
            RunError::Store(error) => Some(error),
        }
    }
}

impl<E> From<Error> for RunError<E> {
    fn from(error: Error) -> Self {
        RunError::Store(error)
    }
}

/// Runs work once per idempotency key; the results live in a store, under ids
/// `<prefix><key>` (by default `idem-<key>`; keys follow the id rules).
///
/// A first call claims the key with a lease and runs the work; concurrent calls wait for its
/// result (or are refused, see [`InProgressPolicy`]); later calls within the result's TTL get
/// the stored result without running anything. A failed run stores nothing, so it can be
/// retried. A claim whose holder died (its lease ran out) is taken over by the next caller.
///
/// The stored result also obeys the store's own TTL policy for the states
/// `idempotency-claimed` and `idempotency-done`, so `run` refuses (with [`Error::Config`],
/// before running anything) a `ttl` longer than the store keeps `idempotency-done` records, or
/// a lease longer than it keeps `idempotency-claimed` ones: give those states TTLs at least as
/// long as the longest `ttl` you pass and the lease.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> syncstatus::Result<()> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use syncstatus::{Idempotency, MemoryStorage};
///
/// let idempotency = Idempotency::new(Arc::new(MemoryStorage::new()));
/// let first: u32 = idempotency
///     .run("charge-42", Duration::from_secs(60), async { Ok::<_, std::io::Error>(7) })
///     .await
///     .map_err(|e| syncstatus::Error::Config(e.to_string()))?;
/// let again: u32 = idempotency
///     .run("charge-42", Duration::from_secs(60), async { Ok::<_, std::io::Error>(8) })
///     .await
///     .map_err(|e| syncstatus::Error::Config(e.to_string()))?;
/// assert_eq!((first, again), (7, 7));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Idempotency {
    store: DynSyncStorage,
    prefix: String,
    lease: Duration,
    in_progress: InProgressPolicy,
}

/// Distinguishes the claims of this process's callers from each other and from other
/// processes'.
fn claim_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        Timestamp::now().as_millis(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

enum Seen<T> {
    Done(T),
    /// Claimed by someone else until this time.
    Claimed(Timestamp),
    /// Free to claim; `Some(version)` when a stale claim or an old result must be replaced.
    Free(Option<u64>),
}

impl Idempotency {
    /// Idempotency over `store`, with a 30 s lease and waiting for work in progress.
    pub fn new(store: DynSyncStorage) -> Self {
        Idempotency {
            store,
            prefix: "idem-".into(),
            lease: Duration::from_secs(30),
            in_progress: InProgressPolicy::Wait,
        }
    }

    /// The prefix of the ids results are stored under (it must itself be a valid id start).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a claim lasts without renewal. The holder renews it while the work runs, so
    /// this only bounds how long a crashed holder blocks the key.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// What concurrent callers do while the work is in progress.
    pub fn with_in_progress(mut self, policy: InProgressPolicy) -> Self {
        self.in_progress = policy;
        self
    }

    fn id(&self, key: &str) -> Result<String> {
        let id = format!("{}{key}", self.prefix);
        validate_id(&id).map_err(|_| Error::InvalidId {
            id: key.escape_debug().to_string(),
            reason: "idempotency keys follow the id rules (ASCII letters, digits, '-', '_', '.')",
        })?;
        Ok(id)
    }

    /// Refuses a `ttl` the store would not keep: a result that expired early would run the
    /// work again, and a claim that expired mid-work would let a second caller run it too.
    fn check_store_keeps(&self, key: &str, ttl: Duration) -> Result<()> {
        let needs = [(DONE, ttl, "the result"), (CLAIMED, self.lease, "a claim")];
        for (state, wanted, what) in needs {
            let kept = self
                .store
                .ttl_for(&json!({ "state": state }))
                .map_err(|error| {
                    Error::Config(format!(
                        "idempotency key `{key}`: cannot tell how long the store keeps {what} \
                         ({error}), so running the work once cannot be promised"
                    ))
                })?;
            if let Some(kept) = kept
                && kept < wanted
            {
                return Err(Error::Config(format!(
                    "idempotency key `{key}`: {what} must be kept {}, but the {} store keeps \
                     `{state}` records only {}; give that state a TTL of at least {} \
                     (TtlPolicy::with_state) or ask for less",
                    humantime::format_duration(wanted),
                    self.store.backend_name(),
                    humantime::format_duration(kept),
                    humantime::format_duration(wanted),
                )));
            }
        }
        Ok(())
    }

    fn classify<T: DeserializeOwned>(
        &self,
        record: Option<&Record>,
        now: Timestamp,
    ) -> Result<Seen<T>> {
        let Some(record) = record else {
            return Ok(Seen::Free(None));
        };
        let until = record
            .status
            .get("until")
            .and_then(Value::as_str)
            .and_then(Timestamp::parse)
            .unwrap_or_default();
        match record.state() {
            Some(DONE) if until > now => {
                let result = record.status.get("result").cloned().unwrap_or(Value::Null);
                serde_json::from_value(result)
                    .map(Seen::Done)
                    .map_err(|source| Error::Serde {
                        id: record.id.clone(),
                        source,
                    })
            }
            Some(CLAIMED) if until > now => Ok(Seen::Claimed(until)),
            _ => Ok(Seen::Free(Some(record.version))),
        }
    }

    /// Runs `work` once for `key` and keeps its result for `ttl`; see the type's docs.
    pub async fn run<T, E, F>(&self, key: &str, ttl: Duration, work: F) -> Result<T, RunError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Result<T, E>>,
    {
        let id = self.id(key)?;
        self.check_store_keeps(key, ttl)?;
        let token = claim_token();
        let clock = self.store.clock();
        let claimed = loop {
            let now = clock.now();
            let current = self.store.get(&id).await?;
            match self.classify::<T>(current.as_ref(), now)? {
                Seen::Done(result) => return Ok(result),
                Seen::Claimed(until) => match self.in_progress {
                    InProgressPolicy::Reject => {
                        return Err(Error::InProgress {
                            key: key.to_string(),
                        }
                        .into());
                    }
                    InProgressPolicy::Wait => {
                        self.wait_for_change(&id, current.as_ref(), until).await?
                    }
                },
                Seen::Free(version) => {
                    let claim = json!({
                        "state": CLAIMED,
                        "owner": token,
                        "until": now.saturating_add(self.lease),
                    });
                    let mode = version.map_or(PutMode::Create, PutMode::Update);
                    match self.store.put(&id, claim, mode).await {
                        Ok(record) => break record,
                        Err(error) if error.is_conflict() => continue,
                        Err(error) => return Err(error.into()),
                    }
                }
            }
        };
        let outcome = self.run_with_renewal(&id, &token, claimed, work).await?;
        match outcome {
            Ok(result) => {
                let value = serde_json::to_value(&result).map_err(|source| Error::Serde {
                    id: id.clone(),
                    source,
                })?;
                let done = json!({
                    "state": DONE,
                    "owner": token,
                    "until": clock.now().saturating_add(ttl),
                    "result": value,
                });
                self.store.put(&id, done, PutMode::Overwrite).await?;
                Ok(result)
            }
            Err(error) => {
                // Release the claim so a retry can run; only if it is still ours.
                if let Some(record) = self.store.get(&id).await?
                    && record.status.get("owner").and_then(Value::as_str) == Some(token.as_str())
                {
                    let released = json!({"state": "idempotency-released"});
                    match self
                        .store
                        .put(&id, released, PutMode::Update(record.version))
                        .await
                    {
                        Ok(_) => {}
                        Err(conflict) if conflict.is_conflict() => {}
                        Err(other) => return Err(other.into()),
                    }
                }
                Err(RunError::Work(error))
            }
        }
    }

    /// Drives `work`, renewing the claim's lease every third of it.
    async fn run_with_renewal<T, E, F>(
        &self,
        id: &str,
        token: &str,
        mut claim: Record,
        work: F,
    ) -> Result<Result<T, E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let mut work = std::pin::pin!(work);
        let period = (self.lease / 3).max(Duration::from_millis(10));
        loop {
            tokio::select! {
                outcome = &mut work => return Ok(outcome),
                _ = tokio::time::sleep(period) => {
                    let renewed = json!({
                        "state": CLAIMED,
                        "owner": token,
                        "until": self.store.clock().now().saturating_add(self.lease),
                    });
                    match self.store.put(id, renewed, PutMode::Update(claim.version)).await {
                        Ok(record) => claim = record,
                        Err(error) => tracing::warn!(%id, %error, "could not renew an idempotency lease"),
                    }
                }
            }
        }
    }

    /// Waits until the record of `id` changes from `seen`, or its lease runs out.
    async fn wait_for_change(
        &self,
        id: &str,
        seen: Option<&Record>,
        until: Timestamp,
    ) -> Result<()> {
        let mut stream = self
            .store
            .watch(
                WatchSelector::ids([id]),
                WatchOptions {
                    snapshot: false,
                    resume: Some(
                        seen.map(|r| (r.id.clone(), r.version))
                            .into_iter()
                            .collect(),
                    ),
                },
            )
            .await?;
        let now = self.store.clock().now();
        // The lease is judged by the store's clock; wait that long in real time at most,
        // then look again (a stale claim is then taken over).
        let remaining = Duration::from_millis(until.as_millis().saturating_sub(now.as_millis()))
            .max(Duration::from_millis(10));
        let _ = tokio::time::timeout(remaining, stream.next()).await;
        Ok(())
    }
}
