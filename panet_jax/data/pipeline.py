"""The few-shot episode pipeline: TFDS random access + ``tf.data``.

``episode_dataset(cfg, ...)`` yields batches of episodes in the format of
:mod:`panet_jax.data.spec`. Every episode is a pure function of
``(seed, step, process_index, index in batch)``: the draw (classes, images, flips) comes from
``np.random.default_rng([seed, step, process_index, b])``, so a run resumed at ``start_step``
sees the same episodes as an uninterrupted one, and processes see disjoint streams.

Episode construction follows the official code (``dataloaders/customized.py``):

* ``n_ways`` distinct classes from the fold's class pool; the ``n_queries`` queries are spread
  over the ways with ``bincount(uniform way per query)``; for way ``n`` with ``q_n`` queries,
  ``n_shots + q_n`` distinct images containing its class: the first ``n_shots`` are the
  supports, the rest its queries (queries ordered by way). (The official code draws the query
  spread once per dataset; here it is per episode. Irrelevant for 1 way or 1 query.)
* images resized to ``image_size`` (aspect not kept, as torchvision 0.2.1 ``Resize``):
  antialiased bilinear rounded to uint8 (within 1 grey level of PIL ``BILINEAR``), label /
  instance / scribble maps with exactly PIL's ``NEAREST`` indexing; horizontal flip with
  p=0.5 per image when ``train``; ImageNet normalisation.
* ``support_fg = label == class``, ``support_bg = label not in the episode classes`` (VOC 255
  pixels are background, as in the official ``getMask``); query label 0 / ``n + 1`` / 255.
* ``support_annotation='scribble'``: the official ``ScribbleAugAuto`` rule where the dataset
  has them (bg = scribble 0; fg = one random scribble value inside the class mask), otherwise
  ``weak.scribble_from_mask`` on the fg and bg masks; ``'bbox'``: ``weak.bbox_masks`` from the
  instance map (connected components of the class mask where there is none). Weak masks are
  computed at ``image_size`` after the flip, as the official loader does.

COCO differs from the official loader only where annotations of different classes overlap
(see :mod:`panet_jax.data.builders.coco`) and, for N > 1 ways, in that the official COCO
episodes label only the query's own way and count the other ways' pixels as support
background; here the semantic masks give every way's pixels their label, as for VOC.

Protocols: ``'panet'`` samples class-uniform episodes from one image pool (VOC ``trainaug``
for train and test, COCO ``train``; synthetic ``train``/``test``). ``sampler='official'``
replays the official ``random.Random(seed)`` draw instead (see
:mod:`panet_jax.data.official_sampler`). ``'hsnet'``: test queries walk HSNet-style
``<id>__<cls>`` pairs of the evaluation split (VOC ``val``; generated from the masks, see
:func:`panet_jax.data.folds.hsnet_fold_lines`) in order, training queries are random pairs of
the training split (VOC: ``trainaug`` minus ``val``); supports are random other images of the
query's class; 1 way, 1 query.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp
import tensorflow_datasets as tfds

from panet_jax.data import episodes, folds, official_sampler, preprocess, spec
from panet_jax.data.builders import BUILDER_OF_DATASET, load_prepared
from panet_jax.data.official_sampler import OfficialEpisode, OfficialEpisodes, OfficialScribblePicks

DATASETS = ("synthetic", "pascal5i", "coco20i")
# (dataset, protocol) -> (train split, evaluation split)
DEFAULT_SPLITS = {
    ("pascal5i", "panet"): ("trainaug", "trainaug"),
    ("pascal5i", "hsnet"): ("trainaug", "val"),
    ("coco20i", "panet"): ("train", "train"),
    ("coco20i", "hsnet"): ("train", "val"),
    ("synthetic", "panet"): ("train", "test"),
    ("synthetic", "hsnet"): ("train", "test"),
}


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    """What episodes to make. See the module docstring for the sampling rules.

    ``sampler`` and ``builder_config`` are additions to the issue's API: ``'official'`` replays
    the official Python-``random`` draw (``protocol='panet'`` only);
    ``builder_config`` picks a TFDS builder config (synthetic: ``'default'``, ``'small'``,
    ``'tiny'``).
    """

    dataset: str  # 'synthetic' | 'pascal5i' | 'coco20i'
    fold: int = 0
    n_ways: int = 1
    n_shots: int = 1
    n_queries: int = 1
    image_size: tuple[int, int] = (417, 417)
    train: bool = True  # True: fold's train classes + random h-flip; False: test classes
    support_annotation: str = "dense"  # 'dense' | 'scribble' | 'bbox'
    coco_split: str = "panet"  # 'panet' (consecutive blocks) | 'interleaved'
    protocol: str = "panet"  # 'panet' | 'hsnet'
    split: str | None = None  # TFDS split override; default from dataset + protocol
    sampler: str = "stateless"  # 'stateless' | 'official'
    builder_config: str | None = None  # TFDS builder config name (None = the default)

    def __post_init__(self) -> None:
        def check(name: str, value, allowed) -> None:
            if value not in allowed:
                raise ValueError(f"EpisodeConfig.{name}={value!r}; expected one of {allowed}")

        check("dataset", self.dataset, DATASETS)
        check("support_annotation", self.support_annotation, spec.SUPPORT_ANNOTATIONS)
        check("protocol", self.protocol, spec.PROTOCOLS)
        check("sampler", self.sampler, spec.SAMPLERS)
        folds.test_classes(self.dataset, self.fold, self.coco_split)  # validates fold/split
        for name in ("n_ways", "n_shots", "n_queries"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EpisodeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if len(tuple(self.image_size)) != 2 or min(self.image_size) < 1:
            raise ValueError(f"EpisodeConfig.image_size must be (H, W), got {self.image_size}")
        if self.protocol == "hsnet" and (self.n_ways != 1 or self.n_queries != 1):
            raise ValueError("protocol='hsnet' defines 1-way episodes with 1 query")
        if self.sampler == "official" and self.protocol != "panet":
            raise ValueError("sampler='official' replays the official PANet draw: protocol='panet'")

    @property
    def resolved_split(self) -> str:
        """The TFDS split the episodes are drawn from."""
        if self.split:
            return self.split
        train_split, eval_split = DEFAULT_SPLITS[(self.dataset, self.protocol)]
        return train_split if self.train else eval_split

    @property
    def classes(self) -> list[int]:
        """The class pool: the fold's training classes if ``train`` else its test classes."""
        fn = folds.train_classes if self.train else folds.test_classes
        return fn(self.dataset, self.fold, self.coco_split)


