r"""Time each VGG-16 convolution's three passes in JAX and in PyTorch, alternating.

    python benchmarks/benchmark_convs.py --size=241 --batch=2 --out=bench_results/convs.json

Per layer of the official encoder (``panet_jax.models.vgg.VGG16_LAYERS``) at the spatial size
it sees for ``--size`` input images (``--batch`` of them: 2 = one 1-way 1-shot episode):

* ``forward``: the layer's convolution;
* ``kernel grad``: the gradient w.r.t. the kernel, as this project computes it
  (:func:`panet_jax.models.convolution.conv_same`: batch-stacked on CPU) and as XLA does by
  itself (``jax.vjp`` of ``lax.conv_general_dilated``);
* ``input grad``: the gradient w.r.t. the input (conv1_1's is never computed by either code);

beside ``torch.nn.functional.conv2d`` and ``torch.ops.aten.convolution_backward`` (NCHW, what
the official code runs). JAX programs use the train step's per-executable options
(:mod:`panet_jax.runtime.xla_options`). Every op runs once untimed, then ``--repeats`` rounds of all
ops in turn; the table gives medians in milliseconds, the totals and the JAX / PyTorch ratio.
It shows where a training step's convolution time goes, which the whole-step benchmark
(``benchmarks/benchmark.py``) cannot. ``--out`` writes JSON atomically.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import flags

from panet_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 241, "Input image side; layers see it after the encoder's pools.")
flags.DEFINE_integer("batch", 2, "Images per convolution (1-way 1-shot: 2).")
flags.DEFINE_integer("repeats", 5, "Timed rounds.")
flags.DEFINE_string("out", None, "Write the results as JSON here.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --out file.")

PASSES = ("forward", "kernel_grad", "kernel_grad_xla", "input_grad")


def layer_shapes(size: int) -> list[dict[str, Any]]:
    """``layer, side, cin, cout, dilation`` of the 13 convolutions for ``size`` px inputs."""
    from panet_jax.models import vgg

    return [{"layer": name, "side": h, "cin": cin, "cout": cout, "dilation": dil}
            for name, h, _, cin, cout, dil in vgg.layer_shapes(size, size)]  # fmt: skip


def jax_ops(row: dict[str, Any], batch: int) -> dict[str, Callable[[], Any]]:
    """The layer's compiled JAX passes on random data, as zero-argument callables."""
    import jax
    import numpy as np
    from jax import lax

    from panet_jax.models.convolution import conv_same
    from panet_jax.runtime import xla_options

    rng = np.random.default_rng(0)
    s, cin, cout, d = row["side"], row["cin"], row["cout"], row["dilation"]
    x = jax.numpy.asarray(rng.standard_normal((batch, s, s, cin)), np.float32)
    w = jax.numpy.asarray(rng.standard_normal((3, 3, cin, cout)) * 0.05, np.float32)
    g = jax.numpy.asarray(rng.standard_normal((batch, s, s, cout)), np.float32)
    dil = (d, d)

    def xla_conv(v, k):
        dn = ("NHWC", "HWIO", "NHWC")
        return lax.conv_general_dilated(v, k, (1, 1), ((d, d), (d, d)), rhs_dilation=dil,
                                        dimension_numbers=dn)  # fmt: skip

    fns = {
        "forward": (lambda v, k, t: conv_same(v, k, dil)),
        "kernel_grad": (lambda v, k, t: jax.vjp(lambda q: conv_same(v, q, dil), k)[1](t)[0]),
        "kernel_grad_xla": (lambda v, k, t: jax.vjp(lambda q: xla_conv(v, q), k)[1](t)[0]),
        "input_grad": (lambda v, k, t: jax.vjp(lambda p: conv_same(p, k, dil), v)[1](t)[0]),
    }
    options = xla_options.compiler_options("train")
    ops = {}
    for name, fn in fns.items():
        if name == "input_grad" and cin == 3:
            continue
        compiled = jax.jit(fn, compiler_options=options).lower(x, w, g).compile()
        ops[name] = lambda c=compiled: jax.block_until_ready(c(x, w, g))
    return ops


