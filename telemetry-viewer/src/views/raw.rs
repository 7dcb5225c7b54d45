//! The Raw tab: the last 100 steps of an agent as JSON, following the newest unless scrolled,
//! with the overflow ("N older steps not shown") and lag/gap notices kept in view.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Style},
    text::Line,
    widgets::{Block, Borders, Paragraph},
    Frame,
};

use crate::app::pane::Pane;

/// Draws the Raw tab of `pane`.
pub fn draw(frame: &mut Frame, area: Rect, pane: &Pane) {
    let warn = Style::default().fg(Color::Yellow);
    let mut header: Vec<Line<'static>> = Vec::new();
    if let Some(b) = super::banner(pane) {
        header.push(b);
    }
    let overflow = pane.raw_overflow();
    if overflow > 0 {
        header.push(Line::styled(
            format!(
                "{overflow} older steps not shown (last {} kept)",
                pane.raw.len()
            ),
            warn,
        ));
    }
    // The newest lag/gap notice (the status line carries the totals).
    if let Some(n) = pane.notices.back() {
        header.push(Line::styled(n.clone(), warn));
    }
    let [head, body] =
        Layout::vertical([Constraint::Length(header.len() as u16), Constraint::Min(1)]).areas(area);
    frame.render_widget(Paragraph::new(header), head);

    let total: usize = pane.raw.iter().map(|e| e.lines.len()).sum();
    let height = usize::from(body.height.saturating_sub(2));
    let max_scroll = total.saturating_sub(height);
    let scroll = pane.raw_scroll.min(max_scroll);
    let first = max_scroll - scroll;
    let lines: Vec<Line> = pane
        .raw
        .iter()
        .flat_map(|e| e.lines.iter())
        .skip(first)
        .take(height)
        .map(|l| Line::raw(l.as_str()))
        .collect();
    let title = if scroll > 0 {
        format!(
            " {} · Raw · scrolled up {scroll} (End: follow) ",
            pane.key.label()
        )
    } else {
        format!(" {} · Raw · {} steps ", pane.key.label(), pane.steps_seen)
    };
    let body_widget = if lines.is_empty() {
        Paragraph::new(Line::styled(
            "no steps yet",
            Style::default().fg(Color::DarkGray),
        ))
    } else {
        Paragraph::new(lines)
    };
    frame.render_widget(
        body_widget.block(Block::default().borders(Borders::ALL).title(title)),
        body,
    );
}