# --------------------------------------------------------------------------------------
# Per-split index (ids and classes of every example, per-class image lists).
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SplitIndex:
    """Ids and classes of a split's examples, and per-class image lists (example indices)."""

    ids: tuple[str, ...]
    classes: tuple[tuple[int, ...], ...]
    class_order: dict[int, np.ndarray] | None = None  # official per-class order, if known
    # Official per-class list files that were missing when the dataset was prepared.
    class_order_missing: tuple[str, ...] = ()

    @classmethod
    def from_metadata(cls, entry: dict) -> SplitIndex:
        order = entry.get("class_order")
        return cls(
            ids=tuple(entry["ids"]),
            classes=tuple(tuple(c) for c in entry["classes"]),
            class_order=None
            if order is None
            else {int(c): np.asarray(v, np.int64) for c, v in order.items()},
            class_order_missing=tuple(entry.get("class_order_missing", ())),
        )

    @classmethod
    def from_source(cls, builder: tfds.core.DatasetBuilder, split: str) -> SplitIndex:
        """Scan the ``id``/``classes`` features (fallback when the metadata index is absent)."""
        skip = {k: tfds.decode.SkipDecoding() for k in ("image", "mask", "instances", "scribble")}
        src = builder.as_data_source(split, decoders=skip)
        ids, classes = [], []
        for i in range(len(src)):
            ex = src[i]
            ids.append(ex["id"].decode() if isinstance(ex["id"], bytes) else str(ex["id"]))
            classes.append(tuple(int(c) for c in ex["classes"]))
        return cls(ids=tuple(ids), classes=tuple(classes))

    def images_of(self, class_id: int, exclude: frozenset[str] = frozenset()) -> np.ndarray:
        """Example indices of the images containing ``class_id`` (official order if known)."""
        if self.class_order is not None and class_id in self.class_order:
            idx = self.class_order[class_id]
        else:
            idx = np.asarray([i for i, c in enumerate(self.classes) if class_id in c], np.int64)
        if exclude:
            idx = np.asarray([i for i in idx if self.ids[i] not in exclude], np.int64)
        return idx


