//! The hand-over between the worker's threads and the sender thread.
//!
//! A call pays for one uncontended mutex, a push and (once per batch) a wake-up; it never waits
//! for the disk or the network. The seq is assigned *inside* the lock, so the order of seqs is
//! the order of the queue even when several worker threads call at once (the daemon would
//! otherwise take a late, lower seq for a duplicate). The inbox is bounded in records and bytes
//! by the sender's progress: records taken by the sender still count until they are in the
//! queue, so a stalled queue (full under `Block`) pushes back on callers here.

use crate::{ratelimit::RateLimited, stats::Counters, FullPolicy, ShimError};
use std::{
    collections::VecDeque,
    sync::{atomic::Ordering::Relaxed, Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};
use telemetry_core::{pb::Record, Watermark, MAX_SEQ_JUMP};
use tokio::sync::Notify;

/// A record waiting for the sender, with its encoded size.
pub(crate) struct Pending {
    pub record: Record,
    pub size: usize,
}

struct State {
    queue: VecDeque<Pending>,
    /// Records (and bytes) in `queue` plus those taken but not yet released by the sender.
    records: usize,
    bytes: usize,
    queue_bytes: usize,
    next_seq: u64,
    closed: bool,
    /// A daemon watermark too far ahead was refused and logged (logged once per inbox).
    floor_refusal_logged: bool,
    /// Callers blocked waiting for room.
    waiting: usize,
}

/// Bounds and batching thresholds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub batch_records: usize,
    pub batch_bytes: usize,
}

/// What [`Inbox::raise_floor`] did with a daemon's watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Floor {
    /// The watermark is below our counter: nothing to do.
    Unchanged,
    /// Our counter skipped past the watermark.
    Raised,
    /// Too far ahead (more than `MAX_SEQ_JUMP`, or `u64::MAX`): not adopted, counted.
    Refused,
}

pub(crate) struct Inbox {
    state: Mutex<State>,
    not_full: Condvar,
    /// Wakes the sender: first record after a drain, or a batch's worth waiting.
    pub wake: Notify,
    limits: Limits,
    policy: FullPolicy,
    counters: Arc<Counters>,
    drop_log: RateLimited,
}

