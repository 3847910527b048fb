"""ImageNet ResNet-50/101 weights for :class:`panet_jax.models.resnet.ResNetEncoder`.

All readers return the encoder's Flax *variables* (float32 numpy)::

    {'params':      {'conv1': {'kernel': [7, 7, 3, 64]}, 'bn1': {'scale': [64], 'bias': [64]},
                     'layer1': {'0': {'conv1': ..., 'bn1': ..., ..., 'downsample': {'0', '1'}},
                     ...}, 'layer2': ..., 'layer3': ...},
     'batch_stats': {'bn1': {'mean': [64], 'var': [64]}, 'layer1': {'0': {'bn1': ...}}, ...}}

* torchvision ``resnet50-*.pth`` / ``resnet101-*.pth`` (e.g. ``resnet50-19c8e357.pth``,
  ``resnet101-5d3b4d8f.pth``; the IMAGENET1K_V2 files have the same keys):
  :func:`load_torchvision_resnet`. torchvision module ``a.b.c`` is the Flax path
  ``('a', 'b', 'c')``; conv ``weight`` OIHW -> ``kernel`` HWIO, BN ``weight``/``bias`` ->
  ``params`` ``scale``/``bias``, ``running_mean``/``running_var`` -> ``batch_stats``
  ``mean``/``var``; ``fc.*``, ``layer4.*`` (the encoder stops at ``layer3``) and
  ``num_batches_tracked`` are dropped. Needs PyTorch.
* A converted flat ``.npz`` (keys ``params/layer1/0/conv1/kernel``): :func:`save_npz` /
  :func:`load_npz`, to run without torch.

Every reader checks the file against the architecture (:func:`torchvision_layout`) and raises
:class:`~panet_jax.models.weights.reader.PretrainedWeightsError` naming
the file and what is wrong: not a state dict, a VGG or ResNet-18/34 file, the other depth, a
shape that belongs to another width, an unreadable (truncated) file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from panet_jax.models.resnet import (
    EXPANSION,
    RESNET_BLOCKS,
    STAGES,
    STEM_CHANNELS,
    check_depth,
    scaled_channels,
    stage_planes,
)
from panet_jax.models.weights.reader import (
    PretrainedWeightsError,
    check_file,
    read_npz,
    read_torch_state_dict,
    save_flat_npz,
    to_numpy,
)

Variables = dict[str, Any]  # {'params': nested dict, 'batch_stats': nested dict}
COLLECTIONS = ("params", "batch_stats")
SUFFIXES = {".pth": "torchvision", ".pt": "torchvision", ".npz": "npz"}
# torchvision bottleneck ResNets by blocks per stage (to name what a file holds).
KNOWN_BLOCKS: dict[tuple[int, ...], int] = {
    **{blocks: depth for depth, blocks in RESNET_BLOCKS.items()},
    (3, 8, 36, 3): 152,
}
# State-dict entries the encoder does not use: the classifier, layer4 and BN step counters.
DROPPED = re.compile(r"(fc\.|layer4\.).*|.*\.num_batches_tracked")
_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias")}
_BN_STATS = {"running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}



# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------


def torchvision_layout(depth: int, width: float = 1.0) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{torchvision module name: ('conv', OIHW weight shape) | ('bn', (C,))}`` of the
    layers the encoder builds (stem, layer1..layer3), in torchvision state-dict order."""
    blocks = RESNET_BLOCKS[check_depth(depth)]
    stem = scaled_channels(STEM_CHANNELS, width)
    layout: dict[str, tuple[str, tuple[int, ...]]] = {
        "conv1": ("conv", (stem, 3, 7, 7)),
        "bn1": ("bn", (stem,)),
    }
    c_in = stem
    for (stage, planes, _, _), n_blocks in zip(STAGES, blocks[: len(STAGES)], strict=True):
        p = stage_planes(planes, width)
        for i in range(n_blocks):
            name = f"{stage}.{i}"
            for j, (c_a, c_b, k) in enumerate(((c_in, p, 1), (p, p, 3), (p, EXPANSION * p, 1))):
                layout[f"{name}.conv{j + 1}"] = ("conv", (c_b, c_a, k, k))
                layout[f"{name}.bn{j + 1}"] = ("bn", (c_b,))
            if i == 0:
                layout[f"{name}.downsample.0"] = ("conv", (EXPANSION * p, c_in, 1, 1))
                layout[f"{name}.downsample.1"] = ("bn", (EXPANSION * p,))
            c_in = EXPANSION * p
    return layout


