"""``fss1000``: FSS-1000 (Li et al., CVPR 2020) from a local copy, with HSNet's class split.

FSS-1000 has 1,000 class folders of (normally) 10 image / mask pairs ``1.jpg .. 10.jpg``,
``1.png .. 10.png``. Splits ``train``, ``val`` and ``test`` hold the images of HSNet's
(Min et al., ICCV 2021, github juhongm999/hsnet ``data/fss.py``) trn / val / test classes,
520 / 240 / 240 of them; the test classes are the official ``fss_test_set.txt`` of
github HKUSTCV/FSS-1000.

**Class split source**, in order of preference:

a. split lists in HSNet's format, ``trn.txt``, ``val.txt``, ``test.txt`` (one class folder name
   per line) in ``<manual_dir>/splits/fss/`` or ``<manual_dir>/fss_splits/``;
a'. otherwise HSNet's own lists, shipped in ``panet_jax/data/splits/fss1000/``, when every class
   they name has a folder (the full dataset);
b. otherwise the official ``<manual_dir>/fss_test_set.txt`` for the test classes and a seeded
   split of the other classes: their sorted names permuted by
   ``np.random.RandomState(0).permutation``, the first ``round(n * 520 / 760)`` (half up) are
   ``train``, the rest ``val``. This is **not** HSNet's split: numbers on its ``val`` split are
   not comparable to HSNet's (``metadata["hsnet_comparable"]`` is False);
c. otherwise preparation fails, explaining (a) and (b).

**Class ids** are 1-based, HSNet's class index + 1: the train classes sorted by name, then the
val classes, then the test classes (1..520, 521..760, 761..1000 for the full split).

**Masks** are read as HSNet does (``Image.open(png).convert('L')``, then ``>= 128`` -> 1) and
stored **binary**: ``mask`` is 0 background / 1 foreground, since a uint8 map cannot hold 1,000
class ids. The foreground's class is the example's single ``classes`` entry (given even when
the mask is empty). ``metadata["mask_encoding"] == "binary"`` says so, and
``metadata["class_names"][c - 1]`` names class ``c``. ``instances`` is all zero and
``scribble`` all 255 (FSS-1000 has neither).

**Example order**: classes in id order, each class's images in numeric order (``10`` after
``9``); ids are ``<class>/<n>``. ``class_order`` in the split index lists each class's images in
HSNet's order (``sorted(glob(...))``, lexical: ``1, 10, 2, ..., 9``), the order in which its
test loop visits the queries.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from panet_jax.data.builders import common
from panet_jax.data.builders.class_split import (
    check_disjoint,
    read_class_list,
    seeded_partition,
)

SPLITS = ("train", "val", "test")
HSNET_LIST_NAMES = {"train": "trn.txt", "val": "val.txt", "test": "test.txt"}
HSNET_CLASS_COUNTS = {"train": 520, "val": 240, "test": 240}
SPLIT_LIST_DIRS = (os.path.join("splits", "fss"), "fss_splits")  # relative to manual_dir
SHIPPED_SPLIT_DIR = os.path.join("splits", "fss1000")  # HSNet's lists, in panet_jax.data
OFFICIAL_TEST_LIST = "fss_test_set.txt"
FALLBACK_SEED = 0
IMAGES_PER_CLASS = 10
MASK_THRESHOLD = 128  # HSNet: grey >= 128 -> foreground
SOURCE_HSNET = "hsnet_lists"
SOURCE_FALLBACK = "fss_test_set_seeded"

log = logging.getLogger(__name__)

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put FSS-1000 in `manual_dir` (HSNet's layout):

  <manual_dir>/FSS-1000/<class>/1.jpg .. 10.jpg    images
  <manual_dir>/FSS-1000/<class>/1.png .. 10.png    masks (white foreground on black)

`manual_dir` may also be the FSS-1000 folder itself (the folder holding the 1,000 class
folders). The class split comes from, in order of preference:

  (a) split lists of your own, in HSNet's format, at
        <manual_dir>/splits/fss/{trn,val,test}.txt   or   <manual_dir>/fss_splits/{trn,val,test}.txt
      (one class folder name per line);
  (a') otherwise HSNet's own lists (github juhongm999/hsnet, data/splits/fss/; 520 / 240 / 240
      classes), shipped with panet_jax, when every class they name has a folder: the full
      FSS-1000 needs nothing else. Use these to compare with HSNet and its successors.
  (b) otherwise (a subset of the classes): the official test list (github HKUSTCV/FSS-1000,
      fss_test_set.txt) at
        <manual_dir>/fss_test_set.txt
      and a seeded 520:240 train/val split of the other classes. This is NOT HSNet's split:
      val numbers are not comparable to HSNet's.

The images come from the FSS-1000 download linked from github HKUSTCV/FSS-1000; nothing is
downloaded by this builder.
"""


