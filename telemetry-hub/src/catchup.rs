//! Catch-up: reading a subscriber's stored past until it meets the live stream.
//!
//! A subscription with `since_seq` starts here: pages come from the hub's ring when it still
//! holds them and from the [`CatchUpSource`](crate::CatchUpSource) (on tokio's blocking pool)
//! when it does not, until the seam with what the subscriber's queue buffered live. The state
//! machine is the largest part of a subscription and has its own invariants (`cursor`,
//! `covered`, the empty-page streak), so it has its own module; `subscription` drives it.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
};

use telemetry_core::pb::{record::Kind, Record, RunCompleted};
use tokio::{
    task::JoinHandle,
    time::{Instant, Sleep},
};

use crate::{
    delivery::{CloseReason, Delivery},
    inner::HubInner,
    options::StreamKind,
    queue::{lock, Item, Staged, SubShared},
    source::{CatchUpError, CatchUpQuery},
};

/// Consecutive empty catch-up pages that may fail to reach the seam before the switch is
/// forced (only a source that contradicts the hub gets there; the loss is reported as a Gap).
const MAX_EMPTY_PAGES: u32 = 3;

enum Read {
    Page {
        handle: JoinHandle<Result<(Vec<Record>, bool), CatchUpError>>,
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
    pub(crate) covered: u64,
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

pub(crate) enum BacklogStep {
    Progress,
    Pending,
    Live { delivered_upto: u64, la: u64 },
    Done,
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
        cut_by_bytes: bool,
        hw: u64,
        hub: &HubInner,
        shared: &SubShared,
        stash: &mut VecDeque<Staged>,
    ) -> Result<bool, CatchUpError> {
        // A page cut short by its byte budget is not "nothing more".
        let full = (cut_by_bytes && !page.is_empty()) || page.len() >= hub.config.catch_up_page;
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

    pub(crate) fn poll(
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
                        .and_then(|(page, cut)| {
                            self.accept_page(page, cut, hw, hub, shared, stash)
                        });
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
            let (since, limit, bytes) = (
                self.cursor,
                hub.config.catch_up_page,
                hub.config.catch_up_page_bytes,
            );
            let handle = hub
                .tracker
                .spawn_blocking(move || source.read_page_bounded(&query, since, limit, bytes));
            hub.counters.catchup_reads.fetch_add(1, Ordering::Relaxed);
            self.read = Some(Read::Page { handle, hw });
        }
    }
}
