"""HSNet-style fold lists (``<image id>__<class, 2 digits>`` lines) of a prepared dataset.

HSNet (juhongm999/hsnet, ``data/splits/pascal/{trn,val}/fold{k}.txt``) lists one line per
(image, class) pair; ``trn/fold{k}.txt`` holds the training images of fold ``k``'s classes and
``val/fold{k}.txt`` the evaluation images. HSNet's own files cannot be downloaded here, so these
are generated from the prepared masks and include every pair: counts can differ from HSNet's.
"""

from __future__ import annotations

import os
from typing import Any

from panet_jax import files
from panet_jax.data import folds
from panet_jax.data.builders import DATASET_OF_BUILDER

LIST_KINDS = ("trn", "val")


def write_hsnet_lists(builder: Any, out_dir: str | os.PathLike) -> list[str]:
    """``out_dir/{trn,val}/fold{k}.txt`` from ``builder``'s prepared index (training images
    exclude the evaluation split: VOC trn = trainaug - val); each file written atomically and
    replaced if it exists. Returns ``'<path> (<n> pairs)'`` per file."""
    from panet_jax.data.pipeline import split_index  # TensorFlow

    dataset = DATASET_OF_BUILDER.get(builder.name)
    if dataset not in folds.NUM_CLASSES or dataset in ("fss1000", *folds.PREPARED_CLASSES):
        raise ValueError(f"HSNet fold lists need PASCAL / COCO folds, not {builder.name}")
    splits = sorted(builder.info.splits)
    eval_split = "test" if "test" in splits else "val"
    train_split = "trainaug" if "trainaug" in splits else "train"
    held_out = set(split_index(builder, eval_split).ids) if eval_split in splits else set()
    written = []
    for kind, split in zip(LIST_KINDS, (train_split, eval_split), strict=True):
        if split not in splits:
            continue
        index = split_index(builder, split)
        keep = [i for i, image_id in enumerate(index.ids)
                if kind == "val" or image_id not in held_out]  # fmt: skip
        ids = [index.ids[i] for i in keep]
        classes = [list(index.classes[i]) for i in keep]
        os.makedirs(os.path.join(out_dir, kind), exist_ok=True)
        for fold in range(folds.NUM_FOLDS):
            lines = folds.hsnet_fold_lines(ids, classes, folds.test_classes(dataset, fold))
            path = os.path.join(out_dir, kind, f"fold{fold}.txt")
            files.atomic_write(path, "".join(line + "\n" for line in lines), overwrite=True)
            written.append(f"{path} ({len(lines)} pairs)")
    return written
