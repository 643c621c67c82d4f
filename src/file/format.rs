//! The record file format: parsing a whole record, or only its head (everything but the
//! status) when that is all a write or a sweep needs.
//!
//! A file holds the envelope of [`Record`] in its key order (`id`, `version`, `created_at`,
//! `updated_at`, `expires_at`, `status`), so the head is read from the first bytes of the
//! file and a multi-megabyte status is never parsed to learn a version. Files that do not
//! follow that order (written by hand, by another tool, by an older version without
//! `expires_at`) are parsed whole, which is always correct, only slower.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::record::{Record, Timestamp};
use crate::ttl::TtlPolicy;

/// How many bytes of a file are read first, hoping they hold the whole head. The head of an
/// envelope is under 300 bytes (ids are at most 128 bytes).
pub(crate) const HEAD_PREFIX: usize = 1024;

/// What a write needs of the record it replaces, and a sweep of the record it judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) version: u64,
    pub(crate) created_at: Timestamp,
    pub(crate) updated_at: Timestamp,
    pub(crate) expires_at: Option<Timestamp>,
}

impl Head {
    pub(crate) fn of(record: &Record) -> Self {
        Head {
            version: record.version,
            created_at: record.created_at,
            updated_at: record.updated_at,
            expires_at: record.expires_at,
        }
    }

    /// Whether the record has expired at `now`: by `override_ttl` after its last write when
    /// given (a cleanup asked for a TTL of its own), else by its `expires_at`.
    pub(crate) fn is_expired(
        &self,
        now: Timestamp,
        override_ttl: Option<std::time::Duration>,
    ) -> bool {
        match override_ttl {
            Some(ttl) => self.updated_at.saturating_add(ttl) <= now,
            None => self.expires_at.is_some_and(|at| at <= now),
        }
    }
}

/// The envelope as it is on disk. `expires_at` is kept apart from `null` when absent: files
/// written before it existed (or by tools that leave it out) are judged by the reading
/// store's TTL policy, while `null` means "never expires".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    id: String,
    version: u64,
    #[serde(default)]
    created_at: Timestamp,
    updated_at: Timestamp,
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<Timestamp>>,
    status: Value,
}

fn present<'de, D: de::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<Option<Timestamp>>, D::Error> {
    Option::<Timestamp>::deserialize(deserializer).map(Some)
}

/// Parses a whole record file. Files in the envelope format must name `id`; any other JSON
/// object is taken as a plain status written by another tool (version 0, times from
/// `file_time`). An envelope without `expires_at`, and a plain status, expire by `ttl`.
pub(crate) fn parse_record(
    id: &str,
    path: &Path,
    bytes: &[u8],
    ttl: &TtlPolicy,
    file_time: impl FnOnce() -> Timestamp,
) -> Result<Record> {
    let corrupt = |source: Box<dyn std::error::Error + Send + Sync>| Error::Corrupt {
        id: id.to_string(),
        location: crate::Location::File(path.to_path_buf()),
        source,
    };
    // The common case, one pass: our own envelope.
    let envelope = match serde_json::from_slice::<Envelope>(bytes) {
        Ok(envelope) => envelope,
        Err(envelope_error) => {
            let value: Value = serde_json::from_slice(bytes).map_err(|e| corrupt(Box::new(e)))?;
            let Value::Object(map) = value else {
                return Err(corrupt("the file holds JSON that is not an object".into()));
            };
            let is_envelope = ["id", "version", "status"]
                .iter()
                .all(|key| map.contains_key(*key));
            if is_envelope {
                return Err(corrupt(Box::new(envelope_error)));
            }
            let time = file_time();
            let status = Value::Object(map);
            return Ok(Record {
                id: id.to_string(),
                version: 0,
                created_at: time,
                updated_at: time,
                expires_at: ttl.expires_at(&status, time),
                status,
            });
        }
    };
    if envelope.id != id {
        return Err(corrupt(
            format!("the file holds the record of id `{}`", envelope.id).into(),
        ));
    }
    let expires_at = envelope
        .expires_at
        .unwrap_or_else(|| ttl.expires_at(&envelope.status, envelope.updated_at));
    Ok(Record {
        id: envelope.id,
        version: envelope.version,
        created_at: envelope.created_at,
        updated_at: envelope.updated_at,
        expires_at,
        status: envelope.status,
    })
}

/// The head of the envelope of `id` from the first bytes of its file, if they hold all of
/// it before the status. `None` means "parse the whole file": another key order, a missing
/// `expires_at`, a plain status, a head longer than `bytes`, or a file that is no envelope
/// (the whole parse then says what is wrong with it).
pub(crate) fn parse_head(id: &str, bytes: &[u8]) -> Option<Head> {
    let mut head = None;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    // The visitor stops at the `status` key by returning an error, after it has put the
    // head aside: serde has no other way to leave a map half-read, and the rest of the file
    // (possibly megabytes, possibly not even in `bytes`) is exactly what must not be read.
    let _ = de::Deserializer::deserialize_map(
        &mut deserializer,
        HeadVisitor {
            id,
            head: &mut head,
        },
    );
    head
}

