//! Why a server could not start or stopped with an error.

use std::net::SocketAddr;

use telemetry_store::StoreError;

use crate::lock::LockError;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding a non-loopback address with authentication turned off.
    #[error("refusing to listen on {0} with --insecure-no-auth: only loopback addresses may be served without authentication")]
    NeedsToken(SocketAddr),
    /// The operator credential could not be read or made.
    #[error("credentials: {0}")]
    Credentials(String),
    /// Another server holds the var dir.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// A socket or file could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The frame store (`<var-dir>/frames`) could not be opened.
    #[error("cannot open the frame store: {0}")]
    Frames(#[from] telemetry_frames::StoreError),
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(String),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}
