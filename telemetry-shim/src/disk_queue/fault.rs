//! What the queue has made durable, recorded so a test can simulate an OS crash or power loss.
//!
//! A killed process loses nothing the queue wrote (the kernel has it); a machine crash keeps
//! only what was synced. Telling the two apart needs a record of every sync, which no file
//! system offers, so the queue reports each durability event here: a segment created, a file's
//! data synced at a length, the directory synced (new entries durable), a segment deleted, and
//! `state.json` written with a sync (its content). Without the `fault-injection` feature every
//! hook is an empty inline function; with it, only directories passed to
//! [`fault_injection::watch`] are recorded, so the feature costs one atomic load per sync
//! elsewhere.
//!
//! [`fault_injection::crash_image`] rebuilds, in another directory, what a machine crash would
//! have left: each segment whose directory entry was synced, cut to its last synced length
//! (optionally plus a random prefix of the bytes written since, as a partial write-back would
//! leave, torn frames included), and the last synced `state.json`. The model: data and names
//! are durable only when synced; a deletion is durable at once (deleted segments hold only
//! acked records, so their return would be harmless anyway); a state written without a sync
//! is lost. Used by `tests/disk_queue_crash_model.rs` and the chaos harness (`os-crash`).

use std::path::Path;

#[cfg(feature = "fault-injection")]
use imp::{record, Event};

/// A segment file was created (its name is durable only after the next directory sync).
#[inline]
pub(super) fn created(_path: &Path) {
    #[cfg(feature = "fault-injection")]
    record(_path, Event::Created);
}

/// A segment's first `len` bytes are on stable storage.
#[inline]
pub(super) fn data_synced(_path: &Path, _len: u64) {
    #[cfg(feature = "fault-injection")]
    record(_path, Event::Synced(_len));
}

/// A segment is about to be deleted.
#[inline]
pub(super) fn removed(_path: &Path) {
    #[cfg(feature = "fault-injection")]
    record(_path, Event::Removed);
}

/// The queue directory was synced: every entry created so far is durable.
#[inline]
pub(super) fn dir_synced(_dir: &Path) {
    #[cfg(feature = "fault-injection")]
    imp::dir_synced(_dir);
}

/// `state.json` was replaced with `text`, synced (content and rename).
#[inline]
pub(super) fn state_synced(_dir: &Path, _text: &[u8]) {
    #[cfg(feature = "fault-injection")]
    imp::state_synced(_dir, _text);
}

#[cfg(feature = "fault-injection")]
mod imp {
    use std::{
        collections::HashMap,
        path::{Path, PathBuf},
        sync::{
            atomic::{AtomicBool, Ordering},
            Mutex, MutexGuard,
        },
    };

    pub(super) enum Event {
        Created,
        Synced(u64),
        Removed,
    }

    #[derive(Debug, Default, Clone, Copy)]
    pub(super) struct FileLog {
        pub(super) synced_len: u64,
        pub(super) entry_durable: bool,
    }

    #[derive(Debug, Default)]
    pub(super) struct DirLog {
        pub(super) files: HashMap<String, FileLog>,
        pub(super) state: Option<Vec<u8>>,
    }

    /// Set once anything is watched: the hooks of unwatched queues stop at this load.
    pub(super) static ARMED: AtomicBool = AtomicBool::new(false);
    static DIRS: Mutex<Option<HashMap<PathBuf, DirLog>>> = Mutex::new(None);

    pub(super) fn dirs() -> MutexGuard<'static, Option<HashMap<PathBuf, DirLog>>> {
        DIRS.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn record(path: &Path, event: Event) {
        if !ARMED.load(Ordering::Relaxed) {
            return;
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return;
        };
        let mut g = dirs();
        let Some(log) = g.as_mut().and_then(|m| m.get_mut(dir)) else {
            return;
        };
        match event {
            Event::Created => {
                log.files.insert(name.to_owned(), FileLog::default());
            }
            Event::Synced(len) => log.files.entry(name.to_owned()).or_default().synced_len = len,
            Event::Removed => {
                log.files.remove(name);
            }
        }
    }

    pub(super) fn dir_synced(dir: &Path) {
        if !ARMED.load(Ordering::Relaxed) {
            return;
        }
        if let Some(log) = dirs().as_mut().and_then(|m| m.get_mut(dir)) {
            for f in log.files.values_mut() {
                f.entry_durable = true;
            }
        }
    }

    pub(super) fn state_synced(dir: &Path, text: &[u8]) {
        if !ARMED.load(Ordering::Relaxed) {
            return;
        }
        if let Some(log) = dirs().as_mut().and_then(|m| m.get_mut(dir)) {
            log.state = Some(text.to_vec());
        }
    }
}

