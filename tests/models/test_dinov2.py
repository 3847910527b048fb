"""panet_jax.models.dinov2 vs a PyTorch DINOv2 (transformers' Dinov2Model /
Dinov2WithRegistersModel with the official position-embedding resampling,
panet_jax/testing/torch_dinov2.py), loaded with the same official-key state dict.

Exactness in float64 (jax x64, torch double) on small random models: 2 blocks, embed dim 24,
the hub's 37 x 37 stored position grid, odd inputs whose grids need resampling; MLP and SwiGLU,
with and without registers. The package's own resampling is shown to differ from the official
one where it does.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import numpy_reference as npref  # noqa: E402
import tolerances as tol  # noqa: E402

from panet_jax.model import PANet  # noqa: E402
from panet_jax.models import (  # noqa: E402
    dinov2,
    names,
    registry,
)
from panet_jax.models.interpolation import bicubic_matrix  # noqa: E402
from panet_jax.models.weights import dinov2 as weights  # noqa: E402
from panet_jax.testing import torch_dinov2 as ref  # noqa: E402
from panet_jax.train import optim  # noqa: E402

pytestmark = pytest.mark.torch

ODD_HW = (98, 70)  # 7 x 5 patches: resampled from 37 x 37, non-square
SQUARE_HW = (84, 84)  # 6 x 6: square but not the stored grid, resampled too
VARIANTS = ("dinov2_vits14", "dinov2_vits14_reg", "dinov2_vitg14", "dinov2_vitg14_reg")


def small_spec(name: str) -> dinov2.ViTSpec:
    """The hub model ``name``'s layout (FFN, registers, resampling) at 2 blocks, dim 24."""
    return dataclasses.replace(dinov2.SPECS[name], embed_dim=24, num_heads=3, depth=2)


