//! # telemetry-store
//!
//! The single source of truth of gym-telemetry: one SQLite file in WAL mode holding every step,
//! episode and lifecycle event a run produced, plus the run registry and the per-producer
//! watermarks that make ingest exactly-once. The predecessor kept telemetry in several places
//! (a recorder, a JSONL log, a SQLite file written by two code paths) and they drifted; here one
//! writer ([`Store`]) appends and any number of readers ([`StoreReader`]) read on their own
//! connections without ever blocking it.
//!
//! ## Sequences
//!
//! Each stream (steps, episodes, lifecycle events) has its own `seq`, the `INTEGER PRIMARY KEY`
//! of its table, assigned inside the append transaction and written back into each record's
//! `seq_id`. There is only one writer and rows are never deleted, so a reader that sees `seq = n`
//! also sees every smaller seq of that stream: `since_seq` is a complete resume point. Readers
//! page by keyset (`WHERE seq > ? ORDER BY seq LIMIT ?`), one short read transaction per page,
//! so a long read never pins an old snapshot.
//!
//! ## Durability: what a crash keeps
//!
//! [`Store::append`] returns only after its transaction has committed to the WAL.
//!
//! - **Process crash** (daemon killed, panics, OOM): every committed append survives, in both
//!   durability modes. The WAL is replayed by the next opener; a transaction that had not
//!   committed leaves nothing behind (its rows, its watermark moves and its seqs all vanish
//!   together).
//! - **Power loss or OS crash** with [`Durability::Normal`] (`synchronous=NORMAL`, the default):
//!   the WAL is not fsynced on each commit, only at checkpoints, so the last transactions
//!   before the most recent checkpoint's fsync may be rolled back. The database is never
//!   corrupted and rows and watermarks still roll back together, so a producer simply resends
//!   what its (rolled back) watermark does not cover.
//! - **Power loss** with [`Durability::Full`] (`synchronous=FULL`): the WAL is fsynced at every
//!   commit, so an acknowledged append survives, at a cost in ingest rate for small batches.
//!
//! ## WAL size
//!
//! A [`Store`] opened on its own keeps SQLite's automatic checkpoint (`wal_autocheckpoint`, see
//! [`StoreConfig::wal_autocheckpoint_pages`]), which runs inside a commit. A server opens it
//! through [`SqliteBackend`], which turns that off and hands out a [`Checkpointer`] (its own
//! connection) to run periodically off the commit path: it copies the WAL back with `PASSIVE`
//! (never waits for readers) and shrinks the file with `TRUNCATE` when no reader holds an old
//! snapshot. `journal_size_limit` bounds
//! the file left behind after a WAL reset. Checkpoints that keep being blocked by readers are
//! counted and logged (see [`CheckpointStats`]).
//!
//! Layering (a module imports only modules to its right): `legacy_import`, `dump` → `writer` →
//! `iter` → `reader` → `open` → `migrate` → `identity` → `rows` → `pages` → `schema`,
//! `checkpoint` → `error`.

pub mod backend;
mod checkpoint;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod copy;
pub mod dump;
mod error;
mod identity;
mod iter;
pub mod legacy_import;
mod migrate;
mod open;
mod pages;
mod reader;
mod rows;
mod scalars;
mod schema;
mod writer;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

pub use backend::{
    Backend, BackendReader, BackendWriter, ChangeFeed, ChangeFeedStats, ChangeWake, Leases,
    Maintenance, Renewal, SqliteBackend, StreamHeads, TakenRun,
};
pub use checkpoint::{CheckpointMode, CheckpointStats, Checkpointer};
pub use error::StoreError;
pub use iter::{EpisodeIter, StepIter};
pub use reader::StoreReader;
pub use scalars::{
    Downsampler, ScalarQuery, SeriesDelta, DEFAULT_BUCKETS, MAX_BUCKETS, MAX_SERIES,
};
pub use schema::SCHEMA_VERSION;
pub use telemetry_core::ControlMode;
pub use writer::Store;

/// How hard a commit tries to survive a power loss (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL`: a committed append survives a process crash; a power loss may roll
    /// back the last transactions before the latest checkpoint.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is fsynced and survives a power loss.
    Full,
}

