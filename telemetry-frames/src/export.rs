//! An episode's stored frames to a video file.
//!
//! Shareable clips are rebuilt after the fact from what the store holds, one frame in memory at
//! a time: each stored PNG is decoded to raw RGB and either piped to `ffmpeg` (MP4/H.264 or
//! WebM/VP9, when ffmpeg is installed) or fed to a pure-Rust GIF encoder (when it is not, or
//! when a `.gif` is asked for). The clip is written beside its final name and renamed into
//! place, so a failed export never leaves half a file under the requested name.

use crate::{codec, FrameStore, Lookup, StoreError};
use std::{
    io::{self, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};
use telemetry_core::frames::FrameKey;

/// Frames rendered per second when the env reported none.
pub const DEFAULT_FPS: f64 = 30.0;
/// Bytes of ffmpeg's stderr kept for an error message.
const STDERR_KEPT: usize = 8192;

/// A clip format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoFormat {
    /// MP4 with H.264 (ffmpeg's libx264), yuv420p.
    Mp4,
    /// WebM with VP9 (ffmpeg's libvpx-vp9).
    Webm,
    /// Animated GIF (pure Rust, no ffmpeg).
    Gif,
}

impl VideoFormat {
    /// The format a file name's extension asks for (`None`: unknown extension).
    pub fn from_path(path: &Path) -> Option<VideoFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "mp4" => Some(VideoFormat::Mp4),
            "webm" => Some(VideoFormat::Webm),
            "gif" => Some(VideoFormat::Gif),
            _ => None,
        }
    }

    /// The file extension / name of the format.
    pub fn as_str(self) -> &'static str {
        match self {
            VideoFormat::Mp4 => "mp4",
            VideoFormat::Webm => "webm",
            VideoFormat::Gif => "gif",
        }
    }
}

