//! Learning curves out of the store: the tags of a run, and a downsampled read.
//!
//! A training run logs a scalar per tag every few hundred steps for days: tens of millions of
//! points. A viewer drawing a curve 1,000 pixels wide needs 1,000 points, and it must not lose
//! the spike that diverged. So a read is computed here, next to the data, as **min/max/last per
//! step bucket**: the step range is cut into at most `max_points` equal buckets and each bucket
//! keeps its extremes (so no spike disappears, unlike a reservoir sample) and its last value (so
//! the curve's level is honest). One range scan per series over the covering index
//! `scalars_series`, in step order; memory is O(`max_points`) whatever the series' length, and
//! no read ever loads a run whole.
//!
//! Rules:
//! - A series is one `(tag, agent_id)` of a run (`agent_id` empty: run-wide).
//! - `min`/`max` are over the bucket's non-NaN values (infinities included); NaN only when every
//!   value is NaN. `nan_count` says how many NaNs the bucket had. `last` is the value at the
//!   bucket's last step, the latest stored when that step was logged twice; it may be NaN.
//! - A series with at most `max_points` points in range comes back point by point.
//! - Which series exist, and their step ranges, come from `scalar_tags` (kept by every append),
//!   never from a scan.

use rusqlite::ToSql;
use telemetry_core::{
    pb::{ScalarBucket, ScalarSeries, TagSummary},
    timestamp::from_unix_nanos,
};

use crate::{rows::u64_from_sql, StoreError, StoreReader};

/// Buckets per series when a read asks for 0.
pub const DEFAULT_BUCKETS: usize = 1000;
/// The most buckets per series a read returns.
pub const MAX_BUCKETS: usize = 10_000;
/// The most series one read returns (the first ones by tag, then agent).
pub const MAX_SERIES: usize = 1024;

/// What one append adds to a series' summary (the `scalar_tags` row of SQLite, the same table on
/// every backend): points, the step range, and the value at the highest step (the latest stored
/// when a step repeats). Every backend folds its batch's scalars here, then merges the result
/// into its stored row with the same rule.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesDelta {
    /// Points added.
    pub points: u64,
    /// Lowest step added.
    pub first_step: i64,
    /// Highest step added.
    pub last_step: i64,
    /// The value at `last_step`.
    pub last_value: f64,
    /// Its wall time (Unix nanoseconds).
    pub last_ts: Option<i64>,
    /// Highest seq added.
    pub last_seq: u64,
}

impl SeriesDelta {
    /// The delta of one scalar stored as `seq`.
    pub fn new(s: &telemetry_core::pb::Scalar, seq: u64) -> Self {
        SeriesDelta {
            points: 1,
            first_step: s.step,
            last_step: s.step,
            last_value: s.value,
            last_ts: s
                .timestamp
                .as_ref()
                .map(telemetry_core::timestamp::to_unix_nanos),
            last_seq: seq,
        }
    }

    /// Adds one more scalar of the series, stored as `seq` (seqs come in increasing order).
    pub fn add(&mut self, s: &telemetry_core::pb::Scalar, seq: u64) {
        self.points += 1;
        self.first_step = self.first_step.min(s.step);
        if s.step >= self.last_step {
            self.last_step = s.step;
            self.last_value = s.value;
            self.last_ts = s
                .timestamp
                .as_ref()
                .map(telemetry_core::timestamp::to_unix_nanos);
        }
        self.last_seq = self.last_seq.max(seq);
    }
}

/// What a downsampled read selects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScalarQuery {
    /// The run.
    pub run_id: String,
    /// Exact tags; with `tag_prefix`, a tag matching either is read. Both empty: every tag.
    pub tags: Vec<String>,
    /// Tags starting with this (`"losses/"`).
    pub tag_prefix: Option<String>,
    /// Only this agent (`Some("")`: only run-wide scalars).
    pub agent_id: Option<String>,
    /// Inclusive step range.
    pub min_step: Option<i64>,
    /// Inclusive step range.
    pub max_step: Option<i64>,
    /// Buckets per series (0: [`DEFAULT_BUCKETS`]; capped at [`MAX_BUCKETS`]).
    pub max_points: usize,
}

