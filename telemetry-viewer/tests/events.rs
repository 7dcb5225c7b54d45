//! Event-handling tests: keys switch tabs, runs open and close, streams follow what is shown,
//! replays step frame by frame. Pure: events in, state and commands out.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use crossterm::event::KeyCode;
use telemetry_core::pb::{stream_notice::Kind, CompletionStatus, RunCompleted, RunState};
use telemetry_viewer::app::{pane::PaneKey, AgentView, Command, Event, Tab, STREAM_RETRY};

fn titles(app: &telemetry_viewer::App) -> Vec<String> {
    app.tabs().iter().map(Tab::title).collect()
}

#[test]
fn enter_opens_one_pane_per_agent_and_x_closes_the_run() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary(
            "r1",
            RunState::Running,
            &["a1", "a2"],
            &["multi_agent"],
        )],
        t0,
    );
    let cmds = open_selected(&mut app);
    assert_eq!(
        titles(&app),
        [
            "Runs",
            "Human Replay",
            "r1/a1: Grid",
            "r1/a1: Raw",
            "r1/a1: Episodes",
            "r1/a2: Grid",
            "r1/a2: Raw",
            "r1/a2: Episodes",
            "r1: Charts",
            "r1: Agents"
        ]
    );
    assert_eq!(app.current_tab().title(), "r1/a1: Grid");
    let steps = opened_steps(&cmds);
    let eps = opened_episodes(&cmds);
    assert_eq!(steps.len(), 2);
    assert_eq!(eps.len(), 2);
    for (_, r) in steps.iter().chain(eps.iter()) {
        assert_eq!(r.run_id, "r1");
        assert!(r.follow);
        assert_eq!(r.min_interval_ms, 50, "20 Hz rate-limited delivery");
        assert!(r.max_batch > 0);
    }
    // Only the visible Grid asks for render data.
    let render: Vec<(&str, bool)> = steps
        .iter()
        .map(|(_, r)| (r.agent_id.as_str(), !r.drop_render))
        .collect();
    assert!(render.contains(&("a1", true)) && render.contains(&("a2", false)));
    assert_eq!(app.open_streams(), 4);

    // Enter on an open run just shows it (leaving and re-entering the Grid flips only the
    // render flag of a1's steps stream).
    let away = app.update(key(KeyCode::Char('1')));
    assert_eq!(opened_steps(&away).len(), 1);
    assert!(opened_steps(&away)[0].1.drop_render);
    let again = open_selected(&mut app);
    assert_eq!(titles(&app).len(), 10, "no second set of tabs");
    assert!(opened_episodes(&again).is_empty());
    assert!(opened_steps(&again)
        .iter()
        .all(|(_, r)| !r.drop_render && r.since_seq == 0));
    assert_eq!(app.current_tab().title(), "r1/a1: Grid");
    assert_eq!(app.open_streams(), 4);

    let out = app.update(key(KeyCode::Char('x')));
    assert_eq!(closed(&out).len(), 4, "every stream of the run is closed");
    assert!(closed(&out).contains(&eps[0].0) && closed(&out).contains(&eps[1].0));
    assert_eq!(titles(&app), ["Runs", "Human Replay"]);
    assert_eq!(app.current_tab(), &Tab::Runs);
    assert_eq!(app.open_streams(), 0);
}

#[test]
fn tab_keys_cycle_and_jump() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1"], &[])],
        t0,
    );
    open_selected(&mut app);
    app.update(key(KeyCode::Tab));
    assert_eq!(app.current_tab().title(), "r1/a1: Raw");
    app.update(key(KeyCode::BackTab));
    app.update(key(KeyCode::BackTab));
    assert_eq!(app.current_tab(), &Tab::HumanReplay);
    app.update(key(KeyCode::BackTab));
    app.update(key(KeyCode::BackTab));
    assert_eq!(app.current_tab().title(), "r1: Charts", "wraps around");
    app.update(key(KeyCode::Char('g')));
    assert_eq!(app.current_tab().title(), "r1/a1: Grid");
    app.update(key(KeyCode::Char('p')));
    assert_eq!(
        app.current_tab().title(),
        "r1/a1: Grid",
        "no Replay tab while running"
    );
    assert!(app
        .flash()
        .is_some_and(|f| f.contains("once the run has finished")));
    app.update(key(KeyCode::Char('1')));
    assert_eq!(app.current_tab(), &Tab::Runs);
    app.update(key(KeyCode::Char('?')));
    assert!(app.show_help());
    app.update(key(KeyCode::Tab));
    assert_eq!(
        app.current_tab(),
        &Tab::Runs,
        "keys go to the help while it is shown"
    );
    app.update(key(KeyCode::Esc));
    assert!(!app.show_help());
}

