//! The Grid tab: the newest frame of an agent, from the step's ANSI render hint (grid
//! environments) or, without one, a readable view of its observation.

use ratatui::{
    layout::Rect,
    style::{Color, Style},
    text::{Line, Text},
    widgets::{Block, Borders, Paragraph},
    Frame,
};
use telemetry_core::pb::RunStep;

use crate::{
    app::pane::Pane,
    render_hint::{frame_of, FrameSource},
};

/// Draws the Grid tab of `pane`.
pub fn draw(frame: &mut Frame, area: Rect, pane: &Pane) {
    let mut lines: Vec<Line<'static>> = Vec::new();
    if let Some(b) = super::banner(pane) {
        lines.push(b);
    }
    let title = match &pane.latest {
        Some(s) => format!(
            " {} · ep {} step {} · reward {:.3} · return {:.3} ",
            pane.key.label(),
            s.episode_index,
            s.step_index,
            s.reward,
            pane.episode_return
        ),
        None => format!(" {} ", pane.key.label()),
    };
    match &pane.latest {
        Some(step) => lines.extend(step_frame(step).lines),
        None => lines.push(Line::styled(
            if pane.following() {
                "waiting for steps…"
            } else {
                "no steps"
            },
            Style::default().fg(Color::DarkGray),
        )),
    }
    frame.render_widget(
        Paragraph::new(Text::from(lines))
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

/// The frame of a step with a dim note above it when it is not the render hint.
pub fn step_frame(step: &RunStep) -> Text<'static> {
    let f = frame_of(step);
    let dim = Style::default().fg(Color::DarkGray);
    let mut lines = Vec::new();
    if let Some(note) = f.note {
        lines.push(Line::styled(note, Style::default().fg(Color::Yellow)));
    }
    if f.source == FrameSource::Observation {
        lines.push(Line::styled("(no render hint: observation)", dim));
    }
    lines.extend(f.text.lines);
    Text::from(lines)
}
