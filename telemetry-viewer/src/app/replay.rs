//! Frame-by-frame replay of one stored episode (Human Replay and agent replay share it).
//!
//! The daemon has no "steps of episode k" query: the replay streams the agent's stored steps
//! (`follow=false`), keeps those of the chosen episode and closes the stream as soon as a later
//! episode of the same agent shows up, so a long run is not read to its end.

use telemetry_core::pb::{RunEpisode, RunStep, StreamRequest};

use super::{Command, StreamId};

/// Most frames kept of one episode (later ones are counted, not kept).
pub const MAX_FRAMES: usize = 10_000;

/// The frames of the episode being replayed.
#[derive(Debug, Clone)]
pub struct Frames {
    /// The episode's run.
    pub run_id: String,
    /// The episode's agent ("" when the data names none).
    pub agent_id: String,
    /// The episode.
    pub episode_index: u64,
    /// Its steps, in order.
    pub steps: Vec<RunStep>,
    /// The frame shown.
    pub pos: usize,
    /// Still reading.
    pub loading: bool,
    /// Frames past [`MAX_FRAMES`], not kept.
    pub over_limit: u64,
    /// Why reading stopped early.
    pub error: Option<String>,
    pub(crate) stream: Option<StreamId>,
}

/// Selection in an episode list plus the replayed frames.
#[derive(Debug, Clone, Default)]
pub struct ReplayState {
    /// Selected row of the episode list.
    pub selected: usize,
    /// The loaded (or loading) episode.
    pub frames: Option<Frames>,
    /// Advancing one frame per tick.
    pub playing: bool,
}

impl ReplayState {
    /// Starts loading `episode` through a new stream `stream`; returns the command that opens it.
    pub(crate) fn begin(&mut self, episode: &RunEpisode, stream: StreamId) -> Vec<Command> {
        let mut cmds = self.stop();
        self.frames = Some(Frames {
            run_id: episode.run_id.clone(),
            agent_id: episode.agent_id.clone(),
            episode_index: episode.episode_index,
            steps: Vec::new(),
            pos: 0,
            loading: true,
            over_limit: 0,
            error: None,
            stream: Some(stream),
        });
        cmds.push(Command::OpenSteps {
            stream,
            request: StreamRequest {
                run_id: episode.run_id.clone(),
                agent_id: episode.agent_id.clone(),
                follow: false,
                ..Default::default()
            },
        });
        cmds
    }

    /// Drops the frames, closing their stream if it is still open.
    pub(crate) fn stop(&mut self) -> Vec<Command> {
        self.playing = false;
        match self.frames.take().and_then(|f| f.stream) {
            Some(s) => vec![Command::Close(s)],
            None => Vec::new(),
        }
    }

    /// Keeps the steps of the replayed episode; closes the stream once a later episode begins.
    pub(crate) fn on_steps(&mut self, steps: Vec<RunStep>) -> Vec<Command> {
        let Some(f) = self.frames.as_mut() else {
            return Vec::new();
        };
        let mut done = false;
        for s in steps {
            if !f.agent_id.is_empty() && s.agent_id != f.agent_id {
                continue;
            }
            if s.episode_index > f.episode_index && s.agent_id == f.agent_id {
                done = true;
                break;
            }
            if s.episode_index != f.episode_index {
                continue;
            }
            if f.steps.len() < MAX_FRAMES {
                f.steps.push(s);
            } else {
                f.over_limit += 1;
            }
        }
        if done {
            f.loading = false;
            if let Some(s) = f.stream.take() {
                return vec![Command::Close(s)];
            }
        }
        Vec::new()
    }

    /// The stream ended (by itself or with `error`).
    pub(crate) fn on_end(&mut self, error: Option<String>) {
        if let Some(f) = self.frames.as_mut() {
            f.loading = false;
            f.stream = None;
            f.error = error;
        }
    }

    /// Moves `delta` frames (clamped).
    pub fn step_by(&mut self, delta: isize) {
        if let Some(f) = self.frames.as_mut() {
            let last = f.steps.len().saturating_sub(1) as isize;
            f.pos = (f.pos as isize + delta).clamp(0, last.max(0)) as usize;
        }
    }

    /// Jumps to the first (`false`) or last (`true`) frame.
    pub fn jump(&mut self, to_end: bool) {
        if let Some(f) = self.frames.as_mut() {
            f.pos = if to_end {
                f.steps.len().saturating_sub(1)
            } else {
                0
            };
        }
    }

    /// One playback tick: the next frame, stopping at the end once loading is over.
    pub(crate) fn tick(&mut self) -> bool {
        if !self.playing {
            return false;
        }
        let Some(f) = self.frames.as_mut() else {
            self.playing = false;
            return false;
        };
        if f.pos + 1 < f.steps.len() {
            f.pos += 1;
            true
        } else {
            if !f.loading {
                self.playing = false;
            }
            false
        }
    }

    /// The frame shown, if any.
    pub fn current(&self) -> Option<&RunStep> {
        self.frames.as_ref().and_then(|f| f.steps.get(f.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(agent: &str, ep: u64, i: u64) -> RunStep {
        RunStep {
            run_id: "r".into(),
            agent_id: agent.into(),
            episode_index: ep,
            step_index: i,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_only_the_episode_and_closes_at_the_next_one() {
        let mut r = ReplayState::default();
        let ep = RunEpisode {
            run_id: "r".into(),
            agent_id: "a".into(),
            episode_index: 1,
            ..Default::default()
        };
        let cmds = r.begin(&ep, StreamId(7));
        assert!(
            matches!(&cmds[..], [Command::OpenSteps { stream: StreamId(7), request }]
            if request.agent_id == "a" && !request.follow && request.run_id == "r")
        );
        let cmds = r.on_steps(vec![
            step("a", 0, 0),
            step("a", 1, 0),
            step("b", 1, 5),
            step("a", 1, 1),
        ]);
        assert!(cmds.is_empty());
        let cmds = r.on_steps(vec![step("a", 2, 0), step("a", 1, 9)]);
        assert_eq!(cmds, vec![Command::Close(StreamId(7))]);
        let f = r.frames.as_ref().expect("frames");
        assert_eq!(
            f.steps.iter().map(|s| s.step_index).collect::<Vec<_>>(),
            [0, 1]
        );
        assert!(!f.loading);
        r.step_by(5);
        assert_eq!(r.current().map(|s| s.step_index), Some(1));
        r.step_by(-9);
        assert_eq!(r.current().map(|s| s.step_index), Some(0));
    }
}
