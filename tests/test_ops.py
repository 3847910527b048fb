"""``panet_jax.ops`` against the independent float64 NumPy reference (``numpy_reference``).

The reference follows the official PyTorch code literally (upsample the support features, then
pool; loops over ways and shots); ``ops`` projects the masks down instead. Exactness of the
formulations is proved under ``jax.enable_x64`` (agreement to ~1e-13, gate ``EXACT64``).
float32 JAX results are compared with the float64 reference *normwise*
(``max |got - want| <= RTOL * max(max |want|, 1)``) with ``RTOL`` derived below; inputs are
float32-representable so both sides see the same numbers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as npref
import numpy_reference as ref
import pytest
import tolerances as tol

from panet_jax import model as model_lib
from panet_jax import ops
from panet_jax.model import panet_head

# Every op here reduces at most 29 x 23 = 667 terms (~sqrt(667) * 2^-24 = 1.6e-6 relative,
# tolerances.dot_rel) and the longest chain is four reductions (pool, cosine, resize, CE).
RTOL = 4 * tol.dot_rel(29 * 23)
# Pairs of (feature h, w) -> (image H, W): non-square, H not a multiple of h, up and down.
UP_SIZES = [((5, 7), (17, 23)), ((7, 5), (29, 17)), ((5, 5), (23, 29))]
DOWN_SIZES = [((23, 29), (5, 7)), ((29, 17), (7, 5))]
MIXED_SIZES = [((5, 29), (17, 7))]
C = 8
# Covers N in {1, 2}, K in {1, 5}, Q in {1, 2} and each pairing of them.
WAYS_SHOTS_QUERIES = [(1, 1, 1), (1, 5, 2), (2, 1, 2), (2, 5, 1)]


def _close(got, want, rtol=RTOL):
    """Normwise: ``max |got - want| <= rtol * max(max |want|, 1)`` (and same shape)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.all(np.isfinite(got)), got
    assert got.shape == want.shape, (got.shape, want.shape)
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    assert err <= rtol * max(float(np.max(np.abs(want))) if want.size else 0.0, 1.0), err


def _features(rng, shape, dtype=np.float32):
    """Signed features (conv5_3 has no ReLU), float32-representable."""
    return rng.normal(size=shape).astype(np.float32).astype(dtype)


def _label_maps(rng, shape, class_ids, p_ignore=0.1, other=(11, 12)):
    """Blocky semantic labels with the episode classes, other classes, bg 0 and VOC 255."""
    values = np.array([0, *class_ids, *other])
    small = rng.choice(values, size=(*shape[:-2], 4, 5))
    big_h, big_w = shape[-2:]
    rows = np.arange(big_h) * 4 // big_h
    cols = np.arange(big_w) * 5 // big_w
    label = small[..., rows[:, None], cols[None, :]]
    noise = rng.choice(values, size=shape)
    label = np.where(rng.random(shape) < 0.2, noise, label)
    return np.where(rng.random(shape) < p_ignore, 255, label).astype(np.int32)


def _support_masks(rng, n_ways, n_shots, image_hw, class_ids=None):
    """Support fg/bg ``[N, K, H, W]`` from labels with the official ``getMask`` rule."""
    class_ids = list(range(1, n_ways + 1)) if class_ids is None else class_ids
    labels = _label_maps(rng, (n_ways, n_shots, *image_hw), class_ids)
    fg = np.zeros(labels.shape, np.float32)
    bg = np.zeros(labels.shape, np.float32)
    for n in range(n_ways):
        for k in range(n_shots):
            fg[n, k], bg[n, k] = ref.get_mask(labels[n, k], class_ids[n], class_ids)
    return fg, bg


def _episode(
    seed, n_ways, n_shots, n_queries, feat_hw=(5, 7), image_hw=(17, 23), channels=C,
    dtype=np.float32,
):  # fmt: skip
    rng = np.random.default_rng(seed)
    supp = _features(rng, (n_ways, n_shots, *feat_hw, channels), dtype)
    qry = _features(rng, (n_queries, *feat_hw, channels), dtype)
    fg, bg = _support_masks(rng, n_ways, n_shots, image_hw)
    return supp, qry, fg.astype(dtype), bg.astype(dtype)


def _maybe_jit(fn, use_jit, static_argnums=()):
    return jax.jit(fn, static_argnums=static_argnums) if use_jit else fn


# Jitted once and shared (cached per shape): eager dispatch of the nested vmaps is slow.
_align_jit = jax.jit(ops.alignment_loss)
_scores_jit = jax.jit(ops.query_scores)


def _argmax_margin(scores):
    """Gap between the best and second-best channel, minimised over pixels."""
    s = np.sort(np.asarray(scores, np.float64), axis=-1)
    return float(np.min(s[..., -1] - s[..., -2]))


# ------------------------------------------------------------------------------------------
# Bilinear resizing.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "in_size,out_size",
    [(5, 17), (7, 23), (7, 29), (5, 5), (29, 7), (23, 5), (17, 7), (1, 4), (4, 1), (3, 6)],
)
def test_bilinear_matrix_matches_reference(in_size, out_size):
    got = ops.bilinear_matrix(in_size, out_size)
    want = ref.interpolation_matrix(in_size, out_size)
    assert got.shape == (out_size, in_size)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-13)


