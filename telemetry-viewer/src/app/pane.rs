//! The state behind one agent of one open run (its Grid, Raw, Episodes and Replay tabs).
//!
//! Steps and episodes arrive in batches from the daemon's rate-limited streams; everything kept
//! here is bounded (the last [`RAW_KEEP`] steps, the last [`EPISODES_KEEP`] episodes, the last
//! [`NOTICES_KEEP`] notices) and what was let go is counted so the views can say so. `seq` is the
//! resume point: a stream re-opened after a tab switch or a lost connection starts after the last
//! seq seen, and records at or below it are skipped.

use std::collections::VecDeque;

use telemetry_core::pb::{
    stream_notice::Kind as NoticeKind, CompletionStatus, RunCompleted, RunEpisode, RunStep,
    StreamNotice, StreamRequest,
};

use super::{replay::ReplayState, StreamId};
use crate::render_hint::json_value;

/// Steps kept for the Raw view.
pub const RAW_KEEP: usize = 100;
/// Episodes kept for the Episodes view.
pub const EPISODES_KEEP: usize = 1000;
/// Notices kept (lag, gaps, stream errors).
pub const NOTICES_KEEP: usize = 20;
/// Most lines of one formatted step in the Raw view.
pub const RAW_LINES_PER_STEP: usize = 60;
/// Delivery interval asked of the daemon (20 Hz).
pub const MIN_INTERVAL_MS: u32 = 50;
/// Records per delivered message asked of the daemon.
pub const MAX_BATCH: u32 = 512;

/// Identifies a pane: a run and one of its agents ("" = every agent of the run).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PaneKey {
    /// The run.
    pub run_id: String,
    /// The agent ("" when the run names none).
    pub agent_id: String,
}

impl PaneKey {
    /// A key for `run_id` / `agent_id`.
    pub fn new(run_id: impl Into<String>, agent_id: impl Into<String>) -> Self {
        PaneKey {
            run_id: run_id.into(),
            agent_id: agent_id.into(),
        }
    }

    /// `run/agent`, with `(all)` for a run without agent ids.
    pub fn label(&self) -> String {
        let agent = if self.agent_id.is_empty() {
            "(all)"
        } else {
            &self.agent_id
        };
        format!("{}/{}", self.run_id, agent)
    }
}

/// One step formatted for the Raw view.
#[derive(Debug, Clone)]
pub struct RawEntry {
    /// The step's seq.
    pub seq: u64,
    /// Pretty JSON lines.
    pub lines: Vec<String>,
}

/// The steps stream of a pane and how it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StepsStream {
    pub id: StreamId,
    pub render: bool,
}

/// One agent of an open run.
#[derive(Debug)]
pub struct Pane {
    /// Which run and agent.
    pub key: PaneKey,
    /// The last [`RAW_KEEP`] steps, formatted.
    pub raw: VecDeque<RawEntry>,
    /// Lines scrolled up from the newest (0 = follow the tail).
    pub raw_scroll: usize,
    /// Steps received.
    pub steps_seen: u64,
    /// The newest step.
    pub latest: Option<RunStep>,
    /// Return of the current episode so far (sum of its rewards seen).
    pub episode_return: f64,
    /// The last [`EPISODES_KEEP`] episodes.
    pub episodes: VecDeque<RunEpisode>,
    /// Episodes received.
    pub episodes_seen: u64,
    /// Selected row of the Episodes table.
    pub episode_selected: usize,
    /// Recent notices, newest last.
    pub notices: VecDeque<String>,
    /// Steps the daemon dropped for this viewer (still in the store).
    pub lagged_steps: u64,
    /// Episodes the daemon dropped for this viewer (still in the store).
    pub lagged_episodes: u64,
    /// Seq jumps that were not counted drops.
    pub gaps: u64,
    /// The stored records are all delivered; what follows is live.
    pub caught_up: bool,
    /// How the run ended, once it has.
    pub completed: Option<RunCompleted>,
    /// The run ended without a completion notice (registry state), with its state name.
    pub finished_state: Option<String>,
    /// Agent replay of this pane's episodes.
    pub replay: ReplayState,
    pub(crate) last_step_seq: u64,
    pub(crate) last_episode_seq: u64,
    pub(crate) steps_stream: Option<StepsStream>,
    pub(crate) episodes_stream: Option<StreamId>,
    pub(crate) retry_at: Option<std::time::Instant>,
    pub(crate) final_render_requested: bool,
    /// The newest step came from a `drop_render` stream.
    pub(crate) latest_render_dropped: bool,
    pub(crate) steps_done: bool,
    pub(crate) episodes_done: bool,
}

