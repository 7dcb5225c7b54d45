//! The frame store's promises: frames by reference, duplicates stored once, retention bounded
//! per run and in total (oldest episodes first, never a pinned one, all counted), and a
//! damaged segment reported as a missing frame by its checksum.
#![allow(clippy::unwrap_used)]

use telemetry_core::{frames::frame_ref, pb};
use telemetry_frames::{codec, FrameStore, FrameStoreOptions, Lookup, MissingReason};

fn frame(run: &str, agent: &str, ep: u64, step: u64) -> pb::Frame {
    let (w, h) = (16u32, 8u32);
    // Noise so every frame compresses to about the same, non-trivial size.
    let mut rng = fastrand_like(ep * 1000 + step);
    let rgb: Vec<u8> = (0..w * h * 3).map(|_| rng()).collect();
    pb::Frame {
        run_id: run.into(),
        agent_id: agent.into(),
        episode_index: ep,
        step_index: step,
        width: w,
        height: h,
        encoding: pb::FrameEncoding::Png as i32,
        data: codec::encode_png(w, h, &rgb).expect("encodes"),
        render_fps: 50.0,
        wall_time_unix_ns: 1,
    }
}

fn fastrand_like(seed: u64) -> impl FnMut() -> u8 {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 24) as u8
    }
}

fn opts() -> FrameStoreOptions {
    FrameStoreOptions {
        fsync: false,
        ..Default::default()
    }
}

fn found(l: Lookup) -> pb::Frame {
    match l {
        Lookup::Found(f) => *f,
        Lookup::Missing(r) => panic!("missing: {r:?}"),
    }
}

#[test]
fn frames_are_found_by_ref_latest_and_episode_listing_and_resends_are_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let store = FrameStore::open(dir.path(), opts()).unwrap();
    let batch: Vec<_> = (0..5).map(|s| frame("r1", "a/0", 2, s)).collect();
    let rep = store.append(&batch).unwrap();
    assert_eq!((rep.stored, rep.duplicates), (5, 0));
    let rep = store.append(&batch[3..]).unwrap();
    assert_eq!((rep.stored, rep.duplicates), (0, 2));

    let got = found(store.get_ref(&frame_ref("r1", "a/0", 2, 3)).unwrap());
    assert_eq!(got, batch[3]);
    let (r, latest) = store.latest("r1", None).unwrap().expect("has frames");
    assert_eq!(r, "r1/2/4/a/0");
    assert_eq!(found(latest).step_index, 4);
    assert!(store.latest("r1", Some("other")).unwrap().is_none());
    let ep = store.list_episode("r1", "a/0", 2, None, 100).unwrap();
    assert_eq!(
        ep.frames.iter().map(|f| f.step_index).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    let page = store.list_episode("r1", "a/0", 2, Some(1), 2).unwrap();
    assert_eq!(
        page.frames.iter().map(|f| f.step_index).collect::<Vec<_>>(),
        [2, 3]
    );
    assert_eq!(
        store.get_ref(&frame_ref("r1", "a/0", 2, 9)).unwrap(),
        Lookup::Missing(MissingReason::NotFound)
    );
    let s = store.stats().unwrap();
    assert_eq!(
        (s.frames_stored_total, s.duplicates_total, s.live_frames),
        (5, 2, 5)
    );
    assert_eq!(s.missing_lookups_total, 1);
    assert!(store.get_ref("not a ref").is_err());
}

#[test]
fn invalid_frames_are_rejected_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = FrameStore::open(dir.path(), opts()).unwrap();
    let mut bad_size = frame("r", "", 0, 1);
    bad_size.width = 17;
    let mut bad_run = frame("r", "", 0, 2);
    bad_run.run_id = "../x".into();
    let rep = store
        .append(&[
            frame("r", "", 0, 0),
            bad_size,
            bad_run,
            frame("r", "", 0, 3),
        ])
        .unwrap();
    assert_eq!(rep.stored, 2);
    assert_eq!(rep.rejected, vec![(1, "not_png"), (2, "bad_id")]);
    assert_eq!(store.stats().unwrap().rejected_total, 2);
}

