"""A PyTorch DINOv2 reference for the tests: transformers' ``Dinov2Model`` /
``Dinov2WithRegistersModel`` loaded from an official-key state dict.

transformers' blocks, norms, LayerScale, MLP / SwiGLU and register handling are the official
ones. Its position-embedding resampling is not, in two ways, and :func:`build_reference`
replaces it with the official ``interpolate_pos_encoding`` restated below:

* ``Dinov2Model`` resamples to the grid *size* (``size=(gh, gw)``), while the official
  ``dinov2_vit*14`` models pass ``scale_factor=(g + 0.1) / 37``, which also moves the sample
  positions (PyTorch maps coordinates with the given factor); ``Dinov2WithRegistersModel``
  (size, antialias) is the official ``_reg`` rule.
* Both, like the official code, resample in float32 whatever the model's dtype; the restatement
  keeps the model's dtype, so a float64 reference is float64 throughout.

Needs torch and transformers (the ``test`` extra); imported only by tests.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from panet_jax.models.dinov2 import PATCH_SIZE, POS_GRID, ViTSpec


def official_interpolate_pos_encoding(
    pos_embed: torch.Tensor, h: int, w: int, offset: float, antialias: bool
) -> torch.Tensor:
    """``DinoVisionTransformer.interpolate_pos_encoding`` for an ``h x w`` image, in the dtype
    of ``pos_embed [1, 1 + M * M, C]`` (the official code casts to float32 first)."""
    n = pos_embed.shape[1] - 1
    gh, gw = h // PATCH_SIZE, w // PATCH_SIZE
    if gh * gw == n and h == w:
        return pos_embed
    m = int(math.sqrt(n))
    kwargs: dict = {}
    if offset:
        kwargs["scale_factor"] = (float(gh + offset) / m, float(gw + offset) / m)
    else:
        kwargs["size"] = (gh, gw)
    grid = pos_embed[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(grid, mode="bicubic", antialias=antialias, **kwargs)
    assert patch.shape[-2:] == (gh, gw)
    patch = patch.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
    return torch.cat([pos_embed[:, :1], patch], dim=1)


# Official key -> transformers 5 module key (qkv / w12 split below).
_TO_HF = (
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^register_tokens$", "embeddings.register_tokens"),
    (r"^pos_embed$", "embeddings.position_embeddings"),
    (r"^mask_token$", "embeddings.mask_token"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^norm\.", "layernorm."),
    (r"^blocks\.(\d+)\.(norm[12])\.", r"encoder.layer.\1.\2."),
    (r"^blocks\.(\d+)\.ls([12])\.gamma$", r"encoder.layer.\1.layer_scale\2.lambda1"),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layer.\1.attention.o_proj."),
    (r"^blocks\.(\d+)\.mlp\.(fc[12])\.", r"encoder.layer.\1.mlp.\2."),
    (r"^blocks\.(\d+)\.mlp\.w3\.", r"encoder.layer.\1.mlp.down_proj."),
)
# The same for the files on the Hugging Face Hub (transformers 4 names).
_TO_HUB = (
    *_TO_HF[:6],
    (r"^blocks\.(\d+)\.(norm[12])\.", r"encoder.layer.\1.\2."),
    (r"^blocks\.(\d+)\.ls([12])\.gamma$", r"encoder.layer.\1.layer_scale\2.lambda1"),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^blocks\.(\d+)\.mlp\.(fc[12])\.", r"encoder.layer.\1.mlp.\2."),
    (r"^blocks\.(\d+)\.mlp\.w3\.", r"encoder.layer.\1.mlp.weights_out."),
    (r"^blocks\.(\d+)\.mlp\.w12\.", r"encoder.layer.\1.mlp.weights_in."),
)


def _rename(state: Mapping[str, np.ndarray], table, split: dict) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state.items():
        if m := re.match(r"^blocks\.(\d+)\.(attn\.qkv|mlp\.w12)\.(weight|bias)$", key):
            if m.group(2) in split:
                names = split[m.group(2)]
                for name, part in zip(names, np.split(np.asarray(value), len(names)), strict=True):
                    out[f"encoder.layer.{m.group(1)}.{name}.{m.group(3)}"] = part
                continue
        for pattern, repl in table:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = np.asarray(value)
                break
        else:
            raise KeyError(f"no Hugging Face name for {key!r}")
    return out


def official_to_hf(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers 5 ``Dinov2Model`` keys of an official state dict."""
    split = {"attn.qkv": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
             "mlp.w12": ("mlp.gate_proj", "mlp.up_proj")}  # fmt: skip
    return _rename(state, _TO_HF, split)


