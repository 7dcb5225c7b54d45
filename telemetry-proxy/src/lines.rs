//! Bounded line framing over an async byte stream (a worker's stdout).
//!
//! A worker that prints a 2 GiB line (a frame dumped as JSON, a runaway loop) must not take the
//! proxy's memory with it: at most `max` bytes of a line are kept; the rest streams past and the
//! line is reported as too long. `next_line` is cancel-safe (its state lives in the struct and
//! bytes are consumed only after they are copied), so it can sit in a `select!`.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One line read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A complete line without its `\n` (a trailing `\r` is left for the parser).
    Text(Vec<u8>),
    /// A line longer than the limit; `len` bytes long, none kept.
    TooLong { len: u64 },
}

pub(crate) struct LineReader<R> {
    inner: R,
    max: usize,
    buf: Vec<u8>,
    len: u64,
    done: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            max,
            buf: Vec::new(),
            len: 0,
            done: false,
        }
    }

    fn take(&mut self) -> Line {
        let len = std::mem::take(&mut self.len);
        if len > self.max as u64 {
            self.buf.clear();
            Line::TooLong { len }
        } else {
            Line::Text(std::mem::take(&mut self.buf))
        }
    }

    /// The next line; `None` at the end of the stream.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        if self.done {
            return Ok(None);
        }
        loop {
            let chunk = self.inner.fill_buf().await?;
            if chunk.is_empty() {
                self.done = true;
                return Ok((self.len > 0).then(|| self.take()));
            }
            let (part, found) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], true),
                None => (chunk, false),
            };
            let room = (self.max + 1).saturating_sub(self.buf.len());
            self.buf.extend_from_slice(&part[..part.len().min(room)]);
            self.len += part.len() as u64;
            let used = part.len() + usize::from(found);
            self.inner.consume(used);
            if found {
                return Ok(Some(self.take()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_bounds_and_keeps_going() {
        let input = b"short\n0123456789ABCDEF\nok\r\n\nlast".to_vec();
        let mut r = LineReader::new(tokio::io::BufReader::with_capacity(4, &input[..]), 8);
        let mut got = Vec::new();
        while let Some(l) = r.next_line().await.expect("io") {
            got.push(l);
        }
        assert_eq!(
            got,
            vec![
                Line::Text(b"short".to_vec()),
                Line::TooLong { len: 16 },
                Line::Text(b"ok\r".to_vec()),
                Line::Text(Vec::new()),
                Line::Text(b"last".to_vec()),
            ]
        );
        assert_eq!(r.next_line().await.expect("io"), None);
    }

    #[tokio::test]
    async fn a_line_exactly_at_the_limit_is_kept() {
        let input = b"12345678\n123456789\n".to_vec();
        let mut r = LineReader::new(&input[..], 8);
        assert_eq!(
            r.next_line().await.expect("io"),
            Some(Line::Text(b"12345678".to_vec()))
        );
        assert_eq!(
            r.next_line().await.expect("io"),
            Some(Line::TooLong { len: 9 })
        );
    }
}
