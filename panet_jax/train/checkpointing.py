"""Orbax (V0 ``CheckpointManager``) checkpoints of the train state and the run's config.

Layout of a workdir (:mod:`panet_jax.train.workdir` owns ``config.json``)::

    workdir/config.json                 the run's config (checked on restart)
    workdir/checkpoints/<step>/state    TrainState (params, opt_state, step), OCDBT
    workdir/checkpoints/<step>/config   the same config, so a step dir is self-contained

Saves are asynchronous; orbax writes ``<step>.orbax-checkpoint-tmp*`` and renames it on
commit, so a crash mid-save never leaves a half-written ``<step>`` that restore would pick.
A state with non-finite params is never saved. Restores build the target from the config
with the *current* mesh's shardings, so a checkpoint written on any device count restores on
any other. The input pipeline is a pure function of the step, so the restored ``step`` is
also the data position. A failed write (full disk) and a damaged step (truncated files) are
reported in one line each; a damaged newest step makes a resumed run fall back to the newest
readable one, leaving the damaged one on disk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from panet_jax import errors
from panet_jax.train import state as ts
from panet_jax.train.workdir import config_to_json

log = logging.getLogger(__name__)
_ITEMS = ("state", "config")


class CheckpointReadError(ValueError):
    """A saved step that cannot be read (truncated or corrupted files)."""

    def __init__(self, step: int, directory: Path, cause: BaseException, hint: str = ""):
        self.step, self.directory, self.cause = step, directory, cause
        super().__init__(
            f"checkpoint step {step} in {str(directory)!r} cannot be read, it is damaged "
            f"(an interrupted copy or a full disk?){hint}"
        )
        log.debug("checkpoint step %d cannot be read", step, exc_info=cause)


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (full disk, permissions, I/O error)."""


def quiet_orbax(record: logging.LogRecord) -> bool:
    """Logging filter: drop orbax's per-save / per-restore INFO chatter, its notice that a
    read-only checkpoint directory is read only, and the tracebacks its background threads
    log for a failed save (the same failure is raised in the main thread and reported there
    in one line); keep its other warnings and errors."""
    if f"{os.sep}clu{os.sep}asynclib" in record.pathname:  # the writer's error, raised later
        return not record.exc_info
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
        return True
    if record.exc_info or record.levelno < logging.WARNING:
        return False
    return "is read only" not in record.getMessage()


def quiet_orbax_logs() -> None:
    """Install :func:`quiet_orbax` on absl's logger (orbax logs through absl), once."""
    from absl import logging as absl_logging

    logger = absl_logging.get_absl_logger()
    if quiet_orbax not in logger.filters:
        logger.addFilter(quiet_orbax)


def _is_closed_loop_noise(unraisable: Any) -> bool:
    exc = unraisable.exc_value
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


class _SiblingWriteFailures(logging.Filter):
    """Drops asyncio's "<any future or task> exception was never retrieved" records whose
    exception is a resource failure (:func:`panet_jax.errors.resource_error`: full disk, quota,
    permissions): when one of orbax's parallel writes fails that way its siblings fail alike
    and their futures are never awaited; the first failure is already reported as
    :class:`CheckpointWriteError`. Any other never-retrieved exception is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "exception was never retrieved" not in record.getMessage():
            return True
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or errors.resource_error(exc) is None


def _silence_closed_loop_callbacks() -> None:
    """After a failed orbax save / restore, tensorstore's still-running reads call back into
    the event loop orbax has closed; each callback's ``RuntimeError('Event loop is closed')``
    reaches ``sys.unraisablehook`` (dozens of tracebacks, no information). Drop exactly those,
    and the sibling write failures of :class:`_SiblingWriteFailures`, once installed; every
    other unraisable exception goes to the previous hook."""
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _SiblingWriteFailures) for f in asyncio_log.filters):
        asyncio_log.addFilter(_SiblingWriteFailures())
    previous = sys.unraisablehook
    if getattr(previous, "_panet_filter", False):
        return

    def hook(unraisable: Any) -> None:
        if not _is_closed_loop_noise(unraisable):
            previous(unraisable)

    hook._panet_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook



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
        quiet_orbax_logs()
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
        _silence_closed_loop_callbacks()  # a failing background save produces the same noise
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)
        self._pending: int | None = None  # step of the async save not yet known to be on disk

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
        never touching the existing checkpoints, and :class:`CheckpointWriteError` when this or
        the previous (asynchronous) save could not be written."""
        step = int(state.step)
        if not all_finite(state.params) or not all_finite(state.opt_state):
            raise FloatingPointError(
                f"refusing to checkpoint step {step}: the train state has non-finite values"
            )
        if step in self.manager.all_steps():
            logging.info("checkpoint for step %d already exists; not overwritten", step)
            return False
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(json.loads(config_to_json(config))),
        )
        with self._write_errors(step):
            started = self.manager.save(step, args=args, force=True)
        self._pending = step
        return started

    @contextlib.contextmanager
    def _write_errors(self, step: int) -> Iterator[None]:
        """Turn an orbax write failure (here, or of the pending async save) into one line."""
        try:
            yield
        except Exception as e:  # orbax / tensorstore raise many types for one I/O failure
            failed = self._pending if self._pending is not None else step
            self._pending = None
            kept = [s for s in self.all_steps() if s != failed]
            os_error = errors.os_error_in(e)
            full = errors.resource_error(e) == errno.ENOSPC or "RESOURCE_EXHAUSTED" in str(e)
            reason = "no space left on the device" if full else errors.first_line(e)
            error = CheckpointWriteError(
                f"writing checkpoint step {failed} to {str(self.directory)!r} failed: {reason}; "
                f"the checkpoints already written are kept (steps {kept})"
                + ("; free some space and run again to resume" if full else "")
            )
            error.errno = errno.ENOSPC if full else (os_error.errno if os_error else None)
            raise error from e

    def restore(self, abstract_state: ts.TrainState, step: int | None = None) -> ts.TrainState:
        """Restore ``step`` (default latest) onto the shardings of ``abstract_state``;
        :class:`CheckpointReadError` if its files are damaged."""
        step = self.check_step(step)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            )
        except Exception as e:  # tensorstore / orbax raise many types for a damaged file
            raise CheckpointReadError(step, self.directory, e) from e
        return restored.state

    def restore_latest_readable(self, abstract_state: ts.TrainState) -> ts.TrainState:
        """The newest step that can be read: a damaged newer step is reported (and kept on
        disk, never deleted) and the next older one is tried."""
        for step in sorted(self.all_steps(), reverse=True):
            try:
                return self.restore(abstract_state, step)
            except CheckpointReadError as e:
                logging.warning("%s; it is kept on disk; trying an older step", e)
        raise FileNotFoundError(
            f"no readable checkpoint in {str(self.directory)!r} (damaged steps: "
            f"{self.all_steps()}); move them away or use a new --workdir"
        )

    def restore_config(self, step: int | None = None) -> ml_collections.ConfigDict:
        step = self.check_step(step)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
            )
        except Exception as e:  # a damaged config item
            raise CheckpointReadError(step, self.directory, e) from e
        return ml_collections.ConfigDict(restored.config)

    def wait(self) -> None:
        """Block until the pending async save is on disk (:class:`CheckpointWriteError` if it
        failed)."""
        with self._write_errors(self._pending if self._pending is not None else -1):
            self.manager.wait_until_finished()
        self._pending = None

    def close(self) -> None:
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
