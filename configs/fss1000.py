"""FSS-1000 with HSNet's protocol (Min et al., ICCV 2021; juhongm999/hsnet ``data/fss.py``,
``test.py``). ``--config=configs/fss1000.py:shot=5``.

HSNet's class split (520 train / 240 val / 240 test classes; how the ``fss1000`` builder gets
it: :mod:`panet_jax.data.builders.fss1000`), images resized to 400 x 400, 1-way episodes.
Test: every test image once as the query (2,400 episodes on the full test split:
``eval.episodes=0`` walks the whole list, whatever its length), each with a random other image
of its class as the support, one run with a fixed seed (HSNet: ``fix_randseed(0)``), scored at
400 x 400 (HSNet's default; ``--config.eval.original_size=True`` for its
``use_original_imgsize``). Training queries are random (image, class) pairs of the train
split, supports random other images of the class.
"""

from panet_jax.config import apply_arg, base_config, with_imagenet_weights


def get_config(arg: str | None = None):
    c = base_config()
    c.data.dataset = "fss1000"
    c.data.image_size = (400, 400)
    c.eval.protocol = "hsnet"  # the list walk: every (test image, class) pair in order
    c.eval.sampler = "stateless"  # (the hsnet walk has no official PANet draw to replay)
    c.eval.runs = 1
    c.eval.episodes = 0  # one per test image
    c.eval.seed = 0
    return with_imagenet_weights(apply_arg(c, arg))  # ':encoder=resnet50' picks its weights