@dataclasses.dataclass(frozen=True)
class ClassSplit:
    """The class folder names of each split (sorted) and where the split came from."""

    classes: dict[str, list[str]]  # split -> sorted class folder names
    source: str  # SOURCE_HSNET or SOURCE_FALLBACK
    description: str  # human-readable, stored as metadata["class_split_source"]

    @property
    def class_names(self) -> list[str]:
        """All class names in id order (id = position + 1)."""
        return [name for split in SPLITS for name in self.classes[split]]

    @property
    def hsnet_comparable(self) -> bool:
        """Whether the split is HSNet's own (so results are comparable to HSNet's)."""
        return self.source == SOURCE_HSNET

    def class_ids(self) -> dict[str, int]:
        """Class folder name -> 1-based class id (HSNet's class index + 1)."""
        return {name: i + 1 for i, name in enumerate(self.class_names)}


def _has_jpg(folder: str) -> bool:
    with os.scandir(folder) as it:
        return any(e.name.endswith(".jpg") and e.is_file() for e in it)


def find_root(manual_dir: os.PathLike | str) -> str:
    """The FSS-1000 folder: ``<manual_dir>/FSS-1000``, or ``manual_dir`` itself when it holds
    class folders (sub-folders with ``.jpg`` files)."""
    manual_dir = os.fspath(manual_dir)
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual_dir does not exist: {manual_dir}")
    nested = os.path.join(manual_dir, "FSS-1000")
    if os.path.isdir(nested):
        return nested
    with os.scandir(manual_dir) as it:
        if any(e.is_dir() and not e.name.startswith(".") and _has_jpg(e.path) for e in it):
            return manual_dir
    raise FileNotFoundError(
        f"no FSS-1000 folder under {manual_dir} (looked for {nested}, or class folders of "
        f".jpg/.png pairs in {manual_dir} itself).\n" + MANUAL_DOWNLOAD_INSTRUCTIONS
    )


def class_folders(root: str) -> list[str]:
    """Sorted names of the class folders in ``root`` (sub-folders holding ``.jpg`` files)."""
    with os.scandir(root) as it:
        return sorted(
            e.name for e in it if e.is_dir() and not e.name.startswith(".") and _has_jpg(e.path)
        )


def _check_folders(root: str, names: list[str], list_path: str) -> None:
    for name in names:
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"{list_path} names class {name!r} but its folder {folder} does not exist"
            )


def find_split_dir(manual_dir: str) -> str | None:
    """The first of ``<manual_dir>/splits/fss``, ``<manual_dir>/fss_splits`` that exists."""
    for rel in SPLIT_LIST_DIRS:
        folder = os.path.join(manual_dir, rel)
        if os.path.isdir(folder):
            return folder
    return None


def _warn_counts(split: ClassSplit, where: str) -> None:
    counts = {s: len(split.classes[s]) for s in SPLITS}
    text = "/".join(str(counts[s]) for s in SPLITS)
    if counts != HSNET_CLASS_COUNTS:
        log.warning(
            "fss1000: the class split from %s has %s train/val/test classes, not HSNet's "
            "520/240/240 (fine for a subset; results are not comparable to HSNet's)",
            where, text,
        )  # fmt: skip
    else:
        log.info("fss1000: class split from %s: %s train/val/test classes", where, text)


def hsnet_split(
    root: str, split_dir: str, official_test: str | None = None, manual_dir: str | None = None
) -> ClassSplit:
    """Source (a): HSNet's ``trn.txt``/``val.txt``/``test.txt`` in ``split_dir``.

    ``official_test``: the official test list, only compared (a warning if it differs);
    ``manual_dir``: the lists are named relative to it in the stored description."""
    lists, paths = {}, {}
    for split in SPLITS:
        paths[split] = os.path.join(split_dir, HSNET_LIST_NAMES[split])
        if not os.path.isfile(paths[split]):
            raise FileNotFoundError(
                f"the split folder {split_dir} has no {HSNET_LIST_NAMES[split]} (expected "
                "HSNet's trn.txt, val.txt and test.txt, one class folder name per line)"
            )
        lists[split] = read_class_list(paths[split])
        _check_folders(root, lists[split], paths[split])
    check_disjoint(lists, paths)
    if official_test is not None and os.path.isfile(official_test):
        official = set(read_class_list(official_test))
        if official != set(lists["test"]):
            log.warning(
                "fss1000: %s and %s name different test classes (%d vs %d, %d in common); "
                "using %s",
                paths["test"], official_test, len(lists["test"]), len(official),
                len(official & set(lists["test"])), paths["test"],
            )  # fmt: skip
    listed = {n for names in lists.values() for n in names}
    unlisted = [n for n in class_folders(root) if n not in listed]
    if unlisted:
        log.info(
            "fss1000: %d class folders in %s are in no split list and are left out (e.g. %s)",
            len(unlisted), root, unlisted[:5],
        )  # fmt: skip
    shown = os.path.relpath(split_dir, manual_dir) if manual_dir else split_dir
    split = ClassSplit(
        {s: sorted(v) for s, v in lists.items()},
        SOURCE_HSNET,
        f"HSNet split lists {os.path.join(shown, '{trn,val,test}.txt')}",
    )
    _warn_counts(split, split_dir)
    return split


