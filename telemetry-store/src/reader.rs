//! Readers: keyset-paged, read-only connections that never block the writer.
//!
//! Viewers, the hub's catch-up, replay and dump all read what is already stored. Each
//! [`StoreReader`] owns its own read-only connection (open as many as you like, one per
//! thread), and every page is one short read transaction: `WHERE seq > ? ... ORDER BY seq
//! LIMIT ?` on an index, never `OFFSET`, so page `n` costs the same as page 1 and a slow
//! consumer never pins an old WAL snapshot. Every call that returns a list takes a limit
//! (capped at [`MAX_PAGE`]) so no single call holds an unbounded result in memory.

use std::{path::Path, time::Duration};

use rusqlite::{Connection, ToSql};
use telemetry_core::pb::{self, Record, RunEpisode, RunStep, Scalar};

use crate::{
    error::classify,
    open,
    pages::{RawPage, RowView},
    rows::{self, u64_from_sql, u64_to_sql},
    schema::{EPISODE_COLUMNS, SCALAR_COLUMNS, STEP_COLUMNS},
    Filter, LastSeqs, ModeFilter, RunStats, StoreConfig, StoreError,
};

/// The largest page any single read returns.
pub const MAX_PAGE: usize = 65536;

/// A read-only connection on a store file. `Send`; not `Sync` (open one per thread).
#[derive(Debug)]
pub struct StoreReader {
    conn: Connection,
    path: std::path::PathBuf,
    page_size: usize,
}

/// The paged streams of rows (lifecycle events are read whole, by `events_since`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Steps,
    Episodes,
    Scalars,
}

impl Stream {
    fn table(self) -> &'static str {
        match self {
            Stream::Steps => "steps",
            Stream::Episodes => "episodes",
            Stream::Scalars => "scalars",
        }
    }

    fn columns(self) -> &'static str {
        match self {
            Stream::Steps => STEP_COLUMNS,
            Stream::Episodes => EPISODE_COLUMNS,
            Stream::Scalars => SCALAR_COLUMNS,
        }
    }

    /// Columns of `SELECT seq, <columns>`.
    fn ncols(self) -> usize {
        match self {
            Stream::Steps => 22,
            Stream::Episodes => 15,
            Stream::Scalars => 9,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Stream::Steps => "step",
            Stream::Episodes => "episode",
            Stream::Scalars => "scalar",
        }
    }
}

fn clamp_limit(limit: usize) -> i64 {
    limit.min(MAX_PAGE) as i64
}

/// Reads keep `since_seq` above `i64::MAX` meaning "nothing left".
fn since_param(since_seq: u64) -> i64 {
    i64::try_from(since_seq).unwrap_or(i64::MAX)
}

/// The index a filtered page walks (in seq order, so no sort is ever needed). SQLite's planner
/// has no statistics to tell a small run from a big control mode, so the choice is ours: the
/// most selective filter first (run and agent, run, mode); no filter (or only an agent) walks
/// the table itself.
fn page_index(stream: Stream, filter: &Filter) -> Option<&'static str> {
    if let Stream::Scalars = stream {
        // Scalars have no control mode: the mode filter does not apply to them.
        return match (&filter.run_id, &filter.agent_id) {
            (Some(_), Some(_)) => Some("scalars_run_agent_seq"),
            (Some(_), None) => Some("scalars_run_seq"),
            (None, _) => None,
        };
    }
    let (run_agent, run, mode, human) = match stream {
        Stream::Scalars => unreachable!("handled above"),
        Stream::Steps => (
            "steps_run_agent_seq",
            "steps_run_seq",
            "steps_mode_seq",
            "steps_human_or_unknown",
        ),
        Stream::Episodes => (
            "episodes_run_agent_seq",
            "episodes_run_seq",
            "episodes_mode_seq",
            "episodes_human_or_unknown",
        ),
    };
    match (&filter.run_id, &filter.agent_id, filter.control_mode) {
        (Some(_), Some(_), _) => Some(run_agent),
        (Some(_), None, _) => Some(run),
        (None, _, ModeFilter::Exact(_)) => Some(mode),
        (None, _, ModeFilter::HumanOrUnknown) => Some(human),
        (None, _, ModeFilter::Any) => None,
    }
}

