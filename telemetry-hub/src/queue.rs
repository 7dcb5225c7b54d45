//! One subscriber's bounded queue: the only place records wait for a viewer.
//!
//! The publisher (the daemon's ingest path) must never wait for a viewer, so each subscriber
//! gets a queue of fixed capacity that the publisher pushes into under a short mutex and the
//! subscriber drains from its own task. When the queue is full the OLDEST record is dropped
//! and counted by kind; the subscriber is told how many (`Lagged`) before the next record it
//! receives. While the subscriber is still catching up from the store, the queue is a buffer
//! for the live tail instead: an overflow then drops silently, because catch-up will re-read
//! those records from the store (see the crate docs, "Catch-up then live").

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    task::Waker,
};

use telemetry_core::pb::{record::Kind, Record, RunCompleted};
use tokio::time::Instant;

use crate::{
    delivery::{CloseReason, Delivery},
    filter::RecordFilter,
    options::{ModeFilter, StreamKind},
};

/// Locks a mutex, ignoring poisoning: every critical section of the hub leaves its data
/// consistent before anything that could panic, so a poisoned lock holds usable data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A record waiting in a queue or in a subscriber's hand.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub record: Arc<Record>,
    pub seq: u64,
    /// The run's (or, for all-runs lifecycle, the hub's) previous seq in this stream; 0 when
    /// unknown. The subscriber reports a gap when it has not accounted for `prev`.
    pub prev: u64,
    /// The highest seq this item accounts for: its own, raised by records filtered out after
    /// it, so that filtering never looks like a gap.
    pub through: u64,
    pub at: Instant,
    pub stream: StreamKind,
}

/// What a subscriber processes, in order: records and accounting/notices between them.
#[derive(Debug)]
pub(crate) enum Staged {
    Record(Item),
    /// Records up to this seq are accounted for (filtered out, or covered by catch-up).
    Account(u64),
    Lagged {
        steps: u64,
        episodes: u64,
        lifecycle: u64,
        scalars: u64,
        through: u64,
    },
    /// Boxed: notices are rare and records must stay small to move cheaply.
    Notice(Box<Delivery>),
}

impl Staged {
    pub fn notice(d: Delivery) -> Self {
        Staged::Notice(Box::new(d))
    }
}

trait PushFront<T> {
    fn extend_front_opt(&mut self, item: Option<T>);
}

impl<T> PushFront<T> for VecDeque<T> {
    fn extend_front_opt(&mut self, item: Option<T>) {
        if let Some(i) = item {
            self.push_front(i);
        }
    }
}

/// The agent / mode / custom predicate of one subscription.
pub(crate) struct Matcher {
    pub agent: Option<String>,
    pub mode: ModeFilter,
    pub filter: Option<Arc<dyn RecordFilter>>,
}

