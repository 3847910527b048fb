"""Segment a user's own images with a trained PANet (1-way, 1 to 5 shots).

    import panet_jax
    masks = panet_jax.predict("workdir/", ["cat1.jpg"], ["cat1.png"], ["q1.jpg", "q2.jpg"])

Preprocessing is the training/evaluation one (``panet_official.md`` Sec. 1.3): every image is
resized to ``image_size`` without keeping the aspect ratio (PIL bilinear; masks nearest), scaled
to [0, 1] and ImageNet-normalised. Support foreground = the mask; support background = the
rest of the support image (the official 1-way rule). The query's low-resolution scores are
upsampled bilinearly (PyTorch ``align_corners=False`` semantics, as the model does to 417x417)
straight to the query's *original* size and thresholded (foreground where its score beats the
background's, i.e. the 2-class argmax). Prototypes are computed once and shared by all queries.

``panet_jax.predict`` is this module made callable (``panet_jax.predict(...)`` is
:func:`predict`), so ``import panet_jax.predict`` and ``from panet_jax import predict`` both work.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from panet_jax import ops
from panet_jax.data.spec import IMAGENET_MEAN, IMAGENET_STD
from panet_jax.models.vgg import VGG16Encoder
from panet_jax.pretrained import check_encoder_params

MAX_SUPPORTS = 5
PathLike = str | os.PathLike
ImageInput = np.ndarray | PathLike


# --------------------------------------------------------------------------------------------
# Reading and preprocessing.
# --------------------------------------------------------------------------------------------


def _describe(name: str, x: Any) -> str:
    return f"{name} ({os.fspath(x)!r})" if isinstance(x, (str, os.PathLike)) else name


def _open(path: PathLike, name: str) -> Image.Image:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{name}: file {os.fspath(path)!r} does not exist")
    try:
        img = Image.open(p)
        img.load()
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"{name}: cannot read {os.fspath(path)!r} as an image ({e})") from e
    return img


def load_image(image: ImageInput, name: str = "image") -> np.ndarray:
    """An RGB uint8 ``[H, W, 3]`` array from a file path or an array.

    Files: any PIL-readable format; the EXIF orientation is applied (the image as viewers show
    it). Arrays: ``[H, W, 3]`` RGB or ``[H, W]`` grey, values in [0, 255] (uint8 preferred).
    """
    if isinstance(image, (str, os.PathLike)):
        img = _open(image, name)
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    x = np.asarray(image)
    if x.ndim == 2:
        x = np.stack([x] * 3, axis=-1)
    if x.ndim != 3 or x.shape[-1] != 3 or min(x.shape[:2]) < 1:
        raise ValueError(f"{name}: expected an RGB image [H, W, 3] or grey [H, W], got {x.shape}")
    if x.dtype != np.uint8:
        if x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 255):
            raise ValueError(f"{name}: pixel values must lie in [0, 255] (got dtype {x.dtype})")
        x = np.round(x).astype(np.uint8)
    return x


def load_mask(mask: ImageInput, name: str = "mask", mask_value: int | None = None) -> np.ndarray:
    """A bool ``[H, W]`` foreground mask from a file path or an array.

    Foreground = every non-zero pixel (any channel of an RGB mask), or, with ``mask_value``,
    the pixels equal to that value (a palette index of a 'P' PNG, or a grey level).
    """
    if isinstance(mask, (str, os.PathLike)):
        img = _open(mask, name)
        x = np.asarray(img)
        if img.mode in ("LA", "PA"):  # drop the alpha channel
            x = x[..., 0]
        elif img.mode == "RGBA":
            x = x[..., :3]
    else:
        x = np.asarray(mask)
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


def resize_image(image: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> ImageNet-normalised float32 ``[h, w, 3]`` (PIL bilinear, aspect
    ratio not kept, as the official ``Resize`` + ``ToTensorNormalize``)."""
    h, w = image_size
    x = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    return (x / 255.0 - mean) / std


