//! The Human Replay list: stored episodes of manual play, from every run.
//!
//! The predecessor's "Human Replay" tab showed agent training too. Here the daemon is asked for
//! `control_mode = human` (plus `unknown`, i.e. old data that never said) and the viewer checks
//! again, so an older daemon that ignores the filter still cannot leak agent episodes into the
//! list; what it filters out is counted.

use std::collections::VecDeque;

use telemetry_core::{
    jsonl::discover_episode_meta,
    pb::{RunEpisode, StreamRequest},
    ControlMode,
};

use super::replay::ReplayState;

/// Most episodes listed (the oldest are let go first, and counted).
pub const HUMAN_EPISODES_KEEP: usize = 5000;

/// State of the Human Replay tab.
#[derive(Debug, Default)]
pub struct HumanReplay {
    /// Listed episodes, in store order.
    pub episodes: VecDeque<RunEpisode>,
    /// Episodes the viewer refused because they were not human or unknown.
    pub filtered_out: u64,
    /// Episodes let go past [`HUMAN_EPISODES_KEEP`].
    pub evicted: u64,
    /// The list is being read.
    pub loading: bool,
    /// The list was asked for at least once.
    pub requested: bool,
    /// Why the last read failed.
    pub error: Option<String>,
    /// Selection and frames.
    pub replay: ReplayState,
    pub(crate) stream: Option<super::StreamId>,
    pub(crate) retry_at: Option<std::time::Instant>,
}

impl HumanReplay {
    /// The request for the list: human (or unknown) episodes of every run, stored ones only.
    pub fn request() -> StreamRequest {
        StreamRequest {
            control_mode: ControlMode::Human.as_str().to_owned(),
            human_or_unknown: true,
            follow: false,
            drop_render: true,
            ..Default::default()
        }
    }

    /// Adds the human (or unknown) episodes of a batch.
    pub fn ingest(&mut self, episodes: Vec<RunEpisode>) {
        for ep in episodes {
            if !is_human_or_unknown(&ep) {
                self.filtered_out += 1;
                continue;
            }
            self.episodes.push_back(ep);
            if self.episodes.len() > HUMAN_EPISODES_KEEP {
                self.episodes.pop_front();
                self.evicted += 1;
                self.replay.selected = self.replay.selected.saturating_sub(1);
            }
        }
    }

    /// Forgets the list (before reading it again).
    pub(crate) fn clear(&mut self) {
        self.episodes.clear();
        self.filtered_out = 0;
        self.evicted = 0;
        self.error = None;
        self.replay.selected = 0;
    }
}

/// An episode's control mode: its own field when set, else what its metadata says.
/// `Err` carries a spelling nobody knows.
pub fn episode_control_mode(ep: &RunEpisode) -> Result<ControlMode, String> {
    if !ep.control_mode.trim().is_empty() {
        return ControlMode::from_wire(&ep.control_mode).map_err(|e| e.value);
    }
    Ok(discover_episode_meta(ep).control_mode)
}

/// Human play, or old data that never said who played.
pub fn is_human_or_unknown(ep: &RunEpisode) -> bool {
    matches!(
        episode_control_mode(ep),
        Ok(ControlMode::Human | ControlMode::Unknown)
    )
}
