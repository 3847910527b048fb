"""PNG plots of a grid (matplotlib, the ``analysis`` extra): curves without / with PAR and
mIoU by support annotation. Lines are means over the finished (fold, seed) cells of a setting,
bands and error bars one standard deviation over them."""

from __future__ import annotations

from pathlib import Path

from panet_jax import files
from panet_jax.analysis import grid as grid_lib
from panet_jax.analysis import results as res
from panet_jax.analysis import table

DPI = 80
COLORS = {0.0: "tab:blue", 1.0: "tab:red"}
LOG_SCALE = ("proto_l2",)  # the Euclidean distance spans orders of magnitude early on
CURVE_TITLES = {
    "loss_seg": "training loss L_seg",
    "miou": "held-out mIoU (dense)",
    "proto_l2": "prototype distance (Euclidean)",
    "proto_cos": "prototype distance (1 - cos)",
}


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("the analysis plots need matplotlib: pip install -e '.[analysis]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with files.atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight")
    return path


def curves_figure(grid: grid_lib.Grid, cells: dict, names: tuple[str, ...], path: Path) -> Path:
    """One row per shot count, one column per series in ``names``, one line per PAR weight."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(grid.shots), len(names), squeeze=False,
                             figsize=(4.2 * len(names), 2.8 * len(grid.shots)))  # fmt: skip
    for i, shots in enumerate(grid.shots):
        for j, name in enumerate(names):
            ax = axes[i, j]
            for par in grid.par_weights:
                c = res.curves(cells, grid, shots, par, name)
                if not c["steps"]:
                    continue
                lo = [m - s for m, s in zip(c["mean"], c["std"], strict=True)]
                hi = [m + s for m, s in zip(c["mean"], c["std"], strict=True)]
                color = COLORS.get(par)
                ax.plot(c["steps"], c["mean"], color=color, label=table.method(par))
                ax.fill_between(c["steps"], lo, hi, color=color, alpha=0.2, linewidth=0)
            if name in LOG_SCALE:
                ax.set_yscale("log")
            ax.set_title(f"{shots}-shot: {CURVE_TITLES.get(name, name)}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def annotations_figure(tables: table.Tables, path: Path) -> Path:
    """Grouped bars: final mIoU (fold mean, mean +- std over seeds) per support annotation,
    one group per (shots, PAR weight)."""
    plt = _pyplot()
    g = tables.grid
    groups = [(k, par) for k in g.shots for par in g.par_weights]
    width = 0.8 / len(g.annotations)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(groups), 3.0))
    for j, a in enumerate(g.annotations):
        stats = [res.seed_stat(g, tables.score(None, k, par, a, "miou")) for k, par in groups]
        xs = [i + (j - (len(g.annotations) - 1) / 2) * width for i in range(len(groups))]
        means = [100 * s.mean if s else 0.0 for s in stats]
        errs = [100 * s.std if s else 0.0 for s in stats]
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=a)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{k}-shot\n{table.method(p)}" for k, p in groups], fontsize=7)
    ax.set_ylabel("held-out mIoU (%)", fontsize=8)
    ax.legend(fontsize=7, title="support", title_fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = _save(fig, path)
    plt.close(fig)
    return out


def write_plots(tables: table.Tables, out: Path) -> list[Path]:
    """``convergence.png``, ``prototype_distance.png`` and ``annotations.png`` in ``out``."""
    g, cells = tables.grid, tables.cells
    return [
        curves_figure(g, cells, ("loss_seg", "miou"), out / "convergence.png"),
        curves_figure(g, cells, ("proto_l2", "proto_cos"), out / "prototype_distance.png"),
        annotations_figure(tables, out / "annotations.png"),
    ]
