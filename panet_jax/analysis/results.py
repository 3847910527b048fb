"""Finished cells of a grid, read back and summarised over seeds.

Statistics over seeds are the mean and the sample standard deviation (``ddof=1``; 0 with one
seed). A PAR effect is measured *paired by seed*: cells that differ only in ``par_weight``
share the seed, hence the initial weights and the training episodes, so the per-seed
differences cancel what the seed alone would change.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from panet_jax.analysis import grid as grid_lib


@dataclasses.dataclass(frozen=True)
class Stat:
    """Mean and std over seeds of one quantity, with its per-seed values."""

    mean: float
    std: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat | None:
        v = tuple(float(x) for x in values)
        if not v:
            return None
        std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        return cls(float(np.mean(v)), std, v)

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": len(self.values), "values": self.values}


def load_cells(grid: grid_lib.Grid, out: Path) -> dict[grid_lib.Cell, dict[str, Any]]:
    """The result JSON of every finished cell of ``grid`` in ``out``."""
    found = {}
    for cell in grid.cells():
        path = out / grid_lib.CELLS_DIR / f"{cell.name}.json"
        if path.exists():
            found[cell] = json.loads(path.read_text())
    return found


def final_score(
    cells: dict[grid_lib.Cell, dict], grid: grid_lib.Grid, seed: int, fold: int | None,
    shots: int, par: float, annotation: str, metric: str,
) -> float | None:  # fmt: skip
    """One seed's final score; ``fold=None``: the mean over the grid's folds (``None`` unless
    every fold finished)."""
    folds = grid.folds if fold is None else (fold,)
    values = []
    for f in folds:
        result = cells.get(grid_lib.Cell(f, shots, par, seed))
        if result is None or annotation not in result["final"]:
            return None
        values.append(result["final"][annotation][metric])
    return float(np.mean(values))


def seed_stat(grid: grid_lib.Grid, score: Any) -> Stat | None:
    """:class:`Stat` of ``score(seed)`` over the seeds where it is known."""
    return Stat.of(v for v in map(score, grid.seeds) if v is not None)


def paired_difference(grid: grid_lib.Grid, a: Any, b: Any) -> Stat | None:
    """Per-seed ``a(seed) - b(seed)`` over the seeds where both are known."""
    pairs = [(a(s), b(s)) for s in grid.seeds]
    return Stat.of(x - y for x, y in pairs if x is not None and y is not None)


def mean_curve(series: Sequence[tuple[Sequence[int], Sequence[float]]]) -> dict[str, list]:
    """Mean and std over seeds of curves ``(steps, values)`` on the steps they all have."""
    if not series:
        return {"steps": [], "mean": [], "std": []}
    common = sorted(set.intersection(*(set(s) for s, _ in series)))
    rows = np.array([[dict(zip(s, v, strict=True))[k] for k in common] for s, v in series])
    std = rows.std(axis=0, ddof=1) if len(rows) > 1 else np.zeros(len(common))
    return {"steps": common, "mean": rows.mean(axis=0).tolist(), "std": std.tolist()}


def curve_of(result: dict[str, Any], name: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of a training series (``loss_seg``, ``proto_l2``...) or of the
    held-out ``miou`` / ``fbiou``."""
    if name in ("miou", "fbiou"):
        return result["held_out"]["steps"], result["held_out"][name]
    return result["train"][name]["steps"], result["train"][name]["values"]


def curves(
    cells: dict[grid_lib.Cell, dict], grid: grid_lib.Grid, shots: int, par: float, name: str
) -> dict[str, list]:
    """:func:`mean_curve` of ``name`` over every finished (fold, seed) of a setting."""
    series = [
        curve_of(r, name) for c, r in cells.items() if c.shots == shots and c.par_weight == par
    ]
    return mean_curve([s for s in series if s[0]])
