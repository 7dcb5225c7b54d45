//! The replay tabs: an episode list (top) and the chosen episode's frames (bottom), stepped
//! frame by frame or played. Human Replay lists human (or unknown) episodes of every run; an
//! agent's Replay tab lists that agent's episodes of a finished run.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Text},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState},
    Frame,
};
use telemetry_core::pb::RunEpisode;

use super::{episodes::meta_cells, grid::step_frame};
use crate::app::{human::HumanReplay, pane::Pane, replay::ReplayState};

/// Draws the Human Replay tab.
pub fn draw_human(frame: &mut Frame, area: Rect, human: &HumanReplay) {
    let mut title = format!(" Human Replay · {} episodes", human.episodes.len());
    if human.loading {
        title.push_str(" (loading…)");
    }
    if human.filtered_out > 0 {
        title.push_str(&format!(" · {} non-human hidden", human.filtered_out));
    }
    if human.evicted > 0 {
        title.push_str(&format!(" · {} older not listed", human.evicted));
    }
    title.push(' ');
    let empty = if let Some(e) = &human.error {
        format!("could not read episodes: {e} (retrying; R reloads now)")
    } else if human.loading {
        "reading stored episodes…".to_owned()
    } else {
        "no human (or unknown-mode) episodes stored".to_owned()
    };
    let eps: Vec<&RunEpisode> = human.episodes.iter().collect();
    draw_replay(frame, area, &eps, &human.replay, &title, &empty, true);
}

/// Draws an agent's Replay tab.
pub fn draw_agent(frame: &mut Frame, area: Rect, pane: &Pane) {
    let title = format!(
        " {} · Replay · {} episodes ",
        pane.key.label(),
        pane.episodes.len()
    );
    let eps: Vec<&RunEpisode> = pane.episodes.iter().collect();
    let banner = super::banner(pane);
    let [head, rest] = Layout::vertical([
        Constraint::Length(u16::from(banner.is_some())),
        Constraint::Min(1),
    ])
    .areas(area);
    if let Some(b) = banner {
        frame.render_widget(Paragraph::new(b), head);
    }
    draw_replay(
        frame,
        rest,
        &eps,
        &pane.replay,
        &title,
        "no episodes stored",
        false,
    );
}

fn draw_replay(
    frame: &mut Frame,
    area: Rect,
    episodes: &[&RunEpisode],
    replay: &ReplayState,
    title: &str,
    empty: &str,
    with_run: bool,
) {
    let list_height = if replay.frames.is_some() {
        8
    } else {
        area.height
    };
    let [list, frames] =
        Layout::vertical([Constraint::Length(list_height), Constraint::Min(0)]).areas(area);
    if episodes.is_empty() {
        frame.render_widget(
            Paragraph::new(Line::styled(
                empty.to_owned(),
                Style::default().fg(Color::DarkGray),
            ))
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(title.to_owned()),
            ),
            list,
        );
    } else {
        let rows: Vec<Row> = episodes
            .iter()
            .map(|ep| {
                let [seed, game, mode] = meta_cells(ep);
                let mut cells = Vec::new();
                if with_run {
                    cells.push(Cell::from(format!("{}/{}", ep.run_id, ep.agent_id)));
                }
                cells.extend([
                    Cell::from(ep.episode_index.to_string()),
                    Cell::from(format!("{:.2}", ep.total_reward)),
                    Cell::from(ep.steps.to_string()),
                    Cell::from(seed),
                    Cell::from(game),
                    Cell::from(mode),
                ]);
                Row::new(cells)
            })
            .collect();
        let mut widths = Vec::new();
        let mut header = Vec::new();
        if with_run {
            widths.push(Constraint::Min(14));
            header.push("Run/agent");
        }
        widths.extend([
            Constraint::Length(5),
            Constraint::Length(8),
            Constraint::Length(5),
            Constraint::Length(8),
            Constraint::Min(10),
            Constraint::Length(8),
        ]);
        header.extend(["#", "Return", "Len", "Seed", "Game", "Mode"]);
        let table = Table::new(rows, widths)
            .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(title.to_owned()),
            )
            .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
        let mut state = TableState::default().with_selected(Some(replay.selected));
        frame.render_stateful_widget(table, list, &mut state);
    }
    if let Some(f) = &replay.frames {
        let mut title = format!(
            " {}/{} ep {} · frame {}/{}",
            f.run_id,
            f.agent_id,
            f.episode_index,
            if f.steps.is_empty() { 0 } else { f.pos + 1 },
            f.steps.len()
        );
        if f.loading {
            title.push_str(" (loading…)");
        }
        if replay.playing {
            title.push_str(" ▶");
        }
        if f.over_limit > 0 {
            title.push_str(&format!(" · {} more not kept", f.over_limit));
        }
        title.push(' ');
        let text = match replay.current() {
            Some(step) => {
                let mut lines = vec![Line::styled(
                    format!(
                        "step {} · action {} · reward {:.3}{}{}",
                        step.step_index,
                        crate::render_hint::escape_controls(crate::render_hint::truncate_at_char(
                            &step.action_json,
                            40
                        )),
                        step.reward,
                        if step.terminated {
                            " · terminated"
                        } else {
                            ""
                        },
                        if step.truncated { " · truncated" } else { "" },
                    ) + &super::episodes::policy_label(&step.policy_id, &step.policy_digest)
                        .map(|p| format!(" · policy {p}"))
                        .unwrap_or_default(),
                    Style::default().fg(Color::DarkGray),
                )];
                lines.extend(step_frame(step).lines);
                Text::from(lines)
            }
            None => Text::from(Line::styled(
                match (&f.error, f.loading) {
                    (Some(e), _) => format!("could not read steps: {e}"),
                    (None, true) => "reading stored steps…".to_owned(),
                    (None, false) => "no stored steps for this episode".to_owned(),
                },
                Style::default().fg(Color::DarkGray),
            )),
        };
        frame.render_widget(
            Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(title)),
            frames,
        );
    }
}
