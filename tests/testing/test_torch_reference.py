"""panet_jax.model vs a plain-PyTorch re-statement of the official PANet
(panet_jax/testing/torch_reference.py).

Same weights, same episodes: logits, L_seg, L_PAR, the total loss and gradients must agree.
Exactness (every layer's kernel and bias gradient included) is proved in float64 (jax x64,
torch double). The float32 twin checks only what float32 rounding cannot flip: the forward
outputs and losses (ReLU and max are continuous), the gradient w.r.t. the encoder output
(the head is smooth away from PAR argmax ties, which the episodes avoid) and conv5_3's
gradients (no ReLU after it; its input is a forward quantity). Gradients of earlier layers pass
through ReLU signs and max-pool winners that a 1e-6 difference can flip, so two correct float32
implementations legitimately differ there by up to ~1e-2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tolerances as tol  # noqa: E402

from panet_jax.model import PANet, panet_head, panet_loss  # noqa: E402
from panet_jax.models.vgg import (  # noqa: E402
    VGG16_LAYERS,
    VGG16Encoder,
    output_size,
    scaled_channels,
)
from panet_jax.models.weights import vgg as vgg_weights  # noqa: E402
from panet_jax.testing import torch_reference as tr  # noqa: E402

pytestmark = pytest.mark.torch

WIDTH = 1 / 8
HW = (41, 33)  # non-square; features 6 x 5
# float32 forward error: 13 convs, the largest fan-in 9 x 64 at width 1/8 (~1.9e-5 relative).
FWD32 = tol.layers_rel(13, 9 * scaled_channels(512, WIDTH))


def make_episodes(n_ways: int, n_shots: int, n_queries: int, batch: int, hw: tuple[int, int],
                  seed: int) -> dict[str, np.ndarray]:  # fmt: skip
    """Batched episodes with rectangle objects, class-coloured noisy images, a row of 255
    (VOC boundary) pixels per image, and (for N > 1) other episode classes in the supports."""
    rng = np.random.default_rng(seed)
    h, w = hw
    colours = rng.standard_normal((n_ways + 2, 3))  # bg, ways..., 255

    def label_map(classes: list[int]) -> np.ndarray:
        lab = np.zeros((h, w), np.int32)
        for c in classes:
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            dy, dx = rng.integers(h // 4, h // 2 + 1), rng.integers(w // 4, w // 2 + 1)
            lab[y0 : y0 + dy, x0 : x0 + dx] = c
        lab[rng.integers(0, h), :] = 255
        return lab

    def image(lab: np.ndarray) -> np.ndarray:
        idx = np.where(lab == 255, n_ways + 1, lab)
        return (colours[idx] + 0.7 * rng.standard_normal((h, w, 3))).astype(np.float32)

    ways = np.arange(1, n_ways + 1)
    keys = ("support_images", "support_fg", "support_bg", "query_images", "query_labels")
    out: dict[str, list] = {k: [] for k in (*keys, "class_ids")}
    for _ in range(batch):
        s_img, s_fg, s_bg = [], [], []
        for n in range(n_ways):
            imgs, fgs, bgs = [], [], []
            for _ in range(n_shots):
                others = [c for c in ways if c != n + 1 and rng.random() < 0.5]
                lab = label_map([*others, n + 1])
                imgs.append(image(lab))
                fgs.append((lab == n + 1).astype(np.float32))
                bgs.append(((lab != n + 1) & ~np.isin(lab, ways)).astype(np.float32))
            s_img.append(imgs)
            s_fg.append(fgs)
            s_bg.append(bgs)
        q_img, q_lab = [], []
        for _ in range(n_queries):
            present = [c for c in ways if rng.random() < 0.7] or [int(rng.choice(ways))]
            lab = label_map(present)
            q_img.append(image(lab))
            q_lab.append(lab)
        for key, val in zip(out, (s_img, s_fg, s_bg, q_img, q_lab, ways), strict=True):
            out[key].append(val)
    episodes = {k: np.asarray(v) for k, v in out.items()}
    episodes["class_ids"] = episodes["class_ids"].astype(np.int32)
    return episodes


def test_width_rounding_matches_vgg():
    for width in (1.0, 0.5, 1 / 3, 1 / 8, 1 / 16, 0.1, 0.01, 0.003):
        for ch in (64, 128, 256, 512):
            assert tr.scaled_channels(ch, width) == scaled_channels(ch, width)


def test_reference_encoder_layout():
    enc = tr.Encoder(width=1.0)
    keys = list(enc.state_dict())
    want = [f"features.{i}.{p}" for i in vgg_weights.TORCHVISION_CONV_INDICES
            for p in ("weight", "bias")]  # fmt: skip
    assert keys == want
    assert len(enc.features) == 29 and not isinstance(enc.features[-1], torch.nn.ReLU)
    small = tr.Encoder(width=1 / 16)
    with torch.no_grad():
        out = small(torch.zeros(1, 3, 417, 417))
    assert tuple(out.shape) == (1, 32, 53, 53) and output_size(417) == 53


CASES = [(1, 1, 1, False), (1, 2, 1, False), (2, 1, 1, False), (2, 2, 2, False), (2, 1, 1, True)]


def _case(n_ways, n_shots, n_queries, copy_way, dtype):
    """Episodes, the torch reference (trained mode, PAR on) after backward, and its outputs.

    ``copy_way``: in episode 0 way 2's supports are copies of way 1's, so both prototypes and
    scores tie exactly; argmax picks way 1 (both frameworks take the first maximum) and PAR
    skips way 2 while still dividing by N = 2."""
    batch = 2
    episodes = make_episodes(n_ways, n_shots, n_queries, batch, HW, seed=10 * n_ways + n_shots)
    if copy_way:
        for key in ("support_images", "support_fg", "support_bg"):
            episodes[key][0, 1] = episodes[key][0, 0]
    torch.manual_seed(n_ways * 7 + n_shots)
    ref = tr.FewShotSeg(width=WIDTH, align=True).train()
    with torch.no_grad():
        for m in tr.conv_modules(ref.encoder):
            m.bias.uniform_(-0.1, 0.1)
    if dtype == np.float64:
        ref = ref.double()
    total, seg, par, output = tr.official_loss(ref, episodes, dtype=dtype)
    total.backward()
    losses = tuple(float(t.detach()) for t in (total, seg, par))
    return episodes, ref, losses, output


def _jax_value_and_grads(ref, episodes, dtype):
    """panet_jax's loss, metrics, logits, scores, params grads and feature grads."""
    jdtype = jnp.dtype(dtype)
    params = {"encoder": vgg_weights.torchvision_state_to_params(
        ref.encoder.state_dict(), width=WIDTH)}  # fmt: skip
    params = jax.tree.map(lambda x: jnp.asarray(x, jdtype), params)
    model = PANet(VGG16Encoder(width=WIDTH, dtype=jdtype, param_dtype=jdtype))
    episodes = {
        k: (np.asarray(v, dtype) if v.dtype.kind == "f" else v) for k, v in episodes.items()
    }

    def loss_fn(p):
        out = model.apply({"params": p}, episodes)
        loss, metrics = panet_loss(out, episodes)
        return loss, (metrics, out["logits"], out["scores"])

    def head_loss(supp, qry):
        out = panet_head(supp, qry, episodes["support_fg"], episodes["support_bg"])
        return panet_loss(out, episodes)[0]

    (loss, (metrics, logits, scores)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params
    )
    supp, qry = model.apply({"params": params}, episodes, method=PANet.features)
    feature_grads = jax.jit(jax.grad(head_loss, argnums=(0, 1)))(supp, qry)
    return loss, metrics, logits, scores, grads, feature_grads


