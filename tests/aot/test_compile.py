"""Ahead-of-time TPU compilation (panet_jax.aot, experiments/compile_for.py) on a CPU machine.

The tiny model (configs/synthetic.py:runlocal: width 1/16, 33 px, 1 episode per chip) is
compiled for a single-host slice (v5e:2x2: train + eval) and a multi-host one (v5e:4x4, 4 hosts:
train as shard_map and as pmap): four TPU compiles, ~10 s each on 2 cores. Tests that need
libtpu skip without it (``pip install -e ".[tpu]"``); the rest run everywhere.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import runpy
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from paths import REPO as ROOT

from panet_jax import aot
from panet_jax.aot import compile as aot_compile
from panet_jax.train import state as train_state

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
# CI sets this where it installed libtpu: the compiling tests then fail instead of skipping.
REQUIRED = os.environ.get("PANET_REQUIRE_LIBTPU") == "1"
needs_libtpu = pytest.mark.skipif(
    not (HAS_LIBTPU or REQUIRED), reason='libtpu is not installed (pip install -e ".[tpu]")'
)


def tiny_config():
    """configs/synthetic.py:runlocal: width 1/16, 33 px, 1-way 1-shot, 1 episode per chip."""
    return runpy.run_path(os.path.join(ROOT, "configs", "synthetic.py"))["get_config"]("runlocal")


@pytest.fixture(scope="module")
def single_host():
    """v5e:2x2 (4 chips, 1 host): the shard_map train step and the eval step."""
    cfg = tiny_config()
    return cfg, aot.compile_for_topology(cfg, "v5e:2x2", impls=("shard_map",))


@pytest.fixture(scope="module")
def multi_host():
    """v5e:4x4 (16 chips on 4 hosts): the train step as shard_map and as literal pmap."""
    cfg = tiny_config()
    return aot.compile_for_topology(cfg, "v5e:4x4", steps=("train",))


@needs_libtpu
def test_single_host_train_and_eval_reports(single_host):
    _, (train, ev) = single_host
    assert (train.step, train.impl, ev.step, ev.impl) == ("train", "shard_map", "eval", "shard_map")
    for r in (train, ev):
        assert r.status == "compiled" and r.chip_kind == "TPU v5 lite", r
        assert (r.chips, r.hosts, r.episodes_per_step) == (4, 1, 4)
        assert r.fits and r.hbm_bytes == aot.TPU_CHIPS["v5e"].hbm_usable_bytes
        assert r.peak_bytes == (
            r.argument_bytes + r.output_bytes - r.alias_bytes + r.temp_bytes
            + r.generated_code_bytes
        )  # fmt: skip
        assert r.flops_total == pytest.approx(4 * r.flops)
        assert r.compute_s == pytest.approx(r.flops / 197e12)  # float32: one bf16 pass
        assert r.memory_s == pytest.approx(r.bytes_accessed / 819e9)
        assert r.roofline_s == max(r.compute_s, r.memory_s) > 0
        assert r.compile_s > 0 and r.lower_s > 0
    # The state is donated: the new state is written over it, so the outputs alias the
    # arguments (at least the TPU-tiled state, >= its unpadded bytes); eval donates nothing.
    assert train.alias_bytes >= train.state_bytes > 0
    assert train.resident_bytes == train.peak_bytes + train.state_bytes
    assert ev.alias_bytes == 0 and ev.state_bytes is None
    # A forward pass (eval) is about a third of forward + backward (train) per episode.
    assert 0.2 < ev.flops / train.flops < 0.5
    table = aot.markdown_table([train, ev])
    assert table.count("\n") == 3 and "v5e:2x2" in table and "| 4 (1) |" in table
    assert json.loads(json.dumps(train.to_dict()))["fits"] is True


@needs_libtpu
def test_multi_host_shard_map_and_pmap(multi_host):
    """Both forms compile for all 16 chips of a 4-host slice (one SPMD program for the global
    devices; every host would feed its own rows) and cost the same per chip."""
    sm, pm = multi_host
    assert (sm.impl, pm.impl) == ("shard_map", "pmap")
    for r in (sm, pm):
        assert r.status == "compiled", r.note
        assert (r.chips, r.hosts, r.episodes_per_step) == (16, 4, 16)
    assert pm.flops == pytest.approx(sm.flops, rel=0.01)
    assert pm.argument_bytes == sm.argument_bytes


@needs_libtpu
def test_tpu_flops_agree_with_cpu_and_the_conv_count(single_host):
    """XLA's FLOPs of the same train step: TPU per chip x chips vs one CPU device on the whole
    global batch (4 episodes), and both against the exact conv count of the encoder.

    :func:`aot.vgg_conv_flops` counts a conv's multiply-adds on real pixels only (XLA's CPU
    count of a padded conv, test below). Both compiled steps count more: the TPU's counts the
    multiply-adds its conv kernels execute, padding taps and tile padding included (1.0x to
    1.6x per conv of the encoder's shapes); on CPU the kernel gradients are convolutions over
    explicitly zero-padded, batch-stacked images (``panet_jax.models.convolution``), whose
    padding taps XLA counts too (most taps of the 5 px, dilation-2 layers at this size). The
    step is ~75% convs here: measured TPU 1.25x, CPU 1.34x the conv count, TPU/CPU 0.93. A
    wrong batch split (4x), a missing backward pass (~1/3) or a dropped encoder call would fall
    far outside these bands.
    """
    cfg, (train, _) = single_host
    state = train_state.abstract_train_state(cfg)
    batch = aot.abstract_batch(cfg, (train.episodes_per_step,))
    step = jax.jit(aot_compile.make_train_step(cfg, axis_name=None))  # the step aot compiles
    cpu = step.lower(state, batch).compile().cost_analysis()["flops"]
    conv = train.conv_flops * train.chips  # exact conv FLOPs of the global batch
    assert conv == 4 * 2 * aot.vgg_conv_flops((33, 33), 1 / 16, train=True)
    for total in (cpu, train.flops_total):
        assert 1.0 < total / conv < 1.6, (total, conv)  # convs dominate; padding taps counted
    assert 0.8 <= train.flops_total / cpu <= 1.25, (train.flops_total, cpu)


@pytest.mark.parametrize(
    ("size", "c_in", "c_out", "dilation"),
    [(33, 3, 4, 1), (17, 8, 8, 1), (5, 32, 32, 2), (53, 64, 32, 2), (417, 3, 64, 1)],
)
def test_conv_flop_formula_is_xlas_count(size, c_in, c_out, dilation):
    """:func:`aot.conv_flops` (taps on real pixels, as the encoder pads: padding = dilation)
    equals XLA's CPU count exactly; the encoder total is the sum over its 13 layers."""
    x = jax.ShapeDtypeStruct((2, size, size + 1, c_in), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, c_in, c_out), jnp.float32)
    pad = ((dilation, dilation), (dilation, dilation))

    def conv(x, w):
        dn = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), pad, rhs_dilation=(dilation,) * 2, dimension_numbers=dn
        )

    flops = jax.jit(conv).lower(x, w).compile().cost_analysis()["flops"]
    assert flops == 2 * aot.conv_flops(size, size + 1, c_in, c_out, dilation)


