"""panet_jax: PANet few-shot semantic segmentation in JAX/Flax.

The user-facing calls, loaded on first use (``import panet_jax`` imports neither JAX nor
TensorFlow):

* :func:`panet_jax.predict` - segment your own images from 1-5 annotated examples
  (:class:`panet_jax.Predictor`: the model loaded once, for many calls);
* :func:`panet_jax.load_model` - a PANet and its variables from a checkpoint or weights;
* :func:`panet_jax.make_episode` - an episode from raw images and label maps (official rules).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "predict": ("panet_jax.inference.predictor", "predict"),
    "Predictor": ("panet_jax.inference.predictor", "Predictor"),
    "load_model": ("panet_jax.inference.loading", "load_model"),
    "make_episode": ("panet_jax.data.episodes", "make_episode"),
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'panet_jax' has no attribute {name!r}")
