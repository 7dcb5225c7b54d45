//! Catch-up then live: the seam, overflow during catch-up, the ring, gaps, failures,
//! completion known only to the store, warm, and shutdown.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    sync::{atomic::Ordering, mpsc},
    time::Duration,
};

use common::*;
use futures::poll;
use telemetry_core::pb::record::Kind;
use telemetry_hub::{
    CloseReason, Delivery, HubConfig, StreamKind, SubscribeError, SubscribeOptions,
};

fn small_ring() -> HubConfig {
    HubConfig {
        ring_records: 4,
        catch_up_page: 8,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn catch_up_then_live_has_no_gap_and_no_duplicate_at_the_seam() {
    let store = FakeStore::new();
    let hub = hub_with(&store, small_ring());
    for i in 0..20 {
        commit_publish(&store, &hub, step("r", "a", 0, i));
        commit_publish(&store, &hub, step("other", "a", 0, i));
    }
    let mut sub = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps).since(0));
    let mut got = vec![];
    // Keep publishing while the subscriber catches up, one record per delivery.
    for i in 20..40 {
        got.push(next_now(&mut sub).await.unwrap());
        commit_publish(&store, &hub, step("r", "a", 0, i));
        commit_publish(&store, &hub, step("other", "a", 0, i));
    }
    got.extend(drain(&mut sub).await);
    let expected: Vec<u64> = store
        .all(StreamKind::Steps)
        .iter()
        .filter(|r| r.run_id() == "r")
        .map(|r| r.seq_id())
        .collect();
    assert_eq!(seqs(&got), expected);
    let n = notices(&got);
    assert_eq!(n.len(), 1, "{n:?}");
    let Delivery::CaughtUp { last_seq } = n[0] else {
        panic!("{n:?}")
    };
    let at = got
        .iter()
        .position(|d| matches!(d, Delivery::CaughtUp { .. }))
        .unwrap();
    assert!(seqs(&got[..at]).iter().all(|&s| s <= *last_seq));
    assert!(seqs(&got[at..]).iter().all(|&s| s > *last_seq));
    assert!(store.reads.load(Ordering::SeqCst) >= 3, "paged reads");
    assert_eq!(hub.metrics().gaps_total, 0);
}

