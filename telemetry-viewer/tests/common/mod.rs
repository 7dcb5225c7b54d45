//! Helpers shared by the viewer's integration tests: scripted apps, records and a renderer
//! into ratatui's `TestBackend`.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::{Duration, Instant, SystemTime};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::{backend::TestBackend, buffer::Buffer, Terminal};
use telemetry_core::pb::{
    stream_notice::Kind, EpisodeStreamMessage, RunEpisode, RunState, RunStep, RunSummary,
    StepStreamMessage, StreamNotice, StreamRequest,
};
use telemetry_viewer::{
    app::{Command, Connection, Event, StreamId},
    views, App,
};

/// Wall-clock "now" of every scripted app.
pub fn wall() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

pub fn app() -> (App, Instant) {
    let t0 = Instant::now();
    let mut app = App::new("http://127.0.0.1:50151", t0, wall());
    app.update(Event::Connection(Connection::Connected));
    (app, t0)
}

pub fn key(code: KeyCode) -> Event {
    Event::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

pub fn summary(run: &str, state: RunState, agents: &[&str], modes: &[&str]) -> RunSummary {
    RunSummary {
        run_id: run.into(),
        state: state as i32,
        agent_ids: agents.iter().map(|a| (*a).to_owned()).collect(),
        control_modes: modes.iter().map(|m| (*m).to_owned()).collect(),
        step_count: 100,
        episode_count: 4,
        ..Default::default()
    }
}

pub fn list(app: &mut App, runs: Vec<RunSummary>, at: Instant) -> Vec<Command> {
    app.update(Event::RunsListed { runs, at })
}

pub fn step(run: &str, agent: &str, seq: u64, ep: u64, i: u64) -> RunStep {
    RunStep {
        run_id: run.into(),
        agent_id: agent.into(),
        seq_id: seq,
        episode_index: ep,
        step_index: i,
        reward: 0.5,
        action_json: "1".into(),
        observation_json: format!("{{\"pos\": {i}}}"),
        ..Default::default()
    }
}

pub fn episode(run: &str, agent: &str, seq: u64, ep: u64, mode: &str, meta: &str) -> RunEpisode {
    RunEpisode {
        run_id: run.into(),
        agent_id: agent.into(),
        seq_id: seq,
        episode_index: ep,
        total_reward: ep as f64 + 0.25,
        steps: 10,
        terminated: true,
        control_mode: mode.into(),
        metadata_json: meta.into(),
        ..Default::default()
    }
}

pub fn steps_msg(steps: Vec<RunStep>, notice: Option<Kind>) -> StepStreamMessage {
    StepStreamMessage {
        steps,
        notice: notice.map(|k| StreamNotice { kind: Some(k) }),
    }
}

pub fn episodes_msg(episodes: Vec<RunEpisode>, notice: Option<Kind>) -> EpisodeStreamMessage {
    EpisodeStreamMessage {
        episodes,
        notice: notice.map(|k| StreamNotice { kind: Some(k) }),
    }
}

/// The (stream, request) of every `OpenSteps` in `cmds`.
pub fn opened_steps(cmds: &[Command]) -> Vec<(StreamId, StreamRequest)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::OpenSteps { stream, request } => Some((*stream, request.clone())),
            _ => None,
        })
        .collect()
}

/// The (stream, request) of every `OpenEpisodes` in `cmds`.
pub fn opened_episodes(cmds: &[Command]) -> Vec<(StreamId, StreamRequest)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::OpenEpisodes { stream, request } => Some((*stream, request.clone())),
            _ => None,
        })
        .collect()
}

pub fn closed(cmds: &[Command]) -> Vec<StreamId> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Close(s) => Some(*s),
            _ => None,
        })
        .collect()
}

pub fn render(app: &App, w: u16, h: u16) -> Buffer {
    let mut term = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    term.draw(|f| views::draw(f, app)).expect("draw");
    term.backend().buffer().clone()
}

/// The buffer's rows as strings.
pub fn lines(buf: &Buffer) -> Vec<String> {
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol().to_owned())
                .collect::<String>()
        })
        .collect()
}

pub fn screen(buf: &Buffer) -> String {
    lines(buf).join("\n")
}

/// Position of the first occurrence of `needle` on screen.
pub fn find(buf: &Buffer, needle: &str) -> Option<(u16, u16)> {
    lines(buf).iter().enumerate().find_map(|(y, l)| {
        l.find(needle).map(|byte| {
            let x = l[..byte].chars().count();
            (x as u16, y as u16)
        })
    })
}

/// Opens the selected run (Enter on the Runs tab) and returns the commands.
pub fn open_selected(app: &mut App) -> Vec<Command> {
    app.update(key(KeyCode::Enter))
}
