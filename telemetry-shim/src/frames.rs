//! [`FrameSender`]: frame capture for workers, beside (never inside) the record path.
//!
//! A frame is large (a 600x400 RGB render is 720 KB raw) and must never slow the training loop
//! or push records out of their queue, so frames have their own everything:
//!
//! - **Capture never blocks.** [`FrameSender::capture`] moves the raw pixels into a bounded
//!   in-memory buffer (`max_raw_bytes`, default 64 MiB) and returns the frame's `frame_ref`
//!   at once. When the buffer is full the policy ([`FrameFullPolicy`], default drop oldest)
//!   drops a frame and counts it (`FrameStats::dropped`).
//! - **Buffers recycled.** A capture copies the pixels into a buffer the sender thread gave back
//!   after encoding an earlier frame ([`FrameSender::take_buffer`]; at most
//!   [`MAX_POOLED_BUFFERS`] buffers and [`MAX_POOLED_BYTES`] kept). A fresh 720 KB allocation per
//!   frame cost the training thread more than the copy itself: glibc serves it from newly
//!   mapped pages (and trims them again when the sender thread frees it), so every capture
//!   paid ~176 page faults and their zeroing, about 1 ms per 600x400 frame.
//! - **Compressed on the sender thread.** The frame sender's own thread encodes each frame as
//!   PNG (8-bit RGB, fast compression: lossless, and what a browser shows directly).
//! - **Their own byte budget, spilling to disk.** Encoded frames wait for the daemon's ack in
//!   memory up to `max_pending_bytes` (32 MiB); beyond that, with a spill directory (by default
//!   `<queue_dir>/frames`), in files (`max_spill_bytes`, 256 MiB; when full the oldest spilled
//!   frame is dropped and counted). Spilled frames survive a restart of the worker and are sent
//!   then. Spill files are not fsynced: frames are for watching and clips, not the record of
//!   truth, and a machine crash may lose the last ones.
//! - **Their own stream.** Frames go to the daemon's `Frames.Publish`, one batch in flight,
//!   each batch kept until its ack. The daemon deduplicates by (run, agent, episode, step), so
//!   a resend after a lost ack is stored once.
//!
//! The `frame_ref` a capture returns (`telemetry_core::frames::frame_ref`) is what the step
//! record of that step carries in `RunStep.frame_ref`.

use crate::{sender::Settings, ConfigError, Mode, ShimConfig};
use prost::Message;
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};
use telemetry_core::{
    frames::{frame_ref, MAX_FRAME_DIM},
    pb::{self, frames_client::FramesClient},
};
use tonic::metadata::{Ascii, MetadataValue};

/// Raw buffers the sender thread keeps for the next captures, at most.
pub const MAX_POOLED_BUFFERS: usize = 4;
/// Bytes of capacity those buffers may hold in all (a larger buffer is freed instead).
pub const MAX_POOLED_BYTES: usize = 16 << 20;

/// What happens to a captured frame when the raw buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrameFullPolicy {
    /// The oldest waiting frame makes room (the default: the newest pixels survive).
    #[default]
    DropOldest,
    /// The new frame is dropped.
    DropNewest,
}

/// Limits of the frame path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameOptions {
    /// Raw frames waiting for compression, in bytes (default 64 MiB).
    pub max_raw_bytes: usize,
    /// The policy when that is full.
    pub full_policy: FrameFullPolicy,
    /// Encoded frames held in memory until acked (default 32 MiB).
    pub max_pending_bytes: usize,
    /// Where encoded frames beyond that wait (default: `<queue_dir>/frames` when the shim
    /// has a queue directory; `None`: the oldest pending frame is dropped instead).
    pub spill_dir: Option<PathBuf>,
    /// Bytes of spill files at most (default 256 MiB); when full, the oldest is dropped.
    pub max_spill_bytes: u64,
    /// Frames per batch (default 16) and bytes per batch (default 4 MiB).
    pub batch_frames: usize,
    /// See `batch_frames`.
    pub batch_bytes: usize,
}

impl Default for FrameOptions {
    fn default() -> Self {
        FrameOptions {
            max_raw_bytes: 64 << 20,
            full_policy: FrameFullPolicy::DropOldest,
            max_pending_bytes: 32 << 20,
            spill_dir: None,
            max_spill_bytes: 256 << 20,
            batch_frames: 16,
            batch_bytes: 4 << 20,
        }
    }
}

