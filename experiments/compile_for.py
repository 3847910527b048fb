r"""Compile the real train / eval steps for a TPU slice or a GPU machine on this machine (no
TPU or GPU needed).

    python experiments/compile_for.py --config=configs/pascal5i.py:fold=0,shot=1 \
        --topology=v5e:4x4 --json=aot/v5e_4x4.json
    python experiments/compile_for.py --config=configs/pascal5i.py:shot=5 --topology=v4:2x2x2 \
        --config.model.dtype=bfloat16 --steps=train --impls=shard_map
    python experiments/compile_for.py --config=configs/pascal5i.py:shot=1 \
        --topology=h100:1x8,a100-40g:1x8,h100:2x8 --json=aot/gpus.json

TPU slices need libtpu (``pip install -e ".[tpu]"``), GPU machines (``<gpu>:<hosts>x<gpus per
host>``: h100, h200, a100-80g, a100-40g, l4) JAX's CUDA plugin (``pip install -e ".[cuda]"``).
For each step (``--steps``: train, eval) and form (``--impls``: shard_map, pmap) it prints one
line as it compiles, then a Markdown table: per-device memory from XLA's TPU / GPU compiler
against the device's usable memory, FLOPs and bytes of one step, a roofline from the device's
published peaks, the convolutions handed to cuDNN and the collectives, and the compile time.
``--json`` also writes everything as JSON (atomically). A configuration that cannot fit, an
unknown topology or a missing libtpu / CUDA plugin is reported in a line or two and the exit
status is 1. Any config key can be overridden (``--config.train.per_device_batch=2``); unknown
keys are an error.
"""

from __future__ import annotations

import os

# Compile-only: never touch a local accelerator (unset or empty: the CPU; this also lets JAX's
# CUDA plugin load without a GPU). Quiet TensorFlow if something imports it.
if not os.environ.get("JAX_PLATFORMS"):
    os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib
import dataclasses
import json
import sys
import tempfile
from collections.abc import Iterator

from absl import flags
from ml_collections import config_flags

from panet_jax import cli, errors, files

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/pascal5i.py:fold=0,shot=1.", lock_config=True
)
flags.DEFINE_list(
    "topology", None, "TPU slice(s) or GPU machine(s), e.g. v5e:4x4,v4:2x2x4,h100:1x8,h100:2x8."
)
flags.DEFINE_list("steps", ["train", "eval"], "Steps to compile: train, eval.")
flags.DEFINE_list("impls", ["shard_map", "pmap"], "Forms of the train step: shard_map, pmap.")
flags.DEFINE_integer("num_slices", 1, "Slices of the topology in the job (multi-slice).")
flags.DEFINE_string("json", None, "Write the reports as JSON here.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --json file.")
flags.mark_flags_as_required(["config", "topology"])


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (libtpu prints TPU-VM metadata warnings when it loads on a
    machine without a TPU); Python exceptions still carry their messages."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def run(config, topologies: list[str], steps: list[str], impls: list[str], num_slices: int):
    """Compile every (topology, step, impl); returns the reports (raises AOT errors)."""
    from panet_jax import aot

    def progress(r: aot.StepReport) -> None:
        if r.status != "compiled":
            line = f"{r.status}: {r.note}"
        else:
            gflop = "-" if r.flops is None else f"{r.flops / 1e9:.1f}"
            line = (
                f"peak {r.peak_bytes / aot.GiB:.2f} GiB/chip of {r.hbm_bytes / aot.GiB:.2f}, "
                f"{gflop} GFLOP/chip, compiled in {r.compile_s:.1f} s"
            )
            if r.cudnn_convolutions is not None:
                line += f", {r.cudnn_convolutions} cuDNN convolutions"
        print(f"[compile_for] {r.topology} {r.step} {r.impl}: {line}", flush=True)

    reports = []
    for topology in topologies:
        with quiet_native_stderr():
            aot.target_devices(topology, num_slices=num_slices)  # loads libtpu once, quietly
        reports += aot.compile_for_topology(
            config, topology, steps=steps, impls=impls, num_slices=num_slices, on_report=progress
        )
    return reports


