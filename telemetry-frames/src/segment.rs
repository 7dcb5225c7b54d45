//! Segment files: where the frame bytes live, append-only, each record checksummed.
//!
//! A frame is written once and never rewritten, so the store appends encoded frames to the
//! run's current segment file and the index keeps `(segment, offset, len)`. A record is
//! `b"GTFR" | payload length (u32 LE) | CRC-32 of the payload (u32 LE) | payload`, the payload
//! being the encoded `pb::Frame`. A torn write (a crash in the middle of an append) or a flipped
//! bit fails the length or checksum test on read and is reported as corrupt, never decoded.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// Magic bytes opening each record.
pub const MAGIC: [u8; 4] = *b"GTFR";
/// Bytes of a record header.
pub const HEADER: u64 = 12;

/// Why a record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read (missing, short: a torn tail).
    #[error("reading segment {path}: {source}")]
    Io {
        /// The segment file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Magic, length or checksum do not match.
    #[error("segment {path} offset {offset}: {what}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// Which test failed.
        what: &'static str,
    },
}

/// The file a segment id of a run lives in.
pub fn path_of(root: &Path, run_id: &str, id: i64) -> PathBuf {
    root.join(run_id).join(format!("{id:010}.seg"))
}

/// One record, framed: header and payload.
pub fn frame_record(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + HEADER as usize);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A segment open for appending.
#[derive(Debug)]
pub struct Appender {
    /// The segment's id (its row in the index).
    pub id: i64,
    /// Its file.
    pub path: PathBuf,
    file: File,
    /// Bytes in the file, where the next record goes.
    pub len: u64,
    /// Written since the last sync.
    pub dirty: bool,
}

impl Appender {
    /// Opens (creating, 0600) a segment for appending at its current end.
    pub fn open(path: PathBuf, id: i64) -> io::Result<Appender> {
        if let Some(parent) = path.parent() {
            crate::private_dir(parent)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        let len = file.metadata()?.len();
        Ok(Appender {
            id,
            path,
            file,
            len,
            dirty: false,
        })
    }

    /// Appends one framed record; returns its offset.
    pub fn append(&mut self, record: &[u8]) -> io::Result<u64> {
        let at = self.len;
        self.file.write_all(record)?;
        self.len += record.len() as u64;
        self.dirty = true;
        Ok(at)
    }

    /// Makes what was appended durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }
}

/// Reads the record at `offset` of `len` bytes (header included) and checks it.
pub fn read_record(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, ReadError> {
    let io_err = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let corrupt = |what| ReadError::Corrupt {
        path: path.to_owned(),
        offset,
        what,
    };
    if len < HEADER || len > HEADER + telemetry_core::frames::MAX_FRAME_BYTES as u64 * 2 {
        return Err(corrupt("index length out of range"));
    }
    let file = File::open(path).map_err(io_err)?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            corrupt("record cut short (torn write)")
        } else {
            io_err(e)
        }
    })?;
    if buf[..4] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let n = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as u64;
    if n + HEADER != len {
        return Err(corrupt("length differs from the index"));
    }
    let crc = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let payload = buf.split_off(HEADER as usize);
    if crc32fast::hash(&payload) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(payload)
}

/// What a scan of a whole segment found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Records whose checksum holds.
    pub good: u64,
    /// Records that fail their checksum.
    pub corrupt: u64,
    /// Bytes at the end that are not a whole record (a torn tail), 0 if none.
    pub torn_tail_bytes: u64,
}

/// Walks a segment record by record, checking each (for `FrameStore::verify`).
pub fn scan(path: &Path) -> io::Result<ScanReport> {
    let data = std::fs::read(path)?;
    let mut r = ScanReport::default();
    let mut at = 0usize;
    while at < data.len() {
        let rest = &data[at..];
        if rest.len() < HEADER as usize || rest[..4] != MAGIC {
            r.torn_tail_bytes = rest.len() as u64;
            break;
        }
        let n = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        if rest.len() < HEADER as usize + n {
            r.torn_tail_bytes = rest.len() as u64;
            break;
        }
        let crc = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if crc32fast::hash(&rest[HEADER as usize..HEADER as usize + n]) == crc {
            r.good += 1;
        } else {
            r.corrupt += 1;
        }
        at += HEADER as usize + n;
    }
    Ok(r)
}
