//! [`FrameStore`]: frames by reference, with bounded retention.
//!
//! Bytes go to per-run append-only segments ([`crate::segment`]); a SQLite index (WAL) maps
//! `(run, agent, episode, step)` to `(segment, offset, len)` and keeps per-episode totals, pins
//! and the evictions it made. An append writes the segment records, syncs them, then commits the
//! index: a frame is indexed only once its bytes are durable, and a crash in between leaves
//! unreferenced bytes, never a dangling entry. Retention runs inside the same transaction.

use crate::segment::{self, Appender, ReadError};
use prost::Message;
use rusqlite::{params, Connection, OptionalExtension};
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex, MutexGuard, PoisonError,
    },
};
use telemetry_core::{
    frames::{check_frame, frame_ref, parse_frame_ref, FrameError, FrameKey},
    pb,
};

/// Evictions remembered (to report "evicted" rather than "not found"); older ones are forgotten.
pub const MAX_EVICTED_REMEMBERED: i64 = 100_000;
/// Exports remembered per store; older rows are forgotten (the files stay).
pub const MAX_EXPORTS_REMEMBERED: i64 = 10_000;
/// Most frames one [`FrameStore::list_episode`] call returns.
pub const MAX_LIST: usize = 10_000;

/// Retention and layout settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameStoreOptions {
    /// Frame bytes kept per run (default 1 GiB).
    pub max_run_bytes: u64,
    /// Frame bytes kept in total (default 8 GiB).
    pub max_total_bytes: u64,
    /// A segment file is closed and a new one started past this size (default 64 MiB).
    pub segment_max_bytes: u64,
    /// Sync segment files before the index commits (default true; false only for tests and
    /// benchmarks that measure something else).
    pub fsync: bool,
}

impl Default for FrameStoreOptions {
    fn default() -> Self {
        FrameStoreOptions {
            max_run_bytes: 1 << 30,
            max_total_bytes: 8 << 30,
            segment_max_bytes: 64 << 20,
            fsync: true,
        }
    }
}

/// Errors of the frame store. A missing frame is not one of them (see [`Lookup`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The index database failed.
    #[error("frame index: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A segment file or directory failed.
    #[error("frame segment {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A `frame_ref` or id that cannot name a frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Why a frame is not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingReason {
    /// Never stored (or its eviction was long enough ago to be forgotten).
    NotFound,
    /// Removed by retention.
    Evicted,
    /// Its bytes fail the checksum or were cut short.
    Corrupt,
}

impl MissingReason {
    /// The word used on the wire (`FrameResponse.missing_reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            MissingReason::NotFound => "not_found",
            MissingReason::Evicted => "evicted",
            MissingReason::Corrupt => "corrupt",
        }
    }
}

/// The answer to a frame lookup: the frame, or why it is missing.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The stored frame (its `data` still encoded).
    Found(Box<pb::Frame>),
    /// No frame; the reason.
    Missing(MissingReason),
}

impl Lookup {
    /// The wire form, for `frame_ref`.
    pub fn into_response(self, frame_ref: String) -> pb::FrameResponse {
        match self {
            Lookup::Found(frame) => pb::FrameResponse {
                frame_ref,
                missing: false,
                missing_reason: String::new(),
                frame: Some(*frame),
            },
            Lookup::Missing(r) => pb::FrameResponse {
                frame_ref,
                missing: true,
                missing_reason: r.as_str().to_owned(),
                frame: None,
            },
        }
    }
}

/// What one [`FrameStore::append`] did, frame by frame.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AppendReport {
    /// Frames written.
    pub stored: u32,
    /// Frames already held (resends).
    pub duplicates: u32,
    /// Frames refused because retention could not make room.
    pub over_limit: u32,
    /// Frames refused by validation: (index in the batch, reason).
    pub rejected: Vec<(u32, &'static str)>,
    /// Episodes evicted to make room.
    pub evicted_episodes: u32,
    /// Frames of those episodes.
    pub evicted_frames: u64,
    /// Bytes of those episodes.
    pub evicted_bytes: u64,
}

impl AppendReport {
    /// The wire form.
    pub fn into_ack(self, batch_id: u64) -> pb::FrameAck {
        pb::FrameAck {
            batch_id,
            stored: self.stored,
            duplicates: self.duplicates,
            over_limit: self.over_limit,
            rejected: self
                .rejected
                .into_iter()
                .map(|(index, reason)| pb::RejectedFrame {
                    index,
                    reason: reason.to_owned(),
                })
                .collect(),
        }
    }
}

