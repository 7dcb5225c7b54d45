//! A started server: where it listens, in-process publishing and subscribing, and shutdown.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use telemetry_hub::{Hub, SubscribeError, SubscribeOptions, Subscription};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{error::ServerError, publish::Publisher};

/// A started server. Dropping it does not stop the server: call [`ServerHandle::shutdown`] (or
/// cancel [`ServerHandle::stop_token`] and [`ServerHandle::wait`]).
pub struct ServerHandle {
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The bound metrics address.
    pub metrics_addr: Option<SocketAddr>,
    /// Runs the previous server left running, now failed as interrupted.
    pub interrupted_runs: Vec<String>,
    pub(crate) local: crate::local::LocalAccess,
    pub(crate) hub: Hub,
    pub(crate) publisher: Publisher,
    pub(crate) tls: bool,
    pub(crate) operator_token: Option<String>,
    pub(crate) credentials: crate::auth::Credentials,
    pub(crate) cancel: CancellationToken,
    pub(crate) join: JoinHandle<Result<(), ServerError>>,
    pub(crate) frames: std::sync::Arc<telemetry_frames::FrameStore>,
}

impl ServerHandle {
    /// The frame store (`<var-dir>/frames`) the `Frames` service serves: an in-process viewer
    /// (a dashboard) reads frames through it (`latest`, `get_ref`, `list_episode`, `stats`).
    pub fn frames(&self) -> &std::sync::Arc<telemetry_frames::FrameStore> {
        &self.frames
    }

    /// `http://127.0.0.1:PORT` (or the bound address; `https://` when serving TLS), what shims
    /// and viewers connect to.
    pub fn endpoint(&self) -> String {
        endpoint_for(self.addr, self.tls)
    }

    /// The operator token (`None` with `AuthConfig::InsecureNoAuth`), for in-process clients
    /// the application starts itself (the demo hands it to its worker and viewer). Never log it.
    pub fn operator_token(&self) -> Option<&str> {
        self.operator_token.as_deref()
    }

    /// A worker credential scoped to `run_id` (publish that run's records, heartbeat it, read),
    /// for a worker the application starts itself. `None` without credentials.
    pub fn worker_token(&self, run_id: &str) -> Option<String> {
        self.credentials.worker_token(run_id)
    }

    /// Publishes records in-process, through the same validation, commit, ack and publish as
    /// the gRPC `Ingest` service.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Subscribes to the hub in-process: stored records first (from the store), then live ones,
    /// with no gap and no duplicate at the seam, and `Lagged`/`Gap` notices when records are
    /// lost to a slow subscriber.
    pub fn subscribe(&self, opts: SubscribeOptions) -> Result<Subscription, SubscribeError> {
        self.hub.try_subscribe(opts)
    }

    /// Commands waiting in the store writer's queue now (at most
    /// [`WRITER_QUEUE`](crate::WRITER_QUEUE); when full, publishers wait: backpressure). Also
    /// exported as `gym_telemetry_writer_queue_depth`.
    pub fn writer_queue_depth(&self) -> usize {
        self.publisher.pipeline().queued()
    }

    /// In-process access for a front end mounted beside the gRPC API (the web dashboard):
    /// authentication, hub, store reader, queries and run control, cheap to clone.
    pub fn local_access(&self) -> crate::local::LocalAccess {
        self.local.clone()
    }

    /// The hub itself (metrics, and subscriptions that report refusal in-band).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Stops the server gracefully and waits for it: stops serving, stops workers, flushes,
    /// checkpoints, releases the lock.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.cancel.cancel();
        self.wait().await
    }

    /// Waits until the server stops (after [`ServerHandle::stop_token`] is cancelled or
    /// [`ServerHandle::shutdown`]).
    pub async fn wait(self) -> Result<(), ServerError> {
        match self.join.await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Io {
                what: "server task".into(),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// One round of the heartbeat timeout as of `now` (the housekeeping loop runs one every
    /// quarter of `heartbeat_timeout` with the real clock): running runs of this daemon whose
    /// last sign of life is more than `timeout` before `now` are failed, with a stored
    /// `RunCompleted`. Returns their ids. For embedders and tests that drive the clock.
    pub async fn enforce_heartbeats(
        &self,
        now: std::time::Instant,
        timeout: std::time::Duration,
    ) -> Vec<String> {
        self.local.registry.enforce_heartbeats(now, timeout).await
    }

    /// A run as this daemon's registry has it (its own, or shown from another daemon's rows).
    pub fn run_info(&self, run_id: &str) -> Option<telemetry_core::pb::RunInfo> {
        self.local.registry.get(run_id)
    }

    /// This daemon's identity on a shared store (`RunInfo.owner` of its runs; empty on a store
    /// of its own).
    pub fn owner(&self) -> &str {
        self.local.registry.owner()
    }

    /// A token that stops the server when cancelled (for signal handlers).
    pub fn stop_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// The URL clients use for a bound address: an unspecified address becomes loopback.
pub(crate) fn endpoint_for(addr: SocketAddr, tls: bool) -> String {
    let ip = if addr.ip().is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        addr.ip()
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_scheme_follows_tls() {
        let any: SocketAddr = "0.0.0.0:7000".parse().expect("addr");
        assert_eq!(endpoint_for(any, false), "http://127.0.0.1:7000");
        assert_eq!(endpoint_for(any, true), "https://127.0.0.1:7000");
    }
}
