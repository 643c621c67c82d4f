//! The status page in headless Chromium: the dev server runs a sync, and one open page shows
//! the job with a progress bar that advances as the event stream delivers, without reloads.
//!
//! Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
//! messages ended by NUL on file descriptors 3 and 4), because the page keeps an event stream
//! open and so never finishes loading, which `--dump-dom` and `--virtual-time-budget` wait for.
//!
//! Needs `chromium` (`/usr/bin/chromium`, or the path in `SYNCSTATUS_CHROMIUM`). Without it
//! the test prints `SKIPPED <test>: ...` and passes, unless `CI` or
//! `SYNCSTATUS_REQUIRE_SERVICES` is set, where it fails.
// Linux only: the pipe is made with pipe2, which macOS lacks, and Chromium is looked for
// where Debian puts it.
#![cfg(all(feature = "axum", target_os = "linux"))]

mod dev_server_support;
mod skips;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dev_server_support::{Server, start_sync};
use serde_json::{Value, json};

/// Deadline for anything the page should show; far above what it needs.
const DEADLINE: Duration = Duration::from_secs(60);

fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SYNCSTATUS_CHROMIUM") {
        return Some(PathBuf::from(path)).filter(|path| path.exists());
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

fn skip_without_chromium() {
    skips::skip(
        "chromium is not installed",
        "apt-get install chromium, or name a Chromium binary in SYNCSTATUS_CHROMIUM",
    );
}

/// Without Chromium the test passes, but says so where a person reads it (past libtest's
/// capture of `eprintln!`).
#[test]
fn a_missing_chromium_is_reported_as_a_visible_skip() {
    let stderr = skips::stderr_of_skipping_run(
        &std::env::current_exe().unwrap(),
        "the_status_page_shows_a_live_progress_bar",
        &[("SYNCSTATUS_CHROMIUM", "/nonexistent/chromium")],
    );
    assert!(
        stderr.contains(
            "SKIPPED the_status_page_shows_a_live_progress_bar: chromium is not installed"
        ),
        "{stderr}"
    );
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let result = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(result, 0, "pipe2 failed");
    (fds[0], fds[1])
}

/// A headless Chromium under DevTools control; dropping it kills it and its helpers.
struct Browser {
    child: Child,
    commands: File,
    replies: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
}

impl Browser {
    fn launch(chromium: &Path, profile: &Path) -> Browser {
        let (command_read, command_write) = pipe();
        let (reply_read, reply_write) = pipe();
        let log = File::create(profile.with_extension("log")).expect("chromium log");
        let mut command = Command::new(chromium);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group, so it can be killed with every helper it started.
            .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2, close) on
        // descriptors this process owns. Moving both ends above 10 first keeps one dup2
        // from overwriting the other when a pipe end already sits on 3 or 4; dup2 clears
        // close-on-exec on 3 and 4 only.
        unsafe {
            command.pre_exec(move || {
                let high_read = libc::fcntl(command_read, libc::F_DUPFD_CLOEXEC, 10);
                let high_write = libc::fcntl(reply_write, libc::F_DUPFD_CLOEXEC, 10);
                if high_read < 0
                    || high_write < 0
                    || libc::dup2(high_read, 3) < 0
                    || libc::dup2(high_write, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("chromium starts");
        // SAFETY: each descriptor came from pipe2 above and is closed or owned exactly once.
        let (commands, replies_file) = unsafe {
            libc::close(command_read);
            libc::close(reply_write);
            (
                File::from_raw_fd(command_write),
                File::from_raw_fd(reply_read),
            )
        };
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(replies_file);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).unwrap_or(0) > 0 {
                if message.last() == Some(&0) {
                    message.pop();
                }
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && tx.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        Browser {
            child,
            commands,
            replies,
            next_id: 0,
            session: None,
        }
    }

    /// Sends a command (to the attached page, once there is one) and waits for its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .expect("chromium takes commands");
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let reply = self
                .replies
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer from chromium to {method} in time"));
            if reply["id"] == json!(id) {
                assert!(
                    reply.get("error").is_none(),
                    "{method} failed: {}",
                    reply["error"]
                );
                return reply["result"].clone();
            }
        }
    }

    /// Opens `url` in a new page and directs later commands to it.
    fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({ "url": "about:blank" }));
        let target_id = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
        );
        self.session = Some(
            attached["sessionId"]
                .as_str()
                .expect("a session id")
                .to_string(),
        );
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1200, "height": 400, "deviceScaleFactor": 1, "mobile": false }),
        );
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// Evaluates `expression` in the page and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "the page threw: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    fn screenshot(&mut self) -> Vec<u8> {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        base64_decode(shot["data"].as_str().expect("screenshot data"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = i32::try_from(self.child.id()).expect("a pid fits in i32");
        // SAFETY: kill(2) has no memory effects; the group is the one our child leads.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |byte: u8| -> u32 {
        match byte {
            b'A'..=b'Z' => u32::from(byte - b'A'),
            b'a'..=b'z' => u32::from(byte - b'a') + 26,
            b'0'..=b'9' => u32::from(byte - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            other => panic!("not base64: {other}"),
        }
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for chunk in text.as_bytes().chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|b| *b != b'=').collect();
        let mut bits = 0u32;
        for (index, byte) in data.iter().enumerate() {
            bits |= value(*byte) << (18 - 6 * index);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..data.len()]);
    }
    out
}

