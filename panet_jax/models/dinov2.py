"""DINOv2 vision transformers (Oquab et al., 2023) as PANet encoders, in Flax.

The architecture of facebookresearch/dinov2 (``dinov2/models/vision_transformer.py``,
``dinov2/layers``) as its torch-hub constructors (``dinov2/hub/backbones.py``) build it:
patch-14 embedding, a class token, optional register tokens (inserted after the position
embedding is added, so they carry none), pre-norm blocks with LayerScale, a GELU MLP (ViT-S/B/L)
or the fused SwiGLU FFN (ViT-g), and a final LayerNorm (``eps=1e-6``). Position embeddings are
stored for a ``37 x 37`` grid (518 px) and resampled for other inputs exactly as the official
``interpolate_pos_encoding``: bicubic with ``scale_factor = (g + 0.1) / 37`` and no antialias for
the original models, bicubic to the grid size with antialias for the ``_reg`` ones.

The encoder returns ``get_intermediate_layers(n=[feature_layer], norm=True)``: the patch tokens
of one block after the final norm, as ``[B, H/14, W/14, C]``. Param names follow the official
state-dict keys (``patch_embed``, ``cls_token``, ``pos_embed``, ``register_tokens``,
``blocks_<i>``, ``norm``); the official ``mask_token`` (masked-image training only) is not kept.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from panet_jax.models.interpolation import bicubic_matrix
from panet_jax.models.vgg import torch_default_bias_init

PATCH_SIZE = 14
POS_GRID = 37  # the hub models' img_size=518 -> 37 x 37 stored position embeddings
DEFAULT_IMAGE_SIZE = (POS_GRID * PATCH_SIZE,) * 2  # 518 x 518: stored embeddings used as is
LAYER_NORM_EPS = 1e-6
LAYER_SCALE_INIT = 1.0  # the hub models' init_values
NUM_REGISTERS = 4


@dataclasses.dataclass(frozen=True)
class ViTSpec:
    """One hub architecture (``dinov2/hub/backbones.py`` + ``vision_transformer.vit_*``)."""

    embed_dim: int
    depth: int
    num_heads: int
    ffn: str = "mlp"  # 'mlp' | 'swiglu' (SwiGLUFFNFused)
    num_register_tokens: int = 0
    interpolate_antialias: bool = False
    interpolate_offset: float = 0.1
    mlp_ratio: float = 4.0


_ARCHS = {
    "vits14": ViTSpec(384, 12, 6),
    "vitb14": ViTSpec(768, 12, 12),
    "vitl14": ViTSpec(1024, 24, 16),
    "vitg14": ViTSpec(1536, 40, 24, ffn="swiglu"),
}
# The _reg models: 4 registers, antialiased resampling to the grid size (no offset).
_REG = {"num_register_tokens": NUM_REGISTERS, "interpolate_antialias": True,
        "interpolate_offset": 0.0}  # fmt: skip
SPECS: dict[str, ViTSpec] = {
    **{f"dinov2_{a}": s for a, s in _ARCHS.items()},
    **{f"dinov2_{a}_reg": dataclasses.replace(s, **_REG) for a, s in _ARCHS.items()},
}


def scaled_spec(spec: ViTSpec, width: float) -> ViTSpec:
    """``spec`` with ``embed_dim`` scaled by ``width`` (head count kept, head size >= 1): for
    small random-init models in tests; the published weights are width 1."""
    head_dim = max(1, round(spec.embed_dim // spec.num_heads * width))
    return dataclasses.replace(spec, embed_dim=head_dim * spec.num_heads)


def ffn_hidden(spec: ViTSpec) -> int:
    """FFN hidden size: ``mlp_ratio * dim``; SwiGLUFFNFused rounds 2/3 of it up to 8."""
    hidden = int(spec.embed_dim * spec.mlp_ratio)
    if spec.ffn == "swiglu":
        return (int(hidden * 2 / 3) + 7) // 8 * 8
    return hidden


def pos_embed_grid(
    spec: ViTSpec, image_hw: tuple[int, int], stored_grid: int = POS_GRID
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(R_h [gh, M], R_w [gw, M])`` resampling the stored ``M x M`` patch position
    embeddings to the ``gh x gw`` grid of an ``H x W`` image (official
    ``interpolate_pos_encoding``), or ``None`` where the official code uses them as stored
    (``gh * gw == M * M`` and ``H == W``)."""
    h, w = image_hw
    gh, gw = h // PATCH_SIZE, w // PATCH_SIZE
    if gh * gw == stored_grid * stored_grid and h == w:
        return None
    aa = spec.interpolate_antialias
    if spec.interpolate_offset:
        sh = (gh + spec.interpolate_offset) / stored_grid
        sw = (gw + spec.interpolate_offset) / stored_grid
        return bicubic_matrix(stored_grid, gh, sh, aa), bicubic_matrix(stored_grid, gw, sw, aa)
    return bicubic_matrix(stored_grid, gh, None, aa), bicubic_matrix(stored_grid, gw, None, aa)


