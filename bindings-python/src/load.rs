//! `gym_telemetry.load(..., store=PATH)`'s reading half: a store file opened read-only, one
//! stream of one run selected, and written as Parquet bytes by `telemetry-export`.
//!
//! Notebook users want DataFrames, and the store's schema must have one home. So the rows are
//! read by `telemetry_store::StoreReader` (keyset pages, one short read transaction each, so a
//! running daemon's checkpoints are not held back) and laid out in typed columns by
//! `telemetry_export`, the code behind `dump --format parquet`; Python only hands the bytes to
//! `polars.read_parquet` or `pandas.read_parquet`. The GIL is released while the store is read.

use pyo3::{exceptions::PyValueError, prelude::*, types::PyBytes};
use telemetry_core::ModeFilter;
use telemetry_export::{export_parquet_tags, ExportError, ParquetOptions};
use telemetry_store::{dump::DumpOptions, Filter, StoreReader};

use crate::{args, telemetry::TelemetryError};

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
    let bytes = py
        .detach(|| -> Result<Vec<u8>, String> {
            let reader =
                StoreReader::open(&store).map_err(|e| format!("{}: {e}", store.display()))?;
            let mut out = Vec::new();
            export_parquet_tags(&reader, &opts, &ParquetOptions::default(), &tags, &mut out)
                .map_err(|e: ExportError| format!("reading {}: {e}", store.display()))?;
            Ok(out)
        })
        .map_err(TelemetryError::new_err)?;
    Ok(PyBytes::new(py, &bytes))
}