def split_index(builder: tfds.core.DatasetBuilder, split: str) -> SplitIndex:
    """The index of ``split`` from the builder's metadata (or a scan of the split)."""
    if split not in builder.info.splits:
        raise ValueError(
            f"split {split!r} is not in the prepared {builder.name} dataset "
            f"(available: {sorted(builder.info.splits)})"
        )
    entry = (builder.info.metadata or {}).get("splits", {}).get(split)
    if entry is None:
        return SplitIndex.from_source(builder, split)
    return SplitIndex.from_metadata(entry)


# --------------------------------------------------------------------------------------
# Episode draws (pure NumPy / Python).
# --------------------------------------------------------------------------------------


class Draw(NamedTuple):
    """Which images make one episode."""

    class_ids: np.ndarray  # [N] int32
    images: np.ndarray  # [N*K + Q] int64 example indices: supports way-major, then queries
    flips: np.ndarray  # [N*K + Q] bool
    aux_seed: np.ndarray  # [] int64, seeds the weak-annotation randomness


# Datasets whose official per-class image order comes from files or an API (the synthetic set
# has no official code: its lists are in example order by definition).
_OFFICIAL_ORDER_SOURCES = {
    "pascal5i": "PANet's ImageSets/Segmentation/<split>/class{1..20}.txt",
    "coco20i": "pycocotools COCO.getImgIds(catIds=...)",
}


def _check_official_lists(cfg: EpisodeConfig, index: SplitIndex) -> None:
    """``sampler='official'`` needs the official per-class image order of the split."""
    source = _OFFICIAL_ORDER_SOURCES.get(cfg.dataset)
    if source is None or (index.class_order is not None and not index.class_order_missing):
        return
    missing = ", ".join(index.class_order_missing) or source
    raise ValueError(
        f"sampler='official' replays the official {cfg.dataset} episodes, which needs "
        f"{source} for split {cfg.resolved_split!r}; the prepared dataset was built without "
        f"them (missing: {missing}). Put them in the manual_dir and prepare again with "
        "--overwrite, or set config.eval.sampler='stateless' (other episodes than the official "
        "code's)."
    )


