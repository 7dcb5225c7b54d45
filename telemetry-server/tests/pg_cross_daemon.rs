//! Two daemons on one PostgreSQL schema: a viewer on either sees, live and exactly once, what
//! workers send to the other; a feed whose connection is cut reconnects and loses nothing.
//! Skipped (with a message) when GYM_TELEMETRY_TEST_PG is unset outside CI.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;
use telemetry_core::pb::{stream_notice::Kind as Notice, StreamRequest};
use telemetry_server::ServerHandle;
use telemetry_store::Backend;
use telemetry_store_pg::{testing, PgBackend, PgConfig};
use tokio_stream::StreamExt;

/// A daemon on `var_dir` with the store of `pg`.
async fn daemon(var_dir: &std::path::Path, pg: &PgConfig, metrics: bool) -> ServerHandle {
    let backend: Arc<dyn Backend> = Arc::new(PgBackend::new(pg.clone()).unwrap());
    // No workers are spawned here: no proxy binary needed (unlike common::config).
    let mut cfg = telemetry_server::ServerConfig::ephemeral(var_dir).with_backend(backend);
    cfg.auth = telemetry_server::AuthConfig::InsecureNoAuth;
    if metrics {
        cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    }
    telemetry_server::start(cfg).await.unwrap()
}

/// Follows `run`'s steps on `d` until its completion ends the stream. Returns the seqs seen,
/// the producer seqs per producer, and records reported dropped.
async fn follow(
    d: &ServerHandle,
    run: &str,
    live: tokio::sync::oneshot::Sender<()>,
) -> tokio::task::JoinHandle<(Vec<u64>, Vec<(String, u64)>, u64)> {
    let (_, mut query, _) = clients(d).await;
    let mut stream = query
        .stream_run_steps(StreamRequest {
            run_id: run.into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move {
        let mut live = Some(live);
        let (mut seqs, mut stamps, mut dropped) = (Vec::new(), Vec::new(), 0);
        while let Some(m) = bounded("follow", stream.next()).await {
            let m = m.unwrap();
            for s in &m.steps {
                seqs.push(s.seq_id);
                stamps.push((s.producer_id.clone(), s.producer_seq));
            }
            match m.notice.and_then(|n| n.kind) {
                Some(Notice::CaughtUp(_)) => {
                    if let Some(l) = live.take() {
                        let _ = l.send(());
                    }
                }
                Some(Notice::Lagged(l)) => dropped += l.dropped_steps,
                _ => {}
            }
        }
        (seqs, stamps, dropped)
    })
}

fn check_exact(what: &str, seqs: &[u64], stamps: &[(String, u64)], per_producer: u64) {
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{what}: seqs not strictly increasing (a duplicate or a reorder)"
    );
    for producer in ["pa", "pb"] {
        let mine: Vec<u64> = stamps
            .iter()
            .filter(|(p, _)| p == producer)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(
            mine,
            (1..=per_producer).collect::<Vec<_>>(),
            "{what}: {producer}'s records, each once and in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_on_either_daemon_sees_both_daemons_writes_live() {
    let Some(url) = testing::test_url("a_viewer_on_either_daemon_sees_both_daemons_writes_live")
    else {
        return;
    };
    let pg = testing::fresh_config(&url, "xd");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = daemon(dir_a.path(), &pg, false).await;
    let b = daemon(dir_b.path(), &pg, true).await;

    let (live_a, ready_a) = tokio::sync::oneshot::channel();
    let (live_b, ready_b) = tokio::sync::oneshot::channel();
    let on_a = follow(&a, "shared", live_a).await;
    let on_b = follow(&b, "shared", live_b).await;
    bounded("live on A", ready_a).await.unwrap();
    bounded("live on B", ready_b).await.unwrap();

    // Two workers of one run, one per daemon, batches interleaved.
    const N: u64 = 1500;
    let (mut ingest_a, _, _) = clients(&a).await;
    let (mut ingest_b, _, _) = clients(&b).await;
    let mut seq = 1;
    while seq <= N {
        let end = (seq + 50).min(N + 1);
        let ra: Vec<_> = (seq..end).map(|s| step("shared", "pa", s)).collect();
        let rb: Vec<_> = (seq..end).map(|s| step("shared", "pb", s)).collect();
        let (x, y) = tokio::join!(
            ingest_a.publish_batch(batch(seq, ra)),
            ingest_b.publish_batch(batch(seq, rb))
        );
        assert_eq!(x.unwrap().into_inner().stored as u64, end - seq);
        assert_eq!(y.unwrap().into_inner().stored as u64, end - seq);
        seq = end;
    }
    ingest_a
        .publish_batch(batch(0, vec![completed("shared", "pa", N + 1)]))
        .await
        .unwrap();

    for (what, task) in [("viewer on A", on_a), ("viewer on B", on_b)] {
        let (seqs, stamps, dropped) = bounded(what, task).await.unwrap();
        assert_eq!(dropped, 0, "{what}: nothing dropped");
        assert_eq!(seqs.len() as u64, 2 * N, "{what}: every step");
        check_exact(what, &seqs, &stamps, N);
    }
    let text = metrics_text(&b).await;
    let hints = text
        .lines()
        .find(|l| l.starts_with("gym_telemetry_store_follow{event=\"hints\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(hints > 0, "B was woken by A's commits: {text}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_feed_reconnects_and_its_viewer_misses_nothing() {
    let Some(url) = testing::test_url("a_cut_feed_reconnects_and_its_viewer_misses_nothing") else {
        return;
    };
    let pg = testing::fresh_config(&url, "xdcut");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = daemon(dir_a.path(), &pg, false).await;
    let b = daemon(dir_b.path(), &pg, true).await;
    let (live_b, ready_b) = tokio::sync::oneshot::channel();
    let on_b = follow(&b, "cut", live_b).await;
    bounded("live on B", ready_b).await.unwrap();

    let (mut ingest_a, _, _) = clients(&a).await;
    const N: u64 = 600;
    for round in 0..6u64 {
        // Before the third batch, cut both daemons' feeds (a started daemon is listening):
        // the hints of the batches sent while they reconnect are lost.
        if round == 2 {
            let cut = testing::terminate_listeners(&url, pg.schema());
            assert_eq!(cut, 2, "both daemons' listening sessions cut");
        }
        let first = round * 100 + 1;
        let ra: Vec<_> = (first..first + 100).map(|s| step("cut", "pa", s)).collect();
        ingest_a.publish_batch(batch(round, ra)).await.unwrap();
    }
    ingest_a
        .publish_batch(batch(9, vec![completed("cut", "pa", N + 1)]))
        .await
        .unwrap();
    let (seqs, stamps, dropped) = bounded("viewer on B", on_b).await.unwrap();
    assert_eq!(dropped, 0);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let mine: Vec<u64> = stamps.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        mine,
        (1..=N).collect::<Vec<_>>(),
        "every step once, in order"
    );

    // The feed came back (its reconnects are counted).
    let reconnected = bounded("reconnect counted", async {
        loop {
            let text = metrics_text(&b).await;
            let n = text
                .lines()
                .find(|l| l.starts_with("gym_telemetry_store_follow{event=\"reconnects\"}"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if n >= 1 {
                return n;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(reconnected >= 1);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_daemons_runs_are_shown_and_left_to_their_owner() {
    use telemetry_core::pb::{CancelRunRequest, RunInfo, RunState, WatchRunsRequest};
    let Some(url) = testing::test_url("another_daemons_runs_are_shown_and_left_to_their_owner")
    else {
        return;
    };
    let pg = testing::fresh_config(&url, "xdruns");
    // Daemon A (another host) owns a running run whose worker it spawned, and one fed by hand.
    let a_backend = PgBackend::new(pg.clone()).unwrap();
    let mut a_writer = a_backend.open_writer().unwrap();
    let owned = |run: &str, pid: Option<u32>| RunInfo {
        run_id: run.into(),
        state: RunState::Running as i32,
        worker_pid: pid,
        worker_start_ticks: pid.map(|_| 1),
        owner: "host-a:/var/telemetry".into(),
        ..Default::default()
    };
    a_writer
        .put_run_info(&owned("spawned-on-a", Some(1)))
        .unwrap();
    a_writer.put_run_info(&owned("by-hand-on-a", None)).unwrap();

    // B starts on the same store: A's runs were not interrupted by anything of B's.
    let dir_b = tempfile::tempdir().unwrap();
    let b = daemon(dir_b.path(), &pg, false).await;
    assert!(b.interrupted_runs.is_empty(), "{:?}", b.interrupted_runs);
    let reader = a_backend.reader().unwrap();
    for run in ["spawned-on-a", "by-hand-on-a"] {
        assert_eq!(
            reader.run_completion(run).unwrap(),
            None,
            "{run}: no completion made"
        );
    }
    // Shown on B, as running, with its owner; B refuses to cancel it.
    let (_, _, mut control) = clients(&b).await;
    let mut watch = control
        .watch_runs(WatchRunsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let shown = until(&mut watch, "spawned-on-a", |s| s == RunState::Running).await;
    assert_eq!(shown.owner, "host-a:/var/telemetry");
    let refused = control
        .cancel_run(CancelRunRequest {
            run_id: "spawned-on-a".into(),
        })
        .await;
    let text = format!("{refused:?}");
    assert!(text.contains("cancel it there"), "{text}");
    // The owner's changes reach B's WatchRuns.
    a_writer
        .put_run_info(&RunInfo {
            state: RunState::Completed as i32,
            ..owned("spawned-on-a", Some(1))
        })
        .unwrap();
    until(&mut watch, "spawned-on-a", |s| s == RunState::Completed).await;
    // B's own runs carry B's identity.
    let (mut ingest, _, _) = clients(&b).await;
    ingest
        .publish_batch(batch(1, vec![step("on-b", "pb", 1)]))
        .await
        .unwrap();
    let mine = until(&mut watch, "on-b", |s| s == RunState::Running).await;
    assert!(
        mine.owner.ends_with(
            &std::fs::canonicalize(dir_b.path())
                .unwrap()
                .display()
                .to_string()
        ),
        "{}",
        mine.owner
    );
    b.shutdown().await.unwrap();
}
