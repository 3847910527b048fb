"""Pure PANet operations: masked average pooling, prototypes, cosine scoring, PAR.

Every function here is pure, ``jax.jit``-able and ``jax.vmap``-able, and follows the
official PyTorch code (kaixin96/PANet, ``models/fewshot.py``: ``getFeatures``,
``getPrototype``, ``calDist``, ``alignLoss``) number for number, the paper's Eq. 1-4 and the
prototype alignment of its Sec. 3.3.

Shape letters: ``N`` ways, ``K`` shots, ``Q`` queries, ``C`` feature channels,
``h x w`` feature resolution, ``H x W`` image (mask) resolution, ``P`` prototypes.
Feature maps are channels-last (``[..., h, w, C]``). Per-episode functions take
unbatched arrays; use ``jax.vmap`` for a batch of episodes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from panet_jax.data.spec import IGNORE_LABEL

Array = jax.Array

MAP_EPS = 1e-5  # masked-average-pooling denominator epsilon (official getFeatures / alignLoss)
COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity default
DEFAULT_SCALE = 20.0  # the paper's alpha
KMEANS_ITERATIONS = 10  # fixed Lloyd iterations of the multi-prototype k-means
# The few-shot head is cheap next to the encoder; keep it exact on every backend.
_HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------------------
# Bilinear resizing with PyTorch's align_corners=False semantics.
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out_size, in_size]`` matrix of ``F.interpolate(mode='bilinear')`` along one axis.

    PyTorch (``align_corners=False``): the source coordinate of output index ``i`` is
    ``max((i + 0.5) * in/out - 0.5, 0)``; it interpolates between ``floor(src)`` and the next
    index, clamped to the last one. No antialiasing, also when downsampling.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"bilinear_matrix sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = src - i0
    m = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    m.setflags(write=False)
    return m


def _matrices(in_hw: tuple[int, int], out_hw: tuple[int, int], dtype) -> tuple[Array, Array]:
    rh = jnp.asarray(bilinear_matrix(in_hw[0], out_hw[0]), dtype)
    rw = jnp.asarray(bilinear_matrix(in_hw[1], out_hw[1]), dtype)
    return rh, rw


def resize_bilinear(x: Array, out_hw: tuple[int, int]) -> Array:
    """Resize ``x [..., h, w, C]`` to ``[..., H, W, C]`` exactly as PyTorch bilinear
    (``align_corners=False``) does. Implemented as two small matmuls."""
    h, w = x.shape[-3], x.shape[-2]
    if (h, w) == tuple(out_hw):
        return x
    rh, rw = _matrices((h, w), out_hw, x.dtype)
    return jnp.einsum("Hh,...hwc,Ww->...HWc", rh, x, rw, precision=_HIGHEST)


def project_mask(mask: Array, feature_hw: tuple[int, int]) -> Array:
    """Pull a mask ``[..., H, W]`` back to feature resolution ``[..., h, w]`` through the
    transpose of the bilinear upsampling ``h x w -> H x W``.

    For any features ``F``: ``sum_xy upsample(F)(x, y) M(x, y) == sum_ij F(i, j) R(M)(i, j)``,
    so pooling upsampled features (what the official code does) equals pooling the original
    features with ``R(M)``, without materialising ``[H, W, C]``.
    """
    rh, rw = _matrices(tuple(feature_hw), mask.shape[-2:], mask.dtype)
    return jnp.einsum("Hh,...HW,Ww->...hw", rh, mask, rw, precision=_HIGHEST)


# --------------------------------------------------------------------------------------
# Prototypes.
# --------------------------------------------------------------------------------------


def masked_average_pooling(features: Array, mask: Array, eps: float = MAP_EPS) -> Array:
    """Official ``getFeatures``: ``sum_xy up(F) * M / (sum_xy M + eps)``.

    Args:
      features: ``[..., h, w, C]`` feature maps.
      mask: ``[..., H, W]`` float 0/1 mask at image resolution (same leading axes).
    Returns:
      ``[..., C]`` prototypes. An empty mask gives the zero vector.
    """
    mask = mask.astype(features.dtype)
    weights = project_mask(mask, features.shape[-3:-1])
    num = jnp.einsum("...hw,...hwc->...c", weights, features, precision=_HIGHEST)
    return num / (jnp.sum(mask, axis=(-2, -1))[..., None] + eps)


def support_prototypes(
    support_features: Array, support_fg: Array, support_bg: Array
) -> tuple[Array, Array]:
    """Official ``getPrototype``: one fg prototype per way, one shared bg prototype.

    Args:
      support_features: ``[N, K, h, w, C]``.
      support_fg, support_bg: ``[N, K, H, W]`` float 0/1 masks.
    Returns:
      ``(fg [N, C], bg [C])``: fg = mean over shots of the per-shot MAP vectors; bg = mean over
      ways of the per-way shot means (shots are averaged as vectors, not pooled jointly).
    """
    fg = masked_average_pooling(support_features, support_fg).mean(axis=1)
    bg = masked_average_pooling(support_features, support_bg).mean(axis=1).mean(axis=0)
    return fg, bg


def episode_prototypes(support_features: Array, support_fg: Array, support_bg: Array) -> Array:
    """``[1 + N, C]`` prototypes in logit order: background first, then the N ways."""
    fg, bg = support_prototypes(support_features, support_fg, support_bg)
    return jnp.concatenate([bg[None], fg], axis=0)


# --------------------------------------------------------------------------------------
# Scoring.
# --------------------------------------------------------------------------------------


def cosine_logits(
    features: Array, prototypes: Array, scale: float = DEFAULT_SCALE, eps: float = COSINE_EPS
) -> Array:
    """``scale * cos(F(x, y), p)`` for every pixel and prototype.

    Uses PyTorch's ``x.y / sqrt(max(|x|^2 |y|^2, eps^2))``, so a zero prototype scores 0.

    Args:
      features: ``[..., h, w, C]``.
      prototypes: ``[P, C]``, or ``[..., P, C]`` with the same leading axes as ``features``.
    Returns:
      ``[..., h, w, P]``.
    """
    if prototypes.ndim == 2:
        dots = jnp.einsum("...c,pc->...p", features, prototypes, precision=_HIGHEST)
        p_sq = jnp.sum(prototypes * prototypes, axis=-1)
    else:
        dots = jnp.einsum("...hwc,...pc->...hwp", features, prototypes, precision=_HIGHEST)
        p_sq = jnp.sum(prototypes * prototypes, axis=-1)[..., None, None, :]
    f_sq = jnp.sum(features * features, axis=-1, keepdims=True)
    return scale * dots / jnp.sqrt(jnp.maximum(f_sq * p_sq, eps * eps))


def query_scores(
    query_features: Array,
    support_features: Array,
    support_fg: Array,
    support_bg: Array,
    scale: float = DEFAULT_SCALE,
) -> Array:
    """Low-resolution segmentation logits of one episode.

    Args:
      query_features: ``[Q, h, w, C]``; support_features: ``[N, K, h, w, C]``;
      support_fg, support_bg: ``[N, K, H, W]``.
    Returns:
      ``[Q, h, w, 1 + N]`` (channel 0 = background); the official ``pred`` before upsampling.
    """
    protos = episode_prototypes(support_features, support_fg, support_bg)
    return cosine_logits(query_features, protos, scale)


# --------------------------------------------------------------------------------------
# Several prototypes per class: cosine k-means of the support foreground.
# --------------------------------------------------------------------------------------


def kmeans_init(key: Array, weights: Array, k: int) -> Array:
    """``[k]`` distinct indices into ``weights [P]``, drawn without replacement with
    probability proportional to the weights (Gumbel top-k; zero-weight points only once the
    positive ones are used up)."""
    scores = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -1e30)
    return jax.lax.top_k(scores + jax.random.gumbel(key, weights.shape, weights.dtype), k)[1]


def cosine_kmeans(
    points: Array, weights: Array, init: Array, iterations: int = KMEANS_ITERATIONS
) -> Array:
    """Weighted spherical k-means: ``k`` prototypes of ``points [P, C]`` (weights ``[P]``).

    Centres start at ``points[init]`` (``init [k]``, see :func:`kmeans_init`); each of the
    ``iterations`` Lloyd steps assigns every point to its most cosine-similar centre (the
    first on ties) and moves each centre to the direction of the weighted sum of its unit
    points (a centre with no weight stays). Returns ``[k, C]``: each cluster's weighted mean
    of the (unnormalised) points, or the weighted mean of all points for an empty cluster.
    """
    unit = points / jnp.maximum(jnp.linalg.norm(points, axis=-1, keepdims=True), COSINE_EPS)
    k = init.shape[0]

    def members(centres: Array) -> Array:  # [P, k] one-hot of each point's nearest centre
        sims = jnp.einsum("pc,kc->pk", unit, centres, precision=_HIGHEST)
        return jax.nn.one_hot(jnp.argmax(sims, axis=-1), k, dtype=points.dtype)

    def step(centres: Array, _) -> tuple[Array, None]:
        sums = jnp.einsum("pk,p,pc->kc", members(centres), weights, unit, precision=_HIGHEST)
        norm = jnp.linalg.norm(sums, axis=-1, keepdims=True)
        return jnp.where(norm > 0, sums / jnp.where(norm > 0, norm, 1.0), centres), None

    centres, _ = jax.lax.scan(step, unit[init], None, length=iterations)
    m = members(centres) * weights[:, None]  # [P, k]
    mass = jnp.sum(m, axis=0)[:, None]
    means = jnp.einsum("pk,pc->kc", m, points, precision=_HIGHEST) / jnp.where(mass > 0, mass, 1)
    overall = weights @ points / jnp.maximum(jnp.sum(weights), MAP_EPS)
    return jnp.where(mass > 0, means, overall[None])


def class_prototypes(
    support_features: Array, support_fg: Array, k: int, key: Array,
    iterations: int = KMEANS_ITERATIONS,
) -> Array:  # fmt: skip
    """``[k, C]`` prototypes of one class: :func:`cosine_kmeans` over the feature pixels of
    its ``K`` supports (``[K, h, w, C]``), weighted by the fg masks (``[K, H, W]``) pulled back
    to feature resolution (:func:`project_mask`, the weights of masked average pooling)."""
    c = support_features.shape[-1]
    weights = project_mask(support_fg.astype(support_features.dtype), support_features.shape[-3:-1])
    points, weights = support_features.reshape(-1, c), weights.reshape(-1)
    return cosine_kmeans(points, weights, kmeans_init(key, weights, k), iterations)


def multi_prototypes(
    support_features: Array, support_fg: Array, support_bg: Array, k: int, key: Array
) -> tuple[Array, Array]:
    """``(bg [C], fg [N, k, C])``: PANet's one background prototype (:func:`support_prototypes`)
    and ``k`` foreground prototypes per way (:func:`class_prototypes`; way ``n`` draws its
    k-means start from ``fold_in(key, n)``).

    Args: support_features ``[N, K, h, w, C]``; support_fg, support_bg ``[N, K, H, W]``.
    """
    _, bg = support_prototypes(support_features, support_fg, support_bg)
    keys = jax.vmap(lambda n: jax.random.fold_in(key, n))(jnp.arange(support_fg.shape[0]))
    fg = jax.vmap(class_prototypes, in_axes=(0, 0, None, 0))(support_features, support_fg, k, keys)
    return bg, fg


def best_prototype_logits(
    features: Array, bg: Array, fg: Array, scale: float = DEFAULT_SCALE
) -> Array:
    """``[..., h, w, 1 + N]`` logits (channel 0 = background): a pixel's way score is its best
    prototype's ``scale * cos`` (``features [..., h, w, C]``, ``bg [C]``, ``fg [N, k, C]``)."""
    n, k, c = fg.shape
    scores = cosine_logits(features, jnp.concatenate([bg[None], fg.reshape(-1, c)]), scale)
    way_scores = jnp.max(scores[..., 1:].reshape(*scores.shape[:-1], n, k), axis=-1)
    return jnp.concatenate([scores[..., :1], way_scores], axis=-1)