#[tokio::test(start_paused = true)]
async fn records_committed_before_the_read_but_published_after_it_are_not_duplicated() {
    let store = FakeStore::new();
    let hub = hub_with(&store, small_ring());
    let first = commit_publish(&store, &hub, step("r", "a", 0, 0));
    // Committed, not yet published (the daemon is between commit and publish).
    let pending: Vec<_> = (1..4).map(|i| store.commit(step("r", "a", 0, i))).collect();
    let mut sub = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps).since(0));
    let mut got = vec![next_now(&mut sub).await.unwrap()];
    for r in pending {
        hub.publish(r);
    }
    commit_publish(&store, &hub, step("r", "a", 0, 4));
    got.extend(drain(&mut sub).await);
    assert_eq!(seqs(&got), [first.seq_id(), 2, 3, 4, 5]);
    assert_eq!(notices(&got).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn overflow_during_a_long_catch_up_is_re_read_from_the_store_not_lagged() {
    let store = FakeStore::new();
    let config = HubConfig {
        ring_records: 2,
        catch_up_page: 4,
        ..Default::default()
    };
    let hub = hub_with(&store, config);
    for i in 0..10 {
        commit_publish(&store, &hub, step("r", "a", 0, i));
    }
    let mut sub = hub.subscribe(
        SubscribeOptions::run("r", StreamKind::Steps)
            .since(0)
            .queue_capacity(2),
    );
    let mut got = vec![];
    for i in 10..40 {
        commit_publish(&store, &hub, step("r", "a", 0, i));
        if i % 3 == 0 {
            got.push(next_now(&mut sub).await.unwrap());
        }
    }
    got.extend(drain(&mut sub).await);
    assert_eq!(seqs(&got), (1..=40).collect::<Vec<_>>());
    let n = notices(&got);
    assert!(
        matches!(n[..], [Delivery::CaughtUp { .. }]),
        "no Lagged, no Gap: {n:?}"
    );
    let m = hub.metrics();
    let s = &m.subscribers[0];
    assert!(s.catch_up_overflow_total > 0);
    assert_eq!((s.dropped_steps_total, m.dropped_steps_total), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn records_dropped_from_the_buffer_while_a_read_is_in_flight_are_read_again() {
    let store = FakeStore::new();
    let config = HubConfig {
        ring_records: 2,
        catch_up_page: 100,
        ..Default::default()
    };
    let hub = hub_with(&store, config);
    for i in 0..10 {
        commit_publish(&store, &hub, step("r", "a", 0, i));
    }
    let (release, gate) = mpsc::channel();
    let (snapshot_tx, snapshot_taken) = mpsc::channel();
    *store.gate_after_snapshot.lock().unwrap() = Some(gate);
    *store.snapshot_taken.lock().unwrap() = Some(snapshot_tx);
    let mut sub = hub.subscribe(
        SubscribeOptions::run("r", StreamKind::Steps)
            .since(0)
            .queue_capacity(2),
    );
    {
        let next = sub.next();
        futures::pin_mut!(next);
        assert!(poll!(next).is_pending());
    }
    // The read has taken its snapshot (1..=10); meanwhile 11..=15 arrive and overflow the
    // 2-record buffer, losing 11..=13.
    snapshot_taken.recv().unwrap();
    for i in 10..15 {
        commit_publish(&store, &hub, step("r", "a", 0, i));
    }
    release.send(()).unwrap();
    release.send(()).unwrap();
    let got = drain(&mut sub).await;
    assert_eq!(seqs(&got), (1..=15).collect::<Vec<_>>());
    assert!(
        matches!(notices(&got)[..], [Delivery::CaughtUp { last_seq: 15 }]),
        "{got:?}"
    );
    assert_eq!(
        store.reads.load(Ordering::SeqCst),
        2,
        "read again past the lost records"
    );
    assert_eq!(hub.metrics().subscribers[0].catch_up_overflow_total, 3);
}

#[tokio::test(start_paused = true)]
async fn a_late_joiner_within_the_ring_is_served_from_memory() {
    let store = FakeStore::new();
    let hub = hub_with(&store, HubConfig::default());
    for i in 0..10 {
        commit_publish(&store, &hub, step("r", "a", 0, i));
    }
    let mut sub = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps).since(5));
    let got = drain(&mut sub).await;
    assert_eq!(seqs(&got), [6, 7, 8, 9, 10]);
    assert!(matches!(
        got.last(),
        Some(Delivery::CaughtUp { last_seq: 10 })
    ));
    commit_publish(&store, &hub, step("r", "a", 0, 10));
    assert_eq!(seqs(&drain(&mut sub).await), [11]);
    assert_eq!(store.reads.load(Ordering::SeqCst), 0, "no store read");
    assert_eq!(hub.metrics().subscribers[0].catch_up_records_total, 5);
}

#[tokio::test(start_paused = true)]
async fn without_follow_the_stored_past_ends_with_caught_up() {
    let store = FakeStore::new();
    let hub = hub_with(&store, small_ring());
    for i in 0..12 {
        commit_publish(
            &store,
            &hub,
            step("r", if i % 2 == 0 { "a" } else { "b" }, 0, i),
        );
    }
    let mut sub = hub.subscribe(
        SubscribeOptions::run("r", StreamKind::Steps)
            .since(2)
            .follow(false)
            .agent("b"),
    );
    let got = drain(&mut sub).await;
    assert_eq!(seqs(&got), [4, 6, 8, 10, 12]);
    assert!(matches!(
        got.last(),
        Some(Delivery::CaughtUp { last_seq: 12 })
    ));
    assert!(sub.next().await.is_none());
    assert_eq!(hub.metrics().subscribers_active, 0);
}

#[tokio::test(start_paused = true)]
async fn a_store_that_misses_a_record_the_hub_published_shows_a_gap() {
    let store = FakeStore::new();
    let config = HubConfig {
        ring_records: 1,
        ..small_ring()
    };
    let hub = hub_with(&store, config);
    for i in 0..10 {
        commit_publish(&store, &hub, step("r", "a", 0, i));
    }
    store.hidden.lock().unwrap().extend([9, 10]);
    let mut sub = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps).since(0));
    let mut got = drain(&mut sub).await;
    commit_publish(&store, &hub, step("r", "a", 0, 10));
    got.extend(drain(&mut sub).await);
    assert_eq!(seqs(&got), [1, 2, 3, 4, 5, 6, 7, 8, 11]);
    let n = notices(&got);
    assert!(
        matches!(
            n[..],
            [
                Delivery::CaughtUp { last_seq: 10 },
                Delivery::Gap {
                    after_seq: 8,
                    next_seq: 11
                }
            ]
        ),
        "{n:?}"
    );
    assert_eq!(hub.metrics().gaps_total, 1);
}

