"""The ``fss1000`` TFDS builder prepared from a tiny FSS-1000 tree: class split sources, class
ids, HSNet's mask binarisation, example order, metadata and the bad-data errors."""

from __future__ import annotations

import logging
import os
import re
import shutil

import fss_fixtures as fx
import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from panet_jax.data import builders  # noqa: E402

tfds.display_progress_bar(False)

# Class ids by hand: trn sorted, then val sorted, then test sorted.
HSNET_NAMES = ["date", "fig", "kiwi", "lime", "pear", "plum",  # 1..6
               "apple", "cherry", "mango",  # 7..9
               "banana", "grape", "olive"]  # 10..12  # fmt: skip
# Per split: 5 classes x 10 + kiwi's 11; 3 x 10; 2 x 10 + olive's 9.
COUNTS = {"train": 61, "val": 30, "test": 29}


def _listing(path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs
    )


@pytest.fixture(scope="module")
def hsnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("fss")
    tree = fx.write_fss_tree(str(root / "raw"))
    builder = builders.prepare("fss1000", data_dir=str(root / "tfds"), manual_dir=tree.manual_dir)
    return tree, builder


def test_class_split_ids_and_metadata(hsnet):
    _, builder = hsnet
    meta = builder.info.metadata
    assert meta["class_names"] == HSNET_NAMES
    assert meta["num_classes"] == 12
    assert meta["mask_encoding"] == "binary"
    assert meta["split_classes"] == {"train": [1, 2, 3, 4, 5, 6], "val": [7, 8, 9],
                                     "test": [10, 11, 12]}  # fmt: skip
    assert meta["hsnet_comparable"] is True
    assert meta["class_split_kind"] == "hsnet_lists"
    assert meta["class_split_source"] == "HSNet split lists splits/fss/{trn,val,test}.txt"
    assert set(builder.info.splits) == {"train", "val", "test"}


def test_counts_order_and_classes(hsnet):
    _, builder = hsnet
    for split, n in COUNTS.items():
        assert len(builder.as_data_source(split)) == n
        assert builder.info.splits[split].num_examples == n
    entry = builder.info.metadata["splits"]["train"]
    ids = entry["ids"]
    assert ids[:10] == [f"date/{n}" for n in range(1, 11)]
    assert ids[20:31] == [f"kiwi/{n}" for n in range(1, 12)]  # 10, 11 after 9
    assert ids[-1] == "plum/10"
    assert entry["classes"][:10] == [[1]] * 10 and entry["classes"][20:31] == [[3]] * 11
    # HSNet's query order within a class: sorted(glob) is lexical
    assert entry["class_order"]["3"] == [20, 29, 30, 21, 22, 23, 24, 25, 26, 27, 28]
    test = builder.info.metadata["splits"]["test"]
    assert test["ids"][:10] == [f"banana/{n}" for n in range(1, 11)]
    assert test["ids"][20:] == [f"olive/{n}" for n in range(1, 10)]
    assert test["classes"][0] == [10] and test["classes"][-1] == [12]
    src = builder.as_data_source("val")
    ex = src[29]
    assert ex["id"].decode() == "mango/10" and ex["classes"].tolist() == [9]


def test_masks_are_binarised_at_128(hsnet):
    tree, builder = hsnet
    train = builder.as_data_source("train")
    block = np.repeat  # 6-px column blocks, rows 0-9; rows 10-19 are 129 | 126
    bottom = np.repeat([1, 0], 12)
    # kiwi/4 ('L' PNG): blocks 0, 127, 128, 255
    m = train[23]["mask"][..., 0]
    assert train[23]["id"].decode() == "kiwi/4"
    np.testing.assert_array_equal(m[:10], np.tile(block([0, 0, 1, 1], 6), (10, 1)))
    np.testing.assert_array_equal(m[10:], np.tile(bottom, (10, 1)))
    # kiwi/1 (RGB PNG): blocks 127, 128, 255, 0
    m = train[20]["mask"][..., 0]
    np.testing.assert_array_equal(m[:10], np.tile(block([0, 1, 1, 0], 6), (10, 1)))
    # apple/2 (palette PNG): 128, 255, 0, 127; olive/3 (RGBA PNG): 255, 0, 127, 128
    m = builder.as_data_source("val")[1]["mask"][..., 0]
    np.testing.assert_array_equal(m[:10], np.tile(block([1, 1, 0, 0], 6), (10, 1)))
    ex = builder.as_data_source("test")[22]
    assert ex["id"].decode() == "olive/3"
    np.testing.assert_array_equal(ex["mask"][:10, :, 0], np.tile(block([1, 0, 0, 1], 6), (10, 1)))
    np.testing.assert_array_equal(ex["mask"][10:, :, 0], np.tile(bottom, (10, 1)))
    for split in ("train", "test"):  # every mask, against the written grey values
        src = builder.as_data_source(split)
        for i in range(0, len(src), 7):
            ex = src[i]
            want = (tree.raw_masks[ex["id"].decode()] >= 128).astype(np.uint8)
            np.testing.assert_array_equal(ex["mask"][..., 0], want)
            assert not ex["instances"].any() and (ex["scribble"] == 255).all()
            assert not ex["has_scribble"]


