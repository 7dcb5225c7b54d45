//! `export-video`: a stored episode's frames to a clip (`telemetry_frames::export`), then the
//! clip registered as an artifact of the run, in the frame store's export list and as an
//! `Artifact` record in the store (so `dump --events` and every viewer of the run see it).

use anyhow::Context;
use telemetry_core::pb;
use telemetry_frames::{
    export::{export_episode, ExportOptions},
    ExportRecord, FrameStore, FrameStoreOptions,
};
use telemetry_store::{Store, StoreConfig};

use crate::cli::ExportVideoArgs;

/// Runs `export-video`.
pub fn export_video(a: ExportVideoArgs) -> anyhow::Result<std::process::ExitCode> {
    let var = &a.var.var_dir;
    let frames_dir = telemetry_frames::frames_dir(var);
    if !frames_dir.join("index.sqlite").exists() {
        anyhow::bail!(
            "no frame store in {} (has a daemon stored frames there?)",
            var.display()
        );
    }
    let store = FrameStore::open(&frames_dir, FrameStoreOptions::default())
        .with_context(|| format!("opening the frame store in {}", frames_dir.display()))?;
    let opts = ExportOptions {
        ffmpeg: a.ffmpeg.clone(),
        fps: a.fps,
        ..ExportOptions::default()
    };
    let report = export_episode(&store, &a.run, &a.agent, a.episode, &a.output, &opts)
        .with_context(|| format!("exporting run {} episode {}", a.run, a.episode))?;
    let path = std::path::absolute(&report.path).unwrap_or_else(|_| report.path.clone());
    let path_text = path.display().to_string();
    store
        .register_export(&ExportRecord {
            run_id: a.run.clone(),
            agent_id: a.agent.clone(),
            episode_index: a.episode,
            path: path_text.clone(),
            format: report.format.as_str().to_owned(),
            frames: report.frames,
        })
        .context("registering the export in the frame store")?;
    let info = serde_json::json!({
        "agent_id": a.agent,
        "episode_index": a.episode,
        "format": report.format.as_str(),
        "frames": report.frames,
        "skipped_frames": report.skipped,
        "width": report.width,
        "height": report.height,
        "fps": report.fps,
    });
    let mut records = [pb::Record::from(pb::Artifact {
        run_id: a.run.clone(),
        timestamp: Some(telemetry_core::timestamp::now()),
        kind: "video".into(),
        path: path_text.clone(),
        info_json: info.to_string(),
        ..pb::Artifact::default()
    })];
    let mut db = Store::open(StoreConfig::in_var_dir(var))
        .with_context(|| format!("opening the store in {}", var.display()))?;
    db.append(&mut records, &[])
        .context("registering the clip as an artifact of the run")?;
    if report.fell_back_to_gif {
        eprintln!("ffmpeg is not installed: wrote an animated GIF instead");
    }
    println!(
        "{} {} frames {}x{} at {} fps -> {}",
        report.format.as_str(),
        report.frames,
        report.width,
        report.height,
        report.fps,
        path_text
    );
    Ok(std::process::ExitCode::SUCCESS)
}
