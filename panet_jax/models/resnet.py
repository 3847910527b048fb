"""ImageNet ResNet-50 / ResNet-101 encoders for PANet (torchvision bottleneck ResNet, v1.5).

Architecture (torchvision ``resnet50`` / ``resnet101``): conv1 7x7/2 (pad 3) + BN + ReLU +
max-pool 3x3/2 (pad 1), then ``layer1`` .. ``layer3`` of :class:`Bottleneck` blocks
(1x1 -> 3x3 -> 1x1, expansion 4, the stride on the 3x3 conv as torchvision's "v1.5", the first
block of each stage projecting the identity with ``downsample`` = 1x1 conv + BN).

**Feature layer: the ``layer3`` output at output stride 8; ``layer4`` is not built.**
``layer3``'s stride is replaced by dilation 2 in all of its 3x3 convs (its ``downsample`` has
stride 1), so 417 -> 209 -> 105 -> 53 and the embedding has 1024 channels (at ``width=1``), as
the VGG-16 encoder's 53 x 53 x 512. This is what the few-shot segmentation ResNet peers feed
to masked average pooling:

* CANet (icoz69/CaNet, ``one_shot_network.py``) loads torchvision's ResNet-50 weights up to
  ``layer3``, builds ``layer3`` with ``stride=1, dilation=2`` and comments ``layer4`` out;
* PFENet (dvlab-research/PFENet, ``model/PFENet.py``) and BAM (chunbolang/BAM,
  ``model/BAM.py``) set ``dilation=2, stride=1`` on every ``layer3`` ``conv2`` and build the
  support prototype (``Weighted_GAP``, i.e. masked average pooling) from ``layer3`` (with
  ``layer2``); ``layer4`` only makes their parameter-free prior mask. PFENet (Tian et al.,
  TPAMI 2020) and CANet (Zhang et al., CVPR 2019) report that the high-level ``layer4`` features
  generalise worse to unseen classes than the middle-level ones.

PANet's head is exactly such a parameter-free masked-average-pooling + cosine matcher, so it
takes the ``layer3`` embedding. Dropping ``layer4`` also saves its 15M parameters and the
2048-channel dilated convs at 53 x 53. (The alternative, torchvision's
``replace_stride_with_dilation=[False, True, True]`` with ``layer4`` at output stride 8, is what
DeepLab-v3 segmentation heads use; the few-shot peers above do not.)

Batch norm is **frozen**: every :class:`flax.linen.BatchNorm` runs with
``use_running_average=True``, so the ImageNet statistics (collection ``batch_stats``:
``mean``/``var``) normalise every image on its own and are never updated (few-shot batches are
1-4 episodes), as HSNet keeps its backbone in ``eval()`` (juhongm999/hsnet, ``model/hsnet.py``,
``train_mode``). The affine ``scale``/``bias`` live in ``params`` (as in flax
``examples/imagenet``); freezing them too is an optax mask. Variables mirror torchvision's
module names: ``layer1.0.downsample.1.running_var`` is
``variables['batch_stats']['layer1']['0']['downsample']['1']['var']``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from panet_jax.models.convolution import conv_general_dilated, same_padding
from panet_jax.models.pooling import max_pool_3x3
from panet_jax.models.vgg import output_size as _vgg_output_size
from panet_jax.models.vgg import scaled_channels

# Bottleneck blocks per stage (layer1..layer4) of torchvision's bottleneck ResNets.
RESNET_BLOCKS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
EXPANSION = 4  # Bottleneck output channels = 4 x planes
BN_EPSILON = 1e-5  # torchvision BatchNorm2d eps
BN_MOMENTUM = 0.9  # flax convention (= torch momentum 0.1); unused: the statistics are frozen
STEM_CHANNELS = 64
# Stages that are built: (name, planes, stride, dilation). layer3's stride 2 -> dilation 2.
STAGES: tuple[tuple[str, int, int, int], ...] = (
    ("layer1", 64, 1, 1),
    ("layer2", 128, 2, 1),
    ("layer3", 256, 1, 2),
)

# torchvision's conv init: kaiming_normal_(mode='fan_out', nonlinearity='relu'), untruncated.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def check_depth(depth: int) -> int:
    """Return ``depth`` if it is a supported ResNet depth (50 or 101), else raise."""
    if depth not in RESNET_BLOCKS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_BLOCKS)}, got {depth!r}")
    return depth


def stage_planes(planes: int, width: float) -> int:
    """Bottleneck inner channels under a width multiplier (outputs are ``EXPANSION`` x this)."""
    return scaled_channels(planes, width)


def feature_channels(width: float = 1.0) -> int:
    """Channels of the encoder output (``layer3``): 1024 at ``width=1``, 64 at 1/16."""
    return EXPANSION * stage_planes(STAGES[-1][1], width)


def output_size(size: int) -> int:
    """Feature side for an input side of ``size``: conv1 (7/2/3), the max-pool (3/2/1) and
    layer2 (3/2/1 and 1x1/2) each map ``n -> (n - 1) // 2 + 1``, as VGG's three pools:
    417 -> 209 -> 105 -> 53."""
    return _vgg_output_size(size)


def _conv(
    features: int,
    kernel: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    dtype: Any,
    param_dtype: Any,
    name: str,
) -> nn.Conv:
    """A bias-free conv with torchvision's padding (:func:`same_padding`, any stride)."""
    pad = same_padding(kernel, dilation)
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=(pad, pad),
        conv_general_dilated=conv_general_dilated,
        kernel_dilation=(dilation, dilation),
        use_bias=False,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=kaiming_normal_fan_out,
        name=name,
    )


