"""COCO-20i with PANet's consecutive class blocks (``coco_split='interleaved'`` for later work).
``--config=configs/coco20i.py:fold=0,shot=5``."""

from panet_jax.config import apply_arg, base_config, with_imagenet_weights


def get_config(arg: str | None = None):
    c = base_config()
    c.data.dataset = "coco20i"
    c.data.coco_split = "panet"
    return with_imagenet_weights(apply_arg(c, arg))  # ':encoder=resnet50' picks its weights
