"""Shared test set-up: quiet TensorFlow, keep it off accelerators, fast CPU compiles."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax

# Unit tests compile many small programs; XLA's heavy optimisations only cost time here.
jax.config.update("jax_disable_most_optimizations", True)
