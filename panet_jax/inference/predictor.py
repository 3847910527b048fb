"""Segmenting a user's own images with a trained PANet: ``panet_jax.predict`` (1-way, 1-5 shots).

    import panet_jax
    masks = panet_jax.predict("workdir/", ["cat1.jpg"], ["cat1.png"], ["q1.jpg", "q2.jpg"])

``experiments/segment.py`` runs this same function. Given a training workdir (or checkpoint
directory), the run's config decides how the model sees the images (``data.image_size``,
``model.width``, ``model.dtype``, ``model.scale``); explicit arguments override it.
Preprocessing is the official evaluation one (:mod:`panet_jax.data.preprocess`): resize to
``image_size`` without keeping the aspect ratio (PIL bilinear; masks nearest), ImageNet
normalisation. Support foreground = the mask; support background = the rest of the support
image (the official 1-way rule), or the given background masks (weak supports: scribbles,
boxes). The query's low-resolution scores are upsampled bilinearly (PyTorch
``align_corners=False``) straight to the query's *original* size and thresholded (foreground
where its score beats the background's: the 2-class argmax). Prototypes are
computed once and shared by all queries; with ``prototypes_per_class > 1`` (a run's
``model.prototypes_per_class``) the foreground has that many k-means prototypes and a pixel's
score is its best one's, as in the model (:func:`panet_jax.ops.multi_prototypes`).

:class:`Predictor` loads the model once and segments like ``predict`` on every call; it can
keep the features of the images it last encoded, so supports re-used across calls (the app's
clicks) are encoded once. Images are encoded one at a time: one compile per image size.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from panet_jax import ops
from panet_jax.config import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE
from panet_jax.data import preprocess
from panet_jax.inference.user_images import ImageInput, PathLike, describe, load_image, load_mask
from panet_jax.model import PANet
from panet_jax.models import dinov2

MAX_SUPPORTS = 5
DEFAULT_IMAGE_SIZE = (417, 417)  # the official input size, for weights without a run config


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """How the model sees the images: resolved from a run config and explicit arguments."""

    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
    width: float | None = None  # None: inferred from the params
    encoder: str | None = None  # None: recognised from the params
    dtype: str = "float32"
    scale: float = ops.DEFAULT_SCALE
    prototypes_per_class: int = 1


def check_image_size(image_size: Any, name: str = "image_size") -> tuple[int, int]:
    """``(H, W)`` ints within ``[MIN_IMAGE_SIDE, MAX_IMAGE_SIDE]``, or ``ValueError``."""
    try:
        h, w = (int(v) for v in image_size)
        exact = all(float(v) == int(v) for v in image_size)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected (height, width), got {image_size!r}") from e
    if not exact or not (MIN_IMAGE_SIDE <= min(h, w) and max(h, w) <= MAX_IMAGE_SIDE):
        raise ValueError(
            f"{name}: expected integer (height, width) between {MIN_IMAGE_SIDE} and "
            f"{MAX_IMAGE_SIDE}, got {image_size!r}"
        )
    return h, w


def resolve_settings(
    source: Mapping[str, Any] | PathLike,
    *,
    image_size: Sequence[int] | None = None,
    width: float | None = None,
    dtype: str | None = None,
    scale: float | None = None,
    prototypes_per_class: int | None = None,
) -> ModelSettings:
    """The settings of ``source``'s training run (when it is a workdir / checkpoint), overridden
    by the explicit arguments that are not None."""
    from panet_jax.inference import loading

    run: dict[str, Any] = {}
    if _is_dinov2(source):  # weights without a run config: the hub models' 518 x 518
        run["image_size"] = dinov2.DEFAULT_IMAGE_SIZE
    if isinstance(source, (str, os.PathLike)) and not loading.is_weight_file(source):
        config = loading.load_run_config(source)
        run = {
            "image_size": tuple(int(v) for v in config.data.image_size),
            "width": float(config.model.width),
            "encoder": str(config.model.encoder),
            "dtype": str(config.model.dtype),
            "scale": float(config.model.scale),
            "prototypes_per_class": int(config.model.get("prototypes_per_class", 1)),
        }
    given = {"image_size": image_size, "width": width, "dtype": dtype, "scale": scale,
             "prototypes_per_class": prototypes_per_class}  # fmt: skip
    merged = {**run, **{k: v for k, v in given.items() if v is not None}}
    settings = ModelSettings(**merged)
    check_image_size(settings.image_size)
    if not (np.isfinite(settings.scale) and settings.scale > 0):
        raise ValueError(f"scale: expected a positive number, got {settings.scale!r}")
    k = settings.prototypes_per_class
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"prototypes_per_class: expected an integer >= 1, got {k!r}")
    return dataclasses.replace(settings, image_size=tuple(int(v) for v in settings.image_size))


def _is_dinov2(source: Mapping[str, Any] | PathLike) -> bool:
    """Whether ``source`` is DINOv2 weights: a weight file or in-memory variables."""
    from panet_jax.inference import loading
    from panet_jax.models import registry

    if isinstance(source, (str, os.PathLike)):
        return loading.is_weight_file(source) and registry.is_dinov2_file(source)
    params = loading.as_panet_variables(source)["params"]["encoder"]
    return "pos_embed" in params


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


def load_supports(
    support_images: ImageInput | Sequence[ImageInput],
    support_masks: ImageInput | Sequence[ImageInput],
    image_size: tuple[int, int],
    mask_value: int | None = None,
    value_range: tuple[float, float] | None = None,
    bg_masks: ImageInput | Sequence[ImageInput] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images [K, H, W, 3] normalised float32, fg [K, H, W], bg [K, H, W] float32)`` at
    ``image_size``; bg is ``bg_masks`` (read like the masks) or, without them, the rest of each
    image. ``ValueError`` naming the input that is missing, unreadable, mismatched or
    degenerate."""
    images_in = _as_list(support_images, "support_images", (2, 3))
    masks_in = _as_list(support_masks, "support_masks", (2,))
    bgs_in = None if bg_masks is None else _as_list(bg_masks, "support_bg_masks", (2,))
    if not 1 <= len(images_in) <= MAX_SUPPORTS:
        raise ValueError(
            f"support_images: expected 1 to {MAX_SUPPORTS} support images, got {len(images_in)}"
        )
    for name, given in (("support_masks", masks_in), ("support_bg_masks", bgs_in)):
        if given is not None and len(given) != len(images_in):
            raise ValueError(f"{name}: got {len(given)} masks for {len(images_in)} support images")
    images, masks, bgs = [], [], []
    for i, (img_in, mask_in) in enumerate(zip(images_in, masks_in, strict=True)):
        img_name = describe(f"support_images[{i}]", img_in)
        mask_name = describe(f"support_masks[{i}]", mask_in)
        img = load_image(img_in, img_name, value_range)
        mask = load_mask(mask_in, mask_name, mask_value)
        _check_same_size(mask, mask_name, img, img_name)
        if not mask.any():
            what = f"no pixel == {mask_value}" if mask_value is not None else "no non-zero pixel"
            raise ValueError(f"{mask_name} is empty ({what}): nothing marks the object")
        small = preprocess.resize_label(mask, image_size)
        side = f"{image_size[1]}x{image_size[0]}"
        if not small.any():
            raise ValueError(
                f"{mask_name}: the object ({int(mask.sum())} px) vanishes when the mask is resized "
                f"to {side}; use a larger object or support image"
            )
        if bgs_in is None:
            bg = ~small
        else:
            bg_name = describe(f"support_bg_masks[{i}]", bgs_in[i])
            bg = load_mask(bgs_in[i], bg_name)
            _check_same_size(bg, bg_name, img, img_name)
            bg = preprocess.resize_label(bg, image_size)
        if not bg.any():
            raise ValueError(
                f"{mask_name}: no background pixel at {side} (the object covers the whole image, "
                "or the background mask is empty): PANet needs background pixels in a support "
                "to tell the object from the rest"
            )
        images.append(preprocess.normalize_image(preprocess.resize_image(img, image_size)))
        masks.append(small)
        bgs.append(bg)
    return np.stack(images), np.stack(masks).astype(np.float32), np.stack(bgs).astype(np.float32)


