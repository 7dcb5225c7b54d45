//! Reads: keyset pages (`WHERE seq > $1 … ORDER BY seq LIMIT n`), one statement each (one
//! snapshot), on pooled connections.
//!
//! A page never uses `OFFSET`, so page `n` costs what page 1 does, and each is a single
//! statement, so a slow consumer never holds a snapshot open. Every list is bounded by its
//! limit (capped at [`MAX_PAGE`]); the downsampled scalar read streams each series' rows and
//! keeps O(buckets) in memory.

use std::{pin::pin, sync::Arc};

use futures::StreamExt;
use prost::Message;
use telemetry_core::{
    pb::{self, Record, RunEpisode, RunStep, Scalar},
    timestamp::from_unix_nanos,
};
use telemetry_store::{
    BackendReader, Downsampler, Filter, ModeFilter, RunStats, ScalarQuery, StoreError,
    DEFAULT_BUCKETS, MAX_BUCKETS, MAX_SERIES,
};
use tokio_postgres::{types::ToSql, Row};

use crate::{
    error::{classify, decode},
    writer::u64_from_sql,
    Shared,
};

/// The largest page any single read returns (as the SQLite store).
pub const MAX_PAGE: usize = 65536;

const STEP_COLUMNS: &str = "seq, run_id, episode_index, step_index, action_json, \
     observation_json, reward, terminated, truncated, ts_ns, policy_label, backend, agent_id, \
     render_hint_json, frame_ref, payload_version, control_mode, producer_id, producer_seq, \
     info_json, policy_id, policy_digest";
const EPISODE_COLUMNS: &str = "seq, run_id, episode_index, total_reward, steps, terminated, \
     truncated, metadata_json, ts_ns, agent_id, control_mode, producer_id, producer_seq, \
     policy_id, policy_digest";
const SCALAR_COLUMNS: &str =
    "seq, run_id, agent_id, tag, step, value, ts_ns, producer_id, producer_seq";

fn limit_of(limit: usize) -> i64 {
    limit.min(MAX_PAGE) as i64
}

/// `since_seq` above `i64::MAX` means "nothing left".
fn since_of(since_seq: u64) -> i64 {
    i64::try_from(since_seq).unwrap_or(i64::MAX)
}

#[derive(Clone, Copy)]
enum Stream {
    Steps,
    Episodes,
    Scalars,
}

impl Stream {
    fn select(self) -> (&'static str, &'static str) {
        match self {
            Stream::Steps => (STEP_COLUMNS, "steps"),
            Stream::Episodes => (EPISODE_COLUMNS, "episodes"),
            Stream::Scalars => (SCALAR_COLUMNS, "scalars"),
        }
    }
}

/// The SQL of one filtered page and whether it binds a control mode.
fn page_sql(stream: Stream, filter: &Filter) -> (String, bool) {
    let (cols, table) = stream.select();
    let mut sql = format!("SELECT {cols} FROM {table} WHERE seq > $1");
    let mut n = 1;
    if filter.run_id.is_some() {
        n += 1;
        sql.push_str(&format!(" AND run_id = ${n}"));
    }
    if filter.agent_id.is_some() {
        n += 1;
        sql.push_str(&format!(" AND agent_id = ${n}"));
    }
    let mut binds_mode = false;
    match filter.control_mode {
        _ if matches!(stream, Stream::Scalars) => {}
        ModeFilter::Any => {}
        ModeFilter::Exact(_) => {
            n += 1;
            binds_mode = true;
            sql.push_str(&format!(" AND control_mode = ${n}"));
        }
        // Spelled as the partial index's predicate, so the index serves it.
        ModeFilter::HumanOrUnknown => sql.push_str(" AND control_mode IN ('human', 'unknown')"),
    }
    sql.push_str(&format!(" ORDER BY seq LIMIT ${}", n + 1));
    (sql, binds_mode)
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    i: usize,
    what: &'static str,
) -> Result<T, StoreError> {
    row.try_get(i).map_err(|e| {
        let seq = row.try_get::<_, i64>(0).map(u64_from_sql).unwrap_or(0);
        decode(what, seq, e)
    })
}

