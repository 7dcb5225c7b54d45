//! gRPC client glue: one place that turns `--endpoint` / `--auth-token` into the two generated
//! clients the viewer uses (`Query` for records, `RunControl` for run states).
//!
//! The channel is created lazily, so a viewer started before the daemon comes up (or while it
//! restarts) does not fail: each call reports "cannot connect" and the I/O layer retries. Every
//! request carries `authorization: Bearer <token>` when a token is configured.

use std::time::Duration;

use telemetry_core::pb::{query_client::QueryClient, run_control_client::RunControlClient};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Channel, Endpoint},
};

/// The daemon's default address (loopback only).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50151";

/// Largest message the viewer accepts from the daemon (untrusted bytes are bounded).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Where the daemon is and how to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// `http://host:port` of the daemon.
    pub endpoint: String,
    /// Sent as `authorization: Bearer <token>` when set.
    pub auth_token: Option<String>,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// A configuration for `endpoint` without a token and with a 3 s connect timeout.
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientConfig {
            endpoint: endpoint.into(),
            auth_token: None,
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// A configuration the client cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not a valid URI.
    #[error("invalid endpoint {endpoint:?}: {source}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why tonic refused it.
        source: tonic::transport::Error,
    },
    /// The token cannot be sent as an HTTP header value.
    #[error("invalid auth token: it must be visible ASCII without spaces")]
    Token,
    /// The daemon could not be reached.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint tried.
        endpoint: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
}

/// Adds `authorization: Bearer <token>` to every request when a token is configured.
#[derive(Debug, Clone, Default)]
pub struct AuthInterceptor {
    header: Option<MetadataValue<Ascii>>,
}

impl AuthInterceptor {
    /// An interceptor for `token` (`None`: requests go out unchanged).
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        let header = match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => {
                if !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(ClientError::Token);
                }
                Some(
                    format!("Bearer {t}")
                        .parse::<MetadataValue<Ascii>>()
                        .map_err(|_| ClientError::Token)?,
                )
            }
        };
        Ok(AuthInterceptor { header })
    }
}

impl Interceptor for AuthInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    }
}

/// The channel type both clients share.
pub type AuthChannel = InterceptedService<Channel, AuthInterceptor>;

/// The two gRPC clients of the viewer. Cloning is cheap (one shared HTTP/2 connection).
#[derive(Debug, Clone)]
pub struct Clients {
    /// Records and run summaries.
    pub query: QueryClient<AuthChannel>,
    /// Run states (`WatchRuns`).
    pub control: RunControlClient<AuthChannel>,
}

impl Clients {
    /// Clients over a lazily connected channel: this never waits for the daemon.
    pub fn lazy(config: &ClientConfig) -> Result<Self, ClientError> {
        let channel = endpoint(config)?.connect_lazy();
        Self::over(channel, config)
    }

    /// Clients over a channel connected now (fails fast when the daemon is not there).
    pub async fn connect(config: &ClientConfig) -> Result<Self, ClientError> {
        let channel = endpoint(config)?
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                endpoint: config.endpoint.clone(),
                source,
            })?;
        Self::over(channel, config)
    }

    fn over(channel: Channel, config: &ClientConfig) -> Result<Self, ClientError> {
        let auth = AuthInterceptor::new(config.auth_token.as_deref())?;
        let query = QueryClient::with_interceptor(channel.clone(), auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let control = RunControlClient::with_interceptor(channel, auth)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Clients { query, control })
    }
}

fn endpoint(config: &ClientConfig) -> Result<Endpoint, ClientError> {
    Ok(Endpoint::from_shared(config.endpoint.clone())
        .map_err(|source| ClientError::Endpoint {
            endpoint: config.endpoint.clone(),
            source,
        })?
        .connect_timeout(config.connect_timeout)
        .tcp_keepalive(Some(Duration::from_secs(30))))
}

/// A short, single-line description of a failed call for the status line.
pub fn describe_status(status: &tonic::Status) -> String {
    let msg = status.message().lines().next().unwrap_or_default();
    // tonic reports transport failures as Unavailable with the cause in the source chain.
    let mut detail = String::new();
    let mut src = std::error::Error::source(status);
    while let Some(e) = src {
        detail = e.to_string();
        src = e.source();
    }
    match (msg.is_empty(), detail.is_empty()) {
        (true, true) => format!("{:?}", status.code()),
        (false, true) => msg.to_owned(),
        (true, false) => detail,
        (false, false) if msg.contains(&detail) => msg.to_owned(),
        (false, false) => format!("{msg} ({detail})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_becomes_a_bearer_header() {
        let mut i = AuthInterceptor::new(Some("s3cret")).expect("valid token");
        let req = i.call(tonic::Request::new(())).expect("passes");
        assert_eq!(
            req.metadata().get("authorization").map(|v| v.to_str().ok()),
            Some(Some("Bearer s3cret"))
        );
        let mut none = AuthInterceptor::new(None).expect("no token");
        let req = none.call(tonic::Request::new(())).expect("passes");
        assert!(req.metadata().get("authorization").is_none());
    }

    #[test]
    fn token_with_control_characters_is_refused() {
        assert!(matches!(
            AuthInterceptor::new(Some("a\nb")),
            Err(ClientError::Token)
        ));
    }

    #[test]
    fn bad_endpoint_is_a_typed_error() {
        let err = Clients::lazy(&ClientConfig::new("not a uri")).expect_err("invalid");
        assert!(err.to_string().contains("not a uri"));
    }
}
