"""The evaluation protocol options of the peers' numbers: scoring at original size (HSNet's
``use_original_imgsize``, PFENet's ``ori_resize``), PFENet's small-object filter
(``min_object_pixels``) and ``configs/fss1000.py`` (HSNet's FSS-1000 protocol).

Expected values are counted by hand from the fixtures' geometry (``data_fixtures.voc_image``:
two boxes per image; ``fss_fixtures``: 20x24 masks), not taken from panet_jax.
"""

from __future__ import annotations

import contextlib
import json
import runpy
from pathlib import Path

import data_fixtures as fx
import fss_fixtures as fss
import jax
import ml_collections
import numpy as np
import official_reference
import pytest
from paths import REPO

from panet_jax import config as config_lib
from panet_jax import ops
from panet_jax.data import builders, preprocess
from panet_jax.data.pipeline import EpisodeConfig, EpisodeSampler, make_sampler, split_index
from panet_jax.data.raw_labels import object_pixels
from panet_jax.evaluation import evaluator, metrics, original_size
from panet_jax.models import registry
from panet_jax.train import state as train_state


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    return runpy.run_path(str(REPO / "configs" / name))["get_config"](arg)


# --------------------------------------------------------------------------------------------
# Scoring at original size.
# --------------------------------------------------------------------------------------------

# One query, 1 x 2 feature map, [bg, fg] scores: bg wins left, fg right. Along the width,
# fg - bg = -4 + 5x at source coordinate x in [0, 1] (PyTorch align_corners=False:
# x = (j + 0.5) * 2 / W - 0.5, clamped), so fg iff x > 0.8.
SCORES = np.array([[[[4.0, 0.0], [0.0, 1.0]]]], np.float32)  # [Q=1, h=1, w=2, P=2]
CLASS = 7  # the way's dataset class id


def test_original_size_iou_by_hand():
    """Raw 3 x 5 label, fg (way 1) in columns 2-4, pixel (0, 0) ignored (255).

    Original size (W0 = 5): x_j = 0.4 j - 0.3 = (0, 0.1, 0.5, 0.9, 1) -> fg in columns 3, 4.
    fg: TP 2 x 3 = 6, FP 0, FN 3 (column 2) -> IoU 6/9; bg: TP 5 (columns 0-1 less the 255),
    FP 3, FN 0 -> 5/8. (align_corners=True, x_j = j / 4, would give fg in column 4 only: 3/9.)
    At the 2 x 4 input size: PIL nearest rows (0, 2), columns (0, 1, 3, 4) give the label
    [[255, 0, 1, 1], [0, 0, 1, 1]]; x_j = 0.5 j - 0.25 -> fg in column 3 only: fg TP 2,
    FN 2 -> 2/4; bg TP 3, FP 2 -> 3/5.
    """
    raw = np.zeros((3, 5), np.int64)
    raw[:, 2:] = 1
    raw[0, 0] = 255
    ids = np.array([CLASS])
    got = original_size.episode_counts(SCORES, [raw], ids, num_classes=20)
    off = got["official"]
    assert (off.tp[[0, CLASS]].tolist(), off.fp[[0, CLASS]].tolist(),
            off.fn[[0, CLASS]].tolist()) == ([5, 6], [3, 0], [0, 3])  # fmt: skip
    assert metrics.class_iou(off, [0, CLASS]).tolist() == [5 / 8, 6 / 9]
    assert off.episodes[[0, CLASS]].tolist() == [1, 1]
    for a, b in zip(got["strict"], off, strict=True):  # both classes are present
        assert a.tolist() == b.tolist()
    bg = got["background"]  # all-background prediction: fg TP 0, FN 9; bg FP 9 (valid fg)
    assert (bg.tp[[0, CLASS]].tolist(), bg.fp[[0, CLASS]].tolist(),
            bg.fn[[0, CLASS]].tolist()) == ([5, 0], [9, 0], [0, 9])  # fmt: skip

    # The default path: the device functions at the 2 x 4 input size.
    label = preprocess.resize_label(raw, (2, 4))
    assert label.tolist() == [[255, 0, 1, 1], [0, 0, 1, 1]]
    pred = ops.hard_labels(ops.resize_bilinear(SCORES, (2, 4)))[0]
    assert np.asarray(pred).tolist() == [[0, 0, 0, 1]] * 2
    resized = metrics.image_counts(pred, label, ids, 20)
    assert metrics.class_iou(resized, [0, CLASS]).tolist() == [3 / 5, 2 / 4]


