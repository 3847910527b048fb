"""Checkpoints: round trip, any device count <-> any other, atomic commits, refusal to save a
non-finite state or to reuse a workdir of another run, and the public loaders."""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
import train_helpers as h

from panet_jax.inference import loading
from panet_jax.models.weights import vgg as vgg_weights
from panet_jax.runtime import parallel
from panet_jax.train import checkpointing, trainer, workdir
from panet_jax.train import state as ts


@pytest.fixture(scope="module")
def config():
    return h.tiny_config()


@pytest.fixture(scope="module")
def state(config):
    return parallel.replicate(
        ts.create_train_state(config, jax.random.key(3)), parallel.make_mesh()
    )


def _same(a, b) -> bool:
    fa, fb = h.flat_params(a), h.flat_params(b)
    return sorted(fa) == sorted(fb) and all(np.array_equal(fa[k], fb[k]) for k in fa)


def test_round_trip_keeps_latest_n_and_config(tmp_path, config, state):
    with checkpointing.Checkpointer(tmp_path / "ck", keep=2) as ckpt:
        for step in (1, 2, 3):
            assert ckpt.save(state.replace(step=state.step + step), config)
        assert not ckpt.save(state.replace(step=state.step + 3), config)  # never overwritten
        ckpt.wait()
        assert ckpt.all_steps() == [2, 3]
        got = ckpt.restore(checkpointing.abstract_state_on(config, parallel.make_mesh()))
        assert int(got.step) == 3
        assert _same(got.params, state.params) and _same(got.opt_state, state.opt_state)
        assert ckpt.restore_config().model.width == config.model.width
    assert _same(loading.load_variables(tmp_path / "ck")["params"], state.params)


def test_non_finite_state_is_refused_and_old_checkpoint_kept(tmp_path, config, state):
    with checkpointing.Checkpointer(tmp_path / "ck") as ckpt:
        ckpt.save(state.replace(step=state.step + 1), config)
        ckpt.wait()
        bad = state.replace(
            step=state.step + 2, params=jax.tree.map(lambda x: x * np.nan, state.params)
        )
        with pytest.raises(FloatingPointError, match="non-finite"):
            ckpt.save(bad, config)
        assert ckpt.all_steps() == [1]
    assert _same(loading.load_variables(tmp_path / "ck")["params"], state.params)


def test_interrupted_save_leftovers_are_not_checkpoints(tmp_path, config, state):
    """Orbax writes ``<step>.orbax-checkpoint-tmp`` and renames on commit; a crash mid-save
    leaves only that temp dir, which is never restored and is cleaned up on the next start."""
    d = tmp_path / "ck"
    with checkpointing.Checkpointer(d) as ckpt:
        ckpt.save(state.replace(step=state.step + 5), config)
        ckpt.wait()
    junk = d / "9.orbax-checkpoint-tmp"
    (junk / "state").mkdir(parents=True)
    (junk / "state" / "garbage").write_text("half written")
    with checkpointing.Checkpointer(d) as ckpt:
        assert ckpt.latest_step() == 5
        assert (
            int(ckpt.restore(checkpointing.abstract_state_on(config, parallel.make_mesh())).step)
            == 5
        )
    assert not junk.exists()
    assert sorted(p.name for p in d.iterdir() if p.name[0].isdigit()) == ["5"]


def test_workdir_of_another_run_is_not_clobbered(tmp_path, config):
    workdir.prepare_workdir(tmp_path, config)
    same = h.tiny_config()
    same.train.steps = 99  # resumable key: fine
    same.parallel.impl = "pmap"
    workdir.prepare_workdir(tmp_path, same)
    other = h.tiny_config()
    other.optim.lr = 0.5
    other.model.width = 0.25
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(workdir.ConfigMismatchError, match=r"optim\.lr.*\n.*|model\.width"):
        workdir.prepare_workdir(tmp_path, other)
    assert (tmp_path / "config.json").read_text() == before
    workdir.prepare_workdir(tmp_path, other, allow_mismatch=True)
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == 0.5
    assert (tmp_path / "config.json.previous").exists()
    assert loading.load_run_config(tmp_path).optim.lr == 0.5


def test_checkpoints_without_config_are_not_adopted(tmp_path, config):
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    with pytest.raises(workdir.ConfigMismatchError, match=r"no config\.json"):
        workdir.prepare_workdir(tmp_path, config)


def test_load_variables_from_npz(tmp_path, state):
    path = tmp_path / "enc.npz"
    vgg_weights.save_npz(jax.device_get(state.params["encoder"]), path)
    got = loading.load_variables(path)
    assert _same(got["params"]["encoder"], state.params["encoder"])


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        loading.load_variables(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        loading.load_variables(tmp_path)


def test_written_on_4_devices_restores_on_1(tmp_path):
    ck, npz = tmp_path / "ck", tmp_path / "p.npz"
    out = h.run_worker("save-state", str(ck), str(npz), devices=4)
    assert out == {"devices": 4, "step": 3}
    variables = loading.load_variables(ck)
    leaf = variables["params"]["encoder"]["conv1_1"]["kernel"]
    assert len(leaf.sharding.device_set) == jax.device_count() == 1
    want = h.load_npz(npz)
    got = h.flat_params(variables["params"])
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_written_on_1_device_restores_on_4(tmp_path, config, state):
    ck, npz = tmp_path / "ck", tmp_path / "p.npz"
    with checkpointing.Checkpointer(ck) as ckpt:
        ckpt.save(state.replace(step=state.step + 2), config)
        ckpt.wait()
    h.params_npz(npz, state.params)
    out = h.run_worker("restore-check", str(ck), str(npz), devices=4)
    assert out == {"devices": 4, "equal": True, "sharding_devices": 4}
    assert os.path.isdir(ck / "2")


def _damage(step_dir: Path) -> None:
    for f in (step_dir / "state").rglob("*"):
        if f.is_file() and "METADATA" not in f.name:
            f.write_bytes(f.read_bytes()[:10])


def test_a_damaged_latest_checkpoint(world, tmp_path):
    """Resume falls back to the newest readable step (the damaged one stays on disk); loading
    names the damaged step and the --step to use."""
    wd = tmp_path / "wd"
    config = h.tiny_config(world["data"], train__steps=2, train__checkpoint_every=1,
                           train__image_every=0)  # fmt: skip
    trainer.train(config, str(wd))
    _damage(wd / "checkpoints" / "2")
    with pytest.raises(checkpointing.CheckpointReadError, match=r"step 2.*damaged.*--step=1"):
        loading.load_variables(wd)
    assert loading.load_variables(wd, step=1)["params"]
    config.train.steps = 3
    state, result = trainer.train(config, str(wd))
    assert int(state.step) == 3 and result["step"] == 3
    assert (wd / "checkpoints" / "2").is_dir()  # never deleted
