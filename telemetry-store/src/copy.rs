//! Moving a store to another backend (SQLite ⇄ PostgreSQL), through the store seam only, so it
//! works between any two backends that pass the conformance suite.
//!
//! Why it can be exact: every stream's seqs are contiguous from 1 in both engines (rows are
//! never deleted and a rolled-back append gives its seqs back), so appending the source's
//! records in seq order to an empty target gives each one the same seq. The copy checks that
//! for every record (a target that numbers differently is refused), and checks the result by
//! counts and by a SHA-256 of each stream's records in seq order ([`digest`]).
//!
//! Why it goes through `append`: the producer watermarks move with the rows, as on ingest, so
//! the target deduplicates a worker's resend after the move exactly as the source would have.
//! A producer's records, in all four streams together, were stored in increasing
//! `producer_seq` (the watermark rule), so the copy merges the four streams in an order that
//! keeps each producer's records increasing: otherwise a copied step would push its
//! producer's watermark past an episode not copied yet, which would then be taken for a
//! duplicate. (A record the target still calls a duplicate stops the copy with an error:
//! nothing is dropped silently.)
//!
//! Resumable and idempotent: each batch is one transaction. A rerun scans the target, checks
//! that it is a prefix of the source (the same digest over the same seqs), and copies only the
//! rest; a target that is not such a prefix (another store's data) is refused untouched.
//!
//! Not copied: the run registry (`put_run_info` rows; the daemon rebuilds it from the records
//! and the workers' heartbeats) and watermarks moved only by rejected records (a resend of a
//! rejected record is rejected again, so nothing is stored twice).

use std::collections::VecDeque;

use sha2::{Digest, Sha256};
use telemetry_core::pb::Record;

use crate::{BackendReader, BackendWriter, Filter, StoreError, StreamHeads};

/// Records read per page and appended per transaction.
pub const COPY_BATCH: usize = 1000;

/// The streams, in the order reports list them.
pub const STREAMS: [&str; 4] = ["steps", "episodes", "events", "scalars"];

/// Count, last seq and content digest of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamDigest {
    /// Records.
    pub count: u64,
    /// The last seq (0: empty).
    pub last_seq: u64,
    /// SHA-256 over every record in seq order (each: seq, length, protobuf encoding).
    pub sha256: [u8; 32],
}

impl StreamDigest {
    /// The digest in hex.
    pub fn hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Digests of the four streams, in [`STREAMS`] order.
pub type StoreDigest = [StreamDigest; 4];

/// What a copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Where each stream resumed (0: from the start).
    pub resumed_from: StreamHeads,
    /// Records copied by this call, per stream.
    pub copied: [u64; 4],
    /// The source's digests, equal to the target's after the copy.
    pub digest: StoreDigest,
}

/// Why a copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A store call failed (retryable ones may be retried by running the copy again).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The target holds records that are not the source's prefix: refused untouched.
    #[error(
        "the target is not empty and its {stream} are not a prefix of the source's ({target_count} records up to seq {target_last}); refusing to copy into it"
    )]
    NotAPrefix {
        /// The stream that differs.
        stream: &'static str,
        /// Its records in the target.
        target_count: u64,
        /// Its last seq in the target.
        target_last: u64,
    },
    /// The target numbered a record differently, or called it a duplicate: another writer is
    /// using the target, or the source breaks the watermark rule.
    #[error("{stream} seq {source_seq} of the source was {outcome} in the target")]
    Diverged {
        /// The stream.
        stream: &'static str,
        /// The source's seq.
        source_seq: u64,
        /// What the target did with it.
        outcome: String,
    },
    /// After the copy, the target's digest differs from the source's.
    #[error("verification failed: {stream} differ after the copy (source {source_digest}, target {target_digest})")]
    Verify {
        /// The stream.
        stream: &'static str,
        /// Source digest (count:hex).
        source_digest: String,
        /// Target digest (count:hex).
        target_digest: String,
    },
}

/// One page of a stream after `since`.
fn page(
    r: &dyn BackendReader,
    stream: usize,
    since: u64,
    limit: usize,
) -> Result<Vec<Record>, StoreError> {
    let all = Filter::default();
    Ok(match stream {
        0 => r
            .steps_page(since, &all, limit)?
            .into_iter()
            .map(Record::from)
            .collect(),
        1 => r
            .episodes_page(since, &all, limit)?
            .into_iter()
            .map(Record::from)
            .collect(),
        2 => r.events_page(since, None, limit)?,
        _ => r
            .scalars_page(since, &all, limit)?
            .into_iter()
            .map(Record::from)
            .collect(),
    })
}

fn head_of(h: &StreamHeads, stream: usize) -> u64 {
    [h.steps, h.episodes, h.events, h.scalars][stream]
}

fn feed(hasher: &mut Sha256, record: &Record) {
    let bytes = prost::Message::encode_to_vec(record);
    hasher.update(record.seq_id().to_le_bytes());
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(&bytes);
}

