"""Tiny datasets in the real on-disk formats (VOC tree, COCO json), written with PIL / json.

Everything is deterministic and small (images of a few dozen pixels), so the TFDS builders
can be prepared from them in about a second.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np
from PIL import Image


def voc_palette() -> list[int]:
    """The standard 256-entry VOC colour map (flat RGB list)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def save_palette_png(array: np.ndarray, path: str) -> None:
    im = Image.fromarray(array.astype(np.uint8), mode="P")
    im.putpalette(voc_palette())
    im.save(path)


def save_jpeg(array: np.ndarray, path: str) -> None:
    Image.fromarray(array).save(path, quality=95)


class VocImage(NamedTuple):
    image_id: str
    image: np.ndarray  # [H, W, 3] uint8 (as written, before JPEG)
    mask: np.ndarray  # [H, W] uint8 class labels 0..20, 255
    instances: np.ndarray  # [H, W] uint8 object ids, 255 boundary
    scribble: np.ndarray  # [H, W] uint8: 255 unlabelled, 0 bg scribble, k object k scribble


def voc_image(
    index: int, classes: tuple[int, int], hw: tuple[int, int], scribble_ids: int = 1
) -> VocImage:
    """An image with two boxes: class ``classes[0]`` (object 1) left, ``classes[1]`` (object 2)
    right, each with a 1-pixel 255 border, a scribble line through each box and a bg line.

    ``scribble_ids > 1``: object ``k`` carries that many scribble lines, with the ids
    ``k, k + 7, k + 14, ...`` (e.g. ``{1, 8, 15}``, whose Python set order is not sorted), two
    rows apart."""
    h, w = hw
    rng = np.random.default_rng(index)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    inst = np.zeros((h, w), np.uint8)
    scribble = np.full((h, w), 255, np.uint8)
    boxes = [(2, 2, h // 2 + 2, w // 2 - 1), (h // 3, w // 2 + 1, h - 2, w - 2)]
    for k, ((y0, x0, y1, x1), c) in enumerate(zip(boxes, classes, strict=True), start=1):
        mask[y0:y1, x0:x1] = 255
        mask[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = c
        inst[y0:y1, x0:x1] = 255
        inst[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = k
        for j in range(scribble_ids):
            scribble[(y0 + y1) // 2 + 2 * j, x0 + 2 : x1 - 2] = k + 7 * j
    scribble[h - 1, :] = 0
    return VocImage(f"2008_{index:06d}", image, mask, inst, scribble)


class VocTree(NamedTuple):
    manual_dir: str
    root: str
    trainaug: list[VocImage]
    val: list[VocImage]


def write_voc_tree(
    manual_dir: str,
    *,
    n_trainaug: int = 40,
    n_val: int = 20,
    objects: bool = True,
    scribbles: bool = True,
    class_lists: bool = False,
    scribble_ids: int = 1,
    missing_class_lists: tuple[int, ...] = (),
) -> VocTree:
    """A PANet-layout VOC tree. Image ``i`` shows classes ``i % 20 + 1`` and ``(i + 7) % 20 + 1``,
    so 40 trainaug images (and the 20 val images after them) give every class 4 (2) images.
    Sizes alternate between 30x40 and 36x28 (HxW). ``class_lists`` writes PANet's
    ``trainaug/class{c}.txt`` in reverse example order, except the classes in
    ``missing_class_lists``; ``scribble_ids``: see :func:`voc_image`."""
    root = os.path.join(manual_dir, "VOCdevkit", "VOC2012")
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    if objects:
        os.makedirs(os.path.join(root, "SegmentationObjectAug"), exist_ok=True)
    if scribbles:
        os.makedirs(os.path.join(root, "ScribbleAugAuto"), exist_ok=True)
    splits: dict[str, list[VocImage]] = {"trainaug": [], "val": []}
    for i in range(n_trainaug + n_val):
        classes = (i % 20 + 1, (i + 7) % 20 + 1)
        im = voc_image(i, classes, (30, 40) if i % 2 == 0 else (36, 28), scribble_ids)
        save_jpeg(im.image, os.path.join(root, "JPEGImages", f"{im.image_id}.jpg"))
        save_palette_png(im.mask, os.path.join(root, "SegmentationClassAug", f"{im.image_id}.png"))
        if objects:
            save_palette_png(
                im.instances, os.path.join(root, "SegmentationObjectAug", f"{im.image_id}.png")
            )
        if scribbles:
            save_palette_png(
                im.scribble, os.path.join(root, "ScribbleAugAuto", f"{im.image_id}.png")
            )
        splits["trainaug" if i < n_trainaug else "val"].append(im)
    for split, images in splits.items():
        with open(os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
            f.writelines(f"{im.image_id}\n" for im in images)
    if class_lists:
        folder = os.path.join(root, "ImageSets", "Segmentation", "trainaug")
        os.makedirs(folder, exist_ok=True)
        for c in range(1, 21):
            if c in missing_class_lists:
                continue
            ids = [im.image_id for im in splits["trainaug"] if c in im.mask]
            with open(os.path.join(folder, f"class{c}.txt"), "w") as f:
                f.writelines(f"{i}\n" for i in reversed(ids))
    return VocTree(manual_dir, root, splits["trainaug"], splits["val"])


# ---------------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------------

# The 80 COCO category ids (with the official gaps).
COCO_CAT_IDS = [
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
    *range(72, 83), *range(84, 91),
]  # fmt: skip
assert len(COCO_CAT_IDS) == 80


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts (column-major runs, starting with zeros)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return counts


class CocoTree(NamedTuple):
    manual_dir: str
    # split -> list of (file stem, expected mask [H, W] uint8 with class indices 1..80)
    expected: dict[str, list[tuple[str, np.ndarray]]]


def _coco_image(rng: np.random.Generator, h: int, w: int, gray: bool) -> np.ndarray:
    if gray:
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_coco_tree(manual_dir: str, *, n_train: int = 20, n_val: int = 3) -> CocoTree:
    """A COCO 2014 layout with ``n_train`` / ``n_val`` images of 24x32 (HxW).

    Train image ``i`` holds four RLE annotations of class indices ``(2i) % 20 + 1``,
    ``(2i + 1) % 20 + 1`` (disjoint boxes, so every class of fold 0's test set 1..20 is in 2
    of the 20 images), plus an overlap pair: a big box of index 30 under a small box of index 31
    (so the smaller is painted on top), and a crowd box of index 40 (painted first) overlapping
    a non-crowd box of index 41. Train image 0 also has a polygon annotation (index 50, the pixel
    rectangle rows 20..23 x cols 20..27, smaller than box 41 so on top of it) and train image 1
    is a grayscale JPEG. Expected masks are computed by hand from the boxes.
    """
    h, w = 24, 32
    images_json, anns_json, expected = {}, {}, {}
    ann_id = 1
    for split, n in (("train", n_train), ("val", n_val)):
        folder = os.path.join(manual_dir, f"{split}2014")
        os.makedirs(folder, exist_ok=True)
        images_json[split], anns_json[split], expected[split] = [], [], []
        for i in range(n):
            image_id = 1000 * (split == "val") + 7 * i + 3  # not in file order
            stem = f"COCO_{split}2014_{image_id:012d}"
            rng = np.random.default_rng(image_id)
            pixels = _coco_image(rng, h, w, gray=(split == "train" and i == 1))
            save_jpeg(pixels, os.path.join(folder, stem + ".jpg"))
            images_json[split].append(
                {"id": image_id, "file_name": stem + ".jpg", "height": h, "width": w}
            )
            boxes = [  # (y0, x0, y1, x1, class index, iscrowd); painting order below
                (0, 0, 8, 8, (2 * i) % 20 + 1, 0),
                (0, 10, 8, 18, (2 * i + 1) % 20 + 1, 0),
                (10, 0, 20, 12, 30, 0),  # big
                (12, 2, 16, 6, 31, 0),  # small, inside the big one -> on top
                (10, 20, 20, 30, 40, 1),  # crowd -> painted first
                (14, 24, 24, 32, 41, 0),  # overlaps the crowd box -> on top
            ]
            exp = np.zeros((h, w), np.uint8)
            for y0, x0, y1, x1, k, _ in (boxes[4], boxes[0], boxes[1], boxes[2], boxes[5]):
                exp[y0:y1, x0:x1] = k  # painting order: crowd, then by decreasing area
            exp[12:16, 2:6] = 31
            # Annotation order in the json is shuffled on purpose (small before big).
            for y0, x0, y1, x1, k, crowd in (
                boxes[3],
                boxes[0],
                boxes[5],
                boxes[2],
                boxes[1],
                boxes[4],
            ):
                m = np.zeros((h, w), np.uint8)
                m[y0:y1, x0:x1] = 1
                anns_json[split].append({
                    "id": ann_id, "image_id": image_id, "category_id": COCO_CAT_IDS[k - 1],
                    "segmentation": {"size": [h, w], "counts": rle_counts(m)},
                    "area": float(m.sum()), "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": crowd,
                })  # fmt: skip
                ann_id += 1
            if split == "train" and i == 0:  # a polygon: the pixel square rows 20..23, x 20..27
                anns_json[split].append({
                    "id": ann_id, "image_id": image_id, "category_id": COCO_CAT_IDS[49],
                    "segmentation": [[20.0, 20.0, 28.0, 20.0, 28.0, 24.0, 20.0, 24.0]],
                    "area": 32.0, "bbox": [20, 20, 8, 4], "iscrowd": 0,
                })  # fmt: skip
                ann_id += 1
                exp[20:24, 20:28] = 50
            expected[split].append((stem, exp))
    os.makedirs(os.path.join(manual_dir, "annotations"), exist_ok=True)
    categories = [{"id": c, "name": f"cat{c}", "supercategory": "x"} for c in COCO_CAT_IDS]
    for split in ("train", "val"):
        with open(os.path.join(manual_dir, "annotations", f"instances_{split}2014.json"), "w") as f:
            json.dump(
                {"images": images_json[split], "annotations": anns_json[split],
                 "categories": categories},
                f,
            )  # fmt: skip
    return CocoTree(manual_dir, expected)
