"""3x3 max-pooling with padding 1 whose CPU gradient comes from slices, not select_and_scatter.

PyTorch's ``nn.MaxPool2d(3, stride, padding=1)`` (the official VGG-16 and torchvision's ResNet
stem) sends each window's gradient to the window's *first* maximum in row-major order. JAX's
``reduce_window`` max has the same rule, but its gradient is a ``select_and_scatter``, which
XLA:CPU rewrites into a ``reduce_window`` carrying four int32 index arrays plus a ``scatter``.
On CPU, :func:`max_pool_3x3` computes the same gradient as nine strided comparisons and nine
interior-padded adds, which XLA fuses into two elementwise loops: a faster step with smaller
temporary buffers (figures in ``docs/performance.md``).

Elsewhere the native ``select_and_scatter`` is leaner (less memory per TPU chip).
``lax.platform_dependent`` chooses when lowering, so a TPU program compiled ahead of time on a
CPU host (:mod:`panet_jax.aot`) gets the TPU form. The
forward pass is the plain ``reduce_window`` max everywhere (faster on CPU than nine strided
maxima).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
KERNEL = 3  # window side
PAD = 1  # padding on every side (with -inf, as PyTorch)


def _window_view(x_padded: Array, i: int, j: int, out_hw: tuple[int, int], stride: int) -> Array:
    """``[B, Ho, Wo, C]``: element ``(i, j)`` of every window of the padded ``[B, H+2, W+2, C]``."""
    b, _, _, c = x_padded.shape
    ho, wo = out_hw
    limit = (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c)
    return lax.slice(x_padded, (0, i, j, 0), limit, (1, stride, stride, 1))


def _pool(x: Array, stride: int) -> Array:
    # A Python -inf (not an array) lets lax pick reduce_window_max, which JAX can differentiate.
    pad = ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0))
    window, strides = (1, KERNEL, KERNEL, 1), (1, stride, stride, 1)
    return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, pad)


def max_pool_3x3(x: Array, stride: int) -> Array:
    """``[B, H, W, C] -> [B, Ho, Wo, C]`` max over 3x3 windows, padding 1 (with -inf), the given
    stride; ``Ho = (H - 1) // stride + 1``. Gradient: to each window's first maximum in
    row-major order, as ``torch.nn.MaxPool2d``; from slices on CPU."""
    return lax.platform_dependent(
        x,
        cpu=functools.partial(_max_pool_sliced_grad, stride=stride),
        default=functools.partial(_pool, stride=stride),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_sliced_grad(x: Array, stride: int) -> Array:
    return _pool(x, stride)


def _max_pool_fwd(x: Array, stride: int) -> tuple[Array, tuple[Array, Array]]:
    y = _pool(x, stride)
    return y, (x, y)


def _max_pool_bwd(stride: int, residuals: tuple[Array, Array], g: Array) -> tuple[Array]:
    """The gradient from nine strided comparisons and interior-padded adds."""
    x, y = residuals
    h, w = x.shape[1:3]
    out_hw = y.shape[1:3]
    x_padded = jnp.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)), constant_values=-jnp.inf)
    taken = jnp.zeros(y.shape, bool)  # the window's maximum was met at an earlier position
    grad_padded = jnp.zeros(x_padded.shape, g.dtype)
    zero = jnp.zeros((), g.dtype)
    for i in range(KERNEL):
        for j in range(KERNEL):
            hit = (_window_view(x_padded, i, j, out_hw, stride) == y) & ~taken
            taken = taken | hit
            # Place g where hit, at rows i, i+stride, ... and columns j, j+stride, ...
            config = [
                (0, 0, 0),
                (i, h + 2 * PAD - i - stride * (out_hw[0] - 1) - 1, stride - 1),
                (j, w + 2 * PAD - j - stride * (out_hw[1] - 1) - 1, stride - 1),
                (0, 0, 0),
            ]
            grad_padded = grad_padded + lax.pad(jnp.where(hit, g, zero), zero, config)
    return (grad_padded[:, PAD : PAD + h, PAD : PAD + w, :],)


_max_pool_sliced_grad.defvjp(_max_pool_fwd, _max_pool_bwd)
