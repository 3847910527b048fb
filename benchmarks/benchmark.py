r"""Time the training step the trainer runs, and the evaluator's forward, optionally beside PyTorch.

    python benchmarks/benchmark.py --sizes=241,417 --shots=1,5 --kinds=train,eval \
        --variants=default,xla --compare_pytorch --repeats=3 --out=bench_results/cpu.json
    python benchmarks/benchmark.py --sizes=128 --width=0.125 --batch=4 --compare_pytorch  # demo

Per configuration (image size, shots, kind), built from ``config_base.base_config()`` with
``--width`` / ``--batch`` / ``--ways`` / ``--queries`` / ``--dtypes``:

* ``train``: :func:`panet_jax.train.steps.make_train_step` on a
  :func:`panet_jax.train.state.create_train_state` state (random init, SGD momentum 0.9, weight
  decay 5e-4), run as the trainer runs it: :func:`panet_jax.runtime.parallel.shard_map_step` on the
  mesh of all devices, ``--batch`` episodes per device, the state donated.
* ``eval``: the evaluator's ``jit(shard_map(eval_step))`` (forward, argmax, IoU counts).

Each *variant* is one way to compile it: ``default`` (this project's per-executable options,
:mod:`panet_jax.runtime.xla_options`), ``xla`` (XLA's own defaults: the YNNPACK fusions on),
``ynn_off``,
``ynn_dots`` (only dots in YNNPACK), or any ``--define_variant=name={"xla_option": value}``;
variants that compile the same executable for a step are timed once, as ``default=xla``.
``--compare_pytorch`` adds ``torch``: the official model and losses re-stated in
PyTorch (:mod:`panet_jax.testing.torch_reference`) with ``torch.optim.SGD(lr 1e-3, momentum
0.9, weight decay 5e-4)``; eval is its ``no_grad`` forward + argmax. The variants of a
configuration run in one process, **alternating** (A B C A B C ...; one untimed warm-up each
first), so drifts of the machine's load hit them alike; a fresh subprocess per configuration
(``--isolate``) makes the peak RSS a per-configuration figure (``--noalternate``: one
subprocess per variant, so per-variant peaks, no alternation). Inputs are synthetic episodes
already on the device.

Reported per row: median / min wall seconds over ``--repeats`` rounds (fewer when
``--budget_s`` runs out, at least ``--min_repeats``) and the median process CPU seconds (all
threads: steadier on a shared machine), GFLOP per step (the compiled executable's
``cost_analysis()['flops']``; PyTorch rows use the first JAX executable's count), GFLOP/s
against the measured matmul rate of the row's dtype (``--matmul_size``, in JAX) and, on CPU,
against the theoretical FMA peak (cores x clock x FMA units x lanes x 2, from
``/proc/cpuinfo``; the derivation is printed), the peak memory (process RSS on CPU, the
allocator's peak on accelerators), the time ratios to ``torch`` and, in the JSON, episodes/s,
MFU and the last loss. Prints a Markdown table; ``--out`` writes JSON atomically.
``main(argv)`` runs it from Python (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import math
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import flags

from panet_jax import cli, errors, files
from panet_jax.models import registry
from panet_jax.runtime import xla_options

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["241", "417"], "Square image sides.")
flags.DEFINE_list("shots", ["1"], "K values.")
flags.DEFINE_list("kinds", ["train", "eval"], "Steps to time: train, eval.")
flags.DEFINE_list("variants", ["default", "xla"], "JAX compile variants (see the docstring).")
flags.DEFINE_multi_string(
    "define_variant", [], 'Extra variant: name={"xla_option": value, ...} (JSON).'
)
flags.DEFINE_bool("compare_pytorch", False, "Also time the official-equivalent PyTorch step.")
flags.DEFINE_enum(
    "encoder",
    "vgg16",
    ["vgg16", "resnet50", "resnet101"],
    "config.model.encoder (--compare_pytorch needs vgg16).",
)
flags.DEFINE_float("width", 1.0, "Encoder channel multiplier (config.model.width).")
flags.DEFINE_integer("batch", 1, "Episodes per device per step (config.train.per_device_batch).")
flags.DEFINE_integer("ways", 1, "N (config.data.n_ways).")
flags.DEFINE_integer("queries", 1, "Queries per episode (config.data.n_queries).")
flags.DEFINE_list("dtypes", ["float32"], "config.model.dtype values: float32, bfloat16.")
flags.DEFINE_integer("repeats", 5, "Timed rounds (one step of every variant each).")
flags.DEFINE_integer("min_repeats", 2, "Rounds run even when --budget_s is exceeded.")
flags.DEFINE_float("budget_s", 0.0, "Stop a configuration's rounds after this (0: no limit).")
flags.DEFINE_integer("warmup", 1, "Untimed steps of each variant after compiling.")
flags.DEFINE_integer(
    "matmul_size",
    0,
    "Side of the matmul measuring the rate (0: 2048 on CPU, 8192 on accelerators).",
)
flags.DEFINE_bool("isolate", True, "A fresh subprocess per configuration (per-config peaks).")
flags.DEFINE_bool("alternate", True, "Variants alternate in one process (else one each).")
flags.DEFINE_string("out", None, "Write the results as JSON here.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --out file.")
flags.DEFINE_string("worker", None, "(internal) run one configuration given as JSON.")

RESULT_MARKER = "BENCH_RESULT "
BUILTIN_VARIANTS: dict[str, dict[str, Any] | None] = {
    "default": None,  # panet_jax.runtime.xla_options for the kind
    "xla": {},  # XLA's own defaults
    "ynn_off": {xla_options.YNN_FUSION_TYPE: ""},
    "ynn_dots": {xla_options.YNN_FUSION_TYPE: xla_options.YNN_DOTS_ONLY},
}
TORCH = "torch"


# ------------------------------------------------------------------------------------------
# The machine: theoretical FMA peak from /proc/cpuinfo.
# ------------------------------------------------------------------------------------------


def cpu_peak(
    cpuinfo: str | None = None, cores: int | None = None, measured_flops: float | None = None
) -> dict[str, Any]:
    """float32 FMA peak = cores x clock x FMA units x SIMD lanes x 2 FLOP, with its derivation.

    Clock: ``cpu MHz``, which under a hypervisor is the nominal (base) clock; boost is not
    visible there. When ``measured_flops`` (the measured float32 matmul rate) exceeds the peak at
    that clock, the cores demonstrably run faster: the clock is raised to the least one that
    explains the measurement, and the derivation says so (a lower bound on the true peak).
    Lanes: 16 with ``avx512f``, 8 with ``fma``/``avx2``, else 4. FMA units: 2 per core (Intel
    server cores since Skylake-SP, AMD Zen 2-5); AMD family 25 (Zen 3/4) runs AVX-512 on 256-bit
    datapaths, so 8 lanes there. An estimate: SKUs with one 512-bit FMA unit exist.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    cores = cores or len(os.sched_getaffinity(0))

    def field(name: str) -> str:
        m = re.search(rf"^{name}\s*:\s*(.*)$", cpuinfo, re.M)
        return m.group(1).strip() if m else ""

    model, vendor, isa = field("model name"), field("vendor_id"), set(field("flags").split())
    nominal_mhz = float(field("cpu MHz") or 0.0)
    lanes, why = (16, "avx512f") if "avx512f" in isa else (8, "fma") if "fma" in isa else (4, "sse")
    if lanes == 16 and vendor == "AuthenticAMD" and field("cpu family") == "25":
        lanes, why = 8, "avx512f on AMD family 25 (Zen 3/4): 256-bit datapaths"
    units = 2
    flop_per_cycle = cores * units * lanes * 2
    mhz, clock = nominal_mhz, f"{nominal_mhz / 1e3:.3f} GHz ('cpu MHz')"
    if measured_flops and measured_flops > flop_per_cycle * nominal_mhz * 1e6:
        mhz = measured_flops / flop_per_cycle / 1e6
        clock = (
            f"{mhz / 1e3:.3f} GHz (at least: the measured matmul, {measured_flops / 1e9:.0f} "
            f"GFLOP/s, needs it; 'cpu MHz' says {nominal_mhz / 1e3:.3f} GHz, the nominal clock)"
        )
    peak = flop_per_cycle * mhz * 1e6
    derivation = (
        f"{cores} cores x {clock} x {units} FMA units x {lanes} fp32 lanes ({why}) "
        f"x 2 FLOP/FMA = {peak / 1e9:.0f} GFLOP/s"
    )
    return {"model": model, "vendor": vendor, "cores": cores, "mhz": mhz,
            "nominal_mhz": nominal_mhz, "lanes": lanes, "fma_units": units,
            "peak_flops_per_s": peak, "derivation": derivation}  # fmt: skip


