//! What a failed command reports: one line for people, one exit code for scripts.

use std::fmt;
use std::process::ExitCode;

use syncstatus::Error;

/// The exit codes, documented in `--help` and `docs/cli.md`. Scripts branch on them, so they
/// never change meaning.
pub mod code {
    /// Any failure not listed below.
    pub const OTHER: u8 = 1;
    /// Bad usage or input: an unknown flag, an invalid id, bad `--data`/`--progress`, a bad
    /// store URL. (clap's own usage errors exit with 2 as well.)
    pub const USAGE: u8 = 2;
    /// No record with that id.
    pub const NOT_FOUND: u8 = 3;
    /// A conditional write lost: version conflict or the record already exists.
    pub const CONFLICT: u8 = 4;
    /// The store failed: I/O, a corrupt record, the server.
    pub const STORE: u8 = 5;
    /// `stats --check` found stale running jobs.
    pub const UNHEALTHY: u8 = 6;
}

/// A failed command: the exit code and the line printed after `syncstatus: `.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// What went wrong, naming the id, file or flag.
    pub message: String,
}

impl Failure {
    /// Bad input from the command line.
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: code::USAGE,
            message: message.into(),
        }
    }

    /// The exit code as the process returns it.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let code = match &error {
            Error::NotFound { .. } => code::NOT_FOUND,
            Error::VersionConflict { .. }
            | Error::AlreadyExists { .. }
            | Error::InProgress { .. }
            | Error::InvalidTransition { .. } => code::CONFLICT,
            Error::InvalidId { .. } | Error::Config(_) | Error::Serde { .. } => code::USAGE,
            Error::Corrupt { .. }
            | Error::Io { .. }
            | Error::Backend { .. }
            | Error::InvalidStatus { .. } => code::STORE,
            _ => code::OTHER,
        };
        Failure {
            code,
            message: one_line(&error),
        }
    }
}

/// The error and every cause not already spelled out in it, on one line.
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message.replace(['\n', '\r'], " ")
}
