"""Faithful by default: the default evaluation replays the official PANet test episodes (and
its scribble picks), refuses clearly without what it needs, and leaves an audit trail.

The expectations come from transliterations of the official code (``official_reference``),
fed with the fixture's own files, not from panet_jax's metadata.
"""

from __future__ import annotations

import logging
import os
import runpy
from pathlib import Path

import data_fixtures as fx
import jax
import numpy as np
import official_reference
import pytest
from paths import REPO

from panet_jax.data import builders, folds, preprocess
from panet_jax.data.pipeline import EpisodeConfig, make_sampler, sampler_dataset
from panet_jax.evaluation import evaluator
from panet_jax.train import state as train_state

SIZE = (48, 48)  # upsampling the 30x40 / 36x28 fixture keeps every scribble row


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    """A VOC tree with PANet's complete per-class lists and 3 scribble ids per object."""
    root = tmp_path_factory.mktemp("voc_official")
    tree = fx.write_voc_tree(str(root / "raw"), class_lists=True, scribble_ids=3)
    data_dir = str(root / "tfds")
    builders.prepare("pascal_voc_aug", data_dir=data_dir, manual_dir=tree.manual_dir)
    return tree, data_dir


def pascal_config(data_dir: str, **eval_overrides):
    """``configs/pascal5i.py:fold=0`` (the defaults), shrunk: 48 px, width 1/16, 2 x 6 episodes."""
    config = runpy.run_path(str(REPO / "configs" / "pascal5i.py"))["get_config"]("fold=0")
    config.data.data_dir = data_dir
    config.data.image_size = SIZE
    config.model.width, config.model.pretrained = 1 / 16, ""
    config.eval.runs, config.eval.episodes, config.eval.num_images = 2, 6, 0
    for key, value in eval_overrides.items():
        config.eval[key] = value
    return config


@pytest.fixture(scope="module")
def variables(voc):
    state = train_state.create_train_state(pascal_config(voc[1]), jax.random.key(0))
    return {"params": state.params}


def _official_test_episodes(tree, seed: int, n_episodes: int, n_shots: int = 1):
    """The official test.py episodes of fold 0 from the fixture's class files."""
    all_ = set(range(1, 21))
    labels = list(all_ - (all_ - {1, 2, 3, 4, 5}))  # CLASS_LABELS['all'] - CLASS_LABELS[0]
    folder = os.path.join(tree.root, "ImageSets", "Segmentation", "trainaug")
    sub_ids = [open(os.path.join(folder, f"class{c}.txt")).read().splitlines() for c in labels]
    drawn = official_reference.paired_dataset(
        [len(s) for s in sub_ids], 1, n_shots, 1, n_episodes, seed
    )
    return [
        {
            "class_ids": [labels[class_of[0]]],
            "support_ids": [[sub_ids[d][p] for d, p in support[0]]],
            "query_ids": [sub_ids[d][p] for d, p in query],
        }
        for class_of, support, query in drawn
    ]


def test_default_evaluation_replays_the_official_episodes(voc, variables, tmp_path):
    tree, data_dir = voc
    config = pascal_config(data_dir)
    assert config.eval.sampler == "official" and config.eval.protocol == "panet"  # defaults
    result = evaluator.evaluate(config, variables, workdir=tmp_path, progress=False)
    assert result["settings"]["sampler"] == "official"
    out = Path(result["output_dir"])
    assert (out / "results.json").read_text().count('"sampler": "official"') == 1
    records = evaluator.read_episode_list(out / evaluator.EPISODE_LIST)
    assert len(records) == 2 * 6
    known = {im.image_id for im in tree.trainaug}
    for run in range(2):
        want = _official_test_episodes(tree, 1234 + run, 6)
        got = [r for r in records if r["run"] == run]
        assert [r["episode"] for r in got] == list(range(6))
        for g, w in zip(got, want, strict=True):
            assert g["seed"] == 1234 + run and g["annotation"] == "dense"
            assert {k: g[k] for k in w} == w
            assert {*g["query_ids"], *(i for way in g["support_ids"] for i in way)} <= known