def test_vgg_conv_flops_full_size():
    """417 px: 134.8 GFLOP forward per image (the CPU benchmark's 810 GFLOP train step of 2
    images is 2 x (3 F - F(conv1_1)) = 807.5 plus the rest)."""
    fwd = aot.vgg_conv_flops((417, 417), 1.0, train=False)
    train = aot.vgg_conv_flops((417, 417), 1.0, train=True)
    first = aot.conv_flops(417, 417, 3, 64)
    assert train == 3 * fwd - first
    assert 134.7e9 < fwd < 134.9e9 and 807e9 < 2 * train < 808e9


@needs_libtpu
def test_config_that_cannot_fit_is_refused_naming_the_knobs():
    """2049 px episodes, 128 per chip: the batch alone is ~19 GB per chip, more than a v5e's
    15.75 GiB; refused before compiling, naming what to turn."""
    cfg = tiny_config()
    cfg.data.image_size = (2049, 2049)
    cfg.train.per_device_batch = 128
    with pytest.raises(aot.HBMExceededError) as info:
        aot.compile_for_topology(cfg, "v5e:2x2", steps=("train",), impls=("shard_map",))
    e = info.value
    assert e.needed_bytes > e.available_bytes == aot.TPU_CHIPS["v5e"].hbm_usable_bytes
    msg = str(e)
    for knob in (
        "config.train.per_device_batch (now 128)",
        "config.data.image_size (now (2049, 2049))",
        "config.model.dtype='bfloat16'",
        "config.data.n_shots (now 1)",
    ):
        assert knob in msg, msg
    assert "v5e:2x2" in msg and "% over" in msg


