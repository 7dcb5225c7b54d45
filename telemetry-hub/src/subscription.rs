//! A viewer's end of the hub: catch-up, the seam, live delivery, rate limiting.
//!
//! There is no task per subscriber: a `Subscription` is a poll-driven state machine that does
//! its work when the viewer asks for the next item. A slow viewer therefore costs nothing but
//! its bounded queue, catch-up reads happen only as fast as the viewer consumes them, and an
//! idle subscription holds no thread or task.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use telemetry_core::pb::{record::Kind, Record, RunCompleted};
use tokio::{
    task::JoinHandle,
    time::{Instant, Sleep},
};

use crate::{
    delivery::{CloseReason, Delivery},
    filter::RecordFilter,
    hub::HubInner,
    options::{StreamKind, SubscribeError, SubscribeOptions},
    queue::{lock, Item, Matcher, Mode, Staged, SubShared, Taken},
    source::{CatchUpError, CatchUpQuery},
};

/// Consecutive empty catch-up pages that may fail to reach the seam before the switch is
/// forced (only a source that contradicts the hub gets there; the loss is reported as a Gap).
const MAX_EMPTY_PAGES: u32 = 3;

/// One subscriber's stream of [`Delivery`] items. Dropping it unsubscribes.
///
/// Use [`Subscription::next`] or the [`Stream`] implementation. It must be polled inside a
/// tokio runtime (catch-up reads use the blocking pool, rate limiting uses tokio time).
pub struct Subscription {
    hub: Arc<HubInner>,
    shared: Arc<SubShared>,
    stash: VecDeque<Staged>,
    /// The highest seq of the run/stream accounted for (delivered, filtered, dropped and
    /// reported, or covered by catch-up). A record whose `prev` is above it reveals a gap.
    la: u64,
    /// Records at or below this seq were delivered by catch-up: later copies are duplicates.
    seam: u64,
    phase: Phase,
    rate: Option<RateState>,
    transform: Option<Arc<dyn RecordFilter>>,
    ended: bool,
    registered: bool,
    /// Records delivered (mirrored into the shared counter after each poll).
    delivered: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.shared.id)
            .field("run_id", &self.shared.run_id)
            .field("stream", &self.shared.stream)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

pub(crate) enum Phase {
    Backlog(Box<Backlog>),
    Live,
    Done,
}

struct RateState {
    min_interval: Duration,
    max_batch: usize,
    next_at: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
}

enum Read {
    Page {
        handle: JoinHandle<Result<Vec<Record>, CatchUpError>>,
        hw: u64,
    },
    Completion(JoinHandle<Result<Option<RunCompleted>, CatchUpError>>),
}

/// Catch-up state: where the stored past has been read to.
pub(crate) struct Backlog {
    query: CatchUpQuery,
    follow: bool,
    /// Last seq read (from the ring or the store), delivered or filtered.
    cursor: u64,
    /// Every seq up to here is accounted for: read, or proven absent by a short page.
    covered: u64,
    /// What the subscriber may take as accounted for at the seam (see `accept_page`).
    la_target: u64,
    short_seen: bool,
    empty_streak: u32,
    failures: u32,
    ask_completion: bool,
    ring_stalled: bool,
    read: Option<Read>,
    retry: Option<Pin<Box<Sleep>>>,
}

enum BacklogStep {
    Progress,
    Pending,
    Live { delivered_upto: u64, la: u64 },
    Done,
}

enum StashStep {
    Deliver(Delivery),
    Wait,
    Empty,
}

impl Backlog {
    pub(crate) fn new(query: CatchUpQuery, follow: bool, since: u64, ask_completion: bool) -> Self {
        Backlog {
            query,
            follow,
            cursor: since,
            covered: since,
            la_target: since,
            short_seen: false,
            empty_streak: 0,
            failures: 0,
            ask_completion,
            ring_stalled: false,
            read: None,
            retry: None,
        }
    }

