"""Reading weight files, for every encoder's importer: file checks, torch state dicts, flat
``.npz`` archives (written atomically), and the one error type they raise.

Each importer (:mod:`~panet_jax.models.weights.vgg`, :mod:`~panet_jax.models.weights.resnet`)
maps what these return onto its encoder's variables and checks the shapes.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

# Every suffix some importer reads (which one applies is the importer's business).
WEIGHT_SUFFIXES = (".pth", ".pt", ".h5", ".npz", ".safetensors")
TORCH_INSTALL_HINT = (
    "Reading a .pth file needs PyTorch. Install the CPU build from PyTorch's own wheel index: "
    "`pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu` (from PyPI "
    "the same pin is the multi-GB CUDA build on Linux), or convert the file once on a machine "
    "that has torch with `python experiments/convert_weights.py --input=<file>.pth "
    "--output=<file>.npz` and load the .npz instead (no torch needed)."
)


class PretrainedWeightsError(ValueError):
    """A weight file that cannot be used: unreadable, or not what the encoder expects."""


class WeightsFileNotFoundError(PretrainedWeightsError, FileNotFoundError):
    """A weight path that does not exist or is not a file."""


def check_file(path: str | os.PathLike, kind: str = "pretrained") -> str:
    """``path`` as a string; :class:`WeightsFileNotFoundError` naming it unless it is a file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "not found"
        raise WeightsFileNotFoundError(f"{kind} weight file {what}: {path!r}")
    return path


def to_numpy(x: Any, dtype: Any = np.float32) -> np.ndarray:
    """A torch tensor (any float dtype, through float64: exact) or array as ``dtype``."""
    if hasattr(x, "detach"):  # torch.Tensor (float16 / bfloat16 / float32 / float64)
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=dtype)


def read_torch_state_dict(
    path: str, error: type[Exception] = PretrainedWeightsError
) -> Mapping[str, Any]:
    """The state dict in a torch-saved file (a ``{'state_dict': ...}`` wrapper accepted), read
    with ``torch.load(map_location='cpu', weights_only=True)``; ``error`` naming the file
    when it is unreadable or holds something else. Needs PyTorch (imported here)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"cannot read {path!r}: {TORCH_INSTALL_HINT}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).split(". ")[0].splitlines()[0] if str(e).strip() else ""
        raise error(
            f"{path}: torch.load could not read it as a state dict (truncated or corrupt "
            f"file? {type(e).__name__}: {first})"
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise error(
            f"{path}: expected a state dict (a mapping of names to tensors), found "
            f"{type(obj).__name__}"
        )
    return obj


def read_npz(path: str, error: type[Exception] = PretrainedWeightsError) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` as float32; a truncated or corrupt file raises ``error``
    naming it (NumPy / zipfile / zlib raise many types for one damaged file)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key], dtype=np.float32) for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise error(f"{path}: not a readable .npz file, truncated or corrupt? ({e})") from e


def npz_keys(path: str | os.PathLike) -> list[str]:
    """The entry names of an ``.npz`` from its index alone (no array read); ``[]`` when the
    file is not a readable archive (the importer's own read then names the problem)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return list(data.files)
    except Exception:
        return []


def save_flat_npz(flat: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write ``{'a/b/kernel': array}`` as float32 entries to ``path`` (callers writing for a
    user wrap it in :func:`panet_jax.files.atomic_path`)."""
    with open(os.fspath(path), "wb") as f:  # a file object: numpy adds no '.npz' suffix
        np.savez(f, **{k: np.asarray(v, dtype=np.float32) for k, v in flat.items()})