struct HeadVisitor<'a> {
    id: &'a str,
    head: &'a mut Option<Head>,
}

impl<'de> Visitor<'de> for HeadVisitor<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a record envelope")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let mut id_matches = false;
        let mut version = None;
        let mut created_at = Timestamp::default();
        let mut updated_at = None;
        let mut expires_at = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "id" => id_matches = map.next_value::<std::borrow::Cow<'de, str>>()? == self.id,
                "version" => version = Some(map.next_value::<u64>()?),
                "created_at" => created_at = map.next_value()?,
                "updated_at" => updated_at = Some(map.next_value()?),
                "expires_at" => expires_at = Some(map.next_value::<Option<Timestamp>>()?),
                "status" => {
                    if let (true, Some(version), Some(updated_at), Some(expires_at)) =
                        (id_matches, version, updated_at, expires_at)
                    {
                        *self.head = Some(Head {
                            version,
                            created_at,
                            updated_at,
                            expires_at,
                        });
                    }
                    return Err(de::Error::custom("the head ends here"));
                }
                _ => return Err(de::Error::custom("not an envelope key")),
            }
        }
        Err(de::Error::custom("an envelope without a status"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope_bytes(id: &str, expires_at: Option<Timestamp>, status: Value) -> Vec<u8> {
        let record = Record {
            id: id.into(),
            version: 7,
            created_at: Timestamp::from_millis(1_000),
            updated_at: Timestamp::from_millis(2_000),
            expires_at,
            status,
        };
        serde_json::to_vec_pretty(&record).unwrap()
    }

    #[test]
    fn the_head_is_read_without_the_status() {
        let at = Some(Timestamp::from_millis(9_000));
        let bytes = envelope_bytes("job-1", at, json!({"state": "running"}));
        // Cut inside the status: the head must still be found.
        let cut = bytes.iter().position(|&b| b == b'{').unwrap();
        let status_at = bytes.windows(8).position(|w| w == b"\"status\"").unwrap();
        assert!(cut < status_at);
        let head = parse_head("job-1", &bytes[..status_at + 12]).unwrap();
        assert_eq!(
            head,
            Head {
                version: 7,
                created_at: Timestamp::from_millis(1_000),
                updated_at: Timestamp::from_millis(2_000),
                expires_at: at,
            }
        );
        let never = envelope_bytes("job-1", None, json!({}));
        assert_eq!(parse_head("job-1", &never).unwrap().expires_at, None);
    }

    #[test]
    fn anything_but_a_complete_head_of_the_right_id_is_left_to_the_whole_parse() {
        let bytes = envelope_bytes("job-1", None, json!({}));
        assert_eq!(parse_head("job-2", &bytes), None, "another id");
        assert_eq!(parse_head("job-1", &bytes[..20]), None, "cut in the head");
        let old = br#"{"id":"job-1","version":3,"updated_at":"2026-01-01T00:00:00Z","status":{}}"#;
        assert_eq!(
            parse_head("job-1", old),
            None,
            "no expires_at: the policy decides"
        );
        let reordered = br#"{"status":{},"id":"job-1","version":3,"updated_at":"2026-01-01T00:00:00Z","expires_at":null}"#;
        assert_eq!(parse_head("job-1", reordered), None);
        assert_eq!(
            parse_head("job-1", br#"{"state":"running"}"#),
            None,
            "plain status"
        );
        assert_eq!(parse_head("job-1", b"not json"), None);
    }

    #[test]
    fn a_missing_expires_at_is_judged_by_the_policy_and_null_means_never() {
        let policy = TtlPolicy::uniform(std::time::Duration::from_secs(10));
        let path = Path::new("job-1.json");
        let old = br#"{"id":"job-1","version":3,"updated_at":"1970-01-01T00:00:02Z","status":{}}"#;
        let record = parse_record("job-1", path, old, &policy, Timestamp::default).unwrap();
        assert_eq!(record.expires_at, Some(Timestamp::from_millis(12_000)));
        let never = envelope_bytes("job-1", None, json!({}));
        let record = parse_record("job-1", path, &never, &policy, Timestamp::default).unwrap();
        assert_eq!(record.expires_at, None);
        let plain = br#"{"state":"running"}"#;
        let record = parse_record("job-1", path, plain, &policy, || {
            Timestamp::from_millis(5_000)
        })
        .unwrap();
        assert_eq!(record.version, 0);
        assert_eq!(record.expires_at, Some(Timestamp::from_millis(15_000)));
    }
}
