"""The grid's results as the paper's tables (Markdown) and as flat JSON records.

* dense supports: rows PANet without / with PAR and their paired difference, columns the folds
  and their mean for each shot count (the layout of the paper's Tables 1 and 3);
* support annotations: rows dense / scribble / bbox (and each weak one minus dense, paired),
  columns 1 / 5 shots, fold mean (Table 5);
* convergence and alignment: held-out mIoU at every scored checkpoint, and the last logged
  segmentation loss and prototype distances, without / with PAR.
"""

from __future__ import annotations

import functools
from typing import Any

from panet_jax.analysis import grid as grid_lib
from panet_jax.analysis import results as res

METHOD = {0.0: "PANet w/o PAR", 1.0: "PANet"}
METRICS = {"miou": "mIoU", "fbiou": "FB-IoU"}
FINAL_SERIES = ("loss_seg", "proto_l2", "proto_cos")


def method(par: float) -> str:
    return METHOD.get(par, f"PANet (PAR weight {par:g})")


def fmt(stat: res.Stat | None, scale: float = 100.0, sign: bool = False, digits: int = 1) -> str:
    """``47.4 ± 1.2`` (percent by default); ``-`` when nothing finished."""
    if stat is None:
        return "-"
    mean = f"{stat.mean * scale:+.{digits}f}" if sign else f"{stat.mean * scale:.{digits}f}"
    return f"{mean} ± {stat.std * scale:.{digits}f}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(first: list[str], columns: list[str]) -> list[str]:
    head = [*first, *columns]
    return [_row(head), _row(["---"] * len(head))]


