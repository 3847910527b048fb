"""Compile the real train and evaluation steps for a TPU slice or a GPU machine ahead of time,
on any machine.

No TPU is needed: ``libtpu`` (``pip install -e ".[tpu]"``) describes the devices of a slice
(``jax.experimental.topologies``); no GPU either: JAX's CUDA plugin (``pip install -e
".[cuda]"``) describes those of a GPU machine such as ``h100:1x8`` from the GPU's target
description (:mod:`panet_jax.aot.gpus`). The steps the trainer and the evaluator run are
lowered and compiled for them with abstract arguments (``jax.ShapeDtypeStruct``), exactly as
they would be on the pod:

* ``train``, ``impl='shard_map'``: :func:`panet_jax.runtime.parallel.shard_map_step` of
  :func:`panet_jax.train.steps.make_train_step` (state replicated and donated, a
  ``[chips * train.per_device_batch, ...]`` batch split over the 1-D ``'batch'`` mesh of
  *all* the slice's chips, across hosts);
* ``train``, ``impl='pmap'``: the literal ``jax.pmap`` of
  :func:`panet_jax.runtime.parallel.pmap_step` over all the slice's chips (a multi-host pmap
  compiles one SPMD program for the global device set; every host feeds its own rows). If libtpu
  refuses it, the report says so and why;
* ``eval``: :func:`panet_jax.evaluation.evaluator.make_sharded_eval_step` (the evaluator always runs
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

from panet_jax import config as config_lib
from panet_jax import errors
from panet_jax.aot import gpus, hlo
from panet_jax.aot.chips import TPU_CHIPS, GiB, HBMExceededError
from panet_jax.aot.flops import vgg_conv_flops
from panet_jax.aot.targets import (
    device_word,
    memory_phrase,
    peak_flops,
    target_devices,
    target_spec,
    usable_bytes,
)
from panet_jax.data.folds import NUM_CLASSES
from panet_jax.data.spec import episode_spec
from panet_jax.evaluation.evaluator import (
    make_sharded_eval_step,  # jit(shard_map(eval step)) on a mesh
)
from panet_jax.models import registry
from panet_jax.runtime.parallel import BATCH_AXIS, make_mesh, pmap_step, shard_map_step

# What the trainer and the evaluator run (keep in step with them):
from panet_jax.train.checkpointing import abstract_state_on  # the replicated train state
from panet_jax.train.state import abstract_train_state
from panet_jax.train.steps import make_train_step  # the per-device train step

STEPS = ("train", "eval")
IMPLS = ("shard_map", "pmap")
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
    if step == "train":  # frozen parameters keep no optimiser state
        frozen = repr(m.frozen) if m.frozen else "nothing frozen"
        text += f", freeze encoder parts with config.model.frozen (now {frozen})"
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
    unit = device_word(spec)
    msg = (
        f"{step} step does not fit on {topology}: {what} needs {needed / GiB:.2f} GiB per {unit}, "
        f"{memory_phrase(spec, chip_kind)} "
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
    model = registry.build_panet(config)
    fn = make_sharded_eval_step(model, mesh, NUM_CLASSES[config.data.dataset])
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
    note = f"XLA could not compile it: {errors.first_line(error, limit)}"
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


def check_compilable(config: ml_collections.ConfigDict, steps: Sequence[str]) -> None:
    """The trainer's / evaluator's static config checks (``ValueError`` naming the key); the
    ImageNet weights file is not needed to compile, so it is not looked for."""
    cfg = copy.deepcopy(config)
    cfg.model.pretrained = ""
    config_lib.validate(cfg, train="train" in steps, evaluate="eval" in steps)


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
    check_compilable(config, steps)
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
