//! The shim against the real daemon: daemon down -> worker runs -> daemon up -> every record
//! stored exactly once; a worker killed with SIGKILL mid-run and its queue drained by a new
//! shim -> exactly once, nothing synced lost; the headless demo stores all it produces.
#![allow(clippy::unwrap_used)]

mod common;

use std::{net::TcpListener, path::Path, time::Duration};

use common::*;
use telemetry_core::pb::RunStep;
use telemetry_shim::{ShimConfig, Telemetry};
use telemetry_store::{Filter, StoreConfig, StoreReader};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn shim(endpoint: &str, queue: &Path) -> Telemetry {
    Telemetry::new(ShimConfig {
        endpoint: endpoint.into(),
        run_id: Some("offline".into()),
        agent_id: Some("a0".into()),
        queue_dir: Some(queue.to_path_buf()),
        reconnect_max: Duration::from_millis(200),
        ..Default::default()
    })
    .unwrap()
}

fn stored_steps(var: &Path, run: &str) -> Vec<RunStep> {
    let reader = StoreReader::open(&StoreConfig::in_var_dir(var).path).unwrap();
    reader
        .stream_steps_since(0, &Filter::run(run))
        .map(Result::unwrap)
        .collect()
}

/// Producer seqs of every record of `run` (steps, episodes, scalars, lifecycle: one producer
/// counter).
fn stored_producer_seqs(var: &Path, run: &str) -> Vec<u64> {
    let reader = StoreReader::open(&StoreConfig::in_var_dir(var).path).unwrap();
    let filter = Filter::run(run);
    let mut seqs: Vec<u64> = reader
        .stream_steps_since(0, &filter)
        .map(|s| s.unwrap().producer_seq)
        .collect();
    seqs.extend(
        reader
            .stream_episodes_since(0, &filter)
            .map(|e| e.unwrap().producer_seq),
    );
    let mut since = 0;
    loop {
        let page = reader.read_scalars_page(since, &filter, 1000).unwrap();
        let Some(last) = page.last() else { break };
        since = last.seq_id;
        seqs.extend(page.iter().map(|s| s.producer_seq));
    }
    seqs.extend(
        reader
            .events_since(0, Some(run), 10_000)
            .unwrap()
            .iter()
            .map(|r| r.producer().1),
    );
    seqs
}

