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
//!
//! At most [`MAX_AGENTS`] agents are tracked; beyond that an arbitrary one is forgotten (its
//! next step starts at episode 0 again) and counted in [`Tracker::evicted`].

use std::collections::HashMap;

/// Most agents whose episodes are tracked at once.
pub const MAX_AGENTS: usize = 4096;

/// The episode in progress for one agent.
#[derive(Debug, Clone, Default, PartialEq)]
struct Episode {
    index: u64,
    next_step: u64,
    total_reward: f64,
    length: u64,
    terminated: bool,
    truncated: bool,
    /// The last step ended the episode (terminated or truncated).
    done: bool,
}

impl Episode {
    fn fresh(index: u64) -> Self {
        Episode {
            index,
            ..Episode::default()
        }
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
    agents: HashMap<String, Episode>,
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
        self.agents.insert(agent.to_owned(), Episode::default());
    }

    /// Records a step of `agent`; returns its `(episode_index, step_index)`.
    pub fn step(&mut self, agent: &str, s: &StepInput) -> (u64, u64) {
        self.ensure(agent);
        let Some(e) = self.agents.get_mut(agent) else {
            return (s.episode_index.unwrap_or(0), s.step_index.unwrap_or(0));
        };
        match s.episode_index {
            Some(i) if i != e.index => *e = Episode::fresh(i),
            Some(_) => e.done = false,
            None if e.done => *e = Episode::fresh(e.index + 1),
            None => {}
        }
        let step = s.step_index.unwrap_or(e.next_step);
        e.next_step = step + 1;
        e.total_reward += s.reward;
        e.length += 1;
        e.terminated = s.terminated;
        e.truncated = s.truncated;
        e.done = s.terminated || s.truncated;
        (e.index, step)
    }

    /// Closes an episode of `agent` (`index`: the caller's, or the current one): returns what
    /// was tracked for it (zeros for an episode it did not see) and moves the agent to the next
    /// episode when it was the current one.
    pub fn episode_end(&mut self, agent: &str, index: Option<u64>) -> Summary {
        self.ensure(agent);
        let untracked = |index| Summary {
            index,
            total_reward: 0.0,
            length: 0,
            terminated: false,
            truncated: false,
        };
        let Some(e) = self.agents.get_mut(agent) else {
            return untracked(index.unwrap_or(0));
        };
        let index = index.unwrap_or(e.index);
        if index != e.index {
            return untracked(index);
        }
        let summary = Summary {
            index,
            total_reward: e.total_reward,
            length: e.length,
            terminated: e.terminated,
            truncated: e.truncated,
        };
        *e = Episode::fresh(index + 1);
        summary
    }
}

#[cfg(test)]
mod tests {
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
}
