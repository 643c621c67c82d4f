//! `syncstatus cancel` and `syncstatus retry`, and the attempt history of `get`.

use std::fmt::Write;

use clap::Subcommand;
use serde_json::Value;
use syncstatus::jobs::Attempt;
use syncstatus::{DynSyncStorage, Record};

use crate::failure::Failure;
use crate::report::pretty;

/// The job commands.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Cancel job ID: a pending job is cancelled at once; a running one is asked to stop, and
    /// its worker ends it cancelled (progress kept) within one heartbeat interval. Exit 4 if
    /// it already ended.
    Cancel {
        /// The job id.
        id: String,
        /// Print the written record as JSON instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Put failed or cancelled job ID back to pending for a new attempt, history kept. Exit 4
    /// if it is in another state.
    Retry {
        /// The job id.
        id: String,
        /// Print the written record as JSON instead of a line.
        #[arg(long)]
        json: bool,
    },
}

impl JobCommand {
    /// The id the command acts on.
    pub fn id(&self) -> &str {
        match self {
            JobCommand::Cancel { id, .. } | JobCommand::Retry { id, .. } => id,
        }
    }
}

/// Runs a job command; returns what to print.
pub async fn run(store: &DynSyncStorage, command: JobCommand) -> Result<String, Failure> {
    let (record, json) = match command {
        JobCommand::Cancel { id, json } => (syncstatus::jobs::cancel(&**store, &id).await?, json),
        JobCommand::Retry { id, json } => (syncstatus::jobs::retry(&**store, &id).await?, json),
    };
    if json {
        return pretty(&record);
    }
    Ok(summary(&record))
}

fn summary(record: &Record) -> String {
    if let Some(line) = crate::batch::summary(record) {
        return line;
    }
    let state = record.state().unwrap_or("-");
    let asked = record.status.get("cancel_requested") == Some(&Value::Bool(true));
    if asked {
        format!(
            "{}: cancel requested; its worker stops it (version {})\n",
            record.id, record.version
        )
    } else {
        format!("{}: {state} (version {})\n", record.id, record.version)
    }
}

/// The attempt history of a status, one line per attempt, for `get`. `None` without one.
pub fn history_view(status: &Value) -> Option<String> {
    let history: Vec<Attempt> = serde_json::from_value(status.get("history")?.clone()).ok()?;
    if history.is_empty() {
        return None;
    }
    let mut out = String::from("history:\n");
    for attempt in &history {
        let outcome = attempt.outcome.map_or("running", |end| end.as_str());
        let progress = attempt.progress.map_or_else(
            || "-".to_string(),
            |p| match p.total {
                Some(total) => format!("{}/{total}", p.done),
                None => p.done.to_string(),
            },
        );
        let ended = attempt
            .ended_at
            .map_or_else(|| "-".to_string(), |at| at.to_string());
        let _ = writeln!(
            out,
            "  #{:<3} {outcome:<21} progress {progress:<12} started {} ended {ended}",
            attempt.attempt, attempt.started_at
        );
    }
    Some(out)
}
