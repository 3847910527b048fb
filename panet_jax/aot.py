"""Compile the real train and evaluation steps for a TPU slice or a GPU machine ahead of time,
on any machine.

No TPU is needed: ``libtpu`` (``pip install -e ".[tpu]"``) describes the devices of a slice
(``jax.experimental.topologies``); no GPU either: JAX's CUDA plugin (``pip install -e
".[cuda]"``) describes those of a GPU machine such as ``h100:1x8`` from the GPU's target
description (:mod:`panet_jax.aot.gpus`). The steps the trainer and the evaluator run are
lowered and compiled for them with abstract arguments (``jax.ShapeDtypeStruct``), exactly as
they would be on the pod:

* ``train``, ``impl='shard_map'``: :func:`panet_jax.parallel.shard_map_step` of
  :func:`panet_jax.steps.make_train_step` (state replicated and donated, a
  ``[chips * train.per_device_batch, ...]`` batch split over the 1-D ``'batch'`` mesh of
  *all* the slice's chips, across hosts);
* ``train``, ``impl='pmap'``: the literal ``jax.pmap`` of :func:`panet_jax.parallel.pmap_step`
  over all the slice's chips (a multi-host pmap compiles one SPMD program for the global device
  set; every host feeds its own rows). If libtpu refuses it, the report says so and why;
* ``eval``: :func:`panet_jax.evaluation.make_eval_step` (the evaluator always runs
  ``jit(shard_map)``; it has no pmap form), ``chips * eval.per_device_batch`` episodes a step.

Each :class:`StepReport` holds, per chip, what XLA's TPU compiler allocates
(``memory_analysis()``: arguments, temporaries, outputs, generated code; the peak against the
chip's HBM), the FLOPs and bytes of one step (``cost_analysis()``), a roofline (FLOPs over the
chip's published peak, bytes over its HBM bandwidth; XLA's own ``optimal_seconds`` estimate
can be negative and is not used) and the lower / compile times. A step that cannot fit raises
:class:`HBMExceededError` naming the knob to turn.

On a GPU the memory is XLA's GPU compiler's against the pool JAX allocates from (75% of the
device's memory by default), FLOPs are the encoder's exact conv count plus XLA's count of the
rest, bytes XLA's cost analysis of the compiled program (:mod:`panet_jax.aot.hlo`), and the
report also counts the convolutions handed to cuDNN and the collectives.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

# What the trainer and the evaluator run (keep in step with them):
from panet_jax.checkpointing import abstract_state_on  # the replicated train state
from panet_jax.config_base import validate as validate_config
from panet_jax.data.folds import NUM_CLASSES
from panet_jax.data.spec import episode_spec
from panet_jax.evaluation import make_eval_step  # jit(shard_map(eval step)) on a mesh
from panet_jax.models.vgg import layer_shapes
from panet_jax.parallel import BATCH_AXIS, make_mesh, pmap_step, shard_map_step
from panet_jax.steps import make_train_step  # the per-device train step
from panet_jax.train_state import abstract_train_state, build_model

# Until this module becomes the panet_jax/aot package: its submodules live in panet_jax/aot/.
__path__ = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "aot")]

from panet_jax.aot import gpus, hlo

STEPS = ("train", "eval")
IMPLS = ("shard_map", "pmap")
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


class AOTError(Exception):
    """An expected failure of ahead-of-time compilation (message says what to do)."""


class TPUUnavailableError(AOTError):
    """libtpu is not installed (or cannot be loaded)."""


class GPUUnavailableError(AOTError):
    """JAX's CUDA plugin is not installed (or did not load in this process)."""


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
            f"{sorted(TPU_CHIPS)} (e.g. {examples}), or a GPU machine <gpu>:<hosts>x<gpus per "
            f"host> with gpu one of {sorted(gpus.GPUS)} (e.g. {gpus.EXAMPLES})"
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


def target_spec(topology: str) -> ChipSpec | gpus.GpuSpec:
    """The chip of a TPU slice or the GPU of a GPU machine (a `` xN`` slice count ignored)."""
    name = topology.split()[0] if topology.strip() else topology
    if not gpus.is_gpu_topology(name):
        return parse_topology(name)[0]
    try:
        return gpus.parse(name)[0]
    except ValueError as e:
        raise TopologyError(str(e)) from None


