"""ImageNet VGG-16 weights for the PANet encoder (:class:`panet_jax.models.vgg.VGG16Encoder`).

Sources, all returning the same *encoder param tree*
``{'conv1_1': {'kernel': [3, 3, I, O], 'bias': [O]}, ..., 'conv5_3': {...}}`` (float32 numpy):

* torchvision ``vgg16-397923af.pth`` (what the official PANet loads):
  :func:`load_torchvision_vgg16`. Reading it needs PyTorch; convert it once with
  ``experiments/convert_weights.py`` to use it without torch.
* Keras ``vgg16_weights_tf_dim_ordering_tf_kernels(_notop).h5``: :func:`load_keras_vgg16_h5`
  (different numbers, different input convention, see there).
* A converted ``.npz`` (flat ``conv1_1/kernel`` keys): :func:`save_npz` / :func:`load_npz`.

:func:`load_pretrained` dispatches on the file suffix and :func:`merge_encoder_params` puts
the result into model variables ``{'params': {'encoder': ...}}``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from panet_jax.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from panet_jax.models.vgg import VGG16_LAYERS, scaled_channels
from panet_jax.models.weights.reader import (
    PretrainedWeightsError,
    check_file,
    read_npz,
    read_torch_state_dict,
    save_flat_npz,
    to_numpy,
)

EncoderParams = dict[str, dict[str, np.ndarray]]

# torchvision ``vgg16().features`` indices of the 13 convs (the official positional mapping
# copies the first 26 state-dict entries, i.e. these weights and biases, in order).
TORCHVISION_CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
CONV_NAMES: tuple[str, ...] = tuple(name for name, _, _ in VGG16_LAYERS)
# Keras layer names, in the same order as CONV_NAMES.
KERAS_LAYER_NAMES: tuple[str, ...] = tuple(f"block{name[4]}_conv{name[6]}" for name in CONV_NAMES)
# ImageNet normalisation used by our input pipeline (RGB, [0, 1] scale) and the Caffe BGR means
# (0-255 scale) that the Keras VGG16 weights expect (``preprocess_input(mode='caffe')``).
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float64)

SUFFIXES = {".pth": "torchvision", ".pt": "torchvision", ".h5": "keras", ".npz": "npz"}



def vgg16_param_shapes(width: float = 1.0) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``{name: (kernel HWIO shape, bias shape)}`` of the encoder at channel multiplier
    ``width``."""
    shapes = {}
    in_ch = 3
    for name, ch, _ in VGG16_LAYERS:
        out_ch = scaled_channels(ch, width)
        shapes[name] = ((3, 3, in_ch, out_ch), (out_ch,))
        in_ch = out_ch
    return shapes


def count_params(params: Mapping[str, Mapping[str, Any]]) -> int:
    """Total number of scalars in an encoder param tree."""
    return int(sum(np.size(v) for layer in params.values() for v in layer.values()))



def check_encoder_params(
    params: Mapping[str, Mapping[str, Any]], source: str, width: float | None = 1.0
) -> None:
    """Check that ``params`` has exactly the 13 VGG-16 convs with kernel/bias.

    With ``width`` given the shapes must be those of the encoder at that width; with
    ``width=None`` only the layer structure (HWIO 3x3 kernels, chained channels) is checked.
    Raises :class:`PretrainedWeightsError` naming ``source``.
    """
    names = set(params)
    if names != set(CONV_NAMES):
        missing, extra = sorted(set(CONV_NAMES) - names), sorted(names - set(CONV_NAMES))
        raise PretrainedWeightsError(
            f"{source}: expected the 13 VGG-16 conv layers {list(CONV_NAMES)}, "
            f"missing {missing}, unexpected {extra}"
        )
    expected = vgg16_param_shapes(width) if width is not None else None
    in_ch = 3
    for name in CONV_NAMES:
        layer = params[name]
        if set(layer) != {"kernel", "bias"}:
            raise PretrainedWeightsError(
                f"{source}: layer {name} has entries {sorted(layer)}; expected ['bias', 'kernel']"
            )
        k, b = tuple(np.shape(layer["kernel"])), tuple(np.shape(layer["bias"]))
        if expected is not None:
            want = expected[name]
        else:
            out_ch = k[-1] if len(k) == 4 else -1
            want = ((3, 3, in_ch, out_ch), (out_ch,))
        if (k, b) != want:
            raise PretrainedWeightsError(
                f"{source}: {name} has kernel {k} and bias {b}; expected kernel {want[0]} "
                f"and bias {want[1]} (HWIO)"
            )
        in_ch = k[-1]


# --------------------------------------------------------------------------------------------
# torchvision .pth
# --------------------------------------------------------------------------------------------


