//! Importing the predecessor's `var/telemetry/telemetry.sqlite` into the store.
//!
//! Years of runs live in the old file, and users will not give them up to switch tools. Its
//! schema is loose (JSON in BLOBs, run and episode packed into `episode_id =
//! "{run_id}-ep{index:04d}"`, columns added over time, no control mode), so each row is read
//! defensively, mapped onto our records (rules below), checked with the same validation as live
//! ingest, and appended through [`Store::append`].
//!
//! ## Field rules
//!
//! - **Run and episode**: `episode_id` is `"{run_id}-ep{index}"`; when it does not follow that
//!   pattern the episode metadata's `run_id` / `episode_index` are used, and failing those the
//!   whole `episode_id` becomes the run id (repaired). No `episode_id` at all: skipped.
//! - **JSON blobs** (`observation`, `info`, `render_hint`, `metadata`, and `action`): JSON text
//!   is kept as it is; UTF-8 text that is not JSON is kept as a JSON string (repaired); binary
//!   bytes are dropped (repaired). A numeric `action` becomes its JSON number.
//! - **`info`**: `policy_label`, `backend` (and `agent_id` / `control_mode` when the row has
//!   none) move to their fields; the other keys stay in `info_json`.
//! - **Control mode**: from the episode metadata (top level, then its `config`), else the
//!   step's `info`; normalised with [`ControlMode`](crate::ControlMode); `unknown` when absent; an unrecognised
//!   spelling becomes `unknown` (repaired).
//! - **Timestamps**: RFC 3339, Python's `isoformat()` with or without an offset (naive means
//!   UTC) or with a space, or a Unix number in s / ms / µs / ns by magnitude; anything else is
//!   dropped (repaired).
//! - **`render_payload`** (inline frames) is not imported and is counted.
//! - Any field over [`MAX_FIELD_BYTES`] skips the row without being read into memory.
//!
//! **Idempotent.** Each legacy table is one producer, `legacy-import:<source>:steps` /
//! `:episodes`, and a row's `producer_seq` is its rowid. The store's watermark therefore
//! remembers how far an import got: running it again imports nothing, and running it after the
//! old file grew imports only the new rows. `<source>` is a hash of the file's canonical path
//! unless [`ImportOptions::source_id`] names it (use that when the file has moved).
//!
//! **Odd rows never stop an import.** A row that can be repaired (a NULL, a non-JSON blob, an
//! `episode_id` that does not follow the pattern, an unknown control mode, an inline frame) is
//! imported with the substitution and counted in [`ImportReport::rows_repaired`]; one that
//! cannot (no run id at all, a field over 1 MiB, invalid after repair) is counted in
//! [`ImportReport::rows_skipped`] and its rowid still advances the watermark. The first
//! [`ImportOptions::max_issues`] problems are listed with their table and rowid.
//!
//! The legacy file is opened read-only and never modified.

mod convert;
mod values;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use telemetry_core::pb::Record;

use crate::{
    error::{classify, io_error},
    Store, StoreError,
};

pub use convert::MAX_FIELD_BYTES;

/// How to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// Rows per append (one transaction each).
    pub batch_size: usize,
    /// Names the source in the producer ids instead of the hash of the file's canonical path.
    pub source_id: Option<String>,
    /// How many problems [`ImportReport::issues`] lists (the rest are only counted).
    pub max_issues: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            batch_size: 1024,
            source_id: None,
            max_issues: 100,
        }
    }
}

/// One problem found in a legacy row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportIssue {
    /// `steps` or `episodes`.
    pub table: &'static str,
    /// The row's rowid in the legacy file.
    pub rowid: i64,
    /// What was wrong and what the import did about it.
    pub problem: String,
}

/// Counts for one legacy table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableCounts {
    /// Rows read in this run.
    pub read: u64,
    /// Rows stored in this run.
    pub stored: u64,
    /// Rows the store already had (from an earlier import; not read again).
    pub already_imported: u64,
    /// Rows read but reported as duplicates by the store.
    pub duplicates: u64,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportReport {
    /// The legacy file.
    pub source: PathBuf,
    /// Producer id of the imported steps.
    pub steps_producer_id: String,
    /// Producer id of the imported episodes.
    pub episodes_producer_id: String,
    /// The `steps` table.
    pub steps: TableCounts,
    /// The `episodes` table.
    pub episodes: TableCounts,
    /// Rows imported with a substitution (see the module docs).
    pub rows_repaired: u64,
    /// Rows that could not be imported.
    pub rows_skipped: u64,
    /// Inline frames (`render_payload`) left behind: frames travel by reference now.
    pub render_payloads_dropped: u64,
    /// Tables or columns of the full legacy schema that the file lacks (`steps.agent_id`...).
    pub missing_columns: Vec<String>,
    /// The first problems, with their rows.
    pub issues: Vec<ImportIssue>,
    /// Problems beyond [`ImportOptions::max_issues`], only counted.
    pub issues_not_listed: u64,
}

/// Imports `legacy_sqlite` with the default options.
pub fn import_legacy(store: &mut Store, legacy_sqlite: &Path) -> Result<ImportReport, StoreError> {
    import_legacy_with(store, legacy_sqlite, &ImportOptions::default())
}