class EpisodeSampler:
    """Draws the image indices of every episode; ``draw(step, b)`` is a pure function.

    Built once per pipeline from the split index (per-class image lists in official order).
    """

    def __init__(
        self,
        cfg: EpisodeConfig,
        index: SplitIndex,
        *,
        seed: int,
        batch_size: int,
        process_index: int = 0,
        process_count: int = 1,
        exclude_ids: frozenset[str] = frozenset(),
        scribble_candidates: Callable[[OfficialEpisode], list[list[list[int]]]] | None = None,
    ) -> None:
        """``scribble_candidates``: the official scribble id candidates of an official episode's
        supports (:func:`panet_jax.data.official_sampler.scribble_candidates`, ``[N][K]``
        lists); with ``sampler='official'`` and scribble supports, the official loader's picks
        are replayed from them."""
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        self.cfg, self.index = cfg, index
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.pool = cfg.classes
        self.lists = {c: index.images_of(c, exclude_ids) for c in self.pool}
        need = cfg.n_shots + (1 if cfg.protocol == "hsnet" else cfg.n_queries)
        for c in self.pool:
            if len(self.lists[c]) < need:
                raise ValueError(
                    f"class {c} has {len(self.lists[c])} images in split "
                    f"{cfg.resolved_split!r} of {cfg.dataset}, fewer than the {need} needed "
                    f"for {cfg.n_shots}-shot episodes with {cfg.n_queries} queries"
                )
        if cfg.n_ways > len(self.pool):
            raise ValueError(f"n_ways={cfg.n_ways} exceeds the {len(self.pool)} pool classes")
        self.pairs: list[tuple[int, int]] = []
        if cfg.protocol == "hsnet":
            pos = {image_id: i for i, image_id in enumerate(index.ids)}
            lines = folds.hsnet_fold_lines(
                list(index.ids), [list(c) for c in index.classes], self.pool
            )
            self.pairs = [
                (pos[image_id], c)
                for image_id, c in map(folds.parse_hsnet_line, lines)
                if image_id not in exclude_ids
            ]
            if not self.pairs:
                raise ValueError(f"no (image, class) pair of classes {self.pool} in the split")
        self.official: OfficialEpisodes | None = None
        self.scribble_picks: OfficialScribblePicks | None = None
        if cfg.sampler == "official":
            _check_official_lists(cfg, index)
            labels = folds.official_label_order(cfg.dataset, cfg.fold, cfg.train, cfg.coco_split)
            self.official = OfficialEpisodes(
                labels,
                [self.lists[c] for c in labels],
                cfg.n_ways,
                cfg.n_shots,
                cfg.n_queries,
                seed,
            )
            if scribble_candidates is not None and cfg.support_annotation == "scribble":
                official = self.official
                self.scribble_picks = OfficialScribblePicks(
                    seed, lambda e: scribble_candidates(official[e])
                )

    @property
    def num_images(self) -> int:
        """Images per episode, ``N*K + Q``."""
        return self.cfg.n_ways * self.cfg.n_shots + self.cfg.n_queries

    def episode_number(self, step: int, b: int) -> int:
        """Global episode counter across processes (official / HSNet walks)."""
        return (step * self.process_count + self.process_index) * self.batch_size + b

    def global_slot(self, b: int) -> int:
        """Position of this host's episode ``b`` in the global batch of a step."""
        return self.process_index * self.batch_size + b

    def official_scribble_picks(self, step: int, b: int) -> np.ndarray | None:
        """``[N, K]`` official fg scribble ids of episode ``b`` at ``step`` (-1: none), or None
        when the official picks do not apply (other sampler / annotation, no scribble PNGs)."""
        if self.scribble_picks is None:
            return None
        picks = self.scribble_picks[self.episode_number(step, b)]
        return np.asarray([[-1 if p is None else p for p in way] for way in picks], np.int64)

    def draw(self, step: int, b: int) -> Draw:
        """Episode ``b`` of this host's batch at ``step``: a pure function of
        ``(seed, step, global slot)``, so hosts draw disjoint streams and the episodes of a step
        depend only on the global batch size, not on how it is split over processes."""
        cfg = self.cfg
        rng = np.random.default_rng([self.seed, step, self.global_slot(b)])
        if self.official is not None:
            ep = self.official[self.episode_number(step, b)]
            class_ids = np.asarray(ep.class_ids)
            images = np.concatenate([np.ravel(ep.support), ep.query]).astype(np.int64)
        elif cfg.protocol == "hsnet":
            if cfg.train:
                query, c = self.pairs[int(rng.integers(len(self.pairs)))]
            else:
                query, c = self.pairs[self.episode_number(step, b) % len(self.pairs)]
            others = self.lists[c][self.lists[c] != query]
            support = rng.choice(others, cfg.n_shots, replace=False)
            class_ids = np.asarray([c])
            images = np.concatenate([support, [query]]).astype(np.int64)
        else:
            class_ids = rng.choice(self.pool, cfg.n_ways, replace=False)
            counts = np.bincount(rng.integers(cfg.n_ways, size=cfg.n_queries), minlength=cfg.n_ways)
            supports, queries = [], []
            for c, q in zip(class_ids, counts, strict=True):
                picked = rng.choice(self.lists[int(c)], cfg.n_shots + q, replace=False)
                supports.append(picked[: cfg.n_shots])
                queries.append(picked[cfg.n_shots :])
            images = np.concatenate(supports + queries).astype(np.int64)
        flips = rng.random(self.num_images) < 0.5 if cfg.train else np.zeros(self.num_images, bool)
        aux_seed = rng.integers(2**62, dtype=np.int64)
        return Draw(class_ids.astype(np.int32), images, flips, np.int64(aux_seed))

    def describe(self, step: int, b: int) -> dict:
        """Image ids of one episode (for logging / auditing evaluation episodes):
        ``class_ids [N]``, ``support_ids [N][K]``, ``query_ids [Q]``, ``flips [N*K + Q]``, and
        ``scribble_picks [N][K]`` where the official scribble picks are replayed."""
        d = self.draw(step, b)
        nk = self.cfg.n_ways * self.cfg.n_shots
        ids = [self.index.ids[i] for i in d.images]
        out = {
            "class_ids": d.class_ids.tolist(),
            "support_ids": [
                ids[n * self.cfg.n_shots : (n + 1) * self.cfg.n_shots]
                for n in range(self.cfg.n_ways)
            ],
            "query_ids": ids[nk:],
            "flips": d.flips.tolist(),
        }
        picks = self.official_scribble_picks(step, b)
        if picks is not None:
            out["scribble_picks"] = picks.tolist()
        return out


