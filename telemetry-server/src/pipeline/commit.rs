//! One group's life on the writer thread: admission (the fence), the append under the retry
//! policy, the split of the report back per caller, and the publish after the commit.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::SyncSender,
        Arc,
    },
    time::Instant,
};

use telemetry_core::{
    pb::{Record, RunInfo},
    Watermark,
};
use telemetry_store::ChangeWake;
use telemetry_store::{AppendOutcome, AppendReport, BackendWriter, StoreError};
use tokio::sync::oneshot;

use super::{
    fence::{Fences, Span},
    Origin, Rejected, RetryPolicy, WriteError, MAX_FENCES,
};
use crate::metrics::Metrics;

type Reply = oneshot::Sender<Result<AppendReport, WriteError>>;

struct Member {
    len: usize,
    producers: Vec<String>,
    reply: Reply,
}

/// Appends merged into one transaction.
#[derive(Default)]
pub(super) struct Group {
    records: Vec<Record>,
    rejected: Vec<Rejected>,
    members: Vec<Member>,
}

impl Group {
    /// Records in the group.
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }
}

/// The writer thread's state.
pub(super) struct Committer {
    writer: Box<dyn BackendWriter>,
    /// The publisher thread's queue: stored records, one group at a time, in commit order.
    publish: SyncSender<Vec<Record>>,
    /// On a shared store, the follower publishes (follow.rs): a commit only wakes it.
    follower: Option<ChangeWake>,
    metrics: Metrics,
    retry: RetryPolicy,
    epochs: Arc<AtomicU64>,
    fences: Fences,
}

/// Each producer's seq range in an append, in order of first appearance.
fn spans(records: &[Record], rejected: &[Rejected]) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let stamps = records
        .iter()
        .map(Record::producer)
        .chain(rejected.iter().map(|(p, s)| (p.as_str(), *s)));
    for (p, seq) in stamps {
        if p.is_empty() {
            continue;
        }
        match index.get(p) {
            Some(&i) => {
                let s = &mut out[i];
                s.first = s.first.min(seq);
                s.last = s.last.max(seq);
            }
            None => {
                index.insert(p, out.len());
                out.push(Span {
                    producer: p.to_owned(),
                    first: seq,
                    last: seq,
                });
            }
        }
    }
    out
}

impl Committer {
    pub(super) fn new(
        writer: Box<dyn BackendWriter>,
        publish: SyncSender<Vec<Record>>,
        follower: Option<ChangeWake>,
        metrics: Metrics,
        retry: RetryPolicy,
        epochs: Arc<AtomicU64>,
    ) -> Self {
        Committer {
            writer,
            publish,
            follower,
            metrics,
            retry,
            epochs,
            fences: Fences::new(MAX_FENCES),
        }
    }

    /// Adds an append to the group, or refuses it at once when the fence says so.
    pub(super) fn admit(
        &mut self,
        group: &mut Group,
        records: Vec<Record>,
        rejected: Vec<Rejected>,
        origin: Origin,
        reply: Reply,
    ) {
        let spans = spans(&records, &rejected);
        if let Err(e) = self.check_jumps(&spans) {
            if matches!(e, WriteError::SeqJump { .. }) {
                self.metrics.seq_jumps_refused.inc();
            }
            tracing::warn!(error = %e, records = records.len(), "batch refused");
            let _ = reply.send(Err(e));
            return;
        }
        if let Err((producer_id, durable_seq)) =
            self.fences.admit(&spans, origin.epoch, Instant::now())
        {
            self.metrics.fenced_batches.inc();
            tracing::warn!(%producer_id, durable_seq, records = records.len(),
                "batch refused: an earlier batch of its producer was not stored");
            let _ = reply.send(Err(WriteError::Fenced {
                producer_id,
                durable_seq,
            }));
            return;
        }
        group.members.push(Member {
            len: records.len(),
            producers: spans.into_iter().map(|s| s.producer).collect(),
            reply,
        });
        group.records.extend(records);
        group.rejected.extend(rejected);
    }

