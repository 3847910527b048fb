"""Class folds, HSNet fold lines and the official episode draw (pure Python, no TensorFlow)."""

from __future__ import annotations

import numpy as np
import official_reference
import pytest

from panet_jax.data import folds
from panet_jax.data.official_sampler import OfficialEpisodes


def test_pascal_folds():
    assert folds.test_classes("pascal5i", 0) == [1, 2, 3, 4, 5]
    assert folds.test_classes("pascal5i", 3) == [16, 17, 18, 19, 20]
    assert folds.train_classes("pascal5i", 1) == [1, 2, 3, 4, 5, *range(11, 21)]
    assert folds.VOC_CLASS_NAMES[folds.test_classes("pascal5i", 2)[-1] - 1] == "person"


def test_coco_folds_consecutive_and_interleaved():
    assert folds.test_classes("coco20i", 1) == list(range(21, 41))
    assert folds.test_classes("coco20i", 1, "interleaved") == [2, 6, 10, 14, 18, 22, 26, 30, 34,
                                                               38, 42, 46, 50, 54, 58, 62, 66,
                                                               70, 74, 78]  # fmt: skip
    for split in folds.COCO_SPLITS:
        tests = [set(folds.test_classes("coco20i", f, split)) for f in range(4)]
        assert set().union(*tests) == set(range(1, 81))  # the 4 folds partition the classes
        assert sum(map(len, tests)) == 80
        for f in range(4):
            train = folds.train_classes("coco20i", f, split)
            assert len(train) == 60 and not set(train) & tests[f]


def test_synthetic_folds():
    assert folds.test_classes("synthetic", 2) == [11, 12, 13, 14, 15]
    assert len(folds.train_classes("synthetic", 2)) == 15
    assert folds.all_classes("synthetic") == list(range(1, 21))


@pytest.mark.parametrize("fold", [-1, 4, 1.0, "0"])
def test_fold_out_of_range(fold):
    with pytest.raises(ValueError, match="fold"):
        folds.test_classes("pascal5i", fold)
    with pytest.raises(ValueError, match="fold"):
        folds.train_classes("coco20i", fold, "interleaved")


def test_bad_dataset_and_split():
    with pytest.raises(ValueError, match="dataset"):
        folds.test_classes("voc", 0)
    with pytest.raises(ValueError, match="coco_split"):
        folds.test_classes("coco20i", 0, "fwb")


def test_official_label_order_is_the_official_set_order():
    # util/utils.py CLASS_LABELS, then test.py's set difference, iterated as sets.
    all_ = set(range(1, 81))
    train0 = set(range(1, 81)) - set(range(1, 21))
    assert folds.official_label_order("coco20i", 0, train=True) == list(train0)
    assert folds.official_label_order("coco20i", 0, train=False) == list(all_ - train0)
    assert sorted(folds.official_label_order("pascal5i", 3, train=False)) == list(range(16, 21))


def test_hsnet_lines():
    ids = ["a", "b", "c"]
    classes = [[1, 7], [2], [3, 1]]
    lines = folds.hsnet_fold_lines(ids, classes, [1, 2, 3, 4, 5])
    assert lines == ["a__01", "b__02", "c__01", "c__03"]
    assert folds.parse_hsnet_line("2007_000033__01") == ("2007_000033", 1)
    with pytest.raises(ValueError, match="HSNet"):
        folds.parse_hsnet_line("2007_000033")


@pytest.mark.parametrize("ways,shots,queries", [(1, 1, 1), (1, 5, 1), (2, 1, 3), (3, 2, 2)])
def test_official_sampler_replays_the_official_draw(ways, shots, queries):
    labels = folds.official_label_order("pascal5i", 1, train=True)
    rng = np.random.default_rng(0)
    # Per-class image lists of different lengths, example indices unique per class.
    class_lists = [list(rng.permutation(200)[: 8 + i]) for i in range(len(labels))]
    seed = 1234 + 3
    want = official_reference.paired_dataset(
        [len(x) for x in class_lists], ways, shots, queries, 40, seed
    )
    got = OfficialEpisodes(labels, class_lists, ways, shots, queries, seed)
    for e in (5, 0, 39, 17):  # any access order
        class_of, support, query = want[e]
        assert got[e].class_ids == tuple(labels[d] for d in class_of)
        assert got[e].support == tuple(tuple(class_lists[d][p] for d, p in way) for way in support)
        assert got[e].query == tuple(class_lists[d][p] for d, p in query)
    assert len({got[e].query for e in range(40)}) > 1
