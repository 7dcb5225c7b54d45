//! The chaos harness behind `scripts/chaos.sh`: faults injected at random but bounded points on
//! loopback, then every stored record counted by its producer seq.
//!
//! Scenarios (issue 13), each ending with exactly one line
//! `chaos: scenario=<name> runs=<n> sent=<n> stored=<n> lost=<n> duplicated=<n>`:
//!
//! - `daemon-kill`: the real daemon binary (`gym-telemetry-daemon serve`) SIGKILLed and restarted
//!   `runs` times while records stream through an in-process shim with a queue dir and,
//!   concurrently, through the proxy binary replaying a JSONL file (`--queue-dir`). `runs` =
//!   daemon kills. Promise: the shim's close is `Acked`, the proxy exits 0, nothing lost,
//!   nothing stored twice.
//! - `worker-kill`: the demo worker (`gym-telemetry-demo worker`) SIGKILLed mid-run `runs` times
//!   and restarted on the same queue dir, the last run left to finish. `runs` = worker kills;
//!   `sent` = the highest producer seq stored (what the surviving queue numbered). Promise: the
//!   stored producer seqs are exactly 1..=sent, each once (nothing the queue held is lost, no
//!   resend stored twice).
//! - `tcp-faults`: a TCP fault proxy of this binary between the shim and the daemon that delays,
//!   stalls, resets and half-closes connections at random byte counts; `runs` = faults
//!   injected. Promise: close `Acked`, nothing lost, nothing stored twice.
//! - `viewer-stall` (`chaos/viewer_stall.rs`): a follow stream (`StreamRunSteps`, as
//!   telemetry-viewer asks for it) that stops reading for a long while a shim ingests at a
//!   paced rate. `runs` = stalls. Promise: the ingest rate while it stalls is >= 0.7 of the
//!   rate without a viewer, the daemon's VmRSS grows by <= 16 MiB during the stall, and
//!   steps received + `Lagged` == steps stored after its resume point, with no `Gap`.
//! - `queue-full` (`chaos/queue_full.rs`): the shim's disk queue filled past its byte limit
//!   with the daemon down, under each full policy, then the daemon started. `runs` = policies.
//!   Promise: the segment files stay within the limit, stored + `dropped` == offered exactly,
//!   the survivors are the policy's (all accepted / the oldest / the newest), nothing twice;
//!   `lost` = records neither stored nor counted as dropped.
//! - `wal-bounded` (`chaos/wal_bounded.rs`): a viewer following a run from its start, reading
//!   slowly (in catch-up all along) while a shim ingests. `runs` = 1. Promise: the store's
//!   `-wal` file stays within 4 x its size with no reader + 1 MiB (and a snapshot held open
//!   must cross that bound, or the check is void); the viewer's accounting is exact.
//! - `disk-full` (`chaos/disk_full.rs`): a tmpfs of the harness under (a) the daemon's var dir,
//!   (b) the shim's queue dir, filled to `ENOSPC` while records keep coming, then freed;
//!   `runs` = fill-and-free cycles. Promise: the daemon stays up, service resumes (close
//!   `Acked`), every accepted record stored exactly once, every refusal counted in `dropped`.
//!   Needs root (mount); without it: SKIPPED, exit 2.
//! - `corrupt-segment` (`chaos/corrupt_segment.rs`): a queue left undelivered, one byte in the
//!   middle of one segment flipped and the last segment's final frame torn, then delivered by
//!   the proxy binary; `runs` = damaged queues. Promise: everything outside the damaged region
//!   stored exactly once, and the records the queue reports lost (`lost_records`) are exactly
//!   the missing seqs.
//! - `os-crash` (`chaos/os_crash.rs`): machine crashes of a shim queue, simulated by rebuilding
//!   the queue dir from only what was synced (the shim's `fault-injection` feature), for each
//!   fsync policy; `runs` = crashes. Promise: what the policy keeps comes back and is stored
//!   once, new records after the crash are all stored (no seq reused), nothing twice.
//! - `frames-kill` (`chaos/frames_kill.rs`): a `FrameSender` capturing paced frames (spilling
//!   to disk while the daemon is away) while the daemon is SIGKILLed and restarted; `runs` =
//!   kills. Promise: every captured frame is in the frame store's index exactly once with its
//!   own pixels, the flush succeeds, the spill directory ends empty; `sent` = frames captured.
//!
//! The daemon's token is read from `<var-dir>/auth-token`, which it makes on first start, as a
//! worker of the same user would find it. Usage:
//! `chaos --bin-dir DIR [--quick] [--seed N] [--work-dir DIR] [--scenario NAME]...`
//! (DIR holds `gym-telemetry-daemon`, `gym-telemetry-demo`, `gym-telemetry-proxy`). Exits 1
//! when any scenario breaks its promise, 2 when the harness itself fails or a scenario cannot
//! run here (SKIPPED, with the reason).