/// The SQL of one filtered page. The human-or-unknown condition is spelled exactly as the
/// partial index's `WHERE` clause so that index can serve it.
fn page_sql(stream: Stream, filter: &Filter) -> String {
    let indexed = page_index(stream, filter)
        .map(|i| format!(" INDEXED BY {i}"))
        .unwrap_or_default();
    let mut sql = format!(
        "SELECT seq, {} FROM {}{indexed} WHERE seq > ?",
        stream.columns(),
        stream.table()
    );
    if filter.run_id.is_some() {
        sql.push_str(" AND run_id = ?");
    }
    if filter.agent_id.is_some() {
        sql.push_str(" AND agent_id = ?");
    }
    match filter.control_mode {
        _ if matches!(stream, Stream::Scalars) => {}
        ModeFilter::Any => {}
        ModeFilter::Exact(_) => sql.push_str(" AND control_mode = ?"),
        ModeFilter::HumanOrUnknown => sql.push_str(" AND control_mode IN ('human', 'unknown')"),
    }
    sql.push_str(" ORDER BY seq LIMIT ?");
    sql
}

impl StoreReader {
    /// Opens a reader with the default page size and busy timeout.
    ///
    /// The file must be a store at the current schema version: a missing file is
    /// [`StoreError::NotFound`], an older store [`StoreError::OutdatedVersion`] (the writer
    /// migrates it), a newer one [`StoreError::NewerVersion`].
    pub fn open(path: &Path) -> Result<StoreReader, StoreError> {
        let defaults = StoreConfig::new(path);
        Self::open_with(path, defaults.busy_timeout, defaults.clamped_page_size())
    }

