//! The Runs tab: one row per run (status, control mode, agents, steps/s, episodes, drops, lag),
//! and a clear "cannot connect" line while the daemon is away.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
    Frame,
};
use telemetry_core::pb::RunState;

use crate::app::{runs::RunRow, state_name, App, Connection, Tab};

/// Draws the Runs tab.
pub fn draw(frame: &mut Frame, area: Rect, app: &App) {
    let unreachable = matches!(app.connection(), Connection::Unreachable { .. });
    let [top, table_area, detail_area] = Layout::vertical([
        Constraint::Length(if unreachable { 2 } else { 1 }),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    let top_line = match app.connection() {
        Connection::Unreachable { error, retry_in } => {
            let red = Style::default().fg(Color::Red);
            let lines = vec![
                Line::styled(
                    format!(
                        "cannot connect to {}, retrying in {}s",
                        app.endpoint(),
                        retry_in.as_secs().max(1)
                    ),
                    red.add_modifier(Modifier::BOLD),
                ),
                Line::styled(crate::render_hint::escape_controls(error), red),
            ];
            frame.render_widget(Paragraph::new(lines), top);
            Line::default()
        }
        Connection::Connecting => Line::styled(
            format!("connecting to {}…", app.endpoint()),
            Style::default().fg(Color::Yellow),
        ),
        Connection::Connected => Line::styled(
            format!(
                "{} runs · Enter opens · x closes · ? help",
                app.runs().len()
            ),
            Style::default().fg(Color::DarkGray),
        ),
    };
    if !unreachable {
        frame.render_widget(Paragraph::new(top_line), top);
    }

    let open: Vec<&str> = app
        .tabs()
        .iter()
        .filter_map(|t| match t {
            Tab::Agent { key, .. } => Some(key.run_id.as_str()),
            _ => None,
        })
        .collect();
    let ordered = app.runs().ordered();
    let rows: Vec<Row> = ordered
        .iter()
        .map(|r| run_row(r, open.contains(&r.run_id.as_str()), app))
        .collect();
    let header = Row::new([
        "Run", "Status", "Mode", "Agents", "Steps/s", "Eps", "Drops", "Lag",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let table = Table::new(
        rows,
        [
            Constraint::Min(12),
            Constraint::Length(9),
            Constraint::Length(11),
            Constraint::Length(10),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Length(5),
        ],
    )
    .header(header)
    .block(Block::default().borders(Borders::ALL).title(" Runs "))
    .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(app.runs().selected_index());
    if ordered.is_empty() {
        let msg = match app.connection() {
            Connection::Connected => "no runs yet",
            _ => "no runs known (waiting for the daemon)",
        };
        frame.render_widget(
            Paragraph::new(msg).block(Block::default().borders(Borders::ALL).title(" Runs ")),
            table_area,
        );
    } else {
        frame.render_stateful_widget(table, table_area, &mut state);
    }

    let detail_line = app
        .runs()
        .selected
        .as_deref()
        .and_then(|id| app.runs().get(id))
        .map(detail)
        .unwrap_or_default();
    frame.render_widget(Paragraph::new(detail_line), detail_area);
}

fn run_row<'a>(r: &RunRow, open: bool, app: &App) -> Row<'a> {
    let state = r.state();
    let colour = match state {
        RunState::Running => Color::Green,
        RunState::Failed => Color::Red,
        RunState::Cancelled => Color::Yellow,
        RunState::Pending => Color::Cyan,
        _ => Color::Gray,
    };
    let agents = r.agents();
    let agents = match agents.len() {
        0 => "—".to_owned(),
        1 => agents[0].clone(),
        n => format!("{} +{}", agents[0], n - 1),
    };
    let modes = r.control_modes();
    let summary = r.summary.as_ref();
    let drops = summary.map(|s| s.dropped_steps + s.dropped_episodes);
    let run = if open {
        format!("▶ {}", r.run_id)
    } else {
        r.run_id.clone()
    };
    Row::new(vec![
        Cell::from(run),
        Cell::from(state_name(state)).style(Style::default().fg(colour)),
        Cell::from(if modes.is_empty() {
            "—".to_owned()
        } else {
            modes
        }),
        Cell::from(agents),
        Cell::from(
            r.steps_per_sec
                .map_or("—".to_owned(), |v| format!("{v:.1}")),
        ),
        Cell::from(summary.map_or("—".to_owned(), |s| s.episode_count.to_string())),
        Cell::from(drops.map_or("—".to_owned(), |d| d.to_string())).style(
            if drops.unwrap_or(0) > 0 {
                Style::default().fg(Color::Yellow)
            } else {
                Style::default()
            },
        ),
        Cell::from(
            r.lag_secs(app.wall())
                .map_or("—".to_owned(), |s| format!("{s:.0}s")),
        ),
    ])
}

fn detail(r: &RunRow) -> Line<'static> {
    let mut s = format!("{}: {}", r.run_id, state_name(r.state()));
    if let Some(sum) = &r.summary {
        s.push_str(&format!(" · {} steps", sum.step_count));
        if !sum.game_id.is_empty() {
            s.push_str(&format!(" · game {}", sum.game_id));
        }
    } else if let Some(i) = &r.info {
        if !i.game_id.is_empty() {
            s.push_str(&format!(" · game {}", i.game_id));
        }
    }
    let reason = r.failure_reason();
    if !reason.is_empty() {
        s.push_str(&format!(
            " · {}",
            crate::render_hint::escape_controls(reason)
        ));
    }
    Line::styled(s, Style::default().fg(Color::DarkGray))
}
