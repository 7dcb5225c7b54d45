//! Render tests: every view drawn into ratatui's `TestBackend` from scripted data.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use crossterm::event::KeyCode;
use ratatui::style::Color;
use std::time::Duration;
use telemetry_core::pb::{
    stream_notice::Kind, CompletionStatus, Lagged, RunCompleted, RunInfo, RunState,
};
use telemetry_viewer::app::{Connection, Event, Tab};

#[test]
fn runs_list_shows_status_mode_agents_rate_and_drops() {
    let (mut app, t0) = app();
    let mut a = summary("run-a", RunState::Running, &["a1", "a2"], &["agent"]);
    a.dropped_steps = 3;
    let b = summary("run-b", RunState::Failed, &["solo"], &["human"]);
    list(&mut app, vec![a.clone(), b], t0);
    a.step_count += 50;
    list(&mut app, vec![a], t0 + Duration::from_secs(2));
    let buf = render(&app, 100, 12);
    let s = screen(&buf);
    let row_a = lines(&buf)
        .into_iter()
        .find(|l| l.contains("run-a"))
        .expect("run-a row");
    assert!(row_a.contains("running"), "{row_a}");
    assert!(row_a.contains("agent"), "{row_a}");
    assert!(row_a.contains("a1 +1"), "{row_a}");
    assert!(row_a.contains("25.0"), "steps/s from two polls: {row_a}");
    assert!(row_a.contains(" 3 "), "drops: {row_a}");
    let row_b = lines(&buf)
        .into_iter()
        .find(|l| l.contains("run-b"))
        .expect("run-b row");
    assert!(
        row_b.contains("failed") && row_b.contains("human"),
        "{row_b}"
    );
    // The status cell of a failed run is red.
    let (x, y) = find(&buf, "failed").expect("failed cell");
    assert_eq!(buf[(x, y)].fg, Color::Red);
    assert!(s.contains("Runs"));
}

#[test]
fn unreachable_daemon_is_a_clear_retrying_state() {
    let (mut app, _) = app();
    app.update(Event::Connection(Connection::Unreachable {
        error: "tcp connect error: Connection refused".into(),
        retry_in: Duration::from_secs(2),
    }));
    let s = screen(&render(&app, 80, 24));
    assert!(
        s.contains("cannot connect to http://127.0.0.1:50151, retrying in 2s"),
        "{s}"
    );
    assert!(s.contains("no runs known"), "{s}");
}

#[test]
fn grid_draws_the_ansi_render_hint_with_colours() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1"], &["agent"])],
        t0,
    );
    let cmds = open_selected(&mut app);
    assert_eq!(app.current_tab().title(), "r1/a1: Grid");
    let (sid, req) = opened_steps(&cmds).pop().expect("steps stream");
    assert!(!req.drop_render, "the visible Grid asks for render data");
    let mut s = step("r1", "a1", 7, 2, 3);
    s.render_hint_json = serde_json::json!({
        "ansi": "\u{1b}[31m#\u{1b}[0m.@\n.\u{1b}[42mG\u{1b}[0m."
    })
    .to_string();
    app.update(Event::Steps {
        stream: sid,
        message: steps_msg(vec![s], None),
    });
    let buf = render(&app, 80, 24);
    let (x, y) = find(&buf, "#.@").expect("first grid row drawn");
    assert_eq!(buf[(x, y)].fg, Color::Red, "the # is red");
    assert_eq!(buf[(x + 2, y)].symbol(), "@");
    let (gx, gy) = find(&buf, ".G.").expect("second grid row drawn");
    assert_eq!(gy, y + 1);
    assert_eq!(buf[(gx + 1, gy)].bg, Color::Green);
    assert!(screen(&buf).contains("ep 2 step 3"));
}

#[test]
fn grid_falls_back_to_the_observation_without_a_hint() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1"], &[])],
        t0,
    );
    let (sid, _) = opened_steps(&open_selected(&mut app)).pop().expect("steps");
    let mut s = step("r1", "a1", 1, 0, 0);
    s.observation_json = "[[1, 0], [0, 2]]".into();
    app.update(Event::Steps {
        stream: sid,
        message: steps_msg(vec![s], None),
    });
    let txt = screen(&render(&app, 80, 24));
    assert!(txt.contains("no render hint: observation"), "{txt}");
    assert!(txt.contains("1 0") && txt.contains("0 2"), "{txt}");
}

