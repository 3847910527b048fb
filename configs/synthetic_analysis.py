"""The paper's analyses (PAR ablation, weak supports) on the synthetic set, sized for a CPU.

    python experiments/analyze.py --config=configs/synthetic_analysis.py --out=runs/analysis

:mod:`configs.synthetic` at 64 px (the ``default`` builder's 128 px images resized) and 1000
steps of 2 episodes (x0.1 lr after 750), so a 1-shot cell trains in under a minute and a
5-shot cell in about two on a quiet 2-core CPU. The grid's own axes (folds, shots, PAR, seeds) come from
``experiments/analyze.py``; ``:runlocal`` shrinks everything for tests.
"""

import importlib.util
from pathlib import Path


def _synthetic():
    """``configs/synthetic.py``, loaded by path (config files are not a package)."""
    spec = importlib.util.spec_from_file_location(
        "synthetic", Path(__file__).with_name("synthetic.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg: str | None = None):
    c = _synthetic().get_config(arg)
    if "runlocal" not in (arg or ""):
        c.data.image_size = (64, 64)
        c.train.steps = 1000
        c.train.per_device_batch = 2
        c.optim.milestones = (750,)
        c.train.log_every = 50
        c.train.image_every = 0
    return c
