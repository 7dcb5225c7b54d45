//! The frame and policy endpoints (issues 18 and 19) over HTTP against a real in-process
//! server: refused without the cookie, a stored frame as PNG, a never-stored or evicted frame as
//! a 404 whose JSON says missing (never an error page), the live stream's newest-frame-and-count
//! rule, clip export registered with the run, the inventory with its invalid files, and an
//! evaluation run submitted and linked to its policy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, path::Path};

use axum::{
    body::Body,
    http::{header, Request, Response, StatusCode},
    Router,
};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde_json::Value;
use telemetry_core::pb::{self, FrameEncoding};
use telemetry_server::{ServerConfig, ServerHandle};
use telemetry_web::{router, AppState, WebConfig};
use tower::ServiceExt;

struct Fixture {
    server: ServerHandle,
    app: Router,
    cookie: String,
    var: tempfile::TempDir,
}

async fn fixture(server_cfg: impl FnOnce(&mut ServerConfig)) -> Fixture {
    let var = tempfile::tempdir().unwrap();
    let mut sc = ServerConfig::ephemeral(var.path());
    sc.auth = telemetry_server::AuthConfig::Token("s3cret-token".into());
    server_cfg(&mut sc);
    let server = telemetry_server::start(sc).await.unwrap();
    let wc = WebConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    let app = router(AppState::new(server.local_access(), wc));
    let token = server.operator_token().unwrap().to_owned();
    let r = send(&app, Request::get(format!("/?token={token}")), "").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    Fixture {
        server,
        app,
        cookie,
        var,
    }
}

async fn send(app: &Router, req: axum::http::request::Builder, body: &str) -> Response<Body> {
    let req = req
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    app.clone().oneshot(req).await.unwrap()
}

impl Fixture {
    async fn get(&self, uri: &str) -> Response<Body> {
        send(
            &self.app,
            Request::get(uri).header("cookie", &self.cookie),
            "",
        )
        .await
    }
    async fn post(&self, uri: &str, body: &str) -> Response<Body> {
        send(
            &self.app,
            Request::post(uri).header("cookie", &self.cookie),
            body,
        )
        .await
    }
    fn frames(&self, frames: &[pb::Frame]) {
        let r = self
            .server
            .local_access()
            .frame_store()
            .append(frames)
            .unwrap();
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    }
}

async fn bytes(r: Response<Body>) -> Vec<u8> {
    r.into_body().collect().await.unwrap().to_bytes().to_vec()
}

async fn json(r: Response<Body>) -> Value {
    serde_json::from_slice(&bytes(r).await).unwrap()
}

/// A 16x8 PNG whose pixels depend on (episode, step).
fn frame(run: &str, agent: &str, episode: u64, step: u64) -> pb::Frame {
    let (w, h) = (16u32, 8u32);
    let rgb: Vec<u8> = (0..w * h * 3)
        .map(|i| (i as u64 * 31 + episode * 7 + step * 13) as u8)
        .collect();
    pb::Frame {
        run_id: run.into(),
        agent_id: agent.into(),
        episode_index: episode,
        step_index: step,
        width: w,
        height: h,
        encoding: FrameEncoding::Png as i32,
        data: telemetry_frames::codec::encode_png(w, h, &rgb).unwrap(),
        render_fps: 15.0,
        wall_time_unix_ns: 1,
    }
}

#[tokio::test]
async fn every_new_endpoint_refuses_a_request_without_the_cookie() {
    let f = fixture(|_| {}).await;
    let gets = [
        "/api/frame?ref=r/0/0/a",
        "/api/runs/r/video?agent=a",
        "/api/runs/r/frames?agent=a&episode=0",
        "/api/runs/r/exports",
        "/api/policies",
        "/api/policy?id=E/p.json",
        "/api/runs/r/info",
    ];
    for uri in gets {
        let r = send(&f.app, Request::get(uri), "").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{uri}");
        let r = send(
            &f.app,
            Request::get(uri).header("cookie", "gt_session=s3cret-token"),
            "",
        )
        .await;
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{uri} with the token as cookie"
        );
    }
    let posts = [
        (
            "/api/runs/r/export",
            r#"{"agent":"a","episode":0,"format":"gif"}"#,
        ),
        (
            "/api/evaluate",
            r#"{"policy_id":"E/p.json","episodes":1,"argv":["/bin/true"]}"#,
        ),
    ];
    for (uri, body) in posts {
        let r = send(&f.app, Request::post(uri), body).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{uri}");
    }
    assert!(f
        .server
        .local_access()
        .list_runs(Default::default())
        .await
        .unwrap()
        .runs
        .is_empty());
}

