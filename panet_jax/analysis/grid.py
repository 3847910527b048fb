"""The analysis grid: which training runs (cells) the paper's analyses need, and their commands.

A cell is one training run: ``(fold, shots, par_weight, seed)``; it is trained once and then
evaluated with every support annotation (dense / scribble / bbox), so annotations are not a
grid axis of training. Every cell is one subprocess, ``python -m panet_jax.analysis.cell``
with ``--config.<key>=<value>`` overrides, so its exact command can be written down and rerun.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

ANNOTATIONS = ("dense", "scribble", "bbox")
PAR_WEIGHTS = (0.0, 1.0)  # PAR off / on (the paper's lambda = 1)
CELLS_DIR = "cells"  # under the analysis output directory: <name>/ (workdir), <name>.json


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    fold: int
    shots: int
    par_weight: float
    seed: int

    @property
    def name(self) -> str:
        """``fold0_1shot_par1_seed2`` (unique within a grid, a valid file name)."""
        return f"fold{self.fold}_{self.shots}shot_par{self.par_weight:g}_seed{self.seed}"

    def overrides(self) -> list[str]:
        """The ``--config.*`` flags that make a config this cell."""
        return [
            f"--config.data.fold={self.fold}",
            f"--config.data.n_shots={self.shots}",
            f"--config.train.par_weight={self.par_weight:g}",
            f"--config.seed={self.seed}",
        ]


@dataclasses.dataclass(frozen=True)
class Grid:
    """The axes of a grid and the evaluation budget of every cell.

    ``curve_every``: steps between the checkpoints scored for the held-out mIoU curve (dense,
    one run of ``curve_episodes``); ``final_episodes``: episodes of the one run per annotation
    that scores the last checkpoint.
    """

    folds: tuple[int, ...]
    shots: tuple[int, ...]
    seeds: tuple[int, ...]
    par_weights: tuple[float, ...] = PAR_WEIGHTS
    annotations: tuple[str, ...] = ANNOTATIONS
    curve_every: int = 100
    curve_episodes: int = 100
    final_episodes: int = 300

    def cells(self) -> list[Cell]:
        """Every cell, seeds outermost: a grid stopped early has whole seeds of every setting."""
        return [
            Cell(fold, shots, par, seed)
            for seed in self.seeds
            for fold in self.folds
            for shots in self.shots
            for par in self.par_weights
        ]


DEFAULT = Grid(folds=(0,), shots=(1, 5), seeds=(0, 1, 2), curve_every=125, final_episodes=250)
QUICK = Grid(folds=(0,), shots=(1,), seeds=(0, 1), curve_every=50, curve_episodes=50,
             final_episodes=100)  # fmt: skip
GRIDS = {"default": DEFAULT, "quick": QUICK}


def cell_command(
    grid: Grid, cell: Cell, config: str, out: Path, extra: Sequence[str] = ()
) -> list[str]:
    """The argv that trains and scores ``cell`` into ``out/cells/<name>[.json]``.

    ``config``: a ``--config`` value (``configs/x.py[:arg]``); ``extra``: more ``--config.*``
    overrides for every cell (applied after the cell's own, so they win).
    """
    cells = out / CELLS_DIR
    return [
        sys.executable, "-m", "panet_jax.analysis.cell",
        f"--config={config}",
        f"--workdir={cells / cell.name}",
        f"--result={cells / (cell.name + '.json')}",
        f"--curve_every={grid.curve_every}",
        f"--curve_episodes={grid.curve_episodes}",
        f"--final_episodes={grid.final_episodes}",
        f"--annotations={','.join(grid.annotations)}",
        *cell.overrides(),
        *extra,
    ]  # fmt: skip


def shell_line(argv: Sequence[str]) -> str:
    """``argv`` as one copy-pasteable shell line."""
    return shlex.join(argv)


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """``"0,1,2" -> (0, 1, 2)``; ``ValueError`` naming ``what`` otherwise."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{what}={text!r}: expected comma-separated integers") from None
    if not values:
        raise ValueError(f"{what}={text!r}: expected at least one integer")
    return values
