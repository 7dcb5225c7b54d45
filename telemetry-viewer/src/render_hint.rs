//! Turns a step into something a terminal can draw: the grid environments' ANSI render hint
//! (`render_hint_json = {"ansi": "..."}`) converted to styled ratatui text, or else a readable
//! view of the observation.
//!
//! Everything here is untrusted worker data: sizes are bounded, escape sequences other than SGR
//! colours never reach the terminal, and unreadable input turns into a visible note instead of an
//! error that would stop the view.

use ansi_to_tui::IntoText as _;
use ratatui::{
    style::{Color, Style},
    text::{Line, Span, Text},
};
use serde_json::Value;
use telemetry_core::pb::RunStep;

/// Longest ANSI text converted (longer hints are cut).
pub const MAX_ANSI_BYTES: usize = 64 * 1024;
/// Most lines shown of a pretty-printed observation.
pub const MAX_OBSERVATION_LINES: usize = 200;
/// Longest JSON text parsed for display (longer text is shown cut, unparsed).
pub const MAX_JSON_BYTES: usize = 256 * 1024;

/// Where the drawn content came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSource {
    /// The ANSI render hint.
    Ansi,
    /// The observation (no usable render hint).
    Observation,
}

/// The drawable content of one step.
#[derive(Debug, Clone)]
pub struct Frame {
    /// What to draw.
    pub text: Text<'static>,
    /// Where it came from.
    pub source: FrameSource,
    /// Why the render hint was not used, when there was one.
    pub note: Option<String>,
}

/// The ANSI text of a render hint, if the hint has one.
pub fn ansi_of(render_hint_json: &str) -> Result<Option<String>, String> {
    if render_hint_json.trim().is_empty() {
        return Ok(None);
    }
    if render_hint_json.len() > MAX_JSON_BYTES {
        return Err(format!(
            "render hint of {} bytes is over the {MAX_JSON_BYTES}-byte limit",
            render_hint_json.len()
        ));
    }
    let v: Value = serde_json::from_str(render_hint_json)
        .map_err(|e| format!("render hint is not JSON: {e}"))?;
    Ok(v.get("ansi").and_then(Value::as_str).map(str::to_owned))
}

/// Converts text with ANSI SGR escapes (rows separated by `\n`) to styled lines.
pub fn ansi_to_text(ansi: &str) -> Result<Text<'static>, String> {
    let cut = truncate_at_char(ansi, MAX_ANSI_BYTES);
    let mut text = cut
        .into_text()
        .map_err(|e| format!("ANSI render hint unreadable: {e}"))?;
    strip_controls(&mut text);
    Ok(text)
}

/// The drawable frame of a step: its ANSI hint when there is one, else its observation.
pub fn frame_of(step: &RunStep) -> Frame {
    let note = match ansi_of(&step.render_hint_json) {
        Ok(Some(ansi)) => match ansi_to_text(&ansi) {
            Ok(text) => {
                return Frame {
                    text,
                    source: FrameSource::Ansi,
                    note: None,
                }
            }
            Err(e) => Some(e),
        },
        Ok(None) => None,
        Err(e) => Some(e),
    };
    Frame {
        text: observation_text(&step.observation_json),
        source: FrameSource::Observation,
        note,
    }
}

/// A readable view of an observation: a 2-D array of scalars as rows of cells, anything else
/// pretty-printed JSON, text that is not JSON as is (escaped).
pub fn observation_text(observation_json: &str) -> Text<'static> {
    let dim = Style::default().fg(Color::DarkGray);
    if observation_json.trim().is_empty() {
        return Text::from(Line::styled("(no observation)", dim));
    }
    if observation_json.len() > MAX_JSON_BYTES {
        let cut = truncate_at_char(observation_json, 4096);
        return Text::from(vec![
            Line::styled(
                format!(
                    "(observation of {} bytes, shown cut)",
                    observation_json.len()
                ),
                dim,
            ),
            Line::raw(escape_controls(cut)),
        ]);
    }
    let value: Value = match serde_json::from_str(observation_json) {
        Ok(v) => v,
        Err(_) => return Text::from(Line::raw(escape_controls(observation_json))),
    };
    if let Some(rows) = scalar_rows(&value) {
        return Text::from(rows.into_iter().map(Line::raw).collect::<Vec<_>>());
    }
    let pretty = serde_json::to_string_pretty(&value).unwrap_or_default();
    bounded_lines(&pretty, MAX_OBSERVATION_LINES)
}

