//! PNG in and out: frames are stored as 8-bit RGB PNG (lossless, what `env.render()` gives,
//! decodable by every browser), and decoded back to raw RGB for export.

use std::io::Cursor;

/// A frame decoded to raw RGB, row major, 3 bytes a pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub pixels: Vec<u8>,
}

/// Why a PNG could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The PNG is malformed or too large.
    #[error("png: {0}")]
    Decode(#[from] png::DecodingError),
    /// Encoding failed.
    #[error("png: {0}")]
    Encode(#[from] png::EncodingError),
    /// Not 8-bit RGB, or the buffer does not match the size.
    #[error("frame is not {0}")]
    Format(&'static str),
}

/// Encodes raw RGB as PNG with fast compression (the shim's setting).
pub fn encode_png(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, CodecError> {
    if rgb.len() as u64 != u64::from(width) * u64::from(height) * 3 {
        return Err(CodecError::Format("width * height * 3 bytes"));
    }
    let mut out = Vec::with_capacity(rgb.len() / 4);
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header()?;
        w.write_image_data(rgb)?;
    }
    Ok(out)
}

/// Decodes an 8-bit RGB PNG, refusing images larger than `max_pixels`.
pub fn decode_png(data: &[u8], max_pixels: u64) -> Result<Rgb, CodecError> {
    let limits = png::Limits {
        bytes: usize::try_from(max_pixels.saturating_mul(4)).unwrap_or(usize::MAX),
    };
    let decoder = png::Decoder::new_with_limits(Cursor::new(data), limits);
    let mut reader = decoder.read_info()?;
    let info = reader.info();
    if info.color_type != png::ColorType::Rgb || info.bit_depth != png::BitDepth::Eight {
        return Err(CodecError::Format("8-bit RGB"));
    }
    let (width, height) = (info.width, info.height);
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(CodecError::Format("within the pixel limit"));
    }
    let mut pixels = vec![
        0u8;
        reader
            .output_buffer_size()
            .ok_or(CodecError::Format("sized"))?
    ];
    let frame = reader.next_frame(&mut pixels)?;
    pixels.truncate(frame.buffer_size());
    Ok(Rgb {
        width,
        height,
        pixels,
    })
}
