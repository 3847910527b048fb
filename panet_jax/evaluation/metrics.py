"""Few-shot segmentation metrics: the official PANet mIoU / FB-IoU and a stricter variant.

Official rule (kaixin96/PANet ``util/metric.py`` ``Metric.record``). For every query, for ``j``
in ``[0, 1, ..., N]`` (episode label ``j`` stands for dataset class ``labels[j]`` with
``labels = [0] + class_ids``):

* predicted set ``= (pred == j) & (target != 255)``; target set ``= (target == j)``;
* TP / FP / FN of class ``labels[j]`` are recorded **only if the target contains ``j``**
  (kaixin96/PANet issue #30): a class absent from the ground truth contributes nothing, not even
  its false positives; 255 pixels are ignored;
* counts are summed over all episodes of a run (``nansum``), then
  ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` for each test class ``c``, and **mIoU is the mean of
  ``IoU_c`` over the fold's test classes** (background excluded). It is *not* a mean of
  per-episode IoUs.
* FB-IoU (the official ``get_mIoU_binary``): background (class 0) against all foreground classes
  pooled, each IoU from the accumulated counts, averaged: ``(IoU_bg + IoU_fg) / 2``.
* Over runs: mean and (population, ``ddof=0``, as ``np.std``) standard deviation.

Strict variant (``strict=True``): identical, except that TP / FP / FN are recorded for every
episode class whether or not it appears in the target. It therefore also charges the false
positives of a way whose class is absent from the query (possible in N-way episodes, where the
query need not show every way's class, and for the background of an all-foreground query).
TP and FN of an absent class are 0, so only FP differs. It never scores higher than the
official metric.

Per-episode counts are jit-able JAX functions returning :class:`Counts`, arrays indexed by
dataset class id (shape ``[num_classes + 1]``, index 0 = background); the host-side
:func:`add` sums them in int64 and the ``*_iou`` functions turn sums into scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from panet_jax.data.spec import IGNORE_LABEL

Array = jax.Array


class Counts(NamedTuple):
    """Pixel counts per dataset class id, each ``[..., num_classes + 1]`` (index 0 = bg).

    ``episodes`` counts the (query) images in which the class was present in the target.
    """

    tp: Array | np.ndarray
    fp: Array | np.ndarray
    fn: Array | np.ndarray
    episodes: Array | np.ndarray


def zeros(num_classes: int) -> Counts:
    """All-zero int64 host counts for class ids ``0..num_classes``."""
    z = np.zeros(num_classes + 1, np.int64)
    return Counts(z, z.copy(), z.copy(), z.copy())


# --------------------------------------------------------------------------------------------
# Per-episode counts (pure, jit-able).
# --------------------------------------------------------------------------------------------


def image_counts(
    pred: Array, target: Array, class_ids: Array, num_classes: int, *, strict: bool = False
) -> Counts:
    """Counts of one query image.

    Args:
      pred: ``[H, W]`` int predicted episode labels (0 = bg, ``n + 1`` = way ``n``).
      target: ``[H, W]`` int ground truth in the same label space, 255 = ignore.
      class_ids: ``[N]`` dataset class id of each way (1-based, distinct).
      num_classes: number of foreground classes of the dataset (output length - 1).
      strict: also record classes absent from the target (their false positives).
    Returns:
      :class:`Counts` of int32 ``[num_classes + 1]`` arrays.
    """
    n_ways = class_ids.shape[0]
    ways = jnp.arange(n_ways + 1, dtype=jnp.int32)[:, None, None]  # [1+N, 1, 1]
    valid = target != IGNORE_LABEL
    p = (pred[None] == ways) & valid[None]  # [1+N, H, W]
    t = target[None] == ways
    tp = jnp.sum(p & t, axis=(1, 2), dtype=jnp.int32)
    fp = jnp.sum(p & ~t, axis=(1, 2), dtype=jnp.int32)
    fn = jnp.sum(~p & t, axis=(1, 2), dtype=jnp.int32)
    present = jnp.any(t, axis=(1, 2))
    keep = jnp.ones_like(present) if strict else present
    labels = jnp.concatenate([jnp.zeros((1,), jnp.int32), class_ids.astype(jnp.int32)])

    def scatter(x: Array) -> Array:
        return jnp.zeros(num_classes + 1, jnp.int32).at[labels].add(jnp.where(keep, x, 0))

    return Counts(scatter(tp), scatter(fp), scatter(fn), scatter(present.astype(jnp.int32)))


def episode_counts(
    pred: Array, target: Array, class_ids: Array, num_classes: int, *, strict: bool = False
) -> Counts:
    """Counts of one episode, summed over its queries (each query is one official ``record``).

    Args:
      pred, target: ``[Q, H, W]``; class_ids: ``[N]``.
    Returns:
      int32 ``[num_classes + 1]`` counts.
    """
    per_query = jax.vmap(lambda p, t: image_counts(p, t, class_ids, num_classes, strict=strict))(
        pred, target
    )
    return jax.tree.map(lambda x: jnp.sum(x, axis=0), per_query)


def batch_counts(
    pred: Array,
    target: Array,
    class_ids: Array,
    num_classes: int,
    *,
    valid: Array | None = None,
    strict: bool = False,
) -> Counts:
    """Counts summed over a batch of episodes.

    Args:
      pred, target: ``[B, Q, H, W]``; class_ids: ``[B, N]``.
      valid: optional ``[B]`` bool; padding episodes (False) contribute nothing.
    Returns:
      int32 ``[num_classes + 1]`` counts.
    """
    per_episode = jax.vmap(lambda p, t, c: episode_counts(p, t, c, num_classes, strict=strict))(
        pred, target, class_ids
    )
    if valid is None:
        valid = jnp.ones(pred.shape[0], bool)
    return jax.tree.map(lambda x: jnp.sum(jnp.where(valid[:, None], x, 0), axis=0), per_episode)


# --------------------------------------------------------------------------------------------
# Host side: accumulation and scores.
# --------------------------------------------------------------------------------------------


def add(a: Counts, b: Counts) -> Counts:
    """Element-wise int64 sum of two :class:`Counts`."""
    return Counts(
        *(np.asarray(x, np.int64) + np.asarray(y, np.int64) for x, y in zip(a, b, strict=True))
    )


def _iou(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    tp, fp, fn = (np.asarray(x, np.float64) for x in (tp, fp, fn))
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def class_iou(counts: Counts, classes: Sequence[int]) -> np.ndarray:
    """``[len(classes)]`` float64 ``TP / (TP + FP + FN)`` per class; NaN for a class with no
    recorded pixels (the official ``0 / 0``)."""
    idx = np.asarray(classes, np.int64)
    return _iou(np.asarray(counts.tp)[idx], np.asarray(counts.fp)[idx], np.asarray(counts.fn)[idx])


def binary_iou(counts: Counts) -> tuple[float, float]:
    """``(IoU_bg, IoU_fg)``: class 0 against all foreground class ids pooled."""
    tp, fp, fn = (np.asarray(x, np.int64) for x in counts[:3])
    pooled = _iou(
        np.array([tp[0], tp[1:].sum()]),
        np.array([fp[0], fp[1:].sum()]),
        np.array([fn[0], fn[1:].sum()]),
    )
    return float(pooled[0]), float(pooled[1])


def fb_iou(counts: Counts) -> float:
    """FB-IoU (the official ``meanIoU_binary``): ``(IoU_bg + IoU_fg) / 2``."""
    return float(np.mean(binary_iou(counts)))


def mean_std(values: Sequence[float] | np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population standard deviation (``ddof=0``, the official ``np.std``) over runs."""
    v = np.asarray(values, np.float64)
    return v.mean(axis=axis), v.std(axis=axis)
