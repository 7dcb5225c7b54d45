//! The Agents tab of a run with several agents (a PettingZoo worker, a vector env): every
//! agent's returns side by side, so a multi-agent researcher sees at a glance which agent
//! learns and which lags, without flipping through each agent's Episodes tab.
//!
//! One row per agent (in agent-id order): episodes and steps seen, the last, mean and best
//! return and the mean length over the episodes the pane keeps (`pane::EPISODES_KEEP`), and a
//! text sparkline of its latest returns. Every sparkline shares one scale, the lowest and
//! highest return over all agents, so bars are comparable across rows.

use ratatui::{
    layout::{Constraint, Rect},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Paragraph, Row, Table},
    Frame,
};

use crate::app::pane::Pane;

use super::episodes::MISSING;

/// The bar characters of the sparkline column, lowest first.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// What the Agents tab shows of one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSummary {
    /// The agent.
    pub agent_id: String,
    /// Episodes received for it.
    pub episodes: u64,
    /// Steps received for it.
    pub steps: u64,
    /// The return of its last episode.
    pub last_return: Option<f64>,
    /// The mean return over the kept episodes.
    pub mean_return: Option<f64>,
    /// The best return over the kept episodes.
    pub best_return: Option<f64>,
    /// The mean length over the kept episodes.
    pub mean_length: Option<f64>,
    /// The finite returns of its latest episodes, oldest first.
    pub recent: Vec<f64>,
}

impl AgentSummary {
    /// The summary of `pane`, with at most `recent` returns for the sparkline.
    pub fn of(pane: &Pane, recent: usize) -> Self {
        let returns: Vec<f64> = pane
            .episodes
            .iter()
            .map(|e| e.total_reward)
            .filter(|r| r.is_finite())
            .collect();
        let n = returns.len() as f64;
        let mean = |v: f64| (n > 0.0).then(|| v / n);
        let lengths: f64 = pane.episodes.iter().map(|e| e.steps as f64).sum();
        AgentSummary {
            agent_id: pane.key.agent_id.clone(),
            episodes: pane.episodes_seen,
            steps: pane.steps_seen,
            last_return: returns.last().copied(),
            mean_return: mean(returns.iter().sum()),
            best_return: returns.iter().copied().reduce(f64::max),
            mean_length: (!pane.episodes.is_empty()).then(|| lengths / pane.episodes.len() as f64),
            recent: returns[returns.len().saturating_sub(recent)..].to_vec(),
        }
    }
}

/// `recent` as bars on the shared scale `lo..=hi` (all mid-height when the scale is flat).
pub fn spark(recent: &[f64], lo: f64, hi: f64) -> String {
    let span = hi - lo;
    recent
        .iter()
        .map(|r| {
            if span > 0.0 {
                let i = ((r - lo) / span * (BARS.len() - 1) as f64).round() as usize;
                BARS[i.min(BARS.len() - 1)]
            } else {
                BARS[BARS.len() / 2]
            }
        })
        .collect()
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| MISSING.to_owned(), |v| format!("{v:.decimals$}"))
}

/// Draws the Agents tab of `run_id` from its panes.
pub fn draw<'a>(
    frame: &mut Frame,
    area: Rect,
    run_id: &str,
    panes: impl Iterator<Item = &'a Pane>,
) {
    // Fixed columns take 7 + 9 + 9 + 9 + 9 + 8 + 9 cells plus the agent name; the rest is the
    // sparkline.
    let spark_width = usize::from(area.width.saturating_sub(2 + 60 + 14 + 8)).max(4);
    let rows: Vec<AgentSummary> = panes.map(|p| AgentSummary::of(p, spark_width)).collect();
    let title = format!(" {run_id} · {} agents side by side ", rows.len());
    if rows.is_empty() {
        frame.render_widget(
            Paragraph::new(Line::styled(
                "no agents yet",
                Style::default().fg(Color::DarkGray),
            ))
            .block(Block::default().borders(Borders::ALL).title(title)),
            area,
        );
        return;
    }
    let all = rows.iter().flat_map(|r| r.recent.iter().copied());
    let lo = all.clone().fold(f64::INFINITY, f64::min);
    let hi = all.fold(f64::NEG_INFINITY, f64::max);
    let best = rows
        .iter()
        .filter_map(|r| r.mean_return)
        .fold(f64::NEG_INFINITY, f64::max);
    let table_rows: Vec<Row> = rows
        .iter()
        .map(|r| {
            let lead = r.mean_return.is_some_and(|m| m == best) && rows.len() > 1;
            let style = if lead {
                Style::default().fg(Color::Green)
            } else {
                Style::default()
            };
            Row::new(vec![
                Cell::from(crate::render_hint::escape_controls(&r.agent_id)),
                Cell::from(r.episodes.to_string()),
                Cell::from(r.steps.to_string()),
                Cell::from(num(r.last_return, 2)),
                Cell::from(num(r.mean_return, 2)),
                Cell::from(num(r.best_return, 2)),
                Cell::from(num(r.mean_length, 1)),
                Cell::from(spark(&r.recent, lo, hi)).style(Style::default().fg(Color::Cyan)),
            ])
            .style(style)
        })
        .collect();
    let scale = if lo.is_finite() {
        format!("returns {lo:.2} … {hi:.2}")
    } else {
        "returns".to_owned()
    };
    let table = Table::new(
        table_rows,
        [
            Constraint::Length(14),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Min(4),
        ],
    )
    .header(
        Row::new([
            "Agent", "Eps", "Steps", "Last", "Mean", "Best", "Len", &scale,
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::default().borders(Borders::ALL).title(title));
    frame.render_widget(table, area);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparks_share_one_scale() {
        assert_eq!(spark(&[0.0, 5.0, 10.0], 0.0, 10.0), "▁▅█");
        assert_eq!(spark(&[5.0], 0.0, 10.0), "▅");
        assert_eq!(
            spark(&[3.0, 3.0], 3.0, 3.0),
            "▅▅",
            "a flat scale is mid height"
        );
    }
}