impl ScalarQuery {
    /// Whether a tag is selected.
    pub fn selects(&self, tag: &str) -> bool {
        let by_prefix = self
            .tag_prefix
            .as_deref()
            .is_some_and(|p| tag.starts_with(p));
        let none_given = self.tags.is_empty() && self.tag_prefix.is_none();
        none_given || by_prefix || self.tags.iter().any(|t| t == tag)
    }
}

/// A point as the downsampler takes it: step, value, seq, wall time (Unix ns, 0 for none).
type Point = (i64, f64, u64, i64);

/// One bucket under construction.
#[derive(Debug)]
struct Fold {
    b: ScalarBucket,
    last_seq: u64,
}

impl Fold {
    fn new(step: i64) -> Self {
        Fold {
            b: ScalarBucket {
                first_step: step,
                last_step: step,
                min: f64::NAN,
                max: f64::NAN,
                last: f64::NAN,
                count: 0,
                nan_count: 0,
                last_time_ns: 0,
            },
            last_seq: 0,
        }
    }

    /// Adds a point; points come in step order.
    fn add(&mut self, step: i64, value: f64, seq: u64, time_ns: i64) {
        let b = &mut self.b;
        b.count += 1;
        if value.is_nan() {
            b.nan_count += 1;
        } else {
            b.min = if b.min.is_nan() {
                value
            } else {
                b.min.min(value)
            };
            b.max = if b.max.is_nan() {
                value
            } else {
                b.max.max(value)
            };
        }
        if step > b.last_step || (step == b.last_step && seq >= self.last_seq) || b.count == 1 {
            b.last_step = step;
            b.last = value;
            b.last_time_ns = time_ns;
            self.last_seq = seq;
        }
    }
}

/// The bucket of a step: `(step - lo) / width`, in i128 so no range overflows.
fn bucket_of(step: i64, lo: i64, width: i128) -> i128 {
    (i128::from(step) - i128::from(lo)) / width
}

/// Downsamples one series' points (in step order) into at most `n` buckets of `[lo, hi]`, by
/// the module's rules. Public so every backend computes the same buckets next to its data
/// (push the points of a `(run, tag, agent)` in step order, then `finish`).
#[derive(Debug)]
pub struct Downsampler {
    n: usize,
    lo: i64,
    width: i128,
    /// Points kept as they are while there are at most `n`.
    raw: Vec<Point>,
    bucketed: bool,
    buckets: Vec<ScalarBucket>,
    current: Option<(i128, Fold)>,
    points: u64,
}

impl Downsampler {
    /// At most `n` buckets (at least 1) over the inclusive step range `[lo, hi]`.
    pub fn new(n: usize, lo: i64, hi: i64) -> Self {
        let n = n.max(1);
        let span = i128::from(hi) - i128::from(lo) + 1;
        let n128 = n as i128;
        Downsampler {
            n,
            lo,
            width: ((span + n128 - 1) / n128).max(1),
            raw: Vec::new(),
            bucketed: false,
            buckets: Vec::new(),
            current: None,
            points: 0,
        }
    }

    /// Adds a point (in step order; `seq` orders two points of the same step; `time_ns` is its
    /// wall time in Unix nanoseconds, 0 when it has none).
    pub fn push(&mut self, step: i64, value: f64, seq: u64, time_ns: i64) {
        self.points += 1;
        let p = (step, value, seq, time_ns);
        if !self.bucketed {
            self.raw.push(p);
            if self.raw.len() <= self.n {
                return;
            }
            self.bucketed = true;
            for q in std::mem::take(&mut self.raw) {
                self.fold(q);
            }
            return;
        }
        self.fold(p);
    }

    fn fold(&mut self, (step, value, seq, time_ns): Point) {
        let idx = bucket_of(step, self.lo, self.width);
        match &mut self.current {
            Some((i, f)) if *i == idx => f.add(step, value, seq, time_ns),
            _ => {
                if let Some((_, done)) = self.current.take() {
                    self.buckets.push(done.b);
                }
                let mut f = Fold::new(step);
                f.add(step, value, seq, time_ns);
                self.current = Some((idx, f));
            }
        }
    }

