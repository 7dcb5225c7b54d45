//! The store seam: what a server needs from a storage engine, as traits, with SQLite as the
//! first implementation.
//!
//! A server (the `telemetry-server` crate) never names SQLite. It opens one [`BackendWriter`]
//! (the only writer: it assigns `seq` and moves producer watermarks in the same transaction as
//! the rows), shares one [`BackendReader`] between every reader (keyset pages, the run
//! registry), and runs the backend's [`Maintenance`] off the commit path. A second engine
//! (PostgreSQL, shared by several daemons) implements the same traits and must pass the same
//! conformance suite ([`crate::conformance`], feature `conformance`).
//!
//! The contract every implementation keeps (the suite checks each clause):
//!
//! - **Atomic appends.** [`BackendWriter::append`] stores the batch's new records, assigns each
//!   stream's `seq` (strictly increasing, never reused) and moves every producer's watermark in
//!   one transaction; on error nothing of the call is visible and the records are unchanged.
//! - **Exactly once.** The watermark rule of `telemetry_core::watermark`: a record at or below its
//!   producer's durable watermark is a duplicate; a rejected stamp only advances it.
//! - **Complete resume points.** A reader that saw `seq = n` of a stream also sees every smaller
//!   seq of that stream, so `since_seq` pages never skip a row.
//! - **Single attempt.** A backend makes one attempt per call and reports
//!   [`StoreError::is_retryable`] errors as such; the caller owns the one retry policy.

use std::sync::{Arc, Mutex, PoisonError};

use telemetry_core::pb::{self, Record, RunEpisode, RunStep, Scalar};

use crate::{
    AppendReport, CheckpointStats, Checkpointer, Filter, RunStats, ScalarQuery, Store, StoreConfig,
    StoreError, StoreReader,
};

/// The one writer of a store.
pub trait BackendWriter: Send {
    /// Appends a batch in one transaction (see [`Store::append`] for the exact rules) and
    /// writes each stored record's seq into its `seq_id`.
    fn append(
        &mut self,
        records: &mut [Record],
        rejected: &[(String, u64)],
    ) -> Result<AppendReport, StoreError>;
    /// A producer's durable watermark (0 when it has none).
    fn watermark(&self, producer_id: &str) -> Result<u64, StoreError>;
    /// Inserts or replaces a run of the run registry.
    fn put_run_info(&mut self, info: &pb::RunInfo) -> Result<(), StoreError>;
    /// Makes what was committed as durable as the backend can (SQLite: a WAL checkpoint). Called
    /// once more at shutdown.
    fn checkpoint(&mut self) -> Result<CheckpointStats, StoreError>;
}