def test_original_size_upsampling_and_counts_match_the_device_rules():
    """Same size: the host upsampling equals the model's (``ops.resize_bilinear``) and the
    NumPy counts equal :func:`metrics.image_counts`, official and strict, with 255 pixels and
    an absent way."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 6, 3)).astype(np.float32)
    with jax.enable_x64(True):
        want = np.asarray(ops.resize_bilinear(scores.astype(np.float64), (13, 17)))
    np.testing.assert_allclose(original_size.upsample_logits(scores, (13, 17)), want, rtol=1e-12)
    pred = rng.integers(0, 3, (13, 17))
    target = rng.choice([0, 1, 255], (13, 17))  # way 2 absent
    ids = np.array([4, 9])
    for strict in (False, True):
        host = original_size.image_counts(pred, target, ids, 20, strict=strict)
        device = metrics.image_counts(pred, target, ids, 20, strict=strict)
        for a, b in zip(host, device, strict=True):
            assert np.asarray(a).tolist() == np.asarray(b).tolist()


# --------------------------------------------------------------------------------------------
# The small-object filter on the VOC fixture.
# --------------------------------------------------------------------------------------------
# Image i shows class i % 20 + 1 in box 1 and (i + 7) % 20 + 1 in box 2, each box's interior
# (its 1-px border is 255): 30x40 images (even i): box 1 13 x 15 = 195 px, box 2 16 x 15 = 240;
# 36x28 images (odd i): box 1 16 x 9 = 144, box 2 20 x 9 = 180. Fold 0's test class c is in
# images c - 1, c + 19 (box 1) and c + 12, c + 32 (box 2).
PIXELS = {c: {c - 1: (195, 144)[(c - 1) % 2], c + 19: (195, 144)[(c + 19) % 2],
              c + 12: (240, 180)[(c + 12) % 2], c + 32: (240, 180)[(c + 32) % 2]}
          for c in range(1, 6)}  # fmt: skip
MIN_PIXELS = 190  # drops the 144 and 180 px objects: 2 of each class's 4 images
KEPT = {1: {0, 20}, 2: {14, 34}, 3: {2, 22}, 4: {16, 36}, 5: {4, 24}}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc_filter")
    tree = fx.write_voc_tree(str(root / "raw"), class_lists=True)
    data_dir = str(root / "tfds")
    builder = builders.prepare("pascal_voc_aug", data_dir=data_dir, manual_dir=tree.manual_dir)
    return tree, data_dir, builder


def _cfg(**kw) -> EpisodeConfig:
    return EpisodeConfig("pascal5i", fold=0, image_size=(48, 48), train=False, **kw)


def test_pixel_counts_are_the_raw_masks(voc):
    tree, _, builder = voc
    index = split_index(builder, "trainaug")
    assert [index.ids.index(im.image_id) for im in tree.trainaug] == list(range(40))
    counts = object_pixels(builder, "trainaug")([0, 1, 13])
    assert counts == {0: {1: 195, 8: 240}, 1: {2: 144, 9: 180}, 13: {14: 144, 1: 180}}
    for c, images in PIXELS.items():  # the hand table against the fixture's own masks
        for i, n in images.items():
            assert int((tree.trainaug[i].mask == c).sum()) == n


def test_filter_drops_exactly_the_small_objects(voc):
    _, data_dir, _ = voc
    for sampler_name in ("official", "stateless"):
        sampler, _ = make_sampler(_cfg(sampler=sampler_name, min_object_pixels=MIN_PIXELS),
                                  data_dir=data_dir, seed=1234, batch_size=1)  # fmt: skip
        assert {c: set(v.tolist()) for c, v in sampler.lists.items()} == KEPT
        for e in range(20):
            d = sampler.draw(e, 0)
            assert set(d.images.tolist()) <= KEPT[int(d.class_ids[0])]
    # The official draw over the filtered lists (kept in the official class-file order: the
    # fixture's class{c}.txt lists images in reverse example order).
    sampler, _ = make_sampler(_cfg(sampler="official", min_object_pixels=MIN_PIXELS),
                              data_dir=data_dir, seed=1234, batch_size=1)  # fmt: skip
    labels = [1, 2, 3, 4, 5]  # the official label-set order of fold 0's test classes
    lists = [sorted(KEPT[c], reverse=True) for c in labels]
    assert [sampler.lists[c].tolist() for c in labels] == lists
    want = official_reference.paired_dataset([2] * 5, 1, 1, 1, 10, 1234)
    for e, (class_of, support, query) in enumerate(want):
        d = sampler.draw(e, 0)
        assert d.class_ids.tolist() == [labels[class_of[0]]]
        assert d.images.tolist() == [lists[s][p] for s, p in (*support[0], *query)]


def test_filter_too_strict_names_the_option(voc):
    _, data_dir, _ = voc
    with pytest.raises(ValueError, match=r"class 1 has 0 images with >= 241 object pixels"):
        make_sampler(_cfg(min_object_pixels=241), data_dir=data_dir, seed=0, batch_size=1)


def test_filter_off_leaves_the_official_draw_unchanged(voc):
    """At 0 nothing is counted (a pixel source that fails is never called) and the draw is
    the official one over PANet's full class lists."""
    _, data_dir, builder = voc
    index = split_index(builder, "trainaug")

    def never(indices):
        raise AssertionError("pixel counts read with the filter off")

    cfg = _cfg(sampler="official")
    assert cfg.min_object_pixels == 0
    off = EpisodeSampler(cfg, index, seed=1235, batch_size=1, object_pixels=never)
    default, _ = make_sampler(cfg, data_dir=data_dir, seed=1235, batch_size=1)
    lists = [[i for i in range(39, -1, -1) if i in PIXELS[c]] for c in range(1, 6)]
    want = official_reference.paired_dataset([4] * 5, 1, 1, 1, 25, 1235)
    for e, (class_of, support, query) in enumerate(want):
        expected = [lists[s][p] for s, p in (*support[0], *query)]
        for sampler in (off, default):
            d = sampler.draw(e, 0)
            assert d.class_ids.tolist() == [class_of[0] + 1]
            assert d.images.tolist() == expected


