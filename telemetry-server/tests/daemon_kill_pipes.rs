//! A spawned worker's stdout and stderr are pipes to the daemon (through the proxy for a JSONL
//! worker). When the daemon is SIGKILLed, the proxy's writes to those pipes fail: neither the
//! proxy nor the worker may die of it (SIGPIPE / EPIPE), and what the worker wrote meanwhile is
//! delivered, once, after the restart (the restarted daemon stops the orphan and drains its
//! queue dir).
//!
//! Runs the real `gym-telemetry-daemon` binary as a child process (it must be SIGKILLed).
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::*;
use telemetry_core::pb::{run_control_client::RunControlClient, RunState, WatchRunsRequest};
use telemetry_store::{Filter, StoreConfig, StoreReader};
use tonic::transport::Channel;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A daemon process, SIGKILLed when dropped (so a failing test leaves none behind).
struct Daemon(Child);

impl Daemon {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(var: &Path, port: u16, log: &Path) -> Daemon {
    let child = Command::new(workspace_bin("gym-telemetry-daemon"))
        .arg("serve")
        .arg("--var-dir")
        .arg(var)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--insecure-no-auth",
        ])
        .args(["--cancel-grace", "5"])
        .arg("--proxy-bin")
        .arg(workspace_bin("gym-telemetry-proxy"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .env("GYM_TELEMETRY_LOG", "info")
        .spawn()
        .unwrap();
    Daemon(child)
}

async fn connect(port: u16) -> Channel {
    bounded("the daemon to listen", async {
        loop {
            let ep = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
            if let Ok(ch) = ep.connect().await {
                return ch;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Step indices of `run` in the store, in store order.
fn stored(var: &Path, run: &str) -> Vec<u64> {
    let Ok(reader) = StoreReader::open(&StoreConfig::in_var_dir(var).path) else {
        return Vec::new();
    };
    reader
        .stream_steps_since(0, &Filter::run(run))
        .filter_map(Result::ok)
        .map(|s| s.step_index)
        .collect()
}

/// Whether `pid` is a live process (not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .next()
            .map(str::to_owned);
        !matches!(state.as_deref(), Some("Z" | "X"))
    })
}

fn walk(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push((p.display().to_string(), e.metadata().map_or(0, |m| m.len())));
        }
    }
    out
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    bounded(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_daemon_does_not_kill_its_workers_through_their_pipes() {
    let var = tempfile::tempdir().unwrap();
    let flags = tempfile::tempdir().unwrap();
    let f = |name: &str| flags.path().join(name).display().to_string();
    // Ten steps; then, once the daemon is dead, ten more, interleaved with 256 KiB each of
    // plain stdout (passed through by the proxy to its stdout, the dead pipe) and of stderr
    // (copied by the proxy to its stderr, the other dead pipe): four times a pipe buffer, so
    // the worker gets past them only if the proxy keeps reading after its writes fail.
    let script = format!(
        r#"echo $$ > {pid}
step() {{ echo "{{\"type\":\"step\",\"run_id\":\"x\",\"episode\":0,\"step\":$1,\"reward\":1.0}}"; }}
i=0; while [ $i -lt 10 ]; do step $i; i=$((i+1)); done
while [ ! -e {killed} ] && [ -e {pid} ]; do sleep 0.02; done
line=$(printf '%0256d' 0)
while [ $i -lt 20 ]; do
  step $i
  j=0; while [ $j -lt 100 ]; do echo "plain $line"; echo "err $line" >&2; j=$((j+1)); done
  i=$((i+1))
done
touch {wrote}
while [ -e {pid} ]; do sleep 0.2; done
"#,
        pid = f("worker.pid"),
        killed = f("killed"),
        wrote = f("wrote"),
    );
    let port = free_port();
    let mut daemon = serve(var.path(), port, &flags.path().join("daemon1.log"));
    let mut control = RunControlClient::new(connect(port).await);
    let mut watch = control
        .watch_runs(WatchRunsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut req = submit("piped", &["sh", "-c", &script]);
    req.command.as_mut().unwrap().legacy_jsonl = true;
    control.submit_run(req).await.unwrap();
    let info = until(&mut watch, "piped", |s| s == RunState::Running).await;
    let proxy_pid = info.worker_pid.expect("the proxy's pid");
    wait_for("the first ten steps to be stored", || {
        stored(var.path(), "piped").len() == 10
    })
    .await;

    daemon.kill();
    std::fs::write(f("killed"), b"").unwrap();
    let wrote = f("wrote");
    wait_for("the worker to write through the dead pipes", || {
        Path::new(&wrote).exists()
    })
    .await;
    let worker_pid: u32 = std::fs::read_to_string(f("worker.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(proxy_pid), "the proxy died with its daemon's pipes");
    assert!(alive(worker_pid), "the worker died with its daemon's pipes");

    // The restart stops the orphaned proxy and worker and delivers the proxy's queue.
    let port = free_port();
    let log2 = flags.path().join("daemon2.log");
    let mut daemon = serve(var.path(), port, &log2);
    wait_for("the orphans to be stopped", || {
        !alive(proxy_pid) && !alive(worker_pid)
    })
    .await;
    // The drain runs in the background once the daemon serves.
    let delivered = tokio::time::timeout(WAIT, async {
        while stored(var.path(), "piped").len() < 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        delivered.is_ok(),
        "the queue was not delivered: stored {:?}, queues {:?}; the restarted daemon said:\n{}",
        stored(var.path(), "piped"),
        walk(&var.path().join("queues")),
        std::fs::read_to_string(&log2).unwrap_or_default()
    );
    let mut control = RunControlClient::new(connect(port).await);
    let mut watch = control
        .watch_runs(WatchRunsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let done = until_final(&mut watch, "piped").await;
    assert_eq!(done.state, RunState::Failed as i32, "interrupted: {done:?}");
    let mut steps = stored(var.path(), "piped");
    steps.sort_unstable();
    assert_eq!(steps, (0..20).collect::<Vec<u64>>(), "each step once");
    daemon.kill();
}
