//! `gym-telemetry-proxy`: a thin shell over the `telemetry_proxy` library (run a legacy JSONL
//! worker, deliver its telemetry, exit with its code).

use clap::Parser;
use std::process::ExitCode;
use telemetry_proxy::{self as proxy, ProxyArgs};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_env("GYM_TELEMETRY_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    let args = ProxyArgs::parse();
    match proxy::run(&args) {
        Ok(summary) => {
            eprintln!("{}", summary.line());
            if let Some(line) = summary.undelivered_line() {
                eprintln!("{line}");
            }
            ExitCode::from(u8::try_from(summary.exit_code.rem_euclid(256)).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("gym-telemetry-proxy: {e}");
            ExitCode::from(2)
        }
    }
}
