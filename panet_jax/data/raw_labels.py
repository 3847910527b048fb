"""Masks at their original resolution, read on the host (TFDS random access, no tf.data).

The episode pipeline resizes every mask to ``image_size``; two evaluation options need the raw
(un-resized) masks that the prepared datasets store:

* ``config.eval.min_object_pixels`` (PFENet / BAM's small-object filter): per-class pixel
  counts of each candidate image (:func:`object_pixels`), computed once per split and process
  (one PNG decode per image listed for the pool's classes, cached in memory, e.g. a few
  seconds for a PASCAL-5i fold's ~3k trainaug images);
* ``config.eval.original_size`` (HSNet ``use_original_imgsize``, PFENet ``ori_resize``): the
  query labels of an episode at original size (:meth:`RawMasks.query_labels`), with the same
  label rules as the pipeline (:func:`panet_jax.data.episodes.query_label_map`; FSS-1000's
  binary masks become the image's class).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from panet_jax.data import episodes, spec
from panet_jax.data.sampler import Draw, PixelCounts


class RawMasks:
    """The masks of one split of a prepared dataset, decoded at original size."""

    def __init__(self, builder: tfds.core.DatasetBuilder, split: str) -> None:
        skip = {k: tfds.decode.SkipDecoding() for k in ("image", "instances", "scribble")}
        self.source = builder.as_data_source(split, decoders=skip)
        self.binary = episodes.has_binary_masks(builder.info.metadata)

    def label(self, i: int) -> np.ndarray:
        """``[H0, W0]`` int64 dataset class ids (255 = ignore) of example ``i``."""
        ex = self.source[int(i)]
        mask = np.asarray(ex["mask"])[..., 0].astype(np.int64)
        if self.binary:  # FSS-1000: 0/1 mask of the image's one class (as the pipeline)
            mask = episodes.binary_mask_labels(mask, int(ex["classes"][0]))
        return mask

    def pixel_counts(self, i: int) -> dict[int, int]:
        """``{class id: pixels}`` of example ``i``'s raw mask (background and 255 left out)."""
        counts = np.bincount(self.label(i).ravel())
        return {c: int(n) for c, n in enumerate(counts) if n and c not in (0, spec.IGNORE_LABEL)}

    def query_labels(self, draw: Draw, n_supports: int) -> list[np.ndarray]:
        """The episode labels (0 bg, ``n + 1`` way ``n``, 255 ignore) of ``draw``'s queries,
        each ``[H0_q, W0_q]`` int64 at its image's original size (``draw.images[n_supports:]``).
        Test episodes are never flipped."""
        if np.any(draw.flips):
            raise ValueError("original-size labels of a flipped (training) episode")
        ids = np.asarray(draw.class_ids)
        return [episodes.query_label_map(self.label(i), ids) for i in draw.images[n_supports:]]


_COUNTS: dict[tuple[str, str, int], dict[int, dict[int, int]]] = {}


def object_pixels(builder: tfds.core.DatasetBuilder, split: str) -> PixelCounts:
    """:data:`panet_jax.data.sampler.PixelCounts` of ``split``: ``{example index: {class id:
    pixels}}`` from the raw masks, each image counted once per process (cached by prepared
    dataset directory, split and size), so every evaluation run reuses the first run's."""
    key = (str(builder.data_dir), split, int(builder.info.splits[split].num_examples))
    cache = _COUNTS.setdefault(key, {})
    masks: list[RawMasks] = []

    def counts(indices: Sequence[int]) -> Mapping[int, Mapping[int, int]]:
        todo = [int(i) for i in indices if int(i) not in cache]
        if todo and not masks:
            masks.append(RawMasks(builder, split))
        for i in todo:
            cache[i] = masks[0].pixel_counts(i)
        return {int(i): cache[int(i)] for i in indices}

    return counts
