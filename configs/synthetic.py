"""The embedded demo: PANet on the locally generated ``synthetic_fss`` set, on a CPU.

    python experiments/train.py --config=configs/synthetic.py --workdir=runs/synthetic

A 1/8-width VGG-16 (random init) on the set's native 128 px images, 1-way 1-shot, 3000 SGD
steps of 4 episodes at 10x the paper's learning rate (x0.1 after 2250 steps), then the
held-out fold's evaluation with a reduced protocol (2 runs x 200 episodes instead of 5 x 1000),
next to the all-background baseline; the figures are in the README's results. The paper recipe (ImageNet VGG-16, 417 px, lr 1e-3, 30k steps of
one episode) is ``configs/pascal5i.py``. ``:runlocal`` shrinks everything for tests.
"""

from panet_jax.config import apply_arg, base_config, parse_arg


def get_config(arg: str | None = None):
    c = base_config()
    c.data.dataset = "synthetic"
    c.data.builder_config = "default"  # 128 px, 60 images per class and split
    c.data.auto_prepare = True  # generated into data_dir on first use (~15 s)
    c.data.image_size = (128, 128)
    c.model.width = 1 / 8
    c.model.pretrained = ""  # random init
    c.train.steps = 3000
    c.train.per_device_batch = 4
    c.train.log_every = 100
    c.train.image_every = 500
    c.train.checkpoint_every = 500
    c.train.eval_after = True
    c.optim.lr = 1e-2
    c.optim.milestones = (2250,)
    c.eval.runs = 2
    c.eval.episodes = 200
    c.eval.num_images = 4
    if parse_arg(arg).get("runlocal"):
        c.data.builder_config = "tiny"  # 32 px, 8 images per class and split
        c.data.image_size = (33, 33)
        c.model.width = 1 / 16
        c.train.steps = 4
        c.train.per_device_batch = 1
        c.train.log_every = 2
        c.train.image_every = 2
        c.train.checkpoint_every = 2
        c.train.eval_after = False
        c.eval.runs = 1
        c.eval.episodes = 8
    return apply_arg(c, arg)
