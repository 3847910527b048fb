"""What a training run reports: the progress line (rate, ETA), TensorBoard scalars and images,
and the check that every loss read back from the devices is finite."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np


class NonFiniteLossError(FloatingPointError):
    """A step's loss was NaN or infinite (the run diverged)."""

    def __init__(self, step: int, values: dict[str, float]):
        self.step = step
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
        super().__init__(f"non-finite loss at step {step} ({shown})")


def format_duration(seconds: float) -> str:
    """``3725 -> '1h02m05s'``, ``65 -> '1m05s'``, ``nan -> '?'``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def progress_line(
    step: int, total: int, metrics: dict[str, float], episodes_per_s: float, eta_s: float
) -> str:
    """``step 120/1500 | loss 0.812 (seg 0.603, par 0.209) | lr 1.0e-03 | 9.8 ep/s | ETA 2m21s``."""
    return (
        f"step {step}/{total} | loss {metrics['loss']:.4f} "
        f"(seg {metrics['loss_seg']:.4f}, par {metrics['loss_par']:.4f}) | "
        f"lr {metrics['lr']:.1e} | {episodes_per_s:.1f} ep/s | ETA {format_duration(eta_s)}"
    )


def tensorboard_writer(workdir: str, enabled: bool = True) -> Any:
    """An asynchronous clu writer of TensorBoard events in ``workdir``; writes nothing when not
    ``enabled`` (hosts other than the first). No clu ``LoggingWriter``: the progress line is
    the log, and a second copy of every scalar in it would only be noise."""
    from clu import metric_writers  # imports TensorFlow

    from panet_jax.runtime import tf_support  # noqa: F401 (hides the GPUs from TensorFlow)

    sinks = [metric_writers.SummaryWriter(workdir)] if enabled else []
    return metric_writers.AsyncMultiWriter(sinks)


class MetricWindow:
    """Step metrics of one log window, read back from the devices one step late (so the host
    never waits for the step it just dispatched) and checked to be finite.

    ``push(step, metrics)`` queues a step's device metrics; ``settle()`` reads the queued ones
    now (:class:`NonFiniteLossError` on a NaN / inf loss); ``summary()`` settles and returns
    the window's losses averaged and ``lr`` as of its last step (a mean across a milestone
    would be a rate never used), then starts a new window.
    """

    def __init__(self) -> None:
        self._pending: tuple[int, Any] | None = None
        self._values: list[dict[str, float]] = []

    def push(self, step: int, metrics: Any) -> None:
        self.settle()
        self._pending = (step, metrics)

    def settle(self) -> None:
        if self._pending is None:
            return
        step, metrics = self._pending
        self._pending = None
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(values["loss"]):
            raise NonFiniteLossError(step, values)
        self._values.append(values)

    def summary(self) -> dict[str, float]:
        self.settle()
        window, self._values = self._values, []
        out = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
        out["lr"] = window[-1]["lr"]
        return out
