"""TFDS builders prepared from tiny on-disk fixtures (VOC tree, COCO json) and the synthetic set;
bad-data errors and the prepare / overwrite rules."""

from __future__ import annotations

import os
import subprocess
import sys

import data_fixtures as fx
import numpy as np
import pytest
from paths import REPO
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from panet_jax.data import builders  # noqa: E402
from panet_jax.data.builders import synthetic  # noqa: E402

tfds.display_progress_bar(False)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    tree = fx.write_voc_tree(str(root / "raw"), class_lists=True)
    builder = builders.prepare(
        "pascal_voc_aug", data_dir=str(root / "tfds"), manual_dir=tree.manual_dir
    )
    return tree, builder


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    tree = fx.write_coco_tree(str(root / "raw"))
    builder = builders.prepare("coco20i", data_dir=str(root / "tfds"), manual_dir=tree.manual_dir)
    return tree, builder


def _listing(path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs
    )


# ------------------------------------------------------------------------------------- VOC


def test_voc_examples_match_the_files(voc):
    tree, builder = voc
    assert builder.info.file_format.value == "array_record"
    src = builder.as_data_source("trainaug")
    assert len(src) == len(tree.trainaug) == 40
    assert len(builder.as_data_source("val")) == len(tree.val) == 20
    for i in (0, 1, 39):  # list order kept; odd images are 36x28
        ex, want = src[i], tree.trainaug[i]
        assert ex["id"].decode() == want.image_id
        assert ex["image"].shape == want.image.shape and ex["image"].dtype == np.uint8
        jpeg = os.path.join(tree.root, "JPEGImages", want.image_id + ".jpg")
        np.testing.assert_array_equal(ex["image"], np.asarray(Image.open(jpeg)))  # bytes kept
        np.testing.assert_array_equal(ex["mask"][..., 0], want.mask)
        assert ex["classes"].tolist() == sorted({i % 20 + 1, (i + 7) % 20 + 1})
        # object PNG: 255 boundary -> 0, ids kept
        np.testing.assert_array_equal(
            ex["instances"][..., 0], np.where(want.instances == 255, 0, want.instances)
        )
        assert ex["has_scribble"]
        np.testing.assert_array_equal(ex["scribble"][..., 0], want.scribble)


def test_voc_index_metadata(voc):
    tree, builder = voc
    entry = builder.info.metadata["splits"]["trainaug"]
    assert entry["ids"] == [im.image_id for im in tree.trainaug]
    # class 1 is in images 0, 13 (second class (13 + 7) % 20 + 1), 20 and 33; the fixture
    # writes PANet's class lists in reverse order and the builder keeps their order
    assert entry["class_order"]["1"] == [33, 20, 13, 0]
    assert entry["class_order_source"].startswith("ImageSets/Segmentation/trainaug")
    src = builder.as_data_source("val")
    assert [list(src[i]["classes"]) for i in range(len(src))] == builder.info.metadata["splits"][
        "val"
    ]["classes"]
    assert "class_order" not in builder.info.metadata["splits"]["val"]  # no val/class*.txt
    # The index equals the examples' own `id` / `classes` features, read back from the data.
    skip = {k: tfds.decode.SkipDecoding() for k in ("image", "mask", "instances", "scribble")}
    source = builder.as_data_source("val", decoders=skip)
    examples = [source[i] for i in range(len(source))]
    assert [ex["id"].decode() for ex in examples] == [im.image_id for im in tree.val]
    assert [[int(c) for c in ex["classes"]] for ex in examples] == builder.info.metadata["splits"][
        "val"
    ]["classes"]


def test_voc_without_optional_folders(tmp_path):
    tree = fx.write_voc_tree(
        str(tmp_path / "raw"), n_trainaug=3, n_val=1, objects=False, scribbles=False
    )
    builder = builders.prepare(
        "pascal_voc_aug", data_dir=str(tmp_path / "tfds"), manual_dir=tree.root
    )
    ex = builder.as_data_source("trainaug")[2]
    assert not ex["instances"].any()
    assert not ex["has_scribble"] and (ex["scribble"] == 255).all()


# ------------------------------------------------------------------------------------ COCO


