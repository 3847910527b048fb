"""DINOv2 weights for :class:`panet_jax.models.dinov2.DinoV2Encoder`, from the files users get.

* The official torch-hub checkpoints ``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`` (state dicts
  with the keys of ``DinoVisionTransformer``: ``patch_embed.proj.weight``, ``blocks.0.attn.qkv``,
  ...). Reading them needs PyTorch.
* Hugging Face ``facebook/dinov2-{small,base,large,giant}[-with-registers]``
  ``model.safetensors`` (``embeddings.*``, ``encoder.layer.<i>.*``, ``layernorm.*``; separate
  query/key/value linears): mapped to the official keys. Needs the ``safetensors`` package, not
  torch.
* ``.npz``: the official state dict as NumPy arrays (what ``experiments/convert_weights.py
  --encoder=dinov2_...`` writes), read without torch.

Every format goes through one official-key state dict, checked against the architecture it
must be (or recognised from its shapes) before it becomes the Flax param tree.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from panet_jax.models.dinov2 import PATCH_SIZE, POS_GRID, SPECS, ViTSpec, ffn_hidden, scaled_spec
from panet_jax.models.weights.reader import (
    PretrainedWeightsError,
    check_file,
    read_npz,
    read_torch_state_dict,
    save_flat_npz,
    to_numpy,
)

SUFFIXES = (".pth", ".pt", ".safetensors", ".npz")
IGNORED_KEYS = ("mask_token",)  # masked-image-modelling token, unused at inference
SAFETENSORS_HINT = "reading .safetensors needs the safetensors package (pip install safetensors)"


class DinoV2WeightsError(PretrainedWeightsError):
    """A weight file that is not the DINOv2 encoder it should be."""


# --------------------------------------------------------------------------------------------
# The official layout
# --------------------------------------------------------------------------------------------


def official_shapes(spec: ViTSpec) -> dict[str, tuple[int, ...]]:
    """``{official key: torch shape}`` of ``spec`` (without ``mask_token``)."""
    c, hidden = spec.embed_dim, ffn_hidden(spec)
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, c),
        "pos_embed": (1, POS_GRID * POS_GRID + 1, c),
        "patch_embed.proj.weight": (c, 3, PATCH_SIZE, PATCH_SIZE),
        "patch_embed.proj.bias": (c,),
    }
    if spec.num_register_tokens:
        shapes["register_tokens"] = (1, spec.num_register_tokens, c)
    ffn = ({"w12": (2 * hidden, c), "w3": (c, hidden)} if spec.ffn == "swiglu"
           else {"fc1": (hidden, c), "fc2": (c, hidden)})  # fmt: skip
    for i in range(spec.depth):
        linears = {"attn.qkv": (3 * c, c), "attn.proj": (c, c),
                   **{f"mlp.{k}": v for k, v in ffn.items()}}  # fmt: skip
        for name, (out, fan_in) in linears.items():
            shapes[f"blocks.{i}.{name}.weight"] = (out, fan_in)
            shapes[f"blocks.{i}.{name}.bias"] = (out,)
        for name in ("norm1", "norm2"):
            shapes[f"blocks.{i}.{name}.weight"] = (c,)
            shapes[f"blocks.{i}.{name}.bias"] = (c,)
        shapes[f"blocks.{i}.ls1.gamma"] = (c,)
        shapes[f"blocks.{i}.ls2.gamma"] = (c,)
    shapes["norm.weight"] = (c,)
    shapes["norm.bias"] = (c,)
    return shapes


def describe(name: str, spec: ViTSpec | None = None) -> str:
    """``"dinov2_vits14 (embed dim 384, 12 blocks, MLP, no registers)"``."""
    spec = SPECS[name] if spec is None else spec
    regs = f"{spec.num_register_tokens} registers" if spec.num_register_tokens else "no registers"
    return (f"{name} (embed dim {spec.embed_dim}, {spec.depth} blocks, "
            f"{'SwiGLU' if spec.ffn == 'swiglu' else 'MLP'}, {regs})")  # fmt: skip


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in np.shape(x))


def architecture_of(state: Mapping[str, Any], source: str) -> ViTSpec:
    """The architecture an official-key state dict holds, from its shapes (any width)."""
    if "pos_embed" not in state or "cls_token" not in state:
        found = ", ".join(sorted(state)[:4]) or "nothing"
        raise DinoV2WeightsError(
            f"{source}: not a DINOv2 state dict (no 'pos_embed' / 'cls_token'; found {found}); "
            "expected an official dinov2_vit*14*_pretrain.pth, a Hugging Face facebook/dinov2-* "
            "model.safetensors or a converted .npz"
        )
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    regs = _shape(state["register_tokens"])[1] if "register_tokens" in state else 0
    ffn = "swiglu" if "blocks.0.mlp.w12.weight" in state else "mlp"
    return ViTSpec(_shape(state["cls_token"])[-1], depth, 1, ffn, regs)


def name_of(spec: ViTSpec) -> str | None:
    """The hub name of a full-size architecture (``None`` if no hub model has it)."""
    for name, hub in SPECS.items():
        same = (hub.embed_dim, hub.depth, hub.ffn, hub.num_register_tokens)
        if same == (spec.embed_dim, spec.depth, spec.ffn, spec.num_register_tokens):
            return name
    return None


def check_state(state: Mapping[str, Any], spec: ViTSpec, name: str, source: str) -> None:
    """Every key and shape of ``spec``'s official state dict, naming ``source`` otherwise."""
    found = architecture_of(state, source)
    same = (found.embed_dim, found.depth, found.ffn, found.num_register_tokens)
    if same != (spec.embed_dim, spec.depth, spec.ffn, spec.num_register_tokens):
        held = name_of(found) or "an unknown DINOv2"
        raise DinoV2WeightsError(
            f"{source}: holds {describe(held, found)}; expected {describe(name, spec)}"
        )
    want = official_shapes(spec)
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want and k not in IGNORED_KEYS]
    if missing or extra:
        raise DinoV2WeightsError(
            f"{source}: not a complete {name} state dict: missing {missing[:3]}, unexpected "
            f"{extra[:3]}"
        )
    for key, shape in want.items():
        if _shape(state[key]) != shape:
            raise DinoV2WeightsError(
                f"{source}: {key} has shape {_shape(state[key])}; {name} expects {shape}"
            )