def random_state(spec: dinov2.ViTSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """A random official-key state dict (float32 values, as the published files; norms near
    1, LayerScale away from 1, so every parameter matters)."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in weights.official_shapes(spec).items():
        scale = 0.3 if key.endswith("weight") else 0.1
        value = rng.standard_normal(shape) * scale
        if re.search(r"norm[12]?\.weight$|gamma$", key):
            value += 1.0
        state[key] = value.astype(np.float32)
    state["mask_token"] = np.zeros((1, spec.embed_dim), np.float32)
    return state


def jax_features(spec, state, images, dtype=jnp.float64, layer=-1) -> np.ndarray:
    """The encoder's features in ``dtype`` (float64 under x64)."""
    params = weights.state_to_params(state, "test", "test", spec)
    encoder = dinov2.DinoV2Encoder(spec, layer, dtype=dtype, param_dtype=dtype)
    with jax.enable_x64(dtype == jnp.float64):
        params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
        return np.asarray(jax.jit(encoder.apply)({"params": params}, jnp.asarray(images, dtype)))


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("offset", [0.0, 0.1])
def test_bicubic_matrix_equals_torch_interpolate(antialias, offset):
    """Down- and upsampling, square and not, by size or by the official (g + offset) / M
    scale factor; an unchanged axis with antialias is a copy in both."""
    x = torch.as_tensor(np.random.default_rng(1).standard_normal((1, 2, 9, 9)))
    for out in [(3, 7), (7, 4), (9, 9), (12, 20), (1, 2)]:
        factors = tuple((o + offset) / 9 for o in out) if offset else (None, None)
        kw = {"scale_factor": factors} if offset else {"size": out}
        want = torch.nn.functional.interpolate(x, mode="bicubic", antialias=antialias,
                                               align_corners=False, **kw).numpy()  # fmt: skip
        rh, rw = (bicubic_matrix(9, o, f, antialias) for o, f in zip(out, factors, strict=True))
        got = np.einsum("hi,wj,bcij->bchw", rh, rw, x.numpy())
        assert got.shape == want.shape
        assert tol.rel_err(got, want) < tol.EXACT64, (out, tol.rel_err(got, want))


@pytest.mark.parametrize("name", VARIANTS)
def test_features_equal_pytorch_float64(name):
    spec, state = small_spec(name), random_state(small_spec(name))
    model = ref.build_reference(spec, state)
    rng = np.random.default_rng(2)
    for hw in (ODD_HW, SQUARE_HW):
        images = rng.standard_normal((2, *hw, 3))
        got, want = jax_features(spec, state, images), ref.reference_features(model, images)
        assert got.shape == (2, hw[0] // 14, hw[1] // 14, 24)
        assert tol.rel_err(got, want) < tol.EXACT64, (hw, tol.rel_err(got, want))
    # get_intermediate_layers(n=[0], norm=True): block 0's tokens under the final norm.
    got = jax_features(spec, state, images, layer=0)
    assert tol.rel_err(got, ref.reference_features(model, images, layer=0)) < tol.EXACT64


def test_stored_grid_is_used_as_is():
    """At 518 x 518 the official code adds the stored embeddings unchanged (resampling 37 ->
    37 with the 0.1 offset would move them): so does the encoder."""
    spec = small_spec("dinov2_vits14")
    assert dinov2.pos_embed_grid(spec, (518, 518)) is None
    assert dinov2.pos_embed_grid(spec, (518, 532)) is not None  # 37 x 38: resampled
    r = bicubic_matrix(37, 37, 37.1 / 37, False)
    assert np.abs(r - np.eye(37)).max() > 1e-3
    state = random_state(spec, seed=3)
    images = np.random.default_rng(3).standard_normal((1, 518, 518, 3))
    want = ref.reference_features(ref.build_reference(spec, state), images)
    assert tol.rel_err(jax_features(spec, state, images), want) < tol.EXACT64


def test_transformers_resampling_differs_from_official():
    """transformers' Dinov2Model resamples to the grid size (no 0.1 offset): not the official
    dinov2_vit*14 rule. Its Dinov2WithRegistersModel is the official _reg rule, up to the
    float32 rounding of the resampled embeddings (which both it and the official code do)."""
    rng = np.random.default_rng(4)
    images = rng.standard_normal((1, *ODD_HW, 3))
    for name, agrees in (("dinov2_vits14", False), ("dinov2_vits14_reg", True)):
        spec = small_spec(name)
        state = random_state(spec, seed=4)
        package = ref.build_reference(spec, state, official_interpolation=False)
        theirs = ref.reference_features(package, images)
        err = tol.rel_err(theirs, jax_features(spec, state, images))
        # float32 resampling: ~u32 relative on the embeddings, through 2 blocks' 24-term dots
        assert (err < tol.layers_rel(8, 24)) == agrees, (name, err)
        if not agrees:
            assert err > 1e-3


def test_float32_close_to_float64():
    spec = small_spec("dinov2_vitg14_reg")
    state = random_state(spec, seed=5)
    images = np.random.default_rng(5).standard_normal((1, *ODD_HW, 3))
    want = jax_features(spec, state, images, jnp.float64)
    got = jax_features(spec, state, images, jnp.float32)
    # patch embedding (fan-in 588), then per block 4 linears, 2 attention products, 2 norms
    assert tol.rel_err(got, want) < tol.layers_rel(1 + 2 * 8, 588)


def test_input_must_be_whole_patches():
    encoder = dinov2.DinoV2Encoder(small_spec("dinov2_vits14"))
    with pytest.raises(ValueError, match=r"99x70: .*multiples of the patch size 14"):
        encoder.init(jax.random.key(0), jnp.zeros((1, 99, 70, 3)))


def test_panet_masks_equal_pytorch_and_numpy_head():
    """PANet over the ViT = PyTorch DINOv2 features + the NumPy restatement of the official
    head: same logits, same masks (2-way 2-shot, 1 query)."""
    name = "dinov2_vits14_reg"
    spec, state = small_spec(name), random_state(small_spec(name), seed=6)
    rng = np.random.default_rng(6)
    n, k, hw = 2, 2, ODD_HW
    supp = rng.standard_normal((n, k, *hw, 3))
    qry = rng.standard_normal((1, *hw, 3))
    fg = np.zeros((n, k, *hw))
    fg[0, :, 10:60, 5:40], fg[1, :, 50:95, 30:68] = 1, 1
    bg = 1 - fg
    model = ref.build_reference(spec, state)
    supp_fts = ref.reference_features(model, supp.reshape(-1, *hw, 3)).reshape(n, k, 7, 5, 24)
    qry_fts = ref.reference_features(model, qry)
    _, want = npref.episode_forward(supp_fts, fg, bg, qry_fts)
    episodes = {"support_images": supp[None], "query_images": qry[None],
                "support_fg": fg[None], "support_bg": bg[None]}  # fmt: skip
    with jax.enable_x64(True):
        net = PANet(dinov2.DinoV2Encoder(spec, dtype=jnp.float64, param_dtype=jnp.float64))
        params = {"encoder": weights.state_to_params(state, name, "test", spec)}
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        got = np.asarray(net.apply({"params": params}, episodes)["logits"][0])
    assert tol.rel_err(got, want) < tol.EXACT64
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
    assert len(np.unique(want.argmax(-1))) == 3  # both ways and the background win somewhere


def test_frozen_parts_get_no_update():
    """``config.model.frozen`` names ViT parts; the optimiser leaves exactly those unchanged."""
    name = "dinov2_vits14_reg"
    groups = names.frozen_layers(name, "patch_embed, blocks_2-4, norm")
    assert groups == ("patch_embed", "cls_token", "pos_embed", "register_tokens",
                      "blocks_2", "blocks_3", "blocks_4", "norm")  # fmt: skip
    assert names.frozen_layers(name, "all") == names.layer_names(name)
    for bad, match in (("blocks_12", "outside blocks_0-11"), ("head", "not a ViT part")):
        with pytest.raises(ValueError, match=match):
            names.frozen_layers(name, bad)
    encoder = registry.build_encoder(name, 1 / 16, jnp.float32, jnp.float32)
    shapes = jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 28, 28, 3)))
    params = {"encoder": jax.tree.map(lambda s: jnp.zeros(s.shape), shapes["params"])}
    config = type("O", (), {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0,
                            "milestones": (), "gamma": 0.1})()  # fmt: skip
    tx = optim.make_optimizer(config, groups)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for top, tree in updates["encoder"].items():
        moved = any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(tree))
        assert moved == (top not in groups), top
