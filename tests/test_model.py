"""``panet_jax.model`` (``PANet`` + ``panet_loss``) against the float64 NumPy reference.

The reference (``numpy_reference.batch_loss``) mimics the official ``train.py`` for a batch:
``L_seg`` is one ``CrossEntropyLoss(ignore_index=255)`` over all valid query pixels of the
batch (not a mean of per-episode means), ``L_PAR = sum_episodes(alignLoss) / B``, and
``total = L_seg + lambda * L_PAR``.

To feed exact features through ``PANet`` a table encoder returns stored feature maps, chosen
by an id painted into each image; gradients w.r.t. the table are gradients w.r.t. the support
and query features, and are checked against float64 central differences of the reference.

Every equality of formulations has a float64 twin (``jax.enable_x64``, gate ``EXACT64``);
float32 results are compared normwise with ``RTOL`` derived from rounding below.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
import tolerances as tol

from panet_jax import model as model_lib
from panet_jax.models import VGG16Encoder

# The largest reduction is a 37 x 49 = 1813-pixel pooling (~sqrt(1813) * 2^-24 = 2.5e-6
# relative) and the longest chain four of them (pool, cosine, resize, CE): normwise RTOL.
RTOL = 4 * tol.dot_rel(37 * 49)


def _close(got, want, rtol=RTOL, err_msg=""):
    """Normwise: ``max |got - want| <= rtol * max(max |want|, 1)``."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape and np.all(np.isfinite(got)), (got.shape, want.shape)
    err = float(np.max(np.abs(got - want)))
    assert err <= rtol * max(float(np.max(np.abs(want))), 1.0), (err_msg, err)


_loss_jit = jax.jit(model_lib.panet_loss, static_argnames=("align", "scale", "axis_name"))


@functools.partial(jax.jit, static_argnames=("net",))
def _table_value_and_grad(net, params, episodes, par_weight=1.0):
    """``((loss, metrics), d loss / d params)``; one compile per network and shapes."""

    def loss_fn(p):
        return model_lib.panet_loss(net.apply(p, episodes), episodes, par_weight=par_weight)

    return jax.value_and_grad(loss_fn, has_aux=True)(params)


class TableEncoder(nn.Module):
    """``images [M, H, W, 3] -> table[id]`` where ``id`` is the value at pixel (0, 0, 0)."""

    n_rows: int
    feat_hw: tuple[int, int]
    channels: int

    @nn.compact
    def __call__(self, images):
        table = self.param(
            "table", nn.initializers.zeros, (self.n_rows, *self.feat_hw, self.channels)
        )
        return table[jnp.round(images[:, 0, 0, 0]).astype(jnp.int32)]


def _label_maps(rng, shape, class_ids, p_ignore):
    values = np.array([0, *class_ids, 11, 12])
    small = rng.choice(values, size=(*shape[:-2], 4, 5))
    rows = np.arange(shape[-2]) * 4 // shape[-2]
    cols = np.arange(shape[-1]) * 5 // shape[-1]
    label = small[..., rows[:, None], cols[None, :]]
    label = np.where(rng.random(shape) < 0.2, rng.choice(values, size=shape), label)
    return np.where(rng.random(shape) < p_ignore, 255, label).astype(np.int32)


