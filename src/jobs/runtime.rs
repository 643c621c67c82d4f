//! The worker runtime: one job function, a supervisor that claims and recovers, and a
//! graceful shutdown.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::error::{Error, Result};
use crate::jobs::batch::{BatchReconciler, DirtyBatches, is_batch};
use crate::jobs::claim::claim;
use crate::jobs::control;
use crate::jobs::handle::{JobHandle, StopReason};
use crate::jobs::history::DEFAULT_HISTORY_LIMIT;
use crate::lifecycle::{RecoveryPolicy, last_heartbeat, recover_if_stale, recover_stale_matching};
use crate::record::{Record, Timestamp};
use crate::status::{State, SyncStatus};
use crate::storage::{DynSyncStorage, ListFilter, WatchEvent, WatchOptions, WatchSelector};

/// How often a runtime rolls up a batch whose children change, unless told otherwise.
pub const DEFAULT_BATCH_EVERY: Duration = Duration::from_millis(250);

/// The error a job function returns: anything, kept as the job's `error` text.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type JobFn = dyn Fn(JobHandle) -> BoxFuture<'static, Result<Value, BoxError>> + Send + Sync;

/// How a [`Runtime`] runs jobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    stale_after: Duration,
    heartbeat_every: Option<Duration>,
    max_jobs: usize,
    max_crashes: u32,
    history_limit: usize,
    grace: Option<Duration>,
    prefix: Option<String>,
    batch_every: Duration,
}

impl Default for RuntimeConfig {
    /// Stale after 30 s, heartbeats every third of that, 16 jobs at once, give up after 3
    /// crashes in a row without progress, the last 10 attempts kept, batches rolled up every
    /// 250 ms.
    fn default() -> Self {
        RuntimeConfig {
            stale_after: Duration::from_secs(30),
            heartbeat_every: None,
            max_jobs: 16,
            max_crashes: 3,
            history_limit: DEFAULT_HISTORY_LIMIT,
            grace: None,
            prefix: None,
            batch_every: DEFAULT_BATCH_EVERY,
        }
    }
}

impl RuntimeConfig {
    /// A running job whose heartbeat is older than this is presumed dead and requeued (as a
    /// crash). Judged by the store's clock. The supervisor follows running jobs through the
    /// store's watch and checks them every half of it; only if the store cannot watch does it
    /// list the running jobs instead. A runtime never recovers a job it runs itself, however
    /// late its heartbeat (its process was stalled, not its job): only other workers do.
    pub fn with_stale_after(mut self, stale_after: Duration) -> Self {
        self.stale_after = stale_after;
        self
    }

    /// How often a job's handle heartbeats (default: a third of `stale_after`). A cancel is
    /// seen within one such interval.
    pub fn with_heartbeat_every(mut self, every: Duration) -> Self {
        self.heartbeat_every = Some(every);
        self
    }

    /// At most this many jobs run at once in this runtime (at least 1).
    pub fn with_max_jobs(mut self, max_jobs: usize) -> Self {
        self.max_jobs = max_jobs.max(1);
        self
    }

    /// A job fails once this many of its attempts in a row crashed without advancing
    /// progress or checkpoint (at least 1).
    pub fn with_max_crashes(mut self, max_crashes: u32) -> Self {
        self.max_crashes = max_crashes.max(1);
        self
    }

    /// How many attempts a record's history keeps (the newest; at least 1).
    pub fn with_history_limit(mut self, limit: usize) -> Self {
        self.history_limit = limit.max(1);
        self
    }

    /// How long a job asked to stop (shutdown, cancel) may take to return before it is
    /// dropped (default: one heartbeat interval).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// A batch whose children this runtime sees change is rolled up at most this often
    /// (default 250 ms; at least 1 ms): the parent's counts are at most this far behind.
    pub fn with_batch_every(mut self, every: Duration) -> Self {
        self.batch_every = every.max(Duration::from_millis(1));
        self
    }

    /// Only ids starting with this are jobs of this runtime.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    fn heartbeat_every(&self) -> Duration {
        self.heartbeat_every
            .unwrap_or(self.stale_after / 3)
            .max(Duration::from_millis(10))
    }

    fn grace(&self) -> Duration {
        self.grace.unwrap_or_else(|| self.heartbeat_every())
    }

    fn recovery_every(&self) -> Duration {
        (self.stale_after / 2).max(Duration::from_millis(10))
    }

    fn selects(&self, id: &str) -> bool {
        self.prefix
            .as_deref()
            .is_none_or(|prefix| id.starts_with(prefix))
    }
}

