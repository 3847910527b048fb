"""Few-shot segmentation data: TFDS builders, class folds and the episode pipeline.

Importing this package does not import TensorFlow (the model code only needs
:mod:`panet_jax.data.spec`); the TF-backed names below load on first use:

* :class:`EpisodeConfig`, :func:`episode_dataset`, :func:`make_sampler` from
  :mod:`panet_jax.data.pipeline`;
* :func:`prepare`, :func:`load_prepared` from :mod:`panet_jax.data.builders`.

Pure-Python modules: :mod:`~panet_jax.data.spec`, :mod:`~panet_jax.data.folds`,
:mod:`~panet_jax.data.official_sampler`, :mod:`~panet_jax.data.weak`.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "EpisodeConfig": "panet_jax.data.pipeline",
    "episode_dataset": "panet_jax.data.pipeline",
    "make_sampler": "panet_jax.data.pipeline",
    "prepare": "panet_jax.data.builders",
    "load_prepared": "panet_jax.data.builders",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