#[test]
fn raw_shows_json_and_the_overflow_and_lag_notices() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1"], &[])],
        t0,
    );
    open_selected(&mut app);
    let cmds = app.update(key(KeyCode::Char('r')));
    assert_eq!(app.current_tab().title(), "r1/a1: Raw");
    let (raw_sid, req) = opened_steps(&cmds)
        .pop()
        .expect("re-opened without render data");
    assert!(req.drop_render);
    let steps: Vec<_> = (1..=130).map(|i| step("r1", "a1", i, 0, i)).collect();
    app.update(Event::Steps {
        stream: raw_sid,
        message: steps_msg(
            steps,
            Some(Kind::Lagged(Lagged {
                dropped: 12,
                dropped_steps: 12,
                dropped_episodes: 0,
                dropped_scalars: 0,
            })),
        ),
    });
    let txt = screen(&render(&app, 80, 24));
    assert!(txt.contains("30 older steps not shown"), "{txt}");
    assert!(txt.contains("lagged: the daemon dropped 12"), "{txt}");
    assert!(
        txt.contains("\"seq\": 130"),
        "newest step at the tail: {txt}"
    );
    assert!(txt.contains("lag drops 12"), "status line: {txt}");
    // Scrolling up leaves the tail.
    for _ in 0..30 {
        app.update(key(KeyCode::Up));
    }
    let txt = screen(&render(&app, 80, 24));
    assert!(txt.contains("scrolled up 30"), "{txt}");
    assert!(!txt.contains("\"seq\": 130"), "{txt}");
}

#[test]
fn episodes_table_fills_metadata_from_aliases_and_draws_a_sparkline() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1"], &[])],
        t0,
    );
    let cmds = open_selected(&mut app);
    let (eid, _) = opened_episodes(&cmds).pop().expect("episodes stream");
    app.update(key(KeyCode::Char('e')));
    app.update(Event::Episodes {
        stream: eid,
        message: episodes_msg(
            vec![
                episode(
                    "r1",
                    "a1",
                    1,
                    0,
                    "",
                    r#"{"seed": 42, "env_id": "FrozenLake-v1", "control_mode": "agent_only"}"#,
                ),
                episode(
                    "r1",
                    "a1",
                    2,
                    1,
                    "agent",
                    r#"{"config": {"seed": 7, "game": "Taxi-v3"}}"#,
                ),
                episode("r1", "a1", 3, 2, "", "{}"),
            ],
            None,
        ),
    });
    let buf = render(&app, 80, 24);
    let rows = lines(&buf);
    let r0 = rows
        .iter()
        .find(|l| l.contains("FrozenLake"))
        .expect("alias env_id shown");
    assert!(r0.contains("42") && r0.contains("agent"), "{r0}");
    let r1 = rows
        .iter()
        .find(|l| l.contains("Taxi-v3"))
        .expect("nested config game");
    assert!(r1.contains(" 7 ") && r1.contains("agent"), "{r1}");
    let r2 = rows
        .iter()
        .find(|l| l.contains("2.250"))
        .expect("third episode");
    assert!(r2.contains('—') && r2.contains("unknown"), "{r2}");
    let txt = screen(&buf);
    assert!(txt.contains("returns (last 3)"), "{txt}");
    assert!(txt.contains("yes"), "terminated column: {txt}");
}

