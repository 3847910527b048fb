r"""Click-to-mask latency of the app's page: the work behind its Segment button.

    python benchmarks/app_latency.py --size=417 --shots=1,5 --queries=1,3 \
        --out=bench_results/app_latency.json

Times :meth:`panet_jax.app.segmenter.Segmenter.segment` (read the queries, encode the images
the predictor has not seen, prototypes, scores, upsample, threshold; write the mask and
overlay PNGs) on a randomly initialised VGG-16 (``--width``) saved as ``.npz``, one class,
distinct random images of ``--image_side`` px. Per shot count: the first click (compiles), a
click whose supports and query are all new (cache emptied), and clicks with new queries
beside supports already encoded (the page's usual click: another query for the same class),
for each ``--queries`` count; medians of ``--repeats`` clicks. The browser's round trip
(localhost upload and download) is not included.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags

from panet_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 417, "Working size (square) the model sees.")
flags.DEFINE_float("width", 1.0, "VGG-16 width multiplier (1.0: the full network).")
flags.DEFINE_list("shots", ["1", "5"], "Support counts to time.")
flags.DEFINE_list("queries", ["1", "3"], "Query counts per click (the per-query cost is the "
                  "slope between the smallest and the largest).")  # fmt: skip
flags.DEFINE_integer("image_side", 500, "Side of the synthetic support and query images.")
flags.DEFINE_integer("repeats", 3, "Timed clicks per setting (after the compiling one).")
flags.DEFINE_string("out", None, "Write the results as JSON here.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --out file.")


def _images(d: Path, n: int, side: int, stem: str, seed: int) -> list[Path]:
    """``n`` distinct random JPEGs (every image is new to the predictor's cache)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = d / f"{stem}{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _supports(d: Path, n: int, side: int, seed: int):
    """``n`` distinct supports as the page writes them (image, fg, bg PNG)."""
    import numpy as np
    from PIL import Image

    from panet_jax.app.sessions import save_support

    fg = np.zeros((side, side), bool)
    fg[side // 4 : 3 * side // 4, side // 3 : 2 * side // 3] = True
    return [save_support(d, "object", "dense", np.asarray(Image.open(p)), fg, ~fg)
            for p in _images(d, n, side, "s", seed)]  # fmt: skip


def _model(path: Path, size: int, width: float) -> Path:
    import jax
    import jax.numpy as jnp

    from panet_jax.models.vgg import VGG16Encoder
    from panet_jax.models.weights import vgg as pretrained

    encoder = VGG16Encoder(width=width)
    params = jax.jit(encoder.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
    pretrained.save_npz(params, path)
    return path


def _time(segmenter, supports, queries, out: Path) -> float:
    start = time.perf_counter()
    segmenter.segment({"object": supports}, queries, out)
    return time.perf_counter() - start


def _row(segmenter, d: Path, k: int, n_queries: list[int]) -> dict:
    """One shot count's timings (see the module docstring)."""
    supports = _supports(d / f"k{k}", k, FLAGS.image_side, seed=2 * k)  # no image repeats
    fresh = iter(_images(d, 2 * FLAGS.repeats * (1 + sum(n_queries)) + 1, FLAGS.image_side,
                         f"q{k}_", seed=2 * k + 1))  # fmt: skip
    take = lambda q: [next(fresh) for _ in range(q)]
    row = {"shots": k, "first_click_s": _time(segmenter, supports, take(1), d / "out")}
    cold = []
    for _ in range(FLAGS.repeats):
        segmenter.forget()
        cold.append(_time(segmenter, supports, take(1), d / "out"))
    row["all_new_1q_s"] = statistics.median(cold)
    for q in n_queries:
        runs = [_time(segmenter, supports, take(q), d / "out") for _ in range(FLAGS.repeats)]
        row[f"cached_supports_{q}q_s"] = statistics.median(runs)
    lo, hi = n_queries[0], n_queries[-1]
    slope = row[f"cached_supports_{hi}q_s"] - row[f"cached_supports_{lo}q_s"]
    row["per_query_s"] = slope / (hi - lo) if hi > lo else row[f"cached_supports_{lo}q_s"] / lo
    return row


def main(argv: list[str]) -> None:
    import jax

    from panet_jax import files
    from panet_jax.app.segmenter import Segmenter
    from panet_jax.runtime.provenance import provenance

    shots, n_queries = [int(s) for s in FLAGS.shots], sorted(int(q) for q in FLAGS.queries)
    if FLAGS.out:
        files.check_new_output(FLAGS.out, FLAGS.overwrite, "--out")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        segmenter = Segmenter(_model(d / "vgg16.npz", FLAGS.size, FLAGS.width),
                              image_size=(FLAGS.size, FLAGS.size))  # fmt: skip
        for k in shots:
            rows.append(_row(segmenter, d, k, n_queries))
            print(f"{k}-shot done", flush=True)
    head = (
        ["shots", "first click (compiles) s", "all new, 1 query s"]
        + [f"supports cached, {q} quer{'y' if q == 1 else 'ies'} s" for q in n_queries]
        + ["each query s"]
    )
    print(
        f"\nVGG-16 width {FLAGS.width} at {FLAGS.size}x{FLAGS.size}, {jax.devices()[0]}, "
        f"{os.cpu_count()} CPUs; medians of {FLAGS.repeats} clicks"
    )
    print(" | ".join(head))
    for r in rows:
        cells = [str(r["shots"]), f"{r['first_click_s']:.2f}", f"{r['all_new_1q_s']:.2f}"]
        cells += [f"{r[f'cached_supports_{q}q_s']:.2f}" for q in n_queries]
        print(" | ".join([*cells, f"{r['per_query_s']:.2f}"]))
    if FLAGS.out:
        out = {**provenance(), "size": FLAGS.size, "width": FLAGS.width,
               "image_side": FLAGS.image_side, "repeats": FLAGS.repeats,
               "device": str(jax.devices()[0]), "rows": rows}  # fmt: skip
        files.write_json(FLAGS.out, out, overwrite=FLAGS.overwrite)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