def torchvision_keys(depth: int, width: float = 1.0) -> dict[str, tuple[int, ...]]:
    """``{state-dict key: shape}`` the encoder reads (no ``fc``/``layer4``/
    ``num_batches_tracked``), in torchvision order."""
    keys: dict[str, tuple[int, ...]] = {}
    for module, (kind, shape) in torchvision_layout(depth, width).items():
        leaves = ("weight",) if kind == "conv" else (*_BN_LEAVES, *_BN_STATS)
        for leaf in leaves:
            keys[f"{module}.{leaf}"] = shape
    return keys


def expected_variable_shapes(depth: int, width: float = 1.0) -> Variables:
    """The encoder variables' shapes: ``{'params': {...: (7, 7, 3, 64)}, 'batch_stats':
    {...}}`` with the same nesting as ``ResNetEncoder(depth, width).init(...)`` (HWIO)."""
    flat: dict[tuple[str, ...], tuple[int, ...]] = {}
    for module, (kind, shape) in torchvision_layout(depth, width).items():
        path = tuple(module.split("."))
        if kind == "conv":
            o, i, kh, kw = shape
            flat[("params", *path, "kernel")] = (kh, kw, i, o)
        else:
            for collection, leaf in (*_BN_LEAVES.values(), *_BN_STATS.values()):
                flat[(collection, *path, leaf)] = shape
    return traverse_util.unflatten_dict(flat)


def count_blocks(keys: list[str] | tuple[str, ...]) -> tuple[int, ...]:
    """Bottleneck blocks per stage ``layer1..layer4`` found in state-dict keys."""
    counts = []
    for stage in range(1, 5):
        ids = {int(m.group(1)) for k in keys if (m := re.fullmatch(rf"layer{stage}\.(\d+)\..+", k))}
        counts.append(len(ids))
    return tuple(counts)


def describe_blocks(blocks: tuple[int, ...]) -> str:
    """``'ResNet-50'`` for known block counts, else ``'a ResNet with blocks (..)'``."""
    if blocks in KNOWN_BLOCKS:
        return f"ResNet-{KNOWN_BLOCKS[blocks]}"
    return f"a ResNet with {blocks} blocks in layer1..layer4"


# --------------------------------------------------------------------------------------------
# torchvision state dict <-> variables
# --------------------------------------------------------------------------------------------


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in np.shape(x))



def _diagnose(keys: list[str]) -> str | None:
    """Why a mapping is not a torchvision bottleneck ResNet, or None if it looks like one."""
    if any(re.fullmatch(r"features\.\d+\.weight", k) for k in keys):
        return "this is a VGG state dict ('features.*' keys), not a torchvision ResNet"
    if "conv2.weight" in keys and "bn3.weight" in keys:
        return (
            "this is a deep-stem ResNet (conv1/conv2/conv3 3x3 stem, e.g. PSPNet/PFENet "
            "resnet*_v2.pth); the encoder takes torchvision's 7x7-stem resnet50/resnet101"
        )
    if "layer1.0.conv1.weight" not in keys:
        sample = ", ".join(repr(k) for k in keys[:3])
        return f"no 'layer1.0.conv1.weight' key (first keys: {sample}): not a torchvision ResNet"
    if "layer1.0.conv3.weight" not in keys:
        return "its blocks have no conv3: a BasicBlock ResNet-18/34, not a bottleneck ResNet"
    return None


def _check_state_dict(state_dict: Mapping[str, Any], depth: int, width: float, source: str) -> None:
    """Raise :class:`PretrainedWeightsError` unless ``state_dict`` is a torchvision ResNet-``depth``
    at ``width`` (another network, the other depth, missing / unexpected keys, shapes)."""
    keys = list(state_dict.keys())
    if not all(isinstance(k, str) for k in keys):
        raise PretrainedWeightsError(f"{source}: state-dict keys must be strings")
    problem = _diagnose(keys)
    if problem:
        raise PretrainedWeightsError(f"{source}: {problem} (expected ResNet-{depth})")
    found_blocks, want_blocks = count_blocks(keys), RESNET_BLOCKS[depth]
    if found_blocks != want_blocks:
        raise PretrainedWeightsError(
            f"{source}: holds {describe_blocks(found_blocks)} (blocks per stage "
            f"{found_blocks}), but depth={depth} expects ResNet-{depth} {want_blocks}"
        )
    expected = torchvision_keys(depth, width)
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise PretrainedWeightsError(
            f"{source}: missing {len(missing)} ResNet-{depth} entries, e.g. {missing[:3]}"
        )
    unexpected = [k for k in keys if k not in expected and not DROPPED.fullmatch(k)]
    if unexpected:
        raise PretrainedWeightsError(
            f"{source}: unexpected entries for a torchvision ResNet-{depth}: {unexpected[:3]}"
        )
    for key, want in expected.items():
        found = _shape(state_dict[key])
        if found != want:
            full = torchvision_keys(depth, 1.0)[key]
            hint = " (a full-width file: use width=1.0)" if found == full and width != 1.0 else ""
            raise PretrainedWeightsError(
                f"{source}: {key!r} has shape {found}; ResNet-{depth} at width={width:g} "
                f"expects {want}{hint}"
            )


