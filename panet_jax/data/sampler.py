"""Which images make each episode: the episode config, a split's index, and the sampler.

Every episode is a pure function of ``(seed, step, global slot)``: the draw (classes, images,
flips) comes from ``np.random.default_rng([seed, step, process_index * batch_size + b])``, so a
run resumed at any step sees the episodes of an uninterrupted one, and the episodes of a step
depend only on the global batch size, not on how it is split over processes. Pure NumPy /
Python (the split index is read from the prepared dataset's metadata).

Three ways to choose the images (``_Strategy``), following the official code
(``dataloaders/customized.py``, ``dataloaders/common.py``):

* ``_ClassUniform`` (protocol ``'panet'``, ``sampler='stateless'``): ``n_ways`` distinct
  classes from the fold's pool; the ``n_queries`` queries are spread over the ways with
  ``bincount(uniform way per query)``; for way ``n`` with ``q_n`` queries, ``n_shots + q_n``
  distinct images containing its class: the first ``n_shots`` are the supports, the rest its
  queries (queries ordered by way). (The official code draws the query spread once per
  dataset; here it is per episode. Irrelevant for 1 way or 1 query.)
* ``_OfficialReplay`` (``sampler='official'``): the official ``random.Random(seed)`` draw
  itself (:mod:`panet_jax.data.official_sampler`), episode by episode.
* ``_ListWalk`` (protocol ``'hsnet'``): test queries walk HSNet-style ``<id>__<cls>`` pairs of
  the evaluation split in order (FSS-1000: every test image once), training queries are random
  pairs; supports are random other images of the query's class; 1 way, 1 query. On FSS-1000
  (one class per image) this is HSNet's FSS test loop (``data/fss.py``), up to the order of
  the images within a class and the random source of the supports.

``min_object_pixels > 0`` (PFENet / BAM's small-object filter, ``config.eval.min_object_pixels``)
first drops, per class, the images whose raw mask has fewer pixels of that class
(:func:`drop_small_objects`), so no query or support of that class is below it; every strategy
then draws from the filtered lists. At 0 nothing is counted or dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from panet_jax.data import folds, spec
from panet_jax.data.official_sampler import OfficialEpisode, OfficialEpisodes, OfficialScribblePicks

# (dataset, protocol) -> (train split, evaluation split)
DEFAULT_SPLITS = {
    ("pascal5i", "panet"): ("trainaug", "trainaug"),
    ("pascal5i", "hsnet"): ("trainaug", "val"),
    ("coco20i", "panet"): ("train", "train"),
    ("coco20i", "hsnet"): ("train", "val"),
    ("synthetic", "panet"): ("train", "test"),
    ("synthetic", "hsnet"): ("train", "test"),
    ("fss1000", "panet"): ("train", "test"),
    ("fss1000", "hsnet"): ("train", "test"),
    # A folder dataset prepared with folds has one split, 'images' (folder_classes.resolve).
    ("folder", "panet"): ("train", "test"),
    ("folder", "hsnet"): ("train", "test"),
}
DATASETS = tuple(sorted({d for d, _ in DEFAULT_SPLITS}))
# Datasets whose official per-class image order comes from files or an API (the synthetic set
# and FSS-1000 have no official PANet code: their lists are in example order by definition).
_OFFICIAL_ORDER_SOURCES = {
    "pascal5i": "PANet's ImageSets/Segmentation/<split>/class{1..20}.txt",
    "coco20i": "pycocotools COCO.getImgIds(catIds=...)",
}


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
    """What episodes to make (see the module docstring for the sampling rules)."""

    dataset: str  # one of DATASETS
    fold: int = 0
    n_ways: int = 1
    n_shots: int = 1
    n_queries: int = 1
    image_size: tuple[int, int] = (417, 417)
    train: bool = True  # True: fold's train classes + random h-flip; False: test classes
    support_annotation: str = "dense"  # one of spec.SUPPORT_ANNOTATIONS
    coco_split: str = "panet"  # 'panet' (consecutive blocks) | 'interleaved'
    protocol: str = "panet"  # one of spec.PROTOCOLS
    split: str | None = None  # TFDS split override; default from dataset + protocol
    sampler: str = "stateless"  # one of spec.SAMPLERS
    builder_config: str | None = None  # TFDS builder config name (None = the default)
    # PFENet's small-object filter: an image is a candidate for class c only if its raw
    # (original-resolution) mask has >= this many pixels of c. 0 = off (every image).
    min_object_pixels: int = 0

    def __post_init__(self) -> None:
        def check(name: str, value: Any, allowed: tuple) -> None:
            if value not in allowed:
                raise ValueError(f"EpisodeConfig.{name}={value!r}; expected one of {allowed}")

        check("dataset", self.dataset, DATASETS)
        check("support_annotation", self.support_annotation, spec.SUPPORT_ANNOTATIONS)
        check("protocol", self.protocol, spec.PROTOCOLS)
        check("sampler", self.sampler, spec.SAMPLERS)
        folds.check_fold(self.dataset, self.fold, self.coco_split)
        for name in ("n_ways", "n_shots", "n_queries"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EpisodeConfig.{name} must be >= 1, got {getattr(self, name)}")
        if int(self.min_object_pixels) < 0:
            raise ValueError(
                f"EpisodeConfig.min_object_pixels must be >= 0, got {self.min_object_pixels}"
            )
        if len(tuple(self.image_size)) != 2 or min(self.image_size) < 1:
            raise ValueError(f"EpisodeConfig.image_size must be (H, W), got {self.image_size}")
        if self.protocol == "hsnet" and (self.n_ways != 1 or self.n_queries != 1):
            raise ValueError("protocol='hsnet' defines 1-way episodes with 1 query")
        if self.sampler == "official" and self.protocol != "panet":
            raise ValueError("sampler='official' replays the official PANet draw: protocol='panet'")
        if self.sampler == "official" and self.dataset in folds.PREPARED_CLASSES:
            raise ValueError(f"sampler='official': the official PANet code has no {self.dataset} "
                             "episodes to replay; use sampler='stateless'")  # fmt: skip

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


@dataclasses.dataclass(frozen=True)
class SplitIndex:
    """Ids and classes of a split's examples, and per-class image lists (example indices)."""

    ids: tuple[str, ...]
    classes: tuple[tuple[int, ...], ...]
    class_order: dict[int, np.ndarray] | None = None  # official per-class order, if known
    # Official per-class list files that were missing when the dataset was prepared.
    class_order_missing: tuple[str, ...] = ()
    # The classes the prepared dataset assigns to this split (FSS-1000), else None (folds).
    split_classes: tuple[int, ...] | None = None

    @classmethod
    def from_metadata(cls, entry: dict, split_classes: list[int] | None = None) -> SplitIndex:
        order = entry.get("class_order")
        return cls(
            ids=tuple(entry["ids"]),
            classes=tuple(tuple(c) for c in entry["classes"]),
            class_order=None
            if order is None
            else {int(c): np.asarray(v, np.int64) for c, v in order.items()},
            class_order_missing=tuple(entry.get("class_order_missing", ())),
            split_classes=None if split_classes is None else tuple(split_classes),
        )

    def images_of(self, class_id: int, exclude: frozenset[str] = frozenset()) -> np.ndarray:
        """Example indices of the images containing ``class_id`` (official order if known)."""
        if self.class_order is not None and class_id in self.class_order:
            idx = self.class_order[class_id]
        else:
            idx = np.asarray([i for i, c in enumerate(self.classes) if class_id in c], np.int64)
        if exclude:
            idx = np.asarray([i for i in idx if self.ids[i] not in exclude], np.int64)
        return idx


