//! `syncstatus`: read, write, clean up and watch job status from the shell.
//!
//! This file parses the command line, opens the store and runs each command. The command
//! line is defined in `args.rs`; what commands print in `render.rs` (record views) and
//! `report.rs` (reports, JSON); exit codes in `failure.rs`; the long-running commands in
//! `watch.rs` and `serve.rs`, the job commands in `jobs.rs`.

mod args;
mod batch;
mod failure;
mod fields;
mod jobs;
mod render;
mod report;
mod serve;
#[cfg(test)]
mod test_record;
mod watch;

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::Value;
use syncstatus::{
    CleanupOptions, DynSyncStorage, Error, ListFilter, PutMode, Record, RecoveryPolicy, StoreUrl,
    SyncStorageExt, validate_id,
};

use args::{Cli, Command};
use failure::{Failure, one_line, printable};
use fields::FieldArgs;
use report::{CleanupOutput, StatsOutput, pretty, written};

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
                report::cleanup_text(&report, dry_run)
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
                report::stats_text(&stats, stale_after)
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
                report::recover_text(&report)
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
