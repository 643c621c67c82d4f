//! What the commands that report print: the written version, the stats, cleanup and
//! recovery reports as text, and every command's JSON.

use std::time::Duration;

use serde::Serialize;
use syncstatus::{Record, RecoveryAction};

use crate::failure::{Failure, code};
use crate::render;

/// What `set` and `update` print: the new version, or the record as JSON.
pub fn written(record: &Record, json: bool) -> Result<String, Failure> {
    if json {
        pretty(record)
    } else {
        Ok(format!("{}\n", record.version))
    }
}

/// `stats --json`: the library's stats, with records without a state counted as
/// `no_state` rather than under an empty state name, as the text output says "(no state)".
#[derive(Serialize)]
pub struct StatsOutput<'a> {
    counts: std::collections::BTreeMap<&'a str, u64>,
    no_state: u64,
    total: u64,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    batches: &'a std::collections::BTreeMap<String, u64>,
    stale_running: &'a [String],
    oldest_age_ms: Option<u64>,
    unreadable: u64,
    healthy: bool,
}

impl<'a> From<&'a syncstatus::Stats> for StatsOutput<'a> {
    fn from(stats: &'a syncstatus::Stats) -> Self {
        StatsOutput {
            counts: stats
                .counts
                .iter()
                .filter(|(state, _)| !state.is_empty())
                .map(|(state, count)| (state.as_str(), *count))
                .collect(),
            no_state: stats.counts.get("").copied().unwrap_or(0),
            total: stats.total,
            batches: &stats.batches,
            stale_running: &stats.stale_running,
            oldest_age_ms: stats.oldest_age_ms,
            unreadable: stats.unreadable,
            healthy: stats.healthy,
        }
    }
}

/// The `stats` report.
pub fn stats_text(stats: &syncstatus::Stats, stale_after: Duration) -> String {
    let mut out = format!("total: {}\n", stats.total);
    for (state, count) in &stats.counts {
        let state = if state.is_empty() {
            "(no state)".to_string()
        } else {
            render::escape(state)
        };
        out.push_str(&format!("  {state}: {count}\n"));
    }
    out.push_str(&crate::batch::stats_text(stats));
    if let Some(age) = stats.oldest_age_ms {
        out.push_str(&format!(
            "oldest: {}\n",
            render::short_age(Duration::from_millis(age))
        ));
    }
    if stats.unreadable > 0 {
        out.push_str(&format!("unreadable: {}\n", stats.unreadable));
    }
    if !stats.stale_running.is_empty() {
        out.push_str(&format!(
            "stale (no heartbeat for {}): {}\n",
            humantime::format_duration(stale_after),
            stats.stale_running.join(", ")
        ));
    }
    out.push_str(if stats.healthy {
        "healthy: yes\n"
    } else {
        "healthy: no\n"
    });
    out
}

/// The `recover` report.
pub fn recover_text(report: &syncstatus::RecoveryReport) -> String {
    let mut out = String::new();
    for job in &report.recovered {
        let line = match job.action {
            RecoveryAction::Requeued => format!(
                "requeued {} for attempt {} (version {})\n",
                job.id, job.attempt, job.version
            ),
            RecoveryAction::Failed => format!(
                "failed {} after {} attempt(s) (version {})\n",
                job.id, job.attempt, job.version
            ),
            RecoveryAction::Cancelled => format!(
                "cancelled {} as requested (version {})\n",
                job.id, job.version
            ),
        };
        out.push_str(&line);
    }
    out.push_str(&format!(
        "recovered {} job(s); {} running job(s) alive\n",
        report.recovered.len(),
        report.alive
    ));
    out
}

/// The `cleanup` report.
pub fn cleanup_text(report: &syncstatus::CleanupReport, dry_run: bool) -> String {
    if !report.ran {
        return "another cleanup of this store is running; this one did nothing\n".to_string();
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut out = format!("{verb} {} record(s)", report.removed.len());
    if !report.removed.is_empty() {
        out.push_str(": ");
        out.push_str(&report.removed.join(", "));
    }
    out.push_str(&format!(
        "\nkept {} record(s); removed {} leftover file(s)\n",
        report.kept, report.leftovers_removed
    ));
    out
}

/// `cleanup --json`: the store's report and whether it was a dry run.
#[derive(Serialize)]
pub struct CleanupOutput<'a> {
    pub dry_run: bool,
    #[serde(flatten)]
    pub report: &'a syncstatus::CleanupReport,
}

/// `value` as pretty JSON, one line break at the end.
pub fn pretty<T: Serialize + ?Sized>(value: &T) -> Result<String, Failure> {
    let mut text = serde_json::to_string_pretty(value).map_err(|error| Failure {
        code: code::OTHER,
        message: format!("cannot encode the output as JSON: {error}"),
    })?;
    text.push('\n');
    Ok(text)
}
