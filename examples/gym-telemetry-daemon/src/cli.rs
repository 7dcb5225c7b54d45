//! Command-line interface of `gym-telemetry-daemon`. Every flag can also be set by an environment variable with the
//! `GYM_TELEMETRY_` prefix (shown in `--help`).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// gym-telemetry's reference daemon: gRPC ingest, SQLite store, live streams, run control.
#[derive(Debug, Parser)]
#[command(name = "gym-telemetry-daemon", version, about)]
pub struct Cli {
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info,telemetry_store=debug`).
    #[arg(long, global = true, env = "GYM_TELEMETRY_LOG", default_value = "info")]
    pub log: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The var dir (store, lock, logs).
#[derive(Debug, Args, Clone)]
pub struct VarDir {
    /// Directory of the store, lock and PID file, worker logs and queues.
    #[arg(long, env = "GYM_TELEMETRY_VAR_DIR", default_value = "./var/telemetry")]
    pub var_dir: PathBuf,
}

/// Which store: SQLite in the var dir (default) or a PostgreSQL database shared by daemons.
#[derive(Debug, Args, Clone, Default)]
pub struct StoreArgs {
    /// A PostgreSQL store (`postgres://user@host:port/db?schema=NAME`) instead of SQLite in
    /// the var dir. Put a URL holding a password in GYM_TELEMETRY_STORE or --store-url-file,
    /// never on the command line (refused there: argv is visible to every local account).
    #[arg(long, env = "GYM_TELEMETRY_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// A file holding the PostgreSQL store URL (first line).
    #[arg(long, env = "GYM_TELEMETRY_STORE_URL_FILE", conflicts_with = "store")]
    pub store_url_file: Option<PathBuf>,
}

/// SQLite durability.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DurabilityArg {
    /// `synchronous=NORMAL`: survives a daemon crash; a power loss may roll back the last commits.
    Normal,
    /// `synchronous=FULL`: survives a power loss, at a cost in ingest rate.
    Full,
}

/// The subcommands.
// Parsed once at start: the size of `serve`'s arguments does not matter (and boxing them
// hides their ids from the `ArgMatches` lookups in main.rs).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Write stored telemetry as JSONL or Parquet, to stdout or -o FILE (streaming; flat memory).
    Dump(DumpArgs),
    /// Copy the predecessor's telemetry.sqlite into the store (idempotent).
    ImportLegacy(ImportArgs),
    /// Store the scalars of TensorBoard event files (events.out.tfevents.*) in a run, through
    /// the running daemon. Idempotent and resumable; --follow tails the files while a run
    /// writes them.
    ImportTensorboard(ImportTensorboardArgs),
    /// Copy a store into another (a SQLite file ⇄ a postgres:// URL), verified by counts and
    /// seq-ordered SHA-256 digests of every stream. Idempotent and resumable; a target that is
    /// not empty and not a prefix of the source is refused untouched. Stop the daemons writing
    /// the source first.
    MigrateStore(MigrateStoreArgs),
    /// Encode a stored episode's frames as a clip (MP4/H.264 or WebM/VP9 through ffmpeg; an
    /// animated GIF without ffmpeg) and register it as an artifact of the run.
    ExportVideo(ExportVideoArgs),
    /// The policy inventory under <var-dir>/policies (read and written directly, with or
    /// without a daemon running).
    #[command(subcommand)]
    Policies(PoliciesCommand),
}

/// `migrate-store`.
#[derive(Debug, Args)]
pub struct MigrateStoreArgs {
    /// The source: a SQLite store file (e.g. <var-dir>/telemetry.sqlite) or a postgres:// URL.
    /// A URL holding a password goes in GYM_TELEMETRY_MIGRATE_FROM, never on the command line.
    #[arg(long, env = "GYM_TELEMETRY_MIGRATE_FROM", hide_env_values = true)]
    pub from: String,
    /// The target, likewise (GYM_TELEMETRY_MIGRATE_TO); a SQLite file is created if missing.
    #[arg(long, env = "GYM_TELEMETRY_MIGRATE_TO", hide_env_values = true)]
    pub to: String,
}