/// Runs one job function on every pending job of a store, until [`Runtime::shutdown`].
///
/// The supervisor (a task the runtime owns) starts with a snapshot of the store through its
/// watch, then claims pending jobs as the watch reports them and, every `stale_after / 2`,
/// recovers the running jobs (of this or any other process) whose last heartbeat it saw is
/// older than `stale_after`. A second task rolls up the [batches](crate::jobs::batch) whose
/// children it sees change. An idle runtime reads nothing from the store but the watch. Dropping the runtime without
/// `shutdown` stops everything at once, like a crash: the jobs stay running in the store and
/// are recovered as interrupted once stale.
pub struct Runtime {
    store: DynSyncStorage,
    stop: watch::Sender<bool>,
    supervisor: Option<JoinHandle<()>>,
    batches: Option<JoinHandle<()>>,
    /// Stops the batch reconciler, after the supervisor: its last round counts the jobs the
    /// shutdown requeued.
    stop_batches: watch::Sender<bool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.abort();
        }
        if let Some(batches) = self.batches.take() {
            batches.abort();
        }
    }
}

impl Runtime {
    /// Starts the supervisor on `store`, running `job` for every job it claims. `job` gets the
    /// claimed job's handle; its `Ok` value completes the job, its error fails it (unless the
    /// job was asked to stop: then it is requeued or cancelled as asked). Must be called in
    /// a Tokio runtime.
    pub fn start<F, Fut>(store: DynSyncStorage, config: RuntimeConfig, job: F) -> Runtime
    where
        F: Fn(JobHandle) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, BoxError>> + Send + 'static,
    {
        let job: Arc<JobFn> = Arc::new(move |handle| Box::pin(job(handle)));
        let (stop, stopped) = watch::channel(false);
        let dirty = Arc::new(DirtyBatches::default());
        let reconciler = BatchReconciler {
            store: store.clone(),
            dirty: dirty.clone(),
            every: config.batch_every,
            lease: config.stale_after,
            owned: HashMap::new(),
            active: Default::default(),
        };
        let (stop_batches, batches_stopped) = watch::channel(false);
        let batches = tokio::spawn(reconciler.run(batches_stopped));
        let supervisor = Supervisor {
            store: store.clone(),
            config,
            job,
            running: HashMap::new(),
            tasks: JoinSet::new(),
            missed: false,
            heartbeats: HashMap::new(),
            batches: dirty,
        };
        Runtime {
            store,
            stop,
            supervisor: Some(tokio::spawn(supervisor.run(stopped))),
            batches: Some(batches),
            stop_batches,
        }
    }

    /// The store this runtime works on.
    pub fn store(&self) -> &DynSyncStorage {
        &self.store
    }

    /// [`submit`](crate::jobs::submit) on this runtime's store.
    pub async fn submit(&self, id: &str, status: SyncStatus) -> Result<Record> {
        control::submit(&*self.store, id, status).await
    }

    /// Stops claiming, asks every running job to stop, gives each back to pending (no failure
    /// counted) once it returned or its grace ran out, rolls up the batches it was working on
    /// once more, and waits for all of that.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(supervisor) = self.supervisor.take()
            && let Err(error) = supervisor.await
        {
            tracing::error!(%error, "the job supervisor failed");
        }
        let _ = self.stop_batches.send(true);
        if let Some(batches) = self.batches.take()
            && let Err(error) = batches.await
        {
            tracing::error!(%error, "the batch reconciler failed");
        }
    }
}

struct Supervisor {
    store: DynSyncStorage,
    config: RuntimeConfig,
    job: Arc<JobFn>,
    /// The jobs this runtime works on, by the task running each.
    running: HashMap<tokio::task::Id, JobHandle>,
    tasks: JoinSet<()>,
    /// A pending job was seen while every slot was taken: look again when one frees.
    missed: bool,
    /// The running jobs of the store (any worker's) and their last heartbeat, as watched.
    heartbeats: HashMap<String, Timestamp>,
    /// The batches whose children changed, for the batch reconciler.
    batches: Arc<DirtyBatches>,
}

