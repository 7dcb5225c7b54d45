//! The dashboard's errors: start-up failures, and API failures mapped to HTTP statuses with a
//! JSON body (never echoing a credential or a request URL).

use std::net::SocketAddr;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};

/// Why the dashboard could not start or serve, or why an API request failed.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The listen address could not be bound.
    #[error("cannot listen for the web dashboard on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("web dashboard: {0}")]
    Serve(std::io::Error),
    /// Off loopback without credentials (`--insecure-no-auth`): refused.
    #[error("the web dashboard on {0} would serve every telemetry without a credential: keep it on loopback or drop --insecure-no-auth")]
    NeedsAuth(SocketAddr),
    /// A request parameter is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The server's service refused or failed.
    #[error("{0}")]
    Service(#[from] tonic::Status),
    /// A store read failed.
    #[error("store: {0}")]
    Store(#[from] telemetry_store::StoreError),
    /// Too many SSE streams are open.
    #[error("{0} live streams are open, the most the dashboard serves at once")]
    TooManyStreams(usize),
    /// The hub refused the subscription.
    #[error("{0}")]
    Subscribe(#[from] telemetry_hub::SubscribeError),
    /// What the request names does not exist (an episode without frames, a policy).
    #[error("{0}")]
    NotFound(String),
    /// The resource is busy (one export at a time).
    #[error("{0}")]
    Busy(String),
    /// A blocking read task failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl WebError {
    fn status(&self) -> StatusCode {
        use tonic::Code;
        match self {
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            WebError::TooManyStreams(_) | WebError::Subscribe(_) => StatusCode::SERVICE_UNAVAILABLE,
            WebError::Service(s) => match s.code() {
                Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
                Code::NotFound => StatusCode::NOT_FOUND,
                Code::PermissionDenied => StatusCode::FORBIDDEN,
                Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                Code::ResourceExhausted | Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                Code::FailedPrecondition | Code::AlreadyExists => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            WebError::Service(s) => s.message().to_owned(),
            other => other.to_string(),
        };
        if status.is_server_error() {
            tracing::warn!(error = %message, "web API request failed");
        }
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}
