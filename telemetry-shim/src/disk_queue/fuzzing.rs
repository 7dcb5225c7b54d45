//! Entry points for the `segment_scan` fuzz target and its corpus replay test (feature
//! `fuzzing`; not part of the public API).
//!
//! Segment files are read back after crashes and disk faults, so the scan at [`DiskQueue::open`]
//! sees arbitrary bytes. The scan and the frame reader are private; these functions run them on
//! plain bytes (and, for [`recover_segment_file`], through the real open-and-repair path) and
//! panic when the result breaks one of the promises in the module docs of
//! [`disk_queue`](super): no panic, nothing allocated from a length the file cannot hold, and a
//! recovery whose numbers add up (kept + cut = the file, the kept part rescans unchanged, what
//! is replayed is what was counted).

use super::{
    frame::{self, FrameRead, HEADER_BYTES, MAX_FRAME_BYTES},
    segment::{scan_frames, segment_name, Scan},
    DiskQueue, QueueError, QueueOptions, Recovery,
};
use std::{
    io::{self, Read},
    path::Path,
};

/// What scanning one segment's bytes found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Good frames (records the queue would resend).
    pub records: u64,
    /// Bytes of the good frames.
    pub good_bytes: u64,
    /// Bytes recovery cuts off.
    pub cut_bytes: u64,
    /// Why it cuts (`None`: nothing cut).
    pub cut_reason: Option<&'static str>,
    /// Good frames whose payload is not a protobuf `Record` (skipped on replay).
    pub undecodable: u64,
}

/// Scans `bytes` as one segment file (no earlier segment), checks the scan's invariants and
/// returns what it found. Panics only when an invariant is broken.
pub fn scan_segment_bytes(bytes: &[u8]) -> ScanReport {
    let size = bytes.len() as u64;
    let scan = scan_slice(bytes, size);

    assert!(scan.good_bytes <= size, "kept more than the file: {scan:?}");
    let cut_bytes = size - scan.good_bytes;
    assert_eq!(
        scan.cut.is_some(),
        cut_bytes > 0,
        "a cut iff bytes are left after the good frames: {scan:?}"
    );
    let mut records = 0u64;
    let mut prev: Option<u64> = None;
    for &(a, b) in &scan.ranges {
        assert!(a <= b && a > 0, "range {a}..={b}");
        if let Some(p) = prev {
            assert!(a > p.saturating_add(1), "ranges not disjoint and merged");
        }
        prev = Some(b);
        records += b - a + 1;
    }

    // The same scan through a reader that returns a few bytes at a time (and is interrupted)
    // finds the same thing: frame reads do not depend on how the OS splits reads.
    let mut trickle = Trickle {
        data: bytes,
        step: 0,
    };
    let again = scan_frames(&mut trickle, size, 0).expect("a trickle reader fails only EINTR");
    assert_eq!(again, scan, "short reads changed the scan");

    // Recovery is idempotent: the kept prefix scans clean, to the same frames.
    let kept = &bytes[..usize::try_from(scan.good_bytes).unwrap_or(bytes.len())];
    let rescan = scan_slice(kept, scan.good_bytes);
    assert_eq!(rescan.cut, None, "the kept prefix still has a bad frame");
    assert_eq!(rescan.ranges, scan.ranges);
    assert_eq!(rescan.good_bytes, scan.good_bytes);

    // Replay reads the kept frames one by one (the length check as replay does it, with the
    // file size unknown) and decodes them.
    let mut r = kept;
    let (mut frames, mut undecodable) = (0u64, 0u64);
    loop {
        match frame::read(&mut r, u64::MAX).expect("reading a slice cannot fail") {
            FrameRead::Frame { record, len, .. } => {
                assert!(len as usize >= HEADER_BYTES + 8 && len as usize <= kept.len());
                frames += 1;
                if frame::decode(&record).is_none() {
                    undecodable += 1;
                }
            }
            FrameRead::End => break,
            FrameRead::Corrupt(reason) => panic!("kept prefix replays corrupt: {reason}"),
        }
    }
    assert_eq!(frames, records, "replay finds the frames the scan counted");

    ScanReport {
        records,
        good_bytes: scan.good_bytes,
        cut_bytes,
        cut_reason: scan.cut,
        undecodable,
    }
}

/// Writes `bytes` as the only segment of a fresh queue directory `dir`, opens the queue (which
/// scans and repairs it), replays it, and reopens it; checks the [`Recovery`] against
/// [`scan_segment_bytes`] and that the second open finds nothing more to cut. `dir` must not
/// exist yet or be empty.
pub fn recover_segment_file(dir: &Path, bytes: &[u8]) -> Result<Recovery, QueueError> {
    let want = scan_segment_bytes(bytes);
    super::private_dir(dir).map_err(|e| super::state::io_err(dir, e))?;
    let path = dir.join(segment_name(1));
    std::fs::write(&path, bytes).map_err(|e| super::state::io_err(&path, e))?;
    let (mut q, rec) = DiskQueue::open(dir, QueueOptions::default())?;
    assert_eq!(rec.records, want.records, "{rec:?} vs {want:?}");
    assert_eq!(rec.truncated_bytes, want.cut_bytes, "{rec:?} vs {want:?}");
    assert_eq!(rec.corrupt_tails, u64::from(want.cut_reason.is_some()));
    assert_eq!(rec.segments, usize::from(want.records > 0));
    assert_eq!(q.unacked_records(), want.records);
    assert_eq!(
        q.bytes(),
        if want.records > 0 { want.good_bytes } else { 0 }
    );
    let replayed = q.read_after(0, usize::MAX, usize::MAX)?;
    assert_eq!(replayed.len() as u64, want.records - want.undecodable);
    assert_eq!(q.corrupt_tails(), rec.corrupt_tails + want.undecodable);
    q.close()?;
    let (q, again) = DiskQueue::open(dir, QueueOptions::default())?;
    assert_eq!(
        again.corrupt_tails, 0,
        "a repaired segment is cut again: {again:?}"
    );
    assert_eq!(again.truncated_bytes, 0);
    assert_eq!(again.records, want.records);
    assert_eq!(again.producer_id, rec.producer_id);
    q.close()?;
    Ok(rec)
}

/// `bytes` with every frame's CRC rewritten to match, as far as the lengths chain: lets the
/// fuzzer reach valid frames (seq order, undecodable payloads, length edges) that a CRC would
/// otherwise hide from it.
pub fn with_valid_crcs(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut at = 0usize;
    while out.len().saturating_sub(at) >= HEADER_BYTES {
        let len_bytes = [out[at], out[at + 1], out[at + 2], out[at + 3]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        let end = at + HEADER_BYTES + len;
        if !(8..=MAX_FRAME_BYTES).contains(&len) || end > out.len() {
            break;
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &out[at + HEADER_BYTES..end]);
        out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
    out
}

fn scan_slice(bytes: &[u8], size: u64) -> Scan {
    let mut r = bytes;
    scan_frames(&mut r, size, 0).expect("reading a slice cannot fail")
}

/// A reader that hands out at most 7 bytes per call and reports `Interrupted` every third call.
struct Trickle<'a> {
    data: &'a [u8],
    step: u32,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.step = self.step.wrapping_add(1);
        if self.step.is_multiple_of(3) {
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        let n = buf.len().min(self.data.len()).min(7);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}
