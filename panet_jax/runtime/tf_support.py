"""TensorFlow only decodes data and writes TensorBoard events here: keep it off accelerators.

TensorFlow claims every visible GPU's memory when it first runs an op (google/flax issue #445),
leaving none for JAX; hiding the GPUs from it before that first op avoids this. Every module
that makes TensorFlow run ops imports this one, which applies the setting once.
"""

from __future__ import annotations

import tensorflow as tf


def hide_accelerators_from_tensorflow() -> None:
    """``tf.config.set_visible_devices([], 'GPU')``, if TensorFlow has not started yet."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # TensorFlow already initialised its devices
        pass


hide_accelerators_from_tensorflow()
