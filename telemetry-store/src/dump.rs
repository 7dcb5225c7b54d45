//! Exporting stored steps, episodes, scalars or lifecycle events as JSONL, in flat memory.
//!
//! `gym-telemetry-daemon dump` and ad-hoc analysis need the store's content in the same line
//! format workers speak (`telemetry_core::jsonl`), for `jq`, pandas or a diff against a
//! legacy log. The dump walks the store with the keyset iterators, one page at a time, and
//! writes each record as soon as it is read: memory stays flat however many rows are dumped,
//! and each page is its own short read transaction, so a dump running next to a live daemon
//! does not hold back its WAL checkpoints.

use std::io::{BufWriter, Write};

use telemetry_core::{jsonl::write_record, pb::Record};

use crate::{BackendReader, Filter, StoreError, StoreReader};

/// What to dump.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DumpOptions {
    /// Only records with `seq > since_seq`.
    pub since_seq: u64,
    /// Which run, agent and control modes.
    pub filter: Filter,
    /// Dump episodes instead of steps.
    pub episodes: bool,
    /// Dump training scalars instead of steps (the filter's control mode does not apply).
    pub scalars: bool,
    /// Dump lifecycle events (`run_started`, `run_completed`, `artifact`) instead of steps
    /// (only the filter's run applies: events have no agent or control-mode column).
    pub events: bool,
}

/// What a dump wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DumpReport {
    /// Lines (records) written.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Seq of the last record written (`since_seq` when none): pass it as `since_seq` to
    /// continue later.
    pub last_seq: u64,
}

/// Counts the bytes that pass through.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes every stored step (or episode, scalar or event, see [`DumpOptions`]; `events` wins
/// over `scalars`, which wins over `episodes`) selected by `opts` to
/// `out`, one JSON object per line, in seq order. Output is buffered here; `out` is flushed at
/// the end.
pub fn dump_jsonl<W: Write>(
    reader: &StoreReader,
    opts: &DumpOptions,
    out: W,
) -> Result<DumpReport, StoreError> {
    let mut w = BufWriter::with_capacity(
        64 * 1024,
        Counting {
            inner: out,
            bytes: 0,
        },
    );
    let mut report = DumpReport {
        last_seq: opts.since_seq,
        ..DumpReport::default()
    };
    let mut emit = |record: Record, seq: u64| -> Result<(), StoreError> {
        write_record(&mut w, &record).map_err(StoreError::Output)?;
        report.records += 1;
        report.last_seq = seq;
        Ok(())
    };
    if opts.events {
        let mut since = opts.since_seq;
        loop {
            let page =
                reader.events_since(since, opts.filter.run_id.as_deref(), reader.page_size())?;
            let Some(last) = page.last() else { break };
            since = last.seq_id();
            for event in page {
                let seq = event.seq_id();
                emit(event, seq)?;
            }
        }
    } else if opts.scalars {
        let mut since = opts.since_seq;
        loop {
            let page = reader.read_scalars_page(since, &opts.filter, reader.page_size())?;
            let Some(last) = page.last() else { break };
            since = last.seq_id;
            for scalar in page {
                let seq = scalar.seq_id;
                emit(scalar.into(), seq)?;
            }
        }
    } else if opts.episodes {
        for episode in reader.stream_episodes_since(opts.since_seq, &opts.filter) {
            let episode = episode?;
            let seq = episode.seq_id;
            emit(episode.into(), seq)?;
        }
    } else {
        for step in reader.stream_steps_since(opts.since_seq, &opts.filter) {
            let step = step?;
            let seq = step.seq_id;
            emit(step.into(), seq)?;
        }
    }
    w.flush().map_err(StoreError::Output)?;
    report.bytes = w.get_ref().bytes;
    Ok(report)
}

/// Rows per page of [`dump_backend_jsonl`].
const BACKEND_PAGE: usize = 2048;

/// [`dump_jsonl`] through the store seam: the same lines, from any backend's reader (keyset
/// pages of [`BACKEND_PAGE`] rows, so memory stays flat there too).
pub fn dump_backend_jsonl<W: Write>(
    reader: &dyn BackendReader,
    opts: &DumpOptions,
    out: W,
) -> Result<DumpReport, StoreError> {
    let mut w = BufWriter::with_capacity(
        64 * 1024,
        Counting {
            inner: out,
            bytes: 0,
        },
    );
    let mut report = DumpReport {
        last_seq: opts.since_seq,
        ..DumpReport::default()
    };
    let mut since = opts.since_seq;
    loop {
        let page: Vec<(Record, u64)> = if opts.events {
            let rows = reader.events_page(since, opts.filter.run_id.as_deref(), BACKEND_PAGE)?;
            rows.into_iter()
                .map(|r| {
                    let seq = r.seq_id();
                    (r, seq)
                })
                .collect()
        } else if opts.scalars {
            let rows = reader.scalars_page(since, &opts.filter, BACKEND_PAGE)?;
            rows.into_iter()
                .map(|r| (r.seq_id, r))
                .map(|(s, r)| (r.into(), s))
                .collect()
        } else if opts.episodes {
            let rows = reader.episodes_page(since, &opts.filter, BACKEND_PAGE)?;
            rows.into_iter()
                .map(|r| (r.seq_id, r))
                .map(|(s, r)| (r.into(), s))
                .collect()
        } else {
            let rows = reader.steps_page(since, &opts.filter, BACKEND_PAGE)?;
            rows.into_iter()
                .map(|r| (r.seq_id, r))
                .map(|(s, r)| (r.into(), s))
                .collect()
        };
        let Some(&(_, last)) = page.last() else { break };
        since = last;
        for (record, seq) in page {
            write_record(&mut w, &record).map_err(StoreError::Output)?;
            report.records += 1;
            report.last_seq = seq;
        }
    }
    w.flush().map_err(StoreError::Output)?;
    report.bytes = w.get_ref().bytes;
    Ok(report)
}