    /// Takes a page from the store. Returns true when the run's `RunCompleted` was reached.
    fn accept_page(
        &mut self,
        page: Vec<Record>,
        hw: u64,
        hub: &HubInner,
        shared: &SubShared,
        stash: &mut VecDeque<Staged>,
    ) -> Result<bool, CatchUpError> {
        let full = page.len() >= hub.config.catch_up_page;
        let start = self.cursor;
        let now = Instant::now();
        let stream = self.query.stream;
        let mut invalid = 0u64;
        for r in page {
            let seq = r.seq_id();
            if seq <= self.cursor {
                invalid += 1;
                continue;
            }
            self.cursor = seq;
            let run_ok = self
                .query
                .run_id
                .as_deref()
                .is_none_or(|id| r.run_id() == id);
            if StreamKind::of(&r) != Some(stream) || !run_ok {
                invalid += 1;
                stash.push_back(Staged::Account(seq));
                continue;
            }
            if self.query.run_id.is_some() {
                if let Some(Kind::RunCompleted(rc)) = r.kind {
                    stash.push_back(Staged::notice(Delivery::Completed(Arc::new(rc))));
                    return Ok(true);
                }
            }
            let record = Arc::new(r);
            if shared.matcher.keep(&record) {
                shared.catchup_records.fetch_add(1, Ordering::Relaxed);
                stash.push_back(Staged::Record(Item {
                    record,
                    seq,
                    prev: 0,
                    through: seq,
                    at: now,
                    stream,
                }));
            } else {
                stash.push_back(Staged::Account(seq));
            }
        }
        if invalid > 0 {
            hub.counters
                .catchup_invalid_records
                .fetch_add(invalid, Ordering::Relaxed);
            tracing::warn!(
                invalid,
                "catch-up source returned records outside its query"
            );
        }
        if full {
            if self.cursor == start {
                return Err(CatchUpError::NoProgress { since_seq: start });
            }
            self.covered = self.cursor;
            self.la_target = self.cursor;
            self.short_seen = false;
            self.empty_streak = 0;
        } else {
            // A short page: the store had nothing more matching when the read started, and
            // everything the hub had published by then (`hw`) was committed before it.
            self.covered = self.covered.max(self.cursor).max(hw);
            // An unfiltered query proves more: the store must have returned every record up
            // to `hw`. Accounting only for what it returned lets a missing one show as a Gap.
            self.la_target = if self.query.is_unfiltered() {
                self.cursor
            } else {
                self.covered
            };
            self.short_seen = true;
            self.empty_streak = if self.cursor == start {
                self.empty_streak + 1
            } else {
                0
            };
        }
        Ok(false)
    }

    /// Reads a page from the run's ring when it reaches back to the cursor. `None` when it
    /// does not; `Some(true)` when the run's `RunCompleted` was reached.
    fn read_ring(
        &mut self,
        hub: &HubInner,
        shared: &SubShared,
        stash: &mut VecDeque<Staged>,
    ) -> Option<bool> {
        if self.ring_stalled {
            return None;
        }
        let run_id = self.query.run_id.as_deref()?;
        let map = hub.runs();
        let run = lock(map.get(run_id)?);
        let stream = self.query.stream;
        let last = run.last[stream.index()];
        if !run.rings.covers(stream, self.cursor, last) {
            return None;
        }
        let start = self.cursor;
        let now = Instant::now();
        let mut completed = None;
        let mut cursor = self.cursor;
        let reached_end = run
            .rings
            .read(stream, cursor, hub.config.catch_up_page, |e| {
                if completed.is_some() {
                    return;
                }
                cursor = e.seq;
                if let Some(Kind::RunCompleted(rc)) = &e.record.kind {
                    completed = Some(Arc::new(rc.clone()));
                } else if shared.matcher.keep(&e.record) {
                    shared.catchup_records.fetch_add(1, Ordering::Relaxed);
                    stash.push_back(Staged::Record(Item {
                        record: Arc::clone(&e.record),
                        seq: e.seq,
                        prev: 0,
                        through: e.seq,
                        at: now,
                        stream,
                    }));
                } else {
                    stash.push_back(Staged::Account(e.seq));
                }
            });
        self.cursor = cursor;
        if let Some(rc) = completed {
            stash.push_back(Staged::notice(Delivery::Completed(rc)));
            return Some(true);
        }
        if reached_end {
            self.covered = self.covered.max(cursor).max(last);
            self.short_seen = true;
            // Nothing new and still no seam: something the ring cannot explain; ask the store.
            self.ring_stalled = cursor == start;
        } else {
            self.covered = self.covered.max(cursor);
            self.short_seen = false;
        }
        self.la_target = self.covered;
        Some(false)
    }

