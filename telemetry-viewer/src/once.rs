//! `--once`: a plain-text snapshot of the runs (and of one run's episodes with seed, game and
//! control mode) for scripts and tests. It uses the same clients and the same metadata discovery
//! as the terminal UI, so what a script sees is what the Episodes tab shows.

use std::fmt::Write as _;

use telemetry_core::pb::{ListRunsRequest, RunEpisode, RunSummary, StreamRequest};

use crate::{
    app::state_name,
    client::{ClientConfig, Clients},
    error::ViewerError,
    views::episodes::meta_cells,
};

/// Most episodes `--once --run` reads (the rest are counted).
pub const MAX_EPISODES: usize = 100_000;

/// Connects to the daemon of `config` and writes the snapshot to `out`.
pub async fn run_once(
    config: &ClientConfig,
    run: Option<&str>,
    out: &mut dyn std::io::Write,
) -> Result<(), ViewerError> {
    let mut clients = Clients::connect(config).await?;
    let text = snapshot(&mut clients, run).await?;
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The snapshot text: one line per run; with `run`, that run's episodes after it.
pub async fn snapshot(clients: &mut Clients, run: Option<&str>) -> Result<String, ViewerError> {
    let runs = clients
        .query
        .list_runs(ListRunsRequest::default())
        .await
        .map_err(|s| ViewerError::rpc("ListRuns", &s))?
        .into_inner()
        .runs;
    let mut out = runs_table(&runs);
    if let Some(run_id) = run {
        let (episodes, more) = read_episodes(clients, run_id).await?;
        out.push('\n');
        out.push_str(&episodes_table(run_id, &runs, &episodes, more));
    }
    Ok(out)
}

async fn read_episodes(
    clients: &mut Clients,
    run_id: &str,
) -> Result<(Vec<RunEpisode>, u64), ViewerError> {
    let request = StreamRequest {
        run_id: run_id.to_owned(),
        follow: false,
        ..Default::default()
    };
    let mut stream = clients
        .query
        .stream_run_episodes(request)
        .await
        .map_err(|s| ViewerError::rpc("StreamRunEpisodes", &s))?
        .into_inner();
    let mut episodes = Vec::new();
    let mut more = 0u64;
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|s| ViewerError::rpc("StreamRunEpisodes", &s))?
    {
        for ep in msg.episodes {
            if episodes.len() < MAX_EPISODES {
                episodes.push(ep);
            } else {
                more += 1;
            }
        }
    }
    Ok((episodes, more))
}

/// Formats rows as left-aligned columns two spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "—".to_owned()
    } else {
        crate::render_hint::escape_controls(&s)
    }
}

/// The runs as a text table.
pub fn runs_table(runs: &[RunSummary]) -> String {
    if runs.is_empty() {
        return "no runs\n".to_owned();
    }
    let mut rows = vec![[
        "RUN", "STATUS", "MODE", "AGENTS", "STEPS", "EPISODES", "DROPS", "GAME",
    ]
    .map(str::to_owned)
    .to_vec()];
    for r in runs {
        rows.push(vec![
            or_dash(r.run_id.clone()),
            state_name(r.state()).to_owned(),
            or_dash(r.control_modes.join(",")),
            or_dash(r.agent_ids.join(",")),
            r.step_count.to_string(),
            r.episode_count.to_string(),
            (r.dropped_steps + r.dropped_episodes).to_string(),
            or_dash(r.game_id.clone()),
        ]);
    }
    columns(&rows)
}

/// One run's episodes as a text table.
pub fn episodes_table(
    run_id: &str,
    runs: &[RunSummary],
    episodes: &[RunEpisode],
    more: u64,
) -> String {
    let mut out = match runs.iter().find(|r| r.run_id == run_id) {
        Some(r) => format!(
            "run {run_id}: {}, {} steps, {} episodes\n",
            state_name(r.state()),
            r.step_count,
            r.episode_count
        ),
        None => format!("run {run_id}: not listed by the daemon\n"),
    };
    if episodes.is_empty() {
        out.push_str("no episodes\n");
        return out;
    }
    let mut rows = vec![[
        "AGENT", "EP", "RETURN", "LEN", "TERM", "TRUNC", "SEED", "GAME", "MODE",
    ]
    .map(str::to_owned)
    .to_vec()];
    for ep in episodes {
        let [seed, game, mode] = meta_cells(ep);
        rows.push(vec![
            or_dash(ep.agent_id.clone()),
            ep.episode_index.to_string(),
            format!("{:.3}", ep.total_reward),
            ep.steps.to_string(),
            ep.terminated.to_string(),
            ep.truncated.to_string(),
            seed,
            game,
            mode,
        ]);
    }
    out.push_str(&columns(&rows));
    if more > 0 {
        let _ = writeln!(out, "({more} more episodes not shown)");
    }
    out
}