# Raw-mask pixel counts: example indices -> {index: {class id: pixels of that class}}.
PixelCounts = Callable[[Sequence[int]], Mapping[int, Mapping[int, int]]]


def drop_small_objects(
    index: SplitIndex, classes: Sequence[int], pixels: PixelCounts, min_pixels: int
) -> SplitIndex:
    """``index`` without the (image, class) pairs of ``classes`` whose class covers fewer than
    ``min_pixels`` pixels of the image's raw mask: the image is no longer listed for that class
    (``classes`` and ``class_order``, whose order is kept). PFENet's ``make_dataset`` rule
    (``tmp_label.sum() >= 2 * 32 * 32`` on the un-resized label); other pairs are untouched.
    (PFENet's test loader then picks a listed query's class among *all* the image's test
    classes, unfiltered; here the query's pair itself must pass, as its supports' must.)

    ``pixels`` is called once, with the sorted example indices listed for ``classes``.
    """
    wanted = sorted({int(c) for c in classes})
    listed = {c: index.images_of(c) for c in wanted}
    counts = pixels(sorted({int(i) for v in listed.values() for i in v}))
    small = {(int(i), c) for c, v in listed.items() for i in v
             if counts[int(i)].get(c, 0) < min_pixels}  # fmt: skip
    kept = tuple(tuple(c for c in cs if (i, c) not in small) for i, cs in enumerate(index.classes))
    order = index.class_order
    if order is not None:
        order = {c: np.asarray([i for i in v if (int(i), c) not in small], np.int64)
                 for c, v in order.items()}  # fmt: skip
    return dataclasses.replace(index, classes=kept, class_order=order)


