//! Episode and step indices a worker did not give, per agent.
//!
//! Most training loops know when an episode ends but do not count steps; CleanRL-style loops do
//! not count episodes either. `Telemetry.step` therefore numbers steps and episodes itself
//! unless told, and `episode_end` fills its return, length and end flags from the steps it saw.
//! Rules (one [`Episode`] per agent id, `""` for records without one):
//!
//! - a step with no `episode_index` continues the current episode, or starts the next one when
//!   the previous step ended it (terminated/truncated) or `episode_end` closed it;
//! - a step with an explicit `episode_index` different from the current one starts that episode
//!   afresh; an explicit `step_index` sets where counting continues;
//! - `episode_end` for the current episode reports what was tracked and moves to the next index.
//!
//! At most [`MAX_AGENTS`] agents are tracked; beyond that an arbitrary one is forgotten (its
//! next step starts at episode 0 again) and counted in `stats()["trackers_evicted"]`.

use std::collections::HashMap;

/// Most agents whose episodes are tracked at once.
pub const MAX_AGENTS: usize = 4096;

/// The episode in progress for one agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Episode {
    pub index: u64,
    pub next_step: u64,
    pub total_reward: f64,
    pub length: u64,
    pub terminated: bool,
    pub truncated: bool,
    /// The last step ended the episode (terminated or truncated).
    pub done: bool,
}

impl Episode {
    fn fresh(index: u64) -> Self {
        Episode {
            index,
            ..Episode::default()
        }
    }
}

/// What `episode_end` defaults to.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub index: u64,
    pub total_reward: f64,
    pub length: u64,
    pub terminated: bool,
    pub truncated: bool,
}

/// Per-agent episode state.
#[derive(Debug, Default)]
pub struct Tracker {
    agents: HashMap<String, Episode>,
    /// Agents forgotten because [`MAX_AGENTS`] was reached.
    pub evicted: u64,
}

/// What a step tells the tracker.
pub struct StepInput {
    pub episode_index: Option<u64>,
    pub step_index: Option<u64>,
    pub reward: f64,
    pub terminated: bool,
    pub truncated: bool,
}

impl Tracker {
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

    /// Records a step; returns its `(episode_index, step_index)`.
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

    /// Closes an episode: returns what was tracked for it (zeros for an episode it did not
    /// see) and moves the agent to the next episode when it was the current one.
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
