//! Scheduled cleanup with a graceful stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::storage::{CleanupOptions, CleanupReport, DynSyncStorage};

/// When and how a [`Sweeper`] sweeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweeperConfig {
    /// Wait this long after spawning before the first sweep, so start-up (and the burst of
    /// restarts of a dev server) is left alone. Default: 2 minutes.
    pub initial_delay: Duration,
    /// Pause between the end of one sweep and the start of the next. Default: 5 minutes.
    pub interval: Duration,
    /// What each sweep passes to [`SyncStorage::cleanup`](crate::SyncStorage::cleanup).
    pub options: CleanupOptions,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        SweeperConfig {
            initial_delay: Duration::from_secs(120),
            interval: Duration::from_secs(300),
            options: CleanupOptions::default(),
        }
    }
}

/// A task that cleans a store on a schedule. Lazy sweeps on access need no sweeper; this is
/// for stores that must be kept small even when nobody writes.
///
/// [`shutdown`](Self::shutdown) stops scheduling and waits for a sweep in progress; dropping
/// the handle stops the task at once. Sweeps of several processes or replicas on one store
/// never overlap: each takes the store's sweep lock, and a skipped sweep reports `ran: false`.
#[derive(Debug)]
pub struct Sweeper {
    stop: watch::Sender<bool>,
    last: watch::Receiver<Option<Arc<CleanupReport>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sweeper {
    /// Starts sweeping `store` on the current tokio runtime.
    pub fn spawn(store: DynSyncStorage, config: SweeperConfig) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let (report_tx, last) = watch::channel(None);
        let task = tokio::spawn(async move {
            let mut delay = config.initial_delay;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped.wait_for(|stop| *stop) => return,
                }
                // Not raced against the stop signal: a sweep once begun runs to its end,
                // which is what `shutdown` waits for.
                match store.cleanup(&config.options).await {
                    Ok(report) => {
                        tracing::debug!(ran = report.ran, removed = report.removed.len(), "sweep");
                        report_tx.send_replace(Some(Arc::new(report)));
                    }
                    Err(error) => tracing::warn!(%error, "sweep failed"),
                }
                delay = config.interval;
            }
        });
        Sweeper {
            stop,
            last,
            task: Some(task),
        }
    }

    /// The report of the last sweep, if one finished.
    pub fn last_report(&self) -> Option<Arc<CleanupReport>> {
        self.last.borrow().clone()
    }

    /// Waits until a sweep finishes after this call and returns its report.
    pub async fn next_report(&mut self) -> Option<Arc<CleanupReport>> {
        self.last.borrow_and_update();
        self.last.changed().await.ok()?;
        self.last.borrow().clone()
    }

    /// Stops scheduling sweeps and waits for a sweep in progress to finish.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
            && error.is_panic()
        {
            tracing::error!("the sweeper task panicked");
        }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
