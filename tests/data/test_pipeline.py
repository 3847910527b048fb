"""The episode pipeline on the tiny synthetic set and a VOC tree written in the real format:
format, determinism / resumption / process streams, fold separation, masks checked by hand
against the raw files, official and HSNet samplers, weak annotations and errors."""

from __future__ import annotations

import os

import data_fixtures as fx
import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from panet_jax.data import builders, folds, preprocess, spec  # noqa: E402
from panet_jax.data.official_sampler import OfficialEpisodes  # noqa: E402
from panet_jax.data.pipeline import (  # noqa: E402
    EpisodeConfig,
    episode_dataset,
    make_sampler,
    resize_label,
    tf_resize_image,
)

tfds.display_progress_bar(False)


@pytest.fixture(scope="module")
def syn_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("syn"))
    builders.prepare("synthetic_fss", data_dir=data_dir, config="tiny")
    return data_dir


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    tree = fx.write_voc_tree(str(root / "raw"), class_lists=True)
    data_dir = str(root / "tfds")
    builders.prepare("pascal_voc_aug", data_dir=data_dir, manual_dir=tree.manual_dir)
    return tree, data_dir


def _tiny(**kw) -> EpisodeConfig:
    return EpisodeConfig("synthetic", builder_config="tiny", **{"image_size": (32, 24), **kw})


def _collect(ds) -> list[dict]:
    return list(ds.as_numpy_iterator())


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in spec.EPISODE_KEYS:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_format_and_length(syn_dir):
    cfg = _tiny(n_ways=2, n_shots=2, n_queries=3, image_size=(40, 48))
    batches = _collect(episode_dataset(cfg, data_dir=syn_dir, seed=0, batch_size=3, num_steps=2))
    assert len(batches) == 2
    for ep in batches:
        assert spec.check_episode(ep, batched=True) == (2, 2, 3, 40, 48)
        assert ep["support_images"].shape[0] == 3
        for key, s in spec.episode_spec(2, 2, 3, 40, 48).items():
            assert ep[key].dtype == s.dtype, key
        assert set(np.unique(ep["support_fg"])) <= {0.0, 1.0}
        assert not (ep["support_fg"] * ep["support_bg"]).any()
        assert set(np.unique(ep["query_labels"])) <= {0, 1, 2, 255}
        assert (ep["support_fg"].sum(axis=(-1, -2)) > 0).all()  # every support shows its class
        for b in range(3):  # every query shows its way's class (queries are spread over ways)
            assert all((ep["query_labels"][b, j] > 0).any() for j in range(3))
        assert abs(ep["query_images"].mean()) < 2.5  # normalised


def test_determinism_resume_and_process_streams(syn_dir):
    cfg = _tiny(n_shots=1, n_queries=1)
    full = _collect(episode_dataset(cfg, data_dir=syn_dir, seed=7, batch_size=2, num_steps=5))
    again = _collect(episode_dataset(cfg, data_dir=syn_dir, seed=7, batch_size=2, num_steps=5))
    _assert_same(full, again)
    resumed = _collect(
        episode_dataset(cfg, data_dir=syn_dir, seed=7, batch_size=2, start_step=3, num_steps=2)
    )
    _assert_same(full[3:], resumed)
    other = _collect(
        episode_dataset(
            cfg, data_dir=syn_dir, seed=7, batch_size=2, num_steps=5, process_index=1,
            process_count=2,
        )
    )  # fmt: skip
    for a, b in zip(full, other, strict=True):  # same steps, other process: other episodes
        for i in range(2):
            assert not (
                np.array_equal(a["support_images"][i], b["support_images"][i])
                and np.array_equal(a["query_images"][i], b["query_images"][i])
            )
    draws = [
        make_sampler(cfg, data_dir=syn_dir, seed=7, batch_size=2, process_index=p, process_count=2)[
            0
        ]
        for p in (0, 1)
    ]
    keys = [{(s, b, *d.draw(s, b).images.tolist()) for s in range(100) for b in range(2)}
            for d in draws]  # fmt: skip
    assert len(keys[0] & keys[1]) < 10  # only chance coincidences of (step, images)
    infinite = episode_dataset(cfg, data_dir=syn_dir, seed=7, batch_size=2)
    _assert_same(full, _collect(infinite.take(5)))
    sampler, _ = make_sampler(cfg, data_dir=syn_dir, seed=7, batch_size=2)
    assert sampler.draw(3, 1).images.tolist() == sampler.draw(3, 1).images.tolist()
    assert sampler.draw(3, 1).images.tolist() != sampler.draw(3, 0).images.tolist()


