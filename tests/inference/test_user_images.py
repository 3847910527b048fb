"""panet_jax.inference.user_images: a user's images and masks, checked."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from panet_jax.inference import user_images


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(1)
    grey8 = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    loaded = user_images.load_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(loaded, np.stack([grey8] * 3, axis=-1))
    np.testing.assert_array_equal(user_images.load_image(grey8.astype(np.uint16) * 257), loaded)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
        (np.random.default_rng(0).random((8, 8, 3)), r"ambiguous.*value_range"),
        (np.full((8, 8, 3), 300, np.int64), "0..255"),
        (np.zeros((8, 8), bool), "mask, not an image"),
    ],
)
def test_ambiguous_or_broken_image_arrays_are_refused(image, match):
    with pytest.raises(ValueError, match=match):
        user_images.load_image(image, "query_images[0]")


def test_float_images_with_a_stated_range_equal_the_uint8_image():
    rng = np.random.default_rng(2)
    u8 = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(user_images.load_image(u8 / 255.0, value_range=(0, 1)), u8)
    np.testing.assert_array_equal(
        user_images.load_image(u8.astype(float), value_range=(0, 255)), u8
    )