def _check_forward(episodes, output, logits, scores, metrics, loss, losses, copy_way, rtol):
    batch, n_queries = episodes["query_labels"].shape[:2]
    n_ways = episodes["class_ids"].shape[1]
    predicted = [set(np.unique(np.argmax(scores[b], axis=-1)).tolist()) for b in range(batch)]
    if copy_way:
        assert predicted == [{0, 1}, {0, 1, 2}]  # way 2 is skipped in episode 0 only
    h, w = HW
    want_logits = output.detach().numpy().reshape(n_queries, batch, 1 + n_ways, h, w)
    want_logits = want_logits.transpose(1, 0, 3, 4, 2)  # -> [B, Q, H, W, 1 + N]
    assert logits.shape == want_logits.shape
    assert tol.rel_err(logits, want_logits) < rtol
    total, seg, par = losses
    assert par > 0  # PAR is exercised
    for got, want in ((metrics["loss_seg"], seg), (metrics["loss_par"], par), (loss, total)):
        assert abs(float(got) - want) / abs(want) < rtol, (float(got), want)


def _check_feature_grads(ref, episodes, feature_grads, rtol):
    batch, n_ways, n_shots = episodes["support_fg"].shape[:3]
    want_supp, want_qry = tr.features_to_jax(ref.last_features.grad, n_ways, n_shots, batch)
    assert tol.rel_err(feature_grads[0], want_supp) < rtol
    assert tol.rel_err(feature_grads[1], want_qry) < rtol


