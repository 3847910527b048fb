"""PANet: a shared encoder plus the pure few-shot head of :mod:`panet_jax.ops`.

``PANet`` is a Linen module over a *batch* of episodes (the dict format of
:mod:`panet_jax.data.spec`, with a leading ``B`` axis). Its params are
``{'params': {'encoder': ...}}``: the head has no parameters.

``panet_loss`` turns the module outputs into ``L_seg + lambda * L_PAR`` exactly as the
official ``train.py`` / ``FewShotSeg`` do for a batch: the query cross-entropy is a mean
over *all* non-ignored query pixels of the batch and the alignment loss a mean over
episodes. Under data parallelism (``axis_name`` given) each device returns its share of
the global loss, with the normalisers ``psum``-ed, so ``psum`` of the per-device losses
(and gradients) equals the single-device loss on the whole global batch, bit for bit in
exact arithmetic.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from panet_jax import ops
from panet_jax.data.spec import zeros_episode

Array = jax.Array


class PANet(nn.Module):
    """Encoder + prototype head.

    ``__call__(episodes)`` with batched episodes returns a dict:

    * ``logits``: ``[B, Q, H, W, 1 + N]`` upsampled scores (the official model output);
    * ``scores``: ``[B, Q, h, w, 1 + N]`` scores at feature resolution;
    * ``support_features``: ``[B, N, K, h, w, C]``; ``query_features``: ``[B, Q, h, w, C]``.
    """

    encoder: nn.Module
    scale: float = ops.DEFAULT_SCALE
    prototypes: int = 1  # foreground prototypes per class (> 1: ops.multi_prototype_scores)
    kmeans_seed: int = 0  # their k-means start: jax.random.key(kmeans_seed)

    def features(self, episodes: dict[str, Array]) -> tuple[Array, Array]:
        """Encode all supports and queries of the batch in one encoder call (as the official
        code does; harmless: VGG-16 has no batch norm and the ResNets' is frozen, so every
        image is encoded on its own)."""
        supp = episodes["support_images"]
        qry = episodes["query_images"]
        b, n, k, h, w, _ = supp.shape
        q = qry.shape[1]
        images = jnp.concatenate(
            [supp.reshape(b * n * k, h, w, 3), qry.reshape(b * q, h, w, 3)], axis=0
        )
        fts = self.encoder(images)
        fts = fts.astype(jnp.promote_types(fts.dtype, jnp.float32))  # bf16 -> f32; f64 stays
        fh, fw, c = fts.shape[1:]
        supp_fts = fts[: b * n * k].reshape(b, n, k, fh, fw, c)
        qry_fts = fts[b * n * k :].reshape(b, q, fh, fw, c)
        return supp_fts, qry_fts

    def __call__(self, episodes: dict[str, Array]) -> dict[str, Array]:
        supp_fts, qry_fts = self.features(episodes)
        return panet_head(
            supp_fts, qry_fts, episodes["support_fg"], episodes["support_bg"], self.scale,
            self.prototypes, jax.random.key(self.kmeans_seed),
        )  # fmt: skip

    def init_params(
        self, rng: Array, image_size: tuple[int, int], n_ways: int = 1, n_shots: int = 1
    ) -> dict[str, Any]:
        """Initialise variables from a dummy one-episode batch."""
        dummy = zeros_episode(n_ways, n_shots, 1, *image_size, batch=(1,))
        return self.init(rng, dummy)


def panet_head(
    support_features: Array,
    query_features: Array,
    support_fg: Array,
    support_bg: Array,
    scale: float = ops.DEFAULT_SCALE,
    prototypes: int = 1,
    key: Array | None = None,
) -> dict[str, Array]:
    """The parameter-free PANet head on a batch of encoded episodes.

    Args:
      support_features: ``[B, N, K, h, w, C]``; query_features: ``[B, Q, h, w, C]``;
      support_fg, support_bg: ``[B, N, K, H, W]`` masks at image resolution.
      prototypes: foreground prototypes per class (1: PANet); key: their k-means PRNG key
        (every episode of the batch uses the same).
    Returns:
      The :class:`PANet` outputs (``logits``, ``scores``, ``support_features``,
      ``query_features``); the features are passed through so :func:`panet_loss` can use them.
    """
    if prototypes == 1:
        scores = jax.vmap(ops.query_scores, in_axes=(0, 0, 0, 0, None))(
            query_features, support_features, support_fg, support_bg, scale
        )
    else:
        key = jax.random.key(0) if key is None else key
        scores = jax.vmap(ops.multi_prototype_scores, in_axes=(0, 0, 0, 0, None, None, None))(
            query_features, support_features, support_fg, support_bg, prototypes, key, scale
        )
    return {
        "logits": ops.resize_bilinear(scores, support_fg.shape[-2:]),
        "scores": scores,
        "support_features": support_features,
        "query_features": query_features,
    }


def panet_loss(
    outputs: dict[str, Array],
    episodes: dict[str, Array],
    *,
    par_weight: float = 1.0,
    align: bool = True,
    scale: float = ops.DEFAULT_SCALE,
    axis_name: str | None = None,
) -> tuple[Array, dict[str, Array]]:
    """``L_seg + par_weight * L_PAR`` for a batch of episodes.

    Args:
      outputs: ``PANet.__call__`` outputs for the batch.
      episodes: the batch (``query_labels [B, Q, H, W]``, ``support_fg/bg [B, N, K, H, W]``).
      par_weight: lambda; align: compute PAR at all (the official ``model.align``).
      axis_name: data-parallel axis; when given, the returned loss and metrics are this
        device's share and must be ``lax.psum``-ed (as must the gradients).
    Returns:
      ``(loss, metrics)`` with metrics ``loss``, ``loss_seg``, ``loss_par`` (shares, as loss).
    """
    ce_sum, ce_count = ops.cross_entropy_sum(outputs["logits"], episodes["query_labels"])
    n_episodes = jnp.asarray(outputs["logits"].shape[0], ce_sum.dtype)
    if axis_name is not None:
        ce_count = jax.lax.psum(ce_count, axis_name)
        n_episodes = jax.lax.psum(n_episodes, axis_name)
    loss_seg = ce_sum / jnp.maximum(ce_count, 1.0)
    if align:
        par = jax.vmap(ops.alignment_loss, in_axes=(0, 0, 0, 0, 0, None))(
            outputs["query_features"],
            outputs["scores"],
            outputs["support_features"],
            episodes["support_fg"],
            episodes["support_bg"],
            scale,
        )
        loss_par = jnp.sum(par) / n_episodes
    else:
        loss_par = jnp.zeros((), ce_sum.dtype)
    loss = loss_seg + par_weight * loss_par
    return loss, {"loss": loss, "loss_seg": loss_seg, "loss_par": loss_par}


PROTOTYPE_DISTANCE_KEYS = tuple(
    f"proto_{kind}{part}" for kind in ("l2", "cos") for part in ("", "_bg", "_fg")
)


def prototype_distance_metrics(
    outputs: dict[str, Array], episodes: dict[str, Array], *, axis_name: str | None = None
) -> dict[str, Array]:
    """Mean distance between support and query-prediction prototypes over a batch (no gradient).

    :func:`panet_jax.ops.prototype_distances` of every episode, averaged over the valid
    (episode, class) pairs: ``proto_l2`` / ``proto_cos`` (Euclidean / cosine distance, all
    classes), ``_bg`` (background) and ``_fg`` (the N ways pooled). Computed whether or not
    PAR trains (the quantities it would align). With ``axis_name`` the values are this
    device's shares (counts ``psum``-ed) to be ``psum``-ed like the losses; 0 when no pair is
    valid.
    """
    out = jax.lax.stop_gradient(
        {k: outputs[k] for k in ("query_features", "scores", "support_features")}
    )
    l2, cos, valid = jax.vmap(ops.prototype_distances)(
        out["query_features"], out["scores"], out["support_features"],
        episodes["support_fg"], episodes["support_bg"],
    )  # fmt: skip
    valid = valid.astype(l2.dtype)  # [B, 1 + N]
    parts = {"": jnp.ones(valid.shape[-1]), "_bg": jnp.arange(valid.shape[-1]) == 0}
    parts["_fg"] = ~parts["_bg"]
    metrics = {}
    for part, select in parts.items():
        weight = valid * select.astype(valid.dtype)
        count = jnp.sum(weight)
        if axis_name is not None:
            count = jax.lax.psum(count, axis_name)
        for kind, dist in (("l2", l2), ("cos", cos)):
            metrics[f"proto_{kind}{part}"] = jnp.sum(dist * weight) / jnp.maximum(count, 1.0)
    return metrics
