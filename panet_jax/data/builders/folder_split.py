"""The class split of a user's folder dataset, in order of preference:

a. ``--folds=N`` (N >= 2): the benchmarks' cross-validation. Class ids 1..C (sorted class
   folder names, or the values of ``classes.txt`` in order) cut into N consecutive blocks
   (``np.array_split``, sizes differing by at most one); fold ``i`` tests block ``i`` and trains
   on the others, as PASCAL-5i's ``{5i+1..5i+5}``. Every image is in one TFDS split, ``images``.
b. the user's lists ``<root>/train.txt``, ``test.txt`` and optionally ``val.txt``, one class
   name per line, disjoint (classes in no list are left out).
c. otherwise a seeded split: the sorted names permuted by
   ``np.random.RandomState(seed).permutation``, then cut 60 : 20 : 20 into train, val, test
   (at least one test and one train class; no val class under three classes). The split and
   its seed are recorded in the dataset's metadata and stated in every evaluation report.

Under (b) and (c) TFDS splits ``train``, ``val`` (when it has classes) and ``test`` hold the
images that show a class of the split (a label map showing classes of two splits is in both).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from panet_jax.data.builders import class_split
from panet_jax.data.folder_classes import ALL_SPLIT  # noqa: F401 (the split under folds)

LIST_FILES = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}
SEEDED_FRACTIONS = {"val": 0.2, "test": 0.2}  # the rest is train


@dataclasses.dataclass(frozen=True)
class FolderSplit:
    """Class names per split (``splits``) or per fold's test block (``folds``), and in words."""

    kind: str  # 'folds' | 'lists' | 'seeded'
    description: str
    splits: dict[str, list[str]] | None = None  # split -> class names (kinds lists / seeded)
    folds: list[list[str]] | None = None  # fold -> test class names (kind folds)

    def used(self) -> set[str]:
        """The classes some split or fold uses."""
        groups = self.folds if self.folds is not None else list((self.splits or {}).values())
        return {n for g in groups for n in g}


def fold_split(names: list[str], folds: int) -> FolderSplit:
    """(a): consecutive blocks of the classes in id order."""
    if len(names) < folds:
        raise ValueError(
            f"--folds={folds} needs at least {folds} classes, the folder has {len(names)}"
        )
    blocks = [list(map(str, b)) for b in np.array_split(np.asarray(names, object), folds)]
    text = f"{folds} folds of consecutive class ids (fold i tests block i, trains on the rest)"
    return FolderSplit("folds", text, folds=blocks)


def list_split(root: str, names: list[str]) -> FolderSplit | None:
    """(b): the user's ``train.txt`` / ``val.txt`` / ``test.txt``, or None without any."""
    paths = {s: os.path.join(root, f) for s, f in LIST_FILES.items()}
    present = {s for s, p in paths.items() if os.path.isfile(p)}
    if not present:
        return None
    for split in ("train", "test"):
        if split not in present:
            raise FileNotFoundError(
                f"{paths[split]} not found: with class lists in {root}, "
                "train.txt and test.txt are needed (val.txt optional)"
            )
    lists = {s: class_split.read_class_list(paths[s]) for s in sorted(present)}
    known = set(names)
    for split, listed in lists.items():
        missing = [n for n in listed if n not in known]
        if missing:
            raise ValueError(
                f"{paths[split]} names class {missing[0]!r}, which the folder does "
                "not have (or which has no usable image)"
            )
    class_split.check_disjoint(lists, {s: paths[s] for s in lists})
    splits = {s: sorted(lists.get(s, []), key=names.index) for s in LIST_FILES}
    return FolderSplit(
        "lists", f"class lists {', '.join(LIST_FILES[s] for s in sorted(present))}", splits=splits
    )


def seeded_split(names: list[str], seed: int) -> FolderSplit:
    """(c): a seeded 60 : 20 : 20 split of the sorted names."""
    n = len(names)
    if n < 2:
        raise ValueError(f"a class split needs at least 2 classes, the folder has {n}")
    n_test = max(1, round(n * SEEDED_FRACTIONS["test"]))
    n_val = max(1, round(n * SEEDED_FRACTIONS["val"])) if n >= 3 else 0
    train, val, test = class_split.seeded_partition(
        names, [n - n_test - n_val, n_val, n_test], seed
    )
    order = {name: i for i, name in enumerate(names)}
    splits = {
        s: sorted(v, key=order.__getitem__)
        for s, v in (("train", train), ("val", val), ("test", test))
    }
    text = (
        f"SEEDED split (no train.txt / test.txt): sorted class names permuted by "
        f"np.random.RandomState({seed}).permutation, {n - n_test - n_val}/{n_val}/{n_test} "
        "train/val/test classes"
    )
    return FolderSplit("seeded", text, splits=splits)


def choose(root: str, names: list[str], folds: int, seed: int) -> FolderSplit:
    """The split of the folder ``root`` with classes ``names`` (id order)."""
    if folds:
        if folds < 2:
            raise ValueError(f"--folds={folds}: expected 0 (a class split) or at least 2")
        if any(os.path.isfile(os.path.join(root, f)) for f in LIST_FILES.values()):
            raise ValueError(
                f"{root} has class lists ({'/'.join(LIST_FILES.values())}) and "
                f"--folds={folds} was given: use one or the other"
            )
        return fold_split(names, folds)
    return list_split(root, names) or seeded_split(names, seed)
