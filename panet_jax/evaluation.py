"""Few-shot evaluation of a PANet: ``evaluate(config, variables, workdir=...)``.

The official protocol (``panet_official.md`` Sec. 5): ``config.eval.runs`` runs of
``config.eval.episodes`` test episodes each, run ``r`` seeded with ``config.eval.seed + r``,
drawn from the test classes of ``config.data.fold`` without flips. Per run, TP/FP/FN are summed
per class over all its episodes (:mod:`panet_jax.metrics`, official rule), then
``mIoU = mean over the test classes of TP / (TP + FP + FN)`` and FB-IoU (bg vs pooled fg);
reported as mean and std (``ddof=0``, as the official ``np.std``) over runs, with a per-class
table. ``config.eval.protocol='hsnet'`` evaluates on VOC val with HSNet-style query lists (the
sampling is the pipeline's); ``config.eval.support_annotation`` picks dense / scribble / bbox
supports. Next to the official numbers the *strict* metric (absent classes' false positives
count too) and the scores of an all-background prediction are reported.

Episode ``e`` of a run is the pipeline's episode ``step=e`` of a batch-size-1, single-process
stream, so the episodes (and, up to float summation order in the model, the numbers) do not
depend on the device or process count. The forward pass is ``jit(shard_map(...))`` over the
``'batch'`` mesh: each global step feeds ``devices x config.eval.per_device_batch`` episodes;
process ``p`` reads the contiguous block ``[p * S * hb, (p + 1) * S * hb)`` of episode numbers
(``S`` steps, ``hb`` episodes per process and step); slots past ``config.eval.episodes`` are
zero episodes masked out of the counts, so every episode counts exactly once.

Scores are fractions in [0, 1] in the returned dict and ``results.json``; tables print percent.
If a test class never occurs in a run (only possible with very few episodes), its IoU is NaN
and the run's mIoU averages the classes that did occur (the official ``mean`` would be NaN);
``missing_classes`` lists them.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from panet_jax import logging_utils, metrics, ops, parallel, visualize
from panet_jax.data import folds
from panet_jax.data.spec import EPISODE_KEYS, zeros_episode

PROTOCOLS = ("panet", "hsnet")
ANNOTATIONS = ("dense", "scribble", "bbox")
EPISODE_LIST = "episodes.jsonl"  # the audit trail: one line per episode with its image ids
RESULT_FILES = ("results.json", "results.md", EPISODE_LIST)
SAMPLERS = ("official", "stateless")

CountsTriple = dict[str, metrics.Counts]  # 'official' | 'strict' | 'background'


# --------------------------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------------------------


def validate_config(config: ml_collections.ConfigDict) -> None:
    """``ValueError`` naming the offending ``config.eval`` key."""
    e = config.eval
    checks = [
        (e.protocol in PROTOCOLS, "protocol", e.protocol, f"one of {PROTOCOLS}"),
        (e.support_annotation in ANNOTATIONS, "support_annotation", e.support_annotation,
         f"one of {ANNOTATIONS}"),
        (int(e.runs) >= 1, "runs", e.runs, "an int >= 1"),
        (int(e.episodes) >= 1, "episodes", e.episodes, "an int >= 1"),
        (int(e.per_device_batch) >= 1, "per_device_batch", e.per_device_batch, "an int >= 1"),
        (int(e.num_images) >= 0, "num_images", e.num_images, "an int >= 0"),
        (int(e.seed) >= 0, "seed", e.seed, "an int >= 0"),
        (e.sampler in SAMPLERS, "sampler", e.sampler, f"one of {SAMPLERS}"),
    ]  # fmt: skip
    for ok, key, value, expected in checks:
        if not ok:
            raise ValueError(f"config.eval.{key}={value!r}; expected {expected}")
    if e.protocol == "hsnet" and (config.data.n_ways != 1 or config.data.n_queries != 1):
        raise ValueError(
            "config.eval.protocol='hsnet' is 1-way with 1 query: set "
            "config.data.n_ways=1 and config.data.n_queries=1"
        )


def episode_config(config: ml_collections.ConfigDict) -> Any:
    """The pipeline's ``EpisodeConfig`` of the test episodes (test classes, no flips)."""
    from panet_jax.data import pipeline  # TensorFlow

    d, e = config.data, config.eval
    return pipeline.EpisodeConfig(
        dataset=d.dataset, fold=int(d.fold), n_ways=int(d.n_ways), n_shots=int(d.n_shots),
        n_queries=int(d.n_queries), image_size=tuple(int(s) for s in d.image_size), train=False,
        support_annotation=e.support_annotation, coco_split=d.coco_split, protocol=e.protocol,
        split=e.get("split") or None,
        # The HSNet protocol walks its (image, class) list: there is no draw to replay.
        sampler=e.sampler if e.protocol == "panet" else "stateless",
        builder_config=d.get("builder_config") or None,
    )  # fmt: skip


