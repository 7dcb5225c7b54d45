//! Everything a server can be told, with defaults that are safe on a shared machine.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use telemetry_hub::HubConfig;
use telemetry_store::{Backend, Durability};

use crate::{
    dispatch::SubmitLimits, ingest_limits::IngestLimits, pipeline::RetryPolicy, query::QueryLimits,
};

/// The default [`ServerConfig::lease_ttl`].
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

/// The default gRPC address: loopback, port 50151.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50151";
/// The default Prometheus address: loopback, port 50152.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:50152";
/// How long a shutdown waits for clients to close their streams before closing connections.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// The JSONL proxy's executable name, looked up beside the running executable, then on `PATH`.
pub const PROXY_EXE_NAME: &str = "gym-telemetry-proxy";

/// Where the operator credential comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// `<var_dir>/auth-token`, made (random, mode 0600) on first start. The default: clients of
    /// the same user find it with no flag.
    VarDirFile,
    /// A token file the operator made (e.g. one file given to several servers).
    File(PathBuf),
    /// A token held in memory (embedding; the daemon's `GYM_TELEMETRY_AUTH_TOKEN`).
    Token(String),
    /// No credential: every request is the operator. Loopback only, with a warning; for
    /// throwaway setups.
    InsecureNoAuth,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthConfig::VarDirFile => f.write_str("VarDirFile"),
            AuthConfig::File(p) => f.debug_tuple("File").field(p).finish(),
            AuthConfig::Token(_) => f.write_str("Token(<redacted>)"),
            AuthConfig::InsecureNoAuth => f.write_str("InsecureNoAuth"),
        }
    }
}

/// PEM files for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Everything the server can be told. [`ServerConfig::new`] gives the defaults; set fields,
/// then [`crate::start`].
#[derive(Clone)]
pub struct ServerConfig {
    /// Lock, PID file, worker logs and queues live here (and the SQLite store, unless
    /// [`ServerConfig::backend`] names another).
    pub var_dir: PathBuf,
    /// The store. `None` (default): SQLite at `<var_dir>/telemetry.sqlite` with
    /// [`ServerConfig::durability`].
    pub backend: Option<Arc<dyn Backend>>,
    /// gRPC address (port 0: any free port).
    pub listen: SocketAddr,
    /// Prometheus address (`None`: no metrics endpoint).
    pub metrics_listen: Option<SocketAddr>,
    /// The operator credential every RPC (but gRPC health) must carry.
    pub auth: AuthConfig,
    /// Serve TLS with these files. The endpoint the server reports and hands to the workers
    /// it spawns is then `https://`.
    pub tls: Option<TlsFiles>,
    /// With TLS: the PEM CA file the workers it spawns trust (`GYM_TELEMETRY_TLS_CA_FILE` in
    /// their environment). `None` (default): the served certificate file itself, which is
    /// right for a self-signed certificate; set it when the certificate is issued by a CA.
    pub tls_client_ca: Option<PathBuf>,
    /// With TLS: the name the workers it spawns check the certificate against
    /// (`GYM_TELEMETRY_TLS_DOMAIN`). `None` (default): the host of the endpoint they are
    /// given, i.e. the listen address, so the certificate must name that IP address; set it
    /// (for example to `localhost`) when the certificate names a host instead.
    pub tls_client_domain: Option<String>,
    /// SQLite durability (the default backend only).
    pub durability: Durability,
    /// A running run that sends nothing for this long is failed.
    pub heartbeat_timeout: Duration,
    /// On a store shared with other daemons: how long a renewal of this daemon's owner lease
    /// holds (renewed every quarter of it). When it lapses (the daemon died, or lost the
    /// database for that long), other daemons take its pending and running runs over.
    pub lease_ttl: Duration,
    /// SIGTERM-to-SIGKILL grace when cancelling a worker.
    pub cancel_grace: Duration,
    /// How often a health line is logged and metrics snapshots refreshed.
    pub health_interval: Duration,
    /// How often the backend's upkeep runs (SQLite: a WAL checkpoint on its own thread, off
    /// the commit path).
    pub checkpoint_interval: Duration,
    /// The `gym-telemetry-proxy` executable that runs legacy JSONL workers for `SubmitRun`.
    pub proxy_exe: PathBuf,
    /// Hub limits.
    pub hub: HubConfig,
    /// Batch and record limits.
    pub ingest: IngestLimits,
    /// How a retryable store error is retried (the only retry of a write).
    pub store_retry: RetryPolicy,
    /// Largest gRPC message accepted.
    pub max_message_bytes: usize,
    /// The frame store's retention (`<var-dir>/frames`: bytes per run and in total).
    pub frames: telemetry_frames::FrameStoreOptions,
    /// Query stream limits: bytes per stream message (3 MiB, under a default client's 4 MiB
    /// decoding limit), live streams per client connection (64).
    pub query: QueryLimits,
    /// Concurrent HTTP/2 streams one client connection may open (128: room for
    /// [`QueryLimits::max_subscriptions_per_connection`] live streams and as many other calls).
    pub max_concurrent_streams: u32,
    /// Workers started by `SubmitRun` running at once (8); further submissions wait as
    /// pending and start in submission order as workers exit.
    pub max_running_workers: usize,
    /// Submissions waiting for a worker slot at most (1024); beyond, `SubmitRun` is refused
    /// with `RESOURCE_EXHAUSTED`.
    pub max_pending_runs: usize,
    /// Sizes a submission may have (metadata, argv, env).
    pub submit: SubmitLimits,
    /// `WatchRuns` streams (ours and the predecessor's together) open at once (64); beyond,
    /// `RESOURCE_EXHAUSTED`.
    pub max_run_watchers: usize,
    /// The built-in demo worker (`gym-telemetry-demo`, run as `<demo_exe> worker`) that the
    /// predecessor's `SubmitRun` starts for a TrainRunConfig naming no worker module or script.
    pub demo_exe: PathBuf,
    /// GPU slots the predecessor's `SubmitRun` may assign to runs (`--gpus 0,1`); none by
    /// default.
    pub gpus: Vec<u32>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("var_dir", &self.var_dir)
            .field("backend", &self.backend.as_ref().map(|b| b.describe()))
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// Where `gym-telemetry-proxy` is: beside the running executable (or one directory up, which
/// covers test binaries in `target/*/deps`), else the bare name, found on `PATH`.
pub fn default_proxy_exe() -> PathBuf {
    beside_current_exe(PROXY_EXE_NAME)
}

/// Where `gym-telemetry-demo` is, found the way [`default_proxy_exe`] finds the proxy.
pub fn default_demo_exe() -> PathBuf {
    beside_current_exe(crate::legacy_runs::DEMO_EXE_NAME)
}

fn beside_current_exe(name: &str) -> PathBuf {
    let beside = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?.to_path_buf();
        [
            dir.clone(),
            dir.parent().map(Path::to_path_buf).unwrap_or(dir),
        ]
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
    });
    beside.unwrap_or_else(|| name.into())
}