def test_global_batch_is_independent_of_the_process_split(syn_dir):
    """Two hosts of 2 episodes see exactly the step's episodes one host of 4 sees."""
    cfg = _tiny(n_shots=1, n_queries=1)
    one = _collect(episode_dataset(cfg, data_dir=syn_dir, seed=3, batch_size=4, num_steps=3))
    hosts = [
        _collect(
            episode_dataset(
                cfg, data_dir=syn_dir, seed=3, batch_size=2, num_steps=3, process_index=p,
                process_count=2,
            )
        )
        for p in (0, 1)
    ]  # fmt: skip
    joined = [
        {k: np.concatenate([a[k], b[k]]) for k in spec.EPISODE_KEYS}
        for a, b in zip(*hosts, strict=True)
    ]
    _assert_same(one, joined)


@pytest.mark.parametrize("fold", [0, 3])
def test_fold_separation(syn_dir, fold):
    test = set(folds.test_classes("synthetic", fold))
    for train in (True, False):
        cfg = _tiny(fold=fold, n_ways=2, train=train)
        sampler, _ = make_sampler(cfg, data_dir=syn_dir, seed=0, batch_size=4)
        seen = {int(c) for s in range(100) for b in range(4) for c in sampler.draw(s, b).class_ids}
        assert seen == (set(range(1, 21)) - test if train else test)
        assert not sampler.draw(0, 0).flips.any() if not train else True
    batch = _collect(
        episode_dataset(_tiny(fold=fold), data_dir=syn_dir, seed=1, batch_size=4, num_steps=3)
    )
    assert not {int(c) for ep in batch for c in ep["class_ids"].ravel()} & test


def _pil_label(mask: np.ndarray, hw: tuple[int, int], flip: bool) -> np.ndarray:
    out = np.asarray(Image.fromarray(mask).resize((hw[1], hw[0]), Image.NEAREST))
    return out[:, ::-1] if flip else out


def test_masks_and_images_against_the_raw_files(voc):
    tree, data_dir = voc
    hw = (26, 22)
    cfg = EpisodeConfig("pascal5i", fold=1, n_ways=2, n_shots=1, n_queries=2, image_size=hw)
    sampler, _ = make_sampler(cfg, data_dir=data_dir, seed=3, batch_size=2)
    batches = _collect(episode_dataset(cfg, data_dir=data_dir, seed=3, batch_size=2, num_steps=3))
    saw_flip = saw_255_bg = False
    for step, ep in enumerate(batches):
        for b in range(2):
            d = sampler.draw(step, b)
            cls = d.class_ids.tolist()
            assert ep["class_ids"][b].tolist() == cls
            assert not set(cls) & set(folds.test_classes("pascal5i", 1))
            raw = [
                _pil_label(tree.trainaug[i].mask, hw, f)
                for i, f in zip(d.images, d.flips, strict=True)
            ]
            saw_flip |= bool(d.flips.any())
            for n in range(2):  # supports: image n is way n's only shot
                lab = raw[n]
                assert cls[n] in tree.trainaug[d.images[n]].mask
                np.testing.assert_array_equal(ep["support_fg"][b, n, 0], lab == cls[n])
                want_bg = (lab != cls[0]) & (lab != cls[1])  # 255 counts as background
                np.testing.assert_array_equal(ep["support_bg"][b, n, 0], want_bg)
                saw_255_bg |= bool((ep["support_bg"][b, n, 0][lab == 255] == 1).any())
            for j in range(2):
                lab = raw[2 + j]
                want = np.where(lab == 255, 255, 0)
                want = np.where(lab == cls[0], 1, np.where(lab == cls[1], 2, want))
                np.testing.assert_array_equal(ep["query_labels"][b, j], want)
            # images: PIL decode + BILINEAR resize (torchvision 0.2.1 Resize) + normalisation
            i, f = d.images[-1], d.flips[-1]
            path = os.path.join(tree.root, "JPEGImages", tree.trainaug[i].image_id + ".jpg")
            pil = np.asarray(Image.open(path).resize((hw[1], hw[0]), Image.BILINEAR), float)
            pil = pil[:, ::-1] if f else pil
            want = preprocess.normalize_image(pil)
            np.testing.assert_allclose(ep["query_images"][b, 1], want, atol=1.01 / 255 / 0.224)
    assert saw_flip and saw_255_bg


