"""Encoders for PANet."""

from panet_jax.models.resnet import RESNET_BLOCKS, ResNetEncoder
from panet_jax.models.vgg import VGG16_LAYERS, VGG16Encoder

__all__ = ["VGG16_LAYERS", "VGG16Encoder"]
__all__ += ["RESNET_BLOCKS", "ResNetEncoder"]
