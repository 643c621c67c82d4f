use super::*;
use crate::record::Timestamp;

fn record(version: u64, created: u64, updated: u64) -> Record {
    Record {
        id: "job".into(),
        version,
        created_at: Timestamp::from_millis(created),
        updated_at: Timestamp::from_millis(updated),
        expires_at: None,
        status: serde_json::json!({}),
    }
}

fn published(rx: &mut Receiver<HubMessage>) -> Vec<WatchEvent> {
    let mut taken = VecDeque::new();
    while let Ok(true) = rx.try_take(&mut taken, &mut |message| Some(message.clone())) {}
    taken
        .into_iter()
        .filter_map(|message| match message {
            HubMessage::Change(event) => Some(event),
            HubMessage::Resync(records) => Some(WatchEvent::Resync(records.to_vec())),
            HubMessage::Problem(_) => None,
        })
        .collect()
}

#[test]
fn a_record_made_again_unseen_is_a_removal_then_the_new_record() {
    let hub = WatchHub::new([record(3, 10, 30)]);
    let mut rx = hub.sent.subscribe();
    hub.apply("job", Some(record(1, 40, 40)));
    assert_eq!(
        published(&mut rx),
        vec![
            WatchEvent::Removed { id: "job".into() },
            WatchEvent::Upsert(record(1, 40, 40).into())
        ]
    );
}

#[test]
fn a_read_that_began_before_a_local_write_cannot_move_back() {
    let hub = WatchHub::new([record(1, 10, 10)]);
    let mut rx = hub.sent.subscribe();
    let read = hub.open_read();
    hub.apply_local("job", Some(record(2, 10, 20)));
    hub.apply_read("job", Some(record(1, 10, 10)), read.epoch);
    hub.replace_all_read(vec![record(1, 10, 10)], read.epoch);
    drop(read);
    assert_eq!(
        published(&mut rx),
        vec![
            WatchEvent::Upsert(record(2, 10, 20).into()),
            WatchEvent::Resync(vec![record(2, 10, 20).into()])
        ]
    );
    // A read that starts after the write is believed again.
    let read = hub.open_read();
    hub.apply_read("job", Some(record(3, 10, 30)), read.epoch);
    assert_eq!(
        published(&mut rx),
        vec![WatchEvent::Upsert(record(3, 10, 30).into())]
    );
}

#[test]
fn newer_versions_and_repeats_are_not_removals() {
    let hub = WatchHub::new([record(3, 10, 30)]);
    let mut rx = hub.sent.subscribe();
    hub.apply("job", Some(record(3, 10, 30)));
    hub.apply("job", Some(record(4, 10, 35)));
    // Files of other tools (version 0) take their stamps from the file.
    hub.apply("job", Some(record(0, 50, 50)));
    hub.apply("job", Some(record(0, 60, 60)));
    assert_eq!(
        published(&mut rx),
        vec![
            WatchEvent::Upsert(record(4, 10, 35).into()),
            WatchEvent::Upsert(record(0, 50, 50).into()),
            WatchEvent::Upsert(record(0, 60, 60).into()),
        ]
    );
}

#[tokio::test]
async fn every_stream_is_handed_the_hub_records_not_copies() {
    let hub = Arc::new(WatchHub::new([record(1, 10, 10)]));
    let keep_alive: Arc<dyn Send + Sync> = Arc::new(());
    let snapshot = || WatchOptions {
        snapshot: true,
        ..WatchOptions::default()
    };
    let mut a = hub.subscribe(WatchSelector::All, snapshot(), keep_alive.clone());
    let mut b = hub.subscribe(WatchSelector::All, snapshot(), keep_alive);
    let (Some(Ok(WatchEvent::Resync(a0))), Some(Ok(WatchEvent::Resync(b0)))) =
        (a.next().await, b.next().await)
    else {
        panic!("no snapshots");
    };
    assert!(Arc::ptr_eq(&a0[0], &b0[0]));
    hub.apply("job", Some(record(2, 10, 20)));
    let (Some(Ok(WatchEvent::Upsert(a1))), Some(Ok(WatchEvent::Upsert(b1)))) =
        (a.next().await, b.next().await)
    else {
        panic!("no upserts");
    };
    assert!(Arc::ptr_eq(&a1, &b1));
    assert_eq!(*a1, record(2, 10, 20));
}

