"""The page's model: loaded once, segmenting with :class:`panet_jax.Predictor`.

The checkpoint is read once (whatever :func:`panet_jax.predict` accepts: a training workdir,
a checkpoint or step directory, a weight file) into a :class:`~panet_jax.Predictor`, the
object ``predict`` itself runs, so page, ``segment.py`` and the API give identical masks.
Every image is resized to the run's fixed working size, so the encoder compiles once
(:meth:`Segmenter.warm_up` compiles ahead of the first click), and the predictor keeps the
features of recent images: a click encodes only the supports and queries it has not seen
(each query once for all classes). One class at a time: ``predict`` is 1-way; each class's
mask is its own foreground-vs-rest decision.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from panet_jax.app import limits
from panet_jax.app.sessions import Support
from panet_jax.evaluation import overlays as visualize
from panet_jax.inference import predictor
from panet_jax.inference.user_images import PathLike, load_image


@dataclasses.dataclass(frozen=True)
class Result:
    """What one click returns: overlays ``(path, caption)``, mask files, and timing."""

    overlays: list[tuple[Path, str]]
    masks: list[Path]
    seconds: float
    message: str


def slug(name: str) -> str:
    """A file-name-safe form of a class name."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40] or "class"


def check_request(classes: Mapping[str, Sequence[Support]], queries: Sequence[Any]) -> None:
    """``ValueError`` for a click that cannot be segmented (no class, a class with no or too
    many supports, no or too many queries)."""
    if not classes:
        raise ValueError("no class has a support yet: add at least one annotated support image")
    if len(classes) > limits.MAX_CLASSES:
        raise ValueError(f"{len(classes)} classes: at most {limits.MAX_CLASSES} at a time")
    for name, supports in classes.items():
        if not 1 <= len(supports) <= limits.MAX_SUPPORTS:
            raise ValueError(
                f"class {name!r} has {len(supports)} supports: give 1 to {limits.MAX_SUPPORTS}"
            )
    if not queries:
        raise ValueError("no query image: upload at least one image to segment")
    if len(queries) > limits.MAX_QUERIES:
        raise ValueError(f"{len(queries)} query images: at most {limits.MAX_QUERIES} at a time")


def unique_slugs(names: Sequence[str]) -> list[str]:
    """File-name-safe forms of ``names``, with ``_<i>`` appended where they collide."""
    slugs = [slug(n) for n in names]
    return [f"{s}_{i}" if slugs.count(s) > 1 else s for i, s in enumerate(slugs)]


# Feature maps kept between clicks: every support and query of a full click (a VGG-16 map at
# 417 x 417 is 5.8 MB in float32).
FEATURE_CACHE_SIZE = limits.MAX_CLASSES * limits.MAX_SUPPORTS + limits.MAX_QUERIES


class Segmenter:
    """A loaded model (:class:`panet_jax.Predictor`) and the page's use of it."""

    def __init__(
        self,
        checkpoint: PathLike,
        *,
        image_size: Sequence[int] | None = None,
        prototypes_per_class: int | None = None,
        step: int | None = None,
        cache_size: int = FEATURE_CACHE_SIZE,
    ):
        self.checkpoint = checkpoint
        self.predictor = predictor.Predictor(
            checkpoint, image_size=image_size, prototypes_per_class=prototypes_per_class,
            step=step, cache_size=cache_size,
        )  # fmt: skip
        self.settings = self.predictor.settings

    def predict(
        self,
        images: Sequence[Any],
        fg: Sequence[Any],
        bg: Sequence[Any],
        queries: Sequence[Any],
    ) -> list[np.ndarray]:
        """:func:`panet_jax.predict` with this model (one class: K supports, Q queries)."""
        return self.predictor(list(images), list(fg), list(queries), support_bg_masks=list(bg))

    def warm_up(self, shots: Sequence[int] = (1,)) -> None:
        """Compile for these shot counts now (a synthetic support and query; nothing of it
        stays in the feature cache)."""
        h, w = self.settings.image_size
        image = np.zeros((h, w, 3), np.uint8)
        fg = np.zeros((h, w), bool)
        fg[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
        for k in shots:
            self.predict([image] * k, [fg] * k, [~fg] * k, [image])
        self.predictor.clear_cache()

    def forget(self) -> None:
        """Drop the cached features (a tab closed: nothing derived from its images stays)."""
        self.predictor.clear_cache()

    def segment(
        self, classes: Mapping[str, Sequence[Support]], queries: Sequence[PathLike], out: Path
    ) -> Result:
        """Segment every query for every class; write ``<query>_<class>_mask.png`` (0/255 grey
        at the query's original size, as ``segment.py``) and ``..._overlay.png`` to ``out``."""
        check_request(classes, queries)
        start = time.perf_counter()
        arrays = []
        for i, q in enumerate(queries):
            name = f"query {i + 1} ({Path(q).name})"
            limits.check_image_file(q, name)
            arrays.append(load_image(q, name))
        out.mkdir(parents=True, exist_ok=True)
        stems, overlays, masks = unique_slugs([Path(q).stem for q in queries]), [], []
        class_slugs = unique_slugs(list(classes))
        for j, (name, supports) in enumerate(classes.items()):
            found = self.predict([s.image for s in supports], [s.fg for s in supports],
                                 [s.bg for s in supports], arrays)  # fmt: skip
            for stem, image, mask in zip(stems, arrays, found, strict=True):
                base = out / f"{stem}_{class_slugs[j]}"
                masks.append(visualize.save_png(mask * np.uint8(255), f"{base}_mask.png",
                                                overwrite=True))  # fmt: skip
                picture = visualize.overlay(image, mask * np.uint8(j + 1))
                path = visualize.save_png(picture, f"{base}_overlay.png", overwrite=True)
                overlays.append((path, f"{stem}: {name} ({100 * mask.mean():.1f}%)"))
        seconds = time.perf_counter() - start
        h, w = self.settings.image_size
        shots = "/".join(str(len(s)) for s in classes.values())
        message = (
            f"Segmented {len(queries)} quer{'y' if len(queries) == 1 else 'ies'} x "
            f"{len(classes)} class{'es' if len(classes) > 1 else ''} in {seconds:.2f} s "
            f"(working size {w}x{h}, {shots}-shot)."
        )
        return Result(overlays, masks, seconds, message)
