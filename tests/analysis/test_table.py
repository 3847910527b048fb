"""Tables of a grid from hand-made cell results (the JSON format ``panet_jax.analysis.cell``
writes), checked against numbers computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from panet_jax.analysis import grid as grid_lib
from panet_jax.analysis import report, results, table

GRID = grid_lib.Grid(folds=(0, 1), shots=(1,), seeds=(0, 1, 2), annotations=("dense", "bbox"))
# mIoU of (fold, par, seed): PAR adds 0.02, 0.04, 0.03 on fold 0 and 0.01 on fold 1.
MIOU = {(0, 0.0): [0.40, 0.42, 0.44], (0, 1.0): [0.42, 0.46, 0.47],
        (1, 0.0): [0.30, 0.31, 0.35], (1, 1.0): [0.31, 0.32, 0.36]}  # fmt: skip


def cell_result(cell: grid_lib.Cell) -> dict:
    m = MIOU[(cell.fold, cell.par_weight)][cell.seed]
    train = {"steps": [50, 100], "values": [1.0, 0.5 - 0.1 * cell.par_weight]}
    return {
        "config": {
            "fold": cell.fold,
            "shots": cell.shots,
            "par_weight": cell.par_weight,
            "seed": cell.seed,
        },
        "command": ["cell.py"],
        "train": {"loss_seg": train, "proto_l2": train, "proto_cos": train},
        "held_out": {"steps": [50, 100], "miou": [m / 2, m], "fbiou": [0.5, 0.6]},
        "final": {"dense": {"miou": m, "fbiou": 0.6}, "bbox": {"miou": m - 0.05, "fbiou": 0.5}},
    }


@pytest.fixture
def out(tmp_path):
    cells = tmp_path / grid_lib.CELLS_DIR
    cells.mkdir()
    for cell in GRID.cells():
        if cell != grid_lib.Cell(1, 1, 1.0, 2):  # one cell missing: its seed drops out of means
            (cells / f"{cell.name}.json").write_text(json.dumps(cell_result(cell)))
    return tmp_path


def test_stat_mean_and_sample_std():
    s = results.Stat.of([0.40, 0.42, 0.44])
    assert s.mean == pytest.approx(0.42) and s.std == pytest.approx(0.02)
    assert results.Stat.of([0.5]).std == 0.0 and results.Stat.of([]) is None


def test_dense_table_folds_mean_and_paired_difference(out):
    t = table.Tables(GRID, results.load_cells(GRID, out))
    lines = t.dense("miou")
    assert lines[0] == "| method | 1-shot fold 0 | 1-shot fold 1 | 1-shot mean |"
    # w/o PAR, fold mean per seed: 0.35, 0.365, 0.395 -> 37.0 +- 2.3.
    assert lines[2] == "| PANet w/o PAR | 42.0 ± 2.0 | 32.0 ± 2.6 | 37.0 ± 2.3 |"
    # PAR fold 1 lacks seed 2: fold 1 over seeds 0, 1; the mean over seeds 0, 1 only.
    par_mean = np.mean([(0.42 + 0.31) / 2, (0.46 + 0.32) / 2])
    par_std = np.std([(0.42 + 0.31) / 2, (0.46 + 0.32) / 2], ddof=1)
    assert (
        lines[3]
        == f"| PANet | 45.0 ± 2.6 | 31.5 ± 0.7 | {100 * par_mean:.1f} ± {100 * par_std:.1f} |"
    )
    # Paired differences: fold 0 (2, 4, 3) -> +3.0 +- 1.0; fold 1 (1, 1) -> +1.0 +- 0.0;
    # fold mean (seeds 0, 1): 1.5, 2.5 -> +2.0 +- 0.7.
    assert lines[4] == "| PAR minus w/o PAR (paired) | +3.0 ± 1.0 | +1.0 ± 0.0 | +2.0 ± 0.7 |"


def test_annotation_table_and_report_files(out):
    t = table.Tables(GRID, results.load_cells(GRID, out))
    lines = t.annotations("miou")
    assert "| PANet w/o PAR | bbox minus dense | -5.0 ± 0.0 |" in lines
    written = report.write_report(GRID, out)
    assert [p.name for p in written] == ["results.md", "results.json", "convergence.png",
                                         "prototype_distance.png", "annotations.png"]  # fmt: skip
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written[2:])
    summary = json.loads((out / "results.json").read_text())
    assert summary["missing"] == ["fold1_1shot_par1_seed2"]
    rec = [r for r in summary["records"] if r["table"] == "last_window"
           and r["metric"] == "proto_l2" and r["par_weight"] == "difference"]  # fmt: skip
    assert rec[0]["mean"] == pytest.approx(-0.1) and rec[0]["n"] == 2
