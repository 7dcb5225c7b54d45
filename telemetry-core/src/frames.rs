//! The rules for frames, stated once: the `frame_ref` a step carries, and the checks a frame
//! passes before it is stored.
//!
//! A worker names a step's frame before the frame reaches the daemon (the step travels through
//! the record queue, the frame through its own), so a `frame_ref` is derived from the frame's
//! natural key and needs no answer from the daemon: `"<run_id>/<episode>/<step>/<agent_id>"`.
//! A run id is path-safe (no `/`), the numbers are decimal, and the agent id comes last, so it
//! may hold any character an id may. The shim writes it, the frame store and the dashboard read
//! it; this module is the one home of the format.

use crate::{ids, pb};

/// Largest frame side, in pixels.
pub const MAX_FRAME_DIM: u32 = 8192;
/// Largest encoded frame, in bytes: half the daemon's default 16 MiB gRPC message limit, so a
/// batch holding one such frame is always accepted (a 1920x1080 PNG of noise is ~6 MiB).
pub const MAX_FRAME_BYTES: usize = 8 << 20;

/// The natural key of a frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameKey {
    /// The run.
    pub run_id: String,
    /// The agent (may be empty).
    pub agent_id: String,
    /// The episode index.
    pub episode_index: u64,
    /// The step index within the episode.
    pub step_index: u64,
}

impl FrameKey {
    /// The key of a frame message.
    pub fn of(frame: &pb::Frame) -> FrameKey {
        FrameKey {
            run_id: frame.run_id.clone(),
            agent_id: frame.agent_id.clone(),
            episode_index: frame.episode_index,
            step_index: frame.step_index,
        }
    }

    /// The `frame_ref` naming this frame.
    pub fn frame_ref(&self) -> String {
        frame_ref(
            &self.run_id,
            &self.agent_id,
            self.episode_index,
            self.step_index,
        )
    }
}

/// The `frame_ref` of the frame of (run, agent, episode, step).
pub fn frame_ref(run_id: &str, agent_id: &str, episode: u64, step: u64) -> String {
    format!("{run_id}/{episode}/{step}/{agent_id}")
}

/// Why a `frame_ref` or a frame was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// The reference does not have the `run/episode/step/agent` form.
    #[error("frame_ref {0:?} is not of the form <run>/<episode>/<step>/<agent>")]
    BadRef(String),
    /// An id is not valid.
    #[error(transparent)]
    Id(#[from] ids::IdError),
    /// Width or height is 0 or over [`MAX_FRAME_DIM`].
    #[error("frame size {width}x{height} is outside 1..={MAX_FRAME_DIM}")]
    BadSize {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// The encoded data is empty or over [`MAX_FRAME_BYTES`].
    #[error("frame data is {0} bytes, allowed 1..={MAX_FRAME_BYTES}")]
    BadLength(usize),
    /// The encoding is not one the store knows.
    #[error("frame encoding {0} is not supported")]
    Encoding(i32),
    /// The data is not a PNG of the stated size in 8-bit RGB.
    #[error("frame data is not an 8-bit RGB PNG of the stated size ({0})")]
    NotPng(&'static str),
    /// `render_fps` is negative or not finite.
    #[error("render_fps {0} is not a finite number >= 0")]
    BadFps(f64),
}

impl FrameError {
    /// A short label for counters and acks.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::BadRef(_) => "bad_ref",
            FrameError::Id(_) => "bad_id",
            FrameError::BadSize { .. } => "bad_size",
            FrameError::BadLength(_) => "bad_length",
            FrameError::Encoding(_) => "bad_encoding",
            FrameError::NotPng(_) => "not_png",
            FrameError::BadFps(_) => "bad_fps",
        }
    }
}

/// Parses a `frame_ref` back into its key.
pub fn parse_frame_ref(s: &str) -> Result<FrameKey, FrameError> {
    let bad = || FrameError::BadRef(s.chars().take(200).collect());
    let mut parts = s.splitn(4, '/');
    let (Some(run), Some(ep), Some(step), Some(agent)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let num = |p: &str| {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            p.parse::<u64>().ok()
        }
    };
    let (Some(episode_index), Some(step_index)) = (num(ep), num(step)) else {
        return Err(bad());
    };
    ids::check_run_id(run)?;
    ids::check_id_chars("agent_id", agent)?;
    Ok(FrameKey {
        run_id: run.to_owned(),
        agent_id: agent.to_owned(),
        episode_index,
        step_index,
    })
}

