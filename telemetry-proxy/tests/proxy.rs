//! `gym-telemetry-proxy` as a user runs it: the real binary, the predecessor's fixtures, real
//! child processes, a fake daemon. Each run is bounded by a watchdog.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};
use telemetry_shim::{
    fake_ingest::FakeIngest,
    pb::{record::Kind, CompletionStatus, Record},
};

/// Upper bound of every wait in these tests (they normally finish in well under a second).
const WAIT: Duration = Duration::from_secs(20);

/// The producer seqs of records, in order.
fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.producer().1).collect()
}

/// `shared/fixtures` (the `shared/` folder beside the repository).
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures")
}

fn proxy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gym-telemetry-proxy"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GYM_TELEMETRY") {
            cmd.env_remove(k);
        }
    }
    cmd.env("GYM_TELEMETRY_BATCH_LINGER_MS", "5");
    cmd
}

/// Runs to completion, or panics (killing it) after [`WAIT`].
fn run(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the proxy");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(out) => out.expect("proxy output"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("the proxy did not finish within {WAIT:?}");
        }
    }
}

fn kinds(records: &[Record]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(r.record_kind().expect("kind").as_str())
            .or_default() += 1;
    }
    m
}

fn read_jsonl(path: &Path) -> Vec<Record> {
    let file = std::fs::File::open(path).expect("dry-run output");
    telemetry_core::jsonl::JsonlReader::new(BufReader::new(file))
        .map(|l| l.expect("valid line").record)
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_fixture_replays_in_dry_run_with_exact_counts() {
    let cases: [(&str, &[(&str, usize)]); 3] = [
        ("legacy-demo-worker.jsonl", &[("episode", 3), ("step", 12)]),
        (
            "legacy-bdi-worker.jsonl",
            &[
                ("artifact", 1),
                ("episode", 2),
                ("run_completed", 1),
                ("run_started", 1),
                ("step", 6),
            ],
        ),
        (
            "legacy-bdi-worker-dry-run.jsonl",
            &[("run_completed", 1), ("run_started", 1)],
        ),
    ];
    for (name, want) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let out_path = dir.path().join("out.jsonl");
        let mut cmd = proxy();
        cmd.arg("--dry-run")
            .arg(&out_path)
            .arg("--input")
            .arg(fixtures().join(name));
        let out = run(cmd);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let records = read_jsonl(&out_path);
        let want: BTreeMap<&str, usize> = want.iter().copied().collect();
        assert_eq!(kinds(&records), want, "{name}");
        assert_eq!(
            seqs(&records),
            (1..=records.len() as u64).collect::<Vec<_>>()
        );
        let total: usize = want.values().sum();
        assert!(
            stderr(&out).contains(&format!("parsed={total} rejected=0 passed_through=0")),
            "{name}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn a_failing_worker_is_proxied_to_the_daemon_with_its_lifecycle() {
    let fake = FakeIngest::start().expect("fake daemon");
    let fixture = fixtures().join("legacy-demo-worker.jsonl");
    let script = format!(
        "cat '{}'; echo not json; echo err >&2; exit 3",
        fixture.display()
    );
    let mut cmd = proxy();
    cmd.args([
        "--endpoint",
        &fake.endpoint(),
        "--run-id",
        "R-child",
        "--agent-id",
        "a9",
    ])
    .args(["--", "sh", "-c", &script]);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "not json\n");
    let err = stderr(&out);
    assert!(err.lines().any(|l| l == "err"), "{err}");
    assert!(
        err.contains("parsed=15 rejected=0 passed_through=1 stderr=1 synthesized=2"),
        "{err}"
    );
    assert!(err.contains("flush=Acked"), "{err}");

    let stored = fake.state().records();
    assert_eq!(
        seqs(&stored),
        (1..=17).collect::<Vec<_>>(),
        "one producer, each record once"
    );
    assert!(
        stored.iter().all(|r| r.run_id() == "R-child"),
        "--run-id wins"
    );
    let want: BTreeMap<&str, usize> = [
        ("episode", 3),
        ("run_completed", 1),
        ("run_started", 1),
        ("step", 12),
    ]
    .into();
    assert_eq!(kinds(&stored), want);
    match &stored[0].kind {
        Some(Kind::RunStarted(r)) => {
            assert_eq!(r.agent_id, "a9");
            assert!(r.config_json.contains("\"sh\""), "{}", r.config_json);
        }
        other => panic!("run_started first, got {other:?}"),
    }
    match &stored[1].kind {
        Some(Kind::Step(s)) => assert_eq!(s.agent_id, "agent_RUN123", "the worker's agent id kept"),
        other => panic!("{other:?}"),
    }
    match &stored[16].kind {
        Some(Kind::RunCompleted(c)) => {
            assert_eq!(c.status(), CompletionStatus::Failed);
            assert_eq!(c.exit_code, Some(3));
            assert_eq!(c.signal, None);
        }
        other => panic!("run_completed last, got {other:?}"),
    }
}

#[test]
fn a_worker_reporting_its_own_lifecycle_is_not_doubled() {
    let fake = FakeIngest::start().expect("fake daemon");
    let fixture = fixtures().join("legacy-bdi-worker.jsonl");
    let mut cmd = proxy();
    cmd.args(["--endpoint", &fake.endpoint(), "--"])
        .arg("cat")
        .arg(&fixture);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stored = fake.state().records();
    let want: BTreeMap<&str, usize> = [
        ("artifact", 1),
        ("episode", 2),
        ("run_completed", 1),
        ("run_started", 1),
        ("step", 6),
    ]
    .into();
    assert_eq!(kinds(&stored), want);
    assert!(stored.iter().all(|r| r.run_id() == "demo-train"));
    match &stored[10].kind {
        Some(Kind::RunCompleted(c)) => assert_eq!(c.status(), CompletionStatus::Succeeded),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_clean_exit_without_lifecycle_lines_is_succeeded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("out.jsonl");
    let mut cmd = proxy();
    cmd.arg("--dry-run")
        .arg(&out_path)
        .args(["--run-id", "R0", "--", "sh", "-c", "echo hello"]);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    let records = read_jsonl(&out_path);
    assert_eq!(records.len(), 2);
    match &records[1].kind {
        Some(Kind::RunCompleted(c)) => {
            assert_eq!(c.status(), CompletionStatus::Succeeded);
            assert_eq!(c.run_id, "R0");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_worker_that_cannot_start_exits_127_and_is_reported_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("out.jsonl");
    let mut cmd = proxy();
    cmd.arg("--dry-run").arg(&out_path).args([
        "--run-id",
        "R404",
        "--",
        "/nonexistent/worker-binary",
    ]);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(127));
    let records = read_jsonl(&out_path);
    assert_eq!(
        kinds(&records),
        [("run_completed", 1), ("run_started", 1)].into()
    );
    match &records[1].kind {
        Some(Kind::RunCompleted(c)) => assert_eq!(c.status(), CompletionStatus::Failed),
        other => panic!("{other:?}"),
    }
}

#[test]
fn long_lines_and_bad_lines_are_rejected_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("out.jsonl");
    let long = format!(
        r#"{{"type":"step","run_id":"r","episode":0,"step":0,"pad":"{}"}}"#,
        "x".repeat(5000)
    );
    let script = format!(
        r#"echo '{long}'; echo '{{"type":"step","run_id":"r"}}'; echo '{{"type":"teleport"}}'; echo '{{broken'; echo '{{"type":"step","run_id":"r","episode":0,"step":1}}'"#
    );
    let mut cmd = proxy();
    cmd.arg("--dry-run").arg(&out_path).args([
        "--max-line-bytes",
        "1024",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("parsed=1 rejected=4 passed_through=0"),
        "{}",
        stderr(&out)
    );
    let records = read_jsonl(&out_path);
    assert_eq!(
        kinds(&records),
        [("run_completed", 1), ("run_started", 1), ("step", 1)].into()
    );
}

#[test]
fn a_full_stderr_pipe_cannot_deadlock_the_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("out.jsonl");
    let fixture = fixtures().join("legacy-demo-worker.jsonl");
    // 1 MiB on stderr (16 times a pipe's buffer) before any telemetry, then more after.
    let script = format!(
        "head -c 1048576 /dev/zero | tr '\\0' 'e' >&2; echo >&2; cat '{}'; head -c 300000 /dev/zero | tr '\\0' 'f' >&2",
        fixture.display()
    );
    let mut cmd = proxy();
    cmd.arg("--dry-run")
        .arg(&out_path)
        .args(["--", "sh", "-c", &script]);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.len() > 1_300_000, "stderr passed through");
    let records = read_jsonl(&out_path);
    assert_eq!(records.len(), 15 + 2);
}

#[test]
fn sigterm_is_forwarded_and_the_run_is_cancelled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("out.jsonl");
    let mut child = proxy()
        .arg("--dry-run")
        .arg(&out_path)
        .args([
            "--run-id",
            "Rsig",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 60",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let _ = tx.send(line);
        let mut rest = Vec::new();
        let _ = stdout.read_to_end(&mut rest);
    });
    let ready = rx.recv_timeout(WAIT);
    if ready.as_deref() != Ok("ready\n") {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        panic!("the worker did not start: {ready:?}");
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal the proxy");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(WAIT) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("the proxy did not exit after SIGTERM");
        }
    };
    assert_eq!(out.status.code(), Some(128 + 15), "{}", stderr(&out));
    let records = read_jsonl(&out_path);
    match &records.last().expect("records").kind {
        Some(Kind::RunCompleted(c)) => {
            assert_eq!(c.status(), CompletionStatus::Cancelled);
            assert_eq!(c.signal, Some(15));
            assert_eq!(c.exit_code, None);
        }
        other => panic!("{other:?}"),
    }
}

