//! An [axum] router over any store: JSON reads, live Server-Sent Events, a status page and
//! guarded admin routes.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = syncstatus::open("file:./data/sync-status").await?;
//! let app = syncstatus::http::RouterConfig::new(store)
//!     .with_admin_key("s3cret")
//!     .router();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! # Routes
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /` | a status page: every job with a live progress bar (fed by `GET /events`) |
//! | `GET /syncs?state=running&prefix=sync-` | JSON array of records, sorted by id |
//! | `GET /syncs/{id}` | one record; 404 `{"error", "id"}` when missing or expired; 400 for a bad id |
//! | `GET /syncs/{id}/events` | SSE of one record, resumable with `Last-Event-ID` |
//! | `GET /events?prefix=sync-` | SSE of every record; starts (and restarts) with a snapshot |
//! | `GET /admin/stats` | counts per state, stale running jobs, health ([`crate::stats`]) |
//! | `GET /admin/health` | the same; 200 when healthy, 503 while stale running jobs exist |
//! | `POST /admin/cleanup?dry_run=true&ttl=5m` | runs [`SyncStorage::cleanup`](crate::SyncStorage::cleanup), returns its report |
//! | `POST /admin/recover/{id}` | recovers one running job ([`crate::recover_job`]) |
//! | `POST /admin/recover` | recovers every stale running job ([`crate::recover_stale`]) |
//! | `POST /admin/cancel/{id}` | cancels a job ([`crate::jobs::cancel`]); 409 if it already ended |
//! | `POST /admin/retry/{id}` | puts a failed or cancelled job back to pending ([`crate::jobs::retry`]); 409 otherwise |
//!
//! Errors are JSON: `{"error": "<message>", "id": "<id>"}` (the id when there is one).
//! Not found is 404, a refused id or argument 400 (unknown query parameters too), a version
//! conflict or a job in the wrong state for the request 409, a stored status that is not a job
//! status 422, anything else 500. A listing returns the records it could read and counts
//! the others in the `x-syncstatus-unreadable` header. Only the admin routes are guarded:
//! put the others behind your own authentication layer if statuses are not for everyone.
//!
//! The status page follows `events` below its own path, so the router also works nested:
//! `Router::new().nest("/status", router)` serves the page at `/status`.
//!
//! # Server-Sent Events
//!
//! Events are named `upsert` (data: the record), `removed` (data: `{"id": ...}`) and `resync`
//! (data: the array of every selected record; replace what you hold). A `problem` event
//! (data: `{"error": ...}`) reports a problem of the store; a `resync` follows once it is gone.
//! Comments are sent as keep-alives.
//!
//! On `/syncs/{id}/events` the event id is the record's version (`0` once it is removed or
//! while it does not exist), so a reconnecting `EventSource` sends `Last-Event-ID: 7` and gets
//! exactly what it missed: nothing if the record is still at version 7, else the record or its
//! removal. Without the header the stream starts with a `resync` of the record.
//!
//! On `/events` the event id is `<id>:<version>` so clients can drop repeats, but one id cannot
//! say what a client holds of every record: that stream always starts with a `resync`, also on
//! reconnection, which is what a reconnecting client needs.
//!
//! # Admin routes
//!
//! They answer only with `Authorization: Bearer <key>` for the key given to
//! [`RouterConfig::with_admin_key`] (compared in constant time); a missing or wrong key gets
//! 401. Without a key configured they are disabled and answer 503 `{"error": "admin disabled"}`.

mod admin;
mod error;
mod events;
mod page;
mod reads;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::lifecycle::{DEFAULT_STALE_AFTER, RecoveryPolicy};
use crate::storage::DynSyncStorage;

pub use error::ApiError;

/// How often an idle event stream sends a keep-alive comment, by default.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The router over `store` with default settings: admin routes disabled, stale after
/// [`DEFAULT_STALE_AFTER`]. See the [module docs](self) for the routes.
pub fn router(store: DynSyncStorage) -> Router {
    RouterConfig::new(store).router()
}

/// Settings of the router; [`RouterConfig::router`] builds it.
#[derive(Clone)]
pub struct RouterConfig {
    store: DynSyncStorage,
    admin_key: Option<Vec<u8>>,
    stale_after: Duration,
    recovery: RecoveryPolicy,
    keep_alive: Duration,
    shutdown: Option<Shared<BoxFuture<'static, ()>>>,
}

impl std::fmt::Debug for RouterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterConfig")
            .field("store", &self.store)
            .field("admin_enabled", &self.admin_key.is_some())
            .field("stale_after", &self.stale_after)
            .field("recovery", &self.recovery)
            .field("keep_alive", &self.keep_alive)
            .field("has_shutdown", &self.shutdown.is_some())
            .finish()
    }
}

impl RouterConfig {
    /// Settings for a router over `store`: admin routes disabled, stale after
    /// [`DEFAULT_STALE_AFTER`], the default [`RecoveryPolicy`], keep-alives every
    /// [`DEFAULT_KEEP_ALIVE`].
    pub fn new(store: DynSyncStorage) -> Self {
        RouterConfig {
            store,
            admin_key: None,
            stale_after: DEFAULT_STALE_AFTER,
            recovery: RecoveryPolicy::default(),
            keep_alive: DEFAULT_KEEP_ALIVE,
            shutdown: None,
        }
    }

    /// Enables the admin routes for requests with `Authorization: Bearer <key>`. An empty key
    /// leaves them disabled, since it would let anybody in.
    pub fn with_admin_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.admin_key = (!key.is_empty()).then(|| key.into_bytes());
        self
    }

    /// How long a running job may go without a heartbeat before stats call it stale, health
    /// fails and recovery requeues it.
    pub fn with_stale_after(mut self, stale_after: Duration) -> Self {
        self.stale_after = stale_after;
        self
    }

    /// The policy of `POST /admin/recover` routes.
    pub fn with_recovery_policy(mut self, policy: RecoveryPolicy) -> Self {
        self.recovery = policy;
        self
    }

    /// How often an idle event stream sends a keep-alive comment.
    pub fn with_keep_alive(mut self, interval: Duration) -> Self {
        self.keep_alive = interval;
        self
    }

    /// Ends every open event stream when `signal` completes. Give it the same signal as
    /// `axum::serve(..).with_graceful_shutdown(..)`, which otherwise waits forever for
    /// browsers that keep their event streams open.
    pub fn with_shutdown(
        mut self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.shutdown = Some(signal.boxed().shared());
        self
    }

    /// Builds the router. See the [module docs](self) for the routes.
    pub fn router(self) -> Router {
        let state = Arc::new(self);
        Router::new()
            .route("/", get(page::status_page))
            .route("/syncs", get(reads::list))
            .route("/syncs/{id}", get(reads::get_one))
            .route("/syncs/{id}/events", get(events::one))
            .route("/events", get(events::all))
            .route("/admin/stats", get(admin::stats))
            .route("/admin/health", get(admin::health))
            .route("/admin/cleanup", post(admin::cleanup))
            .route("/admin/recover", post(admin::recover_stale))
            .route("/admin/recover/{id}", post(admin::recover_one))
            .route("/admin/cancel/{id}", post(admin::cancel_one))
            .route("/admin/retry/{id}", post(admin::retry_one))
            .with_state(state)
    }
}

type AppState = Arc<RouterConfig>;
