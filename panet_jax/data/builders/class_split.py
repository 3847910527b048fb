"""Class lists and seeded class splits, shared by the builders of class-level datasets
(FSS-1000 and the user's own folders): one class name per line, splits disjoint, a seeded
split a pure function of the sorted names and the seed."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence

import numpy as np


def read_class_list(path: str) -> list[str]:
    """Non-empty stripped lines of a class list; ``ValueError`` on duplicates or no names."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class list not found: {path}")
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f"class list {path} names no class")
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ValueError(f"class list {path} names some classes more than once: {dups[:5]}")
    return names


def check_disjoint(lists: Mapping[str, Sequence[str]], paths: Mapping[str, str]) -> None:
    """``ValueError`` naming both files when two class lists share a class."""
    keys = list(lists)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            both = sorted(set(lists[a]) & set(lists[b]))
            if both:
                raise ValueError(
                    f"the class lists {paths[a]} and {paths[b]} overlap "
                    f"({len(both)} classes, e.g. {both[:5]}); they must be disjoint"
                )


def seeded_partition(names: Sequence[str], sizes: Sequence[int], seed: int) -> list[list[str]]:
    """``names`` sorted, permuted by ``np.random.RandomState(seed).permutation``, cut into
    consecutive parts of ``sizes`` (which sum to ``len(names)``); each part sorted."""
    rest = sorted(names)
    if sum(sizes) != len(rest) or min(sizes, default=0) < 0:
        raise ValueError(f"part sizes {list(sizes)} do not split {len(rest)} classes")
    perm = np.random.RandomState(seed).permutation(len(rest))
    bounds = np.cumsum([0, *sizes])
    return [sorted(rest[i] for i in perm[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