impl FrameOptions {
    /// The defaults for a shim configuration (spilling under its queue directory).
    pub fn for_config(config: &ShimConfig) -> FrameOptions {
        FrameOptions {
            spill_dir: config.queue_dir.as_ref().map(|d| d.join("frames")),
            ..FrameOptions::default()
        }
    }
}

/// Why a capture was not accepted (it is counted either way).
#[derive(Debug, thiserror::Error)]
pub enum FrameCaptureError {
    /// The sender was closed.
    #[error("the frame sender is closed")]
    Closed,
    /// The raw buffer was full and the policy dropped this frame.
    #[error("frame buffer full: frame dropped")]
    Full,
    /// The pixels do not match the size, or the size is out of range.
    #[error("frame of {width}x{height} with {len} bytes is not 8-bit RGB of that size (sides 1..={MAX_FRAME_DIM})")]
    BadFrame {
        /// Claimed width.
        width: u32,
        /// Claimed height.
        height: u32,
        /// Bytes given.
        len: usize,
    },
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The sender thread or spill directory could not be set up.
    #[error("frame sender: {0}")]
    Setup(String),
}

/// A snapshot of the frame path's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameStats {
    /// Frames accepted by `capture`.
    pub captured: u64,
    /// Frames dropped by the full policy of the raw buffer, or of the pending/spill budget.
    pub dropped: u64,
    /// Frames refused: at `capture` (bad size), or encoded larger than
    /// `telemetry_core::frames::MAX_FRAME_BYTES`.
    pub refused: u64,
    /// Frames encoded to PNG.
    pub encoded: u64,
    /// Frames whose encoding failed.
    pub encode_errors: u64,
    /// Frames sent (a resend counts again).
    pub sent: u64,
    /// Frames the daemon acked as stored.
    pub stored: u64,
    /// Frames the daemon already had.
    pub duplicates: u64,
    /// Frames the daemon rejected (invalid, wrong run) or could not fit (retention).
    pub rejected: u64,
    /// Frames written to spill files.
    pub spilled: u64,
    /// Raw bytes waiting for compression.
    pub raw_bytes: u64,
    /// Encoded bytes waiting in memory for an ack.
    pub pending_bytes: u64,
    /// Encoded bytes in spill files.
    pub spill_bytes: u64,
    /// Connection attempts after the first.
    pub reconnects: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    captured: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    encoded: AtomicU64,
    encode_errors: AtomicU64,
    sent: AtomicU64,
    stored: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    spilled: AtomicU64,
    pending_bytes: AtomicU64,
    spill_bytes: AtomicU64,
    reconnects: AtomicU64,
    in_flight: AtomicU64,
}

struct Raw {
    /// `rgb` is column major (x the outer axis), transposed on the sender thread.
    columns: bool,
    agent_id: String,
    episode: u64,
    step: u64,
    width: u32,
    height: u32,
    rgb: Vec<u8>,
    fps: f64,
    wall_ns: i64,
}

#[derive(Default)]
struct RawQueue {
    frames: VecDeque<Raw>,
    bytes: usize,
    closed: bool,
}

