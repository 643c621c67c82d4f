//! The `dev_server` example as a process: a sync survives SIGKILL and a restart, and Ctrl-C
//! stops the server cleanly with an event stream open.
#![cfg(all(feature = "axum", unix))]

mod dev_server_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use dev_server_support::{Server, start_sync, wait_for};
use serde_json::{Value, json};

/// Deadline for a sync to make progress or finish; far above what it needs.
const DEADLINE: Duration = Duration::from_secs(60);

fn record(server: &Server, id: &str) -> Value {
    server.get_json(&format!("/syncs/{id}"))
}

fn done_of(record: &Value) -> u64 {
    record["status"]["progress"]["done"].as_u64().unwrap_or(0)
}

#[test]
fn a_sync_killed_mid_way_resumes_after_restart_and_completes() {
    let workdir = tempfile::tempdir().unwrap();
    let pages = 40;
    let first = Server::start(workdir.path(), &[]);
    let id = start_sync(&first, pages, 100);
    let before_kill = wait_for(DEADLINE, "progress before the kill", || {
        let record = record(&first, &id);
        (record["status"]["state"] == "running" && done_of(&record) > 0).then_some(record)
    });
    first.kill();
    let done_at_kill = done_of(&before_kill);
    let version_at_kill = before_kill["version"].as_u64().unwrap();
    assert!(
        done_at_kill < pages,
        "the sync finished before the kill; make it longer"
    );
    assert_eq!(before_kill["status"]["attempt"], json!(1));

    // The store on disk holds the status; the killed worker left it running.
    let file = workdir
        .path()
        .join("data/sync-status")
        .join(format!("{id}.json"));
    let on_disk: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(on_disk["status"]["state"], "running");
    assert!(done_of(&on_disk) >= done_at_kill);

    let second = Server::start(workdir.path(), &[]);
    // Right after the restart the record is there (never a 404 or a 500).
    let after_restart = record(&second, &id);
    assert!(done_of(&after_restart) >= done_at_kill);

    let mut lowest_seen_after_restart = done_of(&after_restart);
    let finished = wait_for(DEADLINE, "the sync to complete after the restart", || {
        let record = record(&second, &id);
        lowest_seen_after_restart = lowest_seen_after_restart.min(done_of(&record));
        (record["status"]["state"] == "completed").then_some(record)
    });
    assert!(
        lowest_seen_after_restart >= done_at_kill,
        "progress went back from {done_at_kill} to {lowest_seen_after_restart}"
    );
    let status = &finished["status"];
    assert_eq!(status["progress"], json!({"done": pages, "total": pages}));
    assert_eq!(status["result"], json!({"pages": pages}));
    assert_eq!(status["attempt"], json!(2), "{finished}");
    assert!(finished["version"].as_u64().unwrap() > version_at_kill);
    assert!(
        second.log_text().contains("worker died"),
        "{}",
        second.log_text()
    );
}

#[test]
fn ctrl_c_stops_the_server_with_a_stream_open_and_requeues_its_job() {
    let workdir = tempfile::tempdir().unwrap();
    let server = Server::start(workdir.path(), &[]);
    let id = start_sync(&server, 200, 100);
    wait_for(DEADLINE, "progress", || {
        (done_of(&record(&server, &id)) > 0).then_some(())
    });

    // A browser tab with the status page open holds an event stream.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        server.addr
    )
    .unwrap();
    let mut first_bytes = [0u8; 64];
    let read = stream.read(&mut first_bytes).unwrap();
    assert!(String::from_utf8_lossy(&first_bytes[..read]).starts_with("HTTP/1.1 200"));

    let exit = server.interrupt(Duration::from_secs(20));
    assert!(exit.success(), "{exit:?}");
    // The stream was ended by the server, not left hanging.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();

    // The worker gave its job back, so the next start resumes it at once.
    let file = workdir
        .path()
        .join("data/sync-status")
        .join(format!("{id}.json"));
    let on_disk: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(on_disk["status"]["state"], "pending", "{on_disk}");
    assert_eq!(on_disk["status"]["attempt"], json!(2));
    let done_at_stop = done_of(&on_disk);
    assert!(done_at_stop > 0);

    let again = Server::start(workdir.path(), &[]);
    let resumed = wait_for(DEADLINE, "the requeued job to run again", || {
        let record = record(&again, &id);
        (record["status"]["state"] == "running").then_some(record)
    });
    assert_eq!(resumed["status"]["attempt"], json!(2));
    assert!(done_of(&resumed) >= done_at_stop);
}