    /// The number of points pushed and the buckets.
    pub fn finish(mut self) -> (u64, Vec<ScalarBucket>) {
        if !self.bucketed {
            let out = self
                .raw
                .into_iter()
                .map(|(s, v, q, t)| {
                    let mut f = Fold::new(s);
                    f.add(s, v, q, t);
                    f.b
                })
                .collect();
            return (self.points, out);
        }
        if let Some((_, done)) = self.current.take() {
            self.buckets.push(done.b);
        }
        (self.points, self.buckets)
    }
}

const SERIES_SQL: &str = "SELECT step, value, seq, ts_ns FROM scalars INDEXED BY scalars_series \
     WHERE run_id = ?1 AND tag = ?2 AND agent_id = ?3 AND step >= ?4 AND step <= ?5 \
     ORDER BY step";

impl StoreReader {
    /// Every series (tag and agent) of a run, sorted by tag then agent, at most `limit`
    /// (capped at [`crate::reader::MAX_PAGE`]).
    pub fn list_tags(&self, run_id: &str, limit: usize) -> Result<Vec<TagSummary>, StoreError> {
        let limit = limit.min(crate::reader::MAX_PAGE) as i64;
        let mut stmt = self
            .conn()
            .prepare_cached(
                "SELECT tag, agent_id, points, first_step, last_step, last_value, last_ts_ns \
                 FROM scalar_tags WHERE run_id = ?1 ORDER BY tag, agent_id LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(rusqlite::params![run_id, limit], |r| {
                Ok(TagSummary {
                    tag: r.get(0)?,
                    agent_id: r.get(1)?,
                    points: u64_from_sql(r.get(2)?),
                    first_step: r.get(3)?,
                    last_step: r.get(4)?,
                    last_value: r.get::<_, Option<f64>>(5)?.unwrap_or(f64::NAN),
                    last_timestamp: r.get::<_, Option<i64>>(6)?.map(from_unix_nanos),
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// The downsampled read: for each selected series (at most [`MAX_SERIES`]), its points in
    /// the step range as at most `max_points` min/max/last buckets (see the module rules).
    pub fn read_scalars(&self, q: &ScalarQuery) -> Result<Vec<ScalarSeries>, StoreError> {
        let n = match q.max_points {
            0 => DEFAULT_BUCKETS,
            n => n.min(MAX_BUCKETS),
        };
        let series: Vec<TagSummary> = self
            .list_tags(&q.run_id, crate::reader::MAX_PAGE)?
            .into_iter()
            .filter(|t| q.selects(&t.tag))
            .filter(|t| q.agent_id.as_deref().is_none_or(|a| a == t.agent_id))
            .take(MAX_SERIES)
            .collect();
        let mut stmt = self
            .conn()
            .prepare_cached(SERIES_SQL)
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(series.len());
        for t in series {
            let lo = q.min_step.map_or(t.first_step, |m| m.max(t.first_step));
            let hi = q.max_step.map_or(t.last_step, |m| m.min(t.last_step));
            let mut s = ScalarSeries {
                tag: t.tag,
                agent_id: t.agent_id,
                points: 0,
                buckets: Vec::new(),
            };
            if lo <= hi {
                let mut d = Downsampler::new(n, lo, hi);
                let params: [&dyn ToSql; 5] = [&q.run_id, &s.tag, &s.agent_id, &lo, &hi];
                let mut rows = stmt.query(params.as_slice()).map_err(|e| self.err(e))?;
                while let Some(row) = rows.next().map_err(|e| self.err(e))? {
                    let step: i64 = row.get(0).map_err(|e| self.err(e))?;
                    let value: Option<f64> = row.get(1).map_err(|e| self.err(e))?;
                    let seq: i64 = row.get(2).map_err(|e| self.err(e))?;
                    let time_ns: Option<i64> = row.get(3).map_err(|e| self.err(e))?;
                    d.push(
                        step,
                        value.unwrap_or(f64::NAN),
                        u64_from_sql(seq),
                        time_ns.unwrap_or(0),
                    );
                }
                (s.points, s.buckets) = d.finish();
            }
            out.push(s);
        }
        Ok(out)
    }

    /// The plain read the downsampled one replaces: every `(step, value)` of one series in
    /// step order, collected (for benchmarks and tests; never on a server's path).
    pub fn scalar_points(
        &self,
        run_id: &str,
        tag: &str,
        agent_id: &str,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare_cached(
                "SELECT step, value FROM scalars WHERE run_id = ?1 AND tag = ?2 \
                 AND agent_id = ?3 ORDER BY step",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(rusqlite::params![run_id, tag, agent_id], |r| {
                Ok((r.get(0)?, r.get::<_, Option<f64>>(1)?.unwrap_or(f64::NAN)))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(points: &[(i64, f64)], n: usize) -> (u64, Vec<ScalarBucket>) {
        let lo = points.iter().map(|p| p.0).min().unwrap_or(0);
        let hi = points.iter().map(|p| p.0).max().unwrap_or(0);
        let mut d = Downsampler::new(n, lo, hi);
        for (i, (s, v)) in points.iter().enumerate() {
            d.push(*s, *v, i as u64 + 1, s.wrapping_mul(1_000));
        }
        d.finish()
    }

    #[test]
    fn few_points_come_back_one_by_one() {
        let (points, b) = run(&[(0, 1.0), (1, 2.0), (1_000_000, 3.0)], 3);
        assert_eq!(points, 3);
        let steps: Vec<_> = b.iter().map(|b| (b.first_step, b.last)).collect();
        assert_eq!(steps, [(0, 1.0), (1, 2.0), (1_000_000, 3.0)]);
        // `run` stamps each point with 1000 x its step.
        assert!(b.iter().all(|b| b.last_time_ns == b.last_step * 1_000));
    }

    #[test]
    fn buckets_keep_spikes_nan_and_the_last_value() {
        // 1000 points, 10 buckets of 100 steps; a spike at step 250 and a NaN at step 420.
        let mut pts: Vec<(i64, f64)> = (0..1000).map(|s| (s, s as f64 / 1000.0)).collect();
        pts[250].1 = 1e9;
        pts[420].1 = f64::NAN;
        let (points, b) = run(&pts, 10);
        assert_eq!(points, 1000);
        assert_eq!(b.len(), 10);
        assert_eq!(b.iter().map(|b| b.count).sum::<u64>(), 1000);
        assert_eq!(b[2].max, 1e9);
        assert_eq!((b[2].first_step, b[2].last_step), (200, 299));
        assert_eq!(b[2].last, 0.299);
        assert_eq!(b[4].nan_count, 1);
        assert_eq!(b[4].min, 0.4);
        assert_eq!(b[9].last, 0.999);
        assert_eq!(
            b[2].last_time_ns, 299_000,
            "the time of the bucket's last point"
        );
    }

    #[test]
    fn a_step_logged_twice_keeps_the_later_value_as_last() {
        let mut pts: Vec<(i64, f64)> = (0..20).map(|s| (s, 0.0)).collect();
        pts.push((19, 5.0));
        let (_, b) = run(&pts, 2);
        assert_eq!(b[1].last, 5.0);
        assert_eq!(b[1].count, 11);
    }

    #[test]
    fn extreme_step_ranges_do_not_overflow() {
        let (_, b) = run(&[(0, 1.0), (i64::MAX / 2, 2.0), (i64::MAX, 3.0)], 2);
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].last, 3.0);
    }

    #[test]
    fn all_nan_buckets_say_so() {
        let pts: Vec<(i64, f64)> = (0..10).map(|s| (s, f64::NAN)).collect();
        let (_, b) = run(&pts, 1);
        assert!(b[0].min.is_nan() && b[0].max.is_nan() && b[0].last.is_nan());
        assert_eq!(b[0].nan_count, 10);
    }
}