    /// Opens a reader with an explicit busy timeout and page size (rows per keyset page).
    pub fn open_with(
        path: &Path,
        busy_timeout: Duration,
        page_size: usize,
    ) -> Result<StoreReader, StoreError> {
        let conn = open::open_reader(path, busy_timeout)?;
        Ok(StoreReader {
            conn,
            path: path.to_owned(),
            page_size: page_size.clamp(1, MAX_PAGE),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows per page of the iterators.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn err(&self, e: rusqlite::Error) -> StoreError {
        classify(&self.path, e)
    }

    /// Copies one filtered page into `page`; returns whether the stream ran out of rows.
    pub(crate) fn fetch_raw(
        &self,
        stream: Stream,
        since_seq: u64,
        filter: &Filter,
        limit: usize,
        max_bytes: usize,
        page: &mut RawPage,
    ) -> Result<bool, StoreError> {
        let sql = page_sql(stream, filter);
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let since = since_param(since_seq);
        let mode = match filter.control_mode {
            ModeFilter::Exact(m) if !matches!(stream, Stream::Scalars) => Some(m.as_str()),
            _ => None,
        };
        let limit = limit.min(MAX_PAGE);
        let limit_param = limit as i64;
        let mut params: Vec<&dyn ToSql> = vec![&since];
        if let Some(run) = &filter.run_id {
            params.push(run);
        }
        if let Some(agent) = &filter.agent_id {
            params.push(agent);
        }
        if let Some(mode) = &mode {
            params.push(mode);
        }
        params.push(&limit_param);
        let mut rows = stmt.query(params.as_slice()).map_err(|e| self.err(e))?;
        page.fill(&mut rows, stream.ncols(), limit, max_bytes, stream.what())
            .map_err(|e| match e {
                StoreError::Sqlite(e) => self.err(e),
                other => other,
            })
    }

    fn page<T>(
        &self,
        stream: Stream,
        since_seq: u64,
        filter: &Filter,
        limit: usize,
        build: fn(&RowView<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut page = RawPage::default();
        self.fetch_raw(stream, since_seq, filter, limit, usize::MAX, &mut page)?;
        (0..page.rows()).map(|i| build(&page.row(i))).collect()
    }

    /// Runs a query of `SELECT seq, <stream columns> ...` and builds every row.
    fn collect_rows<T>(
        &self,
        stream: Stream,
        sql: &str,
        params: &[&dyn ToSql],
        build: fn(&RowView<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let mut rows = stmt.query(params).map_err(|e| self.err(e))?;
        let mut page = RawPage::default();
        page.fill(
            &mut rows,
            stream.ncols(),
            usize::MAX,
            usize::MAX,
            stream.what(),
        )
        .map_err(|e| match e {
            StoreError::Sqlite(e) => self.err(e),
            other => other,
        })?;
        (0..page.rows()).map(|i| build(&page.row(i))).collect()
    }

    /// One page of steps with `seq > since_seq` matching `filter`, in seq order.
    pub fn read_steps_page(
        &self,
        since_seq: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<RunStep>, StoreError> {
        self.page(Stream::Steps, since_seq, filter, limit, rows::step_from)
    }

    /// One page of episodes with `seq > since_seq` matching `filter`, in seq order.
    pub fn read_episodes_page(
        &self,
        since_seq: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<RunEpisode>, StoreError> {
        self.page(
            Stream::Episodes,
            since_seq,
            filter,
            limit,
            rows::episode_from,
        )
    }

    /// One page of scalars with `seq > since_seq` of the filter's run and agent (its control
    /// mode does not apply), in seq order.
    pub fn read_scalars_page(
        &self,
        since_seq: u64,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Scalar>, StoreError> {
        self.page(Stream::Scalars, since_seq, filter, limit, rows::scalar_from)
    }

    /// Up to `limit` lifecycle events (`RunStarted`, `RunCompleted`, `Artifact`) with
    /// `seq > since_seq`, optionally of one run, in seq order.
    pub fn events_since(
        &self,
        since_seq: u64,
        run_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let since = since_param(since_seq);
        let limit = clamp_limit(limit);
        let (sql, params): (&str, Vec<&dyn ToSql>) = match &run_id {
            Some(run) => (
                "SELECT seq, body FROM events WHERE seq > ?1 AND run_id = ?2 ORDER BY seq LIMIT ?3",
                vec![&since, run, &limit],
            ),
            None => (
                "SELECT seq, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                vec![&since, &limit],
            ),
        };
        self.collect(sql, params.as_slice(), rows::event_from_row)
    }

    fn collect<T>(
        &self,
        sql: &str,
        params: &[&dyn ToSql],
        decode: fn(&rusqlite::Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let mut rows = stmt.query(params).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            out.push(decode(row)?);
        }
        Ok(out)
    }

    /// The highest seq of each stream.
    pub fn last_seqs(&self) -> Result<LastSeqs, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT (SELECT coalesce(max(seq), 0) FROM steps), \
                        (SELECT coalesce(max(seq), 0) FROM episodes), \
                        (SELECT coalesce(max(seq), 0) FROM events), \
                        (SELECT coalesce(max(seq), 0) FROM scalars)",
            )
            .and_then(|mut s| {
                s.query_row([], |r| {
                    Ok(LastSeqs {
                        steps: u64_from_sql(r.get(0)?),
                        episodes: u64_from_sql(r.get(1)?),
                        events: u64_from_sql(r.get(2)?),
                        scalars: u64_from_sql(r.get(3)?),
                    })
                })
            })
            .map_err(|e| self.err(e))
    }

    /// Every run with stored records, sorted by run id, from the per-run summaries the
    /// writer keeps (no scan of the streams).
    pub fn list_runs(&self) -> Result<Vec<RunStats>, StoreError> {
        let mut runs: Vec<RunStats> = self
            .conn
            .prepare_cached(
                "SELECT run_id, step_count, episode_count, first_ts_ns, last_ts_ns, \
                 last_step_seq, last_episode_seq FROM run_stats ORDER BY run_id",
            )
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(RunStats {
                        run_id: r.get(0)?,
                        step_count: u64_from_sql(r.get(1)?),
                        episode_count: u64_from_sql(r.get(2)?),
                        first_timestamp_ns: r.get(3)?,
                        last_timestamp_ns: r.get(4)?,
                        last_step_seq: u64_from_sql(r.get(5)?),
                        last_episode_seq: u64_from_sql(r.get(6)?),
                        ..RunStats::default()
                    })
                })?
                .collect()
            })
            .map_err(|e| self.err(e))?;
        let find = |runs: &mut [RunStats], id: &str| -> Option<usize> {
            runs.binary_search_by(|r| r.run_id.as_str().cmp(id)).ok()
        };
        let agents: Vec<(String, String, String)> = self
            .conn
            .prepare_cached(
                "SELECT run_id, agent_id, control_mode FROM run_agents \
                 ORDER BY run_id, agent_id, control_mode",
            )
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(|e| self.err(e))?;
        for (run_id, agent, mode) in agents {
            if let Some(i) = find(&mut runs, &run_id) {
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
        let completions = self.collect(
            "SELECT e.seq, e.body FROM events AS e WHERE e.kind = 'run_completed' AND e.seq = \
             (SELECT max(seq) FROM events WHERE run_id = e.run_id AND kind = 'run_completed')",
            &[],
            rows::event_from_row,
        )?;
        for record in completions {
            if let Some(pb::record::Kind::RunCompleted(c)) = record.kind {
                if let Some(i) = find(&mut runs, &c.run_id) {
                    runs[i].completion = Some(c);
                }
            }
        }
        Ok(runs)
    }

    /// The run registry, sorted by run id.
    pub fn run_infos(&self) -> Result<Vec<pb::RunInfo>, StoreError> {
        let bodies: Vec<(String, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT run_id, info FROM runs ORDER BY run_id")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .map_err(|e| self.err(e))?;
        bodies
            .into_iter()
            .map(|(run_id, body)| {
                <pb::RunInfo as prost::Message>::decode(body.as_slice()).map_err(|e| {
                    StoreError::Decode {
                        what: "run info",
                        seq: 0,
                        detail: format!("run {run_id}: {e}"),
                    }
                })
            })
            .collect()
    }

    /// Up to `limit` episodes with `seq > since_seq` whose control mode is `human` or
    /// `unknown` (old rows), for the "Human Replay" view.
    pub fn human_replay_episodes(
        &self,
        since_seq: u64,
        limit: usize,
    ) -> Result<Vec<RunEpisode>, StoreError> {
        let filter = Filter {
            control_mode: ModeFilter::HumanOrUnknown,
            ..Filter::default()
        };
        self.read_episodes_page(since_seq, &filter, limit)
    }

    /// The latest `limit` episodes of a run (optionally of one agent), oldest first.
    pub fn run_agent_episodes(
        &self,
        run_id: &str,
        agent_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunEpisode>, StoreError> {
        let limit = clamp_limit(limit);
        let sql_run = format!(
            "SELECT seq, {EPISODE_COLUMNS} FROM episodes WHERE run_id = ?1 \
             ORDER BY seq DESC LIMIT ?2"
        );
        let sql_agent = format!(
            "SELECT seq, {EPISODE_COLUMNS} FROM episodes WHERE run_id = ?1 AND agent_id = ?2 \
             ORDER BY seq DESC LIMIT ?3"
        );
        let mut out = match agent_id {
            Some(agent) => self.collect_rows(
                Stream::Episodes,
                &sql_agent,
                &[&run_id, &agent, &limit],
                rows::episode_from,
            )?,
            None => self.collect_rows(
                Stream::Episodes,
                &sql_run,
                &[&run_id, &limit],
                rows::episode_from,
            )?,
        };
        out.reverse();
        Ok(out)
    }

    /// Up to `limit` steps of one episode of one agent, in step order, for frame-by-frame
    /// replay.
    pub fn episode_steps(
        &self,
        run_id: &str,
        agent_id: &str,
        episode_index: u64,
        limit: usize,
    ) -> Result<Vec<RunStep>, StoreError> {
        self.episode_steps_from(run_id, agent_id, episode_index, 0, limit)
    }

    /// Like [`StoreReader::episode_steps`], starting at `from_step_index` (to page through a
    /// long episode).
    pub fn episode_steps_from(
        &self,
        run_id: &str,
        agent_id: &str,
        episode_index: u64,
        from_step_index: u64,
        limit: usize,
    ) -> Result<Vec<RunStep>, StoreError> {
        let sql = format!(
            "SELECT seq, {STEP_COLUMNS} FROM steps WHERE run_id = ?1 AND agent_id = ?2 \
             AND episode_index = ?3 AND step_index >= ?4 ORDER BY step_index, seq LIMIT ?5"
        );
        let (episode, from, limit) = (
            u64_to_sql(episode_index),
            u64_to_sql(from_step_index),
            clamp_limit(limit),
        );
        self.collect_rows(
            Stream::Steps,
            &sql,
            &[&run_id, &agent_id, &episode, &from, &limit],
            rows::step_from,
        )
    }

    /// The latest `limit` steps of a run (every agent), oldest first: what the hub's ring is
    /// warmed with after a daemon restart.
    pub fn tail_steps(&self, run_id: &str, limit: usize) -> Result<Vec<RunStep>, StoreError> {
        let sql = format!(
            "SELECT seq, {STEP_COLUMNS} FROM steps WHERE run_id = ?1 ORDER BY seq DESC LIMIT ?2"
        );
        let limit = clamp_limit(limit);
        let mut out =
            self.collect_rows(Stream::Steps, &sql, &[&run_id, &limit], rows::step_from)?;
        out.reverse();
        Ok(out)
    }

    /// The latest stored `RunCompleted` of a run, if any.
    pub fn run_completion(&self, run_id: &str) -> Result<Option<pb::RunCompleted>, StoreError> {
        let records = self.collect(
            "SELECT seq, body FROM events WHERE run_id = ?1 AND kind = 'run_completed' \
             ORDER BY seq DESC LIMIT 1",
            &[&run_id],
            rows::event_from_row,
        )?;
        Ok(records.into_iter().find_map(|r| match r.kind {
            Some(pb::record::Kind::RunCompleted(c)) => Some(c),
            _ => None,
        }))
    }

    #[cfg(test)]
    pub(crate) fn query_plan(&self, stream_is_steps: bool, filter: &Filter) -> Vec<String> {
        let stream = if stream_is_steps {
            Stream::Steps
        } else {
            Stream::Episodes
        };
        let sql = format!("EXPLAIN QUERY PLAN {}", page_sql(stream, filter));
        let mut stmt = self.conn.prepare(&sql).expect("plan");
        let n = stmt.parameter_count();
        for i in 1..=n {
            stmt.raw_bind_parameter(i, 1).expect("bind");
        }
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().expect("row") {
            out.push(row.get::<_, String>(3).expect("detail"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ControlMode, Store};

    fn filters() -> Vec<Filter> {
        let mut out = Vec::new();
        for run in [None, Some("r".to_string())] {
            for agent in [None, Some("a".to_string())] {
                for mode in [
                    ModeFilter::Any,
                    ModeFilter::Exact(ControlMode::Agent),
                    ModeFilter::HumanOrUnknown,
                ] {
                    out.push(Filter {
                        run_id: run.clone(),
                        agent_id: agent.clone(),
                        control_mode: mode,
                    });
                }
            }
        }
        out
    }

    /// Every filter combination walks an index in seq order: no sort, no full scan when a
    /// run or a mode is given, so a page costs the same at any depth.
    #[test]
    fn every_filtered_page_walks_an_index_in_seq_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::in_var_dir(dir.path())).expect("open");
        let reader = store.reader().expect("reader");
        for (steps, stream) in [(true, Stream::Steps), (false, Stream::Episodes)] {
            for f in filters() {
                let plan = reader.query_plan(steps, &f).join(" | ");
                assert!(!plan.contains("TEMP B-TREE"), "{f:?}: {plan}");
                match page_index(stream, &f) {
                    Some(index) => assert!(plan.contains(index), "{f:?}: {plan}"),
                    None => assert!(
                        plan.contains("INTEGER PRIMARY KEY (rowid>?)"),
                        "{f:?}: {plan}"
                    ),
                }
            }
        }
    }
}