/// Counts and digests every stream of `r`, each up to seq `upto` (`None`: to its end).
pub fn digest(
    r: &dyn BackendReader,
    upto: Option<&StreamHeads>,
) -> Result<StoreDigest, StoreError> {
    let mut out = StoreDigest::default();
    for (stream, d) in out.iter_mut().enumerate() {
        let limit = upto.map(|h| head_of(h, stream));
        let mut hasher = Sha256::new();
        let mut since = 0;
        'pages: loop {
            let records = page(r, stream, since, COPY_BATCH)?;
            let short = records.len() < COPY_BATCH;
            for rec in &records {
                if limit.is_some_and(|l| rec.seq_id() > l) {
                    break 'pages;
                }
                feed(&mut hasher, rec);
                d.count += 1;
                d.last_seq = rec.seq_id();
                since = rec.seq_id();
            }
            if short {
                break;
            }
        }
        d.sha256 = hasher.finalize().into();
    }
    Ok(out)
}

/// The four streams of the source after the resume points, merged in an order that keeps
/// each producer's records in increasing `producer_seq`.
struct Merge<'a> {
    source: &'a dyn BackendReader,
    buf: [VecDeque<Record>; 4],
    cursor: [u64; 4],
    done: [bool; 4],
}

impl Merge<'_> {
    fn fill(&mut self, stream: usize) -> Result<(), StoreError> {
        if self.buf[stream].is_empty() && !self.done[stream] {
            let records = page(self.source, stream, self.cursor[stream], COPY_BATCH)?;
            self.done[stream] = records.len() < COPY_BATCH;
            if let Some(last) = records.last() {
                self.cursor[stream] = last.seq_id();
            }
            self.buf[stream].extend(records);
        }
        Ok(())
    }

    /// The next record and its stream.
    fn next(&mut self) -> Result<Option<(usize, Record)>, StoreError> {
        for s in 0..4 {
            self.fill(s)?;
        }
        let heads: Vec<(usize, &Record)> = (0..4)
            .filter_map(|s| self.buf[s].front().map(|r| (s, r)))
            .collect();
        // A head no other head of the same producer precedes (one always exists: the
        // smallest of any producer).
        let pick = heads
            .iter()
            .find(|(_, r)| {
                let (p, seq) = r.producer();
                p.is_empty()
                    || heads.iter().all(|(_, o)| {
                        let (op, oseq) = o.producer();
                        op != p || oseq >= seq
                    })
            })
            .or(heads.first())
            .map(|(s, _)| *s);
        Ok(pick.and_then(|s| self.buf[s].pop_front().map(|r| (s, r))))
    }
}

/// Copies what `source` has and `target` lacks, then verifies. `target_reader` reads the
/// target (it must see the target writer's commits).
pub fn copy_store(
    source: &dyn BackendReader,
    target: &mut dyn BackendWriter,
    target_reader: &dyn BackendReader,
) -> Result<CopyReport, CopyError> {
    // Where the target stands, and whether that is the source's prefix.
    let have = digest(target_reader, None)?;
    let resumed_from = StreamHeads {
        steps: have[0].last_seq,
        episodes: have[1].last_seq,
        events: have[2].last_seq,
        scalars: have[3].last_seq,
    };
    if have.iter().any(|d| d.count > 0) {
        let prefix = digest(source, Some(&resumed_from))?;
        for (s, (t, p)) in have.iter().zip(&prefix).enumerate() {
            if t != p {
                return Err(CopyError::NotAPrefix {
                    stream: STREAMS[s],
                    target_count: t.count,
                    target_last: t.last_seq,
                });
            }
        }
        tracing::info!(
            ?resumed_from,
            "the target holds a prefix of the source: resuming"
        );
    }
    let mut merge = Merge {
        source,
        buf: Default::default(),
        cursor: [
            resumed_from.steps,
            resumed_from.episodes,
            resumed_from.events,
            resumed_from.scalars,
        ],
        done: [false; 4],
    };
    let mut copied = [0u64; 4];
    loop {
        let mut batch = Vec::with_capacity(COPY_BATCH);
        let mut origin = Vec::with_capacity(COPY_BATCH);
        while batch.len() < COPY_BATCH {
            match merge.next()? {
                Some((s, r)) => {
                    origin.push((s, r.seq_id()));
                    batch.push(r);
                }
                None => break,
            }
        }
        if batch.is_empty() {
            break;
        }
        let report = target.append(&mut batch, &[])?;
        for ((s, want), outcome) in origin.iter().zip(&report.outcomes) {
            match outcome {
                crate::AppendOutcome::Stored { seq } if seq == want => copied[*s] += 1,
                other => {
                    return Err(CopyError::Diverged {
                        stream: STREAMS[*s],
                        source_seq: *want,
                        outcome: format!("{other:?}"),
                    })
                }
            }
        }
        tracing::debug!(?copied, "copied a batch");
    }
    let want = digest(source, None)?;
    let got = digest(target_reader, None)?;
    for (s, (w, g)) in want.iter().zip(&got).enumerate() {
        if w != g {
            return Err(CopyError::Verify {
                stream: STREAMS[s],
                source_digest: format!("{}:{}", w.count, w.hex()),
                target_digest: format!("{}:{}", g.count, g.hex()),
            });
        }
    }
    Ok(CopyReport {
        resumed_from,
        copied,
        digest: want,
    })
}
