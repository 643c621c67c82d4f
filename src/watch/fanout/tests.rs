use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::*;

const DEADLINE: Duration = Duration::from_secs(30);

fn all(item: &u64) -> Option<u64> {
    Some(*item)
}

/// What `task` returned, failing the test with `what` if it did not end within the deadline.
async fn joined<T>(task: tokio::task::JoinHandle<T>, what: &str) -> T {
    match tokio::time::timeout(DEADLINE, task).await {
        Ok(ended) => ended.expect("the task panicked"),
        Err(_) => panic!("{what}"),
    }
}

fn taken(rx: &mut Receiver<u64>) -> Result<Vec<u64>, TakeError> {
    let mut out = VecDeque::new();
    while rx.try_take(&mut out, &mut all)? {}
    Ok(out.into())
}

#[test]
fn a_receiver_takes_what_was_sent_after_it_subscribed_in_order() {
    let fanout = Fanout::new(16);
    fanout.send_all([1, 2]);
    let mut early = fanout.subscribe();
    fanout.send_all([3, 4, 5]);
    let mut late = fanout.subscribe();
    fanout.send_all([6]);
    assert_eq!(taken(&mut early), Ok(vec![3, 4, 5, 6]));
    assert_eq!(taken(&mut late), Ok(vec![6]));
    assert_eq!(taken(&mut early), Ok(vec![]));
}

#[test]
fn a_receiver_takes_a_long_backlog_a_few_dozen_items_at_a_time() {
    let fanout = Fanout::new(1024);
    let mut rx = fanout.subscribe();
    fanout.send_all(0..1000);
    let mut out = VecDeque::new();
    assert_eq!(rx.try_take(&mut out, &mut all), Ok(true));
    assert_eq!(out.len(), TAKE_AT_ONCE);
    assert_eq!(
        taken(&mut rx).map(|rest| rest.len()),
        Ok(1000 - TAKE_AT_ONCE)
    );
}

#[tokio::test]
async fn a_receiver_waits_for_an_item_it_keeps_and_clones_only_those() {
    let fanout = Fanout::new(16);
    let mut rx = fanout.subscribe();
    let waiting = tokio::spawn(async move {
        let mut out = VecDeque::new();
        let mut looked_at = Vec::new();
        let kept = rx
            .take(&mut out, |item: &u64| {
                looked_at.push(*item);
                (*item >= 10).then_some(*item)
            })
            .await;
        (kept, out, looked_at)
    });
    fanout.send_all([1, 2]);
    tokio::task::yield_now().await;
    fanout.send_all([3, 10, 11]);
    let (kept, out, looked_at) = joined(waiting, "the receiver never came back").await;
    assert_eq!(kept, Ok(()));
    assert_eq!(out, [10, 11]);
    assert_eq!(looked_at, [1, 2, 3, 10, 11]);
}

#[test]
fn a_receiver_behind_the_capacity_is_told_and_goes_on_from_the_oldest_kept() {
    let fanout = Fanout::new(4);
    let mut rx = fanout.subscribe();
    fanout.send_all(0..10);
    assert_eq!(taken(&mut rx), Err(TakeError::Lagged));
    assert_eq!(taken(&mut rx), Ok(vec![6, 7, 8, 9]));
}

#[test]
fn skipping_to_the_head_leaves_out_everything_sent_so_far() {
    let fanout = Fanout::new(4);
    let mut rx = fanout.subscribe();
    fanout.send_all(0..10);
    rx.skip_to_head();
    fanout.send_all([10]);
    assert_eq!(taken(&mut rx), Ok(vec![10]));
}

#[test]
fn a_dropped_receiver_gives_its_slot_to_the_next() {
    let fanout = Fanout::<u64>::new(4);
    let first = fanout.subscribe();
    let second = fanout.subscribe();
    drop(first);
    let third = fanout.subscribe();
    assert_eq!(third.slot, 0);
    let waiters = lock(&fanout.waiters);
    assert_eq!(waiters.slots.len(), 2);
    assert!(waiters.free.is_empty());
    drop(waiters);
    drop((second, third));
    assert_eq!(lock(&fanout.waiters).free.len(), 2);
}

#[tokio::test]
async fn a_waiting_receiver_is_woken_by_a_send() {
    let fanout = Fanout::new(4);
    let mut rx = fanout.subscribe();
    let waiting = tokio::spawn(async move {
        let mut out = VecDeque::new();
        rx.take(&mut out, all).await.map(|()| out)
    });
    // Whether the task is already waiting or not yet polled, the send must reach it.
    tokio::task::yield_now().await;
    fanout.send_all([7]);
    let out = joined(waiting, "the receiver was never woken").await;
    assert_eq!(out, Ok(VecDeque::from([7])));
}