def multi_prototype_scores(
    query_features: Array, support_features: Array, support_fg: Array, support_bg: Array,
    k: int, key: Array, scale: float = DEFAULT_SCALE,
) -> Array:  # fmt: skip
    """:func:`query_scores` with ``k`` foreground prototypes per way (:func:`multi_prototypes`):
    a pixel's way score is its best prototype's ``scale * cos``; the background keeps PANet's
    one prototype.

    Args: as :func:`query_scores`, plus ``k`` and the PRNG ``key``.
    Returns: ``[Q, h, w, 1 + N]`` (channel 0 = background).
    """
    bg, fg = multi_prototypes(support_features, support_fg, support_bg, k, key)
    return best_prototype_logits(query_features, bg, fg, scale)


def hard_labels(logits: Array) -> Array:
    """Hard segmentation ``[..., H, W]`` from logits ``[..., H, W, 1 + N]`` (0 = background)."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


# --------------------------------------------------------------------------------------
# Losses.
# --------------------------------------------------------------------------------------


def cross_entropy_sum(
    logits: Array, labels: Array, ignore_label: int = IGNORE_LABEL
) -> tuple[Array, Array]:
    """Summed pixel cross-entropy and the number of non-ignored pixels.

    Args:
      logits: ``[..., H, W, P]``; labels: ``[..., H, W]`` ints in ``[0, P)`` or ``ignore_label``.
    Returns:
      ``(sum of -log softmax(logits)[label] over valid pixels, count of valid pixels)``, both
      scalars of at least float32 (float64 logits stay float64).
      ``nn.CrossEntropyLoss(ignore_index=255)`` is ``sum / count``.
    """
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    valid = labels != ignore_label
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(valid).astype(logits.dtype)


def cross_entropy(logits: Array, labels: Array, ignore_label: int = IGNORE_LABEL) -> Array:
    """Mean cross-entropy over non-ignored pixels; 0 (not NaN) when every pixel is ignored."""
    total, count = cross_entropy_sum(logits, labels, ignore_label)
    return total / jnp.maximum(count, 1.0)


def support_alignment_labels(support_fg: Array, support_bg: Array) -> Array:
    """Official PAR support label: 255, then 1 on fg, then 0 on bg (bg wins on overlap)."""
    label = jnp.where(support_fg == 1, 1, IGNORE_LABEL)
    return jnp.where(support_bg == 1, 0, label).astype(jnp.int32)


def query_prototypes(query_features: Array, query_scores_lowres: Array) -> tuple[Array, Array]:
    """PAR's query prototypes: features pooled over the hard prediction (official ``alignLoss``).

    ``argmax`` of the low-resolution logits is a one-hot pseudo-mask (no gradient); each class
    is pooled at feature resolution over all queries: ``sum F * M / (sum M + eps)``.

    Args:
      query_features: ``[Q, h, w, C]``; query_scores_lowres: ``[Q, h, w, 1 + N]``.
    Returns:
      ``(prototypes [1 + N, C], area [1 + N])``: background first; ``area`` is the number of
      feature pixels predicted as each class (0: that prototype is the zero vector).
    """
    n_classes = query_scores_lowres.shape[-1]
    pseudo = jax.nn.one_hot(jnp.argmax(query_scores_lowres, axis=-1), n_classes)
    pseudo = jax.lax.stop_gradient(pseudo.astype(query_features.dtype))  # [Q, h, w, 1+N]
    area = jnp.sum(pseudo, axis=(0, 1, 2))
    protos = jnp.einsum("qhwp,qhwc->pc", pseudo, query_features, precision=_HIGHEST)
    return protos / (area[:, None] + MAP_EPS), area


def prototype_distances(
    query_features: Array,
    query_scores_lowres: Array,
    support_features: Array,
    support_fg: Array,
    support_bg: Array,
) -> tuple[Array, Array, Array]:
    """Distances between the two sets of prototypes PAR aligns, for one episode.

    The support prototypes of :func:`episode_prototypes` (what segments the query) against the
    query prototypes of :func:`query_prototypes` (what PAR segments the supports with).

    Args:
      query_features: ``[Q, h, w, C]``; query_scores_lowres: ``[Q, h, w, 1 + N]``;
      support_features: ``[N, K, h, w, C]``; support_fg, support_bg: ``[N, K, H, W]``.
    Returns:
      ``(euclidean [1 + N], cosine [1 + N], valid [1 + N] bool)``, background first:
      ``|s_p - q_p|_2`` and ``1 - cos(s_p, q_p)`` (PyTorch's cosine, eps 1e-8). A class is
      not ``valid`` when the query prediction or the support masks hold none of it (one of its
      prototypes is then the zero vector, not a feature mean).
    """
    s_protos = episode_prototypes(support_features, support_fg, support_bg)
    q_protos, area = query_prototypes(query_features, query_scores_lowres)
    euclidean = jnp.sqrt(jnp.sum(jnp.square(s_protos - q_protos), axis=-1))
    dots = jnp.sum(s_protos * q_protos, axis=-1)
    norms_sq = jnp.sum(s_protos * s_protos, axis=-1) * jnp.sum(q_protos * q_protos, axis=-1)
    cosine = 1.0 - dots / jnp.sqrt(jnp.maximum(norms_sq, COSINE_EPS * COSINE_EPS))
    support_area = jnp.concatenate(
        [jnp.sum(support_bg, axis=(0, 1, 2, 3))[None], jnp.sum(support_fg, axis=(1, 2, 3))]
    )
    return euclidean, cosine, (area > 0) & (support_area > 0)


def alignment_loss(
    query_features: Array,
    query_scores_lowres: Array,
    support_features: Array,
    support_fg: Array,
    support_bg: Array,
    scale: float = DEFAULT_SCALE,
) -> Array:
    """Prototype alignment regularisation (official ``alignLoss``) for one episode.

    1. ``argmax`` of the low-resolution query logits gives a hard pseudo-mask (no gradient);
    2. query prototypes are pooled at feature resolution over all queries (gradient flows);
    3. each support of each non-skipped way is re-segmented against ``[bg, way]`` query
       prototypes, the ``[h, w, 2]`` logits are upsampled to ``H x W`` and scored with
       cross-entropy (ignore 255) against the support masks;
    4. terms are divided by ``K`` and by the *total* ``N``; a way whose predicted foreground
       is empty over all queries is skipped.

    Args:
      query_features: ``[Q, h, w, C]``; query_scores_lowres: ``[Q, h, w, 1 + N]``;
      support_features: ``[N, K, h, w, C]``; support_fg, support_bg: ``[N, K, H, W]``.
    Returns:
      Scalar loss. A support whose label is all-ignore contributes 0 (PyTorch gives NaN).
    """
    n_ways, n_shots = support_fg.shape[:2]
    image_hw = support_fg.shape[-2:]
    q_protos, area = query_prototypes(query_features, query_scores_lowres)
    # Per way: [bg, fg_way] prototypes, shared background.
    bg = jnp.broadcast_to(q_protos[0], q_protos[1:].shape)
    way_protos = jnp.stack([bg, q_protos[1:]], axis=1)  # [N, 2, C]
    way_protos = jnp.broadcast_to(way_protos[:, None], (n_ways, n_shots, *way_protos.shape[1:]))
    supp_scores = cosine_logits(support_features, way_protos, scale)  # [N, K, h, w, 2]
    supp_scores = resize_bilinear(supp_scores, image_hw)  # [N, K, H, W, 2]
    labels = support_alignment_labels(support_fg, support_bg)
    per_support = jax.vmap(jax.vmap(cross_entropy))(supp_scores, labels)  # [N, K]
    keep = (area[1:] > 0).astype(per_support.dtype)  # [N]
    return jnp.sum(per_support * keep[:, None]) / n_shots / n_ways
