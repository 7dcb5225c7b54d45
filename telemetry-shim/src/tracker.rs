//! Episode and step indices a worker did not give, per agent.
//!
//! Most training loops know when an episode ends but do not count steps; CleanRL-style loops do
//! not count episodes either. A [`Tracker`] numbers steps and episodes for such callers (the
//! Python binding's `Telemetry.step` and `episode_end` use it), and fills an episode's return,
//! length and end flags from the steps it saw. It lives here, next to the shim, so every
//! language binding numbers records the same way. Rules (one episode per agent id, `""` for
//! records without one):
//!
//! - a step with no `episode_index` continues the current episode, or starts the next one when
//!   the previous step ended it (terminated/truncated) or [`Tracker::episode_end`] closed it;
//! - a step with an explicit `episode_index` different from the current one starts that episode
//!   afresh; an explicit `step_index` sets where counting continues;
//! - `episode_end` for the current episode reports what was tracked and moves to the next
//!   index; for another episode it reports zeros and changes nothing.
//! - [`EpisodeCounter::begin`] (an environment reset, for callers that see them) starts the
//!   next episode when the current one has steps, and otherwise begins the current one again.
//!
//! At most [`MAX_AGENTS`] agents are tracked; beyond that an arbitrary one is forgotten (its
//! next step starts at episode 0 again) and counted in [`Tracker::evicted`].

use std::collections::HashMap;

/// Most agents whose episodes are tracked at once.
pub const MAX_AGENTS: usize = 4096;

/// One agent's episode in progress: the numbering rules of the [module docs](self) for a single
/// agent. [`Tracker`] keeps one per agent id; a caller that tracks one agent (the Python
/// binding's per-wrapper `EpisodeRecorder`) can hold one directly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpisodeCounter {
    index: u64,
    next_step: u64,
    total_reward: f64,
    length: u64,
    terminated: bool,
    truncated: bool,
    /// The last step ended the episode (terminated or truncated).
    done: bool,
    /// A step or [`begin`](Self::begin) has happened.
    started: bool,
}

impl EpisodeCounter {
    /// No episode yet: the first step (or [`begin`](Self::begin)) starts episode 0.
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh(index: u64) -> Self {
        EpisodeCounter {
            index,
            started: true,
            ..EpisodeCounter::default()
        }
    }

    /// The current episode's index, `None` before the first step or `begin`.
    pub fn current(&self) -> Option<u64> {
        self.started.then_some(self.index)
    }

    /// What has been tracked of the current episode so far (zeros before its first step).
    pub fn summary(&self) -> Summary {
        Summary {
            index: self.index,
            total_reward: self.total_reward,
            length: self.length,
            terminated: self.terminated,
            truncated: self.truncated,
        }
    }

    /// Starts the next episode explicitly (an environment reset): the first one when none was
    /// started, the next index when the current one has steps, and otherwise the current
    /// (empty) one again.
    pub fn begin(&mut self) {
        if !self.started {
            *self = EpisodeCounter::fresh(0);
        } else if self.length > 0 {
            *self = EpisodeCounter::fresh(self.index.saturating_add(1));
        }
    }

    /// Records a step; returns its `(episode_index, step_index)`.
    pub fn step(&mut self, s: &StepInput) -> (u64, u64) {
        match s.episode_index {
            Some(i) if i != self.index || !self.started => *self = EpisodeCounter::fresh(i),
            Some(_) => self.done = false,
            None if self.done => *self = EpisodeCounter::fresh(self.index.saturating_add(1)),
            None => self.started = true,
        }
        // Indices come from the caller: the largest one saturates instead of overflowing.
        let step = s.step_index.unwrap_or(self.next_step);
        self.next_step = step.saturating_add(1);
        self.total_reward += s.reward;
        self.length += 1;
        self.terminated = s.terminated;
        self.truncated = s.truncated;
        self.done = s.terminated || s.truncated;
        (self.index, step)
    }

    /// Closes an episode (`index`: the caller's, or the current one): returns what was tracked
    /// for it (zeros for an episode it did not see) and moves on to the next episode when it
    /// was the current one.
    pub fn end(&mut self, index: Option<u64>) -> Summary {
        let index = index.unwrap_or(self.index);
        if index != self.index {
            return Summary {
                index,
                total_reward: 0.0,
                length: 0,
                terminated: false,
                truncated: false,
            };
        }
        let summary = self.summary();
        *self = EpisodeCounter::fresh(index.saturating_add(1));
        summary
    }
}

/// What [`Tracker::episode_end`] knows of an episode: the defaults of its episode record.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The episode's index.
    pub index: u64,
    /// Sum of the rewards of its tracked steps.
    pub total_reward: f64,
    /// How many steps were tracked.
    pub length: u64,
    /// Whether its last step was terminated.
    pub terminated: bool,
    /// Whether its last step was truncated.
    pub truncated: bool,
}