def test_images(hsnet):
    tree, builder = hsnet
    train = builder.as_data_source("train")
    ex = train[0]
    assert ex["image"].shape == (*fx.HW, 3) and ex["image"].dtype == np.uint8
    jpg = os.path.join(tree.root, "date", "1.jpg")
    np.testing.assert_array_equal(ex["image"], np.asarray(Image.open(jpg)))  # bytes kept
    png_named_jpg = train[2]  # date/3.jpg holds PNG bytes: re-encoded as JPEG
    assert png_named_jpg["id"].decode() == "date/3"
    original = np.asarray(Image.open(os.path.join(tree.root, "date", "3.jpg")), np.float32)
    assert png_named_jpg["image"].shape == original.shape
    assert np.abs(png_named_jpg["image"] - original).mean() < 3


def test_flat_layout_fss_splits_and_count_warning(tmp_path, caplog):
    tree = fx.write_fss_tree(str(tmp_path / "FSS-1000"), flat=True, split_dir="fss_splits")
    with open(os.path.join(tree.manual_dir, "fss_test_set.txt"), "w") as f:
        f.write("banana\ngrape\nfig")  # differs from test.txt: the lists win, with a warning
    with caplog.at_level(logging.INFO):
        builder = builders.prepare(
            "fss1000", data_dir=str(tmp_path / "tfds"), manual_dir=tree.manual_dir
        )
    assert builder.info.metadata["class_names"] == HSNET_NAMES
    assert {s: len(builder.as_data_source(s)) for s in COUNTS} == COUNTS
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("6/3/3" in w and "520/240/240" in w for w in warnings)
    assert any("kiwi" in w and "olive" in w for w in warnings)  # not 10 pairs
    assert any("fss_test_set.txt name different test classes" in w for w in warnings)
    assert builder.info.metadata["class_split_source"].endswith(" fss_splits/{trn,val,test}.txt")


def test_fallback_split_from_official_test_list(tmp_path, caplog):
    tree = fx.write_fss_tree(str(tmp_path / "raw"), lists="official")
    metas = []
    for k in range(2):
        with caplog.at_level(logging.WARNING):
            builder = builders.prepare(
                "fss1000", data_dir=str(tmp_path / f"tfds{k}"), manual_dir=tree.manual_dir
            )
        metas.append(dict(builder.info.metadata))
    assert metas[0] == metas[1]  # deterministic
    meta = metas[0]
    # rest sorted: apple cherry date fig kiwi lime mango pear plum; RandomState(0).permutation(9)
    # = [7 2 1 4 8 6 | 3 0 5] -> train {pear date cherry kiwi plum mango}, val {fig apple lime}
    assert meta["class_names"] == ["cherry", "date", "kiwi", "mango", "pear", "plum",
                                   "apple", "fig", "lime", "banana", "grape", "olive"]  # fmt: skip
    assert meta["hsnet_comparable"] is False
    assert meta["class_split_kind"] == "fss_test_set_seeded"
    assert "NOT HSNet's split" in meta["class_split_source"]
    assert {s: len(builder.as_data_source(s)) for s in COUNTS} == COUNTS  # kiwi still in train
    loud = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("NOT HSNet's class split" in w for w in loud) == 2


def _shipped(name: str) -> list[str]:
    path = os.path.join(os.path.dirname(builders.__file__), "..", "splits", "fss1000", name)
    with open(path, newline="") as f:
        return [line.strip() for line in f if line.strip()]


