//! Producer fences: no batch of a producer commits past one of its own failed batches.
//!
//! The rule, evaluated on the writer thread when an append joins a group (so it sees every
//! earlier group's outcome):
//!
//! - An append that fails fences each of its producers, remembering the producer's durable
//!   watermark and the newest stream epoch opened so far.
//! - A later append carrying records of a fenced producer is admitted when
//!   - it comes on a stream opened after the failure (a reconnect resends from the last ack), or
//!   - its first seq for the producer is at most one past what is durable or already admitted
//!     into the group being built (it continues without a hole).
//!
//!   Anything else (the rest of a stale stream's pipeline, a pipelined unary call) is refused
//!   with [`WriteError::Fenced`](super::WriteError::Fenced) and nothing of it is stored.
//! - Successful commits keep the fence's watermark current. Fences expire after
//!   [`FENCE_TTL`] (longer than any stale stream can still be queueing) and are bounded by
//!   [`MAX_FENCES`](super::MAX_FENCES), the oldest dropped first and counted.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// How long a fence outlives the failure that set it.
pub const FENCE_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
struct Fence {
    durable: u64,
    /// Highest seq admitted into the group being built (cleared when it commits or fails).
    pending: Option<u64>,
    opened_before: u64,
    at: Instant,
}

/// The fences of the writer thread.
#[derive(Debug)]
pub struct Fences {
    map: HashMap<String, Fence>,
    cap: usize,
    /// Fences dropped because the map was full.
    pub evicted: u64,
}

/// A producer's seq range in one append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The producer.
    pub producer: String,
    /// Its lowest seq in the append.
    pub first: u64,
    /// Its highest seq in the append.
    pub last: u64,
}

impl Fences {
    /// No fences; at most `cap` at once.
    pub fn new(cap: usize) -> Self {
        Fences {
            map: HashMap::new(),
            cap: cap.max(1),
            evicted: 0,
        }
    }

    /// Producers fenced now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether an append with these spans from a stream of `epoch` may join the group; on
    /// refusal, the producer and the watermark it must resend from.
    pub fn admit(&mut self, spans: &[Span], epoch: u64, now: Instant) -> Result<(), (String, u64)> {
        if self.map.is_empty() {
            return Ok(());
        }
        for s in spans {
            let Some(f) = self.map.get(&s.producer) else {
                continue;
            };
            if now.saturating_duration_since(f.at) > FENCE_TTL {
                self.map.remove(&s.producer);
                continue;
            }
            let upto = f.durable.max(f.pending.unwrap_or(0));
            if epoch <= f.opened_before && s.first > upto.saturating_add(1) {
                return Err((s.producer.clone(), f.durable));
            }
        }
        for s in spans {
            if let Some(f) = self.map.get_mut(&s.producer) {
                f.pending = Some(f.pending.unwrap_or(0).max(s.last));
            }
        }
        Ok(())
    }

    /// The group committed: these are its producers' watermarks now.
    pub fn committed(&mut self, watermarks: &[(String, u64)]) {
        if self.map.is_empty() {
            return;
        }
        for (p, w) in watermarks {
            if let Some(f) = self.map.get_mut(p) {
                f.durable = f.durable.max(*w);
                f.pending = None;
            }
        }
    }

    /// The group failed: fence each of `producers` at its durable watermark (`durable(p)`,
    /// `None` when it cannot be read: the fence keeps what it knew). `newest_epoch` is the
    /// newest stream epoch opened so far.
    pub fn failed<'a>(
        &mut self,
        producers: impl IntoIterator<Item = &'a str>,
        mut durable: impl FnMut(&str) -> Option<u64>,
        newest_epoch: u64,
        now: Instant,
    ) {
        for p in producers {
            let known = durable(p);
            if let Some(f) = self.map.get_mut(p) {
                f.durable = known.unwrap_or(f.durable);
                f.pending = None;
                f.opened_before = newest_epoch;
                f.at = now;
                continue;
            }
            if self.map.len() >= self.cap {
                if let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, f)| f.at)
                    .map(|(k, _)| k.clone())
                {
                    self.map.remove(&oldest);
                    self.evicted += 1;
                }
            }
            self.map.insert(
                p.to_owned(),
                Fence {
                    durable: known.unwrap_or(0),
                    pending: None,
                    opened_before: newest_epoch,
                    at: now,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(p: &str, first: u64, last: u64) -> Span {
        Span {
            producer: p.into(),
            first,
            last,
        }
    }

    #[test]
    fn a_stale_batch_past_the_failure_is_refused_and_a_resend_is_admitted() {
        let now = Instant::now();
        let mut f = Fences::new(8);
        // Batch 1..=10 of stream epoch 1 failed; the producer had 0 durable.
        f.failed(["p"], |_| Some(0), 1, now);
        assert_eq!(f.admit(&[span("p", 11, 20)], 1, now), Err(("p".into(), 0)));
        // The same stream resending from the watermark is admitted, and so is what follows it
        // in the same group.
        assert_eq!(f.admit(&[span("p", 1, 10)], 1, now), Ok(()));
        assert_eq!(f.admit(&[span("p", 11, 20)], 1, now), Ok(()));
        assert_eq!(f.admit(&[span("p", 31, 40)], 1, now), Err(("p".into(), 0)));
        // Other producers are not fenced.
        assert_eq!(f.admit(&[span("q", 100, 200)], 1, now), Ok(()));
    }

    #[test]
    fn a_stream_opened_after_the_failure_is_admitted_and_commits_move_the_fence() {
        let now = Instant::now();
        let mut f = Fences::new(8);
        f.failed(["p"], |_| Some(5), 3, now);
        assert!(f.admit(&[span("p", 20, 30)], 3, now).is_err());
        assert_eq!(f.admit(&[span("p", 6, 9)], 4, now), Ok(()), "a reconnect");
        f.committed(&[("p".into(), 9)]);
        // A stale batch of the old stream is now judged against the new watermark.
        assert_eq!(f.admit(&[span("p", 10, 12)], 2, now), Ok(()));
        f.committed(&[("p".into(), 12)]);
        assert!(f.admit(&[span("p", 14, 15)], 2, now).is_err());
    }

    #[test]
    fn an_unreadable_watermark_keeps_the_last_known_and_fences_expire() {
        let now = Instant::now();
        let mut f = Fences::new(8);
        f.failed(["p"], |_| Some(7), 1, now);
        f.failed(["p"], |_| None, 1, now);
        assert_eq!(f.admit(&[span("p", 9, 9)], 1, now), Err(("p".into(), 7)));
        let later = now + FENCE_TTL + Duration::from_secs(1);
        assert_eq!(f.admit(&[span("p", 9, 9)], 1, later), Ok(()));
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn fences_are_bounded_and_evictions_counted() {
        let now = Instant::now();
        let mut f = Fences::new(2);
        f.failed(["a"], |_| Some(0), 1, now);
        f.failed(["b"], |_| Some(0), 1, now + Duration::from_millis(1));
        f.failed(["c"], |_| Some(0), 1, now + Duration::from_millis(2));
        assert_eq!(f.len(), 2);
        assert_eq!(f.evicted, 1);
        assert_eq!(
            f.admit(&[span("a", 9, 9)], 1, now),
            Ok(()),
            "oldest dropped"
        );
    }
}
