r"""The paper's analyses on one config: PAR on / off, 1 / 5 shots, dense / scribble / box supports.

    python experiments/analyze.py --config=configs/synthetic_analysis.py --out=runs/analysis
    python experiments/analyze.py --config=configs/synthetic_analysis.py --out=runs/quick --quick
    python experiments/analyze.py --config=configs/pascal5i.py --out=runs/voc_analysis \
        --folds=0,1,2,3 --seeds=0,1 --override=train.steps=30000

Every cell (fold x shots x PAR x seed) trains in its own subprocess and is scored on the
held-out classes with each support annotation; its result is written to
``<out>/cells/<name>.json`` as soon as it finishes, and a finished cell is never re-run
(run the same command again to resume). ``<out>`` then holds ``results.md`` / ``results.json``
(the paper-style tables, mean +- std over seeds), the plots ``*.png`` and ``commands.sh`` (the
exact command of every cell). A failed cell is reported (exit status 1) after the others ran.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses
from pathlib import Path

from absl import flags

from panet_jax import cli, errors

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "config", None, "Config file of every cell, e.g. configs/synthetic_analysis.py."
)
flags.DEFINE_string("out", None, "Output directory (created; reused to resume).")
flags.DEFINE_bool("quick", False, "The short grid (one fold, 1-shot, two seeds, fewer episodes).")
flags.DEFINE_string("folds", None, "Comma-separated folds (default: the grid's).")
flags.DEFINE_string("shots", None, "Comma-separated shot counts (default: the grid's).")
flags.DEFINE_string("seeds", None, "Comma-separated training seeds (default: the grid's).")
flags.DEFINE_multi_string("override", [], "key=value config override for every cell.")
flags.DEFINE_bool("report_only", False, "Only rebuild the tables and plots from finished cells.")
flags.mark_flags_as_required(["config", "out"])


def chosen_grid():
    """The grid of the flags (``--quick`` or the default, axes overridden)."""
    from panet_jax.analysis import grid as grid_lib

    g = grid_lib.GRIDS["quick" if FLAGS.quick else "default"]
    axes = {}
    for name in ("folds", "shots", "seeds"):
        text = getattr(FLAGS, name)
        if text is not None:
            try:
                axes[name] = grid_lib.parse_ints(text, f"--{name}")
            except ValueError as e:
                raise cli.FlagError(str(e)) from None
    return dataclasses.replace(g, **axes)


def overrides() -> list[str]:
    """``--override=a.b=v`` -> ``--config.a.b=v``."""
    out = []
    for item in FLAGS.override:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise cli.FlagError(f"--override={item!r}: expected key=value, e.g. train.steps=500")
        out.append(f"--config.{key}={value}")
    return out


def main(argv: list[str]) -> None:
    from panet_jax.analysis import report, runner

    if len(argv) > 1:
        raise cli.FlagError(f"unexpected arguments: {' '.join(argv[1:])}")
    config_file = FLAGS.config.partition(":")[0]
    if not Path(config_file).is_file():
        raise cli.FlagError(f"--config={FLAGS.config!r}: no such config file {config_file!r}")
    grid, out = chosen_grid(), Path(FLAGS.out)
    extra = overrides()
    run = None
    if not FLAGS.report_only:
        run = runner.run_grid(grid, FLAGS.config, out, extra, env=runner.subprocess_env())
    written = report.write_report(grid, out)
    print(f"report written: {', '.join(str(p) for p in written)}", flush=True)
    if run is not None and run.failed:
        names = ", ".join(sorted(run.failed))
        raise errors.CommandFailed(f"{len(run.failed)} cell(s) failed: {names}")


if __name__ == "__main__":
    cli.run(main)
