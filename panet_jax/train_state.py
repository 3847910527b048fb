"""The train state (params + SGD momentum + step) and how it is built from a config."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax.training import train_state

from panet_jax import optim
from panet_jax.model import PANet
from panet_jax.models.vgg import VGG16Encoder

# Compute dtype -> (compute, param) dtypes. float64 is for exactness checks (needs x64).
_DTYPES = {
    "float32": (jnp.float32, jnp.float32),
    "bfloat16": (jnp.bfloat16, jnp.float32),
    "float64": (jnp.float64, jnp.float64),
}
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class TrainState(train_state.TrainState):
    """``step``, ``params`` (the PANet ``'params'`` collection), ``opt_state``; ``apply_fn``
    and ``tx`` are static. Training draws no randomness (no dropout): the data order is a pure
    function of ``(seed, step)``, so ``step`` is the whole loop position."""


def build_model(config: ml_collections.ConfigDict) -> PANet:
    """``PANet(VGG16Encoder(width, dtype), scale)`` of ``config.model``."""
    m = config.model
    if m.encoder != "vgg16":
        raise ValueError(f"config.model.encoder={m.encoder!r}: only 'vgg16' is implemented")
    if m.dtype not in _DTYPES:
        raise ValueError(f"config.model.dtype={m.dtype!r}; expected one of {sorted(_DTYPES)}")
    dtype, param_dtype = _DTYPES[m.dtype]
    encoder = VGG16Encoder(width=m.width, dtype=dtype, param_dtype=param_dtype)
    return PANet(encoder=encoder, scale=m.scale)


def _state_from_params(config: ml_collections.ConfigDict, params: Any) -> TrainState:
    model = build_model(config)
    tx = optim.make_optimizer(config.optim)
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def _random_state(config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
    d = config.data
    variables = build_model(config).init_params(rng, tuple(d.image_size), d.n_ways, d.n_shots)
    return _state_from_params(config, variables["params"])


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
    """Random init from ``rng`` (kaiming, as the official code), then the ImageNet encoder
    weights of ``config.model.pretrained`` when set. Arrays live on the default device;
    :func:`panet_jax.parallel.replicate` puts them on a mesh."""
    init = jax.jit(lambda r: _random_state(config, r)).lower(rng)
    # Runs once: on CPU, XLA's optimising passes over the threefry-heavy init take ~10x longer
    # (tens of seconds) than running it unoptimised; values agree to float rounding.
    options = _FAST_COMPILE if jax.default_backend() == "cpu" else None
    state = init.compile(options)(rng)
    if config.model.pretrained:
        from panet_jax import pretrained  # needs torch/h5py only on this path

        encoder = pretrained.load_pretrained(config.model.pretrained, width=config.model.width)
        variables = pretrained.merge_encoder_params({"params": state.params}, encoder)
        params = jax.tree.map(jnp.asarray, variables["params"])
        state = _state_from_params(config, params)
    return state


def abstract_train_state(config: ml_collections.ConfigDict) -> TrainState:
    """Shapes/dtypes of the train state (``jax.ShapeDtypeStruct`` leaves), no compute."""
    return jax.eval_shape(lambda r: _random_state(config, r), jax.random.key(0))