// A crate root's `mod x;` looks beside it (src/bin/x.rs), so the scenario files in
// src/bin/chaos/ are named by path.
#[path = "chaos/corrupt_segment.rs"]
mod corrupt_segment;
#[path = "chaos/disk_full.rs"]
mod disk_full;
#[path = "chaos/frames_kill.rs"]
mod frames_kill;
#[path = "chaos/os_crash.rs"]
mod os_crash;

use std::{
    collections::HashSet,
    fs::File,
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use gym_telemetry_benches::{template, AnyResult};
use telemetry_shim::{FlushOutcome, FullPolicy, ShimConfig, Telemetry};
use telemetry_store::{Filter, StoreConfig, StoreReader};

// A crate root looks for `mod x;` beside itself (`src/bin/x.rs`), so the scenarios that have
// files of their own under `chaos/` are named by path.
#[path = "chaos/queue_full.rs"]
mod queue_full;
#[path = "chaos/viewer_stall.rs"]
mod viewer_stall;
#[path = "chaos/wal_bounded.rs"]
mod wal_bounded;

/// Bound of every wait on a process or the daemon.
const WAIT: Duration = Duration::from_secs(120);

struct Opts {
    quick: bool,
    bin_dir: PathBuf,
    work_dir: Option<PathBuf>,
    seed: u64,
    only: Vec<String>,
}

fn parse_args() -> AnyResult<Opts> {
    let mut o = Opts {
        quick: false,
        bin_dir: PathBuf::new(),
        work_dir: None,
        seed: 0,
        only: vec![],
    };
    let mut seed = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => o.quick = true,
            "--bin-dir" => o.bin_dir = PathBuf::from(value("--bin-dir")?),
            "--work-dir" => o.work_dir = Some(PathBuf::from(value("--work-dir")?)),
            "--seed" => seed = Some(value("--seed")?.parse()?),
            "--scenario" => o.only.push(value("--scenario")?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if o.bin_dir.as_os_str().is_empty() {
        return Err("--bin-dir is required".into());
    }
    o.seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    Ok(o)
}

/// A scenario that cannot run here (e.g. mounting a tmpfs is not permitted): reported as
/// SKIPPED with the reason, and the harness exits 2 ("cannot run"), not 1.
#[derive(Debug)]
struct Skipped(String);

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skipped {}

/// What one scenario did.
struct Outcome {
    name: &'static str,
    runs: u64,
    sent: u64,
    stored: u64,
    lost: u64,
    duplicated: u64,
    /// Why it broke its promise (empty: it kept it).
    broken: Vec<String>,
}

impl Outcome {
    fn line(&self) -> String {
        format!(
            "chaos: scenario={} runs={} sent={} stored={} lost={} duplicated={}",
            self.name, self.runs, self.sent, self.stored, self.lost, self.duplicated
        )
    }
}

// ---------------------------------------------------------------- the daemon as a child

struct Daemon {
    exe: PathBuf,
    var: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
    starts: u64,
}

impl Daemon {
    fn new(bin_dir: &Path, work: &Path) -> AnyResult<Daemon> {
        Ok(Daemon {
            exe: bin_dir.join("gym-telemetry-daemon"),
            var: work.join("var"),
            port: free_port()?,
            log: work.join("daemon.log"),
            child: None,
            starts: 0,
        })
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it and waits (bounded) until it accepts connections and its token exists.
    fn start(&mut self) -> AnyResult<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.exe)
            .arg("serve")
            .arg("--var-dir")
            .arg(&self.var)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--metrics-listen", "off"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.exe.display()))?;
        self.child = Some(child);
        self.starts += 1;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    return Err(format!(
                        "the daemon exited at start ({status}); see {}",
                        self.log.display()
                    )
                    .into());
                }
            }
            if self.var.join("auth-token").is_file()
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err("the daemon did not start listening".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn token(&self) -> AnyResult<String> {
        Ok(std::fs::read_to_string(self.var.join("auth-token"))?
            .trim()
            .to_owned())
    }

    /// SIGKILL, and reap it.
    fn kill(&mut self) -> AnyResult<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM (a graceful stop), SIGKILL if it does not exit in time.
    fn stop(&mut self) -> AnyResult<()> {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id())?);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
            if wait_child(&mut c, Duration::from_secs(30))?.is_none() {
                c.kill()?;
                c.wait()?;
            }
        }
        Ok(())
    }

    fn store(&self) -> AnyResult<StoreReader> {
        Ok(StoreReader::open(&StoreConfig::in_var_dir(&self.var).path)?)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn free_port() -> AnyResult<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits (bounded) for a child; `None` if it is still running at the deadline.
fn wait_child(c: &mut Child, timeout: Duration) -> AnyResult<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = c.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------- counting

/// Producer seqs of every record stored for `run` (steps, episodes, lifecycle events).
fn stored_seqs(store: &StoreReader, run: &str) -> AnyResult<Vec<u64>> {
    let filter = Filter::run(run);
    let mut seqs = Vec::new();
    for s in store.stream_steps_since(0, &filter) {
        seqs.push(s?.producer_seq);
    }
    for e in store.stream_episodes_since(0, &filter) {
        seqs.push(e?.producer_seq);
    }
    let mut since = 0;
    loop {
        let page = store.read_scalars_page(since, &filter, 10_000)?;
        let Some(last) = page.last() else { break };
        since = last.seq_id;
        seqs.extend(page.iter().map(|s| s.producer_seq));
    }
    // Lifecycle events are a handful per worker start: one page holds them.
    let events = store.events_since(0, Some(run), 100_000)?;
    seqs.extend(events.iter().map(|r| r.producer().1));
    Ok(seqs)
}

/// (stored, lost, duplicated) of seqs that should be exactly `1..=sent`.
fn tally(seqs: &[u64], sent: u64) -> (u64, u64, u64) {
    let distinct: HashSet<u64> = seqs.iter().copied().collect();
    let in_range = distinct
        .iter()
        .filter(|&&s| (1..=sent).contains(&s))
        .count() as u64;
    let stored = seqs.len() as u64;
    (stored, sent - in_range, stored - distinct.len() as u64)
}

// ---------------------------------------------------------------- the shim side

fn shim(endpoint: &str, run: &str, queue: &Path, token: &str) -> AnyResult<Telemetry> {
    Ok(Telemetry::new(ShimConfig {
        endpoint: endpoint.into(),
        run_id: Some(run.into()),
        agent_id: Some("chaos-agent".into()),
        queue_dir: Some(queue.to_path_buf()),
        auth_token: Some(token.into()),
        // Lossless: a full buffer waits rather than drops (drops would be counted as lost).
        full_policy: FullPolicy::Block { timeout: WAIT },
        reconnect_max: Duration::from_millis(500),
        ..ShimConfig::default()
    })?)
}

/// Streams `n` steps for `run`, paced over `over`; returns the producer thread.
fn produce(
    shim: Arc<Telemetry>,
    run: &'static str,
    n: u64,
    over: Duration,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut refused = 0;
        for i in 0..n {
            let mut s = template(i);
            s.run_id = run.into();
            if shim.step(s).is_err() {
                refused += 1;
            }
            if i % 500 == 0 {
                let due = over.mul_f64(i as f64 / n as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        refused
    })
}

/// Kills and restarts `d` once `progress` passes each point, down for a random while, except
/// the first outage: `first_down` long, with `before_first` run just before it.
fn kill_at(
    d: &mut Daemon,
    progress: impl Fn() -> u64,
    points: &[u64],
    rng: &mut fastrand::Rng,
    first_down: Duration,
    mut before_first: impl FnMut() -> AnyResult<()>,
) -> AnyResult<()> {
    for (k, &p) in points.iter().enumerate() {
        let deadline = Instant::now() + WAIT;
        while progress() < p {
            if Instant::now() >= deadline {
                return Err(format!("no progress to {p} records").into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if k == 0 {
            before_first()?;
        }
        d.kill()?;
        let down = if k == 0 {
            first_down
        } else {
            Duration::from_millis(rng.u64(20..400))
        };
        std::thread::sleep(down);
        d.start()?;
    }
    Ok(())
}

fn work_dir(o: &Opts, name: &str) -> AnyResult<tempfile::TempDir> {
    let prefix = format!("gym-telemetry-chaos-{name}-");
    let mut b = tempfile::Builder::new();
    b.prefix(&prefix);
    Ok(match &o.work_dir {
        Some(d) => b.tempdir_in(d)?,
        None => b.tempdir()?,
    })
}

// ---------------------------------------------------------------- scenario 1

fn daemon_kill(o: &Opts, rng: &mut fastrand::Rng) -> AnyResult<Outcome> {
    let (n, proxy_n, kills, over) = if o.quick {
        (40_000u64, 10_000u64, 3usize, Duration::from_secs(6))
    } else {
        (400_000, 100_000, 10, Duration::from_secs(40))
    };
    let work = work_dir(o, "daemon-kill")?;
    let mut d = Daemon::new(&o.bin_dir, work.path())?;
    d.start()?;
    let token = d.token()?;

    // The proxy replays a file of `proxy_n` steps through its own queue. It starts just
    // before the first kill, whose outage (1.5 s) outlasts its replay: its final flush begins
    // with the daemon down (the proxy exited 0 there, its records still queued), and
    // the later kills meet it while it delivers.
    let input = work.path().join("proxy-input.jsonl");
    {
        let mut f = std::io::BufWriter::new(File::create(&input)?);
        for i in 0..proxy_n {
            writeln!(
                f,
                "{{\"type\":\"step\",\"run_id\":\"x\",\"agent_id\":\"proxy-agent\",\"episode_index\":{},\"step_index\":{},\"action_json\":\"1\",\"observation_json\":\"{{}}\",\"reward\":0.5,\"terminated\":false,\"truncated\":false}}",
                i / 1000,
                i % 1000
            )?;
        }
        f.flush()?;
    }
    let proxy_log = work.path().join("proxy.log");
    let mut proxy_cmd = Command::new(o.bin_dir.join("gym-telemetry-proxy"));
    proxy_cmd
        .arg("--input")
        .arg(&input)
        .arg("--queue-dir")
        .arg(work.path().join("q-proxy"))
        .args(["--run-id", "chaos-kill-proxy", "--endpoint", &d.endpoint()])
        .args(["--flush-timeout-secs", "120"])
        .env("GYM_TELEMETRY_AUTH_TOKEN", &token)
        .env("GYM_TELEMETRY_QUEUE_FULL", "block")
        .env("GYM_TELEMETRY_BLOCK_TIMEOUT_MS", "120000")
        .env("GYM_TELEMETRY_RECONNECT_MAX_MS", "500")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&proxy_log)?);
    let mut proxy = None;

    let s = Arc::new(shim(
        &d.endpoint(),
        "chaos-kill-shim",
        &work.path().join("q-shim"),
        &token,
    )?);
    let producer = produce(Arc::clone(&s), "chaos-kill-shim", n, over);
    let mut points: Vec<u64> = (0..kills).map(|_| rng.u64(n / 20..n * 19 / 20)).collect();
    points.sort_unstable();
    let watched = Arc::clone(&s);
    kill_at(
        &mut d,
        || watched.stats().accepted,
        &points,
        rng,
        Duration::from_millis(1500),
        || {
            proxy = Some(proxy_cmd.spawn()?);
            Ok(())
        },
    )?;
    drop(watched);
    let refused = producer.join().map_err(|_| "producer panicked")?;
    let shim = Arc::try_unwrap(s).map_err(|_| "shim still shared")?;
    let closed = shim.close(WAIT);
    let mut proxy = proxy.ok_or("the proxy never started")?;
    let proxy_status = wait_child(&mut proxy, WAIT)?;
    if proxy_status.is_none() {
        let _ = proxy.kill();
    }
    d.stop()?;

    let store = d.store()?;
    let (s_stored, s_lost, s_dup) = tally(&stored_seqs(&store, "chaos-kill-shim")?, n);
    let (p_stored, p_lost, p_dup) = tally(&stored_seqs(&store, "chaos-kill-proxy")?, proxy_n);
    let mut broken = vec![];
    match &closed {
        Ok(r) if r.outcome == FlushOutcome::Acked => {}
        other => broken.push(format!("shim close: {other:?}")),
    }
    if refused > 0 {
        broken.push(format!("{refused} steps refused by the shim"));
    }
    if proxy_status.map(|s| s.code()) != Some(Some(0)) {
        let log = std::fs::read_to_string(&proxy_log).unwrap_or_default();
        broken.push(format!("proxy exit {proxy_status:?}: {log}"));
    }
    let out = Outcome {
        name: "daemon-kill",
        runs: kills as u64,
        sent: n + proxy_n,
        stored: s_stored + p_stored,
        lost: s_lost + p_lost,
        duplicated: s_dup + p_dup,
        broken,
    };
    eprintln!(
        "daemon-kill: daemon starts={} kill points={points:?}; shim stored={s_stored} lost={s_lost} dup={s_dup}; proxy stored={p_stored} lost={p_lost} dup={p_dup}",
        d.starts
    );
    Ok(out)
}

// ---------------------------------------------------------------- scenario 2

fn worker_kill(o: &Opts, rng: &mut fastrand::Rng) -> AnyResult<Outcome> {
    let kills = if o.quick { 3 } else { 10 };
    let work = work_dir(o, "worker-kill")?;
    let mut d = Daemon::new(&o.bin_dir, work.path())?;
    d.start()?;
    let token = d.token()?;
    let queue = work.path().join("queue");
    let run = "chaos-worker";
    let worker = |episodes: u32| -> AnyResult<Child> {
        Ok(Command::new(o.bin_dir.join("gym-telemetry-demo"))
            .args([
                "worker",
                "--agents",
                "1",
                "--run-id",
                run,
                "--step-delay-ms",
                "1",
            ])
            .args(["--episodes", &episodes.to_string()])
            .env("GYM_TELEMETRY_QUEUE_DIR", &queue)
            .env("GYM_TELEMETRY_ENDPOINT", d.endpoint())
            .env("GYM_TELEMETRY_AUTH_TOKEN", &token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    };
    let mut broken = vec![];
    for _ in 0..kills {
        let mut c = worker(100_000)?;
        std::thread::sleep(Duration::from_millis(rng.u64(200..1200)));
        if c.try_wait()?.is_some() {
            broken.push("a worker ended before it was killed".to_owned());
        }
        c.kill()?;
        c.wait()?;
    }
    // The last one finishes: its close sends what every killed one left in the queue.
    let mut last = worker(3)?;
    match wait_child(&mut last, WAIT)? {
        Some(s) if s.success() => {}
        other => {
            let _ = last.kill();
            broken.push(format!("the last worker: {other:?}"));
        }
    }
    d.stop()?;
    let seqs = stored_seqs(&d.store()?, run)?;
    let sent = seqs.iter().copied().max().unwrap_or(0);
    let (stored, lost, duplicated) = tally(&seqs, sent);
    Ok(Outcome {
        name: "worker-kill",
        runs: kills,
        sent,
        stored,
        lost,
        duplicated,
        broken,
    })
}

// ---------------------------------------------------------------- scenario 3

/// The faults the TCP proxy injects, at random byte counts of the shim's traffic, until its
/// budget is spent (then connections pass through untouched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The next 50 chunks from the shim are forwarded 20 ms late each.
    Delay,
    /// Nothing from the shim is forwarded for 1.5 s, then on again.
    Stall,
    /// Both connections reset (RST: zero linger).
    Reset,
    /// The shim-to-daemon direction shut down (FIN) while the other stays open, then, 1 s
    /// later, both closed.
    HalfClose,
}

/// The budget and tallies of the fault proxy.
#[derive(Default)]
struct Faults {
    /// Faults left to inject.
    left: AtomicU64,
    /// Injected, per kind (`Fault as usize`).
    injected: [AtomicU64; 4],
}

impl Faults {
    /// Takes one fault from the budget.
    fn take(&self, rng: &mut fastrand::Rng) -> Option<Fault> {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
            .ok()?;
        let f = match rng.u8(0..4) {
            0 => Fault::Delay,
            1 => Fault::Stall,
            2 => Fault::Reset,
            _ => Fault::HalfClose,
        };
        self.injected[f as usize].fetch_add(1, Ordering::Relaxed);
        Some(f)
    }

    fn total(&self) -> u64 {
        self.injected
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }

    fn summary(&self) -> String {
        let n = |f: Fault| self.injected[f as usize].load(Ordering::Relaxed);
        format!(
            "delay={} stall={} reset={} half_close={}",
            n(Fault::Delay),
            n(Fault::Stall),
            n(Fault::Reset),
            n(Fault::HalfClose)
        )
    }
}

struct FaultProxy {
    listen: SocketAddr,
    faults: Arc<Faults>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    fn start(upstream: SocketAddr, budget: u64, seed: u64) -> AnyResult<FaultProxy> {
        let std_listener = TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let listen = std_listener.local_addr()?;
        let faults = Arc::new(Faults::default());
        faults.left.store(budget, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (f, st) = (Arc::clone(&faults), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                    return;
                };
                let mut rng = fastrand::Rng::with_seed(seed);
                while !st.load(Ordering::Relaxed) {
                    let accepted =
                        tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
                    let Ok(Ok((down, _))) = accepted else {
                        continue;
                    };
                    tokio::spawn(relay(down, upstream, Arc::clone(&f), rng.u64(..)));
                }
            });
        });
        Ok(FaultProxy {
            listen,
            faults,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Forwards one connection, striking with faults from the budget at random byte counts.
async fn relay(down: tokio::net::TcpStream, upstream: SocketAddr, faults: Arc<Faults>, seed: u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let _ = (down.set_nodelay(true), up.set_nodelay(true));
    // Whichever way this connection ends, closing a socket resets it (RST) rather than ending
    // it (FIN); `shutdown` still sends a FIN for the half-close. Set on both now: the halves
    // cannot be reunited once one is in the other task.
    let _ = (down.set_zero_linger(), up.set_zero_linger());
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut dr, mut dw) = down.into_split();
    let (mut ur, mut uw) = up.into_split();
    // Daemon -> shim: plain (stalling the shim side holds back the acks too).
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut ur, &mut dw).await;
        let _ = dw.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    let mut seen = 0u64;
    let mut next_at = rng.u64(1_000..200_000);
    let mut delayed = 0u32;
    loop {
        let n = match dr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        seen += n as u64;
        if delayed > 0 {
            delayed -= 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if seen >= next_at {
            next_at = seen + rng.u64(1_000..200_000);
            match faults.take(&mut rng) {
                None => {}
                Some(Fault::Delay) => delayed = 50,
                Some(Fault::Stall) => tokio::time::sleep(Duration::from_millis(1500)).await,
                Some(Fault::Reset) => {
                    // Every half of both sockets dropped now: with zero linger, an RST each.
                    back.abort();
                    return;
                }
                Some(Fault::HalfClose) => {
                    let _ = uw.shutdown().await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    back.abort();
                    return;
                }
            }
        }
        if uw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = uw.shutdown().await;
    let _ = back.await;
}

fn tcp_faults(o: &Opts, rng: &mut fastrand::Rng) -> AnyResult<Outcome> {
    let (n, budget, over) = if o.quick {
        (20_000u64, 6u64, Duration::from_secs(6))
    } else {
        (200_000, 30, Duration::from_secs(30))
    };
    let work = work_dir(o, "tcp-faults")?;
    let mut d = Daemon::new(&o.bin_dir, work.path())?;
    d.start()?;
    let token = d.token()?;
    let faults = FaultProxy::start(
        SocketAddr::from(([127, 0, 0, 1], d.port)),
        budget,
        rng.u64(..),
    )?;
    let run = "chaos-tcp";
    let s = Arc::new(shim(
        &format!("http://{}", faults.listen),
        run,
        &work.path().join("q"),
        &token,
    )?);
    let producer = produce(Arc::clone(&s), run, n, over);
    let refused = producer.join().map_err(|_| "producer panicked")?;
    let shim = Arc::try_unwrap(s).map_err(|_| "shim still shared")?;
    let closed = shim.close(WAIT);
    let runs = faults.faults.total();
    eprintln!("tcp-faults: injected {}", faults.faults.summary());
    drop(faults);
    d.stop()?;
    let (stored, lost, duplicated) = tally(&stored_seqs(&d.store()?, run)?, n);
    let mut broken = vec![];
    match &closed {
        Ok(r) if r.outcome == FlushOutcome::Acked => {}
        other => broken.push(format!("shim close: {other:?}")),
    }
    if refused > 0 {
        broken.push(format!("{refused} steps refused by the shim"));
    }
    if runs < budget {
        broken.push(format!("only {runs} of {budget} faults injected"));
    }
    Ok(Outcome {
        name: "tcp-faults",
        runs,
        sent: n,
        stored,
        lost,
        duplicated,
        broken,
    })
}

// ---------------------------------------------------------------- main

type Scenario = fn(&Opts, &mut fastrand::Rng) -> AnyResult<Outcome>;

fn main() -> std::process::ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chaos: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    eprintln!("chaos: seed={} quick={}", o.seed, o.quick);
    let mut rng = fastrand::Rng::with_seed(o.seed);
    let scenarios: [(&str, Scenario); 10] = [
        ("daemon-kill", daemon_kill),
        ("worker-kill", worker_kill),
        ("tcp-faults", tcp_faults),
        ("viewer-stall", viewer_stall::viewer_stall),
        ("queue-full", queue_full::queue_full),
        ("wal-bounded", wal_bounded::wal_bounded),
        ("disk-full", disk_full::disk_full),
        ("corrupt-segment", corrupt_segment::corrupt_segment),
        ("os-crash", os_crash::os_crash),
        ("frames-kill", frames_kill::frames_kill),
    ];
    let mut failed = false;
    let mut harness_error = false;
    let mut skipped = false;
    for (name, run) in scenarios {
        if !o.only.is_empty() && !o.only.iter().any(|s| s == name) {
            continue;
        }
        let started = Instant::now();
        match run(&o, &mut rng) {
            Ok(out) => {
                let kept = out.broken.is_empty() && out.lost == 0 && out.duplicated == 0;
                for b in &out.broken {
                    eprintln!("chaos: {name}: broken: {b}");
                }
                eprintln!("chaos: {name}: {:.1}s", started.elapsed().as_secs_f64());
                println!("{}", out.line());
                failed |= !kept;
            }
            Err(e) if e.downcast_ref::<Skipped>().is_some() => {
                eprintln!("chaos: {name}: SKIPPED: {e}");
                println!(
                    "chaos: scenario={name} runs=0 sent=0 stored=0 lost=0 duplicated=0 skipped"
                );
                skipped = true;
            }
            Err(e) => {
                eprintln!("chaos: {name}: harness error: {e}");
                println!(
                    "chaos: scenario={name} runs=0 sent=0 stored=0 lost=0 duplicated=0 error=harness"
                );
                harness_error = true;
            }
        }
    }
    if harness_error {
        std::process::ExitCode::from(2)
    } else if failed {
        std::process::ExitCode::from(1)
    } else if skipped {
        std::process::ExitCode::from(2)
    } else {
        std::process::ExitCode::SUCCESS
    }
}
