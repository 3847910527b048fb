"""The few-shot episode pipeline: TFDS random access + ``tf.data`` (TensorFlow feeds data).

``episode_dataset(cfg, ...)`` yields batches of episodes in the format of
:mod:`panet_jax.data.spec`; which images make each episode is the pure
:class:`panet_jax.data.sampler.EpisodeSampler`'s choice, so a resumed or multi-host run sees
exactly the episodes of an uninterrupted one. This module turns a draw into arrays:

* images resized to ``image_size`` (aspect not kept, as torchvision 0.2.1 ``Resize``):
  antialiased bilinear rounded to uint8 (within 1 grey level of PIL ``BILINEAR``), label /
  instance / scribble maps with exactly PIL's ``NEAREST`` indexing; horizontal flip with
  p=0.5 per image when ``train``; ImageNet normalisation
  (:mod:`panet_jax.data.preprocess` computes the same in NumPy);
* the official mask rules of :mod:`panet_jax.data.episodes` (support fg / bg, query labels);
  binary masks (FSS-1000) become the image's class;
* ``support_annotation='scribble'``: the official ``ScribbleAugAuto`` rule where the dataset
  has them (bg = scribble 0; fg = one scribble id inside the class mask: the official loader's
  pick under ``sampler='official'``), otherwise generated scribbles; ``'bbox'``: boxes from the
  instance map (:mod:`panet_jax.data.weak`). Weak masks are computed at ``image_size`` after
  the flip, as the official loader does.

COCO differs from the official loader only where annotations of different classes overlap
(see :mod:`panet_jax.data.builders.coco`) and, for N > 1 ways, in that the official COCO
episodes label only the query's own way and count the other ways' pixels as support
background; here the semantic masks give every way's pixels their label, as for VOC.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp
import tensorflow_datasets as tfds

from panet_jax.data import (
    episodes,
    folder_classes,
    folds,
    official_sampler,
    preprocess,
    raw_labels,
    weak,
)
from panet_jax.data.builders import BUILDER_OF_DATASET, load_prepared
from panet_jax.data.official_sampler import OfficialEpisode
from panet_jax.data.sampler import (  # noqa: F401 (EpisodeConfig etc. are this API's too)
    DEFAULT_SPLITS,
    Draw,
    EpisodeConfig,
    EpisodeSampler,
    SplitIndex,
)
from panet_jax.runtime import tf_support  # noqa: F401 (hides the GPUs from TensorFlow)


def split_index(builder: tfds.core.DatasetBuilder, split: str) -> SplitIndex:
    """The index of ``split`` from the prepared dataset's metadata."""
    if split not in builder.info.splits:
        raise ValueError(
            f"split {split!r} is not in the prepared {builder.name} dataset "
            f"(available: {sorted(builder.info.splits)})"
        )
    metadata = builder.info.metadata or {}
    entry = metadata.get("splits", {}).get(split)
    if entry is None:
        raise ValueError(
            f"the prepared {builder.name} dataset has no index of split {split!r}; prepare it "
            "again with --overwrite"
        )
    return SplitIndex.from_metadata(entry, metadata.get("split_classes", {}).get(split))


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """JPEG bytes -> ``[h, w, 3]`` uint8 RGB, decoded like PIL (libjpeg's accurate integer
    IDCT; TF's default fast IDCT differs by a few grey levels). Grayscale -> RGB."""
    return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")


def tf_resize_image(image: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """``[h, w, 3]`` uint8 -> ``[H, W, 3]`` float32 in [0, 255], like PIL ``BILINEAR`` resize.

    PIL's bilinear filter is antialiased when shrinking (triangle filter widened by the scale),
    which ``antialias=True`` reproduces; the result is rounded as PIL returns uint8.
    """
    out = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(out), 0.0, 255.0)