/// `export-video`.
#[derive(Debug, Args)]
pub struct ExportVideoArgs {
    /// Where the frame store and the store live.
    #[command(flatten)]
    pub var: VarDir,
    /// The run.
    #[arg(long)]
    pub run: String,
    /// The agent (empty: the run's frames without an agent id).
    #[arg(long, default_value = "")]
    pub agent: String,
    /// The episode index.
    #[arg(long)]
    pub episode: u64,
    /// The clip to write: `.mp4`, `.webm` or `.gif` (without ffmpeg, `.mp4`/`.webm` become
    /// the same name with `.gif`).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// The ffmpeg executable (default: `ffmpeg` on PATH). One that does not run counts as
    /// ffmpeg not installed.
    #[arg(long, env = "GYM_TELEMETRY_FFMPEG")]
    pub ffmpeg: Option<PathBuf>,
    /// Frames per second (default: the env's `render_fps` stored with the frames, else 30).
    #[arg(long)]
    pub fps: Option<f64>,
}

/// `policies list|show|import|verify`.
#[derive(Debug, Subcommand)]
pub enum PoliciesCommand {
    /// Every policy with its manifest summary; invalid files marked INVALID with their reason.
    List(PoliciesListArgs),
    /// One policy's manifest as JSON.
    Show(PolicyIdArgs),
    /// Register a checkpoint (copied into the inventory) with the manifest given by the flags.
    Import(PoliciesImportArgs),
    /// Re-hash policies (all by default); exits 1 when a digest no longer matches.
    Verify(PoliciesVerifyArgs),
}

/// `policies list`.
#[derive(Debug, Args)]
pub struct PoliciesListArgs {
    /// Where the inventory lives.
    #[command(flatten)]
    pub var: VarDir,
    /// Only this env id.
    #[arg(long, default_value = "")]
    pub env: String,
    /// Only this agent.
    #[arg(long, default_value = "")]
    pub agent: String,
    /// Only this format (q_table, npz, ...).
    #[arg(long, default_value = "")]
    pub format: String,
}

/// `policies show`.
#[derive(Debug, Args)]
pub struct PolicyIdArgs {
    /// Where the inventory lives.
    #[command(flatten)]
    pub var: VarDir,
    /// The policy id (its path under the policies root).
    pub policy_id: String,
}

/// `policies import`.
#[derive(Debug, Args)]
pub struct PoliciesImportArgs {
    /// Where the inventory lives.
    #[command(flatten)]
    pub var: VarDir,
    /// The checkpoint file.
    pub path: PathBuf,
    /// The env id it was trained on.
    #[arg(long)]
    pub env: String,
    /// Its format: q_table, npz, torch_state, flax_state, ...
    #[arg(long)]
    pub format: String,
    /// Its payload version within the format.
    #[arg(long, default_value_t = 1)]
    pub payload_version: u32,
    /// The agent (default: the file stem).
    #[arg(long, default_value = "")]
    pub agent: String,
    /// Observation space (Gymnasium notation, e.g. "Discrete(16)").
    #[arg(long, default_value = "")]
    pub observation_space: String,
    /// Action space.
    #[arg(long, default_value = "")]
    pub action_space: String,
    /// Control mode it was trained under.
    #[arg(long, default_value = "")]
    pub control_mode: String,
    /// The run that produced it.
    #[arg(long, default_value = "")]
    pub source_run: String,
    /// Refuse unless the file hashes to this SHA-256.
    #[arg(long, default_value = "")]
    pub sha256: String,
}

