"""Support ``(fg, bg)`` masks from what the page's editor holds, by the evaluation's rules.

The editor has two paint layers, *foreground* and *background* (strokes = pixels with
alpha > 0). Each annotation kind maps to the rule the evaluation uses for that kind of
support (:mod:`panet_jax.data.weak`):

* ``dense`` (a painted mask): fg = foreground strokes, bg = the rest of the image
  (``weak_support_masks('dense', ...)``, the official 1-way rule);
* ``scribble``: the two layers are written as a ``ScribbleAugAuto`` map (0 = background
  scribble, 1 = the foreground scribble, 255 = unlabelled; a pixel on both layers counts as
  foreground) and read back with the official ``getMask`` rule
  (:func:`~panet_jax.data.weak.scribble_masks_from_png`);
* ``bbox``: every connected foreground stroke is one instance; fg = the tight box of the
  largest, bg = outside the boxes of all (:func:`~panet_jax.data.weak.bbox_masks`, the official
  ``get_bbox``). Dragging the brush from one corner of the object to the opposite one draws
  that box (brush width included);
* ``file``: an uploaded mask (non-zero = object), bg = the rest of the image.

All masks are ``bool [H, W]`` at the support image's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from panet_jax.data import weak
from panet_jax.inference.user_images import PathLike, load_mask

KINDS = ("dense", "scribble", "bbox", "file")
UNLABELLED = 255  # ScribbleAugAuto: not scribbled
BG_SCRIBBLE = 0
FG_SCRIBBLE = 1


def strokes(layer: np.ndarray) -> np.ndarray:
    """``bool [H, W]``: the painted pixels of an RGBA layer ``[H, W, 4]`` (alpha > 0)."""
    layer = np.asarray(layer)
    if layer.ndim != 3 or layer.shape[-1] != 4:
        raise ValueError(f"an editor layer must be RGBA [H, W, 4], got {layer.shape}")
    return layer[..., 3] > 0


def scribble_map(fg_strokes: np.ndarray, bg_strokes: np.ndarray) -> np.ndarray:
    """The two stroke layers as a ``ScribbleAugAuto`` map ``uint8 [H, W]``."""
    out = np.full(fg_strokes.shape, UNLABELLED, np.uint8)
    out[bg_strokes] = BG_SCRIBBLE
    out[fg_strokes] = FG_SCRIBBLE
    return out


def _require(mask: np.ndarray, what: str, name: str) -> None:
    if not mask.any():
        raise ValueError(f"{name}: {what}")


def support_masks(
    kind: str,
    layers: Sequence[np.ndarray],
    name: str,
    mask_file: PathLike | None = None,
    image_hw: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(fg, bg)`` ``bool [H, W]`` of one support.

    Args:
      kind: one of :data:`KINDS`.
      layers: the editor's ``[foreground, background]`` RGBA layers ``[H, W, 4]`` (unused for
        ``file``).
      name: how messages refer to the support (e.g. ``"class 'cat', support 2"``).
      mask_file: the uploaded mask, for ``file``.
      image_hw: the support image's ``(H, W)``, which an uploaded mask must match.
    Raises:
      ValueError: saying what is missing (no foreground, no background scribble, ...).
    """
    if kind not in KINDS:
        raise ValueError(f"{name}: annotation kind must be one of {KINDS}, got {kind!r}")
    if kind == "file":
        if mask_file is None:
            raise ValueError(f"{name}: choose a mask file to upload (non-zero pixels = object)")
        fg = load_mask(mask_file, f"{name} mask file")
        if image_hw is not None and fg.shape != tuple(image_hw):
            raise ValueError(
                f"{name}: the mask file is {fg.shape[1]}x{fg.shape[0]} (WxH) but the image is "
                f"{image_hw[1]}x{image_hw[0]}"
            )
        _require(fg, "the mask file has no non-zero pixel: nothing marks the object", name)
        return fg, ~fg
    fg_strokes = strokes(layers[0])
    bg_strokes = strokes(layers[1]) if len(layers) > 1 else np.zeros_like(fg_strokes)
    _require(fg_strokes, "nothing is drawn on the foreground layer: mark the object", name)
    rng = np.random.default_rng(0)  # unused by these rules (no random pick or tie-break)
    if kind == "dense":
        return weak.weak_support_masks("dense", fg_strokes, ~fg_strokes, rng=rng)
    if kind == "bbox":
        return weak.bbox_masks(fg_strokes, None)
    _require(bg_strokes, "no background scribble: draw one on the background layer", name)
    return weak.scribble_masks_from_png(
        scribble_map(fg_strokes, bg_strokes), fg_strokes, rng, pick=FG_SCRIBBLE
    )
