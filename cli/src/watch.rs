//! `watch`: live progress bars, or one JSON line per event. A watched batch folds its
//! children: its line or bar (whose message is the rollup's counts) stands for them, and on a
//! terminal its unfinished children show as indented bars under it; the JSON lines carry
//! every record as it is.

use std::collections::{HashMap, HashSet};
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, mpsc};
use std::thread;

use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use syncstatus::jobs::batch::is_batch;
use syncstatus::{DynSyncStorage, Record, WatchEvent, WatchOptions, WatchSelector};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::failure::{Failure, code, one_line};
use crate::{batch, render};

/// Follows the selected ids until Ctrl-C, SIGTERM or stdout closes.
pub async fn run(
    store: DynSyncStorage,
    ids: Vec<String>,
    prefix: Option<String>,
    json: bool,
) -> Result<(), Failure> {
    let selector = match (ids.is_empty(), prefix) {
        (_, Some(prefix)) => WatchSelector::Prefix(prefix),
        (true, None) => WatchSelector::All,
        (false, None) => WatchSelector::ids(ids),
    };
    let options = WatchOptions {
        snapshot: true,
        ..WatchOptions::default()
    };
    let stop = stop_signal()?;
    tokio::pin!(stop);
    let mut stream = store.watch(selector, options).await?;
    let mut sink = if json {
        Sink::Json(tokio::io::stdout())
    } else {
        Sink::View(ViewThread::start())
    };
    loop {
        let event = tokio::select! {
            biased;
            () = &mut stop => return Ok(()),
            event = stream.next() => event,
        };
        match event {
            Some(Ok(event)) => {
                if !sink.send(event).await? {
                    return Ok(());
                }
            }
            // The stream carries on after an error and resyncs once the cause is gone.
            Some(Err(error)) => {
                let line = format!(
                    "syncstatus: warning: watch: {}\n",
                    crate::failure::printable(&one_line(&error))
                );
                // A warning that cannot be written has nowhere else to go.
                let _ = tokio::io::stderr().write_all(line.as_bytes()).await;
            }
            None => {
                return Err(Failure {
                    code: code::STORE,
                    message: "the store ended the watch".into(),
                });
            }
        }
    }
}

/// Resolves when the watch should end: Ctrl-C, SIGTERM, or stdout closed by its reader. The
/// signal handlers are installed here, before the first event is printed, so that a signal
/// sent by someone who saw that event ends the watch cleanly.
#[cfg(unix)]
fn stop_signal() -> Result<impl Future<Output = ()>, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|error| Failure {
            code: code::OTHER,
            message: format!("cannot handle {name}: {error}"),
        })
    };
    let mut interrupt = install(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = install(SignalKind::terminate(), "SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            () = stdout_closed() => {}
        }
    })
}

#[cfg(not(unix))]
fn stop_signal() -> Result<impl Future<Output = ()>, Failure> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_err() {
            // Without a handler the default action still ends the process on Ctrl-C.
            std::future::pending::<()>().await;
        }
    })
}

/// Resolves when the reader of stdout goes away while nothing is being written, so a
/// `watch` feeding a pipe ends with its reader even when no event comes. Where stdout cannot
/// be polled (a regular file), it never resolves and a failed write ends the watch instead.
#[cfg(unix)]
async fn stdout_closed() {
    use std::os::fd::AsFd;
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    let stdout = io::stdout();
    let Ok(fd) = stdout.as_fd().try_clone_to_owned() else {
        return std::future::pending().await;
    };
    // SAFETY: `fd` is an `OwnedFd` moved into the `AsyncFd`, so it stays open and names the
    // same file description for the whole life of the registration.
    let Ok(fd) = (unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE) }) else {
        return std::future::pending().await;
    };
    loop {
        let Ok(mut guard) = fd.writable().await else {
            return std::future::pending().await;
        };
        if guard.ready().is_write_closed() {
            return;
        }
        guard.clear_ready();
    }
}

enum Sink {
    Json(tokio::io::Stdout),
    View(ViewThread),
}

impl Sink {
    /// Passes an event on; false when the output is gone and the watch should end quietly.
    async fn send(&mut self, event: WatchEvent) -> Result<bool, Failure> {
        match self {
            Sink::Json(stdout) => {
                let mut line =
                    serde_json::to_string(&JsonEvent::from(&event)).map_err(|error| Failure {
                        code: code::OTHER,
                        message: format!("cannot encode the event as JSON: {error}"),
                    })?;
                line.push('\n');
                let written = match stdout.write_all(line.as_bytes()).await {
                    Ok(()) => stdout.flush().await,
                    Err(error) => Err(error),
                };
                match written {
                    Ok(()) => Ok(true),
                    Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(false),
                    Err(error) => Err(Failure {
                        code: code::OTHER,
                        message: format!("cannot write to stdout: {error}"),
                    }),
                }
            }
            Sink::View(view) => Ok(view.send(event).await),
        }
    }
}

