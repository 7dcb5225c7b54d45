//! # gym-telemetry-demo
//!
//! The whole product in one command (`cargo run --release -p gym-telemetry-demo`).
//!
//! It starts a server (the `telemetry-server` library, in-process) on a fresh var dir (a temporary directory unless `--var-dir` is given),
//! runs the built-in demo worker — two Q-learning agents on a small grid world, each sending
//! through its own Rust shim, with ANSI grid render hints on every step and seed / game id /
//! control mode on every episode — and opens the terminal viewer on it. With `--headless` it
//! prints a summary of what the store holds (runs, steps, episodes, rejected and dropped
//! records) and exits 0 only if every record the worker produced was stored.

pub mod gridworld;
pub mod worker;

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use telemetry_server::ServerConfig;
use telemetry_store::{Filter, StoreReader};

/// What the demo runs.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Print a summary and exit instead of opening the viewer.
    #[arg(long)]
    pub headless: bool,
    /// Var dir of the demo (default: a fresh temporary directory).
    #[arg(long, env = "GYM_TELEMETRY_DEMO_VAR_DIR")]
    pub var_dir: Option<PathBuf>,
    /// Episodes per agent.
    #[arg(long, default_value_t = 60)]
    pub episodes: u32,
    /// Milliseconds between steps (0: as fast as possible), so the live view can be watched.
    #[arg(long)]
    pub step_delay_ms: Option<u64>,
}

/// What a headless demo found in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    /// The run's id.
    pub run_id: String,
    /// Runs stored.
    pub runs: usize,
    /// Steps stored.
    pub steps: u64,
    /// Episodes stored.
    pub episodes: u64,
    /// Records the worker produced (steps + episodes).
    pub produced: u64,
    /// Records dropped by the shims.
    pub shim_dropped: u64,
    /// Records rejected by the daemon.
    pub rejected: u64,
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "demo run {}: runs={} steps={} episodes={} stored/produced={}/{} dropped={} rejected={}",
            self.run_id,
            self.runs,
            self.steps,
            self.episodes,
            self.steps + self.episodes,
            self.produced,
            self.shim_dropped,
            self.rejected
        )
    }
}

/// Runs the demo. Returns the summary (headless) after the daemon has shut down.
pub async fn run(args: DemoArgs) -> anyhow::Result<DemoSummary> {
    let (_tmp, var_dir): (Option<tempfile::TempDir>, PathBuf) = match &args.var_dir {
        Some(d) => (None, d.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("gym-telemetry-demo-")
                .tempdir()
                .context("creating a temporary var dir")?;
            let p = t.path().to_path_buf();
            // Private, as a server's var dir should be (the server warns otherwise).
            #[cfg(unix)]
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .context("making the demo var dir private")?;
            (Some(t), p)
        }
    };
    let daemon = telemetry_server::start(ServerConfig::ephemeral(&var_dir))
        .await
        .context("starting the daemon")?;
    let endpoint = daemon.endpoint();
    eprintln!("daemon on {endpoint}, var dir {}", var_dir.display());
    // The web dashboard on a free loopback port; it stops with the daemon.
    let web = telemetry_web::start(
        telemetry_web::WebConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        daemon.local_access(),
    )
    .await
    .context("starting the web dashboard")?;
    eprintln!(
        "web dashboard: {}",
        telemetry_web::login_url(web.addr, daemon.operator_token())
    );

    let step_delay =
        Duration::from_millis(
            args.step_delay_ms
                .unwrap_or(if args.headless { 0 } else { 40 }),
        );
    let run_id = dispatch_run_id();
    let worker_cfg = worker::WorkerConfig {
        // The worker may write only its own run; the viewer is the owner's.
        auth_token: daemon.worker_token(&run_id),
        endpoint: endpoint.clone(),
        run_id,
        agents: 2,
        episodes: args.episodes,
        step_delay,
        seed: 7,
        queue_dir: Some(var_dir.join("queues").join("demo")),
        control_mode: telemetry_core::ControlMode::MultiAgent,
    };
    let run_id = worker_cfg.run_id.clone();
    let worker = tokio::task::spawn_blocking(move || worker::run(&worker_cfg));

    if !args.headless {
        let mut viewer = telemetry_viewer::ClientConfig::new(endpoint.clone());
        viewer.auth_token = daemon.operator_token().map(str::to_owned);
        let ui = telemetry_viewer::tui::run_tui(&viewer).await;
        // The viewer was closed: the worker may still be running; let it finish quietly.
        let report = worker.await.context("demo worker panicked")??;
        daemon.shutdown().await.context("stopping the daemon")?;
        ui.context("viewer")?;
        return summarize(&var_dir, &run_id, &report);
    }
    let report = worker.await.context("demo worker panicked")??;
    daemon.shutdown().await.context("stopping the daemon")?;
    summarize(&var_dir, &run_id, &report)
}

fn dispatch_run_id() -> String {
    format!(
        "demo-{}",
        telemetry_server::new_run_id().trim_start_matches("run-")
    )
}

fn summarize(
    var_dir: &std::path::Path,
    run_id: &str,
    report: &worker::WorkerReport,
) -> anyhow::Result<DemoSummary> {
    let reader = StoreReader::open(&telemetry_store::StoreConfig::in_var_dir(var_dir).path)
        .context("opening the demo store")?;
    let runs = reader.list_runs().context("listing runs")?;
    let filter = Filter::run(run_id);
    let mut steps = 0u64;
    for s in reader.stream_steps_since(0, &filter) {
        s.context("reading steps")?;
        steps += 1;
    }
    let mut episodes = 0u64;
    for e in reader.stream_episodes_since(0, &filter) {
        e.context("reading episodes")?;
        episodes += 1;
    }
    Ok(DemoSummary {
        run_id: run_id.to_owned(),
        runs: runs.len(),
        steps,
        episodes,
        produced: report.steps + report.episodes,
        shim_dropped: report.dropped,
        rejected: report.rejected,
    })
}