    fn fail(
        &mut self,
        err: CatchUpError,
        hub: &HubInner,
        stash: &mut VecDeque<Staged>,
    ) -> Option<BacklogStep> {
        hub.counters.catchup_errors.fetch_add(1, Ordering::Relaxed);
        self.failures += 1;
        if self.failures > hub.config.catch_up_retries {
            tracing::warn!(error = %err, cursor = self.cursor, "catch-up failed; closing subscription");
            stash.push_back(Staged::notice(Delivery::Closed(
                CloseReason::CatchUpFailed(Arc::new(err)),
            )));
            return Some(BacklogStep::Done);
        }
        let delay = hub
            .config
            .catch_up_retry_delay
            .saturating_mul(1u32 << (self.failures - 1).min(10));
        tracing::debug!(error = %err, ?delay, "catch-up read failed; retrying");
        self.retry = Some(Box::pin(tokio::time::sleep(delay)));
        None
    }

    fn poll(
        &mut self,
        hub: &HubInner,
        shared: &SubShared,
        stash: &mut VecDeque<Staged>,
        cx: &mut Context<'_>,
    ) -> BacklogStep {
        loop {
            if let Some(sleep) = self.retry.as_mut() {
                if sleep.as_mut().poll(cx).is_pending() {
                    shared.register_close_waker(cx.waker());
                    return BacklogStep::Pending;
                }
                self.retry = None;
            }
            match self.read.as_mut() {
                Some(Read::Page { handle, hw }) => {
                    let Poll::Ready(res) = Pin::new(handle).poll(cx) else {
                        shared.register_close_waker(cx.waker());
                        return BacklogStep::Pending;
                    };
                    let hw = *hw;
                    self.read = None;
                    let res = res
                        .map_err(|e| CatchUpError::Task(e.to_string()))
                        .and_then(|r| r)
                        .and_then(|page| self.accept_page(page, hw, hub, shared, stash));
                    match res {
                        Ok(completed) => {
                            self.failures = 0;
                            return if completed {
                                BacklogStep::Done
                            } else {
                                BacklogStep::Progress
                            };
                        }
                        Err(e) => match self.fail(e, hub, stash) {
                            Some(step) => return step,
                            None => continue,
                        },
                    }
                }
                Some(Read::Completion(handle)) => {
                    let Poll::Ready(res) = Pin::new(handle).poll(cx) else {
                        shared.register_close_waker(cx.waker());
                        return BacklogStep::Pending;
                    };
                    self.read = None;
                    self.ask_completion = false;
                    match res
                        .map_err(|e| CatchUpError::Task(e.to_string()))
                        .and_then(|r| r)
                    {
                        Ok(Some(rc)) => shared.set_terminal(&Arc::new(rc)),
                        Ok(None) => {}
                        Err(e) => {
                            // Not fatal: the stream simply ends later, with the live RunCompleted.
                            hub.counters.catchup_errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "run completion lookup failed");
                        }
                    }
                    continue;
                }
                None => {}
            }
            if self.follow {
                // Switch only once a read has shown there is nothing more (a short page or
                // the end of the ring) and it covers what the live buffer may lack.
                if self.short_seen && shared.can_switch(self.covered) {
                    if self.ask_completion {
                        if let Some(run_id) = self.query.run_id.clone() {
                            let source = Arc::clone(&hub.source);
                            let handle = hub
                                .tracker
                                .spawn_blocking(move || source.run_completion(&run_id));
                            self.read = Some(Read::Completion(handle));
                            continue;
                        }
                        self.ask_completion = false;
                    }
                    if shared.try_switch(self.covered, self.cursor, false) {
                        return BacklogStep::Live {
                            delivered_upto: self.cursor,
                            la: self.la_target,
                        };
                    }
                } else if self.short_seen && self.empty_streak >= MAX_EMPTY_PAGES {
                    tracing::warn!(
                        cursor = self.cursor,
                        "catch-up source cannot reach the live seam; switching with a gap"
                    );
                    shared.try_switch(self.covered, self.cursor, true);
                    return BacklogStep::Live {
                        delivered_upto: self.cursor,
                        la: self.la_target,
                    };
                }
            } else if self.short_seen {
                stash.push_back(Staged::Account(self.la_target));
                stash.push_back(Staged::notice(Delivery::CaughtUp {
                    last_seq: self.covered,
                }));
                return BacklogStep::Done;
            }
            if let Some(completed) = self.read_ring(hub, shared, stash) {
                return if completed {
                    BacklogStep::Done
                } else {
                    BacklogStep::Progress
                };
            }
            let hw = hub.last_seq(self.query.run_id.as_deref(), self.query.stream);
            let source = Arc::clone(&hub.source);
            let query = self.query.clone();
            let (since, limit) = (self.cursor, hub.config.catch_up_page);
            let handle = hub
                .tracker
                .spawn_blocking(move || source.read_page(&query, since, limit));
            hub.counters.catchup_reads.fetch_add(1, Ordering::Relaxed);
            self.read = Some(Read::Page { handle, hw });
        }
    }
}

