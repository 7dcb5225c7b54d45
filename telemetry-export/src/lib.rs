//! # telemetry-export
//!
//! Stored telemetry as Apache Parquet files, for pandas, polars, DuckDB or Spark: the same
//! selection as `gym-telemetry-daemon dump` (a stream, `since_seq`, run, agent and control
//! mode), written column by column with typed columns instead of JSON lines.
//!
//! **Why a crate of its own.** The Parquet writer and its Arrow arrays (`parquet`,
//! `arrow-array`, `arrow-schema` of arrow-rs) are a large dependency tree. The store, the
//! server and the shim never need them, so they live here, where only the offline tools that
//! export (the daemon's `dump --format parquet`, benchmarks) link them; `telemetry-server`
//! builds exactly as before.
//!
//! **Flat memory.** [`export_parquet`] walks the store with its keyset-paged readers (one short
//! read transaction per page, as the JSONL dump does), appends the rows to Arrow column builders,
//! hands them to the Parquet writer every 4,096 rows (or 8 MiB of text) as one record batch, and
//! the writer closes a row group every [`ParquetOptions::row_group_rows`] rows (or sooner, once
//! its encoded size passes [`ParquetOptions::row_group_bytes`]). Memory is one store page, one
//! batch and one encoded row group, whatever the number of rows exported; the table is never
//! held whole.
//!
//! ## Schemas
//!
//! Every column but `timestamp` is non-null. `seq` is the record's store seq (its `seq_id`) in
//! its own stream; rows come in seq order. `u64` fields are `UInt64` (values above `i64::MAX`
//! are kept exactly); `timestamp` is `Timestamp(Nanosecond, "UTC")`, null when the record had
//! none; JSON payloads (`*_json`, `document`) are the record's exact strings (`Utf8`), never
//! parsed; `control_mode` is `Dictionary(Int32, Utf8)` in its canonical spelling (a pandas
//! `category`). Floats are `Float64` with NaN and infinities kept as they are.
//!
//! Steps ([`Stream::Steps`]):
//!
//! | column | Arrow type |
//! |---|---|
//! | `seq`, `episode_index`, `step_index`, `producer_seq` | `UInt64` |
//! | `run_id`, `agent_id`, `policy_label`, `backend`, `frame_ref`, `producer_id` | `Utf8` |
//! | `action_json`, `observation_json`, `render_hint_json`, `info_json` | `Utf8` (JSON) |
//! | `reward` | `Float64` |
//! | `terminated`, `truncated` | `Boolean` |
//! | `timestamp` | `Timestamp(Nanosecond, "UTC")`, nullable |
//! | `payload_version` | `UInt32` |
//! | `control_mode` | `Dictionary(Int32, Utf8)` |
//!
//! in the order `seq, run_id, episode_index, step_index, action_json, observation_json, reward,
//! terminated, truncated, timestamp, policy_label, backend, agent_id, render_hint_json,
//! frame_ref, payload_version, control_mode, producer_id, producer_seq, info_json`.
//!
//! Episodes ([`Stream::Episodes`]): `seq` `UInt64`, `run_id` `Utf8`, `episode_index` `UInt64`,
//! `total_reward` `Float64`, `steps` `UInt64`, `terminated` `Boolean`, `truncated` `Boolean`,
//! `metadata_json` `Utf8` (JSON), `timestamp` (nullable), `agent_id` `Utf8`, `control_mode`
//! `Dictionary(Int32, Utf8)`, `producer_id` `Utf8`, `producer_seq` `UInt64`.
//!
//! Scalars ([`Stream::Scalars`]; the control-mode filter does not apply): `seq` `UInt64`,
//! `run_id` `Utf8`, `agent_id` `Utf8` (empty: run-wide), `tag` `Utf8`, `step` `Int64`, `value`
//! `Float64` (NaN kept), `timestamp` (nullable), `producer_id` `Utf8`, `producer_seq` `UInt64`.
//!
//! Lifecycle events ([`Stream::Events`]; only the filter's run applies): one row per event,
//! `seq` `UInt64`, `kind` `Utf8` (`run_started`, `run_completed` or `artifact`), `run_id`
//! `Utf8`, `timestamp` (nullable), `producer_id` `Utf8`, `producer_seq` `UInt64`, and
//! `document` `Utf8`: the event with every field as the canonical JSON line the JSONL dump
//! writes for it (`telemetry_core::jsonl::to_line`: `config_json`, `status`, `exit_code`,
//! `path`, `info_json`, ...).
//!
//! Each file's key-value metadata has `gym_telemetry.stream` (`steps`, `episodes`, `scalars`
//! or `events`). Column chunks are Snappy-compressed.

