//! Human-readable views of records.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;
use syncstatus::{Record, Timestamp};

/// `text` safe to print on a terminal: control characters (ESC, CR, NUL, DEL, the C1 range)
/// and the invisible characters that reorder or hide text (bidi overrides, zero-width
/// marks) are shown as `\u{1b}` escapes, and a line break as a space. A record's fields
/// come from whoever wrote them: printed raw, an ESC sequence could retitle the window,
/// clear the screen or write the clipboard (OSC 52).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push(' '),
            c if c.is_control() || is_invisible_format(c) => {
                out.extend(c.escape_unicode());
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters that change how the text around them shows without showing themselves.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// The `state` field, escaped for a terminal, or `-`.
pub fn state_of(record: &Record) -> String {
    record.state().map_or_else(|| "-".to_string(), escape)
}

/// `done/total` of a status's progress, when it has one that reads as such.
pub fn progress_of(status: &Value) -> Option<(u64, Option<u64>)> {
    let progress = status.get("progress")?;
    let done = progress.get("done")?.as_u64()?;
    let total = progress.get("total").and_then(Value::as_u64);
    Some((done, total))
}

/// The progress as `40/600 (7%)`, `40` without a total, or `-`.
pub fn progress_text(status: &Value) -> String {
    match progress_of(status) {
        Some((done, Some(total))) => format!("{done}/{total} ({}%)", percent(done, total)),
        Some((done, None)) => done.to_string(),
        None => "-".to_string(),
    }
}

fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        100
    } else {
        (u128::from(done.min(total)) * 100 / u128::from(total)) as u64
    }
}

/// A 20-cell text bar, `[########------------]`, when the total is known.
pub fn progress_bar(status: &Value) -> Option<String> {
    let (done, Some(total)) = progress_of(status)? else {
        return None;
    };
    let filled = (percent(done, total) / 5) as usize;
    Some(format!(
        "[{}{}]",
        "#".repeat(filled),
        "-".repeat(20 - filled)
    ))
}

/// The `message` field, on one line, escaped for a terminal.
pub fn message_of(status: &Value) -> Option<String> {
    status.get("message").and_then(Value::as_str).map(escape)
}

/// An age in its largest whole unit: `4s`, `12m`, `3h`, `2d`.
pub fn short_age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// The `get` view: one `name: value` line per fact.
pub fn record_view(record: &Record, now: Timestamp) -> String {
    let status = &record.status;
    let progress = match progress_bar(status) {
        Some(bar) => format!("{bar} {}", progress_text(status)),
        None => progress_text(status),
    };
    let mut lines: Vec<(String, String)> = vec![
        ("id".into(), escape(&record.id)),
        ("version".into(), record.version.to_string()),
        ("state".into(), state_of(record)),
        ("progress".into(), progress),
        (
            "message".into(),
            message_of(status).unwrap_or_else(|| "-".into()),
        ),
        (
            "updated_at".into(),
            format!(
                "{} ({} ago)",
                record.updated_at,
                short_age(record.updated_at.age_at(now))
            ),
        ),
        ("created_at".into(), record.created_at.to_string()),
    ];
    if let Some(children) = crate::batch::rollup_view(status) {
        lines.insert(4, ("children".into(), children));
    }
    match status {
        Value::Object(map) => {
            for (key, value) in map {
                if matches!(
                    key.as_str(),
                    "state" | "progress" | "message" | "history" | "batch"
                ) {
                    continue;
                }
                let text = match value {
                    Value::String(text) => escape(text),
                    other => escape(&other.to_string()),
                };
                lines.push((escape(key), text));
            }
        }
        other => lines.push(("status".into(), escape(&other.to_string()))),
    }
    let width = lines.iter().map(|(name, _)| name.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (name, value) in lines {
        let _ = writeln!(out, "{:<width$}{value}", format!("{name}:"));
    }
    if let Some(history) = crate::jobs::history_view(status) {
        out.push_str(&history);
    }
    out
}

/// The `ls` table: ID, STATE, PROGRESS, VERSION, UPDATED, MESSAGE.
pub fn table(records: &[Record], now: Timestamp) -> String {
    let header = ["ID", "STATE", "PROGRESS", "VERSION", "UPDATED", "MESSAGE"];
    let rows: Vec<[String; 6]> = records
        .iter()
        .map(|record| {
            [
                escape(&record.id),
                state_of(record),
                progress_text(&record.status),
                record.version.to_string(),
                format!("{} ago", short_age(record.updated_at.age_at(now))),
                message_of(&record.status).unwrap_or_default(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push_row = |cells: [&str; 6]| {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == cells.len() - 1 {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push_row(header);
    for row in &rows {
        push_row(row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ages() {
        assert_eq!(short_age(Duration::from_millis(900)), "0s");
        assert_eq!(short_age(Duration::from_secs(59)), "59s");
        assert_eq!(short_age(Duration::from_secs(125)), "2m");
        assert_eq!(short_age(Duration::from_secs(7200)), "2h");
        assert_eq!(short_age(Duration::from_secs(200_000)), "2d");
    }

    #[test]
    fn progress() {
        let status = json!({"progress": {"done": 40, "total": 160}});
        assert_eq!(progress_text(&status), "40/160 (25%)");
        assert_eq!(
            progress_bar(&status).as_deref(),
            Some("[#####---------------]")
        );
        assert_eq!(progress_text(&json!({"progress": {"done": 3}})), "3");
        assert_eq!(
            progress_text(&json!({"progress": {"done": 0, "total": 0}})),
            "0/0 (100%)"
        );
        assert_eq!(progress_text(&json!({"state": "x"})), "-");
        assert_eq!(
            progress_bar(&json!({"progress": {"done": 9, "total": 3}})).map(|b| b.len()),
            Some(22)
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("a\u{1b}]0;pwned\u{7}b"), "a\\u{1b}]0;pwned\\u{7}b");
        assert_eq!(escape("one\ntwo\rthree"), "one two\\u{d}three");
        assert_eq!(escape("\u{9b}2J \u{202e}x"), "\\u{9b}2J \\u{202e}x");
        assert_eq!(escape("plain ünïcode ✓"), "plain ünïcode ✓");
    }

    #[test]
    fn table_aligns_columns() {
        let record = |id: &str, message: &str| {
            crate::test_record::record(id, json!({"state": "running", "message": message}))
        };
        let text = table(
            &[record("a", "one"), record("longer-id", "two")],
            Timestamp::from_millis(5_000),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let column = |line: &str| line.find("running").or_else(|| line.find("STATE"));
        assert_eq!(column(lines[0]), column(lines[1]));
        assert_eq!(column(lines[1]), column(lines[2]));
        assert!(lines[2].ends_with("5s ago   two"), "{}", lines[2]);
    }
}
