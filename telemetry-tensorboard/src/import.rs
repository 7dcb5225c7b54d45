//! Event files → scalars → the daemon: one pass over a directory, or a follow loop that tails it
//! while a run writes, resuming where an earlier import stopped.
//!
//! Identity (why a rerun stores nothing twice): every event file is its own producer, with
//!
//! - `producer_id = "tb." + hex(SHA-256(run id, 0, path of the file relative to DIR))[..32]`
//!   ([`producer_id_for`]): the same file of the same run always gets the same id, on any
//!   machine and in any process;
//! - `producer_seq = frame offset + 1 + the value's index among the scalars of its event`
//!   ([`producer_seq_for`]): strictly increasing in file order (an event's values are fewer than
//!   its bytes, so they never reach the next frame's offset), and the same on every read.
//!
//! The daemon's exactly-once rule (a record at or below its producer's durable watermark is a
//! duplicate) then makes resending any part of a file harmless. To resume, the importer sends a
//! file's first scalar again, on its own: the ack carries that producer's durable watermark `W`,
//! and every scalar with `seq <= W` is skipped locally (not sent). Records the daemon rejects
//! (a tag over 256 bytes, a negative step) are counted by reason; their seqs still advance the
//! watermark, so they are not retried.

use std::{
    collections::BTreeMap,
    future::Future,
    io::{Seek, SeekFrom},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use telemetry_core::pb::{ingest_client::IngestClient, IngestAck, IngestBatch, Record, Scalar};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Channel, ClientTlsConfig, Endpoint},
    Code,
};

use crate::tfevents::{decode_event, FrameReader, Next, ScalarDecoder};

/// The daemon's default endpoint (what `gym-telemetry-daemon serve` listens on).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50151";
/// Default scalars per `PublishBatch` (the server takes up to 16 384 records per batch).
pub const DEFAULT_BATCH_RECORDS: usize = 512;
/// Largest batch accepted in [`ImportConfig::batch_records`].
pub const MAX_BATCH_RECORDS: usize = 4096;
/// Event files tracked at most; more are ignored with a warning.
pub const MAX_FILES: usize = 100_000;
/// Directory levels below DIR searched at most.
pub const MAX_DEPTH: usize = 32;
/// Largest CA file read.
const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;
/// Attempts of one batch on a retryable status (UNAVAILABLE, ...), with doubling pauses.
const PUBLISH_ATTEMPTS: u32 = 6;
/// Individual rejections logged at `warn` before only the counts go on.
const REJECTIONS_LOGGED: u64 = 10;

/// What to import, where to, and how.
#[derive(Debug, Clone)]
pub struct ImportConfig {
    /// `http://host:port` (or `https://`) of the daemon.
    pub endpoint: String,
    /// The run the scalars are stored in.
    pub run_id: String,
    /// The agent the scalars belong to (empty: the run as a whole).
    pub agent_id: String,
    /// The directory searched (recursively) for `events.out.tfevents.*` files.
    pub dir: PathBuf,
    /// Sent as `authorization: Bearer <token>` (`None`: no credential). Never logged.
    pub auth_token: Option<String>,
    /// With `https://`: a PEM CA file to trust (default: Mozilla's roots).
    pub tls_ca_file: Option<PathBuf>,
    /// With `https://`: the name to check the certificate against.
    pub tls_domain: Option<String>,
    /// Scalars per batch (1..=[`MAX_BATCH_RECORDS`]).
    pub batch_records: usize,
    /// Follow mode: pause between passes.
    pub poll_interval: Duration,
    /// Follow mode: stop after this long without a new event.
    pub idle_exit: Option<Duration>,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
}

