"""Smoke runs of the developer tools in ``benchmarks/`` at tiny sizes: each runs to the end,
prints its table and writes a JSON report that holds what its docstring promises."""

from __future__ import annotations

import json

import pytest
from commands import assert_clean_failure, run_cli


def _report(proc, path) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(path.read_text())


@pytest.mark.slow
def test_gpu_check_smoke_run_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = run_cli("gpu_check.py", "--allow_cpu", "--parts=train_step,pipeline",
                   f"--data_dir={tmp_path / 'data'}", f"--out={out}", timeout=600)  # fmt: skip
    report = _report(proc, out)
    assert report["smoke_run"] is True
    assert set(report["results"]) == {"train_step", "pipeline"}
    assert all(r["ok"] for r in report["results"].values()), report["table"]
    assert "| " in report["table"] and report["versions"]["jax"]


def test_gpu_check_refuses_an_empty_part_list_and_an_existing_report(tmp_path):
    assert_clean_failure(run_cli("gpu_check.py", "--allow_cpu", "--parts="), "--parts", "training")
    out = tmp_path / "mine.json"
    out.write_text("the user's")
    proc = run_cli("gpu_check.py", "--allow_cpu", "--parts=pipeline", f"--out={out}")
    assert_clean_failure(proc, "mine.json", "--overwrite")
    assert out.read_text() == "the user's"


def test_benchmark_convs_smoke_run(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "convs.json"
    proc = run_cli("benchmark_convs.py", "--size=33", "--batch=1", "--repeats=1", f"--out={out}")
    report = _report(proc, out)
    assert "conv5_3" in proc.stdout and "total" in proc.stdout
    assert json.dumps(report).count("conv") >= 13


def test_benchmark_data_smoke_run(tmp_path):
    out = tmp_path / "data.json"
    proc = run_cli("benchmark_data.py", f"--data_dir={tmp_path / 'data'}",
                   "--synthetic_config=tiny", "--shots=1", "--image_size=65", "--warmup=1",
                   "--windows=2", "--window_batches=3", f"--out={out}")  # fmt: skip
    report = _report(proc, out)
    assert report["results"] and report["settings"]["image_size"] == [65, 65]


def test_app_latency_smoke_run(tmp_path):
    out = tmp_path / "app_latency.json"
    proc = run_cli("app_latency.py", "--size=33", "--width=0.0625", "--shots=1,2",
                   "--queries=1,2", "--repeats=1", "--image_side=40", f"--out={out}")  # fmt: skip
    report = _report(proc, out)
    assert [r["shots"] for r in report["rows"]] == [1, 2]
    keys = ("first_click_s", "all_new_1q_s", "cached_supports_1q_s", "cached_supports_2q_s")
    assert all(r[k] > 0 for r in report["rows"] for k in keys)
    assert "each query s" in proc.stdout and "--shots=1,2" in report["command"]
    assert_clean_failure(run_cli("app_latency.py", "--shots=1", f"--out={out}"), "--overwrite")
