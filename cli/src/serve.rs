//! `syncstatus serve`: the HTTP router over a store, for pages and programs in any language.
//! Reads, writes, events, admin routes, `/metrics` and the status page; no job runner.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::FutureExt;
use syncstatus::DynSyncStorage;
use syncstatus::http::RouterConfig;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::failure::{Failure, code};

const AFTER_HELP: &str = "\
Keys (never on the command line, where other users can read them):
  SYNCSTATUS_WRITE_KEY or the file in --write-key-file / $SYNCSTATUS_WRITE_KEY_FILE opens
  PUT, PATCH, DELETE /syncs/{id} and POST /syncs/{id}/heartbeat to `Authorization: Bearer KEY`.
  SYNCSTATUS_ADMIN_KEY or --admin-key-file / $SYNCSTATUS_ADMIN_KEY_FILE opens /admin/* and
  /metrics. Without a write key, writes are refused, unless --local-writes is given on a
  loopback --listen.

Logs: one line per request on stderr; $SYNCSTATUS_LOG filters them (default `info`).
The first line on stdout is `listening on http://ADDR`.";

/// Arguments of `syncstatus serve`.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct ServeArgs {
    /// The address to listen on (port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3001")]
    listen: SocketAddr,
    /// Let pages from ORIGIN (`http://localhost:3000`) use the server through CORS.
    /// Repeat for more origins.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// Accept writes without a key from this machine. Only with a loopback --listen.
    #[arg(long)]
    local_writes: bool,
    /// A file holding the write key (default: $SYNCSTATUS_WRITE_KEY_FILE).
    #[arg(long, value_name = "FILE")]
    write_key_file: Option<PathBuf>,
    /// A file holding the admin key (default: $SYNCSTATUS_ADMIN_KEY_FILE).
    #[arg(long, value_name = "FILE")]
    admin_key_file: Option<PathBuf>,
    /// A running job without a heartbeat for this long is stale (stats, health, recovery).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "60s")]
    stale_after: Duration,
}

fn read_key_file(path: &Path, what: &str) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path).map_err(|error| Failure {
        code: code::USAGE,
        message: format!("cannot read the {what} file {}: {error}", path.display()),
    })?;
    let key = text.trim();
    if key.is_empty() {
        return Err(Failure::usage(format!(
            "the {what} file {} is empty",
            path.display()
        )));
    }
    Ok(key.to_string())
}

/// A key from `--…-key-file`, else `$<VAR>_FILE`, else `$<VAR>`; `None` without any.
fn key(flag: Option<&Path>, var: &str, what: &str) -> Result<Option<String>, Failure> {
    let file_var = format!("{var}_FILE");
    let from_env = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(path) = flag {
        return read_key_file(path, what).map(Some);
    }
    if let Some(path) = from_env(&file_var) {
        return read_key_file(Path::new(&path), what).map(Some);
    }
    match from_env(var) {
        None => Ok(None),
        Some(value) => value
            .into_string()
            .map(Some)
            .map_err(|_| Failure::usage(format!("${var} is not UTF-8"))),
    }
}

/// Completes on Ctrl-C or SIGTERM. Installed before the server starts, so a signal that
/// comes early is not missed.
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, Failure> {
    #[cfg(unix)]
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|error| Failure {
        code: code::OTHER,
        message: format!("cannot listen for SIGTERM: {error}"),
    })?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing requests in flight, closing event streams");
    })
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SYNCSTATUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A subscriber set already (there is none in this binary) is not worth failing for.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Serves `store` until SIGTERM or Ctrl-C, then waits for requests in flight.
pub async fn run(store: DynSyncStorage, args: ServeArgs) -> Result<(), Failure> {
    let write_key = key(
        args.write_key_file.as_deref(),
        "SYNCSTATUS_WRITE_KEY",
        "write key",
    )?;
    let admin_key = key(
        args.admin_key_file.as_deref(),
        "SYNCSTATUS_ADMIN_KEY",
        "admin key",
    )?;
    if args.local_writes && !args.listen.ip().is_loopback() {
        return Err(Failure::usage(format!(
            "--local-writes accepts writes without a key, so it needs a loopback --listen (127.0.0.1 or [::1]), not {}; use a write key instead",
            args.listen
        )));
    }
    if args.local_writes && write_key.is_some() {
        return Err(Failure::usage(
            "--local-writes and a write key both given: choose one",
        ));
    }
    init_logs();
    let shutdown = shutdown_signal()?.shared();
    let mut config = RouterConfig::new(store)
        .with_stale_after(args.stale_after)
        .with_shutdown(shutdown.clone());
    match (&write_key, args.local_writes) {
        (Some(key), _) => config = config.with_write_key(key.as_str()),
        (None, true) => config = config.with_local_writes(),
        (None, false) => tracing::info!("writes are disabled: no write key and no --local-writes"),
    }
    if let Some(key) = &admin_key {
        config = config.with_admin_key(key.as_str());
    }
    for origin in &args.cors_origins {
        config = config.with_cors_origin(origin)?;
    }
    let app = config.router().layer(
        TraceLayer::new_for_http()
            .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
            .on_response(DefaultOnResponse::new().level(Level::INFO)),
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|error| Failure {
            code: code::OTHER,
            message: format!("cannot listen on {}: {error}", args.listen),
        })?;
    let local = listener.local_addr().map_err(|error| Failure {
        code: code::OTHER,
        message: format!("cannot read the address listened on: {error}"),
    })?;
    {
        // Scripts and tests wait for this line to know the port.
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "listening on http://{local}");
        let _ = stdout.flush();
    }
    tracing::info!(%local, "serving");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(|error| Failure {
        code: code::OTHER,
        message: format!("the server on {local} failed: {error}"),
    })
}