def test_resize_matches_pil():
    rng = np.random.default_rng(0)
    sizes = [
        ((37, 50), (41, 41)),
        ((12, 9), (31, 17)),
        ((60, 33), (20, 45)),
        ((375, 500), (417, 417)),
    ]
    for (h, w), (oh, ow) in sizes:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pil = np.asarray(Image.fromarray(image).resize((ow, oh), Image.BILINEAR), float)
        ours = tf_resize_image(tf.constant(image), (oh, ow)).numpy()
        assert np.abs(ours - pil).max() <= 1.0 and np.abs(ours - pil).mean() < 0.3
        label = rng.integers(0, 21, (h, w), dtype=np.uint8)
        pil_label = np.asarray(Image.fromarray(label).resize((ow, oh), Image.NEAREST))
        np.testing.assert_array_equal(
            resize_label(tf.constant(label[..., None]), (oh, ow)), pil_label
        )


def test_official_sampler(voc):
    tree, data_dir = voc
    cfg = EpisodeConfig("pascal5i", fold=0, train=False, sampler="official", image_size=(16, 16))
    sampler, builder = make_sampler(cfg, data_dir=data_dir, seed=1234, batch_size=1)
    labels = folds.official_label_order("pascal5i", 0, train=False)
    order = builder.info.metadata["splits"]["trainaug"]["class_order"]  # PANet's class files
    official = OfficialEpisodes(labels, [order[str(c)] for c in labels], 1, 1, 1, seed=1234)
    batches = _collect(
        episode_dataset(cfg, data_dir=data_dir, seed=1234, batch_size=1, num_steps=6)
    )
    for step, ep in enumerate(batches):
        want = official[step]
        assert ep["class_ids"][0].tolist() == list(want.class_ids)
        got = sampler.describe(step, 0)
        assert got["support_ids"] == [[tree.trainaug[i].image_id for i in want.support[0]]]
        assert got["query_ids"] == [tree.trainaug[i].image_id for i in want.query]
        assert not any(got["flips"])


def test_hsnet_protocol(voc):
    tree, data_dir = voc
    val_ids = {im.image_id for im in tree.val}
    cfg = EpisodeConfig("pascal5i", fold=0, train=False, protocol="hsnet", image_size=(16, 16))
    assert cfg.resolved_split == "val"
    sampler, _ = make_sampler(cfg, data_dir=data_dir, seed=0, batch_size=1)
    lines = folds.hsnet_fold_lines(
        [im.image_id for im in tree.val], [sorted(set(np.unique(im.mask)) - {0, 255})
                                           for im in tree.val], [1, 2, 3, 4, 5]
    )  # fmt: skip
    assert len(sampler.pairs) == len(lines)
    for e in range(2 * len(lines)):  # queries walk the pairs in order, wrapping around
        got = sampler.describe(e, 0)
        query_id, c = folds.parse_hsnet_line(lines[e % len(lines)])
        assert got["query_ids"] == [query_id] and got["class_ids"] == [c]
        assert got["support_ids"][0][0] != query_id and got["support_ids"][0][0] in val_ids
    train_cfg = EpisodeConfig("pascal5i", fold=0, protocol="hsnet", image_size=(16, 16))
    train_sampler, _ = make_sampler(train_cfg, data_dir=data_dir, seed=0, batch_size=1)
    trainaug_ids = {im.image_id for im in tree.trainaug}
    for s in range(30):  # training pool: trainaug minus val (disjoint in this fixture anyway)
        got = train_sampler.describe(s, 0)
        assert set(got["query_ids"] + got["support_ids"][0]) <= trainaug_ids - val_ids
        assert got["class_ids"][0] not in (1, 2, 3, 4, 5)
    ep = _collect(episode_dataset(cfg, data_dir=data_dir, seed=0, batch_size=2, num_steps=1))[0]
    assert spec.check_episode(ep, batched=True) == (1, 1, 1, 16, 16)


