//! The `syncstatus` binary, run as a user would, against a file store in a temp directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a test waits for something the binary should do promptly before failing.
const DEADLINE: Duration = Duration::from_secs(30);

fn command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_syncstatus"));
    command.env_remove("SYNCSTATUS_STORE").arg("--dir").arg(dir);
    command
}

fn run(dir: &Path, args: &[&str]) -> Output {
    command(dir).args(args).output().expect("run syncstatus")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs and requires success; returns stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let output = run(dir, args);
    assert!(
        output.status.success(),
        "{args:?} failed with {:?}: {}",
        output.status.code(),
        stderr(&output)
    );
    stdout(&output)
}

fn ok_json(dir: &Path, args: &[&str]) -> Value {
    let text = ok(dir, args);
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{args:?}: {error} in {text}"))
}

/// Runs, requires exit code `code` and a single `syncstatus: ...` line on stderr; returns it.
fn fails(dir: &Path, args: &[&str], code: i32) -> String {
    let output = run(dir, args);
    assert_eq!(
        output.status.code(),
        Some(code),
        "{args:?}: stdout {} stderr {}",
        stdout(&output),
        stderr(&output)
    );
    let err = stderr(&output);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {err}");
    assert!(lines[0].starts_with("syncstatus: "), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    lines[0].to_string()
}

#[test]
fn set_then_get_round_trips_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let version = ok(
        d,
        &[
            "set",
            "job-1",
            "--state",
            "running",
            "--progress",
            "40/600",
            "--message",
            "page 4",
            "--data",
            r#"{"pages": 600}"#,
        ],
    );
    assert_eq!(version.trim(), "1");

    let record = ok_json(d, &["get", "job-1", "--json"]);
    assert_eq!(record["id"], "job-1");
    assert_eq!(record["version"], 1);
    assert!(record["created_at"].is_string());
    assert!(record["updated_at"].is_string());
    assert_eq!(
        record["status"],
        json!({
            "state": "running",
            "progress": {"done": 40, "total": 600},
            "message": "page 4",
            "data": {"pages": 600},
        })
    );

    let view = ok(d, &["get", "job-1"]);
    for expected in ["job-1", "running", "40/600", "page 4", "updated_at", "ago"] {
        assert!(view.contains(expected), "{expected} missing from\n{view}");
    }

    // `set` replaces: fields not given again are gone.
    assert_eq!(ok(d, &["set", "job-1", "--state", "completed"]).trim(), "2");
    let record = ok_json(d, &["get", "job-1", "--json"]);
    assert_eq!(record["status"], json!({"state": "completed"}));
    assert_eq!(record["version"], 2);
}

#[test]
fn set_json_prints_the_written_record() {
    let dir = tempfile::tempdir().unwrap();
    let record = ok_json(dir.path(), &["set", "a", "--state", "pending", "--json"]);
    assert_eq!(record["id"], "a");
    assert_eq!(record["version"], 1);
    assert_eq!(record["status"]["state"], "pending");
}

#[test]
fn progress_forms_are_stored_as_done_and_total() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (given, stored) in [
        ("0.4", json!({"done": 40, "total": 100})),
        ("25%", json!({"done": 25, "total": 100})),
        ("3/7", json!({"done": 3, "total": 7})),
        ("12", json!({"done": 12})),
    ] {
        ok(d, &["set", "p", "--progress", given]);
        let record = ok_json(d, &["get", "p", "--json"]);
        assert_eq!(record["status"]["progress"], stored, "--progress {given}");
    }
}