impl Subscription {
    pub(crate) fn new(
        hub: Arc<HubInner>,
        shared: Arc<SubShared>,
        phase: Phase,
        la: u64,
        rate: Option<(Duration, usize)>,
        filter: Option<Arc<dyn RecordFilter>>,
        caught_up_at: Option<u64>,
    ) -> Self {
        let mut stash = VecDeque::new();
        if let Some(last_seq) = caught_up_at {
            stash.push_back(Staged::notice(Delivery::CaughtUp { last_seq }));
        }
        Subscription {
            hub,
            shared,
            stash,
            la,
            seam: 0,
            phase,
            rate: rate.map(|(min_interval, max_batch)| RateState {
                min_interval,
                max_batch,
                next_at: None,
                sleep: None,
            }),
            transform: filter,
            ended: false,
            registered: true,
            delivered: 0,
        }
    }

    pub(crate) fn refused(
        hub: Arc<HubInner>,
        opts: &SubscribeOptions,
        err: SubscribeError,
    ) -> Self {
        let shared = Arc::new(SubShared::new(
            0,
            opts.run_id.as_deref().map(Arc::from),
            opts.stream,
            1,
            Matcher {
                agent: None,
                mode: Default::default(),
                filter: None,
            },
            Mode::Live,
            0,
            Instant::now(),
        ));
        let mut s = Subscription::new(hub, shared, Phase::Done, 0, None, None, None);
        s.registered = false;
        s.stash
            .push_back(Staged::notice(Delivery::Closed(CloseReason::Refused(err))));
        s
    }

