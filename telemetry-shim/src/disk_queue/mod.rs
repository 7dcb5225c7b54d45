//! The shim's write-ahead log and offline queue: records wait here, on disk, until the daemon's
//! durable ack covers them.
//!
//! A training run may outlive many daemon restarts and its own worker's restarts. Keeping
//! unacknowledged telemetry in memory would lose it at the first crash, so when a queue
//! directory is configured **every accepted record is written here before it is sent**, and the
//! sender reads what it sends back from here, in order. One path for "connected" and "offline"
//! means there is no hand-over between a memory buffer and a spill file to get wrong.
//!
//! # Guarantees
//!
//! - **Layout.** `<dir>/lock` (the process lock), `<dir>/state.json` (this producer's id, the
//!   acked watermark and the seq reservation), `<dir>/seg-<first producer_seq, 20 digits>.log` (segments, oldest first).
//! - **Framing.** Each record is one frame: `len: u32 LE | crc32c: u32 LE | payload`, payload =
//!   `producer_seq: u64 LE | protobuf Record`, CRC over the length bytes and the payload.
//! - **Order.** Records are appended in strictly increasing `producer_seq` (anything else is
//!   refused with [`QueueError::OutOfOrder`]) and replayed in that order.
//! - **Nothing acked comes back.** [`DiskQueue::ack`] records the watermark in `state.json`
//!   (atomic replace) before returning; replay (also after a reopen) starts after it. A segment
//!   file is deleted only when the watermark covers all its records, and only after the state
//!   that says so is synced. (Should the OS lose the last state write, the records come back and
//!   the daemon counts them as duplicates: never stored twice.)
//! - **Identity survives restarts.** `state.json` keeps the producer id; a reopened queue
//!   continues `producer_seq` after `max(last seq on disk, watermark)`.
//! - **Loss windows.** What a crash can take, by what crashes and the [`FsyncPolicy`]:
//!   - *the worker process* (killed, aborted): only what had not reached this queue yet, i.e. the
//!     shim's in-memory inbox (records accepted in the last `batch_linger`, 50 ms by default, or
//!     the last batch). Everything this queue has written is in the kernel and survives,
//!     whatever the fsync policy.
//!   - *the machine* (OS crash, power loss): additionally, with `EveryBatch` the batch being
//!     written; with `Interval(d)` up to `d` of writes; with `Never` whatever the kernel had not
//!     written back (on Linux typically up to 30 s). An explicit flush/close always syncs.
//!     Opening syncs the segments it recovered before any is sent.
//! - **No seq is numbered twice.** With `Interval`/`Never` a record can reach the daemon before
//!   it is synced here, and a machine crash can then take it from this disk while the daemon
//!   keeps it; a reopened queue numbering from its last surviving record would give new records
//!   seqs the daemon already holds, and they would be dropped as duplicates. So before an
//!   unsynced record is sent, `state.json` durably reserves seqs [`RESERVE_AHEAD`] past it
//!   (`reserved_seq`) and a reopen continues after the reservation (a gap in `producer_seq`
//!   after a crash, never a reuse); a clean close gives it back. With `EveryBatch` records are
//!   synced before they are sent and nothing is reserved. Kept by the OS-crash model test
//!   (`tests/disk_queue_crash_model.rs`), which rebuilds a directory from only its synced state
//!   (the `fault-injection` feature, `fault.rs`), and the chaos harness's `os-crash`.
//! - **Torn and corrupt data.** Opening scans every segment. The first frame that is short, has
//!   a length above [`MAX_FRAME_BYTES`] or past the end of the file, fails its CRC, or does not
//!   increase the seq ends its segment: the file is cut there, the cut is counted in
//!   [`Recovery::corrupt_tails`] and the bytes in [`Recovery::truncated_bytes`]. Records after a
//!   corrupt frame *in the same segment* are lost; other segments are unaffected. The loss is
//!   also counted in records, [`Recovery::lost_records`] (and `ShimStats::corrupt_lost_records`):
//!   the seqs from the last intact frame of the cut segment up to the first seq of the next
//!   segment (from its name); for the last segment, the records the cut bytes held, fixed by
//!   the last intact frame among them (found by trying every offset) and counted on from it by
//!   length fields, exact for a torn final frame (one record) and for damage followed by an
//!   intact frame, at least 1 otherwise. Seqs the shim never queued (a record too large for a
//!   frame, already counted as dropped) inside that range would be counted again. Untrusted
//!   lengths are checked before anything is allocated; nothing here panics on bad bytes.
//! - **Bounded.** The segment files never exceed [`QueueOptions::max_bytes`] in total. When an
//!   append would pass it the [`FullPolicy`] decides: `Block` → [`QueueError::Full`] (the caller
//!   waits for acks and retries), `DropNewest` → [`AppendOutcome::Refused`], `DropOldest` → whole
//!   oldest segments are deleted and their unacked records reported as evicted.
//! - **One process per directory.** The `lock` file is held with an exclusive OS lock for the
//!   queue's lifetime; a second open fails with [`QueueError::Locked`]. The OS releases the lock
//!   when the holder dies, so a crashed worker never blocks its successor.
//! - **An unreadable `state.json`** is moved aside (`state.json.corrupt-*`), a new producer id
//!   is made and the surviving segments are resent under it: at-least-once for those records
//!   (reported in [`Recovery::state_reset`]), and the worker still starts.
//! - **Cost.** Opening reads every segment once (O(queue bytes)). Dropping a `DiskQueue` without
//!   [`DiskQueue::close`] behaves like a crash: the unwritten buffer is discarded.