def _batch(
    seed,
    n_batch,
    n_ways,
    n_shots,
    n_queries,
    feat_hw=(5, 7),
    image_hw=(17, 23),
    channels=8,
    p_ignore=(0.05, 0.6),
    dtype=np.float32,
):
    """A batch of episodes (images carry table ids) and its features (float32 values, in
    ``dtype``).

    Episodes get very different ignore fractions, so a mean of per-episode CE means differs
    from the pixel mean over the batch.
    """
    rng = np.random.default_rng(seed)
    b, n, k, q = n_batch, n_ways, n_shots, n_queries
    fg = np.zeros((b, n, k, *image_hw), np.float32)
    bg = np.zeros_like(fg)
    qlabels = np.zeros((b, q, *image_hw), np.int32)
    class_ids = np.zeros((b, n), np.int32)
    for e in range(b):
        cids = [int(c) for c in rng.choice(np.arange(1, 11), size=n, replace=False)]
        class_ids[e] = cids
        raw = _label_maps(rng, (n, k, *image_hw), cids, 0.1)
        for w in range(n):
            for s in range(k):
                fg[e, w, s], bg[e, w, s] = ref.get_mask(raw[w, s], cids[w], cids)
        raw_q = _label_maps(rng, (q, *image_hw), cids, p_ignore[e % len(p_ignore)])
        # Official fewShot query label: 255 kept, way j -> j + 1, everything else 0.
        qlabels[e] = np.where(raw_q == 255, 255, 0)
        for w, c in enumerate(cids):
            qlabels[e][raw_q == c] = w + 1
    supp_ids = np.arange(b * n * k, dtype=np.float32).reshape(b, n, k)
    qry_ids = b * n * k + np.arange(b * q, dtype=np.float32).reshape(b, q)
    episodes = {
        "support_images": np.broadcast_to(
            supp_ids[..., None, None, None], (b, n, k, *image_hw, 3)
        ).astype(np.float32),
        "support_fg": fg,
        "support_bg": bg,
        "query_images": np.broadcast_to(
            qry_ids[..., None, None, None], (b, q, *image_hw, 3)
        ).astype(np.float32),
        "query_labels": qlabels,
        "class_ids": class_ids,
    }
    supp = rng.normal(size=(b, n, k, *feat_hw, channels)).astype(np.float32).astype(dtype)
    qry = rng.normal(size=(b, q, *feat_hw, channels)).astype(np.float32).astype(dtype)
    if dtype != np.float32:
        episodes = {
            k: (v.astype(dtype) if v.dtype == np.float32 else v) for k, v in episodes.items()
        }
    return episodes, supp, qry


def _table(supp, qry):
    c = supp.shape[-1]
    h, w = supp.shape[-3:-1]
    return np.concatenate([supp.reshape(-1, h, w, c), qry.reshape(-1, h, w, c)])


def _table_model(supp, qry):
    table = _table(supp, qry)
    net = model_lib.PANet(TableEncoder(table.shape[0], table.shape[1:3], table.shape[3]))
    return net, {"params": {"encoder": {"table": jnp.asarray(table)}}}


def _ref_outputs(episodes, supp, qry):
    """Module outputs built by hand from the reference forward pass (in the features' dtype)."""
    preds, logits = zip(
        *[
            ref.episode_forward(
                supp[e], episodes["support_fg"][e], episodes["support_bg"][e], qry[e]
            )
            for e in range(supp.shape[0])
        ],
        strict=True,
    )
    return {
        "logits": np.stack(logits).astype(supp.dtype),
        "scores": np.stack(preds).astype(supp.dtype),
        "support_features": supp,
        "query_features": qry,
    }


def _ref_loss(episodes, supp, qry, **kw):
    return ref.batch_loss(
        supp, episodes["support_fg"], episodes["support_bg"], qry, episodes["query_labels"], **kw
    )


def _check_metrics(metrics, want_total, want_seg, want_par, rtol=RTOL):
    for key, want in (("loss", want_total), ("loss_seg", want_seg), ("loss_par", want_par)):
        _close(float(metrics[key]), want, rtol, err_msg=key)


def _argmax_margin(scores):
    s = np.sort(np.asarray(scores, np.float64), axis=-1)
    return float(np.min(s[..., -1] - s[..., -2]))