# --------------------------------------------------------------------------------------------
# Official keys <-> Flax params
# --------------------------------------------------------------------------------------------

_LEAF = {"weight": "kernel", "bias": "bias", "gamma": "gamma"}


def _flax_path(key: str) -> tuple[tuple[str, ...], str]:
    """``(flax path, layout)`` of an official key; layout ``'linear'`` (transpose), ``'conv'``
    (OIHW -> HWIO), ``'norm'`` (weight -> scale) or ``'copy'``."""
    parts = key.split(".")
    if parts[0] in ("cls_token", "pos_embed", "register_tokens"):
        return (parts[0],), "copy"
    if parts[0] == "patch_embed":
        return ("patch_embed", _LEAF[parts[-1]]), "conv"
    if parts[0] == "norm":
        return ("norm", "scale" if parts[1] == "weight" else "bias"), "norm"
    block, sub = f"blocks_{parts[1]}", parts[2:]
    if sub[0] in ("norm1", "norm2"):
        return (block, sub[0], "scale" if sub[1] == "weight" else "bias"), "norm"
    if sub[0] in ("ls1", "ls2"):
        return (block, sub[0], "gamma"), "copy"
    return (block, sub[0], sub[1], _LEAF[sub[2]]), "linear" if sub[2] == "weight" else "copy"


def state_to_params(state: Mapping[str, Any], name: str, source: str,
                    spec: ViTSpec | None = None) -> dict[str, Any]:  # fmt: skip
    """Flax params (float32 NumPy) of an official-key state dict of ``name`` (``spec``:
    its architecture, default the hub model's)."""
    spec = SPECS[name] if spec is None else spec
    check_state(state, spec, name, source)
    params: dict[str, Any] = {}
    for key in official_shapes(spec):
        path, layout = _flax_path(key)
        value = to_numpy(state[key])
        if layout == "linear":
            value = value.T
        elif layout == "conv":
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = np.ascontiguousarray(value)
    return params


