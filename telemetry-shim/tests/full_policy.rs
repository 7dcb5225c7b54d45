//! Full policies, at the disk queue (exact counts with whole-segment eviction) and through a
//! shim whose daemon is down (what a worker sees: which records survive, what is counted).

mod common;

use common::{config, seqs, step, WAIT};
use std::time::{Duration, Instant};
use telemetry_shim::{
    disk_queue::{frame_len, AppendOutcome, DiskQueue, QueueError, QueueOptions},
    fake_ingest::{reserve_port, FakeIngest, FakeState},
    pb::{Record, RunStep},
    FlushOutcome, FsyncPolicy, FullPolicy, ShimConfig, ShimError, Telemetry,
};

fn rec(seq: u64) -> Record {
    let mut r: Record = RunStep {
        run_id: "full".into(),
        step_index: 7,
        ..Default::default()
    }
    .into();
    r.set_producer("", seq);
    r
}

/// A queue of 4 segments of 10 frames each (every test frame has the same length).
fn queue(dir: &std::path::Path, full_policy: FullPolicy) -> DiskQueue {
    let l = frame_len(&rec(1)) as u64;
    let opts = QueueOptions {
        max_bytes: 40 * l,
        segment_max_bytes: 10 * l,
        full_policy,
        fsync: FsyncPolicy::Never,
    };
    DiskQueue::open(dir, opts).expect("open").0
}

fn all(q: &mut DiskQueue) -> Vec<u64> {
    seqs(&q.read_after(0, usize::MAX, usize::MAX).expect("read"))
}

#[test]
fn disk_drop_newest_refuses_exactly_what_does_not_fit() {
    let dir = common::fast_tempdir();
    let mut q = queue(dir.path(), FullPolicy::DropNewest);
    let mut refused = 0;
    for s in 1..=50 {
        match q.append(&rec(s)).expect("append") {
            AppendOutcome::Stored { evicted } => assert_eq!(evicted, 0),
            AppendOutcome::Refused => refused += 1,
        }
    }
    assert_eq!(refused, 10);
    assert_eq!(all(&mut q), (1..=40).collect::<Vec<_>>());
    assert_eq!(q.unacked_records(), 40);
}

#[test]
fn disk_drop_oldest_evicts_whole_segments_and_counts_only_unacked_records() {
    let dir = common::fast_tempdir();
    let mut q = queue(dir.path(), FullPolicy::DropOldest);
    for s in 1..=40 {
        assert_eq!(
            q.append(&rec(s)).expect("append"),
            AppendOutcome::Stored { evicted: 0 }
        );
    }
    // 5 of the oldest segment's 10 records are acked: eviction loses the other 5.
    assert_eq!(q.ack(5).expect("ack"), 5);
    assert_eq!(
        q.append(&rec(41)).expect("append"),
        AppendOutcome::Stored { evicted: 5 }
    );
    for s in 42..=50 {
        assert_eq!(
            q.append(&rec(s)).expect("append"),
            AppendOutcome::Stored { evicted: 0 }
        );
    }
    assert_eq!(
        q.append(&rec(51)).expect("append"),
        AppendOutcome::Stored { evicted: 10 }
    );
    assert_eq!(all(&mut q), (21..=51).collect::<Vec<_>>());
    assert_eq!(q.unacked_records(), 31);
    // Survives a reopen.
    q.close().expect("close");
    let mut q = queue(dir.path(), FullPolicy::DropOldest);
    assert_eq!(all(&mut q), (21..=51).collect::<Vec<_>>());
}

#[test]
fn disk_block_reports_full_until_an_ack_frees_a_segment() {
    let dir = common::fast_tempdir();
    let mut q = queue(
        dir.path(),
        FullPolicy::Block {
            timeout: Duration::ZERO,
        },
    );
    for s in 1..=40 {
        q.append(&rec(s)).expect("room");
    }
    assert!(matches!(q.append(&rec(41)), Err(QueueError::Full { .. })));
    assert_eq!(q.ack(9).expect("ack"), 9);
    assert!(
        matches!(q.append(&rec(41)), Err(QueueError::Full { .. })),
        "a partly acked segment frees nothing"
    );
    assert_eq!(q.ack(10).expect("ack"), 1);
    assert_eq!(
        q.append(&rec(41)).expect("room"),
        AppendOutcome::Stored { evicted: 0 }
    );
    assert_eq!(all(&mut q), (11..=41).collect::<Vec<_>>());
}

