//! Names and statements of one store's table.
//!
//! Table and schema names come from users and URLs, so they pass an allowlist and are always
//! quoted; everything else reaches the server as a bound parameter.

use crate::error::{Error, Result};

/// The longest table name accepted: leaves room for index-name suffixes within PostgreSQL's
/// 63-byte identifier limit (longer names would be cut silently and could collide).
pub(super) const MAX_TABLE_LEN: usize = 48;
/// The highest version a row reaches: the top of the `bigint` column. The writing statements
/// leave a row at it alone (an overflow would be a server error), and the store then answers
/// [`Error::VersionExhausted`].
pub(super) const MAX_VERSION: u64 = i64::MAX as u64;
/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
pub(super) const MAX_IDENTIFIER_LEN: usize = 63;

/// Checks a table or schema name: ASCII letters, digits and `_`, not starting with a digit,
/// at most `max` bytes, and not in the `pg_` namespace the server reserves.
pub(super) fn validate_identifier(kind: &str, name: &str, max: usize) -> Result<()> {
    let problem = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name.len() > max {
        Some(format!("it is longer than {max} bytes"))
    } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Some("only ASCII letters, digits and '_' are allowed".to_string())
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        Some("it starts with a digit".to_string())
    } else if name.to_ascii_lowercase().starts_with("pg_") {
        Some("names starting with `pg_` are reserved by PostgreSQL".to_string())
    } else {
        None
    };
    match problem {
        Some(reason) => Err(Error::Config(format!(
            "invalid PostgreSQL {kind} name {name:?}: {reason}"
        ))),
        None => Ok(()),
    }
}