def test_bilinear_matrix_known_values():
    # 2 -> 4 with half-pixel centres: src = max(-0.25, 0), 0.25, 0.75, 1.25 (clamped to 1).
    want = np.array([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    np.testing.assert_allclose(ops.bilinear_matrix(2, 4), want, atol=1e-15)
    np.testing.assert_allclose(ref.interpolation_matrix(2, 4), want, atol=1e-15)


@pytest.mark.parametrize("sizes", [(0, 3), (3, 0), (-1, 2)])
def test_bilinear_matrix_rejects_nonpositive(sizes):
    with pytest.raises(ValueError):
        ops.bilinear_matrix(*sizes)


@pytest.mark.torch
@pytest.mark.parametrize("feat_hw,image_hw", UP_SIZES + DOWN_SIZES + MIXED_SIZES)
def test_reference_bilinear_matches_torch(feat_hw, image_hw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *feat_hw, 3))
    want = (
        torch.nn.functional.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2),
            size=image_hw,
            mode="bilinear",
            align_corners=False,
        )
        .permute(0, 2, 3, 1)
        .numpy()
    )
    np.testing.assert_allclose(ref.resize_bilinear(x, image_hw), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "feat_hw,image_hw,use_jit",
    [(*sizes, True) for sizes in UP_SIZES + DOWN_SIZES + MIXED_SIZES]
    + [(*UP_SIZES[0], False), (*DOWN_SIZES[0], False)],
)
def test_resize_bilinear(feat_hw, image_hw, use_jit):
    rng = np.random.default_rng(1)
    x = _features(rng, (2, 3, *feat_hw, C))  # extra leading axes
    got = _maybe_jit(ops.resize_bilinear, use_jit, static_argnums=1)(jnp.asarray(x), image_hw)
    assert got.shape == (2, 3, *image_hw, C)
    _close(got, ref.resize_bilinear(x, image_hw))


def test_resize_bilinear_same_size_is_identity():
    x = _features(np.random.default_rng(2), (5, 7, 3))
    np.testing.assert_array_equal(ops.resize_bilinear(jnp.asarray(x), (5, 7)), x)


@pytest.mark.parametrize("feat_hw,image_hw", UP_SIZES[:2] + DOWN_SIZES[:1])
def test_project_mask_is_adjoint_of_upsampling(feat_hw, image_hw):
    rng = np.random.default_rng(3)
    mask = (rng.random((2, *image_hw)) < 0.4).astype(np.float32)
    got = ops.project_mask(jnp.asarray(mask), feat_hw)
    _close(got, ref.pooling_weights(feat_hw, mask))
    # <up(F), M> == <F, R(M)> for random F.
    feats = _features(rng, (2, *feat_hw, 1))
    lhs = np.sum(ref.resize_bilinear(feats, image_hw)[..., 0] * mask, axis=(-2, -1))
    rhs = np.sum(np.asarray(got, np.float64) * feats[..., 0], axis=(-2, -1))
    _close(rhs, lhs)


# ------------------------------------------------------------------------------------------
# Masked average pooling and prototypes.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "feat_hw,image_hw,use_jit",
    [(*sizes, True) for sizes in UP_SIZES + DOWN_SIZES] + [(*UP_SIZES[0], False)],
)
def test_masked_average_pooling(feat_hw, image_hw, use_jit):
    rng = np.random.default_rng(4)
    feats = _features(rng, (3, *feat_hw, C))
    masks = (rng.random((3, *image_hw)) < 0.3).astype(np.float32)
    masks[1] = 0.0  # empty mask -> zero vector
    masks[2] = 1.0  # full mask -> plain average of the upsampled map
    got = np.asarray(_maybe_jit(ops.masked_average_pooling, use_jit)(feats, masks))
    want = np.stack([ref.get_features(feats[i], masks[i]) for i in range(3)])
    _close(got, want)
    assert np.all(got[1] == 0.0)
    full = ref.resize_bilinear(feats[2], image_hw).mean(axis=(0, 1))
    _close(got[2], full * masks[2].sum() / (masks[2].sum() + 1e-5))


@pytest.mark.parametrize("n_ways,n_shots,n_queries", WAYS_SHOTS_QUERIES)
def test_support_and_episode_prototypes(n_ways, n_shots, n_queries):
    supp, _, fg, bg = _episode(10 + n_ways * n_shots, n_ways, n_shots, n_queries)
    got_fg, got_bg = ops.support_prototypes(supp, fg, bg)
    want = ref.episode_prototypes(supp, fg, bg)
    assert got_fg.shape == (n_ways, C) and got_bg.shape == (C,)
    _close(got_fg, want[1:])
    _close(got_bg, want[0])
    _close(ops.episode_prototypes(supp, fg, bg), want)


def test_prototypes_average_shots_as_vectors():
    # Shots with very different mask areas: a joint pixel pool would weight them by area.
    rng = np.random.default_rng(5)
    supp = _features(rng, (1, 2, 5, 7, C))
    fg = np.zeros((1, 2, 17, 23), np.float32)
    fg[0, 0, :2, :2] = 1.0
    fg[0, 1, 3:, :] = 1.0
    bg = 1.0 - fg
    got_fg, _ = ops.support_prototypes(supp, fg, bg)
    per_shot = [ref.get_features(supp[0, k], fg[0, k]) for k in range(2)]
    _close(got_fg[0], (per_shot[0] + per_shot[1]) / 2)


# ------------------------------------------------------------------------------------------
# Cosine scoring.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [20.0, 7.5])
def test_cosine_logits_shared_prototypes(scale):
    rng = np.random.default_rng(6)
    feats = _features(rng, (2, 5, 7, C))
    feats[0, 1, 2] = 0.0  # a zero feature pixel -> 0 against every prototype
    protos = _features(rng, (4, C))
    protos[2] = 0.0  # a zero prototype -> 0, not NaN
    got = np.asarray(ops.cosine_logits(feats, protos, scale))
    want = np.stack([ref.cal_dist(feats, p, scale) for p in protos], axis=-1)
    assert got.shape == (2, 5, 7, 4)
    _close(got, want)
    assert np.all(got[..., 2] == 0.0)
    assert np.all(got[0, 1, 2] == 0.0)
    assert np.max(np.abs(got)) <= scale * (1 + 1e-6)


