r"""Segment your own images with a trained PANet (1-way, 1 to 5 annotated supports).

    python experiments/segment.py --checkpoint=runs/p0s1 \
        --support=cat1.jpg:cat1_mask.png --support=cat2.jpg:cat2_mask.png \
        --query=photo1.jpg --query=photo2.jpg --out_dir=out/

Each ``--support`` is ``IMAGE:MASK``; the mask has the image's size, and its non-zero pixels
mark the object (or the pixels equal to ``--mask_value``, e.g. a VOC palette index). For every
query ``<name>.jpg`` this writes, at the query's original size, ``<name>_mask.png`` (0/255 grey,
or with ``--mask_format=palette`` a palette PNG with index 1 = object) and
``<name>_overlay.png``. Existing files are never replaced unless ``--overwrite`` is given.

``--checkpoint``: a training workdir, its ``checkpoints`` directory or a converted ``.npz``.
The input size defaults to the training config's ``data.image_size`` (417x417 without one).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Training workdir, checkpoints dir or converted .npz.")
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
flags.DEFINE_list("image_size", None, "H,W the model sees (default: the checkpoint's training "
                  "size, else 417,417).")  # fmt: skip
flags.DEFINE_float("alpha", 0.5, "Overlay opacity.")
flags.DEFINE_boolean("overwrite", False, "Replace existing output files.")
flags.mark_flags_as_required(["checkpoint", "out_dir"])

DEFAULT_IMAGE_SIZE = (417, 417)


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


def _image_size(checkpoint: str) -> tuple[int, int]:
    if FLAGS.image_size:
        try:
            h, w = (int(v) for v in FLAGS.image_size)
        except ValueError as e:
            raise ValueError(f"--image_size={','.join(FLAGS.image_size)!r}: expected H,W") from e
        return h, w
    if checkpoint.endswith(".npz"):
        return DEFAULT_IMAGE_SIZE
    from panet_jax import checkpointing

    try:
        return tuple(int(v) for v in checkpointing.load_config(checkpoint).data.image_size)
    except (FileNotFoundError, ValueError, OSError, AttributeError, KeyError):
        return DEFAULT_IMAGE_SIZE


def run() -> list[Path]:
    """Segment the queries; return the written paths."""
    import numpy as np

    from panet_jax import predict as predict_lib
    from panet_jax import visualize

    if not FLAGS.support:
        raise ValueError("--support: give 1 to 5 supports as IMAGE:MASK")
    if not FLAGS.query:
        raise ValueError("--query: give at least one query image")
    supports = [split_support(s) for s in FLAGS.support]
    out_dir = Path(FLAGS.out_dir)
    names = output_names(FLAGS.query)
    targets = [(out_dir / f"{n}_mask.png", out_dir / f"{n}_overlay.png") for n in names]
    existing = [str(p) for pair in targets for p in pair if p.exists()]
    if existing and not FLAGS.overwrite:
        raise FileExistsError(
            "refusing to overwrite existing outputs (pass --overwrite to replace them): "
            + ", ".join(existing)
        )
    if not os.path.exists(FLAGS.checkpoint):
        raise ValueError(f"--checkpoint={FLAGS.checkpoint!r} does not exist")
    image_size = _image_size(FLAGS.checkpoint)
    variables = predict_lib.resolve_variables(FLAGS.checkpoint)
    masks = predict_lib.predict(
        variables,
        [s[0] for s in supports],
        [s[1] for s in supports],
        list(FLAGS.query),
        image_size=image_size,
        mask_value=FLAGS.mask_value,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    palette = [(0, 0, 0), visualize.label_color(1)]
    written = []
    for query, mask, (mask_path, overlay_path) in zip(FLAGS.query, masks, targets, strict=True):
        image = predict_lib.load_image(query, query)
        if FLAGS.mask_format == "palette":
            visualize.save_png(mask, mask_path, overwrite=FLAGS.overwrite, palette=palette)
        else:
            visualize.save_png(mask * np.uint8(255), mask_path, overwrite=FLAGS.overwrite)
        visualize.save_png(
            visualize.overlay(image, mask, FLAGS.alpha), overlay_path, overwrite=FLAGS.overwrite
        )
        written += [mask_path, overlay_path]
        print(f"{query}: {mask.shape[1]}x{mask.shape[0]}, {100 * mask.mean():.1f}% object -> "
              f"{mask_path}, {overlay_path}")  # fmt: skip
    return written


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        run()
    except (ValueError, FileExistsError) as e:
        sys.exit(f"segment.py: error: {e}")


if __name__ == "__main__":
    app.run(main)
