"""The training loop: ``train_and_evaluate(config, workdir)``.

Order of work, so that a bad run fails before it compiles anything or touches a workdir:
validate the config (incl. the evaluation keys when ``eval_after``) -> check the prepared
dataset -> (``jax.distributed``) -> check the workdir holds this run (or none) -> restore the
latest checkpoint (any device count) or init -> build this host's episode stream from the
restored step -> loop -> final checkpoint -> optional evaluation.

Checkpoints: every ``checkpoint_every`` steps (a state is written once the loss computed from
it is known to be finite), on SIGTERM / a preemption sync point, and at the end; a non-finite
loss or state stops the run with ``FloatingPointError`` and writes nothing.
"""

from __future__ import annotations

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

from panet_jax import checkpointing, logging_utils, ops, parallel, visualize
from panet_jax import train_state as ts
from panet_jax.data import folds
from panet_jax.data.spec import EPISODE_KEYS

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- validation


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"config.{key}={value!r} is invalid: expected {expected}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Static checks of every key the trainer uses; raises ``ValueError`` /
    ``FileNotFoundError`` naming the key and what is expected. Touches no device."""
    d, t = config.data, config.train
    _require(
        d.dataset in folds.NUM_CLASSES,
        "data.dataset",
        d.dataset,
        f"one of {sorted(folds.NUM_CLASSES)}",
    )
    _require(
        isinstance(d.fold, int) and 0 <= d.fold < folds.NUM_FOLDS,
        "data.fold",
        d.fold,
        f"an int in 0..{folds.NUM_FOLDS - 1} for {d.dataset}",
    )
    _require(
        d.coco_split in folds.COCO_SPLITS,
        "data.coco_split",
        d.coco_split,
        f"one of {folds.COCO_SPLITS}",
    )
    n_train = len(folds.train_classes(d.dataset, d.fold, d.coco_split))
    _require(
        isinstance(d.n_ways, int) and 1 <= d.n_ways <= n_train,
        "data.n_ways",
        d.n_ways,
        f"an int in 1..{n_train} (training classes of {d.dataset} fold {d.fold})",
    )
    for key in ("n_shots", "n_queries"):
        _require(isinstance(d[key], int) and d[key] >= 1, f"data.{key}", d[key], "an int >= 1")
    size = tuple(d.image_size)
    _require(
        len(size) == 2 and all(isinstance(s, int) and s >= 8 for s in size),
        "data.image_size",
        d.image_size,
        "(height, width) ints >= 8",
    )
    for key in ("steps", "per_device_batch", "log_every", "checkpoint_every", "keep_checkpoints"):
        _require(isinstance(t[key], int) and t[key] >= 1, f"train.{key}", t[key], "an int >= 1")
    _require(
        isinstance(t.image_every, int) and t.image_every >= 0,
        "train.image_every",
        t.image_every,
        "an int >= 0 (0 = no images)",
    )
    _require(
        config.parallel.impl in ("shard_map", "pmap"),
        "parallel.impl",
        config.parallel.impl,
        "'shard_map' or 'pmap'",
    )
    _require(
        config.optim.lr > 0 and config.optim.momentum >= 0,
        "optim.lr/momentum",
        (config.optim.lr, config.optim.momentum),
        "lr > 0 and momentum >= 0",
    )
    ts.build_model(config)  # encoder / dtype names
    ts.check_pretrained(config)
    if t.eval_after:
        from panet_jax import evaluation

        evaluation.validate_config(config)


def _episode_config(config: ml_collections.ConfigDict) -> Any:
    from panet_jax.data import pipeline  # imports TensorFlow

    d = config.data
    return pipeline.EpisodeConfig(
        dataset=d.dataset, fold=d.fold, n_ways=d.n_ways, n_shots=d.n_shots,
        n_queries=d.n_queries, image_size=tuple(d.image_size), train=True,
        support_annotation="dense", coco_split=d.coco_split, protocol=config.eval.protocol,
        builder_config=d.builder_config or None,
    )  # fmt: skip


def make_dataset(
    config: ml_collections.ConfigDict, *, batch_size: int, start_step: int, num_steps: int
) -> Iterator[dict[str, np.ndarray]]:
    """This host's episode batches ``[batch_size, ...]`` for steps ``start_step, ...``: a
    pure function of ``(config.seed, step, process)``, so resuming needs only the step."""
    from panet_jax.data import pipeline

    ds = pipeline.episode_dataset(
        _episode_config(config), data_dir=config.data.data_dir or None, seed=config.seed,
        batch_size=batch_size, start_step=start_step, num_steps=num_steps,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )  # fmt: skip
    return ({k: b[k] for k in EPISODE_KEYS} for b in ds.as_numpy_iterator())


def check_dataset(config: ml_collections.ConfigDict) -> None:
    """Raise ``FileNotFoundError`` (with the command that prepares it) when the prepared
    dataset is missing; with ``config.data.auto_prepare`` generate the synthetic set instead."""
    from panet_jax.data import builders, pipeline

    d = config.data
    name = builders.BUILDER_OF_DATASET[d.dataset]
    builder = builders.get_builder(
        name, data_dir=d.data_dir or None, config=d.builder_config or None
    )
    if not builders.is_prepared(builder) and d.auto_prepare:
        if d.dataset != "synthetic":
            raise ValueError(
                f"config.data.auto_prepare=True cannot prepare {d.dataset!r}: only "
                "'synthetic' is generated locally; prepare it with "
                + builders.prepare_command(name, d.data_dir or None)
            )
        if config.parallel.distributed:
            raise ValueError(
                "config.data.auto_prepare with parallel.distributed: prepare the "
                "synthetic set once before starting the processes"
            )
        log.info(
            "generating %s (config %r) under %s",
            name,
            d.builder_config or "default",
            d.data_dir or "the TFDS default data_dir",
        )
        builders.prepare(name, data_dir=d.data_dir or None, config=d.builder_config or None)
    pipeline.make_sampler(
        _episode_config(config), data_dir=d.data_dir or None, seed=config.seed, batch_size=1
    )  # opens the split index: cheap


# --------------------------------------------------------------------------- helpers


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """``jax.distributed.initialize`` when ``config.parallel.distributed`` (explicit
    coordinator / num_processes / process_id when given, else auto-detected, e.g. TPU).
    Idempotent; on CPU it first selects ``config.parallel.cpu_collectives`` (gloo)."""
    p = config.parallel
    if not p.distributed or jax.distributed.is_initialized():
        return
    if p.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", p.cpu_collectives)
    kwargs: dict[str, Any] = {}
    if p.coordinator_address:
        kwargs["coordinator_address"] = p.coordinator_address
    if p.num_processes > 0:
        kwargs["num_processes"] = p.num_processes
    if p.process_id >= 0:
        kwargs["process_id"] = p.process_id
    jax.distributed.initialize(**kwargs)


def tensorboard_writer(workdir: str, enabled: bool = True) -> Any:
    """An asynchronous clu writer of TensorBoard events in ``workdir``; writes nothing when not
    ``enabled`` (hosts other than the first). No clu ``LoggingWriter``: the progress line is
    the log, and a second copy of every scalar in it would only be noise."""
    from clu import metric_writers  # imports TensorFlow

    sinks = [metric_writers.SummaryWriter(workdir)] if enabled else []
    return metric_writers.AsyncMultiWriter(sinks)


def make_predict(mesh: Mesh):
    """``(state, global batch) -> [global_B, Q, H, W]`` argmax predictions, ``'batch'``-sharded."""

    def predict(state, batch):
        return ops.predict(state.apply_fn({"params": state.params}, batch)["logits"])

    mapped = jax.shard_map(
        predict, mesh=mesh, in_specs=(P(), P(parallel.BATCH_AXIS)), out_specs=P(parallel.BATCH_AXIS)
    )
    return jax.jit(mapped)


def _window_metrics(window: list[dict[str, float]]) -> dict[str, float]:
    """Losses averaged over the log window; ``lr`` as of its last step (a mean across a
    milestone would be a rate that was never used)."""
    out = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
    out["lr"] = window[-1]["lr"]
    return out


def _non_finite_error(what: str, ckpt: checkpointing.Checkpointer) -> FloatingPointError:
    last = ckpt.latest_step()
    kept = (
        f"the last good checkpoint (step {last}) in {str(ckpt.directory)!r} is kept"
        if last is not None
        else "no checkpoint had been written"
    )
    return FloatingPointError(
        f"{what}; training stopped without saving the diverged state, {kept}. "
        "Lower config.optim.lr or check the data."
    )


def _save(
    ckpt: checkpointing.Checkpointer, state: ts.TrainState, config: ml_collections.ConfigDict
) -> None:
    try:
        ckpt.save(state, config)
    except FloatingPointError as e:
        raise _non_finite_error(f"non-finite train state at step {int(state.step)}", ckpt) from e


# --------------------------------------------------------------------------- main entry


def train(config: ml_collections.ConfigDict, workdir: str) -> tuple[ts.TrainState, dict[str, Any]]:
    """Validate, set up, resume or init, and run the loop to ``config.train.steps`` (or a
    preemption); the final state is checkpointed. Returns ``(state, metrics)``: the state
    replicated on all devices; metrics are those of the last log window (losses averaged, lr
    of its last step) plus ``step`` and ``preempted``."""
    validate_config(config)
    check_dataset(config)
    maybe_initialize_distributed(config)
    workdir = os.path.abspath(workdir)
    is_main = jax.process_index() == 0
    checkpointing.prepare_workdir(
        workdir, config, write=is_main, allow_mismatch=config.train.resume_mismatch_ok
    )

    mesh = parallel.make_mesh()
    total = config.train.steps
    writer = tensorboard_writer(workdir, enabled=is_main)
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, checkpointing.CHECKPOINT_DIR), keep=config.train.keep_checkpoints
    )
    watcher = checkpointing.PreemptionWatcher(distributed=bool(config.parallel.distributed))
    try:
        if ckpt.latest_step() is not None:
            state = ckpt.restore(checkpointing.abstract_state_on(config, mesh))
            log.info("restored step %d from %s", int(state.step), ckpt.directory)
        else:
            state = parallel.replicate(
                ts.create_train_state(config, jax.random.key(config.seed)), mesh
            )
        start = int(state.step)
        log.info(
            "devices %d (%d local, %d processes), %d episodes/step, steps %d..%d",
            mesh.devices.size,
            len(mesh.local_devices),
            jax.process_count(),
            parallel.global_batch_size(config, mesh),
            start,
            total,
        )
        state, result = _train_loop(config, state, start, mesh, writer, ckpt, watcher, is_main)
        if not result["preempted"] and int(state.step) == total and ckpt.latest_step() != total:
            _save(ckpt, state, config)
        ckpt.wait()
        return state, result
    finally:
        watcher.close()
        ckpt.wait()
        ckpt.close()
        writer.flush()
        writer.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """:func:`train`, then (``config.train.eval_after``, unless preempted) the test-fold
    evaluation of :mod:`panet_jax.evaluation`. Returns the training metrics updated with the
    evaluation results (``miou_mean``, ``fbiou_mean``, ...)."""
    state, result = train(config, workdir)
    if config.train.eval_after and not result["preempted"]:
        from panet_jax import evaluation

        is_main = jax.process_index() == 0
        eval_metrics = evaluation.evaluate(
            config, {"params": state.params}, workdir=os.path.abspath(workdir), progress=is_main
        )
        if is_main:
            scalars = {
                f"eval/{k}": float(v)
                for k, v in eval_metrics.items()
                if isinstance(v, int | float | np.floating | np.integer)
            }
            writer = tensorboard_writer(os.path.abspath(workdir))
            writer.write_scalars(int(result["step"]), scalars)
            writer.close()
        # Evaluation keys as they are (miou_mean, ...); clashing ones get an 'eval_' prefix.
        result.update({k if k not in result else f"eval_{k}": v for k, v in eval_metrics.items()})
    return result


def _train_loop(
    config, state, start, mesh, writer, ckpt, watcher, is_main
) -> tuple[ts.TrainState, dict[str, Any]]:
    t = config.train
    total = t.steps
    host_batch = parallel.host_batch_size(config, mesh)
    global_batch = parallel.global_batch_size(config, mesh)
    result: dict[str, Any] = {"step": start, "preempted": False}
    if start >= total:
        return state, result
    step_fn = parallel.make_parallel_step(config, mesh)
    predict = make_predict(mesh) if t.image_every else None
    batches = make_dataset(config, batch_size=host_batch, start_step=start, num_steps=total - start)
    window: list[dict[str, float]] = []
    pending: tuple[int, Any] | None = None  # metrics of the previous step, read one step late
    # A periodic checkpoint of state s is written only once the loss computed *from* s (by
    # step s) is known to be finite: a copy of s waits one step (memory: one extra state).
    to_save: ts.TrainState | None = None
    t_window, n_window, t_first = time.perf_counter(), 0, None

    def settle(item: tuple[int, Any]) -> None:
        step, metrics = item
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(values["loss"]):
            raise _non_finite_error(f"non-finite loss at step {step} ({values})", ckpt)
        window.append(values)

    for step in range(start, total):
        batch = next(batches)
        state, metrics = step_fn(state, batch)
        if pending is not None:
            settle(pending)
        pending = (step, metrics)
        if to_save is not None:
            settle(pending)
            pending = None
            _save(ckpt, to_save, config)
            to_save = None
        done = step + 1
        n_window += 1
        if t_first is None:  # exclude the compile from the throughput
            jax.block_until_ready(metrics)
            t_window, n_window, t_first = time.perf_counter(), 0, time.perf_counter()
        if t.image_every and done % t.image_every == 0:
            preds = predict(state, parallel.host_batch_to_global(batch, mesh))
            episode = {k: v[0] for k, v in batch.items()}
            panel = visualize.episode_panel(episode, parallel.local_rows(preds)[0])
            writer.write_images(done, {"train/episode": panel[None]})
        stop = watcher.should_stop(done)
        if done % t.log_every == 0 or done == total or stop:
            if pending is not None:
                settle(pending)
                pending = None
            elapsed = time.perf_counter() - t_window
            eps = n_window * global_batch / elapsed if elapsed > 0 and n_window else float("nan")
            scalars = dict(_window_metrics(window), episodes_per_s=eps)
            writer.write_scalars(done, scalars)
            if is_main:
                eta = (total - done) * global_batch / eps if eps == eps and eps > 0 else np.nan
                log.info(logging_utils.progress_line(done, total, scalars, eps, eta))
            result.update(scalars)
            window, t_window, n_window = [], time.perf_counter(), 0
        result["step"] = done
        if stop:
            _save(ckpt, state, config)
            ckpt.wait()
            log.warning("stopping at step %d on preemption; checkpoint saved", done)
            result["preempted"] = True
            break
        if done % t.checkpoint_every == 0 and done < total:
            to_save = jax.tree.map(jnp.copy, state)
    if pending is not None:
        settle(pending)
    return state, result
