//! `gym_telemetry.load`'s reading half: one stream of one run, from a store file opened
//! read-only (`store=PATH`) or through the daemon's Query API, written as Parquet bytes by
//! `telemetry-export`.
//!
//! Notebook users want DataFrames, and the store's schema must have one home. So the rows are
//! read by `telemetry_store::StoreReader` (keyset pages, one short read transaction each, so a
//! running daemon's checkpoints are not held back) and laid out in typed columns by
//! `telemetry_export`, the code behind `dump --format parquet`; Python only hands the bytes to
//! `polars.read_parquet` or `pandas.read_parquet`. The GIL is released while the store is read.
//!
//! Without a store file, the same columns come from the daemon's `Query` streams (stored
//! records only, `follow = false`, which the daemon pages from its store by seq, so a large run
//! is never loaded whole into it), with the worker's own endpoint, TLS and credential
//! (`telemetry_shim::query`), pushed into `telemetry_export::RecordWriter`.

use pyo3::{exceptions::PyValueError, prelude::*, types::PyBytes};
use telemetry_core::{
    pb::{
        query_client::QueryClient, stream_notice, ScalarStreamRequest, StreamNotice, StreamRequest,
    },
    ModeFilter,
};
use telemetry_export::{export_parquet_tags, ExportError, ParquetOptions, RecordWriter, Stream};
use telemetry_shim::{
    query::{query_link, QueryLink},
    ShimConfig,
};
use telemetry_store::{dump::DumpOptions, Filter, StoreReader};

use tonic::metadata::{Ascii, MetadataValue};

use crate::{args, config::config_error, telemetry::TelemetryError};

/// Most exact tags one read may name (the daemon's `ReadScalars` limit).
const MAX_TAGS: usize = 256;

/// Reads one stream of a run from a store file as a Parquet file's bytes (`telemetry-export`'s
/// schemas). `kind`: "steps", "episodes", "scalars" or "events". Raises ValueError for bad
/// arguments and TelemetryError when the store cannot be read.
#[pyfunction]
#[pyo3(signature = (store, run_id, kind="steps", *, agent_id=None, control_mode=None,
    tags=None, since_seq=0))]
#[allow(clippy::too_many_arguments)]
pub fn _read_parquet<'py>(
    py: Python<'py>,
    store: std::path::PathBuf,
    run_id: &str,
    kind: &str,
    agent_id: Option<&Bound<'py, PyAny>>,
    control_mode: Option<&Bound<'py, PyAny>>,
    tags: Option<Vec<String>>,
    since_seq: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let sel = Selection::new(run_id, kind, agent_id, control_mode, tags, since_seq)?;
    let bytes = py
        .detach(|| -> Result<Vec<u8>, String> {
            let reader =
                StoreReader::open(&store).map_err(|e| format!("{}: {e}", store.display()))?;
            let mut out = Vec::new();
            export_parquet_tags(
                &reader,
                &sel.opts,
                &ParquetOptions::default(),
                &sel.tags,
                &mut out,
            )
            .map_err(|e: ExportError| format!("reading {}: {e}", store.display()))?;
            Ok(out)
        })
        .map_err(TelemetryError::new_err)?;
    Ok(PyBytes::new(py, &bytes))
}

/// The selection of one load, checked.
struct Selection {
    stream: Stream,
    opts: DumpOptions,
    tags: Vec<String>,
}

impl Selection {
    #[allow(clippy::too_many_arguments)]
    fn new(
        run_id: &str,
        kind: &str,
        agent_id: Option<&Bound<'_, PyAny>>,
        control_mode: Option<&Bound<'_, PyAny>>,
        tags: Option<Vec<String>>,
        since_seq: u64,
    ) -> PyResult<Self> {
        let mut opts = DumpOptions {
            since_seq,
            filter: Filter {
                run_id: Some(args::id(run_id.to_owned(), "run_id")?),
                agent_id: args::opt_id(agent_id, "agent_id")?,
                control_mode: args::opt_control_mode(control_mode, "control_mode")?
                    .map_or(ModeFilter::Any, ModeFilter::Exact),
            },
            ..DumpOptions::default()
        };
        match kind {
            "steps" => {}
            "episodes" => opts.episodes = true,
            "scalars" => opts.scalars = true,
            "events" => opts.events = true,
            other => {
                return Err(PyValueError::new_err(format!(
                    "kind: {other:?} is not one of \"steps\", \"episodes\", \"scalars\", \"events\""
                )))
            }
        }
        let tags = tags.unwrap_or_default();
        if tags.len() > MAX_TAGS {
            return Err(PyValueError::new_err(format!(
                "tags: {} tags, at most {MAX_TAGS} per read",
                tags.len()
            )));
        }
        Ok(Selection {
            stream: Stream::of(&opts),
            opts,
            tags,
        })
    }
}

