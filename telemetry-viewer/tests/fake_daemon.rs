//! `--once` and the I/O layer against an in-process fake daemon (tonic `Query` + `RunControl`
//! on 127.0.0.1:0). A later session runs the same checks against the real daemon.
#![allow(clippy::unwrap_used)]

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use telemetry_core::pb::{
    query_server::{Query, QueryServer},
    run_control_server::{RunControl, RunControlServer},
    stream_notice::Kind,
    CancelRunRequest, CancelRunResponse, CaughtUp, EpisodeStreamMessage, HeartbeatRequest,
    HeartbeatResponse, ListRunsRequest, ListRunsResponse, RunEpisode, RunInfo, RunState, RunStep,
    RunSummary, StepStreamMessage, StreamNotice, StreamRequest, SubmitRunRequest,
    SubmitRunResponse, WatchRunsRequest,
};
use telemetry_viewer::{
    app::{Command, Connection, Event, StreamId},
    io::{EventSink, Io},
    once::{run_once, snapshot},
    ClientConfig, Clients, ViewerError,
};
use tokio::{net::TcpListener, sync::oneshot};
use tokio_stream::Stream;
use tonic::{transport::server::TcpIncoming, Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;
/// (call, authorization header) of every request the fake saw.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

#[derive(Clone, Default)]
struct Fake {
    runs: Vec<RunSummary>,
    episodes: Vec<RunEpisode>,
    steps: Vec<RunStep>,
    seen: Seen,
}

impl Fake {
    fn record<T>(&self, call: &str, req: &Request<T>) {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.seen.lock().unwrap().push((call.to_owned(), auth));
    }
}

#[tonic::async_trait]
impl Query for Fake {
    type StreamRunStepsStream = BoxStream<StepStreamMessage>;
    type StreamRunEpisodesStream = BoxStream<EpisodeStreamMessage>;
    type StreamRunScalarsStream = BoxStream<telemetry_core::pb::ScalarStreamMessage>;

    async fn stream_run_scalars(
        &self,
        req: Request<telemetry_core::pb::ScalarStreamRequest>,
    ) -> Result<Response<Self::StreamRunScalarsStream>, Status> {
        self.record("StreamRunScalars", &req);
        Err(Status::unimplemented("the fake daemon has no scalars"))
    }

    async fn read_scalars(
        &self,
        req: Request<telemetry_core::pb::ReadScalarsRequest>,
    ) -> Result<Response<telemetry_core::pb::ReadScalarsResponse>, Status> {
        self.record("ReadScalars", &req);
        Ok(Response::new(Default::default()))
    }

    async fn list_tags(
        &self,
        req: Request<telemetry_core::pb::ListTagsRequest>,
    ) -> Result<Response<telemetry_core::pb::ListTagsResponse>, Status> {
        self.record("ListTags", &req);
        Ok(Response::new(Default::default()))
    }

    async fn stream_run_steps(
        &self,
        req: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamRunStepsStream>, Status> {
        self.record("StreamRunSteps", &req);
        let r = req.into_inner();
        let steps: Vec<RunStep> = self
            .steps
            .iter()
            .filter(|s| s.run_id == r.run_id && s.seq_id > r.since_seq)
            .map(|s| {
                let mut s = s.clone();
                if r.drop_render {
                    s.render_hint_json.clear();
                }
                s
            })
            .collect();
        let last = steps.last().map_or(r.since_seq, |s| s.seq_id);
        let msgs = vec![
            Ok(StepStreamMessage {
                steps,
                notice: None,
            }),
            Ok(StepStreamMessage {
                steps: vec![],
                notice: Some(StreamNotice {
                    kind: Some(Kind::CaughtUp(CaughtUp { last_seq: last })),
                }),
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(msgs))))
    }

    async fn stream_run_episodes(
        &self,
        req: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamRunEpisodesStream>, Status> {
        self.record("StreamRunEpisodes", &req);
        let r = req.into_inner();
        let eps: Vec<RunEpisode> = self
            .episodes
            .iter()
            .filter(|e| r.run_id.is_empty() || e.run_id == r.run_id)
            .cloned()
            .collect();
        // Two messages, as rate-limited delivery would split them.
        let (a, b) = eps.split_at(eps.len() / 2);
        let msgs = vec![
            Ok(EpisodeStreamMessage {
                episodes: a.to_vec(),
                notice: None,
            }),
            Ok(EpisodeStreamMessage {
                episodes: b.to_vec(),
                notice: None,
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(msgs))))
    }

    async fn list_runs(
        &self,
        req: Request<ListRunsRequest>,
    ) -> Result<Response<ListRunsResponse>, Status> {
        self.record("ListRuns", &req);
        Ok(Response::new(ListRunsResponse {
            runs: self.runs.clone(),
        }))
    }
}

#[tonic::async_trait]
impl RunControl for Fake {
    type WatchRunsStream = BoxStream<RunInfo>;

    async fn submit_run(
        &self,
        _: Request<SubmitRunRequest>,
    ) -> Result<Response<SubmitRunResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn cancel_run(
        &self,
        _: Request<CancelRunRequest>,
    ) -> Result<Response<CancelRunResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn watch_runs(
        &self,
        req: Request<WatchRunsRequest>,
    ) -> Result<Response<Self::WatchRunsStream>, Status> {
        self.record("WatchRuns", &req);
        let infos: Vec<Result<RunInfo, Status>> = self
            .runs
            .iter()
            .map(|r| {
                Ok(RunInfo {
                    run_id: r.run_id.clone(),
                    state: r.state,
                    ..Default::default()
                })
            })
            .collect();
        // The current states, then the stream stays open (as "every change" would).
        let stream =
            tokio_stream::StreamExt::chain(tokio_stream::iter(infos), tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn heartbeat(
        &self,
        _: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Ok(Response::new(HeartbeatResponse { known: false }))
    }
}

struct Server {
    endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(fake: Fake) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(QueryServer::new(fake.clone()))
                .add_service(RunControlServer::new(fake))
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                })
                .await
                .expect("fake server");
        });
        Server {
            endpoint: format!("http://{addr}"),
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // Streams left open (WatchRuns) would hold a graceful shutdown: bound the wait.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
        self.task.abort();
    }
}

fn fixture() -> Fake {
    let runs = vec![
        RunSummary {
            run_id: "r1".into(),
            state: RunState::Completed as i32,
            agent_ids: vec!["a1".into()],
            control_modes: vec!["agent".into()],
            step_count: 42,
            episode_count: 2,
            dropped_steps: 1,
            game_id: "FrozenLake-v1".into(),
            ..Default::default()
        },
        RunSummary {
            run_id: "demo".into(),
            state: RunState::Running as i32,
            control_modes: vec!["human".into()],
            ..Default::default()
        },
    ];
    let ep = |i: u64, meta: &str, mode: &str| RunEpisode {
        run_id: "r1".into(),
        agent_id: "a1".into(),
        episode_index: i,
        total_reward: 1.5 + i as f64,
        steps: 21,
        terminated: true,
        seq_id: i + 1,
        control_mode: mode.into(),
        metadata_json: meta.into(),
        ..Default::default()
    };
    let episodes = vec![
        ep(
            0,
            r#"{"seed": 42, "env_id": "FrozenLake-v1", "control_mode": "agent_only"}"#,
            "",
        ),
        ep(
            1,
            r#"{"config": {"seed": 43, "game": "FrozenLake-v1"}}"#,
            "agent",
        ),
        RunEpisode {
            run_id: "other".into(),
            ..ep(9, "{}", "")
        },
    ];
    let steps = (1..=3)
        .map(|i| RunStep {
            run_id: "r1".into(),
            agent_id: "a1".into(),
            seq_id: i,
            step_index: i,
            render_hint_json: r#"{"ansi": "\u001b[31mX\u001b[0m"}"#.into(),
            ..Default::default()
        })
        .collect();
    Fake {
        runs,
        episodes,
        steps,
        seen: Arc::default(),
    }
}

#[tokio::test]
async fn once_prints_runs_and_a_runs_episodes_with_metadata() {
    let fake = fixture();
    let seen = fake.seen.clone();
    let server = Server::start(fake).await;
    let mut config = ClientConfig::new(server.endpoint.clone());
    config.auth_token = Some("s3cret".into());

    let mut out = Vec::new();
    run_once(&config, None, &mut out).await.expect("snapshot");
    let text = String::from_utf8(out).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("RUN") && lines[0].contains("STATUS"),
        "{text}"
    );
    let r1 = lines
        .iter()
        .find(|l| l.starts_with("r1 "))
        .expect("r1 line");
    for want in ["completed", "agent", "a1", "42", "FrozenLake-v1"] {
        assert!(r1.contains(want), "{want} in {r1}");
    }
    assert!(lines
        .iter()
        .any(|l| l.starts_with("demo") && l.contains("running") && l.contains("human")));
    assert!(!text.contains("RETURN"), "no episodes without --run");

    let mut out = Vec::new();
    run_once(&config, Some("r1"), &mut out)
        .await
        .expect("snapshot with run");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(
        text.contains("run r1: completed, 42 steps, 2 episodes"),
        "{text}"
    );
    let ep_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("a1 ")).collect();
    assert_eq!(ep_lines.len(), 2, "only r1's episodes: {text}");
    assert!(
        ep_lines[0].contains("42")
            && ep_lines[0].contains("FrozenLake-v1")
            && ep_lines[0].ends_with("agent"),
        "{}",
        ep_lines[0]
    );
    assert!(
        ep_lines[1].contains("43") && ep_lines[1].contains("FrozenLake-v1"),
        "{}",
        ep_lines[1]
    );
    let episodes_part = &text[text.find("run r1:").expect("episodes section")..];
    assert!(
        !episodes_part.contains('—'),
        "every value the worker sent is shown: {text}"
    );

    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().any(|(c, _)| c == "StreamRunEpisodes"));
    assert!(
        seen.iter()
            .all(|(_, a)| a.as_deref() == Some("Bearer s3cret")),
        "every call authenticated: {seen:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn once_against_nothing_is_a_clear_error() {
    // A port that was just free: nothing listens there.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let mut config = ClientConfig::new(format!("http://{addr}"));
    config.connect_timeout = Duration::from_secs(2);
    let err = run_once(&config, None, &mut Vec::new())
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, ViewerError::Client(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("cannot connect to http://{addr}")),
        "{err}"
    );
}

