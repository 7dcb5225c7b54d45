//! A bounded, never-stopping iterator of records over a worker's stdout.
//!
//! `BufRead::lines` would buffer a runaway 2 GiB line whole and stop at the first invalid
//! UTF-8. [`JsonlReader`] copies at most `max_line_bytes` (+1 for a `\r`) of a line, skips the
//! rest of an over-long line as it streams past, and reports every bad line as a typed error
//! with its line number before moving on to the next one.

use super::{context::RunContext, parse, JsonlError, DEFAULT_MAX_LINE_BYTES};
use crate::pb::Record;
use std::io::{self, BufRead};

/// One record read from a stream, with the line it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine {
    /// 1-based line number in the stream.
    pub line_no: u64,
    /// The record.
    pub record: Record,
}

/// What a reader has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Lines read, blank ones included.
    pub lines: u64,
    /// Records produced.
    pub records: u64,
    /// Blank lines skipped.
    pub blank: u64,
    /// Lines that were not JSON objects ([`JsonlError::NotJson`], passed through by a proxy).
    pub not_json: u64,
    /// Lines rejected with any other error (the `rejected_lines` counter).
    pub rejected: u64,
}

/// Reads records from JSONL, one per line, with at most `max_line_bytes` buffered per line.
///
/// Blank lines are skipped; a final line without `\n` is still read; a bad line yields an error
/// and reading goes on with the next line. Only an I/O error ends the iteration (after being
/// yielded). Legacy lines pass through a [`RunContext`] unless [`Self::without_context`] was
/// called; canonical lines (see [`to_line`](super::to_line)) are returned as written.
#[derive(Debug)]
pub struct JsonlReader<R: BufRead> {
    reader: R,
    max_line_bytes: usize,
    buf: Vec<u8>,
    line_no: u64,
    done: bool,
    context: Option<RunContext>,
    stats: ReaderStats,
}

/// The outcome of reading one line into the buffer.
enum LineRead {
    Eof,
    Line,
    TooLong { len: u64 },
}

impl<R: BufRead> JsonlReader<R> {
    /// A reader with [`DEFAULT_MAX_LINE_BYTES`] and a default [`RunContext`].
    pub fn new(reader: R) -> Self {
        Self::with_max_line_bytes(reader, DEFAULT_MAX_LINE_BYTES)
    }

    /// A reader that rejects lines longer than `max_line_bytes` (line ending excluded).
    pub fn with_max_line_bytes(reader: R, max_line_bytes: usize) -> Self {
        JsonlReader {
            reader,
            max_line_bytes,
            buf: Vec::new(),
            line_no: 0,
            done: false,
            context: Some(RunContext::new()),
            stats: ReaderStats::default(),
        }
    }

    /// Uses `context` (for example one with another run limit) instead of the default one.
    pub fn with_context(mut self, context: RunContext) -> Self {
        self.context = Some(context);
        self
    }

    /// Returns records exactly as each line says, without filling from earlier `run_started`s.
    pub fn without_context(mut self) -> Self {
        self.context = None;
        self
    }

    /// The run context in use, if any.
    pub fn context(&self) -> Option<&RunContext> {
        self.context.as_ref()
    }

    /// Counts of what was read so far.
    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// The underlying reader.
    pub fn into_inner(self) -> R {
        self.reader
    }

    /// Reads the next line into `self.buf`, copying at most `max_line_bytes + 1` bytes of it.
    fn read_line(&mut self) -> io::Result<LineRead> {
        self.buf.clear();
        let limit = self.max_line_bytes.saturating_add(1);
        let (mut len, mut last, mut any, mut over) = (0_u64, 0_u8, false, false);
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                if !any {
                    return Ok(LineRead::Eof);
                }
                break;
            }
            any = true;
            let (part, used, found) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], i + 1, true),
                None => (chunk, chunk.len(), false),
            };
            len += part.len() as u64;
            if let Some(&b) = part.last() {
                last = b;
            }
            if !over {
                if self.buf.len() + part.len() > limit {
                    over = true;
                    self.buf.clear();
                } else {
                    push_bounded(&mut self.buf, part, limit);
                }
            }
            self.reader.consume(used);
            if found {
                break;
            }
        }
        self.line_no += 1;
        let content = if last == b'\r' { len - 1 } else { len };
        if over || content > self.max_line_bytes as u64 {
            self.buf.clear();
            return Ok(LineRead::TooLong { len: content });
        }
        Ok(LineRead::Line)
    }

    fn reject(&mut self, err: JsonlError) -> Option<Result<ParsedLine, JsonlError>> {
        match err {
            JsonlError::NotJson { .. } => self.stats.not_json += 1,
            _ => self.stats.rejected += 1,
        }
        Some(Err(err))
    }
}