#[test]
fn grid_stream_asks_for_render_only_while_visible_and_resumes_after_the_last_seq() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1"], &[])],
        t0,
    );
    let (grid_sid, req) = opened_steps(&open_selected(&mut app)).pop().unwrap();
    assert_eq!((req.since_seq, req.drop_render), (0, false));
    app.update(Event::Steps {
        stream: grid_sid,
        message: steps_msg(
            (1..=5).map(|i| step("r1", "a1", i * 10, 0, i)).collect(),
            None,
        ),
    });
    // Hide the Grid: re-open without render data after seq 50.
    let out = app.update(key(KeyCode::Char('r')));
    assert_eq!(closed(&out), vec![grid_sid]);
    let (raw_sid, req) = opened_steps(&out).pop().unwrap();
    assert_eq!(
        (req.since_seq, req.drop_render, req.follow),
        (50, true, true)
    );
    // Episodes tab: the hidden stream stays as it is.
    let out = app.update(key(KeyCode::Char('e')));
    assert!(opened_steps(&out).is_empty() && closed(&out).is_empty());
    app.update(Event::Steps {
        stream: raw_sid,
        message: steps_msg(vec![step("r1", "a1", 60, 0, 6)], None),
    });
    // A late batch of the closed stream is ignored.
    app.update(Event::Steps {
        stream: grid_sid,
        message: steps_msg(vec![step("r1", "a1", 70, 0, 7)], None),
    });
    let key_a1 = PaneKey::new("r1", "a1");
    assert_eq!(app.pane(&key_a1).unwrap().steps_seen, 6);
    // Back to the Grid: one step back, so the newest step comes again with its render hint.
    let out = app.update(key(KeyCode::Char('g')));
    assert_eq!(closed(&out), vec![raw_sid]);
    let (sid, req) = opened_steps(&out).pop().unwrap();
    assert_eq!((req.since_seq, req.drop_render), (59, false));
    let mut again = step("r1", "a1", 60, 0, 6);
    again.render_hint_json = r#"{"ansi": "@"}"#.into();
    app.update(Event::Steps {
        stream: sid,
        message: steps_msg(vec![again], None),
    });
    let pane = app.pane(&key_a1).unwrap();
    assert_eq!(pane.steps_seen, 6, "the re-sent step is not counted twice");
    assert!(!pane.latest.as_ref().unwrap().render_hint_json.is_empty());
}

#[test]
fn a_lost_stream_is_reopened_after_the_retry_delay_from_the_last_seq() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1"], &[])],
        t0,
    );
    let (sid, _) = opened_steps(&open_selected(&mut app)).pop().unwrap();
    app.update(Event::Steps {
        stream: sid,
        message: steps_msg(vec![step("r1", "a1", 9, 0, 0)], None),
    });
    let out = app.update(Event::StreamEnded {
        stream: sid,
        error: Some("transport error".into()),
    });
    assert!(opened_steps(&out).is_empty(), "no immediate retry storm");
    let tick = |at| Event::Tick {
        at,
        wall: wall(),
        dropped_events: 0,
    };
    let out = app.update(tick(t0 + STREAM_RETRY / 2));
    assert!(opened_steps(&out).is_empty());
    let out = app.update(tick(t0 + STREAM_RETRY + Duration::from_millis(1)));
    let (_, req) = opened_steps(&out).pop().expect("re-opened");
    assert_eq!(req.since_seq, 9);
    let p = app.pane(&PaneKey::new("r1", "a1")).unwrap();
    assert!(p.notices.iter().any(|n| n.contains("transport error")));
}

