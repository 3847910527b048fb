r"""Convert ImageNet VGG-16 weights to the ``.npz`` the PANet encoder loads without torch.

    python experiments/convert_weights.py --input=vgg16-397923af.pth --output=vgg16.npz

The input is torchvision's ``vgg16-397923af.pth`` (needs ``pip install torch==2.13.0``), a
Keras ``vgg16_weights_tf_dim_ordering_tf_kernels(_notop).h5`` (needs h5py; conv1_1 is adapted to
RGB ImageNet-normalised input) or an existing ``.npz``. The output is written atomically
(temporary file + rename) and an existing one is kept unless ``--overwrite`` is given.
Exit status: 0 on success, 1 if the input is not a usable VGG-16, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from panet_jax import pretrained


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="vgg16-397923af.pth, Keras .h5 or .npz")
    p.add_argument("--output", required=True, help="the .npz to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p.parse_args(argv)


def write_npz_atomic(params: pretrained.EncoderParams, output: str) -> None:
    """Write to a temporary file in the output's directory, fsync, then rename over ``output``."""
    out_dir = os.path.dirname(os.path.abspath(output))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=out_dir)
    os.close(fd)
    try:
        pretrained.save_npz(params, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def summary(params: pretrained.EncoderParams) -> str:
    lines = [f"{'layer':<8} {'kernel (HWIO)':<20} {'params':>10}"]
    for name in pretrained.CONV_NAMES:
        k = params[name]["kernel"]
        n = k.size + params[name]["bias"].size
        lines.append(f"{name:<8} {tuple(k.shape)!s:<20} {n:>10,}")
    lines.append(f"{len(params)} convs, {pretrained.count_params(params):,} parameters")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.output.endswith(".npz"):
        print(f"error: --output must end in .npz, got {args.output!r}", file=sys.stderr)
        return 2
    if os.path.exists(args.output) and not args.overwrite:
        print(f"error: {args.output!r} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        print(f"error: output directory {out_dir!r} does not exist", file=sys.stderr)
        return 2
    try:
        params = pretrained.load_pretrained(args.input)
    except (FileNotFoundError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_npz_atomic(params, args.output)
    print(f"read {args.input}")
    print(summary(params))
    print(f"wrote {args.output} ({os.path.getsize(args.output):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