# --------------------------------------------------------------------------------------------
# Config keys and the results files.
# --------------------------------------------------------------------------------------------


def _with(config: ml_collections.ConfigDict, **eval_values) -> ml_collections.ConfigDict:
    raw = config.to_dict()
    raw["eval"].update(eval_values)
    return ml_collections.ConfigDict(raw)


@pytest.mark.parametrize(("values", "message"), [
    ({"original_size": "yes"}, r"config\.eval\.original_size='yes': expected True or False"),
    ({"min_object_pixels": -1}, r"config\.eval\.min_object_pixels=-1: expected an int >= 0"),
    ({"min_object_pixels": 2048.0}, r"config\.eval\.min_object_pixels=2048\.0"),
    ({"episodes": 0}, r"config\.eval\.episodes=0: expected an int >= 1"),
])  # fmt: skip
def test_bad_option_values_name_the_key(values, message):
    config = _with(load_config("pascal5i.py"), **values)
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config, train=False, evaluate=True)


def test_defaults_are_off():
    e = config_lib.base_config().eval
    assert e.original_size is False and e.min_object_pixels == 0
    config_lib.validate(_with(load_config("pascal5i.py"), min_object_pixels=2048,
                               original_size=True), train=False, evaluate=True)  # fmt: skip


def test_results_state_both_options(voc, tmp_path):
    _, data_dir, _ = voc
    config = load_config("pascal5i.py", "fold=0")
    config.data.data_dir, config.data.image_size = data_dir, (48, 48)
    config.model.width, config.model.pretrained = 1 / 16, ""
    config.eval.runs, config.eval.episodes, config.eval.num_images = 1, 3, 0
    config.eval.original_size, config.eval.min_object_pixels = True, MIN_PIXELS
    state = train_state.create_train_state(config, jax.random.key(0))
    result = evaluator.evaluate(config, {"params": state.params}, workdir=tmp_path,
                                 progress=False)  # fmt: skip
    out = Path(result["output_dir"])
    saved = json.loads((out / "results.json").read_text())["settings"]
    assert (saved["original_size"], saved["min_object_pixels"]) == (True, MIN_PIXELS)
    md = (out / "results.md").read_text()
    assert "scored at each query's original label size" in md
    assert f"objects under {MIN_PIXELS} raw pixels dropped" in md
    for record in evaluator.read_episode_list(out / evaluator.EPISODE_LIST):
        ids = [*record["query_ids"], *record["support_ids"][0]]
        assert {int(i.split("_")[1]) for i in ids} <= KEPT[record["class_ids"][0]]


# --------------------------------------------------------------------------------------------
# configs/fss1000.py: HSNet's FSS-1000 protocol on the FSS fixture.
# --------------------------------------------------------------------------------------------
TEST_IDS = ([f"banana/{n}" for n in range(1, 11)] + [f"grape/{n}" for n in range(1, 11)]
            + [f"olive/{n}" for n in range(1, 10)])  # fmt: skip
