r"""Segment your own images with a trained PANet (1-way, 1 to 5 annotated supports).

    python experiments/segment.py --checkpoint=runs/p0s1 \
        --support=cat1.jpg:cat1_mask.png --support=cat2.jpg:cat2_mask.png \
        --query=photo1.jpg --query=photo2.jpg --out_dir=out/

Each ``--support`` is ``IMAGE:MASK``; the mask has the image's size, and its non-zero pixels
mark the object (or the pixels equal to ``--mask_value``, e.g. a VOC palette index). For every
query ``<name>.jpg`` this writes, at the query's original size, ``<name>_mask.png`` (0/255 grey,
or with ``--mask_format=palette`` a palette PNG with index 1 = object) and
``<name>_overlay.png``. Existing files are never replaced unless ``--overwrite`` is given, and
a replaced file is swapped in only once its successor is complete.

``--checkpoint``: a training workdir, its ``checkpoints`` directory, a step directory, or
weights (a converted ``.npz``, or ImageNet ``.pth`` / ``.h5``: the untrained model; DINOv2
``dinov2_vit*14*_pretrain.pth``, Hugging Face ``model.safetensors`` or their ``.npz``: training-free
segmentation, at 518 x 518 unless ``--image_size`` says otherwise). The input size, width, dtype,
scale and prototypes per class are the training run's (``panet_jax.predict`` does the same);
``--image_size`` and ``--prototypes_per_class`` override them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from panet_jax import cli
from panet_jax.inference import model_flags

FLAGS = flags.FLAGS
model_flags.define()
flags.DEFINE_multi_string("support", [], "IMAGE:MASK of one support (1 to 5 of them).")
flags.DEFINE_multi_string("query", [], "A query image (repeatable).")
flags.DEFINE_string("out_dir", None, "Output directory (created if missing).")
flags.DEFINE_integer("mask_value", None, "Foreground value in the support masks (default: any "
                     "non-zero pixel).")  # fmt: skip
flags.DEFINE_enum(
    "mask_format",
    "binary",
    ["binary", "palette"],
    "binary: grey PNG 0/255; palette: 'P' PNG, index 0 background, 1 object.",
)
flags.DEFINE_float("alpha", 0.5, "Overlay opacity, in [0, 1].")
flags.DEFINE_boolean("overwrite", False, "Replace existing output files.")
flags.mark_flags_as_required(["out_dir"])


def split_support(spec: str) -> tuple[str, str]:
    """``'img.jpg:mask.png'`` -> ``('img.jpg', 'mask.png')``. Paths may contain ':'; the split
    whose two sides both exist wins, else the last ':'."""
    cuts = [i for i, ch in enumerate(spec) if ch == ":"]
    if not cuts:
        raise ValueError(f"--support={spec!r}: expected IMAGE:MASK")
    for i in cuts:
        if os.path.isfile(spec[:i]) and os.path.isfile(spec[i + 1 :]):
            return spec[:i], spec[i + 1 :]
    i = cuts[-1]
    if not spec[:i] or not spec[i + 1 :]:
        raise ValueError(f"--support={spec!r}: expected IMAGE:MASK")
    return spec[:i], spec[i + 1 :]


def output_names(queries: list[str]) -> list[str]:
    """Output stems: the query's file stem, with ``_<i>`` appended where stems collide."""
    stems = [Path(q).stem for q in queries]
    return [f"{s}_{i}" if stems.count(s) > 1 else s for i, s in enumerate(stems)]


def _check_flags() -> dict[str, Any]:
    """Validate the flags that need no file; return the model's keyword arguments."""
    if not FLAGS.support:
        raise ValueError("--support: give 1 to 5 supports as IMAGE:MASK")
    if not FLAGS.query:
        raise ValueError("--query: give at least one query image")
    if not (math.isfinite(FLAGS.alpha) and 0.0 <= FLAGS.alpha <= 1.0):
        raise ValueError(f"--alpha={FLAGS.alpha}: expected a number in [0, 1]")
    return model_flags.model_arguments()


def main(argv: list[str]) -> None:
    import numpy as np

    from panet_jax.evaluation import overlays
    from panet_jax.inference import predictor

    model_arguments = _check_flags()
    supports = [split_support(s) for s in FLAGS.support]
    out_dir = Path(FLAGS.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out_dir={FLAGS.out_dir!r} exists and is not a directory")
    names = output_names(FLAGS.query)
    targets = [(out_dir / f"{n}_mask.png", out_dir / f"{n}_overlay.png") for n in names]
    existing = [str(p) for pair in targets for p in pair if p.exists()]
    if existing and not FLAGS.overwrite:
        raise FileExistsError(
            "refusing to overwrite existing outputs (pass --overwrite to replace them): "
            + ", ".join(existing)
        )
    masks = predictor.predict(
        FLAGS.checkpoint,
        [s[0] for s in supports],
        [s[1] for s in supports],
        list(FLAGS.query),
        mask_value=FLAGS.mask_value,
        **model_arguments,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    palette = [(0, 0, 0), overlays.label_color(1)]
    for query, mask, (mask_path, overlay_path) in zip(FLAGS.query, masks, targets, strict=True):
        image = predictor.load_image(query, query)
        if FLAGS.mask_format == "palette":
            overlays.save_png(mask, mask_path, overwrite=FLAGS.overwrite, palette=palette)
        else:
            overlays.save_png(mask * np.uint8(255), mask_path, overwrite=FLAGS.overwrite)
        overlays.save_png(
            overlays.overlay(image, mask, FLAGS.alpha), overlay_path, overwrite=FLAGS.overwrite
        )
        print(f"{query}: {mask.shape[1]}x{mask.shape[0]}, {100 * mask.mean():.1f}% object -> "
              f"{mask_path}, {overlay_path}")  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