/// The JSON line of an event: `{"event": "upsert" | "removed" | "resync", ...}`, with
/// `event` first so that a reader of the raw line sees the kind at once.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum JsonEvent<'a> {
    Upsert {
        id: &'a str,
        version: u64,
        record: &'a Record,
    },
    Removed {
        id: &'a str,
    },
    Resync {
        records: &'a [Arc<Record>],
    },
}

impl<'a> From<&'a WatchEvent> for JsonEvent<'a> {
    fn from(event: &'a WatchEvent) -> Self {
        match event {
            WatchEvent::Upsert(record) => JsonEvent::Upsert {
                id: &record.id,
                version: record.version,
                record,
            },
            WatchEvent::Removed { id } => JsonEvent::Removed { id },
            WatchEvent::Resync(records) => JsonEvent::Resync { records },
        }
    }
}

/// The terminal view runs on its own thread: drawing writes to the terminal, which may block.
struct ViewThread {
    events: Option<mpsc::Sender<WatchEvent>>,
    gone: oneshot::Receiver<()>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ViewThread {
    fn start() -> Self {
        let (events, receiver) = mpsc::channel::<WatchEvent>();
        let (gone_tx, gone) = oneshot::channel();
        let thread = thread::spawn(move || {
            let mut view = View::new();
            for event in receiver {
                if view.apply(event).is_err() {
                    break;
                }
            }
            drop(gone_tx);
        });
        ViewThread {
            events: Some(events),
            gone,
            thread: Some(thread),
        }
    }

    /// False once the view stopped (its output closed).
    async fn send(&mut self, event: WatchEvent) -> bool {
        let sent = self
            .events
            .as_ref()
            .is_some_and(|events| events.send(event).is_ok());
        sent && matches!(
            self.gone.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }
}

impl Drop for ViewThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop; wait for it so no drawing outlives us.
        self.events = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn is_terminal_state(state: Option<&str>) -> bool {
    state
        .and_then(|state| state.parse::<syncstatus::State>().ok())
        .is_some_and(syncstatus::State::is_terminal)
}

/// One line about a record, for finished jobs and for output that is not a terminal. A
/// batch's message is its children's counts (the rollup writes both at once), so its line
/// stands for the children it folds.
fn line(record: &Record) -> String {
    let mut line = format!(
        "{}  {}  {}  v{}",
        render::escape(&record.id),
        render::state_of(record),
        render::progress_text(&record.status),
        record.version
    );
    if let Some(message) = render::message_of(&record.status) {
        line.push_str("  ");
        line.push_str(&message);
    }
    line
}

/// Which records are children folded into a batch the view shows, as `ls` folds them: a
/// child whose batch is not watched (`watch --prefix BATCH.`) stays a job of its own.
#[derive(Debug, Default)]
struct Folding {
    batches: HashSet<String>,
}

impl Folding {
    /// Notes a record the view now shows; a batch's later children fold into it.
    fn saw(&mut self, record: &Record) {
        if is_batch(record) {
            self.batches.insert(record.id.clone());
        } else {
            self.batches.remove(&record.id);
        }
    }

    fn forget(&mut self, id: &str) {
        self.batches.remove(id);
    }

    /// The batch `record` folds into, if the view shows it.
    fn batch_of<'a>(&self, record: &'a Record) -> Option<&'a str> {
        batch::parent_of(record).filter(|parent| self.batches.contains(*parent))
    }
}

/// The live view: a bar per unfinished job; a line per finished one, printed once.
struct View {
    /// `None` when stdout is not a terminal: then every change is printed as a line.
    multi: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    /// Finished jobs already printed, by the version printed.
    printed: HashMap<String, u64>,
    folding: Folding,
    /// Children whose bars sit under their batch's bar, by that batch.
    under: HashMap<String, String>,
    /// The child last put under each batch, so its children keep the order they came in.
    last_under: HashMap<String, String>,
    with_total: ProgressStyle,
    without_total: ProgressStyle,
}

