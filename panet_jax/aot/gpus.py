"""NVIDIA GPUs for ahead-of-time compilation on a machine without one: the catalogue.

XLA compiles for a GPU it cannot see from a ``GpuTargetConfigProto`` (text form) describing the
device: its compute capability, core (SM) count, clock, memory size and bandwidth, L2, shared
memory / register / thread limits (``jax.experimental.topologies.get_topology_desc(
platform='cuda', target_config=...)``). The figures below are those of XLA's own target configs,
``xla/backends/gpu/target_config/specs/<name>.txtpb`` in github.com/openxla/xla (``xla_spec``),
which record what the CUDA driver reports on the device; the L4 has none there, so its figures
come from NVIDIA's L4 datasheet and the CUDA C++ Programming Guide's compute capability 8.9
limits. The roofline peaks (dense, no sparsity) and the bandwidth are NVIDIA's published ones
(``source``).

A GPU machine is named ``<gpu>:<hosts>x<gpus per host>`` (``h100:1x8``: one host with 8
H100s; ``h100:2x8``: two such hosts, 16 GPUs). Its compile-only devices come from JAX's CUDA
plugin (``pip install -e ".[cuda]"``), which runs without a GPU (:func:`gpu_devices`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

from panet_jax.aot.chips import AOTError, TopologyError

GiB = 2**30
# JAX's GPU client preallocates this share of the device's memory and allocates every buffer
# from that pool (https://docs.jax.dev/en/latest/gpu_memory_allocation.html); the user can
# change it with XLA_PYTHON_CLIENT_MEM_FRACTION.
DEFAULT_MEM_FRACTION = 0.75
MEM_FRACTION_ENV = "XLA_PYTHON_CLIENT_MEM_FRACTION"
XLA_SPECS = "github.com/openxla/xla xla/backends/gpu/target_config/specs/"


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    """One NVIDIA GPU: what XLA needs to compile for it, and its published peaks."""

    name: str  # the topology prefix, e.g. 'h100'
    device_kind: str  # jax Device.device_kind (the CUDA device name)
    memory_published: str
    # gpu_device_info of the target config (as the CUDA driver reports it):
    compute_capability: tuple[int, int]
    core_count: int  # streaming multiprocessors
    fpus_per_core: int
    clock_rate_ghz: float
    memory_bandwidth: int  # bytes / s
    l2_cache_size: int
    device_memory_size: int  # bytes
    shared_memory_per_core: int
    shared_memory_per_block_optin: int
    threads_per_core_limit: int
    # Published dense peaks (FLOP / s) and bandwidth (bytes / s) for the roofline:
    peak_bf16_flops: float  # tensor cores, bfloat16 in, float32 accumulate
    peak_tf32_flops: float  # tensor cores, TF32 (float32 convs / matmuls at default precision)
    peak_f32_flops: float  # CUDA cores, IEEE float32 ('highest' precision)
    hbm_bandwidth: float
    xla_spec: str  # the XLA target config the device figures are from ('' if none)
    source: str  # the published peaks

    def target_config(self) -> str:
        """The ``GpuTargetConfigProto`` text XLA compiles against."""
        major, minor = self.compute_capability
        info = {
            "threads_per_block_limit": 1024,
            "threads_per_warp": 32,
            "shared_memory_per_block": 48 * 1024,
            "shared_memory_per_core": self.shared_memory_per_core,
            "threads_per_core_limit": self.threads_per_core_limit,
            "core_count": self.core_count,
            "fpus_per_core": self.fpus_per_core,
            "block_dim_limit_x": 2**31 - 1,
            "block_dim_limit_y": 65535,
            "block_dim_limit_z": 65535,
            "memory_bandwidth": self.memory_bandwidth,
            "l2_cache_size": self.l2_cache_size,
            "clock_rate_ghz": self.clock_rate_ghz,
            "device_memory_size": self.device_memory_size,
            "shared_memory_per_block_optin": self.shared_memory_per_block_optin,
            "registers_per_core_limit": 65536,
            "registers_per_block_limit": 65536,
            "thread_dim_limit_x": 1024,
            "thread_dim_limit_y": 1024,
            "thread_dim_limit_z": 64,
        }
        lines = [f"  {k}: {v}" for k, v in info.items()]
        lines.insert(-3, f"  cuda_compute_capability {{ major: {major} minor: {minor} }}")
        return (
            "gpu_device_info {\n" + "\n".join(lines) + "\n}\n"
            'platform_name: "CUDA"\n'
            f'device_description_str: "{self.device_kind}"\n'
        )

    def usable_memory_bytes(self) -> int:
        """The pool JAX's GPU client allocates from: the device memory times
        ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (default 0.75)."""
        return int(self.device_memory_size * memory_fraction())

    def peak_flops(self, compute_dtype: str, precision: str) -> float:
        """Peak for the encoder's convs: bfloat16 on tensor cores; float32 as TF32 at JAX's
        default / 'high' matmul precision, on CUDA cores at 'highest'."""
        if compute_dtype == "bfloat16":
            return self.peak_bf16_flops
        return self.peak_f32_flops if precision == "highest" else self.peak_tf32_flops


def memory_fraction() -> float:
    """``XLA_PYTHON_CLIENT_MEM_FRACTION`` if set (a number in (0, 1]), else 0.75."""
    text = os.environ.get(MEM_FRACTION_ENV, "").strip()
    if not text:
        return DEFAULT_MEM_FRACTION
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{MEM_FRACTION_ENV}={text!r}: expected a number in (0, 1]")
    return value


# Datasheets (dense: half the tensor-core figures they give "with sparsity"):
#   H100 SXM5: https://www.nvidia.com/en-us/data-center/h100/ (bf16 1979 / 2, TF32 989 / 2, fp32 67
#     TFLOP/s; 80 GB HBM3 at 3.35 TB/s)
#   H200 SXM:  https://www.nvidia.com/en-us/data-center/h200/ (as H100; 141 GB HBM3e, 4.8 TB/s)
#   A100 SXM4: https://www.nvidia.com/en-us/data-center/a100/ (bf16 312, TF32 156, fp32 19.5;
#     40 GB HBM2 at 1555 GB/s, 80 GB HBM2e at 2039 GB/s)
#   L4:        https://www.nvidia.com/en-us/data-center/l4/ (bf16 242 / 2, TF32 120 / 2, fp32 30.3;
#     24 GB GDDR6 at 300 GB/s; 58 SMs, 2040 MHz boost, 48 MB L2)
_H100 = "https://www.nvidia.com/en-us/data-center/h100/"
_A100 = "https://www.nvidia.com/en-us/data-center/a100/"
GPUS: dict[str, GpuSpec] = {
    "h100": GpuSpec(
        "h100", "NVIDIA H100 80GB HBM3", "80 GB HBM3", (9, 0), 132, 128, 1.98, 3352320000000,
        50 * 2**20, 84942979072, 233472, 232448, 2048, 989.5e12, 494.5e12, 67e12, 3.35e12,
        XLA_SPECS + "h100_sxm.txtpb", _H100,
    ),
    "h200": GpuSpec(
        "h200", "NVIDIA H200 141GB HBM3e", "141 GB HBM3e", (9, 0), 132, 128, 1.98, 4800000000000,
        50 * 2**20, 151397597184, 233472, 232448, 2048, 989.5e12, 494.5e12, 67e12, 4.8e12,
        XLA_SPECS + "h200.txtpb", "https://www.nvidia.com/en-us/data-center/h200/",
    ),
    "a100-80g": GpuSpec(
        "a100-80g", "NVIDIA A100-SXM4-80GB", "80 GB HBM2e", (8, 0), 108, 64, 1.41, 2039040000000,
        40 * 2**20, 85100068864, 167936, 166912, 2048, 312e12, 156e12, 19.5e12, 2.039e12,
        XLA_SPECS + "a100_sxm_80.txtpb", _A100,
    ),
    "a100-40g": GpuSpec(
        "a100-40g", "NVIDIA A100-SXM4-40GB", "40 GB HBM2", (8, 0), 108, 64, 1.41, 1555200000000,
        40 * 2**20, 42331013120, 167936, 166912, 2048, 312e12, 156e12, 19.5e12, 1.555e12,
        XLA_SPECS + "a100_sxm_40.txtpb", _A100,
    ),
    # Compute capability 8.9: 100 KB shared memory per SM (99 KB per block opt-in), 1536
    # threads per SM; 23034 MiB as the driver reports it.
    "l4": GpuSpec(
        "l4", "NVIDIA L4", "24 GB GDDR6", (8, 9), 58, 128, 2.04, 300000000000, 48 * 2**20,
        23034 * 2**20, 102400, 101376, 1536, 121e12, 60e12, 30.3e12, 300e9,
        "", "https://www.nvidia.com/en-us/data-center/l4/",
    ),
}  # fmt: skip
GPU_ALIASES = {"a100": "a100-80g", "h100-sxm": "h100", "a100-80gb": "a100-80g",
               "a100-40gb": "a100-40g"}  # fmt: skip
EXAMPLES = "h100:1x8, h100:2x8, a100-80g:1x8, a100-40g:1x8, h200:1x8, l4:1x1"


def by_device_kind(device_kind: str) -> GpuSpec | None:
    """The catalogue's GPU whose CUDA device name is ``device_kind`` (None if none is)."""
    return next((g for g in GPUS.values() if g.device_kind == device_kind), None)


