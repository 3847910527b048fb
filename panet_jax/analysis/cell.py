r"""One analysis cell: train a config, score its checkpoints on the test fold, write one JSON.

    python -m panet_jax.analysis.cell --config=configs/synthetic_analysis.py \
        --workdir=runs/analysis/cells/fold0_1shot_par1_seed0 \
        --result=runs/analysis/cells/fold0_1shot_par1_seed0.json --config.train.par_weight=1

1. :func:`panet_jax.train.trainer.train` into ``--workdir`` with a checkpoint every
   ``--curve_every`` steps, all of them kept (an interrupted cell resumes from its newest
   checkpoint);
2. the training curves (losses, prototype distances) read back from its TensorBoard events;
3. every checkpoint scored on the held-out classes (dense supports, one run of
   ``--curve_episodes``): the mIoU / FB-IoU curve;
4. the last checkpoint scored with each of ``--annotations`` (one run of ``--final_episodes``);
5. everything written to ``--result`` atomically (never over an existing file).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import sys
import time
from pathlib import Path
from typing import Any

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from panet_jax import cli, files
from panet_jax import config as config_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file of the cell.", lock_config=True)
flags.DEFINE_string("workdir", None, "Training workdir of the cell.")
flags.DEFINE_string("result", None, "JSON file the cell's results are written to.")
flags.DEFINE_integer("curve_every", 100, "Steps between scored checkpoints.", lower_bound=1)
flags.DEFINE_integer("curve_episodes", 100, "Test episodes per curve point.", lower_bound=1)
flags.DEFINE_integer("final_episodes", 300, "Test episodes per annotation.", lower_bound=1)
flags.DEFINE_list("annotations", ["dense", "scribble", "bbox"], "Support annotations scored.")
flags.mark_flags_as_required(["config", "workdir", "result"])

CURVE_TAGS = ("loss", "loss_seg", "loss_par", "proto_l2", "proto_l2_bg", "proto_l2_fg",
              "proto_cos", "proto_cos_bg", "proto_cos_fg")  # fmt: skip


def training_config(
    config: ml_collections.ConfigDict, curve_every: int
) -> ml_collections.ConfigDict:
    """``config`` checkpointing every ``curve_every`` steps and keeping every checkpoint."""
    c = config.copy_and_resolve_references()
    c.train.checkpoint_every = curve_every
    c.train.keep_checkpoints = c.train.steps // curve_every + 2
    c.train.eval_after = False
    return c


def read_scalars(workdir: str | os.PathLike, tags: tuple[str, ...]) -> dict[str, dict[str, list]]:
    """``{tag: {'steps': [...], 'values': [...]}}`` from the TensorBoard events in ``workdir``
    (a step written twice, by a resumed run, keeps its last value)."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    series: dict[str, dict[int, float]] = {t: {} for t in tags}
    for events in sorted(Path(workdir).glob("events.out.tfevents.*")):
        acc = event_accumulator.EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        for tag in set(tags) & set(acc.Tags()["tensors"]):
            for e in acc.Tensors(tag):
                series[tag][int(e.step)] = float(tf.make_ndarray(e.tensor_proto))
    return {t: {"steps": sorted(s), "values": [s[k] for k in sorted(s)]} for t, s in series.items()}


def score(
    config: ml_collections.ConfigDict, variables: Any, annotation: str, episodes: int
) -> dict[str, float]:
    """Test-fold mIoU / FB-IoU of ``variables``: one run of ``episodes`` with ``annotation``."""
    from panet_jax.evaluation import evaluator

    c = config.copy_and_resolve_references()
    c.eval.runs, c.eval.episodes, c.eval.support_annotation = 1, episodes, annotation
    r = evaluator.evaluate(c, variables, workdir=None, progress=False)
    return {"miou": float(r["miou_mean"]), "fbiou": float(r["fbiou_mean"])}


def held_out_curve(config: ml_collections.ConfigDict, workdir: str, episodes: int) -> dict:
    """``{'steps', 'miou', 'fbiou'}`` of every checkpoint in ``workdir`` (dense supports)."""
    from panet_jax.inference import loading
    from panet_jax.train import checkpointing
    from panet_jax.train import workdir as workdir_lib

    ckpt_dir = Path(workdir) / workdir_lib.CHECKPOINT_DIR
    with checkpointing.Checkpointer(ckpt_dir, read_only=True) as ckpt:
        steps = ckpt.all_steps()
    curve: dict[str, list] = {"steps": [], "miou": [], "fbiou": []}
    for step in sorted(steps):
        s = score(config, loading.load_variables(ckpt_dir, step=step), "dense", episodes)
        curve["steps"].append(int(step))
        curve["miou"].append(s["miou"])
        curve["fbiou"].append(s["fbiou"])
        logging.info("step %d: held-out mIoU %.4f", step, s["miou"])
    return curve


def run_cell(config: ml_collections.ConfigDict, workdir: str, result: str) -> dict[str, Any]:
    """Train, score and write the cell's result (see the module docstring)."""
    from panet_jax.train import trainer

    t0 = time.perf_counter()
    c = training_config(config, FLAGS.curve_every)
    state, trained = trainer.train(c, workdir)
    if trained["preempted"]:
        raise InterruptedError(
            f"training stopped at step {trained['step']} (preempted); run the cell again to "
            "resume it from its checkpoint"
        )
    train_curves = read_scalars(workdir, CURVE_TAGS)
    curve = held_out_curve(c, workdir, FLAGS.curve_episodes)
    final = {a: score(c, state.variables(), a, FLAGS.final_episodes) for a in FLAGS.annotations}
    out = {
        "config": {
            "fold": int(c.data.fold),
            "shots": int(c.data.n_shots),
            "par_weight": float(c.train.par_weight),
            "seed": int(c.seed),
            "steps": int(c.train.steps),
            "dataset": c.data.dataset,
        },
        "command": sys.argv,
        "train": train_curves,
        "held_out": curve,
        "final": final,
        "seconds": time.perf_counter() - t0,
    }
    files.atomic_write(result, json.dumps(out, indent=1))
    return out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise cli.FlagError(f"unexpected arguments: {' '.join(argv[1:])}")
    if Path(FLAGS.result).exists():
        logging.info("%s exists: cell already done", FLAGS.result)
        return
    # Every key checked before JAX / TensorFlow are imported: a bad cell fails in a second.
    config_lib.validate(FLAGS.config, train=True, evaluate=True)
    out = run_cell(FLAGS.config, FLAGS.workdir, FLAGS.result)
    logging.info("final: %s", json.dumps(out["final"], sort_keys=True))


if __name__ == "__main__":
    cli.run(main)
