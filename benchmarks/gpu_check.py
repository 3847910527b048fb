r"""One-shot GPU check: numerics tests, train-step speed and MFU, input pipeline, 300 steps, and
the GPU pre-flight's memory against the device's.

    python benchmarks/gpu_check.py --out=gpu_check.json
    python benchmarks/gpu_check.py --allow_cpu --out=/tmp/gpu_check_smoke.json   # smoke run

For whoever holds a GPU (one H100 / H200: an estimated 5-7 minutes). Five parts, run in
subprocesses (the benchmark's: one per configuration), then one table and one JSON:

(a) ``tests``: the numerics-sensitive tests (``tests/test_ops.py``, ``tests/test_model.py``,
    ``tests/testing/test_torch_reference.py``, and the max-pool / convolution gradients of
    ``tests/models/test_pooling.py``, ``tests/models/test_convolution.py``) with JAX on the
    GPU. Their float32 tolerances are derived from float32 rounding, so they run with
    ``JAX_DEFAULT_MATMUL_PRECISION=highest`` (no TF32 convs, which round to 10 mantissa bits).
(b) ``train_step``: ``benchmarks/benchmark.py`` at 417x417, 1- and 5-shot, float32 and
    bfloat16, full VGG-16: median step time, episodes/s and MFU = XLA's FLOPs / step time / the
    rate of a dense matmul of the same dtype measured in the same process (for float32 at JAX's
    default precision that matmul, like the convs, may use TF32).
(c) ``pipeline``: ``benchmarks/benchmark_data.py`` on the synthetic set at 417x417 (generated
    into ``--data_dir`` if missing): episodes/s per shot against what the fastest train step
    of (b) consumes.
(d) ``training``: ``experiments/train.py`` on ``configs/synthetic.py`` for 300 steps without the
    evaluation; the loss of the first and the last log window (25 steps each) must fall.
(e) ``preflight``: the paper's train step (417x417, 1-shot, float32, one GPU) compiled by the
    device itself and by ``experiments/compile_for.py`` for this GPU's catalogue entry
    (``panet_jax.aot.gpus``, ``--preflight_target`` if the device name is not in it) on the
    CPU: their ``memory_analysis()`` side by side. Arguments, outputs and donation must agree
    exactly, the temporaries within 25% (the device picks its cuDNN algorithms, and their
    workspaces, by autotuning; the pre-flight cannot).

Exits 2 with one line when JAX's backend is not a GPU, unless ``--allow_cpu`` (then every part
runs at tiny sizes: a smoke test of this script). Exit status 1 if a part failed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import re
import runpy
import subprocess
import sys
import tempfile
import time
import types
from typing import Any

from absl import flags

from panet_jax import cli, errors, files

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXPERIMENTS = os.path.join(ROOT, "experiments")  # the user commands (train, compile_for)

NUMERICS_TESTS = (
    "tests/test_ops.py", "tests/test_model.py", "tests/testing/test_torch_reference.py",
    "tests/models/test_pooling.py", "tests/models/test_convolution.py",
)  # fmt: skip
# Full-size settings (GPU) and tiny ones (--allow_cpu smoke run on a CPU).
FULL = {
    "pytest": list(NUMERICS_TESTS),
    "bench": ["--sizes=417", "--shots=1,5", "--dtypes=float32,bfloat16", "--repeats=3",
              "--kinds=train", "--variants=default"],
    "data": ["--image_size=417", "--synthetic_config=default", "--warmup=5", "--windows=3",
             "--window_batches=20"],
    "train": ["--config=configs/synthetic.py", "--config.train.steps=300",
              "--config.train.log_every=25"],
    "preflight": ("configs/pascal5i.py", "shot=1"),
}  # fmt: skip
SMOKE = {
    "pytest": ["tests/test_ops.py", "-k", "bilinear or masked_average"],
    "bench": ["--sizes=33", "--shots=1", "--dtypes=float32,bfloat16", "--repeats=2",
              "--warmup=1", "--width=0.0625", "--matmul_size=256", "--kinds=train",
              "--variants=default"],
    "data": ["--image_size=65", "--synthetic_config=tiny", "--warmup=2", "--windows=2",
             "--window_batches=5"],
    "train": ["--config=configs/synthetic.py:runlocal", "--config.train.steps=20",
              "--config.train.log_every=5"],
    "preflight": ("configs/synthetic.py", "runlocal"),
}  # fmt: skip
FLAGS = flags.FLAGS
flags.DEFINE_string("out", "gpu_check.json", "JSON report path.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --out file.")
flags.DEFINE_string("workdir", "", "Scratch folder (default: a temporary one).")
flags.DEFINE_string("data_dir", "", "TFDS data_dir for the synthetic set.")
flags.DEFINE_bool("allow_cpu", False, "Run on a CPU at tiny sizes (smoke test of this script).")
flags.DEFINE_list(
    "parts", ["tests", "train_step", "pipeline", "training", "preflight"], "Parts to run."
)
flags.DEFINE_string(
    "preflight_target", "", "GPU of panet_jax.aot.gpus to pre-flight (default: the device's)."
)
flags.DEFINE_integer("pytest_workers", 4, "pytest -n (0: serial).")
flags.DEFINE_integer("timeout", 300, "Seconds per part at most.")
PARTS = ("tests", "train_step", "pipeline", "training", "preflight")
MEMORY_FIELDS = ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "peak_bytes")

_PROGRESS = re.compile(r"step (\d+)/(\d+) \| loss ([0-9.]+)")
_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


def _run(cmd: list[str], env: dict[str, str], timeout: int) -> tuple[int, str, float]:
    """``(exit status, stdout + stderr, seconds)`` of a subprocess in the repository root."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=timeout,
        )  # fmt: skip
        return proc.returncode, proc.stdout, time.perf_counter() - t0
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out + f"\n[timed out after {timeout} s]", time.perf_counter() - t0


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def part_tests(sizes: dict, env: dict[str, str], args: Any) -> dict[str, Any]:
    """(a) pytest on the numerics tests, JAX on the device under test."""
    env = dict(env, JAX_DEFAULT_MATMUL_PRECISION="highest")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *sizes["pytest"]]
    if args.pytest_workers > 0 and importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", str(args.pytest_workers)]
    rc, out, secs = _run(cmd, env, args.timeout)
    summary = out.strip().splitlines()[-1] if out.strip() else ""
    counts = {k.rstrip("s"): int(n) for n, k in _PYTEST_COUNT.findall(summary)}
    ok = rc == 0 and counts.get("passed", 0) > 0
    return {
        "ok": ok, "exit_status": rc, "seconds": secs, "counts": counts, "summary": summary,
        "command": " ".join(cmd[1:]), "matmul_precision": "highest",
        **({} if ok else {"output_tail": _tail(out, 40)}),
    }  # fmt: skip