impl Matcher {
    #[inline]
    pub fn keep(&self, record: &Record) -> bool {
        if self.agent.is_none() && self.mode == ModeFilter::Any && self.filter.is_none() {
            return true;
        }
        let (agent, mode) = match &record.kind {
            Some(Kind::Step(s)) => (s.agent_id.as_str(), s.control_mode.as_str()),
            Some(Kind::Episode(e)) => (e.agent_id.as_str(), e.control_mode.as_str()),
            // Scalars have an agent but no control mode: the mode filter does not apply.
            Some(Kind::Scalar(s)) => {
                return self.agent.as_deref().is_none_or(|a| a == s.agent_id)
                    && self.filter.as_ref().is_none_or(|f| f.keep(record));
            }
            _ => return self.filter.as_ref().is_none_or(|f| f.keep(record)),
        };
        self.agent.as_deref().is_none_or(|a| a == agent)
            && self.mode.matches(mode)
            && self.filter.as_ref().is_none_or(|f| f.keep(record))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Catching up: the queue buffers the live tail; overflow drops silently (re-read later).
    Buffering {
        dropped_max: u64,
    },
    Live,
}

#[derive(Debug, Default, Clone, Copy)]
struct PendingLag {
    counts: [u64; StreamKind::COUNT],
    through: u64,
}

pub(crate) struct QueueState {
    /// Only `Staged::Record`s: the same type as the subscriber's stash, so that taking the
    /// whole queue is a swap, not a copy.
    items: VecDeque<Staged>,
    /// Records filtered out while the queue was empty (accounting for the next take).
    front_skip: u64,
    lag: PendingLag,
    pub mode: Mode,
    /// The run's last seq in this stream when the subscriber registered.
    pub reg_last: u64,
    /// Records at or below this seq were delivered by catch-up (or are before `since_seq`):
    /// later copies are not queued (and so never counted as drops).
    seam: u64,
    pub terminal: Option<Arc<RunCompleted>>,
    closed: Option<CloseReason>,
    waker: Option<Waker>,
    close_waker: Option<Waker>,
    pub offered_total: u64,
    pub filtered_total: u64,
    pub dropped: [u64; StreamKind::COUNT],
    pub catchup_overflow_total: u64,
}

/// The part of a subscription shared between the hub (publisher side) and the subscriber.
pub(crate) struct SubShared {
    pub id: u64,
    pub run_id: Option<Arc<str>>,
    pub stream: StreamKind,
    pub capacity: usize,
    pub matcher: Matcher,
    state: Mutex<QueueState>,
    closed: AtomicBool,
    pub delivered: AtomicU64,
    pub in_hand: AtomicUsize,
    pub gaps: AtomicU64,
    pub catchup_records: AtomicU64,
    pub catching_up: AtomicBool,
    pub created: Instant,
    /// (time, delivered) at the previous metrics snapshot, for the delivery rate.
    pub rate_mark: Mutex<(Instant, u64)>,
}

/// A published record accepted into its run's chain, to be offered to subscribers.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub record: Arc<Record>,
    pub seq: u64,
    /// The run's (or the all-runs chain's) previous seq in this stream; 0 when unknown.
    pub prev: u64,
    pub stream: StreamKind,
}

/// What an offered record did to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Queued (possibly after dropping the oldest, counted: `Some(kind)` of the dropped one).
    Queued(Option<StreamKind>),
    /// Filtered out by the subscription (or already delivered by catch-up).
    Filtered,
}

/// What [`SubShared::take_into`] found.
pub(crate) enum Taken {
    Some,
    /// Nothing queued; the waker is registered.
    Empty,
    Terminal(Arc<RunCompleted>),
}