def check_flags() -> None:
    """Every flag checked before anything compiles (:class:`panet_jax.cli.FlagError`)."""
    from panet_jax import aot

    cli.require_choices(
        "--topology", FLAGS.topology, None, "e.g. v5e:2x2,v5e:4x4,v4:2x2x4,h100:1x8,h100:2x8"
    )
    for topology in FLAGS.topology:
        try:
            aot.target_spec(topology)
        except aot.TopologyError as e:
            raise cli.FlagError(f"--topology: {e}") from None
    cli.require_choices("--steps", FLAGS.steps, aot.STEPS)
    cli.require_choices("--impls", FLAGS.impls, aot.IMPLS)
    if FLAGS.num_slices < 1:
        raise cli.FlagError(f"--num_slices={FLAGS.num_slices}: expected 1 or more")
    if FLAGS.json:
        files.check_new_output(FLAGS.json, FLAGS.overwrite, "--json")


def main(argv: list[str]) -> None:
    from panet_jax import aot

    check_flags()
    config = FLAGS.config
    reports = run(config, FLAGS.topology, FLAGS.steps, FLAGS.impls, FLAGS.num_slices)
    table = aot.markdown_table(reports)
    targets = {r.generation: aot.target_spec(r.topology) for r in reports}
    print()
    print(table)
    for name, spec in sorted(targets.items()):
        print(f"\n{name}: {_roofline_note(spec)}")
    if FLAGS.json:
        payload = _payload(config, reports, targets, table)
        files.write_json(FLAGS.json, payload, overwrite=FLAGS.overwrite)
        print(f"wrote {FLAGS.json}")
    failed = [f"{r.topology} {r.step} step: {r.note}" for r in reports if r.status == "failed"]
    if failed:
        raise errors.CommandFailed("; ".join(failed))


def _roofline_note(spec) -> str:
    """Where the roofline's figures come from (one paragraph)."""
    from panet_jax import aot

    tail = "Gradient all-reduce and input feeding are not in the roofline."
    if isinstance(spec, aot.gpus.GpuSpec):
        return (
            f"roofline at {spec.peak_bf16_flops / 1e12:.1f} TFLOP/s bf16, "
            f"{spec.peak_tf32_flops / 1e12:.1f} TF32 (float32 convs at default precision; "
            f"{spec.peak_f32_flops / 1e12:.1f} fp32 at 'highest') and "
            f"{spec.hbm_bandwidth / 1e9:.0f} GB/s ({spec.source}); usable memory: the "
            f"{100 * aot.gpus.memory_fraction():.0f}% of the device's that JAX allocates from "
            f"({aot.gpus.MEM_FRACTION_ENV}); device from {spec.xla_spec or 'the datasheet'}. "
            + tail
        )
    return (
        f"roofline at {spec.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16 (float32 convs at "
        f"default precision are one bf16 pass) and {spec.hbm_bandwidth / 1e9:.0f} GB/s HBM "
        f"({spec.source}); usable HBM as libtpu's compiler reports it. " + tail
    )


def _payload(config, reports, targets, table: str) -> dict:
    """Everything for --json: provenance, config, the targets' figures, reports, table."""
    from panet_jax import aot
    from panet_jax.runtime.provenance import provenance

    def spec_dict(spec) -> dict:
        d = dataclasses.asdict(spec)
        if isinstance(spec, aot.gpus.GpuSpec):
            d["usable_memory_bytes"] = spec.usable_memory_bytes()
            d["target_config"] = spec.target_config()
        return d

    return {
        **provenance(("libtpu", "jax-cuda12-plugin")),
        "config": json.loads(config.to_json()),
        "chips": {name: spec_dict(spec) for name, spec in targets.items()},
        "reports": [r.to_dict() for r in reports],
        "table": table,
    }


if __name__ == "__main__":
    cli.run(main)