/// The test-only half: watch a queue directory, then rebuild what a machine crash leaves of it.
#[cfg(feature = "fault-injection")]
pub mod fault_injection {
    use super::imp::{dirs, DirLog, FileLog, ARMED};
    use std::{
        fs,
        io::{Read, Write},
        path::{Path, PathBuf},
        sync::atomic::Ordering,
    };

    /// Why a crash image could not be made.
    #[derive(Debug, thiserror::Error)]
    pub enum FaultError {
        /// The directory was not passed to [`watch`] (or was unwatched).
        #[error("queue directory {0} is not watched")]
        NotWatched(PathBuf),
        /// Reading the queue or writing the image failed.
        #[error("crash image {path}: {source}")]
        Io {
            /// The file.
            path: PathBuf,
            /// The error.
            #[source]
            source: std::io::Error,
        },
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FaultError + '_ {
        move |source| FaultError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// What [`crash_image`] kept and dropped.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct CrashImage {
        /// Segment files in the image.
        pub segments: usize,
        /// Synced bytes copied.
        pub synced_bytes: u64,
        /// Bytes the queue had written but not synced (segments whose name was never synced
        /// count whole).
        pub unsynced_bytes: u64,
        /// Of those, bytes kept anyway (a partial write-back), possibly ending mid-frame.
        pub kept_unsynced_bytes: u64,
        /// Whether a synced `state.json` existed (it always does once a queue was opened).
        pub state: bool,
    }

    /// Starts recording the durability events of the queue directory `dir` (the path exactly
    /// as the queue is opened with). Call it before opening the queue; files already there
    /// count as durable as they are (a directory rebuilt by [`crash_image`] is all durable).
    pub fn watch(dir: &Path) -> Result<(), FaultError> {
        let mut log = DirLog::default();
        if dir.is_dir() {
            for entry in fs::read_dir(dir).map_err(io(dir))? {
                let entry = entry.map_err(io(dir))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let len = entry.metadata().map_err(io(&entry.path()))?.len();
                if name.starts_with("seg-") {
                    let f = FileLog {
                        synced_len: len,
                        entry_durable: true,
                    };
                    log.files.insert(name, f);
                } else if name == super::super::state::STATE_FILE {
                    log.state = Some(fs::read(entry.path()).map_err(io(&entry.path()))?);
                }
            }
        }
        dirs()
            .get_or_insert_with(Default::default)
            .insert(dir.to_owned(), log);
        ARMED.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Stops recording `dir` and forgets it.
    pub fn unwatch(dir: &Path) {
        if let Some(m) = dirs().as_mut() {
            m.remove(dir);
        }
    }

    /// Writes into `into` (created if needed, expected empty) what a machine crash would leave
    /// of the watched queue `dir` right now: segments cut to their synced length, the last
    /// synced state. With `seed`, each segment also keeps a random prefix of its unsynced
    /// bytes. The record is held while copying, so a live queue cannot delete a segment
    /// half-way; take the image after the queue is gone (dropped or abandoned) to model a
    /// crash at that instant.
    pub fn crash_image(
        dir: &Path,
        into: &Path,
        seed: Option<u64>,
    ) -> Result<CrashImage, FaultError> {
        let g = dirs();
        let log = g
            .as_ref()
            .and_then(|m| m.get(dir))
            .ok_or_else(|| FaultError::NotWatched(dir.to_owned()))?;
        let mut rng = seed.map(fastrand::Rng::with_seed);
        super::super::private_dir(into).map_err(io(into))?;
        let mut out = CrashImage::default();
        let mut names: Vec<_> = log.files.iter().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        for (name, f) in names {
            let from = dir.join(name);
            let mut bytes = Vec::new();
            match fs::File::open(&from) {
                Ok(mut file) => {
                    file.read_to_end(&mut bytes).map_err(io(&from))?;
                }
                // Deleted outside the queue (the harness itself): nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&from)(e)),
            }
            let len = bytes.len() as u64;
            if !f.entry_durable {
                out.unsynced_bytes += len;
                continue;
            }
            let synced = f.synced_len.min(len);
            let unsynced = len - synced;
            let extra = match rng.as_mut() {
                Some(r) if unsynced > 0 => r.u64(0..=unsynced),
                _ => 0,
            };
            let keep = (synced + extra) as usize;
            let to = into.join(name);
            let mut file = super::super::private_file()
                .write(true)
                .create_new(true)
                .open(&to)
                .map_err(io(&to))?;
            file.write_all(&bytes[..keep]).map_err(io(&to))?;
            out.segments += 1;
            out.synced_bytes += synced;
            out.unsynced_bytes += unsynced;
            out.kept_unsynced_bytes += extra;
        }
        if let Some(state) = &log.state {
            let to = into.join(super::super::state::STATE_FILE);
            super::super::private_file()
                .write(true)
                .create_new(true)
                .open(&to)
                .and_then(|mut f| f.write_all(state))
                .map_err(io(&to))?;
            out.state = true;
        }
        Ok(out)
    }
}