@pytest.mark.parametrize("par_weight", [1.0, 0.3])
@pytest.mark.parametrize("n_ways,n_shots,n_queries", [(1, 1, 1), (2, 1, 2), (1, 5, 2), (2, 5, 1)])
def test_panet_loss_matches_reference(n_ways, n_shots, n_queries, par_weight):
    episodes, supp, qry = _batch(n_ways * 10 + n_shots + n_queries, 2, n_ways, n_shots, n_queries)
    outputs = _ref_outputs(episodes, supp, qry)
    assert _argmax_margin(outputs["scores"]) > 1e-4  # same PAR pseudo-masks on both sides
    loss, metrics = _loss_jit(outputs, episodes, par_weight=par_weight)
    want_total, want_seg, want_par = _ref_loss(episodes, supp, qry, par_weight=par_weight)
    assert want_par > 0.1
    _check_metrics(metrics, want_total, want_seg, want_par)
    _close(float(loss), want_total)
    # L_seg is a pixel mean over the batch; the mean of per-episode means is different here.
    per_episode = [
        ref.cross_entropy(outputs["logits"][e], episodes["query_labels"][e]) for e in range(2)
    ]
    assert abs(np.mean(per_episode) - want_seg) > 1e-3


@pytest.mark.parametrize("n_ways,n_shots,n_queries", [(1, 1, 1), (2, 1, 2), (1, 5, 2), (2, 5, 1)])
def test_panet_loss_matches_reference_float64(n_ways, n_shots, n_queries):
    episodes, supp, qry = _batch(
        n_ways * 10 + n_shots + n_queries, 2, n_ways, n_shots, n_queries, dtype=np.float64
    )
    outputs = _ref_outputs(episodes, supp, qry)
    with jax.enable_x64(True):
        loss, metrics = _loss_jit(outputs, episodes, par_weight=0.3)
        assert loss.dtype == jnp.float64
    _check_metrics(metrics, *_ref_loss(episodes, supp, qry, par_weight=0.3), rtol=tol.EXACT64)


def test_panet_loss_without_alignment():
    episodes, supp, qry = _batch(5, 2, 2, 2, 1)
    outputs = _ref_outputs(episodes, supp, qry)
    loss, metrics = _loss_jit(outputs, episodes, align=False)
    want_total, want_seg, _ = _ref_loss(episodes, supp, qry, align=False)
    _check_metrics(metrics, want_total, want_seg, 0.0)
    assert float(metrics["loss_par"]) == 0.0 and float(loss) == float(metrics["loss_seg"])


def _check_outputs(outputs, episodes, supp, qry, rtol=RTOL) -> None:
    """Scores and logits of every episode equal the reference forward on the same features."""
    for e in range(supp.shape[0]):
        pred, logits = ref.episode_forward(
            supp[e], episodes["support_fg"][e], episodes["support_bg"][e], qry[e]
        )
        _close(outputs["scores"][e], pred, rtol)
        _close(outputs["logits"][e], logits, rtol)
    assert _argmax_margin(outputs["scores"]) > 1e-4


def test_panet_forward_and_loss_with_table_encoder():
    episodes, supp, qry = _batch(6, 2, 2, 2, 2, feat_hw=(7, 5), image_hw=(29, 17))
    net, params = _table_model(supp, qry)
    outputs = jax.jit(net.apply)(params, episodes)
    np.testing.assert_array_equal(outputs["support_features"], supp)
    np.testing.assert_array_equal(outputs["query_features"], qry)
    _check_outputs(outputs, episodes, supp, qry)
    _, metrics = _loss_jit(outputs, episodes, par_weight=0.7)
    _check_metrics(metrics, *_ref_loss(episodes, supp, qry, par_weight=0.7))


def test_panet_forward_and_loss_with_table_encoder_float64():
    episodes, supp, qry = _batch(6, 2, 2, 2, 2, feat_hw=(7, 5), image_hw=(29, 17),
                                 dtype=np.float64)  # fmt: skip
    with jax.enable_x64(True):
        net, params = _table_model(supp, qry)
        outputs = jax.jit(net.apply)(params, episodes)
        assert outputs["logits"].dtype == jnp.float64
        _, metrics = _loss_jit(outputs, episodes, par_weight=0.7)
    _check_outputs(outputs, episodes, supp, qry, tol.EXACT64)
    _check_metrics(metrics, *_ref_loss(episodes, supp, qry, par_weight=0.7), rtol=tol.EXACT64)


