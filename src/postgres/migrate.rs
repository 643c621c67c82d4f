//! The migration: the schema, tables and index, created on first use under an advisory lock
//! so that replicas starting at once do not collide.

use super::sql::lock_key;
use super::{PostgresStorage, backend_error};
use crate::error::Result;

impl PostgresStorage {
    /// Creates what is missing; a table that already exists is left as it is.
    pub(super) async fn migrate(&self) -> Result<()> {
        let mut client = self.client().await?;
        // Checked first so a role without DDL rights can use a table made for it.
        let exists: bool = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL",
                &[
                    &self.inner.statements.qualified,
                    &self.inner.statements.listeners,
                ],
            )
            .await
            .map_err(backend_error)?
            .get(0);
        if exists {
            return Ok(());
        }
        let transaction = client.transaction().await.map_err(backend_error)?;
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&lock_key(&["syncstatus", "migrate"])],
            )
            .await
            .map_err(backend_error)?;
        let schema_exists: bool = transaction
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&self.inner.schema],
            )
            .await
            .map_err(backend_error)?
            .get(0);
        if !schema_exists {
            transaction
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS \"{}\"",
                    self.inner.schema
                ))
                .await
                .map_err(backend_error)?;
        }
        transaction
            .batch_execute(&self.inner.migration)
            .await
            .map_err(backend_error)?;
        transaction.commit().await.map_err(backend_error)
    }
}
