"""Shared fixtures: dry-run output readers and a real gym-telemetry-daemon on loopback.

The daemon binary comes from GYM_TELEMETRY_DAEMON_BIN (scripts/test.sh builds it and exports
the path). Tests that need it are marked ``daemon`` and skipped with a reason when it is not
set; every wait is bounded (readiness is polled with a deadline, never slept on).
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

READY = re.compile(r"listening on http://(127\.0\.0\.1:\d+)")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's GYM_TELEMETRY_* settings."""
    for k in list(os.environ):
        if k.startswith("GYM_TELEMETRY_") and k != "GYM_TELEMETRY_DAEMON_BIN":
            monkeypatch.delenv(k)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def of_type(records: list[dict], kind: str) -> list[dict]:
    return [r for r in records if r["type"] == kind]


def free_port() -> int:
    """A loopback port nobody listens on right now (for starting a daemon on it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_bin() -> str:
    path = os.environ.get("GYM_TELEMETRY_DAEMON_BIN")
    if not path:
        pytest.skip("GYM_TELEMETRY_DAEMON_BIN is not set (scripts/test.sh builds the daemon)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"GYM_TELEMETRY_DAEMON_BIN={path} is not an executable")
    return path


def _daemon_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GYM_TELEMETRY_")}
    env["GYM_TELEMETRY_LOG"] = "warn"
    return env


class Daemon:
    """One gym-telemetry-daemon process on loopback with its own var dir."""

    def __init__(self, var_dir: Path) -> None:
        self.var_dir = var_dir
        self.proc: Optional[subprocess.Popen] = None
        self.endpoint = ""

    def start(self, port: int = 0) -> str:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [daemon_bin(), "serve", "--var-dir", str(self.var_dir),
             "--listen", f"127.0.0.1:{port}", "--metrics-listen", "off"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_daemon_env(),
        )
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT
        out = b""
        try:
            while time.monotonic() < deadline:
                if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                out += chunk
                m = READY.search(out.decode(errors="replace"))
                if m:
                    self.endpoint = f"http://{m.group(1)}"
                    return self.endpoint
        finally:
            sel.close()
        self.stop()
        raise AssertionError(f"daemon did not report readiness in {START_TIMEOUT}s: {out!r}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def dump(
        self, run_id: str, episodes: bool = False, agent_id: Optional[str] = None, scalars: bool = False
    ) -> list[dict]:
        args = [daemon_bin(), "dump", "--var-dir", str(self.var_dir), "--run", run_id]
        if episodes:
            args.append("--episodes")
        if scalars:
            args.append("--scalars")
        if agent_id is not None:
            args += ["--agent", agent_id]
        out = subprocess.run(args, capture_output=True, env=_daemon_env(), timeout=60, check=True)
        return [json.loads(line) for line in out.stdout.decode().splitlines() if line.strip()]


    def events(self, run_id: str) -> list:
        """The run's stored lifecycle records (RunStarted, RunCompleted, Artifact), in seq
        order, as ``gym_telemetry.v1.Record`` messages: read from the store's ``events`` table
        (no dump or query serves them), decoded with classes generated from our proto."""
        pb2 = telemetry_pb2()
        con = sqlite3.connect(f"file:{self.var_dir / 'telemetry.sqlite'}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT body FROM events WHERE run_id = ? ORDER BY seq", (run_id,)).fetchall()
        finally:
            con.close()
        out = []
        for (body,) in rows:
            r = pb2.Record()
            r.ParseFromString(body)
            out.append(r)
        return out




def telemetry_pb2():
    """gym_telemetry/v1/telemetry_pb2 generated (once per session) from the repository's proto."""
    return v1_modules()["telemetry_pb2"]


_V1: dict = {}


def v1_modules() -> dict:
    """Every module generated (once per session) from proto/gym_telemetry/v1: telemetry_pb2,
    telemetry_pb2_grpc, policy_pb2 and policy_pb2_grpc. Each is loaded by path under a flat
    name (``gym_telemetry.v1`` would be looked up in our package), and their imports of each
    other are pointed at those names."""
    if _V1:
        return _V1
    import importlib.util
    import tempfile

    import grpc_tools
    from grpc_tools import protoc

    root = Path(__file__).resolve().parents[2] / "proto"
    out = Path(tempfile.mkdtemp(prefix="gym-telemetry-pb2-"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(root / "gym_telemetry" / "v1" / f) for f in ("policy.proto", "telemetry.proto")]
    rc = protoc.main(["grpc_tools.protoc", f"-I{root}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", *files])
    assert rc == 0, "protoc failed on proto/gym_telemetry/v1"
    for name in ("policy_pb2", "telemetry_pb2", "policy_pb2_grpc", "telemetry_pb2_grpc"):
        path = out / "gym_telemetry" / "v1" / f"{name}.py"
        text = path.read_text()
        for dep in ("policy_pb2", "telemetry_pb2"):
            text = text.replace(f"from gym_telemetry.v1 import {dep} as", f"import gym_telemetry_v1_{dep} as")
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(f"gym_telemetry_v1_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"gym_telemetry_v1_{name}"] = module
        spec.loader.exec_module(module)
        _V1[name] = module
    return _V1


@pytest.fixture
def daemon_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    started: list[Daemon] = []

    def make(name: str = "var") -> Daemon:
        d = Daemon(tmp_path / name)
        started.append(d)
        # Clients find the daemon's operator token as a user's would: through its var dir
        # (the daemon makes <var-dir>/auth-token on first start).
        monkeypatch.setenv("GYM_TELEMETRY_VAR_DIR", str(d.var_dir))
        return d

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def daemon(daemon_factory) -> Daemon:
    d = daemon_factory()
    d.start()
    return d
