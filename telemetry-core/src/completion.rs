//! How a run ended, as a word: the one parser of completion-status words.
//!
//! Legacy JSONL workers and Python callers both name a run's outcome in words (`completed`,
//! `success`, `error`, `canceled`, ...). Both paths used to carry their own word lists and
//! disagreed (`successful` was JSONL-only); [`pb::CompletionStatus`] now implements
//! [`FromStr`] here, case-insensitively and ignoring surrounding whitespace, and anything else
//! is a [`CompletionStatusError`] that names the value and the accepted words.
//! [`pb::CompletionStatus::as_str`] is the canonical spelling written back out.

use crate::pb::{self, CompletionStatus};
use std::{fmt, str::FromStr};

/// A completion-status word that is not one we know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown status {value:?} (expected succeeded, failed, cancelled or skipped; \
     also accepted: success, successful, completed, complete, ok, done, finished, failure, \
     error, errored, canceled, aborted, interrupted, unspecified)"
)]
pub struct CompletionStatusError {
    /// The value as it was given.
    pub value: String,
}

impl CompletionStatus {
    /// Every status, in a stable order.
    pub const ALL: [CompletionStatus; 5] = [
        CompletionStatus::Unspecified,
        CompletionStatus::Succeeded,
        CompletionStatus::Failed,
        CompletionStatus::Cancelled,
        CompletionStatus::Skipped,
    ];

    /// The canonical word (`succeeded`, `failed`, `cancelled`, `skipped`, `unspecified`), as
    /// the JSONL writer prints it.
    pub const fn as_str(self) -> &'static str {
        match self {
            CompletionStatus::Unspecified => "unspecified",
            CompletionStatus::Succeeded => "succeeded",
            CompletionStatus::Failed => "failed",
            CompletionStatus::Cancelled => "cancelled",
            CompletionStatus::Skipped => "skipped",
        }
    }

    /// The canonical word of a wire value (`None` for a number outside the enum).
    pub fn wire_str(status: i32) -> Option<&'static str> {
        CompletionStatus::try_from(status)
            .ok()
            .map(CompletionStatus::as_str)
    }
}

impl fmt::Display for pb::CompletionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompletionStatus {
    type Err = CompletionStatusError;

    /// Accepts the canonical words and the synonyms real workers use, case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let status = match s.trim().to_ascii_lowercase().as_str() {
            "succeeded" | "success" | "successful" | "completed" | "complete" | "ok" | "done"
            | "finished" => CompletionStatus::Succeeded,
            "failed" | "failure" | "error" | "errored" => CompletionStatus::Failed,
            "cancelled" | "canceled" | "aborted" | "interrupted" => CompletionStatus::Cancelled,
            "skipped" => CompletionStatus::Skipped,
            "unspecified" => CompletionStatus::Unspecified,
            _ => {
                return Err(CompletionStatusError {
                    value: s.to_owned(),
                })
            }
        };
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_spelling_parses() {
        let cases: [(&[&str], CompletionStatus); 5] = [
            (
                &[
                    "succeeded",
                    "success",
                    "successful",
                    "completed",
                    "complete",
                    "ok",
                    "done",
                    "finished",
                ],
                CompletionStatus::Succeeded,
            ),
            (
                &["failed", "failure", "error", "errored"],
                CompletionStatus::Failed,
            ),
            (
                &["cancelled", "canceled", "aborted", "interrupted"],
                CompletionStatus::Cancelled,
            ),
            (&["skipped"], CompletionStatus::Skipped),
            (&["unspecified"], CompletionStatus::Unspecified),
        ];
        for (words, want) in cases {
            for word in words {
                assert_eq!(word.parse::<CompletionStatus>(), Ok(want), "{word}");
                let err = CompletionStatusError {
                    value: (*word).to_owned(),
                };
                // Every accepted word is named in the error message.
                let listed = err.to_string();
                assert!(
                    listed.contains(&format!(" {word}")),
                    "{word} not in {listed}"
                );
            }
        }
    }

    #[test]
    fn parsing_ignores_case_and_surrounding_space() {
        assert_eq!("SUCCESSFUL".parse(), Ok(CompletionStatus::Succeeded));
        assert_eq!(" Canceled\n".parse(), Ok(CompletionStatus::Cancelled));
        assert_eq!("Error".parse(), Ok(CompletionStatus::Failed));
    }

    #[test]
    fn canonical_words_round_trip() {
        for status in CompletionStatus::ALL {
            assert_eq!(status.as_str().parse(), Ok(status));
            assert_eq!(status.to_string(), status.as_str());
            assert_eq!(
                CompletionStatus::wire_str(status as i32),
                Some(status.as_str())
            );
        }
        assert_eq!(CompletionStatus::wire_str(99), None);
    }

    #[test]
    fn unknown_words_are_errors_naming_the_value() {
        let err = "meh".parse::<CompletionStatus>().expect_err("not a status");
        assert_eq!(err.value, "meh");
        assert!(err.to_string().starts_with(
            "unknown status \"meh\" (expected succeeded, failed, cancelled or skipped"
        ));
        assert!("".parse::<CompletionStatus>().is_err());
        assert!("succeed".parse::<CompletionStatus>().is_err());
    }
}
