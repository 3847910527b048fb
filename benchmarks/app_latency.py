r"""Click-to-mask latency of the app's page: the work behind its Segment button.

    python benchmarks/app_latency.py --size=417 --shots=1,5 --queries=1,3 \
        --out=bench_results/app_latency.json

Times :meth:`panet_jax.app.segmenter.Segmenter.segment` (read the queries, ``predict``: encode
the supports and each query, upsample, threshold; write the mask and overlay PNGs) on a
randomly initialised VGG-16 (``--width``) saved as ``.npz``, one class, images of
``--image_side`` px. The first call per shot count compiles (reported apart); the table gives
the median of ``--repeats`` later calls, and the cost of each query beyond the first. The
browser's round trip (localhost upload and download) is not included.
"""

from __future__ import annotations

import json
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


def _inputs(d: Path, n: int, side: int):
    """``n`` synthetic supports (image, fg, bg PNG) and query paths."""
    import numpy as np
    from PIL import Image

    from panet_jax.app.sessions import save_support

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    fg = np.zeros((side, side), bool)
    fg[side // 4 : 3 * side // 4, side // 3 : 2 * side // 3] = True
    supports = [save_support(d, "object", "dense", image, fg, ~fg) for _ in range(n)]
    queries = []
    for i in range(n):
        Image.fromarray(image).save(d / f"q{i}.jpg", quality=90)
        queries.append(d / f"q{i}.jpg")
    return supports, queries


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


def main(argv: list[str]) -> None:
    import jax

    from panet_jax import files
    from panet_jax.app.segmenter import Segmenter

    shots, n_queries = [int(s) for s in FLAGS.shots], sorted(int(q) for q in FLAGS.queries)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        segmenter = Segmenter(_model(d / "vgg16.npz", FLAGS.size, FLAGS.width),
                              image_size=(FLAGS.size, FLAGS.size))  # fmt: skip
        supports, queries = _inputs(d, max(shots + n_queries), FLAGS.image_side)
        for k in shots:
            first = _time(segmenter, supports[:k], queries[:1], d / "out")
            medians = {}
            for q in n_queries:
                runs = [_time(segmenter, supports[:k], queries[:q], d / "out")
                        for _ in range(FLAGS.repeats)]  # fmt: skip
                medians[q] = statistics.median(runs)
            lo, hi = n_queries[0], n_queries[-1]
            per_query = (medians[hi] - medians[lo]) / (hi - lo) if hi > lo else float("nan")
            rows.append({"shots": k, "first_click_s": first, "per_query_s": per_query,
                         **{f"click_{q}q_s": medians[q] for q in n_queries}})  # fmt: skip
            print(f"{k}-shot done", flush=True)
    head = (
        ["shots", "first click (compiles) s"]
        + [f"{q} quer{'y' if q == 1 else 'ies'} s" for q in n_queries]
        + ["each extra query s"]
    )
    print(
        f"\nVGG-16 width {FLAGS.width} at {FLAGS.size}x{FLAGS.size}, {jax.devices()[0]}, "
        f"{os.cpu_count()} CPUs; medians of {FLAGS.repeats} clicks after the first"
    )
    print(" | ".join(head))
    for r in rows:
        cells = [str(r["shots"]), f"{r['first_click_s']:.2f}"]
        cells += [f"{r[f'click_{q}q_s']:.2f}" for q in n_queries] + [f"{r['per_query_s']:.2f}"]
        print(" | ".join(cells))
    if FLAGS.out:
        out = {"size": FLAGS.size, "width": FLAGS.width, "image_side": FLAGS.image_side,
               "repeats": FLAGS.repeats, "cpus": os.cpu_count(),
               "device": str(jax.devices()[0]), "rows": rows}  # fmt: skip
        Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
        files.atomic_write(FLAGS.out, json.dumps(out, indent=2), overwrite=True)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
