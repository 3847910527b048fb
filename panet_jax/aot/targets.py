"""A compile target by name: a TPU slice (:mod:`~panet_jax.aot.chips`, ``v5e:4x4``) or a GPU
machine (:mod:`~panet_jax.aot.gpus`, ``h100:1x8``): its device, compile-only devices, usable
memory per device and roofline peak."""

from __future__ import annotations

import jax

from panet_jax.aot import gpus
from panet_jax.aot.chips import (
    ChipSpec,
    GiB,
    TopologyError,
    matmul_passes,
    parse_topology,
    tpu_devices,
)

Spec = ChipSpec | gpus.GpuSpec


def target_spec(topology: str) -> Spec:
    """The chip of a TPU slice or the GPU of a GPU machine (a `` xN`` slice count ignored)."""
    name = topology.split()[0] if topology.strip() else topology
    if gpus.is_gpu_topology(name):
        return gpus.parse(name)[0]
    try:
        return parse_topology(name)[0]
    except TopologyError as e:
        if ":" in name and name.partition(":")[0].lower().startswith("v"):
            raise  # a TPU generation's shape
        raise TopologyError(
            f"{e}, or a GPU machine <gpu>:<hosts>x<gpus per host> with gpu one of "
            f"{sorted(gpus.GPUS)} (e.g. {gpus.EXAMPLES})"
        ) from None


def target_devices(topology: str, *, num_slices: int = 1) -> list[jax.Device]:
    """The compile-only devices of a TPU slice (:func:`~panet_jax.aot.chips.tpu_devices`) or a
    GPU machine (:func:`~panet_jax.aot.gpus.gpu_devices`)."""
    if not gpus.is_gpu_topology(topology):
        return tpu_devices(topology, num_slices=num_slices)
    gpus.parse(topology)  # the name's form first
    if num_slices != 1:
        raise TopologyError(
            f"num_slices={num_slices} is for TPU slices; a GPU machine names its hosts "
            f"(e.g. {gpus.EXAMPLES})"
        )
    return gpus.gpu_devices(topology)


def usable_bytes(spec: Spec) -> int:
    """Memory a program may use on one device of the target."""
    if isinstance(spec, gpus.GpuSpec):
        return spec.usable_memory_bytes()
    return spec.hbm_usable_bytes


def peak_flops(spec: Spec, compute_dtype: str) -> float:
    """The roofline's FLOP/s for the convs in ``compute_dtype`` at JAX's matmul precision."""
    passes = matmul_passes(compute_dtype)
    if isinstance(spec, gpus.GpuSpec):
        return spec.peak_flops(compute_dtype, "highest" if passes == 6 else "default")
    return spec.peak_bf16_flops / passes


def device_word(spec: Spec) -> str:
    """What one device of the target is called in messages: 'chip' or 'GPU'."""
    return "GPU" if isinstance(spec, gpus.GpuSpec) else "chip"


def memory_phrase(spec: Spec, device_kind: str) -> str:
    """'a <kind> chip has X GiB usable HBM' (TPU) / the GPU's pool and where it comes from."""
    if not isinstance(spec, gpus.GpuSpec):
        return f"a {device_kind} chip has {spec.hbm_usable_bytes / GiB:.2f} GiB usable HBM"
    return (
        f"an {device_kind} has {spec.usable_memory_bytes() / GiB:.2f} GiB usable (the "
        f"{100 * gpus.memory_fraction():.0f}% of its {spec.device_memory_size / GiB:.2f} GiB "
        f"that JAX allocates from, {gpus.MEM_FRACTION_ENV})"
    )
