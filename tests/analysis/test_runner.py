"""The grid runner on a tiny config: every cell a real ``experiments/analyze.py`` subprocess
chain (train, score, JSON); a failed cell is reported and the others finish; a finished cell
is not re-run; the report is written from what finished."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

from panet_jax.analysis import grid as grid_lib
from panet_jax.analysis import report, runner

REPO = Path(__file__).resolve().parents[2]
CONFIG = f"{REPO / 'configs' / 'synthetic_analysis.py'}:runlocal"
# Fold 9 does not exist: that cell fails in config validation, before any work.
GRID = grid_lib.Grid(folds=(0, 9), shots=(1,), seeds=(0,), par_weights=(1.0,),
                     annotations=("dense", "bbox"), curve_every=2, curve_episodes=2,
                     final_episodes=2)  # fmt: skip


def cell_env() -> dict[str, str]:
    env = runner.subprocess_env()
    env.update(JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true",
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")  # fmt: skip
    return env


@pytest.mark.slow
def test_failed_cell_is_reported_others_finish_and_resume_skips_finished(tmp_path):
    out, lines = tmp_path / "analysis", []
    extra = [f"--config.data.data_dir={tmp_path / 'data'}"]
    run = runner.run_grid(GRID, CONFIG, out, extra, env=cell_env(), echo=lines.append)
    good, bad = (c.name for c in GRID.cells())
    assert run.finished == [good] and list(run.failed) == [bad] and run.skipped == []
    assert "data.fold" in run.failed[bad], run.failed[bad]  # the cell's own one-line error
    assert any(ln.startswith("[2/2] ") and "1 done, 1 failed" in ln and "ETA" in ln
               for ln in lines), lines  # fmt: skip

    result = json.loads((out / "cells" / f"{good}.json").read_text())
    assert result["held_out"]["steps"] == [2, 4]
    assert set(result["final"]) == {"dense", "bbox"}
    assert all(0.0 <= v["miou"] <= 1.0 for v in result["final"].values())
    assert result["train"]["proto_l2"]["steps"] == [2, 4]
    assert all(v > 0 for v in result["train"]["proto_l2"]["values"])
    commands = (out / runner.COMMANDS_FILE).read_text().splitlines()
    assert sum("panet_jax.analysis.cell" in ln for ln in commands) == 2
    assert any(f"--result={out / 'cells' / good}.json" in ln for ln in commands)

    # Resume: the finished cell is skipped (its log gets no new command), the failed one re-runs.
    log = out / "cells" / f"{good}.log"
    before = log.read_text()
    mtime = os.stat(out / "cells" / f"{good}.json").st_mtime_ns
    again = runner.run_grid(GRID, CONFIG, out, extra, env=cell_env(), echo=lines.append)
    assert again.skipped == [good] and list(again.failed) == [bad] and again.finished == []
    assert log.read_text() == before
    assert os.stat(out / "cells" / f"{good}.json").st_mtime_ns == mtime

    # Another command for the same cell (here: another override) never reuses its result.
    other = runner.run_grid(dataclasses.replace(GRID, folds=(0,)), CONFIG, out,
                            [*extra, "--config.train.log_every=1"], env=cell_env())  # fmt: skip
    assert other.skipped == [] and other.finished == [] and list(other.failed) == [good]
    assert "another command" in other.failed[good]
    assert os.stat(out / "cells" / f"{good}.json").st_mtime_ns == mtime

    written = report.write_report(GRID, out)
    assert {p.name for p in written} >= {"results.md", "results.json", "convergence.png"}
    text = (out / "results.md").read_text()
    assert f"Missing (failed or not run): {bad}." in text
    summary = json.loads((out / "results.json").read_text())
    assert summary["finished"] == [good] and summary["missing"] == [bad]
    assert sys.executable in commands[-1]
