//! Reads of the Redis store: decoding a stored value, judging its expiry, and reading many
//! records (the index, then `MGET` in steps of [`BATCH`]) for `list`, cleanup and the watch.

use std::collections::BTreeSet;

use super::client::Conn;
use super::{BATCH, RedisStorage, command_error};
use crate::error::{Error, Result};
use crate::id::validate_id;
use crate::record::{Record, Timestamp};

impl RedisStorage {
    /// Parses a stored value of `id`.
    pub(super) fn decode(&self, id: &str, bytes: &[u8]) -> Result<Record> {
        let corrupt = |source: Box<dyn std::error::Error + Send + Sync>| Error::Corrupt {
            id: id.to_string(),
            location: crate::Location::RedisKey(self.inner.keys.record(id)),
            source,
        };
        let mut record: Record = serde_json::from_slice(bytes).map_err(|e| corrupt(Box::new(e)))?;
        // Values written before `expires_at` was stored expire by the policy, as Redis does
        // them (PX and the index score were set from it).
        if record.expires_at.is_none() {
            record.expires_at = self.inner.ttl.expires_at(&record.status, record.updated_at);
        }
        if record.id != id {
            return Err(corrupt(
                format!("the record names another id, `{}`", record.id).into(),
            ));
        }
        Ok(record)
    }

    /// The record in `bytes` unless it expired by the store's clock.
    pub(super) fn live(
        &self,
        id: &str,
        bytes: Option<&[u8]>,
        now: Timestamp,
    ) -> Result<Option<Record>> {
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let record = self.decode(id, bytes)?;
        Ok((!self.inner.ttl.is_expired(&record, now)).then_some(record))
    }

    /// The keys of `ids` (at most [`BATCH`]) and the value stored at each, in that order: one
    /// `MGET`.
    pub(super) async fn values_of(
        &self,
        conn: &mut Conn,
        ids: &[String],
    ) -> Result<(Vec<String>, Vec<Option<Vec<u8>>>)> {
        let keys: Vec<String> = ids.iter().map(|id| self.inner.keys.record(id)).collect();
        let values = redis::cmd("MGET")
            .arg(&keys)
            .query_async(conn)
            .await
            .map_err(command_error("MGET", &keys[0]))?;
        Ok((keys, values))
    }

    /// The live records of `ids`, in that order, as a result per id.
    pub(super) async fn read_many(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, Result<Option<Record>>)>> {
        let mut out = Vec::with_capacity(ids.len());
        let mut conn = self.conn();
        for chunk in ids.chunks(BATCH) {
            let (_, values) = self.values_of(&mut conn, chunk).await?;
            let now = self.inner.clock.now();
            for (id, value) in chunk.iter().zip(values) {
                out.push((id.clone(), self.live(id, value.as_deref(), now)));
            }
        }
        Ok(out)
    }

    /// Every id in the index (including ids of records Redis has expired since), sorted.
    pub(super) async fn indexed_ids(&self) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let index = &self.inner.keys.index;
        let mut ids = BTreeSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("ZSCAN")
                .arg(index)
                .arg(cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn)
                .await
                .map_err(command_error("ZSCAN", index))?;
            // The page alternates members and scores.
            for id in page.into_iter().step_by(2) {
                if validate_id(&id).is_ok() {
                    ids.insert(id);
                } else {
                    tracing::debug!(index = %index, id = %id.escape_debug(), "ignoring a foreign index entry");
                }
            }
            if next == 0 {
                return Ok(ids.into_iter().collect());
            }
            cursor = next;
        }
    }

    /// Every live record and an error per unreadable one.
    pub(super) async fn scan(&self) -> Result<(Vec<Record>, Vec<Error>)> {
        let ids = self.indexed_ids().await?;
        let mut records = Vec::new();
        let mut errors = Vec::new();
        for (_, result) in self.read_many(&ids).await? {
            match result {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(error) => errors.push(error),
            }
        }
        Ok((records, errors))
    }
}
