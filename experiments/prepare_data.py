r"""Prepare a few-shot segmentation dataset as TFDS ``array_record`` files (no downloads).

    python experiments/prepare_data.py --dataset=synthetic_fss --data_dir=~/tensorflow_datasets
    python experiments/prepare_data.py --dataset=synthetic_fss --builder_config=tiny \
        --data_dir=/tmp/tfds
    python experiments/prepare_data.py --dataset=pascal_voc_aug \
        --manual_dir=/data/pascal --data_dir=~/tensorflow_datasets   # holds VOCdevkit/VOC2012
    python experiments/prepare_data.py --dataset=coco20i \
        --manual_dir=/data/coco --data_dir=~/tensorflow_datasets     # annotations/, train2014/
    python experiments/prepare_data.py --dataset=fss1000 \
        --manual_dir=/data/fss --data_dir=~/tensorflow_datasets      # FSS-1000/<class>/...
    python experiments/prepare_data.py --dataset=folder \
        --manual_dir=/data/my_pets --data_dir=~/tensorflow_datasets  # your own (docs/own_data.md)

An existing prepared dataset is never replaced unless ``--overwrite`` is given; a failed run
leaves ``--data_dir`` as it was, and leftovers of an interrupted one are removed on the next.
``--hsnet_lists=DIR`` also writes HSNet-style fold lists (``DIR/{trn,val}/fold{k}.txt``, lines
``<id>__<cls>``) generated from the prepared masks.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time
from typing import Any

from absl import flags, logging

from panet_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "dataset",
    None,
    ["pascal_voc_aug", "coco20i", "synthetic_fss", "fss1000", "folder"],
    "TFDS builder to prepare.",
)
flags.DEFINE_string("data_dir", None, "TFDS data_dir to write the prepared dataset into.")
flags.DEFINE_string(
    "manual_dir", None, "Folder with the raw files (VOC/COCO/FSS-1000/yours); not synthetic_fss."
)
flags.DEFINE_string(
    "builder_config",
    None,
    "TFDS builder config (synthetic_fss: default | small | tiny; folder: the dataset's name, "
    "default the folder's name).",
)
flags.DEFINE_enum(
    "layout", "auto", ["auto", "class_folders", "label_maps"], "folder: the folder's layout."
)
flags.DEFINE_integer("folds", 0, "folder: N >= 2 class folds instead of a train/val/test split.")
flags.DEFINE_integer("split_seed", 0, "folder: seed of the class split made without class lists.")
flags.DEFINE_bool(
    "skip_bad_files", False, "folder: leave bad files and empty classes out (counted) "
    "instead of stopping at the first."
)  # fmt: skip
flags.DEFINE_integer("workers", None, "folder: decoding threads (default: min(8, CPUs)).")
flags.DEFINE_bool("overwrite", False, "Rebuild a dataset that is already prepared.")
flags.DEFINE_string(
    "hsnet_lists", None, "Also write HSNet-style <id>__<cls> fold lists into this folder."
)
flags.mark_flags_as_required(["dataset", "data_dir"])


def builder_config(manual_dir: str | None) -> Any:
    """``--builder_config``, or for ``folder`` its config from the folder flags."""
    if FLAGS.dataset != "folder":
        return FLAGS.builder_config
    from panet_jax.data.builders import folder

    if not manual_dir:
        raise cli.FlagError("--dataset=folder needs --manual_dir=<your folder>")
    name = FLAGS.builder_config or folder.dataset_name(manual_dir)
    workers = {"workers": FLAGS.workers} if FLAGS.workers else {}
    return folder.FolderConfig(
        name=folder.check_name(name), description=f"from {os.path.abspath(manual_dir)}",
        layout=FLAGS.layout, folds=FLAGS.folds, split_seed=FLAGS.split_seed,
        skip_bad_files=FLAGS.skip_bad_files, **workers,
    )  # fmt: skip


def main(argv: list[str]) -> None:
    from panet_jax.data import builders, hsnet_lists

    data_dir = os.path.expanduser(FLAGS.data_dir)
    manual_dir = os.path.expanduser(FLAGS.manual_dir) if FLAGS.manual_dir else None
    start = time.time()
    config = builder_config(manual_dir)
    builder = builders.get_builder(FLAGS.dataset, data_dir=data_dir, config=config)
    if builder.is_prepared() and FLAGS.hsnet_lists and not FLAGS.overwrite:
        logging.info("%s is already prepared; only writing the HSNet lists", FLAGS.dataset)
    else:
        logging.info("preparing %s into %s", FLAGS.dataset, data_dir)
        builder = builders.prepare(
            FLAGS.dataset, data_dir=data_dir, manual_dir=manual_dir, config=config,
            overwrite=FLAGS.overwrite,
        )  # fmt: skip
    shown = f" (config {builder.builder_config.name})" if builder.builder_config else ""
    print(f"{builder.name}{shown} at {os.fspath(builder.data_path)}, {time.time() - start:.1f} s")
    for split, info in sorted(builder.info.splits.items()):
        print(f"  {split}: {info.num_examples} examples")
    for line in builders.folder.summary(builder) if FLAGS.dataset == "folder" else []:
        print(f"  {line}")
    if FLAGS.hsnet_lists:
        for line in hsnet_lists.write_hsnet_lists(builder, os.path.expanduser(FLAGS.hsnet_lists)):
            print(f"  wrote {line}")


if __name__ == "__main__":
    cli.run(main)
