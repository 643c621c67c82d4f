//! The command line as clap parses it: the global store flags and every command.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use syncstatus::RecoveryPolicy;

use crate::fields::{self, FieldArgs};
use crate::{jobs, serve};

/// [`syncstatus::DEFAULT_STALE_AFTER`] as clap shows and parses it.
pub const DEFAULT_STALE_AFTER: &str = "60s";

const AFTER_HELP: &str = "\
Store:
  --dir DIR is short for --store file:DIR. Without either, $SYNCSTATUS_STORE is used, else
  file:./data/sync-status. Stores: a directory (./data/sync-status), file:DIR, memory:,
  redis://HOST:PORT/DB?prefix=P, postgres://USER@HOST/DB?table=T&schema=S.
  Only set and update create a missing store directory; the other commands say it is missing.

States:
  A state is a lowercase letter followed by lowercase letters, digits or _ (at most 32):
  pending, running, completed, failed, cancelled, or a word of your own.

Exit codes:
  0  success
  1  any other error
  2  usage or invalid input (unknown flag, invalid id or state, bad --data/--progress, bad
     store URL, a record over the size limit)
  3  not found (get, rm of a missing id; a store directory that does not exist)
  4  conflict (update --if-version lost, the record already exists, a job not in a state
     that allows the operation)
  5  store error (I/O, corrupt record or unusable status, lock timeout, server unreachable)
  6  stats --check found the store unhealthy (stale running jobs)

Unreadable records met by ls, cleanup or recover are reported on stderr, one line each,
and do not change the exit code.";

/// Read, write, clean up and watch job status.
#[derive(Parser, Debug)]
#[command(name = "syncstatus", version, after_help = AFTER_HELP, arg_required_else_help = true)]
pub struct Cli {
    /// The store to use, as a URL (default: $SYNCSTATUS_STORE, else file:./data/sync-status).
    #[arg(long, global = true, value_name = "URL", conflicts_with = "dir")]
    pub store: Option<String>,
    /// A file store directory; the same as --store file:DIR.
    #[arg(long, global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the status of ID, replacing what was there; prints the new version.
    Set {
        /// The job id.
        id: String,
        #[command(flatten)]
        fields: FieldArgs,
        /// Print the written record as JSON instead of its version.
        #[arg(long)]
        json: bool,
    },
    /// Merge the given fields into the status of ID (creating it if missing); prints the new
    /// version.
    ///
    /// Other fields of the status are kept. Without fields, rewrites the status as it is: a
    /// write, so the version grows and the record's TTL starts again.
    Update {
        /// The job id.
        id: String,
        /// Write only if the record is at version V now (exit code 4 otherwise). 0 means
        /// "only if it does not exist".
        #[arg(long, value_name = "V")]
        if_version: Option<u64>,
        #[command(flatten)]
        fields: FieldArgs,
        /// Print the written record as JSON instead of its version.
        #[arg(long)]
        json: bool,
    },
    /// Show the record of ID.
    Get {
        /// The job id.
        id: String,
        /// Print the record (id, version, created_at, updated_at, status) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the records.
    #[command(alias = "list")]
    Ls {
        /// Only records in this state.
        #[arg(long, value_name = "STATE", value_parser = fields::parse_state)]
        state: Option<String>,
        /// Only ids starting with this.
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
        /// Print the records as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Remove the record of ID.
    #[command(alias = "remove")]
    Rm {
        /// The job id.
        id: String,
    },
    /// Remove expired records (and leftovers of killed writers).
    Cleanup {
        /// Remove records not written for this long (`30s`, `5m`, `2h`) instead of the
        /// store's TTL policy.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Report what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Counts by state, stale running jobs, the oldest record's age, and health.
    Stats {
        /// A running job without a heartbeat for this long is stale.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
              default_value = DEFAULT_STALE_AFTER)]
        stale_after: Duration,
        /// Exit with code 6 when the store is not healthy (stale running jobs exist).
        #[arg(long)]
        check: bool,
        /// Print the stats as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Requeue running jobs whose worker stopped heartbeating.
    ///
    /// A job goes to failed instead after --max-attempts crashes in a row without progress,
    /// and to cancelled if a cancel was asked. Each move is a compare-and-set, so a worker
    /// that writes first keeps its job.
    Recover {
        /// A running job without a heartbeat for this long is stale.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
              default_value = DEFAULT_STALE_AFTER)]
        stale_after: Duration,
        /// A job goes to failed instead of pending once this many of its attempts in a row
        /// crashed without advancing its progress or checkpoint.
        #[arg(long, value_name = "N", default_value_t = RecoveryPolicy::default().max_attempts,
              value_parser = clap::value_parser!(u32).range(1..))]
        max_attempts: u32,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Job(jobs::JobCommand),
    /// Follow changes live until Ctrl-C (or until stdout closes).
    Watch {
        /// The ids to follow (default: every id).
        ids: Vec<String>,
        /// Follow only ids starting with this.
        #[arg(long, value_name = "PREFIX", conflicts_with = "ids")]
        prefix: Option<String>,
        /// Print one JSON object per line and per event instead of progress bars.
        #[arg(long)]
        json: bool,
    },
    /// Serve the store over HTTP until SIGTERM or Ctrl-C (see `syncstatus serve --help`).
    Serve(serve::ServeArgs),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_stale_limit_is_the_library_one() {
        assert_eq!(
            humantime::parse_duration(DEFAULT_STALE_AFTER).ok(),
            Some(syncstatus::DEFAULT_STALE_AFTER)
        );
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
