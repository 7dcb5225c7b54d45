//! The TensorBoard event file format, read without TensorFlow: TFRecord frames around `Event`
//! protos, and the scalars inside them. Pure (no I/O beyond a caller's reader), bounded, and
//! written to be fuzzed: any input gives frames, a clean end, a torn tail or a typed error,
//! never a panic and never an allocation larger than [`MAX_RECORD_BYTES`].
//!
//! A frame (TFRecord) is:
//!
//! ```text
//! u64 length (little endian) | u32 masked CRC32C(length bytes) | data[length] | u32 masked CRC32C(data)
//! ```
//!
//! with `masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping). A file that is
//! still being written may end inside a frame: that is a [`Next::Torn`] tail (retry later from
//! its offset), not an error. A CRC mismatch or an absurd length is a [`FrameError`]: the bytes
//! from there on cannot be trusted to be framed at all.
//!
//! The messages are decoded by hand-written prost structs holding only the fields a scalar
//! needs (unknown fields are skipped), so no protoc or TensorFlow proto tree is involved.
//! Scalars come in two forms: the old `Summary.Value.simple_value` (tensorboardX, TF1) and a
//! one-element `tensor` whose metadata names the `scalars` plugin (`torch.utils.tensorboard`,
//! `tf.summary`, `tensorboard.summary.Writer`). [`ScalarDecoder`] handles both.

use std::{collections::HashMap, io::Read};

/// Bytes of a frame before its data (length and its CRC).
pub const HEADER_BYTES: u64 = 12;
/// Bytes of a frame after its data (the data's CRC).
pub const FOOTER_BYTES: u64 = 4;
/// Largest frame data accepted (16 MiB). A scalar event is tens of bytes; a larger length is
/// corruption (or an image summary nobody needs here) and is refused before any allocation.
pub const MAX_RECORD_BYTES: u64 = 16 << 20;

const MASK_DELTA: u32 = 0xa282_ead8;

/// The masked CRC32C TFRecord stores (see the module docs).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    (crc.rotate_right(15)).wrapping_add(MASK_DELTA)
}

/// Why the frames of a file cannot be read on from some offset.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length field does not match its CRC.
    #[error("record at byte {offset}: the length's CRC does not match (corrupt file)")]
    LengthCrc {
        /// Offset of the frame.
        offset: u64,
    },
    /// The data does not match its CRC.
    #[error("record at byte {offset}: the data's CRC does not match (corrupt file)")]
    DataCrc {
        /// Offset of the frame.
        offset: u64,
    },
    /// The length (with a valid CRC) is beyond [`MAX_RECORD_BYTES`] (or the reader's bound).
    #[error("record at byte {offset}: length {len} is over the {max}-byte bound")]
    TooLong {
        /// Offset of the frame.
        offset: u64,
        /// The length it claims.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// The reader failed.
    #[error("reading at byte {offset}: {source}")]
    Io {
        /// Offset of the frame being read.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl FrameError {
    /// Offset of the frame the error is about.
    pub fn offset(&self) -> u64 {
        match self {
            FrameError::LengthCrc { offset }
            | FrameError::DataCrc { offset }
            | FrameError::TooLong { offset, .. }
            | FrameError::Io { offset, .. } => *offset,
        }
    }

    /// A short label for counters (`length_crc`, `data_crc`, `too_long`, `io`).
    pub fn label(&self) -> &'static str {
        match self {
            FrameError::LengthCrc { .. } => "length_crc",
            FrameError::DataCrc { .. } => "data_crc",
            FrameError::TooLong { .. } => "too_long",
            FrameError::Io { .. } => "io",
        }
    }
}

/// One complete, checksummed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Byte offset of the frame (of its length field) in the file.
    pub offset: u64,
    /// The frame's data (an encoded `Event`).
    pub data: Vec<u8>,
}

impl Frame {
    /// Offset just past this frame: where the next one starts.
    pub fn end(&self) -> u64 {
        self.offset + HEADER_BYTES + self.data.len() as u64 + FOOTER_BYTES
    }
}

/// What [`FrameReader::next_frame`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A complete frame.
    Frame(Frame),
    /// The input ends exactly at a frame boundary.
    End,
    /// The input ends inside the frame at `offset` (a file still being written): read again
    /// from `offset` once more bytes are there.
    Torn {
        /// Offset of the incomplete frame.
        offset: u64,
        /// How many of its bytes are present.
        have: u64,
    },
}

