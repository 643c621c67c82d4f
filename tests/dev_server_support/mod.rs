//! Runs the `dev_server` example as a process and talks plain HTTP/1.1 to it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the server may take to start and print its address.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// Builds the example with the same features as this test (so nothing is rebuilt) and
/// returns its path, once per test binary.
pub fn example_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let mut features = vec!["axum"];
        if cfg!(feature = "redis") {
            features.push("redis");
        }
        if cfg!(feature = "postgres") {
            features.push("postgres");
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let mut cargo = Command::new(env!("CARGO"));
        // Build where this test was built (`<target>/debug/deps/<test>`), also when the
        // target directory was given with `--target-dir` rather than the environment.
        if std::env::var_os("CARGO_TARGET_DIR").is_none()
            && let Some(target_dir) = std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        {
            cargo.env("CARGO_TARGET_DIR", target_dir);
        }
        let output = cargo
            .args([
                "build",
                "--quiet",
                "--example",
                "dev_server",
                "-p",
                "syncstatus",
            ])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--features")
            .arg(features.join(","))
            .arg("--message-format=json")
            .stderr(Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(
            output.status.success(),
            "building the dev_server example failed"
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|message| {
                message["reason"] == "compiler-artifact"
                    && message["target"]["name"] == "dev_server"
            })
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo reports the dev_server executable")
    })
}

/// A running dev server; dropping it kills it.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts the server in `workdir` on a free port, with `env` added, and waits for its
    /// address line.
    pub fn start(workdir: &Path, env: &[(&str, &str)]) -> Server {
        let log = workdir.join(format!(
            "dev_server-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(example_binary());
        command
            .current_dir(workdir)
            .env("PORT", "0")
            .env_remove("SYNCSTATUS_STORE")
            .env_remove("SYNCSTATUS_ADMIN_KEY")
            .env_remove("SYNCSTATUS_STALE_AFTER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the dev server starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = tx.send(first);
            // Keep reading so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let first = match rx.recv_timeout(START_DEADLINE) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the dev server printed no address ({other:?}); its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let addr = first
            .strip_prefix("listening on http://")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line `{first}`"));
        Server { child, addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Kills it with SIGKILL, as a crash or a hot reload would, and reaps it.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    /// Sends it SIGINT (Ctrl-C) and waits, with a deadline, for it to exit on its own.
    pub fn interrupt(self, deadline: Duration) -> std::process::ExitStatus {
        self.stop_with(libc::SIGINT, deadline)
    }

    /// Sends it SIGTERM (as `cargo watch` or a service manager does) and waits, with a
    /// deadline, for it to exit on its own.
    pub fn terminate(self, deadline: Duration) -> std::process::ExitStatus {
        self.stop_with(libc::SIGTERM, deadline)
    }

    fn stop_with(mut self, signal: i32, deadline: Duration) -> std::process::ExitStatus {
        let pid = i32::try_from(self.child.id()).expect("a pid fits in i32");
        // SAFETY: kill(2) has no memory effects; the pid is our own child, not yet reaped.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "signal {signal} could not be sent");
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > until {
                panic!(
                    "the dev server did not stop within {deadline:?} of signal {signal}; its log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A request; `None` if the server could not be reached.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Option<Response> {
        request(self.addr, method, path, body)
    }

    /// A GET of JSON that must succeed with 200.
    pub fn get_json(&self, path: &str) -> Value {
        let response = self
            .request("GET", path, None)
            .unwrap_or_else(|| panic!("GET {path}: no answer"));
        assert_eq!(response.status, 200, "GET {path}: {}", response.body);
        response.json()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`).
pub fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Option<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub fn wait_for<T>(deadline: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < until, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a sync through `POST /syncs` and returns its id.
pub fn start_sync(server: &Server, pages: u64, page_ms: u64) -> String {
    let body = format!(r#"{{"pages": {pages}, "page_ms": {page_ms}}}"#);
    let response = server
        .request("POST", "/syncs", Some(&body))
        .expect("POST /syncs answers");
    assert_eq!(response.status, 202, "{}", response.body);
    let record = response.json();
    let id = record["id"].as_str().expect("an id").to_string();
    assert_eq!(
        response.header("location"),
        Some(format!("/syncs/{id}").as_str())
    );
    id
}