/// `policies verify`.
#[derive(Debug, Args)]
pub struct PoliciesVerifyArgs {
    /// Where the inventory lives.
    #[command(flatten)]
    pub var: VarDir,
    /// Policy ids (none: every policy).
    pub policy_ids: Vec<String>,
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the store and lock live.
    #[command(flatten)]
    pub var: VarDir,
    /// Which store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// gRPC address (loopback by default; anything else should have --tls-cert).
    #[arg(long, env = "GYM_TELEMETRY_LISTEN", default_value = telemetry_server::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Prometheus `/metrics` address, or `off`.
    #[arg(long, env = "GYM_TELEMETRY_METRICS_LISTEN", default_value = telemetry_server::DEFAULT_METRICS_LISTEN)]
    pub metrics_listen: String,
    /// Web dashboard address, or `off`. Open the login URL printed at start-up (it carries
    /// the operator token once; the browser then keeps a cookie).
    #[arg(long, env = "GYM_TELEMETRY_WEB_LISTEN", default_value = telemetry_web::DEFAULT_WEB_LISTEN)]
    pub web_listen: String,
    /// The operator token, from the environment only (`GYM_TELEMETRY_AUTH_TOKEN`): a token on
    /// the command line is refused, because every local account can read argv in `ps`.
    #[arg(
        long,
        env = "GYM_TELEMETRY_AUTH_TOKEN",
        hide_env_values = true,
        hide = true
    )]
    pub auth_token: Option<String>,
    /// A file holding the operator token (e.g. one file given to several daemons). Default:
    /// `<var-dir>/auth-token`, made on first start (mode 0600).
    #[arg(
        long,
        env = "GYM_TELEMETRY_AUTH_TOKEN_FILE",
        conflicts_with = "insecure_no_auth"
    )]
    pub auth_token_file: Option<PathBuf>,
    /// Accept every RPC without a credential (loopback only; prints a warning). For throwaway
    /// setups: any local account can then read all telemetry and make the daemon run commands.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// TLS certificate chain (PEM); requires --tls-key.
    #[arg(long, env = "GYM_TELEMETRY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "GYM_TELEMETRY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With TLS: the PEM CA file spawned workers trust. Default: the --tls-cert file (right
    /// for a self-signed certificate).
    #[arg(long, env = "GYM_TELEMETRY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// With TLS: the name spawned workers check the certificate against. Default: the
    /// listen address.
    #[arg(long, env = "GYM_TELEMETRY_TLS_CLIENT_DOMAIN", requires = "tls_cert")]
    pub tls_client_domain: Option<String>,
    /// SQLite durability.
    #[arg(long, env = "GYM_TELEMETRY_DURABILITY", value_enum, default_value_t = DurabilityArg::Normal)]
    pub durability: DurabilityArg,
    /// Seconds without telemetry or heartbeat after which a running run is failed.
    #[arg(long, env = "GYM_TELEMETRY_HEARTBEAT_TIMEOUT", default_value_t = 120)]
    pub heartbeat_timeout: u64,
    /// On a shared store (`--store postgres://…`): seconds an owner lease renewal holds (renewed
    /// every quarter of it). When this daemon's lapses, other daemons take its runs over.
    #[arg(long, env = "GYM_TELEMETRY_LEASE_TTL", default_value_t = 15)]
    pub lease_ttl: u64,
    /// Seconds between SIGTERM and SIGKILL when cancelling a worker.
    #[arg(long, env = "GYM_TELEMETRY_CANCEL_GRACE", default_value_t = 5)]
    pub cancel_grace: u64,
    /// The `gym-telemetry-proxy` executable that runs legacy JSONL workers. Default: the one
    /// beside this executable, else `gym-telemetry-proxy` on PATH.
    #[arg(long, env = "GYM_TELEMETRY_PROXY_BIN")]
    pub proxy_bin: Option<PathBuf>,
    /// Workers started by SubmitRun running at once; further submissions wait as pending and
    /// start in submission order as workers exit.
    #[arg(long, env = "GYM_TELEMETRY_MAX_RUNNING_WORKERS", default_value_t = 8)]
    pub max_running_workers: usize,
    /// Submissions waiting for a worker slot at most; beyond, SubmitRun is refused.
    #[arg(long, env = "GYM_TELEMETRY_MAX_PENDING_RUNS", default_value_t = 1024)]
    pub max_pending_runs: usize,
    /// The built-in demo worker (`gym-telemetry-demo`) that the predecessor's `SubmitRun` runs
    /// for a TrainRunConfig naming no worker. Default: beside this executable, else on PATH.
    #[arg(long, env = "GYM_TELEMETRY_DEMO_BIN")]
    pub demo_bin: Option<PathBuf>,
    /// GPU slots the predecessor's `SubmitRun` may assign (`0,1,2`); none by default.
    #[arg(long, env = "GYM_TELEMETRY_GPUS", value_delimiter = ',')]
    pub gpus: Vec<u32>,
    /// Frame bytes kept per run (`<var-dir>/frames`); beyond, the oldest unpinned episodes
    /// are evicted.
    #[arg(long, env = "GYM_TELEMETRY_FRAMES_MAX_RUN_BYTES", default_value_t = 1 << 30)]
    pub frames_max_run_bytes: u64,
    /// Frame bytes kept in total, all runs.
    #[arg(long, env = "GYM_TELEMETRY_FRAMES_MAX_TOTAL_BYTES", default_value_t = 8 << 30)]
    pub frames_max_total_bytes: u64,
}

