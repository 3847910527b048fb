"""The official PANet metric (and the strict variant) on hand-computed cases."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from panet_jax.evaluation import metrics

NUM_CLASSES = 5


def counts_of(pred, target, class_ids, strict=False) -> metrics.Counts:
    """Host int64 counts of one query image."""
    c = metrics.image_counts(
        np.asarray(pred, np.int32),
        np.asarray(target, np.int32),
        np.asarray(class_ids, np.int32),
        NUM_CLASSES,
        strict=strict,
    )
    return metrics.add(metrics.zeros(NUM_CLASSES), c)


def test_ignore_pixels_one_way():
    target = [[0, 0, 1, 1], [0, 255, 1, 1], [0, 0, 0, 255]]
    pred = [[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 1, 1]]
    c = counts_of(pred, target, [3])
    # bg: predicted {(0,0),(0,3),(2,0),(2,1)}, target {(0,0),(0,1),(1,0),(2,0),(2,1),(2,2)}
    # class 3: predicted {(0,1),(0,2),(1,0),(1,2),(1,3),(2,2)} (255 pixels dropped),
    # target {(0,2),(0,3),(1,2),(1,3)}
    np.testing.assert_array_equal(c.tp, [3, 0, 0, 3, 0, 0])
    np.testing.assert_array_equal(c.fp, [1, 0, 0, 3, 0, 0])
    np.testing.assert_array_equal(c.fn, [3, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(c.episodes, [1, 0, 0, 1, 0, 0])
    assert metrics.class_iou(c, [3]) == pytest.approx([3 / 7])
    assert metrics.binary_iou(c) == pytest.approx((3 / 7, 3 / 7))
    assert metrics.fb_iou(c) == pytest.approx(3 / 7)


def test_absent_class_official_vs_strict_two_way():
    # Way 0 = class 2 (label 1) is in the query, way 1 = class 4 (label 2) is not.
    target = [[0, 0, 1], [0, 1, 1]]
    pred = [[2, 0, 1], [0, 2, 2]]
    off = counts_of(pred, target, [2, 4])
    strict = counts_of(pred, target, [2, 4], strict=True)
    # bg: TP {(0,1),(1,0)}, FN {(0,0)}; class 2: TP {(0,2)}, FN {(1,1),(1,2)};
    # class 4 predicted at {(0,0),(1,1),(1,2)}: official records nothing, strict 3 FP.
    np.testing.assert_array_equal(off.tp, [2, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(off.fp, [0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(off.fn, [1, 0, 2, 0, 0, 0])
    np.testing.assert_array_equal(strict.tp, off.tp)
    np.testing.assert_array_equal(strict.fn, off.fn)
    np.testing.assert_array_equal(strict.fp, [0, 0, 0, 0, 3, 0])
    np.testing.assert_array_equal(off.episodes, [1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(strict.episodes, off.episodes)

    iou_off = metrics.class_iou(off, [2, 4])
    assert iou_off[0] == pytest.approx(1 / 3) and np.isnan(iou_off[1])  # official 0/0
    assert metrics.class_iou(strict, [2, 4]) == pytest.approx([1 / 3, 0.0])
    # FB-IoU: bg 2/3; pooled fg official TP 1, FN 2 -> 1/3; strict adds 3 FP -> 1/6.
    assert metrics.fb_iou(off) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert metrics.fb_iou(strict) == pytest.approx((2 / 3 + 1 / 6) / 2)


def test_queries_are_separate_records():
    # One episode, way class 1, two queries: only the first shows the class; the second's
    # false positives are not recorded by the official metric.
    target = np.array([[[1, 0, 0]], [[0, 0, 0]]])
    pred = np.array([[[1, 1, 0]], [[1, 1, 0]]])
    c = metrics.episode_counts(pred, target, np.array([1]), NUM_CLASSES)
    np.testing.assert_array_equal(c.tp, [1 + 1, 1, 0, 0, 0, 0])  # bg: q0 TP 1, q1 TP 1
    np.testing.assert_array_equal(c.fp, [0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(c.fn, [1 + 2, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(c.episodes, [2, 1, 0, 0, 0, 0])
    s = metrics.episode_counts(pred, target, np.array([1]), NUM_CLASSES, strict=True)
    np.testing.assert_array_equal(s.fp, [0, 1 + 2, 0, 0, 0, 0])


def test_accumulation_over_episodes_not_mean_of_episode_ious():
    # A (class 1): TP 2, FP 0, FN 2 -> IoU 1/2; B (class 1): TP 1, FP 2, FN 0 -> IoU 1/3;
    # C (class 2): TP 1, FP 0, FN 1.
    episodes = [
        ([1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], 1),
        ([1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0], 1),
        ([0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 0, 1], 2),
    ]
    total = metrics.zeros(NUM_CLASSES)
    for target, pred, cls in episodes:
        total = metrics.add(total, counts_of([pred], [target], [cls]))
    assert total.tp[1] == 3 and total.fp[1] == 2 and total.fn[1] == 2
    assert metrics.class_iou(total, [1, 2]) == pytest.approx([3 / 7, 1 / 2])  # not (1/2+1/3)/2
    # bg: A TP 4 FP 2, B TP 5 FN 2, C TP 6 FN 0 + FP 1 -> TP 15, FP 3, FN 2.
    np.testing.assert_array_equal([total.tp[0], total.fp[0], total.fn[0]], [15, 3, 2])
    # pooled fg: TP 3 + 1, FP 2, FN 2 + 1.
    assert metrics.fb_iou(total) == pytest.approx((15 / 20 + 4 / 9) / 2)


def test_batch_counts_jit_and_padding_mask():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, (3, 2, 6, 7)).astype(np.int32)
    target = rng.integers(0, 3, (3, 2, 6, 7)).astype(np.int32)
    target[rng.random(target.shape) < 0.1] = 255
    ids = np.array([[1, 2], [3, 5], [4, 1]], np.int32)
    fn = jax.jit(functools.partial(metrics.batch_counts, num_classes=NUM_CLASSES))
    full = fn(pred, target, ids)
    masked = fn(pred, target, ids, valid=np.array([True, False, True]))
    expected = metrics.add(
        metrics.episode_counts(pred[0], target[0], ids[0], NUM_CLASSES),
        metrics.episode_counts(pred[2], target[2], ids[2], NUM_CLASSES),
    )
    for a, b in zip(masked, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    total = sum(
        np.asarray(metrics.episode_counts(pred[i], target[i], ids[i], NUM_CLASSES).tp)
        for i in range(3)
    )
    np.testing.assert_array_equal(full.tp, total)


def _official_record(pred, target, class_ids, num_classes, strict=False):
    """A line-by-line port of kaixin96/PANet ``util/metric.py`` ``Metric.record`` (sets)."""
    tp, fp, fn = (np.full(num_classes + 1, np.nan) for _ in range(3))
    for j, label in enumerate([0, *class_ids]):
        idx = np.where(np.logical_and(pred == j, target != 255))
        pred_j = set(zip(idx[0].tolist(), idx[1].tolist(), strict=True))
        idx = np.where(target == j)
        target_j = set(zip(idx[0].tolist(), idx[1].tolist(), strict=True))
        if target_j or strict:
            tp[label] = len(pred_j & target_j)
            fp[label] = len(pred_j - target_j)
            fn[label] = len(target_j - pred_j)
    return tp, fp, fn


@pytest.mark.parametrize("strict", [False, True])
def test_matches_official_record_on_random_episodes(strict):
    rng = np.random.default_rng(1)
    sums = [np.zeros(NUM_CLASSES + 1) for _ in range(3)]
    total = metrics.zeros(NUM_CLASSES)
    for _ in range(20):
        n_ways = int(rng.integers(1, 3))
        ids = rng.choice(np.arange(1, NUM_CLASSES + 1), n_ways, replace=False)
        target = rng.integers(0, n_ways + 1, (9, 8))
        if rng.random() < 0.5:
            target[target == n_ways] = 0  # a way absent from the query
        target[rng.random(target.shape) < 0.15] = 255
        pred = rng.integers(0, n_ways + 1, (9, 8))
        for s, x in zip(sums, _official_record(pred, target, list(ids), NUM_CLASSES, strict),
                        strict=True):  # fmt: skip
            s += np.nan_to_num(x)  # the official nansum
        total = metrics.add(total, counts_of(pred, target, ids, strict=strict))
    for s, x in zip(sums, total[:3], strict=True):
        np.testing.assert_array_equal(s, x)


def test_mean_std_over_runs():
    mean, std = metrics.mean_std([0.4, 0.5, 0.6])
    assert mean == pytest.approx(0.5)
    assert std == pytest.approx(np.sqrt(0.02 / 3))  # population std (ddof=0), as np.std
    per_class_mean, per_class_std = metrics.mean_std([[0.2, 0.4], [0.4, 0.4]])
    np.testing.assert_allclose(per_class_mean, [0.3, 0.4])
    np.testing.assert_allclose(per_class_std, [0.1, 0.0])