impl View {
    fn new() -> Self {
        let multi = io::stdout()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()));
        let with_total =
            ProgressStyle::with_template("{prefix:.bold} {bar:30.cyan/blue} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("#>-");
        let without_total = ProgressStyle::with_template("{prefix:.bold} {pos} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        View {
            multi,
            bars: HashMap::new(),
            printed: HashMap::new(),
            folding: Folding::default(),
            under: HashMap::new(),
            last_under: HashMap::new(),
            with_total,
            without_total,
        }
    }

    fn apply(&mut self, event: WatchEvent) -> io::Result<()> {
        match event {
            WatchEvent::Upsert(record) => {
                self.folding.saw(&record);
                self.upsert(&record)
            }
            WatchEvent::Removed { id } => {
                self.folding.forget(&id);
                self.removed(&id)
            }
            WatchEvent::Resync(records) => {
                let ids: HashSet<&str> = records.iter().map(|record| record.id.as_str()).collect();
                let gone: Vec<String> = self
                    .bars
                    .keys()
                    .filter(|id| !ids.contains(id.as_str()))
                    .cloned()
                    .collect();
                for id in gone {
                    self.removed(&id)?;
                }
                self.printed.retain(|id, _| ids.contains(id.as_str()));
                // Every batch first, so that its children fold whatever the snapshot's order.
                self.folding = Folding::default();
                records.iter().for_each(|record| self.folding.saw(record));
                records.iter().try_for_each(|record| self.upsert(record))
            }
        }
    }

    fn println(&self, text: &str) -> io::Result<()> {
        match &self.multi {
            Some(multi) => multi.println(text),
            None => {
                let mut stdout = io::stdout().lock();
                writeln!(stdout, "{text}")?;
                stdout.flush()
            }
        }
    }

    fn upsert(&mut self, record: &Record) -> io::Result<()> {
        let folded_into = self.folding.batch_of(record).map(str::to_string);
        let Some(multi) = self.multi.clone() else {
            // The batch's line, printed as its counts change, stands for the child.
            if folded_into.is_some() {
                return Ok(());
            }
            if self.printed.insert(record.id.clone(), record.version) == Some(record.version) {
                return Ok(());
            }
            return self.println(&line(record));
        };
        if is_terminal_state(record.state()) {
            if let Some(bar) = self.take_bar(&record.id) {
                multi.remove(&bar);
            }
            // A finished child is counted in its batch's bar; it needs no line of its own.
            if folded_into.is_none()
                && self.printed.insert(record.id.clone(), record.version) != Some(record.version)
            {
                self.println(&line(record))?;
            }
            return Ok(());
        }
        self.printed.remove(&record.id);
        // A child shown before its batch was known moves under the batch's bar.
        let misplaced = folded_into
            .as_ref()
            .is_some_and(|batch| self.under.get(&record.id) != Some(batch));
        if misplaced && let Some(bar) = self.take_bar(&record.id) {
            multi.remove(&bar);
        }
        let (position, length) = match render::progress_of(&record.status) {
            Some((done, Some(total))) => (done.min(total), Some(total)),
            Some((done, None)) => (done, None),
            None => (0, None),
        };
        let style = match length {
            Some(_) => &self.with_total,
            None => &self.without_total,
        };
        let indent = if folded_into.is_some() {
            "  \u{2514} "
        } else {
            ""
        };
        let prefix = format!(
            "{indent}{} {}",
            render::escape(&record.id),
            render::state_of(record)
        );
        let message = render::message_of(&record.status).unwrap_or_default();
        match self.bars.get(&record.id) {
            Some(bar) => {
                if bar.length() != length {
                    bar.set_style(style.clone());
                    match length {
                        Some(total) => bar.set_length(total),
                        None => bar.unset_length(),
                    }
                }
                bar.set_prefix(prefix);
                bar.set_message(message);
                bar.set_position(position);
            }
            None => {
                // Fully set up before it is added, so it never shows in a default style.
                let bar = ProgressBar::with_draw_target(length, ProgressDrawTarget::hidden())
                    .with_style(style.clone())
                    .with_prefix(prefix)
                    .with_message(message)
                    .with_position(position);
                let above = folded_into.as_ref().and_then(|batch| {
                    self.last_under
                        .get(batch)
                        .and_then(|last| self.bars.get(last))
                        .or_else(|| self.bars.get(batch))
                });
                let bar = match above {
                    Some(above) => multi.insert_after(above, bar),
                    None => multi.add(bar),
                };
                // A bar shows once it drew itself; nothing else would make it draw now.
                bar.force_draw();
                if let Some(batch) = folded_into {
                    self.last_under.insert(batch.clone(), record.id.clone());
                    self.under.insert(record.id.clone(), batch);
                }
                self.bars.insert(record.id.clone(), bar);
            }
        }
        Ok(())
    }

    /// Takes the bar of `id` out of the view's books (the caller removes it from the screen).
    fn take_bar(&mut self, id: &str) -> Option<ProgressBar> {
        self.under.remove(id);
        self.bars.remove(id)
    }

    fn removed(&mut self, id: &str) -> io::Result<()> {
        self.last_under.remove(id);
        let had_bar = match (self.take_bar(id), &self.multi) {
            (Some(bar), Some(multi)) => {
                multi.remove(&bar);
                true
            }
            _ => false,
        };
        let was_printed = self.printed.remove(id).is_some();
        if had_bar || (self.multi.is_none() && was_printed) {
            self.println(&format!("{}  removed", render::escape(id)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_record::record;
    use serde_json::json;

    #[test]
    fn children_fold_only_into_a_batch_the_view_shows() {
        let mut folding = Folding::default();
        let child = record("b.1", json!({"state": "running", "parent": "b"}));
        assert_eq!(folding.batch_of(&child), None, "batch not seen yet");
        folding.saw(&record(
            "b",
            json!({"state": "running", "batch": {"size": 1}}),
        ));
        assert_eq!(folding.batch_of(&child), Some("b"));
        let stranger = record("c.1", json!({"state": "running", "parent": "c"}));
        assert_eq!(folding.batch_of(&stranger), None);
        folding.forget("b");
        assert_eq!(folding.batch_of(&child), None, "batch removed");
    }
}