def _leaf(params: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The leaf of ``params`` at ``path``."""
    value: Any = params
    for p in path:
        value = value[p]
    return value


def params_to_state(params: Mapping[str, Any], spec: ViTSpec) -> dict[str, np.ndarray]:
    """The official-key state dict (float32 NumPy, torch layouts) of Flax params."""
    state = {}
    for key in official_shapes(spec):
        path, layout = _flax_path(key)
        value = _leaf(params, path)
        value = np.asarray(value, np.float32)
        if layout == "linear":
            value = value.T
        elif layout == "conv" and value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        state[key] = np.ascontiguousarray(value)
    return state


# --------------------------------------------------------------------------------------------
# Hugging Face keys -> official keys
# --------------------------------------------------------------------------------------------

# transformers 4.x names (the files on the Hub) and 5.x names (its in-memory modules).
_HF_RENAMES = (
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.register_tokens", "register_tokens"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.mask_token", "mask_token"),
    (r"embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"layernorm\.", "norm."),
    (r"encoder\.layer\.(\d+)\.(norm[12])\.", r"blocks.\1.\2."),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.attention\.(output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
    (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
    (r"encoder\.layer\.(\d+)\.mlp\.(weights_out|down_proj)\.", r"blocks.\1.mlp.w3."),
    (r"encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.w12."),
)
# Parts concatenated (in this order, along the output axis) into one official linear.
_HF_PARTS = (
    (r"encoder\.layer\.(\d+)\.attention\.(?:attention\.)?(query|key|value|q_proj|k_proj|v_proj)\.",
     "attn.qkv", {"query": 0, "key": 1, "value": 2, "q_proj": 0, "k_proj": 1, "v_proj": 2}),
    (r"encoder\.layer\.(\d+)\.mlp\.(gate_proj|up_proj)\.", "mlp.w12",
     {"gate_proj": 0, "up_proj": 1}),
)  # fmt: skip


def is_hf_state(state: Mapping[str, Any]) -> bool:
    """Whether a state dict uses Hugging Face's Dinov2 key names."""
    return any(k.removeprefix("dinov2.").startswith("embeddings.") for k in state)


def hf_to_official(state: Mapping[str, Any], source: str) -> dict[str, np.ndarray]:
    """The official-key state dict of a Hugging Face ``Dinov2Model`` /
    ``Dinov2WithRegistersModel`` one (a ``dinov2.`` prefix and non-backbone keys dropped)."""
    out: dict[str, np.ndarray] = {}
    parts: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for raw, value in state.items():
        key = raw.removeprefix("dinov2.")
        for pattern, official, order in _HF_PARTS:
            if m := re.match(pattern + r"(weight|bias)$", key):
                target = (f"blocks.{m.group(1)}.{official}", m.group(3))
                parts.setdefault(target, {})[order[m.group(2)]] = to_numpy(value)
                break
        else:
            for pattern, official in _HF_RENAMES:
                if re.match(pattern, key):
                    out[re.sub(pattern, official, key, count=1)] = to_numpy(value)
                    break
    for (prefix, leaf), pieces in parts.items():
        if len(pieces) != (3 if prefix.endswith("qkv") else 2):
            raise DinoV2WeightsError(f"{source}: {prefix}.{leaf} is missing some of its parts")
        out[f"{prefix}.{leaf}"] = np.concatenate([pieces[i] for i in sorted(pieces)], axis=0)
    return out


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _check_file(path: str | os.PathLike) -> str:
    path = check_file(path, "DINOv2")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise DinoV2WeightsError(
            f"{path}: unknown suffix {suffix!r}; expected one of {list(SUFFIXES)} (official "
            ".pth, Hugging Face model.safetensors, converted .npz)"
        )
    return path


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ImportError as e:
        raise ImportError(f"cannot read {path!r}: {SAFETENSORS_HINT}") from e
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise DinoV2WeightsError(
            f"{path}: not a readable .safetensors file, truncated or corrupt? ({e})"
        ) from e


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """The official-key state dict in a ``.pth`` / ``.pt``, ``.safetensors`` or ``.npz``
    (Hugging Face names mapped)."""
    path = _check_file(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        state: Mapping[str, Any] = _read_safetensors(path)
    elif suffix == ".npz":
        state = read_npz(path, DinoV2WeightsError)
    else:
        state = read_torch_state_dict(path, DinoV2WeightsError)
    return hf_to_official(state, path) if is_hf_state(state) else dict(state)


def match_hub(spec: ViTSpec, name: str | None = None) -> tuple[str, float] | None:
    """``(hub name, width)`` whose :func:`~panet_jax.models.dinov2.scaled_spec` has the
    shapes of ``spec`` (only ``name`` when given), widest first: a ViT-B at width w has the
    shapes of a ViT-S at 2w and is read as the ViT-S. ``None`` if none has."""
    for hub_name, hub in SPECS.items():
        if name is not None and hub_name != name:
            continue
        if (hub.depth, hub.ffn, hub.num_register_tokens) != (
            spec.depth, spec.ffn, spec.num_register_tokens):  # fmt: skip
            continue
        head_dim, rem = divmod(spec.embed_dim, hub.num_heads)
        width = head_dim / (hub.embed_dim // hub.num_heads)
        if rem == 0 and 0 < width <= 1:
            return hub_name, width
    return None


def load_dinov2(
    path: str | os.PathLike, name: str | None = None, width: float | None = None
) -> tuple[str, float, dict[str, Any]]:
    """``(encoder name, width, {'params': ...})`` of a DINOv2 weight file. With ``name`` (and
    ``width``) given the file must hold that model: a ViT-S file given as ViT-B is refused,
    naming both; the published weights are width 1, smaller widths are for tests."""
    state = read_state(path)
    source = os.fspath(path)
    found = architecture_of(state, source)
    match = match_hub(found, name)
    if match is None or (width is not None and match[1] != width):
        held = match_hub(found)
        held_str = describe(*held[:1], found) if held else describe("an unknown DINOv2", found)
        want = (describe(name, scaled_spec(SPECS[name], width or 1.0)) if name in SPECS
                else f"one of {sorted(SPECS)}")  # fmt: skip
        raise DinoV2WeightsError(f"{source}: holds {held_str}; expected {want}")
    name, width = match
    spec = scaled_spec(SPECS[name], width)
    return name, width, {"params": state_to_params(state, name, source, spec)}


def save_npz(params: Mapping[str, Any], spec: ViTSpec, path: str | os.PathLike) -> None:
    """Write Flax params as the official state dict in an ``.npz`` (float32, torch layouts)."""
    save_flat_npz(params_to_state(params, spec), path)


def identify_params(params: Mapping[str, Any]) -> tuple[str, float]:
    """``(hub name, width)`` of DINOv2 Flax params (see :func:`match_hub`); every shape is
    checked against that model's."""
    spec = architecture_of(params_to_state_keys(params), "encoder params")
    match = match_hub(spec)
    if match is None:
        raise DinoV2WeightsError(f"encoder params: no hub DINOv2 model has {describe('a', spec)}")
    try:
        state = _state_shapes(params, spec)
    except (KeyError, TypeError) as e:
        raise DinoV2WeightsError(f"encoder params: {match[0]} entry missing: {e}") from e
    check_state(state, scaled_spec(SPECS[match[0]], match[1]), match[0], "encoder params")
    return match


def _state_shapes(params: Mapping[str, Any], spec: ViTSpec) -> dict[str, Any]:
    """:func:`params_to_state` as shapes only (nothing copied to the host)."""
    out = {}
    for key in official_shapes(spec):
        path, layout = _flax_path(key)
        value = _leaf(params, path)
        shape = _shape(value)
        if layout == "linear" or (layout == "conv" and len(shape) == 4):
            shape = shape[::-1] if layout == "linear" else tuple(shape[i] for i in (3, 2, 0, 1))
        out[key] = types.SimpleNamespace(shape=shape)
    return out


def params_to_state_keys(params: Mapping[str, Any]) -> dict[str, Any]:
    """The official keys the shapes of ``params`` give (for :func:`architecture_of`)."""
    out = {"cls_token": _shape(params["cls_token"]), "pos_embed": _shape(params["pos_embed"])}
    if "register_tokens" in params:
        out["register_tokens"] = _shape(params["register_tokens"])
    for key in params:
        if key.startswith("blocks_"):
            ffn = "w12" if "w12" in params[key]["mlp"] else "fc1"
            out[f"blocks.{key[7:]}.mlp.{ffn}.weight"] = ()
    return {k: types.SimpleNamespace(shape=v) for k, v in out.items()}  # np.shape reads .shape