def resize_label(label: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
    """``[h, w, 1]`` -> ``[H, W]``, exactly PIL's ``NEAREST`` resize, dtype kept."""
    shape = tf.shape(label, out_type=tf.int64)
    index = []
    for axis in range(2):
        idx = tf.numpy_function(
            preprocess.pil_nearest_index,
            [shape[axis], tf.constant(size[axis], tf.int64)],
            tf.int64,
            stateful=False,
        )
        index.append(tf.ensure_shape(idx, [size[axis]]))
    return tf.gather(tf.gather(label[..., 0], index[0], axis=0), index[1], axis=1)


def normalize(image: tf.Tensor) -> tf.Tensor:
    """[0, 255] RGB -> ImageNet-normalised float32 (:func:`preprocess.normalize_image`)."""
    mean = tf.constant(preprocess.IMAGENET_MEAN, tf.float32)
    std = tf.constant(preprocess.IMAGENET_STD, tf.float32)
    return (image / 255.0 - mean) / std


class _Episodes:
    """Builds the per-episode ``tf.function`` body for one sampler and split."""

    def __init__(self, sampler: EpisodeSampler, builder: tfds.core.DatasetBuilder) -> None:
        self.cfg, self.sampler = sampler.cfg, sampler
        self.features = builder.info.features
        self.records = builder.as_data_source(
            self.cfg.resolved_split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
        )
        self.binary_masks = episodes.has_binary_masks(builder.info.metadata)
        self.weak = self.cfg.support_annotation != "dense"
        skip = ["image"] if self.weak else ["image", "instances", "scribble"]
        self.decoders = {k: tfds.decode.SkipDecoding() for k in skip}

    def _draw_np(self, counter: np.int64):
        step, b = divmod(int(counter), self.sampler.batch_size)
        d = self.sampler.draw(step, b)
        return d.class_ids, d.images, d.flips, d.aux_seed

    def _fetch_np(self, images: np.ndarray) -> np.ndarray:
        return np.asarray([self.records[int(i)] for i in images], dtype=object)

    def _weak_np(self, labels, instances, scribbles, has_scribble, class_ids, seed, counter):
        step, b = divmod(int(counter), self.sampler.batch_size)
        picks = self.sampler.official_scribble_picks(step, b)
        mode = self.cfg.support_annotation
        return weak.episode_support_masks(
            mode, labels, instances, scribbles, has_scribble, class_ids, seed, picks
        )

    def _decode(self, raw: tf.Tensor, flips: tf.Tensor) -> dict[str, tf.Tensor]:
        """Every image of the episode decoded, resized and flipped: ``image [M, H, W, 3]``,
        ``mask [M, H, W]`` and, for weak supports, ``instances``, ``scribble``,
        ``has_scribble [M]``."""
        size = tuple(int(s) for s in self.cfg.image_size)
        out: dict[str, list[tf.Tensor]] = {"image": [], "mask": [], "instances": [],
                                           "scribble": [], "has_scribble": []}  # fmt: skip
        for i in range(self.sampler.num_images):
            ex = self.features.deserialize_example(raw[i], decoders=self.decoders)
            mask = resize_label(ex["mask"], size)
            if self.binary_masks:  # FSS-1000: 0/1 masks, one class per image
                mask = episodes.binary_mask_labels(mask, tf.cast(ex["classes"][0], mask.dtype), tf)
            maps = {"image": tf_resize_image(decode_image(ex["image"]), size), "mask": mask}
            if self.weak:
                maps["instances"] = resize_label(ex["instances"], size)
                maps["scribble"] = resize_label(ex["scribble"], size)
                out["has_scribble"].append(ex["has_scribble"])
            for key, value in maps.items():
                value = tf.cond(flips[i], lambda v=value: tf.reverse(v, [1]), lambda v=value: v)
                out[key].append(value)
        return {k: tf.stack(v) for k, v in out.items() if v}

    def _support_masks(self, maps, class_ids, aux_seed, counter) -> tuple[tf.Tensor, tf.Tensor]:
        n, k = self.cfg.n_ways, self.cfg.n_shots
        h, w = (int(s) for s in self.cfg.image_size)
        support = lambda x: tf.reshape(x[: n * k], [n, k, h, w])
        label = support(tf.cast(maps["mask"], tf.int32))
        if not self.weak:
            fg, bg = episodes.support_masks(label, class_ids, xp=tnp)
            return tf.cast(fg, tf.float32), tf.cast(bg, tf.float32)
        args = [
            label,
            support(maps["instances"]),
            support(maps["scribble"]),
            tf.reshape(maps["has_scribble"][: n * k], [n, k]),
            class_ids,
            aux_seed,
            counter,
        ]
        fg, bg = tf.numpy_function(self._weak_np, args, [tf.float32, tf.float32], stateful=False)
        return fg, bg  # fmt: skip

    def __call__(self, counter: tf.Tensor) -> dict[str, tf.Tensor]:
        cfg, m = self.cfg, self.sampler.num_images
        n, k, q = cfg.n_ways, cfg.n_shots, cfg.n_queries
        h, w = (int(s) for s in cfg.image_size)
        class_ids, images, flips, aux_seed = tf.numpy_function(
            self._draw_np, [counter], [tf.int32, tf.int64, tf.bool, tf.int64], stateful=False
        )
        class_ids.set_shape([n])
        flips.set_shape([m])
        raw = tf.numpy_function(self._fetch_np, [images], tf.string, stateful=False)
        raw.set_shape([m])
        maps = self._decode(raw, flips)
        image = normalize(maps["image"])  # [M, H, W, 3]
        fg, bg = self._support_masks(maps, class_ids, aux_seed, counter)
        fg.set_shape([n, k, h, w])
        bg.set_shape([n, k, h, w])
        labels = episodes.query_label_map(tf.cast(maps["mask"][n * k :], tf.int32), class_ids, tnp)
        return {
            "support_images": tf.reshape(image[: n * k], [n, k, h, w, 3]),
            "support_fg": fg,
            "support_bg": bg,
            "query_images": tf.reshape(image[n * k :], [q, h, w, 3]),
            "query_labels": tf.ensure_shape(tf.cast(labels, tf.int32), [q, h, w]),
            "class_ids": class_ids,
        }


def make_sampler(
    cfg: EpisodeConfig,
    *,
    data_dir: str | os.PathLike | None,
    seed: int,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[EpisodeSampler, tfds.core.DatasetBuilder]:
    """The prepared builder and the episode sampler of ``cfg`` (no TF graph)."""
    name = BUILDER_OF_DATASET[cfg.dataset]
    builder = load_prepared(name, data_dir=data_dir, config=cfg.builder_config)
    metadata = builder.info.metadata or {}
    if cfg.dataset in folds.PREPARED_CLASSES:  # a user's folder: classes from its metadata
        cfg = folder_classes.resolve(cfg, metadata)
    split = cfg.resolved_split
    index = split_index(builder, split)
    if cfg.dataset in folds.PREPARED_CLASSES:
        index = dataclasses.replace(index, split_classes=tuple(folder_classes.pool(cfg, metadata)))
    exclude: frozenset[str] = frozenset()
    if cfg.protocol == "hsnet" and cfg.train and cfg.split is None:
        eval_split = DEFAULT_SPLITS[(cfg.dataset, "hsnet")][1]
        if eval_split != split and eval_split in builder.info.splits:
            exclude = frozenset(split_index(builder, eval_split).ids)  # VOC: trainaug - val
    official_scribbles = cfg.sampler == "official" and cfg.support_annotation == "scribble"
    sampler = EpisodeSampler(
        cfg,
        index,
        seed=seed,
        batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
        exclude_ids=exclude,
        scribble_candidates=_scribble_candidates(builder, cfg) if official_scribbles else None,
        object_pixels=raw_labels.object_pixels(builder, split) if cfg.min_object_pixels else None,
    )
    return sampler, builder


def _scribble_candidates(
    builder: tfds.core.DatasetBuilder, cfg: EpisodeConfig
) -> Callable[[OfficialEpisode], list[list[list[int]]]]:
    """The official scribble-id candidates of an official episode's supports, from the masks and
    scribble PNGs as the official test loader sees them (nearest-resized, not flipped)."""
    skip = {k: tfds.decode.SkipDecoding() for k in ("image", "instances")}
    source = builder.as_data_source(cfg.resolved_split, decoders=skip)
    size = tuple(int(v) for v in cfg.image_size)

    def resized(x: np.ndarray) -> np.ndarray:
        return preprocess.resize_label(x[..., 0], size)

    def support(example_index: int, class_id: int) -> list[int]:
        ex = source[int(example_index)]
        if not bool(ex["has_scribble"]):  # no official file: nothing to replay
            return []
        fg = resized(ex["mask"]) == class_id
        return official_sampler.scribble_candidates(resized(ex["scribble"]), fg)

    def candidates(episode: OfficialEpisode) -> list[list[list[int]]]:
        return [
            [support(i, c) for i in shots]
            for c, shots in zip(episode.class_ids, episode.support, strict=True)
        ]

    return candidates


def episode_dataset(
    cfg: EpisodeConfig,
    *,
    data_dir: str | None,
    seed: int,
    batch_size: int,
    start_step: int = 0,
    num_steps: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> tf.data.Dataset:
    """Element i is the batch of episodes for step start_step + i: a dict with the keys of
    panet_jax/data/spec.py and a leading [batch_size] axis. Infinite if num_steps is None.

    ``data_dir`` is the TFDS data dir of the prepared dataset (``None``/'' =
    ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). Raises ``FileNotFoundError`` (with the
    command that prepares it) when the dataset is not prepared there, ``ValueError`` on a bad
    config or a class with too few images.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler, builder = make_sampler(
        cfg,
        data_dir=data_dir,
        seed=seed,
        batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    return sampler_dataset(sampler, builder, start_step=start_step, num_steps=num_steps)


def sampler_dataset(
    sampler: EpisodeSampler,
    builder: tfds.core.DatasetBuilder,
    *,
    start_step: int = 0,
    num_steps: int | None = None,
) -> tf.data.Dataset:
    """:func:`episode_dataset` for a sampler made by :func:`make_sampler` (so that a caller can
    also read the sampler's episode list, e.g. for an audit trail)."""
    if start_step < 0 or (num_steps is not None and num_steps < 0):
        raise ValueError("start_step and num_steps must be >= 0")
    batch_size = sampler.batch_size
    make_episode = _Episodes(sampler, builder)
    start = start_step * batch_size
    stop = np.iinfo(np.int64).max if num_steps is None else (start_step + num_steps) * batch_size
    ds = tf.data.Dataset.range(start, stop)
    ds = ds.map(make_episode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)
