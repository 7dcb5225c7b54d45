//! The sender against a fake daemon with the real watermark semantics: delivery, outages,
//! daemon crashes, worker crashes, rejections and auth. Every wait is bounded (`flush(timeout)`,
//! `wait_for_stored(n, timeout)`); nothing sleeps to synchronise.

mod common;

use common::{config, flush_until_acked, seqs, step, WAIT};
use std::time::{Duration, Instant};
use telemetry_shim::{
    fake_ingest::{reserve_port, FakeIngest, FakeState},
    pb::{record::Kind, RunEpisode},
    FlushOutcome, ShimConfig, ShimError, Telemetry,
};

/// The timeout of flushes that are expected to meet no daemon at all.
const SHORT: Duration = Duration::from_millis(300);

#[test]
fn a_flush_keeps_reconnecting_until_a_daemon_that_comes_back_acks_everything() {
    let addr = reserve_port().expect("port");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(&format!("http://{addr}"), Some(dir.path()));
    // A backoff far longer than the test: only the waiting flush makes the attempts prompt.
    c.reconnect_initial = Duration::from_secs(30);
    c.reconnect_max = Duration::from_secs(60);
    let shim = Telemetry::new(c).expect("shim");
    for i in 0..100 {
        shim.step(step(i))
            .expect("accepted while the daemon is down");
    }
    let fake = std::thread::scope(|scope| {
        let flush = scope.spawn(|| shim.flush(WAIT));
        // The flush has met a refused connection and still waits (reconnecting).
        let deadline = Instant::now() + WAIT;
        while shim.stats().reconnects < 2 {
            assert!(!flush.is_finished(), "answered before the daemon came back");
            assert!(
                Instant::now() < deadline,
                "no prompt reconnect while flushing"
            );
            std::thread::yield_now();
        }
        let fake = FakeIngest::start_with(addr, FakeState::new()).expect("daemon up");
        let report = flush.join().expect("flush thread").expect("flush");
        assert_eq!(report.outcome, FlushOutcome::Acked);
        assert_eq!((report.acked_through, report.pending_records), (100, 0));
        fake
    });
    assert_eq!(seqs(&fake.state().records()), (1..=100).collect::<Vec<_>>());
    assert_eq!(fake.state().duplicates(), 0);
    shim.close(WAIT).expect("close");
}

#[test]
fn records_reach_the_daemon_once_with_producer_stamps_and_auth() {
    let fake = FakeIngest::start().expect("fake daemon");
    let shim = Telemetry::new(ShimConfig {
        auth_token: Some("s3cret".into()),
        run_id: Some("ignored-when-set".into()),
        ..config(&fake.endpoint(), None)
    })
    .expect("shim");
    for i in 0..300 {
        shim.step(step(i)).expect("accepted");
    }
    shim.episode_end(RunEpisode {
        run_id: String::new(),
        episode_index: 0,
        total_reward: 150.0,
        steps: 300,
        ..Default::default()
    })
    .expect("accepted");
    let report = shim.flush(WAIT).expect("flush");
    assert_eq!(report.outcome, FlushOutcome::Acked);
    assert_eq!(report.accepted_through, 301);
    assert_eq!(report.acked_through, 301);
    assert_eq!(report.pending_records, 0);

    let stored = fake.state().records();
    assert_eq!(seqs(&stored), (1..=301).collect::<Vec<_>>());
    assert!(stored.iter().all(|r| r.producer().0 == shim.producer_id()));
    assert_eq!(
        stored[0].run_id(),
        "run-test",
        "the record's own run id wins"
    );
    match &stored[300].kind {
        Some(Kind::Episode(e)) => assert_eq!(e.run_id, "ignored-when-set", "empty ids are filled"),
        other => panic!("expected the episode last, got {other:?}"),
    }
    let stats = shim.stats();
    assert_eq!((stats.accepted, stats.acked, stats.dropped), (301, 301, 0));
    assert_eq!(stats.sent, 301);
    assert_eq!(
        (stats.queue_records, stats.duplicates, stats.rejected),
        (0, 0, 0)
    );
    assert_eq!(
        fake.state()
            .authorization_headers()
            .first()
            .cloned()
            .flatten()
            .as_deref(),
        Some("Bearer s3cret")
    );
    let closed = shim.close(WAIT).expect("close");
    assert_eq!(closed.outcome, FlushOutcome::Acked);
}