def test_cosine_logits_per_leading_axis_prototypes():
    rng = np.random.default_rng(7)
    feats = _features(rng, (2, 3, 5, 7, C))
    protos = _features(rng, (2, 3, 2, C))
    protos[1, 2, 0] = 0.0
    got = np.asarray(jax.jit(ops.cosine_logits)(feats, protos))
    want = np.zeros((2, 3, 5, 7, 2))
    for i in range(2):
        for j in range(3):
            for p in range(2):
                want[i, j, ..., p] = ref.cal_dist(feats[i, j], protos[i, j, p])
    _close(got, want)
    assert np.all(got[1, 2, ..., 0] == 0.0)


def test_cosine_logits_parallel_vectors_saturate():
    feats = np.ones((1, 1, C), np.float32)
    protos = np.stack([np.ones(C), -2 * np.ones(C)]).astype(np.float32)
    _close(ops.cosine_logits(feats, protos), [[[20.0, -20.0]]])


@pytest.mark.parametrize(
    "n_ways,n_shots,n_queries,use_jit",
    [(*wsq, True) for wsq in WAYS_SHOTS_QUERIES] + [(2, 5, 2, False)],
)
def test_query_scores(n_ways, n_shots, n_queries, use_jit):
    supp, qry, fg, bg = _episode(20 + 7 * n_ways + n_shots + n_queries, n_ways, n_shots, n_queries)
    got = (_scores_jit if use_jit else ops.query_scores)(qry, supp, fg, bg)
    want, logits = ref.episode_forward(supp, fg, bg, qry)
    assert got.shape == (n_queries, 5, 7, 1 + n_ways)
    _close(got, want)
    _close(ops.resize_bilinear(got, (17, 23)), logits)


@pytest.mark.parametrize("feat_hw,image_hw", [((7, 5), (29, 17)), ((5, 7), (23, 29))])
def test_query_scores_other_sizes(feat_hw, image_hw):
    supp, qry, fg, bg = _episode(30, 2, 2, 2, feat_hw, image_hw)
    _close(_scores_jit(qry, supp, fg, bg, 12.0), ref.episode_forward(supp, fg, bg, qry, 12.0)[0])


def test_predict():
    supp, qry, fg, bg = _episode(31, 2, 1, 2)
    _, logits = ref.episode_forward(supp, fg, bg, qry)
    assert _argmax_margin(logits) > 1e-4
    got = ops.hard_labels(jnp.asarray(logits, jnp.float32))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, np.argmax(logits, axis=-1))
    # Ties resolve to the lowest index (background first), as torch.argmax / np.argmax do.
    np.testing.assert_array_equal(ops.hard_labels(jnp.zeros((2, 3, 3))), np.zeros((2, 3)))


