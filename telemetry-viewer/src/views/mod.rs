//! Pure rendering: [`draw`] paints an [`App`] into a ratatui frame and touches nothing else, so
//! every view is tested with ratatui's `TestBackend` from scripted state.
//!
//! Layout (works down to 80x24): one line of tabs, the body of the shown tab, one status line
//! (link state, lag, drops, gaps, key hint), and the key help on top when asked for.

pub mod agents;
pub mod charts;
pub mod episodes;
pub mod grid;
pub mod help;
pub mod raw;
pub mod replay;
pub mod runs;

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::Paragraph,
    Frame,
};

use crate::app::{pane::Pane, AgentView, App, Connection, Tab};

/// Paints the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let [tabs, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let titles: Vec<String> = app.tabs().iter().map(Tab::title).collect();
    frame.render_widget(
        Paragraph::new(tab_bar(&titles, app.current_index(), tabs.width)),
        tabs,
    );
    match app.current_tab() {
        Tab::Runs => runs::draw(frame, body, app),
        Tab::HumanReplay => replay::draw_human(frame, body, app.human()),
        Tab::Agent { key, view } => match app.pane(key) {
            Some(pane) => match view {
                AgentView::Grid => grid::draw(frame, body, pane),
                AgentView::Raw => raw::draw(frame, body, pane),
                AgentView::Episodes => episodes::draw(frame, body, pane),
                AgentView::Replay => replay::draw_agent(frame, body, pane),
            },
            None => frame.render_widget(Paragraph::new("(closed)"), body),
        },
        Tab::Charts { run_id } => match app.charts(run_id) {
            Some(c) => charts::draw(frame, body, c),
            None => frame.render_widget(Paragraph::new("(closed)"), body),
        },
        Tab::Agents { run_id } => agents::draw(frame, body, run_id, app.run_panes(run_id)),
    }
    frame.render_widget(Paragraph::new(status_line(app)), status);
    if app.show_help() {
        help::draw(frame, frame.area());
    }
}

/// The tab bar: the titles that fit around the selected one, with `‹`/`›` where some are cut.
pub fn tab_bar(titles: &[String], selected: usize, width: u16) -> Line<'static> {
    let width = usize::from(width);
    let w = |i: usize| titles.get(i).map_or(0, |t| t.chars().count() + 3);
    let (mut start, mut end) = (selected.min(titles.len()), selected.min(titles.len()));
    let mut used = 2; // room for the arrows
                      // Grow a window around the selected tab, preferring tabs after it.
    loop {
        let mut grew = false;
        if end < titles.len() && used + w(end) <= width {
            used += w(end);
            end += 1;
            grew = true;
        }
        if start > 0 && used + w(start - 1) <= width {
            start -= 1;
            used += w(start);
            grew = true;
        }
        if !grew {
            break;
        }
    }
    if end == start && !titles.is_empty() {
        end = (start + 1).min(titles.len());
    }
    let mut spans = Vec::new();
    spans.push(Span::styled(
        if start > 0 { "‹" } else { " " },
        Style::default().fg(Color::DarkGray),
    ));
    for (i, t) in titles.iter().enumerate().take(end).skip(start) {
        let style = if i == selected {
            Style::default()
                .fg(Color::Black)
                .bg(Color::Cyan)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::default().fg(Color::Gray)
        };
        spans.push(Span::styled(format!(" {t} "), style));
        spans.push(Span::raw("│"));
    }
    if end < titles.len() {
        spans.push(Span::styled("›", Style::default().fg(Color::DarkGray)));
    }
    Line::from(spans)
}

/// The status line: what the shown tab knows about lag, drops and gaps, then the link state.
pub fn status_line(app: &App) -> Line<'static> {
    let mut spans: Vec<Span<'static>> = Vec::new();
    if let Some(f) = app.flash() {
        spans.push(Span::styled(
            format!("{f} · "),
            Style::default().fg(Color::Yellow),
        ));
    }
    if let Tab::Agent { key, .. } = app.current_tab() {
        if let Some(p) = app.pane(key) {
            spans.extend(pane_status(p));
        }
    }
    if app.dropped_events() > 0 {
        spans.push(Span::styled(
            format!("viewer dropped {} batches · ", app.dropped_events()),
            Style::default().fg(Color::Red),
        ));
    }
    spans.push(connection_span(app));
    spans.push(Span::styled(
        " · ? help",
        Style::default().fg(Color::DarkGray),
    ));
    Line::from(spans)
}

fn pane_status(p: &Pane) -> Vec<Span<'static>> {
    let state = if let Some(b) = p.completion_banner() {
        b
    } else if p.caught_up {
        "live".to_owned()
    } else {
        "catching up".to_owned()
    };
    let warn = p.lagged_steps + p.lagged_episodes > 0 || p.gaps > 0;
    let style = if warn {
        Style::default().fg(Color::Yellow)
    } else {
        Style::default()
    };
    vec![
        Span::raw(format!("{state} · ")),
        Span::styled(
            format!(
                "lag drops {} · gaps {} · ",
                p.lagged_steps + p.lagged_episodes,
                p.gaps
            ),
            style,
        ),
    ]
}

fn connection_span(app: &App) -> Span<'static> {
    match app.connection() {
        Connection::Connecting => Span::styled(
            format!("connecting to {}", app.endpoint()),
            Style::default().fg(Color::Yellow),
        ),
        Connection::Connected => Span::styled(
            format!("● {}", app.endpoint()),
            Style::default().fg(Color::Green),
        ),
        Connection::Unreachable { retry_in, .. } => Span::styled(
            format!(
                "cannot connect to {}, retrying in {}s",
                app.endpoint(),
                retry_in.as_secs().max(1)
            ),
            Style::default().fg(Color::Red),
        ),
    }
}

/// A line announcing the run's end, when it has ended.
pub(crate) fn banner(p: &Pane) -> Option<Line<'static>> {
    p.completion_banner().map(|b| {
        let failed = p
            .completed
            .as_ref()
            .is_some_and(|c| c.status() != telemetry_core::pb::CompletionStatus::Succeeded)
            || p.finished_state
                .as_deref()
                .is_some_and(|s| s != "completed");
        let colour = if failed { Color::Red } else { Color::Green };
        Line::styled(
            format!("■ {b} — not following"),
            Style::default().fg(colour).add_modifier(Modifier::BOLD),
        )
    })
}

/// A centred rectangle of at most `w` x `h` inside `area`.
pub(crate) fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tab_bar_keeps_the_selected_tab_visible() {
        let titles: Vec<String> = (0..20).map(|i| format!("run{i}/agent: Grid")).collect();
        let line = tab_bar(&titles, 15, 80).to_string();
        assert!(line.contains("run15/agent: Grid"), "{line}");
        assert!(line.starts_with('‹'));
        assert!(line.chars().count() <= 80, "{}", line.chars().count());
    }
}