def target_devices(topology: str, *, num_slices: int = 1) -> list[jax.Device]:
    """The compile-only devices of a TPU slice (:func:`tpu_devices`) or a GPU machine
    (:func:`panet_jax.aot.gpus.gpu_devices`)."""
    if not gpus.is_gpu_topology(topology):
        return tpu_devices(topology, num_slices=num_slices)
    target_spec(topology)  # the name's form first
    if num_slices != 1:
        raise TopologyError(
            f"num_slices={num_slices} is for TPU slices; a GPU machine names its hosts "
            f"(e.g. {gpus.EXAMPLES})"
        )
    try:
        return gpus.gpu_devices(topology)
    except gpus.CudaPluginError as e:
        raise GPUUnavailableError(str(e)) from None


def usable_bytes(spec: ChipSpec | gpus.GpuSpec) -> int:
    """Memory a program may use on one device of the target."""
    if isinstance(spec, gpus.GpuSpec):
        return spec.usable_memory_bytes()
    return spec.hbm_usable_bytes


def peak_flops(spec: ChipSpec | gpus.GpuSpec, compute_dtype: str) -> float:
    """The roofline's FLOP/s for the convs in ``compute_dtype`` at JAX's matmul precision."""
    passes = matmul_passes(compute_dtype)
    if isinstance(spec, gpus.GpuSpec):
        return spec.peak_flops(compute_dtype, "highest" if passes == 6 else "default")
    return spec.peak_bf16_flops / passes


def _memory_phrase(spec: ChipSpec | gpus.GpuSpec, device_kind: str) -> str:
    """'a <kind> chip has X GiB usable HBM' (TPU) / the GPU's pool and where it comes from."""
    if not isinstance(spec, gpus.GpuSpec):
        return f"a {device_kind} chip has {spec.hbm_usable_bytes / GiB:.2f} GiB usable HBM"
    return (
        f"an {device_kind} has {spec.usable_memory_bytes() / GiB:.2f} GiB usable (the "
        f"{100 * gpus.memory_fraction():.0f}% of its {spec.device_memory_size / GiB:.2f} GiB "
        f"that JAX allocates from, {gpus.MEM_FRACTION_ENV})"
    )


# --------------------------------------------------------------------------------------------
# Analytical FLOPs of the encoder.
# --------------------------------------------------------------------------------------------


def _valid_taps(size: int, kernel: int, dilation: int, pad: int) -> tuple[int, int]:
    """``(output size, (output, tap) pairs reading a real input pixel)`` along one axis of a
    stride-1 conv: padding taps multiply zeros, and XLA's cost analysis does not count them."""
    out = size + 2 * pad - dilation * (kernel - 1)
    taps = sum(1 for o in range(out) for k in range(kernel) if 0 <= o + k * dilation - pad < size)
    return out, taps


def conv_flops(height: int, width: int, c_in: int, c_out: int, dilation: int = 1) -> int:
    """FLOPs (2 per multiply-add) of one 3x3 'same' conv (padding = dilation) on one
    ``[height, width, c_in]`` image, counting only taps on real pixels (as XLA does)."""
    _, th = _valid_taps(height, 3, dilation, dilation)
    _, tw = _valid_taps(width, 3, dilation, dilation)
    return 2 * th * tw * c_in * c_out


def vgg_conv_flops(image_size: Sequence[int], width: float, *, train: bool) -> int:
    """Exact conv FLOPs of the VGG-16 encoder on one image: the forward pass, or with
    ``train`` forward + weight gradients + input gradients (none for ``conv1_1``: the images
    are not differentiated), i.e. ``3 F - F(conv1_1)``."""
    h, w = (int(s) for s in image_size)
    flops = [conv_flops(*shape[1:]) for shape in layer_shapes(h, w, width)]
    return 3 * sum(flops) - flops[0] if train else sum(flops)