@needs_libtpu
def test_compiled_step_over_hbm_is_refused(single_host):
    """The post-compile check: the compiler's allocation (plus the trainer's checkpoint copy
    of the state) against the chip's HBM."""
    cfg, (train, ev) = single_host
    aot.check_fits(train, cfg)  # fits: no error
    tight = dataclasses.replace(train, hbm_bytes=train.resident_bytes - 1)
    with pytest.raises(aot.HBMExceededError, match=r"config\.train\.per_device_batch") as info:
        aot.check_fits(tight, cfg)
    assert "checkpoint copy of the state" in str(info.value)
    assert "config.model.frozen (now nothing frozen)" in str(info.value)
    tight_eval = dataclasses.replace(ev, hbm_bytes=ev.resident_bytes - 1)
    with pytest.raises(aot.HBMExceededError, match=r"config\.eval\.per_device_batch") as info:
        aot.check_fits(tight_eval, cfg)
    assert "config.model.frozen" not in str(info.value)  # evaluation keeps no optimiser state


def test_compiler_out_of_memory_message_is_parsed():
    msg = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (19.94G) exceeds available HBM (15.75G)."
    )
    assert aot_compile._oom_bytes(msg) == int(19.94 * 2**30)
    assert aot_compile._oom_bytes("RESOURCE_EXHAUSTED: something else") is None


def test_missing_libtpu_is_explained(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a)
    )
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    with pytest.raises(aot.TPUUnavailableError, match=r'pip install -e "\.\[tpu\]"'):
        aot.tpu_devices("v5e:2x2")


@pytest.mark.parametrize("name", ["v9x:2x2", "v5e", "v5e:2x2x2", "v4:2x2", "v5p:0x2x2"])
def test_bad_topology_names(name):
    with pytest.raises(aot.TopologyError, match="v5e:4x4"):
        aot.parse_topology(name)


def test_topology_names_and_roofline_assumptions():
    chip, dims = aot.parse_topology("v5litepod:4x8")
    assert chip.generation == "v5e" and dims == (4, 8)
    assert aot.parse_topology("v5p:2x2x4")[0].chip_config == "megacore"
    assert aot.matmul_passes("bfloat16") == 1 and aot.matmul_passes("float32") == 1
    with jax.default_matmul_precision("highest"):
        assert aot.matmul_passes("float32") == 6
    assert "cloud.google.com/tpu/docs/v4" in aot.chip_table()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "compile_for.py"), *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip


def test_cli_expected_error_is_one_line_without_traceback():
    proc = _cli("--config=configs/synthetic.py:runlocal", "--topology=v9x:2x2")
    assert proc.returncode == 2  # a flag error (panet_jax.cli.FlagError), before any compile
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("compile_for.py: error: --topology: topology 'v9x:2x2'"), lines
    assert len([line for line in lines if line.startswith("compile_for.py:")]) == 1


@needs_libtpu
def test_cli_eval_step_table_and_json(tmp_path):
    out = tmp_path / "sub" / "aot.json"
    proc = _cli(
        "--config=configs/synthetic.py:runlocal", "--topology=v5e:2x2", "--steps=eval",
        "--config.eval.per_device_batch=2", f"--json={out}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| v5e:2x2 | 4 (1) | eval | shard_map |" in proc.stdout
    data = json.loads(out.read_text())
    (report,) = data["reports"]
    assert report["episodes_per_step"] == 8 and report["fits"] is True
    assert data["versions"]["libtpu"] and data["chips"]["v5e"]["peak_bf16_flops"] == 197e12
    assert [p.name for p in out.parent.iterdir()] == ["aot.json"]  # no temp file left