class Draw(NamedTuple):
    """Which images make one episode."""

    class_ids: np.ndarray  # [N] int32
    images: np.ndarray  # [N*K + Q] int64 example indices: supports way-major, then queries
    flips: np.ndarray  # [N*K + Q] bool
    aux_seed: np.ndarray  # [] int64, seeds the weak-annotation randomness


def check_official_lists(cfg: EpisodeConfig, index: SplitIndex) -> None:
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


# --------------------------------------------------------------------------------------------
# Strategies: (rng, global episode number) -> (class ids [N], image indices [N*K + Q]).
# --------------------------------------------------------------------------------------------


class _ClassUniform:
    def __init__(self, cfg: EpisodeConfig, pool: list[int], lists: dict[int, np.ndarray]):
        self.cfg, self.pool, self.lists = cfg, pool, lists

    def __call__(self, rng: np.random.Generator, number: int) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        class_ids = rng.choice(self.pool, cfg.n_ways, replace=False)
        counts = np.bincount(rng.integers(cfg.n_ways, size=cfg.n_queries), minlength=cfg.n_ways)
        supports, queries = [], []
        for c, q in zip(class_ids, counts, strict=True):
            picked = rng.choice(self.lists[int(c)], cfg.n_shots + q, replace=False)
            supports.append(picked[: cfg.n_shots])
            queries.append(picked[cfg.n_shots :])
        return class_ids, np.concatenate(supports + queries)


class _OfficialReplay:
    def __init__(self, cfg: EpisodeConfig, lists: dict[int, np.ndarray], seed: int):
        labels = folds.official_label_order(cfg.dataset, cfg.fold, cfg.train, cfg.coco_split)
        self.episodes = OfficialEpisodes(labels, [lists[c] for c in labels], cfg.n_ways,
                                         cfg.n_shots, cfg.n_queries, seed)  # fmt: skip

    def __call__(self, rng: np.random.Generator, number: int) -> tuple[np.ndarray, np.ndarray]:
        ep = self.episodes[number]
        return np.asarray(ep.class_ids), np.concatenate([np.ravel(ep.support), ep.query])


