"""The one-call model (``panet_jax.load_model``), the raw-data episode builder
(``panet_jax.make_episode``) and ``panet_jax.predict`` reading the training run's config."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import jax
import numpy as np
import official_reference as official
import pytest
import tolerances as tol
import train_helpers as h
from paths import REPO
from PIL import Image

import panet_jax
from panet_jax.data import episodes as episodes_lib
from panet_jax.data import preprocess
from panet_jax.inference import loading, predictor
from panet_jax.models.weights import vgg as vgg_weights
from panet_jax.train import trainer


def _raw_pair(rng, hw, classes):
    """A random image and a label map with boxes of ``classes``, a 255 row and class 7."""
    h, w = hw
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = np.zeros(hw, np.uint8)
    for c in classes:
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        label[y : y + h // 2, x : x + w // 2] = c
    label[rng.integers(0, h), :] = 255
    label[: h // 6, w - w // 5 :] = 7  # a class of no way: background for the supports
    return image, label


def _pth(tmp_path, torch) -> tuple[Path, object]:
    """Random full-width official encoder weights saved like vgg16-397923af.pth."""
    from panet_jax.testing import torch_reference as tr

    torch.manual_seed(3)
    model = tr.FewShotSeg(width=1.0).eval()
    with torch.no_grad():
        for m in tr.conv_modules(model.encoder):
            m.bias.uniform_(-0.1, 0.1)
    sd = OrderedDict((f"features.{k}", v) for k, v in model.encoder.features.state_dict().items())
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(sd, path)
    return path, model


@pytest.mark.torch
def test_load_model_and_make_episode_match_the_official_pipeline(tmp_path):
    """ImageNet weights through ``load_model`` and raw (image, label, class) triples through
    ``make_episode`` == the official transform, getMask / fewShot rules and model, in float64."""
    torch = pytest.importorskip("torch")
    path, ref = _pth(tmp_path, torch)
    rng = np.random.default_rng(0)
    size = (57, 49)
    class_ids = [3, 12]
    supports = [[_raw_pair(rng, (40, 50), [3, 12])], [_raw_pair(rng, (61, 47), [12])]]
    query_image, query_label = _raw_pair(rng, (35, 44), [3, 12])
    episode = panet_jax.make_episode(
        [[img for img, _ in way] for way in supports],
        [[lab for _, lab in way] for way in supports],
        class_ids, [query_image], [query_label], image_size=size,
    )  # fmt: skip
    with jax.enable_x64(True):
        model, variables = panet_jax.load_model(path, dtype="float64")
        logits = np.asarray(
            model.apply(variables, episodes_lib.stack_episodes([episode]))["logits"]
        )
    assert logits.dtype == np.float64 and logits.shape == (1, 1, *size, 3)

    # The official path, from the same raw arrays.
    sup = [[official.transform_sample(img, lab, size) for img, lab in way] for way in supports]
    q_img, q_lab = official.transform_sample(query_image, query_label, size)
    masks = [[official.get_dense_masks(lab, c, class_ids) for _, lab in way]
             for way, c in zip(sup, class_ids, strict=True)]  # fmt: skip
    ref = ref.double().eval()
    with torch.no_grad():
        out, _ = ref(
            [[img[None].double() for img, _ in way] for way in sup],
            [[fg[None].double() for fg, _ in way] for way in masks],
            [[bg[None].double() for _, bg in way] for way in masks],
            [q_img[None].double()],
        )
    want = out.numpy()[0].transpose(1, 2, 0)
    err = np.max(np.abs(logits[0, 0] - want)) / np.max(np.abs(want))
    assert err < tol.EXACT64, err
    np.testing.assert_array_equal(
        episode["query_labels"][0], official.query_label(q_lab, class_ids)
    )
    for n in range(2):
        np.testing.assert_array_equal(episode["support_fg"][n, 0], masks[n][0][0].numpy())
        np.testing.assert_array_equal(episode["support_bg"][n, 0], masks[n][0][1].numpy())


def test_make_episode_rejects_bad_input():
    img = np.zeros((20, 30, 3), np.uint8)
    lab = np.zeros((20, 30), np.uint8)
    with pytest.raises(ValueError, match=r"support \[0\]\[0\].*label map of the image's size"):
        episodes_lib.make_episode([[img]], [[lab[:10]]], [1], [img])
    with pytest.raises(ValueError, match="distinct class ids"):
        episodes_lib.make_episode([[img], [img]], [[lab], [lab]], [1, 1], [img])
    with pytest.raises(ValueError, match=r"query \[0\].*uint8 RGB"):
        episodes_lib.make_episode([[img]], [[lab]], [1], [img.astype(np.float32)])


@pytest.fixture(scope="module")
def run_41x37(tmp_path_factory):
    """A tiny training run at a non-default size (41 x 37), 2 steps."""
    root = tmp_path_factory.mktemp("run41")
    config = h.tiny_config(str(root / "data"), train__steps=2, train__image_every=0)
    config.data.auto_prepare = True
    config.data.image_size = (41, 37)
    trainer.train(config, str(root / "wd"))
    return root / "wd"


def test_load_model_from_a_workdir(run_41x37):
    model, variables = panet_jax.load_model(run_41x37)
    config = loading.load_run_config(run_41x37)
    assert tuple(config.data.image_size) == (41, 37)
    assert model.encoder.width == config.model.width == 1 / 16
    want = h.flat_params(loading.load_variables(run_41x37)["params"])
    got = h.flat_params(variables["params"])
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
    assert predictor.resolve_settings(run_41x37).image_size == (41, 37)
    assert predictor.resolve_settings(run_41x37, image_size=(64, 64)).image_size == (64, 64)


def test_evaluation_adopts_the_runs_network_but_keeps_its_head_choices(run_41x37):
    """The trained network's keys come from the run (with a warning); the head's prototypes
    per class and the compute dtype are the evaluation's own choice (the head has no params)."""
    from panet_jax.config import base_config

    config = base_config()
    config.model.width, config.model.prototypes_per_class, config.model.dtype = 1.0, 3, "bfloat16"
    warnings = loading.adopt_run_model_config(config, run_41x37)
    assert config.model.width == 1 / 16 and any("model.width=1.0" in w for w in warnings)
    assert config.model.prototypes_per_class == 3 and config.model.dtype == "bfloat16"
    assert not any("prototypes_per_class" in w or "dtype" in w for w in warnings)
    settings = predictor.resolve_settings(run_41x37)
    assert settings.prototypes_per_class == 1
    assert predictor.resolve_settings(run_41x37, prototypes_per_class=4).prototypes_per_class == 4


