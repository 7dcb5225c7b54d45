//! Failover between two daemons of one PostgreSQL store: a worker's shim is given both
//! (`endpoint = "A,B"`), daemon A is killed (SIGKILL) in mid-stream, the shim moves to B and
//! resends from its last durable ack; the shared watermarks keep every record exactly once. A's
//! lease (`--lease-ttl 1`) then lapses and B takes A's run over: still running (its worker
//! goes on sending, to B), owned by B.
//! Skipped (with a message) when GYM_TELEMETRY_TEST_PG is unset outside CI.
#![allow(clippy::unwrap_used)]

use std::{
    io::BufRead,
    process::{Child, Command, Stdio},
    time::Duration,
};

use telemetry_core::pb::RunStep;
use telemetry_shim::{FlushOutcome, ShimConfig, Telemetry};
use telemetry_store::{Backend, Filter};
use telemetry_store_pg::{testing, PgBackend};

/// A daemon serving `store` (the URL in a 0600 file, as with a password) with the shared token.
fn serve(
    var: &std::path::Path,
    url_file: &std::path::Path,
    token_file: &std::path::Path,
) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gym-telemetry-daemon"))
        .args(["serve", "--var-dir"])
        .arg(var)
        .arg("--store-url-file")
        .arg(url_file)
        .arg("--auth-token-file")
        .arg(token_file)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(["--lease-ttl", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let endpoint = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("gym-telemetry-daemon listening on ")
                .map(str::to_owned)
        })
        .expect("the daemon prints its endpoint");
    // Keep reading its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, endpoint)
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

fn private_file(path: &std::path::Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn a_worker_fails_over_when_its_daemon_is_killed_and_stores_every_record_once() {
    let Some(url) = testing::test_url("a_worker_fails_over_when_its_daemon_is_killed") else {
        return;
    };
    let schema = testing::unique_schema("failover");
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("store-url");
    let sep = if url.contains('?') { '&' } else { '?' };
    private_file(&url_file, &format!("{url}{sep}schema={schema}"));
    let token_file = dir.path().join("token");
    private_file(&token_file, "failover-test-operator-token-0123456789abcdef");
    let (var_a, var_b) = (dir.path().join("a"), dir.path().join("b"));
    let (a, endpoint_a) = serve(&var_a, &url_file, &token_file);
    let (b, endpoint_b) = serve(&var_b, &url_file, &token_file);

    const RUN: &str = "failover";
    const N: u64 = 4000;
    let shim = Telemetry::new(ShimConfig {
        endpoint: format!("{endpoint_a},{endpoint_b}"),
        run_id: Some(RUN.into()),
        auth_token: Some("failover-test-operator-token-0123456789abcdef".into()),
        queue_dir: Some(dir.path().join("queue")),
        batch_max_records: 100,
        reconnect_initial: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..ShimConfig::default()
    })
    .unwrap();
    let step = |i: u64| RunStep {
        run_id: RUN.into(),
        episode_index: 0,
        step_index: i,
        action_json: "0".into(),
        observation_json: format!("{{\"i\":{i}}}"),
        ..Default::default()
    };
    for i in 0..N / 2 {
        shim.step(step(i)).unwrap();
    }
    // Half of it durable through A, then A dies with batches in flight.
    let flushed = shim.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(flushed.outcome, FlushOutcome::Acked, "{flushed:?}");
    for i in N / 2..N / 2 + 500 {
        shim.step(step(i)).unwrap();
    }
    let backend = PgBackend::from_url(&format!("{url}{sep}schema={schema}")).unwrap();
    let reader = backend.reader().unwrap();
    let owner_of = |var: &std::path::Path| {
        let dir = std::fs::canonicalize(var).unwrap().display().to_string();
        move |o: &str| o.ends_with(&format!(":{dir}"))
    };
    let run_row = || {
        reader
            .run_infos()
            .unwrap()
            .into_iter()
            .find(|r| r.run_id == RUN)
    };
    let row = run_row().expect("A registered the run");
    assert!(owner_of(&var_a)(&row.owner), "A owns it: {}", row.owner);
    let mut a = a;
    signal(&a, "-KILL");
    let _ = a.wait();
    for i in N / 2 + 500..N {
        shim.step(step(i)).unwrap();
    }
    let flushed = shim.flush(Duration::from_secs(60)).unwrap();
    let shim_failovers = shim.stats().failovers;
    assert_eq!(flushed.outcome, FlushOutcome::Acked, "{flushed:?}");
    let report = shim.close(Duration::from_secs(60)).unwrap();
    assert_eq!(
        report.outcome,
        FlushOutcome::Acked,
        "everything acked through B: {report:?}"
    );
    assert!(shim_failovers >= 1, "the shim moved to B");
    // A's lease lapses a second after its death; B's next round takes the run over. Its worker
    // kept sending (to B), so it is still running.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let taken = loop {
        let row = run_row().expect("the run row");
        if owner_of(&var_b)(&row.owner) {
            break row;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never took the run over: {row:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        taken.state,
        telemetry_core::pb::RunState::Running as i32,
        "{taken:?}"
    );
    println!("failover: run taken over by B, still running");
    let mut b = b;
    signal(&b, "-TERM");
    let _ = b.wait();

    // Count in the store itself.
    let mut seen = std::collections::BTreeMap::<u64, u32>::new();
    let mut since = 0;
    loop {
        let page = reader.steps_page(since, &Filter::run(RUN), 1000).unwrap();
        let Some(last) = page.last() else { break };
        since = last.seq_id;
        for s in &page {
            *seen.entry(s.step_index).or_default() += 1;
        }
    }
    let lost = (0..N).filter(|i| !seen.contains_key(i)).count();
    let duplicated: u32 = seen.values().map(|n| n - 1).sum();
    println!(
        "failover: stored={} lost={lost} duplicated={duplicated}",
        seen.len()
    );
    assert_eq!((lost, duplicated), (0, 0), "lost=0 duplicated=0");
}