def test_coco_masks_classes_and_overlap_rule(coco):
    tree, builder = coco
    src = builder.as_data_source("train")
    assert len(src) == 20
    for i, (stem, want) in enumerate(tree.expected["train"]):  # json order
        ex = src[i]
        assert ex["id"].decode() == stem
        # class index = position in getCatIds() + 1; crowd painted first, then by decreasing
        # area (small box 31 on top of box 30, box 41 on top of the crowd box 40)
        np.testing.assert_array_equal(ex["mask"][..., 0], want)
        assert ex["classes"].tolist() == sorted(set(np.unique(want).tolist()) - {0})
        assert ex["image"].shape == (24, 32, 3)
        assert ex["instances"].max() == (7 if i == 0 else 6)
    gray = src[1]["image"]  # grayscale JPEG -> RGB with equal channels
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert len(builder.as_data_source("val")) == 3


def test_coco_official_class_order(coco):
    tree, builder = coco
    from pycocotools.coco import COCO

    entry = builder.info.metadata["splits"]["train"]
    api = COCO(os.path.join(tree.manual_dir, "annotations", "instances_train2014.json"))
    position = {image_id: i for i, image_id in enumerate(api.getImgIds())}
    cat_ids = api.getCatIds()
    for k in (1, 20, 30, 50):
        want = [position[i] for i in api.getImgIds(catIds=cat_ids[k - 1])]
        assert entry["class_order"][str(k)] == want


# ------------------------------------------------------------------------------- synthetic


def test_synthetic_classes_and_determinism(tmp_path):
    a = builders.prepare("synthetic_fss", data_dir=str(tmp_path / "a"), config="tiny")
    b = builders.prepare("synthetic_fss", data_dir=str(tmp_path / "b"), config="tiny")
    src_a, src_b = a.as_data_source("train"), b.as_data_source("train")
    assert len(src_a) == 20 * 8 and len(a.as_data_source("test")) == 160
    for i in (0, 77, 159):  # same seed -> same examples
        for key in ("image", "mask", "instances"):
            np.testing.assert_array_equal(src_a[i][key], src_b[i][key])
    classes = a.info.metadata["splits"]["train"]["classes"]
    counts = np.bincount([c for cs in classes for c in cs], minlength=21)[1:]
    assert (counts >= 8).all()  # every one of the 20 classes in >= images_per_class images
    assert any(len(cs) == 2 for cs in classes)  # some images show two classes
    ex = src_a[5]
    m = ex["mask"][..., 0]
    assert set(np.unique(m)) <= {0, 255, *range(1, 21)} and (m == 255).any()  # ignore borders


def test_synthetic_classes_are_not_flat_colours():
    rng = np.random.default_rng(0)
    means = []
    for _ in range(6):
        out = synthetic.render(96, 4, rng, ignore_boundary=False)
        pix = out["image"][out["mask"] == 4].astype(float)
        assert pix.std(axis=0).mean() > 25  # textured (two colours), not one flat colour
        means.append(pix.mean(axis=0))
    assert np.std(means, axis=0).mean() > 10  # colours vary between instances
    shapes_textures = {synthetic.class_family(c) for c in range(1, 21)}
    assert len(shapes_textures) == 20
    for fold in range(4):  # each fold holds every shape once
        assert sorted(synthetic.class_family(5 * fold + s + 1)[0] for s in range(5)) == list(
            range(5)
        )


# --------------------------------------------------------------------- bad data / prepare


def _expect_failure(tmp_path, tree, exc, match):
    data_dir = tmp_path / "tfds"
    with pytest.raises(exc, match=match):
        builders.prepare("pascal_voc_aug", data_dir=str(data_dir), manual_dir=tree.manual_dir)
    builder = builders.get_builder("pascal_voc_aug", data_dir=str(data_dir))
    assert not builder.is_prepared()
    assert _listing(data_dir) == []  # nothing written (TFDS wrote into a temp dir, now gone)


def test_missing_manual_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        builders.prepare(
            "pascal_voc_aug", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "nowhere")
        )
    with pytest.raises(ValueError, match="manual_dir"):
        builders.prepare("coco20i", data_dir=str(tmp_path / "d"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="is empty"):
        builders.prepare(
            "pascal_voc_aug", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "empty")
        )
    (tmp_path / "empty" / "README").write_text("not a dataset")
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        builders.prepare(
            "pascal_voc_aug", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "empty")
        )
    with pytest.raises(FileNotFoundError, match="instances_"):
        builders.prepare(
            "coco20i", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "empty")
        )