#[test]
fn daemon_down_then_up_delivers_everything_exactly_once_from_disk() {
    let addr = reserve_port().expect("port");
    let dir = tempfile::tempdir().expect("tempdir");
    let shim = Telemetry::new(config(&format!("http://{addr}"), Some(dir.path()))).expect("shim");
    for i in 0..200 {
        shim.step(step(i))
            .expect("accepted while the daemon is down");
    }
    // A flush waits out its timeout while the daemon stays down, then reports the queue.
    let started = Instant::now();
    let offline = shim.flush(SHORT).expect("flush while down");
    assert!(started.elapsed() >= SHORT, "it waited while reconnecting");
    assert_eq!(offline.outcome, FlushOutcome::OnDisk);
    assert_eq!(offline.pending_records, 200);
    let stats = shim.stats();
    assert_eq!(stats.spilled, 200);
    assert_eq!(stats.queue_records, 200);
    assert!(stats.last_error.is_some());

    let fake = FakeIngest::start_with(addr, FakeState::new()).expect("daemon up");
    let online = shim.flush(WAIT).expect("flush after the daemon is up");
    assert_eq!(online.outcome, FlushOutcome::Acked);
    assert_eq!(seqs(&fake.state().records()), (1..=200).collect::<Vec<_>>());
    assert_eq!(fake.state().duplicates(), 0);
    let stats = shim.stats();
    assert_eq!((stats.acked, stats.queue_records), (200, 0));
    assert!(stats.reconnects >= 1, "{stats:?}");
    shim.close(WAIT).expect("close");
}

#[test]
fn without_a_queue_dir_an_unreachable_daemon_is_reported_then_caught_up() {
    let addr = reserve_port().expect("port");
    let shim = Telemetry::new(config(&format!("http://{addr}"), None)).expect("shim");
    for i in 0..50 {
        shim.step(step(i)).expect("accepted");
    }
    // Nothing can make them safe: at its deadline the flush reports them all still pending.
    let started = Instant::now();
    match shim.flush(SHORT) {
        Err(ShimError::FlushTimeout { pending }) => assert_eq!(pending, 50),
        other => panic!("expected FlushTimeout, got {other:?}"),
    }
    assert!(started.elapsed() >= SHORT, "it waited while reconnecting");
    let fake = FakeIngest::start_with(addr, FakeState::new()).expect("daemon up");
    assert_eq!(
        shim.flush(WAIT).expect("flush").outcome,
        FlushOutcome::Acked
    );
    assert_eq!(seqs(&fake.state().records()), (1..=50).collect::<Vec<_>>());
}

#[test]
fn a_daemon_crash_after_storing_but_before_acking_is_deduplicated() {
    let mut fake = FakeIngest::start().expect("fake daemon");
    let dir = tempfile::tempdir().expect("tempdir");
    let shim = Telemetry::new(config(&fake.endpoint(), Some(dir.path()))).expect("shim");
    for i in 0..100 {
        shim.step(step(i)).expect("accepted");
    }
    assert_eq!(
        shim.flush(WAIT).expect("flush").outcome,
        FlushOutcome::Acked
    );

    // The daemon stores the next records but dies before acknowledging them.
    fake.state().set_withhold_acks(true);
    for i in 100..200 {
        shim.step(step(i)).expect("accepted");
    }
    assert!(
        fake.state().wait_for_stored(200, WAIT),
        "records reached the daemon"
    );
    fake.stop();
    fake.state().set_withhold_acks(false);
    fake.restart().expect("daemon back");

    let report = flush_until_acked(&shim);
    assert_eq!(report.outcome, FlushOutcome::Acked);
    assert_eq!(seqs(&fake.state().records()), (1..=200).collect::<Vec<_>>());
    assert_eq!(
        fake.state().duplicates(),
        100,
        "the resent records were recognised"
    );
    let stats = shim.stats();
    assert_eq!(stats.duplicates, 100);
    assert_eq!(stats.acked, 200);
    assert!(
        stats.sent >= 300,
        "the unacked 100 were sent twice: {stats:?}"
    );
}