/// Largest message accepted from the daemon (it sends at most 3 MiB; untrusted bytes are
/// bounded).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Reads one stream of a run through the daemon's Query API (stored records only, paged by the
/// daemon from its store) as a Parquet file's bytes, with the worker's endpoint, TLS and
/// credential (`GYM_TELEMETRY_*`, `endpoint` overriding the endpoint). Lifecycle events are not
/// served by the Query API: ValueError. Raises TelemetryError when the daemon cannot be read.
#[pyfunction]
#[pyo3(signature = (run_id, kind="steps", *, endpoint=None, agent_id=None, control_mode=None,
    tags=None, since_seq=0))]
#[allow(clippy::too_many_arguments)]
pub fn _read_parquet_remote<'py>(
    py: Python<'py>,
    run_id: &str,
    kind: &str,
    endpoint: Option<String>,
    agent_id: Option<&Bound<'py, PyAny>>,
    control_mode: Option<&Bound<'py, PyAny>>,
    tags: Option<Vec<String>>,
    since_seq: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let sel = Selection::new(run_id, kind, agent_id, control_mode, tags, since_seq)?;
    if sel.stream == Stream::Events {
        return Err(PyValueError::new_err(
            "kind=\"events\": the daemon's Query API serves no lifecycle events; pass store=PATH",
        ));
    }
    let mut cfg = ShimConfig::from_env().map_err(config_error)?;
    if let Some(e) = endpoint {
        cfg.endpoint = e;
    }
    let link = query_link(&cfg).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let bytes = py
        .detach(|| read_remote(link, &sel))
        .map_err(TelemetryError::new_err)?;
    Ok(PyBytes::new(py, &bytes))
}

fn read_remote(link: QueryLink, sel: &Selection) -> Result<Vec<u8>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    let endpoint = link.endpoint.uri().to_string();
    rt.block_on(async {
        let channel = link
            .endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
        let mut client = QueryClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let auth = &link.authorization;
        let status = |e: tonic::Status| format!("reading from {endpoint}: {}", e.message());
        let f = &sel.opts.filter;
        let stream_request = StreamRequest {
            run_id: f.run_id.clone().unwrap_or_default(),
            since_seq: sel.opts.since_seq,
            follow: false,
            agent_id: f.agent_id.clone().unwrap_or_default(),
            control_mode: match f.control_mode {
                ModeFilter::Exact(m) => m.as_str().to_owned(),
                _ => String::new(),
            },
            ..StreamRequest::default()
        };
        let mut out = Vec::new();
        let mut w = RecordWriter::new(sel.stream, &ParquetOptions::default(), &mut out)
            .map_err(|e| e.to_string())?;
        let export = |e: ExportError| e.to_string();
        match sel.stream {
            Stream::Steps => {
                let mut s = client
                    .stream_run_steps(authorized(stream_request, auth))
                    .await
                    .map_err(status)?
                    .into_inner();
                while let Some(m) = s.message().await.map_err(status)? {
                    for step in &m.steps {
                        w.push_step(step).map_err(export)?;
                    }
                    check_notice(m.notice)?;
                }
            }
            Stream::Episodes => {
                let mut s = client
                    .stream_run_episodes(authorized(stream_request, auth))
                    .await
                    .map_err(status)?
                    .into_inner();
                while let Some(m) = s.message().await.map_err(status)? {
                    for ep in &m.episodes {
                        w.push_episode(ep).map_err(export)?;
                    }
                    check_notice(m.notice)?;
                }
            }
            Stream::Scalars => {
                let req = ScalarStreamRequest {
                    run_id: stream_request.run_id,
                    since_seq: stream_request.since_seq,
                    follow: false,
                    agent_id: stream_request.agent_id,
                    tags: sel.tags.clone(),
                    ..ScalarStreamRequest::default()
                };
                let mut s = client
                    .stream_run_scalars(authorized(req, auth))
                    .await
                    .map_err(status)?
                    .into_inner();
                while let Some(m) = s.message().await.map_err(status)? {
                    for sc in &m.scalars {
                        w.push_scalar(sc).map_err(export)?;
                    }
                    check_notice(m.notice)?;
                }
            }
            Stream::Events => return Err("the Query API serves no lifecycle events".to_owned()),
        }
        w.finish().map_err(export)?;
        Ok(out)
    })
}

/// `msg` as a request carrying the credential.
fn authorized<T>(msg: T, auth: &Option<MetadataValue<Ascii>>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(a) = auth {
        r.metadata_mut().insert("authorization", a.clone());
    }
    r
}

/// A stored-records read must see every record: a lag or gap notice fails the load.
fn check_notice(notice: Option<StreamNotice>) -> Result<(), String> {
    match notice.and_then(|n| n.kind) {
        Some(stream_notice::Kind::Lagged(l)) => Err(format!(
            "the daemon dropped {} records of this read (lagged); load again",
            l.dropped
        )),
        Some(stream_notice::Kind::Gap(g)) => Err(format!(
            "the daemon reported a gap after seq {} (next {}); load again",
            g.after_seq, g.next_seq
        )),
        _ => Ok(()),
    }
}