impl Supervisor {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        // Watch before the first scan, so a job submitted in between is not missed.
        let selector = match &self.config.prefix {
            Some(prefix) => WatchSelector::Prefix(prefix.clone()),
            None => WatchSelector::All,
        };
        let snapshot = WatchOptions {
            snapshot: true,
            resume: None,
        };
        // The snapshot (a resync) brings every pending and running job to start from.
        let mut events = match self.store.watch(selector, snapshot).await {
            Ok(events) => Some(events),
            Err(error) => {
                tracing::warn!(%error, "cannot watch the store; listing jobs every recovery round instead");
                self.recover_listed().await;
                self.scan_pending().await;
                None
            }
        };
        let mut rounds = tokio::time::interval(self.config.recovery_every());
        rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rounds.tick().await;
        loop {
            tokio::select! {
                _ = stop_requested(&mut stopped) => break,
                Some(ended) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    let task = match &ended {
                        Ok((task, ())) => *task,
                        Err(error) => {
                            tracing::error!(%error, "a job task panicked; its job will be recovered once stale");
                            error.id()
                        }
                    };
                    if let Some(handle) = self.running.remove(&task) {
                        // A write that made the job pending again (a retry) may have been
                        // seen while its last attempt was still winding down here.
                        self.reconsider(handle.id()).await;
                    }
                    if std::mem::take(&mut self.missed) {
                        self.scan_pending().await;
                    }
                }
                event = next_event(&mut events) => match event {
                    Some(Ok(WatchEvent::Upsert(record))) => {
                        self.follow(&record);
                        self.consider(&record).await;
                    }
                    Some(Ok(WatchEvent::Resync(records))) => {
                        self.heartbeats.clear();
                        for record in &records {
                            self.follow(record);
                            self.consider(record).await;
                        }
                        self.recover_watched().await;
                    }
                    Some(Ok(WatchEvent::Removed { id })) => {
                        self.heartbeats.remove(&id);
                    }
                    Some(Err(error)) => tracing::warn!(%error, "job watch error; it resyncs"),
                    None => {
                        tracing::warn!("the store's watch ended; listing jobs every recovery round instead");
                        events = None;
                    }
                },
                _ = rounds.tick() => {
                    if events.is_some() {
                        self.recover_watched().await;
                    } else {
                        self.recover_listed().await;
                    }
                    if events.is_none() || std::mem::take(&mut self.missed) {
                        self.scan_pending().await;
                    }
                }
            }
        }
        drop(events);
        for handle in self.running.values() {
            handle.request_stop(StopReason::Shutdown);
        }
        while let Some(ended) = self.tasks.join_next().await {
            if let Err(error) = ended {
                tracing::error!(%error, "a job task panicked during shutdown");
            }
        }
    }

    /// Keeps the last heartbeat of every running job the watch shows.
    fn follow(&mut self, record: &Record) {
        self.batches.note(record);
        if record.state() == Some(State::Running.as_str())
            && self.config.selects(&record.id)
            && !is_batch(record)
        {
            self.heartbeats
                .insert(record.id.clone(), last_heartbeat(record));
        } else {
            self.heartbeats.remove(&record.id);
        }
    }

    fn policy(&self) -> RecoveryPolicy {
        RecoveryPolicy {
            max_attempts: self.config.max_crashes,
        }
    }

    /// Recovers the watched running jobs whose last heartbeat is stale (each re-read and
    /// recovered by compare-and-set, so a heartbeat not yet seen still wins).
    async fn recover_watched(&mut self) {
        let now = self.store.clock().now();
        let stale: Vec<String> = self
            .heartbeats
            .iter()
            .filter(|(_, beat)| beat.age_at(now) >= self.config.stale_after)
            .map(|(id, _)| id.clone())
            .collect();
        if stale.is_empty() {
            return;
        }
        let policy = self.policy();
        let own = self.own_leases();
        for id in stale {
            match recover_if_stale(&*self.store, &id, self.config.stale_after, &policy, &own).await
            {
                Ok(Some(job)) => {
                    tracing::info!(id = %job.id, action = ?job.action, attempt = job.attempt, "recovered a stale job");
                    self.heartbeats.remove(&id);
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%id, %error, "could not recover a job"),
            }
        }
    }

    /// The leases of the jobs this runtime runs: never recovered by it (see `is_stale`).
    fn own_leases(&self) -> HashSet<String> {
        self.running
            .values()
            .map(|handle| handle.lease().to_string())
            .collect()
    }

    async fn recover_listed(&self) {
        match recover_stale_matching(
            &*self.store,
            self.config.prefix.as_deref(),
            self.config.stale_after,
            &self.policy(),
            &self.own_leases(),
        )
        .await
        {
            Ok(report) => {
                for problem in &report.errors {
                    tracing::warn!(id = ?problem.id, message = %problem.message, "could not recover a job");
                }
            }
            Err(error) => tracing::warn!(%error, "stale-job recovery failed"),
        }
    }

    async fn scan_pending(&mut self) {
        let mut filter = ListFilter::state(State::Pending.as_str());
        filter.prefix = self.config.prefix.clone();
        match self.store.list(&filter).await {
            Ok(listing) => {
                for record in &listing.records {
                    self.consider(record).await;
                }
            }
            Err(error) => tracing::warn!(%error, "listing pending jobs failed"),
        }
    }

    async fn reconsider(&mut self, id: &str) {
        match self.store.get(id).await {
            Ok(Some(record)) => self.consider(&record).await,
            Ok(None) => {}
            Err(error) => tracing::warn!(%id, %error, "could not read a job that just ended"),
        }
    }

    /// Claims `record` if it is a pending job of this runtime and a slot is free.
    async fn consider(&mut self, record: &Record) {
        if record.state() != Some(State::Pending.as_str())
            || !self.config.selects(&record.id)
            || is_batch(record)
        {
            return;
        }
        if self.running.values().any(|handle| handle.id() == record.id) {
            return;
        }
        if self.running.len() >= self.config.max_jobs {
            self.missed = true;
            return;
        }
        let claimed = match claim(&*self.store, &record.id, self.config.history_limit).await {
            Ok(Some(claimed)) => claimed,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(id = %record.id, %error, "could not claim a pending job");
                return;
            }
        };
        tracing::info!(id = %claimed.record.id, attempt = claimed.status.attempt, "claimed a job");
        let handle = JobHandle::start(
            self.store.clone(),
            claimed.record.id,
            claimed.lease,
            claimed.status,
            self.config.heartbeat_every(),
        );
        let job = (self.job)(handle.clone());
        let task = self
            .tasks
            .spawn(drive(handle.clone(), job, self.config.grace()));
        self.running.insert(task.id(), handle);
    }
}