#[test]
fn update_merges_into_the_current_status_and_creates_missing_records() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(ok(d, &["update", "job", "--state", "running"]).trim(), "1");
    assert_eq!(
        ok(
            d,
            &["update", "job", "--progress", "1/2", "--message", "half"]
        )
        .trim(),
        "2"
    );
    let record = ok_json(d, &["get", "job", "--json"]);
    assert_eq!(
        record["status"],
        json!({"state": "running", "progress": {"done": 1, "total": 2}, "message": "half"})
    );

    // No fields: a write that keeps the status as it is.
    assert_eq!(ok(d, &["update", "job"]).trim(), "3");
    let again = ok_json(d, &["get", "job", "--json"]);
    assert_eq!(again["status"], record["status"]);

    // --heartbeat stamps heartbeat_at with the time of the command. RFC 3339 UTC times with
    // milliseconds compare as strings.
    ok(d, &["update", "job", "--heartbeat"]);
    let beat = ok_json(d, &["get", "job", "--json"]);
    let at = beat["status"]["heartbeat_at"]
        .as_str()
        .expect("heartbeat_at");
    assert!(at >= again["updated_at"].as_str().unwrap(), "{beat}");
    assert!(at <= beat["updated_at"].as_str().unwrap(), "{beat}");
}

#[test]
fn update_refuses_to_merge_into_a_status_that_is_not_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["set", "raw", "--state", "running"]);
    // Another program wrote a bare number as the status.
    let path = d.join("raw.json");
    let mut record: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    record["status"] = json!(3);
    std::fs::write(&path, serde_json::to_string(&record).unwrap()).unwrap();

    // Not a usage error: the stored status is what cannot be used.
    let line = fails(d, &["update", "raw", "--message", "m"], 5);
    assert!(
        line.contains("raw") && line.contains("not a JSON object"),
        "{line}"
    );
    assert!(!line.contains("invalid configuration"), "{line}");
    assert_eq!(ok_json(d, &["get", "raw", "--json"])["version"], 1);
    // Without fields there is nothing to merge: the status is rewritten as it is.
    assert_eq!(ok(d, &["update", "raw"]).trim(), "2");
    assert_eq!(ok_json(d, &["get", "raw", "--json"])["status"], json!(3));
}

#[test]
fn a_store_path_that_is_a_file_is_a_store_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "").unwrap();
    let line = fails(&file, &["ls"], 5);
    assert!(line.contains("plain-file"), "{line}");
}

#[test]
fn update_if_version_is_a_compare_and_set() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["set", "job", "--state", "running", "--message", "one"]);
    ok(d, &["update", "job", "--message", "two"]);

    let line = fails(
        d,
        &["update", "job", "--if-version", "1", "--message", "stale"],
        4,
    );
    assert!(line.contains("job"), "{line}");
    assert!(line.contains("conflict"), "{line}");
    let record = ok_json(d, &["get", "job", "--json"]);
    assert_eq!(record["version"], 2);
    assert_eq!(record["status"]["message"], "two");

    let version = ok(
        d,
        &["update", "job", "--if-version", "2", "--message", "three"],
    );
    assert_eq!(version.trim(), "3");
    let record = ok_json(d, &["get", "job", "--json"]);
    assert_eq!(
        record["status"],
        json!({"state": "running", "message": "three"})
    );

    // A missing record conflicts with any version but 0, which means "create".
    fails(
        d,
        &["update", "other", "--if-version", "1", "--state", "x"],
        4,
    );
    assert_eq!(ok(d, &["update", "other", "--if-version", "0"]).trim(), "1");
    let line = fails(d, &["update", "other", "--if-version", "0"], 4);
    assert!(line.contains("other"), "{line}");
}

#[test]
fn missing_records_exit_with_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let line = fails(d, &["get", "nope"], 3);
    assert!(line.contains("nope"), "{line}");
    fails(d, &["get", "nope", "--json"], 3);
    fails(d, &["rm", "nope"], 3);

    ok(d, &["set", "there", "--state", "pending"]);
    assert_eq!(ok(d, &["rm", "there"]), "");
    fails(d, &["get", "there"], 3);
    fails(d, &["rm", "there"], 3);
}

#[test]
fn invalid_ids_are_refused_before_touching_the_store() {
    let parent = tempfile::tempdir().unwrap();
    let d = parent.path().join("store");
    for args in [
        &["set", "../x", "--state", "running"][..],
        &["update", "../x"],
        &["get", "../x"],
        &["rm", "../x"],
        &["watch", "ok", "../x"],
        &["get", ".hidden"],
        &["get", "a b"],
    ] {
        let line = fails(&d, args, 2);
        assert!(line.contains("invalid id"), "{args:?}: {line}");
    }
    assert!(!d.exists(), "the store directory was created");
    assert!(!parent.path().join("x.json").exists());
}

