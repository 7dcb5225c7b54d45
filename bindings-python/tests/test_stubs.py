"""_native.pyi matches the compiled module: the same names, parameters, kinds and defaults."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import gym_telemetry
from gym_telemetry import _native

STUB = Path(gym_telemetry.__file__).with_name("_native.pyi")


def stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text(encoding="utf-8"))


def stub_params(fn: ast.FunctionDef, drop_self: bool) -> list[tuple[str, str, object]]:
    a = fn.args
    out: list[tuple[str, str, object]] = []
    positional = a.posonlyargs + a.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(a.defaults)) + [
        ast.literal_eval(d) for d in a.defaults
    ]
    for arg, default in zip(positional, defaults):
        out.append((arg.arg, "POSITIONAL_OR_KEYWORD", default))
    if a.vararg:
        out.append((a.vararg.arg, "VAR_POSITIONAL", inspect.Parameter.empty))
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append((arg.arg, "KEYWORD_ONLY", inspect.Parameter.empty if d is None else ast.literal_eval(d)))
    if a.kwarg:
        out.append((a.kwarg.arg, "VAR_KEYWORD", inspect.Parameter.empty))
    return out[1:] if drop_self else out


def native_params(obj) -> list[tuple[str, str, object]]:
    sig = inspect.signature(obj)
    return [
        (p.name, "POSITIONAL_OR_KEYWORD" if p.kind is p.POSITIONAL_ONLY else p.kind.name, p.default)
        for p in sig.parameters.values()
        if p.name != "self"
    ]


def stub_functions() -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in stub_tree().body if isinstance(n, ast.FunctionDef)}


def stub_classes() -> dict[str, ast.ClassDef]:
    return {n.name: n for n in stub_tree().body if isinstance(n, ast.ClassDef)}


def test_every_public_name_is_stubbed_and_exists() -> None:
    native = {n for n in dir(_native) if not n.startswith("__")}
    stubbed = set(stub_functions()) | set(stub_classes())
    assert native == stubbed


@pytest.mark.parametrize("name", sorted(stub_functions()))
def test_function_signatures(name: str) -> None:
    assert native_params(getattr(_native, name)) == stub_params(stub_functions()[name], drop_self=False)


@pytest.mark.parametrize("name", ["Telemetry", "Json", "EpisodeRecorder"])
def test_class_methods_and_properties(name: str) -> None:
    cls = stub_classes()[name]
    native_cls = getattr(_native, name)
    stub_methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    properties = {
        m for m, n in stub_methods.items()
        if any(isinstance(d, ast.Name) and d.id == "property" for d in n.decorator_list)
    }
    native_props = {n for n, v in vars(native_cls).items() if inspect.isgetsetdescriptor(v)}
    assert properties == native_props
    native_methods = {
        n for n, v in vars(native_cls).items()
        if callable(v) and (not n.startswith("__") or n in ("__enter__", "__exit__"))
    }
    assert set(stub_methods) - properties - {"__init__"} == native_methods
    assert native_params(native_cls) == stub_params(stub_methods["__init__"], drop_self=True)
    for method in sorted(native_methods):
        assert native_params(getattr(native_cls, method)) == stub_params(
            stub_methods[method], drop_self=True
        ), method


def test_exception_is_stubbed_as_an_exception() -> None:
    bases = [b.id for b in stub_classes()["TelemetryError"].bases if isinstance(b, ast.Name)]
    assert bases == ["Exception"] and issubclass(_native.TelemetryError, Exception)


def test_package_ships_the_typing_marker() -> None:
    assert STUB.with_name("py.typed").exists()