def part_train_step(sizes: dict, env: dict, args: Any) -> dict[str, Any]:
    """(b) benchmarks/benchmark.py (each configuration in its own subprocess)."""
    out = os.path.join(args.workdir, "train_step.json")
    cmd = [sys.executable, os.path.join(HERE, "benchmark.py"), *sizes["bench"], f"--out={out}"]
    t0 = time.perf_counter()
    rc, text, _ = _run(cmd, env, args.timeout)
    if not os.path.exists(out):
        return {"ok": False, "exit_status": rc, "seconds": time.perf_counter() - t0,
                "results": [], "output_tail": _tail(text, 40)}  # fmt: skip
    with open(out) as f:
        report = json.load(f)
    rows = [
        {k: r.get(k) for k in (
            "size", "shots", "dtype", "width", "median_step_s", "episodes_per_s", "mfu",
            "step_flops", "matmul_flops_per_s", "compile_s", "peak_memory_bytes", "final_loss",
            "loss_finite", "error",
        )}
        for r in report["results"]
    ]  # fmt: skip
    ok = rc == 0 and all(r.get("loss_finite") for r in rows)
    return {"ok": ok, "seconds": time.perf_counter() - t0, "device": report.get("device"),
            "results": rows}  # fmt: skip


def part_pipeline(sizes: dict, env: dict, args: Any, need: dict) -> dict:
    """(c) benchmarks/benchmark_data.py on the synthetic set; ``need``: episodes/s the
    fastest train step consumes, per shot."""
    out = os.path.join(args.workdir, "pipeline.json")
    cmd = [sys.executable, os.path.join(HERE, "benchmark_data.py"), f"--data_dir={args.data_dir}",
           "--shots=1,5", *sizes["data"], f"--out={out}"]  # fmt: skip
    rc, text, secs = _run(cmd, env, args.timeout)
    if rc != 0 or not os.path.exists(out):
        return {"ok": False, "exit_status": rc, "seconds": secs, "output_tail": _tail(text, 40)}
    with open(out) as f:
        rows = json.load(f)["results"]
    for r in rows:
        r["step_needs_episodes_per_s"] = need.get(r["shots"])
        if r["step_needs_episodes_per_s"]:
            r["headroom"] = r["episodes_per_s"] / r["step_needs_episodes_per_s"]
    return {"ok": True, "seconds": secs, "results": rows}