/// What the page shows of job `id`, or null while it shows no such row.
fn row_expression(id: &str) -> String {
    format!(
        r#"(() => {{
            const row = document.querySelector('tr[data-id="{id}"]');
            if (!row) return null;
            const bar = row.querySelector("progress");
            return {{
                state: row.dataset.state,
                value: bar.value,
                max: bar.max,
                count: row.querySelector(".count")?.textContent,
                message: row.querySelector("td.message")?.textContent,
                html: bar.outerHTML,
                connection: document.getElementById("connection").dataset.state,
            }};
        }})()"#
    )
}

/// Evaluates until `accept` takes the value, or panics with `what` after the deadline.
fn wait_in_page(
    browser: &mut Browser,
    expression: &str,
    what: &str,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + DEADLINE;
    loop {
        let value = browser.eval(expression);
        if accept(&value) {
            return value;
        }
        assert!(
            Instant::now() < until,
            "gave up waiting for {what}; last seen: {value}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_status_page_shows_a_live_progress_bar() {
    let Some(chromium) = chromium() else {
        skip_without_chromium();
        return;
    };
    let workdir = tempfile::tempdir().unwrap();
    let server = Server::start(workdir.path(), &[]);
    let short = start_sync(&server, 3, 10);
    let pages = 600;
    let id = start_sync(&server, pages, 100);

    let mut browser = Browser::launch(&chromium, &workdir.path().join("chromium"));
    browser.open(&server.url("/"));
    let short_row = wait_in_page(
        &mut browser,
        &row_expression(&short),
        "the short job to complete on the page",
        |row| row["state"] == "completed",
    );
    assert_eq!(short_row["value"], json!(3), "{short_row}");
    assert_eq!(short_row["max"], json!(3), "{short_row}");
    let row = row_expression(&id);
    let first = wait_in_page(&mut browser, &row, "the running job on the page", |row| {
        row["state"] == "running" && row["value"].as_f64().is_some_and(|value| value > 0.0)
    });
    assert_eq!(first["max"], json!(pages), "{first}");
    assert_eq!(first["connection"], "open", "{first}");
    let done = first["value"].as_f64().unwrap();
    assert!(
        first["count"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{done} / {pages}")),
        "{first}"
    );
    assert!(
        first["html"]
            .as_str()
            .unwrap()
            .contains(&format!("value=\"{done}\"")),
        "{first}"
    );

    // The same page, never reloaded: only the event stream can move the bar.
    let later = wait_in_page(&mut browser, &row, "the progress bar to advance", |row| {
        row["value"].as_f64().is_some_and(|value| value > done)
    });
    assert_eq!(later["max"], json!(pages), "{later}");
    assert_eq!(later["state"], "running", "{later}");
    assert!(later["message"].as_str().unwrap().starts_with("page "));

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&shot, &png).unwrap();
    println!("status page screenshot: {}", shot.display());
}

#[test]
fn the_status_page_follows_the_server_through_a_kill_and_restart() {
    let Some(chromium) = chromium() else {
        skip_without_chromium();
        return;
    };
    let workdir = tempfile::tempdir().unwrap();
    let first = Server::start(workdir.path(), &[]);
    let port = first.addr.port().to_string();
    let pages = 80;
    let id = start_sync(&first, pages, 100);

    let mut browser = Browser::launch(&chromium, &workdir.path().join("chromium"));
    browser.open(&first.url("/"));
    let row = row_expression(&id);
    let before = wait_in_page(&mut browser, &row, "the running job on the page", |row| {
        row["state"] == "running" && row["value"].as_f64().is_some_and(|value| value > 0.0)
    });
    let done_before = before["value"].as_f64().unwrap();

    // A hot reload: the server dies without a word and comes back on the same port.
    first.kill();
    wait_in_page(
        &mut browser,
        "document.getElementById('connection').dataset.state",
        "the page to notice the lost connection",
        |state| state == "connecting",
    );
    let second = Server::start(workdir.path(), &[("PORT", &port)]);
    assert_eq!(second.addr.port().to_string(), port);

    // The page reconnects by itself and shows the job finishing on its second attempt.
    let finished = wait_in_page(
        &mut browser,
        &row,
        "the job to complete on the page",
        |row| row["state"] == "completed",
    );
    assert_eq!(finished["connection"], "open", "{finished}");
    assert_eq!(finished["value"], json!(pages), "{finished}");
    assert!(done_before < pages as f64);
    let attempt = browser.eval(&format!(
        r#"document.querySelector('tr[data-id="{id}"] td.attempt')?.textContent"#
    ));
    assert_eq!(attempt, "2");
}

/// The router over `store`, served on a loopback port by its own runtime until dropped.
struct InProcessServer {
    addr: std::net::SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

fn serve_in_process(store: syncstatus::DynSyncStorage) -> InProcessServer {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        let _ = axum::serve(listener, syncstatus::http::router(store)).await;
    });
    InProcessServer {
        addr,
        _runtime: runtime,
    }
}

#[test]
fn the_status_page_holds_50_jobs_newest_first_with_filters_elapsed_and_eta() {
    let Some(chromium) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is not installed (apt-get install -y chromium), and CI is set");
        }
        eprintln!("SKIPPED: chromium is not installed (apt-get install -y chromium)");
        return;
    };
    use std::sync::Arc;
    use syncstatus::{
        Clock, ManualClock, MemoryStorage, PutMode, SyncStorage, Timestamp, TtlPolicy,
    };

    // Records made a second apart, from 60 s ago to 11 s ago, so their order is their age.
    let now = Timestamp::now();
    let clock = ManualClock::new(Timestamp::from_millis(now.as_millis() - 60_000));
    let store = Arc::new(MemoryStorage::with_options(
        TtlPolicy::uniform(Duration::from_secs(3600)),
        Arc::new(clock.clone()),
    ));
    let states = ["running", "completed", "failed", "pending", "running"];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..50 {
        let state = states[n % states.len()];
        let prefix = if n % 2 == 0 { "import" } else { "sync" };
        let id = format!("{prefix}-2026-12-01T21.{n:02}.00-customer-{n:04}-full-resync");
        let started = clock.now().as_millis() - 30_000;
        let status = serde_json::json!({
            "state": state,
            // 30 items in 30 s: 1 per second, so the 120 left take two minutes from the write.
            "progress": {"done": 30, "total": 150},
            "message": format!("page {n} of a rather long message that must not wrap the row"),
            "started_at": Timestamp::from_millis(started),
            "attempt": 1,
        });
        runtime
            .block_on(store.put(&id, status, PutMode::Overwrite))
            .unwrap();
        ids.push((id, state, prefix));
        clock.advance(Duration::from_secs(1));
    }
    let server = serve_in_process(store);
    let workdir = tempfile::tempdir().unwrap();
    let mut browser = Browser::launch(&chromium, &workdir.path().join("chromium"));
    browser.open(&format!("http://{}/", server.addr));
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1200, "height": 1900, "deviceScaleFactor": 1, "mobile": false }),
    );
    let layout = r##"(() => {
        const rows = Array.from(document.querySelectorAll("#jobs tbody tr")).filter((row) => !row.hidden);
        const heights = rows.map((row) => row.getBoundingClientRect().height);
        return {
            ids: rows.map((row) => row.dataset.id),
            tallest: Math.max(0, ...heights),
            lowest: Math.min(1e9, ...heights),
            pageWidth: document.documentElement.scrollWidth,
            eta: rows.map((row) => row.querySelector("td.eta")?.textContent),
            elapsed: rows.map((row) => row.querySelector("td.elapsed")?.textContent),
            shown: document.getElementById("shown")?.textContent,
        };
    })()"##;
    let page = wait_in_page(&mut browser, layout, "50 jobs on the page", |page| {
        page["ids"].as_array().is_some_and(|ids| ids.len() == 50)
    });
    let newest_first: Vec<_> = ids.iter().rev().map(|(id, _, _)| json!(id)).collect();
    assert_eq!(page["ids"], json!(newest_first), "newest first");
    // One line per row: every row as tall as the others and no wider than the window.
    let tallest = page["tallest"].as_f64().unwrap();
    assert!(tallest - page["lowest"].as_f64().unwrap() < 1.0, "{page}");
    assert!(tallest < 40.0, "rows wrap: {page}");
    assert!(page["pageWidth"].as_f64().unwrap() <= 1200.0, "{page}");
    for (index, (_, state, _)) in ids.iter().rev().enumerate() {
        let eta = page["eta"][index].as_str().unwrap();
        if *state == "running" {
            // 120 s left at the write, made 11 to 60 s ago.
            assert!(
                eta.starts_with('~') && eta.ends_with(" left"),
                "{index}: {eta}"
            );
        } else {
            assert_eq!(eta, "", "{index}: no ETA for a {state} job");
        }
        assert!(
            !page["elapsed"][index].as_str().unwrap().is_empty(),
            "{page}"
        );
    }

    // Filters: by state, then by prefix on top, both kept in the fragment.
    browser.eval(
        r#"(() => { const s = document.getElementById("state-filter"); s.value = "running";
                    s.dispatchEvent(new Event("change")); })()"#,
    );
    let running = ids
        .iter()
        .filter(|(_, state, _)| *state == "running")
        .count();
    let filtered = wait_in_page(&mut browser, layout, "the state filter", |page| {
        page["ids"]
            .as_array()
            .is_some_and(|shown| shown.len() == running)
    });
    assert_eq!(filtered["shown"], format!("showing {running} of 50"));
    browser.eval(
        r#"(() => { const p = document.getElementById("prefix-filter"); p.value = "import-";
                    p.dispatchEvent(new Event("input")); })()"#,
    );
    let both = ids
        .iter()
        .filter(|(_, state, prefix)| *state == "running" && *prefix == "import")
        .count();
    let narrowed = wait_in_page(&mut browser, layout, "the prefix filter", |page| {
        page["ids"]
            .as_array()
            .is_some_and(|shown| shown.len() == both)
    });
    for id in narrowed["ids"].as_array().unwrap() {
        assert!(id.as_str().unwrap().starts_with("import-"), "{narrowed}");
    }
    assert_eq!(
        browser.eval("location.hash"),
        "#state=running&prefix=import-"
    );

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page-filtered.png");
    std::fs::write(&shot, &png).unwrap();
    browser.eval(r#"(() => { location.hash = ""; })()"#);
    wait_in_page(&mut browser, layout, "the filters cleared", |page| {
        page["ids"].as_array().is_some_and(|ids| ids.len() == 50)
    });
    let png = browser.screenshot();
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page-50-jobs.png");
    std::fs::write(&shot, &png).unwrap();
    println!("status page screenshot: {}", shot.display());
}

