//! The daemon's guards: one instance per var dir, bearer-token auth, loopback by default,
//! recovery of runs a killed daemon left running.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use telemetry_core::pb::{ingest_client::IngestClient, RunInfo, RunState};
use telemetry_server::{ServerError, ServerHandle};
use tonic::{metadata::MetadataValue, Request};

#[tokio::test]
async fn a_second_daemon_on_the_same_var_dir_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path()).await;
    let err = match telemetry_server::start(config(dir.path())).await {
        Err(e) => e,
        Ok(_) => panic!("second daemon must not start"),
    };
    assert!(matches!(err, ServerError::Lock(_)), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    d.shutdown().await.unwrap();
    // Released on shutdown: a new daemon starts.
    start(dir.path()).await.shutdown().await.unwrap();
}

#[tokio::test]
async fn non_loopback_refuses_insecure_no_auth_and_tokens_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let mut open = config(dir.path());
    open.listen = "0.0.0.0:0".parse().unwrap();
    assert!(matches!(
        telemetry_server::start(open).await,
        Err(ServerError::NeedsToken(_))
    ));

    let mut cfg = config(dir.path());
    cfg.auth = telemetry_server::AuthConfig::Token("s3cret".into());
    let d: ServerHandle = telemetry_server::start(cfg).await.unwrap();
    let ch = channel(&d).await;
    let mut anon = IngestClient::new(ch.clone());
    let err = anon
        .publish_batch(batch(1, vec![step("a", "p", 1)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let token: MetadataValue<_> = "Bearer s3cret".parse().unwrap();
    let mut authed = IngestClient::with_interceptor(ch, move |mut r: Request<()>| {
        r.metadata_mut().insert("authorization", token.clone());
        Ok(r)
    });
    let ack = authed
        .publish_batch(batch(1, vec![step("a", "p", 1)]))
        .await
        .unwrap();
    assert_eq!(ack.into_inner().stored, 1);
    d.shutdown().await.unwrap();
}

#[tokio::test]
async fn runs_left_running_by_a_dead_daemon_are_failed_as_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    // What a daemon killed with -9 leaves: a running run in the registry and a PID file.
    {
        let mut store =
            telemetry_store::Store::open(telemetry_store::StoreConfig::in_var_dir(dir.path()))
                .unwrap();
        store
            .put_run_info(&RunInfo {
                run_id: "orphan".into(),
                state: RunState::Running as i32,
                // Spawned by that daemon; the process is gone (no such pid).
                worker_pid: Some(u32::MAX - 1),
                worker_start_ticks: Some(12345),
                ..Default::default()
            })
            .unwrap();
    }
    std::fs::write(
        dir.path().join("daemon.pid"),
        "pid 999999\nlisten 127.0.0.1:1\n",
    )
    .unwrap();
    let d = start(dir.path()).await;
    assert_eq!(d.interrupted_runs, vec!["orphan".to_owned()]);
    let (_, _, mut control) = clients(&d).await;
    let mut watch = control
        .watch_runs(telemetry_core::pb::WatchRunsRequest {})
        .await
        .unwrap()
        .into_inner();
    let info = bounded("orphan", async {
        loop {
            let i = tokio_stream::StreamExt::next(&mut watch)
                .await
                .unwrap()
                .unwrap();
            if i.run_id == "orphan" {
                return i;
            }
        }
    })
    .await;
    assert_eq!(info.state, RunState::Failed as i32);
    assert!(info.failure_reason.contains("interrupted"));
    // Its live views end: a RunCompleted (failed, with the reason) is stored.
    let reader = telemetry_store::StoreReader::open(
        &telemetry_store::StoreConfig::in_var_dir(dir.path()).path,
    )
    .unwrap();
    let done = reader
        .run_completion("orphan")
        .unwrap()
        .expect("a stored RunCompleted");
    assert_eq!(
        done.status,
        telemetry_core::pb::CompletionStatus::Failed as i32
    );
    assert!(done.error.contains("interrupted"), "{done:?}");
    d.shutdown().await.unwrap();
}