class _ListWalk:
    def __init__(self, cfg: EpisodeConfig, index: SplitIndex, pool: list[int],
                 lists: dict[int, np.ndarray], exclude: frozenset[str]):  # fmt: skip
        self.cfg, self.lists = cfg, lists
        position = {image_id: i for i, image_id in enumerate(index.ids)}
        lines = folds.hsnet_fold_lines(list(index.ids), [list(c) for c in index.classes], pool)
        self.pairs = [(position[image_id], c) for image_id, c in map(folds.parse_hsnet_line, lines)
                      if image_id not in exclude]  # fmt: skip
        if not self.pairs:
            raise ValueError(f"no (image, class) pair of classes {pool} in the split")

    def __call__(self, rng: np.random.Generator, number: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cfg.train:
            query, c = self.pairs[int(rng.integers(len(self.pairs)))]
        else:
            query, c = self.pairs[number % len(self.pairs)]
        others = self.lists[c][self.lists[c] != query]
        support = rng.choice(others, self.cfg.n_shots, replace=False)
        return np.asarray([c]), np.concatenate([support, [query]])


# --------------------------------------------------------------------------------------------
# The sampler.
# --------------------------------------------------------------------------------------------


class EpisodeSampler:
    """Draws the image indices of every episode; ``draw(step, b)`` is a pure function.

    Args:
      cfg: what episodes to make.
      index: the split's index (per-class image lists in official order where known).
      seed, batch_size, process_index, process_count: the stream (see the module docstring).
      exclude_ids: images never used (HSNet training: the evaluation split's).
      scribble_candidates: the official scribble id candidates of an official episode's
        supports (:func:`panet_jax.data.official_sampler.scribble_candidates`, ``[N][K]``
        lists); with ``sampler='official'`` and scribble supports, the official loader's picks
        are replayed from them.
      object_pixels: the raw masks' per-class pixel counts (:data:`PixelCounts`), needed when
        ``cfg.min_object_pixels > 0``: images below it are dropped from a class's list
        (:func:`drop_small_objects`) before any draw; unused (draws unchanged) at 0.
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
        object_pixels: PixelCounts | None = None,
    ) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        self.pool = list(index.split_classes) if index.split_classes else cfg.classes
        if cfg.min_object_pixels > 0:
            if object_pixels is None:
                raise ValueError("min_object_pixels > 0 needs the raw masks' object_pixels")
            index = drop_small_objects(index, self.pool, object_pixels, cfg.min_object_pixels)
        self.cfg, self.index = cfg, index
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.lists = {c: index.images_of(c, exclude_ids) for c in self.pool}
        self._check_sizes()
        self.scribble_picks: OfficialScribblePicks | None = None
        if cfg.sampler == "official":
            check_official_lists(cfg, index)
            replay = _OfficialReplay(cfg, self.lists, seed)
            self._strategy: Any = replay
            if scribble_candidates is not None and cfg.support_annotation == "scribble":
                self.scribble_picks = OfficialScribblePicks(
                    seed, lambda e: scribble_candidates(replay.episodes[e])
                )
        elif cfg.protocol == "hsnet":
            self._strategy = _ListWalk(cfg, index, self.pool, self.lists, exclude_ids)
        else:
            self._strategy = _ClassUniform(cfg, self.pool, self.lists)

    def _check_sizes(self) -> None:
        cfg = self.cfg
        need = cfg.n_shots + (1 if cfg.protocol == "hsnet" else cfg.n_queries)
        for c in self.pool:
            if len(self.lists[c]) < need:
                small = (f" with >= {cfg.min_object_pixels} object pixels (min_object_pixels)"
                         if cfg.min_object_pixels else "")  # fmt: skip
                raise ValueError(
                    f"class {c} has {len(self.lists[c])} images{small} in split "
                    f"{cfg.resolved_split!r} of {cfg.dataset}, fewer than the {need} needed "
                    f"for {cfg.n_shots}-shot episodes with {cfg.n_queries} queries"
                )
        if cfg.n_ways > len(self.pool):
            raise ValueError(f"n_ways={cfg.n_ways} exceeds the {len(self.pool)} pool classes")

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """The walked ``(example index, class)`` pairs (HSNet protocol), else ``[]``."""
        return getattr(self._strategy, "pairs", [])

    @property
    def num_images(self) -> int:
        """Images per episode, ``N*K + Q``."""
        return self.cfg.n_ways * self.cfg.n_shots + self.cfg.n_queries

    def episode_number(self, step: int, b: int) -> int:
        """Global episode counter across processes (official / HSNet walks)."""
        return (step * self.process_count + self.process_index) * self.batch_size + b

    def draw(self, step: int, b: int) -> Draw:
        """Episode ``b`` of this host's batch at ``step``."""
        rng = np.random.default_rng([self.seed, step, self.process_index * self.batch_size + b])
        class_ids, images = self._strategy(rng, self.episode_number(step, b))
        n = self.num_images
        flips = rng.random(n) < 0.5 if self.cfg.train else np.zeros(n, bool)
        aux_seed = rng.integers(2**62, dtype=np.int64)
        return Draw(np.asarray(class_ids, np.int32), np.asarray(images, np.int64), flips,
                    np.int64(aux_seed))  # fmt: skip

    def official_scribble_picks(self, step: int, b: int) -> np.ndarray | None:
        """``[N, K]`` official fg scribble ids of episode ``b`` at ``step`` (-1: none), or None
        when the official picks do not apply (other sampler / annotation, no scribble PNGs)."""
        if self.scribble_picks is None:
            return None
        picks = self.scribble_picks[self.episode_number(step, b)]
        return np.asarray([[-1 if p is None else p for p in way] for way in picks], np.int64)

    def describe(self, step: int, b: int) -> dict:
        """Image ids of one episode (for logging / auditing evaluation episodes):
        ``class_ids [N]``, ``support_ids [N][K]``, ``query_ids [Q]``, ``flips [N*K + Q]``, and
        ``scribble_picks [N][K]`` where the official scribble picks are replayed."""
        d = self.draw(step, b)
        k = self.cfg.n_shots
        ids = [self.index.ids[i] for i in d.images]
        out = {
            "class_ids": d.class_ids.tolist(),
            "support_ids": [ids[n * k : (n + 1) * k] for n in range(self.cfg.n_ways)],
            "query_ids": ids[self.cfg.n_ways * k :],
            "flips": d.flips.tolist(),
        }
        picks = self.official_scribble_picks(step, b)
        if picks is not None:
            out["scribble_picks"] = picks.tolist()
        return out