#[tokio::test]
async fn io_layer_feeds_run_states_counts_and_stream_batches() {
    let server = Server::start(fixture()).await;
    let clients = Clients::lazy(&ClientConfig::new(server.endpoint.clone())).expect("clients");
    let (sink, mut rx) = EventSink::channel(64);
    let mut io = Io::start(clients.clone(), sink);
    io.execute(Command::OpenSteps {
        stream: StreamId(1),
        request: StreamRequest {
            run_id: "r1".into(),
            drop_render: true,
            ..Default::default()
        },
    });
    let (mut infos, mut listed, mut steps, mut ended, mut connected) =
        (0, false, Vec::new(), false, false);
    // Bounded: at most 200 events or 10 s, whichever first.
    for _ in 0..200 {
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("channel open");
        match ev {
            Event::RunInfo(_) => infos += 1,
            Event::RunsListed { runs, .. } => listed = runs.len() == 2,
            Event::Steps { stream, message } => {
                assert_eq!(stream, StreamId(1));
                steps.extend(message.steps);
            }
            Event::StreamEnded { stream, error } => {
                assert_eq!((stream, error), (StreamId(1), None));
                ended = true;
            }
            Event::Connection(c) => connected |= c == Connection::Connected,
            _ => {}
        }
        if infos == 2 && listed && ended && connected {
            break;
        }
    }
    assert_eq!(infos, 2, "WatchRuns states arrive");
    assert!(listed && connected && ended);
    assert_eq!(steps.len(), 3);
    assert!(
        steps.iter().all(|s| s.render_hint_json.is_empty()),
        "drop_render honoured"
    );
    drop(io);

    let mut clients = clients;
    let text = snapshot(&mut clients, Some("nope"))
        .await
        .expect("snapshot");
    assert!(
        text.contains("run nope: not listed by the daemon") && text.contains("no episodes"),
        "{text}"
    );
    server.stop().await;
}