def _random_params(net: nn.Module, episodes, rng: np.random.Generator, dtype=np.float32):
    """Random He-scaled weights (float32 values, in ``dtype``) from the parameter shapes (an
    eager ``init`` costs seconds)."""
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), episodes)
    return jax.tree.map(
        lambda s: (
            (
                rng.normal(size=s.shape) * np.sqrt(2 / np.prod(s.shape[:-1]))
                if len(s.shape) == 4
                else 0.1 * rng.normal(size=s.shape)
            )
            .astype(np.float32)
            .astype(dtype)
        ),
        shapes,
    )


def test_panet_with_vgg_encoder():
    rng = np.random.default_rng(7)
    episodes, _, _ = _batch(7, 2, 2, 1, 1, image_hw=(37, 49))
    episodes["support_images"] = rng.normal(size=episodes["support_images"].shape).astype(
        np.float32
    )
    episodes["query_images"] = rng.normal(size=episodes["query_images"].shape).astype(np.float32)
    net = model_lib.PANet(VGG16Encoder(width=1 / 16))
    params = _random_params(net, episodes, rng)
    assert set(params["params"]) == {"encoder"}  # the head has no parameters
    outputs = jax.jit(net.apply)(params, episodes)
    supp = np.asarray(outputs["support_features"], np.float64)
    qry = np.asarray(outputs["query_features"], np.float64)
    assert supp.shape == (2, 2, 1, 5, 7, 32) and qry.shape == (2, 1, 5, 7, 32)
    _check_outputs(outputs, episodes, supp, qry)
    _, metrics = _loss_jit(outputs, episodes)
    _check_metrics(metrics, *_ref_loss(episodes, supp, qry))


def test_panet_with_vgg_encoder_float64():
    rng = np.random.default_rng(7)
    episodes, _, _ = _batch(7, 2, 2, 1, 1, image_hw=(37, 49), dtype=np.float64)
    for key in ("support_images", "query_images"):
        episodes[key] = rng.normal(size=episodes[key].shape).astype(np.float32).astype(np.float64)
    with jax.enable_x64(True):
        enc = VGG16Encoder(width=1 / 16, dtype=jnp.float64, param_dtype=jnp.float64)
        net = model_lib.PANet(enc)
        params = _random_params(net, episodes, rng, np.float64)
        outputs = jax.jit(net.apply)(params, episodes)
        assert outputs["query_features"].dtype == jnp.float64
        _, metrics = _loss_jit(outputs, episodes)
    supp = np.asarray(outputs["support_features"])
    qry = np.asarray(outputs["query_features"])
    _check_outputs(outputs, episodes, supp, qry, tol.EXACT64)
    _check_metrics(metrics, *_ref_loss(episodes, supp, qry), rtol=tol.EXACT64)