def torchvision_state_to_variables(
    state_dict: Mapping[str, Any],
    *,
    depth: int,
    width: float = 1.0,
    source: str = "<state dict>",
    dtype: Any = np.float32,
) -> Variables:
    """Convert a torchvision ResNet-``depth`` state dict (tensors or arrays) to encoder
    variables at channel multiplier ``width`` (numpy ``dtype``; float64 keeps a double state
    dict exact).

    Keys are matched by name (an optional ``module.`` prefix of a DataParallel snapshot is
    removed). Raises :class:`PretrainedWeightsError` naming ``source`` for another network, the
    other depth, a missing or unexpected key, or a shape of another width.
    """
    check_depth(depth)
    keys = list(state_dict.keys())
    if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    _check_state_dict(state_dict, depth, width, source)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for module, (kind, _) in torchvision_layout(depth, width).items():
        path = tuple(module.split("."))
        if kind == "conv":
            w = to_numpy(state_dict[f"{module}.weight"], dtype)
            flat[("params", *path, "kernel")] = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
        else:
            for leaf, (collection, name) in {**_BN_LEAVES, **_BN_STATS}.items():
                flat[(collection, *path, name)] = to_numpy(state_dict[f"{module}.{leaf}"], dtype)
    return traverse_util.unflatten_dict(flat)


