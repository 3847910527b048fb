"""Ahead-of-time compilation of the real steps for accelerators this machine does not have.

:mod:`~panet_jax.aot.chips` (the chip catalogue and topologies), :mod:`~panet_jax.aot.flops`
(analytical FLOPs), :mod:`~panet_jax.aot.compile` (lower, compile, report, refuse what does not
fit). The names below are the public API (``from panet_jax import aot``).
"""

from panet_jax.aot.chips import (
    TPU_CHIPS,
    AOTError,
    ChipSpec,
    GiB,
    HBMExceededError,
    TopologyError,
    TPUUnavailableError,
    matmul_passes,
    parse_topology,
    tpu_devices,
)
from panet_jax.aot.compile import (
    IMPLS,
    STEPS,
    StepReport,
    abstract_batch,
    check_compilable,
    check_fits,
    chip_table,
    compile_for_topology,
    compile_step,
    markdown_table,
)
from panet_jax.aot.flops import conv_flops, vgg_conv_flops

__all__ = [
    "IMPLS",
    "STEPS",
    "TPU_CHIPS",
    "AOTError",
    "ChipSpec",
    "GiB",
    "HBMExceededError",
    "StepReport",
    "TPUUnavailableError",
    "TopologyError",
    "abstract_batch",
    "check_compilable",
    "check_fits",
    "chip_table",
    "compile_for_topology",
    "compile_step",
    "conv_flops",
    "markdown_table",
    "matmul_passes",
    "parse_topology",
    "tpu_devices",
    "vgg_conv_flops",
]
