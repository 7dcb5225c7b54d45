//! Where the sender keeps records until they are acked: the [`DiskQueue`] when a queue
//! directory is configured, else a bounded in-memory queue with the same full policies.
//!
//! The sender does not care which: it appends, reads after the last seq it sent, and acks.
//! Memory mode exists for workers with no writable disk and for short runs; its records die
//! with the process (the flush report says so).
//!
//! Records leave the backlog encoded ([`Outgoing`]), stamped with the sender's producer id:
//! memory mode encodes each record once, when it is queued, so a send (and every resend) costs
//! no clone and no second encoding; disk mode decodes what it reads back, stamps and encodes it.

use crate::{
    disk_queue::{AppendOutcome, DiskQueue, QueueError},
    inbox::Pending,
    FullPolicy,
};
use prost::bytes::Bytes;
use std::{collections::VecDeque, time::Instant};
use telemetry_core::pb::Record;

/// A record on its way out: its producer seq and its encoding (a `Record` message).
pub(crate) type Outgoing = (u64, Bytes);

/// Bounded in-memory queue of unacked records (encoded), oldest first.
pub(crate) struct MemQueue {
    items: VecDeque<(u64, Bytes, usize)>,
    bytes: u64,
    max_bytes: u64,
    policy: FullPolicy,
    last_seq: u64,
}

impl MemQueue {
    pub fn new(max_bytes: u64, policy: FullPolicy) -> Self {
        MemQueue {
            items: VecDeque::new(),
            bytes: 0,
            max_bytes,
            policy,
            last_seq: 0,
        }
    }

    /// Queues the record, stamped with `producer_id` and encoded; `record` is left as it was
    /// (the caller drops it) whatever the outcome.
    fn append(
        &mut self,
        record: &mut Record,
        size: usize,
        producer_id: &str,
    ) -> Result<AppendOutcome, QueueError> {
        let seq = record.producer().1;
        if seq <= self.last_seq {
            let last = self.last_seq;
            return Err(QueueError::OutOfOrder { seq, last });
        }
        let size64 = size as u64;
        let mut evicted = 0;
        while self.bytes + size64 > self.max_bytes {
            match self.policy {
                FullPolicy::Block { .. } => {
                    return Err(QueueError::Full {
                        bytes: self.bytes,
                        max: self.max_bytes,
                    })
                }
                FullPolicy::DropNewest => return Ok(AppendOutcome::Refused),
                FullPolicy::DropOldest => match self.items.pop_front() {
                    Some((_, _, s)) => {
                        self.bytes -= s as u64;
                        evicted += 1;
                    }
                    None => return Ok(AppendOutcome::Refused),
                },
            }
        }
        record.set_producer(producer_id, seq);
        self.items
            .push_back((seq, crate::wire::encode(record), size));
        self.bytes += size64;
        self.last_seq = seq;
        Ok(AppendOutcome::Stored { evicted })
    }

    fn read_after(&self, after: u64, max_records: usize, max_bytes: usize) -> Vec<Outgoing> {
        let start = self.items.partition_point(|(s, _, _)| *s <= after);
        let mut bytes = 0;
        let mut out = Vec::new();
        for (s, r, size) in self.items.range(start..) {
            if out.len() >= max_records || bytes >= max_bytes {
                break;
            }
            bytes += size;
            out.push((*s, r.clone()));
        }
        out
    }

    fn ack(&mut self, watermark: u64) -> u64 {
        let mut n = 0;
        while self.items.front().is_some_and(|(s, _, _)| *s <= watermark) {
            if let Some((_, _, size)) = self.items.pop_front() {
                self.bytes -= size as u64;
                n += 1;
            }
        }
        n
    }
}

/// The sender's store of unacked records.
pub(crate) enum Backlog {
    Memory(MemQueue),
    Disk(Box<DiskQueue>),
}

impl Backlog {
    pub fn is_durable(&self) -> bool {
        matches!(self, Backlog::Disk(_))
    }

    /// Queues a record of `producer_id`; on error `p` still holds it and the caller may retry.
    pub fn append(
        &mut self,
        p: &mut Pending,
        producer_id: &str,
    ) -> Result<AppendOutcome, QueueError> {
        match self {
            Backlog::Memory(m) => m.append(&mut p.record, p.size, producer_id),
            Backlog::Disk(d) => d.append(&p.record),
        }
    }