/// Appends `data` without letting the capacity grow past `limit` (the caller ensures the data
/// fits), so one line never costs more than `limit` bytes of buffer.
fn push_bounded(buf: &mut Vec<u8>, data: &[u8], limit: usize) {
    let needed = buf.len() + data.len();
    if needed > buf.capacity() {
        let target = needed.max(buf.capacity().saturating_mul(2)).min(limit);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(data);
}

impl<R: BufRead> Iterator for JsonlReader<R> {
    type Item = Result<ParsedLine, JsonlError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let read = match self.read_line() {
                Ok(read) => read,
                Err(source) => {
                    self.done = true;
                    self.stats.rejected += 1;
                    return Some(Err(JsonlError::Io { source }));
                }
            };
            let line_no = self.line_no;
            match read {
                LineRead::Eof => self.done = true,
                LineRead::TooLong { len } => {
                    self.stats.lines += 1;
                    return self.reject(JsonlError::TooLong {
                        line: line_no,
                        len,
                        max: self.max_line_bytes,
                    });
                }
                LineRead::Line => {
                    self.stats.lines += 1;
                    if self.buf.iter().all(u8::is_ascii_whitespace) {
                        self.stats.blank += 1;
                        continue;
                    }
                    match parse::parse(&self.buf, line_no) {
                        Ok(mut parsed) => {
                            if let (false, Some(ctx)) = (parsed.canonical, self.context.as_mut()) {
                                ctx.apply(&mut parsed.record);
                            }
                            self.stats.records += 1;
                            return Some(Ok(ParsedLine {
                                line_no,
                                record: parsed.record,
                            }));
                        }
                        Err(e) => return self.reject(e),
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_buffer_capacity_stays_within_the_limit() {
        let mut data = vec![b'x'; 5000];
        data.push(b'\n');
        data.extend_from_slice(&[b'y'; 100]);
        // A tiny BufReader capacity forces many partial chunks per line.
        let reader = io::BufReader::with_capacity(7, &data[..]);
        let mut r = JsonlReader::with_max_line_bytes(reader, 1000);
        let first = r.next().expect("an item");
        assert!(matches!(
            first,
            Err(JsonlError::TooLong {
                line: 1,
                len: 5000,
                max: 1000
            })
        ));
        assert!(r.buf.capacity() <= 1001, "capacity {}", r.buf.capacity());
        let second = r.next().expect("an item");
        assert!(matches!(second, Err(JsonlError::NotJson { line: 2, .. })));
        assert!(r.buf.capacity() <= 1001, "capacity {}", r.buf.capacity());
        assert!(r.next().is_none());
        assert_eq!(
            r.stats(),
            ReaderStats {
                lines: 2,
                records: 0,
                blank: 0,
                not_json: 1,
                rejected: 1
            }
        );
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_accepted_even_with_crlf() {
        let line = br#"{"type":"artifact","run_id":"r","path":"p"}"#;
        let mut data = line.to_vec();
        data.extend_from_slice(b"\r\n");
        let mut r = JsonlReader::with_max_line_bytes(&data[..], line.len());
        assert!(matches!(r.next(), Some(Ok(ParsedLine { line_no: 1, .. }))));
        let mut r = JsonlReader::with_max_line_bytes(&data[..], line.len() - 1);
        assert!(matches!(r.next(), Some(Err(JsonlError::TooLong { .. }))));
    }

    struct FailingReader;
    impl io::Read for FailingReader {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
    }

    #[test]
    fn an_io_error_is_reported_once_and_ends_the_stream() {
        let mut r = JsonlReader::new(io::BufReader::new(FailingReader));
        let err = r.next().expect("an item").expect_err("io error");
        assert_eq!((err.label(), err.line()), ("io", None));
        assert!(r.next().is_none());
    }
}
