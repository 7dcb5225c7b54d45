//! The on-disk frame: `len: u32 LE | crc: u32 LE | payload`, where `payload` is
//! `producer_seq: u64 LE | protobuf Record` and `crc = crc32c(len bytes ++ payload)`.
//!
//! The bytes read back are untrusted (a crash may have torn the tail, a disk may rot): the length
//! is checked against [`MAX_FRAME_BYTES`] and against what is left of the file *before* anything
//! is allocated, and every failure is a [`FrameRead::Corrupt`], never a panic.

use prost::Message;
use std::io::{self, Read};
use telemetry_core::pb::Record;

/// Largest payload a frame may declare; anything larger is corruption, not an allocation.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Bytes before the payload.
pub const HEADER_BYTES: usize = 8;

/// Appends the frame of `record` (stamped with `seq`) to `out`; returns the frame's length.
pub fn encode(seq: u64, record: &Record, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    let payload_len = 8 + record.encoded_len();
    out.reserve(HEADER_BYTES + payload_len);
    out.extend_from_slice(&[0; HEADER_BYTES]);
    out.extend_from_slice(&seq.to_le_bytes());
    // Encoding into a Vec cannot run out of room.
    let _ = record.encode(out);
    let len = u32::try_from(payload_len).unwrap_or(u32::MAX).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), &out[start + HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// The length a frame of `record` takes on disk.
pub fn frame_len(record: &Record) -> usize {
    HEADER_BYTES + 8 + record.encoded_len()
}

/// What one read found.
#[derive(Debug)]
pub enum FrameRead {
    /// A complete, checked frame.
    Frame {
        /// The producer seq stored with it.
        seq: u64,
        /// The record bytes (protobuf).
        record: Vec<u8>,
        /// Bytes the frame took.
        len: u64,
    },
    /// Clean end of data (no byte of a further frame).
    End,
    /// The frame at this position is torn or corrupt.
    Corrupt(&'static str),
}

/// Reads one frame; `remaining` is how many bytes are left in the file (`u64::MAX` if unknown).
pub fn read<R: Read>(r: &mut R, remaining: u64) -> io::Result<FrameRead> {
    let mut header = [0u8; HEADER_BYTES];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Ok(FrameRead::End);
    }
    if got < HEADER_BYTES {
        return Ok(FrameRead::Corrupt("torn frame header"));
    }
    let len_bytes = [header[0], header[1], header[2], header[3]];
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(8..=MAX_FRAME_BYTES).contains(&len) {
        return Ok(FrameRead::Corrupt("frame length out of range"));
    }
    if (len as u64) > remaining.saturating_sub(HEADER_BYTES as u64) {
        return Ok(FrameRead::Corrupt("frame runs past the end of the file"));
    }
    let mut payload = vec![0u8; len];
    if read_full(r, &mut payload)? < len {
        return Ok(FrameRead::Corrupt("torn frame payload"));
    }
    if crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &payload) != crc {
        return Ok(FrameRead::Corrupt("checksum mismatch"));
    }
    let seq = u64::from_le_bytes([
        payload[0], payload[1], payload[2], payload[3], payload[4], payload[5], payload[6],
        payload[7],
    ]);
    payload.drain(..8);
    Ok(FrameRead::Frame {
        seq,
        record: payload,
        len: (HEADER_BYTES + len) as u64,
    })
}

/// Decodes the record bytes of a frame.
pub fn decode(bytes: &[u8]) -> Option<Record> {
    Record::decode(bytes).ok()
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use telemetry_core::pb::RunStep;

    fn rec(reward: f64) -> Record {
        RunStep {
            run_id: "r".into(),
            reward,
            producer_seq: 7,
            ..Default::default()
        }
        .into()
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        let n1 = encode(7, &rec(1.0), &mut buf);
        let n2 = encode(8, &rec(2.0), &mut buf);
        assert_eq!(n1, frame_len(&rec(1.0)));
        assert_eq!(buf.len(), n1 + n2);
        let mut r = &buf[..];
        for (want_seq, want) in [(7, rec(1.0)), (8, rec(2.0))] {
            match read(&mut r, u64::MAX).expect("io") {
                FrameRead::Frame { seq, record, len } => {
                    assert_eq!(seq, want_seq);
                    assert_eq!(decode(&record), Some(want));
                    assert_eq!(len as usize, n1);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            read(&mut r, u64::MAX).expect("io"),
            FrameRead::End
        ));
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode(1, &rec(0.5), &mut buf);
        for cut in 1..buf.len() {
            let mut r = &buf[..cut];
            assert!(
                matches!(read(&mut r, cut as u64).expect("io"), FrameRead::Corrupt(_)),
                "cut at {cut}"
            );
        }
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[i] ^= 1 << bit;
                let mut r = &bad[..];
                assert!(
                    matches!(
                        read(&mut r, bad.len() as u64).expect("io"),
                        FrameRead::Corrupt(_)
                    ),
                    "flip byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn a_huge_length_is_corruption_not_an_allocation() {
        let mut bad = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        bad.extend_from_slice(&[0; 16]);
        let mut r = &bad[..];
        assert!(matches!(
            read(&mut r, u64::MAX).expect("io"),
            FrameRead::Corrupt("frame length out of range")
        ));
        // In range, but longer than the file.
        let mut bad = (1000u32).to_le_bytes().to_vec();
        bad.extend_from_slice(&[0; 20]);
        let mut r = &bad[..];
        assert!(matches!(
            read(&mut r, bad.len() as u64).expect("io"),
            FrameRead::Corrupt("frame runs past the end of the file")
        ));
    }
}
