//! The daemon serving TLS (a self-signed certificate made by rcgen, loopback only): plaintext
//! clients are refused, a tonic TLS client is acked, a shim given the CA file delivers and a
//! wrong CA delivers nothing, and the workers the daemon spawns are handed the `https://`
//! endpoint, the CA file and the name to check, with which the demo worker stores its run.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use common::*;
use telemetry_core::pb::{
    ingest_client::IngestClient, run_control_client::RunControlClient, RunState, RunStep,
    WatchRunsRequest,
};
use telemetry_server::{ServerHandle, TlsFiles};
use telemetry_shim::{FlushOutcome, ShimConfig, ShimError, Telemetry};
use telemetry_store::{Filter, StoreConfig, StoreReader};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A self-signed certificate for `names`, written as `<stem>.pem` / `<stem>.key` in `dir`.
struct SelfSigned {
    cert: PathBuf,
    key: PathBuf,
    pem: String,
}

fn self_signed(dir: &Path, stem: &str, names: &[&str]) -> SelfSigned {
    let ck = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .unwrap();
    let pem = ck.cert.pem();
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, &pem).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    SelfSigned { cert, key, pem }
}

async fn start_tls(var: &Path, cert: &SelfSigned, domain: Option<&str>) -> ServerHandle {
    let mut cfg = config(var);
    cfg.tls = Some(TlsFiles {
        cert: cert.cert.clone(),
        key: cert.key.clone(),
    });
    cfg.tls_client_domain = domain.map(str::to_owned);
    telemetry_server::start(cfg)
        .await
        .expect("TLS daemon starts")
}

/// A tonic channel trusting `ca` and checking the name `localhost`.
async fn tls_channel(d: &ServerHandle, ca: &str) -> Channel {
    Endpoint::from_shared(d.endpoint())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .expect("TLS connect")
}

fn stored_steps(var: &Path, run: &str) -> Vec<RunStep> {
    let reader = StoreReader::open(&StoreConfig::in_var_dir(var).path).unwrap();
    reader
        .stream_steps_since(0, &Filter::run(run))
        .map(Result::unwrap)
        .collect()
}

