//! Keyset pages copied out of SQLite into one reusable buffer (the iterators over them are in
//! `iter`).
//!
//! A page has to leave SQLite in one go (each page is its own short read transaction), but
//! turning a whole page into records at once allocates every string of the page up front and
//! frees them in a different order from the one they were made in, which costs about a
//! third of the read rate. Instead a page is copied as compact cells plus one text buffer
//! (reused from page to page, so steady-state iteration allocates only the records the caller
//! takes), and each record is built when the caller asks for it. The copy also enforces a byte
//! budget, so a page of huge rows is cut short instead of growing without bound.

use rusqlite::{types::ValueRef, Rows};

use crate::{schema::u64_from_sql, StoreError};

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
                ValueRef::Integer(i) => u64_from_sql(i),
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
            Cell::Int(v) => u64_from_sql(v),
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