/// `dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Where the store lives.
    #[command(flatten)]
    pub var: VarDir,
    /// Which store.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only records with seq greater than this.
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    /// Only this run.
    #[arg(long = "run")]
    pub run_id: Option<String>,
    /// Only this agent.
    #[arg(long = "agent")]
    pub agent_id: Option<String>,
    /// Only this control mode (human, agent, multi_agent, hybrid, replay, unknown).
    #[arg(long)]
    pub control_mode: Option<String>,
    /// Episodes instead of steps.
    #[arg(long, conflicts_with = "scalars")]
    pub episodes: bool,
    /// Training scalars (learning curves) instead of steps.
    #[arg(long)]
    pub scalars: bool,
    /// Lifecycle events (run_started, run_completed, artifact) instead of steps; only --run
    /// applies to them.
    #[arg(long, conflicts_with_all = ["episodes", "scalars", "agent_id", "control_mode"])]
    pub events: bool,
    /// Output format: JSON lines, or a Parquet file with typed columns.
    #[arg(long, value_enum, default_value_t = DumpFormat::Jsonl)]
    pub format: DumpFormat,
    /// Write to this file (made 0600, complete or not at all) instead of stdout.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

/// `dump --format`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DumpFormat {
    /// One JSON object per line (the workers' JSONL contract).
    Jsonl,
    /// Apache Parquet, one row group per 65,536 rows (schemas: the telemetry-export docs).
    Parquet,
}

/// `import-legacy`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Where our store lives.
    #[command(flatten)]
    pub var: VarDir,
    /// The predecessor's telemetry.sqlite.
    pub path: PathBuf,
}

/// `import-tensorboard`.
#[derive(Debug, Args)]
pub struct ImportTensorboardArgs {
    /// The run the scalars are stored in.
    #[arg(long)]
    pub run_id: String,
    /// The agent the scalars belong to (default: the run as a whole).
    #[arg(long, default_value = "")]
    pub agent_id: String,
    /// The daemon.
    #[arg(long, env = "GYM_TELEMETRY_ENDPOINT", default_value = telemetry_tensorboard::import::DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// The daemon's var dir, whose `auth-token` is used: it takes the place of
    /// GYM_TELEMETRY_VAR_DIR in the usual discovery (GYM_TELEMETRY_AUTH_TOKEN, then
    /// GYM_TELEMETRY_AUTH_TOKEN_FILE, then the var dir, then ./var/telemetry). A token is never
    /// taken from the command line.
    #[arg(long)]
    pub var_dir: Option<PathBuf>,
    /// With an https:// endpoint: the PEM CA file to trust (default: Mozilla's roots).
    #[arg(long, env = "GYM_TELEMETRY_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// With an https:// endpoint: the name the certificate is checked against.
    #[arg(long, env = "GYM_TELEMETRY_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// Keep tailing the files (and pick up new ones) until SIGINT/SIGTERM.
    #[arg(long)]
    pub follow: bool,
    /// With --follow: exit after this many seconds without a new event.
    #[arg(long, requires = "follow")]
    pub idle_exit_secs: Option<u64>,
    /// With --follow: milliseconds between passes over the files (at least 10).
    #[arg(long, default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// Scalars per batch sent to the daemon (1..=4096).
    #[arg(long, default_value_t = telemetry_tensorboard::import::DEFAULT_BATCH_RECORDS)]
    pub batch_records: usize,
    /// The log directory (searched recursively; a subdirectory becomes a tag prefix, and
    /// add_scalars directories become `main_tag/key`).
    pub dir: PathBuf,
}