/// Pretty JSON for a JSON text field: parsed when possible, else the text as a JSON string.
pub fn json_value(text: &str) -> Value {
    if text.len() > MAX_JSON_BYTES {
        return Value::String(format!(
            "{}… ({} bytes)",
            truncate_at_char(text, 1024),
            text.len()
        ));
    }
    if text.trim().is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn scalar_rows(value: &Value) -> Option<Vec<String>> {
    let rows = value.as_array()?;
    if rows.is_empty() || rows.len() > MAX_OBSERVATION_LINES {
        return None;
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let cells = row.as_array()?;
        let mut line = Vec::with_capacity(cells.len());
        for c in cells {
            line.push(match c {
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => u8::from(*b).to_string(),
                Value::String(s) => escape_controls(s),
                _ => return None,
            });
        }
        out.push(line.join(" "));
    }
    Some(out)
}

fn bounded_lines(text: &str, max: usize) -> Text<'static> {
    let total = text.lines().count();
    let mut lines: Vec<Line<'static>> = text
        .lines()
        .take(max)
        .map(|l| Line::raw(l.to_owned()))
        .collect();
    if total > max {
        lines.push(Line::styled(
            format!("… {} more lines", total - max),
            Style::default().fg(Color::DarkGray),
        ));
    }
    Text::from(lines)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Replaces control characters (which could drive the real terminal) by visible escapes.
pub fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn strip_controls(text: &mut Text<'static>) {
    for line in &mut text.lines {
        for span in &mut line.spans {
            if span.content.chars().any(char::is_control) {
                let cleaned: String = span
                    .content
                    .chars()
                    .map(|c| if c == '\t' { ' ' } else { c })
                    .filter(|c| !c.is_control())
                    .collect();
                *span = Span::styled(cleaned, span.style);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_hint_keeps_rows_and_colours() {
        let text = ansi_to_text("\x1b[31mA\x1b[0m.\n.\x1b[42mG\x1b[0m").expect("valid ANSI");
        assert_eq!(text.lines.len(), 2);
        let first = &text.lines[0].spans[0];
        assert_eq!(first.content, "A");
        assert_eq!(first.style.fg, Some(Color::Red));
        let g = text.lines[1]
            .spans
            .iter()
            .find(|s| s.content == "G")
            .expect("G span");
        assert_eq!(g.style.bg, Some(Color::Green));
    }

    #[test]
    fn non_sgr_escapes_never_reach_the_terminal() {
        let text = ansi_to_text("a\x07b\x1b[2Jc").expect("parsed");
        let all: String = text.lines[0]
            .spans
            .iter()
            .map(|s| s.content.as_ref())
            .collect();
        assert!(!all.chars().any(char::is_control), "{all:?}");
    }

    #[test]
    fn step_without_hint_falls_back_to_the_observation_grid() {
        let step = RunStep {
            observation_json: "[[0, 1], [2, 3]]".into(),
            ..Default::default()
        };
        let f = frame_of(&step);
        assert_eq!(f.source, FrameSource::Observation);
        assert_eq!(f.text.lines[1].to_string(), "2 3");
        assert!(f.note.is_none());
    }

    #[test]
    fn broken_hint_is_a_visible_note_not_an_error() {
        let step = RunStep {
            render_hint_json: "{not json".into(),
            observation_json: r#"{"x": 1}"#.into(),
            ..Default::default()
        };
        let f = frame_of(&step);
        assert_eq!(f.source, FrameSource::Observation);
        assert!(f.note.expect("note").contains("not JSON"));
        assert!(f
            .text
            .lines
            .iter()
            .any(|l| l.to_string().contains("\"x\": 1")));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_at_char("héllo", 2), "h");
        assert_eq!(truncate_at_char("abc", 10), "abc");
    }
}
