"""Progress lines for the training loop."""

from __future__ import annotations

import math


def format_duration(seconds: float) -> str:
    """``3725 -> '1h02m05s'``, ``65 -> '1m05s'``, ``nan -> '?'``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def progress_line(
    step: int, total: int, metrics: dict[str, float], episodes_per_s: float, eta_s: float
) -> str:
    """``step 120/1500 | loss 0.812 (seg 0.603, par 0.209) | lr 1.0e-03 | 9.8 ep/s | ETA 2m21s``."""
    return (
        f"step {step}/{total} | loss {metrics['loss']:.4f} "
        f"(seg {metrics['loss_seg']:.4f}, par {metrics['loss_par']:.4f}) | "
        f"lr {metrics['lr']:.1e} | {episodes_per_s:.1f} ep/s | ETA {format_duration(eta_s)}"
    )
