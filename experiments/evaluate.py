r"""Evaluate a trained PANet on the test classes of a fold (the official 5 x 1000 protocol).

    python experiments/evaluate.py --config=configs/pascal5i.py:fold=0,shot=1 \
        --checkpoint=runs/p0s1
    python experiments/evaluate.py --config=configs/synthetic.py --checkpoint=/tmp/panet_synthetic \
        --config.eval.support_annotation=scribble

``--checkpoint``: a training workdir, its ``checkpoints`` directory, a step directory, or
weights (a converted ``.npz``; ImageNet ``.pth`` / ``.h5``: the official ``notrain``
evaluation); it is restored onto however many devices this process has. When the checkpoint
holds its training config, the model keys (``config.model.*``, except the compute dtype) are
taken from it (a differing value on the command line is reported as a warning); a different
dataset / fold / image size than the training run's is also reported. Everything that can be
checked (config, dataset, official lists, the step) is checked before any weights are read.
Results go to a new directory under ``--workdir`` (default: the checkpoint's workdir); existing
results are never overwritten.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags, logging
from ml_collections import config_flags

from panet_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/pascal5i.py:fold=0.", lock_config=True
)
flags.DEFINE_string("checkpoint", None, "Training workdir, checkpoints / step dir, or weights.")
flags.DEFINE_string(
    "workdir",
    None,
    "Where the results directory is created (default: the checkpoint's workdir, or the weight "
    "file's folder).",
)
flags.DEFINE_integer("step", None, "Checkpoint step to restore (default: the latest).")
flags.mark_flags_as_required(["config", "checkpoint"])


def main(argv: list[str]) -> None:

    from panet_jax import config as config_lib
    from panet_jax.data import input_pipeline
    from panet_jax.evaluation import evaluator
    from panet_jax.inference import loading
    from panet_jax.runtime import parallel

    config, path = FLAGS.config, FLAGS.checkpoint
    config_lib.validate(config, train=False, evaluate=True)
    parallel.initialize_distributed(config)
    for line in loading.adopt_run_model_config(config, path):
        logging.warning(line)
    config_lib.validate(config, train=False, evaluate=True)  # the adopted model keys too
    input_pipeline.ensure_dataset(config)  # clear error (or auto_prepare) before restoring weights
    evaluator.check_episodes(config)  # official lists, class sizes: before restoring too
    variables = loading.load_variables(path, step=FLAGS.step)
    workdir = FLAGS.workdir or (path if os.path.isdir(path) else os.path.dirname(path) or ".")
    step = "latest" if FLAGS.step is None else FLAGS.step
    info = {"checkpoint": os.path.abspath(path), "step": step}
    results = evaluator.evaluate(config, variables, workdir=workdir, info=info)
    logging.info(
        "mIoU %.2f ± %.2f, FB-IoU %.2f ± %.2f; results in %s",
        100 * results["miou_mean"],
        100 * results["miou_std"],
        100 * results["fbiou_mean"],
        100 * results["fbiou_std"],
        results["output_dir"],
    )


if __name__ == "__main__":
    cli.run(main)
