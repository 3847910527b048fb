"""Run the cells of a grid one after another, each in its own subprocess.

A cell whose result JSON exists (written by the same command) is finished and never re-run;
a cell that fails (non-zero exit, or no result), or whose result came from another command, is
reported with the last lines of its log and the others go on. Each
cell's output goes to ``<out>/cells/<name>.log``; a progress line (done / failed, ETA from
the cells run so far) is printed after each.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from panet_jax import files
from panet_jax.analysis import grid as grid_lib
from panet_jax.train.summaries import format_duration

COMMANDS_FILE = "commands.sh"
LOG_TAIL_LINES = 3


@dataclasses.dataclass
class GridRun:
    """What one invocation did: cell names skipped (already finished), run, and failed
    (``{name: last lines of its log}``)."""

    skipped: list[str] = dataclasses.field(default_factory=list)
    finished: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)


def result_path(out: Path, cell: grid_lib.Cell) -> Path:
    return out / grid_lib.CELLS_DIR / f"{cell.name}.json"


def write_commands(out: Path, commands: Sequence[Sequence[str]]) -> Path:
    """``<out>/commands.sh``: every cell's exact command, one a line (regenerated each time)."""
    lines = ["#!/bin/sh", "# One line per cell of the grid; each is independent.", "set -e"]
    text = "\n".join([*lines, *map(grid_lib.shell_line, commands)]) + "\n"
    return files.atomic_write(out / COMMANDS_FILE, text, overwrite=True)


def finished_state(result: Path, argv: Sequence[str]) -> str:
    """``'todo'`` (no result), ``'done'`` (a result of this very command: skip it), or why a
    result of another command is in the way (it is kept; the cell is reported, not re-run)."""
    if not result.exists():
        return "todo"
    stored = json.loads(result.read_text()).get("command", [])[1:]
    if stored == list(argv[3:]):  # argv: python -m <module> <flags...>; stored: <file> <flags>
        return "done"
    return (
        f"{result} holds the result of another command (a different config, grid or "
        "override); delete it or use another --out"
    )


def _log_tail(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"


def run_one(argv: Sequence[str], log_path: Path, result: Path, env: dict | None) -> str | None:
    """Run one cell's command; ``None`` on success, else the tail of its log."""
    with open(log_path, "a") as log:
        log.write(f"$ {grid_lib.shell_line(argv)}\n")
        log.flush()
        proc = subprocess.run(list(argv), stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode == 0 and result.exists():
        return None
    why = f"exit status {proc.returncode}" if proc.returncode else "no result written"
    return f"{why}; {log_path}:\n{_log_tail(log_path)}"


def progress(i: int, total: int, name: str, seconds: float, run: GridRun, eta: float) -> str:
    """``[3/12] fold0_1shot_par1_seed0 ok in 1m35s | 2 done, 0 failed, 1 skipped | ETA 14m``."""
    status = "FAILED" if name in run.failed else "ok"
    return (
        f"[{i}/{total}] {name} {status} in {format_duration(seconds)} | "
        f"{len(run.finished)} done, {len(run.failed)} failed, {len(run.skipped)} skipped | "
        f"ETA {format_duration(eta)}"
    )


def run_grid(
    grid: grid_lib.Grid,
    config: str,
    out: Path,
    extra: Sequence[str] = (),
    *,
    env: dict | None = None,
    echo: Callable[[str], None] = print,
) -> GridRun:
    """Run every unfinished cell of ``grid`` (see the module docstring)."""
    cells = grid.cells()
    (out / grid_lib.CELLS_DIR).mkdir(parents=True, exist_ok=True)
    commands = [grid_lib.cell_command(grid, c, config, out, extra) for c in cells]
    write_commands(out, commands)
    run, todo = GridRun(), []
    for cell, argv in zip(cells, commands, strict=True):
        state = finished_state(result_path(out, cell), argv)
        if state == "todo":
            todo.append((cell, argv))
        elif state == "done":
            run.skipped.append(cell.name)
        else:
            run.failed[cell.name] = state
            echo(f"cell {cell.name} not run: {state}")
    echo(f"grid: {len(cells)} cells, {len(run.skipped)} already finished, {len(todo)} to run")
    spent = 0.0
    for i, (cell, argv) in enumerate(todo, start=1):
        t0 = time.perf_counter()
        log_path = out / grid_lib.CELLS_DIR / f"{cell.name}.log"
        echo(f"[{i}/{len(todo)}] {cell.name}: running (log {log_path})")
        error = run_one(argv, log_path, result_path(out, cell), env)
        if error is None:
            run.finished.append(cell.name)
        else:
            run.failed[cell.name] = error
            echo(f"cell {cell.name} failed: {error}")
        seconds = time.perf_counter() - t0
        spent += seconds
        eta = spent / i * (len(todo) - i)
        echo(progress(i, len(todo), cell.name, seconds, run, eta))
    return run


def subprocess_env() -> dict[str, str]:
    """The environment of the cells: this one, with this checkout importable first."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env
