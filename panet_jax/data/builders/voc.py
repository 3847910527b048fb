"""``pascal_voc_aug``: PASCAL VOC 2012 with the SBD-augmented masks (PANet's layout).

Splits ``trainaug`` (``ImageSets/Segmentation/trainaug.txt``, 10,582 ids) and ``val``
(``val.txt``, 1,449 ids); examples keep the order of the list files.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from panet_jax.data.builders import common

NUM_CLASSES = 20
SPLITS = ("trainaug", "val")
OFFICIAL_TEST_SPLIT = "trainaug"  # PANet's test.py draws its episodes from trainaug
_VALID = np.zeros(256, bool)
_VALID[: NUM_CLASSES + 1] = True
_VALID[255] = True

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put PANet's VOC tree in `manual_dir` (the same layout as the official PANet code):

  <manual_dir>/VOCdevkit/VOC2012/
      JPEGImages/<id>.jpg                 VOC2012 images (VOCtrainval_11-May-2012.tar)
      SegmentationClassAug/<id>.png       SBD-augmented masks: palette PNGs, 0..20, 255
      SegmentationObjectAug/<id>.png      (optional) instance masks, for bbox supports
      ScribbleAugAuto/<id>.png            (optional) PANet's scribbles
      ImageSets/Segmentation/trainaug.txt (10,582 ids) and val.txt (1,449 ids)
      ImageSets/Segmentation/trainaug/class{1..20}.txt   (optional) PANet's per-class lists

`manual_dir` may also point at `VOCdevkit` or `VOC2012` itself. SegmentationClassAug,
SegmentationObjectAug, ScribbleAugAuto and the ImageSets folder are in the Google Drive folder
linked from the kaixin96/PANet README; nothing is downloaded by this builder.
"""


def find_root(manual_dir: os.PathLike | str) -> str:
    """The ``VOC2012`` folder inside ``manual_dir`` (which may also be that folder itself)."""
    manual_dir = os.fspath(manual_dir)
    for cand in (
        os.path.join(manual_dir, "VOCdevkit", "VOC2012"),
        os.path.join(manual_dir, "VOC2012"),
        manual_dir,
    ):
        if os.path.isdir(os.path.join(cand, "JPEGImages")):
            return cand
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual_dir does not exist: {manual_dir}")
    raise FileNotFoundError(
        f"no VOCdevkit/VOC2012/JPEGImages folder under {manual_dir}.\n"
        + MANUAL_DOWNLOAD_INSTRUCTIONS
    )


def read_id_list(path: str) -> list[str]:
    """Non-empty stripped lines of an id list file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"id list not found: {path}")
    with open(path) as f:
        return [line.strip().split()[0] for line in f if line.strip()]


def _check_files_exist(root: str, ids: list[str], list_path: str) -> None:
    for folder, ext in (("JPEGImages", "jpg"), ("SegmentationClassAug", "png")):
        for image_id in ids:
            path = os.path.join(root, folder, f"{image_id}.{ext}")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{list_path} names {image_id!r} but {path} is missing")


def official_class_lists(
    root: str, split: str, ids: list[str]
) -> tuple[dict[int, list[int]] | None, list[str]]:
    """PANet's ``ImageSets/Segmentation/<split>/class{c}.txt`` as example indices.

    Returns ``(lists, missing)``: ``lists`` is None unless all 20 files exist; ``missing`` names
    the absent files (relative to the VOC2012 folder).
    """
    folder = os.path.join(root, "ImageSets", "Segmentation", split)
    paths = {c: os.path.join(folder, f"class{c}.txt") for c in range(1, NUM_CLASSES + 1)}
    missing = [os.path.relpath(p, root) for p in paths.values() if not os.path.isfile(p)]
    if missing:
        return None, missing
    position = {image_id: i for i, image_id in enumerate(ids)}
    out = {}
    for c, path in paths.items():
        lst = read_id_list(path)
        missing = [i for i in lst if i not in position]
        if missing:
            raise ValueError(f"{path} names ids that are not in the {split} list: {missing[:5]}")
        out[c] = [position[i] for i in lst]
    return out, []


def load_example(root: str, image_id: str) -> dict:
    """Read and check one VOC example (image, class mask, optional instances/scribble)."""
    image_path = os.path.join(root, "JPEGImages", f"{image_id}.jpg")
    image, hw = common.read_image(image_path)
    mask_path = os.path.join(root, "SegmentationClassAug", f"{image_id}.png")
    mask = common.read_label_png(mask_path, "mask")
    common.check_shape(mask, hw, mask_path, image_path)
    bad = np.unique(mask[~_VALID[mask]])
    if bad.size:
        raise ValueError(f"{mask_path} has label values {bad.tolist()} outside 0..20, 255")
    instances = None
    inst_path = os.path.join(root, "SegmentationObjectAug", f"{image_id}.png")
    if os.path.isfile(inst_path):
        raw = common.read_label_png(inst_path, "instance mask")
        common.check_shape(raw, hw, inst_path, image_path)
        instances = np.where(raw == 255, 0, raw).astype(np.uint8)  # 255 = boundary -> none
    scribble = None
    scribble_path = os.path.join(root, "ScribbleAugAuto", f"{image_id}.png")
    if os.path.isfile(scribble_path):
        scribble = common.read_label_png(scribble_path, "scribble")
        common.check_shape(scribble, hw, scribble_path, image_path)
    return common.make_example(
        image_id=image_id, image=image, mask=mask, instances=instances, scribble=scribble
    )


class PascalVocAug(common.ProjectBuilder):
    """VOC2012 + SBD (``SegmentationClassAug``) for PASCAL-5i; splits ``trainaug``, ``val``."""

    HOMEPAGE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS


    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        root = find_root(dl_manager.manual_dir)
        for folder in ("JPEGImages", "SegmentationClassAug"):
            if not os.path.isdir(os.path.join(root, folder)):
                raise FileNotFoundError(
                    f"missing folder {os.path.join(root, folder)}\n" + MANUAL_DOWNLOAD_INSTRUCTIONS
                )
        gens = {}
        for split in SPLITS:
            list_path = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
            ids = read_id_list(list_path)
            if not ids:
                raise ValueError(f"{list_path} lists no image ids; expected one id per line")
            if len(set(ids)) != len(ids):
                raise ValueError(f"{list_path} lists some ids more than once")
            _check_files_exist(root, ids, list_path)
            gens[split] = self._generate_examples(root, split, ids)
        return gens

    def _generate_examples(self, root: str, split: str, ids: list[str]):
        class_order, missing = official_class_lists(root, split, ids)
        if missing and split == OFFICIAL_TEST_SPLIT:
            logging.warning(
                "%s: %d of PANet's per-class lists are missing (%s): episodes will follow "
                "the trainaug.txt order, so the official test episodes (eval.sampler="
                "'official') cannot be replayed from this dataset",
                root, len(missing), ", ".join(missing),
            )  # fmt: skip
        index = common.IndexRecorder()
        examples = common.ordered_map(lambda i: load_example(root, i), ids)
        for i, example in enumerate(examples):
            index.add(example)
            yield i, example
        source = f"ImageSets/Segmentation/{split}/class*.txt"
        entry = index.to_json(class_order, source)
        entry["class_order_missing"] = missing
        common.store_split_index(self, NUM_CLASSES, split, entry)
