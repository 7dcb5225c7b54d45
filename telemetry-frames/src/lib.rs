//! # telemetry-frames
//!
//! Rendered frames of a run, kept out of the telemetry records: a step carries only its
//! `frame_ref` (`telemetry_core::frames`), the pixels live here.
//!
//! - [`FrameStore`]: append-only, checksummed segment files ([`segment`]) per run under
//!   `<var-dir>/frames/segments/<run>/`, indexed by (run, agent, episode, step) in SQLite
//!   (`<var-dir>/frames/index.sqlite`). Retention is bounded by bytes per run and in total
//!   ([`FrameStoreOptions`]); when full it evicts the oldest episodes first and never an
//!   episode a user pinned, and counts everything ([`FrameStore::stats`]). A frame that was
//!   evicted, never arrived, or fails its checksum is [`Lookup::Missing`], not an error.
//! - [`export`]: an episode to MP4/H.264 or WebM/VP9 by piping raw frames to `ffmpeg`, or to an
//!   animated GIF in pure Rust (`gif`) when ffmpeg is absent.
//! - [`codec`]: PNG in and out (`png`).
//!
//! The daemon serves the store over gRPC (`Frames`, in `telemetry-server`); the export runs in
//! `gym-telemetry-daemon export-video`.

pub mod codec;
pub mod export;
pub mod segment;
mod store;

pub use store::{
    AppendReport, EpisodeFrames, ExportRecord, FrameCounters, FrameEntry, FrameStore,
    FrameStoreOptions, Lookup, MissingReason, StoreError, MAX_EVICTED_REMEMBERED,
    MAX_EXPORTS_REMEMBERED, MAX_LIST,
};

use std::{fs, io, os::unix::fs::PermissionsExt, path::Path};

/// The directory of the frame store inside a var dir.
pub fn frames_dir(var_dir: &Path) -> std::path::PathBuf {
    var_dir.join("frames")
}

/// Creates `dir` (and parents) and makes it private (0700).
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Makes a file private (0600).
pub(crate) fn private_file(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}
