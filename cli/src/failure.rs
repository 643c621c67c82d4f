//! What a failed command reports: one line for people, one exit code for scripts.

use std::fmt;
use std::process::ExitCode;
use std::sync::OnceLock;

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
            | Error::InProgress { .. } => code::CONFLICT,
            Error::InvalidTransition { .. }
            | Error::LostOwnership { .. }
            | Error::Cancelled { .. }
            | Error::VersionExhausted { .. } => code::CONFLICT,
            Error::InvalidId { .. }
            | Error::Config(_)
            | Error::Serde { .. }
            | Error::TooLarge { .. } => code::USAGE,
            Error::Corrupt { .. }
            | Error::Io { .. }
            | Error::Backend { .. }
            | Error::InvalidStatus { .. }
            | Error::LockTimeout { .. } => code::STORE,
            Error::Aborted { .. } => code::OTHER,
            _ => code::OTHER,
        };
        Failure {
            code,
            message: one_line(&error),
        }
    }
}

/// Passwords of the store URL in use, which nothing printed may show.
static SECRETS: OnceLock<Vec<String>> = OnceLock::new();

/// Remembers the password of the store URL `text` (as written and percent-decoded), so that
/// [`printable`] takes it out of any message, also of one a driver wrote with it. Very short
/// ones are left alone: taking out every `a` of a message would make it unreadable, and the
/// URL itself is printed redacted anyway.
pub fn hide_password_of(text: &str) {
    let Ok(url) = url::Url::parse(text) else {
        return;
    };
    let Some(password) = url.password() else {
        return;
    };
    let mut secrets = vec![password.to_string()];
    if let Ok(decoded) = percent_decode(password) {
        secrets.push(decoded);
    }
    secrets.retain(|secret| secret.len() >= 3);
    let _ = SECRETS.set(secrets);
}

fn percent_decode(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes: Vec<u8> =
        url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, value)| value.into_owned().into_bytes())
            .unwrap_or_default();
    String::from_utf8(bytes)
}

/// A message as it may be printed: no password of the store URL, control characters escaped
/// (a message can quote an id, a file or a field someone else wrote).
pub fn printable(message: &str) -> String {
    let mut text = crate::render::escape(message);
    for secret in SECRETS.get().into_iter().flatten() {
        text = text.replace(secret.as_str(), "***");
    }
    text
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_exit_codes_by_meaning() {
        let id = || "job".to_string();
        let cases = [
            (
                Error::InvalidTransition {
                    id: id(),
                    action: "recover",
                    state: "completed".into(),
                },
                code::CONFLICT,
            ),
            (
                Error::InvalidStatus {
                    id: id(),
                    reason: "not an object".into(),
                },
                code::STORE,
            ),
            (Error::aborted(id(), "the closure said no"), code::OTHER),
            (
                Error::LostOwnership {
                    id: id(),
                    lease: "l1".into(),
                    reason: "claimed".into(),
                },
                code::CONFLICT,
            ),
            (Error::Cancelled { id: id() }, code::CONFLICT),
            (
                Error::LockTimeout {
                    id: id(),
                    waited: std::time::Duration::from_secs(5),
                },
                code::STORE,
            ),
            (
                Error::VersionExhausted {
                    id: id(),
                    version: u64::MAX,
                },
                code::CONFLICT,
            ),
            (
                Error::TooLarge {
                    id: id(),
                    size: 10,
                    limit: 5,
                },
                code::USAGE,
            ),
        ];
        for (error, expected) in cases {
            let failure = Failure::from(error);
            assert_eq!(failure.code, expected, "{}", failure.message);
            assert!(failure.message.contains("job"), "{}", failure.message);
        }
    }
}