def part_training(sizes: dict, env: dict, args: Any) -> dict[str, Any]:
    """(d) experiments/train.py on the synthetic set, no evaluation; the loss must fall."""
    workdir = os.path.join(args.workdir, "train_synthetic")
    cmd = [sys.executable, os.path.join(EXPERIMENTS, "train.py"), f"--workdir={workdir}",
           *sizes["train"],
           "--config.train.eval_after=False", "--config.train.image_every=0",
           f"--config.data.data_dir={args.data_dir}"]  # fmt: skip
    rc, text, secs = _run(cmd, env, args.timeout)
    curve = [(int(s), float(loss)) for s, _, loss in _PROGRESS.findall(text)]
    ok = rc == 0 and len(curve) >= 2 and curve[-1][1] < curve[0][1]
    result = {
        "ok": ok, "exit_status": rc, "seconds": secs, "loss_curve": curve,
        "first_window_loss": curve[0][1] if curve else None,
        "last_window_loss": curve[-1][1] if curve else None, "steps": curve[-1][0] if curve else 0,
    }  # fmt: skip
    if not ok:
        result["output_tail"] = _tail(text, 40)
    return result


def part_preflight(sizes: dict, env: dict, args: Any, device_kind: str) -> dict[str, Any]:
    """(e) The train step's memory as the device compiles it and as the pre-flight does."""
    import jax

    from panet_jax import aot
    from panet_jax.aot import gpus

    smoke = jax.default_backend() != "gpu"  # a CPU smoke run pre-flights an H100
    name = args.preflight_target or ("h100" if smoke else "")
    spec = gpus.GPUS.get(name) or gpus.by_device_kind(device_kind)
    if spec is None:
        return {"ok": False, "note": f"no GPU of panet_jax.aot.gpus is a {device_kind!r}: "
                f"pass --preflight_target (one of {sorted(gpus.GPUS)})"}  # fmt: skip
    path, arg = sizes["preflight"]
    topology, out = f"{spec.name}:1x1", os.path.join(args.workdir, "preflight.json")
    cmd = [sys.executable, os.path.join(EXPERIMENTS, "compile_for.py"), f"--config={path}:{arg}",
           f"--topology={topology}", "--steps=train", "--impls=shard_map", f"--json={out}",
           "--overwrite"]  # fmt: skip
    rc, text, secs = _run(cmd, dict(env, JAX_PLATFORMS="cpu"), args.timeout)
    if rc != 0 or not os.path.exists(out):
        return {"ok": False, "exit_status": rc, "seconds": secs, "output_tail": _tail(text, 40)}
    with open(out) as f:
        pre = json.load(f)["reports"][0]
    config = runpy.run_path(os.path.join(ROOT, path))["get_config"](arg)
    device = aot.compile_step(
        config, topology, jax.devices()[:1], "train", "shard_map", check_hbm=False
    ).to_dict()
    rows = {k: {"device": device[k], "preflight": pre[k]} for k in MEMORY_FIELDS}
    rows["cudnn_convolutions"] = {
        "device": device["cudnn_convolutions"], "preflight": pre["cudnn_convolutions"]}  # fmt: skip
    exact = all(device[k] == pre[k] for k in ("argument_bytes", "output_bytes", "alias_bytes"))
    temp_ratio = device["temp_bytes"] / max(pre["temp_bytes"], 1)
    ok = exact and abs(temp_ratio - 1) <= 0.25
    return {"ok": ok or smoke, "target": topology, "seconds": secs,
            "temp_ratio": temp_ratio, "exact_buffers": exact, "memory": rows}  # fmt: skip


