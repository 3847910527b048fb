"""An exact re-statement of the official PANet episode draw (pure Python, no TensorFlow).

The official code (kaixin96/PANet ``dataloaders/customized.py`` ``voc_fewshot`` /
``coco_fewshot`` and ``dataloaders/common.py`` ``PairedDataset(same=False)``) seeds Python's
``random`` (``set_seed(1234 + run)`` in ``test.py``) and then, in this order:

1. ``cnt_query = np.bincount(random.choices(range(n_ways), k=n_queries), minlength=n_ways)``,
   once per dataset;
2. for every episode: ``random.sample(range(n_classes), k=n_ways)`` picks sub-datasets
   (classes, in the iteration order of the official ``labels`` set), then for each picked way
   ``i``: ``random.sample(range(len(class_list)), k=n_shots + cnt_query[i])`` picks positions
   in that class's image list.

``fewShot`` then takes the first ``n_shots`` images of way ``i`` as supports and the remaining
ones **from the end backwards** as its queries (``paired_sample[cumsum_idx[i+1] - j - 1]``),
queries ordered by way.

Scribble supports (:class:`OfficialScribblePicks`): ``getMask`` picks one scribble id per support
with ``random.choice`` *inside the DataLoader worker*. ``test.py`` iterates
``DataLoader(num_workers=1, shuffle=False)``, whose worker 0 calls ``random.seed(base_seed)``
with ``base_seed`` = torch's first int64 draw after ``set_seed(1234 + run)``
(``torch.LongTensor(1).random_()`` in PyTorch 1.0, ``torch.empty((), dtype=torch.int64)
.random_()`` today); the worker then visits the episodes in order, and within an episode the
supports way by way, shot by shot, drawing only where a support has candidate ids.

Running this with ``random.Random(seed)`` gives the same episodes as the official code, given
the same per-class image lists in the same order (VOC: PANet's
``ImageSets/Segmentation/trainaug/class{c}.txt``; COCO: ``getImgIds(catIds=...)``) and the same
label-set order (:func:`panet_jax.data.folds.official_label_order`). Not replicated: the
DataLoader's training-time shuffle (torch RNG) and the training flips (``random`` in the
loader worker).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np


class OfficialEpisode(NamedTuple):
    class_ids: tuple[int, ...]  # [N] dataset class ids
    support: tuple[tuple[int, ...], ...]  # [N][K] example indices
    query: tuple[int, ...]  # [Q] example indices


class OfficialEpisodes:
    """The official episode sequence for one seed; ``episodes[i]`` is episode ``i``.

    Args:
      labels: class ids in the official label-set iteration order.
      class_lists: for each entry of ``labels``, its image list (example indices, official
        order).
      n_ways, n_shots, n_queries: the task.
      seed: the value given to the official ``set_seed`` (``random.seed``).

    Episodes are drawn lazily in order and cached (thread-safe), as the official code draws all
    ``max_iters`` episodes up front.
    """

    def __init__(
        self,
        labels: Sequence[int],
        class_lists: Sequence[Sequence[int]],
        n_ways: int,
        n_shots: int,
        n_queries: int,
        seed: int,
    ) -> None:
        if len(labels) != len(class_lists):
            raise ValueError("labels and class_lists must have the same length")
        if n_ways > len(labels):
            raise ValueError(f"n_ways={n_ways} exceeds the {len(labels)} classes of the label set")
        self.labels = [int(c) for c in labels]
        self.class_lists = [list(map(int, lst)) for lst in class_lists]
        self.n_ways, self.n_shots = n_ways, n_shots
        self._rng = random.Random(seed)
        choices = self._rng.choices(population=range(n_ways), k=n_queries)
        self.cnt_query = [int(x) for x in np.bincount(choices, minlength=n_ways)]
        self.n_elements = [n_shots + x for x in self.cnt_query]
        self._cache: list[OfficialEpisode] = []
        self._lock = threading.Lock()

    def _draw(self) -> OfficialEpisode:
        rng = self._rng
        picked = rng.sample(range(len(self.class_lists)), k=len(self.n_elements))
        paired = [
            (d, rng.sample(range(len(self.class_lists[d])), k=self.n_elements[i]))
            for i, d in enumerate(picked)
        ]
        class_ids, support, query = [], [], []
        for i, (d, positions) in enumerate(paired):
            images = [self.class_lists[d][p] for p in positions]
            class_ids.append(self.labels[d])
            support.append(tuple(images[: self.n_shots]))
            query.extend(images[len(images) - 1 - j] for j in range(self.cnt_query[i]))
        return OfficialEpisode(tuple(class_ids), tuple(support), tuple(query))

    def __getitem__(self, index: int) -> OfficialEpisode:
        if index < 0:
            raise IndexError("episode index must be >= 0")
        with self._lock:
            while len(self._cache) <= index:
                self._cache.append(self._draw())
            return self._cache[index]


# --------------------------------------------------------------------------------------------
# Scribble ids picked in the official test loader's worker.
# --------------------------------------------------------------------------------------------


def dataloader_base_seed(seed: int) -> int:
    """torch's first int64 draw after ``torch.manual_seed(seed)``: the ``base_seed`` of the
    DataLoader iterator that ``test.py`` creates right after ``set_seed(seed)``.

    torch's CPU generator is MT19937 seeded with ``init_genrand(seed mod 2**32)`` (NumPy's
    legacy seeding of the same engine); an int64 ``random_()`` takes two 32-bit outputs
    ``(hi << 32) | lo`` modulo ``2**63``. Written without torch so evaluation does not need it.
    """
    engine = np.random.MT19937()
    engine._legacy_seeding(int(seed) & 0xFFFFFFFF)  # torch: init_genrand(uint32(seed))
    hi, lo = (int(x) for x in engine.random_raw(2))
    return ((hi << 32) | lo) % (1 << 63)


def scribble_candidates(scribble: np.ndarray, fg: np.ndarray) -> list[int]:
    """The official ``scribble_cls_list`` of one support, in the official (set) order.

    ``getMask``: ``fg_scribble = where(fg & (scribble != 0) & (scribble != 255), scribble, 0)``;
    ``list(set(np.unique(fg_scribble)) - set([0,]))``. The same CPython set operations on the
    same ints give the same order, which ``random.choice`` depends on.

    Args:
      scribble: ``[H, W]`` scribble PNG values (resized as the support); fg: ``[H, W]`` bool.
    """
    scribble = np.asarray(scribble).astype(np.int64)
    selected = np.asarray(fg, bool) & (scribble != 0) & (scribble != 255)
    values = np.unique(np.where(selected, scribble, 0)).tolist()
    return list(set(values) - {0})


class OfficialScribblePicks:
    """The fg scribble id the official test loader picks for every support of every episode.

    Args:
      seed: the run's seed (``1234 + run``).
      candidates_of: episode number -> ``[N][K]`` candidate lists
        (:func:`scribble_candidates` of each support, way-major).

    ``picks[e]`` is ``[N][K]``: the picked id, or ``None`` where a support has no candidate (its
    fg scribble is empty). Drawn lazily in episode order and cached (thread-safe).
    """

    def __init__(self, seed: int, candidates_of: Callable[[int], list[list[list[int]]]]):
        self._rng = random.Random(dataloader_base_seed(seed) + 0)  # worker_id 0
        self._candidates_of = candidates_of
        self._cache: list[list[list[int | None]]] = []
        self._lock = threading.Lock()

    def __getitem__(self, episode: int) -> list[list[int | None]]:
        if episode < 0:
            raise IndexError("episode index must be >= 0")
        with self._lock:
            while len(self._cache) <= episode:
                candidates = self._candidates_of(len(self._cache))
                self._cache.append(
                    [[self._rng.choice(c) if c else None for c in way] for way in candidates]
                )
            return self._cache[episode]
