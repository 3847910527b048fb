"""Analytical FLOPs of the VGG-16 encoder (exact tap counts; XLA's cost analysis is not
available on every target)."""

from __future__ import annotations

from collections.abc import Sequence

from panet_jax.models.convolution import same_padding
from panet_jax.models.vgg import layer_shapes

# --------------------------------------------------------------------------------------------
# Analytical FLOPs of the encoder.
# --------------------------------------------------------------------------------------------


def _valid_taps(size: int, kernel: int, dilation: int) -> tuple[int, int]:
    """``(output size, (output, tap) pairs reading a real input pixel)`` along one axis of a
    stride-1 'same' conv: padding taps multiply zeros, and XLA's cost analysis does not count
    them."""
    before, after = same_padding(kernel, dilation)
    out = size + before + after - dilation * (kernel - 1)
    taps = sum(
        1 for o in range(out) for k in range(kernel) if 0 <= o + k * dilation - before < size
    )
    return out, taps


def conv_flops(height: int, width: int, c_in: int, c_out: int, dilation: int = 1) -> int:
    """FLOPs (2 per multiply-add) of one 3x3 'same' conv (padding = dilation) on one
    ``[height, width, c_in]`` image, counting only taps on real pixels (as XLA does)."""
    _, th = _valid_taps(height, 3, dilation)
    _, tw = _valid_taps(width, 3, dilation)
    return 2 * th * tw * c_in * c_out


def vgg_conv_flops(image_size: Sequence[int], width: float, *, train: bool) -> int:
    """Exact conv FLOPs of the VGG-16 encoder on one image: the forward pass, or with
    ``train`` forward + weight gradients + input gradients (none for ``conv1_1``: the images
    are not differentiated), i.e. ``3 F - F(conv1_1)``."""
    h, w = (int(s) for s in image_size)
    flops = [conv_flops(*shape[1:]) for shape in layer_shapes(h, w, width)]
    return 3 * sum(flops) - flops[0] if train else sum(flops)
