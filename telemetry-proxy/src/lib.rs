//! `gym-telemetry-proxy`: runs a legacy worker that prints JSONL telemetry on stdout and
//! delivers that telemetry through the shim (batching, disk queue, exactly-once), unchanged.
//!
//! The predecessor's workers cannot all be rewritten, and its proxy lost records whenever the
//! daemon hiccuped and could deadlock on a full stderr pipe. This one:
//!
//! - runs the worker (`-- <argv>`) with stdout and stderr piped and **both drained
//!   concurrently**, lines bounded in length ([`ProxyArgs::max_line_bytes`]);
//! - turns each stdout line into a record with the core JSONL contract
//!   (`telemetry_core::jsonl`), sets `--run-id` on it (the daemon's name for the run wins) and
//!   fills `--agent-id` where empty, and hands it to the shim;
//! - passes stderr, and stdout lines that are not JSON, through to its own stderr/stdout;
//! - reports the lifecycle: a `run_started` before the first record unless the worker sent one,
//!   and a `run_completed` from the exit status unless the worker sent its own (exit 0:
//!   SUCCEEDED; other codes: FAILED with `exit_code`; a signal: FAILED with `signal`, or
//!   CANCELLED when it was a SIGTERM/SIGINT the proxy forwarded);
//! - forwards SIGTERM and SIGINT to the worker and exits with the worker's code (128 + signal
//!   when it was killed, 127 when it could not be started);
//! - at the end waits up to `--flush-timeout-secs` for the daemon to ack everything, **reconnecting
//!   for as long as that lasts** (a daemon restarting meanwhile is waited for). When records are
//!   still undelivered then, it says how many and where they are (the queue directory, or
//!   memory only) on stderr and exits non-zero: the worker's code when that is already non-zero,
//!   else [`EXIT_UNDELIVERED`] (75, `EX_TEMPFAIL`: run the same `--queue-dir` again, e.g. with
//!   `--input /dev/null`, to deliver them);
//! - with `--input FILE` replays a JSONL file instead (no lifecycle records are made up);
//! - counts lines parsed / rejected / passed through; the binary prints them on one line.
//!
//! The proxy's own logs go to stderr, filtered by `GYM_TELEMETRY_LOG` (tracing `EnvFilter`
//! syntax, default `warn`).

mod child;
mod lines;
mod session;

pub use session::LineCounts;

use session::Session;
use std::{
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use telemetry_core::jsonl::{JsonlError, JsonlReader, DEFAULT_MAX_LINE_BYTES};
use telemetry_shim::{
    DryRunTarget, FlushOutcome, Mode, ShimConfig, ShimError, ShimStats, Telemetry,
};

/// The exit code of a proxy whose worker (or replay) succeeded but whose records are not all
/// delivered at exit (`EX_TEMPFAIL` of sysexits.h: trying again later can succeed).
pub const EXIT_UNDELIVERED: i32 = 75;

/// Command line of `gym-telemetry-proxy` (each flag falls back to its `GYM_TELEMETRY_*`
/// variable; the shim's other variables apply as documented in [`ShimConfig`]).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gym-telemetry-proxy",
    version,
    about = "Run a legacy worker and deliver the JSONL telemetry it prints to the gym-telemetry daemon"
)]
pub struct ProxyArgs {
    /// Run id given to every record (overrides the worker's own).
    #[arg(long, env = "GYM_TELEMETRY_RUN_ID")]
    pub run_id: Option<String>,
    /// Agent id for records that have none.
    #[arg(long, env = "GYM_TELEMETRY_AGENT_ID")]
    pub agent_id: Option<String>,
    /// The daemon's Ingest URL.
    #[arg(long, env = "GYM_TELEMETRY_ENDPOINT")]
    pub endpoint: Option<String>,
    /// The shim's disk queue (recommended: survives proxy and daemon restarts).
    #[arg(long, env = "GYM_TELEMETRY_QUEUE_DIR")]
    pub queue_dir: Option<PathBuf>,
    /// Validate and write records as JSONL to this file ('-': stdout) instead of sending them.
    #[arg(long, env = "GYM_TELEMETRY_DRY_RUN")]
    pub dry_run: Option<String>,
    /// Replay this JSONL file instead of running a worker.
    #[arg(long, conflicts_with = "command")]
    pub input: Option<PathBuf>,
    /// Longest accepted stdout line in bytes; longer lines are rejected and skipped.
    #[arg(long, default_value_t = DEFAULT_MAX_LINE_BYTES)]
    pub max_line_bytes: usize,
    /// How long to wait at the end for the daemon to ack everything (reconnecting meanwhile).
    #[arg(long, default_value_t = 10)]
    pub flush_timeout_secs: u64,
    /// The worker's command line.
    #[arg(last = true, required_unless_present = "input")]
    pub command: Vec<String>,
}