#[test]
fn agents_that_appear_later_get_their_tabs() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &[], &[])],
        t0,
    );
    open_selected(&mut app);
    assert_eq!(app.current_tab().title(), "r1/(all): Grid");
    let cmds = list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a7"], &[])],
        t0,
    );
    assert!(titles(&app).contains(&"r1/a7: Episodes".to_owned()));
    assert!(opened_steps(&cmds)
        .iter()
        .any(|(_, r)| r.agent_id == "a7" && r.drop_render));
}

#[test]
fn agent_replay_steps_through_a_finished_runs_episode() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("done", RunState::Completed, &["a1"], &["agent"])],
        t0,
    );
    let cmds = open_selected(&mut app);
    // A finished run: stored records only, and a Replay tab from the start.
    let (_, sreq) = opened_steps(&cmds).pop().unwrap();
    let (eid, ereq) = opened_episodes(&cmds).pop().unwrap();
    assert!(!sreq.follow && !ereq.follow);
    assert!(titles(&app).contains(&"done/a1: Replay".to_owned()));
    app.update(Event::Episodes {
        stream: eid,
        message: episodes_msg(
            vec![
                episode("done", "a1", 1, 0, "agent", "{}"),
                episode("done", "a1", 2, 1, "agent", "{}"),
            ],
            None,
        ),
    });
    app.update(Event::StreamEnded {
        stream: eid,
        error: None,
    });
    app.update(key(KeyCode::Char('e')));
    app.update(key(KeyCode::Down));
    let out = app.update(key(KeyCode::Enter));
    assert_eq!(app.current_tab().title(), "done/a1: Replay");
    let (rid, req) = opened_steps(&out).pop().expect("replay read");
    assert_eq!(
        (req.run_id.as_str(), req.agent_id.as_str(), req.follow),
        ("done", "a1", false)
    );
    let mut frames: Vec<_> = (0..3).map(|i| step("done", "a1", 10 + i, 1, i)).collect();
    for (i, f) in frames.iter_mut().enumerate() {
        f.render_hint_json = serde_json::json!({ "ansi": format!("frame-{i}") }).to_string();
    }
    let mut batch = vec![step("done", "a1", 5, 0, 0)];
    batch.extend(frames);
    app.update(Event::Steps {
        stream: rid,
        message: steps_msg(batch, None),
    });
    let out = app.update(Event::Steps {
        stream: rid,
        message: steps_msg(vec![step("done", "a1", 20, 2, 0)], None),
    });
    assert_eq!(closed(&out), vec![rid], "reading stops at the next episode");
    let pane = |app: &telemetry_viewer::App| {
        app.pane(&PaneKey::new("done", "a1"))
            .unwrap()
            .replay
            .current()
            .map(|s| s.step_index)
    };
    assert_eq!(pane(&app), Some(0));
    let txt = screen(&render(&app, 80, 24));
    assert!(
        txt.contains("frame 1/3") && txt.contains("frame-0"),
        "{txt}"
    );
    app.update(key(KeyCode::Right));
    app.update(key(KeyCode::Right));
    app.update(key(KeyCode::Right));
    assert_eq!(pane(&app), Some(2), "clamped at the last frame");
    app.update(key(KeyCode::Left));
    assert_eq!(pane(&app), Some(1));
    app.update(key(KeyCode::Home));
    app.update(key(KeyCode::Char(' ')));
    let tick = |at| Event::Tick {
        at,
        wall: wall(),
        dropped_events: 0,
    };
    app.update(tick(t0 + Duration::from_millis(100)));
    app.update(tick(t0 + Duration::from_millis(200)));
    assert_eq!(pane(&app), Some(2), "playing advances one frame per tick");
    let txt = screen(&render(&app, 80, 24));
    assert!(
        txt.contains("frame 3/3") && txt.contains("frame-2"),
        "{txt}"
    );
    app.update(key(KeyCode::Esc));
    assert_eq!(pane(&app), None, "Esc goes back to the list");
}