# --------------------------------------------------------------------------------------------
# Reports.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StepReport:
    """One step compiled for one topology. Byte / FLOP figures are per chip unless named
    ``total``; times in seconds. ``status`` is ``'compiled'``, or ``'unsupported'`` with the
    reason in ``note`` (all figures ``None``)."""

    topology: str
    generation: str  # TPU generation or GPU name ('v5e', 'h100')
    chip_kind: str
    chips: int
    hosts: int
    step: str  # 'train' | 'eval'
    impl: str  # 'shard_map' | 'pmap'
    dtype: str  # compute dtype
    n_ways: int
    n_shots: int
    n_queries: int
    image_size: tuple[int, int]
    per_device_batch: int
    episodes_per_step: int
    status: str = "compiled"
    note: str = ""
    argument_bytes: int | None = None
    output_bytes: int | None = None
    alias_bytes: int | None = None  # outputs written into donated arguments
    temp_bytes: int | None = None
    generated_code_bytes: int | None = None
    peak_bytes: int | None = None  # arguments + outputs - aliased + temporaries + code
    state_bytes: int | None = None  # train: one state copy (params + momentum + step)
    resident_bytes: int | None = None  # peak (+ the trainer's checkpoint copy of the state)
    hbm_bytes: int | None = None  # usable device memory per chip / GPU
    flops: float | None = None  # XLA's count (GPU: the exact conv count + XLA's for the rest)
    flops_total: float | None = None
    bytes_accessed: float | None = None
    conv_flops: float | None = None  # analytical VGG conv FLOPs per chip (exact)
    peak_flops: float | None = None  # FLOP/s used for the roofline (dtype, precision)
    hbm_bandwidth: float | None = None
    compute_s: float | None = None
    memory_s: float | None = None
    roofline_s: float | None = None
    roofline_episodes_per_s: float | None = None
    lower_s: float | None = None
    compile_s: float | None = None
    collectives: dict[str, int] | None = None  # kind -> count in the compiled program
    collective_bytes: dict[str, int] | None = None  # kind -> bytes they produce per step
    custom_calls: dict[str, int] | None = None  # GPU: library calls (cuDNN, cuBLAS) -> count
    cudnn_convolutions: int | None = None  # GPU: convolutions handed to cuDNN

    @property
    def fits(self) -> bool | None:
        if self.resident_bytes is None or self.hbm_bytes is None:
            return None
        return self.resident_bytes <= self.hbm_bytes

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        d["fits"] = self.fits
        return d


def _knobs(config: ml_collections.ConfigDict, step: str) -> str:
    """What to turn, with the current values."""
    d, m = config.data, config.model
    key = "train.per_device_batch" if step == "train" else "eval.per_device_batch"
    pdb = config.train.per_device_batch if step == "train" else config.eval.per_device_batch
    text = f"lower config.{key} (now {pdb}) or config.data.image_size (now {tuple(d.image_size)})"
    if m.dtype != "bfloat16":
        text += f", set config.model.dtype='bfloat16' (now {m.dtype!r})"
    return text + f", or lower config.data.n_shots (now {d.n_shots})"


def _hbm_error(
    config: ml_collections.ConfigDict,
    step: str,
    topology: str,
    chip_kind: str,
    available: int,
    needed: int,
    what: str,
) -> HBMExceededError:
    over = needed - available
    spec = target_spec(topology)
    unit = "GPU" if isinstance(spec, gpus.GpuSpec) else "chip"
    msg = (
        f"{step} step does not fit on {topology}: {what} needs {needed / GiB:.2f} GiB per {unit}, "
        f"{_memory_phrase(spec, chip_kind)} "
        f"({over / GiB:.2f} GiB, {100 * over / available:.0f}% over). To fit, "
        f"{_knobs(config, step)}."
    )
    return HBMExceededError(
        msg, needed_bytes=needed, available_bytes=available, step=step, topology=topology
    )


def check_fits(report: StepReport, config: ml_collections.ConfigDict) -> None:
    """Raise :class:`HBMExceededError` if a compiled step's resident bytes per chip (its peak,
    plus for ``train`` the trainer's checkpoint copy of the state) exceed the chip's HBM."""
    if report.status != "compiled" or report.fits is not False:
        return
    r = report
    what = (
        f"the step (arguments {r.argument_bytes / GiB:.2f} + temporaries {r.temp_bytes / GiB:.2f}"
        f" + outputs {r.output_bytes / GiB:.2f} - donated {r.alias_bytes / GiB:.2f} + code "
        f"{r.generated_code_bytes / GiB:.2f} GiB"
    )
    if r.step == "train":
        what += f"; + the trainer's checkpoint copy of the state {r.state_bytes / GiB:.2f} GiB"
    raise _hbm_error(
        config, r.step, r.topology, r.chip_kind, r.hbm_bytes, r.resident_bytes, what + ")"
    )