/// Why the proxy could not do its job (the worker's own failures are not errors: they are its
/// exit code and its `run_completed`).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The shim could not start (bad configuration, queue directory in use...).
    #[error(transparent)]
    Telemetry(#[from] ShimError),
    /// The `--input` file could not be read.
    #[error("{path}: {source}")]
    Input {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime or the signal handlers could not be set up.
    #[error("proxy runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// What a proxy run did.
#[derive(Debug, Clone)]
pub struct ProxySummary {
    /// Line counts.
    pub counts: LineCounts,
    /// The exit code to use: the worker's (0 for `--input`), or [`EXIT_UNDELIVERED`] when that
    /// is 0 but records are left undelivered.
    pub exit_code: i32,
    /// Records accepted but not acked by the daemon when the proxy gave up waiting.
    pub undelivered: u64,
    /// Where the undelivered records are kept (`None`: in memory only, lost at exit).
    pub queue_dir: Option<PathBuf>,
    /// How the final flush ended (or why it failed).
    pub flush: Result<FlushOutcome, String>,
    /// The shim's counters after the flush.
    pub stats: ShimStats,
}

impl ProxySummary {
    /// The one-line summary the binary prints on stderr.
    pub fn line(&self) -> String {
        let c = &self.counts;
        let s = &self.stats;
        let flush = match &self.flush {
            Ok(o) => format!("{o:?}"),
            Err(e) => format!("failed ({e})"),
        };
        format!(
            "gym-telemetry-proxy: lines parsed={} rejected={} passed_through={} stderr={} \
             synthesized={}; records accepted={} acked={} dropped={} rejected_by_daemon={} \
             lost_to_corruption={}; flush={flush}; undelivered={}; exit={}",
            c.parsed,
            c.rejected,
            c.passed_through,
            c.stderr_lines,
            c.synthesized,
            s.accepted,
            s.acked,
            s.dropped,
            s.rejected,
            s.corrupt_lost_records,
            self.undelivered,
            self.exit_code
        )
    }

    /// What to tell the user about records left undelivered (`None` when there are none).
    pub fn undelivered_line(&self) -> Option<String> {
        if self.undelivered == 0 {
            return None;
        }
        Some(match &self.queue_dir {
            Some(q) => format!(
                "gym-telemetry-proxy: {n} records not delivered; they are kept in the queue \
                 directory {q} and are sent by the next shim or proxy on it \
                 (gym-telemetry-proxy --queue-dir {q} --input /dev/null)",
                n = self.undelivered,
                q = q.display()
            ),
            None => format!(
                "gym-telemetry-proxy: {} records not delivered and lost (held in memory only; \
                 use --queue-dir to keep them)",
                self.undelivered
            ),
        })
    }
}

/// The shim configuration: the environment, overridden by the flags.
pub fn shim_config(args: &ProxyArgs) -> Result<ShimConfig, ShimError> {
    let mut c = ShimConfig::from_env()?;
    if let Some(e) = &args.endpoint {
        c.endpoint.clone_from(e);
    }
    if args.run_id.is_some() {
        c.run_id.clone_from(&args.run_id);
    }
    if args.agent_id.is_some() {
        c.agent_id.clone_from(&args.agent_id);
    }
    if args.queue_dir.is_some() {
        c.queue_dir.clone_from(&args.queue_dir);
    }
    if let Some(d) = &args.dry_run {
        if c.mode != Mode::Disabled {
            c.mode = Mode::DryRun(if d == "-" {
                DryRunTarget::Stdout
            } else {
                DryRunTarget::File(PathBuf::from(d))
            });
        }
    }
    c.validate()?;
    Ok(c)
}

/// Runs the proxy to the end: the worker (or the replay), then the final flush.
pub fn run(args: &ProxyArgs) -> Result<ProxySummary, ProxyError> {
    let config = shim_config(args)?;
    let queue_dir = config.queue_dir.clone();
    let shim = Telemetry::new(config)?;
    let (counts, exit_code) = match &args.input {
        Some(path) => (replay(&shim, args, path)?, 0),
        None => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(ProxyError::Runtime)?;
            runtime.block_on(child::supervise(&shim, args))?
        }
    };
    let timeout = Duration::from_secs(args.flush_timeout_secs);
    let deadline = Instant::now() + timeout;
    tracing::info!(
        records = shim.stats().accepted,
        timeout_secs = args.flush_timeout_secs,
        "waiting for the daemon to ack every record"
    );
    let flushed = shim.flush(timeout);
    let stats = shim.stats();
    let mut undelivered = match &flushed {
        Ok(r) => r.pending_records,
        Err(ShimError::FlushTimeout { pending } | ShimError::NotDelivered { pending, .. }) => {
            *pending
        }
        Err(_) => stats.queue_records + stats.buffered_records,
    };
    let flush = flushed.map(|r| r.outcome).map_err(|e| e.to_string());
    // The flush has waited already: the close only syncs and stops.
    match shim.close(deadline.saturating_duration_since(Instant::now())) {
        Ok(r) => undelivered = undelivered.max(r.pending_records),
        Err(e) => tracing::warn!(error = %e, "closing the shim"),
    }
    let exit_code = if undelivered > 0 && exit_code == 0 {
        EXIT_UNDELIVERED
    } else {
        exit_code
    };
    Ok(ProxySummary {
        counts,
        exit_code,
        undelivered,
        queue_dir: queue_dir.filter(|_| undelivered > 0),
        flush,
        stats,
    })
}

fn replay(shim: &Telemetry, args: &ProxyArgs, path: &Path) -> Result<LineCounts, ProxyError> {
    let input_err = |source| ProxyError::Input {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(input_err)?;
    let reader = JsonlReader::with_max_line_bytes(BufReader::new(file), args.max_line_bytes);
    let mut session = Session::new(
        shim,
        args.run_id.clone(),
        args.agent_id.clone(),
        vec![],
        false,
    );
    let stdout = std::io::stdout();
    for item in reader {
        match item {
            Ok(parsed) => session.on_record(parsed.record, parsed.line_no),
            Err(JsonlError::Io { source }) => return Err(input_err(source)),
            Err(e) => session.on_error(e, None, &mut stdout.lock()),
        }
    }
    Ok(session.counts)
}
