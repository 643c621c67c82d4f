//! Heartbeats, stale-job recovery and stats.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::jobs::batch::is_batch;
use crate::jobs::{Attempt, AttemptEnd, close_last};
use crate::record::{Record, Timestamp};
use crate::status::{Progress, State};
use crate::storage::{CleanupProblem, ListFilter, PutMode, SyncStorage};

/// A running job whose last heartbeat is older than this is stale, unless told otherwise.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(60);

/// Records that the worker of `id` is alive: sets `status.heartbeat_at` to the store's
/// current time, which is a write (the version grows and the TTL starts again).
///
/// [`Error::NotFound`] if there is no live record; [`Error::InvalidStatus`] if its status is
/// not a JSON object.
pub async fn heartbeat(store: &dyn SyncStorage, id: &str) -> Result<Record> {
    let now = store.clock().now();
    store
        .update(id, &mut |current: Option<&Record>| {
            let record = current.ok_or_else(|| Error::NotFound { id: id.to_string() })?;
            let mut status = record.status.clone();
            object_of(id, &mut status)?.insert("heartbeat_at".into(), json!(now));
            Ok(status)
        })
        .await
}

fn object_of<'a>(id: &str, status: &'a mut Value) -> Result<&'a mut Map<String, Value>> {
    status.as_object_mut().ok_or_else(|| Error::InvalidStatus {
        id: id.to_string(),
        reason: "it is not a JSON object".into(),
    })
}

/// When the worker of `record` last said it was alive: its `heartbeat_at`, else its
/// `started_at`, else the record's last write.
pub fn last_heartbeat(record: &Record) -> Timestamp {
    ["heartbeat_at", "started_at"]
        .iter()
        .find_map(|key| {
            record
                .status
                .get(*key)
                .and_then(Value::as_str)
                .and_then(Timestamp::parse)
        })
        .unwrap_or(record.updated_at)
}

/// The lease a job's current attempt was claimed with, if it has one.
fn lease_of(record: &Record) -> Option<&str> {
    record.status.get("lease").and_then(Value::as_str)
}

/// Whether `record` is a running job silent for `stale_after` at `now` and not claimed with
/// one of the `spared` leases: those of the jobs the recovering runtime runs itself. A runtime's own job is alive whatever its heartbeat says (it is late
/// only when the whole process was, and then the job was too); recovering it would throw away
/// its attempt and count a crash. Other processes, which cannot tell, still recover it.
fn is_stale(
    record: &Record,
    now: Timestamp,
    stale_after: Duration,
    spared: &HashSet<String>,
) -> bool {
    record.state() == Some(State::Running.as_str())
        && last_heartbeat(record).age_at(now) >= stale_after
        && lease_of(record).is_none_or(|lease| !spared.contains(lease))
}

/// What recovery does with a job whose worker died.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryPolicy {
    /// A job goes to failed instead of back to pending once this many of its attempts in a
    /// row crashed (stopped heartbeating) without advancing its progress or checkpoint. An
    /// attempt that advanced resets the count, so a job that keeps making progress survives
    /// any number of crashes; graceful requeues never count.
    pub max_attempts: u32,
}

impl Default for RecoveryPolicy {
    fn default() -> Self {
        RecoveryPolicy { max_attempts: 3 }
    }
}

/// What happened to a recovered job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecoveryAction {
    /// Back to pending with its attempt number raised by one.
    Requeued,
    /// To failed: too many crashes in a row without progress.
    Failed,
    /// To cancelled: a cancel was requested and its worker is gone.
    Cancelled,
}

/// One job recovered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecoveredJob {
    /// Its id.
    pub id: String,
    /// Requeued, failed or cancelled.
    pub action: RecoveryAction,
    /// Its attempt number after recovery.
    pub attempt: u32,
    /// The version written.
    pub version: u64,
}

/// What [`recover_stale`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// The jobs moved to pending, failed or cancelled.
    pub recovered: Vec<RecoveredJob>,
    /// Running jobs left alone: they heartbeat, or won the race against recovery.
    pub alive: usize,
    /// Records that could not be read or written; recovery went on past each.
    pub errors: Vec<CleanupProblem>,
}