impl Pane {
    /// An empty pane.
    pub fn new(key: PaneKey) -> Self {
        Pane {
            key,
            raw: VecDeque::new(),
            raw_scroll: 0,
            steps_seen: 0,
            latest: None,
            episode_return: 0.0,
            episodes: VecDeque::new(),
            episodes_seen: 0,
            episode_selected: 0,
            notices: VecDeque::new(),
            lagged_steps: 0,
            lagged_episodes: 0,
            gaps: 0,
            caught_up: false,
            completed: None,
            finished_state: None,
            replay: ReplayState::default(),
            last_step_seq: 0,
            last_episode_seq: 0,
            steps_stream: None,
            episodes_stream: None,
            retry_at: None,
            final_render_requested: false,
            latest_render_dropped: false,
            steps_done: false,
            episodes_done: false,
        }
    }

    /// Whether the live streams should still be following the run.
    pub fn following(&self) -> bool {
        self.completed.is_none() && self.finished_state.is_none()
    }

    /// Steps received but no longer kept for the Raw view.
    pub fn raw_overflow(&self) -> u64 {
        self.steps_seen.saturating_sub(self.raw.len() as u64)
    }

    /// Episodes received but no longer kept.
    pub fn episodes_overflow(&self) -> u64 {
        self.episodes_seen
            .saturating_sub(self.episodes.len() as u64)
    }

    /// The request for this pane's steps.
    pub(crate) fn steps_request(
        &self,
        since_seq: u64,
        follow: bool,
        render: bool,
    ) -> StreamRequest {
        StreamRequest {
            run_id: self.key.run_id.clone(),
            agent_id: self.key.agent_id.clone(),
            since_seq,
            follow,
            min_interval_ms: MIN_INTERVAL_MS,
            max_batch: MAX_BATCH,
            drop_render: !render,
            ..Default::default()
        }
    }

    /// The request for this pane's episodes, after the last one seen.
    pub(crate) fn episodes_request(&self, follow: bool) -> StreamRequest {
        StreamRequest {
            run_id: self.key.run_id.clone(),
            agent_id: self.key.agent_id.clone(),
            since_seq: self.last_episode_seq,
            follow,
            min_interval_ms: MIN_INTERVAL_MS,
            max_batch: MAX_BATCH,
            drop_render: true,
            ..Default::default()
        }
    }

    /// Takes in a batch of steps (skipping any already seen). `with_render`: the stream asked
    /// for render data (a step from a `drop_render` stream may lack a hint it really has).
    pub fn ingest_steps(&mut self, steps: Vec<RunStep>, with_render: bool) {
        // Only the last RAW_KEEP steps of a batch can survive in the Raw view: format only those.
        let format_from = steps.len().saturating_sub(RAW_KEEP);
        for (i, step) in steps.into_iter().enumerate() {
            if !self.key.agent_id.is_empty()
                && !step.agent_id.is_empty()
                && step.agent_id != self.key.agent_id
            {
                continue;
            }
            if step.seq_id != 0 && step.seq_id <= self.last_step_seq {
                // A re-opened stream re-sends the last step to bring back its render hint.
                if step.seq_id == self.last_step_seq && with_render {
                    if let Some(latest) = self.latest.as_mut() {
                        if latest.seq_id == step.seq_id {
                            *latest = step;
                            self.latest_render_dropped = false;
                        }
                    }
                }
                continue;
            }
            self.last_step_seq = self.last_step_seq.max(step.seq_id);
            self.steps_seen += 1;
            let new_episode = self
                .latest
                .as_ref()
                .is_none_or(|l| l.episode_index != step.episode_index);
            if new_episode {
                self.episode_return = 0.0;
            }
            if step.reward.is_finite() {
                self.episode_return += step.reward;
            }
            if i >= format_from {
                self.raw.push_back(RawEntry {
                    seq: step.seq_id,
                    lines: format_step(&step),
                });
                while self.raw.len() > RAW_KEEP {
                    self.raw.pop_front();
                }
            }
            self.latest = Some(step);
            self.latest_render_dropped = !with_render;
        }
    }

