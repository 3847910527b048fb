"""Encoders for PANet."""

from panet_jax.models.vgg import VGG16_LAYERS, VGG16Encoder

__all__ = ["VGG16_LAYERS", "VGG16Encoder"]
