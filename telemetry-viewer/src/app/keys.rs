//! Key bindings: what each key does on each tab. The on-screen help (`?`) lists the same keys
//! ([`crate::views::help::KEYS`]), so keep both in step.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{AgentView, App, Command, Owner, Tab};

impl App {
    pub(super) fn on_key(&mut self, key: KeyEvent) -> Vec<Command> {
        if key.kind == KeyEventKind::Release {
            return Vec::new();
        }
        self.flash = None;
        if self.show_help {
            if matches!(
                key.code,
                KeyCode::Char('?') | KeyCode::Esc | KeyCode::Char('q')
            ) {
                self.show_help = false;
            }
            return Vec::new();
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') if ctrl => {
                self.quit = true;
                return Vec::new();
            }
            KeyCode::Char('q') => {
                self.quit = true;
                return Vec::new();
            }
            KeyCode::Char('?') => {
                self.show_help = true;
                return Vec::new();
            }
            KeyCode::Tab | KeyCode::Char(']') => {
                self.cycle(1);
                return Vec::new();
            }
            KeyCode::BackTab | KeyCode::Char('[') => {
                self.cycle(-1);
                return Vec::new();
            }
            KeyCode::Char('1') => {
                self.current = 0;
                return Vec::new();
            }
            KeyCode::Char('2') => {
                self.current = 1;
                return Vec::new();
            }
            _ => {}
        }
        match self.current_tab().clone() {
            Tab::Runs => self.runs_key(key.code),
            Tab::HumanReplay => self.human_key(key.code),
            Tab::Agent { key: pane, view } => self.agent_key(&pane, view, key.code),
            Tab::Charts { run_id } => self.charts_key(&run_id, key.code),
            Tab::Agents { run_id } => self.agents_key(&run_id, key.code),
        }
    }

    fn charts_key(&mut self, run_id: &str, code: KeyCode) -> Vec<Command> {
        match code {
            KeyCode::Char('x') => return self.close_run(run_id),
            KeyCode::Left => self.cycle(-1),
            KeyCode::Right => self.cycle(1),
            KeyCode::Char('g') | KeyCode::Char('r') | KeyCode::Char('e') | KeyCode::Char('p') => {
                // Back to the run's first agent, then its view.
                let first = self.tabs.iter().find_map(|t| match t {
                    Tab::Agent { key, .. } if key.run_id == run_id => Some(key.clone()),
                    _ => None,
                });
                if let Some(key) = first {
                    return self.agent_key(&key, AgentView::Grid, code);
                }
            }
            code => {
                if let Some(c) = self.charts.get_mut(run_id) {
                    match code {
                        KeyCode::Up | KeyCode::Char('k') => c.move_group(-1),
                        KeyCode::Down | KeyCode::Char('j') => c.move_group(1),
                        _ => {}
                    }
                }
            }
        }
        Vec::new()
    }

    /// The Agents tab: `x` closes the run, Left/Right move between tabs, `g`/`r`/`e`/`p`
    /// open the run's first agent's view and `c` its Charts, as from an agent tab.
    fn agents_key(&mut self, run_id: &str, code: KeyCode) -> Vec<Command> {
        match code {
            KeyCode::Char('x') => return self.close_run(run_id),
            KeyCode::Left => self.cycle(-1),
            KeyCode::Right => self.cycle(1),
            KeyCode::Char('g' | 'r' | 'e' | 'p' | 'c') => {
                let first = self.tabs.iter().find_map(|t| match t {
                    Tab::Agent { key, .. } if key.run_id == run_id => Some(key.clone()),
                    _ => None,
                });
                if let Some(key) = first {
                    return self.agent_key(&key, AgentView::Grid, code);
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn cycle(&mut self, delta: isize) {
        let n = self.tabs.len() as isize;
        if n > 0 {
            self.current = (self.current as isize + delta).rem_euclid(n) as usize;
        }
    }

    fn runs_key(&mut self, code: KeyCode) -> Vec<Command> {
        match code {
            KeyCode::Up | KeyCode::Char('k') => self.runs.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.runs.move_selection(1),
            KeyCode::PageUp => self.runs.move_selection(-10),
            KeyCode::PageDown => self.runs.move_selection(10),
            KeyCode::Home => self.runs.move_selection(isize::MIN / 2),
            KeyCode::End => self.runs.move_selection(isize::MAX / 2),
            KeyCode::Left => self.cycle(-1),
            KeyCode::Right => self.cycle(1),
            KeyCode::Enter => {
                if let Some(run) = self.runs.selected.clone() {
                    self.open_run(&run);
                }
            }
            KeyCode::Char('x') => {
                if let Some(run) = self.runs.selected.clone() {
                    return self.close_run(&run);
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn human_key(&mut self, code: KeyCode) -> Vec<Command> {
        let len = self.human.episodes.len();
        match code {
            KeyCode::Char('R') | KeyCode::F(5) => {
                let mut cmds = self.human.replay.stop();
                cmds.extend(self.human.stream.take().map(Command::Close));
                self.human.clear();
                self.human.requested = false;
                self.human.retry_at = None;
                cmds
            }
            KeyCode::Enter => {
                let Some(ep) = self.human.episodes.get(self.human.replay.selected).cloned() else {
                    return Vec::new();
                };
                let id = self.alloc(Owner::HumanFrames);
                self.human.replay.begin(&ep, id)
            }
            KeyCode::Esc => self.human.replay.stop(),
            code => {
                if !replay_key(&mut self.human.replay, len, code) {
                    match code {
                        KeyCode::Left => self.cycle(-1),
                        KeyCode::Right => self.cycle(1),
                        _ => {}
                    }
                }
                Vec::new()
            }
        }
    }

    fn agent_key(&mut self, key: &super::PaneKey, view: AgentView, code: KeyCode) -> Vec<Command> {
        let jump = match code {
            KeyCode::Char('g') => Some(AgentView::Grid),
            KeyCode::Char('r') => Some(AgentView::Raw),
            KeyCode::Char('e') => Some(AgentView::Episodes),
            KeyCode::Char('p') => Some(AgentView::Replay),
            _ => None,
        };
        if let Some(to) = jump {
            let target = Tab::Agent {
                key: key.clone(),
                view: to,
            };
            match self.tabs.iter().position(|t| *t == target) {
                Some(i) => self.current = i,
                None => {
                    self.flash = Some("replay is available once the run has finished".to_owned())
                }
            }
            return Vec::new();
        }
        if code == KeyCode::Char('x') {
            let run = key.run_id.clone();
            return self.close_run(&run);
        }
        if code == KeyCode::Char('c') {
            let charts = Tab::Charts {
                run_id: key.run_id.clone(),
            };
            if let Some(i) = self.tabs.iter().position(|t| *t == charts) {
                self.current = i;
            }
            return Vec::new();
        }
        if code == KeyCode::Char('a') {
            let agents = Tab::Agents {
                run_id: key.run_id.clone(),
            };
            if let Some(i) = self.tabs.iter().position(|t| *t == agents) {
                self.current = i;
            }
            return Vec::new();
        }
        let Some(pane) = self.panes.get_mut(key) else {
            return Vec::new();
        };
        match view {
            AgentView::Raw => match code {
                KeyCode::Up | KeyCode::Char('k') => pane.raw_scroll += 1,
                KeyCode::Down | KeyCode::Char('j') => {
                    pane.raw_scroll = pane.raw_scroll.saturating_sub(1)
                }
                KeyCode::PageUp => pane.raw_scroll += 10,
                KeyCode::PageDown => pane.raw_scroll = pane.raw_scroll.saturating_sub(10),
                KeyCode::Home => pane.raw_scroll = usize::MAX / 2,
                KeyCode::End => pane.raw_scroll = 0,
                KeyCode::Left => self.cycle(-1),
                KeyCode::Right => self.cycle(1),
                _ => {}
            },
            AgentView::Episodes => {
                let len = pane.episodes.len();
                match code {
                    KeyCode::Enter => {
                        let replay = Tab::Agent {
                            key: key.clone(),
                            view: AgentView::Replay,
                        };
                        let Some(i) = self.tabs.iter().position(|t| *t == replay) else {
                            self.flash =
                                Some("replay is available once the run has finished".to_owned());
                            return Vec::new();
                        };
                        pane.replay.selected = pane.episode_selected;
                        self.current = i;
                        return self.load_pane_episode(key);
                    }
                    KeyCode::Left => self.cycle(-1),
                    KeyCode::Right => self.cycle(1),
                    code => {
                        move_in(&mut pane.episode_selected, len, code);
                    }
                }
            }
            AgentView::Replay => {
                let len = pane.episodes.len();
                match code {
                    KeyCode::Enter => return self.load_pane_episode(key),
                    KeyCode::Esc => return pane.replay.stop(),
                    code => {
                        if !replay_key(&mut pane.replay, len, code) {
                            match code {
                                KeyCode::Left => self.cycle(-1),
                                KeyCode::Right => self.cycle(1),
                                _ => {}
                            }
                        }
                    }
                }
            }
            AgentView::Grid => match code {
                KeyCode::Left => self.cycle(-1),
                KeyCode::Right => self.cycle(1),
                _ => {}
            },
        }
        Vec::new()
    }

    fn load_pane_episode(&mut self, key: &super::PaneKey) -> Vec<Command> {
        let Some(ep) = self
            .panes
            .get(key)
            .and_then(|p| p.episodes.get(p.replay.selected).cloned())
        else {
            return Vec::new();
        };
        let id = self.alloc(Owner::PaneReplay(key.clone()));
        match self.panes.get_mut(key) {
            Some(p) => p.replay.begin(&ep, id),
            None => Vec::new(),
        }
    }
}

/// Keys shared by both replay tabs; `false` when the key is not a replay key (or there is
/// nothing loaded to step through, for Left/Right).
fn replay_key(replay: &mut super::replay::ReplayState, len: usize, code: KeyCode) -> bool {
    let loaded = replay.frames.is_some();
    match code {
        KeyCode::Right | KeyCode::Char('l') | KeyCode::Char('n') if loaded => replay.step_by(1),
        KeyCode::Left | KeyCode::Char('h') | KeyCode::Char('b') if loaded => replay.step_by(-1),
        KeyCode::Home if loaded => replay.jump(false),
        KeyCode::End if loaded => replay.jump(true),
        KeyCode::Char(' ') if loaded => replay.playing = !replay.playing,
        code => return move_in(&mut replay.selected, len, code),
    }
    true
}

/// Moves a list selection; `false` when the key is not a movement key.
fn move_in(selected: &mut usize, len: usize, code: KeyCode) -> bool {
    let last = len.saturating_sub(1);
    match code {
        KeyCode::Up | KeyCode::Char('k') => *selected = selected.saturating_sub(1),
        KeyCode::Down | KeyCode::Char('j') => *selected = (*selected + 1).min(last),
        KeyCode::PageUp => *selected = selected.saturating_sub(10),
        KeyCode::PageDown => *selected = (*selected + 10).min(last),
        KeyCode::Home => *selected = 0,
        KeyCode::End => *selected = last,
        _ => return false,
    }
    true
}