#[tokio::test(flavor = "current_thread")]
async fn a_local_write_leaves_the_send_to_the_fanout_task() {
    let hub = Arc::new(WatchHub::new([record(1, 10, 10)]));
    let _fanout = hub.start_fanout();
    let mut rx = hub.sent.subscribe();
    hub.apply_local("job", Some(record(2, 10, 20)));
    // On this one thread the fan-out task has not run yet: the writer sent nothing.
    let mut taken = VecDeque::new();
    let mut keep = |message: &HubMessage| Some(message.clone());
    assert_eq!(rx.try_take(&mut taken, &mut keep), Ok(false));
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        rx.take(&mut taken, keep),
    );
    assert_eq!(waited.await, Ok(Ok(())));
    let Some(HubMessage::Change(event)) = taken.pop_front() else {
        panic!("no event");
    };
    assert_eq!(event, WatchEvent::Upsert(record(2, 10, 20).into()));
}

fn other(version: u64) -> Record {
    Record {
        id: "other".into(),
        ..record(version, 10, version * 10)
    }
}

#[test]
fn an_id_written_again_before_the_send_is_sent_once_in_the_place_of_its_last_write() {
    let hub = WatchHub::new([record(1, 10, 10)]);
    let mut rx = hub.sent.subscribe();
    {
        let mut state = hub.lock();
        WatchHub::apply_locked(&mut state, "job", Some(record(2, 10, 20).into()));
        WatchHub::apply_locked(&mut state, "other", Some(other(1).into()));
        WatchHub::apply_locked(&mut state, "job", Some(record(3, 10, 30).into()));
        // One record of `job` waits, not one per write.
        assert_eq!(state.unsent.iter().flatten().count(), 2);
    }
    hub.send_unsent();
    assert_eq!(
        published(&mut rx),
        vec![
            WatchEvent::Upsert(other(1).into()),
            WatchEvent::Upsert(record(3, 10, 30).into()),
        ]
    );
    // A removal in between is kept, with the write before it: nothing is moved ahead of it.
    {
        let mut state = hub.lock();
        WatchHub::apply_locked(&mut state, "job", Some(record(4, 10, 40).into()));
        WatchHub::apply_locked(&mut state, "job", None);
        WatchHub::apply_locked(&mut state, "job", Some(record(1, 50, 50).into()));
    }
    hub.send_unsent();
    assert_eq!(
        published(&mut rx),
        vec![
            WatchEvent::Upsert(record(4, 10, 40).into()),
            WatchEvent::Removed { id: "job".into() },
            WatchEvent::Upsert(record(1, 50, 50).into()),
        ]
    );
}

#[test]
fn local_writes_are_marked_only_while_a_read_is_open() {
    let hub = WatchHub::new([]);
    for version in 1..=100 {
        hub.apply_local("job", Some(record(version, 10, version * 10)));
        hub.apply_local("other", Some(other(version)));
    }
    assert!(hub.lock().local_marks.is_empty());
    let read = hub.open_read();
    hub.apply_local("job", Some(record(101, 10, 1010)));
    assert_eq!(hub.lock().local_marks.len(), 1);
    hub.apply_read("job", Some(record(100, 10, 1000)), read.epoch);
    drop(read);
    assert!(hub.lock().local_marks.is_empty());
    assert_eq!(hub.lock().records["job"].version, 101);
}

#[tokio::test(flavor = "current_thread")]
async fn a_subscriber_joining_before_the_send_gets_each_write_once() {
    let hub = Arc::new(WatchHub::new([record(1, 10, 10)]));
    let _fanout = hub.start_fanout();
    hub.apply_local("job", Some(record(2, 10, 20)));
    let options = WatchOptions {
        snapshot: true,
        ..WatchOptions::default()
    };
    let mut stream = hub.subscribe(WatchSelector::All, options, Arc::new(()));
    let Some(Ok(WatchEvent::Resync(snapshot))) = stream.next().await else {
        panic!("no snapshot");
    };
    assert_eq!(snapshot, vec![Arc::new(record(2, 10, 20))]);
    hub.apply_local("job", Some(record(3, 10, 30)));
    // The write already in the snapshot does not come again.
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next()).await;
    let Ok(Some(Ok(event))) = next else {
        panic!("no event after the snapshot");
    };
    assert_eq!(event, WatchEvent::Upsert(record(3, 10, 30).into()));
}

#[tokio::test(flavor = "current_thread")]
async fn a_writer_that_never_yields_sends_once_a_buffer_is_queued() {
    let hub = Arc::new(WatchHub::new([]));
    let _fanout = hub.start_fanout();
    let mut rx = hub.sent.subscribe();
    for version in 1..=SUBSCRIBER_BUFFER as u64 {
        hub.apply_local("job", Some(record(version, 10, version * 10)));
    }
    // The fan-out task never ran on this thread; the queue did not grow past a buffer,
    // and what was sent is the last write of the one id.
    assert!(hub.lock().unsent.is_empty());
    let last = SUBSCRIBER_BUFFER as u64;
    assert_eq!(
        published(&mut rx),
        vec![WatchEvent::Upsert(record(last, 10, last * 10).into())]
    );
}
