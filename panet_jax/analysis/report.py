"""The grid's report: ``results.md``, ``results.json`` and the plots, from its finished cells
(rebuilt on every call, so a resumed or partial grid always has an up-to-date report)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from panet_jax import files
from panet_jax.analysis import grid as grid_lib
from panet_jax.analysis import plots, results, table

MARKDOWN = "results.md"
JSON = "results.json"


def markdown(tables: table.Tables, missing: list[str]) -> str:
    """All tables with their captions (values in %, mean ± std over seeds)."""
    g = tables.grid
    seeds = ", ".join(map(str, g.seeds))
    lines = [
        "# PANet analyses",
        "",
        f"Folds {', '.join(map(str, g.folds))}; seeds {seeds}; {len(tables.cells)} of "
        f"{len(g.cells())} cells finished. Mean ± std (ddof=1) over seeds; differences are "
        "paired by seed. Final scores: one run of "
        f"{g.final_episodes} test episodes per cell and annotation.",
    ]
    if missing:
        lines += ["", f"Missing (failed or not run): {', '.join(missing)}."]
    for metric, name in table.METRICS.items():
        lines += ["", f"## {name} (%), dense supports", "", *tables.dense(metric)]
    lines += ["", "## mIoU (%) by support annotation (fold mean)", "", *tables.annotations("miou")]
    lines += ["", "## FB-IoU (%) by support annotation (fold mean)", "",
              *tables.annotations("fbiou")]  # fmt: skip
    lines += ["", f"## Held-out mIoU (%) during training (dense, {g.curve_episodes} episodes "
              "per point, fold mean)", "", *tables.convergence()]  # fmt: skip
    lines += ["", "## Last logged training window: segmentation loss and prototype distances",
              "", *tables.alignment()]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_report(grid: grid_lib.Grid, out: Path) -> list[Path]:
    """Write ``results.md``, ``results.json`` and the PNG plots into ``out``."""
    cells = results.load_cells(grid, out)
    missing = [c.name for c in grid.cells() if c not in cells]
    tables = table.Tables(grid, cells)
    text = markdown(tables, missing)  # fills tables.records
    summary = {
        "grid": dataclasses.asdict(grid),
        "finished": [c.name for c in cells],
        "missing": missing,
        "records": tables.records,
    }
    written = [
        files.atomic_write(out / MARKDOWN, text, overwrite=True),
        files.atomic_write(out / JSON, json.dumps(summary, indent=1), overwrite=True),
    ]
    if cells:
        written += plots.write_plots(tables, out)
    return written
