"""PASCAL-5i, the official PANet recipe. ``--config=configs/pascal5i.py:fold=0,shot=1``."""

from panet_jax.config_base import apply_arg, base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.data.dataset = "pascal5i"
    c.model.pretrained = "pretrained_model/vgg16-397923af.pth"
    return apply_arg(c, arg)
