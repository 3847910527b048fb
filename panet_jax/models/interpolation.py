"""PyTorch's 1-D bicubic resampling weights, as matrices (for DINOv2's position embeddings).

``torch.nn.functional.interpolate(x, mode='bicubic', align_corners=False, antialias=...)`` is
separable, so along one axis it is a matrix ``R [out, in]`` and a 2-D resize is
``R_h @ X @ R_w.T``. The weights are restated here (not taken from ``jax.image``) because
DINOv2's exactness depends on PyTorch's two kernels, which ``jax.image.resize`` does not
reproduce (different border rule, no ``scale_factor`` coordinate mapping):

* ``antialias=False`` (``upsample_bicubic2d``): Keys' cubic with ``A = -0.75``, source
  coordinate ``(i + 0.5) * s - 0.5`` with ``s = 1 / scale_factor`` when a scale factor is given
  (else ``in / out``), four taps clamped to the border (edge replication);
* ``antialias=True`` (``_upsample_bicubic2d_aa``, PIL's filter): ``A = -0.5``, support widened
  by ``s`` when downsampling, window cut at the border and the weights renormalised; an axis
  whose size does not change is copied (PyTorch skips that pass, whatever the scale factor).
"""

from __future__ import annotations

import functools
import math

import numpy as np

CUBIC_A = -0.75  # upsample_bicubic2d
CUBIC_A_ANTIALIAS = -0.5  # _upsample_bicubic2d_aa (PIL)


def _cubic1(x: float, a: float) -> float:
    """Keys' kernel for ``|x| <= 1``."""
    return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic2(x: float, a: float) -> float:
    """Keys' kernel for ``1 < |x| < 2``."""
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


def _scale(in_size: int, out_size: int, scale_factor: float | None) -> float:
    """PyTorch's ``area_pixel_compute_scale`` (``align_corners=False``)."""
    if scale_factor is not None and scale_factor > 0:
        return 1.0 / scale_factor
    return in_size / out_size


def _plain_matrix(in_size: int, out_size: int, scale_factor: float | None) -> np.ndarray:
    scale = _scale(in_size, out_size, scale_factor)
    r = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        real = scale * (i + 0.5) - 0.5
        index = min(math.floor(real), in_size - 1)
        t = min(max(real - index, 0.0), 1.0)
        taps = (_cubic2(t + 1, CUBIC_A), _cubic1(t, CUBIC_A),
                _cubic1(1 - t, CUBIC_A), _cubic2(2 - t, CUBIC_A))  # fmt: skip
        for j, w in enumerate(taps):
            r[i, min(max(index + j - 1, 0), in_size - 1)] += w
    return r


def _aa_filter(x: float) -> float:
    x = abs(x)
    if x < 1.0:
        return _cubic1(x, CUBIC_A_ANTIALIAS)
    if x < 2.0:
        return _cubic2(x, CUBIC_A_ANTIALIAS)
    return 0.0


def _antialias_matrix(in_size: int, out_size: int, scale_factor: float | None) -> np.ndarray:
    scale = _scale(in_size, out_size, scale_factor)
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    r = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)  # int(): C++'s truncation toward zero
        hi = min(int(center + support + 0.5), in_size)
        w = np.array([_aa_filter((j - center + 0.5) * invscale) for j in range(lo, hi)])
        total = w.sum()
        r[i, lo:hi] = w / total if total != 0.0 else w
    return r


@functools.lru_cache(maxsize=64)
def bicubic_matrix(
    in_size: int, out_size: int, scale_factor: float | None = None, antialias: bool = False
) -> np.ndarray:
    """``R [out_size, in_size]`` (float64, read-only) with ``R @ x`` equal to PyTorch's
    ``interpolate(mode='bicubic', align_corners=False, antialias=antialias)`` along one axis,
    given the output size and the ``scale_factor`` passed to it (``None``: size only)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"bicubic_matrix: sizes must be >= 1, got {in_size} -> {out_size}")
    if antialias and in_size == out_size:
        r = np.eye(in_size)
    else:
        build = _antialias_matrix if antialias else _plain_matrix
        r = build(in_size, out_size, scale_factor)
    r.flags.writeable = False
    return r
