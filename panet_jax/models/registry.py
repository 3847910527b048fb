"""The encoder choice (``config.model.encoder``): build it, recognise it from its variables,
read its ImageNet weights, name its layers.

* ``'vgg16'``: the official PANet encoder (:mod:`panet_jax.models.vgg`); params only.
* ``'resnet50'`` / ``'resnet101'``: torchvision bottleneck ResNets up to a dilated ``layer3``
  (:mod:`panet_jax.models.resnet`); params plus frozen ``batch_stats``.
* ``'dinov2_vit{s,b,l,g}14[_reg]'``: DINOv2 ViTs (:mod:`panet_jax.models.dinov2`), patch
  tokens of ``model.feature_layer``; params only. Weights: official ``.pth``, Hugging Face
  ``.safetensors`` or converted ``.npz`` (:mod:`panet_jax.models.weights.dinov2`).

Encoder variables are ``{'params': ..., 'batch_stats': ...}`` (``batch_stats`` only for
ResNets); inside PANet they sit under ``'encoder'`` in each collection.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from panet_jax.config import DTYPES
from panet_jax.model import PANet
from panet_jax.models import dinov2
from panet_jax.models.names import DINOV2_ENCODERS, ENCODERS, RESNET_DEPTHS
from panet_jax.models.resnet import STEM_CHANNELS, ResNetEncoder
from panet_jax.models.vgg import VGG16Encoder
from panet_jax.models.weights import reader


def build_panet(config: ml_collections.ConfigDict) -> PANet:
    """``PANet(encoder, scale)`` of ``config.model`` (encoder, width, dtype, scale)."""
    m = config.model
    if m.dtype not in DTYPES:
        raise ValueError(f"config.model.dtype={m.dtype!r}; expected one of {list(DTYPES)}")
    # Parameters stay float32 under bfloat16 compute; float64 (exactness checks) is all x64.
    dtype, param_dtype = jnp.dtype(m.dtype), jnp.float64 if m.dtype == "float64" else jnp.float32
    encoder = build_encoder(m.encoder, m.width, dtype, param_dtype, m.get("feature_layer", -1))
    return PANet(encoder=encoder, scale=m.scale, prototypes=m.get("prototypes_per_class", 1))


def build_encoder(
    name: str, width: float, dtype: Any, param_dtype: Any, feature_layer: int = -1
) -> nn.Module:
    """The encoder module ``name`` at channel multiplier ``width`` (``feature_layer``: the
    block a ViT's features come from)."""
    if name in DINOV2_ENCODERS:
        spec = dinov2.scaled_spec(dinov2.SPECS[name], width)
        return dinov2.DinoV2Encoder(spec, feature_layer, dtype=dtype, param_dtype=param_dtype)
    if name == "vgg16":
        return VGG16Encoder(width=width, dtype=dtype, param_dtype=param_dtype)
    if name in RESNET_DEPTHS:
        return ResNetEncoder(
            depth=RESNET_DEPTHS[name], width=width, dtype=dtype, param_dtype=param_dtype
        )
    raise ValueError(f"config.model.encoder={name!r}; expected one of {list(ENCODERS)}")


def identify(encoder_variables: Mapping[str, Any]) -> tuple[str, float]:
    """``(encoder name, width)`` of encoder variables (``{'params': ..., 'batch_stats': ...}``)
    from their layer names and channels; every shape is checked against that encoder's."""
    params = encoder_variables["params"]
    if "pos_embed" in params:
        from panet_jax.models.weights import dinov2 as dinov2_weights

        return dinov2_weights.identify_params(params)
    if "conv5_3" in params:
        from panet_jax.models.weights import vgg as vgg_weights

        return "vgg16", vgg_weights.encoder_width(params)
    if "layer3" in params and "conv1" in params:
        from panet_jax.models.weights import resnet as resnet_weights

        depth = resnet_weights.depth_of_variables(encoder_variables, "encoder variables")
        width = int(np.shape(params["conv1"]["kernel"])[-1]) / STEM_CHANNELS
        resnet_weights.check_variables(encoder_variables, depth, width, "encoder variables")
        return f"resnet{depth}", width
    raise ValueError(
        "variables hold neither a VGG-16 PANet encoder ({'params': {'encoder': {'conv1_1': ..., "
        "'conv5_3': ...}}}), a ResNet one ('conv1', 'layer1'..'layer3') nor a DINOv2 one "
        "('pos_embed', 'blocks_0', ...); found "
        f"{sorted(params)[:6]}"
    )


def load_weights(path: str | os.PathLike, name: str, width: float = 1.0) -> dict[str, Any]:
    """Encoder variables of ``name`` from an ImageNet / converted weight file (by suffix)."""
    if name in DINOV2_ENCODERS:
        from panet_jax.models.weights import dinov2 as dinov2_weights

        return dinov2_weights.load_dinov2(path, name, width)[2]
    if name in RESNET_DEPTHS:
        from panet_jax.models.weights import resnet as resnet_weights

        return resnet_weights.load_pretrained_resnet(path, RESNET_DEPTHS[name], width)
    from panet_jax.models.weights import vgg as vgg_weights

    return {"params": vgg_weights.load_pretrained(path, width=width)}


def read_weight_file(path: str | os.PathLike) -> dict[str, Any]:
    """Encoder variables of any weight file, the encoder recognised from its contents:
    a ResNet ``.npz`` (``params/...`` and ``batch_stats/...`` entries), a VGG-16 ``.npz``
    of any width, or ImageNet VGG-16 ``.pth`` / ``.h5`` (ResNet ``.pth`` files need
    ``config.model.encoder``: :func:`load_weights`), or DINOv2 ``.pth`` / ``.safetensors`` /
    ``.npz``."""
    from panet_jax.models.weights import vgg as vgg_weights

    if is_dinov2_file(path):
        from panet_jax.models.weights import dinov2 as dinov2_weights

        return dinov2_weights.load_dinov2(path)[2]
    if _is_resnet_npz(path):
        from panet_jax.models.weights import resnet as resnet_weights

        return resnet_weights.load_npz(path, None, None)
    return {"params": vgg_weights.load_any(path)}


def _is_resnet_npz(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ``.npz`` of ResNet encoder variables (``params/...`` entries),
    from the archive's index only (no array is read; an unreadable file is left to the
    loader, whose error names it)."""
    if not os.fspath(path).lower().endswith(".npz"):
        return False
    return any(k.startswith("params/") for k in reader.npz_keys(path))


def is_dinov2_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds DINOv2 weights, from its suffix and key names only (a ``.pth``
    is opened memory-mapped: no tensor is read; an unreadable file is left to the loader)."""
    p = os.fspath(path).lower()
    if p.endswith(".safetensors"):
        return True
    try:
        if p.endswith(".npz"):
            keys = reader.npz_keys(path)
        elif p.endswith((".pth", ".pt")):
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            obj = obj.get("state_dict", obj) if isinstance(obj, Mapping) else {}
            keys = list(obj) if isinstance(obj, Mapping) else []
        else:
            return False
    except Exception:
        return False
    return "pos_embed" in keys or any(k.removeprefix("dinov2.").startswith("embeddings.")
                                      for k in keys)  # fmt: skip
