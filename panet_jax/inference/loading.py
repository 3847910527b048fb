"""Loading a trained or pretrained PANet: ``load_model`` and the loaders under it.

A *source* is one of:

* a training workdir (``config.json`` + ``checkpoints/``), its ``checkpoints`` directory, or one
  step directory ``checkpoints/<step>``: the run's config and its variables (latest step, or
  ``step``);
* ImageNet VGG-16 weights (torchvision ``.pth``, Keras ``.h5``), DINOv2 weights (official
  ``.pth``, Hugging Face ``.safetensors``) or a converted ``.npz``: the PANet head has no
  parameters, so these weights are the whole model (the official ``notrain`` evaluation);
* ``None``: a randomly initialised model (kaiming, as the official code) of ``config``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from panet_jax.config import base_config
from panet_jax.model import PANet
from panet_jax.models.weights.reader import WEIGHT_SUFFIXES
from panet_jax.train import checkpointing
from panet_jax.train import workdir as workdir_lib


class CheckpointNotFoundError(FileNotFoundError):
    """A path that holds no usable checkpoint or weights."""


def is_weight_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an ImageNet / converted weight file (by suffix)."""
    return os.fspath(path).lower().endswith(WEIGHT_SUFFIXES)


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path | None, Path, int | None]:
    """``(workdir or None, checkpoints dir, step or None)`` of a workdir, its checkpoints dir
    or a step dir; ``CheckpointNotFoundError`` saying what was expected otherwise."""
    p = Path(path)
    if not p.exists():
        raise CheckpointNotFoundError(
            f"{os.fspath(path)!r} does not exist; expected a training workdir, its "
            f"'{workdir_lib.CHECKPOINT_DIR}' directory, a step directory, or weights "
            f"({', '.join(WEIGHT_SUFFIXES)})"
        )
    if p.is_file():
        raise CheckpointNotFoundError(
            f"{os.fspath(path)!r} is a file but not a weight file ({', '.join(WEIGHT_SUFFIXES)}); "
            "expected a training workdir, its checkpoints directory or a weight file"
        )
    if (p / workdir_lib.CHECKPOINT_DIR).is_dir() or (p / workdir_lib.CONFIG_FILE).is_file():
        return p, p / workdir_lib.CHECKPOINT_DIR, None
    if p.name == workdir_lib.CHECKPOINT_DIR:
        workdir = p.parent if (p.parent / workdir_lib.CONFIG_FILE).is_file() else None
        return workdir, p, None
    if p.name.isdigit() and p.parent.name == workdir_lib.CHECKPOINT_DIR:  # a step directory
        workdir = p.parent.parent
        has_config = (workdir / workdir_lib.CONFIG_FILE).is_file()
        return (workdir if has_config else None), p.parent, int(p.name)
    return None, p, None


