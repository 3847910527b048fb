"""The flags that choose the model of ``segment.py`` and ``app.py``: one definition for both."""

from __future__ import annotations

from typing import Any

from absl import flags


def define(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define ``--checkpoint`` (required), ``--image_size``, ``--step`` and
    ``--prototypes_per_class``."""
    flags.DEFINE_string("checkpoint", None, "Training workdir, checkpoints / step dir, or weights.",
                        flag_values=flag_values)  # fmt: skip
    flags.DEFINE_list("image_size", None, "H,W the model sees (default: the checkpoint's training "
                      "size, else 417,417; 518,518 for DINOv2 weights).",
                      flag_values=flag_values)  # fmt: skip
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).",
                         flag_values=flag_values)  # fmt: skip
    flags.DEFINE_integer("prototypes_per_class", None, "Foreground prototypes (k-means of the "
                         "support features; default: the run's, else 1 = PANet).",
                         lower_bound=1, flag_values=flag_values)  # fmt: skip
    flags.mark_flag_as_required("checkpoint", flag_values=flag_values)


def model_arguments(flag_values: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
    """The flags as keyword arguments of :class:`panet_jax.Predictor` / ``predict`` (all but
    ``--checkpoint``); ``ValueError`` naming ``--image_size`` for a bad size."""
    from panet_jax.inference.predictor import check_image_size

    size = flag_values.image_size
    return {
        "image_size": None if size is None else check_image_size(size, "--image_size"),
        "step": flag_values.step,
        "prototypes_per_class": flag_values.prototypes_per_class,
    }
