//! The Runs table: what `WatchRuns` (states, pushed live) and `ListRuns` (counts, polled) say
//! about every run, merged per run id, plus the step rate measured between two polls.

use std::{
    collections::BTreeMap,
    time::{Instant, SystemTime},
};

use telemetry_core::pb::{RunInfo, RunState, RunSummary};

/// Most runs kept in the table (the oldest finished ones are forgotten first).
pub const MAX_RUNS: usize = 10_000;

/// One row of the Runs table.
#[derive(Debug, Clone, Default)]
pub struct RunRow {
    /// The run.
    pub run_id: String,
    /// Its registry entry, when the daemon started it.
    pub info: Option<RunInfo>,
    /// Its stored counts, from the last `ListRuns` poll.
    pub summary: Option<RunSummary>,
    /// Steps per second between the last two polls.
    pub steps_per_sec: Option<f64>,
    prev: Option<(u64, Instant)>,
    order: u64,
}

impl RunRow {
    /// The run's state: the registry's when it has one (pushed live), else the store's.
    pub fn state(&self) -> RunState {
        let from_info = self
            .info
            .as_ref()
            .map(|i| i.state())
            .filter(|s| *s != RunState::Unspecified);
        from_info
            .or_else(|| self.summary.as_ref().map(|s| s.state()))
            .unwrap_or(RunState::Unspecified)
    }

    /// Whether the run has ended.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.state(),
            RunState::Completed | RunState::Failed | RunState::Cancelled
        )
    }

    /// Every agent the store or the registry named, in a stable order.
    pub fn agents(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .summary
            .as_ref()
            .map(|s| s.agent_ids.clone())
            .unwrap_or_default();
        if let Some(i) = &self.info {
            if !i.agent_id.is_empty() {
                out.push(i.agent_id.clone());
            }
        }
        out.retain(|a| !a.is_empty());
        out.sort();
        out.dedup();
        out
    }

    /// Control modes, comma separated ("" when nobody said).
    pub fn control_modes(&self) -> String {
        let mut modes: Vec<String> = self
            .summary
            .as_ref()
            .map(|s| s.control_modes.clone())
            .unwrap_or_default();
        if let Some(i) = &self.info {
            modes.push(i.control_mode.clone());
        }
        modes.retain(|m| !m.is_empty());
        modes.sort();
        modes.dedup();
        modes.join(",")
    }

    /// Why it failed, when it did.
    pub fn failure_reason(&self) -> &str {
        match (&self.info, &self.summary) {
            (Some(i), _) if !i.failure_reason.is_empty() => &i.failure_reason,
            (_, Some(s)) => &s.failure_reason,
            _ => "",
        }
    }

    /// Seconds since the last stored record, for a running run.
    pub fn lag_secs(&self, now: SystemTime) -> Option<f64> {
        if self.state() != RunState::Running {
            return None;
        }
        let ts = self.summary.as_ref()?.last_timestamp.as_ref()?;
        let last = telemetry_core::timestamp::to_unix_nanos(ts);
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_nanos()).ok())?;
        Some((now.saturating_sub(last)).max(0) as f64 / 1e9)
    }
}

/// All runs the viewer knows, with a selection.
#[derive(Debug, Default)]
pub struct RunsTable {
    rows: BTreeMap<String, RunRow>,
    next_order: u64,
    /// The selected run.
    pub selected: Option<String>,
    /// Runs forgotten because the table was full.
    pub evicted: u64,
}

impl RunsTable {
    /// A row by run id.
    pub fn get(&self, run_id: &str) -> Option<&RunRow> {
        self.rows.get(run_id)
    }

    /// Number of runs.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no run is known.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn row_mut(&mut self, run_id: &str) -> &mut RunRow {
        if !self.rows.contains_key(run_id) {
            self.evict_if_full();
            let order = self.next_order;
            self.next_order += 1;
            self.rows.insert(
                run_id.to_owned(),
                RunRow {
                    run_id: run_id.to_owned(),
                    order,
                    ..Default::default()
                },
            );
        }
        // Inserted just above when missing.
        self.rows.entry(run_id.to_owned()).or_default()
    }

    fn evict_if_full(&mut self) {
        if self.rows.len() < MAX_RUNS {
            return;
        }
        let victim = self
            .rows
            .values()
            .min_by_key(|r| (!r.is_finished(), r.order))
            .map(|r| r.run_id.clone());
        if let Some(v) = victim {
            self.rows.remove(&v);
            self.evicted += 1;
        }
    }

    /// Merges a registry update.
    pub fn apply_info(&mut self, info: RunInfo) {
        if info.run_id.is_empty() {
            return;
        }
        let row = self.row_mut(&info.run_id.clone());
        row.info = Some(info);
        self.ensure_selection();
    }

    /// Merges a `ListRuns` answer taken at `at`.
    pub fn apply_summaries(&mut self, runs: Vec<RunSummary>, at: Instant) {
        for s in runs {
            if s.run_id.is_empty() {
                continue;
            }
            let row = self.row_mut(&s.run_id.clone());
            if let Some((prev_steps, prev_at)) = row.prev {
                let dt = at.saturating_duration_since(prev_at).as_secs_f64();
                if dt > 0.0 {
                    row.steps_per_sec = Some(s.step_count.saturating_sub(prev_steps) as f64 / dt);
                }
            }
            row.prev = Some((s.step_count, at));
            row.summary = Some(s);
        }
        self.ensure_selection();
    }

    /// Rows in display order: running first, then newest first.
    pub fn ordered(&self) -> Vec<&RunRow> {
        let mut v: Vec<&RunRow> = self.rows.values().collect();
        v.sort_by_key(|r| (r.is_finished(), std::cmp::Reverse(r.order)));
        v
    }

    /// Index of the selected row in [`RunsTable::ordered`].
    pub fn selected_index(&self) -> Option<usize> {
        let sel = self.selected.as_deref()?;
        self.ordered().iter().position(|r| r.run_id == sel)
    }

    /// Moves the selection by `delta` rows (clamped).
    pub fn move_selection(&mut self, delta: isize) {
        let ordered: Vec<String> = self.ordered().iter().map(|r| r.run_id.clone()).collect();
        if ordered.is_empty() {
            return;
        }
        let cur = self.selected_index().unwrap_or(0) as isize;
        let next = (cur + delta).clamp(0, ordered.len() as isize - 1) as usize;
        self.selected = ordered.get(next).cloned();
    }

    fn ensure_selection(&mut self) {
        let valid = self
            .selected
            .as_ref()
            .is_some_and(|s| self.rows.contains_key(s));
        if !valid {
            self.selected = self.ordered().first().map(|r| r.run_id.clone());
        }
    }
}
