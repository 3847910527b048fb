"""Few-shot evaluation of a PANet: ``evaluate(config, variables, workdir=...)``.

The official protocol (kaixin96/PANet ``test.py``): ``config.eval.runs`` runs of
``config.eval.episodes`` test episodes each, run ``r`` seeded with ``config.eval.seed + r``,
drawn from the test classes of ``config.data.fold`` without flips (by default the official
draw itself, replayed: ``config.eval.sampler='official'``). Per run, TP/FP/FN are summed per
class over all its episodes (:mod:`panet_jax.evaluation.metrics`, official rule), then
``mIoU = mean over the test classes of TP / (TP + FP + FN)`` and FB-IoU (bg vs pooled fg);
reported as mean and std over runs with a per-class table (:mod:`panet_jax.evaluation.reports`).
``config.eval.protocol='hsnet'`` evaluates on VOC val with HSNet-style query lists;
``config.eval.support_annotation`` picks dense / scribble / bbox supports;
``config.eval.episodes=0`` (HSNet protocol) walks its whole list once (FSS-1000: every test
image). ``config.eval.original_size`` scores each query at its raw label size on the host
(:mod:`panet_jax.evaluation.original_size`; the devices then return low-resolution scores, summed
over processes at the end of a run) and ``config.eval.min_object_pixels`` drops small objects
from the episodes (:func:`panet_jax.data.sampler.drop_small_objects`). Next to the official
numbers the *strict* metric (absent classes' false positives count too) and the scores of an
all-background prediction are reported, and every run's episodes (image ids) are listed.

Episode ``e`` of a run is the pipeline's episode ``step=e`` of a batch-size-1, single-process
stream, so the episodes (and, up to float summation order in the model, the numbers) do not
depend on the device or process count. The forward pass is ``jit(shard_map(...))`` over the
``'batch'`` mesh: each global step feeds ``devices x config.eval.per_device_batch`` episodes;
process ``p`` reads the contiguous block ``[p * S * hb, (p + 1) * S * hb)`` of episode numbers
(``S`` steps, ``hb`` episodes per process and step); slots past ``config.eval.episodes`` are
zero episodes masked out of the counts, so every episode counts exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from panet_jax import config as config_lib
from panet_jax.data import folder_classes, folds, input_pipeline
from panet_jax.data.spec import EPISODE_KEYS, zeros_episode
from panet_jax.evaluation import metrics, original_size, overlays, reports
from panet_jax.evaluation.reports import EPISODE_LIST, read_episode_list  # noqa: F401 (public names)
from panet_jax.inference import loading
from panet_jax.models import registry
from panet_jax.runtime import parallel
from panet_jax.train import steps


def sampler_name(config: ml_collections.ConfigDict) -> str:
    """Which procedure chose the test episodes, as reported in every results file."""
    if config.eval.protocol != "panet":
        return f"{config.eval.protocol} list walk"
    return config.eval.sampler


@functools.lru_cache(maxsize=8)
def make_sharded_eval_step(
    model: Any, mesh: Mesh, num_classes: int, original_size: bool = False
) -> Any:
    """``jit(shard_map(eval_step))`` of :func:`panet_jax.train.steps.make_eval_step`:
    ``(replicated variables, 'batch'-sharded episodes [G, ...], valid [G]) -> (replicated
    counts, 'batch'-sharded predictions [G, Q, H, W])``; with ``original_size`` the first
    output is the ``'batch'``-sharded low-resolution scores ``[G, Q, h, w, 1 + N]`` instead.
    Cached per model, mesh and mode."""
    step = steps.make_eval_step(model, num_classes, original_size=original_size)
    first = P(parallel.BATCH_AXIS) if original_size else P()
    return parallel.on_batch(step, mesh, 2, (first, P(parallel.BATCH_AXIS)))


def episode_count(config: ml_collections.ConfigDict, sampler: Any) -> int:
    """Episodes per run: ``config.eval.episodes``, or with 0 (protocol ``'hsnet'``) one per
    pair of the walked list (FSS-1000: every test image once as the query)."""
    return int(config.eval.episodes) or len(sampler.pairs)


class Layout:
    """Which episode numbers each process feeds at each global step.

    ``steps = ceil(episodes / global_batch)``; process ``p`` owns numbers
    ``[p * steps * host_batch, (p + 1) * steps * host_batch)``, clipped to ``episodes``.
    """

    def __init__(self, episodes: int, host_batch: int, process_count: int):
        self.episodes, self.host_batch, self.process_count = episodes, host_batch, process_count
        self.global_batch = host_batch * process_count
        self.steps = math.ceil(episodes / self.global_batch)
        self.per_process = self.steps * host_batch

    def process_range(self, p: int) -> tuple[int, int]:
        """Episode numbers ``[start, stop)`` read by process ``p``."""
        start = min(p * self.per_process, self.episodes)
        return start, min(start + self.per_process, self.episodes)

    def done_after(self, step: int) -> int:
        """Episodes (all processes) evaluated once global step ``step`` is done."""
        n = (step + 1) * self.host_batch
        return sum(min(n, b - a) for a, b in map(self.process_range, range(self.process_count)))


def run_sampler(config: ml_collections.ConfigDict, seed: int) -> tuple[Any, Any]:
    """``(sampler, builder)`` of one run's test episodes."""
    return input_pipeline.eval_sampler(config, seed)


