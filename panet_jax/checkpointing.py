"""Orbax (V0 ``CheckpointManager``) checkpoints of the train state, plus the run's config.

Layout of a workdir::

    workdir/config.json                 the run's config (checked on restart)
    workdir/checkpoints/<step>/state    TrainState (params, opt_state, step), OCDBT
    workdir/checkpoints/<step>/config   the same config, so a step dir is self-contained

Saves are asynchronous; orbax writes ``<step>.orbax-checkpoint-tmp*`` and renames it on
commit, so a crash mid-save never leaves a half-written ``<step>`` that restore would pick.
A state with non-finite params is never saved. Restores build the target from the config
with the *current* mesh's shardings, so a checkpoint written on any device count restores on
any other. The input pipeline is a pure function of the step, so the restored ``step`` is
also the data position.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from panet_jax import train_state as ts

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
_ITEMS = ("state", "config")

# Keys that may change between a run and its resumption (schedule-free bookkeeping, device
# layout, evaluation, where things live). Every other key defines the training run itself.
RESUMABLE_KEYS = (
    "train.steps", "train.log_every", "train.image_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.eval_after", "train.resume_mismatch_ok",
    "parallel.", "eval.", "data.data_dir", "model.pretrained",
)  # fmt: skip


class ConfigMismatchError(ValueError):
    """The workdir holds a run with a different config."""


# --------------------------------------------------------------------------- config files


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
            (workdir / (CONFIG_FILE + ".previous")).write_text(path.read_text())
    elif (workdir / CHECKPOINT_DIR).is_dir() and any((workdir / CHECKPOINT_DIR).iterdir()):
        if not allow_mismatch:
            raise ConfigMismatchError(
                f"workdir {str(workdir)!r} has checkpoints but no {CONFIG_FILE}; refusing to "
                "resume an unknown run. Use a new --workdir or pass "
                "--config.train.resume_mismatch_ok=True."
            )
    if write:
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(config_to_json(config))
        tmp.replace(path)


# --------------------------------------------------------------------------- state helpers


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def all_finite(tree: Any) -> bool:
    """True when every float leaf of ``tree`` is finite (one small device reduction)."""
    return bool(_all_finite(tree))


def with_sharding(abstract: Any, sharding: jax.sharding.Sharding) -> Any:
    """``ShapeDtypeStruct`` leaves carrying ``sharding``."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract
    )


def abstract_state_on(config: ml_collections.ConfigDict, mesh: Mesh) -> ts.TrainState:
    """The restore target: the config's train-state shapes, replicated on ``mesh``."""
    return with_sharding(ts.abstract_train_state(config), NamedSharding(mesh, P()))


# --------------------------------------------------------------------------- manager


class Checkpointer:
    """Async orbax ``CheckpointManager`` of ``TrainState`` + config, keeping the latest
    ``keep`` steps. Create and call it on every process (orbax synchronises them)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        read_only: bool = False,
        async_save: bool = True,
    ):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(max(1, int(keep))),
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
            save_interval_steps=0 if read_only else 1,  # orbax warns when it must force this
            # Orbax renames <step>.orbax-checkpoint-tmp* to <step> on commit; leftovers of a
            # crashed save are not steps and are removed on the next start.
            cleanup_tmp_directories=not read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def check_step(self, step: int | None) -> int:
        """``step`` (default: the latest) if it is saved here, else ``FileNotFoundError`` (no
        checkpoint at all) or ``ValueError`` listing the saved steps."""
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {str(self.directory)!r}")
        if step is None:
            return max(steps)
        if step not in steps:
            raise ValueError(
                f"step {step} is not saved in {str(self.directory)!r}; saved steps: {steps}"
            )
        return step

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, state: ts.TrainState, config: ml_collections.ConfigDict) -> bool:
        """Start an async save of ``state`` at ``int(state.step)``. Returns False (and logs)
        when that step is already saved; raises ``FloatingPointError`` on non-finite params,
        never touching the existing checkpoints."""
        step = int(state.step)
        if not all_finite(state.params) or not all_finite(state.opt_state):
            raise FloatingPointError(
                f"refusing to checkpoint step {step}: the train state has non-finite values"
            )
        if step in self.manager.all_steps():
            logging.info("checkpoint for step %d already exists; not overwritten", step)
            return False
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(json.loads(config_to_json(config))),
            ),
            force=True,
        )

    def restore(self, abstract_state: ts.TrainState, step: int | None = None) -> ts.TrainState:
        """Restore ``step`` (default latest) onto the shardings of ``abstract_state``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {str(self.directory)!r}")
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return restored.state

    def restore_config(self, step: int | None = None) -> ml_collections.ConfigDict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {str(self.directory)!r}")
        restored = self.manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return ml_collections.ConfigDict(restored.config)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- preemption


class PreemptionWatcher:
    """Tells the loop to checkpoint and stop.

    Single process: a SIGTERM handler sets a flag. Distributed: every process calls
    ``multihost_utils.reached_preemption_sync_point(step)`` each step (JAX's coordination
    service catches the signal and agrees on a step), so all processes save the same step;
    no Python handler is installed there, it would replace JAX's.
    """

    def __init__(self, distributed: bool):
        self.distributed = distributed
        self.flag = False
        self._previous: Any = None
        if not distributed:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread
                self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        logging.warning("received signal %d: checkpointing and stopping", signum)
        self.flag = True

    def should_stop(self, step: int) -> bool:
        if self.distributed:
            from jax.experimental import multihost_utils

            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.flag = True
            except RuntimeError:  # preemption service disabled
                pass
        return self.flag

    def close(self) -> None:
        if not self.distributed and self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