mod fault;
mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod segment;
mod state;

#[cfg(feature = "fault-injection")]
pub use fault::fault_injection;

pub use frame::{frame_len, MAX_FRAME_BYTES};

use crate::policy::{FsyncPolicy, FullPolicy};
use frame::FrameRead;
use segment::{parse_segment_name, scan_segment, segment_name, Cut, Segment};
use state::{io_err, State};
use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{BufReader, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    time::Instant,
};
use telemetry_core::pb::Record;

/// Bytes buffered before a write to the segment file (the sender also writes at every batch).
const WRITE_BUFFER: usize = 256 * 1024;
/// Closed segments awaiting a sync before they are synced eagerly (bounds open descriptors).
const MAX_UNSYNCED_FILES: usize = 8;
/// How far past an unsynced record about to be sent the seq reservation reaches (one synced
/// state write per this many records sent ahead of their sync).
const RESERVE_AHEAD: u64 = 1 << 16;

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A file operation failed.
    #[error("telemetry queue {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the queue directory.
    #[error("telemetry queue {dir} is in use by another process")]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// A record's seq is not above the last one appended.
    #[error("producer_seq {seq} is not above the last queued {last}")]
    OutOfOrder {
        /// The record's seq.
        seq: u64,
        /// The last seq appended.
        last: u64,
    },
    /// A record does not fit in a frame or a segment.
    #[error("record frame is {size} bytes, the limit is {max}")]
    TooLarge {
        /// The frame size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The queue is at its byte bound and the policy is `Block`.
    #[error("telemetry queue is full ({bytes} of {max} bytes)")]
    Full {
        /// Bytes in use.
        bytes: u64,
        /// The bound.
        max: u64,
    },
}

/// How a [`DiskQueue`] is bounded and synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOptions {
    /// Bound of all segment files together. Default 1 GiB.
    pub max_bytes: u64,
    /// A segment is closed when the next frame would take it past this. Default 16 MiB.
    pub segment_max_bytes: u64,
    /// What an append does at the bound. Default drop oldest.
    pub full_policy: FullPolicy,
    /// When writes are synced. Default every batch.
    pub fsync: FsyncPolicy,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            max_bytes: 1 << 30,
            segment_max_bytes: 16 << 20,
            full_policy: FullPolicy::DropOldest,
            fsync: FsyncPolicy::EveryBatch,
        }
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The record is queued; `evicted` older unacked records were deleted to make room.
    Stored {
        /// Unacked records deleted by `DropOldest`.
        evicted: u64,
    },
    /// `DropNewest` (or nothing left to evict): the record was not queued.
    Refused,
}