def check_episodes(config: ml_collections.ConfigDict) -> None:
    """Open the test episodes' index and sampler once (official lists, enough images per
    class): the errors :func:`evaluate` would raise, raised before any weights are read."""
    run_sampler(config, int(config.eval.seed))


def host_batches(
    config: ml_collections.ConfigDict, sampler: Any, builder: Any, layout: Layout,
    process_index: int,
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:  # fmt: skip
    """This process's ``(episodes [host_batch, ...], valid [host_batch])`` for every global step
    of one run (``sampler`` from :func:`run_sampler`); missing slots are zero episodes with
    ``valid = False``. The tf.data iterator is closed when the generator is."""
    from panet_jax.data import pipeline  # TensorFlow

    start, stop = layout.process_range(process_index)
    ds = pipeline.sampler_dataset(sampler, builder, start_step=start, num_steps=stop - start)
    hb, d = layout.host_batch, config.data
    with input_pipeline.Batches(ds) as it:
        for _ in range(layout.steps):
            items = [next(it, None) for _ in range(hb)]
            items = [x for x in items if x is not None]
            size = (int(s) for s in d.image_size)
            pad = zeros_episode(int(d.n_ways), int(d.n_shots), int(d.n_queries), *size,
                                batch=(hb - len(items),))  # fmt: skip
            parts = [*items, pad]
            batch = {k: np.concatenate([p[k] for p in parts]) for k in EPISODE_KEYS}
            yield batch, np.arange(hb) < len(items)


def episode_records(
    sampler: Any, run: int, seed: int, episodes: int, annotation: str
) -> Iterator[dict[str, Any]]:
    """The audit trail of one run: one record per episode with the image ids it used
    (``run``, ``seed``, ``episode``, ``class_ids``, ``support_ids [N][K]``, ``query_ids [Q]``,
    ``annotation``, and ``scribble_picks`` where the official picks are replayed)."""
    for e in range(episodes):
        d = sampler.describe(e, 0)
        d.pop("flips")  # test episodes are never flipped
        yield {"run": run, "seed": seed, "episode": e, **d, "annotation": annotation}


@dataclasses.dataclass
class _Evaluation:
    """One evaluation's fixed parts (see :func:`evaluate`)."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    layout: Layout
    variables: Any
    out_dir: Path | None
    names: Mapping[int, str]
    test_classes: list[int]
    bar: Any

    @functools.cached_property
    def step(self) -> Any:
        num_classes = folds.NUM_CLASSES[self.config.data.dataset]
        return make_sharded_eval_step(registry.build_panet(self.config), self.mesh, num_classes,
                              _original_size(self.config))  # fmt: skip

    def scorer(self, sampler: Any, builder: Any) -> original_size.Scorer | None:
        """The original-size scorer of a run's episodes on this process (None: scored at
        ``data.image_size`` on the devices)."""
        if not _original_size(self.config):
            return None
        from panet_jax.data import raw_labels  # TensorFlow

        masks = raw_labels.RawMasks(builder, sampler.cfg.resolved_split)
        n_supports = sampler.cfg.n_ways * sampler.cfg.n_shots

        def draw(e: int) -> tuple[np.ndarray, list[np.ndarray]]:
            d = sampler.draw(e, 0)
            return d.class_ids, masks.query_labels(d, n_supports)

        first = self.layout.process_range(jax.process_index())[0]
        return original_size.Scorer(draw, first, folds.NUM_CLASSES[self.config.data.dataset])

    def run(self, r: int, audit: list[dict[str, Any]], opened: tuple | None = None) -> dict:
        """Run ``r``: its episodes through the model, counts accumulated on the host.
        ``opened``: this run's ``(sampler, builder)`` when already built."""
        e = self.config.eval
        seed = int(e.seed) + r
        sampler, builder = opened or run_sampler(self.config, seed)
        if self.out_dir is not None:
            audit += episode_records(sampler, r, seed, self.layout.episodes, e.support_annotation)
        n_images = int(e.num_images) if self.out_dir is not None and r == 0 else 0
        num_classes = folds.NUM_CLASSES[self.config.data.dataset]
        acc = {k: metrics.zeros(num_classes) for k in ("official", "strict", "background")}
        batches = host_batches(self.config, sampler, builder, self.layout, jax.process_index())
        scorer = self.scorer(sampler, builder)
        with contextlib.closing(batches):
            acc, pending = self.feed(batches, acc, n_images, scorer)
        if pending is not None:
            acc = _add(acc, pending())
        if scorer is not None:  # host counts of this process's episodes only
            acc = _sum_over_processes(acc)
        return {"seed": seed, **reports.run_scores(acc, self.test_classes)}

    def feed(self, batches: Iterator, acc: reports.CountsTriple, n_images: int,
             scorer: original_size.Scorer | None = None) -> tuple:  # fmt: skip
        """Every batch of a run through the model; counts are read one step late (so the
        device stays busy). Returns the accumulated counts and a thunk of the last step's."""
        pending, hb = None, self.layout.host_batch
        for s, (batch, valid) in enumerate(batches):
            out, pred = self.step(
                self.variables,
                parallel.host_batch_to_global(batch, self.mesh),
                parallel.host_batch_to_global({"v": valid}, self.mesh)["v"],
            )
            if s * hb < n_images:  # episodes 0.. are process 0's first rows
                rows = parallel.local_rows(pred, self.mesh)
                self.write_images(batch, valid, rows, s * hb, n_images)
            if pending is not None:  # read the previous step's counts: keeps the device busy
                acc = _add(acc, pending())
            pending = functools.partial(self.step_counts, out, valid, s * hb, scorer)
            self.bar.update(self.layout.done_after(s) - (self.layout.done_after(s - 1) if s else 0))
        return acc, pending

    def step_counts(self, out: Any, valid: np.ndarray, row: int,
                    scorer: original_size.Scorer | None) -> Any:  # fmt: skip
        """A step's counts: its own (replicated, summed over devices), or the original-size
        counts of this process's rows ``row, row + 1, ...`` of its scores."""
        if scorer is None:
            return out
        return scorer(parallel.local_rows(out, self.mesh), valid, row)

    def write_images(self, batch: Mapping[str, np.ndarray], valid: np.ndarray, pred: np.ndarray,
                     first: int, n_images: int) -> None:  # fmt: skip
        """Panels of this batch's episodes numbered ``first + i < n_images`` (process 0)."""
        for i in range(len(valid)):
            if valid[i] and first + i < n_images:
                episode = {k: np.asarray(v[i]) for k, v in batch.items()}
                panel = overlays.episode_panel(episode, pred[i], class_names=self.names)
                path = self.out_dir / "images" / f"episode_{first + i:04d}.png"
                overlays.save_png(panel, path)