/// Reads frames one by one from a reader positioned at a frame boundary.
///
/// After [`Next::Torn`] or an error the reader's [`offset`](FrameReader::offset) stays at the
/// start of the frame concerned; its inner reader has been consumed past it, so re-reading
/// means opening (or seeking) the source again at that offset.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    offset: u64,
    max_len: u64,
}

impl<R: Read> FrameReader<R> {
    /// A reader whose first frame starts at `offset` (the caller has positioned `inner` there).
    pub fn new(inner: R, offset: u64) -> Self {
        FrameReader {
            inner,
            offset,
            max_len: MAX_RECORD_BYTES,
        }
    }

    /// Lowers (or raises) the largest frame accepted.
    pub fn with_max_len(mut self, max_len: u64) -> Self {
        self.max_len = max_len;
        self
    }

    /// Offset of the next frame to read (after a torn tail or an error: of that frame).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next frame, a clean end, a torn tail, or why the input is not a frame here.
    pub fn next_frame(&mut self) -> Result<Next, FrameError> {
        let offset = self.offset;
        let io = |source| FrameError::Io { offset, source };
        let mut header = [0u8; HEADER_BYTES as usize];
        let got = read_full(&mut self.inner, &mut header).map_err(io)?;
        if got == 0 {
            return Ok(Next::End);
        }
        if got < header.len() {
            return Ok(Next::Torn {
                offset,
                have: got as u64,
            });
        }
        let (len_bytes, len_crc) = header.split_at(8);
        if masked_crc32c(len_bytes) != le_u32(len_crc) {
            return Err(FrameError::LengthCrc { offset });
        }
        let len = le_u64(len_bytes);
        if len > self.max_len {
            return Err(FrameError::TooLong {
                offset,
                len,
                max: self.max_len,
            });
        }
        // Grows with what is actually read: a torn 16 MiB frame costs only the bytes present.
        let mut data = Vec::new();
        (&mut self.inner)
            .take(len)
            .read_to_end(&mut data)
            .map_err(io)?;
        if (data.len() as u64) < len {
            return Ok(Next::Torn {
                offset,
                have: HEADER_BYTES + data.len() as u64,
            });
        }
        let mut footer = [0u8; FOOTER_BYTES as usize];
        let got = read_full(&mut self.inner, &mut footer).map_err(io)?;
        if got < footer.len() {
            return Ok(Next::Torn {
                offset,
                have: HEADER_BYTES + len + got as u64,
            });
        }
        if masked_crc32c(&data) != u32::from_le_bytes(footer) {
            return Err(FrameError::DataCrc { offset });
        }
        let frame = Frame { offset, data };
        self.offset = frame.end();
        Ok(Next::Frame(frame))
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Encodes `data` as one TFRecord frame (for writing test files and fixtures).
pub fn encode_frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// The messages (tensorflow/core/util/event.proto, framework/summary.proto, tensor.proto),
// only the fields a scalar needs.
// ---------------------------------------------------------------------------------------------

/// `tensorflow.Event`: one record of an event file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// Set on the first event of a file (`brain.Event:2`).
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    /// The values logged at this step.
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    /// The series name.
    #[prost(string, tag = "1")]
    pub tag: String,
    /// The old scalar form.
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    /// The new form (scalars, and every other plugin's data).
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
    /// Which plugin the value belongs to (often only on a tag's first value).
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

/// `tensorflow.SummaryMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    /// The plugin.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
    /// `DataClass`: 1 is `DATA_CLASS_SCALAR`.
    #[prost(int32, tag = "4")]
    pub data_class: i32,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    /// `scalars` for scalars.
    #[prost(string, tag = "1")]
    pub plugin_name: String,
}

/// `tensorflow.TensorProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// `tensorflow.DataType` (see [`dtype`]).
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// The shape (absent: a scalar).
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShape>,
    /// The elements as raw little-endian bytes (when set, the typed fields are not).
    #[prost(bytes = "vec", tag = "4")]
    pub tensor_content: Vec<u8>,
    /// `DT_FLOAT` elements.
    #[prost(float, repeated, tag = "5")]
    pub float_val: Vec<f32>,
    /// `DT_DOUBLE` elements.
    #[prost(double, repeated, tag = "6")]
    pub double_val: Vec<f64>,
    /// `DT_INT32`, `DT_INT16`, `DT_INT8`, `DT_UINT8` elements.
    #[prost(int32, repeated, tag = "7")]
    pub int_val: Vec<i32>,
    /// `DT_INT64` elements.
    #[prost(int64, repeated, tag = "10")]
    pub int64_val: Vec<i64>,
    /// `DT_BOOL` elements.
    #[prost(bool, repeated, tag = "11")]
    pub bool_val: Vec<bool>,
    /// `DT_HALF` and `DT_BFLOAT16` elements (the 16 bits in an int32).
    #[prost(int32, repeated, tag = "13")]
    pub half_val: Vec<i32>,
}

