//! The key help overlay (`?`): the one list of bindings a user needs, readable at 80x24.

use ratatui::{
    layout::Rect,
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph},
    Frame,
};

/// Every binding, as (keys, what they do).
pub const KEYS: &[(&str, &str)] = &[
    ("Tab / Shift-Tab", "next / previous tab ([ ] too)"),
    ("1 / 2", "Runs / Human Replay"),
    ("↑↓ j k PgUp PgDn", "move selection, scroll Raw"),
    ("Enter", "open run · load episode · replay it"),
    ("g r e p", "agent's Grid / Raw / Episodes / Replay"),
    ("c", "the run's Charts (↑↓ j k: tag group)"),
    ("a", "the run's Agents: every agent side by side"),
    ("← → h l", "replay: previous / next frame"),
    ("Home End", "first / last (frame, row, Raw top/tail)"),
    ("Space", "replay: play / pause"),
    ("Esc", "replay: back to the list"),
    ("x", "close the run's tabs"),
    ("R / F5", "Human Replay: reload the list"),
    ("?", "this help"),
    ("q / Ctrl-C", "quit"),
];

/// Draws the help box over `area`.
pub fn draw(frame: &mut Frame, area: Rect) {
    let rect = super::centered(area, 64, KEYS.len() as u16 + 2);
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(
                    format!("{k:>18} "),
                    Style::default()
                        .fg(Color::Cyan)
                        .add_modifier(Modifier::BOLD),
                ),
                Span::raw(*what),
            ])
        })
        .collect();
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" keys (? to close) "),
        ),
        rect,
    );
}