#[test]
fn run_retention_evicts_oldest_episodes_first_never_pinned_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let one = frame("r", "a", 0, 0);
    let size = prost::Message::encoded_len(&one) as u64 + 12;
    // Room for about 10 frames per run.
    let store = FrameStore::open(
        dir.path(),
        FrameStoreOptions {
            max_run_bytes: size * 10 + size / 2,
            segment_max_bytes: size * 4,
            ..opts()
        },
    )
    .unwrap();
    for ep in 0..3 {
        let b: Vec<_> = (0..4).map(|s| frame("r", "a", ep, s)).collect();
        store.append(&b).unwrap();
    }
    // 12 frames offered, 10 fit: episode 0 (the oldest) went when episode 2 needed room.
    let s = store.stats().unwrap();
    assert_eq!(s.evicted_episodes_total, 1);
    assert_eq!(s.evicted_frames_total, 4);
    assert_eq!(s.live_frames, 8);
    assert!(s.live_bytes <= store.options().max_run_bytes);
    assert_eq!(
        store.get_ref("r/0/0/a").unwrap(),
        Lookup::Missing(MissingReason::Evicted)
    );
    found(store.get_ref("r/1/0/a").unwrap());

    // Pin episode 1: a new episode evicts 2 instead, then finds only pinned frames and itself.
    assert!(store.pin("r", "a", 1, true).unwrap());
    let b: Vec<_> = (0..8).map(|s| frame("r", "a", 3, s)).collect();
    let rep = store.append(&b).unwrap();
    assert_eq!(rep.evicted_episodes, 1);
    assert_eq!(rep.stored, 6, "4 pinned + 6 of episode 3 fill 10 frames");
    assert_eq!(rep.over_limit, 2);
    found(store.get_ref("r/1/3/a").unwrap());
    assert_eq!(
        store.get_ref("r/2/0/a").unwrap(),
        Lookup::Missing(MissingReason::Evicted)
    );
    let s = store.stats().unwrap();
    assert_eq!(
        (
            s.over_limit_total,
            s.evicted_episodes_total,
            s.pinned_episodes
        ),
        (2, 2, 1)
    );
    assert!(s.live_bytes <= store.options().max_run_bytes);
    // Emptied segments were deleted: the disk holds little more than the live frames.
    assert!(
        s.disk_bytes <= s.live_bytes + 2 * store.options().segment_max_bytes,
        "{s:?}"
    );
}

#[test]
fn total_retention_evicts_across_runs_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let size = prost::Message::encoded_len(&frame("a", "", 0, 0)) as u64 + 12;
    let store = FrameStore::open(
        dir.path(),
        FrameStoreOptions {
            max_total_bytes: size * 6 + size / 2,
            ..opts()
        },
    )
    .unwrap();
    store
        .append(&(0..3).map(|s| frame("a", "", 0, s)).collect::<Vec<_>>())
        .unwrap();
    store
        .append(&(0..3).map(|s| frame("b", "", 0, s)).collect::<Vec<_>>())
        .unwrap();
    let rep = store
        .append(&(0..3).map(|s| frame("c", "", 0, s)).collect::<Vec<_>>())
        .unwrap();
    assert_eq!((rep.stored, rep.evicted_episodes), (3, 1));
    assert_eq!(
        store.get_ref("a/0/0/").unwrap(),
        Lookup::Missing(MissingReason::Evicted)
    );
    found(store.get_ref("b/0/0/").unwrap());
    found(store.get_ref("c/0/2/").unwrap());
}

fn only_segment(dir: &std::path::Path, run: &str) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("segments").join(run))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.pop().expect("a segment")
}

#[test]
fn a_flipped_bit_or_a_torn_tail_is_a_missing_frame_found_by_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let store = FrameStore::open(dir.path(), opts()).unwrap();
    let b: Vec<_> = (0..3).map(|s| frame("r", "", 0, s)).collect();
    store.append(&b).unwrap();
    assert_eq!(store.verify().unwrap().good, 3);
    let seg = only_segment(dir.path(), "r");
    let mut bytes = std::fs::read(&seg).unwrap();
    let one = bytes.len() / 3;
    bytes[one / 2] ^= 0x40; // inside frame 0's payload
    std::fs::write(&seg, &bytes).unwrap();
    assert_eq!(
        store.get_ref("r/0/0/").unwrap(),
        Lookup::Missing(MissingReason::Corrupt)
    );
    found(store.get_ref("r/0/1/").unwrap());
    // Cut the last record short, as a crash in the middle of a write would.
    bytes.truncate(bytes.len() - 5);
    std::fs::write(&seg, &bytes).unwrap();
    assert_eq!(
        store.get_ref("r/0/2/").unwrap(),
        Lookup::Missing(MissingReason::Corrupt)
    );
    let v = store.verify().unwrap();
    assert_eq!((v.good, v.corrupt), (1, 1));
    assert!(v.torn_tail_bytes > 0);
    assert_eq!(store.stats().unwrap().corrupt_frames_total, 2);
}

#[test]
fn a_reopened_store_keeps_its_frames_totals_and_appends_after_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FrameStore::open(dir.path(), opts()).unwrap();
        store
            .append(&[frame("r", "", 0, 0), frame("r", "", 0, 1)])
            .unwrap();
    }
    let store = FrameStore::open(dir.path(), opts()).unwrap();
    let before = store.stats().unwrap().live_bytes;
    assert!(before > 0);
    let rep = store
        .append(&[frame("r", "", 0, 1), frame("r", "", 0, 2)])
        .unwrap();
    assert_eq!((rep.stored, rep.duplicates), (1, 1));
    for s in 0..3 {
        found(store.get_ref(&format!("r/0/{s}/")).unwrap());
    }
    assert_eq!(store.verify().unwrap().good, 3);
}