/// The PNG signature and the IHDR chunk's fixed layout: enough to check a frame's claimed size
/// and pixel format without decoding it.
const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// Checks a frame before it is stored: ids, size, length, encoding, fps, and that a PNG's
/// header states the frame's size as 8-bit RGB (the pixels are not decoded here).
pub fn check_frame(frame: &pb::Frame) -> Result<(), FrameError> {
    ids::check_run_id(&frame.run_id)?;
    ids::check_id_chars("agent_id", &frame.agent_id)?;
    let (width, height) = (frame.width, frame.height);
    if width == 0 || height == 0 || width > MAX_FRAME_DIM || height > MAX_FRAME_DIM {
        return Err(FrameError::BadSize { width, height });
    }
    if frame.data.is_empty() || frame.data.len() > MAX_FRAME_BYTES {
        return Err(FrameError::BadLength(frame.data.len()));
    }
    if !frame.render_fps.is_finite() || frame.render_fps < 0.0 {
        return Err(FrameError::BadFps(frame.render_fps));
    }
    if frame.encoding != pb::FrameEncoding::Png as i32 {
        return Err(FrameError::Encoding(frame.encoding));
    }
    let d = &frame.data;
    if d.len() < 33 || d[..8] != PNG_SIGNATURE || &d[12..16] != b"IHDR" {
        return Err(FrameError::NotPng("no PNG header"));
    }
    let be = |i: usize| u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
    if be(16) != width || be(20) != height {
        return Err(FrameError::NotPng("IHDR size differs"));
    }
    if d[24] != 8 || d[25] != 2 {
        return Err(FrameError::NotPng("not 8-bit RGB"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_refs_round_trip_with_any_agent_id() {
        for agent in ["", "a", "left/right", "x/1/2"] {
            let r = frame_ref("run-1", agent, 3, 44);
            let k = parse_frame_ref(&r).expect("parses");
            assert_eq!(
                (
                    k.run_id.as_str(),
                    k.agent_id.as_str(),
                    k.episode_index,
                    k.step_index
                ),
                ("run-1", agent, 3, 44)
            );
        }
    }

    #[test]
    fn malformed_frame_refs_are_refused() {
        for bad in [
            "", "r", "r/1/2", "r/x/2/a", "r/1/-2/a", "r/1/+2/a", "../1/2/a", "r/1//a",
        ] {
            assert!(parse_frame_ref(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn png_header(w: u32, h: u32, depth: u8, colour: u8) -> Vec<u8> {
        let mut d = PNG_SIGNATURE.to_vec();
        d.extend_from_slice(&13u32.to_be_bytes());
        d.extend_from_slice(b"IHDR");
        d.extend_from_slice(&w.to_be_bytes());
        d.extend_from_slice(&h.to_be_bytes());
        d.extend_from_slice(&[depth, colour, 0, 0, 0, 0, 0, 0, 0]);
        d
    }

    #[test]
    fn a_frame_must_state_its_png_size_and_format() {
        let mut f = pb::Frame {
            run_id: "r".into(),
            width: 4,
            height: 2,
            encoding: pb::FrameEncoding::Png as i32,
            data: png_header(4, 2, 8, 2),
            ..Default::default()
        };
        assert_eq!(check_frame(&f), Ok(()));
        f.data = png_header(4, 3, 8, 2);
        assert_eq!(check_frame(&f).map_err(|e| e.reason()), Err("not_png"));
        f.data = png_header(4, 2, 8, 6);
        assert_eq!(check_frame(&f).map_err(|e| e.reason()), Err("not_png"));
        f.data = png_header(4, 2, 8, 2);
        f.width = 0;
        assert_eq!(check_frame(&f).map_err(|e| e.reason()), Err("bad_size"));
        f.width = 4;
        f.render_fps = f64::NAN;
        assert_eq!(check_frame(&f).map_err(|e| e.reason()), Err("bad_fps"));
        f.render_fps = 30.0;
        f.run_id = "a/b".into();
        assert_eq!(check_frame(&f).map_err(|e| e.reason()), Err("bad_id"));
    }
}
