"""The official PANet optimiser as optax: PyTorch SGD + MultiStepLR stepped every iteration.

PyTorch's ``SGD(lr, momentum=mu, weight_decay=wd)`` (no dampening, no Nesterov) does, per
step ``t``::

    d = g + wd * w          # L2 on *all* params, biases included
    v = mu * v + d          # v starts at d on the first step (= mu * 0 + d)
    w = w - lr(t) * v

and ``MultiStepLR(milestones, gamma)`` stepped once per iteration gives
``lr(t) = lr * gamma ** #{m in milestones : m <= t}`` (1e-3 for t < 10000, 1e-4 from 10000,
...). The optax chain below is exactly that, in that order: the decay is added before the
momentum trace and the learning rate is applied after it.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import optax
from flax import traverse_util


def lr_schedule(lr: float, milestones: Sequence[int], gamma: float) -> optax.Schedule:
    """``lr * gamma ** (number of milestones <= step)``, indexed by the 0-based update count."""
    scales: dict[int, float] = {}
    for m in sorted(int(m) for m in milestones):
        scales[m] = scales.get(m, 1.0) * gamma
    return optax.piecewise_constant_schedule(lr, scales)


def pytorch_sgd(
    learning_rate: float | optax.Schedule, momentum: float, weight_decay: float
) -> optax.GradientTransformation:
    """``torch.optim.SGD(lr, momentum, weight_decay)`` (dampening 0, no Nesterov)."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.trace(decay=momentum, nesterov=False),
        optax.scale_by_learning_rate(learning_rate),
    )


def schedule_from_config(optim: ml_collections.ConfigDict) -> optax.Schedule:
    """The learning-rate schedule of ``config.optim``."""
    return lr_schedule(optim.lr, optim.milestones, optim.gamma)


def freeze_encoder_layers(
    tx: optax.GradientTransformation, frozen: Sequence[str]
) -> optax.GradientTransformation:
    """``tx`` on every param except ``params['encoder'][layer]`` for ``layer`` in ``frozen``,
    whose updates are exactly zero (``optax.set_to_zero`` under ``optax.multi_transform``: no
    weight decay, no momentum state), so those params stay bit-identical."""
    if not frozen:
        return tx
    frozen = frozenset(frozen)

    def labels(params):
        def label(path: tuple[str, ...], _) -> str:
            is_frozen = len(path) > 1 and path[0] == "encoder" and path[1] in frozen
            return "frozen" if is_frozen else "trained"

        return traverse_util.path_aware_map(label, params)

    return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)


def make_optimizer(
    optim: ml_collections.ConfigDict, frozen: Sequence[str] = ()
) -> optax.GradientTransformation:
    """The optimiser of ``config.optim`` (keys lr, momentum, weight_decay, milestones, gamma),
    leaving the encoder layers ``frozen`` untouched."""
    tx = pytorch_sgd(schedule_from_config(optim), optim.momentum, optim.weight_decay)
    return freeze_encoder_layers(tx, frozen)