# ------------------------------------------------------------------------------------------
# Cross-entropy.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_cross_entropy(n_classes, use_jit):
    rng = np.random.default_rng(40 + n_classes)
    logits = (20 * rng.uniform(-1, 1, size=(2, 17, 23, n_classes))).astype(np.float32)
    labels = rng.integers(0, n_classes, size=(2, 17, 23)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = 255
    total, count = _maybe_jit(ops.cross_entropy_sum, use_jit)(logits, labels)
    want_total, want_count = ref.cross_entropy_terms(logits, labels)
    assert float(count) == want_count
    _close(total, want_total)
    _close(
        _maybe_jit(ops.cross_entropy, use_jit)(logits, labels), ref.cross_entropy(logits, labels)
    )


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = np.random.default_rng(42).normal(size=(1, 5, 7, 3)).astype(np.float32)
    labels = np.full((1, 5, 7), 255, np.int32)
    total, count = ops.cross_entropy_sum(logits, labels)
    assert float(total) == 0.0 and float(count) == 0.0
    assert float(ops.cross_entropy(logits, labels)) == 0.0
    assert np.isnan(ref.cross_entropy(logits, labels))  # PyTorch's mean over nothing


def test_cross_entropy_extreme_logits_are_stable():
    logits = np.array([[[1e4, -1e4], [-1e4, 1e4]]], np.float32)
    labels = np.array([[1, 1]], np.int32)
    _close(ops.cross_entropy(logits, labels), ref.cross_entropy(logits, labels))


# ------------------------------------------------------------------------------------------
# Prototype alignment regularisation.
# ------------------------------------------------------------------------------------------


def test_support_alignment_labels():
    rng = np.random.default_rng(50)
    fg = (rng.random((2, 3, 17, 23)) < 0.4).astype(np.float32)
    bg = (rng.random((2, 3, 17, 23)) < 0.5).astype(np.float32)  # overlaps fg: bg wins
    got = np.asarray(ops.support_alignment_labels(fg, bg))
    want = np.stack(
        [np.stack([ref.support_label(fg[n, k], bg[n, k]) for k in range(3)]) for n in range(2)]
    )
    np.testing.assert_array_equal(got, want)
    assert np.any(got == 255) and np.any(got == 0) and np.any(got == 1)


def _pred_scores(qry, supp, fg, bg):
    """Feature-resolution scores from the reference, rounded to float32 for both sides."""
    pred, _ = ref.episode_forward(supp, fg, bg, qry)
    return pred.astype(np.float32)


@pytest.mark.parametrize(
    "n_ways,n_shots,n_queries,use_jit",
    [(*wsq, True) for wsq in WAYS_SHOTS_QUERIES] + [(2, 5, 2, False)],  # eager is slow
)
def test_alignment_loss(n_ways, n_shots, n_queries, use_jit):
    supp, qry, fg, bg = _episode(
        60 + 5 * n_ways + n_shots + 3 * n_queries, n_ways, n_shots, n_queries
    )
    pred = _pred_scores(qry, supp, fg, bg)
    got = _maybe_jit(ops.alignment_loss, use_jit)(qry, pred, supp, fg, bg)
    want, skipped = ref.align_loss(qry, pred, supp, fg, bg, return_skipped=True)
    assert skipped == [] and want > 0.1  # the random case exercises every way
    _close(got, want)


def test_alignment_loss_skips_way_with_empty_prediction():
    # 2 ways, but way 2 never wins the argmax on any query: it is skipped, and the divisor is
    # still the total N = 2 (so the result is half the 1-way loss of way 1 alone).
    supp, qry, fg, bg = _episode(70, 2, 2, 2)
    pred = _pred_scores(qry, supp, fg, bg)
    pred[..., 2] = pred.min() - 5.0
    got = _align_jit(qry, pred, supp, fg, bg)
    want, skipped = ref.align_loss(qry, pred, supp, fg, bg, return_skipped=True)
    assert skipped == [1] and want > 0.1
    _close(got, want)
    one_way = ref.align_loss(qry, pred[..., :2], supp[:1], fg[:1], bg[:1])
    _close(got, one_way / 2)
    # Not skipping (e.g. way 2 wins one pixel) changes the value: the skip is what we test.
    pred[0, 0, 0, 2] = pred.max() + 1.0
    assert abs(ref.align_loss(qry, pred, supp, fg, bg) - want) > 1e-3


def test_alignment_loss_skip_is_decided_over_all_queries():
    # Way 2 wins a few pixels of query 1 only: summed over the queries it is not empty, so it
    # is *not* skipped (a per-query or first-query rule would skip it).
    supp, qry, fg, bg = _episode(74, 2, 2, 2)
    pred = _pred_scores(qry, supp, fg, bg)
    pred[..., 2] = pred.min() - 5.0
    pred[1, 2:4, 3, 2] = pred.max() + 1.0
    want, skipped = ref.align_loss(qry, pred, supp, fg, bg, return_skipped=True)
    assert skipped == []
    _close(_align_jit(qry, pred, supp, fg, bg), want)
    pred_q0 = pred.copy()
    pred_q0[1, 2:4, 3, 2] = pred.min() - 5.0
    assert abs(ref.align_loss(qry, pred_q0, supp, fg, bg) - want) > 1e-3


def test_alignment_loss_all_ways_skipped_is_zero():
    supp, qry, fg, bg = _episode(71, 2, 1, 1)
    pred = _pred_scores(qry, supp, fg, bg)
    pred[..., 0] = pred.max() + 1.0  # background everywhere
    assert float(_align_jit(qry, pred, supp, fg, bg)) == 0.0
    assert ref.align_loss(qry, pred, supp, fg, bg) == 0.0


def test_alignment_loss_empty_background_prediction():
    # No query pixel is predicted background: the bg query prototype is 0 and scores 0.
    supp, qry, fg, bg = _episode(72, 2, 2, 1)
    pred = _pred_scores(qry, supp, fg, bg)
    pred[..., 0] = pred.min() - 5.0
    want, skipped = ref.align_loss(qry, pred, supp, fg, bg, return_skipped=True)
    assert skipped == []
    _close(_align_jit(qry, pred, supp, fg, bg), want)


@pytest.mark.parametrize("n_shots", [1, 5])
def test_alignment_loss_with_ignored_support_pixels(n_shots):
    # 2 ways: the pixels of the *other* episode class are in neither mask -> label 255.
    rng = np.random.default_rng(73 + n_shots)
    supp = _features(rng, (2, n_shots, 5, 7, C))
    qry = _features(rng, (2, 5, 7, C))
    fg, bg = _support_masks(rng, 2, n_shots, (17, 23), class_ids=[4, 9])
    labels = ops.support_alignment_labels(fg, bg)
    assert np.mean(np.asarray(labels) == 255) > 0.1
    pred = _pred_scores(qry, supp, fg, bg)
    want, skipped = ref.align_loss(qry, pred, supp, fg, bg, return_skipped=True)
    assert skipped == []
    _close(_align_jit(qry, pred, supp, fg, bg), want)
    # Counting the ignored pixels as background would change the loss.
    bg_all = np.maximum(bg, 1.0 - fg)
    assert abs(ref.align_loss(qry, pred, supp, fg, bg_all) - want) > 1e-3


def test_alignment_loss_all_zero_masks_is_finite():
    supp, qry, fg, bg = _episode(75, 2, 2, 2)
    zeros = np.zeros_like(fg)
    # Zero masks -> zero prototypes -> all-zero scores -> argmax bg -> every way skipped.
    pred = np.asarray(_scores_jit(qry, supp, zeros, zeros))
    assert np.all(pred == 0.0)
    got = _align_jit(qry, pred, supp, zeros, zeros)
    assert float(got) == 0.0
    assert ref.align_loss(qry, pred, supp, zeros, zeros) == 0.0
    # Random predictions with all-zero support labels: every support CE is over no pixels.
    # PyTorch would give NaN; ops documents 0 for such a support.
    pred = _pred_scores(qry, supp, fg, bg)
    got = _align_jit(qry, pred, supp, zeros, zeros)
    assert float(got) == 0.0
    assert np.isnan(ref.align_loss(qry, pred, supp, zeros, zeros))
    grads = jax.jit(jax.grad(ops.alignment_loss, argnums=(0, 2)))(qry, pred, supp, zeros, zeros)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_alignment_loss_one_empty_support_contributes_zero():
    supp, qry, fg, bg = _episode(76, 2, 2, 1)
    fg[1, 1] = 0.0
    bg[1, 1] = 0.0
    pred = _pred_scores(qry, supp, fg, bg)
    want = ref.align_loss(qry, pred, supp, fg, bg, empty_value=0.0)
    assert want > 0.1
    _close(_align_jit(qry, pred, supp, fg, bg), want)


def test_alignment_loss_scale():
    supp, qry, fg, bg = _episode(77, 2, 1, 2)
    pred = _pred_scores(qry, supp, fg, bg)
    _close(_align_jit(qry, pred, supp, fg, bg, 5.0), ref.align_loss(qry, pred, supp, fg, bg, 5.0))


def test_alignment_loss_gradient_flows_to_query_and_support_features():
    supp, qry, fg, bg = _episode(78, 1, 1, 1)
    pred = _pred_scores(qry, supp, fg, bg)
    grad_fn = jax.jit(jax.grad(ops.alignment_loss, argnums=(0, 1, 2)))
    g_qry, g_pred, g_supp = grad_fn(qry, pred, supp, fg, bg)
    assert np.max(np.abs(g_qry)) > 1e-4 and np.max(np.abs(g_supp)) > 1e-4
    assert np.all(np.asarray(g_pred) == 0.0)  # the argmax pseudo-mask carries no gradient


# ------------------------------------------------------------------------------------------
# Support masks from a label map.
# ------------------------------------------------------------------------------------------


def test_support_masks_rule():
    """The official getMask rule (panet_jax.data.episodes, shared by the pipeline and
    make_episode) against the reference transcription."""
    from panet_jax.data import episodes

    rng = np.random.default_rng(80)
    class_ids = np.array([3, 7], np.int32)
    labels = rng.choice(np.array([0, 3, 7, 12, 255]), size=(2, 2, 17, 23)).astype(np.int32)
    fg, bg = episodes.support_masks(labels, class_ids)
    for way, cid in enumerate(class_ids):
        for shot in range(2):
            label = labels[way, shot]
            want_fg, want_bg = ref.get_mask(label, int(cid), class_ids)
            np.testing.assert_array_equal(fg[way, shot], want_fg)
            np.testing.assert_array_equal(bg[way, shot], want_bg)
            other = class_ids[1 - way]
            assert np.all(bg[way, shot][label == 255])  # VOC boundary counts as bg
            assert np.all(bg[way, shot][label == 12])  # non-episode classes are bg
            assert not np.any((fg | bg)[way, shot][label == other])  # other ways excluded


# ------------------------------------------------------------------------------------------
# vmap over a batch of episodes == the per-episode loop == the reference.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_ways,n_shots,n_queries", [(1, 1, 1), (2, 5, 2)])
def test_vmap_over_episodes(n_ways, n_shots, n_queries):
    eps = [_episode(90 + b, n_ways, n_shots, n_queries) for b in range(3)]
    supp, qry, fg, bg = (np.stack(x) for x in zip(*eps, strict=True))
    scores_b = jax.jit(jax.vmap(ops.query_scores))(qry, supp, fg, bg)
    protos_b = jax.vmap(ops.episode_prototypes)(supp, fg, bg)
    pred = np.stack([_pred_scores(q, s, f, g) for s, q, f, g in eps])
    par_b = jax.jit(jax.vmap(ops.alignment_loss))(qry, pred, supp, fg, bg)
    for b, (s, q, f, g) in enumerate(eps):
        # vmap and the loop compile to different programs: each carries its own float32
        # rounding, so they differ by up to twice the error against the reference.
        _close(scores_b[b], _scores_jit(q, s, f, g), 2 * RTOL)
        _close(par_b[b], _align_jit(q, pred[b], s, f, g), 2 * RTOL)
        want_pred, _ = ref.episode_forward(s, f, g, q)
        _close(scores_b[b], want_pred)
        _close(protos_b[b], ref.episode_prototypes(s, f, g))
        _close(par_b[b], ref.align_loss(q, pred[b], s, f, g))


@pytest.mark.parametrize("n_ways,n_shots,n_queries", [(1, 1, 1), (2, 5, 2)])
def test_vmap_over_episodes_float64(n_ways, n_shots, n_queries):
    """vmap == the per-episode loop == the reference, as formulations (float64)."""
    eps = [_episode(90 + b, n_ways, n_shots, n_queries, dtype=np.float64) for b in range(3)]
    supp, qry, fg, bg = (np.stack(x) for x in zip(*eps, strict=True))
    pred = np.stack([ref.episode_forward(s, f, g, q)[0] for s, q, f, g in eps])
    with jax.enable_x64(True):
        scores_b = jax.jit(jax.vmap(ops.query_scores))(qry, supp, fg, bg)
        par_b = jax.jit(jax.vmap(ops.alignment_loss))(qry, pred, supp, fg, bg)
        assert scores_b.dtype == par_b.dtype == jnp.float64
        for b, (s, q, f, g) in enumerate(eps):
            _close(scores_b[b], jax.jit(ops.query_scores)(q, s, f, g), tol.EXACT64)
            _close(par_b[b], jax.jit(ops.alignment_loss)(q, pred[b], s, f, g), tol.EXACT64)
            _close(scores_b[b], pred[b], tol.EXACT64)
            _close(par_b[b], ref.align_loss(q, pred[b], s, f, g), tol.EXACT64)


# ------------------------------------------------------------------------------------------
# float64: the formulations agree to rounding, not just to float32 tolerance.
# ------------------------------------------------------------------------------------------


def test_ops_match_reference_in_float64():
    supp, qry, fg, bg = _episode(100, 2, 2, 2, (5, 7), (23, 17))
    supp, qry = supp.astype(np.float64), qry.astype(np.float64)
    with jax.enable_x64(True):
        up = ops.resize_bilinear(jnp.asarray(supp), (23, 17))
        assert up.dtype == jnp.float64
        np.testing.assert_allclose(up, ref.resize_bilinear(supp, (23, 17)), rtol=1e-12, atol=1e-12)
        scores = ops.query_scores(
            jnp.asarray(qry),
            jnp.asarray(supp),
            jnp.asarray(fg, jnp.float64),
            jnp.asarray(bg, jnp.float64),
        )
        assert scores.dtype == jnp.float64
        want, _ = ref.episode_forward(supp, fg, bg, qry)
        np.testing.assert_allclose(scores, want, rtol=1e-11, atol=1e-11)
        maps = ops.masked_average_pooling(jnp.asarray(supp), jnp.asarray(fg, jnp.float64))
        np.testing.assert_allclose(
            maps[1, 0], ref.get_features(supp[1, 0], fg[1, 0]), rtol=1e-12, atol=1e-12
        )


def test_scores_gradient_float64_finite_differences():
    # Everything up to the logits stays float64 under x64 (the cross-entropy casts to float32,
    # so the full loss is checked against the NumPy reference in test_model instead).
    supp, qry, fg, bg = _episode(101, 2, 2, 1, channels=3)
    weights = np.random.default_rng(102).normal(size=(1, 17, 23, 3))
    with jax.enable_x64(True):
        fg64, bg64 = jnp.asarray(fg, jnp.float64), jnp.asarray(bg, jnp.float64)

        @jax.jit
        def objective(s, q):
            logits = ops.resize_bilinear(ops.query_scores(q, s, fg64, bg64), (17, 23))
            return jnp.sum(weights * logits)

        s64, q64 = supp.astype(np.float64), qry.astype(np.float64)
        g_supp, g_qry = jax.grad(objective, argnums=(0, 1))(s64, q64)
        assert g_supp.dtype == jnp.float64
        step = 1e-6
        for x, g, argnum in ((s64, g_supp, 0), (q64, g_qry, 1)):
            fd = np.zeros(x.size)
            for i in range(x.size):
                e = np.zeros(x.size)
                e[i] = step
                e = e.reshape(x.shape)
                args_p = (s64 + e, q64) if argnum == 0 else (s64, q64 + e)
                args_m = (s64 - e, q64) if argnum == 0 else (s64, q64 - e)
                fd[i] = (float(objective(*args_p)) - float(objective(*args_m))) / (2 * step)
            np.testing.assert_allclose(
                np.asarray(g).reshape(-1), fd, rtol=1e-6, atol=1e-6 * np.max(np.abs(fd))
            )


# ------------------------------------------------------------------------------------------
# Prototype distances (support vs query-prediction prototypes)
# ``ops.query_prototypes`` / ``ops.prototype_distances`` and the batch metric of
# ``model.prototype_distance_metrics`` against an independent float64 NumPy reference.
#
# The reference pools the support prototypes the official way (upsample, then pool:
# ``numpy_reference.episode_prototypes``), takes the query prototypes from the argmax of the
# reference scores pooled over all queries (the official ``alignLoss``), and measures
# ``|s - q|`` and ``1 - cos(s, q)`` per class with plain loops.

# Pooling reduces at most 17 x 23 = 391 terms, the distances C = 6; two chained reductions.
RTOL32 = 4 * tol.dot_rel(17 * 23)


def reference_distances(supp, fg, bg, qry):
    """``(euclidean [1+N], cosine [1+N], valid [1+N])`` of one episode, float64 loops."""
    supp, qry = np.asarray(supp, np.float64), np.asarray(qry, np.float64)
    n_ways = fg.shape[0]
    s_protos = ref.episode_prototypes(supp, fg, bg)
    pred, _ = ref.episode_forward(supp, fg, bg, qry)
    labels = np.argmax(pred, axis=-1)  # [Q, h, w]
    euclid, cosine, valid = [], [], []
    for p in range(1 + n_ways):
        m = (labels == p).astype(np.float64)
        q = np.sum(qry * m[..., None], axis=(0, 1, 2)) / (m.sum() + ref.MAP_EPS)
        s = s_protos[p]
        euclid.append(np.sqrt(np.sum((s - q) ** 2)))
        norm = np.sqrt(max(np.dot(s, s) * np.dot(q, q), 1e-16))
        cosine.append(1.0 - np.dot(s, q) / norm)
        support_area = bg.sum() if p == 0 else fg[p - 1].sum()
        valid.append(m.sum() > 0 and support_area > 0)
    return np.array(euclid), np.array(cosine), np.array(valid)


def hand_made_episode():
    """1 way, 1 shot, 1 query; 2 x 2 features of C = 3 at 4 x 4 pixels.

    The support's left half is the object. The query's feature pixels are chosen so that the
    prediction puts (0, 0) and (1, 0) on the foreground and the others on the background.
    """
    supp = np.array([[[[[1, 0, 0], [0, 1, 0]], [[1, 0, 1], [0, 2, 0]]]]], np.float64)
    fg = np.zeros((1, 1, 4, 4))
    fg[..., :2] = 1.0
    bg = 1.0 - fg
    qry = np.array([[[[2, 0, 0], [0, 1, 1]], [[1, 0, 0], [0, 3, 0]]]], np.float64)
    return supp, fg, bg, qry


def random_episode(seed, n_ways, n_shots, n_queries, feat_hw=(5, 7), image_hw=(17, 23), c=6):
    rng = np.random.default_rng(seed)
    supp = rng.normal(size=(n_ways, n_shots, *feat_hw, c)).astype(np.float32)
    qry = rng.normal(size=(n_queries, *feat_hw, c)).astype(np.float32)
    fg = (rng.random((n_ways, n_shots, *image_hw)) < 0.4).astype(np.float32)
    bg = ((rng.random(fg.shape) < 0.8) & (fg == 0)).astype(np.float32)
    return supp, fg, bg, qry


@functools.partial(jax.jit, static_argnums=4)
def jax_distances(supp, fg, bg, qry, dtype):
    as_ = lambda x: jnp.asarray(x, dtype)
    scores = ops.query_scores(as_(qry), as_(supp), as_(fg), as_(bg))
    return ops.prototype_distances(as_(qry), scores, as_(supp), as_(fg), as_(bg))


def test_hand_made_episode_float64():
    supp, fg, bg, qry = hand_made_episode()
    want = reference_distances(supp, fg, bg, qry)
    # The hand-made prediction: fg at feature pixels (0, 0) and (1, 0).
    pred, _ = ref.episode_forward(supp, fg, bg, qry)
    np.testing.assert_array_equal(np.argmax(pred[0], -1), [[1, 0], [1, 0]])
    with jax.enable_x64(True):
        got = jax_distances(supp, fg, bg, qry, jnp.float64)
        assert got[0].dtype == jnp.float64
    for g, w in zip(got[:2], want[:2], strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=tol.EXACT64, atol=tol.EXACT64)
    np.testing.assert_array_equal(np.asarray(got[2]), [True, True])
    # By hand: the fg query prototype pools query pixels (0, 0) and (1, 0): (3, 0, 0) / 2.
    # The fg support prototype pools the upsampled features over image columns 0-1; bilinear
    # weights (rows: 2 per feature row; columns: 1.75 on feature column 0, 0.25 on column 1)
    # give (2 (1.75 F00 + 0.25 F01) + 2 (1.75 F10 + 0.25 F11)) / 8 = (7, 1.5, 3.5) / 8.
    q_fg = np.array([3.0, 0.0, 0.0]) / (2 + ops.MAP_EPS)
    s_fg = np.array([7.0, 1.5, 3.5]) / (8 + ops.MAP_EPS)
    cos = 1 - s_fg @ q_fg / np.linalg.norm(s_fg) / np.linalg.norm(q_fg)
    np.testing.assert_allclose(float(got[0][1]), np.linalg.norm(s_fg - q_fg), rtol=1e-12)
    np.testing.assert_allclose(float(got[1][1]), cos, rtol=1e-12)


@pytest.mark.parametrize("n_ways,n_shots,n_queries", [(1, 1, 1), (1, 5, 2), (2, 1, 2), (2, 3, 1)])
def test_random_episodes_float64_and_float32(n_ways, n_shots, n_queries):
    supp, fg, bg, qry = random_episode(n_ways * 10 + n_shots, n_ways, n_shots, n_queries)
    want = reference_distances(supp, fg, bg, qry)
    with jax.enable_x64(True):
        got64 = jax_distances(supp, fg, bg, qry, jnp.float64)
    for g, w in zip(got64[:2], want[:2], strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=tol.EXACT64, atol=tol.EXACT64)
    np.testing.assert_array_equal(np.asarray(got64[2]), want[2])
    got32 = jax_distances(supp, fg, bg, qry, jnp.float32)
    for g, w in zip(got32[:2], want[:2], strict=True):
        assert tol.rel_err(g, w) <= RTOL32


def test_class_missing_from_prediction_or_support_is_not_valid():
    supp, fg, bg, qry = random_episode(3, 2, 1, 1)
    fg[1] = 0.0  # way 2 has no support pixels
    with jax.enable_x64(True):
        scores = np.asarray(jax.jit(ops.query_scores)(qry, supp, fg, bg), np.float64)
        scores[..., 1] = -100.0  # way 1 is predicted nowhere
        _, _, valid = jax.jit(ops.prototype_distances)(
            jnp.asarray(qry, jnp.float64), jnp.asarray(scores), jnp.asarray(supp, jnp.float64),
            jnp.asarray(fg, jnp.float64), jnp.asarray(bg, jnp.float64),
        )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(valid), [True, False, False])


