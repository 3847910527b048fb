"""Shared pieces of the few-shot segmentation TFDS builders.

Every builder writes the same example features (see :func:`example_features`) in
``array_record`` format with ``disable_shuffling=True`` and integer keys, so example ``i`` of a
split is the ``i``-th image of its source list (``builder.as_data_source(split)[i]``).

Each builder also stores a small index in ``builder.info.metadata`` (``metadata.json``)::

    {"format": 1, "num_classes": C,
     "splits": {split: {"ids": [id, ...],                       # example order
                        "classes": [[c, ...], ...],             # copy of the `classes` feature
                        "class_order": {"c": [example index, ...]},   # optional
                        "class_order_source": "..."}}}

so the episode sampler can build its per-class image lists without reading the images.
``class_order`` is the per-class image order of the official code where it is known (VOC
``ImageSets/Segmentation/<split>/class{c}.txt``, COCO ``getImgIds(catIds=...)``); without it
the lists follow the example order.
"""

from __future__ import annotations

import collections
import concurrent.futures
import inspect
import io
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

METADATA_FORMAT = 1
_T = TypeVar("_T")
_R = TypeVar("_R")


def example_features() -> tfds.features.FeaturesDict:
    """The features of every few-shot segmentation example.

    * ``image``: ``[H, W, 3]`` uint8 RGB (JPEG bytes kept as in the source; grayscale JPEGs are
      decoded to RGB by ``tf.image.decode_image(channels=3)``).
    * ``mask``: ``[H, W, 1]`` uint8 semantic label: 0 background, 1..C class id, 255 ignore.
    * ``instances``: ``[H, W, 1]`` uint8 instance ids (0 = none; all zero if unavailable). uint8
      keeps ``as_data_source`` decodable with PIL (TFDS decodes uint16 PNGs only with OpenCV).
    * ``scribble``: ``[H, W, 1]`` uint8 official scribble PNG values (0 background scribble,
      255 unlabelled, other values foreground scribble ids); all 255 if unavailable.
    * ``has_scribble``: whether ``scribble`` comes from an official scribble file.
    * ``classes``: sorted class ids present in ``mask`` (excluding 0 and 255).
    * ``id``: the image id (file stem).
    """
    return tfds.features.FeaturesDict(
        {
            "id": tfds.features.Text(),
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "instances": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "scribble": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "has_scribble": tfds.features.Scalar(dtype=np.bool_),
            "classes": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        }
    )


def dataset_info(
    builder: tfds.core.DatasetBuilder, description: str, homepage: str = ""
) -> tfds.core.DatasetInfo:
    """``DatasetInfo`` with the common features, ordered examples and an index metadata dict."""
    return tfds.core.DatasetInfo(
        builder=builder,
        description=description,
        features=example_features(),
        homepage=homepage or None,
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )


class ProjectBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """What every builder of this project shares: version 1.0.0, the common features in file
    order (:func:`dataset_info`, the subclass module's docstring as description) and a code
    path TFDS can read."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}  # noqa: RUF012
    HOMEPAGE = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A plain path: TFDS 4.9.10 derives it with the `importlib_resources` backport, which
        # is not installed on Python >= 3.9 (its own requirement is only for < 3.9).
        cls.code_path = epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        doc = sys.modules[type(self).__module__].__doc__ or ""
        return dataset_info(self, description=doc, homepage=self.HOMEPAGE)


def png_bytes(array: np.ndarray) -> bytes:
    """Lossless PNG of a 2-D uint8 (8-bit) or uint16 (16-bit) array."""
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a 2-D uint8/uint16 array, got {array.dtype}{array.shape}")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 95) -> bytes:
    """JPEG of a ``[H, W, 3]`` uint8 RGB array."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def read_image(path: os.PathLike | str) -> tuple[bytes, tuple[int, int]]:
    """Read and fully decode an image file; return ``(jpeg_bytes, (height, width))``.

    RGB and grayscale JPEGs are kept byte for byte; anything else (CMYK JPEG, PNG, palette...)
    is converted to RGB and re-encoded as a quality-95 JPEG.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the path when the file is missing or
    cannot be decoded (truncated or corrupt).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt, mode, (w, h) = im.format, im.mode, im.size
            if fmt != "JPEG" or mode not in ("RGB", "L"):
                data = jpeg_bytes(np.asarray(im.convert("RGB")))
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        raise ValueError(f"corrupt or unreadable image {path}: {e}") from e
    return data, (h, w)


def read_label_png(path: os.PathLike | str, what: str = "mask") -> np.ndarray:
    """Read a palette or grayscale PNG as its raw ``[H, W]`` uint8 index values."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("P", "L"):
                raise ValueError(f"expected a palette ('P') or grayscale ('L') PNG, got {im.mode}")
            return np.array(im, dtype=np.uint8)
    except Exception as e:
        raise ValueError(f"corrupt or unreadable {what} {path}: {e}") from e


