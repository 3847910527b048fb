"""PASCAL-5i, the official PANet recipe. ``--config=configs/pascal5i.py:fold=0,shot=1[,encoder=resnet50]``."""

from panet_jax.config import apply_arg, base_config, with_imagenet_weights


def get_config(arg: str | None = None):
    c = base_config()
    c.data.dataset = "pascal5i"
    return with_imagenet_weights(apply_arg(c, arg))  # ':encoder=resnet50' picks its weights
