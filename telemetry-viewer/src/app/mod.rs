//! The viewer's state and its one entry point, [`App::update`]: an [`Event`] in (a key, a tick,
//! a batch from a stream, a run state), a list of [`Command`]s out (open or close a stream,
//! quit). Nothing here does I/O or reads a clock, so every behaviour — tab switches re-opening
//! the Grid stream with render data, completion stopping a view, replay stepping — is tested by
//! feeding events and looking at the state and the commands.

pub mod charts;
pub mod human;
mod keys;
pub mod pane;
pub mod replay;
pub mod runs;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant, SystemTime},
};

use crossterm::event::KeyEvent;
use telemetry_core::pb::{
    EpisodeStreamMessage, ReadScalarsRequest, RunInfo, RunState, RunSummary, ScalarSeries,
    StepStreamMessage, StreamRequest,
};

use self::{
    charts::Charts,
    human::HumanReplay,
    pane::{Pane, PaneKey, StepsStream},
    runs::RunsTable,
};

/// How long a lost stream waits before it is opened again.
pub const STREAM_RETRY: Duration = Duration::from_secs(2);

/// Names one stream the app asked the I/O layer to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// How the link to the daemon is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Not answered yet.
    Connecting,
    /// The last call went through.
    Connected,
    /// The last call failed; the I/O layer tries again after `retry_in`.
    Unreachable {
        /// Why.
        error: String,
        /// When the next try is.
        retry_in: Duration,
    },
}

/// Everything that can happen to the viewer.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A key was pressed.
    Key(KeyEvent),
    /// The terminal was resized.
    Resize,
    /// Time passed (drives playback, retries and the "lag" column).
    Tick {
        /// Monotonic now.
        at: Instant,
        /// Wall-clock now.
        wall: SystemTime,
        /// Events the I/O layer dropped so far because the channel was full.
        dropped_events: u64,
    },
    /// The daemon link changed state.
    Connection(Connection),
    /// `WatchRuns` reported a run.
    RunInfo(RunInfo),
    /// `ListRuns` answered (at `at`).
    RunsListed {
        /// Every run.
        runs: Vec<RunSummary>,
        /// When the answer came.
        at: Instant,
    },
    /// A batch from a steps stream.
    Steps {
        /// The stream.
        stream: StreamId,
        /// The batch.
        message: StepStreamMessage,
    },
    /// A batch from an episodes stream.
    Episodes {
        /// The stream.
        stream: StreamId,
        /// The batch.
        message: EpisodeStreamMessage,
    },
    /// A `ReadScalars` answered (or failed, with the error's text).
    Scalars {
        /// The read.
        stream: StreamId,
        /// The curves, or why the read failed.
        result: Result<Vec<ScalarSeries>, String>,
    },
    /// A stream ended, cleanly (`None`) or not.
    StreamEnded {
        /// The stream.
        stream: StreamId,
        /// Why it failed.
        error: Option<String>,
    },
}

/// What the app asks the I/O layer to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Open `StreamRunSteps` and feed its messages back as [`Event::Steps`].
    OpenSteps {
        /// Its id.
        stream: StreamId,
        /// The request.
        request: StreamRequest,
    },
    /// Open `StreamRunEpisodes` and feed its messages back as [`Event::Episodes`].
    OpenEpisodes {
        /// Its id.
        stream: StreamId,
        /// The request.
        request: StreamRequest,
    },
    /// Call `ReadScalars` once and feed the answer back as [`Event::Scalars`].
    ReadScalars {
        /// Its id.
        stream: StreamId,
        /// The request.
        request: ReadScalarsRequest,
    },
    /// Stop a stream (no more events from it).
    Close(StreamId),
    /// Leave.
    Quit,
}

/// The views of one agent of an open run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentView {
    /// The live render.
    Grid,
    /// The last steps as JSON.
    Raw,
    /// The episode table.
    Episodes,
    /// Frame-by-frame replay of a finished run's episodes.
    Replay,
}

impl AgentView {
    /// The view's name in tab titles.
    pub const fn name(self) -> &'static str {
        match self {
            AgentView::Grid => "Grid",
            AgentView::Raw => "Raw",
            AgentView::Episodes => "Episodes",
            AgentView::Replay => "Replay",
        }
    }
}

