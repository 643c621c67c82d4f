//! `syncstatus`: read, write, clean up and watch job status from the shell.

mod batch;
mod failure;
mod fields;
mod jobs;
mod render;
mod serve;
mod watch;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;
use serde_json::Value;
use syncstatus::{
    CleanupOptions, DynSyncStorage, Error, ListFilter, PutMode, Record, RecoveryAction,
    RecoveryPolicy, StoreUrl, SyncStorageExt, validate_id,
};

/// [`syncstatus::DEFAULT_STALE_AFTER`] as clap shows and parses it.
const DEFAULT_STALE_AFTER: &str = "60s";

use failure::{Failure, one_line, printable};
use fields::FieldArgs;

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
struct Cli {
    /// The store to use, as a URL (default: $SYNCSTATUS_STORE, else file:./data/sync-status).
    #[arg(long, global = true, value_name = "URL", conflicts_with = "dir")]
    store: Option<String>,
    /// A file store directory; the same as --store file:DIR.
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error)
            if error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            // Bare `syncstatus`: the help as written, on stderr, since nothing was done.
            let _ = error.print();
            return ExitCode::from(failure::code::USAGE);
        }
        Err(error) => {
            return fail(&Failure::usage(format!(
                "{} (see `syncstatus --help`)",
                clap_one_line(&error)
            )));
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return fail(&Failure {
                code: failure::code::OTHER,
                message: format!("cannot start the async runtime: {error}"),
            });
        }
    };
    let mut output = Output::default();
    let result = runtime.block_on(run(cli, &mut output));
    // Nothing is in flight any more; a blocking task of a store's watcher must not hold up
    // the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    for warning in &output.warnings {
        warn(warning);
    }
    match print(&output.stdout).and(result) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => fail(&failure),
    }
}

/// clap's usage error on one line, without its usage and "for more information" lines.
fn clap_one_line(error: &clap::Error) -> String {
    let text = error.to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| {
            !(line.is_empty()
                || line.starts_with("Usage:")
                || line.starts_with("For more information")
                || line.starts_with("tip:"))
        })
        .collect();
    let line = parts.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

fn fail(failure: &Failure) -> ExitCode {
    let _ = writeln!(io::stderr(), "syncstatus: {}", printable(&failure.message));
    failure.exit_code()
}

/// Prints a warning that does not fail the command.
fn warn(message: &str) {
    let _ = writeln!(io::stderr(), "syncstatus: warning: {}", printable(message));
}

/// Prints the command's output. A closed stdout (`| head`) is not an error.
fn print(output: &str) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => Err(Failure {
            code: failure::code::OTHER,
            message: format!("cannot write to stdout: {error}"),
        }),
        _ => Ok(()),
    }
}

/// The store to open: `--dir`, else `--store`, else `$SYNCSTATUS_STORE`, else the default.
fn store_url(cli: &Cli) -> Result<StoreUrl, Failure> {
    if let Some(dir) = &cli.dir {
        return Ok(StoreUrl::File(dir.clone()));
    }
    let text = cli
        .store
        .clone()
        .or_else(|| {
            std::env::var("SYNCSTATUS_STORE")
                .ok()
                .filter(|url| !url.is_empty())
        })
        .unwrap_or_else(|| syncstatus::DEFAULT_STORE_URL.to_string());
    failure::hide_password_of(&text);
    Ok(StoreUrl::parse(&text)?)
}

/// Opens the store. Only the commands that write a status create a missing file store
/// directory: for the others, a mistyped `--dir` must fail rather than leave an empty store.
async fn open_store(cli: &Cli) -> Result<DynSyncStorage, Failure> {
    let url = store_url(cli)?;
    let may_create = matches!(cli.command, Command::Set { .. } | Command::Update { .. });
    let opened = if may_create {
        url.open().await
    } else {
        url.open_existing().await
    };
    opened.map_err(|error| {
        let missing = !may_create
            && matches!(&error, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound);
        let mut failure = Failure::from(error);
        if missing {
            failure.code = failure::code::NOT_FOUND;
        }
        let shown = url.redacted();
        if !failure.message.contains(&shown) {
            failure.message = format!("cannot open store `{shown}`: {}", failure.message);
        }
        failure
    })
}

/// What a command prints once it is done, outside the async runtime (terminal writes block).
#[derive(Debug, Default)]
struct Output {
    /// For stdout.
    stdout: String,
    /// For stderr, one line each, before stdout.
    warnings: Vec<String>,
}

