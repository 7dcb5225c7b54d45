//! The Episodes tab: return, length, how it ended and its metadata (seed, game, control mode)
//! for each episode of an agent, with a sparkline of returns.
//!
//! The metadata cells come from `telemetry_core::jsonl::discover_episode_meta`, which knows every
//! spelling workers use (`game_id`, `env_id`, ...): a value the worker sent is never an empty
//! cell ("—" means the worker really did not send it).

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table, TableState},
    Frame,
};
use serde_json::Value;
use telemetry_core::{jsonl::discover_episode_meta, pb::RunEpisode};

use crate::{app::human::episode_control_mode, app::pane::Pane, render_hint::escape_controls};

/// What stands in a cell for a value the worker did not send.
pub const MISSING: &str = "—";

/// The seed, game id and control mode cells of an episode.
pub fn meta_cells(ep: &RunEpisode) -> [String; 3] {
    let meta = discover_episode_meta(ep);
    let seed = match meta.seed {
        Some(Value::String(s)) => escape_controls(&s),
        Some(Value::Null) | None => MISSING.to_owned(),
        Some(v) => v.to_string(),
    };
    let game = meta
        .game_id
        .filter(|g| !g.is_empty())
        .map_or_else(|| MISSING.to_owned(), |g| escape_controls(&g));
    let mode = match episode_control_mode(ep) {
        Ok(m) => m.as_str().to_owned(),
        Err(raw) => escape_controls(&raw),
    };
    [seed, game, mode]
}

/// The equipped policy a record names, as `id @digest-prefix` (controls escaped), or `None`
/// when the agent ran without one.
pub fn policy_label(policy_id: &str, policy_digest: &str) -> Option<String> {
    if policy_id.is_empty() {
        return None;
    }
    let digest = policy_digest.get(..12).unwrap_or(policy_digest);
    Some(format!(
        "{} @{}",
        escape_controls(policy_id),
        escape_controls(digest)
    ))
}

/// Draws the Episodes tab of `pane`.
pub fn draw(frame: &mut Frame, area: Rect, pane: &Pane) {
    let banner = super::banner(pane);
    let [head, table_area, spark] = Layout::vertical([
        Constraint::Length(u16::from(banner.is_some())),
        Constraint::Min(4),
        Constraint::Length(5),
    ])
    .areas(area);
    if let Some(b) = banner {
        frame.render_widget(Paragraph::new(b), head);
    }
    let rows: Vec<Row> = pane
        .episodes
        .iter()
        .map(|ep| {
            let [seed, game, mode] = meta_cells(ep);
            Row::new(vec![
                Cell::from(ep.episode_index.to_string()),
                Cell::from(format!("{:.3}", ep.total_reward)),
                Cell::from(ep.steps.to_string()),
                Cell::from(yes_no(ep.terminated)),
                Cell::from(yes_no(ep.truncated)),
                Cell::from(seed),
                Cell::from(game),
                Cell::from(mode),
            ])
        })
        .collect();
    let mut title = format!(" {} · {} episodes ", pane.key.label(), pane.episodes_seen);
    if pane.episodes_overflow() > 0 {
        title.push_str(&format!("({} older not shown) ", pane.episodes_overflow()));
    }
    // The policy this agent ran with (its latest episode's), so a chart or replay is never
    // mistaken for another policy's.
    if let Some(p) = pane
        .episodes
        .iter()
        .rev()
        .find_map(|ep| policy_label(&ep.policy_id, &ep.policy_digest))
    {
        title.push_str(&format!("· policy {p} "));
    }
    if pane.episodes.is_empty() {
        frame.render_widget(
            Paragraph::new(Line::styled(
                "no episodes yet",
                Style::default().fg(Color::DarkGray),
            ))
            .block(Block::default().borders(Borders::ALL).title(title)),
            table_area,
        );
    } else {
        let table = Table::new(
            rows,
            [
                Constraint::Length(5),
                Constraint::Length(9),
                Constraint::Length(6),
                Constraint::Length(5),
                Constraint::Length(5),
                Constraint::Length(10),
                Constraint::Min(10),
                Constraint::Length(11),
            ],
        )
        .header(
            Row::new([
                "#", "Return", "Len", "Term", "Trunc", "Seed", "Game", "Mode",
            ])
            .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::default().borders(Borders::ALL).title(title))
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
        let mut state = TableState::default().with_selected(Some(pane.episode_selected));
        frame.render_stateful_widget(table, table_area, &mut state);
    }
    draw_sparkline(frame, spark, pane);
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn draw_sparkline(frame: &mut Frame, area: Rect, pane: &Pane) {
    let width = usize::from(area.width.saturating_sub(2)).max(1);
    let returns: Vec<f64> = pane
        .episodes
        .iter()
        .rev()
        .take(width)
        .rev()
        .map(|e| e.total_reward)
        .filter(|r| r.is_finite())
        .collect();
    let (bars, title) = scaled_returns(&returns);
    frame.render_widget(
        Sparkline::default()
            .data(bars)
            // Bars are scaled to 1..=100; a fixed top keeps equal returns at mid height
            // instead of drawing them as full bars.
            .max(100)
            .style(Style::default().fg(Color::Cyan))
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

/// Returns scaled to 1..=100 bars (the lowest return still shows) and a title with the range.
pub fn scaled_returns(returns: &[f64]) -> (Vec<u64>, String) {
    if returns.is_empty() {
        return (Vec::new(), " returns ".to_owned());
    }
    let min = returns.iter().copied().fold(f64::INFINITY, f64::min);
    let max = returns.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = max - min;
    let bars = returns
        .iter()
        .map(|r| {
            if span > 0.0 {
                1 + ((r - min) / span * 99.0).round() as u64
            } else {
                50
            }
        })
        .collect();
    (
        bars,
        format!(
            " returns (last {}) min {min:.2} max {max:.2} ",
            returns.len()
        ),
    )
}
