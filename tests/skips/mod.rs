//! Skipping a test whose server or browser is missing, so that a person sees it.
//!
//! libtest captures what the `print!` family writes and shows it only for failing tests, so a
//! skip told with `eprintln!` is invisible and the suite reads "passed" while testing nothing.
//! A line written to the process's stderr handle directly is not captured.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Where a missing server or browser fails the test instead of skipping it.
pub fn required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("SYNCSTATUS_REQUIRE_SERVICES").is_some()
}

/// The test running on this thread, as libtest names it.
fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string()
}

/// Fails the test when `what` is required here; otherwise prints, past libtest's capture,
/// one line naming the test, what is missing and how to enable it.
pub fn skip(what: &str, enable: &str) {
    let test = current_test();
    if required() {
        panic!("{test}: {what}, and CI or SYNCSTATUS_REQUIRE_SERVICES is set");
    }
    let line = format!("SKIPPED {test}: {what}; {enable}\n");
    // One write per line, so lines of tests running in parallel do not interleave.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `url` with its password replaced by `***`, for messages.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// Runs the single test `test` of the test binary `exe` with `env` set and no requirement of
/// servers, and returns its stderr (where a person reads the skip).
pub fn stderr_of_skipping_run(exe: &Path, test: &str, env: &[(&str, &str)]) -> String {
    let output = Command::new(exe)
        .args([test, "--exact", "--test-threads=1"])
        .env_remove("CI")
        .env_remove("SYNCSTATUS_REQUIRE_SERVICES")
        .envs(env.iter().copied())
        .output()
        .expect("the test binary runs");
    assert!(
        output.status.success(),
        "{test} failed instead of skipping: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}