fn u32_field(status: &Value, key: &str) -> Option<u32> {
    status
        .get(key)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

/// The status a dead job moves to, and what that is.
fn recovered_status(
    record: &Record,
    now: Timestamp,
    policy: &RecoveryPolicy,
    why: &str,
) -> Result<(Value, RecoveryAction, u32)> {
    let id = record.id.as_str();
    let mut status = record.status.clone();
    let attempt = u32_field(&status, "attempt").unwrap_or(1).max(1);
    let crashes = u32_field(&status, "crashes").unwrap_or(0);
    let cancel_requested = status
        .get("cancel_requested")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let progress: Option<Progress> = status
        .get("progress")
        .and_then(|progress| serde_json::from_value(progress.clone()).ok());
    let mut history: Vec<Attempt> = match status.get("history") {
        None | Some(Value::Null) => Vec::new(),
        Some(history) => {
            serde_json::from_value(history.clone()).map_err(|error| Error::InvalidStatus {
                id: id.to_string(),
                reason: format!("its `history` is not a list of attempts: {error}"),
            })?
        }
    };
    let object = object_of(id, &mut status)?;
    object.remove("lease");
    let outcome = if cancel_requested {
        AttemptEnd::Cancelled
    } else {
        AttemptEnd::Interrupted
    };
    let advanced = close_last(&mut history, outcome, now, progress);
    if !history.is_empty() {
        object.insert("history".into(), json!(history));
    }
    if cancel_requested {
        object.insert("state".into(), json!(State::Cancelled));
        object.remove("cancel_requested");
        object.insert("finished_at".into(), json!(now));
        object.insert(
            "message".into(),
            json!(format!("{why}; cancelled as requested")),
        );
        return Ok((status, RecoveryAction::Cancelled, attempt));
    }
    let crashes = if advanced { 0 } else { crashes + 1 };
    object.insert("crashes".into(), json!(crashes));
    if crashes >= policy.max_attempts {
        object.insert("state".into(), json!(State::Failed));
        object.insert(
            "error".into(),
            json!(format!(
                "{why}; gave up after {crashes} attempts in a row ended without progress"
            )),
        );
        object.insert("finished_at".into(), json!(now));
        Ok((status, RecoveryAction::Failed, attempt))
    } else {
        let next = attempt + 1;
        object.insert("state".into(), json!(State::Pending));
        object.insert("attempt".into(), json!(next));
        let counted = if advanced {
            "it had made progress".to_string()
        } else {
            format!(
                "{crashes} of {} crashes without progress",
                policy.max_attempts
            )
        };
        object.insert(
            "message".into(),
            json!(format!("{why}; requeued for attempt {next} ({counted})")),
        );
        Ok((status, RecoveryAction::Requeued, next))
    }
}

/// Writes the recovered status conditioned on the version read, so a worker that wrote in
/// between (a late heartbeat) wins. `Ok(None)`: it did.
async fn recover_record(
    store: &dyn SyncStorage,
    record: &Record,
    now: Timestamp,
    policy: &RecoveryPolicy,
    why: &str,
) -> Result<Option<RecoveredJob>> {
    let (status, action, attempt) = recovered_status(record, now, policy, why)?;
    match store
        .put(&record.id, status, PutMode::Update(record.version))
        .await
    {
        Ok(written) => Ok(Some(RecoveredJob {
            id: record.id.clone(),
            action,
            attempt,
            version: written.version,
        })),
        Err(error) if error.is_conflict() => Ok(None),
        Err(error) => Err(error),
    }
}

/// Finds running jobs whose last heartbeat is older than `stale_after` and moves each back
/// to pending with its attempt raised by one, or to failed once `policy.max_attempts`
/// attempts in a row crashed without progress, or to cancelled when a cancel was requested,
/// with a message saying why. The open attempt of the job's history is closed as
/// interrupted. Each move is a compare-and-set, so a worker that is still alive and writes
/// first keeps its job.
pub async fn recover_stale(
    store: &dyn SyncStorage,
    stale_after: Duration,
    policy: &RecoveryPolicy,
) -> Result<RecoveryReport> {
    recover_stale_matching(store, None, stale_after, policy, &HashSet::new()).await
}

/// [`recover_stale`] of the ids starting with `prefix` only, sparing the jobs claimed with one
/// of the `spared` leases.
pub(crate) async fn recover_stale_matching(
    store: &dyn SyncStorage,
    prefix: Option<&str>,
    stale_after: Duration,
    policy: &RecoveryPolicy,
    spared: &HashSet<String>,
) -> Result<RecoveryReport> {
    let mut filter = ListFilter::state(State::Running.as_str());
    filter.prefix = prefix.map(str::to_string);
    let listing = store.list(&filter).await?;
    let mut report = RecoveryReport {
        errors: listing
            .errors
            .iter()
            .map(|error| CleanupProblem {
                id: None,
                message: error.to_string(),
            })
            .collect(),
        ..RecoveryReport::default()
    };
    let now = store.clock().now();
    let why = stale_why(stale_after);
    for record in &listing.records {
        if is_batch(record) {
            continue;
        }
        if !is_stale(record, now, stale_after, spared) {
            report.alive += 1;
            continue;
        }
        match recover_record(store, record, now, policy, &why).await {
            Ok(Some(job)) => {
                tracing::info!(id = %job.id, action = ?job.action, attempt = job.attempt, "recovered a stale job");
                report.recovered.push(job);
            }
            Ok(None) => report.alive += 1,
            Err(error) => report.errors.push(CleanupProblem {
                id: Some(record.id.clone()),
                message: error.to_string(),
            }),
        }
    }
    Ok(report)
}

/// Why a stale job is recovered. The limit, not the silence measured: it is what the operator
/// configured, and a silence rounded to seconds would print "1s" for a limit of 500ms.
fn stale_why(stale_after: Duration) -> String {
    format!(
        "no heartbeat for {}",
        humantime::format_duration(stale_after)
    )
}

/// Recovers `id` if it is running and silent for `stale_after`, as [`recover_stale`] does,
/// unless it was claimed with one of the `spared` leases; `Ok(None)` when it is not recovered
/// (or its worker wrote first).
pub(crate) async fn recover_if_stale(
    store: &dyn SyncStorage,
    id: &str,
    stale_after: Duration,
    policy: &RecoveryPolicy,
    spared: &HashSet<String>,
) -> Result<Option<RecoveredJob>> {
    let Some(record) = store.get(id).await? else {
        return Ok(None);
    };
    let now = store.clock().now();
    if is_batch(&record) || !is_stale(&record, now, stale_after, spared) {
        return Ok(None);
    }
    recover_record(store, &record, now, policy, &stale_why(stale_after)).await
}

/// Recovers one running job now, whatever its heartbeat says (an operator's decision).
///
/// [`Error::NotFound`] if there is no live record, [`Error::InvalidTransition`] if it is not
/// running, [`Error::VersionConflict`] if its worker wrote meanwhile.
pub async fn recover_job(
    store: &dyn SyncStorage,
    id: &str,
    policy: &RecoveryPolicy,
) -> Result<RecoveredJob> {
    let record = store
        .get(id)
        .await?
        .ok_or_else(|| Error::NotFound { id: id.to_string() })?;
    if is_batch(&record) {
        return Err(Error::InvalidTransition {
            id: id.to_string(),
            action: "recover",
            state: "a batch (its children are the jobs)".into(),
        });
    }
    if record.state() != Some(State::Running.as_str()) {
        return Err(Error::InvalidTransition {
            id: id.to_string(),
            action: "recover",
            state: format!(
                "{}, not running",
                record.state().unwrap_or("not a job status")
            ),
        });
    }
    let now = store.clock().now();
    recover_record(store, &record, now, policy, "recovered by an operator")
        .await?
        .ok_or(Error::VersionConflict {
            id: id.to_string(),
            expected: record.version,
            found: None,
        })
}

/// Counts and health of a store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Live records per state (`""` for records without one), batches' parents left out.
    pub counts: BTreeMap<String, u64>,
    /// Batches (their parent records) per state; their children are counted in `counts`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub batches: BTreeMap<String, u64>,
    /// Live records in all.
    pub total: u64,
    /// Running jobs whose last heartbeat is older than the stale limit, sorted.
    pub stale_running: Vec<String>,
    /// Age of the oldest live record (since its creation), in milliseconds.
    pub oldest_age_ms: Option<u64>,
    /// Records that could not be read.
    pub unreadable: u64,
    /// False while stale running jobs exist.
    pub healthy: bool,
}