def test_weak_annotations(voc):
    pytest.importorskip("panet_jax.data.weak")
    tree, data_dir = voc
    hw = (30, 40)
    for annotation in ("scribble", "bbox"):
        dense_cfg = EpisodeConfig("pascal5i", fold=2, train=False, image_size=hw, n_shots=2)
        weak_cfg = EpisodeConfig(
            "pascal5i", fold=2, train=False, image_size=hw, n_shots=2, support_annotation=annotation
        )
        kw = dict(data_dir=data_dir, seed=5, batch_size=2, num_steps=2)
        dense = _collect(episode_dataset(dense_cfg, **kw))
        weak = _collect(episode_dataset(weak_cfg, **kw))
        sampler, _ = make_sampler(weak_cfg, data_dir=data_dir, seed=5, batch_size=2)
        for step, (de, we) in enumerate(zip(dense, weak, strict=True)):
            np.testing.assert_array_equal(de["query_labels"], we["query_labels"])
            fg, bg = we["support_fg"].astype(bool), we["support_bg"].astype(bool)
            dfg = de["support_fg"].astype(bool)
            assert fg.any(axis=(-1, -2)).all() and bg.any(axis=(-1, -2)).all()
            if annotation == "scribble":  # official ScribbleAugAuto rule
                assert not (fg & ~dfg).any()  # fg scribble inside the class mask
                for b in range(2):
                    d = sampler.draw(step, b)
                    for k in range(2):
                        scr = _pil_label(tree.trainaug[d.images[k]].scribble, hw, False)
                        np.testing.assert_array_equal(bg[b, 0, k], scr == 0)
                        assert len(np.unique(scr[fg[b, 0, k]])) == 1  # one scribble id
            else:
                assert not (bg & dfg).any()  # no box background on the class
                ys, xs = np.nonzero(dfg[0, 0, 0])
                assert fg[0, 0, 0][ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()


def test_generated_scribbles_inside_their_masks(syn_dir):
    pytest.importorskip("panet_jax.data.weak")
    kw = dict(data_dir=syn_dir, seed=2, batch_size=2, num_steps=1)
    dense = _collect(episode_dataset(_tiny(train=False, image_size=(48, 48)), **kw))[0]
    weak = _collect(
        episode_dataset(
            _tiny(train=False, image_size=(48, 48), support_annotation="scribble"), **kw
        )
    )[0]
    fg, bg = weak["support_fg"].astype(bool), weak["support_bg"].astype(bool)
    assert fg.any(axis=(-1, -2)).all() and bg.any(axis=(-1, -2)).all()
    assert not (fg & ~dense["support_fg"].astype(bool)).any()
    assert not (bg & ~dense["support_bg"].astype(bool)).any()
    assert fg.sum() < dense["support_fg"].sum()  # thin lines, not the masks


def test_errors(syn_dir, voc, tmp_path):
    _, data_dir = voc
    with pytest.raises(FileNotFoundError, match=r"prepare_data\.py --dataset=pascal_voc_aug"):
        episode_dataset(EpisodeConfig("pascal5i"), data_dir=str(tmp_path), seed=0, batch_size=1)
    with pytest.raises(FileNotFoundError, match=r"prepare_data\.py --dataset=synthetic_fss"):
        episode_dataset(_tiny(), data_dir=str(tmp_path), seed=0, batch_size=1)
    # the fixture has 4 images of class 1 (0, 13, 20, 33): not enough for 5 shots + 1 query
    with pytest.raises(ValueError, match="class 1 has 4 images"):
        episode_dataset(
            EpisodeConfig("pascal5i", train=False, n_shots=5), data_dir=data_dir, seed=0,
            batch_size=1,
        )  # fmt: skip
    with pytest.raises(ValueError, match="split 'nope'"):
        make_sampler(_tiny(split="nope"), data_dir=syn_dir, seed=0, batch_size=1)
    with pytest.raises(ValueError, match="fold"):
        EpisodeConfig("pascal5i", fold=4)
    with pytest.raises(ValueError, match="support_annotation"):
        EpisodeConfig("pascal5i", support_annotation="points")
    with pytest.raises(ValueError, match="1-way"):
        EpisodeConfig("pascal5i", protocol="hsnet", n_ways=2)