#[test]
fn human_replay_loads_the_chosen_episode() {
    let (mut app, _) = app();
    let cmds = app.update(key(KeyCode::Char('2')));
    let (hid, _) = opened_episodes(&cmds).pop().unwrap();
    app.update(Event::Episodes {
        stream: hid,
        message: episodes_msg(
            vec![
                episode("p1", "kb", 1, 0, "human", "{}"),
                episode("p2", "", 2, 3, "", "{}"),
            ],
            None,
        ),
    });
    app.update(key(KeyCode::Down));
    let out = app.update(key(KeyCode::Enter));
    let (rid, req) = opened_steps(&out).pop().unwrap();
    assert_eq!((req.run_id.as_str(), req.agent_id.as_str()), ("p2", ""));
    app.update(Event::Steps {
        stream: rid,
        message: steps_msg(vec![step("p2", "", 1, 3, 0), step("p2", "", 2, 3, 1)], None),
    });
    app.update(Event::StreamEnded {
        stream: rid,
        error: None,
    });
    app.update(key(KeyCode::End));
    let f = app.human().replay.frames.as_ref().unwrap();
    assert_eq!((f.steps.len(), f.pos, f.loading), (2, 1, false));
    // Reload: the old list stream (already ended) and frames are dropped, a new read starts.
    let out = app.update(key(KeyCode::Char('R')));
    assert_eq!(opened_episodes(&out).len(), 1);
    assert!(app.human().episodes.is_empty() && app.human().replay.frames.is_none());
}

#[test]
fn completion_on_the_episodes_stream_lets_the_steps_stream_finish() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1"], &[])],
        t0,
    );
    let cmds = open_selected(&mut app);
    let (sid, _) = opened_steps(&cmds).pop().unwrap();
    let (eid, _) = opened_episodes(&cmds).pop().unwrap();
    let out = app.update(Event::Episodes {
        stream: eid,
        message: episodes_msg(
            vec![],
            Some(Kind::RunCompleted(RunCompleted {
                status: CompletionStatus::Succeeded as i32,
                exit_code: Some(0),
                ..Default::default()
            })),
        ),
    });
    assert_eq!(
        closed(&out),
        vec![eid],
        "the steps stream still delivers its last steps"
    );
    app.update(Event::Steps {
        stream: sid,
        message: steps_msg(vec![step("r1", "a1", 3, 0, 0)], None),
    });
    let out = app.update(Event::StreamEnded {
        stream: sid,
        error: None,
    });
    assert!(
        opened_steps(&out).is_empty(),
        "a finished run is not followed again"
    );
    let p = app.pane(&PaneKey::new("r1", "a1")).unwrap();
    assert_eq!(p.steps_seen, 1);
    assert_eq!(
        p.completion_banner().as_deref(),
        Some("run completed: succeeded (exit 0)")
    );
    assert!(app.tabs().contains(&Tab::Agent {
        key: PaneKey::new("r1", "a1"),
        view: AgentView::Replay
    }));
}

#[test]
fn quit_closes_every_stream() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1"], &[])],
        t0,
    );
    open_selected(&mut app);
    let out = app.update(key(KeyCode::Char('q')));
    assert_eq!(out.last(), Some(&Command::Quit));
    assert_eq!(closed(&out).len(), 2);
    assert!(app.should_quit());
}

#[test]
fn a_failed_human_replay_read_is_retried_from_the_start() {
    let (mut app, t0) = app();
    let (hid, _) = opened_episodes(&app.update(key(KeyCode::Char('2'))))
        .pop()
        .unwrap();
    app.update(Event::Episodes {
        stream: hid,
        message: episodes_msg(vec![episode("p1", "kb", 1, 0, "human", "{}")], None),
    });
    app.update(Event::StreamEnded {
        stream: hid,
        error: Some("connection reset".into()),
    });
    assert!(app.human().error.as_deref() == Some("connection reset"));
    let tick = |at| Event::Tick {
        at,
        wall: wall(),
        dropped_events: 0,
    };
    assert!(opened_episodes(&app.update(tick(t0 + STREAM_RETRY / 2))).is_empty());
    let out = app.update(tick(t0 + STREAM_RETRY * 2));
    let (_, req) = opened_episodes(&out).pop().expect("read again");
    assert_eq!(req.since_seq, 0);
    assert!(
        app.human().episodes.is_empty(),
        "the partial list is not doubled"
    );
    assert!(app.human().error.is_none() && app.human().loading);
}