def _shape_str(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _diagnose_state_dict(keys: list[str]) -> str:
    """A hint about what kind of network a state dict that failed validation holds."""
    if not any(k.startswith("features.") for k in keys):
        if any(k.startswith(("layer1.", "layer4.")) for k in keys):
            return " This looks like a ResNet, not a torchvision VGG-16."
        return " It has no 'features.*' keys, so it is not a torchvision VGG state dict."
    n_convs = sum(1 for k in keys if re.fullmatch(r"features\.\d+\.weight", k))
    if n_convs == 16:
        return " It has 16 convs under 'features': this looks like VGG-19; PANet uses VGG-16."
    if n_convs == 8:
        return " It has 8 convs under 'features': this looks like VGG-11; PANet uses VGG-16."
    if n_convs == 10:
        return " It has 10 convs under 'features': this looks like VGG-13; PANet uses VGG-16."
    return f" It has {n_convs} weight tensors under 'features' (VGG-16 has 13 convs)."


def torchvision_state_to_params(
    state_dict: Mapping[str, Any], *, width: float = 1.0, source: str = "<state dict>"
) -> EncoderParams:
    """Convert a torchvision-style VGG-16 state dict (tensors or arrays) to encoder params.

    Maps **by position** like the official ``Encoder._init_weights``: the first 26 entries are
    taken as (weight, bias) of the 13 convs in order; names are not required to match (so an
    official PANet snapshot ``encoder.backbone.features.*`` also works). Every shape is checked
    against VGG-16 at ``width``; OIHW weights become HWIO kernels.
    """
    keys = list(state_dict.keys())
    bn = [k for k in keys if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    if bn:
        raise PretrainedWeightsError(
            f"{source}: found batch-norm statistics ({bn[0]!r}): this is a VGG-16-BN "
            "(vgg16_bn) state dict, which is not supported. PANet's encoder has no batch norm; "
            "use torchvision's plain VGG-16, vgg16-397923af.pth."
        )
    n_entries = 2 * len(CONV_NAMES)
    if len(keys) < n_entries:
        raise PretrainedWeightsError(
            f"{source}: has {len(keys)} entries; a VGG-16 state dict starts with {n_entries} "
            f"(weight, bias of 13 convs).{_diagnose_state_dict(keys)}"
        )
    expected = vgg16_param_shapes(width)
    params: EncoderParams = {}
    for i, name in enumerate(CONV_NAMES):
        kernel_hwio, bias_shape = expected[name]
        want_w = (kernel_hwio[3], kernel_hwio[2], 3, 3)  # OIHW
        for j, what, want in ((2 * i, "weight", want_w), (2 * i + 1, "bias", bias_shape)):
            found = tuple(int(d) for d in np.shape(state_dict[keys[j]]))
            if found != want:
                raise PretrainedWeightsError(
                    f"{source}: entry #{j} {keys[j]!r} should be the {name} {what} of VGG-16 "
                    f"with shape {_shape_str(want)}, found {_shape_str(found)}."
                    f"{_diagnose_state_dict(keys)}"
                )
        w = to_numpy(state_dict[keys[2 * i]])
        b = to_numpy(state_dict[keys[2 * i + 1]])
        params[name] = {
            "kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0), dtype=np.float32),
            "bias": np.asarray(b, dtype=np.float32),
        }
    return params




def load_torchvision_vgg16(path: str | os.PathLike) -> EncoderParams:
    """Read torchvision's ``vgg16-397923af.pth`` into full-width encoder params.

    Needs PyTorch (imported here, not at module import). The file must be a torch-saved state
    dict whose first 26 entries are the 13 VGG-16 convs (``features.{0,2,...,28}``); the
    ``classifier.*`` entries are dropped. Raises :class:`PretrainedWeightsError` naming the file,
    the key and the expected vs found shape for anything else (VGG-19, ResNet, VGG-16-BN ...).
    """
    path = check_file(path)
    state_dict = read_torch_state_dict(path, PretrainedWeightsError)
    return torchvision_state_to_params(state_dict, width=1.0, source=path)


# --------------------------------------------------------------------------------------------
# Keras .h5
# --------------------------------------------------------------------------------------------


def _keras_layer_arrays(group: Any, path: str, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of one Keras layer group, via its ``weight_names`` attribute if present."""
    names = [
        n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])
    ]
    arrays = [np.asarray(group[n]) for n in names]
    if not arrays:  # no attribute: collect the datasets below the group
        found: list[np.ndarray] = []
        group.visititems(
            lambda _, obj: found.append(np.asarray(obj)) if hasattr(obj, "shape") else None
        )
        arrays = found
    kernels = [a for a in arrays if a.ndim == 4]
    biases = [a for a in arrays if a.ndim == 1]
    if len(kernels) != 1 or len(biases) != 1:
        raise PretrainedWeightsError(
            f"{path}: layer {layer!r} should hold one 4-d kernel and one bias, found shapes "
            f"{[a.shape for a in arrays]}"
        )
    return kernels[0], biases[0]


def keras_bgr_to_rgb_normalised(
    kernel: np.ndarray, bias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Adapt a Keras/Caffe ``block1_conv1`` (BGR, 0-255, Caffe-mean-subtracted input) to our
    RGB ImageNet-normalised input ``x = (p / 255 - mean) / std``.

    With ``z_bgr = p_bgr * 255 - caffe_mean`` the Caffe input, ``z_c = 255 std_c x_c + d_c`` with
    ``d_c = 255 mean_c - caffe_mean_c`` (per RGB channel c). So: flip the input-channel axis
    (BGR -> RGB), scale input channel c by ``255 std_c`` and fold ``sum_{h,w,c} W d_c`` into the
    bias. Exact away from the 1-pixel zero-padded border, where the Caffe net pads ``z = 0``
    and ours effectively pads ``z = d`` (|d| < 0.5 grey levels).
    """
    k_rgb = kernel[:, :, ::-1, :].astype(np.float64)
    offset = 255.0 * np.asarray(IMAGENET_MEAN, np.float64) - CAFFE_MEAN_BGR[::-1]
    new_bias = bias.astype(np.float64) + np.einsum("hwco,c->o", k_rgb, offset)
    new_kernel = k_rgb * (255.0 * np.asarray(IMAGENET_STD, np.float64))[None, None, :, None]
    return new_kernel.astype(np.float32), new_bias.astype(np.float32)


def load_keras_vgg16_h5(path: str | os.PathLike, *, rgb_normalised: bool = True) -> EncoderParams:
    """Read Keras ``vgg16_weights_tf_dim_ordering_tf_kernels(_notop).h5`` into encoder params.

    Layer groups ``block1_conv1`` ... ``block5_conv3`` (a ``model_weights`` root group is also
    accepted); kernels are stored HWIO already (TF kernels: cross-correlation, like Flax). The
    ``fc*``/``predictions`` layers of the with-top file are ignored.

    Input convention: these weights (converted from the original Caffe VGG-16) expect
    ``preprocess_input(mode='caffe')`` input, i.e. **BGR**, 0-255, minus the Caffe means
    (103.939, 116.779, 123.68), not divided by a std. Our pipeline feeds RGB ImageNet-normalised
    images, so with ``rgb_normalised=True`` (default) conv1_1 is adapted by
    :func:`keras_bgr_to_rgb_normalised` (input-channel flip BGR -> RGB, per-channel scale
    ``255 * std``, mean offset folded into the bias); ``False`` returns the raw Keras weights.

    These are **not** the numbers of torchvision's ``vgg16-397923af.pth`` (a different training
    run): only the torchvision file reproduces the official PANet initialisation exactly.
    """
    path = check_file(path)
    try:
        import h5py
    except ImportError as e:
        raise ImportError(f"cannot read {path!r}: Keras .h5 files need `pip install h5py`") from e
    expected = vgg16_param_shapes(1.0)
    params: EncoderParams = {}
    try:
        h5 = h5py.File(path, "r")
    except OSError as e:
        raise PretrainedWeightsError(f"{path}: not a readable HDF5 file, truncated? ({e})") from e
    with h5 as f:
        root = f["model_weights"] if "model_weights" in f else f
        present = set(root.keys())
        if "block4_conv4" in present or "block5_conv4" in present:
            raise PretrainedWeightsError(
                f"{path}: has block4_conv4/block5_conv4 layers: this is a VGG-19; PANet uses VGG-16"
            )
        for name, layer in zip(CONV_NAMES, KERAS_LAYER_NAMES, strict=True):
            if layer not in present:
                convs = sorted(k for k in present if re.fullmatch(r"block\d_conv\d", k))
                hint = (
                    " This looks like a Keras 3 '.weights.h5' file; save it in the Keras 2 "
                    "layout or convert it."
                    if "layers" in present
                    else ""
                )
                raise PretrainedWeightsError(
                    f"{path}: no layer group {layer!r}; found conv groups {convs}.{hint}"
                )
            kernel, bias = _keras_layer_arrays(root[layer], path, layer)
            want_k, want_b = expected[name]
            if kernel.shape != want_k or bias.shape != want_b:
                raise PretrainedWeightsError(
                    f"{path}: {layer} has kernel {kernel.shape} and bias {bias.shape}; VGG-16 "
                    f"expects kernel {want_k} (HWIO) and bias {want_b}"
                )
            params[name] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
    if rgb_normalised:
        k, b = keras_bgr_to_rgb_normalised(params["conv1_1"]["kernel"], params["conv1_1"]["bias"])
        params["conv1_1"] = {"kernel": k, "bias": b}
    return params


# --------------------------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------------------------


def flatten_params(params: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """``{'conv1_1': {'kernel': k}}`` -> ``{'conv1_1/kernel': k}`` (numpy, float32)."""
    return {
        f"{layer}/{leaf}": np.asarray(value, dtype=np.float32)
        for layer, leaves in params.items()
        for leaf, value in leaves.items()
    }


def save_npz(params: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Write encoder params (any width) to ``path`` as flat ``conv1_1/kernel`` entries."""
    check_encoder_params(params, "save_npz", width=None)
    save_flat_npz(flatten_params(params), path)



def load_npz(path: str | os.PathLike) -> EncoderParams:
    """Read a :func:`save_npz` file; checks the VGG-16 layer structure (any width)."""
    path = check_file(path)
    params: EncoderParams = {}
    for key, value in read_npz(path).items():
        layer, sep, leaf = key.partition("/")
        if not sep:
            raise PretrainedWeightsError(
                f"{path}: entry {key!r} is not of the form 'conv1_1/kernel'"
            )
        params.setdefault(layer, {})[leaf] = value
    check_encoder_params(params, path, width=None)
    return params


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def load_pretrained(path: str | os.PathLike, width: float = 1.0) -> EncoderParams:
    """Full-width ImageNet VGG-16 encoder params from ``.pth``/``.pt`` (torchvision),
    ``.h5`` (Keras, adapted to RGB input) or ``.npz`` (converted), by suffix."""
    path = os.fspath(path)
    if width != 1.0:
        raise ValueError(
            f"pretrained VGG-16 weights need the full-width encoder (model.width=1.0), got "
            f"width={width}; use random init ('' pretrained path) for reduced widths"
        )
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{path!r}: unknown weight file suffix {suffix!r}; expected one of "
            f"{sorted(SUFFIXES)} (torchvision .pth/.pt, Keras .h5, converted .npz)"
        )
    check_file(path)
    kind = SUFFIXES[suffix]
    if kind == "torchvision":
        params = load_torchvision_vgg16(path)
    elif kind == "keras":
        params = load_keras_vgg16_h5(path)
    else:
        params = load_npz(path)
    check_encoder_params(params, path, width=1.0)
    return params


def load_any(path: str | os.PathLike) -> EncoderParams:
    """Encoder params of a weight file: ImageNet VGG-16 (``.pth``/``.pt``/``.h5``, full width)
    or a converted ``.npz`` of any width (e.g. a trained encoder)."""
    if os.fspath(path).lower().endswith(".npz"):
        return load_npz(path)
    return load_pretrained(path)


def encoder_width(params: Mapping[str, Mapping[str, Any]]) -> float:
    """The width multiplier of encoder params (``conv5_3`` channels / 512), shapes checked."""
    width = int(np.shape(params["conv5_3"]["kernel"])[-1]) / 512
    check_encoder_params(params, f"encoder params at width={width}", width)
    return width


def merge_encoder_params(
    variables: Mapping[str, Any], encoder_params: Mapping[str, Any]
) -> dict[str, Any]:
    """Return ``variables`` with ``variables['params']['encoder']`` replaced by
    ``encoder_params`` (cast to the existing dtypes); every shape must match the model's."""
    import jax.numpy as jnp

    try:
        current = variables["params"]["encoder"]
    except (KeyError, TypeError) as e:
        raise ValueError(
            "variables must look like {'params': {'encoder': {...}}} (PANet.init output)"
        ) from e
    if set(current) != set(encoder_params):
        raise PretrainedWeightsError(
            f"encoder layers differ: model has {sorted(current)}, weights have "
            f"{sorted(encoder_params)}"
        )
    new_encoder = {}
    for layer, leaves in current.items():
        if set(leaves) != set(encoder_params[layer]):
            raise PretrainedWeightsError(
                f"{layer}: model has {sorted(leaves)}, weights have {sorted(encoder_params[layer])}"
            )
        new_encoder[layer] = {}
        for leaf, old in leaves.items():
            new = encoder_params[layer][leaf]
            if tuple(np.shape(new)) != tuple(np.shape(old)):
                raise PretrainedWeightsError(
                    f"{layer}/{leaf}: model expects shape {tuple(np.shape(old))}, pretrained "
                    f"weights have {tuple(np.shape(new))} (is the model width 1.0?)"
                )
            new_encoder[layer][leaf] = jnp.asarray(new, dtype=old.dtype)
    params = dict(variables["params"])
    params["encoder"] = new_encoder
    out = dict(variables)
    out["params"] = params
    return out