    /// Refuses an append whose seqs for a producer reach more than `MAX_SEQ_JUMP` past its
    /// durable watermark ([`telemetry_core::Watermark::within_jump`]; the highest seq is
    /// checked, so one bad record among good ones is caught too). Seqs within `MAX_SEQ_JUMP`
    /// of 0 pass without a store read (every watermark is at least 0): the common case costs
    /// nothing.
    fn check_jumps(&self, spans: &[Span]) -> Result<(), WriteError> {
        for s in spans {
            if Watermark::NONE.within_jump(s.last) {
                continue;
            }
            let durable_seq = self
                .writer
                .watermark(&s.producer)
                .map_err(|e| WriteError::Store(e.to_string()))?;
            if !Watermark::at(durable_seq).within_jump(s.last) {
                return Err(WriteError::SeqJump {
                    producer_id: s.producer.clone(),
                    durable_seq,
                    first_seq: s.first,
                    last_seq: s.last,
                });
            }
        }
        Ok(())
    }

    /// Commits a group: every member gets its own report, or the error; stored records are
    /// published after the commit, in commit order.
    pub(super) fn commit(&mut self, group: Group) {
        let Group {
            mut records,
            rejected,
            members,
        } = group;
        if members.is_empty() {
            return;
        }
        let started = Instant::now();
        let report = match self.append_with_retry(&mut records, &rejected) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.store_errors.inc();
                tracing::error!(error = %e, records = records.len(), "batch not stored (rolled back)");
                let epoch = self.epochs.load(Ordering::SeqCst);
                let writer = &self.writer;
                self.fences.failed(
                    members
                        .iter()
                        .flat_map(|m| m.producers.iter().map(String::as_str)),
                    |p| writer.watermark(p).ok(),
                    epoch,
                    Instant::now(),
                );
                self.metrics
                    .fenced_producers
                    .set(i64::try_from(self.fences.len()).unwrap_or(i64::MAX));
                let err = WriteError::Store(e.to_string());
                for m in members {
                    let _ = m.reply.send(Err(err.clone()));
                }
                return;
            }
        };
        self.fences.committed(&report.watermarks);
        self.metrics
            .observe_commit(report.stored, report.duplicates, started.elapsed());
        // Split the merged report back per caller.
        let mut outcomes = report.outcomes.into_iter();
        let mut to_publish = Vec::with_capacity(report.stored);
        let mut recs = records.into_iter();
        for m in members {
            let mine: Vec<AppendOutcome> = outcomes.by_ref().take(m.len).collect();
            let stored = mine
                .iter()
                .filter(|o| matches!(o, AppendOutcome::Stored { .. }))
                .count();
            for (rec, outcome) in recs.by_ref().take(m.len).zip(&mine) {
                if matches!(outcome, AppendOutcome::Stored { .. }) {
                    to_publish.push(rec);
                }
            }
            let sub = AppendReport {
                stored,
                duplicates: mine.len() - stored,
                outcomes: mine,
                watermarks: report
                    .watermarks
                    .iter()
                    .filter(|(id, _)| m.producers.contains(id))
                    .cloned()
                    .collect(),
            };
            let _ = m.reply.send(Ok(sub));
        }
        match &self.follower {
            Some(wake) if !to_publish.is_empty() => wake(),
            Some(_) => {}
            None if to_publish.is_empty() => {}
            None => {
                self.metrics.publish_queue_depth.inc();
                if self.publish.send(to_publish).is_err() {
                    // Only if the publisher thread panicked: the records are stored and acked,
                    // live viewers catch up from the store.
                    self.metrics.publish_queue_depth.dec();
                    tracing::error!("the hub publisher is gone: a group was not published live");
                }
            }
        }
    }

    /// The one retry policy: retryable errors (a lock held elsewhere) are retried with a
    /// doubling pause; every other error is final for this group.
    fn append_with_retry(
        &mut self,
        records: &mut [Record],
        rejected: &[Rejected],
    ) -> Result<AppendReport, StoreError> {
        let mut pause = self.retry.first_pause;
        let mut attempt = 1;
        loop {
            match self.writer.append(records, rejected) {
                Err(e) if e.is_retryable() && attempt < self.retry.attempts => {
                    tracing::warn!(attempt, error = %e, ?pause, "store busy, retrying the batch");
                    self.metrics.store_retries.inc();
                    std::thread::sleep(pause);
                    pause = pause.saturating_mul(2);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    pub(super) fn put_run(&mut self, info: &RunInfo) {
        if let Err(e) = self.writer.put_run_info(info) {
            tracing::error!(run_id = %info.run_id, error = %e, "cannot persist run state");
        }
    }

    pub(super) fn final_checkpoint(&mut self) {
        match self.writer.checkpoint() {
            Ok(stats) => tracing::info!(?stats, "final checkpoint"),
            Err(e) => tracing::warn!(error = %e, "final checkpoint failed"),
        }
    }
}