#[test]
fn bad_flags_exit_with_usage_errors_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let line = fails(d, &["set", "a", "--data", "{bad"], 2);
    assert!(line.contains("--data"), "{line}");
    for progress in ["x", "5/3", "1.5", "-2", "200%"] {
        let flag = format!("--progress={progress}");
        let line = fails(d, &["set", "a", &flag], 2);
        assert!(line.contains("--progress"), "{line}");
    }
    fails(d, &["set", "a", "--bogus"], 2);
    fails(d, &["frobnicate"], 2);
    fails(d, &["get"], 2);
    fails(d, &["update", "a", "--if-version", "x"], 2);
    fails(d, &["cleanup", "--ttl", "soon"], 2);
    fails(d, &["--store", "file:elsewhere", "ls"], 2);
    // Nothing was written by any of them.
    fails(d, &["get", "a"], 3);
}

#[test]
fn bad_store_urls_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_syncstatus"))
        .env_remove("SYNCSTATUS_STORE")
        .args(["--store", "nonsense:x", "ls"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("nonsense"));
    assert_eq!(stderr(&output).lines().count(), 1);
}

#[test]
fn the_store_comes_from_the_environment_when_not_given() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("from-env");
    let url = format!("file:{}", store.display());
    let output = Command::new(env!("CARGO_BIN_EXE_syncstatus"))
        .env("SYNCSTATUS_STORE", &url)
        .args(["set", "e", "--state", "pending"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(store.join("e.json").is_file());
    // --dir wins over the environment.
    let other = dir.path().join("other");
    let output = Command::new(env!("CARGO_BIN_EXE_syncstatus"))
        .env("SYNCSTATUS_STORE", &url)
        .arg("--dir")
        .arg(&other)
        .args(["get", "e"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
}

#[test]
fn ls_prints_a_table_or_a_json_array_and_filters_by_state() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        d,
        &[
            "set",
            "b-job",
            "--state",
            "running",
            "--progress",
            "1/4",
            "--message",
            "going",
        ],
    );
    ok(d, &["set", "a-job", "--state", "completed"]);
    ok(d, &["set", "c-job", "--state", "running"]);

    let table = ok(d, &["ls"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    for header in ["ID", "STATE", "PROGRESS", "VERSION", "UPDATED", "MESSAGE"] {
        assert!(lines[0].contains(header), "{table}");
    }
    assert!(lines[1].starts_with("a-job "), "{table}");
    assert!(
        lines[2].contains("1/4 (25%)") && lines[2].contains("going"),
        "{table}"
    );

    let all = ok_json(d, &["ls", "--json"]);
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a-job", "b-job", "c-job"]);
    assert_eq!(all[1]["status"]["message"], "going");
    assert_eq!(all[1]["version"], 1);

    let running = ok_json(d, &["ls", "--state", "running", "--json"]);
    let ids: Vec<&str> = running
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b-job", "c-job"]);

    let none = ok_json(d, &["ls", "--state", "failed", "--json"]);
    assert_eq!(none, json!([]));
}

#[test]
fn ls_with_a_corrupt_file_lists_the_good_records_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["set", "good-1", "--state", "running"]);
    ok(d, &["set", "good-2", "--state", "failed"]);
    std::fs::write(d.join("broken.json"), "{ not json").unwrap();

    for args in [&["ls", "--json"][..], &["ls"]] {
        let output = run(d, args);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        let err = stderr(&output);
        let warnings: Vec<&str> = err.lines().collect();
        assert_eq!(warnings.len(), 1, "{err}");
        assert!(warnings[0].starts_with("syncstatus: warning: "), "{err}");
        assert!(warnings[0].contains("broken"), "{err}");
        let out = stdout(&output);
        assert!(out.contains("good-1") && out.contains("good-2"), "{out}");
    }
    let listed = ok_json(d, &["ls", "--json"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    // get of the corrupt record itself is a store error naming it.
    let line = fails(d, &["get", "broken"], 5);
    assert!(line.contains("broken"), "{line}");
}

#[test]
fn cleanup_with_zero_ttl_removes_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["set", "one", "--state", "completed"]);
    ok(d, &["set", "two", "--state", "running"]);

    let kept = ok_json(d, &["cleanup", "--ttl", "1h", "--json"]);
    assert_eq!(kept["removed"], json!([]));
    assert_eq!(kept["kept"], 2);
    assert_eq!(kept["ran"], true);

    let dry = ok_json(d, &["cleanup", "--ttl", "0s", "--dry-run", "--json"]);
    assert_eq!(dry["removed"], json!(["one", "two"]));
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        ok_json(d, &["ls", "--json"]).as_array().map(Vec::len),
        Some(2)
    );

    let report = ok_json(d, &["cleanup", "--ttl", "0s", "--json"]);
    assert_eq!(report["removed"], json!(["one", "two"]));
    assert_eq!(report["dry_run"], false);
    for key in ["ran", "kept", "leftovers_removed", "errors"] {
        assert!(report.get(key).is_some(), "{key} missing: {report}");
    }
    assert_eq!(ok_json(d, &["ls", "--json"]), json!([]));
    fails(d, &["get", "one"], 3);

    ok(d, &["set", "three", "--state", "completed"]);
    let text = ok(d, &["cleanup", "--ttl", "0s"]);
    assert!(text.contains("removed 1 record(s): three"), "{text}");
}