TEST_CLASS = {"banana": 10, "grape": 11, "olive": 12}  # test classes sorted, after 6 + 3


@pytest.fixture(scope="module")
def fss_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fss_protocol")
    tree = fss.write_fss_tree(str(root / "raw"))
    data_dir = str(root / "tfds")
    builders.prepare("fss1000", data_dir=data_dir, manual_dir=tree.manual_dir)
    return tree, data_dir


def fss_config(data_dir: str, arg: str | None = None) -> ml_collections.ConfigDict:
    config = load_config("fss1000.py", arg)
    config.data.data_dir = data_dir
    return config


def test_fss1000_config_is_hsnets_protocol(fss_data):
    _, data_dir = fss_data
    config = fss_config(data_dir)
    config_lib.validate(config, train=False, evaluate=True)
    assert tuple(config.data.image_size) == (400, 400)
    assert (config.eval.protocol, config.eval.runs, config.eval.seed) == ("hsnet", 1, 0)
    assert (config.data.n_ways, config.data.n_shots) == (1, 1)
    assert fss_config(data_dir, "shot=5").data.n_shots == 5
    sampler, _ = evaluator.run_sampler(config, int(config.eval.seed))
    assert evaluator.episode_count(config, sampler) == 29  # every test image, once
    episodes = [sampler.describe(e, 0) for e in range(29)]
    assert [d["query_ids"][0] for d in episodes] == TEST_IDS
    for d in episodes:
        (query,), ((support,),) = d["query_ids"], d["support_ids"]
        assert support != query and support.split("/")[0] == query.split("/")[0]
        assert d["class_ids"] == [TEST_CLASS[query.split("/")[0]]]
    again, _ = evaluator.run_sampler(config, int(config.eval.seed))  # fixed seed
    assert [again.describe(e, 0) for e in range(29)] == episodes


def _official_miou_by_torch(config, variables, tree) -> float:
    """One run's mIoU at original size: scores upsampled by ``torch.nn.functional.interpolate``
    (bilinear, ``align_corners=False``) to the fixture's raw mask size (20x24), binarised at
    128 as written, official counts."""
    torch = pytest.importorskip("torch")
    apply = jax.jit(registry.build_panet(config).apply)
    sampler, builder = evaluator.run_sampler(config, int(config.eval.seed))
    layout = evaluator.Layout(29, 1, 1)
    tp, fp, fn = (np.zeros(13) for _ in range(3))
    batches = evaluator.host_batches(config, sampler, builder, layout, 0)
    with contextlib.closing(batches):
        for e, (batch, _) in enumerate(batches):
            d = sampler.describe(e, 0)
            scores = torch.from_numpy(np.array(apply(variables, batch)["scores"])[0, 0])
            up = torch.nn.functional.interpolate(
                scores.permute(2, 0, 1)[None], size=fss.HW, mode="bilinear", align_corners=False
            )
            pred = up[0].argmax(0).numpy()
            target = (tree.raw_masks[d["query_ids"][0]] >= 128).astype(np.int64)
            for j, label in enumerate([0, d["class_ids"][0]]):
                p, t = pred == j, target == j
                if t.any():  # the official rule: only classes present in the target
                    tp[label] += (p & t).sum()
                    fp[label] += (p & ~t).sum()
                    fn[label] += (~p & t).sum()
    return float(np.mean([tp[c] / (tp[c] + fp[c] + fn[c]) for c in (10, 11, 12)]))


@pytest.mark.torch
def test_fss1000_original_size_evaluation_matches_torch(fss_data):
    """The whole evaluation at original size (32 px input, 20x24 raw masks), in float64, equals
    a per-episode recomputation with PyTorch's own bilinear upsampling."""
    tree, data_dir = fss_data
    with jax.enable_x64(True):
        config = fss_config(data_dir)
        config.data.image_size = (32, 32)
        config.model.width, config.model.pretrained, config.model.dtype = 1 / 16, "", "float64"
        config.eval.num_images, config.eval.per_device_batch = 0, 2  # 29 = 14 x 2 + 1 padded
        variables = {"params": train_state.create_train_state(config, jax.random.key(0)).params}
        want = _official_miou_by_torch(config, variables, tree)
        config.eval.original_size = True
        result = evaluator.evaluate(config, variables, progress=False)
    assert result["settings"]["episodes"] == 29 and result["settings"]["original_size"]
    assert sum(v["queries_per_run"] for v in result["per_class"].values()) == 29
    assert result["runs"][0]["miou"] == pytest.approx(want, rel=1e-12)
