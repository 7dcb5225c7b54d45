//! Who was in control of the environment when a record was made.
//!
//! The predecessor could not tell a human demonstration from agent training, so its training
//! curves were polluted and its "Human Replay" view showed everything. Every step and episode now
//! carries a [`ControlMode`]. Legacy workers spell modes in several ways (`agent_only`,
//! `manual`, ...): those spellings are accepted here and nowhere else, and anything we do not
//! recognise is a typed error that names the value, never a silent `unknown`.

use std::{fmt, str::FromStr};

/// Who acted in the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum ControlMode {
    /// A person played (demonstrations, manual play).
    Human,
    /// One learning or scripted agent acted.
    Agent,
    /// Several agents acted in one environment.
    MultiAgent,
    /// A person and an agent shared control (for example RLHF-style interventions).
    Hybrid,
    /// Recorded actions were played back.
    Replay,
    /// The worker did not say (old data).
    #[default]
    Unknown,
}

/// A control mode string that is not one we know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown control_mode {value:?} (expected one of human, agent, multi_agent, hybrid, replay, unknown)")]
pub struct ControlModeError {
    /// The value as it was given.
    pub value: String,
}

impl ControlMode {
    /// Every mode, in a stable order.
    pub const ALL: [ControlMode; 6] = [
        ControlMode::Human,
        ControlMode::Agent,
        ControlMode::MultiAgent,
        ControlMode::Hybrid,
        ControlMode::Replay,
        ControlMode::Unknown,
    ];

    /// The canonical spelling, as stored and sent on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ControlMode::Human => "human",
            ControlMode::Agent => "agent",
            ControlMode::MultiAgent => "multi_agent",
            ControlMode::Hybrid => "hybrid",
            ControlMode::Replay => "replay",
            ControlMode::Unknown => "unknown",
        }
    }

    /// Parses a wire value where the empty string means "not given" ([`ControlMode::Unknown`]).
    pub fn from_wire(value: &str) -> Result<Self, ControlModeError> {
        if value.trim().is_empty() {
            Ok(ControlMode::Unknown)
        } else {
            value.parse()
        }
    }
}

impl fmt::Display for ControlMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ControlMode {
    type Err = ControlModeError;

    /// Accepts the canonical names and the legacy spellings seen in real workers,
    /// case-insensitively, with `-` or space in place of `_`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .trim()
            .chars()
            .map(|c| match c {
                '-' | ' ' => '_',
                c => c.to_ascii_lowercase(),
            })
            .collect();
        let mode = match norm.as_str() {
            "human" | "human_only" | "manual" | "human_play" | "keyboard" | "human_demo" => {
                ControlMode::Human
            }
            "agent" | "agent_only" | "ai" | "ai_only" | "policy" | "single_agent" | "bot" => {
                ControlMode::Agent
            }
            "multi_agent" | "multiagent" | "multi" | "marl" | "agents" => ControlMode::MultiAgent,
            "hybrid" | "human_agent" | "agent_human" | "shared" | "human_in_the_loop" | "hitl"
            | "assisted" => ControlMode::Hybrid,
            "replay" | "playback" | "replay_only" => ControlMode::Replay,
            "unknown" | "unspecified" => ControlMode::Unknown,
            _ => {
                return Err(ControlModeError {
                    value: s.to_owned(),
                })
            }
        };
        Ok(mode)
    }
}

/// Which control modes a reader or subscriber wants. Shared by the store (SQL filters) and the
/// hub (live filters) so a query means the same thing on both sides of the catch-up seam.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModeFilter {
    /// Every mode.
    #[default]
    Any,
    /// Exactly this mode (an empty wire value counts as `Unknown`).
    Exact(ControlMode),
    /// Human demonstrations plus old data that does not say (`human` or `unknown`): the
    /// "Human Replay" view, which must still show rows that predate control modes.
    HumanOrUnknown,
}

impl ModeFilter {
    /// Whether a record whose `control_mode` field holds `wire` passes. A value that does not
    /// parse (the daemon validates before storing, so only a bug gets here) passes `Any` only.
    pub fn matches(&self, wire: &str) -> bool {
        match self {
            ModeFilter::Any => true,
            ModeFilter::Exact(mode) => ControlMode::from_wire(wire).is_ok_and(|m| m == *mode),
            ModeFilter::HumanOrUnknown => matches!(
                ControlMode::from_wire(wire),
                Ok(ControlMode::Human | ControlMode::Unknown)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_filters_match_wire_values() {
        assert!(ModeFilter::Any.matches("telepathy"));
        assert!(ModeFilter::Exact(ControlMode::Agent).matches("agent_only"));
        assert!(!ModeFilter::Exact(ControlMode::Agent).matches("human"));
        assert!(ModeFilter::HumanOrUnknown.matches(""));
        assert!(ModeFilter::HumanOrUnknown.matches("human"));
        assert!(!ModeFilter::HumanOrUnknown.matches("agent"));
    }

    #[test]
    fn canonical_names_round_trip() {
        for mode in ControlMode::ALL {
            assert_eq!(mode.as_str().parse::<ControlMode>(), Ok(mode));
            assert_eq!(ControlMode::from_wire(&mode.to_string()), Ok(mode));
        }
    }

    #[test]
    fn legacy_spellings_map_to_the_right_mode() {
        assert_eq!("agent_only".parse(), Ok(ControlMode::Agent));
        assert_eq!("Agent-Only".parse(), Ok(ControlMode::Agent));
        assert_eq!("human_only".parse(), Ok(ControlMode::Human));
        assert_eq!("multi-agent".parse(), Ok(ControlMode::MultiAgent));
        assert_eq!("HYBRID".parse(), Ok(ControlMode::Hybrid));
    }

    #[test]
    fn empty_wire_value_is_unknown_but_garbage_is_an_error() {
        assert_eq!(ControlMode::from_wire(""), Ok(ControlMode::Unknown));
        let err = "telepathy".parse::<ControlMode>().expect_err("not a mode");
        assert_eq!(err.value, "telepathy");
        assert!(err.to_string().contains("telepathy"));
        assert!("".parse::<ControlMode>().is_err());
    }
}
