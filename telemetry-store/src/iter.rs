//! The page-by-page iterators of [`StoreReader::stream_steps_since`] and
//! [`StoreReader::stream_episodes_since`].
//!
//! They sit above the reader (they hold one and ask it for pages) and above the row decoding,
//! so they live in their own module: `reader` never imports them, and `pages` (the copied
//! rows) knows nothing of readers.

use telemetry_core::pb::{RunEpisode, RunStep};

use crate::{
    pages::{RawPage, RowView},
    reader::Stream,
    rows, Filter, StoreError, StoreReader,
};

/// Bytes of row text an iterator page may hold before it is cut short (at least one row is
/// always taken).
pub(crate) const PAGE_BYTES: usize = 8 * 1024 * 1024;

impl StoreReader {
    /// Every stored step with `seq > since_seq` matching `filter`, page by page (flat
    /// memory). The iteration ends at the last step stored when its final page was read;
    /// resume from the last item's `seq_id`.
    pub fn stream_steps_since(&self, since_seq: u64, filter: &Filter) -> StepIter<'_> {
        StepIter::new(self, since_seq, filter)
    }

    /// Every stored episode with `seq > since_seq` matching `filter`, page by page.
    pub fn stream_episodes_since(&self, since_seq: u64, filter: &Filter) -> EpisodeIter<'_> {
        EpisodeIter::new(self, since_seq, filter)
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
