"""A training workdir's identity: ``config.json``, and the refusal to mix two runs in one.

``prepare_workdir`` runs before anything is written: a workdir that holds a run with a
different config (other than :data:`RESUMABLE_KEYS`) is refused with the differing keys, and
so is a workdir with checkpoints but no ``config.json``; then ``config.json`` is (re)written
atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ml_collections

from panet_jax import files

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"

# Keys that may change between a run and its resumption (schedule-free bookkeeping, device
# layout, evaluation, where things live). Every other key defines the training run itself.
RESUMABLE_KEYS = (
    "train.steps", "train.log_every", "train.image_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.eval_after", "train.resume_mismatch_ok",
    "parallel.", "eval.", "data.data_dir", "model.pretrained",
)  # fmt: skip


class ConfigMismatchError(ValueError):
    """The workdir holds a run with a different config."""


def config_to_json(config: ml_collections.ConfigDict) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose values differ between two JSON config dicts, ignoring
    :data:`RESUMABLE_KEYS`; formatted ``key: old -> new``."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE_KEYS):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    return diffs


def prepare_workdir(
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    *,
    allow_mismatch: bool = False,
    write: bool = True,
) -> None:
    """Refuse to reuse a workdir that holds a different run; then write ``config.json``.

    Raises :class:`ConfigMismatchError` listing the differing keys unless ``allow_mismatch``
    (then the old file is kept as ``config.json.previous``). Only ``write=True`` (process 0)
    writes.
    """
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(f"workdir {str(workdir)!r} exists and is not a directory")
    path = workdir / CONFIG_FILE
    new = json.loads(config_to_json(config))
    if path.exists():
        old = json.loads(path.read_text())
        diffs = config_differences(old, new)
        if diffs and not allow_mismatch:
            raise ConfigMismatchError(
                f"workdir {str(workdir)!r} holds a run with a different config:\n  "
                + "\n  ".join(diffs)
                + "\nUse a new --workdir, or pass --config.train.resume_mismatch_ok=True to "
                "resume its latest checkpoint with the new config."
            )
        if diffs and write:
            files.atomic_write(workdir / (CONFIG_FILE + ".previous"), path.read_text(),
                               overwrite=True)  # fmt: skip
    elif (workdir / CHECKPOINT_DIR).is_dir() and any((workdir / CHECKPOINT_DIR).iterdir()):
        if not allow_mismatch:
            raise ConfigMismatchError(
                f"workdir {str(workdir)!r} has checkpoints but no {CONFIG_FILE}; refusing to "
                "resume an unknown run. Use a new --workdir or pass "
                "--config.train.resume_mismatch_ok=True."
            )
    if write:
        workdir.mkdir(parents=True, exist_ok=True)
        files.atomic_write(path, config_to_json(config), overwrite=True)