impl ImportConfig {
    /// A configuration importing `dir` into `run_id` at [`DEFAULT_ENDPOINT`], no credential.
    pub fn new(run_id: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        ImportConfig {
            endpoint: DEFAULT_ENDPOINT.into(),
            run_id: run_id.into(),
            agent_id: String::new(),
            dir: dir.into(),
            auth_token: None,
            tls_ca_file: None,
            tls_domain: None,
            batch_records: DEFAULT_BATCH_RECORDS,
            poll_interval: Duration::from_secs(1),
            idle_exit: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A setting cannot be used.
    #[error("{field}: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// DIR cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The daemon refused or could not be reached (after the retries).
    #[error("publishing to {endpoint}: {status}")]
    Publish {
        /// The endpoint.
        endpoint: String,
        /// The last status.
        status: Box<tonic::Status>,
    },
}

/// What an import did, cumulative over its passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Event files found.
    pub files: u64,
    /// Frames read (every event, scalar or not).
    pub events: u64,
    /// Scalar values read, including those already stored by an earlier import.
    pub scalars_read: u64,
    /// Scalars skipped because the daemon's watermark already covered them.
    pub already_stored: u64,
    /// Scalars sent.
    pub sent: u64,
    /// Scalars the daemon stored.
    pub stored: u64,
    /// Scalars the daemon already had (a resend).
    pub duplicates: u64,
    /// Scalars the daemon rejected (see `rejected_reasons`).
    pub rejected: u64,
    /// Rejections by reason.
    pub rejected_reasons: BTreeMap<String, u64>,
    /// Summary values that are not scalars (images, histograms, text...).
    pub not_scalars: u64,
    /// Frames whose data is not an `Event` (skipped one by one).
    pub undecodable_events: u64,
    /// Files whose rest was skipped: a CRC mismatch, an absurd length, a shrunk file, a
    /// producer the daemon refused.
    pub failed_files: u64,
    /// Files that end, for now, inside a frame (still being written).
    pub torn_tails: u64,
    /// Batches sent.
    pub batches: u64,
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "files={} events={} scalars={} stored={} duplicates={} already_stored={} \
             rejected={} not_scalars={} undecodable_events={} failed_files={} torn_tails={}",
            self.files,
            self.events,
            self.scalars_read,
            self.stored,
            self.duplicates,
            self.already_stored,
            self.rejected,
            self.not_scalars,
            self.undecodable_events,
            self.failed_files,
            self.torn_tails,
        )?;
        for (reason, n) in &self.rejected_reasons {
            write!(f, "\n  rejected {n}: {reason}")?;
        }
        Ok(())
    }
}

/// The producer id of the file at `rel_path` (relative to DIR) in `run_id`.
pub fn producer_id_for(run_id: &str, rel_path: &Path) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(run_id.as_bytes());
    ctx.update(&[0]);
    ctx.update(rel_path_bytes(rel_path).as_slice());
    let digest = ctx.finish();
    let mut id = String::from("tb.");
    for b in &digest.as_ref()[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// The producer seq of the `index`-th scalar of the event whose frame starts at `offset`.
pub fn producer_seq_for(offset: u64, index: u32) -> u64 {
    offset.saturating_add(1).saturating_add(u64::from(index))
}

/// The relative path as bytes with `/` separators (the same on every Unix machine).
fn rel_path_bytes(rel: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in rel.components().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        #[cfg(unix)]
        out.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(c.as_os_str()));
        #[cfg(not(unix))]
        out.extend_from_slice(c.as_os_str().to_string_lossy().as_bytes());
    }
    out
}

/// The tag a scalar is stored under: its file's directory (relative to DIR) is a prefix, the
/// way TensorBoard shows each subdirectory as a run of its own.
///
/// - A file directly in DIR: the tag as written.
/// - `add_scalars(main, {key: v})` files: tensorboardX writes them under `main/key/` with tag
///   `main`, `torch.utils.tensorboard` under `main_key/` (slashes of `main` made `_`), also
///   with tag `main`. Both become `main/key` (the group `main`, one series per key), below
///   any further directory.
/// - Any other subdirectory `sub/`: `sub/tag`.
pub fn import_tag(rel_dir: &[String], tag: &str) -> String {
    let Some((last, parents)) = rel_dir.split_last() else {
        return tag.to_owned();
    };
    let tag_parts: Vec<&str> = tag.split('/').collect();
    if parents.len() >= tag_parts.len()
        && parents[parents.len() - tag_parts.len()..]
            .iter()
            .zip(&tag_parts)
            .all(|(a, b)| a == b)
    {
        return rel_dir.join("/");
    }
    let flat = format!("{}_", tag.replace('/', "_"));
    if let Some(key) = last.strip_prefix(&flat).filter(|k| !k.is_empty()) {
        let mut out = parents.join("/");
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(tag);
        out.push('/');
        out.push_str(key);
        return out;
    }
    format!("{}/{tag}", rel_dir.join("/"))
}

