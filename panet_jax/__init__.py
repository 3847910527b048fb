"""panet_jax: PANet few-shot semantic segmentation in JAX/Flax."""

__version__ = "0.1.0"