def test_bfloat16_compute_tracks_float32():
    """``dtype=bfloat16`` (the GPU/TPU option) computes the encoder in bf16 from the same float32
    params: float32 features, loss and gradients, close to the float32 model's."""
    rng = np.random.default_rng(11)
    episodes, _, _ = _batch(11, 2, 1, 2, 1, image_hw=(41, 41))
    for key in ("support_images", "query_images"):
        episodes[key] = rng.normal(size=episodes[key].shape).astype(np.float32)
    f32 = model_lib.PANet(VGG16Encoder(width=1 / 16))
    bf16 = model_lib.PANet(VGG16Encoder(width=1 / 16, dtype=jnp.bfloat16))
    params = _random_params(f32, episodes, rng)
    assert jax.tree.structure(params) == jax.tree.structure(
        jax.eval_shape(bf16.init, jax.random.PRNGKey(0), episodes)
    )

    def value_and_grad(net):
        def loss_fn(p):
            outputs = net.apply(p, episodes)
            return model_lib.panet_loss(outputs, episodes)[0], outputs["query_features"]

        return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)

    (loss32, fts32), grads32 = value_and_grad(f32)
    (loss16, fts16), grads16 = value_and_grad(bf16)
    assert fts16.dtype == loss16.dtype == jnp.float32
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
    assert np.isfinite(float(loss16)) and all(
        np.all(np.isfinite(g)) for g in jax.tree.leaves(grads16)
    )
    # bf16 rounds each layer's inputs and weights (relative 2^-9 each, sqrt(2) together); 13
    # layers add in quadrature: sqrt(13) * sqrt(2) * 2^-9 ~ 1%; the gate allows 5x that.
    bound = 5 * np.sqrt(13) * np.sqrt(2) * tol.UBF16
    rel = np.linalg.norm(fts16 - fts32) / np.linalg.norm(fts32)
    assert 0 < rel < bound, rel  # > 0: the bf16 path really computed in bf16
    np.testing.assert_allclose(float(loss16), float(loss32), rtol=bound)
    g32 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads32)])
    g16 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads16)])
    assert np.dot(g16, g32) / (np.linalg.norm(g16) * np.linalg.norm(g32)) > 0.95


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_panet_loss_batch_equals_episode_loop_and_vmaps(dtype):
    # Two float32 programs (batch vs one episode) each within RTOL of the exact value; float64
    # proves the equality of the formulations.
    rtol = 2 * RTOL if dtype == np.float32 else tol.EXACT64
    with jax.enable_x64(dtype == np.float64):
        episodes, supp, qry = _batch(8, 2, 2, 1, 2, dtype=dtype)
        outputs = _ref_outputs(episodes, supp, qry)
        _, metrics = _loss_jit(outputs, episodes)
        assert metrics["loss"].dtype == dtype
        seg_sum = count = par_sum = 0.0
        for e in range(2):
            one = lambda tree, e=e: {k: v[e : e + 1] for k, v in tree.items()}
            _, m = _loss_jit(one(outputs), one(episodes))
            n_valid = float(np.sum(episodes["query_labels"][e] != 255))
            seg_sum += float(m["loss_seg"]) * n_valid
            count += n_valid
            par_sum += float(m["loss_par"])
        _close(float(metrics["loss_seg"]), seg_sum / count, rtol)
        _close(float(metrics["loss_par"]), par_sum / 2, rtol)
        # vmap over a leading axis of batches == the loop over batches.
        episodes2, supp2, qry2 = _batch(9, 2, 2, 1, 2, dtype=dtype)
        outputs2 = _ref_outputs(episodes2, supp2, qry2)
        stack = lambda a, b: jax.tree.map(lambda x, y: np.stack([x, y]), a, b)
        _, vm = jax.jit(jax.vmap(model_lib.panet_loss))(
            stack(outputs, outputs2), stack(episodes, episodes2)
        )
    for i, (ep, s, q) in enumerate([(episodes, supp, qry), (episodes2, supp2, qry2)]):
        want_total, want_seg, want_par = _ref_loss(ep, s, q)
        _check_metrics({k: v[i] for k, v in vm.items()}, want_total, want_seg, want_par,
                       rtol=RTOL if dtype == np.float32 else tol.EXACT64)  # fmt: skip


def _central_differences(fn, x, step):
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + step
        plus = fn()
        flat[i] = orig - step
        minus = fn()
        flat[i] = orig
        gflat[i] = (plus - minus) / (2 * step)
    return grad


def _table_grads(supp, qry, episodes, lam):
    """d loss / d (support, query) features through PANet + panet_loss (features' dtype)."""
    net, params = _table_model(supp, qry)
    _, grad = _table_value_and_grad(net, params, episodes, lam)
    grad = np.asarray(grad["params"]["encoder"]["table"])
    n_supp = supp[..., 0, 0, 0].size
    return grad[:n_supp].reshape(supp.shape), grad[n_supp:].reshape(qry.shape)