/// Adds `authorization: Bearer <token>` to every request when a token is configured.
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.0 {
            r.metadata_mut().insert("authorization", h.clone());
        }
        Ok(r)
    }
}

/// Where one file stands.
#[derive(Debug)]
struct FileState {
    /// Relative path, for messages and the producer id.
    rel: String,
    /// Directory components relative to DIR (the tag prefix).
    rel_dir: Vec<String>,
    producer_id: String,
    /// Offset of the next frame to read.
    offset: u64,
    /// The daemon's durable watermark of this producer, once asked.
    watermark: Option<u64>,
    decoder: ScalarDecoder,
    not_scalars_counted: u64,
    /// Set when the rest of the file is skipped.
    failed: bool,
    torn: bool,
}

/// One read of a file: the scalars of whole frames from `start`.
struct Chunk {
    start: u64,
    scalars: Vec<Scalar>,
    frames: u64,
    undecodable: u64,
}

/// Imports one directory into one run. Keep it across passes (follow mode): it remembers each
/// file's offset and watermark.
pub struct Importer {
    cfg: ImportConfig,
    client: IngestClient<InterceptedService<Channel, Bearer>>,
    files: BTreeMap<PathBuf, FileState>,
    report: ImportReport,
    next_batch_id: u64,
    too_many_files_warned: bool,
}