impl ServerConfig {
    /// Defaults for a var dir, listening on the default loopback address.
    pub fn new(var_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            var_dir: var_dir.into(),
            backend: None,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50151),
            metrics_listen: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50152)),
            auth: AuthConfig::VarDirFile,
            tls: None,
            tls_client_ca: None,
            tls_client_domain: None,
            durability: Durability::Normal,
            heartbeat_timeout: Duration::from_secs(120),
            lease_ttl: DEFAULT_LEASE_TTL,
            cancel_grace: Duration::from_secs(5),
            health_interval: Duration::from_secs(30),
            checkpoint_interval: Duration::from_millis(500),
            proxy_exe: default_proxy_exe(),
            hub: HubConfig {
                subscriber_queue: crate::pipeline::MAX_GROUP_RECORDS,
                ..HubConfig::default()
            },
            ingest: IngestLimits::default(),
            store_retry: RetryPolicy::default(),
            max_message_bytes: 16 * 1024 * 1024,
            query: QueryLimits::default(),
            frames: telemetry_frames::FrameStoreOptions::default(),
            max_concurrent_streams: 128,
            max_running_workers: 8,
            max_pending_runs: 1024,
            submit: SubmitLimits::default(),
            max_run_watchers: crate::runs::DEFAULT_MAX_WATCHERS,
            demo_exe: default_demo_exe(),
            gpus: Vec::new(),
        }
    }

    /// For tests and embedding: an ephemeral loopback port, no metrics port.
    pub fn ephemeral(var_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            metrics_listen: None,
            ..Self::new(var_dir)
        }
    }

    /// The same configuration on another store backend.
    pub fn with_backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }
}
