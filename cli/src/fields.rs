//! The status fields `set` and `update` write, parsed from flags.

use clap::Args;
use serde_json::{Map, Value, json};
use syncstatus::{Error, Timestamp};

/// The fields of a status that can be given on the command line.
#[derive(Args, Debug, Clone, Default)]
pub struct FieldArgs {
    /// The `state` field: pending, running, completed, failed, cancelled (or a word of your
    /// own: a lowercase letter, then lowercase letters, digits or `_`).
    #[arg(long, value_name = "STATE", value_parser = parse_state)]
    pub state: Option<String>,
    /// The `progress` field: `DONE/TOTAL` (`40/600`), `DONE` (total unknown), a fraction
    /// (`0.4`, stored as 40/100) or a percentage (`40%`, stored as 40/100).
    // Hyphen values reach the parser, which says what is wrong with `-1`, instead of clap
    // taking it for an unknown flag.
    #[arg(long, value_name = "PROGRESS", value_parser = parse_progress, allow_hyphen_values = true)]
    pub progress: Option<Value>,
    /// The `message` field, a line for people.
    #[arg(long, value_name = "TEXT")]
    pub message: Option<String>,
    /// The `data` field: any JSON value (`'{"pages": 600}'`).
    #[arg(long, value_name = "JSON", value_parser = parse_json)]
    pub data: Option<Value>,
    /// Set `heartbeat_at` to now (what lifecycle tools judge staleness of running jobs by).
    #[arg(long)]
    pub heartbeat: bool,
}

impl FieldArgs {
    /// The given fields as a JSON object.
    pub fn to_map(&self, now: Timestamp) -> Map<String, Value> {
        let mut map = Map::new();
        if let Some(state) = &self.state {
            map.insert("state".into(), Value::String(state.clone()));
        }
        if let Some(progress) = &self.progress {
            map.insert("progress".into(), progress.clone());
        }
        if let Some(message) = &self.message {
            map.insert("message".into(), Value::String(message.clone()));
        }
        if let Some(data) = &self.data {
            map.insert("data".into(), data.clone());
        }
        if self.heartbeat {
            map.insert("heartbeat_at".into(), Value::String(now.to_string()));
        }
        map
    }

    /// The given fields merged into `current` (top-level keys replaced, others kept).
    pub fn merge_into(
        &self,
        id: &str,
        current: Option<&Value>,
        now: Timestamp,
    ) -> Result<Value, Error> {
        let fields = self.to_map(now);
        let mut status = match current {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            // Nothing to merge: the write keeps the status as it is, whatever its shape.
            Some(other) if fields.is_empty() => return Ok(other.clone()),
            Some(_) => {
                return Err(Error::InvalidStatus {
                    id: id.to_string(),
                    reason: "it is not a JSON object, so fields cannot be merged into it; use `set` to replace it".into(),
                });
            }
        };
        status.extend(fields);
        Ok(Value::Object(status))
    }
}

/// Parses `--state` (and `ls --state`): the grammar of [`syncstatus::validate_state`].
pub fn parse_state(text: &str) -> Result<String, String> {
    match syncstatus::validate_state(text) {
        Ok(()) => Ok(text.to_string()),
        Err(Error::Config(why)) => Err(why),
        Err(other) => Err(other.to_string()),
    }
}

/// Parses `--progress`.
pub fn parse_progress(text: &str) -> Result<Value, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!(
            "progress `{text}` is negative (expected DONE/TOTAL like 40/600, DONE, a fraction like 0.4 or a percentage like 40%, none below zero)"
        ));
    }
    let bad = || {
        format!(
            "`{text}` is not a progress (expected DONE/TOTAL like 40/600, DONE, a fraction like 0.4 or a percentage like 40%)"
        )
    };
    if let Some((done, total)) = text.split_once('/') {
        let done: u64 = done.trim().parse().map_err(|_| bad())?;
        let total: u64 = total.trim().parse().map_err(|_| bad())?;
        if done > total {
            return Err(format!("progress `{text}`: done is more than the total"));
        }
        return Ok(json!({ "done": done, "total": total }));
    }
    if let Some(percent) = text.strip_suffix('%') {
        let percent: f64 = percent.trim().parse().map_err(|_| bad())?;
        return percent_progress(percent, text);
    }
    if text.contains(['.', 'e', 'E']) {
        let fraction: f64 = text.parse().map_err(|_| bad())?;
        return percent_progress(fraction * 100.0, text);
    }
    let done: u64 = text.parse().map_err(|_| bad())?;
    Ok(json!({ "done": done }))
}

fn percent_progress(percent: f64, text: &str) -> Result<Value, String> {
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("progress `{text}` is outside 0..100%"));
    }
    // Hundredths keep the stored shape the same as DONE/TOTAL, which every reader understands.
    let done = percent.round() as u64;
    Ok(json!({ "done": done, "total": 100 }))
}

/// Parses `--data`.
pub fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|error| format!("not valid JSON: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_forms() {
        assert_eq!(
            parse_progress("40/600"),
            Ok(json!({"done": 40, "total": 600}))
        );
        assert_eq!(parse_progress("7"), Ok(json!({"done": 7})));
        assert_eq!(parse_progress("0.4"), Ok(json!({"done": 40, "total": 100})));
        assert_eq!(
            parse_progress("1.0"),
            Ok(json!({"done": 100, "total": 100}))
        );
        assert_eq!(
            parse_progress("12.5%"),
            Ok(json!({"done": 13, "total": 100}))
        );
        for bad in ["", "a/b", "5/3", "1.5", "-1", "150%", "NaN", "0.4.1", "/"] {
            assert!(parse_progress(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn merge_keeps_other_fields() {
        let fields = FieldArgs {
            message: Some("page 5".into()),
            ..FieldArgs::default()
        };
        let current = json!({"state": "running", "message": "page 4", "attempt": 2});
        let merged = fields
            .merge_into("a", Some(&current), Timestamp::from_millis(0))
            .map_err(|error| error.to_string());
        assert_eq!(
            merged,
            Ok(json!({"state": "running", "message": "page 5", "attempt": 2}))
        );
        assert!(
            fields
                .merge_into("a", Some(&json!(3)), Timestamp::from_millis(0))
                .is_err()
        );
    }
}