def summary_table(results: dict[str, Any], device: str) -> str:
    rows = [f"| part | check ({device}) | result | |", "|---|---|---|---|"]
    t = results.get("tests")
    if t:
        c = t["counts"]
        figures = ", ".join(f"{n} {k}" for k, n in c.items()) or t["summary"]
        rows.append(f"| (a) tests | numerics tests, precision highest | {figures} "
                    f"in {t['seconds']:.0f} s | {'ok' if t['ok'] else 'FAILED'} |")  # fmt: skip
    b = results.get("train_step")
    if b:
        for r in b["results"]:
            what = f"train step {r['size']}px {r['shots']}-shot {r['dtype']}"
            if r.get("error"):
                rows.append(f"| (b) train_step | {what} | {r['error']} | FAILED |")
                continue
            mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            rows.append(
                f"| (b) train_step | {what} | {1e3 * r['median_step_s']:.1f} ms, "
                f"{r['episodes_per_s']:.1f} episodes/s, MFU {mfu} "
                f"(matmul {r['matmul_flops_per_s'] / 1e12:.3g} TFLOP/s) "
                f"| {'ok' if r['loss_finite'] else 'FAILED'} |"
            )
    p = results.get("pipeline")
    if p:
        for r in p.get("results", []):
            need = r.get("step_needs_episodes_per_s")
            room = "" if not need else f", step needs {need:.1f} ({r['headroom']:.1f}x headroom)"
            rows.append(f"| (c) pipeline | synthetic 1-way {r['shots']}-shot | "
                        f"{r['episodes_per_s']:.1f} episodes/s{room} | ok |")  # fmt: skip
        if not p.get("results"):
            rows.append("| (c) pipeline | synthetic set | see output_tail | FAILED |")
    d = results.get("training")
    if d:
        first, last = d["first_window_loss"], d["last_window_loss"]
        figure = "no progress lines" if first is None else f"loss {first:.3f} -> {last:.3f}"
        rows.append(f"| (d) training | {d['steps']} synthetic steps | {figure} "
                    f"in {d['seconds']:.0f} s | {'ok' if d['ok'] else 'FAILED'} |")  # fmt: skip
    e = results.get("preflight")
    if e:
        rows.append(_preflight_row(e))
    return "\n".join(rows)


def _preflight_row(e: dict[str, Any]) -> str:
    """(e)'s line: the device's and the pre-flight's buffers (MiB)."""
    status = "ok" if e["ok"] else "FAILED"
    if "memory" not in e:
        return f"| (e) preflight | memory vs the pre-flight | {e.get('note', 'see output_tail')} " \
               f"| {status} |"  # fmt: skip
    mib = {k: f"{v['device'] / 2**20:.1f} / {v['preflight'] / 2**20:.1f}"
           for k, v in e["memory"].items() if k.endswith("_bytes")}  # fmt: skip
    figures = ", ".join(f"{k.removesuffix('_bytes')} {v}" for k, v in mib.items())
    return (f"| (e) preflight | train step memory, device / {e['target']} pre-flight, MiB "
            f"| {figures}; temp ratio {e['temp_ratio']:.2f} | {status} |")  # fmt: skip