#[tokio::test]
async fn a_stored_frame_is_served_as_png_and_a_missing_one_is_a_404_that_says_missing() {
    let f = fixture(|_| {}).await;
    let fr = frame("run-a", "agent-0", 0, 3);
    f.frames(std::slice::from_ref(&fr));
    let r = f.get("/api/frame?ref=run-a/0/3/agent-0").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "image/png");
    let png = bytes(r).await;
    assert_eq!(png, fr.data);
    let decoded = telemetry_frames::codec::decode_png(&png, 1 << 20).unwrap();
    assert_eq!((decoded.width, decoded.height), (16, 8));

    // Never stored: 404 with JSON, not an error page.
    let r = f.get("/api/frame?ref=run-a/0/4/agent-0").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body = json(r).await;
    assert_eq!(body["missing"], true);
    assert_eq!(body["reason"], "not_found");
    assert_eq!(body["frame_ref"], "run-a/0/4/agent-0");

    // Not a frame_ref at all: a 400.
    let r = f.get("/api/frame?ref=no-slashes").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // The episode list names each frame's ref.
    let list = json(
        f.get("/api/runs/run-a/frames?agent=agent-0&episode=0")
            .await,
    )
    .await;
    assert_eq!(list["frames"][0]["frame_ref"], "run-a/0/3/agent-0");
    assert_eq!(list["frames"].as_array().unwrap().len(), 1);

    let stats = json(f.get("/api/stats").await).await;
    assert_eq!(stats["video"]["frames_served"], 1);
    assert_eq!(stats["video"]["frames_missing"], 1);
}

