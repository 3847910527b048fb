r"""Prepare a few-shot segmentation dataset as TFDS ``array_record`` files (no downloads).

    python experiments/prepare_data.py --dataset=synthetic_fss --data_dir=~/tensorflow_datasets
    python experiments/prepare_data.py --dataset=synthetic_fss --config=tiny --data_dir=/tmp/tfds
    python experiments/prepare_data.py --dataset=pascal_voc_aug \
        --manual_dir=/data/pascal --data_dir=~/tensorflow_datasets   # holds VOCdevkit/VOC2012
    python experiments/prepare_data.py --dataset=coco20i \
        --manual_dir=/data/coco --data_dir=~/tensorflow_datasets     # annotations/, train2014/

An existing prepared dataset is never replaced unless ``--overwrite`` is given; a failed run
leaves ``--data_dir`` as it was. ``--hsnet_lists=DIR`` also writes HSNet-style fold lists
(``DIR/{trn,val}/fold{k}.txt``, lines ``<id>__<cls>``) generated from the prepared masks.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys
import time

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "dataset", None, ["pascal_voc_aug", "coco20i", "synthetic_fss"], "TFDS builder to prepare."
)
flags.DEFINE_string("data_dir", None, "TFDS data_dir to write the prepared dataset into.")
flags.DEFINE_string(
    "manual_dir", None, "Folder with the raw files (VOC/COCO); not used by synthetic_fss."
)
flags.DEFINE_string("config", None, "Builder config (synthetic_fss: default | small | tiny).")
flags.DEFINE_bool("overwrite", False, "Rebuild a dataset that is already prepared.")
flags.DEFINE_string(
    "hsnet_lists", None, "Also write HSNet-style <id>__<cls> fold lists into this folder."
)
flags.mark_flags_as_required(["dataset", "data_dir"])


def write_hsnet_lists(builder, out_dir: str) -> list[str]:
    """``out_dir/{trn,val}/fold{k}.txt`` from the prepared index (VOC: trn = trainaug - val)."""
    from panet_jax.data import folds
    from panet_jax.data.pipeline import split_index

    dataset = {"pascal_voc_aug": "pascal5i", "coco20i": "coco20i", "synthetic_fss": "synthetic"}[
        builder.name
    ]
    splits = sorted(builder.info.splits)
    eval_split = "test" if "test" in splits else "val"
    train_split = "trainaug" if "trainaug" in splits else "train"
    written = []
    held_out = set(split_index(builder, eval_split).ids) if eval_split in splits else set()
    for kind, split in (("trn", train_split), ("val", eval_split)):
        if split not in splits:
            continue
        index = split_index(builder, split)
        keep = [
            i for i, image_id in enumerate(index.ids) if kind == "val" or image_id not in held_out
        ]
        ids = [index.ids[i] for i in keep]
        classes = [list(index.classes[i]) for i in keep]
        os.makedirs(os.path.join(out_dir, kind), exist_ok=True)
        for fold in range(folds.NUM_FOLDS):
            lines = folds.hsnet_fold_lines(ids, classes, folds.test_classes(dataset, fold))
            path = os.path.join(out_dir, kind, f"fold{fold}.txt")
            with open(path, "w") as f:
                f.writelines(line + "\n" for line in lines)
            written.append(f"{path} ({len(lines)} pairs)")
    return written


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    from panet_jax.data import builders

    data_dir = os.path.expanduser(FLAGS.data_dir)
    manual_dir = os.path.expanduser(FLAGS.manual_dir) if FLAGS.manual_dir else None
    start = time.time()
    try:
        builder = builders.get_builder(FLAGS.dataset, data_dir=data_dir, config=FLAGS.config)
        if builder.is_prepared() and FLAGS.hsnet_lists and not FLAGS.overwrite:
            logging.info("%s is already prepared; only writing the HSNet lists", FLAGS.dataset)
        else:
            logging.info("preparing %s into %s", FLAGS.dataset, data_dir)
            builder = builders.prepare(
                FLAGS.dataset, data_dir=data_dir, manual_dir=manual_dir, config=FLAGS.config,
                overwrite=FLAGS.overwrite,
            )  # fmt: skip
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"prepare_data: error: {e}", file=sys.stderr)
        sys.exit(1)
    config = f" (config {builder.builder_config.name})" if builder.builder_config else ""
    print(f"{builder.name}{config} at {os.fspath(builder.data_path)}, {time.time() - start:.1f} s")
    for split, info in sorted(builder.info.splits.items()):
        print(f"  {split}: {info.num_examples} examples")
    if FLAGS.hsnet_lists:
        for line in write_hsnet_lists(builder, os.path.expanduser(FLAGS.hsnet_lists)):
            print(f"  wrote {line}")


if __name__ == "__main__":
    app.run(main)
