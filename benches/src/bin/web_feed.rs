//! Feeds the web dashboard's browser benchmarks (telemetry-web/tests/browser/bench.mjs) through
//! the real shim to a running daemon (GYM_TELEMETRY_ENDPOINT; the token found as every client
//! finds it):
//!
//! - `web_feed scalars RUN N`: N scalars of one tag (`charts/bench`), then exit once acked;
//! - `web_feed steps RUN RATE SECS`: steps at RATE per second for SECS seconds, each stamped
//!   with its creation time (the page measures from it), plus one scalar per 100 steps.

use std::time::{Duration, Instant};

use telemetry_core::{
    pb::{RunStep, Scalar},
    timestamp, ControlMode,
};
use telemetry_shim::{ShimConfig, Telemetry};

fn shim(run: &str) -> Result<Telemetry, Box<dyn std::error::Error>> {
    let mut sc = ShimConfig::from_env().unwrap_or_default();
    if let Ok(e) = std::env::var("GYM_TELEMETRY_ENDPOINT") {
        sc.endpoint = e;
    }
    sc.run_id = Some(run.to_owned());
    sc.agent_id = Some("agent-0".into());
    sc.control_mode = Some(ControlMode::Agent);
    Ok(Telemetry::new(sc)?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(0).as_str() {
        "scalars" => {
            let run = arg(1);
            let n: i64 = arg(2).parse()?;
            let t = shim(&run)?;
            for s in 0..n {
                t.scalar(Scalar {
                    run_id: run.clone(),
                    tag: "charts/bench".into(),
                    value: (s as f64 / 5000.0).sin() + s as f64 / n as f64,
                    step: s,
                    ..Default::default()
                })?;
            }
            t.close(Duration::from_secs(300))?;
        }
        "steps" => {
            let run = arg(1);
            let rate: u64 = arg(2).parse()?;
            let secs: u64 = arg(3).parse()?;
            let t = shim(&run)?;
            let start = Instant::now();
            let total = rate * secs;
            for i in 0..total {
                // Paced: step i is due at i / rate seconds.
                let due = Duration::from_nanos(i * 1_000_000_000 / rate);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                t.step(RunStep {
                    run_id: run.clone(),
                    agent_id: "agent-0".into(),
                    episode_index: i / 200,
                    step_index: i % 200,
                    reward: 1.0,
                    observation_json: "[[0,1],[1,0]]".into(),
                    timestamp: Some(timestamp::now()),
                    ..Default::default()
                })?;
                if i % 100 == 0 {
                    t.scalar(Scalar {
                        run_id: run.clone(),
                        agent_id: "agent-0".into(),
                        tag: "charts/live".into(),
                        value: (i as f64 / 1000.0).sin(),
                        step: i64::try_from(i)?,
                        timestamp: Some(timestamp::now()),
                        ..Default::default()
                    })?;
                }
            }
            t.close(Duration::from_secs(60))?;
        }
        other => return Err(format!("web_feed: unknown mode {other:?} (scalars | steps)").into()),
    }
    Ok(())
}
