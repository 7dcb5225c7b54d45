//! What the hub knows about one run: its recent past, its seq chains and who is listening.
//!
//! Seqs are global per stream (other runs interleave), so "did this subscriber miss a record
//! of its run?" cannot be answered from the seqs alone. Each run therefore keeps, per stream,
//! the seq of the last record published for it; every published record is stamped with that
//! predecessor (`prev`) before it is fanned out, forming a per-run chain the subscribers check.

use std::sync::Arc;

use telemetry_core::pb::{Record, RunCompleted};
use tokio::time::Instant;

use crate::{
    options::StreamKind,
    queue::{Accepted, SubShared},
    ring::{RingEntry, Rings},
};

/// A published record that passed the hub's checks.
pub(crate) struct Checked {
    pub record: Arc<Record>,
    pub stream: StreamKind,
    pub seq: u64,
    /// Its [`record_footprint`](crate::record_footprint).
    pub bytes: usize,
}

/// Per-run state, behind the run's mutex in the hub's run map.
pub(crate) struct RunState {
    pub run_id: Arc<str>,
    /// Last published seq per stream (0: none since the hub started tracking the run).
    pub last: [u64; StreamKind::COUNT],
    pub rings: Rings,
    pub subs: [Vec<Arc<SubShared>>; StreamKind::COUNT],
    pub completed: Option<Arc<RunCompleted>>,
    pub published: [u64; StreamKind::COUNT],
    pub dropped: [u64; StreamKind::COUNT],
    pub rejected_out_of_order: u64,
    pub last_activity: Instant,
    /// (time, published total) at the previous metrics snapshot.
    pub rate_mark: (Instant, u64),
}

impl RunState {
    pub fn new(run_id: Arc<str>, now: Instant) -> Self {
        RunState {
            run_id,
            last: [0; StreamKind::COUNT],
            rings: Rings::default(),
            subs: Default::default(),
            completed: None,
            published: [0; StreamKind::COUNT],
            dropped: [0; StreamKind::COUNT],
            rejected_out_of_order: 0,
            last_activity: now,
            rate_mark: (now, 0),
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.subs.iter().map(Vec::len).sum()
    }

    pub fn published_total(&self) -> u64 {
        self.published.iter().sum()
    }

    pub fn seen_any(&self) -> bool {
        self.last.iter().any(|&s| s != 0)
    }

    /// Records a published record in the run's chain and ring. Returns its predecessor and
    /// how many ring entries were evicted, or `None` when the record is not newer than the
    /// run's last record of its stream (a duplicate or out-of-order publish).
    pub fn accept(
        &mut self,
        r: &Checked,
        now: Instant,
        ring_limits: (usize, usize),
        count_rejects: bool,
    ) -> Option<(u64, u64)> {
        let (stream, seq) = (r.stream, r.seq);
        let i = stream.index();
        let prev = self.last[i];
        if prev != 0 && seq <= prev {
            if count_rejects {
                self.rejected_out_of_order += 1;
            }
            return None;
        }
        self.last[i] = seq;
        self.published[i] += 1;
        self.last_activity = now;
        let evicted = self.rings.push(
            stream,
            RingEntry {
                record: Arc::clone(&r.record),
                seq,
                prev,
                bytes: r.bytes,
            },
            ring_limits.0,
            ring_limits.1,
        );
        Some((prev, evicted))
    }

    /// Offers accepted records, in order, to the run's subscribers of their streams (one lock
    /// and at most one wake-up per subscriber). Returns the drops by stream.
    pub fn fan_out(&mut self, pending: &[Accepted], now: Instant) -> [u64; StreamKind::COUNT] {
        let mut dropped = [0u64; StreamKind::COUNT];
        for stream in StreamKind::ALL {
            let i = stream.index();
            if self.subs[i].is_empty() || !pending.iter().any(|a| a.stream == stream) {
                continue;
            }
            for sub in &self.subs[i] {
                let d = sub.offer_many(pending.iter().filter(|a| a.stream == stream), now);
                for (total, d) in dropped.iter_mut().zip(d) {
                    *total += d;
                }
            }
        }
        for (total, d) in self.dropped.iter_mut().zip(dropped) {
            *total += d;
        }
        dropped
    }

    /// The run completed: every subscriber gets what it has queued, then `Completed`; none
    /// of them takes further records, so they leave the run's lists.
    pub fn complete(&mut self, rc: &RunCompleted) {
        if self.completed.is_some() {
            return;
        }
        let rc = Arc::new(rc.clone());
        for subs in &mut self.subs {
            for sub in subs.drain(..) {
                sub.set_terminal(&rc);
            }
        }
        self.completed = Some(rc);
    }
}