fn step_from(row: &Row) -> Result<RunStep, StoreError> {
    const W: &str = "step";
    let seq = u64_from_sql(get(row, 0, W)?);
    let payload_version: i64 = get(row, 15, W)?;
    Ok(RunStep {
        seq_id: seq,
        run_id: get(row, 1, W)?,
        episode_index: u64_from_sql(get(row, 2, W)?),
        step_index: u64_from_sql(get(row, 3, W)?),
        action_json: get(row, 4, W)?,
        observation_json: get(row, 5, W)?,
        reward: get(row, 6, W)?,
        terminated: get(row, 7, W)?,
        truncated: get(row, 8, W)?,
        timestamp: get::<Option<i64>>(row, 9, W)?.map(from_unix_nanos),
        policy_label: get(row, 10, W)?,
        backend: get(row, 11, W)?,
        agent_id: get(row, 12, W)?,
        render_hint_json: get(row, 13, W)?,
        frame_ref: get(row, 14, W)?,
        payload_version: u32::try_from(payload_version).map_err(|_| {
            decode(
                W,
                seq,
                format!("payload_version {payload_version} out of range"),
            )
        })?,
        control_mode: get(row, 16, W)?,
        producer_id: get(row, 17, W)?,
        producer_seq: u64_from_sql(get(row, 18, W)?),
        info_json: get(row, 19, W)?,
        policy_id: get(row, 20, W)?,
        policy_digest: get(row, 21, W)?,
    })
}

fn episode_from(row: &Row) -> Result<RunEpisode, StoreError> {
    const W: &str = "episode";
    Ok(RunEpisode {
        seq_id: u64_from_sql(get(row, 0, W)?),
        run_id: get(row, 1, W)?,
        episode_index: u64_from_sql(get(row, 2, W)?),
        total_reward: get(row, 3, W)?,
        steps: u64_from_sql(get(row, 4, W)?),
        terminated: get(row, 5, W)?,
        truncated: get(row, 6, W)?,
        metadata_json: get(row, 7, W)?,
        timestamp: get::<Option<i64>>(row, 8, W)?.map(from_unix_nanos),
        agent_id: get(row, 9, W)?,
        control_mode: get(row, 10, W)?,
        producer_id: get(row, 11, W)?,
        producer_seq: u64_from_sql(get(row, 12, W)?),
        policy_id: get(row, 13, W)?,
        policy_digest: get(row, 14, W)?,
    })
}

fn scalar_from(row: &Row) -> Result<Scalar, StoreError> {
    const W: &str = "scalar";
    Ok(Scalar {
        seq_id: u64_from_sql(get(row, 0, W)?),
        run_id: get(row, 1, W)?,
        agent_id: get(row, 2, W)?,
        tag: get(row, 3, W)?,
        step: get(row, 4, W)?,
        value: get(row, 5, W)?,
        timestamp: get::<Option<i64>>(row, 6, W)?.map(from_unix_nanos),
        producer_id: get(row, 7, W)?,
        producer_seq: u64_from_sql(get(row, 8, W)?),
    })
}

/// A lifecycle record from a row of `SELECT seq, body`.
fn event_from(row: &Row) -> Result<Record, StoreError> {
    const W: &str = "event";
    let seq = u64_from_sql(get(row, 0, W)?);
    let body: &[u8] = get(row, 1, W)?;
    let mut record = Record::decode(body).map_err(|e| decode(W, seq, e))?;
    if record.kind.is_none() {
        return Err(decode(W, seq, "empty record body"));
    }
    record.set_seq_id(seq);
    Ok(record)
}

/// The shared reader of a PostgreSQL store.
pub(crate) struct PgReader {
    shared: Arc<Shared>,
}

impl PgReader {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        PgReader { shared }
    }

    /// Runs one query on a pooled connection and builds every row.
    fn rows<T: Send>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        build: fn(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let s = &self.shared;
        s.block_on(async {
            let client = s.read_client().await?;
            let stmt = client.prepare_cached(sql).await.map_err(classify)?;
            let rows = client.query(&stmt, params).await.map_err(classify)?;
            rows.iter().map(build).collect()
        })
    }

    fn page<T: Send>(
        &self,
        stream: Stream,
        since_seq: u64,
        filter: &Filter,
        limit: usize,
        build: fn(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let (sql, binds_mode) = page_sql(stream, filter);
        let since = since_of(since_seq);
        let limit = limit_of(limit);
        let mode = match filter.control_mode {
            ModeFilter::Exact(m) if binds_mode => Some(m.as_str()),
            _ => None,
        };
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&since];
        if let Some(run) = &filter.run_id {
            params.push(run);
        }
        if let Some(agent) = &filter.agent_id {
            params.push(agent);
        }
        if let Some(mode) = &mode {
            params.push(mode);
        }
        params.push(&limit);
        self.rows(&sql, &params, build)
    }
}