# ------------------------------------------------------------------------------------------
# Worker: one configuration, its variants alternating.
# ------------------------------------------------------------------------------------------


def make_config(spec: dict[str, Any]) -> Any:
    """``base_config()`` with the spec's size, shots, width, batch, ways, queries, dtype."""
    from panet_jax.config import base_config

    c = base_config()
    c.model.encoder = spec.get("encoder", "vgg16")
    c.model.width = float(spec["width"])
    c.model.dtype = spec["dtype"]
    c.data.image_size = (spec["size"], spec["size"])
    c.data.n_shots, c.data.n_ways, c.data.n_queries = spec["shots"], spec["ways"], spec["queries"]
    c.train.per_device_batch = c.eval.per_device_batch = spec["batch"]
    return c


def synthetic_batch(config: Any, episodes: int, seed: int = 0) -> dict[str, Any]:
    """``episodes`` episodes: normal-noise images, a centred square object, one 255 row."""
    import numpy as np

    from panet_jax.data.spec import zeros_episode

    d = config.data
    size = d.image_size[0]
    rng = np.random.default_rng(seed)
    ep = zeros_episode(d.n_ways, d.n_shots, d.n_queries, size, size, batch=(episodes,))
    ep["support_images"][:] = rng.standard_normal(ep["support_images"].shape)
    ep["query_images"][:] = rng.standard_normal(ep["query_images"].shape)
    lo, hi = size // 4, 3 * size // 4
    ep["support_fg"][..., lo:hi, lo:hi] = 1.0
    ep["support_bg"][:] = 1.0 - ep["support_fg"]
    ep["query_labels"][..., lo:hi, lo:hi] = 1
    ep["query_labels"][..., size // 8, :] = 255
    ep["class_ids"][:] = np.arange(1, d.n_ways + 1)
    return ep


def jax_runner(spec: dict[str, Any], options: dict[str, Any] | None) -> dict[str, Any]:
    """Compile one JAX variant; returns ``{'run': () -> None, 'flops', 'lower_s', ...}``."""
    import jax
    import numpy as np
    from jax.sharding import PartitionSpec as P

    from panet_jax.runtime import parallel
    from panet_jax.train import state as ts
    from panet_jax.train import steps

    config = make_config(spec)
    mesh = parallel.make_mesh()
    state = parallel.replicate(ts.create_train_state(config, jax.random.key(0)), mesh)
    episodes = parallel.global_batch_size(config, mesh)
    batch = parallel.host_batch_to_global(synthetic_batch(config, episodes), mesh)
    if spec["kind"] == "train":
        fn = parallel.shard_map_step(steps.make_train_step(config), mesh, compiler_options=options)
        args: list[Any] = [state, batch]
    else:
        step = steps.make_eval_step(registry.build_panet(config), num_classes=20)
        out_specs = (P(), P(parallel.BATCH_AXIS))
        fn = parallel.on_batch(step, mesh, 2, out_specs, compiler_options=options)
        valid = parallel.host_batch_to_global({"v": np.ones(episodes, bool)}, mesh)["v"]
        args = [state.variables(), batch, valid]
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()

    losses: list[float] = []

    def run() -> None:
        out = compiled(*args)
        jax.block_until_ready(out)
        if spec["kind"] == "train":
            args[0] = out[0]  # the donated state
            losses.append(float(out[1]["loss"]))

    return {"run": run, "flops": step_flops(compiled), "lower_s": t1 - t0, "compile_s": t2 - t1,
            "ynn_fusions": compiled.as_text().count("__ynn_fusion"), "losses": losses}  # fmt: skip


def torch_runner(spec: dict[str, Any]) -> dict[str, Any]:
    """The official-equivalent PyTorch step (:mod:`panet_jax.testing.torch_reference`) on the
    same data."""
    import torch

    from panet_jax.testing import torch_reference as tr

    config = make_config(spec)
    torch.manual_seed(0)
    model = tr.FewShotSeg(width=float(spec["width"]))
    supp, fore, back, qry, label = tr.episodes_to_official(synthetic_batch(config, spec["batch"]))
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    losses: list[float] = []

    def train() -> None:
        opt.zero_grad()
        out, align = model(supp, fore, back, qry)
        loss = criterion(out, label) + align
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

    def forward() -> None:
        with torch.no_grad():
            out, _ = model(supp, fore, back, qry)
            out.argmax(dim=1)

    model.train(spec["kind"] == "train")
    return {"run": train if spec["kind"] == "train" else forward, "flops": None,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "losses": losses}  # fmt: skip


def step_flops(compiled: Any) -> float | None:
    """FLOPs of one compiled step from XLA's cost analysis (None if the backend has none)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops else None


def matmul_rate(n: int, dtype: str, repeats: int = 5) -> float:
    """Median FLOP/s of an ``n x n`` matmul in ``dtype`` in JAX on the default device (``n``
    0: 2048 on CPU, 8192 on accelerators)."""
    import jax
    import jax.numpy as jnp

    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    a = jnp.ones((n, n), getattr(jnp, dtype))
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def alternate(runners: dict[str, dict[str, Any]], spec: dict[str, Any]) -> dict[str, list]:
    """Warm-up, then rounds of one timed step per variant (A B C A B C ...): name -> list of
    (wall seconds, process CPU seconds)."""
    for r in runners.values():
        r["warmup_s"] = [timed(r["run"])[0] for _ in range(spec["warmup"])]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    start = time.perf_counter()
    for i in range(spec["repeats"]):
        over = spec["budget_s"] and time.perf_counter() - start > spec["budget_s"]
        if over and i >= spec["min_repeats"]:
            break
        for name, r in runners.items():
            times[name].append(timed(r["run"]))
    return times


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``fn()``; CPU time (all threads) is less sensitive to
    other programs sharing the cores."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def applied_options(spec: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The XLA options variant ``name`` was compiled with (None for PyTorch)."""
    from panet_jax.runtime import xla_options

    if name == TORCH:
        return None
    given = spec["options"][name]
    return given if given is not None else xla_options.compiler_options(spec["kind"]) or {}


def peak_memory() -> tuple[int, str]:
    """Peak bytes: the device allocator's on accelerators, the process RSS on CPU."""
    import jax

    dev = jax.devices()[0]
    stats = (dev.memory_stats() or {}) if dev.platform != "cpu" else {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def run_worker(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Build every variant of one configuration, time them alternating; one row per variant."""
    import jax

    runners: dict[str, dict[str, Any]] = {}
    for name in spec["variants"]:
        if name == TORCH:
            runners[name] = torch_runner(spec)
        else:
            runners[name] = jax_runner(spec, spec["options"][name])
    common = {k: v for k, v in spec.items() if k not in ("options", "variants")}
    common.update(matmul_flops_per_s=matmul_rate(spec["matmul_size"], spec["dtype"]),
                  loadavg_1min=os.getloadavg()[0], device_kind=jax.devices()[0].device_kind,
                  episodes=spec["batch"] * jax.device_count())  # fmt: skip
    times = alternate(runners, spec)
    common["peak_memory_bytes"], common["peak_memory_kind"] = peak_memory()
    flops = next((r["flops"] for r in runners.values() if r["flops"]), None)
    return [
        make_row(dict(common, variant=name, options=applied_options(spec, name)), r, times[name],
                 flops)
        for name, r in runners.items()
    ]  # fmt: skip


def make_row(row: dict[str, Any], runner: dict[str, Any], times: list, flops: float | None):
    """One result row: times, rates, the last loss (train) and the aliases
    ``benchmarks/gpu_check.py`` reads (``median_step_s``, ``mfu``, ...)."""
    wall, cpu = [w for w, _ in times], [c for _, c in times]
    row.update({k: v for k, v in runner.items() if k not in ("run", "losses")})
    median = statistics.median(wall)
    row.update(step_s=wall, median_s=median, min_s=min(wall), cpu_s=cpu,
               median_cpu_s=statistics.median(cpu), flops=runner["flops"] or flops)  # fmt: skip
    rate = row["flops"] / median if row["flops"] else None
    losses = runner["losses"]
    row.update(
        median_step_s=median,
        step_flops=row["flops"],
        episodes_per_s=row["episodes"] / median,
        mfu=None if rate is None else rate / row["matmul_flops_per_s"],
        final_loss=losses[-1] if losses else None,
        loss_finite=all(map(math.isfinite, losses)) if losses else None,
    )
    return row


# ------------------------------------------------------------------------------------------
# Parent: configurations, subprocesses, table, JSON.
# ------------------------------------------------------------------------------------------


def variant_options() -> dict[str, dict[str, Any] | None]:
    """Name -> options for every requested JAX variant (built-in or ``--define_variant``)."""
    known = dict(BUILTIN_VARIANTS)
    for text in FLAGS.define_variant:
        name, sep, body = text.partition("=")
        try:
            options = json.loads(body) if sep else None
        except json.JSONDecodeError as e:
            raise cli.FlagError(f"--define_variant={text!r}: not JSON ({e})") from e
        if not name or not isinstance(options, dict) or name == TORCH:
            raise cli.FlagError(f"--define_variant={text!r}: expected name={{json object}}")
        known[name] = options
    unknown = [v for v in FLAGS.variants if v not in known]
    if unknown:
        raise cli.FlagError(f"--variants: unknown {unknown}; known: {sorted(known)}")
    return {v: known[v] for v in FLAGS.variants}


def resolved_variants(kind: str, options: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """Label -> options for ``kind``: ``default`` resolved by :mod:`panet_jax.runtime.xla_options`
    (None, so the step looks them up itself); variants compiling the same executable merged
    into one label (``default=ynn_off``)."""
    from panet_jax.runtime import xla_options

    groups: dict[str, list[str]] = {}
    for name, opts in options.items():
        if name == "default":
            opts = xla_options.compiler_options(kind) or {}
        groups.setdefault(json.dumps(opts, sort_keys=True), []).append(name)
    return {
        "=".join(names): None if "default" in names else json.loads(key)
        for key, names in groups.items()
    }


def specs() -> list[dict[str, Any]]:
    """One spec per configuration (or per configuration and variant with ``--noalternate``);
    PyTorch joins the float32 ones."""
    options = variant_options()
    for k in FLAGS.kinds:
        if k not in ("train", "eval"):
            raise cli.FlagError(f"--kinds: unknown {k!r}; expected train, eval")
    for d in FLAGS.dtypes:
        if d not in ("float32", "bfloat16"):
            raise cli.FlagError(f"--dtypes: unknown {d!r}; expected float32, bfloat16")
    if FLAGS.compare_pytorch and FLAGS.encoder != "vgg16":
        raise cli.FlagError("--compare_pytorch: the PyTorch reference is the official VGG-16 "
                            f"PANet; got --encoder={FLAGS.encoder}")  # fmt: skip
    base = {"encoder": FLAGS.encoder, "width": FLAGS.width, "batch": FLAGS.batch,
            "ways": FLAGS.ways, "queries": FLAGS.queries, "repeats": FLAGS.repeats,
            "min_repeats": FLAGS.min_repeats, "budget_s": FLAGS.budget_s,
            "warmup": FLAGS.warmup, "matmul_size": FLAGS.matmul_size}  # fmt: skip
    out = []
    for dtype in FLAGS.dtypes:
        for shots in FLAGS.shots:
            for size in FLAGS.sizes:
                for kind in FLAGS.kinds:
                    resolved = resolved_variants(kind, options)
                    torch = FLAGS.compare_pytorch and dtype == "float32"
                    names = [*resolved, *([TORCH] if torch else [])]
                    groups = [names] if FLAGS.alternate else [[n] for n in names]
                    out += [dict(base, dtype=dtype, kind=kind, size=int(size), shots=int(shots),
                                 variants=g, options=resolved) for g in groups]  # fmt: skip
    return out


def run_isolated(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One configuration in a fresh subprocess; its result line parsed."""
    cmd = [sys.executable, os.path.abspath(__file__), f"--worker={json.dumps(spec)}"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    spec = {k: v for k, v in spec.items() if k != "options"}
    return [dict(spec, variant="/".join(spec["variants"]), error=f"exit {proc.returncode}")]


def with_ratios(rows: list[dict[str, Any]]) -> None:
    """Add ``vs_torch`` / ``vs_torch_cpu``: median wall / CPU time over the PyTorch row's of
    the same configuration."""
    key = lambda r: (r["kind"], r["size"], r["shots"], r["width"], r["batch"], r["dtype"])
    ok = [r for r in rows if "error" not in r]
    ref = {key(r): r for r in ok if r["variant"] == TORCH}
    for r in ok:
        if key(r) in ref:
            r["vs_torch"] = r["median_s"] / ref[key(r)]["median_s"]
            r["vs_torch_cpu"] = r["median_cpu_s"] / ref[key(r)]["median_cpu_s"]


def _num(x: float | None, unit: float) -> str:
    return "-" if x is None else f"{x / unit:.1f}"


def _pct(rate: float | None, of: float | None) -> str:
    return "-" if rate is None or not of else f"{100 * rate / of:.0f}%"


def markdown_table(rows: list[dict[str, Any]], peak: float | None) -> str:
    """One line per (configuration, variant); ``peak``: the FMA peak (None off CPU)."""
    lines = [
        "| step | image | task | variant | median s | min s | rounds | vs torch | CPU s "
        "| CPU vs torch | GFLOP/step | GFLOP/s | % of matmul | % of FMA peak | peak memory "
        "| compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        task = (f"{r.get('encoder', 'vgg16')} {r['ways']}-way {r['shots']}-shot, {r['batch']} "
                f"ep. x w{r['width']:g} {r['dtype']}")  # fmt: skip
        head = f"| {r['kind']} | {r['size']} | {task} | {r['variant']} "
        if "error" in r:
            lines.append(head + f"| failed: {r['error']} |" + " |" * 11)
            continue
        rate = r["flops"] / r["median_s"] if r.get("flops") else None
        ratio = f"{r['vs_torch']:.2f}x" if "vs_torch" in r else "-"
        cpu_ratio = f"{r['vs_torch_cpu']:.2f}x" if "vs_torch_cpu" in r else "-"
        compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        kind = "RSS" if "RSS" in r["peak_memory_kind"] else "device"
        lines.append(
            head + f"| **{r['median_s']:.3f}** | {r['min_s']:.3f} | {len(r['step_s'])} "
            f"| {ratio} | {r['median_cpu_s']:.2f} | {cpu_ratio} | {_num(r.get('flops'), 1e9)} "
            f"| {_num(rate, 1e9)} | {_pct(rate, r['matmul_flops_per_s'])} | {_pct(rate, peak)} "
            f"| {r['peak_memory_bytes'] / 2**30:.2f} GiB ({kind}) | {compile_s} |"
        )
    return "\n".join(lines)


def versions() -> dict[str, str | None]:
    from panet_jax.runtime.provenance import package_versions

    return package_versions(("torch",))


def device_info(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The benchmarked device (as the workers saw it) and this host."""
    import jax

    dev = jax.devices()[0]
    kinds = {r["device_kind"] for r in rows if "device_kind" in r}
    return {"platform": dev.platform, "device_kind": "/".join(sorted(kinds)) or dev.device_kind,
            "num_devices": jax.device_count(), "host_cpus": os.cpu_count(),
            "host": platform.platform()}  # fmt: skip


def benchmark() -> list[dict[str, Any]]:
    """Every configuration of the flags (each in a subprocess with ``--isolate``)."""
    rows: list[dict[str, Any]] = []
    for spec in specs():
        print(f"[benchmark] {spec['kind']} {spec['size']}px {spec['shots']}-shot "
              f"{spec['dtype']}: {' '.join(spec['variants'])} ...", flush=True)  # fmt: skip
        got = run_isolated(spec) if FLAGS.isolate else run_worker(spec)
        for r in got:
            if "error" not in r:
                print(f"[benchmark]   {r['variant']}: median {r['median_s']:.3f} s "
                      f"over {len(r['step_s'])}", flush=True)  # fmt: skip
        rows.extend(got)
    with_ratios(rows)
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    """Print the table and the machine notes; write ``--out`` (JSON, atomically)."""

    device = device_info(rows)
    on_cpu = device["platform"] == "cpu"
    f32_matmul = [r["matmul_flops_per_s"] for r in rows
                  if "error" not in r and r.get("dtype", "float32") == "float32"]  # fmt: skip
    peak = cpu_peak(measured_flops=max(f32_matmul, default=None)) if on_cpu else None
    table = markdown_table(rows, peak["peak_flops_per_s"] if peak else None)
    rates = sorted({round(r["matmul_flops_per_s"] / 1e9) for r in rows if "error" not in r})
    notes = f"Device: {device['device_kind']} x {device['num_devices']}. " + (
        f"CPU: {peak['model']} ({peak['vendor']}), {peak['cores']} cores. FMA peak: "
        f"{peak['derivation']}. " if peak else "")  # fmt: skip
    notes += f"Measured matmul (JAX, row dtype): {'/'.join(map(str, rates))} GFLOP/s."
    print("\n" + table + "\n\n" + notes)
    if FLAGS.out:
        out = {"command": " ".join(["python", *sys.argv]), "versions": versions(),
               "device": device, "cpu": peak, "xla_flags": os.environ.get("XLA_FLAGS", ""),
               "rows": rows, "results": rows, "table": table, "notes": notes}  # fmt: skip
        files.write_json(FLAGS.out, out, overwrite=FLAGS.overwrite)
        print(f"wrote {FLAGS.out}")


def main(argv: list[str]) -> int:
    """Programmatic entry (``benchmarks/gpu_check.py``): parse the flags in ``argv``, run,
    return the exit status (1 if a configuration failed)."""
    FLAGS([os.path.basename(__file__), *argv])
    if FLAGS.out:
        files.check_new_output(FLAGS.out, FLAGS.overwrite, "--out")
    rows = benchmark()
    report(rows)
    return int(any("error" in r for r in rows))


def _cli_main(argv: list[str]) -> None:
    if FLAGS.worker:
        print(RESULT_MARKER + json.dumps(run_worker(json.loads(FLAGS.worker))), flush=True)
        return
    if FLAGS.out:
        files.check_new_output(FLAGS.out, FLAGS.overwrite, "--out")
    rows = benchmark()
    report(rows)
    if any("error" in r for r in rows):
        raise errors.CommandFailed("some configurations failed (see the table)")


if __name__ == "__main__":
    cli.run(_cli_main)