impl SubShared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        run_id: Option<Arc<str>>,
        stream: StreamKind,
        capacity: usize,
        matcher: Matcher,
        mode: Mode,
        reg_last: u64,
        now: Instant,
    ) -> Self {
        SubShared {
            id,
            run_id,
            stream,
            capacity,
            matcher,
            state: Mutex::new(QueueState {
                items: VecDeque::with_capacity(capacity.min(1024)),
                front_skip: 0,
                lag: PendingLag::default(),
                mode,
                reg_last,
                seam: 0,
                terminal: None,
                closed: None,
                waker: None,
                close_waker: None,
                offered_total: 0,
                filtered_total: 0,
                dropped: [0; StreamKind::COUNT],
                catchup_overflow_total: 0,
            }),
            closed: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            in_hand: AtomicUsize::new(0),
            gaps: AtomicU64::new(0),
            catchup_records: AtomicU64::new(0),
            catching_up: AtomicBool::new(matches!(mode, Mode::Buffering { .. })),
            created: now,
            rate_mark: Mutex::new((now, 0)),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, QueueState> {
        lock(&self.state)
    }

    /// Offers published records, in order, under one lock and with at most one wake-up
    /// (publisher side, under the run lock). Returns how many were dropped, by stream.
    pub fn offer_many<'a>(
        &self,
        records: impl Iterator<Item = &'a Accepted>,
        at: Instant,
    ) -> [u64; StreamKind::COUNT] {
        let mut dropped = [0u64; StreamKind::COUNT];
        let mut q = self.state();
        if q.closed.is_some() || q.terminal.is_some() {
            return dropped;
        }
        let mut queued = false;
        for a in records {
            match self.offer_locked(&mut q, a, at) {
                Offer::Queued(d) => {
                    queued = true;
                    if let Some(kind) = d {
                        dropped[kind.index()] += 1;
                    }
                }
                Offer::Filtered => {}
            }
        }
        let waker = if queued { q.waker.take() } else { None };
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
        dropped
    }

    fn offer_locked(&self, q: &mut QueueState, a: &Accepted, at: Instant) -> Offer {
        let seq = a.seq;
        // Filtered out, or already delivered by catch-up: not queued, only accounted for.
        let keep = self.matcher.keep(&a.record);
        if !keep || seq <= q.seam {
            if !keep {
                q.filtered_total += 1;
            }
            match q.items.back_mut() {
                Some(Staged::Record(back)) => back.through = seq,
                _ => q.front_skip = q.front_skip.max(seq),
            }
            return Offer::Filtered;
        }
        q.offered_total += 1;
        let mut dropped = None;
        if q.items.len() >= self.capacity {
            if let Some(Staged::Record(old)) = q.items.pop_front() {
                match &mut q.mode {
                    Mode::Buffering { dropped_max } => {
                        *dropped_max = (*dropped_max).max(old.through);
                        q.catchup_overflow_total += 1;
                    }
                    Mode::Live => {
                        let i = old.stream.index();
                        q.lag.counts[i] += 1;
                        q.lag.through = q.lag.through.max(old.through);
                        q.dropped[i] += 1;
                        dropped = Some(old.stream);
                    }
                }
            }
        }
        q.items.push_back(Staged::Record(Item {
            record: Arc::clone(&a.record),
            seq,
            prev: a.prev,
            through: seq,
            at,
            stream: a.stream,
        }));
        Offer::Queued(dropped)
    }

    /// The run completed: the subscriber delivers what is queued, then `Completed`.
    pub fn set_terminal(&self, completed: &Arc<RunCompleted>) {
        let mut q = self.state();
        if q.terminal.is_none() {
            q.terminal = Some(Arc::clone(completed));
        }
        let waker = q.waker.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ends the subscription at once with `reason` (shutdown).
    pub fn close(&self, reason: CloseReason) {
        let mut q = self.state();
        if q.closed.is_none() {
            q.closed = Some(reason);
        }
        self.closed.store(true, Ordering::Release);
        let wakers = [q.waker.take(), q.close_waker.take()];
        drop(q);
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }

    /// The close reason, if the subscription was closed.
    #[inline]
    pub fn closed(&self) -> Option<CloseReason> {
        if self.closed.load(Ordering::Acquire) {
            self.state().closed.clone()
        } else {
            None
        }
    }

    /// Registers a waker that only [`SubShared::close`] wakes (while the subscriber waits on
    /// something else: a timer or a catch-up read).
    pub fn register_close_waker(&self, waker: &Waker) {
        let mut q = self.state();
        if !q.close_waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            q.close_waker = Some(waker.clone());
        }
    }

    /// Subscriber side, live mode: moves up to `max` queued records (after any pending
    /// accounting and `Lagged`) into `stash`.
    pub fn take_into(&self, stash: &mut VecDeque<Staged>, max: usize, waker: &Waker) -> Taken {
        let mut q = self.state();
        let account = std::mem::take(&mut q.front_skip);
        let account = (account > 0).then_some(Staged::Account(account));
        let lag = std::mem::take(&mut q.lag);
        let lagged = lag.counts.iter().any(|&c| c > 0).then_some(Staged::Lagged {
            steps: lag.counts[0],
            episodes: lag.counts[1],
            lifecycle: lag.counts[2],
            scalars: lag.counts[3],
            through: lag.through,
        });
        let n = q.items.len().min(max);
        let took = n > 0 || account.is_some() || lagged.is_some();
        if stash.is_empty() {
            if n == q.items.len() {
                std::mem::swap(stash, &mut q.items);
            } else {
                stash.extend(q.items.drain(..n));
            }
            // Accounting and Lagged precede every record taken now.
            stash.extend_front_opt(lagged);
            stash.extend_front_opt(account);
        } else {
            stash.extend(account);
            stash.extend(lagged);
            stash.extend(q.items.drain(..n));
        }
        if took {
            Taken::Some
        } else if let Some(t) = &q.terminal {
            Taken::Terminal(Arc::clone(t))
        } else {
            if !q.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                q.waker = Some(waker.clone());
            }
            Taken::Empty
        }
    }

    /// Whether catch-up that has covered every seq up to `covered` may switch to live.
    pub fn can_switch(&self, covered: u64) -> bool {
        let q = self.state();
        match q.mode {
            Mode::Buffering { dropped_max } => covered >= q.reg_last && covered >= dropped_max,
            Mode::Live => true,
        }
    }

    /// Switches from buffering to live when catch-up has covered everything up to `covered`
    /// that the buffer may have lost (or unconditionally with `force`). Buffered records at
    /// or below `delivered_upto` are duplicates of what catch-up delivered and are removed.
    pub fn try_switch(&self, covered: u64, delivered_upto: u64, force: bool) -> bool {
        let mut q = self.state();
        let Mode::Buffering { dropped_max } = q.mode else {
            return true;
        };
        if !force && (covered < q.reg_last || covered < dropped_max) {
            return false;
        }
        q.mode = Mode::Live;
        q.seam = delivered_upto;
        let old = std::mem::take(&mut q.items);
        let mut carry = 0;
        for staged in old {
            let Staged::Record(item) = staged else {
                continue;
            };
            if item.seq <= delivered_upto {
                carry = carry.max(item.through);
                continue;
            }
            q.carry_to_back(carry);
            carry = 0;
            q.items.push_back(Staged::Record(item));
        }
        q.carry_to_back(carry);
        self.catching_up.store(false, Ordering::Relaxed);
        true
    }
}

