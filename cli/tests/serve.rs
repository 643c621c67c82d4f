//! `syncstatus serve` as a process: who may write, keys from the environment or a file,
//! graceful shutdown, and a real Node client (`tests/node/client.mjs`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(10);

/// A running `syncstatus serve`, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_syncstatus"));
    command
        .env_remove("SYNCSTATUS_STORE")
        .env_remove("SYNCSTATUS_WRITE_KEY")
        .env_remove("SYNCSTATUS_WRITE_KEY_FILE")
        .env_remove("SYNCSTATUS_ADMIN_KEY")
        .env_remove("SYNCSTATUS_ADMIN_KEY_FILE")
        .env("SYNCSTATUS_LOG", "warn")
        .arg("--dir")
        .arg(dir)
        .arg("serve")
        .args(args);
    command
}

/// Starts the server and waits for its `listening on` line.
fn start(mut command: Command) -> Server {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // The read blocks until the line or the end of stdout (the process exited).
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    Server { child, addr }
}

/// One HTTP/1.1 request on a fresh connection; the status code and the whole answer.
fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    (status, answer)
}

fn put(addr: SocketAddr, host: &str, key: Option<&str>, body: &str) -> (u16, String) {
    let auth = key.map_or(String::new(), |key| {
        format!("Authorization: Bearer {key}\r\n")
    });
    http(
        addr,
        &format!(
            "PUT /syncs/job-1 HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn writes_are_refused_without_a_key_and_accepted_with_one_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let closed = start(serve_command(dir.path(), &["--listen", "127.0.0.1:0"]));
    let (status, answer) = put(closed.addr, "localhost", Some("anything"), "{}");
    assert_eq!(status, 403, "{answer}");
    drop(closed);

    let key_file = dir.path().join("write.key");
    std::fs::write(&key_file, "file key\n").unwrap();
    let mut command = serve_command(dir.path(), &["--listen", "127.0.0.1:0"]);
    command.env("SYNCSTATUS_WRITE_KEY_FILE", &key_file);
    let server = start(command);
    assert_eq!(put(server.addr, "localhost", None, "{}").0, 401);
    assert_eq!(put(server.addr, "localhost", Some("wrong"), "{}").0, 401);
    let (status, answer) = put(
        server.addr,
        "localhost",
        Some("file key"),
        r#"{"state":"running"}"#,
    );
    assert_eq!(status, 201, "{answer}");
    let text = std::fs::read_to_string(dir.path().join("job-1.json")).unwrap();
    assert!(text.contains("running"), "{text}");
}

#[test]
fn local_writes_only_on_loopback_and_only_for_a_loopback_host() {
    let dir = tempfile::tempdir().unwrap();
    let output = serve_command(dir.path(), &["--listen", "0.0.0.0:0", "--local-writes"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--local-writes") && stderr.contains("loopback"),
        "{stderr}"
    );

    let server = start(serve_command(
        dir.path(),
        &["--listen", "127.0.0.1:0", "--local-writes"],
    ));
    let (status, answer) = put(server.addr, &server.addr.to_string(), None, "{}");
    assert_eq!(status, 201, "{answer}");
    // What a page on another site whose name resolves to 127.0.0.1 sends.
    let (status, answer) = put(server.addr, "evil.example:3001", None, "{}");
    assert_eq!(status, 403, "{answer}");
}

#[test]
fn keys_are_not_taken_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let output = serve_command(dir.path(), &["--write-key", "secret"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&output.stderr).contains("secret"));
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_server_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(serve_command(dir.path(), &["--listen", "127.0.0.1:0"]));
    let (status, _) = http(
        server.addr,
        "GET /syncs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// The Node client of `tests/node/client.mjs` against `syncstatus serve`, restarted midway.
#[test]
fn a_node_client_creates_patches_polls_and_follows_events_across_a_restart() {
    let node = std::env::var_os("SYNCSTATUS_NODE").unwrap_or_else(|| "node".into());
    if Command::new(&node).arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "node is not installed (apt-get install -y nodejs), and CI is set"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the Node client test: no `node` to run (apt-get install -y nodejs, or set SYNCSTATUS_NODE)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/node/client.mjs");
    let output = Command::new(&node)
        .arg(&script)
        .env("SYNCSTATUS_BIN", env!("CARGO_BIN_EXE_syncstatus"))
        .env("SYNCSTATUS_TEST_DIR", dir.path())
        .env("SYNCSTATUS_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "node client failed ({:?}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.lines().any(|line| line == "ok - done"), "{stdout}");
    assert!(stdout.contains("delivered the missed write"), "{stdout}");
}