/// What opening a queue directory found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// This directory's producer id.
    pub producer_id: String,
    /// Unacked records found (to be sent).
    pub records: u64,
    /// Segment files kept.
    pub segments: usize,
    /// Torn or corrupt frames cut off (one per affected segment).
    pub corrupt_tails: u64,
    /// Bytes cut off with them.
    pub truncated_bytes: u64,
    /// Unacked records cut off with them: the seqs from the last intact frame of a cut segment
    /// to the first seq of the next segment, or, for the last segment, the records its cut
    /// bytes held (exact for a torn final frame; see the module docs).
    pub lost_records: u64,
    /// `state.json` was unreadable and was replaced (a new producer id).
    pub state_reset: bool,
}

/// The segment being appended to.
struct Head {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    /// Bytes of the file known written (a failed write is cut back to this).
    written: u64,
}

/// Where replay stands: a reader inside one segment, after `last_seq`.
struct Cursor {
    segment_first: u64,
    reader: BufReader<File>,
    last_seq: u64,
}

/// The queue directory, opened by one process. See the module docs for its guarantees.
pub struct DiskQueue {
    dir: PathBuf,
    _lock: File,
    opts: QueueOptions,
    producer_id: String,
    acked: u64,
    last_seq: u64,
    segments: VecDeque<Segment>,
    head: Option<Head>,
    /// Closed segments not synced yet, with their path and length.
    unsynced: Vec<(File, PathBuf, u64)>,
    dir_dirty: bool,
    dirty: bool,
    last_sync: Instant,
    bytes: u64,
    unacked: u64,
    cursor: Option<Cursor>,
    corrupt: u64,
    /// Records lost to corrupt frames (at open and while reading).
    lost: u64,
    /// Every seq up to here is on stable storage (or acked).
    synced_seq: u64,
    /// The durable seq reservation (`state.json`'s `reserved_seq`).
    reserved: u64,
}

impl std::fmt::Debug for DiskQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskQueue")
            .field("dir", &self.dir)
            .field("producer_id", &self.producer_id)
            .field("acked", &self.acked)
            .field("last_seq", &self.last_seq)
            .field("segments", &self.segments.len())
            .field("bytes", &self.bytes)
            .field("unacked", &self.unacked)
            .finish_non_exhaustive()
    }
}