def test_gradients_match_float64_finite_differences():
    # B=2 episodes, 2 ways, 1 shot, 1 query, C=3, 5x7 features, 17x23 images: 630 inputs.
    episodes, supp, qry = _batch(11, 2, 2, 1, 1, channels=3)
    lam = 0.7
    g_supp, g_qry = _table_grads(supp, qry, episodes, lam)
    episodes64 = {k: (v.astype(np.float64) if v.dtype == np.float32 else v)
                  for k, v in episodes.items()}  # fmt: skip
    supp64, qry64 = supp.astype(np.float64), qry.astype(np.float64)
    with jax.enable_x64(True):
        g_supp64, g_qry64 = _table_grads(supp64, qry64, episodes64, lam)
        assert g_supp64.dtype == np.float64

    outputs = _ref_outputs(episodes, supp, qry)
    # The PAR pseudo-mask is a hard argmax: stay well away from ties so that +-step never
    # flips it (a step of 1e-6 moves a score by < 1e-4).
    assert _argmax_margin(outputs["scores"]) > 1e-3
    total = lambda: _ref_loss(episodes, supp64, qry64, par_weight=lam)[0]
    _, _, par = _ref_loss(episodes, supp64, qry64, par_weight=lam)
    assert par > 0.1
    fd_supp = _central_differences(total, supp64, 1e-6)
    fd_qry = _central_differences(total, qry64, 1e-6)
    for got32, got64, want in ((g_supp, g_supp64, fd_supp), (g_qry, g_qry64, fd_qry)):
        scale = np.max(np.abs(want))
        assert scale > 1e-3
        # float64: central differences with step h err by ~u64 |L| / h + h^2 |L'''| ~ 1e-10,
        # <= 1e-7 of a gradient scale above 1e-3; the gate is 10x that.
        _close(got64 / scale, want / scale, 1e-6)
        _close(got32 / scale, want / scale)  # float32 backprop: the forward's rounding
    # The PAR term matters for the query gradient: lambda = 0 gives a different gradient.
    _, g0 = _table_grads(supp, qry, episodes, 0.0)
    assert np.max(np.abs(g0 - g_qry)) > 1e-3 * np.max(np.abs(g_qry))


@pytest.mark.parametrize(
    "case", ["empty_support_masks", "all_ignore_query", "zero_features", "all_degenerate"]
)
def test_no_nan(case):
    episodes, supp, qry = _batch(12, 2, 2, 2, 2)
    n_ways = 2
    if case in ("empty_support_masks", "all_degenerate"):
        episodes["support_fg"] = np.zeros_like(episodes["support_fg"])
        episodes["support_bg"] = np.zeros_like(episodes["support_bg"])
    if case in ("all_ignore_query", "all_degenerate"):
        episodes["query_labels"] = np.full_like(episodes["query_labels"], 255)
    if case in ("zero_features", "all_degenerate"):
        supp, qry = np.zeros_like(supp), np.zeros_like(qry)
    net, params = _table_model(supp, qry)
    (loss, metrics), grads = _table_value_and_grad(net, params, episodes)
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(grads["params"]["encoder"]["table"]))
    want_total, want_seg, want_par = _ref_loss(
        episodes, supp.astype(np.float64), qry.astype(np.float64), empty_value=0.0
    )
    _check_metrics(metrics, want_total, want_seg, want_par)
    if case == "all_ignore_query":
        assert float(metrics["loss_seg"]) == 0.0 and want_par > 0.1
    else:
        # Zero prototypes or zero features: every logit is 0 -> CE = log(1 + N), PAR skipped.
        assert float(metrics["loss_par"]) == 0.0
        if case != "all_degenerate":
            _close(float(metrics["loss_seg"]), np.log(1 + n_ways))
