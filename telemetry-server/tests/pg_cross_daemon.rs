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
    daemon_with(var_dir, pg, metrics, |_| {}).await
}

/// A daemon on `var_dir` with the store of `pg`, its configuration changed by `tune`.
async fn daemon_with(
    var_dir: &std::path::Path,
    pg: &PgConfig,
    metrics: bool,
    tune: impl FnOnce(&mut telemetry_server::ServerConfig),
) -> ServerHandle {
    let backend: Arc<dyn Backend> = Arc::new(PgBackend::new(pg.clone()).unwrap());
    // No workers are spawned here: no proxy binary needed (unlike common::config).
    let mut cfg = telemetry_server::ServerConfig::ephemeral(var_dir).with_backend(backend);
    cfg.auth = telemetry_server::AuthConfig::InsecureNoAuth;
    if metrics {
        cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    }
    tune(&mut cfg);
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
    // Daemon A (another host) owns a running run whose worker it spawned, and one fed by hand;
    // it is alive (its lease is current), so nobody takes them over.
    let a_backend = PgBackend::new(pg.clone()).unwrap();
    let mut a_writer = a_backend.open_writer().unwrap();
    a_backend
        .leases()
        .unwrap()
        .unwrap()
        .renew(
            "host-a:/var/telemetry",
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
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

/// The value of `gym_telemetry_store_leases_total{event}` in a metrics text (0 when absent).
fn lease_counter(text: &str, event: &str) -> u64 {
    let key = format!("store_leases_total{{event=\"{event}\"}} ");
    text.lines()
        .find_map(|l| {
            l.split_once(&key)
                .map(|(_, v)| v.trim().parse::<u64>().unwrap())
        })
        .unwrap_or(0)
}

/// Reads WatchRuns until `run_id` is reported owned by `owner`; returns that info.
async fn until_owner(
    watch: &mut tonic::Streaming<telemetry_core::pb::RunInfo>,
    run_id: &str,
    owner: &str,
) -> telemetry_core::pb::RunInfo {
    bounded(run_id, async {
        loop {
            let info = watch.next().await.unwrap().unwrap();
            if info.run_id == run_id && info.owner == owner {
                return info;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_runs_are_taken_over_only_once_its_lease_lapses() {
    use std::time::{Duration, Instant};
    use telemetry_core::pb::{
        CancelRunRequest, CompletionStatus, RunInfo, RunState, WatchRunsRequest,
    };
    let Some(url) =
        testing::test_url("a_dead_owners_runs_are_taken_over_only_once_its_lease_lapses")
    else {
        return;
    };
    let pg = testing::fresh_config(&url, "xdlease");
    // Long leases and heartbeat timeouts: nothing here depends on a timer firing. A's lease
    // lapses when the test releases it (as its TTL passing would, without the wait), and the
    // heartbeat timeout runs when the test calls it, with its own clock.
    let tune = |cfg: &mut telemetry_server::ServerConfig| {
        cfg.lease_ttl = Duration::from_secs(3600);
        cfg.heartbeat_timeout = Duration::from_secs(3600);
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = daemon_with(dir_a.path(), &pg, false, tune).await;
    let b = daemon_with(dir_b.path(), &pg, true, tune).await;
    let (a_owner, b_owner) = (a.owner().to_owned(), b.owner().to_owned());
    assert_ne!(a_owner, b_owner);

    // Two workers started by hand send to A (A registers and owns their runs); a third run is
    // still pending on A (its queue would start it).
    let (mut a_ingest, _, mut a_control) = clients(&a).await;
    a_ingest
        .publish_batch(batch(
            1,
            vec![step("alive", "pa", 1), step("silent", "ps", 1)],
        ))
        .await
        .unwrap();
    let backend = PgBackend::new(pg.clone()).unwrap();
    let mut writer = backend.open_writer().unwrap();
    writer
        .put_run_info(&RunInfo {
            run_id: "queued".into(),
            state: RunState::Pending as i32,
            owner: a_owner.clone(),
            ..Default::default()
        })
        .unwrap();
    let (_, _, mut b_control) = clients(&b).await;
    let mut b_watch = b_control
        .watch_runs(WatchRunsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // (In any order: WatchRuns reports each as B merges it.)
    let mut shown = std::collections::BTreeSet::new();
    bounded("A's three runs shown on B", async {
        while shown.len() < 3 {
            let info = b_watch.next().await.unwrap().unwrap();
            if info.owner == a_owner {
                shown.insert(info.run_id);
            }
        }
    })
    .await;

    // A's lease is current: however many take-over rounds B makes, A keeps its runs.
    let rounds = lease_counter(&metrics_text(&b).await, "takeover_rounds");
    bounded("two more take-over rounds on B", async {
        while lease_counter(&metrics_text(&b).await, "takeover_rounds") < rounds + 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let reader = backend.reader().unwrap();
    let row = |run: &str| {
        reader
            .run_infos()
            .unwrap()
            .into_iter()
            .find(|r| r.run_id == run)
            .unwrap()
    };
    for run in ["alive", "silent", "queued"] {
        assert_eq!(
            row(run).owner,
            a_owner,
            "{run} taken while A's lease was current"
        );
        assert_eq!(b.run_info(run).unwrap().owner, a_owner);
    }
    assert_eq!(lease_counter(&metrics_text(&b).await, "taken_runs"), 0);

    // A's lease lapses (A stands for a dead daemon now; it is still running, which is the
    // harder case: a daemon that lost its lease and comes back).
    backend
        .leases()
        .unwrap()
        .unwrap()
        .release(&a_owner)
        .unwrap();
    // The pending run never started and never will: failed as interrupted, with a completion.
    // (Taken in run id order: "alive" is reported before "queued" fails.)
    let alive = until_owner(&mut b_watch, "alive", &b_owner).await;
    assert_eq!(alive.state, RunState::Running as i32);
    let queued = until_final(&mut b_watch, "queued").await;
    assert_eq!(queued.state, RunState::Failed as i32);
    assert!(
        queued.failure_reason.starts_with("interrupted: taken over"),
        "{}",
        queued.failure_reason
    );
    // (Its state is broadcast before the completion is stored.)
    let done = bounded("queued's completion", async {
        loop {
            if let Some(c) = reader.run_completion("queued").unwrap() {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(done.status, CompletionStatus::Failed as i32);

    // From here on only "alive" shows signs of life, and through the other daemon (A): B reads
    // its records from the store and counts them as its heartbeats.
    let mark = Instant::now();
    let before = b.run_info("alive").unwrap().last_heartbeat;
    a_ingest
        .publish_batch(batch(2, vec![step("alive", "pa", 2)]))
        .await
        .unwrap();
    bounded("B sees alive's record as a heartbeat", async {
        while b.run_info("alive").unwrap().last_heartbeat == before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The heartbeat timeout, with the clock of this test: everything silent since `mark`.
    let now = Instant::now();
    let failed = b.enforce_heartbeats(now, now - mark).await;
    assert_eq!(failed, vec!["silent".to_owned()]);
    let silent = row("silent");
    assert_eq!(
        (silent.state, silent.owner.as_str()),
        (RunState::Failed as i32, b_owner.as_str())
    );
    assert!(
        silent.failure_reason.starts_with("interrupted: taken over")
            && silent.failure_reason.contains(&a_owner),
        "{}",
        silent.failure_reason
    );
    assert_eq!(
        reader.run_completion("silent").unwrap().map(|c| c.status),
        Some(CompletionStatus::Failed as i32)
    );
    let alive = row("alive");
    assert_eq!(
        (alive.state, alive.owner.as_str()),
        (RunState::Running as i32, b_owner.as_str())
    );

    // A, back, finds the run under its new owner and leaves it alone.
    let mut a_watch = a_control
        .watch_runs(WatchRunsRequest::default())
        .await
        .unwrap()
        .into_inner();
    until_owner(&mut a_watch, "alive", &b_owner).await;
    let refused = a_control
        .cancel_run(CancelRunRequest {
            run_id: "alive".into(),
        })
        .await;
    assert!(
        format!("{refused:?}").contains("cancel it there"),
        "{refused:?}"
    );
    // The worker finishes, still through A: B, its owner now, ends the run.
    a_ingest
        .publish_batch(batch(3, vec![completed("alive", "pa", 3)]))
        .await
        .unwrap();
    let done = until_final(&mut b_watch, "alive").await;
    assert_eq!(
        (done.state, done.owner.as_str()),
        (RunState::Completed as i32, b_owner.as_str())
    );
    bounded("the stored row", async {
        while row("alive").state != RunState::Completed as i32 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(row("alive").owner, b_owner);
    assert_eq!(lease_counter(&metrics_text(&b).await, "taken_runs"), 3);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_sent_to_another_daemon_keeps_the_run_alive_on_its_owner() {
    use std::time::{Duration, Instant};
    use telemetry_core::pb::{HeartbeatRequest, RunState};
    let Some(url) =
        testing::test_url("a_heartbeat_sent_to_another_daemon_keeps_the_run_alive_on_its_owner")
    else {
        return;
    };
    let pg = testing::fresh_config(&url, "xdbeat");
    // Long leases and timeouts: the heartbeat timeout runs only when the test calls it.
    let tune = |cfg: &mut telemetry_server::ServerConfig| {
        cfg.lease_ttl = Duration::from_secs(3600);
        cfg.heartbeat_timeout = Duration::from_secs(3600);
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = daemon_with(dir_a.path(), &pg, false, tune).await;
    let b = daemon_with(dir_b.path(), &pg, true, tune).await;
    // Two workers started by hand send their records to A, which owns their runs.
    let (mut a_ingest, _, _) = clients(&a).await;
    a_ingest
        .publish_batch(batch(
            1,
            vec![step("beating", "pb", 1), step("quiet", "pq", 1)],
        ))
        .await
        .unwrap();
    bounded("B shows A's runs", async {
        while b.run_info("beating").is_none() || b.run_info("quiet").is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(b.run_info("beating").unwrap().owner, a.owner());

    // One of them then only sends heartbeats, and to B.
    let (_, _, mut b_control) = clients(&b).await;
    let beat = b_control
        .heartbeat(HeartbeatRequest {
            run_id: "beating".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(beat.known);
    assert_eq!(lease_counter(&metrics_text(&b).await, "beats_stored"), 1);
    // A heartbeat for a run nobody has is not stored.
    let unknown = b_control
        .heartbeat(HeartbeatRequest {
            run_id: "nobodys".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!unknown.known);
    assert_eq!(lease_counter(&metrics_text(&b).await, "beats_stored"), 1);

    // A's heartbeat timeout, a minute on: neither run's records reached A since, but the
    // stored heartbeat (seconds old at most) keeps "beating" alive; "quiet" fails.
    let failed = a
        .enforce_heartbeats(
            Instant::now() + Duration::from_secs(60),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(failed, vec!["quiet".to_owned()]);
    assert_eq!(
        a.run_info("beating").unwrap().state,
        RunState::Running as i32
    );

    // Once the stored heartbeat is older than the timeout too, the owner fails the run.
    let leases = PgBackend::new(pg.clone())
        .unwrap()
        .leases()
        .unwrap()
        .unwrap();
    let timeout = Duration::from_millis(50);
    bounded("the stored heartbeat ages past the timeout", async {
        loop {
            let ages = leases.beat_ages(&["beating".to_owned()]).unwrap();
            assert_eq!(ages.len(), 1, "{ages:?}");
            if ages[0].1 > timeout {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let failed = a
        .enforce_heartbeats(Instant::now() + Duration::from_secs(120), timeout)
        .await;
    assert_eq!(failed, vec!["beating".to_owned()]);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
