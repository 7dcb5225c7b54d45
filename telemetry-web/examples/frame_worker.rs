//! A worker that renders frames, for the dashboard's browser test (the Video tab, the replay's
//! frame view, "export clip"): one agent steps a small synthetic scene and captures every
//! `--every` step's frame through the shim's `FrameSender` (the Rust side of the Python
//! wrappers' `FrameCapture`), and each captured step's record carries its `frame_ref`.
//!
//! Configured like any worker, from the environment (`GYM_TELEMETRY_ENDPOINT`,
//! `GYM_TELEMETRY_VAR_DIR`, ...). Usage: `frame_worker RUN_ID AGENT EPISODES STEPS_PER_EPISODE
//! STEP_DELAY_MS EVERY [REFS_WITHOUT_FRAMES]`. With `REFS_WITHOUT_FRAMES` = 1 the steps that are
//! not captured still carry a `frame_ref` (a frame that is missing from the store, as an
//! evicted one is), for the replay's "frame missing" view.

use std::time::Duration;

use telemetry_core::pb::{RunEpisode, RunStep};
use telemetry_shim::{FrameOptions, FrameSender, ShimConfig, Telemetry};

const W: u32 = 160;
const H: u32 = 120;

/// A moving square on a gradient: every frame differs, so a live view visibly changes.
fn render(episode: u64, step: u64) -> Vec<u8> {
    let mut rgb = vec![0u8; (W * H * 3) as usize];
    let x0 = (step * 7 % u64::from(W - 20)) as u32;
    let y0 = ((step * 3 + episode * 11) % u64::from(H - 20)) as u32;
    for y in 0..H {
        for x in 0..W {
            let i = ((y * W + x) * 3) as usize;
            let inside = (x0..x0 + 20).contains(&x) && (y0..y0 + 20).contains(&y);
            rgb[i] = if inside { 250 } else { (x * 255 / W) as u8 };
            rgb[i + 1] = if inside { 200 } else { (y * 255 / H) as u8 };
            rgb[i + 2] = if inside { 40 } else { 90 };
        }
    }
    rgb
}

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_owned());
    let run_id = arg(0, "frames-run");
    let agent = arg(1, "agent-0");
    let episodes: u64 = arg(2, "3").parse()?;
    let steps: u64 = arg(3, "50").parse()?;
    let delay = Duration::from_millis(arg(4, "20").parse()?);
    let every: u64 = arg(5, "1").parse::<u64>()?.max(1);
    let refs_without_frames = arg(6, "0") == "1";

    let mut cfg = ShimConfig::from_env().unwrap_or_default();
    cfg.run_id = Some(run_id.clone());
    cfg.agent_id = Some(agent.clone());
    let frames = FrameSender::new(&cfg, FrameOptions::for_config(&cfg))?;
    let tel = Telemetry::new(cfg)?;
    for ep in 0..episodes {
        for step in 0..steps {
            let frame_ref = if step % every == 0 {
                frames.capture(Some(&agent), ep, step, W, H, render(ep, step), 30.0)?
            } else if refs_without_frames {
                frames.frame_ref(Some(&agent), ep, step)
            } else {
                String::new()
            };
            tel.step(RunStep {
                run_id: run_id.clone(),
                agent_id: agent.clone(),
                episode_index: ep,
                step_index: step,
                reward: 1.0,
                frame_ref,
                ..Default::default()
            })?;
            std::thread::sleep(delay);
        }
        tel.episode_end(RunEpisode {
            run_id: run_id.clone(),
            agent_id: agent.clone(),
            episode_index: ep,
            steps,
            total_reward: steps as f64,
            terminated: true,
            ..Default::default()
        })?;
    }
    frames.close(Duration::from_secs(30));
    tel.close(Duration::from_secs(30))?;
    Ok(())
}