@pytest.mark.parametrize("n_ways,n_shots,n_queries,copy_way", CASES)
def test_panet_matches_official_float64(n_ways, n_shots, n_queries, copy_way):
    """Exactness in float64: forward, losses and the gradient of every kernel and bias."""
    with jax.enable_x64(True):
        episodes, ref, losses, output = _case(n_ways, n_shots, n_queries, copy_way, np.float64)
        loss, metrics, logits, scores, grads, feature_grads = _jax_value_and_grads(
            ref, episodes, np.float64
        )
        assert logits.dtype == jnp.float64 and loss.dtype == jnp.float64
    _check_forward(episodes, output, logits, scores, metrics, loss, losses, copy_way, tol.EXACT64)
    _check_feature_grads(ref, episodes, feature_grads, tol.EXACT64)
    convs = tr.conv_modules(ref.encoder)
    for idx, (name, _, _) in enumerate(VGG16_LAYERS):
        want_k = tr.oihw_to_hwio(convs[idx].weight.grad)
        assert tol.rel_err(grads["encoder"][name]["kernel"], want_k) < tol.EXACT64, name
        want_b = convs[idx].bias.grad.numpy()
        assert tol.rel_err(grads["encoder"][name]["bias"], want_b) < tol.EXACT64, name


@pytest.mark.parametrize("n_ways,n_shots,n_queries,copy_way", CASES)
def test_panet_matches_official_float32(n_ways, n_shots, n_queries, copy_way):
    """The training dtype: what float32 rounding cannot flip (see the module docstring)."""
    episodes, ref, losses, output = _case(n_ways, n_shots, n_queries, copy_way, np.float32)
    loss, metrics, logits, scores, grads, feature_grads = _jax_value_and_grads(
        ref, episodes, np.float32
    )
    # Forward outputs and losses: a few times the forward error (logits are 20 x cosine of
    # features, the CE is smooth in the logits).
    _check_forward(episodes, output, logits, scores, metrics, loss, losses, copy_way, 5 * FWD32)
    # Backward through the smooth head and conv5_3 doubles the path the error travels.
    _check_feature_grads(ref, episodes, feature_grads, 10 * FWD32)
    conv5_3 = tr.conv_modules(ref.encoder)[-1]
    want_k = tr.oihw_to_hwio(conv5_3.weight.grad)
    assert tol.rel_err(grads["encoder"]["conv5_3"]["kernel"], want_k) < 10 * FWD32
    assert tol.rel_err(grads["encoder"]["conv5_3"]["bias"], conv5_3.bias.grad.numpy()) < 10 * FWD32