async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    // A dropped sender means the runtime was dropped, not shut down: that aborts this task,
    // and must not look like a graceful stop (which would requeue the jobs).
    if stopped.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn next_event(
    events: &mut Option<crate::storage::WatchStream>,
) -> Option<Result<WatchEvent>> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// Runs the job future and writes how it ended.
async fn drive(
    handle: JobHandle,
    job: BoxFuture<'static, Result<Value, BoxError>>,
    grace: Duration,
) {
    let mut job = job;
    let outcome = tokio::select! {
        outcome = &mut job => Some(outcome),
        _ = handle.stopped() => None,
    };
    let outcome = match outcome {
        Some(outcome) => Some(outcome),
        // Asked to stop: let the job return on its own for a while, then drop it.
        None => tokio::time::timeout(grace, &mut job).await.ok(),
    };
    drop(job);
    let id = handle.id().to_string();
    let ended = if handle.has_ended() {
        Ok(None)
    } else {
        match (handle.stop_reason(), outcome) {
            (Some(StopReason::Lost), _) => Ok(None),
            (_, Some(Ok(result))) => handle.complete(result).await.map(Some),
            (Some(StopReason::Cancelled), _) => handle.end_cancelled().await.map(Some),
            (Some(StopReason::Shutdown), _) => handle.requeue().await.map(Some),
            (None, Some(Err(error))) => handle.fail(&*error).await.map(Some),
            (None, None) => Ok(None),
        }
    };
    handle.stop_heartbeat();
    match ended {
        Ok(Some(record)) => {
            tracing::info!(%id, state = ?record.state(), "job ended");
        }
        Ok(None) => {}
        Err(Error::LostOwnership { reason, .. }) => {
            tracing::warn!(%id, %reason, "job was lost to another worker");
        }
        Err(error) => tracing::warn!(%id, %error, "could not store how the job ended"),
    }
}
