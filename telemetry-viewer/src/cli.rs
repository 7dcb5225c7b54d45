//! Command-line options (`--endpoint`, `--auth-token`, `--once`, `--run`), with the same
//! environment variables as the other gym-telemetry tools, and the same credential discovery.

use std::path::PathBuf;

use clap::Parser;

use telemetry_core::credentials::{self, CredentialError};

use crate::client::{ClientConfig, DEFAULT_ENDPOINT};

/// Terminal viewer of live and stored gym-telemetry runs.
#[derive(Debug, Clone, Parser)]
#[command(name = "gym-telemetry-viewer", version, about)]
pub struct Cli {
    /// The daemon's gRPC address (`host:port` gets `http://` in front).
    #[arg(long, env = "GYM_TELEMETRY_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Sent as `authorization: Bearer <token>`.
    #[arg(long, env = "GYM_TELEMETRY_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Print a plain-text snapshot of the runs and exit (for scripts and tests).
    #[arg(long)]
    pub once: bool,
    /// With `--once`: also list this run's episodes (seed, game, control mode).
    #[arg(long, requires = "once")]
    pub run: Option<String>,
    /// Write logs here (the terminal UI shows no logs; `--once` logs to stderr).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
}

impl Cli {
    /// The client configuration these options describe. Without `--auth-token`, the owner's
    /// credential is found as every client finds it (`telemetry_core::credentials`).
    pub fn client_config(&self) -> Result<ClientConfig, CredentialError> {
        let mut c = ClientConfig::new(normalize_endpoint(&self.endpoint));
        c.auth_token = match self.auth_token.clone().filter(|t| !t.is_empty()) {
            Some(t) => Some(t),
            None => credentials::discover_from_env()?.map(|d| d.token),
        };
        Ok(c)
    }
}

/// Adds `http://` to an address given without a scheme.
pub fn normalize_endpoint(endpoint: &str) -> String {
    let e = endpoint.trim();
    if e.contains("://") {
        e.to_owned()
    } else {
        format!("http://{e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_endpoint_gets_a_scheme() {
        let cli = Cli::try_parse_from([
            "v",
            "--endpoint",
            "127.0.0.1:1234",
            "--auth-token",
            "t",
            "--once",
            "--run",
            "r1",
        ])
        .expect("valid flags");
        let c = cli.client_config().expect("a token was given");
        assert_eq!(c.endpoint, "http://127.0.0.1:1234");
        assert_eq!(c.auth_token.as_deref(), Some("t"));
        assert_eq!(cli.run.as_deref(), Some("r1"));
        assert!(
            Cli::try_parse_from(["v", "--run", "r1"]).is_err(),
            "--run needs --once"
        );
    }
}
