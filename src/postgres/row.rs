//! Row decoding: records from the rows the statements return, and the typed error naming
//! the id and the table when a row cannot be read.

use serde_json::Value;
use tokio_postgres::types::Json;

use super::PostgresStorage;
use crate::error::{Error, Result};
use crate::record::{Record, Timestamp};

impl PostgresStorage {
    /// The error for a row of `id` that cannot be read, naming the table.
    pub(super) fn corrupt(
        &self,
        id: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Corrupt {
            id: id.to_string(),
            location: crate::Location::PostgresRow {
                table: self.inner.location.clone(),
            },
            source: source.into(),
        }
    }

    /// A record from a row of `id, version, created_at, updated_at, status, expires_at`.
    fn record_from_row(&self, row: &tokio_postgres::Row) -> Result<Record> {
        let id: String = row
            .try_get(0)
            .map_err(|error| self.corrupt("<unreadable id>", error))?;
        self.record_of(id, row, 1)
    }

    /// A record from a row of `version, created_at, updated_at, status, expires_at` starting
    /// at column `first`.
    pub(super) fn record_of(
        &self,
        id: String,
        row: &tokio_postgres::Row,
        first: usize,
    ) -> Result<Record> {
        let unsigned = |index: usize, what: &str| -> Result<u64> {
            let value: i64 = row
                .try_get(index)
                .map_err(|error| self.corrupt(&id, error))?;
            u64::try_from(value).map_err(|_| self.corrupt(&id, format!("negative {what}: {value}")))
        };
        let version = unsigned(first, "version")?;
        if version == 0 {
            return Err(self.corrupt(&id, "version 0 (versions start at 1)"));
        }
        let created_at = Timestamp::from_millis(unsigned(first + 1, "created_at")?);
        let updated_at = Timestamp::from_millis(unsigned(first + 2, "updated_at")?);
        let Json(status) = row
            .try_get::<_, Json<Value>>(first + 3)
            .map_err(|error| self.corrupt(&id, error))?;
        let expires_at = row
            .try_get::<_, Option<i64>>(first + 4)
            .map_err(|error| self.corrupt(&id, error))?
            .map(|millis| Timestamp::from_millis(u64::try_from(millis).unwrap_or(0)));
        Ok(Record {
            id,
            version,
            created_at,
            updated_at,
            expires_at,
            status,
        })
    }

    /// The records of `rows`, and an error per unreadable row.
    pub(super) fn records_from_rows(
        &self,
        rows: &[tokio_postgres::Row],
    ) -> (Vec<Record>, Vec<Error>) {
        let mut records = Vec::with_capacity(rows.len());
        let mut errors = Vec::new();
        for row in rows {
            match self.record_from_row(row) {
                Ok(record) => records.push(record),
                Err(error) => errors.push(error),
            }
        }
        (records, errors)
    }
}
