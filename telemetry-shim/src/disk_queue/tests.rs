//! Unit tests of the disk queue that need its internals (segment bookkeeping, the directory
//! lock, state recovery); the crash and loss-window tests are in `tests/`.

use super::*;
use crate::FsyncPolicy;
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

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_segment_name)
                .is_some()
        })
        .collect();
    v.sort();
    v
}

/// Offsets of each frame in a segment file.
fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let (mut out, mut p) = (Vec::new(), 0);
    while p + 4 <= bytes.len() {
        out.push(p);
        let l = u32::from_le_bytes([bytes[p], bytes[p + 1], bytes[p + 2], bytes[p + 3]]);
        p += frame::HEADER_BYTES + l as usize;
    }
    out
}

#[test]
fn corruption_is_counted_in_records_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = QueueOptions {
        segment_max_bytes: 300,
        fsync: FsyncPolicy::Never,
        ..QueueOptions::default()
    };
    let (mut q, _) = DiskQueue::open(dir.path(), opts).expect("open");
    for s in 1..=40 {
        q.append(&rec(s)).expect("append");
    }
    q.ack(2).expect("ack");
    q.close().expect("close");
    let segs = segment_paths(dir.path());
    assert!(segs.len() >= 4, "{segs:?}");
    let firsts: Vec<u64> = segs
        .iter()
        .filter_map(|p| p.file_name()?.to_str().and_then(parse_segment_name))
        .collect();
    // A byte in the payload of the second frame of the second segment: its second frame and
    // everything after it in that segment are lost, up to the next segment's first seq.
    let mut b = fs::read(&segs[1]).expect("read");
    let offs = frame_offsets(&b);
    assert!(offs.len() >= 3);
    b[offs[1] + 12] ^= 0x40;
    fs::write(&segs[1], &b).expect("write");
    // The final frame of the last segment torn.
    let last = segs.last().expect("a segment");
    let b = fs::read(last).expect("read");
    let offs = frame_offsets(&b);
    let tail_start = *offs.last().expect("a frame");
    fs::write(last, &b[..tail_start + 5]).expect("write");
    let (mut q, r) = DiskQueue::open(dir.path(), opts).expect("reopen");
    assert_eq!(r.corrupt_tails, 2);
    let want_lost = (firsts[2] - (firsts[1] + 1)) + 1;
    assert_eq!(r.lost_records, want_lost, "{firsts:?}");
    assert_eq!(q.corrupt_lost_records(), want_lost);
    let got = seqs(&q.read_after(0, usize::MAX, usize::MAX).expect("read"));
    let missing: Vec<u64> = (3..=40).filter(|s| !got.contains(s)).collect();
    assert_eq!(missing.len() as u64, r.lost_records, "missing {missing:?}");
    assert_eq!(r.records + r.lost_records, 38);
}

#[test]
fn a_damaged_frame_in_the_middle_of_the_last_segment_counts_every_record_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut q, _) = DiskQueue::open(dir.path(), QueueOptions::default()).expect("open");
    for s in 1..=10 {
        q.append(&rec(s)).expect("append");
    }
    q.close().expect("close");
    let segs = segment_paths(dir.path());
    assert_eq!(segs.len(), 1);
    let mut b = fs::read(&segs[0]).expect("read");
    let offs = frame_offsets(&b);
    // The length field of frame 4 (seq 4) hit: 4..=10 are cut off, and counted.
    b[offs[3] + 2] ^= 0x7f;
    fs::write(&segs[0], &b).expect("write");
    let (_, r) = DiskQueue::open(dir.path(), QueueOptions::default()).expect("reopen");
    assert_eq!((r.records, r.lost_records, r.corrupt_tails), (3, 7, 1));
}

#[test]
fn counting_a_cut_tail() {
    let mut b = Vec::new();
    for s in 5..=9 {
        frame::encode(s, &rec(s), &mut b);
    }
    let offs = frame_offsets(&b);
    // A torn final frame: one record.
    assert_eq!(segment::count_cut_records(&b[offs[4]..b.len() - 1], 9), 1);
    assert_eq!(segment::count_cut_records(&b[offs[4]..offs[4] + 3], 9), 1);
    // Damage at the start, intact frames after: all of them.
    let mut d = b.clone();
    d[offs[0]] = 0xff;
    d[offs[0] + 3] = 0xff;
    assert_eq!(segment::count_cut_records(&d, 5), 5);
    // Damage, intact frames, then a torn one.
    assert_eq!(segment::count_cut_records(&d[..d.len() - 2], 5), 5);
    // Zeros (a crash left the size but not the data): at least one.
    assert_eq!(segment::count_cut_records(&[0u8; 100], 1), 1);
}

#[test]
fn an_unsynced_send_reserves_seqs_that_a_reopen_skips_and_a_close_gives_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = QueueOptions {
        fsync: FsyncPolicy::Never,
        ..QueueOptions::default()
    };
    let (mut q, _) = DiskQueue::open(dir.path(), opts).expect("open");
    for s in 1..=5 {
        q.append(&rec(s)).expect("append");
    }
    q.after_batch().expect("batch");
    assert_eq!(q.read_after(0, 10, usize::MAX).expect("read").len(), 5);
    let st = state::read(dir.path()).expect("state").expect("present");
    assert_eq!(st.reserved, 5 + RESERVE_AHEAD, "reserved before the send");
    // Read again: within the reservation, no new state write is needed.
    q.append(&rec(6)).expect("append");
    q.read_after(5, 10, usize::MAX).expect("read");
    drop(q);
    let (q, _) = DiskQueue::open(dir.path(), opts).expect("reopen after a crash");
    assert_eq!(
        q.last_seq(),
        5 + RESERVE_AHEAD,
        "new records go past the reservation"
    );
    q.close().expect("close");
    let (q, _) = DiskQueue::open(dir.path(), opts).expect("reopen");
    assert_eq!(q.last_seq(), 5 + RESERVE_AHEAD, "seqs never go back");
    q.close().expect("close");

    // EveryBatch syncs before anything is read for sending: no reservation, no gap.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut q, _) = DiskQueue::open(dir.path(), QueueOptions::default()).expect("open");
    q.append(&rec(1)).expect("append");
    q.after_batch().expect("batch");
    q.read_after(0, 10, usize::MAX).expect("read");
    drop(q);
    let (q, _) = DiskQueue::open(dir.path(), QueueOptions::default()).expect("reopen");
    assert_eq!(q.last_seq(), 1);
    assert_eq!(
        state::read(dir.path()).expect("state").map(|s| s.reserved),
        Some(0)
    );
}