def test_batch_metric_averages_valid_pairs_and_has_no_gradient():
    episodes = [random_episode(s, 2, 2, 1) for s in (5, 6, 7)]
    supp, fg, bg, qry = (np.stack(x) for x in zip(*episodes, strict=True))
    fg[2, 0] = 0.0  # episode 3, way 1: no support: excluded from the means
    refs = [reference_distances(*e) for e in zip(supp, fg, bg, qry, strict=True)]
    euclid, cosine, valid = (np.stack(x) for x in zip(*refs, strict=True))  # [B, 1+N]

    def mean(d, cols):
        w = valid[:, cols]
        return np.sum(d[:, cols] * w) / w.sum()

    fg_cols, all_cols = slice(1, None), slice(None)
    parts = {"": all_cols, "_bg": slice(0, 1), "_fg": fg_cols}
    want = {f"proto_{kind}{part}": mean(dist, cols) for part, cols in parts.items()
            for kind, dist in (("l2", euclid), ("cos", cosine))}  # fmt: skip
    with jax.enable_x64(True):
        f64 = lambda x: jnp.asarray(x, jnp.float64)
        episodes = {"support_fg": f64(fg), "support_bg": f64(bg)}

        def metric(sf, qf):
            out = model_lib.panet_head(sf, qf, episodes["support_fg"], episodes["support_bg"])
            return model_lib.prototype_distance_metrics(out, episodes)

        got = jax.jit(metric)(f64(supp), f64(qry))
        grads = jax.jit(jax.grad(lambda s, q: sum(metric(s, q).values()), argnums=(0, 1)))(
            f64(supp), f64(qry)
        )
        assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in grads)
    assert set(got) == set(model_lib.PROTOTYPE_DISTANCE_KEYS) == set(want)
    for k, w in want.items():
        np.testing.assert_allclose(float(got[k]), w, rtol=tol.EXACT64, err_msg=k)