/// `legacy-demo-worker.jsonl` repeated `times` times (15 records each), as a replay input.
fn repeated_fixture(dir: &Path, times: usize) -> (PathBuf, u64) {
    let lines =
        std::fs::read_to_string(fixtures().join("legacy-demo-worker.jsonl")).expect("fixture");
    let path = dir.join("input.jsonl");
    std::fs::write(&path, lines.repeat(times)).expect("write the input");
    (path, 15 * times as u64)
}

#[test]
fn a_daemon_down_for_a_while_is_waited_for_and_gets_everything_once() {
    let mut fake = FakeIngest::start().expect("fake daemon");
    fake.stop();
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, n) = repeated_fixture(dir.path(), 200);
    let mut child = proxy()
        .env("GYM_TELEMETRY_LOG", "info")
        .args(["--endpoint", &fake.endpoint(), "--run-id", "R-down"])
        .arg("--queue-dir")
        .arg(dir.path().join("q"))
        .arg("--input")
        .arg(&input)
        .args(["--flush-timeout-secs", "20"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the proxy");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let stderr_pipe = BufReader::new(child.stderr.take().expect("stderr"));
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr_pipe.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Down until the proxy has failed to connect and is in its final wait.
    let mut seen = Vec::new();
    let (mut unreachable, mut waiting) = (false, false);
    while !(unreachable && waiting) {
        match lines.recv_timeout(WAIT) {
            Ok(line) => {
                unreachable |= line.contains("telemetry daemon unreachable");
                waiting |= line.contains("waiting for the daemon to ack every record");
                seen.push(line);
            }
            Err(_) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                panic!("the proxy never waited for the daemon: {seen:#?}");
            }
        }
    }
    fake.restart().expect("the daemon comes back");
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = match done.recv_timeout(WAIT) {
        Ok(s) => s.expect("proxy exit"),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("the proxy did not finish");
        }
    };
    // The rest of its stderr, up to EOF (the reader thread then drops its sender).
    while let Ok(line) = lines.recv_timeout(WAIT) {
        seen.push(line);
    }
    let err = seen.join("\n");
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("flush=Acked; undelivered=0; exit=0"), "{err}");
    assert!(!err.contains("not delivered"), "{err}");
    let stored = fake.state().records();
    assert_eq!(
        seqs(&stored),
        (1..=n).collect::<Vec<_>>(),
        "everything, each record once"
    );
    assert_eq!(fake.state().duplicates(), 0);
}