/// Imports `legacy_sqlite` into `store` (see the module docs).
pub fn import_legacy_with(
    store: &mut Store,
    legacy_sqlite: &Path,
    opts: &ImportOptions,
) -> Result<ImportReport, StoreError> {
    let path = legacy_sqlite;
    let canonical = std::fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => StoreError::NotFound {
            path: path.to_owned(),
        },
        _ => io_error(path, e),
    })?;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&canonical, flags).map_err(|e| classify(path, e))?;
    let layout = convert::Layout::read(&conn).map_err(|e| classify(path, e))?;
    if layout.steps.is_none() && layout.episodes.is_none() {
        return Err(StoreError::LegacyFormat {
            path: path.to_owned(),
            detail: "it has neither a steps nor an episodes table".into(),
        });
    }
    let source = opts
        .source_id
        .clone()
        .unwrap_or_else(|| format!("{:016x}", fnv1a64(canonical.as_os_str().as_encoded_bytes())));
    let mut report = ImportReport {
        source: path.to_owned(),
        steps_producer_id: format!("legacy-import:{source}:steps"),
        episodes_producer_id: format!("legacy-import:{source}:episodes"),
        missing_columns: layout.missing.clone(),
        ..ImportReport::default()
    };
    let mut ctx = convert::Context::new(&conn, &layout, opts.max_issues);
    for table in [convert::Table::Episodes, convert::Table::Steps] {
        if layout.has(table) {
            import_table(store, &conn, &mut ctx, table, opts, &mut report).map_err(
                |e| match e {
                    StoreError::Sqlite(e) => classify(path, e),
                    other => other,
                },
            )?;
        }
    }
    let issues = std::mem::take(&mut ctx.report);
    report.rows_repaired = issues.rows_repaired;
    report.rows_skipped = issues.rows_skipped;
    report.render_payloads_dropped = issues.render_payloads_dropped;
    report.issues = issues.issues;
    report.issues_not_listed = issues.issues_not_listed;
    tracing::info!(
        source = %path.display(),
        steps_stored = report.steps.stored,
        episodes_stored = report.episodes.stored,
        repaired = report.rows_repaired,
        skipped = report.rows_skipped,
        "legacy telemetry imported"
    );
    Ok(report)
}

fn import_table(
    store: &mut Store,
    conn: &Connection,
    ctx: &mut convert::Context<'_>,
    table: convert::Table,
    opts: &ImportOptions,
    report: &mut ImportReport,
) -> Result<(), StoreError> {
    let producer_id = match table {
        convert::Table::Steps => report.steps_producer_id.clone(),
        convert::Table::Episodes => report.episodes_producer_id.clone(),
    };
    let watermark = i64::try_from(store.watermark(&producer_id)?).unwrap_or(i64::MAX);
    let mut counts = TableCounts {
        already_imported: conn.query_row(
            &format!(
                "SELECT count(*) FROM {} WHERE rowid BETWEEN 1 AND ?1",
                table.name()
            ),
            [watermark],
            |r| r.get::<_, i64>(0),
        )? as u64,
        ..TableCounts::default()
    };
    let unusable: i64 = conn.query_row(
        &format!("SELECT count(*) FROM {} WHERE rowid < 1", table.name()),
        [],
        |r| r.get(0),
    )?;
    if unusable > 0 && watermark == 0 {
        ctx.report.rows_skipped += unusable as u64;
        ctx.note(
            table,
            0,
            format!("{unusable} rows with a rowid below 1 cannot be tracked and were skipped"),
        );
    }
    let batch_size = opts.batch_size.clamp(1, 65536);
    let sql = ctx.layout.select_sql(table);
    let mut cursor = watermark.max(0);
    loop {
        let mut records: Vec<Record> = Vec::with_capacity(batch_size);
        let mut rejected: Vec<(String, u64)> = Vec::new();
        let mut read = 0usize;
        {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(rusqlite::params![cursor, batch_size as i64])?;
            while let Some(row) = rows.next()? {
                read += 1;
                let rowid: i64 = row.get(0)?;
                cursor = rowid;
                let converted = match table {
                    convert::Table::Steps => ctx.step(row, rowid)?,
                    convert::Table::Episodes => ctx.episode(row, rowid)?,
                };
                match converted {
                    Some(mut record) => {
                        record.set_producer(&producer_id, rowid as u64);
                        records.push(record);
                    }
                    None => rejected.push((producer_id.clone(), rowid as u64)),
                }
            }
        }
        if read == 0 {
            break;
        }
        counts.read += read as u64;
        let appended = store.append(&mut records, &rejected)?;
        counts.stored += appended.stored as u64;
        counts.duplicates += appended.duplicates as u64;
        if read < batch_size {
            break;
        }
    }
    match table {
        convert::Table::Steps => report.steps = counts,
        convert::Table::Episodes => report.episodes = counts,
    }
    Ok(())
}

/// FNV-1a, 64 bits: a stable (across builds and platforms) name for a source path.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