def sampler_name(config: ml_collections.ConfigDict) -> str:
    """Which procedure chose the test episodes, as reported in every results file."""
    if config.eval.protocol != "panet":
        return f"{config.eval.protocol} list walk"
    return config.eval.sampler


def class_names(dataset: str) -> dict[int, str]:
    """``{class id: name}`` where names are known (VOC, synthetic), else ``'class <id>'``."""
    if dataset == "pascal5i":
        return {i + 1: n for i, n in enumerate(folds.VOC_CLASS_NAMES)}
    if dataset == "synthetic":
        from panet_jax.data.builders import synthetic  # TFDS

        def name(c: int) -> str:
            shape, texture = synthetic.class_family(c)
            return f"{synthetic.SHAPES[shape]}/{synthetic.TEXTURES[texture]}"

        return {c: name(c) for c in folds.all_classes(dataset)}
    return {c: f"class {c}" for c in folds.all_classes(dataset)}


# --------------------------------------------------------------------------------------------
# The compiled step.
# --------------------------------------------------------------------------------------------


def panet_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """``{'params': {'encoder': ...}}`` from PANet variables, or from bare encoder params
    (``{'params': {'conv1_1': ...}}``, e.g. a converted ImageNet ``.npz``: the official
    ``notrain`` evaluation)."""
    params = variables["params"]
    if "encoder" not in params and "conv1_1" in params:
        params = {"encoder": params}
    return {"params": params}


@functools.lru_cache(maxsize=8)
def make_eval_step(
    model: Any, mesh: Mesh, num_classes: int
) -> Callable[[Any, dict[str, jax.Array], jax.Array], tuple[CountsTriple, jax.Array]]:
    """``jit(shard_map(step))``: ``(replicated variables, 'batch'-sharded episodes [G, ...],
    valid [G] bool) -> ({'official', 'strict', 'background'}: replicated int32 Counts
    [num_classes + 1], predictions [G, Q, H, W] int32 'batch'-sharded)``. Cached, so repeated
    evaluations of one model reuse the compiled program."""

    def step(variables, batch, valid):
        pred = ops.predict(model.apply(variables, batch)["logits"])
        labels, ids = batch["query_labels"], batch["class_ids"]
        counts = {
            "official": metrics.batch_counts(pred, labels, ids, num_classes, valid=valid),
            "strict": metrics.batch_counts(pred, labels, ids, num_classes, valid=valid,
                                           strict=True),
            "background": metrics.batch_counts(jnp.zeros_like(pred), labels, ids, num_classes,
                                               valid=valid),
        }  # fmt: skip
        return jax.lax.psum(counts, parallel.BATCH_AXIS), pred

    mapped = jax.shard_map(
        step, mesh=mesh, in_specs=(P(), P(parallel.BATCH_AXIS), P(parallel.BATCH_AXIS)),
        out_specs=(P(), P(parallel.BATCH_AXIS)),
    )  # fmt: skip
    return jax.jit(mapped)