/// What a step tells the tracker.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInput {
    /// The episode the caller named, if any.
    pub episode_index: Option<u64>,
    /// The step index the caller named, if any.
    pub step_index: Option<u64>,
    /// The step's reward (summed into the episode's return).
    pub reward: f64,
    /// The step ended the episode (terminal state).
    pub terminated: bool,
    /// The step ended the episode (time limit or similar).
    pub truncated: bool,
}

/// Per-agent episode and step numbering; see the [module docs](self) for the rules.
#[derive(Debug, Default)]
pub struct Tracker {
    agents: HashMap<String, EpisodeCounter>,
    evicted: u64,
}

impl Tracker {
    /// An empty tracker: every agent's first step is episode 0, step 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Agents forgotten because [`MAX_AGENTS`] was reached.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Makes sure `agent` is tracked (looked up by `&str`: a known agent allocates nothing).
    fn ensure(&mut self, agent: &str) {
        if self.agents.contains_key(agent) {
            return;
        }
        if self.agents.len() >= MAX_AGENTS {
            if let Some(k) = self.agents.keys().next().cloned() {
                self.agents.remove(&k);
                self.evicted += 1;
            }
        }
        self.agents
            .insert(agent.to_owned(), EpisodeCounter::default());
    }

    /// Records a step of `agent`; returns its `(episode_index, step_index)`.
    pub fn step(&mut self, agent: &str, s: &StepInput) -> (u64, u64) {
        self.ensure(agent);
        match self.agents.get_mut(agent) {
            Some(e) => e.step(s),
            None => (s.episode_index.unwrap_or(0), s.step_index.unwrap_or(0)),
        }
    }

