//! The exactly-once rule: a producer's durable watermark and which records it admits.
//!
//! Every record a shim sends carries `(producer_id, producer_seq)`, with `producer_seq`
//! strictly increasing per producer. Whoever stores records (the daemon's store, the fake
//! ingest server of the shim's tests) keeps one [`Watermark`] per producer and applies the
//! same three rules, stated here once (docs/ARCHITECTURE.md, "Exactly once"):
//!
//! - a record at or below its producer's watermark is a duplicate and is dropped;
//! - a producer with no watermark yet admits every seq, `0` included;
//! - an admitted record advances the watermark to its seq, and so does a *rejected* one (a
//!   record refused by validation is never going to be stored, so a resend must be dropped
//!   as a duplicate too, or the producer would never see it acknowledged).
//!
//! The watermark only ever moves up: advancing to a seq at or below it changes nothing.
//!
//! A fourth rule keeps one bad record from poisoning a producer forever: a producer's seqs
//! may run ahead of its watermark (records in flight, records its shim dropped while
//! disconnected) but by at most [`MAX_SEQ_JUMP`] ([`Watermark::within_jump`]). Without it,
//! one record stamped `u64::MAX` would move the watermark to the top, every later record of
//! that producer would be a duplicate, and a shim adopting that watermark would overflow.
//! The daemon refuses such an append; a shim refuses to adopt such a watermark.

/// How far a producer's seq may run ahead of its durable watermark (a producer with no
/// watermark counts as at 0): `2^32`. Far beyond any real gap (a shim holds at most 1 GiB of
/// queue, millions of records, and a Publish stream a few batches in flight), far below the
/// `u64` range, so a watermark can never be walked to overflow by honest or dishonest seqs
/// in practice.
pub const MAX_SEQ_JUMP: u64 = 1 << 32;

/// A producer's durable watermark: the highest `producer_seq` stored (or rejected) so far, or
/// none before its first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Watermark(Option<u64>);

impl Watermark {
    /// A producer not seen yet: every seq is admitted.
    pub const NONE: Watermark = Watermark(None);

    /// A watermark at `seq` (records up to and including `seq` are duplicates).
    pub const fn at(seq: u64) -> Self {
        Watermark(Some(seq))
    }

    /// From a stored value, `None` when the producer has no watermark yet.
    pub const fn from_stored(seq: Option<u64>) -> Self {
        Watermark(seq)
    }

    /// The highest seq covered, `None` before the producer's first record.
    pub const fn get(self) -> Option<u64> {
        self.0
    }

    /// Whether the producer has a watermark yet.
    pub const fn is_known(self) -> bool {
        self.0.is_some()
    }

    /// The watermark as an ack reports it (`durable_seq`): `0` before the first record.
    pub fn durable_seq(self) -> u64 {
        self.0.unwrap_or(0)
    }

    /// Whether a record with `producer_seq` is new (above the watermark, or the first).
    pub fn admits(self, producer_seq: u64) -> bool {
        self.0.is_none_or(|w| producer_seq > w)
    }

    /// Whether a record with `producer_seq` was already stored or rejected: `!admits`.
    pub fn is_duplicate(self, producer_seq: u64) -> bool {
        !self.admits(producer_seq)
    }

    /// Whether `seq` is at most [`MAX_SEQ_JUMP`] past the watermark (past 0 for a producer
    /// with no watermark yet).
    pub fn within_jump(self, seq: u64) -> bool {
        seq <= self.durable_seq().saturating_add(MAX_SEQ_JUMP)
    }

    /// Moves the watermark up to `seq` after a record was stored or rejected. Returns whether
    /// it moved (false when `seq` is at or below it already).
    pub fn advance(&mut self, seq: u64) -> bool {
        if self.admits(seq) {
            self.0 = Some(seq);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_new_producer_admits_seq_zero() {
        let w = Watermark::NONE;
        assert!(w.admits(0));
        assert!(!w.is_duplicate(0));
        assert!(!w.is_known());
        assert_eq!(w.durable_seq(), 0);
        assert_eq!(Watermark::default(), Watermark::NONE);
    }

    #[test]
    fn a_record_at_or_below_the_watermark_is_a_duplicate() {
        let w = Watermark::at(5);
        assert!(w.is_duplicate(0));
        assert!(w.is_duplicate(5));
        assert!(w.admits(6));
        let zero = Watermark::at(0);
        assert!(zero.is_duplicate(0));
        assert!(zero.admits(1));
    }

    #[test]
    fn advance_moves_up_only() {
        let mut w = Watermark::NONE;
        assert!(w.advance(0));
        assert_eq!(w.get(), Some(0));
        assert!(w.advance(7));
        assert!(!w.advance(3));
        assert!(!w.advance(7));
        assert_eq!(w, Watermark::at(7));
        assert_eq!(w.durable_seq(), 7);
        assert_eq!(Watermark::from_stored(Some(7)), w);
        assert_eq!(Watermark::from_stored(None), Watermark::NONE);
    }

    #[test]
    fn seqs_may_run_ahead_of_the_watermark_by_at_most_max_seq_jump() {
        assert!(Watermark::NONE.within_jump(0));
        assert!(Watermark::NONE.within_jump(MAX_SEQ_JUMP));
        assert!(!Watermark::NONE.within_jump(MAX_SEQ_JUMP + 1));
        assert!(!Watermark::NONE.within_jump(u64::MAX));
        assert!(Watermark::at(10).within_jump(10 + MAX_SEQ_JUMP));
        assert!(!Watermark::at(10).within_jump(11 + MAX_SEQ_JUMP));
        assert!(Watermark::at(u64::MAX - 1).within_jump(u64::MAX));
    }

    proptest! {
        /// Feeding any sequence of seqs (stored or rejected alike) stores each distinct seq
        /// that is higher than everything before it exactly once, and the watermark ends at
        /// the maximum.
        #[test]
        fn the_watermark_is_the_running_maximum(seqs in prop::collection::vec(0u64..50, 0..40)) {
            let mut w = Watermark::NONE;
            let mut max: Option<u64> = None;
            for &s in &seqs {
                let new = max.is_none_or(|m| s > m);
                prop_assert_eq!(w.admits(s), new);
                prop_assert_eq!(w.is_duplicate(s), !new);
                prop_assert_eq!(w.advance(s), new);
                if new {
                    max = Some(s);
                }
                prop_assert_eq!(w.get(), max);
            }
        }

        /// A resend of anything already seen is always a duplicate.
        #[test]
        fn resends_are_duplicates(seqs in prop::collection::vec(any::<u64>(), 1..20)) {
            let mut w = Watermark::NONE;
            for &s in &seqs {
                w.advance(s);
            }
            for &s in &seqs {
                prop_assert!(w.is_duplicate(s));
            }
        }
    }
}