def _settings(backend: str, stack: contextlib.ExitStack) -> tuple[Any, dict[str, str]]:
    """The flags as one namespace (a temporary workdir when none is given) and the parts'
    environment (the repository importable; CPU only for a smoke run)."""
    args = types.SimpleNamespace(
        workdir=FLAGS.workdir, data_dir=FLAGS.data_dir, timeout=FLAGS.timeout,
        pytest_workers=FLAGS.pytest_workers, preflight_target=FLAGS.preflight_target,
    )  # fmt: skip
    if not args.workdir:
        args.workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check."))
    args.data_dir = os.path.abspath(args.data_dir or os.path.join(args.workdir, "tfds"))
    path = [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    if backend != "gpu":  # smoke run: keep every subprocess (benchmark workers too) on CPU
        env["JAX_PLATFORMS"] = "cpu"
    return args, env


def run_parts(sizes: dict, parts: list[str], backend: str) -> dict[str, Any]:
    """Run the chosen parts in order; their results by name."""
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        args, env = _settings(backend, stack)
        if "tests" in parts:
            print("[gpu_check] (a) numerics tests ...", flush=True)
            results["tests"] = part_tests(sizes, env, args)
        need: dict[int, float] = {}
        if "train_step" in parts:
            print("[gpu_check] (b) train-step benchmark ...", flush=True)
            results["train_step"] = part_train_step(sizes, env, args)
            for r in results["train_step"]["results"]:
                if r.get("episodes_per_s"):
                    need[r["shots"]] = max(need.get(r["shots"], 0.0), r["episodes_per_s"])
        if "pipeline" in parts:
            print("[gpu_check] (c) input pipeline ...", flush=True)
            results["pipeline"] = part_pipeline(sizes, env, args, need)
        if "training" in parts:
            print("[gpu_check] (d) synthetic training ...", flush=True)
            results["training"] = part_training(sizes, env, args)
        if "preflight" in parts:
            import jax

            print("[gpu_check] (e) pre-flight memory vs the device's ...", flush=True)
            kind = jax.devices()[0].device_kind
            results["preflight"] = part_preflight(sizes, env, args, kind)
    return results


def _payload(results: dict[str, Any], table: str, seconds: float) -> dict[str, Any]:
    import jax

    from panet_jax.runtime.provenance import provenance

    return {
        **provenance(),
        "device": {
            "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "devices": jax.device_count(), "host": platform.platform(), "cpus": os.cpu_count(),
        },
        "smoke_run": jax.default_backend() != "gpu",
        "seconds": seconds, "results": results, "table": table,
    }  # fmt: skip


def main(argv: list[str]) -> None:
    # This process only looks at the device; the parts run in subprocesses that need its memory.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cli.require_choices("--parts", FLAGS.parts, tuple(PARTS))
    files.check_new_output(FLAGS.out, FLAGS.overwrite, "--out")
    import jax

    backend = jax.default_backend()
    if backend != "gpu" and not FLAGS.allow_cpu:
        raise cli.FlagError(
            f"JAX's backend is {backend!r}, not 'gpu' (install jax[cuda] and check "
            "nvidia-smi), or pass --allow_cpu for a smoke run"
        )
    t0 = time.perf_counter()
    results = run_parts(FULL if backend == "gpu" else SMOKE, list(FLAGS.parts), backend)
    total = time.perf_counter() - t0
    table = summary_table(results, jax.devices()[0].device_kind)
    print("\n" + table + f"\n\ntotal {total:.0f} s")
    files.write_json(FLAGS.out, _payload(results, table, total), overwrite=FLAGS.overwrite)
    print(f"wrote {FLAGS.out}")
    failed = [name for name, r in results.items() if not r.get("ok")]
    if failed:
        raise errors.CommandFailed(f"parts failed: {', '.join(failed)} (see the table above)")


if __name__ == "__main__":
    cli.run(main)