/// What the page shows of the batch `imp` and the rows around it: every row in the table's
/// order (id, class, parent, state, whether hidden), and the batch row's own cells.
const BATCH_VIEW: &str = r##"(() => {
    if (!document.getElementById("summary")) return null;
    const rows = Array.from(document.querySelectorAll("#jobs tbody tr"));
    const batch = document.querySelector('tr[data-id="imp"]');
    return {
        rows: rows.filter((row) => !row.hidden).map((row) => ({
            id: row.dataset.id, child: row.classList.contains("child"),
            parent: row.dataset.parent || null, state: row.dataset.state,
            count: row.querySelector(".count")?.textContent,
        })),
        inDom: rows.length,
        batch: batch && {
            size: batch.dataset.batch,
            open: batch.dataset.open,
            expanded: batch.querySelector("button.toggle").getAttribute("aria-expanded"),
            value: batch.querySelector("progress").value,
            max: batch.querySelector("progress").max,
            count: batch.querySelector(".count")?.textContent,
            message: batch.querySelector("td.message")?.textContent,
        },
        summary: document.getElementById("summary")?.textContent,
        hash: location.hash,
    };
})()"##;

fn ids_of(view: &Value) -> Vec<String> {
    view["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| row["id"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_status_page_shows_a_batch_as_one_row_that_opens_to_its_children() {
    let Some(chromium) = chromium() else {
        skip_without_chromium();
        return;
    };
    use std::sync::Arc;
    use syncstatus::jobs::{self, FailurePolicy};
    use syncstatus::{MemoryStorage, Progress, PutMode, SyncStatus, SyncStorage, SyncStorageExt};

    // A clock of the test's own, so that `solo` is surely created after the batch: the page
    // lists newest first, and both could otherwise fall in one millisecond.
    let clock = syncstatus::ManualClock::starting_now();
    let store = Arc::new(MemoryStorage::with_options(
        syncstatus::TtlPolicy::default(),
        Arc::new(clock.clone()),
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let children = (0..3)
        .map(|_| SyncStatus::pending().with_progress(Progress::new(0, 4)))
        .collect();
    runtime
        .block_on(jobs::submit_batch(
            &*store,
            "imp",
            children,
            FailurePolicy::Continue,
        ))
        .unwrap();
    let set_child = |id: &str, state: &str, done: u64| {
        runtime
            .block_on(store.update_with(id, |record| {
                let mut status = record.expect("the child exists").status.clone();
                status["state"] = json!(state);
                status["progress"] = json!({"done": done, "total": 4});
                Ok(status)
            }))
            .unwrap();
    };
    set_child("imp.2", "completed", 4);
    set_child("imp.3", "running", 2);
    runtime
        .block_on(jobs::reconcile_batch(&*store, "imp"))
        .unwrap();
    clock.advance(std::time::Duration::from_secs(1));
    runtime
        .block_on(store.put(
            "solo",
            json!({"state": "running", "progress": {"done": 1, "total": 2}}),
            PutMode::Overwrite,
        ))
        .unwrap();
    let server = serve_in_process(store.clone());
    let workdir = tempfile::tempdir().unwrap();
    let mut browser = Browser::launch(&chromium, &workdir.path().join("chromium"));
    browser.open(&format!("http://{}/", server.addr));

    // Closed: the batch is one row with its counts and one bar; no child row is even built.
    let closed = wait_in_page(&mut browser, BATCH_VIEW, "the batch row", |view| {
        ids_of(view).len() == 2
    });
    assert_eq!(ids_of(&closed), ["solo", "imp"], "{closed}");
    assert_eq!(closed["inDom"], json!(2), "{closed}");
    let batch = &closed["batch"];
    assert_eq!(batch["size"], "3", "{closed}");
    assert_eq!(batch["expanded"], "false", "{closed}");
    assert_eq!(batch["value"], json!(6), "{closed}");
    assert_eq!(batch["max"], json!(12), "{closed}");
    assert_eq!(batch["count"], "6 / 12 (50%)", "{closed}");
    assert_eq!(
        batch["message"], "3 children: 1 completed, 1 running, 1 pending",
        "{closed}"
    );
    assert_eq!(
        closed["summary"], "2 jobs: 2 running; 1 batch holding 3 children",
        "{closed}"
    );

    // Opened: the children right under it, in their order, each with its own state and bar.
    browser.eval(r#"document.querySelector('tr[data-id="imp"] button.toggle').click()"#);
    let open = wait_in_page(&mut browser, BATCH_VIEW, "the batch opened", |view| {
        ids_of(view).len() == 5
    });
    assert_eq!(
        ids_of(&open),
        ["solo", "imp", "imp.1", "imp.2", "imp.3"],
        "{open}"
    );
    let rows = open["rows"].as_array().unwrap();
    for (row, state, count) in [
        (&rows[2], "pending", "0 / 4 (0%)"),
        (&rows[3], "completed", "4 / 4 (100%)"),
        (&rows[4], "running", "2 / 4 (50%)"),
    ] {
        assert_eq!(row["child"], true, "{open}");
        assert_eq!(row["parent"], "imp", "{open}");
        assert_eq!(row["state"], state, "{open}");
        assert_eq!(row["count"], count, "{open}");
    }
    assert_eq!(open["batch"]["expanded"], "true", "{open}");
    assert_eq!(open["hash"], "#open=imp", "{open}");

    // Live while open: a child completes, its row and the batch's counts follow.
    set_child("imp.1", "completed", 4);
    runtime
        .block_on(jobs::reconcile_batch(&*store, "imp"))
        .unwrap();
    let moved = wait_in_page(&mut browser, BATCH_VIEW, "the rollup on the page", |view| {
        view["batch"]["count"] == "10 / 12 (83%)" && view["rows"][2]["state"] == "completed"
    });
    assert_eq!(
        moved["batch"]["message"], "3 children: 2 completed, 1 running",
        "{moved}"
    );
    assert_eq!(ids_of(&moved).len(), 5, "{moved}");

    // Closed again: the children leave the table.
    browser.eval(r#"document.querySelector('tr[data-id="imp"] button.toggle').click()"#);
    let closed = wait_in_page(&mut browser, BATCH_VIEW, "the batch closed", |view| {
        view["inDom"] == json!(2)
    });
    assert_eq!(ids_of(&closed), ["solo", "imp"], "{closed}");
    assert_eq!(closed["hash"], "", "{closed}");
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}
