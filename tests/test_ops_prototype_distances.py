"""``ops.query_prototypes`` / ``ops.prototype_distances`` and the batch metric of
``model.prototype_distance_metrics`` against an independent float64 NumPy reference.

The reference pools the support prototypes the official way (upsample, then pool:
``numpy_reference.episode_prototypes``), takes the query prototypes from the argmax of the
reference scores pooled over all queries (the official ``alignLoss``), and measures
``|s - q|`` and ``1 - cos(s, q)`` per class with plain loops.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
import tolerances as tol

from panet_jax import model as model_lib
from panet_jax import ops

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