/// Buffers given back by the sender thread (bounded by `MAX_POOLED_*`).
#[derive(Default)]
struct Pool {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

struct Shared {
    raw: Mutex<RawQueue>,
    pool: Mutex<Pool>,
    wake: tokio::sync::Notify,
    counters: Counters,
    last_error: Mutex<Option<String>>,
    stop_now: AtomicBool,
    max_raw_bytes: usize,
    policy: FrameFullPolicy,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The frame capture of one worker. `Send + Sync`.
pub struct FrameSender {
    shared: Option<Arc<Shared>>,
    thread: Option<std::thread::JoinHandle<()>>,
    run_id: String,
    agent_id: String,
}

impl std::fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSender")
            .field("run_id", &self.run_id)
            .field("enabled", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl FrameSender {
    /// Starts the frame sender of a shim configuration: the same endpoint, credential, run
    /// and agent as its records. A disabled or dry-run configuration captures nothing (every
    /// capture still returns its `frame_ref`).
    pub fn new(config: &ShimConfig, opts: FrameOptions) -> Result<FrameSender, FrameCaptureError> {
        let run_id = config.run_id.clone().unwrap_or_default();
        let agent_id = config.agent_id.clone().unwrap_or_default();
        if config.mode != Mode::Live {
            return Ok(FrameSender {
                shared: None,
                thread: None,
                run_id,
                agent_id,
            });
        }
        let settings = Settings::from_config(config, String::new()).map_err(|e| match e {
            crate::ShimError::Config(c) => FrameCaptureError::Config(c),
            other => FrameCaptureError::Setup(other.to_string()),
        })?;
        let spill = match &opts.spill_dir {
            Some(dir) => Some(Spill::open(dir, opts.max_spill_bytes).map_err(|e| {
                FrameCaptureError::Setup(format!("spill directory {}: {e}", dir.display()))
            })?),
            None => None,
        };
        let shared = Arc::new(Shared {
            raw: Mutex::new(RawQueue::default()),
            pool: Mutex::new(Pool::default()),
            wake: tokio::sync::Notify::new(),
            counters: Counters::default(),
            last_error: Mutex::new(None),
            stop_now: AtomicBool::new(false),
            max_raw_bytes: opts.max_raw_bytes,
            policy: opts.full_policy,
        });
        if let Some(s) = &spill {
            shared.counters.spill_bytes.store(s.bytes, Relaxed);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| FrameCaptureError::Setup(e.to_string()))?;
        let worker = Worker {
            shared: Arc::clone(&shared),
            endpoints: settings.endpoints,
            next_endpoint: std::sync::atomic::AtomicUsize::new(0),
            auth: settings.auth,
            reconnect_initial: settings.reconnect_initial,
            reconnect_max: settings.reconnect_max,
            run_id: run_id.clone(),
            opts,
            pending: VecDeque::new(),
            pending_bytes: 0,
            spill,
            batch_id: 0,
            scratch: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("gym-telemetry-frames".into())
            .spawn(move || runtime.block_on(worker.run()))
            .map_err(|e| FrameCaptureError::Setup(e.to_string()))?;
        Ok(FrameSender {
            shared: Some(shared),
            thread: Some(thread),
            run_id,
            agent_id,
        })
    }

    /// Whether frames are sent anywhere.
    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// The run the frames belong to.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The `frame_ref` of a frame of this run.
    pub fn frame_ref(&self, agent_id: Option<&str>, episode: u64, step: u64) -> String {
        frame_ref(
            &self.run_id,
            agent_id.unwrap_or(&self.agent_id),
            episode,
            step,
        )
    }

    /// An empty buffer with room for `len` bytes, for the pixels of the next [`Self::capture`]:
    /// one the sender thread gave back when there is one (its pages already mapped, so filling
    /// it is a plain copy), else a new one.
    pub fn take_buffer(&self, len: usize) -> Vec<u8> {
        let recycled = self.shared.as_ref().and_then(|s| {
            let mut pool = lock(&s.pool);
            let i = pool.buffers.iter().position(|b| b.capacity() >= len)?;
            let b = pool.buffers.swap_remove(i);
            pool.bytes -= b.capacity();
            Some(b)
        });
        match recycled {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::with_capacity(len),
        }
    }

    /// Captures the frame of `(agent, episode, step)`: `rgb` is `width * height * 3` bytes,
    /// row major (best taken from [`Self::take_buffer`]). Returns its `frame_ref` without waiting for anything; compression and sending
    /// happen on the sender thread. `render_fps` is the env's `metadata["render_fps"]` (0:
    /// unknown).
    #[allow(clippy::too_many_arguments)]
    pub fn capture(
        &self,
        agent_id: Option<&str>,
        episode: u64,
        step: u64,
        width: u32,
        height: u32,
        rgb: Vec<u8>,
        render_fps: f64,
    ) -> Result<String, FrameCaptureError> {
        self.capture_layout(
            agent_id, episode, step, width, height, rgb, render_fps, false,
        )
    }

    /// [`Self::capture`] for pixels stored column by column (`rgb[(x * height + y) * 3]`, what
    /// a transposed numpy view such as pygame's `surfarray` holds): the caller copies the
    /// buffer as it is, and the sender thread transposes it before encoding.
    #[allow(clippy::too_many_arguments)]
    pub fn capture_columns(
        &self,
        agent_id: Option<&str>,
        episode: u64,
        step: u64,
        width: u32,
        height: u32,
        rgb: Vec<u8>,
        render_fps: f64,
    ) -> Result<String, FrameCaptureError> {
        self.capture_layout(
            agent_id, episode, step, width, height, rgb, render_fps, true,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn capture_layout(
        &self,
        agent_id: Option<&str>,
        episode: u64,
        step: u64,
        width: u32,
        height: u32,
        rgb: Vec<u8>,
        render_fps: f64,
        columns: bool,
    ) -> Result<String, FrameCaptureError> {
        let agent = agent_id.unwrap_or(&self.agent_id);
        let fref = frame_ref(&self.run_id, agent, episode, step);
        let Some(shared) = &self.shared else {
            return Ok(fref);
        };
        let c = &shared.counters;
        let ok_size = (1..=MAX_FRAME_DIM).contains(&width)
            && (1..=MAX_FRAME_DIM).contains(&height)
            && rgb.len() as u64 == u64::from(width) * u64::from(height) * 3;
        if !ok_size {
            c.refused.fetch_add(1, Relaxed);
            return Err(FrameCaptureError::BadFrame {
                width,
                height,
                len: rgb.len(),
            });
        }
        let n = rgb.len();
        {
            let mut q = lock(&shared.raw);
            if q.closed {
                return Err(FrameCaptureError::Closed);
            }
            if n > shared.max_raw_bytes {
                c.dropped.fetch_add(1, Relaxed);
                return Err(FrameCaptureError::Full);
            }
            while q.bytes + n > shared.max_raw_bytes {
                match shared.policy {
                    FrameFullPolicy::DropNewest => {
                        c.dropped.fetch_add(1, Relaxed);
                        return Err(FrameCaptureError::Full);
                    }
                    FrameFullPolicy::DropOldest => match q.frames.pop_front() {
                        Some(old) => {
                            q.bytes -= old.rgb.len();
                            c.dropped.fetch_add(1, Relaxed);
                        }
                        None => break,
                    },
                }
            }
            q.bytes += n;
            q.frames.push_back(Raw {
                columns,
                agent_id: agent.to_owned(),
                episode,
                step,
                width,
                height,
                rgb,
                fps: if render_fps.is_finite() && render_fps > 0.0 {
                    render_fps
                } else {
                    0.0
                },
                wall_ns: telemetry_core::timestamp::to_unix_nanos(
                    &telemetry_core::timestamp::now(),
                ),
            });
        }
        c.captured.fetch_add(1, Relaxed);
        shared.wake.notify_one();
        Ok(fref)
    }

    /// The counters now.
    pub fn stats(&self) -> FrameStats {
        let Some(s) = &self.shared else {
            return FrameStats::default();
        };
        let c = &s.counters;
        let raw_bytes = lock(&s.raw).bytes as u64;
        FrameStats {
            captured: c.captured.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            refused: c.refused.load(Relaxed),
            encoded: c.encoded.load(Relaxed),
            encode_errors: c.encode_errors.load(Relaxed),
            sent: c.sent.load(Relaxed),
            stored: c.stored.load(Relaxed),
            duplicates: c.duplicates.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            spilled: c.spilled.load(Relaxed),
            raw_bytes,
            pending_bytes: c.pending_bytes.load(Relaxed),
            spill_bytes: c.spill_bytes.load(Relaxed),
            reconnects: c.reconnects.load(Relaxed),
            last_error: lock(&s.last_error).clone(),
        }
    }

    /// Waits (at most `timeout`) until every captured frame is acked or dropped. Returns
    /// whether it got there.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(s) = &self.shared else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        loop {
            let idle = {
                let q = lock(&s.raw);
                q.frames.is_empty()
                    && s.counters.pending_bytes.load(Relaxed) == 0
                    && s.counters.spill_bytes.load(Relaxed) == 0
                    && s.counters.in_flight.load(Relaxed) == 0
            };
            if idle {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            s.wake.notify_one();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Flushes (at most `timeout`), then stops the sender thread. Frames not yet acked stay in
    /// the spill directory when there is one (sent by the next sender on it).
    pub fn close(mut self, timeout: Duration) -> FrameStats {
        let done = self.flush(timeout);
        self.stop(!done);
        self.stats()
    }

    fn stop(&mut self, now: bool) {
        if let Some(s) = &self.shared {
            lock(&s.raw).closed = true;
            if now {
                s.stop_now.store(true, Relaxed);
            }
            s.wake.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FrameSender {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let done = self.flush(Duration::from_secs(2));
            self.stop(!done);
        }
    }
}

/// Encoded frames in files, one per frame: `crc32c (u32 LE) | pb::Frame`.
struct Spill {
    dir: PathBuf,
    files: VecDeque<(u64, u64)>,
    bytes: u64,
    max_bytes: u64,
    next: u64,
}

impl Spill {
    fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Spill> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".frame"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            files.push((seq, e.metadata()?.len()));
        }
        files.sort_unstable();
        let bytes = files.iter().map(|f| f.1).sum();
        let next = files.last().map_or(1, |f| f.0 + 1);
        Ok(Spill {
            dir: dir.to_owned(),
            files: files.into(),
            bytes,
            max_bytes,
            next,
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.frame"))
    }

    /// Writes a frame; drops the oldest files to stay in budget. Returns frames dropped.
    fn push(&mut self, frame: &pb::Frame) -> std::io::Result<u64> {
        use std::os::unix::fs::OpenOptionsExt;
        let body = frame.encode_to_vec();
        let mut data = crc32c::crc32c(&body).to_le_bytes().to_vec();
        data.extend_from_slice(&body);
        let mut dropped = 0;
        while self.bytes + data.len() as u64 > self.max_bytes {
            let Some((seq, len)) = self.files.pop_front() else {
                return Ok(1); // larger than the whole budget: the frame itself is dropped
            };
            let _ = std::fs::remove_file(self.path(seq));
            self.bytes -= len;
            dropped += 1;
        }
        let seq = self.next;
        self.next += 1;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.path(seq))?;
        std::io::Write::write_all(&mut f, &data)?;
        self.files.push_back((seq, data.len() as u64));
        self.bytes += data.len() as u64;
        Ok(dropped)
    }

    /// Reads the oldest spilled frame (dropping unreadable files), without removing it.
    fn peek(&mut self) -> Option<(u64, pb::Frame)> {
        while let Some(&(seq, len)) = self.files.front() {
            let read = std::fs::read(self.path(seq)).ok().and_then(|d| {
                if d.len() < 4 {
                    return None;
                }
                let crc = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
                (crc32c::crc32c(&d[4..]) == crc)
                    .then(|| pb::Frame::decode(&d[4..]).ok())
                    .flatten()
            });
            match read {
                Some(f) => return Some((seq, f)),
                None => {
                    tracing::warn!(seq, "dropping an unreadable spilled frame");
                    let _ = std::fs::remove_file(self.path(seq));
                    self.files.pop_front();
                    self.bytes -= len;
                }
            }
        }
        None
    }

    fn remove(&mut self, seq: u64) {
        if let Some(i) = self.files.iter().position(|f| f.0 == seq) {
            if let Some((_, len)) = self.files.remove(i) {
                self.bytes -= len;
            }
            let _ = std::fs::remove_file(self.path(seq));
        }
    }
}

/// Where a frame of a batch came from, so its ack can release it.
enum Origin {
    Memory,
    Spill(u64),
}

struct Worker {
    shared: Arc<Shared>,
    /// The daemons of the record shim's endpoint list (never empty); a failed connection
    /// moves to the next, as the record sender fails over.
    endpoints: Vec<tonic::transport::Endpoint>,
    next_endpoint: std::sync::atomic::AtomicUsize,
    auth: Option<MetadataValue<Ascii>>,
    reconnect_initial: Duration,
    reconnect_max: Duration,
    run_id: String,
    opts: FrameOptions,
    pending: VecDeque<(pb::Frame, usize)>,
    pending_bytes: usize,
    spill: Option<Spill>,
    batch_id: u64,
    /// The row-major copy of a column-major frame, reused frame after frame.
    scratch: Vec<u8>,
}

type Link = (
    tokio::sync::mpsc::Sender<pb::FrameBatch>,
    tonic::Streaming<pb::FrameAck>,
);

impl Worker {
    fn error(&self, e: impl std::fmt::Display) {
        let msg = e.to_string();
        tracing::debug!(error = %msg, "frame sender");
        *lock(&self.shared.last_error) = Some(msg);
    }

    /// Encodes every waiting raw frame into the pending queue (spilling over its budget).
    fn encode_waiting(&mut self) {
        loop {
            let raw = {
                let mut q = lock(&self.shared.raw);
                let r = q.frames.pop_front();
                if let Some(r) = &r {
                    q.bytes -= r.rgb.len();
                }
                r
            };
            let Some(raw) = raw else { return };
            let c = &self.shared.counters;
            let mut rows = std::mem::take(&mut self.scratch);
            let pixels = if raw.columns {
                transpose_into(raw.width as usize, raw.height as usize, &raw.rgb, &mut rows);
                &rows
            } else {
                &raw.rgb
            };
            let encoded = encode_png(raw.width, raw.height, pixels);
            self.scratch = rows;
            self.give_back(raw.rgb);
            let data = match encoded {
                Ok(d) => d,
                Err(e) => {
                    c.encode_errors.fetch_add(1, Relaxed);
                    self.error(format!("encoding a frame: {e}"));
                    continue;
                }
            };
            c.encoded.fetch_add(1, Relaxed);
            if data.len() > telemetry_core::frames::MAX_FRAME_BYTES {
                // The daemon would refuse it, and a message over its limit ends the stream.
                c.refused.fetch_add(1, Relaxed);
                self.error(format!(
                    "a frame of {} bytes encoded is over the limit",
                    data.len()
                ));
                continue;
            }
            let frame = pb::Frame {
                run_id: self.run_id.clone(),
                agent_id: raw.agent_id,
                episode_index: raw.episode,
                step_index: raw.step,
                width: raw.width,
                height: raw.height,
                encoding: pb::FrameEncoding::Png as i32,
                data,
                render_fps: raw.fps,
                wall_time_unix_ns: raw.wall_ns,
            };
            self.hold(frame);
        }
    }

    /// Keeps a raw buffer for a later capture (within the pool's bounds), else frees it.
    fn give_back(&self, buf: Vec<u8>) {
        let mut pool = lock(&self.shared.pool);
        if pool.buffers.len() < MAX_POOLED_BUFFERS
            && pool.bytes + buf.capacity() <= MAX_POOLED_BYTES.min(self.shared.max_raw_bytes)
        {
            pool.bytes += buf.capacity();
            pool.buffers.push(buf);
        }
    }

    fn hold(&mut self, frame: pb::Frame) {
        let c = &self.shared.counters;
        let n = frame.encoded_len();
        if self.pending_bytes + n <= self.opts.max_pending_bytes {
            self.pending_bytes += n;
            self.pending.push_back((frame, n));
        } else if let Some(spill) = &mut self.spill {
            let failed = match spill.push(&frame) {
                Ok(dropped) => {
                    c.spilled.fetch_add(1, Relaxed);
                    c.dropped.fetch_add(dropped, Relaxed);
                    None
                }
                Err(e) => {
                    c.dropped.fetch_add(1, Relaxed);
                    Some(format!("spilling a frame: {e}"))
                }
            };
            c.spill_bytes.store(spill.bytes, Relaxed);
            if let Some(e) = failed {
                self.error(e);
            }
        } else {
            // No spill directory: the oldest pending frames make room.
            while self.pending_bytes + n > self.opts.max_pending_bytes {
                let Some((_, m)) = self.pending.pop_front() else {
                    break;
                };
                self.pending_bytes -= m;
                c.dropped.fetch_add(1, Relaxed);
            }
            self.pending_bytes += n;
            self.pending.push_back((frame, n));
        }
        c.pending_bytes.store(self.pending_bytes as u64, Relaxed);
    }

    /// The next batch: pending frames first, then spilled ones.
    fn next_batch(&mut self) -> (Vec<pb::Frame>, Vec<Origin>) {
        let mut frames = Vec::new();
        let mut origins = Vec::new();
        let mut bytes = 0;
        for (f, n) in &self.pending {
            if frames.len() >= self.opts.batch_frames
                || (!frames.is_empty() && bytes + n > self.opts.batch_bytes)
            {
                return (frames, origins);
            }
            bytes += n;
            frames.push(f.clone());
            origins.push(Origin::Memory);
        }
        if frames.is_empty() {
            if let Some(spill) = &mut self.spill {
                if let Some((seq, f)) = spill.peek() {
                    frames.push(f);
                    origins.push(Origin::Spill(seq));
                }
                self.shared.counters.spill_bytes.store(spill.bytes, Relaxed);
            }
        }
        (frames, origins)
    }

    fn release(&mut self, origins: &[Origin]) {
        for o in origins {
            match o {
                Origin::Memory => {
                    if let Some((_, n)) = self.pending.pop_front() {
                        self.pending_bytes -= n;
                    }
                }
                Origin::Spill(seq) => {
                    if let Some(s) = &mut self.spill {
                        s.remove(*seq);
                    }
                }
            }
        }
        let c = &self.shared.counters;
        c.pending_bytes.store(self.pending_bytes as u64, Relaxed);
        if let Some(s) = &self.spill {
            c.spill_bytes.store(s.bytes, Relaxed);
        }
    }

    async fn connect(&self) -> Result<Link, String> {
        let i = self.next_endpoint.load(Relaxed) % self.endpoints.len().max(1);
        let endpoint = self.endpoints.get(i).ok_or("no endpoint")?;
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                self.next_endpoint.store(i + 1, Relaxed);
                return Err(e.to_string());
            }
        };
        let mut client = FramesClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let found;
        let auth = match &self.auth {
            Some(a) => Some(a),
            None => {
                found = telemetry_core::credentials::discover_from_env()
                    .ok()
                    .flatten()
                    .and_then(|d| MetadataValue::try_from(format!("Bearer {}", d.token)).ok());
                found.as_ref()
            }
        };
        if let Some(a) = auth {
            request.metadata_mut().insert("authorization", a.clone());
        }
        let acks = client
            .publish(request)
            .await
            .map_err(|s| format!("Frames.Publish: {}", s.message()))?
            .into_inner();
        Ok((tx, acks))
    }

    async fn run(mut self) {
        let mut link: Option<Link> = None;
        let mut backoff = self.reconnect_initial;
        let mut retry_at: Option<tokio::time::Instant> = None;
        let mut ever = false;
        loop {
            self.encode_waiting();
            let closed = lock(&self.shared.raw).closed;
            if self.shared.stop_now.load(Relaxed) {
                return;
            }
            let (frames, origins) = self.next_batch();
            if frames.is_empty() {
                if closed {
                    return;
                }
                self.shared.wake.notified().await;
                continue;
            }
            if link.is_none() {
                if let Some(at) = retry_at {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.shared.wake.notified() => { continue; }
                    }
                }
                if ever {
                    self.shared.counters.reconnects.fetch_add(1, Relaxed);
                }
                ever = true;
                match self.connect().await {
                    Ok(l) => {
                        link = Some(l);
                        backoff = self.reconnect_initial;
                        retry_at = None;
                    }
                    Err(e) => {
                        self.error(e);
                        retry_at = Some(tokio::time::Instant::now() + backoff);
                        backoff = (backoff * 2).min(self.reconnect_max);
                        continue;
                    }
                }
            }
            let Some((tx, acks)) = &mut link else {
                continue;
            };
            self.batch_id += 1;
            let n = frames.len() as u64;
            let c = &self.shared.counters;
            c.in_flight.store(n, Relaxed);
            c.sent.fetch_add(n, Relaxed);
            let batch = pb::FrameBatch {
                batch_id: self.batch_id,
                frames,
            };
            let outcome = if tx.send(batch).await.is_err() {
                Err("the frame stream closed".to_owned())
            } else {
                match tokio::time::timeout(Duration::from_secs(30), acks.message()).await {
                    Ok(Ok(Some(ack))) if ack.batch_id == self.batch_id => Ok(ack),
                    Ok(Ok(Some(_))) => Err("frame ack out of order".to_owned()),
                    Ok(Ok(None)) => Err("the frame stream ended".to_owned()),
                    Ok(Err(s)) => Err(format!("Frames.Publish: {}", s.message())),
                    Err(_) => Err("no frame ack within 30 s".to_owned()),
                }
            };
            c.in_flight.store(0, Relaxed);
            match outcome {
                Ok(ack) => {
                    c.stored.fetch_add(u64::from(ack.stored), Relaxed);
                    c.duplicates.fetch_add(u64::from(ack.duplicates), Relaxed);
                    c.rejected.fetch_add(
                        u64::from(ack.over_limit) + ack.rejected.len() as u64,
                        Relaxed,
                    );
                    if let Some(r) = ack.rejected.first() {
                        self.error(format!("the daemon rejected a frame: {}", r.reason));
                    }
                    self.release(&origins);
                }
                Err(e) => {
                    self.error(e);
                    link = None;
                    retry_at = Some(tokio::time::Instant::now() + backoff);
                }
            }
        }
    }
}

/// Column-major RGB (`width` columns of `height` pixels) to row-major.
#[cfg(test)]
fn transpose(width: usize, height: usize, cols: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    transpose_into(width, height, cols, &mut out);
    out
}

/// Column-major RGB to row-major into `out` (resized to fit, its allocation reused).
fn transpose_into(width: usize, height: usize, cols: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.resize(cols.len(), 0);
    for (x, col) in cols.chunks_exact(height * 3).enumerate() {
        for (y, px) in col.chunks_exact(3).enumerate() {
            let k = (y * width + x) * 3;
            out[k..k + 3].copy_from_slice(px);
        }
    }
}

/// 8-bit RGB PNG with fast compression.
fn encode_png(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::with_capacity(rgb.len() / 4);
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header()?;
        w.write_image_data(rgb)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{transpose, FrameOptions, FrameSender, MAX_POOLED_BUFFERS};
    use crate::ShimConfig;
    use std::time::{Duration, Instant};

    /// A sender whose daemon is never there: frames are encoded, then wait.
    fn offline_sender(max_raw_bytes: usize) -> FrameSender {
        let config = ShimConfig {
            endpoint: "http://127.0.0.1:1".into(),
            run_id: Some("r".into()),
            agent_id: Some("a".into()),
            reconnect_initial: Duration::from_secs(60),
            reconnect_max: Duration::from_secs(60),
            ..ShimConfig::default()
        };
        FrameSender::new(
            &config,
            FrameOptions {
                max_raw_bytes,
                ..FrameOptions::default()
            },
        )
        .expect("sender")
    }

    fn wait_encoded(s: &FrameSender, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while s.stats().encoded < n {
            assert!(Instant::now() < deadline, "not encoded: {:?}", s.stats());
            std::thread::yield_now();
        }
    }

    #[test]
    fn encoded_frames_give_their_buffers_back_for_the_next_capture() {
        let (w, h) = (40u32, 30u32);
        let len = (w * h * 3) as usize;
        let s = offline_sender(64 << 20);
        let mut first = s.take_buffer(len);
        first.resize(len, 7);
        let ptr = first.as_ptr();
        s.capture(None, 0, 0, w, h, first, 0.0).expect("captured");
        wait_encoded(&s, 1);
        // The same allocation comes back, empty, with room for a frame.
        let again = s.take_buffer(len);
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty() && again.capacity() >= len);
        // With none given back, a new one.
        let other = s.take_buffer(len);
        assert_ne!(other.as_ptr(), ptr);

        // The pool keeps at most MAX_POOLED_BUFFERS buffers.
        let n = MAX_POOLED_BUFFERS as u64 + 3;
        for i in 0..n {
            s.capture(None, 1, i, w, h, vec![1; len], 0.0)
                .expect("captured");
        }
        wait_encoded(&s, 1 + n);
        let pooled = s
            .shared
            .as_ref()
            .expect("live")
            .pool
            .lock()
            .expect("pool")
            .buffers
            .len();
        assert_eq!(pooled, MAX_POOLED_BUFFERS);
    }

    #[test]
    fn the_pool_keeps_no_more_bytes_than_the_raw_budget() {
        let (w, h) = (40u32, 30u32);
        let len = (w * h * 3) as usize;
        // Room for two raw frames: a third buffer is freed, not pooled.
        let s = offline_sender(2 * len + 1);
        for i in 0..3 {
            s.capture(None, 0, i, w, h, vec![2; len], 0.0)
                .expect("captured");
            wait_encoded(&s, i + 1);
        }
        let pool = s
            .shared
            .as_ref()
            .expect("live")
            .pool
            .lock()
            .expect("pool")
            .bytes;
        assert!(pool <= 2 * len + 1, "{pool} bytes pooled");
        assert!(pool >= len, "nothing pooled");
    }

    #[test]
    fn column_major_pixels_are_transposed_to_rows() {
        // 3 wide, 2 high; pixel (x, y) has value 10 * x + y in every channel.
        let cols: Vec<u8> = (0..3u8)
            .flat_map(|x| (0..2u8).flat_map(move |y| [10 * x + y; 3]))
            .collect();
        let rows = transpose(3, 2, &cols);
        let want: Vec<u8> = (0..2u8)
            .flat_map(|y| (0..3u8).flat_map(move |x| [10 * x + y; 3]))
            .collect();
        assert_eq!(rows, want);
    }
}
