//! Security against the real server on loopback, with its default configuration: every RPC
//! needs a credential (the owner's is made on first start, in a private file), workers get
//! credentials scoped to their run, producer ids cannot be borrowed, files are private, and
//! reflection and `/metrics` need a credential off loopback. The other-account checks run as
//! `nobody` through `setpriv` where the tests run as root (CI does), and say so when skipped.
//! Each case is a row of the security table in docs/RELIABILITY.md.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{Read, Write},
    os::unix::fs::PermissionsExt,
    path::Path,
};

use common::{batch, bounded, step, workspace_bin};
use telemetry_core::pb::{
    ingest_client::IngestClient, query_client::QueryClient, run_control_client::RunControlClient,
    CancelRunRequest, HeartbeatRequest, ListRunsRequest, RunState, WatchRunsRequest,
};
use telemetry_server::{ServerConfig, ServerHandle};
use tonic::{
    metadata::MetadataValue,
    service::{interceptor::InterceptedService, Interceptor},
    transport::Channel,
    Code, Request, Status,
};

#[derive(Clone)]
struct Bearer(Option<String>);

impl Interceptor for Bearer {
    fn call(&mut self, mut r: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            r.metadata_mut().insert(
                "authorization",
                MetadataValue::try_from(format!("Bearer {t}")).unwrap(),
            );
        }
        Ok(r)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

async fn channel(d: &ServerHandle) -> Channel {
    Channel::from_shared(d.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn ingest(d: &ServerHandle, token: Option<&str>) -> IngestClient<Authed> {
    IngestClient::with_interceptor(channel(d).await, Bearer(token.map(str::to_owned)))
}

async fn control(d: &ServerHandle, token: Option<&str>) -> RunControlClient<Authed> {
    RunControlClient::with_interceptor(channel(d).await, Bearer(token.map(str::to_owned)))
}

async fn query(d: &ServerHandle, token: Option<&str>) -> QueryClient<Authed> {
    QueryClient::with_interceptor(channel(d).await, Bearer(token.map(str::to_owned)))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

async fn start_default(var: &Path) -> ServerHandle {
    let mut cfg = ServerConfig::ephemeral(var);
    cfg.proxy_exe = workspace_bin("gym-telemetry-proxy");
    telemetry_server::start(cfg).await.unwrap()
}

#[tokio::test]
async fn every_rpc_needs_a_credential_on_loopback_and_the_owners_is_made_private() {
    let dir = tempfile::tempdir().unwrap();
    let var = dir.path().join("var");
    let d = start_default(&var).await;
    let token_file = var.join("auth-token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(token.len(), 64, "32 random bytes as hex");
    assert_eq!(d.operator_token(), Some(token.as_str()));

    // No credential: refused, on loopback too.
    let err = ingest(&d, None)
        .await
        .publish_batch(batch(1, vec![step("r", "p", 1)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("auth-token"),
        "says where the owner's is: {err}"
    );
    let err = query(&d, None)
        .await
        .list_runs(ListRunsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = control(&d, None)
        .await
        .submit_run(common::submit("x", &["sh", "-c", "true"]))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "nobody else can make it run commands"
    );
    let err = control(&d, Some("guess"))
        .await
        .cancel_run(CancelRunRequest { run_id: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // gRPC health stays open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&d).await);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(
        h.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // The owner's token works.
    let ack = ingest(&d, Some(&token))
        .await
        .publish_batch(batch(1, vec![step("r", "p", 1)]))
        .await
        .unwrap();
    assert_eq!(ack.into_inner().stored, 1);

    // Files are private: the var dir 0700, the store, its WAL, the token, lock and PID 0600.
    assert_eq!(mode(&var), 0o700);
    for f in [
        "auth-token",
        "telemetry.sqlite",
        "telemetry.sqlite-wal",
        "daemon.lock",
        "daemon.pid",
    ] {
        assert_eq!(mode(&var.join(f)), 0o600, "{f}");
    }
    d.shutdown().await.unwrap();

    // A restart keeps the same token.
    let d = start_default(&var).await;
    assert_eq!(d.operator_token(), Some(token.as_str()));
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_worker_credential_writes_only_its_own_run_and_controls_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_default(dir.path()).await;
    let worker = d.worker_token("r1").unwrap();
    assert!(!worker.contains(d.operator_token().unwrap()));

    let ack = ingest(&d, Some(&worker))
        .await
        .publish_batch(batch(1, vec![step("r1", "wp", 1), step("r2", "wp", 2)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.stored, 1, "{ack:?}");
    assert_eq!(ack.rejected.len(), 1);
    assert_eq!(ack.rejected[0].index, 1);
    assert!(ack.rejected[0].reason.contains("r2"), "{ack:?}");
    // Its own producer's watermark still covers the refused record, so its flush can end.
    assert_eq!(ack.watermarks[0].durable_seq, 2, "{ack:?}");

    let mut ctl = control(&d, Some(&worker)).await;
    let err = ctl
        .submit_run(common::submit("x", &["sh", "-c", "true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = ctl
        .cancel_run(CancelRunRequest {
            run_id: "r1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = ctl
        .heartbeat(HeartbeatRequest {
            run_id: "r2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        ctl.heartbeat(HeartbeatRequest {
            run_id: "r1".into()
        })
        .await
        .unwrap()
        .into_inner()
        .known
    );
    // Reading is allowed.
    let runs = query(&d, Some(&worker))
        .await
        .list_runs(ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs.len(), 1);
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn producer_ids_belong_to_the_credential_that_first_used_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_default(dir.path()).await;
    let operator = d.operator_token().unwrap().to_owned();
    let worker = d.worker_token("r1").unwrap();
    ingest(&d, Some(&operator))
        .await
        .publish_batch(batch(1, vec![step("r1", "victim", 1)]))
        .await
        .unwrap();
    // The worker of r1 tries to poison the victim's watermark with a huge seq.
    let ack = ingest(&d, Some(&worker))
        .await
        .publish_batch(batch(2, vec![step("r1", "victim", u64::MAX - 1)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.stored, ack.rejected.len()), (0, 1), "{ack:?}");
    assert!(
        ack.rejected[0].reason.contains("another credential"),
        "{ack:?}"
    );
    // The victim's next record is stored: its watermark did not move.
    let ack = ingest(&d, Some(&operator))
        .await
        .publish_batch(batch(3, vec![step("r1", "victim", 2)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.stored, 1, "{ack:?}");
    assert_eq!(ack.watermarks[0].durable_seq, 2);
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_workers_get_a_run_scoped_credential_through_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let var = dir.path().join("var");
    let d = start_default(&var).await;
    let operator = d.operator_token().unwrap().to_owned();
    let out = dir.path().join("env.txt");
    let mut ctl = control(&d, Some(&operator)).await;
    let mut watch = ctl
        .watch_runs(WatchRunsRequest {})
        .await
        .unwrap()
        .into_inner();
    let script = format!("env > {}", out.display());
    ctl.submit_run(common::submit("spawned", &["sh", "-c", &script]))
        .await
        .unwrap();
    let info = common::until_final(&mut watch, "spawned").await;
    assert_eq!(info.state, RunState::Completed as i32, "{info:?}");
    let env = std::fs::read_to_string(&out).unwrap();
    let token = env
        .lines()
        .find_map(|l| l.strip_prefix("GYM_TELEMETRY_AUTH_TOKEN="))
        .expect("the worker has a token");
    assert!(token.starts_with("worker.spawned."), "scoped to its run");
    assert!(
        !env.contains(&operator),
        "the operator token is not handed out"
    );
    assert!(!env.contains("GYM_TELEMETRY_AUTH_TOKEN_FILE"));
    // Its log is private too.
    assert_eq!(mode(&var.join("runs/spawned/worker.log")), 0o600);
    assert_eq!(mode(&var.join("runs/spawned")), 0o700);
    d.shutdown().await.unwrap();
}

/// A plain HTTP/1.1 GET of `/metrics` (status code and body).
fn get_metrics(addr: std::net::SocketAddr, auth: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", addr.port())).unwrap();
    s.set_read_timeout(Some(common::WAIT)).unwrap();
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    (code, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_and_metrics_need_a_credential_off_loopback() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, ServerReflectionRequest,
    };
    let list = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    // Off loopback (all interfaces; connected through 127.0.0.1).
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::ephemeral(dir.path());
    cfg.listen = "0.0.0.0:0".parse().unwrap();
    cfg.metrics_listen = Some("0.0.0.0:0".parse().unwrap());
    let d = telemetry_server::start(cfg).await.unwrap();
    let token = d.operator_token().unwrap().to_owned();
    let anon = ServerReflectionClient::new(channel(&d).await)
        .server_reflection_info(tokio_stream::iter([list()]))
        .await;
    assert_eq!(anon.unwrap_err().code(), Code::Unauthenticated);
    let mut authed =
        ServerReflectionClient::with_interceptor(channel(&d).await, Bearer(Some(token.clone())));
    let mut replies = authed
        .server_reflection_info(tokio_stream::iter([list()]))
        .await
        .unwrap()
        .into_inner();
    assert!(bounded("reflection", replies.message())
        .await
        .unwrap()
        .is_some());

    let maddr = d.metrics_addr.unwrap();
    let (code, _) = tokio::task::spawn_blocking(move || get_metrics(maddr, None))
        .await
        .unwrap();
    assert_eq!(code, 401);
    let t = token.clone();
    let (code, body) = tokio::task::spawn_blocking(move || get_metrics(maddr, Some(&t)))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("gym_telemetry_unauthenticated_requests"),
        "{body}"
    );
    d.shutdown().await.unwrap();

    // On loopback, reflection stays open (grpcurl list works) and /metrics needs nothing.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::ephemeral(dir.path());
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let d = telemetry_server::start(cfg).await.unwrap();
    let mut open = ServerReflectionClient::new(channel(&d).await);
    assert!(open
        .server_reflection_info(tokio_stream::iter([list()]))
        .await
        .is_ok());
    let maddr = d.metrics_addr.unwrap();
    let (code, _) = tokio::task::spawn_blocking(move || get_metrics(maddr, None))
        .await
        .unwrap();
    assert_eq!(code, 200);
    d.shutdown().await.unwrap();
}

/// Runs `argv` as the unprivileged `nobody` account; `None` when this process cannot switch
/// users (not root).
fn as_nobody(argv: &[&str], env: &[(&str, &str)]) -> Option<std::process::Output> {
    if !nix_is_root() {
        eprintln!("SKIPPED (other-account part): not running as root, cannot become nobody");
        return None;
    }
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Some(cmd.output().expect("setpriv runs"))
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_account_can_read_no_telemetry_and_no_token() {
    // The var dir must be reachable by path for the other account to even try: a world-
    // traversable parent, as /tmp is.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let var = dir.path().join("var");
    let d = start_default(&var).await;
    ingest(&d, d.operator_token())
        .await
        .publish_batch(batch(1, vec![step("secret-run", "p", 1)]))
        .await
        .unwrap();
    let token_file = var.join("auth-token");
    let Some(cat) = as_nobody(&["cat", token_file.to_str().unwrap()], &[]) else {
        d.shutdown().await.unwrap();
        return;
    };
    assert!(!cat.status.success(), "nobody cannot read the token");
    let store = var.join("telemetry.sqlite");
    let read = as_nobody(&["cat", store.to_str().unwrap()], &[]).unwrap();
    assert!(!read.status.success(), "nobody cannot read the store");

    // The viewer run as nobody, pointed at this var dir and endpoint, gets no data. (First: the
    // binary itself runs as nobody, so a refusal below is the server's, not the file system's.)
    let viewer = workspace_bin("gym-telemetry-viewer");
    let runs = as_nobody(&[viewer.to_str().unwrap(), "--version"], &[]).unwrap();
    if !runs.status.success() {
        eprintln!(
            "SKIPPED (viewer as nobody): {} is not executable by nobody",
            viewer.display()
        );
        d.shutdown().await.unwrap();
        return;
    }
    let endpoint = d.endpoint();
    let out = tokio::task::spawn_blocking(move || {
        as_nobody(
            &[viewer.to_str().unwrap(), "--once", "--endpoint", &endpoint],
            &[("GYM_TELEMETRY_VAR_DIR", var.to_str().unwrap())],
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("secret-run"), "{stdout}");
    d.shutdown().await.unwrap();
}