    /// Closes an episode of `agent` (`index`: the caller's, or the current one): returns what
    /// was tracked for it (zeros for an episode it did not see) and moves the agent to the next
    /// episode when it was the current one.
    pub fn episode_end(&mut self, agent: &str, index: Option<u64>) -> Summary {
        self.ensure(agent);
        match self.agents.get_mut(agent) {
            Some(e) => e.end(index),
            None => Summary {
                index: index.unwrap_or(0),
                total_reward: 0.0,
                length: 0,
                terminated: false,
                truncated: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_largest_indices_saturate_instead_of_overflowing() {
        let mut c = EpisodeCounter::new();
        let top = StepInput {
            episode_index: Some(u64::MAX),
            step_index: Some(u64::MAX),
            ..plain(1.0)
        };
        assert_eq!(c.step(&top), (u64::MAX, u64::MAX));
        assert_eq!(c.step(&plain(1.0)), (u64::MAX, u64::MAX));
        let summary = c.end(None);
        assert_eq!((summary.index, summary.length), (u64::MAX, 2));
        assert_eq!(c.step(&plain(0.0)).0, u64::MAX);
    }

    use super::*;

    fn plain(reward: f64) -> StepInput {
        StepInput {
            episode_index: None,
            step_index: None,
            reward,
            terminated: false,
            truncated: false,
        }
    }

    fn ending(reward: f64) -> StepInput {
        StepInput {
            terminated: true,
            ..plain(reward)
        }
    }

    #[test]
    fn first_steps_count_from_zero() {
        let mut t = Tracker::new();
        assert_eq!(t.step("", &plain(1.0)), (0, 0));
        assert_eq!(t.step("", &plain(1.0)), (0, 1));
        assert_eq!(t.step("", &plain(1.0)), (0, 2));
    }

    #[test]
    fn explicit_indices_override_and_counting_continues_from_them() {
        let mut t = Tracker::new();
        let at = StepInput {
            episode_index: Some(4),
            step_index: Some(10),
            ..plain(0.5)
        };
        assert_eq!(t.step("", &at), (4, 10));
        assert_eq!(t.step("", &plain(0.5)), (4, 11));
        let step_only = StepInput {
            step_index: Some(2),
            ..plain(0.0)
        };
        assert_eq!(t.step("", &step_only), (4, 2));
        assert_eq!(t.step("", &plain(0.0)), (4, 3));
        // A different explicit episode starts afresh: its step count restarts.
        let other = StepInput {
            episode_index: Some(7),
            ..plain(2.0)
        };
        assert_eq!(t.step("", &other), (7, 0));
        let s = t.episode_end("", None);
        assert_eq!((s.index, s.length, s.total_reward), (7, 1, 2.0));
    }

    #[test]
    fn episode_end_advances_the_episode_and_resets_the_step() {
        let mut t = Tracker::new();
        t.step("", &plain(1.0));
        t.step("", &plain(2.5));
        let s = t.episode_end("", None);
        assert_eq!(
            s,
            Summary {
                index: 0,
                total_reward: 3.5,
                length: 2,
                terminated: false,
                truncated: false
            }
        );
        assert_eq!(t.step("", &plain(1.0)), (1, 0));
        assert_eq!(t.episode_end("", None).index, 1);
        // An episode_end with no steps in between still moves on.
        let empty = t.episode_end("", None);
        assert_eq!((empty.index, empty.length, empty.total_reward), (2, 0, 0.0));
        assert_eq!(t.step("", &plain(0.0)), (3, 0));
    }

    #[test]
    fn a_terminal_step_starts_the_next_episode_on_the_following_step() {
        let mut t = Tracker::new();
        t.step("", &plain(1.0));
        assert_eq!(t.step("", &ending(1.0)), (0, 1));
        assert_eq!(t.step("", &plain(1.0)), (1, 0));
        let truncated = StepInput {
            truncated: true,
            ..plain(0.0)
        };
        assert_eq!(t.step("", &truncated), (1, 1));
        let s = t.episode_end("", None);
        assert_eq!(
            (s.index, s.length, s.truncated, s.terminated),
            (1, 2, true, false)
        );
        assert_eq!(t.step("", &plain(0.0)), (2, 0));
    }

    #[test]
    fn an_explicit_same_episode_after_its_end_step_continues_it() {
        let mut t = Tracker::new();
        assert_eq!(t.step("", &ending(1.0)), (0, 0));
        let same = StepInput {
            episode_index: Some(0),
            ..plain(1.0)
        };
        assert_eq!(t.step("", &same), (0, 1));
        assert_eq!(t.episode_end("", None).length, 2);
    }

    #[test]
    fn episode_end_for_another_episode_reports_zeros_and_keeps_the_current_one() {
        let mut t = Tracker::new();
        t.step("", &plain(1.0));
        let other = t.episode_end("", Some(9));
        assert_eq!((other.index, other.length, other.total_reward), (9, 0, 0.0));
        assert_eq!(t.step("", &plain(1.0)), (0, 1));
        let current = t.episode_end("", Some(0));
        assert_eq!((current.index, current.length), (0, 2));
    }

    #[test]
    fn agents_are_numbered_independently() {
        let mut t = Tracker::new();
        assert_eq!(t.step("a", &plain(1.0)), (0, 0));
        assert_eq!(t.step("a", &plain(1.0)), (0, 1));
        assert_eq!(t.step("b", &plain(5.0)), (0, 0));
        assert_eq!(t.episode_end("a", None).total_reward, 2.0);
        assert_eq!(t.step("a", &plain(1.0)), (1, 0));
        assert_eq!(t.step("b", &plain(1.0)), (0, 1));
        assert_eq!(t.episode_end("b", None).total_reward, 6.0);
    }

    #[test]
    fn beyond_max_agents_one_is_forgotten_and_counted() {
        let mut t = Tracker::new();
        for i in 0..MAX_AGENTS {
            t.step(&format!("agent-{i}"), &plain(0.0));
        }
        assert_eq!(t.evicted(), 0);
        t.step("one-more", &plain(0.0));
        assert_eq!(t.evicted(), 1);
        assert_eq!(t.agents.len(), MAX_AGENTS);
        // A known agent does not evict.
        t.step("one-more", &plain(0.0));
        assert_eq!(t.evicted(), 1);
    }

    #[test]
    fn a_counter_has_no_episode_until_its_first_step_or_begin() {
        let mut c = EpisodeCounter::new();
        assert_eq!(c.current(), None);
        assert_eq!(c.summary().length, 0);
        assert_eq!(c.step(&plain(1.0)), (0, 0));
        assert_eq!(c.current(), Some(0));
        let mut b = EpisodeCounter::new();
        b.begin();
        assert_eq!(b.current(), Some(0));
        assert_eq!(b.step(&plain(1.0)), (0, 0));
    }

    #[test]
    fn begin_moves_on_only_from_an_episode_with_steps() {
        let mut c = EpisodeCounter::new();
        c.begin();
        c.begin();
        assert_eq!(
            c.current(),
            Some(0),
            "an empty episode is begun again, not skipped"
        );
        c.step(&plain(1.0));
        c.step(&plain(2.0));
        assert_eq!((c.summary().length, c.summary().total_reward), (2, 3.0));
        c.begin();
        assert_eq!(c.current(), Some(1));
        assert_eq!(c.summary().length, 0);
        assert_eq!(c.step(&plain(1.0)), (1, 0));
    }

    #[test]
    fn a_reset_after_a_terminal_step_and_autoreset_number_alike() {
        // Gymnasium reset after the end...
        let mut reset = EpisodeCounter::new();
        reset.begin();
        reset.step(&plain(1.0));
        assert_eq!(reset.step(&ending(1.0)), (0, 1));
        assert_eq!(
            reset.summary().length,
            2,
            "the ended episode is still current"
        );
        reset.begin();
        // ...or a vector env's autoreset (no begin): the next step starts episode 1 either way.
        let mut auto = EpisodeCounter::new();
        auto.step(&plain(1.0));
        auto.step(&ending(1.0));
        assert_eq!(reset.step(&plain(0.0)), (1, 0));
        assert_eq!(auto.step(&plain(0.0)), (1, 0));
    }
}