#[test]
fn human_replay_lists_only_human_or_unknown_episodes() {
    let (mut app, _) = app();
    let cmds = app.update(key(KeyCode::Char('2')));
    assert_eq!(app.current_tab(), &Tab::HumanReplay);
    let (hid, req) = opened_episodes(&cmds).pop().expect("human list stream");
    assert_eq!(req.control_mode, "human");
    assert!(req.human_or_unknown && !req.follow);
    // An older daemon ignoring the filter sends agent episodes too.
    app.update(Event::Episodes {
        stream: hid,
        message: episodes_msg(
            vec![
                episode(
                    "demo",
                    "player",
                    1,
                    0,
                    "human",
                    r#"{"game_id": "MiniGrid-Empty"}"#,
                ),
                episode("train", "bot", 2, 0, "agent", "{}"),
                episode("old", "", 3, 5, "", r#"{"env": "OldEnv-v0"}"#),
                episode("meta", "x", 4, 1, "", r#"{"control_mode": "agent"}"#),
            ],
            None,
        ),
    });
    app.update(Event::StreamEnded {
        stream: hid,
        error: None,
    });
    let txt = screen(&render(&app, 80, 24));
    assert!(txt.contains("demo/player"), "{txt}");
    assert!(txt.contains("OldEnv-v0"), "{txt}");
    assert!(!txt.contains("train/bot"), "{txt}");
    assert!(!txt.contains("meta/x"), "{txt}");
    assert!(txt.contains("2 non-human hidden"), "{txt}");
    assert_eq!(app.human().episodes.len(), 2);
}

#[test]
fn completed_run_shows_a_banner_and_stops_following() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1"], &[])],
        t0,
    );
    let cmds = open_selected(&mut app);
    let (sid, _) = opened_steps(&cmds).pop().expect("steps");
    let out = app.update(Event::Steps {
        stream: sid,
        message: steps_msg(
            vec![step("r1", "a1", 1, 0, 0)],
            Some(Kind::RunCompleted(RunCompleted {
                run_id: "r1".into(),
                status: CompletionStatus::Failed as i32,
                error: "CUDA out of memory".into(),
                exit_code: Some(1),
                ..Default::default()
            })),
        ),
    });
    assert_eq!(closed(&out), vec![sid], "the finished stream is closed");
    assert!(opened_steps(&out).is_empty(), "and not re-opened");
    let txt = screen(&render(&app, 80, 24));
    assert!(
        txt.contains("run completed: failed: CUDA out of memory (exit 1)"),
        "{txt}"
    );
    assert!(
        app.tabs().iter().any(|t| t.title() == "r1/a1: Replay"),
        "a finished run gets an agent Replay tab"
    );
}

#[test]
fn registry_completion_also_marks_the_views() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1"], &[])],
        t0,
    );
    open_selected(&mut app);
    app.update(Event::RunInfo(RunInfo {
        run_id: "r1".into(),
        state: RunState::Completed as i32,
        ..Default::default()
    }));
    let txt = screen(&render(&app, 80, 24));
    assert!(txt.contains("run completed: completed"), "{txt}");
}

#[test]
fn every_tab_fits_80x24() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![
            summary(
                "a-rather-long-run-identifier-0001",
                RunState::Running,
                &["agent_with_long_name", "b"],
                &["multi_agent"],
            ),
            summary("r2", RunState::Completed, &["a1"], &["human"]),
        ],
        t0,
    );
    open_selected(&mut app);
    let n = app.tabs().len();
    assert!(n >= 8, "Runs, Human Replay and 3 tabs for each of 2 agents");
    for i in 0..n {
        let buf = render(&app, 80, 24);
        let rows = lines(&buf);
        let title = app.current_tab().title();
        assert!(
            rows[0].contains(&title),
            "tab {i}: title {title:?} visible in {:?}",
            rows[0]
        );
        assert!(
            rows[23].contains("? help"),
            "status line at the bottom: {:?}",
            rows[23]
        );
        app.update(key(KeyCode::Tab));
    }
    app.update(key(KeyCode::Char('?')));
    let txt = screen(&render(&app, 80, 24));
    assert!(
        txt.contains("keys (? to close)") && txt.contains("quit"),
        "{txt}"
    );
}

#[test]
fn equal_returns_draw_mid_height_bars_not_full_ones() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1"], &[])],
        t0,
    );
    let cmds = open_selected(&mut app);
    let (eid, _) = opened_episodes(&cmds).pop().expect("episodes stream");
    app.update(key(KeyCode::Char('e')));
    let episodes = (0..6)
        .map(|i| {
            let mut e = episode("r1", "a1", i + 1, i, "agent", "{}");
            e.total_reward = 0.0;
            e
        })
        .collect();
    app.update(Event::Episodes {
        stream: eid,
        message: episodes_msg(episodes, None),
    });
    let buf = render(&app, 80, 24);
    let rows = lines(&buf);
    let (_, title_y) = find(&buf, "returns (last 6)").expect("sparkline title");
    let inner: Vec<&String> = rows
        .iter()
        .skip(usize::from(title_y) + 1)
        .take_while(|l| !l.starts_with('└'))
        .collect();
    assert!(inner.len() >= 2, "sparkline rows: {inner:?}");
    let bars = |l: &str| l.chars().filter(|c| ('▁'..='█').contains(c)).count();
    assert_eq!(bars(inner[0]), 0, "top row stays empty: {inner:?}");
    assert!(
        bars(inner[inner.len() - 1]) >= 6,
        "bottom row has the bars: {inner:?}"
    );
}

