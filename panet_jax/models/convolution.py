"""A ``lax.conv_general_dilated`` for ``nn.Conv`` whose kernel gradient is cheaper on CPU.

XLA:CPU computes a convolution's kernel gradient as a convolution whose *feature* axis is the
image batch, so it first transposes the layer's input to ``[C, H, W, B]`` and its output
gradient to ``[H, W, B, C]``. With the few images of a PANet episode (B = 2 in 1-way 1-shot)
those transposes have a minor axis of 2 and crawl. For a stride-1 convolution with "same"
padding the kernel gradient is unchanged if the batch is instead stacked into one tall image:
each image keeps its own zero padding rows, and the output gradient gets zero rows opposite
them, so no window straddles two images. The batch axis is then 1 and both transposes vanish
(``_kernel_grad_stacked``). Values and the input gradient are XLA's own; the gain is in the
1-shot steps (figures in ``docs/performance.md``).

Off CPU the kernel gradient is XLA's (``lax.platform_dependent``, decided when lowering, so a
TPU program compiled ahead of time on a CPU host gets the TPU formulation).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x: Array, w: Array, padding: Any, dilation: tuple[int, int], precision: Any) -> Array:
    dn = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    return lax.conv_general_dilated(
        x, w, (1, 1), padding, rhs_dilation=dilation, dimension_numbers=dn, precision=precision
    )


def _kernel_grad_stacked(x: Array, g: Array, w: Array, dilation, precision) -> Array:
    """The kernel gradient with the batch stacked along H into one image (module docstring)."""
    (top, bottom), (left, right) = _same_padding(w.shape, dilation)
    b, h, wd, c = x.shape
    rows = h + top + bottom  # one padded image
    tall_x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    tall_x = tall_x.reshape(1, b * rows, wd + left + right, c)
    # Output gradient rows h..rows-1 of each image are zero: windows there straddle images.
    tall_g = jnp.pad(g, ((0, 0), (0, top + bottom), (0, 0), (0, 0)))
    tall_g = tall_g.reshape(1, b * rows, wd, g.shape[-1])[:, : b * rows - top - bottom]
    valid = ((0, 0), (0, 0))
    return jax.vjp(lambda k: _conv(tall_x, k, valid, dilation, precision), w)[1](tall_g)[0]


def same_padding(kernel: int, dilation: int = 1) -> tuple[int, int]:
    """``(before, after)`` padding of one axis that keeps its size at stride 1: PyTorch's
    ``padding = dilation * (kernel - 1) // 2`` for odd kernels (the only ones used here)."""
    total = dilation * (kernel - 1)
    return total // 2, total - total // 2


def _same_padding(kernel_shape, dilation) -> tuple[tuple[int, int], tuple[int, int]]:
    """:func:`same_padding` of both spatial axes of an HWIO kernel."""
    return tuple(same_padding(k, d) for k, d in zip(kernel_shape[:2], dilation, strict=True))


def conv_same(x: Array, w: Array, dilation: tuple[int, int], precision: Any = None) -> Array:
    """Stride-1 "same" convolution, ``[B, H, W, Cin] x [kh, kw, Cin, Cout] -> [B, H, W, Cout]``
    (``kh``, ``kw`` odd); on CPU with the stacked kernel gradient of the module docstring."""
    options = {"dilation": dilation, "precision": precision}
    return lax.platform_dependent(
        x,
        w,
        cpu=functools.partial(_conv_same_stacked_grad, **options),
        default=functools.partial(_conv_same_lax, **options),
    )


def _conv_same_lax(x: Array, w: Array, dilation, precision) -> Array:
    return _conv(x, w, _same_padding(w.shape, dilation), dilation, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_same_stacked_grad(x: Array, w: Array, dilation, precision) -> Array:
    return _conv_same_lax(x, w, dilation, precision)


def _conv_same_fwd(x, w, dilation, precision):
    return _conv_same_lax(x, w, dilation, precision), (x, w)


def _conv_same_bwd(dilation, precision, residuals, g):
    x, w = residuals
    pad = _same_padding(w.shape, dilation)
    dx = jax.vjp(lambda v: _conv(v, w, pad, dilation, precision), x)[1](g)[0]
    return dx, _kernel_grad_stacked(x, g, w, dilation, precision)


_conv_same_stacked_grad.defvjp(_conv_same_fwd, _conv_same_bwd)


def conv_general_dilated(
    lhs: Array, rhs: Array, window_strides: Any, padding: Any, **options: Any
) -> Array:
    """``lax.conv_general_dilated`` (what ``nn.Conv(conv_general_dilated=...)`` calls, options as
    keywords): :func:`conv_same` for a stride-1, undilated-input, ungrouped NHWC/HWIO
    convolution with "same" padding and an odd kernel; ``lax.conv_general_dilated`` otherwise."""
    if lhs.ndim != 4:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **options)
    dilation = tuple(options.get("rhs_dilation") or (1, 1))
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, options.get("dimension_numbers"))
    eligible = (
        tuple(window_strides) == (1, 1)
        and tuple(options.get("lhs_dilation") or (1, 1)) == (1, 1)
        and options.get("feature_group_count", 1) == options.get("batch_group_count", 1) == 1
        and options.get("preferred_element_type") is None
        and not isinstance(padding, str)
        and all(k % 2 for k in rhs.shape[:2])
        and tuple(map(tuple, padding)) == _same_padding(rhs.shape, dilation)
        and given == nhwc
    )
    if eligible:
        return conv_same(lhs, rhs, dilation, options.get("precision"))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **options)
