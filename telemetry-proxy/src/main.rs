//! `gym-telemetry-proxy`: a thin shell over the `telemetry_proxy` library (run a legacy JSONL
//! worker, deliver its telemetry, exit with its code).

use clap::Parser;
use std::process::ExitCode;
use telemetry_proxy::{self as proxy, ProxyArgs};
use tracing_subscriber::EnvFilter;

/// Writes a line to stderr, ignoring failure: the daemon that spawned us may be dead, and
/// `eprintln!` panics when its pipe is gone (EPIPE).
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // A failed log write must not be reported with `eprintln!`, which panics on EPIPE: the
        // panic would kill whichever thread logged, e.g. the shim's sender thread, warning that
        // the daemon went away, and every record after it would stay in memory, undelivered.
        .log_internal_errors(false)
        .with_env_filter(
            EnvFilter::try_from_env("GYM_TELEMETRY_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    let args = ProxyArgs::parse();
    match proxy::run(&args) {
        Ok(summary) => {
            say(&summary.line());
            if let Some(line) = summary.undelivered_line() {
                say(&line);
            }
            ExitCode::from(u8::try_from(summary.exit_code.rem_euclid(256)).unwrap_or(1))
        }
        Err(e) => {
            say(&format!("gym-telemetry-proxy: {e}"));
            ExitCode::from(2)
        }
    }
}