/// Where the store lives and how it behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The SQLite file (its directory is created when missing).
    pub path: PathBuf,
    /// Commit durability.
    pub durability: Durability,
    /// How long one SQLite call waits for a lock held by another connection.
    pub busy_timeout: Duration,
    /// Rows per keyset page for readers (clamped to 1..=65536).
    pub page_size: usize,
    /// `PRAGMA wal_autocheckpoint`: pages in the WAL after which a commit runs a passive
    /// checkpoint itself (0 disables; the default is 4096 pages, 16 MiB with 4 KiB pages).
    pub wal_autocheckpoint_pages: u32,
    /// `PRAGMA journal_size_limit`: bytes the WAL file is truncated to after it is reset.
    pub journal_size_limit: u64,
    /// [`Store::checkpoint`] warns every time this many calls in a row were blocked by readers.
    pub checkpoint_warn_after: u32,
}

impl StoreConfig {
    /// File name of the store inside a var directory.
    pub const FILE_NAME: &'static str = "telemetry.sqlite";

    /// A store at `path` with default settings.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            durability: Durability::Normal,
            busy_timeout: Duration::from_secs(5),
            page_size: 2048,
            wal_autocheckpoint_pages: 4096,
            journal_size_limit: 64 * 1024 * 1024,
            checkpoint_warn_after: 10,
        }
    }

    /// The store of a daemon var directory: `<var_dir>/telemetry.sqlite`.
    pub fn in_var_dir(var_dir: &Path) -> Self {
        Self::new(var_dir.join(Self::FILE_NAME))
    }

    pub(crate) fn clamped_page_size(&self) -> usize {
        self.page_size.clamp(1, 65536)
    }
}

/// What happened to one appended record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored with this seq (of its own stream: steps, episodes or events).
    Stored {
        /// The seq assigned (also written into the record's `seq_id`).
        seq: u64,
    },
    /// Its `producer_seq` was at or below its producer's watermark: already stored or
    /// rejected for good, not stored again.
    Duplicate,
}

/// The result of one [`Store::append`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppendReport {
    /// One outcome per input record, in input order.
    pub outcomes: Vec<AppendOutcome>,
    /// How many records were stored.
    pub stored: usize,
    /// How many records were duplicates.
    pub duplicates: usize,
    /// The durable watermark of every producer seen in the call (records and `rejected`),
    /// after the call, in order of first appearance.
    pub watermarks: Vec<(String, u64)>,
}

/// The highest seq of each stream (0 when the stream is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LastSeqs {
    /// Steps stream.
    pub steps: u64,
    /// Episodes stream.
    pub episodes: u64,
    /// Lifecycle events stream.
    pub events: u64,
    /// Scalars stream.
    pub scalars: u64,
}

pub use telemetry_core::ModeFilter;

/// Which steps or episodes a read selects. The default selects everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter {
    /// Only this run.
    pub run_id: Option<String>,
    /// Only this agent.
    pub agent_id: Option<String>,
    /// Only these control modes.
    pub control_mode: ModeFilter,
}

impl Filter {
    /// Everything of one run.
    pub fn run(run_id: impl Into<String>) -> Self {
        Filter {
            run_id: Some(run_id.into()),
            ..Filter::default()
        }
    }
}

/// What the store knows about one run from its stored records.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunStats {
    /// The run.
    pub run_id: String,
    /// Non-empty agent ids seen in its steps and episodes, sorted.
    pub agent_ids: Vec<String>,
    /// Control modes seen in its steps and episodes (canonical spelling), sorted.
    pub control_modes: Vec<String>,
    /// Stored steps.
    pub step_count: u64,
    /// Stored episodes.
    pub episode_count: u64,
    /// Earliest record timestamp (Unix ns), over steps, episodes and lifecycle events.
    pub first_timestamp_ns: Option<i64>,
    /// Latest record timestamp (Unix ns).
    pub last_timestamp_ns: Option<i64>,
    /// Seq of its last step (0: none).
    pub last_step_seq: u64,
    /// Seq of its last episode (0: none).
    pub last_episode_seq: u64,
    /// The last `RunCompleted` stored for it, if any.
    pub completion: Option<telemetry_core::pb::RunCompleted>,
}