# --------------------------------------------------------------------------------------
# Support masks (NumPy) for weak annotations.
# --------------------------------------------------------------------------------------


def weak_support_masks(
    mode: str,
    labels: np.ndarray,
    instances: np.ndarray,
    scribbles: np.ndarray,
    has_scribble: np.ndarray,
    class_ids: np.ndarray,
    seed: int,
    scribble_picks: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scribble / bbox support masks ``(fg, bg)``, each ``[N, K, H, W]`` float32.

    Calls :func:`panet_jax.data.weak.weak_support_masks` per support image on the dense masks
    of the official rule, with the instance map (bbox) and the official scribble PNG where the
    dataset has one (otherwise scribbles are generated from the dense fg and bg masks).

    Args:
      mode: ``'scribble'`` or ``'bbox'``.
      labels, instances, scribbles: ``[N, K, H, W]`` resized (and flipped) support maps.
      has_scribble: ``[N, K]`` whether ``scribbles`` holds an official scribble file.
      class_ids: ``[N]`` the episode classes.
      seed: seeds the random choices (scribble id pick, skeleton tie-breaks).
      scribble_picks: ``[N, K]`` fg scribble ids to use instead of a random pick (the official
        loader's, ``-1`` = none), for supports with an official scribble file.
    """
    from panet_jax.data import weak  # only the weak modes need it

    rng = np.random.default_rng(int(seed))
    n_ways, n_shots = labels.shape[:2]
    fg = np.zeros(labels.shape, np.float32)
    bg = np.zeros(labels.shape, np.float32)
    for n in range(n_ways):
        for k in range(n_shots):
            lab = labels[n, k]
            f, g = weak.weak_support_masks(
                mode,
                lab == class_ids[n],
                ~np.isin(lab, class_ids),
                instances=instances[n, k],
                scribble_png=scribbles[n, k] if has_scribble[n, k] else None,
                scribble_pick=None if scribble_picks is None else int(scribble_picks[n, k]),
                rng=rng,
            )
            fg[n, k], bg[n, k] = f, g
    return fg, bg


# --------------------------------------------------------------------------------------
# TensorFlow graph.
# --------------------------------------------------------------------------------------


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """JPEG bytes -> ``[h, w, 3]`` uint8 RGB, decoded like PIL (libjpeg's accurate integer
    IDCT; TF's default fast IDCT differs by a few grey levels). Grayscale -> RGB."""
    return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")


def resize_image(image: tf.Tensor, size: Sequence[int]) -> tf.Tensor:
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
    """Builds the per-episode ``tf.function`` body for one config and split."""

    def __init__(self, cfg: EpisodeConfig, sampler: EpisodeSampler, builder) -> None:
        self.cfg, self.sampler = cfg, sampler
        self.features = builder.info.features
        self.records = builder.as_data_source(
            cfg.resolved_split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
        )
        self.weak = cfg.support_annotation != "dense"
        skip = ["image"] if self.weak else ["image", "instances", "scribble"]
        self.decoders = {k: tfds.decode.SkipDecoding() for k in skip}

    def _draw_np(self, counter: np.int64):
        step, b = divmod(int(counter), self.sampler.batch_size)
        d = self.sampler.draw(step, b)
        return d.class_ids, d.images, d.flips, d.aux_seed

    def _fetch_np(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.records.__getitems__([int(i) for i in images]), dtype=object)

    def _weak_np(self, labels, instances, scribbles, has_scribble, class_ids, seed, counter):
        step, b = divmod(int(counter), self.sampler.batch_size)
        return weak_support_masks(
            self.cfg.support_annotation,
            labels,
            instances,
            scribbles,
            has_scribble,
            class_ids,
            seed,
            self.sampler.official_scribble_picks(step, b),
        )

    def __call__(self, counter: tf.Tensor) -> dict[str, tf.Tensor]:
        cfg = self.cfg
        n, k, q = cfg.n_ways, cfg.n_shots, cfg.n_queries
        h, w = (int(s) for s in cfg.image_size)
        m = self.sampler.num_images
        class_ids, images, flips, aux_seed = tf.numpy_function(
            self._draw_np, [counter], [tf.int32, tf.int64, tf.bool, tf.int64], stateful=False
        )
        class_ids.set_shape([n])
        flips.set_shape([m])
        raw = tf.numpy_function(self._fetch_np, [images], tf.string, stateful=False)
        raw.set_shape([m])

        decoded = {"image": [], "mask": [], "instances": [], "scribble": [], "has_scribble": []}
        for i in range(m):
            ex = self.features.deserialize_example(raw[i], decoders=self.decoders)
            maps = {
                "image": resize_image(decode_image(ex["image"]), (h, w)),
                "mask": resize_label(ex["mask"], (h, w)),
            }
            if self.weak:
                maps["instances"] = resize_label(ex["instances"], (h, w))
                maps["scribble"] = resize_label(ex["scribble"], (h, w))
                decoded["has_scribble"].append(ex["has_scribble"])
            for key, value in maps.items():
                value = tf.cond(flips[i], lambda v=value: tf.reverse(v, [1]), lambda v=value: v)
                decoded[key].append(value)

        image = normalize(tf.stack(decoded["image"]))  # [M, H, W, 3]
        label = tf.cast(tf.stack(decoded["mask"]), tf.int32)  # [M, H, W]
        support_label = tf.reshape(label[: n * k], [n, k, h, w])
        query_label = label[n * k :]

        if self.weak:
            fg, bg = tf.numpy_function(
                self._weak_np,
                [
                    support_label,
                    tf.reshape(tf.stack(decoded["instances"])[: n * k], [n, k, h, w]),
                    tf.reshape(tf.stack(decoded["scribble"])[: n * k], [n, k, h, w]),
                    tf.reshape(tf.stack(decoded["has_scribble"])[: n * k], [n, k]),
                    class_ids,
                    aux_seed,
                    counter,
                ],
                [tf.float32, tf.float32],
                stateful=False,
            )
        else:
            fg, bg = (tf.cast(m, tf.float32) for m in episodes.support_masks(
                support_label, class_ids, xp=tnp))  # fmt: skip
        fg.set_shape([n, k, h, w])
        bg.set_shape([n, k, h, w])
        out = episodes.query_label_map(query_label, class_ids, xp=tnp)

        return {
            "support_images": tf.reshape(image[: n * k], [n, k, h, w, 3]),
            "support_fg": fg,
            "support_bg": bg,
            "query_images": tf.reshape(image[n * k :], [q, h, w, 3]),
            "query_labels": tf.ensure_shape(tf.cast(out, tf.int32), [q, h, w]),
            "class_ids": class_ids,
        }


def _keep_tf_off_accelerators() -> None:
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # already initialised: nothing to do
        pass


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
    split = cfg.resolved_split
    index = split_index(builder, split)
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
    _keep_tf_off_accelerators()
    if start_step < 0 or (num_steps is not None and num_steps < 0):
        raise ValueError("start_step and num_steps must be >= 0")
    batch_size = sampler.batch_size
    make_episode = _Episodes(sampler.cfg, sampler, builder)
    start = start_step * batch_size
    stop = np.iinfo(np.int64).max if num_steps is None else (start_step + num_steps) * batch_size
    ds = tf.data.Dataset.range(start, stop)
    ds = ds.map(make_episode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)