def _check_same_size(mask: np.ndarray, mask_name: str, img: np.ndarray, img_name: str) -> None:
    if mask.shape != img.shape[:2]:
        raise ValueError(
            f"{mask_name} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {img_name} "
            f"is {img.shape[1]}x{img.shape[0]}"
        )


@functools.lru_cache(maxsize=8)
def _compiled(model: PANet):
    """Jitted encoder, prototypes and fg-minus-bg score of one model."""

    @jax.jit
    def encode(variables, image):
        """image ``[H, W, 3]`` -> ``[h, w, C]``, at least float32 (as :meth:`PANet.features`)."""
        feats = model.encoder.apply(variables, image[None])[0]
        return feats.astype(jnp.promote_types(feats.dtype, jnp.float32))

    @jax.jit
    def prototypes(feats, fg, bg):
        """feats ``[K, h, w, C]``, fg / bg ``[K, H, W]`` -> ``(bg [C], fg [1, k, C])``."""
        feats, fg, bg = feats[None], fg[None].astype(feats.dtype), bg[None].astype(feats.dtype)
        if model.prototypes == 1:  # PANet's masked average pooling (what the model uses)
            fg_protos, bg_proto = ops.support_prototypes(feats, fg, bg)
            return bg_proto, fg_protos[:, None]
        key = jax.random.key(model.kmeans_seed)
        return ops.multi_prototypes(feats, fg, bg, model.prototypes, key)

    @jax.jit
    def scores(feats, bg, fg):
        """feats ``[h, w, C]`` -> low-resolution fg-minus-bg score ``[h, w]``."""
        s = ops.best_prototype_logits(feats, bg, fg, model.scale)
        return s[..., 1] - s[..., 0]

    return encode, prototypes, scores


