//! One segment file: its name, the seqs it holds, and the scan that reads it back at open.
//!
//! The queue is a directory of `seg-<first seq>.log` files of frames. What a segment holds
//! (contiguous seq ranges, its size) and how a torn or corrupt tail is cut on recovery are
//! independent of the queue's append/ack/replay bookkeeping in `mod.rs`, so they live here.

use super::{
    frame::{self, FrameRead},
    state::io_err,
    QueueError,
};
use std::{
    fs::OpenOptions,
    io::{self, BufReader, Read, Seek, SeekFrom},
    path::PathBuf,
};

/// One segment file and the seqs it holds, as contiguous inclusive ranges (gaps appear where
/// records were dropped before reaching the queue).
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) first_seq: u64,
    pub(super) path: PathBuf,
    pub(super) ranges: Vec<(u64, u64)>,
    pub(super) bytes: u64,
}

impl Segment {
    pub(super) fn last_seq(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.1)
    }

    pub(super) fn push(&mut self, seq: u64) {
        match self.ranges.last_mut() {
            Some(r) if r.1 + 1 == seq => r.1 = seq,
            _ => self.ranges.push((seq, seq)),
        }
    }

    /// Seqs in `(lo, hi]`.
    pub(super) fn count_between(&self, lo: u64, hi: u64) -> u64 {
        self.ranges
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.max(lo.saturating_add(1)), b.min(hi));
                if a <= b {
                    b - a + 1
                } else {
                    0
                }
            })
            .sum()
    }
}

/// The file name of the segment whose first record is `first_seq`.
pub(super) fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.log")
}

/// The first seq of a segment file name (`None`: not a segment).
pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?
        .strip_suffix(".log")
        .filter(|d| d.len() == 20)?
        .parse()
        .ok()
}

/// What scanning a segment's bytes found: the seqs of its good frames, how many bytes they
/// take, and why the scan stopped early (if it did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Scan {
    /// The seqs of the good frames, as contiguous inclusive ranges.
    pub(super) ranges: Vec<(u64, u64)>,
    /// Bytes of the good frames (the offset of the first bad frame, if any).
    pub(super) good_bytes: u64,
    /// Why the rest is cut (`None`: the data ended cleanly after the last good frame).
    pub(super) cut: Option<&'static str>,
}

/// Reads the frames of a segment of `size` bytes from `reader` until the first bad one: short,
/// too long, past `size`, failing its CRC, or not increasing the seq beyond `prev_last` and the
/// frame before it. Does no I/O beyond `reader`, so recovery can be checked on plain bytes.
pub(super) fn scan_frames<R: Read>(reader: &mut R, size: u64, prev_last: u64) -> io::Result<Scan> {
    let mut seg = Segment {
        first_seq: 0,
        path: PathBuf::new(),
        ranges: Vec::new(),
        bytes: 0,
    };
    let mut offset = 0u64;
    let mut last = prev_last;
    let cut = loop {
        match frame::read(reader, size.saturating_sub(offset))? {
            FrameRead::Frame { seq, len, .. } if seq > last => {
                seg.push(seq);
                last = seq;
                offset += len;
            }
            FrameRead::Frame { .. } => break Some("seq not increasing"),
            FrameRead::End => break None,
            FrameRead::Corrupt(reason) => break Some(reason),
        }
    };
    Ok(Scan {
        ranges: seg.ranges,
        good_bytes: offset,
        cut,
    })
}

/// Tails larger than this are not read back to count their records (one is assumed).
const MAX_COUNTED_TAIL: u64 = 64 << 20;

/// What cutting a segment removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cut {
    /// Bytes removed.
    pub(super) bytes: u64,
    /// Records those bytes held, as far as they tell ([`count_cut_records`]); the queue prefers
    /// the seq gap to the next segment when there is one.
    pub(super) records: u64,
}

/// How many records a cut tail held, the first of them numbered `first_lost`. The last intact
/// frame in it (found by trying every offset: a CRC over length and payload makes a false
/// match a 2^-32 event) fixes the count up to its seq; bytes after it, or a tail without one,
/// count as one record (a torn frame). Exact for a torn final frame and for damage followed by
/// intact frames; never more than the truth, since every byte of a segment belongs to a record.
pub(super) fn count_cut_records(tail: &[u8], first_lost: u64) -> u64 {
    let mut anchor = None;
    let mut o = 0;
    while o < tail.len() {
        let mut r = &tail[o..];
        match frame::read(&mut r, (tail.len() - o) as u64) {
            Ok(FrameRead::Frame { seq, len, .. })
                if seq >= first_lost && anchor.is_none_or(|(_, s)| seq > s) =>
            {
                o += len as usize;
                anchor = Some((o, seq));
            }
            _ => o += 1,
        }
    }
    match anchor {
        Some((end, seq)) => seq - first_lost + 1 + u64::from(end < tail.len()),
        None => u64::from(!tail.is_empty()),
    }
}

/// Reads a segment, cutting it at the first bad frame. Returns the segment and, when cut, what
/// was removed.
pub(super) fn scan_segment(
    first_seq: u64,
    path: PathBuf,
    prev_last: u64,
) -> Result<(Segment, Option<Cut>), QueueError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    let size = file.metadata().map_err(|e| io_err(&path, e))?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, &file);
    let scan = scan_frames(&mut reader, size, prev_last).map_err(|e| io_err(&path, e))?;
    drop(reader);
    let seg = Segment {
        first_seq,
        path,
        ranges: scan.ranges,
        bytes: scan.good_bytes,
    };
    let offset = seg.bytes;
    let lost = match scan.cut {
        None => None,
        Some(reason) => {
            tracing::warn!(path = %seg.path.display(), offset, reason,
                "telemetry queue: cutting a torn or corrupt segment tail");
            let bytes = size - offset;
            let first_lost = seg
                .last_seq()
                .map_or(first_seq.max(prev_last + 1), |l| l + 1);
            let records = if bytes <= MAX_COUNTED_TAIL {
                let mut tail = Vec::with_capacity(bytes as usize);
                let mut f = &file;
                f.seek(SeekFrom::Start(offset))
                    .and_then(|_| f.take(bytes).read_to_end(&mut tail))
                    .map_err(|e| io_err(&seg.path, e))?;
                count_cut_records(&tail, first_lost)
            } else {
                1
            };
            file.set_len(offset).map_err(|e| io_err(&seg.path, e))?;
            file.sync_all().map_err(|e| io_err(&seg.path, e))?;
            super::fault::data_synced(&seg.path, offset);
            Some(Cut { bytes, records })
        }
    };
    Ok((seg, lost))
}