/// Many receivers on two workers, a sender racing them: every receiver gets every item, in
/// order, none lost to a wake that came between its look and its registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receiver_gets_every_item_in_order_under_a_racing_sender() {
    const ITEMS: u64 = 20_000;
    const RECEIVERS: usize = 16;
    let fanout = Fanout::new(ITEMS as usize);
    let receivers: Vec<_> = (0..RECEIVERS)
        .map(|_| {
            let mut rx = fanout.subscribe();
            tokio::spawn(async move {
                let mut expected = 0;
                let mut out = VecDeque::new();
                while expected < ITEMS {
                    rx.take(&mut out, all)
                        .await
                        .expect("no lag at this capacity");
                    for item in out.drain(..) {
                        assert_eq!(item, expected, "out of order");
                        expected += 1;
                    }
                }
            })
        })
        .collect();
    let sender = fanout.clone();
    tokio::task::spawn_blocking(move || {
        for item in 0..ITEMS {
            sender.send_all([item]);
        }
    })
    .await
    .expect("sender");
    for receiver in receivers {
        joined(receiver, "a receiver missed a wake").await;
    }
}

/// Each item is sent only once the receiver has taken the one before, so each send races a
/// receiver that has just found nothing and is about to wait; the receiver pauses a little
/// longer each round before it looks, so the sends land all over that window. A wake lost in
/// it leaves the receiver waiting for good: no later send comes to cover for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_send_right_as_a_receiver_goes_to_wait_wakes_it() {
    const ROUNDS: u64 = 50_000;
    let fanout = Fanout::new(4);
    let acks = Arc::new(AtomicU64::new(0));
    let mut rx = fanout.subscribe();
    let acked = acks.clone();
    let receiver = tokio::spawn(async move {
        let mut out = VecDeque::new();
        for round in 0..ROUNDS {
            rx.take(&mut out, all).await.expect("one item at a time");
            assert_eq!(out.pop_front(), Some(round));
            acked.store(round + 1, Ordering::SeqCst);
            for _ in 0..round % 97 {
                std::hint::spin_loop();
            }
        }
    });
    let sender = fanout.clone();
    let stuck = tokio::task::spawn_blocking(move || {
        for round in 0..ROUNDS {
            sender.send_all([round]);
            let until = std::time::Instant::now() + DEADLINE;
            while acks.load(Ordering::SeqCst) <= round {
                if std::time::Instant::now() > until {
                    return Some(round);
                }
                std::hint::spin_loop();
            }
        }
        None
    })
    .await
    .expect("sender");
    assert_eq!(stuck, None, "the receiver never woke for this round");
    receiver.await.expect("receiver task");
}

/// A receiver that always finds items still lets the other tasks of its worker run.
#[tokio::test(flavor = "current_thread")]
async fn a_receiver_that_always_finds_items_yields_its_worker() {
    let fanout = Fanout::new(4);
    let mut rx = fanout.subscribe();
    let other_ran = Arc::new(AtomicBool::new(false));
    let flag = other_ran.clone();
    let _other = tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
    let mut out = VecDeque::new();
    let mut seen_by = None;
    for round in 0..1_000 {
        fanout.send_all([round]);
        rx.take(&mut out, all).await.expect("no lag");
        out.clear();
        if other_ran.load(Ordering::SeqCst) {
            seen_by = Some(round);
            break;
        }
    }
    assert!(seen_by.is_some(), "the other task never ran");
}

#[tokio::test]
async fn a_closed_fanout_ends_its_receivers_after_what_was_sent() {
    let fanout = Fanout::new(4);
    let mut rx = fanout.subscribe();
    let mut waiting = fanout.subscribe();
    let waiter = tokio::spawn(async move {
        let mut out = VecDeque::new();
        waiting.take(&mut out, all).await
    });
    tokio::task::yield_now().await;
    fanout.send_all([1]);
    fanout.close();
    let mut out = VecDeque::new();
    assert_eq!(rx.try_take(&mut out, &mut all), Ok(true));
    assert_eq!(out, [1]);
    assert_eq!(rx.try_take(&mut out, &mut all), Err(TakeError::Closed));
    let first = joined(waiter, "the waiting receiver was never woken").await;
    assert_eq!(first, Ok(()));
}
