//! A tiny FrozenLake-like grid world with a tabular Q-learning agent, for the demo.
//!
//! The demo must show real learning telemetry (returns that improve, episodes that end by
//! success, hole or time limit) without Python or Gymnasium, so this is a self-contained
//! environment with a seeded PRNG: the same seed gives the same run.

/// The map: `S` start, `F` frozen, `H` hole, `G` goal.
pub const MAP: [&str; 6] = ["SFFFFF", "FHFFHF", "FFFFFF", "FHFFFH", "FFFHFF", "HFFFFG"];

/// Actions: left, down, right, up (FrozenLake's order).
pub const ACTIONS: usize = 4;

/// A small deterministic PRNG (xorshift64*), so the demo needs no `rand` and is reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is remapped).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A float in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    /// State after the step.
    pub state: usize,
    /// Reward (1 at the goal).
    pub reward: f64,
    /// Fell in a hole or reached the goal.
    pub terminated: bool,
}

/// The environment.
#[derive(Debug, Clone)]
pub struct GridWorld {
    rows: usize,
    cols: usize,
    cells: Vec<u8>,
    /// Current state (row * cols + col).
    pub state: usize,
}

impl Default for GridWorld {
    fn default() -> Self {
        Self::new()
    }
}

impl GridWorld {
    /// The map in [`MAP`].
    pub fn new() -> Self {
        let cells: Vec<u8> = MAP.iter().flat_map(|r| r.bytes()).collect();
        GridWorld {
            rows: MAP.len(),
            cols: MAP[0].len(),
            cells,
            state: 0,
        }
    }

    /// Number of states.
    pub fn states(&self) -> usize {
        self.rows * self.cols
    }

    /// Back to the start.
    pub fn reset(&mut self) -> usize {
        self.state = 0;
        self.state
    }

    /// (row, col) of a state.
    pub fn pos(&self, state: usize) -> (usize, usize) {
        (state / self.cols, state % self.cols)
    }

    /// Moves; slippery: with probability `slip` a random action happens instead.
    pub fn step(&mut self, action: usize, slip: f64, rng: &mut Rng) -> StepOutcome {
        let action = if rng.unit() < slip {
            rng.below(ACTIONS)
        } else {
            action % ACTIONS
        };
        let (r, c) = self.pos(self.state);
        let (r, c) = match action {
            0 => (r, c.saturating_sub(1)),
            1 => ((r + 1).min(self.rows - 1), c),
            2 => (r, (c + 1).min(self.cols - 1)),
            _ => (r.saturating_sub(1), c),
        };
        self.state = r * self.cols + c;
        let cell = self.cells[self.state];
        StepOutcome {
            state: self.state,
            reward: if cell == b'G' { 1.0 } else { 0.0 },
            terminated: cell == b'G' || cell == b'H',
        }
    }

    /// The grid as text with ANSI colours, the agent's cell on a red background (the format of
    /// `render_hint_json.ansi`).
    pub fn render_ansi(&self) -> String {
        let mut out = String::new();
        for r in 0..self.rows {
            for c in 0..self.cols {
                let i = r * self.cols + c;
                let ch = self.cells[i] as char;
                if i == self.state {
                    out.push_str(&format!("\x1b[41m{ch}\x1b[0m"));
                } else if ch == 'H' {
                    out.push_str(&format!("\x1b[34m{ch}\x1b[0m"));
                } else if ch == 'G' {
                    out.push_str(&format!("\x1b[32m{ch}\x1b[0m"));
                } else {
                    out.push(ch);
                }
            }
            if r + 1 < self.rows {
                out.push('\n');
            }
        }
        out
    }
}

/// Tabular Q-learning with epsilon-greedy exploration.
#[derive(Debug, Clone)]
pub struct QAgent {
    q: Vec<[f64; ACTIONS]>,
    /// Exploration rate (decays per episode).
    pub epsilon: f64,
    alpha: f64,
    gamma: f64,
}

impl QAgent {
    /// An agent for `states` states.
    pub fn new(states: usize) -> Self {
        QAgent {
            // Optimistic start: untried actions look good, so the agent explores systematically
            // instead of dithering (a sparse-reward grid is otherwise rarely solved).
            q: vec![[1.0; ACTIONS]; states],
            epsilon: 1.0,
            alpha: 0.5,
            gamma: 0.95,
        }
    }

    /// Picks an action.
    pub fn act(&self, state: usize, rng: &mut Rng) -> usize {
        if rng.unit() < self.epsilon {
            return rng.below(ACTIONS);
        }
        let row = &self.q[state];
        let best = row.iter().copied().fold(f64::MIN, f64::max);
        let ties: Vec<usize> = (0..ACTIONS).filter(|&a| row[a] == best).collect();
        ties[rng.below(ties.len())]
    }

    /// Learns from one transition; returns (q_before, q_after).
    pub fn learn(&mut self, s: usize, a: usize, r: f64, s2: usize, done: bool) -> (f64, f64) {
        let before = self.q[s][a];
        let next = if done {
            0.0
        } else {
            self.q[s2].iter().copied().fold(f64::MIN, f64::max)
        };
        let after = before + self.alpha * (r + self.gamma * next - before);
        self.q[s][a] = after;
        (before, after)
    }

    /// Ends an episode (decays exploration).
    pub fn end_episode(&mut self) {
        self.epsilon = (self.epsilon * 0.85).max(0.02);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walls_clamp_and_holes_terminate() {
        let mut env = GridWorld::new();
        let mut rng = Rng::new(1);
        assert_eq!(
            env.step(0, 0.0, &mut rng).state,
            0,
            "left from the corner stays"
        );
        assert_eq!(
            env.step(3, 0.0, &mut rng).state,
            0,
            "up from the corner stays"
        );
        env.step(2, 0.0, &mut rng); // (0,1)
        let out = env.step(1, 0.0, &mut rng); // (1,1) is a hole
        assert_eq!(env.pos(out.state), (1, 1));
        assert!(out.terminated);
        assert_eq!(out.reward, 0.0);
    }

    #[test]
    fn render_marks_the_agent_in_red() {
        let env = GridWorld::new();
        let text = env.render_ansi();
        assert!(text.starts_with("\x1b[41mS\x1b[0m"));
        assert_eq!(text.lines().count(), MAP.len());
    }

    #[test]
    fn q_learning_reaches_the_goal_more_often_later() {
        let mut env = GridWorld::new();
        let mut agent = QAgent::new(env.states());
        let mut rng = Rng::new(7);
        let mut wins = Vec::new();
        for _ in 0..400 {
            let mut s = env.reset();
            let mut won = false;
            for _ in 0..60 {
                let a = agent.act(s, &mut rng);
                let out = env.step(a, 0.0, &mut rng);
                agent.learn(s, a, out.reward, out.state, out.terminated);
                s = out.state;
                if out.terminated {
                    won = out.reward > 0.0;
                    break;
                }
            }
            agent.end_episode();
            wins.push(won);
        }
        let early = wins[..100].iter().filter(|w| **w).count();
        let late = wins[300..].iter().filter(|w| **w).count();
        assert!(
            late > early,
            "learning should help: early {early}, late {late}"
        );
    }
}
