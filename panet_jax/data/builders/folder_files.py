"""The user's folder of images and masks: its layout, its (image, mask) pairs, its classes, and
the checks of every file (pure Python + PIL; no TensorFlow).

Two layouts (:data:`LAYOUTS`; ``'auto'`` picks ``label_maps`` when ``<root>/images`` and
``<root>/labels`` exist, else ``class_folders``):

* ``class_folders``: ``<root>/<class>/<stem>.jpg`` with the binary mask ``<stem>.png`` beside
  it, or images in ``<root>/images/<class>/`` with masks in a parallel
  ``<root>/masks/<class>/<stem>.png`` tree (then the images may be PNGs too). A mask pixel is
  foreground where its value is >= 128, or, for a mask whose values are all 0 / 1, where it is
  1 (values: a palette PNG's indices, other PNGs' grey levels).
* ``label_maps``: ``<root>/images/<stem>.<ext>`` with ``<root>/labels/<stem>.png`` (palette or
  grayscale: raw values, 0 background, 255 ignore, the others named in
  ``<root>/classes.txt``, one ``<value> <name>`` per line, or one name per line for the values
  1, 2, ...).

A *bad file* (:class:`BadFile`: an image without a mask, a mask without an image, a mask of
another size or with values classes.txt does not name, an unreadable or non-image file) stops
the preparation with one line naming it, or is left out and counted with ``skip_bad_files``.
Hidden files (``.name``) are ignored.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re

import numpy as np
from PIL import Image

from panet_jax.data.builders import common

LAYOUTS = ("auto", "class_folders", "label_maps")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MASK_EXT = ".png"
CLASSES_FILE = "classes.txt"
IGNORE_VALUE = 255
MASK_THRESHOLD = 128  # grey >= 128 -> foreground (HSNet's FSS-1000 rule)


class BadFile(ValueError):
    """One file that cannot be used (``path``: the file, ``reason``: what is wrong)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclasses.dataclass(frozen=True)
class Pair:
    """One image and its mask; ``class_name`` is the class folder (``None``: label maps)."""

    image_id: str
    image: str
    mask: str
    class_name: str | None = None


@dataclasses.dataclass
class Listing:
    """Everything found in the folder before any file is decoded."""

    layout: str
    root: str
    pairs: list[Pair]
    class_names: list[str]  # class folders: sorted folder names; label maps: classes.txt order
    class_values: list[int] | None = None  # label maps: the mask value of each class
    bad: list[BadFile] = dataclasses.field(default_factory=list)


def _visible(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTS


def detect_layout(root: str, layout: str = "auto") -> str:
    """``layout`` itself, or for ``'auto'`` the layout the folder looks like."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown folder layout {layout!r}; expected one of {LAYOUTS}")
    if layout != "auto":
        return layout
    both = all(os.path.isdir(os.path.join(root, d)) for d in ("images", "labels"))
    return "label_maps" if both else "class_folders"


def list_folder(root: str, layout: str = "auto") -> Listing:
    """The pairs, classes and listing-time bad files of the folder ``root``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"folder not found: {root}")
    layout = detect_layout(root, layout)
    return _label_maps(root) if layout == "label_maps" else _class_folders(root)


def _check_unique_names(names: list[str], where: str) -> None:
    """``ValueError`` when two classes have one name (up to case and surrounding blanks)."""
    seen: dict[str, str] = {}
    for name in names:
        key = name.strip().casefold()
        if key in seen:
            raise ValueError(
                f"two classes have one name in {where}: {seen[key]!r} and {name!r} (class names "
                "must differ in more than case and surrounding blanks)"
            )
        seen[key] = name


def _class_folders(root: str) -> Listing:
    parallel = all(os.path.isdir(os.path.join(root, d)) for d in ("images", "masks"))
    image_root = os.path.join(root, "images") if parallel else root
    mask_root = os.path.join(root, "masks") if parallel else root
    names = [e.name for e in _visible(image_root) if e.is_dir()]
    if not names:
        raise FileNotFoundError(
            f"no class folders in {image_root}: expected <class>/<image>.jpg with "
            f"<image>.png masks beside them, {root}/images/<class>/ + {root}/masks/<class>/, "
            f"or {root}/images/ + {root}/labels/ + {root}/{CLASSES_FILE} (label maps)"
        )
    _check_unique_names(names, image_root)
    listing = Listing("class_folders", root, [], names)
    for name in names:
        lister = _parallel_pairs if parallel else _beside_pairs
        pairs, bad = lister(os.path.join(image_root, name), os.path.join(mask_root, name), name)
        listing.pairs += pairs
        listing.bad += bad
    return listing


def _beside_pairs(folder: str, _: str, name: str) -> tuple[list[Pair], list[BadFile]]:
    """``<stem>.jpg`` (or .jpeg, ...) + ``<stem>.png`` in one folder."""
    files = [e.name for e in _visible(folder) if e.is_file()]
    by_stem = collections.defaultdict(list)
    for f in files:
        by_stem[os.path.splitext(f)[0]].append(f)
    pairs, bad = [], []
    for stem, group in sorted(by_stem.items()):
        masks = [f for f in group if f == stem + MASK_EXT]
        images = [f for f in group if f not in masks and _is_image_name(f)]
        for f in group:
            if f not in masks and f not in images:
                bad.append(BadFile(os.path.join(folder, f), "not an image file (by its name)"))
        if len(images) > 1:
            bad += [
                BadFile(os.path.join(folder, f), f"one of {len(images)} images of one mask")
                for f in images
            ]
        elif images and masks:
            pairs.append(
                Pair(
                    f"{name}/{stem}",
                    os.path.join(folder, images[0]),
                    os.path.join(folder, masks[0]),
                    name,
                )
            )
        elif images:
            path = os.path.join(folder, images[0])
            bad.append(BadFile(path, f"image without a mask (expected {stem}{MASK_EXT} beside it)"))
        elif masks:
            bad.append(BadFile(os.path.join(folder, masks[0]), "mask without an image"))
    return pairs, bad