def _tree_bytes(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _first_cost(compiled: Any) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return dict(cost or {})


# --------------------------------------------------------------------------------------------
# Building the steps.
# --------------------------------------------------------------------------------------------


def abstract_batch(
    config: ml_collections.ConfigDict, leading: tuple[int, ...], sharding: Any = None
) -> dict[str, jax.ShapeDtypeStruct]:
    """Episode arrays ``leading + episode shape`` (spec.py format) as ``ShapeDtypeStruct``."""
    d = config.data
    spec = episode_spec(int(d.n_ways), int(d.n_shots), int(d.n_queries), *map(int, d.image_size))
    return {
        k: jax.ShapeDtypeStruct(leading + s.shape, s.dtype, sharding=sharding)
        for k, s in spec.items()
    }


def _lowerable(
    config: ml_collections.ConfigDict, step: str, impl: str, devices: Sequence[jax.Device]
) -> tuple[Callable[[], Any], int, int]:
    """``(lower() -> Lowered, argument bytes per chip, state bytes)``."""
    chips = len(devices)
    if step == "train":
        pdb = int(config.train.per_device_batch)
        if impl == "shard_map":
            mesh = make_mesh(devices)
            state = abstract_state_on(config, mesh)
            batch = abstract_batch(config, (chips * pdb,), NamedSharding(mesh, P(BATCH_AXIS)))
            fn = shard_map_step(make_train_step(config), mesh)
        else:
            state = abstract_train_state(config)
            batch = abstract_batch(config, (chips, pdb))
            fn = pmap_step(make_train_step(config), devices)
        state_bytes = _tree_bytes(state)
        args = state_bytes + _tree_bytes(batch) // chips
        return (lambda: fn.lower(state, batch)), args, state_bytes
    pdb = int(config.eval.per_device_batch)
    mesh = make_mesh(devices)
    rows = NamedSharding(mesh, P(BATCH_AXIS))
    variables = abstract_state_on(config, mesh).variables()
    batch = abstract_batch(config, (chips * pdb,), rows)
    valid = jax.ShapeDtypeStruct((chips * pdb,), jnp.bool_, sharding=rows)
    fn = make_eval_step(build_model(config), mesh, NUM_CLASSES[config.data.dataset])
    args = _tree_bytes(variables) + (_tree_bytes(batch) + chips * pdb) // chips
    return (lambda: fn.lower(variables, batch, valid)), args, 0


_OOM = re.compile(
    r"required[^(]*\(([\d.]+)([KMGT]?)\)\s*exceeds available HBM \(([\d.]+)([KMGT]?)\)"
)


def _oom_bytes(message: str) -> int | None:
    """Bytes the compiler said it needed, from its RESOURCE_EXHAUSTED message."""
    m = _OOM.search(message)
    if not m:
        return None
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    return int(float(m.group(1)) * scale[m.group(2)])


def _new_report(
    config: ml_collections.ConfigDict,
    topology: str,
    devices: Sequence[jax.Device],
    step: str,
    impl: str,
) -> StepReport:
    """The report's identity fields (what was compiled, for which slice); no figures yet."""
    spec = target_spec(topology)
    d = config.data
    pdb = int(config.train.per_device_batch if step == "train" else config.eval.per_device_batch)
    return StepReport(
        topology=topology, generation=getattr(spec, "generation", getattr(spec, "name", "")),
        chip_kind=devices[0].device_kind,
        chips=len(devices), hosts=len({dev.process_index for dev in devices}), step=step,
        impl=impl, dtype=str(config.model.dtype), n_ways=int(d.n_ways), n_shots=int(d.n_shots),
        n_queries=int(d.n_queries), image_size=tuple(int(s) for s in d.image_size),
        per_device_batch=pdb, episodes_per_step=len(devices) * pdb,
    )  # fmt: skip


def _lower_and_compile(
    config: ml_collections.ConfigDict,
    report: StepReport,
    devices: Sequence[jax.Device],
    check_hbm: bool,
) -> tuple[Any, int] | None:
    """``(compiled, state bytes)``, or None with ``report.status='unsupported'`` (a pmap that
    this slice cannot run) or ``'failed'`` (XLA could not compile the step: the reason in
    ``report.note``); over-HBM configurations raise :class:`HBMExceededError`."""
    available = usable_bytes(target_spec(report.topology))
    step, impl, topology = report.step, report.impl, report.topology
    lower, arg_bytes, state_bytes = _lowerable(config, step, impl, devices)

    def refuse(needed: int, what: str) -> HBMExceededError:
        return _hbm_error(config, step, topology, report.chip_kind, available, needed, what)

    if check_hbm and arg_bytes > available:  # refuse before a long compile
        raise refuse(arg_bytes, "its arguments alone")
    t0 = time.perf_counter()
    try:
        lowered = lower()
    except Exception as e:
        if impl != "pmap":
            raise
        report.status = "unsupported"
        report.note = f"jax.pmap cannot be lowered for {topology}'s devices: {_first_line(e)}"
        return None
    t1 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as e:
        if "RESOURCE_EXHAUSTED" in str(e) and check_hbm:
            needed = _oom_bytes(str(e)) or arg_bytes
            raise refuse(needed, f"the compiler ({_first_line(e)})") from None
        if impl != "pmap":
            report.status, report.note = "failed", compile_failure(e)
            return None
        report.status = "unsupported"
        report.note = f"jax.pmap does not compile for {topology}'s devices: {_first_line(e)}"
        return None
    report.lower_s, report.compile_s = t1 - t0, time.perf_counter() - t1
    return compiled, state_bytes


# The first frame of XLA's "Suspected Python Code Location:" list: '<path>:<line>:<col> [<fn>]'.
_WHERE = re.compile(
    r"Suspected Python Code Location:\s*\n\s*\S*?(panet_jax/[\w/]+\.py:\d+)\S* \[(\w+)\]"
)


def compile_failure(error: BaseException, limit: int = 240) -> str:
    """One line for an XLA compile error: its first line (cut at ``limit`` characters), the
    model code it points at, and for XLA's GPU Triton GEMM tiling failures the flag that
    avoids them."""
    first = _first_line(error)
    if len(first) > limit:
        first = first[:limit] + " ..."
    note = f"XLA could not compile it: {first}"
    where = _WHERE.search(str(error))
    if where:
        note += f" (from {where.group(2)} at {where.group(1)})"
    if "Couldn't find output tile sizes" in str(error):
        note += (
            "; XLA_FLAGS=--xla_gpu_enable_triton_gemm=false leaves such dots to cuBLAS (a GPU "
            "compiles with autotuning, which a compile without one skips: try it there too)"
        )
    return note


def _fill_memory(report: StepReport, compiled: Any, state_bytes: int) -> None:
    """Memory per chip of a compiled step (XLA's memory analysis), into ``report``."""
    mem, train = compiled.memory_analysis(), report.step == "train"
    report.argument_bytes = int(mem.argument_size_in_bytes)
    report.output_bytes = int(mem.output_size_in_bytes)
    report.alias_bytes = int(mem.alias_size_in_bytes)
    report.temp_bytes = int(mem.temp_size_in_bytes)
    report.generated_code_bytes = int(mem.generated_code_size_in_bytes)
    report.peak_bytes = (
        report.argument_bytes + report.output_bytes - report.alias_bytes + report.temp_bytes
        + report.generated_code_bytes
    )  # fmt: skip
    # The trainer keeps a copy of the state for one step after each checkpoint boundary (it is
    # saved once the next loss is known to be finite): that copy lives beside the step.
    report.state_bytes = state_bytes if train else None
    report.resident_bytes = report.peak_bytes + (state_bytes if train else 0)
    report.hbm_bytes = usable_bytes(target_spec(report.topology))


def _fill_cost(report: StepReport, config: ml_collections.ConfigDict, compiled: Any) -> None:
    """FLOPs and bytes of one step per chip, and what the compiled program calls."""
    d = config.data
    if config.model.encoder == "vgg16":
        images = int(d.n_ways) * int(d.n_shots) + int(d.n_queries)
        width, train = float(config.model.width), report.step == "train"
        per_image = vgg_conv_flops(d.image_size, width, train=train)
        report.conv_flops = float(per_image * images * report.per_device_batch)
    text = compiled.as_text()
    report.collectives = dict(hlo.collectives(text))
    report.collective_bytes = dict(hlo.collective_bytes(text))
    if isinstance(target_spec(report.topology), gpus.GpuSpec):
        # cost_analysis() is not implemented for a GPU compiled without one: XLA's cost model
        # of the compiled module, the cuDNN convolutions counted exactly (panet_jax.aot.hlo).
        report.custom_calls = dict(hlo.custom_calls(text))
        report.cudnn_convolutions = hlo.cudnn_convolutions(text)
        cost = hlo.program_cost(compiled, text)
        if cost is not None:
            report.bytes_accessed = cost[1]
            if report.conv_flops is not None:
                report.flops = report.conv_flops + cost[0]
    else:
        cost = _first_cost(compiled)
        report.flops = float(cost.get("flops", 0.0)) or None
        report.bytes_accessed = float(cost.get("bytes accessed", 0.0)) or None
    report.flops_total = None if report.flops is None else report.flops * report.chips


def _fill_roofline(report: StepReport) -> None:
    """Compute and memory time of one step from the target's published peaks."""
    spec = target_spec(report.topology)
    report.peak_flops = peak_flops(spec, report.dtype)
    report.hbm_bandwidth = spec.hbm_bandwidth
    if report.flops is not None:
        report.compute_s = report.flops / report.peak_flops
    if report.bytes_accessed is not None:
        report.memory_s = report.bytes_accessed / spec.hbm_bandwidth
    times = [t for t in (report.compute_s, report.memory_s) if t is not None]
    if times:
        report.roofline_s = max(times)
        report.roofline_episodes_per_s = report.episodes_per_step / report.roofline_s


def compile_step(
    config: ml_collections.ConfigDict,
    topology: str,
    devices: Sequence[jax.Device],
    step: str,
    impl: str,
    *,
    check_hbm: bool = True,
) -> StepReport:
    """Lower and compile one step (``'train'`` / ``'eval'``) in one form (``'shard_map'`` /
    ``'pmap'``) for ``devices`` (of ``topology``); see the module docstring."""
    report = _new_report(config, topology, devices, step, impl)
    if step == "eval" and impl == "pmap":
        report.status = "unsupported"
        report.note = "the evaluator always runs jit(shard_map); it has no pmap form"
        return report
    result = _lower_and_compile(config, report, devices, check_hbm)
    if result is None:
        return report
    compiled, state_bytes = result
    _fill_memory(report, compiled, state_bytes)
    _fill_cost(report, config, compiled)
    _fill_roofline(report)
    if check_hbm:
        check_fits(report, config)
    return report


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def validate(config: ml_collections.ConfigDict, steps: Sequence[str]) -> None:
    """The trainer's / evaluator's static config checks (``ValueError`` naming the key); the
    ImageNet weights file is not needed to compile, so it is not looked for."""
    cfg = copy.deepcopy(config)
    cfg.model.pretrained = ""
    validate_config(cfg, train="train" in steps, evaluate="eval" in steps)


def compile_for_topology(
    config: ml_collections.ConfigDict,
    topology: str,
    *,
    steps: Sequence[str] = STEPS,
    impls: Sequence[str] = IMPLS,
    num_slices: int = 1,
    check_hbm: bool = True,
    on_report: Callable[[StepReport], None] | None = None,
) -> list[StepReport]:
    """Compile the train / eval steps of ``config`` for a TPU slice, e.g. ``'v5e:4x4'``, or a
    GPU machine, e.g. ``'h100:1x8'``.

    Args:
      config: an experiment config (``configs/*.py``); the data-parallel mesh is every chip
        of the slice (of all ``num_slices`` slices), across hosts.
      topology: ``<generation>:<shape>`` (:func:`parse_topology`) or
        ``<gpu>:<hosts>x<gpus per host>`` (:func:`panet_jax.aot.gpus.parse`).
      steps: of ``('train', 'eval')``; impls: forms of the train step, of
        ``('shard_map', 'pmap')`` (the evaluator only has the shard_map form: one eval row).
      check_hbm: raise :class:`HBMExceededError` when a step cannot fit (its arguments before
        compiling; the compiler's allocation after).
      on_report: called with each report as soon as it is ready (progress printing).
    Returns:
      One :class:`StepReport` per train (step, impl) and one for eval, in that order.
    """
    bad = [s for s in steps if s not in STEPS] + [i for i in impls if i not in IMPLS]
    if bad:
        raise ValueError(f"unknown steps/impls {bad}; expected steps {STEPS}, impls {IMPLS}")
    validate(config, steps)
    devices = target_devices(topology, num_slices=num_slices)
    name = topology if num_slices == 1 else f"{topology} x{num_slices}"
    reports = []
    for step in steps:
        # The evaluator has one form, jit(shard_map): one eval row whatever ``impls`` says.
        for impl in impls if step == "train" else ("shard_map",):
            report = compile_step(config, name, devices, step, impl, check_hbm=check_hbm)
            reports.append(report)
            if on_report is not None:
                on_report(report)
    return reports


# --------------------------------------------------------------------------------------------
# Printing.
# --------------------------------------------------------------------------------------------


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f}"