    /// Takes in a batch of episodes (skipping any already seen).
    pub fn ingest_episodes(&mut self, episodes: Vec<RunEpisode>) {
        for ep in episodes {
            if ep.seq_id != 0 && ep.seq_id <= self.last_episode_seq {
                continue;
            }
            self.last_episode_seq = self.last_episode_seq.max(ep.seq_id);
            self.episodes_seen += 1;
            self.episodes.push_back(ep);
            if self.episodes.len() > EPISODES_KEEP {
                self.episodes.pop_front();
                self.episode_selected = self.episode_selected.saturating_sub(1);
            }
        }
    }

    /// Applies a stream notice; returns `true` when it says the run completed.
    pub fn apply_notice(&mut self, notice: StreamNotice) -> bool {
        match notice.kind {
            Some(NoticeKind::Lagged(l)) => {
                self.lagged_steps += l.dropped_steps;
                self.lagged_episodes += l.dropped_episodes;
                if l.dropped_steps == 0 && l.dropped_episodes == 0 {
                    self.lagged_steps += l.dropped;
                }
                self.note(format!(
                    "lagged: the daemon dropped {} records for this view (still stored)",
                    l.dropped.max(l.dropped_steps + l.dropped_episodes)
                ));
                false
            }
            Some(NoticeKind::Gap(g)) => {
                self.gaps += 1;
                self.note(format!(
                    "gap: seq jumped from {} to {}",
                    g.after_seq, g.next_seq
                ));
                false
            }
            Some(NoticeKind::CaughtUp(_)) => {
                self.caught_up = true;
                false
            }
            Some(NoticeKind::RunCompleted(rc)) => {
                if self.completed.is_none() {
                    self.note(completion_text(&rc));
                    self.completed = Some(rc);
                }
                true
            }
            None => false,
        }
    }

    /// Adds a notice (the oldest is let go past [`NOTICES_KEEP`]).
    pub fn note(&mut self, text: String) {
        self.notices.push_back(text);
        while self.notices.len() > NOTICES_KEEP {
            self.notices.pop_front();
        }
    }

    /// The completion banner, once the run has ended.
    pub fn completion_banner(&self) -> Option<String> {
        match (&self.completed, &self.finished_state) {
            (Some(rc), _) => Some(completion_text(rc)),
            (None, Some(state)) => Some(format!("run completed: {state}")),
            (None, None) => None,
        }
    }
}

/// "run completed: succeeded (exit 0)", "run completed: failed: boom (exit 1)", ...
pub fn completion_text(rc: &RunCompleted) -> String {
    let status = match rc.status() {
        CompletionStatus::Succeeded => "succeeded",
        CompletionStatus::Failed => "failed",
        CompletionStatus::Cancelled => "cancelled",
        CompletionStatus::Skipped => "skipped",
        CompletionStatus::Unspecified => "ended",
    };
    let mut s = format!("run completed: {status}");
    let detail = if rc.error.is_empty() {
        &rc.reason
    } else {
        &rc.error
    };
    if !detail.is_empty() {
        s.push_str(": ");
        s.push_str(
            crate::render_hint::escape_controls(detail.lines().next().unwrap_or("")).as_str(),
        );
    }
    match (rc.exit_code, rc.signal) {
        (Some(code), _) => s.push_str(&format!(" (exit {code})")),
        (None, Some(sig)) => s.push_str(&format!(" (signal {sig})")),
        (None, None) => {}
    }
    s
}

