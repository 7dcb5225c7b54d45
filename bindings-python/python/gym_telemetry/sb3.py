"""Stable-Baselines3 output to gym-telemetry: an output format for SB3's ``Logger``.

``TelemetryOutputFormat`` follows SB3's ``KVWriter`` protocol (``write(key_values,
key_excluded, step)``, ``close()``) and stores what ``logger.dump(step)`` writes: numbers as
scalars at ``step`` (SB3 passes ``num_timesteps``), strings as text, ``HParam`` as the run's
config plus metric scalars, as ``gym_telemetry.SummaryWriter`` does with them. Keys excluded
for ``"telemetry"`` or ``"tensorboard"`` (SB3's own ``exclude="tensorboard"`` keys, such as
``time/total_timesteps``) are not stored. Videos, figures and images are refused with SB3's
``FormatUnsupportedError`` (exclude them for this format), as SB3's text formats refuse them.

Neither ``import gym_telemetry`` nor ``import gym_telemetry.sb3`` imports SB3 (or torch). SB3's
``Logger.dump`` only writes to instances of its ``KVWriter``: a ``TelemetryOutputFormat`` made
after SB3 is imported is one (its class then also derives from ``KVWriter``), and
``configure_logger`` imports SB3 itself::

    from gym_telemetry.sb3 import configure_logger

    model = PPO("MlpPolicy", env)
    model.set_logger(configure_logger(format_strings=["stdout"], run_id="ppo-cartpole"))
    model.learn(100_000)

or add the format to a logger of your own:
``Logger(folder, [HumanOutputFormat(sys.stdout), TelemetryOutputFormat(telemetry=tel)])``.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

from ._native import Telemetry
from .tensorboard import SummaryWriter

__all__ = ["TelemetryOutputFormat", "configure_logger"]

_SB3_LOGGER = "stable_baselines3.common.logger"
_Excluded = Union[None, str, Tuple[str, ...]]
_KVWRITER_SUBCLASSES: Dict[Tuple[type, type], type] = {}


def _sb3_logger_module() -> Any:
    """SB3's logger module if something already imported it (never imports it)."""
    return sys.modules.get(_SB3_LOGGER)


def _unsupported(kind: str) -> Exception:
    mod = _sb3_logger_module()
    err = getattr(mod, "FormatUnsupportedError", None) if mod is not None else None
    if err is not None:
        return err(["telemetry"], kind)
    return NotImplementedError(
        f"The format telemetry is not supported for the {kind} value logged. You can exclude "
        "formats via the `exclude` parameter of the logger's `record` function."
    )


def _is_number(value: Any) -> bool:
    if isinstance(value, (bool, int, float)):
        return True
    # numpy scalars and one-element arrays, tensors: what .item() turns into a number.
    size = getattr(value, "size", None)
    if callable(size):  # torch: size() is a method; numel() is the count
        numel = getattr(value, "numel", None)
        size = numel() if callable(numel) else None
    return size == 1 and callable(getattr(value, "item", None))