/// A shim whose daemon is down and whose memory queue holds only a few records.
fn tiny(endpoint: &str, full_policy: FullPolicy) -> ShimConfig {
    ShimConfig {
        full_policy,
        max_record_bytes: 1024,
        memory_queue_max_bytes: 1024 + 64,
        buffer_max_records: 4,
        buffer_max_bytes: 4096,
        ..config(endpoint, None)
    }
}

#[test]
fn shim_drop_newest_keeps_the_first_records_and_counts_the_rest() {
    let addr = reserve_port().expect("port");
    let shim =
        Telemetry::new(tiny(&format!("http://{addr}"), FullPolicy::DropNewest)).expect("shim");
    let mut refused_at_call = 0;
    for i in 0..60 {
        if let Err(e) = shim.step(step(i)) {
            assert!(matches!(e, ShimError::QueueFull { .. }), "{e}");
            refused_at_call += 1;
        }
    }
    let _ = shim.flush(Duration::from_millis(100));
    let fake = FakeIngest::start_with(addr, FakeState::new()).expect("daemon up");
    assert_eq!(
        shim.flush(WAIT).expect("flush").outcome,
        FlushOutcome::Acked
    );
    let delivered = seqs(&fake.state().records());
    let n = delivered.len() as u64;
    assert!(n > 0 && n < 60, "{n} delivered");
    assert_eq!(delivered, (1..=n).collect::<Vec<_>>(), "the oldest survive");
    let stats = shim.stats();
    assert_eq!(stats.dropped, 60 - n, "every lost record is counted once");
    assert_eq!(stats.accepted, 60 - refused_at_call);
}

#[test]
fn shim_drop_oldest_keeps_the_newest_records_and_counts_the_rest() {
    let addr = reserve_port().expect("port");
    let shim = Telemetry::new(ShimConfig {
        buffer_max_records: 1000,
        buffer_max_bytes: 1 << 20,
        ..tiny(&format!("http://{addr}"), FullPolicy::DropOldest)
    })
    .expect("shim");
    for i in 0..60 {
        shim.step(step(i))
            .expect("drop oldest never refuses a new record");
    }
    let _ = shim.flush(Duration::from_millis(100));
    let fake = FakeIngest::start_with(addr, FakeState::new()).expect("daemon up");
    assert_eq!(
        shim.flush(WAIT).expect("flush").outcome,
        FlushOutcome::Acked
    );
    let delivered = seqs(&fake.state().records());
    let n = delivered.len() as u64;
    assert!(n > 0 && n < 60, "{n} delivered");
    assert_eq!(
        delivered,
        (61 - n..=60).collect::<Vec<_>>(),
        "the newest survive"
    );
    let stats = shim.stats();
    assert_eq!(stats.dropped, 60 - n);
    assert_eq!(stats.accepted, 60);
}

#[test]
fn shim_block_waits_its_timeout_then_drops_and_resumes_when_the_daemon_returns() {
    let addr = reserve_port().expect("port");
    let timeout = Duration::from_millis(200);
    let shim = Telemetry::new(tiny(
        &format!("http://{addr}"),
        FullPolicy::Block { timeout },
    ))
    .expect("shim");
    let mut accepted = 0u64;
    let mut refusal = None;
    for i in 0..100 {
        let start = Instant::now();
        match shim.step(step(i)) {
            Ok(()) => accepted += 1,
            Err(e) => {
                refusal = Some((e, start.elapsed()));
                break;
            }
        }
    }
    let (err, waited) = refusal.expect("the queue filled up");
    assert!(matches!(err, ShimError::QueueFull { .. }), "{err}");
    assert!(waited >= timeout, "the caller waited {waited:?}");
    assert_eq!(shim.stats().dropped, 1);

    let fake = FakeIngest::start_with(addr, FakeState::new()).expect("daemon up");
    assert_eq!(
        shim.flush(WAIT).expect("flush").outcome,
        FlushOutcome::Acked
    );
    shim.step(step(999)).expect("room again");
    assert_eq!(
        shim.flush(WAIT).expect("flush").outcome,
        FlushOutcome::Acked
    );
    assert_eq!(
        seqs(&fake.state().records()),
        (1..=accepted + 1).collect::<Vec<_>>(),
        "a dropped record takes no seq; nothing accepted was lost"
    );
    assert_eq!(shim.stats().dropped, 1);
}
