"""Shared test set-up: quiet TensorFlow, keep it off accelerators, fast CPU compiles."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import numpy as np
import pytest
import train_helpers as h
from PIL import Image

from panet_jax.data import builders
from panet_jax.train import trainer

# Unit tests compile many small programs; XLA's heavy optimisations only cost time here.
jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A tiny synthetic set, a 2-step training run, user images and a support mask."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    builders.prepare("synthetic_fss", data_dir=data, config="tiny")
    wd = root / "wd"
    trainer.train(h.tiny_config(str(data), train__steps=2, train__checkpoint_every=1,
                                train__image_every=0), str(wd))  # fmt: skip
    rng = np.random.default_rng(0)
    user = root / "user"
    user.mkdir()
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 12:36] = 1
    Image.fromarray(image).save(user / "img.png")
    Image.fromarray(mask * 255).save(user / "mask.png")
    (user / "junk.pth").write_bytes(b"not a torch file")
    (user / "afile").write_text("a file, not a directory")
    return {"root": root, "data": str(data), "wd": wd, "user": user, "image": image, "mask": mask}