/// `tensorflow.TensorShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShape {
    /// The dimensions (none: a scalar).
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<TensorDim>,
}

/// `tensorflow.TensorShapeProto.Dim`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorDim {
    /// The size (-1: unknown).
    #[prost(int64, tag = "1")]
    pub size: i64,
}

/// The `tensorflow.DataType` values a scalar may have.
pub mod dtype {
    /// `DT_FLOAT`.
    pub const FLOAT: i32 = 1;
    /// `DT_DOUBLE`.
    pub const DOUBLE: i32 = 2;
    /// `DT_INT32`.
    pub const INT32: i32 = 3;
    /// `DT_UINT8`.
    pub const UINT8: i32 = 4;
    /// `DT_INT16`.
    pub const INT16: i32 = 5;
    /// `DT_INT8`.
    pub const INT8: i32 = 6;
    /// `DT_INT64`.
    pub const INT64: i32 = 9;
    /// `DT_BOOL`.
    pub const BOOL: i32 = 10;
    /// `DT_BFLOAT16`.
    pub const BFLOAT16: i32 = 14;
    /// `DT_HALF`.
    pub const HALF: i32 = 19;
}

/// The plugin name of scalar tensors.
pub const SCALARS_PLUGIN: &str = "scalars";
/// `DATA_CLASS_SCALAR`.
pub const DATA_CLASS_SCALAR: i32 = 1;

/// Decodes a frame's data as an [`Event`].
pub fn decode_event(data: &[u8]) -> Result<Event, prost::DecodeError> {
    <Event as prost::Message>::decode(data)
}

/// One scalar found in an event.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarValue {
    /// The tag as written.
    pub tag: String,
    /// The value (NaN and infinities as written).
    pub value: f64,
    /// Position among the scalars of its event (0, 1, ...).
    pub index: u32,
}

/// What a tensor value of a tag is known to be, from the metadata seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TagKind {
    Scalar,
    Other,
}

/// Finds the scalars of events, remembering per tag which plugin it belongs to: writers may
/// put the metadata only on a tag's first value, so use one decoder per file, in file order.
#[derive(Debug, Default)]
pub struct ScalarDecoder {
    kinds: HashMap<String, TagKind>,
    skipped: u64,
}

/// Tags remembered per file at most (a file with more tags is not a training log; past the
/// bound, a tensor without metadata is judged on its own).
const MAX_TAGS: usize = 65_536;

impl ScalarDecoder {
    /// A decoder that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Values seen so far that were not scalars (images, histograms, text, ...).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The scalars of `event`, in order.
    pub fn scalars(&mut self, event: &Event) -> Vec<ScalarValue> {
        let mut out = Vec::new();
        let Some(summary) = &event.summary else {
            return out;
        };
        for v in &summary.value {
            match self.value_of(v) {
                Some(value) => {
                    let index = u32::try_from(out.len()).unwrap_or(u32::MAX);
                    out.push(ScalarValue {
                        tag: v.tag.clone(),
                        value,
                        index,
                    });
                }
                None => self.skipped += 1,
            }
        }
        out
    }

    fn value_of(&mut self, v: &SummaryValue) -> Option<f64> {
        if let Some(x) = v.simple_value {
            return Some(f64::from(x));
        }
        let tensor = v.tensor.as_ref()?;
        let declared = v
            .metadata
            .as_ref()
            .and_then(|m| match m.plugin_data.as_ref() {
                Some(p) if !p.plugin_name.is_empty() => Some(if p.plugin_name == SCALARS_PLUGIN {
                    TagKind::Scalar
                } else {
                    TagKind::Other
                }),
                _ if m.data_class == DATA_CLASS_SCALAR => Some(TagKind::Scalar),
                _ => None,
            });
        let kind = match declared {
            Some(k) => {
                if self.kinds.len() < MAX_TAGS || self.kinds.contains_key(&v.tag) {
                    self.kinds.insert(v.tag.clone(), k);
                }
                Some(k)
            }
            None => self.kinds.get(&v.tag).copied(),
        };
        match kind {
            Some(TagKind::Other) => None,
            // Declared scalar, or never declared anything: a one-element numeric tensor is one.
            Some(TagKind::Scalar) | None => tensor_scalar(tensor),
        }
    }
}

