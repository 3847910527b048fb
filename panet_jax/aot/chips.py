"""TPU chips and slice topologies: published figures per chip, topology names, the
compile-only devices of a slice (from libtpu, no TPU needed), and the pre-flight's errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from typing import Any

import jax

GiB = 2**30

# --------------------------------------------------------------------------------------------
# The chips.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """One TPU generation as one JAX device (v4 and v5p in megacore mode: a device is a chip).

    ``hbm_usable_bytes`` is the program limit the TPU compiler of libtpu 0.0.42.1 prints for
    the chip ("XLA::TPU program HBM usage: ... / 15.75G", with ``TPU_MIN_LOG_LEVEL=0``): the
    published capacity less what the runtime reserves. The peaks are the published ones
    (``source``).
    """

    generation: str
    device_kind: str  # jax Device.device_kind
    hbm_published: str
    hbm_usable_bytes: int
    hbm_bandwidth: float  # bytes / s
    peak_bf16_flops: float  # FLOP / s, dense
    dims: int  # topology dimensions: 2 (AxB) or 3 (AxBxC)
    chip_config: str  # libtpu chip_config_name
    source: str


# Published per-chip figures, from the Google Cloud TPU documentation:
#   v4:  https://cloud.google.com/tpu/docs/v4  (275 TFLOP/s bf16, HBM2 32 GiB at 1200 GB/s)
#   v5e: https://cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 16 GiB at 819 GB/s)
#   v5p: https://cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16, HBM2e 95 GB at 2765 GB/s)
#   v6e: https://cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 32 GB at 1638 GB/s)
# float32: the MXUs multiply bfloat16. A float32 conv or matmul at JAX's default precision runs
# as ONE bfloat16 pass with float32 accumulation ("By default, TPUs perform matrix
# multiplication operations with bfloat16 values and accumulations with IEEE float32 values",
# https://cloud.google.com/tpu/docs/bfloat16; https://docs.jax.dev/en/latest/201/precision.html),
# so it has the bf16 peak; 'high' precision takes 3 bf16 passes and 'highest' 6
# (:func:`matmul_passes`). The model's convs use the default; the few prototype einsums at
# HIGHEST precision in panet_jax.ops are a negligible share of the FLOPs.
TPU_CHIPS: dict[str, ChipSpec] = {
    "v4": ChipSpec(
        "v4", "TPU v4", "32 GiB", int(30.75 * GiB), 1200e9, 275e12, 3, "megacore",
        "https://cloud.google.com/tpu/docs/v4",
    ),
    "v5e": ChipSpec(
        "v5e", "TPU v5 lite", "16 GiB", int(15.75 * GiB), 819e9, 197e12, 2, "default",
        "https://cloud.google.com/tpu/docs/v5e",
    ),
    "v5p": ChipSpec(
        "v5p", "TPU v5", "95 GB", int(95.74 * GiB), 2765e9, 459e12, 3, "megacore",
        "https://cloud.google.com/tpu/docs/v5p",
    ),
    "v6e": ChipSpec(
        "v6e", "TPU v6 lite", "32 GB", int(31.25 * GiB), 1638e9, 918e12, 2, "default",
        "https://cloud.google.com/tpu/docs/v6e",
    ),
}  # fmt: skip
GENERATION_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "trillium": "v6e"}


def matmul_passes(compute_dtype: str) -> int:
    """bfloat16 MXU passes per float32 conv/matmul under ``jax_default_matmul_precision``
    (1 for bfloat16 compute; 1 / 3 / 6 for float32 at default / high / highest)."""
    if compute_dtype == "bfloat16":
        return 1
    precision = str(jax.config.jax_default_matmul_precision or "default").lower()
    if precision in ("highest", "float32", "f32_f32_f32", "bf16_bf16_f32_x6"):
        return 6
    if precision in ("high", "bfloat16_3x", "tensorfloat32", "bf16_bf16_f32_x3"):
        return 3
    return 1


# --------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------


class AOTError(ValueError):
    """An expected failure of ahead-of-time compilation (message says what to do)."""


class TPUUnavailableError(AOTError, ImportError):
    """libtpu is not installed (or cannot be loaded)."""


class TopologyError(AOTError, ValueError):
    """A topology name libtpu or this module does not accept."""


class HBMExceededError(AOTError):
    """A step needs more HBM per chip than the chip has.

    Attributes: ``needed_bytes``, ``available_bytes`` (per chip), ``step``, ``topology``.
    """

    def __init__(
        self, message: str, *, needed_bytes: int, available_bytes: int, step: str, topology: str
    ):
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes
        self.step = step
        self.topology = topology


# --------------------------------------------------------------------------------------------
# Topologies.
# --------------------------------------------------------------------------------------------


def parse_topology(name: str) -> tuple[ChipSpec, tuple[int, ...]]:
    """``'v5e:4x4'`` -> ``(TPU_CHIPS['v5e'], (4, 4))``. Generations: v4, v5e (v5litepod),
    v5p, v6e; v4 / v5p take ``AxBxC``, v5e / v6e ``AxB``."""
    gen, sep, shape = name.strip().partition(":")
    gen = GENERATION_ALIASES.get(gen.lower(), gen.lower())
    examples = "v5e:2x2, v5e:4x4, v6e:4x4, v4:2x2x1, v4:2x2x4, v5p:2x2x4"
    if not sep or gen not in TPU_CHIPS:
        raise TopologyError(
            f"topology {name!r}: expected <generation>:<shape> with generation one of "
            f"{sorted(TPU_CHIPS)} (e.g. {examples})"
        )
    chip = TPU_CHIPS[gen]
    try:
        dims = tuple(int(v) for v in shape.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != chip.dims or min(dims, default=0) < 1:
        form = "x".join("ABC"[: chip.dims])
        raise TopologyError(f"topology {name!r}: {gen} slices are {form} chips (e.g. {examples})")
    return chip, dims


def tpu_devices(topology: str, *, num_slices: int = 1) -> list[jax.Device]:
    """The (compile-only) devices of a TPU slice, from libtpu; no TPU needed.

    ``num_slices > 1`` describes a multi-slice job (slices joined over the data-centre
    network). Raises :class:`TPUUnavailableError` without libtpu, :class:`TopologyError` for a
    shape libtpu rejects.
    """
    chip, dims = parse_topology(topology)
    if importlib.util.find_spec("libtpu") is None and not os.environ.get("TPU_LIBRARY_PATH"):
        raise TPUUnavailableError(
            "TPU ahead-of-time compilation needs libtpu, which is not installed: run "
            f'pip install -e ".[tpu]" (jax[tpu]=={jax.__version__} pins the matching libtpu; '
            "no TPU is needed, it compiles on this machine)"
        )
    # libtpu takes a machine-wide lock file when it loads, as if it owned a TPU; describing a
    # topology owns none, so let compiles here run beside other JAX processes.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    kwargs: dict[str, Any] = {"chip_config_name": chip.chip_config}
    if num_slices != 1:
        kwargs["num_slices"] = int(num_slices)
    if math.prod(dims) < 4:  # libtpu's default host is 2x2x1 chips
        kwargs["chips_per_host_bounds"] = tuple(dims) + (1,) * (3 - len(dims))
    shape = "x".join(map(str, dims))
    try:
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=f"{chip.generation}:{shape}", **kwargs
        )
    except Exception as e:  # JaxRuntimeError / RuntimeError from the plugin
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "TPU support not installed" in msg:
            raise TPUUnavailableError(
                f'{msg}: run pip install -e ".[tpu]" to install libtpu'
            ) from None
        if "lockfile" in msg:
            raise TPUUnavailableError(
                f"{msg} (another process holds libtpu's lock and this process loaded libtpu "
                "before ALLOW_MULTIPLE_LIBTPU_LOAD=1 was set: set it in the environment)"
            ) from None
        raise TopologyError(f"libtpu rejects topology {topology!r}: {msg}") from None
    return list(desc.devices)
