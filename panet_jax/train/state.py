"""The train state (params + SGD momentum + step) and how it is built from a config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct
from flax.training import train_state

from panet_jax.models import names, registry
from panet_jax.train import optim

_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class TrainState(train_state.TrainState):
    """``step``, ``params`` (the PANet ``'params'`` collection), ``opt_state`` and
    ``batch_stats`` (the frozen BatchNorm statistics of a ResNet encoder, never updated;
    ``{}`` for VGG-16); ``apply_fn`` and ``tx`` are static. Training draws no randomness (no
    dropout): the data order is a pure function of ``(seed, step)``, so ``step`` is the whole
    loop position."""

    batch_stats: Any = struct.field(default_factory=dict)

    def variables(self, params: Any = None) -> dict[str, Any]:
        """The model variables: ``params`` (default: the state's) and the batch statistics."""
        params = self.params if params is None else params
        return {"params": params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}


def _state_from_variables(config: ml_collections.ConfigDict, variables: Any) -> TrainState:
    model = registry.build_panet(config)
    frozen = names.frozen_layers(config.model.encoder, config.model.frozen)
    tx = optim.make_optimizer(config.optim, frozen)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
    )


def _random_state(config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
    d = config.data
    model = registry.build_panet(config)
    variables = model.init_params(rng, tuple(d.image_size), d.n_ways, d.n_shots)
    return _state_from_variables(config, variables)


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
    """Random init from ``rng`` (kaiming, as the official code), then the ImageNet encoder
    weights of ``config.model.pretrained`` when set. Arrays live on the default device;
    :func:`panet_jax.runtime.parallel.replicate` puts them on a mesh."""
    init = jax.jit(lambda r: _random_state(config, r)).lower(rng)
    # Runs once: on CPU, XLA's optimising passes over the threefry-heavy init take ~10x longer
    # (tens of seconds) than running it unoptimised; values agree to float rounding.
    options = _FAST_COMPILE if jax.default_backend() == "cpu" else None
    state = init.compile(options)(rng)
    if config.model.pretrained:
        m = config.model
        weights = registry.load_weights(m.pretrained, m.encoder, m.width)
        variables = merge_encoder(state.variables(), weights)
        state = _state_from_variables(config, jax.tree.map(jnp.asarray, variables))
    return state


def merge_encoder(variables: Mapping[str, Any], encoder: Mapping[str, Any]) -> dict[str, Any]:
    """PANet ``variables`` with the encoder's replaced by ``encoder`` (``{'params', ...}``),
    cast to the model's dtypes; every tree and shape must match the model's."""
    if "batch_stats" in encoder:
        from panet_jax.models.weights import resnet as resnet_weights

        return resnet_weights.merge_encoder_variables(variables, encoder)
    from panet_jax.models.weights import vgg as vgg_weights

    return vgg_weights.merge_encoder_params(variables, encoder["params"])


def abstract_train_state(config: ml_collections.ConfigDict) -> TrainState:
    """Shapes/dtypes of the train state (``jax.ShapeDtypeStruct`` leaves), no compute."""
    return jax.eval_shape(lambda r: _random_state(config, r), jax.random.key(0))