    /// Up to `max_records` records (about `max_bytes`) after seq `after`, oldest first,
    /// stamped with `producer_id` and encoded.
    pub fn read_after(
        &mut self,
        after: u64,
        max_records: usize,
        max_bytes: usize,
        producer_id: &str,
    ) -> Result<Vec<Outgoing>, QueueError> {
        match self {
            Backlog::Memory(m) => Ok(m.read_after(after, max_records, max_bytes)),
            Backlog::Disk(d) => Ok(d
                .read_after(after, max_records, max_bytes)?
                .into_iter()
                .map(|mut r| {
                    let seq = r.producer().1;
                    r.set_producer(producer_id, seq);
                    (seq, crate::wire::encode(&r))
                })
                .collect()),
        }
    }

    pub fn ack(&mut self, watermark: u64) -> Result<u64, QueueError> {
        match self {
            Backlog::Memory(m) => Ok(m.ack(watermark)),
            Backlog::Disk(d) => d.ack(watermark),
        }
    }

    pub fn first_unacked_seq(&self) -> Option<u64> {
        match self {
            Backlog::Memory(m) => m.items.front().map(|i| i.0),
            Backlog::Disk(d) => d.first_unacked_seq(),
        }
    }

    pub fn after_batch(&mut self) -> Result<(), QueueError> {
        match self {
            Backlog::Memory(_) => Ok(()),
            Backlog::Disk(d) => d.after_batch(),
        }
    }

    pub fn sync(&mut self) -> Result<(), QueueError> {
        match self {
            Backlog::Memory(_) => Ok(()),
            Backlog::Disk(d) => d.sync(),
        }
    }

    pub fn sync_due(&self) -> Option<Instant> {
        match self {
            Backlog::Memory(_) => None,
            Backlog::Disk(d) => d.sync_due(),
        }
    }

    pub fn unacked(&self) -> u64 {
        match self {
            Backlog::Memory(m) => m.items.len() as u64,
            Backlog::Disk(d) => d.unacked_records(),
        }
    }

    pub fn bytes(&self) -> u64 {
        match self {
            Backlog::Memory(m) => m.bytes,
            Backlog::Disk(d) => d.bytes(),
        }
    }

    pub fn corrupt(&self) -> u64 {
        match self {
            Backlog::Memory(_) => 0,
            Backlog::Disk(d) => d.corrupt_tails(),
        }
    }

    pub fn corrupt_lost(&self) -> u64 {
        match self {
            Backlog::Memory(_) => 0,
            Backlog::Disk(d) => d.corrupt_lost_records(),
        }
    }

    /// Clean stop: flush and sync (disk); nothing to do in memory.
    pub fn close(self) -> Result<(), QueueError> {
        match self {
            Backlog::Memory(_) => Ok(()),
            Backlog::Disk(d) => d.close(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry_core::pb::RunStep;

    fn rec(seq: u64) -> Record {
        let mut r: Record = RunStep::default().into();
        r.set_producer("", seq);
        r
    }

    #[test]
    fn memory_queue_policies_and_counts() {
        let mut m = MemQueue::new(30, FullPolicy::DropOldest);
        for s in 1..=3 {
            assert_eq!(
                m.append(&mut rec(s), 10, "p").expect("ok"),
                AppendOutcome::Stored { evicted: 0 }
            );
        }
        assert_eq!(
            m.append(&mut rec(4), 10, "p").expect("ok"),
            AppendOutcome::Stored { evicted: 1 }
        );
        let out = m.read_after(0, 10, 1000);
        let seqs: Vec<u64> = out.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        for (seq, bytes) in &out {
            let r = <Record as prost::Message>::decode(bytes.as_ref()).expect("decodes");
            assert_eq!(
                r.producer(),
                ("p", *seq),
                "stamped with the producer, encoded once"
            );
        }
        assert_eq!(m.read_after(2, 1, 1000).len(), 1);
        assert_eq!(m.ack(3), 2);
        assert_eq!(m.bytes, 10);

        let mut n = MemQueue::new(20, FullPolicy::DropNewest);
        n.append(&mut rec(1), 10, "p").expect("ok");
        n.append(&mut rec(2), 10, "p").expect("ok");
        assert_eq!(
            n.append(&mut rec(3), 10, "p").expect("ok"),
            AppendOutcome::Refused
        );
        let mut b = MemQueue::new(
            10,
            FullPolicy::Block {
                timeout: std::time::Duration::ZERO,
            },
        );
        b.append(&mut rec(1), 10, "p").expect("ok");
        let mut kept = rec(2);
        assert!(matches!(
            b.append(&mut kept, 10, "p"),
            Err(QueueError::Full { .. })
        ));
        assert_eq!(
            kept.producer().1,
            2,
            "a refused record stays with the caller"
        );
        assert!(matches!(
            b.append(&mut rec(1), 1, "p"),
            Err(QueueError::OutOfOrder { .. })
        ));
    }
}
