r"""Convert ImageNet encoder weights to the ``.npz`` the PANet encoders load without torch.

    python experiments/convert_weights.py --input=vgg16-397923af.pth --output=vgg16.npz
    python experiments/convert_weights.py --encoder=resnet50 --input=resnet50-0676ba61.pth \
        --output=resnet50.npz

VGG-16 (``--encoder=vgg16``, the default): torchvision's ``vgg16-397923af.pth`` (needs PyTorch:
``pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu``), a Keras
``vgg16_weights_tf_dim_ordering_tf_kernels(_notop).h5`` (needs h5py; conv1_1 is adapted to RGB
ImageNet-normalised input) or an existing ``.npz``. ResNet (``--encoder=resnet50|resnet101``):
torchvision's ``resnet50-*.pth`` / ``resnet101-*.pth``. The output is written atomically
(temporary file + rename, readable like any new file) and an existing one is kept unless
``--overwrite`` is given. Exit status: 0 on success, 1 if the input is not usable, 2 on a
flag error.
"""

from __future__ import annotations

import os

from absl import flags

from panet_jax import cli
from panet_jax.models.names import ENCODERS

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "vgg16-397923af.pth, Keras .h5, resnet50/101 .pth, or .npz")
flags.DEFINE_string("output", None, "The .npz to write.")
flags.DEFINE_enum("encoder", "vgg16", list(ENCODERS), "Which encoder.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")
flags.mark_flags_as_required(["input", "output"])


def _check_output() -> None:
    if not FLAGS.output.endswith(".npz"):
        raise cli.FlagError(f"--output must end in .npz, got {FLAGS.output!r}")
    if os.path.exists(FLAGS.output) and not FLAGS.overwrite:
        raise cli.FlagError(f"--output={FLAGS.output!r} exists; pass --overwrite to replace it")
    out_dir = os.path.dirname(os.path.abspath(FLAGS.output))
    if not os.path.isdir(out_dir):
        raise cli.FlagError(f"--output: directory {out_dir!r} does not exist")


def _summary_vgg(params) -> str:
    from panet_jax.models.weights import vgg as vgg_weights

    lines = [f"{'layer':<8} {'kernel (HWIO)':<20} {'params':>10}"]
    for name in vgg_weights.CONV_NAMES:
        k = params[name]["kernel"]
        lines.append(f"{name:<8} {tuple(k.shape)!s:<20} {k.size + params[name]['bias'].size:>10,}")
    lines.append(f"{len(params)} convs, {vgg_weights.count_params(params):,} parameters")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    import jax

    from panet_jax import files
    from panet_jax.models.weights import resnet as resnet_weights
    from panet_jax.models.weights import vgg as vgg_weights

    _check_output()
    if FLAGS.encoder == "vgg16":
        params = vgg_weights.load_pretrained(FLAGS.input)
        save, summary = vgg_weights.save_npz, _summary_vgg(params)
    else:
        depth = int(FLAGS.encoder.removeprefix("resnet"))
        params = resnet_weights.load_pretrained_resnet(FLAGS.input, depth)
        n = sum(v.size for v in jax.tree.leaves(params))
        save, summary = resnet_weights.save_npz, f"ResNet-{depth} encoder, {n:,} values"
    with files.atomic_path(FLAGS.output, overwrite=FLAGS.overwrite) as tmp:
        save(params, tmp)
    print(f"read {FLAGS.input}")
    print(summary)
    print(f"wrote {FLAGS.output} ({os.path.getsize(FLAGS.output):,} bytes)")


if __name__ == "__main__":
    cli.run(main)