def test_full_dataset_uses_hsnets_shipped_split(tmp_path, caplog):
    from panet_jax.data.builders import fss1000

    shipped = {s: _shipped(f) for s, f in (("train", "trn.txt"), ("val", "val.txt"),
                                            ("test", "test.txt"))}  # fmt: skip
    assert {s: len(v) for s, v in shipped.items()} == {"train": 520, "val": 240, "test": 240}
    assert len({n for v in shipped.values() for n in v}) == 1000  # disjoint
    assert shipped["test"][:3] == ["bus", "hotel_slipper", "burj_al"]  # HSNet's order
    root = tmp_path / "FSS-1000"
    for name in (n for v in shipped.values() for n in v):
        (root / name).mkdir(parents=True)
    split = fss1000.class_split(str(root), str(tmp_path))
    assert split.source == fss1000.SOURCE_HSNET and "shipped with panet_jax" in split.description
    assert split.classes == {s: sorted(v) for s, v in shipped.items()}
    # One class folder short: the shipped lists no longer apply, and (b) / (c) decide.
    (root / shipped["val"][7]).rmdir()
    with pytest.raises(FileNotFoundError, match="no FSS-1000 class split found"):
        fss1000.class_split(str(root), str(tmp_path))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return fx.write_fss_tree(str(tmp_path_factory.mktemp("pristine") / "raw"))


def _broken_copy(tmp_path, pristine) -> tuple[str, str]:
    manual_dir = str(tmp_path / "raw")
    shutil.copytree(pristine.manual_dir, manual_dir)
    return manual_dir, os.path.join(manual_dir, "FSS-1000")


def _append(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def _break_missing_class(manual_dir: str, root: str) -> tuple[type, list[str]]:
    lst = os.path.join(manual_dir, "splits", "fss", "val.txt")
    _append(lst, "quince")
    return FileNotFoundError, [f"{lst} names class 'quince' but its folder"]


def _break_overlap(manual_dir: str, root: str) -> tuple[type, list[str]]:
    _append(os.path.join(manual_dir, "splits", "fss", "test.txt"), "fig")
    folder = os.path.join(manual_dir, "splits", "fss")
    return ValueError, [f"{folder}/trn.txt and {folder}/test.txt overlap", "'fig'"]


def _break_duplicate(manual_dir: str, root: str) -> tuple[type, list[str]]:
    lst = os.path.join(manual_dir, "splits", "fss", "trn.txt")
    _append(lst, "kiwi")
    return ValueError, [f"{lst} names some classes more than once", "'kiwi'"]


def _break_missing_png(manual_dir: str, root: str) -> tuple[type, list[str]]:
    os.remove(os.path.join(root, "lime", "5.png"))
    return FileNotFoundError, [f"{root}/lime/5.jpg has no mask: {root}/lime/5.png is missing"]


def _break_size(manual_dir: str, root: str) -> tuple[type, list[str]]:
    png = os.path.join(root, "pear", "2.png")
    fx.save_mask(np.zeros((5, 6), np.uint8), png, "L")
    return ValueError, [f"{png} has shape 5x6", f"its image {root}/pear/2.jpg is 20x24"]


def _break_no_split(manual_dir: str, root: str) -> tuple[type, list[str]]:
    shutil.rmtree(os.path.join(manual_dir, "splits"))
    return FileNotFoundError, [
        f"{manual_dir}/splits/fss or {manual_dir}/fss_splits",
        f"{manual_dir}/fss_test_set.txt",
    ]


def _break_official_list(manual_dir: str, root: str) -> tuple[type, list[str]]:
    shutil.rmtree(os.path.join(manual_dir, "splits"))
    lst = os.path.join(manual_dir, "fss_test_set.txt")
    _append(lst, "banana\nquince")
    return FileNotFoundError, [f"{lst} names class 'quince'"]


def _break_no_tree(manual_dir: str, root: str) -> tuple[type, list[str]]:
    shutil.rmtree(root)
    return FileNotFoundError, [f"no FSS-1000 folder under {manual_dir}"]


@pytest.mark.parametrize(
    "breaker",
    [_break_missing_class, _break_overlap, _break_duplicate, _break_missing_png, _break_size,
     _break_no_split, _break_official_list, _break_no_tree],
    ids=lambda f: f.__name__[len("_break_") :],
)  # fmt: skip
def test_bad_data_errors_name_the_file(tmp_path, pristine, breaker):
    manual_dir, root = _broken_copy(tmp_path, pristine)
    exc, fragments = breaker(manual_dir, root)
    data_dir = tmp_path / "tfds"
    with pytest.raises(exc, match="(?s)" + ".*".join(map(re.escape, fragments))):
        builders.prepare("fss1000", data_dir=str(data_dir), manual_dir=manual_dir)
    assert not builders.get_builder("fss1000", data_dir=str(data_dir)).is_prepared()
    assert _listing(data_dir) == []
