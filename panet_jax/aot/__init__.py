"""Ahead-of-time compilation of the real steps for accelerators this machine does not have.

:mod:`~panet_jax.aot.chips` (the TPU chip catalogue and slice topologies),
:mod:`~panet_jax.aot.gpus` (the GPU catalogue and GPU machines), :mod:`~panet_jax.aot.targets`
(either, by name), :mod:`~panet_jax.aot.flops` (analytical FLOPs), :mod:`~panet_jax.aot.hlo`
(what a compiled program calls, and its cost), :mod:`~panet_jax.aot.compile` (lower, compile,
report, refuse what does not fit). The names below are the public API (``from panet_jax import
aot``).
"""

from panet_jax.aot import gpus, hlo
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
    compile_failure,
    compile_for_topology,
    compile_step,
    gpu_table,
    markdown_table,
)
from panet_jax.aot.flops import conv_flops, vgg_conv_flops
from panet_jax.aot.gpus import GPUS, GpuSpec, GPUUnavailableError
from panet_jax.aot.targets import peak_flops, target_devices, target_spec, usable_bytes

__all__ = [
    "GPUS",
    "IMPLS",
    "STEPS",
    "TPU_CHIPS",
    "AOTError",
    "ChipSpec",
    "GPUUnavailableError",
    "GiB",
    "GpuSpec",
    "HBMExceededError",
    "StepReport",
    "TPUUnavailableError",
    "TopologyError",
    "abstract_batch",
    "check_compilable",
    "check_fits",
    "chip_table",
    "compile_failure",
    "compile_for_topology",
    "compile_step",
    "conv_flops",
    "gpu_table",
    "gpus",
    "hlo",
    "markdown_table",
    "matmul_passes",
    "parse_topology",
    "peak_flops",
    "target_devices",
    "target_spec",
    "tpu_devices",
    "usable_bytes",
    "vgg_conv_flops",
]