def _original_size(config: ml_collections.ConfigDict) -> bool:
    return bool(config.eval.get("original_size", False))


def _sum_over_processes(acc: reports.CountsTriple) -> reports.CountsTriple:
    """int64 counts summed over all processes (exact: sent as three 20-bit int32 limbs, as
    JAX without x64 has no int64)."""
    if jax.process_count() == 1:
        return acc
    weights = np.array([1 << 40, 1 << 20, 1], np.int64)[:, None]

    def split(x: np.ndarray) -> np.ndarray:
        return np.stack([x >> 40, (x >> 20) & 0xFFFFF, x & 0xFFFFF]).astype(np.int32)

    def join(g: np.ndarray) -> np.ndarray:  # [processes, 3, C + 1]
        return (np.asarray(g, np.int64).sum(0) * weights).sum(0)

    return jax.tree.map(join, multihost_utils.process_allgather(jax.tree.map(split, acc)))


def _add(acc: reports.CountsTriple, counts: Mapping[str, metrics.Counts]) -> reports.CountsTriple:
    host = jax.device_get(counts)
    return {k: metrics.add(acc[k], host[k]) for k in acc}


def _settings(
    config: ml_collections.ConfigDict, mesh: Mesh, test_classes: list[int], episodes: int,
    info: Mapping[str, Any],
) -> dict:  # fmt: skip
    d, e = config.data, config.eval
    ecfg = input_pipeline.episode_config(config, train=False)
    return {
        "dataset": d.dataset, "fold": int(d.fold), "n_ways": int(d.n_ways),
        "n_shots": int(d.n_shots), "n_queries": int(d.n_queries),
        "image_size": [int(v) for v in d.image_size], "coco_split": d.coco_split,
        "protocol": e.protocol, "split": ecfg.resolved_split, "sampler": sampler_name(config),
        "episode_list": EPISODE_LIST, "support_annotation": e.support_annotation,
        "runs": int(e.runs), "episodes": episodes, "seed": int(e.seed),
        "original_size": _original_size(config),
        "min_object_pixels": int(e.get("min_object_pixels", 0)),
        "test_classes": test_classes,
        "devices": int(mesh.devices.size), "processes": jax.process_count(),
        "per_device_batch": int(e.per_device_batch), "model": config.model.to_dict(),
        **dict(info),
    }  # fmt: skip


