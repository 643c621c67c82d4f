//! The work of a cleanup on Redis, under the sweep lock: each expired record (or index entry
//! whose key Redis expired already) is removed by a script only if unchanged since it was read.

use super::{BATCH, CommandError, RedisStorage, scripts};
use crate::error::Result;
use crate::storage::{CleanupOptions, CleanupProblem, CleanupReport};

impl RedisStorage {
    /// The work of a cleanup, under the sweep lock.
    pub(super) async fn sweep(&self, options: &CleanupOptions) -> Result<CleanupReport> {
        let mut report = CleanupReport {
            ran: true,
            ..CleanupReport::default()
        };
        let ids = self.indexed_ids().await?;
        let mut conn = self.conn();
        for chunk in ids.chunks(BATCH) {
            let (keys, values) = self.values_of(&mut conn, chunk).await?;
            let now = self.inner.clock.now();
            for ((id, key), value) in chunk.iter().zip(&keys).zip(values) {
                let expected = match &value {
                    // Redis expired it already; only its index entry is left.
                    None => Vec::new(),
                    Some(bytes) => match self.decode(id, bytes) {
                        Err(error) => {
                            report.errors.push(CleanupProblem {
                                id: Some(id.clone()),
                                message: error.to_string(),
                            });
                            continue;
                        }
                        Ok(record) => {
                            if !self.inner.ttl.is_expired_with(&record, now, options.ttl) {
                                report.kept += 1;
                                continue;
                            }
                            if options.dry_run {
                                report.removed.push(id.clone());
                                continue;
                            }
                            bytes.clone()
                        }
                    },
                };
                if options.dry_run {
                    continue;
                }
                let removed: Result<i64, _> = scripts::REMOVE_IF_UNCHANGED
                    .key(key)
                    .key(&self.inner.keys.index)
                    .arg(id)
                    .arg(&expected)
                    .arg(&self.inner.keys.channel)
                    .invoke_async(&mut conn)
                    .await;
                match removed {
                    Ok(1) if expected.is_empty() => report.leftovers_removed += 1,
                    Ok(1) => report.removed.push(id.clone()),
                    // Written again since it was read: live, so kept.
                    Ok(_) if !expected.is_empty() => report.kept += 1,
                    Ok(_) => {}
                    Err(source) => report.errors.push(CleanupProblem {
                        id: Some(id.clone()),
                        message: CommandError {
                            command: "cleanup script on",
                            key: key.clone(),
                            source,
                        }
                        .to_string(),
                    }),
                }
            }
        }
        report.removed.sort();
        Ok(report)
    }
}