# ------------------------------------------------------------------------------------------
# Several prototypes per class
# Several prototypes per class (panet_jax.ops.cosine_kmeans / multi_prototype_scores) against a
# NumPy float64 restatement written from the definition (loops, no shared code), and the
# properties that make it usable: deterministic given the key, k = 1 reduces to one pooled mean,
# a pixel's score is its best prototype's.


def np_cosine_kmeans(points, weights, init, iterations):
    """Weighted spherical k-means, one point and one centre at a time."""
    points, weights = np.asarray(points, np.float64), np.asarray(weights, np.float64)
    unit = [p / max(np.linalg.norm(p), 1e-8) for p in points]
    centres = [unit[i].copy() for i in init]

    def nearest(u):
        sims = [float(u @ c) for c in centres]
        return sims.index(max(sims))

    for _ in range(iterations):
        sums = [np.zeros_like(points[0]) for _ in centres]
        for u, wt in zip(unit, weights, strict=True):
            sums[nearest(u)] += wt * u
        centres = [s / np.linalg.norm(s) if np.linalg.norm(s) > 0 else c
                   for s, c in zip(sums, centres, strict=True)]  # fmt: skip
    overall = sum(wt * p for p, wt in zip(points, weights, strict=True)) / max(weights.sum(), 1e-5)
    out = []
    for j in range(len(centres)):
        idx = [i for i, u in enumerate(unit) if nearest(u) == j]
        mass = sum(weights[i] for i in idx)
        out.append(sum(weights[i] * points[i] for i in idx) / mass if mass > 0 else overall)
    return np.stack(out)