impl BackendReader for PgReader {
    fn steps_page(
        &self,
        since_seq: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<RunStep>, StoreError> {
        self.page(Stream::Steps, since_seq, filter, limit, step_from)
    }

    fn episodes_page(
        &self,
        since_seq: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<RunEpisode>, StoreError> {
        self.page(Stream::Episodes, since_seq, filter, limit, episode_from)
    }

    fn scalars_page(
        &self,
        since_seq: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Scalar>, StoreError> {
        self.page(Stream::Scalars, since_seq, filter, limit, scalar_from)
    }

    fn read_scalars(&self, q: &ScalarQuery) -> Result<Vec<pb::ScalarSeries>, StoreError> {
        let n = match q.max_points {
            0 => DEFAULT_BUCKETS,
            n => n.min(MAX_BUCKETS),
        };
        let series: Vec<pb::TagSummary> = self
            .list_tags(&q.run_id, MAX_PAGE)?
            .into_iter()
            .filter(|t| q.selects(&t.tag))
            .filter(|t| q.agent_id.as_deref().is_none_or(|a| a == t.agent_id))
            .take(MAX_SERIES)
            .collect();
        let s = &self.shared;
        s.block_on(async {
            let client = s.read_client().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT step, value, seq, ts_ns FROM scalars WHERE run_id = $1 AND tag = $2 \
                     AND agent_id = $3 AND step >= $4 AND step <= $5 ORDER BY step, seq",
                )
                .await
                .map_err(classify)?;
            let mut out = Vec::with_capacity(series.len());
            for t in series {
                let lo = q.min_step.map_or(t.first_step, |m| m.max(t.first_step));
                let hi = q.max_step.map_or(t.last_step, |m| m.min(t.last_step));
                let mut series = pb::ScalarSeries {
                    tag: t.tag,
                    agent_id: t.agent_id,
                    points: 0,
                    buckets: Vec::new(),
                };
                if lo <= hi {
                    let mut d = Downsampler::new(n, lo, hi);
                    let params: [&(dyn ToSql + Sync); 5] =
                        [&q.run_id, &series.tag, &series.agent_id, &lo, &hi];
                    let rows = client.query_raw(&stmt, params).await.map_err(classify)?;
                    let mut rows = pin!(rows);
                    while let Some(row) = rows.next().await {
                        let row = row.map_err(classify)?;
                        let step: i64 = get(&row, 0, "scalar")?;
                        let value: f64 = get(&row, 1, "scalar")?;
                        let seq: i64 = get(&row, 2, "scalar")?;
                        let time_ns: Option<i64> = get(&row, 3, "scalar")?;
                        d.push(step, value, u64_from_sql(seq), time_ns.unwrap_or(0));
                    }
                    (series.points, series.buckets) = d.finish();
                }
                out.push(series);
            }
            Ok(out)
        })
    }

    fn list_tags(&self, run_id: &str, limit: usize) -> Result<Vec<pb::TagSummary>, StoreError> {
        let limit = limit_of(limit);
        self.rows(
            "SELECT tag, agent_id, points, first_step, last_step, last_value, last_ts_ns \
             FROM scalar_tags WHERE run_id = $1 ORDER BY tag, agent_id LIMIT $2",
            &[&run_id, &limit],
            |r| {
                const W: &str = "scalar tag";
                Ok(pb::TagSummary {
                    tag: get(r, 0, W)?,
                    agent_id: get(r, 1, W)?,
                    points: u64_from_sql(get(r, 2, W)?),
                    first_step: get(r, 3, W)?,
                    last_step: get(r, 4, W)?,
                    last_value: get(r, 5, W)?,
                    last_timestamp: get::<Option<i64>>(r, 6, W)?.map(from_unix_nanos),
                })
            },
        )
    }

    fn events_page(
        &self,
        since_seq: u64,
        run_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let since = since_of(since_seq);
        let limit = limit_of(limit);
        match run_id {
            Some(run) => self.rows(
                "SELECT seq, body FROM events WHERE seq > $1 AND run_id = $2 \
                 ORDER BY seq LIMIT $3",
                &[&since, &run, &limit],
                event_from,
            ),
            None => self.rows(
                "SELECT seq, body FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&since, &limit],
                event_from,
            ),
        }
    }

    fn run_completion(&self, run_id: &str) -> Result<Option<pb::RunCompleted>, StoreError> {
        let records = self.rows(
            "SELECT seq, body FROM events WHERE kind = 'run_completed' AND run_id = $1 \
             ORDER BY seq DESC LIMIT 1",
            &[&run_id],
            event_from,
        )?;
        Ok(records.into_iter().find_map(|r| match r.kind {
            Some(pb::record::Kind::RunCompleted(c)) => Some(c),
            _ => None,
        }))
    }

    fn list_runs(&self) -> Result<Vec<RunStats>, StoreError> {
        let mut runs = self.rows(
            "SELECT run_id, step_count, episode_count, first_ts_ns, last_ts_ns, \
             last_step_seq, last_episode_seq FROM run_stats ORDER BY run_id",
            &[],
            |r| {
                const W: &str = "run stats";
                Ok(RunStats {
                    run_id: get(r, 0, W)?,
                    step_count: u64_from_sql(get(r, 1, W)?),
                    episode_count: u64_from_sql(get(r, 2, W)?),
                    first_timestamp_ns: get(r, 3, W)?,
                    last_timestamp_ns: get(r, 4, W)?,
                    last_step_seq: u64_from_sql(get(r, 5, W)?),
                    last_episode_seq: u64_from_sql(get(r, 6, W)?),
                    ..RunStats::default()
                })
            },
        )?;
        let find = |runs: &[RunStats], id: &str| -> Option<usize> {
            runs.binary_search_by(|r| r.run_id.as_str().cmp(id)).ok()
        };
        let agents = self.rows(
            "SELECT run_id, agent_id, control_mode FROM run_agents \
             ORDER BY run_id, agent_id, control_mode",
            &[],
            |r| {
                const W: &str = "run agents";
                Ok((
                    get::<String>(r, 0, W)?,
                    get::<String>(r, 1, W)?,
                    get::<String>(r, 2, W)?,
                ))
            },
        )?;
        for (run_id, agent, mode) in agents {
            if let Some(i) = find(&runs, &run_id) {
                let run = &mut runs[i];
                if !agent.is_empty() && run.agent_ids.last() != Some(&agent) {
                    run.agent_ids.push(agent);
                }
                if !run.control_modes.contains(&mode) {
                    run.control_modes.push(mode);
                }
            }
        }
        for run in &mut runs {
            run.agent_ids.dedup();
            run.control_modes.sort();
        }
        let completions = self.rows(
            "SELECT DISTINCT ON (run_id) seq, body FROM events WHERE kind = 'run_completed' \
             ORDER BY run_id, seq DESC",
            &[],
            event_from,
        )?;
        for record in completions {
            if let Some(pb::record::Kind::RunCompleted(c)) = record.kind {
                if let Some(i) = find(&runs, &c.run_id) {
                    runs[i].completion = Some(c);
                }
            }
        }
        Ok(runs)
    }

    fn run_infos(&self) -> Result<Vec<pb::RunInfo>, StoreError> {
        self.rows("SELECT run_id, info FROM runs ORDER BY run_id", &[], |r| {
            let run_id: &str = get(r, 0, "run info")?;
            let body: &[u8] = get(r, 1, "run info")?;
            pb::RunInfo::decode(body).map_err(|e| StoreError::Decode {
                what: "run info",
                seq: 0,
                detail: format!("run {run_id}: {e}"),
            })
        })
    }

    fn tail_steps(&self, run_id: &str, limit: usize) -> Result<Vec<RunStep>, StoreError> {
        let limit = limit_of(limit);
        let mut out = self.rows(
            &format!(
                "SELECT {STEP_COLUMNS} FROM steps WHERE run_id = $1 ORDER BY seq DESC LIMIT $2"
            ),
            &[&run_id, &limit],
            step_from,
        )?;
        out.reverse();
        Ok(out)
    }

    fn run_agent_episodes(
        &self,
        run_id: &str,
        agent_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunEpisode>, StoreError> {
        let limit = limit_of(limit);
        let mut out = match agent_id {
            Some(agent) => self.rows(
                &format!(
                    "SELECT {EPISODE_COLUMNS} FROM episodes WHERE run_id = $1 AND agent_id = $2 \
                     ORDER BY seq DESC LIMIT $3"
                ),
                &[&run_id, &agent, &limit],
                episode_from,
            )?,
            None => self.rows(
                &format!(
                    "SELECT {EPISODE_COLUMNS} FROM episodes WHERE run_id = $1 \
                     ORDER BY seq DESC LIMIT $2"
                ),
                &[&run_id, &limit],
                episode_from,
            )?,
        };
        out.reverse();
        Ok(out)
    }
}