class Tables:
    """Markdown lines and JSON records of one grid's finished cells."""

    def __init__(self, grid: grid_lib.Grid, cells: dict[grid_lib.Cell, dict]):
        self.grid, self.cells, self.records = grid, cells, []

    def score(self, fold, shots, par, annotation, metric):
        return functools.partial(
            lambda seed: res.final_score(self.cells, self.grid, seed, fold, shots, par,
                                         annotation, metric))  # fmt: skip

    def difference(self, a: tuple, b: tuple, metric: str) -> res.Stat | None:
        """Paired (by seed) difference of the final scores of settings ``a`` and ``b``, each
        ``(fold or None, shots, par_weight, annotation)``."""
        return res.paired_difference(self.grid, self.score(*a, metric), self.score(*b, metric))

    def record(self, stat: res.Stat | None, **where: Any) -> res.Stat | None:
        if stat is not None:
            self.records.append({**where, **stat.as_dict()})
        return stat

    def dense(self, metric: str) -> list[str]:
        g = self.grid
        folds = [*g.folds, None]
        cols = [f"{k}-shot {'mean' if f is None else f'fold {f}'}" for k in g.shots for f in folds]
        lines = _header(["method"], cols)
        where = dict(table="dense", metric=metric, annotation="dense")
        for par in g.par_weights:
            row = [self.record(res.seed_stat(g, self.score(f, k, par, "dense", metric)),
                               shots=k, par_weight=par, fold=f, **where)
                   for k in g.shots for f in folds]  # fmt: skip
            lines.append(_row([method(par), *map(fmt, row)]))
        if len(g.par_weights) == 2:
            off, on = g.par_weights
            diff = [self.record(self.difference((f, k, on, "dense"), (f, k, off, "dense"), metric),
                                shots=k, par_weight="difference", fold=f, **where)
                    for k in g.shots for f in folds]  # fmt: skip
            lines.append(_row(["PAR minus w/o PAR (paired)", *(fmt(d, sign=True) for d in diff)]))
        return lines

    def annotations(self, metric: str) -> list[str]:
        g = self.grid
        lines = _header(["method", "support"], [f"{k}-shot" for k in g.shots])
        where = dict(table="annotation", metric=metric, fold=None)
        for par in g.par_weights:
            for a in g.annotations:
                row = [self.record(res.seed_stat(g, self.score(None, k, par, a, metric)),
                                   shots=k, par_weight=par, annotation=a, **where)
                       for k in g.shots]  # fmt: skip
                lines.append(_row([method(par), a, *map(fmt, row)]))
            for a in (a for a in g.annotations if a != "dense" and "dense" in g.annotations):
                diff = [self.record(self.difference((None, k, par, a), (None, k, par, "dense"),
                                                    metric),
                                    shots=k, par_weight=par, annotation=f"{a} minus dense", **where)
                        for k in g.shots]  # fmt: skip
                name = f"{a} minus dense"
                lines.append(_row([method(par), name, *(fmt(d, sign=True) for d in diff)]))
        return lines

    def convergence(self) -> list[str]:
        g = self.grid
        steps = sorted({s for r in self.cells.values() for s in r["held_out"]["steps"]})
        lines = _header(["shots", "method"], [f"mIoU @ {s}" for s in steps])
        for k in g.shots:
            for par in g.par_weights:
                row = [self.record(self.at_step(k, par, "miou", s), table="curve", metric="miou",
                                   shots=k, par_weight=par, step=s) for s in steps]  # fmt: skip
                lines.append(_row([str(k), method(par), *map(fmt, row)]))
            row = [self.record(self.par_difference(k, "miou", s), table="curve",
                               metric="miou", shots=k, par_weight="difference", step=s)
                   for s in steps]  # fmt: skip
            lines.append(_row([str(k), "PAR minus w/o PAR", *(fmt(d, sign=True) for d in row)]))
        return lines

    def par_difference(self, shots: int, name: str, step: int | None) -> res.Stat | None:
        """Paired (by seed) PAR-on minus PAR-off value of a curve at ``step``."""
        if len(self.grid.par_weights) != 2:
            return None
        off, on = self.grid.par_weights
        value = lambda par: lambda seed: self.at_seed(shots, par, name, step, seed)
        return res.paired_difference(self.grid, value(on), value(off))

    def at_step(self, shots: int, par: float, name: str, step: int | None) -> res.Stat | None:
        """Over seeds (folds averaged per seed) of a curve at ``step`` (``None``: its last)."""
        return res.seed_stat(self.grid, lambda seed: self.at_seed(shots, par, name, step, seed))

    def at_seed(self, shots: int, par: float, name: str, step: int | None, seed: int):
        """One seed's curve value at ``step`` (``None``: its last), averaged over the folds;
        ``None`` unless every fold has it."""
        vals = []
        for f in self.grid.folds:
            r = self.cells.get(grid_lib.Cell(f, shots, par, seed))
            if r is None:
                return None
            s, v = res.curve_of(r, name)
            lookup = dict(zip(s, v, strict=True))
            key = s[-1] if step is None and s else step
            if key not in lookup:
                return None
            vals.append(lookup[key])
        return sum(vals) / len(vals)

    def alignment(self) -> list[str]:
        g = self.grid
        lines = _header(["shots", "method"], ["loss_seg", "proto L2", "proto 1 - cos"])
        for k in g.shots:
            for par in g.par_weights:
                row = [self.record(self.at_step(k, par, n, None), table="last_window", metric=n,
                                   shots=k, par_weight=par) for n in FINAL_SERIES]  # fmt: skip
                lines.append(_row([str(k), method(par), *self._series_cells(row)]))
            row = [self.record(self.par_difference(k, n, None), table="last_window", metric=n,
                               shots=k, par_weight="difference") for n in FINAL_SERIES]  # fmt: skip
            lines.append(_row([str(k), "PAR minus w/o PAR", *self._series_cells(row, sign=True)]))
        return lines

    @staticmethod
    def _series_cells(row: list, sign: bool = False) -> list[str]:
        return [fmt(x, 1, sign=sign, digits=d) for x, d in zip(row, (3, 2, 4), strict=True)]
