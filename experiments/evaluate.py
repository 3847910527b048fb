r"""Evaluate a trained PANet on the test classes of a fold (the official 5 x 1000 protocol).

    python experiments/evaluate.py --config=configs/pascal5i.py:fold=0,shot=1 \
        --checkpoint=runs/p0s1
    python experiments/evaluate.py --config=configs/synthetic.py --checkpoint=/tmp/panet_synthetic \
        --config.eval.support_annotation=scribble

``--checkpoint``: a training workdir, its ``checkpoints`` directory or a converted ``.npz``; it
is restored onto however many devices this process has. When the checkpoint holds its
training config, the model keys (``config.model.*``) are taken from it (a differing value on
the command line is reported as a warning); a different dataset / fold / image size than the
training run's is also reported. Results go to a new directory under ``--workdir`` (default:
the checkpoint's workdir); existing results are never overwritten.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/pascal5i.py:fold=0.", lock_config=True
)
flags.DEFINE_string("checkpoint", None, "Training workdir, checkpoints dir or converted .npz.")
flags.DEFINE_string(
    "workdir",
    None,
    "Where the results directory is created (default: the "
    "checkpoint's workdir, or the .npz's folder).",
)
flags.DEFINE_integer("step", None, "Checkpoint step to restore (default: the latest).")
flags.mark_flags_as_required(["config", "checkpoint"])

# Keys compared with the training run's config (warning only): evaluating elsewhere is allowed.
DATA_KEYS = ("dataset", "fold", "coco_split", "image_size", "builder_config")


def _saved_config(path: str):
    """The training config stored with the checkpoint, or None (e.g. an ``.npz``)."""
    if path.endswith(".npz"):
        return None
    from panet_jax import loading

    try:
        return loading.load_run_config(path)
    except (FileNotFoundError, ValueError, OSError) as e:
        logging.warning(
            "no training config found with %s (%s); using --config's model keys", path, e
        )
        return None


def _same(a, b) -> bool:
    """Equality that treats lists (JSON) and tuples (ConfigDict) alike."""
    norm = lambda x: list(x) if isinstance(x, (list, tuple)) else x
    return norm(a) == norm(b)


def reconcile(config, saved) -> list[str]:
    """Copy the saved ``model`` keys into ``config`` (in place); return warning lines."""
    warnings = []
    if saved is None:
        return warnings
    for key, value in saved.get("model", {}).items():
        # The weights' initial file and the compute dtype are choices of this run, not of the
        # trained network (float32 weights evaluate in bfloat16 or float64 as well).
        if key in ("pretrained", "dtype") or key not in config.model:
            continue
        if not _same(config.model[key], value):
            warnings.append(
                f"config.model.{key}={config.model[key]!r} differs from the "
                f"checkpoint's {value!r}; using the checkpoint's"
            )
            config.model[key] = tuple(value) if isinstance(value, list) else value
    for key in DATA_KEYS:
        if key in saved.get("data", {}) and key in config.data:
            if not _same(config.data[key], saved["data"][key]):
                warnings.append(
                    f"config.data.{key}={config.data[key]!r} but the checkpoint was "
                    f"trained with {saved['data'][key]!r}"
                )
    return warnings


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # TF only feeds data; keep it off accelerators

    from panet_jax import evaluation, loading, trainer

    config = FLAGS.config
    trainer.maybe_initialize_distributed(config)
    path = FLAGS.checkpoint
    if not os.path.exists(path):
        raise app.UsageError(f"--checkpoint={path!r} does not exist")
    for line in reconcile(config, _saved_config(path)):
        logging.warning(line)
    trainer.check_dataset(config)  # clear error (or auto_prepare) before restoring weights
    variables = loading.load_variables(path, step=FLAGS.step)
    workdir = FLAGS.workdir or (path if os.path.isdir(path) else os.path.dirname(path) or ".")
    step = "latest" if FLAGS.step is None else FLAGS.step
    info = {"checkpoint": os.path.abspath(path), "step": step}
    results = evaluation.evaluate(config, variables, workdir=workdir, info=info)
    logging.info(
        "mIoU %.2f ± %.2f, FB-IoU %.2f ± %.2f; results in %s",
        100 * results["miou_mean"],
        100 * results["miou_std"],
        100 * results["fbiou_mean"],
        100 * results["fbiou_std"],
        results["output_dir"],
    )


if __name__ == "__main__":
    app.run(main)
