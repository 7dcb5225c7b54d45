//! Keyset pages copied out of SQLite into one reusable buffer, and the iterators over them.
//!
//! A page has to leave SQLite in one go (each page is its own short read transaction), but
//! turning a whole page into records at once allocates every string of the page up front and
//! frees them in a different order from the one they were made in, which costs about a
//! third of the read rate. Instead a page is copied as compact cells plus one text buffer
//! (reused from page to page, so steady-state iteration allocates only the records the caller
//! takes), and each record is built when the caller asks for it. The copy also enforces a byte
//! budget, so a page of huge rows is cut short instead of growing without bound.

use rusqlite::{types::ValueRef, Rows};
use telemetry_core::pb::{RunEpisode, RunStep};

use crate::{reader::Stream, rows, Filter, StoreError, StoreReader};

/// Bytes of row text an iterator page may hold before it is cut short (at least one row is
/// always taken).
pub(crate) const PAGE_BYTES: usize = 8 * 1024 * 1024;

/// One column value of a copied row.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Real(f64),
    /// A byte range of the page's text buffer.
    Text(u32, u32),
}

/// Rows copied out of one query.
#[derive(Debug, Default)]
pub(crate) struct RawPage {
    ncols: usize,
    cells: Vec<Cell>,
    text: String,
    rows: usize,
}

/// One row of a [`RawPage`].
pub(crate) struct RowView<'p> {
    page: &'p RawPage,
    base: usize,
}

fn bad(what: &'static str, seq: u64, detail: impl Into<String>) -> StoreError {
    StoreError::Decode {
        what,
        seq,
        detail: detail.into(),
    }
}

impl RawPage {
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn row(&self, i: usize) -> RowView<'_> {
        RowView {
            page: self,
            base: i * self.ncols,
        }
    }

    /// Replaces the content with the rows of `rows` (`ncols` columns, the first being the
    /// seq): stops after `max_bytes` of text. Returns whether the query ran out of rows.
    pub(crate) fn fill(
        &mut self,
        rows: &mut Rows<'_>,
        ncols: usize,
        limit: usize,
        max_bytes: usize,
        what: &'static str,
    ) -> Result<bool, StoreError> {
        self.ncols = ncols;
        self.cells.clear();
        self.text.clear();
        self.rows = 0;
        while let Some(row) = rows.next()? {
            if self.rows > 0 && self.text.len() >= max_bytes {
                return Ok(false);
            }
            let seq = match row.get_ref(0)? {
                ValueRef::Integer(i) => rows::u64_from_sql(i),
                _ => 0,
            };
            for i in 0..ncols {
                let cell = match row.get_ref(i)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(v) => Cell::Int(v),
                    ValueRef::Real(v) => Cell::Real(v),
                    ValueRef::Text(b) | ValueRef::Blob(b) => {
                        let s = std::str::from_utf8(b)
                            .map_err(|e| bad(what, seq, format!("column {i}: {e}")))?;
                        let start = self.text.len();
                        self.text.push_str(s);
                        let end = self.text.len();
                        let (start, end) = (u32::try_from(start), u32::try_from(end));
                        match (start, end) {
                            (Ok(s), Ok(e)) => Cell::Text(s, e),
                            _ => return Err(bad(what, seq, "page text over 4 GiB")),
                        }
                    }
                };
                self.cells.push(cell);
            }
            self.rows += 1;
        }
        Ok(self.rows < limit)
    }
}