def _scene(rng, h, w):
    image = rng.integers(40, 120, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = True
    image[mask] = [220, 40, 40]
    return image, mask


def test_predict_and_segment_cli_read_the_run_config(run_41x37, tmp_path):
    """``panet_jax.predict(workdir)`` and ``segment.py --checkpoint=workdir`` use the run's
    41 x 37 (not 417 x 417) and give identical masks."""
    rng = np.random.default_rng(5)
    img, mask = _scene(rng, 60, 50)
    query, _ = _scene(rng, 45, 70)
    Image.fromarray(img).save(tmp_path / "s.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "s_mask.png")
    Image.fromarray(query).save(tmp_path / "q.png")
    (api,) = panet_jax.predict(run_41x37, [tmp_path / "s.png"], [tmp_path / "s_mask.png"],
                               [tmp_path / "q.png"])  # fmt: skip
    (at_417,) = panet_jax.predict(run_41x37, img, mask, query, image_size=(417, 417))
    assert not np.array_equal(api, at_417)  # the size really matters here
    cmd = [sys.executable, str(REPO / "experiments" / "segment.py"),
           f"--checkpoint={run_41x37}", f"--support={tmp_path / 's.png'}:{tmp_path / 's_mask.png'}",
           f"--query={tmp_path / 'q.png'}", f"--out_dir={tmp_path / 'out'}"]  # fmt: skip
    proc = subprocess.run(cmd, env=h.subprocess_env(1), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = np.asarray(Image.open(tmp_path / "out" / "q_mask.png"))
    np.testing.assert_array_equal(cli, api * 255)
    assert "orbax" not in proc.stderr.lower()  # no checkpoint chatter on a plain load


def test_segment_runs_from_an_npz_without_torch(tmp_path):
    """``segment.py`` with converted weights needs no PyTorch (its import is blocked here)."""
    rng = np.random.default_rng(6)
    params = {name: {"kernel": rng.normal(0, 0.1, k).astype(np.float32),
                     "bias": np.zeros(b, np.float32)}
              for name, (k, b) in vgg_weights.vgg16_param_shapes(1 / 16).items()}  # fmt: skip
    vgg_weights.save_npz(params, tmp_path / "enc.npz")
    img, mask = _scene(rng, 40, 40)
    Image.fromarray(img).save(tmp_path / "s.png")
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "m.png")
    code = (
        "import runpy, sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        f"sys.argv = ['segment.py', '--checkpoint={tmp_path / 'enc.npz'}',\n"
        f"            '--support={tmp_path / 's.png'}:{tmp_path / 'm.png'}',\n"
        f"            '--query={tmp_path / 's.png'}', '--out_dir={tmp_path / 'out'}',\n"
        "            '--image_size=33,33']\n"
        f"runpy.run_path({str(REPO / 'experiments' / 'segment.py')!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=h.subprocess_env(1),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "s_mask.png").is_file()
    assert preprocess.resize_label(mask, (33, 33)).any()
