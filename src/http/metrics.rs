//! `GET /metrics`: the store's gauges and the router's counters in the Prometheus text format
//! (version 0.0.4).
//!
//! Counters are kept by the router, not derived from the store, so they survive cleanups that
//! remove the records they counted (gauges alone made BullMQ's rates wrong, bullmq#3603).
//! They start at zero with the process, which Prometheus reads as a counter reset.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::lifecycle;

/// The counters of one router (and of every clone of it).
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Successful writes through the write routes.
    pub(super) writes: AtomicU64,
    /// Writes refused by a condition (412) or a version conflict (409).
    pub(super) conflicts: AtomicU64,
    /// Expired records removed by `POST /admin/cleanup`.
    pub(super) expired_removed: AtomicU64,
    /// Jobs requeued or failed by the recover routes.
    pub(super) recoveries: AtomicU64,
    /// Cleanups that ran (not those skipped because another held the sweep lock).
    pub(super) cleanups: AtomicU64,
}

/// The media type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value as the text format needs it: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// `GET /metrics`, behind the admin key like `/admin/stats`: the gauges read every record.
pub(super) async fn metrics(State(config): State<AppState>) -> Result<Response, ApiError> {
    let stats = lifecycle::stats(&*config.store, config.stale_after).await?;
    let mut out = String::new();
    family(
        &mut out,
        "syncstatus_records",
        "gauge",
        "Live records per state.",
    );
    for (state, count) in &stats.counts {
        let _ = writeln!(
            out,
            "syncstatus_records{{state=\"{}\"}} {count}",
            escape_label(state)
        );
    }
    family(
        &mut out,
        "syncstatus_stale_running_jobs",
        "gauge",
        "Running jobs whose last heartbeat is older than the stale limit.",
    );
    let _ = writeln!(
        out,
        "syncstatus_stale_running_jobs {}",
        stats.stale_running.len()
    );
    family(
        &mut out,
        "syncstatus_oldest_record_age_seconds",
        "gauge",
        "Age of the oldest live record since its creation (0 without records).",
    );
    let oldest = stats.oldest_age_ms.unwrap_or(0) as f64 / 1000.0;
    let _ = writeln!(out, "syncstatus_oldest_record_age_seconds {oldest}");
    family(
        &mut out,
        "syncstatus_unreadable_records",
        "gauge",
        "Records that could not be read (corrupt or foreign).",
    );
    let _ = writeln!(out, "syncstatus_unreadable_records {}", stats.unreadable);
    let counters = &config.metrics;
    for (name, help, counter) in [
        (
            "syncstatus_writes_total",
            "Writes through the write routes.",
            &counters.writes,
        ),
        (
            "syncstatus_write_conflicts_total",
            "Writes refused by If-Match, If-None-Match or a version conflict.",
            &counters.conflicts,
        ),
        (
            "syncstatus_expired_removed_total",
            "Expired records removed by cleanups of this server.",
            &counters.expired_removed,
        ),
        (
            "syncstatus_recoveries_total",
            "Stale jobs requeued or failed by recoveries of this server.",
            &counters.recoveries,
        ),
        (
            "syncstatus_cleanups_total",
            "Cleanups this server ran.",
            &counters.cleanups,
        ),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
    }
    let mut response = out.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::escape_label;

    #[test]
    fn label_values_escape_what_the_format_reserves() {
        assert_eq!(escape_label("running"), "running");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
