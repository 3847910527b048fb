"""Reading a user's images and masks (files or arrays), refusing input whose meaning is unclear.

Everything returns plain arrays: images as uint8 RGB ``[H, W, 3]``, masks as bool ``[H, W]``.
Errors are ``ValueError`` messages that name the input (``support_images[0] ('cat.jpg')``) and
say what was expected: a 16-bit image is scaled to 8 bits, but a float image whose range is
not stated, NaN values, a mask that is not binary, are refused rather than guessed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PathLike = str | os.PathLike
ImageInput = np.ndarray | PathLike
VALUE_RANGES = ((0.0, 1.0), (0.0, 255.0))  # the ranges a float image may be declared in


def describe(name: str, x: Any) -> str:
    """``"name ('path')"`` for a path input, else ``name``: how errors refer to an input."""
    return f"{name} ({os.fspath(x)!r})" if isinstance(x, (str, os.PathLike)) else name


def open_image_file(path: PathLike, name: str) -> Image.Image:
    """A fully decoded PIL image, or ``ValueError`` naming ``path`` (missing, a directory,
    unreadable, truncated)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{name}: file {os.fspath(path)!r} does not exist")
    if not p.is_file():
        raise ValueError(f"{name}: {os.fspath(path)!r} is not a file")
    try:
        img = Image.open(p)
        img.load()
    except Image.DecompressionBombError as e:
        raise ValueError(
            f"{name}: {os.fspath(path)!r} is too large to decode safely ({e}); resize it first"
        ) from e
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ValueError(f"{name}: cannot read {os.fspath(path)!r} as an image ({e})") from e
    return img


def _scale_16bit(x: np.ndarray, name: str) -> np.ndarray:
    if x.min() < 0 or x.max() > 65535:
        raise ValueError(f"{name}: integer pixel values outside 0..65535 ({x.min()}..{x.max()})")
    return np.round(x.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)


def _image_from_file(path: PathLike, name: str) -> np.ndarray:
    img = ImageOps.exif_transpose(open_image_file(path, name))  # as viewers show it
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grey (PNG, TIFF)
        return np.repeat(_scale_16bit(np.asarray(img), name)[..., None], 3, axis=-1)
    if img.mode == "F":
        raise ValueError(
            f"{name}: {os.fspath(path)!r} holds floating-point pixels of unknown range; save it "
            "as an 8- or 16-bit image, or pass the array with value_range=(0, 1) or (0, 255)"
        )
    return np.asarray(img.convert("RGB"))


def _float_image(x: np.ndarray, name: str, value_range: tuple[float, float] | None) -> np.ndarray:
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: the image contains NaN or infinite values")
    if value_range is None:
        raise ValueError(
            f"{name}: a {x.dtype} image is ambiguous (values {x.min():.3g}..{x.max():.3g}); "
            "pass value_range=(0, 1) or (0, 255), or a uint8 array"
        )
    if tuple(float(v) for v in value_range) not in VALUE_RANGES:
        raise ValueError(f"{name}: value_range must be one of {VALUE_RANGES}, got {value_range}")
    lo, hi = (float(v) for v in value_range)
    if x.min() < lo or x.max() > hi:
        raise ValueError(
            f"{name}: values {x.min():.3g}..{x.max():.3g} lie outside value_range=({lo:g}, {hi:g})"
        )
    return np.round(x.astype(np.float64) * (255.0 / hi)).astype(np.uint8)


def _integer_image(x: np.ndarray, name: str) -> np.ndarray:
    if x.dtype == np.uint16:
        return _scale_16bit(x, name)
    if x.min() < 0 or x.max() > 255:
        raise ValueError(
            f"{name}: integer pixel values must lie in 0..255 (got {x.min()}..{x.max()} as "
            f"{x.dtype}); pass uint16 for 16-bit images"
        )
    return x.astype(np.uint8)


def _image_from_array(
    x: np.ndarray, name: str, value_range: tuple[float, float] | None
) -> np.ndarray:
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        x = np.stack([x] * 3, axis=-1)
    if x.ndim != 3 or x.shape[-1] != 3 or min(x.shape[:2]) < 1:
        raise ValueError(f"{name}: expected an RGB image [H, W, 3] or grey [H, W], got {x.shape}")
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_:
        raise ValueError(f"{name}: a boolean array is a mask, not an image")
    if np.issubdtype(x.dtype, np.integer):
        return _integer_image(x, name)
    if np.issubdtype(x.dtype, np.floating):
        return _float_image(x, name, value_range)
    raise ValueError(f"{name}: unsupported pixel dtype {x.dtype}")


def load_image(
    image: ImageInput, name: str = "image", value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """An RGB uint8 ``[H, W, 3]`` array from a file path or an array.

    Files: any PIL-readable format; the EXIF orientation is applied (the image as viewers show
    it); 16-bit grey images are scaled to 8 bits (65535 -> 255). Arrays: ``[H, W, 3]`` RGB or
    ``[H, W]`` grey; uint8 as is, uint16 scaled like 16-bit files, other integers must lie in
    0..255; float arrays need ``value_range`` ``(0, 1)`` or ``(0, 255)`` (no guessing).
    """
    if isinstance(image, (str, os.PathLike)):
        return _image_from_file(image, name)
    return _image_from_array(np.asarray(image), name, value_range)


def _mask_from_file(path: PathLike, name: str) -> np.ndarray:
    img = open_image_file(path, name)
    if img.mode == "F":
        raise ValueError(f"{name}: {os.fspath(path)!r} is a floating-point image, not a mask")
    x = np.asarray(img)
    if img.mode in ("LA", "PA"):  # drop the alpha channel
        return x[..., 0]
    return x[..., :3] if img.mode == "RGBA" else x


def _mask_from_array(mask: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(mask)
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name}: the mask contains NaN or infinite values")
        if not np.all((x == 0) | (x == 1)):
            raise ValueError(
                f"{name}: a float mask must hold only 0 and 1 (got values "
                f"{x.min():.3g}..{x.max():.3g}); pass a boolean mask, e.g. mask > 0.5"
            )
    elif not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
        raise ValueError(f"{name}: unsupported mask dtype {x.dtype}")
    return x


def load_mask(mask: ImageInput, name: str = "mask", mask_value: int | None = None) -> np.ndarray:
    """A bool ``[H, W]`` foreground mask from a file path or an array.

    Foreground = every non-zero pixel (any channel of an RGB mask), or, with ``mask_value``,
    the pixels equal to that value (a palette index of a 'P' PNG, or a grey level). Float
    arrays must hold only 0 and 1 (a soft mask is refused: threshold it first).
    """
    if isinstance(mask, (str, os.PathLike)):
        x = _mask_from_file(mask, name)
    else:
        x = _mask_from_array(mask, name)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim not in (2, 3) or min(x.shape[:2]) < 1:
        raise ValueError(f"{name}: expected a mask [H, W], got shape {x.shape}")
    if mask_value is not None:
        if x.ndim != 2:
            raise ValueError(
                f"{name}: mask_value={mask_value} needs a single-channel (palette or grey) mask, "
                f"got {x.shape[-1]} channels"
            )
        return x == mask_value
    return np.any(x != 0, axis=-1) if x.ndim == 3 else x != 0
