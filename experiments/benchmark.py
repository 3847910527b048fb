r"""Time one jit-compiled PANet training step (forward + backward + SGD update).

    python experiments/benchmark.py --sizes=241,417 --shots=1 --dtypes=float32 --repeats=5 \
        --out=bench_results/cpu.json

For every (size, shots, dtype): a full-width VGG-16 PANet (1-way by default, 1 query, a batch of
1 episode, synthetic data already on the device), optax SGD with momentum 0.9 and weight decay
5e-4 (the official recipe), the loss ``L_seg + L_PAR``. Reported: trace+lower and compile time,
the first (warm-up) step, the median / min of ``--repeats`` further steps (each ended with
``block_until_ready``), and the peak memory: peak RSS of the process on CPU
(``resource.getrusage``), ``memory_stats()['peak_bytes_in_use']`` on GPU/TPU. By default every
configuration runs in a fresh subprocess, so the peaks are per configuration and one failure
(e.g. out of memory) does not end the run. Prints a Markdown table; ``--out`` also writes JSON
with the device and library versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

RESULT_MARKER = "BENCH_RESULT "


def _csv(cast):
    def parse(text: str) -> list:
        return [cast(v) for v in text.split(",") if v.strip()]

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=_csv(int), default=[241, 417], help="square image sides")
    p.add_argument("--shots", type=_csv(int), default=[1], help="K values")
    p.add_argument("--dtypes", type=_csv(str), default=["float32"], help="float32,bfloat16")
    p.add_argument("--ways", type=int, default=1)
    p.add_argument("--queries", type=int, default=1)
    p.add_argument("--batch", type=int, default=1, help="episodes per step")
    p.add_argument("--width", type=float, default=1.0, help="encoder channel multiplier")
    p.add_argument("--repeats", type=int, default=5, help="timed steps (after the warm-up)")
    p.add_argument(
        "--matmul_size", type=int, default=0,
        help="side of the matmul measuring the device's rate for MFU (0: 8192 on GPU/TPU, "
        "2048 on CPU)",
    )  # fmt: skip
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each configuration in its own subprocess (per-configuration peak memory)",
    )
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)  # "size,shots,dtype"
    args = p.parse_args(argv)
    for d in args.dtypes:
        if d not in ("float32", "bfloat16"):
            p.error(f"--dtypes: unknown dtype {d!r}; expected float32 or bfloat16")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def synthetic_batch(
    n_ways: int, n_shots: int, n_queries: int, batch: int, size: int, seed: int = 0
) -> dict[str, Any]:
    """A batch of episodes: normal-noise images, a centred square object, a 255 row."""
    import numpy as np

    from panet_jax.data.spec import zeros_episode

    rng = np.random.default_rng(seed)
    ep = zeros_episode(n_ways, n_shots, n_queries, size, size, batch=(batch,))
    ep["support_images"][:] = rng.standard_normal(ep["support_images"].shape)
    ep["query_images"][:] = rng.standard_normal(ep["query_images"].shape)
    lo, hi = size // 4, 3 * size // 4
    ep["support_fg"][..., lo:hi, lo:hi] = 1.0
    ep["support_bg"][:] = 1.0 - ep["support_fg"]
    ep["query_labels"][..., lo:hi, lo:hi] = 1
    ep["query_labels"][..., size // 8, :] = 255
    ep["class_ids"][:] = np.arange(1, n_ways + 1)
    return ep


def device_info() -> dict[str, Any]:
    import jax

    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "num_devices": jax.device_count(),
        "host_cpus": os.cpu_count(),
        "host": platform.platform(),
    }


def peak_memory(dev) -> tuple[int | None, str]:
    """Peak bytes: the device allocator's on accelerators, the process RSS on CPU."""
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def run_config(size: int, shots: int, dtype: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build, compile and time one training step configuration (in this process)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from panet_jax.model import PANet, panet_loss
    from panet_jax.models.vgg import VGG16Encoder
    from panet_jax.optim import pytorch_sgd

    dev = jax.devices()[0]
    if not args.matmul_size:
        args.matmul_size = 2048 if dev.platform == "cpu" else 8192
    model = PANet(VGG16Encoder(width=args.width, dtype=getattr(jnp, dtype)))
    init = jax.jit(lambda rng: model.init_params(rng, (33, 33), args.ways, shots))
    params = init(jax.random.PRNGKey(0))["params"]  # image size does not change the params
    tx = pytorch_sgd(1e-3, momentum=0.9, weight_decay=5e-4)  # the official optimiser
    opt_state = tx.init(params)
    batch = jax.device_put(synthetic_batch(args.ways, shots, args.queries, args.batch, size), dev)

    def train_step(params, opt_state, batch):
        def loss_fn(p):
            loss, _ = panet_loss(model.apply({"params": p}, batch), batch)
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(train_step, donate_argnums=(0, 1))
    t0 = time.perf_counter()
    lowered = step.lower(params, opt_state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    xla_temp = None
    try:
        xla_temp = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:  # not every backend reports it
        pass
    flops = step_flops(compiled)
    matmul_rate = measured_matmul_rate(dtype, args.matmul_size)

    losses: list[float] = []
    cpu_times: list[float] = []

    def timed() -> float:
        nonlocal params, opt_state
        start, cpu_start = time.perf_counter(), time.process_time()
        params, opt_state, loss = compiled(params, opt_state, batch)
        jax.block_until_ready((params, opt_state, loss))
        elapsed = time.perf_counter() - start
        cpu_times.append(time.process_time() - cpu_start)
        losses.append(float(loss))
        return elapsed

    load_before = os.getloadavg()
    warm = [timed() for _ in range(args.warmup)]
    times = [timed() for _ in range(args.repeats)]
    load_after = os.getloadavg()
    peak, peak_kind = peak_memory(dev)
    return {
        "size": size,
        "shots": shots,
        "ways": args.ways,
        "queries": args.queries,
        "batch": args.batch,
        "dtype": dtype,
        "width": args.width,
        "device_kind": dev.device_kind,
        "trace_lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "warmup_s": warm,
        "step_s": times,
        "median_step_s": statistics.median(times),
        "min_step_s": min(times),
        # Process CPU time (all threads) of the timed steps: robust to other load on a CPU host.
        "cpu_step_s": cpu_times[args.warmup :],
        "median_cpu_step_s": statistics.median(cpu_times[args.warmup :]),
        "loadavg_1min_before_after": [load_before[0], load_after[0]],
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "xla_temp_bytes": xla_temp,
        "episodes_per_s": args.batch / statistics.median(times),
        "step_flops": flops,
        "achieved_flops_per_s": None if flops is None else flops / statistics.median(times),
        "matmul_flops_per_s": matmul_rate,
        # Model FLOPs utilisation against the device's *measured* dense matmul rate.
        "mfu": None if flops is None else flops / statistics.median(times) / matmul_rate,
        "final_loss": losses[-1],
        "loss_finite": bool(np.all(np.isfinite(losses))),
    }


def step_flops(compiled) -> float | None:
    """FLOPs of one compiled step from XLA's cost analysis (None if the backend has none)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops else None


def measured_matmul_rate(dtype: str, n: int, repeats: int = 5) -> float:
    """Median FLOP/s of an ``n x n`` matmul in ``dtype`` on the default device: the
    denominator of the MFU column (a measured, not a datasheet, peak)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), getattr(jnp, dtype))
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def run_isolated(size: int, shots: int, dtype: str, argv: list[str]) -> dict[str, Any]:
    """Run one configuration in a subprocess and parse its result line."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, f"--worker={size},{shots},{dtype}"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    return {"size": size, "shots": shots, "dtype": dtype, "error": f"exit status {proc.returncode}"}


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def markdown_table(results: list[dict[str, Any]], device: str) -> str:
    head = (
        "| device | image | N-way K-shot | dtype | trace+lower (s) | compile (s) | first step (s) "
        "| median step (s) | min (s) | steps timed | median CPU time (s) | load avg "
        "| peak memory | episodes/s | GFLOP/step | MFU |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for r in results:
        if "error" in r:
            rows.append(
                f"| {device} | {r['size']}x{r['size']} | {r['shots']}-shot | {r['dtype']} "
                f"| failed: {r['error']} | | | | | | | | | | | |"
            )
            continue
        first = f"{r['warmup_s'][0]:.2f}" if r["warmup_s"] else "-"
        kind = "RSS" if "RSS" in r["peak_memory_kind"] else "device"
        load = "/".join(f"{v:.1f}" for v in r["loadavg_1min_before_after"])
        gflop = "-" if r.get("step_flops") is None else f"{r['step_flops'] / 1e9:.0f}"
        mfu = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        rows.append(
            f"| {device} | {r['size']}x{r['size']} | {r['ways']}-way {r['shots']}-shot "
            f"| {r['dtype']} | {r['trace_lower_s']:.2f} | {r['compile_s']:.2f} | {first} "
            f"| **{r['median_step_s']:.2f}** | {r['min_step_s']:.2f} | {len(r['step_s'])} "
            f"| {r['median_cpu_step_s']:.2f} | {load} | {_gib(r['peak_memory_bytes'])} ({kind}) "
            f"| {r['episodes_per_s']:.3f} | {gflop} | {mfu} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        size, shots, dtype = args.worker.split(",")
        result = run_config(int(size), int(shots), dtype, args)
        result["device"] = device_info()
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return 0

    import jax  # versions only: the backend is initialised in the workers when isolating

    child_argv = [
        f"--ways={args.ways}",
        f"--queries={args.queries}",
        f"--batch={args.batch}",
        f"--width={args.width}",
        f"--repeats={args.repeats}",
        f"--warmup={args.warmup}",
        f"--matmul_size={args.matmul_size}",
    ]
    results = []
    for dtype in args.dtypes:
        for shots in args.shots:
            for size in args.sizes:
                print(f"[benchmark] size={size} shots={shots} dtype={dtype} ...", flush=True)
                if args.isolate:
                    r = run_isolated(size, shots, dtype, child_argv)
                else:
                    r = run_config(size, shots, dtype, args)
                    r["device"] = device_info()
                if "error" not in r:
                    print(
                        f"[benchmark]   median {r['median_step_s']:.3f} s over "
                        f"{len(r['step_s'])} steps, compile {r['compile_s']:.2f} s",
                        flush=True,
                    )
                results.append(r)
    devices = [r["device"] for r in results if "device" in r]
    device = devices[0] if devices else {}
    name = device.get("device_kind", "?")
    if device.get("platform") == "cpu":
        name = f"CPU ({device.get('host_cpus')} cores)"
    table = markdown_table(results, name)
    print(table)
    if args.out:
        import flax
        import optax

        report = {
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "args": {k: v for k, v in vars(args).items() if k != "worker"},
            "versions": {
                "jax": jax.__version__,
                "jaxlib": _jaxlib_version(),
                "flax": flax.__version__,
                "optax": optax.__version__,
                "python": platform.python_version(),
            },
            "device": device,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "results": results,
            "table": table,
        }
        out_dir = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(out_dir, exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, args.out)
        print(f"wrote {args.out}")
    return 0 if all("error" not in r for r in results) else 1


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
