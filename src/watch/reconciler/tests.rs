//! The reconciler, once for every backend: a fake change source, the store clock moved by
//! hand and tokio's clock paused, as notify's debouncer tests its timing.

use super::*;
use crate::record::{ManualClock, Timestamp};
use crate::storage::{WatchEvent, WatchOptions, WatchSelector, WatchStream};
use crate::ttl::TtlPolicy;
use crate::watch::SharedHub;
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;

const FIRST: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_millis(400);

/// What the fake backend holds, and what the reconciler asked of it.
#[derive(Debug, Default)]
struct Backend {
    records: BTreeMap<String, Record>,
    /// The ids of every read, sorted, with the store's clock at the read.
    reads: Vec<(Vec<String>, Timestamp)>,
    scans: usize,
    /// When each attempt to start the feed was made (tokio's clock).
    connects: Vec<Instant>,
    /// How many of the next connects fail.
    failing_connects: usize,
}

struct FakeSource {
    backend: Arc<Mutex<Backend>>,
    ttl: TtlPolicy,
    clock: ManualClock,
    /// Closed when the source is dropped, which happens only when the task ends.
    _alive: tokio::sync::oneshot::Sender<()>,
}

impl FakeSource {
    /// `record` as a store reads it at `now`: its expiry filled from the policy when it has
    /// none of its own (as every backend does), and `None` once that time has come.
    fn live(&self, record: &Record, now: Timestamp) -> Option<Record> {
        let mut record = record.clone();
        if record.expires_at.is_none() {
            record.expires_at = self.ttl.expires_at(&record.status, record.updated_at);
        }
        match record.expires_at {
            Some(at) if at <= now => None,
            _ => Some(record),
        }
    }
}

#[async_trait]
impl ChangeSource for FakeSource {
    async fn connect(&mut self) -> Result<bool> {
        let mut backend = locked(&self.backend);
        backend.connects.push(Instant::now());
        if backend.failing_connects > 0 {
            backend.failing_connects -= 1;
            return Err(Error::backend("fake", "connection refused"));
        }
        Ok(true)
    }

    fn disconnect(&mut self) {}

    async fn read(&mut self, mut ids: Vec<String>) -> Result<Reads> {
        let now = crate::Clock::now(&self.clock);
        let mut backend = locked(&self.backend);
        ids.sort();
        backend.reads.push((ids.clone(), now));
        Ok(ids
            .into_iter()
            .map(|id| {
                let live = backend
                    .records
                    .get(&id)
                    .and_then(|record| self.live(record, now));
                (id, Ok(live))
            })
            .collect())
    }

    async fn scan(&mut self) -> Result<Scan> {
        let now = crate::Clock::now(&self.clock);
        let mut backend = locked(&self.backend);
        backend.scans += 1;
        let live = backend
            .records
            .values()
            .filter_map(|record| self.live(record, now))
            .collect();
        Ok((live, Vec::new()))
    }
}

struct Fixture {
    backend: Arc<Mutex<Backend>>,
    clock: ManualClock,
    changes: Arc<Changes>,
    handle: Option<Arc<HubHandle>>,
    stream: WatchStream,
    stopped: tokio::sync::oneshot::Receiver<()>,
}

const START: Timestamp = Timestamp::from_millis(1_000_000);

fn record(id: &str, version: u64, at: Timestamp) -> Record {
    Record {
        id: id.into(),
        version,
        created_at: START,
        updated_at: at,
        expires_at: None,
        status: serde_json::json!({"v": version}),
    }
}

async fn fixture(ttl: TtlPolicy, initial: &[Record]) -> Fixture {
    let backend = Arc::new(Mutex::new(Backend {
        records: initial.iter().map(|r| (r.id.clone(), r.clone())).collect(),
        ..Backend::default()
    }));
    let clock = ManualClock::new(START);
    let (alive, stopped) = tokio::sync::oneshot::channel();
    let changes = Arc::new(Changes::default());
    let source = FakeSource {
        backend: backend.clone(),
        ttl: ttl.clone(),
        clock: clock.clone(),
        _alive: alive,
    };
    let settings = Settings {
        clock: Arc::new(clock.clone()),
        backoff: Backoff::new(FIRST, MAX),
        scan_after_loss: false,
    };
    let handle = Arc::new(start(source, changes.clone(), settings).await.unwrap());
    let stream = SharedHub::subscribe(handle.clone(), WatchSelector::All, WatchOptions::default());
    Fixture {
        backend,
        clock,
        changes,
        handle: Some(handle),
        stream,
        stopped,
    }
}

