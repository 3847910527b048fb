"""Small user folders in the two real on-disk layouts (JPEG / PNG files written with PIL).

Class folders: 5 classes x 4 images of 40x48 (HxW); image ``k`` of class ``i`` is a smooth
colour ramp with a bright rectangle whose position depends on ``(i, k)``; its mask is that
rectangle (grey 255 on 0; class ``dog`` writes 0/1 masks, class ``fox`` palette PNGs).
Label maps: 10 images of 40x48 showing one or two of 6 classes (raw values 3, 5, 7, 9, 11, 13,
named in ``classes.txt``) as rectangles with a 255 border; masks alternate palette / grey PNGs.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

HW = (40, 48)
CLASSES = ["cat", "dog", "fox", "owl", "yak"]
PER_CLASS = 4
TRAIN, TEST = ["cat", "dog", "fox"], ["owl", "yak"]
LABEL_VALUES = {3: "road", 5: "tree", 7: "car", 9: "sky", 11: "wall", 13: "sign"}
# image stem -> the raw values it shows (a box each)
LABEL_IMAGES = {
    "a0": (3,), "a1": (3, 5), "a2": (5,), "a3": (7, 3), "a4": (7,), "a5": (9, 11),
    "a6": (9,), "a7": (11, 13), "a8": (13,), "a9": (5, 13),
}  # fmt: skip


def box(index: int, k: int) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` of object ``k`` of image ``index``."""
    top, left = 4 + (index * 3 + k * 7) % 16, 4 + (index * 5 + k * 11) % 20
    return top, left, top + 14, left + 18


def image_pixels(index: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """A smooth ramp (JPEG-safe) with bright boxes."""
    ramp = np.add.outer(np.arange(HW[0]), np.arange(HW[1]))[..., None]
    pixels = (np.array([30 + 7 * index, 60, 90]) + ramp).astype(np.float64)
    for t, lft, b, r in boxes:
        pixels[t:b, lft:r] = [220, 200 - 10 * (index % 5), 40]
    return np.clip(pixels, 0, 255).astype(np.uint8)


def save_mask(values: np.ndarray, path: str, palette: bool) -> None:
    """A ``[H, W]`` uint8 mask as a palette ('P') or grayscale ('L') PNG."""
    im = Image.fromarray(values, mode="P" if palette else "L")
    if palette:
        im.putpalette([v for g in range(256) for v in (g, 255 - g, g // 2)])
    im.save(path, format="PNG")


def write_class_folders(root: str, *, lists: bool = True, parallel: bool = False) -> str:
    """Write the class-folder layout under ``root`` (``parallel``: ``images/<class>`` +
    ``masks/<class>`` with PNG images); ``lists``: ``train.txt`` / ``test.txt``."""
    for i, name in enumerate(CLASSES):
        image_dir = os.path.join(root, "images", name) if parallel else os.path.join(root, name)
        mask_dir = os.path.join(root, "masks", name) if parallel else image_dir
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(mask_dir, exist_ok=True)
        for k in range(PER_CLASS):
            t, lft, b, r = box(i, k)
            ext, fmt = (".png", "PNG") if parallel else (".jpg", "JPEG")
            Image.fromarray(image_pixels(i, [(t, lft, b, r)])).save(
                os.path.join(image_dir, f"img{k}{ext}"), format=fmt, quality=95
            )
            mask = np.zeros(HW, np.uint8)
            mask[t:b, lft:r] = 1 if name == "dog" else 255
            save_mask(mask, os.path.join(mask_dir, f"img{k}.png"), palette=name == "fox")
    if lists:
        write_lines(os.path.join(root, "train.txt"), TRAIN)
        write_lines(os.path.join(root, "test.txt"), TEST)
    return root


def label_map(stem: str) -> np.ndarray:
    """The raw label map of image ``stem``: its boxes, later ones on top, 255 borders."""
    out = np.zeros(HW, np.uint8)
    index = int(stem[1:])
    for k, value in enumerate(LABEL_IMAGES[stem]):
        t, lft, b, r = box(index, k)
        out[t:b, lft:r] = 255
        out[t + 1 : b - 1, lft + 1 : r - 1] = value
    return out


def write_label_maps(root: str) -> str:
    """Write the label-map layout under ``root``."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "labels"), exist_ok=True)
    for stem, values in LABEL_IMAGES.items():
        index = int(stem[1:])
        boxes = [box(index, k) for k in range(len(values))]
        Image.fromarray(image_pixels(index, boxes)).save(
            os.path.join(root, "images", f"{stem}.jpg"), quality=95
        )
        save_mask(label_map(stem), os.path.join(root, "labels", f"{stem}.png"), index % 2 == 0)
    write_lines(os.path.join(root, "classes.txt"),
                ["0 background", *(f"{v} {n}" for v, n in LABEL_VALUES.items())])  # fmt: skip
    return root


def write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)