/// Reads, shared by every reader of a server (catch-up, queries, warm-up). Implementations pool
/// their connections; every method is one short read.
pub trait BackendReader: Send + Sync {
    /// Up to `limit` steps with `seq > since_seq` matching `filter`, in seq order.
    fn steps_page(
        &self,
        since_seq: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<RunStep>, StoreError>;
    /// Up to `limit` episodes with `seq > since_seq` matching `filter`, in seq order.
    fn episodes_page(
        &self,
        since_seq: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<RunEpisode>, StoreError>;
    /// Up to `limit` scalars with `seq > since_seq` of the filter's run and agent, in seq order.
    fn scalars_page(
        &self,
        since_seq: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Scalar>, StoreError>;

    /// The downsampled read of learning curves (min/max/last per step bucket, computed here).
    fn read_scalars(&self, query: &ScalarQuery) -> Result<Vec<pb::ScalarSeries>, StoreError>;

    /// Every series (tag, agent) of a run, at most `limit`.
    fn list_tags(&self, run_id: &str, limit: usize) -> Result<Vec<pb::TagSummary>, StoreError>;

    /// Up to `limit` lifecycle events with `seq > since_seq`, optionally of one run.
    fn events_page(
        &self,
        since_seq: u64,
        run_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;
    /// The last `RunCompleted` stored for a run.
    fn run_completion(&self, run_id: &str) -> Result<Option<pb::RunCompleted>, StoreError>;
    /// What the store knows of every run, from its records.
    fn list_runs(&self) -> Result<Vec<RunStats>, StoreError>;
    /// The persisted run registry.
    fn run_infos(&self) -> Result<Vec<pb::RunInfo>, StoreError>;
    /// The last `limit` steps of a run, in seq order.
    fn tail_steps(&self, run_id: &str, limit: usize) -> Result<Vec<RunStep>, StoreError>;
    /// The last `limit` episodes of a run (optionally of one agent), in seq order.
    fn run_agent_episodes(
        &self,
        run_id: &str,
        agent_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunEpisode>, StoreError>;
}

/// Background upkeep a backend wants run periodically, off the commit path (SQLite: WAL
/// checkpoints on their own connection).
pub trait Maintenance: Send {
    /// One round of upkeep.
    fn run(&mut self) -> Result<CheckpointStats, StoreError>;
}

/// A storage engine: where a server gets its writer, its reader and its upkeep.
pub trait Backend: Send + Sync + 'static {
    /// Opens (creating and migrating if needed) the store for writing. Called once per server
    /// start; a second writer of the same store is the caller's error to prevent (the daemon's
    /// instance lock).
    fn open_writer(&self) -> Result<Box<dyn BackendWriter>, StoreError>;
    /// The shared reader (call after [`Backend::open_writer`], which creates the store).
    fn reader(&self) -> Result<Arc<dyn BackendReader>, StoreError>;
    /// Periodic upkeep, if the backend needs any.
    fn maintenance(&self) -> Result<Option<Box<dyn Maintenance>>, StoreError> {
        Ok(None)
    }
    /// Where the data lives, for logs (never a secret: no password in it).
    fn describe(&self) -> String;
    /// For a store other writers share (PostgreSQL): a feed that calls `wake` whenever another
    /// writer may have committed (see [`ChangeFeed`]). `None` (the default, SQLite): this
    /// server's writer is the only one, and what it commits is all there is.
    fn change_feed(&self, wake: ChangeWake) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        let _ = wake;
        Ok(None)
    }
    /// For a store other daemons share (PostgreSQL): owner leases of the run registry (see
    /// [`Leases`]). `None` (the default, SQLite): every run is this server's.
    fn leases(&self) -> Result<Option<Arc<dyn Leases>>, StoreError> {
        Ok(None)
    }
}

/// Owner leases of a shared run registry: how daemons of one store find that a run's owner is
/// gone, and take its runs over.
///
/// A daemon holds a lease (an expiry on the store's own clock, so hosts' clocks never matter)
/// and renews it well before it expires. Every active run row names its owner. A daemon may take
/// over a pending or running run only while the run's owner holds no current lease, and the
/// take-over is one transaction that locks the lapsed leases first: an owner renewing at that
/// moment waits for it, so no run is ever taken from an owner whose lease is current. A run
/// row written by a daemon that is no longer its owner (it lost the lease, then came back) is
/// not stored: the new owner's row stays.
pub trait Leases: Send + Sync {
    /// Renews (or first takes) `owner`'s lease until the store's clock plus `ttl`.
    fn renew(&self, owner: &str, ttl: std::time::Duration) -> Result<Renewal, StoreError>;
    /// Takes over, for `taker`, every pending or running run whose owner holds no current
    /// lease: their rows now name `taker`. Returns them as stored now.
    fn take_over(&self, taker: &str) -> Result<Vec<TakenRun>, StoreError>;
    /// Ends `owner`'s lease now (a clean shutdown: the others take its runs at once).
    fn release(&self, owner: &str) -> Result<(), StoreError>;
    /// Stores a sign of life of an active run, received by a daemon that does not own it (a
    /// worker's `Heartbeat` sent to another daemon), for the owner's heartbeat timeout.
    /// Returns false when the store has no such active run.
    fn beat(&self, run_id: &str) -> Result<bool, StoreError>;
    /// How long ago, on the store's clock, the last stored sign of life ([`Self::beat`]) of
    /// each of `run_ids` was; runs without one are left out.
    fn beat_ages(
        &self,
        run_ids: &[String],
    ) -> Result<Vec<(String, std::time::Duration)>, StoreError>;
}

/// What a lease renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease was current: nothing of ours can have been taken.
    Held,
    /// The first lease of this owner.
    New,
    /// The lease had lapsed: other daemons may have taken our runs over (their rows say).
    Lapsed,
}

/// A run taken over from a daemon whose lease lapsed.
#[derive(Debug, Clone, PartialEq)]
pub struct TakenRun {
    /// The run's row as stored now (`owner` is the taker).
    pub info: pb::RunInfo,
    /// The daemon it was taken from.
    pub from: String,
}

/// What a [`ChangeFeed`] calls on each hint. It must be cheap and never block (set a flag).
pub type ChangeWake = Arc<dyn Fn() + Send + Sync>;

/// The last committed seq of each stream of a store: where a follower starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamHeads {
    /// Steps.
    pub steps: u64,
    /// Episodes.
    pub episodes: u64,
    /// Lifecycle events.
    pub events: u64,
    /// Scalars.
    pub scalars: u64,
}

/// Counters of a change feed, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeFeedStats {
    /// Hints (one per committed batch of any writer) received.
    pub hints: u64,
    /// Times the feed's connection was (re)established after the first; each one is followed
    /// by a wake, so a reader catches up on what it may have missed.
    pub reconnects: u64,
    /// Hints that arrived with no payload we could read (still a wake).
    pub malformed: u64,
}

/// Hints that other writers of a shared store committed.
///
/// A hint carries nothing a reader needs: it only says "read again". Readers then do keyset
/// reads by seq from their own cursors (complete by the store's resume-point contract), so a
/// lost hint delays records and never loses them, as long as the reader also polls at a
/// bounded interval. Dropping the feed stops it.
pub trait ChangeFeed: Send {
    /// The last committed seq of every stream now.
    fn heads(&self) -> Result<StreamHeads, StoreError>;
    /// Its counters.
    fn stats(&self) -> ChangeFeedStats;
}