def _matched(
    image_dir: str, mask_dir: str, id_prefix: str, name: str | None
) -> tuple[list[Pair], list[BadFile]]:
    """Images in ``image_dir`` with their ``<stem>.png`` in ``mask_dir``."""
    masks = (
        {e.name for e in _visible(mask_dir) if e.is_file()} if os.path.isdir(mask_dir) else set()
    )
    pairs, bad, used = [], [], set()
    for e in _visible(image_dir):
        if not e.is_file():
            continue
        stem = os.path.splitext(e.name)[0]
        if not _is_image_name(e.name):
            bad.append(BadFile(e.path, "not an image file (by its name)"))
        elif stem + MASK_EXT not in masks:
            expected = os.path.join(mask_dir, stem + MASK_EXT)
            bad.append(BadFile(e.path, f"image without a mask (expected {expected})"))
        elif stem + MASK_EXT in used:
            bad.append(BadFile(e.path, f"a second image of the mask {stem}{MASK_EXT}"))
        else:
            used.add(stem + MASK_EXT)
            pairs.append(
                Pair(id_prefix + stem, e.path, os.path.join(mask_dir, stem + MASK_EXT), name)
            )
    bad += [
        BadFile(os.path.join(mask_dir, m), "mask without an image") for m in sorted(masks - used)
    ]
    return pairs, bad


def _parallel_pairs(image_dir: str, mask_dir: str, name: str) -> tuple[list[Pair], list[BadFile]]:
    return _matched(image_dir, mask_dir, f"{name}/", name)


_VALUE_LINE = re.compile(r"^(\d+)\s*[:\s]\s*(\S.*)$")


def read_classes_file(path: str) -> tuple[list[int], list[str]]:
    """``(values, names)`` of ``classes.txt``: ``<value> <name>`` lines (value 1..254; a line
    for value 0 may only name the background), or names only, for the values 1, 2, ..."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: a label-map folder needs it, one '<value> <name>' per line"
        )
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    matches = [_VALUE_LINE.match(line) for line in lines]
    if all(matches):
        pairs = [(int(m.group(1)), m.group(2).strip()) for m in matches if m]
    elif not any(matches):
        pairs = list(enumerate(lines, start=1))
    else:
        raise ValueError(f"{path}: mixes '<value> <name>' lines with name-only lines")
    pairs = [(v, n) for v, n in pairs if not (v == 0 and n.casefold() == "background")]
    for value, name in pairs:
        if not 1 <= value < IGNORE_VALUE:
            raise ValueError(
                f"{path}: value {value} ({name!r}) is not in 1..254 "
                "(0 is the background, 255 ignore)"
            )
    values = [v for v, _ in pairs]
    dup = sorted({v for v in values if values.count(v) > 1})
    if dup:
        raise ValueError(f"{path} names the value {dup[0]} more than once")
    if not pairs:
        raise ValueError(f"{path} names no class")
    _check_unique_names([n for _, n in pairs], path)
    pairs.sort()
    return [v for v, _ in pairs], [n for _, n in pairs]


def _label_maps(root: str) -> Listing:
    values, names = read_classes_file(os.path.join(root, CLASSES_FILE))
    pairs, bad = _matched(os.path.join(root, "images"), os.path.join(root, "labels"), "", None)
    return Listing("label_maps", root, pairs, names, values, bad)


# ------------------------------------------------------------------------------ file checks


def binary_mask(values: np.ndarray) -> np.ndarray:
    """0/1 foreground of a mask's values: themselves when all are 0 / 1, else ``>= 128``."""
    if values.max(initial=0) <= 1:
        return values.astype(np.uint8)
    return (values >= MASK_THRESHOLD).astype(np.uint8)


def read_binary_mask(path: str) -> np.ndarray:
    """A class folder's mask as 0/1 ``[H, W]`` uint8: palette PNGs by their index values (a
    VOC-style palette colours index 1 dark red), other modes by their grey levels."""
    try:
        with Image.open(path) as im:
            values = np.array(im if im.mode in ("P", "L", "1") else im.convert("L"), np.uint8)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        raise ValueError(f"corrupt or unreadable mask {path}: {e}") from e
    return binary_mask(values)


def read_pair(pair: Pair, values: list[int] | None) -> tuple[bytes, np.ndarray]:
    """``(jpeg bytes, mask [H, W] uint8)`` of one pair: binary (class folders) or the raw label
    values (label maps, checked against ``values``). Raises :class:`BadFile`."""
    try:
        image, hw = common.read_image(pair.image)
    except (OSError, ValueError) as e:
        raise BadFile(pair.image, f"unreadable image ({e})") from e
    try:
        if values is None:
            mask = read_binary_mask(pair.mask)
        else:
            mask = common.read_label_png(pair.mask, "label map")
    except (OSError, ValueError) as e:
        raise BadFile(pair.mask, f"unreadable mask ({e})") from e
    if mask.shape != tuple(hw):
        raise BadFile(
            pair.mask,
            f"mask of size {mask.shape[0]}x{mask.shape[1]} (HxW) but its "
            f"image {pair.image} is {hw[0]}x{hw[1]}",
        )
    if values is not None:
        allowed = np.zeros(256, bool)
        allowed[[0, IGNORE_VALUE, *values]] = True
        unknown = np.unique(mask[~allowed[mask]])
        if unknown.size:
            raise BadFile(
                pair.mask,
                f"values {unknown.tolist()} that {CLASSES_FILE} does not "
                "name (0 background, 255 ignore)",
            )
    return image, mask