impl Importer {
    /// Checks `cfg` and prepares a lazily connected channel (nothing is sent yet; a daemon
    /// that is not up yet is retried at the first batch). Call it inside a tokio runtime.
    pub fn new(cfg: ImportConfig) -> Result<Importer, ImportError> {
        telemetry_core::check_run_id(&cfg.run_id).map_err(|e| ImportError::Config {
            field: "run_id",
            reason: e.to_string(),
        })?;
        telemetry_core::ids::check_id_chars("agent_id", &cfg.agent_id).map_err(|e| {
            ImportError::Config {
                field: "agent_id",
                reason: e.to_string(),
            }
        })?;
        if !(1..=MAX_BATCH_RECORDS).contains(&cfg.batch_records) {
            return Err(ImportError::Config {
                field: "batch_records",
                reason: format!("must be 1..={MAX_BATCH_RECORDS}"),
            });
        }
        let bad_endpoint = |reason: String| ImportError::Config {
            field: "endpoint",
            reason,
        };
        let mut endpoint = Endpoint::from_shared(cfg.endpoint.clone())
            .map_err(|e| bad_endpoint(e.to_string()))?
            .connect_timeout(cfg.connect_timeout)
            .tcp_nodelay(true);
        if cfg.endpoint.starts_with("https://") {
            let mut tls = match &cfg.tls_ca_file {
                Some(path) => ClientTlsConfig::new().ca_certificate(read_ca(path)?),
                None => ClientTlsConfig::new().with_webpki_roots(),
            };
            if let Some(d) = &cfg.tls_domain {
                tls = tls.domain_name(d.clone());
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| bad_endpoint(e.to_string()))?;
        }
        if let Some(other) = cfg.auth_token.as_deref().and_then(worker_token_run) {
            // The daemon would reject every scalar as `wrong_run` *and* advance the files'
            // watermarks past them (a sender's own mistake), so a later import with the right
            // credential would find them "stored": refuse before sending anything.
            if other != cfg.run_id {
                return Err(ImportError::Config {
                    field: "auth_token",
                    reason: format!(
                        "a worker credential of run {other:?} may not write run {:?}",
                        cfg.run_id
                    ),
                });
            }
        }
        let header = match cfg.auth_token.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(t) => Some(MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                ImportError::Config {
                    field: "auth_token",
                    reason: "not usable as a header (visible ASCII, no spaces)".into(),
                }
            })?),
        };
        let channel = endpoint.connect_lazy();
        // Scalars are small; the default 4 MiB decoding limit is ample for acks.
        let client = IngestClient::with_interceptor(channel, Bearer(header));
        Ok(Importer {
            cfg,
            client,
            files: BTreeMap::new(),
            report: ImportReport::default(),
            next_batch_id: 1,
            too_many_files_warned: false,
        })
    }

    /// What has been done so far.
    pub fn report(&self) -> &ImportReport {
        &self.report
    }

    /// One pass: finds new files, reads what each file gained since the last pass, publishes
    /// its scalars. Returns the number of frames read (0: nothing new).
    pub async fn pass(&mut self) -> Result<u64, ImportError> {
        self.discover().await?;
        let mut frames = 0;
        let paths: Vec<PathBuf> = self.files.keys().cloned().collect();
        self.report.torn_tails = 0;
        for path in paths {
            frames += self.pass_file(&path).await?;
        }
        self.report.torn_tails = self.files.values().filter(|f| f.torn).count() as u64;
        Ok(frames)
    }

    /// Passes until `stop` resolves, or (with [`ImportConfig::idle_exit`]) no new event came
    /// for that long. Publishing errors that may pass (the daemon restarting) are logged and
    /// retried at the next pass; refusals (credentials) end the loop with an error.
    ///
    /// `stop` is honoured between passes, never inside one: a pass cancelled between a batch's
    /// commit and its ack would leave stored scalars out of the report (the watermark keeps
    /// the next run from storing them twice, but the count would be wrong).
    pub async fn follow(&mut self, stop: impl Future<Output = ()>) -> Result<(), ImportError> {
        tokio::pin!(stop);
        let mut last_activity = Instant::now();
        loop {
            let pass = self.pass().await;
            match pass {
                Ok(0) => {}
                Ok(_) => last_activity = Instant::now(),
                Err(ImportError::Publish { endpoint, status }) if retryable(status.code()) => {
                    tracing::warn!(%endpoint, %status, "daemon unavailable; retrying at the next pass");
                }
                Err(e) => return Err(e),
            }
            if let Some(idle) = self.cfg.idle_exit {
                if last_activity.elapsed() >= idle {
                    tracing::info!(idle_secs = idle.as_secs_f64(), "no new events: exiting");
                    return Ok(());
                }
            }
            tokio::select! {
                biased;
                _ = &mut stop => return Ok(()),
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
            }
        }
    }

    /// Adds the event files under DIR not yet known.
    async fn discover(&mut self) -> Result<(), ImportError> {
        let dir = self.cfg.dir.clone();
        let found = tokio::task::spawn_blocking(move || find_event_files(&dir))
            .await
            .map_err(|e| ImportError::Dir {
                path: self.cfg.dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        for rel in found {
            if self.files.contains_key(&rel) {
                continue;
            }
            if self.files.len() >= MAX_FILES {
                if !self.too_many_files_warned {
                    tracing::warn!(max = MAX_FILES, "too many event files; ignoring the rest");
                    self.too_many_files_warned = true;
                }
                break;
            }
            let rel_dir: Vec<String> = rel
                .parent()
                .map(|p| {
                    p.components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let state = FileState {
                rel: rel.display().to_string(),
                rel_dir,
                producer_id: producer_id_for(&self.cfg.run_id, &rel),
                offset: 0,
                watermark: None,
                decoder: ScalarDecoder::new(),
                not_scalars_counted: 0,
                failed: false,
                torn: false,
            };
            tracing::debug!(file = %state.rel, producer_id = %state.producer_id, "event file found");
            self.report.files += 1;
            self.files.insert(rel, state);
        }
        Ok(())
    }

    /// Reads and publishes what one file gained; returns the frames read.
    async fn pass_file(&mut self, rel: &Path) -> Result<u64, ImportError> {
        let mut frames = 0;
        loop {
            let Some(mut state) = self.files.remove(rel) else {
                return Ok(frames);
            };
            if state.failed {
                self.files.insert(rel.to_owned(), state);
                return Ok(frames);
            }
            let path = self.cfg.dir.join(rel);
            let max = self.cfg.batch_records;
            let (run_id, agent_id) = (self.cfg.run_id.clone(), self.cfg.agent_id.clone());
            let joined = tokio::task::spawn_blocking(move || {
                let chunk = read_chunk(&path, &mut state, max, &run_id, &agent_id);
                (state, chunk)
            })
            .await;
            let Ok((mut state, chunk)) = joined else {
                // The reading thread panicked (it should not): the file stays out of this pass.
                tracing::error!(file = %rel.display(), "reading the file failed unexpectedly");
                return Ok(frames);
            };
            if state.failed {
                // It was not failed before this read (checked above).
                self.report.failed_files += 1;
            }
            let Some(chunk) = chunk else {
                self.files.insert(rel.to_owned(), state);
                return Ok(frames);
            };
            frames += chunk.frames;
            self.report.events += chunk.frames;
            self.report.undecodable_events += chunk.undecodable;

            self.report.scalars_read += chunk.scalars.len() as u64;
            let new_not_scalars = state.decoder.skipped() - state.not_scalars_counted;
            state.not_scalars_counted = state.decoder.skipped();
            self.report.not_scalars += new_not_scalars;
            let more = chunk.frames > 0;
            let outcome = self.publish_chunk(&mut state, chunk.scalars).await;
            if let Err(e) = outcome {
                // Read again from the chunk's start next time (the watermark makes it safe).
                state.offset = chunk.start;
                state.decoder = ScalarDecoder::new();
                state.not_scalars_counted = 0;
                self.files.insert(rel.to_owned(), state);
                return Err(e);
            }
            self.files.insert(rel.to_owned(), state);
            if !more {
                return Ok(frames);
            }
        }
    }

    /// Publishes a chunk's scalars not yet covered by the watermark (asking for it first).
    /// A chunk whose read ended the file (a corrupt frame) is still published.
    async fn publish_chunk(
        &mut self,
        state: &mut FileState,
        mut scalars: Vec<Scalar>,
    ) -> Result<(), ImportError> {
        if scalars.is_empty() {
            return Ok(());
        }
        if state.watermark.is_none() {
            // Resume point: resend the file's first scalar alone; the ack's watermark says how
            // far this producer is stored.
            let first = scalars.remove(0);
            let seq = first.producer_seq;
            if !self.send(state, vec![first]).await? {
                return Ok(());
            }
            let w = state.watermark.unwrap_or(seq);
            if w > seq {
                tracing::info!(file = %state.rel, watermark = w, "resuming after what is stored");
            }
        }
        let w = state.watermark.unwrap_or(0);
        let before = scalars.len();
        scalars.retain(|s| s.producer_seq > w);
        self.report.already_stored += (before - scalars.len()) as u64;
        if !scalars.is_empty() {
            self.send(state, scalars).await?;
        }
        Ok(())
    }

    /// Sends one batch (retrying what may pass) and accounts for its ack. `Ok(false)`: the
    /// daemon refused the file's producer for good (the file is marked failed).
    async fn send(
        &mut self,
        state: &mut FileState,
        scalars: Vec<Scalar>,
    ) -> Result<bool, ImportError> {
        let n = scalars.len() as u64;
        let batch = IngestBatch {
            batch_id: self.next_batch_id,
            records: scalars.into_iter().map(Record::from).collect(),
        };
        self.next_batch_id += 1;
        let ack = match self.publish(batch).await {
            Ok(ack) => ack,
            Err(status) if status.code() == Code::InvalidArgument => {
                // Not retryable for this file (e.g. a seq jump past the daemon's bound).
                tracing::warn!(file = %state.rel, %status, "the daemon refused this file's records; skipping the rest of it");
                self.fail(state);
                return Ok(false);
            }
            Err(status) => {
                return Err(ImportError::Publish {
                    endpoint: self.cfg.endpoint.clone(),
                    status: Box::new(status),
                })
            }
        };
        self.report.batches += 1;
        self.report.sent += n;
        self.report.stored += u64::from(ack.stored);
        self.report.duplicates += u64::from(ack.duplicates);
        for r in &ack.rejected {
            self.report.rejected += 1;
            if self.report.rejected <= REJECTIONS_LOGGED {
                tracing::warn!(file = %state.rel, producer_seq = r.producer_seq, reason = %r.reason, "scalar rejected");
            }
            *self
                .report
                .rejected_reasons
                .entry(rejection_label(&r.reason))
                .or_default() += 1;
        }
        match ack
            .watermarks
            .iter()
            .find(|w| w.producer_id == state.producer_id)
        {
            Some(w) => {
                state.watermark = Some(state.watermark.unwrap_or(0).max(w.durable_seq));
                Ok(true)
            }
            None => {
                // Every record was refused without moving the watermark (a producer id another
                // credential owns): resending cannot help.
                tracing::warn!(file = %state.rel, "the daemon keeps no watermark for this file's producer; skipping the rest of it");
                self.fail(state);
                Ok(false)
            }
        }
    }

    /// Marks a file failed (counted once).
    fn fail(&mut self, state: &mut FileState) {
        if !state.failed {
            state.failed = true;
            self.report.failed_files += 1;
        }
    }

    /// `PublishBatch` with bounded retries of what may pass.
    async fn publish(&mut self, batch: IngestBatch) -> Result<IngestAck, tonic::Status> {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.client.publish_batch(batch.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) if retryable(status.code()) && attempt < PUBLISH_ATTEMPTS => {
                    tracing::debug!(%status, attempt, "publish failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
                Err(status) => return Err(status),
            }
        }
    }
}

/// One pass over `cfg.dir`: imports everything there now and returns what was done.
pub async fn import_once(cfg: ImportConfig) -> Result<ImportReport, ImportError> {
    let mut importer = Importer::new(cfg)?;
    importer.pass().await?;
    Ok(importer.report().clone())
}

/// The run of a worker credential (`worker.<run>.<hex HMAC>`); `None` for other tokens.
fn worker_token_run(token: &str) -> Option<&str> {
    let (run, mac) = token.trim().strip_prefix("worker.")?.rsplit_once('.')?;
    (!run.is_empty() && !mac.is_empty() && mac.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(run)
}

/// Statuses worth another attempt: the daemon restarting, overloaded, or a fenced producer.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::DeadlineExceeded
            | Code::Unknown
    )
}

/// A rejection reason without the values it quotes, so that counts group (`tag ...: reason`).
fn rejection_label(reason: &str) -> String {
    let mut s: String = reason.chars().take(120).collect();
    if s.len() < reason.len() {
        s.push('…');
    }
    s
}

/// Reads a PEM CA file (bounded).
fn read_ca(path: &Path) -> Result<tonic::transport::Certificate, ImportError> {
    use std::io::Read;
    let fail = |reason: String| ImportError::Config {
        field: "tls_ca_file",
        reason: format!("{}: {reason}", path.display()),
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut pem = Vec::new();
    file.take(MAX_CA_FILE_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(|e| fail(e.to_string()))?;
    if pem.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(fail("larger than 1 MiB; not a CA file".into()));
    }
    Ok(tonic::transport::Certificate::from_pem(pem))
}

/// Whether a file name is an event file's (TensorBoard's `events.out.tfevents.*`).
pub fn is_event_file(name: &str) -> bool {
    name.starts_with("events.out.tfevents.")
}

/// Event files under `dir` (paths relative to it), sorted. Symlinked files are followed,
/// symlinked directories are not (no cycles); at most [`MAX_DEPTH`] levels.
fn find_event_files(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let mut out = Vec::new();
    let mut stack = vec![(PathBuf::new(), 0usize)];
    while let Some((rel, depth)) = stack.pop() {
        let abs = dir.join(&rel);
        let entries = match std::fs::read_dir(&abs) {
            Ok(e) => e,
            Err(source) if rel.as_os_str().is_empty() => {
                return Err(ImportError::Dir { path: abs, source })
            }
            Err(e) => {
                tracing::warn!(dir = %abs.display(), error = %e, "cannot read a subdirectory");
                continue;
            }
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            let child = rel.join(entry.file_name());
            if ft.is_dir() {
                if depth < MAX_DEPTH {
                    stack.push((child, depth + 1));
                }
                continue;
            }
            let is_file = ft.is_file()
                || (ft.is_symlink() && entry.path().metadata().is_ok_and(|m| m.is_file()));
            if is_file && is_event_file(&entry.file_name().to_string_lossy()) {
                out.push(child);
                if out.len() > MAX_FILES {
                    break;
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads whole frames of `path` from `state.offset` until `max` scalars (or the end, a torn
/// tail, an error). `None`: nothing to read now (no new bytes, or the file is unreadable).
fn read_chunk(
    path: &Path,
    state: &mut FileState,
    max: usize,
    run_id: &str,
    agent_id: &str,
) -> Option<Chunk> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(file = %state.rel, error = %e, "cannot open the event file");
            return None;
        }
    };
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => {
            tracing::warn!(file = %state.rel, error = %e, "cannot stat the event file");
            return None;
        }
    };
    if len < state.offset {
        tracing::warn!(file = %state.rel, len, offset = state.offset, "the event file shrank; skipping it");
        state.failed = true;
        return None;
    }
    if len == state.offset {
        return None;
    }
    if let Err(e) = file.seek(SeekFrom::Start(state.offset)) {
        tracing::warn!(file = %state.rel, error = %e, "cannot seek in the event file");
        return None;
    }
    let start = state.offset;
    let mut reader = FrameReader::new(std::io::BufReader::new(file), start);
    let mut chunk = Chunk {
        start,
        scalars: Vec::new(),
        frames: 0,
        undecodable: 0,
    };
    state.torn = false;
    while chunk.scalars.len() < max {
        match reader.next_frame() {
            Ok(Next::Frame(frame)) => {
                chunk.frames += 1;
                match decode_event(&frame.data) {
                    Ok(event) => {
                        let timestamp = wall_timestamp(event.wall_time);
                        for s in state.decoder.scalars(&event) {
                            chunk.scalars.push(Scalar {
                                run_id: run_id.to_owned(),
                                agent_id: agent_id.to_owned(),
                                tag: import_tag(&state.rel_dir, &s.tag),
                                value: s.value,
                                step: event.step,
                                timestamp,
                                producer_id: state.producer_id.clone(),
                                producer_seq: producer_seq_for(frame.offset, s.index),
                                seq_id: 0,
                            });
                        }
                    }
                    Err(e) => {
                        tracing::debug!(file = %state.rel, offset = frame.offset, error = %e, "undecodable event skipped");
                        chunk.undecodable += 1;
                    }
                }
                state.offset = frame.end();
            }
            Ok(Next::End) => break,
            Ok(Next::Torn { offset, have }) => {
                tracing::debug!(file = %state.rel, offset, have, "torn tail: the writer is not done with this record");
                state.torn = true;
                break;
            }
            Err(e) => {
                tracing::warn!(file = %state.rel, error = %e, "skipping the rest of the event file");
                state.failed = true;
                break;
            }
        }
    }
    Some(chunk)
}

/// A wall time in seconds as a timestamp (`None` when absent or not finite).
fn wall_timestamp(wall: f64) -> Option<prost_types::Timestamp> {
    if !wall.is_finite() || wall <= 0.0 {
        return None;
    }
    let nanos = (wall * 1e9) as i64;
    Some(telemetry_core::timestamp::from_unix_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn tags_take_their_directory_as_a_prefix() {
        assert_eq!(import_tag(&[], "loss"), "loss");
        assert_eq!(import_tag(&dir(&["eval"]), "loss"), "eval/loss");
        // tensorboardX add_scalars("reward", {"train": ..}) -> reward/train/, tag "reward".
        assert_eq!(
            import_tag(&dir(&["reward", "train"]), "reward"),
            "reward/train"
        );
        assert_eq!(
            import_tag(&dir(&["a", "charts", "ret", "eval"]), "charts/ret"),
            "a/charts/ret/eval"
        );
        // torch.utils.tensorboard add_scalars("charts/ret", {"eval": ..}) -> charts_ret_eval/.
        assert_eq!(
            import_tag(&dir(&["charts_ret_eval"]), "charts/ret"),
            "charts/ret/eval"
        );
        assert_eq!(
            import_tag(&dir(&["seed1", "loss_train"]), "loss"),
            "seed1/loss/train"
        );
        // A directory that merely shares a name is a plain prefix.
        assert_eq!(import_tag(&dir(&["loss"]), "loss"), "loss/loss");
        assert_eq!(import_tag(&dir(&["loss_"]), "loss"), "loss_/loss");
    }

    #[test]
    fn producer_ids_are_stable_and_distinct() {
        let a = producer_id_for("run-1", Path::new("reward/train/events.out.tfevents.1"));
        assert_eq!(
            a,
            producer_id_for("run-1", Path::new("reward/train/events.out.tfevents.1"))
        );
        assert_ne!(
            a,
            producer_id_for("run-2", Path::new("reward/train/events.out.tfevents.1"))
        );
        assert_ne!(
            a,
            producer_id_for("run-1", Path::new("reward/eval/events.out.tfevents.1"))
        );
        assert!(a.starts_with("tb.") && a.len() == 35, "{a}");
        assert!(a.len() <= telemetry_core::MAX_ID_LEN);
        // Pinned: another build (or a rewrite) must find the same producers, or a rerun would
        // store everything again. SHA-256("r" 0x00 "sub/events.out.tfevents.x"), 16 bytes.
        assert_eq!(
            producer_id_for("r", Path::new("sub/events.out.tfevents.x")),
            "tb.1cbbbe8cb69522b4cc208d26a374cbdc"
        );
    }

    #[test]
    fn seqs_increase_across_values_and_frames() {
        assert!(producer_seq_for(0, 0) >= 1);
        assert!(producer_seq_for(40, 1) > producer_seq_for(40, 0));
        // An event of n values has a frame of more than n bytes.
        assert!(producer_seq_for(40, 3) < producer_seq_for(40 + 16 + 4, 0));
    }

    #[test]
    fn event_files_are_found_recursively_and_sorted() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("b/c")).expect("mkdir");
        for f in [
            "events.out.tfevents.2.h",
            "b/c/events.out.tfevents.1.h",
            "b/notes.txt",
            "b/events.out.tfevents.0.h",
        ] {
            std::fs::write(d.path().join(f), b"").expect("write");
        }
        let found = find_event_files(d.path()).expect("found");
        assert_eq!(
            found,
            vec![
                PathBuf::from("b/c/events.out.tfevents.1.h"),
                PathBuf::from("b/events.out.tfevents.0.h"),
                PathBuf::from("events.out.tfevents.2.h"),
            ]
        );
        assert!(find_event_files(&d.path().join("missing")).is_err());
    }

    #[tokio::test]
    async fn a_worker_credential_of_another_run_is_refused_before_sending() {
        assert_eq!(worker_token_run("worker.run.a.b.0f9e"), Some("run.a.b"));
        assert_eq!(worker_token_run("operator-token"), None);
        let mut cfg = ImportConfig::new("mine", "/nonexistent");
        cfg.auth_token = Some("worker.theirs.00ff".into());
        let err = Importer::new(cfg.clone()).err().expect("refused");
        assert!(err.to_string().contains("theirs"), "{err}");
        cfg.auth_token = Some("worker.mine.00ff".into());
        assert!(Importer::new(cfg).is_ok());
    }

    #[test]
    fn wall_times_become_timestamps() {
        assert_eq!(wall_timestamp(0.0), None);
        assert_eq!(wall_timestamp(f64::NAN), None);
        let ts = wall_timestamp(1_700_000_000.5).expect("ts");
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 500_000_000));
    }
}
