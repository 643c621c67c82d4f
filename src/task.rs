//! Tasks tied to the handle that started them.

/// Aborts a task when dropped, so no task outlives the handle that started it.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
