//! Export of a stored episode: MP4 and WebM through ffmpeg, checked with ffprobe (frame count,
//! size), and the pure-Rust GIF path when ffmpeg is absent (absence injected by path).
//! ffmpeg/ffprobe must be installed for the first two (`apt-get install ffmpeg`; CI does).
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Command};
use telemetry_core::pb;
use telemetry_frames::{
    codec,
    export::{export_episode, ExportOptions, VideoFormat},
    FrameStore, FrameStoreOptions,
};

const W: u32 = 60;
const H: u32 = 40;

fn store_episode(dir: &Path, steps: u64, fps: f64) -> FrameStore {
    let store = FrameStore::open(
        dir,
        FrameStoreOptions {
            fsync: false,
            ..Default::default()
        },
    )
    .unwrap();
    let frames: Vec<_> = (0..steps)
        .map(|s| {
            // A bar that moves with the step, so every frame differs.
            let mut rgb = vec![255u8; (W * H * 3) as usize];
            for y in 0..H {
                let x = (s as u32 * 3) % W;
                let i = ((y * W + x) * 3) as usize;
                rgb[i..i + 3].copy_from_slice(&[200, 30, 30]);
            }
            pb::Frame {
                run_id: "run".into(),
                agent_id: "a".into(),
                episode_index: 1,
                step_index: s,
                width: W,
                height: H,
                encoding: pb::FrameEncoding::Png as i32,
                data: codec::encode_png(W, H, &rgb).unwrap(),
                render_fps: fps,
                wall_time_unix_ns: 0,
            }
        })
        .collect();
    assert_eq!(store.append(&frames).unwrap().stored as u64, steps);
    store
}

fn ffprobe(path: &Path) -> (u64, u32, u32, String) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,width,height,codec_name,avg_frame_rate",
        ])
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(path)
        .output()
        .expect("ffprobe is installed (apt-get install ffmpeg)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} in {text}"))
            .to_owned()
    };
    (
        get("nb_read_frames").parse().unwrap(),
        get("width").parse().unwrap(),
        get("height").parse().unwrap(),
        format!("{} {}", get("codec_name"), get("avg_frame_rate")),
    )
}

#[test]
fn an_episode_exports_to_mp4_and_webm_with_every_frame_at_the_env_fps() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_episode(dir.path(), 37, 50.0);
    for (name, codec) in [("clip.mp4", "h264 50/1"), ("clip.webm", "vp9 50/1")] {
        let out = dir.path().join(name);
        let rep = export_episode(&store, "run", "a", 1, &out, &ExportOptions::default()).unwrap();
        assert!(!rep.fell_back_to_gif);
        assert_eq!(
            (rep.frames, rep.width, rep.height, rep.fps),
            (37, W, H, 50.0)
        );
        assert_eq!(ffprobe(&out), (37, W, H, codec.to_owned()), "{name}");
    }
}

#[test]
fn without_ffmpeg_an_animated_gif_is_written_in_pure_rust() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_episode(dir.path(), 12, 25.0);
    let out = dir.path().join("clip.mp4");
    let opts = ExportOptions {
        ffmpeg: Some(dir.path().join("no-ffmpeg-here")),
        ..Default::default()
    };
    let rep = export_episode(&store, "run", "a", 1, &out, &opts).unwrap();
    assert!(rep.fell_back_to_gif);
    assert_eq!(rep.format, VideoFormat::Gif);
    assert_eq!(rep.path, dir.path().join("clip.gif"));
    assert!(!out.exists());
    // Read it back with the gif decoder: 12 frames of 60x40, 4/100 s each (25 fps).
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::RGBA);
    let mut dec = opts
        .read_info(std::fs::File::open(&rep.path).unwrap())
        .unwrap();
    assert_eq!((u32::from(dec.width()), u32::from(dec.height())), (W, H));
    let mut n = 0;
    while let Some(f) = dec.read_next_frame().unwrap() {
        assert_eq!(f.delay, 4);
        n += 1;
    }
    assert_eq!(n, 12);
}

#[test]
fn an_episode_without_frames_is_a_typed_error_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_episode(dir.path(), 2, 0.0);
    let out = dir.path().join("none.gif");
    let err = export_episode(&store, "run", "a", 7, &out, &ExportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("no stored frames"), "{err}");
    assert!(!out.exists());
    let bad = export_episode(
        &store,
        "run",
        "a",
        1,
        &dir.path().join("x.avi"),
        &ExportOptions::default(),
    );
    assert!(bad.is_err());
}
