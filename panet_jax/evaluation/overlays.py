"""Overlay images of episodes and predictions (NumPy + PIL only).

Shared by the evaluator (prediction PNGs), ``experiments/segment.py`` (overlays of a user's
images) and the trainer (TensorBoard images of :func:`episode_panel`).

Label maps are in *episode* label space (0 = background, ``n + 1`` = way ``n``, 255 = ignore).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from panet_jax import files
from panet_jax.data.preprocess import denormalize_image
from panet_jax.data.spec import IGNORE_LABEL

# Colour of label n (row n); label 0 (background) is never painted. Bright, distinct colours.
PALETTE = np.array(
    [
        (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
        (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60),
        (250, 190, 212),
    ],
    np.uint8,
)  # fmt: skip
IGNORE_COLOR = (255, 255, 255)
GAP = 2  # pixels between tiles of a panel


def label_color(label: int) -> tuple[int, int, int]:
    """RGB colour used for episode label ``label`` (255 = ignore: white)."""
    if label == IGNORE_LABEL:
        return IGNORE_COLOR
    return tuple(int(v) for v in PALETTE[1 + (label - 1) % (len(PALETTE) - 1)])


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask [H, W] bool`` with a 4-neighbour outside it."""
    pad = np.pad(mask, 1, mode="edge")
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return mask & ~inner


def overlay(
    image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, *, contour: bool = True
) -> np.ndarray:
    """Blend label colours into an image.

    Args:
      image: ``[H, W, 3]`` uint8 RGB.
      mask: ``[H, W]`` int labels (0 = not painted; ``n`` -> :func:`label_color`; 255 = white).
        A bool mask paints label 1.
      alpha: opacity of the colour inside a region.
      contour: also draw each region's 1-px boundary fully opaque.
    Returns:
      ``[H, W, 3]`` uint8.
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[-1] != 3 or mask.shape != image.shape[:2]:
        raise ValueError(
            f"overlay expects image [H, W, 3] and mask [H, W]; got {image.shape} and {mask.shape}"
        )
    mask = mask.astype(np.int64)
    out = image.astype(np.float32)
    for label in np.unique(mask):
        if label == 0:
            continue
        region = mask == label
        color = np.asarray(label_color(int(label)), np.float32)
        out[region] = (1.0 - alpha) * out[region] + alpha * color
        if contour:
            out[_boundary(region)] = color
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _tile_caption(tile: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner of a uint8 tile (PIL's default bitmap font);
    tiles narrower than 96 px stay unlabelled."""
    if not text or min(tile.shape[:2]) < 96:
        return tile
    img = Image.fromarray(tile)
    draw = ImageDraw.Draw(img)
    font = _font()
    box = draw.textbbox((3, 1), text, font=font)
    draw.rectangle((0, 0, box[2] + 3, box[3] + 2), fill=(0, 0, 0))
    draw.text((3, 1), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's bundled font at 12 px (FreeType), or its bitmap font without FreeType."""
    try:
        return ImageFont.load_default(size=12)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def grid(rows: Sequence[Sequence[np.ndarray]], gap: int = GAP) -> np.ndarray:
    """Lay ``[h, w, 3]`` uint8 tiles (all the same size) out row by row, padding short rows
    with white; ``gap`` white pixels between tiles. Returns ``[H, W, 3]`` uint8."""
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    out = np.full(
        (len(rows) * h + (len(rows) - 1) * gap, n_cols * w + (n_cols - 1) * gap, 3), 255, np.uint8
    )
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            y, x = i * (h + gap), j * (w + gap)
            out[y : y + h, x : x + w] = tile
    return out


def episode_panel(
    episode: Mapping[str, np.ndarray],
    prediction: np.ndarray,
    *,
    alpha: float = 0.5,
    class_names: Mapping[int, str] | None = None,
    captions: bool = True,
    min_size: int = 128,
) -> np.ndarray:
    """A grid picture of one episode.

    Row 1: every support (way-major) with its foreground mask in the way's colour. Then one
    row per query: the query with its ground truth (255 in white), and with the prediction.

    Args:
      episode: one *unbatched* episode (``panet_jax.data.spec`` format; ``support_bg`` unused).
      prediction: ``[Q, H, W]`` int predicted episode labels.
      class_names: optional ``{class id: name}`` for the captions.
      min_size: tiles smaller than this are enlarged by an integer factor (nearest).
    Returns:
      ``[rows * H + gaps, cols * W + gaps, 3]`` uint8.
    """
    labels = np.asarray(episode["query_labels"])
    prediction = np.asarray(prediction)
    if prediction.shape != labels.shape:
        raise ValueError(f"prediction has shape {prediction.shape}; expected {labels.shape}")
    f = max(1, -(-min_size // min(labels.shape[-2:])))  # ceil

    def up(x: np.ndarray, rgb: bool = False) -> np.ndarray:  # [..., H, W(, 3)] -> f H, f W
        axis = -3 if rgb else -2
        return np.repeat(np.repeat(x, f, axis=axis), f, axis=axis + 1)

    supp = up(denormalize_image(episode["support_images"]), rgb=True)  # [N, K, fH, fW, 3]
    fg = up(np.asarray(episode["support_fg"]) > 0.5)
    qry = up(denormalize_image(episode["query_images"]), rgb=True)  # [Q, fH, fW, 3]
    labels, prediction = up(labels), up(prediction)
    class_ids = [int(c) for c in np.asarray(episode["class_ids"]).reshape(-1)]
    names = class_names or {}
    n_ways, n_shots = fg.shape[:2]
    top = []
    for n in range(n_ways):
        name = names.get(class_ids[n], f"class {class_ids[n]}")
        for k in range(n_shots):
            tile = overlay(supp[n, k], fg[n, k].astype(np.int64) * (n + 1), alpha)
            top.append(_tile_caption(tile, f"support: {name}" if captions else ""))
    rows = [top]
    for q in range(qry.shape[0]):
        gt = _tile_caption(overlay(qry[q], labels[q], alpha), "query GT" if captions else "")
        pr = _tile_caption(overlay(qry[q], prediction[q], alpha), "prediction" if captions else "")
        rows.append([gt, pr])
    return grid(rows)


def save_png(
    image: np.ndarray,
    path: str | Path,
    *,
    overwrite: bool = False,
    palette: Sequence[tuple[int, int, int]] | None = None,
) -> Path:
    """Write an RGB (``[H, W, 3]``) or grey / index (``[H, W]``) uint8 array as PNG, atomically
    (:func:`panet_jax.files.atomic_path`: an existing file stays whole if the write fails).

    ``palette``: write an ``[H, W]`` index array as a palette ('P') PNG with these colours.
    Refuses (``FileExistsError``) to replace an existing file unless ``overwrite``.
    """
    img = Image.fromarray(np.asarray(image, np.uint8))
    if palette is not None:
        img.putpalette([int(v) for rgb in palette for v in rgb])  # 'L' -> 'P'
    with files.atomic_path(path, overwrite=overwrite) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)