#[test]
fn a_daemon_that_never_comes_back_makes_the_proxy_fail_and_say_what_remains() {
    let addr = telemetry_shim::fake_ingest::reserve_port().expect("port");
    let endpoint = format!("http://{addr}");
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, n) = repeated_fixture(dir.path(), 20);
    let queue = dir.path().join("q");

    let mut cmd = proxy();
    cmd.args(["--endpoint", &endpoint, "--run-id", "R-gone"])
        .arg("--queue-dir")
        .arg(&queue)
        .arg("--input")
        .arg(&input)
        .args(["--flush-timeout-secs", "1"]);
    let started = std::time::Instant::now();
    let out = run(cmd);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(telemetry_proxy::EXIT_UNDELIVERED),
        "{err}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it waited out its flush timeout"
    );
    assert!(
        err.contains(&format!("flush=OnDisk; undelivered={n}; exit=75")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{n} records not delivered; they are kept in the queue directory {}",
            queue.display()
        )),
        "{err}"
    );

    // Without a queue directory they are lost, and it says so.
    let mut cmd = proxy();
    cmd.args(["--endpoint", &endpoint, "--run-id", "R-gone"])
        .arg("--input")
        .arg(&input)
        .args(["--flush-timeout-secs", "1"]);
    let out = run(cmd);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(
        err.contains(&format!("{n} records not delivered and lost")),
        "{err}"
    );

    // The command it names delivers the queued records, once.
    let fake =
        FakeIngest::start_with(addr, telemetry_shim::fake_ingest::FakeState::new()).expect("up");
    let mut cmd = proxy();
    cmd.args(["--endpoint", &endpoint])
        .arg("--queue-dir")
        .arg(&queue)
        .args(["--input", "/dev/null"]);
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(seqs(&fake.state().records()), (1..=n).collect::<Vec<_>>());
    assert_eq!(fake.state().duplicates(), 0);
}