def torch_ops(row: dict[str, Any], batch: int) -> dict[str, Callable[[], Any]]:
    """The same passes in PyTorch (NCHW, the official layout), as zero-argument callables."""
    import torch

    torch.manual_seed(0)
    s, cin, cout, d = row["side"], row["cin"], row["cout"], row["dilation"]
    x, g = torch.randn(batch, cin, s, s), torch.randn(batch, cout, s, s)
    w = torch.randn(cout, cin, 3, 3) * 0.05

    def backward(mask: list[bool]) -> Callable[[], Any]:
        return lambda: torch.ops.aten.convolution_backward(
            g, x, w, None, [1, 1], [d, d], [d, d], False, [0, 0], 1, mask
        )

    ops = {
        "forward": lambda: torch.nn.functional.conv2d(x, w, padding=d, dilation=d),
        "kernel_grad": backward([False, True, False]),
    }
    if cin != 3:
        ops["input_grad"] = backward([True, False, False])
    return ops


def time_layer(row: dict[str, Any], batch: int, repeats: int) -> dict[str, Any]:
    """Median milliseconds of every pass of one layer, JAX and PyTorch alternating."""
    ops = {f"jax_{k}": v for k, v in jax_ops(row, batch).items()}
    ops.update({f"torch_{k}": v for k, v in torch_ops(row, batch).items()})
    for op in ops.values():
        op()
    times: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(repeats):
        for name, op in ops.items():
            t0 = time.perf_counter()
            op()
            times[name].append(1e3 * (time.perf_counter() - t0))
    gflop = 2 * batch * row["side"] ** 2 * row["cin"] * row["cout"] * 9 / 1e9
    return {**row, "gflop": gflop, **{k: statistics.median(v) for k, v in times.items()}}


COLUMNS = [
    ("forward", "jax_forward", "torch_forward"),
    ("kernel grad", "jax_kernel_grad", "torch_kernel_grad"),
    ("input grad", "jax_input_grad", "torch_input_grad"),
]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per layer, then the totals: JAX / PyTorch ms per pass, XLA's own kernel grad."""
    head = "| layer | side | Cin->Cout | GFLOP | " + " | ".join(
        f"{c} JAX / PyTorch ms" for c, _, _ in COLUMNS
    ) + " | kernel grad, XLA's own ms |"  # fmt: skip
    lines = [head, "|" + "---|" * (5 + len(COLUMNS))]
    total = {k: 0.0 for _, a, b in COLUMNS for k in (a, b)} | {"jax_kernel_grad_xla": 0.0}
    for r in rows:
        cells = []
        for _, a, b in COLUMNS:
            if a in r:
                cells.append(f"{r[a]:.1f} / {r[b]:.1f}")
                total[a] += r[a]
                total[b] += r[b]
            else:
                cells.append("-")
        total["jax_kernel_grad_xla"] += r["jax_kernel_grad_xla"]
        lines.append(f"| {r['layer']} | {r['side']} | {r['cin']}->{r['cout']} | {r['gflop']:.2f} "
                     f"| {' | '.join(cells)} | {r['jax_kernel_grad_xla']:.1f} |")  # fmt: skip
    cells = [f"**{total[a]:.0f} / {total[b]:.0f}** ({total[a] / total[b]:.2f}x)"
             for _, a, b in COLUMNS]  # fmt: skip
    gflop = sum(r["gflop"] for r in rows)
    lines.append(f"| total | | | {gflop:.1f} | {' | '.join(cells)} "
                 f"| {total['jax_kernel_grad_xla']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    from panet_jax import files

    if FLAGS.out:
        files.check_new_output(FLAGS.out, FLAGS.overwrite, "--out")
    rows = []
    for row in layer_shapes(FLAGS.size):
        rows.append(time_layer(row, FLAGS.batch, FLAGS.repeats))
        print(f"[convs] {row['layer']} done", file=sys.stderr, flush=True)
    table = markdown_table(rows)
    print(table)
    if FLAGS.out:
        out = {"command": " ".join(["python", *sys.argv]), "size": FLAGS.size,
               "batch": FLAGS.batch, "repeats": FLAGS.repeats, "rows": rows,
               "table": table}  # fmt: skip
        files.write_json(FLAGS.out, out, overwrite=FLAGS.overwrite)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main)