def upsample_threshold(score: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear (``align_corners=False``) upsampling of ``score [h, w]`` to ``out_hw``, then
    ``> 0``. Returns uint8 ``[H, W]`` in {0, 1}."""
    score = np.asarray(score, np.float64)
    rh = ops.bilinear_matrix(score.shape[0], out_hw[0])
    rw = ops.bilinear_matrix(score.shape[1], out_hw[1])
    return ((rh @ score @ rw.T) > 0).astype(np.uint8)


def _model_and_params(
    source: Mapping[str, Any] | PathLike, settings: ModelSettings, step: int | None
) -> tuple[PANet, dict[str, Any]]:
    """The model and its encoder's variables (host copies, in the compute dtype's precision)."""
    from panet_jax.config import base_config
    from panet_jax.inference import loading
    from panet_jax.models import registry

    if isinstance(source, (str, os.PathLike)):
        variables = loading.load_variables(source, step=step)
    else:
        variables = loading.as_panet_variables(source)
    encoder = {c: tree["encoder"] for c, tree in variables.items()}
    name, width = registry.identify(encoder)
    if settings.encoder not in (None, name):
        raise ValueError(f"the run's encoder is {settings.encoder!r}, its variables hold {name}")
    config = base_config()
    config.model.encoder, config.model.width = name, settings.width or width
    config.model.dtype, config.model.scale = settings.dtype, float(settings.scale)
    config.model.prototypes_per_class = settings.prototypes_per_class
    if config.model.width != width:
        raise ValueError(
            f"width={config.model.width}: the {name} encoder params are width {width} (pass the "
            "width the model was trained with)"
        )
    cast = np.float64 if settings.dtype == "float64" else None
    encoder = jax.tree.map(lambda x: np.asarray(x, cast), encoder)  # host copy, any layout
    return registry.build_panet(config), encoder


def predict(
    source: Mapping[str, Any] | PathLike,
    support_images: ImageInput | Sequence[ImageInput],
    support_masks: ImageInput | Sequence[ImageInput],
    query_images: ImageInput | Sequence[ImageInput],
    *,
    image_size: Sequence[int] | None = None,
    width: float | None = None,
    dtype: str | None = None,
    scale: float | None = None,
    prototypes_per_class: int | None = None,
    mask_value: int | None = None,
    value_range: tuple[float, float] | None = None,
    step: int | None = None,
    support_bg_masks: ImageInput | Sequence[ImageInput] | None = None,
) -> list[np.ndarray]:
    """Segment ``query_images`` given 1-5 annotated support images of one class.

    Args:
      source: a training workdir / checkpoint directory / step directory (its run config sets
        the defaults below), a weight file (``.npz`` / ``.pth`` / ``.h5``; DINOv2 ``.pth`` /
        ``.safetensors`` / ``.npz``), or PANet variables
        (``{'params': {'encoder': ...}}``).
      support_images: 1 to 5 images (paths or RGB ``[H, W, 3]`` / grey ``[H, W]`` arrays; a
        list, one image, or a ``[K, H, W, 3]`` stack).
      support_masks: one mask per support, same size as its image (paths or ``[H, W]`` arrays);
        non-zero = foreground, or ``== mask_value`` when given (e.g. a VOC palette index).
      query_images: one or more images of any size (as ``support_images``).
      image_size: ``(height, width)`` the model sees (default: the run's ``data.image_size``;
        without a run config 417x417, or 518x518 for DINOv2 weights).
      width: encoder width multiplier (default: the run's, else inferred from the params).
      dtype: compute dtype (default: the run's ``model.dtype``, else float32).
      scale: cosine scaling alpha (default: the run's; it does not change the argmax).
      prototypes_per_class: foreground prototypes (default: the run's
        ``model.prototypes_per_class``, else 1 = PANet).
      value_range: ``(0, 1)`` or ``(0, 255)`` for float image arrays (otherwise refused).
      step: checkpoint step (default: the latest).
      support_bg_masks: one background mask per support (non-zero = background), for weak
        supports (scribbles, boxes) whose background is not the rest of the image; default:
        background = every pixel outside the support mask.
    Returns:
      One uint8 ``[H_i, W_i]`` mask per query (1 = foreground) at the query's original size.
    Raises:
      ValueError: naming the argument / file (see :mod:`panet_jax.inference.user_images`).
    """
    settings = resolve_settings(
        source, image_size=image_size, width=width, dtype=dtype, scale=scale,
        prototypes_per_class=prototypes_per_class,
    )  # fmt: skip
    supports = load_supports(support_images, support_masks, settings.image_size, mask_value,
                             value_range, support_bg_masks)  # fmt: skip
    queries = load_queries(query_images, value_range)  # every input checked before the weights
    return Predictor.from_settings(source, settings, step=step).segment(*supports, queries)


def load_queries(
    query_images: ImageInput | Sequence[ImageInput], value_range: tuple[float, float] | None = None
) -> list[np.ndarray]:
    """The query images as uint8 ``[H_i, W_i, 3]`` at their own sizes (at least one)."""
    queries = _as_list(query_images, "query_images", (2, 3))
    if not queries:
        raise ValueError("query_images: expected at least one query image, got none")
    return [
        load_image(q, describe(f"query_images[{i}]", q), value_range) for i, q in enumerate(queries)
    ]


class Predictor:
    """A model loaded once that segments like :func:`predict` on every call.

    ``Predictor(source, **settings)(support_images, support_masks, query_images, ...)`` equals
    ``predict(source, support_images, support_masks, query_images, ..., **settings)``. With
    ``cache_size > 0`` it keeps the encoder features of the last ``cache_size`` distinct images
    (keyed by their pixels at the working size), so an image seen in an earlier call (a support
    re-used across clicks, a query segmented for several classes) is not encoded again.
    Thread-safe.
    """

    def __init__(
        self,
        source: Mapping[str, Any] | PathLike,
        *,
        image_size: Sequence[int] | None = None,
        width: float | None = None,
        dtype: str | None = None,
        scale: float | None = None,
        prototypes_per_class: int | None = None,
        step: int | None = None,
        cache_size: int = 0,
    ):
        settings = resolve_settings(
            source, image_size=image_size, width=width, dtype=dtype, scale=scale,
            prototypes_per_class=prototypes_per_class,
        )  # fmt: skip
        self._load(source, settings, step, cache_size)

    @classmethod
    def from_settings(
        cls,
        source: Mapping[str, Any] | PathLike,
        settings: ModelSettings,
        *,
        step: int | None = None,
        cache_size: int = 0,
    ) -> Predictor:
        """A predictor for settings already resolved by :func:`resolve_settings`."""
        predictor = cls.__new__(cls)
        predictor._load(source, settings, step, cache_size)
        return predictor

    def _load(
        self,
        source: Mapping[str, Any] | PathLike,
        settings: ModelSettings,
        step: int | None,
        cache_size: int,
    ) -> None:
        self.settings = settings
        self.model, variables = _model_and_params(source, settings, step)
        self.variables = jax.device_put(variables)  # once, not on every encoder call
        self._encode, self._prototypes, self._scores = _compiled(self.model)
        self.cache_size = int(cache_size)
        self._cache: collections.OrderedDict[bytes, jax.Array] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._dtype = np.float64 if settings.dtype == "float64" else np.float32
        self.encoded_images = 0  # images run through the encoder so far (cache misses)

    def __call__(
        self,
        support_images: ImageInput | Sequence[ImageInput],
        support_masks: ImageInput | Sequence[ImageInput],
        query_images: ImageInput | Sequence[ImageInput],
        *,
        mask_value: int | None = None,
        value_range: tuple[float, float] | None = None,
        support_bg_masks: ImageInput | Sequence[ImageInput] | None = None,
    ) -> list[np.ndarray]:
        """One uint8 ``[H_i, W_i]`` mask per query (arguments as :func:`predict`)."""
        supports = load_supports(support_images, support_masks, self.settings.image_size,
                                 mask_value, value_range, support_bg_masks)  # fmt: skip
        return self.segment(*supports, load_queries(query_images, value_range))

    def segment(
        self, images: np.ndarray, fg: np.ndarray, bg: np.ndarray, queries: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """Masks of loaded inputs: ``images [K, H, W, 3]`` normalised, ``fg`` / ``bg``
        ``[K, H, W]`` at the working size (:func:`load_supports`); uint8 ``queries`` at their
        own sizes (:func:`load_queries`)."""
        feats = jnp.stack([self.features(image) for image in images])
        protos = self._prototypes(feats, fg.astype(self._dtype), bg.astype(self._dtype))
        out = []
        for q in queries:
            image = preprocess.normalize_image(preprocess.resize_image(q, self.settings.image_size))
            score = self._scores(self.features(image), *protos)
            out.append(upsample_threshold(np.asarray(score), q.shape[:2]))
        return out

    def features(self, image: np.ndarray) -> jax.Array:
        """Encoder features ``[h, w, C]`` of one normalised image ``[H, W, 3]`` at the working
        size (from the cache when it holds them)."""
        image = np.ascontiguousarray(image, self._dtype)
        key = hashlib.sha256(image.tobytes()).digest() + repr(image.shape).encode()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        feats = self._encode(self.variables, image)
        with self._lock:
            self.encoded_images += 1
            if self.cache_size > 0:
                self._cache[key] = feats
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return feats

    def clear_cache(self) -> None:
        """Forget every cached feature map."""
        with self._lock:
            self._cache.clear()