def is_gpu_topology(name: str) -> bool:
    """Whether ``name`` names a GPU machine (its prefix is a GPU of the catalogue)."""
    prefix = name.strip().partition(":")[0].lower()
    return GPU_ALIASES.get(prefix, prefix) in GPUS


def parse(name: str) -> tuple[GpuSpec, int, int]:
    """``'h100:2x8'`` -> ``(GPUS['h100'], 2 hosts, 8 GPUs per host)``; :class:`TopologyError`
    naming the expected form otherwise."""
    prefix, sep, shape = name.strip().partition(":")
    gpu = GPUS.get(GPU_ALIASES.get(prefix.lower(), prefix.lower()))
    if gpu is None or not sep:
        raise TopologyError(
            f"GPU machine {name!r}: expected <gpu>:<hosts>x<gpus per host> with gpu one of "
            f"{sorted(GPUS)} (e.g. {EXAMPLES})"
        )
    parts = shape.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise TopologyError(
            f"GPU machine {name!r}: the shape is <hosts>x<gpus per host> (e.g. {EXAMPLES})"
        )
    return gpu, int(parts[0]), int(parts[1])


def topology_string(hosts: int, per_host: int) -> str:
    """XLA's GPU topology: partitions x hosts per partition x devices per host."""
    return f"1x{hosts}x{per_host}"


