"""Per-executable XLA options (panet_jax.runtime.xla_options): what they are, that the jitted steps
of panet_jax.runtime.parallel compile with them, and that a user's XLA_FLAGS setting wins."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from panet_jax.runtime import parallel, xla_options

YNN = xla_options.YNN_FUSION_TYPE
TRITON = xla_options.TRITON_GEMM
USER_FLAGS = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"}


def conv_step(w, x):
    """A train-like step: one conv's weight gradient (32 channels: YNNPACK takes it)."""

    def loss(w):
        dn = ("NHWC", "HWIO", "NHWC")
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
        return jnp.sum(y**2)

    g = jax.lax.psum(jax.grad(loss)(w), parallel.BATCH_AXIS)
    return w - 0.1 * g, jnp.sum(g)


def ynn_fusions(fn, *args) -> int:
    """``__ynn_fusion`` ops in ``fn``'s optimised executable (optimisations on: the test
    suite's ``jax_disable_most_optimizations`` would skip the YNNPACK pass)."""
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        return fn.lower(*args).compile().as_text().count("__ynn_fusion")
    finally:
        jax.config.update("jax_disable_most_optimizations", True)


def test_options_per_kind_and_platform():
    assert xla_options.compiler_options("train", "cpu", env={}) == {YNN: ""}
    assert xla_options.compiler_options("eval", "cpu", env={}) == {YNN: ""}
    assert xla_options.compiler_options("predict", "cpu", env={}) is None
    for platform in ("gpu", "cuda"):  # cuBLAS for the matmuls Triton cannot tile
        for kind in xla_options.KINDS:
            assert xla_options.compiler_options(kind, platform, env={}) == {TRITON: False}
    assert xla_options.compiler_options("train", "tpu", env={}) is None
    with pytest.raises(ValueError, match="unknown step kind"):
        xla_options.compiler_options("training", "cpu")


def test_user_xla_flags_win():
    assert xla_options.compiler_options("train", "cpu", env=USER_FLAGS) is None
    gpu_user = {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=true"}
    assert xla_options.compiler_options("train", "cuda", env=gpu_user) is None
    other = {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2  --xla_force_host_platform_device_count=4"}
    assert xla_options.compiler_options("train", "cpu", env=other) == {YNN: ""}
    assert xla_options.user_xla_flags({"XLA_FLAGS": "--nofoo --bar=1 -baz"}) >= {"foo", "bar"}


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU options")
def test_train_step_compiles_without_ynn_fusions(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    mesh = parallel.make_mesh()
    w, x = jnp.ones((3, 3, 32, 32)), jnp.ones((mesh.devices.size, 8, 8, 32))
    assert ynn_fusions(parallel.shard_map_step(conv_step, mesh), w, x) == 0
    assert ynn_fusions(parallel.shard_map_step(conv_step, mesh, compiler_options={}), w, x) > 0
    # The evaluator's jit(shard_map) gets the 'eval' options; {} keeps XLA's defaults.
    fwd = lambda w, x: jax.lax.psum(jnp.sum(x @ w), parallel.BATCH_AXIS)
    args = jnp.ones((64, 64)), jnp.ones((mesh.devices.size * 64, 64))
    assert ynn_fusions(parallel.on_batch(fwd, mesh, 1, P()), *args) == 0
    assert ynn_fusions(parallel.on_batch(fwd, mesh, 1, P(), compiler_options={}), *args) > 0
    # A user's XLA_FLAGS setting of the option: the step passes none of its own.
    monkeypatch.setenv("XLA_FLAGS", USER_FLAGS["XLA_FLAGS"])
    assert ynn_fusions(parallel.shard_map_step(conv_step, mesh), w, x) > 0


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU options")
def test_pmap_step_applies_the_options():
    step = parallel.pmap_step(conv_step)
    w, x = jnp.ones((3, 3, 32, 32)), jnp.ones((jax.local_device_count(), 1, 8, 8, 32))
    new_w, total = step(w, x)
    ref_w, ref_total = jax.pmap(conv_step, parallel.BATCH_AXIS, in_axes=(None, 0), out_axes=None)(
        jnp.ones((3, 3, 32, 32)), x
    )
    assert jnp.allclose(new_w, ref_w) and jnp.allclose(total, ref_total)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU options")
def test_xla_flags_setting_takes_effect_end_to_end():
    """In a process started with the option in XLA_FLAGS, the train step follows the user
    (YNNPACK convolutions), not this project's default (none)."""
    code = textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        from panet_jax.runtime import parallel
        from test_xla_options import conv_step
        mesh = parallel.make_mesh()
        fn = parallel.shard_map_step(conv_step, mesh)
        text = fn.lower(jnp.ones((3, 3, 32, 32)), jnp.ones((1, 8, 8, 32))).compile().as_text()
        print("YNN", text.count("__ynn_fusion"))
        """
    )
    env = dict(os.environ, **USER_FLAGS, PYTHONPATH=os.path.dirname(__file__))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert int(out.split("YNN")[-1]) > 0