def _fmt(value: float | None, scale: float, spec: str) -> str:
    return "-" if value is None else format(value * scale, spec)


def _figures(r: StepReport) -> str:
    """The figure columns of one compiled report's row."""
    share = "" if not (r.conv_flops and r.flops) else f" ({100 * r.conv_flops / r.flops:.0f}%)"
    pct = 100 * r.resident_bytes / r.hbm_bytes
    calls = "-" if r.cudnn_convolutions is None else str(r.cudnn_convolutions)
    coll = sum((r.collectives or {}).values())
    return (
        f"| {_gib(r.argument_bytes)} | {_gib(r.temp_bytes)} "
        f"| {_gib(r.output_bytes - r.alias_bytes)} | {_gib(r.generated_code_bytes)} "
        f"| {_gib(r.peak_bytes)} ({_gib(r.resident_bytes)}) / {_gib(r.hbm_bytes)} ({pct:.0f}%) "
        f"| {_fmt(r.flops, 1e-9, '.1f')}{share} | {_fmt(r.bytes_accessed, 1e-9, '.2f')} "
        f"| {_fmt(r.compute_s, 1e3, '.2f')} / {_fmt(r.memory_s, 1e3, '.2f')} "
        f"| {_fmt(r.roofline_episodes_per_s, 1, '.0f')} | {calls} / {coll} "
        f"| {r.lower_s:.1f} + {r.compile_s:.1f} |"
    )