/// A running `watch`, its stdout lines arriving on a channel.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watcher {
    fn start(dir: &Path, args: &[&str]) -> Self {
        let mut child = command(dir)
            .arg("watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn watch");
        let out = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Watcher { child, lines }
    }

    /// The next event line as JSON, within the deadline.
    fn next_event(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(DEADLINE)
            .expect("no event from watch before the deadline");
        serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line}"))
    }

    /// Events until one satisfies `done`, within the deadline.
    fn event_where(&self, mut done: impl FnMut(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < DEADLINE, "the expected event never came");
            let event = self.next_event();
            if done(&event) {
                return event;
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_json_prints_a_resync_then_each_change() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["set", "before", "--state", "running"]);

    let watcher = Watcher::start(d, &["--json"]);
    let resync = watcher.next_event();
    assert_eq!(resync["event"], "resync", "{resync}");
    let records = resync["records"].as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["id"], "before");

    ok(
        d,
        &["set", "job", "--state", "running", "--progress", "1/3"],
    );
    ok(d, &["update", "job", "--progress", "2/3"]);
    let upsert = watcher.event_where(|event| event["id"] == "job" && event["version"] == 2);
    assert_eq!(upsert["event"], "upsert");
    assert_eq!(upsert["record"]["id"], "job");
    assert_eq!(upsert["record"]["version"], 2);
    assert_eq!(
        upsert["record"]["status"]["progress"],
        json!({"done": 2, "total": 3})
    );

    ok(d, &["rm", "before"]);
    let removed = watcher.event_where(|event| event["event"] == "removed");
    assert_eq!(removed, json!({"event": "removed", "id": "before"}));
}

#[test]
fn watch_of_given_ids_ignores_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let watcher = Watcher::start(d, &["--json", "wanted"]);
    let resync = watcher.next_event();
    assert_eq!(resync, json!({"event": "resync", "records": []}));

    ok(d, &["set", "other", "--state", "running"]);
    ok(d, &["set", "wanted", "--state", "running"]);
    let event = watcher.next_event();
    assert_eq!(event["event"], "upsert");
    assert_eq!(event["id"], "wanted", "{event}");
}

/// Waits for the child to exit within the deadline; kills it and fails otherwise.
fn wait_for_exit(mut child: Child) -> std::process::ExitStatus {
    let pid = child.id();
    let (sender, exited) = mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(child.wait());
    });
    match exited.recv_timeout(DEADLINE) {
        Ok(status) => status.expect("wait for watch"),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!("watch did not exit before the deadline");
        }
    }
}

