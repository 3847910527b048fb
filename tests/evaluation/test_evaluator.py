"""The evaluation protocol on the tiny synthetic set with a tiny random PANet.

A checkpoint of randomly initialised variables is saved with the project's orbax
``Checkpointer`` and evaluated in-process on 1 device and by ``experiments/evaluate.py`` on 4
(forced host) devices in a subprocess.
"""

from __future__ import annotations

import json
import math
import runpy
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import train_helpers
from paths import REPO

from panet_jax.data import builders
from panet_jax.evaluation import evaluator
from panet_jax.inference import loading
from panet_jax.models import registry
from panet_jax.train import trainer

EPISODES = 5
SCORE_KEYS = (
    "miou_mean", "miou_std", "fbiou_mean", "fbiou_std", "strict_miou_mean", "strict_fbiou_mean",
    "background_miou_baseline", "background_fbiou_baseline",
)  # fmt: skip
CLI_OVERRIDES = ("--config.eval.runs=2", f"--config.eval.episodes={EPISODES}",
                 "--config.eval.num_images=2", "--config.data.auto_prepare=False")  # fmt: skip


def make_config(data_dir: str, **eval_overrides):
    """``configs/synthetic.py:runlocal`` (33 px, width 1/16, tiny set) with 2 x 5 episodes."""
    config = runpy.run_path(str(REPO / "configs" / "synthetic.py"))["get_config"]("runlocal")
    config.data.data_dir = data_dir
    config.data.auto_prepare = False
    config.eval.runs = 2
    config.eval.episodes = EPISODES
    config.eval.num_images = 2
    for key, value in eval_overrides.items():
        config.eval[key] = value
    return config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    data_dir = str(root / "data")
    builders.prepare("synthetic_fss", data_dir=data_dir, config="tiny")
    config = make_config(data_dir)
    ckpt_workdir = root / "run"
    state, _ = trainer.train(config, str(ckpt_workdir))  # a checkpoint trained on the set
    assert int(state.step) == config.train.steps
    return {"root": root, "data_dir": data_dir, "config": config, "ckpt": ckpt_workdir,
            "variables": {"params": state.params}}  # fmt: skip


def scores(result: dict) -> dict:
    out = {k: result[k] for k in SCORE_KEYS}
    out["runs"] = [(r["seed"], r["miou"], r["fbiou"], r["class_iou"]) for r in result["runs"]]
    return out


def test_layout_counts_every_episode_once():
    for episodes in range(1, 12):
        for host_batch in (1, 2, 3):
            for processes in (1, 2, 3):
                lay = evaluator.Layout(episodes, host_batch, processes)
                numbers = [e for p in range(processes) for e in range(*lay.process_range(p))]
                assert sorted(numbers) == list(range(episodes))
                assert all(b - a <= lay.steps * host_batch
                           for a, b in map(lay.process_range, range(processes)))  # fmt: skip
                assert lay.done_after(lay.steps - 1) == episodes


def test_evaluate_twice_same_numbers_and_reports(setup):
    wd = setup["root"] / "wd"
    r1 = evaluator.evaluate(setup["config"], setup["variables"], workdir=wd, progress=False)
    r2 = evaluator.evaluate(setup["config"], setup["variables"], workdir=wd, progress=False)
    assert json.dumps(scores(r1)) == json.dumps(scores(r2))  # NaN-aware, exact
    assert r1["output_dir"] != r2["output_dir"]  # the second run never overwrites the first
    for r in (r1, r2):
        out = Path(r["output_dir"])
        saved = json.loads((out / "results.json").read_text())
        assert saved["miou_mean"] == pytest.approx(r["miou_mean"])
        assert "| mIoU (official) |" in (out / "results.md").read_text()
        assert len(list((out / "images").glob("*.png"))) == 2
    assert len(r1["runs"]) == 2 and [r["seed"] for r in r1["runs"]] == [1234, 1235]
    assert set(r1["per_class"]) == {1, 2, 3, 4, 5}
    assert 0.0 <= r1["miou_mean"] <= 1.0 and 0.0 <= r1["fbiou_mean"] <= 1.0
    assert r1["strict_miou_mean"] <= r1["miou_mean"] + 1e-12
    assert r1["background_miou_baseline"] == 0.0
    assert 0.0 < r1["background_fbiou_baseline"] < 0.5