/// One tab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tab {
    /// Every run.
    Runs,
    /// Stored human play.
    HumanReplay,
    /// One view of one agent of an open run.
    Agent {
        /// The run and agent.
        key: PaneKey,
        /// Which view.
        view: AgentView,
    },
    /// The learning curves of an open run.
    Charts {
        /// The run.
        run_id: String,
    },
    /// Every agent of an open run with several agents, side by side (`views::agents`).
    Agents {
        /// The run.
        run_id: String,
    },
}

impl Tab {
    /// The title shown in the tab bar: `Runs`, `Human Replay`, `<run>/<agent>: Grid`...
    pub fn title(&self) -> String {
        match self {
            Tab::Runs => "Runs".to_owned(),
            Tab::HumanReplay => "Human Replay".to_owned(),
            Tab::Agent { key, view } => format!("{}: {}", key.label(), view.name()),
            Tab::Charts { run_id } => format!("{run_id}: Charts"),
            Tab::Agents { run_id } => format!("{run_id}: Agents"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Steps(PaneKey),
    Episodes(PaneKey),
    PaneReplay(PaneKey),
    HumanList,
    HumanFrames,
    Charts(String),
}

/// The whole viewer state.
#[derive(Debug)]
pub struct App {
    endpoint: String,
    conn: Connection,
    runs: RunsTable,
    panes: BTreeMap<PaneKey, Pane>,
    charts: BTreeMap<String, Charts>,
    tabs: Vec<Tab>,
    current: usize,
    human: HumanReplay,
    show_help: bool,
    flash: Option<String>,
    now: Instant,
    wall: SystemTime,
    dropped_events: u64,
    next_stream: u64,
    streams: HashMap<StreamId, Owner>,
    dirty: bool,
    quit: bool,
}

impl App {
    /// A viewer of `endpoint` (shown in messages) at time `now` / `wall`.
    pub fn new(endpoint: impl Into<String>, now: Instant, wall: SystemTime) -> Self {
        App {
            endpoint: endpoint.into(),
            conn: Connection::Connecting,
            runs: RunsTable::default(),
            panes: BTreeMap::new(),
            charts: BTreeMap::new(),
            tabs: vec![Tab::Runs, Tab::HumanReplay],
            current: 0,
            human: HumanReplay::default(),
            show_help: false,
            flash: None,
            now,
            wall,
            dropped_events: 0,
            next_stream: 1,
            streams: HashMap::new(),
            dirty: true,
            quit: false,
        }
    }

    /// Applies one event and returns what the I/O layer must do.
    pub fn update(&mut self, event: Event) -> Vec<Command> {
        // A tick redraws only when something on screen depends on it (see on_tick).
        if !matches!(event, Event::Tick { .. }) {
            self.dirty = true;
        }
        let mut cmds = match event {
            Event::Key(k) => self.on_key(k),
            Event::Resize => Vec::new(),
            Event::Tick {
                at,
                wall,
                dropped_events,
            } => {
                let second = |t: SystemTime| {
                    t.duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                };
                if second(wall) != second(self.wall) || dropped_events != self.dropped_events {
                    self.dirty = true;
                }
                self.now = at;
                self.wall = wall;
                self.dropped_events = dropped_events;
                if self.on_tick() {
                    self.dirty = true;
                }
                Vec::new()
            }
            Event::Connection(c) => {
                self.conn = c;
                Vec::new()
            }
            Event::RunInfo(info) => {
                self.runs.apply_info(info);
                self.after_runs_changed();
                Vec::new()
            }
            Event::RunsListed { runs, at } => {
                self.runs.apply_summaries(runs, at);
                self.after_runs_changed();
                Vec::new()
            }
            Event::Steps { stream, message } => self.on_steps(stream, message),
            Event::Episodes { stream, message } => self.on_episodes(stream, message),
            Event::Scalars { stream, result } => {
                if let Some(Owner::Charts(run)) = self.streams.remove(&stream) {
                    let live = !self.run_finished(&run);
                    if let Some(c) = self.charts.get_mut(&run) {
                        c.apply(result, self.now, live);
                    }
                }
                Vec::new()
            }
            Event::StreamEnded { stream, error } => {
                self.on_stream_end(stream, error);
                Vec::new()
            }
        };
        cmds.extend(self.sync_streams());
        for c in &cmds {
            if let Command::Close(id) = c {
                self.streams.remove(id);
            }
        }
        if self.quit {
            cmds.extend(self.streams.drain().map(|(id, _)| Command::Close(id)));
            cmds.push(Command::Quit);
        }
        cmds
    }

    /// The daemon address.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The link state.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The Runs table.
    pub fn runs(&self) -> &RunsTable {
        &self.runs
    }

    /// The Human Replay state.
    pub fn human(&self) -> &HumanReplay {
        &self.human
    }

    /// A pane of an open run.
    pub fn pane(&self, key: &PaneKey) -> Option<&Pane> {
        self.panes.get(key)
    }

    /// The panes of an open run, in agent-id order.
    pub fn run_panes<'a>(&'a self, run_id: &'a str) -> impl Iterator<Item = &'a Pane> + 'a {
        self.panes.values().filter(move |p| p.key.run_id == run_id)
    }

    /// The Charts state of an open run.
    pub fn charts(&self, run_id: &str) -> Option<&Charts> {
        self.charts.get(run_id)
    }

    /// Whether the registry says a run has ended.
    fn run_finished(&self, run_id: &str) -> bool {
        self.runs.get(run_id).is_some_and(|r| r.is_finished())
    }

    /// Every tab, in order.
    pub fn tabs(&self) -> &[Tab] {
        &self.tabs
    }

    /// Index of the shown tab.
    pub fn current_index(&self) -> usize {
        self.current
    }

    /// The shown tab.
    pub fn current_tab(&self) -> &Tab {
        self.tabs.get(self.current).unwrap_or(&Tab::Runs)
    }

    /// Whether the key help is shown.
    pub fn show_help(&self) -> bool {
        self.show_help
    }

    /// A one-off message for the status line.
    pub fn flash(&self) -> Option<&str> {
        self.flash.as_deref()
    }

    /// Wall-clock time of the last tick.
    pub fn wall(&self) -> SystemTime {
        self.wall
    }

    /// Events the I/O layer dropped (channel full).
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Number of streams the app holds open.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Whether the user asked to leave.
    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// Whether something changed since the last call (the loop draws only then).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    fn alloc(&mut self, owner: Owner) -> StreamId {
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        self.streams.insert(id, owner);
        id
    }

    /// Fires due retries and advances playback; `true` when the screen changed.
    fn on_tick(&mut self) -> bool {
        let now = self.now;
        let mut changed = false;
        for pane in self.panes.values_mut() {
            if pane.retry_at.is_some_and(|t| t <= now) {
                pane.retry_at = None;
                changed = true;
            }
        }
        if self.human.retry_at.is_some_and(|t| t <= now) {
            // Read the list again from the start (sync_streams opens it while it is shown).
            self.human.retry_at = None;
            self.human.clear();
            self.human.requested = false;
            changed = true;
        }
        if let Some(Tab::Charts { run_id }) = self.tabs.get(self.current) {
            let live = !self.run_finished(run_id);
            if self.charts.get(run_id).is_some_and(|c| c.due(now, live)) {
                changed = true;
            }
        }
        changed
            | match self.tabs.get(self.current) {
                Some(Tab::HumanReplay) => self.human.replay.tick(),
                Some(Tab::Agent {
                    key,
                    view: AgentView::Replay,
                }) => self.panes.get_mut(key).is_some_and(|p| p.replay.tick()),
                _ => false,
            }
    }

    fn on_steps(&mut self, stream: StreamId, message: StepStreamMessage) -> Vec<Command> {
        match self.streams.get(&stream).cloned() {
            Some(Owner::Steps(key)) => {
                let Some(pane) = self.panes.get_mut(&key) else {
                    return vec![Command::Close(stream)];
                };
                let with_render = pane
                    .steps_stream
                    .is_some_and(|s| s.id == stream && s.render);
                pane.ingest_steps(message.steps, with_render);
                if let Some(n) = message.notice {
                    if pane.apply_notice(n) {
                        // The run completed: this stream is done following.
                        pane.steps_stream = None;
                        pane.steps_done = true;
                        self.add_replay_tab(&key);
                        return vec![Command::Close(stream)];
                    }
                }
                Vec::new()
            }
            Some(Owner::PaneReplay(key)) => match self.panes.get_mut(&key) {
                Some(p) => p.replay.on_steps(message.steps),
                None => vec![Command::Close(stream)],
            },
            Some(Owner::HumanFrames) => self.human.replay.on_steps(message.steps),
            Some(_) | None => Vec::new(),
        }
    }

    fn on_episodes(&mut self, stream: StreamId, message: EpisodeStreamMessage) -> Vec<Command> {
        match self.streams.get(&stream).cloned() {
            Some(Owner::Episodes(key)) => {
                let Some(pane) = self.panes.get_mut(&key) else {
                    return vec![Command::Close(stream)];
                };
                pane.ingest_episodes(message.episodes);
                if let Some(n) = message.notice {
                    if pane.apply_notice(n) {
                        pane.episodes_stream = None;
                        pane.episodes_done = true;
                        self.add_replay_tab(&key);
                        return vec![Command::Close(stream)];
                    }
                }
                Vec::new()
            }
            Some(Owner::HumanList) => {
                self.human.ingest(message.episodes);
                Vec::new()
            }
            Some(_) | None => Vec::new(),
        }
    }

    fn on_stream_end(&mut self, stream: StreamId, error: Option<String>) {
        let Some(owner) = self.streams.remove(&stream) else {
            return;
        };
        let retry_at = self.now + STREAM_RETRY;
        match owner {
            Owner::Steps(key) => {
                if let Some(p) = self.panes.get_mut(&key) {
                    p.steps_stream = None;
                    if error.is_none() && !p.following() {
                        p.steps_done = true;
                    } else {
                        p.retry_at = Some(retry_at);
                        p.note(match &error {
                            Some(e) => format!("steps stream lost: {e}; retrying"),
                            None => "steps stream ended early; retrying".to_owned(),
                        });
                    }
                }
            }
            Owner::Episodes(key) => {
                if let Some(p) = self.panes.get_mut(&key) {
                    p.episodes_stream = None;
                    if error.is_none() && !p.following() {
                        p.episodes_done = true;
                    } else {
                        p.retry_at = Some(retry_at);
                        p.note(match &error {
                            Some(e) => format!("episodes stream lost: {e}; retrying"),
                            None => "episodes stream ended early; retrying".to_owned(),
                        });
                    }
                }
            }
            Owner::PaneReplay(key) => {
                if let Some(p) = self.panes.get_mut(&key) {
                    p.replay.on_end(error);
                }
            }
            Owner::HumanList => {
                self.human.loading = false;
                self.human.stream = None;
                if error.is_some() {
                    self.human.retry_at = Some(retry_at);
                }
                self.human.error = error;
            }
            Owner::HumanFrames => self.human.replay.on_end(error),
            Owner::Charts(run) => {
                if let Some(c) = self.charts.get_mut(&run) {
                    c.apply(
                        Err(error.unwrap_or_else(|| "the read ended".into())),
                        self.now,
                        true,
                    );
                }
            }
        }
    }

    /// Opens, re-opens or leaves alone every stream so they match what is shown.
    fn sync_streams(&mut self) -> Vec<Command> {
        let mut cmds = Vec::new();
        let grid_key = match self.tabs.get(self.current) {
            Some(Tab::Agent {
                key,
                view: AgentView::Grid,
            }) => Some(key.clone()),
            _ => None,
        };
        let keys: Vec<PaneKey> = self.panes.keys().cloned().collect();
        for key in keys {
            let want_render = grid_key.as_ref() == Some(&key);
            let Some(pane) = self.panes.get(&key) else {
                continue;
            };
            let follow = pane.following();
            let lacks_render = pane.latest_render_dropped;
            let steps = pane.steps_stream;
            let retry_pending = pane.retry_at.is_some();
            // Open (or re-open) the steps stream after the last seq seen.
            let open = match steps {
                Some(s) if s.render == want_render => false,
                Some(s) => {
                    cmds.push(Command::Close(s.id));
                    true
                }
                None if retry_pending => false,
                None if follow || !pane.steps_done => true,
                None => {
                    want_render
                        && lacks_render
                        && pane.last_step_seq > 0
                        && !pane.final_render_requested
                }
            };
            if open {
                let since = reopen_since(pane.last_step_seq, want_render && lacks_render);
                let request = pane.steps_request(since, follow, want_render);
                let id = self.alloc(Owner::Steps(key.clone()));
                if let Some(p) = self.panes.get_mut(&key) {
                    if !follow && p.steps_done {
                        p.final_render_requested = true;
                    }
                    p.steps_stream = Some(StepsStream {
                        id,
                        render: want_render,
                    });
                }
                cmds.push(Command::OpenSteps {
                    stream: id,
                    request,
                });
            }
            let Some(pane) = self.panes.get(&key) else {
                continue;
            };
            if pane.episodes_stream.is_none() && !retry_pending && (follow || !pane.episodes_done) {
                let request = pane.episodes_request(follow);
                let id = self.alloc(Owner::Episodes(key.clone()));
                if let Some(p) = self.panes.get_mut(&key) {
                    p.episodes_stream = Some(id);
                }
                cmds.push(Command::OpenEpisodes {
                    stream: id,
                    request,
                });
            }
        }
        if let Some(Tab::Charts { run_id }) = self.tabs.get(self.current).cloned() {
            let live = !self.run_finished(&run_id);
            let now = self.now;
            if self.charts.get(&run_id).is_some_and(|c| c.due(now, live)) {
                let id = self.alloc(Owner::Charts(run_id.clone()));
                if let Some(c) = self.charts.get_mut(&run_id) {
                    c.in_flight = Some(id);
                    cmds.push(Command::ReadScalars {
                        stream: id,
                        request: c.request(),
                    });
                }
            }
        }
        if matches!(self.tabs.get(self.current), Some(Tab::HumanReplay)) && !self.human.requested {
            self.human.requested = true;
            self.human.loading = true;
            let id = self.alloc(Owner::HumanList);
            self.human.stream = Some(id);
            cmds.push(Command::OpenEpisodes {
                stream: id,
                request: HumanReplay::request(),
            });
        }
        cmds
    }

    fn after_runs_changed(&mut self) {
        let open_runs: Vec<String> = {
            let mut v: Vec<String> = self.panes.keys().map(|k| k.run_id.clone()).collect();
            v.dedup();
            v
        };
        for run_id in open_runs {
            let Some(row) = self.runs.get(&run_id) else {
                continue;
            };
            let finished = row
                .is_finished()
                .then(|| state_name(row.state()).to_owned());
            for agent in row.agents() {
                let key = PaneKey::new(run_id.clone(), agent);
                if !self.panes.contains_key(&key) {
                    self.add_pane(key, finished.clone());
                }
            }
            self.add_agents_tab(&run_id);
            if let Some(state) = finished {
                let keys: Vec<PaneKey> = self
                    .panes
                    .keys()
                    .filter(|k| k.run_id == run_id)
                    .cloned()
                    .collect();
                for key in keys {
                    if let Some(p) = self.panes.get_mut(&key) {
                        if p.finished_state.is_none() {
                            p.finished_state = Some(state.clone());
                        }
                    }
                    self.add_replay_tab(&key);
                }
            }
        }
    }

    fn add_pane(&mut self, key: PaneKey, finished: Option<String>) -> usize {
        let mut pane = Pane::new(key.clone());
        let is_finished = finished.is_some();
        pane.finished_state = finished;
        self.panes.insert(key.clone(), pane);
        let first = self.tabs.len();
        for view in [AgentView::Grid, AgentView::Raw, AgentView::Episodes] {
            self.tabs.push(Tab::Agent {
                key: key.clone(),
                view,
            });
        }
        if is_finished {
            self.add_replay_tab(&key);
        }
        first
    }

    /// Adds the run's Agents tab (after its Charts tab) once it has two agents or more.
    fn add_agents_tab(&mut self, run_id: &str) {
        let tab = Tab::Agents {
            run_id: run_id.to_owned(),
        };
        if self.tabs.contains(&tab) || self.run_panes(run_id).count() < 2 {
            return;
        }
        let charts = Tab::Charts {
            run_id: run_id.to_owned(),
        };
        let at = match self.tabs.iter().position(|t| *t == charts) {
            Some(i) => i + 1,
            None => self.tabs.len(),
        };
        self.tabs.insert(at, tab);
        if self.current >= at {
            self.current += 1;
        }
    }

    fn add_replay_tab(&mut self, key: &PaneKey) {
        let replay = Tab::Agent {
            key: key.clone(),
            view: AgentView::Replay,
        };
        if self.tabs.contains(&replay) {
            return;
        }
        let after = self
            .tabs
            .iter()
            .rposition(|t| matches!(t, Tab::Agent { key: k, .. } if k == key));
        if let Some(i) = after {
            self.tabs.insert(i + 1, replay);
            if self.current > i {
                self.current += 1;
            }
        }
    }

    /// Opens the run's tabs (one pane per agent) and shows the first; an open run is just shown.
    pub(crate) fn open_run(&mut self, run_id: &str) {
        if let Some(i) = self
            .tabs
            .iter()
            .position(|t| matches!(t, Tab::Agent { key, .. } if key.run_id == run_id))
        {
            self.current = i;
            return;
        }
        let Some(row) = self.runs.get(run_id) else {
            return;
        };
        let finished = row
            .is_finished()
            .then(|| state_name(row.state()).to_owned());
        let mut agents = row.agents();
        if agents.is_empty() {
            agents.push(String::new());
        }
        let mut first = None;
        for agent in agents {
            let i = self.add_pane(PaneKey::new(run_id, agent), finished.clone());
            first.get_or_insert(i);
        }
        self.charts
            .insert(run_id.to_owned(), Charts::new(run_id.to_owned()));
        let last = self
            .tabs
            .iter()
            .rposition(|t| matches!(t, Tab::Agent { key, .. } if key.run_id == run_id));
        if let Some(i) = last {
            self.tabs.insert(
                i + 1,
                Tab::Charts {
                    run_id: run_id.to_owned(),
                },
            );
        }
        self.add_agents_tab(run_id);
        if let Some(i) = first {
            self.current = i;
        }
    }

    /// Closes every tab and stream of a run and goes back to the Runs tab.
    pub(crate) fn close_run(&mut self, run_id: &str) -> Vec<Command> {
        let had = self.panes.keys().any(|k| k.run_id == run_id);
        if !had {
            return Vec::new();
        }
        self.panes.retain(|k, _| k.run_id != run_id);
        self.charts.remove(run_id);
        self.tabs.retain(|t| match t {
            Tab::Agent { key, .. } => key.run_id != run_id,
            Tab::Charts { run_id: r } | Tab::Agents { run_id: r } => r != run_id,
            Tab::Runs | Tab::HumanReplay => true,
        });
        let ids: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, o)| match o {
                Owner::Steps(k) | Owner::Episodes(k) | Owner::PaneReplay(k) => k.run_id == run_id,
                Owner::Charts(r) => r == run_id,
                Owner::HumanList | Owner::HumanFrames => false,
            })
            .map(|(id, _)| *id)
            .collect();
        self.current = 0;
        self.runs.selected = Some(run_id.to_owned());
        ids.into_iter().map(Command::Close).collect()
    }
}

/// `since_seq` for a re-opened steps stream: one step back when the last step must be re-sent
/// with its render hint (a hidden Grid tab received it without).
fn reopen_since(last_seq: u64, resend_last: bool) -> u64 {
    if resend_last {
        last_seq.saturating_sub(1)
    } else {
        last_seq
    }
}

/// A run state's short name.
pub fn state_name(state: RunState) -> &'static str {
    match state {
        RunState::Unspecified => "unknown",
        RunState::Pending => "pending",
        RunState::Running => "running",
        RunState::Completed => "completed",
        RunState::Failed => "failed",
        RunState::Cancelled => "cancelled",
    }
}