impl Fixture {
    fn write(&self, record: Record) {
        locked(&self.backend)
            .records
            .insert(record.id.clone(), record);
    }

    /// The next item, or `None` when none comes within `within` of tokio's (paused) clock.
    async fn next_within(
        &mut self,
        within: Duration,
    ) -> Option<std::result::Result<WatchEvent, String>> {
        let item = tokio::time::timeout(within, self.stream.next())
            .await
            .ok()??;
        Some(item.map_err(|error| error.to_string()))
    }

    /// Publishes `written` as the store's own write does, handing over its expiry.
    fn write_locally(&self, written: &Record, expires: Timestamp) {
        let hub = self.handle.as_ref().map(|h| h.hub.clone()).unwrap();
        hub.apply_local(&written.id, Some(written.clone()));
        self.changes.expires(&written.id, expires);
    }

    /// Sets the store's clock to `expires` and expects the removal of `id` within one look.
    async fn expect_removal_at(&mut self, id: &str, expires: Timestamp) {
        self.clock.set(expires);
        let removed = self
            .next_within(super::super::expiry::EXPIRY_LOOK + Duration::from_millis(1))
            .await;
        assert_eq!(removed, Some(Ok(WatchEvent::Removed { id: id.into() })));
    }

    async fn next(&mut self) -> WatchEvent {
        match self.next_within(Duration::from_secs(60)).await {
            Some(Ok(event)) => event,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn changes_heard_before_the_reconciler_runs_are_one_read_of_each_id() {
    let mut f = fixture(TtlPolicy::never(), &[]).await;
    f.write(record("a", 3, START));
    f.write(record("b", 1, START));
    // Three hints for `a` and one for `b`, all before the reconciler's task runs again.
    for id in ["a", "a", "b", "a"] {
        f.changes.changed(id);
    }
    let mut seen = vec![f.next().await, f.next().await];
    seen.sort_by_key(|event| event.id().map(str::to_string));
    assert_eq!(
        seen,
        [
            WatchEvent::Upsert(record("a", 3, START).into()),
            WatchEvent::Upsert(record("b", 1, START).into())
        ]
    );
    assert_eq!(f.next_within(Duration::from_secs(5)).await, None);
    let reads: Vec<Vec<String>> = locked(&f.backend)
        .reads
        .iter()
        .map(|(ids, _)| ids.clone())
        .collect();
    assert_eq!(reads, [vec!["a".to_string(), "b".to_string()]]);
}

#[tokio::test(start_paused = true)]
async fn expiry_is_reported_when_the_store_clock_reaches_it() {
    let ttl = TtlPolicy::uniform(Duration::from_secs(10));
    let mut f = fixture(ttl, &[record("job", 1, START)]).await;
    let expires = START.saturating_add(Duration::from_secs(10));
    // A millisecond before: however long tokio's clock runs, nothing is reported.
    f.clock.set(Timestamp::from_millis(expires.as_millis() - 1));
    assert_eq!(f.next_within(Duration::from_secs(30)).await, None);
    // At the expiry time by the store's clock, within one look of tokio's.
    f.expect_removal_at("job", expires).await;
    let reads = locked(&f.backend).reads.clone();
    assert_eq!(reads, [(vec!["job".to_string()], expires)]);
}

/// The record's own expiry decides, not the policy: a file written under another policy (or
/// by hand) says when it expires, and `get` already goes by that.
#[tokio::test(start_paused = true)]
async fn expiry_is_judged_by_the_records_own_expires_at() {
    let ttl = TtlPolicy::uniform(Duration::from_secs(3600));
    let expires = START.saturating_add(Duration::from_secs(10));
    let mut soon = record("job", 1, START);
    soon.expires_at = Some(expires);
    let mut f = fixture(ttl, &[soon]).await;
    f.clock.set(Timestamp::from_millis(expires.as_millis() - 1));
    assert_eq!(f.next_within(Duration::from_secs(30)).await, None);
    f.expect_removal_at("job", expires).await;
}

/// A store that publishes its own writes (the memory store) hands the reconciler the
/// expiry instead of a change: nothing is read for the write, the removal comes on time.
#[tokio::test(start_paused = true)]
async fn an_expiry_handed_over_by_a_write_is_reported_without_reading_the_write() {
    let ttl = TtlPolicy::uniform(Duration::from_secs(10));
    let mut f = fixture(ttl, &[]).await;
    let written = record("job", 1, START);
    f.write(written.clone());
    let expires = START.saturating_add(Duration::from_secs(10));
    f.write_locally(&written, expires);
    assert_eq!(f.next().await, WatchEvent::Upsert(written.into()));
    // Later writes expiring after the reconciler's next look do not wake it to read.
    f.changes.expires("job", expires);
    f.clock.set(Timestamp::from_millis(expires.as_millis() - 1));
    assert_eq!(f.next_within(Duration::from_secs(30)).await, None);
    assert!(locked(&f.backend).reads.is_empty());
    f.expect_removal_at("job", expires).await;
    let reads = locked(&f.backend).reads.clone();
    assert_eq!(reads, [(vec!["job".to_string()], expires)]);
}

/// The first expiry handed over wakes a reconciler that sleeps until woken, so it is
/// tracked though nothing else would make the reconciler look.
#[tokio::test(start_paused = true)]
async fn a_handed_over_expiry_wakes_a_reconciler_with_nothing_to_look_at() {
    let ttl = TtlPolicy::uniform(Duration::from_secs(10));
    let mut f = fixture(ttl, &[]).await;
    // The reconciler has planned with an empty queue before the write.
    assert_eq!(f.next_within(Duration::from_secs(5)).await, None);
    let written = record("job", 1, START);
    f.write(written.clone());
    let expires = START.saturating_add(Duration::from_secs(10));
    f.write_locally(&written, expires);
    assert_eq!(f.next().await, WatchEvent::Upsert(written.into()));
    f.expect_removal_at("job", expires).await;
}

#[tokio::test(start_paused = true)]
async fn an_overflow_brings_a_resync_of_everything() {
    let mut f = fixture(TtlPolicy::never(), &[record("a", 1, START)]).await;
    f.write(record("a", 2, START));
    f.write(record("b", 1, START));
    // Dirty ids are covered by the scan, not read again after it.
    f.changes.changed("a");
    f.changes.rescan();
    assert_eq!(
        f.next().await,
        WatchEvent::Resync(vec![
            record("a", 2, START).into(),
            record("b", 1, START).into()
        ])
    );
    assert_eq!(f.next_within(Duration::from_secs(5)).await, None);
    let backend = locked(&f.backend);
    assert_eq!((backend.scans, backend.reads.len()), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn a_lost_feed_is_reported_then_restarted_with_growing_pauses_then_resynced() {
    let mut f = fixture(TtlPolicy::never(), &[record("a", 1, START)]).await;
    locked(&f.backend).failing_connects = 3;
    f.write(record("a", 2, START));
    f.changes
        .lost(Some(Error::backend("fake", "connection reset")));
    let lost = f.next_within(Duration::from_secs(60)).await;
    assert!(matches!(lost, Some(Err(_))), "{lost:?}");
    // Only the first failed attempt of the outage is reported.
    let failed = f.next_within(Duration::from_secs(60)).await;
    assert!(matches!(failed, Some(Err(_))), "{failed:?}");
    assert_eq!(
        f.next().await,
        WatchEvent::Resync(vec![record("a", 2, START).into()])
    );
    let gaps = |connects: &[Instant]| -> Vec<Duration> {
        connects.windows(2).map(|w| w[1] - w[0]).collect()
    };
    let connects = locked(&f.backend).connects.clone();
    // The start, then four attempts after the loss: at once, then 100, 200, 400 ms.
    assert_eq!(connects.len(), 5);
    assert_eq!(gaps(&connects[1..]), [FIRST, FIRST * 2, FIRST * 4]);

    // A success starts the pauses from the first again.
    locked(&f.backend).failing_connects = 1;
    f.changes.lost(None);
    let failed = f.next_within(Duration::from_secs(60)).await;
    assert!(matches!(failed, Some(Err(_))), "{failed:?}");
    assert_eq!(
        f.next().await,
        WatchEvent::Resync(vec![record("a", 2, START).into()])
    );
    let connects = locked(&f.backend).connects.clone();
    assert_eq!(gaps(&connects[5..]), [FIRST]);
}

#[tokio::test(start_paused = true)]
async fn the_reconciler_stops_when_the_last_handle_is_dropped() {
    let mut f = fixture(TtlPolicy::uniform(Duration::from_secs(10)), &[]).await;
    let stream_and_handle = (
        f.handle.take(),
        std::mem::replace(&mut f.stream, futures_util::stream::empty().boxed()),
    );
    // The stream alone keeps the hub (and its reconciler) alive.
    drop(stream_and_handle.0);
    assert!(matches!(
        f.stopped.try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Empty)
    ));
    drop(stream_and_handle.1);
    let stopped = tokio::time::timeout(Duration::from_secs(60), &mut f.stopped).await;
    assert!(
        matches!(stopped, Ok(Err(_))),
        "the source outlived its handle: {stopped:?}"
    );
}