impl DiskQueue {
    /// Opens (creating if needed) the queue in `dir`: takes the lock, reads or creates the
    /// producer id, scans and repairs the segments.
    pub fn open(dir: impl AsRef<Path>, opts: QueueOptions) -> Result<(Self, Recovery), QueueError> {
        let dir = dir.as_ref().to_owned();
        private_dir(&dir).map_err(|e| io_err(&dir, e))?;
        let lock = state::lock(&dir)?;
        let (st, state_reset) = match state::read(&dir) {
            Ok(Some(s)) => (s, false),
            Ok(None) => (Self::fresh_state(&dir)?, false),
            Err(reason) => {
                let moved = state::quarantine(&dir)?;
                tracing::warn!(dir = %dir.display(), %reason, moved_to = %moved.display(),
                    "telemetry queue state unreadable; starting a new producer id");
                (Self::fresh_state(&dir)?, true)
            }
        };
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let entry = entry.map_err(|e| io_err(&dir, e))?;
            let name = entry.file_name();
            if let Some(first) = name.to_str().and_then(parse_segment_name) {
                found.push((first, entry.path()));
            }
        }
        found.sort();
        let mut q = DiskQueue {
            dir,
            _lock: lock,
            opts,
            producer_id: st.producer_id.clone(),
            acked: st.acked,
            last_seq: st.acked,
            segments: VecDeque::new(),
            head: None,
            unsynced: Vec::new(),
            dir_dirty: false,
            dirty: false,
            last_sync: Instant::now(),
            bytes: 0,
            unacked: 0,
            cursor: None,
            corrupt: 0,
            lost: 0,
            synced_seq: 0,
            reserved: st.reserved,
        };
        let mut truncated = 0;
        let mut prev_last = 0;
        let nexts: Vec<Option<u64>> = found
            .iter()
            .skip(1)
            .map(|f| Some(f.0))
            .chain([None])
            .collect();
        for ((first_seq, path), next_first) in found.into_iter().zip(nexts) {
            let (seg, cut) = scan_segment(first_seq, path, prev_last)?;
            if let Some(Cut { bytes, records }) = cut {
                q.corrupt += 1;
                truncated += bytes;
                // The lost seqs run from after the last intact frame to just before the next
                // segment's first (its name says), or as many as the cut bytes held.
                let from = seg
                    .last_seq()
                    .map_or(first_seq.max(prev_last + 1), |l| l + 1);
                let to = match next_first {
                    Some(n) => n.saturating_sub(1),
                    None => from.saturating_add(records).saturating_sub(1),
                };
                let from = from.max(q.acked.saturating_add(1));
                q.lost += if to >= from { to - from + 1 } else { 0 };
            }
            let Some(last) = seg.last_seq() else {
                fs::remove_file(&seg.path).map_err(|e| io_err(&seg.path, e))?;
                q.dir_dirty = true;
                continue;
            };
            prev_last = last;
            if last <= q.acked {
                fs::remove_file(&seg.path).map_err(|e| io_err(&seg.path, e))?;
                q.dir_dirty = true;
                continue;
            }
            q.last_seq = q.last_seq.max(last);
            q.unacked += seg.count_between(q.acked, u64::MAX);
            // What was found may still be only in the page cache (a killed process); it is sent
            // from here, so it is made durable first (see `reserve_before_send`).
            File::open(&seg.path)
                .and_then(|f| f.sync_data())
                .map_err(|e| io_err(&seg.path, e))?;
            fault::data_synced(&seg.path, seg.bytes);
            q.bytes += seg.bytes;
            q.segments.push_back(seg);
        }
        if q.dir_dirty {
            state::sync_dir(&q.dir)?;
            q.dir_dirty = false;
        }
        q.synced_seq = q.last_seq;
        // A reservation left by a crash: no new record may take a seq the daemon may have seen.
        q.last_seq = q.last_seq.max(q.reserved);
        let recovery = Recovery {
            producer_id: q.producer_id.clone(),
            records: q.unacked,
            segments: q.segments.len(),
            corrupt_tails: q.corrupt,
            truncated_bytes: truncated,
            lost_records: q.lost,
            state_reset,
        };
        if recovery.corrupt_tails > 0 {
            tracing::warn!(dir = %q.dir.display(), cut = recovery.corrupt_tails,
                bytes = truncated, lost_records = q.lost,
                "telemetry queue: torn or corrupt segment tails cut off");
        }
        Ok((q, recovery))
    }

    fn fresh_state(dir: &Path) -> Result<State, QueueError> {
        let st = State {
            producer_id: uuid::Uuid::new_v4().to_string(),
            acked: 0,
            reserved: 0,
        };
        state::write(dir, &st, true)?;
        Ok(st)
    }

    /// This directory's producer id (a UUID).
    pub fn producer_id(&self) -> &str {
        &self.producer_id
    }

    /// The highest seq appended (or acked): the next record needs a larger one.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The acked watermark.
    pub fn acked_seq(&self) -> u64 {
        self.acked
    }

    /// Unacked records held.
    pub fn unacked_records(&self) -> u64 {
        self.unacked
    }

    /// Bytes of all segment files (including acked records of partly acked segments).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Corrupt frames found so far (at open, and while reading).
    pub fn corrupt_tails(&self) -> u64 {
        self.corrupt
    }

    /// Unacked records lost with them so far (see [`Recovery::lost_records`]).
    pub fn corrupt_lost_records(&self) -> u64 {
        self.lost
    }

    /// The seq of the oldest unacked record, if any.
    pub fn first_unacked_seq(&self) -> Option<u64> {
        self.segments.iter().find_map(|s| {
            s.ranges
                .iter()
                .find(|r| r.1 > self.acked)
                .map(|r| r.0.max(self.acked + 1))
        })
    }

    /// Queues `record` under its `producer_seq`, applying the full policy at the byte bound.
    pub fn append(&mut self, record: &Record) -> Result<AppendOutcome, QueueError> {
        let seq = record.producer().1;
        if seq <= self.last_seq {
            return Err(QueueError::OutOfOrder {
                seq,
                last: self.last_seq,
            });
        }
        let len = frame_len(record) as u64;
        let max = (MAX_FRAME_BYTES as u64).min(self.opts.segment_max_bytes);
        if len > max {
            return Err(QueueError::TooLarge { size: len, max });
        }
        // Write a full buffer first: if the disk fails, the record is refused (and kept by the
        // caller) instead of growing the buffer.
        if self
            .head
            .as_ref()
            .is_some_and(|h| h.buf.len() >= WRITE_BUFFER)
        {
            self.write_buffer()?;
        }
        let mut evicted = 0;
        while self.bytes + len > self.opts.max_bytes {
            match self.opts.full_policy {
                FullPolicy::Block { .. } => {
                    return Err(QueueError::Full {
                        bytes: self.bytes,
                        max: self.opts.max_bytes,
                    })
                }
                FullPolicy::DropNewest => return Ok(AppendOutcome::Refused),
                FullPolicy::DropOldest => match self.evict_oldest()? {
                    Some(n) => evicted += n,
                    None => return Ok(AppendOutcome::Refused),
                },
            }
        }
        let rotate = match (&self.head, self.segments.back()) {
            (Some(_), Some(seg)) => seg.bytes + len > self.opts.segment_max_bytes,
            _ => false,
        };
        if rotate {
            self.close_head()?;
        }
        if self.head.is_none() {
            self.open_head(seq)?;
        }
        let (Some(head), Some(seg)) = (self.head.as_mut(), self.segments.back_mut()) else {
            return Err(io_err(
                &self.dir,
                std::io::Error::other("no head segment after opening one"),
            ));
        };
        frame::encode(seq, record, &mut head.buf);
        seg.push(seq);
        seg.bytes += len;
        self.bytes += len;
        self.unacked += 1;
        self.last_seq = seq;
        self.dirty = true;
        Ok(AppendOutcome::Stored { evicted })
    }

    fn open_head(&mut self, first_seq: u64) -> Result<(), QueueError> {
        let path = self.dir.join(segment_name(first_seq));
        let file = private_file()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        fault::created(&path);
        self.segments.push_back(Segment {
            first_seq,
            path: path.clone(),
            ranges: Vec::new(),
            bytes: 0,
        });
        self.head = Some(Head {
            file,
            path,
            buf: Vec::with_capacity(WRITE_BUFFER),
            written: 0,
        });
        self.dir_dirty = true;
        Ok(())
    }

    fn close_head(&mut self) -> Result<(), QueueError> {
        self.write_buffer()?;
        if let Some(head) = self.head.take() {
            self.unsynced.push((head.file, head.path, head.written));
        }
        if self.unsynced.len() > MAX_UNSYNCED_FILES {
            self.sync_closed()?;
        }
        Ok(())
    }

    fn sync_closed(&mut self) -> Result<(), QueueError> {
        for (f, path, len) in self.unsynced.drain(..) {
            f.sync_data().map_err(|e| io_err(&path, e))?;
            fault::data_synced(&path, len);
        }
        Ok(())
    }

    /// Deletes the oldest segment; returns its unacked records (None: nothing to delete).
    fn evict_oldest(&mut self) -> Result<Option<u64>, QueueError> {
        let Some(seg) = self.segments.pop_front() else {
            return Ok(None);
        };
        if self.segments.is_empty() {
            // It was the head: its buffered frames go with it.
            self.head = None;
        }
        self.remove_segment(&seg)?;
        let lost = seg.count_between(self.acked, u64::MAX);
        self.unacked -= lost;
        Ok(Some(lost))
    }

    fn remove_segment(&mut self, seg: &Segment) -> Result<(), QueueError> {
        if self
            .cursor
            .as_ref()
            .is_some_and(|c| c.segment_first == seg.first_seq)
        {
            self.cursor = None;
        }
        fault::removed(&seg.path);
        fs::remove_file(&seg.path).map_err(|e| io_err(&seg.path, e))?;
        self.bytes -= seg.bytes;
        self.dir_dirty = true;
        Ok(())
    }

    /// Writes the buffer to the head file. On failure the file is cut back to its last good
    /// length and the buffer kept, so a retry cannot leave a torn frame behind.
    fn write_buffer(&mut self) -> Result<(), QueueError> {
        if let Some(head) = self.head.as_mut() {
            if !head.buf.is_empty() {
                if let Err(e) = head.file.write_all(&head.buf) {
                    let _ = head.file.set_len(head.written);
                    let _ = head.file.seek(SeekFrom::Start(head.written));
                    return Err(io_err(&self.dir, e));
                }
                head.written += head.buf.len() as u64;
                head.buf.clear();
            }
        }
        Ok(())
    }

    /// Hands everything appended to the kernel (survives a process crash from here on).
    pub fn flush(&mut self) -> Result<(), QueueError> {
        self.write_buffer()
    }

    /// Flushes and forces everything appended to stable storage.
    pub fn sync(&mut self) -> Result<(), QueueError> {
        self.write_buffer()?;
        if let Some(head) = &self.head {
            head.file.sync_data().map_err(|e| io_err(&head.path, e))?;
            fault::data_synced(&head.path, head.written);
        }
        self.sync_closed()?;
        if self.dir_dirty {
            state::sync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        self.synced_seq = self.last_seq;
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Called after each batch of appends: flushes, and syncs as the fsync policy says.
    pub fn after_batch(&mut self) -> Result<(), QueueError> {
        self.write_buffer()?;
        match self.opts.fsync {
            FsyncPolicy::EveryBatch => self.sync(),
            FsyncPolicy::Interval(d) if self.dirty && self.last_sync.elapsed() >= d => self.sync(),
            _ => Ok(()),
        }
    }

    /// When an interval sync falls due (for the sender's timer), if one is pending.
    pub fn sync_due(&self) -> Option<Instant> {
        match self.opts.fsync {
            FsyncPolicy::Interval(d) if self.dirty => Some(self.last_sync + d),
            _ => None,
        }
    }

    /// Records the daemon's durable watermark: returns how many queued records it newly covers
    /// and deletes the segments it fully covers.
    pub fn ack(&mut self, watermark: u64) -> Result<u64, QueueError> {
        if watermark <= self.acked {
            return Ok(0);
        }
        let newly: u64 = self
            .segments
            .iter()
            .map(|s| s.count_between(self.acked, watermark))
            .sum();
        self.acked = watermark;
        self.unacked -= newly;
        let done = self
            .segments
            .iter()
            .take_while(|s| s.last_seq().is_none_or(|l| l <= watermark))
            .count();
        let st = State {
            producer_id: self.producer_id.clone(),
            acked: watermark,
            reserved: self.reserved,
        };
        // The state must be durable before the segments that it justifies deleting are gone.
        state::write(&self.dir, &st, done > 0)?;
        for _ in 0..done {
            if let Some(seg) = self.segments.pop_front() {
                if self.segments.is_empty() {
                    self.head = None;
                }
                self.remove_segment(&seg)?;
            }
        }
        Ok(newly)
    }

    /// Up to `max_records` / about `max_bytes` of queued, unacked records with seq > `after`, in
    /// order. Reading continues where the previous call stopped when `after` is where it ended.
    pub fn read_after(
        &mut self,
        after: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, QueueError> {
        self.write_buffer()?;
        let after = after.max(self.acked);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let positioned = self.cursor.as_ref().is_some_and(|c| {
            c.last_seq == after && self.segments.iter().any(|s| s.first_seq == c.segment_first)
        });
        if !positioned {
            self.cursor = None;
            let Some(first) = self
                .segments
                .iter()
                .find(|s| s.last_seq().is_some_and(|l| l > after))
                .map(|s| s.first_seq)
            else {
                return Ok(out);
            };
            self.cursor = Some(self.open_cursor(first, after)?);
        }
        while out.len() < max_records && bytes < max_bytes {
            let Some(c) = self.cursor.as_mut() else { break };
            let read = frame::read(&mut c.reader, u64::MAX).map_err(|e| io_err(&self.dir, e))?;
            match read {
                FrameRead::Frame { seq, record, len } => {
                    if seq <= after {
                        continue;
                    }
                    c.last_seq = seq;
                    match frame::decode(&record) {
                        Some(r) => {
                            bytes += len as usize;
                            out.push(r);
                        }
                        None => {
                            self.corrupt += 1;
                            self.lost += 1;
                            tracing::warn!(seq, "telemetry queue: undecodable record skipped");
                        }
                    }
                }
                FrameRead::End | FrameRead::Corrupt(_) => {
                    if let FrameRead::Corrupt(reason) = read {
                        self.corrupt += 1;
                        tracing::warn!(
                            reason,
                            "telemetry queue: corrupt frame while reading; \
                            the rest of its segment is skipped"
                        );
                    }
                    let seg_first = c.segment_first;
                    let last = c.last_seq;
                    let next = self
                        .segments
                        .iter()
                        .map(|s| s.first_seq)
                        .find(|&f| f > seg_first);
                    if let (FrameRead::Corrupt(_), Some(f)) = (&read, next) {
                        // The rest of this segment is skipped: the seqs up to the next one.
                        self.lost += f.saturating_sub(last.max(self.acked) + 1);
                    }
                    match next {
                        Some(f) => self.cursor = Some(self.open_cursor(f, last)?),
                        None => {
                            if matches!(read, FrameRead::Corrupt(_)) {
                                self.cursor = None;
                            }
                            break;
                        }
                    }
                }
            }
        }
        if let Some(last) = out.last().map(|r| r.producer().1) {
            self.reserve_before_send(last)?;
        }
        Ok(out)
    }

    /// Records read here are about to be sent. One not yet synced may reach the daemon and
    /// then vanish in a machine crash; a reopened queue would then number new records with
    /// seqs the daemon already holds, and it would drop them as duplicates (silent loss). So
    /// before such a record leaves, `state.json` durably reserves seqs past it, and a reopen
    /// continues after the reservation. With `EveryBatch` records are synced before they are
    /// read for sending and this never writes; otherwise one synced state write per
    /// [`RESERVE_AHEAD`] records. A clean close gives the reservation back.
    fn reserve_before_send(&mut self, last: u64) -> Result<(), QueueError> {
        if last <= self.synced_seq || last <= self.reserved {
            return Ok(());
        }
        let reserved = last.saturating_add(RESERVE_AHEAD);
        let st = State {
            producer_id: self.producer_id.clone(),
            acked: self.acked,
            reserved,
        };
        state::write(&self.dir, &st, true)?;
        self.reserved = reserved;
        Ok(())
    }

    fn open_cursor(&self, segment_first: u64, after: u64) -> Result<Cursor, QueueError> {
        let path = self.dir.join(segment_name(segment_first));
        let file = File::open(&path).map_err(|e| io_err(&path, e))?;
        Ok(Cursor {
            segment_first,
            reader: BufReader::with_capacity(64 * 1024, file),
            last_seq: after,
        })
    }

    /// Writes, syncs and records the state: the clean way to stop (and release the lock).
    pub fn close(mut self) -> Result<(), QueueError> {
        self.sync()?;
        // Everything sent is now on disk or acked: no reservation is needed past it.
        let st = State {
            producer_id: self.producer_id.clone(),
            acked: self.acked,
            reserved: self.last_seq.min(self.reserved),
        };
        state::write(&self.dir, &st, true)
    }
}

/// Creates a queue directory (and parents) with mode 0700 where new: telemetry is the user's.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Options creating queue files with mode 0600 where new.
pub(crate) fn private_file() -> OpenOptions {
    #[allow(unused_mut)]
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o
}

#[cfg(test)]
mod tests;