def _dataset_info(sampler: Any, builder: Any) -> dict[str, Any]:
    """The split the episodes came from and, for a user's folder, its name and class split."""
    out: dict[str, Any] = {"split": sampler.cfg.resolved_split}
    if sampler.cfg.dataset in folds.PREPARED_CLASSES:
        config_name = builder.builder_config.name if builder.builder_config else builder.name
        out.update(folder_classes.report_info(config_name, builder.info.metadata or {}))
    return out


def evaluate(
    config: ml_collections.ConfigDict,
    variables: Mapping[str, Any],
    *,
    workdir: str | Path | None = None,
    progress: bool = True,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``variables`` (``{'params': ...}``) on the test fold; see the module docstring.

    Args:
      config: the experiment config (``model``, ``data``, ``eval`` sections).
      variables: PANet variables, host or device arrays (replicated onto the mesh here).
      workdir: if given, process 0 writes ``results.json``, ``results.md``, ``episodes.jsonl``
        and ``config.eval.num_images`` episode PNGs into a new directory
        ``<workdir>/eval_<dataset>_fold<f>_<N>way<K>shot_<protocol>_<annotation>[_<k>protos][_<i>]``.
      progress: show a progress bar (rate, ETA) on stderr.
      info: extra entries for ``settings`` in the reports (e.g. the checkpoint path).
    Returns:
      ``miou_mean``, ``miou_std``, ``fbiou_mean``, ``fbiou_std``, ``strict_miou_*``,
      ``strict_fbiou_*``, ``background_miou_baseline``, ``background_fbiou_baseline``,
      ``per_class`` (``{class id: {...}}``), ``runs`` (per-run scores), ``settings``,
      ``seconds``, ``episodes_per_s``, ``output_dir`` (``None`` without ``workdir``).
    """
    config_lib.validate(config, train=False, evaluate=True)
    e, is_main = config.eval, jax.process_index() == 0
    sampler, builder = run_sampler(config, int(e.seed))  # opens the data: errors come first
    test_classes = sorted(int(c) for c in sampler.pool)
    names = reports.class_names(config.data.dataset, builder.info.metadata)
    mesh = parallel.make_mesh()
    host_batch = len(mesh.local_devices) * int(e.per_device_batch)
    layout = Layout(episode_count(config, sampler), host_batch, jax.process_count())
    out_dir = None
    if workdir is not None and is_main:
        out_dir = reports.unique_dir(Path(workdir) / reports.result_dir_name(config))
        (out_dir / "images").mkdir()
    total = layout.episodes * int(e.runs)
    with tqdm(total=total, unit="ep", desc="eval", file=sys.stderr,
              disable=not (progress and is_main), mininterval=15.0) as bar:  # fmt: skip
        variables = parallel.replicate(loading.as_panet_variables(variables), mesh)
        ev = _Evaluation(config, mesh, layout, variables, out_dir, names, test_classes, bar)
        t0, audit = time.perf_counter(), []
        # Run 0's sampler (seed + 0) is the one opened above.
        runs = [ev.run(r, audit, (sampler, builder) if r == 0 else None)
                for r in range(int(e.runs))]  # fmt: skip
        seconds = time.perf_counter() - t0
    results = reports.summarize(runs, test_classes, names)
    results.update(runs=runs, seconds=seconds, episodes_per_s=total / max(seconds, 1e-9),
                   settings=_settings(config, mesh, test_classes, layout.episodes,
                                      {**_dataset_info(sampler, builder), **(info or {})}),
                   output_dir=None if out_dir is None else str(out_dir))  # fmt: skip
    if is_main:
        print(reports.markdown_tables(results), flush=True)
        if out_dir is not None:
            reports.write_results(out_dir, results, audit)
            print(f"results written to {out_dir}", flush=True)
    return results
