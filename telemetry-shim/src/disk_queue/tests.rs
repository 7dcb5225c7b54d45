//! Unit tests of the disk queue that need its internals (segment bookkeeping, the directory
//! lock, state recovery); the crash and loss-window tests are in `tests/`.

use super::*;
use telemetry_core::pb::RunStep;

fn rec(seq: u64) -> Record {
    let mut r: Record = RunStep {
        run_id: "r".into(),
        step_index: seq,
        ..Default::default()
    }
    .into();
    r.set_producer("", seq);
    r
}

fn seqs(v: &[Record]) -> Vec<u64> {
    v.iter().map(|r| r.producer().1).collect()
}

#[test]
fn segment_ranges_count_gaps() {
    let mut s = Segment {
        first_seq: 1,
        path: PathBuf::new(),
        ranges: vec![],
        bytes: 0,
    };
    for q in [1, 2, 3, 7, 8, 10] {
        s.push(q);
    }
    assert_eq!(s.ranges, vec![(1, 3), (7, 8), (10, 10)]);
    assert_eq!(s.count_between(0, u64::MAX), 6);
    assert_eq!(s.count_between(2, 8), 3);
    assert_eq!(s.count_between(8, 9), 0);
    assert_eq!(s.last_seq(), Some(10));
}

#[test]
fn second_open_of_a_directory_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (q, _) = DiskQueue::open(dir.path(), QueueOptions::default()).expect("open");
    let err = DiskQueue::open(dir.path(), QueueOptions::default()).expect_err("locked");
    assert!(matches!(err, QueueError::Locked { .. }), "{err}");
    let id = q.producer_id().to_owned();
    q.close().expect("close");
    let (q2, rec) = DiskQueue::open(dir.path(), QueueOptions::default()).expect("reopen");
    assert_eq!(q2.producer_id(), id);
    assert_eq!(rec.producer_id, id);
}

#[test]
fn reads_continue_across_segments_and_acks_delete_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = QueueOptions {
        segment_max_bytes: 200,
        max_bytes: 1 << 20,
        ..QueueOptions::default()
    };
    let (mut q, _) = DiskQueue::open(dir.path(), opts).expect("open");
    for s in 1..=20 {
        assert_eq!(
            q.append(&rec(s)).expect("append"),
            AppendOutcome::Stored { evicted: 0 }
        );
    }
    assert!(q.segments.len() > 2, "{} segments", q.segments.len());
    let a = q.read_after(0, 7, usize::MAX).expect("read");
    assert_eq!(seqs(&a), (1..=7).collect::<Vec<_>>());
    let b = q.read_after(7, 100, usize::MAX).expect("read");
    assert_eq!(seqs(&b), (8..=20).collect::<Vec<_>>());
    // A rewind (after a reconnect) starts again after the given seq.
    let c = q.read_after(3, 2, usize::MAX).expect("read");
    assert_eq!(seqs(&c), vec![4, 5]);
    let files_before = q.segments.len();
    assert_eq!(q.ack(12).expect("ack"), 12);
    assert!(q.segments.len() < files_before);
    assert_eq!(q.unacked_records(), 8);
    assert_eq!(q.first_unacked_seq(), Some(13));
    assert_eq!(
        seqs(&q.read_after(0, 100, usize::MAX).expect("read")),
        (13..=20).collect::<Vec<_>>()
    );
    assert!(matches!(
        q.append(&rec(20)),
        Err(QueueError::OutOfOrder { seq: 20, last: 20 })
    ));
    assert_eq!(q.ack(20).expect("ack"), 8);
    assert_eq!(q.bytes(), 0);
    assert_eq!(q.first_unacked_seq(), None);
    q.append(&rec(21)).expect("append after full ack");
    assert_eq!(
        seqs(&q.read_after(20, 10, usize::MAX).expect("read")),
        vec![21]
    );
}

#[test]
fn unreadable_state_gets_a_new_producer_and_keeps_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut q, _) = DiskQueue::open(dir.path(), QueueOptions::default()).expect("open");
    let old = q.producer_id().to_owned();
    q.append(&rec(1)).expect("append");
    q.close().expect("close");
    fs::write(dir.path().join(state::STATE_FILE), b"{not json").expect("write");
    let (mut q, r) = DiskQueue::open(dir.path(), QueueOptions::default()).expect("reopen");
    assert!(r.state_reset);
    assert_ne!(q.producer_id(), old);
    assert_eq!(
        seqs(&q.read_after(0, 10, usize::MAX).expect("read")),
        vec![1]
    );
}

#[cfg(unix)]
#[test]
fn the_queue_directory_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("a/queue");
    let (mut q, _) = DiskQueue::open(&dir, QueueOptions::default()).expect("open");
    q.append(&rec(1)).expect("append");
    q.ack(0).expect("state written");
    let mode = |p: &Path| fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&root.path().join("a")), 0o700, "new parents too");
    let files: Vec<_> = fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(files.len() >= 2, "{files:?}");
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}
