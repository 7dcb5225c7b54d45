//! The queue directory's small files: the process lock and `state.json` (producer id, acked
//! watermark and seq reservation).
//!
//! `state.json` is replaced atomically (write a temporary file, rename over), so a reader sees
//! the old or the new state, never a mix. It is synced before any segment it allows to delete
//! is deleted, so a crash can never leave segments gone while the watermark that justified
//! deleting them is lost (which would let `producer_seq` restart below the daemon's watermark).

use super::QueueError;
use std::{
    fs::{self, File, TryLockError},
    io::Write,
    path::{Path, PathBuf},
};

pub(super) const STATE_FILE: &str = "state.json";
const STATE_TMP: &str = "state.json.tmp";
const LOCK_FILE: &str = "lock";
const VERSION: u64 = 1;

/// What `state.json` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct State {
    pub producer_id: String,
    pub acked: u64,
    /// Seqs up to here may have reached the daemon without being synced here: a reopen never
    /// numbers a new record at or below it (`reserved_seq`, absent in older files: 0).
    pub reserved: u64,
}

pub(super) fn io_err(path: &Path, source: std::io::Error) -> QueueError {
    QueueError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Takes the directory's exclusive lock (held until the returned file is dropped; the OS drops
/// it when the process dies).
pub(super) fn lock(dir: &Path) -> Result<File, QueueError> {
    let path = dir.join(LOCK_FILE);
    let file = super::private_file()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(QueueError::Locked {
            dir: dir.to_owned(),
        }),
        Err(TryLockError::Error(e)) => Err(io_err(&path, e)),
    }
}

/// Reads `state.json`: `Ok(None)` when absent, `Err(reason)` when unreadable as a state.
pub(super) fn read(dir: &Path) -> Result<Option<State>, String> {
    let path = dir.join(STATE_FILE);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if text.len() > 64 * 1024 {
        return Err("state file is too large".into());
    }
    let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    if v.get("version").and_then(serde_json::Value::as_u64) != Some(VERSION) {
        return Err("unknown state version".into());
    }
    let producer_id = v
        .get("producer_id")
        .and_then(serde_json::Value::as_str)
        .filter(|s| uuid::Uuid::parse_str(s).is_ok())
        .ok_or("producer_id missing or not a UUID")?
        .to_owned();
    let acked = v
        .get("acked_seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or("acked_seq missing")?;
    let reserved = match v.get("reserved_seq") {
        None => 0,
        Some(r) => r.as_u64().ok_or("reserved_seq is not a number")?,
    };
    Ok(Some(State {
        producer_id,
        acked,
        reserved,
    }))
}

/// Moves an unreadable state file aside (kept for inspection) and returns where it went.
pub(super) fn quarantine(dir: &Path) -> Result<PathBuf, QueueError> {
    let from = dir.join(STATE_FILE);
    let to = dir.join(format!(
        "{STATE_FILE}.corrupt-{}",
        uuid::Uuid::new_v4().simple()
    ));
    fs::rename(&from, &to).map_err(|e| io_err(&from, e))?;
    Ok(to)
}

/// Replaces `state.json`; with `sync`, the new content and the rename are durable on return.
pub(super) fn write(dir: &Path, state: &State, sync: bool) -> Result<(), QueueError> {
    let tmp = dir.join(STATE_TMP);
    let text = serde_json::json!({
        "version": VERSION,
        "producer_id": state.producer_id,
        "acked_seq": state.acked,
        "reserved_seq": state.reserved,
    })
    .to_string();
    let mut f = super::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    f.write_all(text.as_bytes()).map_err(|e| io_err(&tmp, e))?;
    if sync {
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
    }
    drop(f);
    let path = dir.join(STATE_FILE);
    fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
    if sync {
        sync_dir(dir)?;
        super::fault::state_synced(dir, text.as_bytes());
    }
    Ok(())
}

/// Makes the directory's entries (created, renamed, deleted files) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))?;
    super::fault::dir_synced(dir);
    Ok(())
}