use std::{io::Write, sync::Arc};

use arrow_array::{
    builder::{
        BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, StringDictionaryBuilder,
        TimestampNanosecondBuilder, UInt32Builder, UInt64Builder,
    },
    types::Int32Type,
    ArrayRef, RecordBatch,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::{
    arrow::ArrowWriter,
    basic::Compression,
    errors::ParquetError,
    file::{metadata::KeyValue, properties::WriterProperties},
};
use telemetry_core::{
    jsonl::to_line,
    pb::{record::Kind, Record, RunEpisode, RunStep, Scalar},
    timestamp::to_unix_nanos,
};
use telemetry_store::{dump::DumpOptions, StoreError, StoreReader};

/// The time zone of every `timestamp` column.
pub const TIME_ZONE: &str = "UTC";

/// Rows handed to the Parquet writer at a time.
const BATCH_ROWS: usize = 4096;
/// Bytes of text after which a batch is handed over sooner.
const BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Key of the file metadata entry naming the stream.
pub const STREAM_METADATA_KEY: &str = "gym_telemetry.stream";

/// Which stream an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Steps.
    Steps,
    /// Episodes.
    Episodes,
    /// Training scalars.
    Scalars,
    /// Lifecycle events.
    Events,
}

impl Stream {
    /// The stream a [`DumpOptions`] selects (`events` over `scalars` over `episodes`, as
    /// `dump_jsonl` reads them).
    pub fn of(opts: &DumpOptions) -> Stream {
        if opts.events {
            Stream::Events
        } else if opts.scalars {
            Stream::Scalars
        } else if opts.episodes {
            Stream::Episodes
        } else {
            Stream::Steps
        }
    }

    /// Its name in the file metadata.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Steps => "steps",
            Stream::Episodes => "episodes",
            Stream::Scalars => "scalars",
            Stream::Events => "events",
        }
    }

    /// The Arrow schema of its files (see the crate docs).
    pub fn schema(self) -> SchemaRef {
        let fields = match self {
            Stream::Steps => vec![
                u64_field("seq"),
                utf8("run_id"),
                u64_field("episode_index"),
                u64_field("step_index"),
                utf8("action_json"),
                utf8("observation_json"),
                Field::new("reward", DataType::Float64, false),
                Field::new("terminated", DataType::Boolean, false),
                Field::new("truncated", DataType::Boolean, false),
                timestamp_field(),
                utf8("policy_label"),
                utf8("backend"),
                utf8("agent_id"),
                utf8("render_hint_json"),
                utf8("frame_ref"),
                Field::new("payload_version", DataType::UInt32, false),
                control_mode_field(),
                utf8("producer_id"),
                u64_field("producer_seq"),
                utf8("info_json"),
            ],
            Stream::Episodes => vec![
                u64_field("seq"),
                utf8("run_id"),
                u64_field("episode_index"),
                Field::new("total_reward", DataType::Float64, false),
                u64_field("steps"),
                Field::new("terminated", DataType::Boolean, false),
                Field::new("truncated", DataType::Boolean, false),
                utf8("metadata_json"),
                timestamp_field(),
                utf8("agent_id"),
                control_mode_field(),
                utf8("producer_id"),
                u64_field("producer_seq"),
            ],
            Stream::Scalars => vec![
                u64_field("seq"),
                utf8("run_id"),
                utf8("agent_id"),
                utf8("tag"),
                Field::new("step", DataType::Int64, false),
                Field::new("value", DataType::Float64, false),
                timestamp_field(),
                utf8("producer_id"),
                u64_field("producer_seq"),
            ],
            Stream::Events => vec![
                u64_field("seq"),
                utf8("kind"),
                utf8("run_id"),
                timestamp_field(),
                utf8("producer_id"),
                u64_field("producer_seq"),
                utf8("document"),
            ],
        };
        Arc::new(Schema::new(fields))
    }
}