/// A step as pretty JSON lines (bounded to [`RAW_LINES_PER_STEP`]).
pub fn format_step(step: &RunStep) -> Vec<String> {
    let mut obj = serde_json::Map::new();
    obj.insert("seq".into(), step.seq_id.into());
    obj.insert("episode".into(), step.episode_index.into());
    obj.insert("step".into(), step.step_index.into());
    if !step.agent_id.is_empty() {
        obj.insert("agent".into(), step.agent_id.clone().into());
    }
    obj.insert("reward".into(), serde_json::json!(step.reward));
    obj.insert("terminated".into(), step.terminated.into());
    obj.insert("truncated".into(), step.truncated.into());
    obj.insert("action".into(), json_value(&step.action_json));
    obj.insert("observation".into(), json_value(&step.observation_json));
    if !step.info_json.is_empty() {
        obj.insert("info".into(), json_value(&step.info_json));
    }
    if !step.control_mode.is_empty() {
        obj.insert("control_mode".into(), step.control_mode.clone().into());
    }
    if !step.render_hint_json.is_empty() {
        obj.insert(
            "render_hint".into(),
            format!("{} bytes", step.render_hint_json.len()).into(),
        );
    }
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(obj)).unwrap_or_default();
    let total = text.lines().count();
    let mut lines: Vec<String> = text
        .lines()
        .take(RAW_LINES_PER_STEP)
        .map(str::to_owned)
        .collect();
    if total > RAW_LINES_PER_STEP {
        lines.push(format!("  … {} more lines", total - RAW_LINES_PER_STEP));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry_core::pb::{Gap, Lagged};

    fn step(seq: u64, ep: u64) -> RunStep {
        RunStep {
            run_id: "r".into(),
            agent_id: "a".into(),
            seq_id: seq,
            episode_index: ep,
            reward: 1.0,
            ..Default::default()
        }
    }

    #[test]
    fn raw_keeps_the_last_hundred_and_counts_the_rest() {
        let mut p = Pane::new(PaneKey::new("r", "a"));
        p.ingest_steps((1..=60).map(|s| step(s, 0)).collect(), false);
        p.ingest_steps((61..=70).map(|s| step(s, 0)).collect(), false);
        assert_eq!(p.raw.len(), 70);
        p.ingest_steps((71..=130).map(|s| step(s, 0)).collect(), false);
        assert_eq!(p.raw.len(), RAW_KEEP);
        assert_eq!(p.raw_overflow(), 30);
        assert_eq!(p.raw.front().map(|e| e.seq), Some(31));
        // A batch larger than the view: only its tail is kept, in order.
        p.ingest_steps((131..=400).map(|s| step(s, 0)).collect(), false);
        let seqs: Vec<u64> = p.raw.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (301..=400).collect::<Vec<_>>());
        assert_eq!(p.raw_overflow(), 300);
        assert_eq!(p.latest.as_ref().map(|l| l.seq_id), Some(400));
        p.ingest_steps(vec![], false);
        // A re-opened stream re-sends seq 130 and older: nothing is counted twice.
        p.ingest_steps(vec![step(399, 0), step(400, 0)], false);
        assert_eq!(p.steps_seen, 400);
        assert_eq!(p.episode_return, 400.0);
    }

    #[test]
    fn resent_last_step_brings_back_the_render_hint() {
        let mut p = Pane::new(PaneKey::new("r", "a"));
        p.ingest_steps(vec![step(5, 0)], false);
        assert!(p.latest_render_dropped);
        let mut again = step(5, 0);
        again.render_hint_json = r#"{"ansi":"x"}"#.into();
        p.ingest_steps(vec![again], true);
        assert!(!p.latest_render_dropped);
        assert_eq!(p.steps_seen, 1);
        assert!(p
            .latest
            .as_ref()
            .is_some_and(|l| !l.render_hint_json.is_empty()));
    }

    #[test]
    fn notices_are_counted() {
        let mut p = Pane::new(PaneKey::new("r", "a"));
        p.apply_notice(StreamNotice {
            kind: Some(NoticeKind::Lagged(Lagged {
                dropped: 7,
                dropped_steps: 7,
                dropped_episodes: 0,
                dropped_scalars: 0,
            })),
        });
        p.apply_notice(StreamNotice {
            kind: Some(NoticeKind::Gap(Gap {
                after_seq: 3,
                next_seq: 9,
            })),
        });
        assert_eq!((p.lagged_steps, p.gaps), (7, 1));
        assert!(p.notices.iter().any(|n| n.contains("from 3 to 9")));
        let done = p.apply_notice(StreamNotice {
            kind: Some(NoticeKind::RunCompleted(RunCompleted {
                status: CompletionStatus::Failed as i32,
                error: "boom".into(),
                exit_code: Some(2),
                ..Default::default()
            })),
        });
        assert!(done);
        assert_eq!(
            p.completion_banner().as_deref(),
            Some("run completed: failed: boom (exit 2)")
        );
        assert!(!p.following());
    }
}
