//! The recent past of one run, for late joiners.
//!
//! A viewer that opens a run a little late (or reconnects) asks for `since_seq`; when the run's
//! ring still reaches back that far, the hub serves it from memory instead of the store. The
//! ring is bounded in records and bytes per run, across its four streams: when over budget it
//! evicts the oldest step first, then the oldest episode, then the oldest lifecycle event, then
//! the oldest scalar (steps are plentiful and easy to re-read; curves are what a late joiner of a
//! training run opens first). Evicting is
//! always safe: everything in the ring is also in the store.

use std::{collections::VecDeque, sync::Arc};

use telemetry_core::pb::Record;

use crate::options::StreamKind;

/// The bytes a record is charged against `HubConfig::ring_bytes`: its protobuf encoded
/// length plus the in-memory size of the record struct, an estimate of the memory it holds.
pub fn record_footprint(record: &Record) -> usize {
    prost::Message::encoded_len(record) + std::mem::size_of::<Record>()
}

/// One published record as the ring keeps it.
#[derive(Debug, Clone)]
pub(crate) struct RingEntry {
    pub record: Arc<Record>,
    pub seq: u64,
    /// The seq of the run's previous record in this stream (0: unknown).
    pub prev: u64,
    pub bytes: usize,
}

/// The per-stream rings of one run, sharing one budget.
#[derive(Debug, Default)]
pub(crate) struct Rings {
    streams: [VecDeque<RingEntry>; StreamKind::COUNT],
    records: usize,
    bytes: usize,
    pub evicted_total: u64,
}

impl Rings {
    /// Appends and evicts down to the limits. Returns how many entries were evicted.
    pub fn push(
        &mut self,
        stream: StreamKind,
        entry: RingEntry,
        max_records: usize,
        max_bytes: usize,
    ) -> u64 {
        self.records += 1;
        self.bytes += entry.bytes;
        self.streams[stream.index()].push_back(entry);
        let mut evicted = 0;
        while self.records > max_records || self.bytes > max_bytes {
            let Some(ring) = self.streams.iter_mut().find(|r| !r.is_empty()) else {
                break;
            };
            if let Some(old) = ring.pop_front() {
                self.records -= 1;
                self.bytes -= old.bytes;
                evicted += 1;
            }
        }
        self.evicted_total += evicted;
        evicted
    }

    /// Records held (all streams).
    pub fn len(&self) -> usize {
        self.records
    }

    /// Bytes held (all streams).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether every record of `stream` with `seq > cursor` that the hub has seen is in the
    /// ring. `last` is the run's last published seq in that stream (0: none seen).
    pub fn covers(&self, stream: StreamKind, cursor: u64, last: u64) -> bool {
        match self.streams[stream.index()].front() {
            Some(e) => e.seq <= cursor || (e.prev != 0 && e.prev <= cursor),
            None => last != 0 && last <= cursor,
        }
    }

    /// Calls `f` for up to `limit` entries of `stream` with `seq > cursor`, in order. Returns
    /// true when it reached the end of the ring.
    pub fn read(
        &self,
        stream: StreamKind,
        cursor: u64,
        limit: usize,
        mut f: impl FnMut(&RingEntry),
    ) -> bool {
        let ring = &self.streams[stream.index()];
        let start = ring.partition_point(|e| e.seq <= cursor);
        let end = ring.len().min(start.saturating_add(limit));
        for e in ring.range(start..end) {
            f(e);
        }
        end == ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry_core::pb::RunStep;

    fn entry(seq: u64, prev: u64, bytes: usize) -> RingEntry {
        RingEntry {
            record: Arc::new(Record::from(RunStep::default())),
            seq,
            prev,
            bytes,
        }
    }

    #[test]
    fn evicts_steps_before_episodes_and_counts() {
        let mut r = Rings::default();
        r.push(StreamKind::Episodes, entry(1, 0, 10), 3, 1000);
        r.push(StreamKind::Steps, entry(1, 0, 10), 3, 1000);
        r.push(StreamKind::Steps, entry(2, 1, 10), 3, 1000);
        assert_eq!(r.push(StreamKind::Steps, entry(3, 2, 10), 3, 1000), 1);
        assert_eq!(r.len(), 3);
        // The episode survived; the oldest step went.
        assert!(!r.covers(StreamKind::Steps, 0, 3));
        assert!(r.covers(StreamKind::Steps, 1, 3));
        assert_eq!(r.streams[StreamKind::Episodes.index()].len(), 1);
        assert_eq!(r.evicted_total, 1);
    }

    #[test]
    fn byte_budget_holds_even_for_one_huge_record() {
        let mut r = Rings::default();
        r.push(StreamKind::Steps, entry(1, 0, 40), 100, 100);
        r.push(StreamKind::Steps, entry(2, 1, 40), 100, 100);
        assert_eq!(r.push(StreamKind::Steps, entry(3, 2, 40), 100, 100), 1);
        assert!(r.bytes() <= 100);
        assert_eq!(r.push(StreamKind::Steps, entry(4, 3, 500), 100, 100), 3);
        assert_eq!((r.len(), r.bytes()), (0, 0));
        // Empty ring, last seen 4: covers any cursor at or past 4 only.
        assert!(r.covers(StreamKind::Steps, 4, 4));
        assert!(!r.covers(StreamKind::Steps, 3, 4));
    }

    #[test]
    fn read_pages_from_cursor() {
        let mut r = Rings::default();
        for s in [3u64, 5, 9, 12] {
            r.push(StreamKind::Steps, entry(s, 0, 1), 100, 100);
        }
        let mut seen = vec![];
        assert!(!r.read(StreamKind::Steps, 3, 2, |e| seen.push(e.seq)));
        assert_eq!(seen, [5, 9]);
        seen.clear();
        assert!(r.read(StreamKind::Steps, 9, 2, |e| seen.push(e.seq)));
        assert_eq!(seen, [12]);
    }
}