/// FNV-1a, 64 bits: a hash that is the same in every process and release, for advisory lock
/// keys and long channel names that several processes must agree on.
pub(super) fn stable_hash(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// An advisory lock key as PostgreSQL takes it (a signed 64-bit integer).
pub(super) fn lock_key(parts: &[&str]) -> i64 {
    i64::from_ne_bytes(stable_hash(parts).to_ne_bytes())
}

/// Cuts `text` to at most `max` bytes (all of it is ASCII here, so any cut is a boundary).
pub(super) fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Escapes `prefix` for a `LIKE` pattern and appends the wildcard.
pub(super) fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The SQL text every operation of one table uses, built once.
#[derive(Debug)]
pub(super) struct Statements {
    pub(super) qualified: String,
    /// The table where watchers register; writers notify only while it has rows.
    pub(super) listeners: String,
    pub(super) register_listener: String,
    pub(super) deregister_listener: String,
    pub(super) purge_listeners: String,
    pub(super) wait_for_writers: String,
    pub(super) get: String,
    pub(super) put_overwrite: String,
    pub(super) put_create: String,
    pub(super) put_update: String,
    pub(super) live_version: String,
    pub(super) delete: String,
    pub(super) count_by_state: String,
    pub(super) fetch_many: String,
    pub(super) scan: String,
    pub(super) sweep_by_policy: String,
    pub(super) sweep_by_age: String,
    pub(super) expired_by_policy: String,
    pub(super) expired_by_age: String,
    pub(super) kept_by_policy: String,
    pub(super) kept_by_age: String,
}

/// How many rows one cleanup statement removes, so a large sweep never holds many row locks
/// or one long transaction.
pub(super) const SWEEP_BATCH: i64 = 1000;

const COLUMNS: &str = "id, version, created_at, updated_at, status, expires_at";
/// The server's time in Unix milliseconds, the clock of watcher leases.
const SERVER_NOW_MS: &str = "(extract(epoch FROM now()) * 1000)::bigint";
/// Live at `$2` (the store's clock, never the server's `now()`).
const LIVE_AT_2: &str = "(expires_at IS NULL OR expires_at > $2)";

impl Statements {
    pub(super) fn new(schema: &str, table: &str) -> Self {
        let t = format!("\"{schema}\".\"{table}\"");
        let l = format!("\"{schema}\".\"{table}_listeners\"");
        // NOTIFY serializes the commits of every transaction that sends one, cluster-wide,
        // fsync included; so writes notify only while some watcher is registered. The check
        // is in the writing statement, and a new watcher waits for writers in flight before
        // its first scan (see `wait_for_writers`), so no write falls between the two.
        //
        // A registration counts while its lease runs (by the server's clock, which every
        // process shares): a watcher killed without deregistering stops costing writers a
        // NOTIFY once its lease ends, without waiting for a purge. Rows without a lease come
        // from an older release and count until purged.
        let notify = |channel: &str, payload: &str| {
            format!(
                "CASE WHEN EXISTS (SELECT 1 FROM {l} WHERE lease_until IS NULL OR lease_until > \
                 {SERVER_NOW_MS}) THEN pg_notify({channel}, {payload}) END"
            )
        };
        let notify_write = notify("$5", "$1 || ':' || version");
        // The notification is sent from RETURNING: in the writing statement itself, once per
        // row written, and only if a row was.
        // Writes: $1 id, $2 now, $3 expires_at, $4 status, $5 channel, $6 expected version.
        // A row expired at $2 counts as absent: writing onto it starts a new incarnation.
        let upsert = |condition: &str| {
            format!(
                "INSERT INTO {t} AS r (id, version, created_at, updated_at, expires_at, status)
                    VALUES ($1, 1, $2, $2, $3, $4)
                    ON CONFLICT (id) DO UPDATE SET
                        version = CASE WHEN r.expires_at <= $2 THEN 1 ELSE r.version + 1 END,
                        created_at = CASE WHEN r.expires_at <= $2 THEN $2 ELSE r.created_at END,
                        updated_at = $2,
                        expires_at = $3,
                        status = $4
                    {condition}
                    RETURNING version, created_at, {notify_write}"
            )
        };
        let notify_sweep = notify("$2", "id || ':0'");
        let sweep = |expired: &str| {
            format!(
                "DELETE FROM {t} WHERE id IN (
                    SELECT id FROM {t} WHERE {expired}
                    LIMIT {SWEEP_BATCH} FOR UPDATE SKIP LOCKED
                ) AND {expired}
                RETURNING id, {notify_sweep}"
            )
        };
        // Cleanup: $1 is the current time (policy) or the cut-off time (explicit TTL).
        let by_policy = "expires_at <= $1";
        let by_age = "updated_at <= $1";
        Statements {
            // The id is known: not sent back.
            get: format!(
                "SELECT version, created_at, updated_at, status, expires_at FROM {t}
                WHERE id = $1 AND {LIVE_AT_2}"
            ),
            put_overwrite: upsert(&format!(
                "WHERE r.expires_at <= $2 OR r.version < {MAX_VERSION}"
            )),
            put_create: upsert("WHERE r.expires_at <= $2"),
            put_update: format!(
                "UPDATE {t} SET version = version + 1, updated_at = $2, expires_at = $3,
                    status = $4
                WHERE id = $1 AND version = $6 AND version < {MAX_VERSION} AND {LIVE_AT_2}
                RETURNING version, created_at, {notify_write}"
            ),
            live_version: format!("SELECT version FROM {t} WHERE id = $1 AND {LIVE_AT_2}"),
            // $1 id, $2 now, $3 channel.
            delete: format!(
                "DELETE FROM {t} WHERE id = $1 RETURNING {LIVE_AT_2}, {}",
                notify("$3", "$1 || ':0'")
            ),
            count_by_state: format!(
                "SELECT coalesce(state, ''), count(*) FROM {t}
                WHERE (expires_at IS NULL OR expires_at > $1) GROUP BY 1"
            ),
            fetch_many: format!("SELECT {COLUMNS} FROM {t} WHERE id = ANY($1) AND {LIVE_AT_2}"),
            scan: format!(
                "SELECT {COLUMNS} FROM {t} WHERE (expires_at IS NULL OR expires_at > $1)
                ORDER BY id"
            ),
            sweep_by_policy: sweep(by_policy),
            sweep_by_age: sweep(by_age),
            expired_by_policy: format!("SELECT id FROM {t} WHERE {by_policy} ORDER BY id"),
            expired_by_age: format!("SELECT id FROM {t} WHERE {by_age} ORDER BY id"),
            kept_by_policy: format!("SELECT count(*) FROM {t} WHERE ({by_policy}) IS NOT TRUE"),
            kept_by_age: format!("SELECT count(*) FROM {t} WHERE ({by_age}) IS NOT TRUE"),
            // On the listening connection itself, so the row names its backend. $1 since,
            // $2 the lease in milliseconds. Returns the backend and whether the lease it
            // renews was still running: if not, writers may have skipped notifying.
            register_listener: format!(
                "WITH old AS (SELECT lease_until FROM {l} WHERE pid = pg_backend_pid())
                INSERT INTO {l} (pid, since, lease_until)
                    VALUES (pg_backend_pid(), $1, {SERVER_NOW_MS} + $2)
                ON CONFLICT (pid) DO UPDATE SET lease_until = EXCLUDED.lease_until
                RETURNING pid, coalesce(
                    (SELECT lease_until IS NULL OR lease_until > {SERVER_NOW_MS} FROM old),
                    false
                )"
            ),
            deregister_listener: format!("DELETE FROM {l} WHERE pid = $1"),
            // Registrations of sessions that ended without deregistering (a killed process)
            // or whose lease ran out (a frozen one, which renews and resyncs if it wakes).
            purge_listeners: format!(
                "DELETE FROM {l} WHERE pid NOT IN (SELECT pid FROM pg_stat_activity)
                    OR lease_until <= {SERVER_NOW_MS}"
            ),
            // SHARE conflicts with the ROW EXCLUSIVE lock every write holds from before its
            // snapshot until its commit: taking it waits out every writer that may have
            // checked for watchers before this one registered.
            wait_for_writers: format!("BEGIN; LOCK TABLE {t} IN SHARE MODE; COMMIT"),
            listeners: l,
            qualified: t,
        }
    }

    /// A listing query: `$1` is the time, then the state and the prefix pattern if filtered.
    pub(super) fn list(&self, by_state: bool, by_prefix: bool) -> String {
        let mut sql = format!(
            "SELECT {COLUMNS} FROM {} WHERE (expires_at IS NULL OR expires_at > $1)",
            self.qualified
        );
        let mut next = 2;
        if by_state {
            sql.push_str(&format!(" AND state = ${next}"));
            next += 1;
        }
        if by_prefix {
            sql.push_str(&format!(" AND id LIKE ${next}"));
        }
        sql.push_str(" ORDER BY id");
        sql
    }

    /// The migration: the table and its index. Run under a transaction-level advisory lock
    /// so that stores starting at once do not race on the catalog (concurrent `IF NOT EXISTS`
    /// can still collide on the catalog's unique indexes).
    ///
    /// `expires_at` has no index on purpose: every write changes it, and an update that
    /// changes an indexed column cannot be a HOT update, so each write would add entries to
    /// every index. Without it, and with room left on each page (`fillfactor`), a write that
    /// keeps its state updates in place; cleanups, rare and batched, scan instead.
    pub(super) fn migration(&self, table: &str) -> String {
        let t = &self.qualified;
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                id text COLLATE \"C\" PRIMARY KEY,
                version bigint NOT NULL,
                created_at bigint NOT NULL,
                updated_at bigint NOT NULL,
                expires_at bigint,
                status jsonb NOT NULL,
                state text GENERATED ALWAYS AS (
                    CASE WHEN jsonb_typeof(status -> 'state') = 'string'
                    THEN status ->> 'state' END
                ) STORED
            ) WITH (fillfactor = 80);
            CREATE INDEX IF NOT EXISTS \"{table}_state_idx\" ON {t} (state, id);
            CREATE TABLE IF NOT EXISTS {l} (pid integer PRIMARY KEY, since bigint NOT NULL);
            ALTER TABLE {l} ADD COLUMN IF NOT EXISTS lease_until bigint;",
            l = self.listeners
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_an_allowlist() {
        for good in ["jobs", "sync_status", "_x", "Jobs2"] {
            assert!(
                validate_identifier("table", good, MAX_TABLE_LEN).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "",
            "1jobs",
            "a-b",
            "a\"b",
            "a;drop table x",
            "a b",
            "é",
            "pg_catalog",
            &"x".repeat(49),
        ] {
            assert!(
                matches!(
                    validate_identifier("table", bad, MAX_TABLE_LEN),
                    Err(Error::Config(_))
                ),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn like_prefix_escapes_wildcards() {
        assert_eq!(like_prefix("a_b%c\\"), "a\\_b\\%c\\\\%");
        assert_eq!(like_prefix(""), "%");
    }

    #[test]
    fn stable_hash_is_stable() {
        // Fixed expectations: other processes and releases must compute the same keys.
        assert_eq!(stable_hash(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(&["a"]), stable_hash(&["a"]));
        assert_ne!(stable_hash(&["a", "b"]), stable_hash(&["ab"]));
    }
}