impl Inbox {
    pub fn new(limits: Limits, policy: FullPolicy, next_seq: u64, counters: Arc<Counters>) -> Self {
        Inbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                records: 0,
                bytes: 0,
                queue_bytes: 0,
                next_seq,
                closed: false,
                floor_refusal_logged: false,
                waiting: 0,
            }),
            not_full: Condvar::new(),
            wake: Notify::new(),
            limits,
            policy,
            counters,
            drop_log: RateLimited::new(Duration::from_secs(10)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the state consistent (plain counters).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn has_room(&self, st: &State, size: usize) -> bool {
        st.records < self.limits.max_records
            && (st.records == 0 || st.bytes + size <= self.limits.max_bytes)
    }

    fn dropped(&self, n: u64) {
        Counters::add(&self.counters.dropped, n);
        if let Some(held) = self.drop_log.allow() {
            tracing::warn!(policy = ?self.policy, dropped_total = self.counters.dropped.load(Relaxed),
                since_last_log = held + n, "telemetry buffer full: records dropped");
        }
    }

    /// Stamps `record` with the next seq and queues it; returns the seq.
    pub fn push(&self, mut record: Record, size: usize) -> Result<u64, ShimError> {
        let mut st = self.lock();
        let mut deadline = None;
        while !self.has_room(&st, size) {
            if st.closed {
                return Err(ShimError::Closed);
            }
            match self.policy {
                FullPolicy::DropNewest => {
                    drop(st);
                    self.dropped(1);
                    return Err(ShimError::QueueFull {
                        policy: self.policy,
                    });
                }
                FullPolicy::DropOldest => match st.queue.pop_front() {
                    Some(old) => {
                        st.records -= 1;
                        st.bytes -= old.size;
                        st.queue_bytes -= old.size;
                        self.dropped(1);
                    }
                    None => {
                        // Everything is with the sender already: nothing older to drop here.
                        drop(st);
                        self.dropped(1);
                        return Err(ShimError::QueueFull {
                            policy: self.policy,
                        });
                    }
                },
                FullPolicy::Block { timeout } => {
                    let until = *deadline.get_or_insert_with(|| Instant::now() + timeout);
                    let now = Instant::now();
                    if now >= until {
                        drop(st);
                        self.dropped(1);
                        return Err(ShimError::QueueFull {
                            policy: self.policy,
                        });
                    }
                    st.waiting += 1;
                    st = self
                        .not_full
                        .wait_timeout(st, until - now)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                    st.waiting -= 1;
                }
            }
        }
        if st.closed {
            return Err(ShimError::Closed);
        }
        let seq = st.next_seq;
        let Some(next) = seq.checked_add(1) else {
            drop(st);
            self.dropped(1);
            return Err(ShimError::SeqExhausted);
        };
        st.next_seq = next;
        record.set_producer("", seq);
        st.queue.push_back(Pending { record, size });
        st.records += 1;
        st.bytes += size;
        st.queue_bytes += size;
        let wake = st.queue.len() == 1
            || st.queue.len() == self.limits.batch_records
            || (st.queue_bytes >= self.limits.batch_bytes
                && st.queue_bytes - size < self.limits.batch_bytes);
        drop(st);
        Counters::add(&self.counters.accepted, 1);
        if wake {
            self.wake.notify_one();
        }
        Ok(seq)
    }

    /// Takes everything queued; the records still count against the bounds until
    /// [`release`](Self::release)d.
    pub fn take(&self) -> VecDeque<Pending> {
        let mut st = self.lock();
        st.queue_bytes = 0;
        // Leave a queue with room for a batch, so the worker's next calls do not regrow it
        // (the allocation happens here, on the sender's thread, not in the training loop).
        let room = st.queue.len().max(self.limits.batch_records);
        std::mem::replace(&mut st.queue, VecDeque::with_capacity(room))
    }

    /// Whether a batch's worth is waiting (the sender should not linger).
    pub fn batch_ready(&self) -> bool {
        let st = self.lock();
        st.queue.len() >= self.limits.batch_records || st.queue_bytes >= self.limits.batch_bytes
    }

    /// Whether anything is waiting to be taken.
    pub fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// The sender is done with `records` taken records of `bytes` bytes.
    pub fn release(&self, records: usize, bytes: usize) {
        if records == 0 {
            return;
        }
        let mut st = self.lock();
        st.records -= records.min(st.records);
        st.bytes -= bytes.min(st.bytes);
        let buffered = st.records;
        drop(st);
        self.counters
            .buffered_records
            .store(buffered as u64, Relaxed);
        self.not_full.notify_all();
    }

    /// Records accepted and not yet in the queue.
    pub fn buffered(&self) -> usize {
        self.lock().records
    }

    /// The last seq handed out.
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq.saturating_sub(1)
    }

    /// The daemon knows seqs up to `watermark` (our state was lost): never hand them out again.
    /// A watermark more than [`MAX_SEQ_JUMP`] ahead of our own counter (or at `u64::MAX`) is
    /// not adopted: it would exhaust or overflow the counter, and an honest daemon never
    /// reports one (it refuses such seqs). It is counted and logged once; the counter is kept.
    pub fn raise_floor(&self, watermark: u64) -> Floor {
        let mut st = self.lock();
        if watermark < st.next_seq {
            return Floor::Unchanged;
        }
        let ours = Watermark::at(st.next_seq.saturating_sub(1));
        match watermark.checked_add(1) {
            Some(next) if ours.within_jump(watermark) => {
                st.next_seq = next;
                Floor::Raised
            }
            _ => {
                let first = !st.floor_refusal_logged;
                st.floor_refusal_logged = true;
                let next_seq = st.next_seq;
                drop(st);
                Counters::add(&self.counters.refused_watermarks, 1);
                if first {
                    tracing::error!(watermark, next_seq, max_jump = MAX_SEQ_JUMP,
                        "the daemon reported a watermark too far ahead of this shim's seqs; not adopted");
                }
                Floor::Refused
            }
        }
    }

    /// Refuses every further push (and wakes blocked callers, who get `Closed`).
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_full.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry_core::pb::RunStep;

    fn inbox(max_records: usize, policy: FullPolicy) -> (Arc<Inbox>, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let limits = Limits {
            max_records,
            max_bytes: 1 << 20,
            batch_records: 100,
            batch_bytes: 1 << 20,
        };
        (
            Arc::new(Inbox::new(limits, policy, 1, Arc::clone(&counters))),
            counters,
        )
    }

    fn rec() -> Record {
        RunStep::default().into()
    }

    fn seqs(q: &VecDeque<Pending>) -> Vec<u64> {
        q.iter().map(|p| p.record.producer().1).collect()
    }

    #[test]
    fn block_waits_for_the_sender_to_make_room() {
        let (inbox, counters) = inbox(
            2,
            FullPolicy::Block {
                timeout: Duration::from_secs(30),
            },
        );
        assert_eq!(inbox.push(rec(), 10).expect("room"), 1);
        assert_eq!(inbox.push(rec(), 10).expect("room"), 2);
        let pusher = {
            let inbox = Arc::clone(&inbox);
            std::thread::spawn(move || inbox.push(rec(), 10))
        };
        // Explicit control: wait (bounded) until the caller is parked, then act as the sender.
        let mut spins = 0u64;
        while inbox.lock().waiting == 0 {
            spins += 1;
            assert!(spins < 50_000_000, "the caller never blocked");
            std::thread::yield_now();
        }
        assert_eq!(
            inbox.buffered(),
            2,
            "a blocked caller has not been accepted"
        );
        let taken = inbox.take();
        assert_eq!(seqs(&taken), vec![1, 2]);
        // Taken is not released: still full, the caller still waits.
        assert_eq!(inbox.lock().waiting, 1);
        inbox.release(2, 20);
        assert_eq!(pusher.join().expect("thread").expect("accepted"), 3);
        assert_eq!(counters.dropped.load(Relaxed), 0);
        assert_eq!(counters.accepted.load(Relaxed), 3);
    }

    #[test]
    fn block_gives_up_after_its_timeout_and_counts_the_drop() {
        let timeout = Duration::from_millis(50);
        let (inbox, counters) = inbox(1, FullPolicy::Block { timeout });
        inbox.push(rec(), 10).expect("room");
        let start = Instant::now();
        let err = inbox.push(rec(), 10).expect_err("full");
        assert!(start.elapsed() >= timeout, "waited {:?}", start.elapsed());
        assert!(matches!(err, ShimError::QueueFull { .. }));
        assert_eq!(counters.dropped.load(Relaxed), 1);
        assert_eq!(inbox.last_seq(), 1, "a dropped record takes no seq");
        inbox.close();
        assert!(matches!(inbox.push(rec(), 10), Err(ShimError::Closed)));
    }

    #[test]
    fn drop_newest_and_drop_oldest_count_exactly() {
        let (inbox, counters) = inbox(2, FullPolicy::DropNewest);
        for _ in 0..5 {
            let _ = inbox.push(rec(), 10);
        }
        assert_eq!(seqs(&inbox.take()), vec![1, 2]);
        assert_eq!(counters.dropped.load(Relaxed), 3);

        let (inbox, counters) = inbox_oldest();
        for _ in 0..5 {
            inbox.push(rec(), 10).expect("drop oldest always accepts");
        }
        assert_eq!(seqs(&inbox.take()), vec![4, 5]);
        assert_eq!(counters.dropped.load(Relaxed), 3);
        assert_eq!(counters.accepted.load(Relaxed), 5);
    }

    fn inbox_oldest() -> (Arc<Inbox>, Arc<Counters>) {
        inbox(2, FullPolicy::DropOldest)
    }

    #[test]
    fn the_floor_skips_seqs_the_daemon_already_has() {
        let (inbox, _) = inbox(10, FullPolicy::DropNewest);
        inbox.push(rec(), 1).expect("room");
        assert_eq!(inbox.raise_floor(1), Floor::Unchanged);
        assert_eq!(inbox.raise_floor(40), Floor::Raised);
        assert_eq!(inbox.push(rec(), 1).expect("room"), 41);
    }

    #[test]
    fn a_watermark_too_far_ahead_is_not_adopted_and_is_counted() {
        let (inbox, counters) = inbox(10, FullPolicy::DropNewest);
        assert_eq!(inbox.push(rec(), 1).expect("room"), 1);
        // u64::MAX would overflow the counter; MAX_SEQ_JUMP + 2 is one past the bound.
        assert_eq!(inbox.raise_floor(u64::MAX), Floor::Refused);
        assert_eq!(inbox.raise_floor(1 + MAX_SEQ_JUMP + 1), Floor::Refused);
        assert_eq!(counters.refused_watermarks.load(Relaxed), 2);
        assert_eq!(
            inbox.push(rec(), 1).expect("room"),
            2,
            "the counter is kept"
        );
        // Right at the bound is adopted.
        assert_eq!(inbox.raise_floor(2 + MAX_SEQ_JUMP), Floor::Raised);
        assert_eq!(inbox.push(rec(), 1).expect("room"), 3 + MAX_SEQ_JUMP);
        assert_eq!(counters.snapshot().refused_watermarks, 2);
    }

    #[test]
    fn an_exhausted_counter_refuses_records_instead_of_wrapping() {
        let counters = Arc::new(Counters::default());
        let limits = Limits {
            max_records: 10,
            max_bytes: 1 << 20,
            batch_records: 10,
            batch_bytes: 1 << 20,
        };
        let inbox = Inbox::new(
            limits,
            FullPolicy::DropNewest,
            u64::MAX - 1,
            counters.clone(),
        );
        assert_eq!(inbox.push(rec(), 1).expect("room"), u64::MAX - 1);
        let err = inbox.push(rec(), 1).expect_err("exhausted");
        assert!(matches!(err, ShimError::SeqExhausted), "{err}");
        assert!(matches!(inbox.push(rec(), 1), Err(ShimError::SeqExhausted)));
        assert_eq!(counters.dropped.load(Relaxed), 2);
        assert_eq!(counters.accepted.load(Relaxed), 1);
        assert_eq!(inbox.last_seq(), u64::MAX - 1);
        assert_eq!(seqs(&inbox.take()), vec![u64::MAX - 1]);
    }
}