def test_corrupt_image(tmp_path):
    tree = fx.write_voc_tree(str(tmp_path / "raw"), n_trainaug=4, n_val=1)
    path = os.path.join(tree.root, "JPEGImages", tree.trainaug[2].image_id + ".jpg")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    _expect_failure(tmp_path, tree, ValueError, f"corrupt or unreadable image {path}")


def test_mask_shape_differs_from_image(tmp_path):
    tree = fx.write_voc_tree(str(tmp_path / "raw"), n_trainaug=4, n_val=1)
    path = os.path.join(tree.root, "SegmentationClassAug", tree.val[0].image_id + ".png")
    fx.save_palette_png(np.zeros((5, 6), np.uint8), path)
    _expect_failure(tmp_path, tree, ValueError, f"{path} has shape 5x6")


def test_bad_mask_values(tmp_path):
    tree = fx.write_voc_tree(str(tmp_path / "raw"), n_trainaug=4, n_val=1)
    path = os.path.join(tree.root, "SegmentationClassAug", tree.trainaug[1].image_id + ".png")
    fx.save_palette_png(np.full(tree.trainaug[1].mask.shape, 21, np.uint8), path)
    _expect_failure(tmp_path, tree, ValueError, r"\[21\] outside 0..20")


def test_list_names_a_missing_file(tmp_path):
    tree = fx.write_voc_tree(str(tmp_path / "raw"), n_trainaug=4, n_val=1)
    list_path = os.path.join(tree.root, "ImageSets", "Segmentation", "trainaug.txt")
    with open(list_path, "a") as f:
        f.write("2099_000001\n")
    missing = os.path.join(tree.root, "JPEGImages", "2099_000001.jpg")
    _expect_failure(tmp_path, tree, FileNotFoundError, f"names '2099_000001' but {missing}")


def test_coco_missing_image(tmp_path):
    tree = fx.write_coco_tree(str(tmp_path / "raw"), n_train=2, n_val=1)
    stem = tree.expected["val"][0][0]
    os.remove(os.path.join(tree.manual_dir, "val2014", stem + ".jpg"))
    with pytest.raises(FileNotFoundError, match=f"val2014/{stem}.jpg is missing"):
        builders.prepare("coco20i", data_dir=str(tmp_path / "tfds"), manual_dir=tree.manual_dir)
    assert _listing(tmp_path / "tfds") == []


def test_never_overwrites_silently_and_keeps_old_data_on_failure(tmp_path):
    tree = fx.write_voc_tree(str(tmp_path / "raw"), n_trainaug=4, n_val=2)
    data_dir = str(tmp_path / "tfds")
    builder = builders.prepare("pascal_voc_aug", data_dir=data_dir, manual_dir=tree.manual_dir)
    before = {p: os.path.getmtime(os.path.join(data_dir, p)) for p in _listing(data_dir)}
    with pytest.raises(FileExistsError, match="overwrite"):
        builders.prepare("pascal_voc_aug", data_dir=data_dir, manual_dir=tree.manual_dir)
    # a broken source with overwrite=True: the old dataset stays as it was
    list_path = os.path.join(tree.root, "ImageSets", "Segmentation", "val.txt")
    with open(list_path, "a") as f:
        f.write("2099_000001\n")
    with pytest.raises(FileNotFoundError, match="2099_000001"):
        builders.prepare(
            "pascal_voc_aug", data_dir=data_dir, manual_dir=tree.manual_dir, overwrite=True
        )
    assert {p: os.path.getmtime(os.path.join(data_dir, p)) for p in _listing(data_dir)} == before
    assert len(builder.as_data_source("val")) == 2
    # a good source with overwrite=True replaces it
    with open(list_path) as f:
        lines = f.read().splitlines()[:-2]
    with open(list_path, "w") as f:
        f.writelines(line + "\n" for line in lines)
    builder = builders.prepare(
        "pascal_voc_aug", data_dir=data_dir, manual_dir=tree.manual_dir, overwrite=True
    )
    assert len(builder.as_data_source("val")) == 1
    assert not [p for p in os.listdir(data_dir) if p.startswith(".staging")]


def test_prepare_data_cli(tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "experiments", "prepare_data.py"),
           "--dataset=synthetic_fss", "--builder_config=tiny", f"--data_dir={tmp_path}",
           f"--hsnet_lists={tmp_path / 'lists'}"]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "train: 160 examples" in first.stdout
    with open(tmp_path / "lists" / "val" / "fold0.txt") as f:
        assert f.readline().strip() == "test_00000__01"