def _frozen_bn(*, dtype: Any, param_dtype: Any, name: str) -> nn.BatchNorm:
    """Eval-mode BatchNorm2d: ``(x - mean) / sqrt(var + 1e-5) * scale + bias`` with the stored
    statistics."""
    return nn.BatchNorm(
        use_running_average=True,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class Downsample(nn.Module):
    """Identity projection of a stage's first block: 1x1 conv (``'0'``) + BN (``'1'``),
    ``[B, H, W, C_in] -> [B, H / stride, W / stride, features]``."""

    features: int
    stride: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        x = _conv(self.features, 1, stride=self.stride, name="0", **kw)(x)
        return _frozen_bn(name="1", **kw)(x)


class Bottleneck(nn.Module):
    """torchvision ``Bottleneck`` (v1.5), ``[B, H, W, C_in] -> [B, H', W', 4 * planes]``.

    ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + identity)`` with the stride and
    dilation on the 3x3 ``conv2`` and ``identity = downsample(x)`` when ``downsample``.
    """

    planes: int
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        out = _conv(self.planes, 1, name="conv1", **kw)(x)
        out = nn.relu(_frozen_bn(name="bn1", **kw)(out))
        conv2 = _conv(
            self.planes, 3, stride=self.stride, dilation=self.dilation, name="conv2", **kw
        )
        out = nn.relu(_frozen_bn(name="bn2", **kw)(conv2(out)))
        out = _conv(EXPANSION * self.planes, 1, name="conv3", **kw)(out)
        out = _frozen_bn(name="bn3", **kw)(out)
        identity = x
        if self.downsample:
            identity = Downsample(EXPANSION * self.planes, self.stride, name="downsample", **kw)(x)
        return nn.relu(out + identity)


class ResLayer(nn.Module):
    """One stage: ``blocks`` bottlenecks named ``'0'``, ``'1'``, ...; the first one strides
    and projects the identity, all of them use ``dilation`` in their 3x3 conv."""

    planes: int
    blocks: int
    stride: int = 1
    dilation: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.blocks):
            x = Bottleneck(
                self.planes,
                stride=self.stride if i == 0 else 1,
                dilation=self.dilation,
                downsample=i == 0,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=str(i),
            )(x)
        return x


class ResNetEncoder(nn.Module):
    """ResNet-50/101 trunk up to ``layer3`` (dilated), ``[B, H, W, 3] -> [B, h, w, C]`` with
    ``h = output_size(H)``, ``C = out_channels``; inputs are ImageNet-normalised RGB.

    Variables: ``{'params': {'conv1': {'kernel'}, 'bn1': {'scale', 'bias'}, 'layer1': {'0':
    {'conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3', 'downsample': {'0', '1'}}, '1': ...},
    'layer2': ..., 'layer3': ...}, 'batch_stats': {same BN paths: {'mean', 'var'}}}``
    (kernels HWIO). Apply with both collections; ``batch_stats`` is read, never written.

    Attributes:
      depth: 50 or 101 (``layer3`` has 6 or 23 blocks).
      width: channel multiplier (1.0 = the real ResNet, 1024 output channels; tests use e.g.
        1/16). Stem ``scaled_channels(64, width)``, bottleneck ``scaled_channels(planes,
        width)`` and 4x that at the block outputs.
      dtype: compute dtype (``jnp.bfloat16`` on GPU/TPU; ``jnp.float64`` under
        ``jax_enable_x64`` for exactness checks); the output is returned in
        ``promote_types(dtype, float32)``.
      param_dtype: dtype of the params created by ``init`` (float32; float64 for exactness
        checks). Applying with float32 variables and ``dtype=float64`` computes in float64.
    """

    depth: int = 50
    width: float = 1.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def out_channels(self) -> int:
        return feature_channels(self.width)

    @property
    def blocks(self) -> Sequence[int]:
        """Blocks of the built stages (layer1..layer3)."""
        return RESNET_BLOCKS[check_depth(self.depth)][: len(STAGES)]

    def output_size(self, size: int) -> int:
        """Feature side for an input side of ``size`` (417 -> 53)."""
        return output_size(size)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"ResNetEncoder expects [B, H, W, 3] images, got shape {x.shape}")
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        x = x.astype(self.dtype)
        x = _conv(scaled_channels(STEM_CHANNELS, self.width), 7, stride=2, name="conv1", **kw)(x)
        x = nn.relu(_frozen_bn(name="bn1", **kw)(x))
        x = max_pool_3x3(x, 2)
        for (name, planes, stride, dilation), blocks in zip(STAGES, self.blocks, strict=True):
            x = ResLayer(
                stage_planes(planes, self.width), blocks, stride, dilation, name=name, **kw
            )(x)
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))
