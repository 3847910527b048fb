"""Progress lines and prediction overlays for the training loop (NumPy only)."""

from __future__ import annotations

import math

import numpy as np

from panet_jax.data.spec import IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD

# Overlay colour of label value ``n`` (1-based way); background is left as is.
_COLOURS = np.array(
    [[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180]], np.float32
)
_IGNORE_COLOUR = np.array([255, 255, 255], np.float32)


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


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """ImageNet-normalised ``[H, W, 3]`` float -> ``[H, W, 3]`` uint8."""
    rgb = np.asarray(image, np.float32) * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend way colours over ``rgb [H, W, 3] uint8`` where ``labels [H, W]`` is ``1..N``
    (255 = ignore, shown white)."""
    out = rgb.astype(np.float32)
    labels = np.asarray(labels)
    for n in np.unique(labels):
        if n == 0:
            continue
        colour = _IGNORE_COLOUR if n == IGNORE_LABEL else _COLOURS[(int(n) - 1) % len(_COLOURS)]
        m = labels == n
        out[m] = (1 - alpha) * out[m] + alpha * colour
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def episode_panel(episode: dict[str, np.ndarray], prediction: np.ndarray) -> np.ndarray:
    """One unbatched episode -> ``[H, W * (N + 3), 3]`` uint8: each way's first support with
    its mask, the first query, its ground truth and the prediction ``[H, W]`` (0 = bg)."""
    tiles = []
    for n in range(episode["support_images"].shape[0]):
        fg = np.asarray(episode["support_fg"][n, 0]) > 0.5
        tiles.append(overlay(to_uint8_rgb(episode["support_images"][n, 0]), fg * (n + 1)))
    query = to_uint8_rgb(episode["query_images"][0])
    tiles.append(query)
    tiles.append(overlay(query, episode["query_labels"][0]))
    tiles.append(overlay(query, prediction))
    return np.concatenate(tiles, axis=1)
