//! `gym-telemetry-viewer`: parses flags and hands over to the library (`--once` snapshot or the
//! terminal UI).

use std::io::Write as _;

use anyhow::Context as _;
use clap::Parser as _;
use telemetry_viewer::{once::run_once, tui::run_tui, Cli};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli)?;
    let config = cli.client_config()?;
    if cli.once {
        let mut out = Vec::new();
        run_once(&config, cli.run.as_deref(), &mut out).await?;
        std::io::stdout().write_all(&out)?;
        return Ok(());
    }
    run_tui(&config).await?;
    Ok(())
}

/// Logs go to `--log-file` when given; `--once` also logs warnings to stderr. The terminal UI
/// never writes logs to the screen it draws on.
fn init_logging(cli: &Cli) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    if let Some(path) = &cli.log_file {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init();
    } else if cli.once {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    Ok(())
}