    /// This subscription's id (as in [`SubscriberMetrics`](crate::SubscriberMetrics)).
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The next delivery, or `None` once the stream has ended (after `Completed`, `Closed`,
    /// or `CaughtUp` without `follow`).
    pub async fn next(&mut self) -> Option<Delivery> {
        std::future::poll_fn(|cx| self.poll_delivery(cx)).await
    }

    /// Ends the subscription now (the same as dropping it).
    pub fn unsubscribe(self) {
        drop(self);
    }

    fn finish(&mut self) {
        self.ended = true;
        self.phase = Phase::Done;
        self.shared
            .delivered
            .store(self.delivered, Ordering::Relaxed);
        if std::mem::take(&mut self.registered) {
            self.hub.unregister(&self.shared);
        }
    }

    /// Polls for the next delivery (the engine behind `next` and `Stream`).
    pub fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let out = self.poll_inner(cx);
        // Plain stores (only this subscriber writes them), read by metrics.
        self.shared
            .in_hand
            .store(self.stash.len(), Ordering::Relaxed);
        self.shared
            .delivered
            .store(self.delivered, Ordering::Relaxed);
        out
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            if let Some(reason) = self.shared.closed() {
                self.finish();
                return Poll::Ready(Some(Delivery::Closed(reason)));
            }
            match self.pop_stash(cx) {
                StashStep::Deliver(d) => return Poll::Ready(Some(d)),
                StashStep::Wait => return Poll::Pending,
                StashStep::Empty => {}
            }
            match &mut self.phase {
                // Take the whole queue (a swap): in hand is bounded by the queue capacity.
                Phase::Live => {
                    match self
                        .shared
                        .take_into(&mut self.stash, self.shared.capacity, cx.waker())
                    {
                        Taken::Some => {}
                        Taken::Empty => return Poll::Pending,
                        Taken::Terminal(rc) => {
                            self.stash
                                .push_back(Staged::notice(Delivery::Completed(rc)));
                            self.phase = Phase::Done;
                        }
                    }
                }
                Phase::Backlog(bl) => match bl.poll(&self.hub, &self.shared, &mut self.stash, cx) {
                    BacklogStep::Progress => {}
                    BacklogStep::Pending => return Poll::Pending,
                    BacklogStep::Live { delivered_upto, la } => {
                        let covered = bl.covered;
                        self.seam = delivered_upto;
                        self.stash.push_back(Staged::Account(la));
                        self.stash
                            .push_back(Staged::notice(Delivery::CaughtUp { last_seq: covered }));
                        self.phase = Phase::Live;
                    }
                    BacklogStep::Done => self.phase = Phase::Done,
                },
                Phase::Done => {
                    if self.stash.is_empty() {
                        self.finish();
                        return Poll::Ready(None);
                    }
                }
            }
        }
    }

    fn deliver(&mut self, item: Item) -> Arc<Record> {
        self.la = self.la.max(item.through);
        match &self.transform {
            Some(f) => f.transform(item.record),
            None => item.record,
        }
    }

    fn pop_stash(&mut self, cx: &mut Context<'_>) -> StashStep {
        while let Some(staged) = self.stash.pop_front() {
            let item = match staged {
                Staged::Account(t) => {
                    self.la = self.la.max(t);
                    continue;
                }
                Staged::Lagged {
                    steps,
                    episodes,
                    lifecycle,
                    through,
                } => {
                    self.la = self.la.max(through);
                    return StashStep::Deliver(Delivery::Lagged {
                        dropped_steps: steps,
                        dropped_episodes: episodes,
                        dropped_lifecycle: lifecycle,
                    });
                }
                Staged::Notice(d) => {
                    let d = *d;
                    if matches!(d, Delivery::Completed(_) | Delivery::Closed(_)) {
                        self.finish();
                    }
                    return StashStep::Deliver(d);
                }
                Staged::Record(item) => item,
            };
            if item.seq <= self.seam {
                self.la = self.la.max(item.through);
                continue;
            }
            if item.prev > self.la {
                let gap = Delivery::Gap {
                    after_seq: self.la,
                    next_seq: item.seq,
                };
                self.la = item.prev;
                self.shared.gaps.fetch_add(1, Ordering::Relaxed);
                self.hub.counters.gaps.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?gap, "subscriber gap");
                self.stash.push_front(Staged::Record(item));
                return StashStep::Deliver(gap);
            }
            let Some(rate) = self.rate.as_mut() else {
                let record = self.deliver(item);
                self.delivered += 1;
                return StashStep::Deliver(Delivery::Records(vec![record]));
            };
            let mut now = Instant::now();
            if let Some(next) = rate.next_at.filter(|&n| now < n) {
                let sleep = rate
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(next)));
                if sleep.deadline() != next {
                    sleep.as_mut().reset(next);
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    self.stash.push_front(Staged::Record(item));
                    self.shared.register_close_waker(cx.waker());
                    return StashStep::Wait;
                }
                now = Instant::now().max(next);
            }
            let (min_interval, max_batch) = (rate.min_interval, rate.max_batch);
            rate.next_at = Some(now + min_interval);
            let mut batch = Vec::with_capacity(max_batch.min(256));
            batch.push(self.deliver(item));
            if matches!(self.phase, Phase::Live) && self.stash.len() < max_batch {
                let room = max_batch - self.stash.len();
                // Terminal/empty: nothing to add now; found again when the stash runs dry.
                let _ = self.shared.take_into(&mut self.stash, room, cx.waker());
            }
            while batch.len() < max_batch {
                match self.stash.front() {
                    Some(Staged::Account(t)) => self.la = self.la.max(*t),
                    Some(Staged::Record(it)) if it.seq <= self.seam => {
                        self.la = self.la.max(it.through)
                    }
                    Some(Staged::Record(it)) if it.prev <= self.la => {}
                    _ => break,
                }
                if let Some(Staged::Record(it)) = self.stash.pop_front() {
                    if it.seq > self.seam {
                        batch.push(self.deliver(it));
                    }
                }
            }
            self.delivered += batch.len() as u64;
            return StashStep::Deliver(Delivery::Records(batch));
        }
        StashStep::Empty
    }
}

impl Stream for Subscription {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.get_mut().poll_delivery(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if std::mem::take(&mut self.registered) {
            self.hub.unregister(&self.shared);
        }
    }
}