#[test]
fn watch_ends_cleanly_when_its_reader_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = command(dir.path())
        .args(["watch", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (sender, first) = mpsc::channel();
    // Reads the first line, then closes the pipe by dropping its end.
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = first.recv_timeout(DEADLINE).expect("no resync line");
    assert!(line.contains("\"resync\""), "{line}");
    // No event follows: the watch must notice the closed pipe by itself.
    let mut err = child.stderr.take().unwrap();
    let status = wait_for_exit(child);
    let mut text = String::new();
    std::io::Read::read_to_string(&mut err, &mut text).unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    assert_eq!(text, "");
}

#[cfg(unix)]
#[test]
fn watch_ends_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut watcher = Watcher::start(dir.path(), &["--json"]);
    assert_eq!(watcher.next_event()["event"], "resync");
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(watcher.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let child = std::mem::replace(
        &mut watcher.child,
        Command::new("true").spawn().expect("spawn true"),
    );
    let status = wait_for_exit(child);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn watch_without_json_prints_lines_when_not_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        d,
        &[
            "set",
            "first",
            "--state",
            "completed",
            "--message",
            "all done",
        ],
    );
    let watcher = Watcher::start(d, &[]);
    let line = watcher
        .lines
        .recv_timeout(DEADLINE)
        .expect("no line for the snapshot");
    assert!(
        line.contains("first") && line.contains("completed"),
        "{line}"
    );
    assert!(line.contains("all done"), "{line}");
    ok(
        d,
        &["set", "second", "--state", "running", "--progress", "5/10"],
    );
    let line = watcher
        .lines
        .recv_timeout(DEADLINE)
        .expect("no line for the set");
    assert!(line.contains("second") && line.contains("5/10"), "{line}");
}

#[test]
fn help_documents_the_exit_codes() {
    let output = Command::new(env!("CARGO_BIN_EXE_syncstatus"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = stdout(&output);
    for expected in [
        "Exit codes",
        "3  not found",
        "4  conflict",
        "SYNCSTATUS_STORE",
    ] {
        assert!(help.contains(expected), "{expected} missing from help");
    }
}

#[test]
fn stats_counts_states_and_flags_stale_running_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["set", "run-1", "--state", "running", "--heartbeat"]);
    ok(d, &["set", "run-2", "--state", "running"]);
    ok(d, &["set", "done", "--state", "completed"]);

    // Just written: nothing is stale under the default limit.
    let fresh = ok_json(d, &["stats", "--json"]);
    assert_eq!(fresh["counts"], json!({"completed": 1, "running": 2}));
    assert_eq!(fresh["total"], 3);
    assert_eq!(fresh["stale_running"], json!([]));
    assert_eq!(fresh["healthy"], true);
    assert!(fresh["oldest_age_ms"].is_u64(), "{fresh}");
    ok(d, &["stats", "--check"]);

    // With a zero limit every running job is stale.
    let stale = ok_json(d, &["stats", "--json", "--stale-after", "0s"]);
    assert_eq!(stale["stale_running"], json!(["run-1", "run-2"]));
    assert_eq!(stale["healthy"], false);
    let text = ok(d, &["stats", "--stale-after", "0s"]);
    assert!(
        text.contains("healthy: no") && text.contains("run-1"),
        "{text}"
    );

    let output = run(d, &["stats", "--check", "--stale-after", "0s"]);
    assert_eq!(output.status.code(), Some(6), "{}", stderr(&output));
    assert!(stderr(&output).contains("run-1"));
    assert!(stdout(&output).contains("healthy: no"));
}

