"""A tiny FSS-1000 tree in the real on-disk layout (class folders of n.jpg / n.png pairs).

12 classes of 20x24 (HxW) images; class ``kiwi`` has 11 pairs (so ``10.jpg`` and ``11.jpg``
sort after ``9.jpg`` only numerically) and ``olive`` 9, the others 10. Masks hold grey values
around HSNet's 128 threshold and are written as 'L', 'RGB', palette and 'RGBA' PNGs in turn;
``date/3.jpg`` is a PNG file under a ``.jpg`` name. Split lists are HSNet-style (6/3/3 classes,
written unsorted so that the builder has to sort them), or the official-style test list only.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
from PIL import Image

HW = (20, 24)
# HSNet-style lists, in (unsorted) file order.
TRN = ["kiwi", "fig", "date", "lime", "pear", "plum"]
VAL = ["mango", "apple", "cherry"]
TEST = ["olive", "banana", "grape"]
PAIRS = {"kiwi": 11, "olive": 9}  # the others have 10
BLOCK_VALUES = (0, 127, 128, 255)


class FssTree(NamedTuple):
    manual_dir: str
    root: str  # the folder holding the class folders
    raw_masks: dict[str, np.ndarray]  # "<class>/<n>" -> [H, W] grey values as written


def num_pairs(name: str) -> int:
    """How many image/mask pairs the fixture writes for class ``name``."""
    return PAIRS.get(name, 10)


def raw_mask(n: int) -> np.ndarray:
    """The grey mask of image ``n``: rows 0-9 are four 6-px blocks of ``BLOCK_VALUES``
    rotated left by ``n % 4``; rows 10-19 are 129 left of column 12 and 126 right of it."""
    h, w = HW
    out = np.empty((h, w), np.uint8)
    blocks = np.roll(np.asarray(BLOCK_VALUES, np.uint8), -(n % 4))
    out[:10] = np.repeat(blocks, w // 4)[None, :]
    out[10:, :12] = 129
    out[10:, 12:] = 126
    return out


def save_mask(grey: np.ndarray, path: str, mode: str) -> None:
    """Write a grey mask as a PNG of ``mode`` ('L', 'RGB', 'P' or 'RGBA'); every mode decodes
    back to ``grey`` under ``convert('L')``."""
    if mode == "L":
        im = Image.fromarray(grey, mode="L")
    elif mode == "RGB":
        im = Image.fromarray(np.stack([grey] * 3, -1), mode="RGB")
    elif mode == "P":
        im = Image.fromarray(grey, mode="P")
        im.putpalette([v for g in range(256) for v in (g, g, g)])
    elif mode == "RGBA":
        alpha = np.full(grey.shape, 200, np.uint8)
        im = Image.fromarray(np.stack([grey, grey, grey, alpha], -1), mode="RGBA")
    else:
        raise ValueError(mode)
    im.save(path, format="PNG")


def write_class(root: str, name: str, index: int, raw: dict[str, np.ndarray]) -> None:
    """Write the pairs of class ``name`` (``index`` seeds the pixels)."""
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    for n in range(1, num_pairs(name) + 1):
        rng = np.random.default_rng(100 * index + n)
        colour = rng.integers(40, 200, 3)
        ramp = np.add.outer(np.arange(HW[0]), np.arange(HW[1]))[..., None]  # smooth: JPEG-safe
        pixels = (colour + ramp).astype(np.uint8)
        fmt = "PNG" if (name, n) == ("date", 3) else "JPEG"
        Image.fromarray(pixels).save(os.path.join(folder, f"{n}.jpg"), format=fmt, quality=95)
        grey = raw_mask(n)
        save_mask(grey, os.path.join(folder, f"{n}.png"), ("L", "RGB", "P", "RGBA")[n % 4])
        raw[f"{name}/{n}"] = grey


def write_list(path: str, names: list[str]) -> None:
    """One name per line, with a trailing newline."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(n + "\n" for n in names)


def write_fss_tree(
    manual_dir: str, *, lists: str = "hsnet", flat: bool = False, split_dir: str = "splits/fss"
) -> FssTree:
    """Write the tree under ``manual_dir/FSS-1000`` (``flat``: directly in ``manual_dir``).

    ``lists``: ``"hsnet"`` writes ``trn.txt``, ``val.txt``, ``test.txt`` into
    ``manual_dir/split_dir``; ``"official"`` writes only ``manual_dir/fss_test_set.txt``
    (the ``TEST`` classes, no trailing newline as in the official file); ``"none"`` neither.
    """
    root = manual_dir if flat else os.path.join(manual_dir, "FSS-1000")
    raw: dict[str, np.ndarray] = {}
    for index, name in enumerate(sorted(TRN + VAL + TEST)):
        write_class(root, name, index, raw)
    if lists == "hsnet":
        for file, names in (("trn.txt", TRN), ("val.txt", VAL), ("test.txt", TEST)):
            write_list(os.path.join(manual_dir, split_dir, file), names)
    elif lists == "official":
        with open(os.path.join(manual_dir, "fss_test_set.txt"), "w") as f:
            f.write("\n".join(TEST))
    elif lists != "none":
        raise ValueError(lists)
    return FssTree(manual_dir, root, raw)