/// A stored frame without its pixels (from [`FrameStore::list_episode`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FrameEntry {
    /// The step.
    pub step_index: u64,
    /// Size in pixels.
    pub width: u32,
    /// Size in pixels.
    pub height: u32,
    /// Encoded bytes.
    pub bytes: u32,
    /// The env's render fps (0: unknown).
    pub render_fps: f64,
    /// Capture time, ns since the epoch.
    pub wall_time_unix_ns: i64,
}

/// One episode's frames in step order, with its pin.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EpisodeFrames {
    /// The frames (at most the requested limit).
    pub frames: Vec<FrameEntry>,
    /// Whether a user pinned the episode.
    pub pinned: bool,
}

/// A finished export, as remembered by the store.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRecord {
    /// The run.
    pub run_id: String,
    /// The agent.
    pub agent_id: String,
    /// The episode.
    pub episode_index: u64,
    /// Where the clip was written.
    pub path: String,
    /// `mp4`, `webm` or `gif`.
    pub format: String,
    /// Frames in the clip.
    pub frames: u64,
}

#[derive(Debug, Default)]
struct Counters {
    stored: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    over_limit: AtomicU64,
    evicted_frames: AtomicU64,
    evicted_episodes: AtomicU64,
    evicted_bytes: AtomicU64,
    corrupt: AtomicU64,
    missing: AtomicU64,
    /// Rejections by reason (`FrameError::reason`: a handful of fixed words).
    rejected_by_reason: Mutex<BTreeMap<&'static str, u64>>,
    /// Frames and bytes held now (mirrors `Inner`, updated after each append).
    held_frames: AtomicU64,
    held_bytes: AtomicU64,
    /// Bytes held per run now (runs holding none are removed), updated after each append.
    held_by_run: Mutex<HashMap<String, u64>>,
}

/// The frame store's counters (since it was opened) and what it holds now, read without
/// waiting for an append in progress: what `/metrics` exposes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameCounters {
    /// Frames written.
    pub stored: u64,
    /// Frames already held (resends).
    pub duplicates: u64,
    /// Frames refused by validation, in all.
    pub rejected: u64,
    /// The same by reason (`bad_size`, `not_png`, ...), in reason order.
    pub rejected_by_reason: Vec<(&'static str, u64)>,
    /// Frames refused because retention could not make room.
    pub over_limit: u64,
    /// Frames evicted by retention.
    pub evicted_frames: u64,
    /// Episodes evicted by retention.
    pub evicted_episodes: u64,
    /// Bytes evicted by retention.
    pub evicted_bytes: u64,
    /// Reads that found a frame's bytes failing their checksum.
    pub corrupt: u64,
    /// Lookups answered "missing" (not found, evicted or corrupt).
    pub missing: u64,
    /// Frames held now.
    pub held_frames: u64,
    /// Frame bytes held now (what retention counts against `max_total_bytes`).
    pub held_bytes: u64,
    /// Bytes held per run now, largest first (runs holding nothing are absent).
    pub held_bytes_by_run: Vec<(String, u64)>,
    /// The per-run retention limit.
    pub max_run_bytes: u64,
    /// The total retention limit.
    pub max_total_bytes: u64,
}

struct Inner {
    db: Connection,
    /// The segment each run appends to.
    active: HashMap<String, Appender>,
    /// Live frame bytes per run, and in total (mirrors the index).
    run_bytes: HashMap<String, u64>,
    total_bytes: u64,
    /// Live frames in total (mirrors the index).
    total_frames: u64,
}

/// The frame store of a var dir (`<var-dir>/frames/`). `Send + Sync`; appends are serialized.
pub struct FrameStore {
    root: PathBuf,
    opts: FrameStoreOptions,
    inner: Mutex<Inner>,
    counters: Counters,
}

impl std::fmt::Debug for FrameStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameStore")
            .field("root", &self.root)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0,
    live_frames INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS segments_run ON segments (run_id, id);
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    episode INTEGER NOT NULL,
    step INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    len INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    fps REAL NOT NULL,
    wall_ns INTEGER NOT NULL,
    UNIQUE (run_id, agent_id, episode, step)
);
CREATE INDEX IF NOT EXISTS frames_run_latest ON frames (run_id, id);
CREATE INDEX IF NOT EXISTS frames_agent_latest ON frames (run_id, agent_id, id);
CREATE TABLE IF NOT EXISTS episodes (
    run_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    episode INTEGER NOT NULL,
    frames INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    first_frame INTEGER NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, agent_id, episode)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS episodes_age ON episodes (first_frame);
