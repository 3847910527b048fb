"""Image and label preprocessing of the official PANet loader, in NumPy + PIL (no TensorFlow).

The official test/train transform is torchvision 0.2.1 ``Resize((H, W))`` (aspect ratio not
kept; images PIL ``BILINEAR``, label / instance / scribble maps ``NEAREST``) then
``ToTensorNormalize`` (``[0, 1]`` scale, ImageNet mean / std, RGB). These functions are that
transform; the tf.data pipeline computes the same in TensorFlow (images within one grey level,
labels exactly).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, [0, 1] scale (torchvision normalisation)
IMAGENET_STD = (0.229, 0.224, 0.225)


@functools.lru_cache(maxsize=4096)
def _pil_nearest_index(in_size: int, out_size: int) -> np.ndarray:
    scale = in_size / out_size
    steps = np.full(out_size, scale)
    steps[0] = scale * 0.5
    # Pillow accumulates the source coordinate in double precision and truncates it.
    out = np.minimum(np.cumsum(steps).astype(np.int64), in_size - 1)
    out.setflags(write=False)
    return out


def pil_nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Source index of every output pixel of PIL's ``NEAREST`` resize along one axis.

    Pillow (``ImagingScaleAffine``) starts at ``0.5 * in / out`` and adds ``in / out`` per
    output pixel in double precision, truncating each sum. This differs from
    ``floor((i + 0.5) * in / out)`` (and from ``tf.image.resize``) where the exact value is an
    integer, e.g. column 20 of a 50 -> 41 resize. Hand-written (not ``Image.resize``) so that
    label maps of any integer dtype resize without a round trip through a PIL mode.
    """
    return _pil_nearest_index(int(in_size), int(out_size))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[h, w]`` integer map -> ``[H, W]``, exactly PIL's ``NEAREST`` resize (dtype kept)."""
    label = np.asarray(label)
    rows = pil_nearest_index(label.shape[0], size[0])
    cols = pil_nearest_index(label.shape[1], size[1])
    return label[rows][:, cols]


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[h, w, 3]`` uint8 RGB -> ``[H, W, 3]`` uint8, PIL ``BILINEAR`` (antialiased when
    shrinking), as torchvision 0.2.1 ``Resize`` does."""
    h, w = size
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


def normalize_image(image: np.ndarray) -> np.ndarray:
    """``[..., 3]`` RGB in ``[0, 255]`` -> ImageNet-normalised float32 (``ToTensorNormalize``)."""
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    return (np.asarray(image, np.float32) / 255.0 - mean) / std


def denormalize_image(image: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize_image`: ImageNet-normalised float -> uint8 RGB."""
    x = np.asarray(image, np.float32) * np.asarray(IMAGENET_STD, np.float32)
    x = x + np.asarray(IMAGENET_MEAN, np.float32)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
