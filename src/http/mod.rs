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
//! | `GET /syncs/{id}` | one record with its `ETag`; 304 for a matching `If-None-Match`; 404 `{"error", "id"}` when missing or expired; 400 for a bad id |
//! | `PUT /syncs/{id}` | writes the body as the status (201 when new); `If-None-Match: *` creates only, `If-Match` writes over that write only (412 otherwise) |
//! | `PATCH /syncs/{id}` | JSON Merge Patch (RFC 7396) of the status, applied under the record's lock; `If-Match` as for `PUT` |
//! | `DELETE /syncs/{id}` | 204, or 404 when there was no record |
//! | `POST /syncs/{id}/heartbeat` | sets `status.heartbeat_at` ([`crate::heartbeat`]) |
//! | `GET /metrics` | Prometheus text: records per state, stale running jobs, oldest age, counters of writes, conflicts, expiries, recoveries, cleanups (admin key) |
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
//! Not found is 404; a refused id or argument 400, and so is any query parameter a route
//! does not take (every route checks); a version conflict, a job not in a state that allows
//! the operation, a lost or cancelled job and a version at its maximum 409; a status that
//! cannot be used 422; a record over the size limit 413; a lock not released in time 503.
//! Anything else is a 500 that says only `internal error (error id <error_id>)` and carries
//! `error_id`: the detail (file paths, SQL) is logged with `tracing` under the same
//! `error_id`, never sent. A listing returns the records it could read and counts
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
//! On `/syncs/{id}/events` the event id names what the client then holds: `<created_at
//! millis>-<version>` of the record (`0` once it is removed or while it does not exist). The
//! version alone is not enough: a record deleted and written again up to the same version is
//! another record. A reconnecting `EventSource` sends `Last-Event-ID` and gets exactly what
//! it missed: nothing if it holds the current record at its version, else the record (a new
//! incarnation too) or its removal. Without the header, or with one this route did not
//! make, the stream starts with a `resync` of the record.
//!
//! On `/events` the event id is `<id>:<created_at millis>-<version>` (`<id>:0` for a removal)
//! so clients can drop repeats, but one id cannot say what a client holds of every record:
//! that stream always starts with a `resync`, also on reconnection, which is what a
//! reconnecting client needs.
//!
//! A `problem` event says only `the store reported a problem (error id <error_id>)`; the
//! detail is logged under that id.
//!
//! # Write routes
//!
//! Off by default (403). [`RouterConfig::with_write_key`] opens them to requests with
//! `Authorization: Bearer <key>`; [`RouterConfig::with_local_writes`] to loopback clients
//! without a key. A body must be declared JSON (`application/json`, or
//! `application/merge-patch+json` for `PATCH`; the heartbeat too), so a page on another site
//! cannot write with a simple request: the browser asks first, and only origins given to
//! [`RouterConfig::with_cors_origin`] pass. The `ETag` is `"<created_at millis>.<version>"`,
//! naming one write of one incarnation of the record.
//!
//! # Admin routes
//!
//! They answer only with `Authorization: Bearer <key>` for the key given to
//! [`RouterConfig::with_admin_key`] (compared in constant time); a missing or wrong key gets
//! 401. Without a key configured they are disabled and answer 503 `{"error": "admin disabled"}`.

mod admin;
mod auth;
mod cors;
mod error;
mod etag;
mod events;
mod metrics;
mod page;
mod params;
mod reads;
mod writes;

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
    writes: writes::WriteAccess,
    cors_origins: Vec<axum::http::HeaderValue>,
    metrics: Arc<metrics::Counters>,
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
            .field("writes", &self.writes)
            .field("cors_origins", &self.cors_origins)
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
            writes: writes::WriteAccess::default(),
            cors_origins: Vec::new(),
            metrics: Arc::default(),
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
        let cors = cors::layer(&self.cors_origins);
        let state = Arc::new(self);
        let router = Router::new()
            .route("/", get(page::status_page))
            .route("/syncs", get(reads::list))
            .route(
                "/syncs/{id}",
                get(reads::get_one)
                    .put(writes::put)
                    .patch(writes::patch)
                    .delete(writes::delete),
            )
            .route("/syncs/{id}/heartbeat", post(writes::heartbeat))
            .route("/syncs/{id}/events", get(events::one))
            .route("/events", get(events::all))
            .merge(admin::routes(&state))
            .with_state(state);
        match cors {
            Some(cors) => router.layer(cors),
            None => router,
        }
    }
}

type AppState = Arc<RouterConfig>;