fn assert_exactly_once_and_contiguous(mut seqs: Vec<u64>) {
    seqs.sort_unstable();
    let n = seqs.len() as u64;
    assert!(n > 0);
    let mut dedup = seqs.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), seqs.len(), "no record stored twice");
    assert_eq!(
        seqs,
        (seqs[0]..seqs[0] + n).collect::<Vec<_>>(),
        "no hole: nothing synced was lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_then_online_stores_every_record_exactly_once() {
    let var = tempfile::tempdir().unwrap();
    let queue = tempfile::tempdir().unwrap();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");

    // Daemon down: the worker runs anyway and its records go to the disk queue.
    let s = shim(&endpoint, queue.path());
    for i in 0..500u64 {
        s.step(RunStep {
            step_index: i,
            reward: 1.0,
            action_json: "0".into(),
            ..Default::default()
        })
        .unwrap();
    }
    // The flush waits out its (short) timeout reconnecting, then reports the queue.
    let report = tokio::task::block_in_place(|| s.flush(Duration::from_millis(300))).unwrap();
    assert_eq!(
        report.outcome,
        telemetry_shim::FlushOutcome::OnDisk,
        "{report:?}"
    );
    assert_eq!(report.pending_records, 500, "{report:?}");
    assert_eq!(s.stats().spilled, 500);

    // Daemon up on that port: the shim reconnects and delivers.
    let mut cfg = config(var.path());
    cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let d = telemetry_server::start(cfg).await.unwrap();
    tokio::task::block_in_place(|| {
        // One flush keeps reconnecting until the daemon acks everything.
        let r = s.flush(WAIT).unwrap();
        assert_eq!(r.outcome, telemetry_shim::FlushOutcome::Acked, "{r:?}");
        let r = s.close(WAIT).unwrap();
        assert_eq!(r.outcome, telemetry_shim::FlushOutcome::Acked, "{r:?}");
    });
    d.shutdown().await.unwrap();
    assert_eq!(stored_steps(var.path(), "offline").len(), 500);
    assert_exactly_once_and_contiguous(stored_producer_seqs(var.path(), "offline"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_nothing_it_synced_and_duplicates_nothing() {
    let var = tempfile::tempdir().unwrap();
    let queue = tempfile::tempdir().unwrap();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut cfg = config(var.path());
    cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let d = telemetry_server::start(cfg).await.unwrap();

    // A real worker process, killed with SIGKILL while it sends.
    let mut child = std::process::Command::new(demo_exe())
        .args([
            "worker",
            "--episodes",
            "100000",
            "--agents",
            "1",
            "--run-id",
            "killed",
        ])
        .env("GYM_TELEMETRY_ENDPOINT", &endpoint)
        .env("GYM_TELEMETRY_QUEUE_DIR", queue.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) until some of its telemetry is stored, then kill it.
    bounded("first records", async {
        loop {
            let n = tokio::task::spawn_blocking({
                let p = var.path().to_path_buf();
                move || stored_steps(&p, "killed").len()
            })
            .await
            .unwrap();
            if n >= 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    // A restarted worker on the same queue dir sends what the killed one left.
    let agent_queue = queue.path().join("agent-0");
    let s = Telemetry::new(ShimConfig {
        endpoint: endpoint.clone(),
        queue_dir: Some(agent_queue),
        ..Default::default()
    })
    .unwrap();
    tokio::task::block_in_place(|| s.close(WAIT).unwrap());
    d.shutdown().await.unwrap();
    assert!(stored_steps(var.path(), "killed").len() >= 200);
    assert_exactly_once_and_contiguous(stored_producer_seqs(var.path(), "killed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_answers_a_flush_at_once_instead_of_waiting() {
    let var = tempfile::tempdir().unwrap();
    let queue = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(var.path());
    cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.auth = telemetry_server::AuthConfig::Token("the-right-token".into());
    let d = telemetry_server::start(cfg).await.unwrap();
    let wrong = |queue: Option<&Path>| {
        Telemetry::new(ShimConfig {
            endpoint: format!("http://127.0.0.1:{port}"),
            run_id: Some("refused".into()),
            auth_token: Some("a-wrong-token".into()),
            queue_dir: queue.map(Path::to_path_buf),
            ..Default::default()
        })
        .unwrap()
    };
    tokio::task::block_in_place(|| {
        // UNAUTHENTICATED cannot heal by waiting: no queue -> NotDelivered, well before WAIT.
        let s = wrong(None);
        s.step(RunStep::default()).unwrap();
        let started = std::time::Instant::now();
        match s.flush(WAIT) {
            Err(telemetry_shim::ShimError::NotDelivered { pending, reason }) => {
                assert_eq!(pending, 1);
                assert!(reason.contains("Unauthenticated"), "{reason}");
            }
            other => panic!("expected NotDelivered, got {other:?}"),
        }
        assert!(started.elapsed() < WAIT / 2, "answered at once");
        s.abandon();
        // With a queue: OnDisk at once, kept for a corrected credential.
        let s = wrong(Some(queue.path()));
        s.step(RunStep::default()).unwrap();
        let started = std::time::Instant::now();
        let r = s.flush(WAIT).unwrap();
        assert_eq!(r.outcome, telemetry_shim::FlushOutcome::OnDisk, "{r:?}");
        assert_eq!(r.pending_records, 1);
        assert!(started.elapsed() < WAIT / 2, "answered at once");
        s.abandon();
    });
    d.shutdown().await.unwrap();
    assert!(stored_steps(var.path(), "refused").is_empty());
}

/// The README's "Delivering a stranded queue": a queue left by a worker whose daemon was down
/// (written by the shim, as the Python package writes it too) is delivered by
/// `gym-telemetry-proxy --queue-dir Q --input /dev/null`, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_delivers_a_stranded_shim_queue() {
    let var = tempfile::tempdir().unwrap();
    let queue = tempfile::tempdir().unwrap();
    let down = format!("http://127.0.0.1:{}", free_port());
    let s = shim(&down, queue.path());
    for i in 0..300u64 {
        s.step(RunStep {
            step_index: i,
            action_json: "0".into(),
            ..Default::default()
        })
        .unwrap();
    }
    let r = tokio::task::block_in_place(|| s.close(Duration::from_millis(300))).unwrap();
    assert_eq!(r.outcome, telemetry_shim::FlushOutcome::OnDisk, "{r:?}");

    let d = start(var.path()).await;
    let out = tokio::process::Command::new(workspace_bin("gym-telemetry-proxy"))
        .arg("--queue-dir")
        .arg(queue.path())
        .args(["--input", "/dev/null", "--endpoint", &d.endpoint()])
        .output();
    let out = bounded("the proxy", out).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("flush=Acked; undelivered=0"), "{err}");
    assert_eq!(stored_steps(var.path(), "offline").len(), 300);
    assert_exactly_once_and_contiguous(stored_producer_seqs(var.path(), "offline"));
    d.shutdown().await.unwrap();
}