#[test]
fn idle_ticks_do_not_force_a_redraw_but_events_do() {
    let (mut app, t0) = app();
    app.take_dirty();
    app.update(Event::Tick {
        at: t0 + Duration::from_millis(100),
        wall: wall() + Duration::from_millis(100),
        dropped_events: 0,
    });
    assert!(!app.take_dirty(), "nothing on screen changed");
    app.update(Event::Tick {
        at: t0 + Duration::from_millis(200),
        wall: wall() + Duration::from_millis(200),
        dropped_events: 3,
    });
    assert!(
        app.take_dirty(),
        "the drop counter on the status line changed"
    );
    assert_eq!(app.dropped_events(), 3);
    app.update(key(KeyCode::Down));
    assert!(app.take_dirty());
}

fn charts_reads(cmds: &[Command]) -> Vec<(telemetry_viewer::app::StreamId, String)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::ReadScalars { stream, request } => Some((*stream, request.run_id.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn the_charts_tab_reads_curves_while_shown_and_live_and_groups_them() {
    use telemetry_core::pb::{ScalarBucket, ScalarSeries};
    use telemetry_viewer::app::charts::CHARTS_REFRESH;
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1"], &[])],
        t0,
    );
    let opened = open_selected(&mut app);
    assert!(
        charts_reads(&opened).is_empty(),
        "hidden charts read nothing"
    );
    let shown = app.update(key(KeyCode::Char('c')));
    assert_eq!(app.current_tab().title(), "r1: Charts");
    let reads = charts_reads(&shown);
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].1, "r1");
    // One read in flight at most.
    let tick = |app: &mut telemetry_viewer::App, after: Duration| {
        app.update(Event::Tick {
            at: t0 + after,
            wall: std::time::SystemTime::now(),
            dropped_events: 0,
        })
    };
    assert!(charts_reads(&tick(&mut app, CHARTS_REFRESH * 3)).is_empty());
    let series = |tag: &str, last: f64| ScalarSeries {
        tag: tag.into(),
        points: 2,
        buckets: vec![ScalarBucket {
            first_step: 0,
            last_step: 10,
            min: 0.0,
            max: last,
            last,
            count: 2,
            nan_count: 0,
            last_time_ns: 0,
        }],
        ..Default::default()
    };
    app.update(Event::Scalars {
        stream: reads[0].0,
        result: Ok(vec![
            series("charts/SPS", 800.0),
            series("losses/td_loss", 0.5),
        ]),
    });
    let c = app.charts("r1").unwrap();
    assert_eq!(c.groups(), vec!["charts", "losses"]);
    app.update(key(KeyCode::Down));
    assert_eq!(app.charts("r1").unwrap().selected_group(), Some("losses"));
    // Live: read again once the refresh interval has passed since the answer.
    assert_eq!(charts_reads(&tick(&mut app, CHARTS_REFRESH * 4)).len(), 1);
    // Hidden: no reads.
    app.update(key(KeyCode::Char('1')));
    assert!(charts_reads(&tick(&mut app, CHARTS_REFRESH * 20)).is_empty());
    // x on the Charts tab closes the run, its charts with it.
    app.update(key(KeyCode::Char('2')));
    app.update(key(KeyCode::BackTab));
    app.update(key(KeyCode::BackTab));
    assert_eq!(app.current_tab().title(), "r1: Charts");
    app.update(key(KeyCode::Char('x')));
    assert!(app.charts("r1").is_none());
    assert_eq!(titles(&app), ["Runs", "Human Replay"]);
}
