//! A viewer's end of the hub: catch-up, the seam, live delivery, rate limiting.
//!
//! There is no task per subscriber: a `Subscription` is a poll-driven state machine that does
//! its work when the viewer asks for the next item. A slow viewer therefore costs nothing but
//! its bounded queue, catch-up reads happen only as fast as the viewer consumes them, and an
//! idle subscription holds no thread or task. The catch-up state machine it drives while
//! reading the stored past is in `catchup`.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use telemetry_core::pb::Record;
use tokio::time::{Instant, Sleep};

use crate::{
    catchup::{Backlog, BacklogStep},
    delivery::{CloseReason, Delivery},
    filter::RecordFilter,
    inner::HubInner,
    options::{SubscribeError, SubscribeOptions},
    queue::{Item, Matcher, Mode, Staged, SubShared, Taken},
};

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

enum StashStep {
    Deliver(Delivery),
    Wait,
    Empty,
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
                    scalars,
                    through,
                } => {
                    self.la = self.la.max(through);
                    return StashStep::Deliver(Delivery::Lagged {
                        dropped_steps: steps,
                        dropped_episodes: episodes,
                        dropped_lifecycle: lifecycle,
                        dropped_scalars: scalars,
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