#[test]
fn charts_draw_the_shown_group_with_last_values_and_count_nan() {
    use telemetry_core::pb::{ScalarBucket, ScalarSeries};
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1"], &[])],
        t0,
    );
    open_selected(&mut app);
    let cmds = app.update(key(KeyCode::Char('c')));
    let txt = screen(&render(&app, 100, 30));
    assert!(txt.contains("reading curves"), "{txt}");
    let stream = cmds
        .iter()
        .find_map(|c| match c {
            telemetry_viewer::app::Command::ReadScalars { stream, .. } => Some(*stream),
            _ => None,
        })
        .unwrap();
    let bucket = |s: i64, v: f64| ScalarBucket {
        first_step: s,
        last_step: s,
        min: v,
        max: v,
        last: v,
        count: 1,
        nan_count: u64::from(v.is_nan()),
        last_time_ns: 0,
    };
    let loss = ScalarSeries {
        tag: "losses/value_loss".into(),
        points: 40,
        buckets: (0..40)
            .map(|i| {
                bucket(
                    i * 100,
                    if i == 30 {
                        f64::NAN
                    } else {
                        1.0 / (i + 1) as f64
                    },
                )
            })
            .collect(),
        ..Default::default()
    };
    let sps = ScalarSeries {
        tag: "charts/SPS".into(),
        points: 1,
        buckets: vec![bucket(0, 812.0)],
        ..Default::default()
    };
    app.update(Event::Scalars {
        stream,
        result: Ok(vec![sps, loss]),
    });
    let txt = screen(&render(&app, 100, 30));
    assert!(
        txt.contains("charts (1)") && txt.contains("losses (1)"),
        "{txt}"
    );
    assert!(
        txt.contains("charts/SPS") && txt.contains("last 812.0000"),
        "{txt}"
    );
    assert!(
        !txt.contains("losses/value_loss"),
        "only the shown group: {txt}"
    );
    app.update(key(KeyCode::Down));
    let txt = screen(&render(&app, 100, 30));
    assert!(txt.contains("losses/value_loss"), "{txt}");
    assert!(
        txt.contains("40 points") && txt.contains("1 NaN/inf"),
        "{txt}"
    );
    assert!(
        txt.contains("3900"),
        "the x axis ends at the last step: {txt}"
    );
}