/// How to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// The format (`None`: from the output's extension).
    pub format: Option<VideoFormat>,
    /// The ffmpeg executable (`None`: `ffmpeg` on `PATH`). A path that does not run is taken as
    /// "ffmpeg is not installed", so tests can inject its absence.
    pub ffmpeg: Option<PathBuf>,
    /// Frames per second (`None`: the frames' `render_fps`, else [`DEFAULT_FPS`]).
    pub fps: Option<f64>,
    /// Largest frame accepted, in pixels (default when 0: 8192 x 8192).
    pub max_pixels: u64,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportReport {
    /// The file written (the requested one, or with `.gif` when ffmpeg was absent).
    pub path: PathBuf,
    /// Its format.
    pub format: VideoFormat,
    /// Frames in the clip.
    pub frames: u64,
    /// Frames of the episode that were listed but could not be read (evicted meanwhile,
    /// corrupt) or had another size than the first: skipped.
    pub skipped: u64,
    /// Frame size.
    pub width: u32,
    /// Frame size.
    pub height: u32,
    /// Frames per second of the clip.
    pub fps: f64,
    /// Whether MP4/WebM was asked for but ffmpeg was absent, so a GIF was written instead.
    pub fell_back_to_gif: bool,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The episode has no readable frame.
    #[error("run {run_id} agent {agent_id:?} episode {episode} has no stored frames")]
    NoFrames {
        /// The run.
        run_id: String,
        /// The agent.
        agent_id: String,
        /// The episode.
        episode: u64,
    },
    /// The output name has no known extension and no format was given.
    #[error("cannot tell the format of {0} (use .mp4, .webm or .gif)")]
    UnknownFormat(PathBuf),
    /// A stored frame failed to decode.
    #[error("decoding a stored frame: {0}")]
    Codec(#[from] codec::CodecError),
    /// The fps is not a positive finite number.
    #[error("fps {0} must be a positive number")]
    BadFps(f64),
    /// Writing the clip failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The GIF encoder failed.
    #[error("gif: {0}")]
    Gif(#[from] gif::EncodingError),
    /// ffmpeg ran and failed.
    #[error("ffmpeg failed ({status}): {stderr}")]
    Ffmpeg {
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
}

/// Whether `ffmpeg` (the given path, or `ffmpeg` on PATH) runs.
pub fn ffmpeg_available(ffmpeg: Option<&Path>) -> bool {
    Command::new(ffmpeg.unwrap_or(Path::new("ffmpeg")))
        .arg("-version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Exports one episode of `(run_id, agent_id)` to `out`.
pub fn export_episode(
    store: &FrameStore,
    run_id: &str,
    agent_id: &str,
    episode: u64,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport, ExportError> {
    let asked = match opts.format {
        Some(f) => f,
        None => {
            VideoFormat::from_path(out).ok_or_else(|| ExportError::UnknownFormat(out.into()))?
        }
    };
    let ffmpeg = opts.ffmpeg.clone().unwrap_or_else(|| "ffmpeg".into());
    let (format, path, fell_back) = if asked != VideoFormat::Gif && !ffmpeg_available(Some(&ffmpeg))
    {
        tracing::warn!(ffmpeg = %ffmpeg.display(), "ffmpeg is not installed: writing an animated GIF instead");
        (VideoFormat::Gif, out.with_extension("gif"), true)
    } else {
        (asked, out.to_owned(), false)
    };
    let max_pixels = if opts.max_pixels == 0 {
        8192 * 8192
    } else {
        opts.max_pixels
    };

    // The steps of the episode (index only), page by page.
    let mut steps = Vec::new();
    let mut after = None;
    let mut listed_fps = 0.0;
    loop {
        let page = store.list_episode(run_id, agent_id, episode, after, crate::MAX_LIST)?;
        let Some(last) = page.frames.last() else {
            break;
        };
        after = Some(last.step_index);
        if listed_fps == 0.0 {
            listed_fps = page
                .frames
                .iter()
                .map(|f| f.render_fps)
                .find(|f| *f > 0.0)
                .unwrap_or(0.0);
        }
        let n = page.frames.len();
        steps.extend(page.frames.into_iter().map(|f| f.step_index));
        if n < crate::MAX_LIST {
            break;
        }
    }
    let fps = opts.fps.unwrap_or(if listed_fps > 0.0 {
        listed_fps
    } else {
        DEFAULT_FPS
    });
    if !fps.is_finite() || fps <= 0.0 {
        return Err(ExportError::BadFps(fps));
    }
    let no_frames = || ExportError::NoFrames {
        run_id: run_id.into(),
        agent_id: agent_id.into(),
        episode,
    };
    let mut frames = steps.into_iter().filter_map(|step| {
        let key = FrameKey {
            run_id: run_id.into(),
            agent_id: agent_id.into(),
            episode_index: episode,
            step_index: step,
        };
        match store.get(&key) {
            Ok(Lookup::Found(f)) => Some(Ok(f)),
            Ok(Lookup::Missing(_)) => None,
            Err(e) => Some(Err(ExportError::from(e))),
        }
    });
    // The first readable frame fixes the size.
    let mut skipped = 0u64;
    let first = loop {
        match frames.next() {
            None => return Err(no_frames()),
            Some(Err(e)) => return Err(e),
            Some(Ok(f)) => match codec::decode_png(&f.data, max_pixels) {
                Ok(rgb) => break rgb,
                Err(e) => {
                    tracing::warn!(error = %e, step = f.step_index, "skipping an undecodable frame");
                    skipped += 1;
                }
            },
        }
    };
    let (width, height) = (first.width, first.height);
    let partial = partial_path(&path);
    let mut count = 0u64;
    let result = {
        let mut next =
            |count: &mut u64, skipped: &mut u64| -> Result<Option<Vec<u8>>, ExportError> {
                loop {
                    match frames.next() {
                        None => return Ok(None),
                        Some(Err(e)) => return Err(e),
                        Some(Ok(f)) => match codec::decode_png(&f.data, max_pixels) {
                            Ok(rgb) if rgb.width == width && rgb.height == height => {
                                *count += 1;
                                return Ok(Some(rgb.pixels));
                            }
                            _ => *skipped += 1,
                        },
                    }
                }
            };
        count += 1;
        let mut first_pixels = Some(first.pixels);
        let mut source = || -> Result<Option<Vec<u8>>, ExportError> {
            if let Some(p) = first_pixels.take() {
                return Ok(Some(p));
            }
            next(&mut count, &mut skipped)
        };
        match format {
            VideoFormat::Gif => write_gif(&partial, width, height, fps, &mut source),
            VideoFormat::Mp4 | VideoFormat::Webm => {
                write_ffmpeg(&ffmpeg, format, &partial, width, height, fps, &mut source)
            }
        }
    };
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &path).map_err(|source| ExportError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(ExportReport {
        path,
        format,
        frames: count,
        skipped,
        width,
        height,
        fps,
        fell_back_to_gif: fell_back,
    })
}

fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

type Source<'a> = dyn FnMut() -> Result<Option<Vec<u8>>, ExportError> + 'a;

fn write_gif(
    path: &Path,
    width: u32,
    height: u32,
    fps: f64,
    source: &mut Source<'_>,
) -> Result<(), ExportError> {
    let io_err = |source: io::Error| ExportError::Io {
        path: path.to_owned(),
        source,
    };
    let (w, h) = (
        u16::try_from(width)
            .map_err(|_| codec::CodecError::Format("at most 65535 wide for GIF"))?,
        u16::try_from(height)
            .map_err(|_| codec::CodecError::Format("at most 65535 high for GIF"))?,
    );
    let file = std::fs::File::create(path).map_err(io_err)?;
    let mut enc = gif::Encoder::new(io::BufWriter::new(file), w, h, &[])?;
    enc.set_repeat(gif::Repeat::Infinite)?;
    // GIF delays are in hundredths of a second: the closest to the fps, at least 2 (browsers
    // slow anything faster down to 10).
    let delay = ((100.0 / fps).round() as u16).max(2);
    while let Some(pixels) = source()? {
        let mut frame = gif::Frame::from_rgb_speed(w, h, &pixels, 20);
        frame.delay = delay;
        enc.write_frame(&frame)?;
    }
    let mut inner = enc.into_inner()?;
    inner.flush().map_err(io_err)?;
    Ok(())
}

fn write_ffmpeg(
    ffmpeg: &Path,
    format: VideoFormat,
    path: &Path,
    width: u32,
    height: u32,
    fps: f64,
    source: &mut Source<'_>,
) -> Result<(), ExportError> {
    let (codec, muxer): (&[&str], &str) = match format {
        VideoFormat::Webm => (
            &[
                "-c:v",
                "libvpx-vp9",
                "-b:v",
                "0",
                "-crf",
                "32",
                "-row-mt",
                "1",
            ],
            "webm",
        ),
        _ => (
            &["-c:v", "libx264", "-preset", "veryfast", "-crf", "23"],
            "mp4",
        ),
    };
    let mut child = Command::new(ffmpeg)
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24"])
        .args(["-s", &format!("{width}x{height}")])
        .args(["-framerate", &format!("{fps}")])
        .args(["-i", "pipe:0"])
        // yuv420p needs even sides; pad odd ones by a pixel.
        .args([
            "-vf",
            "pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(codec)
        .args(["-f", muxer])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ExportError::Io {
            path: ffmpeg.to_owned(),
            source,
        })?;
    // Drain stderr on its own thread so ffmpeg never blocks on a full pipe.
    let stderr = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = e.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = STDERR_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            String::from_utf8_lossy(&kept).into_owned()
        })
    });
    let mut write_err = None;
    if let Some(mut stdin) = child.stdin.take() {
        loop {
            match source() {
                Ok(Some(pixels)) => {
                    if let Err(e) = stdin.write_all(&pixels) {
                        write_err = Some(ExportError::Io {
                            path: ffmpeg.to_owned(),
                            source: e,
                        });
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    write_err = Some(e);
                    break;
                }
            }
        }
    }
    let status = child.wait().map_err(|source| ExportError::Io {
        path: ffmpeg.to_owned(),
        source,
    })?;
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if !status.success() {
        return Err(ExportError::Ffmpeg {
            status: status.to_string(),
            stderr: stderr.trim().to_owned(),
        });
    }
    match write_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