def clustered_points(rng, n_clusters=3, per=12, c=8):
    dirs = rng.standard_normal((n_clusters, c))
    pts = np.concatenate([d + 0.3 * rng.standard_normal((per, c)) for d in dirs])
    return pts * rng.uniform(0.5, 2.0, (len(pts), 1))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_cosine_kmeans_equals_numpy_float64(k):
    rng = np.random.default_rng(k)
    points = clustered_points(rng)
    weights = rng.uniform(0, 1, len(points)) * (rng.uniform(size=len(points)) > 0.2)
    with jax.enable_x64(True):
        init = jax.jit(ops.kmeans_init, static_argnums=2)(jax.random.key(7), weights, k)
        got = jax.jit(ops.cosine_kmeans, static_argnums=3)(points, weights, init, 6)
        init = np.asarray(init)
    assert len(set(init.tolist())) == k and np.all(weights[init] > 0)  # distinct, foreground
    want = np_cosine_kmeans(points, weights, init, 6)
    assert tol.rel_err(got, want) < tol.EXACT64


def test_empty_cluster_falls_back_to_the_pooled_mean():
    """Fewer foreground points than prototypes: the extra clusters get the pooled mean."""
    points = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    weights = np.array([1.0, 1.0, 0.0])
    with jax.enable_x64(True):
        init = ops.kmeans_init(jax.random.key(0), jnp.asarray(weights), 3)
        got = np.asarray(ops.cosine_kmeans(jnp.asarray(points), jnp.asarray(weights), init))
    assert sorted(np.asarray(init)[:2].tolist()) == [0, 1]  # positive weights drawn first
    np.testing.assert_allclose(sorted(got.tolist()), sorted([[1, 0], [0, 1], [0.5, 0.5]]))


