"""End-to-end training on the synthetic set: the real entry point on 4 host devices, learning
on a fixed batch, bitwise resume after SIGTERM, two ``jax.distributed`` processes, and the
failure modes (bad configs, another run's workdir, divergence) that must keep checkpoints."""

import json
import math
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
import train_helpers as h
from tensorboard.backend.event_processing import event_accumulator

from panet_jax.data import builders, input_pipeline
from panet_jax.inference import loading
from panet_jax.runtime import parallel
from panet_jax.train import checkpointing, steps, trainer, workdir
from panet_jax.train import state as ts


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    builders.prepare("synthetic_fss", data_dir=d, config="tiny")
    return str(d)


def _final(stderr: str) -> dict:
    line = [ln for ln in stderr.splitlines() if "final: {" in ln][-1]
    return json.loads(line[line.index("{") :])


def test_entry_point_trains_on_4_devices(tmp_path, data_dir):
    wd = tmp_path / "wd"
    # The lr milestone falls inside the last log window (updates 2 and 3): the rate logged for
    # step 4 is the one its last update used, not the window mean 5.5e-3.
    proc = h.run_train(
        wd, f"--config.data.data_dir={data_dir}", "--config.optim.milestones=(3,)", devices=4
    )
    final = _final(proc.stderr)
    assert final["step"] == 4 and math.isfinite(final["loss"]), final
    assert re.search(
        r"step 2/4 \| loss [0-9.]+ \(seg [0-9.]+, par [0-9.]+\) \| lr 1\.0e-02 \| "
        r"[0-9.]+ ep/s \| ETA",
        proc.stderr,
    )
    assert re.search(r"step 4/4 \| .* \| lr 1\.0e-03 \| [0-9.]+ ep/s \| ETA", proc.stderr)
    assert "episodes_per_s=" not in proc.stderr  # one progress line per log step, no echo
    assert "devices 4 (4 local, 1 processes), 4 episodes/step" in proc.stderr
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["2", "4"]
    assert (wd / "config.json").is_file()
    (events,) = wd.glob("events.out.tfevents.*")
    acc = event_accumulator.EventAccumulator(str(events), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    assert {"loss", "loss_seg", "loss_par", "lr", "episodes_per_s", "train/episode"} <= tags, tags
    lr = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("lr")}
    np.testing.assert_allclose([lr[2], lr[4]], [1e-2, 1e-3], rtol=1e-6)
    assert loading.load_run_config(wd).data.n_shots == 1


def test_loss_decreases_on_a_fixed_batch(data_dir):
    c = h.tiny_config(data_dir, train__per_device_batch=2)
    with input_pipeline.train_batches(c, batch_size=2, start_step=0, num_steps=1,
                                      process_index=0, process_count=1) as batches:  # fmt: skip
        batch = next(batches)
    step = jax.jit(steps.make_train_step(c, axis_name=None))
    state = ts.create_train_state(c, jax.random.key(0))
    losses = []
    for _ in range(12):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert all(map(math.isfinite, losses))
    assert losses[-1] < 0.7 * losses[0], losses


def test_sigterm_then_resume_is_bitwise_identical(tmp_path, data_dir):
    """A real run SIGTERM'd mid-training checkpoints and exits 0; resuming it (here in-process,
    same compile settings) ends bit-identical to an uninterrupted run."""
    overrides = dict(
        train__steps=30, train__log_every=1, train__image_every=0, train__checkpoint_every=1000
    )
    cut = tmp_path / "cut"
    cmd = [
        sys.executable,
        h.TRAIN,
        f"--config={h.RUNLOCAL}",
        f"--workdir={cut}",
        f"--config.data.data_dir={data_dir}",
        *(f"--config.{k.replace('__', '.')}={v}" for k, v in overrides.items()),
    ]
    proc = subprocess.Popen(
        cmd, env=h.subprocess_env(1), stderr=subprocess.PIPE, text=True, cwd=h.REPO
    )
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "step 2/30" in line:
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=600) == 0, "".join(lines[-40:])
    stopped = [int(m.group(1)) for ln in lines if (m := re.search(r"stopping at step (\d+)", ln))]
    assert stopped and 2 <= stopped[0] < 30, "".join(lines[-40:])
    with checkpointing.Checkpointer(cut / "checkpoints", read_only=True) as ckpt:
        assert ckpt.all_steps() == [stopped[0]]

    resumed, result = trainer.train(h.tiny_config(data_dir, **overrides), str(cut))
    assert result["step"] == 30 and int(resumed.step) == 30
    straight, _ = trainer.train(h.tiny_config(data_dir, **overrides), str(tmp_path / "straight"))
    a, b = h.flat_params(straight.params), h.flat_params(resumed.params)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = h.flat_params(loading.load_variables(cut)["params"])
    assert all(np.array_equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(("impl", "local_devices"), [("shard_map", 1), ("pmap", 2)])
def test_two_processes_train_together(tmp_path, data_dir, impl, local_devices):
    """Two ``jax.distributed`` processes on localhost (gloo CPU collectives): same loss and
    bit-identical params on both, one joint checkpoint."""
    port, wd = str(h.free_port()), str(tmp_path / "wd")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                h.__file__,
                "dist-train",
                wd,
                data_dir,
                port,
                str(i),
                str(tmp_path / f"p{i}.npz"),
                "3",
                impl,
            ],
            env=h.subprocess_env(local_devices),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=h.REPO,
        )
        for i in range(2)
    ]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-5000:]
        outs.append(h.parse_result(out))
    assert [o["process_index"] for o in outs] == [0, 1]
    devices = 2 * local_devices
    assert all(o["process_count"] == 2 and o["devices"] == devices for o in outs)
    assert all(o["step"] == 3 for o in outs)
    assert all(math.isfinite(o["loss"]) for o in outs) and outs[0]["loss"] == outs[1]["loss"]
    p0, p1 = h.load_npz(tmp_path / "p0.npz"), h.load_npz(tmp_path / "p1.npz")
    assert all(np.array_equal(p0[k], p1[k]) for k in p0)
    with checkpointing.Checkpointer(tmp_path / "wd" / "checkpoints", read_only=True) as ckpt:
        assert ckpt.all_steps() == [2, 3]