# --------------------------------------------------------------------------------------------
# Episode stream of one run.
# --------------------------------------------------------------------------------------------


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
    """``(sampler, builder)`` of one run's test episodes (a single stream: episode ``e`` is
    ``sampler.draw(e, 0)``, whatever the device or process count)."""
    from panet_jax.data import pipeline  # TensorFlow

    return pipeline.make_sampler(
        episode_config(config), data_dir=config.data.data_dir or None, seed=seed, batch_size=1
    )


def host_batches(
    config: ml_collections.ConfigDict,
    sampler: Any,
    builder: Any,
    layout: Layout,
    process_index: int,
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """This process's ``(episodes [host_batch, ...], valid [host_batch])`` for every global step
    of one run (``sampler`` from :func:`run_sampler`); missing slots are zero episodes with
    ``valid = False``."""
    from panet_jax.data import pipeline  # TensorFlow

    start, stop = layout.process_range(process_index)
    ds = pipeline.sampler_dataset(sampler, builder, start_step=start, num_steps=stop - start)
    hb = layout.host_batch
    d = config.data
    it = ds.as_numpy_iterator()
    for _ in range(layout.steps):
        items = [next(it, None) for _ in range(hb)]
        items = [x for x in items if x is not None]
        pad = zeros_episode(
            int(d.n_ways),
            int(d.n_shots),
            int(d.n_queries),
            *(int(s) for s in d.image_size),
            batch=(hb - len(items),),
        )
        parts = [{k: x[k] for k in EPISODE_KEYS} for x in items] + [pad]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in EPISODE_KEYS}
        valid = np.arange(hb) < len(items)
        yield batch, valid


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


