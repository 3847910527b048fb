"""panet_jax.models.convolution: the stacked-batch kernel gradient equals XLA's own.

In float64 the values and both gradients must agree with ``lax.conv_general_dilated``'s
to rounding of sums of a few hundred products (1e-12 relative); every shape the encoders use
(3x3 dilation 1 and 2, 1x1, 7x7) and odd sides, one image and several.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tolerances as tol
from jax import lax

from panet_jax.models import convolution
from panet_jax.models.convolution import conv_general_dilated, conv_same

# Reordered float64 sums of at most ~600 products: ~sqrt(600) * tol.U64 = 3e-15; gate 1e-12.
REORDERED64 = 1e-12
NHWC = ("NHWC", "HWIO", "NHWC")


def lax_conv(x, w, dilation):
    """XLA's own convolution, "same"-padded as torch's odd kernels: ``d * (k - 1) / 2`` a side."""
    pad = [(d * (k - 1) // 2,) * 2 for k, d in zip(w.shape[:2], dilation, strict=True)]
    return lax.conv_general_dilated(
        x, w, (1, 1), pad, rhs_dilation=dilation, dimension_numbers=NHWC
    )


@pytest.mark.parametrize(
    "batch,hw,cin,cout,kernel,dilation",
    [
        (2, (9, 7), 3, 4, 3, 1),
        (1, (8, 8), 2, 5, 3, 1),
        (3, (11, 10), 4, 3, 3, 2),
        (2, (7, 9), 3, 2, 1, 1),
        (2, (12, 9), 2, 3, 7, 1),
    ],
)
def test_values_and_gradients_equal_xla_in_float64(batch, hw, cin, cout, kernel, dilation):
    rng = np.random.default_rng(batch + cin + kernel)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((batch, *hw, cin)))
        w = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout)))
        g = jnp.asarray(rng.standard_normal((batch, *hw, cout)))
        d = (dilation, dilation)
        y_ref, vjp_ref = jax.vjp(lambda a, b: lax_conv(a, b, d), x, w)
        # jit: the CPU branch of lax.platform_dependent is the one lowered here.

        def value_and_grads(a, b, t):
            y, vjp = jax.vjp(lambda p, q: conv_same(p, q, d), a, b)
            return y, vjp(t)

        y, (dx, dw) = jax.jit(value_and_grads)(x, w, g)
        dx_ref, dw_ref = vjp_ref(g)
        assert y.dtype == dw.dtype == jnp.float64
        assert tol.rel_err(y, y_ref) < REORDERED64
        assert tol.rel_err(dx, dx_ref) < REORDERED64
        assert tol.rel_err(dw, dw_ref) < REORDERED64


def test_windows_never_straddle_stacked_images():
    """One image of ones beside one of zeros: the kernel gradient is the ones image's alone (a
    window crossing into the next image would add the zero image's border to it)."""
    x = jnp.stack([jnp.ones((5, 4, 1)), jnp.full((5, 4, 1), 100.0)])
    g = jnp.stack([jnp.ones((5, 4, 1)), jnp.zeros((5, 4, 1))])
    w = jnp.zeros((3, 3, 1, 1))
    dw = jax.jit(jax.vjp(lambda k: conv_same(x, k, (1, 1)), w)[1])(g)[0][..., 0, 0]
    # Sum over the 5x4 output of the ones image shifted by (i-1, j-1): rows x columns in range.
    expected = np.outer([4, 5, 4], [3, 4, 3]).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(dw), expected)


def test_flax_conv_routes_only_eligible_convolutions(monkeypatch):
    """nn.Conv with the drop-in: stride-1 "same" convs take conv_same; strided, grouped,
    'SAME'-string and even-kernel convs fall through to lax with identical results."""
    calls = []
    monkeypatch.setattr(convolution, "conv_same", lambda *a: calls.append(a) or lax_conv(*a[:3]))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 8, 4)), jnp.float32)
    cases = [
        (dict(kernel_size=(3, 3), padding=((1, 1), (1, 1))), True),
        (dict(kernel_size=(3, 3), padding=((2, 2), (2, 2)), kernel_dilation=2), True),
        (dict(kernel_size=(3, 3), padding=((1, 1), (1, 1)), strides=2), False),
        (dict(kernel_size=(3, 3), padding=((1, 1), (1, 1)), feature_group_count=2), False),
        (dict(kernel_size=(3, 3), padding="SAME"), False),
        (dict(kernel_size=(2, 2), padding=((0, 1), (0, 1))), False),
        (dict(kernel_size=(3, 3), padding=((0, 0), (0, 0))), False),
    ]
    for kwargs, routed in cases:
        calls.clear()
        plain = nn.Conv(4, **kwargs)
        drop_in = nn.Conv(4, conv_general_dilated=conv_general_dilated, **kwargs)
        params = plain.init(jax.random.key(0), x)
        np.testing.assert_array_equal(drop_in.apply(params, x), plain.apply(params, x))
        assert bool(calls) == routed, kwargs
    x1 = x[:, 0]  # [B, W, C]: a 1-D convolution passes straight through
    plain, drop_in = nn.Conv(4, (3,)), nn.Conv(4, (3,), conv_general_dilated=conv_general_dilated)
    params = plain.init(jax.random.key(0), x1)
    np.testing.assert_array_equal(drop_in.apply(params, x1), plain.apply(params, x1))