CREATE INDEX IF NOT EXISTS episodes_run_age ON episodes (run_id, first_frame);
CREATE TABLE IF NOT EXISTS evicted (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    episode INTEGER NOT NULL,
    UNIQUE (run_id, agent_id, episode)
);
CREATE TABLE IF NOT EXISTS exports (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    episode INTEGER NOT NULL,
    path TEXT NOT NULL,
    format TEXT NOT NULL,
    frames INTEGER NOT NULL,
    wall_ns INTEGER NOT NULL
);
";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl FrameStore {
    /// Opens (creating, 0700) the frame store in `dir`, usually `<var-dir>/frames`.
    pub fn open(dir: &Path, opts: FrameStoreOptions) -> Result<FrameStore, StoreError> {
        crate::private_dir(dir).map_err(io_at(dir))?;
        let seg_root = dir.join("segments");
        crate::private_dir(&seg_root).map_err(io_at(&seg_root))?;
        let db_path = dir.join("index.sqlite");
        let db = Connection::open(&db_path)?;
        crate::private_file(&db_path).map_err(io_at(&db_path))?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.execute_batch(SCHEMA)?;
        let (run_bytes, total_bytes, total_frames) = totals(&db)?;
        let store = FrameStore {
            root: dir.to_owned(),
            opts,
            inner: Mutex::new(Inner {
                db,
                active: HashMap::new(),
                run_bytes,
                total_bytes,
                total_frames,
            }),
            counters: Counters::default(),
        };
        store.publish_held(&lock(&store.inner), None);
        Ok(store)
    }

    /// The settings it was opened with.
    pub fn options(&self) -> &FrameStoreOptions {
        &self.opts
    }

    fn seg_root(&self) -> PathBuf {
        self.root.join("segments")
    }

    /// Validates and stores a batch (one index transaction; segment bytes synced first).
    /// Invalid frames are rejected one by one; a resent frame is a duplicate; retention evicts
    /// the oldest unpinned episodes (never one of the frame's own episode) to make room, and a
    /// frame that still does not fit is refused as over the limit.
    pub fn append(&self, frames: &[pb::Frame]) -> Result<AppendReport, StoreError> {
        let mut report = AppendReport::default();
        let mut inner = lock(&self.inner);
        let result = self.append_locked(&mut inner, frames, &mut report);
        if result.is_err() {
            // The index rolled back: make the in-memory totals agree with it again.
            inner.active.clear();
            if let Ok((runs, total, n)) = totals(&inner.db) {
                inner.run_bytes = runs;
                inner.total_bytes = total;
                inner.total_frames = n;
            }
            self.publish_held(&inner, None);
            return result.map(|_| report);
        }
        // Counted only once the transaction committed (a rolled-back batch did nothing).
        let c = &self.counters;
        c.stored.fetch_add(u64::from(report.stored), Relaxed);
        c.duplicates
            .fetch_add(u64::from(report.duplicates), Relaxed);
        c.over_limit
            .fetch_add(u64::from(report.over_limit), Relaxed);
        c.rejected.fetch_add(report.rejected.len() as u64, Relaxed);
        c.evicted_episodes
            .fetch_add(u64::from(report.evicted_episodes), Relaxed);
        c.evicted_frames.fetch_add(report.evicted_frames, Relaxed);
        c.evicted_bytes.fetch_add(report.evicted_bytes, Relaxed);
        if !report.rejected.is_empty() {
            let mut by = lock(&c.rejected_by_reason);
            for (_, reason) in &report.rejected {
                *by.entry(reason).or_default() += 1;
            }
        }
        // Evictions may have touched any run; otherwise only the batch's own runs changed.
        if report.evicted_episodes > 0 {
            self.publish_held(&inner, None);
        } else if report.stored > 0 {
            self.publish_held(&inner, Some(frames));
        }
        Ok(report)
    }

    fn append_locked(
        &self,
        inner: &mut Inner,
        frames: &[pb::Frame],
        report: &mut AppendReport,
    ) -> Result<(), StoreError> {
        let Inner {
            db,
            active,
            run_bytes,
            total_bytes,
            total_frames,
        } = inner;
        let tx = db.transaction()?;
        let mut dead_segments: Vec<(String, i64)> = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            if let Err(e) = check_frame(frame) {
                report.rejected.push((i as u32, e.reason()));
                continue;
            }
            // The per-frame statements are prepared once per connection (rusqlite's cache), not
            // once per frame.
            let exists: Option<i64> = tx
                .prepare_cached(
                    "SELECT id FROM frames WHERE run_id=?1 AND agent_id=?2 AND episode=?3 AND step=?4",
                )?
                .query_row(
                    params![
                        frame.run_id,
                        frame.agent_id,
                        to_i64(frame.episode_index),
                        to_i64(frame.step_index)
                    ],
                    |r| r.get(0),
                )
                .optional()?;
            if exists.is_some() {
                report.duplicates += 1;
                continue;
            }
            let record = segment::frame_record(&frame.encode_to_vec());
            let need = record.len() as u64;
            let own = (
                frame.run_id.as_str(),
                frame.agent_id.as_str(),
                to_i64(frame.episode_index),
            );
            // Make room: first within the run, then in total.
            let fits_run = self.make_room(
                &tx,
                Some(&frame.run_id),
                need,
                own,
                run_bytes,
                total_bytes,
                report,
                &mut dead_segments,
            )?;
            let fits = fits_run
                && self.make_room(
                    &tx,
                    None,
                    need,
                    own,
                    run_bytes,
                    total_bytes,
                    report,
                    &mut dead_segments,
                )?;
            if !fits {
                report.over_limit += 1;
                continue;
            }
            let appender = self.appender(&tx, active, &frame.run_id, need)?;
            let offset = appender.append(&record).map_err(|e| StoreError::Io {
                path: appender.path.clone(),
                source: e,
            })?;
            let seg_id = appender.id;
            tx.prepare_cached(
                "INSERT INTO frames (run_id, agent_id, episode, step, segment, offset, len, width, height, fps, wall_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                frame.run_id,
                frame.agent_id,
                own.2,
                to_i64(frame.step_index),
                seg_id,
                to_i64(offset),
                to_i64(need),
                frame.width,
                frame.height,
                frame.render_fps,
                frame.wall_time_unix_ns
            ])?;
            let id = tx.last_insert_rowid();
            tx.prepare_cached(
                "UPDATE segments SET bytes = bytes + ?2, live_frames = live_frames + 1 WHERE id = ?1",
            )?
            .execute(params![seg_id, to_i64(need)])?;
            tx.prepare_cached(
                "INSERT INTO episodes (run_id, agent_id, episode, frames, bytes, first_frame)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5)
                 ON CONFLICT (run_id, agent_id, episode)
                 DO UPDATE SET frames = frames + 1, bytes = bytes + ?4",
            )?
            .execute(params![own.0, own.1, own.2, to_i64(need), id])?;
            tx.prepare_cached(
                "DELETE FROM evicted WHERE run_id=?1 AND agent_id=?2 AND episode=?3",
            )?
            .execute(params![own.0, own.1, own.2])?;
            *run_bytes.entry(frame.run_id.clone()).or_default() += need;
            *total_bytes += need;
            *total_frames += 1;
            report.stored += 1;
        }
        *total_frames = total_frames.saturating_sub(report.evicted_frames);
        if self.opts.fsync {
            for a in active.values_mut() {
                a.sync().map_err(|e| StoreError::Io {
                    path: a.path.clone(),
                    source: e,
                })?;
            }
        }
        tx.commit()?;
        // Segments without a live frame are deleted only after the commit that emptied them.
        for (run, id) in dead_segments {
            if active.get(&run).is_some_and(|a| a.id == id) {
                continue;
            }
            let path = segment::path_of(&self.seg_root(), &run, id);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove an emptied frame segment");
            }
            db.execute(
                "DELETE FROM segments WHERE id = ?1 AND live_frames = 0",
                [id],
            )?;
        }
        Ok(())
    }

    /// The run's current segment, rolled over when `need` more bytes would pass the limit.
    fn appender<'a>(
        &self,
        tx: &rusqlite::Transaction<'_>,
        active: &'a mut HashMap<String, Appender>,
        run_id: &str,
        need: u64,
    ) -> Result<&'a mut Appender, StoreError> {
        let roll = match active.get(run_id) {
            Some(a) => a.len > 0 && a.len + need > self.opts.segment_max_bytes,
            None => true,
        };
        if roll {
            if let Some(mut old) = active.remove(run_id) {
                old.sync().map_err(io_at(&old.path.clone()))?;
            }
            // Reuse the run's last segment after a restart if it has room; else start one.
            let last: Option<(i64, i64)> = tx
                .query_row(
                    "SELECT id, bytes FROM segments WHERE run_id = ?1 ORDER BY id DESC LIMIT 1",
                    [run_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let id = match last {
                Some((id, _))
                    if !active.contains_key(run_id) && !self.is_full(run_id, id, need) =>
                {
                    id
                }
                _ => {
                    tx.execute("INSERT INTO segments (run_id) VALUES (?1)", [run_id])?;
                    tx.last_insert_rowid()
                }
            };
            let path = segment::path_of(&self.seg_root(), run_id, id);
            let a = Appender::open(path.clone(), id).map_err(io_at(&path))?;
            active.insert(run_id.to_owned(), a);
        }
        active.get_mut(run_id).ok_or_else(|| StoreError::Io {
            path: self.seg_root(),
            source: std::io::Error::other("no active segment"),
        })
    }

    fn is_full(&self, run_id: &str, id: i64, need: u64) -> bool {
        let path = segment::path_of(&self.seg_root(), run_id, id);
        match std::fs::metadata(path) {
            Ok(m) => m.len() + need > self.opts.segment_max_bytes,
            Err(_) => true,
        }
    }

    /// Evicts the oldest unpinned episodes (of `run`, or of any run) other than `own` until
    /// `need` more bytes fit under the limit. Returns whether they fit.
    #[allow(clippy::too_many_arguments)]
    fn make_room(
        &self,
        tx: &rusqlite::Transaction<'_>,
        run: Option<&str>,
        need: u64,
        own: (&str, &str, i64),
        run_bytes: &mut HashMap<String, u64>,
        total_bytes: &mut u64,
        report: &mut AppendReport,
        dead_segments: &mut Vec<(String, i64)>,
    ) -> Result<bool, StoreError> {
        loop {
            let (used, limit) = match run {
                Some(r) => (
                    run_bytes.get(r).copied().unwrap_or(0),
                    self.opts.max_run_bytes,
                ),
                None => (*total_bytes, self.opts.max_total_bytes),
            };
            if used + need <= limit {
                return Ok(true);
            }
            let victim: Option<(String, String, i64, i64, i64)> = {
                let sql = if run.is_some() {
                    "SELECT run_id, agent_id, episode, frames, bytes FROM episodes
                     WHERE run_id = ?1 AND pinned = 0
                       AND NOT (run_id = ?1 AND agent_id = ?2 AND episode = ?3)
                     ORDER BY first_frame LIMIT 1"
                } else {
                    "SELECT run_id, agent_id, episode, frames, bytes FROM episodes
                     WHERE pinned = 0 AND NOT (run_id = ?1 AND agent_id = ?2 AND episode = ?3)
                     ORDER BY first_frame LIMIT 1"
                };
                tx.query_row(sql, params![own.0, own.1, own.2], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .optional()?
            };
            let Some((vrun, vagent, vep, vframes, vbytes)) = victim else {
                return Ok(false);
            };
            // Free the segments' live counts, then drop the rows.
            {
                let mut q = tx.prepare(
                    "SELECT segment, COUNT(*) FROM frames
                     WHERE run_id=?1 AND agent_id=?2 AND episode=?3 GROUP BY segment",
                )?;
                let segs = q
                    .query_map(params![vrun, vagent, vep], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                for (seg, n) in segs {
                    tx.execute(
                        "UPDATE segments SET live_frames = live_frames - ?2 WHERE id = ?1",
                        params![seg, n],
                    )?;
                    let live: i64 = tx.query_row(
                        "SELECT live_frames FROM segments WHERE id = ?1",
                        [seg],
                        |r| r.get(0),
                    )?;
                    if live <= 0 {
                        dead_segments.push((vrun.clone(), seg));
                    }
                }
            }
            tx.execute(
                "DELETE FROM frames WHERE run_id=?1 AND agent_id=?2 AND episode=?3",
                params![vrun, vagent, vep],
            )?;
            tx.execute(
                "DELETE FROM episodes WHERE run_id=?1 AND agent_id=?2 AND episode=?3",
                params![vrun, vagent, vep],
            )?;
            tx.execute(
                "INSERT OR IGNORE INTO evicted (run_id, agent_id, episode) VALUES (?1, ?2, ?3)",
                params![vrun, vagent, vep],
            )?;
            tx.execute(
                "DELETE FROM evicted WHERE id <= (SELECT MAX(id) FROM evicted) - ?1",
                [MAX_EVICTED_REMEMBERED],
            )?;
            let b = u64::try_from(vbytes).unwrap_or(0);
            if let Some(rb) = run_bytes.get_mut(&vrun) {
                *rb = rb.saturating_sub(b);
            }
            *total_bytes = total_bytes.saturating_sub(b);
            report.evicted_episodes += 1;
            report.evicted_frames += u64::try_from(vframes).unwrap_or(0);
            report.evicted_bytes += b;
            tracing::debug!(run = %vrun, agent = %vagent, episode = vep, bytes = b, "frame retention evicted an episode");
        }
    }

    /// The frame named by `frame_ref`. A malformed reference is an error; an absent frame is
    /// [`Lookup::Missing`].
    pub fn get_ref(&self, frame_ref: &str) -> Result<Lookup, StoreError> {
        let key = parse_frame_ref(frame_ref)?;
        self.get(&key)
    }

    /// The frame of `key`, or why it is missing.
    pub fn get(&self, key: &FrameKey) -> Result<Lookup, StoreError> {
        let inner = lock(&self.inner);
        let row: Option<(i64, i64, i64)> = inner
            .db
            .query_row(
                "SELECT segment, offset, len FROM frames
                 WHERE run_id=?1 AND agent_id=?2 AND episode=?3 AND step=?4",
                params![
                    key.run_id,
                    key.agent_id,
                    to_i64(key.episode_index),
                    to_i64(key.step_index)
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        match row {
            Some(loc) => Ok(self.read_at(&key.run_id, loc)),
            None => {
                let evicted: bool = inner.db.query_row(
                    "SELECT EXISTS (SELECT 1 FROM evicted WHERE run_id=?1 AND agent_id=?2 AND episode=?3)",
                    params![key.run_id, key.agent_id, to_i64(key.episode_index)],
                    |r| r.get(0),
                )?;
                self.counters.missing.fetch_add(1, Relaxed);
                Ok(Lookup::Missing(if evicted {
                    MissingReason::Evicted
                } else {
                    MissingReason::NotFound
                }))
            }
        }
    }

    fn read_at(&self, run_id: &str, (seg, offset, len): (i64, i64, i64)) -> Lookup {
        let path = segment::path_of(&self.seg_root(), run_id, seg);
        let read = segment::read_record(
            &path,
            u64::try_from(offset).unwrap_or(u64::MAX),
            u64::try_from(len).unwrap_or(0),
        )
        .and_then(|payload| {
            pb::Frame::decode(payload.as_slice()).map_err(|_| ReadError::Corrupt {
                path: path.clone(),
                offset: offset as u64,
                what: "undecodable frame",
            })
        });
        match read {
            Ok(frame) => Lookup::Found(Box::new(frame)),
            Err(e) => {
                tracing::warn!(error = %e, "a stored frame is unreadable; reported as missing");
                self.counters.corrupt.fetch_add(1, Relaxed);
                self.counters.missing.fetch_add(1, Relaxed);
                Lookup::Missing(MissingReason::Corrupt)
            }
        }
    }

    /// The most recently stored frame of a run (of one agent, when `agent_id` is given), with
    /// its `frame_ref`; `None` when the run has no frames.
    pub fn latest(
        &self,
        run_id: &str,
        agent_id: Option<&str>,
    ) -> Result<Option<(String, Lookup)>, StoreError> {
        let inner = lock(&self.inner);
        let map = |r: &rusqlite::Row<'_>| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                (
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ),
            ))
        };
        let row = match agent_id {
            Some(a) => inner
                .db
                .query_row(
                    "SELECT agent_id, episode, step, segment, offset, len FROM frames
                     WHERE run_id = ?1 AND agent_id = ?2 ORDER BY id DESC LIMIT 1",
                    params![run_id, a],
                    map,
                )
                .optional()?,
            None => inner
                .db
                .query_row(
                    "SELECT agent_id, episode, step, segment, offset, len FROM frames
                     WHERE run_id = ?1 ORDER BY id DESC LIMIT 1",
                    params![run_id],
                    map,
                )
                .optional()?,
        };
        Ok(row.map(|(agent, ep, step, loc)| {
            (
                frame_ref(run_id, &agent, ep as u64, step as u64),
                self.read_at(run_id, loc),
            )
        }))
    }

    /// An episode's frames in step order, after `after_step` (exclusive), at most `limit`
    /// (capped at [`MAX_LIST`]).
    pub fn list_episode(
        &self,
        run_id: &str,
        agent_id: &str,
        episode: u64,
        after_step: Option<u64>,
        limit: usize,
    ) -> Result<EpisodeFrames, StoreError> {
        let inner = lock(&self.inner);
        let limit = limit.clamp(1, MAX_LIST);
        let after = after_step.map_or(-1, to_i64);
        let mut q = inner.db.prepare(
            "SELECT step, width, height, len, fps, wall_ns FROM frames
             WHERE run_id=?1 AND agent_id=?2 AND episode=?3 AND step > ?4
             ORDER BY step LIMIT ?5",
        )?;
        let frames = q
            .query_map(
                params![run_id, agent_id, to_i64(episode), after, limit as i64],
                |r| {
                    let len: i64 = r.get(3)?;
                    Ok(FrameEntry {
                        step_index: r.get::<_, i64>(0)? as u64,
                        width: r.get(1)?,
                        height: r.get(2)?,
                        bytes: u32::try_from(len - segment::HEADER as i64).unwrap_or(0),
                        render_fps: r.get(4)?,
                        wall_time_unix_ns: r.get(5)?,
                    })
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let pinned: Option<bool> = inner
            .db
            .query_row(
                "SELECT pinned FROM episodes WHERE run_id=?1 AND agent_id=?2 AND episode=?3",
                params![run_id, agent_id, to_i64(episode)],
                |r| r.get(0),
            )
            .optional()?;
        Ok(EpisodeFrames {
            frames,
            pinned: pinned.unwrap_or(false),
        })
    }

    /// Pins (or unpins) an episode: a pinned episode is never evicted. Returns whether the
    /// episode has frames.
    pub fn pin(
        &self,
        run_id: &str,
        agent_id: &str,
        episode: u64,
        pinned: bool,
    ) -> Result<bool, StoreError> {
        let inner = lock(&self.inner);
        let n = inner.db.execute(
            "UPDATE episodes SET pinned = ?4 WHERE run_id=?1 AND agent_id=?2 AND episode=?3",
            params![run_id, agent_id, to_i64(episode), pinned],
        )?;
        Ok(n > 0)
    }

    /// Remembers a finished export (at most [`MAX_EXPORTS_REMEMBERED`] rows).
    pub fn register_export(&self, e: &ExportRecord) -> Result<(), StoreError> {
        let inner = lock(&self.inner);
        inner.db.execute(
            "INSERT INTO exports (run_id, agent_id, episode, path, format, frames, wall_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                e.run_id,
                e.agent_id,
                to_i64(e.episode_index),
                e.path,
                e.format,
                to_i64(e.frames),
                telemetry_core::timestamp::to_unix_nanos(&telemetry_core::timestamp::now())
            ],
        )?;
        inner.db.execute(
            "DELETE FROM exports WHERE id <= (SELECT MAX(id) FROM exports) - ?1",
            [MAX_EXPORTS_REMEMBERED],
        )?;
        Ok(())
    }

    /// The exports of a run, oldest first.
    pub fn exports(&self, run_id: &str) -> Result<Vec<ExportRecord>, StoreError> {
        let inner = lock(&self.inner);
        let mut q = inner.db.prepare(
            "SELECT run_id, agent_id, episode, path, format, frames FROM exports
             WHERE run_id = ?1 ORDER BY id",
        )?;
        let rows = q
            .query_map([run_id], |r| {
                Ok(ExportRecord {
                    run_id: r.get(0)?,
                    agent_id: r.get(1)?,
                    episode_index: r.get::<_, i64>(2)? as u64,
                    path: r.get(3)?,
                    format: r.get(4)?,
                    frames: r.get::<_, i64>(5)? as u64,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Copies what `inner` holds to the counters a scrape reads: every run (`None`), or only
    /// the runs of `frames` (an append that evicted nothing changed no other run).
    fn publish_held(&self, inner: &Inner, frames: Option<&[pb::Frame]>) {
        let c = &self.counters;
        c.held_bytes.store(inner.total_bytes, Relaxed);
        c.held_frames.store(inner.total_frames, Relaxed);
        let mut held = lock(&c.held_by_run);
        let set = |held: &mut HashMap<String, u64>, run: &str, b: u64| {
            if b == 0 {
                held.remove(run);
            } else if let Some(v) = held.get_mut(run) {
                *v = b;
            } else {
                held.insert(run.to_owned(), b);
            }
        };
        match frames {
            None => {
                held.clear();
                for (run, &b) in &inner.run_bytes {
                    set(&mut held, run, b);
                }
            }
            Some(frames) => {
                let mut last: Option<&str> = None;
                for f in frames {
                    if last == Some(f.run_id.as_str()) {
                        continue;
                    }
                    last = Some(f.run_id.as_str());
                    let b = inner.run_bytes.get(&f.run_id).copied().unwrap_or(0);
                    set(&mut held, &f.run_id, b);
                }
            }
        }
    }

    /// The counters and what the store holds, without waiting for an append in progress (the
    /// gauges are as of the last append): what the daemon's `/metrics` shows.
    pub fn counters(&self) -> FrameCounters {
        let c = &self.counters;
        let mut by_run: Vec<(String, u64)> = lock(&c.held_by_run)
            .iter()
            .map(|(r, &b)| (r.clone(), b))
            .collect();
        by_run.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        FrameCounters {
            stored: c.stored.load(Relaxed),
            duplicates: c.duplicates.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            rejected_by_reason: lock(&c.rejected_by_reason)
                .iter()
                .map(|(&r, &n)| (r, n))
                .collect(),
            over_limit: c.over_limit.load(Relaxed),
            evicted_frames: c.evicted_frames.load(Relaxed),
            evicted_episodes: c.evicted_episodes.load(Relaxed),
            evicted_bytes: c.evicted_bytes.load(Relaxed),
            corrupt: c.corrupt.load(Relaxed),
            missing: c.missing.load(Relaxed),
            held_frames: c.held_frames.load(Relaxed),
            held_bytes: c.held_bytes.load(Relaxed),
            held_bytes_by_run: by_run,
            max_run_bytes: self.opts.max_run_bytes,
            max_total_bytes: self.opts.max_total_bytes,
        }
    }

    /// Counters since open, and the gauges now.
    pub fn stats(&self) -> Result<pb::FrameStats, StoreError> {
        let inner = lock(&self.inner);
        let (live_frames, pinned): (i64, i64) = inner.db.query_row(
            "SELECT COALESCE(SUM(frames), 0), COALESCE(SUM(pinned), 0) FROM episodes",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let disk: i64 =
            inner
                .db
                .query_row("SELECT COALESCE(SUM(bytes), 0) FROM segments", [], |r| {
                    r.get(0)
                })?;
        let c = &self.counters;
        Ok(pb::FrameStats {
            frames_stored_total: c.stored.load(Relaxed),
            duplicates_total: c.duplicates.load(Relaxed),
            rejected_total: c.rejected.load(Relaxed),
            over_limit_total: c.over_limit.load(Relaxed),
            evicted_frames_total: c.evicted_frames.load(Relaxed),
            evicted_episodes_total: c.evicted_episodes.load(Relaxed),
            evicted_bytes_total: c.evicted_bytes.load(Relaxed),
            corrupt_frames_total: c.corrupt.load(Relaxed),
            missing_lookups_total: c.missing.load(Relaxed),
            live_frames: live_frames as u64,
            live_bytes: inner.total_bytes,
            disk_bytes: disk as u64,
            pinned_episodes: pinned as u64,
            max_run_bytes: self.opts.max_run_bytes,
            max_total_bytes: self.opts.max_total_bytes,
        })
    }

    /// Checks every segment file record by record (an operator's fsck): what is good, what
    /// fails its checksum, and torn tails.
    pub fn verify(&self) -> Result<segment::ScanReport, StoreError> {
        let _inner = lock(&self.inner);
        let mut total = segment::ScanReport::default();
        let root = self.seg_root();
        let runs = std::fs::read_dir(&root).map_err(io_at(&root))?;
        for run in runs {
            let run = run.map_err(io_at(&root))?.path();
            let Ok(files) = std::fs::read_dir(&run) else {
                continue;
            };
            for f in files.flatten() {
                let p = f.path();
                let r = segment::scan(&p).map_err(io_at(&p))?;
                total.good += r.good;
                total.corrupt += r.corrupt;
                total.torn_tail_bytes += r.torn_tail_bytes;
            }
        }
        Ok(total)
    }
}

/// Bytes per run, bytes in total and frames in total, from the index.
fn totals(db: &Connection) -> Result<(HashMap<String, u64>, u64, u64), rusqlite::Error> {
    let mut q =
        db.prepare("SELECT run_id, SUM(bytes), SUM(frames) FROM episodes GROUP BY run_id")?;
    let mut runs = HashMap::new();
    let mut total = 0;
    let mut frames = 0;
    for row in q.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })? {
        let (run, b, n) = row?;
        let b = u64::try_from(b).unwrap_or(0);
        total += b;
        frames += u64::try_from(n).unwrap_or(0);
        runs.insert(run, b);
    }
    Ok((runs, total, frames))
}