def resize_mask(mask: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """bool ``[H, W]`` -> bool ``[h, w]`` (nearest)."""
    h, w = image_size
    img = Image.fromarray(mask.astype(np.uint8))
    return np.asarray(img.resize((w, h), Image.Resampling.NEAREST)) > 0


def _as_list(x: Any, name: str, single_ndim: tuple[int, ...]) -> list:
    """One input (a path, or an array whose ndim is in ``single_ndim``) or a sequence of them
    (a list, or an array stacked along axis 0) -> a list."""
    if isinstance(x, (str, os.PathLike)):
        return [x]
    if isinstance(x, np.ndarray):
        return [x] if x.ndim in single_ndim else list(x)
    if x is None:
        return []
    try:
        return list(x)
    except TypeError as e:
        raise ValueError(f"{name}: expected a file path, an array or a list of them") from e


# --------------------------------------------------------------------------------------------
# Variables and compiled functions.
# --------------------------------------------------------------------------------------------


def encoder_params(variables: Mapping[str, Any]) -> Mapping[str, Any]:
    """The encoder's params from PANet variables (``{'params': {'encoder': ...}}``), plain
    params (``{'encoder': ...}``) or encoder params (``{'conv1_1': ...}``)."""
    tree = variables.get("params", variables)
    tree = tree.get("encoder", tree)
    if "conv5_3" not in tree:
        raise ValueError(
            "variables do not hold a VGG-16 PANet encoder (expected "
            "{'params': {'encoder': {'conv1_1': ..., 'conv5_3': ...}}})"
        )
    return tree


def infer_width(params: Mapping[str, Any], width: float | None = None) -> float:
    """The encoder width multiplier that produced ``params`` (every layer's shapes checked by
    :func:`panet_jax.pretrained.check_encoder_params`).

    ``width`` given: verify it instead. ``ValueError`` on a mismatch.
    """
    if width is None:
        width = int(np.shape(params["conv5_3"]["kernel"])[-1]) / 512
    check_encoder_params(
        params, f"encoder params at width={width} (pass the width the model was trained with)",
        width,
    )  # fmt: skip
    return float(width)


@functools.lru_cache(maxsize=8)
def _compiled(width: float, scale: float):
    """Jitted ``support_prototypes`` and ``query_scores`` for one encoder width."""
    encoder = VGG16Encoder(width=width)

    def encode(params, images):
        return encoder.apply({"params": params}, images)

    @jax.jit
    def prototypes(params, images, fg):
        """images ``[K, H, W, 3]``, fg ``[K, H, W]`` -> ``[2, C]`` (bg, fg)."""
        feats = encode(params, images)[None]  # [1, K, h, w, C]
        fg = fg[None].astype(jnp.float32)
        return ops.episode_prototypes(feats, fg, 1.0 - fg)

    @jax.jit
    def scores(params, image, protos):
        """image ``[H, W, 3]`` -> low-resolution fg-minus-bg score ``[h, w]``."""
        s = ops.cosine_logits(encode(params, image[None])[0], protos, scale)
        return s[..., 1] - s[..., 0]

    return prototypes, scores


def upsample_threshold(score: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear (``align_corners=False``) upsampling of ``score [h, w]`` to ``out_hw``, then
    ``> 0``. Returns uint8 ``[H, W]`` in {0, 1}."""
    score = np.asarray(score, np.float64)
    rh = ops.bilinear_matrix(score.shape[0], out_hw[0])
    rw = ops.bilinear_matrix(score.shape[1], out_hw[1])
    return ((rh @ score @ rw.T) > 0).astype(np.uint8)


def resolve_variables(variables_or_path: Mapping[str, Any] | PathLike) -> Mapping[str, Any]:
    """Variables as given, or restored from a training workdir / checkpoint / ``.npz``."""
    if isinstance(variables_or_path, (str, os.PathLike)):
        if not Path(variables_or_path).exists():
            raise ValueError(f"checkpoint {os.fspath(variables_or_path)!r} does not exist")
        from panet_jax import checkpointing  # lazy: Orbax

        return checkpointing.load_variables(os.fspath(variables_or_path))
    return variables_or_path


# --------------------------------------------------------------------------------------------
# The API.
# --------------------------------------------------------------------------------------------


def predict(
    variables_or_path: Mapping[str, Any] | PathLike,
    support_images: ImageInput | Sequence[ImageInput],
    support_masks: ImageInput | Sequence[ImageInput],
    query_images: ImageInput | Sequence[ImageInput],
    *,
    width: float | None = None,
    image_size: tuple[int, int] = (417, 417),
    scale: float = ops.DEFAULT_SCALE,
    mask_value: int | None = None,
) -> list[np.ndarray]:
    """Segment ``query_images`` given 1-5 annotated support images of one class.

    Args:
      variables_or_path: PANet variables (``{'params': {'encoder': ...}}``) or a path accepted
        by ``checkpointing.load_variables`` (training workdir, checkpoint dir, ``.npz``).
      support_images: 1 to 5 images (paths or RGB uint8 ``[H, W, 3]`` / grey ``[H, W]``
        arrays; a list, or one image, or a ``[K, H, W, 3]`` stack).
      support_masks: one mask per support, same size as its image (paths or ``[H, W]`` arrays;
        a list, one mask, or a ``[K, H, W]`` stack); non-zero = foreground, or
        ``== mask_value`` when given (e.g. a VOC palette index).
      query_images: one or more images of any size (as ``support_images``).
      width: encoder width multiplier; ``None`` infers it from the variables (checked anyway).
      image_size: ``(height, width)`` the model sees (the training size).
      scale: cosine scaling alpha (it does not change the argmax).
    Returns:
      One uint8 ``[H_i, W_i]`` mask per query (1 = foreground) at the query's original size.
    Raises:
      ValueError: naming the argument / file: no or more than 5 supports, image and mask counts
        or sizes differ, an empty mask (also after resizing), an unreadable or missing file.
    """
    image_size = _check_size(image_size)
    sup_imgs = _as_list(support_images, "support_images", (2, 3))
    sup_masks = _as_list(support_masks, "support_masks", (2,))
    queries = _as_list(query_images, "query_images", (2, 3))
    if not 1 <= len(sup_imgs) <= MAX_SUPPORTS:
        raise ValueError(
            f"support_images: expected 1 to {MAX_SUPPORTS} support images, got {len(sup_imgs)}"
        )
    if len(sup_masks) != len(sup_imgs):
        raise ValueError(
            f"support_masks: got {len(sup_masks)} masks for {len(sup_imgs)} support images"
        )
    if not queries:
        raise ValueError("query_images: expected at least one query image, got none")

    images, masks = [], []
    for i, (img_in, mask_in) in enumerate(zip(sup_imgs, sup_masks, strict=True)):
        img_name = _describe(f"support_images[{i}]", img_in)
        mask_name = _describe(f"support_masks[{i}]", mask_in)
        img = load_image(img_in, img_name)
        mask = load_mask(mask_in, mask_name, mask_value)
        if mask.shape != img.shape[:2]:
            raise ValueError(
                f"{mask_name} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {img_name} "
                f"is {img.shape[1]}x{img.shape[0]}"
            )
        if not mask.any():
            what = f"no pixel == {mask_value}" if mask_value is not None else "no non-zero pixel"
            raise ValueError(f"{mask_name} is empty ({what}): nothing marks the object")
        small = resize_mask(mask, image_size)
        if not small.any():
            raise ValueError(
                f"{mask_name}: the object ({int(mask.sum())} px) vanishes when the mask is resized "
                f"to {image_size[1]}x{image_size[0]}; use a larger object or support image"
            )
        images.append(resize_image(img, image_size))
        masks.append(small)
    query_arrays = [
        load_image(q, _describe(f"query_images[{i}]", q)) for i, q in enumerate(queries)
    ]

    params = encoder_params(resolve_variables(variables_or_path))
    width = infer_width(params, width)
    params = jax.tree.map(np.asarray, params)  # host copy: usable next to any device layout
    prototypes_fn, scores_fn = _compiled(width, float(scale))
    protos = prototypes_fn(params, np.stack(images), np.stack(masks).astype(np.float32))
    out = []
    for q in query_arrays:
        score = scores_fn(params, resize_image(q, image_size), protos)
        out.append(upsample_threshold(np.asarray(score), q.shape[:2]))
    return out


def _check_size(image_size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError) as e:
        raise ValueError(f"image_size: expected (height, width), got {image_size!r}") from e
    if h < 1 or w < 1:
        raise ValueError(f"image_size: expected positive (height, width), got {image_size!r}")
    return h, w


class _CallableModule(types.ModuleType):
    """Lets ``panet_jax.predict(...)`` call :func:`predict` however the module was imported."""

    def __call__(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
__signature__ = inspect.signature(predict)
