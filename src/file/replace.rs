//! Putting a staged record file in place, and what Windows makes of it.
//!
//! On Windows a rename over a file that another process holds open (a reader of the record,
//! a virus scanner, the search indexer) fails with "access denied" or a sharing violation
//! until that handle closes, usually within milliseconds (tempfile#176). cargo and uv retry
//! such renames with a bounded backoff; so does the store, before it reports the error.
//! Elsewhere a rename replaces an open file atomically and is never retried.

use std::io;
use std::path::Path;
use std::time::Duration;

use tempfile::NamedTempFile;

/// Waits between attempts of a rename that Windows refused for an open handle: about 1.3 s in
/// all, far longer than a reader holds a record file, short enough that a file held open for
/// good is reported as an error.
const BACKOFF: [Duration; 9] = [
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(800),
];

/// Renames `staged` over `path`. A failed rename leaves `path` as it was, and the staging file
/// is removed.
pub(crate) fn persist(staged: NamedTempFile, path: &Path) -> io::Result<()> {
    retrying(
        staged,
        |staged| {
            staged
                .persist(path)
                .map(drop)
                .map_err(|e| (e.error, e.file))
        },
        is_held_open,
        &BACKOFF,
    )
}

/// Whether `error` is Windows refusing to replace or remove a file another handle holds open.
pub(crate) fn is_held_open(error: &io::Error) -> bool {
    /// `ERROR_ACCESS_DENIED`, what a rename over an open file reports.
    const ACCESS_DENIED: i32 = 5;
    /// `ERROR_SHARING_VIOLATION`, what it reports when the handle denies deletion.
    const SHARING_VIOLATION: i32 = 32;
    cfg!(windows)
        && matches!(
            error.raw_os_error(),
            Some(ACCESS_DENIED | SHARING_VIOLATION)
        )
}

/// Runs `attempt` until it succeeds, fails for good (`transient` says no), or `backoff` is
/// spent; `attempt` hands back what it was given, for the next try.
fn retrying<S>(
    mut state: S,
    mut attempt: impl FnMut(S) -> Result<(), (io::Error, S)>,
    transient: impl Fn(&io::Error) -> bool,
    backoff: &[Duration],
) -> io::Result<()> {
    let mut waits = backoff.iter();
    loop {
        match attempt(state) {
            Ok(()) => return Ok(()),
            Err((error, back)) => match waits.next() {
                Some(wait) if transient(&error) => {
                    tracing::debug!(%error, ?wait, "rename refused for an open handle; retrying");
                    // Runs on the blocking pool (the caller's `spawn_blocking`), never on
                    // an async worker.
                    std::thread::sleep(*wait);
                    state = back;
                }
                _ => return Err(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, "held open")
    }

    fn tiny_backoff() -> Vec<Duration> {
        vec![Duration::ZERO; 4]
    }

    #[test]
    fn a_transient_refusal_is_retried_until_the_rename_succeeds() {
        let mut attempts = 0;
        let outcome = retrying(
            (),
            |()| {
                attempts += 1;
                if attempts < 3 {
                    Err((refused(), ()))
                } else {
                    Ok(())
                }
            },
            |_| true,
            &tiny_backoff(),
        );
        assert!(outcome.is_ok());
        assert_eq!(attempts, 3);
    }

    #[test]
    fn retries_are_bounded_and_the_last_error_is_reported() {
        let mut attempts = 0;
        let outcome = retrying(
            (),
            |()| {
                attempts += 1;
                Err((refused(), ()))
            },
            |_| true,
            &tiny_backoff(),
        );
        assert_eq!(outcome.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(attempts, tiny_backoff().len() + 1);
    }

    #[test]
    fn other_errors_are_not_retried() {
        let mut attempts = 0;
        let outcome = retrying(
            (),
            |()| {
                attempts += 1;
                Err((io::Error::from(io::ErrorKind::NotFound), ()))
            },
            |_| false,
            &tiny_backoff(),
        );
        assert_eq!(outcome.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(attempts, 1);
    }

    #[test]
    fn only_windows_calls_an_open_handle_transient() {
        let denied = io::Error::from_raw_os_error(5);
        assert_eq!(is_held_open(&denied), cfg!(windows));
    }
}