class GPUUnavailableError(AOTError, ImportError):
    """JAX's CUDA plugin is not installed, or did not load in this process."""


CUDA_PLUGINS = ("jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13")
INSTALL = 'pip install -e ".[cuda]"'


def _prepare_plugin() -> None:
    """Let the CUDA plugin load on a machine without a GPU.

    When ``JAX_PLATFORMS`` does not exclude CUDA, the plugin checks its CUDA libraries against
    the driver (``cuInit``) as JAX discovers it, and without a GPU that check fails, so the
    plugin (and with it compilation for a GPU) is dropped. Skipping the check is harmless
    there: without a visible GPU JAX never starts the CUDA backend. Must run before JAX first
    starts its backends; a GPU machine keeps the check.
    """
    import jax
    from jax._src import hardware_utils

    if jax.config.jax_platforms or hardware_utils.has_visible_nvidia_gpu():
        return
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")


def gpu_devices(name: str) -> list[Any]:
    """The (compile-only) devices of GPU machine ``name`` (:func:`parse`); no GPU needed.

    Raises :class:`GPUUnavailableError` without the CUDA plugin (saying what to install) or
    when it did not load in this process.
    """
    gpu, hosts, per_host = parse(name)
    if not any(_has(p) for p in CUDA_PLUGINS):
        raise GPUUnavailableError(
            "GPU ahead-of-time compilation needs JAX's CUDA plugin, which is not installed: run "
            f"{INSTALL} (no GPU is needed, it compiles on this machine)"
        )
    _prepare_plugin()
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(
            platform="cuda",
            target_config=gpu.target_config(),
            topology=topology_string(hosts, per_host),
        )
    except NotImplementedError:
        raise GPUUnavailableError(
            "JAX's CUDA plugin is installed but did not load in this process (JAX started its "
            "backends first and the plugin's GPU check failed): set JAX_PLATFORMS=cpu before "
            "importing jax"
        ) from None
    return list(desc.devices)


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
