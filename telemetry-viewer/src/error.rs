//! The viewer's error type: what can stop `--once` or the terminal UI (the UI itself never stops
//! on a daemon error; it shows it and retries).

use crate::client::ClientError;

/// Why the viewer could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    /// The client configuration is unusable or the daemon is unreachable.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A call to the daemon failed.
    #[error("{call} failed: {message}")]
    Rpc {
        /// The RPC.
        call: &'static str,
        /// What the daemon (or the transport) said.
        message: String,
    },
    /// The terminal could not be set up, drawn to or written to.
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

impl ViewerError {
    pub(crate) fn rpc(call: &'static str, status: &tonic::Status) -> Self {
        ViewerError::Rpc {
            call,
            message: crate::client::describe_status(status),
        }
    }
}