#[test]
fn recover_requeues_stale_jobs_then_fails_them_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["set", "job", "--state", "running", "--heartbeat"]);
    ok(d, &["set", "idle", "--state", "pending"]);

    // Heartbeat just now: alive under the default limit.
    let none = ok_json(d, &["recover", "--json"]);
    assert_eq!(none["recovered"], json!([]));
    assert_eq!(none["alive"], 1);

    let report = ok_json(d, &["recover", "--stale-after", "0s", "--json"]);
    assert_eq!(
        report["recovered"],
        json!([{"id": "job", "action": "requeued", "attempt": 2, "version": 2}])
    );
    assert_eq!(report["errors"], json!([]));
    let record = ok_json(d, &["get", "job", "--json"]);
    assert_eq!(record["status"]["state"], "pending");
    assert_eq!(record["status"]["attempt"], 2);
    assert_eq!(ok_json(d, &["get", "idle", "--json"])["version"], 1);

    // Running again on its second attempt, stale again, with two attempts allowed: failed.
    ok(d, &["update", "job", "--state", "running"]);
    let report = ok_json(
        d,
        &[
            "recover",
            "--stale-after",
            "0s",
            "--max-attempts",
            "2",
            "--json",
        ],
    );
    assert_eq!(report["recovered"][0]["action"], "failed");
    assert_eq!(report["recovered"][0]["attempt"], 2);
    let record = ok_json(d, &["get", "job", "--json"]);
    assert_eq!(record["status"]["state"], "failed");
    assert_eq!(record["version"], report["recovered"][0]["version"]);

    let text = ok(d, &["recover", "--stale-after", "0s"]);
    assert!(text.contains("recovered 0 job(s)"), "{text}");
    fails(d, &["recover", "--max-attempts", "0"], 2);
    fails(d, &["stats", "--stale-after", "never"], 2);
}

/// Runs with no `--dir`, the given environment store and arguments, in `cwd`.
fn run_in(cwd: &Path, store_env: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_syncstatus"));
    command.env_remove("SYNCSTATUS_STORE").current_dir(cwd);
    if let Some(store) = store_env {
        command.env("SYNCSTATUS_STORE", store);
    }
    command.args(args).output().expect("run syncstatus")
}

#[test]
fn passwords_in_store_urls_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let urls = [
        "postgres://u:SECRET@127.0.0.1:1/db",
        "postgres://u:SECRET@127.0.0.1:1/db?table=a&table=b",
        "postgres://u:SECRET@127.0.0.1:99999/db",
        "postgres://u:SECRET@127.0.0.1:1/db?bogus=1",
        "redis://u:SECRET@127.0.0.1:1/0",
        "redis://u:SECRET@127.0.0.1:1/0?prefx=a",
    ];
    for url in urls {
        for args in [
            &["ls"][..],
            &["get", "a"],
            &["set", "a", "--state", "running"],
        ] {
            let from_flag = run_in(d, None, &[&["--store", url][..], args].concat());
            let from_env = run_in(d, Some(url), args);
            for output in [from_flag, from_env] {
                let (out, err) = (stdout(&output), stderr(&output));
                assert!(!output.status.success(), "{url} {args:?}: {out}");
                assert!(
                    !out.contains("SECRET") && !err.contains("SECRET"),
                    "{url} {args:?}: {err}"
                );
                assert!(err.contains("127.0.0.1"), "{url}: {err}");
            }
        }
    }
    // A refused connection says what it tried, not the pool's "creating a new object".
    let output = run_in(d, None, &["--store", urls[0], "ls"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(5), "{err}");
    assert!(
        err.contains("cannot connect to PostgreSQL at 127.0.0.1:1/db as u"),
        "{err}"
    );
    assert!(!err.contains("new object"), "{err}");
}

#[test]
fn human_output_escapes_control_characters_and_json_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}]52;c;aGk=\u{7}\u{9b}31m";
    ok(d, &["set", "evil", "--state", "running", "--message", evil]);
    // Another program wrote the state and another field.
    let path = d.join("evil.json");
    let mut record: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    record["status"]["state"] = json!(format!("run{evil}"));
    record["status"]["note"] = json!(evil);
    std::fs::write(&path, serde_json::to_string(&record).unwrap()).unwrap();

    let raw_controls = |text: &str| {
        text.chars()
            .any(|c| c == '\u{1b}' || c == '\u{7}' || c == '\u{9b}')
    };
    for args in [&["ls"][..], &["get", "evil"]] {
        let out = ok(d, args);
        assert!(
            !raw_controls(&out),
            "{args:?} printed raw control characters: {out:?}"
        );
        assert!(out.contains("\\u{1b}]0;pwned"), "{args:?}: {out}");
    }
    let record = ok_json(d, &["get", "evil", "--json"]);
    assert_eq!(record["status"]["message"], evil);
    assert_eq!(record["status"]["state"], format!("run{evil}"));
    assert_eq!(ok_json(d, &["ls", "--json"])[0]["status"]["note"], evil);

    let watcher = Watcher::start(d, &[]);
    let line = watcher
        .lines
        .recv_timeout(DEADLINE)
        .expect("no line for the snapshot");
    assert!(line.contains("evil"), "{line:?}");
    assert!(
        !raw_controls(&line),
        "watch printed raw control characters: {line:?}"
    );
    assert!(line.contains("\\u{1b}[2J"), "{line:?}");
}

