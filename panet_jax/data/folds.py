"""Class folds of the few-shot benchmarks (pure Python, no TensorFlow).

Class ids are 1-based and equal the label values stored in the prepared masks:

* ``pascal5i``: VOC ids 1 (aeroplane) .. 20 (tvmonitor). Fold ``i`` tests ``{5i+1 .. 5i+5}``
  (PANet ``label_sets = i``, the paper's split ``i+1``).
* ``coco20i``: 1 + position in ``COCO.getCatIds()`` (1..80).
  ``coco_split='panet'``: fold ``i`` tests the consecutive block ``{20i+1 .. 20i+20}`` (PANet).
  ``coco_split='interleaved'``: fold ``i`` tests ``{i+1, i+5, ..., i+77}`` (FWB / PFENet / HSNet
  "COCO-20i").
* ``synthetic``: 20 classes, fold ``i`` tests ``{5i+1 .. 5i+5}``.
* ``fss1000``: one fold, HSNet's class split (juhongm999/hsnet ``data/splits/fss``): training
  classes 1..520, validation 521..760, test 761..1000 (HSNet's class index + 1). A prepared
  dataset states its own split (``metadata['split_classes']``), which the episode sampler uses.

* ``folder``: a user's folder (:mod:`panet_jax.data.builders.folder`): its classes, class split
  or folds are in the prepared dataset's metadata (:mod:`panet_jax.data.folder_classes`);
  here only the bounds: class ids up to 1000, up to ``MAX_FOLDER_FOLDS`` folds.

Training classes are all the other classes of the dataset (FSS-1000: the training split's).
"""

from __future__ import annotations

MAX_FOLDER_FOLDS = 10
NUM_CLASSES = {"pascal5i": 20, "coco20i": 80, "synthetic": 20, "fss1000": 1000, "folder": 1000}
NUM_FOLDS = 4
FOLDS = {"pascal5i": NUM_FOLDS, "coco20i": NUM_FOLDS, "synthetic": NUM_FOLDS, "fss1000": 1,
         "folder": MAX_FOLDER_FOLDS}  # fmt: skip
# Datasets whose classes are known only from the prepared dataset.
PREPARED_CLASSES = ("folder",)
# HSNet's FSS-1000 class split sizes: training, validation and test classes, in id order.
FSS1000_SPLIT_SIZES = {"train": 520, "val": 240, "test": 240}
COCO_SPLITS = ("panet", "interleaved")

VOC_CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def check_fold(dataset: str, fold: int, coco_split: str = "panet") -> None:
    """``ValueError`` for an unknown dataset, a fold out of range or an unknown coco_split."""
    _check(dataset, fold, coco_split)


def _prepared_only(dataset: str) -> None:
    if dataset in PREPARED_CLASSES:
        raise ValueError(f"the classes of a {dataset} dataset are in its prepared metadata "
                         "(panet_jax.data.folder_classes)")  # fmt: skip


def _check(dataset: str, fold: int, coco_split: str) -> None:
    if dataset not in NUM_CLASSES:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(NUM_CLASSES)}")
    if not isinstance(fold, int) or not 0 <= fold < FOLDS[dataset]:
        raise ValueError(
            f"fold {fold!r} is out of range for {dataset}: expected an int in "
            f"0..{FOLDS[dataset] - 1}"
        )
    if coco_split not in COCO_SPLITS:
        raise ValueError(f"unknown coco_split {coco_split!r}; expected one of {COCO_SPLITS}")


def all_classes(dataset: str) -> list[int]:
    """All class ids of ``dataset`` (``[1, ..., C]``)."""
    _check(dataset, 0, "panet")
    return list(range(1, NUM_CLASSES[dataset] + 1))


def test_classes(dataset: str, fold: int, coco_split: str = "panet") -> list[int]:
    """Sorted held-out class ids of ``fold`` (5 for PASCAL/synthetic, 20 for COCO)."""
    _check(dataset, fold, coco_split)
    _prepared_only(dataset)
    if dataset == "fss1000":
        return fss1000_split_classes("test")
    if dataset == "coco20i" and coco_split == "interleaved":
        return list(range(fold + 1, 81, 4))
    n = NUM_CLASSES[dataset] // NUM_FOLDS
    return list(range(n * fold + 1, n * fold + n + 1))


def train_classes(dataset: str, fold: int, coco_split: str = "panet") -> list[int]:
    """Sorted training class ids of ``fold`` (all classes minus :func:`test_classes`;
    FSS-1000: the training split's classes)."""
    if dataset == "fss1000":
        _check(dataset, fold, coco_split)
        return fss1000_split_classes("train")
    _prepared_only(dataset)
    held_out = set(test_classes(dataset, fold, coco_split))
    return [c for c in all_classes(dataset) if c not in held_out]


def fss1000_split_classes(split: str) -> list[int]:
    """Class ids of an FSS-1000 split under HSNet's 520 / 240 / 240 split."""
    start = 1
    for name, size in FSS1000_SPLIT_SIZES.items():
        if name == split:
            return list(range(start, start + size))
        start += size
    raise ValueError(
        f"unknown FSS-1000 split {split!r}; expected one of {list(FSS1000_SPLIT_SIZES)}"
    )


def official_label_order(dataset: str, fold: int, train: bool, coco_split: str = "panet") -> list:
    """The class ids in the iteration order of the official ``labels`` *set*.

    The official code (``util/utils.py`` ``CLASS_LABELS``, ``train.py``, ``test.py``) builds the
    label set with set differences and iterates it to build the per-class sub-datasets; the
    episode draw picks sub-dataset *positions*, so exact replication needs the same order.
    The same CPython expressions are evaluated here (small-int set order is deterministic).
    """
    _check(dataset, fold, coco_split)
    all_ = set(range(1, NUM_CLASSES[dataset] + 1))
    held_out = set(test_classes(dataset, fold, coco_split))
    label_set = all_ - held_out  # CLASS_LABELS[name][fold]
    if not train:
        label_set = all_ - label_set  # test.py: CLASS_LABELS['all'] - CLASS_LABELS[fold]
    return list(label_set)


def hsnet_fold_lines(
    ids: list[str], classes: list[list[int]], fold_classes: list[int]
) -> list[str]:
    """HSNet-style ``<image id>__<class, 2 digits>`` lines, one per (image, class) pair.

    Args:
      ids: image ids in split order.
      classes: for each image, the class ids present in its mask.
      fold_classes: the classes to list (a fold's test classes for ``val/fold{k}.txt``).

    Returns the pairs ordered by image (split order), then class id. HSNet ships its own lists
    (``data/splits/pascal/val/fold*.txt``), which cannot be downloaded here; these are generated
    from the masks and include every pair, so counts can differ from HSNet's shipped files.
    """
    wanted = set(fold_classes)
    return [
        f"{image_id}__{c:02d}"
        for image_id, present in zip(ids, classes, strict=True)
        for c in sorted(set(present) & wanted)
    ]


def parse_hsnet_line(line: str) -> tuple[str, int]:
    """``'2007_000033__01'`` -> ``('2007_000033', 1)``."""
    image_id, sep, cls = line.strip().rpartition("__")
    if not sep:
        raise ValueError(f"not an HSNet fold-list line (expected '<id>__<cls>'): {line!r}")
    return image_id, int(cls)