def _reference_run(config, variables, seed: int) -> tuple[float, float]:
    """mIoU / FB-IoU of one run recomputed with plain NumPy, one episode at a time."""
    apply = jax.jit(registry.build_panet(config).apply)
    layout = evaluator.Layout(config.eval.episodes, 1, 1)
    tp, fp, fn = (np.zeros(21) for _ in range(3))
    sampler, builder = evaluator.run_sampler(config, seed)
    for batch, valid in evaluator.host_batches(config, sampler, builder, layout, 0):
        assert valid.all()
        pred = np.asarray(apply(variables, batch)["logits"]).argmax(-1)[0, 0]
        target = batch["query_labels"][0, 0]
        for j, label in enumerate([0, *batch["class_ids"][0]]):
            if (target == j).any():
                p, t = (pred == j) & (target != 255), target == j
                tp[label] += (p & t).sum()
                fp[label] += (p & ~t).sum()
                fn[label] += (~p & t).sum()
    seen = [c for c in range(1, 6) if tp[c] + fp[c] + fn[c] > 0]
    miou = np.mean([tp[c] / (tp[c] + fp[c] + fn[c]) for c in seen])
    b = tp[0] / (tp[0] + fp[0] + fn[0])
    f = tp[1:].sum() / (tp[1:].sum() + fp[1:].sum() + fn[1:].sum())
    return float(miou), float((b + f) / 2)


def test_matches_numpy_reference_and_padding(setup):
    """Batches of 3 with a masked zero episode == one episode at a time, recomputed in NumPy.
    In float64, so that the two programs' argmax predictions cannot differ by a rounding tie."""
    with jax.enable_x64(True):
        config = make_config(setup["data_dir"])
        config.model.dtype = "float64"
        ref = [_reference_run(config, setup["variables"], 1234 + r) for r in range(2)]
        # 5 episodes in batches of 3: the last batch carries one masked zero episode.
        padded = make_config(setup["data_dir"], per_device_batch=3, num_images=0)
        padded.model.dtype = "float64"
        result = evaluator.evaluate(padded, setup["variables"], progress=False)
    for run, (miou, fbiou) in zip(result["runs"], ref, strict=True):
        assert run["miou"] == pytest.approx(miou, rel=1e-12)
        assert run["fbiou"] == pytest.approx(fbiou, rel=1e-12)


@pytest.mark.parametrize("annotation", ["bbox", "scribble"])
def test_hsnet_protocol_weak_supports(setup, annotation):
    config = make_config(setup["data_dir"], protocol="hsnet", support_annotation=annotation,
                         runs=1, episodes=3)  # fmt: skip
    result = evaluator.evaluate(config, setup["variables"], progress=False)
    assert result["settings"]["protocol"] == "hsnet"
    assert result["settings"]["split"] == "test"
    assert result["settings"]["support_annotation"] == annotation
    assert np.isfinite(result["fbiou_mean"])


def test_bad_eval_config(setup):
    with pytest.raises(ValueError, match=r"config\.eval\.protocol"):
        evaluator.evaluate(make_config(setup["data_dir"], protocol="oslsm"), setup["variables"])
    with pytest.raises(ValueError, match=r"config\.eval\.episodes"):
        evaluator.evaluate(make_config(setup["data_dir"], episodes=0), setup["variables"])


def test_cli_on_four_devices_matches_one_device(setup):
    """The CLI on 4 devices and the library on 1 give the same numbers, in float64 (float32
    rounding differs between the two programs and could flip an argmax at a near-tie pixel)."""
    out = setup["root"] / "cli4"
    env = train_helpers.subprocess_env(4, JAX_ENABLE_X64="1")
    cmd = [sys.executable, str(REPO / "experiments" / "evaluate.py"),
           "--config=" + str(REPO / "configs" / "synthetic.py") + ":runlocal",
           f"--checkpoint={setup['ckpt']}", f"--workdir={out}",
           f"--config.data.data_dir={setup['data_dir']}", "--config.model.dtype=float64",
           *CLI_OVERRIDES]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result_dir,) = out.glob("eval_*")
    cli = json.loads((result_dir / "results.json").read_text())
    assert cli["settings"]["devices"] == 4 and cli["settings"]["model"]["dtype"] == "float64"
    assert len(list((result_dir / "images").glob("*.png"))) == 2

    restored = loading.load_variables(setup["ckpt"])  # the same checkpoint, 1 device
    with jax.enable_x64(True):
        config = make_config(setup["data_dir"])
        config.model.dtype = "float64"
        local = evaluator.evaluate(config, restored, progress=False)
    assert jax.device_count() == 1
    for key in SCORE_KEYS:
        assert cli[key] == pytest.approx(local[key], rel=1e-12), key
    for a, b in zip(cli["runs"], local["runs"], strict=True):
        assert a["seed"] == b["seed"]
        cli_iou = {k: math.nan if v is None else v for k, v in a["class_iou"].items()}
        local_iou = {str(k): v for k, v in b["class_iou"].items()}
        assert cli_iou == pytest.approx(local_iou, rel=1e-12, nan_ok=True)