def test_official_replay_refuses_without_the_per_class_lists(tmp_path, variables, caplog):
    tree = fx.write_voc_tree(str(tmp_path / "raw"), class_lists=True, missing_class_lists=(3,))
    data_dir = str(tmp_path / "tfds")
    with caplog.at_level(logging.WARNING):
        builders.prepare("pascal_voc_aug", data_dir=data_dir, manual_dir=tree.manual_dir)
    assert "class3.txt" in caplog.text and "cannot be replayed" in caplog.text
    with pytest.raises(ValueError, match=r"sampler='official'.*class3\.txt.*stateless"):
        evaluator.evaluate(pascal_config(data_dir), variables, progress=False)
    result = evaluator.evaluate(pascal_config(data_dir, sampler="stateless"), variables,
                                 progress=False)  # fmt: skip
    assert result["settings"]["sampler"] == "stateless"


@pytest.mark.torch
def test_scribble_picks_equal_the_official_rule(voc):
    """Multi-valued scribbles ({1, 8, 15} per object, not in sorted set order): the fg scribble
    of every support is the one the official worker's ``random.choice`` picks."""
    pytest.importorskip("torch")
    tree, data_dir = voc
    by_id = {im.image_id: im for im in tree.trainaug}
    cfg = EpisodeConfig("pascal5i", fold=0, n_shots=2, train=False, image_size=SIZE,
                        support_annotation="scribble", sampler="official")  # fmt: skip
    n_multi = 0
    for seed in (1234, 1235):
        sampler, builder = make_sampler(cfg, data_dir=data_dir, seed=seed, batch_size=1)
        batches = list(sampler_dataset(sampler, builder, num_steps=8).as_numpy_iterator())
        rng = official_reference.worker_random(seed)
        for e, ep in enumerate(batches):
            d = sampler.describe(e, 0)
            class_id = d["class_ids"][0]
            for k, image_id in enumerate(d["support_ids"][0]):
                label = preprocess.resize_label(by_id[image_id].mask, SIZE)
                scribble = preprocess.resize_label(by_id[image_id].scribble, SIZE)
                pick = official_reference.scribble_pick(rng, label, scribble, class_id)
                want = (label == class_id) & (scribble == pick)
                np.testing.assert_array_equal(ep["support_fg"][0, 0, k], want)
                np.testing.assert_array_equal(ep["support_bg"][0, 0, k], scribble == 0)
                assert d["scribble_picks"][0][k] == pick
                values = np.unique(scribble[(label == class_id) & (scribble != 255)])
                n_multi += len(set(values.tolist()) - {0}) > 1
    assert n_multi > 10  # the picks really chose among several ids


def test_episode_list_round_trips_and_names_every_image(voc, variables, tmp_path):
    tree, data_dir = voc
    config = pascal_config(data_dir, support_annotation="scribble", runs=1, episodes=4)
    config.data.n_shots = 2
    result = evaluator.evaluate(config, variables, workdir=tmp_path, progress=False)
    records = evaluator.read_episode_list(Path(result["output_dir"]) / evaluator.EPISODE_LIST)
    sampler, _ = evaluator.run_sampler(config, 1234)
    assert len(records) == 4
    for e, r in enumerate(records):
        want = sampler.describe(e, 0)
        assert r["support_ids"] == want["support_ids"] and r["query_ids"] == want["query_ids"]
        assert r["scribble_picks"] == want["scribble_picks"] and r["annotation"] == "scribble"
        assert len(r["support_ids"][0]) == 2 and len(r["query_ids"]) == 1
        for image_id in r["query_ids"] + r["support_ids"][0]:
            assert os.path.isfile(os.path.join(tree.root, "JPEGImages", image_id + ".jpg"))
        assert r["class_ids"][0] in folds.test_classes("pascal5i", 0)
