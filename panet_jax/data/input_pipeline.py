"""From an experiment config to episodes: the prepared dataset, the episode configs of
training and evaluation, and this host's training batches.

Training episodes are a pure function of ``(config.seed, step, global slot)``
(:mod:`panet_jax.data.pipeline`), so a resumed or multi-host run sees exactly the episodes of an
uninterrupted single-host one. The batch iterator is a context manager: leaving it closes the
tf.data iterator at once, while the interpreter is fully alive (a parallel map with Python
``numpy_function`` calls left to interpreter shutdown can hang the exit).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from panet_jax.data.spec import EPISODE_KEYS

log = logging.getLogger(__name__)


def episode_config(config: ml_collections.ConfigDict, *, train: bool) -> Any:
    """The pipeline's ``EpisodeConfig``: training episodes (the fold's training classes, flips,
    dense supports) or test episodes (test classes, no flips, ``config.eval`` annotation,
    sampler and small-object filter; the HSNet protocol walks its list, so it has no draw to
    replay)."""
    from panet_jax.data import pipeline  # TensorFlow

    d, e = config.data, config.eval
    common = dict(
        dataset=d.dataset, fold=int(d.fold), n_ways=int(d.n_ways), n_shots=int(d.n_shots),
        n_queries=int(d.n_queries), image_size=tuple(int(s) for s in d.image_size),
        coco_split=d.coco_split, protocol=e.protocol,
        builder_config=d.get("builder_config") or None,
    )  # fmt: skip
    if train:
        return pipeline.EpisodeConfig(train=True, support_annotation="dense", **common)
    return pipeline.EpisodeConfig(
        train=False,
        support_annotation=e.support_annotation,
        split=e.get("split") or None,
        sampler=e.sampler if e.protocol == "panet" else "stateless",
        min_object_pixels=int(e.get("min_object_pixels", 0)),
        **common,
    )


def ensure_dataset(config: ml_collections.ConfigDict) -> None:
    """Raise ``FileNotFoundError`` (with the command that prepares it) when the prepared dataset
    is missing; with ``config.data.auto_prepare`` generate the synthetic set instead. Then open
    the training split's index (cheap): class sizes are checked before any device work."""
    from panet_jax.data import builders, pipeline

    d = config.data
    name = builders.BUILDER_OF_DATASET[d.dataset]
    builder = builders.get_builder(name, data_dir=d.data_dir or None,
                                   config=d.builder_config or None)  # fmt: skip
    if not builder.is_prepared() and d.auto_prepare:
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
        log.info("generating %s (config %r) under %s", name, d.builder_config or "default",
                 d.data_dir or "the TFDS default data_dir")  # fmt: skip
        builders.prepare(name, data_dir=d.data_dir or None, config=d.builder_config or None)
    pipeline.make_sampler(
        episode_config(config, train=True), data_dir=d.data_dir or None, seed=config.seed,
        batch_size=1,
    )  # fmt: skip


class Batches:
    """An iterator over episode batches (:data:`EPISODE_KEYS` arrays) that owns its tf.data
    iterator; ``close()`` (or leaving ``with``) deletes the iterator at once."""

    def __init__(self, dataset: Any):
        self._iterator: Iterator[dict[str, np.ndarray]] | None = dataset.as_numpy_iterator()

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            raise StopIteration
        batch = next(self._iterator)
        return {k: batch[k] for k in EPISODE_KEYS}

    def close(self) -> None:
        self._iterator = None  # the last reference: TF deletes the iterator resource now

    def __enter__(self) -> Batches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def train_batches(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    start_step: int,
    num_steps: int,
    process_index: int,
    process_count: int,
) -> Batches:
    """This host's training batches ``[batch_size, ...]`` for steps ``start_step, ...``
    (use it in a ``with`` block)."""
    from panet_jax.data import pipeline  # TensorFlow

    ds = pipeline.episode_dataset(
        episode_config(config, train=True), data_dir=config.data.data_dir or None,
        seed=config.seed, batch_size=batch_size, start_step=start_step, num_steps=num_steps,
        process_index=process_index, process_count=process_count,
    )  # fmt: skip
    return Batches(ds)


def eval_sampler(config: ml_collections.ConfigDict, seed: int) -> tuple[Any, Any]:
    """``(sampler, builder)`` of one evaluation run's test episodes (a single stream: episode
    ``e`` is ``sampler.draw(e, 0)``, whatever the device or process count)."""
    from panet_jax.data import pipeline  # TensorFlow

    return pipeline.make_sampler(
        episode_config(config, train=False), data_dir=config.data.data_dir or None, seed=seed,
        batch_size=1,
    )  # fmt: skip