/// Counts by state (jobs and batches apart), stale running jobs, the oldest record's age,
/// and health.
///
/// One pass over the store with [`SyncStorage::scan`]: the memory it takes does not grow
/// with the store (beyond the ids of stale running jobs) where the backend streams.
pub async fn stats(store: &dyn SyncStorage, stale_after: Duration) -> Result<Stats> {
    let now = store.clock().now();
    let mut stats = Stats::default();
    store
        .scan(&ListFilter::all(), &mut |record| match record {
            Ok(record) => count(&mut stats, &record, now, stale_after),
            Err(_) => stats.unreadable += 1,
        })
        .await?;
    stats.stale_running.sort();
    stats.healthy = stats.stale_running.is_empty();
    Ok(stats)
}

fn count(stats: &mut Stats, record: &Record, now: Timestamp, stale_after: Duration) {
    let counts = if is_batch(record) {
        &mut stats.batches
    } else {
        &mut stats.counts
    };
    *counts
        .entry(record.state().unwrap_or_default().to_string())
        .or_insert(0) += 1;
    stats.total += 1;
    let age = u64::try_from(record.created_at.age_at(now).as_millis()).unwrap_or(u64::MAX);
    stats.oldest_age_ms = Some(stats.oldest_age_ms.map_or(age, |oldest| oldest.max(age)));
    if record.state() == Some(State::Running.as_str())
        && !is_batch(record)
        && last_heartbeat(record).age_at(now) >= stale_after
    {
        stats.stale_running.push(record.id.clone());
    }
}
