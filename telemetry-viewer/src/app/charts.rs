//! The Charts tab of a run: its learning curves, grouped by tag prefix, kept live.
//!
//! The curves come from `ReadScalars`, the store's downsampled read (min/max/last per step
//! bucket), never from a stream of every point: a run of ten million points costs the viewer
//! [`CHART_POINTS`] buckets per tag, however long it trained. While the tab is shown and the
//! run is live the read is repeated every [`CHARTS_REFRESH`]; one read is in flight at most,
//! and a finished run is read once more and then left alone.

use std::time::{Duration, Instant};

use telemetry_core::pb::{ReadScalarsRequest, ScalarSeries};

use super::StreamId;

/// How often a shown Charts tab of a live run reads its curves again.
pub const CHARTS_REFRESH: Duration = Duration::from_secs(1);
/// Buckets per curve (about two per terminal column of a wide screen).
pub const CHART_POINTS: u32 = 400;
/// Curves drawn at once in a group (the rest are listed by name).
pub const MAX_CHARTS_SHOWN: usize = 4;

/// The tag group of a tag: what comes before its first `/` (`""` for a tag without one).
pub fn group_of(tag: &str) -> &str {
    tag.split_once('/').map_or("", |(g, _)| g)
}

/// The Charts state of one run.
#[derive(Debug, Clone, Default)]
pub struct Charts {
    /// The run.
    pub run_id: String,
    /// Every curve of the last answer, sorted by tag then agent.
    pub series: Vec<ScalarSeries>,
    /// Index into [`Charts::groups`] of the shown group.
    pub selected: usize,
    /// The read in flight.
    pub(crate) in_flight: Option<StreamId>,
    /// When the last answer came.
    pub(crate) last_read: Option<Instant>,
    /// The last read's error, if it failed.
    pub error: Option<String>,
    /// Reads answered so far.
    pub reads: u64,
    /// The run has ended and its final curves were read.
    pub(crate) final_read: bool,
}

impl Charts {
    /// Charts of `run_id`, nothing read yet.
    pub fn new(run_id: impl Into<String>) -> Self {
        Charts {
            run_id: run_id.into(),
            ..Charts::default()
        }
    }

    /// The tag groups, in order (`""` for tags without a `/`).
    pub fn groups(&self) -> Vec<&str> {
        let mut g: Vec<&str> = self.series.iter().map(|s| group_of(&s.tag)).collect();
        g.dedup();
        g
    }

    /// The shown group's name, if there are curves.
    pub fn selected_group(&self) -> Option<&str> {
        self.groups().get(self.selected).copied()
    }

    /// The curves of the shown group.
    pub fn shown(&self) -> Vec<&ScalarSeries> {
        let Some(g) = self.selected_group() else {
            return Vec::new();
        };
        self.series
            .iter()
            .filter(|s| group_of(&s.tag) == g)
            .collect()
    }

    /// Moves the group selection by `delta`, wrapping.
    pub fn move_group(&mut self, delta: isize) {
        let n = self.groups().len() as isize;
        if n > 0 {
            self.selected = (self.selected as isize + delta).rem_euclid(n) as usize;
        }
    }

    /// The request of one read.
    pub fn request(&self) -> ReadScalarsRequest {
        ReadScalarsRequest {
            run_id: self.run_id.clone(),
            max_points: CHART_POINTS,
            ..Default::default()
        }
    }

    /// Whether a read is due at `now`, for a run that is `live` (not finished).
    pub(crate) fn due(&self, now: Instant, live: bool) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        match self.last_read {
            None => true,
            Some(_) if !live => !self.final_read,
            Some(t) => now.saturating_duration_since(t) >= CHARTS_REFRESH,
        }
    }

    /// Takes an answer (keeping the shown group by name when it still exists).
    pub(crate) fn apply(
        &mut self,
        result: Result<Vec<ScalarSeries>, String>,
        now: Instant,
        live: bool,
    ) {
        self.in_flight = None;
        self.last_read = Some(now);
        self.reads += 1;
        match result {
            Ok(series) => {
                let keep = self.selected_group().map(str::to_owned);
                self.series = series;
                self.error = None;
                self.selected = keep
                    .and_then(|k| self.groups().iter().position(|g| *g == k))
                    .unwrap_or(0);
                if !live {
                    self.final_read = true;
                }
            }
            Err(e) => self.error = Some(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(tag: &str) -> ScalarSeries {
        ScalarSeries {
            tag: tag.into(),
            ..Default::default()
        }
    }

    #[test]
    fn curves_are_grouped_by_prefix_and_the_selection_survives_a_refresh() {
        let mut c = Charts::new("r");
        let now = Instant::now();
        c.apply(
            Ok(vec![
                series("charts/SPS"),
                series("losses/td_loss"),
                series("losses/q_values"),
            ]),
            now,
            true,
        );
        assert_eq!(c.groups(), vec!["charts", "losses"]);
        c.move_group(1);
        assert_eq!(c.shown().len(), 2);
        c.apply(
            Ok(vec![
                series("a"),
                series("charts/SPS"),
                series("losses/td_loss"),
                series("losses/q_values"),
            ]),
            now,
            true,
        );
        assert_eq!(c.selected_group(), Some("losses"));
        c.move_group(1);
        assert_eq!(c.selected_group(), Some(""));
    }

    #[test]
    fn reads_are_due_once_per_refresh_while_live_and_once_more_after_the_end() {
        let mut c = Charts::new("r");
        let t0 = Instant::now();
        assert!(c.due(t0, true));
        c.in_flight = Some(StreamId(1));
        assert!(!c.due(t0, true));
        c.apply(Ok(vec![]), t0, true);
        assert!(!c.due(t0 + CHARTS_REFRESH / 2, true));
        assert!(c.due(t0 + CHARTS_REFRESH, true));
        assert!(c.due(t0, false), "the final read of a finished run");
        c.apply(Ok(vec![]), t0, false);
        assert!(!c.due(t0 + CHARTS_REFRESH * 10, false));
        c.apply(Err("down".into()), t0, true);
        assert_eq!(c.error.as_deref(), Some("down"));
    }
}
