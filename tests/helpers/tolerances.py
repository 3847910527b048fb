"""Tolerances of the numerics tests, derived from floating-point rounding (not tuned).

Exactness of a formulation is proved in float64 (``U64``): two correct implementations then
agree to ~1e-13 relative, so a ``1e-9`` gate can neither pass by luck (a real difference shows
at >= 1e-6) nor fail by rounding. float32 checks use bounds built from ``U32`` and the size of
the computation, with these standard estimates (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2002, sections 3.1 and 3.5): an ``n``-term dot product carries a relative error of
about ``sqrt(n) * u`` (rounding errors of random sign add like a random walk), and ``L``
stacked layers add their errors (``L * sqrt(fan_in) * u``).
"""

from __future__ import annotations

import math

import numpy as np

U64 = 2.0**-53  # float64 unit roundoff (round to nearest)
U32 = 2.0**-24  # float32
UBF16 = 2.0**-9  # bfloat16 (8 significand bits)
EXACT64 = 1e-9  # float64 gate of "same formulation" checks: ~1e4 x the rounding it can see


def dot_rel(n: int, u: float = U32) -> float:
    """Relative rounding error of an ``n``-term dot product or sum: ``sqrt(n) * u``."""
    return math.sqrt(n) * u


def layers_rel(n_layers: int, max_fan_in: int, u: float = U32) -> float:
    """Relative error of a forward pass through ``n_layers`` dot-product layers whose largest
    fan-in is ``max_fan_in``: ``n_layers * sqrt(max_fan_in) * u``."""
    return n_layers * dot_rel(max_fan_in, u)


def rel_err(a, b) -> float:
    """``max |a - b| / max |b|`` in float64: the relative difference the gates above bound."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
