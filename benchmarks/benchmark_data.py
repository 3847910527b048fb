r"""Throughput of the episode pipeline (episodes/s), 1-shot and 5-shot, at 417x417.

    python benchmarks/benchmark_data.py --data_dir=/tmp/tfds --out=bench_results/data.json
    python benchmarks/benchmark_data.py --data_dir=/tmp/tfds --voc_data_dir=~/tensorflow_datasets

Runs on the synthetic set (``synthetic_fss``, prepared into ``--data_dir`` first if missing)
and, when ``--voc_data_dir`` holds a prepared ``pascal_voc_aug``, on VOC. For each setting:
``--warmup`` batches, then ``--windows`` timed windows of ``--window_batches`` batches; the
figure is the median episodes/s over the windows (min and max are reported too).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import platform
import statistics
import time

from absl import flags

from panet_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "TFDS data_dir with (or for) the synthetic set.")
flags.DEFINE_string("synthetic_config", "default", "synthetic_fss builder config.")
flags.DEFINE_string("voc_data_dir", None, "TFDS data_dir with a prepared pascal_voc_aug.")
flags.DEFINE_list("shots", ["1", "5"], "Shots to time.")
flags.DEFINE_integer("image_size", 417, "Square episode image size.")
flags.DEFINE_integer("batch_size", 1, "Episodes per batch.")
flags.DEFINE_integer("warmup", 10, "Untimed batches first.")
flags.DEFINE_integer("windows", 5, "Timed windows.")
flags.DEFINE_integer("window_batches", 40, "Batches per timed window.")
flags.DEFINE_string("out", None, "Write the results as JSON here.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --out file.")
flags.mark_flags_as_required(["data_dir"])


def time_pipeline(cfg, data_dir: str) -> dict:
    """Median / min / max episodes per second of ``episode_dataset(cfg)``."""
    from panet_jax.data.pipeline import episode_dataset

    ds = episode_dataset(cfg, data_dir=data_dir, seed=0, batch_size=FLAGS.batch_size)
    it = ds.as_numpy_iterator()
    for _ in range(FLAGS.warmup):
        next(it)
    rates = []
    for _ in range(FLAGS.windows):
        start = time.perf_counter()
        for _ in range(FLAGS.window_batches):
            next(it)
        rates.append(FLAGS.window_batches * FLAGS.batch_size / (time.perf_counter() - start))
    images = cfg.n_ways * cfg.n_shots + cfg.n_queries
    median = statistics.median(rates)
    return {
        "episodes_per_s": round(median, 2),
        "min": round(min(rates), 2),
        "max": round(max(rates), 2),
        "images_per_s": round(median * images, 1),
    }


def main(argv: list[str]) -> None:
    import tensorflow as tf

    from panet_jax import files
    from panet_jax.data import builders

    if FLAGS.out:
        files.check_new_output(FLAGS.out, FLAGS.overwrite, "--out")
    from panet_jax.data.pipeline import EpisodeConfig

    data_dir = os.path.expanduser(FLAGS.data_dir)
    syn = builders.get_builder("synthetic_fss", data_dir=data_dir, config=FLAGS.synthetic_config)
    if not syn.is_prepared():
        builders.prepare("synthetic_fss", data_dir=data_dir, config=FLAGS.synthetic_config)
    settings = [("synthetic", data_dir, FLAGS.synthetic_config)]
    if FLAGS.voc_data_dir:
        settings.append(("pascal5i", os.path.expanduser(FLAGS.voc_data_dir), None))

    size = (FLAGS.image_size, FLAGS.image_size)
    rows = []
    for dataset, ddir, config in settings:
        for shots in map(int, FLAGS.shots):
            cfg = EpisodeConfig(
                dataset, n_shots=shots, image_size=size, train=True, builder_config=config
            )
            result = time_pipeline(cfg, ddir)
            rows.append({"dataset": dataset, "shots": shots, "ways": 1, "queries": 1, **result})
            print(f"{dataset:10s} 1-way {shots}-shot: {result['episodes_per_s']:7.2f} episodes/s "
                  f"(min {result['min']:.2f}, max {result['max']:.2f}; "
                  f"{result['images_per_s']:.1f} images/s)", flush=True)  # fmt: skip

    header = "| dataset | task | episodes/s (median) | min | max | images/s |"
    print("\n" + header + "\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | 1-way {r['shots']}-shot | {r['episodes_per_s']:.2f} | "
              f"{r['min']:.2f} | {r['max']:.2f} | {r['images_per_s']:.1f} |")  # fmt: skip
    if FLAGS.out:
        meta = {
            "image_size": size, "batch_size": FLAGS.batch_size, "warmup": FLAGS.warmup,
            "windows": FLAGS.windows, "window_batches": FLAGS.window_batches,
            "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "tensorflow": tf.__version__,
        }  # fmt: skip
        report = {"settings": meta, "results": rows}
        files.write_json(FLAGS.out, report, overwrite=FLAGS.overwrite)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
