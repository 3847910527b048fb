"""Per-executable XLA compiler options of each step, per platform.

* CPU: XLA:CPU (jaxlib 0.10.2) hands convolutions and dots to YNNPACK fusions
  (``ynn_fusion.*``), whose convolution kernel gradients are slower than XLA's own (Eigen)
  convolutions; the train and eval steps are compiled with them off. ``'predict'`` (one image
  at a time) keeps XLA's defaults. Figures: ``docs/performance.md``
  (``benchmarks/benchmark.py``).
* GPU: XLA's Triton GEMM emitter finds no tiling for some of the steps' small matmuls (the
  bilinear resize of PAR's 5-shot step, the cosine scores of large batches) and the compile
  fails; those matmuls go to cuBLAS instead (``experiments/compile_for.py`` compiles the steps
  for GPUs on any machine).

The options are passed per executable (``jax.jit(..., compiler_options=...)`` or
``lowered.compile(options)``), so nothing global changes: other programs in the process and
the user's environment are untouched. An option the user sets in ``XLA_FLAGS`` is not
overridden (per-executable options would win over ``XLA_FLAGS``, so it is left out here).
Other platforms get none.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax

YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
# As a compile option this repeated enum field takes one full enum name, or '' for none
# (the '+name' / '-name' edits of the XLA_FLAGS syntax are refused here).
YNN_DOTS_ONLY = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"

# kind -> options on CPU ('': no YNN fusions at all; see the module docstring).
CPU_OPTIONS: dict[str, dict[str, Any]] = {
    "train": {YNN_FUSION_TYPE: ""},
    "eval": {YNN_FUSION_TYPE: ""},
    "predict": {},
}
TRITON_GEMM = "xla_gpu_enable_triton_gemm"
GPU_OPTIONS: dict[str, dict[str, Any]] = {kind: {TRITON_GEMM: False} for kind in CPU_OPTIONS}
OPTIONS = {"cpu": CPU_OPTIONS, "gpu": GPU_OPTIONS}
KINDS = tuple(CPU_OPTIONS)
# JAX's platform names -> the keys of OPTIONS.
_PLATFORMS = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu"}


def user_xla_flags(env: Mapping[str, str] | None = None) -> set[str]:
    """Names of the options set in ``XLA_FLAGS`` (``--name=v``, ``--name``, ``--noname``)."""
    text = (os.environ if env is None else env).get("XLA_FLAGS", "")
    names = set()
    for token in text.split():
        m = re.match(r"^--?([A-Za-z0-9_]+)", token)
        if m:
            name = m.group(1)
            names.add(name)
            if name.startswith("no"):
                names.add(name[2:])
    return names


def compiler_options(
    kind: str, platform: str | None = None, env: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """The per-executable options of step ``kind`` (``'train'`` | ``'eval'`` | ``'predict'``)
    on ``platform`` (default: JAX's default backend), less any option set in ``XLA_FLAGS``
    (``env``: default ``os.environ``). None when nothing is to be set."""
    if kind not in CPU_OPTIONS:
        raise ValueError(f"unknown step kind {kind!r}; expected one of {KINDS}")
    table = OPTIONS.get(_PLATFORMS.get(platform or jax.default_backend(), ""))
    if table is None:
        return None
    user = user_xla_flags(env)
    options = {k: v for k, v in table[kind].items() if k not in user}
    return options or None
