"""Episodes from raw images and label maps, with the official PANet mask rules (no TensorFlow).

The rules (official ``dataloaders/customized.py``, ``getMask`` and ``fewShot``), written once
for NumPy and for ``tf.experimental.numpy`` (the tf.data pipeline calls them with ``xp=tnp``):

* support fg of way ``n`` = ``label == class_ids[n]``; support bg = the label is none of the
  episode's classes, so VOC 255 boundary pixels count as **background**;
* query label = ``n + 1`` where ``label == class_ids[n]``, 255 where the label is 255, else 0
  (every other class, test classes included, is background).

:func:`make_episode` builds one episode in the :mod:`panet_jax.data.spec` format from raw
``(image, label map)`` pairs, with the official resizing (:mod:`panet_jax.data.preprocess`),
so the model can be driven without the tf.data pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from panet_jax.data import preprocess, spec


def support_masks(labels: Any, class_ids: Any, xp: Any = np) -> tuple[Any, Any]:
    """Official dense ``getMask`` for all supports of an episode.

    Args:
      labels: ``[N, K, H, W]`` integer label maps (dataset class ids, 255 = boundary).
      class_ids: ``[N]`` the dataset class id of each way.
      xp: ``numpy`` or ``tf.experimental.numpy``.
    Returns:
      ``(fg, bg)``, bool ``[N, K, H, W]`` each.
    """
    fg = labels == class_ids[:, None, None, None]
    in_episode = xp.any(labels[..., None] == class_ids, axis=-1)
    return fg, xp.logical_not(in_episode)


def binary_mask_labels(mask: Any, class_id: Any, xp: Any = np) -> Any:
    """A binary (FSS-1000) mask as dataset labels: ``1`` -> ``class_id`` (the image's one
    class), anything else 0. ``xp``: ``numpy`` or ``tensorflow`` (``class_id`` then already
    of the mask's dtype)."""
    return xp.where(mask == 1, class_id, 0)


def has_binary_masks(metadata: Any) -> bool:
    """Whether a prepared dataset's masks are binary (its ``metadata['mask_encoding']``)."""
    return (metadata or {}).get("mask_encoding") == "binary"


def query_label_map(labels: Any, class_ids: Any, xp: Any = np) -> Any:
    """Official ``fewShot`` query label: ``[..., H, W]`` raw labels -> episode labels (0 bg,
    ``n + 1`` for way ``n``, 255 ignore). ``class_ids``: ``[N]`` with a static length."""
    out = xp.where(labels == spec.IGNORE_LABEL, spec.IGNORE_LABEL, 0)
    for n in range(int(class_ids.shape[0])):
        out = xp.where(labels == class_ids[n], n + 1, out)
    return out


def _check_pair(image: Any, label: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    image, label = np.asarray(image), np.asarray(label)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 RGB image [H, W, 3], got {image.dtype}"
                         f"{list(image.shape)}")  # fmt: skip
    if label.shape != image.shape[:2] or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(
            f"{name}: expected an integer label map of the image's size {image.shape[:2]}, got "
            f"{label.dtype}{list(label.shape)}"
        )
    return image, label


def _check_counts(
    support_images: Sequence[Sequence[Any]], support_labels: Sequence[Sequence[Any]],
    ids: np.ndarray, query_images: Sequence[Any], query_labels: Sequence[Any] | None,
) -> tuple[int, int]:  # fmt: skip
    """``(N, K)`` of :func:`make_episode`'s arguments, or ``ValueError`` naming the argument."""
    n_ways = len(ids)
    if n_ways < 1 or len(set(ids.tolist())) != n_ways:
        raise ValueError(f"class_ids: expected distinct class ids, one per way, got {ids.tolist()}")
    if len(support_images) != n_ways or len(support_labels) != n_ways:
        raise ValueError(
            f"support_images / support_labels: expected {n_ways} ways (one per class id), got "
            f"{len(support_images)} / {len(support_labels)}"
        )
    n_shots = len(support_images[0])
    if n_shots < 1 or any(len(w) != n_shots for w in (*support_images, *support_labels)):
        raise ValueError("support_images / support_labels: every way needs the same K >= 1 shots")
    if not query_images:
        raise ValueError("query_images: expected at least one query image")
    if query_labels is not None and len(query_labels) != len(query_images):
        raise ValueError(
            f"query_labels: got {len(query_labels)} label maps for {len(query_images)} queries"
        )
    return n_ways, n_shots


def make_episode(
    support_images: Sequence[Sequence[np.ndarray]],
    support_labels: Sequence[Sequence[np.ndarray]],
    class_ids: Sequence[int],
    query_images: Sequence[np.ndarray],
    query_labels: Sequence[np.ndarray] | None = None,
    *,
    image_size: tuple[int, int] = (417, 417),
) -> dict[str, np.ndarray]:
    """One episode (unbatched :mod:`panet_jax.data.spec` dict) from raw images and label maps.

    Args:
      support_images: ``[N][K]`` uint8 RGB ``[H_i, W_i, 3]`` arrays of any sizes.
      support_labels: ``[N][K]`` integer label maps of their image's size (dataset class ids,
        255 = boundary / ignore).
      class_ids: ``[N]`` distinct dataset class ids, one per way.
      query_images: ``[Q]`` images; query_labels: ``[Q]`` label maps, or ``None`` (all 0).
      image_size: ``(H, W)``; every map is resized to it without keeping the aspect ratio
        (PIL bilinear images, nearest labels), as the official loader does.
    Returns:
      ``support_images [N, K, H, W, 3]`` and ``query_images [Q, H, W, 3]`` ImageNet-normalised
      float32, ``support_fg`` / ``support_bg [N, K, H, W]`` float32, ``query_labels [Q, H, W]``
      int32, ``class_ids [N]`` int32.
    """
    size = (int(image_size[0]), int(image_size[1]))
    ids = np.asarray(class_ids, np.int32)
    n_ways, n_shots = _check_counts(support_images, support_labels, ids, query_images,
                                    query_labels)  # fmt: skip

    def prepare(image: Any, label: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
        image, label = _check_pair(image, label, name)
        resized = preprocess.resize_image(image, size)
        return preprocess.normalize_image(resized), preprocess.resize_label(label, size)

    supp = [
        [prepare(support_images[n][k], support_labels[n][k], f"support [{n}][{k}]")
         for k in range(n_shots)]
        for n in range(n_ways)
    ]  # fmt: skip
    labels = np.stack([[lab for _, lab in way] for way in supp]).astype(np.int64)
    fg, bg = support_masks(labels, ids)
    qry = [
        prepare(image, np.zeros(np.shape(image)[:2], np.int64) if query_labels is None
                else query_labels[q], f"query [{q}]")
        for q, image in enumerate(query_images)
    ]  # fmt: skip
    q_labels = query_label_map(np.stack([lab for _, lab in qry]).astype(np.int64), ids)
    episode = {
        "support_images": np.stack([[img for img, _ in way] for way in supp]),
        "support_fg": fg.astype(np.float32),
        "support_bg": bg.astype(np.float32),
        "query_images": np.stack([img for img, _ in qry]),
        "query_labels": q_labels.astype(np.int32),
        "class_ids": ids,
    }
    spec.check_episode(episode)
    return episode


def stack_episodes(episodes: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A batch (leading ``B`` axis) of episodes of one shape."""
    if not episodes:
        raise ValueError("stack_episodes: expected at least one episode")
    return {k: np.stack([np.asarray(e[k]) for e in episodes]) for k in spec.EPISODE_KEYS}
