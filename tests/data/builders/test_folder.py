"""The ``folder`` builder on small user folders in both layouts: what is prepared (class ids,
masks, splits, folds, the recorded split), which classes the episodes use, a short training
and an evaluation, and one test per careless input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import folder_fixtures as fx
import numpy as np
import pytest
from paths import EXPERIMENTS, REPO
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from panet_jax.data import builders, folder_classes, pipeline  # noqa: E402
from panet_jax.data.builders import folder  # noqa: E402

tfds.display_progress_bar(False)
STREET_IDS = {v: i + 1 for i, v in enumerate(sorted(fx.LABEL_VALUES))}  # 3 -> 1, ..., 13 -> 6


def data_dir_of(builder) -> str:
    """The data_dir of a prepared folder dataset (``<data_dir>/folder/<name>/<version>``)."""
    return str(Path(builder.data_path).parents[2])


def prepare(manual_dir, data_dir, name=None, overwrite=False, **options):
    config = folder.FolderConfig(name=name or folder.dataset_name(manual_dir), **options)
    return builders.prepare("folder", data_dir=str(data_dir), manual_dir=str(manual_dir),
                            config=config, overwrite=overwrite)  # fmt: skip


def files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path)
                  for d, _, fs in os.walk(path) for f in fs)  # fmt: skip


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pets")
    fx.write_class_folders(str(root / "pets"))
    return prepare(root / "pets", root / "tfds")


@pytest.fixture(scope="module")
def street(tmp_path_factory):
    root = tmp_path_factory.mktemp("street")
    fx.write_label_maps(str(root / "street"))
    return prepare(root / "street", root / "tfds", folds=2)


# ------------------------------------------------------------------------------ what is prepared


def test_class_folders_ids_masks_and_list_split(pets):
    meta = pets.info.metadata
    assert meta["class_names"] == fx.CLASSES and meta["num_classes"] == 5
    assert meta["layout"] == "class_folders" and meta["mask_encoding"] == "binary"
    assert meta["split_classes"] == {"train": [1, 2, 3], "test": [4, 5]}  # no val.txt
    assert meta["class_split_kind"] == "lists" and meta["skipped_files"] == []
    assert set(pets.info.splits) == {"train", "test"}
    for split, names in (("train", fx.TRAIN), ("test", fx.TEST)):
        source = pets.as_data_source(split)
        assert len(source) == len(names) * fx.PER_CLASS
        for ex in source:
            name, stem = ex["id"].decode().split("/")
            i, k = fx.CLASSES.index(name), int(stem[3:])
            t, lft, b, r = fx.box(i, k)
            want = np.zeros(fx.HW, np.uint8)
            want[t:b, lft:r] = 1  # 255, 1 (dog) and palette (fox) masks alike
            np.testing.assert_array_equal(ex["mask"][..., 0], want)
            assert ex["classes"].tolist() == [i + 1]
            jpg = Image.open(os.path.join(meta["source"], name, f"{stem}.jpg"))
            np.testing.assert_array_equal(ex["image"], np.asarray(jpg))  # JPEG bytes kept


def test_label_maps_ids_masks_and_folds(street):
    meta = street.info.metadata
    assert meta["class_names"] == ["road", "tree", "car", "sky", "wall", "sign"]  # value order
    assert meta["layout"] == "label_maps" and meta["mask_encoding"] == "labels"
    assert meta["folds"] == [[1, 2, 3], [4, 5, 6]] and "split_classes" not in meta
    assert list(street.info.splits) == [folder_classes.ALL_SPLIT]
    source = street.as_data_source(folder_classes.ALL_SPLIT)
    assert [ex["id"].decode() for ex in source] == list(fx.LABEL_IMAGES)
    for ex in source:
        raw = fx.label_map(ex["id"].decode())
        want = np.vectorize(lambda v: STREET_IDS.get(v, v))(raw)  # 0 and 255 kept
        np.testing.assert_array_equal(ex["mask"][..., 0], want)
        shown = sorted(STREET_IDS[v] for v in fx.LABEL_IMAGES[ex["id"].decode()])
        assert ex["classes"].tolist() == shown


def test_seeded_split_is_recorded_and_deterministic(tmp_path):
    fx.write_class_folders(str(tmp_path / "pets"), lists=False)
    metas = [dict(prepare(tmp_path / "pets", tmp_path / f"tfds{k}", split_seed=7).info.metadata)
             for k in range(2)]  # fmt: skip
    assert metas[0]["split_classes"] == metas[1]["split_classes"]
    # 5 classes: 3 train, 1 val, 1 test, cut from RandomState(7).permutation of sorted names
    perm = np.random.RandomState(7).permutation(5)
    cut = [sorted(perm[:3] + 1), [perm[3] + 1], [perm[4] + 1]]
    assert metas[0]["split_classes"] == dict(zip(("train", "val", "test"), cut, strict=True))
    assert metas[0]["class_split_kind"] == "seeded" and metas[0]["split_seed"] == 7
    assert "RandomState(7)" in metas[0]["class_split_source"]


def test_parallel_masks_tree_with_png_images(tmp_path):
    fx.write_class_folders(str(tmp_path / "zoo"), parallel=True)
    builder = prepare(tmp_path / "zoo", tmp_path / "tfds", workers=1)
    assert builder.info.metadata["class_names"] == fx.CLASSES
    assert len(builder.as_data_source("train")) == 12
    ex = builder.as_data_source("test")[0]
    assert ex["id"].decode() == "owl/img0" and ex["mask"].sum() == 14 * 18


def test_names_progress_and_two_folders_of_one_name(tmp_path, capsys):
    assert folder.dataset_name("/data/My Pets/") == "my_pets"
    fx.write_class_folders(str(tmp_path / "a" / "pets"))
    fx.write_class_folders(str(tmp_path / "b" / "pets"))
    prepare(tmp_path / "a" / "pets", tmp_path / "tfds")
    err = capsys.readouterr().err
    assert re.search(r"checking: 100%.*20/20.*img/s", err)  # count, rate
    assert re.search(r"writing train: .*12/12 \[\d\d:\d\d<\d\d:\d\d", err)  # elapsed<ETA
    with pytest.raises(FileExistsError, match=f"from another folder, {tmp_path}/a/pets.*"
                                              "--builder_config=<another name>"):  # fmt: skip
        prepare(tmp_path / "b" / "pets", tmp_path / "tfds")
    other = prepare(tmp_path / "b" / "pets", tmp_path / "tfds", name="pets_b")
    assert other.info.metadata["source"] == str(tmp_path / "b" / "pets")
    assert builders.load_prepared("folder", data_dir=tmp_path / "tfds", config="pets")


# ------------------------------------------------------------------------------ episodes


def _episode_config(**kw):
    kw = {"dataset": "folder", "n_shots": 1, "image_size": (33, 33), **kw}
    return pipeline.EpisodeConfig(**kw)


def _check_draws(sampler, builder, pool: list[int]) -> None:
    """Every episode's classes are in ``pool`` and every image shows its way's class."""
    assert sorted(sampler.pool) == pool
    index = sampler.index
    seen = set()
    for step in range(40):
        d = sampler.draw(step, 0)
        n, k = sampler.cfg.n_ways, sampler.cfg.n_shots
        for w, c in enumerate(d.class_ids.tolist()):
            assert c in pool
            seen.add(c)
            for i in d.images[w * k : (w + 1) * k]:
                assert c in index.classes[int(i)]
        for i in d.images[n * k :]:  # each query shows one of the episode's classes
            assert set(index.classes[int(i)]) & set(d.class_ids.tolist())
    assert seen == set(pool)


def test_episodes_use_only_the_split_or_fold_classes(pets, street):
    data_dir = data_dir_of(pets)
    for train, pool in ((True, [1, 2, 3]), (False, [4, 5])):
        cfg = _episode_config(train=train, builder_config="pets")
        sampler, builder = pipeline.make_sampler(cfg, data_dir=data_dir, seed=0, batch_size=1)
        _check_draws(sampler, builder, pool)
        names = {builder.info.metadata["class_names"][c - 1] for c in pool}
        assert {i.split("/")[0] for i in sampler.index.ids} == names  # the split's images
    data_dir = data_dir_of(street)
    for fold, train, pool in ((0, True, [4, 5, 6]), (0, False, [1, 2, 3]),
                              (1, True, [1, 2, 3]), (1, False, [4, 5, 6])):  # fmt: skip
        cfg = _episode_config(train=train, fold=fold, builder_config="street", n_ways=2)
        sampler, builder = pipeline.make_sampler(cfg, data_dir=data_dir, seed=3, batch_size=1)
        assert sampler.cfg.resolved_split == folder_classes.ALL_SPLIT
        _check_draws(sampler, builder, pool)
    with pytest.raises(ValueError, match="prepared with 2 folds"):
        pipeline.make_sampler(_episode_config(fold=2, builder_config="street"),
                              data_dir=data_dir, seed=0, batch_size=1)  # fmt: skip
    with pytest.raises(ValueError, match="only fold 0 exists; prepare it with --folds=N"):
        pipeline.make_sampler(_episode_config(fold=1, builder_config="pets"),
                              data_dir=data_dir_of(pets),
                              seed=0, batch_size=1)  # fmt: skip


# ------------------------------------------------------------------------------ train, evaluate


def test_train_then_evaluate_names_classes_and_split(tmp_path, street):
    """A short training on a seeded class split, its evaluation (report: class names, the
    recorded split; episodes: test classes only), and evaluations of the label-map folds
    under the other protocol options."""
    import jax

    sys.path.insert(0, str(REPO))
    from configs import folder as folder_config
    from panet_jax.evaluation import evaluator as evaluation
    from panet_jax.train import trainer

    fx.write_class_folders(str(tmp_path / "My Pets"), lists=False)
    prepare(tmp_path / "My Pets", tmp_path / "tfds", split_seed=3)
    config = folder_config.get_config(f"path={tmp_path}/My Pets,runlocal")
    config.data.data_dir = str(tmp_path / "tfds")
    assert config.data.builder_config == "my_pets"
    config.train.steps, config.train.image_every = 2, 0  # (test time)
    state, result = trainer.train(config, str(tmp_path / "run"))
    assert result["step"] == 2 and np.isfinite(result["loss"])
    out = evaluation.evaluate(config, state.variables(), workdir=tmp_path / "run", progress=False)
    meta = builders.load_prepared("folder", data_dir=tmp_path / "tfds", config="my_pets")
    meta = meta.info.metadata
    test_ids = meta["split_classes"]["test"]
    names = {c: meta["class_names"][c - 1] for c in test_ids}
    assert {int(c): v["name"] for c, v in out["per_class"].items()} == names
    report = Path(out["output_dir"], "results.md").read_text()
    assert "Dataset `my_pets`; class split: SEEDED split" in report and "RandomState(3)" in report
    for c, name in names.items():
        assert f"| {c} | {name} |" in report
    for line in Path(out["output_dir"], "episodes.jsonl").read_text().splitlines():
        e = json.loads(line)
        assert set(e["class_ids"]) <= set(test_ids)
        shown = {names[c] for c in e["class_ids"]}
        assert {i.split("/")[0] for ids in e["support_ids"] for i in ids} <= shown
        assert {i.split("/")[0] for i in e["query_ids"]} <= shown
    # the label-map folds, fold 1, HSNet's list walk (every test pair once), scribble supports
    config.data.builder_config = "street"
    config.data.data_dir = data_dir_of(street)
    config.data.fold = 1
    config.eval.protocol, config.eval.episodes = "hsnet", 0
    config.eval.support_annotation = "scribble"
    out = evaluation.evaluate(config, jax.device_get(state.variables()), progress=False)
    assert sorted(int(c) for c in out["per_class"]) == [4, 5, 6]
    pairs = sum(len(set(v) & {9, 11, 13}) for v in fx.LABEL_IMAGES.values())
    assert out["settings"]["episodes"] == pairs and out["settings"]["split"] == "images"
    assert [v["name"] for v in out["per_class"].values()] == ["sky", "wall", "sign"]
    # fold 0: box supports, scored at the raw label size, small objects filtered
    config.data.fold, config.eval.protocol, config.eval.episodes = 0, "panet", 4
    config.eval.support_annotation, config.eval.original_size = "bbox", True
    config.eval.min_object_pixels = 100
    out = evaluation.evaluate(config, jax.device_get(state.variables()), progress=False)
    assert sorted(int(c) for c in out["per_class"]) == [1, 2, 3]
    assert out["settings"]["original_size"] and np.isfinite(out["miou_mean"])


# ------------------------------------------------------------------------------ careless input


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    return fx.write_class_folders(str(root / "pets"), lists=False), fx.write_label_maps(
        str(root / "street")
    )


def _no_mask(pets: str, street: str) -> tuple[str, str, str | None]:
    os.remove(os.path.join(pets, "cat", "img1.png"))
    return (
        pets,
        f"{pets}/cat/img1.jpg: image without a mask (expected img1.png beside it)",
        "cat/img1",
    )


def _mask_size(pets: str, street: str) -> tuple[str, str, str | None]:
    fx.save_mask(np.zeros((10, 12), np.uint8), os.path.join(pets, "dog", "img2.png"), False)
    image = f"{pets}/dog/img2.jpg"
    return (
        pets,
        f"{pets}/dog/img2.png: mask of size 10x12 (HxW) but its image {image} is 40x48",
        "dog/img2",
    )


def _unnamed_value(street: str) -> tuple[str, str, str | None]:
    raw = fx.label_map("a3")
    raw[0, :4] = 42
    fx.save_mask(raw, os.path.join(street, "labels", "a3.png"), False)
    return street, f"{street}/labels/a3.png: values [42] that classes.txt does not name", "a3"


def _unreadable(pets: str, street: str) -> tuple[str, str, str | None]:
    path = os.path.join(pets, "fox", "img3.jpg")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 3])  # truncated
    return pets, f"{path}: unreadable image (corrupt or unreadable image {path}", "fox/img3"


def _not_an_image(pets: str, street: str) -> tuple[str, str, str | None]:
    Path(pets, "owl", "notes.txt").write_text("taken at dusk\n")
    return pets, f"{pets}/owl/notes.txt: not an image file", None


CASES = {
    "image_without_mask": _no_mask,
    "mask_of_another_size": _mask_size,
    "mask_value_not_in_classes_txt": lambda pets, street: _unnamed_value(street),
    "unreadable_file": _unreadable,
    "non_image_file": _not_an_image,
}


def _copies(tmp_path, pristine) -> tuple[str, str]:
    pets, street = (str(tmp_path / os.path.basename(p)) for p in pristine)
    shutil.copytree(pristine[0], pets)
    shutil.copytree(pristine[1], street)
    return pets, street


@pytest.mark.parametrize("case", CASES)
def test_bad_file_is_named_or_skipped_and_counted(tmp_path, pristine, case):
    manual_dir, message, dropped = CASES[case](*_copies(tmp_path, pristine))
    with pytest.raises(ValueError, match=re.escape(message) + ".*--skip_bad_files"):
        prepare(manual_dir, tmp_path / "tfds")
    assert files_under(tmp_path / "tfds") == []  # nothing written
    builder = prepare(manual_dir, tmp_path / "tfds", skip_bad_files=True)
    skipped = builder.info.metadata["skipped_files"]
    assert len(skipped) == 1 and message.startswith(skipped[0].split(" (")[0])
    written = {i for s in builder.info.metadata["splits"].values() for i in s["ids"]}
    if "street" in manual_dir:
        every = set(fx.LABEL_IMAGES)
    else:
        every = {f"{c}/img{k}" for c in fx.CLASSES for k in range(fx.PER_CLASS)}
    assert written == every - {dropped}


def test_empty_class(tmp_path, pristine):
    pets, street = _copies(tmp_path, pristine)
    for f in os.listdir(os.path.join(pets, "yak")):
        os.remove(os.path.join(pets, "yak", f))
    with pytest.raises(ValueError, match="class 'yak' is empty: its folder has no usable"):
        prepare(pets, tmp_path / "tfds")
    assert prepare(pets, tmp_path / "tfds", skip_bad_files=True).info.metadata[
        "class_names"] == fx.CLASSES[:4]  # fmt: skip
    for stem in ("a7", "a8", "a9"):  # the only images of value 13 ('sign')
        os.remove(os.path.join(street, "labels", f"{stem}.png"))
        os.remove(os.path.join(street, "images", f"{stem}.jpg"))
    with pytest.raises(ValueError, match=f"class 'sign' is empty: no image shows it in "
                                         f"{street}/labels"):  # fmt: skip
        prepare(street, tmp_path / "tfds2")


def test_two_classes_with_one_name(tmp_path, pristine):
    pets, street = _copies(tmp_path, pristine)
    shutil.copytree(os.path.join(pets, "cat"), os.path.join(pets, "Cat "))
    with pytest.raises(ValueError, match=f"two classes have one name in {pets}: 'Cat ' and 'cat'"):
        prepare(pets, tmp_path / "tfds", skip_bad_files=True)
    fx.write_lines(os.path.join(street, "classes.txt"), ["3 road", "5 tree", "7 Road"])
    with pytest.raises(ValueError, match=f"two classes have one name in {street}/classes.txt: "
                                         "'road' and 'Road'"):  # fmt: skip
        prepare(street, tmp_path / "tfds", skip_bad_files=True)


def test_interrupted_overwrite_keeps_the_prepared_dataset(tmp_path, pristine, monkeypatch):
    pets, _ = _copies(tmp_path, pristine)
    before = dict(prepare(pets, tmp_path / "tfds").info.metadata)
    calls = {"n": 0}
    real_open = Image.open

    def interrupted_open(*args, **kwargs):  # Ctrl-C in the middle of writing the train split
        calls["n"] += 1
        if calls["n"] == 2 * 19 + 9:  # after the check of the 19 pairs (2 files each)
            raise KeyboardInterrupt
        return real_open(*args, **kwargs)

    os.remove(os.path.join(pets, "cat", "img0.png"))  # the rebuild would differ
    os.remove(os.path.join(pets, "cat", "img0.jpg"))
    monkeypatch.setattr(Image, "open", interrupted_open)
    with pytest.raises(KeyboardInterrupt):
        prepare(pets, tmp_path / "tfds", overwrite=True)
    monkeypatch.undo()
    kept = builders.load_prepared("folder", data_dir=tmp_path / "tfds", config="pets")
    assert dict(kept.info.metadata) == before and len(kept.as_data_source("train")) == 12
    assert sorted(os.listdir(tmp_path / "tfds")) == ["folder"]  # no lock, no staging left
    assert sorted(os.listdir(tmp_path / "tfds" / "folder" / "pets")) == ["1.0.0"]
    rebuilt = prepare(pets, tmp_path / "tfds", overwrite=True)  # run again: completes
    total = sum(rebuilt.info.splits[s].num_examples for s in rebuilt.info.splits)
    assert total == 19


def test_command_line_error_is_one_line(tmp_path, pristine):
    pets, _ = _copies(tmp_path, pristine)
    _not_an_image(pets, "")
    cmd = [sys.executable, str(EXPERIMENTS / "prepare_data.py"), "--dataset=folder",
           f"--manual_dir={pets}", f"--data_dir={tmp_path / 'tfds'}"]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"prepare_data.py: error: {pets}/owl/notes.txt: not an image file (by its "
                    "name) (fix it or remove it, or pass --skip_bad_files to leave such files "
                    "out)")  # fmt: skip
    assert "Traceback" not in proc.stderr