#[test]
fn rm_of_a_corrupt_record_removes_it_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("broken.json"), "{ not json").unwrap();
    let output = run(d, &["rm", "broken"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("syncstatus: warning: removed `broken`, which could not be read"),
        "{err}"
    );
    assert!(!d.join("broken.json").exists());
    let line = fails(d, &["rm", "broken"], 3);
    assert!(line.contains("no record with id `broken`"), "{line}");
}

#[test]
fn bare_paths_are_stores_and_only_writes_create_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The dev server's documented form.
    let output = run_in(
        d,
        Some("./data/sync-status"),
        &["set", "a", "--state", "running"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(d.join("data/sync-status/a.json").is_file());
    let output = run_in(d, Some("data/sync-status"), &["get", "a", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = run_in(d, None, &["--store", "./data/sync-status", "ls"]);
    assert!(stdout(&output).contains("running"), "{}", stderr(&output));

    for args in [
        &["ls"][..],
        &["get", "a"],
        &["stats"],
        &["watch", "--json"],
        &["rm", "a"],
        &["cleanup"],
        &["recover"],
    ] {
        let output = run_in(
            d,
            None,
            &[&["--dir", "./data/sync-stauts"][..], args].concat(),
        );
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(3), "{args:?}: {err}");
        assert!(
            err.contains("sync-stauts") && err.contains("does not exist"),
            "{args:?}: {err}"
        );
        assert!(
            !d.join("data/sync-stauts").exists(),
            "{args:?} created the directory"
        );
    }
}

#[test]
fn a_store_path_that_is_a_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    std::fs::write(&file, "root:x:0:0::/root:/bin/sh\n").unwrap();
    for args in [&["ls"][..], &["set", "a", "--state", "running"]] {
        let line = fails(&file, args, 5);
        assert!(
            line.contains("passwd") && line.contains("not a directory"),
            "{args:?}: {line}"
        );
        assert!(!line.contains("File exists"), "{line}");
    }
}

#[test]
fn mistyped_and_repeated_url_parameters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (url, expected) in [
        (
            "redis://127.0.0.1:6379/0?prefx=app:",
            "unknown parameter `prefx`",
        ),
        (
            "redis://127.0.0.1:6379/0?prefix=a:&prefix=b:",
            "`prefix` is given twice",
        ),
        (
            "postgres://postgres@127.0.0.1:5432/test?table=a&table=b",
            "`table` is given twice",
        ),
    ] {
        let output = run_in(d, None, &["--store", url, "ls"]);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{url}: {err}");
        assert!(err.contains(expected), "{url}: {err}");
    }
}

#[test]
fn states_follow_the_grammar() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let line = fails(d, &["set", "a", "--state", "Running"], 2);
    assert!(line.contains("did you mean `running`?"), "{line}");
    let line = fails(d, &["set", "a", "--state", "some thing"], 2);
    assert!(line.contains("--state") && line.contains("' '"), "{line}");
    fails(d, &["update", "a", "--state", "RUNNING"], 2);
    fails(d, &["ls", "--state", "Running"], 2);
    fails(d, &["set", "a", "--state", ""], 2);
    let long = "x".repeat(33);
    fails(d, &["set", "a", "--state", &long], 2);
    ok(d, &["set", "a", "--state", "waiting_for_input"]);
    assert!(!d.join("b.json").exists());
}

#[test]
fn a_negative_progress_says_so() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["set", "a", "--progress", "-1"][..],
        &["update", "a", "--progress", "-5/10"],
    ] {
        let line = fails(dir.path(), args, 2);
        assert!(
            line.contains("--progress") && line.contains("negative"),
            "{line}"
        );
    }
}

