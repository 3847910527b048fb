"""The scores and reports of an evaluation: per-run scores from accumulated counts, mean / std
over runs, Markdown tables, and the result directory (``results.json``, ``results.md``,
``episodes.jsonl``, overlay PNGs), every file written atomically and none ever replaced.

Scores are fractions in [0, 1] in the returned dicts and ``results.json``; tables print percent.
If a test class never occurs in a run (only possible with very few episodes), its IoU is NaN and
the run's mIoU averages the classes that did occur (the official ``mean`` would be NaN);
``missing_classes`` lists them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from panet_jax import files
from panet_jax.data import folds
from panet_jax.evaluation import metrics

CountsTriple = dict[str, metrics.Counts]  # 'official' | 'strict' | 'background'
EPISODE_LIST = "episodes.jsonl"  # the audit trail: one line per episode with its image ids


def class_names(dataset: str, metadata: Mapping[str, Any] | None = None) -> dict[int, str]:
    """``{class id: name}`` where names are known (VOC, synthetic, a prepared dataset's
    ``metadata['class_names']``, e.g. FSS-1000), else ``'class <id>'``."""
    if metadata and metadata.get("class_names"):
        return {i + 1: str(n) for i, n in enumerate(metadata["class_names"])}
    if dataset == "pascal5i":
        return {i + 1: n for i, n in enumerate(folds.VOC_CLASS_NAMES)}
    if dataset == "synthetic":
        from panet_jax.data.builders import synthetic  # TFDS

        def name(c: int) -> str:
            shape, texture = synthetic.class_family(c)
            return f"{synthetic.SHAPES[shape]}/{synthetic.TEXTURES[texture]}"

        return {c: name(c) for c in folds.all_classes(dataset)}
    return {c: f"class {c}" for c in folds.all_classes(dataset)}


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan


def _nanstd(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanstd(x)) if np.isfinite(x).any() else math.nan


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
    """Mean / std (``ddof=0``, the official ``np.std``) over runs of every scalar, and the
    per-class table."""

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
            "iou_std": _nanstd(iou),
            "strict_iou_mean": _nanmean(strict),
            "strict_iou_std": _nanstd(strict),
            "queries_per_run": float(np.mean([r["class_queries"][c] for r in runs])),
        }
    out["per_class"] = per_class
    return out


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
        "| mIoU (strict: absent-class FP count) | "
        f"{_pm(r['strict_miou_mean'], r['strict_miou_std'])} |",
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


def scoring_note(settings: Mapping[str, Any]) -> str:
    """Where the IoU is computed and which episodes the small-object filter drops, in words
    (``settings['original_size']``, ``settings['min_object_pixels']``; absent = off)."""
    h, w = settings["image_size"]
    where = ("scored at each query's original label size (`original_size`)"
             if settings.get("original_size") else f"scored at {h}x{w}")  # fmt: skip
    low = int(settings.get("min_object_pixels") or 0)
    kept = (f"objects under {low} raw pixels dropped (`min_object_pixels={low}`)" if low
            else "no small-object filter (`min_object_pixels=0`)")  # fmt: skip
    return f"{where}, {kept}"


def dataset_note(settings: Mapping[str, Any]) -> list[str]:
    """A user's folder: its name and class split (how its test classes were chosen)."""
    if not settings.get("class_split"):
        return []
    name, split = settings.get("dataset_name"), settings["class_split"]
    return [f"Dataset `{name}`; class split: {split}.", ""]


def markdown_report(results: Mapping[str, Any]) -> str:
    """``results.md``: the settings in a paragraph, the metric definitions, the tables."""
    s = results["settings"]
    head = [
        f"# PANet evaluation: {s['dataset']} fold {s['fold']}, {s['n_ways']}-way "
        f"{s['n_shots']}-shot ({s['protocol']} protocol)",
        "",
        f"{s['runs']} runs x {s['episodes']} episodes (seeds {s['seed']}.."
        f"{s['seed'] + s['runs'] - 1}), split `{s['split']}`, {s['support_annotation']} "
        f"supports, {s['image_size'][0]}x{s['image_size'][1]} px, sampler `{s['sampler']}` "
        f"(episodes listed in `{EPISODE_LIST}`); {scoring_note(s)}; {s['devices']} devices x "
        f"{s['per_device_batch']} episodes/step; {results['seconds']:.0f} s "
        f"({results['episodes_per_s']:.1f} episodes/s).",
        "",
        *dataset_note(s),
        "Official metric: per run, TP/FP/FN summed per class over all episodes, counted for a "
        "class only in queries whose ground truth contains it (PANet `util/metric.py`); mIoU = "
        "mean class IoU over the test classes; FB-IoU = mean of bg and pooled-fg IoU. Strict: "
        "also counts false positives of classes absent from the ground truth. Std is over runs "
        "(ddof=0).",
        "",
    ]
    return "\n".join(head) + "\n" + markdown_tables(results)


def json_safe(x: Any) -> Any:
    """Nested dicts / lists with NaN as ``null`` and NumPy scalars as Python numbers."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, float | np.floating):
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
    """``eval_<dataset>_fold<f>_<N>way<K>shot_<protocol>_<annotation>[_<k>protos]``."""
    d, e = config.data, config.eval
    k = config.model.get("prototypes_per_class", 1)
    return (
        f"eval_{d.dataset}_fold{d.fold}_{d.n_ways}way{d.n_shots}shot_{e.protocol}_"
        f"{e.support_annotation}" + (f"_{k}protos" if k > 1 else "")
    )


def write_results(
    out_dir: Path, results: Mapping[str, Any], episodes: list[dict[str, Any]]
) -> None:
    """``results.json``, ``results.md`` and ``episodes.jsonl`` in ``out_dir``, atomically."""
    files.atomic_write(out_dir / "results.json", json.dumps(json_safe(results), indent=2) + "\n")
    files.atomic_write(out_dir / "results.md", markdown_report(results))
    files.atomic_write(out_dir / EPISODE_LIST, "".join(json.dumps(e) + "\n" for e in episodes))


def read_episode_list(path: str | Path) -> list[dict[str, Any]]:
    """The records of an evaluation's ``episodes.jsonl``."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
