"""Scoring at each query's original label size (``config.eval.original_size``), on the host.

HSNet (``use_original_imgsize``, juhongm999/hsnet ``test.py``) and PFENet (``ori_resize``,
dvlab-research/PFENet ``test.py``) upsample the prediction to the raw label's size and score
against the raw, un-resized label; PANet scores at the input size against the nearest-resized
label. Raw sizes differ per image, so this is done outside the jitted batched step: the step
returns the low-resolution scores ``[B, Q, h, w, 1 + N]`` (a few KB per query) and, per
query, the host

1. upsamples them to the raw label's ``H0 x W0`` with the model's own bilinear rule
   (:func:`panet_jax.ops.bilinear_matrix`: PyTorch ``align_corners=False``, the mapping the
   model uses for its ``image_size`` logits), in float64, *directly* from feature resolution:
   the logits the model would output at ``H0 x W0``. (HSNet and PFENet instead resize their
   input-size logits a second time, with ``align_corners=True``; the two differ only in
   sub-pixel interpolation.)
2. takes the argmax and counts TP / FP / FN with the rule of :mod:`panet_jax.evaluation.metrics`
   (official and strict, and the all-background prediction), in int64.

Nothing here runs in the default (``original_size=False``) evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from panet_jax import ops
from panet_jax.data.spec import IGNORE_LABEL
from panet_jax.evaluation import metrics

CountsTriple = dict[str, metrics.Counts]  # 'official' | 'strict' | 'background'


def upsample_logits(scores: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """``[h, w, P]`` scores -> ``[H0, W0, P]`` float64 logits, PyTorch bilinear
    (``align_corners=False``) as :func:`panet_jax.ops.resize_bilinear`."""
    return _upsample(scores, out_hw).transpose(0, 2, 1)


def _upsample(scores: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """:func:`upsample_logits` as ``[H0, P, W0]`` (two BLAS matmuls, no copy at the end)."""
    h, w, p = scores.shape
    rh, rw = ops.bilinear_matrix(h, int(out_hw[0])), ops.bilinear_matrix(w, int(out_hw[1]))
    rows = rh @ np.asarray(scores, np.float64).reshape(h, w * p)  # [H0, w * P]
    rows = rows.reshape(-1, w, p).transpose(0, 2, 1).reshape(-1, w)  # [H0 * P, w]
    return (rows @ rw.T).reshape(-1, p, rw.shape[0])


def confusion(pred: np.ndarray, target: np.ndarray, n_labels: int) -> np.ndarray:
    """``[n_labels, n_labels]`` int64 pixel counts ``[target label, predicted label]`` over the
    non-ignored pixels (labels ``0..n_labels - 1``; target 255 left out)."""
    valid = target != IGNORE_LABEL
    pairs = target[valid].astype(np.int64) * n_labels + pred[valid]
    return np.bincount(pairs, minlength=n_labels * n_labels).reshape(n_labels, n_labels)


def confusion_counts(
    conf: np.ndarray, class_ids: np.ndarray, num_classes: int, *, strict: bool = False
) -> metrics.Counts:
    """The :mod:`panet_jax.evaluation.metrics` counts of one query from its :func:`confusion`
    matrix: label ``j``'s TP = ``conf[j, j]``, FP = column sum - TP, FN = row sum - TP, recorded for
    dataset class ``[0, *class_ids][j]`` if the target has ``j`` (always when ``strict``)."""
    tp = np.diag(conf)
    present = conf.sum(1) > 0
    keep = np.ones_like(present) if strict else present
    out = metrics.zeros(num_classes)
    labels = np.asarray([0, *np.asarray(class_ids).tolist()], np.int64)
    parts = (tp, conf.sum(0) - tp, conf.sum(1) - tp, present.astype(np.int64))
    for acc, x in zip(out, parts, strict=True):
        np.add.at(acc, labels, np.where(keep, x, 0))
    return out


def image_counts(
    pred: np.ndarray, target: np.ndarray, class_ids: np.ndarray, num_classes: int,
    *, strict: bool = False,
) -> metrics.Counts:  # fmt: skip
    """NumPy :func:`panet_jax.evaluation.metrics.image_counts` of one query (any ``[H, W]``): int64
    ``[num_classes + 1]`` counts, 255 pixels ignored, absent classes skipped unless
    ``strict``."""
    conf = confusion(pred, target, len(class_ids) + 1)
    return confusion_counts(conf, class_ids, num_classes, strict=strict)


def episode_counts(
    scores: np.ndarray, labels: Sequence[np.ndarray], class_ids: np.ndarray, num_classes: int
) -> CountsTriple:
    """Counts of one episode at original size: ``scores [Q, h, w, 1 + N]`` (low resolution),
    ``labels`` ``Q`` raw episode label maps ``[H0_q, W0_q]`` (0 bg, ``n + 1`` way ``n``, 255
    ignore), ``class_ids [N]``. Returns ``{'official', 'strict', 'background'}`` counts."""
    acc = {k: metrics.zeros(num_classes) for k in ("official", "strict", "background")}
    for q, target in enumerate(labels):
        target = np.asarray(target)
        pred = np.argmax(_upsample(scores[q], target.shape), axis=1)  # [H0, W0]
        conf = confusion(pred, target, scores.shape[-1])
        everything_bg = np.zeros_like(conf)
        everything_bg[:, 0] = conf.sum(1)  # the all-background prediction's confusion
        parts = {
            "official": confusion_counts(conf, class_ids, num_classes),
            "strict": confusion_counts(conf, class_ids, num_classes, strict=True),
            "background": confusion_counts(everything_bg, class_ids, num_classes),
        }
        acc = {k: metrics.add(acc[k], parts[k]) for k in acc}
    return acc


def batch_counts(
    scores: np.ndarray, valid: np.ndarray, episodes: Sequence[tuple[np.ndarray, list[np.ndarray]]],
    num_classes: int,
) -> CountsTriple:  # fmt: skip
    """Counts of a batch: ``scores [B, Q, h, w, 1 + N]``, ``valid [B]``, and per valid row its
    ``(class_ids [N], raw labels)`` (invalid rows, the padding, are skipped)."""
    acc = {k: metrics.zeros(num_classes) for k in ("official", "strict", "background")}
    rows = [b for b in range(len(valid)) if valid[b]]
    for b, (class_ids, labels) in zip(rows, episodes, strict=True):
        part = episode_counts(scores[b], labels, class_ids, num_classes)
        acc = {k: metrics.add(acc[k], part[k]) for k in acc}
    return acc


class Scorer:
    """Original-size counts of one evaluation run's batches on this process.

    Args:
      draw: episode number -> ``(class_ids [N], raw query labels)`` (e.g. from the sampler's
        draw and :class:`panet_jax.data.raw_labels.RawMasks`).
      first: the first episode number this process reads (its rows are consecutive).
      num_classes: the dataset's foreground classes.
    """

    def __init__(self, draw: Callable[[int], tuple[np.ndarray, list[np.ndarray]]], first: int,
                 num_classes: int) -> None:  # fmt: skip
        self.draw, self.first, self.num_classes = draw, int(first), int(num_classes)

    def __call__(self, scores: np.ndarray, valid: np.ndarray, row: int) -> CountsTriple:
        """Counts of the host batch whose first row is this process's row ``row``."""
        numbers = [self.first + row + b for b in range(len(valid)) if valid[b]]
        return batch_counts(scores, valid, [self.draw(e) for e in numbers], self.num_classes)