/// Runs the command, leaving what to print in `out`. A command may fail after filling
/// `out.stdout` (`stats --check`): both are printed.
async fn run(cli: Cli, out: &mut Output) -> Result<(), Failure> {
    // Ids are checked before the store is opened, so a bad id touches nothing (opening a
    // file store creates its directory).
    match &cli.command {
        Command::Set { id, .. }
        | Command::Update { id, .. }
        | Command::Get { id, .. }
        | Command::Rm { id } => validate_id(id)?,
        Command::Job(command) => validate_id(command.id())?,
        Command::Watch { ids, .. } => ids.iter().try_for_each(|id| validate_id(id))?,
        Command::Ls { .. }
        | Command::Cleanup { .. }
        | Command::Stats { .. }
        | Command::Recover { .. }
        | Command::Serve(_) => {}
    }
    let store = open_store(&cli).await?;
    out.stdout = match cli.command {
        Command::Set { id, fields, json } => {
            let status = Value::Object(fields.to_map(store.now()));
            let record = store.put(&id, status, PutMode::Overwrite).await?;
            written(&record, json)?
        }
        Command::Update {
            id,
            if_version,
            fields,
            json,
        } => {
            let record = update(&store, &id, if_version, &fields).await?;
            written(&record, json)?
        }
        Command::Job(command) => jobs::run(&store, command).await?,
        Command::Get { id, json } => {
            let record = store.get_required(&id).await?;
            if json {
                pretty(&record)?
            } else {
                render::record_view(&record, store.now())
            }
        }
        Command::Ls {
            state,
            prefix,
            json,
        } => {
            let listing = store.list(&ListFilter { state, prefix }).await?;
            out.warnings
                .extend(listing.errors.iter().map(|error| one_line(error)));
            if json {
                pretty(&listing.records)?
            } else {
                render::table(&batch::fold(&listing.records), store.now())
            }
        }
        Command::Rm { id } => {
            // A record that cannot be read is still there, and removing it is how an
            // operator gets rid of it: that is a success, said so on stderr.
            let unreadable = match store.get(&id).await {
                Ok(_) => None,
                Err(
                    error @ (Error::Corrupt { .. }
                    | Error::TooLarge { .. }
                    | Error::Serde { .. }
                    | Error::Io { .. }),
                ) => Some(error),
                Err(error) => return Err(error.into()),
            };
            let removed = store.delete(&id).await?;
            match unreadable {
                Some(error) => out.warnings.push(format!(
                    "removed `{id}`, which could not be read: {}",
                    one_line(&error)
                )),
                None if !removed => return Err(Error::NotFound { id }.into()),
                None => {}
            }
            String::new()
        }
        Command::Cleanup { ttl, dry_run, json } => {
            let report = store.cleanup(&CleanupOptions { ttl, dry_run }).await?;
            out.warnings
                .extend(report.errors.iter().map(|problem| match &problem.id {
                    Some(id) => format!("cleanup of `{id}`: {}", problem.message),
                    None => format!("cleanup: {}", problem.message),
                }));
            if json {
                pretty(&CleanupOutput {
                    dry_run,
                    report: &report,
                })?
            } else {
                cleanup_text(&report, dry_run)
            }
        }
        Command::Stats {
            stale_after,
            check,
            json,
        } => {
            let stats = syncstatus::stats(store.as_ref(), stale_after).await?;
            let output = if json {
                pretty(&StatsOutput::from(&stats))?
            } else {
                stats_text(&stats, stale_after)
            };
            if check && !stats.healthy {
                // The report still goes out: it says what is wrong.
                out.stdout = output;
                return Err(Failure {
                    code: failure::code::UNHEALTHY,
                    message: format!(
                        "unhealthy: {} running job(s) without a heartbeat for {}: {}",
                        stats.stale_running.len(),
                        humantime::format_duration(stale_after),
                        stats.stale_running.join(", ")
                    ),
                });
            }
            output
        }
        Command::Recover {
            stale_after,
            max_attempts,
            json,
        } => {
            let policy = RecoveryPolicy { max_attempts };
            let report = syncstatus::recover_stale(store.as_ref(), stale_after, &policy).await?;
            out.warnings
                .extend(report.errors.iter().map(|problem| match &problem.id {
                    Some(id) => format!("recovery of `{id}`: {}", problem.message),
                    None => format!("recovery: {}", problem.message),
                }));
            if json {
                pretty(&report)?
            } else {
                recover_text(&report)
            }
        }
        Command::Watch { ids, prefix, json } => {
            watch::run(store, ids, prefix, json).await?;
            String::new()
        }
        Command::Serve(args) => return serve::run(store, args).await,
    };
    Ok(())
}

/// `update`: a merge under the store's lock, or a compare-and-set with `--if-version`.
async fn update(
    store: &DynSyncStorage,
    id: &str,
    if_version: Option<u64>,
    fields: &FieldArgs,
) -> Result<Record, Failure> {
    let now = store.now();
    match if_version {
        None => Ok(store
            .update_with(id, |current| {
                fields.merge_into(id, current.map(|record| &record.status), now)
            })
            .await?),
        Some(0) => {
            let status = fields.merge_into(id, None, now)?;
            Ok(store.put(id, status, PutMode::Create).await?)
        }
        Some(expected) => {
            let current = store.get(id).await?;
            let found = current.as_ref().map(|record| record.version);
            let Some(current) = current.filter(|record| record.version == expected) else {
                return Err(Error::VersionConflict {
                    id: id.to_string(),
                    expected,
                    found,
                }
                .into());
            };
            let status = fields.merge_into(id, Some(&current.status), now)?;
            // The store checks the version again as it writes, so a writer in between
            // still makes this fail rather than be overwritten.
            Ok(store.put(id, status, PutMode::Update(expected)).await?)
        }
    }
}