def official_to_hub_file(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The keys of a Hub ``facebook/dinov2-*`` ``model.safetensors`` for an official state
    dict (transformers 4 names: ``attention.attention.query``, ``mlp.weights_in``)."""
    split = {"attn.qkv": ("attention.attention.query", "attention.attention.key",
                          "attention.attention.value")}  # fmt: skip
    return _rename(state, _TO_HUB, split)


def hf_config(spec: ViTSpec):
    """The transformers config of ``spec`` (hub layout: 518 px, LayerScale 1, eps 1e-6)."""
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    kw = dict(hidden_size=spec.embed_dim, num_hidden_layers=spec.depth,
              num_attention_heads=spec.num_heads, mlp_ratio=int(spec.mlp_ratio),
              image_size=POS_GRID * PATCH_SIZE, patch_size=PATCH_SIZE, layerscale_value=1.0,
              layer_norm_eps=1e-6, use_swiglu_ffn=spec.ffn == "swiglu", qkv_bias=True)  # fmt: skip
    if spec.num_register_tokens:
        return Dinov2WithRegistersConfig(num_register_tokens=spec.num_register_tokens, **kw)
    return Dinov2Config(**kw)


def build_reference(
    spec: ViTSpec, state: Mapping[str, np.ndarray], dtype: torch.dtype = torch.float64,
    official_interpolation: bool = True,
) -> torch.nn.Module:  # fmt: skip
    """transformers' DINOv2 of ``spec`` holding the official-key ``state``, in ``dtype``, in eval
    mode; with ``official_interpolation`` its position-embedding resampling is the official
    one (module docstring)."""
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    cls = Dinov2WithRegistersModel if spec.num_register_tokens else Dinov2Model
    model = cls(hf_config(spec)).to(dtype).eval()
    weights = {k: torch.as_tensor(v, dtype=dtype) for k, v in official_to_hf(state).items()}
    weights.setdefault("embeddings.mask_token", torch.zeros(1, spec.embed_dim, dtype=dtype))
    model.load_state_dict(weights, strict=True)
    if official_interpolation:
        emb = model.embeddings

        def interpolate(embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
            return official_interpolate_pos_encoding(
                emb.position_embeddings, height, width, spec.interpolate_offset,
                spec.interpolate_antialias,
            )  # fmt: skip

        emb.interpolate_pos_encoding = interpolate
    return model


@torch.no_grad()
def reference_features(
    model: torch.nn.Module, images_nhwc: np.ndarray, layer: int = -1
) -> np.ndarray:
    """``get_intermediate_layers(n=[layer], norm=True)`` patch tokens as ``[B, gh, gw, C]``."""
    x = torch.as_tensor(np.asarray(images_nhwc).transpose(0, 3, 1, 2),
                        dtype=next(model.parameters()).dtype)  # fmt: skip
    out = model(pixel_values=x, output_hidden_states=True)
    depth = model.config.num_hidden_layers
    tokens = model.layernorm(out.hidden_states[layer % depth + 1])
    regs = getattr(model.config, "num_register_tokens", 0)
    b, _, h, w = x.shape
    return tokens[:, 1 + regs :].reshape(b, h // PATCH_SIZE, w // PATCH_SIZE, -1).numpy()