#[test]
fn agents_tab_shows_every_agent_side_by_side_on_one_scale() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary(
            "mp",
            RunState::Running,
            &["piston_0", "piston_1", "piston_2"],
            &["multi_agent"],
        )],
        t0,
    );
    let cmds = open_selected(&mut app);
    let eps = opened_episodes(&cmds);
    assert_eq!(eps.len(), 3, "one episodes stream per agent");
    // piston_0: returns 0.25, 1.25, 2.25 (10 steps each); piston_1: one of 5.25; piston_2: none.
    for (id, req) in &eps {
        let episodes = match req.agent_id.as_str() {
            "piston_0" => (0..3)
                .map(|i| episode("mp", "piston_0", i + 1, i, "multi_agent", "{}"))
                .collect(),
            "piston_1" => vec![episode("mp", "piston_1", 9, 5, "multi_agent", "{}")],
            _ => Vec::new(),
        };
        app.update(Event::Episodes {
            stream: *id,
            message: episodes_msg(episodes, None),
        });
    }
    let agents = app
        .tabs()
        .iter()
        .position(|t| {
            *t == Tab::Agents {
                run_id: "mp".into(),
            }
        })
        .expect("a run with several agents has an Agents tab");
    assert_eq!(app.tabs()[agents - 1].title(), "mp: Charts");
    // `a` from an agent tab jumps to it.
    app.update(key(KeyCode::Char('a')));
    assert_eq!(app.current_index(), agents);
    let buf = render(&app, 100, 24);
    let rows = lines(&buf);
    assert!(
        rows[1].contains("mp · 3 agents side by side"),
        "{}",
        rows[1]
    );
    let header = rows
        .iter()
        .find(|l| l.contains("Agent") && l.contains("Eps"))
        .expect("header");
    for h in [
        "Eps",
        "Steps",
        "Last",
        "Mean",
        "Best",
        "Len",
        "returns 0.25 … 5.25",
    ] {
        assert!(header.contains(h), "{h} in {header}");
    }
    let row = |agent: &str| {
        rows.iter()
            .skip(1) // the tab bar names agents too
            .find(|l| l.contains(agent))
            .unwrap_or_else(|| panic!("{agent} row in {rows:?}"))
            .replace('│', " ")
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // Agent, episodes, steps, last, mean, best, mean length, sparkline (one shared scale).
    assert_eq!(
        row("piston_0")[1..],
        ["3", "0", "2.25", "1.25", "2.25", "10.0", "▁▂▄"]
    );
    assert_eq!(
        row("piston_1")[1..],
        ["1", "0", "5.25", "5.25", "5.25", "10.0", "█"]
    );
    assert_eq!(row("piston_2")[1..], ["0", "0", "—", "—", "—", "—"]);
    // The agent with the best mean return is highlighted.
    let cell = |agent: &str| {
        let y = rows
            .iter()
            .skip(1)
            .position(|l| l.contains(agent))
            .expect("agent row") as u16
            + 1;
        let x = rows[usize::from(y)]
            .chars()
            .position(|c| c == 'p')
            .expect("name") as u16;
        buf[(x, y)].fg
    };
    assert_eq!(cell("piston_1"), Color::Green);
    assert_ne!(cell("piston_0"), Color::Green);
}

#[test]
fn a_single_agent_run_has_no_agents_tab_until_a_second_agent_appears() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1"], &[])],
        t0,
    );
    open_selected(&mut app);
    assert!(!app.tabs().iter().any(|t| matches!(t, Tab::Agents { .. })));
    list(
        &mut app,
        vec![summary("r1", RunState::Running, &["a1", "a2"], &[])],
        t0,
    );
    let titles: Vec<String> = app.tabs().iter().map(Tab::title).collect();
    assert!(titles.contains(&"r1: Agents".to_owned()), "{titles:?}");
    assert!(titles.contains(&"r1/a2: Grid".to_owned()), "{titles:?}");
    app.update(key(KeyCode::Char('x')));
    assert_eq!(app.tabs().len(), 2, "closing the run closes its Agents tab");
}

#[test]
fn the_episodes_tab_names_the_policy_the_agent_ran_with() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("eval", RunState::Running, &["bdi"], &["replay"])],
        t0,
    );
    let cmds = open_selected(&mut app);
    let (eid, _) = opened_episodes(&cmds).pop().expect("episodes stream");
    app.update(key(KeyCode::Char('e')));
    let mut with_policy = episode("eval", "bdi", 1, 0, "replay", "{}");
    with_policy.policy_id = "FrozenLake-v1/train/q.json".into();
    with_policy.policy_digest = "0123456789abcdef".repeat(4);
    app.update(Event::Episodes {
        stream: eid,
        message: episodes_msg(vec![with_policy], None),
    });
    let s = screen(&render(&app, 120, 24));
    assert!(
        s.contains("policy FrozenLake-v1/train/q.json @0123456789ab"),
        "{s}"
    );
}

#[test]
fn an_agent_without_a_policy_shows_none() {
    let (mut app, t0) = app();
    list(
        &mut app,
        vec![summary("r", RunState::Running, &["a"], &[])],
        t0,
    );
    let cmds = open_selected(&mut app);
    let (eid, _) = opened_episodes(&cmds).pop().expect("episodes stream");
    app.update(key(KeyCode::Char('e')));
    app.update(Event::Episodes {
        stream: eid,
        message: episodes_msg(vec![episode("r", "a", 1, 0, "agent", "{}")], None),
    });
    let s = screen(&render(&app, 120, 24));
    assert!(!s.contains("policy "), "{s}");
}
