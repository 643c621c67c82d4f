//! A record as the store would hand it out, for the unit tests of the views.

use serde_json::Value;
use syncstatus::{Record, Timestamp};

/// The first version of `id`, written at the epoch, never expiring.
pub fn record(id: &str, status: Value) -> Record {
    Record {
        id: id.into(),
        version: 1,
        created_at: Timestamp::from_millis(0),
        updated_at: Timestamp::from_millis(0),
        expires_at: None,
        status,
    }
}