# --------------------------------------------------------------------------- failure modes


def test_unknown_override_fails_at_start(tmp_path):
    proc = h.run_train(tmp_path / "wd", "--config.train.no_such_key=1", check=False, timeout=600)
    assert proc.returncode != 0
    assert "no_such_key" in proc.stderr
    assert not (tmp_path / "wd").exists()


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"data__dataset": "voc"}, ValueError, r"config\.data\.dataset='voc'.*one of"),
        ({"data__fold": 4}, ValueError, r"config\.data\.fold=4.*0\.\.3"),
        ({"data__n_shots": 0}, ValueError, r"config\.data\.n_shots=0.*>= 1"),
        ({"data__n_ways": 0}, ValueError, r"config\.data\.n_ways=0"),
        ({"train__per_device_batch": 0}, ValueError, r"config\.train\.per_device_batch=0"),
        (
            {"model__pretrained": "/nowhere/vgg16.pth"},
            FileNotFoundError,
            r"config\.model\.pretrained='/nowhere/vgg16\.pth' does not exist",
        ),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, monkeypatch, data_dir, overrides, error, match):
    monkeypatch.setattr(ts, "create_train_state", _must_not_run)
    monkeypatch.setattr(parallel, "make_parallel_step", _must_not_run)
    with pytest.raises(error, match=match):
        trainer.train_and_evaluate(h.tiny_config(data_dir, **overrides), str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_missing_dataset_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(ts, "create_train_state", _must_not_run)
    c = h.tiny_config(tmp_path / "empty", data__auto_prepare=False)
    with pytest.raises(FileNotFoundError, match=r"not prepared.*\n.*prepare_data\.py"):
        trainer.train_and_evaluate(c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def _must_not_run(*args, **kwargs):
    raise AssertionError("a bad config must fail before the model is built or compiled")


def test_failed_runs_never_touch_the_last_good_checkpoint(tmp_path, data_dir):
    wd = tmp_path / "wd"
    good = h.tiny_config(data_dir, train__steps=2, train__image_every=0)
    _, result = trainer.train(good, str(wd))
    assert result["step"] == 2
    before = h.flat_params(loading.load_variables(wd)["params"])

    other = h.tiny_config(data_dir, train__steps=4, optim__lr=0.1)
    with pytest.raises(workdir.ConfigMismatchError, match=r"optim\.lr: 0\.01 -> 0\.1"):
        trainer.train(other, str(wd))

    diverging = h.tiny_config(
        data_dir,
        train__steps=6,
        train__checkpoint_every=1,
        train__image_every=0,
        optim__lr=1e30,
        train__resume_mismatch_ok=True,
    )
    expected = r"non-finite .* step [23].*last good checkpoint \(step 2\)"
    with pytest.raises(FloatingPointError, match=expected):
        trainer.train(diverging, str(wd))
    with checkpointing.Checkpointer(wd / "checkpoints", read_only=True) as ckpt:
        assert ckpt.all_steps() == [2]
    after = h.flat_params(loading.load_variables(wd)["params"])
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_train_and_evaluate_reports_the_evaluation(tmp_path, data_dir):
    c = h.tiny_config(
        data_dir,
        train__steps=2,
        train__image_every=0,
        train__eval_after=True,
        eval__runs=1,
        eval__episodes=4,
        eval__num_images=1,
    )
    result = trainer.train_and_evaluate(c, str(tmp_path / "wd"))
    assert result["step"] == 2 and math.isfinite(result["loss"])
    assert 0.0 <= result["miou_mean"] <= 1.0 and result["background_miou_baseline"] == 0.0
    assert "eval_episodes_per_s" in result and "episodes_per_s" in result
    assert list((tmp_path / "wd").glob("eval_*/results.json"))
