"""DINOv2 through the commands, with small random weight files in the official format:
``evaluate.py --config=configs/dinov2.py`` training-free on the prepared synthetic set,
``segment.py --checkpoint=<.pth>`` writing masks, ``predict`` taking the three formats alike,
a config / file mismatch refused, and a short fine-tuning run with frozen ViT parts.

The random ViT's mIoU is a smoke check of the plumbing only; it says nothing about accuracy.
"""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import train_helpers as h
from PIL import Image

torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from panet_jax import config as config_base  # noqa: E402
from panet_jax.data import builders  # noqa: E402
from panet_jax.inference import loading, predictor  # noqa: E402
from panet_jax.models import dinov2  # noqa: E402
from panet_jax.models.weights import dinov2 as w  # noqa: E402
from panet_jax.train import state as ts  # noqa: E402
from panet_jax.train import steps  # noqa: E402

pytestmark = pytest.mark.torch

REPO = Path(__file__).resolve().parents[1]
NAME, WIDTH = "dinov2_vits14", 1 / 16
SPEC = dinov2.scaled_spec(dinov2.SPECS[NAME], WIDTH)
# Small programs: XLA's heavy optimisations only cost compile time here (as tests/conftest.py).
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
           JAX_DISABLE_MOST_OPTIMIZATIONS="1")  # fmt: skip


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "experiments" / script), *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The same random ViT-S/14 (width 1/16) as official .pth, Hub .safetensors and .npz."""
    from panet_jax.testing import torch_dinov2 as ref

    d = tmp_path_factory.mktemp("dinov2")
    rng = np.random.default_rng(0)
    state = {k: (rng.standard_normal(s) * 0.2).astype(np.float32)
             for k, s in w.official_shapes(SPEC).items()}  # fmt: skip
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, d / "vits14.pth")
    safetensors_numpy.save_file(ref.official_to_hub_file(state), d / "model.safetensors")
    w.save_npz(w.state_to_params(state, NAME, "test", SPEC), SPEC, d / "vits14.npz")
    return d


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    builders.prepare("synthetic_fss", data_dir=d, config="tiny")
    return str(d)


@pytest.mark.slow
def test_evaluate_training_free(weights, data_dir, tmp_path):
    proc = _run(
        "evaluate.py", "--config=configs/dinov2.py:dataset=synthetic,size=28,encoder=dinov2_vits14",
        f"--config.model.width={WIDTH}", "--config.data.builder_config=tiny",
        f"--config.data.data_dir={data_dir}", "--config.eval.runs=1", "--config.eval.episodes=6",
        "--config.eval.num_images=0", f"--checkpoint={weights / 'vits14.pth'}",
        f"--workdir={tmp_path}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = glob.glob(str(tmp_path / "**" / "results.json"), recursive=True)
    r = json.loads(Path(results).read_text())
    assert 0.0 <= r["miou_mean"] <= 1.0 and math.isfinite(r["fbiou_mean"])


def test_a_file_of_another_model_is_refused(weights):
    c = config_base.base_config()
    c.model.encoder, c.model.width = "dinov2_vitb14", WIDTH
    variables = loading.as_panet_variables(loading.load_variables(weights / "vits14.npz"))
    with pytest.raises(ValueError, match=r"holds a dinov2_vits14 encoder .* for dinov2_vitb14"):
        loading.check_weights_encoder(c, variables, weights / "vits14.npz")
    c.model.encoder = NAME
    loading.check_weights_encoder(c, variables, weights / "vits14.npz")
    model, _ = loading.load_model(weights / "vits14.pth")  # the encoder recognised from the file
    assert isinstance(model.encoder, dinov2.DinoV2Encoder) and model.encoder.spec == SPEC


def _scene(rng, h, w, box):
    image = rng.integers(60, 120, (h, w, 3), dtype=np.uint8)
    y0, x0, y1, x1 = box
    image[y0:y1, x0:x1] = (np.arange(x1 - x0) // 2 % 2 * 150 + 80).astype(np.uint8)[None, :, None]
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 255
    return image, mask


@pytest.mark.slow
def test_segment_and_predict_take_every_format(weights, tmp_path):
    rng = np.random.default_rng(1)
    img, mask = _scene(rng, 60, 50, (10, 8, 40, 30))
    query, _ = _scene(rng, 45, 70, (5, 20, 30, 60))
    Image.fromarray(img).save(tmp_path / "s.png")
    Image.fromarray(mask).save(tmp_path / "s_mask.png")
    Image.fromarray(query).save(tmp_path / "q.png")
    out = tmp_path / "out"
    proc = _run(
        "segment.py", f"--checkpoint={weights / 'vits14.pth'}",
        f"--support={tmp_path / 's.png'}:{tmp_path / 's_mask.png'}",
        f"--query={tmp_path / 'q.png'}", f"--out_dir={out}", "--image_size=42,56",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = np.asarray(Image.open(out / "q_mask.png")) // 255
    assert written.shape == (45, 70)
    masks = [
        predictor.predict(weights / f, [tmp_path / "s.png"], [tmp_path / "s_mask.png"],
                          [tmp_path / "q.png"], image_size=(42, 56))[0]
        for f in ("model.safetensors", "vits14.npz")  # the .pth: segment.py above
    ]  # fmt: skip
    for m in masks:
        np.testing.assert_array_equal(m, written)
    settings = predictor.resolve_settings(weights / "vits14.npz")
    assert settings.image_size == (518, 518)  # the hub models' size when none is given


@pytest.mark.slow
def test_fine_tuning_keeps_frozen_parts(data_dir):
    """A few PAR training steps of a small random ViT with 2 prototypes per class: finite
    losses, the frozen parts bit-identical, the rest moved."""
    c = h.tiny_config(data_dir, model__encoder=NAME, model__width=WIDTH,
                      model__frozen="patch_embed,blocks_0-9", model__prototypes_per_class=2,
                      data__image_size=(28, 28), train__per_device_batch=1)  # fmt: skip
    config_base.validate(c, train=True, evaluate=False)
    batch = h.random_batch(0, 1, size=28)
    step = jax.jit(steps.make_train_step(c, axis_name=None))
    first = ts.create_train_state(c, jax.random.key(0))
    state = first
    for _ in range(2):
        state, m = step(state, batch)
        assert math.isfinite(float(m["loss"]))
    for top in first.params["encoder"]:
        same = jax.tree.all(jax.tree.map(np.array_equal, first.params["encoder"][top],
                                         state.params["encoder"][top]))  # fmt: skip
        assert same == (top in ("patch_embed", "cls_token", "pos_embed")
                        or top in {f"blocks_{i}" for i in range(10)}), top  # fmt: skip
