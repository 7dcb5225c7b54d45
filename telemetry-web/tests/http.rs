//! The dashboard over HTTP against a real in-process server: login, refusal without the
//! credential, and SSE resume with `Last-Event-ID` (no gap, no duplicate).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, time::Duration};

use axum::{
    body::Body,
    http::{header, Request, Response, StatusCode},
    Router,
};
use http_body_util::BodyExt;
use telemetry_core::pb::{IngestBatch, Record, RunStep};
use telemetry_server::{ServerConfig, ServerHandle};
use telemetry_web::{router, AppState, WebConfig};
use tower::ServiceExt;

struct Fixture {
    server: ServerHandle,
    app: Router,
    token: String,
    _var: tempfile::TempDir,
}

async fn fixture(cfg: impl FnOnce(&mut WebConfig)) -> Fixture {
    let var = tempfile::tempdir().unwrap();
    let mut sc = ServerConfig::ephemeral(var.path());
    sc.auth = telemetry_server::AuthConfig::Token("s3cret-token".into());
    let server = telemetry_server::start(sc).await.unwrap();
    let mut wc = WebConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg(&mut wc);
    let app = router(AppState::new(server.local_access(), wc));
    Fixture {
        token: server.operator_token().unwrap().to_owned(),
        server,
        app,
        _var: var,
    }
}

async fn publish_steps(server: &ServerHandle, run: &str, from: u64, n: u64) {
    let records: Vec<Record> = (from..from + n)
        .map(|i| {
            RunStep {
                run_id: run.into(),
                agent_id: "agent-0".into(),
                step_index: i,
                producer_id: format!("{run}-p"),
                producer_seq: i + 1,
                ..Default::default()
            }
            .into()
        })
        .collect();
    let ack = server
        .publisher()
        .publish(IngestBatch {
            batch_id: from,
            records,
        })
        .await
        .unwrap();
    assert_eq!(u64::from(ack.stored), n);
}

