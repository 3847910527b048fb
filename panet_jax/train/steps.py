"""The pure per-device steps that training and evaluation run, in the pmap programming model.

Each function here is written for *one device*: it sees its ``[per_device_batch, ...]`` block
of the global batch and reduces across devices with collectives over ``axis_name``
(:data:`panet_jax.runtime.parallel.BATCH_AXIS`); :mod:`panet_jax.runtime.parallel` runs it as
``jit(shard_map)`` or ``pmap``. With ``axis_name=None`` a step is the plain single-device one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from panet_jax import ops
from panet_jax.evaluation import metrics
from panet_jax.model import PANet, panet_loss, prototype_distance_metrics
from panet_jax.runtime.parallel import BATCH_AXIS
from panet_jax.train import optim
from panet_jax.train.state import TrainState

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]
TrainStep = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
CountsTriple = dict[str, metrics.Counts]  # 'official' | 'strict' | 'background'


def make_train_step(
    config: ml_collections.ConfigDict, axis_name: str | None = BATCH_AXIS
) -> TrainStep:
    """``train_step(state, batch) -> (state, metrics)``: forward, ``L_seg + lambda L_PAR``,
    backward, gradient ``psum``, SGD update.

    ``batch`` holds ``[per_device_batch, ...]`` episodes (:mod:`panet_jax.data.spec`).
    :func:`panet_jax.model.panet_loss` returns this device's share of the global loss
    (normalisers ``psum``-ed), so the ``psum`` of the shares and of their gradients is the
    single-device loss on the whole global batch. Metrics (global, the same on every device):
    ``loss``, ``loss_seg``, ``loss_par``, ``lr`` (the rate this update used), and the
    prototype distances of :func:`panet_jax.model.prototype_distance_metrics` (``proto_*``,
    computed with or without PAR, no gradient).
    """
    schedule = optim.schedule_from_config(config.optim)
    loss_kwargs = dict(
        par_weight=float(config.train.par_weight),
        align=bool(config.train.align),
        scale=float(config.model.scale),
        axis_name=axis_name,
    )

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        params = state.params
        if axis_name is not None:
            # Mark the replicated params as per-device, so the gradient below is this device's
            # own (under shard_map's check_vma, differentiating an *unvarying* input would
            # insert the psum implicitly; pmap never does). The psum is then explicit, once.
            params = jax.lax.pcast(params, axis_name, to="varying")

        def loss_fn(p):
            outputs = state.apply_fn(state.variables(p), batch)
            loss, loss_metrics = panet_loss(outputs, batch, **loss_kwargs)
            distances = prototype_distance_metrics(outputs, batch, axis_name=axis_name)
            return loss, {**loss_metrics, **distances}

        (_, step_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        if axis_name is not None:
            grads = jax.lax.psum(grads, axis_name)
            step_metrics = jax.lax.psum(step_metrics, axis_name)
        step_metrics = dict(step_metrics, lr=jnp.asarray(schedule(state.step), jnp.float32))
        return state.apply_gradients(grads=grads), step_metrics

    return train_step


def labels_step(state: TrainState, batch: Batch) -> jax.Array:
    """``[B, Q, H, W]`` argmax predictions of this device's episodes (no collective)."""
    return ops.hard_labels(state.apply_fn(state.variables(), batch)["logits"])


def make_eval_step(
    model: PANet, num_classes: int, axis_name: str | None = BATCH_AXIS,
    *, original_size: bool = False,
) -> Callable[[Any, Batch, jax.Array], tuple[Any, jax.Array]]:  # fmt: skip
    """``eval_step(variables, batch, valid [B]) -> (counts, predictions [B, Q, H, W])``.

    ``counts``: ``{'official', 'strict', 'background'}`` int32 :class:`metrics.Counts`
    ``[num_classes + 1]`` summed over the global batch (padding episodes, ``valid=False``,
    count nothing): the official metric, the strict one, and an all-background prediction's.
    ``original_size``: instead of counts, this device's low-resolution ``scores [B, Q, h, w,
    1 + N]`` (no collective), scored at each query's raw size on the host
    (:mod:`panet_jax.evaluation.original_size`).
    """

    def eval_step(variables: Any, batch: Batch, valid: jax.Array):
        outputs = model.apply(variables, batch)
        pred = ops.hard_labels(outputs["logits"])
        if original_size:
            return outputs["scores"], pred
        labels, ids = batch["query_labels"], batch["class_ids"]

        def counts(p: jax.Array, strict: bool = False) -> metrics.Counts:
            return metrics.batch_counts(p, labels, ids, num_classes, valid=valid, strict=strict)

        out = {
            "official": counts(pred),
            "strict": counts(pred, strict=True),
            "background": counts(jnp.zeros_like(pred)),
        }
        return (out if axis_name is None else jax.lax.psum(out, axis_name)), pred

    return eval_step