def variables_to_torchvision_state(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Inverse of :func:`torchvision_state_to_variables`: ``{torchvision key: numpy array}``
    (OIHW conv weights; no ``fc``/``layer4``/``num_batches_tracked``), in torchvision order
    for the variables' depth."""
    depth = depth_of_variables(variables, "variables")
    flat = traverse_util.flatten_dict(_as_dict(variables))
    out: dict[str, np.ndarray] = {}
    for module, (kind, _) in torchvision_layout(depth, 1.0).items():
        path = tuple(module.split("."))
        if kind == "conv":
            kernel = np.asarray(flat[("params", *path, "kernel")])
            out[f"{module}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        else:
            for leaf, (collection, name) in {**_BN_LEAVES, **_BN_STATS}.items():
                out[f"{module}.{leaf}"] = np.asarray(flat[(collection, *path, name)])
    return out


def _as_dict(tree: Any) -> Any:
    """Plain nested dicts (FrozenDict / Mapping -> dict) down to the leaves."""
    if isinstance(tree, Mapping):
        return {k: _as_dict(v) for k, v in tree.items()}
    return tree


def depth_of_variables(variables: Mapping[str, Any], source: str) -> int:
    """50 or 101 from the block counts of ``layer1..layer3``; the error names ``source``."""
    try:
        blocks = tuple(len(variables["params"][stage]) for stage, *_ in STAGES)
    except (KeyError, TypeError) as e:
        raise PretrainedWeightsError(
            f"{source}: expected {{'params': {{'layer1', 'layer2', 'layer3', ...}}, "
            f"'batch_stats': ...}} ResNet encoder variables"
        ) from e
    for depth, want in RESNET_BLOCKS.items():
        if blocks == want[: len(STAGES)]:
            return depth
    raise PretrainedWeightsError(
        f"{source}: layer1..layer3 have {blocks} blocks; ResNet-50 has (3, 4, 6), "
        f"ResNet-101 (3, 4, 23)"
    )


def check_variables(
    variables: Mapping[str, Any],
    depth: int,
    width: float | None = 1.0,
    source: str = "<variables>",
) -> None:
    """Check that ``variables`` has exactly the tree and shapes of
    ``ResNetEncoder(depth, width)`` (with ``width=None`` the tree only); raises
    :class:`PretrainedWeightsError` naming ``source``."""
    want = traverse_util.flatten_dict(expected_variable_shapes(depth, width or 1.0), sep="/")
    try:
        got = traverse_util.flatten_dict(_as_dict(variables), sep="/")
    except (AttributeError, TypeError) as e:
        raise PretrainedWeightsError(f"{source}: not a nested dict of arrays") from e
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    if missing or extra:
        raise PretrainedWeightsError(
            f"{source}: not ResNet-{depth} encoder variables: missing {missing[:3]}, "
            f"unexpected {extra[:3]}"
        )
    for key, shape in want.items():
        if width is not None and _shape(got[key]) != shape:
            raise PretrainedWeightsError(
                f"{source}: {key} has shape {_shape(got[key])}; ResNet-{depth} at "
                f"width={width:g} expects {shape}"
            )


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------



def load_torchvision_resnet(path: str | os.PathLike, depth: int, width: float = 1.0) -> Variables:
    """Read a torchvision ``resnet{50,101}-*.pth`` state dict into encoder variables.

    Needs PyTorch (imported here, not at module import); the file is read with
    ``torch.load(map_location='cpu', weights_only=True)``. A ``{'state_dict': ...}`` wrapper
    is accepted. ``width`` other than 1 is for (small) test files.
    """
    path = check_file(path, "ResNet")
    check_depth(depth)
    state_dict = read_torch_state_dict(path, PretrainedWeightsError)
    return torchvision_state_to_variables(state_dict, depth=depth, width=width, source=path)


def save_npz(variables: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write encoder variables (any depth and width) as flat float32
    ``params/layer1/0/conv1/kernel`` entries."""
    check_variables(variables, depth_of_variables(variables, "save_npz"), None, "save_npz")
    flat = traverse_util.flatten_dict(_as_dict(variables), sep="/")
    save_flat_npz(flat, path)


def load_npz(
    path: str | os.PathLike, depth: int | None = None, width: float | None = 1.0
) -> Variables:
    """Read a :func:`save_npz` file. The depth is read from the file (and must equal
    ``depth`` if given); every shape must be that of the encoder at ``width`` (``None``:
    any width, the tree is still checked)."""
    path = check_file(path, "ResNet")
    arrays = read_npz(path, PretrainedWeightsError)
    flat = {tuple(key.split("/")): value for key, value in arrays.items()}
    if not flat or {k[0] for k in flat} != set(COLLECTIONS):
        raise PretrainedWeightsError(
            f"{path}: expected 'params/...' and 'batch_stats/...' entries of ResNet encoder "
            f"variables, found {sorted({k[0] for k in flat})}"
        )
    variables = traverse_util.unflatten_dict(flat)
    found = depth_of_variables(variables, path)
    if depth is not None and check_depth(depth) != found:
        raise PretrainedWeightsError(
            f"{path}: holds ResNet-{found} variables, expected ResNet-{depth}"
        )
    check_variables(variables, found, width, path)
    return variables


def load_pretrained_resnet(path: str | os.PathLike, depth: int, width: float = 1.0) -> Variables:
    """Encoder variables from ``.pth``/``.pt`` (torchvision) or ``.npz`` (converted), by
    suffix."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise PretrainedWeightsError(
            f"{path!r}: unknown weight file suffix {suffix!r}; expected one of "
            f"{sorted(SUFFIXES)} (torchvision .pth/.pt, converted .npz)"
        )
    if SUFFIXES[suffix] == "npz":
        return load_npz(path, depth, width)
    return load_torchvision_resnet(path, depth, width)


def merge_encoder_variables(
    variables: Mapping[str, Any], encoder_variables: Mapping[str, Any], name: str = "encoder"
) -> dict[str, Any]:
    """Return model ``variables`` with ``variables[c][name]`` replaced by
    ``encoder_variables[c]`` for ``c`` in params/batch_stats (cast to the existing dtypes);
    the trees and shapes must match the model's."""
    import jax
    import jax.numpy as jnp

    out = dict(variables)
    for collection in COLLECTIONS:
        try:
            current = variables[collection][name]
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"variables must hold {{{collection!r}: {{{name!r}: ...}}}} (a model with a "
                "ResNetEncoder initialised with both collections)"
            ) from e
        new = encoder_variables[collection]
        if jax.tree.structure(_as_dict(current)) != jax.tree.structure(_as_dict(new)):
            raise PretrainedWeightsError(
                f"{collection}/{name}: the weights' tree differs from the model's (depth?)"
            )

        def cast(old: Any, value: Any, collection: str = collection) -> Any:
            if _shape(old) != _shape(value):
                raise PretrainedWeightsError(
                    f"{collection}/{name}: model expects shape {_shape(old)}, weights have "
                    f"{_shape(value)} (is the model width 1.0?)"
                )
            return jnp.asarray(value, dtype=old.dtype)

        merged = dict(variables[collection])
        merged[name] = jax.tree.map(cast, _as_dict(current), _as_dict(new))
        out[collection] = merged
    return out