fn u64_field(name: &str) -> Field {
    Field::new(name, DataType::UInt64, false)
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn timestamp_field() -> Field {
    Field::new(
        "timestamp",
        DataType::Timestamp(TimeUnit::Nanosecond, Some(TIME_ZONE.into())),
        true,
    )
}

fn control_mode_field() -> Field {
    Field::new(
        "control_mode",
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        false,
    )
}

/// How the file is cut into row groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParquetOptions {
    /// Rows per row group (at least 1; default 65,536).
    pub row_group_rows: usize,
    /// A row group is also closed once its estimated encoded size passes this many bytes (at
    /// least 1; default 64 MiB), so rows with large observations keep memory bounded too.
    pub row_group_bytes: usize,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            row_group_rows: 65_536,
            row_group_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportReport {
    /// The stream written.
    pub stream: Option<Stream>,
    /// Rows (records) written.
    pub rows: u64,
    /// Row groups written.
    pub row_groups: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// Seq of the last row written (`since_seq` when none): pass it as `since_seq` to continue
    /// later (in another file).
    pub last_seq: u64,
}

/// Why an export failed. The output may then hold a partial file without a footer.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the store failed.
    #[error("reading the store: {0}")]
    Store(#[from] StoreError),
    /// Building a column failed.
    #[error("building Arrow columns: {0}")]
    Arrow(#[from] ArrowError),
    /// Encoding or writing the file failed (an I/O error of the output is one).
    #[error("writing Parquet: {0}")]
    Parquet(#[from] ParquetError),
    /// Flushing the output failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
    /// A [`RecordWriter`] was given a record of another stream (or made for events).
    #[error("a writer of {} cannot take {expected}", stream.name())]
    WrongStream {
        /// The writer's stream.
        stream: Stream,
        /// What it was given.
        expected: &'static str,
    },
}

/// Writes every stored record of the stream `opts` selects (see [`Stream::of`]) that matches
/// its `since_seq` and filter to `out` as one Parquet file, in seq order, one row group at a
/// time (see [`ParquetOptions`]). `out` is written sequentially (a pipe will do) and flushed
/// at the end.
pub fn export_parquet<W: Write + Send>(
    reader: &StoreReader,
    opts: &DumpOptions,
    parquet: &ParquetOptions,
    out: W,
) -> Result<ExportReport, ExportError> {
    export_parquet_tags(reader, opts, parquet, &[], out)
}

/// [`export_parquet`], with scalars further limited to the exact `tags` (empty: every tag;
/// the other streams ignore it). `gym_telemetry.load(kind="scalars", tags=...)` reads this way.
/// `last_seq` is then the seq of the last scalar read, written or not.
pub fn export_parquet_tags<W: Write + Send>(
    reader: &StoreReader,
    opts: &DumpOptions,
    parquet: &ParquetOptions,
    tags: &[String],
    out: W,
) -> Result<ExportReport, ExportError> {
    let stream = Stream::of(opts);
    let mut sink = Sink::new(stream, parquet, out, opts.since_seq)?;
    match stream {
        Stream::Steps => {
            let mut cols = StepColumns::default();
            for step in reader.stream_steps_since(opts.since_seq, &opts.filter) {
                let step = step?;
                cols.push(&step)?;
                sink.row_added(&mut cols, step.seq_id)?;
            }
            sink.finish(cols)
        }
        Stream::Episodes => {
            let mut cols = EpisodeColumns::default();
            for episode in reader.stream_episodes_since(opts.since_seq, &opts.filter) {
                let episode = episode?;
                cols.push(&episode)?;
                sink.row_added(&mut cols, episode.seq_id)?;
            }
            sink.finish(cols)
        }
        Stream::Scalars => {
            let mut cols = ScalarColumns::default();
            let mut since = opts.since_seq;
            loop {
                let page = reader.read_scalars_page(since, &opts.filter, reader.page_size())?;
                let Some(last) = page.last() else { break };
                since = last.seq_id;
                for scalar in &page {
                    if tags.is_empty() || tags.contains(&scalar.tag) {
                        cols.push(scalar);
                        sink.row_added(&mut cols, scalar.seq_id)?;
                    }
                }
                sink.report.last_seq = since;
            }
            sink.finish(cols)
        }
        Stream::Events => {
            let mut cols = EventColumns::default();
            let mut since = opts.since_seq;
            let run = opts.filter.run_id.as_deref();
            loop {
                let page = reader.events_since(since, run, reader.page_size())?;
                let Some(last) = page.last() else { break };
                since = last.seq_id();
                for event in &page {
                    cols.push(event);
                    sink.row_added(&mut cols, event.seq_id())?;
                }
            }
            sink.finish(cols)
        }
    }
}

/// One stream's rows written as they come, from any source: [`export_parquet`] reads the
/// store itself; a reader of the daemon's Query API (`gym_telemetry.load` without a store
/// file) pushes the records it receives. Same schemas, same batching and row groups, so both
/// paths give the same file for the same rows.
pub struct RecordWriter<W: Write + Send> {
    sink: Sink<W>,
    cols: AnyColumns,
}

/// One writer holds one of these for its whole life, so the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum AnyColumns {
    Steps(StepColumns),
    Episodes(EpisodeColumns),
    Scalars(ScalarColumns),
}

impl<W: Write + Send> RecordWriter<W> {
    /// A writer of `stream` (steps, episodes or scalars; lifecycle events come only from the
    /// store, [`export_parquet`]) into `out`.
    pub fn new(stream: Stream, parquet: &ParquetOptions, out: W) -> Result<Self, ExportError> {
        let cols = match stream {
            Stream::Steps => AnyColumns::Steps(StepColumns::default()),
            Stream::Episodes => AnyColumns::Episodes(EpisodeColumns::default()),
            Stream::Scalars => AnyColumns::Scalars(ScalarColumns::default()),
            Stream::Events => {
                return Err(ExportError::WrongStream {
                    stream,
                    expected: "a store",
                })
            }
        };
        Ok(RecordWriter {
            sink: Sink::new(stream, parquet, out, 0)?,
            cols,
        })
    }

    /// Appends a step (a writer of another stream refuses it).
    pub fn push_step(&mut self, step: &RunStep) -> Result<(), ExportError> {
        match &mut self.cols {
            AnyColumns::Steps(c) => {
                c.push(step)?;
                self.sink.row_added(c, step.seq_id)
            }
            _ => Err(self.wrong("steps")),
        }
    }

    /// Appends an episode.
    pub fn push_episode(&mut self, episode: &RunEpisode) -> Result<(), ExportError> {
        match &mut self.cols {
            AnyColumns::Episodes(c) => {
                c.push(episode)?;
                self.sink.row_added(c, episode.seq_id)
            }
            _ => Err(self.wrong("episodes")),
        }
    }

    /// Appends a scalar.
    pub fn push_scalar(&mut self, scalar: &Scalar) -> Result<(), ExportError> {
        match &mut self.cols {
            AnyColumns::Scalars(c) => {
                c.push(scalar);
                self.sink.row_added(c, scalar.seq_id)
            }
            _ => Err(self.wrong("scalars")),
        }
    }

    fn wrong(&self, expected: &'static str) -> ExportError {
        ExportError::WrongStream {
            stream: self.sink.report.stream.unwrap_or(Stream::Steps),
            expected,
        }
    }

    /// Writes the last batch and the footer; returns what was written.
    pub fn finish(self) -> Result<ExportReport, ExportError> {
        match self.cols {
            AnyColumns::Steps(c) => self.sink.finish(c),
            AnyColumns::Episodes(c) => self.sink.finish(c),
            AnyColumns::Scalars(c) => self.sink.finish(c),
        }
    }
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

/// The column builders of one stream: one row group's worth of rows at a time.
trait Columns {
    /// Rows appended since the last [`Columns::finish`].
    fn rows(&self) -> usize;
    /// Bytes of text appended since the last [`Columns::finish`] (an estimate of the group's
    /// memory).
    fn text_bytes(&self) -> usize;
    /// The arrays in schema order; the builders start over empty.
    fn finish(&mut self) -> Vec<ArrayRef>;
}

/// The Parquet writer and the batch accounting.
struct Sink<W: Write + Send> {
    writer: ArrowWriter<Counting<W>>,
    schema: SchemaRef,
    report: ExportReport,
}

impl<W: Write + Send> Sink<W> {
    fn new(
        stream: Stream,
        parquet: &ParquetOptions,
        out: W,
        since_seq: u64,
    ) -> Result<Self, ExportError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(parquet.row_group_rows.max(1)))
            .set_max_row_group_bytes(Some(parquet.row_group_bytes.max(1)))
            .set_key_value_metadata(Some(vec![KeyValue::new(
                STREAM_METADATA_KEY.to_owned(),
                stream.name().to_owned(),
            )]))
            .build();
        let schema = stream.schema();
        let writer = ArrowWriter::try_new(
            Counting {
                inner: out,
                bytes: 0,
            },
            schema.clone(),
            Some(props),
        )?;
        Ok(Sink {
            writer,
            schema,
            report: ExportReport {
                stream: Some(stream),
                last_seq: since_seq,
                ..ExportReport::default()
            },
        })
    }

    /// Counts the row just appended to `cols`; hands the batch to the writer when it is full.
    fn row_added<C: Columns>(&mut self, cols: &mut C, seq: u64) -> Result<(), ExportError> {
        self.report.rows += 1;
        self.report.last_seq = seq;
        if cols.rows() >= BATCH_ROWS || cols.text_bytes() >= BATCH_BYTES {
            self.write_batch(cols)?;
        }
        Ok(())
    }

    /// Encodes the builders' rows into the row group in progress (which the writer closes at
    /// its row or byte limit).
    fn write_batch<C: Columns>(&mut self, cols: &mut C) -> Result<(), ExportError> {
        if cols.rows() == 0 {
            return Ok(());
        }
        let batch = RecordBatch::try_new(self.schema.clone(), cols.finish())?;
        self.writer.write(&batch)?;
        Ok(())
    }

    fn finish<C: Columns>(mut self, mut cols: C) -> Result<ExportReport, ExportError> {
        self.write_batch(&mut cols)?;
        self.writer.flush()?;
        self.report.row_groups = self.writer.flushed_row_groups().len() as u64;
        let mut out = self.writer.into_inner()?;
        out.flush()?;
        self.report.bytes = out.bytes;
        Ok(self.report)
    }
}

/// A column of timestamps in `TIME_ZONE`.
fn finish_ts(b: &mut TimestampNanosecondBuilder) -> ArrayRef {
    Arc::new(b.finish().with_timezone(TIME_ZONE))
}

fn finish<B: arrow_array::builder::ArrayBuilder>(b: &mut B) -> ArrayRef {
    b.finish()
}

/// Columns of [`Stream::Steps`].
#[derive(Default)]
struct StepColumns {
    seq: UInt64Builder,
    run_id: StringBuilder,
    episode_index: UInt64Builder,
    step_index: UInt64Builder,
    action_json: StringBuilder,
    observation_json: StringBuilder,
    reward: Float64Builder,
    terminated: BooleanBuilder,
    truncated: BooleanBuilder,
    timestamp: TimestampNanosecondBuilder,
    policy_label: StringBuilder,
    backend: StringBuilder,
    agent_id: StringBuilder,
    render_hint_json: StringBuilder,
    frame_ref: StringBuilder,
    payload_version: UInt32Builder,
    control_mode: StringDictionaryBuilder<Int32Type>,
    producer_id: StringBuilder,
    producer_seq: UInt64Builder,
    info_json: StringBuilder,
    rows: usize,
    bytes: usize,
}

impl StepColumns {
    fn push(&mut self, s: &RunStep) -> Result<(), ExportError> {
        self.control_mode.append(&s.control_mode)?;
        self.seq.append_value(s.seq_id);
        self.run_id.append_value(&s.run_id);
        self.episode_index.append_value(s.episode_index);
        self.step_index.append_value(s.step_index);
        self.action_json.append_value(&s.action_json);
        self.observation_json.append_value(&s.observation_json);
        self.reward.append_value(s.reward);
        self.terminated.append_value(s.terminated);
        self.truncated.append_value(s.truncated);
        self.timestamp
            .append_option(s.timestamp.as_ref().map(to_unix_nanos));
        self.policy_label.append_value(&s.policy_label);
        self.backend.append_value(&s.backend);
        self.agent_id.append_value(&s.agent_id);
        self.render_hint_json.append_value(&s.render_hint_json);
        self.frame_ref.append_value(&s.frame_ref);
        self.payload_version.append_value(s.payload_version);
        self.producer_id.append_value(&s.producer_id);
        self.producer_seq.append_value(s.producer_seq);
        self.info_json.append_value(&s.info_json);
        self.rows += 1;
        self.bytes += 64
            + s.run_id.len()
            + s.action_json.len()
            + s.observation_json.len()
            + s.policy_label.len()
            + s.backend.len()
            + s.agent_id.len()
            + s.render_hint_json.len()
            + s.frame_ref.len()
            + s.producer_id.len()
            + s.info_json.len();
        Ok(())
    }
}

impl Columns for StepColumns {
    fn rows(&self) -> usize {
        self.rows
    }

    fn text_bytes(&self) -> usize {
        self.bytes
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        self.rows = 0;
        self.bytes = 0;
        vec![
            finish(&mut self.seq),
            finish(&mut self.run_id),
            finish(&mut self.episode_index),
            finish(&mut self.step_index),
            finish(&mut self.action_json),
            finish(&mut self.observation_json),
            finish(&mut self.reward),
            finish(&mut self.terminated),
            finish(&mut self.truncated),
            finish_ts(&mut self.timestamp),
            finish(&mut self.policy_label),
            finish(&mut self.backend),
            finish(&mut self.agent_id),
            finish(&mut self.render_hint_json),
            finish(&mut self.frame_ref),
            finish(&mut self.payload_version),
            finish(&mut self.control_mode),
            finish(&mut self.producer_id),
            finish(&mut self.producer_seq),
            finish(&mut self.info_json),
        ]
    }
}

/// Columns of [`Stream::Episodes`].
#[derive(Default)]
struct EpisodeColumns {
    seq: UInt64Builder,
    run_id: StringBuilder,
    episode_index: UInt64Builder,
    total_reward: Float64Builder,
    steps: UInt64Builder,
    terminated: BooleanBuilder,
    truncated: BooleanBuilder,
    metadata_json: StringBuilder,
    timestamp: TimestampNanosecondBuilder,
    agent_id: StringBuilder,
    control_mode: StringDictionaryBuilder<Int32Type>,
    producer_id: StringBuilder,
    producer_seq: UInt64Builder,
    rows: usize,
    bytes: usize,
}

impl EpisodeColumns {
    fn push(&mut self, e: &RunEpisode) -> Result<(), ExportError> {
        self.control_mode.append(&e.control_mode)?;
        self.seq.append_value(e.seq_id);
        self.run_id.append_value(&e.run_id);
        self.episode_index.append_value(e.episode_index);
        self.total_reward.append_value(e.total_reward);
        self.steps.append_value(e.steps);
        self.terminated.append_value(e.terminated);
        self.truncated.append_value(e.truncated);
        self.metadata_json.append_value(&e.metadata_json);
        self.timestamp
            .append_option(e.timestamp.as_ref().map(to_unix_nanos));
        self.agent_id.append_value(&e.agent_id);
        self.producer_id.append_value(&e.producer_id);
        self.producer_seq.append_value(e.producer_seq);
        self.rows += 1;
        self.bytes +=
            64 + e.run_id.len() + e.metadata_json.len() + e.agent_id.len() + e.producer_id.len();
        Ok(())
    }
}

impl Columns for EpisodeColumns {
    fn rows(&self) -> usize {
        self.rows
    }

    fn text_bytes(&self) -> usize {
        self.bytes
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        self.rows = 0;
        self.bytes = 0;
        vec![
            finish(&mut self.seq),
            finish(&mut self.run_id),
            finish(&mut self.episode_index),
            finish(&mut self.total_reward),
            finish(&mut self.steps),
            finish(&mut self.terminated),
            finish(&mut self.truncated),
            finish(&mut self.metadata_json),
            finish_ts(&mut self.timestamp),
            finish(&mut self.agent_id),
            finish(&mut self.control_mode),
            finish(&mut self.producer_id),
            finish(&mut self.producer_seq),
        ]
    }
}

/// Columns of [`Stream::Scalars`].
#[derive(Default)]
struct ScalarColumns {
    seq: UInt64Builder,
    run_id: StringBuilder,
    agent_id: StringBuilder,
    tag: StringBuilder,
    step: Int64Builder,
    value: Float64Builder,
    timestamp: TimestampNanosecondBuilder,
    producer_id: StringBuilder,
    producer_seq: UInt64Builder,
    rows: usize,
    bytes: usize,
}

impl ScalarColumns {
    fn push(&mut self, s: &Scalar) {
        self.seq.append_value(s.seq_id);
        self.run_id.append_value(&s.run_id);
        self.agent_id.append_value(&s.agent_id);
        self.tag.append_value(&s.tag);
        self.step.append_value(s.step);
        self.value.append_value(s.value);
        self.timestamp
            .append_option(s.timestamp.as_ref().map(to_unix_nanos));
        self.producer_id.append_value(&s.producer_id);
        self.producer_seq.append_value(s.producer_seq);
        self.rows += 1;
        self.bytes += 40 + s.run_id.len() + s.agent_id.len() + s.tag.len() + s.producer_id.len();
    }
}

impl Columns for ScalarColumns {
    fn rows(&self) -> usize {
        self.rows
    }

    fn text_bytes(&self) -> usize {
        self.bytes
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        self.rows = 0;
        self.bytes = 0;
        vec![
            finish(&mut self.seq),
            finish(&mut self.run_id),
            finish(&mut self.agent_id),
            finish(&mut self.tag),
            finish(&mut self.step),
            finish(&mut self.value),
            finish_ts(&mut self.timestamp),
            finish(&mut self.producer_id),
            finish(&mut self.producer_seq),
        ]
    }
}

/// Columns of [`Stream::Events`].
#[derive(Default)]
struct EventColumns {
    seq: UInt64Builder,
    kind: StringBuilder,
    run_id: StringBuilder,
    timestamp: TimestampNanosecondBuilder,
    producer_id: StringBuilder,
    producer_seq: UInt64Builder,
    document: StringBuilder,
    rows: usize,
    bytes: usize,
}

impl EventColumns {
    fn push(&mut self, record: &Record) {
        let (kind, ts) = match &record.kind {
            Some(Kind::RunStarted(r)) => ("run_started", r.timestamp.as_ref()),
            Some(Kind::RunCompleted(r)) => ("run_completed", r.timestamp.as_ref()),
            Some(Kind::Artifact(a)) => ("artifact", a.timestamp.as_ref()),
            // The events table holds only the three lifecycle kinds; anything else is
            // still exported, by its JSONL type name.
            Some(Kind::Step(s)) => ("step", s.timestamp.as_ref()),
            Some(Kind::Episode(e)) => ("episode", e.timestamp.as_ref()),
            Some(Kind::Scalar(s)) => ("scalar", s.timestamp.as_ref()),
            None => ("", None),
        };
        let (producer_id, producer_seq) = record.producer();
        let document = to_line(record);
        self.seq.append_value(record.seq_id());
        self.kind.append_value(kind);
        self.run_id.append_value(record.run_id());
        self.timestamp.append_option(ts.map(to_unix_nanos));
        self.producer_id.append_value(producer_id);
        self.producer_seq.append_value(producer_seq);
        self.rows += 1;
        self.bytes += 40 + record.run_id().len() + producer_id.len() + document.len();
        self.document.append_value(document);
    }
}

impl Columns for EventColumns {
    fn rows(&self) -> usize {
        self.rows
    }

    fn text_bytes(&self) -> usize {
        self.bytes
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        self.rows = 0;
        self.bytes = 0;
        vec![
            finish(&mut self.seq),
            finish(&mut self.kind),
            finish(&mut self.run_id),
            finish_ts(&mut self.timestamp),
            finish(&mut self.producer_id),
            finish(&mut self.producer_seq),
            finish(&mut self.document),
        ]
    }
}
