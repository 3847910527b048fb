"""Several prototypes per class (panet_jax.ops.cosine_kmeans / multi_prototype_scores) against a
NumPy float64 restatement written from the definition (loops, no shared code), and the
properties that make it usable: deterministic given the key, k = 1 reduces to one pooled mean,
a pixel's score is its best prototype's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as npref
import pytest
import tolerances as tol

from panet_jax import ops
from panet_jax.model import panet_head


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


def _episode(rng, n=2, k=2, hw=(24, 20), fhw=(6, 5), c=8):
    supp = rng.standard_normal((n, k, *fhw, c))
    qry = rng.standard_normal((1, *fhw, c))
    fg = np.zeros((n, k, *hw))
    fg[0, :, 2:14, 3:12], fg[1, :, 10:22, 8:19] = 1, 1
    return supp, qry, fg, 1 - fg


def test_multi_prototype_scores_best_prototype_and_panet_background():
    rng = np.random.default_rng(3)
    supp, qry, fg, bg = _episode(rng)
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
    supp, qry, fg, bg = (x[None] for x in _episode(rng))
    with jax.enable_x64(True):
        a = jax.jit(panet_head)(supp, qry, fg, bg)["logits"]
        want = npref.episode_forward(supp[0], fg[0], bg[0], qry[0], ops.DEFAULT_SCALE)[1]
    assert tol.rel_err(a[0], want) < tol.EXACT64
