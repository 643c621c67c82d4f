//! Multi-process tests: a test binary runs itself again as a child that runs one test only
//! (its entry point, which returns at once in an ordinary run), playing a role on a store
//! directory. Parent and child talk in lines: the parent writes commands to the child's
//! stdin; the child answers on stdout with lines holding `@@ `, so that what the test
//! harness prints around them is skipped.

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Tells a re-executed test binary which role to play.
const ROLE: &str = "SYNCSTATUS_TEST_CHILD_ROLE";
/// The store directory a child works on.
const DIR: &str = "SYNCSTATUS_TEST_CHILD_DIR";
/// How long a parent waits for any one answer of a child, or for its exit, before the test
/// fails.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// The role and the directory of this process when it runs as a child; `None` in an
/// ordinary test run.
pub fn role() -> Option<(String, PathBuf)> {
    let role = std::env::var(ROLE).ok()?;
    let dir = std::env::var_os(DIR).expect("a child is given its directory");
    Some((role, PathBuf::from(dir)))
}

/// The child's side: when this process runs as a child, plays its role with
/// `play(role, dir)` on a runtime of two worker threads; returns at once in an ordinary run.
pub fn play<F: Future<Output = ()>>(play: impl FnOnce(String, PathBuf) -> F) {
    let Some((role, dir)) = role() else {
        return;
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(play(role, dir));
}

/// This test binary again, running only the test `entry`, which plays `role` on `dir`;
/// `vars` are more environment variables for it. [`Child::spawn`] and [`run`] start it; a
/// test that needs other plumbing (signals, a log) starts it itself.
pub fn command(entry: &str, role: &str, dir: &Path, vars: &[(&str, String)]) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", entry, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(DIR, dir);
    for (name, value) in vars {
        command.env(name, value);
    }
    command
}

/// Runs a child to its end without holding up the async runtime; fails the test if the
/// child fails.
pub async fn run(entry: &str, role: &str, dir: &Path, vars: &[(&str, String)]) {
    let mut command = tokio::process::Command::from(command(entry, role, dir, vars));
    let status = command.kill_on_drop(true).status().await.unwrap();
    assert!(status.success(), "child `{role}` failed: {status}");
}

/// The child's side: one answer to the parent.
pub fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@ {line}").unwrap();
    out.flush().unwrap();
}

/// The child's side: the parent's next command, `None` once the parent closed stdin.
pub fn read_command() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line).unwrap() {
        0 => None,
        _ => Some(line.trim().to_string()),
    }
}

/// A child process playing a role, with a line channel on its stdout. Dropping it kills
/// the process if it still runs.
pub struct Child {
    process: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    role: String,
}

impl Child {
    /// Starts a child running the test `entry` as `role` on `dir`.
    pub fn spawn(entry: &str, role: &str, dir: &Path, vars: &[(&str, String)]) -> Child {
        let mut process = command(entry, role, dir, vars)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = process.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print `test <entry> ... ` before the first answer.
                if let Some(at) = line.find("@@ ")
                    && sender.send(line[at + 3..].to_string()).is_err()
                {
                    break;
                }
            }
        });
        Child {
            stdin: process.stdin.take(),
            process,
            lines,
            role: role.to_string(),
        }
    }

    /// Sends the child one command line.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// The next answer, or `None` once the child closed its stdout; fails the test if the
    /// child stays silent too long.
    pub fn next_line(&self) -> Option<String> {
        match self.lines.recv_timeout(DEADLINE) {
            Ok(line) => Some(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("child `{}` gave no answer within {DEADLINE:?}", self.role)
            }
        }
    }

    /// The next answer; fails the test if the child ends or stays silent too long.
    pub fn recv(&self) -> String {
        self.next_line()
            .unwrap_or_else(|| panic!("child `{}` ended without an answer", self.role))
    }

    /// Checks that the next answer is `wanted`.
    pub fn expect(&self, wanted: &str) {
        let line = self.recv();
        assert_eq!(line, wanted, "child `{}`", self.role);
    }

    /// Closes the child's stdin, waits for it to exit, and checks it succeeded.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.process.try_wait().unwrap() {
                assert!(status.success(), "child `{}` failed: {status}", self.role);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "child `{}` did not exit",
                self.role
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reaps the process.
    pub fn kill_hard(mut self) {
        self.process.kill().unwrap();
        self.process.wait().unwrap();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.process.try_wait() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}
