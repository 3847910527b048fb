"""Helpers of the training tests, importable in-process and runnable as a subprocess worker.

Multi-device checks need ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX is
imported, so they run this file in a fresh interpreter::

    python tests/train_helpers.py <command> [args...]      (env from :func:`subprocess_env`)

Commands print one JSON line (prefixed ``RESULT``) and exit 0 when their check passed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Any

from paths import REPO

TRAIN = str(REPO / "experiments" / "train.py")
RUNLOCAL = f"{REPO / 'configs' / 'synthetic.py'}:runlocal"


# --------------------------------------------------------------------------- subprocesses


def subprocess_env(devices: int = 1, **extra: str) -> dict[str, str]:
    """Environment of a CPU child with ``devices`` host devices and fast, unoptimised XLA
    compiles (as ``tests/conftest.py`` sets in-process)."""
    env = dict(os.environ)
    # Keep the caller's XLA flags (e.g. --xla_cpu_max_isa for the second-ISA CI pass).
    keep = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env.update(
        XLA_FLAGS=" ".join([*keep, f"--xla_force_host_platform_device_count={devices}"]),
        JAX_PLATFORMS="cpu",
        JAX_DISABLE_MOST_OPTIMIZATIONS="true",
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
    )
    env.update(extra)
    return env


def run_train(
    workdir: str | os.PathLike,
    *overrides: str,
    devices: int = 1,
    config: str = RUNLOCAL,
    timeout: float = 240,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """``python experiments/train.py --config=<config> --workdir=<workdir> <overrides>``."""
    cmd = [sys.executable, TRAIN, f"--config={config}", f"--workdir={workdir}", *overrides]
    proc = subprocess.run(
        cmd, env=subprocess_env(devices), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def run_worker(
    command: str,
    *args: str,
    devices: int = 1,
    timeout: float = 240,
) -> dict[str, Any]:
    """Run ``python tests/train_helpers.py command args`` and return its RESULT JSON."""
    cmd = [sys.executable, __file__, command, *args]
    proc = subprocess.run(
        cmd, env=subprocess_env(devices), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return parse_result(proc.stdout)


def parse_result(stdout: str) -> dict[str, Any]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise AssertionError(f"no RESULT line in:\n{stdout[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- in-process


def tiny_config(data_dir: str = "", **overrides: Any):
    """The ``runlocal`` synthetic config (1/16 width, 33 px, tiny builder), plus overrides
    given as ``section__key=value``."""
    sys.path.insert(0, str(REPO))
    from configs import synthetic

    c = synthetic.get_config("runlocal")
    c.data.data_dir = str(data_dir)
    for key, value in overrides.items():
        section, field = key.split("__")
        c[section][field] = value
    return c


def random_batch(seed: int, batch: int, n_ways: int = 1, n_shots: int = 1, size: int = 33):
    """A batch of random but learnable episodes (spec.py format): the query label is the
    sign of the first image channel, the support mask likewise."""
    import numpy as np

    from panet_jax.data import spec

    rng = np.random.default_rng(seed)
    e = spec.zeros_episode(n_ways, n_shots, 1, size, size, batch=(batch,))
    e["support_images"] = rng.normal(size=e["support_images"].shape).astype(np.float32)
    e["query_images"] = rng.normal(size=e["query_images"].shape).astype(np.float32)
    fg = (e["support_images"][..., 0] > 0.3).astype(np.float32)
    e["support_fg"], e["support_bg"] = fg, 1.0 - fg
    e["query_labels"] = (e["query_images"][..., 0] > 0.3).astype(np.int32)
    e["class_ids"][:] = np.arange(1, n_ways + 1, dtype=np.int32)
    return e


def params_npz(path: str | os.PathLike, params: Any) -> None:
    """Save a params tree as flat ``a/b/c`` entries (from this process's first shard)."""
    import jax
    import numpy as np

    flat = {
        "/".join(str(getattr(k, "key", k)) for k in p): np.asarray(x.addressable_shards[0].data)
        if isinstance(x, jax.Array)
        else np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    np.savez(path, **flat)


def load_npz(path: str | os.PathLike) -> dict[str, Any]:
    import numpy as np

    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def flat_params(params: Any) -> dict[str, Any]:
    import jax
    import numpy as np

    return {
        "/".join(str(getattr(k, "key", k)) for k in p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }


# --------------------------------------------------------------------------- worker commands


def _cmd_parallel_check(
    per_device_batch: str = "1", steps: str = "2", dtype: str = "float32"
) -> dict[str, Any]:
    """One config, the same global batches: single-device step vs shard_map vs pmap.

    ``dtype='float64'`` runs everything in 64-bit (exactness of the formulations). Reported
    per implementation: the normwise relative difference of the params after ``steps`` steps
    (max over leaves of ``max |a - r| / max |r|``) and of every step's metrics."""
    import jax
    import numpy as np

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    from panet_jax.runtime import parallel
    from panet_jax.train import state as ts
    from panet_jax.train import steps as steps_lib

    c = tiny_config(train__per_device_batch=int(per_device_batch))
    c.model.dtype = dtype
    mesh = parallel.make_mesh()
    n = jax.device_count()
    batches = [random_batch(s, n * int(per_device_batch)) for s in range(int(steps))]
    s0 = ts.create_train_state(c, jax.random.key(0))

    single = jax.jit(steps_lib.make_train_step(c, axis_name=None))
    ref, ref_metrics = s0, []
    for b in batches:
        ref, m = single(ref, b)
        ref_metrics.append({k: float(v) for k, v in m.items()})
    out: dict[str, Any] = {
        "devices": n,
        "param_dtype": str(ref.params["encoder"]["conv1_1"]["kernel"].dtype),
        "metrics": ref_metrics,
    }
    for impl in ("shard_map", "pmap"):
        c.parallel.impl = impl
        step = parallel.make_parallel_step(steps_lib.make_train_step(c), impl, mesh)
        state, metrics = parallel.replicate(s0, mesh), []
        for b in batches:
            state, m = step(state, b)
            metrics.append({k: float(v) for k, v in m.items()})
        a, r = flat_params(state.params), flat_params(ref.params)
        out[impl] = {
            "param_rel_diff": max(
                float(np.max(np.abs(a[k] - r[k])) / np.max(np.abs(r[k]))) for k in r
            ),
            "metric_rel_diff": [
                max(abs(x[k] - y[k]) / max(abs(y[k]), 1e-30) for k in x)
                for x, y in zip(metrics, ref_metrics, strict=True)
            ],
            "step": int(state.step),
            "sharding_devices": len(
                state.params["encoder"]["conv1_1"]["kernel"].sharding.device_set
            ),
        }
    return out


def _cmd_save_state(ckpt_dir: str, npz: str) -> dict[str, Any]:
    """Init a tiny state on all devices, save it, and dump its params."""
    import jax

    from panet_jax.runtime import parallel
    from panet_jax.train import checkpointing
    from panet_jax.train import state as ts

    c = tiny_config()
    state = parallel.replicate(ts.create_train_state(c, jax.random.key(7)), parallel.make_mesh())
    state = state.replace(step=state.step + 3)
    with checkpointing.Checkpointer(ckpt_dir) as ckpt:
        ckpt.save(state, c)
        ckpt.wait()
    params_npz(npz, state.params)
    return {"devices": jax.device_count(), "step": int(state.step)}


def _cmd_restore_check(path: str, npz: str) -> dict[str, Any]:
    """Restore ``path`` onto all devices; compare with the dumped params bit for bit."""
    import jax
    import numpy as np

    from panet_jax.inference import loading

    variables = loading.load_variables(path)
    got, want = flat_params(variables["params"]), load_npz(npz)
    leaf = variables["params"]["encoder"]["conv1_1"]["kernel"]
    return {
        "devices": jax.device_count(),
        "equal": sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want),
        "sharding_devices": len(leaf.sharding.device_set),
    }


def _cmd_dist_train(
    workdir: str,
    data_dir: str,
    port: str,
    process_id: str,
    out: str,
    steps: str = "3",
    impl: str = "shard_map",
) -> dict[str, Any]:
    """One of two ``jax.distributed`` processes training together; dumps its local params."""
    import jax

    from panet_jax.train import trainer

    c = tiny_config(data_dir, train__steps=int(steps), train__image_every=0)
    c.parallel.distributed = True
    c.parallel.coordinator_address = f"127.0.0.1:{port}"
    c.parallel.num_processes = 2
    c.parallel.process_id = int(process_id)
    c.parallel.impl = impl
    state, result = trainer.train(c, workdir)
    params_npz(out, state.params)
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": jax.device_count(),
        "step": int(state.step),
        "loss": result["loss"],
    }


COMMANDS = {
    "parallel-check": _cmd_parallel_check,
    "save-state": _cmd_save_state,
    "restore-check": _cmd_restore_check,
    "dist-train": _cmd_dist_train,
}

if __name__ == "__main__":
    import jax

    jax.config.update("jax_disable_most_optimizations", True)
    result = COMMANDS[sys.argv[1]](*sys.argv[2:])
    print("RESULT " + json.dumps(result), flush=True)