#[tokio::test]
async fn an_evicted_frame_is_reported_as_evicted() {
    let one = frame("run-e", "a", 0, 0).data.len() as u64;
    // Room for about three frames of this run: the fourth evicts the oldest episode.
    let f = fixture(|sc| sc.frames.max_run_bytes = one * 3 + one / 2 + 64).await;
    f.frames(&[frame("run-e", "a", 0, 0), frame("run-e", "a", 0, 1)]);
    f.frames(&[frame("run-e", "a", 1, 0), frame("run-e", "a", 1, 1)]);
    let r = f.get("/api/frame?ref=run-e/0/0/a").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(json(r).await["reason"], "evicted");
    let r = f.get("/api/frame?ref=run-e/1/1/a").await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// Reads SSE events from a body stream until one named `frame`; returns its data.
async fn next_frame(
    body: &mut (impl futures::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
    buf: &mut String,
) -> Value {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if event.lines().any(|l| l == "event: frame") {
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                return serde_json::from_str(&data).unwrap();
            }
            continue;
        }
        let chunk = body.next().await.expect("stream ended").unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn the_live_stream_sends_the_newest_frame_and_counts_the_ones_it_skipped() {
    let f = fixture(|_| {}).await;
    assert_eq!(
        f.get("/api/runs/live/video?agent=a&hz=0").await.status(),
        StatusCode::BAD_REQUEST
    );
    f.frames(&(0..5).map(|s| frame("live", "a", 0, s)).collect::<Vec<_>>());
    // Another agent's frames are not this agent's stream.
    f.frames(&[frame("live", "b", 0, 9)]);
    let r = f.get("/api/runs/live/video?agent=a&hz=50").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = r.into_body().into_data_stream();
    let mut buf = String::new();
    let first = next_frame(&mut body, &mut buf).await;
    assert_eq!(first["frame_ref"], "live/0/4/a", "the newest frame first");
    assert_eq!(first["dropped"], 0);
    assert_eq!(first["sent"], 1);
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(first["png"].as_str().unwrap())
        .unwrap();
    assert_eq!(png, frame("live", "a", 0, 4).data);
    // Three frames land at once (one append): the stream shows the last, two were dropped.
    f.frames(&(5..8).map(|s| frame("live", "a", 0, s)).collect::<Vec<_>>());
    let second = next_frame(&mut body, &mut buf).await;
    assert_eq!(second["frame_ref"], "live/0/7/a");
    assert_eq!(second["dropped"], 2);
    // Across an episode boundary: the rest of episode 0 and the start of episode 1 count.
    f.frames(&[
        frame("live", "a", 0, 8),
        frame("live", "a", 1, 0),
        frame("live", "a", 1, 1),
    ]);
    let third = next_frame(&mut body, &mut buf).await;
    assert_eq!(third["frame_ref"], "live/1/1/a");
    assert_eq!(third["dropped"], 4);
    assert_eq!(third["sent"], 3);
    drop(body);
    let stats = json(f.get("/api/stats").await).await;
    assert_eq!(stats["video"]["video_frames_sent"], 3);
    assert_eq!(stats["video"]["video_frames_dropped"], 4);
}

#[tokio::test]
async fn export_clip_writes_a_gif_and_registers_it_with_the_run() {
    let f = fixture(|_| {}).await;
    f.frames(&(0..6).map(|s| frame("clip", "a", 2, s)).collect::<Vec<_>>());
    let r = f
        .post(
            "/api/runs/clip/export",
            r#"{"agent":"a","episode":2,"format":"gif"}"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body = json(r).await;
    assert_eq!(body["format"], "gif");
    assert_eq!(body["frames"], 6);
    assert_eq!(body["fps"], 15.0);
    let path = body["path"].as_str().unwrap().to_owned();
    assert!(Path::new(&path).starts_with(f.var.path().join("exports")));
    let gif = std::fs::read(&path).unwrap();
    assert_eq!(&gif[..6], b"GIF89a");
    let list = json(f.get("/api/runs/clip/exports").await).await;
    assert_eq!(list["exports"][0]["path"], path.as_str());
    assert_eq!(list["exports"][0]["frames"], 6);
    // The artifact record is stored with the run.
    let reader = f.server.local_access().reader();
    let events = tokio::task::spawn_blocking(move || reader.events_page(0, Some("clip"), 100))
        .await
        .unwrap()
        .unwrap();
    assert!(
        events.iter().any(|e| matches!(&e.kind, Some(pb::record::Kind::Artifact(a)) if a.kind == "video" && a.path == path)),
        "{events:?}"
    );
    // No frames: a 404, counted; a bad format: a 400.
    let r = f
        .post(
            "/api/runs/clip/export",
            r#"{"agent":"a","episode":9,"format":"gif"}"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = f
        .post(
            "/api/runs/clip/export",
            r#"{"agent":"a","episode":2,"format":"avi"}"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let stats = json(f.get("/api/stats").await).await;
    assert_eq!(stats["video"]["exports"], 1);
    assert_eq!(stats["video"]["exports_refused"], 1);
}

fn q_table(agent: &str) -> String {
    let rows: Vec<String> = (0..16)
        .map(|i| format!("[{i}.0, 0.5, 0.25, 0.0]"))
        .collect();
    format!(
        r#"{{"format": "q_table/v1", "metadata": {{"run_id": "train-1", "env_id": "FrozenLake-v1", "agent_id": "{agent}"}}, "q_table": [{}]}}"#,
        rows.join(", ")
    )
}

fn write_policies(var: &Path) {
    let root = var.join("policies").join("FrozenLake-v1");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("bdi.json"), q_table("bdi")).unwrap();
    std::fs::write(
        root.join("broken.json"),
        b"{\"format\": \"q_table/v1\", \"q_ta",
    )
    .unwrap();
}

#[tokio::test]
async fn the_inventory_lists_policies_with_filters_and_invalid_files_with_their_reason() {
    let f = fixture(|_| {}).await;
    write_policies(f.var.path());
    let all = json(f.get("/api/policies").await).await;
    let policies = all["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{all}");
    assert_eq!(policies[0]["policy_id"], "FrozenLake-v1/bdi.json");
    assert_eq!(policies[0]["agent_id"], "bdi");
    assert_eq!(policies[0]["format"], "q_table");
    assert_eq!(policies[0]["source_run_id"], "train-1");
    assert_eq!(policies[0]["sha256"].as_str().unwrap().len(), 64);
    let invalid = all["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 1);
    assert_eq!(invalid[0]["path"], "FrozenLake-v1/broken.json");
    assert_eq!(invalid[0]["kind"], "not_json");
    assert!(!invalid[0]["reason"].as_str().unwrap().is_empty());
    let none = json(f.get("/api/policies?env=CartPole-v1").await).await;
    assert_eq!(none["policies"].as_array().unwrap().len(), 0);
    let by_agent = json(f.get("/api/policies?agent=bdi&format=q_table").await).await;
    assert_eq!(by_agent["policies"].as_array().unwrap().len(), 1);
    let one = json(
        f.get("/api/policy?id=FrozenLake-v1/bdi.json&verify=true")
            .await,
    )
    .await;
    assert_eq!(one["digest_matches"], true);
    std::fs::write(
        f.var.path().join("policies/FrozenLake-v1/bdi.json"),
        q_table("changed"),
    )
    .unwrap();
    let one = json(
        f.get("/api/policy?id=FrozenLake-v1/bdi.json&verify=true")
            .await,
    )
    .await;
    assert_eq!(one["digest_matches"], false);
    assert_eq!(
        f.get("/api/policy?id=FrozenLake-v1/nope.json")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn evaluate_submits_an_evaluation_run_linked_to_its_policy() {
    let f = fixture(|_| {}).await;
    write_policies(f.var.path());
    let r = f
        .post(
            "/api/evaluate",
            r#"{"policy_id":"FrozenLake-v1/nope.json","episodes":3,"argv":["/bin/true"]}"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = f
        .post(
            "/api/evaluate",
            r#"{"policy_id":"FrozenLake-v1/bdi.json","episodes":0,"argv":["/bin/true"]}"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = f
        .post(
            "/api/evaluate",
            r#"{"policy_id":"FrozenLake-v1/bdi.json","episodes":3,"argv":["/bin/true"],"run_id":"eval-1"}"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json(r).await["run_id"], "eval-1");
    let info = json(f.get("/api/runs/eval-1/info").await).await;
    assert_eq!(info["known"], true);
    assert_eq!(info["control_mode"], "replay");
    assert_eq!(info["evaluation"]["policy_id"], "FrozenLake-v1/bdi.json");
    assert_eq!(info["evaluation"]["source_run_id"], "train-1");
    assert_eq!(info["evaluation"]["plan"]["episodes"], 3);
    assert_eq!(info["policy_bindings"][0]["agent_id"], "bdi");
    assert_eq!(
        info["policy_bindings"][0]["policy_id"],
        "FrozenLake-v1/bdi.json"
    );
    assert_eq!(
        info["policy_bindings"][0]["policy_digest"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    // ListRuns lists runs the store has records of: give the run one.
    let ack = f
        .server
        .publisher()
        .publish(pb::IngestBatch {
            batch_id: 1,
            records: vec![pb::Scalar {
                run_id: "eval-1".into(),
                agent_id: "bdi".into(),
                tag: "charts/x".into(),
                value: 1.0,
                step: 1,
                timestamp: Some(telemetry_core::timestamp::now()),
                producer_id: "t".into(),
                producer_seq: 1,
                seq_id: 0,
            }
            .into()],
        })
        .await
        .unwrap();
    assert_eq!(ack.stored, 1);
    let runs = json(f.get("/api/runs").await).await;
    let eval_row = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == "eval-1")
        .expect("the evaluation run is listed");
    assert_eq!(eval_row["evaluation_policy_id"], "FrozenLake-v1/bdi.json");
    let stats = json(f.get("/api/stats").await).await;
    assert_eq!(stats["evaluations_submitted"], 1);
}

#[tokio::test]
async fn a_run_info_shows_the_evaluation_results_stored_as_scalars() {
    let f = fixture(|_| {}).await;
    let before = json(f.get("/api/runs/eval-2/info").await).await;
    assert_eq!(before["results"], Value::Null);
    let records: Vec<pb::Record> = [
        ("eval/episodes", 4.0),
        ("eval/success_rate", 0.75),
        ("eval/mean_return", 0.5),
        ("eval/std_return", 0.25),
        ("charts/other", 9.0),
    ]
    .into_iter()
    .zip(1u64..)
    .map(|((tag, value), seq)| {
        pb::Scalar {
            run_id: "eval-2".into(),
            agent_id: "bdi".into(),
            tag: tag.into(),
            value,
            step: 4,
            timestamp: Some(telemetry_core::timestamp::now()),
            producer_id: "eval.eval-2".into(),
            producer_seq: seq,
            seq_id: 0,
        }
        .into()
    })
    .collect();
    let ack = f
        .server
        .publisher()
        .publish(pb::IngestBatch {
            batch_id: 1,
            records,
        })
        .await
        .unwrap();
    assert_eq!(ack.stored, 5);
    let info = json(f.get("/api/runs/eval-2/info").await).await;
    assert_eq!(info["results"]["episodes"], 4.0);
    assert_eq!(info["results"]["success_rate"], 0.75);
    assert_eq!(info["results"]["mean_return"], 0.5);
    assert_eq!(info["results"]["std_return"], 0.25);
    assert_eq!(
        info["results"].as_object().unwrap().len(),
        4,
        "only eval/* tags"
    );
}