#[test]
fn the_dev_server_serves_the_router_and_its_own_routes() {
    let workdir = tempfile::tempdir().unwrap();
    let store = workdir.path().join("elsewhere");
    let server = Server::start(
        workdir.path(),
        &[
            ("SYNCSTATUS_STORE", store.to_str().unwrap()),
            ("SYNCSTATUS_ADMIN_KEY", "dev-key"),
        ],
    );
    let id = start_sync(&server, 2, 10);
    assert!(store.join(format!("{id}.json")).exists());

    let bad = server
        .request("POST", "/syncs", Some(r#"{"pages": "many"}"#))
        .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.json()["error"]
            .as_str()
            .unwrap()
            .contains("invalid body")
    );

    let missing = server.request("GET", "/syncs/nope", None).unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["id"], "nope");

    let evil = server.request("GET", "/syncs/..", None).unwrap();
    assert_eq!(evil.status, 400, "{}", evil.body);

    let admin = server.request("GET", "/admin/stats", None).unwrap();
    assert_eq!(admin.status, 401);

    let page = server.request("GET", "/", None).unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("EventSource"));

    wait_for(DEADLINE, "the short sync to complete", || {
        (record(&server, &id)["status"]["state"] == "completed").then_some(())
    });
    let listed = server.get_json("/syncs?state=completed");
    assert_eq!(listed[0]["id"], json!(id));
}

/// What the polling client saw.
#[derive(Default)]
struct Seen {
    answers: usize,
    bad: Vec<String>,
    highest: u64,
}

#[test]
fn a_sync_survives_eight_restarts_alternating_sigterm_and_sigkill_while_a_client_polls() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let workdir = tempfile::tempdir().unwrap();
    let env = [("SYNCSTATUS_STALE_AFTER", "1s")];
    let pages = 80;
    let mut server = Server::start(workdir.path(), &env);
    let id = start_sync(&server, pages, 100);

    // The client polls whichever server is up, every 100 ms, for the whole test.
    let current = Arc::new(Mutex::new(Some(server.addr)));
    let finished = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let poller = std::thread::spawn({
        let (current, finished, seen, id) =
            (current.clone(), finished.clone(), seen.clone(), id.clone());
        move || {
            while !finished.load(Ordering::SeqCst) {
                let addr = *current.lock().unwrap();
                let answer = addr.and_then(|addr| {
                    dev_server_support::request(addr, "GET", &format!("/syncs/{id}"), None)
                });
                // No answer while no server is up (from a stop to the next start) is expected;
                // every answer must be the record, with progress never going back.
                if let Some(answer) = answer {
                    let mut seen = seen.lock().unwrap();
                    seen.answers += 1;
                    if answer.status != 200 {
                        seen.bad.push(format!("{}: {}", answer.status, answer.body));
                    } else {
                        let done = done_of(&answer.json());
                        if done < seen.highest {
                            seen.bad.push(format!("progress went back to {done}"));
                        }
                        seen.highest = seen.highest.max(done);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });

    let mut at_last_stop = 0;
    for restart in 1..=8 {
        wait_for(DEADLINE, "progress in this server's life", || {
            let record = record(&server, &id);
            (record["status"]["state"] == "running" && done_of(&record) >= at_last_stop + 2)
                .then_some(())
        });
        let at_stop = record(&server, &id);
        assert_ne!(
            at_stop["status"]["state"], "completed",
            "the sync finished before restart {restart}; make it longer"
        );
        if restart % 2 == 1 {
            let exit = server.terminate(Duration::from_secs(20));
            assert!(exit.success(), "{exit:?}");
        } else {
            server.kill();
        }
        at_last_stop = done_of(&at_stop);
        server = Server::start(workdir.path(), &env);
        *current.lock().unwrap() = Some(server.addr);
    }
    let done = wait_for(DEADLINE, "the sync to complete", || {
        let record = record(&server, &id);
        (record["status"]["state"] == "completed").then_some(record)
    });
    finished.store(true, Ordering::SeqCst);
    poller.join().unwrap();

    let seen = seen.lock().unwrap();
    assert!(seen.bad.is_empty(), "the client saw {:?}", seen.bad);
    assert!(
        seen.answers > 20,
        "the client got only {} answers",
        seen.answers
    );
    let status = &done["status"];
    assert_eq!(status["progress"], json!({"done": pages, "total": pages}));
    let outcomes: Vec<&str> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|attempt| attempt["outcome"].as_str().unwrap())
        .collect();
    let mut expected = Vec::new();
    for _ in 0..4 {
        expected.extend(["requeued_on_shutdown", "interrupted"]);
    }
    expected.push("completed");
    assert_eq!(outcomes, expected, "{done}");
    assert_eq!(status["attempt"], json!(9));
}

/// A store URL's password never reaches the dev server's log.
#[cfg(feature = "redis")]
#[test]
fn the_store_url_is_logged_without_its_password() {
    let redis = std::env::var("SYNCSTATUS_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_string());
    let Some(authority) = redis.strip_prefix("redis://") else {
        return;
    };
    // Redis's default user takes any password unless one is configured, so the store opens.
    let url = format!("redis://default:SECRET-PASSWORD@{authority}");
    let workdir = tempfile::tempdir().unwrap();
    let server = Server::start(workdir.path(), &[("SYNCSTATUS_STORE", url.as_str())]);
    // Answered after the start-up lines were written.
    let listing = server
        .request("GET", "/syncs?prefix=none-such", None)
        .unwrap();
    assert_eq!(listing.status, 200, "{}", listing.body);
    let log = server.log_text();
    assert!(!log.contains("SECRET-PASSWORD"), "{log}");
    assert!(log.contains("default:***@"), "{log}");
}