def seeded_train_val(names: list[str], seed: int = FALLBACK_SEED) -> tuple[list[str], list[str]]:
    """Split ``names`` 520:240: sorted, permuted by ``RandomState(seed)``, first part train."""
    n = len(names)
    if n < 2:
        raise ValueError(f"need at least 2 non-test classes for a train/val split, got {n}")
    n_train = min(max((n * 520 + 380) // 760, 1), n - 1)  # round half up, both non-empty
    train, val = seeded_partition(names, [n_train, n - n_train], seed)
    return train, val


def fallback_split(root: str, test_list: str) -> ClassSplit:
    """Source (b): the official test list and a seeded train/val split of the other classes."""
    test = read_class_list(test_list)
    _check_folders(root, test, test_list)
    rest = [n for n in class_folders(root) if n not in set(test)]
    try:
        train, val = seeded_train_val(rest)
    except ValueError as e:
        raise ValueError(f"{root}: {e} (after removing the classes of {test_list})") from e
    split = ClassSplit(
        {"train": train, "val": val, "test": sorted(test)},
        SOURCE_FALLBACK,
        f"NOT HSNet's split: test classes from {OFFICIAL_TEST_LIST}, train/val a seeded "
        f"520:240 split of the other classes (sorted names, "
        f"np.random.RandomState({FALLBACK_SEED}).permutation); results are not comparable "
        "to HSNet's",
    )
    log.warning(
        "fss1000: no HSNet split lists (%s) found: using the test classes of %s and a "
        "SEEDED train/val split of the other classes. This is NOT HSNet's class split, so "
        "results are NOT comparable to HSNet's. Put HSNet's trn.txt, val.txt and test.txt in "
        "one of those folders and prepare again with --overwrite to use its split.",
        " or ".join(SPLIT_LIST_DIRS), test_list,
    )  # fmt: skip
    _warn_counts(split, test_list)
    return split


def shipped_split_dir() -> str:
    """The folder of HSNet's split lists shipped with panet_jax (``panet_jax/data/splits``)."""
    return str(importlib.resources.files("panet_jax.data").joinpath(SHIPPED_SPLIT_DIR))


def _missing_shipped_classes(root: str) -> list[str]:
    """Classes of the shipped HSNet lists that have no folder under ``root``."""
    folder = shipped_split_dir()
    names = [n for f in HSNET_LIST_NAMES.values() for n in read_class_list(os.path.join(folder, f))]
    return [n for n in names if not os.path.isdir(os.path.join(root, n))]


def class_split(root: str, manual_dir: str) -> ClassSplit:
    """The class split from source (a), else HSNet's shipped lists when every class they name
    is present, else (b), else a ``FileNotFoundError`` explaining all three."""
    official_test = os.path.join(manual_dir, OFFICIAL_TEST_LIST)
    split_dir = find_split_dir(manual_dir)
    if split_dir is not None:
        return hsnet_split(root, split_dir, official_test, manual_dir)
    missing = _missing_shipped_classes(root)
    if not missing:
        split = hsnet_split(root, shipped_split_dir(), official_test)
        shipped = "HSNet's split lists (juhongm999/hsnet data/splits/fss, shipped with panet_jax)"
        return dataclasses.replace(split, description=shipped)
    log.info(
        "fss1000: HSNet's shipped split lists name %d classes without a folder in %s (e.g. %s); "
        "not using them", len(missing), root, missing[:3],
    )  # fmt: skip
    if os.path.isfile(official_test):
        return fallback_split(root, official_test)
    looked = [os.path.join(manual_dir, rel) for rel in SPLIT_LIST_DIRS]
    raise FileNotFoundError(
        f"no FSS-1000 class split found: expected HSNet's split lists trn.txt, val.txt and "
        f"test.txt in {looked[0]} or {looked[1]} (preferred), or the official test list "
        f"{official_test} (then train/val are a seeded split, not HSNet's).\n"
        + MANUAL_DOWNLOAD_INSTRUCTIONS
    )


def _stem_key(stem: str) -> tuple[int, int, str]:
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def image_pairs(root: str, name: str) -> list[tuple[str, str, str]]:
    """``(stem, jpg path, png path)`` of a class folder, in numeric order (``10`` after ``9``).

    Every ``.jpg`` needs its ``.png`` (``FileNotFoundError`` naming both); a ``.png`` without a
    ``.jpg`` is skipped with a warning, as HSNet (which lists the ``.jpg`` files) does.
    """
    folder = os.path.join(root, name)
    files = set(os.listdir(folder))
    stems = sorted((f[:-4] for f in files if f.endswith(".jpg")), key=_stem_key)
    if not stems:
        raise FileNotFoundError(f"class folder {folder} has no .jpg image")
    pairs = []
    for stem in stems:
        jpg, png = os.path.join(folder, stem + ".jpg"), os.path.join(folder, stem + ".png")
        if stem + ".png" not in files:
            raise FileNotFoundError(f"image {jpg} has no mask: {png} is missing")
        pairs.append((stem, jpg, png))
    orphans = sorted(f for f in files if f.endswith(".png") and f[:-4] + ".jpg" not in files)
    if orphans:
        log.warning("fss1000: masks without an image in %s are skipped: %s", folder, orphans)
    return pairs


def read_mask(path: str) -> np.ndarray:
    """HSNet's mask: ``Image.open(path).convert('L') >= 128`` as a 0/1 uint8 ``[H, W]`` array
    (RGB, RGBA, palette and grayscale PNGs alike)."""
    grey = common.read_grey_png(path)
    return (grey >= MASK_THRESHOLD).astype(np.uint8)


def load_example(
    name: str, stem: str, jpg: str, png: str, class_id: int
) -> tuple[dict[str, Any], bool]:
    """One example (the image, its binary mask, its class id in ``classes``) and whether its
    mask has a foreground pixel."""
    image, hw = common.read_image(jpg)
    mask = read_mask(png)
    common.check_shape(mask, hw, png, jpg)
    example = common.make_example(image_id=f"{name}/{stem}", image=image, mask=mask)
    example["classes"] = np.asarray([class_id], np.int32)
    return example, bool(mask.any())


class Fss1000(common.ProjectBuilder):
    """FSS-1000 with binary masks and one class id per image; splits train, val, test."""

    HOMEPAGE = "https://github.com/HKUSTCV/FSS-1000"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS


    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        manual_dir = os.fspath(dl_manager.manual_dir)
        root = find_root(manual_dir)
        split = class_split(root, manual_dir)
        ids = split.class_ids()
        pairs = {name: image_pairs(root, name) for name in split.class_names}
        odd = {n: len(p) for n, p in pairs.items() if len(p) != IMAGES_PER_CLASS}
        if odd:
            log.warning(
                "fss1000: %d class folders do not hold %d image/mask pairs; their pairs are "
                "used as they are: %s",
                len(odd), IMAGES_PER_CLASS, dict(list(odd.items())[:10]),
            )  # fmt: skip
        meta = self.info.metadata
        meta["mask_encoding"] = "binary"
        meta["num_classes"] = len(ids)
        meta["class_names"] = split.class_names
        meta["split_classes"] = {s: [ids[n] for n in split.classes[s]] for s in SPLITS}
        meta["class_split_source"] = split.description
        meta["class_split_kind"] = split.source
        meta["hsnet_comparable"] = split.hsnet_comparable
        return {
            s: self._generate_examples(s, [(n, ids[n], pairs[n]) for n in split.classes[s]])
            for s in SPLITS
        }

    def _generate_examples(
        self, split: str, classes: list[tuple[str, int, list[tuple[str, str, str]]]]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        items = [(name, cid, *pair) for name, cid, pairs in classes for pair in pairs]
        index = common.IndexRecorder()
        empty = []
        examples = common.ordered_map(
            lambda it: load_example(it[0], it[2], it[3], it[4], it[1]), items
        )
        for i, (example, has_foreground) in enumerate(examples):
            index.add(example)
            if not has_foreground:
                empty.append(str(example["id"]))
            yield i, example
        # HSNet's per-class query order: sorted(glob(<class>/*)) keeps the .jpg paths in
        # lexical order (1, 10, 2, ..., 9).
        class_order: dict[int, list[int]] = {}
        for i, (_, cid, _, _, _) in enumerate(items):
            class_order.setdefault(cid, []).append(i)
        for idx in class_order.values():
            idx.sort(key=lambda i: items[i][3])
        if empty:
            log.warning(
                "fss1000/%s: %d masks have no foreground pixel (>= %d), e.g. %s",
                split, len(empty), MASK_THRESHOLD, empty[:5],
            )  # fmt: skip
        entry = index.to_json(class_order, "HSNet DatasetFSS: sorted(glob(<class>/*)) per class")
        entry["empty_masks"] = empty
        common.store_split_index(self, len(self.info.metadata["class_names"]), split, entry)
