"""panet_jax.models.pooling.max_pool_3x3 vs torch.nn.functional.max_pool2d and flax's max_pool.

Inputs are small integers, so windows tie at positive values everywhere and every sum of
gradients is exact in float64: the values and gradients must be *equal*, which also pins the
tie rule (a window's gradient goes to its first maximum in row-major order, as PyTorch's).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from panet_jax.models.pooling import max_pool_3x3

# (B, H, W, C), stride: odd and even sides, the VGG pools (s2 and the s1 after conv4_3).
CASES = [
    ((2, 9, 8, 3), 2), ((1, 8, 9, 2), 2), ((2, 7, 7, 4), 1), ((1, 5, 6, 1), 1), ((1, 2, 3, 2), 2),
]  # fmt: skip


def tied_input(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Small non-negative integers (post-ReLU-like, with zeros): many ties per window."""
    return np.random.default_rng(seed).integers(0, 4, shape).astype(np.float64)


def pool_and_grad(pool, x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with jax.enable_x64(True):
        y, vjp = jax.vjp(pool, jnp.asarray(x))
        return np.asarray(y), np.asarray(vjp(jnp.asarray(g))[0])


@pytest.mark.parametrize("shape,stride", CASES)
def test_equals_torch_max_pool2d_with_ties(shape, stride):
    torch = pytest.importorskip("torch")
    x = tied_input(shape, seed=sum(shape) + stride)
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)  # float64, NCHW
    ty = torch.nn.functional.max_pool2d(tx, 3, stride, 1)
    g = np.random.default_rng(1).integers(1, 9, ty.shape).astype(np.float64)
    ty.backward(torch.tensor(g))

    y, dx = pool_and_grad(lambda v: max_pool_3x3(v, stride), x, g.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(y, ty.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(dx, tx.grad.numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize("shape,stride", CASES)
def test_equals_flax_max_pool(shape, stride):
    x = tied_input(shape, seed=7)
    ho, wo = ((s - 1) // stride + 1 for s in shape[1:3])
    g = np.random.default_rng(2).integers(1, 9, (shape[0], ho, wo, shape[3])).astype(np.float64)

    def flax_pool(v):
        return nn.max_pool(v, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)))

    y_ref, dx_ref = pool_and_grad(flax_pool, x, g)
    y, dx = pool_and_grad(lambda v: max_pool_3x3(v, stride), x, g)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(dx, dx_ref)


def test_negative_inputs_and_low_precision():
    """Padding is -inf (a window of negatives keeps its maximum), bfloat16 stays bfloat16, and
    the gradient conserves the upstream sum (each window sends all of it to one position)."""
    x = -1.0 - np.arange(2 * 5 * 5 * 3, dtype=np.float32).reshape(2, 5, 5, 3)
    y = max_pool_3x3(jnp.asarray(x), 2)
    assert float(y.max()) == -1.0 and bool((y < 0).all())
    xb = jnp.asarray(x, jnp.bfloat16)
    yb, vjp = jax.vjp(lambda v: max_pool_3x3(v, 2), xb)
    (dx,) = vjp(jnp.ones_like(yb))
    assert yb.dtype == dx.dtype == jnp.bfloat16
    assert float(dx.astype(jnp.float32).sum()) == yb.size


def test_backward_has_no_select_and_scatter():
    """The point of the module: XLA gets no select-and-scatter (nor a scatter) to lower."""
    x = jnp.ones((1, 9, 9, 2))
    text = jax.jit(jax.grad(lambda v: max_pool_3x3(v, 2).sum())).lower(x).as_text()
    assert "select_and_scatter" not in text and "scatter" not in text
    ref = jax.jit(jax.grad(lambda v: nn.max_pool(v, (3, 3), (2, 2), ((1, 1), (1, 1))).sum())).lower(
        x
    )
    assert "select_and_scatter" in ref.as_text()  # the check can fail


def test_off_cpu_the_gradient_is_xlas_select_and_scatter():
    """lax.platform_dependent picks the form when lowering: a program exported for TPU (as
    panet_jax.aot compiles on a CPU host) keeps JAX's select_and_scatter; the CPU one does not."""
    x = jnp.asarray(tied_input((1, 9, 9, 2), seed=3), jnp.float32)
    grad = jax.jit(jax.grad(lambda v: max_pool_3x3(v, 2).sum()))
    tpu = jax.export.export(grad, platforms=("tpu",))(x).mlir_module()
    cpu = jax.export.export(grad, platforms=("cpu",))(x).mlir_module()
    op = "stablehlo.select_and_scatter"  # (the op, not source locations naming this test)
    assert op in tpu and op not in cpu
