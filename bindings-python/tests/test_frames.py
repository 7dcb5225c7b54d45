"""Frame capture through the Gymnasium wrapper into a real daemon: CartPole in rgb_array mode
stores exactly one frame per step of the triggered episodes (and every k-th step of the
others), each step's frame_ref names its frame, and a stored episode exports to a clip that
ffprobe reads back (MP4), or to a GIF when ffmpeg is absent (absence injected by path)."""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

# CartPole's rgb_array renderer draws with pygame, which needs no display this way.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import pytest  # noqa: E402

import gym_telemetry  # noqa: E402
from gym_telemetry import FrameCapture, TelemetryWrapper  # noqa: E402

from conftest import daemon_bin  # noqa: E402


def _frame_counts(var_dir: Path, run_id: str) -> dict[int, int]:
    con = sqlite3.connect(f"file:{var_dir / 'frames' / 'index.sqlite'}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT episode, COUNT(*) FROM frames WHERE run_id = ? GROUP BY episode", (run_id,)
        ).fetchall()
    finally:
        con.close()
    return {int(e): int(n) for e, n in rows}


def _play(wrapper, episodes: int) -> dict[int, int]:
    lengths = {}
    for ep in range(episodes):
        wrapper.reset(seed=ep)
        n, done = 0, False
        while not done:
            _, _, term, trunc, _ = wrapper.step(wrapper.action_space.sample())
            n += 1
            done = term or trunc
        lengths[ep] = n
    return lengths


def capped_cubic_video_schedule(episode_id: int) -> bool:
    """Gymnasium 1.x's definition (gymnasium.utils.save_video, which cannot be imported without
    moviepy), RecordVideo's default episode trigger."""
    if episode_id < 1000:
        return int(round(episode_id ** (1.0 / 3))) ** 3 == episode_id
    return episode_id % 1000 == 0


def test_default_trigger_is_record_videos_capped_cubic_schedule():
    c = FrameCapture()
    assert c.every_k_steps is None
    for i in list(range(2100)) + [5000, 5001, 12000]:
        assert c.triggers(i) == capped_cubic_video_schedule(i), i
    with pytest.raises(ValueError):
        FrameCapture(every_k_steps=0)
    with pytest.raises(TypeError):
        FrameCapture(episode_trigger=3)


def test_capture_needs_an_rgb_array_env():
    tel = gym_telemetry.Telemetry(enabled=False)
    with pytest.raises(ValueError, match="rgb_array"):
        TelemetryWrapper(gym.make("CartPole-v1"), tel, capture_frames=FrameCapture())
    with pytest.raises(TypeError):
        TelemetryWrapper(gym.make("CartPole-v1", render_mode="rgb_array"), tel, capture_frames=object())


def test_cartpole_frames_of_triggered_episodes_are_stored_exactly_and_named_by_steps(daemon):
    endpoint = daemon.endpoint
    run = "frames-cartpole"
    tel = gym_telemetry.Telemetry(endpoint=endpoint, run_id=run, agent_id="cp")
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    env.action_space.seed(0)
    w = TelemetryWrapper(env, tel, capture_frames=FrameCapture(episode_trigger=lambda i: i in (0, 2)))
    lengths = _play(w, 4)
    assert tel.flush_frames(60)
    stats = tel.frame_stats()
    want = lengths[0] + lengths[2]
    assert (stats["captured"], stats["stored"], stats["dropped"]) == (want, want, 0), stats
    tel.close()
    assert w.telemetry_errors == 0
    daemon.stop()
    assert _frame_counts(daemon.var_dir, run) == {0: lengths[0], 2: lengths[2]}
    steps = daemon.dump(run)
    assert len(steps) == sum(lengths.values())
    for s in steps:
        ep, st = s["episode_index"], s["step_index"]
        if ep in (0, 2):
            assert s["frame_ref"] == f"{run}/{ep}/{st}/cp"
        else:
            assert not s.get("frame_ref")

    # The stored episode 2 as an MP4, checked by ffprobe (ffmpeg is a test dependency).
    assert shutil.which("ffprobe"), "ffmpeg/ffprobe must be installed (apt-get install ffmpeg)"
    clip = daemon.var_dir.parent / "ep2.mp4"
    subprocess.run([daemon_bin(), "export-video", "--var-dir", str(daemon.var_dir), "--run", run,
                    "--agent", "cp", "--episode", "2", "-o", str(clip)], check=True, timeout=120)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames,width,height,avg_frame_rate", "-of", "json", str(clip)],
        check=True, capture_output=True, timeout=60,
    )
    stream = json.loads(probe.stdout)["streams"][0]
    fps = env.metadata["render_fps"]
    assert (int(stream["nb_read_frames"]), stream["width"], stream["height"]) == (lengths[2], 600, 400)
    assert stream["avg_frame_rate"] == f"{fps}/1"
    # Without ffmpeg: an animated GIF beside it.
    subprocess.run([daemon_bin(), "export-video", "--var-dir", str(daemon.var_dir), "--run", run,
                    "--agent", "cp", "--episode", "0", "-o", str(clip.with_name("ep0.mp4")),
                    "--ffmpeg", str(clip.with_name("no-ffmpeg"))], check=True, timeout=300)
    gif = clip.with_name("ep0.gif")
    assert gif.read_bytes()[:6] == b"GIF89a"
    # Both exports are artifacts of the run.
    arts = [e.artifact for e in daemon.events(run) if e.WhichOneof("kind") == "artifact"]
    assert sorted(Path(a.path).name for a in arts) == ["ep0.gif", "ep2.mp4"]
    assert {json.loads(a.info_json)["frames"] for a in arts} == {lengths[0], lengths[2]}


def test_every_k_steps_captures_steps_0_k_2k_of_every_episode(daemon):
    endpoint = daemon.endpoint
    run = "frames-every-k"
    tel = gym_telemetry.Telemetry(endpoint=endpoint, run_id=run)
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    env.action_space.seed(1)
    w = TelemetryWrapper(env, tel, capture_frames=FrameCapture(every_k_steps=10, episode_trigger=lambda i: False))
    lengths = _play(w, 3)
    assert tel.flush_frames(60)
    tel.close()
    daemon.stop()
    assert _frame_counts(daemon.var_dir, run) == {ep: math.ceil(n / 10) for ep, n in lengths.items()}


def test_without_capture_no_frame_is_sent_and_steps_carry_no_frame_ref(daemon):
    endpoint = daemon.endpoint
    run = "frames-off"
    tel = gym_telemetry.Telemetry(endpoint=endpoint, run_id=run)
    w = TelemetryWrapper(gym.make("CartPole-v1", render_mode="rgb_array"), tel)
    _play(w, 1)
    tel.close()
    assert tel.frame_stats()["captured"] == 0
    daemon.stop()
    assert all(not s.get("frame_ref") for s in daemon.dump(run))
