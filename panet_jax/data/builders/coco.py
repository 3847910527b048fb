"""``coco20i``: COCO 2014 instance annotations as semantic masks for COCO-20i.

Splits ``train`` (train2014) and ``val`` (val2014), for whichever annotation file is present.
Examples follow ``COCO.getImgIds()`` (the json ``images`` order, as the official
``COCOSeg.ids``).

Masks: class index ``k = position of the category in getCatIds() + 1`` (1..80), no 255 ignore
label. Every annotation of the image is painted with pycocotools ``annToMask``, crowd included
(as the official code). **Overlap rule**: a pixel covered by several annotations takes the
class of the one painted last; crowd annotations are painted first, then the others by
decreasing mask area, so smaller objects stay on top of larger ones and regions inside a
crowd box keep their individual labels. (The official loader keeps one binary mask per
category, so an overlap pixel counts for whichever of its categories is in the episode; a
single semantic map has to pick one class, which only changes such overlap pixels.)
``instances`` numbers the annotations 1..n in painting order (uint8; ids past 255, which
COCO 2014 never needs, would wrap to 1..255); the official code has no COCO instance masks.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings

import numpy as np
import tensorflow_datasets as tfds

from panet_jax.data.builders import common

NUM_CLASSES = 80
SPLITS = ("train", "val")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put COCO 2014 in `manual_dir` (the official PANet layout):

  <manual_dir>/annotations/instances_train2014.json
  <manual_dir>/annotations/instances_val2014.json
  <manual_dir>/train2014/COCO_train2014_*.jpg
  <manual_dir>/val2014/COCO_val2014_*.jpg

(train2014.zip, val2014.zip and annotations_trainval2014.zip from cocodataset.org.) A split is
built for every annotation file present; PANet's protocol needs only train2014.
"""


def _load_coco(path: str):
    from pycocotools.coco import COCO  # only needed while preparing

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            return COCO(path)
    except Exception as e:
        raise ValueError(f"cannot read COCO annotation file {path}: {e}") from e


def semantic_masks(coco, image_id: int, cat_index: dict[int, int]) -> tuple:
    """``(mask uint8 [H, W], instances uint8 [H, W])`` of one image (see module doc)."""
    info = coco.imgs[image_id]
    h, w = info["height"], info["width"]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
    painted = []
    for order, ann in enumerate(anns):
        if ann.get("category_id") not in cat_index:
            raise ValueError(
                f"annotation {ann.get('id')} of image {image_id} has category_id "
                f"{ann.get('category_id')!r}, which is not among the file's 80 categories"
            )
        m = coco.annToMask(ann).astype(bool)
        if m.shape != (h, w):
            raise ValueError(f"annotation {ann.get('id')} of image {image_id} has shape {m.shape}")
        painted.append((bool(ann.get("iscrowd", 0)), -int(m.sum()), order, m, ann["category_id"]))
    painted.sort(key=lambda t: (not t[0], t[1], t[2]))  # crowd first, then by decreasing area
    mask = np.zeros((h, w), np.uint8)
    instances = np.zeros((h, w), np.uint8)
    for k, (_, _, _, m, cat) in enumerate(painted):
        mask[m] = cat_index[cat]
        instances[m] = k % 255 + 1
    return mask, instances


class Coco20i(common.ProjectBuilder):
    """COCO 2014 semantic masks (80 classes) for COCO-20i; splits ``train``, ``val``."""

    HOMEPAGE = "https://cocodataset.org"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS


    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        root = os.fspath(dl_manager.manual_dir)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"manual_dir does not exist: {root}")
        gens = {}
        for split in SPLITS:
            ann_path = os.path.join(root, "annotations", f"instances_{split}2014.json")
            if not os.path.isfile(ann_path):
                continue
            image_dir = os.path.join(root, f"{split}2014")
            if not os.path.isdir(image_dir):
                raise FileNotFoundError(
                    f"{ann_path} exists but the image folder {image_dir} does not"
                )
            gens[split] = self._generate_examples(ann_path, image_dir, split)
        if not gens:
            raise FileNotFoundError(
                f"no annotations/instances_{{train,val}}2014.json under {root}\n"
                + MANUAL_DOWNLOAD_INSTRUCTIONS
            )
        return gens

    def _generate_examples(self, ann_path: str, image_dir: str, split: str):
        coco = _load_coco(ann_path)
        cat_ids = coco.getCatIds()
        if len(cat_ids) != NUM_CLASSES:
            raise ValueError(f"{ann_path} has {len(cat_ids)} categories, expected {NUM_CLASSES}")
        cat_index = {cat: k + 1 for k, cat in enumerate(cat_ids)}
        image_ids = coco.getImgIds()
        for image_id in image_ids:
            path = os.path.join(image_dir, coco.imgs[image_id]["file_name"])
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{ann_path} names image {image_id} but {path} is missing")

        def make(image_id: int) -> dict:
            info = coco.imgs[image_id]
            path = os.path.join(image_dir, info["file_name"])
            image, hw = common.read_image(path)
            try:
                mask, instances = semantic_masks(coco, image_id, cat_index)
            except ValueError as e:
                raise ValueError(f"{ann_path}: {e}") from e
            common.check_shape(mask, hw, f"the annotation mask of {ann_path} ({image_id})", path)
            return common.make_example(
                image_id=os.path.splitext(info["file_name"])[0],
                image=image,
                mask=mask,
                instances=instances,
            )

        index = common.IndexRecorder()
        with warnings.catch_warnings():  # entered and left in this thread only
            # pycocotools' decoder trips numpy 2's __array__(copy=) DeprecationWarning.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
            for i, example in enumerate(common.ordered_map(make, image_ids)):
                index.add(example)
                yield i, example

        # Official per-class order: coco.getImgIds(catIds=cat) (a list of a set), kept only
        # where the painted mask still shows the class (an overlap can hide a tiny object).
        position = {image_id: i for i, image_id in enumerate(image_ids)}
        class_order, dropped = {}, 0
        for k, cat in enumerate(cat_ids, start=1):
            idx = [position[i] for i in coco.getImgIds(catIds=cat)]
            keep = [i for i in idx if k in index.classes[i]]
            dropped += len(idx) - len(keep)
            class_order[k] = keep
        if dropped:
            logging.info("coco20i/%s: %d (image, class) pairs lost to overlaps", split, dropped)
        source = "pycocotools COCO.getImgIds(catIds=cat)"
        common.store_split_index(self, NUM_CLASSES, split, index.to_json(class_order, source))