/// The embedded SQLite backend: one file in WAL mode.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    cfg: StoreConfig,
}

impl SqliteBackend {
    /// A backend on the file of `cfg`. Automatic checkpoints are turned off (a server runs
    /// them as [`Maintenance`], never inside a commit).
    pub fn new(mut cfg: StoreConfig) -> Self {
        cfg.wal_autocheckpoint_pages = 0;
        SqliteBackend { cfg }
    }

    /// The configuration it opens with.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }
}

impl Backend for SqliteBackend {
    fn open_writer(&self) -> Result<Box<dyn BackendWriter>, StoreError> {
        Ok(Box::new(Store::open(self.cfg.clone())?))
    }

    fn reader(&self) -> Result<Arc<dyn BackendReader>, StoreError> {
        // Open one now, so a missing or foreign file is reported at start-up, not on the first
        // read.
        let first = StoreReader::open_with(
            &self.cfg.path,
            self.cfg.busy_timeout,
            self.cfg.clamped_page_size(),
        )?;
        Ok(Arc::new(PooledReader {
            cfg: self.cfg.clone(),
            pool: Mutex::new(vec![first]),
        }))
    }

    fn maintenance(&self) -> Result<Option<Box<dyn Maintenance>>, StoreError> {
        Ok(Some(Box::new(Checkpointer::open(&self.cfg)?)))
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.cfg.path.display())
    }
}

impl BackendWriter for Store {
    fn append(
        &mut self,
        records: &mut [Record],
        rejected: &[(String, u64)],
    ) -> Result<AppendReport, StoreError> {
        Store::append(self, records, rejected)
    }
    fn watermark(&self, producer_id: &str) -> Result<u64, StoreError> {
        Store::watermark(self, producer_id)
    }
    fn put_run_info(&mut self, info: &pb::RunInfo) -> Result<(), StoreError> {
        Store::put_run_info(self, info)
    }
    fn checkpoint(&mut self) -> Result<CheckpointStats, StoreError> {
        Store::checkpoint(self)
    }
}

impl Maintenance for Checkpointer {
    fn run(&mut self) -> Result<CheckpointStats, StoreError> {
        self.checkpoint()
    }
}

/// Read connections kept for reuse (more may be open at once; extra ones are closed after use).
pub const READER_POOL: usize = 4;

/// SQLite reads over a small pool of read-only connections.
struct PooledReader {
    cfg: StoreConfig,
    pool: Mutex<Vec<StoreReader>>,
}

impl PooledReader {
    fn with<T>(
        &self,
        f: impl FnOnce(&StoreReader) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let reader = match pooled {
            Some(r) => r,
            None => StoreReader::open_with(
                &self.cfg.path,
                self.cfg.busy_timeout,
                self.cfg.clamped_page_size(),
            )?,
        };
        let out = f(&reader);
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < READER_POOL {
            pool.push(reader);
        }
        out
    }
}

impl BackendReader for PooledReader {
    fn steps_page(
        &self,
        since_seq: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<RunStep>, StoreError> {
        self.with(|r| r.read_steps_page(since_seq, filter, limit))
    }
    fn episodes_page(
        &self,
        since_seq: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<RunEpisode>, StoreError> {
        self.with(|r| r.read_episodes_page(since_seq, filter, limit))
    }
    fn events_page(
        &self,
        since_seq: u64,
        run_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.with(|r| r.events_since(since_seq, run_id, limit))
    }
    fn scalars_page(
        &self,
        since_seq: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Scalar>, StoreError> {
        self.with(|r| r.read_scalars_page(since_seq, filter, limit))
    }
    fn read_scalars(&self, query: &ScalarQuery) -> Result<Vec<pb::ScalarSeries>, StoreError> {
        self.with(|r| r.read_scalars(query))
    }
    fn list_tags(&self, run_id: &str, limit: usize) -> Result<Vec<pb::TagSummary>, StoreError> {
        self.with(|r| r.list_tags(run_id, limit))
    }
    fn run_completion(&self, run_id: &str) -> Result<Option<pb::RunCompleted>, StoreError> {
        self.with(|r| r.run_completion(run_id))
    }
    fn list_runs(&self) -> Result<Vec<RunStats>, StoreError> {
        self.with(StoreReader::list_runs)
    }
    fn run_infos(&self) -> Result<Vec<pb::RunInfo>, StoreError> {
        self.with(StoreReader::run_infos)
    }
    fn tail_steps(&self, run_id: &str, limit: usize) -> Result<Vec<RunStep>, StoreError> {
        self.with(|r| r.tail_steps(run_id, limit))
    }
    fn run_agent_episodes(
        &self,
        run_id: &str,
        agent_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunEpisode>, StoreError> {
        self.with(|r| r.run_agent_episodes(run_id, agent_id, limit))
    }
}
