"""Per-executable XLA compiler options: the fastest measured settings of each step on CPU.

XLA:CPU (jaxlib 0.10.2) hands convolutions and dots to YNNPACK fusions (``ynn_fusion.*``).
For the *training* step, whose time is dominated by convolution weight gradients, these are
slower than XLA's own (Eigen) convolutions: with them off the full VGG-16 step went from
1.7-2.6x to 0.74-0.88x PyTorch's time on a 2-core AVX2 machine, and took 0.55-0.95x
the time of XLA's defaults on a 2-core AVX-512 EPYC (the larger the images and the more shots,
the larger the gain). The evaluator's full-width forward is as fast (1-shot) or 3-13% faster
(5-shot) without them, so ``'eval'`` turns them off too (a 1/8-width forward is ~25% faster
*with* them, but takes milliseconds). ``'predict'`` (one image at a time, like a 1-shot
forward: no measured gain) keeps XLA's defaults (``benchmarks/benchmark.py``; README,
"Figures measured so far").

The options are passed per executable (``jax.jit(..., compiler_options=...)`` or
``lowered.compile(options)``), so nothing global changes: other programs in the process and
the user's environment are untouched. An option the user sets in ``XLA_FLAGS`` is not
overridden (per-executable options would win over ``XLA_FLAGS``, so it is left out here).
Off CPU there are none.
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
KINDS = tuple(CPU_OPTIONS)


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
    if (platform or jax.default_backend()) != "cpu":
        return None
    user = user_xla_flags(env)
    options = {k: v for k, v in CPU_OPTIONS[kind].items() if k not in user}
    return options or None