/// The value of a one-element numeric tensor; `None` for anything else.
pub fn tensor_scalar(t: &TensorProto) -> Option<f64> {
    let elements = t
        .tensor_shape
        .as_ref()
        .map(|s| {
            s.dim.iter().try_fold(1i64, |n, d| {
                if d.size < 0 {
                    None
                } else {
                    n.checked_mul(d.size)
                }
            })
        })
        .unwrap_or(Some(1))?;
    if elements != 1 {
        return None;
    }
    let c = &t.tensor_content;
    if !c.is_empty() {
        let arr = |n: usize| -> Option<&[u8]> { (c.len() == n).then_some(c.as_slice()) };
        return match t.dtype {
            dtype::FLOAT => arr(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            dtype::DOUBLE => {
                arr(8).map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            }
            dtype::INT32 => arr(4).map(|b| f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            dtype::INT64 => arr(8).map(|b| {
                i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64
            }),
            dtype::INT16 => arr(2).map(|b| f64::from(i16::from_le_bytes([b[0], b[1]]))),
            dtype::INT8 => arr(1).map(|b| f64::from(b[0] as i8)),
            dtype::UINT8 => arr(1).map(|b| f64::from(b[0])),
            dtype::BOOL => arr(1).map(|b| if b[0] != 0 { 1.0 } else { 0.0 }),
            dtype::HALF => arr(2).map(|b| f16_to_f64(u16::from_le_bytes([b[0], b[1]]))),
            dtype::BFLOAT16 => arr(2).map(|b| bf16_to_f64(u16::from_le_bytes([b[0], b[1]]))),
            _ => None,
        };
    }
    match t.dtype {
        dtype::FLOAT => t.float_val.first().map(|&x| f64::from(x)),
        dtype::DOUBLE => t.double_val.first().copied(),
        dtype::INT32 | dtype::INT16 | dtype::INT8 | dtype::UINT8 => {
            t.int_val.first().map(|&x| f64::from(x))
        }
        dtype::INT64 => t.int64_val.first().map(|&x| x as f64),
        dtype::BOOL => t.bool_val.first().map(|&x| if x { 1.0 } else { 0.0 }),
        dtype::HALF => t.half_val.first().map(|&x| f16_to_f64(x as u16)),
        dtype::BFLOAT16 => t.half_val.first().map(|&x| bf16_to_f64(x as u16)),
        _ => None,
    }
}

/// IEEE 754 binary16 to f64.
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let frac = f64::from(bits & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        0x1f if frac == 0.0 => sign * f64::INFINITY,
        0x1f => f64::NAN,
        _ => sign * (1.0 + frac / 1024.0) * 2f64.powi(exp - 15),
    }
}

/// bfloat16 (the top half of an f32) to f64.
fn bf16_to_f64(bits: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(bits) << 16))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost::Message;

    fn fixture(rel: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(rel)
            .join("events.out.tfevents.1700000000.fixture");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Every frame of `data`, and how the reading ended.
    fn read_all(data: &[u8]) -> (Vec<Frame>, Result<Next, FrameError>) {
        let mut r = FrameReader::new(data, 0);
        let mut frames = Vec::new();
        loop {
            match r.next_frame() {
                Ok(Next::Frame(f)) => frames.push(f),
                other => return (frames, other),
            }
        }
    }

    /// (tag, step, value) of every scalar of `data`.
    fn scalars(data: &[u8]) -> Vec<(String, i64, f64)> {
        let (frames, end) = read_all(data);
        assert!(matches!(end, Ok(Next::End)), "{end:?}");
        let mut d = ScalarDecoder::new();
        let mut out = Vec::new();
        for f in frames {
            let e = decode_event(&f.data).unwrap();
            for s in d.scalars(&e) {
                out.push((s.tag, e.step, s.value));
            }
        }
        out
    }

    #[test]
    #[allow(clippy::manual_rotate)] // the formula as TensorFlow's crc32c::Mask spells it
    fn the_mask_matches_tensorflow() {
        // TensorFlow's crc32c::Mask of crc32c("") (0) and of a known value.
        assert_eq!(masked_crc32c(b""), MASK_DELTA);
        let crc = crc32c::crc32c(b"123456789");
        assert_eq!(crc, 0xe306_9283);
        assert_eq!(
            masked_crc32c(b"123456789"),
            ((crc >> 15) | (crc << 17)).wrapping_add(MASK_DELTA)
        );
    }

    #[test]
    fn tensorboardx_add_scalar_with_nan_and_infinities() {
        let data = fixture("tbx");
        let (frames, _) = read_all(&data);
        let first = decode_event(&frames[0].data).unwrap();
        assert_eq!(first.file_version.as_deref(), Some("brain.Event:2"));
        let all = scalars(&data);
        let loss: Vec<(i64, f64)> = all
            .iter()
            .filter(|(t, _, _)| t == "loss")
            .map(|(_, s, v)| (*s, *v))
            .collect();
        assert_eq!(loss.len(), 10);
        assert_eq!(loss[0], (0, 0.5));
        assert_eq!(loss[1], (1, 0.25));
        assert!(loss[2].1.is_nan());
        assert_eq!(loss[3].1, f64::INFINITY);
        assert_eq!(loss[4].1, f64::NEG_INFINITY);
        for (step, value) in &loss[5..] {
            assert_eq!(*value, 0.125 * *step as f64);
        }
        let lr: Vec<(i64, f64)> = all
            .iter()
            .filter(|(t, _, _)| t == "charts/lr")
            .map(|(_, s, v)| (*s, *v))
            .collect();
        assert_eq!(lr, vec![(0, 0.001953125), (5, 0.001953125)]);
        // The text summary is not a scalar.
        assert_eq!(all.len(), 12);
    }

    #[test]
    fn tensorboardx_add_scalars_files_carry_the_main_tag() {
        let train = scalars(&fixture("tbx/reward/train"));
        assert_eq!(
            train,
            vec![
                ("reward".to_string(), 0, 0.0),
                ("reward".to_string(), 1, 1.0),
                ("reward".to_string(), 2, 2.0)
            ]
        );
        let eval = scalars(&fixture("tbx/reward/eval"));
        assert_eq!(eval[2], ("reward".to_string(), 2, -2.0));
    }

    #[test]
    fn new_style_tensor_scalars() {
        let got = scalars(&fixture("new_style"));
        assert_eq!(
            got,
            (0..4)
                .map(|s| ("accuracy".to_string(), s, s as f64 / 4.0))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_torn_tail_is_not_an_error() {
        let whole = fixture("tbx");
        let torn = fixture("torn");
        let (frames, end) = read_all(&torn);
        let (all, _) = read_all(&whole);
        assert_eq!(frames.len(), all.len() - 1);
        let last = &all[all.len() - 1];
        match end {
            Ok(Next::Torn { offset, have }) => {
                assert_eq!(offset, last.offset);
                assert_eq!(offset + have, torn.len() as u64);
            }
            other => panic!("{other:?}"),
        }
        // Every cut of a valid file is frames then End or Torn, never an error.
        for cut in 0..whole.len() {
            let (frames, end) = read_all(&whole[..cut]);
            let end = end.unwrap();
            let consumed = frames.last().map_or(0, Frame::end);
            match end {
                Next::End => assert_eq!(consumed, cut as u64),
                Next::Torn { offset, have } => {
                    assert_eq!(offset, consumed);
                    assert_eq!(offset + have, cut as u64);
                }
                Next::Frame(_) => unreachable!(),
            }
        }
    }

    #[test]
    fn a_corrupt_crc_is_a_typed_error_at_its_frame() {
        let whole = fixture("tbx");
        let (all, _) = read_all(&whole);
        let (frames, end) = read_all(&fixture("corrupt"));
        assert_eq!(frames.len(), 3);
        match end {
            Err(e @ FrameError::DataCrc { .. }) => {
                assert_eq!(e.offset(), all[3].offset);
                assert_eq!(e.label(), "data_crc");
            }
            other => panic!("{other:?}"),
        }
        let mut bad_len = whole.clone();
        bad_len[1] ^= 1;
        assert!(matches!(
            read_all(&bad_len).1,
            Err(FrameError::LengthCrc { offset: 0 })
        ));
    }

    #[test]
    fn an_absurd_length_is_refused_before_allocating() {
        let len = (1u64 << 40).to_le_bytes();
        let mut data = len.to_vec();
        data.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        assert!(matches!(
            read_all(&data).1,
            Err(FrameError::TooLong { len, .. }) if len == 1 << 40
        ));
        let small = encode_frame(&[0u8; 100]);
        let mut r = FrameReader::new(small.as_slice(), 0).with_max_len(10);
        assert!(matches!(r.next_frame(), Err(FrameError::TooLong { .. })));
    }

    #[test]
    fn tensor_forms_and_dtypes() {
        let value = |tensor: TensorProto, plugin: Option<&str>| {
            let e = Event {
                step: 3,
                summary: Some(Summary {
                    value: vec![SummaryValue {
                        tag: "t".into(),
                        tensor: Some(tensor),
                        metadata: plugin.map(|p| SummaryMetadata {
                            plugin_data: Some(PluginData {
                                plugin_name: p.into(),
                            }),
                            data_class: 0,
                        }),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            };
            let bytes = e.encode_to_vec();
            let e = decode_event(&bytes).unwrap();
            ScalarDecoder::new().scalars(&e).first().map(|s| s.value)
        };
        let t = |dtype, f: &dyn Fn(&mut TensorProto)| {
            let mut t = TensorProto {
                dtype,
                ..Default::default()
            };
            f(&mut t);
            t
        };
        let s = Some("scalars");
        assert_eq!(
            value(t(dtype::DOUBLE, &|t| t.double_val = vec![2.5]), s),
            Some(2.5)
        );
        assert_eq!(
            value(
                t(dtype::DOUBLE, &|t| t.tensor_content =
                    1e300f64.to_le_bytes().to_vec()),
                s
            ),
            Some(1e300)
        );
        assert_eq!(
            value(
                t(dtype::FLOAT, &|t| t.tensor_content =
                    1.5f32.to_le_bytes().to_vec()),
                s
            ),
            Some(1.5)
        );
        assert_eq!(
            value(t(dtype::INT64, &|t| t.int64_val = vec![-7]), s),
            Some(-7.0)
        );
        assert_eq!(
            value(t(dtype::INT32, &|t| t.int_val = vec![9]), s),
            Some(9.0)
        );
        assert_eq!(
            value(t(dtype::HALF, &|t| t.half_val = vec![0x3c00]), s),
            Some(1.0)
        );
        assert_eq!(
            value(t(dtype::BFLOAT16, &|t| t.half_val = vec![0x4040]), s),
            Some(3.0)
        );
        // Not scalars: another plugin, several elements, strings, a wrong content length.
        assert_eq!(
            value(t(dtype::FLOAT, &|t| t.float_val = vec![1.0]), Some("text")),
            None
        );
        assert_eq!(
            value(
                t(dtype::FLOAT, &|t| {
                    t.float_val = vec![1.0, 2.0];
                    t.tensor_shape = Some(TensorShape {
                        dim: vec![TensorDim { size: 2 }],
                    });
                }),
                s
            ),
            None
        );
        assert_eq!(value(t(7, &|_| {}), s), None);
        assert_eq!(
            value(t(dtype::FLOAT, &|t| t.tensor_content = vec![1, 2, 3]), s),
            None
        );
    }

    #[test]
    fn metadata_seen_once_applies_to_later_values_of_the_tag() {
        let ev = |plugin: Option<&str>| Event {
            summary: Some(Summary {
                value: vec![SummaryValue {
                    tag: "img".into(),
                    tensor: Some(TensorProto {
                        dtype: dtype::FLOAT,
                        float_val: vec![1.0],
                        ..Default::default()
                    }),
                    metadata: plugin.map(|p| SummaryMetadata {
                        plugin_data: Some(PluginData {
                            plugin_name: p.into(),
                        }),
                        data_class: 0,
                    }),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        };
        let mut d = ScalarDecoder::new();
        assert!(d.scalars(&ev(Some("images"))).is_empty());
        assert!(d.scalars(&ev(None)).is_empty(), "still the images plugin");
        assert_eq!(d.skipped(), 2);
        assert_eq!(ScalarDecoder::new().scalars(&ev(None)).len(), 1);
    }

    #[test]
    fn garbage_never_panics() {
        // A tiny deterministic sweep of mutations of a real file (the fuzz target goes further).
        let whole = fixture("tbx");
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut data = whole.clone();
            let i = (state % data.len() as u64) as usize;
            data[i] = (state >> 32) as u8;
            let (frames, _) = read_all(&data);
            let mut d = ScalarDecoder::new();
            for f in frames {
                if let Ok(e) = decode_event(&f.data) {
                    let _ = d.scalars(&e);
                }
            }
        }
    }
}
