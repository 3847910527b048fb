"""The episode format shared by the input pipeline, the model and the evaluator.

An *episode* is a dict of arrays. Unbatched shapes (a batch of episodes adds a
leading ``B`` axis, a device-sharded batch a further leading axis where needed):

=================  ======================  =========  ==========================================
key                shape                   dtype      meaning
=================  ======================  =========  ==========================================
``support_images`` ``[N, K, H, W, 3]``     float32    ImageNet-normalised RGB supports
``support_fg``     ``[N, K, H, W]``        float32    1 where the support shows way ``n``'s class
``support_bg``     ``[N, K, H, W]``        float32    1 on support background (official rule:
                                                      not this class and not any episode class;
                                                      VOC 255 pixels count as background)
``query_images``   ``[Q, H, W, 3]``        float32    ImageNet-normalised RGB queries
``query_labels``   ``[Q, H, W]``           int32      0 background, ``n + 1`` for way ``n``,
                                                      255 ignore
``class_ids``      ``[N]``                 int32      dataset class id of each way (1-based)
=================  ======================  =========  ==========================================

``N`` ways, ``K`` shots, ``Q`` queries, ``H x W`` image size.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

IGNORE_LABEL = 255
# How episodes are made, named once for the config, the pipeline and the evaluator:
SUPPORT_ANNOTATIONS = ("dense", "scribble", "bbox")  # support masks: dense, scribbles, boxes
PROTOCOLS = ("panet", "hsnet")  # the official test draw | HSNet's (image, class) list walk
SAMPLERS = ("official", "stateless")  # replay of the official draw | per-episode NumPy seeds

EPISODE_KEYS = (
    "support_images",
    "support_fg",
    "support_bg",
    "query_images",
    "query_labels",
    "class_ids",
)


class ArraySpec(NamedTuple):
    shape: tuple[int, ...]
    dtype: np.dtype


def episode_spec(
    n_ways: int, n_shots: int, n_queries: int, height: int, width: int
) -> dict[str, ArraySpec]:
    """Shapes and dtypes of one unbatched episode."""
    n, k, q, h, w = n_ways, n_shots, n_queries, height, width
    f32, i32 = np.dtype(np.float32), np.dtype(np.int32)
    return {
        "support_images": ArraySpec((n, k, h, w, 3), f32),
        "support_fg": ArraySpec((n, k, h, w), f32),
        "support_bg": ArraySpec((n, k, h, w), f32),
        "query_images": ArraySpec((q, h, w, 3), f32),
        "query_labels": ArraySpec((q, h, w), i32),
        "class_ids": ArraySpec((n,), i32),
    }


def zeros_episode(
    n_ways: int, n_shots: int, n_queries: int, height: int, width: int, batch: tuple[int, ...] = ()
) -> dict[str, np.ndarray]:
    """An all-zero episode (or batch of episodes): handy for ``init`` and shape checks."""
    spec = episode_spec(n_ways, n_shots, n_queries, height, width)
    return {k: np.zeros(batch + s.shape, s.dtype) for k, s in spec.items()}


def check_episode(episode: dict, *, batched: bool = False) -> tuple[int, int, int, int, int]:
    """Validate an episode's keys, shapes and dtypes; return ``(N, K, Q, H, W)``.

    Raises ``ValueError`` naming the offending key and the expected shape / dtype.
    """
    missing = [k for k in EPISODE_KEYS if k not in episode]
    if missing:
        raise ValueError(f"episode is missing keys {missing}; expected keys {list(EPISODE_KEYS)}")
    lead = 1 if batched else 0
    sup = np.shape(episode["support_images"])
    if len(sup) != 5 + lead:
        raise ValueError(
            f"support_images has shape {sup}; expected {'[B, ' if batched else '['}N, K, H, W, 3]"
        )
    n, k, h, w = sup[lead : lead + 4]
    q = np.shape(episode["query_images"])[lead]
    spec = episode_spec(n, k, q, h, w)
    prefix = tuple(sup[:lead])
    for key, s in spec.items():
        got = tuple(np.shape(episode[key]))
        if got != prefix + s.shape:
            raise ValueError(
                f"episode['{key}'] has shape {got}; expected {prefix + s.shape} "
                f"for N={n} ways, K={k} shots, Q={q} queries, {h}x{w} images"
            )
        dtype = np.dtype(getattr(episode[key], "dtype", np.asarray(episode[key]).dtype))
        if dtype != s.dtype:
            raise ValueError(f"episode['{key}'] has dtype {dtype}; expected {s.dtype}")
    return n, k, q, h, w
