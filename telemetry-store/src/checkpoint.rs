//! WAL hygiene: copy the log back without ever waiting on readers, shrink it when possible.
//!
//! In WAL mode a reader keeps the snapshot it started with; frames newer than the oldest
//! reader's snapshot cannot be copied back, and the log cannot restart while anyone reads from
//! it. A viewer that holds a read transaction for hours would therefore grow the WAL without
//! bound. [`run`] does a `PASSIVE` checkpoint (copies what it can, waits for nobody), and when
//! everything was copied tries `TRUNCATE` with the busy handler switched off, so the writer is
//! never stalled by a reader. When checkpoints keep failing to catch up, that is counted and
//! logged: the operator's signal that some reader is stuck.

use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::{
    error::{classify, is_busy},
    StoreConfig, StoreError,
};

/// Which checkpoint completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckpointMode {
    /// Only the passive copy ran (the WAL was empty, or a reader prevented truncation).
    #[default]
    Passive,
    /// Everything was copied back and the WAL file was truncated to zero bytes.
    Truncate,
}

/// What one [`crate::Store::checkpoint`] did (SQLite's `busy, log, checkpointed` triple plus
/// our counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointStats {
    /// The last checkpoint mode that completed.
    pub mode: CheckpointMode,
    /// 1 when the checkpoint could not complete because of other connections, else 0.
    pub busy: i64,
    /// Frames in the WAL after the checkpoint (0 after a truncation; -1 if not in WAL mode).
    pub log_frames: i64,
    /// Frames of the WAL already copied back into the database.
    pub checkpointed_frames: i64,
    /// How many calls in a row (this one included) left frames in the WAL that could not be
    /// copied back or truncated because of readers. 0 when this one caught up.
    pub consecutive_blocked: u64,
    /// Whether this call logged the "checkpoints keep being blocked" warning.
    pub warned: bool,
}

/// State kept between checkpoints.
#[derive(Debug, Default)]
pub(crate) struct CheckpointState {
    consecutive_blocked: u64,
}

fn wal_checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

/// Runs one checkpoint on the writer's connection.
pub(crate) fn run(
    conn: &Connection,
    cfg: &StoreConfig,
    state: &mut CheckpointState,
) -> rusqlite::Result<CheckpointStats> {
    let (mut busy, mut log, mut done) = wal_checkpoint(conn, "PASSIVE")?;
    let mut mode = CheckpointMode::Passive;
    let mut blocked = busy != 0 || done < log;
    if !blocked && log > 0 {
        // Everything is copied back; truncating needs every reader off the WAL. Do not wait.
        conn.busy_timeout(Duration::ZERO)?;
        let truncated = wal_checkpoint(conn, "TRUNCATE");
        conn.busy_timeout(cfg.busy_timeout)?;
        match truncated {
            Ok((0, l, c)) => {
                mode = CheckpointMode::Truncate;
                (busy, log, done) = (0, l, c);
            }
            Ok((b, _, _)) => {
                busy = b;
                blocked = true;
            }
            Err(e) if is_busy(&e) => {
                busy = 1;
                blocked = true;
            }
            Err(e) => return Err(e),
        }
    }
    state.consecutive_blocked = if blocked {
        state.consecutive_blocked + 1
    } else {
        0
    };
    let warn_after = u64::from(cfg.checkpoint_warn_after);
    let warned = warn_after > 0
        && state.consecutive_blocked > 0
        && state.consecutive_blocked.is_multiple_of(warn_after);
    if warned {
        tracing::warn!(
            path = %cfg.path.display(),
            consecutive_blocked = state.consecutive_blocked,
            log_frames = log,
            checkpointed_frames = done,
            "WAL checkpoints keep being blocked by readers holding old snapshots; \
             the WAL grows until they finish"
        );
    }
    Ok(CheckpointStats {
        mode,
        busy,
        log_frames: log,
        checkpointed_frames: done,
        consecutive_blocked: state.consecutive_blocked,
        warned,
    })
}

/// Checkpoints on a connection of their own, so the copy of the WAL into the database and its
/// fsyncs run off the writer's commit path.
///
/// With SQLite's automatic checkpoint the commit that crosses `wal_autocheckpoint` pages does
/// the copy and the fsyncs itself, stalling every later commit for tens of milliseconds (the
/// daemon's live-latency tail). A writer opened with `wal_autocheckpoint_pages = 0` plus a
/// `Checkpointer` called from another thread keeps commits short and the WAL bounded: a
/// `PASSIVE` checkpoint never waits for the writer or readers, and the WAL is truncated only
/// when nobody needs it (see [`run`]).
#[derive(Debug)]
pub struct Checkpointer {
    conn: Connection,
    cfg: StoreConfig,
    state: CheckpointState,
}

impl Checkpointer {
    /// Opens a read-write connection to the store at `cfg.path` (which must exist and be
    /// migrated: open it with [`Store::open`](crate::Store::open) first).
    pub fn open(cfg: &StoreConfig) -> Result<Checkpointer, StoreError> {
        let path = cfg.path.as_path();
        if !path.exists() {
            return Err(StoreError::NotFound {
                path: path.to_owned(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| classify(path, e))?;
        conn.busy_timeout(cfg.busy_timeout)
            .map_err(|e| classify(path, e))?;
        // This connection never writes rows; it must not checkpoint on its own either.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| classify(path, e))?;
        Ok(Checkpointer {
            conn,
            cfg: cfg.clone(),
            state: CheckpointState::default(),
        })
    }

    /// Copies the WAL back into the database, truncating it when no reader needs it.
    pub fn checkpoint(&mut self) -> Result<CheckpointStats, StoreError> {
        run(&self.conn, &self.cfg, &mut self.state).map_err(|e| classify(&self.cfg.path, e))
    }
}
