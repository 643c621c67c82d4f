//! Batches in the CLI: the rolled-up counts in `get`, batches folded in `ls` (and in `watch`,
//! `cli/src/watch.rs`), batches counted apart in `stats`, and the line `cancel` and `retry` print for a batch.

use std::fmt::Write;

use serde_json::Value;
use syncstatus::jobs::BatchRollup;
use syncstatus::jobs::batch::is_batch;
use syncstatus::{Record, Stats};

use crate::render::escape;

fn rollup_of(status: &Value) -> Option<BatchRollup> {
    serde_json::from_value(status.get("batch")?.clone()).ok()
}

/// The `children` line of `get` for a batch: its size and counts by state.
pub fn rollup_view(status: &Value) -> Option<String> {
    let rollup = rollup_of(status)?;
    Some(format!("{} ({})", rollup.size, rollup.counts))
}

/// The batch `record` says it is a child of, if any.
pub fn parent_of(record: &Record) -> Option<&str> {
    record.status.get("parent").and_then(Value::as_str)
}

/// The records of an `ls` with each batch's children left out when the batch is listed:
/// its row (counts, one summed progress) stands for them. `ls --prefix BATCH.` lists them.
pub fn fold(records: &[Record]) -> Vec<Record> {
    let batches: std::collections::HashSet<&str> = records
        .iter()
        .filter(|record| is_batch(record))
        .map(|record| record.id.as_str())
        .collect();
    records
        .iter()
        .filter(|record| parent_of(record).is_none_or(|parent| !batches.contains(parent)))
        .cloned()
        .collect()
}

/// The `batches:` lines of `stats` (none without batches).
pub fn stats_text(stats: &Stats) -> String {
    if stats.batches.is_empty() {
        return String::new();
    }
    let total: u64 = stats.batches.values().sum();
    let mut out = format!("batches: {total}\n");
    for (state, count) in &stats.batches {
        let _ = writeln!(out, "  {}: {count}", escape(state));
    }
    out
}

/// What `cancel` and `retry` print for a batch.
pub fn summary(record: &Record) -> Option<String> {
    let rollup = rollup_of(&record.status)?;
    let state = record.state().unwrap_or("-");
    let c = rollup.counts;
    let asked = record.status.get("cancel_requested") == Some(&Value::Bool(true));
    let stopping = if asked && c.running > 0 {
        format!("; {} running children asked to stop", c.running)
    } else {
        String::new()
    };
    Some(format!(
        "{}: batch {state}, {} of {} completed{stopping} (version {})\n",
        escape(&record.id),
        c.completed,
        rollup.size,
        record.version
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_record::record;
    use serde_json::json;

    #[test]
    fn a_listed_batch_folds_its_children() {
        let batch = json!({"state": "running", "batch": {"size": 2, "counts":
            {"pending": 1, "running": 1, "completed": 0, "failed": 0, "cancelled": 0}}});
        let records = [
            record("b", batch.clone()),
            record("b.1", json!({"state": "running", "parent": "b"})),
            record("c.1", json!({"state": "running", "parent": "c"})),
            record("job", json!({"state": "pending"})),
        ];
        let ids: Vec<String> = fold(&records).into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["b", "c.1", "job"]);
        assert_eq!(
            rollup_view(&batch).as_deref(),
            Some("2 (0 completed, 1 running, 1 pending)")
        );
    }
}