impl QueueState {
    /// Accounts for records up to `seq` after the last queued record.
    fn carry_to_back(&mut self, seq: u64) {
        match self.items.back_mut() {
            Some(Staged::Record(back)) => back.through = back.through.max(seq),
            _ => self.front_skip = self.front_skip.max(seq),
        }
    }

    /// Records queued.
    pub fn queue_len(&self) -> usize {
        self.items.len()
    }

    /// Publish time of the oldest queued record.
    pub fn oldest(&self) -> Option<Instant> {
        match self.items.front() {
            Some(Staged::Record(i)) => Some(i.at),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::task::noop_waker;
    use telemetry_core::pb::RunStep;

    fn rec(seq: u64) -> Arc<Record> {
        Arc::new(Record::from(RunStep {
            seq_id: seq,
            ..Default::default()
        }))
    }

    fn offer(s: &SubShared, seq: u64) -> [u64; StreamKind::COUNT] {
        let a = Accepted {
            record: rec(seq),
            seq,
            prev: seq - 1,
            stream: StreamKind::Steps,
        };
        s.offer_many(std::iter::once(&a), Instant::now())
    }

    fn sub(capacity: usize, mode: Mode) -> SubShared {
        let m = Matcher {
            agent: None,
            mode: ModeFilter::Any,
            filter: None,
        };
        SubShared::new(
            1,
            None,
            StreamKind::Steps,
            capacity,
            m,
            mode,
            0,
            Instant::now(),
        )
    }

    #[test]
    fn full_live_queue_drops_oldest_and_reports_before_the_rest() {
        let s = sub(2, Mode::Live);
        for seq in 1..=5 {
            offer(&s, seq);
        }
        let mut stash = VecDeque::new();
        assert!(matches!(
            s.take_into(&mut stash, 10, &noop_waker()),
            Taken::Some
        ));
        assert!(matches!(
            stash.pop_front(),
            Some(Staged::Lagged {
                steps: 3,
                through: 3,
                ..
            })
        ));
        let seqs: Vec<u64> = stash
            .iter()
            .map(|s| match s {
                Staged::Record(i) => i.seq,
                _ => 0,
            })
            .collect();
        assert_eq!(seqs, [4, 5]);
        assert_eq!(s.state().dropped[0], 3);
    }

    #[test]
    fn buffering_overflow_is_silent_and_blocks_the_switch_until_covered() {
        let s = sub(2, Mode::Buffering { dropped_max: 0 });
        for seq in 1..=4 {
            offer(&s, seq);
        }
        assert_eq!(s.state().dropped, [0; StreamKind::COUNT]);
        assert_eq!(s.state().catchup_overflow_total, 2);
        assert!(!s.try_switch(1, 1, false));
        assert!(s.try_switch(3, 3, false));
        let mut stash = VecDeque::new();
        s.take_into(&mut stash, 10, &noop_waker());
        // 3 was a duplicate of catch-up: accounted, not delivered.
        assert!(matches!(stash.pop_front(), Some(Staged::Account(3))));
        assert!(matches!(
            stash.pop_front(),
            Some(Staged::Record(Item { seq: 4, .. }))
        ));
        assert!(stash.is_empty());
    }
}
