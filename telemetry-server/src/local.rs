//! In-process access to a started server for front ends the application mounts beside it (the
//! web dashboard, `telemetry-web`): the same credentials, hub, store reader and services the
//! gRPC API uses, so an HTTP front end has no second copy of any rule (auth, ReadScalars
//! downsampling and its caps, ListRuns' merge of store and registry, SubmitRun's checks).
//! The frame store, the policy inventory and the run registry are shared the same way (the
//! dashboard's video and policy views).

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use telemetry_core::pb::{
    policies_server::Policies, query_server::Query, run_control_server::RunControl,
    CancelRunRequest, CancelRunResponse, GetPolicyRequest, GetPolicyResponse, ListPoliciesRequest,
    ListPoliciesResponse, ListRunsRequest, ListRunsResponse, ListTagsRequest, ListTagsResponse,
    ReadScalarsRequest, ReadScalarsResponse, Record, RunInfo, SubmitRunRequest, SubmitRunResponse,
};
use telemetry_frames::FrameStore;
use telemetry_hub::{Hub, SubscribeError, SubscribeOptions, Subscription};
use telemetry_store::BackendReader;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

use crate::{
    auth::{AuthError, Credentials, Principal},
    control::ControlService,
    policies::PoliciesService,
    query::QueryService,
    runs::Registry,
};

/// A cloneable view of a started server for in-process front ends. Every call runs as the
/// operator: the front end authenticates its own requests first with
/// [`LocalAccess::authenticate`] or [`LocalAccess::authenticate_web_session`].
#[derive(Clone)]
pub struct LocalAccess {
    pub(crate) credentials: Credentials,
    pub(crate) unauthenticated: Counter,
    pub(crate) hub: Hub,
    pub(crate) reader: Arc<dyn BackendReader>,
    pub(crate) query: QueryService,
    pub(crate) control: ControlService,
    pub(crate) cancel: CancellationToken,
    pub(crate) frames: Arc<FrameStore>,
    pub(crate) policies: PoliciesService,
    pub(crate) registry: Registry,
}

impl std::fmt::Debug for LocalAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAccess")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl LocalAccess {
    /// Who presents `token` (the gRPC bearer token rules); failures are counted in
    /// `gym_telemetry_unauthenticated_requests_total` like refused RPCs.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        self.counted(self.credentials.authenticate(token))
    }

    /// Whether `cookie` is the web session cookie's value (counted like
    /// [`LocalAccess::authenticate`] when it is not).
    pub fn authenticate_web_session(&self, cookie: Option<&str>) -> Result<Principal, AuthError> {
        self.counted(self.credentials.authenticate_web_session(cookie))
    }

    /// The web session cookie's value (`None` when the server runs without credentials).
    pub fn web_session(&self) -> Option<String> {
        self.credentials.web_session()
    }

    /// Whether the server requires credentials (false with `--insecure-no-auth`).
    pub fn requires_auth(&self) -> bool {
        self.credentials.web_session().is_some()
    }

    fn counted(&self, r: Result<Principal, AuthError>) -> Result<Principal, AuthError> {
        if r.is_err() {
            self.unauthenticated.inc();
        }
        r
    }

    /// Subscribes to the hub (catch-up from the store, then live; see
    /// [`crate::ServerHandle::subscribe`]).
    pub fn subscribe(&self, opts: SubscribeOptions) -> Result<Subscription, SubscribeError> {
        self.hub.try_subscribe(opts)
    }

    /// The shared store reader (keyset pages, tails).
    pub fn reader(&self) -> Arc<dyn BackendReader> {
        self.reader.clone()
    }

    /// `Query.ListRuns`, in-process.
    pub async fn list_runs(&self, req: ListRunsRequest) -> Result<ListRunsResponse, Status> {
        Ok(self.query.list_runs(Request::new(req)).await?.into_inner())
    }

    /// `Query.ReadScalars` (downsampled in the store, the service's caps), in-process.
    pub async fn read_scalars(
        &self,
        req: ReadScalarsRequest,
    ) -> Result<ReadScalarsResponse, Status> {
        Ok(self
            .query
            .read_scalars(Request::new(req))
            .await?
            .into_inner())
    }

    /// `Query.ListTags`, in-process.
    pub async fn list_tags(&self, req: ListTagsRequest) -> Result<ListTagsResponse, Status> {
        Ok(self.query.list_tags(Request::new(req)).await?.into_inner())
    }

    /// `RunControl.SubmitRun` as the operator, in-process.
    pub async fn submit_run(&self, req: SubmitRunRequest) -> Result<SubmitRunResponse, Status> {
        Ok(self
            .control
            .submit_run(Request::new(req))
            .await?
            .into_inner())
    }

    /// `RunControl.CancelRun` as the operator, in-process.
    pub async fn cancel_run(&self, req: CancelRunRequest) -> Result<CancelRunResponse, Status> {
        Ok(self
            .control
            .cancel_run(Request::new(req))
            .await?
            .into_inner())
    }

    /// The server's frame store (the same one `Frames` serves and writes).
    pub fn frame_store(&self) -> Arc<FrameStore> {
        self.frames.clone()
    }

    /// The server's var dir (where a front end writes what it makes, e.g. exported clips).
    pub fn var_dir(&self) -> &std::path::Path {
        &self.registry.var_dir
    }

    /// `Policies.ListPolicies`, in-process.
    pub async fn list_policies(
        &self,
        req: ListPoliciesRequest,
    ) -> Result<ListPoliciesResponse, Status> {
        Ok(self
            .policies
            .list_policies(Request::new(req))
            .await?
            .into_inner())
    }

    /// `Policies.GetPolicy`, in-process.
    pub async fn get_policy(&self, req: GetPolicyRequest) -> Result<GetPolicyResponse, Status> {
        Ok(self
            .policies
            .get_policy(Request::new(req))
            .await?
            .into_inner())
    }

    /// The registry's view of a run (its policy bindings and evaluation links), if it knows it.
    pub fn run_info(&self, run_id: &str) -> Option<RunInfo> {
        self.registry.get(run_id)
    }

    /// Stores records through the server's writer (and fans them out), e.g. the `Artifact` of a
    /// clip the front end exported. Returns once they are durable.
    pub async fn append_records(&self, records: Vec<Record>) -> Result<(), Status> {
        self.registry
            .writer()
            .append(records, Vec::new())
            .await
            .map(|_| ())
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    /// Cancelled when the server shuts down (a front end stops serving then).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}
