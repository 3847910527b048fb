"""The training loop: ``train(config, workdir)`` and ``train_and_evaluate``.

Order of work, so that a bad run fails before it compiles anything or touches a workdir:
validate the config (incl. the evaluation keys when ``eval_after``) -> check the prepared
dataset -> (``jax.distributed``) -> check the workdir holds this run (or none) -> restore the
newest readable checkpoint (any device count) or init -> this host's episode stream from the
restored step -> loop -> final checkpoint -> optional evaluation.

Checkpoints: every ``checkpoint_every`` steps (a state is written once the loss computed from
it is known to be finite), on SIGTERM / a preemption sync point, and at the end; a non-finite
loss or state stops the run with ``FloatingPointError`` and writes nothing. Whatever ends the
run (the last step, an error, a preemption), the input pipeline, the checkpoint manager and the
TensorBoard writer are closed before the function returns, and a failure while closing never
hides the error that ended the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from panet_jax import config as config_lib
from panet_jax.data import input_pipeline
from panet_jax.evaluation import overlays
from panet_jax.runtime import parallel
from panet_jax.train import checkpointing, steps
from panet_jax.train import state as ts
from panet_jax.train import workdir as workdir_lib
from panet_jax.train.preemption import PreemptionWatcher
from panet_jax.train.summaries import (
    MetricWindow,
    NonFiniteLossError,
    progress_line,
    tensorboard_writer,
)

log = logging.getLogger(__name__)


@contextlib.contextmanager
def closing(resource: Any, what: str) -> Iterator[Any]:
    """``resource.close()`` on exit; if an error is already ending the run, a failure to close
    is logged instead of raised, so that it cannot replace the error that matters."""
    try:
        yield resource
    except BaseException:
        try:
            resource.close()
        except Exception as e:  # secondary: the first error propagates
            first_line = (str(e) or type(e).__name__).strip().splitlines()[0]
            log.warning("closing the %s failed too: %s", what, first_line)
        raise
    resource.close()


def _diverged(error: FloatingPointError, ckpt: checkpointing.Checkpointer) -> FloatingPointError:
    last = ckpt.latest_step()
    kept = (
        f"the last good checkpoint (step {last}) in {str(ckpt.directory)!r} is kept"
        if last is not None
        else "no checkpoint had been written"
    )
    return FloatingPointError(
        f"{error}; training stopped without saving the diverged state, {kept}. "
        "Lower config.optim.lr or check the data."
    )


@dataclasses.dataclass
class _Run:
    """One training run's fixed parts: config, devices and where it writes."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    ckpt: checkpointing.Checkpointer
    writer: Any
    watcher: PreemptionWatcher
    is_main: bool

    def initial_state(self) -> ts.TrainState:
        """The newest readable checkpoint (damaged newer steps are reported, kept on disk), or
        a new state from ``config.seed`` (ImageNet weights when ``model.pretrained``)."""
        if self.ckpt.all_steps():
            abstract = checkpointing.abstract_state_on(self.config, self.mesh)
            state = self.ckpt.restore_latest_readable(abstract)
            log.info("restored step %d from %s", int(state.step), self.ckpt.directory)
            return state
        new = ts.create_train_state(self.config, jax.random.key(self.config.seed))
        return parallel.replicate(new, self.mesh)

    def save(self, state: ts.TrainState) -> None:
        try:
            self.ckpt.save(state, self.config)
        except FloatingPointError as e:
            raise _diverged(e, self.ckpt) from e

    @functools.cached_property
    def predict(self) -> Any:
        return parallel.on_batch(steps.labels_step, self.mesh, 1, P(parallel.BATCH_AXIS))

    def write_images(self, step: int, state: ts.TrainState, batch: dict[str, np.ndarray]) -> None:
        """A panel of the first episode of this host's batch and its prediction."""
        preds = self.predict(state, parallel.host_batch_to_global(batch, self.mesh))
        episode = {k: v[0] for k, v in batch.items()}
        panel = overlays.episode_panel(episode, parallel.local_rows(preds, self.mesh)[0])
        self.writer.write_images(step, {"train/episode": panel[None]})

    def log_window(self, window: MetricWindow, done: int, rate: float) -> dict[str, float]:
        t = self.config.train
        scalars = dict(window.summary(), episodes_per_s=rate)
        self.writer.write_scalars(done, scalars)
        if self.is_main:
            eta = (t.steps - done) * self.global_batch / rate if rate > 0 else float("nan")
            log.info(progress_line(done, t.steps, scalars, rate, eta))
        return scalars

    @property
    def global_batch(self) -> int:
        return parallel.global_batch_size(self.config, self.mesh)

    def loop(self, state: ts.TrainState) -> tuple[ts.TrainState, dict[str, Any]]:
        """Steps ``state.step .. config.train.steps`` (or to a preemption)."""
        t, start = self.config.train, int(state.step)
        result: dict[str, Any] = {"step": start, "preempted": False}
        step_fn = parallel.make_parallel_step(
            steps.make_train_step(self.config), self.config.parallel.impl, self.mesh
        )
        window, rate = MetricWindow(), _Rate(self.global_batch)
        batches = input_pipeline.train_batches(
            self.config, batch_size=parallel.host_batch_size(self.config, self.mesh),
            start_step=start, num_steps=t.steps - start, process_index=jax.process_index(),
            process_count=jax.process_count(),
        )  # fmt: skip
        with batches:
            for step in range(start, t.steps):
                batch = next(batches)
                # A periodic checkpoint of this state is written once the loss computed from
                # it (by this step) is known to be finite.
                due = step > start and step % t.checkpoint_every == 0
                candidate = jax.tree.map(jnp.copy, state) if due else None
                state, step_metrics = step_fn(state, batch)
                window.push(step, step_metrics)
                if candidate is not None:
                    window.settle()
                    self.save(candidate)
                done = step + 1
                rate.tick(step_metrics, first=step == start)
                if t.image_every and done % t.image_every == 0:
                    self.write_images(done, state, batch)
                stop = self.watcher.should_stop(done)
                if done % t.log_every == 0 or done == t.steps or stop:
                    result.update(self.log_window(window, done, rate.read()))
                result["step"] = done
                if stop:
                    self.save(state)
                    log.warning("stopping at step %d on preemption; checkpoint saved", done)
                    result["preempted"] = True
                    break
            window.settle()
        return state, result