#[test]
fn bare_syncstatus_prints_readable_help() {
    let output = Command::new(env!("CARGO_BIN_EXE_syncstatus"))
        .env_remove("SYNCSTATUS_STORE")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let help = stderr(&output);
    assert!(help.lines().count() > 10, "{help}");
    assert!(
        help.lines().any(|line| line.starts_with("Usage:")),
        "{help}"
    );
    assert!(
        help.lines()
            .any(|line| line.trim_start().starts_with("set ")),
        "{help}"
    );
}

#[test]
fn stats_json_and_text_agree_on_records_without_a_state() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["set", "plain", "--message", "no state here"]);
    ok(d, &["set", "job", "--state", "running", "--heartbeat"]);
    let stats = ok_json(d, &["stats", "--json"]);
    assert_eq!(stats["counts"], json!({"running": 1}), "{stats}");
    assert_eq!(stats["no_state"], 1, "{stats}");
    assert_eq!(stats["total"], 2, "{stats}");
    let text = ok(d, &["stats"]);
    assert!(text.contains("(no state): 1"), "{text}");
    assert!(text.contains("running: 1"), "{text}");
}

/// `watch` folds a batch as `ls` does: one line for the batch, carrying its children's counts
/// as they roll up, and no line for any child; a job beside it keeps its own line.
#[test]
fn watch_folds_a_batch_into_its_line_with_the_childrens_counts() {
    use syncstatus::jobs::{self, FailurePolicy};
    use syncstatus::{FileStorage, Progress, SyncStatus, SyncStorageExt};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = FileStorage::open(d).unwrap();
    let children = (0..3)
        .map(|_| SyncStatus::pending().with_progress(Progress::new(0, 4)))
        .collect();
    runtime
        .block_on(jobs::submit_batch(
            &store,
            "imp",
            children,
            FailurePolicy::Continue,
        ))
        .unwrap();
    ok(d, &["set", "other", "--state", "running"]);

    let watcher = Watcher::start(d, &[]);
    let mut lines = Vec::new();
    let mut next_line = |what: &str| {
        let line = watcher
            .lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("no line for {what}; so far: {lines:#?}"));
        lines.push(line.clone());
        line
    };
    // The snapshot: the batch and the other job, in either order, and nothing else.
    let snapshot = [next_line("the snapshot"), next_line("the snapshot")];
    let batch_line = snapshot
        .iter()
        .find(|line| line.starts_with("imp "))
        .unwrap_or_else(|| panic!("no batch line: {snapshot:?}"));
    assert!(
        batch_line.contains("3 children: 0 completed, 3 pending"),
        "{batch_line}"
    );
    assert!(batch_line.contains("0/12"), "{batch_line}");
    assert!(
        snapshot.iter().any(|line| line.starts_with("other ")),
        "{snapshot:?}"
    );

    // A child completes and the batch rolls up: the batch's line follows, the child has none.
    runtime
        .block_on(store.update_with("imp.2", |record| {
            let mut status = record.expect("the child exists").status.clone();
            status["state"] = json!("completed");
            status["progress"] = json!({"done": 4, "total": 4});
            Ok(status)
        }))
        .unwrap();
    runtime
        .block_on(jobs::reconcile_batch(&store, "imp"))
        .unwrap();
    let rolled = loop {
        let line = next_line("the rolled-up batch");
        if line.starts_with("imp ") && line.contains("1 completed") {
            break line;
        }
    };
    assert!(
        rolled.contains("3 children: 1 completed, 2 pending") && rolled.contains("4/12"),
        "{rolled}"
    );
    // A write after the child's: once its line is out, the child's event is behind us.
    ok(d, &["update", "other", "--state", "completed"]);
    loop {
        let line = next_line("the other job's completion");
        if line.starts_with("other ") && line.contains("completed") {
            break;
        }
    }
    let children: Vec<&String> = lines
        .iter()
        .filter(|line| line.starts_with("imp."))
        .collect();
    assert!(children.is_empty(), "children not folded: {lines:#?}");
    drop(store);
}
