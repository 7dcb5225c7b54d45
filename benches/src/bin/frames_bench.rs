//! `frames_store_mb_per_s`: how fast the frame store ingests 600x400 frames (PNG, as the shim
//! sends them), against writing the same compressed bytes to a plain file with the same
//! durability (one `fdatasync` per batch of 16 frames, as the store syncs each batch before
//! its index commits). The ratio is store / plain file: what the index, the checksums and
//! retention cost over the disk itself.
//!
//! Prints `BENCH frames_store_mb_per_s <MB/s> MB/s ratio=<store / plain file>`.

use std::{io::Write, time::Instant};

use telemetry_core::pb;
use telemetry_frames::{codec, FrameStore, FrameStoreOptions};

const W: u32 = 600;
const H: u32 = 400;
const BATCH: usize = 16;

/// A CartPole-like frame: white, a track line, a moving cart and a tilted pole.
fn render(i: u64) -> Vec<u8> {
    let mut rgb = vec![255u8; (W * H * 3) as usize];
    let mut put = |x: i64, y: i64, c: [u8; 3]| {
        if (0..W as i64).contains(&x) && (0..H as i64).contains(&y) {
            let k = ((y as u32 * W + x as u32) * 3) as usize;
            rgb[k..k + 3].copy_from_slice(&c);
        }
    };
    for x in 0..W as i64 {
        put(x, 300, [0, 0, 0]);
    }
    let cx = 150 + (i % 300) as i64;
    for y in 285..315 {
        for x in cx - 25..cx + 25 {
            put(x, y, [0, 0, 0]);
        }
    }
    let tilt = ((i % 40) as f64 - 20.0) / 60.0;
    for t in 0..100 {
        let (x, y) = (cx as f64 + tilt * t as f64, 290.0 - t as f64);
        for w in -5..5 {
            put(x as i64 + w, y as i64, [202, 152, 101]);
        }
    }
    rgb
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: u64 = if quick { 480 } else { 2400 };
    let frames: Vec<pb::Frame> = (0..n)
        .map(|i| pb::Frame {
            run_id: "bench".into(),
            agent_id: "a".into(),
            episode_index: i / 500,
            step_index: i % 500,
            width: W,
            height: H,
            encoding: pb::FrameEncoding::Png as i32,
            data: codec::encode_png(W, H, &render(i)).expect("encodes"),
            render_fps: 50.0,
            wall_time_unix_ns: 0,
        })
        .collect();
    let bytes: usize = frames.iter().map(|f| f.data.len()).sum();
    let mb = bytes as f64 / 1e6;

    let dir = tempfile::tempdir()?;
    let rounds = if quick { 3 } else { 5 };
    let (mut store_s, mut plain_s) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        // The plain file: the same compressed bytes, one sync per batch.
        let path = dir.path().join(format!("plain-{r}"));
        let t = Instant::now();
        let mut f = std::fs::File::create(&path)?;
        for batch in frames.chunks(BATCH) {
            for fr in batch {
                f.write_all(&fr.data)?;
            }
            f.sync_data()?;
        }
        plain_s.push(t.elapsed().as_secs_f64());
        std::fs::remove_file(&path)?;

        let sdir = dir.path().join(format!("store-{r}"));
        let store = FrameStore::open(&sdir, FrameStoreOptions::default())?;
        let t = Instant::now();
        for batch in frames.chunks(BATCH) {
            let rep = store.append(batch)?;
            assert_eq!(rep.stored as usize, batch.len());
        }
        store_s.push(t.elapsed().as_secs_f64());
        drop(store);
        std::fs::remove_dir_all(&sdir)?;
    }
    store_s.sort_by(f64::total_cmp);
    plain_s.sort_by(f64::total_cmp);
    let (s, p) = (store_s[rounds / 2], plain_s[rounds / 2]);
    eprintln!(
        "# {n} frames of {W}x{H}, {:.1} KB each compressed; store {:.1} MB/s, plain file {:.1} MB/s",
        bytes as f64 / n as f64 / 1e3,
        mb / s,
        mb / p
    );
    println!(
        "BENCH frames_store_mb_per_s {:.1} MB/s ratio={:.2}",
        mb / s,
        (mb / s) / (mb / p)
    );
    Ok(())
}