def read_grey_png(path: os.PathLike | str, what: str = "mask") -> np.ndarray:
    """Any image file as ``[H, W]`` uint8 grey levels (``Image.open(path).convert('L')``: RGB,
    RGBA, palette and grayscale PNGs alike)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("L"), dtype=np.uint8)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        raise ValueError(f"corrupt or unreadable {what} {path}: {e}") from e


def check_shape(array: np.ndarray, hw: tuple[int, int], path: str, image_path: str) -> None:
    """Raise ``ValueError`` naming both files if a mask's shape differs from its image."""
    if array.shape[:2] != tuple(hw):
        raise ValueError(
            f"{path} has shape {array.shape[0]}x{array.shape[1]} (HxW) but its image "
            f"{image_path} is {hw[0]}x{hw[1]}"
        )


def present_classes(mask: np.ndarray) -> list[int]:
    """Sorted class ids in a label map, excluding 0 (background) and 255 (ignore)."""
    values = np.unique(mask)
    return [int(v) for v in values if v not in (0, 255)]


def make_example(
    *,
    image_id: str,
    image: bytes,
    mask: np.ndarray,
    instances: np.ndarray | None = None,
    scribble: np.ndarray | None = None,
) -> dict[str, Any]:
    """Assemble one example dict of :func:`example_features` from decoded arrays."""
    if instances is None:
        instances = np.zeros(mask.shape, np.uint8)
    has_scribble = scribble is not None
    if scribble is None:
        scribble = np.full(mask.shape, 255, np.uint8)
    return {
        "id": image_id,
        "image": image,
        "mask": png_bytes(mask.astype(np.uint8)),
        "instances": png_bytes(instances.astype(np.uint8)),
        "scribble": png_bytes(scribble.astype(np.uint8)),
        "has_scribble": has_scribble,
        "classes": np.asarray(present_classes(mask), np.int32),
    }


class IndexRecorder:
    """Collects ids and classes of the examples of one split, in example order."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.classes: list[list[int]] = []

    def add(self, example: dict[str, Any]) -> None:
        self.ids.append(str(example["id"]))
        self.classes.append([int(c) for c in example["classes"]])

    def to_json(
        self, class_order: dict[int, list[int]] | None = None, source: str = "example order"
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"ids": self.ids, "classes": self.classes}
        if class_order is not None:
            out["class_order"] = {str(c): list(map(int, v)) for c, v in class_order.items()}
        out["class_order_source"] = source if class_order is not None else "example order"
        return out


def store_split_index(
    builder: tfds.core.DatasetBuilder, num_classes: int, split: str, index: dict[str, Any]
) -> None:
    """Put one split's index into ``builder.info.metadata`` (written with the dataset)."""
    meta = builder.info.metadata
    meta["format"] = METADATA_FORMAT
    meta["num_classes"] = num_classes
    meta.setdefault("splits", {})[split] = index


def ordered_map(fn: Callable[[_T], _R], items: Iterable[_T], workers: int = 4) -> Iterator[_R]:
    """``map(fn, items)`` on a thread pool, in order, with a bounded number of pending items.

    PIL decoding/encoding and zlib release the GIL, so threads speed up preparation without
    forking a process that has TensorFlow loaded.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