async fn get(app: &Router, uri: &str, headers: &[(&str, &str)]) -> Response<Body> {
    let mut req = Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    app.clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn text(r: Response<Body>) -> String {
    String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// Logs in with the token URL and returns the `Cookie` header to send.
async fn login(f: &Fixture) -> String {
    let r = get(&f.app, &format!("/?token={}", f.token), &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_token_url_sets_a_strict_httponly_cookie_and_redirects_without_the_token() {
    let f = fixture(|_| {}).await;
    let r = get(&f.app, &format!("/?token={}", f.token), &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/");
    assert_eq!(r.headers()[header::REFERRER_POLICY], "no-referrer");
    let set = r.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("gt_session="), "{set}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    assert!(!set.contains(&f.token), "the cookie must not be the token");
    let cookie = set.split(';').next().unwrap();
    // The page and the API now answer.
    let page = get(&f.app, "/", &[("cookie", cookie)]).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(text(page).await.contains("/app.js"));
    publish_steps(&f.server, "run-a", 0, 3).await;
    let runs = get(&f.app, "/api/runs", &[("cookie", cookie)]).await;
    assert_eq!(runs.status(), StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&text(runs).await).unwrap();
    assert_eq!(v["runs"][0]["run_id"], "run-a");
    assert_eq!(v["runs"][0]["step_count"], 3);
    // A bearer token works for scripts.
    let bearer = format!("Bearer {}", f.token);
    let r = get(&f.app, "/api/runs", &[("authorization", &bearer)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    f.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_wrong_or_missing_credential_gets_401_and_no_data() {
    let f = fixture(|_| {}).await;
    publish_steps(&f.server, "secret-run", 0, 5).await;
    let worker = format!("Bearer {}", f.server.worker_token("secret-run").unwrap());
    let cases: Vec<Case> = vec![
        ("/api/runs", vec![], StatusCode::UNAUTHORIZED),
        (
            "/api/runs",
            vec![("cookie", "gt_session=00ff")],
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/api/runs",
            vec![("cookie", "gt_session=s3cret-token")],
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/api/runs",
            vec![("authorization", "Bearer nope")],
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/api/runs",
            vec![("authorization", &worker)],
            StatusCode::FORBIDDEN,
        ),
        (
            "/api/runs/secret-run/events/steps?since=0",
            vec![],
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/api/runs/secret-run/episodes",
            vec![],
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/api/runs/secret-run/replay?episode=0",
            vec![],
            StatusCode::UNAUTHORIZED,
        ),
        ("/api/runs/live", vec![], StatusCode::UNAUTHORIZED),
        ("/", vec![], StatusCode::UNAUTHORIZED),
        ("/?token=wrong", vec![], StatusCode::UNAUTHORIZED),
    ];
    for (uri, headers, want) in cases {
        let r = get(&f.app, uri, &headers).await;
        assert_eq!(r.status(), want, "{uri} {headers:?}");
        assert!(r.headers().get(header::SET_COOKIE).is_none(), "{uri}");
        let body = text(r).await;
        assert!(!body.contains("secret-run"), "{uri} leaked data: {body}");
    }
    // Refused requests are counted where the operator looks (a logged-in stats read).
    let cookie = login(&f).await;
    let stats = text(get(&f.app, "/api/stats", &[("cookie", &cookie)]).await).await;
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["unauthenticated"], 11, "{v}");
    // A POST without the credential changes nothing.
    let r = f
        .app
        .clone()
        .oneshot(
            Request::post("/api/runs")
                .header("content-type", "application/json")
                .body(Body::from(r#"{"argv":["/bin/true"]}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    f.server.shutdown().await.unwrap();
}

/// A request's path and headers, and the status it must get.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, StatusCode);

/// One parsed SSE event.
#[derive(Debug)]
struct Ev {
    event: String,
    id: Option<u64>,
    data: String,
}

/// Reads SSE events from `body` until `done` says stop (a hang guard of 30 s real time, not
/// a timing assertion).
async fn read_events(body: &mut Body, mut done: impl FnMut(&[Ev]) -> bool) -> Vec<Ev> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while !done(&out) {
        let frame = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("an SSE event within 30 s")
            .expect("stream open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = buf.find("\n\n") {
            let chunk: String = buf.drain(..end + 2).collect();
            let mut ev = Ev {
                event: String::new(),
                id: None,
                data: String::new(),
            };
            for line in chunk.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    ev.event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    ev.id = Some(v.parse().unwrap());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    ev.data.push_str(v);
                }
            }
            if !ev.event.is_empty() {
                out.push(ev);
            }
        }
    }
    out
}

fn seqs(evs: &[Ev]) -> Vec<u64> {
    evs.iter()
        .filter(|e| e.event == "records")
        .flat_map(|e| {
            let v: Vec<serde_json::Value> = serde_json::from_str(&e.data).unwrap();
            let s: Vec<u64> = v.iter().map(|r| r["seq_id"].as_u64().unwrap()).collect();
            assert_eq!(e.id, s.last().copied(), "the event id is its last seq");
            s
        })
        .collect()
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_resumes_with_no_gap_and_no_duplicate() {
    let f = fixture(|c| c.sse_max_batch = 7).await;
    let cookie = login(&f).await;
    publish_steps(&f.server, "r", 0, 50).await;
    // First connection: catch-up from the start; leave after two batches.
    let r = get(
        &f.app,
        "/api/runs/r/events/steps?since=0",
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = r.into_body();
    let first = read_events(&mut body, |e| {
        e.iter().filter(|e| e.event == "records").count() >= 2
    })
    .await;
    drop(body);
    let first_seqs = seqs(&first);
    let last_id = first.iter().rev().find_map(|e| e.id).unwrap();
    assert_eq!(first_seqs, (1..=last_id).collect::<Vec<_>>());
    assert!(
        last_id < 50,
        "the first connection saw only part of the run"
    );
    // More records while the page is away, then the browser reconnects with Last-Event-ID.
    publish_steps(&f.server, "r", 50, 30).await;
    let id = last_id.to_string();
    let r = get(
        &f.app,
        "/api/runs/r/events/steps?since=0",
        &[("cookie", &cookie), ("last-event-id", &id)],
    )
    .await;
    let mut body = r.into_body();
    let second = read_events(&mut body, |e| seqs(e).last() == Some(&80)).await;
    let second_seqs = seqs(&second);
    assert_eq!(second_seqs, (last_id + 1..=80).collect::<Vec<_>>());
    // Live records keep coming on the same stream, after the catch-up.
    publish_steps(&f.server, "r", 80, 5).await;
    let live = read_events(&mut body, |e| seqs(e).last() == Some(&85)).await;
    assert_eq!(seqs(&live), (81..=85).collect::<Vec<_>>());
    // A resume point that is not a seq is refused, not guessed.
    let r = get(
        &f.app,
        "/api/runs/r/events/steps",
        &[("cookie", &cookie), ("last-event-id", "x")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    drop(body);
    f.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn sse_streams_are_bounded_and_refusals_counted() {
    let f = fixture(|c| c.max_sse_streams = 2).await;
    let cookie = login(&f).await;
    publish_steps(&f.server, "r", 0, 1).await;
    let a = get(&f.app, "/api/runs/r/events/steps", &[("cookie", &cookie)]).await;
    let b = get(
        &f.app,
        "/api/runs/r/events/episodes",
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    let c = get(&f.app, "/api/runs/r/events/scalars", &[("cookie", &cookie)]).await;
    assert_eq!(c.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(a);
    let d = get(&f.app, "/api/runs/r/events/scalars", &[("cookie", &cookie)]).await;
    assert_eq!(d.status(), StatusCode::OK, "a closed stream frees its slot");
    let stats = text(get(&f.app, "/api/stats", &[("cookie", &cookie)]).await).await;
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["sse_refused"], 1);
    assert_eq!(v["sse_open"], 2);
    drop((b, d));
    f.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn episodes_replay_and_scalars_come_back_as_json() {
    let f = fixture(|_| {}).await;
    let cookie = login(&f).await;
    let mut records: Vec<Record> = Vec::new();
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    for ep in 0..3u64 {
        for st in 0..4u64 {
            records.push(
                RunStep {
                    run_id: "h".into(),
                    agent_id: "p1".into(),
                    episode_index: ep,
                    step_index: st,
                    control_mode: "human".into(),
                    producer_id: "hp".into(),
                    producer_seq: next(),
                    ..Default::default()
                }
                .into(),
            );
        }
        records.push(
            telemetry_core::pb::RunEpisode {
                run_id: "h".into(),
                agent_id: "p1".into(),
                episode_index: ep,
                total_reward: ep as f64,
                steps: 4,
                control_mode: "human".into(),
                metadata_json: r#"{"seed":7,"game_id":"G"}"#.into(),
                producer_id: "hp".into(),
                producer_seq: next(),
                ..Default::default()
            }
            .into(),
        );
    }
    for s in 0..100i64 {
        records.push(
            telemetry_core::pb::Scalar {
                run_id: "h".into(),
                tag: "losses/value".into(),
                value: s as f64,
                step: s,
                // Step s was logged at 1_800_000_000 s + s seconds; step 29 has no time.
                timestamp: (s != 29).then(|| {
                    telemetry_core::timestamp::from_unix_nanos((1_800_000_000 + s) * 1_000_000_000)
                }),
                producer_id: "hp".into(),
                producer_seq: next(),
                ..Default::default()
            }
            .into(),
        );
    }
    f.server
        .publisher()
        .publish(IngestBatch {
            batch_id: 1,
            records,
        })
        .await
        .unwrap();
    let json = |s: String| serde_json::from_str::<serde_json::Value>(&s).unwrap();
    let c = [("cookie", cookie.as_str())];
    let v = json(text(get(&f.app, "/api/replays?mode=human", &c).await).await);
    assert_eq!(v["episodes"].as_array().unwrap().len(), 3);
    let v = json(text(get(&f.app, "/api/replays?mode=agent", &c).await).await);
    assert_eq!(v["episodes"].as_array().unwrap().len(), 0);
    let v = json(text(get(&f.app, "/api/runs/h/replay?agent=p1&episode=1", &c).await).await);
    let steps: Vec<u64> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step_index"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(steps, [0, 1, 2, 3]);
    assert!(v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["episode_index"] == 1));
    assert_eq!(v["complete"], true);
    let v = json(text(get(&f.app, "/api/runs/h/tags", &c).await).await);
    assert_eq!(v["tags"][0]["tag"], "losses/value");
    assert_eq!(v["tags"][0]["points"], 100);
    // Downsampled by the store: 10 buckets over 100 points, refined on a zoomed range.
    let v = json(
        text(
            get(
                &f.app,
                "/api/runs/h/scalars?tag=losses/value&max_points=10",
                &c,
            )
            .await,
        )
        .await,
    );
    assert_eq!(v["series"][0]["step"].as_array().unwrap().len(), 10);
    assert_eq!(v["series"][0]["points"], 100);
    let v = json(
        text(
            get(
                &f.app,
                "/api/runs/h/scalars?tag=losses/value&max_points=10&min_step=20&max_step=29",
                &c,
            )
            .await,
        )
        .await,
    );
    let steps: Vec<i64> = v["series"][0]["step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_i64().unwrap())
        .collect();
    assert_eq!(steps, (20..=29).collect::<Vec<_>>());
    // Each bucket's time is its point's wall time, in ms; null for the point without one.
    let times: Vec<Option<i64>> = v["series"][0]["time_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(serde_json::Value::as_i64)
        .collect();
    let expected: Vec<Option<i64>> = (20..=29)
        .map(|s| (s != 29).then_some((1_800_000_000 + s) * 1_000))
        .collect();
    assert_eq!(times, expected);
    let r = get(&f.app, "/api/runs/h/episodes?mode=bogus", &c).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    f.server.shutdown().await.unwrap();
}

/// The Runs page's stream: its first table already carries a running run's steps/s, taken from
/// the timestamps of its stored steps (101 steps 10 ms apart: 100/s), and the run's completion
/// is pushed without the page asking.
#[tokio::test]
async fn the_runs_stream_has_steps_per_second_in_its_first_table_and_pushes_completion() {
    let f = fixture(|_| {}).await;
    let cookie = login(&f).await;
    let now = telemetry_core::timestamp::to_unix_nanos(&telemetry_core::timestamp::now());
    let records: Vec<Record> = (0..=100u64)
        .map(|i| {
            RunStep {
                run_id: "rate-run".into(),
                agent_id: "agent-0".into(),
                step_index: i,
                producer_id: "rate-p".into(),
                producer_seq: i + 1,
                timestamp: Some(telemetry_core::timestamp::from_unix_nanos(
                    now - (100 - i as i64) * 10_000_000,
                )),
                ..Default::default()
            }
            .into()
        })
        .collect();
    f.server
        .publisher()
        .publish(IngestBatch {
            batch_id: 1,
            records,
        })
        .await
        .unwrap();
    let r = get(&f.app, "/api/runs/live", &[("cookie", &cookie)]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.into_body();
    let evs = read_events(&mut body, |e| !e.is_empty()).await;
    assert_eq!(evs[0].event, "runs");
    let v: serde_json::Value = serde_json::from_str(&evs[0].data).unwrap();
    let run = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == "rate-run")
        .unwrap()
        .clone();
    assert_eq!(run["state"], "running", "{run}");
    let rate = run["steps_per_sec"].as_f64().unwrap();
    assert!((rate - 100.0).abs() < 1e-6, "first steps/s {rate}");
    // Completion: a later table says so.
    f.server
        .publisher()
        .publish(IngestBatch {
            batch_id: 2,
            records: vec![telemetry_core::pb::RunCompleted {
                run_id: "rate-run".into(),
                status: telemetry_core::pb::CompletionStatus::Succeeded as i32,
                producer_id: "rate-p".into(),
                producer_seq: 200,
                ..Default::default()
            }
            .into()],
        })
        .await
        .unwrap();
    let state_of = |e: &Ev| -> String {
        let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["run_id"] == "rate-run")
            .map(|r| r["state"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    let evs = read_events(&mut body, |e| e.iter().any(|e| state_of(e) != "running")).await;
    let last = evs.last().unwrap();
    assert_eq!(last.event, "runs");
    assert_ne!(state_of(last), "running");
    let v: serde_json::Value = serde_json::from_str(&last.data).unwrap();
    let done = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == "rate-run")
        .unwrap();
    assert_eq!(done["steps_per_sec"], 0.0, "a finished run steps at 0/s");
}