def _kmeans_episode(rng, n=2, k=2, hw=(24, 20), fhw=(6, 5), c=8):
    supp = rng.standard_normal((n, k, *fhw, c))
    qry = rng.standard_normal((1, *fhw, c))
    fg = np.zeros((n, k, *hw))
    fg[0, :, 2:14, 3:12], fg[1, :, 10:22, 8:19] = 1, 1
    return supp, qry, fg, 1 - fg


def test_multi_prototype_scores_best_prototype_and_panet_background():
    rng = np.random.default_rng(3)
    supp, qry, fg, bg = _kmeans_episode(rng)
    key, k = jax.random.key(5), 3
    scores = jax.jit(ops.multi_prototype_scores, static_argnums=4)
    with jax.enable_x64(True):
        got = np.asarray(scores(qry, supp, fg, bg, k, key))
        protos = jax.jit(jax.vmap(ops.class_prototypes, in_axes=(0, 0, None, 0)),
                         static_argnums=2)(supp, fg, k, jnp.stack(
                             [jax.random.fold_in(key, i) for i in range(2)]))  # fmt: skip
        again = np.asarray(scores(qry, supp, fg, bg, k, key))
    np.testing.assert_array_equal(got, again)  # deterministic given the key
    want_bg = npref.episode_forward(supp, fg, bg, qry)[0][..., 0]  # PANet's background
    assert tol.rel_err(got[..., 0], want_bg) < tol.EXACT64
    for i, p in enumerate(np.asarray(protos)):
        best = np.max([npref.cal_dist(qry, proto) for proto in p], axis=0)
        assert tol.rel_err(got[..., 1 + i], best) < tol.EXACT64


def test_head_with_one_prototype_is_panet():
    rng = np.random.default_rng(4)
    supp, qry, fg, bg = (x[None] for x in _kmeans_episode(rng))
    with jax.enable_x64(True):
        a = jax.jit(panet_head)(supp, qry, fg, bg)["logits"]
        want = npref.episode_forward(supp[0], fg[0], bg[0], qry[0], ops.DEFAULT_SCALE)[1]
    assert tol.rel_err(a[0], want) < tol.EXACT64
