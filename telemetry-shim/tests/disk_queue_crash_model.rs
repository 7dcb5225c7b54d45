//! Model test of the disk queue against machine crashes (OS crash, power loss), where only what
//! was synced survives. `disk_queue_model.rs` covers process crashes (everything written
//! survives); this one rebuilds the queue directory from its synced state only
//! (`disk_queue::fault_injection`, feature `fault-injection`), optionally keeping a random part
//! of the unsynced bytes as a partial write-back would, and reopens that.
//!
//! Properties, for each fsync policy: every record appended before the last sync that covered
//! it (an explicit sync, or a batch under `EveryBatch`) comes back unless acked; whatever comes
//! back is what was appended under that seq, in order; and a reopened queue never numbers a new
//! record at or below a seq it handed out for sending (the daemon would drop it as a
//! duplicate).

mod common;

use proptest::prelude::*;
use std::{collections::BTreeMap, path::PathBuf, time::Duration};
use telemetry_shim::{
    disk_queue::{fault_injection, DiskQueue, QueueOptions},
    pb::{Record, RunStep},
    FsyncPolicy,
};

#[derive(Debug, Clone)]
enum Op {
    Append {
        count: u8,
        pad: u8,
    },
    /// What the sender does after each batch (syncs as the policy says).
    Batch,
    Sync,
    /// Read up to this many records after the last sent one, "sending" them.
    Send(u8),
    /// The daemon acks up to a point of what was sent.
    Ack(u16),
    /// A machine crash; with a seed, part of the unsynced bytes survives.
    Crash(Option<u64>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..10, any::<u8>()).prop_map(|(count, pad)| Op::Append { count, pad }),
        3 => Just(Op::Batch),
        1 => Just(Op::Sync),
        3 => (1u8..20).prop_map(Op::Send),
        2 => any::<u16>().prop_map(Op::Ack),
        2 => proptest::option::of(any::<u64>()).prop_map(Op::Crash),
    ]
}

fn policy() -> impl Strategy<Value = FsyncPolicy> {
    prop_oneof![
        Just(FsyncPolicy::EveryBatch),
        Just(FsyncPolicy::Interval(Duration::from_secs(3600))),
        Just(FsyncPolicy::Never),
    ]
}

fn record(seq: u64, pad: u8) -> Record {
    let mut r: Record = RunStep {
        run_id: "crash-model".into(),
        step_index: seq,
        observation_json: format!("\"{}\"", "y".repeat(usize::from(pad))),
        ..Default::default()
    }
    .into();
    r.set_producer("", seq);
    r
}

fn run(fsync: FsyncPolicy, ops: Vec<Op>) {
    let root = common::fast_tempdir();
    let opts = QueueOptions {
        segment_max_bytes: 1024,
        fsync,
        ..QueueOptions::default()
    };
    let mut generation = 0;
    let mut dir: PathBuf = root.path().join("q0");
    fault_injection::watch(&dir).expect("watch");
    let (mut q, _) = DiskQueue::open(&dir, opts).expect("open");
    // Every record ever appended, by seq (a seq is never reused, so this is well defined).
    let mut appended: BTreeMap<u64, Record> = BTreeMap::new();
    let mut durable_upto = 0u64; // every appended seq up to here was synced
    let mut sent_upto = 0u64; // the sender's position
    let mut max_sent = 0u64; // the highest seq ever handed out for sending
    let mut daemon_acked = 0u64;
    for op in ops {
        match op {
            Op::Append { count, pad } => {
                for _ in 0..count {
                    let seq = q.last_seq() + 1;
                    let r = record(seq, pad);
                    q.append(&r).expect("append");
                    appended.insert(seq, r);
                }
            }
            Op::Batch => {
                q.after_batch().expect("batch");
                if fsync == FsyncPolicy::EveryBatch {
                    durable_upto = q.last_seq();
                }
            }
            Op::Sync => {
                q.sync().expect("sync");
                durable_upto = q.last_seq();
            }
            Op::Send(n) => {
                let got = q
                    .read_after(sent_upto, usize::from(n), usize::MAX)
                    .expect("read");
                if let Some(last) = got.last() {
                    sent_upto = last.producer().1;
                    max_sent = max_sent.max(sent_upto);
                }
            }
            Op::Ack(k) => {
                if sent_upto > daemon_acked {
                    let w = daemon_acked + 1 + u64::from(k) % (sent_upto - daemon_acked);
                    q.ack(w).expect("ack");
                    daemon_acked = w;
                }
            }
            Op::Crash(seed) => {
                drop(q);
                generation += 1;
                let next = root.path().join(format!("q{generation}"));
                fault_injection::crash_image(&dir, &next, seed).expect("image");
                fault_injection::unwatch(&dir);
                dir = next;
                fault_injection::watch(&dir).expect("watch");
                let (mut reopened, _) = DiskQueue::open(&dir, opts).expect("reopen");
                let back = reopened
                    .read_after(0, usize::MAX, usize::MAX)
                    .expect("read");
                let seqs: Vec<u64> = back.iter().map(|r| r.producer().1).collect();
                assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
                for r in &back {
                    let s = r.producer().1;
                    assert_eq!(appended.get(&s), Some(r), "seq {s} is what was appended");
                }
                let must = appended
                    .keys()
                    .filter(|&&s| s > daemon_acked && s <= durable_upto);
                for &s in must {
                    assert!(
                        seqs.contains(&s),
                        "{fsync:?}: synced seq {s} lost (synced up to {durable_upto}, acked {daemon_acked}; back {seqs:?})"
                    );
                }
                assert!(
                    reopened.last_seq() >= max_sent,
                    "{fsync:?}: the reopened queue would reuse seqs: next {} but {max_sent} was sent",
                    reopened.last_seq() + 1
                );
                assert!(reopened.last_seq() >= daemon_acked);
                // What survives is synced now (opening syncs it); the sender starts over after
                // the daemon's watermark, as after a reconnect.
                appended.retain(|&s, _| s <= daemon_acked || seqs.contains(&s));
                durable_upto = reopened.last_seq();
                sent_upto = daemon_acked;
                q = reopened;
            }
        }
    }
    q.close().expect("close");
    fault_injection::unwatch(&dir);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn only_unsynced_records_are_lost_and_no_seq_is_reused(
        fsync in policy(),
        ops in proptest::collection::vec(op(), 1..50),
    ) {
        run(fsync, ops);
    }
}

#[test]
fn a_record_sent_before_its_sync_is_never_renumbered() {
    // The shape of the bug this guards: appended, sent (unsynced, Never), acked by nobody,
    // then a crash takes it; new records must not take its seq.
    for fsync in [
        FsyncPolicy::Never,
        FsyncPolicy::Interval(Duration::from_secs(3600)),
    ] {
        run(
            fsync,
            vec![
                Op::Append { count: 5, pad: 1 },
                Op::Sync,
                Op::Append { count: 5, pad: 1 },
                Op::Batch,
                Op::Send(20),
                Op::Ack(2),
                Op::Crash(None),
                Op::Append { count: 3, pad: 1 },
                Op::Send(20),
                Op::Crash(Some(7)),
            ],
        );
    }
}