fn written(record: &Record, json: bool) -> Result<String, Failure> {
    if json {
        pretty(record)
    } else {
        Ok(format!("{}\n", record.version))
    }
}

/// `stats --json`: the library's stats, with records without a state counted as
/// `no_state` rather than under an empty state name, as the text output says "(no state)".
#[derive(Serialize)]
struct StatsOutput<'a> {
    counts: std::collections::BTreeMap<&'a str, u64>,
    no_state: u64,
    total: u64,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    batches: &'a std::collections::BTreeMap<String, u64>,
    stale_running: &'a [String],
    oldest_age_ms: Option<u64>,
    unreadable: u64,
    healthy: bool,
}

impl<'a> From<&'a syncstatus::Stats> for StatsOutput<'a> {
    fn from(stats: &'a syncstatus::Stats) -> Self {
        StatsOutput {
            counts: stats
                .counts
                .iter()
                .filter(|(state, _)| !state.is_empty())
                .map(|(state, count)| (state.as_str(), *count))
                .collect(),
            no_state: stats.counts.get("").copied().unwrap_or(0),
            total: stats.total,
            batches: &stats.batches,
            stale_running: &stats.stale_running,
            oldest_age_ms: stats.oldest_age_ms,
            unreadable: stats.unreadable,
            healthy: stats.healthy,
        }
    }
}

fn stats_text(stats: &syncstatus::Stats, stale_after: Duration) -> String {
    let mut out = format!("total: {}\n", stats.total);
    for (state, count) in &stats.counts {
        let state = if state.is_empty() {
            "(no state)".to_string()
        } else {
            render::escape(state)
        };
        out.push_str(&format!("  {state}: {count}\n"));
    }
    out.push_str(&batch::stats_text(stats));
    if let Some(age) = stats.oldest_age_ms {
        out.push_str(&format!(
            "oldest: {}\n",
            render::short_age(Duration::from_millis(age))
        ));
    }
    if stats.unreadable > 0 {
        out.push_str(&format!("unreadable: {}\n", stats.unreadable));
    }
    if !stats.stale_running.is_empty() {
        out.push_str(&format!(
            "stale (no heartbeat for {}): {}\n",
            humantime::format_duration(stale_after),
            stats.stale_running.join(", ")
        ));
    }
    out.push_str(if stats.healthy {
        "healthy: yes\n"
    } else {
        "healthy: no\n"
    });
    out
}

fn recover_text(report: &syncstatus::RecoveryReport) -> String {
    let mut out = String::new();
    for job in &report.recovered {
        let line = match job.action {
            RecoveryAction::Requeued => format!(
                "requeued {} for attempt {} (version {})\n",
                job.id, job.attempt, job.version
            ),
            RecoveryAction::Failed => format!(
                "failed {} after {} attempt(s) (version {})\n",
                job.id, job.attempt, job.version
            ),
            RecoveryAction::Cancelled => format!(
                "cancelled {} as requested (version {})\n",
                job.id, job.version
            ),
        };
        out.push_str(&line);
    }
    out.push_str(&format!(
        "recovered {} job(s); {} running job(s) alive\n",
        report.recovered.len(),
        report.alive
    ));
    out
}

fn cleanup_text(report: &syncstatus::CleanupReport, dry_run: bool) -> String {
    if !report.ran {
        return "another cleanup of this store is running; this one did nothing\n".to_string();
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut out = format!("{verb} {} record(s)", report.removed.len());
    if !report.removed.is_empty() {
        out.push_str(": ");
        out.push_str(&report.removed.join(", "));
    }
    out.push_str(&format!(
        "\nkept {} record(s); removed {} leftover file(s)\n",
        report.kept, report.leftovers_removed
    ));
    out
}

/// `cleanup --json`: the store's report and whether it was a dry run.
#[derive(Serialize)]
struct CleanupOutput<'a> {
    dry_run: bool,
    #[serde(flatten)]
    report: &'a syncstatus::CleanupReport,
}

fn pretty<T: Serialize + ?Sized>(value: &T) -> Result<String, Failure> {
    let mut text = serde_json::to_string_pretty(value).map_err(|error| Failure {
        code: failure::code::OTHER,
        message: format!("cannot encode the output as JSON: {error}"),
    })?;
    text.push('\n');
    Ok(text)
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