class TelemetryOutputFormat:
    """An SB3 ``KVWriter`` that stores ``logger.dump`` output in gym-telemetry.

    TelemetryOutputFormat(telemetry=None, *, writer=None, exclude_names=("telemetry",
    "tensorboard"), **telemetry_kwargs)

    Args:
        telemetry: write through this Telemetry (not closed by ``close()``, only flushed).
        writer: or through this ``gym_telemetry.SummaryWriter``.
        exclude_names: key exclusions (``logger.record(key, v, exclude=...)``) that apply.
        **telemetry_kwargs: without either, a ``SummaryWriter(**telemetry_kwargs)`` is made
            (``log_dir=``, ``run_id=``, ``endpoint=``, ...) and closed by ``close()``.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> "TelemetryOutputFormat":
        # SB3's Logger.dump writes only to KVWriter instances: when SB3 is loaded, make this a
        # KVWriter too (without importing SB3 ourselves).
        mod = _sb3_logger_module()
        kv = getattr(mod, "KVWriter", None) if mod is not None else None
        if kv is not None and not issubclass(cls, kv):
            sub = _KVWRITER_SUBCLASSES.get((cls, kv))
            if sub is None:
                sub = type(cls.__name__, (cls, kv), {"__module__": cls.__module__, "__doc__": cls.__doc__})
                _KVWRITER_SUBCLASSES[(cls, kv)] = sub
            cls = sub
        return super().__new__(cls)

    def __init__(
        self,
        telemetry: Optional[Telemetry] = None,
        *,
        writer: Optional[SummaryWriter] = None,
        exclude_names: Iterable[str] = ("telemetry", "tensorboard"),
        **telemetry_kwargs: Any,
    ) -> None:
        if telemetry is not None and writer is not None:
            raise TypeError("pass telemetry= or writer=, not both")
        self._owns = telemetry is None and writer is None
        if writer is None:
            writer = SummaryWriter(telemetry=telemetry) if telemetry is not None else SummaryWriter(**telemetry_kwargs)
        self.writer = writer
        self.exclude_names = frozenset(exclude_names)

    @property
    def telemetry(self) -> Telemetry:
        """The Telemetry written through (pass it to the Gymnasium wrappers for env steps)."""
        return self.writer.telemetry

    def _excluded(self, excluded: _Excluded) -> bool:
        if not excluded:
            return False
        if isinstance(excluded, str):
            return excluded in self.exclude_names
        return any(e in self.exclude_names for e in excluded)

    def write(
        self,
        key_values: Mapping[str, Any],
        key_excluded: Mapping[str, _Excluded],
        step: int = 0,
    ) -> None:
        """Stores one ``logger.dump(step)``: numbers as scalars at ``step`` (one call for all
        of them), strings as text, ``HParam`` values as config and metric scalars."""
        scalars: Dict[str, Any] = {}
        for key, value in key_values.items():
            if self._excluded(key_excluded.get(key)):
                continue
            if value is None:
                continue  # record_mean(key, None): SB3 writes nothing for it either
            kind = type(value).__name__
            if isinstance(value, str):
                self.writer.add_text(key, value, step)
            elif _is_number(value):
                scalars[key] = value
            elif kind == "HParam" and hasattr(value, "hparam_dict"):
                self.writer.add_hparams(value.hparam_dict, value.metric_dict or {}, global_step=step)
            elif kind in ("Video", "Figure", "Image"):
                raise _unsupported(kind.lower())
            else:
                raise _unsupported(f"{kind} (not a number or str)")
        if scalars:
            # One native call for the whole dump (the episode tags skipped as add_scalar does).
            self.writer._log_many(scalars, step)

    def close(self) -> None:
        """Closes the writer this format made (ending its run), else flushes."""
        if self._owns:
            self.writer.close()
        else:
            self.writer.flush()


def configure_logger(
    folder: Optional[str] = None,
    format_strings: Sequence[str] = ("stdout",),
    *,
    telemetry: Optional[Telemetry] = None,
    **telemetry_kwargs: Any,
) -> Any:
    """An SB3 ``Logger`` writing SB3's own ``format_strings`` ("stdout", "csv", "json", "log",
    "tensorboard") to ``folder`` plus a ``TelemetryOutputFormat`` (through ``telemetry``, or a
    new Telemetry from ``telemetry_kwargs``, with the run named after ``folder`` when it is
    given); for ``model.set_logger(...)``. Imports SB3 (it must be installed)."""
    from stable_baselines3.common.logger import Logger, make_output_format

    formats = [make_output_format(f, folder or ".") for f in format_strings if f]
    if telemetry is not None:
        fmt = TelemetryOutputFormat(telemetry)
    else:
        if folder is not None:
            telemetry_kwargs.setdefault("log_dir", folder)
        fmt = TelemetryOutputFormat(**telemetry_kwargs)
    return Logger(folder=folder, output_formats=[*formats, fmt])
