//! # telemetry-web
//!
//! gym-telemetry's web dashboard, served by the daemon beside its gRPC API: the runs table,
//! a run's per-agent views (grid, raw steps, episodes, charts), learning curves with smoothing
//! and overlays, Human Replay and agent replay, and run control. It works over SSH port
//! forwarding to a training box, where RL users already look at TensorBoard-like pages.
//!
//! ```text
//! browser ──/?token=…──▶ login (cookie) ──▶ static page (embedded JS/CSS, vendored uPlot)
//!         ──/api/…──────▶ JSON: runs, tags, downsampled scalars, episodes, replay steps
//!         ──/api/…/events/{steps|episodes|scalars}──▶ SSE from the hub (catch-up, then live)
//!         ──/api/runs/live──▶ SSE: the runs table with steps/s, each second and at lifecycle events
//! ```
//!
//! Everything goes through [`telemetry_server::LocalAccess`]: the same credential check as the
//! gRPC services, the same hub subscriptions (event id = the stream's seq, so a reconnecting
//! `EventSource` resumes with `Last-Event-ID`, no gap and no duplicate), the same ReadScalars
//! downsampling, ListRuns and SubmitRun. No Node.js is needed to build or run it: the front end
//! is plain files embedded with `include_str!`/`include_bytes!`.
//!
//! Modules: `auth` (login URL, cookie, the check on every API request), `sse` (hub deliveries
//! to server-sent events, rate-limited), `api` (JSON endpoints and run control), `assets` (the
//! embedded files), `video` (live frames, frames by `frame_ref`, clip export: issue 18),
//! `policies` (the inventory, a run's policies, evaluation runs: issue 19), `runs` (the runs
//! table with steps/s, live over SSE).

mod api;
mod assets;
mod auth;
mod error;
mod policies;
mod runs;
mod sse;
mod video;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::Router;
use telemetry_server::LocalAccess;
use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};

pub use auth::{login_url, SESSION_COOKIE};
pub use error::WebError;
pub use runs::{tail_rate, RateMeter};
pub use sse::{sse_item, subscribe_options, SseItem, StreamSelect};

/// Where the dashboard listens unless told otherwise (loopback: reach it from another machine
/// through SSH port forwarding).
pub const DEFAULT_WEB_LISTEN: &str = "127.0.0.1:50153";

/// How the dashboard serves.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Least time between two SSE batches of one stream (default 50 ms: 20 Hz, inside the
    /// 15–30 Hz a page can draw).
    pub sse_interval: Duration,
    /// Records per SSE batch at most (default 2048).
    pub sse_max_batch: usize,
    /// Records each SSE stream's hub queue holds (default 16384); beyond, the oldest are
    /// dropped and a `lagged` event tells the page.
    pub sse_queue: usize,
    /// SSE streams open at once at most (default 64, live video streams included); beyond, 503
    /// (counted).
    pub max_sse_streams: usize,
    /// Live frames a Video tab gets per second at most (default 10 Hz); the frames stored in
    /// between are skipped and counted as dropped.
    pub video_max_hz: f64,
    /// Largest encoded frame the live view sends (default 8 MiB); bigger ones are skipped.
    pub max_live_frame_bytes: usize,
    /// The ffmpeg used by "export clip" (`None`: `ffmpeg` on `PATH`; absent: a GIF is written).
    pub ffmpeg: Option<std::path::PathBuf>,
}

impl WebConfig {
    /// Defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        WebConfig {
            listen,
            sse_interval: Duration::from_millis(50),
            sse_max_batch: 2048,
            sse_queue: 16_384,
            max_sse_streams: 64,
            video_max_hz: 10.0,
            max_live_frame_bytes: 8 << 20,
            ffmpeg: None,
        }
    }
}

/// What the dashboard counts (`GET /api/stats`).
#[derive(Debug, Default)]
pub struct WebStats {
    /// Requests refused for a missing or wrong credential.
    pub unauthenticated: AtomicU64,
    /// SSE streams opened.
    pub sse_opened: AtomicU64,
    /// SSE streams refused (too many open, or the hub refused).
    pub sse_refused: AtomicU64,
    /// `lagged` notices sent (a stream fell behind and records were dropped).
    pub sse_lagged: AtomicU64,
    /// Records sent over SSE.
    pub sse_records: AtomicU64,
    /// Logins through the token URL.
    pub logins: AtomicU64,
    /// Live video streams opened.
    pub video_streams: AtomicU64,
    /// Live frames sent.
    pub video_frames_sent: AtomicU64,
    /// Stored frames a live stream skipped (newer ones came before the next send).
    pub video_frames_dropped: AtomicU64,
    /// Frames served by `frame_ref`.
    pub frames_served: AtomicU64,
    /// Frames asked for by `frame_ref` that are missing (never stored, evicted, corrupt).
    pub frames_missing: AtomicU64,
    /// Clips exported.
    pub exports: AtomicU64,
    /// Exports refused (one already running, no frames).
    pub exports_refused: AtomicU64,
    /// Evaluation runs submitted from the dashboard.
    pub evaluations_submitted: AtomicU64,
    /// Runs the steps/s meter forgot to stay within its bound (`runs::MAX_METERED_RUNS`).
    pub rate_meter_evicted: AtomicU64,
}

impl WebStats {
    fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The state every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub(crate) access: LocalAccess,
    pub(crate) cfg: Arc<WebConfig>,
    pub(crate) stats: Arc<WebStats>,
    pub(crate) sse_slots: Arc<Semaphore>,
    pub(crate) export_slot: Arc<Semaphore>,
    pub(crate) rates: Arc<RateMeter>,
}

impl AppState {
    /// State over a server's in-process access.
    pub fn new(access: LocalAccess, cfg: WebConfig) -> Self {
        AppState {
            sse_slots: Arc::new(Semaphore::new(cfg.max_sse_streams)),
            export_slot: Arc::new(Semaphore::new(1)),
            rates: Arc::default(),
            access,
            cfg: Arc::new(cfg),
            stats: Arc::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &WebStats {
        &self.stats
    }
}

/// The dashboard's routes (for tests and for embedding in another server).
pub fn router(state: AppState) -> Router {
    let api = api::routes(state.clone()).route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require,
    ));
    Router::new()
        .merge(assets::routes())
        .merge(auth::routes())
        .nest("/api", api)
        .layer(axum::middleware::from_fn(auth::security_headers))
        .with_state(state)
}

/// A running dashboard.
#[derive(Debug)]
pub struct WebServer {
    /// The bound address.
    pub addr: SocketAddr,
    join: JoinHandle<std::io::Result<()>>,
}

impl WebServer {
    /// `http://ADDR/` (an unspecified address shown as loopback).
    pub fn dashboard_url(&self) -> String {
        auth::base_url(self.addr)
    }

    /// Waits until the dashboard stopped (after the server's shutdown).
    pub async fn wait(self) -> Result<(), WebError> {
        match self.join.await {
            Ok(r) => r.map_err(WebError::Serve),
            Err(e) => Err(WebError::Serve(std::io::Error::other(e.to_string()))),
        }
    }
}

/// Binds `cfg.listen` and serves the dashboard until the server shuts down.
pub async fn start(cfg: WebConfig, access: LocalAccess) -> Result<WebServer, WebError> {
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| WebError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(WebError::Serve)?;
    if !addr.ip().is_loopback() && !access.requires_auth() {
        return Err(WebError::NeedsAuth(addr));
    }
    let stop = access.shutdown_token();
    let app = router(AppState::new(access, cfg));
    let join = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    tracing::info!(%addr, "web dashboard serving");
    Ok(WebServer { addr, join })
}
