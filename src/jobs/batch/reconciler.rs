//! The runtime's batch reconciler: rolls up the batches whose children its supervisor saw
//! change, one process per batch at a time.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::error::Error;
use crate::jobs::batch::{is_batch, lock_name, parent_of, reconcile_batch};
use crate::record::Record;
use crate::status::State;
use crate::storage::{DynSyncStorage, LockGuard};

/// The batches to roll up again: marked by the supervisor (it must never wait, so this is a
/// set and a wake-up), taken by the reconciler.
#[derive(Debug, Default)]
pub(crate) struct DirtyBatches {
    ids: Mutex<BTreeSet<String>>,
    wake: Notify,
}

impl DirtyBatches {
    /// Marks the batch `record` belongs to (a child's parent, or a batch not yet ended).
    pub(crate) fn note(&self, record: &Record) {
        if let Some(parent) = parent_of(record) {
            self.mark(parent);
        } else if is_batch(record)
            && record
                .state()
                .and_then(|state| state.parse::<State>().ok())
                .is_some_and(|state| !state.is_terminal())
        {
            self.mark(&record.id);
        }
    }

    fn mark(&self, id: &str) {
        let inserted = self.lock().insert(id.to_string());
        if inserted {
            self.wake.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.lock())
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Reconciles marked batches at most once per `every`. It holds a batch's store lock from
/// the round that took it until a round in which the batch did not change (or ended), so
/// while a batch is busy one process rolls it up and the others only try the lock; a
/// process that cannot take it keeps the batch marked and tries again next round, so a
/// holder that dies (its lock released with it, or its lease run out) is replaced.
pub(crate) struct BatchReconciler {
    pub(crate) store: DynSyncStorage,
    pub(crate) dirty: std::sync::Arc<DirtyBatches>,
    pub(crate) every: Duration,
    /// How long a lock outlives a holder that died, on backends that cannot tell.
    pub(crate) lease: Duration,
    pub(crate) owned: HashMap<String, LockGuard>,
    /// The batches this process last rolled up as not ended: a stop rolls them up once more,
    /// so the writes of the stopping runtime (its requeued children) are counted.
    pub(crate) active: BTreeSet<String>,
}

impl BatchReconciler {
    /// Runs until `stopped` says so (then rolls up the active batches once more), or until
    /// its sender is dropped (the runtime was dropped: it stops at once).
    pub(crate) async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let mut rounds = tokio::time::interval(self.every);
        rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = loop {
            if self.dirty.is_empty() && self.owned.is_empty() {
                tokio::select! {
                    _ = self.dirty.wake.notified() => {}
                    stop = stopped.wait_for(|stop| *stop) => break stop.is_ok(),
                }
            }
            tokio::select! {
                _ = rounds.tick() => {}
                stop = stopped.wait_for(|stop| *stop) => break stop.is_ok(),
            }
            self.round().await;
        };
        if stop {
            let last = std::mem::take(&mut self.active);
            self.dirty.lock().extend(last);
            self.round().await;
        }
    }

    async fn round(&mut self) {
        let ids = self.dirty.take();
        // A batch quiet for a round is let go, so the lock is not held for nothing.
        self.owned.retain(|id, _| ids.contains(id));
        for id in ids {
            if !self.owned.contains_key(&id) {
                match self.store.try_lock(&lock_name(&id), self.lease).await {
                    Ok(Some(guard)) => {
                        self.owned.insert(id.clone(), guard);
                    }
                    Ok(None) => {
                        self.dirty.lock().insert(id);
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(batch = %id, %error, "cannot take the batch's lock; trying again");
                        self.dirty.lock().insert(id);
                        continue;
                    }
                }
            }
            match reconcile_batch(&*self.store, &id).await {
                Ok(parent) => {
                    let ended = parent
                        .state()
                        .and_then(|state| state.parse::<State>().ok())
                        .is_some_and(State::is_terminal);
                    if ended {
                        self.owned.remove(&id);
                        self.active.remove(&id);
                    } else {
                        self.active.insert(id);
                    }
                }
                Err(Error::NotFound { .. } | Error::InvalidStatus { .. }) => {
                    self.owned.remove(&id);
                    self.active.remove(&id);
                }
                Err(error) => {
                    tracing::warn!(batch = %id, %error, "could not roll the batch up; trying again");
                    self.dirty.lock().insert(id);
                }
            }
        }
    }
}