def _dense(features: int, name: str, dtype: Any, param_dtype: Any) -> nn.Dense:
    """``nn.Linear`` as the official ``init_weights_vit_timm``: trunc-normal(0.02), zero bias."""
    return nn.Dense(features, name=name, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=nn.initializers.truncated_normal(0.02))  # fmt: skip


class Attention(nn.Module):
    """Multi-head self-attention on ``[B, T, C]`` tokens (``qkv`` and ``proj`` linears)."""

    num_heads: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, c = x.shape
        qkv = _dense(3 * c, "qkv", self.dtype, self.param_dtype)(x)
        q, k, v = jnp.moveaxis(qkv.reshape(b, t, 3, self.num_heads, c // self.num_heads), 2, 0)
        # softmax(q k^T / sqrt(head_dim)) v, the softmax in at least float32 (by hand:
        # jax.nn.dot_product_attention rounds float64 logits to float32).
        acc = jnp.promote_types(q.dtype, jnp.float32)  # bfloat16 inputs: float32 logits
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=acc)
        probs = jax.nn.softmax(logits * (c // self.num_heads) ** -0.5, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
        return _dense(c, "proj", self.dtype, self.param_dtype)(out.reshape(b, t, c))


class FFN(nn.Module):
    """``Mlp`` (``fc1``, exact GELU, ``fc2``) or ``SwiGLUFFNFused`` (``w12`` split into
    ``x1, x2``; ``w3(silu(x1) * x2)``)."""

    spec: ViTSpec
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, hidden = x.shape[-1], ffn_hidden(self.spec)
        if self.spec.ffn == "swiglu":
            x1, x2 = jnp.split(_dense(2 * hidden, "w12", self.dtype, self.param_dtype)(x), 2, -1)
            return _dense(c, "w3", self.dtype, self.param_dtype)(jax.nn.silu(x1) * x2)
        x = jax.nn.gelu(_dense(hidden, "fc1", self.dtype, self.param_dtype)(x), approximate=False)
        return _dense(c, "fc2", self.dtype, self.param_dtype)(x)


class LayerScale(nn.Module):
    """``x * gamma`` (``gamma [C]``, initialised to the hub models' 1.0)."""

    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.constant(LAYER_SCALE_INIT)
        gamma = self.param("gamma", init, (x.shape[-1],), self.param_dtype)
        return x * gamma.astype(x.dtype)


class Block(nn.Module):
    """``NestedTensorBlock`` at inference: ``x + ls1(attn(norm1(x)))``, then
    ``x + ls2(mlp(norm2(x)))``, on ``[B, T, C]`` tokens."""

    spec: ViTSpec
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        h = nn.LayerNorm(LAYER_NORM_EPS, name="norm1", **kw)(x)
        h = Attention(self.spec.num_heads, name="attn", **kw)(h)
        x = x + LayerScale(self.param_dtype, name="ls1")(h)
        h = nn.LayerNorm(LAYER_NORM_EPS, name="norm2", **kw)(x)
        h = FFN(self.spec, name="mlp", **kw)(h)
        return x + LayerScale(self.param_dtype, name="ls2")(h)


class DinoV2Encoder(nn.Module):
    """DINOv2 ViT encoder: ``[B, H, W, 3]`` ImageNet-normalised RGB (``H, W`` multiples of 14)
    -> ``[B, H/14, W/14, C]`` patch features of block ``feature_layer`` after the final norm.

    Attributes:
      spec: the architecture (:data:`SPECS`, or :func:`scaled_spec` of one).
      feature_layer: block whose tokens are returned (``-1``: the last, ``forward_features``);
        later blocks keep their params (the weight files hold them) but are not computed.
      dtype: compute dtype; param_dtype: params (float32; float64 for exactness checks).
    """

    spec: ViTSpec
    feature_layer: int = -1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def out_channels(self) -> int:
        return self.spec.embed_dim

    def _tokens(self, images: jax.Array) -> jax.Array:
        """``prepare_tokens_with_masks`` (no masks): ``[B, 1 + R + gh * gw, C]``."""
        b, h, w, _ = images.shape
        c, r = self.spec.embed_dim, self.spec.num_register_tokens
        x = nn.Conv(c, (PATCH_SIZE, PATCH_SIZE), strides=PATCH_SIZE, padding="VALID",
                    dtype=self.dtype, param_dtype=self.param_dtype, name="patch_embed",
                    kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                    bias_init=torch_default_bias_init(3 * PATCH_SIZE**2))(images)  # fmt: skip
        x = x.reshape(b, -1, c)
        cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, c), self.param_dtype)
        pos = self.param("pos_embed", nn.initializers.truncated_normal(0.02),
                         (1, POS_GRID * POS_GRID + 1, c), self.param_dtype)  # fmt: skip
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, c)), x], axis=1)
        x = x + self._position_embedding(pos, (h, w)).astype(x.dtype)
        if r:
            regs = self.param("register_tokens", nn.initializers.normal(1e-6), (1, r, c),
                              self.param_dtype)  # fmt: skip
            regs = jnp.broadcast_to(regs.astype(x.dtype), (b, r, c))
            x = jnp.concatenate([x[:, :1], regs, x[:, 1:]], axis=1)
        return x

    def _position_embedding(self, pos: jax.Array, image_hw: tuple[int, int]) -> jax.Array:
        """The stored ``[1, 1 + M * M, C]`` embeddings for an ``H x W`` input (resampled in
        the param dtype; the official code resamples in float32 whatever the model's dtype)."""
        mats = pos_embed_grid(self.spec, image_hw)
        if mats is None:
            return pos
        rh, rw = (jnp.asarray(m, pos.dtype) for m in mats)
        grid = pos[0, 1:].reshape(POS_GRID, POS_GRID, -1)
        patch = jnp.einsum("hi,wj,ijc->hwc", rh, rw, grid, precision=jax.lax.Precision.HIGHEST)
        return jnp.concatenate([pos[:, :1], patch.reshape(1, -1, pos.shape[-1])], axis=1)

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        b, h, w, _ = images.shape
        if h % PATCH_SIZE or w % PATCH_SIZE:
            raise ValueError(
                f"DINOv2 input {h}x{w}: height and width must be multiples of the patch size "
                f"{PATCH_SIZE} (e.g. 518 = 37 x 14)"
            )
        depth = self.spec.depth
        layer = self.feature_layer % depth if -depth <= self.feature_layer < depth else None
        if layer is None:
            raise ValueError(f"feature_layer={self.feature_layer}: expected -{depth}..{depth - 1}")
        x = self._tokens(images.astype(self.dtype))
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        blocks = [Block(self.spec, name=f"blocks_{i}", **kw) for i in range(depth)]
        for block in blocks[: layer + 1]:
            x = block(x)
        if self.is_initializing():  # create every block's params (the weight files hold them)
            for block in blocks[layer + 1 :]:
                block(x)
        x = nn.LayerNorm(LAYER_NORM_EPS, name="norm", **kw)(x)
        x = x[:, 1 + self.spec.num_register_tokens :]
        x = x.reshape(b, h // PATCH_SIZE, w // PATCH_SIZE, -1)
        return x.astype(jnp.promote_types(self.dtype, jnp.float32))


EMBEDDING_PARAMS = ("patch_embed", "cls_token", "pos_embed", "register_tokens")


def param_groups(spec: ViTSpec) -> tuple[str, ...]:
    """Top-level param names of the encoder, in forward order."""
    embed = EMBEDDING_PARAMS if spec.num_register_tokens else EMBEDDING_PARAMS[:3]
    return (*embed, *(f"blocks_{i}" for i in range(spec.depth)), "norm")


def frozen_groups(spec: ViTSpec, frozen: str) -> tuple[str, ...]:
    """The top-level params ``config.model.frozen`` names for a ViT: ``'all'``, or a comma list
    of ``patch_embed`` (the patch, class, register and position embeddings), ``blocks_<i>``,
    ``blocks_<i>-<j>`` (``i..j`` inclusive) and ``norm``; ``ValueError`` naming the item."""
    groups = param_groups(spec)
    if frozen.strip() == "all":
        return groups
    out: list[str] = []
    for item in (v.strip() for v in frozen.split(",") if v.strip()):
        if item == "patch_embed":
            out += [g for g in groups if g in EMBEDDING_PARAMS]
        elif item == "norm":
            out.append("norm")
        elif m := re.fullmatch(r"blocks_(\d+)(?:-(\d+))?", item):
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if not lo <= hi < spec.depth:
                raise ValueError(
                    f"config.model.frozen={frozen!r}: {item!r} is outside blocks_0-{spec.depth - 1}"
                )
            out += [f"blocks_{i}" for i in range(lo, hi + 1)]
        else:
            raise ValueError(
                f"config.model.frozen={frozen!r}: {item!r} is not a ViT part; expected '', 'all' "
                f"or a comma list of patch_embed, blocks_<i>, blocks_<i>-<j> (0..{spec.depth - 1}),"
                " norm"
            )
    return tuple(dict.fromkeys(out))