class _Rate:
    """Episodes per second since the last read, excluding the first step (its compile)."""

    def __init__(self, global_batch: int):
        self.global_batch, self.t0, self.steps = global_batch, time.perf_counter(), 0

    def tick(self, step_metrics: Any, first: bool) -> None:
        if first:
            jax.block_until_ready(step_metrics)
            self.t0, self.steps = time.perf_counter(), 0
        else:
            self.steps += 1

    def read(self) -> float:
        elapsed = time.perf_counter() - self.t0
        rate = self.steps * self.global_batch / elapsed if elapsed > 0 and self.steps else 0.0
        self.t0, self.steps = time.perf_counter(), 0
        return rate


def train(config: ml_collections.ConfigDict, workdir: str) -> tuple[ts.TrainState, dict[str, Any]]:
    """Validate, set up, resume or init, and run the loop to ``config.train.steps`` (or a
    preemption); the final state is checkpointed. Returns ``(state, metrics)``: the state
    replicated on all devices; metrics are those of the last log window (losses averaged, lr
    of its last step) plus ``step`` and ``preempted``."""
    config_lib.validate(config, train=True, evaluate=False)
    input_pipeline.ensure_dataset(config)
    parallel.initialize_distributed(config)
    workdir = os.path.abspath(workdir)
    is_main = jax.process_index() == 0
    workdir_lib.prepare_workdir(workdir, config, write=is_main,
                                allow_mismatch=config.train.resume_mismatch_ok)  # fmt: skip
    with contextlib.ExitStack() as stack:
        ckpt = stack.enter_context(closing(checkpointing.Checkpointer(
            os.path.join(workdir, workdir_lib.CHECKPOINT_DIR),
            keep=config.train.keep_checkpoints), "checkpoint manager"))  # fmt: skip
        writer = stack.enter_context(closing(tensorboard_writer(workdir, is_main),
                                             "TensorBoard writer"))  # fmt: skip
        watcher = stack.enter_context(PreemptionWatcher(bool(config.parallel.distributed)))
        run = _Run(config, parallel.make_mesh(), ckpt, writer, watcher, is_main)
        state = run.initial_state()
        log.info("devices %d (%d local, %d processes), %d episodes/step, steps %d..%d",
                 run.mesh.devices.size, len(run.mesh.local_devices), jax.process_count(),
                 run.global_batch, int(state.step), config.train.steps)  # fmt: skip
        try:
            state, result = run.loop(state)
        except NonFiniteLossError as e:
            raise _diverged(e, ckpt) from e
        finished = int(state.step) == config.train.steps and not result["preempted"]
        if finished and ckpt.latest_step() != config.train.steps:
            run.save(state)
        ckpt.wait()
        return state, result


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """:func:`train`, then (``config.train.eval_after``, unless preempted) the test-fold
    evaluation of :mod:`panet_jax.evaluation.evaluator`. Returns the training metrics updated with
    the evaluation results (``miou_mean``, ``fbiou_mean``, ...)."""
    state, result = train(config, workdir)
    if config.train.eval_after and not result["preempted"]:
        from panet_jax.evaluation import evaluator

        is_main = jax.process_index() == 0
        eval_metrics = evaluator.evaluate(
            config, state.variables(), workdir=os.path.abspath(workdir), progress=is_main
        )
        if is_main:
            scalars = {
                f"eval/{k}": float(v)
                for k, v in eval_metrics.items()
                if isinstance(v, int | float | np.floating | np.integer)
            }
            with closing(tensorboard_writer(os.path.abspath(workdir)), "writer") as writer:
                writer.write_scalars(int(result["step"]), scalars)
        # Evaluation keys as they are (miou_mean, ...); clashing ones get an 'eval_' prefix.
        result.update({k if k not in result else f"eval_{k}": v for k, v in eval_metrics.items()})
    return result
