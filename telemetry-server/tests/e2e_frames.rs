//! The Frames service against the real server with its default authentication: frames on their
//! own acked stream, resends stored once, worker credentials limited to their run, reads that
//! answer a missing frame with `missing` (not an error), pins for the operator only, counters.
#![allow(clippy::unwrap_used)]

mod common;

use common::bounded;
use telemetry_core::pb::{
    frames_client::FramesClient, Frame, FrameBatch, FrameEncoding, FrameStatsRequest,
    GetFrameRequest, LatestFrameRequest, ListFramesRequest, PinEpisodeRequest,
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

async fn frames(
    d: &ServerHandle,
    token: Option<&str>,
) -> FramesClient<InterceptedService<Channel, Bearer>> {
    let ch = common::channel(d).await;
    FramesClient::with_interceptor(ch, Bearer(token.map(str::to_owned)))
}

fn frame(run: &str, ep: u64, step: u64) -> Frame {
    let rgb = vec![(step * 7) as u8; 8 * 6 * 3];
    Frame {
        run_id: run.into(),
        agent_id: "a".into(),
        episode_index: ep,
        step_index: step,
        width: 8,
        height: 6,
        encoding: FrameEncoding::Png as i32,
        data: telemetry_frames::codec::encode_png(8, 6, &rgb).unwrap(),
        render_fps: 50.0,
        wall_time_unix_ns: 0,
    }
}

#[tokio::test]
async fn frames_are_acked_deduplicated_scoped_to_the_run_and_read_back_by_reference() {
    let dir = tempfile::tempdir().unwrap();
    let var = dir.path().join("var");
    let d = telemetry_server::start(ServerConfig::ephemeral(&var))
        .await
        .unwrap();
    let operator = std::fs::read_to_string(var.join("auth-token")).unwrap();
    let operator = operator.trim();
    let worker = d.worker_token("r1").unwrap();

    // No credential: refused like every other service.
    let err = frames(&d, None)
        .await
        .stats(FrameStatsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // A worker publishes on one stream; the second batch is a resend plus one new frame and
    // a frame of another run.
    let batches = vec![
        FrameBatch {
            batch_id: 1,
            frames: (0..3).map(|s| frame("r1", 0, s)).collect(),
        },
        FrameBatch {
            batch_id: 2,
            frames: vec![frame("r1", 0, 2), frame("r2", 0, 0), frame("r1", 0, 3)],
        },
    ];
    let mut client = frames(&d, Some(&worker)).await;
    let mut acks = client
        .publish(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let a1 = bounded("ack 1", acks.message()).await.unwrap().unwrap();
    assert_eq!((a1.batch_id, a1.stored, a1.duplicates), (1, 3, 0));
    let a2 = bounded("ack 2", acks.message()).await.unwrap().unwrap();
    assert_eq!((a2.batch_id, a2.stored, a2.duplicates), (2, 1, 1));
    assert_eq!(a2.rejected.len(), 1);
    assert_eq!(
        (a2.rejected[0].index, a2.rejected[0].reason.as_str()),
        (1, "wrong_run")
    );

    let got = client
        .get_frame(GetFrameRequest {
            frame_ref: "r1/0/3/a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!got.missing);
    assert_eq!(got.frame.unwrap(), frame("r1", 0, 3));
    let gone = client
        .get_frame(GetFrameRequest {
            frame_ref: "r1/5/0/a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.missing);
    assert_eq!(gone.missing_reason, "not_found");
    let latest = client
        .latest_frame(LatestFrameRequest {
            run_id: "r1".into(),
            agent_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.frame_ref, "r1/0/3/a");
    let list = client
        .list_frames(ListFramesRequest {
            run_id: "r1".into(),
            agent_id: "a".into(),
            episode_index: 0,
            limit: 0,
            after_step: -1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.frames.iter().map(|f| f.step_index).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(list.render_fps, 50.0);

    // Pinning is the operator's.
    let pin = PinEpisodeRequest {
        run_id: "r1".into(),
        agent_id: "a".into(),
        episode_index: 0,
        pinned: true,
    };
    let err = client.pin_episode(pin.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut op = frames(&d, Some(operator)).await;
    assert!(op.pin_episode(pin).await.unwrap().into_inner().found);
    let stats = op.stats(FrameStatsRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (
            stats.frames_stored_total,
            stats.duplicates_total,
            stats.live_frames,
            stats.pinned_episodes
        ),
        (4, 1, 4, 1)
    );
    assert_eq!(stats.missing_lookups_total, 1);
    // The same store in process, for a dashboard served by the embedding application.
    let (r, latest) = d.frames().latest("r1", Some("a")).unwrap().unwrap();
    assert_eq!(r, "r1/0/3/a");
    assert!(matches!(latest, telemetry_frames::Lookup::Found(_)));
    drop((client, op, acks));
    d.shutdown().await.unwrap();
    // The frames are on disk in the var dir, private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(var.join("frames"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
}

fn shim_config(
    d: &ServerHandle,
    endpoint: Option<String>,
    run: &str,
) -> telemetry_shim::ShimConfig {
    telemetry_shim::ShimConfig {
        endpoint: endpoint.unwrap_or_else(|| d.endpoint()),
        run_id: Some(run.into()),
        agent_id: Some("w".into()),
        auth_token: d.worker_token(run),
        reconnect_initial: std::time::Duration::from_millis(20),
        reconnect_max: std::time::Duration::from_millis(100),
        ..telemetry_shim::ShimConfig::default()
    }
}

fn pixels(step: u64) -> Vec<u8> {
    (0..12 * 10 * 3)
        .map(|i| (i as u64 * 31 + step * 7) as u8)
        .collect()
}

async fn listed(d: &ServerHandle, run: &str, agent: &str, ep: u64) -> Vec<u64> {
    let mut c = frames(d, d.worker_token(run).as_deref()).await;
    c.list_frames(ListFramesRequest {
        run_id: run.into(),
        agent_id: agent.into(),
        episode_index: ep,
        limit: 0,
        after_step: -1,
    })
    .await
    .unwrap()
    .into_inner()
    .frames
    .iter()
    .map(|f| f.step_index)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shims_frame_sender_compresses_sends_and_counts_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let d = telemetry_server::start(ServerConfig::ephemeral(dir.path().join("var")))
        .await
        .unwrap();
    let cfg = shim_config(&d, None, "run-f");
    let sender =
        telemetry_shim::FrameSender::new(&cfg, telemetry_shim::FrameOptions::default()).unwrap();
    for step in 0..20 {
        let r = sender
            .capture(None, 3, step, 12, 10, pixels(step), 50.0)
            .unwrap();
        assert_eq!(r, format!("run-f/3/{step}/w"));
    }
    // A frame whose pixels do not match its size is refused and counted, not sent.
    assert!(sender
        .capture(None, 3, 99, 12, 10, vec![0; 5], 50.0)
        .is_err());
    let stats =
        tokio::task::spawn_blocking(move || sender.close(std::time::Duration::from_secs(20)))
            .await
            .unwrap();
    assert_eq!(
        (stats.captured, stats.encoded, stats.stored, stats.refused),
        (20, 20, 20, 1)
    );
    assert_eq!(
        (stats.dropped, stats.pending_bytes, stats.raw_bytes),
        (0, 0, 0)
    );
    assert_eq!(
        listed(&d, "run-f", "w", 3).await,
        (0..20).collect::<Vec<_>>()
    );
    // What arrived is the PNG of what was captured.
    let mut c = frames(&d, d.worker_token("run-f").as_deref()).await;
    let got = c
        .get_frame(GetFrameRequest {
            frame_ref: "run-f/3/7/w".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .frame
        .unwrap();
    let rgb = telemetry_frames::codec::decode_png(&got.data, 1 << 20).unwrap();
    assert_eq!((rgb.width, rgb.height, rgb.pixels), (12, 10, pixels(7)));
    assert_eq!(got.render_fps, 50.0);
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_spill_to_disk_while_the_daemon_is_away_and_are_delivered_by_the_next_sender() {
    let dir = tempfile::tempdir().unwrap();
    let d = telemetry_server::start(ServerConfig::ephemeral(dir.path().join("var")))
        .await
        .unwrap();
    let spill = dir.path().join("spill");
    let opts = telemetry_shim::FrameOptions {
        spill_dir: Some(spill.clone()),
        max_pending_bytes: 1, // every encoded frame goes to disk
        ..Default::default()
    };
    // No daemon listens here: everything waits in the spill directory.
    let away = shim_config(&d, Some("http://127.0.0.1:9".into()), "run-s");
    let sender = telemetry_shim::FrameSender::new(&away, opts.clone()).unwrap();
    for step in 0..8 {
        sender
            .capture(None, 0, step, 12, 10, pixels(step), 0.0)
            .unwrap();
    }
    let stats =
        tokio::task::spawn_blocking(move || sender.close(std::time::Duration::from_millis(300)))
            .await
            .unwrap();
    assert_eq!((stats.encoded, stats.spilled, stats.stored), (8, 8, 0));
    assert!(stats.spill_bytes > 0);
    assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 8);

    let back = shim_config(&d, None, "run-s");
    let sender = telemetry_shim::FrameSender::new(&back, opts).unwrap();
    let stats =
        tokio::task::spawn_blocking(move || sender.close(std::time::Duration::from_secs(20)))
            .await
            .unwrap();
    assert_eq!((stats.stored, stats.spill_bytes), (8, 0));
    assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 0);
    assert_eq!(
        listed(&d, "run-s", "w", 0).await,
        (0..8).collect::<Vec<_>>()
    );
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_raw_buffer_drops_by_its_policy_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let d = telemetry_server::start(ServerConfig::ephemeral(dir.path().join("var")))
        .await
        .unwrap();
    let cfg = shim_config(&d, None, "run-p");
    // A budget smaller than one frame: each capture is dropped at once, whatever the policy.
    for policy in [
        telemetry_shim::FrameFullPolicy::DropNewest,
        telemetry_shim::FrameFullPolicy::DropOldest,
    ] {
        let opts = telemetry_shim::FrameOptions {
            max_raw_bytes: 100,
            full_policy: policy,
            ..Default::default()
        };
        let sender = telemetry_shim::FrameSender::new(&cfg, opts).unwrap();
        for step in 0..5 {
            assert!(matches!(
                sender.capture(None, 0, step, 12, 10, pixels(step), 0.0),
                Err(telemetry_shim::FrameCaptureError::Full)
            ));
        }
        let s = sender.stats();
        assert_eq!((s.captured, s.dropped), (0, 5), "{policy:?}");
    }
    d.shutdown().await.unwrap();
}

/// One sample line of a Prometheus text exposition (`name{labels} value`), as a number.
fn sample(body: &str, series: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    bounded("metrics", s.read_to_string(&mut out))
        .await
        .unwrap();
    out
}

#[tokio::test]
async fn the_frame_stores_counters_are_on_metrics() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let var = dir.path().join("var");
    // Room for two episodes of three frames (and less than one more frame): the third
    // episode evicts the first. (Episodes from 1: episode 0's index is not on the wire, so its
    // frames are 2 bytes smaller.)
    let rec = |f: &Frame| telemetry_frames::segment::frame_record(&f.encode_to_vec()).len() as u64;
    let episode: u64 = (0..3).map(|s| rec(&frame("r1", 1, s))).sum();
    let mut cfg = ServerConfig::ephemeral(&var);
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.frames.max_run_bytes = 2 * episode + 10;
    let d = telemetry_server::start(cfg).await.unwrap();
    let addr = d.metrics_addr.expect("metrics bound");
    let operator = std::fs::read_to_string(var.join("auth-token")).unwrap();
    let operator = operator.trim().to_owned();
    let worker = d.worker_token("r1").unwrap();

    // Before any frame: the series are there, at zero.
    let body = scrape(addr).await;
    assert_eq!(
        sample(&body, "gym_telemetry_frames_stored_total"),
        Some(0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "gym_telemetry_frames_max_run_bytes"),
        Some(2 * episode + 10)
    );
    assert_eq!(
        sample(&body, "gym_telemetry_frames_max_total_bytes"),
        Some(8 << 30)
    );

    let mut not_png = frame("r1", 5, 0);
    not_png.data = vec![0; 40];
    let mut bad_size = frame("r1", 5, 1);
    bad_size.width = 0;
    let batches = vec![
        FrameBatch {
            batch_id: 1,
            frames: (1..3)
                .flat_map(|ep| (0..3).map(move |s| frame("r1", ep, s)))
                .collect(),
        },
        FrameBatch {
            batch_id: 2,
            frames: vec![
                frame("r1", 1, 2), // a resend
                not_png,
                bad_size,
                frame("r2", 0, 0), // another run's, on r1's credential
                frame("r1", 3, 0), // evicts episode 1
                frame("r1", 3, 1),
                frame("r1", 3, 2),
            ],
        },
    ];
    let mut client = frames(&d, Some(&worker)).await;
    let mut acks = client
        .publish(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let a1 = bounded("ack 1", acks.message()).await.unwrap().unwrap();
    assert_eq!(a1.stored, 6);
    let a2 = bounded("ack 2", acks.message()).await.unwrap().unwrap();
    assert_eq!(
        (a2.stored, a2.duplicates, a2.rejected.len()),
        (3, 1, 3),
        "{a2:?}"
    );
    drop(acks);

    // Episodes 2 and 3 pinned: a frame larger than the run's whole budget finds nothing to
    // evict and is refused as over the limit.
    let mut op = frames(&d, Some(&operator)).await;
    for ep in [2, 3] {
        let pin = PinEpisodeRequest {
            run_id: "r1".into(),
            agent_id: "a".into(),
            episode_index: ep,
            pinned: true,
        };
        let found = op.pin_episode(pin).await.unwrap().into_inner().found;
        let stats = op.stats(FrameStatsRequest {}).await.unwrap().into_inner();
        assert!(
            found,
            "episode {ep} has no frames: {stats:?}, episode {episode} bytes"
        );
    }
    let noise: Vec<u8> = (0..64u32 * 64 * 3)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut big = frame("r1", 4, 0);
    big.width = 64;
    big.height = 64;
    big.data = telemetry_frames::codec::encode_png(64, 64, &noise).unwrap();
    assert!(rec(&big) > 2 * episode + 10);
    let mut acks = client
        .publish(tokio_stream::iter(vec![FrameBatch {
            batch_id: 3,
            frames: vec![big],
        }]))
        .await
        .unwrap()
        .into_inner();
    let a3 = bounded("ack 3", acks.message()).await.unwrap().unwrap();
    assert_eq!((a3.stored, a3.over_limit), (0, 1));
    drop(acks);

    // The newest frame's last byte flipped on disk: its read is "corrupt"; an evicted and a
    // never-sent frame are "missing" too.
    let seg_dir = var.join("frames").join("segments").join("r1");
    let seg = std::fs::read_dir(&seg_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    for (r, reason) in [
        ("r1/3/2/a", "corrupt"),
        ("r1/1/0/a", "evicted"),
        ("r1/9/0/a", "not_found"),
    ] {
        let got = op
            .get_frame(GetFrameRequest {
                frame_ref: r.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((got.missing, got.missing_reason.as_str()), (true, reason));
    }

    let body = scrape(addr).await;
    let expect = [
        ("gym_telemetry_frames_stored_total", 9),
        ("gym_telemetry_frames_duplicates_total", 1),
        ("gym_telemetry_frames_rejected_total{reason=\"not_png\"}", 1),
        (
            "gym_telemetry_frames_rejected_total{reason=\"bad_size\"}",
            1,
        ),
        (
            "gym_telemetry_frames_rejected_total{reason=\"wrong_run\"}",
            1,
        ),
        ("gym_telemetry_frames_over_limit_total", 1),
        ("gym_telemetry_frames_evicted_episodes_total", 1),
        ("gym_telemetry_frames_evicted_frames_total", 3),
        ("gym_telemetry_frames_evicted_bytes_total", episode),
        ("gym_telemetry_frames_corrupt_total", 1),
        ("gym_telemetry_frames_missing_lookups_total", 3),
        ("gym_telemetry_frames_held", 6),
        ("gym_telemetry_frames_held_bytes", 2 * episode),
        ("gym_telemetry_frames_runs", 1),
        (
            "gym_telemetry_frames_run_held_bytes{run=\"r1\"}",
            2 * episode,
        ),
    ];
    for (series, want) in expect {
        assert_eq!(sample(&body, series), Some(want), "{series} in\n{body}");
    }
    // The scrape agrees with the Stats RPC.
    let stats = op.stats(FrameStatsRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (
            stats.frames_stored_total,
            stats.live_frames,
            stats.live_bytes
        ),
        (9, 6, 2 * episode)
    );
    drop((client, op));
    d.shutdown().await.unwrap();
}