#[tokio::test(start_paused = true)]
async fn failed_reads_are_retried_then_close_the_stream() {
    let store = FakeStore::new();
    let hub = hub_with(&store, small_ring());
    for i in 0..10 {
        commit_publish(&store, &hub, step("r", "a", 0, i));
    }
    store.fail_reads.store(2, Ordering::SeqCst);
    let mut sub = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps).since(0));
    let got = drain(&mut sub).await;
    assert_eq!(seqs(&got), (1..=10).collect::<Vec<_>>());
    assert_eq!(hub.metrics().catch_up_errors_total, 2);

    store.fail_reads.store(100, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    let mut sub = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps).since(0));
    let got = drain(&mut sub).await;
    assert!(
        matches!(got[..], [Delivery::Closed(CloseReason::CatchUpFailed(_))]),
        "{got:?}"
    );
    // 100 + 200 + 400 ms of back-off before giving up after the 4th failure.
    assert!(start.elapsed() >= Duration::from_millis(700));
    assert!(sub.next().await.is_none());
    assert_eq!(hub.metrics().catch_up_errors_total, 6);
}

#[tokio::test(start_paused = true)]
async fn a_follower_of_a_run_that_completed_before_a_restart_still_ends() {
    let store = FakeStore::new();
    // The previous daemon stored the run; this hub has never seen it.
    for i in 0..3 {
        store.commit(step("r", "a", 0, i));
    }
    store.commit(completed("r"));
    let hub = hub_with(&store, small_ring());
    let mut sub = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps).since(0));
    let got = drain(&mut sub).await;
    assert_eq!(seqs(&got), [1, 2, 3]);
    assert!(matches!(
        notices(&got)[..],
        [Delivery::CaughtUp { .. }, Delivery::Completed(_)]
    ));
    assert!(sub.next().await.is_none());

    let mut life = hub.subscribe(SubscribeOptions::run("r", StreamKind::Lifecycle).since(0));
    let got = drain(&mut life).await;
    assert!(matches!(got[..], [Delivery::Completed(ref c)] if c.seq_id == 1));
}

#[tokio::test(start_paused = true)]
async fn warm_fills_the_ring_so_a_reconnect_after_restart_needs_no_store_read() {
    let store = FakeStore::new();
    for i in 0..10 {
        store.commit(step("r", "a", 0, i));
    }
    store.commit(started("r"));
    let hub = hub_with(&store, HubConfig::default());
    let mut history = store.all(StreamKind::Steps);
    history.extend(store.all(StreamKind::Lifecycle));
    history.reverse(); // any order: warm sorts each stream by seq
    hub.warm("r", history.clone());
    let mut sub = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps).since(6));
    commit_publish(&store, &hub, step("r", "a", 0, 10));
    let got = drain(&mut sub).await;
    assert_eq!(seqs(&got), [7, 8, 9, 10, 11]);
    assert_eq!(notices(&got).len(), 1);
    assert_eq!(store.reads.load(Ordering::SeqCst), 0);
    // Warming again changes nothing: those records are not newer.
    hub.warm("r", history);
    let m = hub.metrics();
    assert_eq!((m.warmed_total, m.warm_ignored_total), (11, 11));
    assert_eq!(m.published_total, 1);
}