fn tls_shim(endpoint: &str, ca: &Path, run: &str) -> Telemetry {
    Telemetry::new(ShimConfig {
        endpoint: endpoint.into(),
        tls_ca_file: Some(ca.to_path_buf()),
        tls_domain: Some("localhost".into()),
        run_id: Some(run.into()),
        agent_id: Some("a0".into()),
        reconnect_max: Duration::from_millis(200),
        ..Default::default()
    })
    .expect("shim starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_clients_are_refused_and_tls_clients_acked() {
    let var = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let cert = self_signed(certs.path(), "daemon", &["localhost", "127.0.0.1"]);
    let d = start_tls(var.path(), &cert, None).await;
    let endpoint = d.endpoint();
    assert_eq!(endpoint, format!("https://{}", d.addr));

    // (a) Plaintext HTTP/2 to the TLS port fails, at connect or at the first call.
    let plain = bounded("plaintext attempt", async {
        let ch = Endpoint::from_shared(format!("http://{}", d.addr))
            .unwrap()
            .connect()
            .await?;
        IngestClient::new(ch)
            .publish_batch(batch(1, vec![step("plain", "p0", 1)]))
            .await
            .map_err(|s| s.to_string())?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .await;
    assert!(plain.is_err(), "a plaintext client was served");

    // (b) A TLS client trusting the certificate is acked.
    let mut ingest = IngestClient::new(tls_channel(&d, &cert.pem).await);
    let records: Vec<_> = (1..=3).map(|s| step("grpc", "p1", s)).collect();
    let ack = bounded("ack", ingest.publish_batch(batch(1, records)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.batch_id, ack.stored), (1, 3));
    assert_eq!(ack.watermarks[0].durable_seq, 3);
    d.shutdown().await.unwrap();
    assert_eq!(stored_steps(var.path(), "grpc").len(), 3);
    assert!(stored_steps(var.path(), "plain").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shim_with_the_ca_file_delivers_and_one_with_another_ca_does_not() {
    let var = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let cert = self_signed(certs.path(), "daemon", &["localhost", "127.0.0.1"]);
    let other = self_signed(certs.path(), "other", &["localhost", "127.0.0.1"]);
    let d = start_tls(var.path(), &cert, None).await;
    let endpoint = d.endpoint();

    // (c) The daemon's own certificate as the CA: every record is acked and stored.
    let report = tokio::task::block_in_place(|| {
        let s = tls_shim(&endpoint, &cert.cert, "shim-tls");
        for i in 0..50u64 {
            s.step(RunStep {
                step_index: i,
                reward: 1.0,
                action_json: "0".into(),
                ..Default::default()
            })
            .unwrap();
        }
        s.close(WAIT).unwrap()
    });
    assert_eq!(report.outcome, FlushOutcome::Acked, "{report:?}");
    assert_eq!(report.acked_through, 50);

    // A certificate the shim does not trust: nothing is delivered, the failure is reported.
    let refused = tokio::task::block_in_place(|| {
        let s = tls_shim(&endpoint, &other.cert, "shim-untrusted");
        s.step(RunStep::default()).unwrap();
        let started = std::time::Instant::now();
        let r = s.flush(WAIT);
        // An untrusted certificate cannot heal by waiting: answered at once, not at WAIT.
        assert!(started.elapsed() < WAIT / 2, "answered at once");
        s.abandon();
        r
    });
    match refused {
        Err(ShimError::NotDelivered { pending, reason }) => {
            assert_eq!(pending, 1);
            assert!(reason.to_lowercase().contains("certificate"), "{reason}");
        }
        other => panic!("expected NotDelivered, got {other:?}"),
    }
    d.shutdown().await.unwrap();
    assert_eq!(stored_steps(var.path(), "shim-tls").len(), 50);
    assert!(stored_steps(var.path(), "shim-untrusted").is_empty());
}

#[tokio::test]
async fn spawned_workers_get_the_https_endpoint_the_ca_and_the_name() {
    let var = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    // Names `localhost` only: a worker checking the endpoint's IP would fail, so the demo
    // worker's success shows the daemon handed it the name as well as the CA.
    let cert = self_signed(certs.path(), "daemon", &["localhost"]);
    let d = start_tls(var.path(), &cert, Some("localhost")).await;
    let mut control = RunControlClient::new(tls_channel(&d, &cert.pem).await);
    let mut watch = control
        .watch_runs(WatchRunsRequest {})
        .await
        .unwrap()
        .into_inner();

    // The environment, including over stale values the request tries to set.
    let ca = std::fs::canonicalize(&cert.cert).unwrap();
    let check = format!(
        "test \"$GYM_TELEMETRY_ENDPOINT\" = {} && test \"$GYM_TELEMETRY_TLS_CA_FILE\" = {} \
         && test \"$GYM_TELEMETRY_TLS_DOMAIN\" = localhost",
        d.endpoint(),
        ca.display()
    );
    control
        .submit_run(submit_with_env(
            "env",
            &["sh", "-c", &check],
            &[
                ("GYM_TELEMETRY_TLS_CA_FILE", "/stale/ca.pem"),
                ("GYM_TELEMETRY_TLS_DOMAIN", "stale.example"),
            ],
        ))
        .await
        .unwrap();
    let env = until_final(&mut watch, "env").await;
    assert_eq!(env.state, RunState::Completed as i32, "{env:?}");

    // (d) The built-in worker, a real shim in another process, stores its run over TLS.
    let exe = demo_exe();
    control
        .submit_run(submit_with_env(
            "demo",
            &[exe.to_str().unwrap(), "worker", "--episodes", "2"],
            &[],
        ))
        .await
        .unwrap();
    let demo = until_final(&mut watch, "demo").await;
    assert_eq!(demo.state, RunState::Completed as i32, "{demo:?}");
    d.shutdown().await.unwrap();

    let reader = StoreReader::open(&StoreConfig::in_var_dir(var.path()).path).unwrap();
    let runs = reader.list_runs().unwrap();
    let demo = runs
        .iter()
        .find(|r| r.run_id == "demo")
        .expect("demo stored");
    assert_eq!(demo.episode_count, 4, "2 agents x 2 episodes");
    assert!(demo.step_count > 0);
}
