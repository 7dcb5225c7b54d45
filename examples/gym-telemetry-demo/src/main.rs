//! `gym-telemetry-demo`: a thin shell over the `gym_telemetry_demo` library.
//!
//! `gym-telemetry-demo [--headless]` runs a server, the two-agent demo worker and the live
//! terminal viewer; `gym-telemetry-demo worker` runs only the worker, as a process (what
//! `SubmitRun` starts), against `GYM_TELEMETRY_ENDPOINT`.

use std::{process::ExitCode, time::Duration};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use gym_telemetry_demo::{worker, DemoArgs};
use tracing_subscriber::EnvFilter;

/// gym-telemetry's demo: a server, a two-agent grid-world worker and the live terminal viewer.
#[derive(Debug, Parser)]
#[command(name = "gym-telemetry-demo", version, about)]
struct Cli {
    /// The demo itself (when no subcommand is given).
    #[command(flatten)]
    demo: DemoArgs,
    /// Run only the worker.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The built-in demo worker as a process (also submittable as a run with SubmitRun).
    Worker(WorkerArgs),
}

/// `worker`.
#[derive(Debug, Args)]
struct WorkerArgs {
    /// Episodes per agent.
    #[arg(long, default_value_t = 60)]
    episodes: u32,
    /// Number of agents (each its own shim and agent id).
    #[arg(long, default_value_t = 2)]
    agents: u32,
    /// Milliseconds between steps.
    #[arg(long, default_value_t = 0)]
    step_delay_ms: u64,
    /// Run id (default: GYM_TELEMETRY_RUN_ID, else generated).
    #[arg(long)]
    run_id: Option<String>,
    /// Seed of the first agent (the others add 1, 2, ...).
    #[arg(long, env = "GYM_TELEMETRY_SEED", default_value_t = 7)]
    seed: u64,
    /// The control mode the records carry (`human` makes Human Replay episodes).
    #[arg(long, default_value = "multi_agent")]
    control_mode: telemetry_core::ControlMode,
}

/// Writes a line to stderr, ignoring failure (`eprintln!` panics when the pipe to a dead
/// daemon is gone).
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The TUI owns the terminal: logs go to stderr only when headless or running the worker.
    let quiet = cli.command.is_none() && !cli.demo.headless;
    let default = if quiet { "warn" } else { "info" };
    let filter = std::env::var("GYM_TELEMETRY_LOG").unwrap_or_else(|_| default.to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(default)))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // As a spawned worker our stderr is a pipe to the daemon; if the daemon dies, a failed
        // log write must not be reported with `eprintln!` (it panics on EPIPE and would kill
        // the thread that logged: the shim's sender, which logs that the daemon went away).
        .log_internal_errors(false)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("gym-telemetry-demo: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Worker(a)) => run_worker(a),
        None => {
            let headless = cli.demo.headless;
            let summary = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(gym_telemetry_demo::run(cli.demo))?;
            println!("{summary}");
            if headless && summary.steps + summary.episodes != summary.produced {
                bail!("the store does not hold every record the demo produced");
            }
            Ok(())
        }
    }
}

fn run_worker(a: WorkerArgs) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let cfg = worker::WorkerConfig {
        endpoint: env("GYM_TELEMETRY_ENDPOINT")
            .unwrap_or_else(|| format!("http://{}", telemetry_server::DEFAULT_LISTEN)),
        run_id: a
            .run_id
            .or_else(|| env("GYM_TELEMETRY_RUN_ID"))
            .unwrap_or_else(telemetry_server::new_run_id),
        agents: a.agents.max(1),
        episodes: a.episodes,
        step_delay: Duration::from_millis(a.step_delay_ms),
        seed: a.seed,
        queue_dir: env("GYM_TELEMETRY_QUEUE_DIR").map(Into::into),
        auth_token: None,
        control_mode: a.control_mode,
    };
    let report = worker::run(&cfg)?;
    say(&format!("demo worker done: {report:?}"));
    Ok(())
}