def load_run_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a checkpoint was trained with (workdir, checkpoints dir or step dir)."""
    workdir, ckpt_dir, step = resolve_checkpoint(path)
    if workdir is not None and (workdir / workdir_lib.CONFIG_FILE).exists():
        return ml_collections.ConfigDict(
            json.loads((workdir / workdir_lib.CONFIG_FILE).read_text())
        )
    with checkpointing.Checkpointer(ckpt_dir, read_only=True) as ckpt:
        return ckpt.restore_config(ckpt.check_step(step))


def as_panet_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """``{'params': {'encoder': ...}[, 'batch_stats': {'encoder': ...}]}`` from PANet
    variables, encoder variables (``{'params': {'conv1_1': ...}}``) or bare encoder params
    (``{'conv1_1': ...}``)."""
    collections = dict(variables) if "params" in variables else {"params": variables}
    return {
        name: tree if "encoder" in tree else {"encoder": tree} for name, tree in collections.items()
    }


def load_variables(
    path: str | os.PathLike, *, step: int | None = None, mesh: Mesh | None = None
) -> dict[str, Any]:
    """``{'params': ...}`` of a checkpoint (latest, or ``step``), replicated on ``mesh``
    (default: all current devices, any count), or of a weight file (ImageNet / ``.npz``)."""
    from panet_jax.models import registry
    from panet_jax.runtime import parallel

    mesh = parallel.make_mesh() if mesh is None else mesh
    if is_weight_file(path):
        # The PANet head has no parameters: the encoder's are all of them.
        return parallel.replicate(as_panet_variables(registry.read_weight_file(path)), mesh)
    _, ckpt_dir, step_of_path = resolve_checkpoint(path)
    if step is not None and step_of_path is not None and step != step_of_path:
        raise ValueError(f"{os.fspath(path)!r} is step {step_of_path}, but step={step} was asked")
    step = step_of_path if step is None else step
    with checkpointing.Checkpointer(ckpt_dir, read_only=True) as ckpt:
        step = ckpt.check_step(step)
        try:
            config = ckpt.restore_config(step)
            state = ckpt.restore(checkpointing.abstract_state_on(config, mesh), step)
        except checkpointing.CheckpointReadError as e:
            others = [s for s in ckpt.all_steps() if s != step]
            hint = (
                f"; pass --step={max(others)} (saved steps: {ckpt.all_steps()})"
                if others
                else "; no other step is saved"
            )
            raise checkpointing.CheckpointReadError(step, ckpt.directory, e.cause, hint) from e
    return state.variables()


def check_weights_encoder(
    config: ml_collections.ConfigDict, variables: Mapping[str, Any], path: str | os.PathLike
) -> None:
    """A weight file's encoder must be ``config.model.encoder`` at ``config.model.width``
    (checkpoints carry their own config); ``ValueError`` naming both otherwise."""
    from panet_jax.models import registry

    if not is_weight_file(path):
        return
    encoder = {c: tree["encoder"] for c, tree in variables.items()}
    name, width = registry.identify(encoder)
    m = config.model
    if (name, width) != (m.encoder, float(m.width)):
        raise ValueError(
            f"{os.fspath(path)} holds a {name} encoder at width {width:g}; the config asks for "
            f"{m.encoder} at width {float(m.width):g} (set --config.model.encoder={name} or "
            "pick the file of that model)"
        )


def load_model(
    source: str | os.PathLike | None = None,
    *,
    config: ml_collections.ConfigDict | None = None,
    step: int | None = None,
    dtype: str | None = None,
    rng: jax.Array | None = None,
) -> tuple[PANet, dict[str, Any]]:
    """The PANet model and its variables, in one call.

    Args:
      source: see the module docstring (workdir / checkpoints / step dir, weight file, None).
      config: the model config for ImageNet weights or random init (default: the official
        recipe's); ignored for a checkpoint, whose run config is used.
      step: checkpoint step (default: the latest).
      dtype: compute dtype override (``'float32'``, ``'bfloat16'``, ``'float64'`` under x64).
      rng: key of the random init (``source=None``; default ``jax.random.key(0)``).
    Returns:
      ``(model, variables)``: ``model.apply(variables, episodes)`` runs a batch of episodes.
    """
    from panet_jax.models import registry
    from panet_jax.train import state as train_state

    if source is not None and not is_weight_file(source):
        config = load_run_config(source)
        variables = load_variables(source, step=step)
    else:
        config = ml_collections.ConfigDict(
            (config or base_config()).to_dict()
        )  # a copy we may edit
        if source is not None:
            encoder = _read_weights(source, config.model.encoder)
            config.model.encoder, config.model.width = registry.identify(encoder)
            variables = as_panet_variables(jax.tree.map(jnp.asarray, encoder))
        else:
            rng = jax.random.key(0) if rng is None else rng
            state = train_state.create_train_state(_without_pretrained(config), rng)
            variables = state.variables()
    if dtype is not None:
        config.model.dtype = dtype
    model = registry.build_panet(config)
    if config.model.dtype == "float64":
        variables = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), variables)
    return model, variables


def _read_weights(path: str | os.PathLike, encoder: str) -> dict[str, Any]:
    """Encoder variables of a weight file: ImageNet ``.pth`` files are read as ``encoder``'s
    (a VGG-16 and a ResNet state dict are both ``.pth``); ``.npz`` / ``.h5`` say what they
    hold."""
    from panet_jax.models import registry

    if encoder != "vgg16" and os.fspath(path).lower().endswith((".pth", ".pt")):
        return registry.load_weights(path, encoder)
    return registry.read_weight_file(path)


def _without_pretrained(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.pretrained = ""
    return config


# Keys compared with the training run's config (warning only): evaluating elsewhere is allowed.
RUN_DATA_KEYS = ("dataset", "fold", "coco_split", "image_size", "builder_config")
# Model keys that are choices of the evaluation, not properties of the trained network.
EVAL_MODEL_KEYS = ("pretrained", "dtype", "prototypes_per_class")  # the head has no params


def _same(a: Any, b: Any) -> bool:
    """Equality that treats lists (JSON) and tuples (ConfigDict) alike."""
    norm = lambda x: list(x) if isinstance(x, list | tuple) else x
    return norm(a) == norm(b)


def adopt_run_model_config(config: ml_collections.ConfigDict, path: str | os.PathLike) -> list[str]:
    """Copy the training run's ``model`` keys (the trained network's shape) into ``config``,
    in place; return warning lines for every differing value (model keys taken from the run,
    data keys only reported). Weight files carry no run config: nothing is changed."""
    if is_weight_file(path):
        return []
    saved = load_run_config(path).to_dict()
    warnings = []
    for key, value in saved.get("model", {}).items():
        if key in EVAL_MODEL_KEYS or key not in config.model:
            continue
        if not _same(config.model[key], value):
            warnings.append(
                f"config.model.{key}={config.model[key]!r} differs from the checkpoint's "
                f"{value!r}; using the checkpoint's"
            )
            config.model[key] = tuple(value) if isinstance(value, list) else value
    for key in RUN_DATA_KEYS:
        if key in saved.get("data", {}) and key in config.data:
            if not _same(config.data[key], saved["data"][key]):
                warnings.append(
                    f"config.data.{key}={config.data[key]!r} but the checkpoint was trained "
                    f"with {saved['data'][key]!r}"
                )
    return warnings