#[test]
fn a_crashed_worker_is_resumed_exactly_once_by_the_next_shim_on_its_queue_dir() {
    let fake = FakeIngest::start().expect("fake daemon");
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Telemetry::new(config(&fake.endpoint(), Some(dir.path()))).expect("shim");
    let producer = first.producer_id().to_owned();
    for i in 0..50 {
        first.step(step(i)).expect("accepted");
    }
    assert_eq!(
        first.flush(WAIT).expect("flush").outcome,
        FlushOutcome::Acked
    );
    fake.state().set_withhold_acks(true);
    for i in 50..120 {
        first.step(step(i)).expect("accepted");
    }
    // The daemon never acks these, so the flush ends on disk at its deadline.
    let report = first
        .flush(Duration::from_millis(300))
        .expect("flush to disk");
    assert_eq!(report.outcome, FlushOutcome::OnDisk);
    assert_eq!(report.acked_through, 50);
    first.abandon();
    fake.state().set_withhold_acks(false);

    let second = Telemetry::new(config(&fake.endpoint(), Some(dir.path()))).expect("restart");
    assert_eq!(second.producer_id(), producer, "the producer id survives");
    for i in 120..130 {
        second.step(step(i)).expect("accepted");
    }
    let report = second.flush(WAIT).expect("flush");
    assert_eq!(report.outcome, FlushOutcome::Acked);
    assert_eq!(
        report.accepted_through, 130,
        "seqs continue after the crash"
    );
    let stored = fake.state().records();
    assert_eq!(
        seqs(&stored),
        (1..=130).collect::<Vec<_>>(),
        "each record once, in order"
    );
    assert!(stored.iter().all(|r| r.producer().0 == producer));
    let steps: Vec<u64> = stored
        .iter()
        .map(|r| match &r.kind {
            Some(Kind::Step(s)) => s.step_index,
            _ => u64::MAX,
        })
        .collect();
    assert_eq!(
        steps,
        (1000..1130).collect::<Vec<_>>(),
        "the payloads are the original ones"
    );
    second.close(WAIT).expect("close");
}

#[test]
fn records_the_daemon_rejects_are_counted_and_do_not_stall_the_stream() {
    let fake = FakeIngest::start().expect("fake daemon");
    let shim = Telemetry::new(config(&fake.endpoint(), None)).expect("shim");
    shim.step(step(0)).expect("accepted");
    let mut bad = step(1);
    bad.reward = f64::NAN;
    shim.step(bad)
        .expect("accepted: the shim does not validate in live mode");
    shim.step(step(2)).expect("accepted");
    assert_eq!(
        shim.flush(WAIT).expect("flush").outcome,
        FlushOutcome::Acked
    );
    assert_eq!(seqs(&fake.state().records()), vec![1, 3]);
    let stats = shim.stats();
    assert_eq!((stats.rejected, stats.acked), (1, 3));
}

#[test]
fn dropping_a_shim_flushes_it() {
    let fake = FakeIngest::start().expect("fake daemon");
    {
        let shim = Telemetry::new(config(&fake.endpoint(), None)).expect("shim");
        for i in 0..20 {
            shim.step(step(i)).expect("accepted");
        }
    }
    assert_eq!(fake.state().stored(), 20);
}