#[tokio::test(start_paused = true)]
async fn all_runs_lifecycle_catches_up_from_the_store() {
    let store = FakeStore::new();
    let hub = hub_with(&store, small_ring());
    commit_publish(&store, &hub, started("a"));
    commit_publish(&store, &hub, started("b"));
    commit_publish(&store, &hub, completed("a"));
    let mut all = hub.subscribe(SubscribeOptions::all_runs_lifecycle().since(1));
    // Committed and published after subscribing, before the (lazy) first read: the read
    // returns it and the live copy is dropped as a duplicate.
    commit_publish(&store, &hub, artifact("b", "x"));
    let mut got = drain(&mut all).await;
    commit_publish(&store, &hub, started("c"));
    got.extend(drain(&mut all).await);
    assert_eq!(seqs(&got), [2, 3, 4, 5]);
    assert!(
        matches!(notices(&got)[..], [Delivery::CaughtUp { last_seq: 4 }]),
        "{got:?}"
    );
    let completed_a = got.iter().any(|d| match d {
        Delivery::Records(rs) => rs
            .iter()
            .any(|r| matches!(&r.kind, Some(Kind::RunCompleted(c)) if c.run_id == "a")),
        _ => false,
    });
    assert!(
        completed_a,
        "all-runs subscribers get RunCompleted as a record"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_a_blocked_read_and_closes_every_stream() {
    let store = FakeStore::new();
    let hub = hub_with(&store, small_ring());
    for i in 0..10 {
        commit_publish(&store, &hub, step("r", "a", 0, i));
    }
    let (release, gate) = mpsc::channel();
    *store.gate.lock().unwrap() = Some(gate);
    let mut catching_up = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps).since(0));
    let mut live = hub.subscribe(SubscribeOptions::run("r", StreamKind::Steps));
    let mut all = hub.subscribe(SubscribeOptions::all_runs_lifecycle());
    {
        let next = catching_up.next();
        futures::pin_mut!(next);
        assert!(poll!(next).is_pending(), "the read is blocked in the store");
    }
    assert_eq!(hub.tasks_active(), 1);

    let hub2 = hub.clone();
    let shutdown = hub2.shutdown();
    futures::pin_mut!(shutdown);
    assert!(poll!(&mut shutdown).is_pending(), "waits for the read");
    assert!(matches!(
        live.next().await,
        Some(Delivery::Closed(CloseReason::Shutdown))
    ));
    assert!(live.next().await.is_none());
    assert!(matches!(
        all.next().await,
        Some(Delivery::Closed(CloseReason::Shutdown))
    ));
    assert!(poll!(&mut shutdown).is_pending());

    release.send(()).unwrap();
    shutdown.await;
    assert_eq!(hub.tasks_active(), 0, "no task outlives shutdown");
    assert!(matches!(
        catching_up.next().await,
        Some(Delivery::Closed(CloseReason::Shutdown))
    ));
    assert!(catching_up.next().await.is_none());

    hub.publish(store.commit(step("r", "a", 0, 11)));
    assert_eq!(hub.metrics().rejected.after_shutdown, 1);
    assert_eq!(
        hub.try_subscribe(SubscribeOptions::run("r", StreamKind::Steps))
            .unwrap_err(),
        SubscribeError::ShutDown
    );
    hub.shutdown().await;
}

/// A source whose pages are cut short by their byte budget: two records at most.
struct TwoPerPage(std::sync::Arc<FakeStore>);

impl telemetry_hub::CatchUpSource for TwoPerPage {
    fn read_page(
        &self,
        q: &telemetry_hub::CatchUpQuery,
        since: u64,
        limit: usize,
    ) -> Result<Vec<telemetry_core::pb::Record>, telemetry_hub::CatchUpError> {
        self.0.read_page(q, since, limit)
    }

    fn read_page_bounded(
        &self,
        q: &telemetry_hub::CatchUpQuery,
        since: u64,
        limit: usize,
        _max_bytes: usize,
    ) -> Result<(Vec<telemetry_core::pb::Record>, bool), telemetry_hub::CatchUpError> {
        let page = self.0.read_page(q, since, limit.min(2))?;
        let cut = page.len() == 2 && limit > 2;
        Ok((page, cut))
    }
}

#[tokio::test(start_paused = true)]
async fn a_page_cut_short_by_its_byte_budget_is_not_the_end_of_the_catch_up() {
    let store = FakeStore::new();
    for i in 0..30 {
        store.commit(step("r", "a", 0, i)); // stored only: catch-up must read them all
    }
    let hub = telemetry_hub::Hub::new(
        small_ring(),
        std::sync::Arc::new(TwoPerPage(std::sync::Arc::clone(&store)))
            as std::sync::Arc<dyn telemetry_hub::CatchUpSource>,
    );
    let mut sub = hub.subscribe(
        SubscribeOptions::run("r", StreamKind::Steps)
            .since(0)
            .follow(false),
    );
    let got = drain(&mut sub).await;
    assert_eq!(seqs(&got), (1..=30).collect::<Vec<u64>>());
    assert!(
        matches!(
            notices(&got).first(),
            Some(Delivery::CaughtUp { last_seq: 30 })
        ),
        "caught up only after the last record: {:?}",
        notices(&got)
    );
}