impl RowView<'_> {
    fn cell(&self, i: usize) -> Cell {
        self.page
            .cells
            .get(self.base + i)
            .copied()
            .unwrap_or(Cell::Null)
    }

    /// The row's seq (column 0).
    pub(crate) fn seq(&self) -> u64 {
        match self.cell(0) {
            Cell::Int(v) => rows::u64_from_sql(v),
            _ => 0,
        }
    }

    pub(crate) fn int(&self, i: usize, what: &'static str) -> Result<i64, StoreError> {
        match self.cell(i) {
            Cell::Int(v) => Ok(v),
            other => Err(bad(
                what,
                self.seq(),
                format!("column {i} is {other:?}, not an integer"),
            )),
        }
    }

    pub(crate) fn opt_int(&self, i: usize, what: &'static str) -> Result<Option<i64>, StoreError> {
        match self.cell(i) {
            Cell::Null => Ok(None),
            _ => self.int(i, what).map(Some),
        }
    }

    /// A REAL column; NULL (how SQLite stores NaN) is NaN.
    pub(crate) fn real(&self, i: usize, what: &'static str) -> Result<f64, StoreError> {
        match self.cell(i) {
            Cell::Real(v) => Ok(v),
            Cell::Int(v) => Ok(v as f64),
            Cell::Null => Ok(f64::NAN),
            Cell::Text(..) => Err(bad(
                what,
                self.seq(),
                format!("column {i} is text, not a number"),
            )),
        }
    }

    /// A TEXT column (NULL reads as "").
    pub(crate) fn text(&self, i: usize) -> String {
        match self.cell(i) {
            Cell::Text(s, e) => self
                .page
                .text
                .get(s as usize..e as usize)
                .unwrap_or_default()
                .to_owned(),
            _ => String::new(),
        }
    }
}

/// State shared by the two iterators.
#[derive(Debug)]
struct Cursor<'a> {
    reader: &'a StoreReader,
    filter: Filter,
    since: u64,
    page: RawPage,
    next_row: usize,
    done: bool,
}

impl<'a> Cursor<'a> {
    fn new(reader: &'a StoreReader, since: u64, filter: &Filter) -> Self {
        Cursor {
            reader,
            filter: filter.clone(),
            since,
            page: RawPage::default(),
            next_row: 0,
            done: false,
        }
    }

    /// The next row as a record built by `build`, fetching a page when needed.
    fn next_with<T>(
        &mut self,
        stream: Stream,
        build: fn(&RowView<'_>) -> Result<T, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        if self.next_row >= self.page.rows() {
            if self.done {
                return None;
            }
            let page_size = self.reader.page_size();
            let fetched = self.reader.fetch_raw(
                stream,
                self.since,
                &self.filter,
                page_size,
                PAGE_BYTES,
                &mut self.page,
            );
            self.next_row = 0;
            match fetched {
                Err(e) => {
                    self.done = true;
                    self.page = RawPage::default();
                    return Some(Err(e));
                }
                Ok(exhausted) => {
                    self.done = exhausted;
                    if self.page.rows() == 0 {
                        self.done = true;
                        return None;
                    }
                    self.since = self.page.row(self.page.rows() - 1).seq();
                }
            }
        }
        let item = build(&self.page.row(self.next_row));
        self.next_row += 1;
        if item.is_err() {
            self.done = true;
            self.next_row = self.page.rows();
        }
        Some(item)
    }
}

/// Steps in seq order, fetched page by page (see [`StoreReader::stream_steps_since`]).
#[derive(Debug)]
pub struct StepIter<'a>(Cursor<'a>);

impl<'a> StepIter<'a> {
    pub(crate) fn new(reader: &'a StoreReader, since: u64, filter: &Filter) -> Self {
        StepIter(Cursor::new(reader, since, filter))
    }
}

impl Iterator for StepIter<'_> {
    type Item = Result<RunStep, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_with(Stream::Steps, rows::step_from)
    }
}

/// Episodes in seq order, fetched page by page (see
/// [`StoreReader::stream_episodes_since`]).
#[derive(Debug)]
pub struct EpisodeIter<'a>(Cursor<'a>);

impl<'a> EpisodeIter<'a> {
    pub(crate) fn new(reader: &'a StoreReader, since: u64, filter: &Filter) -> Self {
        EpisodeIter(Cursor::new(reader, since, filter))
    }
}

impl Iterator for EpisodeIter<'_> {
    type Item = Result<RunEpisode, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_with(Stream::Episodes, rows::episode_from)
    }
}

impl std::iter::FusedIterator for StepIter<'_> {}
impl std::iter::FusedIterator for EpisodeIter<'_> {}
