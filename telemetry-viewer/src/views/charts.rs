//! The Charts tab: the run's tag groups on the left, the shown group's curves on the right, one
//! line chart per tag (the last value of each bucket as the line, the bucket extremes as dots so
//! a spike shows even when the line smooths it). NaN and infinite values are not drawable: each
//! chart's title counts them instead, so a diverged loss is visible, not hidden.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    symbols::Marker,
    text::{Line, Span},
    widgets::{Axis, Block, Borders, Chart, Dataset, GraphType, List, ListItem, Paragraph},
    Frame,
};
use telemetry_core::pb::ScalarSeries;

use crate::app::charts::{Charts, MAX_CHARTS_SHOWN};

/// Draws the Charts tab of one run.
pub fn draw(frame: &mut Frame, area: Rect, c: &Charts) {
    if c.series.is_empty() {
        let text = match (&c.error, c.reads) {
            (Some(e), _) => format!("cannot read the curves: {e}"),
            (None, 0) => "reading curves…".to_owned(),
            (None, _) => {
                "no scalars in this run yet (log_scalar / SummaryWriter.add_scalar)".to_owned()
            }
        };
        frame.render_widget(Paragraph::new(text), area);
        return;
    }
    let [left, right] =
        Layout::horizontal([Constraint::Length(18), Constraint::Min(20)]).areas(area);
    let groups = c.groups();
    let items: Vec<ListItem> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let name = if g.is_empty() { "(no group)" } else { g };
            let n = c
                .series
                .iter()
                .filter(|s| crate::app::charts::group_of(&s.tag) == *g)
                .count();
            let style = if i == c.selected {
                Style::default()
                    .fg(Color::Black)
                    .bg(Color::Cyan)
                    .add_modifier(Modifier::BOLD)
            } else {
                Style::default()
            };
            ListItem::new(Line::styled(format!("{name} ({n})"), style))
        })
        .collect();
    frame.render_widget(
        List::new(items).block(Block::default().borders(Borders::RIGHT).title("groups")),
        left,
    );
    let shown = c.shown();
    let n = shown.len().clamp(1, MAX_CHARTS_SHOWN);
    let mut constraints = vec![Constraint::Ratio(1, n as u32); n];
    let hidden = shown.len().saturating_sub(MAX_CHARTS_SHOWN);
    if hidden > 0 {
        constraints.push(Constraint::Length(1));
    }
    let rows = Layout::vertical(constraints).split(right);
    for (s, rect) in shown.iter().zip(rows.iter()) {
        draw_series(frame, *rect, s);
    }
    if hidden > 0 {
        let names: Vec<&str> = shown[MAX_CHARTS_SHOWN..]
            .iter()
            .map(|s| s.tag.as_str())
            .collect();
        if let Some(r) = rows.last() {
            frame.render_widget(
                Paragraph::new(format!("+{hidden} more: {}", names.join(", "))),
                *r,
            );
        }
    }
}

/// A value as a chart label: short, and honest about NaN and infinities.
pub fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+inf" } else { "-inf" }.to_owned()
    } else if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

fn draw_series(frame: &mut Frame, area: Rect, s: &ScalarSeries) {
    let line: Vec<(f64, f64)> = s
        .buckets
        .iter()
        .filter(|b| b.last.is_finite())
        .map(|b| (b.last_step as f64, b.last))
        .collect();
    let extremes: Vec<(f64, f64)> = s
        .buckets
        .iter()
        .flat_map(|b| [(b.first_step, b.min), (b.last_step, b.max)])
        .filter(|(_, v)| v.is_finite())
        .map(|(x, v)| (x as f64, v))
        .collect();
    let non_finite: u64 = s
        .buckets
        .iter()
        .map(|b| b.nan_count + u64::from(b.min.is_infinite()) + u64::from(b.max.is_infinite()))
        .sum();
    let last = s.buckets.last().map_or(f64::NAN, |b| b.last);
    let agent = if s.agent_id.is_empty() {
        String::new()
    } else {
        format!(" [{}]", s.agent_id)
    };
    let mut title = vec![
        Span::styled(
            format!(" {}{agent} ", s.tag),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!("last {} · {} points ", fmt_value(last), s.points)),
    ];
    if non_finite > 0 {
        title.push(Span::styled(
            format!("· {non_finite} NaN/inf "),
            Style::default().fg(Color::Red),
        ));
    }
    let (x0, x1) = bounds(line.iter().chain(&extremes).map(|p| p.0));
    let (y0, y1) = bounds(line.iter().chain(&extremes).map(|p| p.1));
    let datasets = vec![
        Dataset::default()
            .marker(Marker::Dot)
            .graph_type(GraphType::Scatter)
            .style(Style::default().fg(Color::DarkGray))
            .data(&extremes),
        Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(Style::default().fg(Color::Cyan))
            .data(&line),
    ];
    let chart = Chart::new(datasets)
        .block(
            Block::default()
                .borders(Borders::TOP)
                .title(Line::from(title)),
        )
        .x_axis(
            Axis::default()
                .bounds([x0, x1])
                .labels([fmt_step(x0), fmt_step(x1)]),
        )
        .y_axis(
            Axis::default()
                .bounds([y0, y1])
                .labels([fmt_value(y0), fmt_value(y1)]),
        );
    frame.render_widget(chart, area);
}

fn fmt_step(x: f64) -> String {
    format!("{}", x as i64)
}

/// The range of the values, widened when empty or flat so the axis is drawable.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    if lo == hi {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - pad, hi + pad);
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_labelled_honestly() {
        assert_eq!(fmt_value(f64::NAN), "NaN");
        assert_eq!(fmt_value(f64::NEG_INFINITY), "-inf");
        assert_eq!(fmt_value(0.25), "0.2500");
        assert_eq!(fmt_value(123456.0), "1.235e5");
        assert_eq!(bounds([3.0, 3.0].into_iter()), (2.7, 3.3));
        assert_eq!(bounds(std::iter::empty()), (0.0, 1.0));
    }
}
