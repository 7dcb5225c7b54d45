"""Telemetry.log_scalar / Telemetry.log without a daemon: values, steps, errors (dry-run JSONL)."""

from __future__ import annotations

import fractions
import math
from pathlib import Path

import numpy as np
import pytest

from gym_telemetry import Telemetry

from conftest import of_type, read_jsonl


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out.jsonl"


def dry(out: Path, **kw) -> Telemetry:
    return Telemetry(dry_run=str(out), run_id="run-s", **kw)


class FakeTensor:
    """What torch / jax scalars look like to us: an object with .item() (no import)."""

    def __init__(self, *values: float) -> None:
        self.values = values

    def item(self) -> float:
        if len(self.values) != 1:
            raise RuntimeError(f"a Tensor with {len(self.values)} elements cannot be converted to Scalar")
        return self.values[0]


def scalars(out: Path) -> list[dict]:
    return of_type(read_jsonl(out), "scalar")


def value_of(line: dict) -> float:
    v = line["value"]
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(v, v) if isinstance(v, str) else v


@pytest.mark.parametrize(
    "value, expected",
    [
        (0.25, 0.25),
        (3, 3.0),
        (True, 1.0),
        (False, 0.0),
        (np.float32(0.5), 0.5),
        (np.float64(-2.5), -2.5),
        (np.int64(7), 7.0),
        (np.bool_(True), 1.0),
        (np.array(1.5), 1.5),
        (np.array([4.0]), 4.0),  # CleanRL under gymnasium 0.29: info["episode"]["r"] has shape (1,)
        (FakeTensor(0.125), 0.125),
        (fractions.Fraction(1, 4), 0.25),
        (float("inf"), math.inf),
        (-math.inf, -math.inf),
        (2**70, float(2**70)),
    ],
)
def test_accepted_values(out: Path, value, expected: float) -> None:
    with dry(out) as tel:
        tel.log_scalar("losses/x", value, 3)
    (s,) = scalars(out)
    assert (s["tag"], s["step"], value_of(s)) == ("losses/x", 3, expected)
    assert s["run_id"] == "run-s" and "agent_id" not in s, "run-wide unless agent_id is given"


def test_nan_is_a_value_not_an_error(out: Path) -> None:
    with dry(out) as tel:
        tel.log_scalar("losses/diverged", float("nan"), 1)
        tel.log_scalar("losses/diverged", np.float32("nan"), 2)
    assert [s["value"] for s in scalars(out)] == ["NaN", "NaN"]
    assert tel.stats()["invalid_calls"] == 0


@pytest.mark.parametrize(
    "value, what",
    [
        ([1.0], "list"),
        ((1.0,), "tuple"),
        ("0.5", "str"),
        (b"1", "bytes"),
        (None, "NoneType"),
        (np.array([1.0, 2.0]), "ndarray"),
        (np.zeros((2, 2)), "ndarray"),
        (FakeTensor(1.0, 2.0), "FakeTensor"),
        (FakeTensor("x"), "FakeTensor of str"),
        ({"a": 1}, "dict"),
        (1 + 2j, "complex"),
    ],
)
def test_non_scalars_are_type_errors_naming_the_tag(out: Path, value, what: str) -> None:
    with dry(out) as tel:
        with pytest.raises(TypeError, match=r'scalar "charts/bad".*' + what):
            tel.log_scalar("charts/bad", value, 0)
    assert scalars(out) == []
    assert tel.stats()["invalid_calls"] == 1


@pytest.mark.parametrize("tag", ["", "a\nb", "x" * 257])
def test_bad_tags_are_value_errors(out: Path, tag: str) -> None:
    with dry(out) as tel:
        with pytest.raises(ValueError, match="tag"):
            tel.log_scalar(tag, 1.0, 0)
    assert scalars(out) == []


def test_steps(out: Path) -> None:
    with dry(out) as tel:
        with pytest.raises(ValueError, match="step must be >= 0, got -1"):
            tel.log_scalar("a", 1.0, -1)
        with pytest.raises(TypeError, match="step must be an int"):
            tel.log_scalar("a", 1.0, 1.5)
        with pytest.raises(TypeError, match="step must be an int, not bool"):
            tel.log_scalar("a", 1.0, True)
        tel.log_scalar("a", 1.0, np.int64(9))
        tel.log_scalar("a", 1.0, 2**62)
        with pytest.raises(ValueError, match="out of range"):
            tel.log_scalar("a", 1.0, 2**63)
    assert [s["step"] for s in scalars(out)] == [9, 2**62]


def test_default_step_is_the_global_step_of_every_agent(out: Path) -> None:
    with dry(out) as tel:
        assert tel.global_step == 0
        tel.log_scalar("a", 0.0)
        for i in range(3):
            tel.step(i, 0, 0.0, agent_id="p0")
            tel.step(i, 0, 0.0, agent_id="p1")
            tel.log({"a": float(i), "b": i})
        tel.record_jsonl('{"type": "step", "run_id": "run-s", "episode_index": 0, "step_index": 0}')
        tel.log_scalar("a", 9.0)
        assert tel.global_step == 7
        with pytest.raises(ValueError):
            tel.step(0, 0, float("nan"))  # not recorded: not counted
        assert tel.global_step == 7
    got = [(s["tag"], s["step"], s["value"]) for s in scalars(out)]
    assert got == [
        ("a", 0, 0.0),
        ("a", 2, 0.0), ("b", 2, 0.0),
        ("a", 4, 1.0), ("b", 4, 1.0),
        ("a", 6, 2.0), ("b", 6, 2.0),
        ("a", 7, 9.0),
    ]


def test_log_checks_everything_before_sending_anything(out: Path) -> None:
    with dry(out) as tel:
        with pytest.raises(TypeError, match='scalar "bad"'):
            tel.log({"good": 1.0, "bad": [1, 2], "also": 2.0}, 5)
        with pytest.raises(TypeError, match="tag must be a str, not int"):
            tel.log({1: 1.0}, 5)
        with pytest.raises(TypeError, match="mapping"):
            tel.log([("a", 1.0)], 5)
        tel.log({}, 5)
        tel.log({"x": 1, "y": np.float32(2.0)}, 6, agent_id="learner", walltime=1_700_000_000.5)
    got = scalars(out)
    assert [(s["tag"], s["step"], s["agent_id"]) for s in got] == [("x", 6, "learner"), ("y", 6, "learner")]
    assert got[0]["ts_unix_ns"] == got[1]["ts_unix_ns"] == 1_700_000_000_500_000_000


def test_walltime_must_be_seconds(out: Path) -> None:
    with dry(out) as tel:
        with pytest.raises(ValueError, match="walltime"):
            tel.log_scalar("a", 1.0, 0, walltime=-1.0)
        with pytest.raises(TypeError, match="walltime"):
            tel.log_scalar("a", 1.0, 0, walltime="now")


def test_disabled_is_a_no_op(out: Path) -> None:
    tel = Telemetry(enabled=False)
    tel.log_scalar("a", [1, 2])  # not even checked: every call of a disabled Telemetry is a no-op
    tel.log({"a": 1.0})
    tel.close()