def read_episode_list(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of an evaluation's ``episodes.jsonl`` (see :func:`episode_records`)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------------
# Progress.
# --------------------------------------------------------------------------------------------


class Progress:
    """``eval run 1/5 | 240/1000 episodes | 12.3 ep/s | ETA 5m32s`` on stderr: rewritten in
    place on a terminal, else at most every ``every_s`` seconds and at the end of each run."""

    def __init__(self, total: int, enabled: bool, every_s: float = 15.0):
        self.total, self.enabled, self.every_s = total, enabled, every_s
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last = -math.inf
        self.finished = 0  # episodes of completed runs

    def update(self, run: int, runs: int, done: int, per_run: int, end: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not (end or self.tty or now - self.last >= self.every_s):
            return
        self.last = now
        overall = self.finished + done
        rate = overall / max(now - self.t0, 1e-9)
        eta = (self.total - overall) / rate if rate > 0 else math.nan
        line = (
            f"eval run {run + 1}/{runs} | {done}/{per_run} episodes | {rate:.1f} ep/s | "
            f"ETA {logging_utils.format_duration(eta)}"
        )
        print(("\r" + line + "\x1b[K") if self.tty else line, end="\n" if end or not self.tty
              else "", file=sys.stderr, flush=True)  # fmt: skip
        if end:
            self.finished += per_run


# --------------------------------------------------------------------------------------------
# Scores.
# --------------------------------------------------------------------------------------------


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan


def run_scores(counts: CountsTriple, test_classes: list[int]) -> dict[str, Any]:
    """Scores of one run from its accumulated counts."""
    off, strict, bg = counts["official"], counts["strict"], counts["background"]
    iou = metrics.class_iou(off, test_classes)
    strict_iou = metrics.class_iou(strict, test_classes)
    iou_bg, iou_fg = metrics.binary_iou(off)
    return {
        "miou": _nanmean(iou),
        "fbiou": metrics.fb_iou(off),
        "iou_bg": iou_bg,
        "iou_fg": iou_fg,
        "strict_miou": _nanmean(strict_iou),
        "strict_fbiou": metrics.fb_iou(strict),
        "background_miou": _nanmean(metrics.class_iou(bg, test_classes)),
        "background_fbiou": metrics.fb_iou(bg),
        "class_iou": {c: float(v) for c, v in zip(test_classes, iou, strict=True)},
        "strict_class_iou": {c: float(v) for c, v in zip(test_classes, strict_iou, strict=True)},
        "class_queries": {c: int(np.asarray(off.episodes)[c]) for c in test_classes},
        "missing_classes": [c for c, v in zip(test_classes, iou, strict=True) if np.isnan(v)],
    }


def summarize(
    runs: list[dict[str, Any]], test_classes: list[int], names: Mapping[int, str]
) -> dict[str, Any]:
    """Mean / std over runs of every scalar, and the per-class table."""

    def ms(key: str) -> tuple[float, float]:
        m, s = metrics.mean_std([r[key] for r in runs])
        return float(m), float(s)

    out: dict[str, Any] = {}
    for key in ("miou", "fbiou", "strict_miou", "strict_fbiou"):
        out[f"{key}_mean"], out[f"{key}_std"] = ms(key)
    out["background_miou_baseline"] = ms("background_miou")[0]
    out["background_fbiou_baseline"] = ms("background_fbiou")[0]
    per_class = {}
    for c in test_classes:
        iou = np.array([r["class_iou"][c] for r in runs])
        strict = np.array([r["strict_class_iou"][c] for r in runs])
        per_class[c] = {
            "name": names.get(c, f"class {c}"),
            "iou_mean": _nanmean(iou),
            "iou_std": float(np.nanstd(iou)) if np.isfinite(iou).any() else math.nan,
            "strict_iou_mean": _nanmean(strict),
            "strict_iou_std": float(np.nanstd(strict)) if np.isfinite(strict).any() else math.nan,
            "queries_per_run": float(np.mean([r["class_queries"][c] for r in runs])),
        }
    out["per_class"] = per_class
    return out


# --------------------------------------------------------------------------------------------
# Reports.
# --------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"


def _pm(mean: float, std: float) -> str:
    return f"{_pct(mean)} ± {_pct(std)}"


def markdown_tables(results: Mapping[str, Any]) -> str:
    """The summary, per-class and per-run tables (Markdown, scores in %)."""
    r = results
    lines = [
        "| metric (%) | mean ± std over runs |",
        "|---|---|",
        f"| mIoU (official) | {_pm(r['miou_mean'], r['miou_std'])} |",
        f"| FB-IoU (official) | {_pm(r['fbiou_mean'], r['fbiou_std'])} |",
        f"| mIoU (strict: absent-class FP count) | {_pm(r['strict_miou_mean'], r['strict_miou_std'])} |",  # noqa: E501
        f"| FB-IoU (strict) | {_pm(r['strict_fbiou_mean'], r['strict_fbiou_std'])} |",
        f"| all-background baseline mIoU / FB-IoU | {_pct(r['background_miou_baseline'])} / "
        f"{_pct(r['background_fbiou_baseline'])} |",
        "",
        "| class | name | IoU (%) | strict IoU (%) | queries / run |",
        "|---|---|---|---|---|",
    ]
    for c, v in r["per_class"].items():
        lines.append(
            f"| {c} | {v['name']} | {_pm(v['iou_mean'], v['iou_std'])} | "
            f"{_pm(v['strict_iou_mean'], v['strict_iou_std'])} | {v['queries_per_run']:.1f} |"
        )
    lines += [
        "",
        "| run | seed | mIoU (%) | FB-IoU (%) | strict mIoU (%) | missing classes |",
        "|---|---|---|---|---|---|",
    ]
    for i, run in enumerate(r["runs"]):
        missing = ", ".join(map(str, run["missing_classes"])) or "-"
        lines.append(
            f"| {i} | {run['seed']} | {_pct(run['miou'])} | {_pct(run['fbiou'])} | "
            f"{_pct(run['strict_miou'])} | {missing} |"
        )
    return "\n".join(lines) + "\n"


def markdown_report(results: Mapping[str, Any]) -> str:
    s = results["settings"]
    head = [
        f"# PANet evaluation: {s['dataset']} fold {s['fold']}, {s['n_ways']}-way "
        f"{s['n_shots']}-shot ({s['protocol']} protocol)",
        "",
        f"{s['runs']} runs x {s['episodes']} episodes (seeds {s['seed']}.."
        f"{s['seed'] + s['runs'] - 1}), split `{s['split']}`, {s['support_annotation']} "
        f"supports, {s['image_size'][0]}x{s['image_size'][1]} px, sampler `{s['sampler']}`; "
        f"{s['devices']} devices x {s['per_device_batch']} episodes/step; "
        f"{results['seconds']:.0f} s ({results['episodes_per_s']:.1f} episodes/s).",
        "",
        "Official metric: per run, TP/FP/FN summed per class over all episodes, counted for a "
        "class only in queries whose ground truth contains it (PANet `util/metric.py`); mIoU = "
        "mean class IoU over the test classes; FB-IoU = mean of bg and pooled-fg IoU. Strict: "
        "also counts false positives of classes absent from the ground truth. Std is over runs "
        "(ddof=0).",
        "",
    ]
    return "\n".join(head) + "\n" + markdown_tables(results)


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def unique_dir(base: Path) -> Path:
    """Create and return ``base``, or ``base_2``, ``base_3``, ... if it exists (never reuses
    an existing directory, so no result file is ever overwritten)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        path = base if i == 1 else base.with_name(f"{base.name}_{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free result directory name next to {base}")


def result_dir_name(config: ml_collections.ConfigDict) -> str:
    d, e = config.data, config.eval
    return (
        f"eval_{d.dataset}_fold{d.fold}_{d.n_ways}way{d.n_shots}shot_{e.protocol}_"
        f"{e.support_annotation}"
    )


# --------------------------------------------------------------------------------------------
# The evaluation.
# --------------------------------------------------------------------------------------------


def evaluate(
    config: ml_collections.ConfigDict,
    variables: Mapping[str, Any],
    *,
    workdir: str | os.PathLike | None = None,
    progress: bool = True,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``variables`` (``{'params': ...}``) on the test fold; see the module docstring.

    Args:
      config: the experiment config (``model``, ``data``, ``eval`` sections).
      variables: PANet variables, host or device arrays (replicated onto the mesh here).
      workdir: if given, process 0 writes ``results.json``, ``results.md`` and
        ``config.eval.num_images`` episode PNGs into a new directory
        ``<workdir>/eval_<dataset>_fold<f>_<N>way<K>shot_<protocol>_<annotation>[_<i>]``.
      progress: print a progress line (rate, ETA) on stderr.
      info: extra entries for ``settings`` in the reports (e.g. the checkpoint path).
    Returns:
      ``miou_mean``, ``miou_std``, ``fbiou_mean``, ``fbiou_std``, ``strict_miou_*``,
      ``strict_fbiou_*``, ``background_miou_baseline``, ``background_fbiou_baseline``,
      ``per_class`` (``{class id: {...}}``), ``runs`` (per-run scores), ``settings``,
      ``seconds``, ``episodes_per_s``, ``output_dir`` (``None`` without ``workdir``).
    """
    from panet_jax import train_state

    validate_config(config)
    d, e = config.data, config.eval
    ecfg = episode_config(config)  # validates dataset / fold / sizes
    test_classes = folds.test_classes(d.dataset, int(d.fold), d.coco_split)
    num_classes = folds.NUM_CLASSES[d.dataset]
    names = class_names(d.dataset)
    is_main = jax.process_index() == 0

    mesh = parallel.make_mesh()
    host_batch = len(mesh.local_devices) * int(e.per_device_batch)
    layout = Layout(int(e.episodes), host_batch, jax.process_count())
    model = train_state.build_model(config)
    step_fn = make_eval_step(model, mesh, num_classes)
    variables = parallel.replicate(panet_variables(variables), mesh)

    out_dir = None
    if workdir is not None and is_main:
        out_dir = unique_dir(Path(workdir) / result_dir_name(config))
        (out_dir / "images").mkdir()
    n_images = int(e.num_images) if out_dir is not None else 0

    bar = Progress(layout.episodes * int(e.runs), progress and is_main)
    t0 = time.perf_counter()
    runs: list[dict[str, Any]] = []
    audit: list[dict[str, Any]] = []
    for r in range(int(e.runs)):
        seed = int(e.seed) + r
        acc = {k: metrics.zeros(num_classes) for k in ("official", "strict", "background")}
        pending = None
        sampler, builder = run_sampler(config, seed)
        if out_dir is not None:
            audit += episode_records(sampler, r, seed, layout.episodes, e.support_annotation)
        batches = host_batches(config, sampler, builder, layout, jax.process_index())
        for s, (batch, valid) in enumerate(batches):
            counts, pred = step_fn(
                variables,
                parallel.host_batch_to_global(batch, mesh),
                parallel.host_batch_to_global({"v": valid}, mesh)["v"],
            )
            if r == 0 and s * host_batch < n_images:  # episodes 0.. are process 0's first rows
                rows = parallel.local_rows(pred)
                _write_images(out_dir, batch, valid, rows, s * host_batch, n_images, names)
            if pending is not None:  # read the previous step's counts: keeps the device busy
                acc = _add(acc, pending)
            pending = counts
            bar.update(r, int(e.runs), layout.done_after(s), layout.episodes)
        if pending is not None:
            acc = _add(acc, pending)
        bar.update(r, int(e.runs), layout.episodes, layout.episodes, end=True)
        runs.append({"seed": seed, **run_scores(acc, test_classes)})
    seconds = time.perf_counter() - t0

    results = summarize(runs, test_classes, names)
    results["runs"] = runs
    results["seconds"] = seconds
    results["episodes_per_s"] = layout.episodes * int(e.runs) / max(seconds, 1e-9)
    results["settings"] = {
        "dataset": d.dataset, "fold": int(d.fold), "n_ways": int(d.n_ways),
        "n_shots": int(d.n_shots), "n_queries": int(d.n_queries),
        "image_size": [int(v) for v in d.image_size], "coco_split": d.coco_split,
        "protocol": e.protocol, "split": ecfg.resolved_split, "sampler": sampler_name(config),
        "episode_list": EPISODE_LIST,
        "support_annotation": e.support_annotation, "runs": int(e.runs),
        "episodes": int(e.episodes), "seed": int(e.seed), "test_classes": test_classes,
        "devices": int(mesh.devices.size), "processes": jax.process_count(),
        "per_device_batch": int(e.per_device_batch), "model": config.model.to_dict(),
        **dict(info or {}),
    }  # fmt: skip
    results["output_dir"] = None if out_dir is None else str(out_dir)
    if is_main:
        print(markdown_tables(results), flush=True)
        if out_dir is not None:
            _write_text(
                out_dir / "results.json",
                json.dumps(_json_safe(results), indent=2, sort_keys=False) + "\n",
            )
            _write_text(out_dir / "results.md", markdown_report(results))
            _write_text(out_dir / EPISODE_LIST, "".join(json.dumps(a) + "\n" for a in audit))
            print(f"results written to {out_dir}", flush=True)
    return results


def _add(
    acc: dict[str, metrics.Counts], counts: Mapping[str, metrics.Counts]
) -> dict[str, metrics.Counts]:
    host = jax.device_get(counts)
    return {k: metrics.add(acc[k], host[k]) for k in acc}


def _write_text(path: Path, text: str) -> None:
    with open(path, "x") as f:  # 'x': never replace an existing file
        f.write(text)


def _write_images(
    out_dir: Path | None,
    batch: Mapping[str, np.ndarray],
    valid: np.ndarray,
    pred: np.ndarray,
    first: int,
    n_images: int,
    names: Mapping[int, str],
) -> None:
    """Panels of this batch's episodes numbered ``first + i < n_images`` (process 0)."""
    if out_dir is None:
        return
    for i in range(len(valid)):
        if not valid[i] or first + i >= n_images:
            continue
        episode = {k: np.asarray(v[i]) for k, v in batch.items()}
        panel = visualize.episode_panel(episode, pred[i], class_names=names)
        visualize.save_png(panel, out_dir / "images" / f"episode_{first + i:04d}.png")