def markdown_table(reports: Sequence[StepReport]) -> str:
    """One row per report: memory per chip (GiB), FLOPs, roofline, library calls and
    collectives, compile time."""
    head = (
        "| topology | chips (hosts) | step | impl | dtype | task | episodes/step "
        "| args | temp | out - donated | code | peak (+ckpt copy) / usable GiB per chip "
        "| GFLOP/chip (conv share) | GB accessed/chip | compute / memory roofline ms "
        "| roofline episodes/s | cuDNN convs / collectives | lower + compile s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for r in reports:
        task = f"{r.n_ways}-way {r.n_shots}-shot {r.image_size[0]}x{r.image_size[1]}"
        lead = (
            f"| {r.topology} | {r.chips} ({r.hosts}) | {r.step} | {r.impl} | {r.dtype} | {task} "
            f"| {r.episodes_per_step} "
        )
        if r.status != "compiled":
            rows.append(lead + f"| {r.status}: {r.note} |" + " |" * 10)
            continue
        rows.append(lead + _figures(r))
    return "\n".join(rows)


def chip_table() -> str:
    """The per-chip figures used (Markdown)."""
    rows = [
        "| generation | jax device_kind | HBM (published) | HBM usable (compiler) "
        "| HBM bandwidth | peak bf16 | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in TPU_CHIPS.values():
        rows.append(
            f"| {c.generation} | {c.device_kind} | {c.hbm_published} "
            f"| {c.hbm_usable_bytes / GiB:.2f} GiB | {c.hbm_bandwidth / 1e9:.0f} GB/s "
            f"| {c.peak_bf16_flops / 1e12:.0f} TFLOP/s | {c.source} |"
        )
    return "\n".join(rows)


def gpu_table() -> str:
    """The per-GPU figures used (Markdown)."""
    rows = [
        "| gpu | jax device_kind | memory (published) | usable (JAX's pool) | bandwidth "
        "| peak bf16 / TF32 / fp32 | target config | source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in gpus.GPUS.values():
        rows.append(
            f"| {g.name} | {g.device_kind} | {g.memory_published} "
            f"| {g.usable_memory_bytes() / GiB:.2f} GiB | {g.hbm_bandwidth / 1e9:.0f} GB/s "
            f"| {g.peak_bf16_flops / 1e12:.1f} / {g.peak_tf32_flops / 1e12:.1f} / "
            f"{g.peak_f32_flops / 1e12:.1f} TFLOP/s | {g.xla_spec or '-'} | {g.source} |"
        )
    return "\n".join(rows)
