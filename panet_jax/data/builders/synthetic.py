"""``synthetic_fss``: a procedural few-shot segmentation dataset, generated locally.

20 classes, class = (shape family, texture family):

* 5 shapes: ellipse, rectangle, triangle, star, cross;
* 4 textures: stripes, checkerboard, dots, concentric rings.

Class ``c = 5f + s + 1`` has shape ``s`` and texture ``(s + f) % 4``, so every fold
``f`` (test classes ``5f+1..5f+5``, see :mod:`panet_jax.data.folds`) holds each shape once and
its shape/texture combinations never occur among the training classes, while every shape and
texture family does. A class is never one flat colour: every instance draws its own two
texture colours, texture period and phase, size, aspect, rotation and position. Images hold
1-3 objects, 35% of them two classes, on a noisy low-frequency background that sometimes
carries a faint texture of its own. Object borders are marked 255 (ignore) like the VOC masks.

Everything is a pure function of ``(config.seed, split, image index)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from panet_jax.data.builders import common

NUM_CLASSES = 20
SHAPES = ("ellipse", "rectangle", "triangle", "star", "cross")
TEXTURES = ("stripes", "checker", "dots", "rings")
SPLITS = ("train", "test")


def class_family(class_id: int) -> tuple[int, int]:
    """Class id (1..20) -> ``(shape index, texture index)``."""
    if not 1 <= class_id <= NUM_CLASSES:
        raise ValueError(f"synthetic class id {class_id} is out of range 1..{NUM_CLASSES}")
    fold, shape = divmod(class_id - 1, 5)
    return shape, (shape + fold) % len(TEXTURES)


def _unit_polygon(shape: int) -> np.ndarray:
    """Vertices ``[P, 2]`` (x, y) of a shape of radius ~1 centred at the origin."""
    name = SHAPES[shape]
    if name == "ellipse":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], -1)
    if name == "rectangle":
        return np.array([(-0.95, -0.65), (0.95, -0.65), (0.95, 0.65), (-0.95, 0.65)])
    if name == "triangle":
        t = np.deg2rad(-90 + 120 * np.arange(3))
        return np.stack([np.cos(t), np.sin(t) + 0.2], -1) * 1.1
    if name == "star":
        t = -np.pi / 2 + np.pi / 5 * np.arange(10)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], -1) * 1.1
    w = 0.34  # cross
    pts = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1),
           (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1)]  # fmt: skip
    return np.array(pts, dtype=np.float64)


def _polygon_mask(vertices: np.ndarray, size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(v) for v in vertices.tolist()], fill=1)
    return np.asarray(canvas, dtype=bool)


def _pattern(texture: int, size: int, rng: np.random.Generator, center: tuple) -> np.ndarray:
    """A binary texture ``[size, size]`` with random period, orientation and phase."""
    period = max(3.0, rng.uniform(0.06, 0.11) * size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    yy, xx = yy - center[1], xx - center[0]
    phi = rng.uniform(0, np.pi)
    u = xx * np.cos(phi) + yy * np.sin(phi) + rng.uniform(0, period)
    v = -xx * np.sin(phi) + yy * np.cos(phi) + rng.uniform(0, period)
    name = TEXTURES[texture]
    if name == "stripes":
        return np.sin(2 * np.pi * u / period) > 0
    if name == "checker":
        return np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period) > 0
    if name == "dots":
        du = np.mod(u, period) - period / 2
        dv = np.mod(v, period) - period / 2
        return du**2 + dv**2 < (0.32 * period) ** 2
    r = np.sqrt(xx**2 + yy**2)  # rings around the object centre
    return np.sin(2 * np.pi * r / period + rng.uniform(0, 2 * np.pi)) > 0


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    c1 = rng.uniform(0, 255, 3)
    c2 = np.mod(c1 + 128 + rng.uniform(-45, 45, 3), 256)
    return c1, c2


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
    bg = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), np.float64)
    if rng.random() < 0.5:  # a faint texture of any family: texture alone is not the object
        pattern = _pattern(int(rng.integers(len(TEXTURES))), size, rng, (size / 2, size / 2))
        bg += rng.uniform(15, 35) * (pattern[..., None] - 0.5)
    return bg


def _boundary(label: np.ndarray) -> np.ndarray:
    """Object pixels with a 4-neighbour of a different label."""
    pad = np.pad(label, 1, mode="edge")
    center = pad[1:-1, 1:-1]
    diff = np.zeros(label.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        diff |= pad[dy : dy + label.shape[0], dx : dx + label.shape[1]] != center
    return diff & (label > 0)


def render(
    size: int, primary: int, rng: np.random.Generator, ignore_boundary: bool = True
) -> dict[str, np.ndarray]:
    """One synthetic image with its label and instance maps.

    Args:
      size: image side length (pixels).
      primary: a class id that the image is guaranteed to show.
      rng: the image's random generator.
      ignore_boundary: mark object border pixels 255.

    Returns ``image`` ``[S, S, 3]`` uint8, ``mask`` ``[S, S]`` uint8 (0 bg, class ids, 255),
    ``instances`` ``[S, S]`` uint8.
    """
    n_obj = int(rng.integers(1, 4))
    classes = [primary] * n_obj
    if rng.random() < 0.35:
        other = int(rng.integers(1, NUM_CLASSES))
        other = other + 1 if other >= primary else other  # uniform over the other classes
        if n_obj == 1:
            classes = [other, primary]
        else:
            classes[0] = other
    # The last painted object is of the primary class, so the primary class stays visible.
    image = _background(size, rng)
    label = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.uint8)
    for k, cls in enumerate(classes):
        shape, texture = class_family(cls)
        radius = size * (rng.uniform(0.18, 0.32) if len(classes) == 1 else rng.uniform(0.13, 0.27))
        aspect = rng.uniform(0.75, 1.33)
        theta = rng.uniform(0, 2 * np.pi)
        cx, cy = rng.uniform(0.6 * radius, size - 0.6 * radius, 2)
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        vertices = (_unit_polygon(shape) * [aspect, 1 / aspect] * radius) @ rot.T + [cx, cy]
        obj = _polygon_mask(vertices, size)
        if not obj.any():
            continue
        c1, c2 = _contrasting_colours(rng)
        pattern = _pattern(texture, size, rng, (cx, cy))[..., None]
        shade = rng.uniform(0.85, 1.15)
        image = np.where(obj[..., None], np.where(pattern, c1, c2) * shade, image)
        label[obj] = cls
        instances[obj] = k + 1
    image = image + rng.normal(0, 8, image.shape)
    if ignore_boundary:
        label[_boundary(label)] = 255
    return {
        "image": np.clip(np.round(image), 0, 255).astype(np.uint8),
        "mask": label,
        "instances": instances,
    }


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    """What is written to disk: image side, images per (primary) class and split, seed."""

    image_size: int = 128
    images_per_class: int = 60
    seed: int = 0
    ignore_boundary: bool = True


class SyntheticFss(common.ProjectBuilder):
    """Procedural 20-class few-shot segmentation set; splits ``train`` and ``test``."""

    BUILDER_CONFIGS = [  # noqa: RUF012
        SyntheticConfig(
            name="default",
            description="128x128 images, 60 images per class per split (1200 per split).",
        ),
        SyntheticConfig(
            name="small",
            description="64x64 images, 16 images per class per split (quick demos).",
            image_size=64,
            images_per_class=16,
        ),
        SyntheticConfig(
            name="tiny",
            description="32x32 images, 8 images per class per split (unit tests).",
            image_size=32,
            images_per_class=8,
        ),
    ]


    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        cfg: SyntheticConfig = self.builder_config
        split_index = SPLITS.index(split)
        count = cfg.images_per_class * NUM_CLASSES

        def make(i: int) -> dict[str, Any]:
            rng = np.random.default_rng([cfg.seed, split_index, i])
            arrays = render(cfg.image_size, i % NUM_CLASSES + 1, rng, cfg.ignore_boundary)
            return common.make_example(
                image_id=f"{split}_{i:05d}",
                image=common.jpeg_bytes(arrays["image"]),
                mask=arrays["mask"],
                instances=arrays["instances"],
            )

        index = common.IndexRecorder()
        for i, example in enumerate(common.ordered_map(make, range(count))):
            index.add(example)
            yield i, example
        common.store_split_index(self, NUM_CLASSES, split, index.to_json())
