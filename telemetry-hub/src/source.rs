//! Where catch-up reads stored records: the daemon's store, seen through a trait.
//!
//! The hub must not depend on `telemetry-store` (the store must be swappable and the hub
//! testable without SQLite), yet "catch up then follow live" needs stored records. The daemon
//! implements [`CatchUpSource`] over its store readers; tests use an in-memory `Vec`.

use std::sync::Arc;

use telemetry_core::pb::{Record, RunCompleted};

use crate::options::{ModeFilter, StreamKind};

/// What a catch-up read asks for. The source returns records of `stream` with `seq > since`,
/// in seq order, restricted to `run_id` (all runs when `None`), `agent_id` and `control_mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUpQuery {
    /// One run, or every run (`None`, lifecycle only).
    pub run_id: Option<String>,
    /// Which of the three seq streams.
    pub stream: StreamKind,
    /// Only this agent's steps/episodes.
    pub agent_id: Option<String>,
    /// Only these control modes (steps/episodes).
    pub control_mode: ModeFilter,
}

impl CatchUpQuery {
    /// True when the query returns every record of its run(s) and stream, so that a short page
    /// proves the store has nothing more: the hub then checks the seam strictly for gaps.
    pub fn is_unfiltered(&self) -> bool {
        self.agent_id.is_none() && self.control_mode == ModeFilter::Any
    }
}

/// A failed catch-up read.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    /// The source could not read (for example an SQLite error).
    #[error("catch-up read failed: {0}")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The source returned a full page that did not move past `since_seq` (a broken source;
    /// reading again would loop forever).
    #[error("catch-up source made no progress past seq {since_seq}")]
    NoProgress {
        /// Where the read started.
        since_seq: u64,
    },
    /// The blocking read task panicked or was cancelled.
    #[error("catch-up read task failed: {0}")]
    Task(String),
}

impl CatchUpError {
    /// Wraps any error as a [`CatchUpError::Read`].
    pub fn read(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        CatchUpError::Read(err.into())
    }
}

/// Stored records for catch-up. Implemented by the daemon over `telemetry-store` readers.
///
/// Calls are blocking; the hub makes them on tokio's blocking pool (`spawn_blocking`), one
/// page at a time, only when the subscriber asks for more.
pub trait CatchUpSource: Send + Sync + 'static {
    /// Up to `limit` records matching `query` with `seq_id > since_seq`, in increasing seq
    /// order. Fewer than `limit` means "nothing more right now".
    fn read_page(
        &self,
        query: &CatchUpQuery,
        since_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, CatchUpError>;

    /// [`CatchUpSource::read_page`], but the page may end early once about `max_bytes` of
    /// records are read (always at least one record when any is there), so that one catch-up
    /// read holds a bounded amount of memory however large the records are. Returns the page and
    /// whether it was cut short by bytes (then it does not mean "nothing more"). The default
    /// ignores `max_bytes`.
    fn read_page_bounded(
        &self,
        query: &CatchUpQuery,
        since_seq: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Record>, bool), CatchUpError> {
        let _ = max_bytes;
        self.read_page(query, since_seq, limit).map(|p| (p, false))
    }

    /// The stored `RunCompleted` of a run, if it has one. Asked once at the end of a catch-up
    /// for a run the hub has seen no record of (for example after a daemon restart), so that a
    /// following subscriber of an already finished run still ends. The default says "unknown".
    fn run_completion(&self, run_id: &str) -> Result<Option<RunCompleted>, CatchUpError> {
        let _ = run_id;
        Ok(None)
    }
}

/// A source with nothing stored, for hubs without a store (benchmarks, tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCatchUp;

impl CatchUpSource for NoCatchUp {
    fn read_page(&self, _: &CatchUpQuery, _: u64, _: usize) -> Result<Vec<Record>, CatchUpError> {
        Ok(Vec::new())
    }
}

impl<T: CatchUpSource> CatchUpSource for Arc<T> {
    fn read_page(
        &self,
        query: &CatchUpQuery,
        since_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, CatchUpError> {
        (**self).read_page(query, since_seq, limit)
    }

    fn read_page_bounded(
        &self,
        query: &CatchUpQuery,
        since_seq: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Record>, bool), CatchUpError> {
        (**self).read_page_bounded(query, since_seq, limit, max_bytes)
    }

    fn run_completion(&self, run_id: &str) -> Result<Option<RunCompleted>, CatchUpError> {
        (**self).run_completion(run_id)
    }
}
