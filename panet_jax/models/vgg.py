"""The DeepLab-v1 style VGG-16 encoder of the official PANet (``models/vgg.py``).

13 bias-carrying 3x3 convs, no batch norm. Max-pool (k3, s2, p1) after blocks 1-3, a
stride-1 max-pool (k3, s1, p1) after block 4, dilation 2 in block 5, and **no ReLU after
conv5_3**, so the 512-channel embedding is signed. Output stride 8: 417 -> 209 -> 105 -> 53.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from panet_jax.models.convolution import conv_general_dilated, same_padding
from panet_jax.models.pooling import max_pool_3x3

# (name, output channels, dilation) in torchvision ``features`` order.
VGG16_LAYERS: tuple[tuple[str, int, int], ...] = (
    ("conv1_1", 64, 1), ("conv1_2", 64, 1),
    ("conv2_1", 128, 1), ("conv2_2", 128, 1),
    ("conv3_1", 256, 1), ("conv3_2", 256, 1), ("conv3_3", 256, 1),
    ("conv4_1", 512, 1), ("conv4_2", 512, 1), ("conv4_3", 512, 1),
    ("conv5_1", 512, 2), ("conv5_2", 512, 2), ("conv5_3", 512, 2),
)  # fmt: skip
# Pooling after the last conv of each block: (kernel, stride); padding 1 everywhere.
_POOL_AFTER = {"conv1_2": 2, "conv2_2": 2, "conv3_3": 2, "conv4_3": 1}

# PyTorch's kaiming_normal_(nonlinearity='relu'), fan_in, untruncated normal.
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def torch_default_bias_init(fan_in: int):
    """PyTorch's default conv bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def scaled_channels(channels: int, width: float) -> int:
    """Channel count under a width multiplier (at least 1)."""
    return max(1, round(channels * width))


def layer_shapes(
    height: int, width: int, width_mult: float = 1.0
) -> list[tuple[str, int, int, int, int, int]]:
    """``(name, H, W, C_in, C_out, dilation)`` of each conv for one ``[height, width]`` image,
    in order: the sides each layer sees after the pools before it."""
    shapes, c_in = [], 3
    for name, ch, dil in VGG16_LAYERS:
        c_out = scaled_channels(ch, width_mult)
        shapes.append((name, height, width, c_in, c_out, dil))
        c_in = c_out
        if name in _POOL_AFTER:  # k3 p1: (side + 2 - 3) // stride + 1
            stride = _POOL_AFTER[name]
            height, width = (height - 1) // stride + 1, (width - 1) // stride + 1
    return shapes


def output_size(size: int) -> int:
    """Feature size for an input side of ``size`` (three k3/s2/p1 pools): 417 -> 53."""
    for _ in range(3):
        size = (size + 2 - 3) // 2 + 1
    return size


class VGG16Encoder(nn.Module):
    """VGG-16 trunk, ``[B, H, W, 3] -> [B, h, w, C]`` with ``h = output_size(H)``.

    Attributes:
      width: channel multiplier (1.0 = the real VGG-16, 512 output channels; tests and the
        synthetic demo use e.g. 1/16).
      dtype: compute dtype (``jnp.bfloat16`` on GPU/TPU; ``jnp.float64`` under
        ``jax_enable_x64`` for exactness checks); the output is returned in
        ``promote_types(dtype, float32)``.
      param_dtype: dtype of the params (float32; float64 for exactness checks).
    """

    width: float = 1.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def out_channels(self) -> int:
        return scaled_channels(512, self.width)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"VGG16Encoder expects [B, H, W, 3] images, got shape {x.shape}")
        x = x.astype(self.dtype)
        in_ch = 3
        for name, ch, dil in VGG16_LAYERS:
            out_ch = scaled_channels(ch, self.width)
            x = nn.Conv(
                out_ch,
                (3, 3),
                padding=(same_padding(3, dil),) * 2,
                kernel_dilation=(dil, dil),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=kaiming_normal,
                bias_init=torch_default_bias_init(9 * in_ch),
                conv_general_dilated=conv_general_dilated,
                name=name,
            )(x)
            in_ch = out_ch
            if name != "conv5_3":  # lastRelu=False
                x = nn.relu(x)
            if name in _POOL_AFTER:
                s = _POOL_AFTER[name]
                x = max_pool_3x3(x, s)
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))
